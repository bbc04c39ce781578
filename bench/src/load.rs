//! The HTTP load run: keep-alive connections spread over pinned tidepool-io cores, each sending the
//! same pre-built request (its path's `{n}` numbered per request) back to back (or `pipeline` at a
//! time) until the run's deadline.
//!
//! It owns the connection loop and the timing window; framing comes from [`crate::http1`] and the
//! counters from [`crate::report`]. The loop allocates nothing per request: each connection keeps
//! one read buffer, one write buffer and a ring of send times, sized at connect time. It never
//! retries a request: a failed connection is counted, re-opened, and starts a fresh pipeline.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::rc::Rc;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use tidepool_io::{sleep, spawn, start_cores, timeout, CoreContext, RuntimeConfig, Stream};

use crate::cli::{Target, Workload};
use crate::http1::ResponseParser;
use crate::report::{CoreStats, Report, RunInfo};

/// A connection attempt that takes longer than this counts as a connect error.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Pause after a failed connect, so a refused port does not become a busy loop.
const RECONNECT_PAUSE: Duration = Duration::from_millis(20);
/// Initial read buffer per connection; it grows only while one response head is larger.
const READ_BUFFER_BYTES: usize = 16 * 1024;
/// Free space asked of the read buffer before each read.
const READ_SPARE_BYTES: usize = 4 * 1024;
/// Time for the load threads to start before the clock begins, so all start together.
const START_DELAY: Duration = Duration::from_millis(50);
/// How long after the deadline the threads have to hand in their counters.
const COLLECT_GRACE: Duration = Duration::from_secs(10);

/// Everything a load thread needs, shared read-only by all of them.
struct Plan {
    addr: SocketAddr,
    request: crate::request::Requests,
    head_request: bool,
    pipeline: usize,
    /// Where `{n}` starts.
    first_number: u64,
    /// Connections per core, by core index.
    connections: Vec<usize>,
    start: Instant,
    measure_from: Instant,
    end: Instant,
}

/// Runs `workload` against `target` and returns what it measured.
pub fn run(target: &Target, workload: &Workload) -> Result<Report> {
    let threads = workload.cpus.len();
    let template = |method: &str, path: &str, body: &[u8]| {
        crate::request::Template::new(
            method,
            path,
            &target.host,
            &workload.headers,
            workload.auth.as_deref(),
            body,
        )
    };
    let request = crate::request::Requests::new(
        template(&workload.method, &workload.path, &workload.body),
        workload
            .mix
            .as_ref()
            .map(|m| (template(&m.method, &m.path, &m.body), m.percent)),
    );
    let connections = (0..threads)
        .map(|core| {
            workload.connections / threads + usize::from(core < workload.connections % threads)
        })
        .collect();
    let start = Instant::now() + START_DELAY;
    let measure_from = start + workload.warmup;
    let end = measure_from + workload.duration;
    let plan = Arc::new(Plan {
        addr: target.addr,
        request,
        head_request: workload.method == "HEAD",
        pipeline: workload.pipeline,
        first_number: workload.first_number,
        connections,
        start,
        measure_from,
        end,
    });

    let (stats_tx, stats_rx) = mpsc::channel::<CoreStats>();
    let mut config = RuntimeConfig::new(workload.cpus.clone(), workload.driver);
    config.thread_name = "load".into();
    let (driver, handles) = start_cores(&config, move |ctx| {
        core_main(ctx, plan.clone(), stats_tx.clone())
    })
    .context("starting load threads")?;

    let mut total = CoreStats::new();
    for _ in 0..threads {
        let wait = end.saturating_duration_since(Instant::now()) + COLLECT_GRACE;
        let stats = stats_rx.recv_timeout(wait).map_err(|_| {
            anyhow!("a load thread did not report within {COLLECT_GRACE:?} of the end")
        })?;
        total.merge(&stats);
    }
    for handle in handles {
        if handle.join().is_err() {
            return Err(anyhow!("a load thread panicked"));
        }
    }
    Ok(Report::new(
        RunInfo {
            target: &target.host,
            method: &workload.method,
            path: &workload.path,
            connections: workload.connections,
            cpus: &workload.cpus,
            pipeline: workload.pipeline,
            io_driver: driver.to_string(),
            warmup_s: workload.warmup.as_secs_f64(),
            duration_s: workload.duration.as_secs_f64(),
        },
        &total,
    ))
}

/// One load thread: opens its share of connections at the start time, then hands in its counters
/// at the deadline. Returning ends the core's runtime, which drops the connection tasks mid-flight;
/// that is intended, as nothing after the deadline counts.
async fn core_main(ctx: CoreContext, plan: Arc<Plan>, stats_tx: mpsc::Sender<CoreStats>) {
    let stats = Rc::new(RefCell::new(CoreStats::new()));
    sleep(plan.start.saturating_duration_since(Instant::now())).await;
    let count = plan.connections.get(ctx.core.0).copied().unwrap_or(0);
    // Connections are numbered across all cores, so `{n}` never repeats in a run.
    let first: usize = plan.connections.iter().take(ctx.core.0).sum();
    for index in first..first + count {
        spawn(connection(plan.clone(), stats.clone(), index as u64));
    }
    sleep(plan.end.saturating_duration_since(Instant::now())).await;
    let stats = std::mem::take(&mut *stats.borrow_mut());
    let _ = stats_tx.send(stats);
}

/// Why a connection ended early.
enum Closed {
    /// The run is over.
    Deadline,
    /// The connection failed or the server closed it; open another.
    Reconnect,
}

