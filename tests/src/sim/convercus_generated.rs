//! Generated Convercus data for load tests: `accounts` accounts with `coupons_per_account`
//! account coupons each, synthesized on request from their number (nothing is stored per
//! account), drawn from a catalog of `catalog` distinct couponIds. Writes (activation,
//! redemption) land in a small overlay of changed account coupons, so they work, are
//! ledgered and show in later reads like seeded ones. Every lookup is O(1): identifiers
//! are parsed back into the account number.
//!
//! Account `n` (0-based): card code `9000000000000 + n`, id
//! `9e9e9e9e-0000-4000-8000-<n, 12 digits>`, app code `G<n, 9 digits>`, external code
//! `LOY-<card code>`, user `5e5e5e5e-0000-4000-8000-<n>`; its `k`-th account coupon is
//! `GEN-<n>-<k>`, of catalog coupon `(7n + k) mod catalog`, couponId
//! `c9c9c9c9-0000-4000-8000-<c, 12 digits>`. See `docs/provider-sim.md`.

use serde_json::{json, Value};
use std::collections::HashMap;

/// The first generated card code.
pub const FIRST_CARD: u64 = 9_000_000_000_000;
/// Accounts above this would run out of 13-digit card codes.
const MAX_ACCOUNTS: u64 = 999_999_999_999;
const ACCOUNT_PREFIX: &str = "9e9e9e9e-0000-4000-8000-";
const USER_PREFIX: &str = "5e5e5e5e-0000-4000-8000-";
const MEMBERSHIP_PREFIX: &str = "3e3e3e3e-0000-4000-8000-";
const COUPON_PREFIX: &str = "c9c9c9c9-0000-4000-8000-";
const ACCOUNT_COUPON_PREFIX: &str = "GEN-";

/// The generated data's shape and the overlay of what writes changed.
#[derive(Debug, Clone, Default)]
pub struct Generated {
    pub accounts: u64,
    pub coupons_per_account: u64,
    pub catalog: u64,
    /// Account coupons changed by a write, whole, by accountCouponId.
    changed: HashMap<String, Value>,
    /// Redemptions per catalog coupon since generation (added to `redeemCountGlobal`).
    redeemed: HashMap<u64, i64>,
}

