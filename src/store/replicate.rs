//! Replication inside the store: per-origin sequence numbers and cursors in `__meta__`, applying
//! a peer's transaction (or a snapshot chunk) through the writer with last-writer-wins, and the
//! reads a sender needs (cursors, the audit position of an origin's `seq`, raw scans with
//! tombstones). It never opens a write transaction itself: [`Writer::apply_replicated`] runs on
//! the writer thread inside the writer's group commit, like any local request.
//!
//! ```text
//! __meta__ key                          value
//! "cursor:<origin>"                     u64 LE: last seq of that origin applied (own: last issued)
//! "seqidx:<origin>\0" + seq BE8         audit key (8 bytes) of that transaction in this log
//! "nodeid:<id u32 BE8 hex>"             node name for an origin id (tie-breaks compare names)
//! "pruned:<origin>"                     u64 LE: see prune.rs
//! "incarnation"                         this file's incarnation (hex), made with it
//! __audit__ entry  {user, origin: id, node: origin, seq, time: origin version,
//!                   entries: [[table, id, type, value, version, expiresAt]]}
//! ```
//!
//! An origin (a stream of sequence numbers) is `<node name>#<incarnation>`
//! (docs/replication.md "Origins"): a node whose database file is made anew starts a new
//! stream at seq 1 instead of reusing numbers its peers already hold. Record headers and
//! tie-breaks keep the node name alone.

use std::sync::{Condvar, Mutex};
use std::time::Duration;

use heed::RwTxn;

use super::entry::Header;
use super::layout;
use super::read::ReadTxn;
use super::writer::{decode_record, encode_primary_key, index_keys, Scratch, Writer};
use super::{Change, ChangeKind, StoreError, Table, WriteError};
use crate::value::{self, Object, Value};

/// What kind of change one replicated entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    Put,
    Delete,
    Message,
}

impl EntryKind {
    pub fn name(self) -> &'static str {
        match self {
            EntryKind::Put => "put",
            EntryKind::Delete => "delete",
            EntryKind::Message => "message",
        }
    }

    pub fn parse(name: &str) -> Option<EntryKind> {
        match name {
            // The writer names puts by their operation (docs/operations-api.md
            // `read_audit_log`); older logs say `put`.
            "put" | "patch" | "insert" | "update" | "upsert" => Some(EntryKind::Put),
            "delete" => Some(EntryKind::Delete),
            "message" => Some(EntryKind::Message),
            _ => None,
        }
    }
}

/// One record change of a source transaction, with the version its origin gave it.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicatedEntry {
    pub table: String,
    pub key: Value,
    pub kind: EntryKind,
    pub version: f64,
    /// The full record (put), the payload (message), none (delete).
    pub value: Option<Value>,
    pub expires_at: Option<f64>,
}

/// One source transaction as a peer sends it (`TXN`).
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicatedTxn {
    pub origin: String,
    pub seq: u64,
    /// The origin's version of the transaction (its HLC time).
    pub time: f64,
    pub user: Option<String>,
    pub entries: Vec<ReplicatedEntry>,
}

/// One record of an initial copy (`SNAPSHOT`): its own origin, tombstones as `value: None`.
#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotRecord {
    pub table: String,
    pub key: Value,
    pub version: f64,
    pub origin: String,
    pub value: Option<Value>,
    pub expires_at: Option<f64>,
}

/// Work a replication link hands the writer.
#[derive(Debug, Clone)]
pub enum ApplyJob {
    Txn(ReplicatedTxn),
    Snapshot(Vec<SnapshotRecord>),
    /// `SNAPSHOT_END`: raise each cursor to at least the given seq.
    Cursors(Vec<(String, u64)>),
}

#[derive(Debug, Clone, PartialEq)]
pub enum ApplyOutcome {
    /// Applied: how many entries won and were written (or delivered), how many lost.
    Applied { won: usize, lost: usize },
    /// `seq <= cursor`: already applied, skipped.
    Duplicate,
    /// `seq > cursor + 1`: dropped; the stream must restart from `cursor`.
    Gap { cursor: u64 },
}

/// A stable 32-bit id for a node name (FNV-1a), kept in record headers. Ties between equal
/// versions are broken by the names, which `__meta__` maps back from ids.
pub fn node_id_of(name: &str) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for b in name.as_bytes() {
        hash ^= u32::from(*b);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash
}

/// The origin id of a node's stream: `<name>#<incarnation>`.
pub fn stream_id(node: &str, incarnation: &str) -> String {
    format!("{node}#{incarnation}")
}

/// The node name of an origin (the whole string for origins written before incarnations).
pub fn stream_node(origin: &str) -> &str {
    origin.rsplit_once('#').map_or(origin, |(node, _)| node)
}

pub(super) fn cursor_key(origin: &str) -> Vec<u8> {
    format!("cursor:{origin}").into_bytes()
}

