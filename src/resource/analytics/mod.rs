//! Analytics as HarperDB 4.x keeps them (docs/operations-api.md "Analytics", docs/metrics.md):
//! each core counts its HTTP answers in its own [`Recorder`] (no lock, no atomics: only that core
//! touches it) and hands a [`Report`] to the analytics thread once a second while it has traffic;
//! that thread stores each as a row of `system.hdb_raw_analytics` and, every
//! `analytics.aggregatePeriod` seconds, folds the raw rows into `system.hdb_analytics` rows with
//! HarperDB's fields, adds the process's resource usage and the tables' sizes, and removes raw rows
//! older than an hour and aggregates older than a year (HarperDB's retention).

mod fold;

use std::collections::HashMap;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::value::{Object, Value};

use super::{Resources, WriteOp, WriteRequest};

pub use fold::number;

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
/// Distinct paths (tables, operations) one core keeps per second; more are counted as dropped.
const PATHS_PER_CORE_MAX: usize = 256;
/// Values kept per metric per core per second for the distribution; past it, a uniform sample.
const VALUES_PER_ACTION_MAX: usize = 1024;
/// Reports waiting for the analytics thread; a core whose report finds it full drops it.
pub const REPORTS_QUEUED_MAX: usize = 256;
/// Raw rows one window of a fold reads, windows one fold takes, and rows one clean-up pass
/// removes, at most.
const FOLD_ROWS_MAX: usize = 10_000;
const FOLD_WINDOWS_MAX: usize = 16;
const CLEANUP_ROWS_MAX: usize = 10_000;
/// The newest aggregate rows read at start to find where the last fold ended.
const RESUME_SCAN_MAX: usize = 1_000;
/// Rows scanned (newest first) for `list_metrics`' custom names.
const LIST_SCAN_MAX: usize = 200_000;

/// What one core measured in one second.
#[derive(Debug)]
pub struct Report {
    pub time_ms: f64,
    pub period_ms: f64,
    pub thread_id: usize,
    pub metrics: Vec<Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Metric {
    Duration,
    Success,
    Response(u16),
    BytesSent,
}

impl Metric {
    fn name(self) -> String {
        match self {
            Metric::Duration => "duration".into(),
            Metric::Success => "success".into(),
            Metric::Response(status) => format!("response_{status}"),
            Metric::BytesSent => "bytes-sent".into(),
        }
    }
}

enum Action {
    /// Measured values (a distribution is reported).
    Values {
        values: Vec<f32>,
        total: f64,
        count: u64,
    },
    /// Yes/no outcomes: `total` yeses of `count`.
    Flags { total: u64, count: u64 },
}

struct Entry {
    metric: Metric,
    method: Option<&'static str>,
    ty: Option<&'static str>,
    action: Action,
}

/// One core's counts for the current second.
#[derive(Default)]
pub struct Recorder {
    paths: HashMap<String, Vec<Entry>>,
    since: Option<Instant>,
    /// Answers not counted because the path table was full.
    pub dropped: u64,
    seed: u64,
}

/// One HTTP answer as HarperDB records it: `path` is the table (REST) or the operation's name,
/// `method` the HTTP method (REST), `ty` `"operation"` on the Operations API.
pub struct Answer<'a> {
    pub path: &'a str,
    pub method: Option<&'static str>,
    pub ty: Option<&'static str>,
    pub status: u16,
    pub took_ms: f64,
    /// Counted as `bytes-sent` (HarperDB records it for operations).
    pub bytes_sent: Option<usize>,
}

