//! Configuration: one TOML file (`--config`), then every `*.toml` in its `conf.d/`
//! directory in name order (regional overrides), then `EDGE_SECTION__KEY` environment
//! variables (for secrets). Parsed into types once, validated, and passed explicitly.
//! Every key and its default is documented in `packaging/edge-coupon.toml`, which is
//! embedded here and printed by `edge-server print-default-config`.

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
    /// A value of the wrong type or form, or an unknown key: `key` is its dotted path
    /// (`server.workers`, `lanes.credentials[0].password`).
    #[error("config key `{key}`{} is invalid: {message}", set_in(.origin))]
    Shape {
        key: String,
        origin: Option<String>,
        message: String,
    },
    #[error("config key `{key}`{} is invalid: {reason}", set_in(.origin))]
    Invalid {
        key: &'static str,
        reason: String,
        /// The file or environment variable that set the key, when loaded from several.
        origin: Option<String>,
    },
    #[error("environment variable {var} cannot be applied: {reason}")]
    Env { var: String, reason: String },
}

/// The lane password of the shipped example configuration (`packaging/edge-coupon.toml`).
pub const PACKAGED_LANE_PASSWORD: &str = "change-me";

/// Whether an `http://` URL names this machine (a local simulator or proxy).
fn is_loopback_url(url: &str) -> bool {
    let host = url
        .trim_start_matches("http://")
        .split(['/', '?'])
        .next()
        .unwrap_or_default();
    let host = match host.rsplit_once(':') {
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
        _ => host,
    };
    host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn set_in(origin: &Option<String>) -> String {
    origin
        .as_ref()
        .map(|o| format!(" (set in {o})"))
        .unwrap_or_default()
}

impl ConfigError {
    /// Names the file or environment variable that set the key at fault, when it is known.
    fn located(mut self, layers: &Layers) -> ConfigError {
        match &mut self {
            ConfigError::Shape { key, origin, .. } => *origin = layers.origin_of(key),
            ConfigError::Invalid { key, origin, .. } => *origin = layers.origin_of(key),
            _ => {}
        }
        self
    }
}

/// The sources a configuration was merged from, in the order they were applied (the main
/// file, `conf.d/*.toml`, the environment): to say which one set a key.
#[derive(Default)]
struct Layers {
    files: Vec<(PathBuf, toml::Table)>,
    /// (variable, the dotted key path it sets).
    env: Vec<(String, String)>,
}

impl Layers {
    /// The last source that sets `key` (a dotted path, `[i]` for list items).
    fn origin_of(&self, key: &str) -> Option<String> {
        let sets = |k: &str| k == key || k.strip_prefix(key).is_some_and(|r| r.starts_with('.'));
        if let Some((var, _)) = self.env.iter().rev().find(|(_, k)| sets(k)) {
            return Some(format!("environment variable {var}"));
        }
        self.files
            .iter()
            .rev()
            .find(|(_, table)| lookup(table, key))
            .map(|(path, _)| path.display().to_string())
    }
}

/// Whether `table` holds the dotted `key` (`lanes.credentials[0].password`).
fn lookup(table: &toml::Table, key: &str) -> bool {
    let mut value: Option<&toml::Value> = None;
    for segment in key.split('.') {
        let (name, index) = match segment.split_once('[') {
            Some((name, rest)) => (name, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (segment, None),
        };
        let t = match value {
            None => Some(table),
            Some(v) => v.as_table(),
        };
        value = t.and_then(|t| t.get(name));
        if let Some(i) = index {
            value = value.and_then(|v| v.as_array()).and_then(|a| a.get(i));
        }
        if value.is_none() {
            return false;
        }
    }
    true
}

/// The dotted key path an `EDGE_…` variable sets, if it is one.
fn env_key(var: &str) -> Option<String> {
    let rest = var.strip_prefix("EDGE_")?;
    if !rest.contains("__") {
        return None;
    }
    let path: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
    if path == ["lanes", "password"] || path == ["lanes", "username"] {
        return Some(format!("lanes.credentials[0].{}", path[1]));
    }
    Some(path.join("."))
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
    /// The store health listener for store and regional IT (separate port and credentials).
    #[serde(default)]
    pub admin: AdminConfig,
    /// The upstream coupon providers the sync daemon talks to.
    #[serde(default)]
    pub providers: ProvidersConfig,
    /// How the sync daemon delivers the outbox.
    #[serde(default)]
    pub outbox: OutboxConfig,
    /// Pricing rules for provider coupons, pushed by regional IT.
    #[serde(default)]
    pub offer_rules: Vec<OfferRuleConfig>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Address of the health listener (`/metrics`, `/status`, `/status.json`).
    pub listen: SocketAddr,
    /// Basic-auth credentials of store and regional IT. Empty password = no admin listener.
    pub username: String,
    pub password: Secret,
    /// Serve plain HTTP instead of HTTPS with the lanes' certificate.
    pub plain_http: bool,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 9443)),
            username: "admin".to_owned(),
            password: Secret::default(),
            plain_http: false,
        }
    }
}

