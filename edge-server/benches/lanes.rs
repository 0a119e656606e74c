//! Lane benchmark (release build, not a timed test):
//!
//!     cargo bench -p edge-server --bench lanes
//!
//! Builds (once, cached under target/bench-data/) a store of 100,000 offers and 100,000
//! customers with 20 clipped coupons each, starts the real server in this process over
//! HTTPS, and drives it with 32 keep-alive HTTPS lanes:
//! 1. at a fixed offered load (default 2,000 req/s, open loop: latency is measured from the
//!    moment each request was due when the lane was held up by a slow answer, so a stall is
//!    not hidden, else from when it was sent) for customer metadata, a
//!    30-item non-transient update, and the commit of those updated sales: p50/p99/max;
//!    Beside each: CPU per request of the HTTP workers, the database threads and the load
//!    generator, WAL pages appended per request, and the milliseconds the hypervisor took
//!    the machine's CPUs away during the phase (steal), the slowest commit (WAL write and
//!    sync) of the writer, and the longest a write waited in the writer's queue (behind a
//!    slow sync or a long batch): a stall with none of these is in the server or the client;
//! 2. at saturation (closed loop) for metadata and for the trivial `/healthz` route of the
//!    same server: requests per second, compared as a ratio in the same run.
//!
//! Environment: BENCH_RATE (req/s, default 2000), BENCH_SECS (per phase, default 10),
//! BENCH_SYNC (`full`, the shipped default, or `normal`, to see what fsync costs),
//! BENCH_CHECKPOINT_MS (database.checkpoint_interval_ms), BENCH_KEEP_ALIVE_SECS
//! (server.keep_alive_secs), BENCH_LINGER_US
//! (database.group_commit_linger_us), BENCH_MMAP_MIB (database.mmap_size_mib),
//! BENCH_CACHE_KIB (database.cache_size_kib): the shipped defaults unless set,
//! BENCH_PHASES (comma list of `static`, `metadata`, `update`, `commit`, `saturation`;
//! default all),
//! BENCH_MATCHING (how many of the customer's 20 clipped coupons each sale's items match,
//! default 5; 20 = every clipped coupon applies).
//! The client shares the machine's cores with the server, so figures are lower bounds.

#![allow(clippy::unwrap_used, clippy::expect_used)]

/// The allocator of the `edge-server` binary (see its main.rs), so the server measured here
/// is the one shipped.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use chrono::NaiveDate;
use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use shared::config::Config;
use shared::domain::{ItemSet, Mechanic, Offer, Rule, Upc};
use shared::import::{ImportCoupon, ImportCustomer, Snapshot};
use shared::money::Cents;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

const OFFERS: usize = 100_000;
const CUSTOMERS: usize = 100_000;
const PER_CUSTOMER: usize = 20;
const LANES: usize = 32;

/// How many of the customer's 20 clipped coupons each 30-item sale matches (BENCH_MATCHING,
/// default 5: a realistic handful; 20 is the worst case, every clipped coupon applies).
fn matching() -> usize {
    static MATCHING: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *MATCHING.get_or_init(|| env_or("BENCH_MATCHING", 5).min(PER_CUSTOMER))
}

/// Whether BENCH_PHASES (a comma list of `static`, `metadata`, `update`, `commit`,
/// `saturation`; default all) asks for this phase. `commit` finishes the sales of `update`.
fn phase(name: &str) -> bool {
    std::env::var("BENCH_PHASES")
        .map_or(name != "prune", |p| p.split(',').any(|p| p.trim() == name))
}

fn upc(offer: usize) -> u64 {
    100_000_000 + offer as u64
}

fn customer_id(c: usize) -> String {
    format!("8{c:011}")
}

fn customer_offers(c: usize) -> impl Iterator<Item = usize> {
    (0..PER_CUSTOMER).map(move |k| (c * PER_CUSTOMER + k * 7919) % OFFERS)
}

