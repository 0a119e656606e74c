//! What the lanes' requests do to the store's state, free of HTTP: metadata, clip, the
//! transaction update with its holds, cancel, commit and vouchers. Each write function runs
//! inside the writer's transaction it is given, so the state change and the outbox rows
//! it implies are committed together before the lane hears back.

use chrono::NaiveDate;
use rusqlite::Connection;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use shared::catalog::Catalog;
use shared::domain::{CouponState, Offer};
use shared::engine::{self, Applied, BasketLine, Candidate, Context, Holding, LoyaltyAccount};
use shared::money::Cents;
use shared::outbox::{self, CouponEvent};
use shared::repo::{self, CouponRow, Customer, Hold};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// Errors of the lane layer. Per-id problems are not errors: they are reported inside
/// the otherwise successful answer.
#[derive(Debug, thiserror::Error)]
pub enum LaneError {
    #[error("database: {0}")]
    Db(#[from] rusqlite::Error),
    #[error("voucher {0} is not known at this store")]
    VoucherNotFound(String),
    #[error("{0}")]
    VoucherConflict(String),
    #[error("{0}")]
    VoucherInvalid(String),
}

/// Lane policy taken from the configuration.
#[derive(Debug, Clone)]
pub struct Policy {
    pub hold_ttl_secs: i64,
    pub self_stacking: bool,
    pub default_coupon_type: String,
    pub receipt_footer: String,
}

/// Days of history the metadata lists keep (CATAPULT: last 30 days).
const HISTORY_SECS: i64 = 30 * 24 * 3600;

// ------------------------------------------------------------------ metadata

/// The metadata lists, borrowing the ids from the customer's coupons and the catalog (a
/// customer may see hundreds of store-wide coupons: no copies).
#[derive(Debug, Default, Serialize, PartialEq, Eq)]
pub struct Metadata<'a> {
    pub available: Vec<&'a str>,
    pub clipped: Vec<&'a str>,
    pub redeemed: Vec<&'a str>,
    pub expired: Vec<&'a str>,
    pub pending: Vec<&'a str>,
}

/// The offer an id refers to: from the in-memory catalog, or from the database for an
/// offer written after the catalog was loaded.
fn find_offer(
    conn: &Connection,
    catalog: &Catalog,
    id: &str,
) -> Result<Option<Arc<Offer>>, LaneError> {
    match catalog.get(id) {
        Some(o) => Ok(Some(Arc::clone(o))),
        None => Ok(repo::offer(conn, id)?.map(Arc::new)),
    }
}

/// A coupon the customer redeemed here that may be used again: its per-customer limit
/// (none, or more than one) is not reached. A commit marks every coupon it redeems
/// `redeemed` (CATAPULT §4.7 rule 1, §6), and such a coupon stays usable, as clipped, without
/// a new clip. Uses are this store's or the provider's count, whichever is higher
/// ([`CouponRow::used`]: a pull learns of uses at other stores). A row that came
/// `redeemed` from an import or a provider counts no local redemption and is used up.
fn reusable(row: &CouponRow, offer: &Offer) -> bool {
    row.state == CouponState::Redeemed
        && row.redemptions > 0
        && offer
            .per_customer_limit
            .is_none_or(|limit| row.used() < limit)
}

/// A customer's coupon rows and holds, read together: the state of each coupon.
pub struct CustomerCoupons {
    pub rows: Vec<CouponRow>,
    pub holds: Vec<Hold>,
}

impl CustomerCoupons {
    pub fn read(conn: &Connection, customer: &str) -> Result<CustomerCoupons, LaneError> {
        Ok(CustomerCoupons {
            rows: repo::customer_coupon_rows(conn, customer)?,
            holds: repo::holds_of_customer(conn, customer)?,
        })
    }

    fn row(&self, offer_id: &str) -> Option<&CouponRow> {
        self.rows
            .binary_search_by(|r| r.offer_id.as_str().cmp(offer_id))
            .ok()
            .map(|i| &self.rows[i])
    }

    /// The live hold listing the coupon, if any. A lapsed hold holds nothing.
    fn live_hold(&self, offer_id: &str, now: i64) -> Option<&Hold> {
        self.holds
            .iter()
            .find(|h| h.is_live(now) && h.holds(offer_id))
    }

    /// The coupon's state as the lanes see it (`pending` while a live hold lists it).
    pub fn state(&self, offer_id: &str, now: i64) -> Option<CouponState> {
        match self.live_hold(offer_id, now) {
            Some(_) => Some(CouponState::Pending),
            None => self.row(offer_id).map(|r| r.state),
        }
    }

    fn holding(&self, offer: &Offer, site: &str, txn: &str, now: i64) -> Holding {
        if let Some(h) = self.live_hold(&offer.id, now) {
            return if h.is_for(site, txn) {
                Holding::PendingHere
            } else {
                Holding::PendingElsewhere
            };
        }
        match self.row(&offer.id) {
            None => Holding::None,
            Some(r) if reusable(r, offer) => Holding::Clipped,
            Some(r) => match r.state {
                CouponState::Clipped | CouponState::Pending => Holding::Clipped,
                CouponState::Available => Holding::Available,
                CouponState::Redeemed => Holding::Redeemed,
                CouponState::Expired => Holding::Expired,
            },
        }
    }

    /// Coupons pending on any live hold, in offer id order.
    fn pending(&self, now: i64) -> BTreeSet<&str> {
        self.holds
            .iter()
            .filter(|h| h.is_live(now))
            .flat_map(|h| h.coupons.iter().map(String::as_str))
            .collect()
    }
}

