//! Config hot reload: a `notify` watcher on the config file's directory and its `conf.d/`.
//! A valid change (schedules, credentials, providers switched on or off, offer rules, outbox
//! settings, retention days, the store's time zone, the image directory) applies without a
//! restart; an invalid one keeps the last good configuration and logs why. Database
//! settings need a restart (logged when they change). Sections only edge-server reads
//! (`admin`, the rest of `server` and `lanes`) are taken along without a word.

use crate::daemon::{Clients, Snapshot};
use shared::config::Config;
use std::path::Path;
use std::sync::Arc;
use tokio::sync::watch;

/// Starts watching (for the life of the process).
pub fn watch(config_path: &Path, snapshots: watch::Sender<Arc<Snapshot>>) -> anyhow::Result<()> {
    Ok(shared::reload::watch(config_path, move |new| {
        apply(new, &snapshots)
    })?)
}

fn apply(new: Config, snapshots: &watch::Sender<Arc<Snapshot>>) {
    let old = snapshots.borrow().clone();
    // Said whatever else changed: a change of only these would otherwise pass unnoticed.
    if old.config.database != new.database {
        log::warn!(
            "database settings changed in the configuration; they apply at the next restart of sync-daemon"
        );
    }
    let changes = describe(&old.config, &new);
    if changes.is_empty() {
        return;
    }
    let clients = Clients::build(&new, Some(&old.clients));
    log::info!("configuration reloaded: {}", changes.join(", "));
    let _ = snapshots.send(Arc::new(Snapshot {
        config: new,
        clients,
    }));
}

/// Which sections changed (names only: values may be secrets).
fn describe(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut out = Vec::new();
    let (a, b) = (&old.providers, &new.providers);
    if a.convercus != b.convercus {
        out.push("providers.convercus");
    }
    if a.coupontools != b.coupontools {
        out.push("providers.coupontools");
    }
    if a.koupon != b.koupon {
        out.push("providers.koupon");
    }
    if old.outbox != new.outbox {
        out.push("outbox");
    }
    if old.offer_rules != new.offer_rules {
        out.push("offer_rules");
    }
    if old.logging.level != new.logging.level {
        log::set_max_level(new.log_level());
        out.push("logging");
    }
    // Read by the daemon too: the pulls judge validity in the store's time zone, the
    // hourly prune keeps `lanes.*_retention_days`, images are cached in `server.image_dir`.
    if old.store != new.store {
        out.push("store");
    }
    if old.lanes.sales_retention_days != new.lanes.sales_retention_days
        || old.lanes.voucher_retention_days != new.lanes.voucher_retention_days
        || old.lanes.use_external_images != new.lanes.use_external_images
    {
        out.push("lanes");
    }
    if old.server.image_dir != new.server.image_dir {
        out.push("server.image_dir");
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn config(extra: &str) -> Config {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("edge-coupon.toml");
        std::fs::write(
            &path,
            format!("[store]\nsites = [\"S\"]\n[[lanes.credentials]]\nusername = \"a\"\npassword = \"b\"\n{extra}"),
        )
        .unwrap();
        Config::load_for_tools(&path).unwrap()
    }

    /// Before, only providers, outbox, offer rules and logging were compared: a change of
    /// the retention days alone was neither applied to the hourly prune nor logged.
    #[test]
    fn every_setting_the_daemon_reads_is_a_change_it_applies() {
        let base = config("");
        for (extra, section) in [
            ("[lanes]\nsales_retention_days = 60\n", "lanes"),
            ("[lanes]\nvoucher_retention_days = 7\n", "lanes"),
            ("[lanes]\nuse_external_images = true\n", "lanes"),
            (
                "[server]\nimage_dir = \"/srv/images\"\n",
                "server.image_dir",
            ),
        ] {
            assert_eq!(describe(&base, &config(extra)), [section], "{extra}");
        }
        let mut tz = base.clone();
        tz.store.time_zone = "America/New_York".into();
        assert_eq!(describe(&base, &tz), ["store"]);
        // What only edge-server reads is not a change here.
        assert!(describe(&base, &config("[lanes]\nhold_ttl_secs = 60\n")).is_empty());
    }
}
