//! Logging: to journald with structured fields when started by systemd (JOURNAL_STREAM is
//! set), else to stderr. Never log secrets or full coupon codes at INFO or above.

pub fn init(level: log::LevelFilter) {
    let under_systemd = std::env::var_os("JOURNAL_STREAM").is_some();
    if under_systemd {
        if let Ok(logger) = systemd_journal_logger::JournalLog::new() {
            if logger.install().is_ok() {
                log::set_max_level(level);
                return;
            }
        }
    }
    let _ = env_logger::Builder::new()
        .filter_level(level)
        .filter_module("actix_server", log::LevelFilter::Warn.min(level))
        .filter_module("reqwest", log::LevelFilter::Warn.min(level))
        .filter_module("hyper_util", log::LevelFilter::Warn.min(level))
        .format_timestamp_millis()
        .try_init();
}
