//! Domain types shared by both services: identifiers parsed once at the edge, offers and
//! their pricing rules, per-customer coupon states.

use crate::money::Cents;
use chrono::NaiveDate;
use serde::{Deserialize, Serialize};
use std::fmt;

/// The upstream coupon providers, by the names offers, customers, vouchers and outbox rows
/// carry (the sync daemon has a client module of each name).
pub const UPSTREAM_PROVIDERS: [&str; 3] = ["convercus", "coupontools", "koupon"];

/// What the store's own offers, customers and vouchers name as their provider: nothing is
/// delivered upstream for them.
pub const LOCAL_PROVIDER: &str = "local";

/// Why an identifier from outside was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("{what} is missing")]
    Missing { what: &'static str },
    #[error("{what} is longer than {max} characters")]
    TooLong { what: &'static str, max: usize },
    #[error("{what} contains control characters")]
    Control { what: &'static str },
}

fn check_id(what: &'static str, raw: &str, max: usize) -> Result<(), IdError> {
    if raw.is_empty() {
        return Err(IdError::Missing { what });
    }
    if raw.chars().count() > max {
        return Err(IdError::TooLong { what, max });
    }
    if raw.chars().any(char::is_control) {
        return Err(IdError::Control { what });
    }
    Ok(())
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $what:literal, $max:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub const MAX_LEN: usize = $max;

            pub fn parse(raw: &str) -> Result<Self, IdError> {
                check_id($what, raw, $max)?;
                Ok(Self(raw.to_owned()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

id_type!(
    /// CATAPULT `site`: the store's site id as configured on the lanes.
    SiteId, "site", 64
);
id_type!(
    /// CATAPULT `customer`: the loyalty card barcode or any id of 1..16 characters.
    CustomerId, "customer", 16
);
id_type!(
    /// CATAPULT `transaction`: the sale id.
    TransactionId, "transaction", 64
);
id_type!(
    /// A local coupon id as the lanes see it: 1..16 characters (we issue at most 15, the
    /// commit limit).
    CouponId, "coupon id", 16
);
id_type!(
    /// A single-use voucher barcode (Coupontools session, Convercus code, Koupon barcode).
    VoucherCode, "voucher code", 128
);

impl CouponId {
    /// Coupon ids listed in a commit are limited to 15 characters by CATAPULT.
    pub const COMMIT_MAX_LEN: usize = 15;

    pub fn parse_for_commit(raw: &str) -> Result<Self, IdError> {
        check_id("coupon id", raw, Self::COMMIT_MAX_LEN)?;
        Ok(Self(raw.to_owned()))
    }
}

/// An item code normalised for matching.
///
/// Rule: keep the digits only and strip leading zeros. CATAPULT sends UPCs as JSON numbers
/// (which cannot carry leading zeros) while catalogs often store them as zero-padded
/// strings; both sides normalise the same way. The check digit is not recomputed: both
/// sides must carry the same significant digits. A code without any digit normalises to
/// the empty string and matches nothing.
///
/// The leading zeros a code was written with are remembered (not compared): CATAPULT §5.1
/// asks that a zero-padded UPC go back to the POS as a string with its zeros, never as a
/// number that would lose them.
#[derive(Debug, Clone)]
pub struct Upc {
    digits: String,
    zeros: u8,
}

impl PartialEq for Upc {
    fn eq(&self, other: &Upc) -> bool {
        self.digits == other.digits
    }
}

impl Eq for Upc {}

impl std::hash::Hash for Upc {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.digits.hash(h);
    }
}

impl PartialOrd for Upc {
    fn partial_cmp(&self, other: &Upc) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Upc {
    fn cmp(&self, other: &Upc) -> std::cmp::Ordering {
        self.digits.cmp(&other.digits)
    }
}

/// Stored and sent as written (zeros kept), so a rule read back keeps them.
impl Serialize for Upc {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.written())
    }
}

/// UPCs are read from JSON numbers or strings, and always normalised on the way in.
impl<'de> Deserialize<'de> for Upc {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Upc, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Number(serde_json::Number),
        }
        Ok(match Raw::deserialize(d)? {
            Raw::Text(s) => Upc::normalise(&s),
            Raw::Number(n) => Upc::from_number(&n),
        })
    }
}

impl Upc {
    /// A UPC sent as a JSON number. A whole number written with a fraction or an exponent
    /// (`894773001193.0`, `8.94773001193E11`, as some JSON writers print large numbers) is
    /// that whole number, not the digits of its text.
    pub fn from_number(n: &serde_json::Number) -> Upc {
        if let Some(u) = n.as_u64() {
            return Upc::normalise(&u.to_string());
        }
        let text = n.to_string();
        let whole = rust_decimal::Decimal::from_str_exact(&text)
            .or_else(|_| rust_decimal::Decimal::from_scientific(&text))
            .ok()
            .filter(|d| d.fract().is_zero() && !d.is_sign_negative());
        match whole {
            Some(d) => Upc::normalise(&d.trunc().normalize().to_string()),
            None => Upc::normalise(&text),
        }
    }

    pub fn normalise(raw: &str) -> Upc {
        let digits: String = raw.chars().filter(char::is_ascii_digit).collect();
        let trimmed = digits.trim_start_matches('0');
        Upc {
            zeros: u8::try_from(digits.len() - trimmed.len()).unwrap_or(u8::MAX),
            digits: trimmed.to_owned(),
        }
    }

    /// The normalised code: what matching compares.
    pub fn as_str(&self) -> &str {
        &self.digits
    }

    /// The code as it was written, leading zeros included (digits only).
    pub fn written(&self) -> std::borrow::Cow<'_, str> {
        if self.zeros == 0 {
            std::borrow::Cow::Borrowed(&self.digits)
        } else {
            std::borrow::Cow::Owned(format!(
                "{}{}",
                "0".repeat(usize::from(self.zeros)),
                self.digits
            ))
        }
    }

    /// Whether the code was written with leading zeros (then it must travel as a string).
    pub fn has_leading_zeros(&self) -> bool {
        self.zeros > 0
    }

    pub fn is_empty(&self) -> bool {
        self.digits.is_empty()
    }
}

/// A set of items a rule refers to. Both lists empty means "every item in the basket".
///
/// The lists keep the order they were written in (the catalog shows them so), and a sorted
/// copy without duplicates (UPCs compare by their normalised digits) makes `contains` a
/// binary search: a brand coupon may list hundreds of UPCs, and an update checks every line
/// of the sale against every candidate coupon. Build one with [`ItemSet::new`] or from JSON.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(from = "ItemSetFields")]
pub struct ItemSet {
    upcs: Vec<Upc>,
    depts: Vec<i64>,
    #[serde(skip_serializing)]
    sorted_upcs: Vec<Upc>,
    #[serde(skip_serializing)]
    sorted_depts: Vec<i64>,
}

/// The JSON form of an [`ItemSet`], as written (any order, duplicates allowed).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ItemSetFields {
    #[serde(default)]
    upcs: Vec<Upc>,
    #[serde(default)]
    depts: Vec<i64>,
}

