//! The one place edge-server may call a provider on a lane's request, for what the store
//! has never seen, within a small time budget, and only while the provider answers:
//!
//! - a Coupontools session (a voucher claimed after the last pull) is looked up; a code that
//!   is no session is then searched for as a retailer's own validation code, within the
//!   same budget. When Coupontools cannot be asked the lane hears at once that the provider
//!   cannot be asked now (`PROVIDER_UNAVAILABLE`, CATAPULT §5.15), which it can tell from
//!   "no such voucher" (`VOUCHER_NOT_FOUND`);
//! - a card (a lane's customer id) is looked up at Convercus as a pull would, and what is
//!   found is stored; the lane is answered from the store when the look-up is done or the
//!   budget is over, whichever comes first (a late look-up is still stored, for the lane's
//!   next request).
//!
//! After a failure or a timeout no look-up is tried for a pause, so an unreachable provider
//! costs the lanes nothing. The clients are the sync daemon's (`sync_daemon::coupontools`,
//! `sync_daemon::convercus`): provider details stay in one place.

use shared::config::Config;
use shared::db::Db;
use shared::repo::Voucher;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A look-up's time budget, and the pause after a failure during which none is tried.
struct Gate {
    budget: Duration,
    pause: Duration,
    paused_until: Mutex<Option<Instant>>,
}

impl Gate {
    fn new(budget_ms: u64, pause_secs: u64) -> Gate {
        Gate {
            budget: Duration::from_millis(budget_ms),
            pause: Duration::from_secs(pause_secs),
            paused_until: Mutex::new(None),
        }
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

    /// The provider answered: look-ups may be tried again at once.
    fn resume(&self) {
        *self
            .paused_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
    }
}

pub struct ReadThrough {
    client: sync_daemon::coupontools::Client,
    gate: Gate,
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
            gate: Gate::new(c.read_through_ms, c.read_through_pause_secs),
        })
    }

    /// Looks `code` up at Coupontools within the budget.
    pub async fn find(&self, code: &str, config: &Config) -> Found {
        if self.gate.paused() {
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
        match tokio::time::timeout(self.gate.budget, look_up).await {
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
                log::warn!(provider = "coupontools"; "voucher read-through failed ({e}); no read-through for {} s", self.gate.pause.as_secs());
                self.gate.pause();
                Found::Unavailable
            }
            Err(_) => {
                log::warn!(provider = "coupontools"; "voucher read-through over its {} ms budget; no read-through for {} s", self.gate.budget.as_millis(), self.gate.pause.as_secs());
                self.gate.pause();
                Found::Unavailable
            }
        }
    }
}

/// What a card look-up came to, by the time the lane is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CardFound {
    /// Convercus knows the card: its profile and coupons are stored.
    Stored,
    /// Convercus does not know the card: the card is noted, so the pulls ask for it from
    /// now on and lanes do not.
    Unknown,
    /// Still running after the budget (or already running for another lane): stored when
    /// it is done.
    Late,
    /// Not tried (paused after a failure), or failed.
    Unavailable,
}

/// Convercus look-up of a card never seen at this store (`providers.convercus.read_through_ms`).
pub struct CardReadThrough {
    client: Arc<sync_daemon::convercus::Client>,
    gate: Arc<Gate>,
    /// Cards being looked up: a second lane (or request) asking waits for none.
    running: Arc<Mutex<HashSet<String>>>,
}

impl CardReadThrough {
    /// `None` when Convercus is disabled or the budget is 0.
    pub fn new(config: &Config) -> Option<CardReadThrough> {
        let c = &config.providers.convercus;
        (c.enabled && c.read_through_ms > 0).then(|| CardReadThrough {
            // Not paced at the daemon's rate (a lane waits); its own login and token.
            client: Arc::new(sync_daemon::convercus::Client::with_pacer(
                c,
                Arc::new(sync_daemon::pace::Pacer::unlimited(
                    sync_daemon::convercus::NAME,
                    c.max_retry_after_secs,
                )),
            )),
            gate: Arc::new(Gate::new(c.read_through_ms, c.read_through_pause_secs)),
            running: Arc::new(Mutex::new(HashSet::new())),
        })
    }

    /// Looks `card` up at Convercus and stores what it finds; waits for it at most the
    /// budget (the look-up goes on after that, on this worker).
    pub async fn find(&self, card: &str, db: &Db, config: Arc<Config>) -> CardFound {
        if self.gate.paused() {
            return CardFound::Unavailable;
        }
        let first = self
            .running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(card.to_owned());
        if !first {
            return CardFound::Late;
        }
        let (client, gate, running) =
            (self.client.clone(), self.gate.clone(), self.running.clone());
        let (db, id) = (db.clone(), card.to_owned());
        let look_up = actix_web::rt::spawn(async move {
            let found = look_up_card(&client, &gate, &db, &config, &id).await;
            running
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .remove(&id);
            found
        });
        match tokio::time::timeout(self.gate.budget, look_up).await {
            Ok(Ok(found)) => found,
            Ok(Err(_)) => CardFound::Unavailable,
            Err(_) => {
                // No other card waits for a provider this slow (or unreachable without a
                // word): look-ups pause until this one ends, or for the pause.
                self.gate.pause();
                log::warn!(provider = "convercus"; "card read-through over its {} ms budget: the lane is answered without it, what Convercus answers is stored for its next request, and no other card is looked up until then", self.gate.budget.as_millis());
                CardFound::Late
            }
        }
    }
}

async fn look_up_card(
    client: &sync_daemon::convercus::Client,
    gate: &Gate,
    db: &Db,
    config: &Config,
    card: &str,
) -> CardFound {
    let started = Instant::now();
    match client.pull_customer(card, config).await {
        Ok(Some(pulled)) => match sync_daemon::pull::write_customer(db, config, pulled).await {
            Ok(changes) => {
                gate.resume();
                log::info!(provider = "convercus"; "card never seen here found at Convercus in {} ms; {} coupon states stored", started.elapsed().as_millis(), changes.written);
                CardFound::Stored
            }
            Err(e) => {
                log::error!(provider = "convercus"; "card found at Convercus but not stored: {e}");
                CardFound::Unavailable
            }
        },
        Ok(None) => {
            gate.resume();
            let id = card.to_owned();
            let now = shared::db::now_secs();
            let noted = db
                .writer
                .write(move |c| shared::repo::ensure_customer(c, &id, now))
                .await;
            if let Err(e) = noted {
                log::error!(provider = "convercus"; "cannot note a card Convercus does not know: {e}");
            }
            CardFound::Unknown
        }
        Err(e) => {
            log::warn!(provider = "convercus"; "card read-through failed ({e}); no read-through for {} s", gate.pause.as_secs());
            gate.pause();
            CardFound::Unavailable
        }
    }
}
