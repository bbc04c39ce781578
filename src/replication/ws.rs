//! The WebSocket (RFC 6455) side of replication links, on blocking streams owned by a link's
//! threads: the upgrade handshake with subprotocol `harperdb-replication-1` (client and
//! server), and whole messages read and written with the shared frame codec
//! (`crate::protocol::ws::frame`): binary messages (fragments joined), ping/pong, close.
//!
//! Limits: a handshake head of at most [`HEAD_BYTES_MAX`]; a message (all its fragments) of at
//! most `message_bytes_max`, else [`WsError::TooLarge`] and the link closes.

use std::io::{self, Read, Write};

use base64::Engine;

use crate::protocol::ws::frame;
pub use crate::protocol::ws::frame::{Opcode, Sender};

pub const SUBPROTOCOL: &str = "harperdb-replication-1";
/// Bytes of an upgrade request or response head at most.
pub const HEAD_BYTES_MAX: usize = 16 * 1024;
/// Headers in an upgrade head at most.
const HEADERS_MAX: usize = 32;

#[derive(Debug)]
pub enum WsError {
    Io(io::Error),
    /// The peer broke the protocol (bad handshake, bad frame).
    Protocol(String),
    /// A frame or frame sequence breaking RFC 6455; the link closes with its code.
    Frame(frame::FrameError),
    /// A message over the size limit.
    TooLarge(usize),
    /// The upgrade was refused with this HTTP status.
    Refused(u16),
    Closed,
}

impl std::fmt::Display for WsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WsError::Io(e) => write!(f, "{e}"),
            WsError::Protocol(m) => write!(f, "WebSocket protocol error: {m}"),
            WsError::Frame(e) => write!(f, "WebSocket protocol error: {e}"),
            WsError::TooLarge(n) => write!(f, "message of {n} bytes is over the limit"),
            WsError::Refused(s) => write!(f, "upgrade refused with status {s}"),
            WsError::Closed => f.write_str("connection closed"),
        }
    }
}

impl WsError {
    /// The close code to send the peer before the link ends (RFC 6455 §7.4.1), for errors
    /// of the peer's frames.
    pub fn close_code(&self) -> Option<u16> {
        match self {
            WsError::Frame(e) => Some(e.close_code()),
            WsError::TooLarge(_) => Some(1009),
            _ => None,
        }
    }
}

impl From<io::Error> for WsError {
    fn from(e: io::Error) -> Self {
        WsError::Io(e)
    }
}

fn accept_key(key: &str) -> String {
    crate::protocol::ws::accept_key(key.as_bytes())
}

/// Reads an HTTP head (up to the blank line) byte-wise, so nothing after it is consumed.
fn read_head(stream: &mut impl Read) -> Result<Vec<u8>, WsError> {
    let mut head = Vec::with_capacity(512);
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() >= HEAD_BYTES_MAX {
            return Err(WsError::Protocol("handshake head too long".into()));
        }
        if stream.read(&mut byte)? == 0 {
            return Err(WsError::Closed);
        }
        head.push(byte[0]);
    }
    Ok(head)
}

/// The client side: sends the upgrade for `path` with `authorization` if any; checks the answer.
pub fn client_handshake(
    stream: &mut (impl Read + Write),
    host: &str,
    authorization: Option<&str>,
) -> Result<(), WsError> {
    let nonce: [u8; 16] = rand_bytes();
    let key = base64::engine::general_purpose::STANDARD.encode(nonce);
    let mut req = format!(
        "GET / HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: {SUBPROTOCOL}\r\n"
    );
    if let Some(auth) = authorization {
        req.push_str(&format!("Authorization: {auth}\r\n"));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes())?;
    let head = read_head(stream)?;
    let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(&head) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return Err(WsError::Protocol("bad upgrade response".into())),
    }
    let status = resp.code.unwrap_or(0);
    if status != 101 {
        return Err(WsError::Refused(status));
    }
    let accept = resp
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("sec-websocket-accept"))
        .map(|h| String::from_utf8_lossy(h.value).into_owned());
    if accept.as_deref() != Some(accept_key(&key).as_str()) {
        return Err(WsError::Protocol("wrong Sec-WebSocket-Accept".into()));
    }
    Ok(())
}

/// What the server learned from an upgrade request.
#[derive(Debug, Default)]
pub struct Upgrade {
    pub authorization: Option<String>,
}

