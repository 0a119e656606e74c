//! docs/openapi.json against the server: the spec's (path, method) pairs must be exactly the
//! route table of edge-server/src/routes.rs, and every answer of the real binary, driven
//! through every operation and the error cases, must have a documented status, the
//! documented headers and content type, and a body valid against the documented schema.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use e2e::{Store, StoreOptions, PASSWORD, SITE, USER};
use reqwest::Method;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet};

const SPEC: &str = include_str!("../../docs/openapi.json");
const ROUTES_RS: &str = include_str!("../../edge-server/src/routes.rs");

const JANE: &str = "4000000000001";
const JOHN: &str = "4000000000002";
const HTTP_METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

// ------------------------------------------------------------------ the route table

/// (operation, method, path) of every entry of `TABLE` in routes.rs, read from its text.
fn route_table() -> BTreeSet<(String, String, String)> {
    let start = ROUTES_RS
        .find("pub const TABLE")
        .expect("edge-server/src/routes.rs no longer has `pub const TABLE`: update this test");
    let rest = &ROUTES_RS[start..];
    let open = rest.find("= &[").expect("TABLE is not `= &[ ... ];`") + 4;
    let close = rest
        .find("\n];")
        .expect("TABLE does not end with a `];` line");
    let table = &rest[open..close];
    let mut out = BTreeSet::new();
    for entry in table.split("Operation::").skip(1) {
        let op: String = entry
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let groups = string_lists(entry);
        assert_eq!(
            groups.len(),
            2,
            "TABLE entry Operation::{op} is not `(op, &[methods], &[paths])`: {entry}"
        );
        assert!(
            !groups[0].is_empty() && !groups[1].is_empty(),
            "TABLE entry Operation::{op} has no methods or no paths: {entry}"
        );
        for method in &groups[0] {
            for path in &groups[1] {
                out.insert((op.clone(), method.clone(), path.clone()));
            }
        }
    }
    assert!(out.len() > 10, "found almost nothing in TABLE: {out:?}");
    out
}

/// The quoted strings of every `&[ ... ]` group in `s`, in order.
fn string_lists(s: &str) -> Vec<Vec<String>> {
    let mut groups = Vec::new();
    let mut rest = s;
    while let Some(i) = rest.find("&[") {
        let after = &rest[i + 2..];
        let j = after.find(']').expect("unclosed `&[` in TABLE");
        groups.push(
            after[..j]
                .split('"')
                .skip(1)
                .step_by(2)
                .map(str::to_owned)
                .collect(),
        );
        rest = &after[j + 1..];
    }
    groups
}

// ------------------------------------------------------------------ the spec

struct Spec {
    doc: Value,
}

impl Spec {
    fn load() -> Spec {
        let doc: Value = serde_json::from_str(SPEC).expect("docs/openapi.json is not JSON");
        Spec { doc }
    }

    fn paths(&self) -> &Map<String, Value> {
        self.doc["paths"]
            .as_object()
            .expect("the spec has no `paths` object")
    }

    /// (operation, METHOD, path) of every operation in the spec.
    fn operations(&self) -> BTreeSet<(String, String, String)> {
        let mut out = BTreeSet::new();
        for (path, item) in self.paths() {
            for m in HTTP_METHODS {
                if let Some(op) = item.get(m) {
                    let name = op["x-edge-operation"].as_str().unwrap_or_else(|| {
                        panic!("{} {path}: no `x-edge-operation`", m.to_uppercase())
                    });
                    out.insert((name.to_owned(), m.to_uppercase(), path.clone()));
                }
            }
        }
        out
    }

    /// The spec's path template for a concrete path; literal segments beat `{params}`.
    fn template(&self, path: &str) -> Option<String> {
        let segs: Vec<&str> = path.split('/').collect();
        self.paths()
            .keys()
            .filter_map(|t| {
                let tsegs: Vec<&str> = t.split('/').collect();
                if tsegs.len() != segs.len() {
                    return None;
                }
                let mut literal = 0;
                for (ts, s) in tsegs.iter().zip(&segs) {
                    if ts.starts_with('{') && ts.ends_with('}') {
                        if s.is_empty() {
                            return None;
                        }
                    } else if ts == s {
                        literal += 1;
                    } else {
                        return None;
                    }
                }
                Some((literal, t.clone()))
            })
            .max()
            .map(|(_, t)| t)
    }

    fn operation(&self, template: &str, method: &Method) -> Option<&Value> {
        self.paths()
            .get(template)
            .and_then(|item| item.get(method.as_str().to_ascii_lowercase()))
    }

