//! The ledger: every write the simulated providers received, in arrival order.

use serde_json::{json, Value};

/// One write received by a simulated provider.
#[derive(Clone, Debug)]
pub struct Entry {
    /// 1, 2, 3… in arrival order over all providers.
    pub seq: u64,
    /// RFC 3339 UTC with milliseconds.
    pub time: String,
    pub provider: &'static str,
    /// e.g. `activation`, `redemption`, `validate`, `lock`, `redeem`, `report`.
    pub operation: String,
    /// The item's key (account coupon ID, session ID, `asset` or `asset/couponCode`).
    pub key: String,
    /// HTTP status answered (0 when the connection was refused or cut).
    pub status: u16,
    /// `ok`, or the error code answered.
    pub outcome: String,
    /// Whether the write changed the provider's state.
    pub applied: bool,
    /// The request body as received (JSON, or a string when it was not JSON).
    pub body: Value,
}

impl Entry {
    pub fn to_json(&self) -> Value {
        json!({
            "seq": self.seq,
            "time": self.time,
            "provider": self.provider,
            "operation": self.operation,
            "key": self.key,
            "status": self.status,
            "outcome": self.outcome,
            "applied": self.applied,
            "body": self.body,
        })
    }
}

/// The ledger itself.
#[derive(Default, Debug)]
pub struct Ledger {
    entries: Vec<Entry>,
    next: u64,
}

impl Ledger {
    #[allow(clippy::too_many_arguments)]
    pub fn record(
        &mut self,
        provider: &'static str,
        operation: &str,
        key: &str,
        status: u16,
        outcome: &str,
        applied: bool,
        body: Value,
    ) {
        self.next += 1;
        self.entries.push(Entry {
            seq: self.next,
            time: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            provider,
            operation: operation.to_owned(),
            key: key.to_owned(),
            status,
            outcome: outcome.to_owned(),
            applied,
            body,
        });
    }

    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// Entries matching the optional filters, as JSON.
    pub fn query(
        &self,
        provider: Option<&str>,
        operation: Option<&str>,
        key: Option<&str>,
    ) -> Value {
        let list: Vec<Value> = self
            .entries
            .iter()
            .filter(|e| provider.is_none_or(|p| e.provider == p))
            .filter(|e| operation.is_none_or(|o| e.operation == o))
            .filter(|e| key.is_none_or(|k| e.key == k))
            .map(Entry::to_json)
            .collect();
        Value::Array(list)
    }
}