/// The customer's coupons by list; every id appears in at most one list.
pub fn metadata<'a>(
    conn: &Connection,
    catalog: &'a Catalog,
    view: &'a CustomerCoupons,
    today: NaiveDate,
    now: i64,
) -> Result<Metadata<'a>, LaneError> {
    let pending = view.pending(now);
    let mut m = Metadata::default();
    for row in &view.rows {
        let Some(offer) = find_offer(conn, catalog, &row.offer_id)? else {
            continue;
        };
        let recent = now - row.state_at <= HISTORY_SECS;
        if !offer.enabled {
            // A disabled offer can no longer be clipped or used, but what the customer did
            // with it stays true: a redemption of the last 30 days is still listed
            // (§4.2 "already used"), and a coupon an open sale holds is still pending.
            if pending.contains(row.offer_id.as_str()) {
                m.pending.push(&row.offer_id);
            } else if row.state == CouponState::Redeemed && recent {
                m.redeemed.push(&row.offer_id);
            }
            continue;
        }
        let live = offer.start_date <= today && today <= offer.end_date;
        let ended = offer.end_date < today;
        // Expired on the day after its end date, and listed for 30 days from then: an
        // expired state learned later (an import, a pull) does not list it longer.
        let ended_lately = (today - offer.end_date).num_days() <= 30;
        let list = match row.state {
            _ if pending.contains(row.offer_id.as_str()) => Some(&mut m.pending),
            CouponState::Clipped if ended => ended_lately.then_some(&mut m.expired),
            CouponState::Clipped if live => Some(&mut m.clipped),
            CouponState::Available if live => Some(&mut m.available),
            CouponState::Redeemed if recent => Some(&mut m.redeemed),
            // Used more than 30 days ago and usable again: clipped (a clip-free one is not
            // listed, as before its first use).
            CouponState::Redeemed if live && reusable(row, &offer) => {
                offer.requires_clip.then_some(&mut m.clipped)
            }
            CouponState::Expired if recent && ended_lately => Some(&mut m.expired),
            _ => None,
        };
        if let Some(list) = list {
            list.push(&row.offer_id);
        }
    }
    // Coupons held without a row of their own (clip-free offers) are pending too.
    for id in &pending {
        if view.row(id).is_none() {
            m.pending.push(id);
        }
    }
    // Both the rows and the catalog are in id order: one merge walk, no lookups.
    let mut rows = view.rows.iter().peekable();
    for offer in catalog.open_to_all(today) {
        while rows
            .next_if(|r| r.offer_id.as_str() < offer.id.as_str())
            .is_some()
        {}
        let has_row = rows.peek().is_some_and(|r| r.offer_id == offer.id);
        if !has_row && !pending.contains(offer.id.as_str()) {
            m.available.push(&offer.id);
        }
    }
    m.available.sort();
    m.pending.sort();
    Ok(m)
}

// ------------------------------------------------------------------ clip

#[derive(Debug, Default, Serialize, PartialEq, Eq)]
pub struct ClipOutcome {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// (coupon id, error id, details) for ids that could not be changed.
    pub refused: Vec<(String, &'static str, String)>,
}

pub fn clip(
    conn: &Connection,
    customer: &str,
    add: &[String],
    remove: &[String],
    today: NaiveDate,
    now: i64,
) -> Result<ClipOutcome, LaneError> {
    repo::ensure_customer(conn, customer, now)?;
    let customer_ref = repo::customer(conn, customer)?.and_then(|c| c.provider_ref);
    let view = CustomerCoupons::read(conn, customer)?;
    let mut out = ClipOutcome::default();
    // Each id once, in the order given: `added` and `removed` list the ids changed.
    let once = |ids: &'_ [String]| {
        let mut seen = BTreeSet::new();
        ids.iter()
            .filter(|id| seen.insert(id.as_str()))
            .cloned()
            .collect::<Vec<String>>()
    };
    let (add, remove) = (once(add), once(remove));
    for id in &add {
        let Some(offer) = repo::offer(conn, id)? else {
            out.refused.push((
                id.clone(),
                "COUPON_NOT_FOUND",
                format!("coupon {id} is not in the catalog"),
            ));
            continue;
        };
        let state = view.state(id, now);
        let live = offer.usable_on(today);
        match state {
            // A clipped coupon past its end date is expired (CATAPULT §6): not clipped now.
            Some(CouponState::Clipped) if offer.end_date < today => {
                out.refused
                    .push((id.clone(), "COUPON_UNAVAILABLE", expired(id, &offer)));
            }
            Some(CouponState::Clipped | CouponState::Pending) => out.added.push(id.clone()),
            // Redeemed and usable again: it keeps its clip.
            Some(CouponState::Redeemed)
                if live && view.row(id).is_some_and(|r| reusable(r, &offer)) =>
            {
                out.added.push(id.clone());
            }
            Some(CouponState::Redeemed) => out.refused.push((
                id.clone(),
                "COUPON_UNAVAILABLE",
                format!("coupon {id} was already redeemed"),
            )),
            // The customer's copy expired (a provider said so) even if the offer still
            // runs: CATAPULT §6 has no way out of expired.
            Some(CouponState::Expired) => out.refused.push((
                id.clone(),
                "COUPON_UNAVAILABLE",
                format!("coupon {id} has expired for this customer"),
            )),
            _ if !live => out.refused.push((
                id.clone(),
                "COUPON_UNAVAILABLE",
                format!("coupon {id} is not valid today"),
            )),
            None if offer.targeted => out.refused.push((
                id.clone(),
                "COUPON_UNAVAILABLE",
                format!("coupon {id} is not offered to this customer"),
            )),
            _ => {
                set_clipped(conn, &offer, customer, customer_ref.as_deref(), true, now)?;
                out.added.push(id.clone());
            }
        }
    }
    for id in &remove {
        let Some(offer) = repo::offer(conn, id)? else {
            out.refused.push((
                id.clone(),
                "COUPON_NOT_FOUND",
                format!("coupon {id} is not in the catalog"),
            ));
            continue;
        };
        match view.state(id, now) {
            // Expired stays expired (CATAPULT §6 has no unclip from expired), listed for 30 days.
            Some(CouponState::Clipped) if offer.end_date < today => {
                out.refused
                    .push((id.clone(), "COUPON_UNAVAILABLE", expired(id, &offer)));
            }
            Some(CouponState::Clipped) => {
                set_clipped(conn, &offer, customer, customer_ref.as_deref(), false, now)?;
                out.removed.push(id.clone());
            }
            Some(CouponState::Pending) => out.refused.push((
                id.clone(),
                "COUPON_UNAVAILABLE",
                format!("coupon {id} is in use on an open sale"),
            )),
            Some(CouponState::Redeemed | CouponState::Expired) => out.refused.push((
                id.clone(),
                "COUPON_UNAVAILABLE",
                format!("coupon {id} can no longer be unclipped"),
            )),
            Some(CouponState::Available) | None => out.removed.push(id.clone()),
        }
    }
    Ok(out)
}

