//! One MQTT connection on the core that accepted it (docs/mqtt.md): CONNECT within 10 s, keep-alive,
//! takeover, PUBLISH into the resource layer, SUBSCRIBE with the current state, then live events.
//!
//! A connection runs as two tasks on its core: the reader (this module's [`serve`]), which decodes
//! packets and handles them one at a time, in order; and a writer, which flushes the outbound
//! buffer that the reader and the core's event dispatcher ([`Sessions::dispatch`]) fill. Writes go
//! to tables only through `resource`; nothing here opens a transaction other than short reads.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet, VecDeque};
use std::future::poll_fn;
use std::net::SocketAddr;
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use tidepool_io::{race, spawn, timeout, Either, ReadBytes, ReadHalf, Shutdown, Split, WriteBytes};

use super::codec::{
    self, Ack, ConnAck, Connect, DecodeError, Level, Packet, Publish, Reason, SubAck, Subscribe,
    UnsubAck, Will,
};
use super::durable::{self, EventKey, EventRef, Stored, StoredInflight, StoredSub, Tracker};
use super::events::{self, Event};
use super::general;
use super::notes::{self, Note, Notes};
use super::payload;
use super::props::{Properties, Property};
use super::share::{self, Groups};
use super::topic::{Filter, PublishTopic, TopicError};
use crate::change::{ChangeKind, Commit};
use crate::pubsub::state::{Chunk, StateCursor, CHUNK_RECORDS_MAX};
use crate::resource::permissions::ReadableAttributes;
use crate::resource::{self, Caller, Resources, Validation};
use crate::resource::{ConditionFailed, WriteError, WriteOp};
use crate::value::{self, Value};

/// CONNECT must arrive this soon after the connection opens (docs/mqtt.md).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Unacknowledged outbound QoS ≥ 1 messages per session; reaching it disconnects (v5 `0x97`).
pub const INFLIGHT_MAX: usize = 1000;
/// Outbound bytes buffered per connection; past it QoS 0 events are dropped, QoS ≥ 1 disconnect.
pub const OUT_BYTES_MAX: usize = 16 << 20;
/// Our Receive Maximum (advertised in v5 CONNACK): inbound QoS 2 publishes awaiting PUBREL at
/// once (QoS 1 ones are acknowledged before the next packet is read); one more disconnects with
/// `0x93` (MQTT 5 §3.3.4).
pub const RECEIVE_MAXIMUM: u16 = 1000;
/// How often each core checks its connections' keep-alive: a silent client is closed at most
/// this much after one and a half times its Keep Alive.
pub const KEEP_ALIVE_SWEEP: Duration = Duration::from_millis(250);
/// Topic aliases a v5 client may set (we advertise this as Topic Alias Maximum).
pub const TOPIC_ALIAS_MAX: u16 = 64;
/// How long a connection we disconnect may still send (ignored) before its socket closes.
pub const DRAIN_AFTER_DISCONNECT: Duration = Duration::from_secs(1);
/// How long a connection taking over a client id waits for the old one to store its session.
pub const TAKEOVER_WAIT: Duration = Duration::from_secs(5);
/// Bytes asked for per read.
const READ_SPARE_BYTES: usize = 4096;
/// A subscription's streaming state is read further only while the connection's outbound buffer
/// holds less than this (so a client that stops reading holds at most about this much of it).
const STATE_OUT_LOW: usize = 64 << 10;
/// State chunks one fill reads at most before yielding.
const STATE_CHUNKS_PER_FILL: usize = 4;

/// v5 reason codes used here (MQTT 5 §2.4).
mod rc {
    pub const UNSPECIFIED: u8 = 0x80;
    pub const MALFORMED: u8 = 0x81;
    pub const PROTOCOL_ERROR: u8 = 0x82;
    pub const NOT_AUTHORIZED: u8 = 0x87;
    pub const SERVER_SHUTTING_DOWN: u8 = 0x8b;
    pub const BAD_AUTH_METHOD: u8 = 0x8c;
    pub const KEEP_ALIVE_TIMEOUT: u8 = 0x8d;
    pub const SESSION_TAKEN_OVER: u8 = 0x8e;
    pub const TOPIC_FILTER_INVALID: u8 = 0x8f;
    pub const TOPIC_NAME_INVALID: u8 = 0x90;
    pub const NO_SUBSCRIPTION_EXISTED: u8 = 0x11;
    pub const PACKET_ID_NOT_FOUND: u8 = 0x92;
    pub const RECEIVE_MAXIMUM_EXCEEDED: u8 = 0x93;
    pub const TOPIC_ALIAS_INVALID: u8 = 0x94;
    pub const PACKET_TOO_LARGE: u8 = 0x95;
    pub const QUOTA_EXCEEDED: u8 = 0x97;
    pub const PAYLOAD_FORMAT_INVALID: u8 = 0x99;
    pub const SHARED_NOT_SUPPORTED: u8 = 0x9e;
}

/// CONNACK return codes by situation (docs/mqtt.md table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    UnsupportedLevel,
    ClientIdRefused,
    Unavailable,
    BadCredentials,
    NotAuthorized,
    BadAuthMethod,
    /// Too many failed logins for this user name from this address (docs/security.md "Failed logins").
    QuotaExceeded,
    /// A Will Topic that is not a topic name (empty or with a wildcard); v5 only, 3.1.1 closes.
    WillTopicInvalid,
}

impl Refusal {
    pub fn code(self, level: Level) -> u8 {
        let v5 = level == Level::V5;
        match self {
            Refusal::UnsupportedLevel => {
                if v5 {
                    0x84
                } else {
                    0x01
                }
            }
            Refusal::ClientIdRefused => {
                if v5 {
                    0x85
                } else {
                    0x02
                }
            }
            Refusal::Unavailable => {
                if v5 {
                    0x88
                } else {
                    0x03
                }
            }
            Refusal::BadCredentials => {
                if v5 {
                    0x86
                } else {
                    0x04
                }
            }
            Refusal::NotAuthorized => {
                if v5 {
                    0x87
                } else {
                    0x05
                }
            }
            // 3.1.1 has neither AUTH nor a quota code; the closest is "not authorized".
            Refusal::QuotaExceeded => {
                if v5 {
                    0x97
                } else {
                    0x05
                }
            }
            Refusal::WillTopicInvalid => {
                if v5 {
                    rc::TOPIC_NAME_INVALID
                } else {
                    0x05
                }
            }
            Refusal::BadAuthMethod => {
                if v5 {
                    rc::BAD_AUTH_METHOD
                } else {
                    0x05
                }
            }
        }
    }
}

/// Who a CONNECT authenticates as. Until the security issue lands every client is accepted as a
/// super user; the check plugs in here and returns `BadCredentials` / `NotAuthorized` per docs/security.md.
pub fn authenticate(
    shared: &MqttShared,
    connect: &Connect,
    peer: SocketAddr,
) -> Result<Caller, Refusal> {
    use crate::auth::{self, AuthError, Credentials};
    match &connect.username {
        Some(user) => {
            let password = connect
                .password
                .as_deref()
                .map(String::from_utf8_lossy)
                .unwrap_or_default();
            match auth::authenticate_password(&shared.resources, user, &password, peer) {
                Ok(caller) => Ok(caller),
                Err(AuthError::Inactive) => Err(Refusal::NotAuthorized),
                Err(AuthError::TooManyAttempts { .. }) => Err(Refusal::QuotaExceeded),
                Err(_) => Err(Refusal::BadCredentials),
            }
        }
        // No credentials: loopback with `authorizeLocal` is the super user; otherwise anonymous,
        // allowed only when `mqtt.requireAuthentication` is off (and then without permissions).
        None => match auth::authenticate(
            &shared.resources,
            &Credentials {
                authorization: None,
                peer,
                peer_cn: None,
            },
        ) {
            Ok(caller) if !caller.is_anonymous() => Ok(caller),
            Ok(caller) if !shared.require_authentication => Ok(caller),
            _ => Err(Refusal::NotAuthorized),
        },
    }
}

/// Who a verified client certificate authenticates as (docs/security.md: an unknown or inactive user
/// is not authorized); None when the connection brought none.
fn certificate_caller(
    shared: &MqttShared,
    peer_cn: Option<&str>,
) -> Option<Result<Caller, Refusal>> {
    let cn = peer_cn?;
    let mtls = shared.resources.config.mqtt_mtls.as_ref()?;
    Some(
        crate::auth::authenticate_certificate(&shared.resources, cn, mtls)
            .map_err(|_| Refusal::NotAuthorized),
    )
}

/// Whether `caller` may do `action` on a table (docs/security.md: a publish to a record needs update,
/// to the bare table insert, an empty retained publish delete; subscribing needs read).
fn permitted(caller: &Caller, action: &str, database: &str, table: &str) -> bool {
    use crate::resource::permissions;
    match action {
        "read" => permissions::can_read(caller, database, table),
        "insert" => permissions::can_insert(caller, database, table),
        "delete" => permissions::can_delete(caller, database, table),
        _ => permissions::can_update(caller, database, table),
    }
}

/// A cross-core "close now" signal for takeovers: set from any core, awaited on the owner's.
#[derive(Default)]
pub struct Kick {
    kicked: AtomicBool,
    /// Set once the connection stored its session and let go of its client id.
    released: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

impl Kick {
    pub fn kick(&self) {
        self.kicked.store(true, Ordering::Release);
        if let Ok(mut w) = self.waker.lock() {
            if let Some(w) = w.take() {
                w.wake();
            }
        }
    }

