//! The outbox worker: claims due items atomically with a lease (strictly in order per
//! ordering key, concurrently across keys), delivers each with its provider's client, and
//! records the outcome. Transient failures wait with capped exponential backoff and jitter;
//! permanent refusals go to the dead-letter state with the reason; a per-provider circuit
//! breaker stops claiming for a provider that keeps failing, and a timer probes it until
//! it answers (no item burns an attempt meanwhile).

use crate::daemon::{Clients, Snapshot};
use crate::http::{CallError, Delivery};
use crate::{convercus, coupontools, koupon};
use shared::db::{now_secs, Db};
use shared::outbox::{self, Item};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinSet;

pub const PROVIDERS: [&str; 3] = [convercus::NAME, coupontools::NAME, koupon::NAME];

/// One provider's circuit breaker.
#[derive(Debug, Default, Clone)]
pub struct Breaker {
    failures: u32,
    open_until: Option<Instant>,
    probing: bool,
    reason: String,
}

impl Breaker {
    pub fn is_open(&self) -> bool {
        self.open_until.is_some()
    }

    fn probe_due(&self, now: Instant) -> bool {
        !self.probing && self.open_until.is_some_and(|t| now >= t)
    }

    fn success(&mut self, provider: &str) {
        if self.is_open() {
            log::info!(provider = provider; "{provider} answers again; delivering its queue");
        }
        *self = Breaker::default();
    }

    /// A transient failure; opens after `threshold` in a row (at once for `auth`).
    fn failure(
        &mut self,
        provider: &str,
        reason: &str,
        threshold: u32,
        probe: Duration,
        auth: bool,
    ) {
        self.failures += 1;
        self.reason = reason.to_owned();
        if (auth || self.failures >= threshold) && !self.is_open() {
            log::warn!(provider = provider; "{provider} unreachable or refusing ({reason}); pausing its queue and probing every {} s", probe.as_secs());
        }
        if auth || self.failures >= threshold {
            self.open_until = Some(Instant::now() + probe);
        }
    }
}

/// Breakers of all providers, shared with pulls (a pull skips an open provider).
#[derive(Default)]
pub struct Breakers(Mutex<HashMap<&'static str, Breaker>>);

impl Breakers {
    fn with<R>(&self, provider: &'static str, f: impl FnOnce(&mut Breaker) -> R) -> R {
        let mut map = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(map.entry(provider).or_default())
    }

    pub fn is_open(&self, provider: &'static str) -> bool {
        self.with(provider, |b| b.is_open())
    }

    /// Records the outcome of any call to `provider` (deliveries, pulls, probes).
    pub fn record(
        &self,
        provider: &'static str,
        result: Result<(), &CallError>,
        o: &shared::config::OutboxConfig,
    ) {
        let probe = Duration::from_secs(o.breaker_probe_secs);
        self.with(provider, |b| match result {
            Ok(()) => b.success(provider),
            Err(CallError::Auth(m)) => b.failure(provider, m, o.breaker_threshold, probe, true),
            Err(e) if e.is_transient() => {
                b.failure(provider, &e.to_string(), o.breaker_threshold, probe, false)
            }
            // A refusal of one item says the provider is up.
            Err(_) => b.success(provider),
        });
    }
}

fn name_of(provider: &str) -> Option<&'static str> {
    PROVIDERS.into_iter().find(|p| *p == provider)
}

/// Delivers one item with its provider's client.
async fn deliver(clients: &Clients, db: &Db, item: &Item) -> Delivery {
    let id = item.id;
    let record = |progress: serde_json::Value| {
        let db = db.clone();
        async move {
            db.writer
                .write(move |conn| outbox::set_progress(conn, id, &progress))
                .await
                .map_err(|e| e.to_string())
        }
    };
    match item.provider.as_str() {
        convercus::NAME => match &clients.convercus {
            Some(c) => c.deliver(item, db, record).await,
            None => Delivery::Retry("convercus is disabled".into()),
        },
        coupontools::NAME => match &clients.coupontools {
            Some(c) => c.deliver(item, record).await,
            None => Delivery::Retry("coupontools is disabled".into()),
        },
        koupon::NAME => match &clients.koupon {
            Some(c) => c.deliver(item, record).await,
            None => Delivery::Retry("koupon is disabled".into()),
        },
        other => Delivery::Dead(format!("no client for provider {other}")),
    }
}

