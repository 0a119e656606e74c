//! Every CATAPULT endpoint driven with the request shapes of the reference, against the
//! real edge-server binary over HTTPS with a fresh database, answers checked field by field.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use e2e::{Store, StoreOptions, SITE};
use serde_json::{json, Value};

const JANE: &str = "4000000000001";
const JOHN: &str = "4000000000002";
const ANA: &str = "4000000000003";

fn q(customer: &str, txn: &str) -> String {
    format!("?site={SITE}&customer={customer}&transaction={txn}")
}

fn items() -> Value {
    json!([
        {"id": 1, "quantity": 2, "upc": 894773001193u64, "price": 12.99, "discountPrice": 12.99, "dept": 2},
        {"id": 2, "quantity": 1, "upc": 12000001000u64, "price": 1.99, "discountPrice": 1.49, "dept": 1},
        {"id": 3, "quantity": 1, "upc": 38000012345u64, "price": 4.49, "discountPrice": 4.49, "dept": 4},
        {"id": 4, "quantity": 1, "upc": "0000099887766", "price": 8.99, "discountPrice": 8.99, "dept": 7},
        {"id": 5, "quantity": 1, "upc": 4400000001u64, "price": 15.00, "discountPrice": 15.00, "dept": 8}
    ])
}

fn update_body(customer: &str, txn: &str, transient: bool, items: Value) -> Value {
    json!({"site": SITE, "customer": customer, "transaction": txn, "cashier": 99, "terminal": 6,
           "time": "2018-08-13T10:15:30", "transientRequest": transient, "items": items,
           "subTotal": 1.49, "taxTotal": 0.2, "grossTotal": 1.69, "sharedkey": "ignored", "someFutureField": {"x": 1}})
}

async fn meta(store: &Store, customer: &str) -> Value {
    let (status, m) = store
        .get(&format!(
            "/coupons/customer?site={SITE}&customer={customer}"
        ))
        .await
        .unwrap();
    assert_eq!(status, 200, "{m}");
    m
}

