//! One MQTT connection on the core that accepted it (docs/mqtt.md): the read loop that decodes
//! packets and handles them one at a time, in order, and the end of the connection (DISCONNECT
//! reason, stored session, will).
//!
//! A connection runs as one task on its core, two futures joined: the reader (this module's
//! [`serve`]) and a writer (`outbound.rs`), which flushes the outbound buffer that the reader and
//! the core's event dispatcher (`dispatch.rs`) fill. The seams: CONNECT, authentication and
//! takeover in `connect.rs`; inbound PUBLISH and wills in `inbound.rs`; the outbound window in
//! `outbound.rs`; SUBSCRIBE and the initial state in `subscribe.rs`; resuming a stored session
//! in `resume.rs`; the session and the handling of each packet in `session.rs`; reason codes in
//! `reason.rs`; reading a packet (the idle wait) in `read.rs`. Writes go to tables only through `resource`;
//! nothing here opens a transaction other than short reads.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tidepool_io::{join, timeout, Join, ReadBytes, ReadHalf, Split, WriteBytes};

use super::codec::{Level, Packet, Reason};
use super::connect::{self, Kick};
use super::events::{self, Event};
use super::outbound::{write_loop, Conn, WriteLoop};
use super::reason::ReasonCode;

pub use super::connect::TransportIdentity;
pub use super::dispatch::Sessions;
pub(super) use super::session::{Session, SessionRare};
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

// Reading packets (the wait an idle connection sits in) lives in `read.rs`.
pub(super) use super::read::{millis, read_packet, ReadError, Unknown};

/// Serves one MQTT connection until it closes; `hold` (say, a count of open connections) is
/// dropped when it has.
///
/// Not an `async fn`: an `async fn` keeps its arguments for its whole life beside what it moves
/// them into, and this future is what an idle connection's task holds. The set-up here runs at
/// once; the future returned holds only what [`serve_split`]'s does.
pub fn serve<T: Split, G: 'static>(
    stream: T,
    peer: SocketAddr,
    shared: Arc<MqttShared>,
    sessions: Rc<Sessions>,
    hold: G,
) -> impl Future<Output = ()> {
    let _ = stream.set_nodelay(true);
    let identity = TransportIdentity {
        certificate_cn: stream.peer_cn().map(str::to_string),
        upgrade_caller: None,
    };
    let (reader, writer) = stream.into_split();
    let reader = ReadHalf::with_chunk(reader, READ_SPARE_BYTES);
    let start = Start {
        peer,
        identity,
        shared,
        sessions,
    };
    serve_split(reader, writer, start, hold)
}

/// Who a connection is with and what it runs on, as [`serve_split`] starts it.
pub struct Start {
    pub peer: SocketAddr,
    pub identity: TransportIdentity,
    pub shared: Arc<MqttShared>,
    pub sessions: Rc<Sessions>,
}

/// [`serve`] over a connection already split (MQTT over WebSocket brings its own halves).
///
/// An idle connection sits in [`run`]'s wait for its next packet, so only what is held
/// across that wait should set this future's size (docs/design.md, "Idle connections"): the
/// opening (CONNECT, authentication, takeover, resume) and the end run in boxes of their own,
/// and what the connection holds meanwhile ([`Live`]: the read half, the session) lives in one
/// box beside it.
///
/// The reader and the writer ([`write_loop`]) run joined in this one task rather than in two:
/// a second task would cost every idle connection its own cell (docs/design.md).
///
/// The future is a hand-written one ([`Serve`]) rather than an `async` block: a block keeps its
/// captured opening and the opening's result beside the joined futures for the connection's
/// whole life (32 bytes in every idle connection's task).
///
/// `hold` (say, a count of open connections) is dropped with the future, once the reader and
/// the writer are both done (the writer may still be sending the last packets after the
/// reader ended). Kept in place, not boxed (the count is a zero-sized type).
pub fn serve_split<R: ReadBytes, W: WriteBytes, G: 'static>(
    reader: ReadHalf<R>,
    writer: W,
    start: Start,
    hold: G,
) -> impl Future<Output = ()> {
    Serve {
        state: Serving::Opening {
            opening: Box::pin(connect::open(reader, writer, start)),
        },
        run: run::<R>,
        _hold: hold,
    }
}

