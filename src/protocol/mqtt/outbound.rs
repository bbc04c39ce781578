//! The outbound side of one connection (docs/mqtt.md): the buffer its writer task flushes, QoS ≥ 1
//! publishes in flight and the client's receive window, the backlog waiting for it, topic
//! aliases we assign, and the durable part of the state to store.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::future::poll_fn;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use tidepool_io::{Spares, WriteBytes};

use super::codec::{self, Connect, Level, Packet, Publish};
use super::conn::{INFLIGHT_MAX, OUT_BYTES_MAX};
use super::connect::Kick;
use super::dispatch::Sessions;
use super::durable::{EventRef, Stored, StoredInflight, StoredSub, Tracker};
use super::props::{Properties, Property};
use super::shared::MqttShared;
use super::subscribe::Sub;

/// State most connections never use, allocated at first use: an empty `HashMap` takes 48 bytes
/// in place, an absent box 8, and every idle connection would carry the difference
/// (docs/design.md, "Idle connections").
pub(super) type Rare<T> = Option<Box<T>>;

/// Per database, the version up to which a resumed session's replay covered live events.
pub(super) type Floors = HashMap<Arc<str>, f64>;

/// An outbound QoS ≥ 1 publish awaiting its acknowledgement.
pub(super) struct Inflight {
    /// The event it carried, for a durable session's acknowledgement position.
    pub(super) event: Option<EventRef>,
    /// PUBREC came (QoS 2): only PUBCOMP remains.
    pub(super) released: bool,
}

/// A PUBLISH waiting for room in the client's receive window.
pub(super) struct Outbound {
    pub(super) topic: String,
    pub(super) qos: u8,
    pub(super) retain: bool,
    pub(super) body: Vec<u8>,
    /// The payload's content type, sent as Content Type (v5) unless the properties carry one;
    /// none for general topics, whose bytes are passed on as they came.
    pub(super) content_type: Option<&'static str>,
    pub(super) event: Option<EventRef>,
    /// A resend's packet id from before the reconnect (sent with DUP = 1).
    pub(super) resend_id: Option<u16>,
    /// v5 properties beyond Content Type: the publisher's passed on, subscription identifiers.
    pub(super) properties: Properties,
}

/// The properties of an outbound PUBLISH at `level`: the publisher's passed on and the
/// payload's content type, unless the publisher's own Content Type wins (none at 3.1.1).
fn publish_properties(
    level: Level,
    passed_on: Properties,
    content_type: Option<&'static str>,
) -> Properties {
    let mut properties = Properties::default();
    if level == Level::V5 {
        if let (None, Some(ct)) = (passed_on.content_type(), content_type) {
            properties.push(Property::ContentType(ct.to_string()));
        }
        properties.0.extend(passed_on.0);
    }
    properties
}

/// One PUBLISH encoded once for every subscriber of a core it goes to alike: same protocol
/// level, QoS, RETAIN flag and properties, no topic alias. Each connection copies the bytes
/// and patches in its own packet id (docs/mqtt.md, "Scale").
pub(super) struct Shared {
    pub(super) level: Level,
    pub(super) qos: u8,
    pub(super) retain: bool,
    pub(super) bytes: Vec<u8>,
    /// Where the packet id sits in `bytes` (QoS ≥ 1).
    id_at: Option<usize>,
}

impl Shared {
    /// `o` encoded at `level`, its packet id left 0.
    pub(super) fn encode(level: Level, o: Outbound) -> Shared {
        let (qos, retain, topic_bytes) = (o.qos, o.retain, o.topic.len());
        let packet = Packet::Publish(Publish {
            dup: false,
            qos,
            retain,
            topic: o.topic,
            packet_id: 0,
            properties: publish_properties(level, o.properties, o.content_type),
            payload: o.body,
        });
        let mut bytes = Vec::new();
        codec::encode(&packet, level, &mut bytes);
        // After the fixed header (a byte and the remaining length's varint) and the topic.
        let header = 1 + bytes.iter().skip(1).take_while(|b| **b & 0x80 != 0).count() + 1;
        Shared {
            level,
            qos,
            retain,
            bytes,
            id_at: (qos > 0).then_some(header + 2 + topic_bytes),
        }
    }
}