fn offer(n: usize) -> Offer {
    let mechanic = match n % 4 {
        0 => Mechanic::PercentOff { basis_points: 1000 },
        1 => Mechanic::AmountOff { cents: Cents(50) },
        2 => Mechanic::FixedPrice { cents: Cents(99) },
        _ => Mechanic::BuyXGetY {
            buy: 1,
            get: 1,
            reward_basis_points: 5000,
        },
    };
    Offer {
        id: format!("O{n}"),
        provider: if n.is_multiple_of(4) {
            "convercus".into()
        } else {
            "local".into()
        },
        provider_ref: format!("ref-{n}"),
        short_description: format!("Offer {n}"),
        requirement_description: "Buy the item".into(),
        long_description: String::new(),
        category: "Bench".into(),
        brand: "Brand".into(),
        start_date: NaiveDate::from_ymd_opt(2020, 1, 1).unwrap(),
        end_date: NaiveDate::from_ymd_opt(2099, 12, 31).unwrap(),
        image_url: None,
        targeted: n >= 200,
        enabled: true,
        featured: false,
        requires_clip: true,
        rule: Rule {
            mechanic,
            requirement: ItemSet::new(vec![Upc::normalise(&upc(n).to_string())], vec![]),
            reward: None,
            min_qty: 1,
            min_basket: None,
            max_applications: Some(1),
        },
        receipt_alias: format!("Offer {n}"),
        reduces_tax: true,
        coupon_type: String::new(),
        external_id: format!("EXT-{n}"),
        per_customer_limit: Some(1),
        global_limit: None,
        loyalty_cost: None,
    }
}

fn snapshot() -> Snapshot {
    Snapshot {
        offers: (0..OFFERS).map(offer).collect(),
        customers: (0..CUSTOMERS)
            .map(|c| ImportCustomer {
                id: customer_id(c),
                first_name: Some("Bench".into()),
                last_name: Some(format!("Customer {c}")),
                email: None,
                phone: None,
                provider: None,
                provider_ref: None,
                loyalty_id: None,
                points_balance: 0,
                coupons: customer_offers(c)
                    .map(|o| ImportCoupon {
                        offer_id: format!("O{o}"),
                        state: shared::domain::CouponState::Clipped,
                        provider_ref: None,
                    })
                    .collect(),
            })
            .collect(),
        vouchers: Vec::new(),
    }
}

fn config(dir: &Path) -> Config {
    let text = format!(
        r#"[store]
sites = ["STO1"]
[database]
path = "{db}"
read_pool_size = 2
synchronous = "{sync}"
[server]
listen = "127.0.0.1:0"
workers = 2
[server.tls]
cert = "{dir}/cert.pem"
key = "{dir}/key.pem"
self_signed_names = ["localhost", "127.0.0.1"]
[lanes]
hold_ttl_secs = 86400
[[lanes.credentials]]
username = "lane"
password = "lane-secret"
[logging]
level = "warn"
"#,
        db = dir.join("edge.db").display(),
        dir = dir.display(),
        sync = std::env::var("BENCH_SYNC").unwrap_or_else(|_| "full".to_owned()),
    );
    let mut config = Config::from_toml_str(&text).unwrap();
    // The shipped defaults unless the environment says otherwise.
    let db = &mut config.database;
    db.checkpoint_interval_ms = env_or("BENCH_CHECKPOINT_MS", db.checkpoint_interval_ms);
    db.group_commit_linger_us = env_or("BENCH_LINGER_US", db.group_commit_linger_us);
    db.mmap_size_mib = env_or("BENCH_MMAP_MIB", db.mmap_size_mib);
    db.cache_size_kib = env_or("BENCH_CACHE_KIB", db.cache_size_kib);
    let server = &mut config.server;
    server.keep_alive_secs = env_or("BENCH_KEEP_ALIVE_SECS", server.keep_alive_secs);
    config
}

