//! Durable MQTT sessions (docs/mqtt.md "Durable sessions", docs/operations-api.md `hdb_durable_session`): what a
//! session keeps across disconnects, cores and restarts, how it is stored, and how the messages
//! it missed are found again.
//!
//! **Where the queue lives.** Every committed change and every non-retained message is already
//! written to its database's audit log (docs/mqtt.md "written to the audit log (for durable
//! sessions…)"). A stored session therefore keeps *positions* rather than copies: per database
//! the version up to which every matching QoS ≥ 1 event was acknowledged, the acknowledged events
//! above it (out-of-order PUBACKs), its subscriptions with the version each started at, the
//! packet ids of QoS ≥ 1 publishes still unacknowledged (resent with DUP = 1 and the same id) and
//! the inbound QoS 2 ids awaiting PUBREL. On resume the audit log is replayed from those
//! positions, newest [`SESSION_QUEUE_MAX_DEFAULT`] (`mqtt.sessionQueueMax`) at most — older ones
//! are dropped with a `warn` — then live events follow. An offline session costs nothing per
//! message, and the audit log's retention (`logging.auditRetention`) bounds how long it can stay
//! offline without losing messages.
//!
//! This module never touches sockets; it reads the store only through short read transactions and
//! writes the session record through `resource::write`.

use std::collections::{BTreeSet, HashMap};
use std::ops::Bound;
use std::sync::Arc;

use crate::change::ChangeKind;
use crate::resource::{self, Resources};
use crate::resource::{Database, PutMode, StoreError, WriteOp, WriteRequest};
use crate::value::{self, Object, Value};

use super::topic::Filter;

/// The system table sessions are stored in (docs/operations-api.md).
pub const TABLE: &str = "hdb_durable_session";
/// The system database.
pub const SYSTEM: &str = "system";
/// `mqtt.sessionQueueMax` default (docs/configuration.md): queued messages replayed per resumed session.
pub const SESSION_QUEUE_MAX_DEFAULT: usize = 10_000;
/// Subscriptions one session may hold; more → SUBACK `0x97` (quota exceeded).
pub const SUBSCRIPTIONS_MAX: usize = 1000;
/// Out-of-order acknowledgements kept per database; past it the oldest are folded into the
/// position (they would be re-sent at most once more, never lost).
pub const DONE_MAX: usize = 65_536;
/// Session Expiry Interval meaning "never" (MQTT 5 §3.1.2.11.2); 3.1.1 durable sessions use it.
pub const EXPIRY_NEVER: u32 = u32::MAX;

/// One event as both live delivery and audit replay name it: its commit version, table and
/// record id (none for the bare table topic). Events of one commit to one record are one event.
#[derive(Debug, Clone, PartialEq)]
pub struct EventKey {
    pub version: f64,
    pub table: Arc<str>,
    pub id: Option<String>,
}

impl Eq for EventKey {}

impl PartialOrd for EventKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for EventKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.version
            .total_cmp(&other.version)
            .then_with(|| self.table.cmp(&other.table))
            .then_with(|| self.id.cmp(&other.id))
    }
}

/// An event of a database, as an outbound QoS ≥ 1 publish remembers it.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRef {
    pub db: Arc<str>,
    pub key: EventKey,
}

/// One database's acknowledgement position.
#[derive(Debug, Default, Clone, PartialEq)]
struct Position {
    /// Every matching QoS ≥ 1 event at or below this version is done.
    acked: f64,
    /// Done events above `acked`.
    done: BTreeSet<EventKey>,
    /// Sent, not yet acknowledged (not stored: on resume they are simply above `acked`).
    pending: BTreeSet<EventKey>,
}

