//! Conformance with what real CATAPULT lanes send beyond the reference's examples, and with
//! the reference's own rules, against the real edge-server binary over HTTPS.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use e2e::{Store, StoreOptions, PASSWORD, SITE, USER};
use serde_json::{json, Value};

const JANE: &str = "4000000000001";
const JOHN: &str = "4000000000002";

fn q(customer: &str, txn: &str) -> String {
    format!("?site={SITE}&customer={customer}&transaction={txn}")
}

fn item() -> Value {
    json!({"id": 1, "quantity": 2, "upc": 894773001193u64, "price": 12.99, "discountPrice": 12.99, "dept": 2})
}

fn error_id(v: &Value) -> &str {
    v["errors"][0]["id"].as_str().unwrap_or_default()
}

/// GET without credentials; returns (status, content type, body bytes).
async fn get_open(store: &Store, path: &str) -> (u16, String, Vec<u8>) {
    let r = store.client.get(store.url(path)).send().await.unwrap();
    let status = r.status().as_u16();
    let ct = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (status, ct, r.bytes().await.unwrap().to_vec())
}

/// A sale updated at `update` (coupons apply) and committed at `commit` (receipt lines).
async fn sale_applies_and_commits(store: &Store, update: &str, commit: &str, txn: &str) {
    let (status, v) = store
        .post(
            &format!("{update}{}", q(JANE, txn)),
            &json!({"items": [item()]}),
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{v}");
    assert!(
        v["applied"].as_array().is_some_and(|a| !a.is_empty()),
        "{v}"
    );
    let (status, v) = store
        .post(
            &format!("{commit}{}", q(JANE, txn)),
            &json!({"coupons": []}),
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{v}");
    assert!(
        v["receiptLines"].as_array().is_some_and(|l| !l.is_empty()),
        "{v}"
    );
}

#[tokio::test]
async fn paths_with_repeated_or_trailing_slashes_answer_like_the_plain_path() {
    let store = Store::start(StoreOptions::default()).await.unwrap();
    let catalog = store.get(&format!("/coupons?site={SITE}")).await.unwrap();
    assert_eq!(catalog.0, 200);
    for path in ["//coupons", "/coupons/", "//coupons//", "///coupons"] {
        let got = store.get(&format!("{path}?site={SITE}")).await.unwrap();
        assert_eq!(got, catalog, "{path}");
    }
    let meta = store
        .get(&format!("/coupons/customer?site={SITE}&customer={JANE}"))
        .await
        .unwrap();
    let got = store
        .get(&format!("//coupons//customer/?site={SITE}&customer={JANE}"))
        .await
        .unwrap();
    assert_eq!(got, meta);

    // Writes too: an update and its commit, as a lane with base URL `https://host/` sends them.
    sale_applies_and_commits(&store, "//transaction", "//transaction/commit/", "NP-1").await;

    // Paths open without credentials stay open, others stay closed.
    assert_eq!(get_open(&store, "//healthz").await.0, 200);
    let (status, ct, body) = get_open(&store, "//images//coupon-bogo.gif").await;
    assert_eq!((status, ct.as_str()), (200, "image/gif"));
    assert!(body.starts_with(b"GIF89a"));
    let (status, _, _) = get_open(&store, &format!("//coupons?site={SITE}")).await;
    assert_eq!(status, 401);

    // Unmatched paths and methods are still answered, and logged, by their normalised path.
    let (status, e) = store.get("//no//such/path/").await.unwrap();
    assert_eq!((status, error_id(&e)), (404, "INVALID_REQUEST"), "{e}");
    assert!(
        e["errors"][0]["details"]
            .as_str()
            .is_some_and(|d| d.contains("/no/such/path")),
        "{e}"
    );
    assert!(store.log_tail().contains("/no/such/path"));
    let r = store
        .client
        .get(store.url("//transaction/commit/"))
        .basic_auth(USER, Some(PASSWORD))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 405);
    assert_eq!(r.headers()["allow"], "POST");
}

/// CATAPULT's base URL is "scheme + host + optional path prefix" (§1): a lane configured
/// with `https://edge/catapult/` calls `/catapult/coupons`, `//catapult//transaction/commit`
/// and fetches images below the prefix too. Without `lanes.path_prefix` those are 404.
#[tokio::test]
async fn a_base_url_with_a_path_prefix_is_served_below_it() {
    let store = Store::start(StoreOptions {
        lanes_toml: "path_prefix = \"/pos/catapult/\"\nuse_external_images = true".into(),
        ..StoreOptions::default()
    })
    .await
    .unwrap();
    let plain = store.get(&format!("/coupons?site={SITE}")).await.unwrap();
    assert_eq!(plain.0, 200, "{:?}", plain.1);
    let prefixed = store
        .get(&format!("/pos/catapult/coupons?site={SITE}"))
        .await
        .unwrap();
    assert_eq!(prefixed, plain);
    let got = store
        .get(&format!("//pos/catapult//coupons/?site={SITE}"))
        .await
        .unwrap();
    assert_eq!(got, plain);

    // An external image URL names the prefix, and answers without credentials.
    let image = plain.1["coupons"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["imageUrl"].as_str())
        .find(|u| u.ends_with("coupon-bogo.gif"))
        .unwrap()
        .to_owned();
    let base = store.url("");
    let base = base.trim_end_matches('/');
    assert_eq!(image, format!("{base}/pos/catapult/images/coupon-bogo.gif"));
    let (status, ct, body) = get_open(&store, "/pos/catapult/images/coupon-bogo.gif").await;
    assert_eq!((status, ct.as_str()), (200, "image/gif"));
    assert!(body.starts_with(b"GIF89a"));
    assert_eq!(get_open(&store, "/pos/catapult/healthz").await.0, 200);
    assert_eq!(
        get_open(&store, &format!("/pos/catapult/coupons?site={SITE}"))
            .await
            .0,
        401
    );

    // A sale through the prefix: update, then commit.
    sale_applies_and_commits(
        &store,
        "/pos/catapult/transaction",
        "//pos/catapult/transaction/commit/",
        "PX-1",
    )
    .await;

    // Only whole segments are a prefix.
    let (status, e) = store
        .get(&format!("/pos/catapultx/coupons?site={SITE}"))
        .await
        .unwrap();
    assert_eq!((status, error_id(&e)), (404, "INVALID_REQUEST"), "{e}");
}

#[tokio::test]
async fn the_basic_auth_scheme_name_is_case_insensitive() {
    let store = Store::start(StoreOptions::default()).await.unwrap();
    // lane:lane-secret
    let token = "bGFuZTpsYW5lLXNlY3JldA==";
    let path = format!("/coupons?site={SITE}");
    for scheme in ["Basic", "basic", "BASIC", "bAsIc"] {
        let r = store
            .client
            .get(store.url(&path))
            .header("authorization", format!("{scheme} {token}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "{scheme}");
    }
    for value in [format!("Bearer {token}"), format!("Basic{token}")] {
        let r = store
            .client
            .get(store.url(&path))
            .header("authorization", &value)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 401, "{value}");
    }
}

#[tokio::test]
async fn demographics_finds_formatted_phones_by_their_digits() {
    let store = Store::start(StoreOptions::default()).await.unwrap();
    let snapshot = store.dir.join("phones.json");
    let customers = json!({"customers": [
        {"id": "PH1", "firstName": "Paren", "phone": "(828)265-2907"},
        {"id": "PH2", "firstName": "Dash", "phone": "704-555-0101"},
        {"id": "PH3", "firstName": "Country", "phone": "1-336-555-0199"},
        {"id": "PH4", "firstName": "Plus", "phone": "+19195550142"}
    ]});
    std::fs::write(&snapshot, customers.to_string()).unwrap();
    store.import(&snapshot).unwrap();
    let demo = format!("/demographics?site={SITE}");
    for (digits, id, phone) in [
        ("8282652907", "PH1", "(828)265-2907"),
        ("7045550101", "PH2", "704-555-0101"),
        ("3365550199", "PH3", "1-336-555-0199"),
        ("9195550142", "PH4", "+19195550142"),
    ] {
        let (status, v) = store
            .post(&demo, &json!({"phones": [digits]}))
            .await
            .unwrap();
        assert_eq!(status, 200, "{digits}: {v}");
        assert_eq!(
            (v["id"].as_str(), v["phone"].as_str()),
            (Some(id), Some(phone)),
            "{digits}: the stored phone is answered as stored: {v}"
        );
    }
    // Digits that are not a stored phone's still find nobody.
    let (status, v) = store
        .post(&demo, &json!({"phones": ["2652907", "8282652900"]}))
        .await
        .unwrap();
    assert_eq!((status, error_id(&v)), (200, "CUSTOMER_NOT_FOUND"), "{v}");
}

#[tokio::test]
async fn explicit_nulls_in_optional_fields_read_as_absent() {
    let store = Store::start(StoreOptions::default()).await.unwrap();

    // Update: every optional field null, and an item whose optional fields are null.
    let all_null = json!({"site": null, "customer": null, "transaction": null, "cashier": null,
        "terminal": null, "time": null, "transientRequest": null, "items": null, "subTotal": null,
        "taxTotal": null, "grossTotal": null, "phones": null, "emails": null});
    let (status, v) = store
        .post(&format!("/transaction{}", q(JANE, "NULL-1")), &all_null)
        .await
        .unwrap();
    assert_eq!((status, &v["applied"]), (200, &json!([])), "{v}");
    let null_item = json!({"id": 2, "quantity": null, "upc": null, "price": null,
        "discountPrice": null, "dept": null});
    let (status, v) = store
        .post(
            &format!("/transaction{}", q(JANE, "NULL-1")),
            &json!({"transientRequest": null, "items": [item(), null_item], "phones": null}),
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{v}");
    assert!(
        v["applied"].as_array().is_some_and(|a| !a.is_empty()),
        "a non-transient update with the item gets its coupons: {v}"
    );

    // Commit: null lists (an empty list redeems what the sale holds), null tender fields.
    let (status, v) = store
        .post(
            &format!("/transaction/commit{}", q(JANE, "NULL-1")),
            &json!({"site": null, "customer": null, "transaction": null, "coupons": null,
                    "tenders": null}),
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{v}");
    assert!(
        v["receiptLines"].as_array().is_some_and(|l| !l.is_empty()),
        "{v}"
    );
    let (status, v) = store
        .post(
            &format!("/transaction/commit{}", q(JOHN, "NULL-2")),
            &json!({"coupons": [], "tenders": [{"type": null, "amount": null}]}),
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{v}");

    // Clip.
    let clip = format!("/coupons/customer?site={SITE}&customer={JOHN}");
    let (status, v) = store
        .post(
            &clip,
            &json!({"site": null, "customer": null, "add": null, "remove": null}),
        )
        .await
        .unwrap();
    assert_eq!((status, v), (200, json!({"added": [], "removed": []})));
    let (status, v) = store
        .post(&clip, &json!({"add": ["PCT10"], "remove": null}))
        .await
        .unwrap();
    assert_eq!(
        (status, v),
        (200, json!({"added": ["PCT10"], "removed": []}))
    );

    // Demographics.
    let demo = format!("/demographics?site={SITE}");
    let (status, v) = store
        .post(
            &demo,
            &json!({"phones": null, "emails": ["jane@example.com"]}),
        )
        .await
        .unwrap();
    assert_eq!((status, v["id"].as_str()), (200, Some(JANE)), "{v}");
    let (status, v) = store
        .post(
            &demo,
            &json!({"site": null, "phones": ["5559876543"], "emails": null}),
        )
        .await
        .unwrap();
    assert_eq!((status, v["id"].as_str()), (200, Some(JOHN)), "{v}");

    // Cancel (POST body).
    let (status, v) = store
        .post(
            &format!("/transaction/cancel{}", q(JOHN, "NULL-3")),
            &json!({"site": null, "customer": null, "transaction": null}),
        )
        .await
        .unwrap();
    assert_eq!((status, v), (200, json!({})));

    // Required fields and wrong types are still refused.
    for body in [
        json!({"items": [{"id": null}]}),
        json!({"items": "none"}),
        json!({"transientRequest": "no"}),
        json!({"phones": [null]}),
    ] {
        let (status, v) = store
            .post(&format!("/transaction{}", q(JANE, "NULL-4")), &body)
            .await
            .unwrap();
        assert_eq!(
            (status, error_id(&v)),
            (400, "INVALID_REQUEST"),
            "{body}: {v}"
        );
    }
}

#[tokio::test]
async fn commit_tenders_carry_any_type_and_a_numeric_amount() {
    let store = Store::start(StoreOptions::default()).await.unwrap();
    let tenders = json!([{"type": "CASH", "amount": 5.21}, {"type": "EBT FOOD", "amount": -3.10},
                         {"type": "GIFT"}, {"amount": 0}, {}]);
    let (status, v) = store
        .post(
            &format!("/transaction/commit{}", q(JANE, "TND-1")),
            &json!({"coupons": [], "tenders": tenders}),
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{v}");
    for (what, amount) in [
        ("letters", json!("five")),
        ("a boolean", json!(true)),
        ("an object", json!({"value": 5})),
        ("out of range", json!(1e300)),
    ] {
        let (status, v) = store
            .post(
                &format!("/transaction/commit{}", q(JANE, "TND-2")),
                &json!({"coupons": [], "tenders": [{"type": "CASH", "amount": amount}]}),
            )
            .await
            .unwrap();
        assert_eq!(
            (status, error_id(&v)),
            (400, "INVALID_REQUEST"),
            "{what}: {v}"
        );
    }
    // The refused commits changed nothing: the transaction can still be committed.
    let (status, _) = store
        .post(
            &format!("/transaction/commit{}", q(JANE, "TND-2")),
            &json!({"coupons": [], "tenders": [{"type": "CASH", "amount": 1.00}]}),
        )
        .await
        .unwrap();
    assert_eq!(status, 200);
}

#[tokio::test]
async fn update_phones_and_emails_are_held_to_catapults_limits() {
    let store = Store::start(StoreOptions::default()).await.unwrap();
    let path = format!("/transaction{}", q(JANE, "LIM-1"));
    let ok = json!({"items": [item()], "phones": ["8282652907", ""],
                    "emails": ["jane@example.com", "x".repeat(254)]});
    let (status, v) = store.post(&path, &ok).await.unwrap();
    assert_eq!(status, 200, "{v}");
    for (body, field) in [
        (
            json!({"phones": ["8282652907", "18282652907"]}),
            "phones[1]",
        ),
        (json!({"emails": [""]}), "emails[0]"),
        (json!({"emails": ["a@b.c", "x".repeat(255)]}), "emails[1]"),
    ] {
        let (status, v) = store.post(&path, &body).await.unwrap();
        assert_eq!(
            (status, error_id(&v)),
            (400, "INVALID_REQUEST"),
            "{body}: {v}"
        );
        assert!(
            v["errors"][0]["details"]
                .as_str()
                .is_some_and(|d| d.contains(field)),
            "the details name `{field}`: {v}"
        );
    }
}

#[tokio::test]
async fn unknown_fields_are_ignored_and_only_their_names_logged_once() {
    let store = Store::start(StoreOptions::default()).await.unwrap();
    let extra = json!({"sharedkey": "KEY-VALUE-1", "sharedsecret": "SECRET-VALUE-2"});
    let with_extra = |body: Value| {
        let mut body = body;
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        body
    };
    let update = format!("/transaction{}", q(JANE, "UNK-1"));
    for _ in 0..2 {
        let (status, v) = store
            .post(&update, &with_extra(json!({"items": [item()]})))
            .await
            .unwrap();
        assert_eq!(status, 200, "{v}");
        assert!(
            v["applied"].as_array().is_some_and(|a| !a.is_empty()),
            "{v}"
        );
    }
    let requests = [
        (
            format!("/coupons/customer?site={SITE}&customer={JOHN}"),
            json!({"add": ["PCT10"]}),
        ),
        (
            format!("/demographics?site={SITE}"),
            json!({"phones": ["5551234567"]}),
        ),
        (
            format!("/transaction/cancel{}", q(JOHN, "UNK-2")),
            json!({}),
        ),
        (
            format!("/transaction/commit{}", q(JANE, "UNK-1")),
            json!({"coupons": []}),
        ),
    ];
    for (path, body) in requests {
        let (status, v) = store.post(&path, &with_extra(body)).await.unwrap();
        assert_eq!(status, 200, "{path}: {v}");
        assert!(v.get("errors").is_none(), "{path}: {v}");
    }
    let (status, _) = store
        .post(
            &format!("/transaction/commit{}", q(JANE, "UNK-1")),
            &json!({"coupons": [], "sharedkey": "x"}),
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "a replayed commit too");

    let log = std::fs::read_to_string(store.dir.join("edge-server.log")).unwrap();
    assert!(
        !log.contains("KEY-VALUE-1") && !log.contains("SECRET-VALUE-2"),
        "values are never logged"
    );
    for endpoint in ["update", "clip", "demographics", "cancel", "commit"] {
        for field in ["sharedkey", "sharedsecret"] {
            let lines = log
                .lines()
                .filter(|l| {
                    l.contains("request field unknown")
                        && l.contains(&format!("endpoint={endpoint}"))
                        && l.contains(&format!("field={field}"))
                })
                .count();
            assert_eq!(lines, 1, "{endpoint} {field} logged once:\n{log}");
        }
    }
}

/// CATAPULT §5.8: UPCs come as JSON numbers; a writer that prints a large whole number as
/// `894773001193.0` or `8.94773001193E11` still means 894773001193 (BOGO1's dog food).
#[tokio::test]
async fn upcs_printed_with_a_fraction_or_an_exponent_still_match() {
    let store = Store::start(StoreOptions::default()).await.unwrap();
    for (n, upc) in ["894773001193.0", "8.94773001193E11"].iter().enumerate() {
        let txn = format!("UPC-{n}");
        let body = format!(
            r#"{{"transientRequest": true, "items": [{{"id": 1, "quantity": 2, "upc": {upc}, "price": 12.99, "discountPrice": 12.99, "dept": 2}}]}}"#
        );
        let r = store
            .client
            .post(store.url(&format!("/transaction{}", q(JANE, &txn))))
            .basic_auth(USER, Some(PASSWORD))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let (status, v) = e2e::json_of(r).await.unwrap();
        assert_eq!(status, 200, "{v}");
        assert!(
            v["applied"]
                .as_array()
                .unwrap()
                .iter()
                .any(|a| a["couponId"] == "BOGO1"),
            "{upc}: {v}"
        );
    }
}

/// One keep-alive HTTPS connection to the store, driven by hand so that a test sees when the
/// server closes it: each request is written and its answer read in full (Content-Length).
struct RawLane {
    tls: rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>,
}

impl RawLane {
    fn connect(store: &Store) -> RawLane {
        let config = e2e::lane_tls(&store.dir.join("tls/cert.pem")).unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
        let tcp = std::net::TcpStream::connect(("127.0.0.1", store.port)).unwrap();
        tcp.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        RawLane {
            tls: rustls::StreamOwned::new(conn, tcp),
        }
    }

    /// `GET /healthz` on this connection: its status, or `None` when the server has closed
    /// the connection.
    fn healthz(&mut self) -> Option<u16> {
        use std::io::{Read, Write};
        let request = "GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n";
        self.tls.write_all(request.as_bytes()).ok()?;
        self.tls.flush().ok()?;
        let mut answer = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let text = String::from_utf8_lossy(&answer).into_owned();
            if let Some(end) = text.find("\r\n\r\n") {
                let length: usize = text[..end]
                    .lines()
                    .find_map(|l| {
                        let (name, value) = l.split_once(':')?;
                        name.eq_ignore_ascii_case("content-length")
                            .then(|| value.trim().parse().ok())?
                    })
                    .expect("a Content-Length");
                if answer.len() >= end + 4 + length {
                    return text.get(9..12)?.parse().ok();
                }
            }
            match self.tls.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => answer.extend_from_slice(&chunk[..n]),
            }
        }
    }
}

#[tokio::test]
async fn an_idle_lane_connection_outlives_the_lanes_own_idle_limit() {
    let store = Store::start(StoreOptions::default()).await.unwrap();
    let mut lane = RawLane::connect(&store);
    assert_eq!(lane.healthz(), Some(200));
    // Longer than a Java lane keeps an idle connection (5 s), which was also the server's
    // own limit before `server.keep_alive_secs` (default 75 s): the lane closes first.
    tokio::time::sleep(std::time::Duration::from_secs(6)).await;
    assert_eq!(lane.healthz(), Some(200), "the idle connection was closed");
}

#[tokio::test]
async fn server_keep_alive_secs_closes_idle_connections_after_that_long() {
    let store = Store::start(StoreOptions {
        server_toml: "keep_alive_secs = 1".into(),
        ..StoreOptions::default()
    })
    .await
    .unwrap();
    let mut lane = RawLane::connect(&store);
    assert_eq!(lane.healthz(), Some(200));
    assert_eq!(lane.healthz(), Some(200), "reused at once");
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert_eq!(lane.healthz(), None, "still open after 3 s idle");
    // A new connection is served.
    assert_eq!(RawLane::connect(&store).healthz(), Some(200));

    // 0: every connection is closed after its answer.
    let store = Store::start(StoreOptions {
        server_toml: "keep_alive_secs = 0".into(),
        ..StoreOptions::default()
    })
    .await
    .unwrap();
    let mut lane = RawLane::connect(&store);
    assert_eq!(lane.healthz(), Some(200));
    assert_eq!(lane.healthz(), None, "kept open with keep_alive_secs = 0");
}
