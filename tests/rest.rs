//! REST (docs/rest.md) against the real binary: the docs/rest.md Done-when cases on a seven-dog fixture, every
//! query-language form checked against a brute-force evaluation over a seeded table (written here,
//! independent of the server's evaluator), content types decoded by Python's cbor2/msgpack/csv,
//! `?explain` showing index use, conditional headers, CORS and the OpenAPI document.

mod common;

use std::collections::HashMap;
use std::path::Path;

use common::{Builder, Server};
use serde_json::{json, Value};

const SCHEMA: &str = r#"
type Dog @table @export {
  id: ID @primaryKey
  name: String @indexed
  breed: String @indexed
  age: Int @indexed
  owner: String
}
type Item @table @export {
  id: Int @primaryKey
  cat: String @indexed
  n: Int @indexed
  label: String @indexed
  tags: [String] @indexed
  score: Float
  opt: Int
}
type Note @table @export {
  id: ID @primaryKey
}
"#;

const ITEMS: i64 = 400;

struct Reply {
    status: u16,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }
}

fn call(server: &Server, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
    let mut request = ureq::request(method, &server.url(path));
    for (k, v) in headers {
        request = request.set(k, v);
    }
    let response = match if body.is_empty() && method != "POST" && method != "PUT" {
        request.call()
    } else {
        request.send_bytes(body)
    } {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{method} {path}: {e}"),
    };
    let status = response.status();
    let headers = response
        .headers_names()
        .into_iter()
        .map(|n| {
            let v = response.header(&n).unwrap_or("").to_string();
            (n.to_ascii_lowercase(), v)
        })
        .collect();
    let mut body = Vec::new();
    let _ = std::io::Read::read_to_end(&mut response.into_reader(), &mut body);
    Reply {
        status,
        headers,
        body,
    }
}

fn get(server: &Server, path: &str) -> Reply {
    if path.contains(['<', '>']) {
        // HTTP clients escape `<`/`>`; the query language needs them literal.
        let mut raw = common::Raw::connect(server.rest);
        raw.send(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes());
        let r = raw.response(false).expect("response");
        return Reply {
            status: r.status,
            headers: HashMap::new(),
            body: r.body,
        };
    }
    call(server, "GET", path, &[], b"")
}

fn put_json(server: &Server, path: &str, body: &Value) -> Reply {
    call(
        server,
        "PUT",
        path,
        &[("Content-Type", "application/json")],
        body.to_string().as_bytes(),
    )
}

fn item(n: i64) -> Value {
    let mut tags = vec![
        json!(if n % 2 == 0 { "even" } else { "odd" }),
        json!(format!("t{}", n % 7)),
    ];
    if n % 5 == 0 {
        tags.push(json!("five"));
    }
    let mut record = json!({
        "id": n,
        "cat": format!("c{}", n % 10),
        "n": n,
        "label": format!("item-{n}"),
        "tags": tags,
        "score": (n * 37 % 101) as f64 + 0.5,
    });
    if n % 3 == 0 {
        record["opt"] = json!(n % 4);
    }
    record
}

fn dogs() -> Vec<Value> {
    vec![
        json!({"id":"1","name":"Rex","breed":"Lab","age":5}),
        json!({"id":"2","name":"Bo","breed":"Poodle","age":3}),
        json!({"id":"3","name":"Max","breed":"Lab","age":8}),
        json!({"id":"4","name":"Bonnie","breed":"Beagle","age":10}),
        json!({"id":"5","name":"Daisy","breed":"Poodle","age":1}),
        json!({"id":"6","name":"Rain","breed":"Husky"}),
        json!({"id":"7","name":"Bolt","breed":"Lab","age":2}),
    ]
}

fn start() -> (Server, tempfile::TempDir) {
    let (server, app) = common::start_schema_app(SCHEMA);
    for dog in dogs() {
        let path = format!("/Dog/{}", dog["id"].as_str().unwrap());
        assert_eq!(put_json(&server, &path, &dog).status, 204);
    }
    for n in 0..ITEMS {
        assert_eq!(
            put_json(&server, &format!("/Item/{n}"), &item(n)).status,
            204
        );
    }
    (server, app)
}

fn write_app(dir: &Path) {
    common::write_schema_app(dir, SCHEMA);
}

fn names(reply: &Reply) -> Vec<String> {
    reply
        .json()
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {}", String::from_utf8_lossy(&reply.body)))
        .iter()
        .map(|d| d["name"].as_str().unwrap_or("?").to_string())
        .collect()
}

#[test]
fn done_when_dogs() {
    let (server, _app) = start();
    let s = &server;
    // One dog by id, its ETag, and a 304.
    let r = get(s, "/Dog/1");
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), dogs()[0]);
    let etag = r.header("etag").expect("ETag").to_string();
    assert_eq!(r.header("vary"), Some("Accept, Accept-Encoding"));
    for inm in [
        etag.clone(),
        format!("W/{etag}"),
        format!("\"x\", {etag}"),
        "*".into(),
    ] {
        let r = call(s, "GET", "/Dog/1", &[("If-None-Match", &inm)], b"");
        assert_eq!((r.status, r.body.len()), (304, 0), "{inm}");
    }
    assert_eq!(
        call(s, "GET", "/Dog/1", &[("If-None-Match", "\"x\"")], b"").status,
        200
    );

    // POST, Location, id body; GET of the resolved location.
    let r = call(
        s,
        "POST",
        "/Dog/",
        &[("Content-Type", "application/json")],
        br#"{"name":"Newt","breed":"Pug","age":4}"#,
    );
    assert_eq!(r.status, 201);
    let location = r.header("location").expect("Location").to_string();
    assert_eq!(r.json(), json!(location));
    let r = get(s, &format!("/Dog/{location}"));
    assert_eq!((r.status, r.json()["name"].clone()), (200, json!("Newt")));
    // POST with an existing key → 409; POST to a record or the table → 405 with Allow.
    let r = call(
        s,
        "POST",
        "/Dog/",
        &[("Content-Type", "application/json")],
        br#"{"id":"1","name":"Dup"}"#,
    );
    assert_eq!(r.status, 409);
    for path in ["/Dog", "/Dog/1"] {
        let r = call(
            s,
            "POST",
            path,
            &[("Content-Type", "application/json")],
            b"{}",
        );
        assert_eq!(r.status, 405, "{path}");
        assert!(r.header("allow").is_some(), "{path}");
    }
    assert_eq!(
        call(s, "DELETE", &format!("/Dog/{location}"), &[], b"").status,
        200
    );

    // PATCH merges; PUT replaces; DELETE → true then 404.
    put_json(s, "/Dog/9", &json!({"name":"Tmp","age":1}));
    let r = call(
        s,
        "PATCH",
        "/Dog/9",
        &[("Content-Type", "application/json")],
        br#"{"age":5}"#,
    );
    assert_eq!(r.status, 204);
    assert_eq!(
        get(s, "/Dog/9").json(),
        json!({"name":"Tmp","age":5,"id":"9"})
    );
    assert_eq!(put_json(s, "/Dog/9", &json!({"age":6})).status, 204);
    assert_eq!(get(s, "/Dog/9").json(), json!({"age":6,"id":"9"}));
    let r = call(
        s,
        "PATCH",
        "/Dog/9",
        &[("Content-Type", "application/json")],
        br#"{"age":null}"#,
    );
    assert_eq!(r.status, 204);
    assert_eq!(get(s, "/Dog/9").json(), json!({"age":null,"id":"9"}));
    let r = call(s, "DELETE", "/Dog/9", &[], b"");
    assert_eq!((r.status, r.json()), (200, json!(true)));
    assert_eq!(get(s, "/Dog/9").status, 404);

    // The query cases, exactly and in order.
    let cases: &[(&str, Value)] = &[
        ("breed=Lab", json!(["Rex", "Max", "Bolt"])),
        ("age=gt=3&lt=9", json!(["Rex", "Max"])),
        ("name==Bo*", json!(["Bo", "Bolt", "Bonnie"])),
        ("name=ct=ai", json!(["Daisy", "Rain"])),
        (
            "breed=Lab|breed=Poodle",
            json!(["Rex", "Max", "Bolt", "Bo", "Daisy"]),
        ),
        ("(breed=Lab|breed=Poodle)&age=gt=4", json!(["Rex", "Max"])),
        ("[name=Rex|name=Max]&age=gt=1", json!(["Rex", "Max"])),
        (
            "sort(+breed,-age)",
            json!(["Bonnie", "Rain", "Max", "Rex", "Bolt", "Bo", "Daisy"]),
        ),
        ("age=null", json!(["Rain"])),
        ("id=1", json!(["Rex"])),
    ];
    for (query, expected) in cases {
        let r = get(s, &format!("/Dog/?{query}"));
        assert_eq!(
            r.status,
            200,
            "{query}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(json!(names(&r)), *expected, "{query}");
    }
    assert_eq!(
        get(s, "/Dog/?breed=Lab&select(name)").json(),
        json!(["Rex", "Max", "Bolt"])
    );
    assert_eq!(
        get(s, "/Dog/?select([name,age])&limit(1,3)").json(),
        json!([["Bo", 3], ["Max", 8]])
    );
    assert_eq!(get(s, "/Dog/1?select(name)").json(), json!("Rex"));
    assert_eq!(get(s, "/Dog/1.name").json(), json!("Rex"));
    let r = get(s, "/Dog/?color=red");
    assert_eq!(
        (r.status, r.json()),
        (404, json!({"error": "color is not a defined attribute"}))
    );
    let r = get(s, "/Dog/?age=gt=abc");
    assert_eq!(
        (r.status, r.json()),
        (
            400,
            json!({"error": "Invalid value for attribute age: \"abc\", expecting Int"})
        )
    );
    for query in ["select(name", "limit(x)", "foo(1)"] {
        assert_eq!(get(s, &format!("/Dog/?{query}")).status, 400, "{query}");
    }
    let r = get(s, "/Dog/?sort(owner)");
    assert_eq!(
        (r.status, r.json()),
        (
            404,
            json!({"error": "owner is not indexed and not combined with any other conditions"})
        )
    );

    // Content types.
    let r = call(s, "GET", "/Dog/?breed=Lab", &[("Accept", "text/html")], b"");
    assert_eq!(r.status, 406);
    assert!(String::from_utf8_lossy(&r.body).contains("application/cbor"));
    // The description and the case-sensitive export name.
    let r = get(s, "/Dog");
    assert_eq!((r.status, r.json()["name"].clone()), (200, json!("Dog")));
    assert_eq!(r.json()["records"], json!("./"));
    let r = get(s, "/dog/");
    assert_eq!(
        (r.status, String::from_utf8_lossy(&r.body).into_owned()),
        (404, "Not found".into())
    );
    assert_eq!(call(s, "PUT", "/Dog", &[], b"{}").status, 405);
}

