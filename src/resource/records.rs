//! Record verbs every protocol shares: read one record in place, and submit a write and await it.

use std::sync::Arc;

use crate::store::{Database, Header, StoreError, Table, WriteError, WriteOutcome, WriteRequest};
use crate::value::{ArchivedValue, Value};

/// Reads the live record `key` of `table` and hands it, still in the memory map, to `f` (which
/// encodes it). The read transaction is closed before this returns, so callers may await after.
pub fn with_record<R>(
    db: &Database,
    table: &Table,
    key: &Value,
    f: impl FnOnce(&Header, &ArchivedValue) -> R,
) -> Result<Option<R>, StoreError> {
    let txn = db.read()?;
    Ok(txn
        .get(table, key)?
        .map(|record| f(&record.header, record.value)))
}

/// A write queued on its database's writer: completes once it is committed (and synced) or
/// refused. Dropping it does not undo the write.
pub struct Queued(tidepool_io::OneshotReceiver<Result<WriteOutcome, WriteError>>);

impl Queued {
    pub async fn committed(self) -> Result<WriteOutcome, WriteError> {
        self.0.await.unwrap_or(Err(WriteError::Stopped))
    }
}

/// Queues `request` on the database's writer now, in order with every write queued before it,
/// without waiting for the commit.
pub fn queue(db: &Arc<Database>, request: WriteRequest) -> Result<Queued, WriteError> {
    db.submit(request).map(Queued)
}

/// Submits `request` to the database's writer and waits (without blocking the core) for the
/// commit.
pub async fn write(db: &Arc<Database>, request: WriteRequest) -> Result<WriteOutcome, WriteError> {
    let reply = db.submit(request)?;
    reply.await.unwrap_or(Err(WriteError::Stopped))
}