impl Position {
    /// Moves `acked` up to the newest done event below the oldest pending one.
    fn advance(&mut self) {
        let limit = self.pending.first().map(|k| k.version);
        let newest_done = match limit {
            None => self.done.last().map(|k| k.version),
            Some(l) => self
                .done
                .iter()
                .take_while(|k| k.version < l)
                .last()
                .map(|k| k.version),
        };
        if let Some(v) = newest_done {
            self.acked = self.acked.max(v);
        }
        let acked = self.acked;
        self.done.retain(|k| k.version > acked);
        while self.done.len() > DONE_MAX {
            if let Some(k) = self.done.pop_first() {
                self.acked = self.acked.max(k.version);
            }
        }
    }
}

/// Per-database acknowledgement positions of one session.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Tracker {
    dbs: HashMap<Arc<str>, Position>,
}

impl Tracker {
    /// A QoS ≥ 1 publish of `event` went out.
    pub fn sent(&mut self, event: &EventRef) {
        self.dbs
            .entry(event.db.clone())
            .or_default()
            .pending
            .insert(event.key.clone());
    }

    /// The client acknowledged `event` (PUBACK, or PUBREC for QoS 2).
    pub fn acked(&mut self, event: &EventRef) {
        let p = self.dbs.entry(event.db.clone()).or_default();
        p.pending.remove(&event.key);
        if event.key.version > p.acked {
            p.done.insert(event.key.clone());
        }
        p.advance();
    }

    /// The version of `db` below which everything is done.
    pub fn position(&self, db: &str) -> f64 {
        self.dbs.get(db).map_or(0.0, |p| p.acked)
    }

    pub fn is_done(&self, db: &str, key: &EventKey) -> bool {
        self.dbs
            .get(db)
            .is_some_and(|p| key.version <= p.acked || p.done.contains(key))
    }
}

/// A stored subscription.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredSub {
    pub filter: String,
    pub qos: u8,
    /// Events at or below this version predate the subscription.
    pub since: f64,
    /// The v5 subscription options byte as subscribed (no local, retain as published…).
    pub options: u8,
    pub identifier: Option<u32>,
}

/// An outbound QoS ≥ 1 publish not yet completed.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredInflight {
    pub packet_id: u16,
    pub event: EventRef,
    /// PUBREC came (QoS 2): only PUBREL/PUBCOMP remain.
    pub released: bool,
}

/// Everything a durable session keeps while its client is away.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Stored {
    pub subs: Vec<StoredSub>,
    pub tracker: Tracker,
    pub inflight: Vec<StoredInflight>,
    /// Inbound QoS 2 packet ids applied and awaiting PUBREL.
    pub qos2_received: Vec<u16>,
    /// Session Expiry Interval in seconds.
    pub expiry_s: u32,
}

fn key_value(db: &str, key: &EventKey) -> Value {
    Value::Array(vec![
        Value::String(db.to_string()),
        Value::Float(key.version),
        Value::String(key.table.to_string()),
        key.id.clone().map_or(Value::Null, Value::String),
    ])
}

fn key_from(v: &Value) -> Option<EventRef> {
    let Value::Array(parts) = v else { return None };
    let [Value::String(db), version, Value::String(table), id, ..] = parts.as_slice() else {
        return None;
    };
    let version = number(version)?;
    let id = match id {
        Value::String(s) => Some(s.clone()),
        _ => None,
    };
    Some(EventRef {
        db: Arc::from(db.as_str()),
        key: EventKey {
            version,
            table: Arc::from(table.as_str()),
            id,
        },
    })
}

fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Float(f) => Some(*f),
        Value::Int(i) => Some(*i as f64),
        _ => None,
    }
}

fn small(v: Option<&Value>) -> Option<u32> {
    number(v?)
        .filter(|n| *n >= 0.0 && *n <= f64::from(u32::MAX))
        .map(|n| n as u32)
}

