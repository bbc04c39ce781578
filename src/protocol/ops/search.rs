//! `search_by_value` and `search_by_conditions` (docs/operations-api.md) on the shared planner and executor
//! (`resource::search`), the same one REST collections use: indexes drive the search, values
//! convert to the declared types, and an attribute a schema table does not declare is a 404
//! `<name> is not a defined attribute`. Tables created through the Operations API accept any
//! attribute; one no record has matches nothing (only `equals null`).
//!
//! Two steps, so no read transaction lives across an `.await`: `by_value`/`by_conditions` check
//! the request and plan it into a [`Prepared`] search (no transaction); the envelope then calls
//! [`Prepared::write`], which opens one read transaction, encodes every record into the response
//! body as the executor hands it over (never collecting the result), and closes it again.
//!
//! `search_by_value` patterns: `*` every record; `abc*` starts with; `*abc` ends with; `*abc*`
//! contains; anything else is equality, with the value converted to the attribute's declared
//! type. On an untyped attribute (`Any`, or undeclared) a text that reads as a number or boolean
//! matches both spellings (`"5"` finds `5` and `"5"`), and so does a number or boolean (`5` finds
//! `"5"`). Order: `*` is primary key order; otherwise the order of the access path (the
//! attribute's index, or primary key order when the planner scans). `desc: true` orders by
//! primary key descending, except where the attribute's index drives the search: there it orders
//! by the attribute, then the primary key, both descending (the index order reversed).
//!
//! Tidepool extension: `"explain": true` on either operation answers
//! `{"plan", "index", "records_visited", "index_entries", "returned"}` (the plan as text, the
//! index it drives from or `null`, and what running it touched) instead of the records — the
//! same document as REST's `?explain`.

use std::ops::ControlFlow;
use std::sync::Arc;

use super::decode::{to_json, SearchByConditions, SearchByValue};
use super::{OpError, ReplyType};
use crate::query::{Comparator, Condition, Expr, QueryValue, Select, SelectItem, SortKey};
use crate::resource::nosql::search_table;
use crate::resource::search::{self, Plan, SearchError, SearchSpec, SearchStats};
use crate::resource::Resources;
use crate::resource::{Database, Table};
use crate::schema::FieldType;
use crate::value::{cbor, json, msgpack, Object, Value, ValueView};

/// A planned search, ready to run into a response body.
pub struct Prepared {
    db: Arc<Database>,
    table: Arc<Table>,
    plan: Plan,
    /// `get_attributes`: `None` returns each record whole.
    attributes: Option<Select>,
    explain: bool,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("database", &self.table.def.database)
            .field("table", &self.table.def.table)
            .field("plan", &self.plan.to_string())
            .field("attributes", &self.attributes)
            .field("explain", &self.explain)
            .finish()
    }
}

/// Two prepared searches are equal when they would read the same table the same way.
impl PartialEq for Prepared {
    fn eq(&self, other: &Self) -> bool {
        self.table.def.database == other.table.def.database
            && self.table.def.table == other.table.def.table
            && self.plan == other.plan
            && self.attributes == other.attributes
            && self.explain == other.explain
    }
}

fn search_error(e: SearchError) -> OpError {
    OpError::new(e.status(), e.to_string())
}

/// The table of a search and whether it takes undeclared attributes (ops-created tables do;
/// tables from a schema file do not).
fn open(resources: &Resources, database: &str, table: &str) -> Result<Opened, OpError> {
    let (db, table) = search_table(resources, database, table)?;
    let allow_undeclared = table.def.location.is_none();
    Ok(Opened {
        db,
        table,
        allow_undeclared,
    })
}

struct Opened {
    db: Arc<Database>,
    table: Arc<Table>,
    allow_undeclared: bool,
}

impl Opened {
    fn plan(&self, spec: SearchSpec<'_>) -> Result<Plan, OpError> {
        search::plan(
            &self.table,
            &SearchSpec {
                allow_undeclared: self.allow_undeclared,
                ..spec
            },
        )
        .map_err(search_error)
    }

    fn prepare(self, plan: Plan, attributes: Option<&[String]>, explain: bool) -> Prepared {
        Prepared {
            db: self.db,
            table: self.table,
            plan,
            attributes: attributes.map(|names| {
                Select::Object(
                    names
                        .iter()
                        .map(|name| SelectItem {
                            name: name.clone(),
                            children: None,
                        })
                        .collect(),
                )
            }),
            explain,
        }
    }
}

/// What a `search_by_value` value asks for.
#[derive(Debug, Clone, PartialEq)]
enum Pattern {
    All,
    StartsWith(String),
    EndsWith(String),
    Contains(String),
    Equal(Value),
}

