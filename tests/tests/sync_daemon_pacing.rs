//! The sync daemon's request pacing against the simulator, end to end: the configured rate
//! per provider (`providers.<name>.max_requests_per_sec`) holds over a pull and outbox
//! deliveries together, a 429/503 with `Retry-After` pauses the provider's calls for at
//! least that long, and a pull survives a throttled read. Times are taken at the simulator
//! (`GET /__sim/requests`); the assertions are lower bounds or counts with margins.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use e2e::stack::{Daemon, Providers};
use e2e::{Store, StoreOptions, SITE};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const JANE: &str = "4000000000001";

/// Every call the simulator received for `provider`: (ms since the epoch, path).
async fn requests(providers: &Providers, provider: &str) -> Vec<(i64, String)> {
    providers
        .requests(provider)
        .await
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["atMs"].as_i64().unwrap(),
                r["path"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// The most calls in any one-second window starting at a call.
fn busiest_second(times: &[i64]) -> usize {
    let mut t: Vec<i64> = times.to_vec();
    t.sort_unstable();
    (0..t.len())
        .map(|i| t[i..].iter().take_while(|x| **x < t[i] + 1000).count())
        .max()
        .unwrap_or(0)
}

fn outbox_states(store: &Store, provider: &str) -> Vec<String> {
    let conn = rusqlite::Connection::open(store.db_path()).unwrap();
    let mut st = conn
        .prepare("SELECT state FROM outbox WHERE provider = ?1 ORDER BY id")
        .unwrap();
    let states = st
        .query_map([provider], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    states
}

async fn wait_delivered(store: &Store, daemon: &Daemon, provider: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let states = outbox_states(store, provider);
        if !states.is_empty() && states.iter().all(|s| s == "delivered") {
            return;
        }
        assert!(Instant::now() < deadline, "{states:?}\n{}", daemon.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A store with every simulated provider (pulled only on request) whose config gets
/// `extra` lines in the `[providers.<provider>]` section.
async fn store(providers: &Providers, provider: &str, extra: &str) -> Store {
    let section = format!("[providers.{provider}]\n");
    let toml = providers
        .config_toml("0 0 0 1 1 *")
        .replace(&section, &format!("{section}{extra}\n"));
    Store::start(StoreOptions {
        extra_toml: format!(
            "{toml}\n[outbox]\npoll_ms = 50\nbackoff_base_secs = 1\nbackoff_cap_secs = 2\nbreaker_probe_secs = 1\n"
        ),
        ..StoreOptions::default()
    })
    .await
    .unwrap()
}

/// Jane unclips and clips the Convercus coffee coupon again: two activations queued.
async fn two_activations(store: &Store) {
    let path = format!("/coupons/customer?site={SITE}&customer={JANE}");
    for body in [json!({"remove": ["CVX1"]}), json!({"add": ["CVX1"]})] {
        let (status, r) = store.post(&path, &body).await.unwrap();
        assert_eq!(status, 200, "{r}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pull_and_deliveries_together_never_exceed_the_configured_rate() {
    const RATE: usize = 20;
    const CUSTOMERS: usize = 40;
    let providers = Providers::start().unwrap();
    // The default data (Jane) and 40 more Convercus customers, each a few calls to pull.
    let mut seed: Value = reqwest::get(format!("http://{}/__sim/seed", providers.admin))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let cv = seed["convercus"].as_object_mut().unwrap();
    let mut cards = Vec::new();
    for i in 0..CUSTOMERS {
        let (card, id) = (
            format!("5000000000{i:03}"),
            format!("aaaaaaaa-0000-4000-8000-000000000{i:03}"),
        );
        cv["accounts"].as_array_mut().unwrap().push(json!({"id": id, "program": "Pgr-A", "status": "ACTIVE", "cardCode": card, "memberships": []}));
        cv["accountCoupons"].as_array_mut().unwrap().push(json!({"accountCouponId": format!("ACID-{i:03}"), "accountId": id,
            "couponId": "d1d1d1d1-0000-4000-8000-000000000001", "usageType": "DISCOUNT", "couponValue": 10}));
        cards.push(format!("\"{card}\""));
    }
    providers.seed(&seed).await.unwrap();
    let store = store(
        &providers,
        "convercus",
        &format!(
            "max_requests_per_sec = {RATE}\npull_concurrency = 8\ncustomers = [{}]",
            cards.join(",")
        ),
    )
    .await;
    two_activations(&store).await;
    let daemon = Daemon::start(&store.config_path, &store.dir.join("sync-daemon.log")).unwrap();
    store.sync_now("convercus").unwrap();
    daemon
        .wait_for_log("convercus pull done", 0, Duration::from_secs(60))
        .await
        .unwrap();
    wait_delivered(&store, &daemon, "convercus", Duration::from_secs(30)).await;
    let calls = requests(&providers, "convercus").await;
    assert!(
        calls.len() > 3 * CUSTOMERS,
        "the pull read every customer: {} calls",
        calls.len()
    );
    assert!(
        calls.iter().any(|(_, p)| p.ends_with("/activation")),
        "the deliveries went through the same limit"
    );
    let times: Vec<i64> = calls.iter().map(|(t, _)| *t).collect();
    let busiest = busiest_second(&times);
    // One request every 50 ms: 20 in any second, one more for arrival jitter, one of margin.
    assert!(
        busiest <= RATE + 2,
        "{busiest} calls in one second at {RATE}/s"
    );
    assert!(daemon.log().contains("convercus pull done"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_429_with_retry_after_delays_the_next_call_and_the_items_are_delivered_after() {
    let providers = Providers::start().unwrap();
    let store = store(&providers, "convercus", "").await;
    two_activations(&store).await;
    // The first call (the login) is throttled for 3 s; the outbox would retry after 1-2 s.
    providers
        .faults(
            "convercus",
            json!({"throttle_calls": 1, "retry_after_secs": 3}),
        )
        .await
        .unwrap();
    let daemon = Daemon::start(&store.config_path, &store.dir.join("sync-daemon.log")).unwrap();
    wait_delivered(&store, &daemon, "convercus", Duration::from_secs(30)).await;
    let calls = requests(&providers, "convercus").await;
    assert!(calls.len() >= 3, "{calls:?}");
    let gap = calls[1].0 - calls[0].0;
    assert!(
        gap >= 2900,
        "the call after the 429 came {gap} ms later, not after Retry-After 3 s"
    );
    assert!(daemon.log().contains("Retry-After"), "{}", daemon.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pull_throttled_with_an_http_date_waits_and_still_succeeds() {
    let providers = Providers::start().unwrap();
    let store = store(&providers, "coupontools", "").await;
    // The campaign list and then the first page of sessions are throttled (503 then 429),
    // each with an HTTP-date 2 s ahead.
    providers
        .faults(
            "coupontools",
            json!({"throttle_calls": 1, "throttle_status": 503, "retry_after_secs": 2, "retry_after_date": true}),
        )
        .await
        .unwrap();
    let daemon = Daemon::start(&store.config_path, &store.dir.join("sync-daemon.log")).unwrap();
    store.sync_now("coupontools").unwrap();
    // Once the first call was answered, throttle the next one too.
    let deadline = Instant::now() + Duration::from_secs(10);
    while requests(&providers, "coupontools").await.is_empty() {
        assert!(Instant::now() < deadline, "{}", daemon.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    providers
        .faults(
            "coupontools",
            json!({"throttle_calls": 1, "throttle_status": 429, "retry_after_secs": 2, "retry_after_date": true}),
        )
        .await
        .unwrap();
    daemon
        .wait_for_log("coupontools pull done", 0, Duration::from_secs(30))
        .await
        .unwrap();
    assert!(
        !daemon.log().contains("coupontools pull failed"),
        "{}",
        daemon.log()
    );
    let calls = requests(&providers, "coupontools").await;
    assert!(calls.len() >= 3, "{calls:?}");
    // An HTTP-date has whole seconds (the simulator rounds up): at least ~1.5 s each.
    for w in calls.windows(2).take(2) {
        let gap = w[1].0 - w[0].0;
        assert!(
            gap >= 1500,
            "a call {gap} ms after a throttled one: {calls:?}"
        );
    }
    // The sessions of the default seed reached the store.
    let conn = rusqlite::Connection::open(store.db_path()).unwrap();
    let n: i64 = conn
        .query_row(
            "SELECT count(*) FROM vouchers WHERE code = 'session-0001'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(n, 1);
}
