//! Convercus client (shared/api/convercus.md): login and token cache, account coupon lists
//! of the store's customers, and delivery of activations and redemptions.
//!
//! Redemption has no idempotency key and answers with no body, so before the first attempt
//! the worker durably records the coupon's `redeemCount` (the one the last pull stored, read
//! live only when the store has none it can trust); a retry reads it again first and counts
//! the item delivered when it has grown (never applied twice).

use crate::http::{self, CallError, Delivery};
use crate::pace::Pacer;
use crate::pull::{short_id, CustomerPull};
use chrono::NaiveDate;
use reqwest::{Method, RequestBuilder, StatusCode};
use serde_json::{json, Value};
use shared::config::{Config, ConvercusAuth, ConvercusConfig};
use shared::db::Db;
use shared::domain::{CouponState, ItemSet, Mechanic, Offer, Rule};
use shared::outbox::Item;
use shared::repo::Customer;
use shared::sync::PulledCoupon;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

pub const NAME: &str = shared::outbox::provider::CONVERCUS;

struct Token {
    value: String,
    renew_at: Instant,
    /// OAuth: the refresh token, if one was issued, and until when it may be used.
    refresh: Option<(String, Option<Instant>)>,
}

pub struct Client {
    cfg: ConvercusConfig,
    http: reqwest::Client,
    token: Mutex<Option<Token>>,
    pacer: Arc<Pacer>,
}

/// The progress note of a redemption: the coupon's redeemCount before our first attempt.
const BASELINE: &str = "redeemCountBefore";
/// ... and where that count came from: [`FROM_SYNCED`] or [`FROM_READ`].
const BASELINE_FROM: &str = "redeemCountFrom";
/// The store's database, as the last pull (or read-through) stored it: no GET was sent.
const FROM_SYNCED: &str = "synced";
/// A GET (convercus.md §4.6) before the first PATCH.
const FROM_READ: &str = "read";
/// ... and whether `COUPON_NOT_ACTIVATABLE` was already answered once (and retried).
const NOT_ACTIVATABLE_SEEN: &str = "notActivatableSeen";

/// When [`Client::token`] gets a new token.
#[derive(Clone, Copy)]
enum Renew<'a> {
    /// Only when there is none or it is due for renewal.
    IfDue,
    /// A call was refused with this token (401): log in again, unless a parallel call
    /// refused at the same time already replaced it (then that newer token is used).
    Refused(&'a str),
    /// Log in now (the breaker's probe).
    Always,
}

impl Client {
    /// A client with a pacer of its own (see [`Client::with_pacer`]).
    pub fn new(cfg: &ConvercusConfig) -> Client {
        let pacer = Pacer::new(NAME, cfg.max_requests_per_sec, cfg.max_retry_after_secs);
        Client::with_pacer(cfg, Arc::new(pacer))
    }

    /// A client whose calls wait for `pacer` (the daemon's one for this provider, kept
    /// across configuration reloads).
    pub fn with_pacer(cfg: &ConvercusConfig, pacer: Arc<Pacer>) -> Client {
        Client {
            cfg: cfg.clone(),
            http: http::client(cfg.timeout_ms),
            token: Mutex::new(None),
            pacer,
        }
    }

    pub fn config(&self) -> &ConvercusConfig {
        &self.cfg
    }