/// Runs Python on `input`, printing what the script prints.
fn python(script: &str, input: &[u8]) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new("python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "python failed on {script}");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn content_types_round_trip() {
    let (server, _app) = start();
    let s = &server;
    let lab = get(s, "/Dog/?breed=Lab").json();
    // CBOR: an indefinite-length array that Python's cbor2 reads back to the same records.
    let r = call(
        s,
        "GET",
        "/Dog/?breed=Lab",
        &[("Accept", "application/cbor")],
        b"",
    );
    assert_eq!(r.header("content-type"), Some("application/cbor"));
    assert_eq!(r.body.first(), Some(&0x9f), "indefinite-length array");
    let py = python(
        "import sys,cbor2,json; print(json.dumps(cbor2.loads(sys.stdin.buffer.read())))",
        &r.body,
    );
    assert_eq!(serde_json::from_str::<Value>(&py).unwrap(), lab);
    // MessagePack: concatenated values.
    let r = call(
        s,
        "GET",
        "/Dog/?breed=Lab",
        &[("Accept", "application/x-msgpack")],
        b"",
    );
    assert_eq!(r.header("content-type"), Some("application/x-msgpack"));
    let py = python(
        "import sys,msgpack,json; u=msgpack.Unpacker(raw=False); u.feed(sys.stdin.buffer.read()); print(json.dumps(list(u)))",
        &r.body,
    );
    assert_eq!(serde_json::from_str::<Value>(&py).unwrap(), lab);
    // CSV with a header row.
    let r = call(
        s,
        "GET",
        "/Dog/?breed=Lab&select(name,age)",
        &[("Accept", "text/csv")],
        b"",
    );
    assert_eq!(r.header("content-type"), Some("text/csv"));
    assert!(r
        .header("content-disposition")
        .is_some_and(|d| d.contains("data.csv")));
    let py = python(
        "import sys,csv,json,io; print(json.dumps(list(csv.DictReader(io.StringIO(sys.stdin.read())))))",
        &r.body,
    );
    assert_eq!(
        serde_json::from_str::<Value>(&py).unwrap(),
        json!([{"name":"Rex","age":"5"},{"name":"Max","age":"8"},{"name":"Bolt","age":"2"}])
    );
    // q-values and weights: CBOR outweighs JSON at equal q; a lower q loses.
    let r = call(
        s,
        "GET",
        "/Dog/1",
        &[("Accept", "application/json, application/cbor")],
        b"",
    );
    assert_eq!(r.header("content-type"), Some("application/cbor"));
    let r = call(
        s,
        "GET",
        "/Dog/1",
        &[("Accept", "application/cbor;q=0.5, application/json")],
        b"",
    );
    assert_eq!(r.header("content-type"), Some("application/json"));
    // URL extensions override Accept.
    let r = get(s, "/Dog/1.cbor");
    assert_eq!(r.header("content-type"), Some("application/cbor"));
    let back: ciborium::Value = ciborium::from_reader(&r.body[..]).unwrap();
    assert!(format!("{back:?}").contains("Rex"));
    let r = get(s, "/Dog/1.msgpack");
    let back = rmpv::decode::read_value(&mut &r.body[..]).unwrap();
    assert!(format!("{back}").contains("Rex"));
    // Request bodies in CBOR and MessagePack (encoded by Python).
    let cbor = python_bytes(
        "import sys,cbor2; sys.stdout.buffer.write(cbor2.dumps({'name':'Cb','age':2}))",
    );
    let r = call(
        s,
        "PUT",
        "/Dog/20",
        &[("Content-Type", "application/cbor")],
        &cbor,
    );
    assert_eq!(r.status, 204);
    assert_eq!(
        get(s, "/Dog/20").json(),
        json!({"name":"Cb","age":2,"id":"20"})
    );
    let mp = python_bytes(
        "import sys,msgpack; sys.stdout.buffer.write(msgpack.packb({'name':'Mp','age':3}))",
    );
    let r = call(
        s,
        "PUT",
        "/Dog/21",
        &[("Content-Type", "application/x-msgpack")],
        &mp,
    );
    assert_eq!(r.status, 204);
    assert_eq!(
        get(s, "/Dog/21").json(),
        json!({"name":"Mp","age":3,"id":"21"})
    );
    // Errors in the negotiated type.
    let r = call(
        s,
        "GET",
        "/Dog/?color=red",
        &[("Accept", "application/cbor")],
        b"",
    );
    let py = python(
        "import sys,cbor2,json; print(json.dumps(cbor2.loads(sys.stdin.buffer.read())))",
        &r.body,
    );
    assert_eq!(
        serde_json::from_str::<Value>(&py).unwrap(),
        json!({"error":"color is not a defined attribute"})
    );
    // JSON sniffing without Content-Type; bad bodies; PATCH with a raw body.
    let r = call(s, "PUT", "/Dog/22", &[], br#"{"name":"Sniff"}"#);
    assert_eq!(r.status, 204);
    assert_eq!(
        call(
            s,
            "PUT",
            "/Dog/22",
            &[("Content-Type", "application/json")],
            b"{bad"
        )
        .status,
        400
    );
    assert_eq!(
        call(
            s,
            "PUT",
            "/Dog/22",
            &[("Content-Type", "application/json")],
            b"[1]"
        )
        .status,
        400
    );
    assert_eq!(
        call(
            s,
            "PATCH",
            "/Dog/22",
            &[("Content-Type", "text/plain")],
            b"hi"
        )
        .status,
        415
    );
    assert_eq!(
        call(
            s,
            "PUT",
            "/Dog/22",
            &[("Content-Type", "application/json")],
            br#"{"age":"old"}"#
        )
        .status,
        400
    );
    // Arbitrary types are stored as {contentType, data} and served raw.
    let r = call(
        s,
        "PUT",
        "/Note/a",
        &[("Content-Type", "text/plain")],
        b"hello there",
    );
    assert_eq!(r.status, 204);
    let r = get(s, "/Note/a");
    assert_eq!(r.header("content-type"), Some("text/plain"));
    assert_eq!(r.body, b"hello there");
    let r = call(
        s,
        "PUT",
        "/Note/b",
        &[("Content-Type", "image/png")],
        &[0x89, b'P', b'N', b'G', 0],
    );
    assert_eq!(r.status, 204);
    assert_eq!(get(s, "/Note/b").body, vec![0x89, b'P', b'N', b'G', 0]);
}

fn python_bytes(script: &str) -> Vec<u8> {
    let out = std::process::Command::new("python3")
        .args(["-c", script])
        .output()
        .expect("python3");
    assert!(out.status.success());
    out.stdout
}

/// Brute force: the records of the seeded table that satisfy `keep`, in id order.
fn expected(keep: &dyn Fn(&Value) -> bool) -> Vec<Value> {
    (0..ITEMS).map(item).filter(|r| keep(r)).collect()
}

fn ids(values: &[Value]) -> Vec<i64> {
    values
        .iter()
        .map(|v| v["id"].as_i64().unwrap_or(-1))
        .collect()
}

fn num(r: &Value, k: &str) -> Option<i64> {
    r.get(k).and_then(Value::as_i64)
}

fn text<'a>(r: &'a Value, k: &str) -> &'a str {
    r.get(k).and_then(Value::as_str).unwrap_or("")
}

