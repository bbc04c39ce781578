//! MQTT durable sessions and v5 session features (SPEC §6.3 "Durable sessions") against the real
//! binary, with a raw TCP client for byte-exact checks (DUP flags, packet ids, Session Present).
//!
//! Which core a connection lands on is the kernel's choice (SO_REUSEPORT); the tests read the
//! server's `debug` line "core N: connection from <addr>" to know it, and reconnect until they
//! get the core they want.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{Builder, Server};

const SCHEMA: &str = r#"
type Dog @table @export { id: ID @primaryKey  name: String  age: Int }
"#;

struct Mqtt {
    server: Server,
    port: SocketAddr,
    app: tempfile::TempDir,
}

fn app_dir() -> tempfile::TempDir {
    let app = tempfile::tempdir().expect("app dir");
    std::fs::write(app.path().join("schema.graphql"), SCHEMA).expect("schema");
    std::fs::write(
        app.path().join("config.yaml"),
        "rest: true\ngraphqlSchema:\n  files: schema.graphql\n",
    )
    .expect("config");
    app
}

fn start_in(app: tempfile::TempDir, root: Option<tempfile::TempDir>) -> Mqtt {
    let mut b = Builder::new()
        .app(app.path())
        .arg("--LOGGING_LEVEL", "debug");
    if let Some(root) = root {
        b = b.root(root);
    }
    let server = b.start();
    let deadline = Instant::now() + Duration::from_secs(10);
    let port = loop {
        let line = server
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("server reports its MQTT listener");
        if let Some(rest) = line.split("MQTT (mqtt.network.port) listening on ").nth(1) {
            break rest
                .split_whitespace()
                .next()
                .and_then(|a| a.parse().ok())
                .expect("address");
        }
    };
    Mqtt { server, port, app }
}

/// Stops the server (SIGTERM) and starts it again on the same root and app.
fn restart(mut m: Mqtt) -> Mqtt {
    m.server.signal(libc::SIGTERM);
    assert!(
        m.server.wait_exit(Duration::from_secs(20)).is_some(),
        "server stops on SIGTERM"
    );
    let root = std::mem::replace(&mut m.server.root, tempfile::tempdir().expect("dir"));
    let app = std::mem::replace(&mut m.app, tempfile::tempdir().expect("dir"));
    drop(m);
    start_in(app, Some(root))
}

struct Raw(TcpStream);

impl Raw {
    /// Connects until the server's log says the connection is on `core` (any core if none);
    /// returns it with its core.
    fn on_core(m: &Mqtt, core: Option<usize>) -> (Raw, usize) {
        for _ in 0..60 {
            let s = TcpStream::connect(m.port).expect("connect");
            s.set_read_timeout(Some(Duration::from_secs(10))).ok();
            let local = s.local_addr().expect("local addr").to_string();
            let needle = format!("connection from {local}");
            let log = m.server.root.path().join("log").join("hdb.log");
            let deadline = Instant::now() + Duration::from_secs(5);
            let got = loop {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                if let Some(line) = text.lines().find(|l| l.contains(&needle)) {
                    break line
                        .split("core ")
                        .nth(1)
                        .and_then(|r| r.split(':').next())
                        .and_then(|n| n.trim().parse::<usize>().ok())
                        .expect("core number");
                }
                assert!(
                    Instant::now() < deadline,
                    "no log line for the connection from {local}"
                );
                std::thread::sleep(Duration::from_millis(20));
            };
            if core.is_none_or(|c| c == got) {
                return (Raw(s), got);
            }
        }
        panic!("never landed on core {core:?}");
    }
    fn send(&mut self, bytes: &[u8]) {
        self.0.write_all(bytes).expect("write");
    }
    /// Sends `disconnect` and waits for the server to close: the session is stored by then.
    fn leave(mut self, disconnect: &[u8]) {
        self.send(disconnect);
        assert_eq!(self.packet(), None, "closed after DISCONNECT");
    }
    /// One whole packet, or None when the server closed the connection or was silent too long.
    fn packet(&mut self) -> Option<Vec<u8>> {
        let mut head = [0u8; 1];
        if self.0.read_exact(&mut head).is_err() {
            return None;
        }
        let mut out = vec![head[0]];
        let mut len = 0usize;
        for i in 0..4 {
            let mut b = [0u8; 1];
            self.0.read_exact(&mut b).ok()?;
            out.push(b[0]);
            len |= usize::from(b[0] & 0x7f) << (7 * i);
            if b[0] & 0x80 == 0 {
                break;
            }
        }
        let mut body = vec![0u8; len];
        self.0.read_exact(&mut body).ok()?;
        out.extend_from_slice(&body);
        Some(out)
    }
}

