//! Analytics (docs/operations-api.md "Analytics"): REST and Operations API traffic on a server
//! with `analytics.aggregatePeriod: 1`, then `get_analytics`, `list_metrics` and
//! `describe_metric` answer rows with HarperDB 4.x's fields, and every request is counted once.
//!
//! The expected key sets are what HarperDB 4.7.29 (npm `harperdb@4.7.29`, one thread,
//! `ANALYTICS_AGGREGATEPERIOD=2`) answered to `get_analytics` after REST `PUT`/`GET` on an
//! exported table and `describe_all` calls, asked on 2026-12-07 while this test was written.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{ops_post, Builder, Server};
use serde_json::{json, Value};

const SCHEMA: &str = "type Dog @table @export { id: ID @primaryKey name: String }";
const PUTS: u64 = 7;
const GETS: u64 = 9;
const MISSING: u64 = 2;
const DESCRIBES: u64 = 5;

fn keys(row: &Value) -> BTreeSet<String> {
    row.as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

fn rows(server: &Server, body: Value) -> Vec<Value> {
    let (status, answer) = ops_post(server, None, &body);
    assert_eq!(status, 200, "{body} → {answer}");
    answer.as_array().cloned().unwrap_or_default()
}

/// The sum of `count` over `metric`'s rows matching `path` and `method` (or `type`).
fn counted(server: &Server, metric: &str, path: &str, method: Option<&str>) -> u64 {
    rows(
        server,
        json!({"operation": "get_analytics", "metric": metric}),
    )
    .iter()
    .filter(|r| r["path"] == path)
    .filter(|r| match method {
        Some(m) => r["method"] == m,
        None => r["type"] == "operation",
    })
    .map(|r| r["count"].as_u64().unwrap_or(0))
    .sum()
}

fn start() -> (Server, tempfile::TempDir) {
    let app = tempfile::tempdir().expect("app dir");
    common::write_schema_app(app.path(), SCHEMA);
    let server = Builder::new()
        .app(app.path())
        .arg("--STORAGE_SYNC", "false")
        .arg("--ANALYTICS_AGGREGATEPERIOD", "1")
        .start();
    (server, app)
}

fn traffic(server: &Server) {
    for i in 0..PUTS {
        let resp = ureq::put(&server.url(&format!("/Dog/{i}")))
            .set("Content-Type", "application/json")
            .send_string(&json!({"name": format!("dog {i}")}).to_string())
            .expect("PUT");
        assert_eq!(resp.status(), 204);
    }
    for i in 0..GETS {
        let resp = ureq::get(&server.url(&format!("/Dog/{}", i % PUTS)))
            .call()
            .expect("GET");
        assert_eq!(resp.status(), 200);
    }
    for _ in 0..MISSING {
        match ureq::get(&server.url("/Dog/no-such-dog")).call() {
            Err(ureq::Error::Status(404, _)) => {}
            other => panic!("expected 404, got {other:?}"),
        }
    }
    for _ in 0..DESCRIBES {
        let (status, _) = ops_post(server, None, &json!({"operation": "describe_all"}));
        assert_eq!(status, 200);
    }
}

/// Waits until every request made is in a folded row (folds run every second; the bound is
/// only how long a broken server is given).
fn wait_folded(server: &Server) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let done = counted(server, "duration", "Dog", Some("GET")) >= GETS + MISSING
            && counted(server, "duration", "Dog", Some("PUT")) >= PUTS
            && counted(server, "duration", "describe_all", None) >= DESCRIBES
            && !rows(
                server,
                json!({"operation": "get_analytics", "metric": "table-size"}),
            )
            .is_empty();
        if done {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "requests never reached hdb_analytics"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn get_analytics_answers_harperdbs_rows_and_counts_every_request() {
    let (server, _app) = start();
    traffic(&server);
    wait_folded(&server);

    // Each request counted once: no report lost or folded twice.
    assert_eq!(
        counted(&server, "duration", "Dog", Some("GET")),
        GETS + MISSING
    );
    assert_eq!(counted(&server, "duration", "Dog", Some("PUT")), PUTS);
    assert_eq!(
        counted(&server, "duration", "describe_all", None),
        DESCRIBES
    );
    assert_eq!(counted(&server, "response_204", "Dog", Some("PUT")), PUTS);
    assert_eq!(
        counted(&server, "response_404", "Dog", Some("GET")),
        MISSING
    );
    let success: u64 = rows(
        &server,
        json!({"operation": "get_analytics", "metric": "success"}),
    )
    .iter()
    .filter(|r| r["path"] == "Dog" && r["method"] == "GET")
    .map(|r| r["total"].as_u64().unwrap_or(0))
    .sum();
    assert_eq!(success, GETS, "successes are the GETs answered below 400");

    // HarperDB 4.7.29's keys of a folded distribution metric (REST: method; operation: type).
    let percentiles = [
        "period", "metric", "path", "mean", "count", "p1", "p10", "p25", "median", "p75", "p90",
        "p95", "p99", "p999", "id", "time", "node",
    ];
    let with = |extra: &str| {
        let mut s = set(&percentiles);
        s.insert(extra.to_string());
        s
    };
    for row in rows(
        &server,
        json!({"operation": "get_analytics", "metric": "duration"}),
    ) {
        let expected = if row["type"] == "operation" {
            with("type")
        } else {
            with("method")
        };
        assert_eq!(keys(&row), expected, "{row}");
        assert!(row["id"].is_number() && row["time"].is_number() && row["node"].is_string());
        assert_eq!(row["period"].as_f64(), Some(1000.0), "{row}");
    }
    // A yes/no metric: HarperDB's keys, plus `ratio` once two reports were merged.
    for row in rows(
        &server,
        json!({"operation": "get_analytics", "metric": "success"}),
    ) {
        let naming = if row["type"] == "operation" {
            "type"
        } else {
            "method"
        };
        let mut expected = set(&[
            "period", "metric", "path", naming, "total", "count", "id", "time", "node",
        ]);
        if row.get("ratio").is_some() {
            expected.insert("ratio".into());
        }
        assert_eq!(keys(&row), expected, "{row}");
    }
    let usage = rows(
        &server,
        json!({"operation": "get_analytics", "metric": "resource-usage"}),
    );
    assert_eq!(
        keys(&usage[0]),
        set(&[
            "metric",
            "userCPUTime",
            "systemCPUTime",
            "minorPageFault",
            "majorPageFault",
            "fsRead",
            "fsWrite",
            "voluntaryContextSwitches",
            "involuntaryContextSwitches",
            "time",
            "period",
            "id",
            "cpuUtilization",
            "node",
        ])
    );
    let sizes = rows(
        &server,
        json!({"operation": "get_analytics", "metric": "table-size"}),
    );
    assert!(
        sizes
            .iter()
            .any(|r| r["database"] == "data" && r["table"] == "Dog"),
        "{sizes:?}"
    );
    assert_eq!(
        keys(&sizes[0]),
        set(&["metric", "database", "table", "size", "id", "node"])
    );
    let db = rows(
        &server,
        json!({"operation": "get_analytics", "metric": "database-size"}),
    );
    assert_eq!(
        keys(&db[0]),
        set(&["metric", "database", "size", "used", "free", "audit", "id", "node"])
    );
}

#[test]
fn get_analytics_selects_filters_and_lists() {
    let (server, _app) = start();
    traffic(&server);
    wait_folded(&server);

    // get_attributes always brings `id`.
    for row in rows(
        &server,
        json!({"operation": "get_analytics", "metric": "duration", "get_attributes": ["metric", "count"]}),
    ) {
        assert_eq!(keys(&row), set(&["metric", "count", "id"]), "{row}");
    }
    // Conditions in either spelling, on attributes the table does not declare.
    let gets = rows(
        &server,
        json!({"operation": "get_analytics", "metric": "duration",
               "conditions": [{"search_attribute": "method", "search_type": "equals", "search_value": "GET"}]}),
    );
    assert!(
        !gets.is_empty() && gets.iter().all(|r| r["method"] == "GET"),
        "{gets:?}"
    );
    let big = rows(
        &server,
        json!({"operation": "get_analytics", "metric": "duration",
               "conditions": [{"attribute": "count", "comparator": "greater_than", "value": 1000}]}),
    );
    assert!(big.is_empty(), "{big:?}");
    // start_time/end_time bound `id` (milliseconds).
    let all = rows(
        &server,
        json!({"operation": "get_analytics", "metric": "duration"}),
    );
    let first = all[0]["id"].as_f64().expect("id");
    let last = all[all.len() - 1]["id"].as_f64().expect("id");
    // (Later folds add rows, so the window is closed at the newest row seen.)
    let from = rows(
        &server,
        json!({"operation": "get_analytics", "metric": "duration",
               "start_time": first + 0.0005, "end_time": last + 0.0005}),
    );
    assert_eq!(from.len(), all.len() - 1);
    let until = rows(
        &server,
        json!({"operation": "get_analytics", "metric": "duration", "end_time": first + 0.0005}),
    );
    assert_eq!(until.len(), 1);
    assert!(rows(
        &server,
        json!({"operation": "get_analytics", "metric": "no-such"})
    )
    .is_empty());

    // list_metrics: HarperDB's built-in names by default; `custom` adds what was stored.
    let builtin = json!([
        "table-size",
        "database-size",
        "storage-volume",
        "main-thread-utilization",
        "resource-usage",
        "utilization"
    ]);
    assert_eq!(
        Value::Array(rows(&server, json!({"operation": "list_metrics"}))),
        builtin
    );
    let custom = rows(
        &server,
        json!({"operation": "list_metrics", "metric_types": ["custom"]}),
    );
    for name in [
        "duration",
        "success",
        "response_200",
        "response_204",
        "bytes-sent",
    ] {
        assert!(custom.contains(&json!(name)), "{name} not in {custom:?}");
    }
    assert!(!custom.contains(&json!("table-size")), "{custom:?}");

    // describe_metric: `node` first, then the newest row's attributes with JavaScript types.
    let (status, described) = ops_post(
        &server,
        None,
        &json!({"operation": "describe_metric", "metric": "duration"}),
    );
    assert_eq!(status, 200);
    let attributes = described["attributes"].as_array().expect("attributes");
    assert_eq!(attributes[0], json!({"name": "node", "type": "string"}));
    assert!(attributes.contains(&json!({"name": "median", "type": "number"})));
    assert!(attributes.contains(&json!({"name": "path", "type": "string"})));
    let (_, none) = ops_post(
        &server,
        None,
        &json!({"operation": "describe_metric", "metric": "no-such"}),
    );
    assert_eq!(none, json!({}));

    // Super users only, as in HarperDB.
    let (status, _) = ops_post(
        &server,
        None,
        &json!({"operation": "add_role", "role": "plain", "permission": {"super_user": false}}),
    );
    assert_eq!(status, 200);
    let (status, _) = ops_post(
        &server,
        None,
        &json!({"operation": "add_user", "username": "plain", "password": "Pla1n-pass",
                "role": "plain", "active": true}),
    );
    assert_eq!(status, 200);
    use base64::Engine;
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("plain:Pla1n-pass")
    );
    for op in ["get_analytics", "list_metrics", "describe_metric"] {
        let (status, answer) = ops_post(
            &server,
            Some(&basic),
            &json!({"operation": op, "metric": "duration"}),
        );
        assert_eq!(status, 403, "{op}: {answer}");
    }
}