/// The number in environment variable `var`, or `default` when it is unset; a value that
/// is not a number stops the bench rather than running it with the default.
fn env_or<T: std::str::FromStr>(var: &str, default: T) -> T {
    match std::env::var(var) {
        Ok(text) => text
            .parse()
            .unwrap_or_else(|_| panic!("{var}={text} is not a number")),
        Err(_) => default,
    }
}

/// The benchmark database, built once and copied fresh for every run (the run writes).
fn prepare(dir: &Path) -> PathBuf {
    let template = dir.join("template.db");
    if !template.exists() {
        let build = dir.join("building.db");
        let _ = std::fs::remove_file(&build);
        let mut cfg = config(dir).database;
        cfg.path = build.clone();
        cfg.synchronous = shared::config::Synchronous::Normal;
        let db = shared::db::Db::open(&cfg, false).unwrap();
        let started = Instant::now();
        println!(
            "building the benchmark database (once): {OFFERS} offers, {CUSTOMERS} customers × {PER_CUSTOMER} coupons"
        );
        let counts = shared::import::import(&db.writer, snapshot(), |what, done, total| {
            if done == total || done % 20_000 == 0 {
                println!("  import {what}: {done}/{total}");
            }
        })
        .unwrap();
        let secs = started.elapsed().as_secs_f64();
        println!(
            "  imported {} coupon states in {secs:.1}s ({:.0} rows/s)",
            counts.coupon_states,
            (counts.coupon_states + counts.customers + counts.offers) as f64 / secs
        );
        drop(db);
        let conn = rusqlite::Connection::open(&build).unwrap();
        conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE); VACUUM;")
            .unwrap();
        drop(conn);
        std::fs::rename(&build, &template).unwrap();
    }
    let run = dir.join("edge.db");
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", run.display()));
    }
    std::fs::copy(&template, &run).unwrap();
    // Flush the fresh copy now: otherwise the kernel writes its ~180 MB back during the
    // first phases, and every lane commit's fsync waits behind that (a bench artefact).
    std::fs::File::open(&run)
        .and_then(|f| f.sync_all())
        .unwrap();
    run
}

struct Lane {
    client: reqwest::Client,
    base: String,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Metadata,
    Update,
    Commit,
    Static,
}

/// One request, made ready before it is due (as a lane has its basket ready when it
/// sends): building the JSON body is the load generator's work, not the server's, so it is
/// kept out of the measured time.
struct Prepared {
    url: String,
    body: Option<Vec<u8>>,
}

fn prepare_request(lane: &Lane, kind: Kind, seq: usize, rng: &mut rand::rngs::StdRng) -> Prepared {
    let c = rng.random_range(0..CUSTOMERS);
    let cust = customer_id(c);
    match kind {
        Kind::Static => Prepared {
            url: format!("{}/healthz", lane.base),
            body: None,
        },
        Kind::Metadata => Prepared {
            url: format!("{}/coupons/customer?site=STO1&customer={cust}", lane.base),
            body: None,
        },
        Kind::Update | Kind::Commit => {
            // Sale `seq` belongs to customer `seq`: the commit phase finishes the update phase's sales.
            let cust = customer_id(seq % CUSTOMERS);
            // Lane transaction ids grow like CATAPULT's (store-terminal-sequence), so they are zero-padded.
            let txn = format!("B{seq:09}");
            let q = format!("site=STO1&customer={cust}&transaction={txn}");
            if kind == Kind::Commit {
                let body = json!({"coupons": [], "tenders": [{"type": "CASH", "amount": 50.0}]});
                return Prepared {
                    url: format!("{}/transaction/commit?{q}", lane.base),
                    body: Some(serde_json::to_vec(&body).unwrap()),
                };
            }
            let mut items: Vec<Value> = customer_offers(seq % CUSTOMERS)
                .take(matching())
                .enumerate()
                .map(|(i, o)| json!({"id": i + 1, "quantity": 2, "upc": upc(o), "price": 3.49, "discountPrice": 2.99, "dept": 1}))
                .collect();
            for i in items.len()..30 {
                items.push(json!({"id": i + 1, "quantity": 1, "upc": 900_000_000 + rng.random_range(0..1_000_000u64), "price": 1.99, "discountPrice": 1.99, "dept": 2}));
            }
            let body = json!({"transientRequest": false, "items": items, "subTotal": 100.0});
            Prepared {
                url: format!("{}/transaction?{q}", lane.base),
                body: Some(serde_json::to_vec(&body).unwrap()),
            }
        }
    }
}

