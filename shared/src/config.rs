//! Configuration: one TOML file (`--config`), then every `*.toml` in its `conf.d/`
//! directory in name order (regional overrides), then `EDGE_SECTION__KEY` environment
//! variables (for secrets). Parsed into types once, validated, and passed explicitly.
//! Every key and its default is documented in `packaging/edge-coupon.toml`, which is
//! embedded here and printed by `--print-default-config`.

use serde::Deserialize;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The commented example configuration, with every key at its default.
pub const DEFAULT_CONFIG_TOML: &str = include_str!("../../packaging/edge-coupon.toml");

/// Why a configuration was refused; always names the key or file at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("config is invalid: {0}")]
    Shape(String),
    #[error("config key `{key}` is invalid: {reason}")]
    Invalid { key: &'static str, reason: String },
    #[error("environment variable {var} cannot be applied: {reason}")]
    Env { var: String, reason: String },
}

/// A string that never appears in `Debug` output or logs.
#[derive(Clone, Deserialize, PartialEq, Eq, Default)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"<redacted>\"")
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub store: StoreConfig,
    #[serde(default)]
    pub database: DatabaseConfig,
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub lanes: LanesConfig,
    #[serde(default)]
    pub logging: LoggingConfig,
    /// Sections owned by the sync daemon; kept opaque here so the edge server accepts them.
    #[serde(default)]
    pub providers: toml::Table,
    #[serde(default)]
    pub outbox: toml::Table,
    #[serde(default)]
    pub offer_rules: toml::Table,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// Site ids the lanes send as `site`; any other site gets INVALID_SITE.
    pub sites: Vec<String>,
    /// IANA time zone of the store, used for coupon validity windows.
    #[serde(default = "default_tz")]
    pub time_zone: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    pub path: PathBuf,
    /// `full` (survives power loss; default) or `normal` (survives a crash of the process).
    pub synchronous: Synchronous,
    pub read_pool_size: u32,
    pub cache_size_kib: u32,
    pub mmap_size_mib: u32,
    pub busy_timeout_ms: u32,
    /// Milliseconds between background WAL checkpoints.
    pub checkpoint_interval_ms: u64,
    /// Microseconds the writer waits for more lane writes before committing a batch, so
    /// that under heavy load more writes share one fsync. 0 = commit at once.
    pub group_commit_linger_us: u64,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    Full,
    Normal,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// HTTP worker threads; 0 = one per core.
    pub workers: usize,
    /// Largest accepted request body in bytes (larger gets 413).
    pub max_body_bytes: usize,
    /// Serve plain HTTP instead of HTTPS. CATAPULT requires HTTPS: only for tests behind a
    /// TLS-terminating proxy.
    pub plain_http: bool,
    pub tls: TlsConfig,
    /// Directory of coupon images served at `/images/<file>`.
    pub image_dir: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Generate a self-signed certificate at `cert`/`key` when they do not exist yet.
    pub generate_self_signed: bool,
    /// Host names put into a generated certificate.
    pub self_signed_names: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LanesConfig {
    /// Basic-auth credentials the lanes use (`com.ecrsoft.tserver.genericcoup.username` /
    /// `password`). Several pairs may be configured (e.g. POS lanes and WebCart).
    pub credentials: Vec<Credential>,
    /// Seconds a pending hold lives without a new update, cancel or commit.
    pub hold_ttl_secs: u64,
    /// Mirror of the POS `selfStacking` setting: `false` = at most one coupon per line.
    pub self_stacking: bool,
    /// `type` sent on every AppliedCoupon unless the offer says otherwise.
    pub default_coupon_type: String,
    /// Receipt line appended to update answers with applied coupons (empty = none).
    /// `{total}` is replaced by the total discount.
    pub receipt_footer: String,
    /// Extra paths (aliases) per operation; the built-in primary path and aliases always work.
    pub route_aliases: RouteAliases,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RouteAliases {
    pub catalog: Vec<String>,
    pub customer_coupons: Vec<String>,
    pub clip: Vec<String>,
    pub demographics: Vec<String>,
    pub update: Vec<String>,
    pub cancel: Vec<String>,
    pub commit: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credential {
    pub username: String,
    pub password: Secret,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoggingConfig {
    /// `error`, `warn`, `info`, `debug` or `trace`.
    pub level: String,
}

fn default_tz() -> String {
    "UTC".to_owned()
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            path: PathBuf::from("/var/lib/edge-coupon/edge.db"),
            synchronous: Synchronous::Full,
            read_pool_size: 2,
            cache_size_kib: 32 * 1024,
            mmap_size_mib: 1024,
            busy_timeout_ms: 5000,
            checkpoint_interval_ms: 250,
            group_commit_linger_us: 300,
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 8443)),
            workers: 0,
            max_body_bytes: 256 * 1024,
            plain_http: false,
            tls: TlsConfig::default(),
            image_dir: PathBuf::from("/var/lib/edge-coupon/images"),
        }
    }
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            cert: PathBuf::from("/var/lib/edge-coupon/tls/cert.pem"),
            key: PathBuf::from("/var/lib/edge-coupon/tls/key.pem"),
            generate_self_signed: true,
            self_signed_names: vec!["localhost".to_owned()],
        }
    }
}

