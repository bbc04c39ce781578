//! Each core's counts of its HTTP answers for the current second (docs/operations-api.md
//! "Analytics"), only ever touched by that core, and the report they become.

use std::collections::HashMap;
use std::time::Instant;

use crate::value::{Object, Value};

use super::fold;

/// Distinct paths (tables, operations) one core keeps per second; more are counted as dropped.
const PATHS_PER_CORE_MAX: usize = 256;
/// Values kept per metric per core per second for the distribution; past it, a uniform sample.
const VALUES_PER_ACTION_MAX: usize = 1024;

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
    /// At most [`PATHS_PER_CORE_MAX`] keys, so a fast hash is safe here.
    paths: HashMap<String, Vec<Entry>, foldhash::fast::RandomState>,
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
        self.since.get_or_insert_with(Instant::now);
        self.seed = self
            .seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        // One lookup when the path is known (every answer but the second's first for a path).
        if let Some(entries) = self.paths.get_mut(a.path) {
            count(entries, a, self.seed);
            return;
        }
        if self.paths.len() >= PATHS_PER_CORE_MAX {
            self.dropped += 1;
            return;
        }
        count(
            self.paths.entry(a.path.to_string()).or_default(),
            a,
            self.seed,
        );
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
            time_ms: crate::resource::now_ms(),
            period_ms: since.elapsed().as_secs_f64() * 1000.0,
            thread_id,
            metrics,
        })
    }
}

/// Adds one answer to a path's entries.
fn count(entries: &mut Vec<Entry>, a: &Answer<'_>, seed: u64) {
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