fn expired(id: &str, offer: &Offer) -> String {
    format!(
        "coupon {id} expired on {}",
        offer.end_date.format("%Y-%m-%d")
    )
}

/// Clips (or unclips) a coupon and queues the activation its provider needs.
fn set_clipped(
    conn: &Connection,
    offer: &Offer,
    customer: &str,
    customer_ref: Option<&str>,
    clipped: bool,
    now: i64,
) -> Result<(), LaneError> {
    let state = if clipped {
        CouponState::Clipped
    } else {
        CouponState::Available
    };
    repo::set_coupon_state(conn, customer, &offer.id, state, now, true)?;
    if !offer.requires_clip {
        // A coupon that needs no clip has nothing to activate upstream (Convercus allows
        // (de)activation only of coupons with `activation.activatable = true`).
        return Ok(());
    }
    let coupon_ref = repo::coupon_provider_ref(conn, customer, &offer.id)?;
    let items = outbox::for_activation(
        event(offer, coupon_ref.as_deref(), customer, customer_ref),
        clipped,
        outbox::next_event_seq(conn)?,
    );
    Ok(enqueue_all(conn, items, now)?)
}

/// The outbox event of a customer's coupon. `coupon_ref` is the provider's id of this
/// customer's copy of the coupon (Convercus accountCouponId) when the provider has one.
fn event<'a>(
    offer: &'a Offer,
    coupon_ref: Option<&'a str>,
    customer: &'a str,
    customer_ref: Option<&'a str>,
) -> CouponEvent<'a> {
    CouponEvent {
        provider: &offer.provider,
        provider_ref: coupon_ref.unwrap_or(&offer.provider_ref),
        offer_id: &offer.id,
        external_id: &offer.external_id,
        customer_id: customer,
        customer_ref,
    }
}

fn enqueue_all(conn: &Connection, items: Vec<outbox::NewItem>, now: i64) -> rusqlite::Result<()> {
    items
        .iter()
        .try_for_each(|i| outbox::enqueue(conn, i, now).map(|_| ()))
}

// ------------------------------------------------------------------ update

pub struct UpdateInput {
    pub site: String,
    pub customer: String,
    pub txn: String,
    pub terminal: Option<i64>,
    pub cashier: Option<i64>,
    pub basket: Vec<BasketLine>,
    /// The request body as received: posted to analytics providers with the sale.
    pub sale_json: String,
}

/// One coupon to send back, with the offer's display data.
pub struct AppliedCoupon {
    pub applied: Applied,
    pub offer: Arc<Offer>,
}

pub struct UpdateOutcome {
    pub applied: Vec<AppliedCoupon>,
    pub customer: Option<Customer>,
    pub loyalty: Option<LoyaltyAccount>,
    pub total: Cents,
}

/// An evaluation made outside the writer, with what it was based on, so the writer can
/// check that nothing it depends on changed before it places the hold.
pub struct Evaluated {
    pub outcome: UpdateOutcome,
    basis: CustomerCoupons,
    /// Store-wide limits depend on other customers' holds: such answers are always
    /// recomputed inside the writer.
    uses_global_limits: bool,
    /// A card never seen at this store: no customer row, no coupon row (a card read-through
    /// may look it up; see `read_through`).
    pub unseen: bool,
}

/// What was stored of the latest non-transient update: used by commit.
#[derive(Debug, Default, Serialize, Deserialize)]
struct StoredUpdate {
    applied: BTreeMap<String, i64>,
    #[serde(default)]
    sale: Value,
    /// The points-priced coupons among `applied`, with the cost the lane prompted: what a
    /// commit charges, however the offer is priced by then (a pre-authorisation is "on N
    /// points", catapult-loyalty-redemption.md §2), and never redeemed by an empty list.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    points: BTreeMap<String, i64>,
}

