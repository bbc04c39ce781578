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

/// Lines of `<root>/log/access.log` once it has `n` (bounded wait: the logging thread writes
/// them shortly after the answers).
fn access_lines(server: &common::Server, n: usize) -> Vec<String> {
    let path = server.root.path().join("log").join("access.log");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        if lines.len() >= n || std::time::Instant::now() > deadline {
            return lines;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `logging.access` (docs/configuration.md): one combined-format line per answered request, the
/// authenticated user named, refusals included, in its own file and not in `hdb.log`; off by
/// default.
#[test]
fn access_log_writes_one_combined_line_per_request() {
    use base64::Engine;
    let server = Builder::new()
        .require_credentials()
        .arg("--LOGGING_ACCESS", "true")
        .start();
    let admin = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            common::ADMIN_USER,
            common::ADMIN_PASSWORD
        ))
    );
    let put = ureq::put(&server.url("/Dog/acc1"))
        .set("Authorization", &admin)
        .set("Content-Type", "application/json")
        .set("User-Agent", "access-test/1")
        .send_string(r#"{"name":"Rex"}"#)
        .expect("PUT");
    assert_eq!(put.status(), 204);
    let got = ureq::get(&server.url("/Dog/acc1?x=%22q%22"))
        .set("Authorization", &admin)
        .set("Referer", "http://example.test/page")
        .set("User-Agent", "access-test/\"2\"")
        .call()
        .expect("GET");
    let body = got.into_string().unwrap();
    let refused = ureq::get(&server.url("/Dog/acc1"))
        .set("Authorization", "Basic bm9ib2R5Om5vcGU=")
        .set("User-Agent", "access-test/3")
        .call();
    assert!(
        matches!(refused, Err(ureq::Error::Status(401, _))),
        "{refused:?}"
    );
    let lines = access_lines(&server, 3);
    assert_eq!(lines.len(), 3, "{lines:#?}");
    let stamp = regex_free_stamp(&lines[0]);
    assert!(stamp, "{}", lines[0]);
    let user = common::ADMIN_USER;
    assert!(
        lines[0].starts_with(&format!("127.0.0.1 - {user} [")),
        "{}",
        lines[0]
    );
    assert!(
        lines[0].ends_with(r#"] "PUT /Dog/acc1 HTTP/1.1" 204 - "-" "access-test/1""#),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].ends_with(&format!(
            r#"] "GET /Dog/acc1?x=%22q%22 HTTP/1.1" 200 {} "http://example.test/page" "access-test/\x222\x22""#,
            body.len()
        )),
        "{}",
        lines[1]
    );
    assert!(lines[2].starts_with("127.0.0.1 - - ["), "{}", lines[2]);
    assert!(
        lines[2].contains(r#""GET /Dog/acc1 HTTP/1.1" 401 "#),
        "{}",
        lines[2]
    );
    let hdb_log =
        std::fs::read_to_string(server.root.path().join("log").join("hdb.log")).unwrap_or_default();
    assert!(!hdb_log.contains("access-test"), "{hdb_log}");

    // Off by default: no file.
    let quiet = Builder::new().start();
    let resp = ureq::get(&quiet.url("/health")).call().expect("health");
    assert_eq!(resp.status(), 200);
    std::thread::sleep(Duration::from_millis(300));
    assert!(!quiet.root.path().join("log").join("access.log").exists());
}

/// `[dd/Mon/yyyy:hh:mm:ss +0000]` in the line.
fn regex_free_stamp(line: &str) -> bool {
    let Some(start) = line.find('[') else {
        return false;
    };
    let stamp: Vec<char> = line[start..].chars().take(28).collect();
    stamp.len() == 28
        && stamp[3] == '/'
        && stamp[7] == '/'
        && stamp[12] == ':'
        && stamp[21..].iter().collect::<String>() == " +0000]"
}