/// Per-connection state shared by its reader, its writer and the core's dispatcher.
pub(super) struct Conn {
    pub(super) level: Level,
    /// Set once CONNECT is accepted (for No Local).
    pub(super) client_id: RefCell<String>,
    pub(super) out: RefCell<Vec<u8>>,
    pub(super) out_waker: Cell<Option<Waker>>,
    pub(super) closing: Cell<bool>,
    pub(super) subs: RefCell<Vec<Sub>>,
    pub(super) next_packet_id: Cell<u16>,
    /// Outbound QoS ≥ 1 packet ids awaiting PUBACK / PUBREC→PUBCOMP.
    pub(super) inflight: RefCell<HashMap<u16, Inflight>>,
    /// Inbound QoS 2 packet ids applied and awaiting PUBREL (at most [`RECEIVE_MAXIMUM`]).
    pub(super) qos2_received: RefCell<Vec<u16>>,
    /// QoS ≥ 1 publishes waiting, in order, for the window to open.
    pub(super) backlog: RefCell<VecDeque<Outbound>>,
    /// Unacknowledged QoS ≥ 1 publishes at once: the client's Receive Maximum (v5), at most
    /// `INFLIGHT_MAX`.
    pub(super) window: usize,
    /// Backlog bound; past it the connection closes with `0x97` (a durable session gets the rest
    /// from the audit log when it resumes).
    pub(super) backlog_max: usize,
    /// Acknowledgement positions, for durable sessions only.
    pub(super) tracker: RefCell<Option<Box<Tracker>>>,
    /// Per database: live events at or below this version were replayed when the session resumed
    /// (none until a session resumes).
    pub(super) floor: RefCell<Rare<Floors>>,
    /// The client's Maximum Packet Size (v5); larger outbound packets are not sent.
    pub(super) out_packet_bytes_max: usize,
    /// The client's Topic Alias Maximum (v5): aliases we may assign, and those assigned.
    pub(super) aliases_out_max: u16,
    pub(super) aliases_out: RefCell<Rare<HashMap<String, u16>>>,
    /// Set when an outbound bound was hit for a QoS ≥ 1 event: the reader closes with `0x97`.
    pub(super) overflowed: Cell<bool>,
    /// Set when a subscription's initial state could not be read (logged): the reader closes
    /// with `0x80` rather than leave a gap.
    pub(super) state_failed: Cell<bool>,
    /// A fill stopped at `STATE_CHUNKS_PER_FILL` with state left and room for it: the writer
    /// task fills again after yielding to the core's other tasks.
    pub(super) state_more: Cell<bool>,
    /// Bytes of buffer the connection's read half holds while it waits for more (none with
    /// nothing buffered on plain TCP), for the sweep's gauge.
    pub(super) read_held: Cell<usize>,
    /// When bytes last came from the client; with `keep_alive`, what the core's sweep checks.
    pub(super) heard: Cell<Instant>,
    pub(super) keep_alive: Cell<Option<Duration>>,
    /// Set by the sweep when `keep_alive` passed without a packet: the kick that follows closes
    /// with `0x8D`.
    pub(super) expired: Cell<bool>,
    pub(super) kick: Arc<Kick>,
    /// `$SYS` filters subscribed to (super user only; not kept with a durable session).
    pub(super) sys_subs: RefCell<Vec<String>>,
    /// This core's `$SYS` message counts (publishes sent are counted here).
    pub(super) counts: Arc<super::sys::CoreCounts>,
    /// This connection in its core's [`super::index::Index`]: its number there and the keys it
    /// is filed under.
    pub(super) slot: Cell<u64>,
    pub(super) keys: RefCell<Vec<super::index::Key>>,
}

impl Conn {
    /// A connection's state for an accepted `connect` whose session expires after `expiry_s`
    /// (0: ends with the connection).
    pub(super) fn new(
        connect: &Connect,
        expiry_s: u32,
        shared: &MqttShared,
        kick: Arc<Kick>,
        counts: Arc<super::sys::CoreCounts>,
    ) -> Conn {
        let level = connect.level;
        let out_packet_bytes_max = connect
            .properties
            .maximum_packet_size()
            .map_or(usize::MAX, |n| n as usize);
        let window = match connect.properties.receive_maximum() {
            Some(n) if level == Level::V5 => usize::from(n).clamp(1, INFLIGHT_MAX),
            _ => INFLIGHT_MAX,
        };
        Conn {
            level,
            client_id: RefCell::new(String::new()),
            out: RefCell::new(Vec::new()),
            out_waker: Cell::new(None),
            closing: Cell::new(false),
            subs: RefCell::new(Vec::new()),
            next_packet_id: Cell::new(0),
            inflight: RefCell::new(HashMap::new()),
            qos2_received: RefCell::new(Vec::new()),
            backlog: RefCell::new(VecDeque::new()),
            window,
            // docs/realtime.md: a clean session's outbound queue holds 1,000 events; a durable one
            // the session queue (and whatever does not fit waits in the audit log for the next
            // resume).
            backlog_max: if expiry_s > 0 {
                shared.session_queue_max.max(INFLIGHT_MAX)
            } else {
                INFLIGHT_MAX
            },
            tracker: RefCell::new((expiry_s > 0).then(Box::default)),
            floor: RefCell::new(None),
            out_packet_bytes_max,
            aliases_out_max: connect
                .properties
                .iter()
                .find_map(|p| match p {
                    Property::TopicAliasMaximum(n) => Some(*n),
                    _ => None,
                })
                .unwrap_or(0),
            aliases_out: RefCell::new(None),
            overflowed: Cell::new(false),
            state_failed: Cell::new(false),
            state_more: Cell::new(false),
            read_held: Cell::new(0),
            heard: Cell::new(Instant::now()),
            keep_alive: Cell::new(None),
            expired: Cell::new(false),
            kick,
            sys_subs: RefCell::new(Vec::new()),
            counts,
            slot: Cell::new(0),
            keys: RefCell::new(Vec::new()),
        }
    }

