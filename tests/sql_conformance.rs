//! The `sql` operation against HarperDB 4.7.29's own answers: `tests/sql_conformance/cases.json`
//! holds each documented example of HarperDB's SQL Features Matrix, SQL Date Functions, SQL JSON
//! Search and SQL Geospatial pages (and a few more rows per feature), with the answer HarperDB
//! gave (`regen.sh` starts HarperDB and rewrites them). The test runs the same setup and
//! statements against the real binary and compares: `exact` rows value for value (the record
//! stamps `__createdtime__`/`__updatedtime__` by type), `shape` rows (the clock's values) by keys,
//! types and text lengths. A row with a `difference` is one tidepool answers otherwise on purpose;
//! its reason is in the data file and tests/README.md, and the test checks tidepool's own answer
//! (`tidepool`) for it instead.

mod common;

use common::{ops_post, Server};
use serde_json::{json, Value};

const STAMPS: [&str; 2] = ["__createdtime__", "__updatedtime__"];

/// Where `got` differs from `want`: `None` when they agree.
fn differs(want: &Value, got: &Value, shape: bool, at: &str) -> Option<String> {
    let here = || Some(format!("at {at}: HarperDB {want}, tidepool {got}"));
    match (want, got) {
        (Value::Array(w), Value::Array(g)) => {
            if w.len() != g.len() {
                return Some(format!(
                    "at {at}: HarperDB {} items, tidepool {}",
                    w.len(),
                    g.len()
                ));
            }
            w.iter()
                .zip(g)
                .enumerate()
                .find_map(|(i, (a, b))| differs(a, b, shape, &format!("{at}[{i}]")))
        }
        (Value::Object(w), Value::Object(g)) => {
            let mut wk: Vec<&String> = w.keys().collect();
            let mut gk: Vec<&String> = g.keys().collect();
            wk.sort();
            gk.sort();
            if wk != gk {
                return Some(format!("at {at}: HarperDB keys {wk:?}, tidepool {gk:?}"));
            }
            w.iter().find_map(|(k, a)| {
                let stamp = STAMPS.contains(&k.as_str());
                differs(a, &g[k], shape || stamp, &format!("{at}.{k}"))
            })
        }
        (Value::Number(_), Value::Number(_)) if shape => None,
        (Value::String(w), Value::String(g)) if shape => (w.chars().count() != g.chars().count())
            .then(here)
            .flatten(),
        (Value::Number(w), Value::Number(g)) => (w.as_f64() != g.as_f64()).then(here).flatten(),
        _ => (want != got).then(here).flatten(),
    }
}

#[test]
fn documented_examples_answer_as_harperdb() {
    let cases: Value = serde_json::from_str(include_str!("sql_conformance/cases.json"))
        .expect("tests/sql_conformance/cases.json");
    let server = Server::start();
    for op in cases["setup"].as_array().expect("setup") {
        let (status, reply) = ops_post(&server, None, op);
        assert_eq!(status, 200, "setup {op} → {reply}");
    }
    let mut failures = Vec::new();
    let rows = cases["rows"].as_array().expect("rows");
    for row in rows {
        let name = format!("{} › {}", row["page"].as_str().unwrap_or(""), row["name"]);
        let (status, body) = ops_post(
            &server,
            None,
            &json!({"operation": "sql", "sql": row["sql"]}),
        );
        let expected = match row.get("difference") {
            Some(_) => &row["tidepool"],
            None => &row["expected"],
        };
        let shape = row["compare"] == "shape";
        if expected["status"].as_u64() != Some(u64::from(status)) {
            failures.push(format!(
                "{name}: status {status} ({body}), expected {}",
                expected["status"]
            ));
        } else if let Some(d) = differs(&expected["body"], &body, shape, "") {
            failures.push(format!("{name}: {d}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} rows differ:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );
}
