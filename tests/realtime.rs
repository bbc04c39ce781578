//! Real-time (docs/realtime.md, 6.4, 6.5) against the real binary: WebSocket subscriptions with the
//! tungstenite client, SSE over a raw socket, REST writes with ureq. Fan-out over two cores,
//! a seeded subscribe-while-writing race, a stalled reader's bounded memory, and a headless
//! Chromium using `EventSource` and `WebSocket`.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use common::{core_sum, health_verbose as health};
use common::{Builder, Rng, Server};
use serde_json::Value as Json;

type Ws = tungstenite::WebSocket<TcpStream>;

fn ws_connect(addr: SocketAddr, path: &str) -> Ws {
    let stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let (ws, resp) = tungstenite::client(format!("ws://{addr}{path}"), stream)
        .unwrap_or_else(|e| panic!("upgrade {path}: {e}"));
    assert_eq!(resp.status().as_u16(), 101);
    ws
}

/// The `version` of the next event, found without parsing the whole object (the fan-out test
/// reads four million of them on a two-core machine).
fn ws_next_version(ws: &mut Ws) -> Option<f64> {
    loop {
        match ws.read() {
            Ok(tungstenite::Message::Text(t)) => {
                let at = t.as_str().find("\"version\":")? + 10;
                let rest = &t.as_str()[at..];
                let end = rest.find([',', '}']).unwrap_or(rest.len());
                return rest[..end].parse().ok();
            }
            Ok(tungstenite::Message::Close(_)) | Err(_) => return None,
            Ok(_) => continue,
        }
    }
}

/// The next event object, skipping pings.
fn ws_next(ws: &mut Ws) -> Option<Json> {
    loop {
        match ws.read() {
            Ok(tungstenite::Message::Text(t)) => {
                return Some(serde_json::from_str(t.as_str()).expect("event is JSON"))
            }
            Ok(tungstenite::Message::Close(_)) | Err(_) => return None,
            Ok(_) => continue,
        }
    }
}

struct Sse {
    reader: BufReader<TcpStream>,
}

fn sse_connect(addr: SocketAddr, path: &str, extra: &str) -> (Sse, String) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n{extra}\r\n"
    )
    .unwrap();
    let mut reader = BufReader::new(stream);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    (Sse { reader }, head)
}

impl Sse {
    /// The next event's `id:` (its version), without parsing the data line.
    fn next_id(&mut self) -> Option<f64> {
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line).ok()? == 0 {
                return None;
            }
            if let Some(i) = line.strip_prefix("id: ") {
                return i.trim_end().parse().ok();
            }
        }
    }

    /// The next event's data object and id, skipping comments.
    fn next(&mut self) -> Option<(Json, String)> {
        let mut data = None;
        let mut id = String::new();
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line).ok()? == 0 {
                return None;
            }
            let line = line.trim_end_matches(['\r', '\n']);
            if let Some(d) = line.strip_prefix("data: ") {
                data = Some(serde_json::from_str(d).expect("data is JSON"));
            } else if let Some(i) = line.strip_prefix("id: ") {
                id = i.to_string();
            } else if line.is_empty() {
                if let Some(d) = data.take() {
                    return Some((d, id));
                }
            }
        }
    }
}

fn put(agent: &ureq::Agent, server: &Server, path: &str, body: &str) {
    put_url(agent, &server.url(path), body);
}

/// PUT `body` as JSON; 204 expected. Writers here may sit idle longer than the server's
/// keep-alive timeout (waiting for slow subscribers), and the server then closes their pooled
/// connection: an idempotent request that fails on a reused connection before any answer is
/// sent again once (RFC 9110 §9.2.2), as a browser would.
fn put_url(agent: &ureq::Agent, url: &str, body: &str) {
    // ureq's error type is what it is; it is matched right here, not passed on.
    #[allow(clippy::result_large_err)]
    let send = || {
        agent
            .put(url)
            .set("Content-Type", "application/json")
            .send_string(body)
    };
    let r = match send() {
        Err(ureq::Error::Transport(first)) => {
            send().unwrap_or_else(|e| panic!("PUT {url}: {e} (after {first})"))
        }
        other => other.unwrap_or_else(|e| panic!("PUT {url}: {e}")),
    };
    assert_eq!(r.status(), 204);
}

