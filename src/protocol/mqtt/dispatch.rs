//! Committed changes to this core's MQTT sessions (docs/mqtt.md): each change is offered to the
//! connections the core's topic index names for it (`index.rs`), matched against their
//! subscriptions and queued once per connection, at the highest granted QoS, trimmed to what the
//! subscriber may read; and the core's keep-alive sweep.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::{Rc, Weak};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::codec::Level;
use super::durable::{EventKey, EventRef};
use super::general;
use super::index::Index;
use super::origin::Origin;
use super::outbound::{Conn, Outbound, Shared};
use super::payload;
use super::props::{Properties, Property};
use super::share;
use super::shared::MqttShared;
use super::subscribe::{NO_LOCAL, RETAIN_AS_PUBLISHED};
use crate::change::{Change, ChangeKind, Commit};
use crate::resource::permissions::ReadableAttributes;
use crate::value::{self, Value};

/// The MQTT sessions of one core, fed committed changes by the core's dispatcher task.
pub struct Sessions {
    /// What all cores share (each session reaches it here rather than holding it).
    pub(super) shared: Arc<MqttShared>,
    /// Every connection of the core, for the keep-alive sweep and `$SYS` (never per change).
    pub(super) conns: RefCell<Vec<Weak<Conn>>>,
    /// Topic → subscribed connections: who a change is offered to.
    pub(super) index: RefCell<Index>,
    /// Connections with a subscription whose initial state still streams.
    pub(super) streaming: RefCell<Vec<Weak<Conn>>>,
    next_slot: Cell<u64>,
    /// This core's copy of the shared subscription groups.
    pub(super) groups: RefCell<share::View>,
    /// Per database, the newest commit dispatched on this core; every older one was too.
    pub(super) dispatched: RefCell<HashMap<Arc<str>, f64>>,
    pub(super) start_version: f64,
    /// The core's pubsub counters: the sweep reports queued outbound bytes there.
    pub(super) counters: Arc<crate::pubsub::Counters>,
    /// This core's `$SYS` message counts.
    pub(super) sys: Arc<super::sys::CoreCounts>,
}

impl Sessions {
    /// A core's sessions: its dispatch starts at [`MqttShared::start_version`], it counts in a
    /// [`MqttShared::sys_core`] of its own.
    pub fn new(shared: Arc<MqttShared>, counters: Arc<crate::pubsub::Counters>) -> Self {
        let (start_version, sys) = (shared.start_version(), shared.sys_core());
        super::sys::count_here(sys.clone());
        Sessions {
            shared,
            sys,
            conns: RefCell::new(Vec::new()),
            index: RefCell::new(Index::default()),
            streaming: RefCell::new(Vec::new()),
            next_slot: Cell::new(1),
            groups: RefCell::new(share::View::default()),
            dispatched: RefCell::new(HashMap::new()),
            start_version,
            counters,
        }
    }

    /// Registers a connection whose CONNECT was accepted: swept, and filed in the index as it
    /// subscribes.
    pub(super) fn register(&self, conn: &Rc<Conn>) {
        conn.slot.set(self.next_slot.get());
        self.next_slot.set(self.next_slot.get() + 1);
        self.conns.borrow_mut().push(Rc::downgrade(conn));
    }

    /// The server is shutting down: stops every connection of the core (their read loops wait
    /// on their kicks, not on the shutdown signal, so an idle connection holds no waiter slot
    /// there).
    pub fn stop_all(&self) {
        let conns: Vec<Rc<Conn>> = self
            .conns
            .borrow()
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
        for conn in conns {
            conn.stop();
        }
    }

    /// Re-files `conn` in the index after its subscriptions changed.
    pub(super) fn reindex(&self, conn: &Rc<Conn>) {
        self.index.borrow_mut().update(conn);
    }

    /// Takes `conn` out of the index (its connection ended).
    pub(super) fn forget(&self, conn: &Conn) {
        self.index.borrow_mut().forget(conn);
    }

