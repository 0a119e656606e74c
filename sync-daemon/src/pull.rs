//! Pulls: the providers have no delta APIs, so each pull reads the full lists, diffs them
//! against local state and writes only what changed, in short transactions (a batch of
//! customers or sessions each) so a lane's write never waits behind a pull for long.
//! Local changes not yet acknowledged upstream are never overwritten (shared::sync).

use crate::daemon::Clients;
use crate::http::CallError;
use crate::images::Images;
use crate::{convercus, coupontools, koupon};
use shared::config::Config;
use shared::db::Db;
use shared::domain::Offer;
use shared::repo::{self, Customer};
use shared::sync::{self, Changes, PulledCoupon};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Instant;

/// Customers whose pulled data is written in one transaction. The transaction holds the
/// database's write lock, which lane updates and commits wait for: 50 customers (1,000
/// coupon states) held it ~7 ms (up to 13 ms) and put the lanes' p99 at 13 ms during a
/// full pull; 10 hold it ~2 ms and keep it at ~7 ms (`cargo bench -p e2e --bench pull`).
/// A batch's customers are fetched `pull_concurrency` at a time, so this also caps the
/// useful concurrency.
const CUSTOMER_BATCH: usize = 10;
/// Vouchers written per transaction.
const VOUCHER_BATCH: usize = 500;
/// A Convercus pull logs at most this many skipped customers one by one, then a count.
const SKIPS_LOGGED: usize = 10;
/// A long pull logs its progress this often.
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("{0}")]
    Call(#[from] CallError),
    #[error("database: {0}")]
    Db(String),
}

fn db_err(e: impl std::fmt::Display) -> PullError {
    PullError::Db(e.to_string())
}

/// Tries of one read of a pull: a transient failure (network, 429, 5xx, an unreadable
/// answer) is retried this many times in all, after PULL_BACKOFF, then twice that, …
/// before the pull gives up. A `Retry-After` pauses the provider's pacer on top.
pub const PULL_TRIES: u32 = 4;
const PULL_BACKOFF: std::time::Duration = std::time::Duration::from_millis(500);

/// Runs `read` (a provider read, safe to repeat) until it succeeds, fails for good, or
/// has failed transiently PULL_TRIES times.
pub async fn retried<T, F, Fut>(provider: &str, what: &str, mut read: F) -> Result<T, CallError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, CallError>>,
{
    let mut wait = PULL_BACKOFF;
    let mut tries = 1;
    loop {
        match read().await {
            Err(e) if e.is_transient() && tries < PULL_TRIES => {
                log::info!(provider = provider; "{what} failed ({e}); trying again in {} ms ({tries} of {PULL_TRIES})", wait.as_millis());
                let jitter = wait.mul_f64(rand::random::<f64>() * 0.2);
                tokio::time::sleep(wait + jitter).await;
                wait *= 2;
                tries += 1;
            }
            r => return r,
        }
    }
}

/// A stable local id of at most 15 characters for a provider id (CATAPULT coupon ids are
/// 1..15 characters in commits; provider ids are UUIDs or long base64 strings): the prefix
/// and 12 base-32 characters of the SHA-256 of the provider id.
pub fn short_id(prefix: &str, provider_ref: &str) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let digest = ring::digest::digest(&ring::digest::SHA256, provider_ref.as_bytes());
    let mut bits: u64 = 0;
    for b in &digest.as_ref()[..8] {
        bits = (bits << 8) | u64::from(*b);
    }
    let mut out = String::from(prefix);
    for i in 0..12 {
        out.push(ALPHABET[((bits >> (59 - 5 * i)) & 31) as usize] as char);
    }
    out
}

/// One customer as a provider reports it.
#[derive(Debug, Clone)]
pub struct CustomerPull {
    pub customer: Customer,
    pub coupons: Vec<(Offer, PulledCoupon)>,
}

