//! One MQTT connection on the core that accepted it (docs/mqtt.md): the read loop that decodes
//! packets and handles them one at a time, in order, and the end of the connection (DISCONNECT
//! reason, stored session, will).
//!
//! A connection runs as two tasks on its core: the reader (this module's [`serve`]) and a writer
//! (`outbound.rs`), which flushes the outbound buffer that the reader and the core's event
//! dispatcher (`dispatch.rs`) fill. The seams: CONNECT, authentication and takeover in
//! `connect.rs`; inbound PUBLISH and wills in `inbound.rs`; the outbound window in
//! `outbound.rs`; SUBSCRIBE and the initial state in `subscribe.rs`; resuming a stored session
//! in `resume.rs`; reason codes in `reason.rs`. Writes go to tables only through `resource`;
//! nothing here opens a transaction other than short reads.

use std::cell::Cell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tidepool_io::spawn;
use tidepool_io::{race, timeout, Either, ReadBytes, ReadHalf, Shutdown, Split, WriteBytes};

use super::codec::{self, Ack, DecodeError, Level, Packet, Reason, Will};
use super::connect::{self, Kick};
use super::durable;
use super::events::{self, Event};
use super::outbound::{write_loop, Conn};
use super::reason::{self, ReasonCode};
use super::share;
use crate::resource::Caller;

pub use super::connect::TransportIdentity;
pub use super::dispatch::Sessions;
pub use super::shared::MqttShared;

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
pub(super) const READ_SPARE_BYTES: usize = 4096;
/// A subscription's streaming state is read further only while the connection's outbound buffer
/// holds less than this (so a client that stops reading holds at most about this much of it).
pub(super) const STATE_OUT_LOW: usize = 64 << 10;
/// State chunks one fill reads at most before yielding.
pub(super) const STATE_CHUNKS_PER_FILL: usize = 4;

pub(super) enum ReadError {
    Closed,
    Decode(DecodeError),
    Kicked,
    Shutdown,
}

