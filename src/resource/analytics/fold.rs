//! The arithmetic of HarperDB 4.x's analytics (its `resources/analytics/write.ts`): a second's
//! values summarised as a distribution, and raw per-core rows folded into one aggregate row per
//! metric, path, method and type, with a count-weighted mean and interpolated percentiles.

use std::collections::HashMap;

use crate::value::{Object, Value};

/// The percentiles HarperDB places a second's distribution on and reports after a fold.
const PERCENTILES: [f64; 10] = [0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999, 1.0];

/// The names of the reported percentiles (the last one, the maximum, is not reported).
const PERCENTILE_NAMES: [&str; 9] = [
    "p1", "p10", "p25", "median", "p75", "p90", "p95", "p99", "p999",
];

/// Fields of a metric entry that name it rather than measure it.
const NAMING: [&str; 4] = ["metric", "path", "method", "type"];

/// A second's values (sorted here) as HarperDB's compressed distribution: one entry per
/// percentile position, a plain number for one value, `{value, count}` for several. `count` is
/// how many values there were: `values` may be a uniform sample of them, and the entries' counts
/// add up to `count` (with every value kept, this is HarperDB's computation exactly).
pub fn distribution(values: &mut [f32], count: u64) -> Vec<Value> {
    values.sort_by(f32::total_cmp);
    let kept = values.len();
    let count = usize::try_from(count).unwrap_or(usize::MAX).max(kept);
    let mut out: Vec<Value> = Vec::new();
    if kept == 0 {
        return out;
    }
    let mut last_upper = 0usize;
    let mut last_value: Option<f32> = None;
    for p in PERCENTILES {
        let upper = (count as f64 * p).floor() as usize;
        if upper <= last_upper || upper == 0 {
            continue;
        }
        // The sample's value at the same rank.
        let at = ((upper as f64 / count as f64) * kept as f64).ceil() as usize;
        let value = values[at.clamp(1, kept) - 1];
        let n = upper - last_upper;
        if last_value == Some(value) {
            if let Some(entry) = out.last_mut() {
                let merged = match &*entry {
                    Value::Object(o) => bin(
                        o.get("value").and_then(number).unwrap_or(f64::from(value)),
                        o.get("count").and_then(number).unwrap_or(1.0) as usize + n,
                    ),
                    other => bin(number(other).unwrap_or(f64::from(value)), 1 + n),
                };
                *entry = merged;
            }
        } else {
            out.push(if n > 1 {
                bin(f64::from(value), n)
            } else {
                Value::Float(f64::from(value))
            });
            last_value = Some(value);
        }
        last_upper = upper;
    }
    out
}

fn bin(value: f64, count: usize) -> Value {
    let mut o = Object::new();
    o.insert("value", Value::Float(value));
    o.insert("count", Value::Int(count as i64));
    Value::Object(o)
}

/// A number, whatever its kind.
pub fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Int(i) => Some(*i as f64),
        Value::Float(f) => Some(*f),
        _ => None,
    }
}

/// HarperDB's key of a metric entry: `metric-path-method-type`, absent parts left out.
fn action_key(entry: &Object) -> String {
    let mut key = String::new();
    for name in NAMING {
        match entry.get(name) {
            Some(Value::String(s)) if name == "metric" || !s.is_empty() => {
                if !key.is_empty() {
                    key.push('-');
                }
                key.push_str(s);
            }
            Some(Value::Null) if name != "path" => key.push_str("-null"),
            _ => {}
        }
    }
    key
}

/// One aggregate being built.
struct Aggregate {
    row: Object,
    count: f64,
    /// Merged distribution bins: (value, count).
    bins: Vec<(f64, f64)>,
}

