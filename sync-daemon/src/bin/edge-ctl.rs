//! `edge-ctl`: the operator's CLI over the store database. `status` per provider, the outbox
//! (`list`, `retry ID`, `discard ID`), `sync now PROVIDER`; `--json` on each for scripts.

use clap::{Parser, Subcommand};
use serde_json::json;
use shared::db::now_secs;
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
        #[arg(long)]
        state: Option<String>,
        #[arg(long)]
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(code) => code,
        Err(e) => {
            if cli.json {
                println!("{}", json!({"error": e.to_string()}));
            } else {
                eprintln!("edge-ctl: {e:#}");
            }
            ExitCode::FAILURE
        }
    }
}

fn ago(now: i64, t: Option<i64>) -> String {
    match t {
        None => "never".to_owned(),
        Some(t) => {
            let s = (now - t).max(0);
            if s < 120 {
                format!("{s} s ago")
            } else if s < 7200 {
                format!("{} min ago", s / 60)
            } else {
                format!("{} h ago", s / 3600)
            }
        }
    }
}

fn run(cli: &Cli) -> anyhow::Result<ExitCode> {
    if let Command::ConfigPackage {
        region,
        version,
        file,
        output,
    } = &cli.command
    {
        let deb = sync_daemon::package::build(region, version, file, output)?;
        if cli.json {
            println!("{}", json!({"package": deb}));
        } else {
            println!("built {}", deb.display());
        }
        return Ok(ExitCode::SUCCESS);
    }
    let config = shared::config::Config::load(&cli.config)
        .map_err(|e| anyhow::anyhow!("cannot load the configuration: {e}"))?;
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
                println!(
                    "{}",
                    json!({"now": now, "providers": out,
                           "conflicts": {"last30Days": conflicts, "recent": recent}})
                );
            } else {
                for r in rows {
                    let q = |s: &str| r.queue.get(s).copied().unwrap_or(0);
                    println!("{}", r.provider);
                    println!("  last success   {}", ago(now, r.last_success_at));
                    if let Some(res) = &r.last_result {
                        println!("  last result    {res}");
                    }
                    if let Some(e) = &r.last_error {
                        println!("  last error     {} ({e})", ago(now, r.last_error_at));
                    }
                    println!(
                        "  outbox         {} pending, {} in flight, {} dead, {} delivered, {} discarded",
                        q("pending"),
                        q("inflight"),
                        q("dead"),
                        q("delivered"),
                        q("discarded")
                    );
                    if let Some(age) = r.oldest_pending_age_secs {
                        println!("  oldest pending {age} s");
                    }
                }
                println!("redemption conflicts in the last 30 days: {conflicts}");
                if conflicts > 0 {
                    println!("  (a lane committed a coupon already used, held by another sale or expired, or the provider refused it; newest first)");
                }
                for c in recent {
                    println!(
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
                    println!("{}", json!({"items": items}));
                } else {
                    println!(
                        "{:>8}  {:<11} {:<11} {:<9} {:>3}  {:<40} LAST ERROR",
                        "ID", "PROVIDER", "OPERATION", "STATE", "TRY", "ORDERING KEY"
                    );
                    for i in items {
                        println!(
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
                return report(cli.json, ok, *id, "queued for another attempt");
            }
            OutboxCommand::Discard { id } => {
                let ok = shared::outbox::discard_dead(&conn, *id, now)?;
                return report(cli.json, ok, *id, "discarded");
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
            shared::sync::request_sync(&conn, provider, now)?;
            if cli.json {
                println!("{}", json!({"requested": provider, "at": now}));
            } else {
                println!("sync of {provider} requested; the sync daemon starts it within a second (see `edge-ctl status`)");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn report(json_out: bool, ok: bool, id: i64, what: &str) -> anyhow::Result<ExitCode> {
    if json_out {
        println!("{}", json!({"id": id, "ok": ok}));
    } else if ok {
        println!("item {id} {what}");
    } else {
        eprintln!("item {id} is not dead-lettered (see `edge-ctl outbox list --state dead`)");
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    })
}