fn has_tag(r: &Value, t: &str) -> bool {
    r["tags"]
        .as_array()
        .is_some_and(|a| a.iter().any(|x| x == t))
}

#[test]
fn query_language_matches_brute_force() {
    let (server, _app) = start();
    let s = &server;
    type Keep = Box<dyn Fn(&Value) -> bool>;
    // (query, brute-force predicate): results compared as sets (ids sorted).
    let cases: Vec<(&str, Keep)> = vec![
        ("cat=c3", Box::new(|r| text(r, "cat") == "c3")),
        ("cat==c3", Box::new(|r| text(r, "cat") == "c3")),
        ("cat=eq=c3", Box::new(|r| text(r, "cat") == "c3")),
        ("cat===c3", Box::new(|r| text(r, "cat") == "c3")),
        ("cat=string:c3", Box::new(|r| text(r, "cat") == "c3")),
        ("cat!=c3", Box::new(|r| text(r, "cat") != "c3")),
        (
            "cat=ne=c3&n=lt=40",
            Box::new(|r| text(r, "cat") != "c3" && num(r, "n") < Some(40)),
        ),
        (
            "cat!==c3&n<20",
            Box::new(|r| text(r, "cat") != "c3" && num(r, "n") < Some(20)),
        ),
        ("n=7", Box::new(|r| num(r, "n") == Some(7))),
        ("n===7", Box::new(|r| num(r, "n") == Some(7))),
        ("n=number:7", Box::new(|r| num(r, "n") == Some(7))),
        (
            "n=gt=100&lt=150",
            Box::new(|r| (101..150).contains(&num(r, "n").unwrap())),
        ),
        (
            "n=ge=100&le=150",
            Box::new(|r| (100..=150).contains(&num(r, "n").unwrap())),
        ),
        ("n>390", Box::new(|r| num(r, "n") > Some(390))),
        ("n>=390", Box::new(|r| num(r, "n") >= Some(390))),
        ("n<5", Box::new(|r| num(r, "n") < Some(5))),
        ("n<=5", Box::new(|r| num(r, "n") <= Some(5))),
        (
            "n=lt=5|n=gt=395",
            Box::new(|r| num(r, "n") < Some(5) || num(r, "n") > Some(395)),
        ),
        (
            "(cat=c1|cat=c2)&n=lt=100",
            Box::new(|r| matches!(text(r, "cat"), "c1" | "c2") && num(r, "n") < Some(100)),
        ),
        (
            "[cat=c1|n=5]&tags=five",
            Box::new(|r| (text(r, "cat") == "c1" || num(r, "n") == Some(5)) && has_tag(r, "five")),
        ),
        (
            "cat=c1&n=gt=50|cat=c2&n=lt=30",
            Box::new(|r| {
                (text(r, "cat") == "c1" && num(r, "n") > Some(50))
                    || (text(r, "cat") == "c2" && num(r, "n") < Some(30))
            }),
        ),
        (
            // The first branch's index reaches records only the second branch matches: each
            // must still come once.
            "cat=c1&n=gt=50|n=lt=30",
            Box::new(|r| {
                (text(r, "cat") == "c1" && num(r, "n") > Some(50)) || num(r, "n") < Some(30)
            }),
        ),
        (
            "label=sw=item-1",
            Box::new(|r| text(r, "label").starts_with("item-1")),
        ),
        (
            "label==item-2*",
            Box::new(|r| text(r, "label").starts_with("item-2")),
        ),
        ("label=ew=7", Box::new(|r| text(r, "label").ends_with('7'))),
        (
            "label=ct=-33",
            Box::new(|r| text(r, "label").contains("-33")),
        ),
        (
            "label=gt=item-390",
            Box::new(|r| text(r, "label") > "item-390"),
        ),
        ("tags=ct=five", Box::new(|r| has_tag(r, "five"))),
        ("tags=t3", Box::new(|r| has_tag(r, "t3"))),
        (
            "tags=t3&tags=even",
            Box::new(|r| has_tag(r, "t3") && has_tag(r, "even")),
        ),
        (
            "tags=sw=t",
            Box::new(|r| {
                r["tags"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|t| t.as_str().unwrap().starts_with('t'))
            }),
        ),
        (
            "opt=null",
            Box::new(|r| r.get("opt").is_none_or(Value::is_null)),
        ),
        (
            "opt!=null",
            Box::new(|r| r.get("opt").is_some_and(|v| !v.is_null())),
        ),
        ("opt=2", Box::new(|r| num(r, "opt") == Some(2))),
        (
            "score=gt=90",
            Box::new(|r| r["score"].as_f64().unwrap() > 90.0),
        ),
        (
            "score=lt=10.5&n=lt=200",
            Box::new(|r| r["score"].as_f64().unwrap() < 10.5 && num(r, "n") < Some(200)),
        ),
        ("id=42", Box::new(|r| num(r, "id") == Some(42))),
        (
            "id=42|id=43|n=44",
            Box::new(|r| matches!(num(r, "id"), Some(42..=44))),
        ),
        ("id=gt=395", Box::new(|r| num(r, "id") > Some(395))),
        (
            "cat=c9&label=sw=item-1",
            Box::new(|r| text(r, "cat") == "c9" && text(r, "label").starts_with("item-1")),
        ),
        ("cat=nothing", Box::new(|_| false)),
        ("", Box::new(|_| true)),
    ];
    for (query, keep) in &cases {
        let r = get(s, &format!("/Item/?{query}"));
        assert_eq!(
            r.status,
            200,
            "{query}: {}",
            String::from_utf8_lossy(&r.body)
        );
        let got = r.json().as_array().cloned().unwrap_or_default();
        let mut got_ids = ids(&got);
        let want = expected(keep.as_ref());
        let before = got_ids.len();
        got_ids.sort();
        got_ids.dedup();
        assert_eq!(before, got_ids.len(), "{query}: duplicates");
        assert_eq!(got_ids, ids(&want), "{query}");
        // Every returned record is the stored record.
        for record in &got {
            assert_eq!(*record, item(record["id"].as_i64().unwrap()), "{query}");
        }
        // DELETE by the same query is checked elsewhere; HEAD gives no body.
        if !query.contains(['<', '>']) {
            let h = call(s, "HEAD", &format!("/Item/?{query}"), &[], b"");
            assert_eq!((h.status, h.body.len()), (200, 0), "HEAD {query}");
        }
    }

    // OR without duplicates, each branch in its own order: n<5 (index order) then n>395.
    let r = get(s, "/Item/?n=lt=3|n=gt=397");
    assert_eq!(ids(r.json().as_array().unwrap()), vec![0, 1, 2, 398, 399]);
    let r = get(s, "/Item/?n=lt=3|n=lt=2");
    assert_eq!(ids(r.json().as_array().unwrap()), vec![0, 1, 2]);

    // Sorting: (query, predicate, sort keys) checked against a brute-force sort.
    type SortKeys = Vec<(&'static str, bool)>;
    type SortCase = (&'static str, Keep, SortKeys, Option<(usize, usize)>);
    let sorts: Vec<SortCase> = vec![
        (
            "cat=c2&sort(-n)",
            Box::new(|r| text(r, "cat") == "c2"),
            vec![("n", true)],
            None,
        ),
        (
            "sort(n)&limit(10,20)",
            Box::new(|_| true),
            vec![("n", false)],
            Some((10, 20)),
        ),
        (
            "sort(-n)&limit(5)",
            Box::new(|_| true),
            vec![("n", true)],
            Some((0, 5)),
        ),
        (
            "sort(cat,-n)&limit(30)",
            Box::new(|_| true),
            vec![("cat", false), ("n", true)],
            Some((0, 30)),
        ),
        (
            "n=lt=50&sort(-score,+n)",
            Box::new(|r| num(r, "n") < Some(50)),
            vec![("score", true), ("n", false)],
            None,
        ),
        (
            "n=lt=60&sort(opt,n)",
            Box::new(|r| num(r, "n") < Some(60)),
            vec![("opt", false), ("n", false)],
            None,
        ),
        (
            "sort(-id)&limit(3)",
            Box::new(|_| true),
            vec![("id", true)],
            Some((0, 3)),
        ),
        (
            "n=lt=40&sort(label)&limit(2,6)",
            Box::new(|r| num(r, "n") < Some(40)),
            vec![("label", false)],
            Some((2, 6)),
        ),
    ];
    for (query, keep, keys, window) in &sorts {
        let r = get(s, &format!("/Item/?{query}"));
        assert_eq!(
            r.status,
            200,
            "{query}: {}",
            String::from_utf8_lossy(&r.body)
        );
        let mut want = expected(keep.as_ref());
        want.sort_by(|a, b| {
            for (k, desc) in keys {
                let ord = cmp_json(&a[*k], &b[*k]);
                let ord = if *desc { ord.reverse() } else { ord };
                if ord.is_ne() {
                    return ord;
                }
            }
            num(a, "id").cmp(&num(b, "id"))
        });
        if let Some((start, end)) = window {
            want = want.into_iter().skip(*start).take(end - start).collect();
        }
        let got = r.json().as_array().cloned().unwrap_or_default();
        // Ties beyond the listed keys may come in any order; compare the key columns.
        let project = |v: &[Value]| -> Vec<Vec<Value>> {
            v.iter()
                .map(|r| keys.iter().map(|(k, _)| r[*k].clone()).collect())
                .collect()
        };
        assert_eq!(project(&got), project(&want), "{query}");
        assert_eq!(got.len(), want.len(), "{query}");
    }

    // Selections and limits.
    assert_eq!(get(s, "/Item/?n=lt=3&select(n)").json(), json!([0, 1, 2]));
    assert_eq!(
        get(s, "/Item/?n=lt=2&select(n,opt)").json(),
        json!([{"n":0,"opt":0},{"n":1}])
    );
    assert_eq!(
        get(s, "/Item/?n=lt=2&select(n,)").json(),
        json!([{"n":0},{"n":1}])
    );
    assert_eq!(
        get(s, "/Item/?n=lt=2&select([n,opt])").json(),
        json!([[0, 0], [1, null]])
    );
    assert_eq!(
        get(s, "/Item/?n=lt=10&limit(2)&select(n)").json(),
        json!([0, 1])
    );

    // Value conversion errors.
    for (query, status) in [
        ("n=abc", 400),
        ("n=gt=1.5", 400),
        ("n=number:x", 400),
        ("cat=boolean:maybe", 400),
        ("nope=1", 404),
        ("sort(score)", 404),
        ("n=gt=1&foo(2)", 400),
    ] {
        assert_eq!(get(s, &format!("/Item/?{query}")).status, status, "{query}");
    }
}

fn cmp_json(a: &Value, b: &Value) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    // null/missing first, then numbers, then strings (as the spec orders them).
    let rank = |v: &Value| match v {
        Value::Null => 0,
        Value::Number(_) => 1,
        _ => 2,
    };
    match rank(a).cmp(&rank(b)) {
        Ordering::Equal => match (a, b) {
            (Value::Number(x), Value::Number(y)) => x
                .as_f64()
                .unwrap()
                .partial_cmp(&y.as_f64().unwrap())
                .unwrap(),
            (Value::String(x), Value::String(y)) => x.cmp(y),
            _ => Ordering::Equal,
        },
        other => other,
    }
}

#[test]
fn explain_shows_index_use_and_visits() {
    let (server, _app) = start();
    let s = &server;
    let check = |query: &str, index: Option<&str>, visited_max: u64| {
        let r = get(s, &format!("/Item/?{query}&explain"));
        assert_eq!(r.status, 200, "{query}");
        let e = r.json();
        assert_eq!(e["index"].as_str(), index, "{query}: {e}");
        let visited = e["records_visited"].as_u64().unwrap();
        assert!(visited <= visited_max, "{query}: visited {visited}: {e}");
        e
    };
    check("cat=c3", Some("cat"), 40);
    check("n=gt=100&lt=150", Some("n"), 49);
    check("cat=c3&n=gt=100&lt=110", Some("cat"), 40);
    check("n=gt=100&lt=110&cat=c3", Some("cat"), 40);
    check("label=sw=item-39", Some("label"), 11);
    let e = check("id=42", None, 1);
    assert!(
        e["plan"].as_str().unwrap().starts_with("primary key"),
        "{e}"
    );
    let e = check("cat=c1|cat=c2", None, 80);
    assert!(e["plan"].as_str().unwrap().starts_with("union"), "{e}");
    let e = check("score=gt=90", None, ITEMS as u64);
    assert!(e["plan"].as_str().unwrap().starts_with("full scan"), "{e}");
    assert_eq!(e["records_visited"], json!(ITEMS));
    // A limit stops the scan early.
    check("n=gt=10&limit(3)", Some("n"), 3);
}

#[test]
fn headers_cors_expiry_and_deletes() {
    let app = tempfile::tempdir().unwrap();
    write_app(app.path());
    let server = Builder::new()
        .app(app.path())
        .arg("--STORAGE_SYNC", "false")
        .arg("--REST_LASTMODIFIED", "true")
        .arg("--HTTP_CORSACCESSLIST", "[\"https://ok.example\"]")
        .start();
    let s = &server;
    put_json(s, "/Dog/1", &json!({"name":"Rex","age":3}));
    let r = get(s, "/Dog/1");
    let modified = r
        .header("last-modified")
        .expect("Last-Modified")
        .to_string();
    assert!(modified.ends_with(" GMT"), "{modified}");
    let etag = r.header("etag").unwrap().to_string();
    // A write changes the ETag; If-Match with the old one → 412.
    put_json(s, "/Dog/1", &json!({"name":"Rex","age":4}));
    let etag2 = get(s, "/Dog/1").header("etag").unwrap().to_string();
    assert_ne!(etag, etag2);
    let r = call(
        s,
        "PUT",
        "/Dog/1",
        &[("Content-Type", "application/json"), ("If-Match", &etag)],
        br#"{"name":"X"}"#,
    );
    assert_eq!(r.status, 412);
    let r = call(
        s,
        "PUT",
        "/Dog/1",
        &[("Content-Type", "application/json"), ("If-Match", &etag2)],
        br#"{"name":"Y"}"#,
    );
    assert_eq!(r.status, 204);
    // OPTIONS with CORS.
    let r = call(
        s,
        "OPTIONS",
        "/Dog/1",
        &[("Origin", "https://ok.example")],
        b"",
    );
    assert_eq!(r.status, 204);
    assert_eq!(
        r.header("allow"),
        Some("GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS")
    );
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://ok.example")
    );
    assert_eq!(
        r.header("access-control-allow-methods"),
        Some("POST, GET, PUT, DELETE, PATCH, OPTIONS")
    );
    assert!(r
        .header("access-control-allow-headers")
        .is_some_and(|h| h.contains("Content-Type")));
    let r = call(
        s,
        "GET",
        "/Dog/1",
        &[("Origin", "https://evil.example")],
        b"",
    );
    assert_eq!(r.header("access-control-allow-origin"), None);
    // Cache-Control: max-age sets an expiry.
    let r = call(
        s,
        "PUT",
        "/Dog/2",
        &[
            ("Content-Type", "application/json"),
            ("Cache-Control", "max-age=1"),
        ],
        br#"{"name":"Brief"}"#,
    );
    assert_eq!(r.status, 204);
    assert_eq!(get(s, "/Dog/2").status, 200);
    std::thread::sleep(std::time::Duration::from_millis(2100));
    assert_eq!(get(s, "/Dog/2").status, 404);
    // Multi-segment ids and ids with dots.
    put_json(s, "/Dog/a/b", &json!({"name":"Slash"}));
    assert_eq!(get(s, "/Dog/a%2Fb").json()["id"], json!("a/b"));
    assert_eq!(get(s, "/Dog/a/b").json()["name"], json!("Slash"));
    put_json(s, "/Dog/x.y", &json!({"name":"Dot"}));
    assert_eq!(get(s, "/Dog/x.y").json()["id"], json!("x.y"));
    // DELETE by query in one transaction.
    for i in 10..20 {
        put_json(
            s,
            &format!("/Dog/{i}"),
            &json!({"name": format!("D{i}"), "age": i}),
        );
    }
    let r = call(s, "DELETE", "/Dog/?age=ge=15", &[], b"");
    assert_eq!((r.status, r.json()), (200, json!(true)));
    let left = get(s, "/Dog/?age=ge=10").json();
    assert_eq!(left.as_array().unwrap().len(), 5);
    // Unknown exports and openapi.
    let r = get(s, "/Nope/1");
    assert_eq!(
        (r.status, String::from_utf8_lossy(&r.body).into_owned()),
        (404, "Not found".into())
    );
    // `Accept: text/event-stream` on a record is an SSE subscription (tests/realtime.rs covers it).
}

