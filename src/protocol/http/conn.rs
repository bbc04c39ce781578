//! One HTTP/1.1 connection: read, answer every complete request in order, write once per batch.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tidepool_io::{clock, race, timeout, Either, InFlight, InFlightGuard, Shutdown, Transport};

use super::idle::IdleSlot;
use super::parse::{frame, header_slots, BodyLocation, Frame, Head, ParseError};
use super::{date, reason, Limits, Method, Request, Response, Service};

/// Bytes of free space guaranteed before each read.
const READ_SPARE_MIN: usize = 4096;
/// After an error response, read and discard at most this much for at most this long before
/// closing, so the client sees our answer instead of a reset caused by its unread upload.
const LINGER_BYTES_MAX: usize = 256 * 1024;
const LINGER_TIME: Duration = Duration::from_millis(500);
/// An idle connection keeps buffers of at most this many bytes each; a larger one (left by a big
/// body or response) is given back before waiting for the next request.
const IDLE_BUFFER_BYTES_MAX: usize = 64 * 1024;
/// Capacity of a connection's write buffer when it starts or is given back.
const BUFFER_BYTES: usize = 8192;
/// Capacity of the read buffer a connection takes when it wakes from idle: a usual request
/// whole (a larger one grows it). Only this is taken before the read shows there is a request:
/// a burst of idle connections waking at once — a fleet of clients closing — holds 4 KiB each
/// for its read, not a whole set (docs/design.md, "Idle connections").
const FIRST_READ_BYTES: usize = READ_SPARE_MIN;
/// Most buffer sets (and, apart, read buffers) a core keeps spare for its connections' next
/// requests.
const SPARE_SETS_MAX: usize = 64;

/// The answering part of a connection's buffers, taken once a request has arrived. Between
/// requests a plain TCP connection holds none: it waits for readiness, reads into a read buffer
/// from its core's spares, takes a set once it has read a request, and gives both back once
/// everything is answered and written (docs/design.md, "Idle connections").
struct Buffers {
    wbuf: Vec<u8>,
    response: [Vec<u8>; 2],
}

thread_local! {
    /// This core's spare buffer sets (each core is one thread; nothing here crosses cores).
    static SPARES: std::cell::RefCell<Vec<Buffers>> = const { std::cell::RefCell::new(Vec::new()) };
    /// This core's spare read buffers.
    static SPARE_READS: tidepool_io::Spares = const {
        tidepool_io::Spares::new(SPARE_SETS_MAX, 2 * BUFFER_BYTES, SPARE_SETS_MAX * BUFFER_BYTES)
    };
    /// Buffer sets this core allocated so far (the keep-alive sweeper gives memory back after a
    /// burst of them: `idle.rs`).
    static SETS_ALLOCATED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Buffer sets this core has allocated since it started.
pub(super) fn sets_allocated() -> u64 {
    SETS_ALLOCATED.with(|n| n.get())
}

/// A read buffer from this core's spares, or a new one.
fn take_read_buffer() -> Vec<u8> {
    SPARE_READS.with(|spares| spares.take(FIRST_READ_BYTES))
}

/// Keeps `buf` for another connection of this core when it is of the usual size and there is
/// room; frees it otherwise.
fn give_back_read_buffer(buf: Vec<u8>) {
    SPARE_READS.with(|spares| spares.give_back(buf));
}

impl Buffers {
    /// A set from this core's spares, or a new one (counted in `allocated`).
    fn take(allocated: &AtomicU64) -> Buffers {
        SPARES
            .with(|spares| spares.borrow_mut().pop())
            .unwrap_or_else(|| {
                allocated.fetch_add(1, Ordering::Relaxed);
                SETS_ALLOCATED.with(|n| n.set(n.get() + 1));
                Buffers {
                    wbuf: Vec::with_capacity(BUFFER_BYTES),
                    response: [Vec::with_capacity(256), Vec::with_capacity(1024)],
                }
            })
    }

    /// Keeps this set for another connection when it is of the usual size and the core has room
    /// for it; frees it otherwise.
    fn give_back(mut self) {
        let usual = self.wbuf.capacity() <= 2 * BUFFER_BYTES
            && self
                .response
                .iter()
                .all(|b| b.capacity() <= 2 * BUFFER_BYTES);
        if !usual {
            return;
        }
        self.wbuf.clear();
        SPARES.with(|spares| {
            let mut spares = spares.borrow_mut();
            if spares.len() < SPARE_SETS_MAX {
                spares.push(self);
            }
        });
    }
}

/// One core's connection memory, written only by that core's connections and read by anyone
/// (`/metrics`, `/health?verbose`).
#[derive(Default)]
pub struct ConnGauges {
    /// Bytes of capacity held by the buffers of this core's open HTTP connections.
    pub buffer_bytes: AtomicU64,
    /// Bytes of request bodies being read or held on this core (bounded by
    /// `http.maxBodyBytesInFlightPerCore`).
    pub body_bytes_in_flight: AtomicU64,
    /// Requests answered from their head without reading their body (refused or over budget).
    pub refused_before_body: AtomicU64,
    /// Answering buffer sets allocated because the core had no spare one: more connections at
    /// once with a request to answer than the core keeps spare sets for.
    pub buffer_sets_allocated: AtomicU64,
}

/// This connection's share of one of its core's gauges; the share is taken back when it drops,
/// whatever way the connection ends.
struct Share<'a> {
    gauge: &'a AtomicU64,
    bytes: u64,
}

