//! Unit tests of the engine, one or more per rule, with exact cents.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod properties;

use super::*;
use crate::domain::{ItemSet, Mechanic, Rule};

// ---------------------------------------------------------------- builders

fn day(d: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(2024, 6, d).unwrap()
}

pub(crate) fn items(upcs: &[&str]) -> ItemSet {
    ItemSet::new(upcs.iter().map(|u| Upc::normalise(u)).collect(), vec![])
}

pub(crate) fn rule(mechanic: Mechanic, requirement: ItemSet) -> Rule {
    Rule {
        mechanic,
        requirement,
        reward: None,
        min_qty: 1,
        min_basket: None,
        max_applications: None,
    }
}

/// An offer with `rule`, live in June 2024 (also used by other modules' tests).
pub(crate) fn offer(id: &str, rule: Rule) -> Offer {
    Offer {
        id: id.to_owned(),
        provider: "test".to_owned(),
        provider_ref: id.to_owned(),
        short_description: String::new(),
        requirement_description: String::new(),
        long_description: String::new(),
        category: String::new(),
        brand: String::new(),
        start_date: day(1),
        end_date: day(30),
        image_url: None,
        targeted: false,
        enabled: true,
        featured: false,
        requires_clip: false,
        rule,
        receipt_alias: String::new(),
        reduces_tax: true,
        coupon_type: String::new(),
        external_id: String::new(),
        per_customer_limit: None,
        global_limit: None,
        loyalty_cost: None,
    }
}

fn percent(bp: u32) -> Mechanic {
    Mechanic::PercentOff { basis_points: bp }
}

fn amount(cents: i64) -> Mechanic {
    Mechanic::AmountOff {
        cents: Cents(cents),
    }
}

fn fixed(cents: i64) -> Mechanic {
    Mechanic::FixedPrice {
        cents: Cents(cents),
    }
}

fn bxgy(buy: u32, get: u32, bp: u32) -> Mechanic {
    Mechanic::BuyXGetY {
        buy,
        get,
        reward_basis_points: bp,
    }
}

/// A line of `milli` thousandths of `upc` at `price` cents each (department 1).
fn line(line_id: i64, upc: &str, milli: i64, price: i64) -> BasketLine {
    BasketLine {
        line_id,
        upc: Upc::normalise(upc),
        dept: Some(1),
        quantity: MilliQty(milli),
        unit_price: Cents(price),
        unit_discount_price: Cents(price),
    }
}

fn ctx() -> Context {
    Context {
        today: day(15),
        self_stacking: false,
        loyalty: None,
    }
}

fn stacking() -> Context {
    Context {
        self_stacking: true,
        ..ctx()
    }
}

fn candidate(offer: &Offer) -> Candidate<'_> {
    Candidate {
        offer,
        holding: Holding::None,
        customer_redemptions: 0,
        global_redemptions: 0,
    }
}

fn held(offer: &Offer, holding: Holding) -> Candidate<'_> {
    Candidate {
        holding,
        ..candidate(offer)
    }
}

fn run(basket: &[BasketLine], offers: &[Offer], ctx: &Context) -> Evaluation {
    let candidates: Vec<Candidate<'_>> = offers.iter().map(candidate).collect();
    evaluate(basket, &candidates, ctx)
}

/// The `(line_id, cents)` discounts of the only applied coupon.
fn only_discounts(evaluation: &Evaluation) -> Vec<(i64, i64)> {
    assert!(
        evaluation.skipped.is_empty(),
        "skipped: {:?}",
        evaluation.skipped
    );
    assert_eq!(evaluation.applied.len(), 1, "{evaluation:?}");
    discounts(&evaluation.applied[0])
}

fn discounts(applied: &Applied) -> Vec<(i64, i64)> {
    assert_eq!(
        applied.total,
        applied.lines.iter().map(|l| l.discount).sum::<Cents>()
    );
    applied
        .lines
        .iter()
        .map(|l| (l.line_id, l.discount.0))
        .collect()
}

