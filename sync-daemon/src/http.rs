//! What every provider client shares: the HTTP client, how a failed call is classified, and
//! what the outbox worker is told about a delivery.

use std::time::Duration;

/// Makes ring the process's rustls provider (reqwest is built without one of its own).
pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// An HTTP client with the provider's timeout. TLS 1.2+ by rustls.
pub fn client(timeout_ms: u64) -> reqwest::Client {
    install_crypto();
    reqwest::Client::builder()
        .timeout(Duration::from_millis(timeout_ms))
        .connect_timeout(Duration::from_millis(timeout_ms.min(5000)))
        .user_agent(concat!("edge-coupon-sync/", env!("CARGO_PKG_VERSION")))
        .build()
        .unwrap_or_else(|e| {
            log::error!("cannot build the HTTP client with a timeout ({e}); using defaults");
            reqwest::Client::new()
        })
}

/// Why a provider call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    /// No answer. `maybe_sent`: the request may have reached the provider (timeout, cut
    /// connection) so its effect is unknown; false when the connection was never made.
    #[error("network: {message}")]
    Transport { message: String, maybe_sent: bool },
    /// Credentials refused even after logging in again.
    #[error("credentials refused: {0}")]
    Auth(String),
    /// An answer the provider documents as an error: HTTP status and the provider's code.
    #[error("HTTP {status} {code}: {detail}")]
    Status {
        status: u16,
        code: String,
        detail: String,
    },
    /// The call was answered but the answer cannot be read: the effect is unknown.
    #[error("unreadable answer: {0}")]
    Malformed(String),
}

impl CallError {
    pub fn from_reqwest(e: &reqwest::Error) -> CallError {
        let maybe_sent = !e.is_connect() && !e.is_builder();
        CallError::Transport {
            message: without_url(e),
            maybe_sent,
        }
    }

    /// Retrying can succeed (network, timeout, 5xx, 429).
    pub fn is_transient(&self) -> bool {
        match self {
            CallError::Transport { .. } | CallError::Malformed(_) => true,
            CallError::Status { status, .. } => *status == 429 || *status >= 500,
            CallError::Auth(_) => false,
        }
    }

    /// The provider may have applied the call.
    pub fn outcome_unknown(&self) -> bool {
        match self {
            CallError::Transport { maybe_sent, .. } => *maybe_sent,
            CallError::Malformed(_) => true,
            CallError::Status { status, .. } => *status >= 500,
            CallError::Auth(_) => false,
        }
    }
}

impl CallError {
    /// Names the configuration key to check in a network failure's text (the others
    /// already say what was refused).
    pub fn at_key(self, key: &str) -> CallError {
        match self {
            CallError::Transport {
                message,
                maybe_sent,
            } => CallError::Transport {
                message: format!("{message}; check {key}"),
                maybe_sent,
            },
            other => other,
        }
    }
}

/// What failed and why, for store IT: the kind (cannot connect, timed out, …), the
/// provider's scheme, host and port (never the path or query: Koupon's carries the
/// signature, Convercus paths card numbers), and the causes from the error's `source()`
/// chain (connection refused, DNS failure, TLS, …). reqwest's own text ("error sending
/// request for url (…)") said none of that and carried the whole URL.
fn without_url(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else if e.is_body() || e.is_decode() {
        "answer cut off"
    } else if e.is_redirect() {
        "redirect refused"
    } else {
        "request failed"
    };
    let place = e
        .url()
        .map(|u| {
            let port = u.port().map(|p| format!(":{p}")).unwrap_or_default();
            format!(" to {}://{}{port}", u.scheme(), u.host_str().unwrap_or("?"))
        })
        .unwrap_or_default();
    let mut causes: Vec<String> = Vec::new();
    let mut source = std::error::Error::source(e);
    while let Some(c) = source {
        let mut text = c.to_string();
        if let Some(i) = text.find(" for url (") {
            text.truncate(i);
        }
        // Each level often repeats the one below it; keep what is new.
        if !text.is_empty() && !causes.iter().any(|k| k.contains(&text)) {
            causes.retain(|k| !text.contains(k.as_str()));
            causes.push(text);
        }
        source = c.source();
    }
    if causes.is_empty() {
        format!("{kind}{place}")
    } else {
        format!("{kind}{place}: {}", causes.join(": "))
    }
}

/// What a delivery attempt came to; the worker turns it into the item's next state.
#[derive(Debug, Clone, PartialEq)]
pub enum Delivery {
    /// The provider has applied the item (now or, verified, by an earlier attempt).
    Delivered { note: Option<String> },
    /// Try again later (network, timeout, 5xx, 429): counts towards the circuit breaker.
    Retry(String),
    /// The provider refused our credentials even after logging in again: the item waits
    /// and the provider's queue pauses until credentials work (never dead-lettered).
    AuthFailed(String),
    /// Refused permanently: dead-letter with the reason.
    Dead(String),
    /// Part applied, part refused for good (a Koupon redemption with short entries): the
    /// item is delivered and `refused` (the item's payload with only the refused part)
    /// is dead-lettered on its own with `reason`, for store IT.
    Partly {
        refused: serde_json::Value,
        reason: String,
    },
}

impl Delivery {
    pub fn delivered() -> Delivery {
        Delivery::Delivered { note: None }
    }

