//! How one coupon's rule turns into line discounts on a view of the basket.
//!
//! * **Whole-basket rules** (requirement and reward are every item) for `PercentOff` and
//!   `AmountOff` apply once to all lines: a percentage of the sum, or the amount capped at
//!   the sum, split over the lines in proportion to their amounts. They still need
//!   `min_qty` units in the basket (a basket with nothing to buy earns nothing).
//! * **Item rules** apply `floor(requirement units / min_qty)` times (`min_qty` 0 counts as
//!   1), at most `max_applications` times:
//!   - `PercentOff`: the percentage of the rewarded units' value, rounded once and split by
//!     value. With `max_applications` only `applications × min_qty` units are rewarded, the
//!     most expensive first; otherwise every rewarded unit.
//!   - `AmountOff`: `applications × cents`, capped at the value of the rewarded lines and
//!     split over them by value.
//!   - `FixedPrice`: every rewarded unit (or `applications × min_qty` of them, the most
//!     expensive first, under `max_applications`) is brought down to the fixed price.
//!   - `BuyXGetY`: each application needs `buy` requirement units and `get` *other* reward
//!     units; the cheapest reward units get `reward_basis_points` off (see
//!     [`buy_x_get_y_units`]).
//!
//! Units are ordered by value and then by line id (then canonical position), so the choice of
//! units is deterministic. No unit is ever discounted by more than its value, and a split
//! total never exceeds the value it is split over, so no line goes below zero.

use super::basket::Line;
use super::SkipReason;
use crate::domain::{ItemSet, Mechanic, Rule};
use crate::money::{distribute, percent_of, Cents};
use std::cmp::Reverse;
use std::collections::BTreeMap;

/// Discount per line (keyed by [`Line::idx`]); only positive discounts are listed.
pub(super) type Parts = BTreeMap<usize, Cents>;

/// A group of equally valued units of one line, with the line's membership in the rule's
/// requirement and reward sets.
#[derive(Debug, Clone, Copy)]
struct Lot {
    idx: usize,
    line_id: i64,
    units: i64,
    value: Cents,
    requirement: bool,
    reward: bool,
}

impl Lot {
    fn amount(&self, units: i64) -> Cents {
        Cents(self.value.0.saturating_mul(units))
    }
}

/// How often an item rule applies and how many reward units it may discount.
struct Plan {
    applications: i64,
    reward_units: i64,
}

