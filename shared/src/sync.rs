//! What the sync daemon writes besides the outbox: each provider's sync state, the rows a
//! pull brings in (diffed against local state, never overwriting what is newer here), and
//! the store status that `edge-ctl`, `/readyz` and the health page read.

use crate::domain::{CouponState, Offer};
use crate::repo;
use rusqlite::{params, Connection, OptionalExtension, Result};
use serde::Serialize;
use std::collections::BTreeMap;

// ---------------------------------------------------------------- sync state

fn ensure_row(conn: &Connection, provider: &str) -> Result<()> {
    conn.prepare_cached("INSERT OR IGNORE INTO sync_state (provider) VALUES (?1)")?
        .execute([provider])?;
    Ok(())
}

/// A pull (or probe) of `provider` starts.
pub fn record_attempt(conn: &Connection, provider: &str, now: i64) -> Result<()> {
    ensure_row(conn, provider)?;
    conn.prepare_cached("UPDATE sync_state SET last_attempt_at = ?2 WHERE provider = ?1")?
        .execute(params![provider, now])?;
    Ok(())
}

/// A pull of `provider` finished; `result` says what it changed.
pub fn record_success(conn: &Connection, provider: &str, now: i64, result: &str) -> Result<()> {
    ensure_row(conn, provider)?;
    conn.prepare_cached(
        "UPDATE sync_state SET last_success_at = ?2, last_result = ?3 WHERE provider = ?1",
    )?
    .execute(params![provider, now, result])?;
    Ok(())
}

/// A pull or delivery of `provider` failed (kept until the next error; the last success
/// stays as it was).
pub fn record_error(conn: &Connection, provider: &str, now: i64, error: &str) -> Result<()> {
    ensure_row(conn, provider)?;
    conn.prepare_cached(
        "UPDATE sync_state SET last_error = ?2, last_error_at = ?3 WHERE provider = ?1",
    )?
    .execute(params![provider, error, now])?;
    Ok(())
}

/// `edge-ctl sync now PROVIDER`: the daemon pulls `provider` at its next look (about a
/// second), whatever its schedule.
pub fn request_sync(conn: &Connection, provider: &str, now: i64) -> Result<()> {
    ensure_row(conn, provider)?;
    conn.prepare_cached("UPDATE sync_state SET requested_at = ?2 WHERE provider = ?1")?
        .execute(params![provider, now])?;
    Ok(())
}

/// Whether any sync request waits (a read, so an idle daemon does not write).
pub fn has_requests(conn: &Connection) -> Result<bool> {
    conn.prepare_cached("SELECT EXISTS (SELECT 1 FROM sync_state WHERE requested_at IS NOT NULL)")?
        .query_row([], |r| r.get(0))
}

/// Providers with a pending sync request; the requests are cleared.
pub fn take_requests(conn: &Connection) -> Result<Vec<String>> {
    let mut st = conn.prepare_cached(
        "UPDATE sync_state SET requested_at = NULL WHERE requested_at IS NOT NULL RETURNING provider",
    )?;
    let rows = st.query_map([], |r| r.get(0))?;
    rows.collect()
}

// ---------------------------------------------------------------- status

/// One provider's health as store IT sees it.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct ProviderStatus {
    pub provider: String,
    pub last_success_at: Option<i64>,
    pub last_attempt_at: Option<i64>,
    pub last_result: Option<String>,
    pub last_error: Option<String>,
    pub last_error_at: Option<i64>,
    pub sync_requested_at: Option<i64>,
    /// Outbox items by state (`pending`, `inflight`, `delivered`, `dead`, `discarded`).
    pub queue: BTreeMap<String, i64>,
    /// Age in seconds of the oldest item not yet delivered (pending or in flight).
    pub oldest_pending_age_secs: Option<i64>,
    /// `last_error` while it is news: no later successful pull ([`ProviderStatus::error_now`]).
    /// What store IT is shown as the provider's error; `last_error` stays for the record.
    pub current_error: Option<String>,
}

impl ProviderStatus {
    /// The last error, unless a pull succeeded after it (an error of the same second counts:
    /// it may have come after the success).
    pub fn error_now(&self) -> Option<&str> {
        match (self.last_error_at, self.last_success_at) {
            (Some(e), Some(s)) if e < s => None,
            _ => self.last_error.as_deref(),
        }
    }
}

