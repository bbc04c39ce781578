//! RFC 6455 frames, server side: decode masked client frames in place, encode unmasked ones.
//!
//! ```text
//!  0               1               2               3
//!  FIN RSV1-3 opcode(4) | MASK len(7) | [len 16 or 64] | [mask key 4] | payload
//! ```
//! Check, then parse: [`decode`] returns `Ok(None)` until a whole frame is buffered. Client
//! payloads over [`PAYLOAD_BYTES_MAX`] are refused (close 1009) before any of them is buffered.
//! Rules that span frames — fragments in order, text valid UTF-8 across fragments, close
//! payloads — are [`Messages`] and [`close_code`]; every caller (subscription sockets, MQTT over
//! WebSocket, replication links) runs each decoded frame through them, so every framing error
//! closes with its RFC 6455 code (docs/replication.md: 1002 protocol error, 1007 invalid payload, 1009 too
//! big).

/// Client frame payloads accepted at most. Subscription sockets ignore client data frames
/// (docs/realtime.md), so this only needs to fit control frames and small chatter.
pub const PAYLOAD_BYTES_MAX: usize = 64 * 1024;
/// Control frames (close, ping, pong) carry at most this much (RFC 6455 §5.5).
const CONTROL_BYTES_MAX: usize = 125;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opcode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl Opcode {
    fn from_bits(bits: u8) -> Option<Opcode> {
        Some(match bits {
            0 => Opcode::Continuation,
            1 => Opcode::Text,
            2 => Opcode::Binary,
            8 => Opcode::Close,
            9 => Opcode::Ping,
            10 => Opcode::Pong,
            _ => return None,
        })
    }

    fn bits(self) -> u8 {
        match self {
            Opcode::Continuation => 0,
            Opcode::Text => 1,
            Opcode::Binary => 2,
            Opcode::Close => 8,
            Opcode::Ping => 9,
            Opcode::Pong => 10,
        }
    }

    fn is_control(self) -> bool {
        matches!(self, Opcode::Close | Opcode::Ping | Opcode::Pong)
    }
}

/// A protocol violation; the connection closes with [`FrameError::close_code`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    ReservedBits,
    UnknownOpcode(u8),
    /// Client frames must be masked (RFC 6455 §5.1).
    Unmasked,
    /// A control frame fragmented or over 125 bytes.
    BadControl,
    TooLarge,
    /// A continuation frame with no fragmented message started (docs/security.md).
    UnexpectedContinuation,
    /// A new text or binary frame while a fragmented message is unfinished (docs/security.md).
    UnfinishedMessage,
    /// A text message (or a close reason) that is not UTF-8 (docs/configuration.md).
    InvalidUtf8,
    /// A close frame with a 1-byte payload, or a code that may not be sent (docs/security.md, docs/replication.md).
    BadClose,
}

impl FrameError {
    pub fn close_code(self) -> u16 {
        match self {
            FrameError::TooLarge => 1009,
            FrameError::InvalidUtf8 => 1007,
            _ => 1002,
        }
    }
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::ReservedBits => f.write_str("reserved bits set"),
            FrameError::UnknownOpcode(o) => write!(f, "unknown opcode {o}"),
            FrameError::Unmasked => f.write_str("client frame not masked"),
            FrameError::BadControl => f.write_str("control frame fragmented or too long"),
            FrameError::TooLarge => f.write_str("frame payload over the limit"),
            FrameError::UnexpectedContinuation => {
                f.write_str("continuation frame without a message started")
            }
            FrameError::UnfinishedMessage => {
                f.write_str("new message before the fragmented one finished")
            }
            FrameError::InvalidUtf8 => f.write_str("text is not valid UTF-8"),
            FrameError::BadClose => f.write_str("invalid close frame payload"),
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    pub fin: bool,
    pub opcode: Opcode,
    pub payload: &'a [u8],
}

