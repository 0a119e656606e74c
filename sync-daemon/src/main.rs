//! `sync-daemon` binary: parse the command line, load the config (refusing to start on a
//! bad one, naming the key), start logging, and run the daemon until SIGTERM or SIGINT.

use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    version,
    about = "Store edge coupon server: provider sync and outbox delivery"
)]
struct Cli {
    #[arg(
        long,
        short,
        default_value = "/etc/edge-coupon/edge-coupon.toml",
        env = "EDGE_CONFIG"
    )]
    config: PathBuf,
    /// Migrate the database to the current schema and exit.
    #[arg(long)]
    migrate_only: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match shared::config::Config::load(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sync-daemon: refusing to start: {e}");
            return ExitCode::from(2);
        }
    };
    shared::logging::init(config.log_level());
    // The provider ones concern this daemon (the lane ones are edge-server's to log).
    for w in config
        .warnings()
        .iter()
        .filter(|w| w.starts_with("providers."))
    {
        log::warn!("{w}");
    }
    if cli.migrate_only {
        return match shared::db::open_and_migrate(&config.database) {
            Ok(_) => ExitCode::SUCCESS,
            Err(e) => {
                log::error!(
                    "cannot open database {}: {e}",
                    config.database.path.display()
                );
                ExitCode::FAILURE
            }
        };
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            log::error!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(sync_daemon::run(cli.config, config, stop_signal()));
    // Everything written is committed by now (the writer drained, the stop recorded). A
    // blocking read still running, such as the hourly clean-up's, must not hold up the exit:
    // dropping the runtime would wait for it without limit, and systemd for the process.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves on SIGTERM (systemd stop) or SIGINT (Ctrl-C).
async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
