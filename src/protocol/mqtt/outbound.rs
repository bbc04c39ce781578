//! The outbound side of one connection (docs/mqtt.md): the buffer its writer task flushes, QoS ≥ 1
//! publishes in flight and the client's receive window, the backlog waiting for it, topic
//! aliases we assign, and the durable part of the state to store.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

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

/// A connection's QoS ≥ 1 exchanges in either direction (see [`Conn::acked`]).
#[derive(Default)]
pub(super) struct Acked {
    /// Outbound QoS ≥ 1 packet ids awaiting PUBACK / PUBREC→PUBCOMP.
    pub(super) inflight: RefCell<HashMap<u16, Inflight>>,
    /// Inbound QoS 2 packet ids applied and awaiting PUBREL (at most [`RECEIVE_MAXIMUM`]).
    ///
    /// [`RECEIVE_MAXIMUM`]: super::conn::RECEIVE_MAXIMUM
    pub(super) qos2_received: RefCell<Vec<u16>>,
    /// QoS ≥ 1 publishes waiting, in order, for the window to open.
    pub(super) backlog: RefCell<VecDeque<Outbound>>,
}

/// What a connection holds only once it uses it (see [`Conn::extras`]).
#[derive(Default)]
pub(super) struct Extras {
    /// Acknowledgement positions, for durable sessions only.
    pub(super) tracker: RefCell<Option<Box<Tracker>>>,
    /// Per database: live events at or below this version were replayed when the session resumed
    /// (none until a session resumes).
    pub(super) floor: RefCell<Rare<Floors>>,
    /// Topic aliases we assigned (up to the client's Topic Alias Maximum, v5).
    pub(super) aliases_out: RefCell<Rare<HashMap<String, u16>>>,
    /// `$SYS` filters subscribed to (super user only; not kept with a durable session).
    pub(super) sys_subs: RefCell<Vec<String>>,
}

/// Per-connection state shared by its reader, its writer and the core's dispatcher.
pub(super) struct Conn {
    pub(super) level: Level,
    /// Set once CONNECT is accepted (for No Local): the same allocation as the session's and
    /// the client id registry's key (an idle connection keeps one copy, not three).
    pub(super) client_id: std::cell::OnceCell<Arc<str>>,
    pub(super) out: RefCell<Vec<u8>>,
    pub(super) out_waker: Cell<Option<Waker>>,
    pub(super) closing: Cell<bool>,
    pub(super) subs: RefCell<Vec<Sub>>,
    pub(super) next_packet_id: Cell<u16>,
    /// QoS ≥ 1 exchanges ([`Conn::acked`]), durable acknowledgement positions, replay
    /// horizons, topic aliases we assigned and `$SYS` subscriptions ([`Conn::extras`]), in one
    /// box allocated at the first use of any (read-only checks use [`Conn::acked_if_any`] and
    /// [`Conn::extras_if_any`]): a connection that never uses them holds 8 bytes here instead
    /// of 208 (docs/design.md, "Idle connections").
    rare: std::cell::OnceCell<Box<RareParts>>,
    /// Unacknowledged QoS ≥ 1 publishes at once: the client's Receive Maximum (v5), at most
    /// `INFLIGHT_MAX`. (The numbers here are as narrow as their ranges allow: every idle
    /// connection carries them.)
    pub(super) window: u16,
    /// Backlog bound; past it the connection closes with `0x97` (a durable session gets the rest
    /// from the audit log when it resumes).
    pub(super) backlog_max: u32,
    /// The client's Maximum Packet Size (v5); larger outbound packets are not sent.
    pub(super) out_packet_bytes_max: u32,
    /// The client's Topic Alias Maximum (v5): aliases we may assign, and those assigned.
    pub(super) aliases_out_max: u16,
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
    pub(super) read_held: Cell<u32>,
    /// When bytes last came from the client ([`super::conn::millis`]); with `keep_alive_s`,
    /// what the core's sweep checks.
    pub(super) heard_ms: Cell<u32>,
    /// The Keep Alive the client is held to, in seconds; 0: none.
    pub(super) keep_alive_s: Cell<u16>,
    /// Set by the sweep when `keep_alive` passed without a packet: the kick that follows closes
    /// with `0x8D`.
    pub(super) expired: Cell<bool>,
    /// Set when the server's shutdown kicked it ([`Conn::stop`]): it closes with `0x8B`.
    pub(super) stopping: Cell<bool>,
    pub(super) kick: Arc<Kick>,
    /// This connection in its core's [`super::index::Index`]: its number there and the keys it
    /// is filed under.
    pub(super) slot: Cell<u64>,
    /// (A boxed slice, 8 bytes narrower than a `Vec`, in a `Cell`, 8 narrower than a
    /// `RefCell`: taken and replaced whole, never grown.)
    pub(super) keys: Cell<Box<[super::index::Key]>>,
}