impl From<ItemSetFields> for ItemSet {
    fn from(f: ItemSetFields) -> ItemSet {
        ItemSet::new(f.upcs, f.depts)
    }
}

impl ItemSet {
    pub fn new(upcs: Vec<Upc>, depts: Vec<i64>) -> ItemSet {
        let mut sorted_upcs = upcs.clone();
        sorted_upcs.sort();
        sorted_upcs.dedup();
        let mut sorted_depts = depts.clone();
        sorted_depts.sort_unstable();
        sorted_depts.dedup();
        ItemSet {
            upcs,
            depts,
            sorted_upcs,
            sorted_depts,
        }
    }

    /// The UPCs, as written.
    pub fn upcs(&self) -> &[Upc] {
        &self.upcs
    }

    /// The departments, as written.
    pub fn depts(&self) -> &[i64] {
        &self.depts
    }

    pub fn is_everything(&self) -> bool {
        self.upcs.is_empty() && self.depts.is_empty()
    }

    pub fn contains(&self, upc: &Upc, dept: Option<i64>) -> bool {
        if self.is_everything() {
            return true;
        }
        (!upc.is_empty() && self.sorted_upcs.binary_search(upc).is_ok())
            || dept.is_some_and(|d| self.sorted_depts.binary_search(&d).is_ok())
    }
}

/// What a coupon does to the items it rewards.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "camelCase",
    rename_all_fields = "camelCase",
    deny_unknown_fields
)]
pub enum Mechanic {
    /// `basis_points / 100` percent off the rewarded amount (2500 = 25 %).
    PercentOff { basis_points: u32 },
    /// A fixed amount off per application, never more than the rewarded amount.
    AmountOff { cents: Cents },
    /// Each rewarded unit costs `cents` (no discount when it already costs less).
    FixedPrice { cents: Cents },
    /// Buy `buy` requirement units, get `get` reward units `reward_basis_points` off
    /// (10000 = free: BOGO is `buy: 1, get: 1, reward_basis_points: 10000`).
    BuyXGetY {
        buy: u32,
        get: u32,
        reward_basis_points: u32,
    },
}

