//! Coupontools client (shared/api/coupontools.md): every call a `POST` with the client id
//! and secret headers; success or failure is decided on the body (`status.status`), since
//! errors arrive inside HTTP 200 answers.
//!
//! There are no idempotency keys: before a session is first sent, the worker durably notes
//! the time; a retried `validate` looks the session up first, and a validation found there
//! no older than that time (less the allowed clock skew) is ours: delivered, not refused.

use crate::http::{self, CallError, Delivery};
use crate::pace::Pacer;
use chrono::{NaiveDateTime, TimeZone, Utc};
use serde_json::{json, Map, Value};
use shared::config::{Config, CoupontoolsConfig};
use shared::money::Cents;
use shared::outbox::Item;
use shared::repo::Voucher;
use std::sync::Arc;

pub const NAME: &str = shared::outbox::provider::COUPONTOOLS;

/// The progress note of an item: when we first sent it (seconds since the epoch).
const FIRST_ATTEMPT: &str = "firstAttemptAt";

pub struct Client {
    cfg: CoupontoolsConfig,
    http: reqwest::Client,
    /// Where the session pulls of this client stand (see [`Client::pull_since`]).
    pulls: std::sync::Mutex<PullMark>,
    pacer: Arc<Pacer>,
}

/// The start (epoch seconds) of the last successful pull, and of the last full one.
#[derive(Debug, Default, Clone, Copy)]
struct PullMark {
    last_start: Option<i64>,
    last_full: Option<i64>,
}

/// `start_date` as coupontools.md §3.3 writes it: UTC, `yyyy-MM-dd hh-mm` (a hyphen in
/// the time part).
pub fn start_date(secs: i64) -> String {
    Utc.timestamp_opt(secs, 0)
        .single()
        .map(|t| t.format("%Y-%m-%d %H-%M").to_string())
        .unwrap_or_default()
}

/// The body of one page of a campaign's sessions (`page` is a number, 1-based), from
/// `since` when the pull is incremental.
pub fn page_params(campaign: &str, page: usize, since: Option<i64>) -> Value {
    let mut p = json!({"campaign": campaign, "page": page});
    if let Some(t) = since {
        p["start_date"] = json!(start_date(t));
    }
    p
}

/// What a documented error code means for us (coupontools.md §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeClass {
    /// 1000, 101–104: credentials or account: pause the queue, never dead-letter.
    Credentials,
    /// 200, 300–349: a parameter is missing or wrong: permanent.
    BadRequest,
    /// 5xx family (502, 503, 505, 507, 509, 510, 513, 515): the entity does not exist.
    NotFound,
    Unknown,
}

pub fn classify(code: i64) -> CodeClass {
    match code {
        1000 | 101..=104 => CodeClass::Credentials,
        200 | 300..=349 => CodeClass::BadRequest,
        // Only the listed codes: a 500, 501 or 504 in the envelope is not one of them.
        502 | 503 | 505 | 507 | 509 | 510 | 513 | 515 => CodeClass::NotFound,
        _ => CodeClass::Unknown,
    }
}

/// A failed answer: its first error code and all messages.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub code: i64,
    pub message: String,
}

/// Reads both documented failure envelopes (`error_code` an integer or an array).
pub fn failure_of(body: &Value) -> Option<Failure> {
    let status = body.pointer("/status/status").and_then(Value::as_str)?;
    if status.eq_ignore_ascii_case("OK") {
        return None;
    }
    let errors = body.pointer("/status/errors");
    let code = match errors.and_then(|e| e.get("error_code")) {
        Some(Value::Array(a)) => a.first().and_then(Value::as_i64),
        Some(v) => v
            .as_i64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok())),
        None => None,
    }
    .unwrap_or(0);
    let mut message = errors
        .and_then(|e| e.get("error_message"))
        .and_then(Value::as_str)
        .unwrap_or("failed")
        .to_owned();
    if let Some(d) = errors
        .and_then(|e| e.get("error_message_description"))
        .and_then(Value::as_array)
    {
        for x in d.iter().filter_map(Value::as_str) {
            message.push(' ');
            message.push_str(x);
        }
    }
    Some(Failure { code, message })
}

