//! The simulated providers (`e2e::sim`), driven over real HTTP like the sync daemon will.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use actix_web::web;
use e2e::sim::{koupon, run, Listeners, Running, State};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const COFFEE: &str = "QUNDT1VOVENPVVBPTi0wMDAxLWNvZmZlZS0xNS1wZXJjZW50";
const REWARD: &str = "QUNDT1VOVENPVVBPTi0wMDAy";

struct Sim {
    run: Running,
    http: reqwest::Client,
}

async fn start() -> Sim {
    e2e::install_crypto();
    let state = web::Data::new(State::new());
    let run = run(Listeners::loopback().unwrap(), state).await.unwrap();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let sim = Sim { run, http };
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let ok = sim.http.get(sim.admin("/__sim/health")).send().await;
        if ok.is_ok_and(|r| r.status().is_success()) {
            return sim;
        }
        assert!(Instant::now() < deadline, "simulator did not become ready");
        actix_web::rt::time::sleep(Duration::from_millis(10)).await;
    }
}

impl Sim {
    fn admin(&self, path: &str) -> String {
        format!("{}{path}", self.run.admin_url())
    }
    async fn admin_post(&self, path: &str, body: Value) -> Value {
        let r = self
            .http
            .post(self.admin(path))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
        r.json().await.unwrap()
    }
    async fn ledger(&self, query: &str) -> Vec<Value> {
        let r = self
            .http
            .get(self.admin(&format!("/__sim/ledger?{query}")))
            .send()
            .await
            .unwrap();
        r.json::<Vec<Value>>().await.unwrap()
    }

    // Convercus
    async fn login(&self) -> String {
        let r = self
            .http
            .post(format!("{}/auth/login", self.run.convercus_url()))
            .json(&json!({"org": "demo-org", "userName": "edge", "password": "edge-secret"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        v["token"].as_str().unwrap().to_owned()
    }
    fn cv(&self, method: reqwest::Method, path: &str, token: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.run.convercus_url()))
            .header("Authorization", token)
            .header("interaction-id", "lane-1")
            .header("Content-Type", "application/json")
    }

    // Coupontools
    async fn ct(&self, path: &str, mut body: Value) -> Value {
        body["client_id"] = json!("demo-client-id");
        body["client_secret"] = json!("demo-client-secret");
        self.ct_raw(path, body).await
    }
    async fn ct_raw(&self, path: &str, body: Value) -> Value {
        let r = self
            .http
            .post(format!("{}{path}", self.run.coupontools_url()))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "errors are reported inside 200 bodies");
        r.json().await.unwrap()
    }

    // Koupon
    fn koupon_url(&self, path_and_query: &str) -> String {
        let sep = if path_and_query.contains('?') {
            '&'
        } else {
            '?'
        };
        let url = format!(
            "{}{path_and_query}{sep}identifier=demo-api-key&timestamp={}",
            self.run.koupon_url(),
            chrono::Utc::now().timestamp()
        );
        koupon::signed_url("demo-secret", &url)
    }
    async fn kp(&self, url: &str, body: &Value) -> (u16, String) {
        let r = self
            .http
            .post(url)
            .header("Accept", "application/json")
            .json(body)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }
}

fn error_code(v: &Value) -> Value {
    v["status"]["errors"]["error_code"].clone()
}

