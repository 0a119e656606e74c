//! Both services speak systemd's notify protocol: READY=1 once the database is migrated and
//! the listener bound, then WATCHDOG=1 heartbeats at half the WatchdogSec interval. The
//! test plays systemd: it binds the notify socket and reads the datagrams.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use e2e::{Store, StoreOptions};
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Starts `binary` with NOTIFY_SOCKET and WATCHDOG_USEC (1 s) and collects what it sends
/// for `secs` seconds.
fn notifications(binary: &str, store: &Store, secs: u64) -> Vec<String> {
    let sock_path = store.dir.join(format!("{binary}.notify"));
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut child = Command::new(e2e::binary(binary).unwrap())
        .arg("--config")
        .arg(&store.config_path)
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "1000000")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut buf = [0u8; 512];
    while Instant::now() < deadline {
        if let Ok(n) = sock.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    got
}

#[test]
fn edge_server_and_sync_daemon_notify_ready_and_keep_the_watchdog_fed() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::in_dir(dir.path(), StoreOptions::default(), false).unwrap();
    for binary in ["edge-server", "sync-daemon"] {
        let got = notifications(binary, &store, 4);
        let ready = got.iter().position(|m| m.contains("READY=1"));
        assert!(ready.is_some(), "{binary} sent {got:?}");
        let heartbeats = got.iter().filter(|m| m.contains("WATCHDOG=1")).count();
        assert!(heartbeats >= 3, "{binary} heartbeats in 4 s: {got:?}");
    }
}
