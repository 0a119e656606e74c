//! TLS toward the lanes: loads the PEM certificate and key (generating a self-signed pair on
//! first start when configured), TLS 1.2 and 1.3 only, with the ring provider.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use shared::config::TlsConfig;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read TLS file {path}: {message} (check server.tls.cert / server.tls.key)")]
    Read { path: String, message: String },
    #[error("cannot create a self-signed certificate: {0}")]
    Generate(String),
    #[error("the private key {key} (server.tls.key) does not belong to the certificate {cert} (server.tls.cert): install the key the certificate was issued with, or remove both files to have a self-signed pair generated (server.tls.generate_self_signed)")]
    Mismatch { cert: String, key: String },
    #[error("TLS setup failed: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The names a generated certificate is valid for: the configured ones, then (with
/// `self_signed_local_names`) this machine's host name and the addresses lanes can reach
/// the server at: every interface's (loopback and IPv6 link-local left out) when `listen`
/// is unspecified (0.0.0.0 or [::]), else `listen`'s. In that order, each once.
pub fn certificate_names(cfg: &TlsConfig, listen: SocketAddr) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    let mut add = |name: String| {
        if !name.is_empty() && !names.contains(&name) {
            names.push(name);
        }
    };
    cfg.self_signed_names.iter().cloned().for_each(&mut add);
    if !cfg.self_signed_local_names {
        return names;
    }
    // The kernel's host name (what `hostname` prints), as lanes may be set up with it.
    if let Ok(host) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        add(host.trim().to_owned());
    }
    if listen.ip().is_unspecified() {
        match if_addrs::get_if_addrs() {
            Ok(interfaces) => {
                for ip in interfaces
                    .iter()
                    .filter(|i| !i.is_loopback() && !i.is_link_local())
                    .map(if_addrs::Interface::ip)
                    .filter(|ip| listen.is_ipv6() || ip.is_ipv4())
                {
                    add(ip.to_string());
                }
            }
            Err(e) => log::warn!("cannot list this machine's addresses for the certificate ({e}); it names only server.tls.self_signed_names and the host name: run `edge-server tls-init` outside the service's sandbox, or list the addresses lanes use in server.tls.self_signed_names"),
        }
    } else {
        add(listen.ip().to_string());
    }
    names
}

/// Writes a self-signed certificate and key for `names` unless both files exist.
/// Returns the names it was made for when it generated them.
pub fn ensure_certificate(
    cfg: &TlsConfig,
    listen: SocketAddr,
) -> Result<Option<Vec<String>>, TlsError> {
    if cfg.cert.exists() && cfg.key.exists() {
        return Ok(None);
    }
    if !cfg.generate_self_signed {
        return Err(TlsError::Read {
            path: cfg.cert.display().to_string(),
            message: "missing, and server.tls.generate_self_signed is false".into(),
        });
    }
    let names = certificate_names(cfg, listen);
    let certified = rcgen::generate_simple_self_signed(names.clone())
        .map_err(|e| TlsError::Generate(e.to_string()))?;
    for (path, pem) in [
        (&cfg.cert, certified.cert.pem()),
        (&cfg.key, certified.signing_key.serialize_pem()),
    ] {
        let owner = owner_of_nearest_dir(path);
        let mut made: Vec<&Path> = path
            .ancestors()
            .skip(1)
            .take_while(|d| !d.as_os_str().is_empty() && !d.exists())
            .collect();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| TlsError::Generate(format!("{}: {e}", dir.display())))?;
        }
        write_private(path, pem.as_bytes())
            .map_err(|e| TlsError::Generate(format!("{}: {e}", path.display())))?;
        made.push(path);
        if let Some(owner) = owner {
            hand_over(&made, owner)
                .map_err(|e| TlsError::Generate(format!("{}: {e}", path.display())))?;
        }
    }
    Ok(Some(names))
}

/// The owner (uid, gid) of the nearest directory above `path` that exists.
fn owner_of_nearest_dir(path: &Path) -> Option<(u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    path.ancestors()
        .skip(1)
        .filter(|d| !d.as_os_str().is_empty())
        .find_map(|d| std::fs::metadata(d).ok().filter(std::fs::Metadata::is_dir))
        .map(|m| (m.uid(), m.gid()))
}

/// `edge-server tls-init` run as root (`sudo`, as an operator renewing the certificate
/// would) made the files root's, mode 0640: the service, running as its own user, could
/// not read the key, refused it at the next reload and did not start at the next restart.
/// What root writes here goes to the owner of the directory it is written in (the service
/// user's state directory), as the service itself would have written it.
fn hand_over(paths: &[&Path], (uid, gid): (u32, u32)) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    if uid == 0 {
        return Ok(());
    }
    for p in paths {
        if std::fs::metadata(p)?.uid() == 0 {
            std::os::unix::fs::chown(p, Some(uid), Some(gid))?;
        }
    }
    Ok(())
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o640)
        .open(path)?;
    f.write_all(bytes)
}

/// The certificate and key as rustls serves them.
fn load_certified_key(cfg: &TlsConfig) -> Result<CertifiedKey, TlsError> {
    let read_err = |path: &Path, e: &dyn std::fmt::Display| TlsError::Read {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cfg.cert)
        .map_err(|e| read_err(&cfg.cert, &e))?
        .collect::<Result<_, _>>()
        .map_err(|e| read_err(&cfg.cert, &e))?;
    if certs.is_empty() {
        return Err(read_err(&cfg.cert, &"no certificate in the file"));
    }
    let key = PrivateKeyDer::from_pem_file(&cfg.key).map_err(|e| read_err(&cfg.key, &e))?;
    let provider = rustls::crypto::ring::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| read_err(&cfg.key, &e))?;
    let ck = CertifiedKey::new(certs, signing);
    // A key that does not belong to the certificate would fail every handshake.
    ck.keys_match().map_err(|_| TlsError::Mismatch {
        cert: cfg.cert.display().to_string(),
        key: cfg.key.display().to_string(),
    })?;
    Ok(ck)
}

