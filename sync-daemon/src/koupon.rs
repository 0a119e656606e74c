//! Koupon client (shared/api/koupon.md): every call carries a signed URL, computed afresh
//! for every attempt (§2 defaults: HMAC-SHA1 keyed by the secret over the exact URL sent,
//! lowercase hex, epoch seconds; each a `providers.koupon` switch, as §2 asks), and
//! `Accept: application/json`.
//!
//! Redemptions have no idempotency key. Every result entry is judged as koupon.md §6/§7
//! say: `redeemedQty < qty` or any non-empty `exceptionCode` is not redeemed, and that part
//! is dead-lettered with the code as the reason, for store IT. Only transport failures and
//! 5xx (and a 429, which Koupon did not process) are retried; a 2xx whose body cannot be
//! read is dead-lettered, never resent. `providers.koupon.retry_redeemed_code` (default
//! empty = off) names an exception code that, on a retry, is taken as our earlier attempt.

use crate::http::{self, CallError, Delivery};
use crate::pace::Pacer;
use serde_json::{json, Value};
use shared::config::{
    Config, KouponConfig, KouponEncoding, KouponRedeemAs, KouponSignature, TimestampUnit,
};
use shared::domain::Offer;
use shared::outbox::Item;
use std::sync::Arc;

pub const NAME: &str = shared::outbox::provider::KOUPON;

pub struct Client {
    cfg: KouponConfig,
    http: reqwest::Client,
    pacer: Arc<Pacer>,
}

/// How URLs are signed: the koupon.md §2 choices, from `providers.koupon`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Signing {
    pub algorithm: KouponSignature,
    pub encoding: KouponEncoding,
    pub timestamp: TimestampUnit,
}

impl Signing {
    /// The reference's defaults: HMAC-SHA1, lowercase hex, epoch seconds.
    pub const DEFAULT: Signing = Signing {
        algorithm: KouponSignature::HmacSha1,
        encoding: KouponEncoding::Hex,
        timestamp: TimestampUnit::Seconds,
    };

    pub fn of(cfg: &KouponConfig) -> Signing {
        Signing {
            algorithm: cfg.signature,
            encoding: cfg.signature_encoding,
            timestamp: cfg.timestamp_unit,
        }
    }
}

/// HMAC-SHA1 of `url` keyed by `secret`, lowercase hex (the default signature).
pub fn sign(secret: &str, url: &str) -> String {
    sign_with(secret, url, Signing::DEFAULT)
}

/// The signature of `url`, as `signing` says, ready for the query string.
pub fn sign_with(secret: &str, url: &str, signing: Signing) -> String {
    let digest: Vec<u8> = match signing.algorithm {
        KouponSignature::HmacSha1 => {
            let key =
                ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret.as_bytes());
            ring::hmac::sign(&key, url.as_bytes()).as_ref().to_vec()
        }
        KouponSignature::Sha1 => {
            let mut ctx = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
            ctx.update(url.as_bytes());
            ctx.update(secret.as_bytes());
            ctx.finish().as_ref().to_vec()
        }
    };
    match signing.encoding {
        KouponEncoding::Hex => digest.iter().map(|b| format!("{b:02x}")).collect(),
        KouponEncoding::Base64 => {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD
                .encode(digest)
                .replace('+', "%2B")
                .replace('/', "%2F")
                .replace('=', "%3D")
        }
    }
}

/// `base + path + query`, with `identifier` and `timestamp` appended and signed.
pub fn signed_url(
    base: &str,
    path: &str,
    query: &str,
    api_key: &str,
    secret: &str,
    signing: Signing,
    now_ms: i64,
) -> String {
    let sep = if query.is_empty() { "" } else { "&" };
    let now = match signing.timestamp {
        TimestampUnit::Seconds => now_ms.div_euclid(1000),
        TimestampUnit::Milliseconds => now_ms,
    };
    let url = format!(
        "{}{path}?{query}{sep}identifier={api_key}&timestamp={now}",
        base.trim_end_matches('/')
    );
    let sig = sign_with(secret, &url, signing);
    format!("{url}&authSignature={sig}")
}

/// Milliseconds since the epoch.
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The progress note of a redeem call being sent: `{"attempt": n, "at": secs}`.
const SENT: &str = "redeemSent";

impl Client {
    /// A client with a pacer of its own (see [`Client::with_pacer`]).
    pub fn new(cfg: &KouponConfig) -> Client {
        let pacer = Pacer::new(NAME, cfg.max_requests_per_sec, cfg.max_retry_after_secs);
        Client::with_pacer(cfg, Arc::new(pacer))
    }

    /// A client whose calls wait for `pacer` (the daemon's one for this provider, kept
    /// across configuration reloads).
    pub fn with_pacer(cfg: &KouponConfig, pacer: Arc<Pacer>) -> Client {
        Client {
            cfg: cfg.clone(),
            http: http::client(cfg.timeout_ms),
            pacer,
        }
    }

    pub fn config(&self) -> &KouponConfig {
        &self.cfg
    }

    pub fn pacer(&self) -> &Arc<Pacer> {
        &self.pacer
    }

