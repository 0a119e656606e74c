//! Repository: every SQL statement of the lane-facing tables, one function per statement,
//! over `&Connection` (inside whatever transaction the caller holds), always with
//! `prepare_cached`. No other module writes SQL for these tables.

use crate::domain::{CouponState, Offer, Rule};
use crate::money::Cents;
use chrono::NaiveDate;
use rusqlite::{params, Connection, OptionalExtension, Row};
use std::collections::HashSet;

pub type Result<T> = std::result::Result<T, rusqlite::Error>;

fn corrupt(col: usize, what: &str, e: impl std::fmt::Display) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        col,
        rusqlite::types::Type::Text,
        format!("{what}: {e}").into(),
    )
}

fn date(row: &Row<'_>, col: usize) -> Result<NaiveDate> {
    let s: String = row.get(col)?;
    NaiveDate::parse_from_str(&s, "%Y-%m-%d").map_err(|e| corrupt(col, "date", e))
}

// ---------------------------------------------------------------- offers

const OFFER_COLUMNS: &str = "id, provider, provider_ref, short_description, requirement_description, \
    long_description, category, brand, start_date, end_date, image_url, targeted, enabled, featured, \
    requires_clip, rule, receipt_alias, reduces_tax, coupon_type, external_id, per_customer_limit, \
    global_limit, loyalty_cost";

fn offer_from_row(row: &Row<'_>) -> Result<Offer> {
    let rule_json: String = row.get(15)?;
    let rule: Rule = serde_json::from_str(&rule_json).map_err(|e| corrupt(15, "offer rule", e))?;
    Ok(Offer {
        id: row.get(0)?,
        provider: row.get(1)?,
        provider_ref: row.get(2)?,
        short_description: row.get(3)?,
        requirement_description: row.get(4)?,
        long_description: row.get(5)?,
        category: row.get(6)?,
        brand: row.get(7)?,
        start_date: date(row, 8)?,
        end_date: date(row, 9)?,
        image_url: row.get(10)?,
        targeted: row.get(11)?,
        enabled: row.get(12)?,
        featured: row.get(13)?,
        requires_clip: row.get(14)?,
        rule,
        receipt_alias: row.get(16)?,
        reduces_tax: row.get(17)?,
        coupon_type: row.get(18)?,
        external_id: row.get(19)?,
        per_customer_limit: row.get(20)?,
        global_limit: row.get(21)?,
        loyalty_cost: row.get(22)?,
    })
}

/// Inserts or replaces an offer by id; keeps its local redemption count.
pub fn upsert_offer(conn: &Connection, o: &Offer, now: i64) -> Result<()> {
    let rule = serde_json::to_string(&o.rule).map_err(|e| corrupt(15, "offer rule", e))?;
    let mut st = conn.prepare_cached(
        "INSERT INTO offers (id, provider, provider_ref, short_description, requirement_description, \
           long_description, category, brand, start_date, end_date, image_url, targeted, enabled, featured, \
           requires_clip, rule, receipt_alias, reduces_tax, coupon_type, external_id, per_customer_limit, \
           global_limit, loyalty_cost, updated_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24) \
         ON CONFLICT (id) DO UPDATE SET provider = excluded.provider, provider_ref = excluded.provider_ref, \
           short_description = excluded.short_description, requirement_description = excluded.requirement_description, \
           long_description = excluded.long_description, category = excluded.category, brand = excluded.brand, \
           start_date = excluded.start_date, end_date = excluded.end_date, image_url = excluded.image_url, \
           targeted = excluded.targeted, enabled = excluded.enabled, featured = excluded.featured, \
           requires_clip = excluded.requires_clip, rule = excluded.rule, receipt_alias = excluded.receipt_alias, \
           reduces_tax = excluded.reduces_tax, coupon_type = excluded.coupon_type, external_id = excluded.external_id, \
           per_customer_limit = excluded.per_customer_limit, global_limit = excluded.global_limit, \
           loyalty_cost = excluded.loyalty_cost, updated_at = excluded.updated_at",
    )?;
    st.execute(params![
        o.id,
        o.provider,
        o.provider_ref,
        o.short_description,
        o.requirement_description,
        o.long_description,
        o.category,
        o.brand,
        o.start_date.format("%Y-%m-%d").to_string(),
        o.end_date.format("%Y-%m-%d").to_string(),
        o.image_url,
        o.targeted,
        o.enabled,
        o.featured,
        o.requires_clip,
        rule,
        o.receipt_alias,
        o.reduces_tax,
        o.coupon_type,
        o.external_id,
        o.per_customer_limit,
        o.global_limit,
        o.loyalty_cost,
        now
    ])?;
    Ok(())
}

/// Every offer, in id order (loaded into the in-memory catalog).
pub fn all_offers(conn: &Connection) -> Result<Vec<Offer>> {
    let mut st = conn.prepare_cached(&format!("SELECT {OFFER_COLUMNS} FROM offers ORDER BY id"))?;
    let rows = st.query_map([], offer_from_row)?;
    rows.collect()
}

/// The image paths the catalog advertises that start with `prefix` (e.g. the sync
/// daemon's cached provider images, `/images/p-`).
pub fn advertised_images(conn: &Connection, prefix: &str) -> Result<HashSet<String>> {
    let mut st = conn.prepare_cached(
        "SELECT DISTINCT image_url FROM offers WHERE substr(image_url, 1, length(?1)) = ?1",
    )?;
    let rows = st.query_map([prefix], |r| r.get::<_, String>(0))?;
    rows.collect()
}

pub fn offer(conn: &Connection, id: &str) -> Result<Option<Offer>> {
    let mut st =
        conn.prepare_cached(&format!("SELECT {OFFER_COLUMNS} FROM offers WHERE id = ?1"))?;
    st.query_row([id], offer_from_row).optional()
}

/// Changes whenever any offer's definition changes (maintained by triggers).
pub fn catalog_version(conn: &Connection) -> Result<i64> {
    conn.prepare_cached("SELECT value FROM meta WHERE key = 'catalog_version'")?
        .query_row([], |r| r.get(0))
}

/// Store-wide redemptions of an offer plus live holds of it on other sales.
pub fn global_usage(
    conn: &Connection,
    offer_id: &str,
    site: &str,
    txn: &str,
    now: i64,
) -> Result<u32> {
    let mut st = conn.prepare_cached(
        "SELECT (SELECT redeemed_count FROM offers WHERE id = ?1) + \
                (SELECT count(*) FROM holds, json_each(holds.coupons) \
                  WHERE json_each.value = ?1 AND holds.expires_at > ?4 \
                    AND NOT (holds.site = ?2 AND holds.txn_id = ?3))",
    )?;
    st.query_row(params![offer_id, site, txn, now], |r| r.get(0))
}

