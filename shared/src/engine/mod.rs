//! The discount engine: given a basket, the offers that might apply and the customer's
//! relation to each, decide which coupons apply and how much each takes off which line.
//!
//! The engine is pure (no I/O, no clock, no provider knowledge) so that it can be tested
//! exhaustively and its answer for a transaction is reproducible from its inputs alone.
//!
//! # Basket
//!
//! A line's amount is `extend(unit_discount_price, quantity)`: the price after POS-side
//! discounts times the quantity, rounded once. Lines with a quantity or an amount that is
//! not positive (returns, voids, free items) are never discounted and do not count toward
//! any requirement, because a coupon must never be earned or paid out on goods handed back.
//! The basket subtotal, which `min_basket` thresholds compare against, is the sum of the
//! positive line amounts.
//!
//! Line ids are expected to be unique within a basket (the POS numbers its lines). The
//! engine sorts lines internally, so the order they arrive in never changes the answer.
//!
//! # Units
//!
//! Requirements and per-unit rewards count units. A line with a whole-number quantity holds
//! `quantity / 1000` units, each worth `unit_discount_price`; a weighed line (fractional
//! quantity) is one unit worth the whole line amount, because half a pound of apples is
//! bought as one item. When a line's value has been reduced by an earlier stacked coupon,
//! its remaining value is shared over its units as evenly as cents allow (see `basket.rs`),
//! so unit values always add up exactly to what is left on the line.
//!
//! # Eligibility
//!
//! Checked in a fixed order; the first failure is the reported [`SkipReason`]: disabled,
//! outside the (inclusive) validity window, targeted at other customers, held by another
//! open transaction, customer limit reached (or already redeemed), store-wide limit reached,
//! not clipped when clipping is required, no loyalty account for a points coupon (see
//! `eligibility.rs`).
//!
//! # Mechanics
//!
//! See `mechanics.rs` for how each [`Mechanic`](crate::domain::Mechanic) turns into line
//! discounts. Every coupon's total is rounded once and split over its lines with
//! [`distribute`](crate::money::distribute) or computed per unit, so a coupon's parts always
//! add up exactly to its total.
//!
//! # Stacking
//!
//! Coupons are applied greedily. Each eligible coupon is first evaluated on the whole basket
//! on its own; they are then applied item coupons first and basket-wide coupons (no
//! requirement or reward items) last, each group in order of that stand-alone total
//! (largest first, then coupon id), each one evaluated again against what earlier coupons
//! left. Basket-wide coupons go last because they can use any line: taken first, they would
//! crowd every item coupon out of the basket.
//!
//! * without self-stacking the POS keeps only the best coupon per item line, so a line that
//!   an earlier coupon discounted is removed from the basket seen by later coupons (their
//!   requirements must be met by the remaining lines);
//! * with self-stacking several coupons may discount one line, so later coupons see each
//!   line valued at what is left of it, and no line ever goes below zero.
//!
//! A coupon that was eligible on its own but gets nothing after earlier coupons is skipped
//! as [`SkipReason::OutStacked`]. Optional (loyalty points) coupons are applied after every
//! mandatory one, because the cashier may decline them and they must not take lines away
//! from coupons the customer gets anyway.
//!
//! The minimum basket amount is always checked against the original subtotal: earlier
//! coupons do not shrink what the customer bought.

mod basket;
mod eligibility;
mod mechanics;

#[cfg(test)]
pub(crate) mod tests;

use crate::domain::{Offer, Upc};
use crate::money::{Cents, MilliQty};
use basket::Line;
use chrono::NaiveDate;
use mechanics::Parts;
use std::cmp::Reverse;
use std::collections::BTreeMap;

/// One sale line as the engine sees it (already parsed & normalised by the caller).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BasketLine {
    pub line_id: i64,
    pub upc: Upc,
    pub dept: Option<i64>,
    pub quantity: MilliQty,
    /// Regular unit price; informational, the engine discounts from `unit_discount_price`.
    pub unit_price: Cents,
    /// Unit price after POS-side discounts.
    pub unit_discount_price: Cents,
}

/// The customer's relation to an offer, relative to the transaction being evaluated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holding {
    /// No per-customer row.
    None,
    Available,
    Clipped,
    /// Held by this same transaction.
    PendingHere,
    /// Held by another open transaction.
    PendingElsewhere,
    Redeemed,
    Expired,
}

/// An offer to evaluate together with the customer's relation to it.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    pub offer: &'a Offer,
    pub holding: Holding,
    pub customer_redemptions: u32,
    /// Redeemed at the store plus pending on OTHER transactions.
    pub global_redemptions: u32,
}

/// The customer's loyalty balance that pays for optional coupons.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoyaltyAccount {
    pub id: String,
    pub balance: i64,
}

/// Everything about the transaction that is not a basket line or an offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Context {
    /// Store-local date.
    pub today: NaiveDate,
    /// Whether the POS lets several of our coupons discount the same line.
    pub self_stacking: bool,
    pub loyalty: Option<LoyaltyAccount>,
}

/// The part of a coupon's discount taken off one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineDiscount {
    pub line_id: i64,
    pub discount: Cents,
}

/// What an optional coupon costs in loyalty points, and from which account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptionalCost {
    pub loyalty_id: String,
    pub cost: i64,
}

