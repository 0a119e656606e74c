//! The daemon: the current configuration and provider clients (swapped whole on a reload),
//! one pull scheduler per provider on its cron schedule, the outbox worker, the config
//! watcher, and an orderly stop.

use crate::pace::Pacer;
use crate::pull;
use crate::worker::{self, Breakers, PROVIDERS};
use crate::{convercus, coupontools, koupon};
use shared::config::Config;
use shared::db::{now_secs, Db};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify};

/// The clients of the enabled providers. A client is kept across a reload when its
/// provider's section did not change (so its token cache survives).
#[derive(Clone, Default)]
pub struct Clients {
    pub convercus: Option<Arc<convercus::Client>>,
    pub coupontools: Option<Arc<coupontools::Client>>,
    pub koupon: Option<Arc<koupon::Client>>,
}

impl Clients {
    pub fn build(config: &Config, old: Option<&Clients>) -> Clients {
        let p = &config.providers;
        Clients {
            convercus: p.convercus.enabled.then(|| {
                let old = old.and_then(|o| o.convercus.clone());
                match old {
                    Some(c) if *c.config() == p.convercus => c,
                    _ => Arc::new(convercus::Client::with_pacer(
                        &p.convercus,
                        Pacer::renewed(
                            old.as_ref().map(|c| c.pacer()),
                            convercus::NAME,
                            p.convercus.max_requests_per_sec,
                            p.convercus.max_retry_after_secs,
                        ),
                    )),
                }
            }),
            coupontools: p.coupontools.enabled.then(|| {
                let old = old.and_then(|o| o.coupontools.clone());
                match old {
                    Some(c) if *c.config() == p.coupontools => c,
                    _ => Arc::new(coupontools::Client::with_pacer(
                        &p.coupontools,
                        Pacer::renewed(
                            old.as_ref().map(|c| c.pacer()),
                            coupontools::NAME,
                            p.coupontools.max_requests_per_sec,
                            p.coupontools.max_retry_after_secs,
                        ),
                    )),
                }
            }),
            koupon: p.koupon.enabled.then(|| {
                let old = old.and_then(|o| o.koupon.clone());
                match old {
                    Some(c) if *c.config() == p.koupon => c,
                    _ => Arc::new(koupon::Client::with_pacer(
                        &p.koupon,
                        Pacer::renewed(
                            old.as_ref().map(|c| c.pacer()),
                            koupon::NAME,
                            p.koupon.max_requests_per_sec,
                            p.koupon.max_retry_after_secs,
                        ),
                    )),
                }
            }),
        }
    }

    /// The pacer of `provider`'s client, when it is enabled.
    pub fn pacer(&self, provider: &str) -> Option<&Arc<Pacer>> {
        match provider {
            convercus::NAME => self.convercus.as_ref().map(|c| c.pacer()),
            coupontools::NAME => self.coupontools.as_ref().map(|c| c.pacer()),
            koupon::NAME => self.koupon.as_ref().map(|c| c.pacer()),
            _ => None,
        }
    }

    /// How long `provider`'s calls are still paused by a `Retry-After`, if they are.
    pub fn paused_for(&self, provider: &str) -> Option<std::time::Duration> {
        self.pacer(provider).and_then(|p| p.pause_left())
    }

    pub fn enabled(&self, provider: &str) -> bool {
        match provider {
            convercus::NAME => self.convercus.is_some(),
            coupontools::NAME => self.coupontools.is_some(),
            koupon::NAME => self.koupon.is_some(),
            _ => false,
        }
    }
}

/// The configuration in force and its clients.
pub struct Snapshot {
    pub config: Config,
    pub clients: Clients,
}

fn schedule_of<'a>(config: &'a Config, provider: &str) -> &'a str {
    match provider {
        convercus::NAME => &config.providers.convercus.schedule,
        coupontools::NAME => &config.providers.coupontools.schedule,
        _ => &config.providers.koupon.schedule,
    }
}

