//! Simulated Coupontools v3 (`shared/api/coupontools.md`): every call a POST under `/v3/`,
//! credentials in headers or body, status inside the JSON body.

use super::{
    dispatch, header, items, ledger_body, query_pairs, text, Data as SimData, Provider, Reply,
    State,
};
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Map, Value};

const P: Provider = Provider::Coupontools;
const ACTIONS: [&str; 6] = ["validate", "lock", "unlock", "void", "unvoid", "claim"];

/// Coupontools' state.
#[derive(Debug, Default)]
pub struct Data {
    /// Campaign objects (`ID`, `code`, `name`, `title`, `status`, `url`, `tags`, `active`).
    pub campaigns: Vec<Value>,
    /// Session records shaped like `couponsession/data` answers (without `status`/`action`).
    pub sessions: Vec<Value>,
}

fn stringify(v: &Value) -> Value {
    match v {
        Value::String(_) | Value::Null => v.clone(),
        Value::Bool(b) => json!(if *b { "1" } else { "0" }),
        Value::Number(n) => json!(n.to_string()),
        Value::Object(o) => {
            Value::Object(o.iter().map(|(k, v)| (k.clone(), stringify(v))).collect())
        }
        Value::Array(_) => v.clone(),
    }
}

fn now() -> String {
    chrono::Utc::now().format("%Y-%m-%d %H:%M:%S").to_string()
}

impl Data {
    pub fn from_seed(v: &Value) -> Result<Data, String> {
        let mut d = Data::default();
        for c in items(v, "campaigns") {
            let id = text(c, "ID");
            if !valid_campaign(&id) {
                return Err(format!(
                    "coupontools.campaigns[].ID must look like cam_123: {id:?}"
                ));
            }
            let mut full = json!({
                "ID": id, "code": "", "name": "", "title": "", "status": "active",
                "url": "", "tags": "", "active": true
            });
            merge(&mut full, c);
            if text(&full, "url").is_empty() {
                full["url"] = json!(format!("https://digicpn.com/p/{}", text(&full, "code")));
            }
            d.campaigns.push(full);
        }
        for x in items(v, "sessions") {
            let id = text(x, "session");
            if !valid_session(&id) {
                return Err(format!("coupontools.sessions[].session is invalid: {id:?}"));
            }
            let campaign = text(x, "campaign");
            let Some(cam) = d.campaigns.iter().find(|c| text(c, "ID") == campaign) else {
                return Err(format!(
                    "coupontools session {id}: unknown campaign {campaign:?}"
                ));
            };
            let code = text(cam, "code");
            let mut status = json!({
                "created_date_utc": "2026-01-01 00:00:00", "opened": "1", "open_date_utc": "2026-01-01 00:00:00",
                "played": "0", "played_date_utc": "", "claimed": "1", "claim_date_utc": "2026-01-01 00:00:00",
                "claimtype": "", "saved_to_passbook": "0", "saved_to_passbook_date_utc": "",
                "saved_to_androidpay": "0", "saved_to_androidpay_date_utc": "",
                "validated": "0", "validation_date_utc": "", "own_validation_code": "", "validation_value": "",
                "redeem_location_ID": "", "redeem_location_company_name": "", "redeem_location_street": "",
                "redeem_location_zip": "", "redeem_location_city": "", "redeem_location_province": "",
                "redeem_location_country": "", "redeem_location_phone": "", "redeem_location_website": "",
                "redeem_location_pincode": "", "voided": "0", "unvoided_date_utc": "", "locked": "0",
                "unlocked_date_utc": "", "value": "", "customid": "", "expiration_date": "",
                "utm_campaign": null, "utm_source": null, "utm_medium": null, "utm_term": null, "utm_content": null
            });
            if let Some(st) = x.get("status") {
                merge(&mut status, &stringify(st));
            }
            let mut user = json!({
                "gender": "", "first_name": "", "last_name": "", "address": "", "zip": "", "city": "",
                "birthday": "", "email": "", "phone": "", "answer": "", "custom1": "", "custom2": "",
                "custom3": "", "custom4": "", "custom5": "", "custom6": "", "custom7": "", "customid": "",
                "checkbox1": "0", "checkbox2": "0", "checkbox3": "0", "checkbox4": "0", "device": "",
                "profile_picture": "", "ip_lat": "", "ip_long": ""
            });
            if let Some(u) = x.get("user") {
                merge(&mut user, &stringify(u));
            }
            d.sessions.push(json!({
                "campaign": campaign,
                "session": id,
                "session_url": format!("https://digicpn.com/p/{code}/{id}"),
                "sequenceid": x.get("sequenceid").map(stringify).unwrap_or(json!("")),
                "customid": x.get("customid").map(stringify).unwrap_or(json!("")),
                "data": {
                    "status": status,
                    "user": user,
                    "campaign": {"ID": campaign, "code": code, "url": text(cam, "url"),
                        "status": text(cam, "status"), "coupon_tags": text(cam, "tags")}
                }
            }));
        }
        Ok(d)
    }

