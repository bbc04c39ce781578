//! Where SQL meets the tables: resolving names (404s as HarperDB answers them), reading records
//! (by primary key when the WHERE pins keys, else a bounded scan), and the role checks (read for
//! every table and attribute a SELECT names or implies by `*`; the write right for writes).

use std::sync::Arc;

use sqlparser::ast::{self, BinaryOperator, Expr, Query};

use super::eval::column_ref;
use super::parse::TableRef;
use super::rights::{self, Rights};
use super::{SqlError, TABLE_ROWS_MAX};
use crate::resource::permissions::Action;
use crate::resource::{Caller, Resources};
use crate::store::{Database, Table};
use crate::value::{self, Object, Value};

pub fn open(resources: &Resources, t: &TableRef) -> Result<(Arc<Database>, Arc<Table>), SqlError> {
    let db = resources.store.database(&t.database).ok_or_else(|| {
        SqlError::Status(404, format!("database '{}' does not exist", t.database))
    })?;
    let table = db.table(&t.table).ok_or_else(|| {
        SqlError::Status(
            404,
            format!("Table '{}.{}' does not exist", t.database, t.table),
        )
    })?;
    Ok((db, table))
}

/// [`open`] for a caller: a role that is not a super user learns of a missing database or table
/// as HarperDB tells it, a 403 with the reason in `invalid_schema_items`.
fn open_for(
    resources: &Resources,
    caller: &Caller,
    t: &TableRef,
) -> Result<(Arc<Database>, Arc<Table>), SqlError> {
    match open(resources, t) {
        Err(SqlError::Status(404, why))
            if !(caller.super_user || caller.permissions.super_user) =>
        {
            Err(SqlError::Forbidden(Vec::new(), vec![why]))
        }
        other => other,
    }
}

/// The attributes `*` stands for: primary key, the two stamps, then the others by name.
pub fn star_columns(table: &Table) -> Vec<String> {
    let pk = table.def.primary_key.as_deref();
    let mut first: Vec<String> = pk.map(str::to_string).into_iter().collect();
    let mut rest = Vec::new();
    for a in &table.def.attributes {
        if Some(a.name.as_str()) == pk {
            continue;
        }
        if matches!(a.name.as_str(), "__createdtime__" | "__updatedtime__") {
            first.push(a.name.clone());
        } else {
            rest.push(a.name.clone());
        }
    }
    rest.sort();
    first.extend(rest);
    first
}

/// Primary keys a WHERE pins (`pk = v`, `pk IN (…)`, under AND), each in the forms a loose
/// comparison would match; `None` when the WHERE does not pin them.
fn pinned_keys(filter: &Expr, pk: &str) -> Option<Vec<Value>> {
    let literal = |e: &Expr| -> Option<Vec<Value>> {
        let Expr::Value(v) = e else { return None };
        let text = match v {
            ast::Value::Number(s, _) | ast::Value::SingleQuotedString(s) => s.clone(),
            ast::Value::DoubleQuotedString(s) => s.clone(),
            _ => return None,
        };
        // A number literal matches numbers only (`id = 011` is 11, not '011'); a string
        // literal matches the string and the number it spells.
        let mut forms = Vec::new();
        if !matches!(v, ast::Value::Number(..)) {
            forms.push(Value::String(text.clone()));
        }
        if let Ok(f) = text.trim().parse::<f64>() {
            forms.push(super::eval::num(f));
            forms.push(Value::Float(f));
        }
        Some(forms)
    };
    let is_pk = |e: &Expr| column_ref(e).is_some_and(|(_, n)| n == pk);
    match filter {
        Expr::Nested(e) => pinned_keys(e, pk),
        Expr::BinaryOp {
            left,
            op: BinaryOperator::And,
            right,
        } => pinned_keys(left, pk).or_else(|| pinned_keys(right, pk)),
        Expr::BinaryOp {
            left,
            op: BinaryOperator::Eq,
            right,
        } if is_pk(left) => literal(right),
        Expr::BinaryOp {
            left,
            op: BinaryOperator::Eq,
            right,
        } if is_pk(right) => literal(left),
        Expr::InList {
            expr,
            list,
            negated: false,
        } if is_pk(expr) => {
            let mut all = Vec::new();
            for item in list {
                all.extend(literal(item)?);
            }
            Some(all)
        }
        _ => None,
    }
}

