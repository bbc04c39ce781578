//! SUBSCRIBE and UNSUBSCRIBE (docs/mqtt.md): filters resolved to the tables (or general topics)
//! they read and the caller's rights, shared subscription groups, and the current state of the
//! matching records streamed a chunk at a time as the client takes it (`pubsub::state`).

use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::codec::{self, Packet, SubAck, Subscribe, UnsubAck, Unsubscribe};
use super::conn::{Session, STATE_CHUNKS_PER_FILL, STATE_OUT_LOW};
use super::connect::permitted;
use super::dispatch::{encode_trimmed, id_text, outbound_payload, topic_name, Sessions};
use super::durable;
use super::general;
use super::outbound::{Conn, Outbound};
use super::payload;
use super::props::{Properties, Property};
use super::reason::{ReasonCode, SUBACK_FAILURE_V4};
use super::share;
use super::sys;
use super::topic::{Filter, TopicError};
use crate::change::ChangeKind;
use crate::pubsub::state::{Chunk, StateCursor, CHUNK_RECORDS_MAX};
use crate::resource;
use crate::resource::permissions::ReadableAttributes;
use crate::value;

/// One subscription of a session.
pub(super) struct Sub {
    pub(super) filter: Filter,
    pub(super) qos: u8,
    /// The initial state while it streams (`pubsub::state`): read a chunk at a time as the
    /// client takes it; a live change it holds, or will hold, is not sent (no duplicate, no gap
    /// between state and events).
    pub(super) state: Option<StateCursor>,
    /// Events at or below this version predate the subscription (a durable replay starts above).
    pub(super) since: f64,
    /// The v5 subscription options byte as subscribed (kept with a durable session).
    pub(super) options: u8,
    pub(super) identifier: Option<u32>,
    /// The subscriber's readable attributes when its role restricts them (docs/security.md).
    pub(super) readable: Option<Rc<ReadableAttributes>>,
}

/// Subscription option bits (MQTT 5 §3.8.3.1).
pub(super) const NO_LOCAL: u8 = 0x04;
pub(super) const RETAIN_AS_PUBLISHED: u8 = 0x08;

/// The v5 subscription options byte (MQTT 5 §3.8.3.1) of parsed options.
pub(super) fn options_byte(o: &codec::SubOptions) -> u8 {
    o.qos.min(2)
        | u8::from(o.no_local) << 2
        | u8::from(o.retain_as_published) << 3
        | (o.retain_handling.min(2) << 4)
}

/// How one record of a subscription's initial state goes out: content type, QoS, properties.
pub(super) struct Shape(Option<&'static str>, u8, Properties);

/// One record of a subscription's initial state as a PUBLISH body (trimmed to `readable` when
/// the role restricts attributes; a general topic's bytes and properties as published).
pub(super) fn state_body(
    general: bool,
    readable: Option<&ReadableAttributes>,
    qos: u8,
    archived: &value::ArchivedValue,
    body: &mut Vec<u8>,
) -> Result<Shape, crate::resource::StoreError> {
    let corrupt = |e| crate::resource::StoreError::Corrupt(format!("record: {e}"));
    match readable {
        None if general => value::deserialize(archived).map_err(corrupt).map(|v| {
            let now = crate::resource::now_ms();
            match outbound_payload("", ChangeKind::Put, Some(&v), now) {
                Some(out) => {
                    *body = out.body;
                    let props = out.properties.unwrap_or_default();
                    Shape(None, qos.min(out.qos_max), props)
                }
                None => Shape(None, qos, Properties::default()),
            }
        }),
        None => Ok(Shape(
            Some(payload::encode(Some(archived), body)),
            qos,
            Properties::default(),
        )),
        Some(r) => value::deserialize(archived).map_err(corrupt).map(|v| {
            Shape(
                Some(encode_trimmed(&v, r, body)),
                qos,
                Properties::default(),
            )
        }),
    }
}

/// A subscription filter with the database it reads and its table (none: general topics).
pub(super) type Resolved = (
    Filter,
    Arc<crate::resource::Database>,
    Option<Arc<crate::resource::Table>>,
);

/// Why a subscription filter names nothing this session may read.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Unresolved {
    Filter(TopicError),
    NoExport,
    NotPermitted,
}

impl std::fmt::Display for Unresolved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unresolved::Filter(e) => e.fmt(f),
            Unresolved::NoExport => f.write_str("no such export"),
            Unresolved::NotPermitted => f.write_str("not permitted"),
        }
    }
}

