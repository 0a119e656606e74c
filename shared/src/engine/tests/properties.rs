//! Property tests: the engine's invariants hold for random baskets and random offers, in
//! both stacking modes.

use super::*;
use crate::money::extend;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::{select, subsequence};
use std::collections::{BTreeMap, BTreeSet};

/// UPCs the generated offers refer to; "99" is in baskets but in no offer.
const UPCS: [&str; 5] = ["11", "22", "33", "44", "55"];
const DEPTS: [i64; 3] = [1, 2, 3];

/// A coupon with the customer's relation to it.
#[derive(Debug, Clone)]
struct Held {
    offer: Offer,
    holding: Holding,
    customer_redemptions: u32,
    global_redemptions: u32,
}

#[derive(Debug, Clone)]
struct Case {
    basket: Vec<BasketLine>,
    offers: Vec<Held>,
    loyalty: bool,
    /// A permutation of `basket` and one of `offers`, to check order independence.
    basket_order: Vec<usize>,
    offer_order: Vec<usize>,
}

fn arb_line() -> impl Strategy<Value = BasketLine> {
    let quantity = prop_oneof![
        3 => (1i64..6).prop_map(|n| n * 1000),
        2 => 1i64..5000,
        1 => -3000i64..=0,
    ];
    let upc = select(vec!["11", "22", "33", "44", "55", "99", ""]);
    (
        upc,
        proptest::option::of(select(DEPTS.to_vec())),
        quantity,
        0i64..10_000,
        0i64..10_000,
    )
        .prop_map(|(upc, dept, milli, price, discount_price)| BasketLine {
            line_id: 0,
            upc: Upc::normalise(upc),
            dept,
            quantity: MilliQty(milli),
            unit_price: Cents(price),
            unit_discount_price: Cents(discount_price),
        })
}

fn arb_item_set() -> impl Strategy<Value = ItemSet> {
    (
        subsequence(UPCS.to_vec(), 0..=3),
        subsequence(DEPTS.to_vec(), 0..=1),
    )
        .prop_map(|(upcs, depts)| {
            ItemSet::new(upcs.into_iter().map(Upc::normalise).collect(), depts)
        })
}

fn arb_mechanic() -> impl Strategy<Value = Mechanic> {
    prop_oneof![
        (0u32..=12_000).prop_map(percent),
        (0i64..3000).prop_map(amount),
        (0i64..5000).prop_map(fixed),
        (0u32..4, 0u32..4, 0u32..=10_000).prop_map(|(buy, get, bp)| bxgy(buy, get, bp)),
    ]
}

fn arb_rule() -> impl Strategy<Value = Rule> {
    (
        arb_mechanic(),
        arb_item_set(),
        proptest::option::weighted(0.4, arb_item_set()),
        0u32..4,
        proptest::option::weighted(0.2, 0i64..20_000),
        proptest::option::weighted(0.4, 0u32..4),
    )
        .prop_map(
            |(mechanic, requirement, reward, min_qty, min_basket, max_applications)| Rule {
                mechanic,
                requirement,
                reward,
                min_qty,
                min_basket: min_basket.map(Cents),
                max_applications,
            },
        )
}

fn arb_holding() -> impl Strategy<Value = Holding> {
    prop_oneof![
        3 => Just(Holding::Clipped),
        1 => select(vec![
            Holding::None,
            Holding::Available,
            Holding::PendingHere,
            Holding::PendingElsewhere,
            Holding::Redeemed,
            Holding::Expired,
        ]),
    ]
}

