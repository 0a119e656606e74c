//! The outbox: everything the lanes did that a provider must hear about. Rows are written
//! in the same SQLite transaction as the lane's state change, with an idempotency key
//! (a retried lane request never enqueues twice) and an ordering key (items with the same
//! key are delivered strictly in id order). The sync daemon drains it.
//!
//! This module also decides which rows a lane event implies for an offer's provider, so
//! the discount engine and the HTTP layer never see provider names.

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;
use serde_json::{json, Value};

/// The states of an item not yet delivered (or given up on) whose ordering key later items
/// wait behind: the predicate of the partial index `outbox_ordering`, written exactly as
/// there so SQLite uses the index. (Written as comparisons, not `IN (...)`: see migration
/// 0004.) Unqualified `state` names the innermost table of the query it is put in.
macro_rules! undelivered {
    () => {
        "(state = 'pending' OR state = 'inflight' OR state = 'dead')"
    };
}

pub mod provider {
    pub const CONVERCUS: &str = "convercus";
    pub const COUPONTOOLS: &str = "coupontools";
    pub const KOUPON: &str = "koupon";
    /// Offers created locally (by import or config): nothing to deliver.
    pub const LOCAL: &str = "local";
}

/// An outbox row to be written.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NewItem {
    pub provider: &'static str,
    pub operation: &'static str,
    pub idempotency_key: String,
    pub ordering_key: String,
    pub payload: Value,
}

/// Inserts the item unless one with the same idempotency key exists. Returns whether it
/// was inserted.
pub fn enqueue(conn: &Connection, item: &NewItem, now: i64) -> rusqlite::Result<bool> {
    let n = conn
        .prepare_cached(
            "INSERT OR IGNORE INTO outbox (provider, operation, idempotency_key, ordering_key, payload, next_attempt_at, created_at, updated_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6, ?6)",
        )?
        .execute(params![item.provider, item.operation, item.idempotency_key, item.ordering_key, item.payload.to_string(), now])?;
    Ok(n == 1)
}

/// A stored outbox row.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Item {
    pub id: i64,
    pub provider: String,
    pub operation: String,
    pub idempotency_key: String,
    pub ordering_key: String,
    pub payload: Value,
    pub state: String,
    pub attempts: i64,
    pub last_error: Option<String>,
    /// Provider-specific notes written before an attempt (see [`set_progress`]).
    pub progress: Option<Value>,
    pub next_attempt_at: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

const ITEM_COLUMNS: &str = "id, provider, operation, idempotency_key, ordering_key, payload, state, attempts, last_error, \
     progress, next_attempt_at, created_at, updated_at";

fn item_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Item> {
    let payload: String = r.get(5)?;
    Ok(Item {
        id: r.get(0)?,
        provider: r.get(1)?,
        operation: r.get(2)?,
        idempotency_key: r.get(3)?,
        ordering_key: r.get(4)?,
        payload: serde_json::from_str(&payload).unwrap_or(Value::Null),
        state: r.get(6)?,
        attempts: r.get(7)?,
        last_error: r.get(8)?,
        progress: r
            .get::<_, Option<String>>(9)?
            .and_then(|p| serde_json::from_str(&p).ok()),
        next_attempt_at: r.get(10)?,
        created_at: r.get(11)?,
        updated_at: r.get(12)?,
    })
}

/// One row by id.
pub fn get(conn: &Connection, id: i64) -> rusqlite::Result<Option<Item>> {
    conn.prepare_cached(&format!("SELECT {ITEM_COLUMNS} FROM outbox WHERE id = ?1"))?
        .query_row([id], item_from_row)
        .optional()
}

/// Records what the worker knows before (re)sending an item, durably, so a retry after an
/// unknown outcome (lost answer, crash) can check what the provider already applied.
pub fn set_progress(conn: &Connection, id: i64, progress: &Value) -> rusqlite::Result<()> {
    conn.prepare_cached("UPDATE outbox SET progress = ?2 WHERE id = ?1")?
        .execute(params![id, progress.to_string()])?;
    Ok(())
}

