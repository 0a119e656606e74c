//! `edge-ctl`: the operator's CLI over the store database. `status` per provider, the outbox
//! (`list`, `retry ID`, `discard ID`), `sync now PROVIDER`; `--json` on each for scripts.

use clap::{Parser, Subcommand};
use serde_json::json;
use shared::db::now_secs;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(version, about = "Store edge coupon server: operator commands")]
struct Cli {
    #[arg(
        long,
        short,
        global = true,
        default_value = "/etc/edge-coupon/edge-coupon.toml",
        env = "EDGE_CONFIG"
    )]
    config: PathBuf,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Per provider: last successful sync, last error, outbox depth by state, oldest pending;
    /// then the redemption conflicts of the last 30 days, newest first.
    Status,
    /// The outbox.
    Outbox {
        #[command(subcommand)]
        command: OutboxCommand,
    },
    /// Provider pulls.
    Sync {
        #[command(subcommand)]
        command: SyncCommand,
    },
    /// Build a regional configuration package (`edge-coupon-config-REGION_VERSION_all.deb`)
    /// that installs FILE as /etc/edge-coupon/conf.d/50-region-REGION.toml. FILE is checked
    /// with the daemons' own validator first; an invalid file builds nothing.
    ConfigPackage {
        #[arg(long)]
        region: String,
        #[arg(long)]
        version: String,
        file: PathBuf,
        /// Directory the .deb is written to.
        #[arg(long, default_value = ".")]
        output: PathBuf,
    },
}

#[derive(Subcommand)]
enum OutboxCommand {
    /// Items, newest first.
    List {
        /// pending, inflight, delivered, dead or discarded.
        #[arg(long, value_parser = ["pending", "inflight", "delivered", "dead", "discarded"])]
        state: Option<String>,
        /// convercus, coupontools or koupon.
        #[arg(long, value_parser = sync_daemon::worker::PROVIDERS)]
        provider: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// Send a dead-lettered item again.
    Retry { id: i64 },
    /// Give up on a dead-lettered item (kept as discarded; later items of its key go on).
    Discard { id: i64 },
}

#[derive(Subcommand)]
enum SyncCommand {
    /// Ask the running sync daemon to pull PROVIDER now (within about a second).
    Now { provider: String },
}

/// Writes a line to stdout; a failed write is returned as the command's error (`?`), so a
/// reader that went away (`edge-ctl outbox list | head`) ends the command quietly (see
/// [`main`]) instead of panicking as `println!` does.
macro_rules! out {
    ($($arg:tt)*) => {
        writeln!(std::io::stdout().lock(), $($arg)*)?
    };
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(code) => code,
        // Whoever read our output stopped reading: nothing more to say, and nothing wrong.
        Err(e) if closed_stdout(&e) => ExitCode::SUCCESS,
        Err(e) => {
            // The error is reported; should that fail as well, there is no one to tell.
            if cli.json {
                let _ = writeln!(
                    std::io::stdout().lock(),
                    "{}",
                    json!({"error": e.to_string()})
                );
            } else {
                let _ = writeln!(std::io::stderr().lock(), "edge-ctl: {e:#}");
            }
            ExitCode::FAILURE
        }
    }
}

