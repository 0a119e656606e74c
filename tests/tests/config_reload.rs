//! edge-server picks up configuration changes (a regional conf.d/ fragment, an edited
//! file) without a restart, and keeps the last good configuration when a change is invalid.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use e2e::{Store, StoreOptions, SITE};
use std::time::{Duration, Instant};

async fn status_as(store: &Store, user: &str, password: &str) -> u16 {
    store
        .client
        .get(store.url(&format!("/coupons?site={SITE}")))
        .basic_auth(user, Some(password))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn wait_for(store: &Store, user: &str, password: &str, want: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while status_as(store, user, password).await != want {
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(store.dir.join("edge-server.log")).unwrap();
            let relevant: Vec<&str> = log
                .lines()
                .filter(|l| !l.contains("rejected a request"))
                .collect();
            panic!("{user}: never {want}\n{}", relevant.join("\n"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_conf_d_fragment_applies_without_restart_and_a_broken_one_is_refused() {
    let store = Store::start(StoreOptions::default()).await.unwrap();
    assert_eq!(status_as(&store, "webcart", "cart-secret").await, 401);
    // A regional fragment adds the WebCart credentials (arrays replace: both pairs listed).
    let conf_d = store.dir.join("conf.d");
    std::fs::create_dir_all(&conf_d).unwrap();
    // conf.d did not exist at start: the watcher sees the directory appear in the config dir,
    // and the file is merged when the configuration is loaded again.
    std::fs::write(
        conf_d.join("50-region-test.toml"),
        format!(
            "[[lanes.credentials]]\nusername = \"{}\"\npassword = \"{}\"\n\n[[lanes.credentials]]\nusername = \"webcart\"\npassword = \"cart-secret\"\n\n[lanes]\nhold_ttl_secs = 600\n",
            e2e::USER,
            e2e::PASSWORD
        ),
    )
    .unwrap();
    wait_for(&store, "webcart", "cart-secret", 200).await;
    assert_eq!(status_as(&store, e2e::USER, e2e::PASSWORD).await, 200);
    assert!(store.log_tail().contains("configuration reloaded"));
    // A broken edit of the main file: refused, logged, the last good config stays.
    let main = std::fs::read_to_string(&store.config_path).unwrap();
    std::fs::write(
        &store.config_path,
        format!("{main}\n[lanes]\nhold_ttl_secs = 0\n"),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !store
        .log_tail()
        .contains("keeping the last good configuration")
    {
        assert!(Instant::now() < deadline, "{}", store.log_tail());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status_as(&store, "webcart", "cart-secret").await, 200);
    // Fixed again, and the fragment removed: WebCart is refused once more.
    std::fs::write(&store.config_path, main).unwrap();
    std::fs::remove_file(conf_d.join("50-region-test.toml")).unwrap();
    wait_for(&store, "webcart", "cart-secret", 401).await;
    assert_eq!(status_as(&store, e2e::USER, e2e::PASSWORD).await, 200);
}

/// The server process started in `dir` with `--config edge-coupon.toml` (a path relative to
/// its working directory, as an operator types it in a shell); killed on drop.
struct RelativeServer(std::process::Child);

impl Drop for RelativeServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn conf_d_changes_apply_when_the_server_was_started_with_a_relative_config_path() {
    let temp = tempfile::tempdir().unwrap();
    let mut store = Store::in_dir(temp.path(), StoreOptions::default(), true).unwrap();
    // conf.d/ is there from the start (the case the watcher lost: a relative --config).
    let conf_d = store.dir.join("conf.d");
    std::fs::create_dir_all(&conf_d).unwrap();
    let log = std::fs::File::create(store.dir.join("edge-server.log")).unwrap();
    let _server = RelativeServer(
        std::process::Command::new(e2e::binary("edge-server").unwrap())
            .current_dir(&store.dir)
            .args(["--config", "edge-coupon.toml"])
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let cert = store.dir.join("tls/cert.pem");
        if let Ok(client) = e2e::lane_client(&cert) {
            if client.get(store.url("/healthz")).send().await.is_ok() {
                store.client = client;
                break;
            }
        }
        assert!(Instant::now() < deadline, "{}", store.log_tail());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        store.log_tail().contains("for configuration changes"),
        "{}",
        store.log_tail()
    );
    assert_eq!(status_as(&store, "webcart", "cart-secret").await, 401);
    let fragment = conf_d.join("50-region-test.toml");
    std::fs::write(
        &fragment,
        format!(
            "[[lanes.credentials]]\nusername = \"{}\"\npassword = \"{}\"\n\n[[lanes.credentials]]\nusername = \"webcart\"\npassword = \"cart-secret\"\n",
            e2e::USER,
            e2e::PASSWORD
        ),
    )
    .unwrap();
    wait_for(&store, "webcart", "cart-secret", 200).await;
    std::fs::remove_file(&fragment).unwrap();
    wait_for(&store, "webcart", "cart-secret", 401).await;
    assert_eq!(status_as(&store, e2e::USER, e2e::PASSWORD).await, 200);
}