/// After an item is delivered: the local rows it was about stop being "newer than
/// upstream" once nothing else about them waits for delivery (promise 5 ends there).
pub fn settle_local(conn: &Connection, item: &Item) -> rusqlite::Result<()> {
    let text = |k: &str| {
        item.payload
            .get(k)
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let offers = offers_of(&item.payload);
    match (text("customer"), text("code")) {
        (Some(customer), _) if !offers.is_empty() => {
            let mut st = conn.prepare_cached(concat!(
                "UPDATE customer_coupons SET local_dirty = 0 WHERE customer_id = ?1 AND offer_id = ?2 AND local_dirty = 1 \
                 AND NOT EXISTS (SELECT 1 FROM outbox WHERE (ordering_key = ?3 OR ordering_key = ?4) AND ",
                undelivered!(),
                ")"
            ))?;
            for offer in offers {
                let coupon_key = format!("coupon:{customer}:{offer}");
                st.execute(params![customer, offer, item.ordering_key, coupon_key])?;
            }
        }
        (_, Some(code)) => {
            conn.prepare_cached(concat!(
                "UPDATE vouchers SET local_dirty = 0 WHERE code = ?1 AND local_dirty = 1 \
                 AND NOT EXISTS (SELECT 1 FROM outbox WHERE ordering_key = ?2 AND ",
                undelivered!(),
                ")"
            ))?
            .execute(params![code, item.ordering_key])?;
        }
        _ => {}
    }
    Ok(())
}

/// Items in a state, newest first, at most `limit` (operators).
pub fn list_recent(
    conn: &Connection,
    state: Option<&str>,
    provider: Option<&str>,
    limit: i64,
) -> rusqlite::Result<Vec<Item>> {
    let mut st = conn.prepare_cached(&format!(
        "SELECT {ITEM_COLUMNS} FROM outbox WHERE (?1 IS NULL OR state = ?1) AND (?2 IS NULL OR provider = ?2) \
         ORDER BY id DESC LIMIT ?3"
    ))?;
    let rows = st.query_map(params![state, provider, limit], item_from_row)?;
    rows.collect()
}

/// Every row, oldest first (operators and tests).
pub fn list(conn: &Connection, state: Option<&str>) -> rusqlite::Result<Vec<Item>> {
    let mut st = conn.prepare_cached(&format!(
        "SELECT {ITEM_COLUMNS} FROM outbox WHERE (?1 IS NULL OR state = ?1) ORDER BY id"
    ))?;
    let rows = st.query_map([state], item_from_row)?;
    rows.collect()
}

// ---------------------------------------------------------------- delivery (sync daemon)

/// Claims the next item that may be delivered now, atomically, with a lease until
/// `lease_until`: the oldest due `pending` item of `provider` (or of any provider) whose
/// ordering key has no older undelivered item (pending, in flight or dead), so items of
/// one coupon, voucher or sale go out strictly in order while other keys go on. A voucher's
/// dead-lettered lock or unlock holds nothing back: the sale's validation still goes out
/// (coupontools.md §6 "Deliver anyway (the sale already happened)"). Its attempt count is
/// raised when it is claimed, so a crash mid-delivery still counts.
pub fn claim_next(
    conn: &Connection,
    provider: Option<&str>,
    now: i64,
    lease_until: i64,
) -> rusqlite::Result<Option<Item>> {
    conn.prepare_cached(&format!(
        "UPDATE outbox SET state = 'inflight', attempts = attempts + 1, lease_until = ?3, updated_at = ?2 \
         WHERE id = (SELECT o.id FROM outbox o \
                      WHERE o.state = 'pending' AND o.next_attempt_at <= ?2 AND (?1 IS NULL OR o.provider = ?1) \
                        AND NOT EXISTS (SELECT 1 FROM outbox e WHERE e.ordering_key = o.ordering_key AND e.id < o.id \
                                          AND {undelivered} \
                                          AND NOT (e.state = 'dead' AND e.operation IN ('lock', 'unlock'))) \
                      ORDER BY o.next_attempt_at, o.id LIMIT 1) \
         RETURNING {ITEM_COLUMNS}",
        undelivered = undelivered!()
    ))?
    .query_row(params![provider, now, lease_until], item_from_row)
    .optional()
}

/// Whether any item of `provider` is due (a read, so an idle worker never takes the write
/// lock the lanes need).
pub fn has_due(conn: &Connection, provider: &str, now: i64) -> rusqlite::Result<bool> {
    conn.prepare_cached(
        "SELECT EXISTS (SELECT 1 FROM outbox WHERE state = 'pending' AND next_attempt_at <= ?2 AND provider = ?1)",
    )?
    .query_row(params![provider, now], |r| r.get(0))
}

/// The provider acknowledged the item.
pub fn mark_delivered(conn: &Connection, id: i64, now: i64) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "UPDATE outbox SET state = 'delivered', lease_until = NULL, last_error = NULL, updated_at = ?2 WHERE id = ?1",
    )?
    .execute(params![id, now])?;
    Ok(())
}

