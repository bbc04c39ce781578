//! RFC 6455 framing errors against the real server, with a raw socket (tests/README.md
//! "WebSocket framing"): every violation is answered with a close frame carrying its code
//! (1002 protocol error, 1007 invalid payload, 1009 too big) and then the TCP connection ends;
//! valid sequences (fragments with control frames between them, pings, close codes a client may
//! send) keep working. These are the kinds of the Autobahn testsuite's sections 1–7, for a
//! server whose sockets ignore client data (docs/realtime.md: subscription sockets do not echo).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{ws_client_frame as frame, ws_raw_upgrade, Builder, Server};

/// What the server did after our frames: its close code (None: a close frame without one), or
/// that it closed without a close frame, or that it is still open after the wait.
#[derive(Debug, PartialEq)]
enum After {
    Closed(Option<u16>),
    DroppedWithoutClose,
    Open,
}

/// One server frame: (first byte, payload), or None at end of stream or timeout.
fn server_frame(s: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let mut head = [0u8; 2];
    s.read_exact(&mut head).ok()?;
    assert_eq!(head[1] & 0x80, 0, "server frames are not masked");
    let len = match head[1] & 0x7f {
        126 => {
            let mut b = [0u8; 2];
            s.read_exact(&mut b).ok()?;
            usize::from(u16::from_be_bytes(b))
        }
        127 => {
            let mut b = [0u8; 8];
            s.read_exact(&mut b).ok()?;
            u64::from_be_bytes(b) as usize
        }
        n => usize::from(n),
    };
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).ok()?;
    Some((head[0], payload))
}

fn open(server: &Server, path: &str, extra: &str) -> TcpStream {
    let (s, head) = ws_raw_upgrade(server.rest, path, extra);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    s
}

/// Sends `bytes` on a fresh subscription socket and reports what the server did; pongs the
/// server sent on the way come back too.
fn exchange(server: &Server, path: &str, extra: &str, bytes: &[u8]) -> (After, Vec<Vec<u8>>) {
    let mut s = open(server, path, extra);
    s.set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    // The server may already have closed (a refused frame mid-send): a write error is fine.
    let _ = s.write_all(bytes);
    let mut pongs = Vec::new();
    loop {
        match server_frame(&mut s) {
            Some((0x8a, payload)) => pongs.push(payload),
            Some((0x88, payload)) => {
                let code =
                    (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
                // Then the TCP connection ends (after the server's short linger for our close).
                let _ = s.write_all(&frame(0x88, &payload[..payload.len().min(2)]));
                let _ = s.shutdown(std::net::Shutdown::Write);
                s.set_read_timeout(Some(Duration::from_secs(10)))
                    .expect("timeout");
                let deadline = Instant::now() + Duration::from_secs(10);
                let mut rest = [0u8; 256];
                loop {
                    match s.read(&mut rest) {
                        Ok(0) => break,
                        Ok(_) => assert!(Instant::now() < deadline, "the server keeps sending"),
                        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                        Err(e) => panic!("the TCP connection stayed open after close: {e}"),
                    }
                }
                return (After::Closed(code), pongs);
            }
            Some(_) => {} // events of the subscription
            None => {
                let mut probe = [0u8; 1];
                s.set_read_timeout(Some(Duration::from_millis(50)))
                    .expect("timeout");
                return match s.read(&mut probe) {
                    Ok(0) => (After::DroppedWithoutClose, pongs),
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                        (After::DroppedWithoutClose, pongs)
                    }
                    _ => (After::Open, pongs),
                };
            }
        }
    }
}

fn close_payload(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason);
    p
}

fn cat(frames: &[Vec<u8>]) -> Vec<u8> {
    frames.concat()
}

