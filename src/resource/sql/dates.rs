//! HarperDB's SQL date functions (docs/operations-api.md, "sql"): dates are milliseconds since
//! the epoch, UTC; text forms follow moment.js as HarperDB prints them.

use super::eval::{as_f64, num, text};
use super::functions::{fields, from_fields};
use super::SqlError;
use crate::util::days_from_civil;
use crate::value::Value;

const WEEKDAYS: [&str; 7] = [
    "Sunday",
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
];
const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

/// Farthest date from the epoch, in ms (JavaScript's `Date` range); beyond it a date is NULL.
pub const DATE_MS_MAX: i64 = 8_640_000_000_000_000;

fn in_range(ms: f64) -> Option<i64> {
    (ms.is_finite() && ms.abs() <= DATE_MS_MAX as f64).then_some(ms as i64)
}

/// A value as a date: ms numbers, ISO-8601 text, or `YYYY-M-D[ H:M[:S]]`.
pub fn parse(v: &Value) -> Option<i64> {
    let ms = match v {
        Value::Int(_) | Value::Float(_) | Value::Date(_) => as_f64(v).map(|f| f as i64),
        Value::String(s) => crate::util::parse_iso8601_ms(s.trim())
            .map(|f| f as i64)
            .or_else(|| loose(s.trim())),
        _ => None,
    }?;
    in_range(ms as f64)
}

fn loose(s: &str) -> Option<i64> {
    let (date, time) = s.split_once([' ', 'T']).unwrap_or((s, ""));
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (
        d.next()??,
        d.next().flatten().unwrap_or(1),
        d.next().flatten().unwrap_or(1),
    );
    if d.next().is_some() || !(1..=12).contains(&m) || !(1..=31).contains(&day) || y.abs() > 275_000
    {
        return None;
    }
    // A UTC offset as moment reads one (`Z`, `±HH`, `±HHMM`, `±HH:MM`); a time part that is not a
    // number (an offset moment cannot read, `+000`) makes the whole text no date, as in moment.
    let (time, offset_min) = match time.find(['+', '-']) {
        Some(at) => (&time[..at], Some(offset(&time[at..])?)),
        None => (time.strip_suffix('Z').unwrap_or(time), None),
    };
    let t: Vec<f64> = time
        .split(':')
        .filter(|p| !p.is_empty())
        .map(|p| p.parse::<f64>().ok())
        .collect::<Option<_>>()?;
    if t.len() > 3 {
        return None;
    }
    let part = |i: usize| t.get(i).copied().unwrap_or(0.0);
    let (h, min, sec) = (part(0), part(1), part(2));
    let in_day = ((h * 3600.0 + min * 60.0 + sec) * 1000.0) as i64;
    Some(from_fields(y, m, day as u32, in_day) - offset_min.unwrap_or(0) * 60_000)
}

/// `±HH`, `±HHMM` or `±HH:MM` in minutes.
fn offset(text: &str) -> Option<i64> {
    let sign = if text.starts_with('-') { -1 } else { 1 };
    let digits = text[1..].replace(':', "");
    if !digits.bytes().all(|b| b.is_ascii_digit()) || (text[1..].contains(':') && digits.len() != 4)
    {
        return None;
    }
    let (h, m) = match digits.len() {
        2 => (digits.parse::<i64>().ok()?, 0),
        4 => (
            digits[..2].parse::<i64>().ok()?,
            digits[2..].parse::<i64>().ok()?,
        ),
        _ => return None,
    };
    Some(sign * (h * 60 + m))
}

fn days_in_month(y: i64, m: u32) -> u32 {
    let next = if m == 12 {
        days_from_civil(y + 1, 1, 1)
    } else {
        days_from_civil(y, m + 1, 1)
    };
    (next - days_from_civil(y, m, 1)) as u32
}

/// Milliseconds of one `unit` (moment's names), or months for calendar units.
enum Unit {
    Ms(f64),
    Months(i64),
}

fn unit(name: &str) -> Result<Unit, SqlError> {
    Ok(match name.trim() {
        "years" | "year" | "y" => Unit::Months(12),
        "quarters" | "quarter" | "Q" => Unit::Months(3),
        "months" | "month" | "M" => Unit::Months(1),
        "weeks" | "week" | "w" => Unit::Ms(7.0 * 86_400_000.0),
        "days" | "day" | "d" => Unit::Ms(86_400_000.0),
        "hours" | "hour" | "h" => Unit::Ms(3_600_000.0),
        "minutes" | "minute" | "m" => Unit::Ms(60_000.0),
        "seconds" | "second" | "s" => Unit::Ms(1000.0),
        "milliseconds" | "millisecond" | "ms" | "" => Unit::Ms(1.0),
        other => return Err(SqlError::bad(format!("unknown date unit '{other}'"))),
    })
}

