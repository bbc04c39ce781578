//! `GET /metrics`: Prometheus text that a real parser accepts, with counters that move under load.

mod common;

use std::collections::HashMap;
use std::process::Command;

use common::Server;

/// Parses the exposition with the Python Prometheus client; returns sample name+labels → value.
fn parse(text: &str) -> HashMap<String, f64> {
    let script = r#"
import sys
from prometheus_client.parser import text_string_to_metric_families
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
        print(f"{s.name}|{labels}|{s.value}")
"#;
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "prometheus parser rejected the text: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut parts = l.rsplitn(2, '|');
            let value: f64 = parts.next()?.parse().ok()?;
            Some((parts.next()?.to_string(), value))
        })
        .collect()
}

fn total(samples: &HashMap<String, f64>, prefix: &str) -> f64 {
    samples
        .iter()
        .filter(|(k, _)| k.starts_with(prefix))
        .map(|(_, v)| v)
        .sum()
}

#[test]
fn metrics_parse_and_move_under_load() {
    let server = Server::start();
    let url = format!("http://{}/metrics", server.ops);
    let before = parse(&ureq::get(&url).call().unwrap().into_string().unwrap());
    for i in 0..20 {
        ureq::put(&server.url(&format!("/Dog/{i}")))
            .send_string(r#"{"name":"m"}"#)
            .unwrap();
    }
    let after = parse(&ureq::get(&url).call().unwrap().into_string().unwrap());
    assert!(
        total(&after, "tidepool_http_requests_total|")
            >= total(&before, "tidepool_http_requests_total|") + 20.0
    );
    let writes = |s: &HashMap<String, f64>| {
        s.get("tidepool_writer_requests_total|database=data")
            .copied()
            .unwrap_or(0.0)
    };
    assert!(writes(&after) >= writes(&before) + 20.0, "{after:?}");
    assert!(
        after
            .get("tidepool_writer_commit_seconds_count|database=data")
            .copied()
            .unwrap_or(0.0)
            >= 1.0
    );
    assert!(
        after
            .get("tidepool_lmdb_map_used_bytes|database=data")
            .copied()
            .unwrap_or(0.0)
            > 0.0
    );
    // Answers by route and status class, their latency, the real-time and process families.
    let rest_2xx = |s: &HashMap<String, f64>| {
        s.get("tidepool_http_responses_total|route=rest,status=2xx")
            .copied()
            .unwrap_or(0.0)
    };
    assert!(rest_2xx(&after) >= rest_2xx(&before) + 20.0, "{after:?}");
    let _ = ureq::get(&server.url("/NoSuchTable/1")).call();
    let later = parse(&ureq::get(&url).call().unwrap().into_string().unwrap());
    assert!(later["tidepool_http_responses_total|route=not_found,status=4xx"] >= 1.0);
    assert!(later["tidepool_http_request_duration_seconds_count|route=rest"] >= 20.0);
    assert!(later["tidepool_http_request_duration_seconds_bucket|le=+Inf,route=rest"] >= 20.0);
    assert!(later["process_resident_memory_bytes|"] > 1e6);
    assert!(later["process_open_fds|"] >= 3.0);
    assert!(later["process_cpu_seconds_total|"] > 0.0);
    assert!(later.contains_key("tidepool_pubsub_subscriptions|core=0"));
    assert!(later.contains_key("tidepool_pubsub_events_dropped_total|core=1"));
    // Not on the REST port.
    assert_eq!(
        ureq::get(&server.url("/metrics"))
            .call()
            .map(|r| r.status())
            .unwrap_or_else(|e| match e {
                ureq::Error::Status(c, _) => c,
                other => panic!("{other}"),
            }),
        404
    );
}

/// This host's first IPv4 address that is not loopback, if it has one.
fn non_loopback_ipv4() -> Option<std::net::Ipv4Addr> {
    let mut found = None;
    // SAFETY: getifaddrs fills a list this function walks and frees; nothing outlives it.
    unsafe {
        let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
        if libc::getifaddrs(&mut list) != 0 {
            return None;
        }
        let mut at = list;
        while !at.is_null() {
            let addr = (*at).ifa_addr;
            if !addr.is_null() && i32::from((*addr).sa_family) == libc::AF_INET {
                let sin = &*(addr as *const libc::sockaddr_in);
                let ip = std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
                if !ip.is_loopback() && found.is_none() {
                    found = Some(ip);
                }
            }
            at = (*at).ifa_next;
        }
        libc::freeifaddrs(list);
    }
    found
}

/// `GET /metrics` over a TCP connection from `source` to the server's loopback Operations API
/// port, with an optional `Authorization`: the status.
fn metrics_from(server: &Server, source: std::net::IpAddr, authorization: Option<&str>) -> u16 {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket
        .bind(&std::net::SocketAddr::new(source, 0).into())
        .expect("bind the source address");
    socket.connect(&server.ops.into()).expect("connect");
    let mut raw = common::Raw::over(socket.into());
    let auth = authorization
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    raw.send(format!("GET /metrics HTTP/1.1\r\nHost: x\r\n{auth}\r\n").as_bytes());
    raw.response(false).expect("response").status
}

/// docs/metrics.md: `/metrics` answers loopback peers; from any other address it needs a
/// super user's credentials (401 without, 403 for another user). The server listens on
/// 127.0.0.1 only; the client connects to it from this host's non-loopback address.
#[test]
fn metrics_need_a_super_user_unless_the_peer_is_loopback() {
    use base64::Engine;
    let Some(ip) = non_loopback_ipv4() else {
        assert!(
            std::env::var_os("TIDEPOOL_HEAVY").is_none(),
            "no non-loopback IPv4 address to test from"
        );
        eprintln!("no non-loopback IPv4 address: skipping");
        return;
    };
    let server = common::Builder::new().require_credentials().start();
    let basic = |user: &str, password: &str| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        )
    };
    let admin = basic(common::ADMIN_USER, common::ADMIN_PASSWORD);
    for op in [
        serde_json::json!({"operation": "add_role", "role": "reader", "permission": {"data": {"tables": {"Dog": {"read": true, "insert": false, "update": false, "delete": false, "attribute_permissions": []}}}}}),
        serde_json::json!({"operation": "add_user", "username": "reader1", "password": "Reader-pass-1", "role": "reader", "active": true}),
    ] {
        ureq::post(&server.ops_url())
            .set("Authorization", &admin)
            .set("Content-Type", "application/json")
            .send_string(&op.to_string())
            .unwrap_or_else(|e| panic!("{op}: {e}"));
    }
    let other = std::net::IpAddr::V4(ip);
    let loopback = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
    assert_eq!(metrics_from(&server, other, None), 401);
    assert_eq!(
        metrics_from(&server, other, Some(&basic("nobody", "x"))),
        401
    );
    assert_eq!(
        metrics_from(&server, other, Some(&basic("reader1", "Reader-pass-1"))),
        403
    );
    assert_eq!(metrics_from(&server, other, Some(&admin)), 200);
    assert_eq!(metrics_from(&server, loopback, None), 200);
}

