//! The SQLite database: opening and migrating it, the read pool, the single writer thread
//! (with group commit), and the background WAL checkpointer.
//!
//! Architecture Invariant: in a process, every write goes through the one [`Writer`], so
//! there is never more than one writer connection per process fighting for the lock.

use crate::config::{DatabaseConfig, Synchronous};
use r2d2_sqlite::SqliteConnectionManager;
use rusqlite::{Connection, OpenFlags};
use rusqlite_migration::{Migrations, M};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

pub type ReadPool = r2d2::Pool<SqliteConnectionManager>;
pub type ReadConn = r2d2::PooledConnection<SqliteConnectionManager>;

/// The numbered, append-only migrations. Never edit one that has shipped: add a new one.
pub fn migrations() -> Migrations<'static> {
    Migrations::new(vec![
        M::up(include_str!("../migrations/0001_initial.sql")),
        M::up(include_str!("../migrations/0002_sync.sql")),
        M::up(include_str!(
            "../migrations/0003_drop_unused_redemption_index.sql"
        )),
        M::up(include_str!(
            "../migrations/0004_state_checks_without_in_lists.sql"
        )),
        M::up_with_hook(
            include_str!("../migrations/0005_customer_phone_digits.sql"),
            |tx: &rusqlite::Transaction| -> rusqlite_migration::HookResult {
                crate::repo::fill_phone_digits(tx)?;
                Ok(())
            },
        ),
        M::up(include_str!(
            "../migrations/0006_redemption_conflicts_index.sql"
        )),
        M::up(include_str!("../migrations/0007_lapsing_voucher_locks.sql")),
        M::up(include_str!("../migrations/0008_voucher_alias.sql")),
        M::up(include_str!("../migrations/0009_voucher_times_rfc3339.sql")),
        M::up(include_str!("../migrations/0010_points_spent.sql")),
    ])
}

/// Number of the newest migration this build knows.
pub fn schema_version() -> i64 {
    10
}

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("connection pool: {0}")]
    Pool(#[from] r2d2::Error),
    #[error("migration failed: {0}")]
    Migration(#[from] rusqlite_migration::Error),
    #[error("database schema version {found} is newer than this build knows ({known}); install the newer package or restore a matching backup")]
    TooNew { found: i64, known: i64 },
    #[error("the database writer has stopped")]
    WriterGone,
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// The database (or its directory) cannot be used as configured: permissions, a missing
    /// directory, a file that is no database. The text says what to do.
    #[error("{0}")]
    Unusable(String),
}

/// How long a connection waits for the other process's (or the checkpointer's) lock.
static BUSY_TIMEOUT_MS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(5000);

/// Pause between two tries of a busy lock.
const BUSY_STEP: Duration = Duration::from_micros(200);

/// Waits for a lock in short steps. SQLite's own busy timeout sleeps in growing steps (up to
/// 100 ms), so a lock freed after 5 ms could keep a lane commit waiting 50 ms (measured by
/// the lane benchmark); retrying every 0.2 ms bounds that overshoot.
fn busy_wait(attempt: i32) -> bool {
    let limit = BUSY_TIMEOUT_MS.load(std::sync::atomic::Ordering::Relaxed);
    let waited_us = u64::try_from(attempt).unwrap_or(0) * BUSY_STEP.as_micros() as u64;
    if waited_us >= u64::from(limit) * 1000 {
        return false;
    }
    std::thread::sleep(BUSY_STEP);
    true
}

/// Applies the per-connection settings every connection of ours gets.
fn init_connection(conn: &Connection, cfg: &DatabaseConfig) -> rusqlite::Result<()> {
    let sync = match cfg.synchronous {
        Synchronous::Full => "FULL",
        Synchronous::Normal => "NORMAL",
    };
    BUSY_TIMEOUT_MS.store(cfg.busy_timeout_ms, std::sync::atomic::Ordering::Relaxed);
    conn.busy_handler(Some(busy_wait))?;
    conn.execute_batch(&format!(
        "PRAGMA foreign_keys = ON;
         PRAGMA synchronous = {sync};
         PRAGMA cache_size = -{cache};
         PRAGMA mmap_size = {mmap};
         PRAGMA temp_store = MEMORY;",
        cache = cfg.cache_size_kib,
        mmap = u64::from(cfg.mmap_size_mib) * 1024 * 1024,
    ))?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(())
}

/// Opens the database file for writing, creating it if needed, in WAL mode, and migrates it
/// to the newest schema (refusing one that is newer than this build).
pub fn open_and_migrate(cfg: &DatabaseConfig) -> Result<Connection, DbError> {
    let mut dir_error = None;
    if let Some(dir) = cfg.path.parent() {
        if !dir.as_os_str().is_empty() {
            dir_error = std::fs::create_dir_all(dir).err();
        }
    }
    // Both services start together on a fresh store: only one may create or migrate the
    // schema at a time (the other then finds it current). An advisory lock on a file beside
    // the database, released when `_migrating` goes out of scope.
    let lock_path = {
        let mut p = cfg.path.clone().into_os_string();
        p.push(".migrate-lock");
        std::path::PathBuf::from(p)
    };
    let _migrating = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        // Made by another user (root running edge-ctl): a read-only handle locks as well.
        // When there is none to open, the reason is why it could not be created (EACCES).
        .or_else(|create| {
            std::fs::File::open(&lock_path).map_err(|open| {
                if open.kind() == std::io::ErrorKind::NotFound {
                    create
                } else {
                    open
                }
            })
        })
        .and_then(|f| f.lock().map(|()| f))
        .map_err(|e| {
            // The directory could not be made: that, not the lock file, is the cause.
            let e = dir_error.unwrap_or(e);
            DbError::Unusable(format!(
                "cannot create or lock {} beside the database: {e}; {}",
                lock_path.display(),
                what_to_do_when_not_writable(&e)
            ))
        })?;
    let mut conn = open_writable(cfg)?;
    let found: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if found > schema_version() {
        return Err(DbError::TooNew {
            found,
            known: schema_version(),
        });
    }
    migrations().to_latest(&mut conn)?;
    if found < schema_version() {
        // A connection keeps the schema it parsed; one that rewrote it in place (migration
        // 0004) would go on checking the old way. Start afresh with the new schema.
        drop(conn);
        conn = open_writable(cfg)?;
    }
    Ok(conn)
}

/// What to do about a directory the service cannot write, by the reason. A read-only file
/// system is, under the packaged units, their sandbox (`ProtectSystem=strict`): only
/// `/var/lib/edge-coupon` is writable, and no chown helps.
fn what_to_do_when_not_writable(e: &std::io::Error) -> &'static str {
    const EROFS: i32 = 30;
    if e.raw_os_error() == Some(EROFS) {
        "the file system is read-only to this service: under systemd the packaged units may write only below /var/lib/edge-coupon (ProtectSystem=strict); to keep the database elsewhere add `ReadWritePaths=<its directory>` with `systemctl edit edge-server sync-daemon`, or fix database.path"
    } else {
        "the directory must exist and be writable by the user this service runs as (chown it to that user, or fix database.path)"
    }
}

