//! HTTP/1.1 message framing for the load generator and the baseline responder.
//!
//! It owns finding where each message ends: the head through httparse, then the body by
//! `Content-Length`, chunked transfer coding, or (responses only) the end of the connection. Bodies
//! are skipped as they arrive and never kept, so a connection's read buffer holds at most one head
//! and the bytes after it. It never does I/O and never allocates: callers hand it the bytes they
//! have, it says how many it used and which messages completed, and the caller keeps the rest for
//! the next read. Every size it accepts is bounded by a named constant below.

use std::fmt;
use std::ops::ControlFlow;

/// Largest message head (start line and headers) accepted. A longer head is an error rather than
/// a reason to grow the connection's buffer without bound.
pub const HEAD_BYTES_MAX: usize = 64 * 1024;
/// Most header fields in one head; httparse reports more as `TooManyHeaders`.
pub const HEADER_COUNT_MAX: usize = 64;
/// Longest chunk-size line (size, extensions, line end) or trailer line.
pub const CHUNK_LINE_BYTES_MAX: usize = 4 * 1024;
/// Most trailer fields after the last chunk.
pub const TRAILER_COUNT_MAX: usize = 64;
/// Most hexadecimal digits in a chunk size: 15 keeps the value below 2^60, so it cannot overflow.
const CHUNK_SIZE_DIGITS_MAX: usize = 15;

/// Why a byte stream is not a valid sequence of HTTP/1.1 messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    /// httparse rejected the head (includes more than [`HEADER_COUNT_MAX`] fields).
    Head(httparse::Error),
    /// The head is longer than [`HEAD_BYTES_MAX`].
    HeadTooLarge,
    /// `Content-Length` is not a decimal number, or two of them disagree.
    InvalidContentLength,
    /// A chunk-size line is not hexadecimal or has more than 15 digits.
    InvalidChunkSize,
    /// A chunk-size or trailer line is longer than [`CHUNK_LINE_BYTES_MAX`].
    ChunkLineTooLong,
    /// Chunk data is not followed by a line end.
    MissingChunkLineEnd,
    /// More than [`TRAILER_COUNT_MAX`] trailer fields.
    TooManyTrailers,
    /// `101 Switching Protocols`: the connection stops being HTTP, which a load run cannot follow.
    SwitchingProtocols,
    /// A request with a transfer coding other than chunked last: its body has no end.
    UnframedRequestBody,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::Head(e) => write!(f, "invalid message head: {e}"),
            ParseError::HeadTooLarge => write!(f, "message head over {HEAD_BYTES_MAX} bytes"),
            ParseError::InvalidContentLength => f.write_str("invalid Content-Length"),
            ParseError::InvalidChunkSize => f.write_str("invalid chunk size"),
            ParseError::ChunkLineTooLong => {
                write!(f, "chunk or trailer line over {CHUNK_LINE_BYTES_MAX} bytes")
            }
            ParseError::MissingChunkLineEnd => f.write_str("chunk data not followed by CRLF"),
            ParseError::TooManyTrailers => write!(f, "more than {TRAILER_COUNT_MAX} trailers"),
            ParseError::SwitchingProtocols => f.write_str("unexpected 101 Switching Protocols"),
            ParseError::UnframedRequestBody => {
                f.write_str("request transfer coding does not end in chunked")
            }
        }
    }
}

impl std::error::Error for ParseError {}

/// How a message body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Empty,
    Length(u64),
    Chunked,
    /// Only responses: the body runs until the server closes the connection.
    UntilClose,
}

/// Skips one body, whatever its framing, across as many reads as it takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Body {
    Fixed { remaining: u64 },
    ChunkSize,
    ChunkData { remaining: u64 },
    ChunkDataEnd,
    Trailers { count: usize },
    UntilClose,
}

enum BodyProgress {
    /// The body ended after this many bytes of the input.
    Done(usize),
    /// All this many bytes were body (or an incomplete line kept for later); more is needed.
    More(usize),
}

impl Body {
    fn new(framing: Framing) -> Option<Body> {
        match framing {
            Framing::Empty | Framing::Length(0) => None,
            Framing::Length(remaining) => Some(Body::Fixed { remaining }),
            Framing::Chunked => Some(Body::ChunkSize),
            Framing::UntilClose => Some(Body::UntilClose),
        }
    }