/// Evaluates `rule` on `view` (whose lines carry what is left to discount of each) and
/// returns the discount per line, or why the rule gives nothing.
pub(super) fn discount(
    rule: &Rule,
    view: &[Line<'_>],
    subtotal: Cents,
) -> Result<Parts, SkipReason> {
    if rule.min_basket.is_some_and(|min| subtotal < min) {
        return Err(SkipReason::BasketThresholdNotMet);
    }
    let lots = lots(rule, view);
    let parts = match rule.mechanic {
        Mechanic::PercentOff { basis_points } => {
            let chosen = value_by_line(&most_expensive(&lots, plan(rule, &lots)?.reward_units));
            let total = percent_of(chosen.values().copied().sum(), basis_points);
            split(total, &chosen)
        }
        Mechanic::AmountOff { cents } => {
            let applications = plan(rule, &lots)?.applications;
            split(
                Cents(cents.0.saturating_mul(applications)),
                &value_by_line(&all_reward_units(&lots)),
            )
        }
        Mechanic::FixedPrice { cents } => {
            let chosen = most_expensive(&lots, plan(rule, &lots)?.reward_units);
            per_unit(&chosen, |value| value.saturating_sub(cents))
        }
        Mechanic::BuyXGetY {
            buy,
            get,
            reward_basis_points,
        } => {
            let chosen = buy_x_get_y_units(rule, &lots, buy, get)?;
            per_unit(&chosen, |value| percent_of(value, reward_basis_points))
        }
    };
    if parts.is_empty() {
        return Err(SkipReason::NothingToDiscount);
    }
    Ok(parts)
}

/// The view's units that the rule refers to, as requirement units, reward units or both.
fn lots(rule: &Rule, view: &[Line<'_>]) -> Vec<Lot> {
    let mut lots = Vec::new();
    for line in view {
        let requirement = rule.requirement.contains(line.upc, line.dept);
        // Without a reward set the requirement set rewards: one look-up, not two.
        let reward = match &rule.reward {
            Some(set) => set.contains(line.upc, line.dept),
            None => requirement,
        };
        if !requirement && !reward {
            continue;
        }
        lots.extend(line.unit_groups().map(|(units, value)| Lot {
            idx: line.idx,
            line_id: line.line_id,
            units,
            value,
            requirement,
            reward,
        }));
    }
    lots
}

/// Whole-basket rules discount the basket as a whole once, whatever `max_applications` says.
fn is_whole_basket(rule: &Rule) -> bool {
    matches!(
        rule.mechanic,
        Mechanic::PercentOff { .. } | Mechanic::AmountOff { .. }
    ) && rule.requirement.is_everything()
        && rule.reward.as_ref().is_none_or(ItemSet::is_everything)
}

fn plan(rule: &Rule, lots: &[Lot]) -> Result<Plan, SkipReason> {
    let min_qty = i64::from(rule.min_qty.max(1));
    let possible = count_units(lots, |lot| lot.requirement) / min_qty;
    let plan = if is_whole_basket(rule) {
        Plan {
            applications: possible.min(1),
            reward_units: i64::MAX,
        }
    } else if let Some(max) = rule.max_applications {
        let applications = possible.min(i64::from(max));
        Plan {
            applications,
            reward_units: applications.saturating_mul(min_qty),
        }
    } else {
        Plan {
            applications: possible,
            reward_units: i64::MAX,
        }
    };
    if plan.applications == 0 {
        return Err(SkipReason::RequirementNotMet);
    }
    Ok(plan)
}

/// The reward units for a buy-X-get-Y rule, cheapest first.
///
/// A unit cannot be both bought and given: each application needs `buy` requirement units
/// and `get` distinct reward units. With `R` units only in the requirement set, `W` only in
/// the reward set and `B` in both, the most applications possible are
/// `min((W + B) / get, (R + B) / buy, (R + W + B) / (buy + get))`. When the sets are the
/// same (reward `None`) that is the classic pooled rule `B / (buy + get)` with the cheapest
/// units of the pool given; when they are disjoint it is `min(R / buy, W / get)`. The
/// cheapest reward units are then taken, but no more shared units than leaves enough for
/// the requirement.
fn buy_x_get_y_units(
    rule: &Rule,
    lots: &[Lot],
    buy: u32,
    get: u32,
) -> Result<Vec<(Lot, i64)>, SkipReason> {
    if buy == 0 || get == 0 {
        return Err(SkipReason::RequirementNotMet);
    }
    let (buy, get) = (i64::from(buy), i64::from(get));
    let only_requirement = count_units(lots, |lot| lot.requirement && !lot.reward);
    let only_reward = count_units(lots, |lot| lot.reward && !lot.requirement);
    let shared = count_units(lots, |lot| lot.requirement && lot.reward);
    let possible = (only_reward.saturating_add(shared) / get)
        .min(only_requirement.saturating_add(shared) / buy)
        .min(
            only_requirement
                .saturating_add(only_reward)
                .saturating_add(shared)
                / (buy + get),
        );
    let applications = rule
        .max_applications
        .map_or(possible, |max| possible.min(i64::from(max)));
    if applications == 0 {
        return Err(SkipReason::RequirementNotMet);
    }
    let shared_quota = only_requirement.saturating_add(shared) - applications * buy;
    let mut cheapest = reward_lots(lots);
    cheapest.sort_by_key(|lot| (lot.value, lot.line_id, lot.idx));
    Ok(take_units(&cheapest, applications * get, shared_quota))
}

fn count_units(lots: &[Lot], filter: impl Fn(&Lot) -> bool) -> i64 {
    lots.iter()
        .filter(|lot| filter(lot))
        .fold(0, |sum, lot| sum.saturating_add(lot.units))
}

fn reward_lots(lots: &[Lot]) -> Vec<Lot> {
    lots.iter().filter(|lot| lot.reward).copied().collect()
}

fn all_reward_units(lots: &[Lot]) -> Vec<(Lot, i64)> {
    reward_lots(lots)
        .into_iter()
        .map(|lot| (lot, lot.units))
        .collect()
}

/// Up to `want` reward units, the most valuable first: where a rule limits how many units
/// it rewards, the customer gets the biggest discount it allows.
fn most_expensive(lots: &[Lot], want: i64) -> Vec<(Lot, i64)> {
    let mut sorted = reward_lots(lots);
    sorted.sort_by_key(|lot| (Reverse(lot.value), lot.line_id, lot.idx));
    take_units(&sorted, want, i64::MAX)
}

/// Walks `lots` in order taking up to `want` units, at most `shared_quota` of them from lots
/// that are requirement units too.
fn take_units(lots: &[Lot], mut want: i64, mut shared_quota: i64) -> Vec<(Lot, i64)> {
    let mut taken = Vec::new();
    for lot in lots {
        let available = if lot.requirement {
            lot.units.min(shared_quota)
        } else {
            lot.units
        };
        let take = available.min(want);
        if take <= 0 {
            continue;
        }
        want -= take;
        if lot.requirement {
            shared_quota -= take;
        }
        taken.push((*lot, take));
    }
    taken
}

/// The value of the chosen units, per line.
fn value_by_line(chosen: &[(Lot, i64)]) -> Parts {
    sum_by_line(
        chosen
            .iter()
            .map(|(lot, units)| (lot.idx, lot.amount(*units))),
    )
}

/// Discounts each chosen unit by `off(unit value)`, never below zero nor above the unit's
/// value (a fixed price above the unit price, or a percentage above 100 %, gives nothing
/// more than the unit).
fn per_unit(chosen: &[(Lot, i64)], off: impl Fn(Cents) -> Cents) -> Parts {
    sum_by_line(chosen.iter().map(|(lot, units)| {
        let each = off(lot.value).min(lot.value).max(Cents::ZERO);
        (lot.idx, Cents(each.0.saturating_mul(*units)))
    }))
}

/// Splits `total` over lines in proportion to their `weights`, capped at the weights' sum so
/// that no line gets more than its weight, and with parts adding up exactly to the total.
fn split(total: Cents, weights: &Parts) -> Parts {
    let values: Vec<Cents> = weights.values().copied().collect();
    let total = total.min(values.iter().copied().sum());
    let parts = distribute(total, &values);
    sum_by_line(weights.keys().copied().zip(parts))
}

/// Adds up amounts per line, keeping only the positive sums.
fn sum_by_line(amounts: impl Iterator<Item = (usize, Cents)>) -> Parts {
    let mut parts = Parts::new();
    for (idx, amount) in amounts {
        *parts.entry(idx).or_default() += amount;
    }
    parts.retain(|_, amount| *amount > Cents::ZERO);
    parts
}