/// Counts a redemption against the offer's store-wide limit. Only offers with a
/// `global_limit` keep this count (it is what the limit is checked against); bumping it for
/// every redemption would add a write to every commit for no reader.
pub fn bump_offer_redeemed(conn: &Connection, offer_id: &str) -> Result<()> {
    conn.prepare_cached("UPDATE offers SET redeemed_count = redeemed_count + 1 WHERE id = ?1")?
        .execute([offer_id])?;
    Ok(())
}

// ---------------------------------------------------------------- customers

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Customer {
    pub id: String,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub provider: Option<String>,
    pub provider_ref: Option<String>,
    pub loyalty_id: Option<String>,
    pub points_balance: i64,
}

const CUSTOMER_COLUMNS: &str =
    "id, first_name, last_name, email, phone, provider, provider_ref, loyalty_id, points_balance";

fn customer_from_row(r: &Row<'_>) -> Result<Customer> {
    Ok(Customer {
        id: r.get(0)?,
        first_name: r.get(1)?,
        last_name: r.get(2)?,
        email: r.get(3)?,
        phone: r.get(4)?,
        provider: r.get(5)?,
        provider_ref: r.get(6)?,
        loyalty_id: r.get(7)?,
        points_balance: r.get(8)?,
    })
}

pub fn customer(conn: &Connection, id: &str) -> Result<Option<Customer>> {
    let mut st = conn.prepare_cached(&format!(
        "SELECT {CUSTOMER_COLUMNS} FROM customers WHERE id = ?1"
    ))?;
    st.query_row([id], customer_from_row).optional()
}

/// The digits a phone number is compared by: punctuation and spaces ignored, and the
/// leading country code `1` of an 11-digit number dropped (a lane sends the 10-digit
/// national number). `None` when there are no digits.
pub fn phone_digits(phone: &str) -> Option<String> {
    let digits: String = phone.chars().filter(char::is_ascii_digit).collect();
    match digits.strip_prefix('1') {
        Some(national) if digits.len() == 11 => Some(national.to_owned()),
        _ if digits.is_empty() => None,
        _ => Some(digits),
    }
}

/// The first customer (by id) whose stored phone has the digits of `phone`, whatever the
/// punctuation of either (see [`phone_digits`]). Uses the index on `phone_digits`.
pub fn customer_by_phone(conn: &Connection, phone: &str) -> Result<Option<Customer>> {
    let Some(digits) = phone_digits(phone) else {
        return Ok(None);
    };
    let mut st = conn.prepare_cached(&format!(
        "SELECT {CUSTOMER_COLUMNS} FROM customers WHERE phone_digits = ?1 ORDER BY id LIMIT 1"
    ))?;
    st.query_row([digits], customer_from_row).optional()
}

/// Fills `phone_digits` in for every stored phone (migration 0005; later writes fill it in
/// themselves). Returns how many rows it set.
pub fn fill_phone_digits(conn: &Connection) -> Result<usize> {
    let phones: Vec<(String, String)> = conn
        .prepare_cached("SELECT id, phone FROM customers WHERE phone IS NOT NULL")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_>>()?;
    let mut set = conn.prepare_cached("UPDATE customers SET phone_digits = ?2 WHERE id = ?1")?;
    let mut n = 0;
    for (id, phone) in phones {
        n += set.execute(params![id, phone_digits(&phone)])?;
    }
    Ok(n)
}

pub fn customer_by_email(conn: &Connection, email: &str) -> Result<Option<Customer>> {
    let mut st = conn.prepare_cached(&format!(
        "SELECT {CUSTOMER_COLUMNS} FROM customers WHERE email = ?1 COLLATE NOCASE ORDER BY id LIMIT 1"
    ))?;
    st.query_row([email], customer_from_row).optional()
}

/// What an update of an existing customer does to the points balance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Points {
    /// Keep the store's balance (a provider pull, which knows no points balance).
    Keep,
    /// Set it from a snapshot: `c.points_balance` less the points spent at this store
    /// (`spend_points`). Those never reach a provider, so no snapshot knows of them, and
    /// importing the same file again must not give them back.
    FromSnapshot,
}

/// Inserts or updates a customer's profile (keeps the row when it exists); a new customer's
/// points balance is `c.points_balance`, an existing one's as `points` says.
pub fn upsert_customer(conn: &Connection, c: &Customer, points: Points, now: i64) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO customers (id, first_name, last_name, email, phone, phone_digits, provider, provider_ref, loyalty_id, points_balance, updated_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?11, ?6, ?7, ?8, ?9, ?10) \
         ON CONFLICT (id) DO UPDATE SET first_name = excluded.first_name, last_name = excluded.last_name, \
           email = excluded.email, phone = excluded.phone, phone_digits = excluded.phone_digits, \
           provider = excluded.provider, \
           provider_ref = excluded.provider_ref, loyalty_id = excluded.loyalty_id, \
           points_balance = CASE WHEN ?12 THEN customers.points_balance \
             ELSE max(excluded.points_balance - customers.points_spent, 0) END, \
           updated_at = excluded.updated_at",
    )?
    .execute(params![
        c.id,
        c.first_name,
        c.last_name,
        c.email,
        c.phone,
        c.provider,
        c.provider_ref,
        c.loyalty_id,
        c.points_balance,
        now,
        c.phone.as_deref().and_then(phone_digits),
        points == Points::Keep
    ])?;
    Ok(())
}

/// Records a customer first seen on a lane (no profile yet), so the sync daemon can fetch it.
pub fn ensure_customer(conn: &Connection, id: &str, now: i64) -> Result<()> {
    conn.prepare_cached("INSERT OR IGNORE INTO customers (id, updated_at) VALUES (?1, ?2)")?
        .execute(params![id, now])?;
    Ok(())
}

pub fn spend_points(conn: &Connection, customer_id: &str, points: i64) -> Result<()> {
    conn.prepare_cached(
        "UPDATE customers SET points_balance = max(points_balance - ?2, 0), points_spent = points_spent + ?2 \
         WHERE id = ?1",
    )?
    .execute(params![customer_id, points])?;
    Ok(())
}

// ---------------------------------------------------------------- customer coupons