fn send(lane: &Lane, prepared: Prepared) -> reqwest::RequestBuilder {
    let request = match prepared.body {
        Some(body) => lane
            .client
            .post(prepared.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body),
        None => lane.client.get(prepared.url),
    };
    request.header(reqwest::header::AUTHORIZATION, AUTHORIZATION)
}

/// `Basic` + base64 of `lane:lane-secret`.
const AUTHORIZATION: &str = "Basic bGFuZTpsYW5lLXNlY3JldA==";

/// Open loop at `rate` req/s over all lanes for `secs`; latency from each request's due time.
/// `seq_base`: the first sale number (a later update phase sells new sales).
async fn fixed_rate(
    lanes: &[Arc<Lane>],
    kind: Kind,
    rate: u64,
    secs: u64,
    seq_base: usize,
) -> (Histogram<u64>, usize) {
    let per_lane = Duration::from_secs_f64(LANES as f64 / rate as f64);
    let total = (rate * secs) as usize;
    let start = Instant::now() + Duration::from_millis(50);
    let mut tasks = Vec::new();
    for (l, lane) in lanes.iter().enumerate() {
        let lane = lane.clone();
        tasks.push(tokio::spawn(async move {
            let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
            let mut errors = 0;
            let mut rng = rand::rngs::StdRng::seed_from_u64(l as u64);
            // Stagger lanes evenly within one period.
            let offset = per_lane.mul_f64(l as f64 / LANES as f64);
            let mut i = 0;
            loop {
                let seq = i * LANES + l;
                if seq >= total {
                    break;
                }
                let seq = seq_base + seq;
                let due = start + offset + per_lane * i as u32;
                let prepared = prepare_request(&lane, kind, seq, &mut rng);
                // A request that is late because the previous answer came late is timed
                // from when it was due (no coordinated omission). One that only waited
                // on the client's timer (1 ms granularity) is timed from when it was sent:
                // timer slop is not the server's.
                let since = if Instant::now() < due {
                    tokio::time::sleep_until(due.into()).await;
                    Instant::now()
                } else {
                    due
                };
                if !succeeded(send(&lane, prepared).send().await, errors == 0).await {
                    errors += 1;
                }
                h.saturating_record(since.elapsed().as_micros().max(1) as u64);
                i += 1;
            }
            (h, errors)
        }));
    }
    let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    let mut errors = 0;
    for t in tasks {
        let (h, e) = t.await.unwrap();
        all.add(h).unwrap();
        errors += e;
    }
    (all, errors)
}

/// Closed loop: every lane sends its next request as soon as the last is answered.
async fn saturation(lanes: &[Arc<Lane>], kind: Kind, secs: u64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (l, lane) in lanes.iter().enumerate() {
        let lane = lane.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(1000 + l as u64);
            let mut n = 0u64;
            while Instant::now() < deadline {
                if send(&lane, prepare_request(&lane, kind, 0, &mut rng))
                    .send()
                    .await
                    .map(|r| r.status().is_success())
                    .unwrap_or(false)
                {
                    n += 1;
                }
            }
            n
        }));
    }
    let mut n = 0;
    for t in tasks {
        n += t.await.unwrap();
    }
    n as f64 / started.elapsed().as_secs_f64()
}