    /// Follows local `$ref`s; returns the target and its location.
    fn resolve<'a>(&'a self, mut v: &'a Value, mut at: String) -> (&'a Value, String) {
        for _ in 0..16 {
            let Some(r) = v.get("$ref").and_then(Value::as_str) else {
                return (v, at);
            };
            let pointer = r
                .strip_prefix('#')
                .unwrap_or_else(|| panic!("{at}: non-local $ref {r}"));
            v = self
                .doc
                .pointer(pointer)
                .unwrap_or_else(|| panic!("{at}: $ref {r} does not resolve"));
            at = r.to_owned();
        }
        panic!("{at}: $ref chain too long")
    }

    /// A validator for a schema of the spec, with `#/components/schemas/...` resolvable.
    fn validator(&self, schema: &Value) -> Result<jsonschema::Validator, String> {
        let mut root = match schema {
            Value::Object(m) => m.clone(),
            Value::Bool(b) => {
                let mut m = Map::new();
                if !b {
                    m.insert("not".into(), json!({}));
                }
                m
            }
            other => return Err(format!("a schema must be an object: {other}")),
        };
        root.insert(
            "$schema".into(),
            json!("https://json-schema.org/draft/2020-12/schema"),
        );
        root.insert(
            "components".into(),
            json!({ "schemas": self.doc["components"]["schemas"].clone() }),
        );
        jsonschema::options()
            .should_validate_formats(true)
            .build(&Value::Object(root))
            .map_err(|e| e.to_string())
    }
}

fn escape(pointer_segment: &str) -> String {
    pointer_segment.replace('~', "~0").replace('/', "~1")
}

