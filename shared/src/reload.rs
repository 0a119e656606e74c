//! Config hot reload for both daemons: a `notify` watcher on the config file's directory and
//! its `conf.d/` (where regional config packages install). After the files settle, the
//! configuration is loaded and validated the same way as at start; a valid one is handed to
//! the daemon, an invalid one is logged and the last good configuration stays.

use crate::config::Config;
use notify::{RecursiveMode, Watcher};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

/// Quiet time after the last file event before the configuration is read (editors and
/// package managers write in several steps).
const SETTLE: Duration = Duration::from_millis(300);

/// Watches `config_path` (and `conf.d/` beside it, also when it is created later) and calls
/// `apply` with every valid new configuration, from a background thread that lives as long
/// as the process.
pub fn watch<F>(config_path: &Path, apply: F) -> notify::Result<()>
where
    F: Fn(Config) + Send + 'static,
{
    let (tx, rx) = mpsc::channel::<()>();
    // notify watches a relative path as the absolute one (the current directory joined) and
    // reports events by absolute paths: compare with absolute paths too, or conf.d/ events
    // of a daemon started with `--config live.toml` match nothing and are dropped.
    let absolute = std::path::absolute(config_path)?;
    let config_path = absolute.as_path();
    let dir = config_path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_owned();
    // Only the config file and conf.d/ matter: the directory may hold other busy files
    // (a database and its WAL in a test or demo setup) whose events must not keep the
    // settle timer from ever running out.
    let (file, conf_dir) = (config_path.to_owned(), dir.join("conf.d"));
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(e) = event {
            let relevant = e.paths.iter().any(|p| {
                p == &file || p.starts_with(&conf_dir) || p.file_name() == file.file_name()
            });
            if !e.kind.is_access() && relevant {
                let _ = tx.send(());
            }
        }
    })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    let conf_d = dir.join("conf.d");
    let mut watching_conf_d =
        conf_d.is_dir() && watcher.watch(&conf_d, RecursiveMode::NonRecursive).is_ok();
    log::info!(
        "watching {} and {} for configuration changes",
        config_path.display(),
        conf_d.display()
    );
    let path: PathBuf = config_path.to_owned();
    let spawned = std::thread::Builder::new()
        .name("config-watch".into())
        .spawn(move || {
            while rx.recv().is_ok() {
                // Let the writes settle: wait until no event came for SETTLE.
                while rx.recv_timeout(SETTLE).is_ok() {}
                // conf.d/ may appear after start (the first regional package creates it).
                if !watching_conf_d && conf_d.is_dir() {
                    watching_conf_d = watcher.watch(&conf_d, RecursiveMode::NonRecursive).is_ok();
                }
                match Config::load(&path) {
                    Ok(c) => apply(c),
                    Err(e) => log::error!(
                        "configuration change refused, keeping the last good configuration: {e}"
                    ),
                }
            }
        });
    if let Err(e) = spawned {
        log::error!("cannot start the config watcher: {e}");
    }
    Ok(())
}