#[test]
fn openapi_document_validates() {
    let app = tempfile::tempdir().unwrap();
    write_app(app.path());
    let server = Builder::new().app(app.path()).start();
    let r = get(&server, "/openapi");
    assert_eq!(r.status, 200);
    let doc = r.json();
    assert_eq!(doc["openapi"], json!("3.0.3"));
    assert!(doc["paths"]["/Dog/{id}"].is_object());
    if !common::have_tool(
        "python3",
        &["-c", "import openapi_spec_validator"],
        "pip install openapi-spec-validator",
    ) {
        return;
    }
    let out = python(
        "import sys,json; from openapi_spec_validator import validate; validate(json.load(sys.stdin)); print('valid')",
        &r.body,
    );
    assert_eq!(out.trim(), "valid");
}

/// Schemathesis (when installed) fuzzes every documented operation briefly; no answer may be a 5xx.
#[test]
fn schemathesis_finds_no_server_errors() {
    if !common::have_tool("schemathesis", &["--version"], "pip install schemathesis") {
        return;
    }
    let app = tempfile::tempdir().unwrap();
    write_app(app.path());
    let server = Builder::new()
        .app(app.path())
        .arg("--STORAGE_SYNC", "false")
        .start();
    let out = std::process::Command::new("timeout")
        .args(["300", "schemathesis", "run"])
        .arg(server.url("/openapi"))
        .args([
            "--url",
            &server.url(""),
            "--checks",
            "not_a_server_error",
            "-n",
            "20",
        ])
        .env("NO_COLOR", "1")
        // Its cache goes in the current folder: keep it out of the repository.
        .current_dir(app.path())
        .output()
        .expect("schemathesis");
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("{text}");
    assert!(
        out.status.success(),
        "schemathesis found problems:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---------------------------------------------------------------------------------------------
// Relationships (docs/applications.md `@relationship`, docs/rest.md): joins in conditions and selections, checked
// against a brute-force evaluation over seeded related tables.

const RELATED_SCHEMA: &str = r#"
type Brand @table @export {
  id: ID @primaryKey
  name: String @indexed
  country: String @indexed
  products: [Product] @relationship(to: "brandId")
}
type Product @table @export {
  id: Int @primaryKey
  name: String @indexed
  price: Int @indexed
  brandId: ID @indexed
  brand: Brand @relationship(from: "brandId")
  featureIds: [ID] @indexed
  features: [Feature] @relationship(from: "featureIds")
  madeIn: String
  sameCountry: [Brand] @relationship(from: "madeIn", to: "country")
}
type Feature @table @export {
  id: ID @primaryKey
  label: String
  weight: Int @indexed
}
"#;

const BRAND_NAMES: [&str; 5] = ["Acme", "Globex", "Initech", "Umbrella", "Hooli"];
const COUNTRIES: [&str; 4] = ["NL", "DE", "FR", "US"];
const LABELS: [&str; 4] = ["fast", "slow", "red", "blue"];

/// The seeded related tables, as written.
struct World {
    brands: Vec<Value>,
    products: Vec<Value>,
    features: Vec<Value>,
}

impl World {
    fn generate(rng: &mut common::Rng) -> World {
        let mut pick = |n: u64| rng.below(n);
        let brands = (0..40)
            .map(|i| {
                let mut b = json!({"id": format!("b{i}"), "country": COUNTRIES[pick(4) as usize]});
                if pick(10) > 0 {
                    b["name"] = json!(BRAND_NAMES[pick(5) as usize]);
                }
                b
            })
            .collect();
        let features = (0..20)
            .map(|i| {
                let mut f = json!({"id": format!("f{i}"), "label": LABELS[pick(4) as usize]});
                if pick(8) > 0 {
                    f["weight"] = json!(pick(10));
                }
                f
            })
            .collect();
        let products = (0..300)
            .map(|i| {
                let mut p = json!({"id": i, "name": format!("p{}", pick(50)), "price": pick(1000)});
                match pick(12) {
                    0 => {}
                    1 => p["brandId"] = json!("b99"),
                    _ => p["brandId"] = json!(format!("b{}", pick(40))),
                }
                let mut ids: Vec<String> = Vec::new();
                for _ in 0..pick(4) {
                    let id = if pick(15) == 0 {
                        "f99".to_string()
                    } else {
                        format!("f{}", pick(20))
                    };
                    if !ids.contains(&id) {
                        ids.push(id);
                    }
                }
                p["featureIds"] = json!(ids);
                if pick(5) > 0 {
                    p["madeIn"] = json!(COUNTRIES[pick(4) as usize]);
                }
                p
            })
            .collect();
        World {
            brands,
            products,
            features,
        }
    }

    fn brand_of(&self, p: &Value) -> Option<&Value> {
        self.brands
            .iter()
            .find(|b| p.get("brandId").is_some_and(|id| b["id"] == *id))
    }

    fn features_of(&self, p: &Value) -> Vec<&Value> {
        p["featureIds"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|id| self.features.iter().find(|f| f["id"] == *id))
            .collect()
    }

    /// Brands of the product's country, in key order.
    fn same_country(&self, p: &Value) -> Vec<&Value> {
        let mut out: Vec<&Value> = self
            .brands
            .iter()
            .filter(|b| p.get("madeIn").is_some_and(|c| b["country"] == *c))
            .collect();
        out.sort_by(|a, b| text(a, "id").cmp(text(b, "id")));
        out
    }

    /// Products of the brand, in key order.
    fn products_of(&self, b: &Value) -> Vec<&Value> {
        self.products
            .iter()
            .filter(|p| p.get("brandId") == b.get("id"))
            .collect()
    }
}

type RelPred = Box<dyn Fn(&World, &Value) -> bool>;

/// One random condition on Product (URL text, brute-force predicate).
fn product_atom(rng: &mut common::Rng) -> (String, RelPred) {
    let name = BRAND_NAMES[rng.below(5) as usize];
    let country = COUNTRIES[rng.below(4) as usize];
    let label = LABELS[rng.below(4) as usize];
    let n = rng.below(1000) as i64;
    let w = rng.below(10) as i64;
    match rng.below(9) {
        0 => (
            format!("brand.name={name}"),
            Box::new(move |w: &World, p: &Value| w.brand_of(p).is_some_and(|b| b["name"] == name)),
        ),
        1 => (
            format!("brand.name!={name}"),
            Box::new(move |w: &World, p: &Value| w.brand_of(p).is_some_and(|b| b["name"] != name)),
        ),
        2 => (
            format!("brand.country={country}"),
            Box::new(move |w: &World, p: &Value| {
                w.brand_of(p).is_some_and(|b| b["country"] == country)
            }),
        ),
        3 => (
            format!("features.label={label}"),
            Box::new(move |w: &World, p: &Value| {
                w.features_of(p).iter().any(|f| f["label"] == label)
            }),
        ),
        4 => (
            format!("features.weight=gt={w}"),
            Box::new(move |world: &World, p: &Value| {
                world
                    .features_of(p)
                    .iter()
                    .any(|f| num(f, "weight").is_some_and(|x| x > w))
            }),
        ),
        5 => (
            format!("sameCountry.name={name}"),
            Box::new(move |w: &World, p: &Value| {
                w.same_country(p).iter().any(|b| b["name"] == name)
            }),
        ),
        6 => (
            format!("brand.products.price=gt={}", 900 + n / 10),
            Box::new(move |w: &World, p: &Value| {
                w.brand_of(p).is_some_and(|b| {
                    w.products_of(b)
                        .iter()
                        .any(|q| num(q, "price").is_some_and(|x| x > 900 + n / 10))
                })
            }),
        ),
        7 => (
            format!("price=lt={n}"),
            Box::new(move |_: &World, p: &Value| num(p, "price").is_some_and(|x| x < n)),
        ),
        _ => (
            format!("name=p{}", n % 50),
            Box::new(move |_: &World, p: &Value| text(p, "name") == format!("p{}", n % 50)),
        ),
    }
}

/// One random condition on Brand.
fn brand_atom(rng: &mut common::Rng) -> (String, RelPred) {
    let name = BRAND_NAMES[rng.below(5) as usize];
    let country = COUNTRIES[rng.below(4) as usize];
    let label = LABELS[rng.below(4) as usize];
    let n = rng.below(1000) as i64;
    match rng.below(4) {
        0 => (
            format!("products.price=lt={}", n / 10),
            Box::new(move |w: &World, b: &Value| {
                w.products_of(b)
                    .iter()
                    .any(|p| num(p, "price").is_some_and(|x| x < n / 10))
            }),
        ),
        1 => (
            format!("products.features.label={label}"),
            Box::new(move |w: &World, b: &Value| {
                w.products_of(b)
                    .iter()
                    .any(|p| w.features_of(p).iter().any(|f| f["label"] == label))
            }),
        ),
        2 => (
            format!("name={name}"),
            Box::new(move |_: &World, b: &Value| b["name"] == name),
        ),
        _ => (
            format!("country={country}"),
            Box::new(move |_: &World, b: &Value| b["country"] == country),
        ),
    }
}

/// A random query of one to three atoms in one of the shapes `a`, `a&b`, `a|b`, `(a|b)&c`,
/// `a&b|c` (`&` binds tighter).
fn combine(
    rng: &mut common::Rng,
    atom: fn(&mut common::Rng) -> (String, RelPred),
) -> (String, RelPred) {
    let (a, pa) = atom(rng);
    let (b, pb) = atom(rng);
    let (c, pc) = atom(rng);
    match rng.below(5) {
        0 => (a, pa),
        1 => (
            format!("{a}&{b}"),
            Box::new(move |w, r| pa(w, r) && pb(w, r)),
        ),
        2 => (
            format!("{a}|{b}"),
            Box::new(move |w, r| pa(w, r) || pb(w, r)),
        ),
        3 => (
            format!("({a}|{b})&{c}"),
            Box::new(move |w, r| (pa(w, r) || pb(w, r)) && pc(w, r)),
        ),
        _ => (
            format!("{a}&{b}|{c}"),
            Box::new(move |w, r| (pa(w, r) && pb(w, r)) || pc(w, r)),
        ),
    }
}

fn start_related(world: &World) -> (Server, tempfile::TempDir) {
    let app = tempfile::tempdir().expect("app dir");
    std::fs::write(app.path().join("schema.graphql"), RELATED_SCHEMA).unwrap();
    std::fs::write(
        app.path().join("config.yaml"),
        "rest: true\ngraphqlSchema:\n  files: schema.graphql\n",
    )
    .unwrap();
    let server = Builder::new()
        .app(app.path())
        .arg("--STORAGE_SYNC", "false")
        .start();
    for (export, records) in [
        ("Brand", &world.brands),
        ("Feature", &world.features),
        ("Product", &world.products),
    ] {
        for r in records {
            let id = match &r["id"] {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            let reply = put_json(&server, &format!("/{export}/{id}"), r);
            assert_eq!(reply.status, 204, "PUT {export}/{id}");
        }
    }
    (server, app)
}

fn key_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => format!("{:012}", other.as_i64().unwrap_or(-1)),
    }
}

fn sorted_keys(values: &[Value]) -> Vec<String> {
    let mut keys: Vec<String> = values.iter().map(|v| key_text(&v["id"])).collect();
    keys.sort();
    keys
}

#[test]
fn relationship_queries_match_brute_force() {
    let seed = common::seed();
    let mut rng = common::Rng(seed);
    let world = World::generate(&mut rng);
    let (server, _app) = start_related(&world);
    let s = &server;
    for round in 0..120 {
        let (export, (query, keep)) = if round % 3 == 2 {
            ("Brand", combine(&mut rng, brand_atom))
        } else {
            ("Product", combine(&mut rng, product_atom))
        };
        let records = if export == "Brand" {
            &world.brands
        } else {
            &world.products
        };
        let expected: Vec<Value> = records
            .iter()
            .filter(|r| keep(&world, r))
            .cloned()
            .collect();
        let reply = get(s, &format!("/{export}/?{query}"));
        assert_eq!(
            reply.status,
            200,
            "seed {seed}: /{export}/?{query}: {}",
            String::from_utf8_lossy(&reply.body)
        );
        let got = reply.json().as_array().cloned().unwrap_or_default();
        if sorted_keys(&got) != sorted_keys(&expected) {
            let plan = get(s, &format!("/{export}/?{query}&explain")).json();
            assert_eq!(
                sorted_keys(&got),
                sorted_keys(&expected),
                "seed {seed}: /{export}/?{query}: plan {plan}"
            );
        }
        // Sorted and windowed: the exact order (price, then key).
        if export == "Product" && round % 4 == 0 {
            let mut ordered = expected.clone();
            ordered.sort_by_key(|p| (num(p, "price"), num(p, "id")));
            let want: Vec<i64> = ordered
                .iter()
                .skip(2)
                .take(5)
                .map(|p| num(p, "id").unwrap())
                .collect();
            let reply = get(s, &format!("/Product/?{query}&sort(price)&limit(2,7)"));
            let got: Vec<i64> = reply
                .json()
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|p| num(p, "id").unwrap_or(-1))
                .collect();
            assert_eq!(got, want, "seed {seed}: sorted {query}");
        }
    }
}