/// Every `$ref` anywhere in `v`, with the location it was found at.
fn refs(v: &Value, at: &str, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                if k == "$ref" {
                    if let Some(r) = x.as_str() {
                        out.push((at.to_owned(), r.to_owned()));
                    }
                } else {
                    refs(x, &format!("{at}/{}", escape(k)), out);
                }
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                refs(x, &format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

#[test]
fn spec_paths_and_methods_are_the_route_table() {
    let spec = Spec::load();
    assert_eq!(spec.doc["openapi"], "3.1.0");
    let server = route_table();
    let documented = spec.operations();
    let missing: Vec<_> = server.difference(&documented).collect();
    let extra: Vec<_> = documented.difference(&server).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "docs/openapi.json and TABLE in edge-server/src/routes.rs disagree\n  \
         (operation, method, path) served but not documented: {missing:?}\n  \
         documented but not served: {extra:?}"
    );
}

#[test]
fn spec_is_self_consistent() {
    let spec = Spec::load();
    // Every $ref resolves.
    let mut all = Vec::new();
    refs(&spec.doc, "#", &mut all);
    assert!(!all.is_empty());
    for (at, r) in &all {
        let ok = r
            .strip_prefix('#')
            .is_some_and(|p| spec.doc.pointer(p).is_some());
        assert!(ok, "{at}: $ref {r} does not resolve");
    }
    // Every component schema is a valid JSON Schema 2020-12 whose references resolve.
    let schemas = spec.doc["components"]["schemas"]
        .as_object()
        .expect("no components/schemas");
    for (name, schema) in schemas {
        if let Err(e) = spec.validator(schema) {
            panic!("#/components/schemas/{name} does not compile: {e}");
        }
    }
    // Operation ids are unique; path parameters are declared; responses are there.
    let mut ids = BTreeSet::new();
    for (path, item) in spec.paths() {
        for m in HTTP_METHODS {
            let Some(op) = item.get(m) else { continue };
            let what = format!("{} {path}", m.to_uppercase());
            let id = op["operationId"]
                .as_str()
                .unwrap_or_else(|| panic!("{what}: no operationId"));
            assert!(
                ids.insert(id.to_owned()),
                "{what}: operationId {id} is used twice"
            );
            let declared: BTreeSet<String> = op["parameters"]
                .as_array()
                .map(|ps| {
                    ps.iter()
                        .map(|p| spec.resolve(p, what.clone()).0)
                        .filter(|p| p["in"] == "path")
                        .filter_map(|p| p["name"].as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            let in_path: BTreeSet<String> = path
                .split('/')
                .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
                .map(str::to_owned)
                .collect();
            assert_eq!(declared, in_path, "{what}: path parameters");
            let responses = op["responses"]
                .as_object()
                .unwrap_or_else(|| panic!("{what}: no responses"));
            assert!(responses.contains_key("200"), "{what}: no 200 response");
            let open = op.get("security") == Some(&json!([]));
            assert_eq!(
                responses.contains_key("401"),
                !open,
                "{what}: 401 must be documented exactly when the operation needs credentials"
            );
        }
    }
}

// ------------------------------------------------------------------ driving the server

struct Reply {
    status: u16,
    headers: reqwest::header::HeaderMap,
    bytes: Vec<u8>,
}

struct Probe<'a> {
    store: &'a Store,
    spec: &'a Spec,
    /// (path template or "-", METHOD, status) of every checked answer.
    hits: BTreeSet<(String, String, u16)>,
}

enum Body<'b> {
    None,
    Json(&'b Value),
    Raw(Vec<u8>),
}

impl Probe<'_> {
    async fn send(&self, method: &Method, path: &str, body: Body<'_>, auth: bool) -> Reply {
        let mut req = self
            .store
            .client
            .request(method.clone(), self.store.url(path));
        if auth {
            req = req.basic_auth(USER, Some(PASSWORD));
        }
        req = match body {
            Body::None => req,
            Body::Json(v) => req
                .header("content-type", "application/json")
                .body(v.to_string()),
            Body::Raw(b) => req.header("content-type", "application/json").body(b),
        };
        let r = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: request failed: {e}"));
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let bytes = r
            .bytes()
            .await
            .unwrap_or_else(|e| panic!("{method} {path} → {status}: body unreadable: {e}"))
            .to_vec();
        Reply {
            status,
            headers,
            bytes,
        }
    }

    /// Checks an answer against the spec; returns its JSON body (`null` if not JSON).
    fn check(&mut self, method: &Method, path_and_query: &str, reply: &Reply) -> Value {
        let status = reply.status;
        let what = format!("{method} {path_and_query} → {status}");
        let path = path_and_query.split('?').next().unwrap_or_default();
        let component = |name: &str| {
            let at = format!("#/components/responses/{name}");
            let v = self
                .spec
                .doc
                .pointer(&format!("/components/responses/{name}"))
                .unwrap_or_else(|| panic!("the spec has no {at}"));
            (v, at)
        };
        let (response, at) = match self.spec.template(path) {
            None => {
                assert!(
                    status == 404 || status == 401,
                    "{what}: the path is not in the spec, so only 404 (or 401) may answer"
                );
                self.hits.insert(("-".into(), method.to_string(), status));
                component(if status == 401 {
                    "Unauthorized"
                } else {
                    "NotFound"
                })
            }
            Some(t) => match self.spec.operation(&t, method) {
                None => {
                    assert!(
                        status == 405 || status == 401,
                        "{what}: {method} is not documented for {t}, so only 405 (or 401) may answer"
                    );
                    if status == 405 {
                        for (m, op) in self.spec.paths()[&t].as_object().into_iter().flatten() {
                            if HTTP_METHODS.contains(&m.as_str()) {
                                assert!(
                                    op["responses"].get("405").is_some(),
                                    "{what}: {} {t} does not document 405",
                                    m.to_uppercase()
                                );
                            }
                        }
                    }
                    self.hits.insert((t.clone(), method.to_string(), status));
                    component(if status == 401 {
                        "Unauthorized"
                    } else {
                        "MethodNotAllowed"
                    })
                }
                Some(op) => {
                    let documented: Vec<&String> = op["responses"]
                        .as_object()
                        .map(|m| m.keys().collect())
                        .unwrap_or_default();
                    let r = op["responses"]
                        .get(status.to_string())
                        .or_else(|| op["responses"].get("default"))
                        .unwrap_or_else(|| {
                            panic!(
                                "{what}: status {status} is not documented for {method} {t} \
                                 (documented: {documented:?}); body: {}",
                                String::from_utf8_lossy(&reply.bytes)
                            )
                        });
                    self.hits.insert((t.clone(), method.to_string(), status));
                    let at = format!(
                        "#/paths/{}/{}/responses/{status}",
                        escape(&t),
                        method.as_str().to_ascii_lowercase()
                    );
                    self.spec.resolve(r, at)
                }
            },
        };
        // Documented headers: required ones must be there, and match their schema.
        if let Some(headers) = response.get("headers").and_then(Value::as_object) {
            for (name, h) in headers {
                let (h, hat) = self.spec.resolve(h, format!("{at}/headers/{name}"));
                let value = reply.headers.get(name.as_str());
                if h["required"] == true {
                    assert!(value.is_some(), "{what}: header {name} ({hat}) is missing");
                }
                if let (Some(value), Some(schema)) = (value, h.get("schema")) {
                    let text = json!(value.to_str().unwrap_or_default());
                    let v = self
                        .spec
                        .validator(schema)
                        .unwrap_or_else(|e| panic!("{hat}/schema does not compile: {e}"));
                    let errors: Vec<String> = v.iter_errors(&text).map(|e| e.to_string()).collect();
                    assert!(
                        errors.is_empty(),
                        "{what}: header {name}: {text} does not match {hat}/schema: {errors:?}"
                    );
                }
            }
        }
        let content_type = reply
            .headers
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let media = content_type
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        let Some(content) = response.get("content").and_then(Value::as_object) else {
            assert!(
                reply.bytes.is_empty(),
                "{what}: {at} documents no body, got {content_type}"
            );
            return Value::Null;
        };
        let entry = content.get(&media).unwrap_or_else(|| {
            panic!(
                "{what}: content type `{content_type}` is not documented at {at} (documented: {:?})",
                content.keys().collect::<Vec<_>>()
            )
        });
        if media != "application/json" {
            assert!(!reply.bytes.is_empty(), "{what}: empty {media} body");
            return Value::Null;
        }
        let body: Value = serde_json::from_slice(&reply.bytes).unwrap_or_else(|e| {
            panic!(
                "{what}: the body is not JSON ({e}): {}",
                String::from_utf8_lossy(&reply.bytes)
            )
        });
        let schema_at = format!("{at}/content/{}/schema", escape(&media));
        let schema = entry
            .get("schema")
            .unwrap_or_else(|| panic!("{what}: {schema_at} is missing"));
        let validator = self
            .spec
            .validator(schema)
            .unwrap_or_else(|e| panic!("{schema_at} does not compile: {e}"));
        let errors: Vec<String> = validator
            .iter_errors(&body)
            .map(|e| {
                format!(
                    "at `{}`: {e} (schema path {})",
                    e.instance_path().as_str(),
                    e.schema_path().as_str()
                )
            })
            .collect();
        assert!(
            errors.is_empty(),
            "{what}: the body does not match {schema_at}:\n  {}\nbody: {body}",
            errors.join("\n  ")
        );
        body
    }

    /// Sends with lane credentials, checks, and returns (status, JSON body).
    async fn call(&mut self, method: Method, path: &str, body: Option<&Value>) -> (u16, Value) {
        let body_json = body;
        let body = body.map_or(Body::None, Body::Json);
        let reply = self.send(&method, path, body, true).await;
        let v = self.check(&method, path, &reply);
        if reply.status == 200 {
            self.check_request(&method, path, body_json);
        }
        (reply.status, v)
    }

    /// A request the server accepted must be one the spec allows: its required query
    /// parameters present, its JSON body valid against the documented request schema.
    fn check_request(&self, method: &Method, path_and_query: &str, body: Option<&Value>) {
        let what = format!("{method} {path_and_query} (accepted by the server)");
        let (path, query) = path_and_query
            .split_once('?')
            .unwrap_or((path_and_query, ""));
        let op = self
            .spec
            .template(path)
            .and_then(|t| self.spec.operation(&t, method))
            .unwrap_or_else(|| panic!("{what}: not documented"));
        let keys: BTreeSet<&str> = query
            .split('&')
            .filter_map(|kv| kv.split('=').next())
            .collect();
        for param in op["parameters"].as_array().into_iter().flatten() {
            let (param, at) = self.spec.resolve(param, what.clone());
            if param["in"] == "query" && param["required"] == true {
                let name = param["name"].as_str().unwrap_or_default();
                assert!(
                    keys.contains(name),
                    "{what}: the spec ({at}) requires query parameter `{name}`"
                );
            }
        }
        let request = op
            .get("requestBody")
            .map(|b| self.spec.resolve(b, what.clone()).0);
        match (body, request) {
            (Some(body), Some(request)) => {
                let schema = &request["content"]["application/json"]["schema"];
                let validator = self
                    .spec
                    .validator(schema)
                    .unwrap_or_else(|e| panic!("{what}: request schema does not compile: {e}"));
                let errors: Vec<String> = validator
                    .iter_errors(body)
                    .map(|e| format!("at `{}`: {e}", e.instance_path().as_str()))
                    .collect();
                assert!(
                    errors.is_empty(),
                    "{what}: the request body does not match the documented request schema:\n  {}\nbody: {body}",
                    errors.join("\n  ")
                );
            }
            (Some(body), None) => panic!("{what}: the spec documents no request body, sent {body}"),
            (None, Some(request)) => assert!(
                request["required"] != true,
                "{what}: the spec says a body is required"
            ),
            (None, None) => {}
        }
    }

    /// Expects `status`; returns the body.
    async fn expect(
        &mut self,
        status: u16,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Value {
        let (got, v) = self.call(method.clone(), path, body).await;
        assert_eq!(got, status, "{method} {path}: unexpected status; body: {v}");
        v
    }
}

fn q(customer: &str, txn: &str) -> String {
    format!("?site={SITE}&customer={customer}&transaction={txn}")
}

fn items() -> Value {
    json!([
        {"id": 1, "quantity": 2, "upc": 894773001193u64, "price": 12.99, "discountPrice": 12.99, "dept": 2},
        {"id": 2, "quantity": 1, "upc": 12000001000u64, "price": 1.99, "discountPrice": 1.49, "dept": 1},
        {"id": 3, "quantity": 1, "upc": 38000012345u64, "price": 4.49, "discountPrice": 4.49, "dept": 4},
        {"id": 4, "quantity": 1, "upc": "0000099887766", "price": 8.99, "discountPrice": 8.99, "dept": 7},
        {"id": 5, "quantity": 1.5, "upc": 4400000001u64, "price": 15.00, "dept": 8},
        {"id": 6, "quantity": 1, "upc": 4400000002u64, "price": 9.00, "discountPrice": 9.00, "dept": 8}
    ])
}

fn update_body(transient: bool) -> Value {
    json!({"cashier": 99, "terminal": 6, "time": "2018-08-13T10:15:30", "transientRequest": transient,
           "items": items(), "subTotal": 27.47, "taxTotal": 1.2, "grossTotal": 28.67, "sharedkey": "ignored"})
}

fn error_id(v: &Value) -> &str {
    v["errors"][0]["id"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn every_answer_matches_the_spec() {
    let spec = Spec::load();
    let store = Store::start(StoreOptions::default()).await.unwrap();
    let mut p = Probe {
        store: &store,
        spec: &spec,
        hits: BTreeSet::new(),
    };
    let (get, post, put) = (Method::GET, Method::POST, Method::PUT);

    // ---- catalog
    let catalog = p
        .expect(200, get.clone(), &format!("/coupons?site={SITE}"), None)
        .await;
    assert!(catalog["coupons"].as_array().is_some_and(|c| !c.is_empty()));
    let v = p.expect(400, get.clone(), "/coupons?site=NOPE", None).await;
    assert_eq!(error_id(&v), "INVALID_SITE");
    p.expect(400, get.clone(), "/coupons", None).await;

    // ---- customer coupon metadata, under every alias
    for path in [
        "/coupons/customer",
        "/customer/coupons",
        "/coupons/metadata",
    ] {
        p.expect(
            200,
            get.clone(),
            &format!("{path}?site={SITE}&customer={JANE}"),
            None,
        )
        .await;
    }
    p.expect(
        200,
        get.clone(),
        &format!("/coupons/customer?site={SITE}&customer=4999000000009"),
        None,
    )
    .await;
    let v = p
        .expect(
            400,
            get.clone(),
            &format!("/coupons/customer?site={SITE}&customer=12345678901234567"),
            None,
        )
        .await;
    assert_eq!(error_id(&v), "INVALID_CUSTOMER");

    // ---- clip / unclip, every path and method
    let clip_q = format!("?site={SITE}&customer={JOHN}");
    p.expect(
        200,
        post.clone(),
        &format!("/coupons/customer{clip_q}"),
        Some(&json!({"add": ["PCT10"], "remove": []})),
    )
    .await;
    let v = p
        .expect(
            200,
            put.clone(),
            &format!("/coupons/customer{clip_q}"),
            Some(&json!({"add": ["NOPE1"], "remove": ["PCT10"]})),
        )
        .await;
    assert_eq!(v["errors"][0]["id"], "COUPON_NOT_FOUND", "{v}");
    let in_body = json!({"site": SITE, "customer": JOHN, "add": ["PCT10"]});
    for path in ["/coupons/clip", "/coupons/edit"] {
        for m in [post.clone(), put.clone()] {
            p.expect(200, m, path, Some(&in_body)).await;
        }
    }
    p.expect(
        400,
        post.clone(),
        &format!("/coupons/clip{clip_q}"),
        Some(&json!({"add": ["ABCDEFGHIJKLMNOPQ"]})),
    )
    .await;
    p.expect(
        400,
        post.clone(),
        "/coupons/clip",
        Some(&json!({"customer": JOHN, "add": []})),
    )
    .await;

    // ---- demographics
    let v = p
        .expect(
            200,
            post.clone(),
            &format!("/demographics?site={SITE}"),
            Some(&json!({"phones": ["5551234567"]})),
        )
        .await;
    assert_eq!(v["id"], JANE, "{v}");
    let v = p
        .expect(
            200,
            post.clone(),
            "/demographics",
            Some(&json!({"site": SITE, "emails": ["john@example.com"]})),
        )
        .await;
    assert_eq!(v["id"], JOHN, "{v}");
    let v = p
        .expect(
            200,
            post.clone(),
            &format!("/demographics?site={SITE}"),
            Some(&json!({"phones": ["5550000000"], "emails": ["nobody@example.com"]})),
        )
        .await;
    assert_eq!(error_id(&v), "CUSTOMER_NOT_FOUND");
    p.expect(
        400,
        post.clone(),
        &format!("/demographics?site={SITE}"),
        Some(&json!({"phones": ["555-123-4567"]})),
    )
    .await;

    // ---- transaction update, every path and method
    // (Jane's basket-wide AMT2 would take every line the item coupons leave to the points
    // coupon: unclip it so the answer also carries an optional coupon.)
    let v = p
        .expect(
            200,
            put.clone(),
            &format!("/coupons/edit?site={SITE}&customer={JANE}"),
            Some(&json!({"remove": ["AMT2"]})),
        )
        .await;
    assert_eq!(v["removed"], json!(["AMT2"]), "{v}");
    let v = p
        .expect(
            200,
            post.clone(),
            &format!("/transaction{}", q(JANE, "OA-T1")),
            Some(&update_body(false)),
        )
        .await;
    let applied = v["applied"].as_array().cloned().unwrap_or_default();
    assert!(!applied.is_empty(), "the sample sale gets coupons: {v}");
    assert!(
        applied.iter().any(|a| a.get("optional").is_some()),
        "the points coupon is offered as optional: {v}"
    );
    assert!(
        v.get("customer").is_some() && v.get("loyaltyBalances").is_some(),
        "{v}"
    );
    p.expect(
        200,
        put.clone(),
        &format!("/transaction{}", q(JANE, "OA-T1")),
        Some(&update_body(false)),
    )
    .await;
    p.expect(
        200,
        post.clone(),
        &format!("/transaction/update{}", q(JANE, "OA-T2")),
        Some(&update_body(true)),
    )
    .await;
    let mut in_body = update_body(false);
    in_body["site"] = json!(SITE);
    in_body["customer"] = json!("4999000000009");
    in_body["transaction"] = json!("OA-T3");
    let v = p
        .expect(200, put.clone(), "/transaction/update", Some(&in_body))
        .await;
    assert!(
        v.get("customer").is_none(),
        "an unknown customer has no demographics: {v}"
    );
    p.expect(
        200,
        get.clone(),
        &format!("/coupons/metadata?site={SITE}&customer={JANE}"),
        None,
    )
    .await;
    let v = p
        .expect(
            400,
            post.clone(),
            &format!("/transaction?site={SITE}&customer={JANE}"),
            Some(&update_body(false)),
        )
        .await;
    assert_eq!(error_id(&v), "INVALID_TRANSACTION");
    let reply = p
        .send(
            &post,
            &format!("/transaction{}", q(JANE, "OA-T9")),
            Body::Raw(b"{not json".to_vec()),
            true,
        )
        .await;
    assert_eq!(reply.status, 400);
    p.check(&post, &format!("/transaction{}", q(JANE, "OA-T9")), &reply);
    p.expect(
        400,
        post.clone(),
        &format!("/transaction{}", q(JANE, "OA-T9")),
        Some(&json!({"items": [{"quantity": 1}]})),
    )
    .await;
    // A body over server.max_body_bytes (262144).
    let big = json!({"padding": "x".repeat(262_200)});
    let v = p
        .expect(
            413,
            post.clone(),
            &format!("/transaction{}", q(JANE, "OA-T9")),
            Some(&big),
        )
        .await;
    assert_eq!(error_id(&v), "INVALID_REQUEST");

    // ---- cancel: GET and POST
    p.expect(
        200,
        post.clone(),
        &format!("/transaction{}", q(JOHN, "OA-C1")),
        Some(&update_body(false)),
    )
    .await;
    p.expect(
        200,
        get.clone(),
        &format!("/transaction/cancel{}", q(JOHN, "OA-C1")),
        None,
    )
    .await;
    p.expect(
        200,
        post.clone(),
        "/transaction/cancel",
        Some(&json!({"site": SITE, "customer": JOHN, "transaction": "OA-C1"})),
    )
    .await;
    let path = format!("/transaction/cancel{}", q(JOHN, "OA-C2"));
    let reply = p
        .send(&post, &path, Body::Raw(b"not json".to_vec()), true)
        .await;
    assert_eq!(reply.status, 200);
    p.check(&post, &path, &reply);
    p.expect(
        400,
        get.clone(),
        &format!("/transaction/cancel?site={SITE}&customer={JOHN}"),
        None,
    )
    .await;

    // ---- commit (and its replay)
    let commit =
        json!({"coupons": ["BOGO1", "PCT10"], "tenders": [{"type": "CASH", "amount": 5.21}]});
    let first = p
        .expect(
            200,
            post.clone(),
            &format!("/transaction/commit{}", q(JANE, "OA-T1")),
            Some(&commit),
        )
        .await;
    assert!(
        first["receiptLines"]
            .as_array()
            .is_some_and(|l| !l.is_empty()),
        "{first}"
    );
    let again = p
        .expect(
            200,
            post.clone(),
            &format!("/transaction/commit{}", q(JANE, "OA-T1")),
            Some(&commit),
        )
        .await;
    assert_eq!(first, again);
    p.expect(
        200,
        post.clone(),
        "/transaction/commit",
        Some(&json!({"site": SITE, "customer": JOHN, "transaction": "OA-X1", "coupons": []})),
    )
    .await;
    // A listed id that is not in the catalog: acknowledged, named in `errors` (§5.13).
    let v = p
        .expect(
            200,
            post.clone(),
            &format!("/transaction/commit{}", q(JANE, "OA-T9")),
            Some(&json!({"coupons": ["NOSUCH1"]})),
        )
        .await;
    assert!(
        v["errors"]
            .as_array()
            .is_some_and(|e| e.iter().any(|e| e["id"] == "COUPON_NOT_FOUND")),
        "{v}"
    );
    p.expect(
        400,
        post.clone(),
        &format!("/transaction/commit{}", q(JANE, "OA-T8")),
        Some(&json!({"coupons": ["ABCDEFGHIJKLMNOP"]})),
    )
    .await;

    // ---- explicit nulls in optional fields (Java clients): accepted, and allowed by the
    // documented request schemas; limits and wrong types are still refused as documented
    let nulls = json!({"site": null, "customer": null, "transaction": null, "cashier": null,
        "terminal": null, "time": null, "transientRequest": null, "subTotal": null,
        "taxTotal": null, "grossTotal": null, "phones": null, "emails": null,
        "items": [{"id": 1, "quantity": null, "upc": null, "price": null,
                   "discountPrice": null, "dept": null}]});
    p.expect(
        200,
        post.clone(),
        &format!("/transaction{}", q(JANE, "OA-N1")),
        Some(&nulls),
    )
    .await;
    p.expect(
        200,
        post.clone(),
        &format!("/transaction/commit{}", q(JANE, "OA-N1")),
        Some(&json!({"site": null, "coupons": null, "tenders": [{"type": null, "amount": null}]})),
    )
    .await;
    p.expect(
        200,
        post.clone(),
        &format!("/coupons/clip{clip_q}"),
        Some(&json!({"site": null, "customer": null, "add": null, "remove": null})),
    )
    .await;
    let v = p
        .expect(
            200,
            post.clone(),
            &format!("/demographics?site={SITE}"),
            Some(&json!({"site": null, "phones": null, "emails": ["john@example.com"]})),
        )
        .await;
    assert_eq!(v["id"], JOHN, "{v}");
    p.expect(
        200,
        post.clone(),
        &format!("/transaction/cancel{}", q(JOHN, "OA-N2")),
        Some(&json!({"site": null, "customer": null, "transaction": null})),
    )
    .await;
    for body in [
        json!({"phones": ["12345678901"]}),
        json!({"emails": [""]}),
        json!({"items": null, "transientRequest": "no"}),
    ] {
        let v = p
            .expect(
                400,
                post.clone(),
                &format!("/transaction{}", q(JANE, "OA-N3")),
                Some(&body),
            )
            .await;
        assert_eq!(error_id(&v), "INVALID_REQUEST", "{body}: {v}");
    }
    let v = p
        .expect(
            400,
            post.clone(),
            &format!("/transaction/commit{}", q(JANE, "OA-N3")),
            Some(&json!({"tenders": [{"type": "CASH", "amount": "five"}]})),
        )
        .await;
    assert_eq!(error_id(&v), "INVALID_REQUEST", "{v}");

    // ---- images (no credentials needed)
    let path = "/images/coupon-bogo.gif";
    let reply = p.send(&get, path, Body::None, false).await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("image/gif")
    );
    p.check(&get, path, &reply);
    p.expect(200, get.clone(), path, None).await;
    for missing in ["/images/missing.gif", "/images/notes.txt"] {
        let reply = p.send(&get, missing, Body::None, false).await;
        assert_eq!(reply.status, 404);
        p.check(&get, missing, &reply);
    }

    // ---- vouchers
    let code = "CT-SESSION-0001";
    let v = p
        .expect(
            200,
            get.clone(),
            &format!("/vouchers/{code}?site={SITE}"),
            None,
        )
        .await;
    assert_eq!(v["state"], "active", "{v}");
    p.expect(400, get.clone(), &format!("/vouchers/{code}"), None)
        .await;
    let v = p
        .expect(
            404,
            get.clone(),
            &format!("/vouchers/NOPE-0404?site={SITE}"),
            None,
        )
        .await;
    assert_eq!(error_id(&v), "VOUCHER_NOT_FOUND");
    p.expect(
        404,
        post.clone(),
        "/vouchers/NOPE-0404/lock",
        Some(&json!({"site": SITE, "transaction": "OA-V1"})),
    )
    .await;
    let v = p
        .expect(
            200,
            post.clone(),
            &format!("/vouchers/{code}/lock?site={SITE}&transaction=OA-V1"),
            Some(&json!({})),
        )
        .await;
    assert_eq!(
        (v["state"].as_str(), v["lockedBy"].as_str()),
        (Some("locked"), Some("OA-V1")),
        "{v}"
    );
    let v = p
        .expect(
            409,
            post.clone(),
            &format!("/vouchers/{code}/lock"),
            Some(&json!({"site": SITE, "transaction": "OA-V2"})),
        )
        .await;
    assert_eq!(error_id(&v), "VOUCHER_UNAVAILABLE");
    let v = p
        .expect(
            400,
            post.clone(),
            &format!("/vouchers/{code}/validate"),
            Some(&json!({"site": SITE, "transaction": "OA-V1", "moneySpent": 10.00})),
        )
        .await;
    assert_eq!(error_id(&v), "VOUCHER_INVALID");
    let validated = p
        .expect(
            200,
            post.clone(),
            &format!("/vouchers/{code}/validate"),
            Some(&json!({"site": SITE, "transaction": "OA-V1", "moneySpent": 25.00})),
        )
        .await;
    assert_eq!(validated["state"], "validated");
    assert!(
        validated["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("already used at ")),
        "{validated}"
    );
    let retry = p
        .expect(
            200,
            post.clone(),
            &format!("/vouchers/{code}/validate?site={SITE}&transaction=OA-V1"),
            Some(&json!({"moneySpent": 25.00})),
        )
        .await;
    assert_eq!(retry, validated);
    let v = p
        .expect(
            409,
            post.clone(),
            &format!("/vouchers/{code}/validate"),
            Some(&json!({"site": SITE, "transaction": "OA-V2", "moneySpent": 25.00})),
        )
        .await;
    assert!(
        v["errors"][0]["details"]
            .as_str()
            .is_some_and(|d| d.starts_with("already used at ")),
        "{v}"
    );
    p.expect(
        409,
        post.clone(),
        &format!("/vouchers/{code}/lock"),
        Some(&json!({"site": SITE, "transaction": "OA-V2"})),
    )
    .await;
    p.expect(
        200,
        get.clone(),
        &format!("/vouchers/{code}?site={SITE}"),
        None,
    )
    .await;
    let code = "KP-BARCODE-0003";
    p.expect(
        200,
        post.clone(),
        &format!("/vouchers/{code}/lock"),
        Some(&json!({"site": SITE, "transaction": "OA-V3"})),
    )
    .await;
    let v = p
        .expect(
            200,
            post.clone(),
            &format!("/vouchers/{code}/unlock"),
            Some(&json!({"site": SITE, "transaction": "OA-V3"})),
        )
        .await;
    assert_eq!(v["state"], "active", "{v}");
    p.expect(
        200,
        post.clone(),
        &format!("/vouchers/{code}/unlock?site={SITE}&transaction=OA-V3"),
        None,
    )
    .await;
    p.expect(
        400,
        post.clone(),
        &format!("/vouchers/{code}/unlock"),
        Some(&json!({"site": SITE})),
    )
    .await;
    let code = "CV-CODE-0002";
    p.expect(
        400,
        post.clone(),
        &format!("/vouchers/{code}/validate"),
        Some(&json!({"site": SITE, "transaction": "OA-V4"})),
    )
    .await;
    p.expect(
        400,
        post.clone(),
        &format!("/vouchers/{code}/validate"),
        Some(&json!({"site": SITE, "transaction": "OA-V4", "moneySpent": -1})),
    )
    .await;
    p.expect(
        200,
        post.clone(),
        &format!("/vouchers/{code}/validate"),
        Some(&json!({"site": SITE, "transaction": "OA-V4", "moneySpent": 0})),
    )
    .await;

    // ---- probes
    p.expect(200, get.clone(), "/healthz", None).await;
    p.expect(200, get.clone(), "/readyz", None).await;

    // ---- unknown paths and methods
    for path in ["/nope", "/coupons/nope/deeper", "/transactions"] {
        let v = p.expect(404, get.clone(), path, None).await;
        assert_eq!(error_id(&v), "INVALID_REQUEST");
    }
    for (m, path) in [
        (Method::DELETE, "/coupons"),
        (Method::PATCH, "/transaction"),
        (Method::GET, "/transaction/commit"),
        (Method::DELETE, "/coupons/customer"),
        (Method::POST, "/healthz"),
        (Method::PUT, "/vouchers/CT-SESSION-0001/lock"),
    ] {
        let v = p.expect(405, m, path, Some(&json!({}))).await;
        assert_eq!(error_id(&v), "INVALID_REQUEST");
    }
    let reply = p
        .send(&Method::PUT, "/images/coupon-bogo.gif", Body::None, false)
        .await;
    assert_eq!(reply.status, 405);
    p.check(&Method::PUT, "/images/coupon-bogo.gif", &reply);

    // ---- without credentials: every operation, and an unknown path
    let ops: BTreeMap<(String, String), bool> = spec
        .paths()
        .iter()
        .flat_map(|(path, item)| {
            HTTP_METHODS.iter().filter_map(move |m| {
                item.get(*m).map(|op| {
                    let open = op.get("security") == Some(&json!([]));
                    ((path.clone(), m.to_uppercase()), open)
                })
            })
        })
        .collect();
    let empty = json!({});
    for ((template, m), open) in &ops {
        let path = template
            .replace("{file}", "coupon-bogo.gif")
            .replace("{code}", "CT-SESSION-0001");
        let path = format!("{path}{}", q(JOHN, "OA-NOAUTH"));
        let method = Method::from_bytes(m.as_bytes()).unwrap();
        let body = if method == Method::GET {
            Body::None
        } else {
            Body::Json(&empty)
        };
        let reply = p.send(&method, &path, body, false).await;
        if *open {
            assert_eq!(reply.status, 200, "{m} {path} needs no credentials");
        } else {
            assert_eq!(reply.status, 401, "{m} {path} without credentials");
        }
        p.check(&method, &path, &reply);
    }
    let reply = p.send(&get, "/nope", Body::None, false).await;
    assert_eq!(reply.status, 401);
    p.check(&get, "/nope", &reply);
    // Wrong password.
    let wrong = p
        .store
        .client
        .get(p.store.url(&format!("/coupons?site={SITE}")))
        .basic_auth(USER, Some("wrong"))
        .send()
        .await
        .unwrap();
    let reply = Reply {
        status: wrong.status().as_u16(),
        headers: wrong.headers().clone(),
        bytes: wrong.bytes().await.unwrap().to_vec(),
    };
    assert_eq!(reply.status, 401);
    p.check(&get, &format!("/coupons?site={SITE}"), &reply);

    // ---- coverage: every documented operation answered 200 at least once, and every
    // error status the server can be driven to was seen and checked.
    let not_ok: Vec<_> = ops
        .keys()
        .filter(|(t, m)| !p.hits.contains(&(t.clone(), m.clone(), 200)))
        .collect();
    assert!(
        not_ok.is_empty(),
        "operations never driven to a 200: {not_ok:?}"
    );
    let statuses: BTreeSet<u16> = p.hits.iter().map(|(_, _, s)| *s).collect();
    for s in [200, 400, 401, 404, 405, 409, 413] {
        assert!(
            statuses.contains(&s),
            "no answer with status {s} was checked"
        );
    }
}
