//! TEMPORARY search evaluator for `search_by_value` and `search_by_conditions`: a full scan that
//! filters every record against the query AST. It exists only until the shared planner
//! (`resource::search`, REST issue) lands on main; then these two operations move onto it and
//! this file goes away. It uses no index, so its cost is one pass over the table per search.
//!
//! Semantics follow SPEC §4.3 and §3.3: numbers compare with numbers (a numeric string converts),
//! strings with strings; `contains`/`starts_with`/`ends_with` test strings; an array attribute
//! matches when any element does; missing and null match only `equals null`; sort puts null and
//! missing first, ties broken by key order.

use std::cmp::Ordering;

use super::decode::{from_json, SearchByConditions, SearchByValue};
use super::OpError;
use crate::query::{Comparator, Condition, Expr, QueryValue, SortKey};
use crate::resource::nosql::{for_each_record, project, search_table};
use crate::resource::Resources;
use crate::value::{self, Value};

fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Int(i) => Some(*i as f64),
        Value::Float(f) | Value::Date(f) => Some(*f),
        _ => None,
    }
}

/// Orders two scalars of comparable kinds; `None` when they are not comparable.
fn compare(record: &Value, wanted: &Value) -> Option<Ordering> {
    match (record, wanted) {
        (Value::String(a), Value::String(b)) => Some(a.as_str().cmp(b.as_str())),
        (Value::Bool(a), Value::Bool(b)) => Some(a.cmp(b)),
        (a, Value::String(s)) => {
            let a = number(a)?;
            let b: f64 = s.trim().parse().ok()?;
            a.partial_cmp(&b)
        }
        (a, b) => number(a)?.partial_cmp(&number(b)?),
    }
}

fn equals(record: &Value, wanted: &Value) -> bool {
    match (record, wanted) {
        (Value::Null, Value::Null) => true,
        (Value::Null, _) | (_, Value::Null) => false,
        (Value::String(a), b) if !matches!(b, Value::String(_)) => {
            // A numeric or boolean condition value against text compares as text.
            let text = value::json::to_vec(b);
            a.as_bytes() == text.as_slice()
        }
        (a, b) if matches!(a, Value::Array(_) | Value::Object(_)) => a == b,
        _ => compare(record, wanted) == Some(Ordering::Equal),
    }
}

fn text_test(record: &Value, wanted: &Value, test: fn(&str, &str) -> bool) -> bool {
    let wanted = match wanted {
        Value::String(s) => s.clone(),
        other => String::from_utf8_lossy(&value::json::to_vec(other)).into_owned(),
    };
    match record {
        Value::String(s) => test(s, &wanted),
        _ => false,
    }
}

fn scalar_matches(record: &Value, comparator: Comparator, wanted: &Value) -> bool {
    match comparator {
        Comparator::Equal => equals(record, wanted),
        Comparator::NotEqual => !equals(record, wanted),
        Comparator::Contains => text_test(record, wanted, |a, b| a.contains(b)),
        Comparator::StartsWith => text_test(record, wanted, |a, b| a.starts_with(b)),
        Comparator::EndsWith => text_test(record, wanted, |a, b| a.ends_with(b)),
        Comparator::Less => compare(record, wanted) == Some(Ordering::Less),
        Comparator::LessEqual => matches!(
            compare(record, wanted),
            Some(Ordering::Less | Ordering::Equal)
        ),
        Comparator::Greater => compare(record, wanted) == Some(Ordering::Greater),
        Comparator::GreaterEqual => matches!(
            compare(record, wanted),
            Some(Ordering::Greater | Ordering::Equal)
        ),
        Comparator::Between => match wanted {
            Value::Array(bounds) => match (bounds.first(), bounds.get(1)) {
                (Some(low), Some(high)) => {
                    matches!(
                        compare(record, low),
                        Some(Ordering::Greater | Ordering::Equal)
                    ) && matches!(
                        compare(record, high),
                        Some(Ordering::Less | Ordering::Equal)
                    )
                }
                _ => false,
            },
            _ => false,
        },
    }
}

fn lookup<'v>(record: &'v Value, path: &[String]) -> Option<&'v Value> {
    let mut node = record;
    for part in path {
        node = node.get(part)?;
    }
    Some(node)
}

