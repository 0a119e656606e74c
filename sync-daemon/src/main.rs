//! `sync-daemon` binary. Until the provider clients land (issue 3) it migrates the shared
//! database to the current schema and exits, so both services agree on the schema.

use clap::Parser;
use std::path::PathBuf;

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
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = shared::config::Config::load(&cli.config)
        .map_err(|e| anyhow::anyhow!("refusing to start: {e}"))?;
    let _ = env_logger::Builder::new()
        .filter_level(config.log_level())
        .try_init();
    let conn = shared::db::open_and_migrate(&config.database).map_err(|e| {
        anyhow::anyhow!(
            "cannot open database {}: {e}",
            config.database.path.display()
        )
    })?;
    log::info!(
        "database at schema version {}",
        shared::db::current_version(&conn)?
    );
    Ok(())
}