    async fn call(
        &self,
        base: &str,
        path: &str,
        query: &str,
        body: Option<&Value>,
    ) -> Result<Value, CallError> {
        // Wait for the pace (which includes a 429/503 Retry-After pause) before signing,
        // so the timestamp is fresh when the call leaves (koupon.md §6: re-sign every
        // attempt with a fresh timestamp).
        self.pacer.ready().await;
        let url = signed_url(
            base,
            path,
            query,
            self.cfg.api_key.expose(),
            self.cfg.secret.expose(),
            Signing::of(&self.cfg),
            now_ms(),
        );
        let req = match body {
            Some(b) => self
                .http
                .post(url)
                .header("Content-Type", "application/json")
                .body(b.to_string()),
            None => self.http.get(url),
        };
        let resp = req
            .header("Accept", "application/json")
            .send()
            .await
            .map_err(|e| {
                CallError::from_reqwest(&e)
                    .at_key("providers.koupon.storeconnect_url and management_url")
            })?;
        let status = resp.status().as_u16();
        self.pacer.note(status, resp.headers());
        let text = match resp.text().await {
            Ok(t) => t,
            // Koupon answered 2xx (it processed the call) but the body was lost: the effect
            // is known to have happened, not a transport failure to resend after.
            Err(e) if (200..300).contains(&status) => {
                return Err(CallError::Malformed(format!(
                    "{path}: HTTP {status} but the body could not be read ({})",
                    CallError::from_reqwest(&e)
                )))
            }
            Err(e) => {
                return Err(CallError::from_reqwest(&e)
                    .at_key("providers.koupon.storeconnect_url and management_url"))
            }
        };
        let parsed: Option<Value> = serde_json::from_str(&text).ok();
        if status == 401 {
            return Err(CallError::Auth(
                "Koupon refused the signature (HTTP 401); check providers.koupon.api_key/secret and the clock".into(),
            ));
        }
        if !(200..300).contains(&status) {
            let code = parsed
                .as_ref()
                .and_then(|v| v.get("errorCode"))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            let detail = parsed
                .as_ref()
                .and_then(|v| v.get("errorMessage"))
                .and_then(Value::as_str)
                .map_or_else(|| text.chars().take(200).collect(), str::to_owned);
            return Err(CallError::Status {
                status,
                code,
                detail,
            });
        }
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        parsed.ok_or_else(|| CallError::Malformed(format!("{path}: not JSON")))
    }

    pub async fn probe(&self) -> Result<(), CallError> {
        self.offers().await.map(|_| ())
    }

    // ------------------------------------------------------------ delivery

    /// `record` writes the item's progress note (see [`Client::at_most_once`]).
    pub async fn deliver<F, Fut>(&self, item: &Item, record: F) -> Delivery
    where
        F: Fn(Value) -> Fut,
        Fut: std::future::Future<Output = Result<(), String>>,
    {
        match item.operation.as_str() {
            "redemption" if item.payload.get("redemptions").is_some() => {
                self.at_most_once(item, &record, self.redeem_sale(item))
                    .await
            }
            // One coupon per item, as queued by earlier versions.
            "redemption" | "validate" => self.at_most_once(item, &record, self.redeem(item)).await,
            "transaction" => self.report(item).await,
            other => Delivery::Dead(format!("unknown Koupon operation {other}")),
        }
    }

    /// A redeem call is sent at most once blind (koupon.md §6: no idempotency key, "a retry
    /// after a lost response can double-count"). A note is written before it is sent and
    /// taken away when the attempt ends in a failure §6 allows to resend (a transport
    /// failure, a 5xx, a refused signature). A note still there at the next attempt means
    /// the last one never ended (the daemon was killed, or stopped before the answer came):
    /// its outcome is unknown, so the item is dead-lettered for store IT instead of sent
    /// again, unless `providers.koupon.retry_redeemed_code` is set. A retry by store IT
    /// (`edge-ctl outbox retry`) is sent: the note belongs to an older attempt.
    async fn at_most_once<F, Fut>(
        &self,
        item: &Item,
        record: &F,
        send: impl std::future::Future<Output = Delivery>,
    ) -> Delivery
    where
        F: Fn(Value) -> Fut,
        Fut: std::future::Future<Output = Result<(), String>>,
    {
        let note = item.progress.as_ref().and_then(|p| p.get(SENT));
        let sent_attempt = note.and_then(|n| n.get("attempt")).and_then(Value::as_i64);
        // With `retry_redeemed_code` set, store IT chose to resend and take that code as
        // our earlier attempt recorded (`judge`): the call goes out again.
        if sent_attempt == Some(item.attempts - 1) && self.cfg.retry_redeemed_code.is_empty() {
            let at = note
                .and_then(|n| n.get("at"))
                .and_then(Value::as_i64)
                .and_then(|t| chrono::DateTime::from_timestamp(t, 0))
                .map_or_else(String::new, |t| {
                    format!(" at {}", t.format("%Y-%m-%d %H:%M:%S UTC"))
                });
            return Delivery::Dead(format!(
                "outcome unknown: the redeem call sent to Koupon{at} never got its answer here (the sync daemon stopped or was killed meanwhile); Koupon has no idempotency key, so it is not sent again blind: check Koupon's records for this sale, then `edge-ctl outbox retry` or `discard` it"
            ));
        }
        let note = json!({SENT: {"attempt": item.attempts, "at": shared::db::now_secs()}});
        if let Err(e) = record(note).await {
            return Delivery::Retry(format!(
                "cannot record progress before the redeem call: {e}"
            ));
        }
        let outcome = send.await;
        // Sent again later, as §6 allows: a transport failure or 5xx (Retry), or a
        // signature Koupon refused (AuthFailed, nothing applied).
        if matches!(outcome, Delivery::Retry(_) | Delivery::AuthFailed(_)) {
            if let Err(e) = record(json!({})).await {
                log::warn!(provider = NAME; "cannot clear the progress note of outbox item {} ({e}); its next attempt will be dead-lettered as of unknown outcome", item.id);
            }
        }
        outcome
    }

    async fn redeem(&self, item: &Item) -> Delivery {
        let p = &item.payload;
        let asset = p
            .get("discountAsset")
            .or_else(|| p.get("providerRef"))
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .or_else(|| p.get("code").and_then(Value::as_str))
            .unwrap_or_default();
        if asset.is_empty() {
            return Delivery::Dead("item names no discountAsset".into());
        }
        let entry = Entry {
            asset: asset.to_owned(),
            code: p
                .get("couponCode")
                .and_then(Value::as_str)
                .map(str::to_owned),
            qty: p.get("qty").and_then(Value::as_i64).unwrap_or(1).max(1),
            offers: Vec::new(),
        };
        let body = json!({"redemptions": [entry.wire()]});
        let base = self.cfg.storeconnect_url.clone();
        let query = self.store_query("storeId");
        match self
            .call(&base, "/v1/transaction/redeem", &query, Some(&body))
            .await
        {
            Ok(answer) => single_result(&entry, &answer, &self.judge(item.attempts)),
            Err(CallError::Malformed(m)) => Delivery::Dead(unreadable(&m)),
            Err(e) => Delivery::from_error(&e),
        }
    }