impl<'a> Share<'a> {
    fn new(gauge: &'a AtomicU64) -> Self {
        Self { gauge, bytes: 0 }
    }

    fn set(&mut self, bytes: u64) {
        if bytes > self.bytes {
            self.gauge.fetch_add(bytes - self.bytes, Ordering::Relaxed);
        } else {
            self.gauge.fetch_sub(self.bytes - bytes, Ordering::Relaxed);
        }
        self.bytes = bytes;
    }

    /// Raises (or lowers) this share to `bytes` unless the gauge would pass `max` while others
    /// hold part of it: a body alone on its core is always admitted (up to `http.maxBodySize`).
    fn try_set(&mut self, bytes: u64, max: u64) -> bool {
        let others = self
            .gauge
            .load(Ordering::Relaxed)
            .saturating_sub(self.bytes);
        if bytes > self.bytes && others > 0 && others.saturating_add(bytes) > max {
            return false;
        }
        self.set(bytes);
        true
    }
}

impl Drop for Share<'_> {
    fn drop(&mut self) {
        self.set(0);
    }
}

/// Bytes a body still being read will hold: the request so far plus what its Content-Length
/// says is missing; a chunked body (length unknown) is counted as it grows, twice, as it is
/// decoded into a second buffer.
fn body_charge(buffered: usize, missing: Option<usize>) -> u64 {
    match missing {
        Some(missing) => buffered.saturating_add(missing) as u64,
        None => (buffered.saturating_add(READ_SPARE_MIN) as u64).saturating_mul(2),
    }
}

/// A request built from a parsed head, with an empty body (the caller sets it when it is there).
fn head_request<'a>(
    head: &Head<'a, 'a>,
    peer: SocketAddr,
    peer_cn: Option<&'a str>,
) -> Request<'a> {
    let target = head.target;
    let (path, query) = match target.find('?') {
        Some(i) => (&target[..i], Some(&target[i + 1..])),
        None => (target, None),
    };
    Request {
        method: Method::parse(head.method),
        method_raw: head.method,
        target,
        path,
        query,
        headers: head.headers,
        body: &[],
        peer,
        peer_cn,
        version_minor: head.version_minor,
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Idle,
    Head,
    Body,
}