/// Folds the `metrics` arrays of raw rows (in time order) over `period_ms` into aggregate rows
/// (without `id`, `time` and `node`, which the caller adds).
pub fn fold<'a>(raw_metrics: impl Iterator<Item = &'a Value>, period_ms: f64) -> Vec<Object> {
    let mut order: Vec<String> = Vec::new();
    let mut aggregates: HashMap<String, Aggregate> = HashMap::new();
    for metrics in raw_metrics {
        let Value::Array(entries) = metrics else {
            continue;
        };
        for entry in entries {
            let Value::Object(entry) = entry else {
                continue;
            };
            let key = action_key(entry);
            let count = entry.get("count").and_then(number).unwrap_or(1.0).max(1.0);
            let bins = entry.get("distribution").map(bins_of).unwrap_or_default();
            match aggregates.get_mut(&key) {
                Some(agg) => merge(agg, entry, count, bins),
                None => {
                    let mut row = Object::new();
                    row.insert("period", Value::Float(period_ms));
                    for (name, value) in entry.iter() {
                        if name != "distribution" {
                            row.insert(name, value.clone());
                        }
                    }
                    order.push(key.clone());
                    aggregates.insert(key, Aggregate { row, count, bins });
                }
            }
        }
    }
    order
        .into_iter()
        .filter_map(|key| aggregates.remove(&key))
        .map(|mut agg| {
            if !agg.bins.is_empty() {
                percentiles(&mut agg);
            }
            agg.row
        })
        .collect()
}

/// A later raw entry into an existing aggregate: measures averaged by count, totals summed,
/// `ratio` (HarperDB adds it only once two entries are merged).
fn merge(agg: &mut Aggregate, entry: &Object, count: f64, bins: Vec<(f64, f64)>) {
    let previous = agg.count;
    for (name, value) in entry.iter() {
        if NAMING.contains(&name) || matches!(name, "count" | "total" | "distribution") {
            continue;
        }
        if let (Some(v), Some(old)) = (number(value), agg.row.get(name).and_then(number)) {
            let mean = (old * previous + v * count) / (previous + count);
            agg.row.insert(name, Value::Float(mean));
        }
    }
    agg.count += count;
    agg.row.insert("count", Value::Int(agg.count as i64));
    if let Some(total) = entry.get("total").and_then(number) {
        let sum = agg.row.get("total").and_then(number).unwrap_or(0.0) + total;
        agg.row.insert("total", Value::Int(sum as i64));
        agg.row.insert("ratio", Value::Float(sum / agg.count));
    }
    agg.bins.extend(bins);
}

fn bins_of(distribution: &Value) -> Vec<(f64, f64)> {
    let Value::Array(items) = distribution else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|item| match item {
            Value::Object(o) => Some((
                o.get("value").and_then(number)?,
                o.get("count").and_then(number).unwrap_or(1.0),
            )),
            other => number(other).map(|v| (v, 1.0)),
        })
        .collect()
}