impl Recorder {
    /// Counts one answer: `duration`, `success`, `response_<status>` and `bytes-sent`.
    pub fn record(&mut self, a: &Answer<'_>) {
        if !self.paths.contains_key(a.path) {
            if self.paths.len() >= PATHS_PER_CORE_MAX {
                self.dropped += 1;
                return;
            }
            self.paths.insert(a.path.to_string(), Vec::new());
        }
        self.since.get_or_insert_with(Instant::now);
        self.seed = self
            .seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let seed = self.seed;
        let Some(entries) = self.paths.get_mut(a.path) else {
            return;
        };
        let mut add = |metric: Metric, value: Result<f64, bool>| {
            let found = entries
                .iter_mut()
                .position(|e| e.metric == metric && e.method == a.method && e.ty == a.ty);
            let index = found.unwrap_or_else(|| {
                entries.push(Entry {
                    metric,
                    method: a.method,
                    ty: a.ty,
                    action: match value {
                        Ok(_) => Action::Values {
                            values: Vec::new(),
                            total: 0.0,
                            count: 0,
                        },
                        Err(_) => Action::Flags { total: 0, count: 0 },
                    },
                });
                entries.len() - 1
            });
            match (&mut entries[index].action, value) {
                (
                    Action::Values {
                        values,
                        total,
                        count,
                    },
                    Ok(v),
                ) => {
                    *total += v;
                    *count += 1;
                    if values.len() < VALUES_PER_ACTION_MAX {
                        values.push(v as f32);
                    } else {
                        // Reservoir sampling keeps a uniform sample of the second's values.
                        let slot = (seed >> 33) % *count;
                        if let Some(kept) = values.get_mut(slot as usize) {
                            *kept = v as f32;
                        }
                    }
                }
                (Action::Flags { total, count }, Err(yes)) => {
                    *total += u64::from(yes);
                    *count += 1;
                }
                _ => {}
            }
        };
        add(Metric::Duration, Ok(a.took_ms));
        add(Metric::Success, Err(a.status < 400));
        add(Metric::Response(a.status), Err(true));
        if let Some(bytes) = a.bytes_sent {
            add(Metric::BytesSent, Ok(bytes as f64));
        }
    }

    /// The second's report (none without traffic); the counts start again.
    pub fn take(&mut self, thread_id: usize) -> Option<Report> {
        let since = self.since.take()?;
        let mut metrics = Vec::new();
        for (path, entries) in self.paths.drain() {
            for entry in entries {
                metrics.push(Value::Object(entry_row(&path, entry)));
            }
        }
        Some(Report {
            time_ms: super::now_ms(),
            period_ms: since.elapsed().as_secs_f64() * 1000.0,
            thread_id,
            metrics,
        })
    }
}

/// A raw metric entry with HarperDB's fields.
fn entry_row(path: &str, entry: Entry) -> Object {
    let mut o = Object::new();
    o.insert("metric", Value::String(entry.metric.name()));
    o.insert("path", Value::from(path));
    if let Some(method) = entry.method {
        o.insert("method", Value::from(method));
    }
    if let Some(ty) = entry.ty {
        o.insert("type", Value::from(ty));
    }
    match entry.action {
        Action::Values {
            mut values,
            total,
            count,
        } => {
            o.insert("mean", Value::Float(total / count.max(1) as f64));
            o.insert(
                "distribution",
                Value::Array(fold::distribution(&mut values, count)),
            );
            o.insert("count", Value::Int(count as i64));
        }
        Action::Flags { total, count } => {
            o.insert("total", Value::Int(total as i64));
            o.insert("count", Value::Int(count as i64));
        }
    }
    o
}

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

/// HarperDB's `table-size` per table and `database-size` per database.
fn sizes(resources: &Resources) -> Vec<Object> {
    let mut rows = Vec::new();
    for name in resources.store.database_names() {
        let Some(db) = resources.store.database(&name) else {
            continue;
        };
        let Ok(txn) = db.read() else { continue };
        let mut used = 0u64;
        for table_name in db.table_names() {
            let Some(table) = db.table(&table_name) else {
                continue;
            };
            let size = txn.table_size(&table).unwrap_or(0);
            used += size;
            let mut o = Object::new();
            o.insert("metric", Value::from("table-size"));
            o.insert("database", Value::String(name.clone()));
            o.insert("table", Value::String(table_name));
            o.insert("size", Value::Int(size as i64));
            rows.push(o);
        }
        let total = db.file_size();
        let mut o = Object::new();
        o.insert("metric", Value::from("database-size"));
        o.insert("database", Value::String(name.clone()));
        o.insert("size", Value::Int(total as i64));
        o.insert("used", Value::Int(used as i64));
        o.insert("free", Value::Int(total.saturating_sub(used) as i64));
        o.insert("audit", Value::Int(txn.audit_size().unwrap_or(0) as i64));
        rows.push(o);
    }
    rows
}