/// One connection's buffers, and the request being read, across batches of requests.
struct Conn<'g, H> {
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    body_buf: Vec<u8>,
    resp: Response,
    /// Where the first request not yet answered starts in `rbuf`.
    start: usize,
    request_started: Option<Instant>,
    continue_sent: bool,
    guards: Vec<InFlightGuard<'g>>,
    held: Share<'g>,
    body_share: Share<'g>,
    sets_allocated: &'g AtomicU64,
    /// The request at `start` had its head judged (`check_head`) while its body was still coming.
    head_checked: bool,
    checked: Option<H>,
}

/// How a batch of buffered requests ended.
struct Batch {
    /// What the connection waits for next.
    phase: Phase,
    close: bool,
    fatal: Option<ParseError>,
    /// `resp` holds an answer given from the head alone: send it and close unread.
    refused: bool,
}

/// What answering the buffered requests came to.
enum Answered {
    Batch(Batch),
    /// A response took the connection over (WebSocket, SSE): its head is in `wbuf`; the bytes
    /// after its request are handed on.
    Takeover(super::Takeover, Vec<u8>),
    /// Nothing more to do: the connection just closes.
    Gone,
}

/// What the connection's limits and surroundings are, for the whole connection.
struct Env<'a, S> {
    peer: SocketAddr,
    service: &'a S,
    limits: &'a Limits,
    shutdown: &'a Shutdown,
    in_flight: &'a InFlight,
}

/// Serves one connection (plain TCP or TLS) until the peer closes, a limit closes it, or shutdown
/// finds it idle.
/// A connection taken over after a response head (WebSocket, SSE) continues as an
/// [`tidepool_io::AnyStream`], plain or TLS alike.
pub async fn serve<S: Service, T: Transport + Into<tidepool_io::AnyStream>>(
    mut stream: T,
    peer: SocketAddr,
    service: &S,
    limits: &Limits,
    shutdown: &Shutdown,
    in_flight: &InFlight,
    gauges: &ConnGauges,
) {
    let _ = stream.set_nodelay(true);
    let env = Env {
        peer,
        service,
        limits,
        shutdown,
        in_flight,
    };
    let mut c: Conn<'_, S::Head> = Conn {
        rbuf: Vec::new(),
        wbuf: Vec::new(),
        body_buf: Vec::new(),
        resp: Response::new(),
        start: 0,
        request_started: None,
        continue_sent: false,
        guards: Vec::new(),
        held: Share::new(&gauges.buffer_bytes),
        body_share: Share::new(&gauges.body_bytes_in_flight),
        sets_allocated: &gauges.buffer_sets_allocated,
        head_checked: false,
        checked: None,
    };
    let idle = IdleSlot::new();
    // A new connection waits for its first request like an idle one, holding no buffers.
    c.park();
    let mut phase = Phase::Idle;
    loop {
        if !c.read_more(&mut stream, phase, &env, &idle).await {
            return;
        }
        // Boxed: answering (request parsing, the handler's own state) needs far more memory than
        // waiting, and a connection task is as big as its biggest state. The box's block is
        // kept by the core for the next batch (`Pooled`), not freed and allocated per request.
        // Each poll of the answer shares one clock reading (docs/design.md, "One clock reading
        // per batch"); a wait inside it (a write's commit) leaves no reading to other tasks.
        let answer =
            tidepool_io::Pooled::new_with(|| clock::scoped(c.answer_buffered(&stream, &env)));
        let batch = match answer.await {
            Answered::Batch(batch) => batch,
            Answered::Gone => return,
            Answered::Takeover(takeover, leftover) => {
                let wbuf = std::mem::take(&mut c.wbuf);
                // The handler runs for as long as the stream lasts; it is not a request in flight,
                // and this connection's buffers are not its to hold.
                drop(c);
                Box::pin(hand_over(stream, wbuf, takeover, leftover)).await;
                return;
            }
        };
        let Batch {
            phase: next,
            close,
            fatal,
            refused,
        } = batch;
        phase = next;
        if fatal.is_some() || refused {
            if let Some(error) = fatal {
                c.resp.reset();
                c.resp.json_error(error.status(), error.message());
            }
            if refused {
                gauges.refused_before_body.fetch_add(1, Ordering::Relaxed);
            }
            encode_response(&mut c.wbuf, &c.resp, false, true, false);
            Box::pin(answer_and_close(&mut stream, std::mem::take(&mut c.wbuf))).await;
            return;
        }
        c.before_write(phase, close);
        if !c.wbuf.is_empty() {
            let (result, returned) = stream.write_all(std::mem::take(&mut c.wbuf)).await;
            c.wbuf = returned;
            c.wbuf.clear();
            if result.is_err() {
                return;
            }
        }
        c.after_write(phase);
        if close {
            let _ = stream.shutdown_write().await;
            return;
        }
    }
}

