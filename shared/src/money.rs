//! Exact money: integer cents, parsed from the JSON number text, never through `f64`.
//!
//! Rounding rule (the only one in the product): an amount is rounded once, to the cent,
//! half away from zero, at the point where it is first computed (a line's extended price,
//! a coupon's percentage). Parts of a rounded whole are distributed with the largest
//! remainder method, so they always add up exactly to the whole.

use rust_decimal::prelude::ToPrimitive;
use rust_decimal::{Decimal, RoundingStrategy};
use serde::{Deserialize, Serialize};
use std::fmt;

/// An amount of money in cents of the store's currency.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Cents(pub i64);

impl Cents {
    pub const ZERO: Cents = Cents(0);

    /// Largest amount read from outside, in cents (a trillion currency units): far beyond
    /// any sale, and small enough that no product or sum of lane amounts overflows.
    pub const MAX_READ: i64 = 100_000_000_000_000;

    /// Rounds a decimal amount of currency units (e.g. `1.995`) to cents, half away from zero.
    /// Returns `None` beyond ±[`Cents::MAX_READ`] (`rust_decimal`'s `*` would panic on a
    /// number such as `1e28`, which is valid JSON).
    pub fn from_decimal(value: Decimal) -> Option<Cents> {
        let cents = value
            .checked_mul(Decimal::ONE_HUNDRED)?
            .round_dp_with_strategy(0, RoundingStrategy::MidpointAwayFromZero);
        cents
            .to_i64()
            .filter(|c| c.abs() <= Cents::MAX_READ)
            .map(Cents)
    }

    /// The amount as an exact decimal with two places (`150` → `1.50`).
    pub fn to_decimal(self) -> Decimal {
        Decimal::new(self.0, 2)
    }

    pub fn max(self, other: Cents) -> Cents {
        Cents(self.0.max(other.0))
    }

    pub fn min(self, other: Cents) -> Cents {
        Cents(self.0.min(other.0))
    }

    pub fn saturating_sub(self, other: Cents) -> Cents {
        Cents(self.0.saturating_sub(other.0))
    }
}

impl std::ops::Add for Cents {
    type Output = Cents;
    fn add(self, rhs: Cents) -> Cents {
        Cents(self.0.saturating_add(rhs.0))
    }
}

impl std::ops::AddAssign for Cents {
    fn add_assign(&mut self, rhs: Cents) {
        self.0 = self.0.saturating_add(rhs.0);
    }
}

impl std::ops::Sub for Cents {
    type Output = Cents;
    fn sub(self, rhs: Cents) -> Cents {
        Cents(self.0.saturating_sub(rhs.0))
    }
}

impl std::iter::Sum for Cents {
    fn sum<I: Iterator<Item = Cents>>(iter: I) -> Cents {
        iter.fold(Cents::ZERO, |a, b| a + b)
    }
}

impl fmt::Display for Cents {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.to_decimal())
    }
}

/// Quantity in thousandths of a unit (weighed items are fractional).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct MilliQty(pub i64);

impl MilliQty {
    pub const ONE: MilliQty = MilliQty(1000);

    /// Largest quantity read from outside, in thousandths (a billion units).
    pub const MAX_READ: i64 = 1_000_000_000_000;

    /// Rounds a decimal quantity to thousandths, half away from zero. `None` beyond
    /// ±[`MilliQty::MAX_READ`].
    pub fn from_decimal(value: Decimal) -> Option<MilliQty> {
        let milli = value
            .checked_mul(Decimal::ONE_THOUSAND)?
            .round_dp_with_strategy(0, RoundingStrategy::MidpointAwayFromZero);
        milli
            .to_i64()
            .filter(|m| m.abs() <= MilliQty::MAX_READ)
            .map(MilliQty)
    }

    /// Whole units contained in this quantity (a weighed 1.5 lb line is 1 whole unit).
    pub fn whole_units(self) -> i64 {
        self.0.max(0) / 1000
    }
}