impl AdminConfig {
    pub fn enabled(&self) -> bool {
        !self.password.expose().is_empty()
    }
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ProvidersConfig {
    pub convercus: ConvercusConfig,
    pub coupontools: CoupontoolsConfig,
    pub koupon: KouponConfig,
}

impl ProvidersConfig {
    /// Whether the provider of that name is switched on.
    pub fn enabled(&self, provider: &str) -> bool {
        match provider {
            "convercus" => self.convercus.enabled,
            "coupontools" => self.coupontools.enabled,
            "koupon" => self.koupon.enabled,
            _ => false,
        }
    }
}

/// Convercus authentication scheme (convercus.md §2).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ConvercusAuth {
    /// `POST /auth/login` with org, user name and password; a 24 h JWT.
    Legacy,
    /// OAuth client credentials against the program's Keycloak token URL.
    Oauth,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ConvercusConfig {
    pub enabled: bool,
    pub base_url: String,
    pub auth: ConvercusAuth,
    /// OAuth only: the realm's token URL.
    pub token_url: String,
    pub org: String,
    pub username: String,
    pub password: Secret,
    pub client_id: String,
    pub client_secret: Secret,
    /// Prefix of the `Authorization` value: "" sends the bare token (legacy examples),
    /// "Bearer" for OAuth. "auto" picks by `auth`.
    pub auth_prefix: String,
    /// Legacy tokens live 24 h: log in again after this many seconds, or at 80 % of the
    /// token's own lifetime when its JWT `exp` is sooner. OAuth tokens are renewed at 80 %
    /// of their `expires_in`.
    pub token_refresh_secs: u64,
    /// `interaction-id` header: this store's interaction point registered at Convercus.
    pub interaction_id: String,
    /// `id-type`s tried, in order, to find the account of a lane's customer id (a card
    /// number, an app code or an external code): CARDCODE, APPCODE, EXTERNALCODE, ID.
    pub customer_id_types: Vec<String>,
    /// Language of `i18nFields` used for coupon titles (falls back to any).
    pub language: String,
    /// Cron schedule (sec min hour day month weekday) of the customer coupon list pull.
    pub schedule: String,
    /// Pull at the daemon's start when the last successful pull is older than the
    /// schedule's period, or there was none (a new store, or the daemon was down), rather
    /// than wait for the next scheduled time.
    pub pull_at_start: bool,
    /// Customer ids (card codes) to pull besides every customer seen at this store.
    pub customers: Vec<String>,
    /// Accounts fetched at the same time during a pull.
    pub pull_concurrency: usize,
    pub timeout_ms: u64,
    /// edge-server: when a lane asks for the coupons of a card never seen at this store, or
    /// sends an update for it, the card is looked up at Convercus (account, memberships,
    /// user, account coupons), and the lane waits for it this many milliseconds at most
    /// (0 = never looked up). A look-up that takes longer still completes and is stored for
    /// the lane's next request. After a failed look-up none is tried for
    /// `read_through_pause_secs`.
    pub read_through_ms: u64,
    pub read_through_pause_secs: u64,
    /// Requests a second at most, over pulls, deliveries and probes together (spaced
    /// evenly, no burst). convercus.md §5: "[ASSUME] ≤ 10 req/s per store".
    pub max_requests_per_sec: f64,
    /// A 429 or 503 answer's `Retry-After` pauses every call to the provider until then,
    /// but never longer than this many seconds.
    pub max_retry_after_secs: u64,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CoupontoolsConfig {
    pub enabled: bool,
    /// API base ending in `/v3/`.
    pub base_url: String,
    pub client_id: String,
    pub client_secret: Secret,
    /// Campaigns (`cam_…`) whose claimed sessions are pulled as vouchers.
    pub campaigns: Vec<String>,
    /// Cron schedule of the catalog and claimed-session pull.
    pub schedule: String,
    /// Pull at the daemon's start when the last successful pull is older than the
    /// schedule's period, or there was none (a new store, or the daemon was down), rather
    /// than wait for the next scheduled time.
    pub pull_at_start: bool,
    /// Records per page of `campaign/claims` (Coupontools pages by 5000).
    pub page_size: usize,
    /// Session pulls are incremental (`start_date` = the last successful pull's start less
    /// `pull_overlap_secs`, claims and validations since then); a full pull runs first
    /// and then whenever none ran for this many hours (0 = every pull is full).
    pub full_pull_hours: u64,
    pub pull_overlap_secs: u64,
    /// Name of the update action parameter (coupontools.md §3.5 [GAP]).
    pub action_param: String,
    /// Its values for a lock, an unlock and a validation (§3.5 [GAP], kept in config).
    pub lock_action: String,
    pub unlock_action: String,
    pub validate_action: String,
    /// Keys under which a `campaign/*` answer's session list is looked for, in order (its
    /// shape is a coupontools.md §3.3 [GAP]); a bare JSON array is read as the list too.
    pub session_list_keys: Vec<String>,
    /// Allowed clock difference when deciding whether a validation found upstream is ours.
    pub clock_skew_secs: i64,
    pub timeout_ms: u64,
    /// The `couponsession/search` parameter that carries a retailer's own validation code
    /// (coupontools.md §3.7, names a [GAP]); empty = read-through never searches.
    pub search_param: String,
    /// edge-server: a voucher code the store has never seen is looked up at Coupontools
    /// within this many milliseconds (0 = never). After a failed or slow look-up, none is
    /// tried for `read_through_pause_secs`, so an unreachable provider costs the lanes nothing.
    pub read_through_ms: u64,
    pub read_through_pause_secs: u64,
    /// Requests a second at most, over pulls, deliveries and probes together (spaced
    /// evenly, no burst). coupontools.md §2: "≤ 5 requests/s per store".
    pub max_requests_per_sec: f64,
    /// A 429 or 503 answer's `Retry-After` pauses every call to the provider until then,
    /// but never longer than this many seconds.
    pub max_retry_after_secs: u64,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct KouponConfig {
    pub enabled: bool,
    /// Store Connect host (redeem, report).
    pub storeconnect_url: String,
    /// Management host (offer list).
    pub management_url: String,
    /// The `identifier` of every signed URL: kept out of `Debug` like the secret.
    pub api_key: Secret,
    pub secret: Secret,
    /// Koupon's id of this store: `storeId` in the query of redeem and report calls,
    /// `storeid` of the offer list; omitted when empty. URL-safe characters only.
    pub store_id: String,
    /// Cron schedule of the offer list pull.
    pub schedule: String,
    /// Pull at the daemon's start when the last successful pull is older than the
    /// schedule's period, or there was none (a new store, or the daemon was down), rather
    /// than wait for the next scheduled time.
    pub pull_at_start: bool,
    pub timeout_ms: u64,
    /// What a redemption of a customer's coupon names as `discountAsset` (koupon.md §3.2).
    pub redeem_as: KouponRedeemAs,
    /// The signed URL's open details (koupon.md §2 [GAP]), each a switch.
    pub signature: KouponSignature,
    pub signature_encoding: KouponEncoding,
    pub timestamp_unit: TimestampUnit,
    /// An `exceptionCode` that, on a retry after an unknown outcome, is taken as our
    /// earlier attempt having been recorded (e.g. "ALREADY_REDEEMED"). Empty (default) =
    /// never: koupon.md §7 "treat any non-empty as not redeemed" (values are a [GAP]).
    pub retry_redeemed_code: String,
    /// Requests a second at most, over pulls, deliveries and probes together (spaced
    /// evenly, no burst). koupon.md names no limit: 5, like Coupontools.
    pub max_requests_per_sec: f64,
    /// A 429 or 503 answer's `Retry-After` pauses every call to the provider until then,
    /// but never longer than this many seconds.
    pub max_retry_after_secs: u64,
}

/// How the URL is signed with the Secret Key (koupon.md §2).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum KouponSignature {
    /// HMAC-SHA1 keyed by the secret (the reference's default).
    HmacSha1,
    /// Plain SHA-1 of the URL followed by the secret.
    Sha1,
}

/// How the signature is written into the query.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum KouponEncoding {
    /// Lowercase hex (the reference's default).
    Hex,
    /// Standard base64, percent-encoded.
    Base64,
}

/// The unit of the signed `timestamp`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TimestampUnit {
    Seconds,
    Milliseconds,
}

/// How a customer's Koupon coupon is reported redeemed (koupon.md §3.2): `discountAsset` is
/// either the Loyalty ID scanned at the POS, with the offer's code as `couponCode`, or the
/// offer's own barcode, without a `couponCode`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum KouponRedeemAs {
    /// `discountAsset` = the customer's loyalty id (else their card), `couponCode` = the
    /// offer's Koupon `offerId` (its `externalId`; else its providerRef).
    LoyaltyId,
    /// `discountAsset` = the offer barcode (the coupon's providerRef), no `couponCode`.
    OfferBarcode,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OutboxConfig {
    /// Items delivered at the same time (across ordering keys and providers).
    pub concurrency: usize,
    /// Seconds an item stays claimed by a worker; a crashed worker's items come back after.
    pub lease_secs: u64,
    /// How often the worker looks for due items when it has nothing to do, ms.
    pub poll_ms: u64,
    /// Backoff after a transient failure: base * 2^(attempt-1), capped, with jitter.
    pub backoff_base_secs: u64,
    pub backoff_cap_secs: u64,
    pub jitter_percent: u64,
    /// Consecutive transient failures that open a provider's circuit breaker.
    pub breaker_threshold: u32,
    /// Seconds between probes of a provider whose breaker is open.
    pub breaker_probe_secs: u64,
    /// Delivered items are deleted after this many days.
    pub retention_days: u64,
}

