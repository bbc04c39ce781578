//! Evaluation: a typed filter (`Filter`) tested against one record, and `select(...)` applied to
//! one record. Both work over [`ValueView`], so a record is tested and projected in place in the
//! memory map.
//!
//! A `Filter` is the query AST after its values were converted to the attributes' declared types
//! (that step needs the schema and lives in `resource::search`); this file still never reads the
//! schema or the store. The rules, shared with the index planner so an index scan and a filtered
//! scan agree on every record:
//! - A missing property reads as null: `attr=null` matches null or missing, `attr!=null` the rest.
//! - A property holding an array matches when the whole value or any element matches (arrays are
//!   indexed element by element), for every comparator except `!=`, which is "not `=`".
//! - Ranges (`<`, `<=`, `>`, `>=`, between) compare within one kind only — numbers (and dates),
//!   strings, booleans, bytes — in [`cmp_total`] order; null never satisfies a range.
//! - `=ct=` is a substring of a string or an element of an array; `=sw=`/`=ew=` apply to strings.
//! - Membership (`Filter::In`, what a condition through a relationship becomes once the related
//!   records are known) holds when the property, or any element of it, has one of the keys;
//!   missing and null never do (an inner join).

use std::cmp::Ordering;
use std::collections::BTreeSet;
use std::sync::Arc;

use super::ast::{Select, SelectItem};
use crate::value::{cmp_total, key, Kind, Object, Value, ValueView};

/// A typed boolean filter. `And(vec![])` matches everything.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    And(Vec<Filter>),
    Or(Vec<Filter>),
    Test(Test),
    In(Membership),
}

/// The property at `path` (or one of its elements) is one of `keys`, compared in the key
/// encoding (`value::key::encode`), so `3` and `3.0` are one key and values too long to be keys
/// never match.
#[derive(Debug, Clone, PartialEq)]
pub struct Membership {
    pub path: Vec<String>,
    /// Sorted, so a planner that drives an index through them reads it in order.
    pub keys: Arc<BTreeSet<Vec<u8>>>,
    /// Which join of its plan fills `keys`, and the relationship's name (for `explain`).
    pub join: usize,
    pub via: String,
}

impl Membership {
    pub fn matches<'a, V: ValueView<'a>>(&self, record: V) -> bool {
        let Some(found) = property(record, &self.path) else {
            return false;
        };
        let mut buf = Vec::with_capacity(32);
        let mut holds = |v: V| {
            buf.clear();
            key::encode(v, &mut buf).is_ok() && self.keys.contains(&buf)
        };
        match found.kind() {
            Kind::Null => false,
            Kind::Array(mut items) => items.any(holds),
            _ => holds(found),
        }
    }
}

/// What a [`Test`] checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Equal,
    NotEqual,
    Less,
    LessEqual,
    Greater,
    GreaterEqual,
    /// Inclusive `[value, high]`.
    Between,
    Contains,
    StartsWith,
    EndsWith,
}

/// One condition with its value already of the attribute's type.
#[derive(Debug, Clone, PartialEq)]
pub struct Test {
    /// Property path from the record's top level (`a` or `a.b` for nested objects).
    pub path: Vec<String>,
    pub op: Op,
    pub value: Value,
    /// Upper bound of `Between`; `Null` otherwise.
    pub high: Value,
}

impl Filter {
    /// Does `record` satisfy this filter?
    pub fn matches<'a, V: ValueView<'a>>(&self, record: V) -> bool {
        match self {
            Filter::And(children) => children.iter().all(|c| c.matches(record)),
            Filter::Or(children) => children.iter().any(|c| c.matches(record)),
            Filter::Test(test) => test.matches(record),
            Filter::In(membership) => membership.matches(record),
        }
    }
}

/// The kind class inside which ranges compare: numbers and dates share one.
fn class<'a, V: ValueView<'a>>(kind: &Kind<'a, V>) -> u8 {
    match kind {
        Kind::Null => 0,
        Kind::Bool(_) => 1,
        Kind::Int(_) | Kind::Float(_) | Kind::BigInt(_) | Kind::Date(_) => 2,
        Kind::String(_) => 3,
        Kind::Bytes(_) => 4,
        Kind::Array(_) => 5,
        Kind::Object(_) => 6,
    }
}

fn same_class<'a, V: ValueView<'a>>(a: V, b: &Value) -> bool {
    class(&a.kind()) == class(&b.kind())
}

/// The property at `path`, walking nested objects.
pub fn property<'a, V: ValueView<'a>>(record: V, path: &[String]) -> Option<V> {
    let mut at = record;
    for segment in path {
        at = at.get(segment)?;
    }
    Some(at)
}

