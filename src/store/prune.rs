//! Pruning one table's entries from the audit log (`delete_audit_logs_before`,
//! docs/operations-api.md "Jobs", docs/replication.md "Pruned audit log").
//!
//! The audit log is one per database: a transaction's entry lists the changes of every table it
//! touched, and replication sends from it. Pruning removes the entries of one table older than a
//! time, transaction by transaction, on the writer thread, a bounded batch per write transaction:
//! - a transaction left with other tables' entries is rewritten with those and marked
//!   `"pruned": true`; a sender meeting such a transaction it has not sent yet ends the link
//!   instead of sending it incomplete, so the peer reconnects and is caught up by a snapshot;
//! - a transaction left empty is removed with its `seqidx` entry, except the newest transaction
//!   of the log, which is kept (empty) because it holds the highest version ever issued;
//! - `"pruned:<origin>"` in `__meta__` keeps the highest `seq` of each origin touched, and
//!   [`ReadTxn::audit_position`](super::read::ReadTxn) answers `None` for any `seq` at or below
//!   it, so a peer whose cursor is behind the pruned part gets a snapshot, never a log with
//!   holes.
//!
//! ```text
//! __meta__ "pruned:<origin name>"   u64 LE: highest seq of that origin whose transaction lost entries
//! ```

use std::ops::Bound;

use heed::RwTxn;

use super::replicate::{read_u64, seq_index_key};
use super::writer::Writer;
use super::{layout, StoreError};
use crate::value::{self, Value};

/// Audit transactions examined per write transaction.
pub const PRUNE_BATCH: usize = 1_000;

/// What one pruning step did.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PruneStep {
    /// Entries of the table removed.
    pub removed: u64,
    /// Transactions rewritten (other tables' entries kept) or removed (left empty).
    pub transactions: u64,
    /// The last audit position examined; the next step starts after it. `None`: nothing was
    /// left before the time, the pruning is done.
    pub last: Option<f64>,
}

pub(super) fn pruned_key(origin: &str) -> Vec<u8> {
    format!("pruned:{origin}").into_bytes()
}

impl Writer {
    /// Removes `table`'s entries from up to [`PRUNE_BATCH`] audit transactions after `after`
    /// (exclusive) and before `before` (exclusive), in the writer's transaction `wtxn`.
    pub(super) fn prune_audit(
        &self,
        wtxn: &mut RwTxn,
        table: &str,
        before: f64,
        after: Option<f64>,
    ) -> Result<PruneStep, StoreError> {
        let mut step = PruneStep::default();
        let newest = self
            .db
            .audit
            .last(wtxn)?
            .and_then(|(k, _)| layout::version_from_audit_key(k));
        let from = after.map(layout::audit_key);
        let to = layout::audit_key(before);
        let range = (
            from.as_ref()
                .map_or(Bound::Unbounded, |k| Bound::Excluded(&k[..])),
            Bound::Excluded(&to[..]),
        );
        // Read the batch first (owned), then change it: LMDB iterators borrow the transaction.
        let mut batch: Vec<(f64, Value)> = Vec::new();
        for item in self.db.audit.range(wtxn, &range)?.take(PRUNE_BATCH) {
            let (k, v) = item?;
            let position = layout::version_from_audit_key(k)
                .ok_or_else(|| StoreError::Corrupt("audit key".into()))?;
            let archived = value::access(v).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            let owned =
                value::deserialize(archived).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            batch.push((position, owned));
        }
        for (position, mut txn) in batch {
            step.last = Some(position);
            let removed = remove_table_entries(&mut txn, table);
            if removed == 0 {
                continue;
            }
            step.removed += removed;
            step.transactions += 1;
            let (origin, seq) = origin_and_seq(&txn);
            let Value::Object(fields) = &mut txn else {
                continue;
            };
            let empty = matches!(fields.get("entries"), Some(Value::Array(a)) if a.is_empty());
            let key = layout::audit_key(position);
            if empty && Some(position) != newest {
                self.db.audit.delete(wtxn, &key)?;
                if let (Some(origin), Some(seq)) = (&origin, seq) {
                    self.db.meta.delete(wtxn, &seq_index_key(origin, seq))?;
                }
            } else {
                fields.insert("pruned", Value::Bool(true));
                let bytes = value::to_archived_bytes(&txn);
                self.db.audit.put(wtxn, &key, &bytes)?;
            }
            if let (Some(origin), Some(seq)) = (origin, seq) {
                let mark = pruned_key(&origin);
                let current = read_u64(self.db.meta.get(wtxn, &mark)?);
                if seq > current {
                    self.db.meta.put(wtxn, &mark, &seq.to_le_bytes())?;
                }
            }
        }
        Ok(step)
    }
}

impl Writer {
    /// Audit retention (`logging.auditRetention`, docs/replication.md "Pruned audit log"):
    /// removes up to [`PRUNE_BATCH`] whole transactions older than `before` — never the newest,
    /// which holds the highest version issued — with their sequence index, and raises each
    /// origin's watermark, so a peer whose position is behind is sent a snapshot. Returns how
    /// many went.
    pub(super) fn trim_audit(&self, wtxn: &mut RwTxn, before: f64) -> Result<u64, StoreError> {
        let newest = self
            .db
            .audit
            .last(wtxn)?
            .and_then(|(k, _)| layout::version_from_audit_key(k));
        let to = layout::audit_key(before);
        let range = (Bound::Unbounded, Bound::Excluded(&to[..]));
        let mut batch: Vec<(f64, Option<String>, Option<u64>)> = Vec::new();
        for item in self.db.audit.range(wtxn, &range)?.take(PRUNE_BATCH) {
            let (k, v) = item?;
            let position = layout::version_from_audit_key(k)
                .ok_or_else(|| StoreError::Corrupt("audit key".into()))?;
            if Some(position) == newest {
                break;
            }
            let archived = value::access(v).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            let owned =
                value::deserialize(archived).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            let (origin, seq) = origin_and_seq(&owned);
            batch.push((position, origin, seq));
        }
        for (position, origin, seq) in &batch {
            self.db.audit.delete(wtxn, &layout::audit_key(*position))?;
            if let (Some(origin), Some(seq)) = (origin, seq) {
                self.db.meta.delete(wtxn, &seq_index_key(origin, *seq))?;
                let mark = pruned_key(origin);
                if *seq > read_u64(self.db.meta.get(wtxn, &mark)?) {
                    self.db.meta.put(wtxn, &mark, &seq.to_le_bytes())?;
                }
            }
        }
        Ok(batch.len() as u64)
    }
}

/// An audit transaction's origin and sequence number, when it has them.
fn origin_and_seq(txn: &Value) -> (Option<String>, Option<u64>) {
    let origin = txn.get("node").and_then(Value::as_str).map(str::to_string);
    let seq = match txn.get("seq") {
        Some(Value::Int(n)) if *n > 0 => Some(*n as u64),
        _ => None,
    };
    (origin, seq)
}

/// Drops the entries of `table` from an audit transaction; answers how many.
fn remove_table_entries(txn: &mut Value, table: &str) -> u64 {
    let Value::Object(fields) = txn else {
        return 0;
    };
    let Some(Value::Array(entries)) = fields.get("entries").cloned() else {
        return 0;
    };
    let before = entries.len();
    let kept: Vec<Value> = entries
        .into_iter()
        .filter(|e| !matches!(e, Value::Array(parts) if matches!(parts.first(), Some(Value::String(t)) if t == table)))
        .collect();
    let removed = (before - kept.len()) as u64;
    if removed > 0 {
        fields.insert("entries", Value::Array(kept));
    }
    removed
}