fn arb_held() -> impl Strategy<Value = Held> {
    let flags = (
        prop::bool::weighted(0.9),
        prop::bool::weighted(0.2),
        prop::bool::weighted(0.3),
        -8i64..=1,
        -1i64..=8,
    );
    let limits = (
        proptest::option::weighted(0.2, 1i64..500),
        proptest::option::weighted(0.2, 0u32..3),
        proptest::option::weighted(0.2, 0u32..5),
    );
    let counts = (arb_holding(), 0u32..3, 0u32..5);
    (arb_rule(), flags, limits, counts).prop_map(
        |(
            rule,
            (enabled, targeted, requires_clip, start, end),
            (loyalty_cost, per_customer, global),
            counts,
        )| {
            let mut offer = offer("", rule);
            offer.enabled = enabled;
            offer.targeted = targeted;
            offer.requires_clip = requires_clip;
            offer.start_date = ctx().today + chrono::TimeDelta::days(start);
            offer.end_date = ctx().today + chrono::TimeDelta::days(end);
            offer.loyalty_cost = loyalty_cost;
            offer.per_customer_limit = per_customer;
            offer.global_limit = global;
            let (holding, customer_redemptions, global_redemptions) = counts;
            Held {
                offer,
                holding,
                customer_redemptions,
                global_redemptions,
            }
        },
    )
}

fn arb_case() -> impl Strategy<Value = Case> {
    (vec(arb_line(), 1..30), vec(arb_held(), 0..7), any::<bool>()).prop_flat_map(
        |(basket, offers, loyalty)| {
            let basket_order = Just((0..basket.len()).collect::<Vec<_>>()).prop_shuffle();
            let offer_order = Just((0..offers.len()).collect::<Vec<_>>()).prop_shuffle();
            (
                Just(basket),
                Just(offers),
                Just(loyalty),
                basket_order,
                offer_order,
            )
                .prop_map(
                    |(mut basket, mut offers, loyalty, basket_order, offer_order)| {
                        for (i, line) in basket.iter_mut().enumerate() {
                            line.line_id = 100 + i64::try_from(i).unwrap();
                        }
                        for (i, held) in offers.iter_mut().enumerate() {
                            held.offer.id = format!("C{i}");
                        }
                        Case {
                            basket,
                            offers,
                            loyalty,
                            basket_order,
                            offer_order,
                        }
                    },
                )
        },
    )
}

impl Case {
    fn context(&self, self_stacking: bool) -> Context {
        let loyalty = self.loyalty.then(|| LoyaltyAccount {
            id: "L".to_owned(),
            balance: 0,
        });
        Context {
            self_stacking,
            loyalty,
            ..ctx()
        }
    }

    fn candidates(&self) -> Vec<Candidate<'_>> {
        self.offers
            .iter()
            .map(|held| Candidate {
                offer: &held.offer,
                holding: held.holding,
                customer_redemptions: held.customer_redemptions,
                global_redemptions: held.global_redemptions,
            })
            .collect()
    }

    fn evaluate(&self, self_stacking: bool) -> Evaluation {
        evaluate(
            &self.basket,
            &self.candidates(),
            &self.context(self_stacking),
        )
    }

    fn evaluate_shuffled(&self, self_stacking: bool) -> Evaluation {
        let basket: Vec<BasketLine> = self
            .basket_order
            .iter()
            .map(|&i| self.basket[i].clone())
            .collect();
        let all = self.candidates();
        let candidates: Vec<Candidate<'_>> = self.offer_order.iter().map(|&i| all[i]).collect();
        evaluate(&basket, &candidates, &self.context(self_stacking))
    }

    /// The amount each line may be discounted by at most: its amount if positive, else 0.
    fn line_caps(&self) -> BTreeMap<i64, Cents> {
        self.basket
            .iter()
            .map(|line| {
                let amount = extend(line.unit_discount_price, line.quantity);
                let cap = if line.quantity.0 > 0 {
                    amount.max(Cents::ZERO)
                } else {
                    Cents::ZERO
                };
                (line.line_id, cap)
            })
            .collect()
    }
}

/// (1) No line is discounted below zero, and non-positive lines are not discounted at all.
fn check_line_caps(case: &Case, evaluation: &Evaluation) -> Result<(), TestCaseError> {
    let caps = case.line_caps();
    let mut given: BTreeMap<i64, Cents> = BTreeMap::new();
    for line in evaluation.applied.iter().flat_map(|applied| &applied.lines) {
        *given.entry(line.line_id).or_default() += line.discount;
    }
    for (line_id, total) in given {
        let cap = caps.get(&line_id).copied();
        prop_assert!(
            cap.is_some_and(|cap| total <= cap),
            "line {} got {:?}, cap {:?}",
            line_id,
            total,
            cap
        );
    }
    Ok(())
}