/// One customer's relation to one offer, as stored (never `pending`: see [`Hold`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CouponRow {
    pub offer_id: String,
    pub state: CouponState,
    pub redemptions: u32,
    pub state_at: i64,
    /// The provider's count of the customer's redemptions, as its last pull saw it
    /// (Convercus `redeemCount`): uses at other stores or in the provider's own channels.
    pub upstream_redemptions: Option<i64>,
}

impl CouponRow {
    /// Redemptions that count against the per-customer limit: this store's, or the
    /// provider's count when that is higher (it includes ours once they are delivered).
    pub fn used(&self) -> u32 {
        let upstream = self
            .upstream_redemptions
            .and_then(|u| u32::try_from(u).ok())
            .unwrap_or(0);
        self.redemptions.max(upstream)
    }
}

const COUPON_COLUMNS: &str = "offer_id, state, redemptions, state_at, upstream_redemptions";

fn coupon_from_row(r: &Row<'_>) -> Result<CouponRow> {
    let state: String = r.get(1)?;
    Ok(CouponRow {
        offer_id: r.get(0)?,
        state: CouponState::parse(&state).ok_or_else(|| corrupt(1, "coupon state", &state))?,
        redemptions: r.get(2)?,
        state_at: r.get(3)?,
        upstream_redemptions: r.get(4)?,
    })
}

/// All of a customer's coupon rows, in offer id order.
pub fn customer_coupon_rows(conn: &Connection, customer_id: &str) -> Result<Vec<CouponRow>> {
    let mut st = conn.prepare_cached(&format!(
        "SELECT {COUPON_COLUMNS} FROM customer_coupons WHERE customer_id = ?1 ORDER BY offer_id"
    ))?;
    let rows = st.query_map([customer_id], coupon_from_row)?;
    rows.collect()
}

/// The provider's id of this customer's copy of an offer (Convercus accountCouponId), when
/// a pull recorded one.
pub fn coupon_provider_ref(
    conn: &Connection,
    customer_id: &str,
    offer_id: &str,
) -> Result<Option<String>> {
    conn.prepare_cached(
        "SELECT provider_ref FROM customer_coupons WHERE customer_id = ?1 AND offer_id = ?2",
    )?
    .query_row([customer_id, offer_id], |r| r.get(0))
    .optional()
    .map(Option::flatten)
}

/// Sets a coupon's state, creating the row when needed. `dirty` marks a local change not
/// yet acknowledged upstream.
pub fn set_coupon_state(
    conn: &Connection,
    customer_id: &str,
    offer_id: &str,
    state: CouponState,
    now: i64,
    dirty: bool,
) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO customer_coupons (customer_id, offer_id, state, state_at, local_dirty) VALUES (?1, ?2, ?3, ?4, ?5) \
         ON CONFLICT (customer_id, offer_id) DO UPDATE SET state = excluded.state, state_at = excluded.state_at, \
           local_dirty = max(local_dirty, excluded.local_dirty)",
    )?
    .execute(params![customer_id, offer_id, state.as_str(), now, dirty])?;
    Ok(())
}

/// Records one redemption on the coupon row: the state becomes `redeemed` (CATAPULT §4.7
/// rule 1), and `redemptions` counts it. Whether the coupon may be used again is the
/// offer's per-customer limit against that count (the lanes' `reusable`).
pub fn redeem_coupon(conn: &Connection, customer_id: &str, offer_id: &str, now: i64) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO customer_coupons (customer_id, offer_id, state, redemptions, state_at, local_dirty) \
         VALUES (?1, ?2, 'redeemed', 1, ?3, 1) \
         ON CONFLICT (customer_id, offer_id) DO UPDATE SET redemptions = redemptions + 1, \
           state = 'redeemed', state_at = ?3, local_dirty = 1",
    )?
    .execute(params![customer_id, offer_id, now])?;
    Ok(())
}

/// The redemption count a provider pull stored for the customer's copy `provider_ref` of
/// the coupon (`upstream_redemptions`), when no other sale at this store (than `site`,
/// `txn`) redeemed that coupon for the customer since the sales were last pruned: such a
/// redemption may have reached the provider after the pull read the count. `None` when
/// there is no such count.
pub fn upstream_redemptions_before(
    conn: &Connection,
    customer_id: &str,
    offer_id: &str,
    provider_ref: &str,
    site: &str,
    txn: &str,
) -> Result<Option<i64>> {
    conn.prepare_cached(
        "SELECT c.upstream_redemptions FROM customer_coupons c \
         WHERE c.customer_id = ?1 AND c.offer_id = ?2 AND c.provider_ref = ?3 \
           AND NOT EXISTS (SELECT 1 FROM redemptions r WHERE r.customer_id = ?1 AND r.offer_id = ?2 \
                             AND NOT (r.site = ?4 AND r.txn_id = ?5))",
    )?
    .query_row(
        params![customer_id, offer_id, provider_ref, site, txn],
        |r| r.get::<_, Option<i64>>(0),
    )
    .optional()
    .map(Option::flatten)
}

// ---------------------------------------------------------------- holds

/// The coupons one open sale holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    pub site: String,
    pub txn: String,
    pub customer_id: String,
    pub coupons: Vec<String>,
    pub optional: Vec<String>,
    pub expires_at: i64,
}

impl Hold {
    pub fn is_live(&self, now: i64) -> bool {
        self.expires_at > now
    }

    pub fn is_for(&self, site: &str, txn: &str) -> bool {
        self.site == site && self.txn == txn
    }

    pub fn holds(&self, offer_id: &str) -> bool {
        self.coupons.iter().any(|c| c == offer_id)
    }
}

const HOLD_COLUMNS: &str = "site, txn_id, customer_id, coupons, optional, expires_at";

fn hold_from_row(r: &Row<'_>) -> Result<Hold> {
    let list = |col: usize| -> Result<Vec<String>> {
        let text: String = r.get(col)?;
        serde_json::from_str(&text).map_err(|e| corrupt(col, "hold list", e))
    };
    Ok(Hold {
        site: r.get(0)?,
        txn: r.get(1)?,
        customer_id: r.get(2)?,
        coupons: list(3)?,
        optional: list(4)?,
        expires_at: r.get(5)?,
    })
}

/// Every hold of a customer's (live or lapsed), by sale.
pub fn holds_of_customer(conn: &Connection, customer_id: &str) -> Result<Vec<Hold>> {
    let mut st = conn.prepare_cached(&format!(
        "SELECT {HOLD_COLUMNS} FROM holds WHERE customer_id = ?1 ORDER BY site, txn_id"
    ))?;
    let rows = st.query_map([customer_id], hold_from_row)?;
    rows.collect()
}