async fn probe(clients: &Clients, provider: &str) -> Result<(), CallError> {
    let r = match provider {
        convercus::NAME => match &clients.convercus {
            Some(c) => c.probe().await,
            None => Ok(()),
        },
        coupontools::NAME => match &clients.coupontools {
            Some(c) => c.probe().await,
            None => Ok(()),
        },
        koupon::NAME => match &clients.koupon {
            Some(c) => c.probe().await,
            None => Ok(()),
        },
        _ => Ok(()),
    };
    // Only reachability matters to the breaker: a refusal of the probe itself is an answer.
    match r {
        Err(e) if e.is_transient() || matches!(e, CallError::Auth(_)) => Err(e),
        _ => Ok(()),
    }
}

/// A log-safe version of `text`: the item's coupon codes (voucher codes, session ids,
/// account coupon ids, Koupon assets) cut to their first 4 characters. The full text stays
/// in the database for store IT.
pub fn redact(item: &Item, text: &str) -> String {
    let mut out = text.to_owned();
    for k in [
        "code",
        "providerRef",
        "accountCouponId",
        "discountAsset",
        "couponCode",
    ] {
        if let Some(v) = item.payload.get(k).and_then(serde_json::Value::as_str) {
            // Characters, not bytes: a lane's code may be any UTF-8 (a byte slice inside a
            // character panicked the delivery task).
            let head: String = v.chars().take(4).collect();
            if head.len() < v.len() {
                out = out.replace(v, &format!("{head}…"));
            }
        }
    }
    out
}

/// Writes what a delivery came to.
async fn settle(db: &Db, snap: &Snapshot, item: Item, outcome: Delivery) {
    let o = snap.config.outbox.clone();
    let now = now_secs();
    let unit: f64 = rand::random();
    let backoff = outbox::backoff_secs(
        u32::try_from(item.attempts).unwrap_or(u32::MAX),
        o.backoff_base_secs,
        o.backoff_cap_secs,
        o.jitter_percent,
        unit,
    );
    // A provider that asked for a pause (429/503 with Retry-After) sees no retry before it ends.
    let paused = snap
        .clients
        .paused_for(&item.provider)
        .map_or(0, |d| d.as_secs() + u64::from(d.subsec_nanos() > 0));
    let backoff = backoff.max(paused);
    let id = item.id;
    let provider = item.provider.clone();
    let op = item.operation.clone();
    let safe = |t: &str| redact(&item, t);
    match &outcome {
        Delivery::Delivered { note } => {
            log::debug!(provider = provider.as_str(), outbox_item = id; "{op} delivered");
            if let Some(n) = note {
                log::info!(provider = provider.as_str(), outbox_item = id; "{op} delivered ({})", safe(n));
            }
        }
        Delivery::Retry(r) => {
            log::info!(provider = provider.as_str(), outbox_item = id, attempts = item.attempts; "{op} not delivered, retrying in {backoff} s: {}", safe(r))
        }
        Delivery::AuthFailed(r) => {
            log::error!(provider = provider.as_str(), outbox_item = id; "{op} not delivered: {}", safe(r))
        }
        Delivery::Dead(r) => {
            log::warn!(provider = provider.as_str(), outbox_item = id; "{op} refused permanently, dead-lettered for store IT (edge-ctl outbox list --state dead): {}", safe(r))
        }
        Delivery::Partly { reason, .. } => {
            log::warn!(provider = provider.as_str(), outbox_item = id; "{op} delivered in part; the refused part is dead-lettered for store IT (edge-ctl outbox list --state dead): {}", safe(reason))
        }
    }
    let probe_secs = i64::try_from(o.breaker_probe_secs).unwrap_or(15);
    let result = db
        .writer
        .write(move |conn| -> rusqlite::Result<()> {
            match outcome {
                Delivery::Delivered { .. } => {
                    outbox::mark_delivered(conn, id, now)?;
                    outbox::settle_local(conn, &item)?;
                }
                Delivery::Retry(r) => {
                    let next = now + i64::try_from(backoff).unwrap_or(600);
                    outbox::retry_later(conn, id, now, next, &r)?;
                    shared::sync::record_error(conn, &provider, now, &r)?;
                }
                Delivery::AuthFailed(r) => {
                    outbox::retry_later(conn, id, now, now + probe_secs, &r)?;
                    shared::sync::record_error(conn, &provider, now, &r)?;
                }
                Delivery::Dead(r) => {
                    outbox::dead_letter(conn, id, now, &r)?;
                    outbox::flag_refused_redemption(conn, &item)?;
                    shared::sync::record_error(
                        conn,
                        &provider,
                        now,
                        &format!("item {id} dead-lettered: {r}"),
                    )?;
                }
                Delivery::Partly { refused, reason } => {
                    outbox::deliver_part(conn, &item, &refused, &reason, now)?;
                    shared::sync::record_error(
                        conn,
                        &provider,
                        now,
                        &format!("item {id} delivered in part, the rest dead-lettered: {reason}"),
                    )?;
                }
            }
            Ok(())
        })
        .await;
    if let Err(e) = result {
        log::error!(outbox_item = id; "cannot record the outcome of item {id}: {e}; its lease will run out and it will be verified and retried");
    }
}

