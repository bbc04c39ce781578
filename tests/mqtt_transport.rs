//! MQTT's transports other than plain TCP (docs/mqtt.md listeners, docs/security.md): MQTT over TLS on
//! `mqtt.network.securePort`, and MQTT over WebSocket on the HTTP ports (plain and TLS), checked
//! with real clients: `mosquitto_pub`/`mosquitto_sub`, paho-mqtt (Python) and `openssl
//! s_client`, plus raw WebSocket frames for packets split across frames. A test whose tool is
//! missing says so and skips only that tool. Client certificates (mTLS) are in `tests/tls.rs`
//! beside the other certificate helpers.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{mqtt_packet, mqtt_string};
use common::{Builder, Server};

struct Broker {
    server: Server,
    /// `mqtt.network.securePort`.
    mqtts: SocketAddr,
    /// `http.securePort`, when asked for.
    https: Option<SocketAddr>,
}

impl Broker {
    fn start(builder: Builder, https: bool) -> Broker {
        let builder = if https {
            builder.arg("--HTTP_SECUREPORT", "127.0.0.1:0")
        } else {
            builder
        };
        let server = builder.start();
        let (mut mqtts, mut secure_rest) = (None, None);
        let deadline = Instant::now() + Duration::from_secs(10);
        while mqtts.is_none() || (https && secure_rest.is_none()) {
            let line = server
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .expect("server reports its secure listeners");
            let addr = || {
                line.split(" listening on ")
                    .nth(1)
                    .and_then(|a| a.split_whitespace().next())
                    .and_then(|a| a.parse::<SocketAddr>().ok())
            };
            if line.contains("[notify]: MQTTS (mqtt.network.securePort)") {
                mqtts = addr();
            } else if line.contains("[notify]: HTTPS REST") {
                secure_rest = addr();
            }
        }
        Broker {
            mqtts: mqtts.unwrap(),
            https: secure_rest,
            server,
        }
    }

    fn ca(&self) -> PathBuf {
        self.server.root.path().join("keys").join("ca.pem")
    }

    fn get(&self, path: &str) -> Option<serde_json::Value> {
        match ureq::get(&self.server.url(path)).call() {
            Ok(r) => Some(serde_json::from_str(&r.into_string().unwrap()).unwrap()),
            Err(ureq::Error::Status(404, _)) => None,
            Err(e) => panic!("GET {path}: {e}"),
        }
    }
}

fn have(program: &str, probe: &[&str]) -> bool {
    common::have_tool(program, probe, "see .ci/run for what the tests install")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn mosquitto(program: &str, broker: &Broker, version: &str, args: &[&str]) -> Output {
    let port = broker.mqtts.port().to_string();
    let ca = broker.ca();
    Command::new(program)
        .args(["-h", "127.0.0.1", "-p", &port, "-V", version])
        .args(["--cafile", ca.to_str().unwrap()])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"))
}

#[test]
fn mosquitto_tools_over_tls() {
    if !have("which", &["mosquitto_sub", "mosquitto_pub"]) {
        return;
    }
    let broker = Broker::start(Builder::new(), false);
    for (version, id) in [("mqttv311", "t311"), ("mqttv5", "t5")] {
        let topic = format!("Dog/{id}");
        let body = format!(r#"{{"name":"over tls {version}"}}"#);
        // A retained publish is a write of the record...
        let out = mosquitto(
            "mosquitto_pub",
            &broker,
            version,
            &["-t", &topic, "-r", "-q", "1", "-m", &body],
        );
        assert!(out.status.success(), "pub {version}: {}", text(&out.stderr));
        let record = broker.get(&format!("/{topic}")).expect("record written");
        assert_eq!(record["name"], format!("over tls {version}"));
        // ...and a subscriber over TLS gets it back as retained state.
        let out = mosquitto(
            "mosquitto_sub",
            &broker,
            version,
            &["-t", &topic, "-C", "1", "-W", "5", "-F", "%r %t %p"],
        );
        assert!(out.status.success(), "sub {version}: {}", text(&out.stderr));
        let shown = text(&out.stdout);
        assert!(shown.starts_with(&format!("1 {topic} ")), "{shown}");
        assert!(shown.contains(&format!("over tls {version}")), "{shown}");
    }
    // A client that does not trust our CA refuses the server.
    let out = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &broker.mqtts.port().to_string()])
        .args(["--cafile", "/etc/ssl/certs/ca-certificates.crt"])
        .args(["-t", "Dog/t311", "-C", "1", "-W", "3"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "an untrusted server was accepted");
}

const PAHO_TLS: &str = r#"
import json, ssl, sys, time
import paho.mqtt.client as mqtt
host, port, version, ca = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
transport = sys.argv[5] if len(sys.argv) > 5 else "tcp"
path = sys.argv[6] if len(sys.argv) > 6 else "/mqtt"
tag = sys.argv[7] if len(sys.argv) > 7 else ""
proto = mqtt.MQTTv5 if version == "5" else mqtt.MQTTv311
def client(name, sink):
    cl = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=name + transport + version + tag,
                     protocol=proto, transport=transport)
    if transport == "websockets":
        cl.ws_set_options(path=path)
    if ca != "-":
        cl.tls_set(ca_certs=ca)
    cl.on_message = lambda c, u, msg: sink.append((msg.topic, msg.retain, msg.payload.decode()))
    return cl