/// A pricing rule for one provider coupon (or a whole Coupontools campaign).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OfferRuleConfig {
    /// `convercus`, `coupontools` or `koupon`.
    pub provider: String,
    /// Convercus `externalReference` or `couponId`, Coupontools campaign id, Koupon offerId.
    pub reference: String,
    /// What the lanes and the catalog show.
    #[serde(default)]
    pub description: Option<String>,
    pub rule: crate::domain::Rule,
    /// Redemptions per customer (None = the provider's own limit).
    #[serde(default)]
    pub per_customer_limit: Option<u32>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// Site ids the lanes send as `site`; any other site gets INVALID_SITE.
    pub sites: Vec<String>,
    /// IANA time zone of the store, used for coupon validity windows.
    #[serde(default = "default_tz")]
    pub time_zone: String,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
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
    /// that under heavy load more writes share one fsync. 0 = commit at once (writes that
    /// queue during a commit still share the next one).
    pub group_commit_linger_us: u64,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    Full,
    Normal,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// HTTP worker threads; 0 = one per core.
    pub workers: usize,
    /// Largest accepted request body in bytes (larger gets 413).
    pub max_body_bytes: usize,
    /// Seconds an idle lane connection is kept open for its next request; 0 closes each
    /// connection after its answer. Longer than the lanes' own idle limit (Java's HTTP client
    /// drops an idle connection after 5 s), so the lane, not the server, closes it: a server
    /// that closes first may do so just as the lane sends its next request on it.
    pub keep_alive_secs: u64,
    /// Serve plain HTTP instead of HTTPS. CATAPULT requires HTTPS: only for tests behind a
    /// TLS-terminating proxy.
    pub plain_http: bool,
    pub tls: TlsConfig,
    /// Directory of coupon images served at `/images/<file>`.
    pub image_dir: PathBuf,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Generate a self-signed certificate at `cert`/`key` when they do not exist yet.
    pub generate_self_signed: bool,
    /// Host names put into a generated certificate.
    pub self_signed_names: Vec<String>,
    /// Also name the machine's host name and the addresses lanes can reach it at (every
    /// interface's when `server.listen` is unspecified, else the listen address) in a
    /// generated certificate: the POS's Java client checks the name it connects to.
    pub self_signed_local_names: bool,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
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
    /// Mirror of the POS `useExternalImages` setting. `false` (the POS default): the POS
    /// fetches base URL + `imageUrl`, so only images this server serves are advertised (the
    /// sync daemon caches provider images under `server.image_dir`). `true`: the POS uses
    /// `imageUrl` as it is: provider images are advertised by their absolute URL, this
    /// server's own by the scheme and host the lane reached it by plus their path.
    pub use_external_images: bool,
    /// Whether a commit answer names the listed coupons it could not redeem (CATAPULT §5.15:
    /// `COUPON_NOT_FOUND` per unknown id, `COUPON_UNAVAILABLE` per id used elsewhere or
    /// expired, `INVALID_TRANSACTION` for a sale never seen here
    /// that lists coupons it cannot redeem). The sale is recorded and answered 200 either
    /// way; `None` leaves `errors` out, for a POS that would retry a commit answered so.
    pub commit_errors: CommitErrors,
    /// Days a sale (its last update, commit answer and redemption log) is kept after it was
    /// last touched; the sync daemon deletes older ones hourly, in short transactions.
    pub sales_retention_days: u64,
    /// Days a voucher is kept after its validity ended (`valid_until`); the sync daemon
    /// deletes older ones hourly, and pulls no longer store them.
    pub voucher_retention_days: u64,
    /// Extra paths (aliases) per operation; the built-in primary path and aliases always work.
    pub route_aliases: RouteAliases,
    /// The path part of the lanes' base URL (CATAPULT's `com.ecrsoft.tserver.genericcoup.url`
    /// may hold "scheme + host + optional path prefix"), e.g. `/catapult` for
    /// `https://edge:8443/catapult/`. Requests under it are served as if it were not there;
    /// requests without it are served as well. Empty: no prefix.
    pub path_prefix: String,
}

/// What a commit answer says about listed coupons it could not redeem (`lanes.commit_errors`).
#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CommitErrors {
    /// `errors` names unknown and unredeemable coupons, and a sale never seen here.
    #[default]
    Report,
    /// No `errors` in commit answers (the problems are still logged and flagged for IT).
    None,
}

impl ProvidersConfig {
    /// `providers.<provider>.pull_at_start`.
    pub fn pull_at_start(&self, provider: &str) -> bool {
        match provider {
            "convercus" => self.convercus.pull_at_start,
            "coupontools" => self.coupontools.pull_at_start,
            "koupon" => self.koupon.pull_at_start,
            _ => false,
        }
    }
}

/// Whether validation insists on provider secrets (the services) or not (`edge-ctl`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Secrets {
    Required,
    NotNeeded,
}

#[derive(Debug, Clone, Deserialize, Default, PartialEq)]
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

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Credential {
    pub username: String,
    pub password: Secret,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
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
            checkpoint_interval_ms: 50,
            group_commit_linger_us: 0,
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 8443)),
            workers: 0,
            max_body_bytes: 256 * 1024,
            keep_alive_secs: 75,
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
            self_signed_local_names: true,
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
            use_external_images: false,
            commit_errors: CommitErrors::Report,
            sales_retention_days: 90,
            voucher_retention_days: 90,
            receipt_footer: "Digital coupons saved you {total}".to_owned(),
            route_aliases: RouteAliases::default(),
            path_prefix: String::new(),
        }
    }
}

impl Default for ConvercusConfig {
    fn default() -> Self {
        ConvercusConfig {
            enabled: false,
            base_url: "https://api.convercus.io".to_owned(),
            auth: ConvercusAuth::Legacy,
            token_url: String::new(),
            org: String::new(),
            username: String::new(),
            password: Secret::default(),
            client_id: "machine-2-machine".to_owned(),
            client_secret: Secret::default(),
            auth_prefix: "auto".to_owned(),
            token_refresh_secs: 20 * 3600,
            interaction_id: "edge".to_owned(),
            customer_id_types: vec![
                "CARDCODE".to_owned(),
                "APPCODE".to_owned(),
                "EXTERNALCODE".to_owned(),
            ],
            language: "en".to_owned(),
            schedule: "0 */15 * * * *".to_owned(),
            pull_at_start: true,
            customers: Vec::new(),
            pull_concurrency: 4,
            timeout_ms: 10_000,
            read_through_ms: 500,
            read_through_pause_secs: 30,
            max_requests_per_sec: 10.0,
            max_retry_after_secs: 120,
        }
    }
}

