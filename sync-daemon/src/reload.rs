//! Config hot reload: a `notify` watcher on the config file's directory and its `conf.d/`.
//! A valid change (schedules, credentials, providers switched on or off, offer rules, outbox
//! settings) applies without a restart; an invalid one keeps the last good configuration and
//! logs why. Database settings need a restart (logged when they change).

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
    let changes = describe(&old.config, &new);
    if changes.is_empty() {
        return;
    }
    if old.config.database.path != new.database.path {
        log::warn!(
            "database settings changed in the configuration; they apply at the next restart"
        );
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
    out
}