/// Each provider's sync state alone (no outbox figures): cheap enough for `/readyz`.
pub fn sync_states(conn: &Connection) -> Result<Vec<ProviderStatus>> {
    let mut st = conn.prepare_cached(
        "SELECT provider, last_success_at, last_attempt_at, last_result, last_error, last_error_at, requested_at \
         FROM sync_state ORDER BY provider",
    )?;
    let rows = st.query_map([], |r| {
        Ok(ProviderStatus {
            provider: r.get(0)?,
            last_success_at: r.get(1)?,
            last_attempt_at: r.get(2)?,
            last_result: r.get(3)?,
            last_error: r.get(4)?,
            last_error_at: r.get(5)?,
            sync_requested_at: r.get(6)?,
            ..ProviderStatus::default()
        })
    })?;
    rows.map(|r| {
        r.map(|mut p| {
            p.current_error = p.error_now().map(str::to_owned);
            p
        })
    })
    .collect()
}

/// What `/readyz` shows per provider: the providers in `providers` (the enabled ones, also
/// before their first sync) and any other with sync state or items waiting, each with its
/// sync state and only the items not delivered (pending, in flight, dead: an index range,
/// not a count of the whole outbox).
pub fn readiness(conn: &Connection, providers: &[&str], now: i64) -> Result<Vec<ProviderStatus>> {
    with_queues(
        conn,
        providers,
        now,
        "SELECT provider, state, count(*), min(CASE WHEN state IN ('pending', 'inflight') THEN created_at END) \
         FROM outbox WHERE state = 'pending' OR state = 'inflight' OR state = 'dead' GROUP BY provider, state",
    )
}

/// The sync state of every provider in `providers`, with sync state, or with outbox items,
/// by name, and the outbox counts `counts` reads: rows of (provider, state, count, oldest
/// `created_at` of the items not yet delivered, or NULL).
fn with_queues(
    conn: &Connection,
    providers: &[&str],
    now: i64,
    counts: &'static str,
) -> Result<Vec<ProviderStatus>> {
    let mut out: BTreeMap<String, ProviderStatus> = BTreeMap::new();
    let blank = |p: &str| ProviderStatus {
        provider: p.to_owned(),
        ..ProviderStatus::default()
    };
    for p in providers {
        out.insert((*p).to_owned(), blank(p));
    }
    for row in sync_states(conn)? {
        out.insert(row.provider.clone(), row);
    }
    let mut st = conn.prepare_cached(counts)?;
    let rows = st.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, i64>(2)?,
            r.get::<_, Option<i64>>(3)?,
        ))
    })?;
    for row in rows {
        let (provider, state, count, oldest) = row?;
        let s = out
            .entry(provider.clone())
            .or_insert_with(|| blank(&provider));
        if let Some(created) = oldest {
            let age = (now - created).max(0);
            s.oldest_pending_age_secs = Some(s.oldest_pending_age_secs.map_or(age, |a| a.max(age)));
        }
        s.queue.insert(state, count);
    }
    Ok(out.into_values().collect())
}

/// An age for store IT: `42 s ago`, `5 min ago`, `3 h ago`.
pub fn ago(secs: i64) -> String {
    let s = secs.max(0);
    if s < 120 {
        format!("{s} s ago")
    } else if s < 7200 {
        format!("{} min ago", s / 60)
    } else {
        format!("{} h ago", s / 3600)
    }
}

// ---------------------------------------------------------------- sync daemon liveness

/// How often the running sync daemon notes in the database that it is alive.
pub const HEARTBEAT_SECS: i64 = 10;
/// Without a heartbeat for this long (three missed), the daemon is taken as not running.
pub const HEARTBEAT_STALE_SECS: i64 = 3 * HEARTBEAT_SECS;

/// The running sync daemon is alive (every [`HEARTBEAT_SECS`], and at its start): one small
/// row of `meta`, in its own short transaction.
pub fn record_heartbeat(conn: &Connection, now: i64) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO meta (key, value) VALUES ('sync_daemon_seen_at', ?1) \
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )?
    .execute([now])?;
    conn.prepare_cached("DELETE FROM meta WHERE key = 'sync_daemon_stopped_at'")?
        .execute([])?;
    Ok(())
}

