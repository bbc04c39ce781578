//! WebSocket as a byte transport, for MQTT over WebSocket (docs/mqtt.md): the MQTT session reads and
//! writes plain bytes, and this layer carries them in binary frames.
//!
//! Reading unwraps binary (and continuation) frames and concatenates their payloads, so an MQTT
//! packet may span frames and a frame may hold several packets; pings are answered with pongs; a
//! client close ends the stream (0 bytes read); a text frame or a framing violation closes the
//! socket with its close code. Writing sends each write as one binary frame; half-closing sends
//! a close frame (1000) first. Both halves share the connection's write half through a
//! [`SharedWriter`], so pongs and MQTT packets never interleave within a frame. This module never
//! parses MQTT, and never buffers more than one frame of at most its payload limit.

use std::cell::Cell;
use std::io;
use std::rc::Rc;

use tidepool_io::{AnyRead, AnyWrite, ReadBytes, SharedWriter, Split, WriteBytes};

use super::frame::{self, Opcode};
use crate::protocol::http::Upgraded;

/// Bytes asked from the connection per read.
const READ_BYTES: usize = 16 * 1024;
/// RFC 6455 §7.4.1: the endpoint received data it cannot accept (MQTT needs binary frames).
const CLOSE_UNSUPPORTED_DATA: u16 = 1003;
const CLOSE_NORMAL: u16 = 1000;

/// What the two halves share: the connection's write half and whether a close frame went out.
struct Shared<W> {
    writer: SharedWriter<W>,
    close_sent: Cell<bool>,
}

impl<W: WriteBytes> Shared<W> {
    /// Sends `bytes` (whole frames) unless a close frame already went out.
    async fn send(&self, bytes: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        if self.close_sent.get() {
            return (Err(io::ErrorKind::BrokenPipe.into()), bytes);
        }
        self.writer.lock().await.write_all(bytes).await
    }

    /// Sends a close frame with `code` (once).
    async fn close(&self, code: u16) -> io::Result<()> {
        let mut out = Vec::with_capacity(4);
        frame::encode_close(code, &mut out);
        let result = self.send(out).await.0;
        self.close_sent.set(true);
        result
    }
}

/// The reading half: MQTT bytes out of binary frames.
pub struct WsRead<R, W> {
    inner: R,
    shared: Rc<Shared<W>>,
    /// Frame bytes read and not yet decoded.
    raw: Vec<u8>,
    payload_bytes_max: usize,
    ended: bool,
    /// Fragment order across frames (RFC 6455 §5.4).
    messages: frame::Messages,
}

/// The writing half: each write becomes one binary frame.
pub struct WsWrite<W> {
    shared: Rc<Shared<W>>,
    frame: Vec<u8>,
}

/// Splits a connection taken over after a 101 into MQTT's two halves. `leftover` bytes read
/// with the upgrade request are the first frame bytes; client frame payloads are limited to
/// `payload_bytes_max`.
pub fn split(
    up: Upgraded,
    payload_bytes_max: usize,
) -> (WsRead<AnyRead, AnyWrite>, WsWrite<AnyWrite>) {
    let (read, write) = up.stream.into_split();
    over(read, write, up.leftover, payload_bytes_max)
}

/// [`split`] over any pair of halves.
pub fn over<R: ReadBytes, W: WriteBytes>(
    read: R,
    write: W,
    leftover: Vec<u8>,
    payload_bytes_max: usize,
) -> (WsRead<R, W>, WsWrite<W>) {
    let shared = Rc::new(Shared {
        writer: SharedWriter::new(write),
        close_sent: Cell::new(false),
    });
    let reader = WsRead {
        inner: read,
        shared: shared.clone(),
        raw: leftover,
        payload_bytes_max,
        ended: false,
        messages: frame::Messages::default(),
    };
    (
        reader,
        WsWrite {
            shared,
            frame: Vec::new(),
        },
    )
}

/// What the buffered frames amounted to.
enum Decoded {
    /// Keep reading (data may have been appended).
    More,
    /// The client sent close.
    Closed,
    Violation(u16, String),
}