#[test]
fn relationship_selections_and_explain() {
    let seed = common::seed();
    let mut rng = common::Rng(seed);
    let world = World::generate(&mut rng);
    let (server, _app) = start_related(&world);
    let s = &server;
    let brand_name = |p: &Value| {
        let mut o = json!({"name": p["name"]});
        if let Some(b) = world.brand_of(p) {
            let mut inner = json!({});
            if let Some(n) = b.get("name") {
                inner["name"] = n.clone();
            }
            o["brand"] = inner;
        }
        o
    };

    // Many-to-one, left join: products without a brand keep their own fields.
    let reply = get(s, "/Product/?price=lt=300&select(name,brand{name})");
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let mut want: Vec<&Value> = world
        .products
        .iter()
        .filter(|p| num(p, "price") < Some(300))
        .collect();
    want.sort_by_key(|p| (num(p, "price"), num(p, "id")));
    let got = reply.json();
    let got = got.as_array().unwrap();
    let mut got_sorted: Vec<&Value> = got.iter().collect();
    let mut want_objects: Vec<Value> = want.iter().map(|p| brand_name(p)).collect();
    let key = |v: &Value| v.to_string();
    got_sorted.sort_by_key(|v| key(v));
    want_objects.sort_by_key(key);
    assert_eq!(
        got_sorted.into_iter().cloned().collect::<Vec<_>>(),
        want_objects,
        "seed {seed}"
    );

    // Array of foreign keys: records in key-list order; whole related records without `{}`.
    for p in world.products.iter().step_by(7) {
        let id = num(p, "id").unwrap();
        let reply = get(s, &format!("/Product/{id}?select(id,features,brand)"));
        assert_eq!(reply.status, 200, "seed {seed}: product {id}");
        let mut want = json!({"id": id, "features": world.features_of(p)});
        if let Some(b) = world.brand_of(p) {
            want["brand"] = b.clone();
        }
        assert_eq!(reply.json(), want, "seed {seed}: product {id}");
    }

    // One-to-many and a nested selection two relationships deep.
    for b in world.brands.iter().step_by(3) {
        let id = text(b, "id");
        let reply = get(
            s,
            &format!("/Brand/{id}?select(name,products{{id,features{{label}}}})"),
        );
        assert_eq!(reply.status, 200, "seed {seed}: brand {id}");
        let products: Vec<Value> = world
            .products_of(b)
            .iter()
            .map(|p| {
                let labels: Vec<Value> = world
                    .features_of(p)
                    .iter()
                    .map(|f| json!({"label": f["label"]}))
                    .collect();
                json!({"id": p["id"], "features": labels})
            })
            .collect();
        let mut want = json!({"products": products});
        if let Some(n) = b.get("name") {
            want["name"] = n.clone();
        }
        assert_eq!(reply.json(), want, "seed {seed}: brand {id}");
    }

    // from + to: brands of the product's country, in key order; arrays of values.
    let reply = get(s, "/Product/?id=lt=20&select([id,sameCountry{id}])");
    assert_eq!(reply.status, 200);
    for row in reply.json().as_array().unwrap() {
        let id = row[0].as_i64().unwrap();
        let p = world
            .products
            .iter()
            .find(|p| num(p, "id") == Some(id))
            .unwrap();
        let want: Vec<Value> = world
            .same_country(p)
            .iter()
            .map(|b| json!({"id": b["id"]}))
            .collect();
        assert_eq!(row[1], json!(want), "seed {seed}: product {id}");
    }

    // Relationships are not stored or returned unless selected; a selection of related
    // records has no ETag (the record's version does not cover them).
    let reply = get(s, "/Brand/b1");
    assert!(reply.json().get("products").is_none());
    assert!(reply.header("etag").is_some());
    let reply = get(s, "/Brand/b1?select(name,products)");
    assert_eq!(reply.header("etag"), None);

    // The join evaluates the related condition by its index, then drives Product by brandId.
    let reply = get(s, "/Product/?brand.name=Acme&explain");
    let e = reply.json();
    assert_eq!(e["index"], json!("brandId"), "{e}");
    let plan = e["plan"].as_str().unwrap();
    assert!(
        plan.contains("join brand (drives) = Brand.primary key of [index name"),
        "{plan}"
    );
    let acme: Vec<&Value> = world
        .brands
        .iter()
        .filter(|b| b["name"] == "Acme")
        .collect();
    let matching = world
        .products
        .iter()
        .filter(|p| world.brand_of(p).is_some_and(|b| b["name"] == "Acme"))
        .count() as u64;
    assert_eq!(
        e["records_visited"].as_u64(),
        Some(acme.len() as u64 + matching),
        "{e}"
    );
    // One-to-many: the related condition by index, this table by primary key.
    let e = get(s, "/Brand/?products.price=lt=50&explain").json();
    let plan = e["plan"].as_str().unwrap();
    assert!(
        plan.starts_with("primary keys from join products"),
        "{plan}"
    );
    assert!(plan.contains("[index price"), "{plan}");
    // A join that does not drive is tested per candidate, reading nothing else of Brand.
    let e = get(s, "/Product/?id=5&brand.name!=Acme&explain").json();
    let plan = e["plan"].as_str().unwrap();
    assert!(plan.starts_with("primary key"), "{plan}");
    assert!(plan.contains("join brand (per record)"), "{plan}");
    assert!(e["records_visited"].as_u64() <= Some(2), "{e}");
    // Under a full scan the related keys are collected once.
    let e = get(s, "/Product/?sameCountry.name=Acme&explain").json();
    let plan = e["plan"].as_str().unwrap();
    assert!(plan.starts_with("full scan"), "{plan}");
    assert!(plan.contains("join sameCountry (collected)"), "{plan}");
    // An array of foreign keys drives through its index, each record once.
    let e = get(s, "/Product/?features.weight=gt=7&explain").json();
    assert_eq!(e["index"], json!("featureIds"), "{e}");
    // An unindexed related attribute is scanned on the related side only.
    let e = get(s, "/Brand/?products.features.label=red&explain").json();
    assert!(e["plan"].as_str().unwrap().contains("full scan"), "{e}");

    // Reading through a relationship needs read on the related table (and its attributes);
    // a whole related record loses the attributes the role may not read.
    use base64::Engine as _;
    let admin = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("test_admin:Adm1n-pass-for-tests")
    );
    let op = |body: Value| {
        let r = ureq::post(&server.ops_url())
            .set("Authorization", &admin)
            .set("Content-Type", "application/json")
            .send_string(&body.to_string());
        assert!(r.is_ok(), "{body}: {r:?}");
    };
    let table = |read: bool| json!({"read": read, "insert": false, "update": false, "delete": false, "attribute_permissions": []});
    let mut brand_no_name = table(true);
    brand_no_name["attribute_permissions"] = json!([
        {"attribute_name": "name", "read": false, "insert": false, "update": false},
        {"attribute_name": "id", "read": true, "insert": false, "update": false},
        {"attribute_name": "country", "read": true, "insert": false, "update": false}]);
    for (role, brand) in [("noBrand", table(false)), ("brandNoName", brand_no_name)] {
        op(json!({"operation": "add_role", "role": role, "permission":
            {"data": {"tables": {"Product": table(true), "Brand": brand}}}}));
        op(
            json!({"operation": "add_user", "username": role, "password": "Pw-for-tests-1",
            "role": role, "active": true}),
        );
    }
    let as_user = |user: &str, path: &str| {
        let auth = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:Pw-for-tests-1"))
        );
        call(s, "GET", path, &[("Authorization", auth.as_str())], b"")
    };
    for (user, path, status) in [
        ("noBrand", "/Product/?price=lt=100", 200),
        ("noBrand", "/Product/?brand.country=NL", 403),
        ("noBrand", "/Product/?select(name,brand{country})", 403),
        ("noBrand", "/Product/3?select(name,brand)", 403),
        ("brandNoName", "/Product/?brand.country=NL", 200),
        ("brandNoName", "/Product/?brand.name=Acme", 403),
        ("brandNoName", "/Product/?select(name,brand{name})", 403),
    ] {
        assert_eq!(as_user(user, path).status, status, "{user} {path}");
    }
    let branded = world
        .products
        .iter()
        .find(|p| world.brand_of(p).is_some())
        .unwrap();
    let r = as_user(
        "brandNoName",
        &format!("/Product/{}?select(brand)", branded["id"]),
    );
    let mut want = world.brand_of(branded).unwrap().clone();
    want.as_object_mut().unwrap().remove("name");
    assert_eq!(r.json(), want);

    // Errors: the relationship itself, an unknown related attribute, a bad value, sorting.
    for (path, status) in [
        ("/Product/?brand=b1", 400),
        ("/Product/?brand.color=red", 404),
        ("/Brand/?products.price=lt=abc", 400),
        ("/Product/?price=lt=5&sort(brand.name)", 501),
        ("/Product/?select(name,brand{color})", 200),
        // Chains are bounded (relationships can form cycles).
        (
            "/Product/?brand.products.brand.products.brand.name=Acme",
            400,
        ),
        ("/Product/?brand.products.brand.products.price=1", 200),
        (
            "/Product/?select(brand{products{brand{products{brand{name}}}}})",
            400,
        ),
    ] {
        let reply = get(s, path);
        assert_eq!(
            reply.status,
            status,
            "{path}: {}",
            String::from_utf8_lossy(&reply.body)
        );
    }

    // DELETE by a condition through a relationship removes exactly the joined records.
    let doomed: Vec<i64> = world
        .products
        .iter()
        .filter(|p| world.brand_of(p).is_some_and(|b| b["country"] == "NL"))
        .filter_map(|p| num(p, "id"))
        .collect();
    let r = call(s, "DELETE", "/Product/?brand.country=NL", &[], b"");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let left = get(s, "/Product/").json();
    let left: Vec<i64> = left
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| num(p, "id"))
        .collect();
    let want: Vec<i64> = world
        .products
        .iter()
        .filter_map(|p| num(p, "id"))
        .filter(|id| !doomed.contains(id))
        .collect();
    assert_eq!(left, want, "seed {seed}");
}

