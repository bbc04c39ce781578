//! `list_metrics` and `describe_metric` (docs/operations-api.md "Analytics"): what the stored
//! folded rows hold, read newest first within a bound.

use crate::value::Value;

use super::{Resources, BUILTIN_METRICS, SYSTEM, TABLE};

/// Rows scanned (newest first) for `list_metrics`' custom names and `describe_metric`.
const LIST_SCAN_MAX: usize = 200_000;

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
