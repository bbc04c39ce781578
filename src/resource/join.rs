//! Relationships (docs/applications.md `@relationship`, docs/rest.md): how a record of one table reaches records of
//! another, both ways. Forward — for `select(name,brand{name})` — a record's related records are
//! read by key (`from:`) or through the target's index on the `to:` attribute. Backward — for
//! `brand.name=Acme` — the search planner (`search.rs`) runs the condition on the related table
//! and turns each match into keys of this table's local attribute ([`Link::collect_remote`]),
//! which then drive this table by key or by index.
//!
//! The three shapes, as one [`Link`] (local attribute of this table, what it meets in the target):
//!
//! ```text
//! @relationship(from: fk)          local = fk          remote = the target's primary key
//! @relationship(to: fk)            local = primary key remote = target.fk (indexed)
//! @relationship(from: a, to: b)    local = a           remote = target.b
//! ```
//!
//! Related tables are looked up by type name in the same database; a relationship to a table of
//! another database answers 501. It reads only through the caller's read transaction, never
//! writes, and never encodes a response.

use std::collections::{BTreeSet, HashSet};
use std::fmt;
use std::ops::{Bound, ControlFlow};
use std::sync::Arc;

use super::search::SearchError;
use crate::query::{project_item, to_owned, Select, SelectItem};
use crate::schema::{AttributeDef, FieldType, TableDef};
use crate::store::{Database, ReadTxn, Record, Table};
use crate::value::{key, Kind, Object, Value, ValueView};

/// Relationships one condition may follow in a chain (`a.b.c.name`), and nesting levels of one
/// selection (`a{b{c{name}}}`); deeper → 400.
pub const JOIN_DEPTH_MAX: usize = 4;
/// Related keys one join condition collects at most; more → 400 (narrow the condition).
pub const JOIN_KEYS_MAX: usize = 100_000;
/// Related records one selected relationship returns per record at most; the rest are left out.
pub const RELATED_RECORDS_MAX: usize = 10_000;

/// What the local attribute's values are in the target table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Remote {
    /// The target's primary key.
    Key,
    /// A (normally indexed) attribute of the target.
    Attribute(String),
}

/// One relationship attribute bound to its target table.
#[derive(Clone)]
pub struct Link {
    /// The relationship attribute's name in this table.
    pub relationship: String,
    pub target: Arc<Table>,
    /// This table's attribute whose values (or elements) the target's `remote` holds.
    pub local: String,
    pub remote: Remote,
    /// Declared as a list (`[Brand]`): selected as an array; otherwise as one record.
    pub many: bool,
}

/// Two links are one when they join the same attributes of the same tables.
impl PartialEq for Link {
    fn eq(&self, other: &Link) -> bool {
        self.relationship == other.relationship
            && self.target.def.database == other.target.def.database
            && self.target.def.table == other.target.def.table
            && self.local == other.local
            && self.remote == other.remote
            && self.many == other.many
    }
}

impl fmt::Debug for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Link")
            .field("relationship", &self.relationship)
            .field("target", &self.target.def.table)
            .field("local", &self.local)
            .field("remote", &self.remote)
            .field("many", &self.many)
            .finish()
    }
}

/// The table type of `ty` (`Brand` or `[Brand]`) and whether it is a list.
fn target_type(ty: &FieldType) -> Option<(&str, bool)> {
    match ty {
        FieldType::Object(name) => Some((name, false)),
        FieldType::Array(element) => match element.as_ref() {
            FieldType::Object(name) => Some((name, true)),
            _ => None,
        },
        _ => None,
    }
}

/// The table of `db` declared by GraphQL type `type_name`.
fn table_of_type(db: &Database, type_name: &str) -> Option<Arc<Table>> {
    db.table_names()
        .iter()
        .filter_map(|name| db.table(name))
        .find(|t| t.def.type_name == type_name)
}