/// What one answer means, decided on its body first (coupontools.md §4: "always decide on
/// the body, not the status"). A failure envelope with a documented code is that failure
/// whatever the HTTP status: a 500 or 503 carrying `513` is a session that does not exist
/// (dead-lettered, not retried for ever) and one carrying `1000` is refused credentials.
/// A 429 or 5xx whose body is not such an envelope (a proxy's page, plain text, an
/// unknown code, even `OK`) is a transport failure and is retried; a retried `validate`
/// looks the session up first, so an `OK` under a 5xx is never counted twice.
fn decide(path: &str, status: u16, text: &str) -> Result<Value, CallError> {
    let body = serde_json::from_str::<Value>(text);
    let transport_fault = status == 429 || status >= 500;
    let failure = body.as_ref().ok().and_then(failure_of);
    // An envelope whose own status line is a server error (`HTTP/1.0 503 Service
    // Unavailable`, §4: "`error_message` embeds an HTTP status line") is the server failing,
    // whatever its code: 503 is also "teammate not found", which Coupontools states as a 4xx.
    let documented = failure.as_ref().is_some_and(|f| {
        classify(f.code) != CodeClass::Unknown && !states_server_error(&f.message)
    });
    if transport_fault && !documented {
        return Err(CallError::Status {
            status,
            code: String::new(),
            detail: text.chars().take(200).collect(),
        });
    }
    // Refused at the door without Coupontools' envelope (a gateway's 401/403 page): the
    // credentials or the account, as code 1000 would say; retrying the same call cannot
    // help, so the queue pauses until the configuration changes.
    if matches!(status, 401 | 403) && !documented {
        return Err(CallError::Auth(format!(
            "Coupontools answered HTTP {status}; check providers.coupontools.client_id/client_secret and that this store may use the account"
        )));
    }
    // Any other 4xx without Coupontools' envelope (a 404 or 405 page from a proxy or a
    // wrong `base_url`, a 400 from a gateway): an answer, and a refusal. §4 retries only
    // 5xx and network failures; sending the same call again gets the same page, so the
    // item is dead-lettered (with what came back) instead of retried for ever. 408 and 429
    // are a server asking us to come back: left to the branches above and below.
    let enveloped = body
        .as_ref()
        .is_ok_and(|b| b.pointer("/status/status").is_some());
    if (400..500).contains(&status) && !matches!(status, 408 | 429) && !enveloped {
        return Err(refused_without_envelope(status, text));
    }
    let body = body.map_err(|e| CallError::Malformed(format!("{path}: {e}")))?;
    match failure {
        None if body.pointer("/status/status").is_some() => Ok(body),
        // A bare list (a session list's shape is a [GAP]) carries no failure envelope.
        None if body.is_array() => Ok(body),
        None => Err(CallError::Malformed(format!(
            "{path}: no status in the answer"
        ))),
        Some(f) if classify(f.code) == CodeClass::Credentials => Err(CallError::Auth(format!(
            "Coupontools error {}: {}; check providers.coupontools.client_id/client_secret",
            f.code, f.message
        ))),
        Some(f) if transport_fault => Err(CallError::Status {
            // Decided on the body: the status its message names (`HTTP/1.0 422 …`), or
            // 422, so the failure is not taken for a transient one; the real status is
            // kept in the text.
            status: stated_status(&f.message).unwrap_or(422),
            code: f.code.to_string(),
            detail: format!("{} (answered with HTTP {status})", f.message),
        }),
        Some(f) => Err(CallError::Status {
            status,
            code: f.code.to_string(),
            detail: f.message,
        }),
    }
}

/// A 4xx answer that is not Coupontools' JSON envelope, as a refusal: what came back (its
/// first 200 characters) and what store IT can check before retrying the item.
fn refused_without_envelope(status: u16, text: &str) -> CallError {
    let answer: String = text.trim().chars().take(200).collect();
    CallError::Status {
        status,
        code: String::new(),
        detail: format!(
            "an answer without Coupontools' JSON status envelope (a proxy's page, or a wrong address): {answer:?}; check providers.coupontools.base_url and any proxy between the store and Coupontools, then retry the item (edge-ctl outbox retry ID)"
        ),
    }
}

/// The 4xx status an error message names in its `HTTP/1.x NNN` line, if any.
/// Whether an error message begins with an HTTP status line of a server error (5xx).
fn states_server_error(message: &str) -> bool {
    message
        .trim_start()
        .strip_prefix("HTTP/")
        .and_then(|rest| rest.split_whitespace().nth(1))
        .and_then(|code| code.parse::<u16>().ok())
        .is_some_and(|code| (500..600).contains(&code))
}

fn stated_status(message: &str) -> Option<u16> {
    let rest = message.trim_start().strip_prefix("HTTP/")?;
    let code: u16 = rest.split_whitespace().nth(1)?.parse().ok()?;
    (400..500)
        .contains(&code)
        .then_some(code)
        .filter(|c| *c != 429)
}

impl Client {
    /// A client with a pacer of its own (see [`Client::with_pacer`]).
    pub fn new(cfg: &CoupontoolsConfig) -> Client {
        let pacer = Pacer::new(NAME, cfg.max_requests_per_sec, cfg.max_retry_after_secs);
        Client::with_pacer(cfg, Arc::new(pacer))
    }

    /// A client whose calls wait for `pacer` (the daemon's one for this provider, kept
    /// across configuration reloads).
    pub fn with_pacer(cfg: &CoupontoolsConfig, pacer: Arc<Pacer>) -> Client {
        Client {
            pulls: std::sync::Mutex::new(PullMark::default()),
            cfg: cfg.clone(),
            http: http::client(cfg.timeout_ms),
            pacer,
        }
    }

    pub fn config(&self) -> &CoupontoolsConfig {
        &self.cfg
    }

    pub fn pacer(&self) -> &Arc<Pacer> {
        &self.pacer
    }