/// Evaluates the sale for the customer. Reads only: the whole answer of a transient update,
/// and the first half of a non-transient one.
pub fn evaluate(
    conn: &Connection,
    catalog: &Catalog,
    policy: &Policy,
    input: &UpdateInput,
    today: NaiveDate,
    now: i64,
) -> Result<Evaluated, LaneError> {
    let customer = repo::customer(conn, &input.customer)?;
    let view = CustomerCoupons::read(conn, &input.customer)?;
    let mut offers: Vec<Arc<Offer>> = Vec::with_capacity(view.rows.len());
    for row in &view.rows {
        if let Some(offer) = find_offer(conn, catalog, &row.offer_id)? {
            offers.push(offer);
        }
    }
    for o in catalog.automatic(today) {
        if view.row(&o.id).is_none() {
            offers.push(Arc::clone(o));
        }
    }
    let mut candidates = Vec::with_capacity(offers.len());
    for offer in &offers {
        let global_redemptions = match offer.global_limit {
            Some(_) => repo::global_usage(conn, &offer.id, &input.site, &input.txn, now)?,
            None => 0,
        };
        candidates.push(Candidate {
            offer,
            holding: view.holding(offer, &input.site, &input.txn, now),
            customer_redemptions: view.row(&offer.id).map_or(0, CouponRow::used),
            global_redemptions,
        });
    }
    // Available balance = total − points held by the customer's other open sales (the
    // points-priced coupons their holds list), as a pre-authorisation reserves them
    // (catapult-loyalty-redemption.md §4).
    let mut held_elsewhere = 0i64;
    for h in view
        .holds
        .iter()
        .filter(|h| h.is_live(now) && !h.is_for(&input.site, &input.txn))
    {
        for id in &h.optional {
            if let Some(cost) = find_offer(conn, catalog, id)?.and_then(|o| o.loyalty_cost) {
                held_elsewhere = held_elsewhere.saturating_add(cost);
            }
        }
    }
    let loyalty = customer.as_ref().and_then(|c| {
        c.loyalty_id.clone().map(|id| LoyaltyAccount {
            id,
            balance: c.points_balance.saturating_sub(held_elsewhere).max(0),
        })
    });
    let ctx = Context {
        today,
        self_stacking: policy.self_stacking,
        loyalty: loyalty.clone(),
    };
    let evaluation = engine::evaluate(&input.basket, &candidates, &ctx);
    drop(candidates);
    let uses_global_limits = offers.iter().any(|o| o.global_limit.is_some());
    let by_id: BTreeMap<&str, &Arc<Offer>> = offers.iter().map(|o| (o.id.as_str(), o)).collect();
    let applied: Vec<AppliedCoupon> = evaluation
        .applied
        .into_iter()
        .filter_map(|a| {
            by_id.get(a.coupon_id.as_str()).map(|offer| AppliedCoupon {
                offer: Arc::clone(offer),
                applied: a,
            })
        })
        .collect();
    let total = applied.iter().map(|a| a.applied.total).sum();
    let unseen = customer.is_none() && view.rows.is_empty();
    Ok(Evaluated {
        unseen,
        outcome: UpdateOutcome {
            applied,
            customer,
            loyalty,
            total,
        },
        basis: view,
        uses_global_limits,
    })
}

/// A non-transient update, inside the writer: the sale's hold becomes exactly the applied
/// coupons (one row, replacing what this sale held before). `prepared` is an evaluation
/// made on a read connection just before; it is used only if the customer's coupon rows
/// and holds are still exactly what it saw, otherwise the sale is evaluated again here, so
/// two lanes can never both hold one coupon.
pub fn update(
    conn: &Connection,
    catalog: &Catalog,
    policy: &Policy,
    input: &UpdateInput,
    prepared: Option<Evaluated>,
    today: NaiveDate,
    now: i64,
) -> Result<UpdateOutcome, LaneError> {
    repo::ensure_customer(conn, &input.customer, now)?;
    let still_valid = |p: &Evaluated| -> Result<bool, LaneError> {
        if p.uses_global_limits {
            return Ok(false);
        }
        let current = CustomerCoupons::read(conn, &input.customer)?;
        Ok(current.rows == p.basis.rows && current.holds == p.basis.holds)
    };
    let fresh = match prepared {
        Some(p) if still_valid(&p)? => p,
        _ => evaluate(conn, catalog, policy, input, today, now)?,
    };
    let outcome = fresh.outcome;
    if let Some(previous) = repo::transaction(conn, &input.site, &input.txn)? {
        if previous.state == "committed" {
            // The sale is finished; answer, but never hold anything for it again.
            log::warn!(site = input.site.as_str(), transaction = input.txn.as_str(), lane = input.terminal.unwrap_or(0); "update for an already committed transaction: answered without holds");
            return Ok(outcome);
        }
    }
    // A points coupon is held (its points reserved from the customer's other sales) only
    // while the balance this sale sees covers it, in the order offered: the POS "prompts
    // only if the balance is sufficient" (CATAPULT §5.10), and a hold on points the
    // customer does not have would only hide their balance from their other lanes
    // (catapult-loyalty-redemption.md §3 code 5). One the POS takes anyway is still
    // redeemed at commit, flagged as a conflict (`commit`).
    let mut points_left = outcome.loyalty.as_ref().map_or(0, |l| l.balance);
    let mut unaffordable = BTreeSet::new();
    for a in outcome
        .applied
        .iter()
        .filter(|a| a.applied.optional.is_some())
    {
        let cost = a.offer.loyalty_cost.unwrap_or(0);
        if cost <= points_left {
            points_left -= cost;
        } else {
            unaffordable.insert(a.offer.id.as_str());
        }
    }
    let ids = |optional_only: bool| -> Vec<String> {
        outcome
            .applied
            .iter()
            .filter(|a| !optional_only || a.applied.optional.is_some())
            .filter(|a| !unaffordable.contains(a.offer.id.as_str()))
            .map(|a| a.offer.id.clone())
            .collect()
    };
    repo::put_hold(
        conn,
        &repo::Hold {
            site: input.site.clone(),
            txn: input.txn.clone(),
            customer_id: input.customer.clone(),
            coupons: ids(false),
            optional: ids(true),
            expires_at: now + policy.hold_ttl_secs,
        },
    )?;
    let stored = StoredUpdate {
        applied: outcome
            .applied
            .iter()
            .map(|a| (a.offer.id.clone(), a.applied.total.0))
            .collect(),
        // The sale itself is kept only when a provider wants it posted at commit.
        sale: if outcome
            .applied
            .iter()
            .any(|a| outbox::wants_sale(&a.offer.provider))
        {
            serde_json::from_str(&input.sale_json).unwrap_or(Value::Null)
        } else {
            Value::Null
        },
        points: outcome
            .applied
            .iter()
            .filter(|a| a.applied.optional.is_some())
            .filter_map(|a| a.offer.loyalty_cost.map(|cost| (a.offer.id.clone(), cost)))
            .collect(),
    };
    let stored = serde_json::to_string(&stored).unwrap_or_default();
    repo::upsert_open_transaction(
        conn,
        &input.site,
        &input.txn,
        &input.customer,
        input.terminal,
        input.cashier,
        &stored,
        now,
    )?;
    Ok(outcome)
}

