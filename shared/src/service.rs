//! Talking to systemd when it runs us as a `Type=notify` service: READY once the database
//! is migrated and the listener bound, and WATCHDOG heartbeats from each daemon's main loop
//! (a stuck loop stops the heartbeats and systemd restarts the service). Outside systemd
//! (no NOTIFY_SOCKET) every call does nothing.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Tells systemd the service is ready, with a status line for `systemctl status`.
pub fn ready(status: &str) {
    let _ = sd_notify::notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(status),
    ]);
}

/// Tells systemd the service is stopping.
pub fn stopping() {
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
}

/// Watchdog heartbeats, sent at most every half watchdog interval however often `ping` is
/// called.
pub struct Watchdog {
    interval: Option<Duration>,
    last: Mutex<Option<Instant>>,
}

impl Watchdog {
    /// Reads `WATCHDOG_USEC` (set by systemd when the unit has `WatchdogSec=`).
    pub fn from_env() -> Watchdog {
        let interval = sd_notify::watchdog_enabled()
            .map(|d| d / 2)
            .filter(|d| !d.is_zero());
        Watchdog {
            interval,
            last: Mutex::new(None),
        }
    }

    pub fn enabled(&self) -> bool {
        self.interval.is_some()
    }

    /// The main loop is alive: send a heartbeat if one is due.
    pub fn ping(&self) {
        let Some(every) = self.interval else { return };
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if last.is_none_or(|t| t.elapsed() >= every) {
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
            *last = Some(Instant::now());
        }
    }

    /// How often a loop should call [`Watchdog::ping`] at least.
    pub fn period(&self) -> Duration {
        self.interval.unwrap_or(Duration::from_secs(3600))
    }
}
