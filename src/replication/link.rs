//! One replication link to a peer (docs/replication.md), after the TCP connection is up: the
//! WebSocket upgrade, `HELLO` both ways, then three kinds of threads until either side closes:
//!
//! - the reader: frames → a bounded channel (it only blocks on the socket);
//! - the control loop (this thread): `SUBSCRIBE`s to each database, applies `SNAPSHOT`/`TXN`
//!   through the writer (pipelined, at most [`APPLY_PENDING_MAX`] in flight), `ACK`s in batches
//!   every [`ACK_INTERVAL`], answers `PING`, asks the peer to relay origins we have no link to,
//!   and learns nodes from `NODES`;
//! - one sender per database the peer subscribed to: its audit log from the peer's cursors
//!   (own transactions and the origins it asked us to relay), then live on each commit.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, RecvTimeoutError};
use tidepool_io::OneshotReceiver;

use super::message::{self, object};
use super::subscriptions::Subscriptions;
use super::transport::{Conn, Duplex};
use super::ws::{self, Incoming, WsError};
use super::{block_on, now, poll_once, table_replicates, Adopted, Replication, Target};
use crate::schema::{AttributeDef, FieldType, TableDef};
use crate::store::{
    ApplyJob, ApplyOutcome, AuditTxn, Database, ReplicatedTxn, SchemaChange, SnapshotRecord,
    WriteError,
};
use crate::value::{DecodeLimits, Value};

/// A message (all its fragments) is at most this big; a bigger one closes the link.
pub const MESSAGE_BYTES_MAX: usize = 64 << 20;
/// Frames read ahead of the control loop at most (the reader then waits: back-pressure).
const INBOX_MAX: usize = 1024;
/// Applies queued on the writer per link at most; the control loop waits for the oldest then.
const APPLY_PENDING_MAX: usize = 512;
/// `ACK`s are batched over this long (SPEC: ≤ 50 ms).
const ACK_INTERVAL: Duration = Duration::from_millis(50);
// Liveness (docs/replication.md "Link liveness"): a `PING` every `replication.heartbeatInterval`;
// a link that hears nothing (not even a `PONG`) for `replication.heartbeatTimeout` is dead: a
// peer that vanished without a FIN, a partition that TCP would only notice after minutes.
/// Subscriptions and relays are re-checked this often.
const MAINTAIN_INTERVAL: Duration = Duration::from_millis(500);
/// A blocked write fails after this and closes the link.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// `HELLO` must arrive within this.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Audit transactions read per read transaction by a sender.
const SEND_BATCH: usize = 256;
/// Records per `SNAPSHOT` message.
const SNAPSHOT_CHUNK: usize = 500;

#[derive(Debug)]
pub enum LinkError {
    Ws(WsError),
    Protocol(String),
    /// Closed on purpose (BYE, duplicate, stop).
    Closed(String),
    /// Nothing heard from the peer for this long (`replication.heartbeatTimeout`).
    Silent(Duration),
}

impl std::fmt::Display for LinkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinkError::Ws(e) => e.fmt(f),
            LinkError::Protocol(m) => write!(f, "protocol: {m}"),
            LinkError::Closed(m) => write!(f, "closed: {m}"),
            LinkError::Silent(d) => write!(f, "nothing heard for {} ms", d.as_millis()),
        }
    }
}

impl From<WsError> for LinkError {
    fn from(e: WsError) -> Self {
        LinkError::Ws(e)
    }
}

impl From<std::io::Error> for LinkError {
    fn from(e: std::io::Error) -> Self {
        LinkError::Ws(WsError::Io(e))
    }
}

/// The sending half, shared by the control loop, the senders and the manager (for `BYE`).
pub struct Out {
    stream: Mutex<Box<dyn Write + Send>>,
    masked: bool,
}

impl Out {
    pub fn send(&self, kind: &str, body: Value) -> Result<(), LinkError> {
        let payload = message::encode(kind, body);
        self.frame(ws::Opcode::Binary, &payload)
    }

    fn frame(&self, opcode: ws::Opcode, payload: &[u8]) -> Result<(), LinkError> {
        let frame = self.encode(opcode, payload);
        let mut s = self.stream.lock().unwrap_or_else(|e| e.into_inner());
        s.write_all(&frame)?;
        Ok(())
    }

    fn encode(&self, opcode: ws::Opcode, payload: &[u8]) -> Vec<u8> {
        let mut frame = Vec::with_capacity(payload.len() + 14);
        ws::encode_frame(opcode, payload, self.masked, &mut frame);
        frame
    }

    /// `send`, unless another thread is writing (a peer that stopped reading can hold the
    /// writer for the write timeout): then nothing is sent and false comes back.
    pub fn try_send(&self, kind: &str, body: Value) -> bool {
        let Ok(mut s) = self.stream.try_lock() else {
            return false;
        };
        let frame = self.encode(ws::Opcode::Binary, &message::encode(kind, body));
        s.write_all(&frame).is_ok()
    }

    /// A close frame with `code` (1008: policy violation), before the link ends.
    fn close(&self, code: u16) {
        let _ = self.frame(ws::Opcode::Close, &code.to_be_bytes());
    }
}

/// How an incoming link came in, for the checks after `HELLO`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Accepted {
    /// The plain port: the peer's IP was trusted at accept.
    Plain,
    /// The secure port (TLS).
    Secure,
}