/// The reason the only candidate was skipped.
fn only_reason(evaluation: &Evaluation) -> SkipReason {
    assert!(
        evaluation.applied.is_empty(),
        "applied: {:?}",
        evaluation.applied
    );
    assert_eq!(evaluation.skipped.len(), 1);
    evaluation.skipped[0].reason
}

fn reason_with(candidate: Candidate<'_>, ctx: &Context) -> SkipReason {
    only_reason(&evaluate(&[line(1, "1", 1000, 500)], &[candidate], ctx))
}

fn applies_with(candidate: Candidate<'_>, ctx: &Context) -> bool {
    let evaluation = evaluate(&[line(1, "1", 1000, 500)], &[candidate], ctx);
    evaluation.skipped.is_empty() && evaluation.applied.len() == 1
}

fn basket_10_percent() -> Offer {
    offer("P10", rule(percent(1000), ItemSet::default()))
}

// ---------------------------------------------------------------- percent off

#[test]
fn percent_off_basket_splits_by_line_amount() {
    let basket = [line(1, "1", 2000, 500), line(2, "2", 1000, 500)];
    assert_eq!(
        only_discounts(&run(&basket, &[basket_10_percent()], &ctx())),
        vec![(1, 100), (2, 50)]
    );
}

#[test]
fn percent_off_basket_rounds_once_and_parts_add_up() {
    // 50 % of 303 is 151.5 → 152; rounding per line would have given 3 × 51 = 153.
    let basket = [
        line(1, "1", 1000, 101),
        line(2, "2", 1000, 101),
        line(3, "3", 1000, 101),
    ];
    let half = offer("HALF", rule(percent(5000), ItemSet::default()));
    assert_eq!(
        only_discounts(&run(&basket, &[half], &ctx())),
        vec![(1, 51), (2, 51), (3, 50)]
    );
}

#[test]
fn percent_off_above_100_percent_is_capped_at_the_amount() {
    let basket = [line(1, "1", 1000, 333)];
    let silly = offer("X", rule(percent(15_000), ItemSet::default()));
    assert_eq!(
        only_discounts(&run(&basket, &[silly], &ctx())),
        vec![(1, 333)]
    );
}

#[test]
fn percent_off_items_discounts_only_matching_lines() {
    let basket = [line(1, "11", 2000, 300), line(2, "22", 1000, 500)];
    let coupon = offer("A20", rule(percent(2000), items(&["11"])));
    assert_eq!(
        only_discounts(&run(&basket, &[coupon], &ctx())),
        vec![(1, 120)]
    );
}

#[test]
fn percent_off_items_with_max_applications_takes_the_most_expensive_units() {
    let basket = [line(1, "11", 2000, 300), line(2, "22", 1000, 500)];
    let mut one = rule(percent(2000), items(&["11", "22"]));
    one.max_applications = Some(1);
    assert_eq!(
        only_discounts(&run(&basket, &[offer("C", one.clone())], &ctx())),
        vec![(2, 100)]
    );

    // Two units per application: 500 + 300 = 800 → 160, split 100 / 60 by value.
    let two = Rule { min_qty: 2, ..one };
    assert_eq!(
        only_discounts(&run(&basket, &[offer("C", two)], &ctx())),
        vec![(1, 60), (2, 100)]
    );
}

// ---------------------------------------------------------------- amount off

#[test]
fn amount_off_is_capped_at_the_rewarded_amount() {
    let basket = [line(1, "11", 1000, 150), line(2, "22", 1000, 900)];
    let coupon = offer("A", rule(amount(200), items(&["11"])));
    assert_eq!(
        only_discounts(&run(&basket, &[coupon], &ctx())),
        vec![(1, 150)]
    );
}