    fn advance(&mut self, input: &[u8]) -> Result<BodyProgress, ParseError> {
        let mut used = 0;
        loop {
            let rest = input.get(used..).unwrap_or_default();
            match *self {
                Body::Fixed { remaining } => {
                    let take = remaining.min(rest.len() as u64);
                    used += take as usize;
                    if take == remaining {
                        return Ok(BodyProgress::Done(used));
                    }
                    *self = Body::Fixed {
                        remaining: remaining - take,
                    };
                    return Ok(BodyProgress::More(used));
                }
                Body::ChunkData { remaining } => {
                    let take = remaining.min(rest.len() as u64);
                    used += take as usize;
                    if take < remaining {
                        *self = Body::ChunkData {
                            remaining: remaining - take,
                        };
                        return Ok(BodyProgress::More(used));
                    }
                    *self = Body::ChunkDataEnd;
                }
                Body::ChunkSize => {
                    let Some((line, line_len)) = split_line(rest)? else {
                        return Ok(BodyProgress::More(used));
                    };
                    used += line_len;
                    let size = parse_chunk_size(line)?;
                    *self = if size == 0 {
                        Body::Trailers { count: 0 }
                    } else {
                        Body::ChunkData { remaining: size }
                    };
                }
                Body::ChunkDataEnd => match rest {
                    [b'\r', b'\n', ..] => {
                        used += 2;
                        *self = Body::ChunkSize;
                    }
                    // Tolerate a bare LF, as most servers' readers do.
                    [b'\n', ..] => {
                        used += 1;
                        *self = Body::ChunkSize;
                    }
                    [] | [b'\r'] => return Ok(BodyProgress::More(used)),
                    _ => return Err(ParseError::MissingChunkLineEnd),
                },
                Body::Trailers { count } => {
                    let Some((line, line_len)) = split_line(rest)? else {
                        return Ok(BodyProgress::More(used));
                    };
                    used += line_len;
                    if line.is_empty() {
                        return Ok(BodyProgress::Done(used));
                    }
                    if count >= TRAILER_COUNT_MAX {
                        return Err(ParseError::TooManyTrailers);
                    }
                    *self = Body::Trailers { count: count + 1 };
                }
                Body::UntilClose => return Ok(BodyProgress::More(input.len())),
            }
        }
    }
}

/// The first line of `input` without its line end, and the line's length with it; `None` when no
/// line end has arrived yet.
fn split_line(input: &[u8]) -> Result<Option<(&[u8], usize)>, ParseError> {
    let window = &input[..input.len().min(CHUNK_LINE_BYTES_MAX)];
    match window.iter().position(|&b| b == b'\n') {
        Some(lf) => {
            let line = &window[..lf];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            Ok(Some((line, lf + 1)))
        }
        None if input.len() >= CHUNK_LINE_BYTES_MAX => Err(ParseError::ChunkLineTooLong),
        None => Ok(None),
    }
}

fn parse_chunk_size(line: &[u8]) -> Result<u64, ParseError> {
    // Extensions (`;name=value`) and whitespace after the size are allowed and ignored.
    let digits_len = line
        .iter()
        .position(|b| !b.is_ascii_hexdigit())
        .unwrap_or(line.len());
    let after = &line[digits_len..];
    if digits_len == 0
        || digits_len > CHUNK_SIZE_DIGITS_MAX
        || !(after.is_empty() || after[0] == b';' || after[0] == b' ' || after[0] == b'\t')
    {
        return Err(ParseError::InvalidChunkSize);
    }
    let mut size = 0u64;
    for &digit in &line[..digits_len] {
        let value = match digit {
            b'0'..=b'9' => digit - b'0',
            b'a'..=b'f' => digit - b'a' + 10,
            _ => digit - b'A' + 10,
        };
        size = size * 16 + u64::from(value);
    }
    Ok(size)
}

fn parse_content_length(value: &[u8]) -> Result<u64, ParseError> {
    let value = value.trim_ascii();
    // 19 digits always fit in a u64.
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return Err(ParseError::InvalidContentLength);
    }
    Ok(value
        .iter()
        .fold(0u64, |n, &d| n * 10 + u64::from(d - b'0')))
}

