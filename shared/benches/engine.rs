//! Discount engine benchmark (release build, in process, no I/O):
//!
//!     cargo bench -p edge-shared --bench engine
//!
//! Times `engine::evaluate` for the lane bench's sale (30 lines, the customer's 20 clipped
//! coupons with one requirement UPC each, 5 of them matching the basket) and for a heavier
//! one (each coupon lists 200 UPCs and a separate reward set, as brand coupons do). Each
//! case runs BENCH_ROUNDS (default 200) rounds of 1,000 evaluations and prints the median
//! and p99 of a round's mean, in µs per evaluation: what one update costs the HTTP worker
//! in the engine alone, apart from TLS, JSON and SQLite (which `lanes` measures together).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use chrono::NaiveDate;
use serde_json::json;
use shared::domain::{Offer, Upc};
use shared::engine::{evaluate, BasketLine, Candidate, Context, Holding};
use shared::money::{Cents, MilliQty};
use std::hint::black_box;
use std::time::Instant;

const LINES: i64 = 30;
const COUPONS: usize = 20;
const MATCHING: usize = 5;

fn upc(n: u64) -> String {
    format!("{:012}", 400_000_000_000 + n)
}

/// Coupon `n`: requires `upcs` UPCs (the first one is `upc(n)`), rewards its own set when
/// `reward` is set.
fn offer(n: usize, upcs: usize, reward: bool) -> Offer {
    let n64 = n as u64;
    let list = |base: u64| -> Vec<String> {
        (0..upcs as u64)
            .map(|k| upc(if k == 0 { base } else { base + 1_000_000 * k }))
            .collect()
    };
    let mechanic = match n % 4 {
        0 => json!({"type": "percentOff", "basisPoints": 2500}),
        1 => json!({"type": "amountOff", "cents": 50}),
        2 => json!({"type": "fixedPrice", "cents": 99}),
        _ => json!({"type": "buyXGetY", "buy": 1, "get": 1, "rewardBasisPoints": 5000}),
    };
    let mut rule = json!({
        "mechanic": mechanic,
        "requirement": {"upcs": list(n64)},
        "maxApplications": 1,
    });
    if reward {
        rule["reward"] = json!({"upcs": list(n64 + 500)});
    }
    serde_json::from_value(json!({
        "id": format!("O{n}"),
        "provider": "local",
        "providerRef": format!("ref-{n}"),
        "startDate": "2020-01-01",
        "endDate": "2099-12-31",
        "rule": rule,
    }))
    .unwrap()
}

/// 30 lines: the first MATCHING coupons' requirement (and reward) items, then other goods.
fn basket(reward: bool) -> Vec<BasketLine> {
    let mut codes: Vec<u64> = (0..MATCHING as u64).collect();
    if reward {
        codes.extend((0..MATCHING as u64).map(|n| n + 500));
    }
    codes.extend((0..LINES as u64).map(|n| 900 + n));
    codes
        .into_iter()
        .take(LINES as usize)
        .zip(1..)
        .map(|(code, line_id)| BasketLine {
            line_id,
            upc: Upc::normalise(&upc(code)),
            dept: Some(7),
            quantity: MilliQty(2000),
            unit_price: Cents(399),
            unit_discount_price: Cents(349),
        })
        .collect()
}

fn run(name: &str, upcs: usize, reward: bool, rounds: usize) {
    let offers: Vec<Offer> = (0..COUPONS).map(|n| offer(n, upcs, reward)).collect();
    let candidates: Vec<Candidate<'_>> = offers
        .iter()
        .map(|offer| Candidate {
            offer,
            holding: Holding::Clipped,
            customer_redemptions: 0,
            global_redemptions: 0,
        })
        .collect();
    let basket = basket(reward);
    let ctx = Context {
        today: NaiveDate::from_ymd_opt(2026, 6, 1).unwrap(),
        self_stacking: false,
        loyalty: None,
    };
    let applied = evaluate(&basket, &candidates, &ctx).applied.len();
    assert_eq!(
        applied, MATCHING,
        "{name}: the sale should match {MATCHING} coupons"
    );

    const PER_ROUND: u32 = 1_000;
    let mut means: Vec<f64> = (0..rounds)
        .map(|_| {
            let started = Instant::now();
            for _ in 0..PER_ROUND {
                black_box(evaluate(black_box(&basket), black_box(&candidates), &ctx));
            }
            started.elapsed().as_secs_f64() * 1e6 / f64::from(PER_ROUND)
        })
        .collect();
    means.sort_by(f64::total_cmp);
    let at = |q: f64| means[((means.len() - 1) as f64 * q).round() as usize];
    println!("{name:<48} {:>8.2} {:>8.2}", at(0.5), at(0.99));
}

fn main() {
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    println!(
        "engine::evaluate, {LINES} lines, {COUPONS} clipped coupons, {MATCHING} apply; {rounds} rounds of 1,000"
    );
    println!("{:<48} {:>8} {:>8}", "case", "p50 µs", "p99 µs");
    run(
        "1 requirement UPC per coupon (the lane bench)",
        1,
        false,
        rounds,
    );
    run(
        "200 requirement + 200 reward UPCs per coupon",
        200,
        true,
        rounds,
    );
}