/// A read-write connection with every setting the writer needs (WAL, its size limit).
fn open_writable(cfg: &DatabaseConfig) -> Result<Connection, DbError> {
    let unusable = |e: rusqlite::Error| unusable(&cfg.path, e);
    let conn = Connection::open(&cfg.path).map_err(unusable)?;
    init_connection(&conn, cfg).map_err(unusable)?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(unusable)?;
    conn.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)
        .map_err(unusable)?;
    // SQLite opens a file it may not write read-only without a word, and a current schema
    // needs no migration write: without this, the server would start, say it is ready, and
    // answer every sale with 500. An empty write transaction takes the write lock.
    let read_only = conn.is_readonly(rusqlite::MAIN_DB).map_err(unusable)?;
    if read_only {
        return Err(not_writable(&cfg.path, "opened read-only"));
    }
    conn.execute_batch("BEGIN IMMEDIATE; COMMIT;")
        .map_err(unusable)?;
    Ok(conn)
}

fn not_writable(path: &std::path::Path, why: &str) -> DbError {
    DbError::Unusable(format!(
        "database {} cannot be written ({why}): the file, its -wal and -shm files and its directory must be writable by the user this service runs as (the package's is edge-coupon: chown edge-coupon: the files), or fix database.path",
        path.display()
    ))
}

/// The database error that means the file cannot be used as configured, said as such, or
/// the error as it is.
fn unusable(path: &std::path::Path, e: rusqlite::Error) -> DbError {
    use rusqlite::ErrorCode;
    match e.sqlite_error_code() {
        Some(ErrorCode::ReadOnly) => not_writable(path, &e.to_string()),
        Some(ErrorCode::NotADatabase) => DbError::Unusable(format!(
            "{} is not an SQLite database ({e}): restore the store's database from a backup, or move the file away to start with an empty one (and import a snapshot)",
            path.display()
        )),
        // The file is there: its directory (for the -wal and -shm files) or those files
        // are not the service's to write.
        Some(ErrorCode::CannotOpen) | Some(ErrorCode::PermissionDenied) if path.is_file() => {
            not_writable(path, &e.to_string())
        }
        Some(ErrorCode::CannotOpen) | Some(ErrorCode::PermissionDenied) => DbError::Unusable(format!(
            "cannot open database {} ({e}): it must be a file (not a directory) in an existing directory the service's user may write; check database.path and the permissions",
            path.display()
        )),
        _ => DbError::Sqlite(e),
    }
}

/// A fresh, migrated database in a temporary directory (kept alive by the returned guard),
/// for unit tests.
#[cfg(test)]
pub(crate) fn scratch_db() -> (tempfile::TempDir, Connection) {
    #![allow(clippy::unwrap_used)]
    let dir = tempfile::tempdir().unwrap();
    let cfg = DatabaseConfig {
        path: dir.path().join("scratch.db"),
        ..DatabaseConfig::default()
    };
    let conn = open_and_migrate(&cfg).unwrap();
    (dir, conn)
}

/// The current schema version of an open database.
pub fn current_version(conn: &Connection) -> Result<i64, DbError> {
    Ok(conn.pragma_query_value(None, "user_version", |r| r.get(0))?)
}

const READ_FLAGS: OpenFlags = OpenFlags::SQLITE_OPEN_READ_ONLY
    .union(OpenFlags::SQLITE_OPEN_NO_MUTEX)
    .union(OpenFlags::SQLITE_OPEN_URI);

/// One read-only connection, set up like every other (for a thread that keeps its own).
pub fn open_reader(cfg: &DatabaseConfig) -> Result<Connection, DbError> {
    let conn = Connection::open_with_flags(&cfg.path, READ_FLAGS)?;
    init_connection(&conn, cfg)?;
    Ok(conn)
}

/// A lane worker's read connection that turns memory-mapped I/O off while the database
/// changes under it on most reads, and back on once it is mostly quiet.
///
/// After another connection commits, SQLite's next read on this one drops its page cache
/// and unmaps the whole file (`pagerBeginReadTransaction`): an munmap, TLB shootdowns sent
/// to the other cores, then page faults to map again what the read touches. In the lane
/// bench's update phase (a commit between almost any two reads) that was 12% of the HTTP
/// workers' CPU. Plain reads cost less there, while a read-mostly store (card scans,
/// metadata) keeps the mapping, which is what makes those reads fast.
pub struct Reader {
    conn: Connection,
    /// The configured `mmap_size`, bytes (0: never mapped).
    mmap_bytes: u64,
    mapped: bool,
    last_version: Option<i64>,
    /// Share of recent reads that found a commit by another connection since the previous
    /// read, in 1/256ths: a moving average over about 16 reads.
    churn: u32,
}