/// `unit × qty`, rounded once to the cent (half away from zero).
pub fn extend(unit: Cents, qty: MilliQty) -> Cents {
    let product = i128::from(unit.0) * i128::from(qty.0);
    Cents(clamp_i128(div_round_half_away(product, 1000)))
}

/// `amount × basis_points / 10000`, rounded once to the cent (half away from zero).
pub fn percent_of(amount: Cents, basis_points: u32) -> Cents {
    let product = i128::from(amount.0) * i128::from(basis_points);
    Cents(clamp_i128(div_round_half_away(product, 10_000)))
}

/// Splits `total` over parts in proportion to `weights` with the largest remainder method.
/// The result has one entry per weight, never exceeds its weight when `total ≤ Σ weights`,
/// and always sums exactly to `total` (when at least one weight is positive).
/// Ties in the remainder go to the earlier part, so the split is deterministic.
pub fn distribute(total: Cents, weights: &[Cents]) -> Vec<Cents> {
    let sum: i128 = weights.iter().map(|w| i128::from(w.0.max(0))).sum();
    if sum == 0 || total.0 <= 0 {
        return vec![Cents::ZERO; weights.len()];
    }
    let t = i128::from(total.0);
    let mut parts: Vec<i128> = Vec::with_capacity(weights.len());
    let mut remainders: Vec<(i128, usize)> = Vec::with_capacity(weights.len());
    for (i, w) in weights.iter().enumerate() {
        let num = t * i128::from(w.0.max(0));
        parts.push(num / sum);
        remainders.push((num % sum, i));
    }
    let mut left = t - parts.iter().sum::<i128>();
    // Largest remainder first; earlier index first on ties.
    remainders.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    for (_, i) in remainders {
        if left == 0 {
            break;
        }
        if weights[i].0 > 0 {
            parts[i] += 1;
            left -= 1;
        }
    }
    parts.into_iter().map(|p| Cents(clamp_i128(p))).collect()
}

fn div_round_half_away(n: i128, d: i128) -> i128 {
    let q = n / d;
    let r = n % d;
    if 2 * r.abs() >= d {
        q + n.signum()
    } else {
        q
    }
}

fn clamp_i128(v: i128) -> i64 {
    v.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::str::FromStr;

    #[test]
    fn parses_decimal_text_exactly() {
        let d = Decimal::from_str("1.995").unwrap_or_default();
        assert_eq!(Cents::from_decimal(d), Some(Cents(200)));
        let d = Decimal::from_str("0.1").unwrap_or_default()
            + Decimal::from_str("0.2").unwrap_or_default();
        assert_eq!(Cents::from_decimal(d), Some(Cents(30)));
        assert_eq!(Cents(150).to_decimal().to_string(), "1.50");
    }

    #[test]
    fn extends_and_rounds_once() {
        assert_eq!(extend(Cents(199), MilliQty(2000)), Cents(398));
        assert_eq!(extend(Cents(299), MilliQty(1235)), Cents(369)); // 369.265
        assert_eq!(percent_of(Cents(333), 5000), Cents(167)); // 166.5 -> 167
    }

    #[test]
    fn distributes_exactly() {
        let parts = distribute(Cents(100), &[Cents(1), Cents(1), Cents(1)]);
        assert_eq!(parts, vec![Cents(34), Cents(33), Cents(33)]);
    }

    proptest! {
        #[test]
        fn distribution_sums_to_total_and_respects_weights(
            weights in proptest::collection::vec(0i64..100_000, 1..20),
            frac in 0u32..=10_000,
        ) {
            let ws: Vec<Cents> = weights.iter().copied().map(Cents).collect();
            let sum: i64 = weights.iter().sum();
            let total = Cents(sum * i64::from(frac) / 10_000);
            let parts = distribute(total, &ws);
            prop_assert_eq!(parts.len(), ws.len());
            if sum > 0 {
                prop_assert_eq!(parts.iter().copied().sum::<Cents>(), total);
            }
            for (p, w) in parts.iter().zip(&ws) {
                prop_assert!(p.0 >= 0 && p.0 <= w.0);
            }
        }
    }
}