/// What `serve` would refuse about the lanes' TLS files, checked without serving
/// (`check-config`): a certificate and key that do not load or do not match, or that are
/// missing while none may be generated. `Ok(false)`: missing, and generated at start.
pub fn check_files(cfg: &TlsConfig) -> Result<bool, TlsError> {
    if cfg.cert.exists() && cfg.key.exists() {
        load_certified_key(cfg).map(|_| true)
    } else if cfg.generate_self_signed {
        Ok(false)
    } else {
        Err(TlsError::Read {
            path: cfg.cert.display().to_string(),
            message: "missing, and server.tls.generate_self_signed is false".into(),
        })
    }
}

/// SHA-256 fingerprint of a DER certificate, as `keytool -list` prints it (AB:CD:…).
pub fn fingerprint(der: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, der)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The fingerprint of the configured certificate.
pub fn certificate_fingerprint(cfg: &TlsConfig) -> Result<String, TlsError> {
    let ck = load_certified_key(cfg)?;
    Ok(ck.cert.first().map(|c| fingerprint(c)).unwrap_or_default())
}

fn stamp(cfg: &TlsConfig) -> Option<(SystemTime, SystemTime)> {
    let m = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    Some((m(&cfg.cert)?, m(&cfg.key)?))
}

/// Serves the current certificate and swaps in a replaced one: a new handshake gets the
/// new certificate, without a restart (open connections keep theirs).
#[derive(Debug)]
pub struct ReloadingCert {
    cfg: TlsConfig,
    current: RwLock<Arc<CertifiedKey>>,
    loaded: Mutex<Option<(SystemTime, SystemTime)>>,
}

impl ReloadingCert {
    pub fn new(cfg: &TlsConfig) -> Result<ReloadingCert, TlsError> {
        let loaded = stamp(cfg);
        Ok(ReloadingCert {
            cfg: cfg.clone(),
            current: RwLock::new(Arc::new(load_certified_key(cfg)?)),
            loaded: Mutex::new(loaded),
        })
    }

    /// Loads the files again when they changed. A pair that does not load (half-copied,
    /// mismatched key) is logged and the current certificate stays.
    pub fn reload_if_changed(&self) {
        let now = stamp(&self.cfg);
        let mut loaded = self
            .loaded
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if now.is_none() || now == *loaded {
            return;
        }
        match load_certified_key(&self.cfg) {
            Ok(ck) => {
                let fp = ck.cert.first().map(|c| fingerprint(c)).unwrap_or_default();
                *self
                    .current
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(ck);
                *loaded = now;
                log::info!(cert = self.cfg.cert.display().to_string().as_str(); "TLS certificate replaced; new handshakes use it (SHA-256 {fp})");
            }
            Err(e) => {
                log::error!("the TLS certificate files changed but cannot be used, keeping the current certificate: {e}");
                *loaded = now;
            }
        }
    }

    /// Checks the files every `every` on a background thread.
    pub fn watch(self: &Arc<Self>, every: std::time::Duration) {
        let me = Arc::clone(self);
        let _ = std::thread::Builder::new()
            .name("tls-reload".into())
            .spawn(move || loop {
                std::thread::sleep(every);
                me.reload_if_changed();
            });
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(
            &self
                .current
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        ))
    }
}

/// The rustls server configuration for the lanes, with a certificate that is reloaded when
/// its files are replaced.
pub fn server_config(cfg: &TlsConfig) -> Result<rustls::ServerConfig, TlsError> {
    let resolver = Arc::new(ReloadingCert::new(cfg)?);
    resolver.watch(std::time::Duration::from_secs(2));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(names: &[&str], local: bool) -> TlsConfig {
        TlsConfig {
            self_signed_names: names.iter().map(|n| (*n).to_owned()).collect(),
            self_signed_local_names: local,
            ..TlsConfig::default()
        }
    }

    #[test]
    fn configured_names_come_first_each_once_and_alone_when_local_names_are_off() {
        let listen: SocketAddr = ([0, 0, 0, 0], 8443).into();
        assert_eq!(
            certificate_names(
                &cfg(&["localhost", "pos.store", "localhost", ""], false),
                listen
            ),
            ["localhost", "pos.store"]
        );
    }

    #[test]
    fn a_specific_listen_address_is_named_and_no_other_address() {
        let names = certificate_names(&cfg(&["localhost"], true), ([10, 1, 2, 3], 8443).into());
        assert_eq!(names.first().map(String::as_str), Some("localhost"));
        assert_eq!(names.last().map(String::as_str), Some("10.1.2.3"));
        let addresses = names
            .iter()
            .filter(|n| n.parse::<std::net::IpAddr>().is_ok());
        assert_eq!(addresses.count(), 1, "{names:?}");
    }

    #[test]
    fn on_every_interface_loopback_and_link_local_addresses_are_left_out() {
        let names = certificate_names(&cfg(&[], true), ([0, 0, 0, 0], 8443).into());
        for ip in names
            .iter()
            .filter_map(|n| n.parse::<std::net::IpAddr>().ok())
        {
            assert!(
                ip.is_ipv4() && !ip.is_loopback() && !ip.is_unspecified(),
                "{names:?}"
            );
        }
    }
}