    /// How result entries are judged for an attempt.
    fn judge(&self, attempts: i64) -> Judge {
        Judge {
            retry_code: (attempts > 1 && !self.cfg.retry_redeemed_code.is_empty())
                .then(|| self.cfg.retry_redeemed_code.clone()),
        }
    }

    /// A sale's Koupon coupons in ONE redeem call (koupon.md §6), duplicates merged. Each
    /// result entry is judged on its own: what Koupon recorded is delivered, a shortfall
    /// or an `exceptionCode` is dead-lettered as its own item for store IT.
    async fn redeem_sale(&self, item: &Item) -> Delivery {
        let entries = sale_entries(&item.payload, self.cfg.redeem_as);
        if entries.is_empty() {
            return Delivery::Dead("the sale names no Koupon coupon".into());
        }
        let body = json!({"redemptions": entries.iter().map(Entry::wire).collect::<Vec<_>>()});
        let base = self.cfg.storeconnect_url.clone();
        let query = self.store_query("storeId");
        match self
            .call(&base, "/v1/transaction/redeem", &query, Some(&body))
            .await
        {
            Ok(answer) => sale_result(&item.payload, &entries, &answer, &self.judge(item.attempts)),
            // An answer came but cannot be read: Koupon may have recorded the redemptions,
            // and a resend could count them twice (no idempotency key). Store IT checks.
            Err(CallError::Malformed(m)) => Delivery::Dead(unreadable(&m)),
            Err(e) => Delivery::from_error(&e),
        }
    }

    async fn report(&self, item: &Item) -> Delivery {
        let body = report_body(&item.payload, self.cfg.redeem_as);
        let query = self.store_query("storeId");
        let base = self.cfg.storeconnect_url.clone();
        match self
            .call(&base, "/v1/transaction/report", &query, Some(&body))
            .await
        {
            Ok(_) => Delivery::delivered(),
            // Analytics only, safe to repeat: an unreadable answer is retried.
            Err(e) => Delivery::from_error(&e),
        }
    }

    /// The store's id as the query parameter `name` (`storeId` on Store Connect, `storeid`
    /// on the offer list), or nothing when `store_id` is not set. koupon.md §3: "keep the
    /// store ID configurable as a query parameter" of redeem and report; §2 signs it with
    /// the rest of the URL. The config allows only URL-safe characters in it.
    fn store_query(&self, name: &str) -> String {
        if self.cfg.store_id.is_empty() {
            String::new()
        } else {
            format!("{name}={}", self.cfg.store_id)
        }
    }

    // ------------------------------------------------------------ pull

    /// The client's offer list (`Offers`, parsed leniently).
    pub async fn offers(&self) -> Result<Vec<Value>, CallError> {
        let query = self.store_query("storeid");
        let base = self.cfg.management_url.clone();
        let v = self.call(&base, "/v2/offers/list", &query, None).await?;
        Ok(v.get("Offers")
            .or_else(|| v.get("offers"))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default())
    }
}

/// One entry of a redeem call: an asset (and code) with its quantity, and the offers of
/// the sale merged into it.
#[derive(Debug, Clone, PartialEq)]
struct Entry {
    asset: String,
    code: Option<String>,
    qty: i64,
    offers: Vec<Value>,
}

impl Entry {
    fn wire(&self) -> Value {
        let mut e = json!({"discountAsset": self.asset, "qty": self.qty});
        if let Some(c) = &self.code {
            e["couponCode"] = json!(c);
        }
        e
    }
}

/// The elements of the array at `v[k]` (none when it is missing or not an array).
fn list<'a>(v: &'a Value, k: &str) -> impl Iterator<Item = &'a Value> {
    v.get(k).and_then(Value::as_array).into_iter().flatten()
}

fn text_of(v: &Value, k: &str) -> String {
    match v.get(k) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => String::new(),
    }
}

/// The loyalty id scanned at the POS for a sale: the customer's loyalty id, else the card
/// CATAPULT sent as `customer`.
fn loyalty_of(payload: &Value) -> String {
    Some(text_of(payload, "loyaltyId"))
        .filter(|l| !l.is_empty())
        .unwrap_or_else(|| text_of(payload, "customer"))
}

/// A sale's coupons as redeem entries: with `LoyaltyId`, the customer's loyalty id (their
/// card when none is known) and each offer's code; with `OfferBarcode`, each offer's
/// barcode alone. An asset (or asset and code) may appear once per call: duplicates are
/// merged, their quantities summed.
fn sale_entries(payload: &Value, redeem_as: KouponRedeemAs) -> Vec<Entry> {
    let loyalty = loyalty_of(payload);
    let mut out: Vec<Entry> = Vec::new();
    for r in list(payload, "redemptions") {
        let (asset, code) = match redeem_as {
            KouponRedeemAs::LoyaltyId => (loyalty.clone(), Some(text_of(r, "couponCode"))),
            KouponRedeemAs::OfferBarcode => (text_of(r, "offerBarcode"), None),
        };
        let qty = r.get("qty").and_then(Value::as_i64).unwrap_or(1).max(1);
        match out.iter_mut().find(|e| e.asset == asset && e.code == code) {
            Some(e) => {
                e.qty += qty;
                e.offers.push(r.clone());
            }
            None => out.push(Entry {
                asset,
                code,
                qty,
                offers: vec![r.clone()],
            }),
        }
    }
    out
}

/// The dead letter's reason when Koupon answered a redeem call with a body we cannot read.
fn unreadable(m: &str) -> String {
    format!("Koupon's answer to the redeem call was unreadable ({m}); check at Koupon whether it was recorded before retrying")
}

/// How result entries are judged (koupon.md §6/§7).
#[derive(Debug, Clone, Default)]
struct Judge {
    /// On a retry: the exception code (`providers.koupon.retry_redeemed_code`) taken as our
    /// earlier attempt having been recorded. `None` on a first attempt or when unset.
    retry_code: Option<String>,
}