/// One client connection for the whole run, re-opened whenever the server closes it.
async fn connection(plan: Arc<Plan>, stats: Rc<RefCell<CoreStats>>, index: u64) {
    let total: usize = plan.connections.iter().sum();
    let mut session = Session {
        read_buf: Vec::with_capacity(READ_BUFFER_BYTES),
        write_buf: Vec::with_capacity(plan.request.len_max() * plan.pipeline),
        next_number: plan.first_number + index,
        number_step: total.max(1) as u64,
        sent_at: VecDeque::with_capacity(plan.pipeline),
        parser: ResponseParser::new(plan.head_request),
    };
    loop {
        if Instant::now() >= plan.end {
            return;
        }
        let stream = match timeout(CONNECT_TIMEOUT, Stream::connect(plan.addr)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(_)) | Err(_) => {
                stats.borrow_mut().errors.connect += 1;
                sleep(RECONNECT_PAUSE).await;
                continue;
            }
        };
        // Requests are small and sent whole; Nagle would only add delay.
        let _ = stream.set_nodelay(true);
        match session.drive(stream, &plan, &stats).await {
            Closed::Deadline => return,
            Closed::Reconnect => continue,
        }
    }
}

/// A connection's buffers, kept across reconnects.
struct Session {
    read_buf: Vec<u8>,
    write_buf: Vec<u8>,
    /// Send time of each request in flight, oldest first; responses arrive in the same order.
    sent_at: VecDeque<Instant>,
    parser: ResponseParser,
    /// The next `{n}`: this connection's index, then steps of the connection count, so numbers
    /// are distinct across connections (and across reconnects).
    next_number: u64,
    number_step: u64,
}

impl Session {
    /// Sends and receives on one open connection until the deadline or until it ends.
    async fn drive(
        &mut self,
        mut stream: Stream,
        plan: &Plan,
        stats: &RefCell<CoreStats>,
    ) -> Closed {
        self.read_buf.clear();
        self.sent_at.clear();
        self.parser.reset();
        if let Err(closed) = self.send(&mut stream, plan.pipeline, plan, stats).await {
            return closed;
        }
        loop {
            let buf = std::mem::take(&mut self.read_buf);
            let (result, buf) = stream.read_append(buf, READ_SPARE_BYTES).await;
            self.read_buf = buf;
            let now = Instant::now();
            if now >= plan.end {
                return Closed::Deadline;
            }
            let measuring = now >= plan.measure_from;
            let read = match result {
                Ok(0) => {
                    // The server closed: a body delimited by the close is complete now; any other
                    // request still in flight went unanswered.
                    let mut stats = stats.borrow_mut();
                    match self.parser.finish() {
                        Some(response) => {
                            if let Some(sent) = self.sent_at.pop_front() {
                                if measuring {
                                    stats.record(response.status, latency_us(sent, now));
                                }
                            }
                            stats.reconnects += 1;
                        }
                        _ => stats.errors.closed += 1,
                    }
                    return Closed::Reconnect;
                }
                Ok(read) => read,
                Err(_) => {
                    stats.borrow_mut().errors.reset += 1;
                    return Closed::Reconnect;
                }
            };

            let mut answered = 0;
            let mut close = false;
            let mut unexpected = false;
            let parsed = {
                let mut stats = stats.borrow_mut();
                if measuring {
                    stats.bytes_read += read as u64;
                }
                let sent_at = &mut self.sent_at;
                self.parser.parse_all(&self.read_buf, |response| {
                    let Some(sent) = sent_at.pop_front() else {
                        unexpected = true;
                        return ControlFlow::Break(());
                    };
                    if measuring {
                        stats.record(response.status, latency_us(sent, now));
                    }
                    answered += 1;
                    if response.close {
                        close = true;
                        return ControlFlow::Break(());
                    }
                    ControlFlow::Continue(())
                })
            };
            let used = match parsed {
                Ok(_) if unexpected => {
                    stats.borrow_mut().errors.parse += 1;
                    return Closed::Reconnect;
                }
                Ok(used) => used,
                Err(_) => {
                    stats.borrow_mut().errors.parse += 1;
                    return Closed::Reconnect;
                }
            };
            if close {
                stats.borrow_mut().reconnects += 1;
                return Closed::Reconnect;
            }
            // Keep the unparsed tail at the front; no allocation, a short move at most.
            self.read_buf.drain(..used);
            if answered > 0 {
                if let Err(closed) = self.send(&mut stream, answered, plan, stats).await {
                    return closed;
                }
            }
        }
    }

    /// Sends `count` copies of the request in one write.
    async fn send(
        &mut self,
        stream: &mut Stream,
        count: usize,
        plan: &Plan,
        stats: &RefCell<CoreStats>,
    ) -> Result<(), Closed> {
        self.write_buf.clear();
        for _ in 0..count {
            plan.request.write(self.next_number, &mut self.write_buf);
            self.next_number = self.next_number.wrapping_add(self.number_step);
        }
        let now = Instant::now();
        if now >= plan.end {
            return Err(Closed::Deadline);
        }
        for _ in 0..count {
            self.sent_at.push_back(now);
        }
        let buf = std::mem::take(&mut self.write_buf);
        let len = buf.len();
        let (result, buf) = stream.write_all(buf).await;
        self.write_buf = buf;
        match result {
            Ok(()) => {
                if now >= plan.measure_from {
                    stats.borrow_mut().bytes_written += len as u64;
                }
                Ok(())
            }
            Err(_) => {
                stats.borrow_mut().errors.reset += 1;
                Err(Closed::Reconnect)
            }
        }
    }
}

fn latency_us(sent: Instant, now: Instant) -> u64 {
    let nanos = now.saturating_duration_since(sent).as_nanos();
    u64::try_from(nanos.div_ceil(1000)).unwrap_or(u64::MAX)
}