/// The sync daemon stopped in order (SIGTERM/SIGINT).
pub fn record_daemon_stopped(conn: &Connection, now: i64) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO meta (key, value) VALUES ('sync_daemon_stopped_at', ?1) \
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )?
    .execute([now])?;
    Ok(())
}

/// Whether the sync daemon runs, from its heartbeat.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DaemonStatus {
    /// A heartbeat came within [`HEARTBEAT_STALE_SECS`] and no stop since.
    pub running: bool,
    /// Unix time of its last heartbeat (null: never ran on this database).
    pub last_seen_at: Option<i64>,
    pub last_seen_age_secs: Option<i64>,
    /// When it last stopped in order, if that was after its last heartbeat.
    pub stopped_at: Option<i64>,
}

impl DaemonStatus {
    /// One line for store IT.
    pub fn describe(&self) -> String {
        match (self.running, self.last_seen_age_secs, self.stopped_at) {
            (true, Some(a), _) => format!("running (last seen {})", ago(a)),
            (_, None, _) => "NOT RUNNING: never seen on this database (is sync-daemon installed and started? systemctl status sync-daemon)".to_owned(),
            (_, Some(a), Some(_)) => format!("NOT RUNNING: stopped {} (systemctl start sync-daemon)", ago(a)),
            (_, Some(a), None) => format!("NOT RUNNING? last seen {} (no heartbeat for more than {HEARTBEAT_STALE_SECS} s; systemctl status sync-daemon, journalctl -u sync-daemon)", ago(a)),
        }
    }
}

/// The sync daemon's liveness at `now`.
pub fn daemon_status(conn: &Connection, now: i64) -> Result<DaemonStatus> {
    let get = |key: &str| -> Result<Option<i64>> {
        conn.prepare_cached("SELECT value FROM meta WHERE key = ?1")?
            .query_row([key], |r| r.get(0))
            .optional()
    };
    let seen = get("sync_daemon_seen_at")?;
    let stopped = get("sync_daemon_stopped_at")?.filter(|t| seen.is_none_or(|s| *t >= s));
    let age = seen.map(|s| (now - s).max(0));
    Ok(DaemonStatus {
        running: stopped.is_none() && age.is_some_and(|a| a <= HEARTBEAT_STALE_SECS),
        last_seen_at: seen,
        last_seen_age_secs: age,
        stopped_at: stopped,
    })
}

/// Status of every provider that is listed in `providers`, has sync state, or has outbox
/// items, by name, with its items counted by state.
pub fn status(conn: &Connection, providers: &[&str], now: i64) -> Result<Vec<ProviderStatus>> {
    with_queues(
        conn,
        providers,
        now,
        "SELECT provider, state, count(*), min(CASE WHEN state IN ('pending', 'inflight') THEN created_at END) \
         FROM outbox GROUP BY provider, state",
    )
}

// ---------------------------------------------------------------- pulls

/// The local id of the offer a provider knows as `provider_ref`, if it was pulled or
/// imported before (so an imported id like `CVX1` keeps being used).
pub fn offer_id_for_ref(
    conn: &Connection,
    provider: &str,
    provider_ref: &str,
) -> Result<Option<String>> {
    conn.prepare_cached("SELECT id FROM offers WHERE provider = ?1 AND provider_ref = ?2")?
        .query_row([provider, provider_ref], |r| r.get(0))
        .optional()
}

/// Writes a pulled offer when it differs from the stored one. Returns whether it changed.
///
/// `rule_configured`: regional IT configured a rule for it (`[[offer_rules]]`). When not,
/// and the store already has the offer (imported with its rule), the store's rule, texts,
/// limits and enabled flag stay and only the provider's validity dates and image are
/// taken: a provider default never replaces a rule someone wrote.
pub fn apply_offer(
    conn: &Connection,
    offer: &Offer,
    rule_configured: bool,
    now: i64,
) -> Result<bool> {
    let old = repo::offer(conn, &offer.id)?;
    let new = match (&old, rule_configured) {
        (Some(old), false) => Offer {
            start_date: offer.start_date,
            end_date: offer.end_date,
            image_url: offer.image_url.clone().or_else(|| old.image_url.clone()),
            ..old.clone()
        },
        _ => offer.clone(),
    };
    if old.as_ref() == Some(&new) {
        return Ok(false);
    }
    repo::upsert_offer(conn, &new, now)?;
    Ok(true)
}

