//! What an MQTT publish carries that the store does not keep (MQTT 5 §3.3.2.3): its publisher
//! (for No Local), its RETAIN flag (for Retain As Published) and the properties a broker passes
//! on — Payload Format Indicator, Message Expiry Interval, Content Type, Response Topic,
//! Correlation Data and User Properties.
//!
//! A publishing connection leaves a [`Note`] here just before its write is submitted; every core's
//! dispatcher finds it again when the commit arrives, by database, table, id, kind and payload,
//! and the last core to see it removes it. The writer replies before it publishes, but which of
//! the two a core sees first is the executor's choice, so notes are matched by content rather
//! than by version; the version is recorded by the first core that matches, so the other cores
//! match exactly that commit. Notes never reach the store: a durable session's replay from the
//! audit log delivers the payload without them.
//!
//! Bounded by [`NOTES_MAX`]; past it a publish goes without its note (its properties are not
//! passed on), and a `warn` says so.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use super::props::{Properties, Property};
use crate::change::{ChangeKind, Commit};
use crate::value::Value;

/// Notes waiting for their commit at once; a note lives from submit until every core dispatched.
pub const NOTES_MAX: usize = 65_536;

/// A note no core took within this long is dropped (its commit was lost on the way).
pub const NOTE_AGE_MAX_MS: f64 = 60_000.0;

/// A publish's extras, as subscribers get them.
#[derive(Debug, Clone, PartialEq)]
pub struct Note {
    pub client_id: String,
    pub retain: bool,
    /// The publish's QoS: messages go out at most at it (docs/mqtt.md, MQTT 5 §3.8.4).
    pub qos: u8,
    /// The properties passed on (the kinds listed in the module documentation).
    pub properties: Properties,
    /// When the publish arrived (ms), for the Message Expiry countdown.
    pub received_ms: f64,
}

impl Note {
    /// Keeps only the properties a broker forwards.
    pub fn new(client_id: &str, retain: bool, qos: u8, properties: &Properties) -> Note {
        let mut kept = Properties::default();
        for p in properties.iter() {
            if matches!(
                p,
                Property::PayloadFormatIndicator(_)
                    | Property::MessageExpiryInterval(_)
                    | Property::ContentType(_)
                    | Property::ResponseTopic(_)
                    | Property::CorrelationData(_)
                    | Property::UserProperty(..)
            ) {
                kept.push(p.clone());
            }
        }
        Note {
            client_id: client_id.to_string(),
            retain,
            qos,
            properties: kept,
            received_ms: crate::resource::now_ms(),
        }
    }

    /// The properties for a delivery now: the Message Expiry Interval counts down (MQTT 5
    /// docs/rest.md); `None` when the message has expired and must not be sent.
    pub fn outbound(&self, now_ms: f64) -> Option<Properties> {
        let mut out = Properties::default();
        for p in self.properties.iter() {
            match p {
                Property::MessageExpiryInterval(s) => {
                    let waited_s = ((now_ms - self.received_ms).max(0.0) / 1000.0) as u64;
                    let left = u64::from(*s).checked_sub(waited_s).filter(|l| *l > 0)?;
                    out.push(Property::MessageExpiryInterval(left as u32));
                }
                other => out.push(other.clone()),
            }
        }
        Some(out)
    }

    pub fn content_type(&self) -> Option<&str> {
        self.properties.content_type()
    }
}

struct Pending {
    database: String,
    table: String,
    key: Value,
    kind: ChangeKind,
    payload: Option<Value>,
    /// The commit this note belongs to, once a core matched it (or the write returned).
    version: Option<f64>,
    /// Cores that have not dispatched it yet.
    cores_left: usize,
    note: std::sync::Arc<Note>,
}

/// The notes of publishes in flight, shared by every core.
pub struct Notes {
    pending: Mutex<Vec<Pending>>,
    count: AtomicUsize,
    cores: usize,
}

impl Notes {
    pub fn new(cores: usize) -> Notes {
        Notes {
            pending: Mutex::new(Vec::new()),
            count: AtomicUsize::new(0),
            cores: cores.max(1),
        }
    }

    /// Leaves `note` for the write about to be submitted; false when full.
    pub fn leave(
        &self,
        database: &str,
        table: &str,
        key: Value,
        kind: ChangeKind,
        payload: Option<Value>,
        note: Note,
    ) -> bool {
        let Ok(mut pending) = self.pending.lock() else {
            return false;
        };
        // A commit a core never dispatched (its inbox overflowed) would keep its note forever.
        let now = crate::resource::now_ms();
        pending.retain(|p| now - p.note.received_ms < NOTE_AGE_MAX_MS);
        if pending.len() >= NOTES_MAX {
            return false;
        }
        pending.push(Pending {
            database: database.to_string(),
            table: table.to_string(),
            key,
            kind,
            payload,
            version: None,
            cores_left: self.cores,
            note: std::sync::Arc::new(note),
        });
        self.count.store(pending.len(), Ordering::Release);
        true
    }

