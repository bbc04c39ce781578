//! `tidepool dev`: the schema file is re-applied live; a broken file keeps the last good schema
//! and logs where it is broken.

mod common;

use std::time::{Duration, Instant};

use common::Builder;

fn status_and_body(url: &str) -> (u16, String) {
    match ureq::get(url).call() {
        Ok(r) => (r.status(), r.into_string().unwrap_or_default()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap_or_default()),
        Err(e) => panic!("GET {url}: {e}"),
    }
}

/// Polls `url` until it answers `status`, for at most `limit`.
fn wait_for(url: &str, status: u16, limit: Duration) -> (u16, String, Duration) {
    let started = Instant::now();
    loop {
        let (code, body) = status_and_body(url);
        if code == status || started.elapsed() > limit {
            return (code, body, started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn schema_reloads_live_and_survives_a_broken_file() {
    let app = tempfile::tempdir().unwrap();
    let schema = app.path().join("schema.graphql");
    std::fs::write(
        &schema,
        "type Dog @table @export { id: ID @primaryKey name: String }\n",
    )
    .unwrap();
    std::fs::write(
        app.path().join("config.yaml"),
        "rest: true\ngraphqlSchema:\n  files: schema.graphql\n",
    )
    .unwrap();
    let server = Builder::new()
        .dev()
        .app(app.path())
        .arg("--LOGGING_STDSTREAMS", "false")
        .start();
    for (id, color) in [("1", "red"), ("2", "blue"), ("3", "red")] {
        ureq::put(&server.url(&format!("/Dog/{id}")))
            .send_string(&format!(r#"{{"name":"d{id}","color":"{color}"}}"#))
            .unwrap();
    }
    let query = server.url("/Dog/?color=red&explain");
    let (code, body) = status_and_body(&query);
    assert_eq!(code, 404, "color is not declared yet: {body}");

    // Declare `color` as indexed: within 2 s the query works, through the new index.
    std::fs::write(
        &schema,
        "type Dog @table @export { id: ID @primaryKey name: String color: String @indexed }\n",
    )
    .unwrap();
    let (code, body, took) = wait_for(&query, 200, Duration::from_secs(5));
    assert_eq!(code, 200, "{body}");
    assert!(took < Duration::from_secs(2), "reload took {took:?}");
    assert!(body.contains("color"), "explain names the index: {body}");
    let (_, records) = status_and_body(&server.url("/Dog/?color=red"));
    let records: serde_json::Value = serde_json::from_str(&records).unwrap();
    assert_eq!(records.as_array().map(Vec::len), Some(2), "{records}");

    // A syntax error: the last good schema keeps serving, and the log says where.
    std::fs::write(
        &schema,
        "type Dog @table @export {\n  id: ID @primaryKey\n  color: String @indexed\n  oops: \n}\n",
    )
    .unwrap();
    let log = server.root.path().join("log/hdb.log");
    let started = Instant::now();
    let line = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(line) = text
            .lines()
            .find(|l| l.contains("dev reload") && l.contains("schema.graphql:"))
        {
            break line.to_string();
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "no reload error logged:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(line.contains("[error]"), "{line}");
    let (code, _) = status_and_body(&server.url("/Dog/?color=red"));
    assert_eq!(code, 200, "the last good schema still serves");
}
