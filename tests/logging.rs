//! Connection lines an operator sees by default (docs/configuration.md `logging.connections`):
//! MQTT connects and disconnects and failed logins on stderr at the default level, at most 10 per
//! source address a minute per core.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{mqtt_packet, mqtt_string, Builder};

/// One MQTT 3.1.1 session with the test's super user: CONNECT, CONNACK, DISCONNECT.
fn connect_and_leave(mqtt: std::net::SocketAddr, id: &str) {
    let mut body = mqtt_string("MQTT");
    body.extend_from_slice(&[4, 0xC2, 0, 30]);
    body.extend(mqtt_string(id));
    body.extend(mqtt_string(common::ADMIN_USER));
    body.extend(mqtt_string(common::ADMIN_PASSWORD));
    let mut s = TcpStream::connect(mqtt).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(&mqtt_packet(0x10, &body)).unwrap();
    let mut connack = [0u8; 4];
    s.read_exact(&mut connack).unwrap();
    assert_eq!(connack, [0x20, 2, 0, 0], "CONNACK accepted");
    s.write_all(&[0xE0, 0]).unwrap();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
}

#[test]
fn connections_and_failed_logins_reach_stderr_limited_per_source() {
    let server = Builder::new().require_credentials().start();
    let mqtt = common::mqtt_port(&server);
    server.drain_lines();
    // First, while 127.0.0.1 has its budget (a failed login shares it): a failed login.
    let refused = ureq::get(&server.url("/Dog/1"))
        .set("Authorization", "Basic bm9ib2R5Om5vcGU=") // nobody:nope
        .call();
    assert!(
        matches!(refused, Err(ureq::Error::Status(401, _))),
        "{refused:?}"
    );
    for i in 0..25 {
        connect_and_leave(mqtt, &format!("log-{i}"));
    }
    std::thread::sleep(Duration::from_millis(300));
    let lines = server.drain_lines();
    let connected = lines
        .iter()
        .filter(|l| l.contains("[notify]") && l.contains("mqtt connected:"))
        .count();
    let disconnected = lines
        .iter()
        .filter(|l| l.contains("[notify]") && l.contains("mqtt disconnected:"))
        .count();
    // 51 events from 127.0.0.1 over 2 cores: at most 10 lines per core in the minute.
    assert!(connected >= 1 && disconnected >= 1, "{lines:#?}");
    assert!(connected + disconnected <= 20, "{lines:#?}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("[notify]") && l.contains("failed login for user \"nobody\"")),
        "{lines:#?}"
    );
}

#[test]
fn connection_lines_can_be_turned_down_to_info() {
    let server = Builder::new().arg("--LOGGING_CONNECTIONS", "false").start();
    let mqtt = common::mqtt_port(&server);
    server.drain_lines();
    connect_and_leave(mqtt, "quiet");
    std::thread::sleep(Duration::from_millis(300));
    let lines = server.drain_lines();
    assert!(
        !lines.iter().any(|l| l.contains("mqtt connected:")),
        "{lines:#?}"
    );
}