impl ReadError {
    /// What happened, for the log line of a connection that ended before its CONNECT.
    pub(super) fn before_connect(&self) -> String {
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
pub(super) async fn read_packet<R: ReadBytes>(
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
    // Boxed, like the other rare states below: only the states an idle connection sits in
    // should set this future's size.
    let first = Box::pin(connect::read_connect(
        &mut reader,
        &mut writer,
        peer,
        &kick,
        &shared,
    ));
    let Some(connect) = first.await else {
        return;
    };
    let level = connect.level;
    let v5 = level == Level::V5;
    let expiry_s = connect::session_expiry_s(&connect);
    let conn = Rc::new(Conn::new(
        &connect,
        expiry_s,
        &shared,
        kick.clone(),
        sessions.sys.clone(),
    ));
    spawn(write_loop(writer, conn.clone(), sessions.clone()));
    let Some(admitted) = connect::admit(&shared, &conn, &connect, identity, peer) else {
        return;
    };
    let client_id = admitted.client_id;
    *conn.client_id.borrow_mut() = client_id.clone();
    if let Some(old) = shared.claim(&client_id, kick.clone(), connect.clean) {
        // The old connection stores its session before letting go; wait so we read that.
        Box::pin(old.released()).await;
    }
    let mut session = Session {
        shared: &shared,
        conn: &conn,
        sessions: &sessions,
        caller: admitted.caller,
        aliases: HashMap::new(),
        client_id: client_id.clone(),
        expiry_s,
    };
    let restored = Box::pin(connect::load_stored(
        &shared,
        &client_id,
        connect.clean,
        peer,
    ))
    .await;
    // From here to the end of the resume nothing awaits (see `Session::open`).
    session.open(restored, admitted.ack_props, peer);

    // MQTT §3.1.2.10: one and a half times the Keep Alive without a packet closes the connection;
    // `Sessions::sweep_keep_alive` checks it.
    let keep_alive_s = admitted.keep_alive_s;
    conn.heard.set(Instant::now());
    conn.keep_alive
        .set((keep_alive_s > 0).then(|| Duration::from_millis(u64::from(keep_alive_s) * 1500)));
    let (end, will) = read_loop(&mut session, &mut reader, &kick, peer, connect.will).await;
    if let Some(code) = end {
        if v5 {
            conn.send(&Packet::Disconnect(Reason::new(code.byte())));
        }
        tracing::info!(target: "mqtt", "{peer}: closing client {client_id:?} (reason 0x{:02x})", code.byte());
    }
    conn.closing.set(true);
    conn.wake_writer();
    Box::pin(session.end()).await;
    sessions.forget(&conn);
    // Before letting go of the client id, so a connection taking it over, or coming next, finds
    // a delayed will to settle (see `MqttShared::claim`).
    if let Some(will) = will {
        session.leave_will(will, &kick, &shared, &sessions).await;
    }
    shared.release(&client_id, &kick);
    events::record(
        Event::Disconnected,
        peer.ip(),
        format_args!("{peer} client {client_id:?}"),
    );
    let taken = [ReasonCode::SessionTakenOver, ReasonCode::ServerShuttingDown];
    if v5 && end.is_some_and(|c| !taken.contains(&c)) {
        drain(&mut reader, &shared, level, &kick).await;
    }
}

/// Reads and handles packets until the connection ends. Returns the reason it is closed with
/// (none: the client closed it or sent DISCONNECT) and the will still to publish.
async fn read_loop<R: ReadBytes>(
    session: &mut Session<'_>,
    reader: &mut ReadHalf<R>,
    kick: &Kick,
    peer: SocketAddr,
    mut will: Option<Will>,
) -> (Option<ReasonCode>, Option<Will>) {
    let (shared, conn) = (session.shared, session.conn);
    let end = loop {
        if conn.overflowed.get() {
            break Some(ReasonCode::QuotaExceeded);
        }
        let packet = read_packet(
            reader,
            shared.packet_bytes_max,
            conn.level,
            Some(&conn.heard),
            kick,
            &shared.shutdown,
        )
        .await;
        let packet = match packet {
            Ok(p) => p,
            Err(e) => break closing_reason(conn, e, peer),
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
    (end, will)
}

/// The reason a connection whose read ended is closed with; none when the client closed it.
fn closing_reason(conn: &Conn, e: ReadError, peer: SocketAddr) -> Option<ReasonCode> {
    match e {
        ReadError::Closed => None,
        ReadError::Kicked if conn.expired.get() => Some(ReasonCode::KeepAliveTimeout),
        ReadError::Kicked if conn.overflowed.get() => Some(ReasonCode::QuotaExceeded),
        ReadError::Kicked if conn.state_failed.get() => Some(ReasonCode::Unspecified),
        ReadError::Kicked => Some(ReasonCode::SessionTakenOver),
        ReadError::Shutdown => Some(ReasonCode::ServerShuttingDown),
        ReadError::Decode(e) => {
            tracing::info!(target: "mqtt", "{peer}: {e}; closing");
            Some(match e {
                DecodeError::TooLarge { .. } => ReasonCode::PacketTooLarge,
                DecodeError::Protocol(_) => ReasonCode::ProtocolError,
                _ => ReasonCode::Malformed,
            })
        }
    }
}

/// A client still sending (acknowledging what it got) when we disconnect it would hit a reset
/// before reading our DISCONNECT; read and drop its packets for a moment first.
async fn drain<R: ReadBytes>(
    reader: &mut ReadHalf<R>,
    shared: &MqttShared,
    level: Level,
    kick: &Kick,
) {
    let drain = async {
        while read_packet(
            reader,
            shared.packet_bytes_max,
            level,
            None,
            kick,
            &shared.shutdown,
        )
        .await
        .is_ok()
        {}
    };
    let _ = timeout(DRAIN_AFTER_DISCONNECT, drain).await;
}

/// What the read loop does after a packet.
pub(super) enum Flow {
    Continue,
    Disconnect { publish_will: bool },
    Close(ReasonCode),
}

/// The reader's view of a connection: its session and who the client is.
pub(super) struct Session<'a> {
    pub(super) shared: &'a MqttShared,
    pub(super) conn: &'a Rc<Conn>,
    pub(super) sessions: &'a Sessions,
    pub(super) caller: Caller,
    /// v5 topic aliases the client set.
    pub(super) aliases: HashMap<u16, String>,
    pub(super) client_id: String,
    /// Session Expiry Interval (s): 0 ends the session with the connection.
    pub(super) expiry_s: u32,
}

impl Session<'_> {
    pub(super) fn v5(&self) -> bool {
        self.conn.level == Level::V5
    }

    pub(super) fn durable(&self) -> bool {
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
                self.shared
                    .groups
                    .leave(&key, &self.client_id, || self.shared.stamp());
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

    /// Handles one packet after CONNECT.
    async fn handle(&mut self, packet: Packet) -> Flow {
        match packet {
            Packet::Publish(p) => return self.on_publish(p).await,
            Packet::PubAck(a) | Packet::PubComp(a) => {
                if self.conn.completed(a.packet_id) {
                    self.conn.fill_state(self.sessions);
                }
            }
            Packet::PubRec(a) => {
                if reason::is_failure(a.code) {
                    // The client refused it: the exchange ends here.
                    self.conn.completed(a.packet_id);
                } else {
                    let known = self.conn.received(a.packet_id);
                    let code = self.known_or_not_found(known);
                    self.conn.send(&Packet::PubRel(Ack::new(a.packet_id, code)));
                }
            }
            Packet::PubRel(a) => {
                let known = self.conn.qos2_received.borrow_mut().remove(&a.packet_id);
                let code = self.known_or_not_found(known);
                self.conn
                    .send(&Packet::PubComp(Ack::new(a.packet_id, code)));
            }
            Packet::Subscribe(s) => {
                self.on_subscribe(s);
                self.persist().await;
            }
            Packet::Unsubscribe(u) => {
                self.on_unsubscribe(u);
                self.persist().await;
            }
            Packet::PingReq => self.conn.send(&Packet::PingResp),
            Packet::Disconnect(r) => {
                if let Some(expiry_s) = r.properties.session_expiry_s() {
                    // MQTT 5 §3.14.2.2.2: a session that ends with its connection cannot be
                    // made durable at DISCONNECT.
                    if self.expiry_s == 0 && expiry_s > 0 {
                        return Flow::Close(ReasonCode::ProtocolError);
                    }
                    self.expiry_s = expiry_s;
                }
                // v5 0x04: "disconnect with will message".
                return Flow::Disconnect {
                    publish_will: r.code == ReasonCode::DisconnectWithWill.byte(),
                };
            }
            Packet::Auth(_) => return Flow::Close(ReasonCode::ProtocolError),
            Packet::Connect(_) => return Flow::Close(ReasonCode::ProtocolError),
            Packet::ConnAck(_) | Packet::SubAck(_) | Packet::UnsubAck(_) | Packet::PingResp => {
                return Flow::Close(ReasonCode::ProtocolError)
            }
        }
        Flow::Continue
    }

    /// The code acknowledging a QoS 2 step for a packet id we may not know (v5 `0x92`; 3.1.1
    /// has no code for it).
    fn known_or_not_found(&self, known: bool) -> u8 {
        if known || !self.v5() {
            ReasonCode::Success.byte()
        } else {
            ReasonCode::PacketIdNotFound.byte()
        }
    }
}