    /// One call; `Ok` only when the body says `OK`.
    async fn call(&self, path: &str, params: Value) -> Result<Value, CallError> {
        let url = format!("{}/{path}", self.cfg.base_url.trim_end_matches('/'));
        self.pacer.ready().await;
        let resp = self
            .http
            .post(url)
            .header("X-Client-Id", &self.cfg.client_id)
            .header("X-Client-Secret", self.cfg.client_secret.expose())
            .header("Accept", "application/json")
            .json(&params)
            .send()
            .await
            .map_err(|e| CallError::from_reqwest(&e).at_key("providers.coupontools.base_url"))?;
        let status = resp.status().as_u16();
        self.pacer.note(status, resp.headers());
        let text = resp
            .text()
            .await
            .map_err(|e| CallError::from_reqwest(&e).at_key("providers.coupontools.base_url"))?;
        decide(path, status, &text)
    }

    pub async fn probe(&self) -> Result<(), CallError> {
        self.call("coupon/list", json!({"only_active": true}))
            .await
            .map(|_| ())
    }

    /// One session's record (`couponsession/data`); `None` when Coupontools does not know it.
    pub async fn session(&self, session: &str) -> Result<Option<Value>, CallError> {
        match self
            .call("couponsession/data", json!({"couponsession": session}))
            .await
        {
            Ok(v) => Ok(Some(v)),
            Err(CallError::Status { code, .. }) if code == "513" => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The record of the session a retailer's own validation code belongs to
    /// (`couponsession/search`, coupontools.md §3.7), `None` when there is none or search is
    /// off (`search_param` empty). The answer's shape is a [GAP]: its sessions are looked
    /// for like a `campaign/*` page's (`session_list_keys`), or the answer is one record
    /// itself. A hit without the session's data (only its id) is then read with
    /// `couponsession/data`. The record's own code is set to `code` when it names none, so
    /// the voucher made of it can be scanned by the code the lane had.
    pub async fn search_own_code(&self, code: &str) -> Result<Option<Value>, CallError> {
        let param = self.cfg.search_param.trim();
        if param.is_empty() {
            return Ok(None);
        }
        let mut params = serde_json::Map::new();
        params.insert(param.to_owned(), json!(code));
        let answer = match self
            .call("couponsession/search", Value::Object(params))
            .await
        {
            Ok(v) => v,
            Err(CallError::Status { code, .. }) if code == "513" => return Ok(None),
            Err(e) => return Err(e),
        };
        let Some(hit) = search_hit(answer, code, &self.cfg.session_list_keys) else {
            return Ok(None);
        };
        let mut record = if hit.pointer("/data/status").is_some() {
            hit
        } else {
            match self.session(&str_of(&hit, "session")).await? {
                Some(r) => r,
                None => return Ok(None),
            }
        };
        name_own_code(&mut record, code);
        Ok(Some(record))
    }

    // ------------------------------------------------------------ delivery

    pub async fn deliver<F, Fut>(&self, item: &Item, record: F) -> Delivery
    where
        F: FnOnce(Value) -> Fut,
        Fut: std::future::Future<Output = Result<(), String>>,
    {
        // The session id (what `couponsession` names). Items queued by earlier versions
        // named a pulled voucher's campaign (`cam_…`) instead: those use the scanned code.
        let session = item
            .payload
            .get("providerRef")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty() && !s.starts_with("cam_"))
            .or_else(|| item.payload.get("code").and_then(Value::as_str))
            .unwrap_or_default()
            .to_owned();
        if session.is_empty() {
            return Delivery::Dead("item names no coupon session".into());
        }
        let action = item.operation.as_str();
        if !["lock", "unlock", "validate"].contains(&action) {
            return Delivery::Dead(format!("unknown Coupontools operation {action}"));
        }
        let first_attempt = item
            .progress
            .as_ref()
            .and_then(|p| p.get(FIRST_ATTEMPT))
            .and_then(Value::as_i64);
        let first_attempt = match first_attempt {
            Some(t) if action == "validate" => {
                // A retry: look first, the earlier attempt may have been applied.
                match self.validated_by_us(&session, t).await {
                    Ok(Some(d)) => return d,
                    Ok(None) => t,
                    Err(e) => return Delivery::from_error(&e),
                }
            }
            Some(t) => {
                // A retried lock or unlock: already in the wanted state means applied.
                match self.session(&session).await {
                    Ok(Some(rec)) => {
                        let status = rec.pointer("/data/status").cloned().unwrap_or(Value::Null);
                        if flag(&status, "locked") == (action == "lock") {
                            return Delivery::Delivered {
                                note: Some(format!("verified: the session is already {action}ed")),
                            };
                        }
                        t
                    }
                    Ok(None) => return Delivery::Dead("513: coupon session not found".into()),
                    Err(e) => return Delivery::from_error(&e),
                }
            }
            None => {
                let now = shared::db::now_secs();
                if let Err(e) = record(json!({FIRST_ATTEMPT: now})).await {
                    return Delivery::Retry(format!("cannot record progress: {e}"));
                }
                now
            }
        };
        let mut params = Map::new();
        params.insert("couponsession".into(), json!(session));
        let value = match action {
            "lock" => &self.cfg.lock_action,
            "unlock" => &self.cfg.unlock_action,
            _ => &self.cfg.validate_action,
        };
        params.insert(self.cfg.action_param.clone(), json!(value));
        if action == "validate" {
            if let Some(c) = item.payload.get("moneySpentCents").and_then(Value::as_i64) {
                params.insert("money_spent".into(), json!(http::cents_to_decimal(c, 3)));
            }
        }
        match self
            .call("couponsession/update", Value::Object(params))
            .await
        {
            Ok(_) => Delivery::delivered(),
            Err(CallError::Status { code, detail, .. })
                if action == "validate" && detail.contains("already used") =>
            {
                // Our lost first answer, or someone else's use: the session tells which.
                match self.validated_by_us(&session, first_attempt).await {
                    Ok(Some(d)) => d,
                    Ok(None) => Delivery::Dead(format!("{code}: {detail}")),
                    Err(e) => Delivery::from_error(&e),
                }
            }
            // 302: a value not in the allowed list. For this call that is our action value
            // (a [GAP] kept in config): a configuration fault, so the queue pauses and the
            // item waits instead of every lock and validation being dead-lettered.
            Err(CallError::Status { code, detail, .. }) if code == "302" => {
                Delivery::AuthFailed(format!(
                    "Coupontools refused the action value `{value}` ({code}: {detail}); check providers.coupontools.action_param and {action}_action"
                ))
            }
            Err(CallError::Status {
                code,
                detail,
                status,
            }) if status < 500 && status != 429 => Delivery::Dead(if code.is_empty() {
                format!("Coupontools call refused with HTTP {status}: {detail}")
            } else {
                format!("Coupontools error {code}: {detail}")
            }),
            Err(e) => Delivery::from_error(&e),
        }
    }

    /// `Some(Delivered)` when the session is validated at or after our first attempt (less
    /// the clock skew), `Some(Dead)` when it was validated before (someone else used it),
    /// `None` when it is not validated.
    async fn validated_by_us(
        &self,
        session: &str,
        first_attempt: i64,
    ) -> Result<Option<Delivery>, CallError> {
        let Some(record) = self.session(session).await? else {
            return Ok(Some(Delivery::Dead(
                "513: coupon session not found".to_owned(),
            )));
        };
        let status = record
            .pointer("/data/status")
            .cloned()
            .unwrap_or(Value::Null);
        if flag(&status, "validated") {
            let at = str_of(&status, "validation_date_utc");
            let when = parse_utc(&at).unwrap_or(i64::MAX);
            return Ok(Some(if when >= first_attempt - self.cfg.clock_skew_secs {
                Delivery::Delivered {
                    note: Some(format!(
                        "verified: validated at {at} UTC by our earlier attempt"
                    )),
                }
            } else {
                Delivery::Dead(format!(
                    "conflict: the session was already used at {at} UTC, before this store's validation"
                ))
            }));
        }
        Ok(None)
    }

    // ------------------------------------------------------------ pull

    /// Titles of the account's active campaigns.
    pub async fn campaigns(&self) -> Result<Vec<(String, String)>, CallError> {
        let v = self
            .call("coupon/list", json!({"only_active": true}))
            .await?;
        Ok(v.get("coupon_info")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|c| {
                let title = str_of(c, "title");
                (
                    str_of(c, "ID"),
                    if title.is_empty() {
                        str_of(c, "name")
                    } else {
                        title
                    },
                )
            })
            .collect())
    }

