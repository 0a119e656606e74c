//! Pull benchmark (release build, not a timed test):
//!
//!     cargo bench -p e2e --bench pull
//!
//! A full Convercus pull of 100,000 customers with 20 account coupons each (2,000,000
//! coupon states) while 8 lanes run, with the real processes over loopback:
//! 1. builds the release binaries (`edge-server`, `sync-daemon`, `edge-ctl`,
//!    `provider-sim`), starts the simulator and has it generate the accounts
//!    (`POST /__sim/generate`: synthesized on request, O(1) lookups, no seed file);
//! 2. creates a store whose database holds the 100,000 customers (card codes, provider
//!    `convercus`, no coupons yet: a store's first pull) through `shared::import`, starts
//!    the edge-server over HTTPS and the sync-daemon configured for Convercus only;
//! 3. triggers the pull with `edge-ctl sync now convercus` and, while it runs, drives 8
//!    lanes over keep-alive HTTPS: each lane is a register selling to customers the pull
//!    has already written (their Convercus coupons are in the store): customer metadata
//!    (`GET /coupons/customer`), a 10-item non-transient update (`POST /transaction`,
//!    holds the coupons: a write) and its commit (`POST /transaction/commit`, redeems
//!    them and queues their redemptions for Convercus: a write the daemon then delivers);
//!    one request every `BENCH_LANE_INTERVAL_MS` per lane (open loop: a request held up
//!    by a slow answer is timed from when it was due, so a stall is not hidden);
//! 4. stops when `sync_state.last_success_at` is set, then runs the same lanes for a
//!    baseline period of the same length without a pull, and prints the pull's duration
//!    and throughput, the CPU each process used, and p50/p90/p99/max per lane operation
//!    for both periods.
//!
//! Environment: BENCH_CUSTOMERS (100000), BENCH_COUPONS (account coupons per customer,
//! 20), BENCH_CATALOG (distinct couponIds, 200), BENCH_LANES (8), BENCH_LANE_INTERVAL_MS
//! (50), BENCH_ITEMS (items per sale, 10), BENCH_PULL_CONCURRENCY
//! (providers.convercus.pull_concurrency, 4), BENCH_BASELINE_SECS (default: as long as
//! the pull), BENCH_NO_BUILD=1 (use the binaries as built), BENCH_KEEP=1 (keep the store
//! directory under target/bench-data/ for inspection), BENCH_DAEMON_NICE (default: the
//! `Nice=` of packaging/systemd/sync-daemon.service, as stores run it), BENCH_SIM_NICE (0).
//! Everything (simulator, daemon, server, lanes) shares the machine's cores, so figures
//! are lower bounds for a store whose provider is elsewhere.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use e2e::sim::convercus::Generated;
use e2e::stack::{Daemon, Providers};
use e2e::{Store, StoreOptions, SITE};
use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use shared::import::{ImportCustomer, Snapshot};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

#[derive(Clone, Debug)]
struct Params {
    customers: u64,
    coupons: u64,
    catalog: u64,
    lanes: usize,
    interval: Duration,
    items: usize,
    concurrency: usize,
    baseline: Option<Duration>,
    sim_nice: i32,
    daemon_nice: i32,
    latency_ms: u64,
}

impl Params {
    fn from_env() -> Params {
        Params {
            customers: env("BENCH_CUSTOMERS", 100_000),
            coupons: env("BENCH_COUPONS", 20),
            catalog: env("BENCH_CATALOG", 200),
            lanes: env("BENCH_LANES", 8),
            interval: Duration::from_millis(env("BENCH_LANE_INTERVAL_MS", 50)),
            items: env("BENCH_ITEMS", 10),
            concurrency: env("BENCH_PULL_CONCURRENCY", 4),
            baseline: std::env::var("BENCH_BASELINE_SECS")
                .ok()
                .and_then(|s| s.parse().ok())
                .map(Duration::from_secs_f64),
            sim_nice: env("BENCH_SIM_NICE", 0),
            daemon_nice: env("BENCH_DAEMON_NICE", shipped_daemon_nice()),
            latency_ms: env("BENCH_SIM_LATENCY_MS", 0),
        }
    }
}