impl Link {
    /// Binds relationship attribute `attr` of `def` to its target table in `db`.
    pub fn new(db: &Database, def: &TableDef, attr: &AttributeDef) -> Result<Link, SearchError> {
        let name = &attr.name;
        let (Some(relationship), Some((type_name, many))) =
            (&attr.relationship, target_type(&attr.ty))
        else {
            return Err(SearchError::BadRequest(format!(
                "{name} is not a relationship"
            )));
        };
        let target = table_of_type(db, type_name).ok_or_else(|| {
            SearchError::Unsupported(format!(
                "The relationship {name} leads to {type_name}, which is not a table of database {}; \
                 relationships across databases are not supported",
                db.name
            ))
        })?;
        let (local, remote) = match (&relationship.from, &relationship.to) {
            (Some(from), None) => (from.clone(), Remote::Key),
            (Some(from), Some(to)) => (from.clone(), Remote::Attribute(to.clone())),
            (None, Some(to)) => match &def.primary_key {
                Some(key) => (key.clone(), Remote::Attribute(to.clone())),
                None => {
                    return Err(SearchError::BadRequest(format!(
                        "The relationship {name} needs a @primaryKey on {}",
                        def.type_name
                    )))
                }
            },
            (None, None) => {
                return Err(SearchError::BadRequest(format!(
                    "The relationship {name} names neither from: nor to:"
                )))
            }
        };
        Ok(Link {
            relationship: name.clone(),
            target,
            local,
            remote,
            many,
        })
    }

    /// Adds the keys of this table's local attribute that related record `record` (primary key
    /// `pk`, encoded) stands for.
    pub fn collect_remote(&self, pk: &[u8], record: &Record<'_>, keys: &mut BTreeSet<Vec<u8>>) {
        match &self.remote {
            Remote::Key => {
                keys.insert(pk.to_vec());
            }
            Remote::Attribute(attribute) => {
                each_key(record.value.get(attribute), |k| {
                    keys.insert(k.to_vec());
                });
            }
        }
    }

    /// The related records of `record`, in order (the local attribute's order, then the target
    /// index's), each once, at most `count_max`, until `each` breaks.
    pub fn related<'t, 'a, V: ValueView<'a>>(
        &self,
        txn: &'t ReadTxn<'_>,
        record: V,
        count_max: usize,
        each: &mut dyn FnMut(&Record<'t>) -> ControlFlow<()>,
    ) -> Result<(), SearchError> {
        let mut keys: Vec<Vec<u8>> = Vec::new();
        each_key(record.get(&self.local), |k| keys.push(k.to_vec()));
        let mut seen: HashSet<Vec<u8>> = HashSet::new();
        let mut count = 0usize;
        for k in &keys {
            match &self.remote {
                Remote::Key => {
                    if !seen.insert(k.clone()) {
                        continue;
                    }
                    if let Some(found) = txn.get_encoded(&self.target, k)? {
                        if each(&found).is_break() {
                            return Ok(());
                        }
                        count += 1;
                    }
                }
                Remote::Attribute(attribute) if self.target.indexed(attribute) => {
                    let point = Bound::Included(k.as_slice());
                    for entry in txn.index_range(&self.target, attribute, point, point, false)? {
                        let (_, pk) = entry?;
                        if !seen.insert(pk.to_vec()) {
                            continue;
                        }
                        if let Some(found) = txn.get_encoded(&self.target, pk)? {
                            if each(&found).is_break() {
                                return Ok(());
                            }
                            count += 1;
                        }
                        if count >= count_max {
                            return Ok(());
                        }
                    }
                }
                Remote::Attribute(attribute) => {
                    // An unindexed target attribute (the schema asks for an index; an
                    // ops-created table may lack one): a filtered scan.
                    for item in txn.scan(&self.target, false)? {
                        let (pk, found) = item?;
                        let mut hit = false;
                        each_key(found.value.get(attribute), |v| hit |= v == k.as_slice());
                        if hit && seen.insert(pk.to_vec()) {
                            if each(&found).is_break() {
                                return Ok(());
                            }
                            count += 1;
                        }
                        if count >= count_max {
                            return Ok(());
                        }
                    }
                }
            }
            if count >= count_max {
                break;
            }
        }
        Ok(())
    }
}

