//! `edge-server`: serves the ECRS CATAPULT digital coupon API and the voucher API to the
//! store's POS lanes, answering only from the local SQLite database.
//!
//! Architecture Invariant: no request handler talks to a provider, with one bounded
//! exception: `read_through` (a voucher never seen here, within a small budget, only while
//! Coupontools answers). Everything else upstream is sync-daemon's job.

pub mod admin;
pub mod auth;
pub mod catapult;
pub mod error;
pub mod lane;
pub mod read_through;
pub mod routes;
pub mod tls;
pub mod vouchers;

use actix_web::dev::Server;
use actix_web::{web, App, HttpServer};
use shared::catalog::{Catalog, CatalogCache};
use shared::config::Config;
use shared::db::Db;
use shared::money::Cents;
use std::net::TcpListener;
use std::sync::{Arc, RwLock};

/// Everything a handler needs; shared by all workers. The configuration and the policy
/// derived from it are swapped whole when the config files change (see [`reload`]).
pub struct AppState {
    live: RwLock<(Arc<Config>, Arc<lane::Policy>)>,
    pub db: Db,
    pub catalog: Arc<CatalogCache>,
    pub metrics: admin::Metrics,
    /// Look-ups of what this store has never seen, made anew when their provider's
    /// configuration changes (see [`AppState::reload`]).
    read_throughs: RwLock<ReadThroughs>,
    /// Names of request fields this server ignores, each logged once.
    pub unknown_fields: catapult::UnknownFieldLog,
    /// Which advertised images have their file in `server.image_dir`.
    pub image_files: catapult::ImageFiles,
}

/// The read-throughs in force (None when off).
struct ReadThroughs {
    /// Coupontools look-up of a voucher never seen here.
    voucher: Option<Arc<read_through::ReadThrough>>,
    /// Convercus look-up of a card never seen here.
    card: Option<Arc<read_through::CardReadThrough>>,
}

fn policy_of(config: &Config) -> lane::Policy {
    lane::Policy {
        hold_ttl_secs: i64::try_from(config.lanes.hold_ttl_secs).unwrap_or(i64::MAX),
        self_stacking: config.lanes.self_stacking,
        default_coupon_type: config.lanes.default_coupon_type.clone(),
        receipt_footer: config.lanes.receipt_footer.clone(),
    }
}

impl AppState {
    pub fn new(config: Config, db: Db, catalog: Arc<CatalogCache>) -> AppState {
        let policy = policy_of(&config);
        let read_throughs = ReadThroughs {
            voucher: read_through::ReadThrough::new(&config).map(Arc::new),
            card: read_through::CardReadThrough::new(&config).map(Arc::new),
        };
        AppState {
            read_throughs: RwLock::new(read_throughs),
            live: RwLock::new((Arc::new(config), Arc::new(policy))),
            db,
            catalog,
            metrics: admin::Metrics::new(),
            unknown_fields: catapult::UnknownFieldLog::default(),
            image_files: catapult::ImageFiles::default(),
        }
    }

    /// The Coupontools look-up of a voucher never seen here, if on.
    pub fn voucher_read_through(&self) -> Option<Arc<read_through::ReadThrough>> {
        self.read_throughs
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .voucher
            .clone()
    }

    /// Looks a card never seen here up at Convercus, when the read-through is on
    /// (`providers.convercus.read_through_ms`; `None` when off): `Stored` means the lane's
    /// request should read again; `Late` or `Unavailable` that the answer goes without it
    /// and says so (`PROVIDER_UNAVAILABLE`).
    pub async fn read_through_card(&self, card: &str) -> Option<read_through::CardFound> {
        let rt = self
            .read_throughs
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .card
            .clone()?;
        Some(rt.find(card, &self.db, self.config()).await)
    }

    /// The configuration in force.
    pub fn config(&self) -> Arc<Config> {
        Arc::clone(
            &self
                .live
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0,
        )
    }

    /// The lane policy in force.
    pub fn policy(&self) -> Arc<lane::Policy> {
        Arc::clone(
            &self
                .live
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .1,
        )
    }

