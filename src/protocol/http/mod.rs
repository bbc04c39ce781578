//! HTTP/1.1: framing, limits, keep-alive and pipelining, and the response encoder.
//!
//! A connection reads into one reused buffer, answers every complete request in it in order and
//! writes the answers with one write per batch. Requests are handed to a [`Service`] as borrowed
//! views into that buffer, so the steady state allocates nothing per request. This module never
//! touches tables or storage; it only turns bytes into [`Request`]s and [`Response`]s into bytes.

mod conn;
mod date;
mod idle;
pub mod parse;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

pub use conn::{encode_response, serve, ConnGauges};
pub use parse::ParseError;

/// Named bounds on what a client may send; each says what happens when reached.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Bytes of request line plus headers → 431.
    pub header_bytes_max: usize,
    /// Header lines → 431.
    pub header_count_max: usize,
    /// Decoded body bytes → 413.
    pub body_bytes_max: u64,
    /// An idle keep-alive connection is closed after this long.
    pub keep_alive_timeout: Duration,
    /// A request head must arrive within this long of its first byte → 408.
    pub headers_timeout: Duration,
    /// A whole request (head and body) must arrive within this long → 408.
    pub request_timeout: Duration,
    /// Bytes of request bodies being read or held at once on one core
    /// (`http.maxBodyBytesInFlightPerCore`): a body that would pass it while others are in
    /// flight is answered 503 from its head (README, "Limits").
    pub body_bytes_in_flight_max: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_bytes_max: 16394,
            header_count_max: 100,
            body_bytes_max: 1 << 30,
            keep_alive_timeout: Duration::from_secs(30),
            headers_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(120),
            body_bytes_in_flight_max: 256 << 20,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Patch,
    Delete,
    Options,
    Other,
}

impl Method {
    fn parse(s: &str) -> Method {
        match s {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "PATCH" => Method::Patch,
            "DELETE" => Method::Delete,
            "OPTIONS" => Method::Options,
            _ => Method::Other,
        }
    }

    /// The method's name (`OTHER` for any method not listed here).
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
            Method::Options => "OPTIONS",
            Method::Other => "OTHER",
        }
    }
}

/// One request, borrowed from the connection's buffer for the duration of the service call.
pub struct Request<'a> {
    pub method: Method,
    pub method_raw: &'a str,
    /// The raw request target, `/path?query`, not percent-decoded.
    pub target: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a [httparse::Header<'a>],
    pub body: &'a [u8],
    pub peer: SocketAddr,
    /// Subject CN of the client's verified TLS certificate (mTLS), for the auth layer to map to
    /// a user.
    pub peer_cn: Option<&'a str>,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version_minor: u8,
}

impl<'a> Request<'a> {
    /// The first header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&'a [u8]> {
        self.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    }

    pub fn header_str(&self, name: &str) -> Option<&'a str> {
        self.header(name).and_then(|v| std::str::from_utf8(v).ok())
    }
}

/// The connection after a takeover response's head: the socket, and any bytes the client sent
/// after the request (already read into the HTTP buffer).
pub struct Upgraded {
    /// Plain or TLS, whichever the port speaks.
    pub stream: tidepool_io::AnyStream,
    pub leftover: Vec<u8>,
}

type TakeoverFn = Box<dyn FnOnce(Upgraded) -> Pin<Box<dyn Future<Output = ()>>>>;

/// Who gets the connection after the response head (WebSocket after 101, an SSE stream after 200,
/// MQTT over WebSocket).
pub struct Takeover(TakeoverFn);

impl std::fmt::Debug for Takeover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Takeover")
    }
}

/// A response being built. Reused across requests on a connection: [`Response::reset`] keeps the
/// buffers' capacity.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    /// Extra header lines, each `Name: value\r\n`.
    headers: Vec<u8>,
    pub body: Vec<u8>,
    /// Close the connection after this response.
    pub close: bool,
    /// Set by [`Response::take_over`]; `None` on every ordinary request (no allocation).
    takeover: Option<Takeover>,
    /// What the request was, for analytics' `path` (the Operations API sets its operation's
    /// name; docs/operations-api.md "Analytics").
    pub label: Option<&'static str>,
}

impl Default for Response {
    fn default() -> Self {
        Self::new()
    }
}

impl Response {
    pub fn new() -> Self {
        Self {
            status: 200,
            headers: Vec::with_capacity(256),
            body: Vec::with_capacity(1024),
            close: false,
            takeover: None,
            label: None,
        }
    }