fn string(s: &str) -> Vec<u8> {
    let mut out = (s.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(s.as_bytes());
    out
}

fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    let mut len = body.len();
    loop {
        let mut b = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            b |= 0x80;
        }
        out.push(b);
        if len == 0 {
            break;
        }
    }
    out.extend_from_slice(body);
    out
}

/// CONNECT at 3.1.1 (`level` 4) or 5; `props` are v5 properties (ignored at 4).
fn connect(level: u8, id: &str, clean: bool, props: &[u8]) -> Vec<u8> {
    let mut body = string("MQTT");
    body.push(level);
    body.push(if clean { 0x02 } else { 0 });
    body.extend_from_slice(&0u16.to_be_bytes());
    if level == 5 {
        body.push(props.len() as u8);
        body.extend_from_slice(props);
    }
    body.extend_from_slice(&string(id));
    packet(0x10, &body)
}

fn subscribe(level: u8, id: u16, filter: &str, options: u8) -> Vec<u8> {
    let mut body = id.to_be_bytes().to_vec();
    if level == 5 {
        body.push(0);
    }
    body.extend_from_slice(&string(filter));
    body.push(options);
    packet(0x82, &body)
}

fn publish(level: u8, qos: u8, topic: &str, id: u16, payload: &[u8]) -> Vec<u8> {
    let mut body = string(topic);
    if qos > 0 {
        body.extend_from_slice(&id.to_be_bytes());
    }
    if level == 5 {
        body.push(0);
    }
    body.extend_from_slice(payload);
    packet(0x30 | (qos << 1), &body)
}

fn puback(id: u16) -> Vec<u8> {
    packet(0x40, &id.to_be_bytes())
}

/// A received PUBLISH at 3.1.1: (dup, qos, topic, packet id, payload).
fn parse_publish(p: &[u8]) -> (bool, u8, String, u16, Vec<u8>) {
    assert_eq!(p[0] & 0xf0, 0x30, "PUBLISH expected, got {p:02x?}");
    let dup = p[0] & 0x08 != 0;
    let qos = (p[0] >> 1) & 3;
    let mut i = 1;
    while p[i] & 0x80 != 0 {
        i += 1;
    }
    i += 1;
    let tl = usize::from(u16::from_be_bytes([p[i], p[i + 1]]));
    let topic = String::from_utf8(p[i + 2..i + 2 + tl].to_vec()).expect("topic");
    i += 2 + tl;
    let mut id = 0;
    if qos > 0 {
        id = u16::from_be_bytes([p[i], p[i + 1]]);
        i += 2;
    }
    (dup, qos, topic, id, p[i..].to_vec())
}

/// Reads PUBLISHes until `count` arrived; returns (message number, dup, packet id) each.
fn read_messages(raw: &mut Raw, count: usize) -> Vec<(u64, bool, u16)> {
    let mut out = Vec::with_capacity(count);
    while out.len() < count {
        let p = raw
            .packet()
            .unwrap_or_else(|| panic!("only {} of {count} messages came", out.len()));
        let (dup, qos, topic, id, payload) = parse_publish(&p);
        assert_eq!((qos, topic.as_str()), (1, "Dog/q"));
        let v: serde_json::Value = serde_json::from_slice(&payload).expect("json payload");
        out.push((v["n"].as_u64().expect("n"), dup, id));
    }
    out
}