pin_project_lite::pin_project! {
    /// The future of [`serve_split`]: `run` starts the reader of an admitted connection
    /// (`run::<R>`, zero-sized), `_hold` is dropped with it.
    struct Serve<O, F, W, M, G> {
        #[pin]
        state: Serving<O, F, W>,
        run: M,
        _hold: G,
    }
}

pin_project_lite::pin_project! {
    /// Where a connection's task is. `Both` is what an idle connection sits in.
    #[project = ServingNow]
    enum Serving<O, F, W> {
        /// CONNECT to the session it resumes, boxed.
        Opening { opening: Pin<Box<O>> },
        /// The reader and the writer, joined.
        Both { #[pin] both: Join<F, WriteLoop<W>> },
        /// A refused CONNECT: its CONNACK is queued and the connection set to close.
        Writing { writing: WriteLoop<W> },
        Done,
    }
}

impl<R, W, O, F, M, G> Future for Serve<O, F, W, M, G>
where
    W: WriteBytes,
    O: Future<Output = Option<connect::Opening<R, W>>>,
    F: Future<Output = ()>,
    M: Fn(Box<connect::Opened<R>>) -> F,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        loop {
            let next = match this.state.as_mut().project() {
                ServingNow::Opening { opening } => match opening.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(None) => Serving::Done,
                    Poll::Ready(Some(connect::Opening {
                        writer,
                        conn,
                        sessions,
                        admitted,
                    })) => {
                        let writing = write_loop(writer, conn, sessions);
                        match admitted {
                            Some(opened) => Serving::Both {
                                both: join((this.run)(opened), writing),
                            },
                            None => Serving::Writing { writing },
                        }
                    }
                },
                ServingNow::Both { both } => match both.poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(()) => Serving::Done,
                },
                ServingNow::Writing { writing } => match Pin::new(writing).poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(()) => Serving::Done,
                },
                ServingNow::Done => return Poll::Ready(()),
            };
            this.state.set(next);
        }
    }
}

/// What an open connection's reader holds from CONNECT to its end, in one box: its read half,
/// its session (which holds the connection's state and the core's, and the will) and who the
/// client is. One box rather than several: every allocation costs the allocator 8–16 bytes,
/// and each box a pointer in the task (docs/design.md, "Idle connections").
pub(super) struct Live<R> {
    pub(super) reader: ReadHalf<R>,
    pub(super) session: Session,
    pub(super) peer: Peer,
}

/// A client's address as the reader's state keeps it for its log lines and events: 20 bytes
/// instead of a `SocketAddr`'s 32 (an IPv6 flow label and scope id are not kept).
#[derive(Clone, Copy)]
pub(super) struct Peer {
    ip: std::net::IpAddr,
    port: u16,
}

impl Peer {
    pub(super) fn new(addr: SocketAddr) -> Peer {
        Peer {
            ip: addr.ip(),
            port: addr.port(),
        }
    }

    pub(super) fn addr(self) -> SocketAddr {
        SocketAddr::new(self.ip, self.port)
    }
}