/// Above this churn (half the reads see a change) mapping is turned off...
const CHURN_UNMAP: u32 = 128;
/// ...and below this (one read in eight) back on.
const CHURN_MAP: u32 = 32;

impl Reader {
    pub fn open(cfg: &DatabaseConfig) -> Result<Reader, DbError> {
        let mmap_bytes = u64::from(cfg.mmap_size_mib) * 1024 * 1024;
        Ok(Reader {
            conn: open_reader(cfg)?,
            mmap_bytes,
            mapped: mmap_bytes > 0,
            last_version: None,
            churn: 0,
        })
    }

    /// Runs `f` in one read transaction (see [`in_read_transaction`]).
    pub fn read<R, E: From<rusqlite::Error>>(
        &mut self,
        f: impl FnOnce(&Connection) -> Result<R, E>,
    ) -> Result<R, E> {
        let mut version = None;
        let out = in_read_transaction(&self.conn, |conn| {
            // The transaction's first statement: it takes the snapshot (and SQLite drops
            // the cache and the mapping then, if another connection has committed).
            version = Some(
                conn.prepare_cached("PRAGMA data_version")?
                    .query_row([], |r| r.get::<_, i64>(0))?,
            );
            f(conn)
        });
        if let Some(version) = version {
            // The read itself succeeded; a failed switch leaves the mapping as it is, for
            // good (no warning on every read).
            if let Err(e) = self.follow_changes(version) {
                log::warn!(
                    "cannot switch the read connection's memory map, it stays as it is: {e}"
                );
                self.mmap_bytes = 0;
            }
        }
        out
    }

    /// Whether reads currently go through the memory map.
    pub fn mapped(&self) -> bool {
        self.mapped
    }

    /// Notes whether `version` (`PRAGMA data_version`: it moves whenever another connection
    /// has committed since this one last looked) changed, and maps or unmaps for the next
    /// reads, between two transactions.
    fn follow_changes(&mut self, version: i64) -> rusqlite::Result<()> {
        let changed = self.last_version.is_some_and(|v| v != version);
        self.last_version = Some(version);
        self.churn = self.churn - self.churn / 16 + if changed { 16 } else { 0 };
        let want = if self.mapped {
            self.churn <= CHURN_UNMAP
        } else {
            self.churn < CHURN_MAP
        };
        if self.mmap_bytes > 0 && want != self.mapped {
            let size = if want { self.mmap_bytes } else { 0 };
            self.conn
                .execute_batch(&format!("PRAGMA mmap_size = {size}"))?;
            self.mapped = want;
            log::debug!(mapped = want, churn = self.churn; "read connection memory map switched");
        }
        Ok(())
    }
}

/// Runs `f` in one read transaction of `conn` (a consistent snapshot for all its
/// statements), ended whatever `f` returns.
pub fn in_read_transaction<R, E: From<rusqlite::Error>>(
    conn: &Connection,
    f: impl FnOnce(&Connection) -> Result<R, E>,
) -> Result<R, E> {
    conn.prepare_cached("BEGIN DEFERRED")?.execute([])?;
    let result = f(conn);
    let ended = conn
        .prepare_cached("COMMIT")
        .and_then(|mut s| s.execute([]).map(|_| ()));
    let out = result?;
    ended?;
    Ok(out)
}

/// A pool of read-only connections.
pub fn read_pool(cfg: &DatabaseConfig) -> Result<ReadPool, DbError> {
    let init_cfg = cfg.clone();
    let manager = SqliteConnectionManager::file(&cfg.path)
        .with_flags(READ_FLAGS)
        .with_init(move |c| init_connection(c, &init_cfg));
    Ok(r2d2::Pool::builder()
        .max_size(cfg.read_pool_size)
        .connection_timeout(Duration::from_secs(5))
        .build(manager)?)
}

type Finish = Box<dyn FnOnce(Option<DbError>) + Send>;
type Job = Box<dyn FnOnce(&Connection) -> (bool, Finish) + Send>;
/// A job with the moment it was handed to the writer, so the time it waited in the queue
/// (behind a long batch or a slow sync) is seen.
struct Queued {
    job: Job,
    at: Instant,
}