/// (2) Each applied coupon lists positive discounts, one per line in line order, adding up
/// to its total; every candidate is reported exactly once; points coupons carry their cost.
fn check_shapes(case: &Case, evaluation: &Evaluation) -> Result<(), TestCaseError> {
    for applied in &evaluation.applied {
        prop_assert!(applied.lines.iter().all(|line| line.discount > Cents::ZERO));
        prop_assert!(applied
            .lines
            .windows(2)
            .all(|pair| pair[0].line_id < pair[1].line_id));
        prop_assert_eq!(
            applied.total,
            applied
                .lines
                .iter()
                .map(|line| line.discount)
                .sum::<Cents>()
        );
        let offer = &case
            .offers
            .iter()
            .find(|held| held.offer.id == applied.coupon_id)
            .unwrap()
            .offer;
        prop_assert_eq!(
            applied.optional.as_ref().map(|optional| optional.cost),
            offer.loyalty_cost
        );
    }
    let mut reported: Vec<&str> = evaluation
        .applied
        .iter()
        .map(|a| a.coupon_id.as_str())
        .collect();
    reported.extend(evaluation.skipped.iter().map(|s| s.coupon_id.as_str()));
    reported.sort_unstable();
    let mut expected: Vec<&str> = case
        .offers
        .iter()
        .map(|held| held.offer.id.as_str())
        .collect();
    expected.sort_unstable();
    prop_assert_eq!(reported, expected);
    prop_assert!(evaluation
        .applied
        .windows(2)
        .all(|pair| pair[0].coupon_id < pair[1].coupon_id));
    prop_assert!(evaluation
        .skipped
        .windows(2)
        .all(|pair| pair[0].coupon_id < pair[1].coupon_id));
    Ok(())
}

/// (4) Without self-stacking, no line carries two coupons (optional ones included).
fn check_one_coupon_per_line(evaluation: &Evaluation) -> Result<(), TestCaseError> {
    let mut seen = BTreeSet::new();
    for line in evaluation.applied.iter().flat_map(|applied| &applied.lines) {
        prop_assert!(
            seen.insert(line.line_id),
            "line {} in two coupons",
            line.line_id
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn invariants_hold_in_both_stacking_modes(case in arb_case()) {
        for self_stacking in [false, true] {
            let evaluation = case.evaluate(self_stacking);
            check_line_caps(&case, &evaluation)?;
            check_shapes(&case, &evaluation)?;
            if !self_stacking {
                check_one_coupon_per_line(&evaluation)?;
            }
            // (3) Deterministic, and independent of the order of lines and candidates.
            prop_assert_eq!(&case.evaluate(self_stacking), &evaluation);
            prop_assert_eq!(&case.evaluate_shuffled(self_stacking), &evaluation);
        }
    }
}

/// The generated cases exercise what the invariants are about: the checks above loop over
/// `evaluation.applied`, so a generator (or an engine) that applied nothing would pass them
/// all. Over a fixed sample, a fair share of cases applies something, and among them are
/// buy-X-get-Y, points-priced and multi-coupon answers.
#[test]
fn the_generated_cases_apply_coupons_of_every_kind() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let strategy = arb_case();
    let (mut applying, mut bogo, mut optional, mut several) = (0, 0, 0, 0);
    let cases = 512;
    for _ in 0..cases {
        let case = strategy.new_tree(&mut runner).unwrap().current();
        let evaluation = case.evaluate(false);
        if evaluation.applied.is_empty() {
            continue;
        }
        applying += 1;
        several += usize::from(evaluation.applied.len() > 1);
        for a in &evaluation.applied {
            optional += usize::from(a.optional.is_some());
            let held = case.offers.iter().find(|h| h.offer.id == a.coupon_id);
            bogo += usize::from(
                held.is_some_and(|h| matches!(h.offer.rule.mechanic, Mechanic::BuyXGetY { .. })),
            );
        }
    }
    assert!(
        applying * 4 >= cases,
        "{applying} of {cases} cases apply a coupon"
    );
    assert!(
        bogo > 0 && optional > 0 && several > 0,
        "bogo {bogo}, optional {optional}, several {several}"
    );
}
