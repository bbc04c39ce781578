//! CSV bulk loads and jobs of the Operations API against the real binary: `csv_data_load`,
//! `csv_file_load` and `csv_url_load` (from a loopback HTTP server this test runs), read back
//! through REST and `search_by_conditions` and compared with a brute-force filter over the rows;
//! bad CSV ending in an `ERROR` job with nothing written; progress visible in `get_job`; jobs
//! found again by `search_jobs_by_start_date` and after a restart.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant};

use base64::Engine;
use common::{Builder, Rng, Server};
use serde_json::{json, Value};

fn post(server: &Server, auth: Option<(&str, &str)>, body: &Value) -> (u16, Value) {
    let header = auth.map(|(user, password)| {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        format!("Basic {token}")
    });
    common::ops_post(server, header.as_deref(), body)
}

fn op(server: &Server, body: Value) -> (u16, Value) {
    post(server, None, &body)
}

fn ok(server: &Server, body: Value) -> Value {
    let (status, reply) = op(server, body.clone());
    assert_eq!(status, 200, "{body} → {reply}");
    reply
}

fn rest_get(server: &Server, path: &str) -> Value {
    let resp = ureq::get(&server.url(path))
        .timeout(Duration::from_secs(60))
        .call()
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    serde_json::from_str(&resp.into_string().expect("body")).expect("JSON")
}

/// Starts a load and returns its job id, checking the immediate answer's shape.
fn start(server: &Server, body: Value) -> String {
    let reply = ok(server, body);
    let id = reply["job_id"].as_str().expect("job_id").to_string();
    assert_eq!(
        reply["message"],
        json!(format!("Starting job with id {id}"))
    );
    id
}

fn get_job(server: &Server, id: &str) -> Value {
    let reply = ok(server, json!({"operation": "get_job", "id": id}));
    let jobs = reply.as_array().expect("get_job answers an array");
    assert_eq!(jobs.len(), 1, "{reply}");
    jobs[0].clone()
}