// ------------------------------------------------------------------ cancel

/// Releases everything held by the transaction. Idempotent; a committed sale is untouched.
/// Returns how many coupons were released.
pub fn cancel(
    conn: &Connection,
    site: &str,
    customer: &str,
    txn: &str,
    now: i64,
) -> Result<usize, LaneError> {
    let released = match repo::hold_of(conn, site, txn)? {
        Some(h) => {
            if h.customer_id != customer {
                log::info!(site = site, transaction = txn; "cancel released the holds of another customer than the one it names");
            }
            repo::delete_hold(conn, site, txn)?;
            h.coupons.len()
        }
        None => 0,
    };
    // The sale's voucher locks go too, their unlock queued upstream (coupontools.md §5: "on
    // cancel enqueue unlock"), so another lane may use the voucher at once. A resumed sale
    // locks it again.
    for v in repo::vouchers_locked_by(conn, site, txn)? {
        release_voucher_lock(conn, &v, now)?;
        log::info!(site = site, transaction = txn; "cancel released a voucher lock");
    }
    repo::cancel_transaction(conn, site, txn, customer, now)?;
    Ok(released)
}

// ------------------------------------------------------------------ commit

pub struct CommitInput {
    pub site: String,
    pub customer: String,
    pub txn: String,
    pub coupons: Vec<String>,
    /// The request body as received, kept with the sale.
    pub request: String,
    /// Whether the answer names listed coupons it could not redeem (`lanes.commit_errors`).
    pub report_errors: bool,
    /// The store's date: a listed coupon past its end date is expired, unless this sale was
    /// given it before (a late commit).
    pub today: NaiveDate,
}

