//! Bulk import of offers (with their rules), customers with their coupon states, and
//! vouchers from one JSON file (format: docs/import-format.md). Used by the demo, to
//! bootstrap a new store from a snapshot, and by the benchmark. Writes in short
//! transactions through the writer so lanes are never stalled, and reports progress.

use crate::db::{now_secs, WriteError, Writer};
use crate::domain::{
    CouponId, CouponState, CustomerId, Offer, VoucherCode, LOCAL_PROVIDER, UPSTREAM_PROVIDERS,
};
use crate::money::Cents;
use crate::repo::{self, Customer, Voucher};
use serde::Deserialize;
use std::path::Path;

/// Rows written per transaction (a customer and each of its coupon states are a row each):
/// small enough that a lane commit never waits long behind one.
pub const CHUNK: usize = 1000;

/// A snapshot may name an upstream provider or `local` (offers, vouchers, customers):
/// anything else would never reach a provider, silently (the outbox has nothing to send).
fn known_provider(what: &str, provider: &str) -> Result<(), ImportError> {
    if provider == LOCAL_PROVIDER || UPSTREAM_PROVIDERS.contains(&provider) {
        Ok(())
    } else {
        Err(ImportError::Invalid(format!(
            "{what}: provider `{provider}` is not one of {}, {LOCAL_PROVIDER}",
            UPSTREAM_PROVIDERS.join(", ")
        )))
    }
}