pub(super) fn seq_index_key(origin: &str, seq: u64) -> Vec<u8> {
    let mut k = format!("seqidx:{origin}\0").into_bytes();
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn node_id_key(id: u32) -> Vec<u8> {
    format!("nodeid:{id:08x}").into_bytes()
}

pub(super) fn read_u64(bytes: Option<&[u8]>) -> u64 {
    bytes
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_le_bytes)
        .unwrap_or(0)
}

/// Wakes replication senders after each commit; they wait on it instead of polling the log.
#[derive(Default)]
pub struct CommitSignal {
    commits: Mutex<u64>,
    cond: Condvar,
}

impl CommitSignal {
    pub(super) fn bump(&self) {
        let mut n = self.commits.lock().unwrap_or_else(|e| e.into_inner());
        *n = n.wrapping_add(1);
        self.cond.notify_all();
    }

    /// The number of commits so far (a token for [`CommitSignal::wait_past`]).
    pub fn current(&self) -> u64 {
        *self.commits.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Blocks (a plain thread, never an executor) until a commit after `seen`, or `timeout`.
    pub fn wait_past(&self, seen: u64, timeout: Duration) -> u64 {
        let guard = self.commits.lock().unwrap_or_else(|e| e.into_inner());
        let (guard, _) = self
            .cond
            .wait_timeout_while(guard, timeout, |n| *n == seen)
            .unwrap_or_else(|e| e.into_inner());
        *guard
    }
}

/// An audit entry's fields a sender needs, decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditTxn {
    /// The local audit key (this node's commit order).
    pub position: f64,
    pub origin: String,
    pub seq: u64,
    pub time: f64,
    pub user: Option<String>,
    pub entries: Vec<ReplicatedEntry>,
    /// Pruning removed some of its entries (`prune.rs`): not to be sent as it is.
    pub pruned: bool,
}

impl AuditTxn {
    fn from_value(position: f64, v: &Value) -> Option<AuditTxn> {
        let origin = v.get("node")?.as_str()?.to_string();
        let seq = match v.get("seq")? {
            Value::Int(n) if *n > 0 => *n as u64,
            _ => return None,
        };
        let time = as_f64(v.get("time")).unwrap_or(position);
        let user = v.get("user").and_then(Value::as_str).map(str::to_string);
        let mut entries = Vec::new();
        if let Some(Value::Array(items)) = v.get("entries") {
            for item in items {
                let Value::Array(parts) = item else { continue };
                let (Some(Value::String(table)), Some(key), Some(Value::String(kind))) =
                    (parts.first(), parts.get(1), parts.get(2))
                else {
                    continue;
                };
                let Some(kind) = EntryKind::parse(kind) else {
                    continue;
                };
                entries.push(ReplicatedEntry {
                    table: table.clone(),
                    key: key.clone(),
                    kind,
                    value: parts.get(3).filter(|v| !matches!(v, Value::Null)).cloned(),
                    version: as_f64(parts.get(4)).unwrap_or(time),
                    expires_at: as_f64(parts.get(5)),
                });
            }
        }
        Some(AuditTxn {
            position,
            origin,
            seq,
            time,
            user,
            entries,
            pruned: matches!(v.get("pruned"), Some(Value::Bool(true))),
        })
    }
}

fn as_f64(v: Option<&Value>) -> Option<f64> {
    match v? {
        Value::Float(f) => Some(*f),
        Value::Int(i) => Some(*i as f64),
        _ => None,
    }
}

/// A record as stored, tombstones included (for snapshots and comparisons).
#[derive(Debug, Clone, PartialEq)]
pub struct RawRecord {
    pub key: Value,
    pub header: Header,
    pub value: Option<Value>,
}

