//! The SVG chart of a `bench/compare` results file: per workload, one bar per server for the
//! median throughput and one for the median p99 latency, on log scales (the servers differ by
//! orders of magnitude, so linear bars would hide the slow ones).
//!
//! It owns reading the results JSON loosely (only the fields it draws) and writing hand-made SVG
//! 1.1 — no drawing crate, no fonts to embed. It never runs a load and never rewrites the results.

use std::fmt::{self, Write as _};

use serde_json::Value;

/// Most workloads one chart draws; a results file is made by a script, not a client, but the
/// bound keeps a broken file from producing a gigantic picture.
pub const WORKLOADS_MAX: usize = 64;
/// Most servers (bars per workload).
pub const SERVERS_MAX: usize = 8;
/// Largest results file read.
pub const INPUT_BYTES_MAX: u64 = 16 * 1024 * 1024;

/// Bar colours by server position in the file's `servers` list.
const COLOURS: [&str; SERVERS_MAX] = [
    "#1f6feb", "#d9480f", "#6c757d", "#2f9e44", "#ae3ec9", "#f59f00", "#0c8599", "#c2255c",
];
const WIDTH: f64 = 1100.0;
const PANEL_LEFT: [f64; 2] = [190.0, 680.0];
const PANEL_WIDTH: f64 = 340.0;
const TOP: f64 = 92.0;
const BAR_HEIGHT: f64 = 13.0;
const ROW_GAP: f64 = 14.0;

#[derive(Debug)]
pub enum ChartError {
    Read(String, std::io::Error),
    TooLarge(u64),
    Json(serde_json::Error),
    Shape(String),
    Write(String, std::io::Error),
}

impl fmt::Display for ChartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChartError::Read(path, e) => write!(f, "reading {path}: {e}"),
            ChartError::TooLarge(n) => {
                write!(f, "results file of {n} bytes, over {INPUT_BYTES_MAX}")
            }
            ChartError::Json(e) => write!(f, "results file: {e}"),
            ChartError::Shape(what) => write!(f, "results file: {what}"),
            ChartError::Write(path, e) => write!(f, "writing {path}: {e}"),
        }
    }
}

impl std::error::Error for ChartError {}

/// One bar: a server's medians in one workload.
#[derive(Debug, Clone, PartialEq)]
struct Bar {
    server: usize,
    throughput: f64,
    p99_us: f64,
}

#[derive(Debug, Clone, PartialEq)]
struct Row {
    name: String,
    unit: String,
    bars: Vec<Bar>,
}

#[derive(Debug, Clone, PartialEq)]
struct Chart {
    title: String,
    subtitle: String,
    servers: Vec<String>,
    rows: Vec<Row>,
}

/// Reads `input` and writes the chart to `output`.
pub fn run(input: &str, output: &str) -> Result<(), ChartError> {
    let size = std::fs::metadata(input)
        .map_err(|e| ChartError::Read(input.into(), e))?
        .len();
    if size > INPUT_BYTES_MAX {
        return Err(ChartError::TooLarge(size));
    }
    let text = std::fs::read_to_string(input).map_err(|e| ChartError::Read(input.into(), e))?;
    let svg = render(&text)?;
    std::fs::write(output, svg).map_err(|e| ChartError::Write(output.into(), e))
}

/// The SVG for a results file's text.
pub fn render(text: &str) -> Result<String, ChartError> {
    let value: Value = serde_json::from_str(text).map_err(ChartError::Json)?;
    Ok(draw(&read(&value)?))
}