/// Sends a taken-over response's head, then runs its handler on the stream.
async fn hand_over<T: Transport + Into<tidepool_io::AnyStream>>(
    stream: T,
    wbuf: Vec<u8>,
    takeover: super::Takeover,
    leftover: Vec<u8>,
) {
    let mut stream: tidepool_io::AnyStream = stream.into();
    let (result, _) = stream.write_all(wbuf).await;
    if result.is_ok() {
        (takeover.0)(super::Upgraded { stream, leftover }).await;
    }
}

/// Sends a final answer, then lingers so the client reads it, and closes.
async fn answer_and_close<T: Transport>(stream: &mut T, wbuf: Vec<u8>) {
    let (_, returned) = stream.write_all(wbuf).await;
    drop(returned);
    linger_close(stream).await;
}

impl<'g, H> Conn<'g, H> {
    /// Answers every complete request buffered, in order, into `wbuf`; stops at an incomplete
    /// one (judging its head once, and its body against the core's budget), a fatal parse
    /// error, a response that closes, or a takeover.
    async fn answer_buffered<S: Service<Head = H>, T: Transport>(
        &mut self,
        stream: &T,
        env: &Env<'g, S>,
    ) -> Answered {
        let mut batch = Batch {
            phase: Phase::Idle,
            close: false,
            fatal: None,
            refused: false,
        };
        while self.start < self.rbuf.len() {
            let mut headers = header_slots();
            let start = self.start;
            let framed = match frame(
                &self.rbuf[start..],
                &mut headers,
                env.limits,
                &mut self.body_buf,
            ) {
                Ok(Frame::Complete(framed)) => framed,
                Ok(Frame::NeedHead) => {
                    self.request_started.get_or_insert_with(clock::recent);
                    batch.phase = Phase::Head;
                    break;
                }
                Ok(Frame::NeedBody { missing, head }) => {
                    self.request_started.get_or_insert_with(clock::recent);
                    if self.guards.is_empty() {
                        self.guards.push(env.in_flight.enter());
                    }
                    batch.phase = Phase::Body;
                    // Who asks, for what, is known now: a request that will be refused is
                    // answered before a byte of its body is read (README, "Limits").
                    if !self.head_checked {
                        self.head_checked = true;
                        self.resp.reset();
                        let request = head_request(&head, env.peer, stream.peer_cn());
                        match env.service.check_head(&request, &mut self.resp).await {
                            Ok(h) => self.checked = Some(h),
                            Err(super::Refused) => {
                                batch.refused = true;
                                break;
                            }
                        }
                    }
                    batch.refused = !self.admit_body(missing, env.limits);
                    break;
                }
                Err(e) => {
                    batch.fatal = Some(e);
                    break;
                }
            };
            self.guards.push(env.in_flight.enter());
            let body: &[u8] = match framed.body {
                BodyLocation::Inline { start: from, end } => &self.rbuf[start + from..start + end],
                BodyLocation::Decoded => &self.body_buf,
            };
            let version_minor = framed.head.version_minor;
            let total = framed.consumed;
            let request = Request {
                body,
                ..head_request(&framed.head, env.peer, stream.peer_cn())
            };
            let wants_close = wants_close(&request, version_minor);
            self.resp.reset();
            self.head_checked = false;
            env.service
                .call(&request, &mut self.resp, self.checked.take())
                .await;
            if self.resp.is_takeover() {
                // The head is encoded while the response still says it is a takeover (no length).
                encode_response(&mut self.wbuf, &self.resp, true, false, false);
                let leftover = self.rbuf[start + total..].to_vec();
                return match self.resp.take_takeover() {
                    Some(takeover) => Answered::Takeover(takeover, leftover),
                    None => Answered::Gone,
                };
            }
            batch.close = wants_close || self.resp.close || env.shutdown.is_triggered();
            encode_response(
                &mut self.wbuf,
                &self.resp,
                request.method == Method::Head,
                batch.close,
                version_minor == 0,
            );
            self.start += total;
            self.request_started = None;
            self.continue_sent = false;
            if batch.close {
                break;
            }
        }
        Answered::Batch(batch)
    }

