//! The store edge coupon server's shared library: configuration, the SQLite schema and its
//! migrations, the domain model, the discount engine, the repository functions and the
//! outbox. Neither HTTP nor any provider's wire format lives here.
//!
//! Architecture Invariant: this crate does not depend on actix-web or reqwest.

pub mod catalog;
pub mod config;
pub mod db;
pub mod domain;
pub mod engine;
pub mod import;
pub mod logging;
pub mod money;
pub mod outbox;
pub mod reload;
pub mod repo;
pub mod service;
pub mod sync;
