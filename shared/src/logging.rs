//! Logging: to journald with structured fields when started by systemd (JOURNAL_STREAM is
//! set), else to stderr. Never log secrets or full coupon codes at INFO or above.
//!
//! The level is `log::max_level()` alone, so a config reload that calls
//! `log::set_max_level` can raise it as well as lower it: the backend is built to pass
//! everything, and [`Leveled`] applies the current level (and keeps the chattiest
//! dependencies at WARN) in front of either backend.

use log::{Level, LevelFilter, Log, Metadata, Record};

/// Dependencies whose DEBUG output would drown ours; never logged below WARN.
const NOISY: [&str; 3] = ["actix_server", "reqwest", "hyper_util"];

pub fn init(level: LevelFilter) {
    let under_systemd = std::env::var_os("JOURNAL_STREAM").is_some();
    let installed = if under_systemd {
        systemd_journal_logger::JournalLog::new()
            .ok()
            .is_some_and(|journal| log::set_boxed_logger(Box::new(Leveled(journal))).is_ok())
    } else {
        false
    };
    if !installed {
        let _ = log::set_boxed_logger(Box::new(Leveled(stderr_logger())));
    }
    // After installing: this, not a filter inside the backend, decides what is logged.
    log::set_max_level(level);
}

/// env_logger's stderr format, with no level of its own (it passes everything).
fn stderr_logger() -> env_logger::Logger {
    env_logger::Builder::new()
        .filter_level(LevelFilter::Trace)
        .format_timestamp_millis()
        .build()
}

/// A backend behind the current `log::max_level()` and the [`NOISY`] rule.
struct Leveled<L>(L);

impl<L: Log> Log for Leveled<L> {
    fn enabled(&self, m: &Metadata) -> bool {
        m.level() <= log::max_level()
            && (m.level() <= Level::Warn || !is_noisy(m.target()))
            && self.0.enabled(m)
    }

    fn log(&self, record: &Record) {
        if self.enabled(record.metadata()) {
            self.0.log(record);
        }
    }

    fn flush(&self) {
        self.0.flush();
    }
}

fn is_noisy(target: &str) -> bool {
    NOISY.iter().any(|m| {
        target
            .strip_prefix(m)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn meta(level: Level, target: &str) -> Metadata<'_> {
        Metadata::builder().level(level).target(target).build()
    }

    /// A journald-like backend: enables everything.
    struct All;
    impl Log for All {
        fn enabled(&self, _: &Metadata) -> bool {
            true
        }
        fn log(&self, _: &Record) {}
        fn flush(&self) {}
    }

    #[test]
    fn the_level_can_be_raised_after_start_for_both_backends() {
        // Started at info (as `init(Info)` does), then a reload raises it to debug.
        // (The only test here that sets the process-wide level.)
        let stderr = Leveled(stderr_logger());
        let journal = Leveled(All);
        log::set_max_level(LevelFilter::Info);
        for l in [&stderr as &dyn Log, &journal] {
            assert!(l.enabled(&meta(Level::Info, "sync_daemon::daemon")));
            assert!(!l.enabled(&meta(Level::Debug, "sync_daemon::daemon")));
        }
        log::set_max_level(LevelFilter::Debug);
        for l in [&stderr as &dyn Log, &journal] {
            assert!(l.enabled(&meta(Level::Debug, "sync_daemon::daemon")));
            assert!(!l.enabled(&meta(Level::Trace, "sync_daemon::daemon")));
            // The chatty dependencies stay at WARN whatever the level.
            assert!(!l.enabled(&meta(Level::Debug, "reqwest::connect")));
            assert!(!l.enabled(&meta(Level::Info, "actix_server")));
            assert!(l.enabled(&meta(Level::Warn, "hyper_util::client")));
            assert!(l.enabled(&meta(Level::Debug, "reqwesty")));
        }
        log::set_max_level(LevelFilter::Error);
        assert!(!stderr.enabled(&meta(Level::Warn, "reqwest")));
        log::set_max_level(LevelFilter::Info);
    }
}
