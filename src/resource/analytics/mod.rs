//! Analytics as HarperDB 4.x keeps them (docs/operations-api.md "Analytics", docs/metrics.md):
//! each core counts its HTTP answers in its own [`Recorder`] (no lock, no atomics: only that core
//! touches it) and hands a [`Report`] to the analytics thread once a second while it has traffic;
//! that thread stores each as a row of `system.hdb_raw_analytics` and, every
//! `analytics.aggregatePeriod` seconds, folds the raw rows into `system.hdb_analytics` rows with
//! HarperDB's fields, adds the process's resource usage and the tables' sizes, and removes raw rows
//! older than an hour and aggregates older than a year (HarperDB's retention).

mod fold;
mod read;
mod record;
mod usage;

use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::value::{Object, Value};

use super::{Resources, WriteOp, WriteRequest};

pub use fold::number;
pub use read::{describe_metric, list_metrics};
pub use record::{Answer, Recorder, Report};
use usage::{sizes, Usage};

/// The table of per-core, per-second reports.
pub const RAW_TABLE: &str = "hdb_raw_analytics";
/// The table of folded rows `get_analytics` reads.
pub const TABLE: &str = "hdb_analytics";
const SYSTEM: &str = "system";
/// HarperDB's retention of raw rows: one hour.
pub const RAW_RETENTION_MS: f64 = 3_600_000.0;
/// HarperDB's retention of aggregate rows: one year.
pub const RETENTION_MS: f64 = 31_536_000_000.0;
/// HarperDB's built-in metric names, `list_metrics`' default answer.
pub const BUILTIN_METRICS: [&str; 6] = [
    "table-size",
    "database-size",
    "storage-volume",
    "main-thread-utilization",
    "resource-usage",
    "utilization",
];
/// Reports waiting for the analytics thread; a core whose report finds it full drops it.
pub const REPORTS_QUEUED_MAX: usize = 256;
/// Raw rows one window of a fold reads, windows one fold takes, and rows one clean-up pass
/// removes, at most.
const FOLD_ROWS_MAX: usize = 10_000;
const FOLD_WINDOWS_MAX: usize = 16;
const CLEANUP_ROWS_MAX: usize = 10_000;
/// The newest aggregate rows read at start to find where the last fold ended.
const RESUME_SCAN_MAX: usize = 1_000;

/// The channel cores send their reports on, bounded by [`REPORTS_QUEUED_MAX`].
pub fn channel() -> (SyncSender<Report>, Receiver<Report>) {
    std::sync::mpsc::sync_channel(REPORTS_QUEUED_MAX)
}

/// Hands a report over without waiting; `false` when the queue is full (the report is dropped).
pub fn send(sender: &SyncSender<Report>, report: Report) -> bool {
    !matches!(sender.try_send(report), Err(TrySendError::Full(_)))
}