/// The hold of one sale, if any.
pub fn hold_of(conn: &Connection, site: &str, txn: &str) -> Result<Option<Hold>> {
    let mut st = conn.prepare_cached(&format!(
        "SELECT {HOLD_COLUMNS} FROM holds WHERE site = ?1 AND txn_id = ?2"
    ))?;
    st.query_row([site, txn], hold_from_row).optional()
}

/// Writes (or replaces) a sale's hold; a hold without coupons is deleted.
pub fn put_hold(conn: &Connection, h: &Hold) -> Result<()> {
    if h.coupons.is_empty() {
        return delete_hold(conn, &h.site, &h.txn);
    }
    let coupons = serde_json::to_string(&h.coupons).map_err(|e| corrupt(3, "hold list", e))?;
    let optional = serde_json::to_string(&h.optional).map_err(|e| corrupt(4, "hold list", e))?;
    conn.prepare_cached(
        "INSERT INTO holds (site, txn_id, customer_id, coupons, optional, expires_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
         ON CONFLICT (site, txn_id) DO UPDATE SET customer_id = excluded.customer_id, coupons = excluded.coupons, \
           optional = excluded.optional, expires_at = excluded.expires_at",
    )?
    .execute(params![h.site, h.txn, h.customer_id, coupons, optional, h.expires_at])?;
    Ok(())
}

pub fn delete_hold(conn: &Connection, site: &str, txn: &str) -> Result<()> {
    conn.prepare_cached("DELETE FROM holds WHERE site = ?1 AND txn_id = ?2")?
        .execute([site, txn])?;
    Ok(())
}

/// Drops every hold that lapsed before `now`; returns how many.
pub fn release_expired_holds(conn: &Connection, now: i64) -> Result<usize> {
    conn.prepare_cached("DELETE FROM holds WHERE expires_at <= ?1")?
        .execute([now])
}

// ---------------------------------------------------------------- transactions

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnRow {
    pub customer_id: String,
    pub state: String,
    pub last_update: Option<String>,
    pub commit_response: Option<String>,
}

pub fn transaction(conn: &Connection, site: &str, txn: &str) -> Result<Option<TxnRow>> {
    let mut st = conn.prepare_cached(
        "SELECT customer_id, state, last_update, commit_response FROM transactions WHERE site = ?1 AND txn_id = ?2",
    )?;
    st.query_row([site, txn], |r| {
        Ok(TxnRow {
            customer_id: r.get(0)?,
            state: r.get(1)?,
            last_update: r.get(2)?,
            commit_response: r.get(3)?,
        })
    })
    .optional()
}

/// Creates the transaction or moves it back to `open` with this update's summary.
pub fn upsert_open_transaction(
    conn: &Connection,
    site: &str,
    txn: &str,
    customer_id: &str,
    terminal: Option<i64>,
    cashier: Option<i64>,
    last_update: &str,
    now: i64,
) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO transactions (site, txn_id, customer_id, state, terminal, cashier, updated_at, last_update) \
         VALUES (?1, ?2, ?3, 'open', ?4, ?5, ?6, ?7) \
         ON CONFLICT (site, txn_id) DO UPDATE SET customer_id = excluded.customer_id, state = 'open', \
           terminal = excluded.terminal, cashier = excluded.cashier, updated_at = excluded.updated_at, \
           last_update = excluded.last_update",
    )?
    .execute(params![site, txn, customer_id, terminal, cashier, now, last_update])?;
    Ok(())
}

/// Marks an open sale cancelled. A sale never updated here is recorded as cancelled, so a
/// later commit of it is one of a sale this store saw (CATAPULT §5.15's
/// `INVALID_TRANSACTION` is for sales never seen); a committed one stays committed.
pub fn cancel_transaction(
    conn: &Connection,
    site: &str,
    txn: &str,
    customer_id: &str,
    now: i64,
) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO transactions (site, txn_id, customer_id, state, updated_at) \
         VALUES (?1, ?2, ?3, 'cancelled', ?4) \
         ON CONFLICT (site, txn_id) DO UPDATE SET state = 'cancelled', updated_at = excluded.updated_at \
         WHERE state = 'open'",
    )?
    .execute(params![site, txn, customer_id, now])?;
    Ok(())
}

/// Marks the sale committed and keeps the exact answer for replays.
pub fn commit_transaction(
    conn: &Connection,
    site: &str,
    txn: &str,
    customer_id: &str,
    request: &str,
    response: &str,
    now: i64,
) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO transactions (site, txn_id, customer_id, state, updated_at, commit_request, commit_response, committed_at) \
         VALUES (?1, ?2, ?3, 'committed', ?6, ?4, ?5, ?6) \
         ON CONFLICT (site, txn_id) DO UPDATE SET state = 'committed', updated_at = ?6, \
           commit_request = ?4, commit_response = ?5, committed_at = ?6",
    )?
    .execute(params![site, txn, customer_id, request, response, now])?;
    Ok(())
}

/// The request body a committed sale's first commit carried, as received.
pub fn commit_request(conn: &Connection, site: &str, txn: &str) -> Result<Option<String>> {
    conn.prepare_cached(
        "SELECT commit_request FROM transactions WHERE site = ?1 AND txn_id = ?2 AND state = 'committed'",
    )?
    .query_row([site, txn], |r| r.get(0))
    .optional()
    .map(Option::flatten)
}

// ---------------------------------------------------------------- redemptions

#[allow(clippy::too_many_arguments)]
pub fn insert_redemption(
    conn: &Connection,
    site: &str,
    txn: &str,
    customer_id: &str,
    offer_id: &str,
    discount: Cents,
    conflict: bool,
    by_empty_list: bool,
    now: i64,
) -> Result<bool> {
    let n = conn
        .prepare_cached(
            "INSERT OR IGNORE INTO redemptions (site, txn_id, customer_id, offer_id, discount, redeemed_at, conflict, by_empty_list) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?
        .execute(params![site, txn, customer_id, offer_id, discount.0, now, conflict, by_empty_list])?;
    Ok(n == 1)
}

/// A redemption flagged for store IT: a commit listed a coupon already redeemed, held by
/// another sale or expired (acknowledged all the same), or the provider refused its
/// redemption (`outbox::deliver_part`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Conflict {
    pub site: String,
    pub transaction: String,
    pub customer: String,
    pub coupon: String,
    pub discount_cents: i64,
    /// When the commit recorded it (Unix seconds).
    pub at: i64,
}