#[test]
fn amount_off_basket_applies_once_and_is_capped_at_the_subtotal() {
    let basket = [line(1, "1", 1000, 100), line(2, "2", 1000, 50)];
    let mut whole = rule(amount(500), ItemSet::default());
    whole.max_applications = Some(3);
    assert_eq!(
        only_discounts(&run(&basket, &[offer("A", whole)], &ctx())),
        vec![(1, 100), (2, 50)]
    );

    let small = offer("B", rule(amount(100), ItemSet::default()));
    assert_eq!(
        only_discounts(&run(&basket, &[small], &ctx())),
        vec![(1, 67), (2, 33)]
    );
}

#[test]
fn min_qty_and_max_applications_limit_applications() {
    let basket = [line(1, "11", 7000, 400)];
    let mut per_two = rule(amount(100), items(&["11"]));
    per_two.min_qty = 2;
    assert_eq!(
        only_discounts(&run(&basket, &[offer("A", per_two.clone())], &ctx())),
        vec![(1, 300)]
    );

    let capped = Rule {
        max_applications: Some(2),
        ..per_two.clone()
    };
    assert_eq!(
        only_discounts(&run(&basket, &[offer("A", capped)], &ctx())),
        vec![(1, 200)]
    );

    let none = Rule {
        max_applications: Some(0),
        ..per_two.clone()
    };
    assert_eq!(
        only_reason(&run(&basket, &[offer("A", none)], &ctx())),
        SkipReason::RequirementNotMet
    );

    let single = [line(1, "11", 1000, 400)];
    assert_eq!(
        only_reason(&run(&single, &[offer("A", per_two)], &ctx())),
        SkipReason::RequirementNotMet
    );
}

#[test]
fn requirement_and_reward_can_differ() {
    // Buy 2 of item 11, get 1 € off item 22.
    let basket = [line(1, "11", 2000, 300), line(2, "22", 1000, 250)];
    let mut coupon = rule(amount(100), items(&["11"]));
    coupon.min_qty = 2;
    coupon.reward = Some(items(&["22"]));
    assert_eq!(
        only_discounts(&run(&basket, &[offer("A", coupon.clone())], &ctx())),
        vec![(2, 100)]
    );

    let one_bought = [line(1, "11", 1000, 300), line(2, "22", 1000, 250)];
    assert_eq!(
        only_reason(&run(&one_bought, &[offer("A", coupon)], &ctx())),
        SkipReason::RequirementNotMet
    );
}

// ---------------------------------------------------------------- fixed price

#[test]
fn fixed_price_brings_each_unit_down_to_the_price() {
    let basket = [line(1, "11", 3000, 400), line(2, "22", 1000, 200)];
    let coupon = offer("F", rule(fixed(250), items(&["11", "22"])));
    assert_eq!(
        only_discounts(&run(&basket, &[coupon], &ctx())),
        vec![(1, 450)]
    );
}

#[test]
fn fixed_price_above_every_unit_price_discounts_nothing() {
    let basket = [line(1, "22", 1000, 200)];
    let coupon = offer("F", rule(fixed(250), items(&["22"])));
    assert_eq!(
        only_reason(&run(&basket, &[coupon], &ctx())),
        SkipReason::NothingToDiscount
    );
}

#[test]
fn fixed_price_under_max_applications_rewards_the_most_expensive_units() {
    let basket = [line(1, "11", 2000, 400), line(2, "22", 1000, 600)];
    let mut coupon = rule(fixed(100), items(&["11", "22"]));
    coupon.max_applications = Some(2);
    assert_eq!(
        only_discounts(&run(&basket, &[offer("F", coupon)], &ctx())),
        vec![(1, 300), (2, 500)]
    );
}

// ---------------------------------------------------------------- buy X get Y