impl ReadTxn<'_> {
    /// Every origin's cursor in this database (own included: the last seq it issued).
    pub fn cursors(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let mut out = Vec::new();
        for item in self.db.meta.prefix_iter(&self.txn, b"cursor:")? {
            let (k, v) = item?;
            let name = String::from_utf8_lossy(&k[b"cursor:".len()..]).into_owned();
            out.push((name, read_u64(Some(v))));
        }
        Ok(out)
    }

    pub fn cursor(&self, origin: &str) -> Result<u64, StoreError> {
        Ok(read_u64(self.db.meta.get(&self.txn, &cursor_key(origin))?))
    }

    /// Where in this node's audit log the origin's transaction `seq` sits, if the log has it
    /// whole: `None` too when pruning took entries from it or from an earlier one of the origin
    /// (`prune.rs`), so a sender starting there snapshots instead.
    pub fn audit_position(&self, origin: &str, seq: u64) -> Result<Option<f64>, StoreError> {
        let pruned = read_u64(
            self.db
                .meta
                .get(&self.txn, &super::prune::pruned_key(origin))?,
        );
        if seq <= pruned {
            return Ok(None);
        }
        Ok(self
            .db
            .meta
            .get(&self.txn, &seq_index_key(origin, seq))?
            .and_then(layout::version_from_audit_key))
    }

    /// Up to `count_max` audit transactions after `after` (exclusive), in local commit order.
    /// Entries written before sequence numbers existed (no `node`/`seq`) are skipped.
    pub fn audit_txns_after(
        &self,
        after: Option<f64>,
        count_max: usize,
    ) -> Result<(Vec<AuditTxn>, Option<f64>), StoreError> {
        use std::ops::Bound;
        let from = after.map(Bound::Excluded).unwrap_or(Bound::Unbounded);
        let mut out = Vec::new();
        let mut last = after;
        // Senders never announce a group before it is durable (docs/design.md "Pipelined
        // commits"); the snapshot this transaction reads may hold one more.
        let to = Bound::Included(self.db.durable_version());
        for item in self.audit_range(from, to)?.take(count_max) {
            let (position, archived) = item?;
            last = Some(position);
            let owned =
                value::deserialize(archived).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            if let Some(txn) = AuditTxn::from_value(position, &owned) {
                out.push(txn);
            }
        }
        Ok((out, last))
    }

    /// The newest durable position in this node's audit log, if any: where a sender goes on
    /// from (it sends up to the last durable version only, docs/design.md "Pipelined commits").
    pub fn audit_last(&self) -> Result<Option<f64>, StoreError> {
        use std::ops::Bound;
        let to = layout::audit_key(self.db.durable_version());
        let range = (Bound::Unbounded, Bound::Included(&to[..]));
        Ok(self
            .db
            .audit
            .rev_range(&self.txn, &range)?
            .next()
            .transpose()?
            .and_then(|(k, _)| layout::version_from_audit_key(k)))
    }

    /// Every stored entry of `table`, tombstones and expired records included, in key order.
    pub fn raw_records(&self, table: &Table) -> Result<Vec<RawRecord>, StoreError> {
        let mut out = Vec::new();
        for item in table.records.iter(&self.txn)? {
            let (k, entry) = item?;
            let (header, body) = Header::read(entry)?;
            let key = value::key::decode(k).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            let value = if header.deleted {
                None
            } else {
                Some(decode_record(body)?)
            };
            out.push(RawRecord { key, header, value });
        }
        Ok(out)
    }

    /// The name behind an origin id in record headers, when known.
    pub fn node_name(&self, id: u32) -> Result<Option<String>, StoreError> {
        Ok(self
            .db
            .meta
            .get(&self.txn, &node_id_key(id))?
            .map(|b| String::from_utf8_lossy(b).into_owned()))
    }
}

impl Writer {
    /// Numbers a local transaction: `seq = cursor(own) + 1`, recorded with its audit position.
    /// The cursor itself is written once per group (`Marks`, written before the commit).
    pub(super) fn next_local_seq(&self, txn: &mut RwTxn, position: f64) -> Result<u64, WriteError> {
        let own = &*self.db.stream;
        let last = match self.marks.borrow().seq {
            Some(seq) => seq,
            None => read_u64(self.db.meta.get(txn, &cursor_key(own))?),
        };
        let seq = last + 1;
        self.marks.borrow_mut().seq = Some(seq);
        self.db
            .meta
            .put(txn, &seq_index_key(own, seq), &layout::audit_key(position))?;
        Ok(seq)
    }

    /// Applies one replication job inside the writer's transaction. `position` is the local
    /// version this job is audited under (the writer's next HLC time).
    pub(super) fn apply_replicated(
        &self,
        txn: &mut RwTxn,
        job: &ApplyJob,
        position: f64,
    ) -> Result<(ApplyOutcome, Vec<Change>), WriteError> {
        match job {
            ApplyJob::Txn(t) => self.apply_txn(txn, t, position),
            ApplyJob::Snapshot(records) => {
                let mut changes = Vec::new();
                let (mut won, mut lost) = (0, 0);
                let mut scratch = Scratch::default();
                for r in records {
                    let Some(table) = self.db.table(&r.table) else {
                        return Err(WriteError::NoSuchTable(r.table.clone()));
                    };
                    if !table.def.replicate {
                        continue;
                    }
                    self.clock.observe(r.version);
                    self.remember_node(txn, &r.origin)?;
                    let incoming = Incoming {
                        key: &r.key,
                        version: r.version,
                        origin: &r.origin,
                        value: r.value.as_ref(),
                        expires_at: r.expires_at,
                    };
                    if self.install(txn, &table, &incoming, &mut scratch)? {
                        won += 1;
                        changes.push(Change {
                            table: table.name.clone(),
                            key: r.key.clone(),
                            kind: if r.value.is_some() {
                                ChangeKind::Put
                            } else {
                                ChangeKind::Delete
                            },
                            value: r.value.clone(),
                        });
                    } else {
                        lost += 1;
                    }
                }
                Ok((ApplyOutcome::Applied { won, lost }, changes))
            }
            ApplyJob::Cursors(cursors) => {
                for (origin, seq) in cursors {
                    let key = cursor_key(origin);
                    if read_u64(self.db.meta.get(txn, &key)?) < *seq {
                        self.db.meta.put(txn, &key, &seq.to_le_bytes())?;
                    }
                }
                Ok((ApplyOutcome::Applied { won: 0, lost: 0 }, Vec::new()))
            }
        }
    }