/// The life of an opened connection: its session, the read loop that decodes packets and
/// handles them one at a time, in order, and its end.
///
/// Not an `async fn`: the session starts at once, so the future keeps neither `opened` nor a
/// second copy of anything it moves; what it holds across the wait is the one box.
// `opened` comes boxed from the opening (see `connect::Opening`), and the task's future calls
// this with it as it is.
#[allow(clippy::boxed_local)]
fn run<R: ReadBytes>(opened: Box<connect::Opened<R>>) -> impl Future<Output = ()> {
    let mut live = start(*opened);
    async move {
        // The fields are named through `live` at each use rather than bound to locals: a
        // binding used after the read loop is kept across its wait, 8 bytes each in every idle
        // connection's future (docs/design.md, "Idle connections"). The read loop is written
        // here rather than in a function of its own, whose arguments an `async fn` would keep
        // twice.
        let end = loop {
            if live.session.conn.overflowed.get() {
                break Some(ReasonCode::QuotaExceeded);
            }
            let read = read_packet(
                &mut live.reader,
                live.session.shared().packet_bytes_max,
                live.session.conn.level,
                &*live.session.conn,
            );
            // Boxed: handling is the largest state of this future, and an idle connection should
            // not carry its size (the box lives only while a packet is handled). The packet moves
            // into the box at once, so this future does not keep room for it either.
            let handling = match read.await {
                Ok(packet) => Box::pin(live.session.handle(packet)),
                Err(e) => break closing_reason(&live.session.conn, e, live.peer.addr()),
            };
            match handling.await {
                Flow::Continue => {}
                Flow::Disconnect { publish_will } => {
                    if let (false, Some(rare)) = (publish_will, live.session.rare.get_mut()) {
                        rare.will = None;
                    }
                    live.session.conn.closing.set(true);
                    break None;
                }
                Flow::Close(code) => break Some(code),
            }
        };
        Box::pin(finish(&mut live, end)).await;
    }
}

/// Starts the session of an opened connection: registers it, sends CONNACK, resumes what was
/// stored, and sets the keep-alive the core's sweep holds it to. Returns what the reader holds
/// from here to the connection's end.
fn start<R>(opened: connect::Opened<R>) -> Box<Live<R>> {
    let connect::Opened {
        reader,
        peer,
        conn,
        sessions,
        caller,
        expiry_s,
        keep_alive_s,
        ack_props,
        restored,
        will,
    } = opened;
    let live = Box::new(Live {
        reader,
        session: Session {
            conn,
            sessions,
            caller,
            expiry_s,
            rare: std::cell::Cell::new(will.map(|will| {
                Box::new(SessionRare {
                    will: Some(Box::new(will)),
                    ..SessionRare::default()
                })
            })),
        },
        peer: Peer::new(peer),
    });
    let session = &live.session;
    // From here to the end of the resume nothing awaits (see `Session::open`).
    session.open(restored, ack_props, peer);
    // MQTT §3.1.2.10: one and a half times the Keep Alive without a packet closes the connection;
    // `Sessions::sweep_keep_alive` checks it.
    session.conn.heard_ms.set(millis());
    session.conn.keep_alive_s.set(keep_alive_s);
    live
}

/// The end of a connection whose read loop ended with `end`: DISCONNECT (v5), the stored
/// session, the will, the client id let go, and a moment to drain what the client still sends.
async fn finish<R: ReadBytes>(live: &mut Live<R>, end: Option<ReasonCode>) {
    let Live {
        reader,
        session,
        peer,
    } = live;
    let peer = peer.addr();
    let will = session.rare.get_mut().as_mut().and_then(|r| r.will.take());
    let (conn, shared, sessions) = (&session.conn, session.shared(), &session.sessions);
    let kick = &conn.kick;
    // Pipelined QoS 0 publishes are applied before anything the end of the connection does.
    session.settle().await;
    let client_id = session.client_id();
    let v5 = conn.level == Level::V5;
    if let Some(code) = end {
        if v5 {
            conn.send(&Packet::Disconnect(Reason::new(code.byte())));
        }
        tracing::info!(target: "mqtt", "{peer}: closing client {client_id:?} (reason 0x{:02x})", code.byte());
    }
    conn.closing.set(true);
    conn.wake_writer();
    session.end().await;
    sessions.forget(conn);
    // Before letting go of the client id, so a connection taking it over, or coming next, finds
    // a delayed will to settle (see `MqttShared::claim`).
    if let Some(will) = will {
        session.leave_will(*will, kick, shared, sessions).await;
    }
    shared.release(client_id, kick);
    events::record(
        Event::Disconnected,
        peer.ip(),
        format_args!("{peer} client {client_id:?}"),
    );
    let taken = [ReasonCode::SessionTakenOver, ReasonCode::ServerShuttingDown];
    if v5 && end.is_some_and(|c| !taken.contains(&c)) {
        drain(reader, shared, conn.level, kick).await;
    }
}