/// A pricing rule the discount engine understands; provider-neutral.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rule {
    pub mechanic: Mechanic,
    /// Items that must be bought. Empty = any item.
    #[serde(default)]
    pub requirement: ItemSet,
    /// Items that receive the discount; `None` = the requirement items.
    #[serde(default)]
    pub reward: Option<ItemSet>,
    /// Requirement units needed for one application (default 1). Ignored by `BuyXGetY`,
    /// which uses `buy`.
    #[serde(default = "one")]
    pub min_qty: u32,
    /// The basket subtotal (after POS discounts) must reach this amount.
    #[serde(default)]
    pub min_basket: Option<Cents>,
    /// At most this many applications per transaction. `None` = unlimited for
    /// per-unit mechanics, and one application for whole-basket rules.
    #[serde(default)]
    pub max_applications: Option<u32>,
}

impl Rule {
    /// What makes this rule one that can never apply, or would price wrongly, if anything:
    /// checked where rules come from people (an import, `offer_rules` in the config), so a
    /// typo is refused with its reason instead of quietly giving nothing or everything.
    pub fn problem(&self) -> Option<String> {
        match self.mechanic {
            Mechanic::PercentOff { basis_points } if !(1..=10_000).contains(&basis_points) => {
                Some(format!("percentOff basisPoints {basis_points} is not 1..10000 (10000 = 100 %)"))
            }
            Mechanic::AmountOff { cents } if cents <= Cents::ZERO => {
                Some(format!("amountOff cents {} must be at least 1", cents.0))
            }
            Mechanic::FixedPrice { cents } if cents < Cents::ZERO => {
                Some(format!("fixedPrice cents {} must not be negative", cents.0))
            }
            Mechanic::BuyXGetY { buy, get, reward_basis_points }
                if buy == 0 || get == 0 || !(1..=10_000).contains(&reward_basis_points) =>
            {
                Some(format!(
                    "buyXGetY needs buy and get of at least 1 and rewardBasisPoints 1..10000 (got buy {buy}, get {get}, rewardBasisPoints {reward_basis_points})"
                ))
            }
            _ => None,
        }
    }
}

fn single_use() -> Option<u32> {
    Some(1)
}

fn yes() -> bool {
    true
}

impl Offer {
    /// Enabled and within its validity window (whole days, inclusive) on `today`.
    pub fn usable_on(&self, today: NaiveDate) -> bool {
        self.enabled && self.start_date <= today && today <= self.end_date
    }
}

fn one() -> u32 {
    1
}

/// Display and policy data of an offer (a coupon in CATAPULT's catalog). Its JSON form is
/// the import format (camelCase; optional fields may be left out).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Offer {
    pub id: CouponIdString,
    pub provider: String,
    pub provider_ref: String,
    #[serde(default)]
    pub short_description: String,
    #[serde(default)]
    pub requirement_description: String,
    #[serde(default)]
    pub long_description: String,
    #[serde(default)]
    pub category: String,
    #[serde(default)]
    pub brand: String,
    pub start_date: NaiveDate,
    pub end_date: NaiveDate,
    #[serde(default)]
    pub image_url: Option<String>,
    #[serde(default)]
    pub targeted: bool,
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default)]
    pub featured: bool,
    /// Clipping required before the coupon applies (digital coupons); `false` for offers that
    /// apply to every identified customer.
    #[serde(default = "yes")]
    pub requires_clip: bool,
    pub rule: Rule,
    #[serde(default)]
    pub receipt_alias: String,
    #[serde(default = "yes")]
    pub reduces_tax: bool,
    #[serde(default)]
    pub coupon_type: String,
    #[serde(default)]
    pub external_id: String,
    /// Redemptions allowed per customer (`None` = unlimited). Defaults to 1 (single use).
    #[serde(default = "single_use")]
    pub per_customer_limit: Option<u32>,
    /// Redemptions allowed at this store in total (`None` = unlimited).
    #[serde(default)]
    pub global_limit: Option<u32>,
    /// When set, the coupon is optional and bought with this many loyalty points.
    #[serde(default)]
    pub loyalty_cost: Option<i64>,
}

/// Coupon ids as stored (already validated on the way in).
pub type CouponIdString = String;

/// The state of one coupon for one customer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CouponState {
    Available,
    Clipped,
    Pending,
    Redeemed,
    Expired,
}