    fn apply_txn(
        &self,
        txn: &mut RwTxn,
        t: &ReplicatedTxn,
        position: f64,
    ) -> Result<(ApplyOutcome, Vec<Change>), WriteError> {
        if t.origin == *self.db.stream {
            // Our own transaction coming back through a relay. (An earlier incarnation's is
            // applied: this file may not have it.)
            return Ok((ApplyOutcome::Duplicate, Vec::new()));
        }
        let node = stream_node(&t.origin);
        let cursor_key = cursor_key(&t.origin);
        let cursor = read_u64(self.db.meta.get(txn, &cursor_key)?);
        if t.seq <= cursor {
            return Ok((ApplyOutcome::Duplicate, Vec::new()));
        }
        if t.seq > cursor + 1 {
            return Ok((ApplyOutcome::Gap { cursor }, Vec::new()));
        }
        self.clock.observe(t.time);
        self.remember_node(txn, node)?;
        let mut scratch = Scratch::default();
        let mut changes = Vec::new();
        let mut audited = Vec::new();
        let mut lost = 0;
        for e in &t.entries {
            self.clock.observe(e.version);
            let Some(table) = self.db.table(&e.table) else {
                return Err(WriteError::NoSuchTable(e.table.clone()));
            };
            // Our own schema wins: a table we keep local takes nothing from peers.
            if !table.def.replicate {
                lost += 1;
                continue;
            }
            let won = match e.kind {
                EntryKind::Message => true,
                EntryKind::Put | EntryKind::Delete => {
                    let incoming = Incoming {
                        key: &e.key,
                        version: e.version,
                        origin: node,
                        value: if e.kind == EntryKind::Put {
                            e.value.as_ref()
                        } else {
                            None
                        },
                        expires_at: e.expires_at,
                    };
                    self.install(txn, &table, &incoming, &mut scratch)?
                }
            };
            if !won {
                lost += 1;
                continue;
            }
            audited.push(Value::Array(vec![
                Value::String(e.table.clone()),
                e.key.clone(),
                Value::String(e.kind.name().into()),
                e.value.clone().unwrap_or(Value::Null),
                Value::Float(e.version),
                e.expires_at.map(Value::Float).unwrap_or(Value::Null),
            ]));
            changes.push(Change {
                table: table.name.clone(),
                key: e.key.clone(),
                kind: match e.kind {
                    EntryKind::Put => ChangeKind::Put,
                    EntryKind::Delete => ChangeKind::Delete,
                    EntryKind::Message => ChangeKind::Message,
                },
                value: e.value.clone(),
            });
        }
        let mut touched: Vec<&str> = Vec::new();
        for c in &changes {
            if c.kind != ChangeKind::Message && !touched.contains(&&*c.table) {
                touched.push(&c.table);
            }
        }
        for table in touched {
            let key = layout::meta_key("updated", table);
            self.db.meta.put(txn, &key, &t.time.to_le_bytes())?;
        }
        // The transaction is audited even when every entry lost, so the origin's log on this
        // node stays gap-free for the peers it relays to.
        let mut entry = Object::new();
        entry.insert(
            "user",
            t.user.clone().map(Value::String).unwrap_or(Value::Null),
        );
        entry.insert("origin", Value::Int(i64::from(node_id_of(node))));
        entry.insert("node", Value::String(t.origin.clone()));
        entry.insert("seq", Value::Int(t.seq as i64));
        entry.insert("time", Value::Float(t.time));
        entry.insert("entries", Value::Array(audited));
        let bytes = value::to_archived_bytes(&Value::Object(entry));
        self.db
            .audit
            .put(txn, &layout::audit_key(position), &bytes)?;
        self.db.meta.put(txn, &cursor_key, &t.seq.to_le_bytes())?;
        self.db.meta.put(
            txn,
            &seq_index_key(&t.origin, t.seq),
            &layout::audit_key(position),
        )?;
        Ok((
            ApplyOutcome::Applied {
                won: changes.len(),
                lost,
            },
            changes,
        ))
    }

    fn remember_node(&self, txn: &mut RwTxn, name: &str) -> Result<(), WriteError> {
        let key = node_id_key(node_id_of(name));
        if self.db.meta.get(txn, &key)?.is_none() {
            self.db.meta.put(txn, &key, name.as_bytes())?;
        }
        Ok(())
    }