/// Why a write did not happen: the job's own error (its changes were rolled back), or the
/// database failed to commit.
#[derive(Debug, thiserror::Error)]
pub enum WriteError<E> {
    #[error(transparent)]
    Job(E),
    #[error(transparent)]
    Db(#[from] DbError),
}

/// Handle to the writer thread. Cloning is cheap; all clones feed the same thread.
#[derive(Clone)]
pub struct Writer {
    jobs: mpsc::Sender<Queued>,
    /// Set by the checkpointer when the WAL has grown: the writer then restarts it between
    /// two batches (see [`start_checkpointer`]).
    restart_wal: Arc<AtomicBool>,
}

/// Most jobs committed together in one transaction (one fsync).
const MAX_GROUP: usize = 64;

impl Writer {
    /// Starts the writer thread owning `conn`. With `group_commit`, jobs that queue up while
    /// a commit is in progress are committed together in one transaction, each inside its own
    /// savepoint, so one job's failure never undoes another's.
    /// `linger`: how long to wait for more jobs before committing a batch (0: at once).
    /// `warn_queue_wait`: log when jobs waited long in the queue (see [`QueueWarning`]).
    pub fn start(conn: Connection, linger: Duration, warn_queue_wait: bool) -> Writer {
        let (jobs, rx) = mpsc::channel::<Queued>();
        let restart_wal = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&restart_wal);
        let spawned = std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || writer_loop(conn, rx, flag, linger, warn_queue_wait));
        if let Err(e) = spawned {
            log::error!("cannot start the database writer thread: {e}");
        }
        Writer { jobs, restart_wal }
    }

    fn submit<R, E, F>(
        &self,
        f: F,
    ) -> Result<tokio::sync::oneshot::Receiver<Result<R, WriteError<E>>>, DbError>
    where
        F: FnOnce(&Connection) -> Result<R, E> + Send + 'static,
        R: Send + 'static,
        E: Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |conn| {
            let result = f(conn);
            let ok = result.is_ok();
            let finish: Finish = Box::new(move |commit_error| {
                let out = match commit_error {
                    Some(e) => Err(WriteError::Db(e)),
                    None => result.map_err(WriteError::Job),
                };
                let _ = tx.send(out);
            });
            (ok, finish)
        });
        self.jobs
            .send(Queued {
                job,
                at: Instant::now(),
            })
            .map_err(|_| DbError::WriterGone)?;
        Ok(rx)
    }

    /// Runs `f` in a write transaction and waits until it is committed (durable).
    pub async fn write<R, E, F>(&self, f: F) -> Result<R, WriteError<E>>
    where
        F: FnOnce(&Connection) -> Result<R, E> + Send + 'static,
        R: Send + 'static,
        E: Send + 'static,
    {
        let rx = self.submit(f)?;
        rx.await.map_err(|_| WriteError::Db(DbError::WriterGone))?
    }

    /// The same as [`Writer::write`] for threads outside an async runtime.
    pub fn write_blocking<R, E, F>(&self, f: F) -> Result<R, WriteError<E>>
    where
        F: FnOnce(&Connection) -> Result<R, E> + Send + 'static,
        R: Send + 'static,
        E: Send + 'static,
    {
        let rx = self.submit(f)?;
        rx.blocking_recv()
            .map_err(|_| WriteError::Db(DbError::WriterGone))?
    }
}

fn writer_loop(
    conn: Connection,
    rx: mpsc::Receiver<Queued>,
    restart_wal: Arc<AtomicBool>,
    linger: Duration,
    warn_queue_wait: bool,
) {
    let mut queue_warning = QueueWarning::default();
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        let deadline = Instant::now() + linger;
        while batch.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(mpsc::TryRecvError::Disconnected) => break,
                Err(mpsc::TryRecvError::Empty) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    match rx.recv_timeout(left) {
                        Ok(job) if !left.is_zero() => batch.push(job),
                        Ok(job) => {
                            batch.push(job);
                            break;
                        }
                        Err(_) => break,
                    }
                }
            }
        }
        let oldest = batch.iter().map(|q| q.at).min();
        if let Some(waited) = oldest.map(|at| at.elapsed()) {
            SLOWEST_QUEUE_WAIT_US.fetch_max(micros(waited), Ordering::Relaxed);
            if warn_queue_wait {
                let _warned = queue_warning.saw(waited);
            }
        }
        run_batch(&conn, batch.into_iter().map(|q| q.job).collect());
        if restart_wal.swap(false, Ordering::Relaxed) {
            restart(&conn);
        }
    }
}

/// Warns when writes waited in the writer's queue longer than [`SLOW_BATCH`] (behind a
/// long job, such as an import chunk, or a slow sync): lanes felt that wait. At most one
/// warning per [`QUEUE_WARNING_EVERY`], with the worst wait and how many batches waited.
#[derive(Default)]
struct QueueWarning {
    last: Option<Instant>,
    batches: u64,
    worst: Duration,
}

const QUEUE_WARNING_EVERY: Duration = Duration::from_secs(10);

