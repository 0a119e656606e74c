//! Promise 2: acknowledged means durable. Commit N sales, `kill -9` the server right after
//! the last acknowledgement, restart: every sale is redeemed with its outbox rows exactly
//! once, and a repeated commit changes nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use e2e::{Store, StoreOptions, SITE};
use serde_json::json;

const N: usize = 25;

fn customer(i: usize) -> String {
    format!("77000000{i:05}")
}

#[tokio::test]
async fn kill_9_after_the_last_acknowledgement_loses_nothing() {
    let mut store = Store::start(StoreOptions::default()).await.unwrap();
    // N customers, each with the Convercus coffee coupon and the Koupon cereal coupon clipped.
    let customers: Vec<_> = (0..N)
        .map(|i| json!({"id": customer(i), "coupons": [{"offerId": "CVX1", "state": "clipped"}, {"offerId": "KPN1", "state": "clipped"}]}))
        .collect();
    let snapshot = store.dir.join("crash.json");
    std::fs::write(&snapshot, json!({"customers": customers}).to_string()).unwrap();
    store.import(&snapshot).unwrap();

    let items = json!([
        {"id": 1, "quantity": 1, "upc": 38000012345u64, "price": 4.49, "dept": 4},
        {"id": 2, "quantity": 1, "upc": 99887766, "price": 8.99, "dept": 7}
    ]);
    let mut answers = Vec::new();
    for i in 0..N {
        let (c, t) = (customer(i), format!("CRASH-{i}"));
        let q = format!("?site={SITE}&customer={c}&transaction={t}");
        let (status, u) = store
            .post(
                &format!("/transaction{q}"),
                &json!({"transientRequest": false, "items": items}),
            )
            .await
            .unwrap();
        assert_eq!(status, 200);
        assert_eq!(u["applied"].as_array().unwrap().len(), 2, "{u}");
        let (status, a) = store
            .post(&format!("/transaction/commit{q}"), &json!({"coupons": []}))
            .await
            .unwrap();
        assert_eq!(status, 200);
        answers.push(a);
    }
    store.kill9();

    // Inspect the file the dead process left behind, before anything reopens it.
    let conn = rusqlite::Connection::open(store.db_path()).unwrap();
    let count = |sql: &str| -> i64 { conn.query_row(sql, [], |r| r.get(0)).unwrap() };
    assert_eq!(
        count("SELECT count(*) FROM transactions WHERE state = 'committed'"),
        N as i64
    );
    assert_eq!(
        count("SELECT count(*) FROM redemptions WHERE conflict = 0"),
        2 * N as i64
    );
    assert_eq!(
        count("SELECT count(*) FROM customer_coupons WHERE state = 'redeemed'"),
        2 * N as i64
    );
    // Per sale: one Convercus redeem, one Koupon redemption, one Koupon transaction post.
    assert_eq!(
        count("SELECT count(*) FROM outbox WHERE provider = 'convercus' AND operation = 'redeem'"),
        N as i64
    );
    assert_eq!(
        count("SELECT count(*) FROM outbox WHERE provider = 'koupon' AND operation = 'redemption'"),
        N as i64
    );
    assert_eq!(
        count(
            "SELECT count(*) FROM outbox WHERE provider = 'koupon' AND operation = 'transaction'"
        ),
        N as i64
    );
    assert_eq!(
        count("SELECT count(DISTINCT idempotency_key) FROM outbox"),
        count("SELECT count(*) FROM outbox")
    );
    let outbox_before = count("SELECT count(*) FROM outbox");
    drop(conn);

    // Restart; every commit repeated: the same answers, nothing new.
    store.launch().await.unwrap();
    for (i, first) in answers.iter().enumerate() {
        let q = format!(
            "?site={SITE}&customer={}&transaction=CRASH-{i}",
            customer(i)
        );
        let (status, again) = store
            .post(&format!("/transaction/commit{q}"), &json!({"coupons": []}))
            .await
            .unwrap();
        assert_eq!((status, &again), (200, first));
    }
    let conn = rusqlite::Connection::open(store.db_path()).unwrap();
    let after: i64 = conn
        .query_row("SELECT count(*) FROM outbox", [], |r| r.get(0))
        .unwrap();
    assert_eq!(after, outbox_before);
}