    pub(super) fn send(&self, packet: &Packet) {
        codec::encode(packet, self.level, &mut self.out_mut());
        self.wake_writer();
    }

    /// The outbound buffer to append to: a spare one of the core's when it holds none (a
    /// connection with nothing queued has none, see [`write_loop`]).
    pub(super) fn out_mut(&self) -> std::cell::RefMut<'_, Vec<u8>> {
        let mut out = self.out.borrow_mut();
        if out.capacity() == 0 {
            *out = OUT_SPARES.with(|spares| spares.take(1024));
        }
        out
    }

    pub(super) fn wake_writer(&self) {
        if let Some(w) = self.out_waker.take() {
            w.wake();
        }
        // A dispatcher-side overflow must end the reader too.
        if self.overflowed.get() {
            self.kick.kick();
        }
    }

    pub(super) fn overflow(&self) -> bool {
        self.overflowed.set(true);
        self.wake_writer();
        false
    }

    /// A packet id not in flight (the window keeps fewer than 65,535 in flight).
    pub(super) fn free_packet_id(&self) -> u16 {
        let inflight = self.inflight.borrow();
        let mut id = self.next_packet_id.get();
        loop {
            id = id.checked_add(1).unwrap_or(1);
            if !inflight.contains_key(&id) {
                self.next_packet_id.set(id);
                return id;
            }
        }
    }

    /// Queues one PUBLISH; false if a bound was hit (QoS 0: dropped; QoS ≥ 1: the connection is
    /// marked to close with `0x97`).
    pub(super) fn publish(&self, o: Outbound) -> bool {
        if self.out.borrow().len() > OUT_BYTES_MAX {
            return if o.qos > 0 { self.overflow() } else { false };
        }
        if o.qos == 0 {
            self.write_publish(o, 0, false);
            return true;
        }
        let mut backlog = self.backlog.borrow_mut();
        if !backlog.is_empty() || self.inflight.borrow().len() >= self.window {
            if backlog.len() >= self.backlog_max {
                drop(backlog);
                return self.overflow();
            }
            backlog.push_back(o);
            return true;
        }
        drop(backlog);
        self.send_acknowledged(o);
        true
    }

    /// Sends a QoS ≥ 1 publish now, remembering it until acknowledged.
    pub(super) fn send_acknowledged(&self, o: Outbound) {
        let resend = o
            .resend_id
            .filter(|id| !self.inflight.borrow().contains_key(id));
        let packet_id = resend.unwrap_or_else(|| self.free_packet_id());
        let event = o.event.clone();
        if !self.write_publish(o, packet_id, resend.is_some()) {
            // Too large for the client: discarded as if sent, so it must not hold a position.
            if let (Some(event), Some(t)) = (&event, self.tracker.borrow_mut().as_mut()) {
                t.acked(event);
            }
            return;
        }
        self.in_flight(packet_id, event);
    }

    /// A QoS ≥ 1 publish went out as `packet_id`: remembered until acknowledged.
    fn in_flight(&self, packet_id: u16, event: Option<EventRef>) {
        if let (Some(event), Some(t)) = (&event, self.tracker.borrow_mut().as_mut()) {
            t.sent(event);
        }
        self.inflight.borrow_mut().insert(
            packet_id,
            Inflight {
                event,
                released: false,
            },
        );
    }

    /// Whether a PUBLISH encoded once for many subscribers ([`Shared`]) fits this connection:
    /// no topic alias of its own to set, room in its receive window, nothing backlogged before
    /// it, and within its Maximum Packet Size.
    pub(super) fn takes_shared(&self, qos: u8, bytes: usize) -> bool {
        let aliases = self.level == Level::V5 && self.aliases_out_max > 0;
        let window = qos == 0
            || (self.backlog.borrow().is_empty() && self.inflight.borrow().len() < self.window);
        !aliases && window && bytes <= self.out_packet_bytes_max
    }

    /// Queues a PUBLISH encoded once for every subscriber it goes to alike (checked with
    /// [`Conn::takes_shared`]): copied into this connection's buffer, its packet id patched in.
    /// False if the outbound bound was hit (as [`Conn::publish`]).
    pub(super) fn publish_shared(&self, shared: &Shared, event: Option<EventRef>) -> bool {
        if self.out.borrow().len() > OUT_BYTES_MAX {
            return if shared.qos > 0 {
                self.overflow()
            } else {
                false
            };
        }
        let packet_id = (shared.qos > 0).then(|| self.free_packet_id());
        {
            let mut out = self.out_mut();
            let start = out.len();
            out.extend_from_slice(&shared.bytes);
            if let (Some(id), Some(at)) = (packet_id, shared.id_at) {
                if let Some(slot) = out.get_mut(start + at..start + at + 2) {
                    slot.copy_from_slice(&id.to_be_bytes());
                }
            }
        }
        if let Some(id) = packet_id {
            self.in_flight(id, event);
        }
        self.counts.count_sent();
        self.wake_writer();
        true
    }

    /// Encodes and buffers one PUBLISH; false when it exceeds the client's Maximum Packet Size
    /// (MQTT 5 §3.1.2.11.4: such a packet is discarded as if sent).
    pub(super) fn write_publish(&self, o: Outbound, packet_id: u16, dup: bool) -> bool {
        let mut properties = publish_properties(self.level, o.properties, o.content_type);
        // Server-assigned topic aliases (MQTT 5 §3.3.2.3.4), up to the client's maximum: the
        // first PUBLISH on a topic sets its alias, later ones send the alias alone.
        let mut topic = o.topic;
        let mut new_alias = None;
        if self.level == Level::V5 && self.aliases_out_max > 0 {
            let aliases = self.aliases_out.borrow();
            let assigned = aliases.as_ref().map_or(0, |a| a.len());
            match aliases.as_ref().and_then(|a| a.get(&topic)) {
                Some(alias) => {
                    properties.push(Property::TopicAlias(*alias));
                    topic = String::new();
                }
                None if assigned < usize::from(self.aliases_out_max) => {
                    let alias = assigned as u16 + 1;
                    properties.push(Property::TopicAlias(alias));
                    new_alias = Some((topic.clone(), alias));
                }
                None => {}
            }
        }
        let packet = Packet::Publish(Publish {
            dup,
            qos: o.qos,
            retain: o.retain,
            topic,
            packet_id,
            properties,
            payload: o.body,
        });
        let mut encoded = Vec::new();
        codec::encode(&packet, self.level, &mut encoded);
        if encoded.len() > self.out_packet_bytes_max {
            return false;
        }
        if let Some((topic, alias)) = new_alias {
            self.aliases_out
                .borrow_mut()
                .get_or_insert_with(Box::default)
                .insert(topic, alias);
        }
        self.out_mut().extend_from_slice(&encoded);
        self.counts.count_sent();
        self.wake_writer();
        true
    }

    /// Sends backlogged publishes while the window has room.
    pub(super) fn pump(&self) {
        while self.inflight.borrow().len() < self.window {
            let Some(o) = self.backlog.borrow_mut().pop_front() else {
                return;
            };
            self.send_acknowledged(o);
        }
    }

    /// PUBACK or PUBCOMP: the exchange for `packet_id` is over. False if it was not in flight.
    pub(super) fn completed(&self, packet_id: u16) -> bool {
        let Some(done) = self.inflight.borrow_mut().remove(&packet_id) else {
            return false;
        };
        if let (false, Some(event), Some(t)) = (
            done.released,
            &done.event,
            self.tracker.borrow_mut().as_mut(),
        ) {
            t.acked(event);
        }
        self.pump();
        true
    }

    /// PUBREC: the client has the QoS 2 message; it counts as delivered. False if unknown.
    pub(super) fn received(&self, packet_id: u16) -> bool {
        let mut inflight = self.inflight.borrow_mut();
        let Some(f) = inflight.get_mut(&packet_id) else {
            return false;
        };
        if !f.released {
            f.released = true;
            if let (Some(event), Some(t)) = (&f.event, self.tracker.borrow_mut().as_mut()) {
                t.acked(event);
            }
        }
        true
    }

    /// The durable part of this connection's state, to store.
    pub(super) fn stored(&self, expiry_s: u32) -> Stored {
        Stored {
            subs: self
                .subs
                .borrow()
                .iter()
                .map(|s| StoredSub {
                    filter: s.filter.as_str().to_string(),
                    qos: s.qos,
                    since: s.since,
                    options: s.options,
                    identifier: s.identifier,
                })
                .collect(),
            tracker: self
                .tracker
                .borrow()
                .as_deref()
                .cloned()
                .unwrap_or_default(),
            inflight: self
                .inflight
                .borrow()
                .iter()
                .filter_map(|(id, f)| {
                    Some(StoredInflight {
                        packet_id: *id,
                        event: f.event.clone()?,
                        released: f.released,
                    })
                })
                .collect(),
            qos2_received: self.qos2_received.borrow().clone(),
            expiry_s,
        }
    }
}