impl Default for CoupontoolsConfig {
    fn default() -> Self {
        CoupontoolsConfig {
            enabled: false,
            base_url: "https://api.coupontools.com/v3/".to_owned(),
            client_id: String::new(),
            client_secret: Secret::default(),
            campaigns: Vec::new(),
            schedule: "0 */5 * * * *".to_owned(),
            pull_at_start: true,
            page_size: 5000,
            full_pull_hours: 24,
            pull_overlap_secs: 900,
            action_param: "action".to_owned(),
            lock_action: "lock".to_owned(),
            unlock_action: "unlock".to_owned(),
            validate_action: "validate".to_owned(),
            session_list_keys: ["sessions", "data", "items", "results", "couponsessions"]
                .map(str::to_owned)
                .to_vec(),
            clock_skew_secs: 300,
            timeout_ms: 10_000,
            search_param: "own_validation_code".to_owned(),
            read_through_ms: 300,
            read_through_pause_secs: 30,
            max_requests_per_sec: 5.0,
            max_retry_after_secs: 120,
        }
    }
}

impl Default for KouponConfig {
    fn default() -> Self {
        KouponConfig {
            enabled: false,
            storeconnect_url: "https://storeconnect.kouponmedia.com".to_owned(),
            management_url: "https://management.kouponmedia.com".to_owned(),
            api_key: Secret::default(),
            secret: Secret::default(),
            store_id: String::new(),
            schedule: "0 0 * * * *".to_owned(),
            pull_at_start: true,
            timeout_ms: 10_000,
            redeem_as: KouponRedeemAs::LoyaltyId,
            signature: KouponSignature::HmacSha1,
            signature_encoding: KouponEncoding::Hex,
            timestamp_unit: TimestampUnit::Seconds,
            retry_redeemed_code: String::new(),
            max_requests_per_sec: 5.0,
            max_retry_after_secs: 120,
        }
    }
}