    /// Counts a body still coming against the core's budget for bodies in flight; false (with
    /// the 503 answer in `resp`) when it does not fit. Makes room for the whole body at once.
    fn admit_body(&mut self, missing: Option<usize>, limits: &Limits) -> bool {
        let buffered = self.rbuf.len() - self.start;
        let charge = body_charge(buffered, missing);
        if !self
            .body_share
            .try_set(charge, limits.body_bytes_in_flight_max)
        {
            self.resp.reset();
            self.resp.json_error(
                503,
                "Too many request bodies in flight on this core \
                 (http.maxBodyBytesInFlightPerCore); retry later",
            );
            self.resp.header("Retry-After", "1");
            return false;
        }
        // Make room for the whole body now: one allocation instead of many.
        if let Some(missing) = missing {
            if self.rbuf.capacity() - self.rbuf.len() < missing {
                self.rbuf.reserve(missing);
            }
        }
        true
    }

    /// Drops the answered requests' bytes and queues `100 Continue` for a body that waits for it.
    fn before_write(&mut self, phase: Phase, close: bool) {
        let start = self.start;
        if start == self.rbuf.len() {
            self.rbuf.clear();
            self.start = 0;
        } else if start > 0 && (close || phase != Phase::Body || start > self.rbuf.len() / 2) {
            self.rbuf.drain(..start);
            self.start = 0;
        }
        if phase == Phase::Body && !self.continue_sent && !close {
            if expects_continue(&self.rbuf[self.start..]) {
                self.wbuf
                    .extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
            }
            self.continue_sent = true;
        }
    }

    /// Once every answered request is on the wire: lets go of their guards and budget, and an
    /// idle connection of big buffers.
    fn after_write(&mut self, phase: Phase) {
        // A request still being read keeps its guard.
        if phase == Phase::Idle {
            self.guards.clear();
        } else if self.guards.len() > 1 {
            self.guards.truncate(1);
        }
        if phase != Phase::Body {
            self.body_share.set(0);
        }
        if phase == Phase::Idle {
            // A big body or response leaves big buffers behind: an idle connection gives them back.
            if self.rbuf.capacity() > IDLE_BUFFER_BYTES_MAX && self.rbuf.len() <= BUFFER_BYTES {
                let mut smaller = Vec::with_capacity(BUFFER_BYTES);
                smaller.extend_from_slice(&self.rbuf);
                self.rbuf = smaller;
            }
            if self.wbuf.capacity() > IDLE_BUFFER_BYTES_MAX {
                self.wbuf = Vec::with_capacity(BUFFER_BYTES);
            }
            if self.body_buf.capacity() > IDLE_BUFFER_BYTES_MAX {
                drop(std::mem::take(&mut self.body_buf));
            }
        }
        self.count_held();
    }

    fn count_held(&mut self) {
        let held = self.rbuf.capacity()
            + self.wbuf.capacity()
            + self.body_buf.capacity()
            + self.resp.capacity();
        self.held.set(held as u64);
    }