/// How far back store IT is shown conflicts (`edge-ctl status`, the admin page): the 30
/// days of CATAPULT's history lists.
pub const CONFLICT_WINDOW_SECS: i64 = 30 * 24 * 3600;

/// How many redemptions recorded since `since` are conflicts, and the newest `limit` of
/// them (index `redemptions_conflicts`, migration 0006).
pub fn conflicts_since(conn: &Connection, since: i64, limit: i64) -> Result<(i64, Vec<Conflict>)> {
    let count = conn
        .prepare_cached(
            "SELECT count(*) FROM redemptions WHERE conflict = 1 AND redeemed_at >= ?1",
        )?
        .query_row([since], |r| r.get(0))?;
    let mut st = conn.prepare_cached(
        "SELECT site, txn_id, customer_id, offer_id, discount, redeemed_at FROM redemptions \
         WHERE conflict = 1 AND redeemed_at >= ?1 ORDER BY redeemed_at DESC, id DESC LIMIT ?2",
    )?;
    let rows = st.query_map(params![since, limit], |r| {
        Ok(Conflict {
            site: r.get(0)?,
            transaction: r.get(1)?,
            customer: r.get(2)?,
            coupon: r.get(3)?,
            discount_cents: r.get(4)?,
            at: r.get(5)?,
        })
    })?;
    Ok((count, rows.collect::<Result<_>>()?))
}

// ---------------------------------------------------------------- retention

/// Sales (transactions) last touched before `before`, at most `limit` of them, by key. Meant
/// for a read connection: the scan holds no write lock (`transactions` has no index on
/// `updated_at`, which every lane write would pay for).
pub fn stale_sales(conn: &Connection, before: i64, limit: i64) -> Result<Vec<(String, String)>> {
    let mut st = conn
        .prepare_cached("SELECT site, txn_id FROM transactions WHERE updated_at < ?1 LIMIT ?2")?;
    let rows = st.query_map(params![before, limit], |r| Ok((r.get(0)?, r.get(1)?)))?;
    rows.collect()
}

/// Deletes these sales with their redemption log and any hold, each unless it was touched
/// since `before` (a suspended sale resumed meanwhile). Returns how many went.
pub fn delete_sales(conn: &Connection, keys: &[(String, String)], before: i64) -> Result<usize> {
    let mut gone = 0;
    for (site, txn) in keys {
        let deleted = conn
            .prepare_cached(
                "DELETE FROM transactions WHERE site = ?1 AND txn_id = ?2 AND updated_at < ?3",
            )?
            .execute(params![site, txn, before])?;
        if deleted == 1 {
            conn.prepare_cached("DELETE FROM redemptions WHERE site = ?1 AND txn_id = ?2")?
                .execute([site, txn])?;
            delete_hold(conn, site, txn)?;
            gone += 1;
        }
    }
    Ok(gone)
}

/// The vouchers a store no longer keeps: their validity ended before `?2` (a `YYYY-MM-DD`
/// date, compared as text), no change of theirs still waits to go upstream, and no lane of
/// this store holds a lock on them (a lock another system holds upstream, with no local
/// owner, does not keep one: pulls no longer update an ended voucher, so it would stay
/// locked here for good). The one definition for the scan and the delete below.
macro_rules! voucher_ended_long_ago {
    () => {
        "valid_until < ?2 AND local_dirty = 0 AND (state <> 'locked' OR lock_site IS NULL)"
    };
}

/// One step of a walk over every voucher in code order: up to `limit` codes after `after`,
/// each with whether it ended before `ended_before` and may go. Short read transactions
/// (no index on `valid_until`, which every pulled voucher would pay for).
pub fn vouchers_after(
    conn: &Connection,
    after: &str,
    ended_before: &str,
    limit: i64,
) -> Result<Vec<(String, bool)>> {
    let mut st = conn.prepare_cached(concat!(
        "SELECT code, coalesce(",
        voucher_ended_long_ago!(),
        ", 0) FROM vouchers WHERE code > ?1 ORDER BY code LIMIT ?3"
    ))?;
    let rows = st.query_map(params![after, ended_before, limit], |r| {
        Ok((r.get(0)?, r.get(1)?))
    })?;
    rows.collect()
}

/// Deletes these vouchers, each only if it still ended before `ended_before` and may go (a
/// lane may have locked it since the scan). Returns how many went.
pub fn delete_ended_vouchers(
    conn: &Connection,
    codes: &[String],
    ended_before: &str,
) -> Result<usize> {
    let mut st = conn.prepare_cached(concat!(
        "DELETE FROM vouchers WHERE code = ?1 AND ",
        voucher_ended_long_ago!()
    ))?;
    let mut gone = 0;
    for code in codes {
        gone += st.execute(params![code, ended_before])?;
    }
    Ok(gone)
}

// ---------------------------------------------------------------- vouchers

/// A single-use voucher. `Default` is an active voucher with no lock, no validation and
/// no alias; pulls and imports fill in what they know.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Voucher {
    pub code: String,
    pub provider: String,
    pub provider_ref: String,
    pub description: String,
    pub value: Cents,
    pub min_spend: Cents,
    pub valid_from: Option<String>,
    pub valid_until: Option<String>,
    pub state: String,
    pub lock_site: Option<String>,
    pub lock_txn: Option<String>,
    pub lock_expires_at: Option<i64>,
    pub validated_at: Option<String>,
    pub validated_site: Option<String>,
    pub validated_txn: Option<String>,
    pub money_spent: Option<Cents>,
    /// Another code the voucher may be scanned by (a Coupontools own validation code);
    /// [`voucher`] finds the row by it too.
    pub alias: Option<String>,
}

impl Voucher {
    /// Whether its validity ended before `date` (`YYYY-MM-DD`), as the retention counts.
    pub fn ended_before(&self, date: &str) -> bool {
        self.valid_until.as_deref().is_some_and(|u| u < date)
    }
}

/// The columns [`voucher_from_row`] reads, in its order (a macro, so queries stay
/// `&'static str` for the statement cache).
macro_rules! voucher_columns {
    () => {
        "code, provider, provider_ref, description, value, min_spend, valid_from, valid_until, \
         state, lock_site, lock_txn, lock_expires_at, validated_at, validated_site, \
         validated_txn, money_spent, alias"
    };
}