fn condition_value(value: &QueryValue) -> Value {
    match value {
        QueryValue::Json(j) => from_json(j),
        QueryValue::Url { text, .. } => Value::String(text.clone()),
    }
}

fn condition_matches(record: &Value, condition: &Condition, wanted: &Value) -> bool {
    let found = lookup(record, &condition.path).unwrap_or(&Value::Null);
    match (found, condition.comparator) {
        // `not_equal` on an array holds when no element equals.
        (Value::Array(items), Comparator::NotEqual) => !items.iter().any(|i| equals(i, wanted)),
        (Value::Array(items), c)
            if !matches!(wanted, Value::Array(_)) || c == Comparator::Between =>
        {
            items.iter().any(|i| scalar_matches(i, c, wanted)) || scalar_matches(found, c, wanted)
        }
        (v, c) => scalar_matches(v, c, wanted),
    }
}

/// The filter with each condition's value converted once.
enum Compiled {
    And(Vec<Compiled>),
    Or(Vec<Compiled>),
    Test(Condition, Value),
}

fn compile(expr: &Expr) -> Compiled {
    match expr {
        Expr::And(items) => Compiled::And(items.iter().map(compile).collect()),
        Expr::Or(items) => Compiled::Or(items.iter().map(compile).collect()),
        Expr::Condition(c) => Compiled::Test(c.clone(), condition_value(&c.value)),
    }
}

fn eval(expr: &Compiled, record: &Value) -> bool {
    match expr {
        Compiled::And(items) => items.iter().all(|e| eval(e, record)),
        Compiled::Or(items) => items.iter().any(|e| eval(e, record)),
        Compiled::Test(c, v) => condition_matches(record, c, v),
    }
}

fn sort_records(records: &mut [Value], keys: &[SortKey]) {
    // Stable: equal keys keep the scan's (primary key) order.
    records.sort_by(|a, b| {
        for key in keys {
            let x = lookup(a, &key.path).filter(|v| !matches!(v, Value::Null));
            let y = lookup(b, &key.path).filter(|v| !matches!(v, Value::Null));
            let order = match (x, y) {
                (None, None) => Ordering::Equal,
                (None, Some(_)) => Ordering::Less,
                (Some(_), None) => Ordering::Greater,
                (Some(x), Some(y)) => x.cmp_total(y),
            };
            let order = if key.descending {
                order.reverse()
            } else {
                order
            };
            if order != Ordering::Equal {
                return order;
            }
        }
        Ordering::Equal
    });
}

/// Scans the table, keeps records passing `keep`, sorts, pages and projects.
#[allow(clippy::too_many_arguments)]
fn run(
    resources: &Resources,
    database: &str,
    table: &str,
    descending: bool,
    keep: impl Fn(&Value) -> bool,
    sort: &[SortKey],
    offset: u64,
    limit: Option<u64>,
    attributes: Option<&[String]>,
) -> Result<Vec<Value>, OpError> {
    let (db, t) = search_table(resources, database, table)?;
    // Without a sort the scan can stop once the page is full.
    let wanted = match (sort.is_empty(), limit) {
        (true, Some(l)) => Some(offset.saturating_add(l)),
        _ => None,
    };
    let mut out: Vec<Value> = Vec::new();
    let mut failure: Option<String> = None;
    for_each_record(&db, &t, descending, |archived| {
        match value::deserialize(archived) {
            Ok(record) => {
                if keep(&record) {
                    out.push(record);
                }
            }
            Err(e) => {
                failure = Some(e.to_string());
                return false;
            }
        }
        wanted.is_none_or(|w| (out.len() as u64) < w)
    })?;
    if let Some(e) = failure {
        return Err(OpError::new(500, e));
    }
    if !sort.is_empty() {
        sort_records(&mut out, sort);
    }
    let start = usize::try_from(offset).unwrap_or(usize::MAX);
    let take = limit
        .map(|l| usize::try_from(l).unwrap_or(usize::MAX))
        .unwrap_or(usize::MAX);
    Ok(out
        .into_iter()
        .skip(start)
        .take(take)
        .map(|r| project(r, attributes))
        .collect())
}

pub fn by_conditions(
    resources: &Resources,
    search: &SearchByConditions,
) -> Result<Vec<Value>, OpError> {
    let filter = compile(&search.filter);
    run(
        resources,
        &search.database,
        &search.table,
        false,
        |r| eval(&filter, r),
        &search.sort,
        search.offset,
        search.limit,
        search.get_attributes.as_deref(),
    )
}

