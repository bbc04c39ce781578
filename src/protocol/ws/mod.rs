//! WebSocket subscriptions on REST paths (docs/realtime.md), and the handshake MQTT over WebSocket
//! reuses.
//!
//! `GET /T/<id>`, `/T/` or `/T/<id>/` with `Upgrade: websocket` subscribes (through `pubsub`) to
//! the record, the table, or the record and its descendants, answers 101 and takes the
//! connection over: every event becomes one frame (JSON text, or CBOR/MessagePack binary by the
//! upgrade's `Accept`). Client data frames are ignored; pings are answered; the server pings every
//! 30 s and closes after 60 s without a pong. An upgrade asking for subprotocol `mqtt` is not ours
//! ([`wants_mqtt`]); the router hands it to MQTT. This module never touches storage except through
//! `pubsub` and `resource`.

pub mod frame;
pub mod transport;

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use tidepool_io::{race, timeout, AnyStream, Either, Shutdown};

use crate::auth::AuthError;
use crate::protocol::http::{Method, Request, Response, Upgraded};
use crate::pubsub::{Event, Filter, Format, Options, Overflow, Registry, Sink, Subscription};
use crate::resource::permissions::{self, ReadableAttributes};
use crate::resource::{Caller, Resources};

use frame::Opcode;

/// The server pings this often (docs/realtime.md).
pub const PING_INTERVAL: Duration = Duration::from_secs(30);
/// Without a pong (or any frame) for this long, the connection closes with 1011... (docs/realtime.md).
pub const PONG_TIMEOUT: Duration = Duration::from_secs(60);
/// Events written per batch, so one busy subscription yields to the others between writes.
const WRITE_BATCH_EVENTS_MAX: usize = 256;
/// After our close frame, how long we keep reading for the client's, so it sees our code.
const CLOSE_LINGER: Duration = Duration::from_secs(1);
const READ_SPARE_MIN: usize = 4096;

/// What the real-time interfaces need on one core.
pub struct Context {
    pub registry: Rc<Registry>,
    pub resources: Arc<Resources>,
    pub shutdown: Shutdown,
    /// `rest.webSocket`: off refuses REST WebSocket upgrades (the path is served as plain REST).
    pub web_socket: bool,
    /// `http.cors`: answer `Access-Control-Allow-Origin` on event streams.
    pub cors: bool,
    pub cors_access_list: Option<Vec<String>>,
}

/// Whether `req` asks to become a WebSocket.
pub fn is_upgrade(req: &Request<'_>) -> bool {
    req.method == Method::Get
        && req
            .header_str("upgrade")
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("websocket"))
}

/// Whether an upgrade asks for subprotocol `mqtt` (MQTT over WebSocket, docs/mqtt.md): the router
/// gives those to MQTT, on any path.
pub fn wants_mqtt(req: &Request<'_>) -> bool {
    req.header_str("sec-websocket-protocol")
        .is_some_and(|v| v.split(',').any(|p| p.trim().eq_ignore_ascii_case("mqtt")))
}

/// `Sec-WebSocket-Accept` for a client key (RFC 6455 §4.2.2).
pub fn accept_key(client_key: &[u8]) -> String {
    let mut sha = sha1_smol::Sha1::new();
    sha.update(client_key);
    sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(sha.digest().bytes())
}

/// Checks the upgrade headers and writes the 101 head (with `protocol` echoed when given) into
/// `resp`; on a bad handshake writes the error response and returns false. The caller then calls
/// `resp.take_over` to drive frames.
pub fn handshake(req: &Request<'_>, resp: &mut Response, protocol: Option<&str>) -> bool {
    let connection_upgrade = req.header_str("connection").is_some_and(|v| {
        v.split(',')
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
    });
    let Some(key) = req.header("sec-websocket-key").filter(|k| !k.is_empty()) else {
        resp.json_error(400, "WebSocket upgrade without Sec-WebSocket-Key");
        return false;
    };
    if !connection_upgrade {
        resp.json_error(400, "WebSocket upgrade without Connection: Upgrade");
        return false;
    }
    if req.header("sec-websocket-version") != Some(b"13") {
        resp.header("Sec-WebSocket-Version", "13");
        resp.json_error(426, "Only WebSocket version 13 is supported");
        return false;
    }
    resp.status = 101;
    resp.header("Upgrade", "websocket");
    resp.header("Connection", "Upgrade");
    resp.header("Sec-WebSocket-Accept", &accept_key(key));
    if let Some(p) = protocol {
        resp.header("Sec-WebSocket-Protocol", p);
    }
    true
}

