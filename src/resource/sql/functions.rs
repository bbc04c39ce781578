//! SQL functions: aggregates, string, math, conditional and HarperDB's date functions
//! (docs/operations-api.md, "sql"). A function this server does not compute answers 501, never
//! a guess.

use sqlparser::ast::{CeilFloorKind, DateTimeField, Expr};

use super::eval::{as_f64, compare, eval, num, text, Ctx};
use super::SqlError;
use crate::util::{civil_from_days, days_from_civil};
use crate::value::Value;

/// COUNT/SUM/AVG/MIN/MAX over the group's values (NULLs skipped, as SQL does).
pub fn aggregate(name: &str, values: Vec<Value>, distinct: bool) -> Value {
    let mut values: Vec<Value> = values
        .into_iter()
        .filter(|v| !matches!(v, Value::Null))
        .collect();
    if distinct {
        let mut kept: Vec<Value> = Vec::with_capacity(values.len());
        for v in values {
            if !kept
                .iter()
                .any(|k| compare(k, &v) == Some(std::cmp::Ordering::Equal))
            {
                kept.push(v);
            }
        }
        values = kept;
    }
    let numbers = || values.iter().filter_map(as_f64);
    match name {
        "COUNT" => Value::Int(values.len() as i64),
        "SUM" if values.is_empty() => Value::Null,
        "SUM" => num(numbers().sum()),
        "AVG" => {
            let n = numbers().count();
            if n == 0 {
                Value::Null
            } else {
                num(numbers().sum::<f64>() / n as f64)
            }
        }
        "MIN" => values
            .iter()
            .min_by(|a, b| super::eval::order(a, b))
            .cloned()
            .unwrap_or(Value::Null),
        _ => values
            .iter()
            .max_by(|a, b| super::eval::order(a, b))
            .cloned()
            .unwrap_or(Value::Null),
    }
}

fn arg(args: &[Value], i: usize) -> &Value {
    args.get(i).unwrap_or(&Value::Null)
}

fn math(args: &[Value], f: fn(f64) -> f64) -> Value {
    as_f64(arg(args, 0))
        .filter(|_| !matches!(arg(args, 0), Value::Null))
        .map_or(Value::Null, |x| num(f(x)))
}

/// JS `Math.round`: halves go up.
fn round(x: f64, places: i32) -> f64 {
    let p = 10f64.powi(places);
    (x * p + 0.5).floor() / p
}

/// A scalar function by (upper-case) name.
pub fn call(name: &str, args: Vec<Value>, now_ms: f64) -> Result<Value, SqlError> {
    let s = |i: usize| text(arg(&args, i));
    Ok(match name {
        "UPPER" | "UCASE" => null_or(&args, || Value::String(s(0).to_uppercase())),
        "LOWER" | "LCASE" => null_or(&args, || Value::String(s(0).to_lowercase())),
        "LENGTH" | "LEN" | "CHAR_LENGTH" => {
            null_or(&args, || Value::Int(s(0).chars().count() as i64))
        }
        "CONCAT" => Value::String(args.iter().map(text).collect()),
        "TRIM" => null_or(&args, || Value::String(s(0).trim().to_string())),
        "LTRIM" => null_or(&args, || Value::String(s(0).trim_start().to_string())),
        "RTRIM" => null_or(&args, || Value::String(s(0).trim_end().to_string())),
        "REPLACE" => null_or(&args, || Value::String(s(0).replace(&s(1), &s(2)))),
        "SUBSTRING" | "SUBSTR" | "MID" => substring(&args),
        "ABS" => math(&args, f64::abs),
        "FLOOR" => math(&args, f64::floor),
        "CEIL" | "CEILING" => math(&args, f64::ceil),
        "SQRT" => math(&args, f64::sqrt),
        "EXP" => math(&args, f64::exp),
        "LOG" => math(&args, f64::ln),
        "LOG10" => math(&args, f64::log10),
        "ROUND" => {
            let places = as_f64(arg(&args, 1)).unwrap_or(0.0) as i32;
            as_f64(arg(&args, 0))
                .filter(|_| !matches!(arg(&args, 0), Value::Null))
                .map_or(Value::Null, |x| num(round(x, places)))
        }
        "POWER" | "POW" => match (as_f64(arg(&args, 0)), as_f64(arg(&args, 1))) {
            (Some(a), Some(b)) => num(a.powf(b)),
            _ => Value::Null,
        },
        "RANDOM" | "RAND" => Value::Float(rand::random::<f64>()),
        "COALESCE" | "IFNULL" | "ISNULL" => args
            .into_iter()
            .find(|v| !matches!(v, Value::Null))
            .unwrap_or(Value::Null),
        "SEARCH_JSON" => super::jsonata::search_json(arg(&args, 0), arg(&args, 1))?,
        "NULLIF" => {
            if compare(arg(&args, 0), arg(&args, 1)) == Some(std::cmp::Ordering::Equal) {
                Value::Null
            } else {
                arg(&args, 0).clone()
            }
        }
        _ => {
            return super::geo::call(name, &args)
                .unwrap_or_else(|| super::dates::call(name, &args, now_ms))
        }
    })
}

