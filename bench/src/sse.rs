//! Fan-out workload (`sse` and `ws` subcommands): one writer PUTs records as fast as the server
//! acknowledges them while N subscribers (SSE here, WebSocket in `ws.rs`) on the same table read
//! every event. Reports delivered events/s over all subscribers and the delivery latency: the
//! subscriber's wall clock at receipt minus the event's `localTime` (the server's commit time),
//! so run it on the server's machine. Only live events count: the current state sent on
//! subscribing (committed before the run) is skipped. Blocking sockets, one thread per subscriber.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::report::LATENCY_US_MAX;

/// Most subscribers in one run (one thread each).
pub const SUBSCRIBERS_MAX: usize = 2000;
/// Most events one run writes.
pub const EVENTS_MAX: usize = 10_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Sse,
    WebSocket,
}

#[derive(Debug, Clone)]
pub struct FanOut {
    pub target: SocketAddr,
    pub transport: Transport,
    /// Table path subscribed to and written under, e.g. `/Dog/`.
    pub path: String,
    /// An `Authorization` header line (with its CRLF) sent on every request, or empty.
    pub authorization: String,
    pub subscribers: usize,
    pub events: usize,
    pub body_bytes: usize,
}

#[derive(Debug, Serialize)]
pub struct FanOutReport {
    pub transport: &'static str,
    pub subscribers: usize,
    pub events_written: usize,
    pub events_delivered: u64,
    pub seconds: f64,
    pub writes_per_s: f64,
    pub delivered_per_s: f64,
    pub latency_us_p50: u64,
    pub latency_us_p99: u64,
    pub latency_us_max: u64,
}

impl FanOutReport {
    pub fn table(&self) -> String {
        format!(
            "{} fan-out: {} subscribers, {} writes in {:.2}s ({:.0} writes/s)\n\
             delivered {} events ({:.0}/s)\n\
             latency (commit → subscriber): p50 {} µs, p99 {} µs, max {} µs",
            self.transport,
            self.subscribers,
            self.events_written,
            self.seconds,
            self.writes_per_s,
            self.events_delivered,
            self.delivered_per_s,
            self.latency_us_p50,
            self.latency_us_p99,
            self.latency_us_max
        )
    }
}

fn now_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

/// The number after `"localTime":` in an event object.
pub fn local_time(event: &[u8]) -> Option<f64> {
    let text = std::str::from_utf8(event).ok()?;
    let at = text.find("\"localTime\":")? + 12;
    let rest = &text[at..];
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    rest[..end].parse().ok()
}

fn sse_subscribe(
    addr: SocketAddr,
    path: &str,
    authorization: &str,
) -> Result<BufReader<TcpStream>> {
    let mut stream = TcpStream::connect(addr).context("connect")?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n{authorization}\r\n"
    )?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    if !line.starts_with("HTTP/1.1 200") {
        bail!("SSE subscribe answered {line:?}");
    }
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
    }
    Ok(reader)
}

/// Calls `each(event_json)` for every event until it returns false or the stream ends.
fn sse_read(mut reader: BufReader<TcpStream>, mut each: impl FnMut(&[u8]) -> bool) {
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if let Some(data) = line.strip_prefix(b"data: ") {
            if !each(data) {
                return;
            }
        }
    }
}

pub fn run(w: &FanOut) -> Result<FanOutReport> {
    let histogram = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(
        1,
        LATENCY_US_MAX,
        3,
    )?));
    let delivered = Arc::new(AtomicU64::new(0));
    let connected = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    // Events committed before the subscribers connected are the table's current state (records
    // of earlier runs), sent first on subscribing: they are neither counted nor timed, or a
    // subscriber would stop before the live events and its latency would be the age of old
    // records (bench/README.md, "Real-time").
    let live_since = now_ms();
    for _ in 0..w.subscribers {
        let (histogram, delivered, connected, stop) = (
            histogram.clone(),
            delivered.clone(),
            connected.clone(),
            stop.clone(),
        );
        let (addr, path, transport, events) = (w.target, w.path.clone(), w.transport, w.events);
        let authorization = w.authorization.clone();
        readers.push(thread::spawn(move || -> Result<()> {
            let mut local = Histogram::<u64>::new_with_bounds(1, LATENCY_US_MAX, 3)?;
            let mut count = 0usize;
            let mut each = |event: &[u8]| {
                if let Some(t) = local_time(event) {
                    if t < live_since {
                        return !stop.load(Ordering::Relaxed);
                    }
                    let us = ((now_ms() - t) * 1000.0).max(1.0) as u64;
                    let _ = local.record(us.min(LATENCY_US_MAX));
                }
                count += 1;
                delivered.fetch_add(1, Ordering::Relaxed);
                count < events && !stop.load(Ordering::Relaxed)
            };
            match transport {
                Transport::Sse => {
                    let reader = sse_subscribe(addr, &path, &authorization)?;
                    connected.fetch_add(1, Ordering::SeqCst);
                    sse_read(reader, &mut each);
                }
                Transport::WebSocket => {
                    let ws = crate::ws::subscribe(addr, &path, &authorization)?;
                    connected.fetch_add(1, Ordering::SeqCst);
                    crate::ws::read(ws, &mut each);
                }
            }
            histogram
                .lock()
                .map_err(|_| anyhow::anyhow!("histogram lock"))?
                .add(&local)?;
            Ok(())
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while connected.load(Ordering::SeqCst) < w.subscribers as u64 {
        if Instant::now() > deadline {
            bail!("subscribers did not connect within 60 s");
        }
        thread::sleep(Duration::from_millis(10));
    }
    // Registration happens before the response head; give the last ones a moment.
    thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    let mut writer = TcpStream::connect(w.target)?;
    writer.set_nodelay(true)?;
    let body = format!(
        "{{\"name\":\"{}\"}}",
        "x".repeat(w.body_bytes.saturating_sub(11))
    );
    let mut response = [0u8; 4096];
    for k in 0..w.events {
        write!(
            writer,
            "PUT {}bench{} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n{}Content-Length: {}\r\n\r\n{body}",
            w.path,
            k % 1000,
            w.authorization,
            body.len()
        )?;
        // The answer (204, no body) fits one read.
        let n = writer.read(&mut response)?;
        if !response[..n].starts_with(b"HTTP/1.1 204") {
            bail!("PUT answered {:?}", String::from_utf8_lossy(&response[..n]));
        }
    }
    let wrote = started.elapsed();
    let expected = (w.events * w.subscribers) as u64;
    let deadline = Instant::now() + Duration::from_secs(30);
    while delivered.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(5));
    }
    let seconds = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    drop(readers);
    let h = histogram
        .lock()
        .map_err(|_| anyhow::anyhow!("histogram lock"))?;
    let delivered = delivered.load(Ordering::Relaxed);
    Ok(FanOutReport {
        transport: match w.transport {
            Transport::Sse => "sse",
            Transport::WebSocket => "ws",
        },
        subscribers: w.subscribers,
        events_written: w.events,
        events_delivered: delivered,
        seconds,
        writes_per_s: w.events as f64 / wrote.as_secs_f64(),
        delivered_per_s: delivered as f64 / seconds,
        latency_us_p50: h.value_at_quantile(0.5),
        latency_us_p99: h.value_at_quantile(0.99),
        latency_us_max: h.max(),
    })
}