    /// After the write of `client_id`'s note: pins it to the committed `version`, or drops it
    /// when the write failed (`None`).
    pub fn settle(&self, client_id: &str, version: Option<f64>) {
        if let Ok(mut pending) = self.pending.lock() {
            match version {
                Some(v) => {
                    for p in pending.iter_mut() {
                        if p.version.is_none() && p.note.client_id == client_id {
                            p.version = Some(v);
                        }
                    }
                }
                None => pending.retain(|p| p.version.is_some() || p.note.client_id != client_id),
            }
            self.count.store(pending.len(), Ordering::Release);
        }
    }

    /// The notes of `commit`'s changes, by change index, for one core's dispatch; a note
    /// leaves once every core has taken it.
    pub fn take(&self, commit: &Commit) -> Vec<Option<std::sync::Arc<Note>>> {
        if self.count.load(Ordering::Acquire) == 0 {
            return Vec::new();
        }
        let Ok(mut pending) = self.pending.lock() else {
            return Vec::new();
        };
        let mut out = vec![None; commit.changes.len()];
        for (slot, change) in out.iter_mut().zip(&commit.changes) {
            let found = pending.iter().position(|p| {
                p.version.is_none_or(|v| v == commit.version)
                    && p.kind == change.kind
                    && p.database == *commit.database
                    && p.table == *change.table
                    && p.key == change.key
                    && (p.payload.is_none() || p.payload == change.value)
            });
            let Some(i) = found else { continue };
            let done = match pending.get_mut(i) {
                Some(p) => {
                    p.version = Some(commit.version);
                    p.cores_left = p.cores_left.saturating_sub(1);
                    *slot = Some(p.note.clone());
                    p.cores_left == 0
                }
                None => false,
            };
            if done {
                pending.swap_remove(i);
            }
        }
        self.count.store(pending.len(), Ordering::Release);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::change::Change;
    use std::sync::Arc;

    fn commit(version: f64, key: i64, payload: i64) -> Commit {
        Commit {
            database: Arc::from("data"),
            version,
            local_time: version,
            changes: vec![Change {
                table: Arc::from("T"),
                key: Value::Int(key),
                kind: ChangeKind::Message,
                value: Some(Value::Int(payload)),
            }],
        }
    }

    /// Leaves notes (client, key, payload), then dispatches `commits` on each of two cores;
    /// expects which client each commit's note names, per core.
    fn check(left: &[(&str, i64, i64)], commits: &[Commit], expected: &[Option<&str>]) {
        let notes = Notes::new(2);
        for (client, key, payload) in left {
            let note = Note::new(client, false, 1, &Properties::default());
            let payload = Some(Value::Int(*payload));
            assert!(notes.leave(
                "data",
                "T",
                Value::Int(*key),
                ChangeKind::Message,
                payload,
                note
            ));
        }
        for _core in 0..2 {
            let got: Vec<Option<String>> = commits
                .iter()
                .map(|c| {
                    notes
                        .take(c)
                        .into_iter()
                        .next()
                        .flatten()
                        .map(|n| n.client_id.clone())
                })
                .collect();
            let want: Vec<Option<String>> =
                expected.iter().map(|e| e.map(str::to_string)).collect();
            assert_eq!(got, want);
        }
        assert_eq!(
            notes.count.load(Ordering::Acquire),
            0,
            "all taken by both cores"
        );
    }

    #[test]
    fn notes_match_their_commits_on_every_core() {
        check(&[("a", 1, 10)], &[commit(1.0, 1, 10)], &[Some("a")]);
        // Two publishers to one topic, committed in the other order: matched by payload.
        check(
            &[("a", 1, 10), ("b", 1, 20)],
            &[commit(1.0, 1, 20), commit(2.0, 1, 10)],
            &[Some("b"), Some("a")],
        );
        check(&[], &[commit(1.0, 1, 10)], &[None]);
    }

    #[test]
    fn message_expiry_counts_down() {
        let props = Properties(vec![
            Property::MessageExpiryInterval(10),
            Property::TopicAlias(3),
            Property::UserProperty("k".into(), "v".into()),
        ]);
        let mut note = Note::new("c", false, 1, &props);
        note.received_ms = 1000.0;
        assert_eq!(
            note.outbound(4500.0),
            Some(Properties(vec![
                Property::MessageExpiryInterval(7),
                Property::UserProperty("k".into(), "v".into()),
            ]))
        );
        assert_eq!(note.outbound(11_000.0), None);
    }
}