fn list(m: &Value, name: &str) -> Vec<String> {
    m[name]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

/// The ids of an answer's `errors`, in order (none when it has none).
fn error_ids(r: &Value) -> Vec<String> {
    r["errors"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| e["id"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until the catalog lists `id` (the server reloads it within a second of an
/// import) and returns its entry.
async fn wait_for_catalog(store: &Store, id: &str) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (_, body) = store.get(&format!("/coupons?site={SITE}")).await.unwrap();
        if let Some(c) = body["coupons"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["id"] == id)
        {
            return c.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{id} never listed: {body}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// `customer`'s update of `txn` with the standard basket; the answer.
async fn update(store: &Store, customer: &str, txn: &str, transient: bool) -> Value {
    let (status, r) = store
        .post(
            &format!("/transaction{}", q(customer, txn)),
            &update_body(customer, txn, transient, items()),
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{r}");
    r
}

/// The loyalty balance an update answer shows.
fn points(answer: &Value) -> Option<i64> {
    answer["loyaltyBalances"][0]["balance"].as_i64()
}

fn applied<'a>(answer: &'a Value, id: &str) -> Option<&'a Value> {
    answer["applied"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["couponId"] == id)
}

#[tokio::test]
async fn catalog_lists_every_live_coupon_with_catapult_fields() {
    let store = Store::start(StoreOptions::default()).await.unwrap();
    let (status, body) = store.get(&format!("/coupons?site={SITE}")).await.unwrap();
    assert_eq!(status, 200);
    assert!(body.get("errors").is_none());
    let coupons = body["coupons"].as_array().unwrap();
    let ids: Vec<&str> = coupons.iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert!(
        ids.contains(&"BOGO1") && ids.contains(&"CVX1") && ids.contains(&"PTS500"),
        "{ids:?}"
    );
    assert!(
        !ids.contains(&"OLD1"),
        "an ended offer is not in the catalog"
    );
    let bogo = coupons.iter().find(|c| c["id"] == "BOGO1").unwrap();
    assert_eq!(
        bogo,
        &json!({
            "id": "BOGO1",
            "shortDescription": "Buy One Get One Free Dog Food",
            "requirementDescription": "Buy two bags of Brand X dog food, the cheaper one is free.",
            "longDescription": "Limit one per customer. Offer not valid in certain states and provinces.",
            "category": "Pet",
            "brand": "Brand X",
            "startDate": "2026-01-01",
            "endDate": "2099-12-31",
            "imageUrl": "/images/coupon-bogo.gif",
            "targeted": false,
            "enabled": true,
            "featured": true,
            "requirementUpcs": [894773001193u64, 894773001049u64],
            "rewardUpcs": []
        })
    );
    // A zero-padded UPC goes back as written, a string (a number would lose the zeros).
    let cereal = coupons.iter().find(|c| c["id"] == "KPN1").unwrap();
    assert_eq!(cereal["requirementUpcs"], json!(["0038000012345"]));
    // The image it advertises is served from the same origin, with the exact type.
    let r = store
        .client
        .get(store.url("/images/coupon-bogo.gif"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["content-type"], "image/gif");
    assert!(r.bytes().await.unwrap().starts_with(b"GIF89a"));
    let (status, _) = store.get("/images/nope.jpg").await.unwrap();
    assert_eq!(status, 404);

    let (status, body) = store.get("/coupons?site=NOPE").await.unwrap();
    assert_eq!(status, 400);
    assert_eq!(body["errors"][0]["id"], "INVALID_SITE");
}

/// CATAPULT §8: the POS fetches base URL + `imageUrl` (its example: `/CouponImage24.jpg`),
/// with or without credentials, so every path the catalog advertises is served; with
/// `useExternalImages=true` it uses `imageUrl` as it is, so a local image is advertised
/// as an absolute URL of this server.
#[tokio::test]
async fn every_advertised_image_is_served_and_absolute_with_external_images() {
    let store = Store::start(StoreOptions::default()).await.unwrap();
    let jpeg = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00";
    std::fs::write(store.dir.join("images/CouponImage24.jpg"), jpeg).unwrap();
    std::fs::create_dir_all(store.dir.join("images/deals")).unwrap();
    std::fs::write(store.dir.join("images/deals/Spring.PNG"), b"\x89PNG\r\n").unwrap();
    let snapshot = store.dir.join("images-offers.json");
    let offer = |id: &str, url: &str| {
        json!({"id": id, "provider": "local", "providerRef": id,
               "shortDescription": id, "startDate": "2026-01-01", "endDate": "2099-12-31",
               "imageUrl": url,
               "rule": {"mechanic": {"type": "percentOff", "basisPoints": 500},
                        "requirement": {"upcs": ["777"]}}})
    };
    std::fs::write(
        &snapshot,
        json!({"offers": [offer("IMG1", "/CouponImage24.jpg"), offer("IMG2", "/deals/Spring.PNG"),
                          offer("IMG3", "/images/not-there.png")]})
        .to_string(),
    )
    .unwrap();
    // The import names what is advertised but has no file to serve yet.
    let log = store.import(&snapshot).unwrap();
    assert!(
        log.contains(
            "1 offers name an image this server cannot serve (e.g. /images/not-there.png)"
        ),
        "{log}"
    );
    let url_of = |body: &Value, id: &str| {
        body["coupons"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["id"] == id)
            .map(|c| c["imageUrl"].as_str().unwrap().to_owned())
    };
    // The running server reloads its catalog every second.
    let mut body = Value::Null;
    for _ in 0..50 {
        let (status, b) = store.get(&format!("/coupons?site={SITE}")).await.unwrap();
        assert_eq!(status, 200);
        body = b;
        if url_of(&body, "IMG2").is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let url_of = |body: &Value, id: &str| url_of(body, id).unwrap();
    assert_eq!(url_of(&body, "IMG1"), "/CouponImage24.jpg");
    // Fetched as the POS does: base URL + imageUrl, without credentials.
    let anonymous = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    for (id, content_type, bytes) in [
        ("IMG1", "image/jpeg", &jpeg[..]),
        ("IMG2", "image/png", &b"\x89PNG\r\n"[..]),
        ("BOGO1", "image/gif", &b"GIF89a"[..]),
    ] {
        let r = anonymous
            .get(store.url(&url_of(&body, id)))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "{id}");
        assert_eq!(r.headers()["content-type"], content_type, "{id}");
        assert!(r.bytes().await.unwrap().starts_with(bytes), "{id}");
    }
    // Nothing else is served that way: a missing image, a non-image, a way out of the
    // image directory, and any other path still needs credentials.
    for path in [
        "/CouponImage25.jpg",
        "/images-offers.json",
        "/%2e%2e/edge.db.jpg",
    ] {
        let r = anonymous.get(store.url(path)).send().await.unwrap();
        assert!(
            [401, 404].contains(&r.status().as_u16()),
            "{path}: {}",
            r.status()
        );
    }
    std::fs::write(store.dir.join("secret.gif"), b"GIF89a").unwrap();
    for path in [
        "/../secret.gif",
        "/.%2e/secret.gif",
        "/images/..%2fsecret.gif",
    ] {
        let r = anonymous.get(store.url(path)).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 404, "{path}");
    }
    let (status, _) = store.post("/CouponImage24.jpg", &json!({})).await.unwrap();
    assert_eq!(status, 404, "only GET serves images");
    drop(store);

    let store = Store::start(StoreOptions {
        lanes_toml: "use_external_images = true".to_owned(),
        ..StoreOptions::default()
    })
    .await
    .unwrap();
    let (_, body) = store.get(&format!("/coupons?site={SITE}")).await.unwrap();
    let url = url_of(&body, "BOGO1");
    assert_eq!(url, store.url("/images/coupon-bogo.gif"));
    let r = anonymous.get(&url).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
}

/// CATAPULT §4.2/§6: `expired` lists clipped coupons that expired unused, for 30 days
/// after their end date; `redeemed` those used in the last 30 days.
#[tokio::test]
async fn expired_lists_coupons_for_thirty_days_after_their_end_date() {
    let store = Store::start(StoreOptions::default()).await.unwrap();
    let today = chrono::Utc::now().date_naive();
    let day = |offset: i64| (today + chrono::Duration::days(offset)).to_string();
    let offer = |id: &str, end: String| {
        json!({"id": id, "provider": "local", "providerRef": id, "shortDescription": id,
               "startDate": day(-400), "endDate": end,
               "rule": {"mechanic": {"type": "percentOff", "basisPoints": 500},
                        "requirement": {"upcs": ["777"]}}})
    };
    let customer = "4000000000099";
    let snapshot = store.dir.join("history.json");
    std::fs::write(
        &snapshot,
        json!({
            "offers": [offer("ENDED10", day(-10)), offer("ENDED45", day(-45)),
                       offer("GONE60", day(-60)), offer("WITHDRAWN", day(30)),
                       offer("USED", day(30))],
            "customers": [{"id": customer, "coupons": [
                {"offerId": "ENDED10", "state": "clipped"},
                {"offerId": "ENDED45", "state": "clipped"},
                {"offerId": "GONE60", "state": "expired"},
                {"offerId": "WITHDRAWN", "state": "expired"},
                {"offerId": "USED", "state": "redeemed"}]}]
        })
        .to_string(),
    )
    .unwrap();
    store.import(&snapshot).unwrap();
    let m = meta(&store, customer).await;
    // GONE60 was imported today as expired, but it ended 60 days ago: not listed.
    assert_eq!(list(&m, "expired"), ["ENDED10", "WITHDRAWN"], "{m}");
    assert_eq!(list(&m, "redeemed"), ["USED"], "{m}");
    assert!(list(&m, "clipped").is_empty(), "{m}");
    // An expired coupon can be neither unclipped nor clipped again (§4.3: `added` and
    // `removed` list the ids actually changed; §5.15 COUPON_UNAVAILABLE), and stays listed.
    // WITHDRAWN's offer still runs, but the customer's copy expired (a provider said so).
    for body in [
        json!({"remove": ["ENDED10"]}),
        json!({"add": ["ENDED10"]}),
        json!({"remove": ["WITHDRAWN"]}),
        json!({"add": ["WITHDRAWN"]}),
    ] {
        let (status, r) = store
            .post(
                &format!("/coupons/customer?site={SITE}&customer={customer}"),
                &body,
            )
            .await
            .unwrap();
        assert_eq!(status, 200, "{r}");
        assert_eq!(
            (r["added"].clone(), r["removed"].clone()),
            (json!([]), json!([])),
            "{body}: {r}"
        );
        assert_eq!(r["errors"][0]["id"], "COUPON_UNAVAILABLE", "{body}: {r}");
    }
    let m = meta(&store, customer).await;
    assert_eq!(list(&m, "expired"), ["ENDED10", "WITHDRAWN"], "{m}");
}

#[tokio::test]
async fn metadata_lists_and_aliases() {
    let store = Store::start(StoreOptions::default()).await.unwrap();
    let m = meta(&store, JANE).await;
    assert_eq!(
        list(&m, "clipped"),
        ["AMT2", "BOGO1", "CVX1", "GLOB1", "KPN1", "PCT10"]
    );
    assert_eq!(list(&m, "available"), ["FIX99"]);
    assert!(list(&m, "pending").is_empty() && list(&m, "redeemed").is_empty());
    assert!(m.get("errors").is_none());
    // A customer never seen: every non-targeted clippable coupon is available, nothing else.
    let fresh = meta(&store, "NEWCARD").await;
    assert_eq!(
        list(&fresh, "available"),
        ["AMT2", "BOGO1", "FIX99", "GLOB1", "KPN1", "PCT10"]
    );
    assert!(
        !list(&fresh, "available").contains(&"CVX1".to_owned()),
        "targeted coupons are not offered to everybody"
    );
    for alias in ["/customer/coupons", "/coupons/metadata"] {
        let (status, other) = store
            .get(&format!("{alias}?site={SITE}&customer={JANE}"))
            .await
            .unwrap();
        assert_eq!((status, &other), (200, &m), "{alias}");
    }
    let (status, body) = store
        .get(&format!(
            "/coupons/customer?site={SITE}&customer=12345678901234567"
        ))
        .await
        .unwrap();
    assert_eq!(status, 400);
    assert_eq!(body["errors"][0]["id"], "INVALID_CUSTOMER");
}

#[tokio::test]
async fn clip_and_unclip_with_per_id_errors() {
    let store = Store::start(StoreOptions::default()).await.unwrap();
    let path = format!("/coupons/customer?site={SITE}&customer={JANE}");
    let (status, r) = store
        .post(
            &path,
            &json!({"add": ["FIX99", "BOGO1", "FIX99"], "remove": ["PCT10", "PCT10"]}),
        )
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        r,
        json!({"added": ["FIX99", "BOGO1"], "removed": ["PCT10"]}),
        "clipping a clipped coupon is idempotent; an id listed twice is changed (and named) once"
    );
    let m = meta(&store, JANE).await;
    assert!(list(&m, "clipped").contains(&"FIX99".to_owned()));
    assert!(list(&m, "available").contains(&"PCT10".to_owned()));

    let (status, r) = store
        .post(&path, &json!({"add": ["NOSUCH"]}))
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(r["added"], json!([]));
    assert_eq!(r["errors"][0]["id"], "COUPON_NOT_FOUND");
    // Targeted coupon: John has it offered, Ana does not.
    let (_, r) = store
        .post(
            &format!("/coupons/clip?site={SITE}&customer={JOHN}"),
            &json!({"add": ["CVX1"]}),
        )
        .await
        .unwrap();
    assert_eq!(r["added"], json!(["CVX1"]));
    let (_, r) = store
        .post(
            &format!("/coupons/edit?site={SITE}&customer={ANA}"),
            &json!({"add": ["CVX1"]}),
        )
        .await
        .unwrap();
    assert_eq!(r["errors"][0]["id"], "COUPON_UNAVAILABLE");
    // PUT is accepted too, and parameters may come in the body.
    let r = store
        .client
        .put(store.url("/coupons/customer"))
        .basic_auth(e2e::USER, Some(e2e::PASSWORD))
        .json(&json!({"site": SITE, "customer": ANA, "add": ["AMT2"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        e2e::json_of(r).await.unwrap(),
        (200, json!({"added": ["AMT2"], "removed": []}))
    );
    // Clipping queues the activation for Convercus coupons, in the same transaction.
    let outbox = outbox_rows(&store);
    assert!(outbox.iter().any(|i| i.provider == "convercus"
        && i.operation == "activate"
        && i.payload["offerId"] == "CVX1"));
}

#[tokio::test]
async fn clip_unclip_and_clip_again_within_a_second_each_reach_the_outbox() {
    // convercus.md §5: activations are "last write wins per coupon, in order". A key built
    // from the clock in seconds dropped the third change as a duplicate of the first.
    let store = Store::start(StoreOptions::default()).await.unwrap();
    let path = format!("/coupons/customer?site={SITE}&customer={JOHN}");
    for body in [
        json!({"add": ["CVX1"]}),
        json!({"remove": ["CVX1"]}),
        json!({"add": ["CVX1"]}),
    ] {
        let (status, r) = store.post(&path, &body).await.unwrap();
        assert_eq!(status, 200, "{r}");
        assert!(r.get("errors").is_none(), "{r}");
    }
    let changes: Vec<String> = outbox_rows(&store)
        .into_iter()
        .filter(|i| i.payload["offerId"] == "CVX1" && i.payload["customer"] == JOHN)
        .map(|i| i.operation)
        .collect();
    assert_eq!(changes, ["activate", "deactivate", "activate"]);
    // A voucher locked, unlocked and locked again by one sale: three operations queued.
    let body = json!({"site": SITE, "transaction": "RELOCK1", "moneySpent": 0.0});
    for op in ["lock", "unlock", "lock"] {
        let (status, v) = store
            .post(&format!("/vouchers/CT-SESSION-0001/{op}"), &body)
            .await
            .unwrap();
        assert_eq!(status, 200, "{op}: {v}");
    }
    let ops: Vec<String> = outbox_rows(&store)
        .into_iter()
        .filter(|i| i.payload["code"] == "CT-SESSION-0001")
        .map(|i| i.operation)
        .collect();
    assert_eq!(ops, ["lock", "unlock", "lock"]);
}

/// CATAPULT §4.8: "Our server serves every image it advertises in `imageUrl`." An offer
/// whose image file is not in `server.image_dir` is listed with `imageUrl` "" until the
/// file is put there (before, it was advertised and the lane's fetch got 404).
#[tokio::test]
async fn an_image_is_advertised_only_while_its_file_is_there() {
    let store = Store::start(StoreOptions::default()).await.unwrap();
    let snapshot = store.dir.join("later-image.json");
    std::fs::write(
        &snapshot,
        json!({"offers": [{"id": "LATERIMG", "provider": "local", "providerRef": "LATERIMG",
            "shortDescription": "Image later", "startDate": "2026-01-01", "endDate": "2099-12-31",
            "imageUrl": "/images/later.gif",
            "rule": {"mechanic": {"type": "amountOff", "cents": 100}}}]})
        .to_string(),
    )
    .unwrap();
    store.import(&snapshot).unwrap();
    let listed = wait_for_catalog(&store, "LATERIMG").await;
    assert_eq!(listed["imageUrl"], "", "no file yet: not advertised");
    let (status, _) = store.get("/images/later.gif").await.unwrap();
    assert_eq!(status, 404);
    std::fs::copy(
        store.dir.join("images/coupon-bogo.gif"),
        store.dir.join("images/later.gif"),
    )
    .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while wait_for_catalog(&store, "LATERIMG").await["imageUrl"] != "/images/later.gif" {
        assert!(
            std::time::Instant::now() < deadline,
            "the image put there is never advertised"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let r = store
        .client
        .get(store.url("/images/later.gif"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
}

#[tokio::test]
async fn a_permanent_convercus_coupon_is_never_activated_or_deactivated_upstream() {
    let store = Store::start(StoreOptions::default()).await.unwrap();
    // Convercus `activation.activatable = false`: a permanent coupon, imported as
    // requiresClip false (as the pull maps it).
    let snapshot = store.dir.join("permanent.json");
    std::fs::write(
        &snapshot,
        json!({
            "offers": [{"id": "CVPERM", "provider": "convercus", "providerRef": "c-perm",
                        "shortDescription": "Permanent 5%", "startDate": "2026-01-01",
                        "endDate": "2099-12-31", "targeted": true, "requiresClip": false,
                        "rule": {"mechanic": {"type": "percentOff", "basisPoints": 500}}}],
            "customers": [{"id": "4000000000077", "provider": "convercus", "providerRef": "acc-77",
                           "coupons": [{"offerId": "CVPERM", "state": "clipped", "providerRef": "ACID-77"}]}],
        })
        .to_string(),
    )
    .unwrap();
    store.import(&snapshot).unwrap();
    let path = format!("/coupons/customer?site={SITE}&customer=4000000000077");
    for body in [json!({"remove": ["CVPERM"]}), json!({"add": ["CVPERM"]})] {
        let (status, r) = store.post(&path, &body).await.unwrap();
        assert_eq!(status, 200, "{r}");
        assert!(r.get("errors").is_none(), "{r}");
    }
    let activations: Vec<String> = outbox_rows(&store)
        .into_iter()
        .filter(|i| i.payload["offerId"] == "CVPERM")
        .map(|i| i.operation)
        .collect();
    assert!(activations.is_empty(), "{activations:?}");
}

#[tokio::test]
async fn demographics_by_phone_or_email() {
    let store = Store::start(StoreOptions::default()).await.unwrap();
    let path = format!("/demographics?site={SITE}");
    let (status, r) = store
        .post(&path, &json!({"phones": ["5551234567"], "emails": []}))
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        r,
        json!({"id": JANE, "firstName": "Jane", "lastName": "Doe", "email": "jane@example.com", "phone": "5551234567"})
    );
    let (_, r) = store
        .post(
            &path,
            &json!({"phones": [], "emails": ["JOHN@example.com"]}),
        )
        .await
        .unwrap();
    assert_eq!(r["id"], JOHN);
    let (status, r) = store
        .post(
            &path,
            &json!({"phones": ["8282652907"], "emails": ["support@ecrs.com"]}),
        )
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(r["errors"][0]["id"], "CUSTOMER_NOT_FOUND");
    assert!(r.get("id").is_none());
    let (status, r) = store
        .post(&path, &json!({"phones": ["12345678901"]}))
        .await
        .unwrap();
    assert_eq!(
        (status, r["errors"][0]["id"].as_str()),
        (400, Some("INVALID_REQUEST"))
    );
}

#[tokio::test]
async fn update_applies_holds_releases_and_answers_every_field() {
    let store = Store::start(StoreOptions::default()).await.unwrap();
    unclip_basket_coupon(&store).await;
    // Transient: a preview only; nothing becomes pending.
    let (status, preview) = store
        .post(
            &format!("/transaction{}", q(JANE, "T1")),
            &update_body(JANE, "T1", true, items()),
        )
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert!(applied(&preview, "BOGO1").is_some());
    assert!(
        list(&meta(&store, JANE).await, "pending").is_empty(),
        "transient updates never hold"
    );

    let (status, r) = store
        .post(
            &format!("/transaction{}", q(JANE, "T1")),
            &update_body(JANE, "T1", false, items()),
        )
        .await
        .unwrap();
    assert_eq!(status, 200);
    let ids: Vec<&str> = r["applied"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["couponId"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["BOGO1", "CVX1", "KPN1", "PCT10", "PTS500"]);
    assert_eq!(
        applied(&r, "BOGO1").unwrap(),
        &json!({"couponId": "BOGO1", "externalId": "51112456789", "receiptAlias": "BOGO Dog Food", "reducesTax": true,
                "type": "Mfr Discount", "items": [{"lineId": 1, "discount": 12.99}], "totalDiscount": 12.99})
    );
    assert_eq!(
        applied(&r, "PCT10").unwrap()["items"],
        json!([{"lineId": 2, "discount": 0.15}])
    );
    assert_eq!(applied(&r, "KPN1").unwrap()["reducesTax"], json!(false));
    assert_eq!(applied(&r, "CVX1").unwrap()["totalDiscount"], json!(1.35));
    let pts = applied(&r, "PTS500").unwrap();
    assert_eq!(pts["optional"]["loyaltyId"], "LOY-4000000000001");
    assert_eq!(pts["optional"]["loyaltyCost"], 500);
    assert!(pts["optional"]["prompt"]
        .as_str()
        .unwrap()
        .contains("500 points"));
    assert_eq!(
        r["loyaltyBalances"],
        json!([{"id": "LOY-4000000000001", "balance": 800}])
    );
    assert_eq!(r["customer"]["id"], JANE);
    assert_eq!(r["receiptLines"][0]["type"], "TEXT");
    for a in r["applied"].as_array().unwrap() {
        let sum: f64 = a["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["discount"].as_f64().unwrap())
            .sum();
        assert!(
            (sum - a["totalDiscount"].as_f64().unwrap()).abs() < 1e-9,
            "items add up to totalDiscount: {a}"
        );
    }
    let m = meta(&store, JANE).await;
    assert_eq!(
        list(&m, "pending"),
        ["BOGO1", "CVX1", "KPN1", "PCT10", "PTS500"]
    );
    assert!(
        !list(&m, "clipped").contains(&"BOGO1".to_owned()),
        "an id is in one list only"
    );

    // The sale changes: the soft drink is removed, so PCT10 goes back to clipped. PUT and the
    // alias path are accepted.
    let fewer = json!([items()[0], items()[2], items()[3], items()[4]]);
    let resp = store
        .client
        .put(store.url(&format!("/transaction/update{}", q(JANE, "T1"))))
        .basic_auth(e2e::USER, Some(e2e::PASSWORD))
        .json(&update_body(JANE, "T1", false, fewer))
        .send()
        .await
        .unwrap();
    let (status, r) = e2e::json_of(resp).await.unwrap();
    assert_eq!(status, 200);
    assert!(applied(&r, "PCT10").is_none());
    let m = meta(&store, JANE).await;
    assert!(list(&m, "clipped").contains(&"PCT10".to_owned()));
    assert!(list(&m, "pending").contains(&"BOGO1".to_owned()));
}

#[tokio::test]
async fn cancel_by_get_or_post_releases_and_the_sale_can_resume() {
    let store = Store::start(StoreOptions::default()).await.unwrap();
    store
        .post(
            &format!("/transaction{}", q(JANE, "T2")),
            &update_body(JANE, "T2", false, items()),
        )
        .await
        .unwrap();
    assert!(!list(&meta(&store, JANE).await, "pending").is_empty());
    let (status, r) = store
        .get(&format!("/transaction/cancel{}", q(JANE, "T2")))
        .await
        .unwrap();
    assert_eq!((status, r), (200, json!({})));
    let m = meta(&store, JANE).await;
    assert!(list(&m, "pending").is_empty());
    assert!(list(&m, "clipped").contains(&"BOGO1".to_owned()));
    // Idempotent, and a cancel of an unknown sale is a success.
    let (status, _) = store
        .get(&format!("/transaction/cancel{}", q(JANE, "T2")))
        .await
        .unwrap();
    assert_eq!(status, 200);
    let (status, _) = store
        .post(
            &format!("/transaction/cancel{}", q(JANE, "NEVER")),
            &json!({"anything": true}),
        )
        .await
        .unwrap();
    assert_eq!(status, 200);
    // Resumed (suspended sale): the same transaction id holds again, then cancel by POST.
    let (_, r) = store
        .post(
            &format!("/transaction{}", q(JANE, "T2")),
            &update_body(JANE, "T2", false, items()),
        )
        .await
        .unwrap();
    assert!(applied(&r, "BOGO1").is_some());
    assert!(list(&meta(&store, JANE).await, "pending").contains(&"BOGO1".to_owned()));
    let (status, _) = store
        .post(&format!("/transaction/cancel{}", q(JANE, "T2")), &json!({}))
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert!(list(&meta(&store, JANE).await, "pending").is_empty());
}

/// A commit is idempotent per site and transaction (issue: "per site and transaction"):
/// the same transaction id at the store's two sites is two sales, each redeemed once and
/// each repeat answered with its own first answer.
#[tokio::test]
async fn one_transaction_id_at_two_sites_is_two_sales() {
    let store = Store::start(StoreOptions::default()).await.unwrap();
    let mut firsts = Vec::new();
    for (site, customer) in [(SITE, JANE), ("STO2", JOHN)] {
        let q = format!("?site={site}&customer={customer}&transaction=SAME1");
        let mut body = update_body(customer, "SAME1", false, items());
        body["site"] = json!(site);
        let (status, r) = store
            .post(&format!("/transaction{q}"), &body)
            .await
            .unwrap();
        assert_eq!(status, 200, "{r}");
        assert!(applied(&r, "BOGO1").is_some(), "{site}: {r}");
        let (status, first) = store
            .post(
                &format!("/transaction/commit{q}"),
                &json!({"coupons": ["BOGO1"]}),
            )
            .await
            .unwrap();
        assert_eq!(status, 200, "{first}");
        firsts.push((q, first));
    }
    for customer in [JANE, JOHN] {
        let m = meta(&store, customer).await;
        assert_eq!(list(&m, "redeemed"), ["BOGO1"], "{customer}: {m}");
    }
    let conn = rusqlite::Connection::open(store.db_path()).unwrap();
    let sites: Vec<String> = conn
        .prepare("SELECT site FROM redemptions WHERE txn_id = 'SAME1' AND offer_id = 'BOGO1' ORDER BY site")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(sites, [SITE, "STO2"]);
    for (q, first) in &firsts {
        let (status, again) = store
            .post(
                &format!("/transaction/commit{q}"),
                &json!({"coupons": ["BOGO1"]}),
            )
            .await
            .unwrap();
        assert_eq!((status, &again), (200, first), "{q}");
    }
}

#[tokio::test]
async fn commit_redeems_listed_returns_the_rest_and_replays() {
    let store = Store::start(StoreOptions::default()).await.unwrap();
    store
        .post(
            &format!("/transaction{}", q(JANE, "T3")),
            &update_body(JANE, "T3", false, items()),
        )
        .await
        .unwrap();
    let commit = json!({"site": SITE, "customer": JANE, "transaction": "T3", "coupons": ["BOGO1", "CVX1", "KPN1"], "tenders": [{"type": "CASH", "amount": 5.21}]});
    let (status, first) = store
        .post(&format!("/transaction/commit{}", q(JANE, "T3")), &commit)
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert!(first.get("errors").is_none());
    assert_eq!(first["receiptLines"][0]["type"], "TEXT");
    let m = meta(&store, JANE).await;
    assert_eq!(list(&m, "redeemed"), ["BOGO1", "CVX1", "KPN1"]);
    assert!(list(&m, "pending").is_empty());
    assert!(
        list(&m, "clipped").contains(&"PCT10".to_owned()),
        "pending but not listed: back to clipped"
    );
    let rows_before = outbox_rows(&store);
    let kinds: Vec<(String, String)> = rows_before
        .iter()
        .map(|i| (i.provider.clone(), i.operation.clone()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("convercus".to_owned(), "redeem".to_owned()),
            ("koupon".to_owned(), "redemption".to_owned()),
            ("koupon".to_owned(), "transaction".to_owned())
        ]
    );
    let redeem = &rows_before[0].payload;
    assert_eq!(
        redeem["externalReference"], "EXT-COFFEE-15",
        "coupon data is kept before redeeming"
    );
    assert_eq!(redeem["discountCents"], 135);
    // A repeated commit replays the first answer and changes nothing.
    let (status, again) = store
        .post(&format!("/transaction/commit{}", q(JANE, "T3")), &commit)
        .await
        .unwrap();
    assert_eq!((status, &again), (200, &first));
    assert_eq!(outbox_rows(&store).len(), rows_before.len());
    assert!(!store
        .log_tail()
        .contains("a repeated commit lists other coupons"));
    // One that lists other coupons is answered the same and changes nothing, but is logged.
    let (status, other) = store
        .post(
            &format!("/transaction/commit{}", q(JANE, "T3")),
            &json!({"coupons": ["BOGO1", "PCT10"]}),
        )
        .await
        .unwrap();
    assert_eq!((status, &other), (200, &first));
    assert_eq!(outbox_rows(&store).len(), rows_before.len());
    assert!(
        list(&meta(&store, JANE).await, "clipped").contains(&"PCT10".to_owned()),
        "not redeemed by the repeat"
    );
    let log = store.log_tail();
    assert!(
        log.contains("a repeated commit lists other coupons than the first")
            && log.contains("BOGO1,CVX1,KPN1"),
        "{log}"
    );
    // Coupon ids in a commit are limited to 15 characters.
    let (status, r) = store
        .post(
            &format!("/transaction/commit{}", q(JANE, "T4")),
            &json!({"coupons": ["1234567890123456"]}),
        )
        .await
        .unwrap();
    assert_eq!(
        (status, r["errors"][0]["id"].as_str()),
        (400, Some("INVALID_REQUEST"))
    );
}

/// CATAPULT §4.2: `redeemed` lists what the customer "already used" in the last 30 days.
/// An offer disabled afterwards (by its provider, or by store IT) can no longer be clipped
/// or used, but its redemption stays listed; before, it vanished from every list.
#[tokio::test]
async fn a_disabled_offer_leaves_the_usable_lists_but_not_the_redeemed_history() {
    let store = Store::start(StoreOptions::default()).await.unwrap();
    let m = meta(&store, JANE).await;
    let clipped = list(&m, "clipped");
    assert!(clipped.contains(&"BOGO1".to_owned()), "{m}");
    let other = clipped
        .iter()
        .find(|id| id.as_str() != "BOGO1")
        .cloned()
        .expect("Jane has a second clipped coupon in the sample data");
    store
        .post(
            &format!("/transaction{}", q(JANE, "DIS1")),
            &update_body(JANE, "DIS1", false, items()),
        )
        .await
        .unwrap();
    let (status, r) = store
        .post(
            &format!("/transaction/commit{}", q(JANE, "DIS1")),
            &json!({"coupons": ["BOGO1"]}),
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{r}");
    assert!(list(&meta(&store, JANE).await, "redeemed").contains(&"BOGO1".to_owned()));
    let conn = rusqlite::Connection::open(store.db_path()).unwrap();
    conn.execute(
        "UPDATE offers SET enabled = 0 WHERE id IN ('BOGO1', ?1)",
        [&other],
    )
    .unwrap();
    // The server reloads its catalog within a second of the change.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let m = loop {
        let m = meta(&store, JANE).await;
        if !list(&m, "clipped").contains(&other) {
            break m;
        }
        assert!(std::time::Instant::now() < deadline, "{m}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert!(list(&m, "redeemed").contains(&"BOGO1".to_owned()), "{m}");
    for name in ["available", "clipped", "expired", "pending"] {
        assert!(!list(&m, name).contains(&other), "{name}: {m}");
        assert!(!list(&m, name).contains(&"BOGO1".to_owned()), "{name}: {m}");
    }
}

/// CATAPULT §4.5: a pending coupon "cannot be used on any other transaction until this one
/// is cancelled or a later update no longer uses them"; §5.15: COUPON_UNAVAILABLE for the
/// "commit of an unknown, expired, or in-use coupon (per-ID, request otherwise succeeds)".
/// Before, such a commit redeemed the coupon silently and took it off the open sale.
#[tokio::test]
async fn a_commit_cannot_take_a_coupon_another_open_sale_holds_or_one_that_ended() {
    let store = Store::start(StoreOptions::default()).await.unwrap();
    // Lane 1 holds BOGO1 on its open sale.
    let (status, r) = store
        .post(
            &format!("/transaction{}", q(JANE, "HOLD1")),
            &update_body(JANE, "HOLD1", false, items()),
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{r}");
    assert!(list(&meta(&store, JANE).await, "pending").contains(&"BOGO1".to_owned()));
    // Lane 2 totals another sale without it, then commits listing it.
    let other_items = json!([{"id": 1, "quantity": 1, "upc": 4400000001u64, "price": 15.00, "discountPrice": 15.00, "dept": 8}]);
    let (status, r) = store
        .post(
            &format!("/transaction{}", q(JANE, "TAKE1")),
            &update_body(JANE, "TAKE1", false, other_items.clone()),
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{r}");
    let (status, r) = store
        .post(
            &format!("/transaction/commit{}", q(JANE, "TAKE1")),
            &json!({"coupons": ["BOGO1"]}),
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{r}");
    assert_eq!(error_ids(&r), ["COUPON_UNAVAILABLE"], "{r}");
    assert!(
        r["errors"][0]["details"]
            .as_str()
            .unwrap()
            .contains("BOGO1"),
        "{r}"
    );
    let m = meta(&store, JANE).await;
    assert!(
        list(&m, "pending").contains(&"BOGO1".to_owned()),
        "lane 1 keeps it: {m}"
    );
    // Lane 1's commit redeems it as usual.
    let (status, r) = store
        .post(
            &format!("/transaction/commit{}", q(JANE, "HOLD1")),
            &json!({"coupons": ["BOGO1"]}),
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{r}");
    assert!(r.get("errors").is_none(), "{r}");
    assert!(list(&meta(&store, JANE).await, "redeemed").contains(&"BOGO1".to_owned()));

    // A clipped coupon whose offer ended is expired: a commit listing it names it.
    let today = chrono::Utc::now().date_naive();
    let snapshot = store.dir.join("ended.json");
    std::fs::write(
        &snapshot,
        json!({
            "offers": [{"id": "ENDED3", "provider": "local", "providerRef": "ENDED3",
                        "shortDescription": "Ended", "startDate": (today - chrono::Duration::days(60)).to_string(),
                        "endDate": (today - chrono::Duration::days(3)).to_string(),
                        "rule": {"mechanic": {"type": "amountOff", "cents": 100}}}],
            "customers": [{"id": JANE, "coupons": [{"offerId": "ENDED3", "state": "clipped"}]}]
        })
        .to_string(),
    )
    .unwrap();
    store.import(&snapshot).unwrap();
    store
        .post(
            &format!("/transaction{}", q(JANE, "LATE1")),
            &update_body(JANE, "LATE1", false, other_items),
        )
        .await
        .unwrap();
    let (status, r) = store
        .post(
            &format!("/transaction/commit{}", q(JANE, "LATE1")),
            &json!({"coupons": ["ENDED3"]}),
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{r}");
    assert_eq!(error_ids(&r), ["COUPON_UNAVAILABLE"], "{r}");
    let m = meta(&store, JANE).await;
    assert!(list(&m, "expired").contains(&"ENDED3".to_owned()), "{m}");
    assert!(!list(&m, "redeemed").contains(&"ENDED3".to_owned()), "{m}");
}

/// CATAPULT §4.7 rule 1: "Every coupon in `coupons` becomes **redeemed**" (§6: pending →
/// commit → redeemed), also a coupon the customer may use more than once. Before, such a
/// coupon went back to `clipped`, and a clip-free one was listed as clipped though never
/// clipped. It stays usable until its per-customer limit is reached.
#[tokio::test]
async fn a_coupon_usable_more_than_once_is_listed_redeemed_and_still_applies() {
    let store = Store::start(StoreOptions::default()).await.unwrap();
    let customer = "4000000000088";
    let snapshot = store.dir.join("multi.json");
    let offer = |id: &str, upc: &str, clip: bool, limit: Value| {
        json!({"id": id, "provider": "local", "providerRef": id, "shortDescription": id,
               "startDate": "2026-01-01", "endDate": "2099-12-31", "requiresClip": clip,
               "perCustomerLimit": limit,
               "rule": {"mechanic": {"type": "amountOff", "cents": 100},
                        "requirement": {"upcs": [upc]}}})
    };
    std::fs::write(
        &snapshot,
        json!({
            "offers": [offer("TWICE", "555000111", true, json!(2)),
                       offer("ALWAYS", "555000222", false, Value::Null)],
            "customers": [{"id": customer, "coupons": [{"offerId": "TWICE", "state": "clipped"}]}]
        })
        .to_string(),
    )
    .unwrap();
    store.import(&snapshot).unwrap();
    // Clip-free offers are found in the catalog, reloaded within a second of the import.
    wait_for_catalog(&store, "ALWAYS").await;
    let basket = json!([
        {"id": 1, "quantity": 1, "upc": 555000111u64, "price": 3.00, "discountPrice": 3.00, "dept": 1},
        {"id": 2, "quantity": 1, "upc": 555000222u64, "price": 3.00, "discountPrice": 3.00, "dept": 1}
    ]);
    let sale = |txn: &'static str| {
        let (store, basket) = (&store, basket.clone());
        async move {
            let (status, r) = store
                .post(
                    &format!("/transaction{}", q(customer, txn)),
                    &update_body(customer, txn, false, basket),
                )
                .await
                .unwrap();
            assert_eq!(status, 200, "{r}");
            let given: Vec<String> = r["applied"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a["couponId"].as_str().unwrap().to_owned())
                .collect();
            let (status, c) = store
                .post(
                    &format!("/transaction/commit{}", q(customer, txn)),
                    &json!({"coupons": []}),
                )
                .await
                .unwrap();
            assert_eq!(status, 200, "{c}");
            given
        }
    };
    assert_eq!(sale("MULTI1").await, ["ALWAYS", "TWICE"]);
    let m = meta(&store, customer).await;
    assert_eq!(list(&m, "redeemed"), ["ALWAYS", "TWICE"], "{m}");
    assert!(list(&m, "clipped").is_empty(), "{m}");
    // Used once of twice: it applies again, without a new clip; ALWAYS has no limit.
    assert_eq!(sale("MULTI2").await, ["ALWAYS", "TWICE"]);
    assert_eq!(sale("MULTI3").await, ["ALWAYS"], "TWICE is used up");
    // Clipping a coupon usable again is accepted; one used up is refused.
    let (_, r) = store
        .post(
            &format!("/coupons/customer?site={SITE}&customer={customer}"),
            &json!({"add": ["TWICE"]}),
        )
        .await
        .unwrap();
    assert_eq!(r["errors"][0]["id"], "COUPON_UNAVAILABLE", "{r}");
    let m = meta(&store, customer).await;
    assert_eq!(list(&m, "redeemed"), ["ALWAYS", "TWICE"], "{m}");
}

/// What a sale's update gave one customer is not given to another customer the commit
/// names: John's coupon held by his own open sale stays his.
#[tokio::test]
async fn a_commit_for_another_customer_does_not_take_what_the_update_gave() {
    let store = Store::start(StoreOptions::default()).await.unwrap();
    for (customer, txn) in [(JOHN, "JOHN1"), (JANE, "SWAP1")] {
        let (status, r) = store
            .post(
                &format!("/transaction{}", q(customer, txn)),
                &update_body(customer, txn, false, items()),
            )
            .await
            .unwrap();
        assert_eq!(status, 200, "{r}");
        assert!(applied(&r, "BOGO1").is_some(), "{customer}: {r}");
    }
    let (status, r) = store
        .post(
            &format!("/transaction/commit{}", q(JOHN, "SWAP1")),
            &json!({"coupons": ["BOGO1"]}),
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["errors"][0]["id"], "COUPON_UNAVAILABLE", "{r}");
    let m = meta(&store, JOHN).await;
    assert!(list(&m, "pending").contains(&"BOGO1".to_owned()), "{m}");
}

/// The per-customer limit counts uses the provider knows of (a pull's `redeemCount`: other
/// stores, the provider's app) as well as this store's.
#[tokio::test]
async fn uses_the_provider_counted_elsewhere_count_against_the_limit() {
    let store = Store::start(StoreOptions::default()).await.unwrap();
    let customer = "4000000000087";
    let snapshot = store.dir.join("elsewhere.json");
    std::fs::write(
        &snapshot,
        json!({
            "offers": [{"id": "TWICE2", "provider": "local", "providerRef": "TWICE2",
                        "shortDescription": "Twice", "startDate": "2026-01-01", "endDate": "2099-12-31",
                        "perCustomerLimit": 2,
                        "rule": {"mechanic": {"type": "amountOff", "cents": 100},
                                 "requirement": {"upcs": ["555000333"]}}}],
            "customers": [{"id": customer, "coupons": [{"offerId": "TWICE2", "state": "clipped"}]}]
        })
        .to_string(),
    )
    .unwrap();
    store.import(&snapshot).unwrap();
    let basket = json!([{"id": 1, "quantity": 1, "upc": 555000333u64, "price": 3.00, "discountPrice": 3.00, "dept": 1}]);
    let update = |txn: &'static str| {
        let (store, basket) = (&store, basket.clone());
        async move {
            let (status, r) = store
                .post(
                    &format!("/transaction{}", q(customer, txn)),
                    &update_body(customer, txn, false, basket),
                )
                .await
                .unwrap();
            assert_eq!(status, 200, "{r}");
            r
        }
    };
    let r = update("ELSE1").await;
    assert!(applied(&r, "TWICE2").is_some(), "{r}");
    let (status, _) = store
        .post(
            &format!("/transaction/commit{}", q(customer, "ELSE1")),
            &json!({"coupons": ["TWICE2"]}),
        )
        .await
        .unwrap();
    assert_eq!(status, 200);
    // Once of twice here: it applies again...
    let r = update("ELSE2").await;
    assert!(applied(&r, "TWICE2").is_some(), "{r}");
    store
        .get(&format!("/transaction/cancel{}", q(customer, "ELSE2")))
        .await
        .unwrap();
    // ...until a pull learns the customer used it at another store as well.
    let conn = rusqlite::Connection::open(store.db_path()).unwrap();
    conn.execute(
        "UPDATE customer_coupons SET upstream_redemptions = 2 WHERE customer_id = ?1 AND offer_id = 'TWICE2'",
        [customer],
    )
    .unwrap();
    let r = update("ELSE3").await;
    assert!(applied(&r, "TWICE2").is_none(), "{r}");
    let m = meta(&store, customer).await;
    assert_eq!(list(&m, "redeemed"), ["TWICE2"], "{m}");
}

#[tokio::test]
async fn a_commit_names_the_listed_coupons_it_cannot_redeem_and_is_still_recorded() {
    let store = Store::start(StoreOptions::default()).await.unwrap();
    // A sale this store saw: an unknown id is named (COUPON_NOT_FOUND), the rest redeemed.
    store
        .post(
            &format!("/transaction{}", q(JANE, "E1")),
            &update_body(JANE, "E1", false, items()),
        )
        .await
        .unwrap();
    let (status, r) = store
        .post(
            &format!("/transaction/commit{}", q(JANE, "E1")),
            &json!({"coupons": ["BOGO1", "NOPE1"], "tenders": []}),
        )
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(error_ids(&r), ["COUPON_NOT_FOUND"], "{r}");
    assert!(r["errors"][0]["details"]
        .as_str()
        .unwrap()
        .contains("NOPE1"));
    assert_eq!(
        r["receiptLines"][0]["type"], "TEXT",
        "the rest is redeemed: {r}"
    );
    assert!(list(&meta(&store, JANE).await, "redeemed").contains(&"BOGO1".to_owned()));

    // A sale never seen here listing a coupon used already and an unknown one:
    // INVALID_TRANSACTION first, then each id (§5.15 per-ID), still 200, recorded
    // (conflict flagged) and replayed alike.
    let commit =
        json!({"coupons": ["BOGO1", "NOPE2"], "tenders": [{"type": "CASH", "amount": -5.21}]});
    let (status, first) = store
        .post(&format!("/transaction/commit{}", q(JANE, "E2")), &commit)
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        error_ids(&first),
        [
            "INVALID_TRANSACTION",
            "COUPON_NOT_FOUND",
            "COUPON_UNAVAILABLE"
        ],
        "{first}"
    );
    let details = first["errors"][0]["details"].as_str().unwrap();
    assert!(
        details.contains("BOGO1") && details.contains("NOPE2"),
        "{details}"
    );
    assert_eq!(first["receiptLines"], json!([]));
    let (status, again) = store
        .post(&format!("/transaction/commit{}", q(JANE, "E2")), &commit)
        .await
        .unwrap();
    assert_eq!((status, &again), (200, &first));
    let conn = rusqlite::Connection::open(store.db_path()).unwrap();
    let conflicts: i64 = conn
        .query_row(
            "SELECT count(*) FROM redemptions WHERE conflict = 1 AND txn_id = 'E2' AND offer_id = 'BOGO1'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(conflicts, 1);

    // A never-seen sale whose listed coupons are all redeemable is an ordinary commit.
    let (status, r) = store
        .post(
            &format!("/transaction/commit{}", q(JANE, "E3")),
            &json!({"coupons": ["PCT10"]}),
        )
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert!(r.get("errors").is_none(), "{r}");
    assert!(list(&meta(&store, JANE).await, "redeemed").contains(&"PCT10".to_owned()));

    // A sale only cancelled here (never updated) was seen: a commit listing a coupon used
    // already is acknowledged like any known sale's: 200, recorded, no INVALID_TRANSACTION,
    // the coupon named COUPON_UNAVAILABLE (§5.15: "commit of an ... in-use coupon (per-ID,
    // request otherwise succeeds)").
    let (status, _) = store
        .get(&format!("/transaction/cancel{}", q(JANE, "E5")))
        .await
        .unwrap();
    assert_eq!(status, 200);
    let (status, r) = store
        .post(
            &format!("/transaction/commit{}", q(JANE, "E5")),
            &json!({"coupons": ["BOGO1"]}),
        )
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(error_ids(&r), ["COUPON_UNAVAILABLE"], "{r}");
    assert!(
        r["errors"][0]["details"]
            .as_str()
            .unwrap()
            .contains("BOGO1"),
        "{r}"
    );
    let conflicts: i64 = conn
        .query_row(
            "SELECT count(*) FROM redemptions WHERE conflict = 1 AND txn_id = 'E5' AND offer_id = 'BOGO1'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(conflicts, 1, "recorded, flagged for store IT");
}

#[tokio::test]
async fn commit_errors_none_leaves_errors_out_of_commit_answers() {
    let store = Store::start(StoreOptions {
        lanes_toml: "commit_errors = \"none\"".to_owned(),
        ..StoreOptions::default()
    })
    .await
    .unwrap();
    let (status, r) = store
        .post(
            &format!("/transaction/commit{}", q(JANE, "E4")),
            &json!({"coupons": ["NOPE1"]}),
        )
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(r, json!({"receiptLines": []}));
}

#[tokio::test]
async fn empty_commit_redeems_all_pending_but_never_an_unlisted_points_coupon() {
    let store = Store::start(StoreOptions::default()).await.unwrap();
    unclip_basket_coupon(&store).await;
    store
        .post(
            &format!("/transaction{}", q(JANE, "T5")),
            &update_body(JANE, "T5", false, items()),
        )
        .await
        .unwrap();
    let (status, _) = store
        .post(
            &format!("/transaction/commit{}", q(JANE, "T5")),
            &json!({"coupons": [], "tenders": []}),
        )
        .await
        .unwrap();
    assert_eq!(status, 200);
    let m = meta(&store, JANE).await;
    assert_eq!(list(&m, "redeemed"), ["BOGO1", "CVX1", "KPN1", "PCT10"]);
    assert!(!list(&m, "redeemed").contains(&"PTS500".to_owned()));
    assert!(list(&m, "pending").is_empty());
    // Listed explicitly, the points coupon is redeemed and the points are spent.
    store
        .post(
            &format!("/transaction{}", q(JANE, "T6")),
            &update_body(JANE, "T6", false, items()),
        )
        .await
        .unwrap();
    store
        .post(
            &format!("/transaction/commit{}", q(JANE, "T6")),
            &json!({"coupons": ["PTS500"]}),
        )
        .await
        .unwrap();
    let (_, r) = store
        .post(
            &format!("/transaction{}", q(JANE, "T7")),
            &update_body(JANE, "T7", true, items()),
        )
        .await
        .unwrap();
    assert_eq!(r["loyaltyBalances"][0]["balance"], 300);
}

#[tokio::test]
async fn points_held_by_another_open_sale_are_not_offered_again() {
    let store = Store::start(StoreOptions::default()).await.unwrap();
    unclip_basket_coupon(&store).await;
    let balance = |r: &Value| r["loyaltyBalances"][0]["balance"].as_i64();
    // Lane 1 totals a sale offering the 500-point coupon: its hold reserves the points.
    let (_, r) = store
        .post(
            &format!("/transaction{}", q(JANE, "P1")),
            &update_body(JANE, "P1", false, items()),
        )
        .await
        .unwrap();
    assert!(applied(&r, "PTS500").is_some(), "{r}");
    assert_eq!(
        balance(&r),
        Some(800),
        "its own sale sees the whole balance"
    );
    // Lane 2, same customer: only what is not held elsewhere.
    let (_, r) = store
        .post(
            &format!("/transaction{}", q(JANE, "P2")),
            &update_body(JANE, "P2", true, items()),
        )
        .await
        .unwrap();
    assert_eq!(balance(&r), Some(300), "{r}");
    // Lane 1 cancels: the points are free again.
    let (status, _) = store
        .get(&format!("/transaction/cancel{}", q(JANE, "P1")))
        .await
        .unwrap();
    assert_eq!(status, 200);
    let (_, r) = store
        .post(
            &format!("/transaction{}", q(JANE, "P2")),
            &update_body(JANE, "P2", true, items()),
        )
        .await
        .unwrap();
    assert_eq!(balance(&r), Some(800), "{r}");
}

/// John has 100 points; the 500-point coupon is still offered (the POS "prompts only if
/// the balance is sufficient", §5.10), but his open sale does not reserve points he does
/// not have: before, his other lane saw a balance of 0. A commit that takes it anyway is
/// acknowledged and flagged for store IT (before: no conflict, the shortfall only logged).
#[tokio::test]
async fn a_points_coupon_the_balance_cannot_pay_is_neither_held_nor_redeemed_unflagged() {
    let store = Store::start(StoreOptions::default()).await.unwrap();
    let r = update(&store, JOHN, "J1", false).await;
    assert_eq!(
        applied(&r, "PTS500").unwrap()["optional"]["loyaltyCost"],
        500,
        "{r}"
    );
    assert_eq!(points(&r), Some(100), "{r}");
    let m = meta(&store, JOHN).await;
    assert!(!list(&m, "pending").contains(&"PTS500".to_owned()), "{m}");
    let r = update(&store, JOHN, "J2", true).await;
    assert_eq!(
        points(&r),
        Some(100),
        "nothing of it is reserved by J1: {r}"
    );
    // The cashier takes it anyway: recorded, the balance spent to 0, flagged.
    let (status, _) = store
        .post(
            &format!("/transaction/commit{}", q(JOHN, "J1")),
            &json!({"coupons": ["PTS500"]}),
        )
        .await
        .unwrap();
    assert_eq!(status, 200);
    let conn = rusqlite::Connection::open(store.db_path()).unwrap();
    let conflict: i64 = conn
        .query_row(
            "SELECT conflict FROM redemptions WHERE txn_id = 'J1' AND offer_id = 'PTS500'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(conflict, 1, "the shortfall is flagged for store IT");
    let r = update(&store, JOHN, "J3", true).await;
    assert_eq!(points(&r), Some(0), "{r}");
}

/// The lane prompted "500 points"; the offer is repriced at 700 before the commit. The
/// commit charges what was prompted (a pre-authorisation is "on N points", loyalty §2);
/// before, it charged 700.
#[tokio::test]
async fn a_points_coupon_costs_what_the_lane_prompted_even_if_repriced_before_the_commit() {
    let store = Store::start(StoreOptions::default()).await.unwrap();
    unclip_basket_coupon(&store).await;
    let r = update(&store, JANE, "R1", false).await;
    assert_eq!(
        applied(&r, "PTS500").unwrap()["optional"]["loyaltyCost"],
        500,
        "{r}"
    );
    let mut sample: Value =
        serde_json::from_str(include_str!("../../packaging/sample-data.json")).unwrap();
    for o in sample["offers"].as_array_mut().unwrap() {
        if o["id"] == "PTS500" {
            o["loyaltyCost"] = json!(700);
        }
    }
    let snapshot = store.dir.join("repriced.json");
    std::fs::write(&snapshot, sample.to_string()).unwrap();
    store.import(&snapshot).unwrap();
    // The catalog picks up the new price (John's sale is prompted 700).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let r = update(&store, JOHN, "R2", true).await;
        if applied(&r, "PTS500").unwrap()["optional"]["loyaltyCost"] == 700 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never repriced: {r}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let (status, _) = store
        .post(
            &format!("/transaction/commit{}", q(JANE, "R1")),
            &json!({"coupons": ["PTS500"]}),
        )
        .await
        .unwrap();
    assert_eq!(status, 200);
    let r = update(&store, JANE, "R3", true).await;
    assert_eq!(r["loyaltyBalances"][0]["balance"], 300, "800 - 500: {r}");
}

#[tokio::test]
async fn global_limit_holds_across_customers() {
    let store = Store::start(StoreOptions::default()).await.unwrap();
    let flowers = json!([{"id": 1, "quantity": 1, "upc": 555, "price": 10.00, "dept": 9}]);
    for (i, c) in [JANE, JOHN].iter().enumerate() {
        let txn = format!("G{i}");
        let (_, r) = store
            .post(
                &format!("/transaction{}", q(c, &txn)),
                &update_body(c, &txn, false, flowers.clone()),
            )
            .await
            .unwrap();
        assert!(applied(&r, "GLOB1").is_some(), "shopper {i} gets it");
        store
            .post(
                &format!("/transaction/commit{}", q(c, &txn)),
                &json!({"coupons": ["GLOB1"]}),
            )
            .await
            .unwrap();
    }
    let (_, r) = store
        .post(
            &format!("/transaction{}", q(ANA, "G2")),
            &update_body(ANA, "G2", false, flowers),
        )
        .await
        .unwrap();
    assert!(
        applied(&r, "GLOB1").is_none(),
        "the third shopper is over the store-wide limit of 2"
    );
}

/// Sends John's basket as sale `txn` every 200 ms until BOGO1 applies to it (the hold of
/// another sale lapsed), at most 10 s; returns how many updates it took.
async fn updates_until_bogo_applies(store: &Store, txn: &str, transient: bool) -> u32 {
    updates_until_applied(store, JOHN, txn, transient, &["BOGO1"]).await
}

/// Sends `customer`'s update of `txn` every 200 ms until every coupon of `ids` applies
/// (another sale's hold on them lapsed); returns how many updates it took.
async fn updates_until_applied(
    store: &Store,
    customer: &str,
    txn: &str,
    transient: bool,
    ids: &[&str],
) -> u32 {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut tries = 0;
    loop {
        tries += 1;
        let (_, r) = store
            .post(
                &format!("/transaction{}", q(customer, txn)),
                &update_body(customer, txn, transient, items()),
            )
            .await
            .unwrap();
        if ids.iter().all(|id| applied(&r, id).is_some()) {
            return tries;
        }
        assert!(std::time::Instant::now() < deadline, "hold never expired");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn an_abandoned_transactions_hold_expires() {
    // Expiry times are whole seconds: a hold of `ttl` seconds lives between ttl - 1 and
    // ttl seconds. Measured from before the update to when another lane first gets the
    // coupon: not before ttl - 1 s (it held meanwhile), not long after ttl s.
    let ttl = 4;
    let store = Store::start(StoreOptions {
        hold_ttl_secs: ttl,
        ..StoreOptions::default()
    })
    .await
    .unwrap();
    let placed = std::time::Instant::now();
    let (_, r) = store
        .post(
            &format!("/transaction{}", q(JOHN, "A1")),
            &update_body(JOHN, "A1", false, items()),
        )
        .await
        .unwrap();
    assert!(applied(&r, "BOGO1").is_some());
    // Polling, not a fixed sleep: another lane gets the coupon once the hold has lapsed.
    let tries = updates_until_bogo_applies(&store, "A2", false).await;
    let lived = placed.elapsed();
    assert!(
        tries > 1,
        "the hold must have been in force right after the first update"
    );
    assert!(
        lived >= std::time::Duration::from_secs(ttl - 1),
        "the hold lapsed after {lived:?}, before its {ttl} s"
    );
    assert!(
        lived <= std::time::Duration::from_secs(ttl + 3),
        "the hold still held after {lived:?} ({ttl} s configured)"
    );
    // The late commit of the abandoned sale still redeems it: A2 only holds it, nobody
    // used it (§4.7); A2 loses it (see the test below for A2's own commit).
    let (status, r) = store
        .post(
            &format!("/transaction/commit{}", q(JOHN, "A1")),
            &json!({"coupons": ["BOGO1"]}),
        )
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert!(r.get("errors").is_none());
    let conn = rusqlite::Connection::open(store.db_path()).unwrap();
    let (redeemed, conflicts): (i64, i64) = conn
        .query_row(
            "SELECT count(*), coalesce(sum(conflict), 0) FROM redemptions WHERE txn_id = 'A1' AND offer_id = 'BOGO1'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((redeemed, conflicts), (1, 0));
    let m = meta(&store, JOHN).await;
    assert!(list(&m, "redeemed").contains(&"BOGO1".to_owned()), "{m}");
    assert!(!list(&m, "pending").contains(&"BOGO1".to_owned()), "{m}");
}

#[tokio::test]
async fn a_late_empty_commit_after_the_hold_lapsed_still_redeems_what_the_sale_was_given() {
    let store = Store::start(StoreOptions {
        hold_ttl_secs: 1,
        ..StoreOptions::default()
    })
    .await
    .unwrap();
    let (_, r) = store
        .post(
            &format!("/transaction{}", q(JOHN, "L1")),
            &update_body(JOHN, "L1", false, items()),
        )
        .await
        .unwrap();
    assert!(applied(&r, "BOGO1").is_some(), "{r}");
    // Wait (polling with transient updates, which hold nothing) until the hold has lapsed.
    updates_until_bogo_applies(&store, "L2", true).await;
    // The POS retried the commit while the WAN was down: it arrives late, list empty.
    let (status, r) = store
        .post(
            &format!("/transaction/commit{}", q(JOHN, "L1")),
            &json!({"coupons": []}),
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{r}");
    assert!(list(&meta(&store, JOHN).await, "redeemed").contains(&"BOGO1".to_owned()));
    let conn = rusqlite::Connection::open(store.db_path()).unwrap();
    let (redeemed, conflicts): (i64, i64) = conn
        .query_row(
            "SELECT count(*) FILTER (WHERE offer_id = 'BOGO1'), coalesce(sum(conflict), 0) \
             FROM redemptions WHERE txn_id = 'L1'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((redeemed, conflicts), (1, 0));
}

/// CATAPULT §4.7: a late commit "still redeems the listed coupons if they are not redeemed
/// elsewhere". Meanwhile held by another open sale is not redeemed: the finished sale
/// redeems them and the open sale loses them, so a coupon the first shopper had cannot
/// come back to clipped when the open sale commits without it.
#[tokio::test]
async fn a_late_commit_takes_its_coupons_back_from_a_sale_that_holds_them_since() {
    let store = Store::start(StoreOptions {
        hold_ttl_secs: 1,
        ..StoreOptions::default()
    })
    .await
    .unwrap();
    let (_, r) = store
        .post(
            &format!("/transaction{}", q(JANE, "LT1")),
            &update_body(JANE, "LT1", false, items()),
        )
        .await
        .unwrap();
    let given: Vec<String> = r["applied"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["couponId"].as_str().unwrap().to_owned())
        // The points coupon may be used again (no per-customer limit): not single-use.
        .filter(|id| id != "PTS500")
        .collect();
    assert!(
        given.contains(&"BOGO1".to_owned()) && given.len() >= 3,
        "{r}"
    );
    // LT1's hold lapses; sale LT2 of the same customer now holds the same coupons.
    let ids: Vec<&str> = given.iter().map(String::as_str).collect();
    updates_until_applied(&store, JANE, "LT2", false, &ids).await;
    let pending = list(&meta(&store, JANE).await, "pending");
    assert!(given.iter().all(|id| pending.contains(id)), "{pending:?}");
    // LT1's commit arrives late, listing what its shopper had.
    let (status, r) = store
        .post(
            &format!("/transaction/commit{}", q(JANE, "LT1")),
            &json!({"coupons": given}),
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{r}");
    assert!(r.get("errors").is_none(), "{r}");
    let m = meta(&store, JANE).await;
    for id in &given {
        assert!(list(&m, "redeemed").contains(id), "{id}: {m}");
        assert!(
            !list(&m, "pending").contains(id),
            "LT2 no longer holds {id}: {m}"
        );
    }
    // LT2 commits listing only BOGO1: acknowledged and flagged; nothing comes back to
    // clipped, and nothing is redeemed twice.
    let (status, r) = store
        .post(
            &format!("/transaction/commit{}", q(JANE, "LT2")),
            &json!({"coupons": ["BOGO1"]}),
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{r}");
    let m = meta(&store, JANE).await;
    for id in &given {
        assert!(list(&m, "redeemed").contains(id), "{id}: {m}");
        assert!(!list(&m, "clipped").contains(id), "{id}: {m}");
    }
    let conn = rusqlite::Connection::open(store.db_path()).unwrap();
    let rows: Vec<(String, String, i64)> = conn
        .prepare("SELECT txn_id, offer_id, conflict FROM redemptions WHERE txn_id IN ('LT1', 'LT2') ORDER BY txn_id, offer_id")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let mut want: Vec<(String, String, i64)> = given
        .iter()
        .map(|id| ("LT1".to_owned(), id.clone(), 0))
        .collect();
    want.push(("LT2".to_owned(), "BOGO1".to_owned(), 1));
    assert_eq!(rows, want);
}

/// A voided sale's voucher lock is released with its coupons (coupontools.md §5: "on cancel
/// enqueue unlock"): another lane can use the voucher at once, and Coupontools is told.
#[tokio::test]
async fn cancel_releases_the_sales_voucher_locks_and_queues_their_unlock() {
    let store = Store::start(StoreOptions::default()).await.unwrap();
    let body = |txn: &str| json!({"site": SITE, "transaction": txn, "moneySpent": 0.0});
    let (status, v) = store
        .post("/vouchers/CT-SESSION-0001/lock", &body("VOID1"))
        .await
        .unwrap();
    assert_eq!((status, v["state"].as_str()), (200, Some("locked")), "{v}");
    let (status, _) = store
        .post("/vouchers/CT-SESSION-0001/lock", &body("OTHER1"))
        .await
        .unwrap();
    assert_eq!(status, 409, "locked by the open sale");
    let (status, r) = store
        .get(&format!("/transaction/cancel{}", q(JANE, "VOID1")))
        .await
        .unwrap();
    assert_eq!(status, 200, "{r}");
    let (status, v) = store
        .post("/vouchers/CT-SESSION-0001/lock", &body("OTHER1"))
        .await
        .unwrap();
    assert_eq!((status, v["state"].as_str()), (200, Some("locked")), "{v}");
    let ops: Vec<(String, String)> = outbox_rows(&store)
        .into_iter()
        .filter(|i| i.payload["code"] == "CT-SESSION-0001")
        .map(|i| {
            (
                i.operation,
                i.payload["transaction"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let expected: Vec<(String, String)> =
        [("lock", "VOID1"), ("unlock", "VOID1"), ("lock", "OTHER1")]
            .iter()
            .map(|(o, t)| ((*o).to_owned(), (*t).to_owned()))
            .collect();
    assert_eq!(ops, expected);
}

#[tokio::test]
async fn vouchers_lock_validate_and_say_when_they_were_used() {
    let store = Store::start(StoreOptions::default()).await.unwrap();
    let (status, v) = store
        .get(&format!("/vouchers/CT-SESSION-0001?site={SITE}"))
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(v["state"], "active");
    assert_eq!(v["value"].as_f64(), Some(5.0));
    assert_eq!(v["minSpend"].as_f64(), Some(20.0));
    let body =
        |txn: &str, spent: f64| json!({"site": SITE, "transaction": txn, "moneySpent": spent});
    let (status, v) = store
        .post("/vouchers/CT-SESSION-0001/lock", &body("V1", 0.0))
        .await
        .unwrap();
    assert_eq!((status, v["state"].as_str()), (200, Some("locked")));
    let (status, e) = store
        .post("/vouchers/CT-SESSION-0001/lock", &body("V2", 0.0))
        .await
        .unwrap();
    assert_eq!(
        (status, e["errors"][0]["id"].as_str()),
        (409, Some("VOUCHER_UNAVAILABLE"))
    );
    let (status, e) = store
        .post("/vouchers/CT-SESSION-0001/validate", &body("V1", 10.0))
        .await
        .unwrap();
    assert_eq!(
        (status, e["errors"][0]["id"].as_str()),
        (400, Some("VOUCHER_INVALID")),
        "below the minimum spend"
    );
    let (status, v) = store
        .post("/vouchers/CT-SESSION-0001/validate", &body("V1", 25.50))
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(v["state"], "validated");
    let used_at = v["validatedAt"].as_str().unwrap().to_owned();
    assert_eq!(v["message"], format!("already used at {used_at}"));
    // The same sale retrying is a success; another sale is told when it was used.
    let (status, _) = store
        .post("/vouchers/CT-SESSION-0001/validate", &body("V1", 25.50))
        .await
        .unwrap();
    assert_eq!(status, 200);
    let (status, e) = store
        .post("/vouchers/CT-SESSION-0001/validate", &body("V3", 30.0))
        .await
        .unwrap();
    assert_eq!(status, 409);
    assert_eq!(
        e["errors"][0]["details"],
        format!("already used at {used_at}")
    );
    // Unlock releases a lock.
    store
        .post("/vouchers/KP-BARCODE-0003/lock", &body("V4", 0.0))
        .await
        .unwrap();
    let (_, v) = store
        .post("/vouchers/KP-BARCODE-0003/unlock", &body("V4", 0.0))
        .await
        .unwrap();
    assert_eq!(v["state"], "active");
    // A voucher outside its validity window says so, and cannot be locked.
    let expired = store.dir.join("expired-voucher.json");
    let snapshot = json!({"vouchers": [{"code": "OLD-VOUCHER", "provider": "coupontools", "valueCents": 100, "validFrom": "2020-01-01", "validUntil": "2020-12-31"}]});
    std::fs::write(&expired, snapshot.to_string()).unwrap();
    store.import(&expired).unwrap();
    let (status, v) = store
        .get(&format!("/vouchers/OLD-VOUCHER?site={SITE}"))
        .await
        .unwrap();
    assert_eq!(
        (status, v["state"].as_str(), v["message"].as_str()),
        (200, Some("invalid"), Some("not valid today"))
    );
    let (status, _) = store
        .post("/vouchers/OLD-VOUCHER/lock", &body("V5", 0.0))
        .await
        .unwrap();
    assert_eq!(status, 409);
    let (status, e) = store
        .get(&format!("/vouchers/NOPE?site={SITE}"))
        .await
        .unwrap();
    assert_eq!(
        (status, e["errors"][0]["id"].as_str()),
        (404, Some("VOUCHER_NOT_FOUND"))
    );
    let ops: Vec<String> = outbox_rows(&store)
        .into_iter()
        .filter(|i| i.provider == "coupontools")
        .map(|i| i.operation)
        .collect();
    assert_eq!(ops, ["lock", "validate"]);
}

#[tokio::test]
async fn health_readiness_and_unmatched_paths() {
    let store = Store::start(StoreOptions::default()).await.unwrap();
    let r = store
        .client
        .get(store.url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let (status, ready) =
        e2e::json_of(store.client.get(store.url("/readyz")).send().await.unwrap())
            .await
            .unwrap();
    assert_eq!(status, 200);
    assert_eq!(ready["status"], "ready");
    assert_eq!(ready["database"]["schemaCurrent"], true);
    let (status, e) = store.get("/coupons/unknown/path").await.unwrap();
    assert_eq!(
        (status, e["errors"][0]["id"].as_str()),
        (404, Some("INVALID_REQUEST"))
    );
    let (status, e) = store.post("/coupons?site=STO1", &json!({})).await.unwrap();
    assert_eq!(
        (status, e["errors"][0]["id"].as_str()),
        (405, Some("INVALID_REQUEST"))
    );
    let r = store
        .client
        .delete(store.url("/transaction/cancel"))
        .basic_auth(e2e::USER, Some(e2e::PASSWORD))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 405);
    assert_eq!(
        r.headers()["allow"],
        "GET, POST",
        "405 names the allowed methods"
    );
    // Each unmatched path and method is logged with both, for path discovery.
    let log = store.log();
    for (line, method, path) in [
        ("unmatched request path", "GET", "/coupons/unknown/path"),
        ("unmatched request method", "POST", "/coupons"),
        ("unmatched request method", "DELETE", "/transaction/cancel"),
    ] {
        assert!(
            log.lines().any(|l| l.contains(line)
                && l.contains(&format!("method={method}"))
                && l.contains(&format!("path={path}"))),
            "{line} {method} {path}:\n{log}"
        );
    }
}

/// Jane's basket-wide $2 coupon would take every line left by item coupons (and so leave
/// nothing for the optional points coupon, which comes after mandatory ones): unclip it.
async fn unclip_basket_coupon(store: &Store) {
    let (_, r) = store
        .post(
            &format!("/coupons/customer?site={SITE}&customer={JANE}"),
            &json!({"remove": ["AMT2"]}),
        )
        .await
        .unwrap();
    assert_eq!(r["removed"], json!(["AMT2"]));
}

/// The voucher operations queued for `code`, in queue order, as (operation, transaction).
fn voucher_ops(store: &Store, code: &str) -> Vec<(String, String)> {
    outbox_rows(store)
        .into_iter()
        .filter(|i| i.payload["code"] == code)
        .map(|i| {
            let txn = i.payload["transaction"].as_str().unwrap_or_default();
            (i.operation.clone(), txn.to_owned())
        })
        .collect()
}

/// A Coupontools session may carry the retailer's own validation code, shown to the
/// shopper instead of the session id (coupontools.md §1): a lane may scan either, and it
/// is still one voucher, used once, delivered under the session id.
#[tokio::test]
async fn a_voucher_scanned_by_its_own_validation_code_is_the_same_voucher() {
    let store = Store::start(StoreOptions::default()).await.unwrap();
    let snapshot = store.dir.join("own-code.json");
    std::fs::write(
        &snapshot,
        json!({"vouchers": [{"code": "sessownvc0001", "provider": "coupontools",
                             "valueCents": 300, "alias": "SPRING-42"}]})
        .to_string(),
    )
    .unwrap();
    store.import(&snapshot).unwrap();
    let (status, v) = store
        .get(&format!("/vouchers/SPRING-42?site={SITE}"))
        .await
        .unwrap();
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        (v["code"].as_str(), v["value"].as_f64()),
        (Some("sessownvc0001"), Some(3.0))
    );
    let body = |txn: &str| json!({"site": SITE, "transaction": txn, "moneySpent": 10.0});
    let (status, v) = store
        .post("/vouchers/SPRING-42/lock", &body("OV1"))
        .await
        .unwrap();
    assert_eq!((status, v["state"].as_str()), (200, Some("locked")), "{v}");
    // Another sale scanning the session id finds it locked: one voucher.
    let (status, _) = store
        .post("/vouchers/sessownvc0001/lock", &body("OV2"))
        .await
        .unwrap();
    assert_eq!(status, 409);
    let (status, v) = store
        .post("/vouchers/SPRING-42/validate", &body("OV1"))
        .await
        .unwrap();
    assert_eq!(
        (status, v["state"].as_str()),
        (200, Some("validated")),
        "{v}"
    );
    let (status, e) = store
        .post("/vouchers/sessownvc0001/validate", &body("OV3"))
        .await
        .unwrap();
    assert_eq!(status, 409, "{e}");
    assert!(e["errors"][0]["details"]
        .as_str()
        .unwrap()
        .starts_with("already used at"));
    let ops: Vec<(String, String)> = outbox_rows(&store)
        .into_iter()
        .filter(|i| i.provider == "coupontools")
        .map(|i| {
            (
                i.operation,
                i.payload["providerRef"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect();
    assert_eq!(
        ops,
        [
            ("lock".to_owned(), "sessownvc0001".to_owned()),
            ("validate".to_owned(), "sessownvc0001".to_owned())
        ]
    );
}

/// Coupontools: lock, then unlock or validate. A sale abandoned with a voucher locked (no
/// unlock, no validation) must not leave the session locked at the provider for good.
#[tokio::test]
async fn an_abandoned_sale_s_voucher_lock_is_undone_upstream() {
    let code = "CT-SESSION-0001";
    let body = |txn: &str| json!({"site": SITE, "transaction": txn});
    let ops = |list: &[(&str, &str)]| -> Vec<(String, String)> {
        list.iter()
            .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
            .collect()
    };
    // Another sale locks it after the first sale's lock lapsed: the first lock is undone
    // upstream before the new one is sent.
    let store = Store::start(StoreOptions::default()).await.unwrap();
    let (status, _) = store
        .post(&format!("/vouchers/{code}/lock"), &body("AB1"))
        .await
        .unwrap();
    assert_eq!(status, 200);
    let conn = rusqlite::Connection::open(store.db_path()).unwrap();
    conn.execute(
        "UPDATE vouchers SET lock_expires_at = lock_expires_at - 7200 WHERE code = ?1",
        [code],
    )
    .unwrap();
    let (status, v) = store
        .post(&format!("/vouchers/{code}/lock"), &body("AB2"))
        .await
        .unwrap();
    assert_eq!((status, v["state"].as_str()), (200, Some("locked")), "{v}");
    assert_eq!(
        voucher_ops(&store, code),
        ops(&[("lock", "AB1"), ("unlock", "AB1"), ("lock", "AB2")])
    );
    drop(store);

    // Nobody touches it again: the sweeper releases the lapsed lock and queues the unlock.
    let store = Store::start(StoreOptions {
        hold_ttl_secs: 2,
        ..StoreOptions::default()
    })
    .await
    .unwrap();
    let (status, _) = store
        .post(&format!("/vouchers/{code}/lock"), &body("AB3"))
        .await
        .unwrap();
    assert_eq!(status, 200);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while voucher_ops(&store, code).len() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the lapsed lock was never released: {:?}",
            voucher_ops(&store, code)
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(
        voucher_ops(&store, code),
        ops(&[("lock", "AB3"), ("unlock", "AB3")])
    );
    let (_, v) = store
        .get(&format!("/vouchers/{code}?site={SITE}"))
        .await
        .unwrap();
    assert_eq!(v["state"], "active", "{v}");
    let locked: Option<String> = rusqlite::Connection::open(store.db_path())
        .unwrap()
        .query_row(
            "SELECT lock_txn FROM vouchers WHERE code = ?1",
            [code],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(locked, None);
    assert!(store
        .log_tail()
        .contains("released voucher locks of abandoned transactions"));
}

/// coupontools.md §6: lock → (unlock | validate) in order, and "drop a pending `unlock` if
/// a `validate` for the same session follows it". A sale locks a voucher and lets it go;
/// another sale uses it before that unlock went out: the unlock is dropped (kept,
/// discarded, saying why), the lock and the validation go out in order. An unlock already
/// sent stays as it is.
#[tokio::test]
async fn an_unlock_not_sent_yet_is_dropped_when_a_validation_of_the_voucher_follows() {
    let code = "CT-SESSION-0001";
    let body = |txn: &str| json!({"site": SITE, "transaction": txn, "moneySpent": 25.0});
    let store = Store::start(StoreOptions::default()).await.unwrap();
    for (action, txn) in [
        ("lock", "DU1"),
        ("unlock", "DU1"),
        ("lock", "DU2"),
        ("unlock", "DU2"),
    ] {
        let (status, v) = store
            .post(&format!("/vouchers/{code}/{action}"), &body(txn))
            .await
            .unwrap();
        assert_eq!(status, 200, "{action} {txn}: {v}");
    }
    // DU1's unlock went out already.
    let conn = rusqlite::Connection::open(store.db_path()).unwrap();
    let first_unlock = outbox_rows(&store)
        .into_iter()
        .find(|i| i.operation == "unlock" && i.payload["transaction"] == "DU1")
        .unwrap();
    shared::outbox::mark_delivered(&conn, first_unlock.id, 1).unwrap();
    let (status, v) = store
        .post(&format!("/vouchers/{code}/validate"), &body("DU3"))
        .await
        .unwrap();
    assert_eq!(status, 200, "{v}");
    let states: Vec<(String, String, String)> = outbox_rows(&store)
        .into_iter()
        .filter(|i| i.payload["code"] == code)
        .map(|i| {
            let txn = i.payload["transaction"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            (i.operation, txn, i.state)
        })
        .collect();
    let row = |op: &str, txn: &str, state: &str| (op.to_owned(), txn.to_owned(), state.to_owned());
    assert_eq!(
        states,
        [
            row("lock", "DU1", "pending"),
            row("unlock", "DU1", "delivered"),
            row("lock", "DU2", "pending"),
            row("unlock", "DU2", "discarded"),
            row("validate", "DU3", "pending"),
        ]
    );
    let dropped = outbox_rows(&store)
        .into_iter()
        .find(|i| i.state == "discarded")
        .unwrap();
    assert!(
        dropped
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("a validation of the same voucher follows")),
        "{dropped:?}"
    );
}

fn outbox_rows(store: &Store) -> Vec<shared::outbox::Item> {
    let conn = rusqlite::Connection::open(store.db_path()).unwrap();
    shared::outbox::list(&conn, None).unwrap()
}

#[tokio::test]
async fn offers_imported_while_serving_reach_the_lanes() {
    let store = Store::start(StoreOptions::default()).await.unwrap();
    let snapshot = store.dir.join("new-offer.json");
    let offer = json!({"offers": [{"id": "NEW1", "provider": "local", "providerRef": "NEW1", "shortDescription": "Brand new",
        "startDate": "2026-01-01", "endDate": "2099-12-31", "rule": {"mechanic": {"type": "amountOff", "cents": 100}}}]});
    std::fs::write(&snapshot, offer.to_string()).unwrap();
    store.import(&snapshot).unwrap();
    // The catalog is held in memory and reloaded when the stored catalog version moves.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (_, body) = store.get(&format!("/coupons?site={SITE}")).await.unwrap();
        if body["coupons"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["id"] == "NEW1")
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "new offer never reached the catalog"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(list(&meta(&store, JANE).await, "available").contains(&"NEW1".to_owned()));
}
