//! INSERT, UPDATE and DELETE through `nosql::write_records`, the NoSQL operations' own write
//! path (validation, coercion, audit, change events, replication), answered in HarperDB's
//! shapes: `{"message":"inserted 2 of 2 records","inserted_hashes":[…],"skipped_hashes":[]}`.

use super::eval::{eval, truthy, Ctx, Scope};
use super::parse::{Delete, Insert, TableRef, Update};
use super::{access, SqlError};
use crate::resource::nosql::{self, PutKind, RecordWrite, WriteSummary};
use crate::resource::permissions::Action;
use crate::resource::{Caller, Resources};
use crate::value::{Object, Value};

fn check_names(names: &[String]) -> Result<(), SqlError> {
    if names.iter().any(|n| n.contains('/') || n.contains('`')) {
        return Err(SqlError::bad(
            "Attribute names cannot include backticks or forward slashes",
        ));
    }
    Ok(())
}

fn answer(message: String, key: &str, summary: WriteSummary) -> Value {
    let mut o = Object::new();
    o.insert("message", Value::String(message));
    o.insert(key, Value::Array(summary.done));
    o.insert("skipped_hashes", Value::Array(summary.skipped));
    Value::Object(o)
}

async fn put(
    resources: &Resources,
    caller: &Caller,
    t: &TableRef,
    kind: PutKind,
    records: Vec<Object>,
) -> Result<Value, SqlError> {
    let summary = if records.is_empty() {
        WriteSummary::default()
    } else {
        let w = RecordWrite::Put {
            kind,
            table: t.table.clone(),
            records,
        };
        let (_, mut s) = nosql::write_records(resources, caller, &t.database, vec![w]).await?;
        s.pop().unwrap_or_default()
    };
    let (verb, key) = match kind {
        PutKind::Update => ("updated", "update_hashes"),
        _ => ("inserted", "inserted_hashes"),
    };
    let total = summary.done.len() + summary.skipped.len();
    let message = format!("{verb} {} of {total} records", summary.done.len());
    Ok(answer(message, key, summary))
}

pub async fn insert(
    resources: &Resources,
    caller: &Caller,
    i: &Insert,
    now_ms: f64,
) -> Result<Value, SqlError> {
    check_names(&i.columns)?;
    access::check_write(resources, caller, &i.table, Action::Insert, &i.columns)?;
    let scope = Scope {
        tables: &[],
        data: &[],
        now_ms,
    };
    let ctx = Ctx {
        scope: &scope,
        row: &[],
        group: None,
        output: None,
    };
    let mut records = Vec::with_capacity(i.rows.len());
    for row in &i.rows {
        let mut o = Object::with_capacity(row.len());
        for (name, e) in i.columns.iter().zip(row) {
            o.insert(name.clone(), eval(e, &ctx)?);
        }
        records.push(o);
    }
    put(resources, caller, &i.table, PutKind::Insert, records).await
}

/// Calls `f` with each record of `t` and the context that evaluates expressions on it.
fn each_row(
    t: &TableRef,
    records: Vec<Object>,
    now_ms: f64,
    mut f: impl FnMut(&Ctx<'_>, &Object) -> Result<(), SqlError>,
) -> Result<(), SqlError> {
    let tables = [t.clone()];
    let data = [records];
    let scope = Scope {
        tables: &tables,
        data: &data,
        now_ms,
    };
    for (i, record) in data[0].iter().enumerate() {
        let row = [Some(i)];
        let ctx = Ctx {
            scope: &scope,
            row: &row,
            group: None,
            output: None,
        };
        f(&ctx, record)?;
    }
    Ok(())
}

/// The records of `t` that `filter` keeps (all without one), and the table's primary key.
fn matching(
    resources: &Resources,
    caller: &Caller,
    t: &TableRef,
    filter: Option<&sqlparser::ast::Expr>,
    now_ms: f64,
) -> Result<(Vec<Object>, String), SqlError> {
    let (_, table) = access::open(resources, t)?;
    let pk = table.def.primary_key.clone().ok_or_else(|| {
        SqlError::bad(format!(
            "table '{}.{}' has no primary key",
            t.database, t.table
        ))
    })?;
    let (records, _) = access::load(resources, caller, t, filter)?;
    let Some(filter) = filter else {
        return Ok((records, pk));
    };
    let mut kept = Vec::new();
    each_row(t, records, now_ms, |ctx, record| {
        if truthy(&eval(filter, ctx)?) {
            kept.push(record.clone());
        }
        Ok(())
    })?;
    Ok((kept, pk))
}

pub async fn update(
    resources: &Resources,
    caller: &Caller,
    u: &Update,
    now_ms: f64,
) -> Result<Value, SqlError> {
    let names: Vec<String> = u.set.iter().map(|(n, _)| n.clone()).collect();
    check_names(&names)?;
    access::check_write(resources, caller, &u.table, Action::Update, &names)?;
    let (records, pk) = matching(resources, caller, &u.table, u.filter.as_ref(), now_ms)?;
    let mut changes = Vec::new();
    each_row(&u.table, records, now_ms, |ctx, record| {
        let mut o = Object::new();
        o.insert(pk.clone(), record.get(&pk).cloned().unwrap_or(Value::Null));
        for (name, e) in &u.set {
            // The stamps are the server's (HarperDB ignores them in SET too).
            if name == &pk || matches!(name.as_str(), "__createdtime__" | "__updatedtime__") {
                continue;
            }
            o.insert(name.clone(), eval(e, ctx)?);
        }
        changes.push(o);
        Ok(())
    })?;
    put(resources, caller, &u.table, PutKind::Update, changes).await
}

pub async fn delete(
    resources: &Resources,
    caller: &Caller,
    d: &Delete,
    now_ms: f64,
) -> Result<Value, SqlError> {
    access::check_write(resources, caller, &d.table, Action::Delete, &[])?;
    let (records, pk) = matching(resources, caller, &d.table, d.filter.as_ref(), now_ms)?;
    let ids: Vec<Value> = records
        .iter()
        .map(|r| r.get(&pk).cloned().unwrap_or(Value::Null))
        .collect();
    let summary = if ids.is_empty() {
        WriteSummary::default()
    } else {
        let w = RecordWrite::Delete {
            table: d.table.table.clone(),
            ids,
        };
        let (_, mut s) =
            nosql::write_records(resources, caller, &d.table.database, vec![w]).await?;
        s.pop().unwrap_or_default()
    };
    let total = summary.done.len() + summary.skipped.len();
    let message = format!(
        "{} of {total} {} successfully deleted",
        summary.done.len(),
        if total == 1 { "record" } else { "records" }
    );
    Ok(answer(message, "deleted_hashes", summary))
}
