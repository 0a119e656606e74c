//! The log level follows the configuration at runtime in both daemons: raised above the
//! level they started at, DEBUG lines appear (they did not: the stderr logger kept the
//! start level as its own filter and only `log::set_max_level` moved).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use e2e::stack::Daemon;
use e2e::{Store, StoreOptions, SITE};
use serde_json::json;
use std::time::{Duration, Instant};

fn edge_log(store: &Store) -> String {
    std::fs::read_to_string(store.dir.join("edge-server.log")).unwrap_or_default()
}

async fn wait_until(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<String>) {
    let deadline = Instant::now() + timeout;
    loop {
        match check() {
            None => return,
            Some(log) if Instant::now() > deadline => panic!("never {what}; log:\n{log}"),
            Some(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// A commit logs its tenders at DEBUG (`catapult::commit`).
async fn commit(store: &Store, txn: &str) {
    let (s, body) = store
        .post(
            &format!("/transaction/commit?site={SITE}&customer=4000000000001&transaction={txn}"),
            &json!({"coupons": [], "tenders": [{"type": "CASH", "amount": 1.25}]}),
        )
        .await
        .unwrap();
    assert_eq!(s, 200, "{body}");
}

#[tokio::test]
async fn raising_the_level_from_info_to_debug_at_runtime_shows_debug_lines_in_both_daemons() {
    let store = Store::start(StoreOptions::default()).await.unwrap();
    let daemon = Daemon::start(&store.config_path, &store.dir.join("sync-daemon.log")).unwrap();
    daemon
        .wait_for_log("for configuration changes", 0, Duration::from_secs(20))
        .await
        .unwrap();
    wait_until("edge-server watching", Duration::from_secs(10), || {
        let log = edge_log(&store);
        (!log.contains("for configuration changes")).then_some(log)
    })
    .await;
    // Started at info: no DEBUG line from either.
    commit(&store, "LVL1").await;
    let config = std::fs::read_to_string(&store.config_path).unwrap();
    assert!(config.contains("level = \"info\""), "{config}");
    assert!(!edge_log(&store).contains("DEBUG"), "{}", edge_log(&store));
    assert!(!daemon.log().contains("DEBUG"), "{}", daemon.log());

    let daemon_from = daemon.log().len();
    let edge_from = edge_log(&store).len();
    std::fs::write(
        &store.config_path,
        config.replace("level = \"info\"", "level = \"debug\""),
    )
    .unwrap();
    // sync-daemon: the reload itself wakes each pull scheduler, which logs its next pull at
    // DEBUG.
    daemon
        .wait_for_log(
            "configuration reloaded: logging",
            daemon_from,
            Duration::from_secs(20),
        )
        .await
        .unwrap();
    daemon
        .wait_for_log("pull in", daemon_from, Duration::from_secs(10))
        .await
        .unwrap();
    let debug = daemon.log()[daemon_from..]
        .lines()
        .find(|l| l.contains("pull in"))
        .unwrap()
        .to_owned();
    assert!(debug.contains("DEBUG"), "{debug}");
    // edge-server: a commit after the reload logs its tenders at DEBUG.
    wait_until("edge-server reloaded", Duration::from_secs(20), || {
        let log = edge_log(&store);
        (!log[edge_from..].contains("configuration reloaded")).then_some(log)
    })
    .await;
    commit(&store, "LVL2").await;
    wait_until("a DEBUG commit line", Duration::from_secs(10), || {
        let log = edge_log(&store);
        let found = log[edge_from..]
            .lines()
            .any(|l| l.contains("DEBUG") && l.contains("commit tenders") && l.contains("LVL2"));
        (!found).then_some(log)
    })
    .await;
}