/// A REST path and query as a subscription: the export, the filter, the options.
pub struct Target {
    pub export: String,
    pub filter: Filter,
    pub options: Options,
}

/// `/T/<id>` → record, `/T/` or `/T` → every record (`T/#`), `/T/<id>/` → the record and its
/// descendants. `None` when the path is not under an export. Errors are (status, message).
pub fn target(
    resources: &Resources,
    path: &str,
    query: Option<&str>,
) -> Result<Option<Target>, (u16, String)> {
    let path = path.strip_prefix('/').unwrap_or(path);
    let (export_raw, rest) = match path.split_once('/') {
        Some((e, r)) => (e, Some(r)),
        None => (path, None),
    };
    let Ok(export) = crate::util::percent_decode(export_raw) else {
        return Ok(None);
    };
    if resources.export(&export).is_none() {
        return Ok(None);
    }
    let decode =
        |raw: &str| crate::util::percent_decode(raw).map_err(|(_, why)| (400u16, why.to_string()));
    let filter = match rest {
        None | Some("") => Filter::below(&export, None),
        Some(r) => match r.strip_suffix('/') {
            Some(prefix) => Filter::below(&export, Some(&decode(prefix)?)),
            None => Filter::record(&export, &decode(r)?),
        },
    };
    Ok(Some(Target {
        export,
        filter,
        options: options(query)?,
    }))
}

/// `omitCurrent`, `startTime`, `previousCount` (docs/realtime.md); other parameters are ignored.
pub fn options(query: Option<&str>) -> Result<Options, (u16, String)> {
    let mut options = Options::default();
    for pair in query.unwrap_or_default().split('&') {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        match name {
            "omitCurrent" => options.omit_current = value != "false",
            "startTime" => {
                let t: f64 = value
                    .parse()
                    .ok()
                    .filter(|t: &f64| t.is_finite())
                    .ok_or((400, format!("startTime {value:?} is not a number of ms")))?;
                options.start_time = Some(t);
            }
            "previousCount" => {
                let n: usize = value
                    .parse()
                    .map_err(|_| (400, format!("previousCount {value:?} is not a count")))?;
                options.previous_count = Some(n);
            }
            _ => {}
        }
    }
    Ok(options)
}

/// Close code for an unauthenticated WebSocket (docs/security.md, docs/realtime.md).
pub const CLOSE_UNAUTHENTICATED: u16 = 3000;
/// Close code for an authenticated caller without `read` (docs/security.md, docs/realtime.md).
pub const CLOSE_FORBIDDEN: u16 = 3003;
/// Close code "try again later" (RFC 6455 registry): the password checks were all busy
/// (docs/security.md "Password checks").
pub const CLOSE_TRY_AGAIN_LATER: u16 = 1013;

/// Why a subscription is refused (docs/security.md); SSE answers it as 401/403, WebSocket upgrades and
/// then closes with 3000/3003.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    /// No, wrong or expired credentials, or an inactive user.
    Unauthenticated(AuthError),
    /// Authenticated, without `read` on the table.
    Forbidden,
}

impl Refusal {
    pub fn close_code(&self) -> u16 {
        match self {
            Refusal::Unauthenticated(AuthError::Busy) => CLOSE_TRY_AGAIN_LATER,
            Refusal::Unauthenticated(_) => CLOSE_UNAUTHENTICATED,
            Refusal::Forbidden => CLOSE_FORBIDDEN,
        }
    }

    pub fn message(&self) -> &str {
        match self {
            Refusal::Unauthenticated(e) => e.message(),
            Refusal::Forbidden => "Unauthorized access to resource",
        }
    }

    /// The plain HTTP answer (SSE, and anything refused before an upgrade).
    pub fn respond(&self, resp: &mut Response) {
        match self {
            Refusal::Unauthenticated(e) => crate::protocol::rest::unauthorized(resp, e),
            Refusal::Forbidden => resp.json_error(403, self.message()),
        }
    }
}