impl Default for LanesConfig {
    fn default() -> Self {
        LanesConfig {
            credentials: Vec::new(),
            hold_ttl_secs: 30 * 60,
            self_stacking: false,
            default_coupon_type: "Mfr Discount".to_owned(),
            receipt_footer: "Digital coupons saved you {total}".to_owned(),
            route_aliases: RouteAliases::default(),
        }
    }
}

impl Default for LoggingConfig {
    fn default() -> Self {
        LoggingConfig {
            level: "info".to_owned(),
        }
    }
}

impl Config {
    /// Loads `path`, then `conf.d/*.toml` beside it, then `EDGE_…` environment overrides.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let env: Vec<(String, String)> = std::env::vars().collect();
        Self::load_with_env(path, &env)
    }

    pub fn load_with_env(path: &Path, env: &[(String, String)]) -> Result<Config, ConfigError> {
        let mut merged = read_table(path)?;
        let conf_d = path.parent().unwrap_or(Path::new(".")).join("conf.d");
        if let Ok(entries) = std::fs::read_dir(&conf_d) {
            let mut files: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                .collect();
            files.sort();
            for f in files {
                merge(&mut merged, read_table(&f)?);
            }
        }
        apply_env(&mut merged, env)?;
        Self::from_table(merged)
    }

    /// Parses one TOML document (no conf.d, no environment): used by validators and tests.
    pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
        let table: toml::Table =
            text.parse()
                .map_err(|e: toml::de::Error| ConfigError::Syntax {
                    path: PathBuf::from("<string>"),
                    message: e.to_string(),
                })?;
        Self::from_table(table)
    }

    fn from_table(table: toml::Table) -> Result<Config, ConfigError> {
        let config: Config = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Shape(e.message().to_owned()))?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.store.sites.is_empty()
            || self
                .store
                .sites
                .iter()
                .any(|s| crate::domain::SiteId::parse(s).is_err())
        {
            return Err(invalid(
                "store.sites",
                "list at least one site id of 1..64 characters",
            ));
        }
        if self.store.time_zone.parse::<chrono_tz::Tz>().is_err() {
            return Err(invalid(
                "store.time_zone",
                format!(
                    "`{}` is not an IANA time zone such as America/Chicago",
                    self.store.time_zone
                ),
            ));
        }
        if self.database.read_pool_size == 0 || self.database.read_pool_size > 64 {
            return Err(invalid(
                "database.read_pool_size",
                "must be between 1 and 64",
            ));
        }
        if self.database.checkpoint_interval_ms < 10 {
            return Err(invalid(
                "database.checkpoint_interval_ms",
                "must be at least 10",
            ));
        }
        if self.database.group_commit_linger_us > 10_000 {
            return Err(invalid(
                "database.group_commit_linger_us",
                "must be at most 10000 (10 ms): every lane write waits this long under load",
            ));
        }
        if self.server.max_body_bytes < 1024 {
            return Err(invalid("server.max_body_bytes", "must be at least 1024"));
        }
        if self.lanes.credentials.is_empty() {
            return Err(invalid(
                "lanes.credentials",
                "configure at least one username/password pair for the lanes",
            ));
        }
        for c in &self.lanes.credentials {
            if c.username.is_empty() || c.password.expose().is_empty() {
                return Err(invalid(
                    "lanes.credentials",
                    "username and password must not be empty",
                ));
            }
        }
        if self.lanes.hold_ttl_secs == 0 {
            return Err(invalid("lanes.hold_ttl_secs", "must be at least 1"));
        }
        let aliases = &self.lanes.route_aliases;
        for p in aliases
            .catalog
            .iter()
            .chain(&aliases.customer_coupons)
            .chain(&aliases.clip)
            .chain(&aliases.demographics)
            .chain(&aliases.update)
            .chain(&aliases.cancel)
            .chain(&aliases.commit)
        {
            if !p.starts_with('/') {
                return Err(invalid(
                    "lanes.route_aliases",
                    format!("path `{p}` must start with '/'"),
                ));
            }
        }
        if log_level(&self.logging.level).is_none() {
            return Err(invalid(
                "logging.level",
                "use one of error, warn, info, debug, trace",
            ));
        }
        Ok(())
    }

    pub fn time_zone(&self) -> chrono_tz::Tz {
        self.store.time_zone.parse().unwrap_or(chrono_tz::UTC)
    }

    /// Today's date in the store's time zone (validity windows are whole local days).
    pub fn today(&self) -> chrono::NaiveDate {
        chrono::Utc::now()
            .with_timezone(&self.time_zone())
            .date_naive()
    }

    pub fn log_level(&self) -> log::LevelFilter {
        log_level(&self.logging.level).unwrap_or(log::LevelFilter::Info)
    }
}