impl Test {
    pub fn matches<'a, V: ValueView<'a>>(&self, record: V) -> bool {
        let found = property(record, &self.path);
        match self.op {
            Op::Equal => self.equal(found),
            Op::NotEqual => !self.equal(found),
            _ => match found {
                None => false,
                Some(v) => self.scalar_or_element(v),
            },
        }
    }

    fn equal<'a, V: ValueView<'a>>(&self, found: Option<V>) -> bool {
        match found {
            None => matches!(self.value, Value::Null),
            Some(v) => {
                cmp_total(v, &self.value) == Ordering::Equal
                    || match v.kind() {
                        Kind::Array(mut items) => {
                            items.any(|item| cmp_total(item, &self.value) == Ordering::Equal)
                        }
                        _ => false,
                    }
            }
        }
    }

    fn scalar_or_element<'a, V: ValueView<'a>>(&self, v: V) -> bool {
        if self.scalar(v) {
            return true;
        }
        match v.kind() {
            Kind::Array(mut items) => items.any(|item| self.scalar(item)),
            _ => false,
        }
    }

    fn scalar<'a, V: ValueView<'a>>(&self, v: V) -> bool {
        let in_range = |v: V, bound: &Value, ok: fn(Ordering) -> bool| {
            !matches!(bound, Value::Null) && same_class(v, bound) && ok(cmp_total(v, bound))
        };
        match self.op {
            Op::Equal | Op::NotEqual => cmp_total(v, &self.value) == Ordering::Equal,
            Op::Less => in_range(v, &self.value, Ordering::is_lt),
            Op::LessEqual => in_range(v, &self.value, Ordering::is_le),
            Op::Greater => in_range(v, &self.value, Ordering::is_gt),
            Op::GreaterEqual => in_range(v, &self.value, Ordering::is_ge),
            Op::Between => {
                in_range(v, &self.value, Ordering::is_ge)
                    && in_range(v, &self.high, Ordering::is_le)
            }
            Op::Contains => match (v.kind(), &self.value) {
                (Kind::String(s), Value::String(needle)) => s.contains(needle.as_str()),
                _ => cmp_total(v, &self.value) == Ordering::Equal,
            },
            Op::StartsWith => match (v.kind(), &self.value) {
                (Kind::String(s), Value::String(prefix)) => s.starts_with(prefix.as_str()),
                _ => false,
            },
            Op::EndsWith => match (v.kind(), &self.value) {
                (Kind::String(s), Value::String(suffix)) => s.ends_with(suffix.as_str()),
                _ => false,
            },
        }
    }
}

/// An owned copy of a viewed value (for projections; records themselves are never copied).
pub fn to_owned<'a, V: ValueView<'a>>(v: V) -> Value {
    match v.kind() {
        Kind::Null => Value::Null,
        Kind::Bool(b) => Value::Bool(b),
        Kind::Int(i) => Value::Int(i),
        Kind::Float(f) => Value::Float(f),
        Kind::BigInt(b) => Value::from_magnitude(b.negative, b.magnitude).unwrap_or(Value::Null),
        Kind::String(s) => Value::String(s.to_string()),
        Kind::Bytes(b) => Value::Bytes(b.to_vec()),
        Kind::Date(ms) => Value::Date(ms),
        Kind::Array(items) => Value::Array(items.map(to_owned).collect()),
        Kind::Object(entries) => {
            Value::Object(entries.map(|(k, v)| (k.to_string(), to_owned(v))).collect())
        }
    }
}

/// `select(...)` applied to one record: a bare value, an object with only the selected
/// properties (missing ones omitted), or an array of them (missing ones `null`).
pub fn project<'a, V: ValueView<'a>>(record: V, select: &Select) -> Value {
    match select {
        Select::Value(item) => record
            .get(&item.name)
            .map(|v| project_item(v, item))
            .unwrap_or(Value::Null),
        Select::Object(items) => Value::Object(project_object(record, items)),
        Select::Array(items) => Value::Array(
            items
                .iter()
                .map(|item| {
                    record
                        .get(&item.name)
                        .map(|v| project_item(v, item))
                        .unwrap_or(Value::Null)
                })
                .collect(),
        ),
    }
}

fn project_object<'a, V: ValueView<'a>>(record: V, items: &[SelectItem]) -> Object {
    items
        .iter()
        .filter_map(|item| {
            record
                .get(&item.name)
                .map(|v| (item.name.clone(), project_item(v, item)))
        })
        .collect()
}