    /// Applies a new valid configuration: lane credentials, sites, hold TTL, stacking and
    /// receipt texts, voucher and admin credentials, time zone, log level and the providers'
    /// read-through settings take effect at once; listen addresses, TLS files, the
    /// database, route aliases and the path prefix need a restart.
    pub fn reload(&self, new: Config) {
        let old = self.config();
        let mut restart = Vec::new();
        if old.server != new.server {
            restart.push("server");
            // Found now, not at the next restart with every lane down.
            if !new.server.plain_http && old.server.tls != new.server.tls {
                if let Err(e) = tls::check_files(&new.server.tls) {
                    log::error!("the changed server.tls would not start: {e}");
                }
            }
        }
        if old.database != new.database {
            restart.push("database");
        }
        if old.lanes.route_aliases != new.lanes.route_aliases {
            restart.push("lanes.route_aliases");
        }
        if old.lanes.path_prefix != new.lanes.path_prefix {
            restart.push("lanes.path_prefix");
        }
        if old.admin.listen != new.admin.listen || old.admin.enabled() != new.admin.enabled() {
            restart.push("admin.listen");
        }
        if !restart.is_empty() {
            log::warn!(
                "configuration changed in {}: applies at the next restart",
                restart.join(", ")
            );
        }
        log::set_max_level(new.log_level());
        // A provider's new address, credentials or budget apply to its read-through at
        // once, as they do to the sync daemon (a new one starts unpaused, with a new login).
        {
            let (ct, cv) = (&new.providers.coupontools, &new.providers.convercus);
            let mut rt = self
                .read_throughs
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if old.providers.coupontools != *ct {
                rt.voucher = read_through::ReadThrough::new(&new).map(Arc::new);
            }
            if old.providers.convercus != *cv {
                rt.card = read_through::CardReadThrough::new(&new).map(Arc::new);
            }
        }
        let policy = policy_of(&new);
        *self
            .live
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = (Arc::new(new), Arc::new(policy));
        log::info!("configuration reloaded");
    }
}

/// A money amount as a JSON number with two decimals (`1.50`), exact.
pub fn json_money(c: Cents) -> serde_json::Value {
    c.to_decimal()
        .to_string()
        .parse::<serde_json::Number>()
        .map(serde_json::Value::Number)
        .unwrap_or(serde_json::Value::Null)
}

/// `check-config`: the configuration, and what `serve` would refuse at start beyond it (the
/// lanes' TLS files), so a bad change is found before the next restart. Advice about valid
/// but unsafe settings is printed as warnings.
pub fn check_config(config: &Config, path: &std::path::Path) -> anyhow::Result<()> {
    if !config.server.plain_http {
        let present = tls::check_files(&config.server.tls)?;
        if !present {
            println!(
                "note: {} does not exist yet: a self-signed certificate is generated at start",
                config.server.tls.cert.display()
            );
        }
    }
    for w in config
        .warnings()
        .into_iter()
        .chain(shared::config::file_warnings(path))
    {
        println!("warning: {w}");
    }
    println!("configuration {} is valid", path.display());
    Ok(())
}

/// Opens the database and prepares TLS: everything that can fail at start, before binding.
pub fn prepare(config: &Config) -> anyhow::Result<(Db, Option<rustls::ServerConfig>)> {
    let db = Db::open(&config.database, true).map_err(|e| match e {
        // Already names the file and what to do.
        shared::db::DbError::Unusable(_) => anyhow::anyhow!("{e}"),
        e => anyhow::anyhow!(
            "cannot open database {}: {e}",
            config.database.path.display()
        ),
    })?;
    let tls = if config.server.plain_http {
        log::warn!(
            "serving plain HTTP because server.plain_http = true; CATAPULT lanes require HTTPS"
        );
        None
    } else {
        if let Some(names) = tls::ensure_certificate(&config.server.tls, config.server.listen)? {
            log::info!(cert = config.server.tls.cert.display().to_string().as_str(), names = names.join(", ").as_str(); "generated a self-signed certificate for {}; import it into the POS Java trust store, and give the lanes a base URL with one of these names", names.join(", "));
        }
        Some(tls::server_config(&config.server.tls)?)
    };
    Ok((db, tls))
}

