//! Importing a snapshot into a store that pulled Convercus first (any running store): an
//! offer the pull already wrote under its own id is refused by name, with what to do, and
//! nothing is written (it was a raw `UNIQUE constraint failed` aborting the import).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use e2e::stack::{Daemon, Providers};
use e2e::{Store, StoreOptions};
use std::time::Duration;

#[tokio::test]
async fn the_sample_snapshot_after_a_convercus_pull_is_refused_naming_both_ids() {
    let providers = Providers::start().unwrap();
    let temp = tempfile::tempdir().unwrap();
    let providers_toml = providers.config_toml("0 0 0 1 1 *").replace(
        "interaction_id = \"edge\"",
        "interaction_id = \"edge\"\ncustomers = [\"4000000000001\"]",
    );
    let store = Store::in_dir(
        temp.path(),
        StoreOptions {
            extra_toml: providers_toml,
            ..StoreOptions::default()
        },
        false,
    )
    .unwrap();
    let daemon = Daemon::start(&store.config_path, &store.dir.join("sync-daemon.log")).unwrap();
    daemon
        .wait_for_log("for configuration changes", 0, Duration::from_secs(20))
        .await
        .unwrap();
    store.sync_now("convercus").unwrap();
    daemon
        .wait_for_log("convercus pull done", 0, Duration::from_secs(30))
        .await
        .unwrap();
    let conn = rusqlite::Connection::open(store.db_path()).unwrap();
    let pulled: String = conn
        .query_row(
            "SELECT id FROM offers WHERE provider = 'convercus' AND provider_ref = ?1",
            ["c0c0c0c0-0000-4000-8000-000000000001"],
            |r| r.get(0),
        )
        .expect("the pull wrote CVX1's couponId");
    assert_ne!(pulled, "CVX1");
    let offers_before: i64 = conn
        .query_row("SELECT count(*) FROM offers", [], |r| r.get(0))
        .unwrap();

    let sample = store.dir.join("sample-data.json");
    std::fs::write(&sample, e2e::SAMPLE_DATA).unwrap();
    let err = store.import(&sample).unwrap_err().to_string();
    assert!(!err.contains("UNIQUE"), "{err}");
    for part in [
        "`CVX1`",
        pulled.as_str(),
        "c0c0c0c0-0000-4000-8000-000000000001",
        "nothing was imported",
        "use the id",
    ] {
        assert!(err.contains(part), "{part} missing from: {err}");
    }
    let offers_after: i64 = conn
        .query_row("SELECT count(*) FROM offers", [], |r| r.get(0))
        .unwrap();
    assert_eq!(offers_after, offers_before, "nothing was written");
}