/// The `Nice=` of the shipped sync-daemon unit, so the bench measures what stores run.
fn shipped_daemon_nice() -> i32 {
    include_str!("../../packaging/systemd/sync-daemon.service")
        .lines()
        .find_map(|l| l.trim().strip_prefix("Nice="))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// `cargo bench` builds this package's binaries, not the services': build them all, in
/// release, so the harness finds them next to this benchmark and up to date.
fn build_binaries() {
    if env("BENCH_NO_BUILD", 0) == 1 {
        return;
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let status = Command::new(cargo)
        .args(["build", "--release", "--bins"])
        .args(["-p", "edge-server", "-p", "sync-daemon", "-p", "e2e"])
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
        .status()
        .expect("cargo build");
    assert!(status.success(), "building the release binaries failed");
}

// ------------------------------------------------------------------ processes' CPU time

/// Clock ticks per second of /proc/*/stat (USER_HZ, 100 on Linux).
const TICKS: f64 = 100.0;

/// utime + stime (seconds) of a process, from /proc.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<&str> = rest.split_whitespace().collect();
    let n = |i: usize| f.get(i).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    (n(11) + n(12)) / TICKS
}

/// This process's children by command name (the harness starts them; their pids are
/// private to it).
fn child_pid(name: &str) -> Option<u32> {
    let me = std::process::id();
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let comm = head.split_once('(').map(|(_, c)| c).unwrap_or_default();
        let ppid = rest
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse::<u32>().ok());
        if comm == name && ppid == Some(me) {
            return Some(pid);
        }
    }
    None
}

/// Busy CPU seconds of the whole machine (all cores) since boot.
fn machine_busy_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let line = stat.lines().next().unwrap_or_default();
    let v: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|s| s.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    let busy: f64 = v
        .iter()
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, x)| x)
        .sum();
    busy / TICKS
}

const PROCESSES: [&str; 3] = ["edge-server", "sync-daemon", "provider-sim"];

#[derive(Clone, Copy, Default)]
struct Cpu {
    procs: [f64; 3],
    me: f64,
    machine: f64,
}

fn cpu_now() -> Cpu {
    let mut c = Cpu {
        me: cpu_secs(std::process::id()),
        machine: machine_busy_secs(),
        ..Cpu::default()
    };
    for (i, p) in PROCESSES.iter().enumerate() {
        c.procs[i] = child_pid(p).map(cpu_secs).unwrap_or(0.0);
    }
    c
}

fn cpu_report(from: Cpu, to: Cpu, wall: Duration) -> String {
    let mut parts: Vec<String> = PROCESSES
        .iter()
        .enumerate()
        .map(|(i, p)| format!("{p} {:.1}", to.procs[i] - from.procs[i]))
        .collect();
    parts.push(format!("bench lanes {:.1}", to.me - from.me));
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    format!(
        "{} s; machine busy {:.0} % of {cores} cores over {:.1} s",
        parts.join(", "),
        100.0 * (to.machine - from.machine) / (wall.as_secs_f64() * cores as f64),
        wall.as_secs_f64()
    )
}

/// Sets the nice value of every thread of `pid` (on Linux each thread has its own; threads
/// started later inherit their creator's).
fn renice(name: &str, nice: i32) {
    let Some(pid) = child_pid(name) else {
        eprintln!("cannot renice {name}: not found");
        return;
    };
    let tids: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    let ok = Command::new("renice")
        .args(["-n", &nice.to_string(), "-p"])
        .args(&tids)
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("renice of {name} failed");
    }
}

// ------------------------------------------------------------------ the store

fn card(n: u64) -> String {
    Generated::card_code(n)
}