/// The reason a connection whose read ended is closed with; none when the client closed it.
fn closing_reason(conn: &Conn, e: ReadError, peer: SocketAddr) -> Option<ReasonCode> {
    match e {
        ReadError::Closed => None,
        ReadError::Kicked if conn.expired.get() => Some(ReasonCode::KeepAliveTimeout),
        ReadError::Kicked if conn.overflowed.get() => Some(ReasonCode::QuotaExceeded),
        ReadError::Kicked if conn.state_failed.get() => Some(ReasonCode::Unspecified),
        ReadError::Kicked if conn.stopping.get() => Some(ReasonCode::ServerShuttingDown),
        ReadError::Kicked => Some(ReasonCode::SessionTakenOver),
        ReadError::Shutdown => Some(ReasonCode::ServerShuttingDown),
        ReadError::Decode(e) => {
            tracing::info!(target: "mqtt", "{peer}: {e}; closing");
            Some(ReasonCode::for_decode_error(&e))
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
        let waiting = Unknown {
            kick,
            shutdown: &shared.shutdown,
        };
        while read_packet(reader, shared.packet_bytes_max, level, waiting)
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

#[cfg(test)]
mod tests {
    use super::super::outbound::write_loop;
    use super::*;
    use tidepool_io::TcpWrite;

    /// The size of the future a function of five arguments returns.
    fn future_size5<A, B, C, D, E, F: std::future::Future>(
        _: impl Fn(A, B, C, D, E) -> F,
    ) -> usize {
        std::mem::size_of::<F>()
    }

    fn future_size3<A, B, C, F: std::future::Future>(_: impl Fn(A, B, C) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// What an idle plain connection keeps beside its buffers (none): its one task's future
    /// (reader and writer joined), the box its reader holds (read half, session, peer), its
    /// state and its kick (docs/design.md, "Idle connections"). The writer's part is only two
    /// handles and the write half. Sizes are of this (unoptimised) test build when written:
    /// task 208, writer 32, reader's box 136, session 64, state 168, kick 24; a release
    /// build's task cell is 248 bytes (24 + 208 + 16). Before issue 19's idle work they were a
    /// reader task of 2,944 bytes, a writer task of 424 and a state of 592; before its second
    /// pass two tasks (~420 and 96 bytes of future) and a state of 456 bytes; before its third
    /// a task of 288 (release cell 336), a reader's state and a session of 88 bytes in two
    /// boxes, a state of 200 and a kick of 32.
    #[test]
    fn an_idle_connection_state_is_small() {
        let task = future_size5(serve::<tidepool_io::Stream, ()>);
        let writer = future_size3(write_loop::<TcpWrite>);
        let live = std::mem::size_of::<Live<tidepool_io::TcpRead>>();
        let session = std::mem::size_of::<Session>();
        let conn = std::mem::size_of::<Conn>();
        let kick = std::mem::size_of::<Kick>();
        eprintln!(
            "task {task} writer {writer} live {live} session {session} conn {conn} kick {kick}"
        );
        assert!(task <= 208, "connection task future {task} B");
        assert!(writer <= 32, "writer future {writer} B");
        assert!(live <= 136, "reader's box {live} B");
        assert!(session <= 64, "session {session} B");
        assert!(conn <= 168, "connection state {conn} B");
        assert!(kick <= 24, "kick {kick} B");
    }
}