#[actix_web::test]
async fn convercus_login_accounts_users_and_coupons() {
    let sim = start().await;
    let bad = sim
        .http
        .post(format!("{}/auth/login", sim.run.convercus_url()))
        .json(&json!({"org": "demo-org", "userName": "edge", "password": "wrong"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 401);
    let get = reqwest::Method::GET;
    let r = sim
        .cv(get.clone(), "/accounts/4000000000001", "not-a-token")
        .header("id-type", "CARDCODE")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    let token = sim.login().await;
    let claims = token.split('.').nth(1).unwrap();
    use base64::Engine;
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(claims)
            .unwrap(),
    )
    .unwrap();
    let life = claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap();
    assert_eq!(life, 24 * 3600);

    // id-type is required on account paths; interaction-id on every call.
    let r = sim
        .cv(get.clone(), "/accounts/4000000000001", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = sim
        .http
        .get(format!(
            "{}/accounts/4000000000001",
            sim.run.convercus_url()
        ))
        .header("Authorization", &token)
        .header("id-type", "CARDCODE")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    let r = sim
        .cv(get.clone(), "/accounts/4000000000001", &token)
        .header("id-type", "CARDCODE")
        .send()
        .await
        .unwrap();
    let account: Value = r.json().await.unwrap();
    assert_eq!(
        account,
        json!({"id": "9f1c2e4a-0000-4000-8000-000000000001", "program": "Pgr-A", "status": "ACTIVE"})
    );
    let r = sim
        .cv(get.clone(), "/accounts/nope", &token)
        .header("id-type", "CARDCODE")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    let r = sim
        .cv(
            get.clone(),
            "/accounts/9f1c2e4a-0000-4000-8000-000000000001/memberships",
            &format!("Bearer {token}"),
        )
        .header("id-type", "ID")
        .send()
        .await
        .unwrap();
    let members: Value = r.json().await.unwrap();
    assert_eq!(members[0]["memberRole"], "OWNER");
    let user_id = members[0]["userId"].as_str().unwrap();
    let r = sim
        .cv(get.clone(), &format!("/users/{user_id}"), &token)
        .send()
        .await
        .unwrap();
    let user: Value = r.json().await.unwrap();
    assert_eq!(user["givenName"], "Jane");
    assert!(user["phone"].is_number());

    let r = sim
        .cv(
            get.clone(),
            "/v2/accounts/LOY-4000000000001/accountcoupons",
            &token,
        )
        .header("id-type", "EXTERNALCODE")
        .send()
        .await
        .unwrap();
    let coupons: Vec<Value> = r.json().await.unwrap();
    let coffee = coupons
        .iter()
        .find(|c| c["accountCouponId"] == COFFEE)
        .unwrap();
    assert_eq!(coffee["externalReference"], "EXT-COFFEE-15");
    assert_eq!(coffee["activation"]["activated"], true);

    // Search by name.
    let r = sim
        .cv(reqwest::Method::POST, "/search", &token)
        .json(&json!({"searchTerm": "Jane Doe", "type": "ACCOUNT"}))
        .send()
        .await
        .unwrap();
    let found: Value = r.json().await.unwrap();
    assert_eq!(
        found["results"]["ACCOUNT"][0]["refId"],
        "9f1c2e4a-0000-4000-8000-000000000001"
    );

    // Activation: no body back; only activatable coupons.
    let patch = reqwest::Method::PATCH;
    let r = sim
        .cv(
            patch.clone(),
            &format!("/v2/accountcoupons/{COFFEE}/activation"),
            &token,
        )
        .json(&json!({"activated": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(r.text().await.unwrap(), "");
    let r = sim
        .cv(
            patch.clone(),
            &format!("/v2/accountcoupons/{COFFEE}"),
            &token,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.json::<Value>().await.unwrap()["code"],
        "COUPON_NOT_ACTIVATABLE"
    );
    let r = sim
        .cv(
            patch.clone(),
            &format!("/v2/accountcoupons/{COFFEE}/activation"),
            &token,
        )
        .json(&json!({"activated": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let r = sim
        .cv(
            patch.clone(),
            &format!("/v2/accountcoupons/{REWARD}/activation"),
            &token,
        )
        .json(&json!({"activated": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.json::<Value>().await.unwrap()["code"],
        "COUPON_NOT_ACTIVATABLE"
    );

    // Redemption: no body; then the per-account limit.
    let r = sim
        .cv(
            patch.clone(),
            &format!("/v2/accountcoupons/{COFFEE}"),
            &token,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(r.text().await.unwrap(), "");
    let r = sim
        .cv(
            patch.clone(),
            &format!("/v2/accountcoupons/{COFFEE}"),
            &token,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"code": "CONDITION_NOT_FULFILLED", "detail": ["NO_MORE_REDEEM_BY_ACCOUNT"]})
    );
    let r = sim
        .cv(get.clone(), &format!("/v2/accountcoupons/{COFFEE}"), &token)
        .header("id-type", "ID")
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["redeemCount"], 1);
    let r = sim
        .cv(patch, "/v2/accountcoupons/unknown", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    let redemptions = sim.ledger("provider=convercus&operation=redemption").await;
    let applied: Vec<bool> = redemptions
        .iter()
        .map(|e| e["applied"].as_bool().unwrap())
        .collect();
    assert_eq!(applied, [false, true, false, false]);
    sim.run.stop().await;
}

#[actix_web::test]
async fn convercus_token_expiry_and_oauth() {
    let sim = start().await;
    let token = sim.login().await;
    let path = "/accounts/4000000000001";
    let call = |t: String| {
        sim.cv(reqwest::Method::GET, path, &t)
            .header("id-type", "CARDCODE")
            .send()
    };
    assert_eq!(call(token.clone()).await.unwrap().status(), 200);
    sim.admin_post(
        "/__sim/faults",
        json!({"convercus": {"expire_tokens": true}}),
    )
    .await;
    assert_eq!(call(token.clone()).await.unwrap().status(), 401);
    let fresh = sim.login().await;
    assert_eq!(call(fresh).await.unwrap().status(), 200);

    // A zero lifetime makes tokens born expired.
    sim.admin_post("/__sim/config", json!({"token_ttl_secs": 0}))
        .await;
    let dead = sim.login().await;
    assert_eq!(call(dead).await.unwrap().status(), 401);
    sim.admin_post("/__sim/config", json!({"token_ttl_secs": 60}))
        .await;

    let r = sim
        .http
        .post(format!("{}/realms/abc-staging/protocol/openid-connect/token", sim.run.convercus_url()))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body("grant_type=client_credentials&client_id=machine-2-machine&client_secret=demo-client-secret&scope=openid")
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["expires_in"], 60);
    let bearer = format!("Bearer {}", v["access_token"].as_str().unwrap());
    assert_eq!(call(bearer).await.unwrap().status(), 200);
    sim.run.stop().await;
}

#[actix_web::test]
async fn coupontools_lookup_lock_validate_and_already_used() {
    let sim = start().await;
    let v = sim.ct_raw("couponsession/data", json!({"couponsession": "session-0001", "client_id": "demo-client-id", "client_secret": "bad"})).await;
    assert_eq!(v["status"]["status"], "failed");
    assert_eq!(error_code(&v), 1000);

    let v = sim
        .ct(
            "couponsession/data",
            json!({"couponsession": "session-0001"}),
        )
        .await;
    assert_eq!(v["status"]["status"], "OK");
    assert_eq!(v["action"], "retrieve_all_session_data");
    assert_eq!(v["data"]["status"]["validated"], "0");
    assert_eq!(v["data"]["status"]["value"], "5.00");
    assert_eq!(
        error_code(
            &sim.ct("couponsession/data", json!({"couponsession": "nope-nope"}))
                .await
        ),
        513
    );
    assert_eq!(
        error_code(&sim.ct("couponsession/data", json!({})).await),
        200
    );
    assert_eq!(
        error_code(
            &sim.ct("couponsession/data", json!({"couponsession": "bad id!"}))
                .await
        ),
        300
    );

    // Lock is honoured by the lookup; unlock clears it.
    let v = sim
        .ct(
            "couponsession/update",
            json!({"couponsession": "session-0001", "action": "lock"}),
        )
        .await;
    assert_eq!(v["status"]["status"], "OK");
    let v = sim
        .ct(
            "couponsession/data",
            json!({"couponsession": "session-0001"}),
        )
        .await;
    assert_eq!(v["data"]["status"]["locked"], "1");
    sim.ct(
        "couponsession/update",
        json!({"couponsession": "session-0001", "action": "unlock"}),
    )
    .await;
    let v = sim
        .ct(
            "couponsession/data",
            json!({"couponsession": "session-0001"}),
        )
        .await;
    assert_eq!(v["data"]["status"]["locked"], "0");
    assert_ne!(v["data"]["status"]["unlocked_date_utc"], "");

    assert_eq!(
        error_code(
            &sim.ct(
                "couponsession/update",
                json!({"couponsession": "session-0001", "action": "explode"})
            )
            .await
        ),
        302
    );
    assert_eq!(error_code(&sim.ct("couponsession/update", json!({"couponsession": "session-0001", "action": "validate", "money_spent": "25.5"})).await), 300);
    let v = sim
        .ct(
            "couponsession/update",
            json!({"couponsession": "session-0001", "action": "validate", "money_spent": "25.500"}),
        )
        .await;
    assert_eq!(v["status"]["status"], "OK");
    let data = sim
        .ct(
            "couponsession/data",
            json!({"couponsession": "session-0001"}),
        )
        .await;
    let used_at = data["data"]["status"]["validation_date_utc"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(data["data"]["status"]["validated"], "1");
    let again = sim
        .ct(
            "couponsession/update",
            json!({"couponsession": "session-0001", "action": "validate"}),
        )
        .await;
    assert_eq!(again["status"]["status"], "failed");
    assert_eq!(
        again["status"]["errors"]["error_message_description"][0],
        format!("The coupon or voucher session-0001 was already used at {used_at}")
    );

    // Form-encoded body with the credentials in headers (option A).
    let r = sim
        .http
        .post(format!("{}couponsession/data", sim.run.coupontools_url()))
        .header("X-Client-Id", "demo-client-id")
        .header("X-Client-Secret", "demo-client-secret")
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body("couponsession=ac6s7u")
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["session"], "ac6s7u3g8a25ja7x9qg87", "short codes resolve");

    let list = sim.ct("coupon/list", json!({"only_active": "true"})).await;
    assert_eq!(list["coupon_info"][0]["ID"], "cam_100001");
    assert_eq!(
        error_code(&sim.ct("coupon/info", json!({"campaign": "cam_999"})).await),
        502
    );
    assert_eq!(
        error_code(&sim.ct("coupon/info", json!({"campaign": "xyz"})).await),
        301
    );
    sim.run.stop().await;
}

#[actix_web::test]
async fn coupontools_campaign_paging() {
    let sim = start().await;
    let sessions: Vec<Value> = (0..5)
        .map(|i| json!({"session": format!("s{i:020}"), "campaign": "cam_7", "status": {"claimed": i % 5 != 4}}))
        .collect();
    sim.admin_post(
        "/__sim/seed",
        json!({"config": {"page_size": 2}, "coupontools": {"campaigns": [{"ID": "cam_7", "code": "abc"}], "sessions": sessions}}),
    )
    .await;
    let mut seen = Vec::new();
    for page in 1.. {
        let v = sim
            .ct(
                "campaign/claims",
                json!({"campaign": "cam_7", "page": page}),
            )
            .await;
        let list = v["sessions"].as_array().unwrap().clone();
        seen.extend(
            list.iter()
                .map(|s| s["session"].as_str().unwrap().to_owned()),
        );
        if list.len() < 2 {
            break;
        }
    }
    assert_eq!(seen.len(), 4, "4 claimed of 5: {seen:?}");
    let v = sim.ct("campaign/data", json!({"campaign": "cam_7", "start_date": "2025-12-31 23-00", "end_date": "2026-01-01"})).await;
    assert_eq!(v["total"], "5");
    let v = sim
        .ct(
            "campaign/data",
            json!({"campaign": "cam_7", "start_date": "2026-01-02"}),
        )
        .await;
    assert_eq!(v["total"], "0");
    sim.run.stop().await;
}

#[actix_web::test]
async fn koupon_signature_and_redemptions() {
    // Our documented test vector.
    assert_eq!(
        koupon::sign("demo-secret", "https://storeconnect.kouponmedia.com/v1/transaction/redeem?identifier=demo-api-key&timestamp=1700000000"),
        "5c570383118afdca34f576943b151ca2974061f1"
    );
    let sim = start().await;
    let one = json!({"redemptions": [{"discountAsset": "asset-1234", "qty": 1}]});

    // Bad signature, unsigned parameter change, wrong key, no Accept.
    let url = sim.koupon_url("/v1/transaction/redeem");
    let tampered = url.replace("authSignature=", "authSignature=00");
    assert_eq!(sim.kp(&tampered, &one).await.0, 401);
    let moved = url.replace(
        "identifier=demo-api-key",
        "identifier=demo-api-key&storeId=1",
    );
    assert_eq!(sim.kp(&moved, &one).await.0, 401);
    let after = format!("{url}&storeId=9");
    let wrong_key = koupon::signed_url("other", &url[..url.find("&authSignature").unwrap()]);
    assert_eq!(sim.kp(&wrong_key, &one).await.0, 401);
    let r = sim.http.post(&url).json(&one).send().await.unwrap();
    assert_eq!(r.status(), 406);
    let (status, body) = sim
        .kp(
            &sim.koupon_url("/v1/transaction/redeem?storeId=1"),
            &json!({"redemptions": [
        {"discountAsset": "x", "qty": 1}, {"discountAsset": "x", "qty": 2}]}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["errorCode"],
        "INVALID_REQUEST"
    );

    // Anything after authSignature is not covered: accepted.
    let (status, body) = sim.kp(&after, &one).await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v["results"][0],
        json!({"discountAsset": "asset-1234", "redeemedQty": 1})
    );

    let (_, body) = sim
        .kp(
            &sim.koupon_url("/v1/transaction/redeem"),
            &json!({"redemptions": [
        {"discountAsset": "asset-1234", "qty": 1},
        {"discountAsset": "LOY-4000000000001", "couponCode": "KPN1", "qty": 2},
        {"discountAsset": "asset-9876", "couponCode": "KPN1", "qty": 1},
        {"discountAsset": "LOY-4000000000001", "qty": 1},
        {"discountAsset": "nothing", "qty": 1}]}),
        )
        .await;
    let v: Value = serde_json::from_str(&body).unwrap();
    let got: Vec<(Value, Value)> = v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["redeemedQty"].clone(), r["exceptionCode"].clone()))
        .collect();
    assert_eq!(
        got,
        vec![
            (json!(0), json!("ALREADY_REDEEMED")),
            (json!(1), json!("LIMIT_REACHED")),
            (json!(0), json!("COUPON_CODE_NOT_ALLOWED")),
            (json!(0), json!("COUPON_CODE_REQUIRED")),
            (json!(0), json!("ASSET_NOT_FOUND")),
        ]
    );
    assert_eq!(v["results"][1]["couponCode"], "KPN1");

    let report = json!({"timestamp": "2026-11-22T10:00:00Z", "currency": "USD",
        "products": [{"index": 1, "description": "Cereal", "scanCode": "0038000012345", "price": "3.99", "quantity": 1, "discounts": []}],
        "summary": {"subTotal": "3.99", "totalDiscounts": "1.00", "total": "2.99"}, "discountAssets": ["asset-1234"]});
    let (status, body) = sim
        .kp(&sim.koupon_url("/v1/transaction/report"), &report)
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = sim
        .kp(
            &sim.koupon_url("/v1/transaction/report"),
            &json!({"discountAssets": []}),
        )
        .await;
    assert_eq!(status, 400);

    let (status, body) = sim
        .kp(
            &sim.koupon_url("/v1/transaction?storeId=STO1"),
            &json!({"posTransactionId": "STO1-42", "store": {"name": "Store 1"}}),
        )
        .await;
    assert_eq!(status, 200);
    assert!(body.contains("transactionId"));

    let r = sim
        .http
        .get(sim.koupon_url("/v2/offers/list"))
        .header("Accept", "application/json")
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["Offers"][0]["offerId"], "KPN1");

    let ledger = sim
        .ledger("provider=koupon&key=asset-1234&operation=redeem")
        .await;
    let applied: Vec<bool> = ledger
        .iter()
        .map(|e| e["applied"].as_bool().unwrap())
        .collect();
    assert_eq!(
        applied,
        [false, false, false, false, true, false],
        "{ledger:?}"
    );
    sim.run.stop().await;
}

#[actix_web::test]
async fn fault_switches() {
    let sim = start().await;
    let lookup = json!({"couponsession": "session-0001"});

    // 5xx: nothing applied, recorded as injected.
    sim.admin_post(
        "/__sim/faults",
        json!({"coupontools": {"error_5xx_rate": 1.0}}),
    )
    .await;
    let r = sim
        .http
        .post(format!("{}couponsession/update", sim.run.coupontools_url()))
        .header("X-Client-Id", "demo-client-id")
        .header("X-Client-Secret", "demo-client-secret")
        .json(&json!({"couponsession": "session-0001", "action": "validate"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    sim.admin_post(
        "/__sim/faults",
        json!({"coupontools": {"error_5xx_rate": 0.0}}),
    )
    .await;
    let v = sim.ct("couponsession/data", lookup.clone()).await;
    assert_eq!(v["data"]["status"]["validated"], "0");
    let l = sim.ledger("provider=coupontools").await;
    assert_eq!(
        (
            l[0]["outcome"].as_str(),
            l[0]["applied"].as_bool(),
            l[0]["status"].as_u64()
        ),
        (Some("injected_5xx"), Some(false), Some(503))
    );

    // Malformed bodies: the answer is not JSON.
    sim.admin_post(
        "/__sim/faults",
        json!({"coupontools": {"malformed_bodies": true}}),
    )
    .await;
    let r = sim.http.post(format!("{}couponsession/data", sim.run.coupontools_url()))
        .json(&json!({"couponsession": "session-0001", "client_id": "demo-client-id", "client_secret": "demo-client-secret"})).send().await.unwrap();
    assert!(serde_json::from_str::<Value>(&r.text().await.unwrap()).is_err());
    sim.admin_post(
        "/__sim/faults",
        json!({"coupontools": {"malformed_bodies": false}}),
    )
    .await;

    // Down: connections refused; other providers still answer; up again.
    sim.admin_post("/__sim/faults", json!({"coupontools": {"down": true}}))
        .await;
    let fresh = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let err = fresh
        .post(format!("{}couponsession/data", sim.run.coupontools_url()))
        .json(&lookup)
        .send()
        .await
        .unwrap_err();
    assert!(err.is_connect(), "{err:?}");
    // A client with a pooled keep-alive connection fails too (the connection was cut).
    let pooled = sim
        .http
        .post(format!("{}couponsession/data", sim.run.coupontools_url()))
        .json(&lookup)
        .send()
        .await;
    assert!(pooled.is_err(), "{pooled:?}");
    let r = sim
        .http
        .post(format!("{}/auth/login", sim.run.convercus_url()))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "convercus still up");
    sim.admin_post("/__sim/faults", json!({"coupontools": {"down": false}}))
        .await;
    assert_eq!(
        sim.ct("couponsession/data", lookup.clone()).await["status"]["status"],
        "OK"
    );

    // Slow.
    sim.admin_post("/__sim/faults", json!({"coupontools": {"slow_ms": 150}}))
        .await;
    let t = Instant::now();
    sim.ct("couponsession/data", lookup.clone()).await;
    assert!(t.elapsed() >= Duration::from_millis(150));
    sim.admin_post("/__sim/faults", json!({"coupontools": {"slow_ms": 0}}))
        .await;

    // Reject one key permanently, per provider.
    sim.admin_post("/__sim/faults", json!({"coupontools": {"reject": ["session-0001"]}, "koupon": {"reject": ["asset-1234"]}, "convercus": {"reject": [COFFEE]}})).await;
    let v = sim
        .ct(
            "couponsession/update",
            json!({"couponsession": "session-0001", "action": "validate"}),
        )
        .await;
    assert_eq!(error_code(&v), 513);
    let (status, _) = sim
        .kp(
            &sim.koupon_url("/v1/transaction/redeem"),
            &json!({"redemptions": [{"discountAsset": "asset-1234", "qty": 1}]}),
        )
        .await;
    assert_eq!(status, 400);
    let token = sim.login().await;
    let r = sim
        .cv(
            reqwest::Method::PATCH,
            &format!("/v2/accountcoupons/{COFFEE}"),
            &token,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = sim
        .cv(
            reqwest::Method::PATCH,
            &format!("/v2/accountcoupons/{REWARD}"),
            &token,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);

    // 5xx on Convercus and Koupon shapes.
    sim.admin_post(
        "/__sim/faults",
        json!({"convercus": {"error_5xx_rate": 1.0}, "koupon": {"error_5xx_rate": 1.0}}),
    )
    .await;
    let r = sim
        .cv(reqwest::Method::GET, "/users/x", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 500);
    let (status, _) = sim
        .kp(&sim.koupon_url("/v1/transaction/report"), &json!({}))
        .await;
    assert_eq!(status, 503);

    // Reset restores everything.
    sim.admin_post("/__sim/reset", json!({})).await;
    assert!(sim.ledger("").await.is_empty());
    let f: Value = sim
        .http
        .get(sim.admin("/__sim/faults"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(f["koupon"]["error_5xx_rate"], 0.0);
    sim.run.stop().await;
}

#[actix_web::test]
async fn ledger_keeps_every_write_in_order() {
    let sim = start().await;
    for action in ["lock", "unlock", "lock", "validate", "validate"] {
        sim.ct(
            "couponsession/update",
            json!({"couponsession": "session-0001", "action": action, "money_spent": "10.000"}),
        )
        .await;
    }
    sim.ct(
        "couponsession/update",
        json!({"couponsession": "ac6s7u3g8a25ja7x9qg87", "action": "lock"}),
    )
    .await;
    let l = sim.ledger("provider=coupontools&key=session-0001").await;
    let ops: Vec<&str> = l.iter().map(|e| e["operation"].as_str().unwrap()).collect();
    assert_eq!(ops, ["lock", "unlock", "lock", "validate", "validate"]);
    let seqs: Vec<u64> = l.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]));
    let applied_validations = l
        .iter()
        .filter(|e| e["operation"] == "validate" && e["applied"] == true)
        .count();
    assert_eq!(applied_validations, 1, "exactly once");
    assert_eq!(l[3]["body"]["money_spent"], "10.000");
    assert_eq!(sim.ledger("").await.len(), 6);
    let r = sim
        .http
        .delete(sim.admin("/__sim/ledger"))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    assert!(sim.ledger("").await.is_empty());
    sim.run.stop().await;
}

#[test]
fn binary_prints_its_address_and_serves() {
    use std::io::BufRead;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_provider-sim"))
        .args(["--listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let admin = lines.next().unwrap().unwrap();
    let convercus = lines.next().unwrap().unwrap();
    assert!(
        convercus.starts_with("convercus http://127.0.0.1:"),
        "{convercus}"
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let status = rt.block_on(async {
        e2e::install_crypto();
        reqwest::get(format!("http://{admin}/__sim/health"))
            .await
            .map(|r| r.status().as_u16())
    });
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(status.unwrap(), 200);
}