/// A transient failure (network, timeout, 5xx, 429): try again at `next_attempt_at`.
pub fn retry_later(
    conn: &Connection,
    id: i64,
    now: i64,
    next_attempt_at: i64,
    error: &str,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "UPDATE outbox SET state = 'pending', lease_until = NULL, next_attempt_at = ?3, last_error = ?4, updated_at = ?2 \
         WHERE id = ?1",
    )?
    .execute(params![id, now, next_attempt_at, error])?;
    Ok(())
}

/// A permanent rejection: the item waits in the dead-letter state for store IT, with the
/// reason kept. Later items of the same ordering key wait behind it; others go on.
pub fn dead_letter(conn: &Connection, id: i64, now: i64, error: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "UPDATE outbox SET state = 'dead', lease_until = NULL, last_error = ?3, updated_at = ?2 WHERE id = ?1",
    )?
    .execute(params![id, now, error])?;
    Ok(())
}

/// When a provider refuses a redemption for good, the store's own record of it says so:
/// the redemption is flagged as a conflict (as a late commit of a used coupon is), for
/// store IT's reports. Other items leave local state alone.
pub fn flag_refused_redemption(conn: &Connection, item: &Item) -> rusqlite::Result<()> {
    if item.operation != "redeem" && item.operation != "redemption" {
        return Ok(());
    }
    let text = |k: &str| item.payload.get(k).and_then(Value::as_str);
    if let (Some(site), Some(txn)) = (text("site"), text("transaction")) {
        let mut st = conn.prepare_cached(
            "UPDATE redemptions SET conflict = 1 WHERE site = ?1 AND txn_id = ?2 AND offer_id = ?3",
        )?;
        for offer in offers_of(&item.payload) {
            st.execute(params![site, txn, offer])?;
        }
    }
    Ok(())
}

/// A provider applied part of an item and refused the rest for good (a Koupon redemption
/// whose entries came back short): the item is delivered, and the refused part becomes
/// its own dead-lettered item (`payload`, the item's shape with only that part) for store
/// IT, who may retry or discard just that part. Its redemptions are flagged as conflicts.
pub fn deliver_part(
    conn: &Connection,
    item: &Item,
    refused: &Value,
    error: &str,
    now: i64,
) -> rusqlite::Result<()> {
    mark_delivered(conn, item.id, now)?;
    settle_local(conn, item)?;
    conn.prepare_cached(
        "INSERT OR IGNORE INTO outbox (provider, operation, idempotency_key, ordering_key, payload, state, \
           attempts, next_attempt_at, last_error, created_at, updated_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, 'dead', ?6, ?7, ?8, ?7, ?7)",
    )?
    .execute(params![
        item.provider,
        item.operation,
        format!("{}:refused", item.idempotency_key),
        format!("{}:refused", item.ordering_key),
        refused.to_string(),
        item.attempts,
        now,
        error
    ])?;
    let part = Item {
        payload: refused.clone(),
        ..item.clone()
    };
    flag_refused_redemption(conn, &part)
}

/// Extends the leases of items this worker is still delivering, so that a delivery that
/// outlasts `outbox.lease_secs` (a provider's `Retry-After` pause, a slow answer, the
/// several calls of a verified retry) is never taken for a dead worker's and claimed a
/// second time while it runs. Called just before `rescue_expired_leases`, in the same write.
pub fn renew_leases(conn: &Connection, ids: &[i64], lease_until: i64) -> rusqlite::Result<()> {
    let mut st = conn.prepare_cached(
        "UPDATE outbox SET lease_until = ?2 WHERE id = ?1 AND state = 'inflight'",
    )?;
    for id in ids {
        st.execute(params![id, lease_until])?;
    }
    Ok(())
}