/// Whether the command failed writing to a stdout nobody reads any more.
fn closed_stdout(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn ago(now: i64, t: Option<i64>) -> String {
    t.map_or_else(|| "never".to_owned(), |t| shared::sync::ago(now - t))
}

fn run(cli: &Cli) -> anyhow::Result<ExitCode> {
    if let Command::ConfigPackage {
        region,
        version,
        file,
        output,
    } = &cli.command
    {
        let built = sync_daemon::package::build(region, version, file, output)?;
        if !built.secrets.is_empty() {
            let _ = writeln!(
                std::io::stderr().lock(),
                "edge-ctl: warning: {} carries secrets ({}); the package is made readable by you only (0600) and installs them 0640 root:edge-coupon. Whoever gets the .deb can read them: prefer giving each store its secrets locally (EDGE_* variables in a systemd drop-in, or a file in its conf.d/)",
                file.display(),
                built.secrets.join(", ")
            );
        }
        if cli.json {
            out!(
                "{}",
                json!({"package": built.deb, "secrets": built.secrets})
            );
        } else {
            out!("built {}", built.deb.display());
        }
        return Ok(ExitCode::SUCCESS);
    }
    let config = shared::config::Config::load_for_tools(&cli.config)
        .map_err(|e| anyhow::anyhow!("cannot load the configuration: {e}"))?;
    // Never create the store's database: one made here (as root, in a mistyped place) would
    // show an empty, healthy-looking store and could lock the services out of their own.
    if !config.database.path.exists() {
        anyhow::bail!(
            "no database at {} (database.path in {}): edge-server and sync-daemon create it when they first start; start them, or fix database.path",
            config.database.path.display(),
            cli.config.display()
        );
    }
    let conn = shared::db::open_and_migrate(&config.database).map_err(|e| {
        anyhow::anyhow!(
            "cannot open database {}: {e}",
            config.database.path.display()
        )
    })?;
    let now = now_secs();
    match &cli.command {
        Command::Status => {
            let rows = shared::sync::status(&conn, &sync_daemon::worker::PROVIDERS, now)?;
            let daemon = shared::sync::daemon_status(&conn, now)?;
            let (conflicts, recent) =
                shared::repo::conflicts_since(&conn, now - shared::repo::CONFLICT_WINDOW_SECS, 10)?;
            if cli.json {
                let out: Vec<_> = rows
                    .iter()
                    .map(|r| {
                        let mut v = serde_json::to_value(r).unwrap_or_default();
                        v["enabled"] = json!(config.providers.enabled(&r.provider));
                        v
                    })
                    .collect();
                out!(
                    "{}",
                    json!({"now": now, "syncDaemon": daemon, "providers": out,
                           "conflicts": {"last30Days": conflicts, "recent": recent}})
                );
            } else {
                out!("sync daemon      {}", daemon.describe());
                for r in rows {
                    let q = |s: &str| r.queue.get(s).copied().unwrap_or(0);
                    out!("{}", r.provider);
                    out!("  last success   {}", ago(now, r.last_success_at));
                    if let Some(res) = &r.last_result {
                        out!("  last result    {res}");
                    }
                    // An error a later successful pull superseded is history, not news.
                    if let Some(e) = &r.current_error {
                        out!("  last error     {} ({e})", ago(now, r.last_error_at));
                    }
                    out!(
                        "  outbox         {} pending, {} in flight, {} dead, {} delivered, {} discarded",
                        q("pending"),
                        q("inflight"),
                        q("dead"),
                        q("delivered"),
                        q("discarded")
                    );
                    if let Some(age) = r.oldest_pending_age_secs {
                        out!("  oldest pending {age} s");
                    }
                }
                out!("redemption conflicts in the last 30 days: {conflicts}");
                if conflicts > 0 {
                    out!("  (a lane committed a coupon already used, held by another sale or expired, or the provider refused it; newest first)");
                }
                for c in recent {
                    out!(
                        "  {}  {} {}  customer {}  coupon {}  {}",
                        ago(now, Some(c.at)),
                        c.site,
                        c.transaction,
                        c.customer,
                        c.coupon,
                        shared::money::Cents(c.discount_cents)
                    );
                }
            }
        }
        Command::Outbox { command } => match command {
            OutboxCommand::List {
                state,
                provider,
                limit,
            } => {
                let items = shared::outbox::list_recent(
                    &conn,
                    state.as_deref(),
                    provider.as_deref(),
                    *limit,
                )?;
                if cli.json {
                    out!("{}", json!({"items": items}));
                } else {
                    out!(
                        "{:>8}  {:<11} {:<11} {:<9} {:>3}  {:<40} LAST ERROR",
                        "ID",
                        "PROVIDER",
                        "OPERATION",
                        "STATE",
                        "TRY",
                        "ORDERING KEY"
                    );
                    for i in items {
                        out!(
                            "{:>8}  {:<11} {:<11} {:<9} {:>3}  {:<40} {}",
                            i.id,
                            i.provider,
                            i.operation,
                            i.state,
                            i.attempts,
                            i.ordering_key,
                            i.last_error.unwrap_or_default()
                        );
                    }
                }
            }
            OutboxCommand::Retry { id } => {
                let ok = shared::outbox::retry_dead(&conn, *id, now)?;
                return report(&conn, cli.json, ok, *id, "queued for another attempt");
            }
            OutboxCommand::Discard { id } => {
                let ok = shared::outbox::discard_dead(&conn, *id, now)?;
                return report(&conn, cli.json, ok, *id, "discarded");
            }
        },
        Command::ConfigPackage { .. } => {}
        Command::Sync {
            command: SyncCommand::Now { provider },
        } => {
            if !sync_daemon::worker::PROVIDERS.contains(&provider.as_str()) {
                anyhow::bail!(
                    "unknown provider {provider}; use one of {}",
                    sync_daemon::worker::PROVIDERS.join(", ")
                );
            }
            // The daemon would only log that it has nothing to pull: say so here, where
            // the operator is looking.
            if !config.providers.enabled(provider) {
                anyhow::bail!(
                    "{provider} is not enabled (providers.{provider}.enabled in {}): nothing would be pulled; enable it and reload the sync daemon first",
                    cli.config.display()
                );
            }
            shared::sync::request_sync(&conn, provider, now)?;
            let mut daemon = shared::sync::daemon_status(&conn, now)?;
            // A daemon starting right now notes its first heartbeat within moments.
            for _ in 0..30 {
                if daemon.running {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
                daemon = shared::sync::daemon_status(&conn, now_secs())?;
            }
            if cli.json {
                out!(
                    "{}",
                    json!({"requested": provider, "at": now, "syncDaemon": daemon})
                );
            } else if daemon.running {
                out!("sync of {provider} requested; the sync daemon starts it within a few seconds (see `edge-ctl status`)");
            } else {
                let _ = writeln!(
                    std::io::stderr().lock(),
                    "edge-ctl: sync of {provider} requested, but the sync daemon is {}; it pulls when it runs again",
                    daemon.describe()
                );
            }
            if !daemon.running {
                return Ok(ExitCode::from(SYNC_DAEMON_NOT_RUNNING));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `sync now`'s exit status when the request is recorded but no sync daemon runs to take it.
const SYNC_DAEMON_NOT_RUNNING: u8 = 4;

fn report(
    conn: &rusqlite::Connection,
    json_out: bool,
    ok: bool,
    id: i64,
    what: &str,
) -> anyhow::Result<ExitCode> {
    // Why not: no such item, or one in another state (named).
    let state = if ok {
        None
    } else {
        Some(shared::outbox::get(conn, id)?.map(|i| i.state))
    };
    let why = match &state {
        Some(None) => format!("there is no outbox item {id}"),
        Some(Some(s)) => format!("item {id} is {s}, not dead-lettered"),
        None => String::new(),
    };
    if json_out {
        let mut v = json!({"id": id, "ok": ok});
        if !ok {
            v["error"] = json!(why);
        }
        out!("{v}");
    } else if ok {
        out!("item {id} {what}");
    } else {
        let _ = writeln!(
            std::io::stderr().lock(),
            "{why} (see `edge-ctl outbox list --state dead`)"
        );
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    })
}