/// A conjunct `attr = 'text'` of the WHERE (under AND) whose loose SQL equality is exactly the
/// store's string equality (text that is neither a number nor `true`/`false`), on an indexed
/// attribute: a condition the search planner drives from the index.
fn indexed_condition(filter: &Expr, table: &Table) -> Option<crate::query::Expr> {
    match filter {
        Expr::Nested(e) => indexed_condition(e, table),
        Expr::BinaryOp {
            left,
            op: BinaryOperator::And,
            right,
        } => indexed_condition(left, table).or_else(|| indexed_condition(right, table)),
        Expr::BinaryOp {
            left,
            op: BinaryOperator::Eq,
            right,
        } => {
            let (col, lit) = match (column_ref(left), column_ref(right)) {
                (Some((_, c)), None) => (c, right),
                (None, Some((_, c))) => (c, left),
                _ => return None,
            };
            let Expr::Value(ast::Value::SingleQuotedString(text)) = lit.as_ref() else {
                return None;
            };
            let loose =
                text.trim().parse::<f64>().is_ok() || matches!(text.as_str(), "true" | "false");
            let indexed = table.def.attribute(col).is_some_and(|a| a.indexed);
            (indexed && !loose).then(|| {
                crate::query::Expr::Condition(crate::query::Condition {
                    path: vec![col.to_string()],
                    comparator: crate::query::Comparator::Equal,
                    value: crate::query::QueryValue::Json(serde_json::Value::String(text.clone())),
                })
            })
        }
        _ => None,
    }
}

/// The records an indexed condition finds, through the search planner; `None` when it cannot
/// plan (a value the attribute's type refuses), and the caller reads the table instead.
fn search_indexed(
    txn: &crate::store::ReadTxn<'_>,
    table: &Table,
    condition: &crate::query::Expr,
) -> Option<Vec<Object>> {
    let spec = crate::resource::search::SearchSpec {
        filter: Some(condition),
        allow_undeclared: !table.schema_defined,
        ..Default::default()
    };
    let plan = crate::resource::search::plan(table, &spec).ok()?;
    let mut out = Vec::new();
    let mut failed = false;
    let run = crate::resource::search::search(txn, table, &plan, &mut |_, record| {
        match value::deserialize(record.value) {
            Ok(Value::Object(o)) if out.len() < TABLE_ROWS_MAX => out.push(o),
            Ok(_) => {}
            Err(_) => failed = true,
        }
        std::ops::ControlFlow::Continue(())
    });
    (run.is_ok() && !failed && out.len() < TABLE_ROWS_MAX).then_some(out)
}

/// The records of `t` a statement needs (all, or those whose keys `filter` pins), and the
/// attributes `*` stands for (those the caller may read).
pub fn load(
    resources: &Resources,
    caller: &Caller,
    t: &TableRef,
    filter: Option<&Expr>,
) -> Result<(Vec<Object>, Vec<String>), SqlError> {
    let (db, table) = open(resources, t)?;
    let txn = db.read()?;
    let mut out = Vec::new();
    let mut push = |archived| -> Result<(), SqlError> {
        if out.len() >= TABLE_ROWS_MAX {
            return Err(SqlError::bad(format!(
                "the statement reads more than {TABLE_ROWS_MAX} records of '{}.{}'; narrow its WHERE",
                t.database, t.table
            )));
        }
        if let Value::Object(o) =
            value::deserialize(archived).map_err(|e| SqlError::Status(500, e.to_string()))?
        {
            out.push(o);
        }
        Ok(())
    };
    let keys = table
        .def
        .primary_key
        .as_deref()
        .zip(filter)
        .and_then(|(pk, f)| pinned_keys(f, pk));
    match keys {
        Some(keys) => {
            let mut seen: Vec<Vec<u8>> = Vec::new();
            for k in keys {
                if let Some(rec) = txn.get(&table, &k).ok().flatten() {
                    let bytes = value::json::to_vec(
                        &value::deserialize(rec.value)
                            .map_err(|e| SqlError::Status(500, e.to_string()))?,
                    );
                    if !seen.contains(&bytes) {
                        seen.push(bytes);
                        push(rec.value)?;
                    }
                }
            }
        }
        None => {
            let found = filter
                .and_then(|f| indexed_condition(f, &table))
                .and_then(|c| search_indexed(&txn, &table, &c));
            if let Some(mut found) = found {
                in_harperdb_row_order(&mut found, table.def.primary_key.as_deref(), filter);
                let columns = star(caller, t, &table, &found);
                return Ok((found, columns));
            }
            for item in txn.scan(&table, false)? {
                let (_, rec) = item?;
                push(rec.value)?;
            }
        }
    }
    in_harperdb_row_order(&mut out, table.def.primary_key.as_deref(), filter);
    let columns = star(caller, t, &table, &out);
    Ok((out, columns))
}

