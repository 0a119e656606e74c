//! A Coupontools voucher the store has never seen is looked up at Coupontools within a small
//! budget and only while Coupontools answers; otherwise the lane hears at once that the
//! provider could not be asked (PROVIDER_UNAVAILABLE). A card never seen is looked up at
//! Convercus the same way when a lane asks for its coupons.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use e2e::stack::Providers;
use e2e::{Store, StoreOptions, SITE};
use serde_json::json;

/// A fresh store using the simulated providers (no scheduled pull), with `keys` (TOML lines)
/// added to `[providers.<provider>]`.
async fn store_with(providers: &Providers, provider: &str, keys: &str) -> Store {
    let table = format!("[providers.{provider}]");
    Store::start(StoreOptions {
        extra_toml: providers
            .config_toml("0 0 0 1 1 *")
            .replace(&table, &format!("{table}\n{keys}")),
        ..StoreOptions::default()
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn an_unseen_voucher_is_read_through_within_budget_and_never_while_unreachable() {
    let providers = Providers::start().unwrap();
    let store = store_with(
        &providers,
        "coupontools",
        "read_through_ms = 500\nread_through_pause_secs = 30",
    )
    .await;
    let config = std::fs::read_to_string(&store.config_path).unwrap();
    assert_eq!(config.matches("read_through_ms").count(), 1, "{config}");

    // In the simulator's default seed, not in the store's sample data.
    let session = "ac6s7u3g8a25ja7x9qg87";
    let (status, v) = store
        .get(&format!("/vouchers/{session}?site={SITE}"))
        .await
        .unwrap();
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["value"].as_f64(), Some(5.0));
    assert_eq!(v["state"], "active");
    // Coupontools answers that it does not know a code: no such voucher.
    let (status, r) = store
        .get(&format!("/vouchers/neverseen000?site={SITE}"))
        .await
        .unwrap();
    assert_eq!(status, 404, "{r}");
    assert_eq!(r["errors"][0]["id"], "VOUCHER_NOT_FOUND", "{r}");
    // Stored: answered locally from now on, lockable and usable offline.
    providers
        .faults("coupontools", json!({"down": true}))
        .await
        .unwrap();
    let (status, _) = store
        .get(&format!("/vouchers/{session}?site={SITE}"))
        .await
        .unwrap();
    assert_eq!(status, 200);
    let (status, r) = store
        .post(
            &format!("/vouchers/{session}/validate"),
            &json!({"site": SITE, "transaction": "RT1", "moneySpent": 12.5}),
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{r}");

    // Not known here and Coupontools is down: the lane hears that the provider could not
    // be asked (CATAPULT §5.15 PROVIDER_UNAVAILABLE), not that there is no such voucher;
    // and the failure pauses read-through, so the next unknown code is not even tried.
    let (status, r) = store
        .get(&format!("/vouchers/neverseen001?site={SITE}"))
        .await
        .unwrap();
    assert_eq!(status, 503, "{r}");
    assert_eq!(r["errors"][0]["id"], "PROVIDER_UNAVAILABLE", "{r}");
    providers
        .faults("coupontools", json!({"down": false}))
        .await
        .unwrap();
    let (status, r) = store
        .get(&format!("/vouchers/neverseen002?site={SITE}"))
        .await
        .unwrap();
    assert_eq!(status, 503, "paused: {r}");
    assert_eq!(r["errors"][0]["id"], "PROVIDER_UNAVAILABLE", "{r}");
    let log = std::fs::read_to_string(store.dir.join("edge-server.log")).unwrap();
    assert_eq!(
        log.matches("voucher read-through failed").count(),
        1,
        "{log}"
    );
}

#[tokio::test]
async fn a_slow_coupontools_costs_the_lane_at_most_the_budget() {
    let providers = Providers::start().unwrap();
    let store = store_with(&providers, "coupontools", "read_through_ms = 200").await;
    providers
        .faults("coupontools", json!({"slow_ms": 3000}))
        .await
        .unwrap();
    let (status, r) = store
        .get(&format!("/vouchers/ac6s7u3g8a25ja7x9qg87?site={SITE}"))
        .await
        .unwrap();
    assert_eq!(status, 503, "{r}");
    assert_eq!(r["errors"][0]["id"], "PROVIDER_UNAVAILABLE", "{r}");
    let log = std::fs::read_to_string(store.dir.join("edge-server.log")).unwrap();
    assert!(log.contains("over its 200 ms budget"), "{log}");
}

#[tokio::test]
async fn a_session_locked_at_coupontools_by_another_system_is_refused_at_lookup() {
    let providers = Providers::start().unwrap();
    providers
        .seed(&json!({"coupontools": {
            "campaigns": [{"ID": "cam_100001", "title": "One off", "active": true}],
            "sessions": [{"session": "lockedelsewhere000001", "campaign": "cam_100001",
                          "status": {"value": "2.00", "locked": "1"}}]}}))
        .await
        .unwrap();
    let store = store_with(&providers, "coupontools", "read_through_ms = 500").await;
    let code = "lockedelsewhere000001";
    let (status, v) = store
        .get(&format!("/vouchers/{code}?site={SITE}"))
        .await
        .unwrap();
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["state"], "locked", "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("another system"),
        "{v}"
    );
    // Neither a lock nor a validation at a lane gets past it, and nothing is queued.
    for action in ["lock", "validate"] {
        let (status, r) = store
            .post(
                &format!("/vouchers/{code}/{action}"),
                &json!({"site": SITE, "transaction": "LK1", "moneySpent": 10.0}),
            )
            .await
            .unwrap();
        assert_eq!(status, 409, "{action}: {r}");
        assert_eq!(r["errors"][0]["id"], "VOUCHER_UNAVAILABLE", "{r}");
    }
}

/// coupontools.md §1/§3.7: a campaign may show the shopper the retailer's own validation
/// code instead of the session id. A lane scanning such a code the store has never seen
/// gets the session found by `couponsession/search`, stored with the code as its alias, so
/// it can be locked and validated by that code offline, and what goes upstream names the
/// session. `search_param = ""` turns the search off.
#[tokio::test]
async fn an_unseen_own_validation_code_is_found_by_search_and_validated_as_its_session() {
    let providers = Providers::start().unwrap();
    let session = "ownc0de5e55i0n0000001";
    providers
        .seed(&json!({"coupontools": {
            "campaigns": [{"ID": "cam_100001", "title": "Spring", "active": true}],
            "sessions": [{"session": session, "campaign": "cam_100001",
                          "status": {"value": "3.00", "claimed": "1", "own_validation_code": "SPRING-0042",
                                     "expiration_date": "2099-12-31 23:59:59"}}]}}))
        .await
        .unwrap();
    let toml = |extra: &str| {
        providers.config_toml("0 0 0 1 1 *").replace(
            "campaigns = [\"cam_100001\"]",
            &format!("campaigns = [\"cam_100001\"]\nread_through_ms = 1000\n{extra}"),
        )
    };
    let store = Store::start(StoreOptions {
        extra_toml: toml(""),
        ..StoreOptions::default()
    })
    .await
    .unwrap();
    let (status, v) = store
        .get(&format!("/vouchers/SPRING-0042?site={SITE}"))
        .await
        .unwrap();
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["value"].as_f64(), Some(3.0), "{v}");
    assert_eq!(v["state"], "active", "{v}");
    let (status, r) = store
        .get(&format!("/vouchers/SPRING-9999?site={SITE}"))
        .await
        .unwrap();
    assert_eq!(status, 404, "no session has that code either: {r}");
    assert_eq!(r["errors"][0]["id"], "VOUCHER_NOT_FOUND", "{r}");

    // Stored: locked and validated by the own code with Coupontools down.
    providers
        .faults("coupontools", json!({"down": true}))
        .await
        .unwrap();
    for action in ["lock", "validate"] {
        let (status, r) = store
            .post(
                &format!("/vouchers/SPRING-0042/{action}"),
                &json!({"site": SITE, "transaction": "OWN1", "moneySpent": 20.0}),
            )
            .await
            .unwrap();
        assert_eq!(status, 200, "{action}: {r}");
    }
    let (status, r) = store
        .get(&format!("/vouchers/{session}?site={SITE}"))
        .await
        .unwrap();
    assert_eq!(status, 200, "the session id finds the same voucher: {r}");
    assert_eq!(r["state"], "validated", "{r}");
    let conn = rusqlite::Connection::open(store.db_path()).unwrap();
    let refs: Vec<(String, String)> = conn
        .prepare("SELECT operation, json_extract(payload, '$.providerRef') FROM outbox WHERE provider = 'coupontools' ORDER BY id")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        refs,
        [
            ("lock".to_owned(), session.to_owned()),
            ("validate".to_owned(), session.to_owned())
        ]
    );

    // Without the search, the own code is unknown.
    let no_search = Store::start(StoreOptions {
        extra_toml: toml("search_param = \"\""),
        ..StoreOptions::default()
    })
    .await
    .unwrap();
    providers
        .faults("coupontools", json!({"down": false}))
        .await
        .unwrap();
    let (status, r) = no_search
        .get(&format!("/vouchers/SPRING-0042?site={SITE}"))
        .await
        .unwrap();
    assert_eq!(status, 404, "{r}");
}