/// Customers in runs of at most [`CHUNK`] rows (one customer with more coupons is a run
/// of its own).
fn row_chunks(customers: &[ImportCustomer]) -> Vec<&[ImportCustomer]> {
    let mut out = Vec::new();
    let (mut start, mut rows) = (0, 0);
    for (i, c) in customers.iter().enumerate() {
        let r = 1 + c.coupons.len();
        if rows > 0 && rows + r > CHUNK {
            out.push(&customers[start..i]);
            (start, rows) = (i, 0);
        }
        rows += r;
    }
    if start < customers.len() {
        out.push(&customers[start..]);
    }
    out
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Snapshot {
    #[serde(default)]
    pub offers: Vec<Offer>,
    #[serde(default)]
    pub customers: Vec<ImportCustomer>,
    #[serde(default)]
    pub vouchers: Vec<ImportVoucher>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ImportCustomer {
    pub id: String,
    #[serde(default)]
    pub first_name: Option<String>,
    #[serde(default)]
    pub last_name: Option<String>,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub phone: Option<String>,
    #[serde(default)]
    pub provider: Option<String>,
    #[serde(default)]
    pub provider_ref: Option<String>,
    #[serde(default)]
    pub loyalty_id: Option<String>,
    #[serde(default)]
    pub points_balance: i64,
    #[serde(default)]
    pub coupons: Vec<ImportCoupon>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ImportCoupon {
    pub offer_id: String,
    pub state: CouponState,
    /// The provider's id of this customer's copy (Convercus accountCouponId), if any.
    #[serde(default)]
    pub provider_ref: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ImportVoucher {
    pub code: String,
    pub provider: String,
    #[serde(default)]
    pub provider_ref: Option<String>,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub value_cents: i64,
    #[serde(default)]
    pub min_spend_cents: i64,
    #[serde(default)]
    pub valid_from: Option<String>,
    #[serde(default)]
    pub valid_until: Option<String>,
    /// Another code the voucher may be scanned by (e.g. a Coupontools own validation code).
    #[serde(default)]
    pub alias: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a valid snapshot: {source}")]
    Parse {
        path: String,
        source: serde_json::Error,
    },
    #[error("{0}")]
    Invalid(String),
    /// Offers the store already has under another local id (docs/import-format.md).
    #[error("{0}")]
    Conflict(String),
    #[error("database: {0}")]
    Db(String),
}

impl<E: std::fmt::Display> From<WriteError<E>> for ImportError {
    fn from(e: WriteError<E>) -> Self {
        ImportError::Db(e.to_string())
    }
}

/// The error of a write job that may also find a conflict.
fn flatten(e: WriteError<ImportError>) -> ImportError {
    match e {
        WriteError::Job(e) => e,
        WriteError::Db(e) => ImportError::Db(e.to_string()),
    }
}

/// What was written.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub offers: usize,
    pub customers: usize,
    pub coupon_states: usize,
    pub vouchers: usize,
}

pub fn read_snapshot(path: &Path) -> Result<Snapshot, ImportError> {
    let p = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|source| ImportError::Read {
        path: p.clone(),
        source,
    })?;
    serde_json::from_reader(std::io::BufReader::new(file))
        .map_err(|source| ImportError::Parse { path: p, source })
}

/// Checks every id against CATAPULT's limits before anything is written.
pub fn validate(s: &Snapshot) -> Result<(), ImportError> {
    let mut refs = std::collections::HashMap::new();
    for o in &s.offers {
        if let Some(first) = refs.insert((&o.provider, &o.provider_ref), &o.id) {
            if first != &o.id {
                return Err(ImportError::Invalid(format!(
                    "offers `{first}` and `{}` are both {} providerRef `{}`: one provider offer has one local id",
                    o.id, o.provider, o.provider_ref
                )));
            }
        }
        CouponId::parse_for_commit(&o.id).map_err(|e| {
            ImportError::Invalid(format!(
                "offer `{}`: {e} (local ids are 1..15 characters)",
                o.id
            ))
        })?;
        // A cost of 0 points or less would give the coupon away, or pay points for it
        // (catapult-loyalty-redemption.md §3: "Cannot authorize 0-points").
        if o.loyalty_cost.is_some_and(|cost| cost <= 0) {
            return Err(ImportError::Invalid(format!(
                "offer `{}`: loyaltyCost must be a positive number of points, or null for a coupon not bought with points",
                o.id
            )));
        }
        known_provider(&format!("offer `{}`", o.id), &o.provider)?;
        if let Some(problem) = o.rule.problem() {
            return Err(ImportError::Invalid(format!("offer `{}`: {problem}", o.id)));
        }
        if o.end_date < o.start_date {
            return Err(ImportError::Invalid(format!(
                "offer `{}`: endDate is before startDate",
                o.id
            )));
        }
    }
    for c in &s.customers {
        CustomerId::parse(&c.id)
            .map_err(|e| ImportError::Invalid(format!("customer `{}`: {e}", c.id)))?;
        if let Some(p) = &c.provider {
            known_provider(&format!("customer `{}`", c.id), p)?;
        }
        if c.points_balance < 0 {
            return Err(ImportError::Invalid(format!(
                "customer `{}`: pointsBalance cannot be negative",
                c.id
            )));
        }
        if c.coupons.iter().any(|k| k.state == CouponState::Pending) {
            return Err(ImportError::Invalid(format!(
                "customer `{}`: state `pending` cannot be imported (holds belong to live sales)",
                c.id
            )));
        }
    }
    for v in &s.vouchers {
        known_provider(&format!("voucher `{}`", v.code), &v.provider)?;
        for (field, date) in [("validFrom", &v.valid_from), ("validUntil", &v.valid_until)] {
            if let Some(d) = date {
                chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d").map_err(|_| {
                    ImportError::Invalid(format!(
                        "voucher `{}`: {field} `{d}` is not a date written YYYY-MM-DD",
                        v.code
                    ))
                })?;
            }
        }
        for code in std::iter::once(&v.code).chain(v.alias.iter().filter(|a| !a.is_empty())) {
            VoucherCode::parse(code)
                .map_err(|e| ImportError::Invalid(format!("voucher `{}`: {e}", v.code)))?;
        }
    }
    Ok(())
}