/// CPU time (µs) used so far by this process's threads: the server's HTTP workers (and
/// every other server thread), its database writer and checkpointer, and the load
/// generator's tokio workers; and the time the hypervisor gave the machine's CPUs to
/// someone else (steal), which on a shared virtual machine explains many a stall.
#[derive(Clone, Copy, Default)]
struct Cpu {
    http: u64,
    db: u64,
    client: u64,
    steal: u64,
}

fn cpu_split() -> Cpu {
    let tick_us = 1_000_000 / 100; // USER_HZ is 100 on Linux.
    let mut cpu = Cpu {
        // `cpu  user nice system idle iowait irq softirq steal ...`, over all CPUs.
        steal: std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| s.split_whitespace().nth(8)?.parse::<u64>().ok())
            .map_or(0, |ticks| ticks * tick_us),
        ..Cpu::default()
    };
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return cpu;
    };
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ...`: comm may hold spaces, so split after the last ')'.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = &stat[open + 1..close];
        let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
        let ticks: u64 = fields
            .get(11)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
            + fields
                .get(12)
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0);
        let us = ticks * tick_us;
        if comm.starts_with("tokio") {
            cpu.client += us;
        } else if comm.starts_with("sqlite-writer") || comm.starts_with("wal-checkpoint") {
            cpu.db += us;
        } else {
            cpu.http += us;
        }
    }
    cpu
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` lists targets; nothing to do.
    }
    let rate: u64 = env_or("BENCH_RATE", 2000);
    let secs: u64 = env_or("BENCH_SECS", 10);
    e2e::install_crypto();
    shared::logging::init(log::LevelFilter::Warn);
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-data");
    std::fs::create_dir_all(&dir).unwrap();
    prepare(&dir);
    let config = config(&dir);
    let db_config = config.database.clone();
    let kept_from = config.vouchers_kept_from();
    let (db, tls) = edge_server::prepare(&config).unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        actix_web::rt::System::new().block_on(async move {
            edge_server::run(config, db, tls, listener)
                .unwrap()
                .await
                .unwrap()
        });
    });

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let lanes: Vec<Arc<Lane>> = (0..LANES)
            .map(|_| Arc::new(Lane { client: e2e::lane_client(&dir.join("cert.pem")).unwrap(), base: format!("https://127.0.0.1:{port}") }))
            .collect();
        // Warm up: open every keep-alive connection and touch the caches.
        saturation(&lanes, Kind::Metadata, 2).await;
        println!("\n{LANES} keep-alive HTTPS lanes, {rate} req/s offered for {secs}s per phase; each 30-item sale matches {} of the customer's {PER_CUSTOMER} clipped coupons:", matching());
        println!("{:<34} {:>8} {:>8} {:>8} {:>8} {:>6} {:>6} {:>6} {:>6} {:>7} {:>6} {:>6} {:>6}", "endpoint", "p50 ms", "p90 ms", "p99 ms", "max ms", "errors", "http", "db", "client", "WAL", "steal", "sync", "queue");
        println!("{:<34} {:>44} {:>20} {:>7} {:>6} {:>6} {:>6}", "", "", "CPU µs per request", "pages", "ms", "max ms", "max ms");
        for (kind, phase_name, name) in [
            (Kind::Static, "static", "static /healthz (reference)"),
            (Kind::Metadata, "metadata", "customer metadata (GET)"),
            (Kind::Update, "update", "transaction update (30 items)"),
            (Kind::Commit, "commit", "commit (empty list: redeem all)"),
        ] {
            if !phase(phase_name) {
                continue;
            }
            let before = cpu_split();
            shared::db::take_slowest_commit();
            shared::db::take_slowest_queue_wait();
            let frames = shared::db::wal_frames_written();
            let (h, errors) = fixed_rate(&lanes, kind, rate, secs, 0).await;
            let after = cpu_split();
            let n = h.len().max(1);
            println!(
                "{name:<34} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {errors:>6} {:>6} {:>6} {:>6} {:>7.1} {:>6} {:>6.1} {:>6.1}",
                ms(h.value_at_quantile(0.5)),
                ms(h.value_at_quantile(0.9)),
                ms(h.value_at_quantile(0.99)),
                ms(h.max()),
                (after.http - before.http) / n,
                (after.db - before.db) / n,
                (after.client - before.client) / n,
                (shared::db::wal_frames_written() - frames) as f64 / n as f64,
                (after.steal - before.steal) / 1000,
                shared::db::take_slowest_commit().as_secs_f64() * 1000.0,
                shared::db::take_slowest_queue_wait().as_secs_f64() * 1000.0,
            );
        }
        if phase("prune") {
            prune_phase(&lanes, &db_config, &kept_from, rate, secs).await;
        }
        if !phase("saturation") {
            return;
        }
        let stat = saturation(&lanes, Kind::Static, secs).await;
        let meta = saturation(&lanes, Kind::Metadata, secs).await;
        println!("\nsaturation, closed loop, {LANES} lanes:");
        println!("  static /healthz          {stat:>9.0} req/s");
        println!("  customer metadata        {meta:>9.0} req/s  ({:.2} × static)", meta / stat);
    });
}

