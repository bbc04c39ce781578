//! Hardening against hostile and long-running traffic (issue 15): connections that end every way
//! free their memory, bodies a request will not be allowed to send are never read, the bytes of
//! bodies in flight are bounded per core, and a start right after a crash gets its ports.
//! The heavy tests run with `TIDEPOOL_HEAVY=1` (as `.ci/run` sets); see `tests/README.md`.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{heavy, mqtt_port, status_bytes, Builder, ADMIN_PASSWORD, ADMIN_USER};

fn basic_admin() -> String {
    use base64::Engine;
    let token =
        base64::engine::general_purpose::STANDARD.encode(format!("{ADMIN_USER}:{ADMIN_PASSWORD}"));
    format!("Basic {token}")
}

/// Reads until the peer closes (or errors); returns what arrived.
fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// Reads one response head and its Content-Length body off a keep-alive connection.
fn read_response(stream: &mut TcpStream) -> Option<(u16, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => buf.push(byte[0]),
            _ => return None,
        }
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let length = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).ok()?;
    Some((status, body))
}

fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream
}

// ---- 1. every way a connection ends frees what it held ----

/// Keep-alive connections a client thread leaves idle before waiting for the server to close
/// them: small, so the first 1,000 connections already reach the run's peak of open ones.
const IDLE_BATCH: usize = 25;