    /// Takes out the header and body buffers (cleared), leaving both empty with no capacity:
    /// an idle connection hands them to its core's spares (`conn.rs`).
    pub(super) fn take_buffers(&mut self) -> [Vec<u8>; 2] {
        self.reset();
        [
            std::mem::take(&mut self.headers),
            std::mem::take(&mut self.body),
        ]
    }

    /// Gives the response a pair of (empty) buffers back, as [`Response::take_buffers`] took them.
    pub(super) fn put_buffers(&mut self, [mut headers, mut body]: [Vec<u8>; 2]) {
        headers.clear();
        body.clear();
        self.headers = headers;
        self.body = body;
    }

    /// Bytes of capacity the response's buffers hold.
    pub(super) fn capacity(&self) -> usize {
        self.headers.capacity() + self.body.capacity()
    }

    pub fn reset(&mut self) {
        self.status = 200;
        self.headers.clear();
        self.body.clear();
        self.close = false;
        self.takeover = None;
        self.label = None;
    }

    /// Hands the connection to `handler` once this response's head is written: no
    /// `Content-Length` is sent and the body is ignored (the handler streams its own bytes), later
    /// pipelined requests are not read as HTTP, and the connection ends when `handler` returns.
    pub fn take_over<F, Fut>(&mut self, handler: F)
    where
        F: FnOnce(Upgraded) -> Fut + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        self.takeover = Some(Takeover(Box::new(move |up| Box::pin(handler(up)))));
    }

    pub fn is_takeover(&self) -> bool {
        self.takeover.is_some()
    }

    pub(crate) fn take_takeover(&mut self) -> Option<Takeover> {
        self.takeover.take()
    }

    pub fn header(&mut self, name: &str, value: &str) -> &mut Self {
        self.header_bytes(name, value.as_bytes())
    }

    pub fn header_bytes(&mut self, name: &str, value: &[u8]) -> &mut Self {
        // Header injection guard: a value can never end the line it is on.
        debug_assert!(!value.iter().any(|&b| b == b'\r' || b == b'\n'));
        self.headers.extend_from_slice(name.as_bytes());
        self.headers.extend_from_slice(b": ");
        self.headers.extend(
            value
                .iter()
                .map(|&b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
        );
        self.headers.extend_from_slice(b"\r\n");
        self
    }

    pub fn has_header(&self, name: &str) -> bool {
        self.headers.split(|&b| b == b'\n').any(|line| {
            line.len() > name.len()
                && line[..name.len()].eq_ignore_ascii_case(name.as_bytes())
                && line[name.len()] == b':'
        })
    }

    /// A plain-text body with a status.
    pub fn text(&mut self, status: u16, text: &str) {
        self.status = status;
        self.header("Content-Type", "text/plain; charset=utf-8");
        self.body.clear();
        self.body.extend_from_slice(text.as_bytes());
    }

    /// `{"error": message}` as JSON, the error shape of every HTTP interface.
    pub fn json_error(&mut self, status: u16, message: &str) {
        self.status = status;
        self.header("Content-Type", "application/json");
        self.body.clear();
        self.body.extend_from_slice(b"{\"error\":");
        write_json_string(&mut self.body, message);
        self.body.push(b'}');
    }
}

/// Appends `s` as a JSON string literal.
pub fn write_json_string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    for &b in s.as_bytes() {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0..=0x1f => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.push(HEX[(b >> 4) as usize]);
                out.push(HEX[(b & 15) as usize]);
            }
            _ => out.push(b),
        }
    }
    out.push(b'"');
}

pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        206 => "Partial Content",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        416 => "Range Not Satisfiable",
        422 => "Unprocessable Content",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

/// A request answered from its head: the response is ready, the body is not to be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused;

/// Answers requests. One instance per core; calls on one connection never overlap.
#[allow(async_fn_in_trait)]
pub trait Service {
    /// What [`Service::check_head`] learnt about a request (who sent it), handed to `call`.
    type Head;

    /// Judges a request from its head alone, before its body is read (`req.body` is empty).
    /// `Err(Refused)` refuses it: `resp` holds the answer, sent without reading the body. Only
    /// called for requests whose body had not fully arrived with the head.
    /// May await (a password check on the password pool), never block.
    async fn check_head(
        &self,
        req: &Request<'_>,
        resp: &mut Response,
    ) -> Result<Self::Head, Refused>;

    /// Answers a complete request; `head` is what `check_head` returned for it, if it was called.
    async fn call(&self, req: &Request<'_>, resp: &mut Response, head: Option<Self::Head>);
}