impl<R, W> WsRead<R, W> {
    /// Appends the payloads of every complete data frame in `raw` to `out`, and pongs for pings
    /// to `pongs`.
    fn decode_buffered(&mut self, out: &mut Vec<u8>, pongs: &mut Vec<u8>) -> Decoded {
        loop {
            let (consumed, closed) =
                match frame::decode_limited(&mut self.raw, self.payload_bytes_max) {
                    Ok(None) => return Decoded::More,
                    Err(e) => return Decoded::Violation(e.close_code(), e.to_string()),
                    Ok(Some((f, n))) => {
                        if f.opcode == Opcode::Text {
                            return Decoded::Violation(
                                CLOSE_UNSUPPORTED_DATA,
                                "text frame on an MQTT WebSocket".into(),
                            );
                        }
                        if let Err(e) = self.messages.check(&f) {
                            return Decoded::Violation(e.close_code(), e.to_string());
                        }
                        match f.opcode {
                            Opcode::Ping => {
                                frame::encode(Opcode::Pong, f.payload, pongs);
                                (n, false)
                            }
                            Opcode::Close => match frame::close_code(f.payload) {
                                Ok(_) => (n, true),
                                Err(e) => return Decoded::Violation(e.close_code(), e.to_string()),
                            },
                            Opcode::Pong => (n, false),
                            // Binary and continuation frames, in order (checked above).
                            _ => {
                                out.extend_from_slice(f.payload);
                                (n, false)
                            }
                        }
                    }
                };
            self.raw.drain(..consumed);
            if closed {
                return Decoded::Closed;
            }
        }
    }
}

impl<R: ReadBytes, W: WriteBytes> ReadBytes for WsRead<R, W> {
    async fn read_append(
        &mut self,
        mut buf: Vec<u8>,
        _min_spare: usize,
    ) -> (io::Result<usize>, Vec<u8>) {
        let start = buf.len();
        let mut pongs = Vec::new();
        loop {
            if self.ended {
                return (Ok(0), buf);
            }
            let decoded = self.decode_buffered(&mut buf, &mut pongs);
            if !pongs.is_empty() {
                let (result, _) = self.shared.send(std::mem::take(&mut pongs)).await;
                if let Err(e) = result {
                    return (Err(e), buf);
                }
            }
            match decoded {
                Decoded::More => {}
                // The session ends on 0 bytes; its writer's half-close then answers the close.
                Decoded::Closed => self.ended = true,
                Decoded::Violation(code, why) => {
                    self.ended = true;
                    let _ = self.shared.close(code).await;
                    let error = io::Error::new(io::ErrorKind::InvalidData, why);
                    return (Err(error), buf);
                }
            }
            if buf.len() > start {
                return (Ok(buf.len() - start), buf);
            }
            if self.ended {
                return (Ok(0), buf);
            }
            let (result, raw) = self
                .inner
                .read_append(std::mem::take(&mut self.raw), READ_BYTES)
                .await;
            self.raw = raw;
            match result {
                Ok(0) => return (Ok(0), buf),
                Ok(_) => {}
                Err(e) => return (Err(e), buf),
            }
        }
    }
}

impl<W: WriteBytes> WriteBytes for WsWrite<W> {
    async fn write_all(&mut self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        self.frame.clear();
        frame::encode(Opcode::Binary, &buf, &mut self.frame);
        let (result, returned) = self.shared.send(std::mem::take(&mut self.frame)).await;
        self.frame = returned;
        (result, buf)
    }

    async fn shutdown_write(&mut self) -> io::Result<()> {
        if !self.shared.close_sent.get() {
            self.shared.close(CLOSE_NORMAL).await?;
        }
        self.shared.writer.lock().await.shutdown_write().await
    }
}

#[cfg(test)]
mod tests {
    use super::frame::masked;
    use super::*;
    use std::cell::RefCell;
    use std::future::Future;
    use std::task::{Context, Poll, Waker};

    /// Hands out `chunks` one per read, then end of stream.
    struct Chunks(Vec<Vec<u8>>);

    impl ReadBytes for Chunks {
        async fn read_append(
            &mut self,
            mut buf: Vec<u8>,
            _min_spare: usize,
        ) -> (io::Result<usize>, Vec<u8>) {
            if self.0.is_empty() {
                return (Ok(0), buf);
            }
            let chunk = self.0.remove(0);
            buf.extend_from_slice(&chunk);
            (Ok(chunk.len()), buf)
        }
    }

    /// Records what was written.
    #[derive(Clone, Default)]
    struct Sink(Rc<RefCell<Vec<u8>>>);

    impl WriteBytes for Sink {
        async fn write_all(&mut self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
            self.0.borrow_mut().extend_from_slice(&buf);
            (Ok(()), buf)
        }