fn convercus_toml(providers: &Providers, p: &Params) -> String {
    format!(
        r#"
[providers.convercus]
enabled = true
base_url = "{cv}"
auth = "legacy"
org = "demo-org"
username = "edge"
password = "edge-secret"
interaction_id = "edge"
schedule = "0 0 0 1 1 *"
pull_concurrency = {conc}
timeout_ms = 10000
# The simulator is not rate-limited: measure the pull, not the 10 req/s a real store keeps.
max_requests_per_sec = 100000
"#,
        cv = providers.convercus_url,
        conc = p.concurrency,
    )
}

/// The store's customers: every generated card, provider `convercus`, no coupons yet.
fn import_customers(config_path: &Path, p: &Params) -> Duration {
    let mut cfg = shared::config::Config::load(config_path).unwrap().database;
    cfg.synchronous = shared::config::Synchronous::Normal;
    let db = shared::db::Db::open(&cfg, false).unwrap();
    let snapshot = Snapshot {
        customers: (0..p.customers)
            .map(|n| ImportCustomer {
                id: card(n),
                first_name: None,
                last_name: None,
                email: None,
                phone: None,
                provider: Some("convercus".into()),
                provider_ref: Some(Generated::account_id(n)),
                loyalty_id: None,
                points_balance: 0,
                coupons: Vec::new(),
            })
            .collect(),
        ..Snapshot::default()
    };
    let started = Instant::now();
    shared::import::import(&db.writer, snapshot, |_, _, _| {}).unwrap();
    started.elapsed()
}

// ------------------------------------------------------------------ pull progress

/// What the pull has done so far, read from the database by a watcher thread.
#[derive(Default)]
struct Progress {
    /// Customers `0..written` have their coupons in the store.
    written: AtomicU64,
    done: AtomicBool,
}