impl Conn {
    /// Whether a subscription's initial state is still streaming or unsettled.
    pub(super) fn has_state(&self) -> bool {
        self.subs.borrow().iter().any(|s| s.state.is_some())
    }

    /// Forgets the settled chunks of streaming states on `database` (every commit up to `since`
    /// dispatched), and the states read and settled whole. True if a state still has records
    /// to read.
    pub(super) fn settle_state(&self, database: &str, since: f64) -> bool {
        let mut pending = false;
        for sub in self.subs.borrow_mut().iter_mut() {
            let Some(cursor) = sub.state.as_mut() else {
                continue;
            };
            if *cursor.database().name == *database {
                cursor.settle(since);
                if cursor.is_settled() {
                    sub.state = None;
                    continue;
                }
            }
            pending |= !cursor.is_done();
        }
        pending
    }

    /// Sends the streaming initial state of this connection's subscriptions a chunk at a time,
    /// each chunk read in its own short transaction, while the outbound buffer holds less than
    /// `STATE_OUT_LOW` and, at QoS ≥ 1, the client's window has room: so a client that stops
    /// reading (or acknowledging) holds no transaction and a bounded buffer, whatever the table
    /// size. Called after SUBACK, when the writer drained the buffer, when an acknowledgement
    /// opens the window, and after each dispatched commit.
    pub(super) fn fill_state(&self, sessions: &Sessions) {
        for _ in 0..STATE_CHUNKS_PER_FILL {
            if self.closing.get() || self.overflowed.get() || self.state_failed.get() {
                return;
            }
            if self.out.borrow().len() >= STATE_OUT_LOW {
                return;
            }
            let mut found: Vec<(String, Vec<u8>, Shape)> = Vec::new();
            let (export, identifier) = {
                let mut subs = self.subs.borrow_mut();
                let Some(sub) = subs
                    .iter_mut()
                    .find(|s| s.state.as_ref().is_some_and(|c| !c.is_done()))
                else {
                    return;
                };
                let room = if sub.qos == 0 {
                    CHUNK_RECORDS_MAX
                } else if !self.acked().backlog.borrow().is_empty() {
                    0
                } else {
                    usize::from(self.window).saturating_sub(self.acked().inflight.borrow().len())
                };
                if room == 0 {
                    return;
                }
                let Sub {
                    filter,
                    qos,
                    readable,
                    identifier,
                    state: Some(cursor),
                    ..
                } = sub
                else {
                    return;
                };
                let export = filter.export().to_string();
                let general = filter.is_general() || filter.is_every();
                let since = sessions.since(&cursor.database().name);
                let result =
                    cursor.read_chunk(since, room.min(CHUNK_RECORDS_MAX), |key, record| {
                        let Ok(key) = value::key::decode(key) else {
                            return Ok(None);
                        };
                        let id = id_text(&key);
                        if !filter.matches(&export, Some(&id)) {
                            return Ok(None);
                        }
                        let mut body = Vec::new();
                        let shape = state_body(
                            general,
                            readable.as_deref(),
                            *qos,
                            record.value,
                            &mut body,
                        )?;
                        let bytes = body.len();
                        found.push((id, body, shape));
                        Ok(Some(bytes))
                    });
                match result {
                    Ok(Chunk::Read(_)) | Ok(Chunk::Done) => {}
                    Ok(Chunk::Blocked) => return, // dispatch catches up, then fills again
                    Err(e) => {
                        tracing::warn!(target: "mqtt", "{:?}: reading the state for {:?} failed: {e}; closing",
                            self.client_id.get(), filter.as_str());
                        sub.state = None;
                        self.state_failed.set(true);
                        self.kick.kick();
                        return;
                    }
                }
                (export, *identifier)
            };
            for (id, body, Shape(content_type, qos, mut properties)) in found {
                if let Some(i) = identifier {
                    properties.push(Property::SubscriptionIdentifier(i));
                }
                if !self.publish(Outbound {
                    topic: topic_name(&export, Some(&id)),
                    qos,
                    retain: true,
                    body,
                    content_type,
                    event: None,
                    resend_id: None,
                    properties,
                }) {
                    return;
                }
            }
        }
        // Chunks that matched little (a narrow filter over a large table): go on later.
        self.state_more.set(true);
        self.wake_writer();
    }
}

impl Session {
    /// The caller's readable attributes of a table when its role restricts them (docs/security.md).
    pub(super) fn readable(&self, def: &crate::schema::TableDef) -> Option<Rc<ReadableAttributes>> {
        resource::permissions::readable_attributes(
            &self.caller,
            &def.database,
            &def.table,
            def.primary_key.as_deref(),
        )
        .map(Rc::new)
    }