/// HarperDB's interpolation: walk the sorted bins to each percentile's rank and interpolate
/// inside the bin reached (the minimum value itself is skipped).
fn percentiles(agg: &mut Aggregate) {
    let bins = &mut agg.bins;
    bins.sort_by(|a, b| a.0.total_cmp(&b.0));
    let count = agg.count - 1.0;
    let mut position = 0.0;
    let mut index = 0usize;
    let mut bin = bins[0];
    for (i, p) in PERCENTILES.iter().enumerate() {
        let target = count * p;
        while position < target && index < bins.len() {
            bin = bins[index];
            index += 1;
            position += bin.1;
            if index == 1 {
                position -= 1.0;
            }
        }
        let previous = bins[index.saturating_sub(2)];
        let value = bin.0 - (bin.0 - previous.0) * (position - target) / bin.1;
        if let Some(name) = PERCENTILE_NAMES.get(i) {
            agg.row.insert(*name, Value::Float(value));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distribution_merges_equal_values_like_harperdb() {
        // HarperDB 4.7.29 stored [491, {value: 494, count: 5}] for these six sizes.
        let mut values = [491.0, 494.0, 494.0, 494.0, 494.0, 494.0];
        let d = distribution(&mut values, 6);
        assert_eq!(d.len(), 2);
        assert_eq!(d[0], Value::Float(491.0));
        let Value::Object(o) = &d[1] else {
            panic!("{d:?}")
        };
        assert_eq!(o.get("count"), Some(&Value::Int(5)));
    }

    #[test]
    fn fold_averages_and_interpolates() {
        let mut a = Object::new();
        a.insert("metric", Value::from("duration"));
        a.insert("path", Value::from("Dog"));
        a.insert("method", Value::from("GET"));
        a.insert("mean", Value::Float(2.0));
        a.insert("count", Value::Int(2));
        let mut values = [1.0, 3.0];
        a.insert("distribution", Value::Array(distribution(&mut values, 2)));
        let mut b = a.clone();
        b.insert("mean", Value::Float(5.0));
        b.insert("count", Value::Int(1));
        let mut values = [5.0];
        b.insert("distribution", Value::Array(distribution(&mut values, 1)));
        let rows = fold(
            [
                Value::Array(vec![Value::Object(a)]),
                Value::Array(vec![Value::Object(b)]),
            ]
            .iter(),
            60_000.0,
        );
        assert_eq!(rows.len(), 1);
        let row = &rows[0];
        assert_eq!(row.get("count"), Some(&Value::Int(3)));
        assert_eq!(row.get("mean").and_then(number), Some(3.0));
        let median = row.get("median").and_then(number).unwrap_or(f64::NAN);
        assert!((1.0..=5.0).contains(&median), "{row:?}");
        assert!(row.get("p999").is_some() && row.get("distribution").is_none());
    }

    /// Seconds with more values than are kept: the distribution stands for all of them, so a
    /// fold's percentiles stay within the values (a sample's counts once summed to the sample's
    /// size while `count` was the real one, and the interpolation ran far outside).
    #[test]
    fn sampled_seconds_fold_to_percentiles_within_their_values() {
        let mut seconds = Vec::new();
        for s in 0..4 {
            // 20,000 answers a second, 1,024 of them kept: values 1..=1024 ms.
            let mut kept: Vec<f32> = (1..=1024).map(|v| v as f32).collect();
            let mut o = Object::new();
            o.insert("metric", Value::from("duration"));
            o.insert("path", Value::from("Dog"));
            o.insert("mean", Value::Float(512.5 + f64::from(s)));
            o.insert("count", Value::Int(20_000));
            o.insert(
                "distribution",
                Value::Array(distribution(&mut kept, 20_000)),
            );
            let total: f64 = match o.get("distribution") {
                Some(d) => bins_of(d).iter().map(|(_, c)| c).sum(),
                None => 0.0,
            };
            assert_eq!(total, 20_000.0);
            seconds.push(Value::Array(vec![Value::Object(o)]));
        }
        let row = &fold(seconds.iter(), 2000.0)[0];
        assert_eq!(row.get("count"), Some(&Value::Int(80_000)));
        let at = |name: &str| row.get(name).and_then(number).unwrap_or(f64::NAN);
        let mut previous = 0.0;
        for name in PERCENTILE_NAMES {
            let v = at(name);
            assert!(
                (1.0..=1024.0).contains(&v) && v >= previous,
                "{name} = {v}: {row:?}"
            );
            previous = v;
        }
        let median = at("median");
        assert!((400.0..=600.0).contains(&median), "median {median}");
    }

    #[test]
    fn fold_sums_totals_and_adds_ratio_on_merge() {
        let mut a = Object::new();
        a.insert("metric", Value::from("success"));
        a.insert("path", Value::from("describe_all"));
        a.insert("type", Value::from("operation"));
        a.insert("total", Value::Int(3));
        a.insert("count", Value::Int(4));
        let one = fold([Value::Array(vec![Value::Object(a.clone())])].iter(), 1.0);
        assert!(one[0].get("ratio").is_none());
        let two = fold(
            [
                Value::Array(vec![Value::Object(a.clone())]),
                Value::Array(vec![Value::Object(a)]),
            ]
            .iter(),
            1.0,
        );
        assert_eq!(two[0].get("total"), Some(&Value::Int(6)));
        assert_eq!(two[0].get("count"), Some(&Value::Int(8)));
        assert_eq!(two[0].get("ratio").and_then(number), Some(0.75));
    }
}
