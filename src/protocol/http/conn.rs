//! One HTTP/1.1 connection: read, answer every complete request in order, write once per batch.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tidepool_io::{race, timeout, Either, InFlight, InFlightGuard, Shutdown, Transport};

use super::parse::{frame, BodyLocation, Frame, Head, ParseError, HEADER_SLOTS};
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
/// Capacity of a connection's read and write buffers when it starts or is given back.
const BUFFER_BYTES: usize = 8192;

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
    let mut rbuf: Vec<u8> = Vec::with_capacity(BUFFER_BYTES);
    let mut wbuf: Vec<u8> = Vec::with_capacity(BUFFER_BYTES);
    let mut body_buf: Vec<u8> = Vec::new();
    let mut resp = Response::new();
    let mut start = 0usize;
    let mut request_started: Option<Instant> = None;
    let mut continue_sent = false;
    let mut guards: Vec<InFlightGuard> = Vec::new();
    let mut held = Share::new(&gauges.buffer_bytes);
    let mut body_share = Share::new(&gauges.body_bytes_in_flight);
    // The request at `start` had its head judged (`check_head`) while its body was still coming.
    let mut head_checked = false;
    let mut checked: Option<S::Head> = None;

    loop {
        let mut phase = Phase::Idle;
        let mut close = false;
        let mut fatal: Option<ParseError> = None;
        // `resp` holds an answer given from the head alone: send it and close unread.
        let mut refused = false;
        while start < rbuf.len() {
            let mut headers = [httparse::EMPTY_HEADER; HEADER_SLOTS];
            let framed = match frame(&rbuf[start..], &mut headers, limits, &mut body_buf) {
                Ok(Frame::Complete(framed)) => framed,
                Ok(Frame::NeedHead) => {
                    request_started.get_or_insert_with(Instant::now);
                    phase = Phase::Head;
                    break;
                }
                Ok(Frame::NeedBody { missing, head }) => {
                    request_started.get_or_insert_with(Instant::now);
                    if guards.is_empty() {
                        guards.push(in_flight.enter());
                    }
                    phase = Phase::Body;
                    // Who asks, for what, is known now: a request that will be refused is
                    // answered before a byte of its body is read (README, "Limits").
                    if !head_checked {
                        head_checked = true;
                        resp.reset();
                        let request = head_request(&head, peer, stream.peer_cn());
                        match service.check_head(&request, &mut resp) {
                            Ok(h) => checked = Some(h),
                            Err(super::Refused) => {
                                refused = true;
                                break;
                            }
                        }
                    }
                    let buffered = rbuf.len() - start;
                    let charge = body_charge(buffered, missing);
                    if !body_share.try_set(charge, limits.body_bytes_in_flight_max) {
                        resp.reset();
                        resp.json_error(
                            503,
                            "Too many request bodies in flight on this core \
                             (http.maxBodyBytesInFlightPerCore); retry later",
                        );
                        resp.header("Retry-After", "1");
                        refused = true;
                        break;
                    }
                    // Make room for the whole body now: one allocation instead of many.
                    if let Some(missing) = missing {
                        if rbuf.capacity() - rbuf.len() < missing {
                            rbuf.reserve(missing);
                        }
                    }
                    break;
                }
                Err(e) => {
                    fatal = Some(e);
                    break;
                }
            };
            guards.push(in_flight.enter());
            let body: &[u8] = match framed.body {
                BodyLocation::Inline { start: from, end } => &rbuf[start + from..start + end],
                BodyLocation::Decoded => &body_buf,
            };
            let version_minor = framed.head.version_minor;
            let total = framed.consumed;
            let request = Request {
                body,
                ..head_request(&framed.head, peer, stream.peer_cn())
            };
            let wants_close = match request.header("connection") {
                Some(v) if v.eq_ignore_ascii_case(b"close") => true,
                Some(v) if v.eq_ignore_ascii_case(b"keep-alive") => false,
                _ => version_minor == 0,
            };
            resp.reset();
            head_checked = false;
            service.call(&request, &mut resp, checked.take()).await;
            if resp.is_takeover() {
                // The head is encoded while the response still says it is a takeover (no length).
                encode_response(&mut wbuf, &resp, true, false, false);
                let leftover = rbuf[start + total..].to_vec();
                let Some(takeover) = resp.take_takeover() else {
                    return;
                };
                let mut stream: tidepool_io::AnyStream = stream.into();
                let (result, _) = stream.write_all(std::mem::take(&mut wbuf)).await;
                // The handler runs for as long as the stream lasts; it is not a request in flight,
                // and this connection's buffers are not its to hold.
                drop(guards);
                drop(std::mem::take(&mut rbuf));
                drop(std::mem::take(&mut body_buf));
                held.set(0);
                body_share.set(0);
                if result.is_ok() {
                    (takeover.0)(super::Upgraded { stream, leftover }).await;
                }
                return;
            }
            close = wants_close || resp.close || shutdown.is_triggered();
            encode_response(
                &mut wbuf,
                &resp,
                request.method == Method::Head,
                close,
                version_minor == 0,
            );
            start += total;
            request_started = None;
            continue_sent = false;
            if close {
                break;
            }
        }

        if fatal.is_some() || refused {
            if let Some(error) = fatal {
                resp.reset();
                resp.json_error(error.status(), error.message());
            }
            if refused {
                gauges.refused_before_body.fetch_add(1, Ordering::Relaxed);
            }
            encode_response(&mut wbuf, &resp, false, true, false);
            let (_, returned) = stream.write_all(std::mem::take(&mut wbuf)).await;
            drop(returned);
            linger_close(&mut stream).await;
            return;
        }

        if start == rbuf.len() {
            rbuf.clear();
            start = 0;
        } else if start > 0 && (close || phase != Phase::Body || start > rbuf.len() / 2) {
            rbuf.drain(..start);
            start = 0;
        }

        if phase == Phase::Body && !continue_sent && !close {
            if expects_continue(&rbuf[start..]) {
                wbuf.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
            }
            continue_sent = true;
        }

        if !wbuf.is_empty() {
            let (result, returned) = stream.write_all(std::mem::take(&mut wbuf)).await;
            wbuf = returned;
            wbuf.clear();
            if result.is_err() {
                return;
            }
        }
        // Every answered request is now on the wire; a request still being read keeps its guard.
        if phase == Phase::Idle {
            guards.clear();
        } else if guards.len() > 1 {
            guards.truncate(1);
        }
        if phase != Phase::Body {
            body_share.set(0);
        }
        if phase == Phase::Idle {
            // A big body or response leaves big buffers behind: an idle connection gives them back.
            if rbuf.capacity() > IDLE_BUFFER_BYTES_MAX && rbuf.len() <= BUFFER_BYTES {
                let mut smaller = Vec::with_capacity(BUFFER_BYTES);
                smaller.extend_from_slice(&rbuf);
                rbuf = smaller;
            }
            if wbuf.capacity() > IDLE_BUFFER_BYTES_MAX {
                wbuf = Vec::with_capacity(BUFFER_BYTES);
            }
            if body_buf.capacity() > IDLE_BUFFER_BYTES_MAX {
                drop(std::mem::take(&mut body_buf));
            }
        }
        held.set((rbuf.capacity() + wbuf.capacity() + body_buf.capacity()) as u64);
        if close {
            let _ = stream.shutdown_write().await;
            return;
        }

        let (deadline, on_expiry) = match phase {
            Phase::Idle => (limits.keep_alive_timeout, None),
            Phase::Head => (
                remaining(request_started, limits.headers_timeout),
                Some(408),
            ),
            Phase::Body => (
                remaining(request_started, limits.request_timeout),
                Some(408),
            ),
        };
        let read = async {
            if phase == Phase::Idle {
                match race(
                    stream.read_append(std::mem::take(&mut rbuf), READ_SPARE_MIN),
                    shutdown.wait(),
                )
                .await
                {
                    Either::Left(out) => Some(out),
                    Either::Right(()) => None,
                }
            } else {
                Some(
                    stream
                        .read_append(std::mem::take(&mut rbuf), READ_SPARE_MIN)
                        .await,
                )
            }
        };
        match timeout(deadline, read).await {
            Ok(Some((Ok(n), returned))) => {
                rbuf = returned;
                if n == 0 {
                    return;
                }
            }
            Ok(Some((Err(_), _))) => return,
            // Shutdown while idle: nothing in flight here, just close.
            Ok(None) => return,
            Err(_) => {
                if let Some(status) = on_expiry {
                    resp.reset();
                    resp.json_error(
                        status,
                        "Request timed out (http.headersTimeout / http.timeout)",
                    );
                    encode_response(&mut wbuf, &resp, false, true, false);
                    let _ = stream.write_all(std::mem::take(&mut wbuf)).await;
                    let _ = stream.shutdown_write().await;
                }
                return;
            }
        }
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
    let mut headers = [httparse::EMPTY_HEADER; HEADER_SLOTS];
    let mut parsed = httparse::Request::new(&mut headers);
    match parsed.parse(buf) {
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
    date::write_now(out);
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