/// Returns in-flight items whose lease ran out (their worker died) to `pending`.
pub fn rescue_expired_leases(conn: &Connection, now: i64) -> rusqlite::Result<usize> {
    conn.prepare_cached(
        "UPDATE outbox SET state = 'pending', lease_until = NULL, updated_at = ?1 \
         WHERE state = 'inflight' AND lease_until < ?1",
    )?
    .execute([now])
}

/// Store IT: send a dead-lettered item again. Returns whether there was one.
pub fn retry_dead(conn: &Connection, id: i64, now: i64) -> rusqlite::Result<bool> {
    let n = conn
        .prepare_cached(
            "UPDATE outbox SET state = 'pending', next_attempt_at = ?2, updated_at = ?2 WHERE id = ?1 AND state = 'dead'",
        )?
        .execute(params![id, now])?;
    Ok(n == 1)
}

/// Store IT: give up on a dead-lettered item (kept, marked discarded, no longer blocking).
pub fn discard_dead(conn: &Connection, id: i64, now: i64) -> rusqlite::Result<bool> {
    let n = conn
        .prepare_cached("UPDATE outbox SET state = 'discarded', updated_at = ?2 WHERE id = ?1 AND state = 'dead'")?
        .execute(params![id, now])?;
    Ok(n == 1)
}

/// Deletes delivered items last touched before `before`; returns how many.
pub fn prune_delivered(conn: &Connection, before: i64) -> rusqlite::Result<usize> {
    conn.prepare_cached("DELETE FROM outbox WHERE state = 'delivered' AND updated_at < ?1")?
        .execute([before])
}

/// Seconds to wait before attempt `attempts + 1`: exponential from `base`, capped at
/// `cap`, with up to ±`jitter_percent` % spread drawn from `unit` (a number in [0, 1), so
/// the caller chooses the randomness and tests can pin it).
pub fn backoff_secs(attempts: u32, base: u64, cap: u64, jitter_percent: u64, unit: f64) -> u64 {
    let exp = base
        .saturating_mul(1u64 << attempts.min(30).saturating_sub(1))
        .min(cap);
    let spread = exp * jitter_percent.min(100) / 100;
    // `unit` only picks a point in the spread; the time itself is integer arithmetic.
    let offset = (unit.clamp(0.0, 1.0) * (2 * spread) as f64) as u64;
    (exp - spread + offset).clamp(1, cap.max(1))
}

/// What the rows need to know about the offer, its customer and the sale.
#[derive(Debug, Clone, Copy)]
pub struct CouponEvent<'a> {
    pub provider: &'a str,
    pub provider_ref: &'a str,
    pub offer_id: &'a str,
    pub external_id: &'a str,
    pub customer_id: &'a str,
    pub customer_ref: Option<&'a str>,
}

/// A number that makes an event's idempotency key unique among the stored rows: the id the
/// next row gets (the caller holds the write lock). A clock is not enough: a lane that
/// clips, unclips and clips a coupon again within one second would have queued the last
/// activation under the first one's key, and it was dropped as a duplicate.
pub fn next_event_seq(conn: &Connection) -> rusqlite::Result<i64> {
    conn.prepare_cached("SELECT coalesce(max(id), 0) + 1 FROM outbox")?
        .query_row([], |r| r.get(0))
}

/// Rows implied by clipping (`active = true`) or unclipping a coupon. `seq` (see
/// [`next_event_seq`]) makes each clip/unclip of the same coupon a distinct event.
pub fn for_activation(ev: CouponEvent<'_>, active: bool, seq: i64) -> Vec<NewItem> {
    match ev.provider {
        provider::CONVERCUS => vec![NewItem {
            provider: provider::CONVERCUS,
            operation: if active { "activate" } else { "deactivate" },
            idempotency_key: format!(
                "convercus:activation:{}:{}:{}:{}",
                ev.customer_id, ev.offer_id, active, seq
            ),
            ordering_key: format!("coupon:{}:{}", ev.customer_id, ev.offer_id),
            payload: json!({
                "accountCouponId": ev.provider_ref,
                "customer": ev.customer_id,
                "customerRef": ev.customer_ref,
                "offerId": ev.offer_id,
                "active": active,
            }),
        }],
        _ => Vec::new(),
    }
}