/// Polls `get_job` until the job ends (bounded) and returns its last record.
fn wait_job(server: &Server, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let job = get_job(server, id);
        if matches!(job["status"].as_str(), Some("COMPLETE" | "ERROR")) {
            return job;
        }
        assert!(Instant::now() < deadline, "job {id} did not finish: {job}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One row of the Dog CSVs, with the record it must become.
#[derive(Clone)]
struct Row {
    id: String,
    name: String,
    breed: &'static str,
    age: Option<i64>,
    owner: Option<String>,
    tags: Vec<String>,
}

const HEADER: &str = "id,name,breed,age,owner,tags";
const BREEDS: [&str; 4] = ["Lab", "Poodle", "Pug", "Beagle"];

impl Row {
    fn random(rng: &mut Rng, prefix: &str, i: usize) -> Row {
        let owner = match rng.below(4) {
            0 => None,
            1 => Some(format!("O'Brien, \"Jr\" {}\nsecond line", rng.below(10))),
            _ => Some(format!("owner{}", rng.below(50))),
        };
        Row {
            id: format!("{prefix}-{i:05}"),
            // Digits only: a String attribute must keep them as text.
            name: if rng.below(10) == 0 {
                format!("{}", rng.below(1000))
            } else {
                format!("dog{}", rng.below(60))
            },
            breed: BREEDS[rng.below(4) as usize],
            age: (rng.below(6) != 0).then(|| rng.below(16) as i64),
            owner,
            tags: (0..rng.below(3))
                .map(|_| ["friendly", "loud", "old"][rng.below(3) as usize].to_string())
                .collect(),
        }
    }

    fn csv(&self) -> String {
        let quote = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
        let tags = if self.tags.is_empty() {
            String::new()
        } else {
            quote(&json!(self.tags).to_string())
        };
        format!(
            "{},{},{},{},{},{}",
            self.id,
            quote(&self.name),
            self.breed,
            self.age.map(|a| a.to_string()).unwrap_or_default(),
            self.owner.as_deref().map(quote).unwrap_or_default(),
            tags
        )
    }

    fn record(&self) -> Value {
        let mut o = json!({"id": self.id, "name": self.name, "breed": self.breed});
        if let Some(age) = self.age {
            o["age"] = json!(age);
        }
        if let Some(owner) = &self.owner {
            o["owner"] = json!(owner);
        }
        if !self.tags.is_empty() {
            o["tags"] = json!(self.tags);
        }
        o
    }
}

fn csv_of(rows: &[Row], crlf: bool) -> String {
    let end = if crlf { "\r\n" } else { "\n" };
    let mut out = format!("{HEADER}{end}");
    for row in rows {
        out.push_str(&row.csv());
        out.push_str(end);
    }
    out
}

/// The CSV's columns of a stored record (REST adds `createdAt`/`updatedAt`).
fn columns(record: &Value) -> Value {
    let mut out = serde_json::Map::new();
    for key in ["id", "name", "breed", "age", "owner", "tags"] {
        if let Some(v) = record.get(key).filter(|v| !v.is_null()) {
            out.insert(key.to_string(), v.clone());
        }
    }
    Value::Object(out)
}

fn sorted(mut records: Vec<Value>) -> Vec<Value> {
    records.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    records
}

/// How the searches below pick records, by brute force over the rows.
fn brute(rows: &HashMap<String, Row>, keep: impl Fn(&Row) -> bool) -> Vec<Value> {
    sorted(rows.values().filter(|r| keep(r)).map(Row::record).collect())
}

fn search(server: &Server, conditions: Value, operator: &str) -> Vec<Value> {
    let reply = ok(
        server,
        json!({"operation": "search_by_conditions", "table": "Dog", "operator": operator,
               "conditions": conditions}),
    );
    sorted(
        reply
            .as_array()
            .expect("array")
            .iter()
            .map(columns)
            .collect(),
    )
}

/// Checks the whole table through REST and three searches against the expected rows.
fn agree(server: &Server, rows: &HashMap<String, Row>, seed: u64) {
    let all = rest_get(server, "/Dog/");
    let got = sorted(all.as_array().expect("array").iter().map(columns).collect());
    assert_eq!(got.len(), rows.len(), "seed {seed}");
    assert_eq!(got, brute(rows, |_| true), "REST /Dog/, seed {seed}");
    let labs = rest_get(server, "/Dog/?breed=Lab");
    let labs = sorted(
        labs.as_array()
            .expect("array")
            .iter()
            .map(columns)
            .collect(),
    );
    assert_eq!(labs, brute(rows, |r| r.breed == "Lab"), "seed {seed}");
    assert_eq!(
        search(
            server,
            json!([{"attribute": "breed", "value": "Pug"},
                   {"attribute": "age", "comparator": "greater_than_equal", "value": 8}]),
            "and"
        ),
        brute(rows, |r| r.breed == "Pug" && r.age.is_some_and(|a| a >= 8)),
        "seed {seed}"
    );
    assert_eq!(
        search(
            server,
            json!([{"attribute": "name", "comparator": "starts_with", "value": "dog1"},
                   {"attribute": "tags", "value": "loud"}]),
            "or"
        ),
        brute(rows, |r| r.name.starts_with("dog1")
            || r.tags.iter().any(|t| t == "loud")),
        "seed {seed}"
    );
}

/// How the loopback server answers one path.
#[derive(Clone)]
enum Answer {
    /// 200 with `Content-Length`.
    Length(Vec<u8>),
    /// 200, chunked in pieces of the given size.
    Chunked(Vec<u8>, usize),
    /// 200, the body ending at close.
    Close(Vec<u8>),
    /// A status with an empty body.
    Status(u16),
    /// 200 claiming this `Content-Length`, then closing without a body.
    Claims(u64),
}

/// Serves `answers` by path over plain HTTP on a loopback port, for at most `connections`
/// connections; returns the base URL.
fn http_server(answers: HashMap<String, Answer>, connections: usize) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for stream in listener.incoming().take(connections) {
            let Ok(mut stream) = stream else { continue };
            let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut request_line = String::new();
            if reader.read_line(&mut request_line).is_err() {
                continue;
            }
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let path = request_line.split_whitespace().nth(1).unwrap_or("/");
            let answer = answers.get(path).cloned().unwrap_or(Answer::Status(404));
            let _ = match answer {
                Answer::Length(body) => stream
                    .write_all(
                        format!("HTTP/1.1 200 OK\r\nContent-Type: text/csv\r\nContent-Length: {}\r\n\r\n", body.len())
                            .as_bytes(),
                    )
                    .and_then(|()| stream.write_all(&body)),
                Answer::Chunked(body, size) => {
                    let mut out =
                        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
                    for piece in body.chunks(size) {
                        out.extend_from_slice(format!("{:x};ext=1\r\n", piece.len()).as_bytes());
                        out.extend_from_slice(piece);
                        out.extend_from_slice(b"\r\n");
                    }
                    out.extend_from_slice(b"0\r\n\r\n");
                    stream.write_all(&out)
                }
                Answer::Close(body) => stream
                    .write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
                    .and_then(|()| stream.write_all(&body)),
                Answer::Status(code) => stream.write_all(
                    format!("HTTP/1.1 {code} Nope\r\nContent-Length: 0\r\n\r\n").as_bytes(),
                ),
                Answer::Claims(length) => stream.write_all(
                    format!("HTTP/1.1 200 OK\r\nContent-Length: {length}\r\n\r\n").as_bytes(),
                ),
            };
        }
    });
    format!("http://{addr}")
}

