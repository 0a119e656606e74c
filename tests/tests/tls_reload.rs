//! The lanes' certificate: `tls-init` creates it and prints its fingerprint and the POS
//! trust-store steps; a replaced certificate is served without a restart.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use e2e::{Store, StoreOptions};
use std::process::Command;
use std::time::{Duration, Instant};

#[tokio::test]
async fn tls_init_prints_the_fingerprint_and_a_replaced_certificate_is_served_without_restart() {
    let store = Store::start(StoreOptions::default()).await.unwrap();
    let old_cert = store.dir.join("tls/cert.pem");
    // A second certificate, made by `tls-init` for a config pointing elsewhere.
    let other = store.dir.join("other");
    std::fs::create_dir_all(&other).unwrap();
    let config = std::fs::read_to_string(&store.config_path)
        .unwrap()
        .replace(
            &store.dir.join("tls").display().to_string(),
            &other.display().to_string(),
        );
    let other_config = other.join("edge-coupon.toml");
    std::fs::write(&other_config, config).unwrap();
    let out = Command::new(e2e::binary("edge-server").unwrap())
        .arg("--config")
        .arg(&other_config)
        .arg("tls-init")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("generated a self-signed certificate"),
        "{text}"
    );
    let fp = text
        .lines()
        .find_map(|l| l.strip_prefix("SHA-256 fingerprint: "))
        .unwrap();
    assert_eq!(fp.len(), 32 * 3 - 1, "{fp}");
    assert!(text.contains("keytool -importcert"), "{text}");
    // Run again: the existing certificate is kept and reported with the same fingerprint.
    let again = Command::new(e2e::binary("edge-server").unwrap())
        .arg("--config")
        .arg(&other_config)
        .arg("tls-init")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&again.stdout).contains(&format!("SHA-256 fingerprint: {fp}")));

    // Lanes that trust only the new certificate fail now...
    let new_cert = other.join("cert.pem");
    let trusts_new = e2e::lane_client(&new_cert).unwrap();
    assert!(trusts_new.get(store.url("/healthz")).send().await.is_err());
    // ...until it replaces the old one on disk (key first, then certificate, as an admin
    // would copy them). No restart.
    std::fs::copy(other.join("key.pem"), store.dir.join("tls/key.pem")).unwrap();
    std::fs::copy(&new_cert, &old_cert).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // A fresh client each time: a new handshake.
        let c = e2e::lane_client(&new_cert).unwrap();
        if let Ok(r) = c.get(store.url("/healthz")).send().await {
            assert!(r.status().is_success());
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new certificate was not served"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let log = store.log_tail();
    assert!(log.contains("TLS certificate replaced"), "{log}");
}