/// Decodes the frame at the start of `buf`, unmasking its payload in place. `Ok(None)`: not
/// complete yet. On success also returns the bytes it spans.
pub fn decode(buf: &mut [u8]) -> Result<Option<(Frame<'_>, usize)>, FrameError> {
    decode_from(buf, Sender::Client, PAYLOAD_BYTES_MAX)
}

/// [`decode`] with another payload limit (MQTT over WebSocket carries whole MQTT packets).
pub fn decode_limited(
    buf: &mut [u8],
    payload_bytes_max: usize,
) -> Result<Option<(Frame<'_>, usize)>, FrameError> {
    decode_from(buf, Sender::Client, payload_bytes_max)
}

/// Who sent the frames being decoded: clients must mask (RFC 6455 §5.1); server frames, as a
/// client reads them (replication links dial out), come unmasked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sender {
    Client,
    Server,
}

/// [`decode`] for either side, with the payload limit of the caller's protocol. A masked
/// server frame is unmasked all the same.
pub fn decode_from(
    buf: &mut [u8],
    sender: Sender,
    payload_bytes_max: usize,
) -> Result<Option<(Frame<'_>, usize)>, FrameError> {
    let [b0, b1, ..] = *buf else {
        return Ok(None);
    };
    if b0 & 0x70 != 0 {
        return Err(FrameError::ReservedBits);
    }
    let fin = b0 & 0x80 != 0;
    let opcode = Opcode::from_bits(b0 & 0x0f).ok_or(FrameError::UnknownOpcode(b0 & 0x0f))?;
    let masked = b1 & 0x80 != 0;
    if !masked && sender == Sender::Client {
        return Err(FrameError::Unmasked);
    }
    let (len, mut at) = match b1 & 0x7f {
        126 => match buf.get(2..4) {
            Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
            None => return Ok(None),
        },
        127 => match buf.get(2..10).and_then(|b| <[u8; 8]>::try_from(b).ok()) {
            Some(b) => (u64::from_be_bytes(b), 10),
            None => return Ok(None),
        },
        n => (u64::from(n), 2),
    };
    if opcode.is_control() && (!fin || len > CONTROL_BYTES_MAX as u64) {
        return Err(FrameError::BadControl);
    }
    if len > payload_bytes_max as u64 {
        return Err(FrameError::TooLarge);
    }
    let len = len as usize;
    let mut mask = None;
    if masked {
        let Some(key) = buf
            .get(at..at + 4)
            .and_then(|m| <[u8; 4]>::try_from(m).ok())
        else {
            return Ok(None);
        };
        mask = Some(key);
        at += 4;
    }
    let Some(payload) = buf.get_mut(at..at + len) else {
        return Ok(None);
    };
    if let Some(mask) = mask {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= mask[i & 3];
        }
    }
    Ok(Some((
        Frame {
            fin,
            opcode,
            payload,
        },
        at + len,
    )))
}

/// The rules between frames of one connection (RFC 6455 §5.4, docs/configuration.md): continuation frames only
/// inside a fragmented message, no new message before it finishes, and text valid UTF-8 across
/// fragments (checked as it arrives, so invalid text fails at the first bad byte). Control
/// frames may come between fragments and are not its business.
#[derive(Debug, Default)]
pub struct Messages {
    /// The fragmented message in progress: `Some(true)` for text.
    open: Option<bool>,
    /// The bytes of a UTF-8 sequence cut by a fragment boundary (at most 3).
    partial: [u8; 4],
    partial_len: usize,
}

impl Messages {
    /// Checks a decoded data or control frame in the order it came; a data frame's payload is
    /// then part of a valid message. Control frames pass (see [`close_code`] for close).
    pub fn check(&mut self, frame: &Frame<'_>) -> Result<(), FrameError> {
        let text = match frame.opcode {
            Opcode::Close | Opcode::Ping | Opcode::Pong => return Ok(()),
            Opcode::Continuation => self.open.ok_or(FrameError::UnexpectedContinuation)?,
            Opcode::Text | Opcode::Binary if self.open.is_some() => {
                return Err(FrameError::UnfinishedMessage)
            }
            Opcode::Text => true,
            Opcode::Binary => false,
        };
        if text {
            self.utf8(frame.payload, frame.fin)?;
        }
        self.open = if frame.fin { None } else { Some(text) };
        Ok(())
    }