impl QueueWarning {
    /// Notes a batch whose oldest job waited `waited`; true when it was warned about now.
    fn saw(&mut self, waited: Duration) -> bool {
        if waited <= SLOW_BATCH {
            return false;
        }
        self.batches += 1;
        self.worst = self.worst.max(waited);
        if self.last.is_some_and(|t| t.elapsed() < QUEUE_WARNING_EVERY) {
            return false;
        }
        log::warn!(
            batches = self.batches, worst_ms = self.worst.as_millis() as u64;
            "database writes waited up to {} ms in the writer's queue ({} batches since the last such warning): a long write or a slow disk sync held them up",
            self.worst.as_millis(), self.batches
        );
        self.last = Some(Instant::now());
        self.batches = 0;
        self.worst = Duration::ZERO;
        true
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Checkpoints what is left of the WAL from the writer itself, between two batches. No
/// write can land meanwhile, so the checkpoint reaches the WAL's end and the next write
/// starts the WAL over (SQLite's rule). It is PASSIVE, so it never waits for readers; the
/// background checkpoints have already copied almost everything, so it is short. (A
/// RESTART checkpoint here waited for readers and stalled lane writes ~50 ms.)
fn restart(conn: &Connection) {
    let started = Instant::now();
    if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
        log::warn!("WAL checkpoint on the writer failed: {e}");
    }
    let took = started.elapsed();
    if took > SLOW_BATCH {
        log::warn!("WAL checkpoint on the writer took {} ms", took.as_millis());
    }
}

/// A write batch slower than this is logged with where its time went.
const SLOW_BATCH: Duration = Duration::from_millis(50);

fn run_batch(conn: &Connection, batch: Vec<Job>) {
    let started = Instant::now();
    let jobs = batch.len();
    if let Err(e) = control(conn, "BEGIN IMMEDIATE") {
        log::error!("database write could not start: {e}");
        let msg = e.to_string();
        for job in batch {
            // The job never ran: report the failure through its completion.
            let (_, finish) = job_not_run(job);
            finish(Some(DbError::Corrupt(format!("write not started: {msg}"))));
        }
        return;
    }
    let began = started.elapsed();
    let mut finishes = Vec::with_capacity(batch.len());
    for job in batch {
        let savepoint = control(conn, "SAVEPOINT job");
        let (ok, finish) = job(conn);
        if savepoint.is_ok() {
            let ended = if ok {
                control(conn, "RELEASE job")
            } else {
                control(conn, "ROLLBACK TO job").and_then(|()| control(conn, "RELEASE job"))
            };
            if let Err(e) = ended {
                log::error!("savepoint end failed: {e}");
            }
        }
        finishes.push(finish);
    }
    let ran = started.elapsed();
    let commit = if conn.is_autocommit() {
        Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ABORT),
            Some("transaction was rolled back by SQLite".into()),
        ))
    } else {
        control(conn, "COMMIT")
    };
    let total = started.elapsed();
    SLOWEST_COMMIT_US.fetch_max(micros(total - ran), Ordering::Relaxed);
    // A job that runs long alone in its batch (an import chunk, a bulk pull) is that job's
    // own cost and is not warned about; a wait for the lock, a slow sync, or a long job
    // holding up its batch mates is. (Jobs queued behind a long batch: see QueueWarning.)
    let waited = began > SLOW_BATCH || total - ran > SLOW_BATCH;
    if waited || (jobs > 1 && total > SLOW_BATCH) {
        log::warn!(
            jobs = jobs, begin_ms = began.as_millis() as u64, jobs_ms = (ran - began).as_millis() as u64,
            commit_ms = (total - ran).as_millis() as u64;
            "slow database write ({} ms): waited for the lock, ran long, or the disk was slow to sync",
            total.as_millis()
        );
    }
    match commit {
        Ok(()) => finishes.into_iter().for_each(|f| f(None)),
        Err(e) => {
            log::error!("database commit failed, the batch is rolled back: {e}");
            let _ = conn.execute_batch("ROLLBACK");
            let msg = e.to_string();
            for f in finishes {
                f(Some(DbError::Corrupt(format!("commit failed: {msg}"))));
            }
        }
    }
}

/// Runs a transaction-control statement of the writer from the statement cache: these run
/// several times per lane write, and parsing them each time was ~5% of the writer's CPU.
fn control(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

/// Calls a job on a connection that refuses everything, so its completion still fires.
fn job_not_run(job: Job) -> (bool, Finish) {
    match Connection::open_in_memory() {
        Ok(c) => job(&c),
        Err(_) => (false, Box::new(|_| {})),
    }
}

/// WAL frames (4 KiB pages) past which the WAL is restarted: about 64 MiB.
const WAL_RESTART_FRAMES: i64 = 16 * 1024;

/// Checkpoints the WAL from a background thread so no lane commit pays for it. Every tick
/// runs a PASSIVE checkpoint, which never blocks the writer. Under a steady stream of
/// writes a PASSIVE checkpoint never sees the WAL's end, so the WAL would only grow (and
/// every read must search it); past [`WAL_RESTART_FRAMES`] the checkpointer asks the
/// writer to restart it between two batches. `journal_size_limit` then trims the file.
pub fn start_checkpointer(cfg: &DatabaseConfig, writer: &Writer) -> Result<(), DbError> {
    let conn = Connection::open(&cfg.path)?;
    init_connection(&conn, cfg)?;
    let interval = Duration::from_millis(cfg.checkpoint_interval_ms);
    let restart_wal = Arc::clone(&writer.restart_wal);
    std::thread::Builder::new()
        .name("wal-checkpoint".into())
        .spawn(move || loop {
            std::thread::sleep(interval);
            let frames = conn
                .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get::<_, i64>(1))
                .inspect_err(|e| log::warn!("WAL checkpoint failed: {e}"))
                .unwrap_or(0);
            if frames > WAL_RESTART_FRAMES {
                restart_wal.store(true, Ordering::Relaxed);
            }
        })
        .map_err(|e| DbError::Corrupt(format!("cannot start checkpointer: {e}")))?;
    Ok(())
}

/// WAL frames (4 KiB database pages) appended by this process's commits since it started:
/// what its writes cost the disk, before checkpoints copy the same pages again. Counted
/// only where checkpoints run in the background (the edge server), from the WAL's length
/// after each commit, so frames another process appended in between are counted too.
static WAL_FRAMES: AtomicU64 = AtomicU64::new(0);
/// The WAL's length in frames after this process's last commit.
static WAL_LENGTH: AtomicI64 = AtomicI64::new(0);

fn count_wal_frames(_: &rusqlite::hooks::Wal, frames: std::ffi::c_int) -> rusqlite::Result<()> {
    let frames = i64::from(frames);
    let before = WAL_LENGTH.swap(frames, Ordering::Relaxed);
    // A shorter WAL was restarted from its beginning since: all of it is new.
    let added = if frames >= before {
        frames - before
    } else {
        frames
    };
    WAL_FRAMES.fetch_add(u64::try_from(added).unwrap_or(0), Ordering::Relaxed);
    Ok(())
}

/// The longest COMMIT (WAL append and sync) of a write batch since [`take_slowest_commit`]
/// was last called, µs.
static SLOWEST_COMMIT_US: AtomicU64 = AtomicU64::new(0);

/// The longest COMMIT of a write batch since the last call, and starts over: tells a stall
/// of the disk from one elsewhere (the lane bench prints it per phase).
pub fn take_slowest_commit() -> Duration {
    Duration::from_micros(SLOWEST_COMMIT_US.swap(0, Ordering::Relaxed))
}