fn read(value: &Value) -> Result<Chart, ChartError> {
    let text = |v: &Value, key: &str| v.get(key).and_then(Value::as_str).unwrap_or("").to_string();
    let servers: Vec<String> = value
        .get("servers")
        .and_then(Value::as_object)
        .ok_or_else(|| ChartError::Shape("no `servers` object".into()))?
        .keys()
        .cloned()
        .collect();
    // `servers` is an object so its key order is the file's only by chance; an explicit
    // `server_order` list keeps colours stable between runs.
    let order: Vec<String> = match value.get("server_order").and_then(Value::as_array) {
        Some(list) => list
            .iter()
            .filter_map(Value::as_str)
            .filter(|s| servers.iter().any(|k| k == s))
            .map(String::from)
            .collect(),
        None => servers,
    };
    if order.len() > SERVERS_MAX {
        return Err(ChartError::Shape(format!(
            "{} servers, at most {SERVERS_MAX}",
            order.len()
        )));
    }
    let workloads = value
        .get("workloads")
        .and_then(Value::as_array)
        .ok_or_else(|| ChartError::Shape("no `workloads` list".into()))?;
    if workloads.len() > WORKLOADS_MAX {
        return Err(ChartError::Shape(format!(
            "{} workloads, at most {WORKLOADS_MAX}",
            workloads.len()
        )));
    }
    let mut rows = Vec::new();
    for w in workloads {
        let results = w.get("results").and_then(Value::as_object);
        let bars: Vec<Bar> = order
            .iter()
            .enumerate()
            .filter_map(|(server, name)| {
                let r = results?.get(name)?;
                let number = |key: &str| r.get(key).and_then(Value::as_f64).filter(|v| *v > 0.0);
                Some(Bar {
                    server,
                    throughput: number("throughput_median")?,
                    p99_us: number("p99_us_median").unwrap_or(0.0),
                })
            })
            .collect();
        if !bars.is_empty() {
            rows.push(Row {
                name: text(w, "name"),
                unit: text(w, "unit"),
                bars,
            });
        }
    }
    Ok(Chart {
        title: text(value, "title"),
        subtitle: text(value, "subtitle"),
        servers: order,
        rows,
    })
}

/// A log10 axis from a power of ten at or below the smallest value to one at or above the largest.
#[derive(Debug, Clone, Copy, PartialEq)]
struct LogAxis {
    low_exp: i32,
    high_exp: i32,
}

impl LogAxis {
    fn over(values: impl Iterator<Item = f64>) -> LogAxis {
        let (mut low, mut high) = (f64::INFINITY, f64::NEG_INFINITY);
        for v in values.filter(|v| *v > 0.0 && v.is_finite()) {
            low = low.min(v);
            high = high.max(v);
        }
        if !low.is_finite() {
            return LogAxis {
                low_exp: 0,
                high_exp: 1,
            };
        }
        let low_exp = low.log10().floor() as i32;
        let high_exp = (high.log10().ceil() as i32).max(low_exp + 1);
        LogAxis { low_exp, high_exp }
    }

    /// Position of `v` along `width` (0 at the low end), clamped to the axis.
    fn place(&self, v: f64, width: f64) -> f64 {
        if v <= 0.0 {
            return 0.0;
        }
        let span = f64::from(self.high_exp - self.low_exp);
        ((v.log10() - f64::from(self.low_exp)) / span).clamp(0.0, 1.0) * width
    }
}

/// `12345` → `12.3k`; `2500000` → `2.5M`.
fn short(v: f64) -> String {
    match v {
        v if v >= 1e6 => format!("{:.1}M", v / 1e6),
        v if v >= 1e4 => format!("{:.0}k", v / 1e3),
        v if v >= 1e3 => format!("{:.1}k", v / 1e3),
        v => format!("{v:.0}"),
    }
}