got = []
c = client("paho-", got)
connected = []
c.on_connect = lambda cl, u, flags, rc, props=None: connected.append(str(rc))
c.connect(host, port, 30)
c.loop_start()
deadline = time.time() + 5
while not connected and time.time() < deadline:
    time.sleep(0.02)
topic = "Dog/paho-" + transport + version + tag
c.subscribe(topic, 1)
time.sleep(0.4)
c.publish(topic, json.dumps({"name": "first"}), qos=1, retain=True).wait_for_publish(5)
time.sleep(0.4)
# A plain message: delivered live, the record unchanged.
c.publish(topic, json.dumps({"note": "message"}), qos=0).wait_for_publish(5)
time.sleep(0.4)
c.loop_stop()
c.disconnect()
# A second client sees the record as retained state.
late = []
d = client("paho-late-", late)
d.connect(host, port, 30)
d.loop_start()
d.subscribe(topic, 0)
time.sleep(0.6)
d.loop_stop()
print(json.dumps({"connected": connected, "got": got, "late": late}))
"#;

fn have_paho() -> bool {
    have("python3", &["-c", "import paho.mqtt"])
}

/// Runs [`PAHO_TLS`] and checks what a subscriber saw: the live record change (not retained),
/// then the message; a late subscriber sees the record with RETAIN set.
/// `tag` keeps the topics of several runs against one server apart.
fn check_paho(addr: SocketAddr, version: &str, ca: &str, transport: &str, path: &str, tag: &str) {
    let topic = format!("Dog/paho-{transport}{version}{tag}");
    let out = Command::new("python3")
        .args(["-c", PAHO_TLS, "127.0.0.1", &addr.port().to_string()])
        .args([version, ca, transport, path, tag])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "paho {transport} v{version}: {}",
        text(&out.stderr)
    );
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let what = format!("paho {transport} v{version} via {ca}: {seen}");
    assert_eq!(
        seen["connected"].as_array().map(Vec::len),
        Some(1),
        "{what}"
    );
    let got = seen["got"].as_array().expect("got");
    assert_eq!(got.len(), 2, "{what}");
    assert_eq!(got[0][0], topic.as_str(), "{what}");
    assert_eq!(got[0][1], false, "{what}");
    assert!(got[0][2].as_str().unwrap().contains("first"), "{what}");
    assert!(got[1][2].as_str().unwrap().contains("message"), "{what}");
    let late = seen["late"].as_array().expect("late");
    assert_eq!(late.len(), 1, "{what}");
    assert_eq!(late[0][1], true, "{what}");
    assert!(late[0][2].as_str().unwrap().contains("first"), "{what}");
}