    /// `conn` has a subscription whose initial state streams: it is settled after each commit.
    pub(super) fn streams(&self, conn: &Rc<Conn>) {
        let mut streaming = self.streaming.borrow_mut();
        if !streaming
            .iter()
            .any(|c| std::ptr::eq(c.as_ptr(), Rc::as_ptr(conn)))
        {
            streaming.push(Rc::downgrade(conn));
        }
    }

    /// Every commit of `database` up to this version has been dispatched on this core.
    pub(super) fn since(&self, database: &str) -> f64 {
        self.dispatched
            .borrow()
            .get(database)
            .copied()
            .unwrap_or(self.start_version)
    }

    /// Kicks every connection whose keep-alive passed without a packet (and forgets closed
    /// ones), and reports the bytes the connections hold queued and the buffers they hold
    /// (`/health?verbose`). Called by
    /// each core every [`KEEP_ALIVE_SWEEP`].
    pub fn sweep_keep_alive(&self) {
        let now_ms = super::conn::millis();
        let mut conns = self.conns.borrow_mut();
        conns.retain(|c| c.strong_count() > 0);
        let (mut queued, mut buffers) = (0usize, 0usize);
        for conn in conns.iter().filter_map(Weak::upgrade) {
            buffers += conn.out.borrow().capacity() + conn.read_held.get() as usize;
            queued += conn.out.borrow().len() + conn.backlog_bytes();
            // MQTT §3.1.2.10: one and a half times the Keep Alive.
            let limit_ms = u32::from(conn.keep_alive_s.get()) * 1500;
            let late = limit_ms > 0 && now_ms.wrapping_sub(conn.heard_ms.get()) > limit_ms;
            if late && !conn.expired.get() {
                conn.expired.set(true);
                conn.kick.kick();
            }
        }
        self.counters
            .mqtt_queued_bytes
            .store(queued as u64, Ordering::Relaxed);
        self.counters
            .mqtt_buffer_bytes
            .store(buffers as u64, Ordering::Relaxed);
    }

    /// Delivers every change of `commit` to each matching session of this core, once per session
    /// at the highest granted QoS among its matching filters.
    pub fn dispatch(&self, shared: &MqttShared, commit: &Commit) {
        self.deliver(shared, commit);
        // Only after matching: while this commit is matched, a state chunk whose snapshot held
        // it must not count as settled (see `pubsub::state`).
        let since = {
            let mut dispatched = self.dispatched.borrow_mut();
            let v = dispatched
                .entry(commit.database.clone())
                .or_insert(self.start_version);
            *v = v.max(commit.version);
            *v
        };
        let mut fill = Vec::new();
        self.streaming.borrow_mut().retain(|c| {
            let Some(conn) = c.upgrade() else {
                return false;
            };
            if conn.settle_state(&commit.database, since) {
                fill.push(conn.clone());
            }
            conn.has_state()
        });
        for conn in fill {
            conn.fill_state(self);
        }
    }

    /// Offers every change of `commit` to the connections the index names for it.
    fn deliver(&self, shared: &MqttShared, commit: &Commit) {
        let now = crate::resource::now_ms();
        let origin = Origin::of(commit);
        for change in &commit.changes {
            let Some(export) = shared.export_of(&commit.database, &change.table) else {
                continue;
            };
            // Messages to the bare table topic carry a null key.
            let id = match (&change.kind, &change.key) {
                (ChangeKind::Message, Value::Null) => None,
                (_, key) => Some(id_text(key)),
            };
            let topic = topic_name(export, id.as_deref());
            let candidates = self.index.borrow().candidates(export, &topic);
            if candidates.is_empty() {
                continue;
            }
            let target = Target { export, id, topic };
            let Some(mut delivery) = Delivery::new(commit, change, target, origin.clone(), now)
            else {
                continue;
            };
            for conn in candidates {
                delivery.offer(shared, &self.groups, &conn);
            }
        }
    }
}