/// Every kind of framing error on a REST subscription socket, each with its close code.
#[test]
fn framing_errors_close_with_their_rfc_codes() {
    let server = Server::start();
    let mut unmasked = vec![0x81u8, 0x02];
    unmasked.extend_from_slice(b"hi");
    // (what, bytes sent, close code expected)
    let mut cases: Vec<(String, Vec<u8>, u16)> = vec![
        // Section 2 kinds: control frames.
        ("ping of 126 bytes".into(), frame(0x89, &[b'x'; 126]), 1002),
        ("fragmented ping".into(), frame(0x09, b"p"), 1002),
        (
            "fragmented close".into(),
            frame(0x08, &close_payload(1000, b"")),
            1002,
        ),
        // Section 5: fragmentation.
        (
            "continuation, no message started".into(),
            frame(0x80, b"x"),
            1002,
        ),
        (
            "non-final continuation, no message".into(),
            frame(0x00, b"x"),
            1002,
        ),
        (
            "continuation after a finished message".into(),
            cat(&[frame(0x81, b"a"), frame(0x80, b"b")]),
            1002,
        ),
        (
            "text inside a fragmented text".into(),
            cat(&[frame(0x01, b"a"), frame(0x81, b"b")]),
            1002,
        ),
        (
            "binary inside a fragmented binary, with a ping between".into(),
            cat(&[frame(0x02, b"a"), frame(0x89, b""), frame(0x02, b"b")]),
            1002,
        ),
        // Section 6: UTF-8.
        (
            "invalid UTF-8 text".into(),
            frame(
                0x81,
                b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited",
            ),
            1007,
        ),
        ("lone continuation byte".into(), frame(0x81, b"\x80"), 1007),
        ("overlong encoding".into(), frame(0x81, b"\xc0\xaf"), 1007),
        (
            "code point above U+10FFFF".into(),
            frame(0x81, b"\xf4\x90\x80\x80"),
            1007,
        ),
        (
            "invalid UTF-8 across fragments".into(),
            cat(&[
                frame(0x01, "κό".as_bytes()),
                frame(0x00, b"\xe1"),
                frame(0x80, b"\x28\xa1"),
            ]),
            1007,
        ),
        (
            "text ending inside a character".into(),
            cat(&[frame(0x01, b"ab"), frame(0x80, b"\xf0\x9f\x98")]),
            1007,
        ),
        // Section 7: close frames.
        (
            "close with a 1-byte payload".into(),
            frame(0x88, b"\x03"),
            1002,
        ),
        (
            "close reason not UTF-8".into(),
            frame(0x88, &close_payload(1000, b"\xce\xba\xe1\xbd")),
            1007,
        ),
        // Masking and size.
        ("unmasked client frame".into(), unmasked, 1002),
        (
            "payload over the limit".into(),
            frame(0x82, &vec![0u8; 70_000]),
            1009,
        ),
    ];
    // Section 3: reserved bits.
    for rsv in [0x40u8, 0x20, 0x10, 0x70] {
        cases.push((
            format!("RSV {rsv:#x} on text"),
            frame(0x80 | rsv | 1, b"x"),
            1002,
        ));
        cases.push((
            format!("RSV {rsv:#x} on ping"),
            frame(0x80 | rsv | 9, b""),
            1002,
        ));
    }
    // Section 4: opcodes.
    for op in [3u8, 4, 5, 6, 7, 11, 12, 13, 14, 15] {
        cases.push((format!("opcode {op}"), frame(0x80 | op, b""), 1002));
        cases.push((
            format!("opcode {op} after a text message"),
            cat(&[frame(0x81, b"ok"), frame(0x80 | op, b"")]),
            1002,
        ));
    }
    for code in [
        0u16, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
    ] {
        cases.push((
            format!("close {code}"),
            frame(0x88, &close_payload(code, b"")),
            1002,
        ));
    }
    for (what, bytes, code) in cases {
        let (after, _) = exchange(&server, "/Dog/", "", &bytes);
        assert_eq!(after, After::Closed(Some(code)), "{what}");
    }
}

/// What must keep working: a client close with any code it may send is echoed; a close without
/// payload gets 1000; pings get their payload back, also between fragments; valid fragmented
/// text (split inside a character) and empty frames are accepted.
#[test]
fn valid_sequences_are_accepted() {
    let server = Server::start();
    for code in [
        1000u16, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999,
    ] {
        let (after, _) = exchange(
            &server,
            "/Dog/",
            "",
            &frame(0x88, &close_payload(code, "bye ∑".as_bytes())),
        );
        assert_eq!(after, After::Closed(Some(code)), "close {code}");
    }
    let (after, _) = exchange(&server, "/Dog/", "", &frame(0x88, b""));
    assert_eq!(after, After::Closed(Some(1000)));

    let text = "Hello-µ@ßöäüàá-UTF-8!! 𝄞".as_bytes();
    let cut = text.len() - 2;
    let bytes = cat(&[
        frame(0x89, &[b'p'; 125]),
        frame(0x01, &text[..cut]),
        frame(0x89, b"between"),
        frame(0x00, b""),
        frame(0x80, &text[cut..]),
        frame(0x81, b""),
        frame(0x82, b"\xff\x00"),
        frame(0x8a, b"unsolicited pong"),
        frame(0x88, &close_payload(1000, b"")),
    ]);
    let (after, pongs) = exchange(&server, "/Dog/", "", &bytes);
    assert_eq!(after, After::Closed(Some(1000)));
    assert_eq!(pongs, vec![vec![b'p'; 125], b"between".to_vec()]);

    // Without a violation the socket stays open.
    let (after, _) = exchange(&server, "/Dog/", "", &frame(0x81, b"ignored"));
    assert_eq!(after, After::Open);
}

/// MQTT over WebSocket uses the same rules (its text frames are 1003, tested in
/// `mqtt_transport.rs`).
#[test]
fn mqtt_over_websocket_closes_with_the_same_codes() {
    let server = Builder::new().start();
    let mqtt = "Sec-WebSocket-Protocol: mqtt\r\n";
    for (what, bytes, code) in [
        ("continuation, no message", frame(0x80, b"\x10"), 1002),
        (
            "binary inside a fragmented binary",
            cat(&[frame(0x02, b"\x10"), frame(0x82, b"\x00")]),
            1002,
        ),
        ("close 999", frame(0x88, &close_payload(999, b"")), 1002),
        (
            "close reason not UTF-8",
            frame(0x88, &close_payload(1000, b"\xff")),
            1007,
        ),
        ("reserved bit", frame(0xc2, b"\x10"), 1002),
    ] {
        let (after, _) = exchange(&server, "/mqtt", mqtt, &bytes);
        assert_eq!(after, After::Closed(Some(code)), "{what}");
    }
}
