//! Config hot reload: a `notify` watcher on the config file's directory and its `conf.d/`.
//! A valid change (schedules, credentials, providers switched on or off, offer rules, outbox
//! settings) applies without a restart; an invalid one keeps the last good configuration and
//! logs why. Database settings need a restart (logged when they change).

use crate::daemon::{Clients, Snapshot};
use notify::{RecursiveMode, Watcher};
use shared::config::Config;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// Quiet time after the last file event before the configuration is read (editors and
/// package managers write in several steps).
const SETTLE: Duration = Duration::from_millis(300);

/// Starts watching; the returned watcher must be kept alive.
pub fn watch(
    config_path: &Path,
    snapshots: watch::Sender<Arc<Snapshot>>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<notify::RecommendedWatcher> {
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(e) = event {
            if !e.kind.is_access() {
                let _ = tx.send(());
            }
        }
    })?;
    let dir = config_path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_owned();
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    let conf_d = dir.join("conf.d");
    if conf_d.is_dir() {
        watcher.watch(&conf_d, RecursiveMode::NonRecursive)?;
    }
    let path: PathBuf = config_path.to_owned();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                got = rx.recv() => if got.is_none() { return },
            }
            // Let the writes settle: wait until no event came for SETTLE.
            while let Ok(Some(())) = tokio::time::timeout(SETTLE, rx.recv()).await {}
            apply(&path, &snapshots);
        }
    });
    log::info!(
        "watching {} and {} for configuration changes",
        config_path.display(),
        conf_d.display()
    );
    Ok(watcher)
}

fn apply(path: &Path, snapshots: &watch::Sender<Arc<Snapshot>>) {
    let new = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            log::error!("configuration change refused, keeping the last good configuration: {e}");
            return;
        }
    };
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
