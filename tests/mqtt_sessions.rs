//! MQTT durable sessions and v5 session features (docs/mqtt.md "Durable sessions") against the real
//! binary, with a raw TCP client for byte-exact checks (DUP flags, packet ids, Session Present).
//!
//! Which core a connection lands on is the kernel's choice (SO_REUSEPORT); the tests read the
//! server's `debug` line "core N: connection from <addr>" to know it, and reconnect until they
//! get the core they want.

mod common;

use std::io::Write;
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
    start_with(app, root, &[])
}

fn start_with(
    app: tempfile::TempDir,
    root: Option<tempfile::TempDir>,
    args: &[(&str, &str)],
) -> Mqtt {
    let mut b = Builder::new()
        .app(app.path())
        .arg("--LOGGING_LEVEL", "debug");
    for (k, v) in args {
        b = b.arg(k, v);
    }
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
fn restart(m: Mqtt) -> Mqtt {
    restart_with(m, &[])
}

fn restart_with(mut m: Mqtt, args: &[(&str, &str)]) -> Mqtt {
    m.server.signal(libc::SIGTERM);
    assert!(
        m.server.wait_exit(Duration::from_secs(20)).is_some(),
        "server stops on SIGTERM"
    );
    let root = std::mem::replace(&mut m.server.root, tempfile::tempdir().expect("dir"));
    let app = std::mem::replace(&mut m.app, tempfile::tempdir().expect("dir"));
    drop(m);
    start_with(app, Some(root), args)
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
        common::read_mqtt_packet(&mut self.0)
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

/// `mqtt.maxKeepAlive`: a v5 client asking for no keep alive is told the cap as Server Keep
/// Alive (property 0x13) and, silent, is closed with DISCONNECT 0x8D; a 3.1.1 client cannot be
/// told, so it is not held to the cap.
#[test]
fn v5_server_keep_alive_cap() {
    let m = start_with(app_dir(), None, &[("--MQTT_MAXKEEPALIVE", "1")]);
    let (mut v5, _) = Raw::on_core(&m, None);
    v5.send(&connect(5, "ka-5", true, &[]));
    let ack = v5.packet().expect("CONNACK");
    assert!(
        ack.windows(3).any(|w| w == [0x13, 0, 1]),
        "Server Keep Alive 1 in {ack:?}"
    );
    let (mut v4, _) = Raw::on_core(&m, None);
    v4.send(&connect(4, "ka-4", true, &[]));
    assert_eq!(v4.packet(), Some(vec![0x20, 2, 0, 0]));
    let closing = v5.packet().expect("DISCONNECT after 1.5 s of silence");
    assert_eq!(
        (closing[0], closing.get(2)),
        (0xe0, Some(&0x8d)),
        "{closing:?}"
    );
    // The 3.1.1 client, just as silent, is still served.
    v4.send(&[0xc0, 0]);
    assert_eq!(v4.packet(), Some(vec![0xd0, 0]));
}

// ---- v5 features with paho-mqtt (Python) ----

/// One scenario per run: `python3 - <port> <scenario>` prints a JSON result.
const PAHO5: &str = r#"
import json, sys, time, threading
import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.subscribeoptions import SubscribeOptions

port, scenario = int(sys.argv[1]), sys.argv[2]
got = {}
lock = threading.Lock()

def client(name):
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=name, protocol=mqtt.MQTTv5)
    got[name] = []
    def on_message(c, u, m):
        props = {}
        if hasattr(m, "properties") and m.properties is not None:
            for k in ("UserProperty", "ContentType", "PayloadFormatIndicator", "ResponseTopic",
                      "CorrelationData", "MessageExpiryInterval", "SubscriptionIdentifier"):
                if hasattr(m.properties, k):
                    v = getattr(m.properties, k)
                    props[k] = v.decode() if isinstance(v, bytes) else v
        with lock:
            got[name].append({"topic": m.topic, "retain": bool(m.retain),
                              "payload": m.payload.decode(errors="replace"), "props": props})
    c.on_message = on_message
    c.connect("127.0.0.1", port)
    c.loop_start()
    return c

def sub(c, topic, ident=None, **opts):
    props = None
    if ident is not None:
        props = Properties(PacketTypes.SUBSCRIBE)
        props.SubscriptionIdentifier = ident
    r = c.subscribe(topic, options=SubscribeOptions(qos=1, **opts), properties=props)
    time.sleep(0.3)

def wait(name, n):
    deadline = time.time() + 5
    while time.time() < deadline and len(got[name]) < n:
        time.sleep(0.05)
    time.sleep(0.3)

if scenario == "passthrough":
    s = client("s"); p = client("p")
    sub(s, "Dog/m")
    props = Properties(PacketTypes.PUBLISH)
    props.UserProperty = [("a", "1"), ("b", "2")]
    props.ContentType = "text/plain"
    props.PayloadFormatIndicator = 1
    props.ResponseTopic = "Dog/reply"
    props.CorrelationData = b"cid-1"
    props.MessageExpiryInterval = 60
    p.publish("Dog/m", b"hello", qos=1, properties=props).wait_for_publish(5)
    wait("s", 1)
elif scenario == "no_local":
    a = client("a"); b = client("b")
    sub(a, "Dog/nl", noLocal=True)
    sub(b, "Dog/nl")
    a.publish("Dog/nl", b'{"from":"a"}', qos=1).wait_for_publish(5)
    b.publish("Dog/nl", b'{"from":"b"}', qos=1).wait_for_publish(5)
    wait("b", 2)
elif scenario == "retain_as_published":
    r = client("rap"); n = client("plain"); p = client("p")
    sub(r, "Dog/#", retainAsPublished=True, retainHandling=2)
    sub(n, "Dog/#", retainHandling=2)
    p.publish("Dog/rap1", b'{"name":"x"}', qos=1, retain=True).wait_for_publish(5)
    p.publish("Dog/rap2", b'{"name":"y"}', qos=1).wait_for_publish(5)
    wait("rap", 2); wait("plain", 2)
elif scenario == "subscription_identifiers":
    s = client("s"); p = client("p")
    sub(s, "Dog/#", ident=7, retainHandling=2)
    sub(s, "Dog/+", ident=9, retainHandling=2)
    p.publish("Dog/si", b'{"n":1}', qos=1).wait_for_publish(5)
    wait("s", 1)
for c in list(globals().values()):
    if isinstance(c, mqtt.Client):
        c.loop_stop()
print(json.dumps(got))
"#;

/// Runs a paho v5 scenario; None when paho-mqtt is missing (the test then says so and passes).
fn paho5(m: &Mqtt, scenario: &str) -> Option<serde_json::Value> {
    if !common::have_tool(
        "python3",
        &["-c", "import paho.mqtt"],
        "pip install paho-mqtt",
    ) {
        return None;
    }
    let out = std::process::Command::new("python3")
        .args(["-c", PAHO5, &m.port.port().to_string(), scenario])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "paho {scenario}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(serde_json::from_slice(&out.stdout).expect("json"))
}

#[test]
fn v5_properties_pass_through() {
    let m = start_in(app_dir(), None);
    let Some(got) = paho5(&m, "passthrough") else {
        return;
    };
    let s = got["s"].as_array().expect("list");
    assert_eq!(s.len(), 1, "{got}");
    let props = &s[0]["props"];
    assert_eq!(s[0]["payload"], "hello");
    assert_eq!(
        props["UserProperty"],
        serde_json::json!([["a", "1"], ["b", "2"]])
    );
    assert_eq!(props["ContentType"], "text/plain");
    assert_eq!(props["PayloadFormatIndicator"], 1);
    assert_eq!(props["ResponseTopic"], "Dog/reply");
    assert_eq!(props["CorrelationData"], "cid-1");
    let expiry = props["MessageExpiryInterval"].as_u64().expect("expiry");
    assert!((1..=60).contains(&expiry), "{props}");
}

#[test]
fn v5_no_local() {
    let m = start_in(app_dir(), None);
    let Some(got) = paho5(&m, "no_local") else {
        return;
    };
    let from = |name: &str| -> Vec<String> {
        got[name]
            .as_array()
            .expect("list")
            .iter()
            .map(|x| x["payload"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    assert_eq!(from("a"), vec![r#"{"from":"b"}"#], "a does not get its own");
    assert_eq!(from("b").len(), 2, "{got}");
}

#[test]
fn v5_retain_as_published() {
    let m = start_in(app_dir(), None);
    let Some(got) = paho5(&m, "retain_as_published") else {
        return;
    };
    let flags = |name: &str| -> Vec<(String, bool)> {
        got[name]
            .as_array()
            .expect("list")
            .iter()
            .map(|x| {
                (
                    x["topic"].as_str().unwrap_or_default().to_string(),
                    x["retain"].as_bool().unwrap_or_default(),
                )
            })
            .collect()
    };
    assert_eq!(
        flags("rap"),
        vec![
            ("Dog/rap1".to_string(), true),
            ("Dog/rap2".to_string(), false)
        ]
    );
    assert_eq!(
        flags("plain"),
        vec![
            ("Dog/rap1".to_string(), false),
            ("Dog/rap2".to_string(), false)
        ]
    );
}

#[test]
fn v5_subscription_identifiers() {
    let m = start_in(app_dir(), None);
    let Some(got) = paho5(&m, "subscription_identifiers") else {
        return;
    };
    let s = got["s"].as_array().expect("list");
    assert_eq!(s.len(), 1, "one delivery for two matching filters: {got}");
    let mut ids: Vec<u64> = s[0]["props"]["SubscriptionIdentifier"]
        .as_array()
        .expect("identifiers")
        .iter()
        .filter_map(|v| v.as_u64())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, vec![7, 9]);
}

/// The client's Receive Maximum bounds our unacknowledged QoS 1 publishes; each PUBACK lets one
/// more out.
#[test]
fn v5_receive_maximum_flow_control() {
    let m = start_in(app_dir(), None);
    let (mut s, _) = Raw::on_core(&m, None);
    // Property 0x21 Receive Maximum = 2.
    s.send(&connect(5, "rm", true, &[0x21, 0, 2]));
    assert_eq!(s.packet().map(|p| p[3]), Some(0));
    s.send(&subscribe(5, 1, "Dog/#", 1));
    assert_eq!(s.packet().map(|p| p[0]), Some(0x90));
    let (mut p, _) = Raw::on_core(&m, None);
    p.send(&connect(5, "rm-pub", true, &[]));
    assert_eq!(p.packet().map(|p| p[3]), Some(0));
    for i in 0..5u16 {
        p.send(&publish(
            5,
            1,
            "Dog/q",
            i + 1,
            format!("{{\"n\":{i}}}").as_bytes(),
        ));
        assert_eq!(p.packet().map(|x| x[0]), Some(0x40));
    }
    let read_ids = |s: &mut Raw, n: usize| -> Vec<u16> {
        (0..n)
            .map(|_| {
                let pk = s.packet().expect("PUBLISH");
                assert_eq!(pk[0] & 0xf0, 0x30, "{pk:02x?}");
                // fixed header (2), topic length + "Dog/q" (7): the packet id follows.
                u16::from_be_bytes([pk[9], pk[10]])
            })
            .collect()
    };
    let first = read_ids(&mut s, 2);
    // Nothing more while both are unacknowledged: the next packet is our PINGRESP.
    s.send(&[0xc0, 0]);
    assert_eq!(s.packet(), Some(vec![0xd0, 0]));
    s.send(&packet(0x40, &first[0].to_be_bytes()));
    let next = read_ids(&mut s, 1);
    s.send(&[0xc0, 0]);
    assert_eq!(s.packet(), Some(vec![0xd0, 0]), "one PUBACK, one more");
    s.send(&packet(0x40, &first[1].to_be_bytes()));
    s.send(&packet(0x40, &next[0].to_be_bytes()));
    assert_eq!(read_ids(&mut s, 2).len(), 2, "the last two");
}

/// `$share/<group>/<filter>`: each message to exactly one member of each group, round-robin
/// across cores; a plain subscriber beside the group still gets every message.
#[test]
fn v5_shared_subscriptions_across_cores() {
    const MESSAGES: u64 = 20;
    let m = start_in(app_dir(), None);
    let mut members = Vec::new();
    let mut cores = Vec::new();
    // Two members on different cores, plus a third anywhere.
    for (name, want) in [("m0", None), ("m1", None), ("m2", None)] {
        let want = match (name, cores.first()) {
            ("m1", Some(c)) => Some(1 - *c),
            _ => want,
        };
        let (mut s, core) = Raw::on_core(&m, want);
        s.send(&connect(5, name, true, &[]));
        assert_eq!(s.packet().map(|p| p[3]), Some(0));
        s.send(&subscribe(5, 1, "$share/g/Dog/#", 1));
        assert_eq!(
            s.packet().map(|p| p[0..6].to_vec()),
            Some(vec![0x90, 4, 0, 1, 0, 1])
        );
        members.push(s);
        cores.push(core);
    }
    assert_ne!(cores[0], cores[1], "members on both cores");
    let (mut plain, _) = Raw::on_core(&m, None);
    plain.send(&connect(5, "plain", true, &[]));
    assert_eq!(plain.packet().map(|p| p[3]), Some(0));
    plain.send(&subscribe(5, 1, "Dog/#", 1));
    assert_eq!(plain.packet().map(|p| p[0]), Some(0x90));
    let (mut p, _) = Raw::on_core(&m, None);
    p.send(&connect(5, "share-pub", true, &[]));
    assert_eq!(p.packet().map(|p| p[3]), Some(0));
    for i in 0..MESSAGES {
        p.send(&publish(
            5,
            1,
            "Dog/q",
            i as u16 + 1,
            format!("{{\"n\":{i}}}").as_bytes(),
        ));
        assert_eq!(p.packet().map(|x| x[0]), Some(0x40));
    }
    // The plain subscriber has all of them once they are all dispatched.
    let mut all = Vec::new();
    while all.len() < MESSAGES as usize {
        let pk = plain.packet().expect("PUBLISH");
        let body = String::from_utf8_lossy(&pk).to_string();
        all.push(body);
    }
    // Each member reads what it got until a PINGRESP; a core may dispatch a little later than
    // the plain subscriber's, so read in rounds until the group has them all (bounded).
    let mut counts = vec![0; members.len()];
    let mut seen = std::collections::BTreeSet::new();
    for _round in 0..100 {
        for (i, s) in members.iter_mut().enumerate() {
            s.send(&[0xc0, 0]);
            loop {
                let pk = s.packet().expect("packet");
                if pk == [0xd0, 0] {
                    break;
                }
                assert_eq!(pk[0] & 0xf0, 0x30);
                let text = String::from_utf8_lossy(&pk).to_string();
                let at = text.find("{\"n\":").expect("payload");
                assert!(
                    seen.insert(text[at..].to_string()),
                    "delivered to one member only"
                );
                counts[i] += 1;
            }
        }
        if seen.len() >= MESSAGES as usize {
            break;
        }
    }
    assert_eq!(
        seen.len(),
        MESSAGES as usize,
        "every message to the group: {counts:?}"
    );
    assert!(
        counts.iter().all(|c| *c > 0),
        "round-robin reaches every member: {counts:?}"
    );
}

/// Ours: more QoS 2 publishes awaiting PUBREL than our Receive Maximum → DISCONNECT `0x93`.
#[test]
fn v5_client_exceeding_our_receive_maximum_is_disconnected() {
    let m = start_in(app_dir(), None);
    let (mut p, _) = Raw::on_core(&m, None);
    p.send(&connect(5, "flood", true, &[]));
    let ack = p.packet().expect("CONNACK");
    // CONNACK properties carry Receive Maximum (0x21, two bytes), after Shared Subscription
    // Available (0x2A, one byte).
    let at = ack
        .windows(3)
        .position(|w| w[1] == 1 && w[2] == 0x21 && w[0] == 0x2a)
        .expect("Receive Maximum in CONNACK")
        + 2;
    let ours = u16::from_be_bytes([ack[at + 1], ack[at + 2]]);
    for i in 0..=ours {
        p.send(&publish(5, 2, "Dog/q", i + 1, b"{}"));
    }
    let mut last = None;
    while let Some(pk) = p.packet() {
        last = Some(pk);
    }
    assert_eq!(last, Some(vec![0xe0, 1, 0x93]));
}

/// Maximum Packet Size both ways: ours (from `http.maxBodySize`) is advertised and enforced with
/// `0x95`; the client's keeps larger PUBLISHes from being sent to it.
#[test]
fn v5_maximum_packet_size_both_ways() {
    let m = start_in(app_dir(), None);
    let (mut s, _) = Raw::on_core(&m, None);
    // Property 0x27 Maximum Packet Size = 64.
    s.send(&connect(5, "small", true, &[0x27, 0, 0, 0, 64]));
    assert_eq!(s.packet().map(|p| p[3]), Some(0));
    s.send(&subscribe(5, 1, "Dog/#", 0));
    assert_eq!(s.packet().map(|p| p[0]), Some(0x90));
    let (mut p, _) = Raw::on_core(&m, None);
    p.send(&connect(5, "big", true, &[]));
    assert_eq!(p.packet().map(|p| p[3]), Some(0));
    let big = format!("{{\"pad\":\"{}\"}}", "x".repeat(200));
    p.send(&publish(5, 1, "Dog/q", 1, big.as_bytes()));
    assert_eq!(p.packet().map(|x| x[0]), Some(0x40));
    p.send(&publish(5, 1, "Dog/q", 2, b"{\"n\":1}"));
    assert_eq!(p.packet().map(|x| x[0]), Some(0x40));
    let got = s.packet().expect("the small one");
    assert!(
        String::from_utf8_lossy(&got).contains("{\"n\":1}"),
        "the oversized one was skipped: {got:02x?}"
    );
}

/// docs/mqtt.md Events: `connection`, `connected`, `auth-failed`, `disconnected` as `info` lines
/// tagged `mqtt` and as counters in `/metrics`.
#[test]
fn events_as_log_lines_and_metrics() {
    let m = start_in(app_dir(), None);
    let (mut ok, _) = Raw::on_core(&m, None);
    ok.send(&connect(4, "ev-1", true, &[]));
    assert_eq!(ok.packet(), Some(vec![0x20, 2, 0, 0]));
    ok.leave(&[0xe0, 0]);
    // CONNECT with user name and password flags and a wrong password → 0x04.
    let (mut bad, _) = Raw::on_core(&m, None);
    let mut body = string("MQTT");
    body.extend_from_slice(&[4, 0xc2, 0, 0]);
    body.extend_from_slice(&string("ev-2"));
    body.extend_from_slice(&string("test_admin"));
    body.extend_from_slice(&string("wrong"));
    bad.send(&packet(0x10, &body));
    assert_eq!(bad.packet(), Some(vec![0x20, 2, 0, 4]));
    drop(bad);
    let read_metrics = || {
        ureq::get(&format!("{}metrics", m.server.ops_url()))
            .call()
            .expect("GET /metrics")
            .into_string()
            .expect("body")
    };
    let count_in = |metrics: &str, event: &str| -> u64 {
        let needle = format!("tidepool_mqtt_events_total{{event=\"{event}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&needle))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no {event} counter in:\n{metrics}")) as u64
    };
    // The socket closes just before the session logs its end: poll (bounded) for it.
    let mut metrics = read_metrics();
    for _ in 0..100 {
        if count_in(&metrics, "disconnected") > 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
        metrics = read_metrics();
    }
    let count = |event: &str| count_in(&metrics, event);
    assert!(count("connection") >= 2, "{metrics}");
    assert_eq!(count("connected"), 1);
    assert_eq!(count("auth-failed"), 1);
    assert_eq!(count("disconnected"), 1);
    // The logging thread writes behind: read the file until every line is there (bounded).
    // `connected`/`disconnected` are connection lines at the default level (`logging.connections`).
    let has = |log: &str, event: &str| {
        log.lines().any(|l| match event {
            "connected" | "disconnected" => {
                l.contains("[notify]") && l.contains(&format!("]: mqtt {event}: "))
            }
            _ => l.contains("[info] [mqtt]") && l.contains(&format!("]: {event}: ")),
        })
    };
    let events = ["connection", "connected", "auth-failed", "disconnected"];
    let path = m.server.root.path().join("log").join("hdb.log");
    let mut log = String::new();
    for _ in 0..100 {
        log = std::fs::read_to_string(&path).unwrap_or_default();
        if events.iter().all(|e| has(&log, e)) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for event in events {
        assert!(has(&log, event), "no {event} line in:\n{log}");
    }
}

/// `mqtt.generalTopics: true`: topics outside tables behave as in a plain broker — wildcards over
/// whole topics (`$` topics excepted), retained messages kept in the system database across a
/// restart, an empty retained publish clears; payloads are the bytes published.
#[test]
fn general_topics_behind_a_config_key() {
    const ON: &[(&str, &str)] = &[("--MQTT_GENERALTOPICS", "true")];
    let m = start_with(app_dir(), None, ON);
    let (mut s, _) = Raw::on_core(&m, None);
    s.send(&connect(4, "g-sub", true, &[]));
    assert_eq!(s.packet(), Some(vec![0x20, 2, 0, 0]));
    s.send(&subscribe(4, 1, "#", 1));
    assert_eq!(s.packet(), Some(vec![0x90, 3, 0, 1, 1]));
    let (mut p, _) = Raw::on_core(&m, None);
    p.send(&connect(4, "g-pub", true, &[]));
    assert_eq!(p.packet(), Some(vec![0x20, 2, 0, 0]));
    let mut retained = publish(4, 1, "a/b", 1, b"\x00raw");
    retained[0] |= 1;
    p.send(&retained);
    assert_eq!(p.packet(), Some(puback(1)));
    p.send(&publish(4, 1, "$SYS/x", 2, b"hidden"));
    assert_eq!(p.packet(), Some(puback(2)));
    p.send(&publish(4, 1, "x/y", 3, b"plain"));
    assert_eq!(p.packet(), Some(puback(3)));
    let mut got = Vec::new();
    for _ in 0..2 {
        let (_, qos, topic, id, payload) = parse_publish(&s.packet().expect("PUBLISH"));
        s.send(&puback(id));
        got.push((qos, topic, payload));
    }
    assert_eq!(
        got,
        vec![
            (1, "a/b".to_string(), b"\x00raw".to_vec()),
            (1, "x/y".to_string(), b"plain".to_vec())
        ],
        "'#' does not match $SYS/x"
    );
    s.leave(&[0xe0, 0]);
    p.leave(&[0xe0, 0]);

    // The retained one survives a restart and comes first, with RETAIN = 1, to a new subscriber.
    let m = restart_with(m, ON);
    let (mut late, _) = Raw::on_core(&m, None);
    late.send(&connect(4, "g-late", true, &[]));
    assert_eq!(late.packet(), Some(vec![0x20, 2, 0, 0]));
    late.send(&subscribe(4, 1, "a/+", 0));
    assert_eq!(late.packet(), Some(vec![0x90, 3, 0, 1, 0]));
    let state = late.packet().expect("retained");
    assert_eq!(state[0], 0x31, "QoS 0 PUBLISH with RETAIN = 1");
    assert_eq!(parse_publish(&state).4, b"\x00raw".to_vec());
    // An empty retained publish clears it.
    let mut clear = publish(4, 1, "a/b", 4, b"");
    clear[0] |= 1;
    late.send(&clear);
    assert_eq!(late.packet(), Some(puback(4)));
    late.send(&subscribe(4, 2, "a/#", 0));
    assert_eq!(late.packet(), Some(vec![0x90, 3, 0, 2, 0]));
    late.send(&[0xc0, 0]);
    assert_eq!(
        late.packet(),
        Some(vec![0xd0, 0]),
        "no retained message any more"
    );
}

/// Off by default: a topic outside the exports is refused as docs/mqtt.md says.
#[test]
fn general_topics_off_by_default() {
    let m = start_in(app_dir(), None);
    let (mut s, _) = Raw::on_core(&m, None);
    s.send(&connect(5, "g-off", true, &[]));
    assert_eq!(s.packet().map(|p| p[3]), Some(0));
    s.send(&subscribe(5, 1, "a/b", 1));
    assert_eq!(s.packet(), Some(vec![0x90, 4, 0, 1, 0, 0x8f]));
    s.send(&publish(5, 1, "a/b", 2, b"x"));
    assert_eq!(s.packet(), Some(vec![0x40, 3, 0, 2, 0x90]));
}

/// Server-assigned topic aliases: with the client's Topic Alias Maximum 1, the first PUBLISH on
/// a topic carries it with alias 1, the next one only the alias (empty topic).
#[test]
fn v5_server_assigned_topic_alias() {
    let m = start_in(app_dir(), None);
    let (mut s, _) = Raw::on_core(&m, None);
    // Property 0x22 Topic Alias Maximum = 1.
    s.send(&connect(5, "alias", true, &[0x22, 0, 1]));
    assert_eq!(s.packet().map(|p| p[3]), Some(0));
    s.send(&subscribe(5, 1, "Dog/#", 0));
    assert_eq!(s.packet().map(|p| p[0]), Some(0x90));
    let (mut p, _) = Raw::on_core(&m, None);
    p.send(&connect(5, "alias-pub", true, &[]));
    assert_eq!(p.packet().map(|p| p[3]), Some(0));
    for i in 0..2u16 {
        p.send(&publish(5, 1, "Dog/q", i + 1, b"{}"));
        assert_eq!(p.packet().map(|x| x[0]), Some(0x40));
    }
    let first = s.packet().expect("first");
    let second = s.packet().expect("second");
    // Fixed header is two bytes here; then the topic's length and text.
    assert_eq!(&first[2..9], b"\x00\x05Dog/q", "{first:02x?}");
    assert!(first.windows(3).any(|w| w == [0x23, 0, 1]), "{first:02x?}");
    assert_eq!(&second[2..4], &[0, 0], "empty topic: {second:02x?}");
    assert!(
        second.windows(3).any(|w| w == [0x23, 0, 1]),
        "{second:02x?}"
    );
}

/// A v5 CONNECT with a will on `Dog/will`, Will Delay Interval `delay_s` and Session Expiry 60.
fn connect_with_will(id: &str, delay_s: u32) -> Vec<u8> {
    let mut body = string("MQTT");
    // Will flag, clean start; keep alive 0.
    body.extend_from_slice(&[5, 0x06, 0, 0]);
    body.extend_from_slice(&[5, 0x11, 0, 0, 0, 60]);
    body.extend_from_slice(&string(id));
    body.push(5);
    body.push(0x18);
    body.extend_from_slice(&delay_s.to_be_bytes());
    body.extend_from_slice(&string("Dog/will"));
    body.extend_from_slice(&string(r#"{"w":1}"#));
    packet(0x10, &body)
}

/// A v5 client `id` subscribed to `Dog/will`, where `connect_with_will` leaves its wills.
fn will_subscriber(m: &Mqtt, id: &str) -> Raw {
    let (mut s, _) = Raw::on_core(m, None);
    s.send(&connect(5, id, true, &[]));
    assert_eq!(s.packet().map(|p| p[3]), Some(0));
    s.send(&subscribe(5, 1, "Dog/will", 0));
    assert_eq!(s.packet().map(|p| p[0]), Some(0x90));
    s
}

/// Will Delay Interval (MQTT 5 §3.1.3.2.2): the will of a dropped connection waits its delay,
/// and a reconnect within it cancels the will.
#[test]
fn v5_will_delay() {
    let m = start_in(app_dir(), None);
    let mut s = will_subscriber(&m, "will-sub");

    // Dropped, not reconnected: the will comes, but not at once.
    let (mut w, _) = Raw::on_core(&m, None);
    w.send(&connect_with_will("willer", 2));
    assert_eq!(w.packet().map(|p| p[3]), Some(0));
    drop(w);
    s.send(&[0xc0, 0]);
    assert_eq!(s.packet(), Some(vec![0xd0, 0]), "no will yet");
    let will = s.packet().expect("the delayed will");
    assert_eq!(will[0] & 0xf0, 0x30);
    assert!(String::from_utf8_lossy(&will).contains("Dog/will"));

    // Dropped and back within the delay: no will.
    let (mut w, _) = Raw::on_core(&m, None);
    w.send(&connect_with_will("willer-2", 2));
    assert_eq!(w.packet().map(|p| p[3]), Some(0));
    drop(w);
    let (mut back, _) = Raw::on_core(&m, None);
    back.send(&connect(5, "willer-2", false, &[0x11, 0, 0, 0, 60]));
    assert_eq!(back.packet().map(|p| p[2]), Some(1), "session present");
    std::thread::sleep(Duration::from_millis(2500));
    s.send(&[0xc0, 0]);
    assert_eq!(s.packet(), Some(vec![0xd0, 0]), "the will was cancelled");
}

/// A delayed will is settled by the next connection for its client id, whether that connection
/// is still open when the delay runs out or not ([MQTT-3.1.3-9], [MQTT-3.1.2-8]): resumed after a
/// drop and ended again, or taken over and ended, the will never comes; a reconnect with Clean
/// Start ends the session, and the will comes then.
#[test]
fn v5_will_delay_settled_by_a_connection_that_ended_again() {
    let m = start_in(app_dir(), None);
    let mut s = will_subscriber(&m, "will-sub-2");
    let resume = |id: &str| connect(5, id, false, &[0x11, 0, 0, 0, 60]);

    // Dropped, resumed within the delay, then gone again (DISCONNECT) before the delay ends.
    let (mut w, _) = Raw::on_core(&m, None);
    w.send(&connect_with_will("willer-3", 2));
    assert_eq!(w.packet().map(|p| p[3]), Some(0));
    drop(w);
    let (mut back, _) = Raw::on_core(&m, None);
    back.send(&resume("willer-3"));
    assert_eq!(back.packet().map(|p| p[2]), Some(1), "session present");
    back.send(&[0xe0, 0]);
    drop(back);

    // Taken over by a resuming connection, which then drops without a will of its own.
    let (mut w, _) = Raw::on_core(&m, None);
    w.send(&connect_with_will("willer-4", 2));
    assert_eq!(w.packet().map(|p| p[3]), Some(0));
    let (mut taker, _) = Raw::on_core(&m, None);
    taker.send(&resume("willer-4"));
    assert_eq!(taker.packet().map(|p| p[2]), Some(1), "session present");
    drop(taker);
    drop(w);

    // Past both delays: neither will was sent.
    std::thread::sleep(Duration::from_millis(3000));
    s.send(&[0xc0, 0]);
    assert_eq!(s.packet(), Some(vec![0xd0, 0]), "no will after the delay");

    // Dropped, then back with Clean Start: the session ends, so the will goes without waiting
    // out a delay of a minute.
    let (mut w, _) = Raw::on_core(&m, None);
    w.send(&connect_with_will("willer-5", 60));
    assert_eq!(w.packet().map(|p| p[3]), Some(0));
    drop(w);
    let (mut fresh, _) = Raw::on_core(&m, None);
    fresh.send(&connect(5, "willer-5", true, &[]));
    assert_eq!(fresh.packet().map(|p| p[2]), Some(0), "no session present");
    let will = s.packet().expect("the will at the session's end");
    assert_eq!(will[0] & 0xf0, 0x30);
    assert!(String::from_utf8_lossy(&will).contains("Dog/will"));
}