#[test]
fn csv_loads_agree_with_rest_and_search() {
    let seed = common::seed();
    let mut rng = Rng(seed);
    let server = Server::start();
    let mut expected: HashMap<String, Row> = HashMap::new();
    let batch = |rng: &mut Rng, prefix: &str| -> Vec<Row> {
        (0..2000).map(|i| Row::random(rng, prefix, i)).collect()
    };

    // csv_data_load: the text in the body, LF line ends.
    let rows = batch(&mut rng, "data");
    let id = start(
        &server,
        json!({"operation": "csv_data_load", "table": "Dog", "data": csv_of(&rows, false)}),
    );
    let job = wait_job(&server, &id);
    assert_eq!(job["status"], "COMPLETE", "{job}");
    assert_eq!(job["message"], "successfully loaded 2000 of 2000 records");
    assert_eq!(job["type"], "csv_data_load");
    assert_eq!(job["user"], common::ADMIN_USER);
    assert_eq!(
        (
            job["records_total"].clone(),
            job["records_processed"].clone(),
            job["records_loaded"].clone(),
            job["records_error"].clone()
        ),
        (json!(2000), json!(2000), json!(2000), json!(0))
    );
    assert!(job["start_datetime_converted"]
        .as_str()
        .is_some_and(|s| s.ends_with('Z')));
    assert!(job["end_datetime"].as_f64() >= job["start_datetime"].as_f64());
    expected.extend(rows.into_iter().map(|r| (r.id.clone(), r)));
    agree(&server, &expected, seed);

    // csv_file_load: a file on the server, CRLF line ends.
    let rows = batch(&mut rng, "file");
    let path = server.root.path().join("dogs.csv");
    std::fs::write(&path, csv_of(&rows, true)).expect("write CSV");
    let id = start(
        &server,
        json!({"operation": "csv_file_load", "table": "Dog", "file_path": path}),
    );
    let job = wait_job(&server, &id);
    assert_eq!(job["status"], "COMPLETE", "{job}");
    assert_eq!(job["type"], "csv_file_load");
    expected.extend(rows.into_iter().map(|r| (r.id.clone(), r)));
    agree(&server, &expected, seed);

    // csv_url_load: three ways of sending a body.
    let mut answers = HashMap::new();
    let mut loads = Vec::new();
    for (n, kind) in ["length", "chunked", "close"].iter().enumerate() {
        let rows = batch(&mut rng, &format!("url{n}"));
        let body = csv_of(&rows, false).into_bytes();
        answers.insert(
            format!("/{kind}.csv"),
            match n {
                0 => Answer::Length(body),
                1 => Answer::Chunked(body, 4093),
                _ => Answer::Close(body),
            },
        );
        loads.push((format!("/{kind}.csv"), rows));
    }
    let base = http_server(answers, 3);
    for (path, rows) in loads {
        let id = start(
            &server,
            json!({"operation": "csv_url_load", "table": "Dog", "csv_url": format!("{base}{path}")}),
        );
        let job = wait_job(&server, &id);
        assert_eq!(job["status"], "COMPLETE", "{path}: {job}");
        assert_eq!(job["type"], "csv_url_load");
        expected.extend(rows.into_iter().map(|r| (r.id.clone(), r)));
    }
    agree(&server, &expected, seed);

    // `update` merges into existing records; `upsert` also inserts new ones; insert skips
    // existing keys.
    let mut some: Vec<Row> = expected.values().take(50).cloned().collect();
    for row in &mut some {
        row.name = format!("renamed-{}", row.id);
    }
    let id = start(
        &server,
        json!({"operation": "csv_data_load", "action": "update", "table": "Dog",
               "data": format!("id,name\n{}", some.iter().map(|r| format!("{},{}\n", r.id, r.name)).collect::<String>())}),
    );
    assert_eq!(
        wait_job(&server, &id)["message"],
        "successfully loaded 50 of 50 records"
    );
    let fresh = Row::random(&mut rng, "upsert", 0);
    let id = start(
        &server,
        json!({"operation": "csv_data_load", "action": "upsert", "table": "Dog",
               "data": csv_of(&[some[0].clone(), fresh.clone()], false)}),
    );
    assert_eq!(wait_job(&server, &id)["status"], "COMPLETE");
    let id = start(
        &server,
        json!({"operation": "csv_data_load", "table": "Dog", "data": csv_of(&some[1..3], false)}),
    );
    let job = wait_job(&server, &id);
    assert_eq!(job["message"], "successfully loaded 0 of 2 records");
    assert_eq!(job["records_skipped"], json!(2));
    expected.extend(some.into_iter().chain([fresh]).map(|r| (r.id.clone(), r)));
    agree(&server, &expected, seed);

    // An Operations API table grows attributes from the header; values read as numbers,
    // booleans and JSON where they are such, text otherwise.
    ok(
        &server,
        json!({"operation": "create_table", "database": "dev", "table": "t", "primary_key": "id"}),
    );
    let id = start(
        &server,
        json!({"operation": "csv_data_load", "database": "dev", "table": "t",
               "data": "id,n,f,b,j,s\n1,7,1.5,true,\"{\"\"a\"\":1}\",007\n2,-3,,false,[],x y\n"}),
    );
    assert_eq!(wait_job(&server, &id)["status"], "COMPLETE");
    let got = ok(
        &server,
        json!({"operation": "search_by_conditions", "database": "dev", "table": "t",
               "conditions": [{"attribute": "n", "comparator": "greater_than", "value": 0}],
               "get_attributes": ["id", "n", "f", "b", "j", "s"]}),
    );
    assert_eq!(
        got,
        json!([{"id": 1, "n": 7, "f": 1.5, "b": true, "j": {"a": 1}, "s": "007"}])
    );

    // Every job of this test, by start date; and all of them still there after a restart.
    let jobs = ok(
        &server,
        json!({"operation": "search_jobs_by_start_date", "from_date": "2000-01-01T00:00:00.000+0000",
               "to_date": "2999-01-01T00:00:00.000Z"}),
    );
    let jobs = jobs.as_array().expect("array");
    assert_eq!(jobs.len(), 9, "{jobs:?}");
    assert!(jobs.iter().all(|j| j["status"] == "COMPLETE"));
    let none = ok(
        &server,
        json!({"operation": "search_jobs_by_start_date", "from_date": "2000-01-01",
               "to_date": "2000-01-02"}),
    );
    assert_eq!(none, json!([]));
    let first = jobs[0]["id"].as_str().expect("id").to_string();
    let mut server = server;
    let root = std::mem::replace(&mut server.root, tempfile::tempdir().expect("temp"));
    drop(server);
    let server = Builder::new().root(root).start();
    let job = get_job(&server, &first);
    assert_eq!(job["status"], "COMPLETE");
    assert_eq!(job["type"], "csv_data_load");
    agree(&server, &expected, seed);
}