/// Whether a comma-separated header value lists `token` (case-insensitive).
fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|item| item.trim_ascii().eq_ignore_ascii_case(token))
}

/// What the framing headers of one head say.
struct HeadFields {
    content_length: Option<u64>,
    chunked: bool,
    transfer_encoding: bool,
    close: bool,
    keep_alive: bool,
}

fn head_fields(headers: &[httparse::Header<'_>]) -> Result<HeadFields, ParseError> {
    let mut fields = HeadFields {
        content_length: None,
        chunked: false,
        transfer_encoding: false,
        close: false,
        keep_alive: false,
    };
    for header in headers {
        if header.name.eq_ignore_ascii_case("content-length") {
            let length = parse_content_length(header.value)?;
            if fields.content_length.is_some_and(|seen| seen != length) {
                return Err(ParseError::InvalidContentLength);
            }
            fields.content_length = Some(length);
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            fields.transfer_encoding = true;
            // Only the last coding decides the framing: chunked must be last to delimit the body.
            let last = header
                .value
                .rsplit(|&b| b == b',')
                .next()
                .unwrap_or_default();
            fields.chunked = last.trim_ascii().eq_ignore_ascii_case(b"chunked");
        } else if header.name.eq_ignore_ascii_case("connection") {
            fields.close |= has_token(header.value, b"close");
            fields.keep_alive |= has_token(header.value, b"keep-alive");
        }
    }
    Ok(fields)
}

/// One complete response: its status, and whether the connection ends after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub close: bool,
}

#[derive(Debug)]
enum ResponseState {
    Head,
    Body { body: Body, response: Response },
}

/// Splits the bytes a server sends into responses, across reads, for one connection.
#[derive(Debug)]
pub struct ResponseParser {
    /// Answers to HEAD carry no body whatever their headers say.
    head_request: bool,
    state: ResponseState,
}

impl ResponseParser {
    pub fn new(head_request: bool) -> Self {
        Self {
            head_request,
            state: ResponseState::Head,
        }
    }

    /// Forgets a partly read response, for a fresh connection.
    pub fn reset(&mut self) {
        self.state = ResponseState::Head;
    }

    /// Reads every complete response at the start of `input`, calling `each` in order until it
    /// breaks. Returns how many bytes were used; the caller keeps the rest and calls again with
    /// more bytes appended.
    pub fn parse_all(
        &mut self,
        input: &[u8],
        mut each: impl FnMut(Response) -> ControlFlow<()>,
    ) -> Result<usize, ParseError> {
        let mut used = 0;
        loop {
            let rest = input.get(used..).unwrap_or_default();
            let (step, response) = self.advance(rest)?;
            used += step;
            match response {
                Some(response) => {
                    if each(response).is_break() {
                        return Ok(used);
                    }
                }
                None => return Ok(used),
            }
        }
    }

    /// The connection ended: completes a response whose body runs until the close.
    pub fn finish(&mut self) -> Option<Response> {
        match std::mem::replace(&mut self.state, ResponseState::Head) {
            ResponseState::Body {
                body: Body::UntilClose,
                response,
            } => Some(response),
            _ => None,
        }
    }