/// Whether `caller` may subscribe to `target` (docs/security.md: subscribing needs `read`), and the
/// attribute set its events are trimmed to (`None` = every attribute). Anonymous callers are
/// unauthenticated rather than forbidden, as on REST.
pub fn authorize(
    resources: &Resources,
    caller: Result<&Caller, &AuthError>,
    target: &Target,
) -> Result<Option<ReadableAttributes>, Refusal> {
    let caller = caller.map_err(|e| Refusal::Unauthenticated(e.clone()))?;
    let Some((_, table)) = resources.export(&target.export) else {
        return Ok(None); // `subscribe` answers 404
    };
    let (database, name) = (&table.def.database, &table.def.table);
    if !permissions::can_read(caller, database, name) {
        return Err(if caller.is_anonymous() {
            Refusal::Unauthenticated(AuthError::MustLogin)
        } else {
            Refusal::Forbidden
        });
    }
    Ok(permissions::readable_attributes(
        caller,
        database,
        name,
        table.def.primary_key.as_deref(),
    ))
}

/// Subscribes `sink` to the target's export through the registry; errors as (status, message).
pub fn subscribe(
    ctx: &Context,
    target: Target,
    sink: &Sink,
) -> Result<Subscription, (u16, String)> {
    let Some((db, table)) = ctx.resources.export(&target.export) else {
        return Err((404, format!("{} is not an exported table", target.export)));
    };
    ctx.registry
        .subscribe(sink, &db, &table, target.filter, &target.options)
        .map_err(|e| match e {
            crate::pubsub::SubscribeError::BadOptions(m) => (400, m.to_string()),
            other => (500, other.to_string()),
        })
}

/// Serves a REST WebSocket upgrade. Returns false when the path is not a subscription path (the
/// caller answers it, e.g. 404 without upgrading). `caller` is the request's authentication;
/// a refusal upgrades and then closes with 3000/3003 and the reason (docs/security.md), so browser
/// code can read why.
pub fn upgrade(
    ctx: &Context,
    req: &Request<'_>,
    resp: &mut Response,
    caller: Result<&Caller, &AuthError>,
) -> bool {
    let target = match target(&ctx.resources, req.path, req.query) {
        Ok(Some(t)) => t,
        Ok(None) => return false,
        Err((status, message)) => {
            resp.json_error(status, &message);
            return true;
        }
    };
    if !ctx.web_socket {
        resp.json_error(
            404,
            "WebSocket subscriptions are disabled (rest.webSocket: false)",
        );
        return true;
    }
    let readable = match authorize(&ctx.resources, caller, &target) {
        Ok(r) => r,
        Err(refusal) => {
            if handshake(req, resp, None) {
                resp.take_over(move |up| refuse(up, refusal));
            }
            return true;
        }
    };
    let format = Format::from_accept(req.header_str("accept"));
    let sink = Sink::restricted(
        format,
        Overflow::DropOldest,
        ctx.registry.counters().clone(),
        readable,
    );
    let subscription = match subscribe(ctx, target, &sink) {
        Ok(s) => s,
        Err((status, message)) => {
            resp.json_error(status, &message);
            return true;
        }
    };
    if handshake(req, resp, None) {
        let shutdown = ctx.shutdown.clone();
        resp.take_over(move |up| serve(up, sink, subscription, shutdown));
    }
    true
}

/// Closes a freshly upgraded connection with the refusal's code and reason.
async fn refuse(up: Upgraded, refusal: Refusal) {
    let Upgraded { mut stream, .. } = up;
    finish(
        &mut stream,
        Vec::new(),
        refusal.close_code(),
        refusal.message(),
    )
    .await;
}

enum Wake {
    Events,
    Shutdown,
    Read(std::io::Result<usize>, Vec<u8>),
    Timer,
}

/// What the buffered client frames asked for.
enum Client {
    Continue,
    Close(u16),
    Violation(u16),
}

/// Handles every complete frame in `rbuf`: pongs to pings into `wbuf`, and the first close or
/// protocol violation. Client data is checked (fragment order, UTF-8 text) and then ignored
/// (docs/realtime.md).
fn read_frames(
    rbuf: &mut Vec<u8>,
    wbuf: &mut Vec<u8>,
    heard: &mut Instant,
    messages: &mut frame::Messages,
) -> Client {
    loop {
        let (consumed, outcome) = match frame::decode(rbuf) {
            Ok(None) => return Client::Continue,
            Err(e) => return Client::Violation(e.close_code()),
            Ok(Some((f, n))) => {
                *heard = Instant::now();
                if let Err(e) = messages.check(&f) {
                    return Client::Violation(e.close_code());
                }
                let outcome = match f.opcode {
                    Opcode::Ping => {
                        frame::encode(Opcode::Pong, f.payload, wbuf);
                        None
                    }
                    // Echo the client's code (RFC 6455 §5.5.1), or refuse a bad close payload.
                    // The client has sent its close either way: no need to wait for another.
                    Opcode::Close => Some(Client::Close(match frame::close_code(f.payload) {
                        Ok(code) => code,
                        Err(e) => e.close_code(),
                    })),
                    _ => None,
                };
                (n, outcome)
            }
        };
        rbuf.drain(..consumed);
        if let Some(outcome) = outcome {
            return outcome;
        }
    }
}