        async fn shutdown_write(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// Runs a future whose every await is ready at once (in-memory halves).
    fn ready<F: Future>(future: F) -> F::Output {
        let mut future = std::pin::pin!(future);
        let mut cx = Context::from_waker(Waker::noop());
        match future.as_mut().poll(&mut cx) {
            Poll::Ready(out) => out,
            Poll::Pending => panic!("in-memory I/O never waits"),
        }
    }

    /// Reads everything from frames delivered as `chunks` (with `leftover` first); returns the
    /// bytes read, whether reading ended in an error, and what the server wrote back.
    fn check(leftover: Vec<u8>, chunks: Vec<Vec<u8>>, expected: (&[u8], bool, &[u8])) {
        let written = Sink::default();
        let (mut reader, _writer) = over(Chunks(chunks), written.clone(), leftover, 1024);
        let mut got = Vec::new();
        let mut failed = false;
        for _ in 0..100 {
            let (result, returned) = ready(reader.read_append(std::mem::take(&mut got), 0));
            got = returned;
            match result {
                Ok(0) => break,
                Ok(_) => {}
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        let written = written.0.borrow().clone();
        assert_eq!((got.as_slice(), failed, written.as_slice()), expected);
    }

    #[test]
    fn frames_to_bytes() {
        let connect = b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x1e\x00\x00";
        // One packet in one frame.
        check(vec![], vec![masked(0x82, connect)], (connect, false, b""));
        // One packet over three frames (binary, continuation, final continuation), and the
        // frames themselves split across reads and the upgrade's leftover bytes.
        let mut frames = masked(0x02, &connect[..3]);
        frames.extend(masked(0x00, &connect[3..9]));
        frames.extend(masked(0x80, &connect[9..]));
        let (first, rest) = frames.split_at(4);
        let chunks: Vec<Vec<u8>> = rest.chunks(5).map(<[u8]>::to_vec).collect();
        check(first.to_vec(), chunks, (connect, false, b""));
        // Two packets in one frame.
        let two = [&connect[..], b"\xc0\x00"].concat();
        check(vec![], vec![masked(0x82, &two)], (&two, false, b""));
        // A ping between data frames is answered; a close ends the stream.
        let mut frames = masked(0x82, b"ab");
        frames.extend(masked(0x89, b"hi"));
        frames.extend(masked(0x82, b"cd"));
        frames.extend(masked(0x88, b"\x03\xe8"));
        frames.extend(masked(0x82, b"never read"));
        check(vec![], vec![frames], (b"abcd", false, b"\x8a\x02hi"));
        // A text frame is refused with 1003; an unmasked one with 1002; an oversized one 1009.
        check(
            vec![],
            vec![masked(0x81, b"x")],
            (b"", true, b"\x88\x02\x03\xeb"),
        );
        check(
            vec![],
            vec![b"\x82\x01x".to_vec()],
            (b"", true, b"\x88\x02\x03\xea"),
        );
        check(
            vec![],
            vec![masked(0x82, &[0; 1025])],
            (b"", true, b"\x88\x02\x03\xf1"),
        );
        // A continuation with no message started, and a bad close code, are protocol errors.
        check(
            vec![],
            vec![masked(0x80, b"x")],
            (b"", true, b"\x88\x02\x03\xea"),
        );
        check(
            vec![],
            vec![masked(0x88, b"\x03\xe7")],
            (b"", true, b"\x88\x02\x03\xea"),
        );
        // The peer vanishing mid-frame is an end of stream.
        check(
            vec![],
            vec![masked(0x82, b"abc")[..4].to_vec()],
            (b"", false, b""),
        );
    }

    #[test]
    fn writes_are_binary_frames_then_close() {
        let written = Sink::default();
        let (_reader, mut writer) = over(Chunks(vec![]), written.clone(), vec![], 1024);
        let (result, _) = ready(writer.write_all(b"\x20\x02\x00\x00".to_vec()));
        result.unwrap();
        ready(writer.shutdown_write()).unwrap();
        // After the close frame nothing more goes out.
        let (result, _) = ready(writer.write_all(b"late".to_vec()));
        assert!(result.is_err());
        assert_eq!(
            written.0.borrow().as_slice(),
            b"\x82\x04\x20\x02\x00\x00\x88\x02\x03\xe8"
        );
    }
}