fn voucher_from_row(r: &Row<'_>) -> Result<Voucher> {
    Ok(Voucher {
        code: r.get(0)?,
        provider: r.get(1)?,
        provider_ref: r.get(2)?,
        description: r.get(3)?,
        value: Cents(r.get(4)?),
        min_spend: Cents(r.get(5)?),
        valid_from: r.get(6)?,
        valid_until: r.get(7)?,
        state: r.get(8)?,
        lock_site: r.get(9)?,
        lock_txn: r.get(10)?,
        lock_expires_at: r.get(11)?,
        validated_at: r.get(12)?,
        validated_site: r.get(13)?,
        validated_txn: r.get(14)?,
        money_spent: r.get::<_, Option<i64>>(15)?.map(Cents),
        alias: r.get(16)?,
    })
}

const LAPSED_VOUCHER_LOCKS: &str = concat!(
    "SELECT ",
    voucher_columns!(),
    " FROM vouchers WHERE lock_site IS NOT NULL AND lock_expires_at <= ?1 AND state = 'locked' \
     ORDER BY lock_expires_at LIMIT ?2"
);

/// The voucher a lane scanned: by its code, else by its alias (the lowest code, should two
/// share one).
pub fn voucher(conn: &Connection, code: &str) -> Result<Option<Voucher>> {
    let by_code = conn
        .prepare_cached(concat!(
            "SELECT ",
            voucher_columns!(),
            " FROM vouchers WHERE code = ?1"
        ))?
        .query_row([code], voucher_from_row)
        .optional()?;
    if by_code.is_some() {
        return Ok(by_code);
    }
    conn.prepare_cached(concat!(
        "SELECT ",
        voucher_columns!(),
        " FROM vouchers WHERE alias = ?1 ORDER BY code LIMIT 1"
    ))?
    .query_row([code], voucher_from_row)
    .optional()
}

/// Vouchers a lane of this store locked whose lock lapsed at or before `now` (the sale was
/// abandoned without unlock or validation), at most `limit`, by the partial index
/// `vouchers_lapsing` (migration 0007).
pub fn lapsed_voucher_locks(conn: &Connection, now: i64, limit: i64) -> Result<Vec<Voucher>> {
    let mut st = conn.prepare_cached(LAPSED_VOUCHER_LOCKS)?;
    let rows = st.query_map(params![now, limit], voucher_from_row)?;
    rows.collect()
}

const VOUCHERS_LOCKED_BY: &str = concat!(
    "SELECT ",
    voucher_columns!(),
    " FROM vouchers INDEXED BY vouchers_lapsing WHERE lock_site = ?1 AND lock_txn = ?2 AND state = 'locked' \
     ORDER BY code"
);

/// Vouchers the sale (`site`, `txn`) holds locked, lapsed or not: a cancel releases them.
/// Read through the partial index `vouchers_lapsing`, which holds only lane-locked rows.
pub fn vouchers_locked_by(conn: &Connection, site: &str, txn: &str) -> Result<Vec<Voucher>> {
    let mut st = conn.prepare_cached(VOUCHERS_LOCKED_BY)?;
    let rows = st.query_map(params![site, txn], voucher_from_row)?;
    rows.collect()
}

/// Inserts or refreshes a voucher from a provider or an import. A voucher with local changes
/// not yet acknowledged upstream keeps its local state (local wins until acknowledged), and
/// one a lane validated here stays validated: a pull's page read before the validation was
/// delivered (and acknowledged) says "active", and would make a single-use voucher usable
/// again until the next pull.
pub fn upsert_voucher(conn: &Connection, v: &Voucher, now: i64) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO vouchers (code, provider, provider_ref, description, value, min_spend, valid_from, valid_until, state, \
           validated_at, money_spent, updated_at, alias) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13) \
         ON CONFLICT (code) DO UPDATE SET provider = excluded.provider, provider_ref = excluded.provider_ref, \
           description = excluded.description, value = excluded.value, min_spend = excluded.min_spend, alias = excluded.alias, \
           valid_from = excluded.valid_from, valid_until = excluded.valid_until, updated_at = excluded.updated_at, \
           state = CASE WHEN local_dirty = 1 OR validated_site IS NOT NULL THEN state ELSE excluded.state END, \
           validated_at = CASE WHEN local_dirty = 1 OR validated_site IS NOT NULL THEN validated_at ELSE excluded.validated_at END, \
           money_spent = CASE WHEN local_dirty = 1 OR validated_site IS NOT NULL THEN money_spent ELSE excluded.money_spent END",
    )?
    .execute(params![
        v.code,
        v.provider,
        v.provider_ref,
        v.description,
        v.value.0,
        v.min_spend.0,
        v.valid_from,
        v.valid_until,
        v.state,
        v.validated_at,
        v.money_spent.map(|c| c.0),
        now,
        v.alias
    ])?;
    Ok(())
}

pub fn lock_voucher(
    conn: &Connection,
    code: &str,
    site: &str,
    txn: &str,
    expires_at: i64,
    now: i64,
) -> Result<()> {
    conn.prepare_cached(
        "UPDATE vouchers SET state = 'locked', lock_site = ?2, lock_txn = ?3, lock_expires_at = ?4, updated_at = ?5, local_dirty = 1 WHERE code = ?1",
    )?
    .execute(params![code, site, txn, expires_at, now])?;
    Ok(())
}

pub fn unlock_voucher(conn: &Connection, code: &str, now: i64) -> Result<()> {
    conn.prepare_cached(
        "UPDATE vouchers SET state = 'active', lock_site = NULL, lock_txn = NULL, lock_expires_at = NULL, updated_at = ?2, local_dirty = 1 WHERE code = ?1",
    )?
    .execute(params![code, now])?;
    Ok(())
}

pub fn validate_voucher(
    conn: &Connection,
    code: &str,
    site: &str,
    txn: &str,
    validated_at: &str,
    money_spent: Cents,
    now: i64,
) -> Result<()> {
    conn.prepare_cached(
        "UPDATE vouchers SET state = 'validated', validated_at = ?4, validated_site = ?2, validated_txn = ?3, \
           money_spent = ?5, lock_site = NULL, lock_txn = NULL, lock_expires_at = NULL, updated_at = ?6, local_dirty = 1 \
         WHERE code = ?1",
    )?
    .execute(params![code, site, txn, validated_at, money_spent.0, now])?;
    Ok(())
}

