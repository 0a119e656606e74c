//! Request pacing, one pacer per provider, shared by its pulls, outbox deliveries and
//! breaker probes: at most `providers.<name>.max_requests_per_sec` requests a second
//! (convercus.md §5 "[ASSUME] ≤ 10 req/s per store", coupontools.md §2 "≤ 5 requests/s per
//! store"; koupon.md names no limit), spaced evenly (no burst), and a pause of every call
//! to the provider until the time a 429 or 503 answer's `Retry-After` names (seconds or an
//! HTTP-date), bounded by `providers.<name>.max_retry_after_secs`.
//!
//! The rate is governor's GCRA limiter with a burst of one: one request every 1/rate
//! seconds, waiting asynchronously for the next slot.

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

pub struct Pacer {
    provider: &'static str,
    rate: f64,
    max_pause: Duration,
    /// `None`: no rate (see [`Pacer::unlimited`]).
    limiter: Option<DefaultDirectRateLimiter>,
    /// Set by a 429/503 with `Retry-After`: no call before then.
    paused_until: Mutex<Option<Instant>>,
}

impl Pacer {
    /// A pacer for `rate` requests a second (validated positive at config load; anything
    /// else is taken as one a second).
    pub fn new(provider: &'static str, rate: f64, max_pause_secs: u64) -> Pacer {
        let rate = if rate.is_finite() && rate > 0.0 {
            rate
        } else {
            1.0
        };
        let period = Duration::from_secs_f64(1.0 / rate).max(Duration::from_micros(1));
        let quota = Quota::with_period(period).unwrap_or_else(|| Quota::per_second(nonzero(1)));
        Pacer {
            provider,
            rate,
            max_pause: Duration::from_secs(max_pause_secs),
            limiter: Some(RateLimiter::direct(quota)),
            paused_until: Mutex::new(None),
        }
    }

    /// A pacer that only honours `Retry-After` pauses: for the edge server's bounded
    /// read-through look-ups, which a lane waits for and which the daemon's rate does not
    /// count (`providers.<name>.max_requests_per_sec` is the daemon's).
    pub fn unlimited(provider: &'static str, max_pause_secs: u64) -> Pacer {
        Pacer {
            provider,
            rate: f64::INFINITY,
            max_pause: Duration::from_secs(max_pause_secs),
            limiter: None,
            paused_until: Mutex::new(None),
        }
    }

