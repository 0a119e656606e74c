//! Harness for end-to-end tests and the demo: writes a config into a fresh directory,
//! starts the real `edge-server` binary as a process on loopback over HTTPS, waits for it
//! to be ready by polling, and gives lane-like HTTPS clients. Processes are killed on drop.

pub mod sim;
pub mod stack;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

pub const USER: &str = "lane";
pub const PASSWORD: &str = "lane-secret";
pub const SITE: &str = "STO1";

/// The embedded sample catalog, customers and vouchers used by the demo and the tests.
pub const SAMPLE_DATA: &str = include_str!("../../packaging/sample-data.json");

/// Directory holding the workspace's built binaries (`target/debug` or `target/release`).
pub fn bin_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    for dir in exe.ancestors().skip(1).take(2) {
        if dir.join("edge-server").is_file() {
            return Ok(dir.to_owned());
        }
    }
    bail!("edge-server binary not found next to {}: run `cargo build --workspace --bins` first (the README's test command does)", exe.display())
}

/// Creates the store database that `config` names, as the services do on their first
/// start (an empty import migrates a new database).
pub fn create_database(config: &Path) -> Result<()> {
    let snapshot = config.with_file_name("empty.json");
    std::fs::write(&snapshot, "{}")?;
    let out = Command::new(binary("edge-server")?)
        .arg("--config")
        .arg(config)
        .arg("import")
        .arg(&snapshot)
        .env_remove("RUST_BACKTRACE")
        .output()?;
    if !out.status.success() {
        bail!(
            "creating the database failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// The path of a workspace binary, refusing one older than the sources it is built from
/// (a stale binary would test old code).
pub fn binary(name: &str) -> Result<PathBuf> {
    let path = bin_dir()?.join(name);
    let built = std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .with_context(|| format!("{} is missing", path.display()))?;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    // The simulator is built from this crate's sources; the services from their own.
    let own_src = match name {
        "provider-sim" => "tests/src/sim".to_owned(),
        "edge-ctl" => "sync-daemon/src".to_owned(),
        other => format!("{other}/src"),
    };
    for dir in ["shared/src", "shared/migrations", &own_src] {
        if let Some(newest) = newest_mtime(&root.join(dir)) {
            if newest > built {
                bail!(
                    "{} is older than {dir}: run `cargo build --workspace --bins` first",
                    path.display()
                );
            }
        }
    }
    Ok(path)
}

fn newest_mtime(dir: &Path) -> Option<SystemTime> {
    let mut newest = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let p = entry.path();
        let t = if p.is_dir() {
            newest_mtime(&p)
        } else {
            entry.metadata().ok()?.modified().ok()
        };
        newest = newest.max(t);
    }
    newest
}

/// A free loopback port (bound and released; the server binds it right after).
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Options for a store instance.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    pub hold_ttl_secs: u64,
    pub self_stacking: bool,
    /// More keys of the `[lanes]` table, one `key = value` per line.
    pub lanes_toml: String,
    /// More keys of the `[server]` table, one `key = value` per line.
    pub server_toml: String,
    pub extra_toml: String,
    pub port: Option<u16>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            hold_ttl_secs: 1800,
            self_stacking: false,
            lanes_toml: String::new(),
            server_toml: String::new(),
            extra_toml: String::new(),
            port: None,
        }
    }
}

/// A running edge-server with its own directory, database and certificate.
pub struct Store {
    pub dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
    pub config_path: PathBuf,
    pub port: u16,
    child: Option<Child>,
    pub client: reqwest::Client,
}

impl Store {
    /// Two Coupontools outbox items as the sync daemon leaves them: one dead-lettered with
    /// `reason`, one pending; both created 100 s ago.
    pub fn outbox_with_a_dead_letter(&self, reason: &str) -> Result<()> {
        let conn = rusqlite::Connection::open(self.db_path())?;
        let now = shared::db::now_secs();
        for (key, ordering) in [("k-dead", "voucher:S1"), ("k-pending", "voucher:S2")] {
            let item = shared::outbox::NewItem {
                provider: "coupontools",
                operation: "validate",
                idempotency_key: key.into(),
                ordering_key: ordering.into(),
                payload: serde_json::json!({"code": ordering}),
            };
            shared::outbox::enqueue(&conn, &item, now - 100)?;
        }
        let claimed = shared::outbox::claim_next(&conn, None, now, now + 60)?
            .ok_or_else(|| anyhow!("no outbox item to dead-letter"))?;
        shared::outbox::dead_letter(&conn, claimed.id, now, reason)?;
        Ok(())
    }