/// Microseconds as µs, ms or s.
fn duration(us: f64) -> String {
    match us {
        us if us >= 1e6 => format!("{:.2} s", us / 1e6),
        us if us >= 1e3 => format!("{:.1} ms", us / 1e3),
        us => format!("{us:.0} µs"),
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn draw(chart: &Chart) -> String {
    let rows_height: f64 = chart
        .rows
        .iter()
        .map(|r| r.bars.len() as f64 * BAR_HEIGHT + ROW_GAP)
        .sum();
    let height = TOP + rows_height + 70.0;
    let throughput = LogAxis::over(
        chart
            .rows
            .iter()
            .flat_map(|r| r.bars.iter().map(|b| b.throughput)),
    );
    let latency = LogAxis::over(
        chart
            .rows
            .iter()
            .flat_map(|r| r.bars.iter().map(|b| b.p99_us)),
    );
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="DejaVu Sans, Arial, sans-serif" font-size="11">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="20" y="24" font-size="16" font-weight="bold">{}</text>"#,
        escape(&chart.title)
    );
    let _ = writeln!(
        s,
        r##"<text x="20" y="42" fill="#555">{}</text>"##,
        escape(&chart.subtitle)
    );
    // Legend: the servers with at least one bar (one measured only for memory has none).
    let mut x = 20.0;
    for (i, name) in chart.servers.iter().enumerate() {
        if !chart
            .rows
            .iter()
            .any(|r| r.bars.iter().any(|b| b.server == i))
        {
            continue;
        }
        let colour = COLOURS.get(i).copied().unwrap_or("#000");
        let _ = writeln!(
            s,
            r#"<rect x="{x}" y="52" width="12" height="12" fill="{colour}"/><text x="{}" y="62">{}</text>"#,
            x + 16.0,
            escape(name)
        );
        x += 30.0 + 7.0 * name.len() as f64;
    }
    let bottom = TOP + rows_height;
    for (panel, (axis, heading)) in [
        (
            throughput,
            "median throughput (log scale; higher is better)",
        ),
        (latency, "median p99 latency (log scale; lower is better)"),
    ]
    .iter()
    .enumerate()
    {
        let left = PANEL_LEFT[panel];
        let _ = writeln!(
            s,
            r#"<text x="{left}" y="{}" font-weight="bold">{heading}</text>"#,
            TOP - 10.0
        );
        for exp in axis.low_exp..=axis.high_exp {
            let v = 10f64.powi(exp);
            let gx = left + axis.place(v, PANEL_WIDTH);
            let label = if panel == 0 { short(v) } else { duration(v) };
            let _ = writeln!(
                s,
                r##"<line x1="{gx:.1}" y1="{TOP}" x2="{gx:.1}" y2="{bottom}" stroke="#ddd"/><text x="{gx:.1}" y="{}" text-anchor="middle" fill="#555">{label}</text>"##,
                bottom + 14.0
            );
        }
        let _ = writeln!(
            s,
            r##"<line x1="{left}" y1="{TOP}" x2="{left}" y2="{bottom}" stroke="#333"/>"##
        );
    }
    let mut y = TOP + ROW_GAP / 2.0;
    for row in &chart.rows {
        let block = row.bars.len() as f64 * BAR_HEIGHT;
        let _ = writeln!(
            s,
            r##"<text x="{}" y="{:.1}" text-anchor="end" font-weight="bold">{}</text><text x="{}" y="{:.1}" text-anchor="end" fill="#555">{}</text>"##,
            PANEL_LEFT[0] - 8.0,
            y + block / 2.0 - 1.0,
            escape(&row.name),
            PANEL_LEFT[0] - 8.0,
            y + block / 2.0 + 11.0,
            escape(&row.unit)
        );
        for (i, bar) in row.bars.iter().enumerate() {
            let colour = COLOURS.get(bar.server).copied().unwrap_or("#000");
            let by = y + i as f64 * BAR_HEIGHT;
            for (panel, (axis, value, label)) in [
                (throughput, bar.throughput, short(bar.throughput)),
                (latency, bar.p99_us, duration(bar.p99_us)),
            ]
            .into_iter()
            .enumerate()
            {
                if value <= 0.0 {
                    continue;
                }
                let left = PANEL_LEFT[panel];
                let w = axis.place(value, PANEL_WIDTH).max(1.0);
                let _ = writeln!(
                    s,
                    r#"<rect x="{left}" y="{by:.1}" width="{w:.1}" height="{:.1}" fill="{colour}"/><text x="{:.1}" y="{:.1}" font-size="10">{label}</text>"#,
                    BAR_HEIGHT - 2.0,
                    left + w + 4.0,
                    by + BAR_HEIGHT - 3.5
                );
            }
        }
        y += block + ROW_GAP;
    }
    let _ = writeln!(
        s,
        r##"<text x="20" y="{:.1}" fill="#555">Medians over alternated rounds (A B A B); each server on its own core, load on another. Ratios, not absolute speeds, are what carries over between machines.</text>"##,
        bottom + 40.0
    );
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Renders `input` and checks that the SVG holds every `expected` fragment, in order, or
    /// that reading fails with `expected[0]` as the message start.
    fn check(input: &str, expected: &[&str]) {
        match render(input) {
            Ok(svg) => {
                let mut from = 0;
                for fragment in expected {
                    match svg[from..].find(fragment) {
                        Some(at) => from += at + fragment.len(),
                        None => panic!("{fragment:?} not found after byte {from} in\n{svg}"),
                    }
                }
            }
            Err(e) => {
                let message = e.to_string();
                assert!(
                    expected.first().is_some_and(|f| message.starts_with(f)),
                    "error {message:?}, expected {expected:?}"
                );
            }
        }
    }

    const TWO: &str = r#"{"title":"t <1>","subtitle":"s",
        "server_order":["tidepool","harperdb","mosquitto"],
        "servers":{"harperdb":{},"tidepool":{},"mosquitto":{}},
        "workloads":[
          {"name":"GET by id","unit":"req/s","results":{
            "tidepool":{"throughput_median":20000,"p99_us_median":900},
            "harperdb":{"throughput_median":2000,"p99_us_median":45000}}},
          {"name":"skipped","unit":"req/s","results":{}},
          {"name":"PUT","unit":"req/s","results":{"tidepool":{"throughput_median":7000}}}]}"#;

    #[test]
    fn charts() {
        check(
            TWO,
            &[
                "t &lt;1&gt;",
                // Legend in server_order, colours by position.
                "fill=\"#1f6feb\"/><text x=\"36\" y=\"62\">tidepool",
                "fill=\"#d9480f\"/>",
                ">harperdb<",
                // Axis decades 1k..100k and 100 µs..100 ms.
                ">1.0k<",
                ">100k<",
                ">100 µs<",
                ">100.0 ms<",
                ">GET by id<",
                ">20k<",
                ">900 µs<",
                ">2.0k<",
                ">45.0 ms<",
                ">PUT<",
                ">7.0k<",
            ],
        );
        check(
            r#"{"workloads":[]}"#,
            &["results file: no `servers` object"],
        );
        check(r#"{"servers":{}}"#, &["results file: no `workloads` list"]);
        check("{", &["results file: EOF"]);
    }

    #[test]
    fn skips_rows_without_numbers() {
        let svg = render(TWO).unwrap_or_default();
        assert!(!svg.contains(">skipped<"), "{svg}");
        // A server without bars stays out of the legend.
        assert!(!svg.contains(">mosquitto<"), "{svg}");
        // Three bars drawn in each of the two panels, less the missing PUT latency.
        assert_eq!(svg.matches("height=\"11.0\"").count(), 5, "{svg}");
    }

    #[test]
    fn log_axes() {
        let axis = LogAxis::over([150.0, 20_000.0].into_iter());
        assert_eq!(
            axis,
            LogAxis {
                low_exp: 2,
                high_exp: 5
            }
        );
        assert_eq!(axis.place(100.0, 300.0), 0.0);
        assert_eq!(axis.place(1e5, 300.0), 300.0);
        assert!((axis.place(1e3, 300.0) - 100.0).abs() < 1e-9);
        assert_eq!(
            LogAxis::over([0.0, f64::NAN].into_iter()),
            LogAxis {
                low_exp: 0,
                high_exp: 1
            }
        );
        assert_eq!(LogAxis::over([1000.0].into_iter()).high_exp, 4);
    }
}