    /// Gives this connection's buffers to its core's spares: it has nothing buffered to read or
    /// write.
    fn park(&mut self) {
        assert!(self.start == self.rbuf.len() && self.wbuf.is_empty());
        give_back_read_buffer(std::mem::take(&mut self.rbuf));
        Buffers {
            wbuf: std::mem::take(&mut self.wbuf),
            response: self.resp.take_buffers(),
        }
        .give_back();
        self.start = 0;
        self.count_held();
    }

    /// Takes a set of buffers for answering the request that arrived (the read buffer is taken
    /// apart, before the read).
    fn unpark_answering(&mut self) {
        let Buffers { wbuf, response } = Buffers::take(self.sets_allocated);
        self.wbuf = wbuf;
        self.resp.put_buffers(response);
        self.count_held();
    }

    /// Reads more of the connection; false when the connection is to end (closed, failed,
    /// shutdown while idle, or timed out: 408 unless idle). A connection with nothing buffered
    /// waits for readiness without buffers or a timer of its own (its core's keep-alive sweep,
    /// `idle.rs`); a request under way, or a transport without readiness (TLS), reads within the
    /// phase's deadline.
    async fn read_more<S, T: Transport>(
        &mut self,
        stream: &mut T,
        phase: Phase,
        env: &Env<'_, S>,
        idle: &IdleSlot,
    ) -> bool {
        if phase != Phase::Idle || self.start != self.rbuf.len() || !self.wbuf.is_empty() {
            return Box::pin(self.read_timed(stream, phase, env)).await;
        }
        self.park();
        let waited = idle.idle(env.limits.keep_alive_timeout);
        let ready = race(race(stream.readable(), idle.expiry()), env.shutdown.wait()).await;
        let read_now = match ready {
            Either::Left(Either::Left(Ok(ready))) => ready,
            // An error, the keep-alive timeout or shutdown while idle: just close.
            _ => return false,
        };
        if !read_now {
            idle.active();
            self.rbuf = take_read_buffer();
            self.unpark_answering();
            let rest = env
                .limits
                .keep_alive_timeout
                .saturating_sub(waited.elapsed());
            return Box::pin(self.read_timed_for(stream, rest, None, env)).await;
        }
        // Data (or the end) is there: this read does not wait. The keep-alive still bounds it.
        // Only a read buffer is taken for it; the rest once it brought a request.
        let read = race(
            stream.read_append(take_read_buffer(), READ_SPARE_MIN),
            idle.expiry(),
        )
        .await;
        idle.active();
        match read {
            Either::Left((Ok(n), returned)) if n != 0 => {
                self.rbuf = returned;
                self.unpark_answering();
                true
            }
            Either::Left((_, returned)) => {
                give_back_read_buffer(returned);
                false
            }
            Either::Right(_) => false,
        }
    }

    /// Reads more within the phase's deadline (see [`Conn::read_more`]).
    async fn read_timed<S, T: Transport>(
        &mut self,
        stream: &mut T,
        phase: Phase,
        env: &Env<'_, S>,
    ) -> bool {
        let limits = env.limits;
        let (deadline, on_expiry) = match phase {
            Phase::Idle => (limits.keep_alive_timeout, None),
            Phase::Head => (
                remaining(self.request_started, limits.headers_timeout),
                Some(408),
            ),
            Phase::Body => (
                remaining(self.request_started, limits.request_timeout),
                Some(408),
            ),
        };
        self.read_timed_for(stream, deadline, on_expiry, env).await
    }