#[test]
fn websocket_and_sse_message_shapes_and_refusals() {
    let server = Server::start();
    let agent = ureq::agent();
    put(&agent, &server, "/Dog/1", r#"{"name":"Rex","age":8}"#);
    let mut ws = ws_connect(server.rest, "/Dog/1");
    let (mut sse, head) = sse_connect(server.rest, "/Dog/1", "");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head
        .to_ascii_lowercase()
        .contains("content-type: text/event-stream"));
    assert!(head
        .to_ascii_lowercase()
        .contains("cache-control: no-cache"));
    let first = ws_next(&mut ws).unwrap();
    let keys: Vec<&str> = first
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    assert_eq!(keys, ["id", "localTime", "value", "version", "type"]);
    assert_eq!(first["type"], "put");
    assert_eq!(first["value"]["name"], "Rex");
    let (s_first, id) = sse.next().unwrap();
    assert_eq!(s_first, first);
    // serde_json parses floats approximately (no `float_roundtrip`): compare within a µs.
    assert!((id.parse::<f64>().unwrap() - first["version"].as_f64().unwrap()).abs() < 1e-3);

    agent.delete(&server.url("/Dog/1")).call().unwrap();
    let deleted = ws_next(&mut ws).unwrap();
    let keys: Vec<&str> = deleted
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    assert_eq!(keys, ["id", "localTime", "version", "type"]);
    assert_eq!(deleted["type"], "delete");
    assert_eq!(sse.next().unwrap().0["type"], "delete");

    // Last-Event-ID resumes after that version: only the delete, no initial state.
    let (mut resumed, _) = sse_connect(server.rest, "/Dog/1", &format!("Last-Event-ID: {id}\r\n"));
    assert_eq!(resumed.next().unwrap().0["type"], "delete");

    // Unknown path: 404 without upgrading; mqtt subprotocol: MQTT over WebSocket on any path
    // (tests/mqtt_transport.rs), so it upgrades even here.
    let mut raw = common::Raw::connect(server.rest);
    raw.send(b"GET /Nope/1 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n");
    assert_eq!(raw.response(false).unwrap().status, 404);
    raw.send(b"GET /Dog/1 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n");
    assert_eq!(raw.response(false).unwrap().status, 101);

    // A ping is answered; a close is echoed with its code.
    ws.send(tungstenite::Message::Ping(b"hi".to_vec().into()))
        .unwrap();
    loop {
        match ws.read().unwrap() {
            tungstenite::Message::Pong(p) => {
                assert_eq!(&p[..], b"hi");
                break;
            }
            _ => continue,
        }
    }
    ws.close(Some(tungstenite::protocol::CloseFrame {
        code: tungstenite::protocol::frame::coding::CloseCode::Normal,
        reason: "".into(),
    }))
    .unwrap();
    loop {
        match ws.read() {
            Ok(tungstenite::Message::Close(Some(f))) => {
                assert_eq!(u16::from(f.code), 1000);
                break;
            }
            Ok(_) => continue,
            Err(e) => panic!("no close echo: {e}"),
        }
    }
}

#[test]
fn websocket_off_by_config() {
    let root = tempfile::tempdir().unwrap();
    std::fs::write(
        root.path().join("harperdb-config.yaml"),
        "rest:\n  webSocket: false\n",
    )
    .unwrap();
    let server = Builder::new().root(root).start();
    let stream = TcpStream::connect(server.rest).unwrap();
    let err = tungstenite::client(format!("ws://{}/Dog/1", server.rest), stream).unwrap_err();
    assert!(err.to_string().contains("404"), "{err}");
}