/// What identified the peer on an accepted secure link before `HELLO`.
enum Identity {
    /// Dialled by us, or the plain port.
    NotNeeded,
    /// Credentials of a super or cluster user on the upgrade.
    User(super::auth::Admitted),
    /// Only a verified certificate: its name must match `HELLO`.
    Certificate(tidepool_io::rustls::pki_types::CertificateDer<'static>),
}

/// Runs a link on this thread until it ends. `dialled` is the target when we dialled;
/// `accepted` says on which listener it came in otherwise.
pub fn run(
    repl: &Arc<Replication>,
    conn: Conn,
    dialled: Option<&Target>,
    accepted: Accepted,
) -> Result<(), LinkError> {
    let Conn {
        mut reader,
        mut writer,
        socket,
        peer_certificate,
    } = conn;
    let is_tls = peer_certificate.is_some();
    let _ = socket.set_nodelay(true);
    socket.set_read_timeout(Some(HELLO_TIMEOUT))?;
    // A peer that stops reading fails our writes instead of wedging the link.
    socket.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let identity = handshake(
        repl,
        &mut Duplex {
            r: &mut *reader,
            w: &mut *writer,
        },
        &socket,
        peer_certificate.as_ref(),
        dialled,
        accepted,
    )?;
    let out = Arc::new(Out {
        stream: Mutex::new(writer),
        masked: dialled.is_some(),
    });
    let me = repl.node_name().to_string();
    let my_databases = repl.databases();
    send_hello(repl, &out, &my_databases, dialled)?;
    let limits = DecodeLimits {
        bytes_max: MESSAGE_BYTES_MAX,
        ..DecodeLimits::default()
    };
    // What we read comes from the server when we dialled.
    let sender = if dialled.is_some() {
        ws::Sender::Server
    } else {
        ws::Sender::Client
    };
    let mut reader = ws::MessageReader::new(reader, sender, MESSAGE_BYTES_MAX);
    let hello = read_hello(&mut reader, &out, &limits)?;
    // The reader gives up after a heartbeat timeout of silence (below).
    let heartbeat_timeout = repl.settings.heartbeat_timeout;
    socket.set_read_timeout(Some(heartbeat_timeout))?;
    let peer = check_peer(repl, &out, &hello, &me, &identity, dialled)?;
    let peer_url = hello
        .get("url")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if let Some(t) = dialled {
        repl.name_target(&t.address(), &peer);
    }
    let dialer = if dialled.is_some() { &me } else { &peer };
    let stop = Arc::new(AtomicBool::new(false));
    let Some(link_id) = repl.register(&peer, dialer, &socket, out.clone(), stop.clone()) else {
        let _ = out.send(
            "BYE",
            object(vec![("reason", Value::String("duplicate".into()))]),
        );
        return Err(LinkError::Closed(format!("duplicate link to {peer}")));
    };
    tracing::info!(
        "replication: linked with {peer} ({})",
        if dialled.is_some() {
            "dialled"
        } else {
            "accepted"
        }
    );
    let peer_streams: BTreeMap<String, String> = match hello.get("streams") {
        Some(Value::Object(o)) => o
            .iter()
            .filter_map(|(d, v)| v.as_str().map(|v| (d.to_string(), v.to_string())))
            .collect(),
        _ => BTreeMap::new(),
    };
    repl.with_status(&peer, |s| {
        s.url = peer_url.clone();
        s.streams = peer_streams;
    });
    let subs = settle_subscriptions(repl, &out, &peer, &peer_url, &hello, dialled.is_some())?;
    // Databases exchanged: ours, and the peer's that our `replication.databases` allows.
    let mut databases = my_databases;
    for d in message::strings_from(hello.get("databases")) {
        if repl.settings.databases.includes(&d)
            && !databases.contains(&d)
            && repl.store.open_database(&d).is_ok()
        {
            databases.push(d);
        }
    }
    let start_time = dialled.and_then(|t| t.start_time);
    let mut control = Control {
        repl: repl.clone(),
        out: out.clone(),
        peer: peer.clone(),
        me,
        stop: stop.clone(),
        inbound: databases
            .iter()
            .map(|d| (d.clone(), Inbound::new(start_time)))
            .collect(),
        senders: HashMap::new(),
        limits,
        subs,
        peer_url,
        ready: false,
        last_ping: None,
        may_sign: matches!(&identity, Identity::User(u) if u.super_user),
        exchange: None,
    };
    let rx = spawn_reader(&peer, reader, &socket, stop.clone())?;
    if control.subs.is_none() {
        // Every linked node hears of the new one (docs/replication.md "Gossip"); none with a
        // node of explicit subscriptions.
        repl.broadcast_nodes();
    }
    if let Some(t) = dialled.filter(|t| is_tls && t.authorization.is_some()) {
        // Certificate exchange (docs/replication.md): we got in with credentials; ask for a certificate
        // and trust, so later links are plain mTLS.
        control.exchange = Some(t.address());
        control.send_csr();
    }
    let result = control.run(&rx);
    stop.store(true, Ordering::Release);
    for (_, s) in control.senders.drain() {
        s.store(true, Ordering::Release);
    }
    for (db, inbound) in &control.inbound {
        if inbound.snapshot_claimed {
            repl.release_snapshot(db);
        }
    }
    let _ = socket.shutdown(std::net::Shutdown::Both);
    repl.unregister(&peer, link_id);
    log_closed(repl, &peer, &result);
    result
}

/// Explicit subscriptions (docs/replication.md): the dialling node's view came with its `HELLO`;
/// of two views the later one wins, and ours goes back when it is the later one. Returns the
/// subscriptions the link runs with (None: everything, and then both nodes are in
/// `hdb_nodes`).
fn settle_subscriptions(
    repl: &Replication,
    out: &Out,
    peer: &str,
    peer_url: &str,
    hello: &Value,
    dialled: bool,
) -> Result<Option<Subscriptions>, LinkError> {
    if !dialled && repl.peer_view(peer, peer_url, hello) == Adopted::Ours {
        out.send("SUBSCRIPTIONS", repl.subscriptions_body(peer))?;
    }
    let subs = repl.subscriptions_with(peer);
    if subs.is_none() {
        repl.record_members(peer, peer_url);
    }
    Ok(subs)
}

/// `HELLO`: our name, URL, protocol, databases and our origin per database (docs/replication.md
/// "Origins": peers relay any other stream of our name, e.g. an earlier incarnation's); when we
/// dialled, our subscriptions with the node ("Explicit subscriptions").
fn send_hello(
    repl: &Replication,
    out: &Out,
    my_databases: &[String],
    dialled: Option<&Target>,
) -> Result<(), LinkError> {
    let streams: Vec<(String, Value)> = my_databases
        .iter()
        .filter_map(|d| repl.store.database(d))
        .map(|d| (d.name.to_string(), Value::String(d.stream.to_string())))
        .collect();
    let mut fields = Vec::new();
    if let Some(key) = dialled.and_then(|t| repl.key_at(&t.address())) {
        if let Value::Object(o) = repl.subscriptions_body(&key) {
            fields.extend(o.iter().map(|(k, v)| (k.to_string(), v.clone())));
        }
    }
    let mut hello = object(vec![
        ("node", Value::String(repl.node_name().to_string())),
        (
            "streams",
            Value::Object(crate::value::Object::from_entries(streams)),
        ),
        ("url", Value::String(repl.settings.url.clone())),
        ("protocol", Value::Int(message::PROTOCOL)),
        (
            "databases",
            Value::Array(my_databases.iter().cloned().map(Value::String).collect()),
        ),
    ]);
    if let Value::Object(o) = &mut hello {
        for (k, v) in fields {
            o.insert(k, v);
        }
    }
    out.send("HELLO", hello)
}

/// The reader thread hands whole messages over; it ends when the socket does. A read that times
/// out means a heartbeat timeout of silence (the socket's read timeout): it shuts the socket
/// down at once, which also frees a control loop or sender blocked writing into the dead
/// connection.
fn spawn_reader(
    peer: &str,
    mut reader: ws::MessageReader<Box<dyn std::io::Read + Send>>,
    socket: &std::net::TcpStream,
    stop: Arc<AtomicBool>,
) -> Result<crossbeam_channel::Receiver<Result<Incoming, WsError>>, LinkError> {
    let (tx, rx) = bounded::<Result<Incoming, WsError>>(INBOX_MAX);
    let socket = socket.try_clone()?;
    let _ = std::thread::Builder::new()
        .name(format!("repl-read-{peer}"))
        .spawn(move || loop {
            let m = reader.read();
            if m.as_ref().is_err_and(is_timeout) {
                let _ = socket.shutdown(std::net::Shutdown::Both);
            }
            let end = m.is_err();
            if tx.send(m).is_err() || end || stop.load(Ordering::Acquire) {
                return;
            }
        });
    Ok(rx)
}

/// Logs a link's end: at warn when it went silent (docs/replication.md "Link liveness").
fn log_closed(repl: &Replication, peer: &str, result: &Result<(), LinkError>) {
    if let Err(LinkError::Silent(d)) = result {
        repl.links_timed_out.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            "replication: nothing heard from {peer} for {} ms (replication.heartbeatTimeout); \
             link closed, redialling",
            d.as_millis()
        );
    } else {
        tracing::info!("replication: link with {peer} closed");
    }
}

/// A read that ended because the socket's read timeout passed.
fn is_timeout(e: &WsError) -> bool {
    matches!(e, WsError::Io(io) if matches!(
        io.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    ))
}