/// What a pull did, for the log and `sync_state.last_result`.
#[derive(Debug, Default, Clone, Copy)]
pub struct Summary {
    pub seen: usize,
    pub offers_changed: usize,
    pub changes: Changes,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} read, {} offers changed, {} rows written, {} unchanged, {} kept (local changes not yet delivered)",
            self.seen,
            self.offers_changed,
            self.changes.written,
            self.changes.unchanged,
            self.changes.kept_local
        )
    }
}

/// Runs the pull of `provider`.
pub async fn run(
    provider: &str,
    clients: &Clients,
    config: &Config,
    db: &Db,
) -> Result<Summary, PullError> {
    match provider {
        convercus::NAME => match &clients.convercus {
            Some(c) => pull_convercus(c, config, db).await,
            None => Ok(Summary::default()),
        },
        coupontools::NAME => match &clients.coupontools {
            Some(c) => pull_coupontools(c, config, db).await,
            None => Ok(Summary::default()),
        },
        koupon::NAME => match &clients.koupon {
            Some(c) => pull_koupon(c, config, db).await,
            None => Ok(Summary::default()),
        },
        _ => Ok(Summary::default()),
    }
}

/// Every customer seen at this store plus the configured list, in pages; each customer's
/// account, profile and coupon list fetched `pull_concurrency` at a time.
async fn pull_convercus(
    client: &std::sync::Arc<convercus::Client>,
    config: &Config,
    db: &Db,
) -> Result<Summary, PullError> {
    use futures_util::StreamExt;
    let mut extra: Vec<String> = client.config().customers.clone();
    extra.sort();
    let mut after = String::new();
    let concurrency = client.config().pull_concurrency;
    // Fetching and writing overlap: customers are fetched `pull_concurrency` at a time
    // without pause, and every CUSTOMER_BATCH of them go to the writer task (two batches
    // may wait for it), so the short transactions do not cap the fetch concurrency.
    let (tx, rx) = tokio::sync::mpsc::channel::<(usize, Vec<CustomerPull>)>(2);
    let writer = tokio::spawn(write_loop(db.clone(), config.clone(), rx));
    // A pull abandoned at a stop (its future dropped) takes its writer task with it; a
    // batch already handed to the database's writer commits whole or not at all.
    let _stop_writer = AbortOnDrop(writer.abort_handle());
    let mut read = 0usize;
    // Customers skipped (see `concerns_one_customer`) and the last reason.
    let mut skipped = 0usize;
    let mut last_skip: Option<CallError> = None;
    let fetched: Result<(), PullError> = async {
        loop {
            let reader = db.clone();
            let from = after.clone();
            let mut page = tokio::task::spawn_blocking(move || {
                let conn = reader.read().map_err(db_err)?;
                sync::customer_ids(&conn, &from, 1000).map_err(db_err)
            })
            .await
            .map_err(db_err)??;
            let end = page.last().cloned();
            // Configured customers not yet known locally, in the same id range.
            let upper = end.clone();
            page.extend(
                extra
                    .iter()
                    .filter(|c| **c > after && upper.as_ref().is_none_or(|u| *c <= u))
                    .cloned(),
            );
            page.sort();
            page.dedup();
            if page.is_empty() {
                break;
            }
            let client: &convercus::Client = client;
            let mut results = futures_util::stream::iter(page)
                .map(move |id: String| async move {
                    let r = retried(convercus::NAME, "a customer's read", || {
                        client.pull_customer(&id, config)
                    })
                    .await;
                    (id, r)
                })
                .buffered(concurrency);
            let mut batch = Vec::with_capacity(CUSTOMER_BATCH);
            let mut ids = 0;
            while let Some((id, r)) = results.next().await {
                ids += 1;
                read += 1;
                match r {
                    Ok(Some(p)) => batch.push(p),
                    Ok(None) => {}
                    // One account the provider refuses (locked, deleted, forbidden) or
                    // answers unreadably does not stop the pull for every other customer.
                    Err(e) if concerns_one_customer(&e) => {
                        skipped += 1;
                        if skipped <= SKIPS_LOGGED {
                            log::warn!(provider = convercus::NAME; "customer …{} skipped in this pull: {e}", tail(&id));
                        }
                        last_skip = Some(e);
                    }
                    Err(e) => return Err(e.into()),
                }
                if ids == CUSTOMER_BATCH {
                    let full = std::mem::replace(&mut batch, Vec::with_capacity(CUSTOMER_BATCH));
                    tx.send((ids, full)).await.map_err(db_err)?;
                    ids = 0;
                }
            }
            if ids > 0 {
                tx.send((ids, batch)).await.map_err(db_err)?;
            }
            match end {
                Some(e) => after = e,
                None => break,
            }
        }
        Ok(())
    }
    .await;
    drop(tx);
    let written = writer.await.map_err(db_err)?;
    fetched?;
    if let Some(last) = last_skip {
        // Every customer refused is the provider refusing us, not one account: fail.
        if skipped == read {
            return Err(last.into());
        }
        log::warn!(provider = convercus::NAME; "{skipped} of {read} customers skipped in this pull (refused or unreadable; the first {SKIPS_LOGGED} are logged above, the last: {last}); the others are current");
    }
    written
}

