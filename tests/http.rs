//! HTTP/1.1 core against the real binary: keep-alive, pipelining, chunked bodies, every limit's
//! status, per-core accepting, shutdown, the root lock and port guard, and the epoll driver.

mod common;

use std::io::Write;
use std::thread::sleep;
use std::time::{Duration, Instant};

use common::{Builder, Raw, Server};

fn get(server: &Server, path: &str) -> (u16, String) {
    match ureq::get(&server.url(path)).call() {
        Ok(r) => (r.status(), r.into_string().unwrap_or_default()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap_or_default()),
        Err(e) => panic!("GET {path}: {e}"),
    }
}

#[test]
fn health_on_both_ports_and_curl() {
    let server = Server::start();
    assert_eq!(get(&server, "/health"), (200, "OK".to_string()));
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("http://{}/health", server.ops),
        ])
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200");
    assert_eq!(get(&server, "/nope").0, 404);
}

#[test]
fn keep_alive_serves_many_requests_on_one_connection() {
    let server = Server::start();
    let mut raw = Raw::connect(server.rest);
    for i in 0..50 {
        raw.send(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
        let r = raw
            .response(false)
            .unwrap_or_else(|| panic!("response {i}"));
        assert_eq!((r.status, r.text().as_str()), (200, "OK"));
    }
    // HEAD: the same headers, no body.
    raw.send(b"HEAD /health HTTP/1.1\r\nHost: x\r\n\r\n");
    let r = raw.response(true).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("2"));
    raw.send(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(
        raw.response(false).unwrap().text(),
        "OK",
        "HEAD left no stray body"
    );
    // HTTP/1.0 without keep-alive closes after the response.
    raw.send(b"GET /health HTTP/1.0\r\n\r\n");
    assert_eq!(
        raw.response(false).unwrap().header("connection"),
        Some("close")
    );
    assert!(raw.closed());
}

#[test]
fn pipelined_requests_answer_in_order() {
    let server = Server::start();
    let mut raw = Raw::connect(server.rest);
    let mut batch = Vec::new();
    for i in 0..20 {
        let path = if i % 2 == 0 { "/health" } else { "/missing" };
        write!(batch, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    }
    // One write with all twenty, then split bytes: both must work.
    raw.send(&batch);
    for i in 0..20 {
        let r = raw.response(false).unwrap();
        assert_eq!(r.status, if i % 2 == 0 { 200 } else { 404 }, "response {i}");
    }
    for chunk in batch.chunks(7) {
        raw.send(chunk);
        sleep(Duration::from_millis(1));
    }
    for i in 0..20 {
        assert_eq!(
            raw.response(false).unwrap().status,
            if i % 2 == 0 { 200 } else { 404 }
        );
    }
}

#[test]
fn chunked_and_continue_bodies() {
    let server = Server::start();
    let mut raw = Raw::connect(server.rest);
    // A body that is read (the route exists, the caller may write): not JSON, so 400 after it.
    raw.send(b"POST /Dog/ HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n");
    sleep(Duration::from_millis(50));
    raw.send(b"6;x=y\r\n world\r\n0\r\n\r\nGET /health HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(raw.response(false).unwrap().status, 400);
    assert_eq!(
        raw.response(false).unwrap().status,
        200,
        "request after a chunked body is framed right"
    );
    // Expect: 100-continue gets an interim response before the body is sent.
    raw.send(
        b"PUT /Dog/x HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n",
    );
    let interim = raw.response(false).unwrap();
    assert_eq!(interim.status, 100);
    raw.send(b"body");
    assert_eq!(raw.response(false).unwrap().status, 400);
    // A request refused from its head (no such route) is answered without waiting for its body,
    // with no 100, and the connection closes (README, "Limits").
    let mut refused = Raw::connect(server.rest);
    refused.send(
        b"PUT /missing HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n",
    );
    assert_eq!(refused.response(false).unwrap().status, 404);
    assert!(refused.closed());
    // Bad chunk framing is a 400 and closes.
    raw.send(b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n");
    assert_eq!(raw.response(false).unwrap().status, 400);
    assert!(raw.closed());
}

#[test]
fn limits_answer_with_their_status() {
    let server = Builder::new()
        .arg("--HTTP_MAXHEADERSIZE", "1024")
        .arg("--HTTP_MAXHEADERCOUNT", "10")
        .arg("--HTTP_MAXBODYSIZE", "100")
        .arg("--HTTP_HEADERSTIMEOUT", "300")
        .arg("--HTTP_TIMEOUT", "600")
        .arg("--HTTP_KEEPALIVETIMEOUT", "400")
        .start();
    let check = |request: Vec<u8>, status: u16| {
        let mut raw = Raw::connect(server.rest);
        raw.send(&request);
        let r = raw
            .response(false)
            .unwrap_or_else(|| panic!("no response to {:?}", String::from_utf8_lossy(&request)));
        assert_eq!(
            r.status,
            status,
            "{:?} → {}",
            String::from_utf8_lossy(&request[..request.len().min(80)]),
            r.text()
        );
        assert!(raw.closed(), "connection closes after a {status}");
    };
    check(b"GARBAGE\r\n\r\n".to_vec(), 400);
    check(b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n".to_vec(), 400);
    check(
        b"GET / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec(),
        400,
    );
    check(
        format!("GET / HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(2000)).into_bytes(),
        431,
    );
    let many: String = (0..11).map(|i| format!("X-{i}: v\r\n")).collect();
    check(format!("GET / HTTP/1.1\r\n{many}\r\n").into_bytes(), 431);
    check(
        b"PUT /x HTTP/1.1\r\nContent-Length: 101\r\n\r\n".to_vec(),
        413,
    );
    check(
        format!(
            "PUT /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n65\r\n{}\r\n",
            "a".repeat(101)
        )
        .into_bytes(),
        413,
    );
    check(
        b"PUT /x HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n".to_vec(),
        501,
    );
    // Slowloris: half a head, then silence → 408 after http.headersTimeout.
    let started = Instant::now();
    check(b"GET /health HTTP/1.1\r\nHost: x\r\n".to_vec(), 408);
    assert!(started.elapsed() >= Duration::from_millis(250));
    // A body that stops arriving → 408 after http.timeout.
    check(
        b"PUT /Dog/x HTTP/1.1\r\nContent-Length: 50\r\n\r\nabc".to_vec(),
        408,
    );
    // Idle keep-alive connections are closed quietly after http.keepAliveTimeout.
    let mut raw = Raw::connect(server.rest);
    raw.send(b"GET /health HTTP/1.1\r\n\r\n");
    assert_eq!(raw.response(false).unwrap().status, 200);
    let idle = Instant::now();
    assert!(raw.closed());
    assert!(
        idle.elapsed() >= Duration::from_millis(300),
        "closed after keepAliveTimeout"
    );
}

#[test]
fn connections_over_the_per_core_limit_get_503() {
    let server = Builder::new()
        .arg("--cores", "1")
        .arg("--HTTP_MAXCONNECTIONSPERCORE", "4")
        .start();
    let mut held: Vec<Raw> = (0..4).map(|_| Raw::connect(server.rest)).collect();
    for raw in held.iter_mut() {
        raw.send(b"GET /health HTTP/1.1\r\n\r\n");
        assert_eq!(raw.response(false).unwrap().status, 200);
    }
    let mut extra = Raw::connect(server.rest);
    let r = extra.response(false).expect("a 503 answer");
    assert_eq!(r.status, 503);
    assert!(r.text().contains("http.maxConnectionsPerCore"));
    drop(held);
    sleep(Duration::from_millis(100));
    let mut again = Raw::connect(server.rest);
    again.send(b"GET /health HTTP/1.1\r\n\r\n");
    assert_eq!(
        again.response(false).unwrap().status,
        200,
        "room again once others closed"
    );
}

#[test]
fn both_cores_accept_under_load() {
    let server = Server::start();
    let mut raws: Vec<Raw> = (0..64)
        .map(|_| {
            let mut r = Raw::connect(server.rest);
            r.send(b"GET /health HTTP/1.1\r\n\r\n");
            r
        })
        .collect();
    for raw in raws.iter_mut() {
        assert_eq!(raw.response(false).unwrap().status, 200);
    }
    let (_, body) = get(&server, "/health?verbose");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let cores = v["cores"].as_array().unwrap();
    assert_eq!(cores.len(), 2);
    for core in cores {
        assert!(
            core["connections_accepted"].as_u64().unwrap() > 0,
            "every core accepted some: {body}"
        );
    }
}

#[test]
fn sigterm_lets_an_in_flight_request_finish() {
    let mut server = Server::start();
    let mut raw = Raw::connect(server.rest);
    // A slow upload: the head arrives, the body trickles in across the signal.
    raw.send(b"PUT /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nab");
    sleep(Duration::from_millis(200));
    server.signal(libc::SIGTERM);
    sleep(Duration::from_millis(300));
    // New connections are refused or closed once shutdown starts.
    raw.send(b"cdefghij");
    let r = raw
        .response(false)
        .expect("the in-flight request is answered");
    assert_eq!(r.status, 404);
    assert_eq!(r.header("connection"), Some("close"));
    let started = Instant::now();
    let code = server.wait_exit(Duration::from_secs(5)).expect("exits");
    assert_eq!(code, Some(0));
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[test]
fn idle_server_exits_promptly_on_sigint() {
    let mut server = Server::start();
    let _idle = Raw::connect(server.rest);
    sleep(Duration::from_millis(100));
    server.signal(libc::SIGINT);
    assert_eq!(server.wait_exit(Duration::from_secs(2)), Some(Some(0)));
}

/// A taken secure port is named by its own key, not the plain port's.
#[test]
fn a_taken_secure_port_names_its_key() {
    let server = Server::start();
    let taken = server.rest.to_string();
    for (key, name) in [
        ("--HTTP_SECUREPORT", "REST (http.securePort) port"),
        (
            "--OPERATIONSAPI_NETWORK_SECUREPORT",
            "Operations API (operationsApi.network.securePort) port",
        ),
    ] {
        let other = tempfile::tempdir().unwrap();
        let out = Builder::new()
            .arg(key, &taken)
            .command(other.path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{key}: {stderr}");
        assert!(stderr.contains(name), "{key}: {stderr}");
        assert!(stderr.contains("already in use"), "{key}: {stderr}");
    }
}

/// A duration in `authentication` that does not parse stops the start, naming key and value
/// (docs/configuration.md "Formats"), instead of silently using the default.
#[test]
fn a_bad_authentication_duration_is_a_start_error() {
    for (key, path) in [
        ("--AUTHENTICATION_CACHETTL", "authentication.cacheTTL"),
        (
            "--AUTHENTICATION_OPERATIONTOKENTIMEOUT",
            "authentication.operationTokenTimeout",
        ),
        (
            "--AUTHENTICATION_REFRESHTOKENTIMEOUT",
            "authentication.refreshTokenTimeout",
        ),
        (
            "--AUTHENTICATION_FAILEDLOGINWINDOW",
            "authentication.failedLoginWindow",
        ),
    ] {
        let root = tempfile::tempdir().unwrap();
        let out = Builder::new()
            .arg(key, "thirty")
            .command(root.path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_ne!(out.status.code(), Some(0), "{key}: {stderr}");
        assert!(out.status.code().is_some(), "{key} exited by a signal");
        assert!(
            stderr.contains(path) && stderr.contains("\"thirty\""),
            "{key}: {stderr}"
        );
    }
    // In the config file too.
    let root = tempfile::tempdir().unwrap();
    std::fs::write(
        root.path().join("harperdb-config.yaml"),
        "authentication:\n  cacheTTL: thirty\n",
    )
    .unwrap();
    let out = Builder::new().command(root.path()).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("authentication.cacheTTL") && stderr.contains("\"thirty\""),
        "{stderr}"
    );
}

#[test]
fn one_process_per_root_and_no_silent_port_sharing() {
    let server = Server::start();
    // Same root → refused by the lock.
    let out = Builder::new().command(server.root.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already running on root"),
        "{out:?}"
    );
    // Other root, same REST port → exit 2, naming the port.
    let other = tempfile::tempdir().unwrap();
    let out = Builder::new()
        .arg("--HTTP_PORT", &server.rest.to_string())
        .command(other.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("already in use"));
    // Asked to share, it starts.
    let shared = Builder::new()
        .arg("--HTTP_PORT", &server.rest.to_string())
        .flag("--share-ports")
        .start();
    assert_eq!(shared.rest, server.rest);
}

#[test]
fn invalid_configuration_exits_1_naming_the_key() {
    let root = tempfile::tempdir().unwrap();
    let out = Builder::new()
        .arg("--HTTP_PORT", "not-a-port")
        .command(root.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("http.port"),
        "{out:?}"
    );
    std::fs::write(
        root.path().join("harperdb-config.yaml"),
        "logging:\n  level: loud\n",
    )
    .unwrap();
    let out = Builder::new().command(root.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("logging.level"));
}

#[test]
fn epoll_driver_serves() {
    let server = Builder::new().arg("--io-driver", "epoll").start();
    assert_eq!(get(&server, "/health").0, 200);
}

#[test]
fn starts_as_non_root_with_8mib_locked_memory() {
    // Needs root to switch users; a non-root run of the suite already covers it.
    if unsafe { libc::geteuid() } != 0
        || std::process::Command::new("setpriv")
            .arg("--version")
            .output()
            .is_err()
    {
        eprintln!("skipped: not root or no setpriv");
        return;
    }
    let root = tempfile::tempdir().unwrap();
    std::process::Command::new("chmod")
        .arg("777")
        .arg(root.path())
        .status()
        .unwrap();
    let server = Builder::new()
        .root(root)
        .wrapper(&[
            "prlimit",
            "--memlock=8388608:8388608",
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--",
        ])
        .start();
    assert_eq!(get(&server, "/health").0, 200);
}