    /// Waits (bounded by [`TAKEOVER_WAIT`]) until the kicked connection has stored its session.
    async fn released(&self) {
        let deadline = std::time::Instant::now() + TAKEOVER_WAIT;
        while !self.released.load(Ordering::Acquire) && std::time::Instant::now() < deadline {
            tidepool_io::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn wait(&self) {
        poll_fn(|cx| {
            if self.kicked.load(Ordering::Acquire) {
                return Poll::Ready(());
            }
            if let Ok(mut w) = self.waker.lock() {
                *w = Some(cx.waker().clone());
            }
            if self.kicked.load(Ordering::Acquire) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await
    }
}

/// What every core's MQTT connections share.
pub struct MqttShared {
    pub resources: Arc<Resources>,
    /// `http.maxBodySize` (docs/mqtt.md), capped at MQTT's own maximum.
    pub packet_bytes_max: usize,
    pub require_authentication: bool,
    pub shutdown: Shutdown,
    /// Connected client ids on any core, for takeover.
    clients: Mutex<HashMap<String, Arc<Kick>>>,
    /// (database, table) → export name, to name topics of committed changes.
    exports: HashMap<(String, String), String>,
    next_client: AtomicU64,
    /// A version at or above every commit made before the cores started: where each core's
    /// dispatch position starts (see [`Sessions::since`]).
    start_version: f64,
    /// `mqtt.sessionQueueMax` (docs/configuration.md): messages a resumed durable session gets at most.
    pub session_queue_max: usize,
    /// What publishes in flight carry beyond their payload.
    notes: Notes,
    /// Set once any session subscribed with Retain As Published: retained publishes leave notes.
    retain_as_published: AtomicBool,
    /// Shared subscription groups.
    groups: Groups,
    /// `mqtt.generalTopics`: topics outside tables are served (see `general.rs`).
    pub general_topics: bool,
    /// `mqtt.maxKeepAlive` in seconds (0: none): a v5 client asking for more, or for no keep
    /// alive, is told this as Server Keep Alive (MQTT 5 §3.2.2.3.14) and held to it.
    pub keep_alive_max_s: u16,
    /// The empty export name general topics go by.
    general_export: String,
}

impl MqttShared {
    pub fn new(
        resources: Arc<Resources>,
        packet_bytes_max: usize,
        require_authentication: bool,
        shutdown: Shutdown,
    ) -> Self {
        let exports = resources
            .app
            .tables
            .iter()
            .filter_map(|t| {
                let name = t.export.clone()?;
                Some(((t.database.clone(), t.table.clone()), name))
            })
            .collect();
        MqttShared {
            // MQTT 5 allows Maximum Packet Size up to the remaining-length ceiling.
            packet_bytes_max: packet_bytes_max.min(codec::REMAINING_BYTES_MAX),
            require_authentication,
            shutdown,
            clients: Mutex::new(HashMap::new()),
            session_queue_max: resources
                .config_tree
                .get("mqtt.sessionQueueMax")
                .and_then(|v| v.as_u64())
                .and_then(|n| usize::try_from(n).ok())
                .unwrap_or(durable::SESSION_QUEUE_MAX_DEFAULT),
            start_version: resources.store.clock().next(),
            notes: Notes::new(resources.config.threads),
            retain_as_published: AtomicBool::new(false),
            groups: Groups::default(),
            general_export: String::new(),
            general_topics: resources
                .config_tree
                .get("mqtt.generalTopics")
                .and_then(|v| v.as_bool())
                .unwrap_or(false),
            keep_alive_max_s: resources
                .config_tree
                .get("mqtt.maxKeepAlive")
                .and_then(|v| v.as_u64())
                .map_or(0, |n| u16::try_from(n).unwrap_or(u16::MAX)),
            resources,
            exports,
            next_client: AtomicU64::new(1),
        }
    }

    /// Where each core's dispatch position starts (see [`Sessions::new`]).
    pub fn start_version(&self) -> f64 {
        self.start_version
    }

    /// The export a table of `database` is published under; general topics' table is the
    /// export `""` (its ids are whole topics) when `mqtt.generalTopics` is on.
    fn export_of(&self, database: &str, table: &str) -> Option<&String> {
        if self.general_topics && database == durable::SYSTEM && table == general::TABLE {
            return Some(&self.general_export);
        }
        self.exports.get(&(database.to_string(), table.to_string()))
    }

    /// Whether a connection holds client id `id` now.
    fn is_connected(&self, id: &str) -> bool {
        self.clients.lock().is_ok_and(|c| c.contains_key(id))
    }

    /// Registers `id` as connected, kicking whoever held it (docs/mqtt.md takeover); returns the
    /// kicked connection's handle so the caller can wait for it to store its session.
    fn claim(&self, id: &str, kick: Arc<Kick>) -> Option<Arc<Kick>> {
        let old = self
            .clients
            .lock()
            .ok()
            .and_then(|mut c| c.insert(id.to_string(), kick));
        if let Some(old) = &old {
            old.kick();
        }
        old
    }

    fn release(&self, id: &str, kick: &Arc<Kick>) {
        if let Ok(mut c) = self.clients.lock() {
            if c.get(id).is_some_and(|k| Arc::ptr_eq(k, kick)) {
                c.remove(id);
            }
        }
        kick.released.store(true, Ordering::Release);
    }
}

/// One subscription of a session.
struct Sub {
    filter: Filter,
    qos: u8,
    /// The initial state while it streams (`pubsub::state`): read a chunk at a time as the
    /// client takes it; a live change it holds, or will hold, is not sent (no duplicate, no gap
    /// between state and events).
    state: Option<StateCursor>,
    /// Events at or below this version predate the subscription (a durable replay starts above).
    since: f64,
    /// The v5 subscription options byte as subscribed (kept with a durable session).
    options: u8,
    identifier: Option<u32>,
    /// The subscriber's readable attributes when its role restricts them (docs/security.md).
    readable: Option<Rc<ReadableAttributes>>,
}

/// A record or message as a subscriber limited to `readable` receives it (docs/security.md: events and
/// retained state are trimmed by attribute read permissions). Returns the content type.
fn encode_trimmed(value: &Value, readable: &ReadableAttributes, out: &mut Vec<u8>) -> &'static str {
    let mut value = value.clone();
    readable.trim(&mut value);
    payload::encode(Some(&value), out)
}

/// An outbound QoS ≥ 1 publish awaiting its acknowledgement.
struct Inflight {
    /// The event it carried, for a durable session's acknowledgement position.
    event: Option<EventRef>,
    /// PUBREC came (QoS 2): only PUBCOMP remains.
    released: bool,
}

/// A PUBLISH waiting for room in the client's receive window.
struct Outbound {
    topic: String,
    qos: u8,
    retain: bool,
    body: Vec<u8>,
    /// The payload's content type, sent as Content Type (v5) unless the properties carry one;
    /// none for general topics, whose bytes are passed on as they came.
    content_type: Option<&'static str>,
    event: Option<EventRef>,
    /// A resend's packet id from before the reconnect (sent with DUP = 1).
    resend_id: Option<u16>,
    /// v5 properties beyond Content Type: the publisher's passed on, subscription identifiers.
    properties: Properties,
}

/// Per-connection state shared by its reader, its writer and the core's dispatcher.
struct Conn {
    level: Level,
    /// Set once CONNECT is accepted (for No Local).
    client_id: RefCell<String>,
    out: RefCell<Vec<u8>>,
    out_waker: Cell<Option<Waker>>,
    closing: Cell<bool>,
    subs: RefCell<Vec<Sub>>,
    next_packet_id: Cell<u16>,
    /// Outbound QoS ≥ 1 packet ids awaiting PUBACK / PUBREC→PUBCOMP.
    inflight: RefCell<HashMap<u16, Inflight>>,
    /// Inbound QoS 2 packet ids applied and awaiting PUBREL.
    qos2_received: RefCell<HashSet<u16>>,
    /// QoS ≥ 1 publishes waiting, in order, for the window to open.
    backlog: RefCell<VecDeque<Outbound>>,
    /// Unacknowledged QoS ≥ 1 publishes at once: the client's Receive Maximum (v5), at most
    /// `INFLIGHT_MAX`.
    window: usize,
    /// Backlog bound; past it the connection closes with `0x97` (a durable session gets the rest
    /// from the audit log when it resumes).
    backlog_max: usize,
    /// Acknowledgement positions, for durable sessions only.
    tracker: RefCell<Option<Tracker>>,
    /// Per database: live events at or below this version were replayed when the session resumed.
    floor: RefCell<HashMap<Arc<str>, f64>>,
    /// The client's Maximum Packet Size (v5); larger outbound packets are not sent.
    out_packet_bytes_max: usize,
    /// The client's Topic Alias Maximum (v5): aliases we may assign, and those assigned.
    aliases_out_max: u16,
    aliases_out: RefCell<HashMap<String, u16>>,
    /// Set when an outbound bound was hit for a QoS ≥ 1 event: the reader closes with `0x97`.
    overflowed: Cell<bool>,
    /// Set when a subscription's initial state could not be read (logged): the reader closes
    /// with `0x80` rather than leave a gap.
    state_failed: Cell<bool>,
    /// A fill stopped at `STATE_CHUNKS_PER_FILL` with state left and room for it: the writer
    /// task fills again after yielding to the core's other tasks.
    state_more: Cell<bool>,
    /// When bytes last came from the client; with `keep_alive`, what the core's sweep checks.
    heard: Cell<Instant>,
    keep_alive: Cell<Option<Duration>>,
    /// Set by the sweep when `keep_alive` passed without a packet: the kick that follows closes
    /// with `0x8D`.
    expired: Cell<bool>,
    kick: Arc<Kick>,
}

impl Conn {
    fn send(&self, packet: &Packet) {
        let mut out = self.out.borrow_mut();
        codec::encode(packet, self.level, &mut out);
        drop(out);
        self.wake_writer();
    }

    fn wake_writer(&self) {
        if let Some(w) = self.out_waker.take() {
            w.wake();
        }
        // A dispatcher-side overflow must end the reader too.
        if self.overflowed.get() {
            self.kick.kick();
        }
    }

    fn overflow(&self) -> bool {
        self.overflowed.set(true);
        self.wake_writer();
        false
    }

    /// A packet id not in flight (the window keeps fewer than 65,535 in flight).
    fn free_packet_id(&self) -> u16 {
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
    fn publish(&self, o: Outbound) -> bool {
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
    fn send_acknowledged(&self, o: Outbound) {
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

    /// Encodes and buffers one PUBLISH; false when it exceeds the client's Maximum Packet Size
    /// (MQTT 5 §3.1.2.11.4: such a packet is discarded as if sent).
    fn write_publish(&self, o: Outbound, packet_id: u16, dup: bool) -> bool {
        let mut properties = Properties::default();
        if self.level == Level::V5 {
            // The publisher's own Content Type wins over the encoding's.
            if let (None, Some(ct)) = (o.properties.content_type(), o.content_type) {
                properties.push(Property::ContentType(ct.to_string()));
            }
            properties.0.extend(o.properties.0);
        }
        // Server-assigned topic aliases (MQTT 5 §3.3.2.3.4), up to the client's maximum: the
        // first PUBLISH on a topic sets its alias, later ones send the alias alone.
        let mut topic = o.topic;
        let mut new_alias = None;
        if self.level == Level::V5 && self.aliases_out_max > 0 {
            let aliases = self.aliases_out.borrow();
            match aliases.get(&topic) {
                Some(alias) => {
                    properties.push(Property::TopicAlias(*alias));
                    topic = String::new();
                }
                None if aliases.len() < usize::from(self.aliases_out_max) => {
                    let alias = aliases.len() as u16 + 1;
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
            self.aliases_out.borrow_mut().insert(topic, alias);
        }
        self.out.borrow_mut().extend_from_slice(&encoded);
        self.wake_writer();
        true
    }

    /// Sends backlogged publishes while the window has room.
    fn pump(&self) {
        while self.inflight.borrow().len() < self.window {
            let Some(o) = self.backlog.borrow_mut().pop_front() else {
                return;
            };
            self.send_acknowledged(o);
        }
    }

    /// PUBACK or PUBCOMP: the exchange for `packet_id` is over. False if it was not in flight.
    fn completed(&self, packet_id: u16) -> bool {
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
    fn received(&self, packet_id: u16) -> bool {
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

    /// Forgets the settled chunks of streaming states on `database` (every commit up to `since`
    /// dispatched), and the states read and settled whole. True if a state still has records
    /// to read.
    fn settle_state(&self, database: &str, since: f64) -> bool {
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
    fn fill_state(&self, sessions: &Sessions) {
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
                } else if !self.backlog.borrow().is_empty() {
                    0
                } else {
                    self.window.saturating_sub(self.inflight.borrow().len())
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
                let general = filter.is_general();
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
                            self.client_id.borrow(), filter.as_str());
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

    /// The durable part of this connection's state, to store.
    fn stored(&self, expiry_s: u32) -> Stored {
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
            tracker: self.tracker.borrow().clone().unwrap_or_default(),
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
            qos2_received: self.qos2_received.borrow().iter().copied().collect(),
            expiry_s,
        }
    }
}

/// The MQTT sessions of one core, fed committed changes by the core's dispatcher task.
pub struct Sessions {
    conns: RefCell<Vec<Weak<Conn>>>,
    /// Per database, the newest commit dispatched on this core; every older one was too.
    dispatched: RefCell<HashMap<Arc<str>, f64>>,
    start_version: f64,
    /// The core's pubsub counters: the sweep reports queued outbound bytes there.
    counters: Arc<crate::pubsub::Counters>,
}

impl Sessions {
    /// `start_version`: see [`MqttShared::start_version`].
    pub fn new(start_version: f64, counters: Arc<crate::pubsub::Counters>) -> Self {
        Sessions {
            conns: RefCell::new(Vec::new()),
            dispatched: RefCell::new(HashMap::new()),
            start_version,
            counters,
        }
    }

    /// Every commit of `database` up to this version has been dispatched on this core.
    fn since(&self, database: &str) -> f64 {
        self.dispatched
            .borrow()
            .get(database)
            .copied()
            .unwrap_or(self.start_version)
    }

    /// Delivers every change of `commit` to each matching session of this core, once per session
    /// at the highest granted QoS among its matching filters.
    /// Kicks every connection whose keep-alive passed without a packet (and forgets closed
    /// ones), and reports the bytes the connections hold queued (`/health?verbose`). Called by
    /// each core every [`KEEP_ALIVE_SWEEP`].
    pub fn sweep_keep_alive(&self) {
        let now = Instant::now();
        let mut conns = self.conns.borrow_mut();
        conns.retain(|c| c.strong_count() > 0);
        let mut queued = 0usize;
        for conn in conns.iter().filter_map(Weak::upgrade) {
            queued += conn.out.borrow().len()
                + conn
                    .backlog
                    .borrow()
                    .iter()
                    .map(|o| o.body.len())
                    .sum::<usize>();
            let late = conn
                .keep_alive
                .get()
                .is_some_and(|limit| now.saturating_duration_since(conn.heard.get()) > limit);
            if late && !conn.expired.get() {
                conn.expired.set(true);
                conn.kick.kick();
            }
        }
        self.counters
            .mqtt_queued_bytes
            .store(queued as u64, Ordering::Relaxed);
    }

    pub fn dispatch(&self, shared: &MqttShared, commit: &Commit) {
        // Taken on every core, subscribers here or not, so each note leaves once all cores did.
        let notes = shared.notes.take(commit);
        self.deliver(shared, commit, notes);
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
        let streaming: Vec<Rc<Conn>> = self
            .conns
            .borrow()
            .iter()
            .filter_map(Weak::upgrade)
            .filter(|c| c.settle_state(&commit.database, since))
            .collect();
        for conn in streaming {
            conn.fill_state(self);
        }
    }

    /// Matches every change of `commit` against this core's sessions and queues it.
    fn deliver(&self, shared: &MqttShared, commit: &Commit, notes: Vec<Option<Arc<Note>>>) {
        let now = crate::resource::now_ms();
        let mut conns = self.conns.borrow_mut();
        conns.retain(|c| c.strong_count() > 0);
        if conns.is_empty() {
            return;
        }
        for (index, change) in commit.changes.iter().enumerate() {
            let Some(export) = shared.export_of(&commit.database, &change.table) else {
                continue;
            };
            let note = notes.get(index).cloned().flatten();
            let Some(out) = outbound_payload(export, change.kind, change.value.as_ref(), now)
            else {
                continue;
            };
            let passed_on = match (&out.properties, &note) {
                (Some(p), _) => p.clone(),
                (None, Some(n)) => match n.outbound(now) {
                    Some(p) => p,
                    None => continue, // its Message Expiry Interval has passed
                },
                (None, None) => Properties::default(),
            };
            // Messages to the bare table topic carry a null key.
            let id = match (&change.kind, &change.key) {
                (ChangeKind::Message, Value::Null) => None,
                (_, key) => Some(id_text(key)),
            };
            let (body, content_type) = (out.body, out.content_type);
            let topic = topic_name(export, id.as_deref());
            // Trimmed bodies for restricted subscribers, one per distinct attribute set.
            let mut trimmed: Vec<(Rc<ReadableAttributes>, Vec<u8>, Option<&'static str>)> =
                Vec::new();
            // The change's key encoded, for subscriptions whose state still streams.
            let mut encoded_key: Option<Vec<u8>> = None;
            for conn in conns.iter().filter_map(Weak::upgrade) {
                let replayed = conn
                    .floor
                    .borrow()
                    .get(&commit.database)
                    .is_some_and(|f| commit.version <= *f);
                if replayed {
                    continue;
                }
                let own = note
                    .as_ref()
                    .is_some_and(|n| n.client_id == *conn.client_id.borrow());
                let mut qos = None;
                let mut as_published = false;
                let mut properties = passed_on.clone();
                let mut readable = None;
                for sub in conn.subs.borrow().iter() {
                    if !sub.filter.matches(export, id.as_deref()) {
                        continue;
                    }
                    if own && sub.options & NO_LOCAL != 0 {
                        continue;
                    }
                    if let Some(group) = sub.filter.share() {
                        let key = share::key(group, sub.filter.topic_filter());
                        let me = conn.client_id.borrow();
                        if !shared.groups.is_chosen(
                            &key,
                            commit.version,
                            &change.table,
                            id.as_deref(),
                            &me,
                        ) {
                            continue;
                        }
                    }
                    if change.kind != ChangeKind::Message {
                        if let Some(cursor) = &sub.state {
                            if encoded_key.is_none() {
                                let mut out = Vec::with_capacity(32);
                                if value::key::encode(&change.key, &mut out).is_ok() {
                                    encoded_key = Some(out);
                                }
                            }
                            let covered = encoded_key
                                .as_deref()
                                .is_some_and(|k| cursor.covers(k, commit.version));
                            if covered {
                                continue;
                            }
                        }
                    }
                    qos = Some(qos.map_or(sub.qos, |q: u8| q.max(sub.qos)));
                    as_published |= sub.options & RETAIN_AS_PUBLISHED != 0;
                    if let Some(i) = sub.identifier {
                        properties.push(Property::SubscriptionIdentifier(i));
                    }
                    readable = readable.or_else(|| sub.readable.clone());
                }
                let Some(qos) = qos else { continue };
                let mut qos = qos.min(out.qos_max);
                // docs/mqtt.md: messages (and general topics, as in any broker) go out at most at
                // the QoS they were published with; record changes at the granted QoS.
                if let Some(n) = &note {
                    if change.kind == ChangeKind::Message || export.is_empty() {
                        qos = qos.min(n.qos);
                    }
                }
                let event = (qos > 0 && conn.tracker.borrow().is_some()).then(|| EventRef {
                    db: commit.database.clone(),
                    key: EventKey {
                        version: commit.version,
                        table: change.table.clone(),
                        id: id.clone(),
                    },
                });
                // docs/security.md: trimmed to the subscriber's readable attributes, encoded once per
                // attribute set per change.
                let (body, content_type) = match (readable, &change.value) {
                    (Some(r), Some(v)) if change.kind != ChangeKind::Delete => {
                        let at = match trimmed.iter().position(|(set, _, _)| **set == *r) {
                            Some(at) => at,
                            None => {
                                let mut out = Vec::new();
                                let ct = encode_trimmed(v, &r, &mut out);
                                trimmed.push((r, out, Some(ct)));
                                trimmed.len() - 1
                            }
                        };
                        match trimmed.get(at) {
                            Some((_, b, ct)) => (b.clone(), *ct),
                            None => continue,
                        }
                    }
                    _ => (body.clone(), content_type),
                };
                conn.publish(Outbound {
                    topic: topic.clone(),
                    qos,
                    // MQTT 5 §3.8.3.1: Retain As Published keeps the publisher's RETAIN flag.
                    retain: as_published && note.as_ref().is_some_and(|n| n.retain),
                    body,
                    content_type,
                    event,
                    resend_id: None,
                    properties,
                });
            }
        }
    }
}

/// The topic an event goes out on: `<export>/<id>`, the bare export, or a general topic as is.
fn topic_name(export: &str, id: Option<&str>) -> String {
    match id {
        Some(id) if export.is_empty() => id.to_string(),
        Some(id) => format!("{export}/{id}"),
        None => export.to_string(),
    }
}

/// What an event carries out, before per-subscriber choices.
struct Payload {
    body: Vec<u8>,
    content_type: Option<&'static str>,
    /// The QoS it may go out at most with (a general publish's own QoS).
    qos_max: u8,
    /// The properties a general publish stored; none for tables (their notes carry them).
    properties: Option<Properties>,
}

/// The payload of an event (docs/mqtt.md: a delete is `null`); general topics carry the bytes and
/// properties published, nothing for a cleared retained message or an expired one.
fn outbound_payload(
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

/// How one record of a subscription's initial state goes out: content type, QoS, properties.
struct Shape(Option<&'static str>, u8, Properties);

/// One record of a subscription's initial state as a PUBLISH body (trimmed to `readable` when
/// the role restricts attributes; a general topic's bytes and properties as published).
fn state_body(
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

/// Subscription option bits (MQTT 5 §3.8.3.1).
const NO_LOCAL: u8 = 0x04;
const RETAIN_AS_PUBLISHED: u8 = 0x08;

/// The v5 subscription options byte (MQTT 5 §3.8.3.1) of parsed options.
fn options_byte(o: &codec::SubOptions) -> u8 {
    o.qos.min(2)
        | u8::from(o.no_local) << 2
        | u8::from(o.retain_as_published) << 3
        | (o.retain_handling.min(2) << 4)
}

/// A record id as a topic level: strings as they are, numbers in canonical form.
fn id_text(key: &Value) -> String {
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

enum ReadError {
    Closed,
    Decode(DecodeError),
    Kicked,
    Shutdown,
}

impl ReadError {
    /// What happened, for the log line of a connection that ended before its CONNECT.
    fn before_connect(&self) -> String {
        match self {
            ReadError::Closed => "the client closed the connection".into(),
            ReadError::Decode(e) => format!("malformed packet ({e:?})"),
            ReadError::Kicked => "taken over".into(),
            ReadError::Shutdown => "server shutdown".into(),
        }
    }
}

/// Reads until one whole packet is buffered, then decodes it. Bytes after it stay buffered in
/// the read half.
async fn read_packet<R: ReadBytes>(
    reader: &mut ReadHalf<R>,
    packet_bytes_max: usize,
    level: Level,
    heard: Option<&Cell<Instant>>,
    kick: &Kick,
    shutdown: &Shutdown,
) -> Result<Packet, ReadError> {
    loop {
        let buf = reader.buffered();
        match codec::check(buf, packet_bytes_max) {
            Ok(Some(len)) => {
                let packet = codec::decode(buf.get(..len).unwrap_or_default(), level)
                    .map_err(ReadError::Decode);
                buf.drain(..len);
                return packet;
            }
            Ok(None) => {}
            Err(e) => return Err(ReadError::Decode(e)),
        }
        // Keep-alive expiry (the core's sweep), takeover and shutdown all arrive as a kick or the
        // shutdown signal: no timer per connection, so an idle one costs no timer's memory. A
        // read dropped on either loses nothing (the read half keeps it).
        let stop = race(kick.wait(), shutdown.wait());
        match race(reader.fill(), stop).await {
            Either::Left(Ok(0)) | Either::Left(Err(_)) => return Err(ReadError::Closed),
            Either::Left(Ok(_)) => {
                if let Some(heard) = heard {
                    heard.set(Instant::now());
                }
            }
            Either::Right(Either::Left(())) => return Err(ReadError::Kicked),
            Either::Right(Either::Right(())) => return Err(ReadError::Shutdown),
        }
    }
}

/// Owns the connection's write half: sends what the session queued in `conn.out`, in order.
async fn write_loop<W: WriteBytes>(mut writer: W, conn: Rc<Conn>, sessions: Rc<Sessions>) {
    let mut spare = Vec::new();
    loop {
        let mut batch = poll_fn(|cx| {
            if conn.state_more.take() {
                conn.fill_state(&sessions);
            }
            let mut out = conn.out.borrow_mut();
            if !out.is_empty() {
                spare.clear();
                std::mem::swap(&mut *out, &mut spare);
                return Poll::Ready(Some(std::mem::take(&mut spare)));
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
        let Some(bytes) = batch.take() else {
            break;
        };
        let (result, bytes) = writer.write_all(bytes).await;
        spare = bytes;
        if result.is_err() {
            conn.closing.set(true);
            conn.kick.kick();
            return;
        }
        // The client took what was queued: room for more of a streaming initial state.
        conn.fill_state(&sessions);
    }
    let _ = writer.shutdown_write().await;
}

/// Serves one MQTT connection until it closes.
pub async fn serve<T: Split>(
    stream: T,
    peer: SocketAddr,
    shared: Arc<MqttShared>,
    sessions: Rc<Sessions>,
) {
    let _ = stream.set_nodelay(true);
    let identity = TransportIdentity {
        certificate_cn: stream.peer_cn().map(str::to_string),
        upgrade_caller: None,
    };
    let (reader, writer) = stream.into_split();
    let reader = ReadHalf::with_chunk(reader, READ_SPARE_BYTES);
    serve_split(reader, writer, peer, identity, shared, sessions).await
}

/// What the transport under a connection established about the client before CONNECT.
#[derive(Default)]
pub struct TransportIdentity {
    /// The CN of a client certificate TLS verified on the MQTT secure port (with
    /// `mqtt.network.mtls`): it authenticates the client, whatever CONNECT says (docs/security.md).
    pub certificate_cn: Option<String>,
    /// Who a WebSocket upgrade's `Authorization` header, session cookie or HTTP client
    /// certificate authenticated (docs/mqtt.md, P1): it counts when CONNECT names no user.
    pub upgrade_caller: Option<Caller>,
}

/// [`serve`] over a connection already split (MQTT over WebSocket brings its own halves).
pub async fn serve_split<R: ReadBytes, W: WriteBytes>(
    mut reader: ReadHalf<R>,
    mut writer: W,
    peer: SocketAddr,
    identity: TransportIdentity,
    shared: Arc<MqttShared>,
    sessions: Rc<Sessions>,
) {
    let kick = Arc::new(Kick::default());
    // Boxed, like the other rare states below: monoio's timer is large (cache-padded), and only
    // the states an idle connection sits in should set this future's size.
    let first = Box::pin(timeout(
        CONNECT_TIMEOUT,
        read_packet(
            &mut reader,
            shared.packet_bytes_max,
            Level::V4,
            None,
            &kick,
            &shared.shutdown,
        ),
    ))
    .await;
    let connect = match first {
        Ok(Ok(Packet::Connect(c))) => c,
        Ok(Err(ReadError::Decode(DecodeError::UnsupportedLevel(level)))) => {
            tracing::info!(target: "mqtt", "{peer}: CONNECT with unsupported protocol level {level}");
            let level = if level > 5 { Level::V5 } else { Level::V4 };
            let code = Refusal::UnsupportedLevel.code(level);
            let mut out = Vec::new();
            codec::encode(
                &Packet::ConnAck(ConnAck {
                    session_present: false,
                    code,
                    properties: Properties::default(),
                }),
                level,
                &mut out,
            );
            // No writer task exists yet; this is the only user of the write half.
            // Boxed: a rare state that should not set the size of every connection's future.
            Box::pin(async move {
                let _ = writer.write_all(out).await;
                let _ = writer.shutdown_write().await;
            })
            .await;
            return;
        }
        Ok(Ok(other)) => {
            tracing::debug!(target: "mqtt", "{peer}: first packet is {} instead of CONNECT; closing", other.kind_name());
            return;
        }
        Ok(Err(e)) => {
            tracing::debug!(target: "mqtt", "{peer}: {} before CONNECT; closing", e.before_connect());
            return;
        }
        Err(_) => {
            tracing::debug!(target: "mqtt", "{peer}: no CONNECT within {CONNECT_TIMEOUT:?}; closing");
            return;
        }
    };
    let level = connect.level;
    let v5 = level == Level::V5;
    let out_packet_bytes_max = connect
        .properties
        .maximum_packet_size()
        .map_or(usize::MAX, |n| n as usize);
    // Durable (docs/mqtt.md): 3.1.1 without clean session (kept forever), v5 with a Session Expiry
    // Interval above 0 (kept that long after the connection ends).
    let expiry_s = match (v5, connect.clean) {
        (true, _) => connect.properties.session_expiry_s().unwrap_or(0),
        (false, true) => 0,
        (false, false) => durable::EXPIRY_NEVER,
    };
    let window = match connect.properties.receive_maximum() {
        Some(n) if v5 => usize::from(n).clamp(1, INFLIGHT_MAX),
        _ => INFLIGHT_MAX,
    };
    let conn = Rc::new(Conn {
        level,
        client_id: RefCell::new(String::new()),
        out: RefCell::new(Vec::new()),
        out_waker: Cell::new(None),
        closing: Cell::new(false),
        subs: RefCell::new(Vec::new()),
        next_packet_id: Cell::new(0),
        inflight: RefCell::new(HashMap::new()),
        qos2_received: RefCell::new(HashSet::new()),
        backlog: RefCell::new(VecDeque::new()),
        window,
        // docs/realtime.md: a clean session's outbound queue holds 1,000 events; a durable one the
        // session queue (and whatever does not fit waits in the audit log for the next resume).
        backlog_max: if expiry_s > 0 {
            shared.session_queue_max.max(INFLIGHT_MAX)
        } else {
            INFLIGHT_MAX
        },
        tracker: RefCell::new((expiry_s > 0).then(Tracker::default)),
        floor: RefCell::new(HashMap::new()),
        out_packet_bytes_max,
        aliases_out_max: connect
            .properties
            .iter()
            .find_map(|p| match p {
                Property::TopicAliasMaximum(n) => Some(*n),
                _ => None,
            })
            .unwrap_or(0),
        aliases_out: RefCell::new(HashMap::new()),
        overflowed: Cell::new(false),
        state_failed: Cell::new(false),
        state_more: Cell::new(false),
        heard: Cell::new(Instant::now()),
        keep_alive: Cell::new(None),
        expired: Cell::new(false),
        kick: kick.clone(),
    });
    spawn(write_loop(writer, conn.clone(), sessions.clone()));
    let refuse = |refusal: Refusal| {
        conn.send(&Packet::ConnAck(ConnAck {
            session_present: false,
            code: refusal.code(level),
            properties: Properties::default(),
        }));
        conn.closing.set(true);
        conn.wake_writer();
    };
    if v5 && connect.properties.authentication_method().is_some() {
        // Enhanced authentication (AUTH) is not planned (docs/mqtt.md feature matrix).
        return refuse(Refusal::BadAuthMethod);
    }
    if shared.shutdown.is_triggered() {
        return refuse(Refusal::Unavailable);
    }
    if connect
        .will
        .as_ref()
        .is_some_and(|w| !super::topic::general_topic_valid(&w.topic))
    {
        // A Will Topic is a topic name: not empty, no wildcard (MQTT 5 3.1.3.3, 3.1.1 3.1.3.3).
        // v5 says so in CONNACK 0x90; 3.1.1 has no code for it, so the connection is closed.
        tracing::info!(target: "mqtt", "{peer}: CONNECT refused: invalid will topic {:?}",
            connect.will.as_ref().map(|w| w.topic.as_str()).unwrap_or_default());
        if v5 {
            return refuse(Refusal::WillTopicInvalid);
        }
        conn.closing.set(true);
        conn.wake_writer();
        return;
    }
    let transport_caller = match certificate_caller(&shared, identity.certificate_cn.as_deref()) {
        Some(result) => Some(result),
        None => identity
            .upgrade_caller
            .filter(|_| connect.username.is_none())
            .map(Ok),
    };
    let caller = match transport_caller.unwrap_or_else(|| authenticate(&shared, &connect, peer)) {
        Ok(c) => c,
        Err(r) => {
            events::record(
                Event::AuthFailed,
                format_args!(
                    "{peer} as {:?} (client {:?})",
                    connect.username, connect.client_id
                ),
            );
            return refuse(r);
        }
    };
    let mut ack_props = Properties::default();
    let client_id = if connect.client_id.is_empty() {
        if !v5 && !connect.clean {
            return refuse(Refusal::ClientIdRefused);
        }
        let n = shared.next_client.fetch_add(1, Ordering::Relaxed);
        let id = format!("tidepool-{}-{n}", std::process::id());
        if v5 {
            ack_props.push(Property::AssignedClientIdentifier(id.clone()));
        }
        id
    } else {
        connect.client_id.clone()
    };
    if v5 {
        ack_props.push(Property::SharedSubscriptionAvailable(1));
        ack_props.push(Property::ReceiveMaximum(RECEIVE_MAXIMUM));
        ack_props.push(Property::TopicAliasMaximum(TOPIC_ALIAS_MAX));
        ack_props.push(Property::MaximumPacketSize(shared.packet_bytes_max as u32));
    }
    let mut keep_alive_s = connect.keep_alive_s;
    let cap = shared.keep_alive_max_s;
    if v5 && cap > 0 && (keep_alive_s == 0 || keep_alive_s > cap) {
        // 3.1.1 has no way to tell the client, so only v5 clients are held to the cap.
        keep_alive_s = cap;
        ack_props.push(Property::ServerKeepAlive(cap));
    }
    *conn.client_id.borrow_mut() = client_id.clone();
    if let Some(old) = shared.claim(&client_id, kick.clone()) {
        // The old connection stores its session before letting go; wait so we read that.
        Box::pin(old.released()).await;
    }
    let mut session = Session {
        shared: &shared,
        conn: &conn,
        sessions: &sessions,
        caller,
        aliases: HashMap::new(),
        client_id: client_id.clone(),
        expiry_s,
    };
    let restored = if connect.clean {
        // Clean session / Clean Start discards a stored session (docs/mqtt.md).
        if matches!(durable::load(&shared.resources, &client_id), Ok(Some(_))) {
            if let Err(e) = Box::pin(durable::discard(&shared.resources, &client_id)).await {
                tracing::warn!(target: "mqtt", "{peer}: discarding the stored session of {client_id:?} failed: {e}");
            }
        }
        None
    } else {
        match durable::load(&shared.resources, &client_id) {
            Ok(stored) => stored,
            Err(e) => {
                tracing::warn!(target: "mqtt", "{peer}: reading the stored session of {client_id:?} failed: {e}; starting a new one");
                None
            }
        }
    };
    // From here to the end of the resume nothing awaits, so no commit is dispatched between
    // registering the connection and reading the replay's horizon.
    sessions.conns.borrow_mut().push(Rc::downgrade(&conn));
    conn.send(&Packet::ConnAck(ConnAck {
        session_present: restored.is_some(),
        code: 0,
        properties: ack_props,
    }));
    let session_kind = match (&restored, expiry_s) {
        (Some(_), _) => "resumed",
        (None, 0) => "clean",
        (None, _) => "new durable",
    };
    events::record(
        Event::Connected,
        format_args!(
            "{peer} client {client_id:?} (MQTT {}, session {session_kind})",
            if v5 { "5" } else { "3.1.1" }
        ),
    );
    if let Some(stored) = restored {
        session.resume(stored);
    }

    // MQTT §3.1.2.10: one and a half times the Keep Alive without a packet closes the connection;
    // `Sessions::sweep_keep_alive` checks it.
    conn.heard.set(Instant::now());
    conn.keep_alive
        .set((keep_alive_s > 0).then(|| Duration::from_millis(u64::from(keep_alive_s) * 1500)));
    let mut will = connect.will.clone();
    let end: Option<u8> = loop {
        if conn.overflowed.get() {
            break Some(rc::QUOTA_EXCEEDED);
        }
        let packet = read_packet(
            &mut reader,
            shared.packet_bytes_max,
            level,
            Some(&conn.heard),
            &kick,
            &shared.shutdown,
        )
        .await;
        let packet = match packet {
            Ok(p) => p,
            Err(ReadError::Closed) => break None,
            Err(ReadError::Kicked) if conn.expired.get() => break Some(rc::KEEP_ALIVE_TIMEOUT),
            Err(ReadError::Kicked) if conn.overflowed.get() => break Some(rc::QUOTA_EXCEEDED),
            Err(ReadError::Kicked) if conn.state_failed.get() => break Some(rc::UNSPECIFIED),
            Err(ReadError::Kicked) => break Some(rc::SESSION_TAKEN_OVER),
            Err(ReadError::Shutdown) => break Some(rc::SERVER_SHUTTING_DOWN),
            Err(ReadError::Decode(e)) => {
                tracing::info!(target: "mqtt", "{peer}: {e}; closing");
                break Some(match e {
                    DecodeError::TooLarge { .. } => rc::PACKET_TOO_LARGE,
                    DecodeError::Protocol(_) => rc::PROTOCOL_ERROR,
                    _ => rc::MALFORMED,
                });
            }
        };
        // Boxed: handling is the largest state of this future, and an idle connection should
        // not carry its size (the box lives only while a packet is handled).
        match Box::pin(session.handle(packet)).await {
            Flow::Continue => {}
            Flow::Disconnect { publish_will } => {
                if !publish_will {
                    will = None;
                }
                conn.closing.set(true);
                break None;
            }
            Flow::Close(code) => break Some(code),
        }
    };
    if let Some(code) = end {
        if v5 {
            conn.send(&Packet::Disconnect(Reason::new(code)));
        }
        tracing::info!(target: "mqtt", "{peer}: closing client {client_id:?} (reason 0x{code:02x})");
    }
    conn.closing.set(true);
    conn.wake_writer();
    Box::pin(session.end()).await;
    shared.release(&client_id, &kick);
    if let Some(will) = will {
        // MQTT 5 §3.1.3.2.2: the will waits its Will Delay Interval, or until the session ends
        // if that comes first, and is dropped if the client reconnects meanwhile.
        let delay_s = will
            .properties
            .iter()
            .find_map(|p| match p {
                Property::WillDelayInterval(s) => Some(*s),
                _ => None,
            })
            .unwrap_or(0)
            .min(session.expiry_s);
        if delay_s == 0 {
            Box::pin(session.publish_will(will)).await;
        } else {
            let (shared, conn, sessions) = (shared.clone(), conn.clone(), sessions.clone());
            let (caller, client_id) = (session.caller.clone(), client_id.clone());
            spawn(async move {
                let delay = tidepool_io::sleep(Duration::from_secs(u64::from(delay_s)));
                // At shutdown the will goes out now rather than never.
                let _ = race(delay, shared.shutdown.wait()).await;
                if shared.is_connected(&client_id) {
                    return;
                }
                let late = Session {
                    shared: &shared,
                    conn: &conn,
                    sessions: &sessions,
                    caller,
                    aliases: HashMap::new(),
                    client_id,
                    expiry_s: 0,
                };
                late.publish_will(will).await;
            });
        }
    }
    events::record(
        Event::Disconnected,
        format_args!("{peer} client {client_id:?}"),
    );
    if v5 && end.is_some_and(|c| c != rc::SESSION_TAKEN_OVER && c != rc::SERVER_SHUTTING_DOWN) {
        // A client still sending (acknowledging what it got) when we disconnect it would hit a
        // reset before reading our DISCONNECT; read and drop its packets for a moment first.
        let drain = async {
            while read_packet(
                &mut reader,
                shared.packet_bytes_max,
                level,
                None,
                &kick,
                &shared.shutdown,
            )
            .await
            .is_ok()
            {}
        };
        let _ = timeout(DRAIN_AFTER_DISCONNECT, drain).await;
    }
}

/// A subscription filter with the database it reads and its table (none: general topics).
type Resolved = (
    Filter,
    Arc<crate::resource::Database>,
    Option<Arc<crate::resource::Table>>,
);

/// Why a subscription filter names nothing this session may read.
#[derive(Debug, Clone, PartialEq)]
enum Unresolved {
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

enum Flow {
    Continue,
    Disconnect { publish_will: bool },
    Close(u8),
}

struct Session<'a> {
    shared: &'a MqttShared,
    conn: &'a Rc<Conn>,
    sessions: &'a Sessions,
    caller: Caller,
    /// v5 topic aliases the client set.
    aliases: HashMap<u16, String>,
    client_id: String,
    /// Session Expiry Interval (s): 0 ends the session with the connection.
    expiry_s: u32,
}

impl Session<'_> {
    fn v5(&self) -> bool {
        self.conn.level == Level::V5
    }

    /// The caller's readable attributes of a table when its role restricts them (docs/security.md).
    fn readable(&self, def: &crate::schema::TableDef) -> Option<Rc<ReadableAttributes>> {
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
    fn resolve(&self, raw: &str) -> Result<Resolved, Unresolved> {
        let exported = Filter::parse(raw).map(|f| {
            let found = self.shared.resources.export(f.export());
            (f, found)
        });
        match exported {
            Ok((filter, Some((db, table)))) => {
                if !permitted(&self.caller, "read", &table.def.database, &table.def.table) {
                    return Err(Unresolved::NotPermitted);
                }
                Ok((filter, db, Some(table)))
            }
            _ if self.shared.general_topics => {
                let filter = Filter::parse_general(raw).map_err(Unresolved::Filter)?;
                let (db, _) = self
                    .shared
                    .resources
                    .table(durable::SYSTEM, general::TABLE)
                    .ok_or(Unresolved::NoExport)?;
                Ok((filter, db, None))
            }
            Ok((_, None)) => Err(Unresolved::NoExport),
            Err(e) => Err(Unresolved::Filter(e)),
        }
    }

    fn durable(&self) -> bool {
        self.conn.tracker.borrow().is_some()
    }

    /// Stores the session now (after its subscriptions changed), so a crash keeps them.
    async fn persist(&self) {
        if !self.durable() || self.expiry_s == 0 {
            return;
        }
        let stored = self.conn.stored(self.expiry_s);
        if let Err(e) = durable::save(&self.shared.resources, &self.client_id, &stored).await {
            tracing::warn!(target: "mqtt", "storing the session of {:?} failed: {e}", self.client_id);
        }
    }

    /// At the end of the connection: stores a durable session with its expiry, or forgets a
    /// resumed one whose expiry is now 0.
    async fn end(&self) {
        for sub in self.conn.subs.borrow().iter() {
            if let Some(group) = sub.filter.share() {
                let key = share::key(group, sub.filter.topic_filter());
                self.shared.groups.leave(&key, &self.client_id);
            }
        }
        if !self.durable() {
            return;
        }
        let result = if self.expiry_s > 0 {
            let stored = self.conn.stored(self.expiry_s);
            durable::save(&self.shared.resources, &self.client_id, &stored).await
        } else {
            durable::discard(&self.shared.resources, &self.client_id).await
        };
        if let Err(e) = result {
            tracing::warn!(target: "mqtt", "storing the session of {:?} at disconnect failed: {e}", self.client_id);
        }
    }

    /// Restores a stored session: its subscriptions (those still permitted), the PUBRELs it is
    /// owed, then the QoS ≥ 1 events it missed, oldest first, resent ones with their old packet
    /// ids and DUP = 1. Synchronous: see `serve`.
    fn resume(&self, stored: Stored) {
        let conn = self.conn;
        let mut databases: Vec<(Arc<crate::resource::Database>, Vec<usize>)> = Vec::new();
        let mut subs = Vec::new();
        for s in stored.subs {
            let (filter, db, table) = match self.resolve(&s.filter) {
                Ok(r) => r,
                Err(e) => {
                    tracing::info!(target: "mqtt", "{:?}: stored subscription {:?} dropped: {e}", self.client_id, s.filter);
                    continue;
                }
            };
            if let Some(group) = filter.share() {
                // Messages to the group went to the members that were there.
                let key = share::key(group, filter.topic_filter());
                self.shared.groups.join(&key, &self.client_id);
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
        *conn.qos2_received.borrow_mut() = stored.qos2_received.into_iter().collect();
        let mut resend: std::collections::BTreeMap<(Arc<str>, EventKey), u16> =
            std::collections::BTreeMap::new();
        for f in stored.inflight {
            if f.released {
                conn.inflight.borrow_mut().insert(
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
        let mut missed = Vec::new();
        for (db, indexes) in &databases {
            let read = db
                .read()
                .and_then(|txn| durable::horizon(&txn, self.sessions.since(&db.name)));
            let horizon = match read {
                Ok(h) => h,
                Err(e) => {
                    tracing::warn!(target: "mqtt", "{:?}: resuming on {} failed: {e}", self.client_id, db.name);
                    continue;
                }
            };
            conn.floor.borrow_mut().insert(db.name.clone(), horizon);
            let replay_subs: Vec<durable::ReplaySub<'_>> = indexes
                .iter()
                .filter_map(|i| subs.get(*i))
                .map(|s| durable::ReplaySub {
                    filter: &s.filter,
                    qos: s.qos,
                    since: s.since,
                })
                .collect();
            let export_of = |table: &str| self.shared.export_of(&db.name, table).cloned();
            let before = missed.len();
            match durable::replay(
                db,
                horizon,
                &replay_subs,
                &stored.tracker,
                &export_of,
                self.shared.session_queue_max,
                &mut missed,
            ) {
                Ok(0) => {}
                Ok(dropped) => tracing::warn!(target: "mqtt",
                    "{:?}: {dropped} queued messages of {} dropped, oldest first (mqtt.sessionQueueMax = {})",
                    self.client_id, db.name, self.shared.session_queue_max),
                Err(e) => {
                    missed.truncate(before);
                    tracing::warn!(target: "mqtt", "{:?}: replaying {} failed: {e}", self.client_id, db.name);
                }
            }
        }
        *conn.subs.borrow_mut() = subs;
        *conn.tracker.borrow_mut() = Some(stored.tracker);
        tracing::info!(target: "mqtt", "{:?}: resumed with {} queued messages", self.client_id, missed.len());
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

    async fn handle(&mut self, packet: Packet) -> Flow {
        match packet {
            Packet::Publish(p) => return self.on_publish(p).await,
            Packet::PubAck(a) | Packet::PubComp(a) => {
                if self.conn.completed(a.packet_id) {
                    self.conn.fill_state(self.sessions);
                }
            }
            Packet::PubRec(a) => {
                if a.code >= 0x80 {
                    // The client refused it: the exchange ends here.
                    self.conn.completed(a.packet_id);
                } else {
                    let known = self.conn.received(a.packet_id);
                    let code = if known || !self.v5() {
                        0
                    } else {
                        rc::PACKET_ID_NOT_FOUND
                    };
                    self.conn.send(&Packet::PubRel(Ack::new(a.packet_id, code)));
                }
            }
            Packet::PubRel(a) => {
                let known = self.conn.qos2_received.borrow_mut().remove(&a.packet_id);
                let code = if known || !self.v5() {
                    0
                } else {
                    rc::PACKET_ID_NOT_FOUND
                };
                self.conn
                    .send(&Packet::PubComp(Ack::new(a.packet_id, code)));
            }
            Packet::Subscribe(s) => {
                self.on_subscribe(s);
                self.persist().await;
            }
            Packet::Unsubscribe(u) => {
                let mut codes = Vec::new();
                {
                    let mut subs = self.conn.subs.borrow_mut();
                    for f in &u.filters {
                        let before = subs.len();
                        let removed = subs.iter().find(|s| s.filter.as_str() == f);
                        if let Some(filter) = removed.map(|s| &s.filter) {
                            if let Some(group) = filter.share() {
                                let key = share::key(group, filter.topic_filter());
                                self.shared.groups.leave(&key, &self.client_id);
                            }
                        }
                        subs.retain(|s| s.filter.as_str() != f);
                        codes.push(if subs.len() < before {
                            0
                        } else {
                            rc::NO_SUBSCRIPTION_EXISTED
                        });
                    }
                }
                self.conn.send(&Packet::UnsubAck(UnsubAck {
                    packet_id: u.packet_id,
                    properties: Properties::default(),
                    codes,
                }));
                self.persist().await;
            }
            Packet::PingReq => self.conn.send(&Packet::PingResp),
            Packet::Disconnect(r) => {
                if let Some(expiry_s) = r.properties.session_expiry_s() {
                    // MQTT 5 §3.14.2.2.2: a session that ends with its connection cannot be
                    // made durable at DISCONNECT.
                    if self.expiry_s == 0 && expiry_s > 0 {
                        return Flow::Close(rc::PROTOCOL_ERROR);
                    }
                    self.expiry_s = expiry_s;
                }
                // v5 0x04: "disconnect with will message".
                return Flow::Disconnect {
                    publish_will: r.code == 0x04,
                };
            }
            Packet::Auth(_) => return Flow::Close(rc::PROTOCOL_ERROR),
            Packet::Connect(_) => return Flow::Close(rc::PROTOCOL_ERROR),
            Packet::ConnAck(_) | Packet::SubAck(_) | Packet::UnsubAck(_) | Packet::PingResp => {
                return Flow::Close(rc::PROTOCOL_ERROR)
            }
        }
        Flow::Continue
    }

    async fn on_publish(&mut self, mut p: Publish) -> Flow {
        if let Some(alias) = p.properties.topic_alias() {
            if alias == 0 || alias > TOPIC_ALIAS_MAX {
                return Flow::Close(rc::TOPIC_ALIAS_INVALID);
            }
            if p.topic.is_empty() {
                match self.aliases.get(&alias) {
                    Some(t) => p.topic = t.clone(),
                    None => return Flow::Close(rc::PROTOCOL_ERROR),
                }
            } else {
                self.aliases.insert(alias, p.topic.clone());
            }
        }
        if p.topic.is_empty() {
            // No topic and no alias to stand for it: a protocol error ([MQTT-3.3.2-1], 3.3.2.3.4).
            tracing::info!(target: "mqtt", "PUBLISH without a topic name or alias: closing");
            return Flow::Close(rc::PROTOCOL_ERROR);
        }
        if p.topic.contains(['+', '#']) {
            // A wildcard in a topic name is a protocol error, not a refusal ([MQTT-3.3.2-2],
            // [MQTT-4.7.3-1]): no acknowledgement, the connection is closed (v5: DISCONNECT 0x90).
            tracing::info!(target: "mqtt", "PUBLISH to {:?}: a wildcard in a topic name; closing", p.topic);
            return Flow::Close(rc::TOPIC_NAME_INVALID);
        }
        if p.qos == 2 {
            if self.conn.qos2_received.borrow().contains(&p.packet_id) {
                // A resend of one already applied (DUP): acknowledge, do not apply twice.
                self.conn.send(&Packet::PubRec(Ack::new(p.packet_id, 0)));
                return Flow::Continue;
            }
            if self.conn.qos2_received.borrow().len() >= usize::from(RECEIVE_MAXIMUM) {
                return Flow::Close(rc::RECEIVE_MAXIMUM_EXCEEDED);
            }
        }
        let code = self.apply(&p).await;
        let code = if self.v5() { code } else { 0 };
        match p.qos {
            1 => self.conn.send(&Packet::PubAck(Ack::new(p.packet_id, code))),
            2 => {
                if code < 0x80 {
                    self.conn.qos2_received.borrow_mut().insert(p.packet_id);
                }
                self.conn.send(&Packet::PubRec(Ack::new(p.packet_id, code)));
            }
            _ => {}
        }
        Flow::Continue
    }

    /// Leaves a note of what `p` carries beyond its payload for the subscribers (see
    /// `notes.rs`) when anyone could use it: v5 properties to pass on, a No Local subscription of
    /// this session, or a retained publish while Retain As Published subscriptions exist.
    fn leave_note(&self, p: &Publish, database: &str, table: &str, op: &WriteOp) -> bool {
        let note = Note::new(&self.client_id, p.retain, p.qos, &p.properties);
        let no_local = self
            .conn
            .subs
            .borrow()
            .iter()
            .any(|s| s.options & NO_LOCAL != 0);
        // Below QoS 2 the delivered QoS of a message is capped by the publish's.
        let capped =
            p.qos < 2 && (matches!(op, WriteOp::Message { .. }) || table == general::TABLE);
        let wanted = !note.properties.is_empty()
            || capped
            || no_local
            || (p.retain && self.shared.retain_as_published.load(Ordering::Relaxed));
        if !wanted {
            return false;
        }
        let (key, kind, payload) = match op {
            WriteOp::Message { key, payload, .. } => (
                key.clone().unwrap_or(Value::Null),
                ChangeKind::Message,
                Some(payload.clone()),
            ),
            WriteOp::Put { key: Some(key), .. } => (key.clone(), ChangeKind::Put, None),
            WriteOp::Delete { key, .. } => (key.clone(), ChangeKind::Delete, None),
            _ => return false,
        };
        let left = self
            .shared
            .notes
            .leave(database, table, key, kind, payload, note);
        if !left {
            tracing::warn!(target: "mqtt", "{} publish notes pending; the properties of a publish to {:?} are not passed on", notes::NOTES_MAX, p.topic);
        }
        left
    }

    /// Applies one inbound publish through the resource layer; returns the v5 reason code.
    async fn apply(&self, p: &Publish) -> u8 {
        // MQTT 5 §3.3.2.3.2: a payload declared UTF-8 must be.
        let utf8_declared = p
            .properties
            .iter()
            .any(|x| matches!(x, Property::PayloadFormatIndicator(1)));
        if utf8_declared && std::str::from_utf8(&p.payload).is_err() {
            tracing::info!(target: "mqtt", "publish to {:?} refused: payload is not the UTF-8 it declares", p.topic);
            return rc::PAYLOAD_FORMAT_INVALID;
        }
        if self.shared.general_topics {
            let exported = PublishTopic::parse(&p.topic)
                .is_ok_and(|t| self.shared.resources.export(t.export).is_some());
            if !exported {
                return self.apply_general(p).await;
            }
        }
        let topic = match PublishTopic::parse(&p.topic) {
            Ok(t) => t,
            Err(e) => {
                tracing::info!(target: "mqtt", "publish to {:?} dropped: {e}", p.topic);
                return rc::TOPIC_NAME_INVALID;
            }
        };
        let Some((db, table)) = self.shared.resources.export(topic.export) else {
            tracing::info!(target: "mqtt", "publish to {:?} dropped: no export {:?}", p.topic, topic.export);
            return rc::TOPIC_NAME_INVALID;
        };
        let def = &table.def;
        let id = match topic.id.map(|raw| resource::parse_id(def, raw)).transpose() {
            Ok(id) => id,
            Err(e) => {
                tracing::info!(target: "mqtt", "publish to {:?} dropped: {e}", p.topic);
                return rc::TOPIC_NAME_INVALID;
            }
        };
        let action = match (p.retain, &id) {
            // docs/mqtt.md: a bare table topic needs `insert`, retained or not.
            (_, None) => "insert",
            (true, Some(_)) if p.payload.is_empty() => "delete",
            _ => "update",
        };
        if !permitted(&self.caller, action, &def.database, &def.table) {
            tracing::info!(target: "mqtt", "publish to {:?} dropped: not permitted", p.topic);
            return rc::NOT_AUTHORIZED;
        }
        let content_type = p.properties.content_type();
        let op = if p.retain && p.payload.is_empty() {
            let Some(key) = id else {
                return rc::TOPIC_NAME_INVALID;
            };
            WriteOp::Delete {
                table: def.table.clone(),
                key,
            }
        } else {
            let value = match payload::decode(&p.payload, content_type) {
                Ok(v) => v,
                Err(e) => {
                    tracing::info!(target: "mqtt", "publish to {:?} refused: {e}", p.topic);
                    return rc::PAYLOAD_FORMAT_INVALID;
                }
            };
            if p.retain {
                let mut record = payload::record(value, content_type);
                // docs/security.md: a write touching an attribute without the right is refused.
                let attributes = record.iter().map(|(k, _)| k);
                let right = match id {
                    Some(_) => resource::permissions::Action::Update,
                    None => resource::permissions::Action::Insert,
                };
                let pk = def.primary_key.as_deref();
                if let Err(denied) = resource::permissions::check(
                    &self.caller,
                    &def.database,
                    &def.table,
                    pk,
                    right,
                    attributes,
                ) {
                    let names: Vec<&str> = denied
                        .required_attribute_permissions
                        .iter()
                        .map(|(n, _)| n.as_str())
                        .chain(denied.invalid.iter().map(String::as_str))
                        .collect();
                    tracing::info!(target: "mqtt", "publish to {:?} dropped: not permitted to write {names:?}", p.topic);
                    return rc::NOT_AUTHORIZED;
                }
                if let Err(e) = resource::validate_record(def, &mut record, Validation::Full) {
                    tracing::info!(target: "mqtt", "publish to {:?} refused: {e}", p.topic);
                    return rc::PAYLOAD_FORMAT_INVALID;
                }
                WriteOp::Put {
                    table: def.table.clone(),
                    key: id,
                    record: Value::Object(record),
                    mode: crate::resource::PutMode::Replace,
                    expires_in_s: None,
                }
            } else {
                WriteOp::Message {
                    table: def.table.clone(),
                    key: id,
                    payload: value,
                }
            }
        };
        self.submit(p, &db, &def.table, op).await
    }

    /// Writes one publish's operation (leaving its note first); returns the v5 reason code.
    async fn submit(
        &self,
        p: &Publish,
        db: &Arc<crate::resource::Database>,
        table: &str,
        op: WriteOp,
    ) -> u8 {
        let noted = self.leave_note(p, &db.name, table, &op);
        let written = resource::write_many(db, &self.caller, vec![op]).await;
        if noted {
            let version = written.as_ref().ok().map(|w| w.version);
            self.shared.notes.settle(&self.client_id, version);
        }
        match written {
            Ok(_) => 0,
            Err(e) => {
                tracing::info!(target: "mqtt", "publish to {:?} failed: {e}", p.topic);
                match e {
                    WriteError::Invalid(_) => rc::PAYLOAD_FORMAT_INVALID,
                    WriteError::Overloaded(_) => rc::QUOTA_EXCEEDED,
                    WriteError::Condition(
                        ConditionFailed::MayNotInsert | ConditionFailed::MayNotUpdate,
                    ) => rc::NOT_AUTHORIZED,
                    _ => rc::UNSPECIFIED,
                }
            }
        }
    }

    /// A publish to a general topic (`mqtt.generalTopics`, see `general.rs`): retained → the
    /// record of the topic (expiring with the Message Expiry Interval), empty retained → delete,
    /// otherwise a message event.
    async fn apply_general(&self, p: &Publish) -> u8 {
        if !super::topic::general_topic_valid(&p.topic) {
            tracing::info!(target: "mqtt", "publish to {:?} dropped: not a valid topic name", p.topic);
            return rc::TOPIC_NAME_INVALID;
        }
        let Some((db, _)) = self.shared.resources.table(durable::SYSTEM, general::TABLE) else {
            return rc::UNSPECIFIED;
        };
        let table = general::TABLE.to_string();
        let key = Value::String(p.topic.clone());
        let passed_on = Note::new(&self.client_id, p.retain, p.qos, &p.properties).properties;
        let envelope =
            general::Envelope::new(&p.payload, p.qos, &passed_on, crate::resource::now_ms());
        let op = if p.retain && p.payload.is_empty() {
            WriteOp::Delete { table, key }
        } else if p.retain {
            let expiry_s = p.properties.iter().find_map(|x| match x {
                Property::MessageExpiryInterval(s) => Some(f64::from(*s)),
                _ => None,
            });
            WriteOp::Put {
                table,
                record: envelope.to_value(Some(&p.topic)),
                key: Some(key),
                mode: crate::resource::PutMode::Replace,
                expires_in_s: expiry_s,
            }
        } else {
            WriteOp::Message {
                table,
                key: Some(key),
                payload: envelope.to_value(None),
            }
        };
        self.submit(p, &db, general::TABLE, op).await
    }

    fn on_subscribe(&self, s: Subscribe) {
        let v5 = self.v5();
        let mut codes = Vec::with_capacity(s.filters.len());
        let mut initial = Vec::new();
        for (raw, options) in &s.filters {
            let (filter, db, table) = match self.resolve(raw) {
                Ok(r) => r,
                Err(e) => {
                    tracing::info!(target: "mqtt", "subscribe to {raw:?} refused: {e}");
                    codes.push(match (v5, e) {
                        (false, _) => 0x80,
                        (true, Unresolved::Filter(TopicError::Shared)) => rc::SHARED_NOT_SUPPORTED,
                        (true, Unresolved::NotPermitted) => rc::NOT_AUTHORIZED,
                        (true, _) => rc::TOPIC_FILTER_INVALID,
                    });
                    continue;
                }
            };
            let mut subs = self.conn.subs.borrow_mut();
            let existing = subs.iter().position(|x| x.filter.as_str() == raw);
            let is_new = existing.is_none();
            if is_new && subs.len() >= durable::SUBSCRIPTIONS_MAX {
                codes.push(if v5 { rc::QUOTA_EXCEEDED } else { 0x80 });
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
                self.shared
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
                self.shared.groups.join(&key, &self.client_id);
                continue;
            }
            if send_state && filter.matches_records() {
                initial.push(filter);
            }
        }
        self.conn.send(&Packet::SubAck(SubAck {
            packet_id: s.packet_id,
            properties: Properties::default(),
            codes,
        }));
        for filter in &initial {
            self.start_state(filter);
        }
        if !initial.is_empty() {
            self.conn.fill_state(self.sessions);
        }
    }

    /// Starts streaming the current state of every record `filter` matches as retained
    /// PUBLISHes (see [`Conn::fill_state`]); live events it holds are not sent again.
    fn start_state(&self, filter: &Filter) {
        let target = if filter.is_general() {
            self.shared.resources.table(durable::SYSTEM, general::TABLE)
        } else {
            self.shared.resources.export(filter.export())
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
        }
    }

    async fn publish_will(&self, will: Will) {
        let p = Publish {
            dup: false,
            qos: will.qos,
            retain: will.retain,
            topic: will.topic,
            packet_id: 0,
            properties: will.properties,
            payload: will.payload,
        };
        let code = self.apply(&p).await;
        if code >= 0x80 {
            tracing::info!(target: "mqtt", "will to {:?} not published (0x{code:02x})", p.topic);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(refusal: Refusal, v4: u8, v5: u8) {
        assert_eq!(
            (refusal.code(Level::V4), refusal.code(Level::V5)),
            (v4, v5),
            "{refusal:?}"
        );
    }

    #[test]
    fn connack_codes_follow_the_spec_table() {
        check(Refusal::UnsupportedLevel, 0x01, 0x84);
        check(Refusal::ClientIdRefused, 0x02, 0x85);
        check(Refusal::WillTopicInvalid, 0x05, 0x90);
        check(Refusal::Unavailable, 0x03, 0x88);
        check(Refusal::BadCredentials, 0x04, 0x86);
        check(Refusal::NotAuthorized, 0x05, 0x87);
        check(Refusal::BadAuthMethod, 0x05, 0x8c);
        check(Refusal::QuotaExceeded, 0x05, 0x97);
    }

    #[test]
    fn ids_as_topic_levels() {
        assert_eq!(id_text(&Value::Int(12)), "12");
        assert_eq!(id_text(&Value::String("a/b".into())), "a/b");
        assert_eq!(id_text(&Value::Float(1.5)), "1.5");
    }
}