/// Commits the sale once; a repeat replays the stored answer and changes nothing.
/// Returns the answer's JSON text.
pub fn commit(
    conn: &Connection,
    catalog: &Catalog,
    input: &CommitInput,
    now: i64,
    redeemed_at: &str,
) -> Result<String, LaneError> {
    let existing = repo::transaction(conn, &input.site, &input.txn)?;
    if let Some(TxnCommitted(response)) = existing.as_ref().and_then(committed) {
        warn_if_other_coupons(conn, input)?;
        return Ok(response);
    }
    let stored: StoredUpdate = existing
        .as_ref()
        .and_then(|t| t.last_update.as_deref())
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or_default();
    let hold =
        repo::hold_of(conn, &input.site, &input.txn)?.filter(|h| h.customer_id == input.customer);
    // The sale's last update was for the customer this commit names (what it applied was
    // given to this shopper).
    let updated_for_customer = existing
        .as_ref()
        .is_some_and(|t| t.customer_id == input.customer);
    let empty_list = input.coupons.is_empty();

    // Which coupons this commit redeems: the listed ones, or every non-optional one this
    // sale holds. Whatever the sale held and does not redeem is released with its hold.
    let mut to_redeem: Vec<String> = match (&hold, empty_list) {
        (Some(h), true) => h
            .coupons
            .iter()
            .filter(|c| !h.optional.contains(c))
            .cloned()
            .collect(),
        // A late commit (the POS retries while the WAN is down, CATAPULT §4.7): the hold
        // lapsed meanwhile, but the sale is still open and its last non-transient update
        // says what the shopper was given. Coupons used elsewhere since are flagged below.
        (None, true)
            if existing
                .as_ref()
                .is_some_and(|t| t.state == "open" && t.customer_id == input.customer) =>
        {
            let mut given = Vec::new();
            for id in stored
                .applied
                .keys()
                .filter(|id| !stored.points.contains_key(*id))
            {
                if find_offer(conn, catalog, id)?.is_some_and(|o| o.loyalty_cost.is_none()) {
                    given.push(id.clone());
                }
            }
            given
        }
        (None, true) => Vec::new(),
        (_, false) => input.coupons.clone(),
    };
    to_redeem.sort();
    to_redeem.dedup();
    if empty_list && !to_redeem.is_empty() {
        log::info!(site = input.site.as_str(), transaction = input.txn.as_str(), coupons = to_redeem.join(",").as_str(); "commit with an empty list redeems every pending coupon");
    }
    repo::ensure_customer(conn, &input.customer, now)?;
    let customer_row = repo::customer(conn, &input.customer)?;
    let customer_ref = customer_row.as_ref().and_then(|c| c.provider_ref.clone());
    // Points left as this commit spends them (read once, not again per points coupon).
    let mut points_left = customer_row.as_ref().map_or(0, |c| c.points_balance);
    let loyalty_id = customer_row.and_then(|c| c.loyalty_id);
    let view = CustomerCoupons::read(conn, &input.customer)?;
    let mut total = Cents::ZERO;
    // Every digital discount the sale was given, of any provider (also one flagged as a
    // conflict below: the shopper had it): for a provider's report of the whole sale.
    let mut given = Cents::ZERO;
    let mut sale_coupons = Vec::new();
    // Holds of other open sales that lose a coupon this commit redeems, by sale.
    let mut taken: BTreeMap<(String, String), repo::Hold> = BTreeMap::new();
    // Listed coupons this commit could not redeem, for the answer's `errors`.
    let mut not_found = Vec::new();
    let mut unusable = Vec::new();
    for id in &to_redeem {
        let Some(offer) = find_offer(conn, catalog, id)? else {
            log::warn!(site = input.site.as_str(), transaction = input.txn.as_str(), coupon = id.as_str(); "commit lists a coupon that is not in the catalog; acknowledged and ignored");
            not_found.push(id.as_str());
            continue;
        };
        let holding = view.holding(&offer, &input.site, &input.txn, now);
        // This sale was given the coupon: it holds it, or its last update applied it (a late
        // commit whose hold lapsed). The shopper had the discount.
        let given_here = holding == Holding::PendingHere
            || (updated_for_customer && stored.applied.contains_key(id));
        let live = offer.usable_on(input.today);
        let usable = match holding {
            Holding::Redeemed | Holding::Expired => false,
            // Given here but held by another open sale since (this one's hold lapsed): not
            // used there yet, so this finished sale redeems it (CATAPULT §4.7: "still
            // redeems the listed coupons if they are not redeemed elsewhere") and the open
            // sale loses it below. Otherwise the open sale could drop it at its commit and
            // the coupon would be clipped again after this shopper already had it. The same
            // for a coupon that ended (or was disabled) after the sale was given it.
            _ if given_here => true,
            // In use on another open sale and never given here: it "cannot be used on any
            // other transaction" (§4.5), so COUPON_UNAVAILABLE (§5.15), and that sale keeps it.
            Holding::PendingElsewhere => false,
            // Ended, not started yet or disabled, and never given here (§5.15 "expired").
            _ if !live => false,
            Holding::PendingHere | Holding::Clipped => true,
            Holding::None | Holding::Available => !offer.requires_clip,
        };
        if usable && holding == Holding::PendingElsewhere {
            if let Some(h) = view.live_hold(id, now) {
                let other = taken
                    .entry((h.site.clone(), h.txn.clone()))
                    .or_insert_with(|| h.clone());
                other.coupons.retain(|c| c != id);
                other.optional.retain(|c| c != id);
                log::warn!(site = input.site.as_str(), transaction = input.txn.as_str(), coupon = id.as_str(), other = other.txn.as_str(); "commit redeems a coupon another open sale holds; that sale no longer holds it (its commit will be flagged as a conflict)");
            }
        }
        // Points the customer does not have (any more): the sale is done and the shopper
        // had the coupon, so it is redeemed, the balance goes to 0, and store IT sees a
        // conflict (catapult-loyalty-redemption.md §3 code 5, "Insufficient Balance").
        // The cost the lane prompted for this sale, else (never prompted here) today's.
        let points_cost = stored
            .points
            .get(id)
            .copied()
            .filter(|_| updated_for_customer)
            .or(offer.loyalty_cost);
        let points_short = usable && points_cost.is_some_and(|cost| points_left < cost);
        let discount = Cents(stored.applied.get(id).copied().unwrap_or(0));
        given += discount;
        repo::insert_redemption(
            conn,
            &input.site,
            &input.txn,
            &input.customer,
            id,
            discount,
            !usable || points_short,
            empty_list,
            now,
        )?;
        if !usable {
            // The sale is done and the shopper had the discount: acknowledge, and flag it.
            log::warn!(site = input.site.as_str(), transaction = input.txn.as_str(), coupon = id.as_str(); "commit lists a coupon already used, held by another open sale, or expired; recorded as a conflict for store IT");
            unusable.push(id.as_str());
            continue;
        }
        repo::redeem_coupon(conn, &input.customer, id, now)?;
        if offer.global_limit.is_some() {
            repo::bump_offer_redeemed(conn, id)?;
        }
        if let Some(cost) = points_cost {
            let balance = points_left;
            points_left = points_left.saturating_sub(cost).max(0);
            if balance < cost {
                // The sale is done; the lane's own check came before another sale spent them.
                log::warn!(site = input.site.as_str(), transaction = input.txn.as_str(), coupon = id.as_str(); "points coupon redeemed with {balance} points left of the {cost} it costs; balance set to 0, recorded as a conflict for store IT");
            }
            repo::spend_points(conn, &input.customer, cost)?;
        }
        let coupon_ref = repo::coupon_provider_ref(conn, &input.customer, id)?;
        enqueue_all(
            conn,
            outbox::for_redemption(
                event(
                    &offer,
                    coupon_ref.as_deref(),
                    &input.customer,
                    customer_ref.as_deref(),
                ),
                &input.site,
                &input.txn,
                discount.0,
                redeemed_at,
            ),
            now,
        )?;
        if outbox::wants_sale(&offer.provider) {
            sale_coupons.push(outbox::SaleCoupon {
                offer_id: offer.id.clone(),
                coupon_code: if offer.external_id.is_empty() {
                    offer.provider_ref.clone()
                } else {
                    offer.external_id.clone()
                },
                offer_barcode: coupon_ref.unwrap_or_else(|| offer.provider_ref.clone()),
                discount_cents: discount.0,
            });
        }
        total += discount;
    }
    let sale_items = outbox::for_sale(
        &input.site,
        &input.txn,
        &input.customer,
        loyalty_id.as_deref(),
        &sale_coupons,
        given.0,
        &stored.sale,
        redeemed_at,
    );
    enqueue_all(conn, sale_items, now)?;
    for hold in taken.values() {
        repo::put_hold(conn, hold)?;
    }
    repo::delete_hold(conn, &input.site, &input.txn)?;
    let errors = if input.report_errors && !empty_list {
        commit_errors(&input.txn, existing.is_none(), &not_found, &unusable)
    } else {
        Vec::new()
    };
    let response = commit_response(total, &errors);
    repo::commit_transaction(
        conn,
        &input.site,
        &input.txn,
        &input.customer,
        &input.request,
        &response,
        now,
    )?;
    Ok(response)
}

struct TxnCommitted(String);

/// A repeated commit is answered with the first answer whatever it lists (the issue:
/// "replays the first answer"); one that lists other coupons than the first did changes
/// nothing either, but says so, since the POS and the store now disagree on the sale
/// (catapult-loyalty-redemption.md §3 code 8: "Completion Identifier Duplicated with
/// Differing Values").
fn warn_if_other_coupons(conn: &Connection, input: &CommitInput) -> Result<(), LaneError> {
    let coupons = |text: &str| -> Option<BTreeSet<String>> {
        let v: Value = serde_json::from_str(text).ok()?;
        Some(
            v.get("coupons")?
                .as_array()?
                .iter()
                .filter_map(|c| c.as_str().map(str::to_owned))
                .collect(),
        )
    };
    let Some(first) = repo::commit_request(conn, &input.site, &input.txn)?
        .as_deref()
        .and_then(coupons)
    else {
        return Ok(());
    };
    let now: BTreeSet<String> = input.coupons.iter().cloned().collect();
    if first != now {
        let list = |s: &BTreeSet<String>| s.iter().cloned().collect::<Vec<_>>().join(",");
        log::warn!(site = input.site.as_str(), transaction = input.txn.as_str(), first = list(&first).as_str(), now = list(&now).as_str(); "a repeated commit lists other coupons than the first; the first answer is replayed and nothing changes: check the sale at the POS");
    }
    Ok(())
}

