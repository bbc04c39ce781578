//! The `sql` operation against the real binary: seeded random SELECTs (filters, joins, group by,
//! order/limit) over generated tables, each compared with the same computation in plain Rust
//! over the records (`TIDEPOOL_SEED` replays a run; a failure prints the seed); SQL writes
//! (answers, audit log, a subscriber sees them); role checks (403 shape).

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{Rng, Server};
use serde_json::{json, Map, Value};

fn post(server: &Server, auth: Option<&str>, body: &Value) -> (u16, Value) {
    common::ops_post(server, auth, body)
}

fn ok(server: &Server, body: Value) -> Value {
    let (status, reply) = post(server, None, &body);
    assert_eq!(status, 200, "{body} → {reply}");
    reply
}

fn sql(server: &Server, text: &str) -> (u16, Value) {
    post(server, None, &json!({"operation": "sql", "sql": text}))
}

fn sql_ok(server: &Server, text: &str) -> Value {
    let (status, reply) = sql(server, text);
    assert_eq!(status, 200, "{text} → {reply}");
    reply
}

/// A generated `dev.a` record: `x` may be absent or null, `s` one of a few words.
#[derive(Debug, Clone)]
struct A {
    id: i64,
    x: Option<Option<i64>>,
    s: String,
}

#[derive(Debug, Clone)]
struct B {
    id: i64,
    a_id: Option<i64>,
    v: i64,
}

const WORDS: [&str; 5] = ["apple", "avocado", "banana", "cherry", "date"];

