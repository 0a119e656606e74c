//! The engine's view of the basket: the lines that can be discounted, what is left of each
//! after earlier coupons, and how a line's value is shared over its units.

use super::BasketLine;
use crate::domain::Upc;
use crate::money::{extend, Cents};

/// A sale line that can be discounted: positive quantity and positive amount.
#[derive(Debug, Clone)]
pub(super) struct Line<'b> {
    /// Position in the engine's canonical (sorted) list of discountable lines.
    pub idx: usize,
    pub line_id: i64,
    pub upc: &'b Upc,
    pub dept: Option<i64>,
    /// Units the line counts as: the whole quantity, or 1 for a weighed line.
    pub units: i64,
    /// The value a coupon may still discount: the line amount, less what earlier stacked
    /// coupons took when the view comes from [`remaining_view`].
    pub amount: Cents,
}

impl<'b> Line<'b> {
    fn from_basket(line: &'b BasketLine) -> Option<Line<'b>> {
        let amount = extend(line.unit_discount_price, line.quantity);
        if line.quantity.0 <= 0 || amount <= Cents::ZERO {
            return None;
        }
        let units = if line.quantity.0 % 1000 == 0 {
            line.quantity.whole_units()
        } else {
            1
        };
        Some(Line {
            idx: 0,
            line_id: line.line_id,
            upc: &line.upc,
            dept: line.dept,
            units,
            amount,
        })
    }

    /// The line's units as `(count, value each)` groups whose values add up exactly to the
    /// line's amount: `amount / units` each, with the cents left over given one each to the
    /// first units. An untouched whole-quantity line is a single group at its unit price.
    pub fn unit_groups(&self) -> impl Iterator<Item = (i64, Cents)> {
        let each = self.amount.0 / self.units;
        let left_over = self.amount.0 % self.units;
        [
            (left_over, Cents(each.saturating_add(1))),
            (self.units - left_over, Cents(each)),
        ]
        .into_iter()
        .filter(|(count, _)| *count > 0)
    }
}

/// The basket's discountable lines in a canonical order (by line id, then the line's other
/// fields), so that the order the POS sent them in never changes the result.
pub(super) fn discountable_lines(basket: &[BasketLine]) -> Vec<Line<'_>> {
    let mut sorted: Vec<&BasketLine> = basket.iter().collect();
    sorted.sort_by_key(|line| {
        (
            line.line_id,
            &line.upc,
            line.dept,
            line.quantity,
            line.unit_discount_price,
            line.unit_price,
        )
    });
    sorted
        .into_iter()
        .filter_map(Line::from_basket)
        .enumerate()
        .map(|(idx, line)| Line { idx, ..line })
        .collect()
}

/// The lines a later coupon may use, given the discount already `given` to each line (indexed
/// like `lines`).
///
/// Without self-stacking a line keeps at most one coupon, so discounted lines disappear from
/// the view. With self-stacking every line stays (its units still count toward requirements,
/// the customer still bought them) but is worth only what is left of it.
pub(super) fn remaining_view<'b>(
    lines: &[Line<'b>],
    given: &[Cents],
    self_stacking: bool,
) -> Vec<Line<'b>> {
    lines
        .iter()
        .zip(given)
        .filter(|(_, given)| self_stacking || **given == Cents::ZERO)
        .map(|(line, given)| Line {
            amount: line.amount.saturating_sub(*given).max(Cents::ZERO),
            ..line.clone()
        })
        .collect()
}