    /// Reads at most one response; `(used, None)` means more input is needed.
    fn advance(&mut self, input: &[u8]) -> Result<(usize, Option<Response>), ParseError> {
        let mut used = 0;
        loop {
            match &mut self.state {
                ResponseState::Head => {
                    let rest = input.get(used..).unwrap_or_default();
                    let mut headers = [httparse::EMPTY_HEADER; HEADER_COUNT_MAX];
                    let mut head = httparse::Response::new(&mut headers);
                    let head_len = match head.parse(rest) {
                        Ok(httparse::Status::Complete(len)) if len <= HEAD_BYTES_MAX => len,
                        Ok(httparse::Status::Complete(_)) => return Err(ParseError::HeadTooLarge),
                        Ok(httparse::Status::Partial) if rest.len() >= HEAD_BYTES_MAX => {
                            return Err(ParseError::HeadTooLarge)
                        }
                        Ok(httparse::Status::Partial) => return Ok((used, None)),
                        Err(e) => return Err(ParseError::Head(e)),
                    };
                    used += head_len;
                    let status = head.code.unwrap_or_default();
                    let fields = head_fields(head.headers)?;
                    if status == 101 {
                        return Err(ParseError::SwitchingProtocols);
                    }
                    if (100..200).contains(&status) {
                        // An interim answer (100 Continue, 103 Early Hints): the real one follows.
                        continue;
                    }
                    let http10 = head.version == Some(0);
                    let framing = if self.head_request || status == 204 || status == 304 {
                        Framing::Empty
                    } else if fields.transfer_encoding && fields.chunked {
                        Framing::Chunked
                    } else if fields.transfer_encoding {
                        Framing::UntilClose
                    } else if let Some(length) = fields.content_length {
                        Framing::Length(length)
                    } else {
                        Framing::UntilClose
                    };
                    let close = fields.close
                        || (http10 && !fields.keep_alive)
                        || framing == Framing::UntilClose;
                    let response = Response { status, close };
                    match Body::new(framing) {
                        None => return Ok((used, Some(response))),
                        Some(body) => self.state = ResponseState::Body { body, response },
                    }
                }
                ResponseState::Body { body, response } => {
                    let response = *response;
                    let rest = input.get(used..).unwrap_or_default();
                    return match body.advance(rest)? {
                        BodyProgress::Done(step) => {
                            self.state = ResponseState::Head;
                            Ok((used + step, Some(response)))
                        }
                        BodyProgress::More(step) => Ok((used + step, None)),
                    };
                }
            }
        }
    }
}

/// One complete request, as the baseline responder needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// HEAD: answer without a body.
    pub head: bool,
    /// The client asked to close the connection after the answer.
    pub close: bool,
    /// HTTP/1.0: keep-alive must be confirmed in the answer.
    pub http10: bool,
}

#[derive(Debug)]
enum RequestState {
    Head,
    Body { body: Body, request: Request },
}

/// Splits the bytes a client sends into requests, across reads, for one connection.
#[derive(Debug)]
pub struct RequestParser {
    state: RequestState,
}

impl Default for RequestParser {
    fn default() -> Self {
        Self::new()
    }
}

impl RequestParser {
    pub fn new() -> Self {
        Self {
            state: RequestState::Head,
        }
    }

    /// Reads every complete request at the start of `input`, calling `each` in order until it
    /// breaks; returns how many bytes were used.
    pub fn parse_all(
        &mut self,
        input: &[u8],
        mut each: impl FnMut(Request) -> ControlFlow<()>,
    ) -> Result<usize, ParseError> {
        let mut used = 0;
        loop {
            let rest = input.get(used..).unwrap_or_default();
            let (step, request) = self.advance(rest)?;
            used += step;
            match request {
                Some(request) => {
                    if each(request).is_break() {
                        return Ok(used);
                    }
                }
                None => return Ok(used),
            }
        }
    }