/// Checks that `body` is refused at once with `status` and an error containing `fragment`.
fn refused(server: &Server, body: Value, status: u16, fragment: &str) {
    let (got, reply) = op(server, body.clone());
    assert_eq!(got, status, "{body} → {reply}");
    let error = reply["error"].as_str().unwrap_or_default();
    assert!(
        error.contains(fragment),
        "{body}: {reply} lacks {fragment:?}"
    );
}

/// Answers of `get_job` for a job that must end in `ERROR`, with its message.
fn failed(server: &Server, body: Value) -> String {
    let id = start(server, body.clone());
    let job = wait_job(server, &id);
    assert_eq!(job["status"], "ERROR", "{body} → {job}");
    job["message"].as_str().unwrap_or_default().to_string()
}

#[test]
fn bad_csv_ends_in_an_error_job_and_writes_nothing() {
    let server = Server::start();
    ok(
        &server,
        json!({"operation": "insert", "table": "Dog",
               "records": [{"id": "keep", "name": "Keeper", "age": 9}]}),
    );
    let before = rest_get(&server, "/Dog/");
    let load = |data: &str| json!({"operation": "csv_data_load", "action": "upsert", "table": "Dog", "data": data});
    // Each bad CSV also rewrites `keep` in its first row: nothing of it may land.
    let cases: Vec<(Value, &str)> = vec![
        (
            load("id,name\nkeep,X\n3\n"),
            "1 fields where the header has 2",
        ),
        (
            load("id,name,age\nkeep,X,1\n4,Y,old\n5,Z,1.5\n"),
            "2 of 3 rows are invalid",
        ),
        (
            load("id,name,age\nkeep,X,1\n4,Y,old\n"),
            "Value \"old\" in property age must be an integer",
        ),
        (
            load("id,name,tags\nkeep,X,\"[\"\"a\"\"]\"\n6,Y,notalist\n"),
            "must be an array",
        ),
        (
            load("id,name\nkeep,X\n7,\"open"),
            "quoted field that is never closed",
        ),
        (
            load("id,name\nkeep,X\n8,\"a\"b\n"),
            "text after a closing quote",
        ),
        (load("id,id\nkeep,X\n"), "the header names 'id' twice"),
        (
            load(&format!("id,name\nkeep,X\n{},Y\n", "k".repeat(300))),
            "invalid primary key",
        ),
        (load("id,\nkeep,X\n"), "header field 2"),
        (load(""), "the CSV is empty"),
        (load("\n\n"), "the CSV is empty"),
        (
            json!({"operation": "csv_data_load", "action": "update", "table": "Dog",
                "data": "id,name\nkeep,X\n,nokey\n"}),
            "missing its primary key 'id'",
        ),
        (
            json!({"operation": "csv_file_load", "table": "Dog", "file_path": server.root.path()}),
            "is not a file",
        ),
    ];
    for (body, fragment) in &cases {
        let message = failed(&server, body.clone());
        assert!(
            message.contains(fragment),
            "{body}: {message:?} lacks {fragment:?}"
        );
        assert_eq!(
            rest_get(&server, "/Dog/"),
            before,
            "{body} changed the table"
        );
    }

    // Over the size limit: a sparse file, so the test writes nothing to disk.
    let huge = server.root.path().join("huge.csv");
    let file = std::fs::File::create(&huge).expect("create");
    file.set_len(256 * 1024 * 1024 + 1).expect("set_len");
    let message = failed(
        &server,
        json!({"operation": "csv_file_load", "table": "Dog", "file_path": huge}),
    );
    assert!(message.contains("larger than 268435456 bytes"), "{message}");
    // Extra fields, Latin-1 files and a missing file: tests/ops_conformance.rs (as HarperDB).

    // URLs that fail: a 404, a body claimed over the limit, a body cut short, nobody listening.
    let mut answers = HashMap::new();
    answers.insert("/big.csv".to_string(), Answer::Claims(1 << 40));
    answers.insert("/short.csv".to_string(), Answer::Claims(100));
    let base = http_server(answers, 3);
    for (path, fragment) in [
        ("/missing.csv", "the server answered 404"),
        ("/big.csv", "the body is larger than"),
        ("/short.csv", "reading the response"),
    ] {
        let message = failed(
            &server,
            json!({"operation": "csv_url_load", "table": "Dog", "csv_url": format!("{base}{path}")}),
        );
        assert!(message.contains(fragment), "{path}: {message}");
    }
    // Free, and below the client port range, so no test's client can hold it meanwhile.
    let port = common::free_port_on(&["127.0.0.1"]);
    let message = failed(
        &server,
        json!({"operation": "csv_url_load", "table": "Dog", "csv_url": format!("http://127.0.0.1:{port}/x.csv")}),
    );
    assert!(message.contains("cannot connect"), "{message}");
    assert_eq!(rest_get(&server, "/Dog/"), before);

    // Refused before any job: missing table, `system`, https.
    for (body, status, fragment) in [
        (
            json!({"operation": "csv_data_load", "database": "dev", "table": "nope", "data": "id\n1\n"}),
            400,
            "does not exist",
        ),
        (
            json!({"operation": "csv_data_load", "database": "system", "table": "hdb_user", "data": "username\nx\n"}),
            403,
            "not authorized",
        ),
        (
            json!({"operation": "csv_url_load", "table": "Dog", "csv_url": "https://127.0.0.1:1/x.csv"}),
            501,
            "over https is not supported",
        ),
        (
            json!({"operation": "get_job", "id": "no-such-job"}),
            404,
            "Job 'no-such-job' not found",
        ),
    ] {
        refused(&server, body, status, fragment);
    }

    // A user without the super-user role: no files or URLs, CSV text only where it may write,
    // and only its own jobs.
    ok(
        &server,
        json!({"operation": "add_role", "role": "dogs", "permission":
               {"data": {"tables": {"Dog": {"read": true, "insert": true, "update": false, "delete": false, "attribute_permissions": []}}}}}),
    );
    ok(
        &server,
        json!({"operation": "add_user", "username": "ann", "password": "Ann-pass-1", "role": "dogs"}),
    );
    let ann = Some(("ann", "Ann-pass-1"));
    for body in [
        json!({"operation": "csv_file_load", "table": "Dog", "file_path": "/etc/passwd"}),
        json!({"operation": "csv_url_load", "table": "Dog", "csv_url": "http://127.0.0.1:1/x.csv"}),
        json!({"operation": "search_jobs_by_start_date", "from_date": "2000-01-01", "to_date": "2999-01-01"}),
    ] {
        let (status, reply) = post(&server, ann, &body);
        assert_eq!(status, 403, "{body} → {reply}");
        assert!(
            reply["unauthorized_access"][0]
                .as_str()
                .is_some_and(|s| s.contains("restricted to 'super_user' roles")),
            "{reply}"
        );
    }
    let (status, reply) = post(
        &server,
        ann,
        &json!({"operation": "csv_data_load", "action": "upsert", "table": "Dog", "data": "id,name\nkeep,X\n"}),
    );
    assert_eq!(status, 403, "upsert needs update rights: {reply}");
    let (status, reply) = post(
        &server,
        ann,
        &json!({"operation": "csv_data_load", "table": "Dog", "data": "id,name\nann-1,Ann's\n"}),
    );
    assert_eq!(status, 200, "{reply}");
    let own = reply["job_id"].as_str().expect("job_id").to_string();
    let (status, reply) = post(&server, ann, &json!({"operation": "get_job", "id": own}));
    assert_eq!(status, 200, "{reply}");
    let theirs = cases.len(); // any job the super user started
    let jobs = ok(
        &server,
        json!({"operation": "search_jobs_by_start_date", "from_date": "2000-01-01", "to_date": "2999-01-01"}),
    );
    assert!(jobs.as_array().expect("array").len() > theirs);
    let admin_job = jobs[0]["id"].as_str().expect("id");
    let (status, _) = post(
        &server,
        ann,
        &json!({"operation": "get_job", "id": admin_job}),
    );
    assert_eq!(status, 404);
}