impl Default for OutboxConfig {
    fn default() -> Self {
        OutboxConfig {
            concurrency: 4,
            lease_secs: 120,
            poll_ms: 250,
            backoff_base_secs: 2,
            backoff_cap_secs: 600,
            jitter_percent: 20,
            breaker_threshold: 3,
            breaker_probe_secs: 15,
            retention_days: 14,
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

    /// Loads the configuration as [`Config::load`] does, for tools that never call a provider
    /// (`edge-ctl`): provider secrets the services get from their own environment (a
    /// systemd drop-in) need not be set in the shell that runs the tool.
    pub fn load_for_tools(path: &Path) -> Result<Config, ConfigError> {
        let env: Vec<(String, String)> = std::env::vars().collect();
        Self::load_layers(path, &env, Secrets::NotNeeded)
    }

    pub fn load_with_env(path: &Path, env: &[(String, String)]) -> Result<Config, ConfigError> {
        Self::load_layers(path, env, Secrets::Required)
    }

    fn load_layers(
        path: &Path,
        env: &[(String, String)],
        secrets: Secrets,
    ) -> Result<Config, ConfigError> {
        let mut merged = read_table(path)?;
        let mut layers = Layers::default();
        layers.files.push((path.to_owned(), merged.clone()));
        let conf_d = path.parent().unwrap_or(Path::new(".")).join("conf.d");
        if let Ok(entries) = std::fs::read_dir(&conf_d) {
            let mut files: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                .collect();
            files.sort();
            for f in files {
                let table = read_table(&f)?;
                layers.files.push((f, table.clone()));
                merge(&mut merged, table);
            }
        }
        apply_env(&mut merged, env)?;
        layers.env = env
            .iter()
            .filter_map(|(var, _)| env_key(var).map(|k| (var.clone(), k)))
            .collect();
        Self::from_table_checked(merged, secrets).map_err(|e| e.located(&layers))
    }

    /// Validates a `conf.d/` fragment (e.g. a regional config package) the way the daemons
    /// will see it: merged over the default configuration, then the full validation, but
    /// without the provider secrets, which each store should get from its own environment
    /// or a local file rather than from a package copied from store to store.
    pub fn check_fragment(text: &str) -> Result<Config, ConfigError> {
        let over: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::Syntax {
                path: PathBuf::from("<fragment>"),
                message: syntax_message(&e, text),
            })?;
        let mut base: toml::Table =
            DEFAULT_CONFIG_TOML
                .parse()
                .map_err(|e: toml::de::Error| ConfigError::Syntax {
                    path: PathBuf::from("<default config>"),
                    message: e.to_string(),
                })?;
        merge(&mut base, over);
        Self::from_table_checked(base, Secrets::NotNeeded)
    }

    /// The keys of a fragment that hold a secret with a value (`providers.koupon.secret`),
    /// so a tool can warn before it packages them.
    pub fn secret_keys(text: &str) -> Vec<String> {
        fn walk(prefix: &str, table: &toml::Table, out: &mut Vec<String>) {
            for (k, v) in table {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                match v {
                    toml::Value::Table(t) => walk(&key, t, out),
                    toml::Value::Array(a) => {
                        for (i, x) in a.iter().enumerate() {
                            if let toml::Value::Table(t) = x {
                                walk(&format!("{key}[{i}]"), t, out);
                            }
                        }
                    }
                    toml::Value::String(s) if !s.is_empty() && is_secret_key(&key) => {
                        out.push(key);
                    }
                    _ => {}
                }
            }
        }
        let mut out = Vec::new();
        if let Ok(table) = text.parse::<toml::Table>() {
            walk("", &table, &mut out);
        }
        out
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
        Self::from_table_checked(table, Secrets::Required)
    }

    fn from_table_checked(table: toml::Table, secrets: Secrets) -> Result<Config, ConfigError> {
        let config: Config =
            serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
                let message = e.inner().message().to_owned();
                let mut key = e.path().to_string();
                // An unknown key may be reported at the table that holds it: name the key.
                if let Some(field) = message
                    .strip_prefix("unknown field `")
                    .and_then(|rest| rest.split_once('`'))
                    .map(|(field, _)| field)
                    .filter(|field| key != *field && !key.ends_with(&format!(".{field}")))
                {
                    key = if key == "." {
                        field.to_owned()
                    } else {
                        format!("{key}.{field}")
                    };
                }
                let message = if is_secret_key(&key) {
                    without_value(&message)
                } else {
                    message
                };
                ConfigError::Shape {
                    key,
                    origin: None,
                    message,
                }
            })?;
        config.validate(secrets)?;
        Ok(config)
    }

    /// Advice about a configuration that is valid but unsafe or unusual, for the log at start
    /// and for `check-config`: each names the key and what to do.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self
            .lanes
            .credentials
            .iter()
            .any(|c| c.password.expose() == PACKAGED_LANE_PASSWORD)
        {
            out.push(format!(
                "lanes.credentials: a lane password is still the packaged default \"{PACKAGED_LANE_PASSWORD}\": anyone on the store network can call the lanes' API; set your own (and the same in CATAPULT's com.ecrsoft.tserver.genericcoup.password)"
            ));
        }
        let p = &self.providers;
        let urls = [
            (
                p.convercus.enabled,
                "providers.convercus.base_url",
                &p.convercus.base_url,
            ),
            (
                p.coupontools.enabled,
                "providers.coupontools.base_url",
                &p.coupontools.base_url,
            ),
            (
                p.koupon.enabled,
                "providers.koupon.storeconnect_url",
                &p.koupon.storeconnect_url,
            ),
            (
                p.koupon.enabled,
                "providers.koupon.management_url",
                &p.koupon.management_url,
            ),
        ];
        for (enabled, key, url) in urls {
            if enabled && url.starts_with("http://") && !is_loopback_url(url) {
                out.push(format!(
                    "{key}: `{url}` is plain HTTP to another host: credentials and redemptions travel unencrypted; use https://"
                ));
            }
        }
        out
    }

    fn validate(&self, secrets: Secrets) -> Result<(), ConfigError> {
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
        if self.server.keep_alive_secs > 3600 {
            return Err(invalid(
                "server.keep_alive_secs",
                "must be at most 3600 (one hour); 0 closes each connection after its answer",
            ));
        }
        if self.lanes.credentials.is_empty() {
            return Err(invalid(
                "lanes.credentials",
                "configure at least one username/password pair for the lanes",
            ));
        }
        for (i, c) in self.lanes.credentials.iter().enumerate() {
            if c.username.is_empty() || c.password.expose().is_empty() {
                return Err(invalid(
                    "lanes.credentials",
                    "username and password must not be empty",
                ));
            }
            // Two passwords for one user would both be let in: a forgotten old block.
            if self.lanes.credentials[..i]
                .iter()
                .any(|other| other.username == c.username)
            {
                return Err(invalid(
                    "lanes.credentials",
                    format!(
                        "username `{}` is configured more than once: keep one block per user",
                        c.username
                    ),
                ));
            }
        }
        if self.lanes.hold_ttl_secs == 0 {
            return Err(invalid("lanes.hold_ttl_secs", "must be at least 1"));
        }
        if !(31..=36_500).contains(&self.lanes.sales_retention_days) {
            return Err(invalid(
                "lanes.sales_retention_days",
                "must be between 31 (the lanes see 30 days of history) and 36500",
            ));
        }
        if !(1..=36_500).contains(&self.lanes.voucher_retention_days) {
            return Err(invalid(
                "lanes.voucher_retention_days",
                "must be between 1 and 36500",
            ));
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
        let prefix = &self.lanes.path_prefix;
        if !prefix.is_empty()
            && (!prefix.starts_with('/')
                || !prefix
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '-' | '.' | '_' | '~'))
                || prefix.split('/').any(|s| s == "." || s == ".."))
        {
            return Err(invalid(
                "lanes.path_prefix",
                format!("`{prefix}` must be empty or a path such as \"/catapult\": a leading '/', then letters, digits and - . _ ~ (no query, no '..')"),
            ));
        }
        if self.admin.enabled() && self.admin.username.is_empty() {
            return Err(invalid(
                "admin.username",
                "set a user name for the admin password",
            ));
        }
        if self.admin.enabled() && self.admin.listen == self.server.listen {
            return Err(invalid(
                "admin.listen",
                "must differ from server.listen (the lanes' port)",
            ));
        }
        self.validate_sync(secrets)?;
        if log_level(&self.logging.level).is_none() {
            return Err(invalid(
                "logging.level",
                "use one of error, warn, info, debug, trace",
            ));
        }
        Ok(())
    }

    fn validate_sync(&self, secrets: Secrets) -> Result<(), ConfigError> {
        let need_secrets = secrets == Secrets::Required;
        let p = &self.providers;
        let schedules = [
            ("providers.convercus.schedule", &p.convercus.schedule),
            ("providers.coupontools.schedule", &p.coupontools.schedule),
            ("providers.koupon.schedule", &p.koupon.schedule),
        ];
        for (key, expr) in schedules {
            parse_schedule(expr).map_err(|reason| invalid(key, reason))?;
        }
        let urls = [
            ("providers.convercus.base_url", &p.convercus.base_url),
            ("providers.coupontools.base_url", &p.coupontools.base_url),
            (
                "providers.koupon.storeconnect_url",
                &p.koupon.storeconnect_url,
            ),
            ("providers.koupon.management_url", &p.koupon.management_url),
        ];
        for (key, url) in urls {
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                return Err(invalid(key, format!("`{url}` must start with https://")));
            }
        }
        let c = &p.convercus;
        if c.enabled {
            match c.auth {
                ConvercusAuth::Legacy if c.org.is_empty() || c.username.is_empty() => {
                    return Err(invalid(
                        "providers.convercus.username",
                        "legacy login needs org, username and password",
                    ))
                }
                ConvercusAuth::Oauth if c.token_url.is_empty() => {
                    return Err(invalid(
                        "providers.convercus.token_url",
                        "OAuth needs the realm's token URL",
                    ))
                }
                _ => {}
            }
            if need_secrets {
                // OAuth sends the client secret, and the password too with the password grant.
                let missing = match c.auth {
                    ConvercusAuth::Legacy => c.password.expose().is_empty().then_some((
                        "providers.convercus.password",
                        "legacy login needs a password: set it here or in EDGE_PROVIDERS__CONVERCUS__PASSWORD",
                    )),
                    ConvercusAuth::Oauth if c.client_secret.expose().is_empty() => Some((
                        "providers.convercus.client_secret",
                        "OAuth needs the client secret: set it here or in EDGE_PROVIDERS__CONVERCUS__CLIENT_SECRET",
                    )),
                    ConvercusAuth::Oauth if !c.username.is_empty() && c.password.expose().is_empty() => Some((
                        "providers.convercus.password",
                        "the password grant (username is set) needs a password: set it here or in EDGE_PROVIDERS__CONVERCUS__PASSWORD",
                    )),
                    ConvercusAuth::Oauth => None,
                };
                if let Some((key, reason)) = missing {
                    return Err(invalid(key, reason));
                }
            }
            if c.interaction_id.is_empty() {
                return Err(invalid(
                    "providers.convercus.interaction_id",
                    "set this store's interaction point registered at Convercus",
                ));
            }
        }
        if c.customer_id_types.is_empty()
            || c.customer_id_types
                .iter()
                .any(|t| !["CARDCODE", "APPCODE", "EXTERNALCODE", "ID"].contains(&t.as_str()))
        {
            return Err(invalid(
                "providers.convercus.customer_id_types",
                "list one or more of CARDCODE, APPCODE, EXTERNALCODE, ID",
            ));
        }
        if !["auto", "", "Bearer"].contains(&c.auth_prefix.as_str()) {
            return Err(invalid(
                "providers.convercus.auth_prefix",
                "use \"auto\", \"\" or \"Bearer\"",
            ));
        }
        if c.token_refresh_secs < 60 {
            return Err(invalid(
                "providers.convercus.token_refresh_secs",
                "must be at least 60",
            ));
        }
        if c.pull_concurrency == 0 || c.pull_concurrency > 32 {
            return Err(invalid(
                "providers.convercus.pull_concurrency",
                "must be between 1 and 32",
            ));
        }
        let t = &p.coupontools;
        if need_secrets
            && t.enabled
            && (t.client_id.is_empty() || t.client_secret.expose().is_empty())
        {
            return Err(invalid(
                "providers.coupontools.client_id",
                "set client_id and client_secret",
            ));
        }
        if let Some(bad) = t.campaigns.iter().find(|c| {
            !(c.starts_with("cam_")
                && c.len() > 4
                && c[4..].chars().all(|x| x.is_ascii_alphanumeric()))
        }) {
            return Err(invalid(
                "providers.coupontools.campaigns",
                format!("`{bad}` is not a campaign id like cam_100001"),
            ));
        }
        if p.convercus.read_through_ms > 2000 {
            return Err(invalid(
                "providers.convercus.read_through_ms",
                "must be at most 2000: a lane waits this long for a card never seen here",
            ));
        }
        if t.read_through_ms > 2000 {
            return Err(invalid(
                "providers.coupontools.read_through_ms",
                "must be at most 2000: a lane waits this long for an unknown voucher",
            ));
        }
        if t.page_size == 0 {
            return Err(invalid(
                "providers.coupontools.page_size",
                "must be at least 1",
            ));
        }
        if t.session_list_keys.iter().any(|k| k.trim().is_empty()) {
            return Err(invalid(
                "providers.coupontools.session_list_keys",
                "must not hold an empty key",
            ));
        }
        for (key, value) in [
            ("providers.coupontools.action_param", &t.action_param),
            ("providers.coupontools.lock_action", &t.lock_action),
            ("providers.coupontools.unlock_action", &t.unlock_action),
            ("providers.coupontools.validate_action", &t.validate_action),
        ] {
            if value.trim().is_empty() {
                return Err(invalid(key, "must not be empty"));
            }
        }
        let k = &p.koupon;
        if need_secrets
            && k.enabled
            && (k.api_key.expose().is_empty() || k.secret.expose().is_empty())
        {
            return Err(invalid(
                "providers.koupon.api_key",
                "set api_key and secret",
            ));
        }
        // Both go into the signed URL as they are (koupon.md §2): only characters that need
        // no percent-encoding, so the URL signed is the URL sent.
        for (key, value) in [
            ("providers.koupon.api_key", k.api_key.expose()),
            ("providers.koupon.store_id", k.store_id.as_str()),
        ] {
            if !value
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || "-._~".contains(ch))
            {
                return Err(invalid(
                    key,
                    "use only letters, digits and - . _ ~ (it goes into the signed URL as is)",
                ));
            }
        }
        for (key, ms) in [
            ("providers.convercus.timeout_ms", c.timeout_ms),
            ("providers.coupontools.timeout_ms", t.timeout_ms),
            ("providers.koupon.timeout_ms", k.timeout_ms),
        ] {
            if !(100..=120_000).contains(&ms) {
                return Err(invalid(key, "must be between 100 and 120000"));
            }
        }
        for (key, rate) in [
            (
                "providers.convercus.max_requests_per_sec",
                c.max_requests_per_sec,
            ),
            (
                "providers.coupontools.max_requests_per_sec",
                t.max_requests_per_sec,
            ),
            (
                "providers.koupon.max_requests_per_sec",
                k.max_requests_per_sec,
            ),
        ] {
            if !(rate.is_finite() && (0.01..=100_000.0).contains(&rate)) {
                return Err(invalid(key, "must be between 0.01 and 100000"));
            }
        }
        for (key, secs) in [
            (
                "providers.convercus.max_retry_after_secs",
                c.max_retry_after_secs,
            ),
            (
                "providers.coupontools.max_retry_after_secs",
                t.max_retry_after_secs,
            ),
            (
                "providers.koupon.max_retry_after_secs",
                k.max_retry_after_secs,
            ),
        ] {
            if !(1..=3600).contains(&secs) {
                return Err(invalid(key, "must be between 1 and 3600"));
            }
        }
        let o = &self.outbox;
        if o.concurrency == 0 || o.concurrency > 64 {
            return Err(invalid("outbox.concurrency", "must be between 1 and 64"));
        }
        if o.lease_secs < 5 {
            return Err(invalid("outbox.lease_secs", "must be at least 5"));
        }
        if o.poll_ms < 10 {
            return Err(invalid("outbox.poll_ms", "must be at least 10"));
        }
        if o.backoff_base_secs == 0 || o.backoff_cap_secs < o.backoff_base_secs {
            return Err(invalid(
                "outbox.backoff_cap_secs",
                "backoff_base_secs must be at least 1 and at most backoff_cap_secs",
            ));
        }
        if o.jitter_percent > 100 {
            return Err(invalid("outbox.jitter_percent", "must be at most 100"));
        }
        if o.breaker_threshold == 0 || o.breaker_probe_secs == 0 {
            return Err(invalid(
                "outbox.breaker_threshold",
                "breaker_threshold and breaker_probe_secs must be at least 1",
            ));
        }
        for r in &self.offer_rules {
            if !crate::domain::UPSTREAM_PROVIDERS.contains(&r.provider.as_str()) {
                return Err(invalid(
                    "offer_rules.provider",
                    format!("`{}` is not convercus, coupontools or koupon", r.provider),
                ));
            }
            if r.reference.is_empty() {
                return Err(invalid("offer_rules.reference", "must not be empty"));
            }
            if let Some(problem) = r.rule.problem() {
                return Err(invalid(
                    "offer_rules.rule",
                    format!("({} {}): {problem}", r.provider, r.reference),
                ));
            }
        }
        Ok(())
    }

    /// The configured rule for a provider reference, if any.
    pub fn offer_rule(&self, provider: &str, reference: &str) -> Option<&OfferRuleConfig> {
        self.offer_rules
            .iter()
            .find(|r| r.provider == provider && r.reference == reference)
    }

    pub fn time_zone(&self) -> chrono_tz::Tz {
        self.store.time_zone.parse().unwrap_or(chrono_tz::UTC)
    }

    /// Today's date in the store's time zone (validity windows are whole local days).
    pub fn today(&self) -> chrono::NaiveDate {
        self.date_at(chrono::Utc::now())
    }

    /// The store's local date at the instant `now`.
    pub fn date_at(&self, now: chrono::DateTime<chrono::Utc>) -> chrono::NaiveDate {
        now.with_timezone(&self.time_zone()).date_naive()
    }

    /// The first valid-until date (`YYYY-MM-DD`) of the vouchers this store keeps: today
    /// less `lanes.voucher_retention_days`. Vouchers that ended before it are deleted and
    /// not pulled again.
    pub fn vouchers_kept_from(&self) -> String {
        let days = chrono::Days::new(self.lanes.voucher_retention_days);
        let today = self.today();
        today
            .checked_sub_days(days)
            .unwrap_or(today)
            .format("%Y-%m-%d")
            .to_string()
    }

    pub fn log_level(&self) -> log::LevelFilter {
        log_level(&self.logging.level).unwrap_or(log::LevelFilter::Info)
    }
}