/// Rows implied by redeeming a coupon on a committed sale.
pub fn for_redemption(
    ev: CouponEvent<'_>,
    site: &str,
    txn: &str,
    discount_cents: i64,
    redeemed_at: &str,
) -> Vec<NewItem> {
    let ordering_key = format!("coupon:{}:{}", ev.customer_id, ev.offer_id);
    match ev.provider {
        provider::CONVERCUS => vec![NewItem {
            provider: provider::CONVERCUS,
            operation: "redeem",
            idempotency_key: format!("convercus:redeem:{site}:{txn}:{}", ev.offer_id),
            ordering_key,
            payload: json!({
                "accountCouponId": ev.provider_ref,
                "externalReference": ev.external_id,
                "customer": ev.customer_id,
                "customerRef": ev.customer_ref,
                "offerId": ev.offer_id,
                "site": site,
                "transaction": txn,
                "discountCents": discount_cents,
                "redeemedAt": redeemed_at,
            }),
        }],
        // Koupon takes one redeem call per sale: see [`for_sale`].
        _ => Vec::new(),
    }
}

/// Whether a provider wants the whole sale posted when a sale using its coupons commits.
pub fn wants_sale(provider: &str) -> bool {
    provider == provider::KOUPON
}

/// One Koupon coupon redeemed on a sale.
#[derive(Debug, Clone, PartialEq)]
pub struct SaleCoupon {
    pub offer_id: String,
    /// The offer's Koupon code (`offerId` upstream): `couponCode` on a loyalty account.
    pub coupon_code: String,
    /// The offer barcode (the customer's copy's providerRef, else the offer's).
    pub offer_barcode: String,
    pub discount_cents: i64,
}

/// The Koupon rows of a committed sale that used Koupon coupons: ONE redemption call for
/// all of them (koupon.md §6: one `redeem` per POS transaction, duplicates merged when
/// sent), then the analytics post of the whole sale. The payloads name the customer's
/// loyalty id, each offer's code and barcode: which of them Koupon is sent is the sync
/// daemon's choice (`providers.koupon.redeem_as`). `sale_discount_cents`: every digital
/// discount the sale was given, of all providers (the report's summary).
pub fn for_sale(
    site: &str,
    txn: &str,
    customer_id: &str,
    loyalty_id: Option<&str>,
    coupons: &[SaleCoupon],
    sale_discount_cents: i64,
    basket: &Value,
    committed_at: &str,
) -> Vec<NewItem> {
    if coupons.is_empty() {
        return Vec::new();
    }
    let entries: Vec<Value> = coupons
        .iter()
        .map(|c| {
            json!({"offerId": c.offer_id, "couponCode": c.coupon_code,
                   "offerBarcode": c.offer_barcode, "qty": 1, "discountCents": c.discount_cents})
        })
        .collect();
    vec![
        NewItem {
            provider: provider::KOUPON,
            operation: "redemption",
            idempotency_key: format!("koupon:redemption:{site}:{txn}"),
            ordering_key: format!("koupon-redeem:{site}:{txn}"),
            payload: json!({
                "site": site,
                "transaction": txn,
                "customer": customer_id,
                "loyaltyId": loyalty_id,
                "redemptions": entries,
                "redeemedAt": committed_at,
            }),
        },
        NewItem {
            provider: provider::KOUPON,
            operation: "transaction",
            idempotency_key: format!("koupon:transaction:{site}:{txn}"),
            ordering_key: format!("sale:{site}:{txn}"),
            payload: json!({
                "site": site,
                "transaction": txn,
                "customer": customer_id,
                "loyaltyId": loyalty_id,
                "discounts": entries,
                "saleDiscountCents": sale_discount_cents,
                "basket": basket,
                "committedAt": committed_at,
            }),
        },
    ]
}

/// The offers a redemption item is about: its `offerId`, or every entry's of a sale's
/// Koupon redemption.
fn offers_of(payload: &Value) -> Vec<String> {
    match payload.get("redemptions").and_then(Value::as_array) {
        Some(entries) => entries
            .iter()
            .filter_map(|e| e.get("offerId").and_then(Value::as_str).map(str::to_owned))
            .collect(),
        None => payload
            .get("offerId")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .into_iter()
            .collect(),
    }
}