impl CouponState {
    pub fn as_str(self) -> &'static str {
        match self {
            CouponState::Available => "available",
            CouponState::Clipped => "clipped",
            CouponState::Pending => "pending",
            CouponState::Redeemed => "redeemed",
            CouponState::Expired => "expired",
        }
    }

    pub fn parse(s: &str) -> Option<CouponState> {
        Some(match s {
            "available" => CouponState::Available,
            "clipped" => CouponState::Clipped,
            "pending" => CouponState::Pending,
            "redeemed" => CouponState::Redeemed,
            "expired" => CouponState::Expired,
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn an_item_set_finds_every_listed_item_whatever_order_it_was_written_in() {
        // Written unsorted, with a duplicate (once zero-padded) and numbers and strings mixed.
        let set: ItemSet = serde_json::from_value(serde_json::json!({
            "upcs": ["900", 30, "0000000000700", "100", "700", 500, "20"],
            "depts": [9, 3, 3, 1],
        }))
        .unwrap();
        for upc in ["20", "30", "100", "500", "700", "900"] {
            assert!(set.contains(&Upc::normalise(upc), None), "{upc}");
        }
        for upc in ["10", "200", "701", "9000"] {
            assert!(!set.contains(&Upc::normalise(upc), None), "{upc}");
        }
        for dept in [1, 3, 9] {
            assert!(set.contains(&Upc::normalise("1"), Some(dept)), "{dept}");
        }
        assert!(!set.contains(&Upc::normalise("1"), Some(2)));
        // Listed as written.
        let written: Vec<&str> = set.upcs().iter().map(Upc::as_str).collect();
        assert_eq!(written, ["900", "30", "700", "100", "700", "500", "20"]);
        assert_eq!(set.depts(), [9, 3, 3, 1]);
        assert_eq!(
            serde_json::to_value(&set).unwrap(),
            serde_json::json!({"upcs": ["900", "30", "0000000000700", "100", "700", "500", "20"], "depts": [9, 3, 3, 1]})
        );
        let listed = ItemSet::new(vec![Upc::normalise("5"), Upc::normalise("4")], vec![2, 1]);
        assert!(listed.contains(&Upc::normalise("4"), None));
        assert!(listed.contains(&Upc::normalise("x"), Some(1)));
        // Unknown fields are still refused.
        assert!(serde_json::from_value::<ItemSet>(serde_json::json!({"upc": ["1"]})).is_err());
    }

    #[test]
    fn upc_normalisation_matches_numbers_and_padded_strings() {
        assert_eq!(
            Upc::normalise("00894773001193"),
            Upc::normalise("894773001193")
        );
        assert_eq!(Upc::normalise("0-12345-67890-5").as_str(), "12345678905");
        assert!(Upc::normalise("abc").is_empty());
        let parsed: Vec<Upc> =
            serde_json::from_str(r#"["0894773001193", 894773001193]"#).unwrap_or_default();
        assert_eq!(
            parsed,
            vec![
                Upc::normalise("894773001193"),
                Upc::normalise("894773001193")
            ]
        );
        // Zeros are remembered for the way back, not compared.
        let padded = Upc::normalise("0038000012345");
        assert_eq!(padded, Upc::normalise("38000012345"));
        assert_eq!(padded.written(), "0038000012345");
        assert!(padded.has_leading_zeros() && !Upc::normalise("38000012345").has_leading_zeros());
        assert_eq!(
            serde_json::to_string(&padded).unwrap_or_default(),
            r#""0038000012345""#
        );
        // Whole numbers some JSON writers print with a fraction or an exponent.
        let parsed: Vec<Upc> =
            serde_json::from_str(r#"[894773001193.0, 8.94773001193E11, 8.94773001193e+11]"#)
                .unwrap_or_default();
        assert_eq!(parsed, vec![Upc::normalise("894773001193"); 3]);
    }

    #[test]
    fn ids_have_length_limits() {
        assert!(CouponId::parse("1234567890123456").is_ok());
        assert!(CouponId::parse("12345678901234567").is_err());
        assert!(CouponId::parse_for_commit("1234567890123456").is_err());
        assert!(CustomerId::parse("").is_err());
        assert!(CustomerId::parse("a\u{0}b").is_err());
    }

    proptest! {
        #[test]
        fn coupon_id_parse_accepts_exactly_1_to_16_chars(s in "[A-Za-z0-9]{0,24}") {
            let n = s.chars().count();
            prop_assert_eq!(CouponId::parse(&s).is_ok(), (1..=16).contains(&n));
        }

        #[test]
        fn upc_normalise_is_idempotent(s in "[0-9 -]{0,20}") {
            let once = Upc::normalise(&s);
            prop_assert_eq!(Upc::normalise(once.as_str()), once.clone());
            prop_assert!(!once.as_str().starts_with('0'));
        }
    }
}
