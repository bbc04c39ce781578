//! One MQTT connection on the core that accepted it (SPEC §6.3): CONNECT within 10 s, keep-alive,
//! takeover, PUBLISH into the resource layer, SUBSCRIBE with the current state, then live events.
//!
//! A connection runs as two tasks on its core: the reader (this module's [`serve`]), which decodes
//! packets and handles them one at a time, in order; and a writer, which flushes the outbound
//! buffer that the reader and the core's event dispatcher ([`Sessions::dispatch`]) fill. Writes go
//! to tables only through `resource`; nothing here opens a transaction other than short reads.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::future::poll_fn;
use std::net::SocketAddr;
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};
use std::time::Duration;

use tidepool_io::{race, spawn, timeout, Either, ReadBytes, ReadHalf, Shutdown, Split, WriteBytes};

use super::codec::{
    self, Ack, ConnAck, Connect, DecodeError, Level, Packet, Publish, Reason, SubAck, Subscribe,
    UnsubAck, Will,
};
use super::payload;
use super::props::{Properties, Property};
use super::topic::{Filter, PublishTopic, TopicError};
use crate::resource::permissions::ReadableAttributes;
use crate::resource::{self, Caller, Resources, Validation};
use crate::store::{ChangeKind, Commit, WriteError, WriteOp, WriteRequest};
use crate::value::{self, Value};

/// CONNECT must arrive this soon after the connection opens (SPEC §6.3).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Unacknowledged outbound QoS ≥ 1 messages per session; reaching it disconnects (v5 `0x97`).
pub const INFLIGHT_MAX: usize = 1000;
/// Outbound bytes buffered per connection; past it QoS 0 events are dropped, QoS ≥ 1 disconnect.
pub const OUT_BYTES_MAX: usize = 16 << 20;
/// Inbound QoS 2 packet ids remembered until PUBREL; reaching it disconnects (v5 `0x93`).
pub const QOS2_PENDING_MAX: usize = 65_535;
/// Topic aliases a v5 client may set (we advertise this as Topic Alias Maximum).
pub const TOPIC_ALIAS_MAX: u16 = 64;
/// Bytes asked for per read.
const READ_SPARE_BYTES: usize = 4096;

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

/// CONNACK return codes by situation (SPEC §6.3 table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    UnsupportedLevel,
    ClientIdRefused,
    Unavailable,
    BadCredentials,
    NotAuthorized,
    BadAuthMethod,
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
            // 3.1.1 has no AUTH; the closest is "not authorized".
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
/// super user; the check plugs in here and returns `BadCredentials` / `NotAuthorized` per §5.6.
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

/// Who a verified client certificate authenticates as (SPEC §5.4: an unknown or inactive user
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

/// Whether `caller` may do `action` on a table (SPEC §5.5: a publish to a record needs update,
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
    /// `http.maxBodySize` (SPEC §6.3), capped at MQTT's own maximum.
    pub packet_bytes_max: usize,
    pub require_authentication: bool,
    pub shutdown: Shutdown,
    /// Connected client ids on any core, for takeover.
    clients: Mutex<HashMap<String, Arc<Kick>>>,
    /// (database, table) → export name, to name topics of committed changes.
    exports: HashMap<(String, String), String>,
    next_client: AtomicU64,
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
            resources,
            // MQTT 5 allows Maximum Packet Size up to the remaining-length ceiling.
            packet_bytes_max: packet_bytes_max.min(codec::REMAINING_BYTES_MAX),
            require_authentication,
            shutdown,
            clients: Mutex::new(HashMap::new()),
            exports,
            next_client: AtomicU64::new(1),
        }
    }

    /// Registers `id` as connected, kicking whoever held it (SPEC §6.3 takeover).
    fn claim(&self, id: &str, kick: Arc<Kick>) {
        let old = self
            .clients
            .lock()
            .ok()
            .and_then(|mut c| c.insert(id.to_string(), kick));
        if let Some(old) = old {
            old.kick();
        }
    }

    fn release(&self, id: &str, kick: &Arc<Kick>) {
        if let Ok(mut c) = self.clients.lock() {
            if c.get(id).is_some_and(|k| Arc::ptr_eq(k, kick)) {
                c.remove(id);
            }
        }
    }
}