/// The WebSocket handshake: as the client when we dialled, else as the server, where a secure
/// link must bring super or cluster user credentials or a verified client certificate.
fn handshake(
    repl: &Arc<Replication>,
    duplex: &mut Duplex<'_>,
    socket: &std::net::TcpStream,
    peer_certificate: Option<&tidepool_io::rustls::pki_types::CertificateDer<'static>>,
    dialled: Option<&Target>,
    accepted: Accepted,
) -> Result<Identity, LinkError> {
    Ok(match dialled {
        Some(t) => {
            ws::client_handshake(duplex, &t.address(), t.authorization.as_deref())?;
            Identity::NotNeeded
        }
        None => {
            let mut identity = Identity::NotNeeded;
            let peer_ip = socket.peer_addr().map(|a| a.ip().to_string());
            let peer_ip = peer_ip.unwrap_or_default();
            ws::server_handshake(duplex, |upgrade| {
                if accepted == Accepted::Plain {
                    return Ok(());
                }
                if let Some(header) = upgrade.authorization.as_deref() {
                    return match super::auth::authorize(&repl.store, header) {
                        Ok(user) => {
                            identity = Identity::User(user);
                            Ok(())
                        }
                        Err(e) => {
                            tracing::warn!("replication: refused link from {peer_ip}: {e}");
                            Err(401)
                        }
                    };
                }
                match peer_certificate {
                    Some(c) => {
                        identity = Identity::Certificate(c.clone());
                        Ok(())
                    }
                    None => {
                        tracing::warn!(
                            "replication: refused link from {peer_ip}: no client certificate \
                             and no credentials"
                        );
                        Err(401)
                    }
                }
            })?;
            identity
        }
    })
}

/// Reads up to the peer's `HELLO` and returns its body; anything else before it ends the link.
fn read_hello<R: std::io::Read>(
    reader: &mut ws::MessageReader<R>,
    out: &Out,
    limits: &DecodeLimits,
) -> Result<Value, LinkError> {
    loop {
        let incoming = reader.read().inspect_err(|e| {
            if let Some(code) = e.close_code() {
                out.close(code);
            }
        })?;
        match incoming {
            Incoming::Binary(frame) => {
                let (kind, body) = message::decode(&frame, limits).map_err(LinkError::Protocol)?;
                if kind == "HELLO" {
                    return Ok(body);
                }
                if kind == "BYE" {
                    return Err(LinkError::Closed("BYE before HELLO".into()));
                }
            }
            Incoming::Close => return Err(LinkError::Closed("close before HELLO".into())),
            _ => {}
        }
    }
}

/// Checks the peer's `HELLO`: our protocol, a node name not ours, matching its certificate,
/// not removed. Returns the peer's node name; a refused peer is told why (`BYE`) when it helps.
fn check_peer(
    repl: &Arc<Replication>,
    out: &Out,
    hello: &Value,
    me: &str,
    identity: &Identity,
    dialled: Option<&Target>,
) -> Result<String, LinkError> {
    if message::as_u64(hello.get("protocol")) != Some(message::PROTOCOL as u64) {
        let _ = out.send(
            "BYE",
            object(vec![("reason", Value::String("protocol".into()))]),
        );
        return Err(LinkError::Protocol("another protocol version".into()));
    }
    let peer = hello
        .get("node")
        .and_then(Value::as_str)
        .ok_or_else(|| LinkError::Protocol("HELLO without node".into()))?
        .to_string();
    if peer == me {
        return Err(LinkError::Closed("connected to ourselves".into()));
    }
    match identity {
        Identity::Certificate(c) if !super::auth::certificate_names(c, &peer) => {
            tracing::warn!(
                "replication: refused link: HELLO names {peer:?} but the client certificate does not"
            );
            out.close(1008);
            return Err(LinkError::Closed(
                "certificate does not name the node".into(),
            ));
        }
        Identity::User(user) => {
            tracing::debug!(
                "replication: link from {peer} authorized as user {}",
                user.username
            )
        }
        _ => {}
    }
    if dialled.is_some() && repl.is_removed(&peer) {
        // We dial only nodes added since (gossip never re-adds a removed one): a new
        // `add_node` by address lets the node back in.
        repl.unmark_removed(&peer);
    }
    if repl.is_removed(&peer) {
        tracing::info!("replication: refused link from removed node {peer}");
        let _ = out.send(
            "BYE",
            object(vec![("reason", Value::String("removed".into()))]),
        );
        out.close(1008);
        return Err(LinkError::Closed(format!("{peer} was removed")));
    }
    Ok(peer)
}

/// The receiving state of one database on this link.
struct Inbound {
    subscribed: bool,
    snapshot_claimed: bool,
    start_time: Option<f64>,
    pending: VecDeque<Pending>,
    relay: Vec<String>,
    acks: BTreeMap<String, u64>,
    resubscribe_at: Option<Instant>,
    /// The origin (stream) of our database when the link first saw it: another one means it
    /// was dropped and created again (docs/replication.md "Creating and dropping databases").
    stream: Option<String>,
}

impl Inbound {
    fn new(start_time: Option<f64>) -> Self {
        Inbound {
            subscribed: false,
            snapshot_claimed: false,
            start_time,
            pending: VecDeque::new(),
            relay: Vec::new(),
            acks: BTreeMap::new(),
            resubscribe_at: None,
            stream: None,
        }
    }
}

enum PendingKind {
    Txn { origin: String, seq: u64 },
    Snapshot,
    SnapshotEnd,
}

struct Pending {
    kind: PendingKind,
    rx: OneshotReceiver<Result<ApplyOutcome, WriteError>>,
}

struct Control {
    /// The peer got in as a super user: it may have its certificate signed.
    may_sign: bool,
    /// The address we dialled with credentials and sent `CSR` to, awaiting `CSR_SIGNED`.
    exchange: Option<String>,
    repl: Arc<Replication>,
    out: Arc<Out>,
    peer: String,
    me: String,
    stop: Arc<AtomicBool>,
    inbound: BTreeMap<String, Inbound>,
    senders: HashMap<String, Arc<AtomicBool>>,
    limits: DecodeLimits,
    /// Explicit subscriptions with the peer as the link began (a change starts it over).
    subs: Option<Subscriptions>,
    peer_url: String,
    /// Something arrived from the peer since `HELLO` (see `PeerStatus::ready`).
    ready: bool,
    last_ping: Option<(Instant, f64)>,
}