    /// Where the next session pull starts: `None` for a full pull (the first of this
    /// client, or when none was done for `full_pull_hours`), else the start of the last
    /// successful pull less `pull_overlap_secs` (coupontools.md §3.3: incremental by
    /// `start_date`).
    pub fn pull_since(&self, now: i64) -> Option<i64> {
        let mark = *self
            .pulls
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let full_every =
            i64::try_from(self.cfg.full_pull_hours.saturating_mul(3600)).unwrap_or(i64::MAX);
        let overlap = i64::try_from(self.cfg.pull_overlap_secs).unwrap_or(i64::MAX);
        match (mark.last_start, mark.last_full) {
            (Some(start), Some(full)) if now - full < full_every => {
                Some(start.saturating_sub(overlap))
            }
            _ => None,
        }
    }

    /// A session pull that started at `started` succeeded.
    pub fn pull_done(&self, started: i64, full: bool) {
        let mut mark = self
            .pulls
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        mark.last_start = Some(started);
        if full {
            mark.last_full = Some(started);
        }
    }

    /// One page (1-based) of a campaign's sessions: `campaign/claims` (claimed, by claim
    /// date) or `campaign/validations` (validated, by validation date), from `since`.
    pub async fn sessions_page(
        &self,
        path: &str,
        campaign: &str,
        page: usize,
        since: Option<i64>,
    ) -> Result<Vec<Value>, CallError> {
        let v = self.call(path, page_params(campaign, page, since)).await?;
        match sessions_of(v, &self.cfg.session_list_keys) {
            Ok(records) => Ok(records),
            Err(found) => {
                log::warn!(provider = NAME, campaign = campaign; "{path} page {page} holds no session list under any of providers.coupontools.session_list_keys {:?}; keys found: {found:?}; read as no sessions", self.cfg.session_list_keys);
                Ok(Vec::new())
            }
        }
    }
}