    /// Writes `incoming` if it beats what is stored (tombstones included): a higher version, or
    /// an equal one from a greater node name. Returns whether it won.
    fn install(
        &self,
        txn: &mut RwTxn,
        table: &Table,
        incoming: &Incoming<'_>,
        scratch: &mut Scratch,
    ) -> Result<bool, WriteError> {
        encode_primary_key(incoming.key, &mut scratch.key)?;
        let old_entry = table.records.get(txn, &scratch.key)?.map(<[u8]>::to_vec);
        let mut stored: Option<Value> = None;
        if let Some(bytes) = &old_entry {
            let (header, body) = Header::read(bytes)?;
            let wins = if incoming.version != header.version {
                incoming.version > header.version
            } else {
                let stored_name = if header.origin == self.options.node_id {
                    Some(self.options.node_name.clone())
                } else {
                    self.db
                        .meta
                        .get(txn, &node_id_key(header.origin))?
                        .map(|b| String::from_utf8_lossy(b).into_owned())
                };
                stored_name.is_none_or(|n| incoming.origin > n.as_str())
            };
            if !wins {
                return Ok(false);
            }
            if !header.deleted {
                stored = Some(decode_record(body)?);
            }
        }
        for (attribute, index) in &table.indexes {
            scratch.old_index.clear();
            if let Some(stored) = &stored {
                index_keys(stored.get(attribute), &mut scratch.old_index);
            }
            scratch.new_index.clear();
            if let Some(new) = incoming.value {
                index_keys(new.get(attribute), &mut scratch.new_index);
            }
            for k in scratch
                .old_index
                .iter()
                .filter(|k| scratch.new_index.binary_search(k).is_err())
            {
                index.delete_one_duplicate(txn, k, &scratch.key)?;
            }
            for k in scratch
                .new_index
                .iter()
                .filter(|k| scratch.old_index.binary_search(k).is_err())
            {
                index.put(txn, k, &scratch.key)?;
            }
        }
        scratch.entry.clear();
        Header {
            version: incoming.version,
            expires_at: incoming.value.and(incoming.expires_at),
            deleted: incoming.value.is_none(),
            origin: node_id_of(incoming.origin),
        }
        .write(&mut scratch.entry);
        if let Some(new) = incoming.value {
            value::archive_into(new, &mut scratch.entry);
        }
        table.records.put(txn, &scratch.key, &scratch.entry)?;
        match (stored.is_some(), incoming.value.is_some()) {
            (false, true) => self.add_count(txn, &table.name, 1)?,
            (true, false) => self.add_count(txn, &table.name, -1)?,
            _ => {}
        }
        Ok(true)
    }
}

struct Incoming<'a> {
    key: &'a Value,
    version: f64,
    origin: &'a str,
    value: Option<&'a Value>,
    expires_at: Option<f64>,
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::task::{Context, Poll, Wake, Waker};

    use super::*;
    use crate::schema::parse_schema_str;
    use crate::store::now_ms;
    use crate::store::{
        Database, Publisher, PutMode, Store, StoreOptions, WriteOp, WriteOutcome, WriteRequest,
    };
    use crate::value::json;

    const SCHEMA: &str = "type Dog @table { id: ID @primaryKey name: String @indexed }