    pub fn pacer(&self) -> &Arc<Pacer> {
        &self.pacer
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.cfg.base_url.trim_end_matches('/'))
    }

    fn prefix(&self) -> &str {
        match (self.cfg.auth_prefix.as_str(), self.cfg.auth) {
            ("auto", ConvercusAuth::Legacy) => "",
            ("auto", ConvercusAuth::Oauth) => "Bearer",
            (p, _) => p,
        }
    }

    /// Renews an OAuth token with its refresh token (convercus.md §2.1: "refresh token if
    /// issued, else new client-credentials request"). `None` when there is none, it has
    /// lapsed, or the token URL refuses it: then the caller logs in afresh.
    async fn refresh(&self, old: &Token) -> Option<Token> {
        let (refresh, until) = old.refresh.as_ref()?;
        if self.cfg.auth != ConvercusAuth::Oauth || until.is_some_and(|u| Instant::now() >= u) {
            return None;
        }
        let form = [
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh.as_str()),
            ("client_id", self.cfg.client_id.as_str()),
            ("client_secret", self.cfg.client_secret.expose()),
        ];
        let request = self.http.post(&self.cfg.token_url).form(&form);
        match self.token_from(request, true, "refresh").await {
            Ok(t) => Some(t),
            Err(e) => {
                log::info!(provider = NAME; "Convercus refused the refresh token ({e}); logging in afresh");
                None
            }
        }
    }

    /// Logs in (legacy JWT or OAuth client credentials) and returns a fresh token.
    async fn login(&self) -> Result<Token, CallError> {
        let (request, oauth) = match self.cfg.auth {
            ConvercusAuth::Legacy => (
                self.http.post(self.url("/auth/login")).json(&json!({
                    "org": self.cfg.org,
                    "userName": self.cfg.username,
                    "password": self.cfg.password.expose(),
                })),
                false,
            ),
            ConvercusAuth::Oauth => {
                let mut form = vec![
                    ("grant_type", "client_credentials".to_owned()),
                    ("client_id", self.cfg.client_id.clone()),
                    ("client_secret", self.cfg.client_secret.expose().to_owned()),
                    ("scope", "openid".to_owned()),
                ];
                if !self.cfg.username.is_empty() {
                    form[0].1 = "password".to_owned();
                    form.push(("username", self.cfg.username.clone()));
                    form.push(("password", self.cfg.password.expose().to_owned()));
                }
                (self.http.post(&self.cfg.token_url).form(&form), true)
            }
        };
        self.token_from(request, oauth, "login").await
    }

    /// Sends a login or refresh request and reads the token from its answer.
    async fn token_from(
        &self,
        request: RequestBuilder,
        oauth: bool,
        how: &str,
    ) -> Result<Token, CallError> {
        self.pacer.ready().await;
        let started = Instant::now();
        let resp = request.send().await.map_err(|e| {
            CallError::from_reqwest(&e)
                .at_key("providers.convercus.base_url (token_url with OAuth)")
        })?;
        let status = resp.status();
        self.pacer.note(status.as_u16(), resp.headers());
        let body = resp.text().await.map_err(|e| {
            CallError::from_reqwest(&e)
                .at_key("providers.convercus.base_url (token_url with OAuth)")
        })?;
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(CallError::Auth(format!(
                "Convercus login refused (HTTP {status}); check providers.convercus credentials"
            )));
        }
        if !status.is_success() {
            // Keycloak refuses a bad secret or password with 400 `invalid_grant`/`invalid_client`,
            // a wrong token URL gives 404: whatever it is, the items are not at fault, so the
            // queue pauses (never dead-letters) until the configuration works. 5xx and 429
            // are the provider's trouble and are retried.
            let e = error_of(status.as_u16(), &body);
            if e.is_transient() {
                return Err(e);
            }
            return Err(CallError::Auth(format!(
                "Convercus login refused ({e}); check providers.convercus credentials and URLs"
            )));
        }
        // The legacy answer's shape is a [GAP]: a bare token or an object with a token field.
        let parsed: Option<Value> = serde_json::from_str(&body).ok();
        let token = match &parsed {
            Some(Value::String(s)) => Some(s.clone()),
            Some(v) => ["token", "jwt", "access_token", "id_token"]
                .iter()
                .find_map(|k| v.get(*k).and_then(Value::as_str).map(str::to_owned)),
            None if !body.trim().is_empty() && !body.contains(['{', ' ']) => {
                Some(body.trim().to_owned())
            }
            None => None,
        }
        .ok_or_else(|| CallError::Malformed("login answer holds no token".into()))?;
        let lifetime = if oauth {
            let expires = parsed
                .as_ref()
                .and_then(|v| v.get("expires_in"))
                .and_then(Value::as_u64)
                .unwrap_or(300);
            Duration::from_secs(expires * 8 / 10)
        } else {
            legacy_lifetime(&token, self.cfg.token_refresh_secs, shared::db::now_secs())
        };
        let refresh = parsed
            .as_ref()
            .filter(|_| oauth)
            .and_then(|v| v.get("refresh_token"))
            .and_then(Value::as_str)
            .map(|r| {
                let until = parsed
                    .as_ref()
                    .and_then(|v| v.get("refresh_expires_in"))
                    .and_then(Value::as_u64)
                    .filter(|s| *s > 0)
                    .map(|s| started + Duration::from_millis(s.saturating_mul(800)));
                (r.to_owned(), until)
            });
        if how == "refresh" {
            log::info!(provider = NAME; "Convercus token renewed with its refresh token; next renewal in {} s", lifetime.as_secs());
        } else {
            log::info!(provider = NAME; "logged in to Convercus; token renewed in {} s", lifetime.as_secs());
        }
        Ok(Token {
            value: token,
            renew_at: started + lifetime,
            refresh,
        })
    }

    /// The cached token, logging in when there is none or it is due for renewal (see
    /// [`Renew`]).
    async fn token(&self, renew: Renew<'_>) -> Result<String, CallError> {
        let mut guard = self.token.lock().await;
        // The cached token is the one Convercus refused (or we must log in anyway).
        let refused = |t: &Token| match renew {
            Renew::IfDue => false,
            Renew::Refused(used) => t.value == used,
            Renew::Always => true,
        };
        match guard.as_ref() {
            Some(t) if !refused(t) && Instant::now() < t.renew_at => {
                if let Renew::Refused(_) = renew {
                    log::debug!(provider = NAME; "the token refused with 401 was already replaced by another call; using the new one");
                }
                Ok(t.value.clone())
            }
            _ => {
                // Due for renewal: the refresh token first (OAuth), else a login. A token
                // refused with a 401 is replaced by a fresh login.
                let refreshed = match guard.as_ref() {
                    Some(old) if !refused(old) => self.refresh(old).await,
                    _ => None,
                };
                let t = match refreshed {
                    Some(t) => t,
                    None => self.login().await?,
                };
                let value = t.value.clone();
                *guard = Some(t);
                Ok(value)
            }
        }
    }

    /// Sends a call with the token and the common headers; on a 401 logs in again and
    /// retries once; a second 401 is an auth failure.
    async fn call(
        &self,
        method: Method,
        path: &str,
        id_type: Option<&str>,
        body: Option<&Value>,
    ) -> Result<(u16, String), CallError> {
        // The token of a call refused with 401: replaced once, by us or by a parallel call.
        let mut refused: Option<String> = None;
        for attempt in 0..2 {
            let token = match &refused {
                None => self.token(Renew::IfDue).await?,
                Some(used) => self.token(Renew::Refused(used)).await?,
            };
            let auth = match self.prefix() {
                "" => token.clone(),
                p => format!("{p} {token}"),
            };
            let mut req: RequestBuilder = self
                .http
                .request(method.clone(), self.url(path))
                .header("Authorization", auth)
                .header("interaction-id", &self.cfg.interaction_id)
                .header("Content-Type", "application/json");
            if let Some(t) = id_type {
                req = req.header("id-type", t);
            }
            if let Some(b) = body {
                req = req.body(b.to_string());
            }
            self.pacer.ready().await;
            let resp = req.send().await.map_err(|e| {
                CallError::from_reqwest(&e)
                    .at_key("providers.convercus.base_url (token_url with OAuth)")
            })?;
            let status = resp.status().as_u16();
            self.pacer.note(status, resp.headers());
            let text = resp.text().await.map_err(|e| {
                CallError::from_reqwest(&e)
                    .at_key("providers.convercus.base_url (token_url with OAuth)")
            })?;
            if status == 401 {
                if attempt == 0 {
                    log::info!(provider = NAME; "Convercus answered 401; logging in again");
                    refused = Some(token);
                    continue;
                }
                return Err(CallError::Auth(
                    "Convercus refused a fresh token (HTTP 401); check the credentials and the program's rights".into(),
                ));
            }
            if (200..300).contains(&status) {
                return Ok((status, text));
            }
            return Err(error_of(status, &text));
        }
        Err(CallError::Auth("Convercus login loop".into()))
    }

    async fn get_json(&self, path: &str, id_type: Option<&str>) -> Result<Value, CallError> {
        let (_, text) = self.call(Method::GET, path, id_type, None).await?;
        serde_json::from_str(&text)
            .map_err(|e| CallError::Malformed(format!("GET {}: {e}", redact_path(path))))
    }

    /// A cheap authenticated call to see whether Convercus answers (circuit breaker probe).
    pub async fn probe(&self) -> Result<(), CallError> {
        self.token(Renew::Always).await.map(|_| ())
    }

    // ------------------------------------------------------------ delivery

    /// Delivers one outbox item. `db` is the store's database (a redemption's first attempt
    /// takes its baseline from it); `record` stores a progress note durably before a send.
    pub async fn deliver<F, Fut>(&self, item: &Item, db: &Db, record: F) -> Delivery
    where
        F: Fn(Value) -> Fut,
        Fut: std::future::Future<Output = Result<(), String>>,
    {
        // Coupons carry `accountCouponId`; vouchers (codes) carry it as `providerRef`.
        let Some(id) = item
            .payload
            .get("accountCouponId")
            .or_else(|| item.payload.get("providerRef"))
            .and_then(Value::as_str)
        else {
            return Delivery::Dead("item has no accountCouponId".into());
        };
        match item.operation.as_str() {
            "activate" | "deactivate" => {
                let wanted = item.operation == "activate";
                if item.attempts > 1 {
                    // A retry: already in the wanted state means an earlier attempt applied.
                    let path = format!("/v2/accountcoupons/{}", enc(id));
                    match self.get_json(&path, Some("ID")).await {
                        Ok(c)
                            if c.pointer("/activation/activated").and_then(Value::as_bool)
                                == Some(wanted) =>
                        {
                            return Delivery::Delivered {
                                note: Some("verified: activation already as wanted".into()),
                            }
                        }
                        Ok(_) => {}
                        Err(CallError::Status { status: 404, .. }) => {
                            return Delivery::Dead(
                                "COUPON_NOT_FOUND: the account coupon no longer exists".into(),
                            )
                        }
                        Err(e) => return Delivery::from_error(&e),
                    }
                }
                let body = json!({"activated": wanted});
                let path = format!("/v2/accountcoupons/{}/activation", enc(id));
                match self
                    .call(Method::PATCH, &path, Some("ID"), Some(&body))
                    .await
                {
                    Ok(_) => Delivery::delivered(),
                    Err(e) => Delivery::from_error(&e),
                }
            }
            "redeem" | "validate" => {
                let synced = if baseline_of(item).is_none() {
                    synced_baseline(db, item).await
                } else {
                    None
                };
                self.redeem(item, id, synced, record).await
            }
            other => Delivery::Dead(format!("unknown Convercus operation {other}")),
        }
    }

    async fn redeem_count(&self, id: &str) -> Result<i64, CallError> {
        let c = self
            .get_json(&format!("/v2/accountcoupons/{}", enc(id)), Some("ID"))
            .await?;
        Ok(c.get("redeemCount")
            .and_then(http::whole_count)
            .unwrap_or(0))
    }

    /// Redeems an account coupon (convercus.md §5). The first attempt (no baseline noted
    /// yet) notes the coupon's `redeemCount` durably before its PATCH: `synced`, the count
    /// the last pull stored, when there is one to trust (no GET at all), else the count a
    /// GET reads. Every later attempt follows one that may have reached Convercus, so it
    /// reads the count first: grown past the baseline, the earlier PATCH was applied.
    async fn redeem<F, Fut>(
        &self,
        item: &Item,
        id: &str,
        synced: Option<i64>,
        record: F,
    ) -> Delivery
    where
        F: Fn(Value) -> Fut,
        Fut: std::future::Future<Output = Result<(), String>>,
    {
        // Noted by an earlier attempt, before it sent the PATCH: so when there is one, that
        // attempt's outcome may be unknown to us.
        let baseline = baseline_of(item);
        let not_activatable_seen = item
            .progress
            .as_ref()
            .and_then(|p| p.get(NOT_ACTIVATABLE_SEEN))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        // Where the noted baseline came from (items noted before this was kept read it).
        let noted_from = item
            .progress
            .as_ref()
            .and_then(|p| p.get(BASELINE_FROM))
            .and_then(Value::as_str)
            .unwrap_or(FROM_READ);
        // The baseline this attempt goes by: the first attempt's, noted before its PATCH.
        let (count, from) = match (baseline, synced) {
            (None, Some(c)) => {
                if let Err(e) = record(json!({BASELINE: c, BASELINE_FROM: FROM_SYNCED})).await {
                    return Delivery::Retry(format!("cannot record progress: {e}"));
                }
                (c, FROM_SYNCED)
            }
            (b, _) => {
                let count = match self.redeem_count(id).await {
                    Ok(c) => c,
                    Err(CallError::Status { status: 404, .. }) => {
                        return Delivery::Dead(
                            "COUPON_NOT_FOUND: the account coupon no longer exists".into(),
                        )
                    }
                    Err(e) => return Delivery::from_error(&e),
                };
                match b {
                    // An earlier attempt may have been applied: its count tells.
                    Some(b) if count > b => {
                        return Delivery::Delivered {
                            note: Some(format!(
                                "verified: redeemCount {count} > {b} before our first attempt"
                            )),
                        }
                    }
                    Some(b) => (b, noted_from),
                    None => {
                        if let Err(e) =
                            record(json!({BASELINE: count, BASELINE_FROM: FROM_READ})).await
                        {
                            return Delivery::Retry(format!("cannot record progress: {e}"));
                        }
                        (count, FROM_READ)
                    }
                }
            }
        };
        let path = format!("/v2/accountcoupons/{}", enc(id));
        let e = match self.call(Method::PATCH, &path, Some("ID"), None).await {
            Ok(_) => return Delivery::delivered(),
            Err(e @ CallError::Status { .. }) => e,
            Err(e) => return Delivery::from_error(&e),
        };
        // convercus.md §5: "NO_MORE_REDEEM_BY_ACCOUNT on a retry may mean our first try
        // succeeded → verify via GET before dead-lettering" (the earlier PATCH may have
        // been applied after the GET above read the count).
        if let (Some(b), true) = (baseline, refusal_is(&e, "NO_MORE_REDEEM_BY_ACCOUNT")) {
            match self.redeem_count(id).await {
                Ok(now) if now > b => {
                    return Delivery::Delivered {
                        note: Some(format!(
                            "verified after NO_MORE_REDEEM_BY_ACCOUNT on a retry: redeemCount {now} > {b} before our first attempt"
                        )),
                    }
                }
                Ok(_) | Err(CallError::Status { status: 404, .. }) => {}
                Err(g) => {
                    return match Delivery::from_error(&g) {
                        Delivery::Dead(_) => redeem_refusal(&e, not_activatable_seen),
                        Delivery::Retry(r) => Delivery::Retry(format!(
                            "{e}; cannot verify whether our earlier attempt counted: {r}"
                        )),
                        other => other,
                    }
                }
            }
        }
        // convercus.md §4.9 COUPON_NOT_ACTIVATABLE: "deliver pending activation first, then
        // retry once" — the first time it is answered, whatever failed before; noted
        // durably so the second time is final.
        if refusal_is(&e, "COUPON_NOT_ACTIVATABLE") && !not_activatable_seen {
            let note = json!({BASELINE: count, BASELINE_FROM: from, NOT_ACTIVATABLE_SEEN: true});
            if let Err(r) = record(note).await {
                return Delivery::Retry(format!("{e}; cannot record progress: {r}"));
            }
        }
        redeem_refusal(&e, not_activatable_seen)
    }

    // ------------------------------------------------------------ pull

    /// Everything about one customer: profile (demographics) and coupon list. `None` when
    /// Convercus does not know the card (not one of its customers).
    pub async fn pull_customer(
        &self,
        customer_id: &str,
        config: &Config,
    ) -> Result<Option<CustomerPull>, CallError> {
        // The lane's id may be a card, app or external code: try each configured id-type.
        let mut found = None;
        for id_type in &self.cfg.customer_id_types {
            match self
                .get_json(&format!("/accounts/{}", enc(customer_id)), Some(id_type))
                .await
            {
                Ok(a) => {
                    found = Some((a, id_type.as_str()));
                    break;
                }
                Err(CallError::Status { status: 404, .. }) => {}
                Err(e) => return Err(e),
            }
        }
        let Some((account, id_type)) = found else {
            return Ok(None);
        };
        let account_id = text(&account, "id");
        let active = text(&account, "status") == "ACTIVE";
        let mut customer = Customer {
            id: customer_id.to_owned(),
            provider: Some(NAME.to_owned()),
            provider_ref: Some(account_id),
            ..Customer::default()
        };
        // From here on the account is addressed the way it was found.
        let acc = enc(customer_id);
        let memberships = self
            .get_json(&format!("/accounts/{acc}/memberships"), Some(id_type))
            .await?;
        let owner = memberships.as_array().and_then(|m| {
            m.iter()
                .find(|x| text(x, "memberRole") == "OWNER")
                .or_else(|| m.first())
        });
        if let Some(user_id) = owner.map(|o| text(o, "userId")).filter(|u| !u.is_empty()) {
            match self
                .get_json(&format!("/users/{}", enc(&user_id)), None)
                .await
            {
                Ok(user) => {
                    customer.first_name = field(&user, "givenName", 25);
                    customer.last_name = field(&user, "familyName", 25);
                    customer.email = field(&user, "emailAddress", 254);
                    customer.phone = field(&user, "phone", 14);
                }
                Err(CallError::Status { status: 404, .. }) => {}
                Err(e) => return Err(e),
            }
        }
        let coupons = self
            .get_json(&format!("/v2/accounts/{acc}/accountcoupons"), Some(id_type))
            .await?;
        let coupons = map_coupons(&coupons, &self.cfg, config, config.today(), active)?;
        Ok(Some(CustomerPull { customer, coupons }))
    }
}