/// Parses a cron schedule (`sec min hour day-of-month month day-of-week [year]`).
pub fn parse_schedule(expr: &str) -> Result<cron::Schedule, String> {
    let schedule = expr.parse::<cron::Schedule>().map_err(|e| {
        format!("`{expr}` is not a cron schedule (sec min hour day month weekday): {e}")
    })?;
    // `0 0 0 31 2 *` (February 31st) parses, but would never run a pull.
    if schedule.upcoming(chrono::Utc).next().is_none() {
        return Err(format!(
            "`{expr}` never fires (no such date): give a schedule that names a real day"
        ));
    }
    Ok(schedule)
}

/// Advice about the configuration file itself: readable by every user while it holds
/// secrets (the package makes it root:edge-coupon 0640).
pub fn file_warnings(path: &Path) -> Vec<String> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::metadata(path) {
        Ok(m) if m.permissions().mode() & 0o004 != 0 => vec![format!(
            "{} is readable by every user of this machine, and holds the lane and provider secrets: chmod o-r it (the package's is root:edge-coupon 0640)",
            path.display()
        )],
        _ => Vec::new(),
    }
}

fn log_level(s: &str) -> Option<log::LevelFilter> {
    s.parse().ok()
}

fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        reason: reason.into(),
        origin: None,
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
            message: syntax_message(&e, &text),
        })
}

