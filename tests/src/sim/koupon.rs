//! Simulated Koupon Store Connect + management offer list (`shared/api/koupon.md`): every
//! call carries a signed URL (`identifier`, `timestamp`, `authSignature`: lowercase hex
//! HMAC-SHA1 with the secret key over the exact URL up to `&authSignature=`).

use super::{
    dispatch, header, items, json_body, ledger_body, query_pairs, text, Data as SimData, Provider,
    Reply, State,
};
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value};

const P: Provider = Provider::Koupon;
const VERSION: &str = "1";

/// Koupon's state.
#[derive(Debug, Default)]
pub struct Data {
    /// `{"discountAsset", "type": "barcode"|"loyalty", "remaining": n}` (barcode) or
    /// `{"discountAsset", "type": "loyalty", "coupons": {"<couponCode>": n}}`.
    pub assets: Vec<Value>,
    /// Offer objects served by `/v2/offers/list`.
    pub offers: Vec<Value>,
    /// Begun transactions: `{"transactionId", "posTransactionId", "storeId"}`.
    pub transactions: Vec<Value>,
}

impl Data {
    pub fn from_seed(v: &Value) -> Result<Data, String> {
        let mut d = Data::default();
        for a in items(v, "assets") {
            if text(a, "discountAsset").is_empty() {
                return Err("koupon.assets[].discountAsset is required".into());
            }
            let mut a = a.clone();
            let loyalty = text(&a, "type") == "loyalty";
            if let Some(o) = a.as_object_mut() {
                o.entry("type").or_insert(json!("barcode"));
                if loyalty {
                    o.entry("coupons").or_insert(json!({}));
                } else {
                    o.entry("remaining").or_insert(json!(1));
                }
            }
            d.assets.push(a);
        }
        d.offers = v
            .get("offers")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        Ok(d)
    }

    pub fn to_json(&self) -> Value {
        json!({"assets": self.assets, "offers": self.offers, "transactions": self.transactions})
    }
}

pub fn default_seed() -> Value {
    json!({
        "assets": [
            {"discountAsset": "asset-1234", "type": "barcode", "remaining": 1},
            {"discountAsset": "asset-9876", "type": "barcode", "remaining": 1},
            {"discountAsset": "LOY-4000000000001", "type": "loyalty", "coupons": {"KPN1": 1}}
        ],
        "offers": [
            {"is_active": "1", "featured": "0", "geogating": "0", "is_multi": "0", "clientid": "demo",
             "offerId": "KPN1", "priority": "1", "timer": "0", "totalOffersPurchased": "0",
             "totalOffersRemaining": "1000", "barcodeString": "asset-1234", "barcodeSymbology": "CODE128",
             "barcodeType": "single-use", "channel": "web", "companyImage": "", "doneMessage": "",
             "errorMsg": "", "title": "$1 Off Cereal"}
        ]
    })
}