/// A customer's coupon as the provider reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PulledCoupon {
    pub offer_id: String,
    pub state: CouponState,
    /// The provider's id of this customer's copy (Convercus accountCouponId).
    pub provider_ref: Option<String>,
    /// Redemptions upstream has recorded for this customer.
    pub upstream_redemptions: Option<i64>,
}

/// What a pull changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Changes {
    pub written: usize,
    pub unchanged: usize,
    /// Rows left alone because a local change is not yet acknowledged upstream.
    pub kept_local: usize,
}

impl std::ops::AddAssign for Changes {
    fn add_assign(&mut self, o: Changes) {
        self.written += o.written;
        self.unchanged += o.unchanged;
        self.kept_local += o.kept_local;
    }
}

/// Brings one customer's coupons of `provider` in line with a full pull: rows that differ
/// are written. Of the rows upstream no longer lists, a clipped coupon can no longer be
/// used and becomes `expired` (CATAPULT §6: "clipped but expired unused"); an `available`
/// one is no longer offered to the customer and is removed (it was never clipped, so it
/// is not shown as expired); `redeemed` and `expired` stay as they are. A row with
/// a local change not yet acknowledged upstream (`local_dirty`) is never touched
/// (promise 5).
pub fn apply_customer_coupons(
    conn: &Connection,
    customer_id: &str,
    provider: &str,
    pulled: &[PulledCoupon],
    now: i64,
) -> Result<Changes> {
    let mut local: BTreeMap<String, (String, Option<String>, Option<i64>, bool)> = BTreeMap::new();
    {
        let mut st = conn.prepare_cached(
            "SELECT c.offer_id, c.state, c.provider_ref, c.upstream_redemptions, c.local_dirty \
             FROM customer_coupons c JOIN offers o ON o.id = c.offer_id \
             WHERE c.customer_id = ?1 AND o.provider = ?2",
        )?;
        let rows = st.query_map([customer_id, provider], |r| {
            Ok((
                r.get::<_, String>(0)?,
                (r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?),
            ))
        })?;
        for row in rows {
            let (k, v) = row?;
            local.insert(k, v);
        }
    }
    let mut changes = Changes::default();
    let mut write = conn.prepare_cached(
        "INSERT INTO customer_coupons (customer_id, offer_id, state, state_at, provider_ref, upstream_redemptions) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
         ON CONFLICT (customer_id, offer_id) DO UPDATE SET \
           state = CASE WHEN local_dirty = 1 THEN state ELSE excluded.state END, \
           state_at = CASE WHEN local_dirty = 1 OR state = excluded.state THEN state_at ELSE excluded.state_at END, \
           provider_ref = excluded.provider_ref, upstream_redemptions = excluded.upstream_redemptions",
    )?;
    for p in pulled {
        match local.remove(&p.offer_id) {
            Some((state, pref, ups, _))
                if state == p.state.as_str()
                    && pref == p.provider_ref
                    && ups == p.upstream_redemptions =>
            {
                changes.unchanged += 1;
            }
            Some((state, _, _, true)) if state != p.state.as_str() => {
                // Keep the local state; still learn the provider's ids and counts.
                write.execute(params![
                    customer_id,
                    p.offer_id,
                    p.state.as_str(),
                    now,
                    p.provider_ref,
                    p.upstream_redemptions
                ])?;
                changes.kept_local += 1;
            }
            _ => {
                write.execute(params![
                    customer_id,
                    p.offer_id,
                    p.state.as_str(),
                    now,
                    p.provider_ref,
                    p.upstream_redemptions
                ])?;
                changes.written += 1;
            }
        }
    }
    // Upstream no longer lists these (the conditions are checked again in SQL, in case a
    // lane changed the row since it was read).
    let mut expire = conn.prepare_cached(
        "UPDATE customer_coupons SET state = 'expired', state_at = ?3 \
         WHERE customer_id = ?1 AND offer_id = ?2 AND local_dirty = 0 AND state = 'clipped'",
    )?;
    let mut withdraw = conn.prepare_cached(
        "DELETE FROM customer_coupons \
         WHERE customer_id = ?1 AND offer_id = ?2 AND local_dirty = 0 AND state = 'available'",
    )?;
    for (offer_id, (state, _, _, dirty)) in local {
        if dirty {
            changes.kept_local += 1;
        } else if state == "clipped" {
            changes.written += expire.execute(params![customer_id, offer_id, now])?;
        } else if state == "available" {
            changes.written += withdraw.execute(params![customer_id, offer_id])?;
        }
    }
    Ok(changes)
}