fn committed(t: &repo::TxnRow) -> Option<TxnCommitted> {
    (t.state == "committed")
        .then(|| TxnCommitted(t.commit_response.clone().unwrap_or_else(|| "{}".to_owned())))
}

/// What a commit answer says about the listed coupons it could not redeem (CATAPULT §5.15,
/// "per-ID, request otherwise succeeds"): `COUPON_NOT_FOUND` for each id not in the
/// catalog, `COUPON_UNAVAILABLE` for each one already used, in use on another open sale or
/// expired (and not given to this sale by its own update) and, for a
/// sale never seen here (no update, no cancel), `INVALID_TRANSACTION` first. The answer is
/// still 200 and the sale recorded (§4.7: acknowledge; the shopper had the discount); the
/// conflict is flagged for store IT.
fn commit_errors(
    txn: &str,
    never_seen: bool,
    not_found: &[&str],
    unusable: &[&str],
) -> Vec<(&'static str, String)> {
    let mut errors = Vec::new();
    if never_seen && !(not_found.is_empty() && unusable.is_empty()) {
        let ids: Vec<&str> = not_found.iter().chain(unusable).copied().collect();
        errors.push((
            "INVALID_TRANSACTION",
            format!(
                "transaction {txn} was never updated here and lists coupons that cannot be redeemed: {}; the sale is recorded without them",
                ids.join(", ")
            ),
        ));
    }
    for id in not_found {
        errors.push((
            "COUPON_NOT_FOUND",
            format!("coupon {id} is not in the catalog; the sale is recorded without it"),
        ));
    }
    for id in unusable {
        errors.push((
            "COUPON_UNAVAILABLE",
            format!("coupon {id} is already used, in use on another open sale, or expired; the sale is recorded and the conflict flagged for store IT"),
        ));
    }
    errors
}