impl Control {
    fn run(
        &mut self,
        rx: &crossbeam_channel::Receiver<Result<Incoming, WsError>>,
    ) -> Result<(), LinkError> {
        let mut next_ack = Instant::now() + ACK_INTERVAL;
        let mut next_maintain = Instant::now();
        let mut next_ping = Instant::now();
        let mut heard = Instant::now();
        let (interval, timeout) = (
            self.repl.settings.heartbeat_interval,
            self.repl.settings.heartbeat_timeout,
        );
        loop {
            if self.stop.load(Ordering::Acquire) || self.repl.stopping() {
                return Err(LinkError::Closed("stopped".into()));
            }
            let received = rx.recv_timeout(Duration::from_millis(10));
            if matches!(&received, Ok(Err(e)) if is_timeout(e)) {
                return Err(LinkError::Silent(timeout));
            }
            if received.is_ok() {
                heard = Instant::now();
            } else if heard.elapsed() > timeout {
                return Err(LinkError::Silent(timeout));
            }
            if received.is_ok() && !self.ready {
                self.ready = true;
                self.repl.with_status(&self.peer, |s| s.ready = true);
            }
            match received {
                Ok(Ok(Incoming::Binary(frame))) => match message::decode(&frame, &self.limits) {
                    Ok((kind, body)) => self.handle(&kind, body)?,
                    Err(e) => return Err(LinkError::Protocol(e)),
                },
                Ok(Ok(Incoming::Ping(p))) => self.out.frame(ws::Opcode::Pong, &p)?,
                Ok(Ok(Incoming::Pong)) => {}
                Ok(Ok(Incoming::Close)) => return Err(LinkError::Closed("close frame".into())),
                Ok(Err(e)) => {
                    if let Some(code) = e.close_code() {
                        self.out.close(code);
                    }
                    return Err(e.into());
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(LinkError::Closed("reader ended".into()))
                }
            }
            self.drain_applies(false)?;
            let now_i = Instant::now();
            if now_i >= next_ack {
                self.send_acks()?;
                next_ack = now_i + ACK_INTERVAL;
            }
            if now_i >= next_maintain {
                self.maintain()?;
                next_maintain = now_i + MAINTAIN_INTERVAL;
            }
            if now_i >= next_ping {
                let t = now();
                self.last_ping = Some((now_i, t));
                self.out
                    .send("PING", object(vec![("t", Value::Float(t))]))?;
                next_ping = now_i + interval;
            }
        }
    }

    fn handle(&mut self, kind: &str, body: Value) -> Result<(), LinkError> {
        let database = body
            .get("database")
            .and_then(Value::as_str)
            .map(str::to_string);
        match kind {
            "SUBSCRIBE" => {
                let Some(db) = database.filter(|d| self.repl.settings.databases.includes(d)) else {
                    return Ok(());
                };
                let Some(handle) = self.repl.store.database(&db) else {
                    return Ok(());
                };
                if let Some(old) = self.senders.remove(&db) {
                    old.store(true, Ordering::Release);
                }
                let stop = Arc::new(AtomicBool::new(false));
                self.senders.insert(db.clone(), stop.clone());
                let request = SubscribeRequest {
                    cursors: message::cursors_from(body.get("cursors"))
                        .into_iter()
                        .collect(),
                    snapshot: matches!(body.get("snapshot"), Some(Value::Bool(true))),
                    relay: message::strings_from(body.get("relay")),
                    start_time: body.get("startTime").and_then(super::parse_time),
                };
                let sender = Sender {
                    repl: self.repl.clone(),
                    out: self.out.clone(),
                    peer: self.peer.clone(),
                    me: self.me.clone(),
                    db: handle,
                    stop,
                    link_stop: self.stop.clone(),
                    subs: self.subs.clone(),
                };
                let _ = std::thread::Builder::new()
                    .name(format!("repl-send-{}-{db}", self.peer))
                    .spawn(move || {
                        if let Err(e) = sender.run(request) {
                            tracing::debug!("replication sender ended: {e}");
                        }
                    });
            }
            "SCHEMA" => {
                if let Some(db) = database.filter(|d| self.inbound.contains_key(d)) {
                    self.apply_schema(&db, &body);
                }
            }
            "SNAPSHOT" => {
                let Some(db) = database.filter(|d| self.inbound.contains_key(d)) else {
                    return Ok(());
                };
                let records: Vec<SnapshotRecord> = message::snapshot_from(&body)
                    .ok_or_else(|| LinkError::Protocol("bad SNAPSHOT".into()))?
                    .into_iter()
                    .filter(|r| self.accepts(&db, &r.table))
                    .collect();
                self.submit(&db, ApplyJob::Snapshot(records), PendingKind::Snapshot)?;
            }
            "SNAPSHOT_END" => {
                let Some(db) = database.filter(|d| self.inbound.contains_key(d)) else {
                    return Ok(());
                };
                let cursors = message::cursors_from(body.get("cursors"));
                self.submit(&db, ApplyJob::Cursors(cursors), PendingKind::SnapshotEnd)?;
            }
            "TXN" => {
                let Some(db) = database.filter(|d| self.inbound.contains_key(d)) else {
                    return Ok(());
                };
                let mut txn: ReplicatedTxn = message::txn_from(&body)
                    .ok_or_else(|| LinkError::Protocol("bad TXN".into()))?;
                txn.entries.retain(|e| self.accepts(&db, &e.table));
                let t = now();
                let remote = txn.time;
                self.repl.with_status(&self.peer, |s| {
                    let socket = s.sockets.entry(db.clone()).or_default();
                    socket.last_received_remote = remote;
                    socket.last_received_local = t;
                    let node = crate::store::stream_node(&txn.origin);
                    if !socket.nodes.iter().any(|n| n == node) {
                        socket.nodes.push(node.to_string());
                    }
                });
                let kind = PendingKind::Txn {
                    origin: txn.origin.clone(),
                    seq: txn.seq,
                };
                self.submit(&db, ApplyJob::Txn(txn), kind)?;
            }
            "ACK" => {
                if let Some(db) = database {
                    let t = now();
                    self.repl.with_status(&self.peer, |s| {
                        s.sockets.entry(db).or_default().last_commit_confirmed = t;
                    });
                }
            }
            "CSR" => self.sign_csr(&body)?,
            "CSR_SIGNED" => self.take_signed(&body),
            "PING" => {
                let t = body.get("t").cloned().unwrap_or(Value::Null);
                self.out.send("PONG", object(vec![("t", t)]))?;
            }
            "PONG" => {
                if let Some((sent, _)) = self.last_ping.take() {
                    let ms = sent.elapsed().as_secs_f64() * 1000.0;
                    self.repl
                        .with_status(&self.peer, |s| s.latency_ms = Some(ms));
                }
            }
            "BYE" => {
                let reason = body.get("reason").and_then(Value::as_str).unwrap_or("");
                if reason == "removed" {
                    tracing::warn!("replication: {} removed this node", self.peer);
                    self.repl.removed_by(&self.peer);
                }
                return Err(LinkError::Closed(format!("BYE {reason}")));
            }
            "SUBSCRIPTIONS" | "RESTART" | "NODES" => self.membership(kind, &body)?,
            // Unknown types are ignored (docs/replication.md).
            _ => {}
        }
        Ok(())
    }

    /// The cluster's own messages: subscriptions, restart requests, gossip.
    fn membership(&mut self, kind: &str, body: &Value) -> Result<(), LinkError> {
        match kind {
            "SUBSCRIPTIONS"
                if self.repl.peer_view(&self.peer, &self.peer_url, body) == Adopted::Changed =>
            {
                return Err(LinkError::Closed("subscriptions changed".into()));
            }
            "RESTART" => {
                // A peer's `restart_service` with `replicated` (docs/operations-api.md).
                let service = body.get("service").and_then(Value::as_str).unwrap_or("");
                tracing::info!(
                    "replication: {} asked this node to restart ({service})",
                    self.peer
                );
                if let Err(e) = crate::resource::request_restart() {
                    tracing::warn!("replication: cannot restart: {}", e.message);
                }
            }
            "NODES" if self.subs.is_some() => {}
            "NODES" => {
                let mut announced: Vec<(String, String)> = Vec::new();
                let mut removed: Vec<String> = Vec::new();
                if let Value::Array(items) = body {
                    for n in items {
                        let Some(name) = n.get("name").and_then(Value::as_str) else {
                            continue;
                        };
                        if matches!(n.get("removed"), Some(Value::Bool(true))) {
                            removed.push(name.to_string());
                        } else if let Some(url) = n.get("url").and_then(Value::as_str) {
                            announced.push((name.to_string(), url.to_string()));
                        }
                    }
                }
                self.repl.learn_nodes(&announced, &removed);
            }
            _ => {}
        }
        Ok(())
    }