impl Judge {
    /// How many of `e.qty` Koupon recorded according to `r` (the entry's result), and the
    /// exception code. koupon.md §6: "`redeemedQty < qty` or a non-empty `exceptionCode`"
    /// is not redeemed; §7: "treat any non-empty as not redeemed". So with an exception
    /// code, a `redeemedQty` short of `qty` counts as recorded (§6 "record the shortfall",
    /// the rest is dead-lettered), but a full `redeemedQty` beside the code does not: the
    /// whole entry goes to store IT. No result for the entry: nothing recorded.
    fn recorded(&self, e: &Entry, r: Option<&Value>) -> (i64, String) {
        let Some(r) = r else {
            return (0, "no result for this entry".to_owned());
        };
        let done = r
            .get("redeemedQty")
            .and_then(http::whole_count)
            .unwrap_or(0)
            .clamp(0, e.qty);
        let exception = text_of(r, "exceptionCode");
        if exception.is_empty() {
            return (done, exception);
        }
        if self.retry_code.as_deref() == Some(exception.as_str()) {
            // Configured: on a retry this code means our lost first attempt was recorded.
            return (e.qty, String::new());
        }
        (if done < e.qty { done } else { 0 }, exception)
    }
}

/// The result entry for `e` (the `i`th entry sent): matched by asset and code, else by
/// position.
fn result_for<'a>(results: &[&'a Value], e: &Entry, i: usize) -> Option<&'a Value> {
    results
        .iter()
        .find(|r| {
            text_of(r, "discountAsset") == e.asset
                && e.code
                    .as_ref()
                    .is_none_or(|c| text_of(r, "couponCode") == *c)
        })
        .or_else(|| results.get(i))
        .copied()
}

fn shortfall(e: &Entry, done: i64, exception: &str) -> String {
    let what = e.code.as_deref().unwrap_or(&e.asset);
    format!(
        "{what}: {done} of {} redeemed{}",
        e.qty,
        if exception.is_empty() {
            String::new()
        } else {
            format!(" ({exception})")
        }
    )
}

/// What Koupon's answer to a sale's redeem call means, entry by entry. A 2xx without a body
/// (koupon.md §5: "204 … OK with no body") recorded everything.
fn sale_result(payload: &Value, entries: &[Entry], answer: &Value, judge: &Judge) -> Delivery {
    if answer.is_null() {
        return Delivery::delivered();
    }
    let results: Vec<&Value> = list(answer, "results").collect();
    let mut refused = Vec::new();
    let mut reasons = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let (done, exception) = judge.recorded(e, result_for(&results, e, i));
        if done >= e.qty && exception.is_empty() {
            continue;
        }
        reasons.push(shortfall(e, done, &exception));
        // Of merged offers, the first `done` count as recorded.
        let recorded = usize::try_from(done.max(0)).unwrap_or(0);
        refused.extend(e.offers.iter().skip(recorded).cloned());
    }
    if refused.is_empty() {
        return Delivery::delivered();
    }
    let reason = format!("Koupon did not record everything: {}", reasons.join("; "));
    let all = entries.iter().map(|e| e.offers.len()).sum::<usize>();
    if refused.len() >= all {
        return Delivery::Dead(reason);
    }
    let mut part = payload.clone();
    part["redemptions"] = Value::Array(refused);
    Delivery::Partly {
        refused: part,
        reason,
    }
}

/// What the answer to a one-entry redeem call (a validated offer barcode) means: delivered
/// only when Koupon recorded the whole quantity without an exception code (or answered 2xx
/// without a body); else dead-lettered with what was recorded, for store IT (one item
/// cannot be split).
fn single_result(e: &Entry, answer: &Value, judge: &Judge) -> Delivery {
    if answer.is_null() {
        return Delivery::delivered();
    }
    let results: Vec<&Value> = list(answer, "results").collect();
    match judge.recorded(e, result_for(&results, e, 0)) {
        (done, exception) if done >= e.qty && exception.is_empty() => Delivery::delivered(),
        (done, exception) => Delivery::Dead(format!(
            "Koupon did not redeem it: {}",
            shortfall(e, done, &exception)
        )),
    }
}