fn commit_response(total: Cents, errors: &[(&'static str, String)]) -> String {
    let lines = if total > Cents::ZERO {
        json!([{"type": "TEXT", "content": format!("Digital coupons redeemed: {total}")}])
    } else {
        json!([])
    };
    if errors.is_empty() {
        return json!({ "receiptLines": lines }).to_string();
    }
    let errors: Vec<Value> = errors
        .iter()
        .map(|(id, details)| json!({"id": id, "details": details}))
        .collect();
    json!({"receiptLines": lines, "errors": errors}).to_string()
}

// ------------------------------------------------------------------ vouchers

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VoucherView {
    pub code: String,
    pub provider: String,
    pub description: String,
    pub value: Value,
    pub min_spend: Value,
    pub valid_from: Option<String>,
    pub valid_until: Option<String>,
    pub state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub locked_by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub validated_at: Option<String>,
    pub message: String,
}

/// What a lane is told about a voucher. `today` is the store-local date (`YYYY-MM-DD`):
/// a voucher outside its validity window is `invalid` ("not valid today").
fn voucher_view(v: &repo::Voucher, today: &str, now: i64) -> VoucherView {
    let locked = lock_is_live(v, now);
    let state = match v.state.as_str() {
        "validated" | "void" => v.state.clone(),
        _ if out_of_window(v, today) => "invalid".to_owned(),
        "locked" if locked => "locked".to_owned(),
        _ => "active".to_owned(),
    };
    let message = match state.as_str() {
        "invalid" => "not valid today".to_owned(),
        "validated" => format!(
            "already used at {}",
            v.validated_at.clone().unwrap_or_default()
        ),
        "locked" if v.lock_site.is_none() => LOCKED_UPSTREAM.to_owned(),
        "locked" => "in use on an open sale".to_owned(),
        "void" => "voided by the provider".to_owned(),
        _ => "valid".to_owned(),
    };
    VoucherView {
        code: v.code.clone(),
        provider: v.provider.clone(),
        description: v.description.clone(),
        value: crate::json_money(v.value),
        min_spend: crate::json_money(v.min_spend),
        valid_from: v.valid_from.clone(),
        valid_until: v.valid_until.clone(),
        state,
        locked_by: if locked { v.lock_txn.clone() } else { None },
        validated_at: v.validated_at.clone(),
        message,
    }
}

/// Why a voucher locked by another system (at the provider) is refused.
const LOCKED_UPSTREAM: &str = "locked at the provider by another system";

/// Whether a voucher is locked now: by a lane of this store until its lock lapses, or at the
/// provider by another system (a pulled lock has no local owner) until a pull unlocks it.
/// Coupontools: "if you use locking, the lookup must also check `locked`".
fn lock_is_live(v: &repo::Voucher, now: i64) -> bool {
    v.state == "locked" && (v.lock_site.is_none() || v.lock_expires_at.is_some_and(|e| e > now))
}

fn out_of_window(v: &repo::Voucher, today: &str) -> bool {
    v.valid_from.as_deref().is_some_and(|f| today < f)
        || v.valid_until.as_deref().is_some_and(|u| today > u)
}

pub fn voucher_lookup(
    conn: &Connection,
    code: &str,
    today: &str,
    now: i64,
) -> Result<VoucherView, LaneError> {
    Ok(voucher_view(&find_voucher(conn, code)?, today, now))
}

/// The voucher a lane scanned, by its code or its alias (a Coupontools own validation
/// code); every change after this names the row by its own `code`.
fn find_voucher(conn: &Connection, scanned: &str) -> Result<repo::Voucher, LaneError> {
    repo::voucher(conn, scanned)?.ok_or_else(|| LaneError::VoucherNotFound(scanned.to_owned()))
}

/// Why a voucher cannot be used by (site, txn) now, if it cannot.
fn voucher_blocked(
    v: &repo::Voucher,
    site: &str,
    txn: &str,
    today: &str,
    now: i64,
) -> Option<String> {
    if v.state == "validated" {
        return Some(format!(
            "already used at {}",
            v.validated_at.clone().unwrap_or_default()
        ));
    }
    if v.state == "void" {
        return Some("voided by the provider".to_owned());
    }
    if out_of_window(v, today) {
        return Some("not valid today".to_owned());
    }
    if v.state == "locked" && v.lock_site.is_none() {
        return Some(LOCKED_UPSTREAM.to_owned());
    }
    let locked_elsewhere = lock_is_live(v, now)
        && !(v.lock_site.as_deref() == Some(site) && v.lock_txn.as_deref() == Some(txn));
    locked_elsewhere.then(|| "in use on another open sale".to_owned())
}

pub fn voucher_lock(
    conn: &Connection,
    code: &str,
    site: &str,
    txn: &str,
    ttl: i64,
    today: &str,
    now: i64,
) -> Result<VoucherView, LaneError> {
    let v = find_voucher(conn, code)?;
    if let Some(why) = voucher_blocked(&v, site, txn, today, now) {
        return Err(LaneError::VoucherConflict(why));
    }
    // Another sale's lock lapsed (that sale was abandoned): its unlock goes upstream first,
    // so the provider sees lock, unlock, lock.
    if v.state == "locked"
        && v.lock_site.is_some()
        && !(v.lock_site.as_deref() == Some(site) && v.lock_txn.as_deref() == Some(txn))
    {
        release_voucher_lock(conn, &v, now)?;
    }
    repo::lock_voucher(conn, &v.code, site, txn, now + ttl, now)?;
    queue_voucher(conn, &v, "lock", site, txn, None, now)?;
    voucher_lookup(conn, &v.code, today, now)
}

pub fn voucher_unlock(
    conn: &Connection,
    code: &str,
    site: &str,
    txn: &str,
    today: &str,
    now: i64,
) -> Result<VoucherView, LaneError> {
    let v = find_voucher(conn, code)?;
    if v.state == "locked"
        && v.lock_site.as_deref() == Some(site)
        && v.lock_txn.as_deref() == Some(txn)
    {
        release_voucher_lock(conn, &v, now)?;
    }
    voucher_lookup(conn, &v.code, today, now)
}

/// Queues a voucher operation for its provider (nothing for a provider without it).
fn queue_voucher(
    conn: &Connection,
    v: &repo::Voucher,
    operation: &'static str,
    site: &str,
    txn: &str,
    money_spent_cents: Option<i64>,
    now: i64,
) -> Result<(), LaneError> {
    let items = outbox::for_voucher(
        &v.provider,
        &v.provider_ref,
        &v.code,
        operation,
        site,
        txn,
        money_spent_cents,
        outbox::next_event_seq(conn)?,
    );
    if operation == "validate" {
        let dropped = outbox::drop_unsent_unlocks(conn, &v.code, now)?;
        if dropped > 0 {
            log::info!(
                "voucher {}: {dropped} unlock(s) not sent yet dropped, a validation follows",
                v.code
            );
        }
    }
    enqueue_all(conn, items, now)?;
    Ok(())
}

/// Unlocks a voucher a lane of this store locked, and queues the unlock for the provider
/// under the sale that held the lock (Coupontools: lock, then unlock or validate).
fn release_voucher_lock(conn: &Connection, v: &repo::Voucher, now: i64) -> Result<(), LaneError> {
    let (Some(site), Some(txn)) = (v.lock_site.as_deref(), v.lock_txn.as_deref()) else {
        return Ok(());
    };
    repo::unlock_voucher(conn, &v.code, now)?;
    queue_voucher(conn, v, "unlock", site, txn, None, now)
}

/// Releases the voucher locks of abandoned sales (lapsed without unlock or validation) and
/// queues their unlock upstream, so such a voucher is not left locked at the provider for
/// good (a lapsed lock already reads as free here). At most `limit` per call; returns how
/// many.
pub fn release_lapsed_voucher_locks(
    conn: &Connection,
    now: i64,
    limit: i64,
) -> Result<usize, LaneError> {
    let lapsed = repo::lapsed_voucher_locks(conn, now, limit)?;
    for v in &lapsed {
        release_voucher_lock(conn, v, now)?;
    }
    Ok(lapsed.len())
}

#[allow(clippy::too_many_arguments)]
pub fn voucher_validate(
    conn: &Connection,
    code: &str,
    site: &str,
    txn: &str,
    money_spent: Cents,
    today: &str,
    stamp: &str,
    now: i64,
) -> Result<VoucherView, LaneError> {
    let v = find_voucher(conn, code)?;
    if v.state == "validated"
        && v.validated_site.as_deref() == Some(site)
        && v.validated_txn.as_deref() == Some(txn)
    {
        // A retried validate of the same sale: the same answer, nothing new queued.
        return Ok(voucher_view(&v, today, now));
    }
    if let Some(why) = voucher_blocked(&v, site, txn, today, now) {
        return Err(LaneError::VoucherConflict(why));
    }
    if money_spent < v.min_spend {
        return Err(LaneError::VoucherInvalid(format!(
            "the sale must reach {} to use this voucher",
            v.min_spend
        )));
    }
    repo::validate_voucher(conn, &v.code, site, txn, stamp, money_spent, now)?;
    queue_voucher(conn, &v, "validate", site, txn, Some(money_spent.0), now)?;
    voucher_lookup(conn, &v.code, today, now)
}