/// Where a TOML syntax error is and what it is, without the line itself: toml's own text
/// quotes the line, and the line may hold a password (`password = hunter2`, unquoted).
fn syntax_message(e: &toml::de::Error, text: &str) -> String {
    match e.span() {
        Some(span) => {
            let before = text.get(..span.start).unwrap_or(text);
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!("line {line}, column {column}: {}", e.message())
        }
        None => e.message().to_owned(),
    }
}

/// Keys whose values are secrets: never quoted in an error, and always text when they come
/// from `EDGE_*` (a password of digits only is still a password).
fn is_secret_key(key: &str) -> bool {
    let last = key.rsplit('.').next().unwrap_or(key);
    matches!(last, "password" | "secret" | "api_key")
        || last.ends_with("_secret")
        || last.ends_with("_password")
}

/// serde's message without the value it quotes (`invalid type: string "hunter2", expected
/// u64` → `invalid type: string, expected u64`), for a secret key.
fn without_value(message: &str) -> String {
    for prefix in ["invalid type: ", "invalid value: ", "invalid length: "] {
        if let Some(rest) = message.strip_prefix(prefix) {
            let (found, expected) = rest.split_once(", expected").unwrap_or((rest, ""));
            let kind = found.split_whitespace().next().unwrap_or("value");
            let expected = if expected.is_empty() {
                String::new()
            } else {
                format!(", expected{expected}")
            };
            return format!("{prefix}{kind}{expected}");
        }
    }
    "invalid value (not shown: the key holds a secret)".to_owned()
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
        let parsed = if path.last().is_some_and(|k| is_secret_key(k)) {
            toml::Value::String(value.clone())
        } else {
            parse_env_value(value)
        };
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
    fn config_errors_never_quote_a_secret() {
        // An unquoted password is a syntax error: its line is not quoted back.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("edge-coupon.toml");
        std::fs::write(
            &path,
            "[store]\nsites = [\"STO1\"]\n[admin]\npassword = hunter2\n",
        )
        .unwrap();
        let e = read_table(&path).unwrap_err().to_string();
        assert!(!e.contains("hunter2"), "{e}");
        assert!(e.contains("line 4"), "{e}");
        // A secret of the wrong type: the value is not quoted either.
        let e = Config::from_toml_str(&format!("{MINIMAL}\n[admin]\npassword = 918273645\n"))
            .unwrap_err()
            .to_string();
        assert!(!e.contains("918273645"), "{e}");
        assert!(e.contains("admin.password"), "{e}");
        // Not a secret: the value helps and is kept.
        let e = Config::from_toml_str(&format!("{MINIMAL}\n[server]\nworkers = \"many\"\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("many"), "{e}");
    }

    #[test]
    fn a_secret_of_digits_from_the_environment_stays_text() {
        let mut table: toml::Table = MINIMAL.parse().unwrap();
        apply_env(
            &mut table,
            &[("EDGE_ADMIN__PASSWORD".to_owned(), "918273645".to_owned())],
        )
        .unwrap();
        assert_eq!(
            table["admin"]["password"],
            toml::Value::String("918273645".into())
        );
        let mut table: toml::Table = MINIMAL.parse().unwrap();
        apply_env(
            &mut table,
            &[("EDGE_SERVER__WORKERS".to_owned(), "3".to_owned())],
        )
        .unwrap();
        assert_eq!(table["server"]["workers"], toml::Value::Integer(3));
    }

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
        // A retention shorter than the lanes' 30 days of history.
        let short = MINIMAL.replace(
            "[[lanes.credentials]]",
            "[lanes]\nsales_retention_days = 30\n[[lanes.credentials]]",
        );
        let err = Config::from_toml_str(&short).unwrap_err();
        assert!(
            err.to_string().contains("lanes.sales_retention_days"),
            "{err}"
        );
        let ok = short.replace("= 30", "= 31");
        assert_eq!(
            Config::from_toml_str(&ok)
                .unwrap()
                .lanes
                .sales_retention_days,
            31
        );
        let none = MINIMAL.replace(
            "[[lanes.credentials]]",
            "[lanes]\nvoucher_retention_days = 0\n[[lanes.credentials]]",
        );
        let err = Config::from_toml_str(&none).unwrap_err();
        assert!(
            err.to_string().contains("lanes.voucher_retention_days"),
            "{err}"
        );
        // Koupon's store id goes into the signed URL unencoded.
        let koupon = |id: &str| {
            Config::from_toml_str(&format!(
                "{MINIMAL}\n[providers.koupon]\nstore_id = \"{id}\""
            ))
        };
        let err = koupon("STO 1&x=2").unwrap_err();
        assert!(
            err.to_string().contains("providers.koupon.store_id"),
            "{err}"
        );
        assert_eq!(
            koupon("STO-1_a.b~").unwrap().providers.koupon.store_id,
            "STO-1_a.b~"
        );
        // The base URL's path prefix: a path, never a query or a way up.
        let prefix = |p: &str| {
            Config::from_toml_str(&MINIMAL.replace(
                "[[lanes.credentials]]",
                &format!("[lanes]\npath_prefix = \"{p}\"\n[[lanes.credentials]]"),
            ))
        };
        for bad in ["catapult", "/cat?x=1", "/a/../b", "/with space"] {
            let err = prefix(bad).unwrap_err();
            assert!(
                err.to_string().contains("lanes.path_prefix"),
                "{bad}: {err}"
            );
        }
        for good in ["", "/", "/catapult", "/pos/catapult/"] {
            assert_eq!(prefix(good).unwrap().lanes.path_prefix, good);
        }
        let keep_alive = |secs: u64| {
            Config::from_toml_str(&format!("{MINIMAL}\n[server]\nkeep_alive_secs = {secs}"))
        };
        let err = keep_alive(3601).unwrap_err();
        assert!(err.to_string().contains("server.keep_alive_secs"), "{err}");
        assert_eq!(keep_alive(0).unwrap().server.keep_alive_secs, 0);
        assert_eq!(keep_alive(3600).unwrap().server.keep_alive_secs, 3600);
    }

    /// Every refusal names the key, and which file or variable set it (a store with several
    /// conf.d packages must know which to fix). Type, form and unknown-key errors named
    /// neither: "invalid type: string \"two\", expected usize".
    #[test]
    fn errors_name_the_key_and_where_it_was_set() {
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("edge.toml");
        std::fs::create_dir(dir.path().join("conf.d")).unwrap();
        let region = dir.path().join("conf.d/50-region.toml");
        let load = |main_text: &str, region_text: &str, env: &[(&str, &str)]| {
            std::fs::write(&main, main_text).unwrap();
            std::fs::write(&region, region_text).unwrap();
            let env: Vec<(String, String)> = env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
            Config::load_with_env(&main, &env).unwrap_err().to_string()
        };
        let main_name = main.display().to_string();
        let region_name = region.display().to_string();
        // (main file, conf.d file, environment, key named, origin named)
        type Case<'a> = (String, &'a str, Vec<(&'a str, &'a str)>, &'a str, String);
        let cases: Vec<Case> = vec![
            (
                format!("{MINIMAL}\n[server]\nworkers = \"two\""),
                "",
                vec![],
                "`server.workers`",
                main_name.clone(),
            ),
            (
                format!("{MINIMAL}\n[server]\nlisten = \"127.0.0.1:99999\""),
                "",
                vec![],
                "`server.listen`",
                main_name.clone(),
            ),
            (
                format!("{MINIMAL}\n[database]\nsynchronous = \"sometimes\""),
                "",
                vec![],
                "`database.synchronous`",
                main_name.clone(),
            ),
            (
                MINIMAL.to_owned(),
                "[providers.koupon]\nschedul = \"0 * * * * *\"",
                vec![],
                "`providers.koupon.schedul`",
                region_name.clone(),
            ),
            (
                MINIMAL.to_owned(),
                "[providers.koupon]\ntimeout_ms = \"10s\"",
                vec![],
                "`providers.koupon.timeout_ms`",
                region_name.clone(),
            ),
            // A range check names the file too.
            (
                MINIMAL.to_owned(),
                "[outbox]\nconcurrency = 0",
                vec![],
                "`outbox.concurrency`",
                region_name.clone(),
            ),
            (
                MINIMAL.to_owned(),
                "[server]\nworkers = 3",
                vec![("EDGE_SERVER__WORKERS", "abc")],
                "`server.workers`",
                "environment variable EDGE_SERVER__WORKERS".to_owned(),
            ),
            (
                MINIMAL.to_owned(),
                "",
                vec![("EDGE_SERVRE__WORKERS", "3")],
                "`servre`",
                "environment variable EDGE_SERVRE__WORKERS".to_owned(),
            ),
        ];
        for (main_text, region_text, env, key, origin) in cases {
            let err = load(&main_text, region_text, &env);
            assert!(
                err.contains(key) && err.contains(&format!("(set in {origin})")),
                "{key} / {origin}: {err}"
            );
        }
    }

    #[test]
    fn a_schedule_that_never_fires_is_refused() {
        let err = Config::from_toml_str(&format!(
            "{MINIMAL}\n[providers.koupon]\nschedule = \"0 0 0 31 2 *\""
        ))
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("providers.koupon.schedule") && err.contains("never fires"),
            "{err}"
        );
        assert!(parse_schedule("0 0 0 29 2 *").is_ok());
    }

    #[test]
    fn a_world_readable_config_file_is_warned_about() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("edge.toml");
        std::fs::write(&file, MINIMAL).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(file_warnings(&file).len(), 1);
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(file_warnings(&file).is_empty());
    }

    #[test]
    fn duplicate_lane_users_are_refused_and_weak_settings_warned() {
        let twice =
            format!("{MINIMAL}\n[[lanes.credentials]]\nusername = \"pos\"\npassword = \"other\"");
        let err = Config::from_toml_str(&twice).unwrap_err().to_string();
        assert!(
            err.contains("lanes.credentials") && err.contains("`pos`"),
            "{err}"
        );
        assert!(Config::from_toml_str(MINIMAL)
            .unwrap()
            .warnings()
            .is_empty());
        let default = Config::from_toml_str(&MINIMAL.replace("\"secret\"", "\"change-me\""))
            .unwrap()
            .warnings();
        assert!(
            default.len() == 1 && default[0].starts_with("lanes.credentials"),
            "{default:?}"
        );
        let plain = |url: &str| {
            Config::from_toml_str(&format!(
                "{MINIMAL}\n[providers.koupon]\nenabled = true\napi_key = \"k\"\nsecret = \"s\"\nstore_id = \"S\"\nstoreconnect_url = \"{url}\""
            ))
            .unwrap()
            .warnings()
        };
        assert!(
            plain("http://koupon.example.com")[0].starts_with("providers.koupon.storeconnect_url")
        );
        assert!(plain("http://127.0.0.1:9000").is_empty());
        assert!(plain("http://localhost:9000/v1").is_empty());
        assert!(plain("https://koupon.example.com").is_empty());
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
            (
                "EDGE_PROVIDERS__KOUPON__API_KEY".to_owned(),
                "key-from-env".to_owned(),
            ),
            ("EDGE_DATABASE__READ_POOL_SIZE".to_owned(), "3".to_owned()),
            ("EDGE_DATABASE__PATH".to_owned(), "/tmp/x.db".to_owned()),
        ];
        let c = Config::load_with_env(&main, &env).unwrap();
        assert_eq!(c.lanes.hold_ttl_secs, 60);
        assert_eq!(c.lanes.credentials[0].password.expose(), "from-env");
        assert_eq!(c.database.read_pool_size, 3);
        assert_eq!(c.database.path, PathBuf::from("/tmp/x.db"));
        assert_eq!(c.providers.koupon.api_key.expose(), "key-from-env");
        assert!(
            !format!("{c:?}").contains("from-env"),
            "secrets are redacted in Debug"
        );
    }

    /// Validity windows are whole days in the store's time zone: at 03:00 UTC it is still
    /// the day before in Chicago, and already the same day in Berlin.
    #[test]
    fn today_is_the_store_s_local_date() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("edge-coupon.toml");
        let at = chrono::DateTime::parse_from_rfc3339("2026-12-01T03:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        for (zone, date) in [
            ("America/Chicago", "2026-11-30"),
            ("UTC", "2026-12-01"),
            ("Europe/Berlin", "2026-12-01"),
        ] {
            std::fs::write(
                &path,
                MINIMAL.replace("[store]", &format!("[store]\ntime_zone = \"{zone}\"")),
            )
            .unwrap();
            let c = Config::load_with_env(&path, &[]).unwrap();
            assert_eq!(c.date_at(at).to_string(), date, "{zone}");
        }
    }

    /// A configured rule that could never apply (or would take more than the price) is
    /// refused with its reason, like an imported one.
    #[test]
    fn an_offer_rule_that_cannot_apply_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("edge-coupon.toml");
        std::fs::write(
            &path,
            format!(
                "{MINIMAL}\n[[offer_rules]]\nprovider = \"convercus\"\nreference = \"EXT-1\"\nrule = {{ mechanic = {{ type = \"percentOff\", basisPoints = 0 }} }}\n"
            ),
        )
        .unwrap();
        let e = Config::load_with_env(&path, &[]).unwrap_err().to_string();
        assert!(
            e.contains("offer_rules.rule") && e.contains("basisPoints 0"),
            "{e}"
        );
    }
}
