//! Static files (`static` in config.yaml): served from memory with types, ETag/304 and ranges;
//! exports win over them.

mod common;

use common::{Builder, Raw};

fn app() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    // No config.yaml: SPEC's defaults serve `web/**` and read `*.graphql`.
    std::fs::write(
        dir.path().join("schema.graphql"),
        "type Dog @table @export { id: ID @primaryKey name: String }",
    )
    .unwrap();
    std::fs::create_dir_all(dir.path().join("web/a")).unwrap();
    std::fs::create_dir_all(dir.path().join("web/Dog")).unwrap();
    std::fs::write(dir.path().join("web/index.html"), "<h1>hi</h1>").unwrap();
    std::fs::write(dir.path().join("web/a/b.txt"), "0123456789").unwrap();
    std::fs::write(dir.path().join("web/Dog/1"), "shadowed by the export").unwrap();
    dir
}

#[test]
fn serves_files_with_etag_and_ranges() {
    let app = app();
    let server = Builder::new().app(app.path()).start();
    let mut raw = Raw::connect(server.rest);
    raw.send(b"GET /index.html HTTP/1.1\r\n\r\n");
    let r = raw.response(false).unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "<h1>hi</h1>"));
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    let etag = r.header("etag").unwrap().to_string();
    raw.send(format!("GET /index.html HTTP/1.1\r\nIf-None-Match: {etag}\r\n\r\n").as_bytes());
    assert_eq!(raw.response(false).unwrap().status, 304);
    raw.send(b"GET /a/b.txt HTTP/1.1\r\nRange: bytes=2-4\r\n\r\n");
    let r = raw.response(false).unwrap();
    assert_eq!(
        (r.status, r.text().as_str(), r.header("content-range")),
        (206, "234", Some("bytes 2-4/10"))
    );
    raw.send(b"GET /a/b.txt HTTP/1.1\r\nRange: bytes=20-\r\n\r\n");
    assert_eq!(raw.response(false).unwrap().status, 416);
    raw.send(b"GET /nope.html HTTP/1.1\r\n\r\n");
    assert_eq!(raw.response(false).unwrap().status, 404);
    // The export wins over a file at the same path.
    raw.send(b"GET /Dog/1 HTTP/1.1\r\n\r\n");
    let r = raw.response(false).unwrap();
    assert_eq!(
        r.status, 404,
        "no Dog 1 record yet, and the file must not be served"
    );
    assert_ne!(r.text(), "shadowed by the export");
}