/// deploy/grafana-dashboard.json queries only families `/metrics` exports (docs/metrics.md).
#[test]
fn grafana_dashboard_uses_exported_families() {
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(common::repo_path("deploy/grafana-dashboard.json")).unwrap(),
    )
    .unwrap();
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().clone())
        .map(|t| t["expr"].as_str().unwrap().to_string())
        .collect();
    assert!(exprs.len() >= 10);
    // Replication on (a node name, a plain port), so its families are declared too; with no
    // peer they have no samples, so a family counts as exported by its `# TYPE` line as well.
    let server = common::Builder::new()
        .arg("--REPLICATION_HOSTNAME", "dashboard")
        .arg("--REPLICATION_SECUREPORT", "null")
        .arg("--REPLICATION_PORT", "127.0.0.1:0")
        .start();
    let _ = ureq::put(&server.url("/Dog/1")).send_string(r#"{"name":"g"}"#);
    let url = format!("http://{}/metrics", server.ops);
    let text = ureq::get(&url).call().unwrap().into_string().unwrap();
    let samples = parse(&text);
    for expr in &exprs {
        let names = expr
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("tidepool_") || w.starts_with("process_"));
        for name in names {
            assert!(
                samples.keys().any(|k| k.starts_with(&format!("{name}|")))
                    || text.contains(&format!("# TYPE {name} ")),
                "{name} (in {expr:?}) is not exported"
            );
        }
    }
    assert!(exprs
        .iter()
        .any(|e| e.contains("tidepool_replication_lag_seconds")));
}