/// Calls `each` with the key encoding of `value`, or of each element when it is an array;
/// null, missing and values that cannot be keys give nothing.
fn each_key<'a, V: ValueView<'a>>(value: Option<V>, mut each: impl FnMut(&[u8])) {
    let Some(value) = value else {
        return;
    };
    let mut buf = Vec::with_capacity(32);
    let mut one = |v: V, buf: &mut Vec<u8>| {
        buf.clear();
        if !matches!(v.kind(), Kind::Null) && key::encode(v, buf).is_ok() {
            each(buf);
        }
    };
    match value.kind() {
        Kind::Array(items) => items.for_each(|v| one(v, &mut buf)),
        _ => one(value, &mut buf),
    }
}

// ---------------------------------------------------------------------------------------------
// Selection through relationships

/// A `select(...)` whose relationship items are bound to their tables; the others project as
/// [`crate::query::project`] does.
#[derive(Debug, Clone)]
pub struct Projection {
    shape: Shape,
    items: Vec<Item>,
    joins: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Value,
    Object,
    Array,
}

#[derive(Debug, Clone)]
struct Item {
    item: SelectItem,
    /// For a relationship: its link and the selection inside each related record (`None` =
    /// whole records).
    link: Option<(Link, Option<Vec<Item>>)>,
}

/// Removes from a related record of `def` what the caller may not read.
pub type Redact<'r> = dyn Fn(&TableDef, &mut Value) + 'r;

impl Projection {
    /// Binds `select` on table `def`; `db` is where related tables are found (`None`: selecting
    /// a relationship answers 501, as for callers that do not serve joins).
    pub fn new(
        db: Option<&Database>,
        def: &TableDef,
        select: &Select,
    ) -> Result<Projection, SearchError> {
        let (shape, items) = match select {
            Select::Value(item) => (Shape::Value, std::slice::from_ref(item)),
            Select::Object(items) => (Shape::Object, items.as_slice()),
            Select::Array(items) => (Shape::Array, items.as_slice()),
        };
        let items = bind_items(db, def, items, 0)?;
        let joins = items.iter().any(|i| i.link.is_some());
        Ok(Projection {
            shape,
            items,
            joins,
        })
    }

    /// Whether any selected item is a relationship (else `query::project` does the same work
    /// without a transaction).
    pub fn joins(&self) -> bool {
        self.joins
    }

    /// The selection applied to `record`, reading related records through `txn`.
    pub fn apply<'a, V: ValueView<'a>>(
        &self,
        txn: &ReadTxn<'_>,
        record: V,
        redact: &Redact<'_>,
    ) -> Result<Value, SearchError> {
        Ok(match self.shape {
            Shape::Value => match self.items.first() {
                Some(item) => item_value(txn, record, item, redact)?.unwrap_or(Value::Null),
                None => Value::Null,
            },
            Shape::Object => Value::Object(object_of(txn, record, &self.items, redact)?),
            Shape::Array => Value::Array(
                self.items
                    .iter()
                    .map(|item| Ok(item_value(txn, record, item, redact)?.unwrap_or(Value::Null)))
                    .collect::<Result<_, SearchError>>()?,
            ),
        })
    }
}

fn bind_items(
    db: Option<&Database>,
    def: &TableDef,
    items: &[SelectItem],
    depth: usize,
) -> Result<Vec<Item>, SearchError> {
    items
        .iter()
        .map(|item| {
            let link = match def.attribute(&item.name) {
                Some(attr) if attr.relationship.is_some() => {
                    let Some(db) = db else {
                        return Err(SearchError::Unsupported(format!(
                            "Selecting the relationship {} is not supported here",
                            item.name
                        )));
                    };
                    if depth >= JOIN_DEPTH_MAX {
                        return Err(SearchError::BadRequest(format!(
                            "select nests relationships more than {JOIN_DEPTH_MAX} deep"
                        )));
                    }
                    let link = Link::new(db, def, attr)?;
                    let children = match &item.children {
                        Some(children) => {
                            Some(bind_items(Some(db), &link.target.def, children, depth + 1)?)
                        }
                        None => None,
                    };
                    Some((link, children))
                }
                _ => None,
            };
            Ok(Item {
                item: item.clone(),
                link,
            })
        })
        .collect()
}