/// Puts a table's records in the order HarperDB's SQL sees them: it collects a table's records
/// in a JavaScript object keyed by primary key, and such an object lists keys that are array
/// indexes (the canonical decimal integers 0 to 2³² − 2, whether the key is a number or a string
/// that reads as one) first, in numeric order, then the other keys in the order they were read.
/// "Read" is primary-key order, or the order of the attribute whose index HarperDB searches
/// first ([`driving_attribute`]). Rows without `ORDER BY`, and the hashes SQL `UPDATE`/`DELETE`
/// answer, come out in that order (docs/operations-api.md, "SQL", "Row order").
fn in_harperdb_row_order(records: &mut [Object], primary_key: Option<&str>, filter: Option<&Expr>) {
    let Some(pk) = primary_key else {
        return;
    };
    // Both sorts are stable: `records` arrive in primary-key order.
    if let Some(attr) = filter.and_then(|f| driving_attribute(f, pk)) {
        records.sort_by(|a, b| {
            let (a, b) = (a.get(attr), b.get(attr));
            value::cmp_total(a.unwrap_or(&Value::Null), b.unwrap_or(&Value::Null))
        });
    }
    records.sort_by_key(|r| r.get(pk).and_then(array_index).unwrap_or(u64::MAX));
}

/// The attribute whose index HarperDB reads a table through for `filter`, as HarperDB 4.7.29
/// answers: the first conjunct of the WHERE's top-level ANDs, left to right, that compares a
/// column (on the left) with a literal decides; `=`, `<`, `<=`, `>` or `>=` on an attribute other
/// than the primary key means that attribute's index, anything else (the primary key, `<>`)
/// primary-key order. Conjuncts of other shapes (`v * 1 > 0`, `6 < v`, `BETWEEN`, `LIKE`, an
/// `OR`) are passed over.
fn driving_attribute<'f>(filter: &'f Expr, pk: &str) -> Option<&'f str> {
    let mut stack = vec![filter];
    while let Some(e) = stack.pop() {
        let (col, indexable) = match e {
            Expr::Nested(inner) => {
                stack.push(inner);
                continue;
            }
            Expr::BinaryOp {
                left,
                op: BinaryOperator::And,
                right,
            } => {
                stack.push(right);
                stack.push(left);
                continue;
            }
            Expr::BinaryOp { left, op, right } if matches!(right.as_ref(), Expr::Value(_)) => {
                let Some((_, col)) = column_ref(left) else {
                    continue;
                };
                let indexable = matches!(
                    op,
                    BinaryOperator::Eq
                        | BinaryOperator::Lt
                        | BinaryOperator::LtEq
                        | BinaryOperator::Gt
                        | BinaryOperator::GtEq
                );
                if !indexable && !matches!(op, BinaryOperator::NotEq) {
                    continue;
                }
                (col, indexable)
            }
            _ => continue,
        };
        return (indexable && col != pk).then_some(col);
    }
    None
}