/// Where a change goes out: its export, its record id as a topic level (none for a message to
/// the bare table topic) and the topic name.
struct Target<'c> {
    export: &'c str,
    id: Option<String>,
    topic: String,
}

/// One change on its way to a core's sessions: what every subscriber gets alike, and the bodies
/// trimmed for restricted subscribers so far (encoded once per attribute set).
struct Delivery<'c> {
    commit: &'c Commit,
    change: &'c Change,
    export: &'c str,
    origin: Option<Arc<Origin>>,
    /// The record id as a topic level; none for a message to the bare table topic.
    id: Option<String>,
    topic: String,
    out: Payload,
    /// The v5 properties passed on (the publisher's, or a general topic's stored ones).
    passed_on: Properties,
    /// Trimmed bodies for restricted subscribers, one per distinct attribute set.
    trimmed: Vec<(Rc<ReadableAttributes>, Vec<u8>, Option<&'static str>)>,
    /// The change's key encoded, for subscriptions whose state still streams.
    encoded_key: Option<Vec<u8>>,
    /// The PUBLISH encoded once per (level, QoS, RETAIN) for subscribers alike.
    shared: Vec<Shared>,
    /// The shared-group pick of this change (`share::pick_hash`) and the last group key built,
    /// computed once for all the members asked rather than once per member.
    pick: Option<u64>,
    share_key: String,
}

/// What a connection's subscriptions matching one change add up to.
struct Matched {
    /// The highest granted QoS among them.
    qos: u8,
    /// One of them has Retain As Published.
    as_published: bool,
    /// The passed-on properties and their subscription identifiers.
    properties: Properties,
    readable: Option<Rc<ReadableAttributes>>,
}

impl<'c> Delivery<'c> {
    /// None when nothing goes out: a cleared or expired general topic message, or a publish
    /// whose Message Expiry Interval has passed.
    fn new(
        commit: &'c Commit,
        change: &'c Change,
        target: Target<'c>,
        origin: Option<Arc<Origin>>,
        now: f64,
    ) -> Option<Self> {
        let Target { export, id, topic } = target;
        let out = outbound_payload(export, change.kind, change.value.as_ref(), now)?;
        let passed_on = match (&out.properties, &origin) {
            (Some(p), _) => p.clone(),
            // None: its Message Expiry Interval has passed.
            (None, Some(n)) => n.outbound(now)?,
            (None, None) => Properties::default(),
        };
        Some(Delivery {
            commit,
            change,
            export,
            origin,
            id,
            topic,
            out,
            passed_on,
            trimmed: Vec::new(),
            encoded_key: None,
            shared: Vec::new(),
            pick: None,
            share_key: String::new(),
        })
    }

    /// Queues the change on `conn` if any of its subscriptions takes it.
    fn offer(&mut self, shared: &MqttShared, groups: &RefCell<share::View>, conn: &Conn) {
        let (commit, change) = (self.commit, self.change);
        let replayed = conn.extras_if_any().is_some_and(|e| {
            e.floor
                .borrow()
                .as_ref()
                .and_then(|f| f.get(&commit.database))
                .is_some_and(|f| commit.version <= *f)
        });
        if replayed {
            return;
        }
        let Some(matched) = self.matched(shared, groups, conn) else {
            return;
        };
        let mut qos = matched.qos.min(self.out.qos_max);
        // docs/mqtt.md: messages (and general topics, as in any broker) go out at most at the
        // QoS they were published with; record changes at the granted QoS.
        if let Some(n) = &self.origin {
            if change.kind == ChangeKind::Message || self.export.is_empty() {
                qos = qos.min(n.qos);
            }
        }
        let event = (qos > 0 && conn.durable()).then(|| EventRef {
            db: commit.database.clone(),
            key: EventKey {
                version: commit.version,
                table: change.table.clone(),
                id: self.id.clone(),
            },
        });
        // MQTT 5 §3.8.3.1: Retain As Published keeps the publisher's RETAIN flag.
        let retain = matched.as_published && self.origin.as_ref().is_some_and(|n| n.retain);
        // Alike for every subscriber with no properties of its own (subscription identifiers)
        // and the whole record to read: encoded once, copied into each buffer.
        let alike =
            matched.readable.is_none() && matched.properties.0.len() == self.passed_on.0.len();
        if alike {
            let shared = self.shared(conn.level, qos, retain);
            if conn.takes_shared(qos, shared.bytes.len()) {
                conn.publish_shared(shared, event);
                return;
            }
        }
        let Some((body, content_type)) = self.body_for(matched.readable) else {
            return;
        };
        conn.publish(Outbound {
            topic: self.topic.clone(),
            qos,
            retain,
            body,
            content_type,
            event,
            resend_id: None,
            properties: matched.properties,
        });
    }