/// One raw GET with extra header lines (no client-side decoding of the body).
fn raw_get(server: &Server, path: &str, headers: &str) -> common::RawResponse {
    let mut raw = common::Raw::connect(server.rest);
    raw.send(format!("GET {path} HTTP/1.1\r\nHost: x\r\n{headers}\r\n").as_bytes());
    raw.response(false).expect("response")
}

#[test]
fn compression_timing_audit_size_and_bulk_put() {
    let (server, _app) = start();
    let s = &server;

    // gzip for a collection (streamed) and for a body above the threshold, decoded by Python.
    let plain = raw_get(s, "/Item/?n=lt=50", "");
    assert_eq!(plain.header("content-encoding"), None);
    let zipped = raw_get(s, "/Item/?n=lt=50", "Accept-Encoding: br;q=0.5, gzip\r\n");
    assert_eq!(zipped.status, 200);
    assert_eq!(zipped.header("content-encoding"), Some("gzip"));
    assert!(zipped.body.len() < plain.body.len());
    let unzipped = python(
        "import gzip,sys; sys.stdout.write(gzip.decompress(sys.stdin.buffer.read()).decode())",
        &zipped.body,
    );
    assert_eq!(unzipped.as_bytes(), plain.body.as_slice());
    let small = raw_get(s, "/Item/1", "Accept-Encoding: gzip\r\n");
    assert_eq!(
        small.header("content-encoding"),
        None,
        "below the threshold"
    );
    let refused = raw_get(s, "/Item/?n=lt=50", "Accept-Encoding: gzip;q=0, *;q=0\r\n");
    assert_eq!(refused.header("content-encoding"), None);
    let any = raw_get(s, "/Item/?n=lt=50", "Accept-Encoding: *\r\n");
    assert_eq!(any.header("content-encoding"), Some("gzip"));

    // Server-Timing on every REST answer.
    let r = get(s, "/Dog/1");
    let timing = r.header("server-timing").unwrap_or("");
    assert!(timing.starts_with("db;dur="), "{timing:?}");
    assert!(
        timing["db;dur=".len()..].parse::<f64>().is_ok(),
        "{timing:?}"
    );

    // The table description carries auditSize (writes happened, so it is not empty).
    let desc = get(s, "/Dog").json();
    assert!(desc["auditSize"].as_u64().is_some_and(|n| n > 0), "{desc}");
    assert!(desc.get("recordCount").is_none());

    // Bulk PUT: all records in one transaction; one bad record writes none.
    let batch = json!([
        {"id": "b1", "name": "Ada", "breed": "Pug", "age": 2},
        {"id": "b2", "name": "Bea", "age": 4},
    ]);
    assert_eq!(put_json(s, "/Dog/", &batch).status, 204);
    assert_eq!(get(s, "/Dog/b1").json()["name"], json!("Ada"));
    assert_eq!(get(s, "/Dog/b2").json()["age"], json!(4));
    for (body, message) in [
        (
            json!([{"id": "b3", "name": "Cy"}, {"id": "b4", "age": "old"}]),
            "Record 1",
        ),
        (
            json!([{"id": "b3", "name": "Cy"}, {"name": "no key"}]),
            "has no id",
        ),
        (json!({"id": "b3"}), "needs an array"),
        (json!([{"id": "b3"}, 5]), "not an object"),
    ] {
        let r = put_json(s, "/Dog/", &body);
        assert_eq!(r.status, 400, "{body}");
        assert!(
            r.json()["error"].as_str().unwrap_or("").contains(message),
            "{body}: {}",
            r.json()
        );
    }
    assert_eq!(
        get(s, "/Dog/b3").status,
        404,
        "a refused batch writes nothing"
    );
}