/// Done-when (1): 200 WebSocket + 200 SSE subscribers over two cores; 10,000 writes through
/// connections on both cores reach every subscriber complete and in commit order.
#[test]
fn fan_out_to_400_subscribers_over_two_cores() {
    const WS: usize = 200;
    const SSE: usize = 200;
    const WRITES: usize = 10_000;
    let server = Server::start();
    let (tx, rx) = mpsc::channel::<(String, Vec<f64>)>();
    let ready = Arc::new(AtomicUsize::new(0));
    // Events each subscriber has read. Writers stay within `LAG_MAX` of the slowest reader: this
    // test is about completeness and order; dropping under overload is `stalled_reader_…`'s.
    let progress: Arc<Vec<AtomicUsize>> =
        Arc::new((0..WS + SSE).map(|_| AtomicUsize::new(0)).collect());
    const LAG_MAX: usize = 500;
    let mut handles = Vec::new();
    for i in 0..WS + SSE {
        let tx = tx.clone();
        let addr = server.rest;
        let ready = ready.clone();
        let progress = progress.clone();
        handles.push(thread::spawn(move || {
            let mut versions = Vec::with_capacity(WRITES);
            if i < WS {
                let mut ws = ws_connect(addr, "/Dog/");
                ready.fetch_add(1, Ordering::SeqCst);
                while versions.len() < WRITES {
                    match ws_next_version(&mut ws) {
                        Some(v) => versions.push(v),
                        None => break,
                    }
                    progress[i].store(versions.len(), Ordering::Relaxed);
                }
                let _ = tx.send((format!("ws#{i}"), versions));
            } else {
                let (mut sse, _) = sse_connect(addr, "/Dog/", "");
                ready.fetch_add(1, Ordering::SeqCst);
                while versions.len() < WRITES {
                    match sse.next_id() {
                        Some(v) => versions.push(v),
                        None => break,
                    }
                    progress[i].store(versions.len(), Ordering::Relaxed);
                }
                let _ = tx.send((format!("sse#{i}"), versions));
            }
        }));
    }
    drop(tx);
    let deadline = Instant::now() + Duration::from_secs(180);
    while ready.load(Ordering::SeqCst) < WS + SSE {
        assert!(Instant::now() < deadline, "subscribers did not connect");
        thread::sleep(Duration::from_millis(20));
    }
    // Subscriptions are registered before the upgrade answer; wait until all are counted.
    while core_sum(&health(&server), "subscriptions") < (WS + SSE) as u64 {
        assert!(Instant::now() < deadline, "subscriptions not registered");
        thread::sleep(Duration::from_millis(20));
    }
    let h = health(&server);
    assert!(
        h["cores"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["subscriptions"].as_u64().unwrap() > 0),
        "subscribers on both cores: {h}"
    );
    let started = Instant::now();
    let written = Arc::new(AtomicUsize::new(0));
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let url = server.url("");
            let progress = progress.clone();
            let written = written.clone();
            let deadline = Instant::now() + Duration::from_secs(300);
            thread::spawn(move || {
                let agent = ureq::agent();
                for k in (w..WRITES).step_by(8) {
                    while written.load(Ordering::Relaxed)
                        > progress
                            .iter()
                            .map(|p| p.load(Ordering::Relaxed))
                            .min()
                            .unwrap_or(0)
                            + LAG_MAX
                    {
                        assert!(
                            Instant::now() < deadline,
                            "a subscriber stopped reading: progress {:?}",
                            progress
                                .iter()
                                .enumerate()
                                .filter(|(_, p)| p.load(Ordering::Relaxed) + LAG_MAX
                                    < written.load(Ordering::Relaxed))
                                .map(|(i, p)| (i, p.load(Ordering::Relaxed)))
                                .collect::<Vec<_>>()
                        );
                        thread::sleep(Duration::from_millis(2));
                    }
                    written.fetch_add(1, Ordering::Relaxed);
                    put_url(
                        &agent,
                        &format!("{url}/Dog/{k}"),
                        &format!("{{\"name\":\"d{k}\",\"age\":{}}}", k % 20),
                    );
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    let wrote = started.elapsed();
    let mut results = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(180);
    while results.len() < WS + SSE {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(r) => results.push(r),
            Err(_) => panic!(
                "only {} of {} subscribers finished",
                results.len(),
                WS + SSE
            ),
        }
    }
    let delivered = started.elapsed();
    for (name, versions) in &results {
        assert_eq!(
            versions.len(),
            WRITES,
            "{name} got {} events",
            versions.len()
        );
        assert!(
            versions.windows(2).all(|w| w[0] < w[1]),
            "{name}: versions not strictly increasing"
        );
    }
    let h = health(&server);
    let cores = h["cores"].as_array().unwrap();
    assert!(
        cores.iter().all(|c| c["requests"].as_u64().unwrap() > 0),
        "writes reached both cores: {h}"
    );
    assert_eq!(core_sum(&h, "events_dropped"), 0);
    eprintln!(
        "fan-out: {WRITES} writes in {wrote:?}, all {} subscribers complete after {delivered:?}",
        WS + SSE
    );
    for handle in handles {
        handle.join().unwrap();
    }
}

/// Done-when (2): subscribers join at random moments while records are written; each sees the
/// current state, then every later write, none twice and none missing.
#[test]
fn subscribe_while_writing_race() {
    let seed: u64 = common::seed();
    eprintln!("subscribe_while_writing_race: TIDEPOOL_SEED={seed}");
    const RECORDS: usize = 4;
    const WRITES: i64 = 300;
    const SUBSCRIBERS: usize = 40;
    let server = Server::start();
    let mut rng = Rng(seed);
    let plan: Vec<(usize, u64, bool)> = (0..SUBSCRIBERS)
        .map(|_| {
            (
                rng.below(RECORDS as u64) as usize,
                rng.below(1500),
                rng.below(2) == 0,
            )
        })
        .collect();
    let writers: Vec<_> = (0..RECORDS)
        .map(|r| {
            let url = server.url(&format!("/Dog/race{r}"));
            thread::spawn(move || {
                let agent = ureq::agent();
                for n in 1..=WRITES {
                    agent
                        .put(&url)
                        .set("Content-Type", "application/json")
                        .send_string(&format!("{{\"age\":{n}}}"))
                        .unwrap();
                }
            })
        })
        .collect();
    let subscribers: Vec<_> = plan
        .into_iter()
        .enumerate()
        .map(|(i, (record, delay_ms, websocket))| {
            let addr = server.rest;
            thread::spawn(move || {
                thread::sleep(Duration::from_millis(delay_ms));
                let path = format!("/Dog/race{record}");
                let mut seen: Vec<i64> = Vec::new();
                let mut next: Box<dyn FnMut() -> Option<Json>> = if websocket {
                    let mut ws = ws_connect(addr, &path);
                    Box::new(move || ws_next(&mut ws))
                } else {
                    let (mut sse, _) = sse_connect(addr, &path, "");
                    Box::new(move || sse.next().map(|e| e.0))
                };
                while seen.last() != Some(&WRITES) {
                    let Some(e) = next() else { break };
                    assert_eq!(e["type"], "put", "subscriber {i}: {e}");
                    seen.push(e["value"]["age"].as_i64().unwrap());
                }
                (i, path, websocket, seen)
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    for s in subscribers {
        let (i, path, websocket, seen) = s.join().unwrap();
        let first = *seen
            .first()
            .unwrap_or_else(|| panic!("subscriber {i} saw nothing (seed {seed})"));
        let expected: Vec<i64> = (first..=WRITES).collect();
        assert_eq!(
            seen, expected,
            "subscriber {i} on {path} (websocket {websocket}): current state then every later write, none twice (seed {seed})"
        );
    }
}

fn rss_anon_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// Done-when (3): a subscriber that never reads does not grow server memory past its bound while
/// 100,000 events are published; another subscriber keeps receiving; the overflow is counted.
#[test]
fn stalled_reader_stays_bounded() {
    let events: usize = std::env::var("TIDEPOOL_STALL_EVENTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    let server = Builder::new().arg("--STORAGE_WRITEASYNC", "true").start();
    // The stalled client: a tiny receive buffer, and it never reads after the handshake.
    let stalled = {
        let s = TcpStream::connect(server.rest).unwrap();
        let (ws, _) = tungstenite::client(format!("ws://{}/Dog/", server.rest), s).unwrap();
        ws
    };
    let (mut live, _) = sse_connect(server.rest, "/Dog/", "");
    let body = format!("{{\"name\":\"{}\"}}", "x".repeat(1000));
    let agent = ureq::agent();
    for k in 0..200 {
        put(&agent, &server, &format!("/Dog/s{}", k % 100), &body);
    }
    // The reading subscriber's progress; writers stay within `LAG_MAX` of it, so on a loaded
    // machine it is never the one whose queue overflows.
    const LAG_MAX: usize = 500;
    let progress = Arc::new(AtomicUsize::new(0));
    let written = Arc::new(AtomicUsize::new(200));
    let reader_progress = progress.clone();
    let reader = thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(600);
        let mut count = 0usize;
        let mut last = 0.0f64;
        while count < events + 200 && Instant::now() < deadline {
            let Some((e, _)) = live.next() else { break };
            let v = e["version"].as_f64().unwrap();
            assert!(v > last);
            last = v;
            count += 1;
            reader_progress.store(count, Ordering::Relaxed);
        }
        count
    });
    let baseline = rss_anon_kb(server.pid());
    let mut peak = baseline;
    let done = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let url = server.url("");
            let body = body.clone();
            let progress = progress.clone();
            let written = written.clone();
            thread::spawn(move || {
                let agent = ureq::agent();
                for k in (w..events).step_by(4) {
                    while written.load(Ordering::Relaxed)
                        > progress.load(Ordering::Relaxed) + LAG_MAX
                    {
                        thread::sleep(Duration::from_millis(1));
                    }
                    written.fetch_add(1, Ordering::Relaxed);
                    put_url(&agent, &format!("{url}/Dog/s{}", k % 100), &body);
                }
            })
        })
        .collect();
    let watcher = {
        let done = done.clone();
        let pid = server.pid();
        thread::spawn(move || {
            let mut peak = 0;
            while !done.load(Ordering::SeqCst) {
                peak = peak.max(rss_anon_kb(pid));
                thread::sleep(Duration::from_millis(50));
            }
            peak
        })
    };
    for w in writers {
        w.join().unwrap();
    }
    let received = reader.join().unwrap();
    done.store(true, Ordering::SeqCst);
    peak = peak.max(watcher.join().unwrap());
    let h = health(&server);
    eprintln!(
        "stalled reader: RssAnon {baseline} kB before, peak {peak} kB; dropped {}; live subscriber got {received}",
        core_sum(&h, "events_dropped")
    );
    assert_eq!(
        received,
        events + 200,
        "the reading subscriber got every event"
    );
    assert!(core_sum(&h, "events_dropped") > 0, "overflow counted: {h}");
    // The stalled queue holds ≤ 1,000 events (~1 MB here) plus socket buffers; unbounded it
    // would hold ~100 MB.
    assert!(
        peak < baseline + 64 * 1024,
        "server memory grew from {baseline} kB to {peak} kB"
    );
    drop(stalled);
}

/// A one-page HTTP server for the browser test: serves `page` at `/`; `/ready` signals the test;
/// `/done` releases `/hold`, an image the page's load event (and so Chromium's `--dump-dom`)
/// waits for.
fn static_server(page: String) -> (SocketAddr, mpsc::Receiver<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::channel();
    let done = Arc::new(AtomicBool::new(false));
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let page = page.clone();
            let tx = tx.clone();
            let done = done.clone();
            thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let n = stream.read(&mut buf).unwrap_or(0);
                let head = String::from_utf8_lossy(&buf[..n]);
                let (status, body) = if head.starts_with("GET / ") {
                    ("200 OK", page)
                } else if head.starts_with("GET /ready") {
                    let _ = tx.send(());
                    ("200 OK", String::from("ok"))
                } else if head.starts_with("GET /done") {
                    done.store(true, Ordering::SeqCst);
                    ("200 OK", String::from("ok"))
                } else if head.starts_with("GET /hold") {
                    let until = Instant::now() + Duration::from_secs(20);
                    while !done.load(Ordering::SeqCst) && Instant::now() < until {
                        thread::sleep(Duration::from_millis(20));
                    }
                    ("404 Not Found", String::new())
                } else {
                    ("404 Not Found", String::new())
                };
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status}\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            });
        }
    });
    (addr, rx)
}