/// One subscription of a session.
struct Sub {
    filter: Filter,
    qos: u8,
    /// Records sent as initial state with their versions: a live event at or below that version
    /// was already reflected, so it is not sent again (no duplicate between state and events).
    sent: HashMap<String, f64>,
    /// The subscriber's readable attributes when its role restricts them (SPEC §5.5).
    readable: Option<Rc<ReadableAttributes>>,
}

/// A record or message as a subscriber limited to `readable` receives it (SPEC §5.5: events and
/// retained state are trimmed by attribute read permissions). Returns the content type.
fn encode_trimmed(value: &Value, readable: &ReadableAttributes, out: &mut Vec<u8>) -> &'static str {
    let mut value = value.clone();
    readable.trim(&mut value);
    payload::encode(Some(&value), out)
}

/// Per-connection state shared by its reader, its writer and the core's dispatcher.
struct Conn {
    level: Level,
    out: RefCell<Vec<u8>>,
    out_waker: Cell<Option<Waker>>,
    closing: Cell<bool>,
    subs: RefCell<Vec<Sub>>,
    next_packet_id: Cell<u16>,
    /// Outbound QoS ≥ 1 packet ids awaiting PUBACK / PUBREC→PUBCOMP.
    inflight: RefCell<HashSet<u16>>,
    /// Inbound QoS 2 packet ids applied and awaiting PUBREL.
    qos2_received: RefCell<HashSet<u16>>,
    /// The client's Maximum Packet Size (v5); larger outbound packets are not sent.
    out_packet_bytes_max: usize,
    /// Set when an outbound bound was hit for a QoS ≥ 1 event: the reader closes with `0x97`.
    overflowed: Cell<bool>,
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

    fn packet_id(&self) -> Option<u16> {
        let inflight = self.inflight.borrow();
        if inflight.len() >= INFLIGHT_MAX {
            return None;
        }
        let mut id = self.next_packet_id.get();
        loop {
            id = id.checked_add(1).unwrap_or(1);
            if !inflight.contains(&id) {
                self.next_packet_id.set(id);
                return Some(id);
            }
        }
    }

    /// Queues one PUBLISH; false if a bound was hit (QoS 0: dropped; QoS ≥ 1: the connection is
    /// marked to close with `0x97`).
    fn publish(
        &self,
        topic: String,
        qos: u8,
        retain: bool,
        body: &[u8],
        content_type: &str,
    ) -> bool {
        if self.out.borrow().len() > OUT_BYTES_MAX {
            if qos > 0 {
                self.overflowed.set(true);
                self.wake_writer();
            }
            return false;
        }
        let packet_id = if qos > 0 {
            match self.packet_id() {
                Some(id) => id,
                None => {
                    self.overflowed.set(true);
                    self.wake_writer();
                    return false;
                }
            }
        } else {
            0
        };
        let mut properties = Properties::default();
        if self.level == Level::V5 {
            properties.push(Property::ContentType(content_type.to_string()));
        }
        let packet = Packet::Publish(Publish {
            dup: false,
            qos,
            retain,
            topic,
            packet_id,
            properties,
            payload: body.to_vec(),
        });
        let mut encoded = Vec::new();
        codec::encode(&packet, self.level, &mut encoded);
        if encoded.len() > self.out_packet_bytes_max {
            // MQTT 5 §3.1.2.11.4: a packet over the client's maximum is discarded as if sent.
            return true;
        }
        if qos > 0 {
            self.inflight.borrow_mut().insert(packet_id);
        }
        self.out.borrow_mut().extend_from_slice(&encoded);
        self.wake_writer();
        true
    }
}

/// The MQTT sessions of one core, fed committed changes by the core's dispatcher task.
#[derive(Default)]
pub struct Sessions {
    conns: RefCell<Vec<Weak<Conn>>>,
}

impl Sessions {
    pub fn new() -> Self {
        Self::default()
    }