/// A failure of one customer's read that says nothing of the others: the provider refused
/// that account (4xx other than 401/407/408/429: locked, deleted, forbidden, …) or its
/// answers stayed unreadable after the retries. Network failures, throttling, 5xx and
/// refused credentials stop the pull.
fn concerns_one_customer(e: &CallError) -> bool {
    match e {
        CallError::Status { status, .. } => {
            (400..500).contains(status) && ![401, 407, 408, 429].contains(status)
        }
        CallError::Malformed(_) => true,
        CallError::Transport { .. } | CallError::Auth(_) => false,
    }
}

/// The last four characters of a card number, for logs (card numbers are customer data).
fn tail(id: &str) -> String {
    let n = id.chars().count();
    id.chars().skip(n.saturating_sub(4)).collect()
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The writer side of a Convercus pull: writes each batch in one short transaction, skips
/// offers this pull already wrote unchanged, and reports progress.
async fn write_loop(
    db: Db,
    config: Config,
    mut rx: tokio::sync::mpsc::Receiver<(usize, Vec<CustomerPull>)>,
) -> Result<Summary, PullError> {
    let started = Instant::now();
    let mut last_report = Instant::now();
    let mut summary = Summary::default();
    // Offers this pull wrote: as pulled, and the local id they have.
    let mut written_offers: HashMap<String, (Offer, String)> = HashMap::new();
    // Batch writes since the last progress line: count, total and longest.
    let mut writes = (0u32, std::time::Duration::ZERO, std::time::Duration::ZERO);
    let mut images = images_for(&config);
    while let Some((ids, mut pulled)) = rx.recv().await {
        summary.seen += ids;
        for p in &mut pulled {
            for (o, _) in &mut p.coupons {
                localise(&mut images, o).await;
            }
        }
        // Offers the pull already wrote in this form need no second look.
        let mut known = HashMap::new();
        for p in &mut pulled {
            for (o, _) in &p.coupons {
                if let Some((w, id)) = written_offers.get(&o.provider_ref) {
                    if w == o {
                        known.insert(o.provider_ref.clone(), id.clone());
                    }
                }
            }
        }
        let mut as_pulled: HashMap<String, Offer> = HashMap::new();
        for p in &pulled {
            for (o, _) in &p.coupons {
                as_pulled
                    .entry(o.provider_ref.clone())
                    .or_insert_with(|| o.clone());
            }
        }
        let configured: HashSet<String> = as_pulled
            .values()
            .filter(|o| rule_configured(&config, o))
            .map(|o| o.provider_ref.clone())
            .collect();
        let write_started = Instant::now();
        let (offers, changes, resolved) = write_customers(&db, pulled, known, configured).await?;
        for (pref, id) in resolved {
            if let Some(o) = as_pulled.remove(&pref) {
                written_offers.insert(pref, (o, id));
            }
        }
        let took = write_started.elapsed();
        writes = (writes.0 + 1, writes.1 + took, writes.2.max(took));
        summary.offers_changed += offers;
        summary.changes += changes;
        if last_report.elapsed() >= PROGRESS_EVERY {
            last_report = Instant::now();
            let rate = summary.seen as f64 / started.elapsed().as_secs_f64().max(0.001);
            // How long each batch took to write (waiting for the lock included): what a
            // lane's write may wait behind the pull.
            let mean = writes.1.as_secs_f64() * 1000.0 / f64::from(writes.0.max(1));
            let max = writes.2.as_secs_f64() * 1000.0;
            log::info!(provider = convercus::NAME; "pull in progress: {summary} ({rate:.0} customers/s; batch writes of {CUSTOMER_BATCH} customers {mean:.1} ms on average, {max:.1} ms at most)");
            writes = (0, std::time::Duration::ZERO, std::time::Duration::ZERO);
        }
    }
    Ok(summary)
}

/// Writes a batch of pulled customers in one short transaction: offers (only when changed),
/// profiles, and each customer's coupon states diffed against local rows.
/// What a batch write did: offers changed, coupon rows, and the local ids of the offers it
/// looked up (provider ref, id).
type Written = (usize, Changes, Vec<(String, String)>);

/// `known`: offers (by provider ref) this pull already wrote exactly so, with their local
/// ids; the others are looked up and written when changed, and returned with their ids.
async fn write_customers(
    db: &Db,
    pulled: Vec<CustomerPull>,
    known: HashMap<String, String>,
    configured: HashSet<String>,
) -> Result<Written, PullError> {
    if pulled.is_empty() {
        return Ok((0, Changes::default(), Vec::new()));
    }
    db.writer
        .write(move |conn| -> rusqlite::Result<Written> {
            let now = shared::db::now_secs();
            let mut offers: BTreeMap<String, Offer> = BTreeMap::new();
            for p in &pulled {
                for (o, _) in &p.coupons {
                    offers
                        .entry(o.provider_ref.clone())
                        .or_insert_with(|| o.clone());
                }
            }
            // Keep ids an import or an earlier pull gave these offers.
            let mut ids: BTreeMap<String, String> = BTreeMap::new();
            let mut resolved = Vec::new();
            let mut changed = 0;
            for (pref, mut offer) in offers {
                if let Some(id) = known.get(&pref) {
                    ids.insert(offer_key(&offer.provider, &pref), id.clone());
                    continue;
                }
                if let Some(id) = sync::offer_id_for_ref(conn, &offer.provider, &pref)? {
                    offer.id = id;
                }
                if sync::apply_offer(conn, &offer, configured.contains(&pref), now)? {
                    changed += 1;
                }
                resolved.push((pref.clone(), offer.id.clone()));
                ids.insert(offer_key(&offer.provider, &pref), offer.id);
            }
            let mut changes = Changes::default();
            for p in pulled {
                let mut c = p.customer;
                if let Some(old) = repo::customer(conn, &c.id)? {
                    c.points_balance = old.points_balance;
                    c.loyalty_id = c.loyalty_id.or_else(|| old.loyalty_id.clone());
                    if old != c {
                        repo::upsert_customer(conn, &c, repo::Points::Keep, now)?;
                    }
                } else {
                    repo::upsert_customer(conn, &c, repo::Points::Keep, now)?;
                }
                let coupons: Vec<PulledCoupon> = p
                    .coupons
                    .into_iter()
                    .map(|(o, mut pc)| {
                        if let Some(id) = ids.get(&offer_key(&o.provider, &o.provider_ref)) {
                            pc.offer_id = id.clone();
                        }
                        pc
                    })
                    .collect();
                let provider = c.provider.as_deref().unwrap_or_default();
                changes += sync::apply_customer_coupons(conn, &c.id, provider, &coupons, now)?;
            }
            Ok((changed, changes, resolved))
        })
        .await
        .map_err(db_err)
}

/// Writes one customer looked up at a lane's request (edge-server's Convercus
/// read-through) the way a pull writes it: offers when changed (images pointed at this
/// store's copies), the profile, and the coupon states diffed against local rows, never
/// over a local change not yet delivered.
pub async fn write_customer(
    db: &Db,
    config: &Config,
    mut pulled: CustomerPull,
) -> Result<Changes, PullError> {
    let mut images = images_for(config);
    for (o, _) in &mut pulled.coupons {
        localise(&mut images, o).await;
    }
    let configured = pulled
        .coupons
        .iter()
        .filter(|(o, _)| rule_configured(config, o))
        .map(|(o, _)| o.provider_ref.clone())
        .collect();
    let (_, changes, _) = write_customers(db, vec![pulled], HashMap::new(), configured).await?;
    Ok(changes)
}

/// Whether regional IT configured a rule for this pulled offer (Convercus by
/// `externalReference` or `couponId`, Koupon by `offerId`; both kept on the offer).
fn rule_configured(config: &Config, o: &Offer) -> bool {
    config.offer_rule(&o.provider, &o.external_id).is_some()
        || config.offer_rule(&o.provider, &o.provider_ref).is_some()
}

fn offer_key(provider: &str, provider_ref: &str) -> String {
    format!("{provider}\u{1f}{provider_ref}")
}

/// Claimed sessions of the configured campaigns, page by page, as vouchers.
async fn pull_coupontools(
    client: &std::sync::Arc<coupontools::Client>,
    config: &Config,
    db: &Db,
) -> Result<Summary, PullError> {
    let started = shared::db::now_secs();
    let since = client.pull_since(started);
    let titles: BTreeMap<String, String> = retried(coupontools::NAME, "the campaign list", || {
        client.campaigns()
    })
    .await?
    .into_iter()
    .collect();
    let page_size = client.config().page_size;
    let kept_from = config.vouchers_kept_from();
    let mut summary = Summary::default();
    // A full pull reads every claimed session. An incremental one reads those claimed since,
    // and those validated since (a session claimed long ago and used elsewhere today).
    match since {
        Some(t) => {
            log::info!(provider = coupontools::NAME; "session pull: incremental, claims and validations since {} UTC", coupontools::start_date(t))
        }
        None => log::info!(provider = coupontools::NAME; "session pull: full"),
    }
    let lists: &[&str] = if since.is_some() {
        &["campaign/claims", "campaign/validations"]
    } else {
        &["campaign/claims"]
    };
    let mut work: Vec<(String, &str)> = Vec::new();
    for c in &client.config().campaigns {
        for l in lists {
            work.push((c.clone(), l));
        }
    }
    for (campaign, list) in &work {
        let (campaign, list) = (campaign, *list);
        let title = titles.get(campaign).cloned().unwrap_or_default();
        let mut page = 1;
        // The first record of the last page: a server that ignores or clamps `page` sends
        // the same page again, and the pull would never end (the stop rule is an [ASSUME],
        // coupontools.md §3.3).
        let mut last_first: Option<String> = None;
        loop {
            let read = || client.sessions_page(list, campaign, page, since);
            let records = match retried(coupontools::NAME, "a page of sessions", read).await {
                Ok(r) => r,
                // A campaign Coupontools does not know: say so, go on with the others.
                Err(CallError::Status { code, detail, .. }) if code == "502" => {
                    log::warn!(provider = coupontools::NAME, campaign = campaign.as_str(); "campaign {campaign} is unknown to Coupontools ({detail}); check providers.coupontools.campaigns");
                    break;
                }
                Err(e) => return Err(e.into()),
            };
            let n = records.len();
            let first = records.first().map(serde_json::Value::to_string);
            if first.is_some() && first == last_first {
                return Err(CallError::Malformed(format!(
                    "{list} of campaign {campaign}: page {page} is page {} again (Coupontools ignored the page number); the pull stopped there, check providers.coupontools.page_size and base_url",
                    page - 1
                ))
                .into());
            }
            last_first = first;
            summary.seen += n;
            // A full pull lists every session ever claimed: those that ended before the
            // store's voucher retention are not stored again after it deleted them.
            let vouchers: Vec<_> = records
                .iter()
                .filter_map(|r| coupontools::voucher_of(r, &title, config))
                .filter(|v| !v.ended_before(&kept_from))
                .collect();
            for chunk in vouchers.chunks(VOUCHER_BATCH) {
                let chunk = chunk.to_vec();
                let len = chunk.len();
                let written = db
                    .writer
                    .write(move |conn| -> rusqlite::Result<usize> {
                        let now = shared::db::now_secs();
                        let mut written = 0;
                        for v in &chunk {
                            if sync::apply_voucher(conn, v, now)? {
                                written += 1;
                            }
                        }
                        Ok(written)
                    })
                    .await
                    .map_err(db_err)?;
                summary.changes.written += written;
                summary.changes.unchanged += len - written;
            }
            if n < page_size {
                break;
            }
            page += 1;
            log::info!(provider = coupontools::NAME, campaign = campaign.as_str(); "pull in progress: page {page} of {list}");
        }
    }
    client.pull_done(started, since.is_none());
    Ok(summary)
}

/// The client's offer list as catalog offers.
async fn pull_koupon(
    client: &std::sync::Arc<koupon::Client>,
    config: &Config,
    db: &Db,
) -> Result<Summary, PullError> {
    let raw = retried(koupon::NAME, "the offer list", || client.offers()).await?;
    let mut offers: Vec<(Offer, bool)> = raw
        .iter()
        .filter_map(|o| koupon::offer_of(o, config))
        .map(|o| {
            let configured = rule_configured(config, &o);
            (o, configured)
        })
        .collect();
    let mut images = images_for(config);
    for (o, _) in &mut offers {
        localise(&mut images, o).await;
    }
    let seen = raw.len();
    let changed = db
        .writer
        .write(move |conn| -> rusqlite::Result<usize> {
            let now = shared::db::now_secs();
            let mut changed = 0;
            for (mut o, configured) in offers {
                if let Some(id) = sync::offer_id_for_ref(conn, &o.provider, &o.provider_ref)? {
                    o.id = id;
                }
                if sync::apply_offer(conn, &o, configured, now)? {
                    changed += 1;
                }
            }
            Ok(changed)
        })
        .await
        .map_err(db_err)?;
    Ok(Summary {
        seen,
        offers_changed: changed,
        changes: Changes::default(),
    })
}

/// The image cache of one pull, unless the lanes use provider images directly
/// (`lanes.use_external_images`).
fn images_for(config: &Config) -> Option<Images> {
    (!config.lanes.use_external_images).then(|| Images::new(&config.server.image_dir, 10_000))
}

/// Points a pulled offer's image at the copy this store serves (see [`crate::images`]).
async fn localise(images: &mut Option<Images>, offer: &mut Offer) {
    if let (Some(images), Some(url)) = (images.as_mut(), offer.image_url.clone()) {
        offer.image_url = images.local(&url).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_pull_read_is_retried_after_a_429_or_5xx_and_not_after_a_refusal() {
        let status = |status| CallError::Status {
            status,
            code: String::new(),
            detail: String::new(),
        };
        let calls = std::sync::atomic::AtomicU32::new(0);
        let r = retried("test", "read", || {
            let n = calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async move {
                match n {
                    0 => Err(status(429)),
                    1 => Err(status(503)),
                    _ => Ok(n),
                }
            }
        })
        .await;
        assert_eq!(r.ok(), Some(2));
        calls.store(0, std::sync::atomic::Ordering::SeqCst);
        let r: Result<(), _> = retried("test", "read", || {
            calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async { Err(status(404)) }
        })
        .await;
        assert!(r.is_err());
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[test]
    fn short_ids_are_stable_short_and_distinct() {
        let a = short_id("CV", "c0c0c0c0-0000-4000-8000-000000000001");
        let b = short_id("CV", "c0c0c0c0-0000-4000-8000-000000000002");
        assert_eq!(a, short_id("CV", "c0c0c0c0-0000-4000-8000-000000000001"));
        assert_ne!(a, b);
        assert_eq!(a.len(), 14);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
    }
}