    pub fn to_json(&self) -> Value {
        json!({"campaigns": self.campaigns, "sessions": self.sessions})
    }

    /// By full session ID, or by a unique prefix of at least 6 characters (short code).
    fn find(&self, id: &str) -> Option<usize> {
        if let Some(i) = self.sessions.iter().position(|x| text(x, "session") == id) {
            return Some(i);
        }
        if id.len() < 6 {
            return None;
        }
        let hits: Vec<usize> = (0..self.sessions.len())
            .filter(|&i| text(&self.sessions[i], "session").starts_with(id))
            .collect();
        match hits.as_slice() {
            [one] => Some(*one),
            _ => None,
        }
    }
}

fn merge(into: &mut Value, from: &Value) {
    if let (Some(a), Some(b)) = (into.as_object_mut(), from.as_object()) {
        for (k, v) in b {
            a.insert(k.clone(), v.clone());
        }
    }
}

fn valid_campaign(id: &str) -> bool {
    id.strip_prefix("cam_")
        .is_some_and(|r| !r.is_empty() && r.chars().all(|c| c.is_ascii_alphanumeric()))
}

fn valid_session(id: &str) -> bool {
    !id.is_empty()
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

pub fn default_seed() -> Value {
    json!({
        "campaigns": [
            {"ID": "cam_100001", "code": "vuhykb", "name": "5 off 20", "title": "$5 off $20",
             "status": "active", "tags": "edge,demo", "active": true}
        ],
        "sessions": [
            {"session": "session-0001", "campaign": "cam_100001",
             "status": {"value": "5.00", "expiration_date": "2099-12-31 23:59:59"},
             "user": {"first_name": "Jane", "last_name": "Doe", "email": "jane@example.com", "phone": "5551234567"}},
            {"session": "ac6s7u3g8a25ja7x9qg87", "campaign": "cam_100001",
             "status": {"value": "5.00", "expiration_date": "2099-12-31 23:59:59"}}
        ]
    })
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    for path in [
        "coupon/list",
        "coupon/info",
        "campaign/data",
        "campaign/opens",
        "campaign/claims",
        "campaign/validations",
        "couponsession/data",
        "couponsession/update",
        "couponsession/search",
    ] {
        cfg.route(
            &format!("/v3/{path}"),
            web::post().to(
                move |st: web::Data<State>, req: HttpRequest, body: web::Bytes| {
                    call(st, req, body, path)
                },
            ),
        );
    }
}

/// The request's parameters: JSON body (values as strings) or form-encoded body.
fn params(req: &HttpRequest, body: &[u8]) -> Result<Map<String, Value>, ()> {
    let text = String::from_utf8_lossy(body);
    if text.trim().is_empty() {
        return Ok(Map::new());
    }
    let ctype = header(req, "content-type").unwrap_or_default();
    if ctype.starts_with("application/x-www-form-urlencoded") {
        return Ok(query_pairs(&text)
            .into_iter()
            .map(|(k, v)| (k, json!(v)))
            .collect());
    }
    match serde_json::from_str::<Value>(&text) {
        Ok(Value::Object(o)) => Ok(o.iter().map(|(k, v)| (k.clone(), stringify(v))).collect()),
        _ => Err(()),
    }
}

fn ok(extra: Value) -> Reply {
    let mut body = json!({"status": {"status": "OK"}});
    merge(&mut body, &extra);
    Reply::json(200, body)
}

/// Error envelope, first documented variant (`error_code` an integer).
fn fail(code: u32, message: &str) -> Reply {
    Reply::json(
        200,
        json!({"status": {"status": "failed", "errors": {"error_code": code, "error_message": message}}}),
    )
}

/// Error envelope, second documented variant (`error_code` a list, with descriptions).
fn fail_described(code: u32, message: &str, description: &str) -> Reply {
    Reply::json(
        200,
        json!({"status": {"status": "failed", "errors": {"error_message": message,
            "error_message_description": [description], "error_code": [code]}}}),
    )
}

const UNPROCESSABLE: &str = "HTTP/1.0 422 Unprocessable entity.";

async fn call(
    st: web::Data<State>,
    req: HttpRequest,
    body: web::Bytes,
    path: &'static str,
) -> HttpResponse {
    let p = params(&req, &body);
    let write = if path == "couponsession/update" {
        let get = |k: &str| {
            p.as_ref()
                .ok()
                .and_then(|m| m.get(k))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let action = get("action");
        let op = if ACTIONS.contains(&action.as_str()) {
            action
        } else {
            "update".to_owned()
        };
        Some((op, get("couponsession")))
    } else {
        None
    };
    let write_ref = write
        .as_ref()
        .map(|(op, key)| (op.as_str(), vec![key.clone()]));
    dispatch(&st, P, &req, &body, write_ref, |d, req, body| {
        let reply = answer(d, req, p.as_ref().ok(), path);
        if let Some((op, key)) = &write {
            let (outcome, applied) = outcome(&reply);
            d.ledger.record(
                P.name(),
                op,
                key,
                reply.status,
                &outcome,
                applied,
                ledger_body(body),
            );
        }
        reply
    })
    .await
}

fn outcome(reply: &Reply) -> (String, bool) {
    let errors = reply
        .body
        .as_ref()
        .and_then(|b| b.pointer("/status/errors"));
    match errors {
        None => ("ok".into(), true),
        Some(e) => {
            let code = match e.get("error_code") {
                Some(Value::Array(a)) => a.first().map(Value::to_string).unwrap_or_default(),
                Some(c) => c.to_string(),
                None => String::new(),
            };
            (code, false)
        }
    }
}

fn answer(
    d: &mut SimData,
    req: &HttpRequest,
    params: Option<&Map<String, Value>>,
    path: &str,
) -> Reply {
    let empty = Map::new();
    let params_ok = params.is_some();
    let params = params.unwrap_or(&empty);
    // Numbers and booleans are read as their text (`page`: number, `only_active`: true/false).
    let get = |k: &str| match params.get(k) {
        Some(Value::String(s)) => s.clone(),
        Some(v @ (Value::Number(_) | Value::Bool(_))) => v.to_string(),
        _ => String::new(),
    };
    let id = header(req, "x-client-id")
        .map(str::to_owned)
        .unwrap_or_else(|| get("client_id"));
    let secret = header(req, "x-client-secret")
        .map(str::to_owned)
        .unwrap_or_else(|| get("client_secret"));
    if id != d.config.coupontools_client_id || secret != d.config.coupontools_client_secret {
        return fail(
            1000,
            "HTTP/1.0 401 Unauthorized. Client ID or Secret not correct.",
        );
    }
    if !params_ok {
        return fail(
            300,
            "HTTP/1.0 400 Bad Request. Body is not JSON or form data.",
        );
    }
    let page_size = d.config.page_size;
    let ignore_page = d.faults(Provider::Coupontools).ignore_page;
    let ct = &mut d.coupontools;
    match path {
        "coupon/list" => {
            if !get("folder").is_empty() {
                return fail(515, "Folder not found.");
            }
            let only_active = get("only_active") == "true" || get("only_active") == "1";
            let tags: Vec<String> = get("tags")
                .split(',')
                .map(|t| t.trim().to_owned())
                .filter(|t| !t.is_empty())
                .collect();
            let category = get("category");
            let list: Vec<Value> = ct
                .campaigns
                .iter()
                .filter(|c| {
                    !only_active || c.get("active").and_then(Value::as_bool).unwrap_or(true)
                })
                .filter(|c| {
                    let have: Vec<String> = text(c, "tags")
                        .split(',')
                        .map(|t| t.trim().to_owned())
                        .collect();
                    tags.iter().all(|t| have.contains(t))
                })
                .filter(|c| category.is_empty() || text(c, "category") == category)
                .map(|c| {
                    json!({"ID": text(c, "ID"), "code": text(c, "code"), "name": text(c, "name"),
                    "title": text(c, "title"), "status": text(c, "status"), "url": text(c, "url")})
                })
                .collect();
            ok(json!({"coupon_info": list}))
        }
        "coupon/info" => {
            let cam = get("campaign");
            if cam.is_empty() {
                return fail(200, "Required parameter missing: campaign");
            }
            if !valid_campaign(&cam) {
                return fail(301, "Invalid argument: campaign");
            }
            match ct.campaigns.iter().find(|c| text(c, "ID") == cam) {
                Some(c) => {
                    let mut info = c.clone();
                    if matches!(get("show_usage_stats").as_str(), "true" | "1") {
                        let n = ct
                            .sessions
                            .iter()
                            .filter(|x| text(x, "campaign") == cam)
                            .count();
                        let claimed = ct
                            .sessions
                            .iter()
                            .filter(|x| {
                                text(x, "campaign") == cam
                                    && x.pointer("/data/status/claimed").and_then(Value::as_str)
                                        == Some("1")
                            })
                            .count();
                        info["usage_stats"] =
                            json!({"sessions": n.to_string(), "claimed": claimed.to_string()});
                    }
                    ok(json!({"coupon_info": info}))
                }
                None => fail(502, "Campaign ID not found."),
            }
        }
        "campaign/data" | "campaign/opens" | "campaign/claims" | "campaign/validations" => {
            let cam = get("campaign");
            if cam.is_empty() {
                return fail(200, "Required parameter missing: campaign");
            }
            if !valid_campaign(&cam) {
                return fail(301, "Invalid argument: campaign");
            }
            if !ct.campaigns.iter().any(|c| text(c, "ID") == cam) {
                return fail(502, "Campaign ID not found.");
            }
            let page = match get("page").as_str() {
                "" => 1,
                p => match p.parse::<usize>() {
                    Ok(n) if n >= 1 => n,
                    _ => return fail(301, "Invalid argument: page"),
                },
            };
            let page = if ignore_page { 1 } else { page };
            let Some(start) = date_bound(&get("start_date"), false) else {
                return fail(
                    300,
                    "Invalid value: start_date (yyyy-MM-dd or yyyy-MM-dd hh-mm)",
                );
            };
            let Some(end) = date_bound(&get("end_date"), true) else {
                return fail(
                    300,
                    "Invalid value: end_date (yyyy-MM-dd or yyyy-MM-dd hh-mm)",
                );
            };
            let (flag, date) = match path {
                "campaign/opens" => (Some("opened"), "open_date_utc"),
                "campaign/claims" => (Some("claimed"), "claim_date_utc"),
                "campaign/validations" => (Some("validated"), "validation_date_utc"),
                _ => (None, "created_date_utc"),
            };
            let all: Vec<&Value> = ct
                .sessions
                .iter()
                .filter(|x| text(x, "campaign") == cam)
                .filter(|x| {
                    flag.is_none_or(|f| {
                        x.pointer(&format!("/data/status/{f}"))
                            .and_then(Value::as_str)
                            == Some("1")
                    })
                })
                .filter(|x| {
                    let when = x
                        .pointer(&format!("/data/status/{date}"))
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    (start.is_empty() || when >= start.as_str())
                        && (end.is_empty() || when <= end.as_str())
                })
                .collect();
            let total = all.len();
            let list: Vec<Value> = all
                .into_iter()
                .skip((page - 1).saturating_mul(page_size))
                .take(page_size)
                .cloned()
                .collect();
            ok(
                json!({"campaign": cam, "page": page.to_string(), "total": total.to_string(), "sessions": list}),
            )
        }
        "couponsession/data" => {
            let i = match session_index(ct, &get("couponsession")) {
                Ok(i) => i,
                Err(r) => return r,
            };
            let mut body = ct.sessions[i].clone();
            body["action"] = json!("retrieve_all_session_data");
            ok(body)
        }
        "couponsession/search" => {
            let code = get("own_validation_code");
            let phone = get("phone");
            let email = get("email");
            if code.is_empty() && phone.is_empty() && email.is_empty() {
                return fail(
                    200,
                    "Required parameter missing: own_validation_code, phone or email",
                );
            }
            let hits: Vec<Value> = ct
                .sessions
                .iter()
                .filter(|x| {
                    code.is_empty()
                        || x.pointer("/data/status/own_validation_code")
                            .and_then(Value::as_str)
                            == Some(code.as_str())
                })
                .filter(|x| {
                    phone.is_empty()
                        || x.pointer("/data/user/phone").and_then(Value::as_str)
                            == Some(phone.as_str())
                })
                .filter(|x| {
                    email.is_empty()
                        || x.pointer("/data/user/email")
                            .and_then(Value::as_str)
                            .is_some_and(|e| e.eq_ignore_ascii_case(&email))
                })
                .cloned()
                .collect();
            if hits.is_empty() {
                return fail(513, "Coupon session not found.");
            }
            ok(json!({"sessions": hits}))
        }
        "couponsession/update" => {
            let i = match session_index(ct, &get("couponsession")) {
                Ok(i) => i,
                Err(r) => return r,
            };
            let action = get("action");
            if action.is_empty() {
                return fail(200, "Required parameter missing: action");
            }
            if !ACTIONS.contains(&action.as_str()) {
                return fail(302, "Value not in the allowed list: action");
            }
            let sid = text(&ct.sessions[i], "session");
            if d.faults.get(&P).is_some_and(|f| f.reject.contains(&sid)) {
                return fail(513, "Coupon session not found.");
            }
            let money = get("money_spent");
            if !money.is_empty() && !valid_money(&money) {
                return fail(300, "Invalid value: money_spent (format 0.000)");
            }
            update(&mut d.coupontools.sessions[i], &sid, &action, &money)
        }
        _ => fail(300, "unknown path"),
    }
}

fn session_index(ct: &Data, id: &str) -> Result<usize, Reply> {
    if id.is_empty() {
        return Err(fail(200, "Required parameter missing: couponsession"));
    }
    if !valid_session(id) {
        return Err(fail(300, "Invalid character in couponsession"));
    }
    ct.find(id)
        .ok_or_else(|| fail(513, "Coupon session not found."))
}

fn valid_money(m: &str) -> bool {
    m.split_once('.').is_some_and(|(a, b)| {
        !a.is_empty()
            && a.chars().all(|c| c.is_ascii_digit())
            && b.len() == 3
            && b.chars().all(|c| c.is_ascii_digit())
    })
}

/// `yyyy-MM-dd` or `yyyy-MM-dd hh-mm` → a bound comparable with `YYYY-MM-DD HH:MM:SS`
/// strings; `""` = no bound; `None` = bad format.
fn date_bound(v: &str, end: bool) -> Option<String> {
    if v.is_empty() {
        return Some(String::new());
    }
    let (date, time) = match v.split_once(' ') {
        Some((d, t)) => (d, Some(t)),
        None => (v, None),
    };
    chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d").ok()?;
    match time {
        None => Some(format!(
            "{date} {}",
            if end { "23:59:59" } else { "00:00:00" }
        )),
        Some(t) => {
            let (h, m) = t.split_once('-')?;
            let (h, m) = (h.parse::<u32>().ok()?, m.parse::<u32>().ok()?);
            if h > 23 || m > 59 {
                return None;
            }
            Some(format!(
                "{date} {h:02}:{m:02}:{}",
                if end { "59" } else { "00" }
            ))
        }
    }
}

fn update(session: &mut Value, sid: &str, action: &str, money: &str) -> Reply {
    let status = &mut session["data"]["status"];
    let flag = |st: &Value, k: &str| st.get(k).and_then(Value::as_str) == Some("1");
    let used_at = status
        .get("validation_date_utc")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let used = flag(status, "validated");
    let voided = flag(status, "voided");
    let already_used = || {
        fail_described(
            300,
            UNPROCESSABLE,
            &format!("The coupon or voucher {sid} was already used at {used_at}"),
        )
    };
    let now = now();
    match action {
        "validate" => {
            if used {
                return already_used();
            }
            if voided {
                return fail_described(
                    300,
                    UNPROCESSABLE,
                    &format!("The coupon or voucher {sid} was voided"),
                );
            }
            status["validated"] = json!("1");
            status["validation_date_utc"] = json!(now);
            if !money.is_empty() {
                status["money_spent"] = json!(money);
            }
        }
        "lock" => {
            if used {
                return already_used();
            }
            status["locked"] = json!("1");
        }
        "unlock" => {
            status["locked"] = json!("0");
            status["unlocked_date_utc"] = json!(now);
        }
        "void" => status["voided"] = json!("1"),
        "unvoid" => {
            status["voided"] = json!("0");
            status["unvoided_date_utc"] = json!(now);
        }
        _ => {
            status["claimed"] = json!("1");
            status["claim_date_utc"] = json!(now);
        }
    }
    ok(json!({"couponsession": sid, "action": action}))
}