    /// Whether a fragmented message is in progress.
    pub fn in_message(&self) -> bool {
        self.open.is_some()
    }

    /// Validates the next piece of a text message; `last`: the message ends with it.
    fn utf8(&mut self, mut bytes: &[u8], last: bool) -> Result<(), FrameError> {
        // First complete a sequence the previous fragment cut.
        while self.partial_len > 0 {
            let Some((&b, rest)) = bytes.split_first() else {
                break;
            };
            self.partial[self.partial_len] = b;
            self.partial_len += 1;
            bytes = rest;
            match std::str::from_utf8(&self.partial[..self.partial_len]) {
                Ok(_) => self.partial_len = 0,
                Err(e) if e.error_len().is_some() => return Err(FrameError::InvalidUtf8),
                Err(_) => {}
            }
        }
        if self.partial_len == 0 {
            if let Err(e) = std::str::from_utf8(bytes) {
                if e.error_len().is_some() {
                    return Err(FrameError::InvalidUtf8);
                }
                let tail = &bytes[e.valid_up_to()..];
                self.partial[..tail.len()].copy_from_slice(tail);
                self.partial_len = tail.len();
            }
        }
        if last && self.partial_len > 0 {
            self.partial_len = 0;
            return Err(FrameError::InvalidUtf8);
        }
        Ok(())
    }
}

/// The code to answer a client's close frame with (RFC 6455 §5.5.1, docs/replication.md): its own code, or
/// 1000 when it sent none. A 1-byte payload or a code that may not be sent is a protocol error
/// (1002); a reason that is not UTF-8 is invalid payload (1007).
pub fn close_code(payload: &[u8]) -> Result<u16, FrameError> {
    let [a, b, reason @ ..] = payload else {
        return if payload.is_empty() {
            Ok(1000)
        } else {
            Err(FrameError::BadClose)
        };
    };
    let code = u16::from_be_bytes([*a, *b]);
    if !matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999) {
        return Err(FrameError::BadClose);
    }
    std::str::from_utf8(reason).map_err(|_| FrameError::InvalidUtf8)?;
    Ok(code)
}