/// `*` all; `abc*` starts with; `*abc` ends with; `*abc*` contains; else equality.
pub fn by_value(resources: &Resources, search: &SearchByValue) -> Result<Vec<Value>, OpError> {
    let path = vec![search.attribute.clone()];
    let (comparator, wanted) = match &search.value {
        Value::String(s) if s == "*" => (None, Value::Null),
        Value::String(s) if s.len() > 2 && s.starts_with('*') && s.ends_with('*') => (
            Some(Comparator::Contains),
            Value::String(s[1..s.len() - 1].to_string()),
        ),
        Value::String(s) if s.len() > 1 && s.ends_with('*') => (
            Some(Comparator::StartsWith),
            Value::String(s[..s.len() - 1].to_string()),
        ),
        Value::String(s) if s.len() > 1 && s.starts_with('*') => (
            Some(Comparator::EndsWith),
            Value::String(s[1..].to_string()),
        ),
        other => (Some(Comparator::Equal), other.clone()),
    };
    let keep = |record: &Value| match comparator {
        None => true,
        Some(comparator) => {
            let condition = Condition {
                path: path.clone(),
                comparator,
                value: QueryValue::Json(serde_json::Value::Null),
            };
            condition_matches(record, &condition, &wanted)
        }
    };
    run(
        resources,
        &search.database,
        &search.table,
        search.desc,
        keep,
        &[],
        search.offset,
        search.limit,
        search.get_attributes.as_deref(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(record: &str, conditions: &str, expected: bool) {
        let record = value::json::parse(record.as_bytes()).expect("record JSON");
        let conditions: serde_json::Value = serde_json::from_str(conditions).expect("conditions");
        let expr = crate::query::conditions_from_json(&conditions, crate::query::Logic::And)
            .expect("conditions parse");
        assert_eq!(
            eval(&compile(&expr), &record),
            expected,
            "{record:?} against {conditions}"
        );
    }

    #[test]
    fn comparators() {
        let dog = r#"{"id": 1, "name": "Rex", "age": 5, "tags": ["a", "b"], "n": null}"#;
        check(dog, r#"[{"attribute":"name","value":"Rex"}]"#, true);
        check(
            dog,
            r#"[{"attribute":"name","comparator":"not_equal","value":"Rex"}]"#,
            false,
        );
        check(
            dog,
            r#"[{"attribute":"age","comparator":"greater_than","value":4}]"#,
            true,
        );
        check(
            dog,
            r#"[{"attribute":"age","comparator":"greater_than","value":"4"}]"#,
            true,
        );
        check(
            dog,
            r#"[{"attribute":"age","comparator":"less_than_equal","value":5}]"#,
            true,
        );
        check(
            dog,
            r#"[{"attribute":"age","comparator":"less_than","value":5}]"#,
            false,
        );
        check(
            dog,
            r#"[{"attribute":"age","comparator":"between","value":[5,9]}]"#,
            true,
        );
        check(
            dog,
            r#"[{"attribute":"age","comparator":"between","value":[6,9]}]"#,
            false,
        );
        check(
            dog,
            r#"[{"attribute":"name","comparator":"starts_with","value":"R"}]"#,
            true,
        );
        check(
            dog,
            r#"[{"attribute":"name","comparator":"ends_with","value":"x"}]"#,
            true,
        );
        check(
            dog,
            r#"[{"attribute":"name","comparator":"contains","value":"e"}]"#,
            true,
        );
        check(dog, r#"[{"attribute":"tags","value":"b"}]"#, true);
        check(
            dog,
            r#"[{"attribute":"tags","comparator":"not_equal","value":"b"}]"#,
            false,
        );
        check(dog, r#"[{"attribute":"missing","value":null}]"#, true);
        check(dog, r#"[{"attribute":"n","value":null}]"#, true);
        check(
            dog,
            r#"[{"attribute":"missing","comparator":"greater_than","value":1}]"#,
            false,
        );
        check(
            dog,
            r#"[{"operator":"or","conditions":[{"attribute":"age","value":1},{"attribute":"name","value":"Rex"}]}]"#,
            true,
        );
        check(
            dog,
            r#"[{"attribute":"age","value":5},{"attribute":"name","value":"Max"}]"#,
            false,
        );
    }
}