/// A coupon that applies: `total` is exactly the sum of `lines`, which holds one entry per
/// discounted line (discount > 0), sorted by line id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub coupon_id: String,
    pub lines: Vec<LineDiscount>,
    pub total: Cents,
    pub optional: Option<OptionalCost>,
}

/// Why a candidate coupon does not apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    Disabled,
    OutOfWindow,
    NotTargeted,
    NotClipped,
    HeldElsewhere,
    CustomerLimitReached,
    GlobalLimitReached,
    NoLoyaltyAccount,
    RequirementNotMet,
    BasketThresholdNotMet,
    NothingToDiscount,
    OutStacked,
}

/// A candidate coupon that does not apply, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub coupon_id: String,
    pub reason: SkipReason,
}

/// The engine's answer: every candidate appears exactly once, either applied or skipped;
/// both lists are sorted by coupon id.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Evaluation {
    pub applied: Vec<Applied>,
    pub skipped: Vec<Skipped>,
}

/// Decides which candidate coupons apply to the basket and how their discounts are spread
/// over its lines. See the module documentation for the rules.
pub fn evaluate(basket: &[BasketLine], candidates: &[Candidate<'_>], ctx: &Context) -> Evaluation {
    let lines = basket::discountable_lines(basket);
    let subtotal: Cents = lines.iter().map(|line| line.amount).sum();
    let mut evaluation = Evaluation::default();

    let mut ranked = Vec::new();
    for candidate in sorted_by_id(candidates) {
        let standalone = eligibility::check(&candidate, ctx)
            .and_then(|()| mechanics::discount(&candidate.offer.rule, &lines, subtotal));
        match standalone {
            Ok(parts) => ranked.push((candidate, parts.values().copied().sum::<Cents>())),
            Err(reason) => evaluation.skip(candidate.offer, reason),
        }
    }
    // Mandatory coupons before optional ones, item coupons before basket-wide ones, then the
    // biggest stand-alone discount first, so that when coupons compete for a line the
    // customer gets the better one.
    ranked.sort_by_key(|(candidate, total)| {
        (
            candidate.offer.loyalty_cost.is_some(),
            is_basket_wide(&candidate.offer.rule),
            Reverse(*total),
            &candidate.offer.id,
        )
    });

    let mut given = vec![Cents::ZERO; lines.len()];
    for (candidate, _) in ranked {
        let view = basket::remaining_view(&lines, &given, ctx.self_stacking);
        // Whatever stops the coupon now, it was eligible alone: earlier coupons took what it needed.
        let parts = mechanics::discount(&candidate.offer.rule, &view, subtotal).unwrap_or_default();
        let claimed = claim(&parts, &lines, &mut given);
        if claimed.is_empty() {
            evaluation.skip(candidate.offer, SkipReason::OutStacked);
        } else {
            evaluation
                .applied
                .push(applied(candidate.offer, claimed, ctx));
        }
    }

    evaluation
        .applied
        .sort_by(|a, b| a.coupon_id.cmp(&b.coupon_id));
    evaluation
        .skipped
        .sort_by(|a, b| a.coupon_id.cmp(&b.coupon_id));
    evaluation
}

impl Evaluation {
    fn skip(&mut self, offer: &Offer, reason: SkipReason) {
        self.skipped.push(Skipped {
            coupon_id: offer.id.clone(),
            reason,
        });
    }
}

/// A rule that neither requires nor rewards particular items: it spreads over the basket.
fn is_basket_wide(rule: &crate::domain::Rule) -> bool {
    rule.requirement.is_everything() && rule.reward.as_ref().is_none_or(|r| r.is_everything())
}

/// Candidates in coupon-id order, so that the caller's order never changes the answer.
fn sorted_by_id<'a>(candidates: &[Candidate<'a>]) -> Vec<Candidate<'a>> {
    let mut sorted = candidates.to_vec();
    sorted.sort_by(|a, b| a.offer.id.cmp(&b.offer.id));
    sorted
}

/// Records a coupon's discounts against the lines, each capped at what is left of its line
/// so that no line ever goes below zero whatever the mechanics computed, and returns the
/// discounts per line id (positive ones only, sorted by line id).
fn claim(parts: &Parts, lines: &[Line<'_>], given: &mut [Cents]) -> Vec<LineDiscount> {
    let mut by_line_id: BTreeMap<i64, Cents> = BTreeMap::new();
    for (&idx, &discount) in parts {
        let left = lines[idx]
            .amount
            .saturating_sub(given[idx])
            .max(Cents::ZERO);
        let discount = discount.min(left).max(Cents::ZERO);
        given[idx] += discount;
        *by_line_id.entry(lines[idx].line_id).or_default() += discount;
    }
    by_line_id
        .into_iter()
        .filter(|(_, discount)| *discount > Cents::ZERO)
        .map(|(line_id, discount)| LineDiscount { line_id, discount })
        .collect()
}

fn applied(offer: &Offer, lines: Vec<LineDiscount>, ctx: &Context) -> Applied {
    // Eligibility guarantees an account for points coupons; the POS itself checks the
    // balance before prompting, so the coupon is offered whatever the balance is.
    let optional = offer
        .loyalty_cost
        .zip(ctx.loyalty.as_ref())
        .map(|(cost, account)| OptionalCost {
            loyalty_id: account.id.clone(),
            cost,
        });
    Applied {
        coupon_id: offer.id.clone(),
        total: lines.iter().map(|line| line.discount).sum(),
        lines,
        optional,
    }
}