/// The array index a primary key stands for as a JavaScript property name, if it is one.
fn array_index(key: &Value) -> Option<u64> {
    const MAX: u64 = u32::MAX as u64 - 1;
    let n = match key {
        Value::Int(n) => u64::try_from(*n).ok()?,
        // JavaScript names an integral float by its integer digits (`3.0` is "3"); `-0` is "0".
        Value::Float(f) if f.fract() == 0.0 && *f >= 0.0 && *f <= MAX as f64 => *f as u64,
        Value::String(s) => {
            let canonical = s == "0"
                || (!s.is_empty()
                    && s.len() <= 10
                    && !s.starts_with('0')
                    && s.bytes().all(|b| b.is_ascii_digit()));
            if !canonical {
                return None;
            }
            s.parse().ok()?
        }
        _ => return None,
    };
    (n <= MAX).then_some(n)
}

/// What `*` stands for over `records`: the table's attributes, then others the records have,
/// less what the caller may not read.
fn star(caller: &Caller, t: &TableRef, table: &Table, records: &[Object]) -> Vec<String> {
    let mut columns = star_columns(table);
    let mut extra: Vec<String> = Vec::new();
    for r in records {
        for (k, _) in r.iter() {
            if !columns.iter().any(|c| c == k) && !extra.iter().any(|c| c == k) {
                extra.push(k.to_string());
            }
        }
    }
    extra.sort();
    columns.extend(extra);
    if rights::trims(caller, &t.database, table) {
        columns.retain(|c| rights::readable(caller, &t.database, table, c));
        // Only the stamps readable: HarperDB shows nothing of such a table.
        if columns
            .iter()
            .all(|c| matches!(c.as_str(), "__createdtime__" | "__updatedtime__"))
        {
            columns.clear();
        }
    }
    columns
}

/// Checks a SELECT's read rights: each table, and every attribute it names (qualified to the
/// table, or unqualified and declared by it). `*` expands to what the role may read.
pub fn check_select(
    resources: &Resources,
    caller: &Caller,
    tables: &[TableRef],
    q: &Query,
) -> Result<(), SqlError> {
    let mut refs: Vec<(Option<String>, String)> = Vec::new();
    let _ = ast::visit_expressions(q, |e| {
        if let Some((qual, name)) = column_ref(e) {
            refs.push((qual.map(str::to_string), name.to_string()));
        }
        std::ops::ControlFlow::<()>::Continue(())
    });
    let mut rights = Rights::default();
    for t in tables {
        let (_, table) = open_for(resources, caller, t)?;
        let mine = |q: &str| q == t.alias || q.eq_ignore_ascii_case(&t.alias) || q == t.table;
        let names = refs.iter().filter_map(|(qual, name)| {
            let hit = match qual {
                Some(q) => mine(q),
                None => table.def.attribute(name).is_some(),
            };
            hit.then_some(name.as_str())
        });
        rights.check(caller, &t.database, &table, Action::Read, names);
    }
    rights.finish()
}

/// Whether the caller's reads of any of `tables` are trimmed to some attributes.
pub fn trimmed(resources: &Resources, caller: &Caller, tables: &[TableRef]) -> bool {
    tables.iter().any(|t| {
        open(resources, t).is_ok_and(|(_, table)| rights::trims(caller, &t.database, &table))
    })
}

/// HarperDB's refusal of writes to the system database through SQL.
pub const SYSTEM_WRITE: &str =
    "The 'system' database, tables and records are used internally by HarperDB and cannot be updated or removed.";

/// Checks `action` on `t` and the attributes a write sets.
pub fn check_write(
    resources: &Resources,
    caller: &Caller,
    t: &TableRef,
    action: Action,
    attributes: &[String],
) -> Result<Arc<Table>, SqlError> {
    if t.database == crate::resource::tables::SYSTEM {
        return Err(SqlError::Status(403, SYSTEM_WRITE.to_string()));
    }
    let (_, table) = open_for(resources, caller, t)?;
    let mut rights = Rights::default();
    rights.check(
        caller,
        &t.database,
        &table,
        action,
        attributes.iter().map(String::as_str),
    );
    rights.finish()?;
    Ok(table)
}