/// The longest a write batch's oldest job waited in the writer's queue (from the moment it
/// was handed over until its batch began) since [`take_slowest_queue_wait`] was last called, µs.
static SLOWEST_QUEUE_WAIT_US: AtomicU64 = AtomicU64::new(0);

/// The longest wait of a write in the writer's queue since the last call, and starts over:
/// with [`take_slowest_commit`] it tells a backlog from a slow sync (the lane bench prints both).
pub fn take_slowest_queue_wait() -> Duration {
    Duration::from_micros(SLOWEST_QUEUE_WAIT_US.swap(0, Ordering::Relaxed))
}

/// See [`WAL_FRAMES`].
pub fn wal_frames_written() -> u64 {
    WAL_FRAMES.load(Ordering::Relaxed)
}

/// Everything a process needs to use the database.
#[derive(Clone)]
pub struct Db {
    pub reads: ReadPool,
    pub writer: Writer,
}

impl Db {
    /// Opens, migrates, and starts the writer. With `serves_lanes` (the edge server, where
    /// lanes wait on every write) the writer's automatic checkpoints are turned off and a
    /// checkpointer thread does them instead, and writes that wait long in the writer's
    /// queue are warned about.
    pub fn open(cfg: &DatabaseConfig, serves_lanes: bool) -> Result<Db, DbError> {
        let conn = open_and_migrate(cfg)?;
        if serves_lanes {
            conn.pragma_update(None, "wal_autocheckpoint", 0)?;
            // The WAL hook is also how SQLite checkpoints automatically: only set it here,
            // where automatic checkpoints are off anyway.
            conn.wal_hook(Some(count_wal_frames));
        }
        let linger = Duration::from_micros(cfg.group_commit_linger_us);
        let writer = Writer::start(conn, linger, serves_lanes);
        if serves_lanes {
            start_checkpointer(cfg, &writer)?;
        }
        let reads = read_pool(cfg)?;
        Ok(Db { reads, writer })
    }

    pub fn read(&self) -> Result<ReadConn, DbError> {
        Ok(self.reads.get()?)
    }
}