/// The process's resource usage (`getrusage`), times in milliseconds.
#[derive(Default, Clone, Copy)]
struct Usage {
    user_ms: f64,
    system_ms: f64,
    minor_faults: f64,
    major_faults: f64,
    fs_read: f64,
    fs_write: f64,
    voluntary: f64,
    involuntary: f64,
}

impl Usage {
    fn now() -> Usage {
        // SAFETY: getrusage fills the zeroed struct it is given and reads nothing else.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
            return Usage::default();
        }
        let ms = |t: libc::timeval| t.tv_sec as f64 * 1000.0 + t.tv_usec as f64 / 1000.0;
        Usage {
            user_ms: ms(ru.ru_utime),
            system_ms: ms(ru.ru_stime),
            minor_faults: ru.ru_minflt as f64,
            major_faults: ru.ru_majflt as f64,
            fs_read: ru.ru_inblock as f64,
            fs_write: ru.ru_oublock as f64,
            voluntary: ru.ru_nvcsw as f64,
            involuntary: ru.ru_nivcsw as f64,
        }
    }
}

/// `list_metrics`: the built-in names (`builtin`), and names stored that are not built in
/// (`custom`), from the newest [`LIST_SCAN_MAX`] aggregate rows.
pub fn list_metrics(resources: &Resources, builtin: bool, custom: bool) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    if builtin {
        out.extend(BUILTIN_METRICS.iter().map(|s| s.to_string()));
    }
    if !custom {
        return out;
    }
    let Some((db, t)) = resources.table(SYSTEM, TABLE) else {
        return out;
    };
    let Ok(txn) = db.read() else { return out };
    let Ok(scan) = txn.scan(&t, true) else {
        return out;
    };
    let mut seen: Vec<String> = Vec::new();
    for item in scan.take(LIST_SCAN_MAX) {
        let Ok((_, record)) = item else { break };
        let Ok(Value::Object(row)) = crate::value::deserialize(record.value) else {
            continue;
        };
        if let Some(Value::String(metric)) = row.get("metric") {
            if !BUILTIN_METRICS.contains(&metric.as_str()) && !seen.contains(metric) {
                seen.push(metric.clone());
            }
        }
    }
    // Oldest first, as HarperDB lists them.
    seen.reverse();
    out.extend(seen);
    out
}

/// `describe_metric`: the attributes of the newest row of `metric` with their JavaScript
/// `typeof` (`node` first), or nothing when no row has it.
pub fn describe_metric(resources: &Resources, metric: &str) -> Option<Vec<(String, &'static str)>> {
    let (db, t) = resources.table(SYSTEM, TABLE)?;
    let txn = db.read().ok()?;
    for item in txn.scan(&t, true).ok()?.take(LIST_SCAN_MAX) {
        let (_, record) = item.ok()?;
        let Ok(Value::Object(row)) = crate::value::deserialize(record.value) else {
            continue;
        };
        if row.get("metric") != Some(&Value::from(metric)) {
            continue;
        }
        let mut out = vec![("node".to_string(), "string")];
        for (name, value) in row.iter().filter(|(name, _)| *name != "node") {
            let ty = match value {
                Value::Int(_) | Value::Float(_) => "number",
                Value::String(_) => "string",
                Value::Bool(_) => "boolean",
                Value::BigInt(_) => "bigint",
                _ => "object",
            };
            out.push((name.to_string(), ty));
        }
        return Some(out);
    }
    None
}