#[test]
fn bogo_gives_the_cheapest_unit_free() {
    let bogo = offer("BOGO", rule(bxgy(1, 1, 10_000), items(&["11", "22"])));
    let basket = [line(1, "11", 1000, 500), line(2, "22", 1000, 300)];
    assert_eq!(
        only_discounts(&run(&basket, std::slice::from_ref(&bogo), &ctx())),
        vec![(2, 300)]
    );

    let four = [line(1, "11", 2000, 500), line(2, "22", 2000, 300)];
    assert_eq!(
        only_discounts(&run(&four, std::slice::from_ref(&bogo), &ctx())),
        vec![(2, 600)]
    );

    let three = [line(1, "11", 2000, 500), line(2, "22", 1000, 300)];
    assert_eq!(
        only_discounts(&run(&three, std::slice::from_ref(&bogo), &ctx())),
        vec![(2, 300)]
    );

    let one = [line(1, "11", 1000, 500)];
    assert_eq!(
        only_reason(&run(&one, &[bogo], &ctx())),
        SkipReason::RequirementNotMet
    );
}

#[test]
fn buy_two_get_one_half_price() {
    let coupon = offer("B2G1", rule(bxgy(2, 1, 5000), items(&["11", "22", "33"])));
    let basket = [
        line(1, "11", 1000, 400),
        line(2, "22", 1000, 200),
        line(3, "33", 1000, 300),
    ];
    assert_eq!(
        only_discounts(&run(&basket, &[coupon], &ctx())),
        vec![(2, 100)]
    );
}

#[test]
fn buy_x_get_y_with_a_different_reward_set() {
    // Buy 2 of item 11, get one of items 22/33 free.
    let mut coupon = rule(bxgy(2, 1, 10_000), items(&["11"]));
    coupon.reward = Some(items(&["22", "33"]));
    let basket = [
        line(1, "11", 4000, 100),
        line(2, "22", 1000, 250),
        line(3, "33", 1000, 150),
    ];
    assert_eq!(
        only_discounts(&run(&basket, &[offer("X", coupon.clone())], &ctx())),
        vec![(2, 250), (3, 150)]
    );

    let once = Rule {
        max_applications: Some(1),
        ..coupon
    };
    assert_eq!(
        only_discounts(&run(&basket, &[offer("X", once)], &ctx())),
        vec![(3, 150)]
    );
}

#[test]
fn buy_x_get_y_never_counts_one_unit_as_both_bought_and_given() {
    // Buy anything in department 1, get item 11 (also in department 1) free.
    let mut coupon = rule(bxgy(1, 1, 10_000), ItemSet::new(vec![], vec![1]));
    coupon.reward = Some(items(&["11"]));
    let alone = [line(1, "11", 1000, 500)];
    assert_eq!(
        only_reason(&run(&alone, &[offer("X", coupon.clone())], &ctx())),
        SkipReason::RequirementNotMet
    );

    let with_other = [line(1, "11", 1000, 500), line(2, "22", 1000, 200)];
    assert_eq!(
        only_discounts(&run(&with_other, &[offer("X", coupon)], &ctx())),
        vec![(1, 500)]
    );
}

#[test]
fn buy_x_get_y_with_zero_buy_or_get_never_applies() {
    let basket = [line(1, "11", 5000, 100)];
    for mechanic in [bxgy(0, 1, 10_000), bxgy(1, 0, 10_000)] {
        let coupon = offer("X", rule(mechanic, items(&["11"])));
        assert_eq!(
            only_reason(&run(&basket, &[coupon], &ctx())),
            SkipReason::RequirementNotMet
        );
    }
}

// ---------------------------------------------------------------- basket

#[test]
fn basket_threshold_is_inclusive() {
    let mut coupon = basket_10_percent();
    coupon.rule.min_basket = Some(Cents(1000));
    let short = [line(1, "1", 1000, 999)];
    assert_eq!(
        only_reason(&run(&short, std::slice::from_ref(&coupon), &ctx())),
        SkipReason::BasketThresholdNotMet
    );
    let enough = [line(1, "1", 1000, 1000)];
    assert_eq!(
        only_discounts(&run(&enough, &[coupon], &ctx())),
        vec![(1, 100)]
    );
}

