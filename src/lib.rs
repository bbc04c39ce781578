//! tidepool: a real-time database server speaking HarperDB 4.x's interfaces, thread-per-core on
//! io_uring. See ARCHITECTURE.md for the map; each subsystem's `mod.rs` says what it owns.

pub mod auth;
pub mod change;
pub mod config;
pub mod logging;
pub mod metrics;
pub mod protocol;
pub mod pubsub;
pub mod query;
pub mod replication;
pub mod resource;
pub mod schema;
pub mod server;
pub mod store;
pub mod util;
pub mod value;