/// A lone UTF-16 surrogate in a JSON `\u` escape is refused with 400 (a string cannot hold it;
/// storing U+FFFD instead would change the data silently); nothing is stored. A proper pair is
/// stored as its character. Over REST and the Operations API.
#[test]
fn lone_surrogates_in_json_are_refused() {
    let server = Server::start();
    let json = [("Content-Type", "application/json")];
    for body in [
        r#"{"name": "\ud800"}"#,
        r#"{"name": "a\udc00b"}"#,
        r#"{"name": "ok", "tags": ["\ud83d"]}"#,
    ] {
        let reply = call(&server, "PUT", "/Dog/lone", &json, body.as_bytes());
        assert_eq!(reply.status, 400, "{body}");
        let text = String::from_utf8_lossy(&reply.body);
        assert!(text.contains("surrogate"), "{body}: {text}");
        assert_eq!(get(&server, "/Dog/lone").status, 404, "{body}");
    }
    let insert = r#"{"operation": "insert", "database": "data", "table": "Dog", "records": [{"id": "lone", "name": "\udfff"}]}"#;
    let reply = ureq::post(&server.ops_url())
        .set("Content-Type", "application/json")
        .send_string(insert);
    match reply {
        Err(ureq::Error::Status(400, _)) => {}
        other => panic!("insert with a lone surrogate: {other:?}"),
    }
    assert_eq!(get(&server, "/Dog/lone").status, 404);
    let reply = call(
        &server,
        "PUT",
        "/Dog/pair",
        &json,
        br#"{"name": "\ud83d\ude00"}"#,
    );
    assert_eq!(reply.status, 204);
    assert_eq!(get(&server, "/Dog/pair").json()["name"], "😀");
}

