//! Whether a candidate coupon may apply to this customer and transaction at all, before
//! looking at the basket.

use super::{Candidate, Context, Holding, SkipReason};

/// Checks the offer's policy against the customer's holding and the redemption counts.
///
/// The checks run in a fixed order and the first failing one is reported, so the reason a
/// coupon is skipped is stable and explains the most fundamental obstacle first (a disabled
/// coupon is reported as disabled even if it also ran out).
pub(super) fn check(candidate: &Candidate<'_>, ctx: &Context) -> Result<(), SkipReason> {
    let offer = candidate.offer;
    let holding = candidate.holding;
    let checks = [
        (!offer.enabled, SkipReason::Disabled),
        (
            !(offer.start_date..=offer.end_date).contains(&ctx.today),
            SkipReason::OutOfWindow,
        ),
        // A targeted offer is only for customers it was issued to, who have a row for it.
        (
            offer.targeted && holding == Holding::None,
            SkipReason::NotTargeted,
        ),
        // Another lane's open sale holds the coupon; applying it here could redeem it twice.
        (
            holding == Holding::PendingElsewhere,
            SkipReason::HeldElsewhere,
        ),
        (
            holding == Holding::Redeemed
                || reached(offer.per_customer_limit, candidate.customer_redemptions),
            SkipReason::CustomerLimitReached,
        ),
        (
            reached(offer.global_limit, candidate.global_redemptions),
            SkipReason::GlobalLimitReached,
        ),
        // A coupon pending on this very sale was clipped before this sale took it.
        (
            offer.requires_clip && !matches!(holding, Holding::Clipped | Holding::PendingHere),
            SkipReason::NotClipped,
        ),
        (
            offer.loyalty_cost.is_some() && ctx.loyalty.is_none(),
            SkipReason::NoLoyaltyAccount,
        ),
    ];
    match checks.into_iter().find(|(failed, _)| *failed) {
        Some((_, reason)) => Err(reason),
        None => Ok(()),
    }
}

/// Whether `used` redemptions exhaust an optional `limit` (`None` = unlimited).
fn reached(limit: Option<u32>, used: u32) -> bool {
    limit.is_some_and(|limit| used >= limit)
}