/// The session records of a `campaign/*` answer, whose shape coupontools.md §3.3 leaves a
/// [GAP]: a bare JSON array, or the first array under one of `keys`, in order. `Err` with
/// the keys the answer has when neither is there.
pub fn sessions_of(answer: Value, keys: &[String]) -> Result<Vec<Value>, Vec<String>> {
    match answer {
        Value::Array(a) => Ok(a),
        Value::Object(mut map) => {
            for k in keys {
                if let Some(Value::Array(a)) = map.remove(k) {
                    return Ok(a);
                }
            }
            Err(map.keys().cloned().collect())
        }
        _ => Err(Vec::new()),
    }
}

/// Sets a searched session record's own validation code to `code` when it names none. A
/// `data.status` that is no object is left alone (indexing it would panic; the record
/// came from outside).
fn name_own_code(record: &mut Value, code: &str) {
    if let Some(status) = record
        .pointer_mut("/data/status")
        .and_then(Value::as_object_mut)
    {
        if status
            .get("own_validation_code")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            status.insert("own_validation_code".into(), json!(code));
        }
    }
}

/// The session a `couponsession/search` answer names for `code`: among its records (see
/// [`Client::search_own_code`]) the one whose own validation code is `code`, else the only
/// one that names no own code. A record is anything naming a `session` (a bare id string
/// counts). A record with another own code is not a hit; several without one are
/// ambiguous: none.
fn search_hit(answer: Value, code: &str, keys: &[String]) -> Option<Value> {
    let records = match answer {
        Value::Object(ref m) if m.contains_key("session") => vec![answer],
        other => sessions_of(other, keys).unwrap_or_default(),
    };
    let records: Vec<Value> = records
        .into_iter()
        .map(|r| match r {
            Value::String(id) => json!({ "session": id }),
            r => r,
        })
        .filter(|r| !str_of(r, "session").is_empty())
        .collect();
    let own = |r: &Value| str_of(&r["data"]["status"], "own_validation_code");
    if let Some(i) = records.iter().position(|r| own(r) == code) {
        return records.into_iter().nth(i);
    }
    let mut unnamed = records.into_iter().filter(|r| own(r).is_empty());
    match (unnamed.next(), unnamed.next()) {
        (Some(r), None) => Some(r),
        _ => None,
    }
}

fn str_of(v: &Value, k: &str) -> String {
    match v.get(k) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => String::new(),
    }
}

fn flag(status: &Value, k: &str) -> bool {
    matches!(str_of(status, k).as_str(), "1" | "true")
}

/// `YYYY-MM-DD HH:MM:SS` (UTC) as seconds since the epoch.
fn parse_utc(s: &str) -> Option<i64> {
    NaiveDateTime::parse_from_str(s.trim(), "%Y-%m-%d %H:%M:%S")
        .ok()
        .map(|d| Utc.from_utc_datetime(&d).timestamp())
}

/// A Coupontools UTC time (`YYYY-MM-DD HH:MM:SS`) the way the lanes' voucher API gives
/// every time (RFC 3339, UTC, seconds: `validatedAt` in docs/openapi.json), like the time
/// a lane validation stores; a value that is not such a time is kept as it came.
fn rfc3339(utc: &str) -> String {
    parse_utc(utc)
        .and_then(|t| chrono::DateTime::from_timestamp(t, 0))
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| utc.trim().to_owned())
}