impl Stored {
    /// The record stored in `hdb_durable_session` (`expires_at`: ms, none for never).
    pub fn to_record(&self, client_id: &str, expires_at: Option<f64>) -> Object {
        let subs = self
            .subs
            .iter()
            .map(|s| {
                let mut o = Object::new();
                o.insert("topic", Value::String(s.filter.clone()));
                o.insert("qos", Value::Int(i64::from(s.qos)));
                o.insert("startTime", Value::Float(s.since));
                o.insert("options", Value::Int(i64::from(s.options)));
                if let Some(i) = s.identifier {
                    o.insert("identifier", Value::Int(i64::from(i)));
                }
                Value::Object(o)
            })
            .collect();
        let mut positions = Object::new();
        let mut acks = Vec::new();
        for (db, p) in &self.tracker.dbs {
            positions.insert(db.to_string(), Value::Float(p.acked));
            acks.extend(p.done.iter().map(|k| key_value(db, k)));
        }
        let inflight = self
            .inflight
            .iter()
            .map(|f| {
                Value::Array(vec![
                    Value::Int(i64::from(f.packet_id)),
                    key_value(&f.event.db, &f.event.key),
                    Value::Bool(f.released),
                ])
            })
            .collect();
        let mut o = Object::new();
        o.insert("id", Value::String(client_id.to_string()));
        o.insert("subscriptions", Value::Array(subs));
        o.insert("acked", Value::Object(positions));
        o.insert("acks", Value::Array(acks));
        o.insert("inflight", Value::Array(inflight));
        o.insert(
            "qos2Received",
            Value::Array(
                self.qos2_received
                    .iter()
                    .map(|i| Value::Int(i64::from(*i)))
                    .collect(),
            ),
        );
        o.insert(
            "sessionExpiryInterval",
            Value::Int(i64::from(self.expiry_s)),
        );
        o.insert("expiresAt", expires_at.map_or(Value::Null, Value::Float));
        o
    }

    /// Reads a stored record back; entries that do not parse are skipped (the record is ours,
    /// but a hand-edited one must not take the connection down).
    pub fn from_record(record: &Value) -> Stored {
        let mut stored = Stored {
            expiry_s: small(record.get("sessionExpiryInterval")).unwrap_or(EXPIRY_NEVER),
            ..Stored::default()
        };
        if let Some(Value::Array(subs)) = record.get("subscriptions") {
            for s in subs.iter().take(SUBSCRIPTIONS_MAX) {
                let Some(Value::String(filter)) = s.get("topic") else {
                    continue;
                };
                stored.subs.push(StoredSub {
                    filter: filter.clone(),
                    qos: small(s.get("qos")).unwrap_or(0).min(2) as u8,
                    since: s.get("startTime").and_then(number).unwrap_or(0.0),
                    options: small(s.get("options")).unwrap_or(0).min(255) as u8,
                    identifier: small(s.get("identifier")),
                });
            }
        }
        if let Some(Value::Object(positions)) = record.get("acked") {
            for (db, v) in positions.iter() {
                if let Some(acked) = number(v) {
                    stored.tracker.dbs.entry(Arc::from(db)).or_default().acked = acked;
                }
            }
        }
        if let Some(Value::Array(acks)) = record.get("acks") {
            for a in acks.iter().take(DONE_MAX) {
                if let Some(e) = key_from(a) {
                    stored
                        .tracker
                        .dbs
                        .entry(e.db)
                        .or_default()
                        .done
                        .insert(e.key);
                }
            }
        }
        if let Some(Value::Array(inflight)) = record.get("inflight") {
            for f in inflight.iter().take(usize::from(u16::MAX)) {
                let Value::Array(parts) = f else { continue };
                let [id, key, released, ..] = parts.as_slice() else {
                    continue;
                };
                let (Some(id), Some(event)) = (small(Some(id)), key_from(key)) else {
                    continue;
                };
                let Ok(packet_id) = u16::try_from(id) else {
                    continue;
                };
                stored.inflight.push(StoredInflight {
                    packet_id,
                    event,
                    released: matches!(released, Value::Bool(true)),
                });
            }
        }
        if let Some(Value::Array(ids)) = record.get("qos2Received") {
            stored.qos2_received = ids
                .iter()
                .take(usize::from(u16::MAX))
                .filter_map(|v| small(Some(v)).and_then(|n| u16::try_from(n).ok()))
                .collect();
        }
        stored
    }
}

