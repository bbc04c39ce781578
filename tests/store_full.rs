//! A database file that reaches `storage.mapSize` (docs/configuration.md): writes past it are
//! refused with 507 naming the setting, everything stored before stays readable, and a restart
//! with a larger value takes writes again. The real binary over real HTTP (ureq).

mod common;

use common::{Builder, Server};

const SCHEMA: &str = r#"
type Blob @table @export {
  id: Int @primaryKey
  data: String
}
"#;

/// Bytes of each record's `data`: 64 MiB holds a few hundred of them.
const RECORD_BYTES: usize = 256 << 10;
/// Writes tried at most before the map must have filled (64 MiB / 256 KiB = 256).
const WRITES_MAX: usize = 600;

fn start(root: Option<tempfile::TempDir>, app: &std::path::Path, map_size: &str) -> Server {
    let mut builder = Builder::new()
        .app(app)
        .arg("--STORAGE_SYNC", "false")
        .arg("--STORAGE_MAPSIZE", map_size);
    if let Some(root) = root {
        builder = builder.root(root);
    }
    builder.start()
}

fn put(server: &Server, id: usize, fill: char) -> (u16, String) {
    let data: String = std::iter::repeat_n(fill, RECORD_BYTES).collect();
    let body = serde_json::json!({ "data": data }).to_string();
    match ureq::put(&server.url(&format!("/Blob/{id}")))
        .set("Content-Type", "application/json")
        .send_string(&body)
    {
        Ok(r) => (r.status(), r.into_string().unwrap_or_default()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap_or_default()),
        Err(e) => panic!("PUT /Blob/{id}: {e}"),
    }
}

/// Every record 0..count is there, whole, with its own fill.
fn assert_stored(server: &Server, count: usize) {
    for id in 0..count {
        let reply = ureq::get(&server.url(&format!("/Blob/{id}")))
            .call()
            .unwrap_or_else(|e| panic!("GET /Blob/{id}: {e}"));
        let record: serde_json::Value =
            serde_json::from_str(&reply.into_string().expect("body")).expect("json");
        let data = record["data"].as_str().expect("data");
        assert_eq!(data.len(), RECORD_BYTES, "record {id}");
        assert!(data.starts_with(fill_of(id)), "record {id}");
    }
}

fn fill_of(id: usize) -> char {
    (b'a' + (id % 26) as u8) as char
}

#[test]
fn a_full_map_refuses_writes_with_507_and_keeps_what_was_stored() {
    let app = tempfile::tempdir().expect("app");
    common::write_schema_app(app.path(), SCHEMA);
    let mut server = start(None, app.path(), "64M");

    let mut stored = 0;
    let refusal = loop {
        assert!(
            stored < WRITES_MAX,
            "{WRITES_MAX} writes of 256 KiB fit in a 64 MiB map"
        );
        let (status, body) = put(&server, stored, fill_of(stored));
        if status >= 300 {
            break (status, body);
        }
        stored += 1;
    };
    assert_eq!(refusal.0, 507, "{}", refusal.1);
    assert!(refusal.1.contains("storage.mapSize"), "{}", refusal.1);
    assert!(
        stored >= 100,
        "only {stored} records of 256 KiB fit in 64 MiB"
    );
    // Still full: the next write is refused the same way, and the server goes on answering.
    assert_eq!(put(&server, stored, 'z').0, 507);
    assert_stored(&server, stored);

    // The same root with a larger map: everything is there and writes go in again.
    let root = std::mem::replace(&mut server.root, tempfile::tempdir().expect("temp"));
    drop(server);
    let server = start(Some(root), app.path(), "128M");
    assert_stored(&server, stored);
    let (status, body) = put(&server, stored, fill_of(stored));
    assert!(status < 300, "{status} {body}");
    assert_stored(&server, stored + 1);
}

#[test]
fn a_map_size_out_of_range_stops_the_start_naming_the_key() {
    let root = tempfile::tempdir().expect("root");
    for bad in ["1M", "65T", "lots"] {
        let out = Builder::new()
            .arg("--STORAGE_MAPSIZE", bad)
            .command(root.path())
            .output()
            .expect("run");
        assert!(!out.status.success(), "{bad}: started");
        let text = String::from_utf8_lossy(&out.stderr);
        assert!(text.contains("storage.mapSize"), "{bad}: {text}");
    }
}