    /// What a subscription filter reads: a table of an export, or — with `mqtt.generalTopics`
    /// and a first level that names no export — general topics (`table` none).
    pub(super) fn resolve(&self, raw: &str) -> Result<Resolved, Unresolved> {
        if self.caller.super_user && Filter::starts_with_wildcard(raw) {
            // docs/mqtt.md: the super user's `#` and `+/…` cover every export (and general
            // topics when on); they carry the system database's position like general filters.
            return self.plain(Filter::parse_every(raw));
        }
        let exported = Filter::parse(raw).map(|f| {
            let found = self.shared().resources.export(f.export());
            (f, found)
        });
        match exported {
            Ok((filter, Some((db, table)))) => {
                if !permitted(&self.caller, "read", &table.def.database, &table.def.table) {
                    return Err(Unresolved::NotPermitted);
                }
                Ok((filter, db, Some(table)))
            }
            _ if self.shared().general_topics => self.plain(Filter::parse_general(raw)),
            Ok((_, None)) => Err(Unresolved::NoExport),
            Err(e) => Err(Unresolved::Filter(e)),
        }
    }

    /// A filter with plain MQTT matching (general, or over every export), read with the
    /// position of the system database that holds general topics.
    fn plain(&self, parsed: Result<Filter, TopicError>) -> Result<Resolved, Unresolved> {
        let filter = parsed.map_err(Unresolved::Filter)?;
        let (db, _) = self
            .shared()
            .resources
            .table(durable::SYSTEM, general::TABLE)
            .ok_or(Unresolved::NoExport)?;
        Ok((filter, db, None))
    }

    /// SUBSCRIBE: each filter resolved and granted (or refused with its code), SUBACK, then the
    /// current state of the records the new filters match.
    pub(super) fn on_subscribe(&self, s: Subscribe) {
        let v5 = self.v5();
        let mut codes = Vec::with_capacity(s.filters.len());
        let mut initial = Vec::new();
        let mut sys_initial = Vec::new();
        for (raw, options) in &s.filters {
            if sys::is_sys(raw) {
                codes.push(self.subscribe_sys(raw, options.retain_handling, &mut sys_initial));
                continue;
            }
            let (filter, db, table) = match self.resolve(raw) {
                Ok(r) => r,
                Err(e) => {
                    tracing::info!(target: "mqtt", "subscribe to {raw:?} refused: {e}");
                    codes.push(match (v5, e) {
                        (false, _) => SUBACK_FAILURE_V4,
                        (true, Unresolved::Filter(TopicError::Shared)) => {
                            ReasonCode::SharedNotSupported.byte()
                        }
                        (true, Unresolved::NotPermitted) => ReasonCode::NotAuthorized.byte(),
                        (true, _) => ReasonCode::TopicFilterInvalid.byte(),
                    });
                    continue;
                }
            };
            let mut subs = self.conn.subs.borrow_mut();
            let existing = subs.iter().position(|x| x.filter.as_str() == raw);
            let is_new = existing.is_none();
            if is_new && subs.len() >= durable::SUBSCRIPTIONS_MAX {
                codes.push(if v5 {
                    ReasonCode::QuotaExceeded.byte()
                } else {
                    SUBACK_FAILURE_V4
                });
                continue;
            }
            let sub = Sub {
                filter: filter.clone(),
                qos: options.qos,
                state: None,
                since: self.sessions.since(&db.name),
                options: options_byte(options),
                identifier: s.properties.subscription_identifier(),
                readable: table.as_ref().and_then(|t| self.readable(&t.def)),
            };
            match existing {
                Some(i) => {
                    if let Some(slot) = subs.get_mut(i) {
                        *slot = sub;
                    }
                }
                None => subs.push(sub),
            }
            codes.push(options.qos);
            if options.retain_as_published {
                self.shared()
                    .retain_as_published
                    .store(true, Ordering::Relaxed);
            }
            let send_state = match options.retain_handling {
                0 => true,
                1 => is_new,
                _ => false,
            };
            if let Some(group) = filter.share() {
                // docs/mqtt.md: shared subscriptions get no initial state.
                let key = share::key(group, filter.topic_filter());
                self.shared()
                    .groups
                    .join(&key, self.client_id(), || self.shared().stamp());
                continue;
            }
            // docs/mqtt.md: a filter over every export gets the current state of general topics
            // (when on), not of tables.
            let state_kept = !filter.is_every() || self.shared().general_topics;
            if send_state && filter.matches_records() && state_kept {
                initial.push(filter);
            }
        }
        self.sessions.reindex(&self.conn);
        self.conn.send(&Packet::SubAck(SubAck {
            packet_id: s.packet_id,
            properties: Properties::default(),
            codes,
        }));
        self.conn.send_sys(self.shared(), &sys_initial, true);
        for filter in &initial {
            self.start_state(filter);
        }
        if !initial.is_empty() {
            self.conn.fill_state(&self.sessions);
        }
    }