    /// Our own schema wins: a table we keep local, or a system table other than users and
    /// roles, takes nothing from peers.
    fn accepts(&self, db: &str, table: &str) -> bool {
        if let Some(subs) = &self.subs {
            if !subs.subscribes(db, table) {
                return false;
            }
        }
        match self.repl.store.database(db).and_then(|d| d.table(table)) {
            Some(t) => table_replicates(db, &t),
            // Unknown yet: the writer refuses it and the stream restarts after SCHEMA.
            None => db != "system",
        }
    }

    fn submit(&mut self, db: &str, job: ApplyJob, kind: PendingKind) -> Result<(), LinkError> {
        let Some(handle) = self.repl.store.database(db) else {
            return Ok(());
        };
        if self
            .inbound
            .get(db)
            .is_some_and(|i| i.resubscribe_at.is_some())
        {
            // A gap was seen: everything until the stream restarts is dropped.
            if !matches!(kind, PendingKind::SnapshotEnd) {
                return Ok(());
            }
        }
        loop {
            match handle.apply(job.clone()) {
                Ok(rx) => {
                    if let Some(inbound) = self.inbound.get_mut(db) {
                        inbound.pending.push_back(Pending { kind, rx });
                    }
                    break;
                }
                Err(WriteError::Overloaded(_)) => {
                    // The writer's queue is full: wait for our oldest apply instead.
                    self.drain_applies(true)?;
                }
                Err(e) => return Err(LinkError::Closed(format!("writer: {e}"))),
            }
        }
        if self
            .inbound
            .get(db)
            .is_some_and(|i| i.pending.len() >= APPLY_PENDING_MAX)
        {
            self.drain_applies(true)?;
        }
        Ok(())
    }

    /// Collects finished applies in order; with `wait`, blocks for at least the oldest.
    fn drain_applies(&mut self, wait: bool) -> Result<(), LinkError> {
        let dbs: Vec<String> = self.inbound.keys().cloned().collect();
        let mut waited = !wait;
        for db in dbs {
            while let Some(inbound) = self.inbound.get_mut(&db) {
                let Some(front) = inbound.pending.front_mut() else {
                    break;
                };
                let result = if waited {
                    match poll_once(&mut front.rx) {
                        Some(r) => r,
                        None => break,
                    }
                } else {
                    waited = true;
                    block_on(&mut front.rx)
                };
                let Some(done) = inbound.pending.pop_front() else {
                    break;
                };
                match (done.kind, result) {
                    (PendingKind::Txn { origin, seq }, Some(Ok(outcome))) => match outcome {
                        ApplyOutcome::Applied { .. } | ApplyOutcome::Duplicate => {
                            let ack = inbound.acks.entry(origin).or_insert(0);
                            *ack = (*ack).max(seq);
                        }
                        ApplyOutcome::Gap { cursor } => {
                            tracing::debug!(
                                "replication: gap from {} in {db} ({origin} {seq} after {cursor}); re-requesting",
                                self.peer
                            );
                            inbound.subscribed = false;
                            inbound.pending.clear();
                            inbound.resubscribe_at = Some(Instant::now());
                        }
                    },
                    (PendingKind::SnapshotEnd, Some(Ok(_))) => {
                        self.repl.resync_done(&self.peer, &db);
                        if inbound.snapshot_claimed {
                            inbound.snapshot_claimed = false;
                            self.repl.release_snapshot(&db);
                        }
                    }
                    (PendingKind::Snapshot, Some(Ok(_))) => {}
                    (_, Some(Err(e))) => {
                        tracing::warn!(
                            "replication: applying from {} to {db} failed: {e}; re-requesting",
                            self.peer
                        );
                        inbound.subscribed = false;
                        inbound.pending.clear();
                        inbound.resubscribe_at = Some(Instant::now() + Duration::from_millis(500));
                    }
                    (_, None) => return Err(LinkError::Closed("writer stopped".into())),
                }
            }
        }
        Ok(())
    }

    fn send_acks(&mut self) -> Result<(), LinkError> {
        let mut batch = Vec::new();
        for (db, inbound) in self.inbound.iter_mut() {
            for (origin, seq) in std::mem::take(&mut inbound.acks) {
                batch.push((db.clone(), origin, seq));
            }
        }
        for (db, origin, seq) in batch {
            self.out.send(
                "ACK",
                object(vec![
                    ("database", Value::String(db)),
                    ("origin", Value::String(origin)),
                    ("seq", Value::Int(seq as i64)),
                ]),
            )?;
        }
        Ok(())
    }

    /// (Re)subscribes databases that need it, and keeps each one's relay list current: the
    /// origins we know with no link of their own, assigned to the connected peer with the
    /// smallest name so only one peer relays each.
    fn maintain(&mut self) -> Result<(), LinkError> {
        // A database created since HELLO: the link starts over, so that both sides announce
        // it and subscribe to it (docs/replication.md "Creating and dropping databases").
        if let Some(db) = self
            .repl
            .databases()
            .into_iter()
            .find(|d| !self.inbound.contains_key(d))
        {
            tracing::info!(
                "replication: database {db} was created; relinking with {} to replicate it",
                self.peer
            );
            return Err(LinkError::Closed(format!("database {db} created")));
        }
        let connected = self.repl.connected_peers();
        // Nodes with explicit subscriptions send only their own writes: never relayers.
        let relayer = connected
            .iter()
            .filter(|p| !self.repl.explicit(p))
            .min()
            .cloned();
        let dbs: Vec<String> = self.inbound.keys().cloned().collect();
        for db in dbs {
            let Some(handle) = self.repl.store.database(&db) else {
                continue;
            };
            let stream = handle.stream.to_string();
            if let Some(inbound) = self.inbound.get_mut(&db) {
                match &inbound.stream {
                    // Dropped here and created again: both sides' streams of it belong to the
                    // old files, so the link starts over (docs/replication.md "Creating and
                    // dropping databases").
                    Some(s) if *s != stream => {
                        tracing::info!(
                            "replication: database {db} was dropped and created again; \
                             relinking with {}",
                            self.peer
                        );
                        return Err(LinkError::Closed(format!("database {db} created again")));
                    }
                    Some(_) => {}
                    None => inbound.stream = Some(stream),
                }
            }
            let cursors = match handle.read().and_then(|r| r.cursors()) {
                Ok(c) => c,
                Err(_) => continue,
            };
            let own = handle.stream.to_string();
            let relay: Vec<String> = if relayer.as_deref() == Some(self.peer.as_str()) {
                let mut r: Vec<String> = cursors
                    .iter()
                    .map(|(o, _)| o.clone())
                    .filter(|o| o != &own && !self.repl.sent_by_its_node(&db, o, &connected))
                    .collect();
                // Nodes we know of but have no link to, by name: every stream of theirs,
                // including one we hold no cursor for yet (docs/replication.md "Gossip").
                for (key, name, _) in self.repl.nodes() {
                    if self.repl.explicit(&key) {
                        // Its writes come only over its own link (docs/replication.md).
                        continue;
                    }
                    let name = name.unwrap_or(key);
                    if name != self.me
                        && !name.contains('#')
                        && !connected.contains(&name)
                        && !self.repl.is_removed(&name)
                        && !r.contains(&name)
                    {
                        r.push(name);
                    }
                }
                r.sort();
                r
            } else {
                Vec::new()
            };
            if self.subs.as_ref().is_some_and(|s| !s.subscribes_any(&db)) {
                // Explicit subscriptions name no table of it.
                continue;
            }
            // The tables we take from the peer grew: a copy of them first ("Explicit
            // subscriptions").
            let resync = self.repl.resync_due(&self.peer, &db);
            let Some(inbound) = self.inbound.get_mut(&db) else {
                continue;
            };
            if inbound.resubscribe_at.is_some_and(|t| Instant::now() < t) {
                continue;
            }
            let mut snapshot = false;
            if !inbound.subscribed {
                if inbound.snapshot_claimed {
                    continue;
                }
                let others = cursors.iter().any(|(o, _)| o != &own);
                if resync {
                    snapshot = true;
                } else if self.subs.is_some() {
                    // Explicit: the peer's own writes from its log, never a whole copy.
                } else if !others && inbound.start_time.is_none() {
                    // An empty node: one peer gives the initial copy; the others wait for it.
                    if !self.repl.claim_snapshot(&db) {
                        continue;
                    }
                    inbound.snapshot_claimed = true;
                    snapshot = true;
                } else if self.repl.snapshot_in_progress(&db) {
                    continue;
                }
            } else if inbound.relay == relay {
                continue;
            }
            inbound.relay = relay.clone();
            inbound.subscribed = true;
            inbound.resubscribe_at = None;
            let mut body = vec![
                ("database", Value::String(db.clone())),
                ("tables", Value::Null),
                ("cursors", message::cursors_value(&cursors)),
                ("snapshot", Value::Bool(snapshot)),
                (
                    "relay",
                    Value::Array(relay.into_iter().map(Value::String).collect()),
                ),
            ];
            if let Some(t) = inbound
                .start_time
                .take()
                .filter(|_| cursors.iter().all(|(o, _)| o == &own))
            {
                body.push(("startTime", Value::Float(t)));
            }
            self.repl.with_status(&self.peer, |s| {
                s.sockets.entry(db.clone()).or_default().connected = true;
            });
            self.out.send("SUBSCRIBE", object(body))?;
        }
        Ok(())
    }