/// Owns the connection's write half: sends what the session queued in `conn.out`, in order.
/// Once a batch is written its buffer goes to the core's spares, so a connection with nothing
/// queued holds no write buffer; the write itself is boxed, so the task's future, which an idle
/// connection keeps, is only its wait (docs/design.md, "Idle connections").
pub(super) async fn write_loop<W: WriteBytes>(
    mut writer: W,
    conn: Rc<Conn>,
    sessions: Rc<Sessions>,
) {
    loop {
        let batch = poll_fn(|cx| {
            if conn.state_more.take() {
                conn.fill_state(&sessions);
            }
            let mut out = conn.out.borrow_mut();
            if !out.is_empty() {
                return Poll::Ready(Some(std::mem::take(&mut *out)));
            }
            if conn.closing.get() {
                return Poll::Ready(None);
            }
            if conn.state_more.get() {
                cx.waker().wake_by_ref(); // yield, then read more state
                return Poll::Pending;
            }
            conn.out_waker.set(Some(cx.waker().clone()));
            Poll::Pending
        })
        .await;
        let Some(bytes) = batch else {
            break;
        };
        let (result, bytes) = Box::pin(writer.write_all(bytes)).await;
        OUT_SPARES.with(|spares| spares.give_back(bytes));
        if result.is_err() {
            conn.closing.set(true);
            conn.kick.kick();
            return;
        }
        // The client took what was queued: room for more of a streaming initial state.
        conn.fill_state(&sessions);
    }
    let _ = Box::pin(writer.shutdown_write()).await;
}