/// Look-ups a lane waits for are not held to the daemon's request rate (5 a second for
/// Coupontools): unknown codes scanned one after another, each asked as a session and then
/// searched for as an own code, all get their answer within the default 300 ms budget
/// ("no such voucher"), instead of a 503 and a 30 s stop of every look-up.
#[tokio::test]
async fn unknown_codes_scanned_one_after_another_each_get_their_answer_within_budget() {
    let providers = Providers::start().unwrap();
    let store = Store::start(StoreOptions {
        extra_toml: providers.config_toml("0 0 0 1 1 *"),
        ..StoreOptions::default()
    })
    .await
    .unwrap();
    for i in 0..4 {
        let (status, r) = store
            .get(&format!("/vouchers/UNKNOWN-{i}?site={SITE}"))
            .await
            .unwrap();
        assert_eq!(status, 404, "code {i}: {r}");
        assert_eq!(r["errors"][0]["id"], "VOUCHER_NOT_FOUND", "{r}");
    }
    let searches = providers
        .requests("coupontools")
        .await
        .unwrap()
        .iter()
        .filter(|r| {
            r["path"]
                .as_str()
                .is_some_and(|p| p.ends_with("couponsession/search"))
        })
        .count();
    assert_eq!(
        searches, 4,
        "each code asked as a session, then searched for"
    );
    let log = std::fs::read_to_string(store.dir.join("edge-server.log")).unwrap();
    assert!(!log.contains("over its"), "{log}");
}