/// The ordering key of a voucher's operations: its lock, unlock and validation go out in
/// the order they were queued.
pub fn voucher_ordering_key(code: &str) -> String {
    format!("voucher:{code}")
}

/// coupontools.md §6: "drop a pending `unlock` if a `validate` for the same session follows
/// it". Marks the voucher's unlocks not sent yet (pending, or dead-lettered) discarded,
/// saying why, and returns how many; one in flight now is left to finish. The caller
/// queues the validation in the same transaction.
pub fn drop_unsent_unlocks(conn: &Connection, code: &str, now: i64) -> rusqlite::Result<usize> {
    conn.prepare_cached(
        "UPDATE outbox SET state = 'discarded', updated_at = ?3, \
           last_error = 'dropped: a validation of the same voucher follows it (coupontools.md §6)' \
         WHERE ordering_key = ?1 AND provider = ?2 AND operation = 'unlock' AND state IN ('pending', 'dead')",
    )?
    .execute(params![voucher_ordering_key(code), provider::COUPONTOOLS, now])
}

/// Voucher operations (`lock`, `unlock`, `validate`) for the voucher's provider.
pub fn for_voucher(
    provider: &str,
    provider_ref: &str,
    code: &str,
    operation: &'static str,
    site: &str,
    txn: &str,
    money_spent_cents: Option<i64>,
    seq: i64,
) -> Vec<NewItem> {
    let prov: &'static str = match provider {
        provider::COUPONTOOLS => provider::COUPONTOOLS,
        provider::CONVERCUS => provider::CONVERCUS,
        provider::KOUPON => provider::KOUPON,
        _ => return Vec::new(),
    };
    // Koupon and Convercus have no lock: only the final use is delivered.
    if prov != provider::COUPONTOOLS && operation != "validate" {
        return Vec::new();
    }
    vec![NewItem {
        provider: prov,
        operation,
        idempotency_key: format!("{prov}:voucher-{operation}:{code}:{site}:{txn}:{seq}"),
        ordering_key: voucher_ordering_key(code),
        payload: json!({
            "code": code,
            "providerRef": provider_ref,
            "site": site,
            "transaction": txn,
            "moneySpentCents": money_spent_cents,
        }),
    }]
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn the_undelivered_test_finds_items_through_the_ordering_index() {
        let (_dir, conn) = db();
        let plan: Vec<String> = conn
            .prepare(concat!(
                "EXPLAIN QUERY PLAN SELECT 1 FROM outbox WHERE ordering_key = ?1 AND ",
                undelivered!()
            ))
            .unwrap()
            .query_map(["k"], |r| r.get::<_, String>(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(
            plan.iter()
                .any(|p| p.contains("USING INDEX outbox_ordering")),
            "{plan:?}"
        );
    }

    use crate::db::scratch_db as db;

    fn item(key: &str, ordering: &str) -> NewItem {
        NewItem {
            provider: provider::CONVERCUS,
            operation: "redeem",
            idempotency_key: key.to_owned(),
            ordering_key: ordering.to_owned(),
            payload: json!({"k": key}),
        }
    }

    #[test]
    fn enqueue_is_idempotent_by_key() {
        let (_d, c) = db();
        assert!(enqueue(&c, &item("a", "k1"), 0).unwrap());
        assert!(!enqueue(&c, &item("a", "k1"), 0).unwrap());
        assert_eq!(list(&c, None).unwrap().len(), 1);
    }

    #[test]
    fn claims_in_order_per_key_and_in_parallel_across_keys() {
        let (_d, c) = db();
        for (k, o) in [("a1", "A"), ("a2", "A"), ("b1", "B")] {
            enqueue(&c, &item(k, o), 0).unwrap();
        }
        let first = claim_next(&c, None, 10, 70).unwrap().unwrap();
        assert_eq!(first.idempotency_key, "a1");
        assert_eq!(first.attempts, 1);
        // a2 waits behind the in-flight a1; B goes on.
        let second = claim_next(&c, None, 10, 70).unwrap().unwrap();
        assert_eq!(second.idempotency_key, "b1");
        assert!(claim_next(&c, None, 10, 70).unwrap().is_none());
        mark_delivered(&c, first.id, 11).unwrap();
        assert_eq!(
            claim_next(&c, None, 12, 70)
                .unwrap()
                .unwrap()
                .idempotency_key,
            "a2"
        );
    }

    #[test]
    fn a_dead_voucher_lock_does_not_hold_back_the_validation() {
        let (_d, c) = db();
        let op = |operation: &'static str, key: &str| NewItem {
            provider: provider::COUPONTOOLS,
            operation,
            idempotency_key: key.to_owned(),
            ordering_key: voucher_ordering_key("S1"),
            payload: json!({"code": "S1"}),
        };
        enqueue(&c, &op("lock", "l1"), 0).unwrap();
        enqueue(&c, &op("validate", "v1"), 0).unwrap();
        let lock = claim_next(&c, None, 1, 60).unwrap().unwrap();
        assert_eq!(lock.operation, "lock");
        assert!(
            claim_next(&c, None, 2, 60).unwrap().is_none(),
            "in flight, the lock goes first"
        );
        dead_letter(&c, lock.id, 3, "HTTP 422 session already locked").unwrap();
        let next = claim_next(&c, None, 4, 60).unwrap().unwrap();
        assert_eq!(next.operation, "validate");
    }

    #[test]
    fn dead_letters_block_their_key_only_until_retried_or_discarded() {
        let (_d, c) = db();
        for (k, o) in [("a1", "A"), ("a2", "A"), ("b1", "B")] {
            enqueue(&c, &item(k, o), 0).unwrap();
        }
        let a1 = claim_next(&c, Some("convercus"), 1, 60).unwrap().unwrap();
        dead_letter(&c, a1.id, 2, "400 coupon unknown").unwrap();
        assert_eq!(
            claim_next(&c, None, 3, 60)
                .unwrap()
                .unwrap()
                .idempotency_key,
            "b1"
        );
        assert!(
            claim_next(&c, None, 3, 60).unwrap().is_none(),
            "a2 waits behind the dead a1"
        );
        let dead = list(&c, Some("dead")).unwrap();
        assert_eq!(dead[0].last_error.as_deref(), Some("400 coupon unknown"));
        assert!(discard_dead(&c, a1.id, 4).unwrap());
        assert_eq!(
            claim_next(&c, None, 5, 60)
                .unwrap()
                .unwrap()
                .idempotency_key,
            "a2"
        );
        assert!(
            !retry_dead(&c, a1.id, 6).unwrap(),
            "a discarded item is not dead any more"
        );
    }

    #[test]
    fn transient_failures_wait_and_lost_leases_are_rescued() {
        let (_d, c) = db();
        enqueue(&c, &item("a1", "A"), 0).unwrap();
        let a1 = claim_next(&c, None, 0, 30).unwrap().unwrap();
        retry_later(&c, a1.id, 1, 100, "timeout").unwrap();
        assert!(
            claim_next(&c, None, 99, 130).unwrap().is_none(),
            "not due yet"
        );
        let again = claim_next(&c, None, 100, 130).unwrap().unwrap();
        assert_eq!(again.attempts, 2);
        // The worker dies: nothing until the lease runs out, then it is claimable again.
        assert_eq!(rescue_expired_leases(&c, 129).unwrap(), 0);
        assert_eq!(rescue_expired_leases(&c, 131).unwrap(), 1);
        let third = claim_next(&c, None, 131, 160).unwrap().unwrap();
        assert_eq!(third.attempts, 3);
        mark_delivered(&c, third.id, 140).unwrap();
        assert_eq!(prune_delivered(&c, 141).unwrap(), 1);
        assert!(list(&c, None).unwrap().is_empty());
    }

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        assert_eq!(backoff_secs(1, 2, 600, 0, 0.5), 2);
        assert_eq!(backoff_secs(2, 2, 600, 0, 0.5), 4);
        assert_eq!(backoff_secs(5, 2, 600, 0, 0.5), 32);
        assert_eq!(backoff_secs(40, 2, 600, 0, 0.5), 600);
        assert_eq!(backoff_secs(5, 2, 600, 20, 0.0), 26);
        assert_eq!(backoff_secs(5, 2, 600, 20, 0.999_999), 37);
        for a in 0..50 {
            let b = backoff_secs(a, 1, 300, 25, 0.7);
            assert!((1..=300).contains(&b));
        }
    }
}