/// An account's coupon list (§4.5: `AccountCoupon[]`), mapped. Anything but a list (a
/// paged wrapper, `null`, an error object under a 200) is an unreadable answer: read as
/// "no coupons", the pull would expire or delete every coupon the customer has.
pub fn map_coupons(
    list: &Value,
    cfg: &ConvercusConfig,
    config: &Config,
    today: NaiveDate,
    account_active: bool,
) -> Result<Vec<(Offer, PulledCoupon)>, CallError> {
    let Some(list) = list.as_array() else {
        let shape: String = list.to_string().chars().take(120).collect();
        return Err(CallError::Malformed(format!(
            "the account coupon list is not a list (convercus.md §4.5 AccountCoupon[]): {shape}; the customer's coupons are left as they were"
        )));
    };
    Ok(list
        .iter()
        .filter_map(|c| map_coupon(c, cfg, config, today, account_active))
        .collect())
}

/// The baseline an earlier attempt of a redemption noted before its PATCH, if any.
fn baseline_of(item: &Item) -> Option<i64> {
    item.progress
        .as_ref()
        .and_then(|p| p.get(BASELINE))
        .and_then(Value::as_i64)
}

/// [`synced_redeem_count`] read from the store's database off the async threads; `None`
/// (a GET reads the count instead) when the database cannot be read.
async fn synced_baseline(db: &Db, item: &Item) -> Option<i64> {
    if item.operation != "redeem" {
        return None;
    }
    let reads = db.clone();
    let it = item.clone();
    let read = tokio::task::spawn_blocking(move || -> Result<Option<i64>, String> {
        let conn = reads.read().map_err(|e| e.to_string())?;
        synced_redeem_count(&conn, &it).map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())
    .and_then(|r| r);
    read.unwrap_or_else(|e| {
        log::warn!(provider = NAME; "cannot read the synced redeemCount of outbox item {} ({e}); reading it from Convercus", item.id);
        None
    })
}

/// The `redeemCount` the last pull (or read-through) stored for a redemption item's
/// account coupon (`customer_coupons.upstream_redemptions`), the baseline convercus.md §5
/// asks for ("Before the first attempt record `redeemCount` (from the synced
/// AccountCoupon)"). `None`, so that a GET reads it, when the store has none, when the row
/// now names another account coupon, or when it may not count an earlier redemption of
/// that coupon by this store: any other redemption of it by the customer at this store
/// (kept `lanes.sales_retention_days`) may have been delivered after the pull read the
/// count, and a baseline short of it would take our own unapplied PATCH for applied.
pub fn synced_redeem_count(
    conn: &rusqlite::Connection,
    item: &Item,
) -> rusqlite::Result<Option<i64>> {
    let field = |k: &str| {
        item.payload
            .get(k)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    let (Some(customer), Some(offer), Some(account_coupon), Some(site), Some(txn)) = (
        field("customer"),
        field("offerId"),
        field("accountCouponId"),
        field("site"),
        field("transaction"),
    ) else {
        return Ok(None);
    };
    shared::repo::upstream_redemptions_before(conn, customer, offer, account_coupon, site, txn)
}

/// Whether a refusal is `code`, as its code or (CONDITION_NOT_FULFILLED) in its detail.
fn refusal_is(e: &CallError, code: &str) -> bool {
    match e {
        CallError::Status {
            code: c, detail, ..
        } => {
            c == code
                || (c == "CONDITION_NOT_FULFILLED"
                    && detail
                        .split(|ch: char| !(ch.is_ascii_alphanumeric() || ch == '_'))
                        .any(|d| d == code))
        }
        _ => false,
    }
}

/// What a refused redemption means (convercus.md §4.9). The error layout and statuses are
/// a [GAP]: an answer without one of the documented codes is judged by its HTTP status
/// (5xx and 429 are retried with back-off, like any other call). `not_activatable_seen`:
/// an earlier attempt was already answered COUPON_NOT_ACTIVATABLE (and retried once).
fn redeem_refusal(e: &CallError, not_activatable_seen: bool) -> Delivery {
    let CallError::Status { code, detail, .. } = e else {
        return Delivery::from_error(e);
    };
    let reason = format!("{code}: {detail}");
    match code.as_str() {
        "INTERNAL_SERVER_ERROR" | "COUPON_REDEMPTION_IN_PROGRESS" => Delivery::Retry(reason),
        "CONDITION_NOT_FULFILLED" if detail.contains("NOT_YET_REDEEMABLE") => {
            Delivery::Retry(reason)
        }
        // The activation is queued before the redemption on the same key; one more try.
        "COUPON_NOT_ACTIVATABLE" if !not_activatable_seen => Delivery::Retry(reason),
        c if DOCUMENTED_REFUSALS.contains(&c) => Delivery::Dead(reason),
        _ => Delivery::from_error(e),
    }
}

/// The codes convercus.md §4.9 documents, with those above that are retried.
const DOCUMENTED_REFUSALS: &[&str] = &[
    "CONDITION_NOT_FULFILLED",
    "CONDITION_NOT_DEFINED",
    "ACCOUNT_LOCKED",
    "COUPON_NOT_FOUND",
    "PROMOCODE_NOT_FOUND",
    "COUPON_NOT_PROMOCODE",
    "COUPON_NOT_ACTIVATABLE",
    "COUPON_PREVIEW_NOT_AVAILABLE",
    "COUPON_NOT_ASSIGNED_ACCOUNT",
    "COUPON_NOT_MANUAL_REDEEMABLE",
    "COUPON_NOT_ACTIVATED",
];

/// Every code convercus.md §4.9 lists.
fn known_code(token: &str) -> bool {
    DOCUMENTED_REFUSALS.contains(&token)
        || ["INTERNAL_SERVER_ERROR", "COUPON_REDEMPTION_IN_PROGRESS"].contains(&token)
}

/// Reads a Convercus error answer. Its layout is a [GAP] (convercus.md §4.9: "[ASSUME] 4xx
/// JSON whose error code is in a `code`-like field and the list in `detail`; parse
/// defensively"): the code is the first string of `code`, `errorCode`, `error` (a string,
/// as Keycloak sends; taken only when it is a documented or Keycloak code, as Spring's
/// default body has the reason phrase there), `error.code`, `errors[0].code`/`errorCode`,
/// else a documented code named in `message`/`detail` text; the detail is `detail` (a list or a string), else
/// `message`, `error.message`, `errors[0].detail`/`message`, `error_description`, else
/// the raw body (first 200 characters).
fn error_of(status: u16, body: &str) -> CallError {
    let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let first = v.pointer("/errors/0").cloned().unwrap_or(Value::Null);
    let nested = v
        .get("error")
        .filter(|e| e.is_object())
        .cloned()
        .unwrap_or(Value::Null);
    let string = |x: Option<&Value>| {
        x.and_then(Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    let list = |x: Option<&Value>| match x {
        Some(Value::Array(a)) if !a.is_empty() => Some(
            a.iter()
                .map(|d| d.as_str().map_or_else(|| d.to_string(), str::to_owned))
                .collect::<Vec<_>>()
                .join(","),
        ),
        other => string(other),
    };
    let texts = [
        v.get("message"),
        v.get("detail"),
        nested.get("message"),
        first.get("message"),
        first.get("detail"),
    ];
    let named = || {
        texts.iter().find_map(|t| {
            let t = list(*t)?;
            t.split(|c: char| !(c.is_ascii_uppercase() || c == '_'))
                .find(|w| known_code(w))
                .map(str::to_owned)
        })
    };
    // `error` as a string is a code only when it is one of ours or Keycloak's
    // (`invalid_grant`, ...): Spring's default body puts the reason phrase there
    // ("Conflict") and the code in `message`.
    let error_code = string(v.get("error"))
        .filter(|e| known_code(e) || e.starts_with("invalid_") || e.starts_with("unauthorized"));
    let code = string(v.get("code"))
        .or_else(|| string(v.get("errorCode")))
        .or(error_code)
        .or_else(|| string(nested.get("code")))
        .or_else(|| string(first.get("code")))
        .or_else(|| string(first.get("errorCode")))
        .or_else(named)
        .unwrap_or_default();
    let detail = list(v.get("detail"))
        .or_else(|| list(v.get("message")))
        .or_else(|| list(nested.get("message")))
        .or_else(|| list(first.get("detail")))
        .or_else(|| list(first.get("message")))
        .or_else(|| string(v.get("error_description")))
        .unwrap_or_else(|| body.chars().take(200).collect());
    CallError::Status {
        status,
        code,
        detail,
    }
}

/// Percent-encodes a path segment: every byte of its UTF-8 but the unreserved characters
/// (RFC 3986 §2.3).
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Card numbers are customer data: keep them out of error texts.
fn redact_path(path: &str) -> String {
    path.split('/')
        .map(|p| if p.len() > 8 { "…" } else { p })
        .collect::<Vec<_>>()
        .join("/")
}

fn text(v: &Value, k: &str) -> String {
    match v.get(k) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => String::new(),
    }
}

/// A profile field (number or string, as the user object may carry either), cut to the
/// CATAPULT length.
fn field(v: &Value, k: &str, max: usize) -> Option<String> {
    let s = text(v, k);
    (!s.is_empty()).then(|| s.chars().take(max).collect())
}

fn date_of(s: &str) -> Option<NaiveDate> {
    s.get(..10)
        .and_then(|d| NaiveDate::parse_from_str(d, "%Y-%m-%d").ok())
}

/// The last day a `validTo` leaves whole or in part (convercus.md §4.5: a local date-time
/// without zone). Validity windows here are whole days, so `2020-11-30T23:59:00` ends on
/// the 30th; an end at midnight (`2020-12-01T00:00:00`) leaves nothing of the 1st, so
/// the coupon ends on the 30th too, not a whole day late.
fn last_day_of(s: &str) -> Option<NaiveDate> {
    let day = date_of(s)?;
    let time = s.get(11..).unwrap_or("").trim_end_matches('Z');
    let midnight = !time.is_empty() && time.chars().all(|c| c == '0' || c == ':' || c == '.');
    Some(if midnight {
        day.pred_opt().unwrap_or(day)
    } else {
        day
    })
}

/// Maps one AccountCoupon to the offer the lanes see and this customer's state of it.
/// Rules (convercus.md §4.5–4.8): EXTRAPOINT and MULTIPLIER coupons are applied by
/// Convercus itself and never offered to the lanes; an activatable coupon is usable only
/// once activated (clipped); a coupon whose points of redemption exclude this store's
/// interaction point is left out; one used `maxRedeemCount` times is redeemed.
pub fn map_coupon(
    c: &Value,
    cfg: &ConvercusConfig,
    config: &Config,
    today: NaiveDate,
    account_active: bool,
) -> Option<(Offer, PulledCoupon)> {
    let coupon_id = text(c, "couponId");
    let account_coupon_id = text(c, "accountCouponId");
    if coupon_id.is_empty() || account_coupon_id.is_empty() {
        return None;
    }
    let usage = text(c, "usageType");
    let points: Vec<&Value> = c
        .get("pointsOfRedemption")
        .and_then(Value::as_array)
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    let ips: Vec<String> = points
        .iter()
        .filter(|p| text(p, "unitType") == "INTERACTIONPOINT")
        .map(|p| text(p, "value"))
        .collect();
    if !ips.is_empty() && !ips.contains(&cfg.interaction_id) {
        return None;
    }
    let external = text(c, "externalReference");
    let i18n = c.get("i18nFields");
    let lang = i18n.and_then(|m| m.get(&cfg.language)).or_else(|| {
        i18n.and_then(Value::as_object)
            .and_then(|m| m.values().next())
    });
    let lang_text = |k: &str| lang.map(|l| text(l, k)).unwrap_or_default();
    let rule_cfg = config
        .offer_rule(NAME, &external)
        .or_else(|| config.offer_rule(NAME, &coupon_id));
    let value = text(c, "couponValue");
    let manual = usage == "DISCOUNT" || usage == "REWARD";
    let (rule, described) = match (rule_cfg, usage.as_str()) {
        (Some(r), _) => (Some(r.rule.clone()), r.description.clone()),
        // Default: a DISCOUNT coupon is couponValue percent off the whole basket.
        (None, "DISCOUNT") => (
            http::decimal_to_cents(&value)
                .filter(|bp| (1..=10_000).contains(bp))
                .map(|bp| Rule {
                    mechanic: Mechanic::PercentOff {
                        basis_points: bp as u32,
                    },
                    requirement: ItemSet::default(),
                    reward: None,
                    min_qty: 1,
                    min_basket: None,
                    max_applications: None,
                }),
            None,
        ),
        _ => (None, None),
    };
    let title = described
        .clone()
        .unwrap_or_else(|| lang_text("title"))
        .chars()
        .take(100)
        .collect::<String>();
    let max = c.get("maxRedeemCount").and_then(http::whole_count);
    let count = c
        .get("redeemCount")
        .and_then(http::whole_count)
        .unwrap_or(0);
    // Used up over all accounts of the program (`maxRedeemCountGlobal`): no lane may
    // apply it any more, for anyone (a redemption would be refused NO_MORE_REDEEM_BY_PROGRAM).
    let used_up_globally = c
        .get("maxRedeemCountGlobal")
        .and_then(http::whole_count)
        .is_some_and(|m| {
            c.get("redeemCountGlobal")
                .and_then(http::whole_count)
                .unwrap_or(0)
                >= m
        });
    let activatable = c
        .pointer("/activation/activatable")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let activated = c
        .pointer("/activation/activated")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let start = date_of(&text(c, "validFrom")).unwrap_or(NaiveDate::MIN);
    let end = last_day_of(&text(c, "validTo")).unwrap_or(NaiveDate::MAX);
    let (start, end) = (
        start.max(NaiveDate::from_ymd_opt(2000, 1, 1).unwrap_or(NaiveDate::MIN)),
        end.min(NaiveDate::from_ymd_opt(2099, 12, 31).unwrap_or(NaiveDate::MAX)),
    );
    let rule_known = rule.is_some();
    let offer = Offer {
        id: String::new(),
        provider: NAME.to_owned(),
        provider_ref: coupon_id,
        short_description: if title.is_empty() {
            format!("Convercus {usage}")
        } else {
            title.clone()
        },
        requirement_description: lang_text("description").chars().take(200).collect(),
        long_description: lang_text("subTitle").chars().take(500).collect(),
        category: usage.clone(),
        brand: String::new(),
        start_date: start,
        end_date: end,
        image_url: c
            .get("images")
            .and_then(Value::as_array)
            .and_then(|a| a.first())
            .map(|i| text(i, "path"))
            .filter(|p| !p.is_empty()),
        targeted: true,
        enabled: manual && rule_known && !used_up_globally,
        featured: false,
        requires_clip: activatable,
        rule: rule.unwrap_or_else(|| Rule {
            mechanic: Mechanic::AmountOff {
                cents: shared::money::Cents(0),
            },
            requirement: ItemSet::default(),
            reward: None,
            min_qty: 1,
            min_basket: None,
            max_applications: Some(1),
        }),
        receipt_alias: {
            let b = lang_text("bookingText");
            if b.is_empty() { title } else { b }
                .chars()
                .take(40)
                .collect()
        },
        reduces_tax: true,
        coupon_type: String::new(),
        external_id: external,
        per_customer_limit: rule_cfg
            .and_then(|r| r.per_customer_limit)
            .or_else(|| max.and_then(|m| u32::try_from(m).ok())),
        global_limit: None,
        loyalty_cost: None,
    };
    let state = if max.is_some_and(|m| count >= m) {
        CouponState::Redeemed
    } else if today > end || !account_active {
        CouponState::Expired
    } else if activatable && !activated {
        CouponState::Available
    } else {
        CouponState::Clipped
    };
    let offer = Offer {
        id: short_id("CV", &offer.provider_ref),
        ..offer
    };
    let pulled = PulledCoupon {
        offer_id: offer.id.clone(),
        state,
        provider_ref: Some(account_coupon_id),
        upstream_redemptions: Some(count),
    };
    Some((offer, pulled))
}

/// How long a legacy login token is used before logging in again: `token_refresh_secs`
/// (20 h of the documented 24, convercus.md §2.2), or 80 % of the token's own lifetime
/// when it is a JWT that says it is shorter: `exp - iat`, or `exp` less our clock when it
/// has no `iat` (§2.1: "do not hard-code lifetime"). The claims are read, not verified:
/// they only time the renewal, and a 401 still logs in again.
fn legacy_lifetime(token: &str, refresh_secs: u64, now: i64) -> Duration {
    #[derive(serde::Deserialize)]
    struct Claims {
        exp: Option<i64>,
        iat: Option<i64>,
    }
    let configured = Duration::from_secs(refresh_secs);
    let Ok(claims) = jsonwebtoken::dangerous::insecure_decode_claims::<Claims>(token) else {
        return configured;
    };
    let Some(exp) = claims.exp else {
        return configured;
    };
    let lives = exp - claims.iat.unwrap_or(now);
    if lives <= 0 {
        log::warn!(provider = NAME; "the Convercus token's exp is not after its iat or our clock; renewing it after token_refresh_secs ({refresh_secs} s) or on a 401; check the clock");
        return configured;
    }
    let own = Duration::from_millis(u64::try_from(lives).unwrap_or(0).saturating_mul(800));
    configured.min(own.max(Duration::from_secs(1)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    /// convercus.md §5: "Before the first attempt record `redeemCount` (from the synced
    /// AccountCoupon)". The count the last pull stored is the baseline only when it can
    /// count every earlier redemption of the coupon by this store; else `None` (a GET).
    #[test]
    fn a_redemption_s_baseline_is_the_synced_count_when_nothing_since_may_be_missing() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = shared::config::DatabaseConfig {
            path: dir.path().join("store.db"),
            ..shared::config::DatabaseConfig::default()
        };
        let conn = shared::db::open_and_migrate(&cfg).unwrap();
        conn.execute_batch("PRAGMA foreign_keys = OFF").unwrap();
        let row = |provider_ref: &str, count: Option<i64>| {
            conn.execute(
                "INSERT OR REPLACE INTO customer_coupons (customer_id, offer_id, state, state_at, provider_ref, upstream_redemptions) \
                 VALUES ('C1', 'CVX1', 'clipped', 1, ?1, ?2)",
                rusqlite::params![provider_ref, count],
            )
            .unwrap();
        };
        let sale = |txn: &str| {
            conn.execute(
                "INSERT INTO redemptions (site, txn_id, customer_id, offer_id, discount, redeemed_at) \
                 VALUES ('S1', ?1, 'C1', 'CVX1', 100, 1)",
                [txn],
            )
            .unwrap();
        };
        let item = |payload: Value| Item {
            id: 7,
            provider: NAME.into(),
            operation: "redeem".into(),
            idempotency_key: "convercus:redeem:S1:T2:CVX1".into(),
            ordering_key: "coupon:C1:CVX1".into(),
            payload,
            state: "inflight".into(),
            attempts: 1,
            last_error: None,
            progress: None,
            next_attempt_at: 0,
            created_at: 0,
            updated_at: 0,
        };
        let ours = json!({"customer": "C1", "offerId": "CVX1", "accountCouponId": "AC1",
                          "site": "S1", "transaction": "T2"});
        let synced = |payload: &Value| synced_redeem_count(&conn, &item(payload.clone())).unwrap();
        // Never pulled: no row, or a row without a count.
        assert_eq!(synced(&ours), None);
        row("AC1", None);
        sale("T2");
        assert_eq!(synced(&ours), None);
        // Pulled, and this sale is the store's only redemption of it: the pulled count.
        row("AC1", Some(2));
        assert_eq!(synced(&ours), Some(2));
        // The row names another account coupon now: its count is not this one's.
        row("AC9", Some(2));
        assert_eq!(synced(&ours), None);
        row("AC1", Some(2));
        // An item that does not name its coupon, customer or sale.
        for k in [
            "customer",
            "offerId",
            "accountCouponId",
            "site",
            "transaction",
        ] {
            let mut p = ours.clone();
            p.as_object_mut().unwrap().remove(k);
            assert_eq!(synced(&p), None, "{k}");
        }
        // Another redemption of the coupon at this store (a multi-use coupon): it may have
        // been delivered after the pull read the count, which may then be one short.
        sale("T1");
        assert_eq!(synced(&ours), None);
    }

    fn config() -> Config {
        Config::from_toml_str(
            "[store]\nsites=[\"S\"]\n[[lanes.credentials]]\nusername=\"a\"\npassword=\"b\"\n\
             [[offer_rules]]\nprovider=\"convercus\"\nreference=\"EXT-R\"\ndescription=\"Free coffee\"\n\
             rule={mechanic={type=\"amountOff\",cents=350},maxApplications=1}\n",
        )
        .unwrap()
    }

    #[test]
    fn a_legacy_token_is_renewed_at_80_percent_of_its_own_lifetime_when_shorter() {
        use base64::Engine;
        let jwt = |claims: Value| {
            let b64 =
                |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
            format!(
                "{}.{}.c2ln",
                b64(&json!({"alg": "HS256", "typ": "JWT"})),
                b64(&claims)
            )
        };
        let now = 1_800_000_000;
        let secs = |d: Duration| d.as_secs();
        // exp - iat decides, whatever our clock says.
        let t = jwt(json!({"iat": now - 500, "exp": now - 500 + 3600}));
        assert_eq!(secs(legacy_lifetime(&t, 72_000, now)), 2880);
        // Without iat: exp less our clock.
        let t = jwt(json!({"exp": now + 100}));
        assert_eq!(secs(legacy_lifetime(&t, 72_000, now)), 80);
        // The documented 24 h: 80 % of it comes before the configured 20 h.
        let t = jwt(json!({"iat": now, "exp": now + 86_400}));
        assert_eq!(secs(legacy_lifetime(&t, 72_000, now)), 69_120);
        // Longer than the configured renewal: the configuration.
        let t = jwt(json!({"iat": now, "exp": now + 2 * 86_400}));
        assert_eq!(secs(legacy_lifetime(&t, 72_000, now)), 72_000);
        // Not a JWT, no exp, or an exp already past: the configuration.
        for t in [
            "opaque-token".to_owned(),
            jwt(json!({"sub": "edge"})),
            jwt(json!({"exp": now - 10})),
        ] {
            assert_eq!(secs(legacy_lifetime(&t, 72_000, now)), 72_000, "{t}");
        }
    }

    fn coupon(usage: &str, extra: Value) -> Value {
        let mut c = json!({
            "accountCouponId": "ACID", "couponId": "c-1", "usageType": usage,
            "externalReference": "EXT-1", "couponValue": 15, "maxRedeemCount": 1, "redeemCount": 0,
            "validFrom": "2026-01-01T00:00:00", "validTo": "",
            "i18nFields": {"de": {"title": "Kaffee"}, "en": {"title": "Coffee 15%"}},
        });
        if let (Some(o), Some(e)) = (c.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                o.insert(k.clone(), v.clone());
            }
        }
        c
    }

    fn map(c: &Value) -> Option<(Offer, PulledCoupon)> {
        let config = config();
        let today = NaiveDate::from_ymd_opt(2026, 11, 22).unwrap();
        map_coupon(c, &config.providers.convercus, &config, today, true)
    }

    /// convercus.md §4.5 answers `AccountCoupon[]`. Before, anything else read as an empty
    /// list, and the pull then expired or deleted every coupon of the customer.
    #[test]
    fn an_account_coupon_list_that_is_not_a_list_is_refused_not_read_as_empty() {
        let config = config();
        let today = NaiveDate::from_ymd_opt(2026, 11, 22).unwrap();
        let cfg = &config.providers.convercus;
        let one = coupon("DISCOUNT", json!({}));
        for answer in [
            json!({"content": [one.clone()], "totalPages": 2}),
            Value::Null,
            json!({"errorCode": "INTERNAL"}),
        ] {
            let e = map_coupons(&answer, cfg, &config, today, true).unwrap_err();
            assert!(matches!(e, CallError::Malformed(_)), "{answer}: {e:?}");
        }
        let mapped = map_coupons(&json!([one]), cfg, &config, today, true).unwrap();
        assert_eq!(mapped.len(), 1);
        assert!(map_coupons(&json!([]), cfg, &config, today, true)
            .unwrap()
            .is_empty());
    }

    /// convercus.md §4.5: `validTo` is a local date-time. One at midnight ends the day
    /// before; before, the coupon was honoured for the whole of the day it ended at.
    #[test]
    fn a_coupon_valid_to_midnight_ends_the_day_before() {
        let day = |d: u32| NaiveDate::from_ymd_opt(2026, 11, d).unwrap();
        for (valid_to, last_day) in [
            ("2026-11-22T23:59:00", day(22)),
            ("2026-11-23T00:00:00", day(22)),
            ("2026-11-23T00:00:00.000Z", day(22)),
            ("2026-11-23T00:00", day(22)),
            ("2026-11-23T00:00:01", day(23)),
            ("2026-11-23", day(23)),
        ] {
            let (offer, pulled) = map(&coupon("DISCOUNT", json!({"validTo": valid_to}))).unwrap();
            assert_eq!(offer.end_date, last_day, "{valid_to}");
            assert_eq!(pulled.state, CouponState::Clipped, "{valid_to}");
        }
        // Ended at the midnight that began today (2026-11-22): expired today.
        let (offer, pulled) = map(&coupon(
            "DISCOUNT",
            json!({"validTo": "2026-11-22T00:00:00"}),
        ))
        .unwrap();
        assert_eq!(offer.end_date, day(21));
        assert_eq!(pulled.state, CouponState::Expired);
    }

    #[test]
    fn discount_defaults_to_percent_off_the_basket() {
        let (offer, pulled) = map(&coupon("DISCOUNT", json!({}))).unwrap();
        assert_eq!(offer.short_description, "Coffee 15%");
        assert!(offer.enabled && offer.targeted && !offer.requires_clip);
        assert_eq!(
            offer.rule.mechanic,
            Mechanic::PercentOff { basis_points: 1500 }
        );
        assert!(offer.rule.requirement.is_everything());
        assert_eq!(offer.id.len(), 14);
        assert_eq!(pulled.state, CouponState::Clipped);
        assert_eq!(pulled.provider_ref.as_deref(), Some("ACID"));
    }

    #[test]
    fn usage_types_activation_and_counts() {
        for usage in ["EXTRAPOINT", "MULTIPLIER"] {
            let (offer, _) = map(&coupon(usage, json!({}))).unwrap();
            assert!(!offer.enabled, "{usage} is never redeemed at a lane");
        }
        let (reward, _) = map(&coupon("REWARD", json!({}))).unwrap();
        assert!(!reward.enabled, "a REWARD without a configured rule");
        let (reward, _) = map(&coupon("REWARD", json!({"externalReference": "EXT-R"}))).unwrap();
        assert!(reward.enabled);
        assert_eq!(reward.short_description, "Free coffee");
        let (o, p) = map(&coupon(
            "DISCOUNT",
            json!({"activation": {"activatable": true, "activated": false}}),
        ))
        .unwrap();
        assert!(o.requires_clip);
        assert_eq!(p.state, CouponState::Available);
        let (_, p) = map(&coupon(
            "DISCOUNT",
            json!({"activation": {"activatable": true, "activated": true}}),
        ))
        .unwrap();
        assert_eq!(p.state, CouponState::Clipped);
        let (_, p) = map(&coupon("DISCOUNT", json!({"redeemCount": 1}))).unwrap();
        assert_eq!(p.state, CouponState::Redeemed);
        assert_eq!(p.upstream_redemptions, Some(1));
        // A count written `1.0` is one (as_i64 alone read it as none: 0, still usable).
        let (_, p) = map(&coupon(
            "DISCOUNT",
            json!({"redeemCount": 1.0, "maxRedeemCount": 1.0}),
        ))
        .unwrap();
        assert_eq!(p.state, CouponState::Redeemed);
        assert_eq!(p.upstream_redemptions, Some(1));
        // Used up over the whole program: offered to nobody.
        let global = |count: i64| {
            map(&coupon(
                "DISCOUNT",
                json!({"maxRedeemCountGlobal": 100, "redeemCountGlobal": count}),
            ))
            .unwrap()
            .0
            .enabled
        };
        assert!(global(99));
        assert!(!global(100));
        let (_, p) = map(&coupon(
            "DISCOUNT",
            json!({"validTo": "2026-02-01T00:00:00"}),
        ))
        .unwrap();
        assert_eq!(p.state, CouponState::Expired);
        assert!(map(&coupon(
            "DISCOUNT",
            json!({"pointsOfRedemption": [{"unitType": "INTERACTIONPOINT", "value": "app"}]})
        ))
        .is_none());
        assert!(map(&coupon(
            "DISCOUNT",
            json!({"pointsOfRedemption": [{"unitType": "INTERACTIONPOINT", "value": "edge"}]})
        ))
        .is_some());
    }

    #[test]
    fn error_bodies_are_read_in_every_plausible_layout() {
        let read = |body: &str| match error_of(400, body) {
            CallError::Status { code, detail, .. } => (code, detail),
            other => panic!("{other:?}"),
        };
        let code = |body: &str| read(body).0;
        assert_eq!(
            read(
                r#"{"code":"CONDITION_NOT_FULFILLED","detail":["NO_LONGER_REDEEMABLE","WRONG_INTERACTION_POINT"]}"#
            ),
            (
                "CONDITION_NOT_FULFILLED".to_owned(),
                "NO_LONGER_REDEEMABLE,WRONG_INTERACTION_POINT".to_owned()
            )
        );
        assert_eq!(
            code(r#"{"errorCode":"COUPON_NOT_FOUND"}"#),
            "COUPON_NOT_FOUND"
        );
        assert_eq!(
            read(r#"{"errors":[{"code":"ACCOUNT_LOCKED","message":"account is locked"}]}"#),
            ("ACCOUNT_LOCKED".to_owned(), "account is locked".to_owned())
        );
        assert_eq!(
            read(r#"{"error":{"code":"COUPON_NOT_ACTIVATED","message":"not active"}}"#),
            ("COUPON_NOT_ACTIVATED".to_owned(), "not active".to_owned())
        );
        // Keycloak: `error` is the code, `error_description` the detail.
        assert_eq!(
            read(r#"{"error":"invalid_grant","error_description":"Invalid user credentials"}"#),
            (
                "invalid_grant".to_owned(),
                "Invalid user credentials".to_owned()
            )
        );
        // A documented code named only in the text.
        assert_eq!(
            read(r#"{"status":409,"message":"COUPON_REDEMPTION_IN_PROGRESS: try later"}"#),
            (
                "COUPON_REDEMPTION_IN_PROGRESS".to_owned(),
                "COUPON_REDEMPTION_IN_PROGRESS: try later".to_owned()
            )
        );
        assert_eq!(
            code(
                r#"{"title":"Bad Request","detail":"Coupon COUPON_NOT_ASSIGNED_ACCOUNT for this account"}"#
            ),
            "COUPON_NOT_ASSIGNED_ACCOUNT"
        );
        // Spring's default body: `error` is the reason phrase, the code is in `message`.
        assert_eq!(
            read(
                r#"{"timestamp":"2026-11-30T10:00:00.000+00:00","status":409,"error":"Conflict","message":"COUPON_REDEMPTION_IN_PROGRESS","path":"/v3/accountcoupons/7"}"#
            ),
            (
                "COUPON_REDEMPTION_IN_PROGRESS".to_owned(),
                "COUPON_REDEMPTION_IN_PROGRESS".to_owned()
            )
        );
        assert_eq!(
            code(
                r#"{"status":400,"error":"Bad Request","message":"CONDITION_NOT_FULFILLED: [NOT_YET_REDEEMABLE]"}"#
            ),
            "CONDITION_NOT_FULFILLED"
        );
        // Upper-case words that are not documented codes are not taken for one.
        assert_eq!(code(r#"{"message":"BAD_THING happened"}"#), "");
        // Not JSON: no code, the raw body as detail.
        assert_eq!(
            read("<html>Bad Gateway</html>"),
            (String::new(), "<html>Bad Gateway</html>".to_owned())
        );
    }

    #[test]
    fn path_segments_are_percent_encoded_as_utf8() {
        assert_eq!(enc("A1B2-c3_d.4~"), "A1B2-c3_d.4~");
        assert_eq!(enc("a b/c"), "a%20b%2Fc");
        // Each UTF-8 byte, not the code point cut to a byte ("é" was "%E9").
        assert_eq!(enc("é"), "%C3%A9");
        assert_eq!(enc("€1"), "%E2%82%AC1");
    }

    #[test]
    fn refusals_are_classified() {
        let refusal = |status: u16, code: &str, detail: &str, attempts: i64| {
            redeem_refusal(
                &CallError::Status {
                    status,
                    code: code.into(),
                    detail: detail.into(),
                },
                attempts > 1,
            )
        };
        let retried = |d: Delivery| matches!(d, Delivery::Retry(_));
        let dead = |d: Delivery| matches!(d, Delivery::Dead(_));
        assert!(retried(refusal(
            400,
            "CONDITION_NOT_FULFILLED",
            "NOT_YET_REDEEMABLE",
            1
        )));
        assert!(dead(refusal(
            400,
            "CONDITION_NOT_FULFILLED",
            "NO_LONGER_REDEEMABLE",
            1
        )));
        assert!(dead(refusal(409, "COUPON_NOT_ASSIGNED_ACCOUNT", "", 1)));
        assert!(retried(refusal(
            409,
            "COUPON_REDEMPTION_IN_PROGRESS",
            "",
            5
        )));
        assert!(retried(refusal(500, "INTERNAL_SERVER_ERROR", "", 1)));
        // No documented code: the HTTP status decides (a bare 503, a 429, an HTML 502).
        assert!(retried(refusal(503, "", "Service Unavailable", 1)));
        assert!(retried(refusal(429, "", "", 1)));
        assert!(retried(refusal(502, "", "<html>Bad Gateway</html>", 1)));
        assert!(dead(refusal(400, "", "bad request", 1)));
        // A documented permanent code stays permanent whatever the status.
        assert!(dead(refusal(500, "COUPON_NOT_FOUND", "", 1)));
        // COUPON_NOT_ACTIVATABLE: one more try the first time it is answered, then final.
        assert!(retried(refusal(400, "COUPON_NOT_ACTIVATABLE", "", 1)));
        assert!(dead(refusal(400, "COUPON_NOT_ACTIVATABLE", "", 2)));
        let status = |code: &str, detail: &str| CallError::Status {
            status: 400,
            code: code.into(),
            detail: detail.into(),
        };
        assert!(refusal_is(
            &status(
                "CONDITION_NOT_FULFILLED",
                "NO_MORE_REDEEM_BY_PROGRAM,NO_MORE_REDEEM_BY_ACCOUNT"
            ),
            "NO_MORE_REDEEM_BY_ACCOUNT"
        ));
        assert!(!refusal_is(
            &status("CONDITION_NOT_FULFILLED", "NO_MORE_REDEEM_BY_PROGRAM"),
            "NO_MORE_REDEEM_BY_ACCOUNT"
        ));
        assert!(refusal_is(
            &status("COUPON_NOT_ACTIVATABLE", ""),
            "COUPON_NOT_ACTIVATABLE"
        ));
    }
}