#[test]
fn fractional_quantity_is_one_unit_worth_the_line_amount() {
    // 1.5 × 2.99 = 4.485 → 4.49; 10 % → 0.449 → 0.45.
    let weighed = [line(1, "11", 1500, 299)];
    let coupon = offer("W", rule(percent(1000), items(&["11"])));
    assert_eq!(
        only_discounts(&run(&weighed, &[coupon], &ctx())),
        vec![(1, 45)]
    );

    // Two weighed lines make two units: the cheaper line (0.5 × 4.00 = 2.00) is free.
    let bogo = offer("BOGO", rule(bxgy(1, 1, 10_000), items(&["11", "22"])));
    let two = [line(1, "11", 1235, 299), line(2, "22", 500, 400)];
    assert_eq!(only_discounts(&run(&two, &[bogo], &ctx())), vec![(2, 200)]);
}

#[test]
fn returns_voids_and_free_lines_are_ignored() {
    let basket = [
        line(1, "11", -1000, 500),
        line(2, "11", 0, 500),
        line(3, "11", 1000, 0),
        line(4, "11", 1000, 300),
    ];
    assert_eq!(
        only_discounts(&run(&basket, &[basket_10_percent()], &ctx())),
        vec![(4, 30)]
    );

    let bogo = offer("BOGO", rule(bxgy(1, 1, 10_000), items(&["11"])));
    assert_eq!(
        only_reason(&run(&basket, &[bogo], &ctx())),
        SkipReason::RequirementNotMet
    );

    let mut threshold = basket_10_percent();
    threshold.rule.min_basket = Some(Cents(301));
    assert_eq!(
        only_reason(&run(&basket, &[threshold], &ctx())),
        SkipReason::BasketThresholdNotMet
    );
}

// ---------------------------------------------------------------- eligibility

#[test]
fn disabled_offers_never_apply() {
    let mut coupon = basket_10_percent();
    coupon.enabled = false;
    coupon.start_date = day(20); // also out of window: disabled is reported first
    assert_eq!(
        reason_with(candidate(&coupon), &ctx()),
        SkipReason::Disabled
    );
}

#[test]
fn validity_window_is_inclusive_at_both_ends() {
    let mut coupon = basket_10_percent();
    coupon.start_date = day(10);
    coupon.end_date = day(20);
    for (today, applies) in [(9, false), (10, true), (20, true), (21, false)] {
        let ctx = Context {
            today: day(today),
            ..ctx()
        };
        assert_eq!(
            applies_with(candidate(&coupon), &ctx),
            applies,
            "day {today}"
        );
        if !applies {
            assert_eq!(
                reason_with(candidate(&coupon), &ctx),
                SkipReason::OutOfWindow
            );
        }
    }
}

#[test]
fn targeted_offers_need_a_customer_row() {
    let mut coupon = basket_10_percent();
    coupon.targeted = true;
    assert_eq!(
        reason_with(held(&coupon, Holding::None), &ctx()),
        SkipReason::NotTargeted
    );
    assert!(applies_with(held(&coupon, Holding::Available), &ctx()));
}

#[test]
fn clip_required_offers_need_a_clip_or_a_hold_by_this_sale() {
    let mut coupon = basket_10_percent();
    coupon.requires_clip = true;
    for holding in [Holding::None, Holding::Available, Holding::Expired] {
        assert_eq!(
            reason_with(held(&coupon, holding), &ctx()),
            SkipReason::NotClipped,
            "{holding:?}"
        );
    }
    assert!(applies_with(held(&coupon, Holding::Clipped), &ctx()));
    assert!(applies_with(held(&coupon, Holding::PendingHere), &ctx()));
}