    /// A `$SYS` filter (docs/mqtt.md#sys-topics): the super user's only, granted at QoS 0;
    /// its values go out after the SUBACK unless Retain Handling says not to (into `initial`).
    /// Returns the SUBACK code.
    fn subscribe_sys(&self, raw: &str, retain_handling: u8, initial: &mut Vec<String>) -> u8 {
        let v5 = self.v5();
        let refused = |e: Unresolved| {
            tracing::info!(target: "mqtt", "subscribe to {raw:?} refused: {e}");
            match e {
                _ if !v5 => SUBACK_FAILURE_V4,
                Unresolved::NotPermitted => ReasonCode::NotAuthorized.byte(),
                _ => ReasonCode::TopicFilterInvalid.byte(),
            }
        };
        if !self.caller.super_user {
            return refused(Unresolved::NotPermitted);
        }
        if let Err(e) = Filter::parse_general(raw) {
            return refused(Unresolved::Filter(e));
        }
        let mut subs = self.conn.extras().sys_subs.borrow_mut();
        let is_new = !subs.iter().any(|s| s == raw);
        if is_new {
            if subs.len() >= durable::SUBSCRIPTIONS_MAX {
                return if v5 {
                    ReasonCode::QuotaExceeded.byte()
                } else {
                    SUBACK_FAILURE_V4
                };
            }
            subs.push(raw.to_string());
        }
        if retain_handling == 0 || (retain_handling == 1 && is_new) {
            initial.push(raw.to_string());
        }
        0
    }

    /// UNSUBSCRIBE: each filter removed (leaving its shared group), UNSUBACK.
    pub(super) fn on_unsubscribe(&self, u: Unsubscribe) {
        let mut codes = Vec::new();
        {
            let mut subs = self.conn.subs.borrow_mut();
            let mut sys_subs = self.conn.extras().sys_subs.borrow_mut();
            for f in &u.filters {
                let before = subs.len() + sys_subs.len();
                let removed = subs.iter().find(|s| s.filter.as_str() == f);
                if let Some(filter) = removed.map(|s| &s.filter) {
                    if let Some(group) = filter.share() {
                        let key = share::key(group, filter.topic_filter());
                        self.shared()
                            .groups
                            .leave(&key, self.client_id(), || self.shared().stamp());
                    }
                }
                subs.retain(|s| s.filter.as_str() != f);
                sys_subs.retain(|s| s != f);
                codes.push(if subs.len() + sys_subs.len() < before {
                    ReasonCode::Success.byte()
                } else {
                    ReasonCode::NoSubscriptionExisted.byte()
                });
            }
        }
        self.sessions.reindex(&self.conn);
        self.conn.send(&Packet::UnsubAck(UnsubAck {
            packet_id: u.packet_id,
            properties: Properties::default(),
            codes,
        }));
    }

    /// Starts streaming the current state of every record `filter` matches as retained
    /// PUBLISHes (see [`Conn::fill_state`]); live events it holds are not sent again.
    pub(super) fn start_state(&self, filter: &Filter) {
        let target = if filter.is_general() || filter.is_every() {
            self.shared()
                .resources
                .table(durable::SYSTEM, general::TABLE)
        } else {
            self.shared().resources.export(filter.export())
        };
        let Some((db, table)) = target else {
            return;
        };
        let cursor = match filter.exact_id() {
            Some(raw) => match resource::parse_id(&table.def, &raw) {
                Ok(key) => StateCursor::record(db, table, &key),
                Err(_) => return, // names no record; events may still come
            },
            None => StateCursor::new(db, table),
        };
        let mut subs = self.conn.subs.borrow_mut();
        if let Some(sub) = subs
            .iter_mut()
            .find(|s| s.filter.as_str() == filter.as_str())
        {
            sub.state = Some(cursor);
            self.sessions.streams(&self.conn);
        }
    }
}
