//! Promise 4: a single-use coupon of one customer, put on 32 different transactions by 32
//! lanes at once, is applied on exactly one; after that sale is cancelled another can have it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use e2e::{Store, StoreOptions, SITE};
use serde_json::{json, Value};

const JANE: &str = "4000000000001";

fn body(txn: &str) -> Value {
    json!({"site": SITE, "customer": JANE, "transaction": txn, "transientRequest": false,
           "items": [{"id": 1, "quantity": 2, "upc": 894773001193u64, "price": 12.99, "discountPrice": 12.99, "dept": 2}]})
}

fn got_bogo(answer: &Value) -> bool {
    answer["applied"]
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a["couponId"] == "BOGO1")
}

/// Holds listing BOGO1 in the store's database.
fn holds_of_bogo(store: &Store) -> i64 {
    let conn = rusqlite::Connection::open(store.db_path()).unwrap();
    conn.query_row(
        "SELECT count(*) FROM holds, json_each(holds.coupons) WHERE json_each.value = 'BOGO1'",
        [],
        |r| r.get(0),
    )
    .unwrap()
}

/// One round: 32 lanes, each on its own connection (opened and used before the start, so
/// no TLS handshake staggers them), send their update at the same moment. Returns the
/// transactions that got BOGO1.
async fn round(store: &std::sync::Arc<Store>, round: usize) -> Vec<String> {
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(32));
    let mut lanes = Vec::new();
    for lane in 0..32 {
        let store = store.clone();
        let barrier = barrier.clone();
        lanes.push(tokio::spawn(async move {
            let client = e2e::lane_client(&store.dir.join("tls/cert.pem")).unwrap();
            let warm = client.get(store.url("/healthz")).send().await.unwrap();
            assert_eq!(warm.status(), 200);
            let txn = format!("RACE-{round}-{lane}");
            let url = store.url(&format!(
                "/transaction?site={SITE}&customer={JANE}&transaction={txn}"
            ));
            barrier.wait().await;
            let r = client
                .post(url)
                .basic_auth(e2e::USER, Some(e2e::PASSWORD))
                .json(&body(&txn))
                .send()
                .await
                .unwrap();
            let (status, answer) = e2e::json_of(r).await.unwrap();
            assert_eq!(status, 200, "{answer}");
            (txn, got_bogo(&answer))
        }));
    }
    let mut winners = Vec::new();
    for lane in lanes {
        let (txn, won) = lane.await.unwrap();
        if won {
            winners.push(txn);
        }
    }
    winners
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thirty_two_lanes_one_single_use_coupon() {
    let store = std::sync::Arc::new(Store::start(StoreOptions::default()).await.unwrap());
    // Several rounds, the winner's sale cancelled between them: each time exactly one.
    for r in 0..5 {
        let winners = round(&store, r).await;
        assert_eq!(
            winners.len(),
            1,
            "round {r}: exactly one lane gets the single-use coupon: {winners:?}"
        );
        assert_eq!(holds_of_bogo(&store), 1, "round {r}: one hold lists it");
        let (_, m) = store
            .get(&format!("/coupons/customer?site={SITE}&customer={JANE}"))
            .await
            .unwrap();
        assert!(
            m["pending"].as_array().unwrap().contains(&json!("BOGO1")),
            "{m}"
        );
        // Another lane retrying still cannot have it …
        let other = format!("OTHER-{r}");
        let (_, again) = store
            .post(
                &format!("/transaction?site={SITE}&customer={JANE}&transaction={other}"),
                &body(&other),
            )
            .await
            .unwrap();
        assert!(!got_bogo(&again));
        // … until the winning sale is cancelled.
        let winner = &winners[0];
        let (status, _) = store
            .get(&format!(
                "/transaction/cancel?site={SITE}&customer={JANE}&transaction={winner}"
            ))
            .await
            .unwrap();
        assert_eq!(status, 200);
        let (_, after) = store
            .post(
                &format!("/transaction?site={SITE}&customer={JANE}&transaction={other}"),
                &body(&other),
            )
            .await
            .unwrap();
        assert!(
            got_bogo(&after),
            "released by the cancel, another sale can use it"
        );
        // That sale is cancelled too: the next round starts with the coupon free.
        let (status, _) = store
            .get(&format!(
                "/transaction/cancel?site={SITE}&customer={JANE}&transaction={other}"
            ))
            .await
            .unwrap();
        assert_eq!(status, 200);
        assert_eq!(holds_of_bogo(&store), 0);
    }
}