/// A WHERE condition, rendered as SQL and evaluated in Rust (a comparison with a missing or
/// null `x` is false; NOT flips it, as HarperDB's JavaScript evaluation does).
#[derive(Debug, Clone)]
enum Cond {
    Cmp(&'static str, i64),
    Between(i64, i64),
    In(Vec<i64>),
    Like(String),
    IsNull,
    IsNotNull,
    IdEq(i64),
    /// `s = 'word'`: driven by the index on `s`.
    SIs(&'static str),
    And(Box<Cond>, Box<Cond>),
    Or(Box<Cond>, Box<Cond>),
    Not(Box<Cond>),
}

impl Cond {
    fn gen(rng: &mut Rng, depth: u32) -> Cond {
        let k = rng.below(12) as i64;
        match rng.below(if depth == 0 { 8 } else { 11 }) {
            0 => Cond::Cmp(["=", "!=", "<", "<=", ">", ">="][rng.below(6) as usize], k),
            1 => Cond::Between(k, k + rng.below(5) as i64),
            2 => Cond::In(
                (0..1 + rng.below(4))
                    .map(|_| rng.below(12) as i64)
                    .collect(),
            ),
            3 => {
                let w = WORDS[rng.below(5) as usize];
                let cut = 1 + rng.below(w.len() as u64 - 1) as usize;
                Cond::Like(match rng.below(3) {
                    0 => format!("{}%", &w[..cut]),
                    1 => format!("%{}", &w[cut..]),
                    _ => format!("%{}%", &w[1..cut.max(2)]),
                })
            }
            4 => Cond::IsNull,
            5 => Cond::IsNotNull,
            6 => Cond::IdEq(rng.below(70) as i64),
            7 => Cond::SIs(WORDS[rng.below(5) as usize]),
            8 => Cond::And(
                Box::new(Cond::gen(rng, depth - 1)),
                Box::new(Cond::gen(rng, depth - 1)),
            ),
            9 => Cond::Or(
                Box::new(Cond::gen(rng, depth - 1)),
                Box::new(Cond::gen(rng, depth - 1)),
            ),
            _ => Cond::Not(Box::new(Cond::gen(rng, depth - 1))),
        }
    }

    fn sql(&self, q: &str) -> String {
        match self {
            Cond::Cmp(op, k) => format!("{q}x {op} {k}"),
            Cond::Between(lo, hi) => format!("{q}x BETWEEN {lo} AND {hi}"),
            Cond::In(list) => format!(
                "{q}x IN ({})",
                list.iter()
                    .map(i64::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Cond::Like(p) => format!("{q}s LIKE '{p}'"),
            Cond::IsNull => format!("{q}x IS NULL"),
            Cond::IsNotNull => format!("{q}x IS NOT NULL"),
            Cond::IdEq(k) => format!("{q}id = {k}"),
            Cond::SIs(w) => format!("{q}s = '{w}'"),
            Cond::And(a, b) => format!("({} AND {})", a.sql(q), b.sql(q)),
            Cond::Or(a, b) => format!("({} OR {})", a.sql(q), b.sql(q)),
            Cond::Not(a) => format!("NOT ({})", a.sql(q)),
        }
    }

    fn eval(&self, r: &A) -> bool {
        let x = r.x.flatten();
        match self {
            Cond::Cmp(op, k) => x.is_some_and(|x| match *op {
                "=" => x == *k,
                "!=" => x != *k,
                "<" => x < *k,
                "<=" => x <= *k,
                ">" => x > *k,
                _ => x >= *k,
            }),
            Cond::Between(lo, hi) => x.is_some_and(|x| *lo <= x && x <= *hi),
            Cond::In(list) => x.is_some_and(|x| list.contains(&x)),
            Cond::Like(p) => like(&r.s, p),
            Cond::IsNull => x.is_none(),
            Cond::IsNotNull => x.is_some(),
            Cond::IdEq(k) => r.id == *k,
            Cond::SIs(w) => r.s == *w,
            Cond::And(a, b) => a.eval(r) && b.eval(r),
            Cond::Or(a, b) => a.eval(r) || b.eval(r),
            Cond::Not(a) => !a.eval(r),
        }
    }
}

/// LIKE for the generated patterns: `%` at either end only.
fn like(s: &str, p: &str) -> bool {
    match (p.strip_prefix('%'), p.strip_suffix('%')) {
        (Some(rest), _) if rest.ends_with('%') => s.contains(&rest[..rest.len() - 1]),
        (Some(rest), _) => s.ends_with(rest),
        (None, Some(rest)) => s.starts_with(rest),
        (None, None) => s == p,
    }
}

/// A selected record: `x` a record lacks is null (an attribute of the table).
fn row_a(r: &A, with_s: bool) -> Value {
    let mut o = Map::new();
    o.insert("id".into(), json!(r.id));
    o.insert("x".into(), json!(r.x.flatten()));
    if with_s {
        o.insert("s".into(), json!(r.s));
    }
    Value::Object(o)
}

fn seed_tables(server: &Server, rng: &mut Rng) -> (Vec<A>, Vec<B>) {
    for t in ["a", "b"] {
        ok(
            server,
            json!({"operation": "create_table", "database": "dev", "table": t, "primary_key": "id"}),
        );
    }
    let a: Vec<A> = (0..60)
        .map(|id| A {
            id,
            x: match rng.below(6) {
                0 => None,
                1 => Some(None),
                _ => Some(Some(rng.below(12) as i64)),
            },
            s: WORDS[rng.below(5) as usize].to_string(),
        })
        .collect();
    let b: Vec<B> = (100..190)
        .map(|id| B {
            id,
            a_id: (rng.below(8) != 0).then(|| rng.below(70) as i64),
            v: rng.below(50) as i64,
        })
        .collect();
    let records: Vec<Value> = a
        .iter()
        .map(|r| {
            let mut v = row_a(r, true);
            if r.x.is_none() {
                if let Some(o) = v.as_object_mut() {
                    o.remove("x");
                }
            }
            v
        })
        .collect();
    ok(
        server,
        json!({"operation": "insert", "database": "dev", "table": "a", "records": records}),
    );
    let records: Vec<Value> = b
        .iter()
        .map(|r| match r.a_id {
            Some(a) => json!({"id": r.id, "a_id": a, "v": r.v}),
            None => json!({"id": r.id, "v": r.v}),
        })
        .collect();
    ok(
        server,
        json!({"operation": "insert", "database": "dev", "table": "b", "records": records}),
    );
    (a, b)
}

fn window<T: Clone>(rows: &[T], offset: usize, limit: Option<usize>) -> Vec<T> {
    rows.iter()
        .skip(offset)
        .take(limit.unwrap_or(usize::MAX))
        .cloned()
        .collect()
}

fn filter_query(rng: &mut Rng, a: &[A]) -> (String, Value) {
    let cond = Cond::gen(rng, 2);
    let desc = rng.below(2) == 0;
    let (offset, limit) = (
        rng.below(5) as usize,
        (rng.below(3) != 0).then(|| rng.below(30) as usize),
    );
    let mut rows: Vec<&A> = a.iter().filter(|r| cond.eval(r)).collect();
    // ORDER BY x (NULL and missing first), then id.
    rows.sort_by_key(|r| (r.x.flatten(), r.id));
    if desc {
        rows.sort_by_key(|r| (std::cmp::Reverse(r.x.flatten()), r.id));
    }
    let mut text = format!(
        "SELECT id, x, s FROM dev.a WHERE {} ORDER BY x {}, id",
        cond.sql(""),
        if desc { "DESC" } else { "ASC" }
    );
    if let Some(l) = limit {
        text.push_str(&format!(" LIMIT {l}"));
    }
    if offset > 0 {
        text.push_str(&format!(" OFFSET {offset}"));
    }
    let rows: Vec<Value> = rows.iter().map(|r| row_a(r, true)).collect();
    (text, Value::Array(window(&rows, offset, limit)))
}

fn group_query(rng: &mut Rng, a: &[A]) -> (String, Value) {
    let cond = Cond::gen(rng, 1);
    let mut groups: BTreeMap<&str, Vec<&A>> = BTreeMap::new();
    for r in a.iter().filter(|r| cond.eval(r)) {
        groups.entry(r.s.as_str()).or_default().push(r);
    }
    let min_n = rng.below(4);
    let rows: Vec<Value> = groups
        .iter()
        .filter(|(_, rs)| rs.len() as u64 >= min_n)
        .map(|(s, rs)| {
            let xs: Vec<i64> = rs.iter().filter_map(|r| r.x.flatten()).collect();
            let mut o = Map::new();
            o.insert("s".into(), json!(s));
            o.insert("n".into(), json!(rs.len()));
            o.insert("nx".into(), json!(xs.len()));
            if !xs.is_empty() {
                o.insert("total".into(), json!(xs.iter().sum::<i64>()));
                o.insert("lo".into(), json!(xs.iter().min()));
                o.insert("hi".into(), json!(xs.iter().max()));
            }
            Value::Object(o)
        })
        .collect();
    let text = format!(
        "SELECT s, COUNT(*) AS n, COUNT(x) AS nx, SUM(x) AS total, MIN(x) AS lo, MAX(x) AS hi \
         FROM dev.a WHERE {} GROUP BY s HAVING COUNT(*) >= {min_n} ORDER BY s",
        cond.sql("")
    );
    (text, Value::Array(rows))
}

fn join_query(rng: &mut Rng, a: &[A], b: &[B]) -> (String, Value) {
    let cond = Cond::gen(rng, 1);
    let left = rng.below(2) == 0;
    let mut rows = Vec::new();
    for ra in a.iter().filter(|r| cond.eval(r)) {
        let mut matched: Vec<&B> = b.iter().filter(|rb| rb.a_id == Some(ra.id)).collect();
        matched.sort_by_key(|rb| rb.id);
        for rb in &matched {
            rows.push(json!({"aid": ra.id, "bid": rb.id, "v": rb.v}));
        }
        if matched.is_empty() && left {
            rows.push(json!({"aid": ra.id, "bid": null, "v": null}));
        }
    }
    let limit = rng.below(40) as usize + 1;
    let text = format!(
        "SELECT a.id AS aid, b.id AS bid, b.v FROM dev.a a {} JOIN dev.b AS b ON a.id = b.a_id \
         WHERE {} ORDER BY a.id, b.id LIMIT {limit}",
        if left { "LEFT" } else { "INNER" },
        cond.sql("a.")
    );
    (text, Value::Array(window(&rows, 0, Some(limit))))
}

#[test]
fn random_selects_match_a_brute_force_computation() {
    let seed = common::seed();
    println!("TIDEPOOL_SEED={seed}");
    let mut rng = Rng(seed);
    let server = Server::start();
    let (a, b) = seed_tables(&server, &mut rng);
    let mut nonempty = 0;
    for round in 0..240 {
        let (text, expected) = match round % 3 {
            0 => filter_query(&mut rng, &a),
            1 => group_query(&mut rng, &a),
            _ => join_query(&mut rng, &a, &b),
        };
        let got = sql_ok(&server, &text);
        assert_eq!(got, expected, "seed {seed}, round {round}: {text}");
        nonempty += usize::from(expected.as_array().is_some_and(|e| !e.is_empty()));
    }
    assert!(
        nonempty >= 100,
        "only {nonempty} rounds matched anything (seed {seed})"
    );
    // Counting, arithmetic without FROM, DISTINCT.
    assert_eq!(
        sql_ok(&server, "SELECT COUNT(*) FROM dev.a"),
        json!([{"COUNT(*)": 60}])
    );
    assert_eq!(sql_ok(&server, "select 2 + 2"), json!([{"2 + 2": 4}]));
    // The hash join matches what a WHERE matches: a number and numeric text, a boolean and text.
    for t in ["p", "q"] {
        ok(
            &server,
            json!({"operation": "create_table", "database": "dev", "table": t, "primary_key": "id"}),
        );
    }
    sql_ok(
        &server,
        "INSERT INTO dev.p (id, k) VALUES (1, '7'), (2, true), (3, 'x'), (4, null)",
    );
    sql_ok(
        &server,
        "INSERT INTO dev.q (id, k) VALUES (10, 7), (20, 'true'), (30, 'x'), (40, null)",
    );
    let joined = "SELECT p.id AS p, q.id AS q FROM dev.p p JOIN dev.q q ON p.k = q.k ORDER BY p.id";
    let crossed = "SELECT p.id AS p, q.id AS q FROM dev.p p, dev.q q WHERE p.k = q.k ORDER BY p.id";
    let expected = json!([{"p": 1, "q": 10}, {"p": 2, "q": 20}, {"p": 3, "q": 30}]);
    assert_eq!(sql_ok(&server, joined), expected);
    assert_eq!(sql_ok(&server, crossed), expected);
    let mut words: Vec<&str> = a.iter().map(|r| r.s.as_str()).collect();
    words.sort();
    words.dedup();
    let expected: Vec<Value> = words.iter().map(|w| json!({"s": w})).collect();
    assert_eq!(
        sql_ok(&server, "SELECT DISTINCT s FROM dev.a ORDER BY s"),
        Value::Array(expected)
    );
}

/// Server-Sent Events on a raw socket: the next event's data object.
struct Sse(BufReader<TcpStream>);

impl Sse {
    fn connect(server: &Server, path: &str) -> Sse {
        let mut stream = TcpStream::connect(server.rest).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n"
        )
        .unwrap();
        let mut reader = BufReader::new(stream);
        let mut status = String::new();
        reader.read_line(&mut status).unwrap();
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                break;
            }
        }
        Sse(reader)
    }

    fn next(&mut self) -> Option<Value> {
        loop {
            let mut line = String::new();
            if self.0.read_line(&mut line).ok()? == 0 {
                return None;
            }
            if let Some(d) = line.trim_end().strip_prefix("data: ") {
                return serde_json::from_str(d).ok();
            }
        }
    }

    /// The first of the next `n` events `pick` accepts.
    fn find(&mut self, n: usize, pick: impl Fn(&Value) -> bool) -> Value {
        for _ in 0..n {
            let Some(e) = self.next() else { break };
            if pick(&e) {
                return e;
            }
        }
        panic!("no matching event in {n}");
    }
}

#[test]
fn writes_answer_like_harperdb_are_audited_and_reach_subscribers() {
    let server = Server::start();
    ok(
        &server,
        json!({"operation": "create_table", "database": "dev", "table": "w", "primary_key": "id"}),
    );
    assert_eq!(
        sql_ok(
            &server,
            "INSERT INTO dev.w (id, name, n) VALUES (1, 'one', 1), (2, 'two', 2)"
        ),
        json!({"message": "inserted 2 of 2 records", "inserted_hashes": [1, 2], "skipped_hashes": []})
    );
    assert_eq!(
        sql_ok(&server, "INSERT INTO dev.w (id, name) VALUES (1, 'again')"),
        json!({"message": "inserted 0 of 1 records", "inserted_hashes": [], "skipped_hashes": [1]})
    );
    assert_eq!(
        sql_ok(
            &server,
            "UPDATE dev.w SET n = n * 10, up = UPPER(name) WHERE id = 1"
        ),
        json!({"message": "updated 1 of 1 records", "update_hashes": [1], "skipped_hashes": []})
    );
    assert_eq!(
        sql_ok(&server, "UPDATE dev.w SET name = 'x' WHERE id = 99"),
        json!({"message": "updated 0 of 0 records", "update_hashes": [], "skipped_hashes": []})
    );
    assert_eq!(
        sql_ok(&server, "SELECT id, name, n, up FROM dev.w ORDER BY id"),
        json!([{"id": 1, "name": "one", "n": 10, "up": "ONE"}, {"id": 2, "name": "two", "n": 2, "up": null}])
    );
    assert_eq!(
        sql_ok(&server, "DELETE FROM dev.w WHERE name = 'two'"),
        json!({"message": "1 of 1 record successfully deleted", "deleted_hashes": [2], "skipped_hashes": []})
    );
    let (status, reply) = sql(&server, "INSERT INTO dev.w (id, `a/b`) VALUES (3, 1)");
    assert_eq!(
        (status, reply["error"].as_str()),
        (
            400,
            Some("Attribute names cannot include backticks or forward slashes")
        )
    );
    let (status, _) = sql(&server, "SELECT * FROM dev.nope");
    assert_eq!(status, 404);
    let (status, _) = sql(&server, "DROP TABLE dev.w");
    assert_eq!(status, 400);
    // As HarperDB: a SELECT names each table's database; an unquoted AlaSQL reserved word
    // cannot name a table or column (backticks can).
    let (status, reply) = sql(&server, "SELECT * FROM w");
    assert_eq!(
        (status, reply["error"].as_str()),
        (400, Some("schema not defined for table w"))
    );
    let (status, reply) = sql(&server, "select * from call.aggr");
    assert_eq!(
        (status, reply["error"].as_str()),
        (400, Some("Invalid SQL at: select * from call.aggr. Please ensure your SQL is valid. Try adding backticks to reserved words and schema table references."))
    );
    let (status, reply) = sql(&server, "SELECT `value` FROM `dev`.`w`");
    assert_eq!(status, 200, "{reply}");
    let (status, _) = sql(&server, "SELECT value FROM dev.w");
    assert_eq!(status, 400);
    let (status, reply) = sql(&server, "SELECT NO_SUCH_FUNCTION(name) FROM dev.w");
    assert_eq!(status, 501, "{reply}");
    // The audit log has the SQL writes like any other.
    let audit = ok(
        &server,
        json!({"operation": "read_audit_log", "database": "dev", "table": "w"}),
    );
    let entries = audit.as_array().expect("audit array");
    let touched = |op: &str, id: i64| {
        entries.iter().any(|e| {
            e["operation"].as_str().is_some_and(|o| o.contains(op))
                && e["hash_values"]
                    .as_array()
                    .is_some_and(|h| h.contains(&json!(id)))
        })
    };
    assert!(touched("delete", 2), "{audit}");
    assert!(entries.len() >= 3, "{audit}");
    // A subscriber to a record sees SQL writes to it.
    let mut sse = Sse::connect(&server, "/Dog/sq1");
    sql_ok(
        &server,
        "INSERT INTO data.Dog (id, name, age) VALUES ('sq1', 'Rex', 3)",
    );
    let e = sse.find(5, |e| e["value"]["name"] == "Rex");
    assert_eq!(e["value"]["age"], 3);
    sql_ok(&server, "UPDATE data.Dog SET age = 4 WHERE id = 'sq1'");
    let e = sse.find(5, |e| e["value"]["age"] == 4);
    assert_eq!(e["value"]["name"], "Rex");
    sql_ok(&server, "DELETE FROM data.Dog WHERE id = 'sq1'");
    sse.find(5, |e| e["type"] == "delete");
}

#[test]
fn role_rights_apply_to_sql() {
    let server = Server::start();
    for t in ["w", "hidden"] {
        ok(
            &server,
            json!({"operation": "create_table", "database": "dev", "table": t, "primary_key": "id"}),
        );
    }
    sql_ok(
        &server,
        "INSERT INTO dev.w (id, name, secret) VALUES (1, 'a', 's')",
    );
    sql_ok(&server, "INSERT INTO dev.hidden (id, v) VALUES (1, 2)");
    let perm = json!({"dev": {"tables": {"w": {"read": true, "insert": false, "update": true, "delete": false,
        "attribute_permissions": [
            {"attribute_name": "name", "read": true, "insert": false, "update": true},
            {"attribute_name": "secret", "read": false, "insert": false, "update": false}]}}}});
    ok(
        &server,
        json!({"operation": "add_role", "role": "r", "permission": perm}),
    );
    ok(
        &server,
        json!({"operation": "add_user", "username": "ann", "password": "pw-ann-1", "role": "r", "active": true}),
    );
    let auth = format!(
        "Basic {}",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "ann:pw-ann-1")
    );
    let as_ann = |text: &str| {
        post(
            &server,
            Some(&auth),
            &json!({"operation": "sql", "sql": text}),
        )
    };
    let (status, rows) = as_ann("SELECT * FROM dev.w");
    assert_eq!(status, 200, "{rows}");
    let row = rows[0].as_object().expect("row");
    assert_eq!(
        (row.get("id"), row.get("name")),
        (Some(&json!(1)), Some(&json!("a")))
    );
    assert!(row.get("secret").is_none(), "{rows}");
    let forbidden =
        "This operation is not authorized due to role restrictions and/or invalid database items";
    let (status, reply) = as_ann("SELECT id FROM dev.w WHERE secret = 's'");
    assert_eq!(status, 403);
    assert_eq!(
        reply,
        json!({"error": forbidden, "unauthorized_access": [],
            "invalid_schema_items": ["Attribute 'secret' does not exist on 'dev.w'"]})
    );
    let (status, reply) = as_ann("SELECT h.v FROM dev.w w JOIN dev.hidden h ON w.id = h.id");
    assert_eq!(status, 403);
    assert_eq!(
        reply["invalid_schema_items"],
        json!(["Table 'dev.hidden' does not exist"])
    );
    let (status, reply) = as_ann("SELECT * FROM nope.w");
    assert_eq!(status, 403);
    assert_eq!(
        reply["invalid_schema_items"],
        json!(["database 'nope' does not exist"])
    );
    let (status, reply) = as_ann("INSERT INTO dev.w (id, name) VALUES (2, 'b')");
    assert_eq!(status, 403);
    assert_eq!(
        reply,
        json!({"error": forbidden, "invalid_schema_items": [], "unauthorized_access": [{
            "schema": "dev", "table": "w", "required_table_permissions": ["insert"],
            "required_attribute_permissions": []}]})
    );
    let (status, reply) = as_ann("UPDATE dev.w SET name = 'z' WHERE id = 1");
    assert_eq!(
        (status, &reply["message"]),
        (200, &json!("updated 1 of 1 records"))
    );
    let (status, _) = as_ann("DELETE FROM dev.w WHERE id = 1");
    assert_eq!(status, 403);
    let (status, reply) =
        as_ann("UPDATE system.hdb_user SET role = 'super_user' WHERE username = 'ann'");
    assert_eq!(status, 403, "{reply}");
    assert_eq!(
        sql_ok(&server, "SELECT name FROM dev.w"),
        json!([{"name": "z"}])
    );
}

