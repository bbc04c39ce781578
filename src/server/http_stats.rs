//! HTTP answers per route class and status class, and their latency, counted per core with
//! relaxed atomics (no state shared between cores on the request path) and summed when `/metrics`
//! is read (docs/metrics.md).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::metrics::Exposition;

/// What a request was for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Health,
    Metrics,
    Operations,
    /// WebSocket and Server-Sent Events subscriptions (and MQTT over WebSocket).
    Realtime,
    Rest,
    Static,
    /// No export, no file: 404.
    NotFound,
}

impl Route {
    const ALL: [Route; 7] = [
        Route::Health,
        Route::Metrics,
        Route::Operations,
        Route::Realtime,
        Route::Rest,
        Route::Static,
        Route::NotFound,
    ];

    fn name(self) -> &'static str {
        match self {
            Route::Health => "health",
            Route::Metrics => "metrics",
            Route::Operations => "operations",
            Route::Realtime => "realtime",
            Route::Rest => "rest",
            Route::Static => "static",
            Route::NotFound => "not_found",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Upper bounds of the latency buckets, in microseconds (0.1 ms … 10 s).
const BUCKETS_MICROS: [u64; 14] = [
    100, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 10_000_000,
];

const ROUTES: usize = Route::ALL.len();

/// One core's counters.
pub struct HttpStats {
    answers: [[AtomicU64; STATUS_CLASSES.len()]; ROUTES],
    /// Per route: one count per bucket (cumulative at render), then the total count.
    latency: [[AtomicU64; BUCKETS_MICROS.len() + 1]; ROUTES],
    latency_sum_micros: [AtomicU64; ROUTES],
}

impl Default for HttpStats {
    fn default() -> Self {
        HttpStats {
            answers: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
            latency: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
            latency_sum_micros: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl HttpStats {
    /// Counts one answer: its route, its status, the time from its head to its answer.
    pub fn record(&self, route: Route, status: u16, took: Duration) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        let r = route.index();
        self.answers[r][class].fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        let bucket = BUCKETS_MICROS
            .iter()
            .position(|b| micros <= *b)
            .unwrap_or(BUCKETS_MICROS.len());
        if bucket < BUCKETS_MICROS.len() {
            self.latency[r][bucket].fetch_add(1, Ordering::Relaxed);
        }
        self.latency[r][BUCKETS_MICROS.len()].fetch_add(1, Ordering::Relaxed);
        self.latency_sum_micros[r].fetch_add(micros, Ordering::Relaxed);
    }
}

/// Appends the two families, summed over `cores`.
pub fn render<'a>(e: &mut Exposition, cores: impl Iterator<Item = &'a HttpStats> + Clone) {
    let sum = |read: &dyn Fn(&HttpStats) -> u64| cores.clone().map(read).sum::<u64>() as f64;
    const ANSWERS: &str = "tidepool_http_responses_total";
    e.family(
        ANSWERS,
        "counter",
        "HTTP answers by route (health, metrics, operations, realtime, rest, static, not_found) and status class.",
    );
    for route in Route::ALL {
        for (class, label) in STATUS_CLASSES.iter().enumerate() {
            let n = sum(&|s| s.answers[route.index()][class].load(Ordering::Relaxed));
            e.sample(ANSWERS, &[("route", route.name()), ("status", label)], n);
        }
    }
    const LATENCY: &str = "tidepool_http_request_duration_seconds";
    e.family(
        LATENCY,
        "histogram",
        "Time from a request (its body read) to its answer, by route.",
    );
    for route in Route::ALL {
        let r = route.index();
        let mut cumulative = 0.0;
        for (i, bound) in BUCKETS_MICROS.iter().enumerate() {
            cumulative += sum(&|s| s.latency[r][i].load(Ordering::Relaxed));
            let le = format!("{}", *bound as f64 / 1e6);
            e.sample(
                &format!("{LATENCY}_bucket"),
                &[("route", route.name()), ("le", &le)],
                cumulative,
            );
        }
        let count = sum(&|s| s.latency[r][BUCKETS_MICROS.len()].load(Ordering::Relaxed));
        e.sample(
            &format!("{LATENCY}_bucket"),
            &[("route", route.name()), ("le", "+Inf")],
            count,
        );
        let micros = sum(&|s| s.latency_sum_micros[r].load(Ordering::Relaxed));
        e.sample(
            &format!("{LATENCY}_sum"),
            &[("route", route.name())],
            micros / 1e6,
        );
        e.sample(
            &format!("{LATENCY}_count"),
            &[("route", route.name())],
            count,
        );
    }
}

/// The process families Prometheus' client libraries export (`process_*`), read from /proc.
pub fn render_process(e: &mut Exposition, started_unix_s: f64) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let field = |n: usize| fields.get(n).and_then(|f| f.parse::<f64>().ok());
    // SAFETY: sysconf and getpagesize only read constants of the system.
    let (ticks, page) = unsafe {
        (
            libc::sysconf(libc::_SC_CLK_TCK),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    let ticks = if ticks > 0 { ticks as f64 } else { 100.0 };
    // utime and stime are fields 14 and 15 of stat(5); fields[0] is field 3.
    let cpu = field(11).unwrap_or(0.0) + field(12).unwrap_or(0.0);
    let vsize = field(20).unwrap_or(0.0);
    let rss_pages = field(21).unwrap_or(0.0);
    let open_fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count()) as f64;
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct we own.
    let max_fds = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        limit.rlim_cur as f64
    } else {
        0.0
    };
    let families: [(&str, &str, &str, f64); 6] = [
        (
            "process_cpu_seconds_total",
            "counter",
            "User and system CPU time spent, in seconds.",
            cpu / ticks,
        ),
        (
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            rss_pages * page as f64,
        ),
        (
            "process_virtual_memory_bytes",
            "gauge",
            "Virtual memory size in bytes.",
            vsize,
        ),
        (
            "process_open_fds",
            "gauge",
            "Open file descriptors.",
            open_fds,
        ),
        (
            "process_max_fds",
            "gauge",
            "The limit of open file descriptors.",
            max_fds,
        ),
        (
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since the Unix epoch, in seconds.",
            started_unix_s,
        ),
    ];
    for (name, kind, help, value) in families {
        e.family(name, kind, help);
        e.sample(name, &[], value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_and_latency_sum_over_cores() {
        let cores = [HttpStats::default(), HttpStats::default()];
        cores[0].record(Route::Rest, 200, Duration::from_micros(300));
        cores[1].record(Route::Rest, 404, Duration::from_millis(3));
        cores[1].record(Route::Operations, 503, Duration::from_secs(20));
        let mut e = Exposition::new();
        render(&mut e, cores.iter());
        render_process(&mut e, 1.0);
        let text = e.finish();
        for line in [
            "tidepool_http_responses_total{route=\"rest\",status=\"2xx\"} 1",
            "tidepool_http_responses_total{route=\"rest\",status=\"4xx\"} 1",
            "tidepool_http_responses_total{route=\"operations\",status=\"5xx\"} 1",
            "tidepool_http_request_duration_seconds_bucket{route=\"rest\",le=\"0.0005\"} 1",
            "tidepool_http_request_duration_seconds_bucket{route=\"rest\",le=\"0.005\"} 2",
            "tidepool_http_request_duration_seconds_bucket{route=\"operations\",le=\"10\"} 0",
            "tidepool_http_request_duration_seconds_bucket{route=\"operations\",le=\"+Inf\"} 1",
            "tidepool_http_request_duration_seconds_count{route=\"rest\"} 2",
            "process_start_time_seconds 1",
        ] {
            assert!(text.contains(line), "{line} not in:\n{text}");
        }
        assert!(text.contains("process_resident_memory_bytes "));
    }
}