#[test]
fn coupons_held_by_another_sale_are_skipped() {
    let coupon = basket_10_percent();
    assert_eq!(
        reason_with(held(&coupon, Holding::PendingElsewhere), &ctx()),
        SkipReason::HeldElsewhere
    );
}

#[test]
fn per_customer_limit_and_redeemed_coupons() {
    let mut coupon = basket_10_percent();
    assert_eq!(
        reason_with(held(&coupon, Holding::Redeemed), &ctx()),
        SkipReason::CustomerLimitReached
    );
    coupon.per_customer_limit = Some(2);
    let used = |n| Candidate {
        customer_redemptions: n,
        ..held(&coupon, Holding::Clipped)
    };
    assert!(applies_with(used(1), &ctx()));
    assert_eq!(
        reason_with(used(2), &ctx()),
        SkipReason::CustomerLimitReached
    );
}

#[test]
fn global_limit() {
    let mut coupon = basket_10_percent();
    coupon.global_limit = Some(5);
    let used = |n| Candidate {
        global_redemptions: n,
        ..candidate(&coupon)
    };
    assert!(applies_with(used(4), &ctx()));
    assert_eq!(reason_with(used(5), &ctx()), SkipReason::GlobalLimitReached);
}

#[test]
fn optional_points_coupons_need_an_account_and_carry_their_cost() {
    let mut coupon = basket_10_percent();
    coupon.loyalty_cost = Some(100);
    assert_eq!(
        reason_with(candidate(&coupon), &ctx()),
        SkipReason::NoLoyaltyAccount
    );

    // A balance below the cost still offers the coupon: the POS decides whether to prompt.
    let ctx = Context {
        loyalty: Some(LoyaltyAccount {
            id: "L1".to_owned(),
            balance: 10,
        }),
        ..ctx()
    };
    let evaluation = run(&[line(1, "1", 1000, 500)], &[coupon], &ctx);
    assert_eq!(
        evaluation.applied[0].optional,
        Some(OptionalCost {
            loyalty_id: "L1".to_owned(),
            cost: 100
        })
    );
    assert_eq!(discounts(&evaluation.applied[0]), vec![(1, 50)]);
}

#[test]
fn optional_coupons_never_take_lines_from_mandatory_ones() {
    let mut points = offer("A-POINTS", rule(percent(5000), items(&["11"])));
    points.loyalty_cost = Some(100);
    let mandatory = offer("Z-SMALL", rule(percent(1000), items(&["11"])));
    let ctx = Context {
        loyalty: Some(LoyaltyAccount {
            id: "L1".to_owned(),
            balance: 1000,
        }),
        ..ctx()
    };
    let evaluation = run(&[line(1, "11", 1000, 1000)], &[points, mandatory], &ctx);
    assert_eq!(evaluation.applied.len(), 1);
    assert_eq!(evaluation.applied[0].coupon_id, "Z-SMALL");
    assert_eq!(
        evaluation.skipped,
        vec![Skipped {
            coupon_id: "A-POINTS".to_owned(),
            reason: SkipReason::OutStacked
        }]
    );
}

// ---------------------------------------------------------------- stacking

fn competing_offers() -> Vec<Offer> {
    vec![
        offer("BIG", rule(percent(5000), items(&["11"]))),
        offer("SMALL", rule(percent(1000), items(&["11"]))),
        offer("WIDE", rule(percent(1000), items(&["11", "22"]))),
    ]
}

#[test]
fn without_self_stacking_the_best_coupon_wins_the_line() {
    let basket = [line(1, "11", 1000, 1000), line(2, "22", 1000, 500)];
    let evaluation = run(&basket, &competing_offers(), &ctx());
    let applied: Vec<(&str, Vec<(i64, i64)>)> = evaluation
        .applied
        .iter()
        .map(|a| (a.coupon_id.as_str(), discounts(a)))
        .collect();
    // WIDE loses line 1 to BIG and moves to line 2; SMALL has nothing left.
    assert_eq!(
        applied,
        vec![("BIG", vec![(1, 500)]), ("WIDE", vec![(2, 50)])]
    );
    assert_eq!(
        evaluation.skipped,
        vec![Skipped {
            coupon_id: "SMALL".to_owned(),
            reason: SkipReason::OutStacked
        }]
    );
}