/// Answers of HarperDB 4.7.29 to the same statements (its API suite, `3_sqlTests`).
#[test]
fn geo_and_date_functions_answer_as_harperdb() {
    let server = Server::start();
    let cases = [
        (
            r#"SELECT geoArea('{"type":"Feature","geometry":{"type":"Polygon","coordinates":[[[0,0],[0.123456,0],[0.123456,0.123456],[0,0.123456]]]}}') AS a"#,
            json!([{"a": 188871526.05092356}]),
        ),
        (
            r#"SELECT geoLength('{"type": "Feature","geometry": {"type": "LineString","coordinates": [[-104.97963309288025,39.76163265441438],[-104.9823260307312,39.76365323407955],[-104.99193906784058,39.75616442110704]]}}') AS l"#,
            json!([{"l": 1.491544504248235}]),
        ),
        (
            "SELECT geoDistance('[-104.979127,39.761563]', '[-77.035248,38.889475]', 'miles')",
            json!([{"geoDistance('[-104.979127,39.761563]','[-77.035248,38.889475]','miles')": 1488.6913067538915}]),
        ),
        (
            "SELECT geoNear('[-104.979127,39.761563]', '[-77.035248,38.889475]', 1500, 'miles') AS n",
            json!([{"n": true}]),
        ),
        (
            r#"SELECT geoConvert('[-104.979127,39.761563]','point','{"name": "HQ"}') AS g"#,
            json!([{"g": {"type": "Feature", "properties": "{\"name\": \"HQ\"}",
                "geometry": {"type": "Point", "coordinates": [-104.979127, 39.761563]}}}]),
        ),
        (
            "SELECT DATE_SUB('2020-4-1', 3, 'years') AS d, DATE_FORMAT(1585699200000, 'dddd YYYY-MM-DD') AS f",
            json!([{"d": 1491004800000i64, "f": "Wednesday 2020-04-01"}]),
        ),
        (
            "SELECT OFFSET_UTC(1585699200000, -6) AS o, DATE_DIFF('2020-4-8', '2020-4-1', 'days') AS n",
            json!([{"o": "2020-03-31T18:00:00.000-0600", "n": 7}]),
        ),
    ];
    for (text, expected) in cases {
        assert_eq!(sql_ok(&server, text), expected, "{text}");
    }
    // HarperDB's answers in its API suite (3_sqlTests: geoContains test 1, geoDifference tests).
    let colorado = r#"{"type": "Feature","properties": {"name":"Colorado"},"geometry": {"type": "Polygon","coordinates": [[[-109.072265625,37.00255267215955],[-102.01904296874999,37.00255267215955],[-102.01904296874999,41.0130657870063],[-109.072265625,41.0130657870063],[-109.072265625,37.00255267215955]]]}}"#;
    let park = r#"{"type": "Feature","properties": {"name":"City Park"},"geometry": {"type": "Polygon","coordinates": [[[-104.95973110198975,39.7543828214657],[-104.95955944061278,39.744781185675386],[-104.95904445648193,39.74422022399989],[-104.95835781097412,39.74402223643582],[-104.94097709655762,39.74392324244047],[-104.9408483505249,39.75434982844515],[-104.95973110198975,39.7543828214657]]]}}"#;
    let text = format!(
        r#"SELECT geoContains('{colorado}', '{{"type":"Point","coordinates":[-104.979127,39.761563]}}') AS c, geoContains('{park}', '{{"type":"Point","coordinates":[-104.979127,39.761563]}}') AS p"#
    );
    assert_eq!(sql_ok(&server, &text), json!([{"c": true, "p": false}]));
    let text = format!(
        "SELECT geoDifference('{colorado}', '{park}') AS d, geoDifference('{colorado}', null) AS n"
    );
    assert_eq!(
        sql_ok(&server, &text),
        json!([{"d": {"type": "Feature", "properties": {"name": "Colorado"}, "geometry": {
            "type": "Polygon", "coordinates": [
                [[-109.072265625, 37.00255267215955], [-102.01904296874999, 37.00255267215955],
                 [-102.01904296874999, 41.0130657870063], [-109.072265625, 41.0130657870063],
                 [-109.072265625, 37.00255267215955]],
                [[-104.95973110198975, 39.7543828214657], [-104.9408483505249, 39.75434982844515],
                 [-104.94097709655762, 39.74392324244047], [-104.95835781097412, 39.74402223643582],
                 [-104.95904445648193, 39.74422022399989], [-104.95955944061278, 39.744781185675386],
                 [-104.95973110198975, 39.7543828214657]]]}}}]),
        "{text}"
    );
    // geoCrosses: a line through the park's polygon crosses it, one beside it does not.
    let text = format!(
        r#"SELECT geoCrosses('{park}', '{{"type":"LineString","coordinates":[[-104.96,39.75],[-104.94,39.75]]}}') AS x, geoCrosses('{park}', '{{"type":"LineString","coordinates":[[-104.0,39.0],[-103.0,39.0]]}}') AS y"#
    );
    assert_eq!(sql_ok(&server, &text), json!([{"x": true, "y": false}]));
}