/// Customers the store knows (every one seen at a lane or imported), in id order, after
/// `after`, at most `limit`: the pull walks them in pages.
pub fn customer_ids(conn: &Connection, after: &str, limit: i64) -> Result<Vec<String>> {
    let mut st =
        conn.prepare_cached("SELECT id FROM customers WHERE id > ?1 ORDER BY id LIMIT ?2")?;
    let rows = st.query_map(params![after, limit], |r| r.get(0))?;
    rows.collect()
}

/// Writes a pulled voucher when the provider's view of it changed. A voucher with a local
/// change not yet acknowledged upstream keeps its local state ([`repo::upsert_voucher`]).
/// Returns whether anything was written.
pub fn apply_voucher(conn: &Connection, v: &repo::Voucher, now: i64) -> Result<bool> {
    if let Some(old) = repo::voucher(conn, &v.code)? {
        let same = old.provider == v.provider
            && old.provider_ref == v.provider_ref
            && old.description == v.description
            && old.value == v.value
            && old.min_spend == v.min_spend
            && old.valid_from == v.valid_from
            && old.valid_until == v.valid_until
            && old.alias == v.alias
            // A lane's own lock is not yet (or never) seen upstream: not a change. A lock
            // another system held upstream (no local owner) that is gone is one.
            && (old.state == v.state
                || old.state == "locked" && old.lock_site.is_some() && v.state == "active"
                // Validated by a lane here: stays so whatever a page says (`upsert_voucher`).
                || old.state == "validated" && old.validated_site.is_some())
            && (v.validated_at.is_none() || old.validated_at.is_some());
        if same {
            return Ok(false);
        }
    }
    repo::upsert_voucher(conn, v, now)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn a_pull_lifts_a_lock_held_upstream_but_not_a_lane_s_own_lock() {
        let (_dir, c) = crate::db::scratch_db();
        let pulled = |code: &str, state: &str| repo::Voucher {
            code: code.into(),
            provider: "coupontools".into(),
            provider_ref: code.into(),
            description: String::new(),
            value: crate::money::Cents(100),
            min_spend: crate::money::Cents(0),
            valid_from: None,
            valid_until: None,
            state: state.into(),
            ..repo::Voucher::default()
        };
        // Locked at the provider by another system, then released there.
        assert!(apply_voucher(&c, &pulled("up1", "locked"), 10).unwrap());
        assert!(apply_voucher(&c, &pulled("up1", "active"), 20).unwrap());
        assert_eq!(repo::voucher(&c, "up1").unwrap().unwrap().state, "active");
        // Locked by a lane here; the provider has not seen the lock yet.
        assert!(apply_voucher(&c, &pulled("own1", "active"), 10).unwrap());
        repo::lock_voucher(&c, "own1", "S", "T1", 1000, 30).unwrap();
        assert!(!apply_voucher(&c, &pulled("own1", "active"), 40).unwrap());
        assert_eq!(repo::voucher(&c, "own1").unwrap().unwrap().state, "locked");
    }

    /// A pull reads a page, a lane validates a voucher on it, the validation is delivered
    /// and acknowledged (the row is no longer `local_dirty`), and only then does the pull
    /// write its page, which still says "active". Before, the voucher was usable again.
    #[test]
    fn a_page_read_before_a_delivered_validation_does_not_undo_it() {
        let (_dir, c) = crate::db::scratch_db();
        let pulled = |state: &str| repo::Voucher {
            code: "sess-9".into(),
            provider: "coupontools".into(),
            provider_ref: "sess-9".into(),
            value: crate::money::Cents(500),
            state: state.into(),
            ..repo::Voucher::default()
        };
        assert!(apply_voucher(&c, &pulled("active"), 10).unwrap());
        repo::validate_voucher(
            &c,
            "sess-9",
            "S",
            "T1",
            "2026-12-01T10:00:00Z",
            crate::money::Cents(2000),
            20,
        )
        .unwrap();
        c.execute(
            "UPDATE vouchers SET local_dirty = 0 WHERE code = 'sess-9'",
            [],
        )
        .unwrap();
        assert!(!apply_voucher(&c, &pulled("active"), 30).unwrap());
        let v = repo::voucher(&c, "sess-9").unwrap().unwrap();
        assert_eq!(v.state, "validated");
        assert_eq!(v.validated_at.as_deref(), Some("2026-12-01T10:00:00Z"));
        // One validated elsewhere and reset upstream (no validation here) follows the provider.
        let mut elsewhere = pulled("validated");
        elsewhere.code = "sess-10".into();
        elsewhere.validated_at = Some("2026-11-30T09:00:00Z".into());
        apply_voucher(&c, &elsewhere, 40).unwrap();
        elsewhere.state = "active".into();
        elsewhere.validated_at = None;
        apply_voucher(&c, &elsewhere, 50).unwrap();
        assert_eq!(
            repo::voucher(&c, "sess-10").unwrap().unwrap().state,
            "active"
        );
    }

    #[test]
    fn coupons_a_pull_no_longer_lists_expire_only_when_clipped() {
        use crate::domain::{CouponState as S, Mechanic};
        use crate::engine::tests::{items, offer, rule};
        let (_dir, c) = crate::db::scratch_db();
        let ids = ["CLIP", "AVAIL", "RED", "EXP", "DIRTY", "KEPT"];
        for id in ids {
            let mut o = offer(
                id,
                rule(Mechanic::PercentOff { basis_points: 1000 }, items(&["1"])),
            );
            o.provider = "convercus".into();
            repo::upsert_offer(&c, &o, 1).unwrap();
        }
        repo::ensure_customer(&c, "C1", 1).unwrap();
        let states = [
            ("CLIP", S::Clipped, false),
            ("AVAIL", S::Available, false),
            ("RED", S::Redeemed, false),
            ("EXP", S::Expired, false),
            ("DIRTY", S::Clipped, true),
            ("KEPT", S::Clipped, false),
        ];
        for (id, state, dirty) in states {
            repo::set_coupon_state(&c, "C1", id, state, 5, dirty).unwrap();
        }
        // The provider now lists only KEPT.
        let pulled = [PulledCoupon {
            offer_id: "KEPT".into(),
            state: S::Clipped,
            provider_ref: None,
            upstream_redemptions: None,
        }];
        let changes = apply_customer_coupons(&c, "C1", "convercus", &pulled, 50).unwrap();
        let rows: BTreeMap<String, String> = repo::customer_coupon_rows(&c, "C1")
            .unwrap()
            .into_iter()
            .map(|r| (r.offer_id, r.state.as_str().to_owned()))
            .collect();
        let want: BTreeMap<String, String> = [
            ("CLIP", "expired"),
            ("RED", "redeemed"),
            ("EXP", "expired"),
            ("DIRTY", "clipped"),
            ("KEPT", "clipped"),
        ]
        .into_iter()
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
        .collect();
        // AVAIL is withdrawn, not shown as expired: it was never clipped.
        assert_eq!(rows, want);
        assert_eq!(changes.written, 2, "{changes:?}");
        assert_eq!(changes.kept_local, 1, "{changes:?}");
    }

    #[test]
    fn the_daemon_is_running_while_its_heartbeat_is_fresh_and_not_after_a_stop() {
        let (_dir, c) = crate::db::scratch_db();
        let d = daemon_status(&c, 100).unwrap();
        assert!(!d.running && d.last_seen_at.is_none(), "{d:?}");
        assert!(d.describe().contains("never seen"), "{}", d.describe());
        record_heartbeat(&c, 100).unwrap();
        let d = daemon_status(&c, 100 + HEARTBEAT_STALE_SECS).unwrap();
        assert!(d.running, "{d:?}");
        assert!(d.describe().starts_with("running"), "{}", d.describe());
        // kill -9: no stop noted, the heartbeat goes stale.
        let d = daemon_status(&c, 101 + HEARTBEAT_STALE_SECS).unwrap();
        assert!(!d.running && d.stopped_at.is_none(), "{d:?}");
        assert!(
            d.describe().contains("NOT RUNNING? last seen"),
            "{}",
            d.describe()
        );
        record_daemon_stopped(&c, 105).unwrap();
        let d = daemon_status(&c, 106).unwrap();
        assert_eq!(d.stopped_at, Some(105));
        assert!(!d.running && d.describe().contains("stopped"), "{d:?}");
        // Started again: running.
        record_heartbeat(&c, 110).unwrap();
        let d = daemon_status(&c, 111).unwrap();
        assert!(d.running && d.stopped_at.is_none(), "{d:?}");
    }

    #[test]
    fn an_error_older_than_the_last_success_is_not_current_and_readiness_lists_enabled_ones() {
        let (_dir, c) = crate::db::scratch_db();
        record_error(&c, "convercus", 10, "credentials refused").unwrap();
        let s = sync_states(&c).unwrap();
        assert_eq!(s[0].current_error.as_deref(), Some("credentials refused"));
        record_success(&c, "convercus", 20, "ok").unwrap();
        let s = sync_states(&c).unwrap();
        assert_eq!(s[0].current_error, None);
        assert_eq!(s[0].last_error.as_deref(), Some("credentials refused"));
        record_error(&c, "convercus", 30, "timeout").unwrap();
        assert_eq!(
            sync_states(&c).unwrap()[0].current_error.as_deref(),
            Some("timeout")
        );
        for i in 0..3 {
            let item = crate::outbox::NewItem {
                provider: "koupon",
                operation: "redemption",
                idempotency_key: format!("k{i}"),
                ordering_key: format!("o{i}"),
                payload: serde_json::json!({}),
            };
            crate::outbox::enqueue(&c, &item, 100).unwrap();
        }
        c.execute(
            "UPDATE outbox SET state = 'dead' WHERE idempotency_key = 'k2'",
            [],
        )
        .unwrap();
        let r = readiness(&c, &["coupontools", "koupon"], 130).unwrap();
        let names: Vec<&str> = r.iter().map(|p| p.provider.as_str()).collect();
        assert_eq!(names, ["convercus", "coupontools", "koupon"]);
        assert_eq!(r[1].last_success_at, None);
        assert_eq!(r[2].queue.get("pending"), Some(&2));
        assert_eq!(r[2].queue.get("dead"), Some(&1));
        assert_eq!(r[2].oldest_pending_age_secs, Some(30));
    }

    #[test]
    fn requests_are_taken_once_and_status_counts_the_queue() {
        let (_dir, c) = crate::db::scratch_db();
        request_sync(&c, "koupon", 5).unwrap();
        assert_eq!(take_requests(&c).unwrap(), vec!["koupon".to_owned()]);
        assert!(take_requests(&c).unwrap().is_empty());
        record_success(&c, "koupon", 10, "3 offers").unwrap();
        record_error(&c, "koupon", 11, "timeout").unwrap();
        let item = crate::outbox::NewItem {
            provider: "koupon",
            operation: "redemption",
            idempotency_key: "k1".into(),
            ordering_key: "o1".into(),
            payload: serde_json::json!({}),
        };
        crate::outbox::enqueue(&c, &item, 100).unwrap();
        let s = status(&c, &["convercus", "koupon"], 130).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].provider, "convercus");
        assert!(s[0].queue.is_empty());
        let k = &s[1];
        assert_eq!(k.last_success_at, Some(10));
        assert_eq!(k.last_error.as_deref(), Some("timeout"));
        assert_eq!(k.queue.get("pending"), Some(&1));
        assert_eq!(k.oldest_pending_age_secs, Some(30));
    }
}