/// Seconds since the Unix epoch, the unit of every stored timestamp.
pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    /// A database moved out of /var/lib/edge-coupon under the packaged units' sandbox
    /// fails with EROFS; the advice was "chown it", which cannot help.
    #[test]
    fn a_read_only_file_system_is_said_with_the_sandbox_s_way_out() {
        let erofs = std::io::Error::from_raw_os_error(30);
        let said = what_to_do_when_not_writable(&erofs);
        assert!(
            said.contains("ReadWritePaths=") && !said.contains("chown"),
            "{said}"
        );
        let eacces = std::io::Error::from_raw_os_error(13);
        assert!(what_to_do_when_not_writable(&eacces).contains("chown"));
    }

    fn cfg(dir: &tempfile::TempDir) -> DatabaseConfig {
        DatabaseConfig {
            path: dir.path().join("t.db"),
            ..DatabaseConfig::default()
        }
    }

    #[test]
    fn migrations_are_valid() {
        migrations().validate().unwrap();
        assert_eq!(schema_version(), 10);
    }

    /// Every table with a `state` check, and a row of it with `?1` as its state.
    const STATE_ROWS: [(&str, &str); 4] = [
        ("customer_coupons", "INSERT INTO customer_coupons (customer_id, offer_id, state, state_at) VALUES ('c', 'o', ?1, 1)"),
        ("transactions", "INSERT INTO transactions (site, txn_id, customer_id, state, updated_at) VALUES ('s', 't', 'c', ?1, 1)"),
        ("vouchers", "INSERT INTO vouchers (code, provider, provider_ref, state, updated_at) VALUES ('v', 'p', 'r', ?1, 1)"),
        ("outbox", "INSERT INTO outbox (provider, operation, idempotency_key, ordering_key, payload, state, next_attempt_at, created_at, updated_at) VALUES ('p', 'o', 'k', 'k', '{}', ?1, 1, 1, 1)"),
    ];

    #[test]
    fn writing_a_state_builds_no_temporary_btree_and_bad_states_are_still_refused() {
        let dir = tempfile::tempdir().unwrap();
        let conn = open_and_migrate(&cfg(&dir)).unwrap();
        conn.execute_batch("PRAGMA foreign_keys = OFF").unwrap();
        for ((table, insert), good) in STATE_ROWS
            .iter()
            .zip(["clipped", "open", "active", "pending"])
        {
            // `state IN ('a', 'b', 'c')` compiled to an ephemeral b-tree built on every write.
            let ops: Vec<String> = conn
                .prepare(&format!("EXPLAIN {insert}"))
                .unwrap()
                .query_map([good], |r| r.get::<_, String>(1))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            assert!(
                !ops.iter().any(|op| op == "OpenEphemeral"),
                "{table}: {ops:?}"
            );
            let refused = conn.execute(insert, ["bogus"]).unwrap_err();
            assert!(refused.to_string().contains("CHECK"), "{table}: {refused}");
            assert_eq!(conn.execute(insert, [good]).unwrap(), 1, "{table}");
        }
    }

    const OLD_STATES: [&str; 4] = ["redeemed", "committed", "void", "dead"];

    #[test]
    fn a_version_3_database_keeps_its_rows_and_checks_through_migration_4() {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(&dir);
        {
            let mut old = Connection::open(&c.path).unwrap();
            old.pragma_update(None, "journal_mode", "WAL").unwrap();
            migrations().to_version(&mut old, 3).unwrap();
            old.execute_batch("PRAGMA foreign_keys = OFF").unwrap();
            for ((_, insert), state) in STATE_ROWS.iter().zip(OLD_STATES) {
                old.execute(insert, [state]).unwrap();
            }
        }
        let conn = open_and_migrate(&c).unwrap();
        assert_eq!(current_version(&conn).unwrap(), schema_version());
        let check: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(check, "ok");
        let states: Vec<String> = ["customer_coupons", "transactions", "vouchers", "outbox"]
            .iter()
            .map(|t| {
                conn.query_row(&format!("SELECT state FROM {t}"), [], |r| r.get(0))
                    .unwrap()
            })
            .collect();
        assert_eq!(states, OLD_STATES);
        conn.execute_batch("PRAGMA foreign_keys = OFF").unwrap();
        let refused = conn
            .execute("UPDATE transactions SET state = 'bogus'", [])
            .unwrap_err();
        assert!(refused.to_string().contains("CHECK"), "{refused}");
    }

    #[test]
    fn migration_9_gives_pulled_validation_times_as_rfc3339() {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(&dir);
        {
            let mut old = Connection::open(&c.path).unwrap();
            old.pragma_update(None, "journal_mode", "WAL").unwrap();
            migrations().to_version(&mut old, 8).unwrap();
            old.execute_batch(
                "INSERT INTO vouchers (code, provider, provider_ref, description, value, state, validated_at, updated_at) VALUES
                   ('A', 'coupontools', 'A', '', 100, 'validated', '2026-11-20 12:00:00', 1),
                   ('B', 'coupontools', 'B', '', 100, 'validated', '2026-11-30T15:10:51Z', 1),
                   ('C', 'coupontools', 'C', '', 100, 'active', NULL, 1)",
            )
            .unwrap();
        }
        let conn = open_and_migrate(&c).unwrap();
        let times: Vec<Option<String>> = conn
            .prepare("SELECT validated_at FROM vouchers ORDER BY code")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            times,
            [
                Some("2026-11-20T12:00:00Z".to_owned()),
                Some("2026-11-30T15:10:51Z".to_owned()),
                None
            ]
        );
    }

    #[test]
    fn migration_5_fills_in_the_digits_of_phones_already_stored() {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(&dir);
        {
            let mut old = Connection::open(&c.path).unwrap();
            old.pragma_update(None, "journal_mode", "WAL").unwrap();
            migrations().to_version(&mut old, 4).unwrap();
            old.execute_batch(
                "INSERT INTO customers (id, phone, updated_at) VALUES
                   ('A', '(828)265-2907', 1), ('B', '+1 555 123 4567', 1), ('C', NULL, 1)",
            )
            .unwrap();
        }
        let conn = open_and_migrate(&c).unwrap();
        assert_eq!(current_version(&conn).unwrap(), schema_version());
        let digits: Vec<(String, Option<String>)> = conn
            .prepare("SELECT id, phone_digits FROM customers ORDER BY id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            digits,
            [
                ("A".to_owned(), Some("8282652907".to_owned())),
                ("B".to_owned(), Some("5551234567".to_owned())),
                ("C".to_owned(), None)
            ]
        );
        let found = crate::repo::customer_by_phone(&conn, "8282652907").unwrap();
        assert_eq!(found.map(|c| c.id).as_deref(), Some("A"));
    }

    #[test]
    fn a_connection_reopened_after_migrating_keeps_the_writer_settings() {
        // A fresh database is migrated, so open_and_migrate hands back a reopened connection.
        let (_dir, conn) = scratch_db();
        let mode: String = conn
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        let limit: i64 = conn
            .pragma_query_value(None, "journal_size_limit", |r| r.get(0))
            .unwrap();
        assert_eq!((mode.as_str(), limit), ("wal", 64 * 1024 * 1024));
    }

    /// Durability: the writer of a store opened with the shipped default syncs every commit
    /// to disk (FULL = 2: survives power loss, not only `kill -9`), and `normal` is what
    /// `database.synchronous = "normal"` asks. `kill -9` alone cannot show the difference.
    #[test]
    fn the_writer_syncs_every_commit_as_configured() {
        for (setting, want) in [(Synchronous::Full, 2), (Synchronous::Normal, 1)] {
            let dir = tempfile::tempdir().unwrap();
            let db = Db::open(
                &DatabaseConfig {
                    synchronous: setting,
                    ..cfg(&dir)
                },
                false,
            )
            .unwrap();
            let found: i64 = db
                .writer
                .write_blocking(|c| c.pragma_query_value(None, "synchronous", |r| r.get(0)))
                .unwrap();
            assert_eq!(found, want, "{setting:?}");
        }
        assert_eq!(DatabaseConfig::default().synchronous, Synchronous::Full);
    }

    #[test]
    fn concurrent_first_starts_both_find_the_schema_current() {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(&dir);
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let c = c.clone();
                std::thread::spawn(move || open_and_migrate(&c).map(|conn| current_version(&conn)))
            })
            .collect();
        for h in handles {
            assert_eq!(h.join().unwrap().unwrap().unwrap(), schema_version());
        }
    }

    #[test]
    fn refuses_newer_schema() {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(&dir);
        drop(open_and_migrate(&c).unwrap());
        let conn = Connection::open(&c.path).unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
        drop(conn);
        assert!(matches!(
            open_and_migrate(&c),
            Err(DbError::TooNew { found: 99, .. })
        ));
    }

    #[test]
    fn a_read_transaction_sees_one_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(&dir);
        let db = Db::open(&c, true).unwrap();
        let insert = |provider: &'static str| {
            let done: Result<usize, WriteError<rusqlite::Error>> =
                db.writer.write_blocking(move |c| {
                    c.execute("INSERT INTO sync_state (provider) VALUES (?1)", [provider])
                });
            done.unwrap();
        };
        insert("a");
        let reader = open_reader(&c).unwrap();
        let count = |c: &Connection| -> rusqlite::Result<i64> {
            c.query_row("SELECT count(*) FROM sync_state", [], |r| r.get(0))
        };
        let (first, second) = in_read_transaction(&reader, |conn| -> rusqlite::Result<_> {
            let first = count(conn)?;
            insert("b"); // committed by the writer meanwhile
            Ok((first, count(conn)?))
        })
        .unwrap();
        assert_eq!(
            (first, second),
            (1, 1),
            "both statements read the same snapshot"
        );
        assert_eq!(
            count(&reader).unwrap(),
            2,
            "the next request sees the new row"
        );
        // An error inside still ends the transaction.
        let failed: rusqlite::Result<i64> = in_read_transaction(&reader, |conn| {
            conn.query_row("SELECT nope", [], |r| r.get(0))
        });
        assert!(failed.is_err());
        assert!(reader.is_autocommit());
    }

    #[test]
    fn the_writer_counts_the_wal_pages_it_appends() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&cfg(&dir), true).unwrap();
        let before = wal_frames_written();
        let done: Result<usize, WriteError<rusqlite::Error>> = db
            .writer
            .write_blocking(|c| c.execute("INSERT INTO sync_state (provider) VALUES ('x')", []));
        done.unwrap();
        assert!(wal_frames_written() > before);
        // The commit that appended them took some time, and the slowest one is kept.
        assert!(take_slowest_commit() > Duration::ZERO);
    }

    #[test]
    fn the_writer_measures_how_long_writes_wait_in_its_queue() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&cfg(&dir), true).unwrap();
        take_slowest_queue_wait();
        // A long job (an import chunk, say) is running when a short one is handed over:
        // the long one starts, the short one is queued, and only then does the long one
        // take its 150 ms (channels, not sleeps, order them).
        let (started_tx, started) = std::sync::mpsc::channel::<()>();
        let (go, go_rx) = std::sync::mpsc::channel::<()>();
        let long = db.writer.submit(move |_| {
            let _ = started_tx.send(());
            let _ = go_rx.recv();
            std::thread::sleep(Duration::from_millis(150));
            Ok::<_, rusqlite::Error>(())
        });
        started.recv().unwrap();
        let short = db.writer.submit(|_| Ok::<_, rusqlite::Error>(()));
        go.send(()).unwrap();
        short.unwrap().blocking_recv().unwrap().unwrap();
        long.unwrap().blocking_recv().unwrap().unwrap();
        // ...so the short one waited in the queue for at least the long one's 150 ms.
        let waited = take_slowest_queue_wait();
        assert!(waited >= Duration::from_millis(140), "waited {waited:?}");
    }

    #[test]
    fn a_long_queue_wait_is_warned_about_at_most_once_in_ten_seconds() {
        let mut w = QueueWarning::default();
        assert!(!w.saw(Duration::from_millis(5)), "a short wait is normal");
        assert!(w.saw(Duration::from_millis(80)));
        assert!(!w.saw(Duration::from_millis(120)), "not again so soon");
        assert!(!w.saw(Duration::from_millis(60)));
        // The next warning will tell of both batches and the worst of them.
        assert_eq!((w.batches, w.worst), (2, Duration::from_millis(120)));
    }

    #[test]
    fn a_reader_unmaps_while_the_database_keeps_changing_and_maps_again_when_quiet() {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(&dir);
        let db = Db::open(&c, true).unwrap();
        let mut reader = Reader::open(&c).unwrap();
        let mmap_size = |r: &mut Reader| -> i64 {
            r.read(|conn| conn.query_row("PRAGMA mmap_size", [], |row| row.get(0)))
                .unwrap()
        };
        let count = |r: &mut Reader| -> i64 {
            r.read(|conn| conn.query_row("SELECT count(*) FROM sync_state", [], |row| row.get(0)))
                .unwrap()
        };
        assert!(reader.mapped());
        assert!(mmap_size(&mut reader) > 0);
        // A commit between any two reads (the bench's update phase)...
        for n in 1..=12 {
            let wrote: Result<usize, WriteError<rusqlite::Error>> =
                db.writer.write_blocking(move |conn| {
                    conn.execute(
                        "INSERT INTO sync_state (provider) VALUES (?1)",
                        [format!("p{n}")],
                    )
                });
            wrote.unwrap();
            assert_eq!(count(&mut reader), n, "reads see every commit");
        }
        assert!(!reader.mapped());
        assert_eq!(mmap_size(&mut reader), 0);
        // ...then reads alone (card scans at a quiet time): mapped again.
        for _ in 0..40 {
            assert_eq!(count(&mut reader), 12);
        }
        assert!(reader.mapped());
        assert_eq!(
            mmap_size(&mut reader),
            i64::from(c.mmap_size_mib) * 1024 * 1024
        );
    }

    #[test]
    fn failed_job_is_rolled_back_without_touching_its_batch_mates() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&cfg(&dir), false).unwrap();
        let w = db.writer.clone();
        let ok: Result<(), WriteError<rusqlite::Error>> = w.write_blocking(|c| {
            c.execute("INSERT INTO sync_state (provider) VALUES ('a')", [])
                .map(|_| ())
        });
        ok.unwrap();
        let bad: Result<(), WriteError<String>> = w.write_blocking(|c| {
            c.execute("INSERT INTO sync_state (provider) VALUES ('b')", [])
                .map_err(|e| e.to_string())?;
            Err("refused".to_owned())
        });
        assert!(matches!(bad, Err(WriteError::Job(_))));
        let n: i64 = db
            .read()
            .unwrap()
            .query_row("SELECT count(*) FROM sync_state", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1);
    }
}
