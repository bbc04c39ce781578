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