/// Requests the Convercus simulator saw for `card`'s account.
async fn card_requests(providers: &Providers, card: &str) -> usize {
    providers
        .requests("convercus")
        .await
        .unwrap()
        .iter()
        .filter(|r| r["path"].as_str().unwrap_or_default().contains(card))
        .count()
}

fn customer_coupons(card: &str) -> String {
    format!("/coupons/customer?site={SITE}&customer={card}")
}

/// The brief's first promise: a card never seen at this store may be read through to the
/// provider within a small budget, and only while it answers. Before, such a card got empty
/// lists until the next Convercus pull (every 15 minutes by default) fetched it.
#[tokio::test]
async fn an_unseen_card_is_read_through_at_convercus_and_never_while_unreachable() {
    let providers = Providers::start().unwrap();
    // Off at first (0), as a store may run before regional IT turns it on.
    let store = store_with(
        &providers,
        "convercus",
        "read_through_ms = 0\nread_through_pause_secs = 30",
    )
    .await;
    // The simulator's account, by its app code: not in the store's sample data.
    let (status, m) = store.get(&customer_coupons("A1B2C3D4E5")).await.unwrap();
    assert_eq!((status, &m["clipped"]), (200, &json!([])), "{m}");
    assert!(
        m.get("errors").is_none(),
        "read-through off: nothing was needed: {m}"
    );
    assert_eq!(card_requests(&providers, "A1B2C3D4E5").await, 0);
    // Turned on by a config edit, without a restart.
    let config = std::fs::read_to_string(&store.config_path).unwrap();
    std::fs::write(
        &store.config_path,
        config.replace("read_through_ms = 0", "read_through_ms = 1500"),
    )
    .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !store.log_tail().contains("configuration reloaded") {
        assert!(std::time::Instant::now() < deadline, "{}", store.log_tail());
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (status, m) = store.get(&customer_coupons("A1B2C3D4E5")).await.unwrap();
    assert_eq!(status, 200, "{m}");
    // Its activated coffee coupon, under the id the sample data gave that coupon.
    assert_eq!(m["clipped"], json!(["CVX1"]), "{m}");
    assert!(m.get("errors").is_none(), "{m}");
    let conn = rusqlite::Connection::open(store.db_path()).unwrap();
    let jane = shared::repo::customer(&conn, "A1B2C3D4E5")
        .unwrap()
        .unwrap();
    assert_eq!(
        (jane.first_name.as_deref(), jane.provider_ref.as_deref()),
        (Some("Jane"), Some("9f1c2e4a-0000-4000-8000-000000000001"))
    );
    // Stored: answered locally from now on, without asking again.
    let asked = card_requests(&providers, "A1B2C3D4E5").await;
    let (_, again) = store.get(&customer_coupons("A1B2C3D4E5")).await.unwrap();
    assert_eq!(again, m);
    assert_eq!(card_requests(&providers, "A1B2C3D4E5").await, asked);

    // A card Convercus does not know: empty lists, and noted, so lanes do not ask again
    // (the pulls do).
    let stranger = "4000000000777";
    let (status, m) = store.get(&customer_coupons(stranger)).await.unwrap();
    assert_eq!(status, 200, "{m}");
    assert_eq!(m["clipped"], json!([]), "{m}");
    assert!(m.get("errors").is_none(), "Convercus answered: {m}");
    let asked = card_requests(&providers, stranger).await;
    assert!(asked > 0);
    store.get(&customer_coupons(stranger)).await.unwrap();
    assert_eq!(card_requests(&providers, stranger).await, asked);

    // Convercus is down: the lane is answered from the store at once, and the failure
    // pauses read-through, so the next unseen card is not even tried.
    providers
        .faults("convercus", json!({"down": true}))
        .await
        .unwrap();
    // CATAPULT §5.15: PROVIDER_UNAVAILABLE, "a read-through to an upstream provider was
    // needed and not possible within budget".
    let (status, m) = store.get(&customer_coupons("4000000000778")).await.unwrap();
    assert_eq!((status, &m["clipped"]), (200, &json!([])), "{m}");
    assert_eq!(m["errors"][0]["id"], "PROVIDER_UNAVAILABLE", "{m}");
    providers
        .faults("convercus", json!({"down": false}))
        .await
        .unwrap();
    let (status, m) = store.get(&customer_coupons("4000000000779")).await.unwrap();
    assert_eq!((status, &m["clipped"]), (200, &json!([])), "{m}");
    assert_eq!(m["errors"][0]["id"], "PROVIDER_UNAVAILABLE", "paused: {m}");
    // The same in an update for such a card: the sale goes on without its coupons.
    let (status, r) = store
        .post(
            "/transaction",
            &json!({"site": SITE, "customer": "4000000000779", "transaction": "RTU1",
                    "transientRequest": true, "items": []}),
        )
        .await
        .unwrap();
    assert_eq!(
        (status, &r["errors"][0]["id"]),
        (200, &json!("PROVIDER_UNAVAILABLE")),
        "{r}"
    );
    assert_eq!(
        card_requests(&providers, "4000000000779").await,
        0,
        "paused"
    );
    let log = std::fs::read_to_string(store.dir.join("edge-server.log")).unwrap();
    assert_eq!(log.matches("card read-through failed").count(), 1, "{log}");
}

/// A look-up over the budget does not hold the lane longer (its answer comes without the
/// card), and is stored when it ends, for the lane's next request.
#[tokio::test]
async fn a_slow_convercus_costs_the_lane_the_budget_and_the_card_arrives_later() {
    let providers = Providers::start().unwrap();
    let store = store_with(&providers, "convercus", "read_through_ms = 200").await;
    // Each of the five calls (login, account, memberships, user, coupons) takes 150 ms.
    providers
        .faults("convercus", json!({"slow_ms": 150}))
        .await
        .unwrap();
    // Answered from the store when the budget is over, without the card.
    let (status, m) = store.get(&customer_coupons("A1B2C3D4E5")).await.unwrap();
    assert_eq!((status, &m["clipped"]), (200, &json!([])), "{m}");
    assert_eq!(m["errors"][0]["id"], "PROVIDER_UNAVAILABLE", "{m}");
    // Meanwhile no other card waits for Convercus: it is not even asked.
    let other = "4000000000780";
    let (status, _) = store.get(&customer_coupons(other)).await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(card_requests(&providers, other).await, 0);
    // The look-up goes on and is stored.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (_, m) = store.get(&customer_coupons("A1B2C3D4E5")).await.unwrap();
        if m["clipped"] == json!(["CVX1"]) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never stored: {m}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let log = std::fs::read_to_string(store.dir.join("edge-server.log")).unwrap();
    assert!(
        log.contains("card read-through over its 200 ms budget"),
        "{log}"
    );
    assert!(!log.contains("card read-through failed"), "{log}");
    // Convercus answered: the other card is looked up when it is next asked for.
    store.get(&customer_coupons(other)).await.unwrap();
    assert!(card_requests(&providers, other).await > 0);
}

/// CATAPULT §7: the first call for a card is often the transient update sent when it is
/// scanned, not the coupon list: the card is looked up there too, so the sale it is first
/// scanned in gets its coupons and the lane its name.
#[tokio::test]
async fn an_unseen_card_scanned_into_a_sale_is_read_through_by_its_update() {
    let providers = Providers::start().unwrap();
    let store = store_with(&providers, "convercus", "read_through_ms = 1500").await;
    let sale = |transient: bool| {
        json!({"site": SITE, "customer": "A1B2C3D4E5", "transaction": "RTC1",
               "transientRequest": transient,
               "items": [{"id": 1, "quantity": 1, "upc": "0000099887766", "price": 4.00,
                          "discountPrice": 4.00, "dept": 7}]})
    };
    let (status, r) = store.post("/transaction", &sale(true)).await.unwrap();
    assert_eq!(status, 200, "{r}");
    // The activated 15 % coffee coupon (CVX1), and the name Convercus has for the card.
    assert_eq!(r["applied"][0]["couponId"], "CVX1", "{r}");
    assert_eq!(r["applied"][0]["totalDiscount"].as_f64(), Some(0.6), "{r}");
    assert_eq!(r["customer"]["firstName"], "Jane", "{r}");
    assert!(r.get("errors").is_none(), "{r}");
    // The sale goes on from the store.
    let asked = card_requests(&providers, "A1B2C3D4E5").await;
    let (status, r) = store.post("/transaction", &sale(false)).await.unwrap();
    assert_eq!(
        (status, &r["applied"][0]["couponId"]),
        (200, &json!("CVX1")),
        "{r}"
    );
    assert_eq!(card_requests(&providers, "A1B2C3D4E5").await, asked);
}

/// The invariant around the two read-throughs: a lane request about what the store knows
/// (a known card, a known voucher) talks to no provider, even with every provider up and
/// configured. Counted by the simulator: every request it received, reads included.
#[tokio::test]
async fn lane_requests_about_what_the_store_knows_reach_no_provider() {
    let providers = Providers::start().unwrap();
    let store = Store::start(StoreOptions {
        extra_toml: providers.config_toml("0 0 0 1 1 *"),
        ..StoreOptions::default()
    })
    .await
    .unwrap();
    let counts = || async {
        let mut out = Vec::new();
        for p in ["convercus", "coupontools", "koupon"] {
            out.push(providers.requests(p).await.unwrap().len());
        }
        out
    };
    let before = counts().await;
    let jane = "4000000000001";
    let q = format!("?site={SITE}&customer={jane}&transaction=KN1");
    let items =
        json!([{"id": 1, "quantity": 2, "upc": 894773001193u64, "price": 12.99, "dept": 2}]);
    let calls: Vec<(&str, String, serde_json::Value)> = vec![
        ("GET", format!("/coupons?site={SITE}"), json!(null)),
        ("GET", customer_coupons(jane), json!(null)),
        (
            "POST",
            format!("/coupons/customer?site={SITE}&customer={jane}"),
            json!({"add": ["PCT10"], "remove": []}),
        ),
        (
            "POST",
            format!("/demographics?site={SITE}"),
            json!({"phones": ["5551234567"]}),
        ),
        (
            "POST",
            format!("/transaction{q}"),
            json!({"transientRequest": true, "items": items}),
        ),
        (
            "POST",
            format!("/transaction{q}"),
            json!({"transientRequest": false, "items": items}),
        ),
        (
            "GET",
            format!("/vouchers/CT-SESSION-0001?site={SITE}"),
            json!(null),
        ),
        (
            "POST",
            "/vouchers/CT-SESSION-0001/lock".to_owned(),
            json!({"site": SITE, "transaction": "KN1"}),
        ),
        (
            "POST",
            "/vouchers/CT-SESSION-0001/validate".to_owned(),
            json!({"site": SITE, "transaction": "KN1", "moneySpent": 25.0}),
        ),
        (
            "POST",
            format!("/transaction/commit{q}"),
            json!({"coupons": []}),
        ),
        (
            "GET",
            format!("/transaction/cancel?site={SITE}&customer={jane}&transaction=KN2"),
            json!(null),
        ),
    ];
    for (method, path, body) in &calls {
        let (status, r) = if *method == "GET" {
            store.get(path).await.unwrap()
        } else {
            store.post(path, body).await.unwrap()
        };
        assert_eq!(status, 200, "{method} {path}: {r}");
    }
    assert_eq!(
        counts().await,
        before,
        "convercus, coupontools, koupon requests"
    );
}