/// Appends one unmasked, final frame.
pub fn encode(opcode: Opcode, payload: &[u8], out: &mut Vec<u8>) {
    out.push(0x80 | opcode.bits());
    let len = payload.len();
    if len < 126 {
        out.push(len as u8);
    } else if len <= u16::MAX as usize {
        out.push(126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(payload);
}

/// Appends one final frame masked with `mask`, as clients send them (RFC 6455 §5.3).
pub fn encode_masked(opcode: Opcode, payload: &[u8], mask: [u8; 4], out: &mut Vec<u8>) {
    let start = out.len();
    encode(opcode, &[], out);
    // Rewrite the length byte(s) for the real payload, with the mask bit.
    out.truncate(start + 1);
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= u16::MAX as usize {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
}

/// Appends a close frame with `code`.
pub fn encode_close(code: u16, out: &mut Vec<u8>) {
    encode(Opcode::Close, &code.to_be_bytes(), out);
}

/// A masked client frame with first byte `b0` (FIN, opcode), for tests.
#[cfg(test)]
pub(crate) fn masked(b0: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [1u8, 2, 3, 4];
    let mut out = vec![b0];
    if payload.len() < 126 {
        out.push(0x80 | payload.len() as u8);
    } else {
        out.push(0x80 | 126);
        out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (fin, opcode, payload, consumed) of a decoded frame.
    type Decoded<'a> = (bool, Opcode, &'a [u8], usize);

    /// Decodes `input`; expects a frame, `None` (incomplete) or an error.
    fn check(input: &[u8], expected: Result<Option<Decoded<'_>>, FrameError>) {
        let mut buf = input.to_vec();
        let got =
            decode(&mut buf).map(|o| o.map(|(f, n)| (f.fin, f.opcode, f.payload.to_vec(), n)));
        let expected = expected.map(|o| o.map(|(f, op, p, n)| (f, op, p.to_vec(), n)));
        assert_eq!(got, expected, "input {input:?}");
    }

    #[test]
    fn client_frames() {
        let hello = masked(0x81, b"hello");
        check(&hello, Ok(Some((true, Opcode::Text, b"hello", 11))));
        check(&hello[..10], Ok(None));
        check(&hello[..1], Ok(None));
        let big = vec![7u8; 300];
        let framed = masked(0x82, &big);
        check(&framed, Ok(Some((true, Opcode::Binary, &big, 308))));
        check(&framed[..3], Ok(None));
        check(&masked(0x89, b"p"), Ok(Some((true, Opcode::Ping, b"p", 7))));
        check(&masked(0x09, b"p"), Err(FrameError::BadControl));
        check(&masked(0x88, &[0; 126]), Err(FrameError::BadControl));
        check(&[0x81, 0x05, b'h'], Err(FrameError::Unmasked));
        check(&[0xc1, 0x80], Err(FrameError::ReservedBits));
        check(&[0x83, 0x80], Err(FrameError::UnknownOpcode(3)));
        check(
            &[0x82, 0xff, 0, 0, 0, 0, 0, 2, 0, 0],
            Err(FrameError::TooLarge),
        );
        let mut small = masked(0x82, b"12345");
        assert_eq!(decode_limited(&mut small, 4), Err(FrameError::TooLarge));
        let mut small = masked(0x82, b"12345");
        assert!(matches!(decode_limited(&mut small, 5), Ok(Some((_, 11)))));
    }

    /// Runs `frames` (first byte, payload) through [`Messages`]; the index of the first one
    /// refused and its error, or `None` when all pass.
    fn sequence(frames: &[(u8, &[u8])]) -> Option<(usize, FrameError)> {
        let mut messages = Messages::default();
        for (i, (b0, payload)) in frames.iter().enumerate() {
            let mut buf = masked(*b0, payload);
            let (frame, _) = decode(&mut buf).expect("frame").expect("whole");
            if let Err(e) = messages.check(&frame) {
                return Some((i, e));
            }
        }
        None
    }

    #[test]
    fn fragments_and_utf8_across_them() {
        // Fragmented text with a ping between, split inside a 4-byte character: fine.
        let hello = "κόσμε 𝄞".as_bytes();
        let cut = hello.len() - 2;
        assert_eq!(
            sequence(&[(0x01, &hello[..cut]), (0x89, b""), (0x80, &hello[cut..])]),
            None
        );
        // One byte per fragment.
        let mut frames: Vec<(u8, &[u8])> = hello.chunks(1).map(|c| (0x00, c)).collect();
        frames[0].0 = 0x01;
        frames.last_mut().expect("last").0 = 0x80;
        assert_eq!(sequence(&frames), None);
        // Continuation without a start; a new message inside a fragmented one.
        assert_eq!(
            sequence(&[(0x80, b"x")]),
            Some((0, FrameError::UnexpectedContinuation))
        );
        assert_eq!(
            sequence(&[(0x02, b"a"), (0x82, b"b")]),
            Some((1, FrameError::UnfinishedMessage))
        );
        assert_eq!(
            sequence(&[(0x01, b"a"), (0x80, b"b"), (0x80, b"c")]),
            Some((2, FrameError::UnexpectedContinuation))
        );
        // Invalid UTF-8: in one frame, at the first bad byte of a fragment, cut at the end.
        assert_eq!(
            sequence(&[(0x81, b"ok\xc0\xaf")]),
            Some((0, FrameError::InvalidUtf8))
        );
        assert_eq!(
            sequence(&[
                (0x01, "κ".as_bytes()),
                (0x00, b"\xf4\x90"),
                (0x80, b"\x80\x80")
            ]),
            Some((1, FrameError::InvalidUtf8))
        );
        assert_eq!(
            sequence(&[(0x01, b"a\xe2\x82"), (0x80, b"")]),
            Some((1, FrameError::InvalidUtf8))
        );
        assert_eq!(
            sequence(&[(0x81, b"\xed\xa0\x80")]),
            Some((0, FrameError::InvalidUtf8))
        );
        // Binary is not text.
        assert_eq!(sequence(&[(0x82, b"\xff\xfe")]), None);
    }

    #[test]
    fn close_payloads() {
        assert_eq!(close_code(b""), Ok(1000));
        assert_eq!(close_code(b"\x03"), Err(FrameError::BadClose));
        for code in [
            1000u16, 1001, 1002, 1003, 1007, 1011, 3000, 3999, 4000, 4999,
        ] {
            assert_eq!(close_code(&code.to_be_bytes()), Ok(code));
        }
        for code in [
            0u16, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
        ] {
            assert_eq!(
                close_code(&code.to_be_bytes()),
                Err(FrameError::BadClose),
                "{code}"
            );
        }
        assert_eq!(close_code(b"\x03\xe8bye"), Ok(1000));
        assert_eq!(
            close_code(b"\x03\xe8\xce\xba\xe1"),
            Err(FrameError::InvalidUtf8)
        );
        assert_eq!(FrameError::InvalidUtf8.close_code(), 1007);
        assert_eq!(FrameError::BadClose.close_code(), 1002);
    }

    #[test]
    fn server_frames() {
        for (len, header) in [(5usize, 2usize), (200, 4), (70_000, 10)] {
            let mut out = Vec::new();
            encode(Opcode::Text, &vec![b'x'; len], &mut out);
            assert_eq!(out.len(), header + len);
            assert_eq!(out[0], 0x81);
        }
        let mut out = Vec::new();
        encode_close(1001, &mut out);
        assert_eq!(out, [0x88, 2, 0x03, 0xe9]);
    }

    /// Encodes a masked client frame or an unmasked server frame and decodes it as the other
    /// side does, with `limit`.
    fn round_trip(sender: Sender, len: usize, limit: usize, expected: Result<usize, FrameError>) {
        let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
        let mut out = Vec::new();
        match sender {
            Sender::Client => encode_masked(Opcode::Binary, &payload, [9, 8, 7, 6], &mut out),
            Sender::Server => encode(Opcode::Binary, &payload, &mut out),
        }
        let got = decode_from(&mut out, sender, limit).map(|f| {
            let (frame, used) = f.expect("whole frame");
            assert_eq!(frame.payload, &payload[..]);
            used
        });
        assert_eq!(got, expected, "{sender:?} {len}");
    }

    #[test]
    fn both_sides_with_a_limit() {
        round_trip(Sender::Client, 5, 10, Ok(11));
        round_trip(Sender::Client, 300, 1000, Ok(308));
        round_trip(Sender::Client, 70_000, 100_000, Ok(70_014));
        round_trip(Sender::Server, 5, 10, Ok(7));
        round_trip(Sender::Server, 70_000, 100_000, Ok(70_010));
        round_trip(Sender::Server, 70_000, 1000, Err(FrameError::TooLarge));
        // A server frame masked anyway still reads; a client frame must be masked.
        let mut masked = Vec::new();
        encode_masked(Opcode::Ping, b"t", [1, 2, 3, 4], &mut masked);
        assert!(matches!(
            decode_from(&mut masked, Sender::Server, 10),
            Ok(Some(_))
        ));
        let mut plain = Vec::new();
        encode(Opcode::Ping, b"t", &mut plain);
        assert_eq!(
            decode_from(&mut plain, Sender::Client, 10),
            Err(FrameError::Unmasked)
        );
    }
}