/// The analytics thread: stores reports as they come, folds every `period`, until `stop` says
/// so or every sender is gone. Runs on its own plain thread (it writes and waits for commits).
pub fn run(
    resources: Arc<Resources>,
    reports: Receiver<Report>,
    period: Duration,
    stop: &dyn Fn() -> bool,
) {
    let mut state = State::new(resources, period);
    while !stop() {
        let mut batch = Vec::new();
        match reports.recv_timeout(Duration::from_millis(250)) {
            Ok(report) => {
                batch.push(report);
                while batch.len() < 64 {
                    match reports.try_recv() {
                        Ok(report) => batch.push(report),
                        Err(_) => break,
                    }
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        if !batch.is_empty() {
            state.store_raw(batch);
        }
        if state.last_fold.elapsed() >= period {
            state.last_fold = Instant::now();
            state.fold();
            state.cleanup();
        }
    }
}

struct State {
    resources: Arc<Resources>,
    period: Duration,
    last_fold: Instant,
    /// The id of the last raw row folded (HarperDB's `time` of the newest aggregate).
    folded_to: f64,
    last_id: f64,
    total_bytes: f64,
    last_usage: Option<(Instant, Usage)>,
}

impl State {
    fn new(resources: Arc<Resources>, period: Duration) -> State {
        let folded_to = resume_point(&resources).unwrap_or(0.0);
        State {
            resources,
            period,
            last_fold: Instant::now(),
            folded_to,
            last_id: 0.0,
            total_bytes: 0.0,
            last_usage: Some((Instant::now(), Usage::now())),
        }
    }

    /// HarperDB's monotonic time: milliseconds, unique, increasing.
    fn next_id(&mut self) -> f64 {
        let now = super::now_ms();
        self.last_id = if now > self.last_id {
            now
        } else {
            self.last_id + 0.001
        };
        self.last_id
    }

    fn write(&self, ops: Vec<WriteOp>) {
        let Some((db, _)) = self.resources.table(SYSTEM, TABLE) else {
            return;
        };
        let request = WriteRequest { ops, user: None };
        if let Err(e) = super::jobs::block_on(super::write(&db, request)) {
            tracing::warn!("analytics: cannot store rows: {e}");
        }
    }

    /// One `hdb_raw_analytics` row per report, in one transaction.
    fn store_raw(&mut self, reports: Vec<Report>) {
        let mut ops = Vec::with_capacity(reports.len());
        for report in reports {
            for m in &report.metrics {
                if let Value::Object(o) = m {
                    if o.get("metric") == Some(&Value::from("bytes-sent")) {
                        let mean = o.get("mean").and_then(number).unwrap_or(0.0);
                        let count = o.get("count").and_then(number).unwrap_or(0.0);
                        self.total_bytes += mean * count;
                    }
                }
            }
            let mut row = Object::new();
            row.insert("id", Value::Float(self.next_id()));
            row.insert("time", Value::Float(report.time_ms.floor()));
            row.insert("period", Value::Float(report.period_ms));
            row.insert("threadId", Value::Int(report.thread_id as i64));
            row.insert("metrics", Value::Array(report.metrics));
            row.insert("totalBytesProcessed", Value::Float(self.total_bytes));
            ops.push(put(RAW_TABLE, row));
        }
        self.write(ops);
    }

    /// Folds the raw rows of one period after the last fold into aggregate rows, with the
    /// process's resource usage and the databases' sizes.
    fn fold(&mut self) {
        let period_ms = self.period.as_secs_f64() * 1000.0;
        let mut rows = Vec::new();
        // One window of a period per pass; a backlog (a slow fold, many rows) is caught up
        // over a few windows at once.
        for _ in 0..FOLD_WINDOWS_MAX {
            let (raw, more) = match read_raw(&self.resources, self.folded_to, period_ms) {
                Ok(read) => read,
                Err(e) => {
                    tracing::warn!("analytics: cannot read {RAW_TABLE}: {e}");
                    return;
                }
            };
            let Some((last, _)) = raw.last() else { break };
            let last = *last;
            for mut row in fold::fold(raw.iter().map(|(_, m)| m), period_ms) {
                row.insert("time", Value::Float(last));
                rows.push(row);
            }
            self.folded_to = last;
            if !more {
                break;
            }
        }
        rows.push(self.resource_usage(period_ms));
        rows.extend(sizes(&self.resources));
        let node = Value::String(self.resources.config.node_name.clone());
        let ops = rows
            .into_iter()
            .map(|mut row| {
                row.insert("id", Value::Float(self.next_id()));
                row.insert("node", node.clone());
                put(TABLE, row)
            })
            .collect();
        self.write(ops);
    }

    /// HarperDB's `resource-usage`: CPU times in ms, faults, I/O and context switches since the
    /// last fold.
    fn resource_usage(&mut self, period_ms: f64) -> Object {
        let now = Usage::now();
        let (period, before) = match self.last_usage.take() {
            Some((at, before)) => (at.elapsed().as_secs_f64() * 1000.0, before),
            None => (period_ms, Usage::default()),
        };
        self.last_usage = Some((Instant::now(), now));
        let d = |f: fn(&Usage) -> f64| f(&now) - f(&before);
        let user = d(|u| u.user_ms);
        let system = d(|u| u.system_ms);
        let mut o = Object::new();
        o.insert("metric", Value::from("resource-usage"));
        o.insert("userCPUTime", Value::Float(user));
        o.insert("systemCPUTime", Value::Float(system));
        for (name, f) in [
            (
                "minorPageFault",
                (|u: &Usage| u.minor_faults) as fn(&Usage) -> f64,
            ),
            ("majorPageFault", |u| u.major_faults),
            ("fsRead", |u| u.fs_read),
            ("fsWrite", |u| u.fs_write),
            ("voluntaryContextSwitches", |u| u.voluntary),
            ("involuntaryContextSwitches", |u| u.involuntary),
        ] {
            o.insert(name, Value::Int(d(f) as i64));
        }
        o.insert("time", Value::Float(super::now_ms().floor()));
        o.insert("period", Value::Float(period.round()));
        let utilization = ((user + system) / period.max(1.0) * 100.0).round() / 100.0;
        o.insert("cpuUtilization", Value::Float(utilization));
        o
    }

    /// Removes raw rows older than an hour and aggregates older than a year.
    fn cleanup(&self) {
        let now = super::now_ms();
        for (table, retention) in [(RAW_TABLE, RAW_RETENTION_MS), (TABLE, RETENTION_MS)] {
            match expired(&self.resources, table, now - retention) {
                Ok(keys) if keys.is_empty() => {}
                Ok(keys) => self.write(
                    keys.into_iter()
                        .map(|key| WriteOp::Delete {
                            table: table.to_string(),
                            key,
                        })
                        .collect(),
                ),
                Err(e) => tracing::warn!("analytics: cannot clean {table}: {e}"),
            }
        }
    }
}

fn put(table: &str, record: Object) -> WriteOp {
    WriteOp::Put {
        table: table.to_string(),
        key: None,
        record: Value::Object(record),
        mode: super::PutMode::Replace,
        expires_in_s: None,
    }
}

fn encoded_key(id: f64) -> Vec<u8> {
    let mut out = Vec::new();
    // A float always encodes as a key.
    let _ = crate::value::key::encode(&Value::Float(id), &mut out);
    out
}

/// Raw rows after `after` within one period of the first: (id, metrics), in id order; and
/// whether more rows follow.
fn read_raw(
    resources: &Resources,
    after: f64,
    period_ms: f64,
) -> Result<(Vec<(f64, Value)>, bool), super::StoreError> {
    let Some((db, t)) = resources.table(SYSTEM, RAW_TABLE) else {
        return Ok((Vec::new(), false));
    };
    let txn = db.read()?;
    let start = encoded_key(after);
    let mut out = Vec::new();
    for item in txn.scan_after(&t, Some(&start))? {
        let (_, record) = item?;
        let Ok(Value::Object(row)) = crate::value::deserialize(record.value) else {
            continue;
        };
        let Some(id) = row.get("id").and_then(number) else {
            continue;
        };
        if out.first().is_some_and(|(first, _)| id > first + period_ms)
            || out.len() >= FOLD_ROWS_MAX
        {
            return Ok((out, true));
        }
        let metrics = row.get("metrics").cloned().unwrap_or(Value::Null);
        out.push((id, metrics));
    }
    Ok((out, false))
}

/// Keys of `table` below `before`, oldest first, at most [`CLEANUP_ROWS_MAX`].
fn expired(
    resources: &Resources,
    table: &str,
    before: f64,
) -> Result<Vec<Value>, super::StoreError> {
    let Some((db, t)) = resources.table(SYSTEM, table) else {
        return Ok(Vec::new());
    };
    let txn = db.read()?;
    let mut keys = Vec::new();
    for item in txn.scan(&t, false)? {
        let (key, _) = item?;
        let Ok(key) = crate::value::key::decode(key) else {
            continue;
        };
        if number(&key).is_none_or(|id| id >= before) || keys.len() >= CLEANUP_ROWS_MAX {
            break;
        }
        keys.push(key);
    }
    Ok(keys)
}

/// Where the last fold ended: the `time` of the newest aggregate that has one.
fn resume_point(resources: &Resources) -> Option<f64> {
    let (db, t) = resources.table(SYSTEM, TABLE)?;
    let txn = db.read().ok()?;
    for item in txn.scan(&t, true).ok()?.take(RESUME_SCAN_MAX) {
        let (_, record) = item.ok()?;
        if let Ok(Value::Object(row)) = crate::value::deserialize(record.value) {
            if let Some(time) = row.get("time").and_then(number) {
                return Some(time);
            }
        }
    }
    None
}