    /// Delivers every change of `commit` to each matching session of this core, once per session
    /// at the highest granted QoS among its matching filters.
    pub fn dispatch(&self, shared: &MqttShared, commit: &Commit) {
        let mut conns = self.conns.borrow_mut();
        conns.retain(|c| c.strong_count() > 0);
        if conns.is_empty() {
            return;
        }
        for change in &commit.changes {
            let Some(export) = shared
                .exports
                .get(&(commit.database.to_string(), change.table.to_string()))
            else {
                continue;
            };
            // Messages to the bare table topic carry a null key.
            let id = match (&change.kind, &change.key) {
                (ChangeKind::Message, Value::Null) => None,
                (_, key) => Some(id_text(key)),
            };
            let mut body = Vec::new();
            let content_type = match change.kind {
                ChangeKind::Delete => payload::encode::<&Value>(None, &mut body),
                _ => payload::encode(
                    Some(change.value.as_ref().unwrap_or(&Value::Null)),
                    &mut body,
                ),
            };
            let topic = match &id {
                Some(id) => format!("{export}/{id}"),
                None => export.clone(),
            };
            // Trimmed bodies for restricted subscribers, one per distinct attribute set.
            let mut trimmed: Vec<(Rc<ReadableAttributes>, Vec<u8>, &'static str)> = Vec::new();
            for conn in conns.iter().filter_map(Weak::upgrade) {
                let mut qos = None;
                let mut readable = None;
                for sub in conn.subs.borrow().iter() {
                    if !sub.filter.matches(export, id.as_deref()) {
                        continue;
                    }
                    let seen = id
                        .as_ref()
                        .and_then(|i| sub.sent.get(i))
                        .is_some_and(|v| *v >= commit.version);
                    if change.kind != ChangeKind::Message && seen {
                        continue;
                    }
                    qos = Some(qos.map_or(sub.qos, |q: u8| q.max(sub.qos)));
                    readable = readable.or_else(|| sub.readable.clone());
                }
                let Some(qos) = qos else { continue };
                match (readable, &change.value) {
                    (Some(r), Some(v)) if change.kind != ChangeKind::Delete => {
                        let at = match trimmed.iter().position(|(set, _, _)| **set == *r) {
                            Some(at) => at,
                            None => {
                                let mut out = Vec::new();
                                let ct = encode_trimmed(v, &r, &mut out);
                                trimmed.push((r, out, ct));
                                trimmed.len() - 1
                            }
                        };
                        if let Some((_, b, ct)) = trimmed.get(at) {
                            conn.publish(topic.clone(), qos, false, b, ct);
                        }
                    }
                    _ => {
                        conn.publish(topic.clone(), qos, false, &body, content_type);
                    }
                }
            }
        }
    }
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
    KeepAlive,
    Kicked,
    Shutdown,
}

/// Reads until one whole packet is buffered, then decodes it. Bytes after it stay buffered in
/// the read half.
async fn read_packet<R: ReadBytes>(
    reader: &mut ReadHalf<R>,
    packet_bytes_max: usize,
    level: Level,
    keep_alive: Option<Duration>,
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
        let stop = race(kick.wait(), shutdown.wait());
        // A read dropped on keep-alive expiry, takeover or shutdown loses nothing (the read half
        // keeps it), though each of these closes the connection anyway.
        let read = reader.fill();
        let result = match keep_alive {
            Some(limit) => match timeout(limit, race(read, stop)).await {
                Ok(r) => r,
                Err(_) => return Err(ReadError::KeepAlive),
            },
            None => race(read, stop).await,
        };
        match result {
            Either::Left(Ok(0)) | Either::Left(Err(_)) => return Err(ReadError::Closed),
            Either::Left(Ok(_)) => {}
            Either::Right(Either::Left(())) => return Err(ReadError::Kicked),
            Either::Right(Either::Right(())) => return Err(ReadError::Shutdown),
        }
    }
}