/// The server side: reads the upgrade, lets `decide` accept it (or refuse it with an HTTP
/// status, e.g. 401), then answers 101 with our subprotocol; a request that is not a
/// replication upgrade gets 400.
pub fn server_handshake(
    stream: &mut (impl Read + Write),
    decide: impl FnOnce(&Upgrade) -> Result<(), u16>,
) -> Result<Upgrade, WsError> {
    let head = read_head(stream)?;
    let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(&head) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return Err(WsError::Protocol("bad upgrade request".into())),
    }
    let header = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).into_owned())
    };
    let key = header("sec-websocket-key");
    let protocols = header("sec-websocket-protocol").unwrap_or_default();
    let wants_ours = protocols.split(',').any(|p| p.trim() == SUBPROTOCOL);
    let Some(key) = key.filter(|_| wants_ours && req.method == Some("GET")) else {
        stream.write_all(
            b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )?;
        return Err(WsError::Protocol(
            "not a replication upgrade (subprotocol harperdb-replication-1)".into(),
        ));
    };
    let upgrade = Upgrade {
        authorization: header("authorization"),
    };
    if let Err(status) = decide(&upgrade) {
        let reason = match status {
            401 => "Unauthorized",
            403 => "Forbidden",
            _ => "Refused",
        };
        stream.write_all(
            format!("HTTP/1.1 {status} {reason}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )?;
        return Err(WsError::Refused(status));
    }
    let resp = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\nSec-WebSocket-Protocol: {SUBPROTOCOL}\r\n\r\n",
        accept_key(&key)
    );
    stream.write_all(resp.as_bytes())?;
    Ok(upgrade)
}

fn rand_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    let seed = uuid::Uuid::new_v4();
    for (i, b) in out.iter_mut().enumerate() {
        *b = seed.as_bytes()[i % 16];
    }
    out
}

/// Encodes one final frame; clients mask (RFC 6455 §5.3), servers do not.
pub fn encode_frame(opcode: Opcode, payload: &[u8], masked: bool, out: &mut Vec<u8>) {
    if masked {
        frame::encode_masked(opcode, payload, rand_bytes(), out);
    } else {
        frame::encode(opcode, payload, out);
    }
}

/// One whole message or control frame.
#[derive(Debug, PartialEq)]
pub enum Incoming {
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong,
    Close,
}

/// Bytes asked of the stream per read.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// Reads whole messages from a blocking stream: bytes past the current frame stay buffered
/// for the next call.
pub struct MessageReader<R> {
    stream: R,
    /// Who sends what we read: the server when we dialled.
    sender: Sender,
    buf: Vec<u8>,
    message_bytes_max: usize,
    /// The fragmented message read so far, and the rules between frames.
    message: Vec<u8>,
    messages: frame::Messages,
}

impl<R: Read> MessageReader<R> {
    pub fn new(stream: R, sender: Sender, message_bytes_max: usize) -> Self {
        MessageReader {
            stream,
            sender,
            buf: Vec::new(),
            message_bytes_max,
            message: Vec::new(),
            messages: frame::Messages::default(),
        }
    }

