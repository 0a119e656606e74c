//! TLS toward the lanes: loads the PEM certificate and key (generating a self-signed pair on
//! first start when configured), TLS 1.2 and 1.3 only, with the ring provider.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use shared::config::TlsConfig;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read TLS file {path}: {message} (check server.tls.cert / server.tls.key)")]
    Read { path: String, message: String },
    #[error("cannot create a self-signed certificate: {0}")]
    Generate(String),
    #[error("TLS setup failed: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Writes a self-signed certificate and key for `names` unless both files exist.
/// Returns true when it generated them.
pub fn ensure_certificate(cfg: &TlsConfig) -> Result<bool, TlsError> {
    if cfg.cert.exists() && cfg.key.exists() {
        return Ok(false);
    }
    if !cfg.generate_self_signed {
        return Err(TlsError::Read {
            path: cfg.cert.display().to_string(),
            message: "missing, and server.tls.generate_self_signed is false".into(),
        });
    }
    let certified = rcgen::generate_simple_self_signed(cfg.self_signed_names.clone())
        .map_err(|e| TlsError::Generate(e.to_string()))?;
    for (path, pem) in [
        (&cfg.cert, certified.cert.pem()),
        (&cfg.key, certified.signing_key.serialize_pem()),
    ] {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| TlsError::Generate(format!("{}: {e}", dir.display())))?;
        }
        write_private(path, pem.as_bytes())
            .map_err(|e| TlsError::Generate(format!("{}: {e}", path.display())))?;
    }
    Ok(true)
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

/// The rustls server configuration for the lanes.
pub fn server_config(cfg: &TlsConfig) -> Result<rustls::ServerConfig, TlsError> {
    let read_err = |path: &Path, e: &dyn std::fmt::Display| TlsError::Read {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cfg.cert)
        .map_err(|e| read_err(&cfg.cert, &e))?
        .collect::<Result<_, _>>()
        .map_err(|e| read_err(&cfg.cert, &e))?;
    let key = PrivateKeyDer::from_pem_file(&cfg.key).map_err(|e| read_err(&cfg.key, &e))?;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    Ok(config)
}