/// Sales deleted per write transaction, and the pause after each: a sale's row with its
/// update and commit is ~1.5 KB, so 200 per transaction meant syncs of a few hundred KB that
/// held lane writes up to 300 ms (lane bench, `BENCH_PHASES=prune`); 25 with a 50 ms pause
/// (at most 500 sales/s: an hour's sales of a big store in a second, a year's in hours).
const PRUNE_BATCH: i64 = 25;
const PRUNE_PAUSE: Duration = Duration::from_millis(50);

/// Deletes the sales last touched more than `days` ago (with their redemption log), in
/// batches found on a read connection and deleted in short write transactions, with a
/// pause between them for lane writes; logs progress every 10 s. Returns how many went.
pub async fn prune_sales(db: &Db, days: u64) -> Result<usize, String> {
    let days = i64::try_from(days).unwrap_or(36_500).min(36_500);
    let before = now_secs() - days * 86_400;
    let started = Instant::now();
    let mut last_report = Instant::now();
    let mut total = 0;
    loop {
        let reads = db.clone();
        let keys = tokio::task::spawn_blocking(move || {
            let conn = reads.read().map_err(|e| e.to_string())?;
            shared::repo::stale_sales(&conn, before, PRUNE_BATCH).map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())??;
        if keys.is_empty() {
            break;
        }
        let deleted = db
            .writer
            .write(move |conn| shared::repo::delete_sales(conn, &keys, before))
            .await
            .map_err(|e| e.to_string())?;
        total += deleted;
        if deleted == 0 {
            // Every one was resumed since the scan; the next hour looks again.
            break;
        }
        if last_report.elapsed() >= Duration::from_secs(10) {
            last_report = Instant::now();
            log::info!(
                "deleting sales older than {days} days: {total} so far in {} s",
                started.elapsed().as_secs()
            );
        }
        tokio::time::sleep(PRUNE_PAUSE).await;
    }
    Ok(total)
}

/// Vouchers looked at per read (a step of the walk over the table), and deleted per write
/// transaction: voucher rows are small (~200 bytes), and a pulled chain-wide campaign may
/// leave millions of them.
const VOUCHER_SCAN: i64 = 2_000;
const VOUCHER_DELETE_BATCH: usize = 100;

/// Deletes the vouchers whose validity ended before `kept_from` (see
/// [`shared::config::Config::vouchers_kept_from`]) and that nothing holds, walking the
/// table in code order in short reads and deleting in short write transactions with a
/// pause between them for lane writes; logs progress every 10 s. Returns how many went.
pub async fn prune_vouchers(db: &Db, kept_from: &str) -> Result<usize, String> {
    let started = Instant::now();
    let mut last_report = Instant::now();
    let mut after = String::new();
    let mut total = 0;
    loop {
        let (reads, from, cut) = (db.clone(), after.clone(), kept_from.to_owned());
        let step = tokio::task::spawn_blocking(move || {
            let conn = reads.read().map_err(|e| e.to_string())?;
            shared::repo::vouchers_after(&conn, &from, &cut, VOUCHER_SCAN)
                .map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())??;
        let Some((last, _)) = step.last() else {
            break;
        };
        after = last.clone();
        let ended: Vec<String> = step
            .into_iter()
            .filter_map(|(code, ended)| ended.then_some(code))
            .collect();
        for chunk in ended.chunks(VOUCHER_DELETE_BATCH) {
            let (codes, cut) = (chunk.to_vec(), kept_from.to_owned());
            total += db
                .writer
                .write(move |conn| shared::repo::delete_ended_vouchers(conn, &codes, &cut))
                .await
                .map_err(|e| e.to_string())?;
            tokio::time::sleep(PRUNE_PAUSE).await;
        }
        if last_report.elapsed() >= Duration::from_secs(10) {
            last_report = Instant::now();
            log::info!(
                "deleting vouchers that ended before {kept_from}: {total} so far in {} s",
                started.elapsed().as_secs()
            );
        }
    }
    Ok(total)
}

/// Runs until `shutdown` turns true; then stops claiming, lets in-flight deliveries finish
/// for up to `grace`, and releases the rest.
pub async fn run(
    db: Db,
    mut snapshots: watch::Receiver<Arc<Snapshot>>,
    breakers: Arc<Breakers>,
    mut shutdown: watch::Receiver<bool>,
    grace: Duration,
    watchdog: Arc<shared::service::Watchdog>,
) {
    let mut inflight: JoinSet<(Item, Delivery)> = JoinSet::new();
    let mut probes: JoinSet<(&'static str, Result<(), CallError>)> = JoinSet::new();
    let mut claimed: HashMap<i64, Item> = HashMap::new();
    let mut last_rescue = Instant::now() - Duration::from_secs(3600);
    let mut last_prune = Instant::now() - Duration::from_secs(24 * 3600);
    // Set while old sales and vouchers are being deleted (a store's first prune may take minutes).
    let pruning = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut rr = 0usize;
    loop {
        if *shutdown.borrow() {
            break;
        }
        // The main loop goes round at least every poll interval: systemd's heartbeat.
        watchdog.ping();
        let snap = snapshots.borrow().clone();
        let o = &snap.config.outbox;
        let lease = i64::try_from(o.lease_secs).unwrap_or(120);
        // Expired leases (a crashed worker's items) come back, and old deliveries go.
        if last_rescue.elapsed() >= Duration::from_secs(5) {
            last_rescue = Instant::now();
            let retention = i64::try_from(o.retention_days).unwrap_or(14) * 86_400;
            let prune = last_prune.elapsed() >= Duration::from_secs(3600);
            if prune {
                last_prune = Instant::now();
                if !pruning.swap(true, std::sync::atomic::Ordering::AcqRel) {
                    let (db, flag) = (db.clone(), Arc::clone(&pruning));
                    let days = snap.config.lanes.sales_retention_days;
                    let kept_from = snap.config.vouchers_kept_from();
                    let image_dir = snap.config.server.image_dir.clone();
                    tokio::spawn(async move {
                        match prune_sales(&db, days).await {
                            Ok(0) => {}
                            Ok(n) => log::info!("deleted {n} sales last touched more than {days} days ago (lanes.sales_retention_days)"),
                            Err(e) => log::error!("deleting old sales failed, tried again in an hour: {e}"),
                        }
                        match prune_vouchers(&db, &kept_from).await {
                            Ok(0) => {}
                            Ok(n) => log::info!("deleted {n} vouchers whose validity ended before {kept_from} (lanes.voucher_retention_days)"),
                            Err(e) => log::error!("deleting ended vouchers failed, tried again in an hour: {e}"),
                        }
                        match crate::images::prune(&db, &image_dir).await {
                            Ok(0) => {}
                            Ok(n) => log::info!(
                                "deleted {n} cached coupon images no offer advertises any more"
                            ),
                            Err(e) => log::error!(
                                "deleting unused coupon images failed, tried again in an hour: {e}"
                            ),
                        }
                        flag.store(false, std::sync::atomic::Ordering::Release);
                    });
                }
            }
            // Items still being delivered here keep their lease however long they take;
            // only a stopped worker's items run out.
            let running: Vec<i64> = claimed.keys().copied().collect();
            let r = db
                .writer
                .write(move |conn| -> rusqlite::Result<(usize, usize)> {
                    let now = now_secs();
                    outbox::renew_leases(conn, &running, now + lease)?;
                    let rescued = outbox::rescue_expired_leases(conn, now)?;
                    let pruned = if prune {
                        outbox::prune_delivered(conn, now - retention)?
                    } else {
                        0
                    };
                    Ok((rescued, pruned))
                })
                .await;
            match r {
                Ok((rescued, pruned)) => {
                    if rescued > 0 {
                        log::warn!("{rescued} outbox items were left in flight by a stopped worker; they will be verified and retried");
                    }
                    if pruned > 0 {
                        log::info!(
                            "pruned {pruned} delivered outbox items older than {} days",
                            o.retention_days
                        );
                    }
                }
                Err(e) => log::error!("outbox maintenance failed: {e}"),
            }
        }
        // Probe providers whose breaker is open, on the timer.
        let now = Instant::now();
        for p in PROVIDERS {
            let due = breakers.with(p, |b| {
                let due = b.probe_due(now);
                if due {
                    b.probing = true;
                }
                due
            });
            if due {
                let clients = snap.clients.clone();
                probes.spawn(async move { (p, probe(&clients, p).await) });
            }
        }
        // Claim as many due items as there are free slots, round robin over providers
        // that are enabled, whose breaker is closed and that asked for no pause (an item
        // claimed then would hold its lease while waiting).
        let free = o.concurrency.saturating_sub(inflight.len());
        let open: Vec<&'static str> = PROVIDERS
            .into_iter()
            .filter(|p| {
                snap.clients.enabled(p)
                    && !breakers.is_open(p)
                    && snap.clients.paused_for(p).is_none()
            })
            .collect();
        // Look before taking the write lock: most of the time there is nothing to do.
        let reader = db.clone();
        let allowed: Vec<&'static str> = if free > 0 && !open.is_empty() {
            tokio::task::spawn_blocking(move || {
                let now = now_secs();
                reader.read().map_or(open.clone(), |conn| {
                    open.iter()
                        .copied()
                        .filter(|p| outbox::has_due(&conn, p, now).unwrap_or(true))
                        .collect()
                })
            })
            .await
            .unwrap_or_default()
        } else {
            Vec::new()
        };
        if free > 0 && !allowed.is_empty() {
            rr = rr.wrapping_add(1);
            let start = rr % allowed.len();
            let order: Vec<&'static str> = allowed[start..]
                .iter()
                .chain(&allowed[..start])
                .copied()
                .collect();
            let got = db
                .writer
                .write(move |conn| -> rusqlite::Result<Vec<Item>> {
                    let now = now_secs();
                    let mut out = Vec::new();
                    let mut exhausted = vec![false; order.len()];
                    while out.len() < free && exhausted.iter().any(|e| !e) {
                        for (i, p) in order.iter().enumerate() {
                            if exhausted[i] || out.len() >= free {
                                continue;
                            }
                            match outbox::claim_next(conn, Some(p), now, now + lease)? {
                                Some(item) => out.push(item),
                                None => exhausted[i] = true,
                            }
                        }
                    }
                    Ok(out)
                })
                .await;
            match got {
                Ok(items) => {
                    for item in items {
                        claimed.insert(item.id, item.clone());
                        let clients = snap.clients.clone();
                        let db = db.clone();
                        inflight.spawn(async move {
                            let d = deliver(&clients, &db, &item).await;
                            (item, d)
                        });
                    }
                }
                Err(e) => log::error!("cannot claim outbox items: {e}"),
            }
        }
        let poll = Duration::from_millis(o.poll_ms);
        let full = inflight.len() >= o.concurrency;
        tokio::select! {
            _ = shutdown.changed() => {}
            _ = snapshots.changed() => {}
            Some(done) = inflight.join_next(), if !inflight.is_empty() => {
                if let Ok((item, outcome)) = done {
                    claimed.remove(&item.id);
                    if let Some(p) = name_of(&item.provider) {
                        let call = match &outcome {
                            Delivery::Retry(r) => Err(CallError::Transport { message: r.clone(), maybe_sent: true }),
                            Delivery::AuthFailed(r) => Err(CallError::Auth(r.clone())),
                            _ => Ok(()),
                        };
                        breakers.record(p, call.as_ref().map(|_| ()), o);
                    }
                    settle(&db, &snap, item, outcome).await;
                }
            }
            Some(done) = probes.join_next(), if !probes.is_empty() => {
                if let Ok((p, r)) = done {
                    breakers.with(p, |b| b.probing = false);
                    if let Err(e) = &r {
                        log::info!(provider = p; "probe of {p} failed: {e}");
                    }
                    breakers.record(p, r.as_ref().map(|_| ()), o);
                }
            }
            _ = tokio::time::sleep(poll), if !full => {}
            _ = tokio::time::sleep(watchdog.period()), if full => {}
        }
    }
    // Stopping: let in-flight deliveries finish, then release what is left.
    let deadline = tokio::time::Instant::now() + grace;
    let snap = snapshots.borrow().clone();
    while !inflight.is_empty() {
        match tokio::time::timeout_at(deadline, inflight.join_next()).await {
            Ok(Some(Ok((item, outcome)))) => {
                claimed.remove(&item.id);
                settle(&db, &snap, item, outcome).await;
            }
            Ok(Some(Err(_))) => {}
            Ok(None) | Err(_) => break,
        }
    }
    inflight.abort_all();
    if !claimed.is_empty() {
        let ids: Vec<i64> = claimed.keys().copied().collect();
        let n = ids.len();
        let r = db
            .writer
            .write(move |conn| -> rusqlite::Result<()> {
                let now = now_secs();
                for id in ids {
                    outbox::retry_later(conn, id, now, now, "released at shutdown")?;
                }
                Ok(())
            })
            .await;
        match r {
            Ok(()) => log::info!("released {n} in-flight outbox items at shutdown"),
            Err(e) => log::error!(
                "cannot release in-flight items at shutdown ({e}); their leases will run out"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_never_carry_a_full_code() {
        let item = Item {
            id: 1,
            provider: "coupontools".into(),
            operation: "validate".into(),
            idempotency_key: "k".into(),
            ordering_key: "voucher:ac6s7u3g8a25ja7x9qg87".into(),
            payload: serde_json::json!({"code": "ac6s7u3g8a25ja7x9qg87", "providerRef": "ac6s7u3g8a25ja7x9qg87"}),
            state: "inflight".into(),
            attempts: 1,
            last_error: None,
            progress: None,
            next_attempt_at: 0,
            created_at: 0,
            updated_at: 0,
        };
        let r = redact(
            &item,
            "300: The coupon or voucher ac6s7u3g8a25ja7x9qg87 was already used at 2026-11-01",
        );
        assert_eq!(
            r,
            "300: The coupon or voucher ac6s… was already used at 2026-11-01"
        );
        // A code with characters of several bytes is cut between characters.
        let accented = Item {
            payload: serde_json::json!({"code": "ab\u{e9}\u{e9}\u{e9}-KLM"}),
            ..item
        };
        assert_eq!(
            redact(&accented, "refused ab\u{e9}\u{e9}\u{e9}-KLM"),
            "refused ab\u{e9}\u{e9}…"
        );
    }

    #[test]
    fn breaker_opens_after_threshold_and_at_once_on_credentials() {
        let o = shared::config::OutboxConfig::default();
        let b = Breakers::default();
        let net = CallError::Transport {
            message: "refused".into(),
            maybe_sent: false,
        };
        for _ in 0..o.breaker_threshold - 1 {
            b.record(convercus::NAME, Err(&net), &o);
        }
        assert!(!b.is_open(convercus::NAME));
        b.record(convercus::NAME, Err(&net), &o);
        assert!(b.is_open(convercus::NAME));
        b.record(convercus::NAME, Ok(()), &o);
        assert!(!b.is_open(convercus::NAME));
        b.record(koupon::NAME, Err(&CallError::Auth("401".into())), &o);
        assert!(b.is_open(koupon::NAME));
        // A refusal of one item says the provider is up.
        let refused = CallError::Status {
            status: 400,
            code: "X".into(),
            detail: String::new(),
        };
        b.record(koupon::NAME, Err(&refused), &o);
        assert!(!b.is_open(koupon::NAME));
    }
}