    fn send_csr(&mut self) {
        let tls = &self.repl.config.tls;
        let request = super::certs::signing_request(tls, &self.me)
            .and_then(|csr| Ok((csr, super::certs::ca_pem(tls)?)));
        match request {
            Ok((csr, ca)) => {
                let _ = self.out.send(
                    "CSR",
                    object(vec![
                        ("csr", Value::String(csr)),
                        ("ca", Value::String(ca)),
                        ("node", Value::String(self.me.clone())),
                        ("url", Value::String(self.repl.settings.url.clone())),
                    ]),
                );
            }
            Err(e) => {
                tracing::warn!("replication: no certificate request for {}: {e}", self.peer);
                self.exchange = None;
            }
        }
    }

    /// `CSR` from a peer that came in as a super user: sign its certificate with our CA, trust
    /// its CA, remember the node, and answer with the certificate and our CA.
    fn sign_csr(&mut self, body: &Value) -> Result<(), LinkError> {
        if !self.may_sign {
            tracing::warn!(
                "replication: {} asked for a certificate without super user credentials",
                self.peer
            );
            return Ok(());
        }
        let text = |k: &str| body.get(k).and_then(Value::as_str).unwrap_or("");
        let tls = &self.repl.config.tls;
        let signed = super::certs::parse_pem(text("ca"))
            .and_then(|_| super::certs::sign(tls, text("csr")))
            .and_then(|certificate| Ok((certificate, super::certs::ca_pem(tls)?)));
        let (certificate, ours) = match signed {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(
                    "replication: cannot sign a certificate for {}: {e}",
                    self.peer
                );
                return Ok(());
            }
        };
        let store = &self.repl.store;
        if let Err(e) = super::certs::store(store, &format!("{} CA", self.peer), text("ca"), true)
            .and_then(|()| self.repl.reload_tls())
        {
            tracing::warn!("replication: cannot trust the CA of {}: {e}", self.peer);
            return Ok(());
        }
        tracing::info!(
            "replication: signed a certificate for {} and trust its CA",
            self.peer
        );
        self.out.send(
            "CSR_SIGNED",
            object(vec![
                ("certificate", Value::String(certificate)),
                ("ca", Value::String(ours)),
            ]),
        )?;
        if !text("url").is_empty() {
            self.repl.store_node(&self.peer, text("url"));
        }
        Ok(())
    }

    /// `CSR_SIGNED`: keep our signed certificate, trust the peer's CA, and dial it from now on
    /// verifying it, without the credentials (unless retained).
    fn take_signed(&mut self, body: &Value) {
        let Some(address) = self.exchange.take() else {
            return;
        };
        let text = |k: &str| body.get(k).and_then(Value::as_str).unwrap_or("");
        let store = &self.repl.store;
        let stored = super::certs::parse_pem(text("ca"))
            .and_then(|_| super::certs::parse_pem(text("certificate")))
            .and_then(|_| {
                super::certs::store(store, &format!("{} CA", self.peer), text("ca"), true)
            })
            .and_then(|()| {
                let name = format!("{} signed by {}", self.me, self.peer);
                super::certs::store(store, &name, text("certificate"), false)
            })
            .and_then(|()| self.repl.reload_tls());
        match stored {
            Ok(()) => {
                tracing::info!(
                    "replication: certificate exchange with {} done; later links use mTLS",
                    self.peer
                );
                self.repl.exchange_done(&address);
            }
            Err(e) => tracing::warn!(
                "replication: certificate exchange with {} failed: {e}",
                self.peer
            ),
        }
    }

    /// `SCHEMA`: creates the tables we lack (as ops-created tables); our own definitions win.
    fn apply_schema(&self, db: &str, body: &Value) {
        let Some(handle) = self.repl.store.database(db) else {
            return;
        };
        let Some(Value::Array(tables)) = body.get("tables") else {
            return;
        };
        for t in tables {
            let Some(name) = t.get("name").and_then(Value::as_str) else {
                continue;
            };
            if handle.table(name).is_some() || db == "system" || !self.accepts(db, name) {
                continue;
            }
            let def = table_def(db, name, t);
            match handle.schema(SchemaChange::Create(def)) {
                Ok(rx) => match block_on(rx) {
                    Some(Ok(_)) | Some(Err(crate::store::StoreError::TableExists(_))) => {
                        tracing::info!("replication: created table {db}.{name} from {}", self.peer)
                    }
                    Some(Err(e)) => tracing::warn!("replication: cannot create {db}.{name}: {e}"),
                    None => {}
                },
                Err(e) => tracing::warn!("replication: cannot create {db}.{name}: {e}"),
            }
        }
    }
}

/// A table definition from a `SCHEMA` entry `{name, primaryKey, attributes, replicate,
/// expiration}`.
pub(crate) fn table_def(db: &str, name: &str, t: &Value) -> TableDef {
    let primary_key = t
        .get("primaryKey")
        .and_then(Value::as_str)
        .map(str::to_string);
    let mut attributes = Vec::new();
    if let Some(Value::Array(attrs)) = t.get("attributes") {
        for a in attrs {
            let Some(n) = a.get("name").and_then(Value::as_str) else {
                continue;
            };
            let ty = a
                .get("type")
                .and_then(Value::as_str)
                .and_then(FieldType::scalar)
                .unwrap_or(FieldType::Any);
            let mut attr = AttributeDef::new(n, ty);
            attr.indexed = matches!(a.get("indexed"), Some(Value::Bool(true)));
            attr.primary_key = primary_key.as_deref() == Some(n);
            attributes.push(attr);
        }
    }
    TableDef {
        database: db.to_string(),
        table: name.to_string(),
        type_name: name.to_string(),
        export: None,
        primary_key,
        attributes,
        expiration_s: message::as_u64(t.get("expiration")),
        replicate: !matches!(t.get("replicate"), Some(Value::Bool(false))),
        audit: true,
        sealed: false,
        location: None,
    }
}

