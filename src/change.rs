//! What a commit changed: the vocabulary the store's writer produces and pub/sub, replication
//! and the protocols consume. It sits outside `store` so that layers above the resource layer
//! can name a change without importing the store (ARCHITECTURE.md, "Layers").

use std::sync::Arc;

use crate::value::Value;

/// What a write's sender hands its subscribers beyond the records (for MQTT, docs/mqtt.md: the
/// publisher's client id, RETAIN, QoS and the v5 properties passed on). It travels with the write
/// request into its [`Commit`], on every core, and is never stored, audited or replicated: a
/// replay from the audit log or a replicated change comes without it.
pub type Extras = Arc<dyn std::any::Any + Send + Sync>;

/// One committed write request, handed to the server to fan out to subscribers and peers.
#[derive(Debug)]
pub struct Commit {
    pub database: Arc<str>,
    pub version: f64,
    /// When this node committed it (ms since the epoch).
    pub local_time: f64,
    pub changes: Vec<Change>,
    /// The request's [`Extras`], for every change of this commit.
    pub extras: Option<Extras>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    Put,
    Delete,
    Message,
}

#[derive(Debug)]
pub struct Change {
    pub table: Arc<str>,
    pub key: Value,
    pub kind: ChangeKind,
    /// The full record after a put; the payload of a message; none for deletes.
    pub value: Option<Value>,
}