/// Runs the daemon until `shutdown` resolves.
pub async fn run(
    config_path: PathBuf,
    config: Config,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    crate::http::install_crypto();
    let db = Db::open(&config.database, false).map_err(|e| match e {
        // Already names the file and what to do.
        shared::db::DbError::Unusable(_) => anyhow::anyhow!("{e}"),
        e => anyhow::anyhow!(
            "cannot open database {}: {e}",
            config.database.path.display()
        ),
    })?;
    // Seen running from now on (edge-ctl status, /readyz, the status page, /metrics).
    if let Err(e) = db
        .writer
        .write(|conn| shared::sync::record_heartbeat(conn, now_secs()))
        .await
    {
        log::error!("cannot note the daemon's heartbeat in the database: {e}");
    }
    let clients = Clients::build(&config, None);
    let enabled: Vec<&str> = PROVIDERS
        .into_iter()
        .filter(|p| clients.enabled(p))
        .collect();
    log::info!(
        "sync daemon started: providers enabled: {}",
        if enabled.is_empty() {
            "none".to_owned()
        } else {
            enabled.join(", ")
        }
    );
    let (snap_tx, snap_rx) = watch::channel(Arc::new(Snapshot { config, clients }));
    let (stop_tx, stop_rx) = watch::channel(false);
    let breakers = Arc::new(Breakers::default());
    let kicks: Arc<Vec<(&'static str, Notify)>> =
        Arc::new(PROVIDERS.iter().map(|p| (*p, Notify::new())).collect());

    let watchdog = Arc::new(shared::service::Watchdog::from_env());
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(worker::run(
        db.clone(),
        snap_rx.clone(),
        Arc::clone(&breakers),
        stop_rx.clone(),
        Duration::from_secs(10),
        Arc::clone(&watchdog),
    ));
    for (i, p) in PROVIDERS.into_iter().enumerate() {
        tasks.spawn(scheduler(
            p,
            i,
            db.clone(),
            snap_rx.clone(),
            Arc::clone(&breakers),
            Arc::clone(&kicks),
            stop_rx.clone(),
        ));
    }
    tasks.spawn(requests(db.clone(), Arc::clone(&kicks), stop_rx.clone()));
    tasks.spawn(heartbeat(db.clone(), stop_rx.clone()));
    crate::reload::watch(&config_path, snap_tx)?;
    shared::service::ready(&format!(
        "delivering the outbox; providers enabled: {}",
        if enabled.is_empty() {
            "none".to_owned()
        } else {
            enabled.join(", ")
        }
    ));

    shutdown.await;
    shared::service::stopping();
    log::info!("stopping: finishing in-flight deliveries");
    let _ = stop_tx.send(true);
    while tasks.join_next().await.is_some() {}
    if let Err(e) = db
        .writer
        .write(|conn| shared::sync::record_daemon_stopped(conn, now_secs()))
        .await
    {
        log::warn!("cannot note the stop in the database ({e}); status shows the daemon as not running once its heartbeat is stale");
    }
    log::info!("sync daemon stopped");
    Ok(())
}

/// Pulls `provider` on its schedule, or at once when kicked (`edge-ctl sync now`).
async fn scheduler(
    provider: &'static str,
    index: usize,
    db: Db,
    mut snapshots: watch::Receiver<Arc<Snapshot>>,
    breakers: Arc<Breakers>,
    kicks: Arc<Vec<(&'static str, Notify)>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut last_schedule = String::new();
    let mut starting = true;
    // A pull (scheduled or asked for) that found the provider paused by its breaker: it
    // runs as soon as the provider answers again, not at the next scheduled time.
    let mut owed = false;
    loop {
        if *stop.borrow() {
            return;
        }
        let snap = snapshots.borrow().clone();
        let expr = schedule_of(&snap.config, provider).to_owned();
        if expr != last_schedule {
            if !last_schedule.is_empty() {
                log::info!(provider = provider; "{provider} pull schedule is now `{expr}`");
            }
            last_schedule = expr.clone();
        }
        // At start, a provider never pulled (a new store) or not pulled for longer than its
        // schedule's period (the daemon was down) is pulled at once, not at the next cron
        // time, which may be an hour away.
        if std::mem::take(&mut starting)
            && snap.clients.enabled(provider)
            && snap.config.providers.pull_at_start(provider)
        {
            if let Some(why) = overdue(&db, provider, &expr).await {
                log::info!(provider = provider; "{provider} pulled at start: {why}");
                tokio::select! {
                    _ = pull_once(provider, &db, &snap, &breakers) => {}
                    _ = stop.changed() => return,
                }
                continue;
            }
        }
        let next = shared::config::parse_schedule(&expr)
            .ok()
            .and_then(|s| s.upcoming(chrono::Utc).next())
            .and_then(|t| (t - chrono::Utc::now()).to_std().ok())
            .unwrap_or(Duration::from_secs(3600));
        log::debug!(provider = provider; "next {provider} pull in {} s", next.as_secs());
        let wait = if owed { next.min(OWED_CHECK) } else { next };
        let (kicked, scheduled) = tokio::select! {
            _ = stop.changed() => return,
            _ = snapshots.changed() => continue,
            _ = tokio::time::sleep(wait) => (false, wait == next),
            _ = kicks[index].1.notified() => (true, false),
        };
        if !snap.clients.enabled(provider) {
            if kicked {
                log::warn!(provider = provider; "sync of {provider} requested, but it is disabled in the configuration");
            }
            owed = false;
            continue;
        }
        if breakers.is_open(provider) {
            if kicked || scheduled {
                log::info!(provider = provider; "{provider} pull postponed: the provider is unreachable (probing); it runs when {provider} answers again");
            }
            owed = true;
            continue;
        }
        if owed && !kicked && !scheduled {
            log::info!(provider = provider; "{provider} answers again: running the postponed pull");
        }
        owed = false;
        // A stop abandons a running pull (a pull can take minutes; systemd would kill us):
        // its writes are short transactions, each committed whole or not at all, and the
        // next pull reads everything again. Deliveries in flight keep their grace (worker).
        tokio::select! {
            _ = pull_once(provider, &db, &snap, &breakers) => {}
            _ = stop.changed() => {
                log::info!(provider = provider; "{provider} pull abandoned: stopping (the next pull does it again)");
                return;
            }
        }
    }
}

/// How often a postponed pull checks whether its provider answers again.
const OWED_CHECK: Duration = Duration::from_secs(2);

/// Why `provider` should be pulled now rather than at its next scheduled time: never pulled
/// successfully, or its last success is older than the schedule's period (the time between
/// its next two runs). `None`: it is up to date, or its state cannot be read.
async fn overdue(db: &Db, provider: &'static str, expr: &str) -> Option<String> {
    let schedule = shared::config::parse_schedule(expr).ok()?;
    let mut upcoming = schedule.upcoming(chrono::Utc);
    let period = match (upcoming.next(), upcoming.next()) {
        (Some(a), Some(b)) => (b - a).num_seconds(),
        _ => return None,
    };
    let reader = db.clone();
    let states = tokio::task::spawn_blocking(move || {
        let conn = reader.read().ok()?;
        shared::sync::sync_states(&conn).ok()
    })
    .await
    .ok()??;
    let last = states
        .iter()
        .find(|s| s.provider == provider)
        .and_then(|s| s.last_success_at);
    let age = last.map(|t| now_secs() - t);
    match age {
        None => Some("it never completed a pull at this store".to_owned()),
        Some(age) if age > period => Some(format!(
            "its last successful pull was {age} s ago, longer than its schedule's period ({period} s)"
        )),
        Some(_) => None,
    }
}

async fn pull_once(provider: &'static str, db: &Db, snap: &Snapshot, breakers: &Breakers) {
    let started = std::time::Instant::now();
    let _ = db
        .writer
        .write(move |conn| shared::sync::record_attempt(conn, provider, now_secs()))
        .await;
    log::info!(provider = provider; "{provider} pull started");
    let result = pull::run(provider, &snap.clients, &snap.config, db).await;
    let elapsed = started.elapsed().as_secs_f64();
    match result {
        Ok(summary) => {
            breakers.record(provider, Ok(()), &snap.config.outbox);
            let text = format!("{summary} in {elapsed:.1} s");
            // Recorded before it is logged: whoever reads the log, then the sync state
            // (`/readyz`, `edge-ctl status`), sees the same.
            let recorded = text.clone();
            let r = db
                .writer
                .write(move |conn| {
                    shared::sync::record_success(conn, provider, now_secs(), &recorded)
                })
                .await;
            if let Err(e) = r {
                log::error!(provider = provider; "cannot record the pull: {e}");
            }
            log::info!(provider = provider; "{provider} pull done: {text}");
        }
        Err(e) => {
            if let pull::PullError::Call(c) = &e {
                breakers.record(provider, Err(c), &snap.config.outbox);
            }
            let text = format!("pull failed after {elapsed:.1} s: {e}");
            let recorded = text.clone();
            let _ = db
                .writer
                .write(move |conn| {
                    shared::sync::record_error(conn, provider, now_secs(), &recorded)
                })
                .await;
            log::warn!(provider = provider; "{provider} {text}");
        }
    }
}

/// Notes every `HEARTBEAT_SECS` that the daemon runs (`edge-ctl status`, `/readyz`, the
/// status page and `/metrics` show its age; `edge-ctl sync now` warns when it is stale).
async fn heartbeat(db: Db, mut stop: watch::Receiver<bool>) {
    let every = Duration::from_secs(shared::sync::HEARTBEAT_SECS.unsigned_abs());
    let mut failing = false;
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let r = db
            .writer
            .write(|conn| shared::sync::record_heartbeat(conn, now_secs()))
            .await;
        match r {
            Err(e) if !failing => {
                failing = true;
                log::error!("cannot note the daemon's heartbeat in the database: {e}");
            }
            Err(_) => {}
            Ok(()) => failing = false,
        }
    }
}

/// Looks for `edge-ctl sync now` requests once a second.
async fn requests(
    db: Db,
    kicks: Arc<Vec<(&'static str, Notify)>>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        let reader = db.clone();
        let any = tokio::task::spawn_blocking(move || {
            reader
                .read()
                .ok()
                .and_then(|c| shared::sync::has_requests(&c).ok())
                .unwrap_or(false)
        })
        .await
        .unwrap_or(false);
        if !any {
            continue;
        }
        match db.writer.write(shared::sync::take_requests).await {
            Ok(providers) => {
                for p in providers {
                    match kicks.iter().find(|(name, _)| *name == p) {
                        Some((_, n)) => {
                            log::info!(provider = p.as_str(); "sync of {p} requested by an operator");
                            n.notify_one();
                        }
                        None => log::warn!("sync requested for unknown provider {p}"),
                    }
                }
            }
            Err(e) => log::error!("cannot read sync requests: {e}"),
        }
    }
}