fn schema_entry(table: &crate::store::Table) -> Value {
    let def = &table.def;
    object(vec![
        ("name", Value::String(def.table.clone())),
        (
            "primaryKey",
            def.primary_key
                .clone()
                .map(Value::String)
                .unwrap_or(Value::Null),
        ),
        (
            "attributes",
            Value::Array(
                def.attributes
                    .iter()
                    .map(|a| {
                        object(vec![
                            ("name", Value::String(a.name.clone())),
                            ("type", Value::String(a.ty.name().to_string())),
                            ("indexed", Value::Bool(a.indexed)),
                        ])
                    })
                    .collect(),
            ),
        ),
        ("replicate", Value::Bool(def.replicate)),
        (
            "expiration",
            def.expiration_s
                .map(|s| Value::Int(s as i64))
                .unwrap_or(Value::Null),
        ),
    ])
}

struct SubscribeRequest {
    cursors: HashMap<String, u64>,
    snapshot: bool,
    relay: Vec<String>,
    start_time: Option<f64>,
}

/// Where a sender starts: the receiver's cursors when the start set them (a snapshot's, or
/// those of a start time), and the log position to send after.
type Start = (Option<HashMap<String, u64>>, Option<f64>);

/// Streams one database to the peer.
struct Sender {
    repl: Arc<Replication>,
    out: Arc<Out>,
    peer: String,
    me: String,
    db: Arc<Database>,
    stop: Arc<AtomicBool>,
    link_stop: Arc<AtomicBool>,
    /// Explicit subscriptions with the peer: only the tables we publish, only our own writes.
    subs: Option<Subscriptions>,
}