    /// The usual mapping of a failed call: transient → retry, auth → pause, else dead.
    pub fn from_error(e: &CallError) -> Delivery {
        match e {
            CallError::Auth(m) => Delivery::AuthFailed(m.clone()),
            e if e.is_transient() => Delivery::Retry(e.to_string()),
            e => Delivery::Dead(e.to_string()),
        }
    }
}

/// Cents as a decimal string with `places` decimals (2 for Koupon, 3 for Coupontools'
/// `money_spent`): exact, no floating point.
pub fn cents_to_decimal(cents: i64, places: u32) -> String {
    let sign = if cents < 0 { "-" } else { "" };
    let c = cents.unsigned_abs();
    let whole = c / 100;
    let frac = c % 100;
    match places {
        0 => format!("{sign}{whole}"),
        1 => format!("{sign}{whole}.{}", frac / 10),
        p => format!("{sign}{whole}.{frac:02}{}", "0".repeat(p as usize - 2)),
    }
}

/// A decimal in text ("5", "5.5", "12.345") as cents, rounded half away from zero.
pub fn decimal_to_cents(text: &str) -> Option<i64> {
    let d: rust_decimal::Decimal = text.trim().parse().ok()?;
    let cents = (d * rust_decimal::Decimal::from(100))
        .round_dp_with_strategy(0, rust_decimal::RoundingStrategy::MidpointAwayFromZero);
    i64::try_from(cents).ok()
}

/// A count as a provider may write it (koupon.md §3.2 says only "positive number";
/// Convercus' `redeemCount` is an integer in its examples): a JSON number in any form (`1`, `1.0`, `1e0`, `2.5`) or text holding one, floored to a whole
/// count (2.5 recorded is 2 whole redemptions, never 3). serde_json keeps a number's text
/// here (`arbitrary_precision`), so `as_i64` alone read `1.0` as no number: a fully
/// recorded Koupon entry was dead-lettered as a shortfall, and a Convercus redeemCount of
/// `1.0` read as 0. `None` when it is no number.
pub fn whole_count(v: &serde_json::Value) -> Option<i64> {
    let text = match v {
        serde_json::Value::Number(n) => n.to_string(),
        serde_json::Value::String(s) => s.trim().to_owned(),
        _ => return None,
    };
    // Digits, sign, point and exponent only: no `inf` or `NaN`, which Rust would read.
    let numeric = |c: char| c.is_ascii_digit() || matches!(c, '+' | '-' | '.' | 'e' | 'E');
    if !text.chars().any(|c| c.is_ascii_digit()) || !text.chars().all(numeric) {
        return None;
    }
    // Exact first (a decimal text floors without binary rounding); a number too large
    // for a decimal, or one Decimal does not read, as a float.
    let exact = text
        .parse::<rust_decimal::Decimal>()
        .or_else(|_| rust_decimal::Decimal::from_scientific(&text))
        .ok()
        .and_then(|d| i64::try_from(d.floor()).ok());
    exact.or_else(|| {
        let f = text.parse::<f64>().ok()?;
        // Saturating (`1e400` is infinite): a count beyond i64 is clamped to the quantity
        // asked anyway.
        Some(f.floor() as i64)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// D9: an unreachable provider was reported as `network: error sending request`; the
    /// text now says the cause, where (scheme, host, port; no path or query) and the key.
    #[tokio::test]
    async fn a_closed_port_is_reported_as_refused_with_the_host_and_the_key() {
        let port = match std::net::TcpListener::bind("127.0.0.1:0") {
            Ok(l) => l.local_addr().map(|a| a.port()).unwrap_or(9),
            Err(_) => 9,
        };
        let url = format!("http://127.0.0.1:{port}/v1/offers?authSignature=SECRETSIG");
        let Err(e) = client(2000).get(&url).send().await else {
            panic!("port {port} answered");
        };
        let text = CallError::from_reqwest(&e)
            .at_key("providers.koupon.storeconnect_url")
            .to_string();
        assert!(text.contains("cannot connect"), "{text}");
        assert!(text.to_lowercase().contains("connection refused"), "{text}");
        assert!(text.contains(&format!("http://127.0.0.1:{port}")), "{text}");
        assert!(
            text.contains("check providers.koupon.storeconnect_url"),
            "{text}"
        );
        assert!(
            !text.contains("SECRETSIG") && !text.contains("/v1/offers"),
            "{text}"
        );
    }

    #[test]
    fn money_is_formatted_exactly() {
        assert_eq!(cents_to_decimal(1234, 3), "12.340");
        assert_eq!(cents_to_decimal(5, 2), "0.05");
        assert_eq!(cents_to_decimal(-150, 2), "-1.50");
        assert_eq!(decimal_to_cents("5.00"), Some(500));
        assert_eq!(decimal_to_cents("12.345"), Some(1235));
        assert_eq!(decimal_to_cents("7"), Some(700));
        assert_eq!(decimal_to_cents("x"), None);
    }

    #[test]
    fn errors_are_classified() {
        let s = |status| CallError::Status {
            status,
            code: String::new(),
            detail: String::new(),
        };
        assert!(s(503).is_transient());
        assert!(s(429).is_transient());
        assert!(!s(400).is_transient());
        assert_eq!(
            Delivery::from_error(&s(404)),
            Delivery::Dead("HTTP 404 : ".into())
        );
        assert!(matches!(
            Delivery::from_error(&CallError::Auth("x".into())),
            Delivery::AuthFailed(_)
        ));
    }
}