/// Why the offer `id` of a snapshot cannot be written: the store already has the same
/// provider offer (provider, providerRef) under another local id, as a pull or an earlier
/// import wrote it. Its coupon states, holds, redemptions and outbox rows name that id, so
/// neither id can take the other's place (docs/import-format.md).
fn known_elsewhere(
    c: &rusqlite::Connection,
    id: &str,
    provider: &str,
    provider_ref: &str,
) -> rusqlite::Result<Option<String>> {
    let existing = crate::sync::offer_id_for_ref(c, provider, provider_ref)?;
    Ok(existing.filter(|e| e != id).map(|e| {
        format!(
            "offer `{id}` is {provider} providerRef `{provider_ref}`, which this store already has as offer `{e}` \
             (pulled from {provider} or imported before); use the id `{e}` for it in the snapshot \
             (in `offers` and in the customers' `coupons`) or leave it out, and import again"
        )
    }))
}

/// Writes the snapshot in chunks of [`CHUNK`] rows; `progress(done, total)` after each.
pub fn import(
    writer: &Writer,
    s: Snapshot,
    mut progress: impl FnMut(&str, usize, usize),
) -> Result<Counts, ImportError> {
    validate(&s)?;
    // Before anything is written: offers the store already knows under another id, and
    // coupon states of offers neither the snapshot nor the store has (the database would
    // refuse them halfway through the customers).
    let keys: Vec<(String, String, String)> = s
        .offers
        .iter()
        .map(|o| (o.id.clone(), o.provider.clone(), o.provider_ref.clone()))
        .collect();
    let in_snapshot: std::collections::HashSet<&str> =
        s.offers.iter().map(|o| o.id.as_str()).collect();
    let mut elsewhere: Vec<(String, String)> = s
        .customers
        .iter()
        .flat_map(|c| {
            c.coupons
                .iter()
                .filter(|k| !in_snapshot.contains(k.offer_id.as_str()))
                .map(move |k| (c.id.clone(), k.offer_id.clone()))
        })
        .collect();
    elsewhere.sort_by(|a, b| a.1.cmp(&b.1));
    elsewhere.dedup_by(|a, b| a.1 == b.1);
    let (known, unknown_offers) = writer.write_blocking(move |c| {
        let mut out = Vec::new();
        for (id, provider, provider_ref) in &keys {
            if let Some(message) = known_elsewhere(c, id, provider, provider_ref)? {
                out.push(message);
            }
        }
        let mut unknown = Vec::new();
        for (customer, offer) in elsewhere {
            if repo::offer(c, &offer)?.is_none() {
                unknown.push(format!("`{offer}` (customer `{customer}`)"));
            }
        }
        Ok::<_, rusqlite::Error>((out, unknown))
    })?;
    if !unknown_offers.is_empty() {
        return Err(ImportError::Invalid(format!(
            "customers' coupons name offers neither the snapshot nor this store has: {}; add them to `offers` and import again (nothing was imported)",
            unknown_offers.join(", ")
        )));
    }
    if !known.is_empty() {
        return Err(ImportError::Conflict(format!(
            "{} of the snapshot's offers already {} here under another id; nothing was imported: {}",
            known.len(),
            if known.len() == 1 { "exists" } else { "exist" },
            known.join("; ")
        )));
    }
    let mut counts = Counts::default();
    let total = s.offers.len();
    for chunk in s.offers.chunks(CHUNK) {
        let rows = chunk.to_vec();
        let before = counts.offers;
        writer
            .write_blocking(move |c| {
                let now = now_secs();
                for o in &rows {
                    // A pull may have written it since the check above.
                    let known = known_elsewhere(c, &o.id, &o.provider, &o.provider_ref)
                        .map_err(|e| ImportError::Db(e.to_string()))?;
                    if let Some(message) = known {
                        return Err(ImportError::Conflict(format!(
                            "import stopped after {before} offers: {message}"
                        )));
                    }
                    repo::upsert_offer(c, o, now).map_err(|e| ImportError::Db(e.to_string()))?;
                }
                Ok(())
            })
            .map_err(flatten)?;
        counts.offers += chunk.len();
        progress("offers", counts.offers, total);
    }
    let total = s.customers.len();
    for chunk in row_chunks(&s.customers) {
        let rows = chunk.to_vec();
        counts.customers += rows.len();
        counts.coupon_states += rows.iter().map(|c| c.coupons.len()).sum::<usize>();
        writer.write_blocking(move |c| {
            let now = now_secs();
            for ic in &rows {
                let customer = Customer {
                    id: ic.id.clone(),
                    first_name: ic.first_name.clone(),
                    last_name: ic.last_name.clone(),
                    email: ic.email.clone(),
                    phone: ic.phone.clone(),
                    provider: ic.provider.clone(),
                    provider_ref: ic.provider_ref.clone(),
                    loyalty_id: ic.loyalty_id.clone(),
                    points_balance: ic.points_balance,
                };
                repo::upsert_customer(c, &customer, repo::Points::FromSnapshot, now)?;
                for k in &ic.coupons {
                    repo::import_coupon_state(
                        c,
                        &ic.id,
                        &k.offer_id,
                        k.state,
                        k.provider_ref.as_deref(),
                        now,
                    )?;
                }
            }
            Ok::<_, rusqlite::Error>(())
        })?;
        progress("customers", counts.customers, total);
    }
    let total = s.vouchers.len();
    for chunk in s.vouchers.chunks(CHUNK) {
        let rows = chunk.to_vec();
        counts.vouchers += rows.len();
        writer.write_blocking(move |c| {
            let now = now_secs();
            rows.iter().try_for_each(|v| {
                let voucher = Voucher {
                    code: v.code.clone(),
                    provider: v.provider.clone(),
                    provider_ref: v.provider_ref.clone().unwrap_or_else(|| v.code.clone()),
                    description: v.description.clone(),
                    value: Cents(v.value_cents),
                    min_spend: Cents(v.min_spend_cents),
                    valid_from: v.valid_from.clone(),
                    valid_until: v.valid_until.clone(),
                    state: "active".to_owned(),
                    alias: v.alias.clone().filter(|a| !a.is_empty()),
                    ..Voucher::default()
                };
                repo::upsert_voucher(c, &voucher, now)
            })
        })?;
        progress("vouchers", counts.vouchers, total);
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::config::DatabaseConfig;
    use crate::db::Db;

    const SAMPLE: &str = include_str!("../../packaging/sample-data.json");
    const CVX1_REF: &str = "c0c0c0c0-0000-4000-8000-000000000001";
    /// The id a Convercus pull gives CVX1's couponId when it finds no offer for it.
    const PULLED: &str = "CVMUZLIOJVTV62";

    fn sample() -> Snapshot {
        serde_json::from_str(SAMPLE).unwrap()
    }

    /// An empty store database in a temporary directory.
    fn fresh_db() -> (tempfile::TempDir, Db) {
        let dir = tempfile::tempdir().unwrap();
        let cfg = DatabaseConfig {
            path: dir.path().join("edge.db"),
            ..DatabaseConfig::default()
        };
        let db = Db::open(&cfg, false).unwrap();
        (dir, db)
    }

    fn count(db: &Db, table: &'static str) -> i64 {
        db.writer
            .write_blocking(move |c| {
                c.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
            })
            .unwrap()
    }

    /// The store as a Convercus pull leaves it before any import: CVX1's couponId is
    /// offer `PULLED`, clipped by the sample customer.
    fn pulled_store() -> (tempfile::TempDir, Db) {
        let (dir, db) = fresh_db();
        let mut pulled = sample()
            .offers
            .into_iter()
            .find(|o| o.id == "CVX1")
            .unwrap();
        assert_eq!(pulled.provider_ref, CVX1_REF);
        pulled.id = PULLED.into();
        db.writer
            .write_blocking(move |c| {
                repo::upsert_offer(c, &pulled, 1)?;
                repo::upsert_customer(
                    c,
                    &Customer {
                        id: "4000000000001".into(),
                        provider: Some("convercus".into()),
                        ..Customer::default()
                    },
                    repo::Points::FromSnapshot,
                    1,
                )?;
                repo::import_coupon_state(
                    c,
                    "4000000000001",
                    PULLED,
                    CouponState::Clipped,
                    Some("acc-1"),
                    1,
                )
            })
            .unwrap();
        (dir, db)
    }

    fn points_of(db: &Db, customer: &'static str) -> i64 {
        db.writer
            .write_blocking(move |c| repo::customer(c, customer))
            .unwrap()
            .unwrap()
            .points_balance
    }

    /// Points spent here reach no provider, so no snapshot knows of them. Before, importing
    /// the same file again gave a customer back every point they had spent at the store.
    #[test]
    fn importing_the_same_file_again_does_not_give_back_points_spent_here() {
        let (_dir, db) = fresh_db();
        let jane = "4000000000001";
        let granted = sample()
            .customers
            .iter()
            .find(|c| c.id == jane)
            .unwrap()
            .points_balance;
        assert!(granted >= 500, "{granted}");
        import(&db.writer, sample(), |_, _, _| {}).unwrap();
        assert_eq!(points_of(&db, jane), granted);
        db.writer
            .write_blocking(move |c| repo::spend_points(c, jane, 500))
            .unwrap();
        import(&db.writer, sample(), |_, _, _| {}).unwrap();
        assert_eq!(points_of(&db, jane), granted - 500);
        // A new grant in a later snapshot counts, less what was spent here.
        let mut more = sample();
        for c in more.customers.iter_mut().filter(|c| c.id == jane) {
            c.points_balance = granted + 1000;
        }
        import(&db.writer, more, |_, _, _| {}).unwrap();
        assert_eq!(points_of(&db, jane), granted + 500);
    }

    /// The file is checked whole before anything is written (docs/import-format.md): a
    /// provider that is not one of the four, a voucher date not written YYYY-MM-DD and a
    /// coupon state of an offer nobody has were each accepted (or failed halfway, as a
    /// database constraint, after the offers were written).
    #[test]
    fn a_snapshot_naming_what_cannot_be_used_is_refused_before_anything_is_written() {
        let mut s = sample();
        s.offers[0].provider = "Convercus".into();
        assert!(validate(&s)
            .unwrap_err()
            .to_string()
            .contains("provider `Convercus`"));
        let mut s = sample();
        s.vouchers[0].provider = "coupon-tools".into();
        assert!(validate(&s)
            .unwrap_err()
            .to_string()
            .contains("provider `coupon-tools`"));
        for mechanic in [
            crate::domain::Mechanic::PercentOff {
                basis_points: 15_000,
            },
            crate::domain::Mechanic::AmountOff { cents: Cents(0) },
            crate::domain::Mechanic::BuyXGetY {
                buy: 1,
                get: 0,
                reward_basis_points: 10_000,
            },
        ] {
            let mut s = sample();
            s.offers[0].rule.mechanic = mechanic;
            let e = validate(&s).unwrap_err().to_string();
            assert!(e.contains(&format!("offer `{}`", s.offers[0].id)), "{e}");
        }
        let mut s = sample();
        s.vouchers[0].valid_until = Some("12/31/2026".into());
        assert!(validate(&s)
            .unwrap_err()
            .to_string()
            .contains("validUntil `12/31/2026`"));
        let (_dir, db) = fresh_db();
        let mut s = sample();
        s.customers[0].coupons.push(ImportCoupon {
            offer_id: "NOSUCH".into(),
            state: CouponState::Clipped,
            provider_ref: None,
        });
        let e = import(&db.writer, s, |_, _, _| {}).unwrap_err().to_string();
        assert!(
            e.contains("`NOSUCH`") && e.contains("nothing was imported"),
            "{e}"
        );
        assert_eq!(count(&db, "offers"), 0);
        assert_eq!(count(&db, "customers"), 0);
        // An offer the store already has may be named without being in the snapshot.
        import(&db.writer, sample(), |_, _, _| {}).unwrap();
        let mut s = sample();
        let first = s.offers.remove(0);
        for c in &mut s.customers {
            c.coupons.retain(|k| k.offer_id == first.id);
        }
        import(&db.writer, s, |_, _, _| {}).unwrap();
    }

    #[test]
    fn customers_are_written_in_runs_of_at_most_a_thousand_rows() {
        let customer = |coupons: usize| ImportCustomer {
            id: "C".into(),
            first_name: None,
            last_name: None,
            email: None,
            phone: None,
            provider: None,
            provider_ref: None,
            loyalty_id: None,
            points_balance: 0,
            coupons: (0..coupons)
                .map(|_| ImportCoupon {
                    offer_id: "O".into(),
                    state: CouponState::Clipped,
                    provider_ref: None,
                })
                .collect(),
        };
        // 100 customers of 20 coupon states: 21 rows each, 47 to a run (987 rows).
        let many: Vec<ImportCustomer> = (0..100).map(|_| customer(20)).collect();
        let runs: Vec<usize> = row_chunks(&many).iter().map(|r| r.len()).collect();
        assert_eq!(runs, [47, 47, 6]);
        // One customer over the limit on its own is still written.
        let big = vec![customer(1), customer(2000), customer(1)];
        let runs: Vec<usize> = row_chunks(&big).iter().map(|r| r.len()).collect();
        assert_eq!(runs, [1, 1, 1]);
        assert!(row_chunks(&[]).is_empty());
    }

    #[test]
    fn an_offer_priced_at_no_points_or_fewer_is_refused() {
        for cost in [0, -1000] {
            let mut s = sample();
            let o = s
                .offers
                .iter_mut()
                .find(|o| o.loyalty_cost.is_some())
                .unwrap();
            o.loyalty_cost = Some(cost);
            let e = validate(&s).unwrap_err().to_string();
            assert!(e.contains("loyaltyCost must be a positive number"), "{e}");
        }
        let mut s = sample();
        s.customers[0].points_balance = -1;
        let e = validate(&s).unwrap_err().to_string();
        assert!(e.contains("pointsBalance cannot be negative"), "{e}");
    }

    #[test]
    fn an_offer_pulled_under_another_id_refuses_the_import_by_name_and_writes_nothing() {
        let (_dir, db) = pulled_store();
        let err = import(&db.writer, sample(), |_, _, _| {}).unwrap_err();
        assert!(matches!(err, ImportError::Conflict(_)), "{err:?}");
        let text = err.to_string();
        for part in [
            "`CVX1`",
            PULLED,
            CVX1_REF,
            "convercus",
            "nothing was imported",
        ] {
            assert!(text.contains(part), "{part} missing from: {text}");
        }
        assert!(!text.contains("UNIQUE"), "{text}");
        // Checked before the first write: only the pulled rows are there.
        assert_eq!(count(&db, "offers"), 1);
        assert_eq!(count(&db, "customers"), 1);
        assert_eq!(count(&db, "vouchers"), 0);
        // What the message says to do works: the snapshot names the offer by the store's id.
        let mut fixed = sample();
        for o in fixed.offers.iter_mut().filter(|o| o.id == "CVX1") {
            o.id = PULLED.into();
        }
        for k in fixed
            .customers
            .iter_mut()
            .flat_map(|c| c.coupons.iter_mut())
        {
            if k.offer_id == "CVX1" {
                k.offer_id = PULLED.into();
            }
        }
        let counts = import(&db.writer, fixed, |_, _, _| {}).unwrap();
        assert_eq!(counts.offers, sample().offers.len());
        assert_eq!(count(&db, "offers") as usize, sample().offers.len());
    }

    #[test]
    fn two_offers_of_a_snapshot_with_one_provider_ref_are_refused_before_writing() {
        let mut s = sample();
        let mut twin = s.offers.iter().find(|o| o.id == "CVX1").unwrap().clone();
        twin.id = "CVX2".into();
        s.offers.push(twin);
        let err = validate(&s).unwrap_err().to_string();
        assert!(
            err.contains("`CVX1`") && err.contains("`CVX2`") && err.contains(CVX1_REF),
            "{err}"
        );
    }
}