#[test]
fn progress_shows_in_get_job_while_a_load_runs() {
    let seed = common::seed();
    let mut rng = Rng(seed);
    let server = Server::start();
    let rows: Vec<Row> = (0..100_000)
        .map(|i| Row::random(&mut rng, "big", i))
        .collect();
    let path = server.root.path().join("big.csv");
    std::fs::write(&path, csv_of(&rows, false)).expect("write CSV");
    let id = start(
        &server,
        json!({"operation": "csv_file_load", "table": "Dog", "file_path": path}),
    );
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut seen_midway = false;
    let mut last_processed = 0;
    let job = loop {
        let job = get_job(&server, &id);
        let processed = job["records_processed"].as_u64().unwrap_or(0);
        assert!(processed >= last_processed, "progress went back: {job}");
        last_processed = processed;
        match job["status"].as_str() {
            Some("COMPLETE" | "ERROR") => break job,
            Some("IN_PROGRESS") if processed > 0 => {
                assert_eq!(job["records_total"], json!(100_000), "{job}");
                assert!(processed <= 100_000 && processed % 1000 == 0, "{job}");
                seen_midway = true;
            }
            Some("CREATED" | "IN_PROGRESS") => {}
            other => panic!("status {other:?}: {job}"),
        }
        assert!(Instant::now() < deadline, "the load did not finish: {job}");
        std::thread::sleep(Duration::from_millis(5));
    };
    assert_eq!(job["status"], "COMPLETE", "{job}");
    assert_eq!(job["records_loaded"], json!(100_000));
    assert!(
        seen_midway,
        "no poll saw the load between batches (seed {seed})"
    );
    let desc = ok(
        &server,
        json!({"operation": "describe_table", "table": "Dog"}),
    );
    assert_eq!(desc["record_count"], json!(100_000));

    // A load cut short by a stop reads as ERROR after the restart, whatever it had recorded.
    let id = start(
        &server,
        json!({"operation": "csv_file_load", "action": "upsert", "table": "Dog", "file_path": path}),
    );
    let mut server = server;
    let root = std::mem::replace(&mut server.root, tempfile::tempdir().expect("temp"));
    drop(server);
    let server = Builder::new().root(root).start();
    let job = get_job(&server, &id);
    assert_eq!(job["status"], "ERROR", "{job}");
    assert!(
        job["message"]
            .as_str()
            .is_some_and(|m| m.contains("interrupted")),
        "{job}"
    );
}

