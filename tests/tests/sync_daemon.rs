//! The sync daemon end to end: the real `edge-server`, `sync-daemon` and `provider-sim`
//! binaries as processes, lanes over HTTPS, faults switched over the simulator's admin API,
//! and the simulator's ledger as the proof of what reached the providers.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use e2e::stack::{Daemon, Providers};
use e2e::{Store, StoreOptions, SITE};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Customers with a Convercus account and a multi-use coupon (so a redemption applied twice
/// would show), Coupontools sessions and Koupon barcodes for the vouchers.
const CUSTOMERS: usize = 40;
const COUPON: &str = "d1d1d1d1-0000-4000-8000-000000000001";

fn card(i: usize) -> String {
    format!("5000000000{i:03}")
}
fn account(i: usize) -> String {
    format!("aaaaaaaa-0000-4000-8000-000000000{i:03}")
}
fn account_coupon(i: usize) -> String {
    format!("ACID-{i:03}")
}
fn session(i: usize) -> String {
    format!("sess{i:04}")
}
fn barcode(i: usize) -> String {
    format!("kbar-{i:04}")
}

/// The simulator's data for `txns` transactions.
fn sim_seed(txns: usize) -> Value {
    let accounts: Vec<Value> = (0..CUSTOMERS)
        .map(|i| json!({"id": account(i), "program": "Pgr-A", "status": "ACTIVE", "cardCode": card(i), "memberships": []}))
        .collect();
    let coupons: Vec<Value> = (0..CUSTOMERS)
        .map(|i| json!({"accountCouponId": account_coupon(i), "accountId": account(i), "couponId": COUPON,
                        "usageType": "DISCOUNT", "externalReference": "EXT-TEN", "couponValue": 10,
                        "maxRedeemCount": 1000, "validFrom": "2026-01-01T00:00:00", "validTo": "2099-12-31T23:59:00",
                        "i18nFields": {"en": {"title": "10% off"}}}))
        .collect();
    let sessions: Vec<Value> = (0..txns)
        .map(|i| json!({"session": session(i), "campaign": "cam_100001", "status": {"value": "1.00", "claimed": "1"}}))
        .collect();
    let assets: Vec<Value> = (0..txns)
        .map(|i| json!({"discountAsset": barcode(i), "type": "barcode", "remaining": 1}))
        .collect();
    json!({
        "convercus": {"accounts": accounts, "users": [], "accountCoupons": coupons},
        "coupontools": {"campaigns": [{"ID": "cam_100001", "title": "One off", "active": true}], "sessions": sessions},
        "koupon": {"assets": assets, "offers": []},
    })
}

/// The store's snapshot for the same data: the Convercus coupon clipped for every customer
/// (with its accountCouponId), a Coupontools voucher per even transaction and a Koupon
/// barcode voucher per odd one.
fn store_snapshot(txns: usize) -> Value {
    let customers: Vec<Value> = (0..CUSTOMERS)
        .map(|i| json!({"id": card(i), "provider": "convercus", "providerRef": account(i),
                        "coupons": [{"offerId": "CVTEN", "state": "clipped", "providerRef": account_coupon(i)}]}))
        .collect();
    let vouchers: Vec<Value> = (0..txns)
        .map(|i| {
            if i.is_multiple_of(2) {
                json!({"code": session(i), "provider": "coupontools", "providerRef": session(i), "valueCents": 100})
            } else {
                json!({"code": barcode(i), "provider": "koupon", "providerRef": barcode(i), "valueCents": 100})
            }
        })
        .collect();
    json!({
        "offers": [{"id": "CVTEN", "provider": "convercus", "providerRef": COUPON, "shortDescription": "10% off",
                    "startDate": "2026-01-01", "endDate": "2099-12-31", "targeted": true, "externalId": "EXT-TEN",
                    "perCustomerLimit": null,
                    "rule": {"mechanic": {"type": "percentOff", "basisPoints": 1000}}}],
        "customers": customers,
        "vouchers": vouchers,
    })
}

struct Stack {
    store: Store,
    providers: Providers,
    daemon: Option<Daemon>,
}

/// Simulator seeded, store started with the snapshot imported, providers configured in the
/// store's config (pulls yearly unless `schedule` says otherwise); the daemon not started.
async fn stack(txns: usize, schedule: &str, extra: &str) -> Stack {
    let providers = Providers::start().unwrap();
    providers.seed(&sim_seed(txns)).await.unwrap();
    let store = Store::start(StoreOptions {
        extra_toml: format!(
            "{}\n[outbox]\nconcurrency = 4\nlease_secs = 10\npoll_ms = 50\nbackoff_base_secs = 1\nbackoff_cap_secs = 2\nbreaker_threshold = 3\nbreaker_probe_secs = 1\n{extra}",
            providers.config_toml(schedule)
        ),
        ..StoreOptions::default()
    })
    .await
    .unwrap();
    let snap = store.dir.join("stack.json");
    std::fs::write(&snap, store_snapshot(txns).to_string()).unwrap();
    store.import(&snap).unwrap();
    Stack {
        store,
        providers,
        daemon: None,
    }
}

impl Stack {
    fn start_daemon(&mut self) {
        let d = Daemon::start(
            &self.store.config_path,
            &self.store.dir.join("sync-daemon.log"),
        )
        .unwrap();
        self.daemon = Some(d);
    }

    fn daemon(&mut self) -> &mut Daemon {
        self.daemon.as_mut().unwrap()
    }

    fn outbox_counts(&self) -> BTreeMap<String, i64> {
        let conn = rusqlite::Connection::open(self.store.db_path()).unwrap();
        let mut st = conn
            .prepare("SELECT state, count(*) FROM outbox GROUP BY state")
            .unwrap();
        st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    /// Waits until nothing is pending or in flight.
    async fn drained(&mut self, timeout: Duration) -> BTreeMap<String, i64> {
        let deadline = Instant::now() + timeout;
        loop {
            let c = self.outbox_counts();
            if c.get("pending").copied().unwrap_or(0) == 0
                && c.get("inflight").copied().unwrap_or(0) == 0
            {
                return c;
            }
            if Instant::now() > deadline {
                let log = self.daemon.as_ref().map(Daemon::log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                panic!(
                    "outbox not drained after {timeout:?}: {c:?}\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// One lane sale: total (non-transient update holding the Convercus coupon), the voucher
/// locked (Coupontools) and validated, then commit. Returns the latencies.
async fn sale(store: &Store, i: usize, lane: usize) -> Vec<Duration> {
    let customer = card(i % CUSTOMERS);
    let txn = format!("L{lane}-T{i:04}");
    let q = format!("?site={SITE}&customer={customer}&transaction={txn}");
    let items = json!([{"id": 1, "quantity": 1, "upc": 12000001000u64, "price": 10.00, "discountPrice": 10.00, "dept": 1}]);
    let mut took = Vec::new();
    let mut call = |d: Duration| took.push(d);
    let t = Instant::now();
    let (s, r) = store
        .post(
            &format!("/transaction{q}"),
            &json!({"site": SITE, "customer": customer, "transaction": txn, "transientRequest": false,
                    "items": items, "subTotal": 10.0, "taxTotal": 0.0, "grossTotal": 10.0}),
        )
        .await
        .unwrap();
    call(t.elapsed());
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["applied"][0]["couponId"], "CVTEN", "{r}");
    let code = if i.is_multiple_of(2) {
        session(i)
    } else {
        barcode(i)
    };
    let vbody = json!({"site": SITE, "transaction": txn, "moneySpent": 10.0});
    if i.is_multiple_of(2) {
        let t = Instant::now();
        let (s, r) = store
            .post(&format!("/vouchers/{code}/lock"), &vbody)
            .await
            .unwrap();
        call(t.elapsed());
        assert_eq!(s, 200, "{r}");
    }
    let t = Instant::now();
    let (s, r) = store
        .post(&format!("/vouchers/{code}/validate"), &vbody)
        .await
        .unwrap();
    call(t.elapsed());
    assert_eq!(s, 200, "{r}");
    let t = Instant::now();
    let (s, r) = store
        .post(
            &format!("/transaction/commit{q}"),
            &json!({"site": SITE, "customer": customer, "transaction": txn, "coupons": ["CVTEN"]}),
        )
        .await
        .unwrap();
    call(t.elapsed());
    assert_eq!(s, 200, "{r}");
    assert!(r.get("errors").is_none(), "{r}");
    took
}

/// `lanes` lanes run `txns` sales between them.
async fn run_lanes(store: &Store, lanes: usize, txns: usize) -> Vec<Duration> {
    let store = std::sync::Arc::new(store);
    let mut all = Vec::new();
    // Lanes take transactions round robin; each lane is sequential like a real register.
    let futs = (0..lanes).map(|lane| {
        let store = std::sync::Arc::clone(&store);
        async move {
            let mut took = Vec::new();
            for i in (lane..txns).step_by(lanes) {
                took.extend(sale(&store, i, lane).await);
            }
            took
        }
    });
    for t in futures_util::future::join_all(futs).await {
        all.extend(t);
    }
    all
}

fn p(durations: &mut [Duration], q: f64) -> Duration {
    durations.sort();
    durations[((durations.len() as f64 - 1.0) * q) as usize]
}

/// Checks the ledger holds exactly the expected writes for `txns` sales, each applied once,
/// in per-key order.
async fn assert_exactly_once(providers: &Providers, txns: usize) {
    let ledger = providers.ledger().await.unwrap();
    let applied: Vec<&Value> = ledger.iter().filter(|e| e["applied"] == true).collect();
    let count = |prov: &str, op: &str, key: &str| {
        applied
            .iter()
            .filter(|e| e["provider"] == prov && e["operation"] == op && e["key"] == key)
            .count()
    };
    for c in 0..CUSTOMERS {
        let expected = (0..txns).filter(|i| i % CUSTOMERS == c).count();
        assert_eq!(
            count("convercus", "redemption", &account_coupon(c)),
            expected,
            "Convercus redemptions of customer {c}"
        );
    }
    for i in 0..txns {
        if i.is_multiple_of(2) {
            assert_eq!(
                count("coupontools", "lock", &session(i)),
                1,
                "lock of {}",
                session(i)
            );
            assert_eq!(
                count("coupontools", "validate", &session(i)),
                1,
                "validate of {}",
                session(i)
            );
            let seq = |op: &str| {
                applied
                    .iter()
                    .find(|e| e["operation"] == op && e["key"] == session(i).as_str())
                    .and_then(|e| e["seq"].as_u64())
                    .unwrap()
            };
            assert!(
                seq("lock") < seq("validate"),
                "lock before validate for {}",
                session(i)
            );
        } else {
            assert_eq!(
                count("koupon", "redeem", &barcode(i)),
                1,
                "Koupon redemption of {}",
                barcode(i)
            );
        }
    }
    let total_expected = txns + txns.div_ceil(2) * 2 + txns / 2;
    assert_eq!(applied.len(), total_expected, "no other write was applied");
    // The state agrees: every Coupontools session used once, every barcode used up.
    let state = providers.state().await.unwrap();
    let redeemed: i64 = state["convercus"]["accountCoupons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["redeemCount"].as_i64().unwrap_or(0))
        .sum();
    assert_eq!(redeemed, txns as i64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wan_outage_lanes_unaffected_then_everything_delivered_once_in_order() {
    const TXNS: usize = 300;
    let mut st = stack(TXNS, "0 0 0 1 1 *", "").await;
    st.providers.all_down(true).await.unwrap();
    st.start_daemon();
    let mut took = run_lanes(&st.store, 8, TXNS).await;
    let (p50, p99) = (p(&mut took, 0.5), p(&mut took, 0.99));
    eprintln!(
        "lane calls during the outage: {} calls, p50 {p50:?}, p99 {p99:?}",
        took.len()
    );
    // Everything waits in the outbox; nothing was lost or refused.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let counts = st.outbox_counts();
    assert_eq!(counts.get("dead"), None, "{counts:?}");
    assert!(
        counts.get("pending").copied().unwrap_or(0) > 0,
        "{counts:?}"
    );
    assert!(
        st.providers.ledger().await.unwrap().is_empty(),
        "nothing reached a provider"
    );
    // The breaker is open: items are not burning attempts while the WAN is down.
    let conn = rusqlite::Connection::open(st.store.db_path()).unwrap();
    let max_attempts: i64 = conn
        .query_row("SELECT max(attempts) FROM outbox", [], |r| r.get(0))
        .unwrap();
    assert!(max_attempts <= 3, "attempts while down: {max_attempts}");
    // The WAN comes back: everything is delivered.
    st.providers.all_down(false).await.unwrap();
    let counts = st.drained(Duration::from_secs(120)).await;
    assert_eq!(counts.get("dead"), None, "{counts:?}");
    assert_exactly_once(&st.providers, TXNS).await;
    // edge-ctl agrees.
    let out = std::process::Command::new(e2e::binary("edge-ctl").unwrap())
        .arg("--config")
        .arg(&st.store.config_path)
        .args(["--json", "status"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    for p in status["providers"].as_array().unwrap() {
        assert_eq!(p["queue"].get("pending"), None, "{p}");
        assert!(p["queue"]["delivered"].as_i64().unwrap() > 0, "{p}");
    }
    assert!(st.daemon().terminate(Duration::from_secs(15)).unwrap());
}

/// Fills the outbox with `txns` sales while the providers are down.
async fn sales_while_down(st: &Stack, txns: usize) {
    st.providers.all_down(true).await.unwrap();
    run_lanes(&st.store, 4, txns).await;
    st.providers.all_down(false).await.unwrap();
}

fn edge_ctl(st: &Stack, args: &[&str]) -> (bool, Value) {
    let out = std::process::Command::new(e2e::binary("edge-ctl").unwrap())
        .arg("--config")
        .arg(&st.store.config_path)
        .arg("--json")
        .args(args)
        .output()
        .unwrap();
    let v = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.success(), v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill9_of_the_daemon_during_a_drain_loses_nothing_and_applies_nothing_twice() {
    const TXNS: usize = 80;
    let mut st = stack(TXNS, "0 0 0 1 1 *", "").await;
    // A kill during a Koupon redeem call leaves its outcome unknown, and Koupon has no
    // idempotency key: by default (koupon.md §7, any exceptionCode is not redeemed) the
    // retry's ALREADY_REDEEMED dead-letters the item for store IT. This test opts in to
    // taking it as our earlier attempt, to check that nothing is applied twice.
    let config = std::fs::read_to_string(&st.store.config_path).unwrap();
    std::fs::write(
        &st.store.config_path,
        config.replace(
            "[providers.koupon]\n",
            "[providers.koupon]\nretry_redeemed_code = \"ALREADY_REDEEMED\"\n",
        ),
    )
    .unwrap();
    sales_while_down(&st, TXNS).await;
    // Slow providers and unreadable answers now and then keep items in flight at the kills.
    for p in ["convercus", "coupontools", "koupon"] {
        st.providers
            .faults(p, json!({"slow_ms": 15}))
            .await
            .unwrap();
    }
    st.start_daemon();
    let mut rng_state = 0x2545_f491_4f6c_dd1du64;
    for round in 0..10 {
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        let wait = 150 + rng_state % 450;
        tokio::time::sleep(Duration::from_millis(wait)).await;
        st.daemon().kill9();
        eprintln!("kill -9 #{round} after {wait} ms: {:?}", st.outbox_counts());
        st.daemon().restart().unwrap();
    }
    let counts = st.drained(Duration::from_secs(120)).await;
    assert_eq!(counts.get("dead"), None, "{counts:?}");
    assert_exactly_once(&st.providers, TXNS).await;
    assert!(
        st.daemon()
            .log()
            .contains("left in flight by a stopped worker"),
        "some kill hit items in flight"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn token_expiry_in_the_middle_of_a_drain_is_refreshed_and_no_item_fails() {
    const TXNS: usize = 60;
    let mut st = stack(TXNS, "0 0 0 1 1 *", "").await;
    sales_while_down(&st, TXNS).await;
    st.providers
        .faults("convercus", json!({"slow_ms": 20}))
        .await
        .unwrap();
    st.start_daemon();
    // Wait until the drain is under way, then revoke every token.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let done = st
            .providers
            .ledger()
            .await
            .unwrap()
            .iter()
            .filter(|e| e["provider"] == "convercus" && e["applied"] == true)
            .count();
        if done >= 5 {
            break;
        }
        assert!(Instant::now() < deadline, "the drain did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    st.providers
        .faults("convercus", json!({"expire_tokens": true}))
        .await
        .unwrap();
    let counts = st.drained(Duration::from_secs(60)).await;
    assert_eq!(counts.get("dead"), None, "{counts:?}");
    assert_exactly_once(&st.providers, TXNS).await;
    let log = st.daemon().log();
    assert!(log.contains("answered 401; logging in again"), "{log}");
    assert!(
        log.matches("logged in to Convercus").count() >= 2,
        "a second login: {log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_poison_item_is_dead_lettered_and_the_rest_delivered_without_waiting() {
    const TXNS: usize = 20;
    let mut st = stack(TXNS, "0 0 0 1 1 *", "").await;
    sales_while_down(&st, TXNS).await;
    // Coupontools refuses everything about session 0 permanently.
    st.providers
        .faults("coupontools", json!({"reject": [session(0)]}))
        .await
        .unwrap();
    st.start_daemon();
    // Everything else is delivered: only the poison lock and the validate queued behind it
    // on the same session remain, both dead. A dead lock does not hold the validation back
    // (coupontools.md §6: deliver it anyway, the sale happened); Coupontools refuses it too.
    let deadline = Instant::now() + Duration::from_secs(60);
    let counts = loop {
        let c = st.outbox_counts();
        if c.get("dead") == Some(&2) && !c.contains_key("pending") && !c.contains_key("inflight") {
            break c;
        }
        assert!(Instant::now() < deadline, "{c:?}\n{}", st.daemon().log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let total: i64 = counts.values().sum();
    assert_eq!(counts.get("delivered"), Some(&(total - 2)), "{counts:?}");
    // Store IT sees it, with the reason.
    let (ok, dead) = edge_ctl(&st, &["outbox", "list", "--state", "dead"]);
    assert!(ok);
    let of = |operation: &str| {
        dead["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["operation"] == operation)
            .unwrap_or_else(|| panic!("no dead {operation}: {dead}"))
            .clone()
    };
    let item = &of("lock");
    let validate = of("validate");
    assert_eq!(validate["payload"]["code"], session(0));
    assert_eq!(item["payload"]["code"], session(0));
    assert!(
        item["last_error"].as_str().unwrap().contains("513"),
        "{item}"
    );
    let (_, status) = edge_ctl(&st, &["status"]);
    let ct = status["providers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["provider"] == "coupontools")
        .unwrap()
        .clone();
    assert_eq!(ct["queue"]["dead"], 2, "{ct}");
    // The log names the item but never the full voucher code.
    let log = st.daemon().log();
    assert!(log.contains("dead-lettered for store IT"), "{log}");
    assert!(!log.contains(&session(0)), "{log}");
    // The provider is fixed; store IT retries both: the lock goes out, then the validation.
    st.providers
        .faults("coupontools", json!({"reject": []}))
        .await
        .unwrap();
    let id = item["id"].as_i64().unwrap().to_string();
    let (ok, _) = edge_ctl(&st, &["outbox", "retry", &id]);
    assert!(ok);
    let validate_id = validate["id"].as_i64().unwrap().to_string();
    let (ok, _) = edge_ctl(&st, &["outbox", "retry", &validate_id]);
    assert!(ok);
    let counts = st.drained(Duration::from_secs(30)).await;
    assert_eq!(counts.get("dead"), None, "{counts:?}");
    assert_exactly_once(&st.providers, TXNS).await;
    // Retrying an item that is not dead says so.
    let (ok, v) = edge_ctl(&st, &["outbox", "retry", &id]);
    assert!(!ok);
    assert_eq!(v["ok"], false);
}

/// Asks for a pull of `provider` now and waits until the daemon says it is done.
async fn pull_now(daemon: &Daemon, store: &Store, provider: &str) {
    let from = daemon.log().len();
    store.sync_now(provider).unwrap();
    daemon
        .wait_for_log(
            &format!("{provider} pull done"),
            from,
            Duration::from_secs(20),
        )
        .await
        .unwrap();
}

/// The simulator's provider configuration with Convercus on OAuth (client credentials
/// against the simulator's Keycloak token URL) instead of the legacy login.
fn oauth_toml(providers: &Providers) -> String {
    let cv = &providers.convercus_url;
    providers.config_toml("0 0 0 1 1 *").replace(
        "auth = \"legacy\"",
        &format!("auth = \"oauth\"\ntoken_url = \"{cv}/realms/pgr-a/protocol/openid-connect/token\"\nclient_secret = \"demo-client-secret\""),
    )
}

/// A store with every simulated provider, pulled only when a test asks (`edge-ctl sync
/// now`), and an outbox that retries within a second or two.
async fn store_pulling_by_hand(providers: &Providers) -> Store {
    Store::start(StoreOptions {
        extra_toml: format!(
            "{}\n[outbox]\npoll_ms = 50\nbackoff_base_secs = 1\nbackoff_cap_secs = 2\n",
            providers.config_toml("0 0 0 1 1 *")
        ),
        ..StoreOptions::default()
    })
    .await
    .unwrap()
}

fn rewrite_schedule(config: &std::path::Path, provider: &str, schedule: &str) {
    let text = std::fs::read_to_string(config).unwrap();
    let mut out = String::new();
    let mut in_section = false;
    for line in text.lines() {
        if line.starts_with('[') {
            in_section = line.trim() == format!("[providers.{provider}]");
        }
        if in_section && line.starts_with("schedule") {
            out.push_str(&format!("schedule = \"{schedule}\"\n"));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    std::fs::write(config, out).unwrap();
}

fn last_success(st: &Stack, provider: &str) -> Option<i64> {
    let conn = rusqlite::Connection::open(st.store.db_path()).unwrap();
    conn.query_row(
        "SELECT last_success_at FROM sync_state WHERE provider = ?1",
        [provider],
        |r| r.get(0),
    )
    .ok()
    .flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_schedule_change_applies_without_restart_and_a_broken_file_keeps_the_last_good_config() {
    let mut st = stack(4, "0 0 0 1 1 *", "").await;
    st.start_daemon();
    st.daemon()
        .wait_for_log("watching", 0, Duration::from_secs(10))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        last_success(&st, "coupontools"),
        None,
        "yearly: no pull yet"
    );
    // Every second from now on.
    rewrite_schedule(&st.store.config_path, "coupontools", "* * * * * *");
    st.daemon()
        .wait_for_log(
            "configuration reloaded: providers.coupontools",
            0,
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while last_success(&st, "coupontools").is_none() {
        assert!(Instant::now() < deadline, "{}", st.daemon().log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The pull brought the campaign's claimed sessions in as vouchers.
    let (status, v) = st
        .store
        .get(&format!("/vouchers/{}?site={SITE}", session(3)))
        .await
        .unwrap();
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["value"].as_f64(), Some(1.0));
    // A broken file: refused, logged, and the last good config (pulls every second) stays.
    let mark = st.daemon().log().len();
    let good = std::fs::read_to_string(&st.store.config_path).unwrap();
    std::fs::write(
        &st.store.config_path,
        format!("{good}\n[outbox]\nconcurrency = \"many\"\n"),
    )
    .unwrap();
    st.daemon()
        .wait_for_log(
            "keeping the last good configuration",
            mark,
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    let before = last_success(&st, "coupontools").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while last_success(&st, "coupontools").unwrap() <= before {
        assert!(
            Instant::now() < deadline,
            "pulls stopped: {}",
            st.daemon().log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(st.daemon().is_running());
    assert!(st.daemon().terminate(Duration::from_secs(15)).unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pull_brings_customers_and_coupons_but_never_undoes_an_undelivered_redemption() {
    // The default simulator seed and the sample store: Jane (4000000000001) has the
    // Convercus coffee coupon CVX1 (couponId c0c0…01) and a REWARD coupon.
    let providers = Providers::start().unwrap();
    let mut store = store_pulling_by_hand(&providers).await;
    let jane = "4000000000001";
    let coffee = "QUNDT1VOVENPVVBPTi0wMDAxLWNvZmZlZS0xNS1wZXJjZW50";
    // The redemption will be refused upstream, so it stays undelivered (dead-lettered).
    providers
        .faults("convercus", json!({"reject": [coffee]}))
        .await
        .unwrap();
    let q = format!("?site={SITE}&customer={jane}&transaction=P1");
    let (s, r) = store
        .post(
            &format!("/transaction/commit{q}"),
            &json!({"site": SITE, "customer": jane, "transaction": "P1", "coupons": ["CVX1"]}),
        )
        .await
        .unwrap();
    assert_eq!(s, 200, "{r}");
    let mut daemon = Daemon::start(&store.config_path, &store.dir.join("sync-daemon.log")).unwrap();
    let st_dir = store.dir.clone();
    let ctl = |args: &[&str]| {
        std::process::Command::new(e2e::binary("edge-ctl").unwrap())
            .arg("--config")
            .arg(st_dir.join("edge-coupon.toml"))
            .args(args)
            .output()
            .unwrap()
    };
    let out = ctl(&["sync", "now", "convercus"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    daemon
        .wait_for_log("convercus pull done", 0, Duration::from_secs(20))
        .await
        .unwrap();
    let conn = rusqlite::Connection::open(store.db_path()).unwrap();
    // Demographics came from the Convercus user.
    let (first, email): (String, String) = conn
        .query_row(
            "SELECT first_name, email FROM customers WHERE id = ?1",
            [jane],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(
        (first.as_str(), email.as_str()),
        ("Jane", "jane@example.com")
    );
    // Upstream still says redeemCount 0 (clipped); the store redeemed it and has not
    // delivered that: it stays redeemed.
    let state: String = conn
        .query_row(
            "SELECT state FROM customer_coupons WHERE customer_id = ?1 AND offer_id = 'CVX1'",
            [jane],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(state, "redeemed");
    // The REWARD coupon arrived as an offer without a rule: listed, not applied.
    let (enabled, provider_ref): (bool, String) = conn
        .query_row(
            "SELECT o.enabled, c.provider_ref FROM customer_coupons c JOIN offers o ON o.id = c.offer_id \
             WHERE c.customer_id = ?1 AND o.provider_ref = 'c0c0c0c0-0000-4000-8000-000000000002'",
            [jane],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert!(!enabled);
    assert_eq!(provider_ref, "QUNDT1VOVENPVVBPTi0wMDAy");
    let out = ctl(&["--json", "status"]);
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    let cv = status["providers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["provider"] == "convercus")
        .unwrap()
        .clone();
    assert!(cv["last_success_at"].as_i64().is_some(), "{cv}");
    assert_eq!(cv["queue"]["dead"], 1, "{cv}");
    // The imported offers keep the rules the store was given: a provider default (percent
    // off the whole basket for a Convercus DISCOUNT) never replaces a written rule.
    let rule: String = conn
        .query_row("SELECT rule FROM offers WHERE id = 'CVX1'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert!(rule.contains("\"depts\":[7]"), "{rule}");
    let out = ctl(&["sync", "now", "koupon"]);
    assert!(out.status.success());
    daemon
        .wait_for_log("koupon pull done", 0, Duration::from_secs(20))
        .await
        .unwrap();
    let (enabled, rule): (bool, String) = conn
        .query_row(
            "SELECT enabled, rule FROM offers WHERE id = 'KPN1'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert!(enabled, "the Koupon pull kept the imported KPN1 usable");
    assert!(rule.contains("amountOff"), "{rule}");
    // The refusal is written back: the store's redemption record is flagged for store IT.
    let conflict: i64 = conn
        .query_row(
            "SELECT conflict FROM redemptions WHERE txn_id = 'P1' AND offer_id = 'CVX1'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(conflict, 1);
    daemon.kill9();
    store.kill9();
}

/// One account Convercus refuses (here `400 ACCOUNT_LOCKED`) is skipped and logged; the
/// pull goes on for every other customer (before, it stopped the whole pull, every run).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_account_convercus_refuses_does_not_stop_the_pull_for_the_others() {
    let providers = Providers::start().unwrap();
    providers
        .faults("convercus", json!({"reject": ["0000LOCKED"]}))
        .await
        .unwrap();
    let config = providers.config_toml("0 0 0 1 1 *").replace(
        "[providers.convercus]",
        "[providers.convercus]\ncustomers = [\"0000LOCKED\", \"A1B2C3D4E5\"]",
    );
    let store = Store::start(StoreOptions {
        extra_toml: config,
        ..StoreOptions::default()
    })
    .await
    .unwrap();
    let mut daemon = Daemon::start(&store.config_path, &store.dir.join("sync-daemon.log")).unwrap();
    pull_now(&daemon, &store, "convercus").await;
    let log = daemon.log();
    assert!(log.contains("customer …CKED skipped in this pull"), "{log}");
    // The sample data's Convercus customers and the two configured ones: 5 in all.
    assert!(log.contains("1 of 5 customers skipped"), "{log}");
    assert!(
        !log.contains("0000LOCKED"),
        "card numbers stay out of the log"
    );
    let conn = rusqlite::Connection::open(store.db_path()).unwrap();
    let jane = shared::repo::customer(&conn, "A1B2C3D4E5")
        .unwrap()
        .unwrap();
    assert_eq!(jane.first_name.as_deref(), Some("Jane"));
    daemon.kill9();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn oauth_login_and_an_account_found_by_its_app_code_from_the_import_list() {
    let providers = Providers::start().unwrap();
    let config = oauth_toml(&providers)
        .replace(
            "[providers.convercus]",
            "[providers.convercus]\ncustomers = [\"A1B2C3D4E5\"]",
        )
        .replace("username = \"edge\"", "username = \"\"");
    let store = Store::start(StoreOptions {
        extra_toml: config,
        ..StoreOptions::default()
    })
    .await
    .unwrap();
    let mut daemon = Daemon::start(&store.config_path, &store.dir.join("sync-daemon.log")).unwrap();
    pull_now(&daemon, &store, "convercus").await;
    let conn = rusqlite::Connection::open(store.db_path()).unwrap();
    let (first, account): (String, String) = conn
        .query_row(
            "SELECT first_name, provider_ref FROM customers WHERE id = 'A1B2C3D4E5'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(first, "Jane");
    assert_eq!(account, "9f1c2e4a-0000-4000-8000-000000000001");
    // The coffee coupon arrived under the id the sample data gave it (same couponId).
    let state: String = conn
        .query_row(
            "SELECT state FROM customer_coupons WHERE customer_id = 'A1B2C3D4E5' AND offer_id = 'CVX1'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(state, "clipped");
    // The lane sees it for this customer.
    let (s, m) = store
        .get(&format!(
            "/coupons/customer?site={SITE}&customer=A1B2C3D4E5"
        ))
        .await
        .unwrap();
    assert_eq!(s, 200);
    assert!(
        m["clipped"].as_array().unwrap().contains(&json!("CVX1")),
        "{m}"
    );
    assert!(daemon.log().contains("logged in to Convercus"));
    daemon.kill9();
}

/// A sale's Koupon coupons go to Koupon in ONE redeem call on the customer's loyalty
/// account (discountAsset = loyalty id, couponCode = the offer's code): what Koupon
/// records is delivered, an entry it refuses is dead-lettered on its own for store IT.
#[tokio::test]
async fn koupon_coupons_of_a_sale_are_redeemed_on_the_loyalty_account_and_a_refusal_split_off() {
    const JANE: &str = "4000000000001";
    const LOYALTY: &str = "LOY-4000000000001";
    let providers = Providers::start().unwrap();
    // KPN1 can still be redeemed on Jane's account, KPN2 was used up elsewhere.
    providers
        .seed(&json!({"koupon": {"assets": [
            {"discountAsset": LOYALTY, "type": "loyalty", "coupons": {"KPN1": 1, "KPN2": 0}}],
            "offers": []}}))
        .await
        .unwrap();
    let store = store_pulling_by_hand(&providers).await;
    let snap = store.dir.join("kpn2.json");
    std::fs::write(
        &snap,
        json!({
            "offers": [{"id": "KPN2", "provider": "koupon", "providerRef": "asset-kpn2", "externalId": "KPN2",
                        "shortDescription": "$0.50 off jam", "startDate": "2026-01-01", "endDate": "2099-12-31",
                        "rule": {"mechanic": {"type": "amountOff", "cents": 50}, "requirement": {"upcs": ["0038000099999"]}}}],
            "customers": [{"id": JANE, "loyaltyId": LOYALTY, "coupons": [{"offerId": "KPN2", "state": "clipped"}]}],
        })
        .to_string(),
    )
    .unwrap();
    store.import(&snap).unwrap();
    let q = format!("?site={SITE}&customer={JANE}&transaction=KS1");
    let items = json!([
        {"id": 1, "quantity": 1, "upc": 38000012345u64, "price": 4.49, "discountPrice": 4.49, "dept": 4},
        {"id": 2, "quantity": 1, "upc": 38000099999u64, "price": 3.00, "discountPrice": 3.00, "dept": 4}]);
    let (status, r) = store
        .post(
            &format!("/transaction{q}"),
            &json!({"transientRequest": false, "items": items, "subTotal": 7.49, "grossTotal": 7.49}),
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{r}");
    let ids: Vec<&str> = r["applied"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["couponId"].as_str())
        .collect();
    assert!(ids.contains(&"KPN1") && ids.contains(&"KPN2"), "{r}");
    let (status, _) = store
        .post(&format!("/transaction/commit{q}"), &json!({"coupons": []}))
        .await
        .unwrap();
    assert_eq!(status, 200);

    let mut daemon = Daemon::start(&store.config_path, &store.dir.join("sync-daemon.log")).unwrap();
    let conn = rusqlite::Connection::open(store.db_path()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let states = loop {
        let states: Vec<(String, String, String)> = conn
            .prepare("SELECT operation, idempotency_key, state FROM outbox WHERE provider = 'koupon' ORDER BY id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        if states
            .iter()
            .all(|(_, _, s)| s == "delivered" || s == "dead")
        {
            break states;
        }
        assert!(Instant::now() < deadline, "{states:?}\n{}", daemon.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (redeem, report, refused) = (
        "koupon:redemption:STO1:KS1".to_owned(),
        "koupon:transaction:STO1:KS1".to_owned(),
        "koupon:redemption:STO1:KS1:refused".to_owned(),
    );
    assert_eq!(
        states,
        [
            ("redemption".to_owned(), redeem, "delivered".to_owned()),
            ("transaction".to_owned(), report, "delivered".to_owned()),
            ("redemption".to_owned(), refused, "dead".to_owned()),
        ],
        "one redemption item for the sale, its refused part dead-lettered alone"
    );
    let dead: String = conn
        .query_row("SELECT payload FROM outbox WHERE state = 'dead'", [], |r| {
            r.get(0)
        })
        .unwrap();
    let dead: Value = serde_json::from_str(&dead).unwrap();
    assert_eq!(dead["redemptions"].as_array().unwrap().len(), 1, "{dead}");
    assert_eq!(dead["redemptions"][0]["offerId"], "KPN2");
    let conflict: i64 = conn
        .query_row(
            "SELECT conflict FROM redemptions WHERE txn_id = 'KS1' AND offer_id = 'KPN2'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(conflict, 1, "flagged for store IT");
    // Koupon saw the loyalty account with each offer's code, and the report the card.
    let ledger = providers.ledger().await.unwrap();
    let redeems: Vec<(String, bool)> = ledger
        .iter()
        .filter(|e| e["provider"] == "koupon" && e["operation"] == "redeem")
        .map(|e| (e["key"].as_str().unwrap().to_owned(), e["applied"] == true))
        .collect();
    assert_eq!(
        redeems,
        [
            (format!("{LOYALTY}/KPN1"), true),
            (format!("{LOYALTY}/KPN2"), false)
        ]
    );
    // Both name the store (`providers.koupon.store_id`) in the signed query (koupon.md §3).
    let calls = providers.requests("koupon").await.unwrap();
    for path in ["/v1/transaction/redeem", "/v1/transaction/report"] {
        let call = calls
            .iter()
            .find(|c| c["path"] == path)
            .unwrap_or_else(|| panic!("no {path} in {calls:?}"));
        let query = call["query"].as_str().unwrap();
        assert!(
            query.starts_with("storeId=STO1&identifier=demo-api-key&timestamp="),
            "{path}?{query}"
        );
    }
    daemon.kill9();
}

/// Keycloak refuses a wrong password with 400 `invalid_grant`: the items are not at fault,
/// so they wait (the provider's queue pauses) instead of being dead-lettered.
#[tokio::test]
async fn a_login_refused_with_400_pauses_the_queue_and_dead_letters_nothing() {
    let providers = Providers::start().unwrap();
    let config =
        oauth_toml(&providers).replace("password = \"edge-secret\"", "password = \"wrong\"");
    let store = Store::start(StoreOptions {
        extra_toml: format!("{config}\n[outbox]\npoll_ms = 50\nbreaker_probe_secs = 1\n"),
        ..StoreOptions::default()
    })
    .await
    .unwrap();
    // Jane clips the Convercus coffee coupon back after unclipping it: two activations.
    let path = format!("/coupons/customer?site={SITE}&customer=4000000000001");
    for body in [json!({"remove": ["CVX1"]}), json!({"add": ["CVX1"]})] {
        let (status, r) = store.post(&path, &body).await.unwrap();
        assert_eq!(status, 200, "{r}");
    }
    let mut daemon = Daemon::start(&store.config_path, &store.dir.join("sync-daemon.log")).unwrap();
    daemon
        .wait_for_log("Convercus login refused", 0, Duration::from_secs(20))
        .await
        .unwrap();
    // A few more rounds of the breaker's probe: still nothing dead, nothing delivered.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let conn = rusqlite::Connection::open(store.db_path()).unwrap();
    let states: Vec<String> = conn
        .prepare("SELECT state FROM outbox WHERE provider = 'convercus' ORDER BY id")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(states, ["pending", "pending"], "{}", daemon.log());
    assert!(daemon.log().contains("invalid_grant"), "{}", daemon.log());
    daemon.kill9();
}

/// After the first (full) pull, Coupontools pulls are incremental: only sessions claimed
/// or validated since the last pull are read. A session claimed long ago and used
/// elsewhere since still reaches the store, through `campaign/validations`.
#[tokio::test]
async fn an_incremental_coupontools_pull_learns_of_an_old_session_used_elsewhere() {
    let providers = Providers::start().unwrap();
    let store = Store::start(StoreOptions {
        extra_toml: providers.config_toml("0 0 0 1 1 *"),
        ..StoreOptions::default()
    })
    .await
    .unwrap();
    let mut daemon = Daemon::start(&store.config_path, &store.dir.join("sync-daemon.log")).unwrap();
    let session = "ac6s7u3g8a25ja7x9qg87"; // claimed 2026-01-01 in the simulator's seed
    let state = || -> Option<String> {
        let conn = rusqlite::Connection::open(store.db_path()).unwrap();
        conn.query_row(
            "SELECT state FROM vouchers WHERE code = ?1",
            [session],
            |r| r.get(0),
        )
        .ok()
    };
    pull_now(&daemon, &store, "coupontools").await;
    assert!(
        daemon.log().contains("session pull: full"),
        "{}",
        daemon.log()
    );
    assert_eq!(state().as_deref(), Some("active"));

    // Another system validates it at Coupontools.
    let r = reqwest::Client::new()
        .post(format!(
            "{}/couponsession/update",
            providers.coupontools_url.trim_end_matches('/')
        ))
        .header("X-Client-Id", "demo-client-id")
        .header("X-Client-Secret", "demo-client-secret")
        .json(&json!({"couponsession": session, "action": "validate"}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());

    let from = daemon.log().len();
    pull_now(&daemon, &store, "coupontools").await;
    let log = daemon.log()[from..].to_owned();
    assert!(log.contains("session pull: incremental"), "{log}");
    assert_eq!(state().as_deref(), Some("validated"), "{log}");
    daemon.kill9();
}

/// A Coupontools that ignores the page number answers the same full page for ever; the
/// pull noticed nothing and asked for the next page without end (the stop rule is an
/// [ASSUME], coupontools.md §3.3). It now stops with an error naming what to check, and the
/// next pull of a well-behaved server works.
#[tokio::test]
async fn a_session_list_that_ignores_the_page_number_ends_the_pull_with_an_error() {
    let providers = Providers::start().unwrap();
    providers.config(&json!({"page_size": 2})).await.unwrap();
    let toml = providers.config_toml("0 0 0 1 1 *").replace(
        "campaigns = [\"cam_100001\"]",
        "campaigns = [\"cam_100001\"]\npage_size = 2",
    );
    assert!(toml.contains("page_size = 2"));
    let store = Store::start(StoreOptions {
        extra_toml: toml,
        ..StoreOptions::default()
    })
    .await
    .unwrap();
    providers
        .faults("coupontools", json!({"ignore_page": true}))
        .await
        .unwrap();
    let mut daemon = Daemon::start(&store.config_path, &store.dir.join("sync-daemon.log")).unwrap();
    let from = daemon.log().len();
    store.sync_now("coupontools").unwrap();
    daemon
        .wait_for_log("coupontools pull failed", from, Duration::from_secs(20))
        .await
        .unwrap();
    let log = daemon.log()[from..].to_owned();
    assert!(log.contains("page 2 is page 1 again"), "{log}");
    providers
        .faults("coupontools", json!({"ignore_page": false}))
        .await
        .unwrap();
    pull_now(&daemon, &store, "coupontools").await;
    daemon.kill9();
}

/// The Coupontools action values are configuration (coupontools.md §3.5 [GAP]); a value
/// Coupontools does not allow (302) pauses delivery with an error naming the key, and the
/// item waits rather than being dead-lettered.
#[tokio::test]
async fn a_coupontools_action_value_refused_with_302_pauses_instead_of_dead_lettering() {
    let providers = Providers::start().unwrap();
    let config = providers.config_toml("0 0 0 1 1 *").replace(
        "campaigns = [\"cam_100001\"]",
        "campaigns = [\"cam_100001\"]\nvalidate_action = \"redeem\"",
    );
    let store = Store::start(StoreOptions {
        extra_toml: format!("{config}\n[outbox]\npoll_ms = 50\nbreaker_probe_secs = 1\n"),
        ..StoreOptions::default()
    })
    .await
    .unwrap();
    let (status, r) = store
        .post(
            "/vouchers/CT-SESSION-0001/validate",
            &json!({"site": SITE, "transaction": "CA1", "moneySpent": 25.0}),
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{r}");
    let mut daemon = Daemon::start(&store.config_path, &store.dir.join("sync-daemon.log")).unwrap();
    daemon
        .wait_for_log(
            "refused the action value `redeem`",
            0,
            Duration::from_secs(20),
        )
        .await
        .unwrap();
    assert!(daemon.log().contains("validate_action"), "{}", daemon.log());
    let conn = rusqlite::Connection::open(store.db_path()).unwrap();
    let state: String = conn
        .query_row(
            "SELECT state FROM outbox WHERE provider = 'coupontools' AND operation = 'validate'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_ne!(state, "dead");
    daemon.kill9();
}

/// CATAPULT §8: the POS (useExternalImages=false) fetches base URL + imageUrl, so a
/// provider's image is cached by the pull and advertised as a path the edge serves, to
/// lanes without credentials; one that is not JPEG/PNG/GIF or is over 1 MB is not advertised.
#[tokio::test]
async fn provider_images_are_cached_and_served_from_the_store() {
    let providers = Providers::start().unwrap();
    let kp = providers.koupon_url.trim_end_matches('/').to_owned();
    let offer = |id: &str, title: &str, image: &str| {
        json!({"is_active": "1", "featured": "0", "offerId": id, "barcodeString": format!("bar-{id}"),
               "companyImage": format!("{kp}/cdn/{image}"), "title": title})
    };
    providers
        .seed(&json!({"koupon": {"assets": [], "offers": [
            offer("KP-IMG", "Image test", "coupon.png"),
            offer("KP-BIG", "Too big", "big.png"),
            offer("KP-HTML", "Not an image", "page.html")]}}))
        .await
        .unwrap();
    let store = Store::start(StoreOptions {
        extra_toml: providers.config_toml("0 0 0 1 1 *"),
        ..StoreOptions::default()
    })
    .await
    .unwrap();
    let mut daemon = Daemon::start(&store.config_path, &store.dir.join("sync-daemon.log")).unwrap();
    pull_now(&daemon, &store, "koupon").await;
    // The catalog is refreshed from the database within a second or two.
    let deadline = Instant::now() + Duration::from_secs(10);
    let coupons = loop {
        let (status, c) = store.get(&format!("/coupons?site={SITE}")).await.unwrap();
        assert_eq!(status, 200);
        let coupons = c["coupons"].as_array().unwrap().clone();
        if coupons
            .iter()
            .any(|o| o["shortDescription"] == "Image test")
        {
            break coupons;
        }
        assert!(Instant::now() < deadline, "{c}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let image = |title: &str| {
        coupons
            .iter()
            .find(|o| o["shortDescription"] == title)
            .map(|o| o["imageUrl"].as_str().unwrap().to_owned())
            .unwrap()
    };
    let url = image("Image test");
    assert!(
        url.starts_with("/images/p-") && url.ends_with(".png"),
        "{url}"
    );
    assert_eq!(image("Too big"), "", "over 1 MB: not advertised");
    assert_eq!(image("Not an image"), "", "text/html: not advertised");
    // Fetched as the POS does: base URL + imageUrl, no credentials.
    let r = store.client.get(store.url(&url)).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["content-type"], "image/png");
    assert_eq!(
        r.bytes().await.unwrap().as_ref(),
        e2e::sim::koupon::TINY_PNG
    );
    assert!(daemon.log().contains("over 1 MB"), "{}", daemon.log());
    daemon.kill9();
}

/// convercus.md §2.1: renew at ~80 % of `expires_in`, with the refresh token when one was
/// issued, else by a new client-credentials request.
#[tokio::test]
async fn an_oauth_token_is_renewed_with_its_refresh_token() {
    let providers = Providers::start().unwrap();
    providers
        .config(&json!({"token_ttl_secs": 3}))
        .await
        .unwrap();
    let config = oauth_toml(&providers).replace("username = \"edge\"", "username = \"\"");
    let store = Store::start(StoreOptions {
        extra_toml: config,
        ..StoreOptions::default()
    })
    .await
    .unwrap();
    let mut daemon = Daemon::start(&store.config_path, &store.dir.join("sync-daemon.log")).unwrap();
    pull_now(&daemon, &store, "convercus").await;
    assert!(daemon.log().contains("logged in to Convercus"));
    // Past 80 % of the 3 s lifetime (the refresh token lives 30 s): the next call renews
    // with the refresh token.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let from = daemon.log().len();
    pull_now(&daemon, &store, "convercus").await;
    let log = daemon.log()[from..].to_owned();
    assert!(
        log.contains("renewed with its refresh token"),
        "{}",
        daemon.log()
    );
    assert!(!log.contains("logged in to Convercus"), "{log}");
    daemon.kill9();
}

/// convercus.md §2.2 gives the legacy token 24 h, and §2.1 says not to hard-code a
/// lifetime: a token whose JWT `exp` is sooner than `token_refresh_secs` (20 h) is renewed
/// at 80 % of its own lifetime, before it lapses, instead of after a refused call.
#[tokio::test]
async fn a_legacy_token_is_renewed_before_its_own_exp() {
    let providers = Providers::start().unwrap();
    providers
        .config(&json!({"token_ttl_secs": 3}))
        .await
        .unwrap();
    let store = store_pulling_by_hand(&providers).await;
    let mut daemon = Daemon::start(&store.config_path, &store.dir.join("sync-daemon.log")).unwrap();
    pull_now(&daemon, &store, "convercus").await;
    assert!(
        daemon
            .log()
            .contains("logged in to Convercus; token renewed in 2 s"),
        "{}",
        daemon.log()
    );
    tokio::time::sleep(Duration::from_millis(2600)).await;
    let from = daemon.log().len();
    pull_now(&daemon, &store, "convercus").await;
    let log = daemon.log()[from..].to_owned();
    assert!(log.contains("logged in to Convercus"), "{log}");
    assert!(!log.contains("answered 401"), "{log}");
    daemon.kill9();
}

/// `lanes.sales_retention_days`: the daemon deletes sales last touched longer ago, with
/// their redemption log, and keeps the others; a deleted sale's id starts a new sale.
#[tokio::test]
async fn sales_older_than_the_retention_are_deleted_and_their_ids_free_again() {
    let store = Store::start(StoreOptions {
        lanes_toml: "sales_retention_days = 31".to_owned(),
        ..StoreOptions::default()
    })
    .await
    .unwrap();
    let commit = |txn: &'static str, coupon: &'static str| {
        let store = &store;
        async move {
            let (status, r) = store
                .post(
                    &format!(
                        "/transaction/commit?site={SITE}&customer=4000000000001&transaction={txn}"
                    ),
                    &json!({"coupons": [coupon]}),
                )
                .await
                .unwrap();
            assert_eq!(status, 200, "{r}");
            r
        }
    };
    commit("OLD-1", "PCT10").await;
    commit("NEW-1", "AMT2").await;
    let conn = rusqlite::Connection::open(store.db_path()).unwrap();
    let forty_days_ago = shared::db::now_secs() - 40 * 86_400;
    conn.execute(
        "UPDATE transactions SET updated_at = ?1 WHERE txn_id = 'OLD-1'",
        [forty_days_ago],
    )
    .unwrap();
    let count = |sql: &str| -> i64 { conn.query_row(sql, [], |r| r.get(0)).unwrap() };
    assert_eq!(count("SELECT count(*) FROM redemptions"), 2);

    let daemon = Daemon::start(&store.config_path, &store.dir.join("sync-daemon.log")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while count("SELECT count(*) FROM transactions WHERE txn_id = 'OLD-1'") > 0 {
        assert!(Instant::now() < deadline, "not pruned:\n{}", daemon.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        count("SELECT count(*) FROM transactions WHERE txn_id = 'NEW-1'"),
        1,
        "a recent sale stays"
    );
    assert_eq!(
        count("SELECT count(*) FROM redemptions WHERE txn_id = 'OLD-1'"),
        0,
        "its redemption log goes with it"
    );
    assert_eq!(
        count("SELECT count(*) FROM redemptions WHERE txn_id = 'NEW-1'"),
        1
    );
    daemon
        .wait_for_log(
            "deleted 1 sales last touched more than 31 days ago",
            0,
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    // The coupon redeemed by the deleted sale stays redeemed; the id now starts a new sale
    // (not a replay of the old answer): its coupon is redeemed now.
    assert!(list_contains(&store, "redeemed", "PCT10").await);
    let r = commit("OLD-1", "BOGO1").await;
    assert!(r.get("errors").is_none(), "{r}");
    assert!(
        list_contains(&store, "redeemed", "BOGO1").await,
        "a new sale, not a replay"
    );
}

/// `lanes.voucher_retention_days`: the daemon deletes vouchers whose validity ended longer
/// ago, unless locked or with a validation still on its way upstream, and a full
/// Coupontools pull (every session ever claimed) does not bring them back.
#[tokio::test]
async fn vouchers_that_ended_before_the_retention_are_deleted_and_not_pulled_again() {
    let providers = Providers::start().unwrap();
    let day = |offset: &str| -> String {
        rusqlite::Connection::open_in_memory()
            .unwrap()
            .query_row("SELECT date('now', ?1)", [offset], |r| r.get(0))
            .unwrap()
    };
    let session = |id: &str, expires: &str| {
        json!({"session": id, "campaign": "cam_100001",
               "status": {"value": "5.00", "expiration_date": format!("{expires} 23:59:59")}})
    };
    providers
        .seed(&json!({"coupontools": {
            "campaigns": [{"ID": "cam_100001", "title": "$5 off", "active": true}],
            "sessions": [session("ended-in-spring", &day("-200 days")), session("valid-all-year", "2099-12-31")],
        }}))
        .await
        .unwrap();
    let store = Store::start(StoreOptions {
        extra_toml: providers.config_toml("0 0 0 1 1 *"),
        lanes_toml: "voucher_retention_days = 60".to_owned(),
        ..StoreOptions::default()
    })
    .await
    .unwrap();
    let conn = rusqlite::Connection::open(store.db_path()).unwrap();
    for (code, ended, state, dirty) in [
        ("OLD", "-100 days", "active", 0),
        ("OLD-USED-HERE", "-100 days", "validated", 1),
        ("RECENT", "-10 days", "active", 0),
    ] {
        conn.execute(
            "INSERT INTO vouchers (code, provider, provider_ref, valid_until, state, local_dirty, updated_at) \
             VALUES (?1, 'local', ?1, date('now', ?2), ?3, ?4, 0)",
            rusqlite::params![code, ended, state, dirty],
        )
        .unwrap();
    }
    let present = |code: &str| -> bool {
        conn.query_row(
            "SELECT count(*) FROM vouchers WHERE code = ?1",
            [code],
            |r| r.get::<_, i64>(0),
        )
        .unwrap()
            == 1
    };

    let mut daemon = Daemon::start(&store.config_path, &store.dir.join("sync-daemon.log")).unwrap();
    daemon
        .wait_for_log(
            "deleted 1 vouchers whose validity ended before",
            0,
            Duration::from_secs(20),
        )
        .await
        .unwrap();
    assert!(!present("OLD"), "{}", daemon.log());
    assert!(
        present("OLD-USED-HERE"),
        "its validation has not gone upstream yet"
    );
    assert!(present("RECENT"), "ended within the retention");

    pull_now(&daemon, &store, "coupontools").await;
    assert!(
        daemon.log().contains("session pull: full"),
        "{}",
        daemon.log()
    );
    assert!(present("valid-all-year"), "{}", daemon.log());
    assert!(!present("ended-in-spring"), "not stored again by a pull");
    daemon.kill9();
}

async fn list_contains(store: &Store, list: &str, id: &str) -> bool {
    let (_, m) = store
        .get(&format!(
            "/coupons/customer?site={SITE}&customer=4000000000001"
        ))
        .await
        .unwrap();
    m[list].as_array().unwrap().iter().any(|v| v == id)
}

/// Jane's sale `txn` (one item, non-transient) paying with the Koupon barcode voucher
/// KP-BARCODE-0003, validated at the lane: one Koupon `validate` item in the outbox.
async fn koupon_voucher_sale(store: &Store, txn: &str) {
    let q = format!("?site={SITE}&customer=4000000000001&transaction={txn}");
    let items = json!([{"id": 1, "quantity": 1, "upc": 12000001000u64, "price": 10.00, "discountPrice": 10.00, "dept": 1}]);
    let (s, r) = store
        .post(
            &format!("/transaction{q}"),
            &json!({"transientRequest": false, "items": items, "subTotal": 10.0, "grossTotal": 10.0}),
        )
        .await
        .unwrap();
    assert_eq!(s, 200, "{r}");
    let vbody = json!({"site": SITE, "transaction": txn, "moneySpent": 10.0});
    let (s, r) = store
        .post("/vouchers/KP-BARCODE-0003/validate", &vbody)
        .await
        .unwrap();
    assert_eq!(s, 200, "{r}");
}

/// koupon.md §6: no idempotency key, so retries only after transport failures or 5xx. A
/// single-use barcode's redeem call that Koupon answers 2xx with an unreadable body was
/// processed: it is dead-lettered for store IT, never sent again (before, it was retried
/// and the retry's ALREADY_REDEEMED taken as delivered).
#[tokio::test]
async fn an_unreadable_answer_to_a_barcode_redeem_is_dead_lettered_not_resent() {
    let providers = Providers::start().unwrap();
    let store = store_pulling_by_hand(&providers).await;
    providers
        .faults("koupon", json!({"malformed_bodies": true}))
        .await
        .unwrap();
    koupon_voucher_sale(&store, "KB1").await;
    let mut daemon = Daemon::start(&store.config_path, &store.dir.join("sync-daemon.log")).unwrap();
    let (state, error) = outcome(&store, &daemon, "koupon", "validate").await;
    // Time for a retry, had there been one (backoff 1-2 s).
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(state, "dead", "{error}");
    assert!(error.contains("unreadable"), "{error}");
    let redeems = providers
        .ledger()
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e["provider"] == "koupon" && e["operation"] == "redeem")
        .count();
    assert_eq!(redeems, 1, "sent once, never again");
    daemon.kill9();
}

/// A store whose Koupon calls may take up to 20 s (longer than the slow answers the tests
/// below ask of the simulator) and whose outbox leases last 5 s.
async fn store_with_patient_koupon(providers: &Providers) -> Store {
    // Koupon's section is the last.
    let toml = providers.config_toml("0 0 0 1 1 *");
    let at = toml.rfind("timeout_ms = 3000").unwrap();
    let toml = format!(
        "{}timeout_ms = 20000{}",
        &toml[..at],
        &toml[at + "timeout_ms = 3000".len()..]
    );
    assert!(toml.contains("store_id = \"STO1\"\nschedule = \"0 0 0 1 1 *\"\npull_at_start = false\ntimeout_ms = 20000"));
    Store::start(StoreOptions {
        extra_toml: format!(
            "{toml}\n[outbox]\npoll_ms = 50\nlease_secs = 5\nbackoff_base_secs = 1\nbackoff_cap_secs = 2\n"
        ),
        ..StoreOptions::default()
    })
    .await
    .unwrap()
}

/// Redeem calls the simulator's Koupon received.
async fn koupon_redeem_calls(providers: &Providers) -> usize {
    providers
        .requests("koupon")
        .await
        .unwrap()
        .iter()
        .filter(|r| r["path"] == "/v1/transaction/redeem")
        .count()
}

/// koupon.md §6: no idempotency key, "a retry after a lost response can double-count". The
/// daemon killed while a redeem call waits for its answer: after the restart the call is
/// not sent again blind (before, the rescued item was posted a second time); the item is
/// dead-lettered as of unknown outcome for store IT, who may retry it by hand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redeem_whose_answer_was_lost_in_a_crash_is_not_sent_again_blind() {
    let providers = Providers::start().unwrap();
    let store = store_with_patient_koupon(&providers).await;
    providers
        .faults("koupon", json!({"slow_ms": 6000}))
        .await
        .unwrap();
    koupon_voucher_sale(&store, "KC1").await;
    let mut daemon = Daemon::start(&store.config_path, &store.dir.join("sync-daemon.log")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while koupon_redeem_calls(&providers).await == 0 {
        assert!(Instant::now() < deadline, "{}", daemon.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    daemon.kill9();
    providers
        .faults("koupon", json!({"slow_ms": 0}))
        .await
        .unwrap();
    let mut daemon =
        Daemon::start(&store.config_path, &store.dir.join("sync-daemon-2.log")).unwrap();
    let (state, error) = outcome(&store, &daemon, "koupon", "validate").await;
    assert_eq!(state, "dead", "{error}\n{}", daemon.log());
    assert!(error.contains("outcome unknown"), "{error}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(koupon_redeem_calls(&providers).await, 1, "sent once");
    // Store IT checked Koupon and sends it again: that attempt goes out.
    let conn = rusqlite::Connection::open(store.db_path()).unwrap();
    let id: i64 = conn
        .query_row(
            "SELECT id FROM outbox WHERE provider = 'koupon' AND operation = 'validate'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let out = std::process::Command::new(e2e::binary("edge-ctl").unwrap())
        .arg("--config")
        .arg(&store.config_path)
        .args(["outbox", "retry", &id.to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while koupon_redeem_calls(&providers).await < 2 {
        assert!(Instant::now() < deadline, "{}", daemon.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    daemon.kill9();
}

/// A delivery that outlasts its lease (here a Koupon answer slower than `outbox.lease_secs`;
/// in a store a `Retry-After` pause or a verified retry's several calls) is the worker's
/// own, not a stopped worker's: it is not claimed and sent a second time while it runs
/// (koupon.md §6: "A retry after a lost response can double-count").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_slower_than_its_lease_is_not_sent_a_second_time() {
    let providers = Providers::start().unwrap();
    let store = store_with_patient_koupon(&providers).await;
    providers
        .faults("koupon", json!({"slow_ms": 11000}))
        .await
        .unwrap();
    koupon_voucher_sale(&store, "KL1").await;
    let mut daemon = Daemon::start(&store.config_path, &store.dir.join("sync-daemon.log")).unwrap();
    let (state, error) = outcome(&store, &daemon, "koupon", "validate").await;
    assert_eq!(state, "delivered", "{error}");
    // A second claim would now be waiting on the simulator's slow answer.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let conn = rusqlite::Connection::open(store.db_path()).unwrap();
    let attempts: i64 = conn
        .query_row(
            "SELECT attempts FROM outbox WHERE provider = 'koupon' AND operation = 'validate'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(attempts, 1, "claimed once\n{}", daemon.log());
    let redeems = providers
        .ledger()
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e["provider"] == "koupon" && e["operation"] == "redeem")
        .count();
    assert_eq!(redeems, 1, "sent once\n{}", daemon.log());
    assert!(!daemon.log().contains("left in flight"), "{}", daemon.log());
    daemon.kill9();
}

/// convercus.md §2: on a 401, renew the token once. Parallel calls refused together (a
/// pull asks for `pull_concurrency` customers at a time) log in once: a call whose token
/// was already replaced by another uses the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parallel_calls_refused_with_401_log_in_once() {
    let mut st = stack(0, "0 0 0 1 1 *", "").await;
    st.start_daemon();
    pull_now(st.daemon.as_ref().unwrap(), &st.store, "convercus").await;
    let logins = |calls: &[Value]| {
        calls
            .iter()
            .filter(|c| c["method"] == "POST" && c["path"] == "/auth/login")
            .count()
    };
    let before = logins(&st.providers.requests("convercus").await.unwrap());
    assert_eq!(before, 1);
    // Every token is revoked; slow answers keep several calls in flight at once.
    st.providers
        .faults("convercus", json!({"expire_tokens": true, "slow_ms": 300}))
        .await
        .unwrap();
    let from = st.daemon().log().len();
    pull_now(st.daemon.as_ref().unwrap(), &st.store, "convercus").await;
    let log = st.daemon().log()[from..].to_owned();
    assert!(
        log.matches("answered 401").count() >= 2,
        "parallel calls were refused: {log}"
    );
    let after = logins(&st.providers.requests("convercus").await.unwrap());
    assert_eq!(after - before, 1, "one login for them all: {log}");
    st.daemon().kill9();
}

const JANE: &str = "4000000000001";
/// Jane's Convercus coffee coupon in the simulator's default seed (once per account).
const JANE_COFFEE: &str = "QUNDT1VOVENPVVBPTi0wMDAxLWNvZmZlZS0xNS1wZXJjZW50";

/// A store pulled by hand whose Convercus calls time out after `timeout_ms`.
async fn store_with_convercus_timeout(providers: &Providers, timeout_ms: u64) -> Store {
    let toml = providers.config_toml("0 0 0 1 1 *").replacen(
        "timeout_ms = 3000",
        &format!("timeout_ms = {timeout_ms}"),
        1,
    );
    assert!(toml.contains(&format!(
        "schedule = \"0 0 0 1 1 *\"\npull_at_start = false\ntimeout_ms = {timeout_ms}\n\n[providers.coupontools]"
    )));
    Store::start(StoreOptions {
        extra_toml: format!(
            "{toml}\n[outbox]\npoll_ms = 50\nbackoff_base_secs = 1\nbackoff_cap_secs = 2\n"
        ),
        ..StoreOptions::default()
    })
    .await
    .unwrap()
}

/// Jane's sale redeeming her Convercus coffee coupon (CVX1): one Convercus redeem item.
async fn jane_redeems_coffee(store: &Store, txn: &str) {
    let q = format!("?site={SITE}&customer={JANE}&transaction={txn}");
    let (s, r) = store
        .post(
            &format!("/transaction/commit{q}"),
            &json!({"site": SITE, "customer": JANE, "transaction": txn, "coupons": ["CVX1"]}),
        )
        .await
        .unwrap();
    assert_eq!(s, 200, "{r}");
}

/// The state and last error of the one outbox item of `provider` and `operation`, once
/// delivered or dead.
async fn outcome(
    store: &Store,
    daemon: &Daemon,
    provider: &str,
    operation: &str,
) -> (String, String) {
    let conn = rusqlite::Connection::open(store.db_path()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let row: Option<(String, Option<String>)> = conn
            .query_row(
                "SELECT state, last_error FROM outbox WHERE provider = ?1 AND operation = ?2",
                [provider, operation],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .ok();
        if let Some((s, e)) = row.filter(|(s, _)| s == "dead" || s == "delivered") {
            return (s, e.unwrap_or_default());
        }
        assert!(Instant::now() < deadline, "{}", daemon.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The simulator's ledger entries of redemptions of one Convercus account coupon:
/// whether each was applied.
async fn convercus_redemptions(providers: &Providers, key: &str) -> Vec<bool> {
    providers
        .ledger()
        .await
        .unwrap()
        .iter()
        .filter(|e| {
            e["provider"] == "convercus" && e["operation"] == "redemption" && e["key"] == key
        })
        .map(|e| e["applied"] == true)
        .collect()
}

/// convercus.md §5: "`NO_MORE_REDEEM_BY_ACCOUNT` on a retry may mean our first try
/// succeeded → verify via GET before dead-lettering". The first redeem PATCH times out at
/// the daemon and Convercus applies it only after the retry's GET read the old count; the
/// retry's PATCH is then refused NO_MORE_REDEEM_BY_ACCOUNT (the coupon is once per
/// account). Our first attempt counted: delivered, not dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_more_redeem_by_account_on_a_retry_is_verified_before_dead_lettering() {
    let providers = Providers::start().unwrap();
    let store = store_with_convercus_timeout(&providers, 1000).await;
    jane_redeems_coffee(&store, "NM1").await;
    providers
        .faults("convercus", json!({"hold_writes": true}))
        .await
        .unwrap();
    let mut daemon = Daemon::start(&store.config_path, &store.dir.join("sync-daemon.log")).unwrap();
    // The first PATCH is held past the daemon's timeout; the retry reads the count (still
    // 0) and sends its own PATCH, held behind the first.
    let patch_path = format!("/v2/accountcoupons/{JANE_COFFEE}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let patches = providers
            .requests("convercus")
            .await
            .unwrap()
            .iter()
            .filter(|r| r["method"] == "PATCH" && r["path"] == patch_path.as_str())
            .count();
        if patches >= 2 {
            break;
        }
        assert!(Instant::now() < deadline, "{}", daemon.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Convercus goes on: the first PATCH is applied, the retry's refused.
    providers
        .faults("convercus", json!({"hold_writes": false}))
        .await
        .unwrap();
    let (state, error) = outcome(&store, &daemon, "convercus", "redeem").await;
    assert_eq!(state, "delivered", "{error}\n{}", daemon.log());
    assert_eq!(
        convercus_redemptions(&providers, JANE_COFFEE).await,
        [true, false],
        "applied once; the retry refused"
    );
    let log = daemon.log();
    assert!(
        log.contains("verified after NO_MORE_REDEEM_BY_ACCOUNT on a retry"),
        "{log}"
    );
    daemon.kill9();
}

/// convercus.md §4.9 COUPON_NOT_ACTIVATABLE: "deliver pending activation first, then
/// retry once" — also when an earlier attempt failed for another reason (here Convercus
/// was throttled). The coupon is activated upstream meanwhile: the retry redeems it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn coupon_not_activatable_is_retried_once_even_after_an_earlier_transient_failure() {
    let providers = Providers::start().unwrap();
    let mut seed = e2e::sim::convercus::default_seed();
    seed["accountCoupons"][0]["activation"]["activated"] = json!(false);
    providers.seed(&json!({"convercus": seed})).await.unwrap();
    let store = store_pulling_by_hand(&providers).await;
    jane_redeems_coffee(&store, "NA1").await;
    // The first call (the login) is throttled: attempt 1 fails transiently.
    providers
        .faults("convercus", json!({"throttle_calls": 1}))
        .await
        .unwrap();
    let mut daemon = Daemon::start(&store.config_path, &store.dir.join("sync-daemon.log")).unwrap();
    // Attempt 2 is refused COUPON_NOT_ACTIVATABLE ...
    let deadline = Instant::now() + Duration::from_secs(20);
    while convercus_redemptions(&providers, JANE_COFFEE)
        .await
        .is_empty()
    {
        assert!(Instant::now() < deadline, "{}", daemon.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // ... and the activation arrives upstream before the one retry (1-2 s later).
    providers
        .seed(&json!({"convercus": e2e::sim::convercus::default_seed()}))
        .await
        .unwrap();
    let (state, error) = outcome(&store, &daemon, "convercus", "redeem").await;
    assert_eq!(state, "delivered", "{error}\n{}", daemon.log());
    assert_eq!(
        convercus_redemptions(&providers, JANE_COFFEE).await,
        [false, true]
    );
    assert!(
        daemon.log().contains("COUPON_NOT_ACTIVATABLE"),
        "{}",
        daemon.log()
    );
    daemon.kill9();
}

/// The calls the simulated Convercus received on Jane's coffee account coupon itself
/// (`/v2/accountcoupons/{id}`: the §4.6 GET and the §4.8 redeem PATCH), by method, in order.
async fn calls_on_jane_coffee(providers: &Providers) -> Vec<String> {
    let path = format!("/v2/accountcoupons/{JANE_COFFEE}");
    providers
        .requests("convercus")
        .await
        .unwrap()
        .iter()
        .filter(|r| r["path"] == path.as_str())
        .map(|r| r["method"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// The progress note of the one Convercus redeem item.
fn redeem_progress(store: &Store) -> Value {
    let conn = rusqlite::Connection::open(store.db_path()).unwrap();
    let progress: Option<String> = conn
        .query_row(
            "SELECT progress FROM outbox WHERE provider = 'convercus' AND operation = 'redeem'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    serde_json::from_str(&progress.unwrap_or_default()).unwrap_or(Value::Null)
}

/// convercus.md §5: "Before the first attempt record `redeemCount` (from the synced
/// AccountCoupon)". After a pull stored Jane's coffee coupon's count, her redemption's first
/// attempt notes that count and sends the redeem PATCH alone: no GET (before, every first
/// attempt read the account coupon first).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_first_redemption_goes_by_the_pulled_count_and_sends_only_the_patch() {
    let providers = Providers::start().unwrap();
    let store = store_pulling_by_hand(&providers).await;
    let mut daemon = Daemon::start(&store.config_path, &store.dir.join("sync-daemon.log")).unwrap();
    pull_now(&daemon, &store, "convercus").await;
    let conn = rusqlite::Connection::open(store.db_path()).unwrap();
    let (account_coupon, count): (String, Option<i64>) = conn
        .query_row(
            "SELECT provider_ref, upstream_redemptions FROM customer_coupons \
             WHERE customer_id = ?1 AND offer_id = 'CVX1'",
            [JANE],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((account_coupon.as_str(), count), (JANE_COFFEE, Some(0)));
    assert!(calls_on_jane_coffee(&providers).await.is_empty());
    jane_redeems_coffee(&store, "SB1").await;
    let (state, error) = outcome(&store, &daemon, "convercus", "redeem").await;
    assert_eq!(state, "delivered", "{error}\n{}", daemon.log());
    assert_eq!(calls_on_jane_coffee(&providers).await, ["PATCH"]);
    assert_eq!(convercus_redemptions(&providers, JANE_COFFEE).await, [true]);
    assert_eq!(
        redeem_progress(&store),
        json!({"redeemCountBefore": 0, "redeemCountFrom": "synced"})
    );
    daemon.kill9();
}

/// convercus.md §5: "On retry after an unknown outcome, GET §4.6 first: if `redeemCount`
/// already increased by our count, mark delivered". The first PATCH (its baseline the
/// pulled count) times out at the daemon and Convercus applies it afterwards; the retry
/// reads the count, finds it past the pulled one, and sends nothing more.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_answer_to_a_first_redemption_is_verified_against_the_pulled_count() {
    let providers = Providers::start().unwrap();
    let store = store_with_convercus_timeout(&providers, 1000).await;
    let mut daemon = Daemon::start(&store.config_path, &store.dir.join("sync-daemon.log")).unwrap();
    pull_now(&daemon, &store, "convercus").await;
    providers
        .faults("convercus", json!({"hold_writes": true}))
        .await
        .unwrap();
    jane_redeems_coffee(&store, "SB2").await;
    // The first attempt gives up waiting (its outcome unknown) ...
    let conn = rusqlite::Connection::open(store.db_path()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let failed: Option<String> = conn
            .query_row(
                "SELECT last_error FROM outbox WHERE provider = 'convercus' AND operation = 'redeem'",
                [],
                |r| r.get(0),
            )
            .unwrap_or(None);
        if failed.is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "{}", daemon.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // ... and Convercus applies it before the retry (1 s or more later).
    providers
        .faults("convercus", json!({"hold_writes": false}))
        .await
        .unwrap();
    let (state, error) = outcome(&store, &daemon, "convercus", "redeem").await;
    assert_eq!(state, "delivered", "{error}\n{}", daemon.log());
    assert_eq!(calls_on_jane_coffee(&providers).await, ["PATCH", "GET"]);
    assert_eq!(convercus_redemptions(&providers, JANE_COFFEE).await, [true]);
    assert_eq!(redeem_progress(&store)["redeemCountFrom"], "synced");
    let log = daemon.log();
    assert!(
        log.contains("verified: redeemCount 1 > 0 before our first attempt"),
        "{log}"
    );
    daemon.kill9();
}

/// An exact JSON money number (two decimals) in cents.
fn cents(v: &Value) -> i64 {
    let t = v.to_string();
    let (whole, frac) = t.split_once('.').unwrap_or((&t, "00"));
    assert_eq!(frac.len(), 2, "{t}");
    whole.parse::<i64>().unwrap() * 100 + frac.parse::<i64>().unwrap()
}

/// koupon.md §3.3: the report's `summary.totalDiscounts` is the "Sum of discounts" and
/// `total` the "Net total after discounts, tax included": every digital discount the sale
/// was given (here Convercus' 15 % off coffee beside Koupon's $1 off cereal), not only
/// Koupon's. The sale has a return line too (quantity -1): §3.3 wants non-negative
/// quantities, and the simulator, like Koupon, refuses a report with one; it is left out.
#[tokio::test]
async fn the_koupon_report_summary_counts_every_digital_discount_of_the_sale() {
    let providers = Providers::start().unwrap();
    let store = store_pulling_by_hand(&providers).await;
    let q = format!("?site={SITE}&customer={JANE}&transaction=KR1");
    let items = json!([
        {"id": 1, "quantity": 1, "upc": 77000000001u64, "price": 10.00, "discountPrice": 10.00, "dept": 7},
        {"id": 2, "quantity": 1, "upc": 38000012345u64, "price": 4.48, "discountPrice": 4.48, "dept": 4},
        {"id": 3, "quantity": -1, "upc": 4011, "price": 0.00, "discountPrice": 0.00, "dept": 9}]);
    let (s, r) = store
        .post(
            &format!("/transaction{q}"),
            &json!({"transientRequest": false, "items": items, "subTotal": 14.48, "grossTotal": 14.48}),
        )
        .await
        .unwrap();
    assert_eq!(s, 200, "{r}");
    let applied: BTreeMap<String, i64> = r["applied"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["couponId"].as_str().unwrap().to_owned(),
                cents(&a["totalDiscount"]),
            )
        })
        .collect();
    assert_eq!(applied.get("CVX1"), Some(&150), "{r}");
    assert_eq!(applied.get("KPN1"), Some(&100), "{r}");
    let given: i64 = applied.values().sum();
    let ids: Vec<&String> = applied.keys().collect();
    let (s, r) = store
        .post(&format!("/transaction/commit{q}"), &json!({"coupons": ids}))
        .await
        .unwrap();
    assert_eq!(s, 200, "{r}");
    let mut daemon = Daemon::start(&store.config_path, &store.dir.join("sync-daemon.log")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let report = loop {
        let ledger = providers.ledger().await.unwrap();
        if let Some(e) = ledger
            .iter()
            .find(|e| e["provider"] == "koupon" && e["operation"] == "report")
        {
            break e.clone();
        }
        assert!(Instant::now() < deadline, "{}", daemon.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(report["applied"], true, "{report}");
    let scanned: Vec<&str> = report["body"]["products"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["scanCode"].as_str().unwrap())
        .collect();
    assert_eq!(scanned, ["77000000001", "38000012345"], "{report}");
    let summary = &report["body"]["summary"];
    assert_eq!(cents(&summary["subTotal"]), 1448, "{summary}");
    assert_eq!(cents(&summary["totalDiscounts"]), given, "{summary}");
    assert_eq!(cents(&summary["total"]), 1448 - given, "{summary}");
    daemon.kill9();
}

/// koupon.md §4: the offer list names `featured` (type not given; "parse leniently"). An
/// offer Koupon features with a JSON `true` is featured in the lane catalog.
#[tokio::test]
async fn a_koupon_offer_featured_upstream_is_featured_in_the_lane_catalog() {
    let providers = Providers::start().unwrap();
    let mut seed = e2e::sim::koupon::default_seed();
    seed["offers"].as_array_mut().unwrap().push(json!({
        "is_active": true, "featured": true, "offerId": "KPN9", "barcodeString": "asset-kpn9",
        "title": "Featured granola"}));
    providers.seed(&json!({"koupon": seed})).await.unwrap();
    let store = store_pulling_by_hand(&providers).await;
    let mut daemon = Daemon::start(&store.config_path, &store.dir.join("sync-daemon.log")).unwrap();
    pull_now(&daemon, &store, "koupon").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let offer = loop {
        let (s, r) = store.get(&format!("/coupons?site={SITE}")).await.unwrap();
        assert_eq!(s, 200, "{r}");
        if let Some(o) = r["coupons"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["shortDescription"] == "Featured granola")
        {
            break o.clone();
        }
        assert!(Instant::now() < deadline, "{r}\n{}", daemon.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(offer["featured"], true, "{offer}");
    daemon.kill9();
}

/// D3: a stop (SIGTERM, as systemd sends) during a long pull abandons the pull at once
/// instead of finishing it (systemd would SIGKILL the daemon after its stop timeout on
/// every restart or upgrade). Convercus answers each call after 1.5 s: this pull of 40
/// customers would take ~60 s. 15 s is a correctness bound (the deliveries' grace is 10 s),
/// not a measure of speed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_during_a_long_pull_stops_the_daemon_promptly() {
    let mut st = stack(0, "0 0 0 1 1 *", "").await;
    st.providers
        .faults("convercus", json!({"slow_ms": 1500}))
        .await
        .unwrap();
    st.start_daemon();
    st.daemon()
        .wait_for_log("sync daemon started", 0, Duration::from_secs(20))
        .await
        .unwrap();
    let from = st.daemon().log().len();
    st.store.sync_now("convercus").unwrap();
    st.daemon()
        .wait_for_log("convercus pull started", from, Duration::from_secs(20))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stopped = st.daemon().terminate(Duration::from_secs(15));
    let log = st.daemon().log();
    assert!(
        stopped.as_ref().is_ok_and(|ok| *ok),
        "{stopped:?}\n{}",
        &log[from..]
    );
    assert!(
        log[from..].contains("convercus pull abandoned"),
        "{}",
        &log[from..]
    );
    assert!(
        log[from..].contains("sync daemon stopped"),
        "{}",
        &log[from..]
    );
    assert!(
        !log[from..].contains("convercus pull done"),
        "{}",
        &log[from..]
    );
}

/// A new store (or one whose daemon was down for longer than a schedule's period) is pulled
/// when the daemon starts, not at the next cron time (with a yearly schedule here: never in
/// this test). A daemon restarted after a recent pull does not pull again. Only Koupon has
/// `pull_at_start` here; the others keep the test harness's `false`.
#[tokio::test]
async fn a_provider_never_pulled_is_pulled_when_the_daemon_starts() {
    let providers = Providers::start().unwrap();
    let toml = providers.config_toml("0 0 0 1 1 *");
    let koupon_at = toml.find("[providers.koupon]").unwrap();
    let (head, tail) = toml.split_at(koupon_at);
    let toml = format!(
        "{head}{}",
        tail.replacen("pull_at_start = false", "pull_at_start = true", 1)
    );
    let store = Store::start(StoreOptions {
        extra_toml: toml,
        ..StoreOptions::default()
    })
    .await
    .unwrap();
    let log = store.dir.join("sync-daemon.log");
    let mut daemon = Daemon::start(&store.config_path, &log).unwrap();
    daemon
        .wait_for_log("koupon pull done", 0, Duration::from_secs(30))
        .await
        .unwrap();
    let text = daemon.log();
    assert!(
        text.contains("koupon pulled at start: it never completed a pull"),
        "{text}"
    );
    assert!(!text.contains("convercus pull started"), "{text}");
    assert!(!text.contains("coupontools pull started"), "{text}");

    // Restarted after that pull: up to date for a yearly schedule, so no pull at start.
    daemon.terminate(Duration::from_secs(15)).unwrap();
    let from = daemon.log().len();
    daemon.restart().unwrap();
    daemon
        .wait_for_log("sync daemon started", from, Duration::from_secs(30))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = daemon.log()[from..].to_owned();
    assert!(!after.contains("koupon pull started"), "{after}");
    daemon.kill9();
}

/// `edge-ctl sync now` while the provider is paused (its breaker open after a refused
/// login) is not forgotten: the pull runs as soon as the provider answers again (it was
/// dropped, and the old error stayed until the next scheduled pull, up to an hour).
#[tokio::test]
async fn a_pull_asked_for_while_the_provider_is_paused_runs_when_it_answers_again() {
    let providers = Providers::start().unwrap();
    let store = Store::start(StoreOptions {
        extra_toml: format!(
            "{}\n[outbox]\npoll_ms = 50\nbreaker_probe_secs = 1\n",
            providers.config_toml("0 0 0 1 1 *")
        ),
        ..StoreOptions::default()
    })
    .await
    .unwrap();
    let mut daemon = Daemon::start(&store.config_path, &store.dir.join("sync-daemon.log")).unwrap();
    daemon
        .wait_for_log("for configuration changes", 0, Duration::from_secs(20))
        .await
        .unwrap();
    // Koupon refuses our signature: the pull fails and pauses Koupon.
    providers
        .config(&json!({"koupon_secret": "another-secret"}))
        .await
        .unwrap();
    let from = daemon.log().len();
    store.sync_now("koupon").unwrap();
    daemon
        .wait_for_log("koupon pull failed", from, Duration::from_secs(20))
        .await
        .unwrap();
    let from = daemon.log().len();
    store.sync_now("koupon").unwrap();
    daemon
        .wait_for_log("koupon pull postponed", from, Duration::from_secs(20))
        .await
        .unwrap();
    // Koupon takes our signature again: the probe sees it, and the asked-for pull runs.
    providers
        .config(&json!({"koupon_secret": "demo-secret"}))
        .await
        .unwrap();
    daemon
        .wait_for_log("koupon pull done", from, Duration::from_secs(30))
        .await
        .unwrap();
    assert!(
        daemon.log()[from..].contains("running the postponed pull"),
        "{}",
        daemon.log()
    );
    daemon.kill9();
}

/// Points spent here reach no provider, and a Convercus pull knows no points balance: the
/// pull leaves the store's balance as it is (800 - 500 after Jane's 500-point coupon), for
/// a customer it rewrites (the pulled profile differs) as for any other.
#[tokio::test]
async fn a_pull_leaves_the_points_spent_here_spent() {
    let providers = Providers::start().unwrap();
    let store = store_pulling_by_hand(&providers).await;
    let balance = || async {
        let q = format!("?site={SITE}&customer={JANE}&transaction=PB2");
        let items =
            json!([{"id": 1, "quantity": 1, "upc": 12000001000u64, "price": 12.00, "dept": 1}]);
        let (s, r) = store
            .post(
                &format!("/transaction{q}"),
                &json!({"transientRequest": true, "items": items}),
            )
            .await
            .unwrap();
        assert_eq!(s, 200, "{r}");
        r["loyaltyBalances"][0]["balance"].as_i64()
    };
    assert_eq!(balance().await, Some(800));
    let q = format!("?site={SITE}&customer={JANE}&transaction=PB1");
    let (s, r) = store
        .post(
            &format!("/transaction/commit{q}"),
            &json!({"coupons": ["PTS500"]}),
        )
        .await
        .unwrap();
    assert_eq!(s, 200, "{r}");
    assert_eq!(balance().await, Some(300));
    let mut daemon = Daemon::start(&store.config_path, &store.dir.join("sync-daemon.log")).unwrap();
    pull_now(&daemon, &store, "convercus").await;
    let conn = rusqlite::Connection::open(store.db_path()).unwrap();
    let provider: Option<String> = conn
        .query_row(
            "SELECT provider FROM customers WHERE id = ?1",
            [JANE],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        provider.as_deref(),
        Some("convercus"),
        "the pull wrote Jane"
    );
    assert_eq!(balance().await, Some(300));
    daemon.kill9();
}
