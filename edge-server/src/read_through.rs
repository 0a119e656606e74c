//! The one place edge-server may call a provider on a lane's request: a Coupontools session
//! the store has never seen (a voucher claimed after the last pull) is looked up within a
//! small time budget, and only while Coupontools answers; a code that is no session is
//! then searched for as a retailer's own validation code, within the same budget. After a
//! failure or a timeout no look-up is tried for a pause, so an unreachable provider costs
//! the lanes nothing; the lane then hears at once that the provider cannot be asked now
//! (`PROVIDER_UNAVAILABLE`, CATAPULT §5.15), which it can tell from "no such voucher"
//! (`VOUCHER_NOT_FOUND`).
//!
//! The client is the sync daemon's (`sync_daemon::coupontools`): provider details stay in
//! one place.

use shared::config::Config;
use shared::repo::Voucher;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct ReadThrough {
    client: sync_daemon::coupontools::Client,
    budget: Duration,
    pause: Duration,
    paused_until: Mutex<Option<Instant>>,
}

/// What a look-up came to.
pub enum Found {
    Voucher(Box<Voucher>),
    /// Coupontools answered: no such session.
    Unknown,
    /// Not tried (paused), failed, or over budget.
    Unavailable,
}

impl ReadThrough {
    /// `None` when Coupontools is disabled or the budget is 0.
    pub fn new(config: &Config) -> Option<ReadThrough> {
        let c = &config.providers.coupontools;
        (c.enabled && c.read_through_ms > 0).then(|| ReadThrough {
            // Not paced at the daemon's rate: a lane waits for these, and a second look-up
            // (the search) would otherwise wait out a 200 ms slot of a 300 ms budget.
            client: sync_daemon::coupontools::Client::with_pacer(
                c,
                std::sync::Arc::new(sync_daemon::pace::Pacer::unlimited(
                    sync_daemon::coupontools::NAME,
                    c.max_retry_after_secs,
                )),
            ),
            budget: Duration::from_millis(c.read_through_ms),
            pause: Duration::from_secs(c.read_through_pause_secs),
            paused_until: Mutex::new(None),
        })
    }

    fn paused(&self) -> bool {
        self.paused_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_some_and(|t| Instant::now() < t)
    }

    fn pause(&self) {
        *self
            .paused_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Instant::now() + self.pause);
    }

    /// Looks `code` up at Coupontools within the budget.
    pub async fn find(&self, code: &str, config: &Config) -> Found {
        if self.paused() {
            return Found::Unavailable;
        }
        let started = Instant::now();
        // A code Coupontools does not know as a session may be a retailer's own validation
        // code (coupontools.md §1, §3.7): searched for within the same budget.
        let look_up = async {
            match self.client.session(code).await {
                Ok(None) => self.client.search_own_code(code).await,
                other => other,
            }
        };
        match tokio::time::timeout(self.budget, look_up).await {
            Ok(Ok(Some(record))) => {
                match sync_daemon::coupontools::voucher_of(&record, "", config) {
                    Some(v) => {
                        log::info!(provider = "coupontools"; "voucher not seen before found at Coupontools in {} ms", started.elapsed().as_millis());
                        Found::Voucher(Box::new(v))
                    }
                    None => Found::Unknown,
                }
            }
            Ok(Ok(None)) => Found::Unknown,
            Ok(Err(e)) => {
                log::warn!(provider = "coupontools"; "voucher read-through failed ({e}); no read-through for {} s", self.pause.as_secs());
                self.pause();
                Found::Unavailable
            }
            Err(_) => {
                log::warn!(provider = "coupontools"; "voucher read-through over its {} ms budget; no read-through for {} s", self.budget.as_millis(), self.pause.as_secs());
                self.pause();
                Found::Unavailable
            }
        }
    }
}