/// Drives one subscription socket until the client leaves, a protocol error, or shutdown. The
/// subscription is dropped (unsubscribed) when this returns.
pub async fn serve(up: Upgraded, sink: Sink, subscription: Subscription, shutdown: Shutdown) {
    let _subscription = subscription;
    let Upgraded {
        mut stream,
        leftover: mut rbuf,
    } = up;
    let mut wbuf: Vec<u8> = Vec::with_capacity(16 * 1024);
    let mut batch = Vec::with_capacity(WRITE_BATCH_EVENTS_MAX);
    let mut read_buf: Vec<u8> = Vec::with_capacity(READ_SPARE_MIN);
    let mut heard = Instant::now();
    let mut pinged = Instant::now();
    let mut messages = frame::Messages::default();
    let opcode = match sink.format() {
        Format::Json => Opcode::Text,
        _ => Opcode::Binary,
    };
    loop {
        match read_frames(&mut rbuf, &mut wbuf, &mut heard, &mut messages) {
            Client::Continue => {}
            // Our answer to the client's close (its code echoed, or the code of what was wrong
            // with its close frame); then the TCP connection ends.
            Client::Close(code) => {
                frame::encode_close(code, &mut wbuf);
                let _ = stream.write_all(wbuf).await;
                let _ = stream.shutdown_write().await;
                return;
            }
            Client::Violation(code) => {
                finish(&mut stream, wbuf, code, "").await;
                return;
            }
        }
        if heard.elapsed() >= PONG_TIMEOUT {
            finish(&mut stream, wbuf, 1011, "").await;
            return;
        }
        if pinged.elapsed() >= PING_INTERVAL {
            frame::encode(Opcode::Ping, b"", &mut wbuf);
            pinged = Instant::now();
        }
        encode_events(&sink, &mut batch, opcode, &mut wbuf);
        if let Some(why) = sink.failure() {
            finish(&mut stream, wbuf, 1011, &why).await;
            return;
        }
        if !wbuf.is_empty() {
            // A stalled reader parks here; its sink keeps dropping the oldest events meanwhile.
            match race(stream.write_all(std::mem::take(&mut wbuf)), shutdown.wait()).await {
                Either::Left((Ok(()), returned)) => {
                    wbuf = returned;
                    wbuf.clear();
                    // A client whose socket keeps taking our frames is alive even if its pong
                    // was lost to a cancelled read (see the race below); a dead one stops
                    // taking them, and this write then waits instead.
                    heard = Instant::now();
                }
                Either::Left((Err(_), _)) => return,
                Either::Right(()) => return,
            }
            if !sink.is_empty() {
                continue;
            }
        }
        if shutdown.is_triggered() {
            finish(&mut stream, wbuf, 1001, "").await;
            return;
        }
        let until_ping = PING_INTERVAL.saturating_sub(pinged.elapsed());
        let (wake, returned) = wait(&mut stream, &sink, &shutdown, until_ping, read_buf).await;
        read_buf = returned;
        match wake {
            Wake::Events | Wake::Timer => {}
            Wake::Shutdown => {
                finish(&mut stream, wbuf, 1001, "").await;
                return;
            }
            Wake::Read(Ok(0), _) | Wake::Read(Err(_), _) => return,
            Wake::Read(Ok(_), returned) => {
                rbuf.extend_from_slice(&returned);
                read_buf = returned;
            }
        }
        if rbuf.len() > frame::PAYLOAD_BYTES_MAX + 16 {
            finish(&mut stream, wbuf, 1009, "").await;
            return;
        }
    }
}

/// Encodes the events the sink holds, up to a batch, as frames of `opcode`.
fn encode_events(sink: &Sink, batch: &mut Vec<Rc<Event>>, opcode: Opcode, wbuf: &mut Vec<u8>) {
    batch.clear();
    sink.pop_batch(batch, WRITE_BATCH_EVENTS_MAX);
    for event in batch.iter() {
        frame::encode(opcode, &sink.encoded(event), wbuf);
    }
    batch.clear();
}