    /// This change's PUBLISH at `level`, `qos` and `retain` for every subscriber alike,
    /// encoded at its first use.
    fn shared(&mut self, level: Level, qos: u8, retain: bool) -> &Shared {
        let found = self
            .shared
            .iter()
            .position(|s| s.level == level && s.qos == qos && s.retain == retain);
        let at = match found {
            Some(at) => at,
            None => {
                let o = Outbound {
                    topic: self.topic.clone(),
                    qos,
                    retain,
                    body: self.out.body.clone(),
                    content_type: self.out.content_type,
                    event: None,
                    resend_id: None,
                    properties: self.passed_on.clone(),
                };
                self.shared.push(Shared::encode(level, o));
                self.shared.len() - 1
            }
        };
        &self.shared[at]
    }

    /// The subscriptions of `conn` that take this change, merged; none when no subscription
    /// does (No Local, another member of a shared group chosen, a streaming state that holds
    /// the change).
    fn matched(
        &mut self,
        shared: &MqttShared,
        groups: &RefCell<share::View>,
        conn: &Conn,
    ) -> Option<Matched> {
        let (commit, change, export) = (self.commit, self.change, self.export);
        let id = self.id.as_deref();
        let own = self
            .origin
            .as_ref()
            .is_some_and(|n| Some(n.client_id.as_str()) == conn.client_id.get().map(|c| &**c));
        let mut qos = None;
        let mut as_published = false;
        let mut properties = self.passed_on.clone();
        let mut readable = None;
        for sub in conn.subs.borrow().iter() {
            if !sub.filter.matches(export, id) {
                continue;
            }
            if own && sub.options & NO_LOCAL != 0 {
                continue;
            }
            if let Some(group) = sub.filter.share() {
                share::key_into(group, sub.filter.topic_filter(), &mut self.share_key);
                let pick = *self
                    .pick
                    .get_or_insert_with(|| share::pick_hash(commit.version, &change.table, id));
                let me = conn.client_id.get().map_or("", |c| c);
                let mut view = groups.borrow_mut();
                if !shared
                    .groups
                    .is_picked(&mut view, &self.share_key, commit.version, pick, me)
                {
                    continue;
                }
            }
            if change.kind != ChangeKind::Message {
                if let Some(cursor) = &sub.state {
                    if self.encoded_key.is_none() {
                        let mut out = Vec::with_capacity(32);
                        if value::key::encode(&change.key, &mut out).is_ok() {
                            self.encoded_key = Some(out);
                        }
                    }
                    let covered = self
                        .encoded_key
                        .as_deref()
                        .is_some_and(|k| cursor.covers(k, commit.version));
                    if covered {
                        continue;
                    }
                }
            }
            qos = Some(qos.map_or(sub.qos, |q: u8| q.max(sub.qos)));
            as_published |= sub.options & RETAIN_AS_PUBLISHED != 0;
            // Each identifier once: two matching filters subscribed with the same identifier
            // give the message that identifier, not the same one twice.
            if let Some(i) = sub.identifier {
                if !properties.0.contains(&Property::SubscriptionIdentifier(i)) {
                    properties.push(Property::SubscriptionIdentifier(i));
                }
            }
            readable = readable.or_else(|| sub.readable.clone());
        }
        Some(Matched {
            qos: qos?,
            as_published,
            properties,
            readable,
        })
    }

