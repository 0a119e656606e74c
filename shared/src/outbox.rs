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
}

/// Every row, oldest first (operators and tests).
pub fn list(conn: &Connection, state: Option<&str>) -> rusqlite::Result<Vec<Item>> {
    let mut st = conn.prepare_cached(
        "SELECT id, provider, operation, idempotency_key, ordering_key, payload, state, attempts, last_error \
         FROM outbox WHERE (?1 IS NULL OR state = ?1) ORDER BY id",
    )?;
    let rows = st.query_map([state], |r| {
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
        })
    })?;
    rows.collect()
}

/// Queue depth by (provider, state).
pub fn depth(conn: &Connection) -> rusqlite::Result<Vec<(String, String, i64)>> {
    let mut st = conn.prepare_cached(
        "SELECT provider, state, count(*) FROM outbox GROUP BY provider, state ORDER BY 1, 2",
    )?;
    let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    rows.collect()
}

/// Age in seconds of the oldest undelivered item, if any.
pub fn oldest_pending_age(conn: &Connection, now: i64) -> rusqlite::Result<Option<i64>> {
    conn.prepare_cached(
        "SELECT ?1 - min(created_at) FROM outbox WHERE state IN ('pending', 'inflight')",
    )?
    .query_row([now], |r| r.get(0))
    .optional()
    .map(Option::flatten)
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

/// Rows implied by clipping (`active = true`) or unclipping a coupon. `seq` makes each
/// clip/unclip of the same coupon a distinct event (its state_at timestamp suffices).
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
        provider::KOUPON => vec![NewItem {
            provider: provider::KOUPON,
            operation: "redemption",
            idempotency_key: format!("koupon:redemption:{site}:{txn}:{}", ev.offer_id),
            ordering_key,
            payload: json!({
                "discountAsset": ev.provider_ref,
                "couponCode": null,
                "qty": 1,
                "customer": ev.customer_id,
                "offerId": ev.offer_id,
                "site": site,
                "transaction": txn,
                "discountCents": discount_cents,
                "redeemedAt": redeemed_at,
            }),
        }],
        _ => Vec::new(),
    }
}

/// Whether a provider wants the whole sale posted when a sale using its coupons commits.
pub fn wants_sale(provider: &str) -> bool {
    provider == provider::KOUPON
}

/// The Koupon transaction post for a committed sale that used Koupon discount assets.
pub fn for_sale(
    site: &str,
    txn: &str,
    customer_id: &str,
    koupon_assets: &[(String, i64)],
    basket: &Value,
    committed_at: &str,
) -> Option<NewItem> {
    if koupon_assets.is_empty() {
        return None;
    }
    let assets: Vec<Value> = koupon_assets
        .iter()
        .map(|(asset, cents)| json!({"discountAsset": asset, "discountCents": cents}))
        .collect();
    Some(NewItem {
        provider: provider::KOUPON,
        operation: "transaction",
        idempotency_key: format!("koupon:transaction:{site}:{txn}"),
        ordering_key: format!("sale:{site}:{txn}"),
        payload: json!({
            "site": site,
            "transaction": txn,
            "customer": customer_id,
            "discounts": assets,
            "basket": basket,
            "committedAt": committed_at,
        }),
    })
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
        ordering_key: format!("voucher:{code}"),
        payload: json!({
            "code": code,
            "providerRef": provider_ref,
            "site": site,
            "transaction": txn,
            "moneySpentCents": money_spent_cents,
        }),
    }]
}