#[test]
fn paho_over_tls() {
    if !have_paho() {
        return;
    }
    let broker = Broker::start(Builder::new(), false);
    let ca = broker.ca();
    for version in ["3", "5"] {
        check_paho(broker.mqtts, version, ca.to_str().unwrap(), "tcp", "-", "");
    }
}

#[test]
fn old_tls_versions_refused_on_mqtts() {
    if !have("openssl", &["version"]) {
        return;
    }
    let broker = Broker::start(Builder::new(), false);
    let connect = format!("127.0.0.1:{}", broker.mqtts.port());
    let ca = broker.ca();
    let s_client = |extra: &[&str]| {
        Command::new("openssl")
            .args(["s_client", "-connect", &connect])
            .args(extra)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("openssl")
    };
    // SECLEVEL=0 so it is our server refusing, not the local OpenSSL policy.
    for version in ["-tls1", "-tls1_1"] {
        let out = s_client(&[version, "-cipher", "DEFAULT:@SECLEVEL=0"]);
        assert!(!out.status.success(), "{version} was accepted");
    }
    for (version, expected) in [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")] {
        let out = s_client(&[
            version,
            "-CAfile",
            ca.to_str().unwrap(),
            "-verify_return_error",
        ]);
        let shown = text(&out.stdout);
        assert!(out.status.success(), "{version}: {}", text(&out.stderr));
        assert!(
            shown.contains(&format!("New, {expected}, Cipher")),
            "{shown}"
        );
    }
}

// ---- MQTT over WebSocket ----

#[test]
fn paho_over_websocket_plain_and_tls() {
    if !have_paho() {
        return;
    }
    let broker = Broker::start(Builder::new(), true);
    let ca = broker.ca();
    for version in ["3", "5"] {
        // Any path carries MQTT when the subprotocol asks for it.
        check_paho(broker.server.rest, version, "-", "websockets", "/mqtt", "a");
        check_paho(broker.server.rest, version, "-", "websockets", "/Dog/", "b");
        let https = broker.https.unwrap();
        let ca = ca.to_str().unwrap();
        check_paho(https, version, ca, "websockets", "/mqtt", "c");
    }
}

use common::ws_client_frame as client_frame;

/// Upgrades a raw TCP connection with subprotocol `protocol` on `path`; returns the head.
fn raw_upgrade(addr: SocketAddr, path: &str, protocol: &str) -> (std::net::TcpStream, String) {
    common::ws_raw_upgrade(
        addr,
        path,
        &format!("Sec-WebSocket-Protocol: {protocol}\r\n"),
    )
}

/// Reads server frames until `count` payload bytes of binary frames have arrived.
fn read_binary(s: &mut std::net::TcpStream, count: usize) -> Vec<u8> {
    use std::io::Read;
    let mut got = Vec::new();
    while got.len() < count {
        let mut head = [0u8; 2];
        s.read_exact(&mut head).expect("frame head");
        assert_eq!(head[0], 0x82, "a final binary frame: {head:?}");
        assert!(head[1] < 126, "{head:?}");
        let mut payload = vec![0u8; usize::from(head[1])];
        s.read_exact(&mut payload).unwrap();
        got.extend_from_slice(&payload);
    }
    got
}

