//! CONNECT (docs/mqtt.md): the first packet within [`CONNECT_TIMEOUT`], the checks that refuse
//! it with a CONNACK code, authentication (password, client certificate, the WebSocket upgrade's
//! caller), the client id, and takeover of a client id held by another connection on any core;
//! [`open`] runs them in order for a new connection, up to the session it resumes.

use std::cell::UnsafeCell;
use std::future::poll_fn;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tidepool_io::{timeout, ReadBytes, ReadHalf, WriteBytes};

use super::codec::Will;
use super::codec::{self, ConnAck, Connect, DecodeError, Level, Packet};
use super::conn::{
    read_packet, ReadError, Session, Start, Unknown, CONNECT_TIMEOUT, RECEIVE_MAXIMUM,
    TAKEOVER_WAIT, TOPIC_ALIAS_MAX,
};
use super::dispatch::Sessions;
use super::durable::{self, Stored};
use super::events::{self, Event};
use super::outbound::Conn;
use super::props::{Properties, Property};
use super::reason::{ReasonCode, Refusal};
use super::shared::MqttShared;
use crate::resource::Caller;
use std::rc::Rc;
use std::sync::Arc;

/// A cross-core "close now" signal for takeovers: set from any core, awaited on the owner's.
///
/// 24 bytes, so that with its `Arc`'s counts it takes the allocator's 48-byte size class rather
/// than 64 (every connection has one; docs/design.md, "Idle connections"): its flags and a lock
/// bit share one word, and the owner's waker is kept under that lock rather than in an
/// `AtomicWaker` (24 bytes on its own). The lock is held only to put or take the waker.
#[derive(Default)]
pub struct Kick {
    /// [`KICKED`], [`RELEASED`], [`CLEAN`] and [`LOCKED`].
    state: AtomicU32,
    /// The owner's task, to wake when kicked; touched only while [`LOCKED`] is held.
    waker: UnsafeCell<Option<Waker>>,
}

/// Kicked: the connection is to close.
const KICKED: u32 = 1;
/// Set once the connection stored its session and let go of its client id.
const RELEASED: u32 = 1 << 1;
/// The Clean Start of the connection's CONNECT, for the client id registry
/// ([`MqttShared::claim`]).
const CLEAN: u32 = 1 << 2;
/// Someone puts or takes the waker.
const LOCKED: u32 = 1 << 3;

// SAFETY: `waker` is the one field that is not `Sync` by itself. It is read and written only
// through `Kick::with_waker`, between setting `LOCKED` (a `fetch_or` that found it clear) and
// clearing it: the bit excludes every other thread meanwhile, and its Acquire/Release orders each
// holder's use of the slot after the previous holder's. A `Waker` is `Send`, so it may be put in
// on one thread and taken out on another.
unsafe impl Sync for Kick {}

/// Clears [`LOCKED`] when dropped, so a panic while the lock is held does not leave it held.
struct Unlock<'a>(&'a AtomicU32);

impl Drop for Unlock<'_> {
    fn drop(&mut self) {
        self.0.fetch_and(!LOCKED, Ordering::Release);
    }
}

impl Kick {
    pub fn kick(&self) {
        self.state.fetch_or(KICKED, Ordering::Release);
        // Woken outside the lock.
        if let Some(waker) = self.with_waker(Option::take) {
            waker.wake();
        }
    }

    fn is_kicked(&self) -> bool {
        self.state.load(Ordering::Acquire) & KICKED != 0
    }

    /// The connection stored its session and let go of its client id.
    pub(super) fn set_released(&self) {
        self.state.fetch_or(RELEASED, Ordering::Release);
    }

    fn is_released(&self) -> bool {
        self.state.load(Ordering::Acquire) & RELEASED != 0
    }

    /// The Clean Start of the connection's CONNECT; read and written under the client id
    /// registry's lock only (see [`MqttShared::claim`]), so relaxed is enough.
    pub(super) fn set_clean(&self, clean: bool) {
        if clean {
            self.state.fetch_or(CLEAN, Ordering::Relaxed);
        } else {
            self.state.fetch_and(!CLEAN, Ordering::Relaxed);
        }
    }