fn pattern(value: &Value) -> Pattern {
    let Value::String(text) = value else {
        return Pattern::Equal(value.clone());
    };
    if text == "*" {
        return Pattern::All;
    }
    match (text.strip_prefix('*'), text.strip_suffix('*')) {
        (Some(rest), Some(_)) => {
            Pattern::Contains(rest.strip_suffix('*').unwrap_or(rest).to_string())
        }
        (None, Some(prefix)) => Pattern::StartsWith(prefix.to_string()),
        (Some(suffix), None) => Pattern::EndsWith(suffix.to_string()),
        (None, None) => Pattern::Equal(value.clone()),
    }
}

fn condition(attribute: &str, comparator: Comparator, value: QueryValue) -> Expr {
    Expr::Condition(Condition {
        path: vec![attribute.to_string()],
        comparator,
        value,
    })
}

/// Equality with type conversion. A typed attribute converts the value itself (in the planner);
/// an untyped one is asked for every spelling the value has.
fn equal_filter(attribute: &str, wanted: &Value, untyped: bool) -> Expr {
    let exact = condition(
        attribute,
        Comparator::Equal,
        QueryValue::Json(to_json(wanted)),
    );
    if !untyped {
        return exact;
    }
    let other = match wanted {
        // Read as URL text does on untyped attributes: canonical numbers and booleans convert.
        Value::String(text)
            if text == "true"
                || text == "false"
                || crate::resource::canonical_number(text).is_some() =>
        {
            QueryValue::Url {
                text: text.clone(),
                hint: crate::query::ValueHint::Untyped,
                strict: false,
            }
        }
        Value::Int(_) | Value::Float(_) | Value::BigInt(_) | Value::Bool(_) => QueryValue::Json(
            serde_json::Value::String(String::from_utf8_lossy(&json::to_vec(wanted)).into_owned()),
        ),
        _ => return exact,
    };
    Expr::Or(vec![exact, condition(attribute, Comparator::Equal, other)])
}

/// Plans a `search_by_value`.
pub fn by_value(resources: &Resources, search: &SearchByValue) -> Result<Prepared, OpError> {
    let opened = open(resources, &search.database, &search.table)?;
    let def = &opened.table.def;
    let attribute = search.attribute.as_str();
    let declared = def.attribute(attribute);
    let untyped = declared.is_none_or(|a| matches!(a.ty, FieldType::Any));
    let text = |comparator, s: &str| {
        condition(
            attribute,
            comparator,
            QueryValue::Json(serde_json::Value::String(s.to_string())),
        )
    };
    let filter = match pattern(&search.value) {
        Pattern::All => {
            // No condition reaches the planner, so the attribute is checked here, as it would be.
            if declared.is_none() && !opened.allow_undeclared {
                return Err(OpError::new(
                    404,
                    format!("{attribute} is not a defined attribute"),
                ));
            }
            None
        }
        Pattern::StartsWith(s) => Some(text(Comparator::StartsWith, &s)),
        Pattern::EndsWith(s) => Some(text(Comparator::EndsWith, &s)),
        Pattern::Contains(s) => Some(text(Comparator::Contains, &s)),
        Pattern::Equal(v) => Some(equal_filter(attribute, &v, untyped)),
    };
    let spec = SearchSpec {
        filter: filter.as_ref(),
        sort: &[],
        offset: search.offset,
        limit: search.limit,
        allow_undeclared: opened.allow_undeclared,
    };
    let mut plan = opened.plan(spec)?;
    if search.desc {
        let key = |name: &str| SortKey {
            path: vec![name.to_string()],
            descending: true,
        };
        let primary_key = def.primary_key.as_deref();
        let mut sort = Vec::with_capacity(2);
        if plan.index() == Some(attribute) || primary_key.is_none() {
            sort.push(key(attribute));
        }
        if let Some(pk) = primary_key.filter(|pk| *pk != attribute || sort.is_empty()) {
            sort.push(key(pk));
        }
        plan = opened.plan(SearchSpec {
            sort: &sort,
            ..spec
        })?;
    }
    Ok(opened.prepare(plan, search.get_attributes.as_deref(), search.explain))
}

/// Plans a `search_by_conditions`.
pub fn by_conditions(
    resources: &Resources,
    search: &SearchByConditions,
) -> Result<Prepared, OpError> {
    conditions(resources, search, false)
}

/// Plans `get_analytics`' search of `system.hdb_analytics`, whose conditions may name any
/// attribute a row has (HarperDB's `allowConditionsOnDynamicAttributes`).
pub fn analytics(resources: &Resources, search: &SearchByConditions) -> Result<Prepared, OpError> {
    conditions(resources, search, true)
}