fn log_level(s: &str) -> Option<log::LevelFilter> {
    s.parse().ok()
}

fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        reason: reason.into(),
    }
}

fn read_table(path: &Path) -> Result<toml::Table, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    text.parse::<toml::Table>()
        .map_err(|e| ConfigError::Syntax {
            path: path.to_owned(),
            message: e.to_string(),
        })
}

/// Deep merge: tables merge key by key, anything else is replaced.
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// `EDGE_DATABASE__PATH=/x` sets `database.path`. The value is read as a TOML value when it
/// parses as one (numbers, booleans, arrays), else as a string.
/// `EDGE_LANES__PASSWORD` sets the password of the first lane credential.
fn apply_env(table: &mut toml::Table, env: &[(String, String)]) -> Result<(), ConfigError> {
    for (var, value) in env {
        let Some(rest) = var.strip_prefix("EDGE_") else {
            continue;
        };
        if !rest.contains("__") {
            continue;
        }
        let path: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
        let parsed = parse_env_value(value);
        if path == ["lanes", "password"] || path == ["lanes", "username"] {
            let lanes = table
                .entry("lanes")
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            let creds = lanes
                .as_table_mut()
                .ok_or_else(|| ConfigError::Env {
                    var: var.clone(),
                    reason: "`lanes` is not a table".into(),
                })?
                .entry("credentials")
                .or_insert_with(|| {
                    toml::Value::Array(vec![toml::Value::Table(toml::Table::new())])
                });
            let first = creds
                .as_array_mut()
                .and_then(|a| {
                    if a.is_empty() {
                        a.push(toml::Value::Table(toml::Table::new()));
                    }
                    a.first_mut()
                })
                .and_then(toml::Value::as_table_mut)
                .ok_or_else(|| ConfigError::Env {
                    var: var.clone(),
                    reason: "`lanes.credentials` is not a list of tables".into(),
                })?;
            first.insert(path[1].clone(), toml::Value::String(value.clone()));
            continue;
        }
        let mut cursor = &mut *table;
        for (i, key) in path.iter().enumerate() {
            if i + 1 == path.len() {
                cursor.insert(key.clone(), parsed.clone());
                break;
            }
            let next = cursor
                .entry(key.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            cursor = next.as_table_mut().ok_or_else(|| ConfigError::Env {
                var: var.clone(),
                reason: format!("`{key}` is not a table"),
            })?;
        }
    }
    Ok(())
}

fn parse_env_value(value: &str) -> toml::Value {
    format!("v = {value}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_owned()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    const MINIMAL: &str = r#"
        [store]
        sites = ["STO1"]
        [[lanes.credentials]]
        username = "pos"
        password = "secret"
    "#;

    #[test]
    fn embedded_default_config_is_valid() {
        let c = Config::from_toml_str(DEFAULT_CONFIG_TOML).unwrap();
        assert_eq!(c.database.synchronous, Synchronous::Full);
    }

    #[test]
    fn unknown_key_is_named() {
        let err =
            Config::from_toml_str(&format!("{MINIMAL}\n[database]\npaht = \"x\"")).unwrap_err();
        assert!(err.to_string().contains("paht"), "{err}");
    }

    #[test]
    fn invalid_value_names_the_key() {
        let err = Config::from_toml_str(
            &MINIMAL.replace("[store]", "[store]\ntime_zone = \"Mars/Base\""),
        )
        .unwrap_err();
        assert!(err.to_string().contains("store.time_zone"), "{err}");
        let err = Config::from_toml_str("[store]\nsites = [\"A\"]").unwrap_err();
        assert!(err.to_string().contains("lanes.credentials"), "{err}");
    }

    #[test]
    fn env_overrides_and_conf_d() {
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("edge.toml");
        std::fs::write(&main, MINIMAL).unwrap();
        std::fs::create_dir(dir.path().join("conf.d")).unwrap();
        std::fs::write(
            dir.path().join("conf.d/10-region.toml"),
            "[lanes]\nhold_ttl_secs = 60\n",
        )
        .unwrap();
        let env = vec![
            ("EDGE_LANES__PASSWORD".to_owned(), "from-env".to_owned()),
            ("EDGE_DATABASE__READ_POOL_SIZE".to_owned(), "3".to_owned()),
            ("EDGE_DATABASE__PATH".to_owned(), "/tmp/x.db".to_owned()),
        ];
        let c = Config::load_with_env(&main, &env).unwrap();
        assert_eq!(c.lanes.hold_ttl_secs, 60);
        assert_eq!(c.lanes.credentials[0].password.expose(), "from-env");
        assert_eq!(c.database.read_pool_size, 3);
        assert_eq!(c.database.path, PathBuf::from("/tmp/x.db"));
        assert!(
            !format!("{c:?}").contains("from-env"),
            "secrets are redacted in Debug"
        );
    }
}