/// Done-when 3 of issue 8: a durable session with 1,000 queued QoS 1 messages survives a server
/// restart and a reconnect to the other core; every message is delivered exactly once after
/// PUBACK — in order, no gaps, and no duplicates once acknowledged.
#[test]
fn durable_session_survives_restart_and_other_core() {
    const MESSAGES: u64 = 1000;
    const ACKED_FIRST: u64 = 400;
    const READ_FIRST: usize = 600;
    let m = start_in(app_dir(), None);

    // A 3.1.1 durable session (clean = 0) subscribes, then leaves with DISCONNECT.
    let (mut sub, _) = Raw::on_core(&m, None);
    sub.send(&connect(4, "durable-1", false, &[]));
    assert_eq!(sub.packet(), Some(vec![0x20, 2, 0, 0]), "new session");
    sub.send(&subscribe(4, 1, "Dog/#", 1));
    assert_eq!(sub.packet(), Some(vec![0x90, 3, 0, 1, 1]));
    sub.leave(&[0xe0, 0]);

    // 1,000 QoS 1 messages while it is away.
    let (mut publisher, _) = Raw::on_core(&m, None);
    publisher.send(&connect(4, "publisher", true, &[]));
    assert_eq!(publisher.packet(), Some(vec![0x20, 2, 0, 0]));
    for n in 0..MESSAGES {
        let id = (n % 60_000) as u16 + 1;
        publisher.send(&publish(
            4,
            1,
            "Dog/q",
            id,
            format!("{{\"n\":{n}}}").as_bytes(),
        ));
    }
    for n in 0..MESSAGES {
        let id = (n % 60_000) as u16 + 1;
        assert_eq!(publisher.packet(), Some(puback(id)), "PUBACK {n}");
    }
    drop(publisher);

    let m = restart(m);

    // Resume: Session Present = 1, the queued messages in order. Acknowledge the first 400 of
    // the 600 read, then drop the connection without DISCONNECT.
    let (mut first, core) = Raw::on_core(&m, None);
    first.send(&connect(4, "durable-1", false, &[]));
    assert_eq!(first.packet(), Some(vec![0x20, 2, 1, 0]), "session present");
    let got = read_messages(&mut first, READ_FIRST);
    let numbers: Vec<u64> = got.iter().map(|g| g.0).collect();
    assert_eq!(numbers, (0..READ_FIRST as u64).collect::<Vec<_>>());
    assert!(got.iter().all(|g| !g.1), "first delivery has DUP = 0");
    for g in got.iter().take(ACKED_FIRST as usize) {
        first.send(&puback(g.2));
    }
    // A PINGRESP after the PUBACKs proves the server read them before the connection drops.
    first.send(&[0xc0, 0]);
    loop {
        let p = first.packet().expect("PINGRESP");
        if p == [0xd0, 0] {
            break;
        }
        assert_eq!(p[0] & 0xf0, 0x30, "only PUBLISHes before PINGRESP");
    }
    let unacked: Vec<(u64, u16)> = got
        .iter()
        .skip(ACKED_FIRST as usize)
        .map(|g| (g.0, g.2))
        .collect();
    drop(first);

    // Reconnect on the other core: exactly the unacknowledged ones, in order, with DUP = 1 and
    // their old packet ids.
    let (mut second, other) = Raw::on_core(&m, Some(1 - core));
    assert_ne!(other, core);
    second.send(&connect(4, "durable-1", false, &[]));
    assert_eq!(
        second.packet(),
        Some(vec![0x20, 2, 1, 0]),
        "session present"
    );
    let rest = read_messages(&mut second, (MESSAGES - ACKED_FIRST) as usize);
    let numbers: Vec<u64> = rest.iter().map(|g| g.0).collect();
    assert_eq!(numbers, (ACKED_FIRST..MESSAGES).collect::<Vec<_>>());
    for (i, (n, id)) in unacked.iter().enumerate() {
        assert_eq!(
            (rest[i].0, rest[i].1, rest[i].2),
            (*n, true, *id),
            "resend of {n}"
        );
    }
    // The server had sent all 1,000 at once (its window is 1,000 at 3.1.1), so the ones the
    // client never read are resends too.
    assert!(
        rest.iter().all(|g| g.1),
        "every unacknowledged one is a resend"
    );
    for g in &rest {
        second.send(&puback(g.2));
    }
    second.leave(&[0xe0, 0]);

    // Everything acknowledged: the next resume has nothing to send.
    let (mut third, _) = Raw::on_core(&m, None);
    third.send(&connect(4, "durable-1", false, &[]));
    assert_eq!(third.packet(), Some(vec![0x20, 2, 1, 0]));
    third.send(&[0xc0, 0]);
    assert_eq!(
        third.packet(),
        Some(vec![0xd0, 0]),
        "no message after all were acknowledged"
    );

    // A clean session discards it.
    third.leave(&[0xe0, 0]);
    let (mut clean, _) = Raw::on_core(&m, None);
    clean.send(&connect(4, "durable-1", true, &[]));
    assert_eq!(clean.packet(), Some(vec![0x20, 2, 0, 0]));
    clean.leave(&[0xe0, 0]);
    let (mut again, _) = Raw::on_core(&m, None);
    again.send(&connect(4, "durable-1", false, &[]));
    assert_eq!(
        again.packet(),
        Some(vec![0x20, 2, 0, 0]),
        "discarded by the clean one"
    );
}