fn conditions(
    resources: &Resources,
    search: &SearchByConditions,
    any_attribute: bool,
) -> Result<Prepared, OpError> {
    let mut opened = open(resources, &search.database, &search.table)?;
    opened.allow_undeclared |= any_attribute;
    let plan = opened.plan(SearchSpec {
        filter: Some(&search.filter),
        sort: &search.sort,
        offset: search.offset,
        limit: search.limit,
        allow_undeclared: opened.allow_undeclared,
    })?;
    Ok(opened.prepare(plan, search.get_attributes.as_deref(), search.explain))
}

/// A response array written one item at a time, in the reply's encoding.
struct ArrayWriter {
    ty: ReplyType,
    count: u32,
    /// Where MessagePack's element count goes once it is known.
    count_at: usize,
}

impl ArrayWriter {
    fn start(ty: ReplyType, out: &mut Vec<u8>) -> Self {
        let count_at = out.len();
        match ty {
            ReplyType::Json => out.push(b'['),
            ReplyType::Cbor => cbor::write_indefinite_array_start(out),
            // array 32 with its count patched in at the end: the count is not known yet.
            ReplyType::MsgPack => out.extend_from_slice(&[0xdd, 0, 0, 0, 0]),
        }
        ArrayWriter {
            ty,
            count: 0,
            count_at,
        }
    }

    /// Writes one item; `Break` once the array holds as many items as MessagePack can count.
    fn item<'a, V: ValueView<'a>>(&mut self, v: V, out: &mut Vec<u8>) -> ControlFlow<()> {
        match self.ty {
            ReplyType::Json => {
                if self.count > 0 {
                    out.push(b',');
                }
                json::write(v, out);
            }
            ReplyType::Cbor => cbor::write(v, out),
            ReplyType::MsgPack => msgpack::write(v, out),
        }
        self.count += 1;
        if self.count == u32::MAX {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    }

    fn finish(self, out: &mut Vec<u8>) {
        match self.ty {
            ReplyType::Json => out.push(b']'),
            ReplyType::Cbor => cbor::write_break(out),
            ReplyType::MsgPack => {
                let at = self.count_at + 1;
                if let Some(slot) = out.get_mut(at..at + 4) {
                    slot.copy_from_slice(&self.count.to_be_bytes());
                }
            }
        }
    }
}

fn write_value(v: &Value, ty: ReplyType, out: &mut Vec<u8>) {
    match ty {
        ReplyType::Json => json::write(v, out),
        ReplyType::Cbor => cbor::write(v, out),
        ReplyType::MsgPack => msgpack::write(v, out),
    }
}

impl Prepared {
    /// Runs the search in one read transaction, replacing `out` with the array of matches (or,
    /// with `explain`, the plan and its statistics). Never awaits.
    pub fn write(&self, ty: ReplyType, out: &mut Vec<u8>) -> Result<(), OpError> {
        out.clear();
        if self.explain {
            let stats = search::run(&self.db, &self.table, &self.plan, &mut |_, _| {
                ControlFlow::Continue(())
            })
            .map_err(search_error)?;
            write_value(&self.explanation(stats), ty, out);
            return Ok(());
        }
        let mut array = ArrayWriter::start(ty, out);
        let result = search::run(
            &self.db,
            &self.table,
            &self.plan,
            &mut |_, record| match &self.attributes {
                Some(select) => array.item(&crate::query::project(record.value, select), out),
                None => array.item(record.value, out),
            },
        );
        if let Err(e) = result {
            out.clear();
            return Err(search_error(e));
        }
        array.finish(out);
        Ok(())
    }

    fn explanation(&self, stats: SearchStats) -> Value {
        let mut o = Object::new();
        o.insert("plan", Value::String(self.plan.to_string()));
        o.insert(
            "index",
            self.plan
                .index()
                .map_or(Value::Null, |i| Value::String(i.to_string())),
        );
        let count = |n: u64| Value::Int(i64::try_from(n).unwrap_or(i64::MAX));
        o.insert("records_visited", count(stats.records_visited));
        o.insert("index_entries", count(stats.index_entries));
        o.insert("returned", count(stats.returned));
        Value::Object(o)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(value: Value, expected: Pattern) {
        assert_eq!(pattern(&value), expected, "{value:?}");
    }

    #[test]
    fn value_patterns() {
        let s = |t: &str| Value::String(t.to_string());
        check(s("*"), Pattern::All);
        check(s("Rex*"), Pattern::StartsWith("Rex".into()));
        check(s("*ex"), Pattern::EndsWith("ex".into()));
        check(s("*e*"), Pattern::Contains("e".into()));
        check(s("**"), Pattern::Contains(String::new()));
        check(s("ü*"), Pattern::StartsWith("ü".into()));
        check(s("Rex"), Pattern::Equal(s("Rex")));
        check(s(""), Pattern::Equal(s("")));
        check(Value::Int(5), Pattern::Equal(Value::Int(5)));
    }
}