impl Sender {
    /// Whether `table` goes to the peer at all.
    fn publishes(&self, table: &crate::store::Table) -> bool {
        table_replicates(&self.db.name, table)
            && self
                .subs
                .as_ref()
                .is_none_or(|s| s.publishes(&self.db.name, &table.name))
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Acquire)
            || self.link_stop.load(Ordering::Acquire)
            || self.repl.stopping()
    }

    /// The database was dropped here: the sender must let go of it, or `drop_database` could
    /// not close its files (docs/replication.md "Creating and dropping databases").
    fn dropped(&self) -> bool {
        !self
            .repl
            .store
            .database(&self.db.name)
            .is_some_and(|d| Arc::ptr_eq(&d, &self.db))
    }

    fn replicated_tables(&self) -> Vec<Arc<crate::store::Table>> {
        self.db
            .table_names()
            .iter()
            .filter_map(|n| self.db.table(n))
            .filter(|t| self.publishes(t))
            .collect()
    }

    fn send_schema(&self, tables: &[Arc<crate::store::Table>]) -> Result<(), LinkError> {
        if tables.is_empty() {
            return Ok(());
        }
        self.out.send(
            "SCHEMA",
            object(vec![
                ("database", Value::String(self.db.name.to_string())),
                (
                    "tables",
                    Value::Array(tables.iter().map(|t| schema_entry(t)).collect()),
                ),
            ]),
        )
    }

    /// One consistent read sent whole: every replicated table with its tombstones, then
    /// `SNAPSHOT_END` with the cursors as of that read. Returns those cursors and the log
    /// position the live stream continues from, or None when the link stopped meanwhile.
    #[allow(clippy::type_complexity)]
    fn snapshot(
        &self,
        tables: &[Arc<crate::store::Table>],
    ) -> Result<Option<(HashMap<String, u64>, Option<f64>)>, LinkError> {
        let database = self.db.name.to_string();
        let storage = |e: crate::store::StoreError| LinkError::Closed(format!("storage: {e}"));
        // One consistent read: every replicated table, its tombstones, and the cursors and
        // log position that go with it.
        let (chunks, cursors, last) = {
            let r = self.db.read().map_err(storage)?;
            let mut chunks: Vec<(String, Vec<Value>)> = Vec::new();
            for t in tables {
                let own_id = crate::store::node_id_of(&self.me);
                let rows: Vec<Value> = r
                    .raw_records(t)
                    .map_err(storage)?
                    .into_iter()
                    // Explicit subscriptions carry only our own writes.
                    .filter(|raw| self.subs.is_none() || raw.header.origin == own_id)
                    .map(|raw| {
                        let origin = if raw.header.origin == own_id {
                            Some(self.me.clone())
                        } else {
                            r.node_name(raw.header.origin).ok().flatten()
                        };
                        message::snapshot_row(&SnapshotRecord {
                            table: t.name.to_string(),
                            key: raw.key,
                            version: raw.header.version,
                            origin: origin.unwrap_or_else(|| self.me.clone()),
                            value: raw.value,
                            expires_at: raw.header.expires_at,
                        })
                    })
                    .collect();
                for chunk in rows.chunks(SNAPSHOT_CHUNK) {
                    chunks.push((t.name.to_string(), chunk.to_vec()));
                }
            }
            let mut cursors = r.cursors().map_err(storage)?;
            if self.subs.is_some() {
                // Only our own stream's position: others' writes were not sent.
                cursors.retain(|(o, _)| *o == *self.db.stream);
            }
            (chunks, cursors, r.audit_last().map_err(storage)?)
        };
        for (table, rows) in chunks {
            if self.stopped() {
                return Ok(None);
            }
            self.out.send(
                "SNAPSHOT",
                object(vec![
                    ("database", Value::String(database.clone())),
                    ("table", Value::String(table)),
                    ("records", Value::Array(rows)),
                ]),
            )?;
        }
        self.send_snapshot_end(&database, &cursors)?;
        Ok(Some((cursors.into_iter().collect(), last)))
    }

    fn run(self, req: SubscribeRequest) -> Result<(), LinkError> {
        let database = self.db.name.to_string();
        let tables = self.replicated_tables();
        // Which definition each table was last announced with (pointer identity).
        let mut announced: HashMap<String, usize> = tables
            .iter()
            .map(|t| (t.name.to_string(), Arc::as_ptr(&t.def) as usize))
            .collect();
        self.send_schema(&tables)?;
        let SubscribeRequest {
            cursors,
            snapshot,
            relay,
            start_time,
        } = req;
        let mut sent: HashMap<String, u64> = cursors;
        let own = self.db.stream.to_string();
        // A relay entry is an origin, or a node name standing for every stream of that node.
        let explicit = self.subs.is_some();
        let wanted = |origin: &str| {
            origin == own
                || (!explicit
                    && relay
                        .iter()
                        .any(|r| r == origin || r == crate::store::stream_node(origin)))
        };
        let start = if snapshot {
            self.snapshot(&tables)?.map(|(c, last)| (Some(c), last))
        } else if let Some(t) = start_time {
            let (cursors, from) = self.start_at_time(t, &wanted)?;
            Some((Some(cursors), from))
        } else {
            let relay: &[String] = if explicit { &[] } else { &relay };
            self.catch_up(&tables, relay, &sent)?
        };
        let Some((cursors, mut after)) = start else {
            return Ok(());
        };
        if let Some(cursors) = cursors {
            sent = cursors;
        }
        let storage = |e: crate::store::StoreError| LinkError::Closed(format!("storage: {e}"));
        // Live: our log in commit order, from `after`.
        'live: while !self.stopped() {
            if self.dropped() {
                tracing::info!(
                    "replication: database {database} was dropped; no longer sending it to {}",
                    self.peer
                );
                return Ok(());
            }
            let token = self.db.commits.current();
            let (txns, last) = self
                .db
                .read()
                .and_then(|r| r.audit_txns_after(after, SEND_BATCH))
                .map_err(storage)?;
            if txns.is_empty() && last == after {
                self.db.commits.wait_past(token, Duration::from_millis(200));
                continue;
            }
            after = last;
            for tx in txns {
                if !wanted(&tx.origin) {
                    continue;
                }
                let have = sent.get(&tx.origin).copied().unwrap_or(0);
                if tx.seq > have && tx.pruned {
                    // docs/replication.md "Pruned audit log": never send it incomplete.
                    tracing::info!(
                        "replication: {database} {} {} lost entries to pruning; sending a delta snapshot to {}",
                        tx.origin,
                        tx.seq,
                        self.peer
                    );
                    match self.snapshot(&self.replicated_tables())? {
                        Some((cursors, last)) => {
                            sent = cursors;
                            after = last;
                        }
                        None => return Ok(()),
                    }
                    continue 'live;
                }
                self.send_txn(tx, &database, &mut announced, &mut sent)?;
            }
        }
        Ok(())
    }

    /// Sending from time `t` (`start_time`): from the first transaction at or after it, per
    /// origin; the cursors go first so the receiver takes each origin's first seq as the next
    /// one. Returns those cursors and the position to send after.
    fn start_at_time(
        &self,
        t: f64,
        wanted: &dyn Fn(&str) -> bool,
    ) -> Result<(HashMap<String, u64>, Option<f64>), LinkError> {
        let database = self.db.name.to_string();
        let storage = |e: crate::store::StoreError| LinkError::Closed(format!("storage: {e}"));
        let from = f64::from_bits(t.to_bits().saturating_sub(1));
        let mut firsts: HashMap<String, u64> = HashMap::new();
        let mut scan = Some(from);
        loop {
            let (txns, last) = self
                .db
                .read()
                .and_then(|r| r.audit_txns_after(scan, SEND_BATCH))
                .map_err(storage)?;
            if txns.is_empty() {
                break;
            }
            for tx in txns.iter().filter(|tx| wanted(&tx.origin)) {
                firsts.entry(tx.origin.clone()).or_insert(tx.seq);
            }
            scan = last;
        }
        let cursors: Vec<(String, u64)> = firsts
            .into_iter()
            .map(|(o, s)| (o, s.saturating_sub(1)))
            .collect();
        self.send_snapshot_end(&database, &cursors)?;
        Ok((cursors.into_iter().collect(), Some(from)))
    }

    /// `SNAPSHOT_END` with the cursors the receiver continues from.
    fn send_snapshot_end(
        &self,
        database: &str,
        cursors: &[(String, u64)],
    ) -> Result<(), LinkError> {
        self.out.send(
            "SNAPSHOT_END",
            object(vec![
                ("database", Value::String(database.to_string())),
                ("cursors", message::cursors_value(cursors)),
            ]),
        )
    }

    /// Catch-up: from the earliest transaction the receiver lacks of any origin we send, or a
    /// delta snapshot when the log no longer reaches that far. None when the snapshot ended
    /// the sending (stopped).
    fn catch_up(
        &self,
        tables: &[Arc<crate::store::Table>],
        relay: &[String],
        sent: &HashMap<String, u64>,
    ) -> Result<Option<Start>, LinkError> {
        let database = self.db.name.to_string();
        let storage = |e: crate::store::StoreError| LinkError::Closed(format!("storage: {e}"));
        let r = self.db.read().map_err(storage)?;
        let mut origins: Vec<String> = vec![self.db.stream.to_string()];
        let held = r.cursors().map_err(storage)?;
        for name in relay {
            if name.contains('#') {
                origins.push(name.clone());
            } else {
                // A node name: each of its streams this database holds.
                origins.extend(
                    held.iter()
                        .map(|(o, _)| o)
                        .filter(|o| crate::store::stream_node(o) == name && !origins.contains(o))
                        .cloned()
                        .collect::<Vec<_>>(),
                );
            }
        }
        let mut start: Option<f64> = None;
        let mut log_gap = false;
        for origin in &origins {
            let have = sent.get(origin).copied().unwrap_or(0);
            match r.audit_position(origin, have + 1).map_err(storage)? {
                Some(p) => start = Some(start.map_or(p, |s: f64| s.min(p))),
                None if r.cursor(origin).map_err(storage)? > have => {
                    tracing::info!(
                        "replication: the log of {database} no longer reaches {origin} {} for {}; sending a delta snapshot",
                        have + 1,
                        self.peer
                    );
                    log_gap = true;
                }
                None => {}
            }
        }
        drop(r);
        if log_gap {
            // docs/replication.md: records and tombstones written after the cursor's transaction. Its
            // time went with the log, so every record goes; the receiver keeps what it has
            // that is newer (LWW), and the fresh cursors end the gap.
            return Ok(self
                .snapshot(tables)?
                .map(|(cursors, last)| (Some(cursors), last)));
        }
        let after = match start {
            Some(p) => Some(f64::from_bits(p.to_bits().saturating_sub(1))),
            None => self
                .db
                .read()
                .and_then(|r| r.audit_last())
                .map_err(storage)?,
        };
        Ok(Some((None, after)))
    }

    /// Sends one transaction of our log unless the receiver has it (its cursor for the origin),
    /// announcing a table's definition first when it changed.
    fn send_txn(
        &self,
        tx: AuditTxn,
        database: &str,
        announced: &mut HashMap<String, usize>,
        sent: &mut HashMap<String, u64>,
    ) -> Result<(), LinkError> {
        let have = sent.get(&tx.origin).copied().unwrap_or(0);
        if tx.seq <= have {
            return Ok(());
        }
        let mut entries = Vec::with_capacity(tx.entries.len());
        for e in tx.entries {
            let Some(table) = self.db.table(&e.table) else {
                continue;
            };
            if !self.publishes(&table) {
                continue;
            }
            let ptr = Arc::as_ptr(&table.def) as usize;
            if announced.get(&e.table) != Some(&ptr) {
                announced.insert(e.table.clone(), ptr);
                self.send_schema(std::slice::from_ref(&table))?;
            }
            entries.push(e);
        }
        let txn = ReplicatedTxn {
            origin: tx.origin.clone(),
            seq: tx.seq,
            time: tx.time,
            user: tx.user,
            entries,
        };
        let sending = txn.time;
        self.repl.with_status(&self.peer, |s| {
            s.sockets.entry(database.to_string()).or_default().sending = sending;
        });
        let result = self.out.send("TXN", message::txn_body(database, &txn));
        let t = now();
        self.repl.with_status(&self.peer, |s| {
            s.sockets.entry(database.to_string()).or_default().sending = 0.0;
        });
        result?;
        sent.insert(tx.origin, tx.seq);
        self.repl.with_status(&self.peer, |s| {
            s.sockets.entry(database.to_string()).or_default().last_send = t;
        });
        Ok(())
    }
}