type Local @table(replicate: false) { id: ID @primaryKey }";

    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
        let mut cx = Context::from_waker(&waker);
        let mut f = std::pin::pin!(f);
        loop {
            if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
                return v;
            }
            std::thread::park_timeout(Duration::from_millis(5));
        }
    }

    fn open(dir: &std::path::Path, name: &str) -> Arc<Database> {
        let publisher: Publisher = Arc::new(|_| {});
        let store = Store::open(StoreOptions::new(dir).with_node_name(name), publisher).unwrap();
        store
            .apply_schema(&parse_schema_str(SCHEMA, "t.graphql").unwrap().tables)
            .unwrap();
        store.database("data").unwrap()
    }

    fn put(db: &Database, id: &str, name: &str) -> WriteOutcome {
        let op = WriteOp::Put {
            table: "Dog".into(),
            key: Some(Value::String(id.into())),
            record: json::parse(format!(r#"{{"name":"{name}"}}"#).as_bytes()).unwrap(),
            mode: PutMode::Replace,
            expires_in_s: None,
        };
        block_on(
            db.submit(WriteRequest {
                ops: vec![op],
                user: None,
                extras: None,
            })
            .unwrap(),
        )
        .unwrap()
        .unwrap()
    }

    fn apply(db: &Database, job: ApplyJob) -> ApplyOutcome {
        block_on(db.apply(job).unwrap()).unwrap().unwrap()
    }

    fn name_of(db: &Database, id: &str) -> Option<String> {
        let t = db.table("Dog").unwrap();
        let r = db.read().unwrap();
        let rec = r.get(&t, &Value::String(id.into())).unwrap()?;
        let v = value::deserialize(rec.value).unwrap();
        v.get("name").and_then(Value::as_str).map(str::to_string)
    }

    fn txn(origin: &str, seq: u64, version: f64, entries: &[(&str, Option<&str>)]) -> ApplyJob {
        ApplyJob::Txn(ReplicatedTxn {
            origin: origin.into(),
            seq,
            time: version,
            user: None,
            entries: entries
                .iter()
                .map(|(id, name)| ReplicatedEntry {
                    table: "Dog".into(),
                    key: Value::String((*id).into()),
                    kind: if name.is_some() {
                        EntryKind::Put
                    } else {
                        EntryKind::Delete
                    },
                    version,
                    value: name.map(|n| {
                        json::parse(format!(r#"{{"id":"{id}","name":"{n}"}}"#).as_bytes()).unwrap()
                    }),
                    expires_at: None,
                })
                .collect(),
        })
    }

    fn put_both(db: &Database, id: &str) -> WriteOutcome {
        let put = |table: &str| WriteOp::Put {
            table: table.into(),
            key: Some(Value::String(id.into())),
            record: json::parse(b"{}").unwrap(),
            mode: PutMode::Replace,
            expires_in_s: None,
        };
        let ops = vec![put("Dog"), put("Local")];
        block_on(
            db.submit(WriteRequest {
                ops,
                ..Default::default()
            })
            .unwrap(),
        )
        .unwrap()
        .unwrap()
    }

    /// docs/replication.md "Pruned audit log": a transaction that lost entries is marked and
    /// its seq (and every earlier one of the origin) no longer has a position, so a sender
    /// snapshots; an emptied one goes, except the newest; later ones stay untouched.
    #[test]
    fn pruning_one_table_keeps_the_log_honest_for_replication() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path(), "node-a");
        put(&db, "1", "a"); // seq 1: Dog only → removed
        put_both(&db, "2"); // seq 2: Dog and Local → rewritten, marked
        let cut = put(&db, "3", "c").version; // seq 3: Dog only, at the cut → kept
        put(&db, "4", "d"); // seq 4
        let step = db.prune_audit_blocking("Dog", cut, None).unwrap();
        assert_eq!((step.removed, step.transactions), (2, 2));
        assert!(step.last.is_some());
        let done = db.prune_audit_blocking("Dog", cut, step.last).unwrap();
        assert_eq!(done, crate::store::PruneStep::default());
        let r = db.read().unwrap();
        for seq in 1..=2 {
            assert_eq!(
                r.audit_position(&db.stream, seq).unwrap(),
                None,
                "seq {seq}"
            );
        }
        assert_eq!(r.audit_position(&db.stream, 3).unwrap(), Some(cut));
        let (txns, _) = r.audit_txns_after(None, 100).unwrap();
        let seen: Vec<(u64, bool, Vec<String>)> = txns
            .iter()
            .map(|t| {
                let tables = t.entries.iter().map(|e| e.table.clone()).collect();
                (t.seq, t.pruned, tables)
            })
            .collect();
        assert_eq!(
            seen,
            vec![
                (2, true, vec!["Local".to_string()]),
                (3, false, vec!["Dog".to_string()]),
                (4, false, vec!["Dog".to_string()]),
            ]
        );
        drop(r);
        // Everything of Dog pruned: the newest transaction stays, empty, keeping the version.
        let last = put(&db, "5", "e").version;
        let mut after = None;
        loop {
            let step = db.prune_audit_blocking("Dog", last + 1.0, after).unwrap();
            match step.last {
                Some(p) => after = Some(p),
                None => break,
            }
        }
        let r = db.read().unwrap();
        assert_eq!(r.audit_last().unwrap(), Some(last));
        let (txns, _) = r.audit_txns_after(None, 100).unwrap();
        let seqs: Vec<u64> = txns.iter().map(|t| t.seq).collect();
        assert_eq!(seqs, vec![2, 5]);
        assert!(txns[1].entries.is_empty() && txns[1].pruned);
    }

    #[test]
    fn local_transactions_are_numbered_and_audited_with_origin() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path(), "node-a");
        let versions: Vec<f64> = (0..3)
            .map(|i| put(&db, "1", &format!("n{i}")).version)
            .collect();
        let r = db.read().unwrap();
        let own = db.stream.to_string();
        assert!(own.starts_with("node-a#") && own.len() == "node-a#".len() + 16);
        assert_eq!(stream_node(&own), "node-a");
        assert_eq!(r.cursors().unwrap(), vec![(own.clone(), 3)]);
        let (txns, last) = r.audit_txns_after(None, 100).unwrap();
        assert_eq!(last, Some(versions[2]));
        let seen: Vec<(String, u64, f64, f64)> = txns
            .iter()
            .map(|t| (t.origin.clone(), t.seq, t.position, t.entries[0].version))
            .collect();
        let expected: Vec<(String, u64, f64, f64)> = versions
            .iter()
            .enumerate()
            .map(|(i, v)| (own.clone(), i as u64 + 1, *v, *v))
            .collect();
        assert_eq!(seen, expected);
        assert_eq!(r.audit_position(&own, 2).unwrap(), Some(versions[1]));
        assert_eq!(r.audit_position(&own, 4).unwrap(), None);
    }

    /// Applies `jobs` in order to a node that first wrote `local` (id, name) and checks each
    /// outcome and the final names of `ids`.
    fn check(
        local: &[(&str, &str)],
        jobs: Vec<(ApplyJob, ApplyOutcome)>,
        expect: &[(&str, Option<&str>)],
    ) {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path(), "node-m");
        for (id, name) in local {
            put(&db, id, name);
        }
        for (i, (job, outcome)) in jobs.into_iter().enumerate() {
            assert_eq!(apply(&db, job), outcome, "job {i}");
        }
        for (id, name) in expect {
            assert_eq!(name_of(&db, id).as_deref(), *name, "record {id}");
        }
    }

    #[test]
    fn apply_follows_sequence_and_last_writer_wins() {
        let later = now_ms() + 60_000.0;
        let won = |n| ApplyOutcome::Applied { won: n, lost: 0 };
        let lost = |n| ApplyOutcome::Applied { won: 0, lost: n };
        // In order, then a duplicate and a gap.
        check(
            &[],
            vec![
                (txn("b", 1, 10.0, &[("1", Some("b1"))]), won(1)),
                (
                    txn("b", 1, 10.0, &[("1", Some("again"))]),
                    ApplyOutcome::Duplicate,
                ),
                (
                    txn("b", 3, 30.0, &[("1", Some("gap"))]),
                    ApplyOutcome::Gap { cursor: 1 },
                ),
                (txn("b", 2, 20.0, &[("2", Some("b2"))]), won(1)),
            ],
            &[("1", Some("b1")), ("2", Some("b2"))],
        );
        // A local write is newer than an old replicated one; a newer one wins over it.
        check(
            &[("1", "local")],
            vec![
                (txn("b", 1, 10.0, &[("1", Some("old"))]), lost(1)),
                (txn("c", 1, later, &[("1", Some("new"))]), won(1)),
            ],
            &[("1", Some("new"))],
        );
        // A tombstone stops an older put from resurrecting the record.
        check(
            &[],
            vec![
                (txn("b", 1, 20.0, &[("1", None)]), won(1)),
                (txn("c", 1, 10.0, &[("1", Some("zombie"))]), lost(1)),
            ],
            &[("1", None)],
        );
        // Equal versions: the greater node name wins, whichever arrives first.
        check(
            &[],
            vec![
                (txn("b", 1, 50.0, &[("1", Some("from-b"))]), won(1)),
                (txn("a", 1, 50.0, &[("1", Some("from-a"))]), lost(1)),
                (txn("c", 1, 50.0, &[("1", Some("from-c"))]), won(1)),
            ],
            &[("1", Some("from-c"))],
        );
    }

    /// docs/replication.md "Origins": the stream is kept across reopening; a database file
    /// made anew under the same node name (a wiped root) starts a new stream, so its first
    /// transactions are not taken for the old stream's; our own transactions coming back are
    /// duplicates, an earlier incarnation's are applied.
    #[test]
    fn a_database_made_anew_starts_a_new_origin_stream() {
        let later = now_ms() + 60_000.0;
        // Opened, closed and opened again, a file keeps its stream.
        let opened = |dir: &std::path::Path| {
            let publisher: Publisher = Arc::new(|_| {});
            let options = StoreOptions::new(dir).with_node_name("node-m");
            let store = Store::open(options, publisher).unwrap();
            store
                .apply_schema(&parse_schema_str(SCHEMA, "t.graphql").unwrap().tables)
                .unwrap();
            let stream = store.database("data").unwrap().stream.to_string();
            store.close();
            stream
        };
        let dir = tempfile::tempdir().unwrap();
        let first = opened(dir.path());
        assert_eq!(opened(dir.path()), first);
        let dir_again = tempfile::tempdir().unwrap();
        let db = open(dir_again.path(), "node-m");
        let second = db.stream.to_string();
        assert_ne!(first, second);
        assert_eq!(stream_node(&second), "node-m");
        assert_eq!(
            apply(&db, txn(&second, 1, later, &[("1", Some("echo"))])),
            ApplyOutcome::Duplicate
        );
        assert_eq!(
            apply(&db, txn(&first, 7, later, &[("1", Some("old life"))])),
            ApplyOutcome::Gap { cursor: 0 }
        );
        assert_eq!(
            apply(&db, txn(&first, 1, later, &[("1", Some("old life"))])),
            ApplyOutcome::Applied { won: 1, lost: 0 }
        );
        // The record carries the node's id; tie-breaks compare the name, not the stream.
        let t = db.table("Dog").unwrap();
        let raw = db.read().unwrap().raw_records(&t).unwrap();
        assert_eq!(raw[0].header.origin, node_id_of("node-m"));
        put(&db, "2", "new life");
        let mut cursors = db.read().unwrap().cursors().unwrap();
        cursors.sort();
        let mut expected = vec![(first.clone(), 1), (second, 1)];
        expected.sort();
        assert_eq!(cursors, expected);
    }

    #[test]
    fn applied_transactions_are_audited_for_relay_and_observed_by_the_clock() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path(), "node-r");
        let ahead = now_ms() + 3_600_000.0;
        apply(&db, txn("b", 1, ahead, &[("1", Some("b"))]));
        // Every entry lost still leaves an audited transaction, so relays stay gap-free.
        apply(&db, txn("b", 2, 5.0, &[("1", Some("old"))]));
        let local = put(&db, "2", "mine");
        assert!(local.version > ahead, "{} > {ahead}", local.version);
        let r = db.read().unwrap();
        let (txns, _) = r.audit_txns_after(None, 100).unwrap();
        let seen: Vec<(String, u64, usize)> = txns
            .iter()
            .map(|t| (t.origin.clone(), t.seq, t.entries.len()))
            .collect();
        assert_eq!(
            seen,
            vec![
                ("b".into(), 1, 1),
                ("b".into(), 2, 0),
                (db.stream.to_string(), 1, 1)
            ]
        );
        assert_eq!(txns[0].entries[0].version, ahead);
        let mut cursors = r.cursors().unwrap();
        cursors.sort();
        assert_eq!(cursors, vec![("b".into(), 2), (db.stream.to_string(), 1)]);
        let t = db.table("Dog").unwrap();
        assert_eq!(r.count(&t).unwrap(), 2);
        // The replicated record carries b's id; the name is known for tie-breaks.
        let raw = r.raw_records(&t).unwrap();
        assert_eq!(raw[0].header.origin, node_id_of("b"));
        assert_eq!(r.node_name(node_id_of("b")).unwrap().as_deref(), Some("b"));
    }

    #[test]
    fn snapshot_then_cursors_copy_a_node() {
        let dir_a = tempfile::tempdir().unwrap();
        let dir_c = tempfile::tempdir().unwrap();
        let a = open(dir_a.path(), "a");
        let c = open(dir_c.path(), "c");
        for i in 0..50 {
            put(&a, &i.to_string(), &format!("dog{i}"));
        }
        block_on(
            a.submit(WriteRequest {
                ops: vec![WriteOp::Delete {
                    table: "Dog".into(),
                    key: Value::String("7".into()),
                }],
                user: None,
                extras: None,
            })
            .unwrap(),
        )
        .unwrap()
        .unwrap();
        let (records, cursors) = {
            let r = a.read().unwrap();
            let t = a.table("Dog").unwrap();
            let records: Vec<SnapshotRecord> = r
                .raw_records(&t)
                .unwrap()
                .into_iter()
                .map(|raw| SnapshotRecord {
                    table: "Dog".into(),
                    key: raw.key,
                    version: raw.header.version,
                    origin: "a".into(),
                    value: raw.value,
                    expires_at: raw.header.expires_at,
                })
                .collect();
            (records, r.cursors().unwrap())
        };
        assert_eq!(
            apply(&c, ApplyJob::Snapshot(records)),
            ApplyOutcome::Applied { won: 50, lost: 0 }
        );
        apply(&c, ApplyJob::Cursors(cursors));
        assert_eq!(c.read().unwrap().cursor(&a.stream).unwrap(), 51);
        let t = c.table("Dog").unwrap();
        assert_eq!(c.read().unwrap().count(&t).unwrap(), 49);
        assert_eq!(name_of(&c, "7"), None);
        assert_eq!(name_of(&c, "8").as_deref(), Some("dog8"));
        // An older put after the snapshot cannot resurrect the tombstone copied with it.
        assert_eq!(
            apply(&c, txn("z", 1, 1.0, &[("7", Some("zombie"))])),
            ApplyOutcome::Applied { won: 0, lost: 1 }
        );
        // The name index followed.
        let r = c.read().unwrap();
        let mut k = Vec::new();
        value::key::encode_index_prefix(&Value::String("dog8".into()), &mut k);
        let hits = r
            .index_range(
                &t,
                "name",
                std::ops::Bound::Included(&k[..]),
                std::ops::Bound::Included(&k[..]),
                false,
            )
            .unwrap()
            .count();
        assert_eq!(hits, 1);
    }

    #[test]
    fn a_delete_of_a_record_not_here_yet_beats_an_older_put_arriving_later() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path(), "n");
        let delete = WriteOp::Delete {
            table: "Dog".into(),
            key: Value::String("1".into()),
        };
        block_on(
            db.submit(WriteRequest {
                ops: vec![delete],
                user: None,
                extras: None,
            })
            .unwrap(),
        )
        .unwrap()
        .unwrap();
        // The delete is audited, so it replicates to peers that hold the record.
        let (txns, _) = db.read().unwrap().audit_txns_after(None, 10).unwrap();
        assert_eq!(txns.len(), 1);
        assert_eq!(txns[0].entries[0].kind, EntryKind::Delete);
        assert_eq!(
            apply(&db, txn("b", 1, 10.0, &[("1", Some("older"))])),
            ApplyOutcome::Applied { won: 0, lost: 1 }
        );
        assert_eq!(name_of(&db, "1"), None);
        let t = db.table("Dog").unwrap();
        assert_eq!(db.read().unwrap().count(&t).unwrap(), 0);
    }

    #[test]
    fn local_only_tables_take_nothing_from_peers() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path(), "n");
        let mut job = txn("b", 1, 10.0, &[("1", Some("x"))]);
        if let ApplyJob::Txn(t) = &mut job {
            t.entries[0].table = "Local".into();
        }
        assert_eq!(apply(&db, job), ApplyOutcome::Applied { won: 0, lost: 1 });
        assert_eq!(db.read().unwrap().cursor("b").unwrap(), 1);
    }
}