/// The stored session of `client_id`, unless absent or expired.
pub fn load(resources: &Resources, client_id: &str) -> Result<Option<Stored>, StoreError> {
    let Some((db, table)) = resources.table(SYSTEM, TABLE) else {
        return Ok(None);
    };
    let txn = db.read()?;
    let Some(record) = txn.get(&table, &Value::String(client_id.to_string()))? else {
        return Ok(None);
    };
    if !record.header.is_live(crate::resource::now_ms()) {
        return Ok(None);
    }
    let value = value::deserialize(record.value)
        .map_err(|e| StoreError::Corrupt(format!("{TABLE}: {e}")))?;
    Ok(Some(Stored::from_record(&value)))
}

/// Stores `stored` for `client_id`; it expires `expiry_s` after now unless that is "never".
pub async fn save(resources: &Resources, client_id: &str, stored: &Stored) -> Result<(), String> {
    let expires_in_s = (stored.expiry_s != EXPIRY_NEVER).then(|| f64::from(stored.expiry_s));
    let expires_at = expires_in_s.map(|s| crate::resource::now_ms() + s * 1000.0);
    let op = WriteOp::Put {
        table: TABLE.to_string(),
        key: Some(Value::String(client_id.to_string())),
        record: Value::Object(stored.to_record(client_id, expires_at)),
        mode: PutMode::Replace,
        expires_in_s,
    };
    submit(resources, op).await
}

/// Forgets the stored session of `client_id` (clean start, or expiry 0 at disconnect).
pub async fn discard(resources: &Resources, client_id: &str) -> Result<(), String> {
    let op = WriteOp::Delete {
        table: TABLE.to_string(),
        key: Value::String(client_id.to_string()),
    };
    submit(resources, op).await
}

async fn submit(resources: &Resources, op: WriteOp) -> Result<(), String> {
    let Some((db, _)) = resources.table(SYSTEM, TABLE) else {
        return Err(format!("no {SYSTEM}.{TABLE} table"));
    };
    let request = WriteRequest {
        ops: vec![op],
        user: None,
        extras: None,
    };
    resource::write(&db, request)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// The newest version a read transaction sees, given every commit up to `since` dispatched on
/// this core (the same horizon subscriptions join at).
pub use crate::pubsub::state::horizon;

/// A subscription as replay matches it.
pub struct ReplaySub<'a> {
    pub filter: &'a Filter,
    pub qos: u8,
    pub since: f64,
}

/// One missed event to send again.
pub struct Missed {
    pub event: EventRef,
    pub export: String,
    pub kind: ChangeKind,
    pub value: Option<Value>,
    pub qos: u8,
}