/// One HTTP connection, ended one of four ways.
fn http_connection(rest: SocketAddr, ops: SocketAddr, way: u64, idle: &mut Vec<TcpStream>) {
    match way % 4 {
        // The client closes without sending a byte.
        0 => drop(connect(rest)),
        // `Connection: close`, REST port.
        1 => {
            let mut s = connect(rest);
            s.write_all(b"GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
                .unwrap();
            assert!(read_to_close(&mut s).starts_with(b"HTTP/1.1 200"));
        }
        // `Connection: close`, Operations API port.
        2 => {
            let mut s = connect(ops);
            s.write_all(b"GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
                .unwrap();
            assert!(read_to_close(&mut s).starts_with(b"HTTP/1.1 200"));
        }
        // Keep-alive: answered, then left idle until the server's keep-alive timeout closes it.
        _ => {
            let mut s = connect(rest);
            s.write_all(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
                .unwrap();
            assert_eq!(read_response(&mut s).map(|r| r.0), Some(200));
            idle.push(s);
            if idle.len() >= IDLE_BATCH {
                for mut s in idle.drain(..) {
                    assert!(read_to_close(&mut s).is_empty(), "closed by the server");
                }
            }
        }
    }
}

/// One MQTT 3.1.1 connection: CONNECT, CONNACK, then DISCONNECT or a plain drop.
fn mqtt_connection(mqtt: SocketAddr, id: &str, disconnect: bool) {
    let mut s = connect(mqtt);
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60];
    body.extend_from_slice(&(id.len() as u16).to_be_bytes());
    body.extend_from_slice(id.as_bytes());
    let mut packet = vec![0x10, body.len() as u8];
    packet.extend_from_slice(&body);
    s.write_all(&packet).unwrap();
    let connack = common::read_mqtt_packet(&mut s).expect("CONNACK");
    assert_eq!(connack, [0x20, 2, 0, 0], "CONNACK accepted");
    if disconnect {
        s.write_all(&[0xE0, 0]).unwrap();
        read_to_close(&mut s);
    }
}

/// What a client thread does for connection number `i`; keep-alive connections it leaves idle
/// go in the `Vec` (the server closes them).
type Job = Arc<dyn Fn(u64, &mut Vec<TcpStream>) + Send + Sync>;

/// Runs `total` connections numbered from `first`, split over `threads` client threads; each
/// thread then waits for the server to close the idle connections it left.
fn run_connections(threads: u64, total: u64, first: u64, job: Job) {
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let job = job.clone();
            std::thread::spawn(move || {
                let mut idle = Vec::new();
                let mut i = first + t;
                while i < first + total {
                    job(i, &mut idle);
                    i += threads;
                }
                for mut s in idle {
                    assert!(read_to_close(&mut s).is_empty(), "closed by the server");
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("client thread");
    }
}

#[test]
fn connections_ending_every_way_free_their_memory() {
    if !heavy() {
        return;
    }
    let started = Instant::now();
    let server = Builder::new()
        // Idle keep-alive connections are closed after 100 ms, so that way of ending is quick.
        .arg("--HTTP_KEEPALIVETIMEOUT", "100")
        .start();
    let mqtt = mqtt_port(&server);
    let pid = server.pid();
    let (rest, ops) = (server.rest, server.ops);
    const THREADS: u64 = 6;
    const HTTP: u64 = 50_000;
    const MQTT: u64 = 20_000;
    const WARM: u64 = 1_000;
    let http_job: Job = Arc::new(move |i, idle| http_connection(rest, ops, i, idle));
    let mqtt_job: Job = Arc::new(move |i, _| mqtt_connection(mqtt, &format!("h{i}"), i % 2 == 0));

    // The first 1,000 of each kind, then the baseline.
    run_connections(THREADS, WARM, 0, http_job.clone());
    run_connections(THREADS, WARM, 0, mqtt_job.clone());
    std::thread::sleep(Duration::from_millis(500));
    let baseline = status_bytes(pid, "VmRSS");

    run_connections(THREADS, HTTP - WARM, WARM, http_job);
    run_connections(THREADS, MQTT - WARM, WARM, mqtt_job);
    std::thread::sleep(Duration::from_millis(500));
    let after = status_bytes(pid, "VmRSS");
    let grown = after.saturating_sub(baseline);
    println!(
        "{HTTP} HTTP and {MQTT} MQTT connections in {:?}: RSS {baseline} B after the first \
         {WARM} of each, {after} B after all ({grown} B more)",
        started.elapsed()
    );
    assert!(
        grown < 10 * 1024 * 1024,
        "RSS grew by {grown} B over the run (limit 10 MB)"
    );

    // The memory is visible per core, and nothing is left counted once every connection ended.
    let health = ureq::get(&server.url("/health?verbose"))
        .call()
        .expect("health")
        .into_string()
        .unwrap();
    let health: serde_json::Value = serde_json::from_str(&health).unwrap();
    let cores = health["cores"].as_array().expect("cores");
    let sum = |key: &str| -> u64 { cores.iter().map(|c| c[key].as_u64().unwrap()).sum() };
    let open = sum("connections_open");
    let buffers = sum("connection_buffer_bytes");
    let mqtt_open = sum("mqtt_connections_open");
    let accepted = sum("connections_accepted");
    assert!(accepted >= HTTP, "{accepted} HTTP connections accepted");
    // Only the connection asking is open; it holds its two buffers.
    assert_eq!(open, 1, "{health}");
    assert!(
        buffers <= 64 * 1024,
        "{buffers} B of buffers held: {health}"
    );
    assert_eq!(mqtt_open, 0, "{health}");
    let metrics = ureq::get(&format!("http://{ops}/metrics"))
        .call()
        .expect("metrics")
        .into_string()
        .unwrap();
    for family in [
        "tidepool_connection_buffer_bytes{core=\"0\"}",
        "tidepool_http_body_bytes_in_flight{core=\"1\"}",
        "tidepool_mqtt_connections_open{core=\"0\"}",
    ] {
        assert!(metrics.contains(family), "{family} in /metrics");
    }
}

/// `count` keep-alive connections to the REST port, each answered one `GET /health`; with the
/// request, for more.
fn idle_connections(server: &common::Server, count: usize) -> (Vec<TcpStream>, String) {
    let request = format!(
        "GET /health HTTP/1.1\r\nHost: t\r\nAuthorization: {}\r\n\r\n",
        basic_admin()
    );
    let mut idle: Vec<TcpStream> = (0..count).map(|_| connect(server.rest)).collect();
    for stream in &mut idle {
        stream.write_all(request.as_bytes()).unwrap();
        let (status, _) = read_response(stream).expect("first answer");
        assert_eq!(status, 200);
    }
    (idle, request)
}

/// Idle keep-alive connections hold no buffers: 200 connections each answered once, then idle,
/// leave at most the asking connection's buffers counted; each still answers its next request,
/// including one that arrives in pieces (docs/design.md, "Idle connections").
#[test]
fn idle_keep_alive_connections_hold_no_buffers() {
    let server = Builder::new().start();
    let (mut idle, request) = idle_connections(&server, 200);
    let health = common::health_verbose(&server);
    let open = common::core_sum(&health, "connections_open");
    let buffers = common::core_sum(&health, "connection_buffer_bytes");
    assert!(open >= 200, "{open} connections open: {health}");
    // Only the connection asking holds a set (two 8 KiB buffers and the response's); 200 idle
    // connections holding theirs would be over 3 MB.
    assert!(
        buffers <= 40 * 1024,
        "{buffers} B of buffers held: {health}"
    );

    // Each idle connection is woken by its next request, whole or in two pieces.
    for (i, stream) in idle.iter_mut().enumerate() {
        if i % 2 == 0 {
            stream.write_all(request.as_bytes()).unwrap();
        } else {
            let (first, rest) = request.split_at(10);
            stream.write_all(first.as_bytes()).unwrap();
            std::thread::sleep(Duration::from_millis(1));
            stream.write_all(rest.as_bytes()).unwrap();
        }
        let (status, _) = read_response(stream).expect("second answer");
        assert_eq!(status, 200, "connection {i}");
    }
}

/// Idle keep-alive connections closed all at once take no answering buffers to find out they
/// are gone: each wakes, reads the end into a read buffer from its core's spares, and ends.
/// Taking a whole set (write and response buffers) before that read made 15,000 connections
/// closing at once grow the server by 62 MB, most of it kept after (docs/design.md, "Idle
/// connections"; `buffer_sets_allocated` counts sets a core had to allocate).
#[test]
fn idle_connections_closing_at_once_take_no_answering_buffers() {
    let server = Builder::new().start();
    let (idle, _) = idle_connections(&server, 1000);
    let health = common::health_verbose(&server);
    let open = common::core_sum(&health, "connections_open");
    assert!(open >= 1000, "{open} connections open: {health}");
    let before = common::core_sum(&health, "buffer_sets_allocated");

    // All closed at once: each connection wakes to read its end.
    drop(idle);
    let deadline = Instant::now() + Duration::from_secs(20);
    let health = loop {
        let health = common::health_verbose(&server);
        if common::core_sum(&health, "connections_open") <= 1 {
            break health;
        }
        assert!(
            Instant::now() < deadline,
            "connections still open: {health}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let allocated = common::core_sum(&health, "buffer_sets_allocated") - before;
    // The health requests themselves take a spare set; none is allocated for a closing peer.
    assert!(
        allocated <= 2,
        "{allocated} answering buffer sets allocated while 1,000 idle connections closed: {health}"
    );
}

/// A burst of requests that needs more buffer sets than a core keeps spare (5,000 idle
/// connections each sending a request at once) allocates them, and once the burst is over the
/// memory goes back to the system: glibc keeps freed sets that lie below its heap's top, so the
/// keep-alive sweeper trims after a burst (docs/design.md, "Idle connections").
#[test]
fn memory_of_a_burst_of_requests_goes_back_after_it() {
    let server = Builder::new().start();
    let pid = server.pid();
    let (mut idle, request) = idle_connections(&server, 5000);
    std::thread::sleep(Duration::from_millis(300));
    let held = status_bytes(pid, "RssAnon");
    for stream in &mut idle {
        stream.write_all(request.as_bytes()).unwrap();
    }
    for stream in &mut idle {
        let (status, _) = read_response(stream).expect("burst answer");
        assert_eq!(status, 200);
    }
    let health = common::health_verbose(&server);
    let allocated = common::core_sum(&health, "buffer_sets_allocated");
    let after = status_bytes(pid, "RssAnon");
    assert!(
        allocated > 256,
        "the burst needed only {allocated} new sets; it must outgrow the spares: {health}"
    );
    // At least half of what the burst added goes back (the spares and the table of idle
    // connections keep some); the sweeper ticks once a second at the default keep-alive.
    let bound = held + after.saturating_sub(held) / 2;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = status_bytes(pid, "RssAnon");
        if now < bound {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "RssAnon {now} B ten seconds after the burst: {held} B before it, {after} B right \
             after ({allocated} sets allocated)"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

// ---- 2. bodies judged from the head; bodies in flight bounded per core ----

/// Sends a request head announcing `length` body bytes, then streams the body (without holding
/// it) until the server answers or closes. Returns the status and how many body bytes went out.
fn stream_body(addr: SocketAddr, head: &str, length: u64) -> (Option<u16>, u64) {
    let mut stream = connect(addr);
    stream
        .write_all(format!("{head}Content-Length: {length}\r\n\r\n").as_bytes())
        .unwrap();
    let mut reader = stream.try_clone().unwrap();
    let answer = std::thread::spawn(move || read_response(&mut reader).map(|r| r.0));
    let chunk = vec![b' '; 64 * 1024];
    let mut sent = 0u64;
    while sent < length {
        let n = chunk.len().min((length - sent) as usize);
        if stream.write_all(&chunk[..n]).is_err() {
            break;
        }
        sent += n as u64;
        if answer.is_finished() {
            break;
        }
    }
    let _ = stream.shutdown(Shutdown::Write);
    (answer.join().unwrap(), sent)
}

#[test]
fn refused_requests_are_answered_from_the_head() {
    let server = Builder::new().require_credentials().start();
    let pid = server.pid();
    // Warm up the paths refused below, then take the peak so far.
    let head_rest = "PUT /Dog/x HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n";
    assert_eq!(stream_body(server.rest, head_rest, 10).0, Some(401));
    let peak_before = status_bytes(pid, "VmHWM");

    const BIG: u64 = 512 << 20;
    let cases = [
        (server.rest, head_rest.to_string(), 401),
        (
            server.rest,
            "PUT /NoSuchTable/x HTTP/1.1\r\nHost: t\r\n".to_string(),
            404,
        ),
        (
            server.rest,
            "DELETE /Dog HTTP/1.1\r\nHost: t\r\n".to_string(),
            401,
        ),
        (
            server.ops,
            "POST / HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n".to_string(),
            401,
        ),
        (
            server.ops,
            "POST /nowhere HTTP/1.1\r\nHost: t\r\n".to_string(),
            404,
        ),
        (
            server.ops,
            format!(
                "PUT / HTTP/1.1\r\nHost: t\r\nAuthorization: {}\r\n",
                basic_admin()
            ),
            405,
        ),
    ];
    for (addr, head, want) in &cases {
        let (status, sent) = stream_body(*addr, head, BIG);
        assert_eq!(status, Some(*want), "{head}");
        assert!(sent < BIG, "{head}: the whole body was taken");
    }
    let grown = status_bytes(pid, "VmHWM").saturating_sub(peak_before);
    println!(
        "peak RSS grew {grown} B over {} refused 512 MiB bodies",
        cases.len()
    );
    assert!(grown < 16 << 20, "peak RSS grew {grown} B");

    // `Expect: 100-continue`: a refused request gets its final answer and no 100.
    let mut s = connect(server.rest);
    s.write_all(
        b"PUT /Dog/x HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Type: application/json\r\nContent-Length: 10\r\n\r\n",
    )
    .unwrap();
    let answer = read_to_close(&mut s);
    assert!(answer.starts_with(b"HTTP/1.1 401"), "{answer:?}");
    assert!(!answer.windows(3).any(|w| w == b"100"), "no 100 Continue");
    // An allowed one gets 100, then its answer once the body is sent.
    let mut s = connect(server.rest);
    let body = br#"{"name":"Rex"}"#;
    s.write_all(
        format!(
            "PUT /Dog/x HTTP/1.1\r\nHost: t\r\nAuthorization: {}\r\nExpect: 100-continue\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            basic_admin(),
            body.len()
        )
        .as_bytes(),
    )
    .unwrap();
    let mut interim = [0u8; 25];
    s.read_exact(&mut interim).unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    s.write_all(body).unwrap();
    let status = read_response(&mut s).map(|r| r.0);
    assert!(matches!(status, Some(200..=204)), "{status:?}");
}

#[test]
fn concurrent_bodies_stay_within_the_per_core_budget() {
    if !heavy() {
        return;
    }
    const BUDGET: u64 = 128 << 20;
    const BODY: u64 = 100 << 20;
    const CLIENTS: usize = 50;
    let server = Builder::new()
        .require_credentials()
        .arg("--HTTP_MAXBODYBYTESINFLIGHTPERCORE", &BUDGET.to_string())
        .start();
    let pid = server.pid();
    let rss_start = status_bytes(pid, "VmRSS");
    let peak = Arc::new(AtomicU64::new(rss_start));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(status_bytes(pid, "VmRSS"), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    // Anonymous: every one refused from its head.
    let run = |head: String| {
        let addr = server.rest;
        let clients: Vec<_> = (0..CLIENTS)
            .map(|_| {
                let head = head.clone();
                std::thread::spawn(move || stream_body(addr, &head, BODY))
            })
            .collect();
        clients
            .into_iter()
            .map(|c| c.join().unwrap())
            .collect::<Vec<_>>()
    };
    let anonymous =
        run("POST /Dog/ HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n".into());
    assert!(
        anonymous.iter().all(|(s, _)| *s == Some(401)),
        "{anonymous:?}"
    );
    let anonymous_peak = peak.load(Ordering::Relaxed);
    // Allowed (the super user): read while the core's budget lasts, 503 beyond it. The body is
    // not JSON, so one that is read is answered 400 and nothing is stored.
    let allowed = run(format!(
        "POST /Dog/ HTTP/1.1\r\nHost: t\r\nAuthorization: {}\r\nContent-Type: application/json\r\n",
        basic_admin()
    ));
    done.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let read = allowed.iter().filter(|(s, _)| *s == Some(400)).count();
    let busy = allowed.iter().filter(|(s, _)| *s == Some(503)).count();
    println!(
        "RSS {rss_start} B at start; peak {anonymous_peak} B after {CLIENTS} anonymous bodies, \
         {} B after {CLIENTS} allowed ones ({read} read and refused 400, {busy} answered 503)",
        peak.load(Ordering::Relaxed)
    );
    assert_eq!(read + busy, CLIENTS, "{allowed:?}");
    assert!(read >= 1 && busy >= 1, "{allowed:?}");
    assert!(anonymous_peak - rss_start < 16 << 20);
    // Two cores: at most one 128 MiB budget each, plus a fixed margin.
    let limit = rss_start + 2 * BUDGET + (64 << 20);
    assert!(peak.load(Ordering::Relaxed) < limit);
}

// ---- 6. a start right after a crash ----

/// Keep-alive PUTs to `rest` as fast as answered, reconnecting whenever the server is gone.
fn busy_writer(rest: SocketAddr, t: u64, stop: Arc<AtomicBool>, acked: Arc<AtomicU64>) {
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut s) = TcpStream::connect(rest) else {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        while !stop.load(Ordering::Relaxed) {
            n += 1;
            let body = format!(r#"{{"name":"w{t}-{n}"}}"#);
            let request = format!(
                "PUT /Dog/w{t}-{} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                n % 1000,
                body.len()
            );
            if s.write_all(request.as_bytes()).is_err() {
                break;
            }
            match read_response(&mut s) {
                Some((200..=204, _)) => {
                    acked.fetch_add(1, Ordering::Relaxed);
                }
                _ => break,
            }
        }
    }
}

#[test]
fn every_start_right_after_sigkill_under_load_gets_its_ports() {
    if !heavy() {
        return;
    }
    const ROUNDS: usize = 20;
    const WRITERS: u64 = 4;
    const IDLE: usize = 1000;
    let started = Instant::now();
    let mut server = Builder::new().start();
    let ports = [
        ("--HTTP_PORT", server.rest),
        ("--OPERATIONSAPI_NETWORK_PORT", server.ops),
        ("--MQTT_NETWORK_PORT", mqtt_port(&server)),
    ];
    let rest = server.rest;
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..WRITERS)
        .map(|t| {
            let (stop, acked) = (stop.clone(), acked.clone());
            std::thread::spawn(move || busy_writer(rest, t, stop, acked))
        })
        .collect();
    for round in 0..ROUNDS {
        // Busy: every round sees writes acknowledged before the kill.
        let before = acked.load(Ordering::Relaxed);
        let deadline = Instant::now() + Duration::from_secs(20);
        while acked.load(Ordering::Relaxed) < before + 200 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(
            acked.load(Ordering::Relaxed) >= before + 200,
            "round {round}: the writers are not busy"
        );
        // Idle connections too: the more sockets the dead ring holds, the longer the kernel
        // takes to tear it down (measured here: up to ~0.5 s with 2,000), so a start is more
        // likely to meet its listeners still there. A debug build is often slower to bind than
        // that; the wait itself is tested in `io_uring/src/net.rs`.
        let idle: Vec<TcpStream> = (0..IDLE)
            .filter_map(|_| TcpStream::connect(rest).ok())
            .collect();
        server.signal(libc::SIGKILL);
        assert_eq!(server.wait_exit(Duration::from_secs(10)), Some(None));
        let root = std::mem::replace(&mut server.root, tempfile::tempdir().unwrap());
        let mut builder = Builder::new()
            .root(root)
            .arg("--HTTP_PORTWAITAFTERCRASH", "15000");
        for (key, addr) in ports {
            builder = builder.arg(key, &addr.to_string());
        }
        // `start` fails the test if the server exits instead of listening.
        server = builder.start();
        assert_eq!(server.rest, rest, "round {round}");
        drop(idle);
    }
    let log = std::fs::read_to_string(server.root.path().join("log/hdb.log")).unwrap_or_default();
    let waited_rounds = log.matches("no live process owns").count();
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    println!(
        "{ROUNDS} kills under {WRITERS} writers and {IDLE} idle connections, every restart \
         listening; {waited_rounds} \
         port waits for a dead process's sockets; {} writes acknowledged in {:?}",
        acked.load(Ordering::Relaxed),
        started.elapsed()
    );
}