/// `ms` moved by `amount` units; `None` outside the date range.
fn add(ms: i64, amount: f64, unit: &Unit) -> Option<i64> {
    match unit {
        Unit::Ms(u) => in_range(ms as f64 + amount * u),
        Unit::Months(k) => {
            let months = amount * *k as f64;
            if !months.is_finite() || months.abs() > 3_300_000.0 {
                return None;
            }
            let (y, m, d, ..) = fields(ms);
            let in_day = ms.rem_euclid(86_400_000);
            let total = m as i64 + months as i64;
            let ny = y + (total - 1).div_euclid(12);
            let nm = (total - 1).rem_euclid(12) as u32 + 1;
            in_range(from_fields(ny, nm as i64, d.min(days_in_month(ny, nm)), in_day) as f64)
        }
    }
}

/// moment.js's `monthDiff(a, b)`: whole months from `b` to `a`, plus the fraction of the month
/// around them (linear between the anchors), as HarperDB's `DATE_DIFF` answers.
fn months_between(a: i64, b: i64) -> f64 {
    let (ya, ma, da, ..) = fields(a);
    let (yb, mb, db, ..) = fields(b);
    if da < db {
        return -months_between(b, a);
    }
    let whole = (yb - ya) * 12 + mb as i64 - ma as i64;
    let months = |n: i64| add(a, n as f64, &Unit::Months(1));
    let (Some(anchor), Some(before), Some(after)) =
        (months(whole), months(whole - 1), months(whole + 1))
    else {
        return -(whole as f64);
    };
    let adjust = if b < anchor {
        (b - anchor) as f64 / (anchor - before) as f64
    } else {
        (b - anchor) as f64 / (after - anchor) as f64
    };
    let out = -(whole as f64 + adjust);
    if out == 0.0 {
        0.0
    } else {
        out
    }
}

/// `2026-12-06T23:23:44.866+0000`, shifted by `offset_min`.
fn server_time(ms: i64, offset_min: i64) -> String {
    let (y, mo, d, h, mi, s, milli) = fields(ms + offset_min * 60_000);
    let sign = if offset_min < 0 { '-' } else { '+' };
    let off = offset_min.abs();
    format!(
        "{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{milli:03}{sign}{:02}{:02}",
        off / 60,
        off % 60
    )
}

/// moment.js `format` tokens HarperDB documents for DATE_FORMAT.
pub fn format(ms: i64, pattern: &str) -> String {
    let (y, mo, d, h, mi, s, milli) = fields(ms);
    let weekday = (ms.div_euclid(86_400_000) + 4).rem_euclid(7) as usize;
    const TOKENS: [&str; 24] = [
        "YYYY", "YY", "MMMM", "MMM", "MM", "M", "DD", "Do", "D", "dddd", "ddd", "d", "HH", "H",
        "hh", "h", "mm", "m", "ss", "s", "SSS", "A", "x", "X",
    ];
    let mut out = String::new();
    let mut rest = pattern;
    while let Some(c) = rest.chars().next() {
        if c == '[' {
            if let Some(end) = rest.find(']') {
                out.push_str(&rest[1..end]);
                rest = &rest[end + 1..];
                continue;
            }
        }
        let Some(tok) = TOKENS.iter().find(|t| rest.starts_with(**t)) else {
            out.push(c);
            rest = &rest[c.len_utf8()..];
            continue;
        };
        let h12 = if h % 12 == 0 { 12 } else { h % 12 };
        let piece = match *tok {
            "YYYY" => format!("{y:04}"),
            "YY" => format!("{:02}", y.rem_euclid(100)),
            "MMMM" => MONTHS[mo as usize - 1].to_string(),
            "MMM" => MONTHS[mo as usize - 1][..3].to_string(),
            "MM" => format!("{mo:02}"),
            "M" => mo.to_string(),
            "DD" => format!("{d:02}"),
            "Do" => format!("{d}{}", ordinal(d)),
            "D" => d.to_string(),
            "dddd" => WEEKDAYS[weekday].to_string(),
            "ddd" => WEEKDAYS[weekday][..3].to_string(),
            "d" => weekday.to_string(),
            "HH" => format!("{h:02}"),
            "H" => h.to_string(),
            "hh" => format!("{h12:02}"),
            "h" => h12.to_string(),
            "mm" => format!("{mi:02}"),
            "m" => mi.to_string(),
            "ss" => format!("{s:02}"),
            "s" => s.to_string(),
            "SSS" => format!("{milli:03}"),
            "A" => (if h < 12 { "AM" } else { "PM" }).to_string(),
            "x" => ms.to_string(),
            _ => ms.div_euclid(1000).to_string(),
        };
        out.push_str(&piece);
        rest = &rest[tok.len()..];
    }
    out
}

fn ordinal(d: u32) -> &'static str {
    match (d % 10, d % 100) {
        (_, 11..=13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    }
}

fn date_arg(args: &[Value], i: usize, now: i64) -> Option<i64> {
    match args.get(i) {
        None => Some(now),
        Some(v) => parse(v),
    }
}