/// Phase `prune` (only when BENCH_PHASES lists it): 30-item updates at the fixed rate while
/// the sync daemon's retention task (`sync_daemon::worker::prune_sales`, then
/// `prune_vouchers`, on its own database connection and writer, as in the daemon's
/// process) deletes BENCH_PRUNE_SALES sales and BENCH_PRUNE_VOUCHERS vouchers older than
/// the retention, then as long again without it, in the same run.
async fn prune_phase(
    lanes: &[Arc<Lane>],
    db_config: &shared::config::DatabaseConfig,
    kept_from: &str,
    rate: u64,
    secs: u64,
) {
    // Old sales (default 5,000: about what the retention task deletes in the phase's 10 s;
    // a store's first prune has many more, deleted at the same pace), and vouchers whose
    // validity ended long ago, each beside one still valid that the walk reads and keeps.
    let n: usize = env_or("BENCH_PRUNE_SALES", 5_000);
    let vouchers: usize = env_or("BENCH_PRUNE_VOUCHERS", 0);
    let planted = Instant::now();
    {
        let mut conn = rusqlite::Connection::open(&db_config.path).unwrap();
        conn.busy_timeout(Duration::from_secs(30)).unwrap();
        let old = shared::db::now_secs() - 400 * 86_400;
        let tx = conn.transaction().unwrap();
        {
            // The size of a real sale's row: its last update (applied coupons, basket) and
            // commit request and answer, and two redemptions.
            let update = format!(
                "{{\"applied\":{{\"C1\":150,\"C2\":99}},\"sale\":[{}]}}",
                vec!["{\"upc\":\"894773001193\",\"qty\":1000,\"amount\":349}"; 30].join(",")
            );
            let mut sale = tx.prepare("INSERT INTO transactions (site, txn_id, customer_id, state, updated_at, last_update, commit_request, commit_response, committed_at) VALUES ('STO1', ?1, ?2, 'committed', ?3, ?4, '{\"coupons\":[],\"tenders\":[{\"type\":\"CASH\",\"amount\":50.0}]}', '{\"receiptLines\":[]}', ?3)").unwrap();
            let mut redemption = tx.prepare("INSERT INTO redemptions (site, txn_id, customer_id, offer_id, discount, redeemed_at) VALUES ('STO1', ?1, ?2, ?3, 150, ?4)").unwrap();
            for i in 0..n {
                let txn = format!("OLD{i:09}");
                let customer = customer_id(i % CUSTOMERS);
                sale.execute(rusqlite::params![txn, customer, old, update])
                    .unwrap();
                for offer in ["C1", "C2"] {
                    redemption
                        .execute(rusqlite::params![txn, customer, offer, old])
                        .unwrap();
                }
            }
            // Pulled Coupontools sessions: one that ended a year and a half ago, one valid.
            let mut voucher = tx.prepare("INSERT INTO vouchers (code, provider, provider_ref, description, value, valid_until, state, updated_at) VALUES (?1, 'coupontools', ?1, '$5 off $20', 500, ?2, 'active', 0)").unwrap();
            for i in 0..vouchers {
                for (code, until) in [
                    (format!("ended-{i:09}"), "2025-05-31"),
                    (format!("valid-{i:09}"), "2099-12-31"),
                ] {
                    voucher.execute(rusqlite::params![code, until]).unwrap();
                }
            }
        }
        tx.commit().unwrap();
    }
    println!(
        "\nprune: {n} sales of 400 days ago and {vouchers} vouchers ended on 2025-05-31 (beside as many valid) planted in {:.1}s",
        planted.elapsed().as_secs_f64()
    );
    // The daemon's own connection and writer (it is another process in a store).
    let daemon_db = shared::db::Db::open(db_config, false).unwrap();
    let kept_from = kept_from.to_owned();
    let pruning = tokio::spawn(async move {
        let started = Instant::now();
        let deleted = sync_daemon::worker::prune_sales(&daemon_db, 90)
            .await
            .unwrap();
        let vouchers = sync_daemon::worker::prune_vouchers(&daemon_db, &kept_from)
            .await
            .unwrap();
        (deleted, vouchers, started.elapsed())
    });
    shared::db::take_slowest_commit();
    shared::db::take_slowest_queue_wait();
    let total = (rate * secs) as usize;
    let (during, e1) = fixed_rate(lanes, Kind::Update, rate, secs, 10 * total).await;
    let during_sync = shared::db::take_slowest_commit().as_secs_f64() * 1000.0;
    let during_queue = shared::db::take_slowest_queue_wait().as_secs_f64() * 1000.0;
    let finished = pruning.is_finished();
    let (deleted, vouchers, took) = pruning.await.unwrap();
    println!(
        "  retention task: {deleted} sales and {vouchers} vouchers deleted in {:.1}s ({:.0} rows/s){}",
        took.as_secs_f64(),
        (deleted + vouchers) as f64 / took.as_secs_f64().max(0.001),
        if finished {
            ""
        } else {
            ", still running when the lanes' phase ended"
        }
    );
    let (after, e2) = fixed_rate(lanes, Kind::Update, rate, secs, 11 * total).await;
    let after_sync = shared::db::take_slowest_commit().as_secs_f64() * 1000.0;
    let after_queue = shared::db::take_slowest_queue_wait().as_secs_f64() * 1000.0;
    for (name, h, errors, sync, queue) in [
        (
            "update during the prune",
            &during,
            e1,
            during_sync,
            during_queue,
        ),
        ("update after it", &after, e2, after_sync, after_queue),
    ] {
        println!(
            "  {name:<32} p50 {:>6.3}  p90 {:>6.3}  p99 {:>6.3}  max {:>7.3} ms  errors {errors}  slowest commit (either writer) {sync:.1} ms, longest queue wait {queue:.1} ms",
            ms(h.value_at_quantile(0.5)),
            ms(h.value_at_quantile(0.9)),
            ms(h.value_at_quantile(0.99)),
            ms(h.max()),
        );
    }
}

/// Whether a request succeeded; the first failure of a lane is printed with its cause.
async fn succeeded(result: reqwest::Result<reqwest::Response>, report: bool) -> bool {
    match result {
        Ok(r) if r.status().is_success() => {
            let _ = r.bytes().await;
            true
        }
        Ok(r) => {
            if report {
                let status = r.status();
                eprintln!(
                    "request failed: {status} {}",
                    r.text().await.unwrap_or_default()
                );
            }
            false
        }
        Err(e) => {
            if report {
                eprintln!("request failed: {e}");
            }
            false
        }
    }
}