/// The QoS ≥ 1 events of `db` in (position, `to`] that `subs` match and `tracker` has not seen
/// done, oldest first, at most `queue_max` (the newest kept; the number dropped is returned).
/// `export_of` names the export of a table of `db`.
pub fn replay(
    db: &Database,
    to: f64,
    subs: &[ReplaySub<'_>],
    tracker: &Tracker,
    export_of: &dyn Fn(&str) -> Option<String>,
    queue_max: usize,
    out: &mut Vec<Missed>,
) -> Result<usize, StoreError> {
    let position = tracker.position(&db.name);
    let Some(from) = subs
        .iter()
        .map(|s| s.since.max(position))
        .min_by(f64::total_cmp)
    else {
        return Ok(0);
    };
    let txn = db.read()?;
    let mut kept: std::collections::VecDeque<Missed> = std::collections::VecDeque::new();
    let mut dropped = 0;
    for item in txn.audit_range(Bound::Excluded(from), Bound::Included(to))? {
        let (version, archived) = item?;
        let entry = value::deserialize(archived)
            .map_err(|e| StoreError::Corrupt(format!("audit entry: {e}")))?;
        for (table, key, kind, payload) in crate::pubsub::audit_changes(&entry) {
            let Some(export) = export_of(table) else {
                continue;
            };
            let id = crate::pubsub::id_text(key);
            let qos = subs
                .iter()
                .filter(|s| version > s.since && s.filter.matches(&export, id.as_deref()))
                .map(|s| s.qos)
                .max()
                .unwrap_or(0);
            if qos == 0 {
                continue;
            }
            let event = EventRef {
                db: db.name.clone(),
                key: EventKey {
                    version,
                    table: Arc::from(table),
                    id,
                },
            };
            if tracker.is_done(&db.name, &event.key)
                || kept.back().is_some_and(|k| k.event == event)
            {
                continue;
            }
            kept.push_back(Missed {
                event,
                export,
                kind,
                value: (kind != ChangeKind::Delete).then(|| payload.clone()),
                qos,
            });
            if kept.len() > queue_max {
                kept.pop_front();
                dropped += 1;
            }
        }
    }
    out.extend(kept);
    Ok(dropped)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(version: f64) -> EventRef {
        EventRef {
            db: Arc::from("data"),
            key: EventKey {
                version,
                table: Arc::from("T"),
                id: Some(format!("{version}")),
            },
        }
    }

    /// Sends `sent`, acknowledges `acked` (in that order); expects the position and which of
    /// `sent` count as done.
    fn check(sent: &[f64], acked: &[f64], position: f64, done: &[bool]) {
        let mut t = Tracker::default();
        for v in sent {
            t.sent(&ev(*v));
        }
        for v in acked {
            t.acked(&ev(*v));
        }
        assert_eq!(
            t.position("data"),
            position,
            "sent {sent:?} acked {acked:?}"
        );
        let got: Vec<bool> = sent
            .iter()
            .map(|v| t.is_done("data", &ev(*v).key))
            .collect();
        assert_eq!(got, done, "sent {sent:?} acked {acked:?}");
        // The stored form reads back the same positions and done set.
        let back = Stored::from_record(&Value::Object(
            Stored {
                tracker: t.clone(),
                ..Stored::default()
            }
            .to_record("c", None),
        ));
        assert_eq!(back.tracker.position("data"), position);
        let again: Vec<bool> = sent
            .iter()
            .map(|v| back.tracker.is_done("data", &ev(*v).key))
            .collect();
        assert_eq!(again, done);
    }

    #[test]
    fn positions_advance_only_over_acknowledged_prefixes() {
        check(&[1.0, 2.0, 3.0], &[], 0.0, &[false, false, false]);
        check(&[1.0, 2.0, 3.0], &[1.0, 2.0], 2.0, &[true, true, false]);
        check(&[1.0, 2.0, 3.0], &[2.0, 3.0], 0.0, &[false, true, true]);
        check(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0], 3.0, &[true, true, true]);
        check(&[1.0, 2.0, 3.0], &[1.0, 3.0], 1.0, &[true, false, true]);
    }

    #[test]
    fn stored_sessions_read_back() {
        let stored = Stored {
            subs: vec![StoredSub {
                filter: "Dog/#".into(),
                qos: 1,
                since: 5.5,
                options: 0x24,
                identifier: Some(7),
            }],
            tracker: Tracker::default(),
            inflight: vec![StoredInflight {
                packet_id: 9,
                event: ev(4.0),
                released: true,
            }],
            qos2_received: vec![3, 4],
            expiry_s: 60,
        };
        let back = Stored::from_record(&Value::Object(stored.to_record("c", Some(1.0))));
        assert_eq!(back, stored);
        // Garbage does not parse into anything, and does not panic.
        assert_eq!(
            Stored::from_record(&Value::String("x".into())).subs,
            Vec::new()
        );
    }
}