/// Date functions by (upper-case) name; any other name answers 501.
pub fn call(name: &str, args: &[Value], now_ms: f64) -> Result<Value, SqlError> {
    let now = now_ms as i64;
    let (y, mo, d, h, mi, s, milli) = fields(now);
    Ok(match name {
        "CURRENT_DATE" | "CURDATE" => Value::String(format!("{y:04}-{mo:02}-{d:02}")),
        "CURRENT_TIME" | "CURTIME" => Value::String(format!("{h:02}:{mi:02}:{s:02}.{milli:03}")),
        "CURRENT_TIMESTAMP" | "NOW" | "GETDATE" => Value::Int(now),
        "GET_SERVER_TIME" => Value::String(server_time(now, 0)),
        "DATE" => date_arg(args, 0, now).map_or(Value::Null, |t| Value::String(server_time(t, 0))),
        "OFFSET_UTC" => {
            let (Some(t), Some(off)) = (date_arg(args, 0, now), args.get(1).and_then(as_f64))
            else {
                return Ok(Value::Null);
            };
            let minutes = if off.abs() < 16.0 { off * 60.0 } else { off };
            if minutes.abs() > 1440.0 {
                return Ok(Value::Null);
            }
            Value::String(server_time(t, minutes as i64))
        }
        "DATE_ADD" | "DATE_SUB" => {
            let (Some(t), Some(n)) = (date_arg(args, 0, now), args.get(1).and_then(as_f64)) else {
                return Ok(Value::Null);
            };
            let n = if name == "DATE_SUB" { -n } else { n };
            let u = unit(&text(args.get(2).unwrap_or(&Value::Null)))?;
            add(t, n, &u).map_or(Value::Null, Value::Int)
        }
        "DATE_DIFF" | "DATEDIFF" => {
            let (Some(a), Some(b)) = (args.first().and_then(parse), args.get(1).and_then(parse))
            else {
                return Ok(Value::Null);
            };
            // moment's `diff(b, unit, true)`: not truncated.
            match unit(&text(args.get(2).unwrap_or(&Value::Null)))? {
                Unit::Ms(u) => num((a - b) as f64 / u),
                Unit::Months(k) => num(months_between(a, b) / k as f64),
            }
        }
        "DATE_FORMAT" => match date_arg(args, 0, now) {
            Some(t) => Value::String(format(t, &text(args.get(1).unwrap_or(&Value::Null)))),
            None => Value::Null,
        },
        // HarperDB: moment's `format` of the part, as text; "Invalid date" for a date moment
        // cannot read; an unknown part gives nothing.
        "EXTRACT" => {
            let part = text(args.get(1).unwrap_or(&Value::Null)).to_ascii_lowercase();
            if ![
                "year",
                "month",
                "day",
                "hour",
                "minute",
                "second",
                "millisecond",
            ]
            .contains(&part.as_str())
            {
                return Ok(Value::Null);
            }
            let Some(t) = date_arg(args, 0, now) else {
                return Ok(Value::String("Invalid date".into()));
            };
            let (y, mo, d, h, mi, s, milli) = fields(t);
            Value::String(match part.as_str() {
                "year" => format!("{y:04}"),
                "month" => format!("{mo:02}"),
                "day" => format!("{d:02}"),
                "hour" => format!("{h:02}"),
                "minute" => format!("{mi:02}"),
                "second" => format!("{s:02}"),
                _ => format!("{milli:03}"),
            })
        }
        _ => {
            let later = name.starts_with("GEO");
            return Err(SqlError::Status(
                501,
                if later {
                    format!("the SQL function {name}() is not implemented by this server yet")
                } else {
                    format!("unknown SQL function {name}()")
                },
            ));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn date_forms() {
        let t = parse(&Value::String("2020-4-1".into())).unwrap();
        assert_eq!(t, 1_585_699_200_000);
        assert_eq!(add(t, -3.0, &Unit::Months(12)), Some(1_491_004_800_000));
        assert_eq!(add(t, 1e300, &Unit::Months(12)), None);
        assert_eq!(parse(&Value::Float(1e300)), None);
        let at = |s: &str| parse(&Value::String(s.into()));
        assert_eq!(at("2020-04-01T00:00:00.000+0000"), Some(t));
        assert_eq!(at("2020-04-01T02:00:00.000+0200"), Some(t));
        assert_eq!(at("2020-03-31T18:00:00.000-06:00"), Some(t));
        assert_eq!(at("2020-03-31T18:00:00.000-06"), Some(t));
        assert_eq!(at("2020-03-26T15:13:02.041+000"), None);
        assert_eq!(at("2020-04-01 00:00"), Some(t));
        assert_eq!(server_time(t, -360), "2020-03-31T18:00:00.000-0600");
        assert_eq!(
            format(t, "dddd YYYY-MM-DD x"),
            "Wednesday 2020-04-01 1585699200000"
        );
    }
}