    pub(super) fn clean(&self) -> bool {
        self.state.load(Ordering::Relaxed) & CLEAN != 0
    }

    /// Waits (bounded by [`TAKEOVER_WAIT`]) until the kicked connection has stored its session.
    pub(super) async fn released(&self) {
        let deadline = std::time::Instant::now() + TAKEOVER_WAIT;
        while !self.is_released() && std::time::Instant::now() < deadline {
            tidepool_io::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Completes once kicked. A plain future (a reference): an idle connection waits on it.
    pub(super) fn wait(&self) -> impl Future<Output = ()> + '_ {
        poll_fn(|cx| self.poll_kicked(cx))
    }

    pub(super) fn poll_kicked(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.is_kicked() {
            return Poll::Ready(());
        }
        // The waker replaced is dropped outside the lock.
        let replaced = self.with_waker(|slot| match slot {
            Some(waker) if waker.will_wake(cx.waker()) => None,
            _ => slot.replace(cx.waker().clone()),
        });
        drop(replaced);
        // A kick that set the flag before the waker was put in took no waker, but the flag is
        // seen here: every change of `state` is one read-modify-write in a single order, and
        // the kick's flag came before its lock, which came before or after this one's.
        if self.is_kicked() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Runs `f` on the waker's slot with [`LOCKED`] held.
    fn with_waker<T>(&self, f: impl FnOnce(&mut Option<Waker>) -> T) -> T {
        let mut spins = 0u32;
        while self.state.fetch_or(LOCKED, Ordering::Acquire) & LOCKED != 0 {
            // Held for a waker's clone or take only; yield should its holder have been
            // descheduled.
            spins += 1;
            if spins % 64 == 0 {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
        let _unlock = Unlock(&self.state);
        // SAFETY: this thread set `LOCKED` above, finding it clear, and `_unlock` clears it only
        // after `f` returns (or unwinds): no other reference to the slot exists meanwhile (see
        // `unsafe impl Sync for Kick`).
        f(unsafe { &mut *self.waker.get() })
    }
}

/// Who a CONNECT authenticates as. Until the security issue lands every client is accepted as a
/// super user; the check plugs in here and returns `BadCredentials` / `NotAuthorized` per docs/security.md.
pub async fn authenticate(
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
            match auth::authenticate_password(&shared.resources, user, &password, peer).await {
                Ok(caller) => Ok(caller),
                Err(AuthError::Inactive) => Err(Refusal::NotAuthorized),
                Err(AuthError::TooManyAttempts { .. }) => Err(Refusal::QuotaExceeded),
                Err(AuthError::Busy) => Err(Refusal::Busy),
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
        )
        .await
        {
            Ok(caller) if !caller.is_anonymous() => Ok(caller),
            Ok(caller) if !shared.require_authentication => Ok(caller),
            _ => Err(Refusal::NotAuthorized),
        },
    }
}

/// Who a CONNECT is: its client certificate, else the caller of its WebSocket upgrade (when the
/// CONNECT names no user), else its user name and password.
async fn connect_caller(
    shared: &MqttShared,
    connect: &Connect,
    identity: TransportIdentity,
    peer: SocketAddr,
) -> Result<Caller, Refusal> {
    let transport_caller = match certificate_caller(shared, identity.certificate_cn.as_deref()) {
        Some(result) => Some(result),
        None => identity
            .upgrade_caller
            .filter(|_| connect.username.is_none())
            .map(Ok),
    };
    match transport_caller {
        Some(result) => result,
        None => authenticate(shared, connect, peer).await,
    }
}

/// Who a verified client certificate authenticates as (docs/security.md: an unknown or inactive user
/// is not authorized); None when the connection brought none.
pub(super) fn certificate_caller(
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
pub(super) fn permitted(caller: &Caller, action: &str, database: &str, table: &str) -> bool {
    use crate::resource::permissions;
    match action {
        "read" => permissions::can_read(caller, database, table),
        "insert" => permissions::can_insert(caller, database, table),
        "delete" => permissions::can_delete(caller, database, table),
        _ => permissions::can_update(caller, database, table),
    }
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

/// Reads the first packet, which must be a CONNECT within [`CONNECT_TIMEOUT`]. None when the
/// connection is to close: anything else came first, nothing came, or the CONNECT names a
/// protocol level we do not speak (answered with CONNACK `0x01` / `0x84` first).
pub(super) async fn read_connect<R: ReadBytes, W: WriteBytes>(
    reader: &mut ReadHalf<R>,
    writer: &mut W,
    peer: SocketAddr,
    kick: &Kick,
    shared: &MqttShared,
) -> Option<Connect> {
    // Boxed, like the other rare states below: monoio's timer is large (cache-padded), and only
    // the states an idle connection sits in should set this future's size.
    let first = Box::pin(timeout(
        CONNECT_TIMEOUT,
        read_packet(
            reader,
            shared.packet_bytes_max,
            Level::V4,
            Unknown {
                kick,
                shutdown: &shared.shutdown,
            },
        ),
    ))
    .await;
    match first {
        Ok(Ok(Packet::Connect(c))) => Some(c),
        Ok(Err(ReadError::Decode(DecodeError::UnsupportedLevel(level)))) => {
            tracing::info!(target: "mqtt", "{peer}: CONNECT with unsupported protocol level {level}");
            // In 3.1.1's form, whatever the level ([MQTT-3.1.2-2]; MQTT 5 §3.1.2.2 leaves the
            // answer to a level other than 5 open), as Mosquitto answers: a client of another
            // level cannot be expected to read MQTT 5's.
            refuse_connect(writer, Level::V4, Refusal::UnsupportedLevel.code(Level::V4)).await;
            None
        }
        Ok(Err(ReadError::Decode(e @ DecodeError::Connect5(_)))) => {
            tracing::info!(target: "mqtt", "{peer}: {e}; refused");
            refuse_connect(writer, Level::V5, ReasonCode::for_decode_error(&e).byte()).await;
            None
        }
        Ok(Ok(other)) => {
            tracing::debug!(target: "mqtt", "{peer}: first packet is {} instead of CONNECT; closing", other.kind_name());
            None
        }
        Ok(Err(e)) => {
            tracing::debug!(target: "mqtt", "{peer}: {} before CONNECT; closing", e.before_connect());
            None
        }
        Err(_) => {
            tracing::debug!(target: "mqtt", "{peer}: no CONNECT within {CONNECT_TIMEOUT:?}; closing");
            None
        }
    }
}

/// Answers a CONNECT that cannot be taken with a CONNACK carrying `code`, then closes the
/// write side. Boxed: a rare state that should not set the size of every connection's future.
async fn refuse_connect<W: WriteBytes>(writer: &mut W, level: Level, code: u8) {
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
    Box::pin(async move {
        let _ = writer.write_all(out).await;
        let _ = writer.shutdown_write().await;
    })
    .await;
}

/// The Session Expiry Interval a CONNECT asks for. Durable (docs/mqtt.md): 3.1.1 without clean
/// session (kept forever), v5 with a Session Expiry Interval above 0 (kept that long after the
/// connection ends).
pub(super) fn session_expiry_s(connect: &Connect) -> u32 {
    match (connect.level == Level::V5, connect.clean) {
        (true, _) => connect.properties.session_expiry_s().unwrap_or(0),
        (false, true) => 0,
        (false, false) => durable::EXPIRY_NEVER,
    }
}

/// What an accepted CONNECT established, before its CONNACK is sent.
pub(super) struct Admitted {
    pub(super) caller: Caller,
    pub(super) client_id: String,
    /// The v5 CONNACK properties (assigned client id, our limits, Server Keep Alive).
    pub(super) ack_props: Properties,
    /// The keep-alive the client is held to, in seconds (0: none).
    pub(super) keep_alive_s: u16,
}

/// Checks a CONNECT (authentication method, shutdown, will topic, credentials, client id) and
/// prepares its CONNACK. None when it is refused: the refusing CONNACK is queued (3.1.1 with an
/// invalid will topic only closes) and the connection set to close.
pub(super) async fn admit(
    shared: &MqttShared,
    conn: &Conn,
    connect: &Connect,
    identity: TransportIdentity,
    peer: SocketAddr,
) -> Option<Admitted> {
    let level = connect.level;
    let v5 = level == Level::V5;
    let refuse = |refusal: Refusal| {
        conn.send(&Packet::ConnAck(ConnAck {
            session_present: false,
            code: refusal.code(level),
            properties: Properties::default(),
        }));
        conn.closing.set(true);
        conn.wake_writer();
        None
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
        return None;
    }
    let caller = match connect_caller(shared, connect, identity, peer).await {
        Ok(c) => c,
        // Not a failed login: nothing was checked (docs/security.md "Password checks").
        Err(Refusal::Busy) => return refuse(Refusal::Busy),
        Err(r) => {
            events::record(
                Event::AuthFailed,
                peer.ip(),
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
    Some(Admitted {
        caller,
        client_id,
        ack_props,
        keep_alive_s,
    })
}

/// What an accepted CONNECT leaves for the reader and its session to start with.
pub(super) struct Opened<R> {
    pub(super) reader: ReadHalf<R>,
    pub(super) peer: SocketAddr,
    pub(super) conn: Rc<Conn>,
    pub(super) sessions: Rc<Sessions>,
    pub(super) caller: Caller,
    pub(super) expiry_s: u32,
    pub(super) keep_alive_s: u16,
    pub(super) ack_props: Properties,
    pub(super) restored: Option<durable::Stored>,
    pub(super) will: Option<Will>,
}

/// A connection past its CONNECT: what its writer needs, and, unless the CONNECT was refused
/// (the refusing CONNACK is queued), what its reader needs.
pub(super) struct Opening<R, W> {
    pub(super) writer: W,
    pub(super) conn: Rc<Conn>,
    pub(super) sessions: Rc<Sessions>,
    pub(super) admitted: Option<Box<Opened<R>>>,
}

/// Reads and checks CONNECT, authenticates, takes the client id over and reads a stored
/// session to resume. None when the connection is to close with nothing to write.
///
/// Nothing is written to the connection here unless the CONNECT is refused, so its writer
/// ([`super::outbound::write_loop`]) starts only once this returns, in the same task as its
/// reader ([`super::conn::serve_split`]).
pub(super) async fn open<R: ReadBytes, W: WriteBytes>(
    mut reader: ReadHalf<R>,
    mut writer: W,
    start: Start,
) -> Option<Opening<R, W>> {
    let Start {
        peer,
        identity,
        shared,
        sessions,
    } = start;
    let kick = Arc::new(Kick::default());
    let connect = read_connect(&mut reader, &mut writer, peer, &kick, &shared).await?;
    let expiry_s = session_expiry_s(&connect);
    let conn = Rc::new(Conn::new(&connect, expiry_s, &shared, kick.clone()));
    let Some(admitted) = admit(&shared, &conn, &connect, identity, peer).await else {
        return Some(Opening {
            writer,
            conn,
            sessions,
            admitted: None,
        });
    };
    let client_id: Arc<str> = Arc::from(admitted.client_id);
    let _ = conn.client_id.set(client_id.clone());
    if let Some(old) = shared.claim(&client_id, kick, connect.clean) {
        // The old connection stores its session before letting go; wait so we read that.
        old.released().await;
    }
    let restored = load_stored(&shared, &client_id, connect.clean, peer).await;
    let opened = Box::new(Opened {
        reader,
        peer,
        conn: conn.clone(),
        sessions: sessions.clone(),
        caller: admitted.caller,
        expiry_s,
        keep_alive_s: admitted.keep_alive_s,
        ack_props: admitted.ack_props,
        restored,
        will: connect.will,
    });
    Some(Opening {
        writer,
        conn,
        sessions,
        admitted: Some(opened),
    })
}

/// The stored session a CONNECT resumes: none with clean session / Clean Start, which discards
/// a stored one (docs/mqtt.md), or when none is stored or it cannot be read (logged).
pub(super) async fn load_stored(
    shared: &MqttShared,
    client_id: &str,
    clean: bool,
    peer: SocketAddr,
) -> Option<Stored> {
    if clean {
        if matches!(durable::load(&shared.resources, client_id), Ok(Some(_))) {
            if let Err(e) = durable::discard(&shared.resources, client_id).await {
                tracing::warn!(target: "mqtt", "{peer}: discarding the stored session of {client_id:?} failed: {e}");
            }
        }
        return None;
    }
    match durable::load(&shared.resources, client_id) {
        Ok(stored) => stored,
        Err(e) => {
            tracing::warn!(target: "mqtt", "{peer}: reading the stored session of {client_id:?} failed: {e}; starting a new one");
            None
        }
    }
}

impl Session {
    /// Registers the connection with its core's sessions, sends CONNACK and resumes `restored`.
    /// Nothing here awaits, so no commit is dispatched between registering the connection and
    /// reading the replay's horizon.
    pub(super) fn open(&self, restored: Option<Stored>, ack_props: Properties, peer: SocketAddr) {
        self.sessions.register(&self.conn);
        // The core's shutdown pass kicks the connections it knows of; one registered after
        // that pass is stopped here (the read loop waits on kicks alone, see `conn::kicked`).
        if self.shared().shutdown.is_triggered() {
            self.conn.stop();
        }
        self.conn.send(&Packet::ConnAck(ConnAck {
            session_present: restored.is_some(),
            code: ReasonCode::Success.byte(),
            properties: ack_props,
        }));
        let session_kind = match (&restored, self.expiry_s) {
            (Some(_), _) => "resumed",
            (None, 0) => "clean",
            (None, _) => "new durable",
        };
        events::record(
            Event::Connected,
            peer.ip(),
            format_args!(
                "{peer} client {:?} (MQTT {}, session {session_kind})",
                self.client_id(),
                if self.v5() { "5" } else { "3.1.1" }
            ),
        );
        if let Some(stored) = restored {
            self.resume(stored);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::task::Wake;
    use std::time::Instant;

    /// A waker that records its wake and unparks the waiting thread.
    struct Woken(AtomicBool, std::thread::Thread);

    impl Wake for Woken {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::SeqCst);
            self.1.unpark();
        }
    }

    /// A kick from another thread always ends the owner's wait, however it interleaves with
    /// the owner putting its waker in (no kick is lost), and the flags sharing its word keep
    /// their values.
    #[test]
    fn a_kick_from_another_core_is_never_lost() {
        assert!(std::mem::size_of::<Kick>() <= 24, "a kick is 24 bytes");
        for round in 0..2000u32 {
            let kick = Arc::new(Kick::default());
            kick.set_clean(round % 2 == 0);
            let woken = Arc::new(Woken(AtomicBool::new(false), std::thread::current()));
            let waker = Waker::from(woken.clone());
            let mut cx = Context::from_waker(&waker);
            let kicker = {
                let kick = kick.clone();
                std::thread::spawn(move || kick.kick())
            };
            while kick.poll_kicked(&mut cx).is_pending() {
                // Pending: the kick must wake us. (The deadline only keeps a lost kick from
                // hanging the test.)
                let deadline = Instant::now() + Duration::from_secs(10);
                while !woken.0.swap(false, Ordering::SeqCst) {
                    assert!(
                        Instant::now() < deadline,
                        "round {round}: the kick was lost"
                    );
                    std::thread::park_timeout(Duration::from_millis(10));
                }
            }
            kicker.join().unwrap();
            assert_eq!(kick.clean(), round % 2 == 0);
            assert!(!kick.is_released());
            kick.set_released();
            assert!(kick.is_released() && kick.is_kicked());
            assert_eq!(kick.clean(), round % 2 == 0);
        }
    }
}