/// Done-when (4): headless Chromium subscribes with `EventSource` and `WebSocket`; a REST write
/// appears in its DOM. The page comes from a tiny static server in this test (tidepool serves no
/// static files yet), so `EventSource` is cross-origin and relies on tidepool's CORS answer
/// (`http.cors`, on by default); WebSockets need no CORS.
#[test]
fn browser_event_source_and_websocket() {
    let chromium = ["chromium", "chromium-browser"].into_iter().find(|c| {
        std::process::Command::new(c)
            .arg("--version")
            .output()
            .is_ok()
    });
    let Some(chromium) = chromium else {
        // Fails under TIDEPOOL_HEAVY, says what to install otherwise.
        common::have_tool("chromium", &["--version"], "apt-get install chromium");
        return;
    };
    let server = Server::start();
    let agent = ureq::agent();
    put(&agent, &server, "/Dog/b1", r#"{"name":"first"}"#);
    let origin = format!("http://{}", server.rest);
    let page = format!(
        r#"<!doctype html><html><body><ul id="log"></ul><script>
let seconds = 0;
const log = (who, text) => {{ const li = document.createElement('li'); li.textContent = who + ':' + text; document.getElementById('log').appendChild(li); if (text === 'put=second' && ++seconds === 2) fetch('/done'); }};
let opened = 0;
const ready = () => {{ if (++opened === 2) fetch('/ready'); }};
const es = new EventSource('{origin}/Dog/b1');
es.onopen = ready;
es.onmessage = (m) => {{ const e = JSON.parse(m.data); log('sse', e.type + '=' + (e.value ? e.value.name : '')); }};
es.onerror = () => log('sse', 'error');
const ws = new WebSocket('ws://{addr}/Dog/b1');
ws.onopen = ready;
ws.onmessage = (m) => {{ const e = JSON.parse(m.data); log('ws', e.type + '=' + (e.value ? e.value.name : '')); }};
ws.onerror = () => log('ws', 'error');
</script><img src="/hold"></body></html>"#,
        addr = server.rest
    );
    let (page_addr, ready) = static_server(page);
    let profile = tempfile::tempdir().unwrap();
    let child = std::process::Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--no-first-run",
            "--disable-dev-shm-usage",
            &format!("--user-data-dir={}", profile.path().display()),
            "--dump-dom",
            &format!("http://{page_addr}/"),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start chromium");
    ready
        .recv_timeout(Duration::from_secs(30))
        .expect("the page opened its EventSource and WebSocket");
    put(&agent, &server, "/Dog/b1", r#"{"name":"second"}"#);
    let out = child.wait_with_output().unwrap();
    let dom = String::from_utf8_lossy(&out.stdout);
    for expected in [
        "sse:put=first",
        "ws:put=first",
        "sse:put=second",
        "ws:put=second",
    ] {
        assert!(
            dom.contains(expected),
            "{expected} missing from the DOM:\n{dom}"
        );
    }
}
