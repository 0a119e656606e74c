//! The rest of the store stack for end-to-end tests and the demo: the `provider-sim`
//! process (simulated Convercus, Coupontools, Koupon) and the `sync-daemon` process, both
//! real binaries started as processes. Killed on drop.

use crate::binary;
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The `provider-sim` process.
pub struct Providers {
    child: Child,
    /// `127.0.0.1:PORT` of the admin API (`/__sim/*`).
    pub admin: String,
    pub convercus_url: String,
    pub coupontools_url: String,
    pub koupon_url: String,
    http: reqwest::Client,
}

impl Providers {
    /// Starts the simulator on free loopback ports with its default seed.
    pub fn start() -> Result<Providers> {
        crate::install_crypto();
        let mut child = Command::new(binary("provider-sim")?)
            .args(["--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let stdout = child.stdout.take().context("provider-sim has no stdout")?;
        // Its first four lines: the admin address, then each provider's base URL.
        let mut lines = std::io::BufReader::new(stdout).lines();
        let mut next = || -> Result<String> { Ok(lines.next().transpose()?.unwrap_or_default()) };
        let admin = next()?;
        let mut urls = std::collections::HashMap::new();
        for _ in 0..3 {
            let l = next()?;
            if let Some((name, url)) = l.split_once(' ') {
                urls.insert(name.to_owned(), url.to_owned());
            }
        }
        let url = |n: &str| urls.get(n).cloned().unwrap_or_default();
        Ok(Providers {
            child,
            admin,
            convercus_url: url("convercus"),
            coupontools_url: url("coupontools"),
            koupon_url: url("koupon"),
            http: reqwest::Client::new(),
        })
    }

    /// The `[providers.*]` configuration that points the sync daemon at the simulator with
    /// its default credentials, every provider enabled, pulls on `schedule`.
    pub fn config_toml(&self, schedule: &str) -> String {
        format!(
            r#"
[providers.convercus]
enabled = true
base_url = "{cv}"
auth = "legacy"
org = "demo-org"
username = "edge"
password = "edge-secret"
interaction_id = "edge"
schedule = "{schedule}"
pull_at_start = false
timeout_ms = 3000

[providers.coupontools]
enabled = true
base_url = "{ct}"
client_id = "demo-client-id"
client_secret = "demo-client-secret"
campaigns = ["cam_100001"]
schedule = "{schedule}"
pull_at_start = false
timeout_ms = 3000

[providers.koupon]
enabled = true
storeconnect_url = "{kp}"
management_url = "{kp}"
api_key = "demo-api-key"
secret = "demo-secret"
store_id = "STO1"
schedule = "{schedule}"
pull_at_start = false
timeout_ms = 3000
"#,
            cv = self.convercus_url,
            ct = self.coupontools_url,
            kp = self.koupon_url,
        )
    }

    fn admin_url(&self, path: &str) -> String {
        format!("http://{}/__sim/{path}", self.admin)
    }

    /// `POST /__sim/faults` for one provider.
    pub async fn faults(&self, provider: &str, faults: Value) -> Result<()> {
        let r = self
            .http
            .post(self.admin_url("faults"))
            .json(&json!({ provider: faults }))
            .send()
            .await?;
        if !r.status().is_success() {
            bail!("faults refused: {}", r.text().await?);
        }
        Ok(())
    }

    /// Every provider down (connections refused) or back up.
    pub async fn all_down(&self, down: bool) -> Result<()> {
        for p in ["convercus", "coupontools", "koupon"] {
            self.faults(p, json!({"down": down})).await?;
        }
        Ok(())
    }

    pub async fn seed(&self, seed: &Value) -> Result<()> {
        let r = self
            .http
            .post(self.admin_url("seed"))
            .json(seed)
            .send()
            .await?;
        if !r.status().is_success() {
            bail!("seed refused: {}", r.text().await?);
        }
        Ok(())
    }

    pub async fn config(&self, config: &Value) -> Result<()> {
        let r = self
            .http
            .post(self.admin_url("config"))
            .json(config)
            .send()
            .await?;
        if !r.status().is_success() {
            bail!("config refused: {}", r.text().await?);
        }
        Ok(())
    }

    /// Every call `provider` received (`{"provider", "atMs", "method", "path", "query"}`),
    /// oldest first.
    pub async fn requests(&self, provider: &str) -> Result<Vec<Value>> {
        let v: Value = self
            .http
            .get(format!(
                "{}?provider={provider}",
                self.admin_url("requests")
            ))
            .send()
            .await?
            .json()
            .await?;
        Ok(v.as_array().cloned().unwrap_or_default())
    }

    /// The ledger: every write the providers received, in order.
    pub async fn ledger(&self) -> Result<Vec<Value>> {
        let v: Value = self
            .http
            .get(self.admin_url("ledger"))
            .send()
            .await?
            .json()
            .await?;
        Ok(v.get("entries")
            .or_else(|| v.get("ledger"))
            .and_then(Value::as_array)
            .cloned()
            .or_else(|| v.as_array().cloned())
            .unwrap_or_default())
    }

    pub async fn state(&self) -> Result<Value> {
        Ok(self
            .http
            .get(self.admin_url("state"))
            .send()
            .await?
            .json()
            .await?)
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Providers {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A running `sync-daemon` process.
pub struct Daemon {
    child: Option<Child>,
    config_path: PathBuf,
    pub log_path: PathBuf,
}

impl Daemon {
    /// Starts `sync-daemon --config CONFIG`, logging to `LOG` (appended).
    pub fn start(config_path: &Path, log_path: &Path) -> Result<Daemon> {
        let mut d = Daemon {
            child: None,
            config_path: config_path.to_owned(),
            log_path: log_path.to_owned(),
        };
        d.restart()?;
        Ok(d)
    }

    pub fn restart(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)?;
        let child = Command::new(binary("sync-daemon")?)
            .arg("--config")
            .arg(&self.config_path)
            .env("RUST_LOG_STYLE", "never")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        self.child = Some(child);
        Ok(())
    }

    /// `kill -9`: no shutdown code runs.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then wait for the process to exit (up to `timeout`). Returns its success.
    pub fn terminate(&mut self, timeout: Duration) -> Result<bool> {
        let Some(mut c) = self.child.take() else {
            return Ok(true);
        };
        Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status()?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = c.try_wait()? {
                return Ok(s.success());
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                bail!("sync-daemon did not stop within {timeout:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Waits until the log contains `text` (after `from` bytes of it).
    pub async fn wait_for_log(&self, text: &str, from: usize, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.log();
            if log.get(from..).is_some_and(|l| l.contains(text)) {
                return Ok(());
            }
            if Instant::now() > deadline {
                let tail: Vec<&str> = log.lines().rev().take(20).collect();
                bail!(
                    "sync-daemon log has no `{text}` after {timeout:?}; last lines:\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}