/// docs/mqtt.md: a packet may span frames and a frame may hold several packets.
#[test]
fn packets_split_across_frames_and_frames_holding_several() {
    use std::io::Write;
    let broker = Broker::start(Builder::new(), false);
    let (mut s, head) = raw_upgrade(broker.server.rest, "/anything", "mqtt");
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("sec-websocket-protocol: mqtt"),
        "{head}"
    );
    // CONNECT 3.1.1, clean, keep-alive 30, client id "raw", in three frames.
    let connect = b"\x10\x0f\x00\x04MQTT\x04\x02\x00\x1e\x00\x03raw";
    let mut frames = client_frame(0x02, &connect[..5]);
    frames.extend(client_frame(0x00, &connect[5..9]));
    frames.extend(client_frame(0x80, &connect[9..]));
    // Two PINGREQs in one frame.
    frames.extend(client_frame(0x82, b"\xc0\x00\xc0\x00"));
    // Sent a byte at a time, so frame heads are split across reads too.
    for b in &frames {
        s.write_all(std::slice::from_ref(b)).unwrap();
    }
    let got = read_binary(&mut s, 8);
    assert_eq!(got, b"\x20\x02\x00\x00\xd0\x00\xd0\x00");
    // DISCONNECT, then the server closes the WebSocket with 1000.
    s.write_all(&client_frame(0x82, b"\xe0\x00")).unwrap();
    let mut rest = Vec::new();
    use std::io::Read;
    let _ = s.read_to_end(&mut rest);
    assert_eq!(rest, b"\x88\x02\x03\xe8");
}

#[test]
fn websocket_mqtt_refusals() {
    use std::io::{Read, Write};
    // A text frame is not MQTT: closed with 1003.
    let broker = Broker::start(Builder::new(), false);
    let (mut s, head) = raw_upgrade(broker.server.rest, "/mqtt", "mqtt");
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    s.write_all(&client_frame(0x81, b"hello")).unwrap();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert_eq!(rest, b"\x88\x02\x03\xeb");
    drop(broker);
    // mqtt.webSocket: false refuses the upgrade, leaving REST WebSockets alone.
    let broker = Broker::start(Builder::new().arg("--MQTT_WEBSOCKET", "false"), false);
    let (_s, head) = raw_upgrade(broker.server.rest, "/mqtt", "mqtt");
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    let (_s, head) = raw_upgrade(broker.server.rest, "/Dog/1", "json");
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
}

// ---- both directions at once over TLS ----

/// One whole packet: (first byte, body).
fn read_mqtt(stream: &mut impl std::io::Read) -> (u8, Vec<u8>) {
    let mut first = [0u8; 1];
    stream.read_exact(&mut first).expect("packet");
    let mut len = 0usize;
    for i in 0..4 {
        let mut b = [0u8; 1];
        stream.read_exact(&mut b).unwrap();
        len |= usize::from(b[0] & 0x7f) << (7 * i);
        if b[0] & 0x80 == 0 {
            break;
        }
    }
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).unwrap();
    (first[0], body)
}