/// Waits for events, shutdown, bytes from the client or the next ping, whichever comes first.
/// Returns the read buffer back when the read did not complete (`Wake::Read` carries it).
///
/// Known limit: when an event wins this race the pending read is cancelled; on io_uring a read
/// that completed in that instant loses its bytes. Clients send little here (pongs, close), and
/// a lost fragment shows as a protocol error (1002), not a wrong event. The read goes into a
/// separate buffer: a cancelled read takes its buffer with it, and the frame buffer may hold
/// the start of a frame.
async fn wait(
    stream: &mut AnyStream,
    sink: &Sink,
    shutdown: &Shutdown,
    until_ping: Duration,
    mut read_buf: Vec<u8>,
) -> (Wake, Vec<u8>) {
    read_buf.clear();
    let wake = race(
        race(sink.ready(), shutdown.wait()),
        timeout(
            until_ping,
            stream.read_append(std::mem::take(&mut read_buf), READ_SPARE_MIN),
        ),
    )
    .await;
    let wake = match wake {
        Either::Left(Either::Left(())) => Wake::Events,
        Either::Left(Either::Right(())) => Wake::Shutdown,
        Either::Right(Ok((result, returned))) => Wake::Read(result, returned),
        Either::Right(Err(_)) => Wake::Timer,
    };
    (wake, read_buf)
}

/// A close frame's payload: the code, then the reason cut to fit on a character boundary.
fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut payload = code.to_be_bytes().to_vec();
    let mut end = reason.len().min(CLOSE_REASON_BYTES_MAX);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    payload
}

/// Close reasons are cut to this many bytes (a control frame holds 125, 2 of them the code).
const CLOSE_REASON_BYTES_MAX: usize = 123;

/// Sends a close frame with `code` and `reason` (after what is in `wbuf`), then reads until the
/// client's close frame, its end of stream or `CLOSE_LINGER`, so the client sees our code
/// rather than an abrupt end (1006); then the server closes the TCP connection first
/// (RFC 6455 §7.1.1). What the client sent meanwhile is discarded.
async fn finish(stream: &mut AnyStream, mut wbuf: Vec<u8>, code: u16, reason: &str) {
    frame::encode(Opcode::Close, &close_payload(code, reason), &mut wbuf);
    let _ = timeout(CLOSE_LINGER, stream.write_all(wbuf)).await;
    let deadline = Instant::now() + CLOSE_LINGER;
    let mut buf = Vec::with_capacity(READ_SPARE_MIN);
    'linger: loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match timeout(left, stream.read_append(buf, READ_SPARE_MIN)).await {
            Ok((Ok(n), returned)) if n > 0 => buf = returned,
            _ => break,
        }
        // Skip whole frames up to the client's close; anything unreadable ends the wait too.
        loop {
            let used = match frame::decode(&mut buf) {
                Ok(Some((f, _))) if f.opcode == Opcode::Close => break 'linger,
                Ok(Some((_, used))) => used,
                Ok(None) => break,
                Err(_) => break 'linger,
            };
            buf.drain(..used);
        }
        if buf.len() > frame::PAYLOAD_BYTES_MAX + 16 {
            break;
        }
    }
    let _ = stream.shutdown_write().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_matches_rfc_6455_example() {
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn close_payloads_fit_a_control_frame() {
        let check = |code: u16, reason: &str, expected: &[u8]| {
            assert_eq!(close_payload(code, reason), expected, "{reason:?}");
        };
        check(3000, "Must login", b"\x0b\xb8Must login");
        let busy = Refusal::Unauthenticated(AuthError::Busy);
        assert_eq!(busy.close_code(), CLOSE_TRY_AGAIN_LATER);
        check(1000, "", b"\x03\xe8");
        let long = "é".repeat(100); // 200 bytes; byte 123 is inside a character
        let payload = close_payload(3003, &long);
        assert_eq!(payload.len(), 2 + 122);
        assert!(std::str::from_utf8(&payload[2..]).is_ok());
    }

    fn check(query: Option<&str>, expected: Result<Options, u16>) {
        assert_eq!(options(query).map_err(|e| e.0), expected, "query {query:?}");
    }

    #[test]
    fn query_options() {
        check(None, Ok(Options::default()));
        check(
            Some("omitCurrent=true&x=1"),
            Ok(Options {
                omit_current: true,
                ..Options::default()
            }),
        );
        check(
            Some("startTime=1718000000000&previousCount=5"),
            Ok(Options {
                start_time: Some(1718000000000.0),
                previous_count: Some(5),
                ..Options::default()
            }),
        );
        check(Some("startTime=soon"), Err(400));
        check(Some("previousCount=-1"), Err(400));
    }
}