    fn advance(&mut self, input: &[u8]) -> Result<(usize, Option<Request>), ParseError> {
        match &mut self.state {
            RequestState::Head => {
                let mut headers = [httparse::EMPTY_HEADER; HEADER_COUNT_MAX];
                let mut head = httparse::Request::new(&mut headers);
                let head_len = match head.parse(input) {
                    Ok(httparse::Status::Complete(len)) if len <= HEAD_BYTES_MAX => len,
                    Ok(httparse::Status::Complete(_)) => return Err(ParseError::HeadTooLarge),
                    Ok(httparse::Status::Partial) if input.len() >= HEAD_BYTES_MAX => {
                        return Err(ParseError::HeadTooLarge)
                    }
                    Ok(httparse::Status::Partial) => return Ok((0, None)),
                    Err(e) => return Err(ParseError::Head(e)),
                };
                let fields = head_fields(head.headers)?;
                let http10 = head.version == Some(0);
                let request = Request {
                    head: head.method == Some("HEAD"),
                    close: fields.close || (http10 && !fields.keep_alive),
                    http10,
                };
                // A request without Content-Length or chunked coding has no body (RFC 9112 6.3).
                let framing = if fields.transfer_encoding && fields.chunked {
                    Framing::Chunked
                } else if fields.transfer_encoding {
                    return Err(ParseError::UnframedRequestBody);
                } else {
                    Framing::Length(fields.content_length.unwrap_or(0))
                };
                match Body::new(framing) {
                    None => Ok((head_len, Some(request))),
                    Some(body) => {
                        self.state = RequestState::Body { body, request };
                        let (step, request) =
                            self.advance(input.get(head_len..).unwrap_or_default())?;
                        Ok((head_len + step, request))
                    }
                }
            }
            RequestState::Body { body, request } => {
                let request = *request;
                match body.advance(input)? {
                    BodyProgress::Done(step) => {
                        self.state = RequestState::Head;
                        Ok((step, Some(request)))
                    }
                    BodyProgress::More(step) => Ok((step, None)),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` the way a connection does — a buffer that keeps unused bytes and grows with
    /// each read — and renders what came out: each response as `STATUS` (plus ` close`), then
    /// `| error: ...`, `| partial N` for unused bytes, or `| until-close` for a body waiting on EOF.
    fn run(parser: &mut ResponseParser, reads: &[&[u8]]) -> String {
        let mut buffer: Vec<u8> = Vec::new();
        let mut out: Vec<String> = Vec::new();
        for read in reads {
            buffer.extend_from_slice(read);
            let result = parser.parse_all(&buffer, |r| {
                out.push(if r.close {
                    format!("{} close", r.status)
                } else {
                    r.status.to_string()
                });
                ControlFlow::Continue(())
            });
            match result {
                Ok(used) => drop(buffer.drain(..used)),
                Err(e) => {
                    out.push(format!("| error: {e}"));
                    return out.join(" ");
                }
            }
        }
        if matches!(parser.state, ResponseState::Body { .. }) {
            match parser.finish() {
                Some(r) => out.push(format!("| until-close {}", r.status)),
                None => out.push("| mid-body".into()),
            }
        } else if !buffer.is_empty() {
            out.push(format!("| partial {}", buffer.len()));
        }
        out.join(" ")
    }

    /// Checks `input` read whole, one byte at a time, and split in two at every byte boundary
    /// (three reads at every pair of boundaries for short inputs): all must give `expected`.
    fn check(input: &str, head_request: bool, expected: &str) {
        let input = input.as_bytes();
        let whole = run(&mut ResponseParser::new(head_request), &[input]);
        assert_eq!(
            whole,
            expected,
            "whole input {:?}",
            String::from_utf8_lossy(input)
        );
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(
            run(&mut ResponseParser::new(head_request), &bytes),
            expected,
            "byte by byte"
        );
        for split in 0..=input.len() {
            let (a, b) = input.split_at(split);
            let got = run(&mut ResponseParser::new(head_request), &[a, b]);
            assert_eq!(got, expected, "split at {split}");
        }
        if input.len() <= 160 {
            for first in 0..=input.len() {
                for second in first..=input.len() {
                    let reads = [&input[..first], &input[first..second], &input[second..]];
                    let got = run(&mut ResponseParser::new(head_request), &reads);
                    assert_eq!(got, expected, "splits at {first} and {second}");
                }
            }
        }
    }

    #[test]
    fn responses() {
        let ok = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK";
        let chunked = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
                       5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\n\r\n";
        let cases: &[(&str, bool, &str)] = &[
            (ok, false, "200"),
            ("HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n", false, "404"),
            ("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789", false, "200"),
            (&format!("{ok}{ok}{ok}"), false, "200 200 200"),
            (chunked, false, "200"),
            (&format!("{chunked}{ok}{chunked}"), false, "200 200 200"),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nA\r\n0123456789\r\n0\r\nX-Sum: 1\r\nX-B: 2\r\n\r\n",
                false,
                "200",
            ),
            // Upper-case hex and a bare LF after chunk data.
            ("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\nF\r\n0123456789abcde\n0\r\n\r\n", false, "200"),
            ("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nOK", false, "200 close"),
            ("HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nOK", false, "200 close"),
            ("HTTP/1.0 200 OK\r\nContent-Length: 2\r\nConnection: Keep-Alive\r\n\r\nOK", false, "200"),
            ("HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n", false, "204 304"),
            ("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 1\r\n\r\nx", false, "201"),
            // HEAD answers have no body even with Content-Length.
            ("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true, "200 200"),
            ("HTTP/1.1 200 OK\r\n\r\nbody until close", false, "| until-close 200"),
            ("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nxx", false, "| until-close 200"),
            ("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOKHTTP/1.1 500", false, "200 | partial 12"),
            ("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nabc", false, "| mid-body"),
            ("HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", false, "| error: invalid Content-Length"),
            ("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", false, "| error: invalid Content-Length"),
            ("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", false, "| error: invalid chunk size"),
            ("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1234567890123456\r\n", false, "| error: invalid chunk size"),
            ("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabX", false, "| error: chunk data not followed by CRLF"),
            ("HTTP/1.1 101 Switching Protocols\r\n\r\n", false, "| error: unexpected 101 Switching Protocols"),
            ("HTTP/1.1 2x0 OK\r\n\r\n", false, "| error: invalid message head: invalid response status"),
        ];
        for &(input, head_request, expected) in cases {
            check(input, head_request, expected);
        }
    }

    #[test]
    fn limits() {
        let long_head = format!(
            "HTTP/1.1 200 OK\r\nX-Pad: {}\r\n\r\n",
            "a".repeat(HEAD_BYTES_MAX)
        );
        assert_eq!(
            run(&mut ResponseParser::new(false), &[long_head.as_bytes()]),
            "| error: message head over 65536 bytes"
        );
        let many = format!(
            "HTTP/1.1 200 OK\r\n{}\r\n",
            "A: b\r\n".repeat(HEADER_COUNT_MAX + 1)
        );
        assert_eq!(
            run(&mut ResponseParser::new(false), &[many.as_bytes()]),
            "| error: invalid message head: too many headers"
        );
        let trailers = format!(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n{}\r\n",
            "T: 1\r\n".repeat(TRAILER_COUNT_MAX + 1)
        );
        assert_eq!(
            run(&mut ResponseParser::new(false), &[trailers.as_bytes()]),
            "| error: more than 64 trailers"
        );
        let line = format!(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1;{}",
            "e".repeat(CHUNK_LINE_BYTES_MAX)
        );
        assert_eq!(
            run(&mut ResponseParser::new(false), &[line.as_bytes()]),
            "| error: chunk or trailer line over 4096 bytes"
        );
    }

    /// Renders the requests found in `input`, split at every byte boundary, as `REQ`/`HEAD` plus
    /// ` close`, then `| partial N` or `| error: ...`.
    fn check_requests(input: &str, expected: &str) {
        let input = input.as_bytes();
        for split in 0..=input.len() {
            let mut parser = RequestParser::new();
            let mut buffer: Vec<u8> = Vec::new();
            let mut out: Vec<String> = Vec::new();
            let mut failed = false;
            for read in [&input[..split], &input[split..]] {
                buffer.extend_from_slice(read);
                let result = parser.parse_all(&buffer, |r| {
                    let method = if r.head { "HEAD" } else { "REQ" };
                    out.push(if r.close {
                        format!("{method} close")
                    } else {
                        method.into()
                    });
                    ControlFlow::Continue(())
                });
                match result {
                    Ok(used) => drop(buffer.drain(..used)),
                    Err(e) => {
                        out.push(format!("| error: {e}"));
                        failed = true;
                        break;
                    }
                }
            }
            if !failed && !buffer.is_empty() {
                out.push(format!("| partial {}", buffer.len()));
            }
            assert_eq!(out.join(" "), expected, "split at {split}");
        }
    }

    #[test]
    fn requests() {
        let cases = [
            ("GET / HTTP/1.1\r\nHost: a\r\n\r\n", "REQ"),
            ("GET / HTTP/1.1\r\n\r\nHEAD /x HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\nConnection: close\r\n\r\n", "REQ HEAD REQ close"),
            ("POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET / HTTP/1.0\r\n\r\n", "REQ REQ close"),
            ("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nGET / HT", "REQ | partial 8"),
            ("POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", "| error: request transfer coding does not end in chunked"),
            ("POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", "| error: invalid Content-Length"),
        ];
        for (input, expected) in cases {
            check_requests(input, expected);
        }
    }
}