/// The analytics report of a committed sale (koupon.md §3.3) from the outbox payload: the
/// basket as the lane sent it, money as decimals with 2 places from exact cents.
pub fn report_body(payload: &Value, redeem_as: KouponRedeemAs) -> Value {
    let basket = payload.get("basket").cloned().unwrap_or(Value::Null);
    let cents_of = |v: Option<&Value>| -> i64 {
        v.map(|x| match x {
            Value::Number(n) => n.to_string(),
            Value::String(s) => s.clone(),
            _ => String::new(),
        })
        .and_then(|t| http::decimal_to_cents(&t))
        .unwrap_or(0)
    };
    // A JSON number with exactly two decimals (serde_json keeps the text).
    let money = |v: Option<&Value>| -> Value {
        serde_json::from_str(&http::cents_to_decimal(cents_of(v), 2)).unwrap_or(json!(0))
    };
    let gross = cents_of(basket.get("grossTotal").or_else(|| basket.get("subTotal")));
    let products: Vec<Value> = list(&basket, "items")
        .enumerate()
        .filter_map(|(position, it)| {
            // koupon.md §3.3: a non-negative number. A return line (negative quantity)
            // is left out rather than have Koupon refuse the whole report; a quantity
            // sent as text is sent as the number it writes.
            let quantity = match it.get("quantity") {
                None | Some(Value::Null) => json!(1),
                Some(Value::String(s)) => serde_json::from_str::<serde_json::Number>(s.trim())
                    .map(Value::Number)
                    .ok()?,
                Some(q @ Value::Number(_)) => q.clone(),
                Some(_) => return None,
            };
            if quantity.as_f64().is_none_or(|q| q < 0.0) {
                return None;
            }
            let upc = match it.get("upc") {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Number(n)) => n.to_string(),
                _ => String::new(),
            };
            Some(json!({
                // The position in the basket (koupon.md §3.3), not the POS line id.
                "index": position + 1,
                "description": it.get("description").and_then(Value::as_str).unwrap_or(&upc),
                "scanCode": upc,
                // "Selling price" (koupon.md §3.3): CATAPULT's `discountPrice`, the price
                // after POS-side discounts; the regular `price` when none was sent.
                "price": money(it.get("discountPrice").or_else(|| it.get("price"))),
                "quantity": quantity,
                "discounts": [],
            }))
        })
        .collect();
    // "Sum of discounts" (koupon.md §3.3): every digital discount the sale was given, of
    // all providers (`saleDiscountCents`); items queued before it was recorded name only
    // Koupon's own.
    let discounts: i64 = payload
        .get("saleDiscountCents")
        .and_then(Value::as_i64)
        .unwrap_or_else(|| {
            list(payload, "discounts")
                .filter_map(|d| d.get("discountCents").and_then(Value::as_i64))
                .sum()
        });
    // What was scanned at the POS: the loyalty card, or the offer barcodes (items queued
    // by earlier versions name their assets themselves).
    let mut assets: Vec<Value> = Vec::new();
    for d in list(payload, "discounts") {
        let asset = match (d.get("discountAsset"), redeem_as) {
            (Some(a), _) => a.clone(),
            (None, KouponRedeemAs::LoyaltyId) => json!(loyalty_of(payload)),
            (None, KouponRedeemAs::OfferBarcode) => json!(text_of(d, "offerBarcode")),
        };
        if !assets.contains(&asset) {
            assets.push(asset);
        }
    }
    let committed = payload
        .get("committedAt")
        .and_then(Value::as_str)
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&chrono::Utc))
        .unwrap_or_else(chrono::Utc::now);
    json!({
        "timestamp": committed.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        "currency": "USD",
        "products": products,
        "summary": {
            "subTotal": money(basket.get("subTotal")),
            "totalDiscounts": serde_json::from_str::<Value>(&http::cents_to_decimal(discounts, 2)).unwrap_or(json!(0)),
            // Net of all the digital discounts, tax included (koupon.md §3.3).
            "total": serde_json::from_str::<Value>(&http::cents_to_decimal(gross - discounts, 2)).unwrap_or(json!(0)),
        },
        "discountAssets": assets,
    })
}

