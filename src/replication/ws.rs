//! A minimal WebSocket (RFC 6455) client and server for replication links, on blocking streams
//! owned by a link's threads: the upgrade handshake with subprotocol `harperdb-replication-1`,
//! and frames. The real-time WebSocket codec (branch `realtime`) had not landed on main when this
//! was written; this one only knows what links need: binary messages, ping/pong, close.
//!
//! ```text
//! byte 0: FIN | RSV(3) | opcode(4)      byte 1: MASK | len7
//! len7 = 126 → u16 BE length; 127 → u64 BE length; then a 4-byte mask key when MASK
//! ```
//!
//! Limits: a handshake head of at most [`HEAD_BYTES_MAX`]; a message (all its fragments) of at
//! most `message_bytes_max`, else [`WsError::TooLarge`] and the link closes.

use std::io::{self, Read, Write};

use base64::Engine;
use sha1::{Digest, Sha1};

pub const SUBPROTOCOL: &str = "harperdb-replication-1";
/// Bytes of an upgrade request or response head at most.
pub const HEAD_BYTES_MAX: usize = 16 * 1024;
/// Headers in an upgrade head at most.
const HEADERS_MAX: usize = 32;
const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

#[derive(Debug)]
pub enum WsError {
    Io(io::Error),
    /// The peer broke the protocol (bad handshake, bad frame).
    Protocol(String),
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
            WsError::TooLarge(n) => write!(f, "message of {n} bytes is over the limit"),
            WsError::Refused(s) => write!(f, "upgrade refused with status {s}"),
            WsError::Closed => f.write_str("connection closed"),
        }
    }
}

impl From<io::Error> for WsError {
    fn from(e: io::Error) -> Self {
        WsError::Io(e)
    }
}

fn accept_key(key: &str) -> String {
    let mut h = Sha1::new();
    h.update(key.as_bytes());
    h.update(GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
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

pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// Encodes one final frame; clients mask (RFC 6455 §5.3), servers do not.
pub fn encode_frame(opcode: u8, payload: &[u8], masked: bool, out: &mut Vec<u8>) {
    out.push(0x80 | opcode);
    let mask_bit = if masked { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(mask_bit | n as u8),
        n if n <= u16::MAX as usize => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if masked {
        let mask: [u8; 4] = rand_bytes();
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    } else {
        out.extend_from_slice(payload);
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

/// Reads frames until a whole message (fragments joined) or a control frame is in.
pub fn read_message(stream: &mut impl Read, message_bytes_max: usize) -> Result<Incoming, WsError> {
    let mut message: Vec<u8> = Vec::new();
    let mut in_message = false;
    loop {
        let mut head = [0u8; 2];
        stream.read_exact(&mut head)?;
        let fin = head[0] & 0x80 != 0;
        let opcode = head[0] & 0x0F;
        let masked = head[1] & 0x80 != 0;
        let len = match head[1] & 0x7F {
            126 => {
                let mut b = [0u8; 2];
                stream.read_exact(&mut b)?;
                u64::from(u16::from_be_bytes(b))
            }
            127 => {
                let mut b = [0u8; 8];
                stream.read_exact(&mut b)?;
                u64::from_be_bytes(b)
            }
            n => u64::from(n),
        };
        let len = usize::try_from(len).map_err(|_| WsError::TooLarge(usize::MAX))?;
        if message.len().saturating_add(len) > message_bytes_max {
            return Err(WsError::TooLarge(message.len().saturating_add(len)));
        }
        let mut mask = [0u8; 4];
        if masked {
            stream.read_exact(&mut mask)?;
        }
        let mut payload = vec![0u8; len];
        stream.read_exact(&mut payload)?;
        if masked {
            for (i, b) in payload.iter_mut().enumerate() {
                *b ^= mask[i % 4];
            }
        }
        match opcode {
            OP_PING => return Ok(Incoming::Ping(payload)),
            OP_PONG => return Ok(Incoming::Pong),
            OP_CLOSE => return Ok(Incoming::Close),
            OP_BINARY | 0x1 if !in_message => {
                if fin {
                    return Ok(Incoming::Binary(payload));
                }
                in_message = true;
                message = payload;
            }
            OP_CONTINUATION if in_message => {
                message.extend_from_slice(&payload);
                if fin {
                    return Ok(Incoming::Binary(message));
                }
            }
            other => return Err(WsError::Protocol(format!("unexpected opcode {other:#x}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Encodes `payload` as a frame (masked or not) and reads it back.
    fn check(opcode: u8, payload: &[u8], masked: bool, limit: usize, expect: Result<Incoming, ()>) {
        let mut out = Vec::new();
        encode_frame(opcode, payload, masked, &mut out);
        let got = read_message(&mut &out[..], limit).map_err(|_| ());
        assert_eq!(got, expect);
    }

    #[test]
    fn frames_round_trip_and_respect_the_limit() {
        let big = vec![7u8; 70_000];
        check(
            OP_BINARY,
            b"abc",
            true,
            100,
            Ok(Incoming::Binary(b"abc".to_vec())),
        );
        check(
            OP_BINARY,
            b"abc",
            false,
            100,
            Ok(Incoming::Binary(b"abc".to_vec())),
        );
        check(
            OP_BINARY,
            &big[..300],
            true,
            1000,
            Ok(Incoming::Binary(big[..300].to_vec())),
        );
        check(
            OP_BINARY,
            &big,
            false,
            100_000,
            Ok(Incoming::Binary(big.clone())),
        );
        check(OP_BINARY, &big, false, 1000, Err(()));
        check(OP_PING, b"t", true, 10, Ok(Incoming::Ping(b"t".to_vec())));
        check(OP_CLOSE, b"", false, 10, Ok(Incoming::Close));
        check(OP_CONTINUATION, b"x", false, 10, Err(()));
    }

    #[test]
    fn fragments_join_and_truncation_is_an_error() {
        let mut out = vec![OP_BINARY, 2, b'a', b'b'];
        encode_frame(OP_CONTINUATION, b"cd", true, &mut out);
        assert_eq!(
            read_message(&mut &out[..], 10).unwrap(),
            Incoming::Binary(b"abcd".to_vec())
        );
        assert!(read_message(&mut &out[..5], 10).is_err());
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