    /// The body and content type for a subscriber limited to `readable` (docs/security.md:
    /// trimmed to its readable attributes, encoded once per attribute set per change).
    fn body_for(
        &mut self,
        readable: Option<Rc<ReadableAttributes>>,
    ) -> Option<(Vec<u8>, Option<&'static str>)> {
        match (readable, &self.change.value) {
            (Some(r), Some(v)) if self.change.kind != ChangeKind::Delete => {
                let at = match self.trimmed.iter().position(|(set, _, _)| **set == *r) {
                    Some(at) => at,
                    None => {
                        let mut out = Vec::new();
                        let ct = encode_trimmed(v, &r, &mut out);
                        self.trimmed.push((r, out, Some(ct)));
                        self.trimmed.len() - 1
                    }
                };
                let (_, body, ct) = self.trimmed.get(at)?;
                Some((body.clone(), *ct))
            }
            _ => Some((self.out.body.clone(), self.out.content_type)),
        }
    }
}

/// The topic an event goes out on: `<export>/<id>`, the bare export, or a general topic as is.
pub(super) fn topic_name(export: &str, id: Option<&str>) -> String {
    match id {
        Some(id) if export.is_empty() => id.to_string(),
        Some(id) => {
            let mut name = String::with_capacity(export.len() + 1 + id.len());
            name.push_str(export);
            name.push('/');
            name.push_str(id);
            name
        }
        None => export.to_string(),
    }
}

/// What an event carries out, before per-subscriber choices.
pub(super) struct Payload {
    pub(super) body: Vec<u8>,
    pub(super) content_type: Option<&'static str>,
    /// The QoS it may go out at most with (a general publish's own QoS).
    pub(super) qos_max: u8,
    /// The properties a general publish stored; none for tables (their publish's origin carries them).
    pub(super) properties: Option<Properties>,
}

/// The payload of an event (docs/mqtt.md: a delete is `null`); general topics carry the bytes and
/// properties published, nothing for a cleared retained message or an expired one.
pub(super) fn outbound_payload(
    export: &str,
    kind: ChangeKind,
    value: Option<&Value>,
    now_ms: f64,
) -> Option<Payload> {
    if export.is_empty() {
        let envelope = general::Envelope::open(kind, value)?;
        let properties = envelope.outbound(now_ms)?;
        return Some(Payload {
            body: envelope.payload,
            content_type: None,
            qos_max: envelope.qos,
            properties: Some(properties),
        });
    }
    let mut body = Vec::new();
    let content_type = match kind {
        ChangeKind::Delete => payload::encode::<&Value>(None, &mut body),
        _ => payload::encode(Some(value.unwrap_or(&Value::Null)), &mut body),
    };
    Some(Payload {
        body,
        content_type: Some(content_type),
        qos_max: 2,
        properties: None,
    })
}

/// A record or message as a subscriber limited to `readable` receives it (docs/security.md: events and
/// retained state are trimmed by attribute read permissions). Returns the content type.
pub(super) fn encode_trimmed(
    value: &Value,
    readable: &ReadableAttributes,
    out: &mut Vec<u8>,
) -> &'static str {
    let mut value = value.clone();
    readable.trim(&mut value);
    payload::encode(Some(&value), out)
}

/// A record id as a topic level: strings as they are, numbers in canonical form.
pub(super) fn id_text(key: &Value) -> String {
    match key {
        Value::String(s) => s.clone(),
        Value::Int(i) => i.to_string(),
        other => {
            let mut out = Vec::new();
            value::json::write(other, &mut out);
            String::from_utf8(out).unwrap_or_default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_as_topic_levels() {
        assert_eq!(id_text(&Value::Int(12)), "12");
        assert_eq!(id_text(&Value::String("a/b".into())), "a/b");
        assert_eq!(id_text(&Value::Float(1.5)), "1.5");
    }
}