#[test]
fn without_self_stacking_requirements_must_be_met_by_unclaimed_lines() {
    let basket = [line(1, "11", 1000, 1000), line(2, "22", 1000, 500)];
    let big = offer("BIG", rule(percent(5000), items(&["11"])));
    let mut needs_two = rule(amount(100), items(&["11", "22"]));
    needs_two.min_qty = 2;
    let evaluation = run(&basket, &[big, offer("PAIR", needs_two)], &ctx());
    assert_eq!(evaluation.applied.len(), 1);
    assert_eq!(
        evaluation.skipped,
        vec![Skipped {
            coupon_id: "PAIR".to_owned(),
            reason: SkipReason::OutStacked
        }]
    );
}

#[test]
fn with_self_stacking_coupons_share_a_line_down_to_zero() {
    let basket = [line(1, "11", 1000, 1000), line(2, "22", 1000, 500)];
    let evaluation = run(&basket, &competing_offers(), &stacking());
    let applied: Vec<(&str, Vec<(i64, i64)>)> = evaluation
        .applied
        .iter()
        .map(|a| (a.coupon_id.as_str(), discounts(a)))
        .collect();
    // BIG takes 500 of line 1; WIDE (stand-alone 150) then takes 10 % of 500 + 500;
    // SMALL takes 10 % of the 450 left on line 1.
    assert_eq!(
        applied,
        vec![
            ("BIG", vec![(1, 500)]),
            ("SMALL", vec![(1, 45)]),
            ("WIDE", vec![(1, 50), (2, 50)])
        ]
    );

    // 60 % takes 600 of line 1 first; 5.00 off (stand-alone 500) is capped at the 400 left.
    let offers = [
        offer("OFF", rule(amount(500), items(&["11"]))),
        offer("P60", rule(percent(6000), items(&["11"]))),
    ];
    let evaluation = run(&basket, &offers, &stacking());
    let applied: Vec<Vec<(i64, i64)>> = evaluation.applied.iter().map(discounts).collect();
    assert_eq!(applied, vec![vec![(1, 400)], vec![(1, 600)]]);
}

#[test]
fn with_self_stacking_a_fully_discounted_line_leaves_nothing() {
    let basket = [line(1, "11", 1000, 300)];
    let offers = [
        offer("A", rule(amount(300), items(&["11"]))),
        offer("B", rule(percent(1000), items(&["11"]))),
    ];
    let evaluation = run(&basket, &offers, &stacking());
    assert_eq!(evaluation.applied.len(), 1);
    assert_eq!(
        evaluation.skipped,
        vec![Skipped {
            coupon_id: "B".to_owned(),
            reason: SkipReason::OutStacked
        }]
    );
}

#[test]
fn answer_does_not_depend_on_input_order_and_is_sorted_by_coupon_id() {
    let basket = [
        line(1, "11", 1000, 1000),
        line(2, "22", 1000, 500),
        line(3, "33", 2000, 250),
    ];
    let offers = competing_offers();
    let forward = run(&basket, &offers, &ctx());
    let reversed_basket: Vec<BasketLine> = basket.iter().rev().cloned().collect();
    let reversed_offers: Vec<Offer> = offers.iter().rev().cloned().collect();
    assert_eq!(run(&reversed_basket, &reversed_offers, &ctx()), forward);
    let ids: Vec<&str> = forward
        .applied
        .iter()
        .map(|a| a.coupon_id.as_str())
        .collect();
    assert_eq!(ids, vec!["BIG", "WIDE"]);
}