/// Builds the HTTP server on an already bound listener. Tests pass `127.0.0.1:0`.
pub fn run(
    config: Config,
    db: Db,
    tls: Option<rustls::ServerConfig>,
    listener: TcpListener,
) -> std::io::Result<Server> {
    run_with_admin(config, db, tls, listener, None, None).map(|(lanes, _)| lanes)
}

/// [`run`], plus the admin listener (store health) on `admin` when given.
pub fn run_with_admin(
    config: Config,
    db: Db,
    tls: Option<rustls::ServerConfig>,
    listener: TcpListener,
    admin: Option<TcpListener>,
    config_path: Option<&std::path::Path>,
) -> std::io::Result<(Server, Option<Server>)> {
    let workers = match config.server.workers {
        0 => std::thread::available_parallelism().map_or(2, usize::from),
        n => n,
    };
    start_hold_sweeper(&db, config.lanes.hold_ttl_secs);
    let catalog = db
        .read()
        .map_err(std::io::Error::other)
        .and_then(|c| Catalog::load(&c).map_err(std::io::Error::other))?;
    log::info!(offers = catalog.len(); "offer catalog loaded");
    let catalog = Arc::new(CatalogCache::new(catalog));
    catalog.start_refresher(db.reads.clone(), std::time::Duration::from_secs(1));
    let state = web::Data::new(AppState::new(config, db, catalog));
    if let Some(path) = config_path {
        let st = state.clone();
        shared::reload::watch(path, move |new| st.reload(new)).map_err(std::io::Error::other)?;
    }
    let app_state = state.clone();
    let admin_tls = if state.config().admin.plain_http {
        None
    } else {
        tls.clone()
    };
    let prefix: Arc<str> = routes::normalise_path(&state.config().lanes.path_prefix).into();
    let server = HttpServer::new(move || {
        App::new()
            .app_data(app_state.clone())
            .wrap(actix_web::middleware::from_fn(auth::basic_auth))
            .wrap(actix_web::middleware::from_fn(admin::record))
            // After normalising: a lane whose base URL has a path (`lanes.path_prefix`).
            .wrap_fn({
                let prefix = prefix.clone();
                move |mut req, srv| {
                    routes::strip_prefix(&prefix, &mut req);
                    actix_web::dev::Service::call(srv, req)
                }
            })
            // Outermost, so credentials, routing, metrics and the unmatched-path log all see
            // the normalised path: CATAPULT appends endpoint paths to a base URL that
            // usually ends in '/' (`https://host/` + `/coupons` = `//coupons`), and a
            // trailing slash may occur too. Repeated slashes are merged, a trailing one
            // trimmed; the query string is kept.
            .wrap(actix_web::middleware::NormalizePath::trim())
            .configure(|cfg| routes::configure(cfg, &app_state.config()))
    })
    .workers(workers)
    .keep_alive(match state.config().server.keep_alive_secs {
        0 => actix_web::http::KeepAlive::Disabled,
        secs => actix_web::http::KeepAlive::Timeout(std::time::Duration::from_secs(secs)),
    })
    // Request/response traffic: send each answer at once rather than letting Nagle's
    // algorithm hold a partial segment for the lane's delayed ACK.
    .tcp_nodelay(true)
    .backlog(1024)
    // Connections each worker keeps open at most (a store has tens of lanes): beyond it new
    // ones wait in the backlog. With the unit's LimitNOFILE=65536 idle or trickling
    // connections can never take every file descriptor and leave none for SQLite.
    .max_connections(MAX_CONNECTIONS_PER_WORKER)
    .shutdown_timeout(10);
    let server = match tls {
        Some(tls) => server.listen_rustls_0_23(listener, tls)?,
        None => server.listen(listener)?,
    };
    let admin = match admin {
        Some(l) => Some(admin::run(state, admin_tls, l)?),
        None => None,
    };
    Ok((server.run(), admin))
}