fn object_of<'a, V: ValueView<'a>>(
    txn: &ReadTxn<'_>,
    record: V,
    items: &[Item],
    redact: &Redact<'_>,
) -> Result<Object, SearchError> {
    let mut out = Object::new();
    for item in items {
        if let Some(v) = item_value(txn, record, item, redact)? {
            out.insert(item.item.name.as_str(), v);
        }
    }
    Ok(out)
}

/// One selected item of `record`; `None` when missing (left out of objects). A to-one
/// relationship with no related record is missing; a to-many one is an empty array.
fn item_value<'a, V: ValueView<'a>>(
    txn: &ReadTxn<'_>,
    record: V,
    item: &Item,
    redact: &Redact<'_>,
) -> Result<Option<Value>, SearchError> {
    let Some((link, children)) = &item.link else {
        return Ok(record
            .get(&item.item.name)
            .map(|v| project_item(v, &item.item)));
    };
    let mut related = Vec::new();
    let mut failed = None;
    let count_max = if link.many { RELATED_RECORDS_MAX } else { 1 };
    link.related(txn, record, count_max, &mut |found| {
        let projected = match children {
            None => Ok(to_owned(found.value)),
            Some(children) => object_of(txn, found.value, children, redact).map(Value::Object),
        };
        match projected {
            Ok(mut v) => {
                redact(&link.target.def, &mut v);
                related.push(v);
                ControlFlow::Continue(())
            }
            Err(e) => {
                failed = Some(e);
                ControlFlow::Break(())
            }
        }
    })?;
    if let Some(e) = failed {
        return Err(e);
    }
    Ok(if link.many {
        Some(Value::Array(related))
    } else {
        related.pop()
    })
}

/// The related tables a query reaches through `path` from `def` (for permission checks): each
/// with the attribute of it the path names next. Stops at the first non-relationship.
pub fn path_tables(db: &Database, def: &TableDef, path: &[String]) -> Vec<(Arc<Table>, String)> {
    let mut out = Vec::new();
    let mut current: Option<Arc<Table>> = None;
    for (index, segment) in path.iter().enumerate() {
        let here = current.as_ref().map_or(def, |t| &t.def);
        let Some(attr) = here.attribute(segment).filter(|a| a.relationship.is_some()) else {
            break;
        };
        let Ok(link) = Link::new(db, here, attr) else {
            break;
        };
        let next = path.get(index + 1).cloned().unwrap_or_default();
        out.push((link.target.clone(), next));
        current = Some(link.target);
        if out.len() > JOIN_DEPTH_MAX {
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::json;

    /// The keys `each_key` gives for a JSON value, decoded back to JSON.
    fn check(input: &str, expected: &str) {
        let value = json::parse(input.as_bytes()).unwrap();
        let mut got = Vec::new();
        each_key(Some(&value), |k| {
            let v = key::decode(k).unwrap();
            got.push(String::from_utf8(json::to_vec(&v)).unwrap());
        });
        assert_eq!(got.join(" "), expected, "{input}");
    }

    #[test]
    fn keys_of_local_values() {
        check("\"b1\"", "\"b1\"");
        check("3", "3");
        check("[\"f1\",2,null,\"f1\"]", "\"f1\" 2 \"f1\"");
        check("null", "");
        check("[]", "");
        check(&format!("\"{}\"", "x".repeat(300)), "");
        let mut missing = 0;
        each_key(None::<&Value>, |_| missing += 1);
        assert_eq!(missing, 0);
    }

    #[test]
    fn target_types() {
        let brand = FieldType::Object("Brand".into());
        for (ty, expected) in [
            (brand.clone(), Some(("Brand", false))),
            (FieldType::Array(Box::new(brand)), Some(("Brand", true))),
            (FieldType::Array(Box::new(FieldType::ID)), None),
            (FieldType::String, None),
        ] {
            assert_eq!(target_type(&ty), expected, "{ty:?}");
        }
    }
}