/// A selected property; `name{x,y}` narrows a nested object (or each object of an array).
pub fn project_item<'a, V: ValueView<'a>>(v: V, item: &SelectItem) -> Value {
    match (&item.children, v.kind()) {
        (Some(children), Kind::Object(_)) => Value::Object(project_object(v, children)),
        (Some(children), Kind::Array(items)) => Value::Array(
            items
                .map(|element| match element.kind() {
                    Kind::Object(_) => Value::Object(project_object(element, children)),
                    _ => to_owned(element),
                })
                .collect(),
        ),
        _ => to_owned(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::json;

    fn test(path: &str, op: Op, value: &str) -> Filter {
        Filter::Test(Test {
            path: path.split('.').map(str::to_string).collect(),
            op,
            value: json::parse(value.as_bytes()).unwrap(),
            high: Value::Null,
        })
    }

    /// Which of `records` (JSON) match `filter`, as indexes.
    fn check(filter: Filter, records: &[&str], expected: &[usize]) {
        let got: Vec<usize> = records
            .iter()
            .enumerate()
            .filter(|(_, r)| filter.matches(&json::parse(r.as_bytes()).unwrap()))
            .map(|(i, _)| i)
            .collect();
        assert_eq!(got, expected, "{filter:?}");
    }

    const RECORDS: &[&str] = &[
        r#"{"name":"Rex","age":3,"tags":["a","b"]}"#,
        r#"{"name":"Bob","age":null}"#,
        r#"{"name":"Abba","age":"old","tags":"ab"}"#,
        r#"{"name":"Max","age":9.5,"n":{"x":1}}"#,
    ];

    #[test]
    fn comparators() {
        use Op::*;
        check(test("age", Equal, "null"), RECORDS, &[1]);
        check(test("color", Equal, "null"), RECORDS, &[0, 1, 2, 3]);
        check(test("age", NotEqual, "null"), RECORDS, &[0, 2, 3]);
        check(test("age", Less, "9.5"), RECORDS, &[0]);
        check(test("age", GreaterEqual, "3"), RECORDS, &[0, 3]);
        check(test("age", Greater, "\"a\""), RECORDS, &[2]);
        check(test("tags", Equal, "\"b\""), RECORDS, &[0]);
        check(test("tags", Contains, "\"b\""), RECORDS, &[0, 2]);
        check(test("name", StartsWith, "\"B\""), RECORDS, &[1]);
        check(test("name", EndsWith, "\"x\""), RECORDS, &[0, 3]);
        check(test("n.x", Equal, "1"), RECORDS, &[3]);
        check(
            Filter::Test(Test {
                path: vec!["age".into()],
                op: Between,
                value: Value::Int(3),
                high: Value::Int(9),
            }),
            RECORDS,
            &[0],
        );
        check(
            Filter::Or(vec![
                test("age", Equal, "3"),
                test("name", Equal, "\"Bob\""),
            ]),
            RECORDS,
            &[0, 1],
        );
        check(Filter::And(vec![]), RECORDS, &[0, 1, 2, 3]);
    }

    /// Membership in key-encoded values given as JSON.
    fn membership(path: &str, keys: &[&str]) -> Filter {
        let keys = keys
            .iter()
            .map(|k| {
                let mut out = Vec::new();
                key::encode(&json::parse(k.as_bytes()).unwrap(), &mut out).unwrap();
                out
            })
            .collect();
        Filter::In(Membership {
            path: path.split('.').map(str::to_string).collect(),
            keys: Arc::new(keys),
            join: 0,
            via: "rel".into(),
        })
    }

    #[test]
    fn memberships() {
        check(
            membership("name", &["\"Rex\"", "\"Bob\""]),
            RECORDS,
            &[0, 1],
        );
        check(membership("tags", &["\"b\""]), RECORDS, &[0]);
        check(membership("tags", &["\"ab\""]), RECORDS, &[2]);
        check(membership("age", &["9.5", "3.0"]), RECORDS, &[0, 3]);
        check(membership("age", &["null"]), RECORDS, &[]);
        check(membership("color", &["1"]), RECORDS, &[]);
        check(membership("n.x", &["1"]), RECORDS, &[3]);
        check(membership("name", &[]), RECORDS, &[]);
        check(
            Filter::Or(vec![
                membership("name", &["\"Max\""]),
                test("age", Op::Equal, "3"),
            ]),
            RECORDS,
            &[0, 3],
        );
    }

    #[test]
    fn projections() {
        let record = json::parse(br#"{"a":1,"b":{"x":2,"y":3},"c":[{"x":4,"z":5}]}"#).unwrap();
        let check = |query: &str, expected: &str| {
            let q = crate::query::parse(query).unwrap();
            let got = json::to_vec(&project(&record, q.select.as_ref().unwrap()));
            assert_eq!(String::from_utf8(got).unwrap(), expected, "{query}");
        };
        check("select(a)", "1");
        check("select(a,zz)", r#"{"a":1}"#);
        check("select([zz,a])", "[null,1]");
        check("select(b{x},c{x})", r#"{"b":{"x":2},"c":[{"x":4}]}"#);
    }
}