/// Releases lapsed holds and voucher locks every 30 s (or every half hold TTL when that is
/// shorter), so the metadata lists and global limits stay exact even when nobody touches
/// the coupon again (reads already treat a lapsed hold as free), and an abandoned sale's
/// voucher lock is undone at the provider too.
fn start_hold_sweeper(db: &Db, hold_ttl_secs: u64) {
    let writer = db.writer.clone();
    let every = std::time::Duration::from_secs((hold_ttl_secs / 2).clamp(1, 30));
    let _ = std::thread::Builder::new()
        .name("hold-sweeper".into())
        .spawn(move || loop {
            std::thread::sleep(every);
            let now = shared::db::now_secs();
            match writer.write_blocking(move |c| shared::repo::release_expired_holds(c, now)) {
                Ok(0) => {}
                Ok(n) => log::info!(released = n; "released holds of abandoned transactions"),
                Err(shared::db::WriteError::Db(shared::db::DbError::WriterGone)) => break,
                Err(e) => log::warn!("hold sweeper failed: {e}"),
            }
            // A bounded batch per write: the next round takes the rest.
            match writer
                .write_blocking(move |c| lane::release_lapsed_voucher_locks(c, now, 200))
            {
                Ok(0) => {}
                Ok(n) => {
                    log::info!(released = n; "released voucher locks of abandoned transactions; unlocks queued upstream")
                }
                Err(shared::db::WriteError::Db(shared::db::DbError::WriterGone)) => break,
                Err(e) => log::warn!("voucher lock sweeper failed: {e}"),
            }
        });
}

/// systemd watchdog heartbeats from the server's own runtime, each after a round trip
/// through the database writer: a stuck runtime or writer stops them.
fn start_watchdog(writer: shared::db::Writer) {
    let watchdog = shared::service::Watchdog::from_env();
    if !watchdog.enabled() {
        return;
    }
    actix_web::rt::spawn(async move {
        loop {
            if writer
                .write(|_| Ok::<_, std::convert::Infallible>(()))
                .await
                .is_ok()
            {
                watchdog.ping();
            }
            actix_web::rt::time::sleep(watchdog.period() / 2).await;
        }
    });
}

/// The shared state type handlers extract.
pub type State = web::Data<AppState>;

/// Connections one HTTP worker keeps open at most (see `serve`).
pub const MAX_CONNECTIONS_PER_WORKER: usize = 4096;

/// What to do when a port below 1024 (443 for a lane URL without a port) is refused: the
/// packaged unit drops every capability.
fn privileged_port_hint(addr: std::net::SocketAddr, e: &std::io::Error) -> &'static str {
    if e.kind() == std::io::ErrorKind::PermissionDenied && addr.port() < 1024 {
        "; ports below 1024 need CAP_NET_BIND_SERVICE: add `AmbientCapabilities=CAP_NET_BIND_SERVICE` and `CapabilityBoundingSet=CAP_NET_BIND_SERVICE` with `systemctl edit edge-server`, or use a port from 1024 up in server.listen and in the lanes' URL"
    } else {
        ""
    }
}