    /// A fresh store in a temporary directory, loaded with the sample data.
    pub async fn start(opts: StoreOptions) -> Result<Store> {
        let temp = tempfile::tempdir()?;
        let dir = temp.path().to_owned();
        let mut store = Store::in_dir(&dir, opts, true)?;
        store._temp = Some(temp);
        // The port was free when picked; another test may have taken it since. Then move.
        for _ in 0..3 {
            match store.launch().await {
                Ok(()) => return Ok(store),
                Err(e) if store.log_tail().contains("cannot listen") => {
                    let old = format!("127.0.0.1:{}", store.port);
                    store.port = free_port()?;
                    let config = std::fs::read_to_string(&store.config_path)?;
                    std::fs::write(
                        &store.config_path,
                        config.replace(&old, &format!("127.0.0.1:{}", store.port)),
                    )?;
                    eprintln!("retrying on another port: {e}");
                }
                Err(e) => return Err(e),
            }
        }
        store.launch().await?;
        Ok(store)
    }

    /// Prepares `dir` (config, sample data) without starting the server.
    pub fn in_dir(dir: &Path, opts: StoreOptions, import_sample: bool) -> Result<Store> {
        install_crypto();
        std::fs::create_dir_all(dir.join("images"))?;
        let port = match opts.port {
            Some(p) => p,
            None => free_port()?,
        };
        let config_path = dir.join("edge-coupon.toml");
        let config = format!(
            r#"[store]
sites = ["{SITE}", "STO2"]
time_zone = "America/Chicago"

[database]
path = "{db}"
read_pool_size = 2

[server]
listen = "127.0.0.1:{port}"
workers = 2
image_dir = "{images}"
{server}

[server.tls]
cert = "{cert}"
key = "{key}"
self_signed_names = ["localhost", "127.0.0.1"]

[lanes]
hold_ttl_secs = {ttl}
self_stacking = {stacking}
{lanes}

[[lanes.credentials]]
username = "{USER}"
password = "{PASSWORD}"

[logging]
level = "info"
{extra}
"#,
            db = dir.join("edge.db").display(),
            images = dir.join("images").display(),
            cert = dir.join("tls/cert.pem").display(),
            key = dir.join("tls/key.pem").display(),
            ttl = opts.hold_ttl_secs,
            stacking = opts.self_stacking,
            lanes = opts.lanes_toml,
            server = opts.server_toml,
            extra = opts.extra_toml,
        );
        std::fs::write(&config_path, config)?;
        // As the package installs it: the file holds secrets (else edge-server warns).
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&config_path, std::fs::Permissions::from_mode(0o640))?;
        }
        // A tiny valid GIF for the sample coupon image.
        std::fs::write(dir.join("images/coupon-bogo.gif"), b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00\x00\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;")?;
        let store = Store {
            dir: dir.to_owned(),
            _temp: None,
            config_path,
            port,
            child: None,
            client: reqwest::Client::new(),
        };
        if import_sample {
            let sample = dir.join("sample-data.json");
            std::fs::write(&sample, SAMPLE_DATA)?;
            store.import(&sample)?;
        }
        Ok(store)
    }

    /// Runs `edge-server import FILE` against this store's config; returns its log.
    pub fn import(&self, file: &Path) -> Result<String> {
        let out = Command::new(binary("edge-server")?)
            .arg("--config")
            .arg(&self.config_path)
            .arg("import")
            .arg(file)
            .output()?;
        if !out.status.success() {
            bail!("import failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stderr).into_owned())
    }

    /// Runs `edge-ctl sync now PROVIDER` against this store's config: the sync daemon
    /// pulls that provider at once.
    pub fn sync_now(&self, provider: &str) -> Result<()> {
        let out = Command::new(binary("edge-ctl")?)
            .arg("--config")
            .arg(&self.config_path)
            .args(["sync", "now", provider])
            .output()?;
        if !out.status.success() {
            bail!("edge-ctl sync now failed: {out:?}");
        }
        Ok(())
    }

    /// Starts the server process and waits until `/healthz` answers over HTTPS.
    pub async fn launch(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("edge-server.log"))?;
        let child = Command::new(binary("edge-server")?)
            .arg("--config")
            .arg(&self.config_path)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!("edge-server exited with {status}: {}", self.log_tail());
            }
            if self.dir.join("tls/cert.pem").is_file() {
                if let Ok(client) = lane_client(&self.dir.join("tls/cert.pem")) {
                    if let Ok(r) = client.get(self.url("/healthz")).send().await {
                        if r.status().is_success() {
                            self.client = client;
                            return Ok(());
                        }
                    }
                }
            }
            if Instant::now() > deadline {
                bail!("edge-server did not become ready: {}", self.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `kill -9`: no shutdown code runs.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The admin listener's port, as the server logged it when it bound (tests configure
    /// `admin.listen = "127.0.0.1:0"`: no port picked beforehand that another test could
    /// take meanwhile).
    pub fn admin_port(&self) -> Result<u16> {
        let log = self.log();
        let line = log
            .lines()
            .find(|l| l.contains("store health (admin) listening"))
            .context("the server logged no admin listener")?;
        let addr = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("addr="))
            .context("the admin listener's line names no addr")?;
        Ok(addr.parse::<std::net::SocketAddr>()?.port())
    }

    /// The server's log, all of it.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("edge-server.log")).unwrap_or_default()
    }

    /// The last 30 lines of the server's log.
    pub fn log_tail(&self) -> String {
        let text = self.log();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.port)
    }

    pub fn db_path(&self) -> PathBuf {
        self.dir.join("edge.db")
    }

    /// GET with lane credentials; returns (status, JSON body).
    pub async fn get(&self, path_and_query: &str) -> Result<(u16, Value)> {
        let r = self
            .client
            .get(self.url(path_and_query))
            .basic_auth(USER, Some(PASSWORD))
            .send()
            .await?;
        json_of(r).await
    }

    /// POST a JSON body with lane credentials; returns (status, JSON body).
    pub async fn post(&self, path_and_query: &str, body: &Value) -> Result<(u16, Value)> {
        let r = self
            .client
            .post(self.url(path_and_query))
            .basic_auth(USER, Some(PASSWORD))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await?;
        json_of(r).await
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub async fn json_of(r: reqwest::Response) -> Result<(u16, Value)> {
    let status = r.status().as_u16();
    let text = r.text().await?;
    let v = serde_json::from_str(&text)
        .map_err(|e| anyhow!("status {status}, body is not JSON ({e}): {text}"))?;
    Ok((status, v))
}

/// Makes ring the process's rustls provider (reqwest is built without one of its own).
pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// An HTTPS client that trusts exactly the store's certificate, TLS 1.2+ (like a lane's
/// JVM with the certificate imported), keeping its connection alive.
pub fn lane_client(cert_pem: &Path) -> Result<reqwest::Client> {
    lane_client_resolving(cert_pem, None)
}

/// A lane's TLS settings: TLS 1.2 or 1.3, trusting only the store certificate `cert_pem`.
pub fn lane_tls(cert_pem: &Path) -> Result<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(cert_pem)? {
        roots.add(cert?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// [`lane_client`] that reaches `name` at `addr`, as a lane whose base URL names the store
/// server by a name the test machine's DNS may not know.
pub fn lane_client_resolving(
    cert_pem: &Path,
    resolve: Option<(&str, std::net::SocketAddr)>,
) -> Result<reqwest::Client> {
    let tls = lane_tls(cert_pem)?;
    let mut builder = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .pool_max_idle_per_host(64)
        // Shorter than any keep-alive the server has had (actix's default of 5 s before
        // `server.keep_alive_secs`): a connection idle longer may be closed by the server
        // just as it is reused, failing the request with IncompleteMessage (seen in CI when a
        // test waited for the sync daemon between two calls).
        .pool_idle_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(10));
    if let Some((name, addr)) = resolve {
        builder = builder.resolve(name, addr);
    }
    Ok(builder.build()?)
}