/// The session's reader and writer share one TLS connection: the client sends a burst of large
/// QoS 1 retained publishes without reading, so the server's writer stalls on a full socket
/// while its reader goes on; every PUBACK and every record event then arrives intact.
#[test]
fn large_publishes_and_events_cross_on_one_tls_connection() {
    use std::io::Write;
    const COUNT: usize = 100;
    const NAME_BYTES: usize = 64 * 1024;
    let broker = Broker::start(Builder::new(), false);
    let config = tidepool::server::tls::client_config(&broker.ca(), None, &[]).unwrap();
    let name = tidepool_io::rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn = tidepool_io::rustls::ClientConnection::new(config, name).unwrap();
    let tcp = std::net::TcpStream::connect(broker.mqtts).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut tls = tidepool_io::rustls::StreamOwned::new(conn, tcp);

    let mut connect = mqtt_string("MQTT");
    connect.extend_from_slice(&[4, 0x02, 0, 60]);
    connect.extend_from_slice(&mqtt_string("bulk-tls"));
    tls.write_all(&mqtt_packet(0x10, &connect)).unwrap();
    assert_eq!(read_mqtt(&mut tls), (0x20, vec![0, 0]));
    let mut subscribe = 1u16.to_be_bytes().to_vec();
    subscribe.extend_from_slice(&mqtt_string("Dog/bulk/#"));
    subscribe.push(0);
    tls.write_all(&mqtt_packet(0x82, &subscribe)).unwrap();
    assert_eq!(read_mqtt(&mut tls), (0x90, vec![0, 1, 0]));

    let mut burst = Vec::new();
    for i in 0..COUNT {
        let fill = char::from(b'a' + (i % 26) as u8)
            .to_string()
            .repeat(NAME_BYTES);
        let mut body = mqtt_string(&format!("Dog/bulk/{i}"));
        body.extend_from_slice(&(i as u16 + 1).to_be_bytes());
        body.extend_from_slice(format!(r#"{{"name":"{fill}","n":{i}}}"#).as_bytes());
        burst.extend(mqtt_packet(0x33, &body));
    }
    tls.write_all(&burst).unwrap();
    tls.flush().unwrap();

    let mut acked = std::collections::BTreeSet::new();
    let mut events = std::collections::BTreeSet::new();
    while acked.len() < COUNT || events.len() < COUNT {
        let (first, body) = read_mqtt(&mut tls);
        match first >> 4 {
            4 => {
                acked.insert(u16::from_be_bytes([body[0], body[1]]));
            }
            3 => {
                let topic_len = usize::from(u16::from_be_bytes([body[0], body[1]]));
                let topic = text(&body[2..2 + topic_len]);
                let record: serde_json::Value = serde_json::from_slice(&body[2 + topic_len..])
                    .unwrap_or_else(|e| panic!("{topic}: {e}"));
                let i = record["n"].as_u64().unwrap() as usize;
                assert_eq!(topic, format!("Dog/bulk/{i}"));
                let expected = char::from(b'a' + (i % 26) as u8)
                    .to_string()
                    .repeat(NAME_BYTES);
                assert!(
                    record["name"] == expected.as_str(),
                    "{topic}: payload differs"
                );
                events.insert(i);
            }
            other => panic!("unexpected packet type {other}"),
        }
    }
    assert_eq!(acked.len(), COUNT);
    assert_eq!(events.len(), COUNT);
}

const PAHO_CONNECT_WS: &str = r#"
import base64, sys, time
import paho.mqtt.client as mqtt
port, version, auth = int(sys.argv[1]), sys.argv[2], sys.argv[3]
proto = mqtt.MQTTv5 if version == "5" else mqtt.MQTTv311
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="ws-auth" + version, protocol=proto,
                transport="websockets")
headers = {"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()} if auth else None
c.ws_set_options(path="/mqtt", headers=headers)
codes = []
c.on_connect = lambda cl, u, flags, rc, props=None: codes.append(rc.value)
c.connect("127.0.0.1", port, 30)
c.loop_start()
deadline = time.time() + 5
while not codes and time.time() < deadline:
    time.sleep(0.02)
c.loop_stop()
print(codes[0] if codes else "none")
"#;

/// docs/mqtt.md: over WebSocket the upgrade's credentials count when CONNECT names no user.
#[test]
fn websocket_upgrade_credentials_authenticate() {
    if !have_paho() {
        return;
    }
    let broker = Broker::start(Builder::new().require_credentials(), false);
    let admin = format!("{}:{}", common::ADMIN_USER, common::ADMIN_PASSWORD);
    let wrong = format!("{}:not-the-password", common::ADMIN_USER);
    // (header credentials, CONNACK code at 3.1.1, at 5). paho reports a 3.1.1 refusal as its v5
    // equivalent (0x05 not authorized → 135); tests/mqtt.rs checks the codes on the wire.
    for (auth, v311, v5) in [
        (admin.as_str(), "0", "0"),
        ("", "135", "135"),
        (wrong.as_str(), "135", "135"),
    ] {
        for (version, expected) in [("3", v311), ("5", v5)] {
            let out = Command::new("python3")
                .args([
                    "-c",
                    PAHO_CONNECT_WS,
                    &broker.server.rest.port().to_string(),
                ])
                .args([version, auth])
                .output()
                .expect("python3");
            let shown = text(&out.stdout);
            assert_eq!(
                shown.trim(),
                expected,
                "v{version} with {auth:?}: {}",
                text(&out.stderr)
            );
        }
    }
}