    async fn read_timed_for<S, T: Transport>(
        &mut self,
        stream: &mut T,
        deadline: Duration,
        on_expiry: Option<u16>,
        env: &Env<'_, S>,
    ) -> bool {
        let idle = on_expiry.is_none();
        let rbuf = std::mem::take(&mut self.rbuf);
        let read = async {
            if idle {
                match race(
                    stream.read_append(rbuf, READ_SPARE_MIN),
                    env.shutdown.wait(),
                )
                .await
                {
                    Either::Left(out) => Some(out),
                    Either::Right(()) => None,
                }
            } else {
                Some(stream.read_append(rbuf, READ_SPARE_MIN).await)
            }
        };
        match timeout(deadline, read).await {
            Ok(Some((Ok(n), returned))) => {
                self.rbuf = returned;
                n != 0
            }
            Ok(Some((Err(_), _))) => false,
            // Shutdown while idle: nothing in flight here, just close.
            Ok(None) => false,
            Err(_) => {
                if let Some(status) = on_expiry {
                    self.resp.reset();
                    self.resp.json_error(
                        status,
                        "Request timed out (http.headersTimeout / http.timeout)",
                    );
                    encode_response(&mut self.wbuf, &self.resp, false, true, false);
                    let _ = stream.write_all(std::mem::take(&mut self.wbuf)).await;
                    let _ = stream.shutdown_write().await;
                }
                false
            }
        }
    }
}

/// Whether the client asks to close after this request (`Connection`, or HTTP/1.0 without
/// keep-alive).
fn wants_close(request: &Request<'_>, version_minor: u8) -> bool {
    match request.header("connection") {
        Some(v) if v.eq_ignore_ascii_case(b"close") => true,
        Some(v) if v.eq_ignore_ascii_case(b"keep-alive") => false,
        _ => version_minor == 0,
    }
}

fn remaining(started: Option<Instant>, limit: Duration) -> Duration {
    match started {
        Some(t) => limit.saturating_sub(t.elapsed()),
        None => limit,
    }
}

/// Whether the (complete) head at the start of `buf` carries `Expect: 100-continue`.
fn expects_continue(buf: &[u8]) -> bool {
    let mut headers = header_slots();
    let mut parsed = httparse::Request::new(&mut []);
    match parsed.parse_with_uninit_headers(buf, &mut headers) {
        Ok(httparse::Status::Complete(_)) => parsed.headers.iter().any(|h| {
            h.name.eq_ignore_ascii_case("expect") && h.value.eq_ignore_ascii_case(b"100-continue")
        }),
        _ => false,
    }
}

async fn linger_close<T: Transport>(stream: &mut T) {
    let _ = stream.shutdown_write().await;
    let mut drained = 0usize;
    let mut buf = Vec::with_capacity(16 * 1024);
    let deadline = Instant::now() + LINGER_TIME;
    while drained < LINGER_BYTES_MAX {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        buf.clear();
        match timeout(left, stream.read_append(buf, 16 * 1024)).await {
            Ok((Ok(n), returned)) if n > 0 => {
                drained += n;
                buf = returned;
            }
            _ => return,
        }
    }
}

/// Appends the status line, standard headers, the response's headers and (unless HEAD) its body.
pub fn encode_response(
    out: &mut Vec<u8>,
    resp: &Response,
    head_only: bool,
    close: bool,
    http10: bool,
) {
    let mut status_buf = itoa::Buffer::new();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status_buf.format(resp.status).as_bytes());
    out.push(b' ');
    out.extend_from_slice(reason(resp.status).as_bytes());
    out.extend_from_slice(b"\r\nDate: ");
    date::write_now(out, clock::recent());
    out.extend_from_slice(b"\r\n");
    let bodiless = resp.status < 200 || resp.status == 204 || resp.status == 304;
    // A taken-over connection streams its own bytes after the head, delimited by close.
    if !bodiless && !resp.is_takeover() {
        let mut len_buf = itoa::Buffer::new();
        out.extend_from_slice(b"Content-Length: ");
        out.extend_from_slice(len_buf.format(resp.body.len()).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    } else if http10 {
        out.extend_from_slice(b"Connection: keep-alive\r\n");
    }
    out.extend_from_slice(&resp.headers);
    out.extend_from_slice(b"\r\n");
    if !head_only && !bodiless {
        out.extend_from_slice(&resp.body);
    }
}
