//! The lanes' certificate: `tls-init` creates it and prints its fingerprint and the POS
//! trust-store steps; a replaced certificate is served without a restart.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use e2e::{Store, StoreOptions};
use std::process::Command;
use std::time::{Duration, Instant};

/// Whether `cert` (self-signed, so its own root) is valid for `name`, by webpki's rules.
fn valid_for(cert: &std::path::Path, name: &str) -> bool {
    use rustls::client::danger::ServerCertVerifier;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    let der = CertificateDer::from_pem_file(cert).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der.clone()).unwrap();
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        std::sync::Arc::new(roots),
        std::sync::Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .unwrap();
    let name = ServerName::try_from(name.to_owned()).unwrap();
    verifier
        .verify_server_cert(&der, &[], &name, &[], UnixTime::now())
        .is_ok()
}

/// Runs `edge-server tls-init` with a copy of the store's configuration whose certificate
/// and key live in the store's directory `name` instead, changed further by `edit`.
/// Returns that directory and the command's output.
fn tls_init_elsewhere(
    store: &Store,
    name: &str,
    edit: impl Fn(String) -> String,
) -> (std::path::PathBuf, std::process::Output) {
    let other = store.dir.join(name);
    std::fs::create_dir_all(&other).unwrap();
    let config = std::fs::read_to_string(&store.config_path)
        .unwrap()
        .replace(
            &store.dir.join("tls").display().to_string(),
            &other.display().to_string(),
        );
    let other_config = other.join("edge-coupon.toml");
    std::fs::write(&other_config, edit(config)).unwrap();
    let out = Command::new(e2e::binary("edge-server").unwrap())
        .arg("--config")
        .arg(&other_config)
        .arg("tls-init")
        .output()
        .unwrap();
    (other, out)
}

/// The store server as the lanes reach it: by its host name, and (listening on every
/// interface) by the address of its LAN interface.
#[tokio::test]
async fn a_generated_certificate_names_the_host_and_its_addresses() {
    let store = Store::start(StoreOptions::default()).await.unwrap();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_owned();
    let cert = store.dir.join("tls/cert.pem");
    let lane =
        e2e::lane_client_resolving(&cert, Some((&host, ([127, 0, 0, 1], store.port).into())))
            .unwrap();
    let r = lane
        .get(format!("https://{host}:{}/healthz", store.port))
        .send()
        .await
        .unwrap_or_else(|e| panic!("a lane calling https://{host}:{}/ : {e:?}", store.port));
    assert_eq!(r.status(), 200);
    assert!(!valid_for(&cert, "elsewhere.example"));

    // Listening on 0.0.0.0: the address this machine reaches other hosts from (found by the
    // kernel's routing, not by listing interfaces as the server does) is in the certificate.
    let lan_ip = std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| s.connect("192.0.2.1:9").map(|()| s))
        .and_then(|s| s.local_addr())
        .map(|a| a.ip())
        .ok()
        .filter(|ip| !ip.is_loopback());
    let (other, out) = tls_init_elsewhere(&store, "any", |config| {
        let config = config.replace(
            &format!("listen = \"127.0.0.1:{}\"", store.port),
            "listen = \"0.0.0.0:8443\"",
        );
        assert!(config.contains("0.0.0.0:8443"), "{config}");
        config
    });
    let text = String::from_utf8_lossy(&out.stdout);
    let names = text
        .lines()
        .find_map(|l| l.strip_prefix("valid for: "))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(names.starts_with("localhost, 127.0.0.1, "), "{names}");
    assert!(names.contains(&host), "{names}");
    let other_cert = other.join("cert.pem");
    assert!(valid_for(&other_cert, &host));
    match lan_ip {
        Some(ip) => {
            assert!(names.contains(&ip.to_string()), "{ip} not in {names}");
            assert!(valid_for(&other_cert, &ip.to_string()));
        }
        None => eprintln!("no route off this machine: only the host name was checked"),
    }
}

#[tokio::test]
async fn tls_init_prints_the_fingerprint_and_a_replaced_certificate_is_served_without_restart() {
    let store = Store::start(StoreOptions::default()).await.unwrap();
    let old_cert = store.dir.join("tls/cert.pem");
    // A second certificate, made by `tls-init` for a config pointing elsewhere.
    let (other, out) = tls_init_elsewhere(&store, "other", |config| config);
    let other_config = other.join("edge-coupon.toml");
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

/// The lanes run CATAPULT on Java (OpenJDK 11): a client that speaks only TLS 1.2 with the
/// ECDHE AES-GCM suites (CATAPULT reference §1) is served, and so is one that speaks only
/// TLS 1.3. The server offers both and nothing older.
#[tokio::test]
async fn a_lane_speaking_only_tls_1_2_or_only_tls_1_3_is_served() {
    use rustls::crypto::ring as provider;
    use rustls::pki_types::pem::PemObject;
    let store = Store::start(StoreOptions::default()).await.unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for cert in
        rustls::pki_types::CertificateDer::pem_file_iter(store.dir.join("tls/cert.pem")).unwrap()
    {
        roots.add(cert.unwrap()).unwrap();
    }
    let tls12_suites = vec![
        provider::cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        provider::cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        provider::cipher_suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        provider::cipher_suite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
    ];
    for (version, suites) in [
        (&rustls::version::TLS12, tls12_suites),
        (
            &rustls::version::TLS13,
            provider::default_provider().cipher_suites,
        ),
    ] {
        let crypto = rustls::crypto::CryptoProvider {
            cipher_suites: suites,
            ..provider::default_provider()
        };
        let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(crypto))
            .with_protocol_versions(&[version])
            .unwrap()
            .with_root_certificates(roots.clone())
            .with_no_client_auth();
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(config)
            .build()
            .unwrap();
        let r = client
            .get(store.url(&format!("/coupons?site={}", e2e::SITE)))
            .basic_auth(e2e::USER, Some(e2e::PASSWORD))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{version:?}: {e:?}"));
        assert_eq!(r.status(), 200, "{version:?}");
    }
}