/// A claimed session as the voucher the lanes can validate offline. Its value comes from
/// the campaign's configured rule (an `amountOff`), else from the session's `value` field.
pub fn voucher_of(record: &Value, title: &str, config: &Config) -> Option<Voucher> {
    let session = str_of(record, "session");
    if session.is_empty() {
        return None;
    }
    let campaign = {
        let c = str_of(record, "campaign");
        if c.is_empty() {
            record
                .pointer("/data/campaign/ID")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        } else {
            c
        }
    };
    let status = record
        .pointer("/data/status")
        .cloned()
        .unwrap_or(Value::Null);
    let rule = config.offer_rule(NAME, &campaign);
    let value = match rule.map(|r| &r.rule.mechanic) {
        Some(shared::domain::Mechanic::AmountOff { cents }) => *cents,
        _ => Cents(http::decimal_to_cents(&str_of(&status, "value")).unwrap_or(0)),
    };
    let min_spend = rule.and_then(|r| r.rule.min_basket).unwrap_or(Cents(0));
    let expiry = str_of(&status, "expiration_date");
    let validated = flag(&status, "validated");
    let state = if flag(&status, "voided") {
        "void"
    } else if validated {
        "validated"
    } else if flag(&status, "locked") {
        "locked"
    } else {
        "active"
    };
    let description = rule
        .and_then(|r| r.description.clone())
        .unwrap_or_else(|| title.to_owned());
    // The retailer's own validation code, when the campaign gives one, is what the shopper
    // is shown instead of the session id (coupontools.md §1): a lane may scan either.
    let own = str_of(&status, "own_validation_code");
    let alias = shared::domain::VoucherCode::parse(own.trim())
        .ok()
        .map(|c| c.as_str().to_owned())
        .filter(|c| *c != session);
    Some(Voucher {
        // The session is the voucher's upstream identity: locks and validations name it.
        provider_ref: session.clone(),
        code: session,
        alias,
        provider: NAME.to_owned(),
        description: description.chars().take(100).collect(),
        value,
        min_spend,
        valid_from: None,
        valid_until: expiry.get(..10).map(str::to_owned),
        state: state.to_owned(),
        validated_at: validated.then(|| rfc3339(&str_of(&status, "validation_date_utc"))),
        ..Voucher::default()
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    #[test]
    fn session_lists_are_read_in_every_shape() {
        let keys: Vec<String> = shared::config::CoupontoolsConfig::default().session_list_keys;
        let rec = json!({"session": "s-1"});
        let want = vec![rec.clone()];
        let ok = |v: Value| sessions_of(v, &keys).unwrap();
        assert_eq!(ok(json!([rec.clone()])), want, "a bare array");
        for k in ["sessions", "data", "items", "results", "couponsessions"] {
            let mut v = json!({"status": {"status": "OK"}, "page": "1"});
            v[k] = json!([rec.clone()]);
            assert_eq!(ok(v), want, "{k}");
        }
        // `data` as an object (not a list) is passed over for a later key.
        let v = json!({"status": {"status": "OK"}, "data": {"campaign": "x"}, "results": [rec.clone()]});
        assert_eq!(ok(v), want);
        assert!(ok(json!({"status": {"status": "OK"}, "sessions": []})).is_empty());
        // None of them: the keys found are named.
        let found = sessions_of(
            json!({"status": {"status": "OK"}, "records": [rec.clone()]}),
            &keys,
        )
        .unwrap_err();
        assert_eq!(found, ["records", "status"]);
        // A configured key list.
        let mine = vec!["records".to_owned()];
        assert_eq!(
            sessions_of(json!({"records": [rec.clone()]}), &mine).unwrap(),
            want
        );
    }

    #[test]
    fn a_searched_session_is_named_by_its_code_only_where_it_names_none() {
        let mut none = json!({"session": "s", "data": {"status": {"own_validation_code": ""}}});
        name_own_code(&mut none, "C1");
        assert_eq!(none["data"]["status"]["own_validation_code"], "C1");
        let mut own = json!({"session": "s", "data": {"status": {"own_validation_code": "C0"}}});
        name_own_code(&mut own, "C1");
        assert_eq!(own["data"]["status"]["own_validation_code"], "C0");
        // Not an object: left as it is, no panic.
        let mut odd = json!({"session": "s", "data": {"status": "OK"}});
        name_own_code(&mut odd, "C1");
        assert_eq!(odd["data"]["status"], "OK");
    }

    #[test]
    fn a_search_answer_names_the_session_of_the_code_in_any_plausible_shape() {
        let keys: Vec<String> = shared::config::CoupontoolsConfig::default().session_list_keys;
        let rec = |s: &str, own: &str| json!({"session": s, "data": {"status": {"own_validation_code": own}}});
        let hit = |v: Value| search_hit(v, "SPRING-1", &keys).map(|r| str_of(&r, "session"));
        let found = Some("s-1".to_owned());
        // The matching record among others, under any list key or bare.
        assert_eq!(
            hit(json!({"sessions": [rec("s-2", "X"), rec("s-1", "SPRING-1")]})),
            found
        );
        assert_eq!(hit(json!({"results": [rec("s-1", "SPRING-1")]})), found);
        assert_eq!(hit(json!([rec("s-1", "SPRING-1")])), found);
        // One record as the answer itself, or only ids.
        assert_eq!(hit(rec("s-1", "SPRING-1")), found);
        assert_eq!(hit(json!({"sessions": ["s-1"]})), found);
        assert_eq!(
            hit(json!({"status": {"status": "OK"}, "session": "s-1"})),
            found
        );
        // Another code's session, several candidates, or nothing: no hit.
        assert_eq!(hit(json!({"sessions": [rec("s-2", "OTHER")]})), None);
        assert_eq!(hit(json!({"sessions": ["s-1", "s-2"]})), None);
        assert_eq!(
            hit(json!({"status": {"status": "OK"}, "sessions": []})),
            None
        );
        assert_eq!(hit(json!({"status": {"status": "OK"}})), None);
    }

    #[test]
    fn a_session_with_its_own_validation_code_can_be_scanned_by_it() {
        let config = Config::from_toml_str(
            "[store]\nsites=[\"S\"]\n[[lanes.credentials]]\nusername=\"a\"\npassword=\"b\"\n",
        )
        .unwrap();
        let record = |own: &str| {
            json!({"session": "ac6s7u3g8a25ja7x9qg87", "campaign": "cam_1",
                   "data": {"status": {"value": "5.00", "own_validation_code": own}}})
        };
        let v = voucher_of(&record("SPRING-0042"), "", &config).unwrap();
        assert_eq!(
            (v.code.as_str(), v.provider_ref.as_str(), v.alias.as_deref()),
            (
                "ac6s7u3g8a25ja7x9qg87",
                "ac6s7u3g8a25ja7x9qg87",
                Some("SPRING-0042")
            )
        );
        for none in ["", "  ", "ac6s7u3g8a25ja7x9qg87"] {
            let v = voucher_of(&record(none), "", &config).unwrap();
            assert_eq!(v.alias, None, "{none:?}");
        }
    }

    #[test]
    fn both_failure_envelopes_are_read() {
        let a = json!({"status":{"status":"failed","errors":{"error_code":1000,"error_message":"HTTP/1.0 401 Unauthorized."}}});
        let f = failure_of(&a).unwrap();
        assert_eq!(f.code, 1000);
        assert_eq!(classify(f.code), CodeClass::Credentials);
        let b = json!({"status":{"status":"failed","errors":{"error_message":"HTTP/1.0 422 Unprocessable entity.",
            "error_message_description":["The coupon or voucher s1 was already used at 2026-11-01 10:00:00"],"error_code":[300]}}});
        let f = failure_of(&b).unwrap();
        assert_eq!(f.code, 300);
        assert!(f.message.contains("already used at 2026-11-01 10:00:00"));
        assert_eq!(classify(f.code), CodeClass::BadRequest);
        assert_eq!(classify(513), CodeClass::NotFound);
        assert_eq!(classify(101), CodeClass::Credentials);
        assert!(failure_of(&json!({"status":{"status":"OK"}})).is_none());
    }

    #[test]
    fn session_pulls_are_incremental_after_a_full_one() {
        let mut cfg = CoupontoolsConfig::default();
        assert_eq!(
            page_params("cam_1", 2, None),
            json!({"campaign": "cam_1", "page": 2})
        );
        // 2026-11-30 07:05:09 UTC: minutes with a hyphen, seconds dropped.
        assert_eq!(
            page_params("cam_1", 1, Some(1_796_022_309)),
            json!({"campaign": "cam_1", "page": 1, "start_date": "2026-11-30 07-05"})
        );
        let c = Client::new(&cfg);
        assert_eq!(c.pull_since(1000), None, "the first pull is full");
        c.pull_done(1000, true);
        assert_eq!(c.pull_since(2000), Some(1000 - 900));
        c.pull_done(2000, false);
        assert_eq!(c.pull_since(3000), Some(2000 - 900));
        assert_eq!(c.pull_since(1000 + 24 * 3600), None, "a full pull a day");
        // A failed pull (no pull_done) leaves the mark where it was.
        assert_eq!(c.pull_since(3500), Some(2000 - 900));
        cfg.full_pull_hours = 0;
        let c = Client::new(&cfg);
        c.pull_done(1000, true);
        assert_eq!(c.pull_since(1001), None, "0: every pull is full");
    }

    #[test]
    fn sessions_become_vouchers() {
        let config = Config::from_toml_str(
            "[store]\nsites=[\"S\"]\n[[lanes.credentials]]\nusername=\"a\"\npassword=\"b\"\n",
        )
        .unwrap();
        let rec = json!({"session": "ac6s7u3g8a25ja7x9qg87", "campaign": "cam_100001",
            "data": {"status": {"value": "5.00", "validated": "0", "locked": "1",
                                 "expiration_date": "2099-12-31 23:59:59"}}});
        let v = voucher_of(&rec, "Five off", &config).unwrap();
        // Locks and validations must name the session, not its campaign.
        assert_eq!(v.provider_ref, "ac6s7u3g8a25ja7x9qg87");
        assert_eq!(v.value, Cents(500));
        assert_eq!(v.state, "locked");
        assert_eq!(v.valid_until.as_deref(), Some("2099-12-31"));
        let rec = json!({"session": "s2", "campaign": "cam_1",
            "data": {"status": {"value": "2.5", "validated": "1", "validation_date_utc": "2026-11-01 10:00:00"}}});
        let v = voucher_of(&rec, "", &config).unwrap();
        assert_eq!(v.state, "validated");
        assert_eq!(v.validated_at.as_deref(), Some("2026-11-01T10:00:00Z"));
        assert_eq!(parse_utc("1970-01-01 00:01:00"), Some(60));
    }

    /// coupontools.md §4: "always decide on the body, not the status". Before, a 429 or
    /// 5xx was a transient failure whatever its body said, so a validation of a session
    /// Coupontools answered `513` under a 500 was retried for ever instead of being
    /// dead-lettered for store IT.
    #[test]
    fn an_answer_is_decided_on_its_body_before_its_status() {
        let envelope = |code: Value, message: &str| {
            json!({"status": {"status": "failed", "errors": {"error_code": code, "error_message": message}}})
                .to_string()
        };
        // A documented code under a 5xx: that failure, permanent.
        let not_found = envelope(json!([513]), "HTTP/1.0 422 Unprocessable entity.");
        let e = decide("couponsession/update", 500, &not_found).unwrap_err();
        assert!(!e.is_transient(), "{e}");
        assert!(!e.outcome_unknown(), "{e}");
        match &e {
            CallError::Status {
                status,
                code,
                detail,
            } => {
                assert_eq!((*status, code.as_str()), (422, "513"));
                assert!(detail.contains("answered with HTTP 500"), "{detail}");
            }
            other => panic!("{other:?}"),
        }
        let e = decide("couponsession/update", 503, &envelope(json!(301), "bad id")).unwrap_err();
        assert!(matches!(&e, CallError::Status { status: 422, code, .. } if code == "301"));
        // Refused credentials under a 500 or a 429 pause the queue, as under a 401.
        let creds = envelope(json!(1000), "HTTP/1.0 401 Unauthorized.");
        for status in [500, 429] {
            assert!(matches!(
                decide("coupon/list", status, &creds),
                Err(CallError::Auth(_))
            ));
        }
        // No documented failure in the body: the status decides, and the call is retried.
        for (status, text) in [
            (503, "HTTP/1.0 503 Service Unavailable".to_owned()),
            (429, "Too Many Requests".to_owned()),
            (502, "<html>Bad gateway</html>".to_owned()),
            (
                500,
                envelope(json!(9999), "HTTP/1.0 500 Internal Server Error"),
            ),
            (500, json!({"status": {"status": "OK"}}).to_string()),
            // A listed code whose message is a server error's status line (503 is also
            // "teammate not found"), and codes of the 5xx range that are not listed.
            (
                503,
                envelope(json!(503), "HTTP/1.0 503 Service Unavailable"),
            ),
            (
                500,
                envelope(json!([500]), "HTTP/1.0 500 Internal Server Error"),
            ),
            (504, envelope(json!(504), "Gateway Timeout")),
            (502, envelope(json!(501), "Not Implemented")),
        ] {
            let e = decide("couponsession/update", status, &text).unwrap_err();
            assert!(e.is_transient(), "{status} {text}: {e}");
        }
        // A 401 or 403 without the envelope (a gateway's page): credentials, not a retry.
        for status in [401, 403] {
            assert!(matches!(
                decide("coupon/list", status, "<html>Unauthorized</html>"),
                Err(CallError::Auth(_))
            ));
        }
        // Any other 4xx without the envelope (a proxy's 404 page, a gateway's 400, plain
        // JSON of someone else's): a refusal naming what came back and what to check, not
        // an unreadable answer retried for ever (§4 retries only 5xx and network failures).
        for (status, text) in [
            (404, "<html><body>404 Not Found</body></html>"),
            (400, "Bad Request"),
            (405, ""),
            (422, r#"{"error":"unprocessable"}"#),
            (410, "[]"),
        ] {
            let e = decide("couponsession/update", status, text).unwrap_err();
            assert!(!e.is_transient(), "{status} {text}: {e}");
            assert!(!e.outcome_unknown(), "{status} {text}: {e}");
            match &e {
                CallError::Status {
                    status: s, detail, ..
                } => {
                    assert_eq!(*s, status);
                    assert!(detail.contains(&format!("{text:?}")), "{detail}");
                    assert!(
                        detail.contains("providers.coupontools.base_url"),
                        "{detail}"
                    );
                }
                other => panic!("{status} {text}: {other:?}"),
            }
            assert!(
                matches!(Delivery::from_error(&e), Delivery::Dead(_)),
                "{status}"
            );
        }
        // 408 and 429 without it are still retried, and an unreadable 2xx is still an
        // unreadable answer (its effect unknown).
        for status in [408, 429, 500, 503] {
            let e = decide("couponsession/update", status, "<html>busy</html>").unwrap_err();
            assert!(e.is_transient(), "{status}: {e}");
        }
        // Under a 200 or a 4xx with the envelope, as before.
        assert!(decide("coupon/list", 200, r#"{"status":{"status":"OK"}}"#).is_ok());
        let e = decide("couponsession/update", 422, &envelope(json!([300]), "bad")).unwrap_err();
        assert!(matches!(&e, CallError::Status { status: 422, code, .. } if code == "300"));
        let e = decide(
            "couponsession/data",
            200,
            &envelope(json!(513), "not found"),
        )
        .unwrap_err();
        assert!(matches!(&e, CallError::Status { status: 200, code, .. } if code == "513"));
        assert!(matches!(
            decide("coupon/list", 200, "not json"),
            Err(CallError::Malformed(_))
        ));
        assert_eq!(
            stated_status("HTTP/1.0 401 Unauthorized. Client ID"),
            Some(401)
        );
        assert_eq!(stated_status("HTTP/1.1 503 Busy"), None);
        assert_eq!(stated_status("failed"), None);
    }
}
