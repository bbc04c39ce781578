//! Starts replication with the server: after storage opens (so links can read and apply) and
//! before the cores serve, and stops it before storage closes. The links themselves live in
//! `crate::replication`; this file only wires them into the server's lifecycle.

use std::sync::Arc;

use crate::config::{Config, ConfigTree};
use crate::replication::Replication;
use crate::store::Store;

/// Binds `replication.port` and starts dialling known nodes when replication is on. A listener
/// that cannot bind is a start-up failure (exit 2).
pub fn start(
    store: Arc<Store>,
    config: &Config,
    tree: &ConfigTree,
) -> Result<Option<Arc<Replication>>, super::RunError> {
    crate::replication::start(store, config, tree).map_err(super::RunError::Bind)
}