/// The 12-digit number at the end of a generated UUID-like id with `prefix`.
fn number_after(s: &str, prefix: &str) -> Option<u64> {
    let digits = s.strip_prefix(prefix)?;
    if digits.len() != 12 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Cheap deterministic mixing (splitmix64) so states vary without a pattern per column.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Generated {
    /// From `{"accounts": N, "coupons_per_account": K, "catalog": C}` (K defaults to 20,
    /// C to 200; K ≤ C so an account never holds one coupon twice).
    pub fn from_json(v: &Value) -> Result<Generated, String> {
        let Some(o) = v.as_object() else {
            return Err(
                "convercus: must be an object {accounts, coupons_per_account, catalog}".into(),
            );
        };
        for k in o.keys() {
            if !["accounts", "coupons_per_account", "catalog"].contains(&k.as_str()) {
                return Err(format!("convercus.{k}: unknown field"));
            }
        }
        let n = |k: &str, default: u64| -> Result<u64, String> {
            match o.get(k) {
                None => Ok(default),
                Some(x) => x
                    .as_u64()
                    .ok_or(format!("convercus.{k} must be a whole number ≥ 0")),
            }
        };
        let g = Generated {
            accounts: n("accounts", 0)?,
            coupons_per_account: n("coupons_per_account", 20)?,
            catalog: n("catalog", 200)?,
            ..Generated::default()
        };
        if g.accounts > MAX_ACCOUNTS {
            return Err(format!("convercus.accounts must be at most {MAX_ACCOUNTS}"));
        }
        if g.catalog == 0 || g.coupons_per_account > g.catalog {
            return Err("convercus: need 1 ≤ catalog and coupons_per_account ≤ catalog".into());
        }
        Ok(g)
    }

    /// What was generated, for the admin API.
    pub fn to_json(&self) -> Value {
        json!({
            "accounts": self.accounts,
            "coupons_per_account": self.coupons_per_account,
            "catalog": self.catalog,
            "coupon_states": self.accounts * self.coupons_per_account,
            "first_card_code": FIRST_CARD.to_string(),
            "changed_account_coupons": self.changed.len(),
        })
    }

    /// The account coupons writes changed (for `/__sim/state`).
    pub fn changed(&self) -> Vec<Value> {
        let mut ids: Vec<&String> = self.changed.keys().collect();
        ids.sort();
        ids.into_iter().filter_map(|id| self.coupon(id)).collect()
    }

    pub fn card_code(n: u64) -> String {
        (FIRST_CARD + n).to_string()
    }

    pub fn account_id(n: u64) -> String {
        format!("{ACCOUNT_PREFIX}{n:012}")
    }

    pub fn account_coupon_id(n: u64, k: u64) -> String {
        format!("{ACCOUNT_COUPON_PREFIX}{n}-{k}")
    }

    pub fn coupon_id(c: u64) -> String {
        format!("{COUPON_PREFIX}{c:012}")
    }

    /// The account number of an identifier of the given `id-type`.
    pub fn account_number(&self, id: &str, id_type: &str) -> Option<u64> {
        let n = match id_type {
            "ID" => number_after(id, ACCOUNT_PREFIX)?,
            "CARDCODE" => {
                if id.len() != 13 || !id.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                id.parse::<u64>().ok()?.checked_sub(FIRST_CARD)?
            }
            "APPCODE" => {
                let d = id.strip_prefix('G')?;
                if d.len() != 9 || !d.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                d.parse().ok()?
            }
            "EXTERNALCODE" => return self.account_number(id.strip_prefix("LOY-")?, "CARDCODE"),
            _ => return None,
        };
        (n < self.accounts).then_some(n)
    }

    /// `(n, k)` of a generated accountCouponId (only its canonical spelling).
    pub fn account_coupon_number(&self, id: &str) -> Option<(u64, u64)> {
        let (n, k) = id.strip_prefix(ACCOUNT_COUPON_PREFIX)?.split_once('-')?;
        let (n, k): (u64, u64) = (n.parse().ok()?, k.parse().ok()?);
        (n < self.accounts && k < self.coupons_per_account && Self::account_coupon_id(n, k) == id)
            .then_some((n, k))
    }

    /// The catalog number of a generated couponId.
    pub fn catalog_number(&self, coupon_id: &str) -> Option<u64> {
        number_after(coupon_id, COUPON_PREFIX).filter(|c| *c < self.catalog)
    }

    fn catalog_of(&self, n: u64, k: u64) -> u64 {
        (n.wrapping_mul(7) + k) % self.catalog
    }

    /// Every 500th account is LOCKED.
    pub fn status(n: u64) -> &'static str {
        if n % 500 == 499 {
            "LOCKED"
        } else {
            "ACTIVE"
        }
    }

    /// `GET /accounts/{id}`.
    pub fn account(n: u64) -> Value {
        json!({"id": Self::account_id(n), "program": "Pgr-A", "status": Self::status(n)})
    }

    /// Every identifier of account `n`, lower-cased (for `/search`).
    pub fn identifiers(n: u64) -> [String; 5] {
        [
            Self::card_code(n),
            format!("g{n:09}"),
            format!("loy-{}", Self::card_code(n)),
            Self::account_id(n),
            format!("gen{n}@example.com"),
        ]
    }

    pub fn user_id(n: u64) -> String {
        format!("{USER_PREFIX}{n:012}")
    }

    /// The account number of a generated userId.
    pub fn user_number(&self, id: &str) -> Option<u64> {
        number_after(id, USER_PREFIX).filter(|n| *n < self.accounts)
    }

    pub fn memberships(n: u64) -> Value {
        json!([{
            "accountId": Self::account_id(n), "memberRole": "OWNER",
            "membershipId": format!("{MEMBERSHIP_PREFIX}{n:012}"), "optins": [],
            "partnerId": "8e8e8e8e-0000-4000-8000-000000000001", "userId": Self::user_id(n),
        }])
    }

    pub fn user(n: u64) -> Value {
        json!({
            "userId": Self::user_id(n), "givenName": "Gen", "familyName": format!("Customer{n}"),
            "emailAddress": format!("gen{n}@example.com"), "phone": 5_550_000_000u64 + n,
            "zipCode": 60601, "city": "Chicago", "countryCode": "US", "birthDate": "1980-01-01",
            "genderCode": if n.is_multiple_of(2) { "FEMALE" } else { "MALE" }, "customProperties": [],
        })
    }

    /// Account coupon `k` of account `n` as generated (before any write), without
    /// `redeemCountGlobal` (see [`Generated::coupon`]).
    fn generate(&self, n: u64, k: u64) -> Value {
        let c = self.catalog_of(n, k);
        // Offer-level fields depend on the catalog coupon only, so every account agrees on
        // what coupon `c` is; per-account state (activation, redemptions) varies.
        let (usage, value) = match c % 10 {
            0..=6 => ("DISCOUNT", 5 * (1 + c % 6)),
            7 => ("REWARD", 100 + 50 * (c % 5)),
            8 => ("EXTRAPOINT", 100),
            _ => ("MULTIPLIER", 2),
        };
        let activatable = c.is_multiple_of(3);
        let max = if c % 4 == 1 { 5 } else { 1 };
        let valid_to = if c % 25 == 24 {
            "2026-06-30T23:59:00"
        } else {
            "2099-12-31T23:59:00"
        };
        let h = mix(n.wrapping_mul(self.coupons_per_account) + k);
        let activated = activatable && h.is_multiple_of(2);
        let redeem_count = u64::from(h.is_multiple_of(7));
        let external = format!("EXT-GEN-{c}");
        json!({
            "accountCouponId": Self::account_coupon_id(n, k),
            "accountId": Self::account_id(n),
            "couponId": Self::coupon_id(c),
            "usageType": usage,
            "externalReference": external,
            "externalCode": {"value": external, "type": "TEXT"},
            "maxRedeemCount": max,
            "maxRedeemCountGlobal": null,
            "redeemCount": redeem_count,
            "pointsOfRedemption": [],
            "validFrom": "2026-01-01T00:00:00",
            "validTo": valid_to,
            "stateLevel": null,
            "couponValue": value,
            "customProperties": [],
            "images": [],
            "i18nFields": {"en": {
                "title": format!("Generated {usage} {c}"), "subTitle": "Generated",
                "description": format!("Catalog coupon {c}"), "bookingText": format!("Gen {c}"),
            }},
            "activation": {
                "activatable": activatable,
                "activated": if activatable { json!(activated) } else { Value::Null },
                "lastActivationDate": if activated { json!("2026-01-02T10:00:00") } else { Value::Null },
            },
        })
    }

    /// One account coupon as served: generated or changed by a write, with its current
    /// `redeemCountGlobal`.
    pub fn coupon(&self, id: &str) -> Option<Value> {
        let (n, k) = self.account_coupon_number(id)?;
        Some(self.coupon_at(n, k))
    }

    fn coupon_at(&self, n: u64, k: u64) -> Value {
        let id = Self::account_coupon_id(n, k);
        let mut v = self
            .changed
            .get(&id)
            .cloned()
            .unwrap_or_else(|| self.generate(n, k));
        let c = self.catalog_of(n, k);
        let global = (c * 13) % 500 + self.redeemed.get(&c).copied().unwrap_or(0) as u64;
        if let Some(o) = v.as_object_mut() {
            o.insert("redeemCountGlobal".into(), json!(global));
        }
        v
    }

    /// Every account coupon of account `n`.
    pub fn coupons_of(&self, n: u64) -> Vec<Value> {
        (0..self.coupons_per_account)
            .map(|k| self.coupon_at(n, k))
            .collect()
    }

    /// The overlay copy of account coupon `id`, created on first write.
    pub fn coupon_mut(&mut self, id: &str) -> Option<&mut Value> {
        let (n, k) = self.account_coupon_number(id)?;
        if !self.changed.contains_key(id) {
            let v = self.generate(n, k);
            self.changed.insert(id.to_owned(), v);
        }
        self.changed.get_mut(id)
    }

    /// A redemption of catalog coupon `c` (every account's copy counts it globally).
    pub fn count_global(&mut self, c: u64) {
        *self.redeemed.entry(c).or_insert(0) += 1;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn identifiers_round_trip_and_coupons_are_distinct_per_account() {
        let g =
            Generated::from_json(&json!({"accounts": 1000, "coupons_per_account": 20})).unwrap();
        for n in [0, 1, 499, 999] {
            assert_eq!(
                g.account_number(&Generated::card_code(n), "CARDCODE"),
                Some(n)
            );
            assert_eq!(g.account_number(&Generated::account_id(n), "ID"), Some(n));
            assert_eq!(g.account_number(&format!("G{n:09}"), "APPCODE"), Some(n));
            let ext = format!("LOY-{}", Generated::card_code(n));
            assert_eq!(g.account_number(&ext, "EXTERNALCODE"), Some(n));
            let coupons = g.coupons_of(n);
            let mut ids: Vec<String> = coupons.iter().map(|c| c["couponId"].to_string()).collect();
            ids.sort();
            ids.dedup();
            assert_eq!(ids.len(), 20);
        }
        assert_eq!(
            g.account_number(&Generated::card_code(1000), "CARDCODE"),
            None
        );
        assert_eq!(g.account_number("4000000000001", "CARDCODE"), None);
        assert_eq!(g.account_coupon_number("GEN-5-19"), Some((5, 19)));
        assert_eq!(g.account_coupon_number("GEN-5-20"), None);
        assert_eq!(g.account_coupon_number("GEN-05-1"), None);
    }

    #[test]
    fn offer_fields_depend_on_the_catalog_coupon_only() {
        let g = Generated::from_json(&json!({"accounts": 100000})).unwrap();
        let strip = |mut v: Value| {
            for k in ["accountCouponId", "accountId", "redeemCount", "activation"] {
                v.as_object_mut().unwrap().remove(k);
            }
            v
        };
        // Account 0's coupon 7 and account 1's coupon 0 are both catalog coupon 7.
        assert_eq!(strip(g.coupon_at(0, 7)), strip(g.coupon_at(1, 0)));
    }

    /// Generated mode over HTTP: lookups by every identifier, the coupon list, writes in
    /// the overlay (visible afterwards, ledgered), seeded data still there.
    #[actix_web::test]
    async fn generated_accounts_answer_and_take_writes() {
        use crate::sim::{run, Listeners, State};
        crate::install_crypto();
        let state = actix_web::web::Data::new(State::new());
        let sim = run(Listeners::loopback().unwrap(), state).await.unwrap();
        let http = reqwest::Client::new();
        let admin = sim.admin_url();
        let r = http
            .post(format!("{admin}/__sim/generate"))
            .json(&json!({"convercus": {"accounts": 1000, "coupons_per_account": 20, "catalog": 200}}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let done: Value = r.json().await.unwrap();
        assert_eq!(done["convercus"]["coupon_states"], 20000);
        let bad = http
            .post(format!("{admin}/__sim/generate"))
            .json(&json!({"convercus": {"accounts": 10, "coupons_per_account": 30, "catalog": 20}}))
            .send()
            .await
            .unwrap();
        assert_eq!(bad.status(), 400);
        let cv = sim.convercus_url();
        let login: Value = http
            .post(format!("{cv}/auth/login"))
            .json(&json!({"org": "demo-org", "userName": "edge", "password": "edge-secret"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let token = login["token"].as_str().unwrap().to_owned();
        let get = |path: &str, id_type: &str| {
            http.get(format!("{cv}{path}"))
                .header("Authorization", &token)
                .header("interaction-id", "edge")
                .header("id-type", id_type)
        };
        let body = |r: reqwest::RequestBuilder| async move {
            let r = r.send().await.unwrap();
            (
                r.status().as_u16(),
                r.json::<Value>().await.unwrap_or(Value::Null),
            )
        };
        let (s, a) = body(get("/accounts/9000000000042", "CARDCODE")).await;
        assert_eq!(s, 200);
        assert_eq!(
            a,
            json!({"id": Generated::account_id(42), "program": "Pgr-A", "status": "ACTIVE"})
        );
        let (s, _) = body(get("/accounts/LOY-9000000000042", "EXTERNALCODE")).await;
        assert_eq!(s, 200);
        let (s, _) = body(get("/accounts/9000000001000", "CARDCODE")).await;
        assert_eq!(s, 404, "past the generated accounts");
        let (_, locked) = body(get("/accounts/9000000000499", "CARDCODE")).await;
        assert_eq!(locked["status"], "LOCKED");
        // The seeded account is still there.
        let (s, _) = body(get("/accounts/4000000000001", "CARDCODE")).await;
        assert_eq!(s, 200);
        let (_, m) = body(get("/accounts/9000000000042/memberships", "CARDCODE")).await;
        let user = m[0]["userId"].as_str().unwrap().to_owned();
        let (s, u) = body(get(&format!("/users/{user}"), "ID")).await;
        assert_eq!(s, 200);
        assert_eq!(u["emailAddress"], "gen42@example.com");
        let (s, list) = body(get("/v2/accounts/9000000000042/accountcoupons", "CARDCODE")).await;
        assert_eq!(s, 200);
        let list = list.as_array().unwrap().clone();
        assert_eq!(list.len(), 20);
        // A redeemable one: DISCOUNT, not yet redeemed, not activatable, still valid.
        let pick = list
            .iter()
            .find(|c| {
                c["usageType"] == "DISCOUNT"
                    && c["redeemCount"] == 0
                    && c["activation"]["activatable"] == false
                    && c["validTo"] == "2099-12-31T23:59:00"
            })
            .unwrap();
        let id = pick["accountCouponId"].as_str().unwrap().to_owned();
        let global = pick["redeemCountGlobal"].as_i64().unwrap();
        let r = http
            .patch(format!("{cv}/v2/accountcoupons/{id}"))
            .header("Authorization", &token)
            .header("interaction-id", "edge")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
        let (_, after) = body(get(&format!("/v2/accountcoupons/{id}"), "ID")).await;
        assert_eq!(
            after["redeemCount"].as_i64(),
            pick["redeemCount"].as_i64().map(|c| c + 1)
        );
        assert_eq!(after["redeemCountGlobal"].as_i64(), Some(global + 1));
        // Account 242's coupon k is the same catalog coupon ((7n + k) mod 200): counted too.
        let k = id.rsplit('-').next().unwrap();
        let (_, other) = body(get(&format!("/v2/accountcoupons/GEN-242-{k}"), "ID")).await;
        assert_eq!(other["couponId"], pick["couponId"]);
        assert_eq!(other["redeemCountGlobal"].as_i64(), Some(global + 1));
        let state: Value = http
            .get(format!("{admin}/__sim/state"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            state["convercus"]["generated"]["changed_account_coupons"],
            1
        );
        assert!(state["convercus"]["accountCoupons"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["accountCouponId"] == id.as_str()));
        let ledger: Value = http
            .get(format!(
                "{admin}/__sim/ledger?provider=convercus&operation=redemption"
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(ledger[0]["key"], id.as_str());
        assert_eq!(ledger[0]["applied"], true);
        // Unknown generated-looking ids are not found.
        let (s, _) = body(get("/v2/accountcoupons/GEN-1000-0", "ID")).await;
        assert_eq!(s, 404);
        sim.stop().await;
    }
}