/// What a connection holds only once it uses it (see [`Conn::acked`] and [`Conn::extras`]).
#[derive(Default)]
struct RareParts {
    acked: Acked,
    extras: Extras,
}

impl Conn {
    /// A connection's state for an accepted `connect` whose session expires after `expiry_s`
    /// (0: ends with the connection).
    pub(super) fn new(
        connect: &Connect,
        expiry_s: u32,
        shared: &MqttShared,
        kick: Arc<Kick>,
    ) -> Conn {
        let level = connect.level;
        let out_packet_bytes_max = connect.properties.maximum_packet_size().unwrap_or(u32::MAX);
        let inflight_max = u16::try_from(INFLIGHT_MAX).unwrap_or(u16::MAX);
        let window = match connect.properties.receive_maximum() {
            Some(n) if level == Level::V5 => n.clamp(1, inflight_max),
            _ => inflight_max,
        };
        Conn {
            level,
            client_id: std::cell::OnceCell::new(),
            out: RefCell::new(Vec::new()),
            out_waker: Cell::new(None),
            closing: Cell::new(false),
            subs: RefCell::new(Vec::new()),
            next_packet_id: Cell::new(0),
            rare: if expiry_s > 0 {
                std::cell::OnceCell::from(Box::new(RareParts {
                    acked: Acked::default(),
                    extras: Extras {
                        tracker: RefCell::new(Some(Box::default())),
                        ..Extras::default()
                    },
                }))
            } else {
                std::cell::OnceCell::new()
            },
            window,
            // docs/realtime.md: a clean session's outbound queue holds 1,000 events; a durable one
            // the session queue (and whatever does not fit waits in the audit log for the next
            // resume).
            backlog_max: u32::try_from(if expiry_s > 0 {
                shared.session_queue_max.max(INFLIGHT_MAX)
            } else {
                INFLIGHT_MAX
            })
            .unwrap_or(u32::MAX),
            out_packet_bytes_max,
            aliases_out_max: connect
                .properties
                .iter()
                .find_map(|p| match p {
                    Property::TopicAliasMaximum(n) => Some(*n),
                    _ => None,
                })
                .unwrap_or(0),
            overflowed: Cell::new(false),
            state_failed: Cell::new(false),
            state_more: Cell::new(false),
            read_held: Cell::new(0),
            heard_ms: Cell::new(super::conn::millis()),
            keep_alive_s: Cell::new(0),
            expired: Cell::new(false),
            stopping: Cell::new(false),
            kick,
            slot: Cell::new(0),
            keys: Cell::new(Box::default()),
        }
    }

    /// The connection's QoS ≥ 1 exchanges, allocated at the first use: checks that need not
    /// allocate read [`Conn::acked_if_any`] instead.
    pub(super) fn acked(&self) -> &Acked {
        &self.rare.get_or_init(Box::default).acked
    }

    /// The connection's QoS ≥ 1 exchanges, if it ever had any (or its other rare parts).
    pub(super) fn acked_if_any(&self) -> Option<&Acked> {
        self.rare.get().map(|r| &r.acked)
    }

    /// What the connection holds only once it uses it, allocated at the first use: checks that
    /// need not allocate read [`Conn::extras_if_any`] instead.
    pub(super) fn extras(&self) -> &Extras {
        &self.rare.get_or_init(Box::default).extras
    }

    /// What the connection holds only once it uses it, if it ever did.
    pub(super) fn extras_if_any(&self) -> Option<&Extras> {
        self.rare.get().map(|r| &r.extras)
    }