fn watch_progress(db: PathBuf, progress: Arc<Progress>, stop: Arc<AtomicBool>) {
    std::thread::spawn(move || {
        let conn =
            rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                .unwrap();
        conn.busy_timeout(Duration::from_secs(5)).unwrap();
        while !stop.load(Ordering::Relaxed) {
            // The pull writes customers in id order, and card codes all have 13 digits.
            let last: Option<String> = conn
                .query_row(
                    "SELECT customer_id FROM customer_coupons ORDER BY customer_id DESC LIMIT 1",
                    [],
                    |r| r.get(0),
                )
                .unwrap_or(None);
            if let Some(n) = last.and_then(|c| c.parse::<u64>().ok()) {
                let written = n + 1 - Generated::card_code(0).parse::<u64>().unwrap_or(0);
                progress.written.fetch_max(written, Ordering::Relaxed);
            }
            let done: Option<i64> = conn
                .query_row(
                    "SELECT last_success_at FROM sync_state WHERE provider = 'convercus'",
                    [],
                    |r| r.get(0),
                )
                .unwrap_or(None);
            if done.is_some() {
                progress.done.store(true, Ordering::Relaxed);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    });
}

// ------------------------------------------------------------------ lanes

const OPS: [&str; 3] = ["customer metadata (GET)", "update, non-transient", "commit"];

struct LaneResult {
    hist: [Histogram<u64>; 3],
    errors: [u64; 3],
}

fn hist() -> Histogram<u64> {
    Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap()
}

/// One lane: sales to random customers among the first `written` ones, until `stop`.
#[allow(clippy::too_many_arguments)]
async fn lane(
    l: usize,
    phase: char,
    client: reqwest::Client,
    base: String,
    p: Params,
    progress: Arc<Progress>,
    stop: Arc<AtomicBool>,
) -> LaneResult {
    let mut rng = rand::rngs::StdRng::seed_from_u64(l as u64 * 7919 + phase as u64);
    let mut out = LaneResult {
        hist: [hist(), hist(), hist()],
        errors: [0; 3],
    };
    // Lanes staggered evenly within one interval.
    let mut due = Instant::now() + p.interval.mul_f64(l as f64 / p.lanes as f64);
    let mut sale = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let written = progress
            .written
            .load(Ordering::Relaxed)
            .clamp(1, p.customers);
        let customer = card(rng.random_range(0..written));
        let txn = format!("{phase}{l}-{sale:07}");
        let q = format!("site={SITE}&customer={customer}&transaction={txn}");
        let items: Vec<Value> = (0..p.items)
            .map(|i| json!({"id": i + 1, "quantity": 1, "upc": 400_000_000 + rng.random_range(0..100_000u64),
                             "price": 2.49, "discountPrice": 2.49, "dept": 1 + i % 5}))
            .collect();
        let subtotal = 2.49 * p.items as f64;
        for (op, _) in OPS.iter().enumerate() {
            let since = if Instant::now() < due {
                tokio::time::sleep_until(due.into()).await;
                Instant::now()
            } else {
                due
            };
            let req = match op {
                0 => client.get(format!(
                    "{base}/coupons/customer?site={SITE}&customer={customer}"
                )),
                1 => client.post(format!("{base}/transaction?{q}")).json(
                    &json!({"transientRequest": false, "items": items, "subTotal": subtotal}),
                ),
                _ => client.post(format!("{base}/transaction/commit?{q}")).json(
                    &json!({"coupons": [], "tenders": [{"type": "CASH", "amount": subtotal}]}),
                ),
            };
            let ok = match req.basic_auth(e2e::USER, Some(e2e::PASSWORD)).send().await {
                Ok(r) if r.status().is_success() => r.bytes().await.is_ok(),
                Ok(r) => {
                    if out.errors[op] == 0 {
                        let s = r.status();
                        eprintln!(
                            "lane {l}: {} failed: {s} {}",
                            OPS[op],
                            r.text().await.unwrap_or_default()
                        );
                    }
                    false
                }
                Err(e) => {
                    if out.errors[op] == 0 {
                        eprintln!("lane {l}: {} failed: {e}", OPS[op]);
                    }
                    false
                }
            };
            if !ok {
                out.errors[op] += 1;
            }
            out.hist[op].saturating_record(since.elapsed().as_micros().max(1) as u64);
            due += p.interval;
        }
        sale += 1;
    }
    out
}

/// Runs every lane until `until` says stop; merged histograms per operation.
async fn run_lanes(
    clients: &[reqwest::Client],
    base: &str,
    phase: char,
    p: &Params,
    progress: &Arc<Progress>,
    until: impl std::future::Future<Output = ()>,
) -> (LaneResult, Duration) {
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let tasks: Vec<_> = clients
        .iter()
        .enumerate()
        .map(|(l, c)| {
            tokio::spawn(lane(
                l,
                phase,
                c.clone(),
                base.to_owned(),
                p.clone(),
                Arc::clone(progress),
                Arc::clone(&stop),
            ))
        })
        .collect();
    until.await;
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed();
    let mut all = LaneResult {
        hist: [hist(), hist(), hist()],
        errors: [0; 3],
    };
    for t in tasks {
        let r = t.await.unwrap();
        for op in 0..3 {
            all.hist[op].add(&r.hist[op]).unwrap();
            all.errors[op] += r.errors[op];
        }
    }
    (all, elapsed)
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

fn print_lanes(title: &str, r: &LaneResult) {
    println!("{title}");
    println!(
        "  {:<26} {:>8} {:>8} {:>8} {:>8} {:>9} {:>7}",
        "operation", "count", "p50 ms", "p90 ms", "p99 ms", "max ms", "errors"
    );
    for (op, name) in OPS.iter().enumerate() {
        let h = &r.hist[op];
        println!(
            "  {name:<26} {:>8} {:>8.2} {:>8.2} {:>8.2} {:>9.2} {:>7}",
            h.len(),
            ms(h.value_at_quantile(0.5)),
            ms(h.value_at_quantile(0.9)),
            ms(h.value_at_quantile(0.99)),
            ms(h.max()),
            r.errors[op]
        );
    }
    let mut all = hist();
    for h in &r.hist {
        all.add(h).unwrap();
    }
    println!(
        "  {:<26} {:>8} {:>8.2} {:>8.2} {:>8.2} {:>9.2} {:>7}",
        "all lane requests",
        all.len(),
        ms(all.value_at_quantile(0.5)),
        ms(all.value_at_quantile(0.9)),
        ms(all.value_at_quantile(0.99)),
        ms(all.max()),
        r.errors.iter().sum::<u64>()
    );
}

fn p99_all(r: &LaneResult) -> f64 {
    let mut all = hist();
    for h in &r.hist {
        all.add(h).unwrap();
    }
    ms(all.value_at_quantile(0.99))
}

/// `slow database write (N ms)` warnings in a log after byte `from`: count and worst.
fn slow_writes(log: &Path, from: usize) -> (usize, u64) {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut n = 0;
    let mut worst = 0;
    for line in text.get(from..).unwrap_or_default().lines() {
        if let Some(rest) = line.split("slow database write (").nth(1) {
            n += 1;
            let v: u64 = rest
                .split(' ')
                .next()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            worst = worst.max(v);
        }
    }
    (n, worst)
}

fn log_len(log: &Path) -> usize {
    std::fs::metadata(log).map_or(0, |m| m.len() as usize)
}

/// The daemon's progress lines: "… batch writes of N customers X ms on average, Y ms at
/// most)": the batch size, the mean of the averages and the worst.
fn batch_writes(daemon_log: &str) -> Option<(String, f64, f64)> {
    let mut size = String::new();
    let (mut sum, mut n, mut worst) = (0.0, 0, 0.0f64);
    for line in daemon_log.lines() {
        let Some(rest) = line.split("batch writes of ").nth(1) else {
            continue;
        };
        let words: Vec<&str> = rest.split_whitespace().collect();
        // N customers X ms on average, Y ms at most)
        let num = |i: usize| words.get(i).and_then(|w| w.parse::<f64>().ok());
        if let (Some(mean), Some(max)) = (num(2), num(6)) {
            size = words.first().copied().unwrap_or_default().to_owned();
            sum += mean;
            n += 1;
            worst = worst.max(max);
        }
    }
    (n > 0).then(|| (size, sum / f64::from(n), worst))
}

// ------------------------------------------------------------------ main

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` lists targets; nothing to do.
    }
    let p = Params::from_env();
    build_binaries();
    e2e::install_crypto();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(bench(p));
}

async fn bench(p: Params) {
    let states = p.customers * p.coupons;
    println!(
        "Pull benchmark: {} Convercus customers × {} account coupons = {states} coupon states \
         ({} distinct coupons), pull_concurrency {}; {} lanes, one request every {} ms each; \
         nice: provider-sim {}, sync-daemon {}; Convercus answers after {} ms",
        p.customers,
        p.coupons,
        p.catalog,
        p.concurrency,
        p.lanes,
        p.interval.as_millis(),
        p.sim_nice,
        p.daemon_nice,
        p.latency_ms
    );
    // The simulated Convercus with generated accounts.
    let providers = Providers::start().unwrap();
    let admin = reqwest::Client::new();
    let r = admin
        .post(format!("http://{}/__sim/generate", providers.admin))
        .json(&json!({"convercus": {"accounts": p.customers, "coupons_per_account": p.coupons, "catalog": p.catalog}}))
        .send()
        .await
        .unwrap();
    assert!(
        r.status().is_success(),
        "generate: {}",
        r.text().await.unwrap()
    );
    if p.sim_nice != 0 {
        renice("provider-sim", p.sim_nice);
    }
    if p.latency_ms > 0 {
        // Every Convercus call answered that much later, like over a WAN.
        providers
            .faults("convercus", json!({"slow_ms": p.latency_ms}))
            .await
            .unwrap();
    }

    // The store: customers only.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-data");
    std::fs::create_dir_all(&root).unwrap();
    let temp = tempfile::Builder::new()
        .prefix("pull-")
        .tempdir_in(&root)
        .unwrap();
    let dir = temp.path().to_owned();
    let mut store = Store::in_dir(
        &dir,
        StoreOptions {
            extra_toml: convercus_toml(&providers, &p),
            ..StoreOptions::default()
        },
        false,
    )
    .unwrap();
    let took = tokio::task::block_in_place(|| import_customers(&store.config_path, &p));
    println!(
        "store: {} customers imported in {:.1} s ({})",
        p.customers,
        took.as_secs_f64(),
        dir.display()
    );
    store.launch().await.unwrap();
    let base = store.url("");
    let clients: Vec<reqwest::Client> = (0..p.lanes)
        .map(|_| e2e::lane_client(&dir.join("tls/cert.pem")).unwrap())
        .collect();
    for c in &clients {
        // Open each lane's keep-alive connection.
        c.get(format!("{base}/healthz")).send().await.unwrap();
    }
    let daemon_log = dir.join("sync-daemon.log");
    let server_log = dir.join("edge-server.log");
    let daemon = Daemon::start(&store.config_path, &daemon_log).unwrap();
    daemon
        .wait_for_log("sync daemon started", 0, Duration::from_secs(20))
        .await
        .unwrap();
    if p.daemon_nice != 0 {
        renice("sync-daemon", p.daemon_nice);
    }

    // The pull, with lanes running while it does.
    let progress = Arc::new(Progress::default());
    let stop_watch = Arc::new(AtomicBool::new(false));
    watch_progress(
        store.db_path(),
        Arc::clone(&progress),
        Arc::clone(&stop_watch),
    );
    let marks = (log_len(&server_log), log_len(&daemon_log));
    let cpu0 = cpu_now();
    let triggered = Instant::now();
    let out = Command::new(e2e::binary("edge-ctl").unwrap())
        .arg("--config")
        .arg(&store.config_path)
        .args(["sync", "now", "convercus"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "edge-ctl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Lanes start once the pull has written its first customers (they sell to those).
    while progress.written.load(Ordering::Relaxed) == 0 && !progress.done.load(Ordering::Relaxed) {
        assert!(
            triggered.elapsed() < Duration::from_secs(60),
            "the pull did not start: {}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let first_write = triggered.elapsed();
    let watch = Arc::clone(&progress);
    let (during, lanes_secs) = run_lanes(&clients, &base, 'P', &p, &progress, async move {
        let mut last_report = Instant::now();
        while !watch.done.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if last_report.elapsed() >= Duration::from_secs(15) {
                last_report = Instant::now();
                eprintln!(
                    "  … {} customers pulled",
                    watch.written.load(Ordering::Relaxed)
                );
            }
        }
    })
    .await;
    let wall = triggered.elapsed();
    let cpu1 = cpu_now();
    let pull_slow = (
        slow_writes(&server_log, marks.0),
        slow_writes(&daemon_log, marks.1),
    );
    let done_line = daemon
        .log()
        .lines()
        .find(|l| l.contains("convercus pull done"))
        .map(str::to_owned)
        .unwrap_or_default();
    // "… pull done: N read, M offers changed, W rows written, … in X s"
    let summary = done_line
        .split("pull done: ")
        .nth(1)
        .unwrap_or_default()
        .split(" provider=")
        .next()
        .unwrap_or_default()
        .to_owned();
    let pull_secs: f64 = summary
        .rsplit(" in ")
        .next()
        .and_then(|s| s.trim_end_matches(" s").trim().parse().ok())
        .unwrap_or(wall.as_secs_f64());
    let number_before = |what: &str| -> u64 {
        summary
            .split(", ")
            .find(|part| part.ends_with(what))
            .and_then(|part| part.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let written = number_before("rows written");

    // Baseline: the same lanes, as long again, no pull.
    let baseline_len = p.baseline.unwrap_or(lanes_secs);
    let marks = (log_len(&server_log), log_len(&daemon_log));
    let cpu2 = cpu_now();
    let (baseline, base_secs) = run_lanes(
        &clients,
        &base,
        'B',
        &p,
        &progress,
        tokio::time::sleep(baseline_len),
    )
    .await;
    let cpu3 = cpu_now();
    let base_slow = (
        slow_writes(&server_log, marks.0),
        slow_writes(&daemon_log, marks.1),
    );
    stop_watch.store(true, Ordering::Relaxed);

    // What the store holds now.
    let conn = rusqlite::Connection::open(store.db_path()).unwrap();
    let count = |sql: &str| -> i64 { conn.query_row(sql, [], |r| r.get(0)).unwrap() };
    let rows = count("SELECT count(*) FROM customer_coupons c JOIN offers o ON o.id = c.offer_id WHERE o.provider = 'convercus'");
    let offers = count("SELECT count(*) FROM offers WHERE provider = 'convercus'");
    let delivered = count("SELECT count(*) FROM outbox WHERE state = 'delivered'");
    let queued = count("SELECT count(*) FROM outbox");

    println!();
    println!("pull: {pull_secs:.1} s (daemon's own timing; {:.1} s from `edge-ctl sync now` to success recorded, first customers written after {:.1} s)",
        wall.as_secs_f64(), first_write.as_secs_f64());
    println!(
        "  {:.0} customers/s, {:.0} coupon states/s, {written} rows written",
        p.customers as f64 / pull_secs,
        states as f64 / pull_secs
    );
    println!("  daemon: {summary}");
    if let Some((size, mean, worst)) = batch_writes(&daemon.log()) {
        println!(
            "  daemon's write transactions ({size} customers each, lock wait included): {mean:.1} ms on average, {worst:.1} ms at most"
        );
    }
    println!("  store now: {rows} Convercus coupon states, {offers} Convercus offers; outbox {delivered} of {queued} lane redemptions delivered");
    println!("  CPU during the pull: {}", cpu_report(cpu0, cpu1, wall));
    println!(
        "  slow database writes (> 50 ms) during the pull: edge-server {} (worst {} ms), sync-daemon {} (worst {} ms)",
        pull_slow.0 .0, pull_slow.0 .1, pull_slow.1 .0, pull_slow.1 .1
    );
    println!();
    print_lanes(
        &format!(
            "{} lanes during the pull ({:.1} s):",
            p.lanes,
            lanes_secs.as_secs_f64()
        ),
        &during,
    );
    println!();
    print_lanes(
        &format!(
            "{} lanes, baseline without a pull ({:.1} s):",
            p.lanes,
            base_secs.as_secs_f64()
        ),
        &baseline,
    );
    println!(
        "  CPU during the baseline: {}",
        cpu_report(cpu2, cpu3, base_secs)
    );
    println!(
        "  slow database writes (> 50 ms) during the baseline: edge-server {} (worst {} ms), sync-daemon {} (worst {} ms)",
        base_slow.0 .0, base_slow.0 .1, base_slow.1 .0, base_slow.1 .1
    );
    println!();
    let (a, b) = (p99_all(&during), p99_all(&baseline));
    println!(
        "lane p99 (all operations): {a:.2} ms during the pull vs {b:.2} ms without ({:.2} ×); target ≤ 10 ms: {}",
        a / b.max(0.001),
        if a <= 10.0 { "met" } else { "NOT met" }
    );
    drop(daemon);
    store.kill9();
    drop(providers);
    if env("BENCH_KEEP", 0) == 1 {
        println!("kept {}", temp.keep().display());
    }
}