/// Owns the connection's write half: sends what the session queued in `conn.out`, in order.
async fn write_loop<W: WriteBytes>(mut writer: W, conn: Rc<Conn>) {
    let mut spare = Vec::new();
    loop {
        let mut batch = poll_fn(|cx| {
            let mut out = conn.out.borrow_mut();
            if !out.is_empty() {
                spare.clear();
                std::mem::swap(&mut *out, &mut spare);
                return Poll::Ready(Some(std::mem::take(&mut spare)));
            }
            if conn.closing.get() {
                return Poll::Ready(None);
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
    /// `mqtt.network.mtls`): it authenticates the client, whatever CONNECT says (SPEC §5.4).
    pub certificate_cn: Option<String>,
    /// Who a WebSocket upgrade's `Authorization` header, session cookie or HTTP client
    /// certificate authenticated (SPEC §6.3, P1): it counts when CONNECT names no user.
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
    let first = timeout(
        CONNECT_TIMEOUT,
        read_packet(
            &mut reader,
            shared.packet_bytes_max,
            Level::V4,
            None,
            &kick,
            &shared.shutdown,
        ),
    )
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
            let _ = writer.write_all(out).await;
            let _ = writer.shutdown_write().await;
            return;
        }
        Ok(Ok(_)) | Ok(Err(_)) | Err(_) => {
            tracing::debug!(target: "mqtt", "{peer}: no CONNECT first within {CONNECT_TIMEOUT:?}; closing");
            return;
        }
    };
    let level = connect.level;
    let v5 = level == Level::V5;
    let out_packet_bytes_max = connect
        .properties
        .maximum_packet_size()
        .map_or(usize::MAX, |n| n as usize);
    let conn = Rc::new(Conn {
        level,
        out: RefCell::new(Vec::new()),
        out_waker: Cell::new(None),
        closing: Cell::new(false),
        subs: RefCell::new(Vec::new()),
        next_packet_id: Cell::new(0),
        inflight: RefCell::new(HashSet::new()),
        qos2_received: RefCell::new(HashSet::new()),
        out_packet_bytes_max,
        overflowed: Cell::new(false),
        kick: kick.clone(),
    });
    spawn(write_loop(writer, conn.clone()));
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
        // Enhanced authentication (AUTH) is not planned (SPEC §6.3 feature matrix).
        return refuse(Refusal::BadAuthMethod);
    }
    if shared.shutdown.is_triggered() {
        return refuse(Refusal::Unavailable);
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
            tracing::info!(target: "mqtt", "{peer}: auth-failed for {:?}", connect.username);
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
        ack_props.push(Property::SharedSubscriptionAvailable(0));
        ack_props.push(Property::TopicAliasMaximum(TOPIC_ALIAS_MAX));
        ack_props.push(Property::MaximumPacketSize(shared.packet_bytes_max as u32));
    }
    shared.claim(&client_id, kick.clone());
    sessions.conns.borrow_mut().push(Rc::downgrade(&conn));
    conn.send(&Packet::ConnAck(ConnAck {
        session_present: false,
        code: 0,
        properties: ack_props,
    }));
    tracing::info!(target: "mqtt", "{peer}: connected client {client_id:?} (MQTT {})", if v5 { "5" } else { "3.1.1" });

    let keep_alive = (connect.keep_alive_s > 0)
        .then(|| Duration::from_millis(u64::from(connect.keep_alive_s) * 1500));
    let mut session = Session {
        shared: &shared,
        conn: &conn,
        caller,
        aliases: HashMap::new(),
    };
    let mut will = connect.will.clone();
    let end: Option<u8> = loop {
        if conn.overflowed.get() {
            break Some(rc::QUOTA_EXCEEDED);
        }
        let packet = read_packet(
            &mut reader,
            shared.packet_bytes_max,
            level,
            keep_alive,
            &kick,
            &shared.shutdown,
        )
        .await;
        let packet = match packet {
            Ok(p) => p,
            Err(ReadError::Closed) => break None,
            Err(ReadError::KeepAlive) => break Some(rc::KEEP_ALIVE_TIMEOUT),
            Err(ReadError::Kicked) if conn.overflowed.get() => break Some(rc::QUOTA_EXCEEDED),
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
        match session.handle(packet).await {
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
    shared.release(&client_id, &kick);
    if let Some(will) = will {
        session.publish_will(will).await;
    }
    tracing::info!(target: "mqtt", "{peer}: disconnected client {client_id:?}");
}

enum Flow {
    Continue,
    Disconnect { publish_will: bool },
    Close(u8),
}

struct Session<'a> {
    shared: &'a MqttShared,
    conn: &'a Rc<Conn>,
    caller: Caller,
    /// v5 topic aliases the client set.
    aliases: HashMap<u16, String>,
}

impl Session<'_> {
    fn v5(&self) -> bool {
        self.conn.level == Level::V5
    }

    async fn handle(&mut self, packet: Packet) -> Flow {
        match packet {
            Packet::Publish(p) => return self.on_publish(p).await,
            Packet::PubAck(a) | Packet::PubComp(a) => {
                self.conn.inflight.borrow_mut().remove(&a.packet_id);
            }
            Packet::PubRec(a) => {
                let known = self.conn.inflight.borrow().contains(&a.packet_id);
                let code = if known || !self.v5() {
                    0
                } else {
                    rc::PACKET_ID_NOT_FOUND
                };
                if a.code >= 0x80 {
                    // The client refused it: the exchange ends here.
                    self.conn.inflight.borrow_mut().remove(&a.packet_id);
                } else {
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
            Packet::Subscribe(s) => self.on_subscribe(s),
            Packet::Unsubscribe(u) => {
                let mut codes = Vec::new();
                {
                    let mut subs = self.conn.subs.borrow_mut();
                    for f in &u.filters {
                        let before = subs.len();
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
            }
            Packet::PingReq => self.conn.send(&Packet::PingResp),
            Packet::Disconnect(r) => {
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
        if p.qos == 2 {
            if self.conn.qos2_received.borrow().contains(&p.packet_id) {
                // A resend of one already applied (DUP): acknowledge, do not apply twice.
                self.conn.send(&Packet::PubRec(Ack::new(p.packet_id, 0)));
                return Flow::Continue;
            }
            if self.conn.qos2_received.borrow().len() >= QOS2_PENDING_MAX {
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

    /// Applies one inbound publish through the resource layer; returns the v5 reason code.
    async fn apply(&self, p: &Publish) -> u8 {
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
            // SPEC §6.3: a bare table topic needs `insert`, retained or not.
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
                // SPEC §5.5: a write touching an attribute without the right is refused.
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
                    mode: crate::store::PutMode::Replace,
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
        let request = WriteRequest {
            ops: vec![op],
            user: self.caller.username.clone(),
        };
        match resource::write(&db, request).await {
            Ok(_) => 0,
            Err(e) => {
                tracing::info!(target: "mqtt", "publish to {:?} failed: {e}", p.topic);
                match e {
                    WriteError::Invalid(_) => rc::PAYLOAD_FORMAT_INVALID,
                    WriteError::Overloaded(_) => rc::QUOTA_EXCEEDED,
                    _ => rc::UNSPECIFIED,
                }
            }
        }
    }

    fn on_subscribe(&self, s: Subscribe) {
        let v5 = self.v5();
        let mut codes = Vec::with_capacity(s.filters.len());
        let mut initial = Vec::new();
        for (raw, options) in &s.filters {
            let filter = match Filter::parse(raw) {
                Ok(f) => f,
                Err(e) => {
                    tracing::info!(target: "mqtt", "subscribe to {raw:?} refused: {e}");
                    codes.push(match (v5, e) {
                        (false, _) => 0x80,
                        (true, TopicError::Shared) => rc::SHARED_NOT_SUPPORTED,
                        (true, TopicError::Invalid(_)) => rc::TOPIC_FILTER_INVALID,
                    });
                    continue;
                }
            };
            let Some((_, table)) = self.shared.resources.export(filter.export()) else {
                tracing::info!(target: "mqtt", "subscribe to {raw:?} refused: no such export");
                codes.push(if v5 { rc::TOPIC_FILTER_INVALID } else { 0x80 });
                continue;
            };
            if !permitted(&self.caller, "read", &table.def.database, &table.def.table) {
                codes.push(if v5 { rc::NOT_AUTHORIZED } else { 0x80 });
                continue;
            }
            let mut subs = self.conn.subs.borrow_mut();
            let existing = subs.iter().position(|x| x.filter.as_str() == raw);
            let is_new = existing.is_none();
            let sub = Sub {
                filter: filter.clone(),
                qos: options.qos,
                sent: HashMap::new(),
                readable: resource::permissions::readable_attributes(
                    &self.caller,
                    &table.def.database,
                    &table.def.table,
                    table.def.primary_key.as_deref(),
                )
                .map(Rc::new),
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
            let send_state = match options.retain_handling {
                0 => true,
                1 => is_new,
                _ => false,
            };
            if send_state && filter.matches_records() {
                initial.push((filter, options.qos));
            }
        }
        self.conn.send(&Packet::SubAck(SubAck {
            packet_id: s.packet_id,
            properties: Properties::default(),
            codes,
        }));
        for (filter, qos) in initial {
            self.send_state(&filter, qos);
        }
    }

    /// Sends the current state of every record `filter` matches as retained PUBLISHes, and
    /// remembers their versions so live events already reflected are not sent again.
    fn send_state(&self, filter: &Filter, qos: u8) {
        let Some((db, table)) = self.shared.resources.export(filter.export()) else {
            return;
        };
        let export = filter.export();
        let readable = resource::permissions::readable_attributes(
            &self.caller,
            &table.def.database,
            &table.def.table,
            table.def.primary_key.as_deref(),
        );
        let encode = |archived: &value::ArchivedValue, body: &mut Vec<u8>| match &readable {
            None => Ok(payload::encode(Some(archived), body)),
            Some(r) => value::deserialize(archived)
                .map(|v| encode_trimmed(&v, r, body))
                .map_err(|e| crate::store::StoreError::Corrupt(format!("record: {e}"))),
        };
        let mut found: Vec<(String, f64, Vec<u8>, &'static str)> = Vec::new();
        let read = (|| -> Result<(), crate::store::StoreError> {
            let txn = db.read()?;
            let now = crate::store::now_ms();
            if let Some(raw) = filter.exact_id() {
                let Ok(key) = resource::parse_id(&table.def, &raw) else {
                    return Ok(());
                };
                if let Some(record) = txn.get(&table, &key)? {
                    if record.header.is_live(now) {
                        let mut body = Vec::new();
                        let ct = encode(record.value, &mut body)?;
                        found.push((raw, record.header.version, body, ct));
                    }
                }
                return Ok(());
            }
            for entry in txn.scan(&table, false)? {
                let (key, record) = entry?;
                if !record.header.is_live(now) {
                    continue;
                }
                let Ok(key) = value::key::decode(key) else {
                    continue;
                };
                let id = id_text(&key);
                if !filter.matches(export, Some(&id)) {
                    continue;
                }
                let mut body = Vec::new();
                let ct = encode(record.value, &mut body)?;
                found.push((id, record.header.version, body, ct));
            }
            Ok(())
        })();
        if let Err(e) = read {
            tracing::warn!(target: "mqtt", "reading the state for {:?} failed: {e}", filter.as_str());
        }
        {
            let mut subs = self.conn.subs.borrow_mut();
            if let Some(sub) = subs
                .iter_mut()
                .find(|s| s.filter.as_str() == filter.as_str())
            {
                sub.sent = found.iter().map(|(id, v, _, _)| (id.clone(), *v)).collect();
            }
        }
        for (id, _, body, ct) in found {
            if !self
                .conn
                .publish(format!("{export}/{id}"), qos, true, &body, ct)
            {
                break;
            }
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
        check(Refusal::Unavailable, 0x03, 0x88);
        check(Refusal::BadCredentials, 0x04, 0x86);
        check(Refusal::NotAuthorized, 0x05, 0x87);
        check(Refusal::BadAuthMethod, 0x05, 0x8c);
    }

    #[test]
    fn ids_as_topic_levels() {
        assert_eq!(id_text(&Value::Int(12)), "12");
        assert_eq!(id_text(&Value::String("a/b".into())), "a/b");
        assert_eq!(id_text(&Value::Float(1.5)), "1.5");
    }
}