/// Sets a coupon state coming from an import or a provider pull. Rows with local changes
/// not yet acknowledged upstream keep their local state (promise 5:
/// local wins until acknowledged).
pub fn import_coupon_state(
    conn: &Connection,
    customer_id: &str,
    offer_id: &str,
    state: CouponState,
    provider_ref: Option<&str>,
    now: i64,
) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO customer_coupons (customer_id, offer_id, state, state_at, provider_ref) VALUES (?1, ?2, ?3, ?4, ?5) \
         ON CONFLICT (customer_id, offer_id) DO UPDATE SET \
           state = CASE WHEN local_dirty = 0 THEN excluded.state ELSE state END, \
           state_at = CASE WHEN local_dirty = 0 AND state != excluded.state THEN excluded.state_at ELSE state_at END, \
           provider_ref = coalesce(excluded.provider_ref, provider_ref)",
    )?
    .execute(params![customer_id, offer_id, state.as_str(), now, provider_ref])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::db::scratch_db;

    #[test]
    fn stale_sales_go_with_their_redemptions_unless_touched_since() {
        let (_dir, conn) = scratch_db();
        for (txn, at) in [("OLD1", 100), ("OLD2", 200), ("NEW", 5_000)] {
            upsert_open_transaction(&conn, "STO1", txn, "C1", None, None, "{}", at).unwrap();
            commit_transaction(&conn, "STO1", txn, "C1", "{}", "{}", at).unwrap();
            insert_redemption(&conn, "STO1", txn, "C1", "A", Cents(1), false, false, at).unwrap();
        }
        let keys = stale_sales(&conn, 1_000, 10).unwrap();
        assert_eq!(keys.len(), 2, "{keys:?}");
        assert_eq!(stale_sales(&conn, 1_000, 1).unwrap().len(), 1, "limit");
        // OLD2 is resumed (touched) after the scan: it stays.
        upsert_open_transaction(&conn, "STO1", "OLD2", "C1", None, None, "{}", 6_000).unwrap();
        assert_eq!(delete_sales(&conn, &keys, 1_000).unwrap(), 1);
        for table in ["transactions", "redemptions"] {
            let left: Vec<String> = conn
                .prepare(&format!("SELECT txn_id FROM {table} ORDER BY txn_id"))
                .unwrap()
                .query_map([], |r| r.get(0))
                .unwrap()
                .collect::<Result<_>>()
                .unwrap();
            assert_eq!(left, ["NEW", "OLD2"], "{table}");
        }
    }

    #[test]
    fn vouchers_ended_long_ago_go_unless_locked_or_waiting_to_go_upstream() {
        let (_dir, conn) = scratch_db();
        for (code, until, state, lock_site, dirty) in [
            ("A-OLD", Some("2026-01-31"), "active", None, 0),
            ("B-USED", Some("2026-02-01"), "validated", None, 0),
            ("C-DIRTY", Some("2026-01-01"), "validated", None, 1),
            ("D-LOCKED", Some("2026-01-01"), "locked", Some("STO1"), 0),
            ("E-RECENT", Some("2026-02-02"), "active", None, 0),
            ("F-OPEN", None, "active", None, 0),
            ("G-LOCKED-UPSTREAM", Some("2026-01-01"), "locked", None, 0),
        ] {
            conn.execute(
                "INSERT INTO vouchers (code, provider, provider_ref, valid_until, state, lock_site, local_dirty, updated_at) \
                 VALUES (?1, 'local', ?1, ?2, ?3, ?4, ?5, 0)",
                params![code, until, state, lock_site, dirty],
            )
            .unwrap();
        }
        let walk =
            |after: &str, limit: i64| vouchers_after(&conn, after, "2026-02-02", limit).unwrap();
        assert_eq!(
            walk("", 10),
            [
                ("A-OLD".to_owned(), true),
                ("B-USED".to_owned(), true),
                ("C-DIRTY".to_owned(), false),
                ("D-LOCKED".to_owned(), false),
                ("E-RECENT".to_owned(), false),
                ("F-OPEN".to_owned(), false),
                ("G-LOCKED-UPSTREAM".to_owned(), true),
            ]
        );
        assert_eq!(walk("B-USED", 2).len(), 2, "a step starts after `after`");
        assert!(walk("G-LOCKED-UPSTREAM", 10).is_empty());
        // A-OLD is locked by a lane after the scan: it stays.
        conn.execute(
            "UPDATE vouchers SET state = 'locked', lock_site = 'STO1' WHERE code = 'A-OLD'",
            [],
        )
        .unwrap();
        let codes = ["A-OLD", "B-USED", "G-LOCKED-UPSTREAM"].map(str::to_owned);
        assert_eq!(
            delete_ended_vouchers(&conn, &codes, "2026-02-02").unwrap(),
            2
        );
        let left: Vec<String> = conn
            .prepare("SELECT code FROM vouchers ORDER BY code")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_>>()
            .unwrap();
        assert_eq!(left, ["A-OLD", "C-DIRTY", "D-LOCKED", "E-RECENT", "F-OPEN"]);
        let v = voucher(&conn, "E-RECENT").unwrap().unwrap();
        assert!(v.ended_before("2026-02-03") && !v.ended_before("2026-02-02"));
        assert!(!voucher(&conn, "F-OPEN")
            .unwrap()
            .unwrap()
            .ended_before("9999-12-31"));
    }

    #[test]
    fn conflicts_are_counted_since_a_time_newest_first() {
        let (_dir, conn) = scratch_db();
        let row = |txn: &str, offer: &str, conflict: bool, at: i64| {
            insert_redemption(
                &conn,
                "STO1",
                txn,
                "C1",
                offer,
                Cents(100),
                conflict,
                false,
                at,
            )
            .unwrap()
        };
        row("T1", "A", true, 1_000);
        row("T2", "A", false, 2_000);
        row("T3", "B", true, 3_000);
        row("T4", "C", true, 4_000);
        let (count, recent) = conflicts_since(&conn, 2_000, 1).unwrap();
        assert_eq!(count, 2, "T3 and T4; T1 is older, T2 no conflict");
        assert_eq!(
            recent,
            [Conflict {
                site: "STO1".into(),
                transaction: "T4".into(),
                customer: "C1".into(),
                coupon: "C".into(),
                discount_cents: 100,
                at: 4_000,
            }]
        );
        assert_eq!(conflicts_since(&conn, 0, 10).unwrap().0, 3);
        // The query is served by the partial index of migration 0006.
        let plan: String = conn
            .query_row(
                "EXPLAIN QUERY PLAN SELECT count(*) FROM redemptions WHERE conflict = 1 AND redeemed_at >= 0",
                [],
                |r| r.get(3),
            )
            .unwrap();
        assert!(plan.contains("redemptions_conflicts"), "{plan}");
    }

    #[test]
    fn a_voucher_is_found_by_its_code_else_by_its_alias() {
        let (_dir, conn) = scratch_db();
        let v = |code: &str, alias: Option<&str>| Voucher {
            code: code.into(),
            provider: "coupontools".into(),
            provider_ref: code.into(),
            state: "active".into(),
            alias: alias.map(str::to_owned),
            ..Voucher::default()
        };
        upsert_voucher(&conn, &v("sess-1", Some("OWN-1")), 1).unwrap();
        // A code that is also another voucher's alias: the code wins.
        upsert_voucher(&conn, &v("OWN-2", None), 1).unwrap();
        upsert_voucher(&conn, &v("sess-2", Some("OWN-2")), 1).unwrap();
        let found = |code: &str| voucher(&conn, code).unwrap().map(|v| v.code);
        assert_eq!(found("sess-1").as_deref(), Some("sess-1"));
        assert_eq!(found("OWN-1").as_deref(), Some("sess-1"));
        assert_eq!(found("OWN-2").as_deref(), Some("OWN-2"));
        assert_eq!(found("OWN-3"), None);
        // A pull that no longer names the alias drops it.
        upsert_voucher(&conn, &v("sess-1", None), 2).unwrap();
        assert_eq!(found("OWN-1"), None);
        let plan: String = conn
            .query_row(
                "EXPLAIN QUERY PLAN SELECT code FROM vouchers WHERE alias = 'x'",
                [],
                |r| r.get(3),
            )
            .unwrap();
        assert!(plan.contains("vouchers_alias"), "{plan}");
    }

    #[test]
    fn lapsed_voucher_locks_are_found_by_their_index() {
        let (_dir, conn) = scratch_db();
        let v = |code: &str| Voucher {
            code: code.into(),
            provider: "coupontools".into(),
            provider_ref: code.into(),
            description: String::new(),
            value: Cents(100),
            min_spend: Cents(0),
            valid_from: None,
            valid_until: None,
            state: "active".into(),
            ..Voucher::default()
        };
        for code in ["LAPSED", "LIVE", "FREE"] {
            upsert_voucher(&conn, &v(code), 1).unwrap();
        }
        lock_voucher(&conn, "LAPSED", "S", "T1", 100, 1).unwrap();
        lock_voucher(&conn, "LIVE", "S", "T2", 500, 1).unwrap();
        let found: Vec<String> = lapsed_voucher_locks(&conn, 200, 10)
            .unwrap()
            .into_iter()
            .map(|v| v.code)
            .collect();
        assert_eq!(found, ["LAPSED"]);
        let plan: String = conn
            .query_row(
                &format!("EXPLAIN QUERY PLAN {LAPSED_VOUCHER_LOCKS}"),
                params![1, 1],
                |r| r.get(3),
            )
            .unwrap();
        assert!(plan.contains("vouchers_lapsing"), "{plan}");
    }

    #[test]
    fn phone_digits_ignore_punctuation_and_a_leading_country_code() {
        for stored in [
            "8282652907",
            "(828)265-2907",
            "828-265-2907",
            "828.265.2907",
            "+1 828 265 2907",
            "1-828-265-2907",
        ] {
            assert_eq!(
                phone_digits(stored).as_deref(),
                Some("8282652907"),
                "{stored}"
            );
        }
        assert_eq!(phone_digits("2652907").as_deref(), Some("2652907"));
        // Only an 11-digit number starting with 1 has a country code to drop.
        assert_eq!(phone_digits("18282652").as_deref(), Some("18282652"));
        assert_eq!(
            phone_digits("44 20 7946 0958").as_deref(),
            Some("442079460958")
        );
        assert_eq!(phone_digits(""), None);
        assert_eq!(phone_digits("n/a"), None);
    }

    fn customer_with_phone(id: &str, phone: Option<&str>) -> Customer {
        Customer {
            id: id.into(),
            phone: phone.map(str::to_owned),
            ..Customer::default()
        }
    }

    #[test]
    fn a_formatted_phone_is_found_by_its_digits_through_the_index() {
        let (_dir, conn) = scratch_db();
        upsert_customer(
            &conn,
            &customer_with_phone("C2", Some("(828)265-2907")),
            Points::FromSnapshot,
            1,
        )
        .unwrap();
        upsert_customer(
            &conn,
            &customer_with_phone("C1", Some("+1 828 265 2907")),
            Points::FromSnapshot,
            1,
        )
        .unwrap();
        upsert_customer(
            &conn,
            &customer_with_phone("C3", None),
            Points::FromSnapshot,
            1,
        )
        .unwrap();
        let found = customer_by_phone(&conn, "8282652907").unwrap().unwrap();
        assert_eq!(
            (found.id.as_str(), found.phone.as_deref()),
            ("C1", Some("+1 828 265 2907"))
        );
        // A changed phone moves its digits along; a removed one takes them away.
        upsert_customer(
            &conn,
            &customer_with_phone("C1", Some("555-123-4567")),
            Points::FromSnapshot,
            2,
        )
        .unwrap();
        assert_eq!(
            customer_by_phone(&conn, "8282652907").unwrap().unwrap().id,
            "C2"
        );
        assert_eq!(
            customer_by_phone(&conn, "5551234567").unwrap().unwrap().id,
            "C1"
        );
        upsert_customer(
            &conn,
            &customer_with_phone("C2", None),
            Points::FromSnapshot,
            2,
        )
        .unwrap();
        assert!(customer_by_phone(&conn, "8282652907").unwrap().is_none());
        assert!(customer_by_phone(&conn, "").unwrap().is_none());
        let plan: Vec<String> = conn
            .prepare(&format!(
                "EXPLAIN QUERY PLAN SELECT {CUSTOMER_COLUMNS} FROM customers WHERE phone_digits = ?1 ORDER BY id LIMIT 1"
            ))
            .unwrap()
            .query_map(["8282652907"], |r| r.get::<_, String>(3))
            .unwrap()
            .collect::<Result<_>>()
            .unwrap();
        assert!(
            plan.iter()
                .any(|p| p.contains("USING INDEX customers_phone_digits")),
            "{plan:?}"
        );
        assert!(!plan.iter().any(|p| p.contains("TEMP B-TREE")), "{plan:?}");
    }
}