/// Most outbound buffers a core keeps spare, and the bytes they may hold together; a buffer
/// grown past [`OUT_SPARE_BYTES_MAX`] is freed. As many as a core's busy connections fill at
/// once (a PUBACK to each publisher and a delivery to each subscriber of a commit), so a round
/// of them does not allocate.
const OUT_SPARES_MAX: usize = 1024;
const OUT_SPARE_BYTES_MAX: usize = 64 << 10;
const OUT_SPARES_HELD_MAX: usize = 1 << 20;

thread_local! {
    /// This core's spare outbound buffers.
    static OUT_SPARES: Spares = const { Spares::new(OUT_SPARES_MAX, OUT_SPARE_BYTES_MAX, OUT_SPARES_HELD_MAX) };
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A PUBLISH encoded once with its packet id patched in is byte for byte the one encoded for
    /// that id, at both levels, every QoS, short and long remaining lengths.
    #[test]
    fn shared_publish_equals_one_encoded_for_its_packet_id() {
        for level in [Level::V4, Level::V5] {
            for qos in 0..=2u8 {
                for (topic_len, body_len) in [(5, 10), (200, 300), (3, 20_000)] {
                    let topic = "t".repeat(topic_len);
                    let body = vec![7u8; body_len];
                    let outbound = || Outbound {
                        topic: topic.clone(),
                        qos,
                        retain: qos == 1,
                        body: body.clone(),
                        content_type: Some("application/json"),
                        event: None,
                        resend_id: None,
                        properties: Properties::default(),
                    };
                    let shared = Shared::encode(level, outbound());
                    let mut patched = shared.bytes.clone();
                    if let Some(at) = shared.id_at {
                        patched[at..at + 2].copy_from_slice(&0x1234u16.to_be_bytes());
                    }
                    let o = outbound();
                    let mut expected = Vec::new();
                    let packet = Packet::Publish(Publish {
                        dup: false,
                        qos,
                        retain: o.retain,
                        topic: o.topic,
                        packet_id: if qos > 0 { 0x1234 } else { 0 },
                        properties: publish_properties(level, o.properties, o.content_type),
                        payload: o.body,
                    });
                    codec::encode(&packet, level, &mut expected);
                    assert_eq!(patched, expected, "{level:?} QoS {qos} topic {topic_len}");
                }
            }
        }
    }
}