/// A Koupon offer as a catalog offer. Koupon publishes no pricing rule, so an offer is
/// applied only when regional IT configured one for its `offerId`; otherwise it is listed
/// disabled so the catalog still shows it.
pub fn offer_of(o: &Value, config: &Config) -> Option<Offer> {
    let s = |k: &str| match o.get(k) {
        Some(Value::String(x)) => x.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => String::new(),
    };
    let offer_id = s("offerId");
    if offer_id.is_empty() {
        return None;
    }
    let barcode = s("barcodeString");
    let provider_ref = if barcode.is_empty() {
        offer_id.clone()
    } else {
        barcode
    };
    let rule = config.offer_rule(NAME, &offer_id);
    // Flags come as JSON booleans, numbers or strings ("1", "true"): koupon.md §4 names
    // them (`is_active`, `featured`) without their types and asks to parse leniently.
    let flag = |k: &str, absent: bool| match o.get(k) {
        None | Some(Value::Null) => absent,
        Some(Value::Bool(b)) => *b,
        Some(Value::Number(n)) => n.as_f64().is_some_and(|x| x != 0.0),
        Some(Value::String(t)) => match t.trim().to_ascii_lowercase().as_str() {
            "" => absent,
            t => matches!(t, "1" | "true" | "yes" | "y"),
        },
        Some(_) => absent,
    };
    let active = flag("is_active", true);
    let title = rule
        .and_then(|r| r.description.clone())
        .or_else(|| Some(s("title")).filter(|t| !t.is_empty()))
        .or_else(|| Some(s("name")).filter(|t| !t.is_empty()))
        .unwrap_or_else(|| format!("Koupon offer {offer_id}"));
    let date = |k: &str| {
        s(k).get(..10)
            .and_then(|d| chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d").ok())
    };
    Some(Offer {
        id: crate::pull::short_id("KP", &provider_ref),
        provider: NAME.to_owned(),
        provider_ref,
        short_description: title.chars().take(100).collect(),
        requirement_description: s("description").chars().take(200).collect(),
        long_description: String::new(),
        category: String::new(),
        brand: s("brand"),
        start_date: date("startDate")
            .or_else(|| date("start_date"))
            .unwrap_or(chrono::NaiveDate::from_ymd_opt(2000, 1, 1)?),
        end_date: date("endDate")
            .or_else(|| date("end_date"))
            .unwrap_or(chrono::NaiveDate::from_ymd_opt(2099, 12, 31)?),
        image_url: Some(s("companyImage")).filter(|i| i.starts_with("http")),
        targeted: false,
        enabled: active && rule.is_some(),
        featured: flag("featured", false),
        requires_clip: true,
        rule: rule
            .map(|r| r.rule.clone())
            .unwrap_or(shared::domain::Rule {
                mechanic: shared::domain::Mechanic::AmountOff {
                    cents: shared::money::Cents(0),
                },
                requirement: Default::default(),
                reward: None,
                min_qty: 1,
                min_basket: None,
                max_applications: Some(1),
            }),
        receipt_alias: title.chars().take(40).collect(),
        reduces_tax: true,
        coupon_type: String::new(),
        external_id: offer_id,
        per_customer_limit: rule.and_then(|r| r.per_customer_limit).or(Some(1)),
        global_limit: None,
        loyalty_cost: None,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn signature_matches_the_reference_test_vector() {
        assert_eq!(
            sign(
                "demo-secret",
                "https://storeconnect.kouponmedia.com/v1/transaction/redeem?identifier=demo-api-key&timestamp=1700000000"
            ),
            "5c570383118afdca34f576943b151ca2974061f1"
        );
        let redeem = |signing: Signing| {
            signed_url(
                "https://storeconnect.kouponmedia.com/",
                "/v1/transaction/redeem",
                "",
                "demo-api-key",
                "demo-secret",
                signing,
                1_700_000_000_123,
            )
        };
        let url = redeem(Signing::DEFAULT);
        assert!(url.ends_with(
            "?identifier=demo-api-key&timestamp=1700000000&authSignature=5c570383118afdca34f576943b151ca2974061f1"
        ));
        // The other choices koupon.md §2 leaves open (values from Python's hashlib/hmac).
        let with = |algorithm, encoding, timestamp| Signing {
            algorithm,
            encoding,
            timestamp,
        };
        use KouponEncoding::*;
        use KouponSignature::*;
        use TimestampUnit::*;
        assert!(redeem(with(Sha1, Hex, Seconds))
            .ends_with("&authSignature=373c56b456048d9a801f447f4fda65d917ffa8d9"));
        assert!(redeem(with(HmacSha1, Base64, Seconds))
            .ends_with("&authSignature=XFcDgxGK%2Fco09XaUOxUcopdAYfE%3D"));
        assert!(redeem(with(HmacSha1, Hex, Milliseconds)).ends_with(
            "&timestamp=1700000000123&authSignature=7979c227e1d1cf4faf533f8864aa625ad6c4eb4f"
        ));
        // A fresh timestamp is a fresh signature.
        let later = signed_url(
            "https://x",
            "/p",
            "storeId=7",
            "k",
            "s",
            Signing::DEFAULT,
            1_700_000_001_000,
        );
        let earlier = signed_url(
            "https://x",
            "/p",
            "storeId=7",
            "k",
            "s",
            Signing::DEFAULT,
            1_700_000_000_000,
        );
        assert_ne!(later, earlier);
        assert!(earlier
            .starts_with("https://x/p?storeId=7&identifier=k&timestamp=1700000000&authSignature="));
    }

    fn one(qty: i64) -> Entry {
        Entry {
            asset: "bar-1".into(),
            code: None,
            qty,
            offers: Vec::new(),
        }
    }

    fn answer(result: Value) -> Value {
        json!({"results": [result]})
    }

    #[test]
    fn a_single_redemption_is_delivered_only_when_all_of_it_was_recorded() {
        let first = Judge::default();
        let ok = |d: Delivery| d == Delivery::delivered();
        let dead = |d: Delivery, text: &str| matches!(&d, Delivery::Dead(r) if r.contains(text));
        assert!(ok(single_result(
            &one(1),
            &answer(json!({"discountAsset": "bar-1", "redeemedQty": 1})),
            &first
        )));
        // koupon.md §5: 204, OK with no body.
        assert!(ok(single_result(&one(2), &Value::Null, &first)));
        // The requested quantity, not just one (koupon.md §6 `redeemedQty < qty`).
        assert!(dead(
            single_result(
                &one(2),
                &answer(
                    json!({"discountAsset": "bar-1", "redeemedQty": 1, "exceptionCode": "LIMIT_REACHED"})
                ),
                &first
            ),
            "1 of 2 redeemed (LIMIT_REACHED)"
        ));
        assert!(dead(
            single_result(
                &one(2),
                &answer(json!({"discountAsset": "bar-1", "redeemedQty": 1})),
                &first
            ),
            "1 of 2"
        ));
        // An exception code beside a full quantity is not redeemed (§7).
        assert!(dead(
            single_result(
                &one(1),
                &answer(json!({"discountAsset": "bar-1", "redeemedQty": 1, "exceptionCode": "X"})),
                &first
            ),
            "(X)"
        ));
        assert!(dead(
            single_result(&one(1), &json!({"results": []}), &first),
            "no result"
        ));
        // ALREADY_REDEEMED on a retry: not redeemed unless configured.
        let already = answer(
            json!({"discountAsset": "bar-1", "redeemedQty": 0, "exceptionCode": "ALREADY_REDEEMED"}),
        );
        assert!(dead(
            single_result(&one(1), &already, &first),
            "ALREADY_REDEEMED"
        ));
        let configured = Judge {
            retry_code: Some("ALREADY_REDEEMED".into()),
        };
        assert!(ok(single_result(&one(1), &already, &configured)));
    }

    /// koupon.md §3.2: `redeemedQty` is a "positive number", which Koupon may write `1.0`.
    /// serde_json keeps a number's text in this workspace (`arbitrary_precision`), and
    /// `as_i64` read `1.0` as no number: 0 recorded, and a fully redeemed entry was
    /// dead-lettered as a shortfall.
    #[test]
    fn a_redeemed_quantity_is_read_in_any_number_form() {
        let first = Judge::default();
        let result = |qty: &str| -> Value {
            serde_json::from_str(&format!(
                r#"{{"results": [{{"discountAsset": "bar-1", "redeemedQty": {qty}}}]}}"#
            ))
            .unwrap()
        };
        for (qty, asked) in [
            ("1.0", 1),
            ("2.00", 2),
            ("1e0", 1),
            ("2E0", 2),
            ("0.2e1", 2),
            ("\"2.0\"", 2),
            ("\" 1 \"", 1),
            ("1", 1),
        ] {
            assert_eq!(
                single_result(&one(asked), &result(qty), &first),
                Delivery::delivered(),
                "redeemedQty {qty}"
            );
        }
        // A fraction is floored: 1.5 of 2 is one recorded, the other dead-lettered.
        let d = single_result(&one(2), &result("1.5"), &first);
        assert!(
            matches!(&d, Delivery::Dead(r) if r.contains("1 of 2 redeemed")),
            "{d:?}"
        );
        let d = single_result(&one(1), &result("0.999"), &first);
        assert!(
            matches!(&d, Delivery::Dead(r) if r.contains("0 of 1 redeemed")),
            "{d:?}"
        );
        // Missing or unreadable: nothing recorded, as before.
        for qty in [
            "null", "true", "\"one\"", "\"\"", "\"inf\"", "\"NaN\"", "\"-\"", "\"1 2\"", "[1]",
        ] {
            let d = single_result(&one(1), &result(qty), &first);
            assert!(
                matches!(&d, Delivery::Dead(r) if r.contains("0 of 1 redeemed")),
                "{qty}: {d:?}"
            );
        }
        // More than asked, however written, is all of it.
        for qty in ["3.0", "1e30", "1e400"] {
            let done = first.recorded(&one(2), result(qty)["results"].get(0)).0;
            assert_eq!(done, 2, "{qty}");
        }
        // A sale's entries too.
        let p = sale();
        let e = sale_entries(&p, KouponRedeemAs::LoyaltyId);
        let full: Value = serde_json::from_str(
            r#"{"results": [
                {"discountAsset": "LOY-1", "couponCode": "K1", "redeemedQty": 2.0},
                {"discountAsset": "LOY-1", "couponCode": "K2", "redeemedQty": 1.0}]}"#,
        )
        .unwrap();
        assert_eq!(sale_result(&p, &e, &full, &first), Delivery::delivered());
    }

    #[test]
    fn report_has_exact_money_and_string_scan_codes() {
        let payload = json!({
            "customer": "4000000000001", "loyaltyId": "LOY-1",
            "discounts": [{"offerId": "KPN1", "couponCode": "KPN1", "offerBarcode": "asset-1234", "discountCents": 100},
                          {"offerId": "KPN2", "couponCode": "KPN2", "offerBarcode": "asset-5678", "discountCents": 50}],
            "basket": {"items": [{"id": 7, "upc": 894773001193u64, "price": 1.99, "quantity": 2}],
                       "subTotal": 3.98, "grossTotal": 4.18},
            "committedAt": "2026-11-22T10:00:00+00:00",
        });
        let r = report_body(&payload, KouponRedeemAs::LoyaltyId);
        assert_eq!(r["timestamp"], "2026-11-22T10:00:00Z");
        assert_eq!(r["products"][0]["scanCode"], "894773001193");
        assert_eq!(
            r["products"][0]["index"], 1,
            "the position, not the line id"
        );
        assert_eq!(r["products"][0]["price"].to_string(), "1.99");
        assert_eq!(r["summary"]["subTotal"].to_string(), "3.98");
        assert_eq!(r["summary"]["totalDiscounts"].to_string(), "1.50");
        assert_eq!(
            r["summary"]["total"].to_string(),
            "2.68",
            "net of the discounts"
        );
        // What was scanned at the POS: the loyalty card, once.
        assert_eq!(r["discountAssets"], json!(["LOY-1"]));
        // Quantities are non-negative numbers (§3.3): a return line is left out, the others
        // keep their basket positions, a quantity in text is sent as a number.
        let mut returned = payload.clone();
        returned["basket"]["items"] = json!([
            {"id": 1, "upc": "0001", "price": 2.0, "quantity": -1},
            {"id": 2, "upc": "0002", "price": 1.0, "quantity": "1.5"},
            {"id": 3, "upc": "0003", "price": 1.0},
            {"id": 4, "upc": "0004", "price": 1.0, "quantity": 0}
        ]);
        let r = report_body(&returned, KouponRedeemAs::LoyaltyId);
        let lines: Vec<(Value, Value, String)> = r["products"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["index"].clone(),
                    p["scanCode"].clone(),
                    p["quantity"].to_string(),
                )
            })
            .collect();
        assert_eq!(
            lines,
            [
                (json!(2), json!("0002"), "1.5".to_owned()),
                (json!(3), json!("0003"), "1".to_owned()),
                (json!(4), json!("0004"), "0".to_owned()),
            ]
        );
        let r = report_body(&payload, KouponRedeemAs::OfferBarcode);
        assert_eq!(r["discountAssets"], json!(["asset-1234", "asset-5678"]));
        // The selling price is CATAPULT's discountPrice (the sale price), not the regular one.
        let mut on_sale = payload.clone();
        on_sale["basket"]["items"][0]["discountPrice"] = json!(1.49);
        let r = report_body(&on_sale, KouponRedeemAs::LoyaltyId);
        assert_eq!(r["products"][0]["price"].to_string(), "1.49");
        // A sale with other providers' discounts too (a Convercus 1.50 beside Koupon's
        // 2.00): the summary counts them all.
        let mut mixed = json!({
            "loyaltyId": "LOY-1",
            "discounts": [{"offerId": "KPN1", "couponCode": "KPN1", "discountCents": 200}],
            "saleDiscountCents": 350,
            "basket": {"items": [], "subTotal": 14.48, "grossTotal": 14.48},
        });
        let r = report_body(&mixed, KouponRedeemAs::LoyaltyId);
        assert_eq!(r["summary"]["totalDiscounts"].to_string(), "3.50");
        assert_eq!(r["summary"]["total"].to_string(), "10.98");
        // An item queued before the sale's discounts were recorded: Koupon's own.
        mixed.as_object_mut().unwrap().remove("saleDiscountCents");
        let r = report_body(&mixed, KouponRedeemAs::LoyaltyId);
        assert_eq!(r["summary"]["totalDiscounts"].to_string(), "2.00");
    }

    fn sale() -> Value {
        json!({"site": "S", "transaction": "T1", "customer": "4000000000001", "loyaltyId": "LOY-1",
               "redemptions": [
                   {"offerId": "KPN1", "couponCode": "K1", "offerBarcode": "bar-1", "qty": 1, "discountCents": 100},
                   {"offerId": "KPN2", "couponCode": "K2", "offerBarcode": "bar-2", "qty": 1, "discountCents": 50},
                   {"offerId": "KPN3", "couponCode": "K1", "offerBarcode": "bar-1", "qty": 1, "discountCents": 25}]})
    }

    #[test]
    fn a_sale_is_one_redeem_call_naming_the_loyalty_id_and_merging_duplicates() {
        let e = sale_entries(&sale(), KouponRedeemAs::LoyaltyId);
        let wire: Vec<Value> = e.iter().map(Entry::wire).collect();
        assert_eq!(
            wire,
            [
                json!({"discountAsset": "LOY-1", "couponCode": "K1", "qty": 2}),
                json!({"discountAsset": "LOY-1", "couponCode": "K2", "qty": 1}),
            ]
        );
        // No loyalty id known: the card scanned at the POS.
        let mut p = sale();
        p["loyaltyId"] = Value::Null;
        assert_eq!(
            sale_entries(&p, KouponRedeemAs::LoyaltyId)[0].asset,
            "4000000000001"
        );
        // Offer barcodes: never a couponCode.
        let wire: Vec<Value> = sale_entries(&sale(), KouponRedeemAs::OfferBarcode)
            .iter()
            .map(Entry::wire)
            .collect();
        assert_eq!(
            wire,
            [
                json!({"discountAsset": "bar-1", "qty": 2}),
                json!({"discountAsset": "bar-2", "qty": 1}),
            ]
        );
    }

    #[test]
    fn short_entries_of_a_sale_are_split_off_and_dead_lettered() {
        let p = sale();
        let e = sale_entries(&p, KouponRedeemAs::LoyaltyId);
        let full = json!({"results": [
            {"discountAsset": "LOY-1", "couponCode": "K1", "redeemedQty": 2},
            {"discountAsset": "LOY-1", "couponCode": "K2", "redeemedQty": 1}]});
        assert_eq!(
            sale_result(&p, &e, &full, &Judge::default()),
            Delivery::delivered()
        );
        assert_eq!(
            sale_result(&p, &e, &Value::Null, &Judge::default()),
            Delivery::delivered(),
            "204"
        );
        // K1 only once of twice, K2 refused: the two unrecorded offers are split off.
        let short = json!({"results": [
            {"discountAsset": "LOY-1", "couponCode": "K2", "redeemedQty": 0, "exceptionCode": "OFFER_EXPIRED"},
            {"discountAsset": "LOY-1", "couponCode": "K1", "redeemedQty": 1}]});
        match sale_result(&p, &e, &short, &Judge::default()) {
            Delivery::Partly { refused, reason } => {
                let offers: Vec<&str> = refused["redemptions"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|r| r["offerId"].as_str().unwrap())
                    .collect();
                assert_eq!(offers, ["KPN3", "KPN2"]);
                assert!(reason.contains("OFFER_EXPIRED"), "{reason}");
                assert_eq!(refused["transaction"], "T1");
            }
            other => panic!("{other:?}"),
        }
        let none = json!({"results": [
            {"discountAsset": "LOY-1", "couponCode": "K1", "redeemedQty": 0, "exceptionCode": "X"},
            {"discountAsset": "LOY-1", "couponCode": "K2", "redeemedQty": 0, "exceptionCode": "X"}]});
        assert!(matches!(
            sale_result(&p, &e, &none, &Judge::default()),
            Delivery::Dead(_)
        ));
    }

    #[test]
    fn an_exception_code_beside_a_full_quantity_is_not_redeemed() {
        let p = sale();
        let e = sale_entries(&p, KouponRedeemAs::LoyaltyId);
        // K2 recorded "in full" but with an exception code: koupon.md §7 "treat any
        // non-empty as not redeemed", so its offer is split off for store IT.
        let odd = json!({"results": [
            {"discountAsset": "LOY-1", "couponCode": "K1", "redeemedQty": 2},
            {"discountAsset": "LOY-1", "couponCode": "K2", "redeemedQty": 1, "exceptionCode": "ODD"}]});
        match sale_result(&p, &e, &odd, &Judge::default()) {
            Delivery::Partly { refused, reason } => {
                assert_eq!(refused["redemptions"][0]["offerId"], "KPN2");
                assert_eq!(refused["redemptions"].as_array().unwrap().len(), 1);
                assert!(reason.contains("K2: 0 of 1 redeemed (ODD)"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        // ALREADY_REDEEMED on a retry is ours only when configured.
        let again = json!({"results": [
            {"discountAsset": "LOY-1", "couponCode": "K1", "redeemedQty": 0, "exceptionCode": "ALREADY_REDEEMED"},
            {"discountAsset": "LOY-1", "couponCode": "K2", "redeemedQty": 0, "exceptionCode": "ALREADY_REDEEMED"}]});
        assert!(matches!(
            sale_result(&p, &e, &again, &Judge::default()),
            Delivery::Dead(_)
        ));
        let configured = Judge {
            retry_code: Some("ALREADY_REDEEMED".into()),
        };
        assert_eq!(
            sale_result(&p, &e, &again, &configured),
            Delivery::delivered()
        );
    }

    #[test]
    fn offer_flags_are_read_as_booleans_numbers_or_strings() {
        let config = Config::from_toml_str(
            "[store]\nsites=[\"S\"]\n[[lanes.credentials]]\nusername=\"a\"\npassword=\"b\"\n\
             [[offer_rules]]\nprovider=\"koupon\"\nreference=\"KPN7\"\n\
             rule={mechanic={type=\"amountOff\",cents=100}}\n",
        )
        .unwrap();
        let offer = |extra: Value| {
            let mut o = json!({"offerId": "KPN7", "barcodeString": "asset-7"});
            for (k, v) in extra.as_object().unwrap() {
                o[k] = v.clone();
            }
            offer_of(&o, &config).unwrap()
        };
        // koupon.md §4 names `featured` (and `is_active`) without a type.
        for yes in [
            json!(true),
            json!(1),
            json!("1"),
            json!("true"),
            json!("TRUE"),
        ] {
            assert!(offer(json!({ "featured": yes })).featured, "{yes}");
        }
        for no in [
            json!(false),
            json!(0),
            json!("0"),
            json!("false"),
            json!(null),
        ] {
            assert!(!offer(json!({ "featured": no })).featured, "{no}");
        }
        assert!(!offer(json!({})).featured);
        // Inactive offers are not applied, however the flag is written; absent = active.
        assert!(offer(json!({})).enabled);
        assert!(offer(json!({"is_active": true})).enabled);
        for no in [json!(false), json!(0), json!("0")] {
            assert!(!offer(json!({ "is_active": no })).enabled, "{no}");
        }
    }
}