    /// The pacer for a rebuilt client (configuration reload): the old one when its settings
    /// are unchanged, else a new one that keeps the old one's pause.
    pub fn renewed(
        old: Option<&Arc<Pacer>>,
        provider: &'static str,
        rate: f64,
        max_pause_secs: u64,
    ) -> Arc<Pacer> {
        match old {
            Some(o)
                if o.rate.to_bits() == rate.to_bits()
                    && o.max_pause == Duration::from_secs(max_pause_secs) =>
            {
                Arc::clone(o)
            }
            _ => {
                let p = Pacer::new(provider, rate, max_pause_secs);
                if let Some(until) = old.and_then(|o| *o.lock()) {
                    *p.lock() = Some(until);
                }
                Arc::new(p)
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.paused_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// How long calls to the provider are still paused by a `Retry-After`, if they are.
    pub fn pause_left(&self) -> Option<Duration> {
        let until = (*self.lock())?;
        let now = Instant::now();
        (until > now).then(|| until - now)
    }

    /// Waits until a request may be sent: after any pause, in the next free slot of the
    /// rate. A pause that starts while waiting for a slot is waited out too (the slot is
    /// given up, so the requests released after the pause are spaced again).
    pub async fn ready(&self) {
        loop {
            if let Some(wait) = self.pause_left() {
                tokio::time::sleep(wait).await;
                continue;
            }
            if let Some(limiter) = &self.limiter {
                limiter.until_ready().await;
            }
            if self.pause_left().is_none() {
                return;
            }
        }
    }

    /// Pauses every call to the provider for `wait` (capped at the configured maximum),
    /// unless a longer pause is already running.
    pub fn pause(&self, wait: Duration, status: u16) {
        let wait = wait.min(self.max_pause);
        let until = Instant::now() + wait;
        let mut guard = self.lock();
        if guard.is_none_or(|u| u < until) {
            *guard = Some(until);
            drop(guard);
            log::warn!(provider = self.provider, status = status; "{} answered {status} with Retry-After: pausing its calls for {:.1} s", self.provider, wait.as_secs_f64());
        }
    }

    /// Looks at an answer: a 429 or 503 with a readable `Retry-After` pauses the provider.
    pub fn note(&self, status: u16, headers: &reqwest::header::HeaderMap) {
        if status != 429 && status != 503 {
            return;
        }
        let value = headers
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok());
        if let Some(wait) = value.and_then(|v| retry_after(v, SystemTime::now())) {
            self.pause(wait, status);
        }
    }
}

fn nonzero(n: u32) -> std::num::NonZeroU32 {
    std::num::NonZeroU32::new(n).unwrap_or(std::num::NonZeroU32::MIN)
}

/// A `Retry-After` value (RFC 9110 §10.2.3) as a wait from `now`: delay seconds, or an
/// HTTP-date (IMF-fixdate, and the obsolete RFC 850 and asctime forms). A date in the past
/// is no wait; anything else unreadable is `None`.
pub fn retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let date = chrono::DateTime::parse_from_rfc2822(v)
        .map(|d| d.with_timezone(&chrono::Utc))
        .ok()
        .or_else(|| {
            ["%A, %d-%b-%y %H:%M:%S GMT", "%a %b %e %H:%M:%S %Y"]
                .iter()
                .find_map(|f| chrono::NaiveDateTime::parse_from_str(v, f).ok())
                .map(|d| d.and_utc())
        })?;
    let at = SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(date.timestamp()).ok()?);
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn retry_after_takes_seconds_and_http_dates() {
        // 2015-10-21 07:28:00 UTC
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480);
        assert_eq!(retry_after("3", now), Some(Duration::from_secs(3)));
        assert_eq!(retry_after(" 120 ", now), Some(Duration::from_secs(120)));
        let in_5 = "Wed, 21 Oct 2015 07:28:05 GMT";
        assert_eq!(retry_after(in_5, now), Some(Duration::from_secs(5)));
        assert_eq!(
            retry_after("Wednesday, 21-Oct-15 07:28:07 GMT", now),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            retry_after("Wed Oct 21 07:28:09 2015", now),
            Some(Duration::from_secs(9))
        );
        assert_eq!(
            retry_after("Wed, 21 Oct 2015 07:27:00 GMT", now),
            Some(Duration::ZERO),
            "a date already past"
        );
        assert_eq!(retry_after("soon", now), None);
        assert_eq!(retry_after("-1", now), None);
    }

    #[test]
    fn the_limits_are_configured_per_provider_and_checked_at_start() {
        let base =
            "[store]\nsites=[\"S\"]\n[[lanes.credentials]]\nusername=\"a\"\npassword=\"b\"\n";
        let c = shared::config::Config::from_toml_str(base).unwrap();
        assert_eq!(c.providers.convercus.max_requests_per_sec, 10.0);
        assert_eq!(c.providers.coupontools.max_requests_per_sec, 5.0);
        assert_eq!(c.providers.koupon.max_requests_per_sec, 5.0);
        assert_eq!(c.providers.koupon.max_retry_after_secs, 120);
        for (section, line, key) in [
            (
                "convercus",
                "max_requests_per_sec = 0",
                "providers.convercus.max_requests_per_sec",
            ),
            (
                "coupontools",
                "max_requests_per_sec = -1.5",
                "providers.coupontools.max_requests_per_sec",
            ),
            (
                "koupon",
                "max_retry_after_secs = 0",
                "providers.koupon.max_retry_after_secs",
            ),
        ] {
            let text = format!("{base}[providers.{section}]\n{line}\n");
            let err = shared::config::Config::from_toml_str(&text).unwrap_err();
            assert!(err.to_string().contains(key), "{err}");
        }
        let text = format!("{base}[providers.koupon]\nmax_requests_per_sec = 2\n");
        let c = shared::config::Config::from_toml_str(&text).unwrap();
        assert_eq!(
            c.providers.koupon.max_requests_per_sec, 2.0,
            "a whole number is fine"
        );
    }

    #[tokio::test]
    async fn requests_are_spaced_to_the_rate() {
        let p = Pacer::new("test", 20.0, 60);
        let started = Instant::now();
        for _ in 0..11 {
            p.ready().await;
        }
        // 11 requests at 20/s: the last no earlier than 10 × 50 ms after the first.
        assert!(
            started.elapsed() >= Duration::from_millis(480),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn a_retry_after_pauses_every_call_up_to_the_maximum() {
        let p = Pacer::new("test", 1000.0, 1);
        p.ready().await;
        let mut h = reqwest::header::HeaderMap::new();
        h.insert(reqwest::header::RETRY_AFTER, "30".parse().unwrap());
        p.note(200, &h);
        assert!(p.pause_left().is_none(), "only 429 and 503 pause");
        p.note(429, &h);
        let left = p.pause_left().unwrap();
        assert!(left <= Duration::from_secs(1), "capped: {left:?}");
        let started = Instant::now();
        p.ready().await;
        assert!(started.elapsed() >= Duration::from_millis(900));
        // A shorter pause does not cut a running one.
        p.pause(Duration::from_millis(400), 503);
        p.pause(Duration::from_millis(10), 503);
        assert!(p.pause_left().unwrap() > Duration::from_millis(300));
        // A reload with other settings keeps the pause.
        let old = Arc::new(p);
        let new = Pacer::renewed(Some(&old), "test", 5.0, 1);
        assert!(!Arc::ptr_eq(&old, &new));
        assert!(new.pause_left().is_some());
        assert!(Arc::ptr_eq(
            &old,
            &Pacer::renewed(Some(&old), "test", 1000.0, 1)
        ));
    }
}
