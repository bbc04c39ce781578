//! What a load run measured: per-core counters while it runs, merged into one [`Report`] at the
//! end, printed as a table or JSON. It never does I/O on the network.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Highest latency the histogram tracks, in microseconds (one minute); longer ones are recorded
/// as this value.
pub const LATENCY_US_MAX: u64 = 60_000_000;
/// Status codes are counted in a flat table indexed by code; httparse accepts three digits.
const STATUS_CODES: usize = 1000;

/// Errors on connections, counted over the whole run including warm-up.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Errors {
    /// Connection attempts that failed or timed out.
    pub connect: u64,
    /// Read or write failures on an open connection (reset, broken pipe, ...).
    pub reset: u64,
    /// The server closed the connection with requests still unanswered.
    pub closed: u64,
    /// Responses that are not valid HTTP/1.1, or answers nobody asked for.
    pub parse: u64,
}

impl Errors {
    pub fn total(&self) -> u64 {
        self.connect + self.reset + self.closed + self.parse
    }

    fn add(&mut self, other: &Errors) {
        self.connect += other.connect;
        self.reset += other.reset;
        self.closed += other.closed;
        self.parse += other.parse;
    }
}

/// One load thread's counters; only responses completed inside the measured window count.
pub struct CoreStats {
    pub latency_us: Histogram<u64>,
    pub status: Box<[u64; STATUS_CODES]>,
    pub errors: Errors,
    pub requests: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    /// Connections re-opened because the server asked to close (`Connection: close`, HTTP/1.0,
    /// a body delimited by the close).
    pub reconnects: u64,
}

impl CoreStats {
    pub fn new() -> Self {
        Self {
            // Three significant digits between 1 µs and a minute: constant bounds that are valid,
            // so a failure here is a bug in this file.
            latency_us: Histogram::new_with_bounds(1, LATENCY_US_MAX, 3)
                .expect("valid constant histogram bounds"),
            status: Box::new([0; STATUS_CODES]),
            errors: Errors::default(),
            requests: 0,
            bytes_read: 0,
            bytes_written: 0,
            reconnects: 0,
        }
    }

    /// Counts one response completed inside the window.
    pub fn record(&mut self, status: u16, latency_us: u64) {
        self.requests += 1;
        self.latency_us
            .saturating_record(latency_us.clamp(1, LATENCY_US_MAX));
        if let Some(count) = self.status.get_mut(usize::from(status)) {
            *count += 1;
        }
    }

    pub fn merge(&mut self, other: &CoreStats) {
        // Both histograms share bounds, so adding cannot fail.
        let _ = self.latency_us.add(&other.latency_us);
        for (mine, theirs) in self.status.iter_mut().zip(other.status.iter()) {
            *mine += theirs;
        }
        self.errors.add(&other.errors);
        self.requests += other.requests;
        self.bytes_read += other.bytes_read;
        self.bytes_written += other.bytes_written;
        self.reconnects += other.reconnects;
    }
}

impl Default for CoreStats {
    fn default() -> Self {
        Self::new()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p99_9: u64,
    pub max: u64,
    pub mean: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Bytes {
    pub read: u64,
    pub written: u64,
}

/// The result of one run against one target.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub target: String,
    pub method: String,
    pub path: String,
    pub connections: usize,
    pub threads: usize,
    pub cpus: Vec<usize>,
    pub pipeline: usize,
    pub io_driver: String,
    pub warmup_s: f64,
    pub duration_s: f64,
    pub requests: u64,
    pub requests_per_s: f64,
    pub latency_us: Latency,
    /// Responses per status code, e.g. `{"200": 1234}`.
    pub status: BTreeMap<String, u64>,
    pub errors: Errors,
    pub reconnects: u64,
    pub bytes: Bytes,
}

/// What a run was, for the report's header fields.
pub struct RunInfo<'a> {
    pub target: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub connections: usize,
    pub cpus: &'a [usize],
    pub pipeline: usize,
    pub io_driver: String,
    pub warmup_s: f64,
    pub duration_s: f64,
}

impl Report {
    pub fn new(info: RunInfo<'_>, stats: &CoreStats) -> Report {
        let h = &stats.latency_us;
        let status = stats
            .status
            .iter()
            .enumerate()
            .filter(|(_, &n)| n > 0)
            .map(|(code, &n)| (code.to_string(), n))
            .collect();
        Report {
            target: info.target.to_string(),
            method: info.method.to_string(),
            path: info.path.to_string(),
            connections: info.connections,
            threads: info.cpus.len(),
            cpus: info.cpus.to_vec(),
            pipeline: info.pipeline,
            io_driver: info.io_driver,
            warmup_s: info.warmup_s,
            duration_s: info.duration_s,
            requests: stats.requests,
            requests_per_s: stats.requests as f64 / info.duration_s,
            latency_us: Latency {
                p50: h.value_at_quantile(0.5),
                p90: h.value_at_quantile(0.9),
                p99: h.value_at_quantile(0.99),
                p99_9: h.value_at_quantile(0.999),
                max: h.max(),
                mean: (h.mean() * 10.0).round() / 10.0,
            },
            status,
            errors: stats.errors,
            reconnects: stats.reconnects,
            bytes: Bytes {
                read: stats.bytes_read,
                written: stats.bytes_written,
            },
        }
    }

    /// The human-readable table.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let l = &self.latency_us;
        let _ = writeln!(
            out,
            "target      {} {} {}\nload        {} conns, pipeline {}, {} thread(s) on CPUs {:?}, {}\n\
             window      {:.1} s after {:.1} s warm-up",
            self.method,
            self.path,
            self.target,
            self.connections,
            self.pipeline,
            self.threads,
            self.cpus,
            self.io_driver,
            self.duration_s,
            self.warmup_s
        );
        let _ = writeln!(
            out,
            "requests    {} ({:.0} req/s)",
            self.requests, self.requests_per_s
        );
        let _ = writeln!(
            out,
            "latency µs  p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  mean {:.1}",
            l.p50, l.p90, l.p99, l.p99_9, l.max, l.mean
        );
        let statuses: Vec<String> = self
            .status
            .iter()
            .map(|(c, n)| format!("{c}: {n}"))
            .collect();
        let _ = writeln!(
            out,
            "status      {}",
            if statuses.is_empty() {
                "none".into()
            } else {
                statuses.join(", ")
            }
        );
        let e = &self.errors;
        let _ = writeln!(
            out,
            "errors      connect {}  reset {}  closed {}  parse {}  (reconnects on close: {})",
            e.connect, e.reset, e.closed, e.parse, self.reconnects
        );
        let _ = write!(
            out,
            "bytes       read {} ({:.1} MB/s)  written {}",
            self.bytes.read,
            self.bytes.read as f64 / self.duration_s / 1e6,
            self.bytes.written
        );
        out
    }
}