/// v5 Session Expiry Interval: a session with expiry 1 s is gone 2 s after the disconnect; one
/// with expiry 0 ends with its connection; live events reach a resumed session after the replay.
#[test]
fn v5_session_expiry() {
    let m = start_in(app_dir(), None);
    // Property 0x11 Session Expiry Interval, four bytes.
    let expiry = |s: u32| {
        let mut p = vec![0x11];
        p.extend_from_slice(&s.to_be_bytes());
        p
    };
    let (mut a, _) = Raw::on_core(&m, None);
    a.send(&connect(5, "exp-1", true, &expiry(1)));
    let ack = a.packet().expect("CONNACK");
    assert_eq!(&ack[..4], &[0x20, ack[1], 0, 0]);
    a.send(&subscribe(5, 1, "Dog/#", 1));
    assert_eq!(a.packet().map(|p| p[0]), Some(0x90));
    a.leave(&[0xe0, 0]);
    // Within the interval: resumed.
    let (mut b, _) = Raw::on_core(&m, None);
    b.send(&connect(5, "exp-1", false, &expiry(1)));
    assert_eq!(b.packet().map(|p| p[2]), Some(1), "session present");
    b.leave(&[0xe0, 0]);
    std::thread::sleep(Duration::from_millis(2200));
    let (mut c, _) = Raw::on_core(&m, None);
    c.send(&connect(5, "exp-1", false, &expiry(60)));
    assert_eq!(c.packet().map(|p| p[2]), Some(0), "expired");
    c.send(&subscribe(5, 1, "Dog/#", 1));
    assert_eq!(c.packet().map(|p| p[0]), Some(0x90));
    // DISCONNECT with Session Expiry 0 ends it now.
    c.leave(&[0xe0, 7, 0, 5, 0x11, 0, 0, 0, 0]);
    let (mut d, _) = Raw::on_core(&m, None);
    d.send(&connect(5, "exp-1", false, &expiry(60)));
    assert_eq!(
        d.packet().map(|p| p[2]),
        Some(0),
        "ended by DISCONNECT expiry 0"
    );
}
