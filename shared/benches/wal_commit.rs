//! Writer commit benchmark (release build, not a timed test):
//!
//!     cargo bench -p edge-shared --bench wal_commit
//!
//! What one durable write costs the lanes, without HTTP: the edge server's database
//! (synchronous = FULL, background checkpoints) in a fresh directory under
//! `target/bench-data/wal-commit/`, and 4,000 writes of ~12 KiB (about the WAL pages of
//! a 30-item update) through the single writer, one at a time, each timed from hand-over
//! until it is durable. Run alternately with the WAL grown at start
//! (`database.wal_preallocate_mib` = 64, the default) and left to grow (0): p50, p90,
//! p99, p99.9 and max of each. BENCH_PAIRS (default 3) sets how many pairs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use shared::config::DatabaseConfig;
use shared::db::Db;
use std::time::{Duration, Instant};

const WRITES: usize = 4_000;

fn run(dir: &std::path::Path, preallocate_mib: u32) -> Vec<Duration> {
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(dir.join(format!("edge.db{suffix}")));
    }
    let cfg = DatabaseConfig {
        path: dir.join("edge.db"),
        wal_preallocate_mib: preallocate_mib,
        ..DatabaseConfig::default()
    };
    let db = Db::open(&cfg, true).unwrap();
    db.writer
        .write_blocking(|c| c.execute_batch("CREATE TABLE b (k INTEGER PRIMARY KEY, v BLOB)"))
        .unwrap();
    let blob: Vec<u8> = (0..3_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let mut took = Vec::with_capacity(WRITES);
    for i in 0..WRITES {
        let blob = blob.clone();
        let started = Instant::now();
        db.writer
            .write_blocking(move |c| {
                let mut put = c.prepare_cached("INSERT OR REPLACE INTO b VALUES (?1, ?2)")?;
                for j in 0..4 {
                    put.execute(rusqlite::params![(i * 4 + j) as i64, blob])?;
                }
                Ok::<_, rusqlite::Error>(())
            })
            .unwrap();
        took.push(started.elapsed());
    }
    took
}

fn line(label: &str, mut t: Vec<Duration>) {
    t.sort();
    let q = |p: f64| t[((t.len() as f64 * p) as usize).min(t.len() - 1)].as_secs_f64() * 1e3;
    println!(
        "{label:<24} p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3} ms",
        q(0.5),
        q(0.9),
        q(0.99),
        q(0.999),
        t.last().map_or(0.0, |d| d.as_secs_f64() * 1e3)
    );
}

fn main() {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-data/wal-commit");
    std::fs::create_dir_all(&dir).unwrap();
    let pairs: usize = std::env::var("BENCH_PAIRS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    println!("{WRITES} durable writes of 4 rows (~12 KiB) each, one at a time, per run:");
    for _ in 0..pairs {
        line("WAL left to grow (0)", run(&dir, 0));
        line("WAL grown at start (64)", run(&dir, 64));
    }
}
