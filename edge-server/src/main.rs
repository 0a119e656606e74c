//! `edge-server` binary: parse the command line, start logging, load the config, and hand
//! over to the library.

use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// mimalloc instead of glibc's malloc: the lane bench measured 13-14% less CPU per update
/// in the HTTP workers and the writer (glibc's free-list consolidation, triggered by large
/// buffers such as TLS records, showed in profiles). The lane bench declares the same
/// allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    version,
    about = "Store edge coupon server: serves the CATAPULT coupon API to the lanes"
)]
struct Cli {
    /// Configuration file (conf.d/ beside it is merged on top).
    #[arg(
        long,
        short,
        default_value = "/etc/edge-coupon/edge-coupon.toml",
        env = "EDGE_CONFIG"
    )]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the lanes (the default).
    Serve,
    /// Load offers, customers, coupon states and vouchers from a JSON snapshot.
    Import { file: PathBuf },
    /// Check the configuration and exit.
    CheckConfig,
    /// Print the commented default configuration.
    PrintDefaultConfig,
    /// Create the self-signed lane certificate if none exists, and print its fingerprint and
    /// how to import it into the POS Java trust store (run by the package on install).
    TlsInit,
}

fn main() -> std::process::ExitCode {
    // The error and its causes on one line, as for an operator: no backtrace even when
    // RUST_BACKTRACE is set in the shell (anyhow would print one from `main`'s `Err`).
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Command::PrintDefaultConfig) = cli.command {
        print!("{}", shared::config::DEFAULT_CONFIG_TOML);
        return Ok(());
    }
    let config = shared::config::Config::load(&cli.config)
        .map_err(|e| anyhow::anyhow!("refusing to start: {e}"))?;
    shared::logging::init(config.log_level());
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => edge_server::serve(config, &cli.config),
        Command::Import { file } => edge_server::import(&config, &file),
        Command::CheckConfig => edge_server::check_config(&config, &cli.config),
        Command::PrintDefaultConfig => Ok(()),
        Command::TlsInit => edge_server::tls_init(&config),
    }
}
