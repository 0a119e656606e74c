//! Bulk import of offers (with their rules), customers with their coupon states, and
//! vouchers from one JSON file (format: docs/import-format.md). Used by the demo, to
//! bootstrap a new store from a snapshot, and by the benchmark. Writes in short
//! transactions through the writer so lanes are never stalled, and reports progress.

use crate::db::{now_secs, WriteError, Writer};
use crate::domain::{CouponId, CouponState, CustomerId, Offer, VoucherCode};
use crate::money::Cents;
use crate::repo::{self, Customer, Voucher};
use serde::Deserialize;
use std::path::Path;

/// Rows written per transaction: small enough that a lane commit never waits long.
pub const CHUNK: usize = 1000;

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
    #[error("database: {0}")]
    Db(String),
}

impl<E: std::fmt::Display> From<WriteError<E>> for ImportError {
    fn from(e: WriteError<E>) -> Self {
        ImportError::Db(e.to_string())
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
    for o in &s.offers {
        CouponId::parse_for_commit(&o.id).map_err(|e| {
            ImportError::Invalid(format!(
                "offer `{}`: {e} (local ids are 1..15 characters)",
                o.id
            ))
        })?;
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
        if c.coupons.iter().any(|k| k.state == CouponState::Pending) {
            return Err(ImportError::Invalid(format!(
                "customer `{}`: state `pending` cannot be imported (holds belong to live sales)",
                c.id
            )));
        }
    }
    for v in &s.vouchers {
        for code in std::iter::once(&v.code).chain(v.alias.iter().filter(|a| !a.is_empty())) {
            VoucherCode::parse(code)
                .map_err(|e| ImportError::Invalid(format!("voucher `{}`: {e}", v.code)))?;
        }
    }
    Ok(())
}

/// Writes the snapshot in chunks of [`CHUNK`] rows; `progress(done, total)` after each.
pub fn import(
    writer: &Writer,
    s: Snapshot,
    mut progress: impl FnMut(&str, usize, usize),
) -> Result<Counts, ImportError> {
    validate(&s)?;
    let mut counts = Counts::default();
    let total = s.offers.len();
    for chunk in s.offers.chunks(CHUNK) {
        let rows = chunk.to_vec();
        counts.offers += rows.len();
        writer.write_blocking(move |c| {
            let now = now_secs();
            rows.iter().try_for_each(|o| repo::upsert_offer(c, o, now))
        })?;
        progress("offers", counts.offers, total);
    }
    let total = s.customers.len();
    for chunk in s.customers.chunks(CHUNK) {
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
                repo::upsert_customer(c, &customer, now)?;
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