    /// A durable session's acknowledgement positions, if this is one.
    pub(super) fn tracker_mut(&self) -> Option<std::cell::RefMut<'_, Box<Tracker>>> {
        let tracker = self.extras_if_any()?.tracker.borrow_mut();
        std::cell::RefMut::filter_map(tracker, Option::as_mut).ok()
    }

    /// Whether the session is durable (it tracks acknowledgement positions).
    pub(super) fn durable(&self) -> bool {
        self.extras_if_any()
            .is_some_and(|e| e.tracker.borrow().is_some())
    }

    /// The client id (empty until CONNECT is accepted; the session exists only after).
    pub(super) fn client_id(&self) -> &str {
        self.client_id.get().map_or("", |c| c)
    }

    /// Publishes waiting for the window to open, if any ever did.
    pub(super) fn backlog_bytes(&self) -> usize {
        self.acked_if_any()
            .map_or(0, |a| a.backlog.borrow().iter().map(|o| o.body.len()).sum())
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

    /// The server is shutting down: ends the connection's read loop (closing with `0x8B`).
    pub(super) fn stop(&self) {
        self.stopping.set(true);
        self.kick.kick();
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
        let inflight = self.acked().inflight.borrow();
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
        let mut backlog = self.acked().backlog.borrow_mut();
        if !backlog.is_empty() || self.acked().inflight.borrow().len() >= usize::from(self.window) {
            if backlog.len() >= self.backlog_max as usize {
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
            .filter(|id| !self.acked().inflight.borrow().contains_key(id));
        let packet_id = resend.unwrap_or_else(|| self.free_packet_id());
        let event = o.event.clone();
        if !self.write_publish(o, packet_id, resend.is_some()) {
            // Too large for the client: discarded as if sent, so it must not hold a position.
            if let (Some(event), Some(mut t)) = (&event, self.tracker_mut()) {
                t.acked(event);
            }
            return;
        }
        self.in_flight(packet_id, event);
    }

    /// A QoS ≥ 1 publish went out as `packet_id`: remembered until acknowledged.
    fn in_flight(&self, packet_id: u16, event: Option<EventRef>) {
        if let (Some(event), Some(mut t)) = (&event, self.tracker_mut()) {
            t.sent(event);
        }
        self.acked().inflight.borrow_mut().insert(
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
            || (self.acked().backlog.borrow().is_empty()
                && self.acked().inflight.borrow().len() < usize::from(self.window));
        !aliases && window && bytes <= self.out_packet_bytes_max as usize
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
        super::sys::count_sent();
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
            let aliases = self.extras().aliases_out.borrow();
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
        if encoded.len() > self.out_packet_bytes_max as usize {
            return false;
        }
        if let Some((topic, alias)) = new_alias {
            self.extras()
                .aliases_out
                .borrow_mut()
                .get_or_insert_with(Box::default)
                .insert(topic, alias);
        }
        self.out_mut().extend_from_slice(&encoded);
        super::sys::count_sent();
        self.wake_writer();
        true
    }

    /// Sends backlogged publishes while the window has room.
    pub(super) fn pump(&self) {
        while self.acked().inflight.borrow().len() < usize::from(self.window) {
            let Some(o) = self.acked().backlog.borrow_mut().pop_front() else {
                return;
            };
            self.send_acknowledged(o);
        }
    }

    /// PUBACK or PUBCOMP: the exchange for `packet_id` is over. False if it was not in flight.
    pub(super) fn completed(&self, packet_id: u16) -> bool {
        let Some(done) = self.acked().inflight.borrow_mut().remove(&packet_id) else {
            return false;
        };
        if let (false, Some(event), Some(mut t)) = (done.released, &done.event, self.tracker_mut())
        {
            t.acked(event);
        }
        self.pump();
        true
    }

    /// PUBREC: the client has the QoS 2 message; it counts as delivered. False if unknown.
    pub(super) fn received(&self, packet_id: u16) -> bool {
        let mut inflight = self.acked().inflight.borrow_mut();
        let Some(f) = inflight.get_mut(&packet_id) else {
            return false;
        };
        if !f.released {
            f.released = true;
            if let (Some(event), Some(mut t)) = (&f.event, self.tracker_mut()) {
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
                .extras_if_any()
                .and_then(|e| e.tracker.borrow().as_deref().cloned())
                .unwrap_or_default(),
            inflight: self
                .acked()
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
            qos2_received: self.acked().qos2_received.borrow().clone(),
            expiry_s,
        }
    }
}

/// Owns the connection's write half: sends what the session queued in `conn.out`, in order,
/// then half-closes once the connection is closing. Once a batch is written its buffer goes to
/// the core's spares, so a connection with nothing queued holds no write buffer.
///
/// A future of its own rather than an `async fn`, so that while it waits it is only the two
/// references and the write half (an `async fn` would keep its arguments beside the wait's
/// state): it runs joined with the reader in the connection's task, which an idle connection
/// keeps (docs/design.md, "Idle connections"). A write in progress is boxed, the write half
/// moving into the box and back.
pub(super) fn write_loop<W: WriteBytes>(
    writer: W,
    conn: Rc<Conn>,
    sessions: Rc<Sessions>,
) -> WriteLoop<W> {
    WriteLoop {
        conn,
        sessions,
        state: Writing::Idle(Some(writer)),
    }
}

/// A write in progress: a batch, which gives the write half back with its result, or the
/// half-close after the last batch (`None`).
type PendingWrite<W> = Pin<Box<dyn Future<Output = Option<(W, std::io::Result<()>, Vec<u8>)>>>>;

/// Two variants, the batch and the half-close in one and the end folded into `Idle`: so the
/// state is 16 bytes for a pointer-sized write half (`Idle` fits beside the box's non-null
/// pointer), not 24 with a tag of its own (docs/design.md, "Idle connections").
enum Writing<W> {
    /// Waiting for bytes to write; `None` once done (or while the state is being replaced).
    Idle(Option<W>),
    /// A batch being written, or the half-close.
    Busy(PendingWrite<W>),
}

/// The future of [`write_loop`].
pub(super) struct WriteLoop<W> {
    conn: Rc<Conn>,
    sessions: Rc<Sessions>,
    state: Writing<W>,
}

// The write half is moved, never pinned in place: the in-progress writes are boxed.
impl<W> Unpin for WriteLoop<W> {}

impl<W: WriteBytes> WriteLoop<W> {
    /// What to do next: a batch to write, `None` to half-close (closing with nothing left), or
    /// wait for the session or the dispatcher to queue more.
    fn next_batch(&self, cx: &mut Context<'_>) -> Poll<Option<Vec<u8>>> {
        let conn = &self.conn;
        if conn.state_more.take() {
            conn.fill_state(&self.sessions);
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
    }
}

impl<W: WriteBytes> Future for WriteLoop<W> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        loop {
            match std::mem::replace(&mut this.state, Writing::Idle(None)) {
                Writing::Idle(Some(mut writer)) => match this.next_batch(cx) {
                    Poll::Pending => {
                        this.state = Writing::Idle(Some(writer));
                        return Poll::Pending;
                    }
                    Poll::Ready(Some(bytes)) => {
                        this.state = Writing::Busy(Box::pin(async move {
                            let (result, bytes) = writer.write_all(bytes).await;
                            Some((writer, result, bytes))
                        }));
                    }
                    Poll::Ready(None) => {
                        this.state = Writing::Busy(Box::pin(async move {
                            let _ = writer.shutdown_write().await;
                            None
                        }));
                    }
                },
                Writing::Busy(mut pending) => {
                    let written = match pending.as_mut().poll(cx) {
                        Poll::Pending => {
                            this.state = Writing::Busy(pending);
                            return Poll::Pending;
                        }
                        // Half-closed: done.
                        Poll::Ready(None) => return Poll::Ready(()),
                        Poll::Ready(Some(written)) => written,
                    };
                    let (writer, result, bytes) = written;
                    OUT_SPARES.with(|spares| spares.give_back(bytes));
                    if result.is_err() {
                        this.conn.closing.set(true);
                        this.conn.kick.kick();
                        return Poll::Ready(());
                    }
                    // The client took what was queued: room for more of a streaming initial
                    // state.
                    this.conn.fill_state(&this.sessions);
                    this.state = Writing::Idle(Some(writer));
                }
                Writing::Idle(None) => return Poll::Ready(()),
            }
        }
    }
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
