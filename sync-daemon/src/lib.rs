//! The sync daemon: keeps the store database fresh from Convercus, Coupontools and Koupon on
//! cron schedules, and delivers the outbox (everything the lanes did) to them, retrying for
//! as long as the WAN is down. One module per provider; the worker, the pull scheduler and
//! the config reload are provider-neutral.
//!
//! Architecture Invariant: the daemon writes only through `shared` (its writer, outbox and
//! sync functions); no SQL lives here. No provider detail reaches `shared`'s engine.

pub mod convercus;
pub mod coupontools;
pub mod daemon;
pub mod http;
pub mod images;
pub mod koupon;
pub mod pace;
pub mod package;
pub mod pull;
pub mod reload;
pub mod worker;

pub use daemon::run;