/// Starts the server on the configured address and runs until SIGTERM/SIGINT.
pub fn serve(config: Config, config_path: &std::path::Path) -> anyhow::Result<()> {
    for w in config
        .warnings()
        .into_iter()
        .chain(shared::config::file_warnings(config_path))
    {
        log::warn!("{w}");
    }
    let (db, tls) = prepare(&config)?;
    let listener = TcpListener::bind(config.server.listen).map_err(|e| {
        anyhow::anyhow!(
            "cannot listen on {} (server.listen): {e}{}",
            config.server.listen,
            privileged_port_hint(config.server.listen, &e)
        )
    })?;
    log::info!(addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_default().as_str(), tls = tls.is_some(); "edge-server listening");
    let admin = if config.admin.enabled() {
        let l = TcpListener::bind(config.admin.listen).map_err(|e| {
            anyhow::anyhow!(
                "cannot listen on {} (admin.listen): {e}",
                config.admin.listen
            )
        })?;
        // The address bound (a configured port 0 is the kernel's choice).
        let addr = l
            .local_addr()
            .map_or_else(|_| config.admin.listen.to_string(), |a| a.to_string());
        log::info!(addr = addr.as_str(); "store health (admin) listening: /status, /metrics");
        Some(l)
    } else {
        log::info!("no admin listener: admin.password is not set");
        None
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let writer = db.writer.clone();
        let (server, admin) = run_with_admin(config, db, tls, listener, admin, Some(config_path))?;
        shared::service::ready("serving the lanes");
        start_watchdog(writer);
        if let Some(admin) = admin {
            actix_web::rt::spawn(admin);
        }
        let r = server.await;
        shared::service::stopping();
        r
    })?;
    log::info!("edge-server stopped");
    Ok(())
}

/// The `tls-init` command: the lanes' certificate (generated when missing and allowed),
/// its fingerprint, and the steps to make the POS trust it.
pub fn tls_init(config: &Config) -> anyhow::Result<()> {
    let tls = &config.server.tls;
    let generated = tls::ensure_certificate(tls, config.server.listen)?;
    let fp = tls::certificate_fingerprint(tls)?;
    println!(
        "{} {}",
        if generated.is_some() {
            "generated a self-signed certificate:"
        } else {
            "using the configured certificate:"
        },
        tls.cert.display()
    );
    if let Some(names) = generated {
        println!(
            "valid for: {} (the lanes' base URL must use one of these names)",
            names.join(", ")
        );
    }
    println!("SHA-256 fingerprint: {fp}");
    println!(
        "Lanes must trust it. On each POS (CATAPULT runs on Java), import it into the trust store:"
    );
    println!(
        "  keytool -importcert -noprompt -alias edge-coupon -file {} -keystore \"$JAVA_HOME/lib/security/cacerts\" -storepass changeit",
        tls.cert.display()
    );
    println!("and compare the fingerprint keytool shows with the one above. A replaced certificate is picked up by the running server within seconds.");
    Ok(())
}

/// CATAPULT §4.8: the server serves every image it advertises. An offer's relative
/// `imageUrl` is served from `server.image_dir`; the import says which of them have no file
/// there yet (they are not advertised until the file is put there).
fn warn_of_missing_images(config: &Config, snapshot: &shared::import::Snapshot) {
    let dir = &config.server.image_dir;
    let missing: Vec<&str> = snapshot
        .offers
        .iter()
        .filter_map(|o| o.image_url.as_deref())
        .filter(|u| u.starts_with('/'))
        .filter(|u| catapult::image_path(dir, u).is_none_or(|f| !f.is_file()))
        .collect();
    if let Some(first) = missing.first() {
        log::warn!(missing = missing.len(); "{} offers name an image this server cannot serve (e.g. {first}): put JPEG, PNG or GIF files under {} at the path of their imageUrl (/images/<file> is <file> there)", missing.len(), dir.display());
    }
}

/// The `import` command: loads a snapshot through the same writer the server uses.
pub fn import(config: &Config, file: &std::path::Path) -> anyhow::Result<()> {
    let db = Db::open(&config.database, false).map_err(|e| {
        anyhow::anyhow!(
            "cannot open database {}: {e}",
            config.database.path.display()
        )
    })?;
    let snapshot = shared::import::read_snapshot(file)?;
    warn_of_missing_images(config, &snapshot);
    let started = std::time::Instant::now();
    let counts = shared::import::import(&db.writer, snapshot, |what, done, total| {
        if done == total || done % (shared::import::CHUNK * 20) == 0 {
            log::info!("import: {what} {done}/{total}");
        }
    })?;
    log::info!(
        "import done in {:.1}s: {} offers, {} customers, {} coupon states, {} vouchers",
        started.elapsed().as_secs_f64(),
        counts.offers,
        counts.customers,
        counts.coupon_states,
        counts.vouchers
    );
    Ok(())
}
