//! Resuming a durable session (docs/mqtt.md): its subscriptions (those still permitted), the
//! PUBRELs it is owed, then the QoS ≥ 1 events it missed, replayed from the audit log.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::codec::{Ack, Packet};
use super::conn::Session;
use super::dispatch::{encode_trimmed, outbound_payload, topic_name};
use super::durable::{self, EventKey, Missed, Stored, StoredInflight, StoredSub, Tracker};
use super::outbound::{Inflight, Outbound};
use super::payload;
use super::props::Properties;
use super::share;
use super::subscribe::Sub;
use crate::change::ChangeKind;
use crate::value::Value;

/// The databases a resumed session's subscriptions read, each with the indexes of its
/// subscriptions (shared ones excluded: messages to a group went to the members that were there).
type Databases = Vec<(Arc<crate::resource::Database>, Vec<usize>)>;

/// A resent publish's packet id by the event it carried.
type Resend = BTreeMap<(Arc<str>, EventKey), u16>;

impl Session {
    /// Restores a stored session: its subscriptions (those still permitted), the PUBRELs it is
    /// owed, then the QoS ≥ 1 events it missed, oldest first, resent ones with their old packet
    /// ids and DUP = 1. Synchronous: see `serve`.
    pub(super) fn resume(&self, stored: Stored) {
        let conn = &self.conn;
        let (subs, databases) = self.restore_subs(stored.subs);
        *conn.acked().qos2_received.borrow_mut() = stored.qos2_received;
        let resend = self.restore_inflight(stored.inflight);
        let missed = self.replay(&databases, &subs, &stored.tracker);
        *conn.subs.borrow_mut() = subs;
        self.sessions.reindex(conn);
        *conn.extras().tracker.borrow_mut() = Some(Box::new(stored.tracker));
        tracing::info!(target: "mqtt", "{:?}: resumed with {} queued messages", self.client_id(), missed.len());
        self.send_missed(missed, resend);
    }

    /// The stored subscriptions still permitted, rejoining their shared groups.
    fn restore_subs(&self, stored: Vec<StoredSub>) -> (Vec<Sub>, Databases) {
        let mut databases: Databases = Vec::new();
        let mut subs = Vec::new();
        for s in stored {
            let (filter, db, table) = match self.resolve(&s.filter) {
                Ok(r) => r,
                Err(e) => {
                    tracing::info!(target: "mqtt", "{:?}: stored subscription {:?} dropped: {e}", self.client_id(), s.filter);
                    continue;
                }
            };
            if let Some(group) = filter.share() {
                // Messages to the group went to the members that were there.
                let key = share::key(group, filter.topic_filter());
                self.shared()
                    .groups
                    .join(&key, self.client_id(), || self.shared().stamp());
            } else {
                match databases.iter_mut().find(|(d, _)| d.name == db.name) {
                    Some((_, list)) => list.push(subs.len()),
                    None => databases.push((db, vec![subs.len()])),
                }
            }
            let readable = table.as_ref().and_then(|t| self.readable(&t.def));
            subs.push(Sub {
                filter,
                qos: s.qos,
                state: None,
                since: s.since,
                options: s.options,
                identifier: s.identifier,
                readable,
            });
        }
        (subs, databases)
    }

    /// Outbound publishes in flight when the session was stored: released ones (PUBREC came)
    /// get their PUBREL again now; the others are resent with their event, by packet id.
    fn restore_inflight(&self, stored: Vec<StoredInflight>) -> Resend {
        let conn = &self.conn;
        let mut resend = Resend::new();
        for f in stored {
            if f.released {
                conn.acked().inflight.borrow_mut().insert(
                    f.packet_id,
                    Inflight {
                        event: Some(f.event),
                        released: true,
                    },
                );
                conn.send(&Packet::PubRel(Ack::new(f.packet_id, 0)));
            } else {
                resend.insert((f.event.db, f.event.key), f.packet_id);
            }
        }
        resend
    }

    /// The events each database's audit log holds for `subs` past the tracker's positions, up
    /// to this core's dispatch horizon (live events at or below it are not sent again).
    fn replay(&self, databases: &Databases, subs: &[Sub], tracker: &Tracker) -> Vec<Missed> {
        let conn = &self.conn;
        let mut missed = Vec::new();
        for (db, indexes) in databases {
            let read = db
                .read()
                .and_then(|txn| durable::horizon(&txn, self.sessions.since(&db.name)));
            let horizon = match read {
                Ok(h) => h,
                Err(e) => {
                    tracing::warn!(target: "mqtt", "{:?}: resuming on {} failed: {e}", self.client_id(), db.name);
                    continue;
                }
            };
            conn.extras()
                .floor
                .borrow_mut()
                .get_or_insert_with(Box::default)
                .insert(db.name.clone(), horizon);
            let replay_subs: Vec<durable::ReplaySub<'_>> = indexes
                .iter()
                .filter_map(|i| subs.get(*i))
                .map(|s| durable::ReplaySub {
                    filter: &s.filter,
                    qos: s.qos,
                    since: s.since,
                })
                .collect();
            let export_of = |table: &str| self.shared().export_of(&db.name, table).cloned();
            let before = missed.len();
            match durable::replay(
                db,
                horizon,
                &replay_subs,
                tracker,
                &export_of,
                self.shared().session_queue_max,
                &mut missed,
            ) {
                Ok(0) => {}
                Ok(dropped) => tracing::warn!(target: "mqtt",
                    "{:?}: {dropped} queued messages of {} dropped, oldest first (mqtt.sessionQueueMax = {})",
                    self.client_id(), db.name, self.shared().session_queue_max),
                Err(e) => {
                    missed.truncate(before);
                    tracing::warn!(target: "mqtt", "{:?}: replaying {} failed: {e}", self.client_id(), db.name);
                }
            }
        }
        missed
    }

    /// Queues the missed events, trimmed to what the subscriber may read; a resent one goes with
    /// its old packet id and DUP = 1.
    fn send_missed(&self, missed: Vec<Missed>, mut resend: Resend) {
        let conn = &self.conn;
        for m in missed {
            let mut body = Vec::new();
            let readable = conn.subs.borrow().iter().find_map(|s| {
                let id = m.event.key.id.as_deref();
                s.filter
                    .matches(&m.export, id)
                    .then(|| s.readable.clone())
                    .flatten()
            });
            let mut qos = m.qos;
            let mut properties = Properties::default();
            let content_type = match (m.kind, &m.value, readable) {
                (ChangeKind::Delete, _, _) | (_, None, _) if !m.export.is_empty() => {
                    Some(payload::encode::<&Value>(None, &mut body))
                }
                (_, Some(v), Some(r)) if !m.export.is_empty() => {
                    Some(encode_trimmed(v, &r, &mut body))
                }
                (kind, value, _) => {
                    let now = crate::resource::now_ms();
                    let Some(out) = outbound_payload(&m.export, kind, value.as_ref(), now) else {
                        continue;
                    };
                    body = out.body;
                    qos = qos.min(out.qos_max);
                    properties = out.properties.unwrap_or_default();
                    out.content_type
                }
            };
            if qos == 0 {
                // Published at QoS 0: not kept for an offline session (MQTT 5 §3.1.2.4).
                continue;
            }
            let topic = topic_name(&m.export, m.event.key.id.as_deref());
            let resend_id = resend.remove(&(m.event.db.clone(), m.event.key.clone()));
            if !conn.publish(Outbound {
                topic,
                qos,
                retain: false,
                body,
                content_type,
                event: Some(m.event),
                resend_id,
                properties,
            }) {
                break;
            }
        }
    }
}