/// NULL in → NULL out for one-argument string functions.
fn null_or(args: &[Value], f: impl FnOnce() -> Value) -> Value {
    if matches!(arg(args, 0), Value::Null) {
        Value::Null
    } else {
        f()
    }
}

/// SUBSTRING(s, start[, length]) with SQL's 1-based start.
fn substring(args: &[Value]) -> Value {
    if matches!(arg(args, 0), Value::Null) {
        return Value::Null;
    }
    let chars: Vec<char> = text(arg(args, 0)).chars().collect();
    let start = as_f64(arg(args, 1)).unwrap_or(1.0) as i64;
    let from = if start > 0 {
        (start - 1) as usize
    } else if start < 0 {
        chars.len().saturating_sub(start.unsigned_abs() as usize)
    } else {
        0
    };
    let len = match args.get(2) {
        Some(v) => as_f64(v).unwrap_or(0.0).max(0.0) as usize,
        None => usize::MAX,
    };
    Value::String(chars.iter().skip(from).take(len).collect())
}

/// Expressions `sqlparser` gives their own node: EXTRACT, CEIL/FLOOR, SUBSTRING, TRIM; the rest
/// answer 501.
pub fn special(e: &Expr, ctx: &Ctx<'_>) -> Result<Value, SqlError> {
    match e {
        Expr::Extract { field, expr, .. } => {
            let unit = match field {
                DateTimeField::Custom(i) => i.value.clone(),
                other => other.to_string(),
            };
            let v = eval(expr, ctx)?;
            super::dates::call("EXTRACT", &[v, Value::String(unit)], ctx.scope.now_ms)
        }
        Expr::Ceil { expr, field } | Expr::Floor { expr, field } => {
            let f: fn(f64) -> f64 = if matches!(e, Expr::Ceil { .. }) {
                f64::ceil
            } else {
                f64::floor
            };
            if !matches!(
                field,
                CeilFloorKind::DateTimeField(DateTimeField::NoDateTime)
            ) {
                return Err(SqlError::unsupported("CEIL/FLOOR with a second argument"));
            }
            Ok(math(&[eval(expr, ctx)?], f))
        }
        Expr::Substring {
            expr,
            substring_from,
            substring_for,
            ..
        } => {
            let mut args = vec![eval(expr, ctx)?];
            args.push(match substring_from {
                Some(f) => eval(f, ctx)?,
                None => Value::Int(1),
            });
            if let Some(n) = substring_for {
                args.push(eval(n, ctx)?);
            }
            Ok(substring(&args))
        }
        Expr::Trim {
            expr,
            trim_where: None,
            trim_what: None,
            trim_characters: None,
        } => call("TRIM", vec![eval(expr, ctx)?], ctx.scope.now_ms),
        Expr::Subquery(_) | Expr::InSubquery { .. } | Expr::Exists { .. } => {
            Err(SqlError::unsupported("a subquery"))
        }
        Expr::SimilarTo { .. } => Err(SqlError::unsupported("SIMILAR TO")),
        Expr::Cast { .. } => Err(SqlError::unsupported("CAST")),
        other => Err(SqlError::unsupported(format!("the expression '{other}'"))),
    }
}

/// Milliseconds since the epoch → (year, month, day, hour, minute, second, ms) in UTC.
pub fn fields(ms: i64) -> (i64, u32, u32, i64, i64, i64, i64) {
    let days = ms.div_euclid(86_400_000);
    let in_day = ms.rem_euclid(86_400_000);
    let (y, m, d) = civil_from_days(days);
    (
        y,
        m,
        d,
        in_day / 3_600_000,
        in_day / 60_000 % 60,
        in_day / 1000 % 60,
        in_day % 1000,
    )
}

/// (year, month, day, ms in the day) → ms since the epoch, months overflowing into years.
pub fn from_fields(year: i64, month: i64, day: u32, in_day: i64) -> i64 {
    let y = year + (month - 1).div_euclid(12);
    let m = (month - 1).rem_euclid(12) as u32 + 1;
    days_from_civil(y, m, day) * 86_400_000 + in_day
}

/// Compiled size a REGEXP pattern may reach (the `regex` crate's bound on its automaton).
pub const REGEXP_BYTES_MAX: usize = 1 << 20;

thread_local! {
    /// The last pattern compiled on this thread: a WHERE runs one pattern over many rows.
    static LAST_REGEXP: std::cell::RefCell<Option<(String, regex::Regex)>> =
        const { std::cell::RefCell::new(None) };
}

/// `s REGEXP pattern`: whether the pattern matches anywhere in `s`.
pub fn regexp(pattern: &str, s: &str) -> Result<bool, SqlError> {
    LAST_REGEXP.with(|last| {
        let mut last = last.borrow_mut();
        if last.as_ref().is_none_or(|(p, _)| p != pattern) {
            let re = regex::RegexBuilder::new(pattern)
                .size_limit(REGEXP_BYTES_MAX)
                .build()
                .map_err(|e| SqlError::bad(format!("bad REGEXP pattern: {e}")))?;
            *last = Some((pattern.to_string(), re));
        }
        Ok(last.as_ref().is_some_and(|(_, re)| re.is_match(s)))
    })
}