/// Lowercase hex HMAC-SHA1 of `url` keyed by `secret` (the simulator's signature rule).
pub fn sign(secret: &str, url: &str) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret.as_bytes());
    ring::hmac::sign(&key, url.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `url` (which must already hold `identifier` and `timestamp`) with `&authSignature=…`.
pub fn signed_url(secret: &str, url: &str) -> String {
    format!("{url}&authSignature={}", sign(secret, url))
}

fn decode_hex(h: &str) -> Option<Vec<u8>> {
    if !h.len().is_multiple_of(2) {
        return None;
    }
    (0..h.len())
        .step_by(2)
        .map(|i| h.get(i..i + 2).and_then(|x| u8::from_str_radix(x, 16).ok()))
        .collect()
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/transaction", web::post().to(begin))
        .route("/v1/transaction/redeem", web::post().to(redeem))
        .route("/v1/transaction/report", web::post().to(report))
        .route("/v2/offers/list", web::get().to(offers))
        .route("/cdn/{name}", web::get().to(cdn));
}

/// A 1×1 transparent PNG.
pub const TINY_PNG: &[u8] = &[
    0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44, 0x52,
    0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x00, 0x00, 0x1f, 0x15, 0xc4,
    0x89, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x44, 0x41, 0x54, 0x78, 0x9c, 0x63, 0x00, 0x01, 0x00, 0x00,
    0x05, 0x00, 0x01, 0x0d, 0x0a, 0x2d, 0xb4, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45, 0x4e, 0x44, 0xae,
    0x42, 0x60, 0x82,
];

/// The offers' `companyImage` host (a stand-in for Koupon's CDN): `*.png` is a tiny PNG,
/// `big.png` a PNG over 1 MB, `*.html` a web page, anything else 404.
async fn cdn(name: web::Path<String>) -> HttpResponse {
    let name = name.into_inner();
    if name == "big.png" {
        return HttpResponse::Ok()
            .content_type("image/png")
            .body(vec![0u8; 1536 * 1024]);
    }
    if name.ends_with(".png") {
        return HttpResponse::Ok().content_type("image/png").body(TINY_PNG);
    }
    if name.ends_with(".html") {
        return HttpResponse::Ok()
            .content_type("text/html")
            .body("<html></html>");
    }
    HttpResponse::NotFound().finish()
}

fn error(status: u16, code: &str, message: &str) -> Reply {
    Reply::json(
        status,
        json!({"version": VERSION, "errorCode": code, "errorMessage": message}),
    )
}

/// Signature, then `Accept`.
fn check(d: &SimData, req: &HttpRequest) -> Result<(), Reply> {
    let info = req.connection_info();
    let q = req.query_string();
    let (signed_q, sig) = match q.split_once("&authSignature=") {
        Some((a, b)) => (a, b.split('&').next().unwrap_or_default()),
        None => return Err(error(401, "UNAUTHORIZED", "authSignature missing")),
    };
    let pairs = query_pairs(signed_q);
    let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    if get("identifier") != Some(d.config.koupon_api_key.as_str()) {
        return Err(error(
            401,
            "UNAUTHORIZED",
            "identifier missing or not a known API key",
        ));
    }
    let ts = get("timestamp").and_then(|t| t.parse::<i64>().ok());
    let Some(ts) = ts else {
        return Err(error(
            401,
            "UNAUTHORIZED",
            "timestamp missing or not epoch seconds",
        ));
    };
    if (chrono::Utc::now().timestamp() - ts).abs() > d.config.koupon_max_skew_secs {
        return Err(error(
            401,
            "UNAUTHORIZED",
            "timestamp too far from the server's clock",
        ));
    }
    let url = format!(
        "{}://{}{}?{}",
        info.scheme(),
        info.host(),
        req.path(),
        signed_q
    );
    let key = ring::hmac::Key::new(
        ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
        d.config.koupon_secret.as_bytes(),
    );
    let good = decode_hex(&super::percent_decode(sig)).is_some_and(|s| {
        sig.chars().all(|c| !c.is_ascii_uppercase())
            && ring::hmac::verify(&key, url.as_bytes(), &s).is_ok()
    });
    if !good {
        return Err(error(401, "UNAUTHORIZED", "authSignature does not match"));
    }
    if !header(req, "accept").is_some_and(|a| a.contains("application/json")) {
        return Err(Reply::text(
            406,
            "Not Acceptable: send Accept: application/json",
        ));
    }
    Ok(())
}

fn entry_key(e: &Value) -> String {
    match e.get("couponCode").and_then(Value::as_str) {
        Some(c) => format!("{}/{}", text(e, "discountAsset"), c),
        None => text(e, "discountAsset"),
    }
}

fn entries(body: &[u8]) -> Vec<Value> {
    json_body(body)
        .and_then(|v| v.get("redemptions").and_then(Value::as_array).cloned())
        .unwrap_or_default()
}

async fn redeem(st: web::Data<State>, req: HttpRequest, body: web::Bytes) -> HttpResponse {
    let keys: Vec<String> = entries(&body).iter().map(entry_key).collect();
    dispatch(
        &st,
        P,
        &req,
        &body,
        Some(("redeem", keys.clone())),
        |d, req, body| {
            let reply = redeem_all(d, req, body);
            if reply.status != 200 {
                let outcome = reply
                    .body
                    .as_ref()
                    .map(|b| text(b, "errorCode"))
                    .unwrap_or_else(|| reply.status.to_string());
                for k in &keys {
                    d.ledger.record(
                        P.name(),
                        "redeem",
                        k,
                        reply.status,
                        &outcome,
                        false,
                        ledger_body(body),
                    );
                }
            }
            reply
        },
    )
    .await
}

fn redeem_all(d: &mut SimData, req: &HttpRequest, body: &[u8]) -> Reply {
    if let Err(r) = check(d, req) {
        return r;
    }
    let Some(list) =
        json_body(body).and_then(|v| v.get("redemptions").and_then(Value::as_array).cloned())
    else {
        return error(400, "INVALID_REQUEST", "redemptions (array) is required");
    };
    if list.is_empty() {
        return error(400, "INVALID_REQUEST", "redemptions must not be empty");
    }
    let mut seen = std::collections::HashSet::new();
    for e in &list {
        if text(e, "discountAsset").is_empty() {
            return error(
                400,
                "INVALID_REQUEST",
                "redemptions[].discountAsset is required",
            );
        }
        if e.get("couponCode").is_some_and(|c| !c.is_string()) {
            return error(
                400,
                "INVALID_REQUEST",
                "redemptions[].couponCode must be a string",
            );
        }
        if e.get("qty").and_then(Value::as_u64).is_none_or(|q| q == 0) {
            return error(
                400,
                "INVALID_REQUEST",
                "redemptions[].qty must be a positive whole number",
            );
        }
        let k = entry_key(e);
        if !seen.insert(k.clone()) {
            return error(400, "INVALID_REQUEST", &format!("duplicate redemption entry {k}: each discountAsset or discountAsset+couponCode must be unique"));
        }
        let reject = d
            .faults
            .get(&P)
            .map(|f| f.reject.clone())
            .unwrap_or_default();
        if reject.contains(&k) || reject.contains(&text(e, "discountAsset")) {
            return error(
                400,
                "INVALID_REQUEST",
                &format!("{k} rejected by the simulator's reject switch"),
            );
        }
    }
    let mut results = Vec::new();
    for e in &list {
        let asset = text(e, "discountAsset");
        let code = e
            .get("couponCode")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let qty = e.get("qty").and_then(Value::as_u64).unwrap_or(0);
        let (done, exception) = apply(&mut d.koupon, &asset, code.as_deref(), qty);
        let mut r = json!({"discountAsset": asset, "redeemedQty": done});
        if let Some(c) = &code {
            r["couponCode"] = json!(c);
        }
        if let Some(x) = exception {
            r["exceptionCode"] = json!(x);
        }
        d.ledger.record(
            P.name(),
            "redeem",
            &entry_key(e),
            200,
            exception.unwrap_or("ok"),
            done > 0,
            json!({"entry": e, "result": r}),
        );
        results.push(r);
    }
    Reply::json(200, json!({"results": results}))
}

/// Redeems up to `qty`; returns (redeemed, exceptionCode).
fn apply(k: &mut Data, asset: &str, code: Option<&str>, qty: u64) -> (u64, Option<&'static str>) {
    let Some(a) = k
        .assets
        .iter_mut()
        .find(|a| text(a, "discountAsset") == asset)
    else {
        return (0, Some("ASSET_NOT_FOUND"));
    };
    let loyalty = text(a, "type") == "loyalty";
    let slot = match (loyalty, code) {
        (false, Some(_)) => return (0, Some("COUPON_CODE_NOT_ALLOWED")),
        (true, None) => return (0, Some("COUPON_CODE_REQUIRED")),
        (false, None) => a.get_mut("remaining"),
        (true, Some(c)) => match a.get_mut("coupons").and_then(|m| m.get_mut(c)) {
            Some(v) => Some(v),
            None => return (0, Some("OFFER_NOT_FOUND")),
        },
    };
    let Some(slot) = slot else {
        return (0, Some("ASSET_NOT_FOUND"));
    };
    let left = slot.as_u64().unwrap_or(0);
    if left == 0 {
        return (0, Some("ALREADY_REDEEMED"));
    }
    let done = qty.min(left);
    *slot = json!(left - done);
    (done, (done < qty).then_some("LIMIT_REACHED"))
}

async fn report(st: web::Data<State>, req: HttpRequest, body: web::Bytes) -> HttpResponse {
    let key = report_key(&body);
    dispatch(
        &st,
        P,
        &req,
        &body,
        Some(("report", vec![key.clone()])),
        |d, req, body| {
            let reply = report_one(d, req, body);
            let outcome = match &reply.body {
                Some(b) if reply.status != 200 => text(b, "errorCode"),
                _ if reply.status != 200 => reply.status.to_string(),
                _ => "ok".into(),
            };
            d.ledger.record(
                P.name(),
                "report",
                &key,
                reply.status,
                &outcome,
                reply.status == 200,
                ledger_body(body),
            );
            reply
        },
    )
    .await
}

fn report_key(body: &[u8]) -> String {
    json_body(body)
        .and_then(|v| v.get("discountAssets").and_then(Value::as_array).cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(Value::as_str)
        .collect::<Vec<_>>()
        .join(",")
}

fn is_decimal(v: Option<&Value>) -> bool {
    v.is_some_and(|x| x.is_number() || x.as_str().is_some_and(|t| t.parse::<f64>().is_ok()))
}

fn report_one(d: &mut SimData, req: &HttpRequest, body: &[u8]) -> Reply {
    if let Err(r) = check(d, req) {
        return r;
    }
    let Some(v) = json_body(body) else {
        return error(400, "INVALID_REQUEST", "body is not JSON");
    };
    let ts = text(&v, "timestamp");
    if !ts.ends_with('Z') || chrono::DateTime::parse_from_rfc3339(&ts).is_err() {
        return error(
            400,
            "INVALID_REQUEST",
            "timestamp must be ISO 8601 UTC, e.g. 2016-12-01T16:41:37Z",
        );
    }
    if v.get("currency").is_some_and(|c| c.as_str() != Some("USD")) {
        return error(400, "INVALID_REQUEST", "currency: only USD is supported");
    }
    let Some(assets) = v.get("discountAssets").and_then(Value::as_array) else {
        return error(
            400,
            "INVALID_REQUEST",
            "discountAssets (array of strings) is required",
        );
    };
    if !assets.iter().all(Value::is_string) {
        return error(400, "INVALID_REQUEST", "discountAssets must be strings");
    }
    let reject = d
        .faults
        .get(&P)
        .map(|f| f.reject.clone())
        .unwrap_or_default();
    if let Some(a) = assets
        .iter()
        .filter_map(Value::as_str)
        .find(|a| reject.iter().any(|r| r == a))
    {
        return error(
            400,
            "INVALID_REQUEST",
            &format!("{a} rejected by the simulator's reject switch"),
        );
    }
    for (i, p) in items(&v, "products").enumerate() {
        let index_ok = p.get("index").is_some_and(|x| {
            x.is_u64()
                || x.as_str()
                    .is_some_and(|t| !t.is_empty() && t.chars().all(|c| c.is_ascii_digit()))
        });
        let qty_ok = is_decimal(p.get("quantity"))
            && !p
                .get("quantity")
                .and_then(Value::as_f64)
                .is_some_and(|q| q < 0.0);
        if !index_ok
            || !p.get("description").is_some_and(Value::is_string)
            || !p.get("scanCode").is_some_and(Value::is_string)
            || !is_decimal(p.get("price"))
            || !qty_ok
        {
            return error(400, "INVALID_REQUEST", &format!("products[{i}]: index, description, scanCode (string), price and quantity are required"));
        }
    }
    if let Some(sum) = v.get("summary") {
        if !is_decimal(sum.get("subTotal")) || !is_decimal(sum.get("total")) {
            return error(
                400,
                "INVALID_REQUEST",
                "summary.subTotal and summary.total are required",
            );
        }
    }
    Reply::json(
        200,
        json!({"version": VERSION, "code": 200, "message": "Transaction reported"}),
    )
}

async fn begin(st: web::Data<State>, req: HttpRequest, body: web::Bytes) -> HttpResponse {
    let key = json_body(&body)
        .map(|v| text(&v, "posTransactionId"))
        .unwrap_or_default();
    dispatch(
        &st,
        P,
        &req,
        &body,
        Some(("begin", vec![key.clone()])),
        |d, req, body| {
            let reply = begin_one(d, req, body);
            let outcome = if reply.status == 200 {
                "ok".to_owned()
            } else {
                reply
                    .body
                    .as_ref()
                    .map(|b| text(b, "errorCode"))
                    .unwrap_or_else(|| reply.status.to_string())
            };
            d.ledger.record(
                P.name(),
                "begin",
                &key,
                reply.status,
                &outcome,
                reply.status == 200,
                ledger_body(body),
            );
            reply
        },
    )
    .await
}

fn begin_one(d: &mut SimData, req: &HttpRequest, body: &[u8]) -> Reply {
    if let Err(r) = check(d, req) {
        return r;
    }
    let store = query_pairs(req.query_string())
        .into_iter()
        .find(|(k, _)| k == "storeId")
        .map(|(_, v)| v);
    let Some(store) = store.filter(|s| !s.is_empty()) else {
        return error(
            400,
            "INVALID_REQUEST",
            "storeId query parameter is required",
        );
    };
    let Some(v) = json_body(body) else {
        return error(400, "INVALID_REQUEST", "body is not JSON");
    };
    let pos_id = text(&v, "posTransactionId");
    if pos_id.is_empty() || !v.get("store").is_some_and(Value::is_object) {
        return error(
            400,
            "INVALID_REQUEST",
            "posTransactionId and store are required",
        );
    }
    let id = format!("ktx-{:06}", d.koupon.transactions.len() + 1);
    d.koupon
        .transactions
        .push(json!({"transactionId": id, "posTransactionId": pos_id, "storeId": store}));
    Reply::json(200, json!({"version": VERSION, "transactionId": id}))
}

async fn offers(st: web::Data<State>, req: HttpRequest) -> HttpResponse {
    dispatch(&st, P, &req, &[], None, |d, req, _| {
        if let Err(r) = check(d, req) {
            return r;
        }
        Reply::json(
            200,
            json!({"code": 200, "message": "success", "version": "2", "Offers": d.koupon.offers}),
        )
    })
    .await
}