#[test]
fn delete_records_before_deletes_what_was_created_earlier() {
    let server = Server::start();
    ok(
        &server,
        json!({"operation": "create_table", "database": "dev", "table": "t", "primary_key": "id"}),
    );
    let insert = |ids: std::ops::Range<i64>| {
        let records: Vec<Value> = ids.map(|i| json!({"id": i, "v": i * 2})).collect();
        ok(
            &server,
            json!({"operation": "insert", "database": "dev", "table": "t", "records": records}),
        );
    };
    let created = |id: i64| -> f64 {
        let found = ok(
            &server,
            json!({"operation": "search_by_id", "database": "dev", "table": "t", "ids": [id]}),
        );
        found[0]["__createdtime__"]
            .as_f64()
            .expect("__createdtime__")
    };
    insert(0..1500);
    let first = created(1499);
    // The next records must be created at a later millisecond.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        insert(1500..1510);
        if created(1500) > first {
            break;
        }
        ok(
            &server,
            json!({"operation": "delete", "database": "dev", "table": "t", "ids": (1500..1510).collect::<Vec<_>>()}),
        );
        assert!(Instant::now() < deadline, "the clock did not move");
        std::thread::sleep(Duration::from_millis(5));
    }
    let id = start(
        &server,
        json!({"operation": "delete_records_before", "schema": "dev", "table": "t", "date": first + 1.0}),
    );
    let job = wait_job(&server, &id);
    assert_eq!(job["status"], "COMPLETE", "{job}");
    assert_eq!(job["type"], "delete_records_before");
    assert_eq!(job["records_loaded"], json!(1500), "{job}");
    let left = ok(
        &server,
        json!({"operation": "search_by_value", "database": "dev", "table": "t", "attribute": "id", "value": "*"}),
    );
    let mut ids: Vec<i64> = left
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|r| r["id"].as_i64())
        .collect();
    ids.sort();
    assert_eq!(ids, (1500..1510).collect::<Vec<_>>());
    // An ISO date in the past deletes nothing; a schema table uses its @createdTime attribute.
    let id = start(
        &server,
        json!({"operation": "delete_records_before", "database": "dev", "table": "t", "date": "2000-01-01T00:00:00Z"}),
    );
    assert_eq!(wait_job(&server, &id)["records_loaded"], json!(0));
    ok(
        &server,
        json!({"operation": "insert", "table": "Dog", "records": [{"id": "a", "name": "A"}]}),
    );
    let id = start(
        &server,
        json!({"operation": "delete_records_before", "table": "Dog", "date": "2999-01-01T00:00:00Z"}),
    );
    assert_eq!(wait_job(&server, &id)["records_loaded"], json!(1));
    assert_eq!(rest_get(&server, "/Dog/"), json!([]));
    for (body, status, fragment) in [
        (
            json!({"operation": "delete_records_before", "database": "dogs", "table": "breed", "date": 1}),
            400,
            "has no @createdTime attribute",
        ),
        (
            json!({"operation": "delete_records_before", "database": "dev", "table": "t"}),
            400,
            "'date' is required",
        ),
        (
            json!({"operation": "delete_records_before", "database": "dev", "table": "t", "date": "soon"}),
            400,
            "must be an ISO-8601 date",
        ),
        (
            json!({"operation": "delete_records_before", "database": "dev", "table": "nope", "date": 1}),
            400,
            "Table 'dev.nope' does not exist",
        ),
        (
            json!({"operation": "delete_records_before", "database": "system", "table": "hdb_user", "date": 1}),
            403,
            "not authorized",
        ),
    ] {
        refused(&server, body, status, fragment);
    }
}