    /// Reads frames until a whole message (fragments joined) or a control frame is in. A
    /// control frame between fragments comes back on its own; the message so far is kept for
    /// the next call.
    pub fn read(&mut self) -> Result<Incoming, WsError> {
        loop {
            let limit = self.message_bytes_max.saturating_sub(self.message.len());
            let decoded = match frame::decode_from(&mut self.buf, self.sender, limit) {
                Ok(d) => d,
                Err(frame::FrameError::TooLarge) => {
                    return Err(WsError::TooLarge(self.message_bytes_max))
                }
                Err(e) => return Err(WsError::Frame(e)),
            };
            let Some((f, used)) = decoded else {
                let start = self.buf.len();
                self.buf.resize(start + READ_CHUNK_BYTES, 0);
                let n = match self.stream.read(&mut self.buf[start..]) {
                    Ok(n) => n,
                    Err(e) => {
                        self.buf.truncate(start);
                        return Err(e.into());
                    }
                };
                self.buf.truncate(start + n);
                if n == 0 {
                    return Err(WsError::Closed);
                }
                continue;
            };
            self.messages.check(&f).map_err(WsError::Frame)?;
            let result = match f.opcode {
                Opcode::Ping => Some(Incoming::Ping(f.payload.to_vec())),
                Opcode::Pong => Some(Incoming::Pong),
                Opcode::Close => {
                    frame::close_code(f.payload).map_err(WsError::Frame)?;
                    Some(Incoming::Close)
                }
                // Data in order (checked above): whole, or the fragments joined.
                _ if f.fin && self.message.is_empty() => Some(Incoming::Binary(f.payload.to_vec())),
                _ => {
                    self.message.extend_from_slice(f.payload);
                    f.fin
                        .then(|| Incoming::Binary(std::mem::take(&mut self.message)))
                }
            };
            self.buf.drain(..used);
            if let Some(incoming) = result {
                return Ok(incoming);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Encodes `payload` as a frame (masked by a client or not by a server) and reads it back.
    fn check(
        opcode: Opcode,
        payload: &[u8],
        masked: bool,
        limit: usize,
        expect: Result<Incoming, ()>,
    ) {
        let mut out = Vec::new();
        encode_frame(opcode, payload, masked, &mut out);
        let sender = if masked {
            Sender::Client
        } else {
            Sender::Server
        };
        let got = MessageReader::new(&out[..], sender, limit)
            .read()
            .map_err(|_| ());
        assert_eq!(got, expect);
    }

    #[test]
    fn frames_round_trip_and_respect_the_limit() {
        let big = vec![7u8; 70_000];
        check(
            Opcode::Binary,
            b"abc",
            true,
            100,
            Ok(Incoming::Binary(b"abc".to_vec())),
        );
        check(
            Opcode::Binary,
            b"abc",
            false,
            100,
            Ok(Incoming::Binary(b"abc".to_vec())),
        );
        check(
            Opcode::Binary,
            &big[..300],
            true,
            1000,
            Ok(Incoming::Binary(big[..300].to_vec())),
        );
        check(
            Opcode::Binary,
            &big,
            false,
            100_000,
            Ok(Incoming::Binary(big.clone())),
        );
        check(Opcode::Binary, &big, false, 1000, Err(()));
        check(
            Opcode::Ping,
            b"t",
            true,
            10,
            Ok(Incoming::Ping(b"t".to_vec())),
        );
        check(Opcode::Close, b"", false, 10, Ok(Incoming::Close));
        check(Opcode::Continuation, b"x", false, 10, Err(()));
    }

    #[test]
    fn fragments_join_and_truncation_is_an_error() {
        // An unfinished binary frame "ab", then the final continuation "cd" (masked).
        let mut out = vec![0x02, 2, b'a', b'b'];
        encode_frame(Opcode::Continuation, b"cd", true, &mut out);
        let mut reader = MessageReader::new(&out[..], Sender::Server, 10);
        assert_eq!(reader.read().unwrap(), Incoming::Binary(b"abcd".to_vec()));
        let mut short = MessageReader::new(&out[..5], Sender::Server, 10);
        assert!(short.read().is_err());
        // Two messages in one read come out one by one.
        let mut two = Vec::new();
        encode_frame(Opcode::Binary, b"x", false, &mut two);
        encode_frame(Opcode::Binary, b"y", false, &mut two);
        let mut reader = MessageReader::new(&two[..], Sender::Server, 10);
        assert_eq!(reader.read().unwrap(), Incoming::Binary(b"x".to_vec()));
        assert_eq!(reader.read().unwrap(), Incoming::Binary(b"y".to_vec()));
        // The fragments of one message count together against the limit.
        let mut over = vec![0x02, 6, 0, 0, 0, 0, 0, 0];
        encode_frame(Opcode::Continuation, &[0; 6], false, &mut over);
        assert!(MessageReader::new(&over[..], Sender::Server, 10)
            .read()
            .is_err());
        // A ping between fragments comes out on its own and the message stays whole.
        let mut pinged = vec![0x02, 2, b'a', b'b'];
        encode_frame(Opcode::Ping, b"p", false, &mut pinged);
        encode_frame(Opcode::Continuation, b"cd", false, &mut pinged);
        let mut reader = MessageReader::new(&pinged[..], Sender::Server, 10);
        assert_eq!(reader.read().unwrap(), Incoming::Ping(b"p".to_vec()));
        assert_eq!(reader.read().unwrap(), Incoming::Binary(b"abcd".to_vec()));
        // A bad close code is a framing error with close code 1002.
        let mut close = Vec::new();
        encode_frame(Opcode::Close, &999u16.to_be_bytes(), false, &mut close);
        let e = MessageReader::new(&close[..], Sender::Server, 10)
            .read()
            .expect_err("close 999");
        assert_eq!(e.close_code(), Some(1002));
    }

    #[test]
    fn handshake_between_client_and_server() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            server_handshake(&mut s, |_| Ok(())).map(|u| u.authorization)
        });
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        client_handshake(&mut c, "x", Some("Basic eA==")).unwrap();
        assert_eq!(
            server.join().unwrap().unwrap().as_deref(),
            Some("Basic eA==")
        );
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }
}