/// A table made with `create_table` is not exported: REST's 404 says so to a caller who may read
/// it (docs/rest.md "Which tables"), and stays a bare 404 for anyone else.
#[test]
fn unexported_table_404_says_why() {
    let server = Builder::new().require_credentials().start();
    let admin = format!(
        "Basic {}",
        base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            format!("{}:{}", common::ADMIN_USER, common::ADMIN_PASSWORD)
        )
    );
    let made = ureq::post(&server.ops_url())
        .set("Authorization", &admin)
        .set("Content-Type", "application/json")
        .send_string(
            &json!({
                "operation": "create_table", "database": "dev", "table": "cat", "primary_key": "id"
            })
            .to_string(),
        );
    assert!(made.is_ok(), "{made:?}");
    let auth = [("Authorization", admin.as_str())];
    for method in ["GET", "PUT", "DELETE"] {
        let reply = call(&server, method, "/cat/1", &auth, b"{}");
        assert_eq!(reply.status, 404, "{method}");
        let error = reply.json()["error"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(
            error.starts_with("Table 'dev.cat' exists but is not exported"),
            "{method}: {error}"
        );
    }
    // Anonymous: nothing told about which tables exist.
    let reply = call(&server, "GET", "/cat/1", &[], b"");
    assert_eq!(reply.status, 404);
    assert_eq!(String::from_utf8_lossy(&reply.body), "Not found");
    // A path that is no table at all stays a bare 404 for the super user too.
    let reply = call(&server, "GET", "/nothing/1", &auth, b"");
    assert_eq!(reply.status, 404);
    assert_eq!(String::from_utf8_lossy(&reply.body), "Not found");
}
