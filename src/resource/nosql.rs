//! Record verbs of the Operations API (docs/operations-api.md): writes of many records as one transaction,
//! reads by id, and the audit log (searches run on `resource::search`).
//!
//! Every write list becomes one [`WriteRequest`], so an operation (or a `transaction`) commits
//! whole or not at all. Tables created through the Operations API grow an indexed attribute for
//! each new top-level property before the write is queued. `system` is never written here (403).

use std::ops::Bound;
use std::sync::Arc;

use super::tables::{grow_table, SYSTEM};
use super::{validate_record, Caller, Resources, Validation, VerbError};
use crate::schema::TableDef;
use crate::store::{Database, OpResult, PutMode, Table, WriteOp};
use crate::value::{self, Object, Value};

/// Longest property name that becomes an indexed attribute of an ops-created table.
pub const ATTRIBUTE_BYTES_MAX: usize = 250;
/// Attributes an ops-created table may grow to; each indexed one is an LMDB sub-database, and an
/// environment holds a bounded number of them. A write that would pass it is a 400.
pub const TABLE_ATTRIBUTES_MAX: usize = 500;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutKind {
    Insert,
    Update,
    Upsert,
}

/// One write of an operation or a transaction.
#[derive(Debug, Clone)]
pub enum RecordWrite {
    Put {
        kind: PutKind,
        table: String,
        records: Vec<Object>,
    },
    Delete {
        table: String,
        ids: Vec<Value>,
    },
}

/// What became of one [`RecordWrite`]'s records.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WriteSummary {
    /// Keys written (inserted, updated, upserted) or deleted.
    pub done: Vec<Value>,
    pub skipped: Vec<Value>,
    /// Attributes the table gained for this write (ops-created tables).
    pub new_attributes: Vec<String>,
}

fn resolve(
    resources: &Resources,
    database: &str,
    table: &str,
) -> Result<(Arc<Database>, Arc<Table>), VerbError> {
    let db = resources
        .store
        .database(database)
        .ok_or_else(|| VerbError::bad(format!("database '{database}' does not exist")))?;
    let t = db
        .table(table)
        .ok_or_else(|| VerbError::bad(format!("Table '{database}.{table}' does not exist")))?;
    Ok((db, t))
}

/// HarperDB's answer (a plain 403) to a non-super user's write of the timestamp attributes, its
/// typo included: clients compare it.
pub const TIMESTAMPS_PROTECTED: &str = "Internal timestamp attributes - '__createdtime_' and '__updatedtime__' - cannot be inserted to or updated by HDB users.";

/// HarperDB's checks of the records of an `insert`/`update`/`upsert`, before anything is written
/// (docs/operations-api.md, "NoSQL operations"):
/// - attribute names with a backtick or `/` → 400 `Attribute names cannot include backticks or
///   forward slashes`;
/// - the primary key: missing, `null` or `""` on `update` → 400 `a valid hash attribute must be
///   provided with update record, check log for more info`; the text `"null"` on any write → 400
///   `Invalid hash value: 'null' is not a valid hash attribute value, check log for more info`;
/// - the table's `__createdtime__`/`__updatedtime__` attributes: a non-super user may not send
///   them (403); a super user's value that is not an integer is ignored (the stored times stay).
fn check_put_records(
    caller: &Caller,
    def: &TableDef,
    kind: PutKind,
    records: &mut [Object],
) -> Result<(), VerbError> {
    for record in records.iter() {
        if record
            .iter()
            .any(|(name, _)| name.contains('`') || name.contains('/'))
        {
            return Err(VerbError::bad(
                "Attribute names cannot include backticks or forward slashes",
            ));
        }
    }
    if let Some(pk) = &def.primary_key {
        for record in records.iter() {
            match record.get(pk) {
                None | Some(Value::Null) if kind == PutKind::Update => {}
                Some(Value::String(s)) if s.is_empty() && kind == PutKind::Update => {}
                Some(Value::String(s)) if s == "null" => {
                    return Err(VerbError::bad(
                        "Invalid hash value: 'null' is not a valid hash attribute value, check log for more info",
                    ))
                }
                _ => continue,
            }
            return Err(VerbError::bad(
                "a valid hash attribute must be provided with update record, check log for more info",
            ));
        }
    }
    let stamps: Vec<&str> = def
        .attributes
        .iter()
        .filter(|a| a.created_time || a.updated_time)
        .map(|a| a.name.as_str())
        .collect();
    if stamps.is_empty() {
        return Ok(());
    }
    for record in records.iter_mut() {
        for name in &stamps {
            let Some(value) = record.get(name) else {
                continue;
            };
            if !caller.super_user {
                return Err(VerbError::new(403, TIMESTAMPS_PROTECTED));
            }
            let integer = match value {
                Value::Int(_) => true,
                Value::Float(f) => f.fract() == 0.0,
                _ => false,
            };
            if !integer {
                record.remove(name);
            }
        }
    }
    Ok(())
}

/// Applies `writes` to `database` as one atomic transaction. Returns the commit's version
/// (`txn_time`) and one summary per write.
pub async fn write_records(
    resources: &Resources,
    caller: &Caller,
    database: &str,
    writes: Vec<RecordWrite>,
) -> Result<(f64, Vec<WriteSummary>), VerbError> {
    // A super user may write `system` records as HarperDB allows; nobody else.
    if database == SYSTEM && !caller.super_user {
        return Err(VerbError::new(403, super::tables::SYSTEM_PROTECTED));
    }
    let mut ops = Vec::new();
    let mut summaries = Vec::with_capacity(writes.len());
    let mut counts = Vec::with_capacity(writes.len());
    let mut db_handle: Option<Arc<Database>> = None;
    for w in writes {
        let mut summary = WriteSummary::default();
        match w {
            RecordWrite::Put {
                kind,
                table,
                records,
            } => {
                let (db, mut t) = resolve(resources, database, &table)?;
                let mut records = records;
                check_put_records(caller, &t.def, kind, &mut records)?;
                if !t.schema_defined {
                    let mut names: Vec<String> = Vec::new();
                    for record in &records {
                        for (name, _) in record.iter() {
                            if t.def.attribute(name).is_none() && !names.iter().any(|n| n == name) {
                                if name.is_empty() {
                                    return Err(VerbError::bad(format!(
                                        "attribute names must be 1 to {ATTRIBUTE_BYTES_MAX} bytes long"
                                    )));
                                }
                                if name.len() > ATTRIBUTE_BYTES_MAX {
                                    // HarperDB's words.
                                    return Err(VerbError::bad(format!(
                                        "transaction aborted due to attribute name {name} being too long. \
                                         Attribute names cannot be longer than {ATTRIBUTE_BYTES_MAX} bytes."
                                    )));
                                }
                                names.push(name.to_string());
                            }
                        }
                    }
                    if t.def.attributes.len() + names.len() > TABLE_ATTRIBUTES_MAX {
                        return Err(VerbError::bad(format!(
                            "table '{database}.{table}' would have more than {TABLE_ATTRIBUTES_MAX} attributes"
                        )));
                    }
                    if !names.is_empty() {
                        summary.new_attributes = grow_table(&db, &t, names).await?;
                        t = db.table(&table).ok_or_else(|| {
                            VerbError::bad(format!("Table '{database}.{table}' does not exist"))
                        })?;
                    }
                }
                let (mode, validation) = match kind {
                    PutKind::Insert => (PutMode::Insert, Validation::Full),
                    PutKind::Update => (PutMode::Update, Validation::Partial),
                    PutKind::Upsert => (PutMode::Upsert, Validation::Partial),
                };
                counts.push(records.len());
                for mut record in records {
                    validate_record(&t.def, &mut record, validation).map_err(VerbError::bad)?;
                    ops.push(WriteOp::Put {
                        table: table.clone(),
                        key: None,
                        record: Value::Object(record),
                        mode,
                        expires_in_s: None,
                    });
                }
                db_handle = Some(db);
            }
            RecordWrite::Delete { table, ids } => {
                let (db, _) = resolve(resources, database, &table)?;
                counts.push(ids.len());
                for key in ids {
                    ops.push(WriteOp::Delete {
                        table: table.clone(),
                        key,
                    });
                }
                db_handle = Some(db);
            }
        }
        summaries.push(summary);
    }
    let Some(db) = db_handle else {
        return Err(VerbError::bad("nothing to write"));
    };
    let outcome = super::write_many(&db, caller, ops).await?;
    let mut results = outcome.results.into_iter();
    for (summary, count) in summaries.iter_mut().zip(counts) {
        for result in results.by_ref().take(count) {
            match result {
                OpResult::Written { key, .. } => summary.done.push(key),
                OpResult::Skipped { key } => summary.skipped.push(key),
                OpResult::Deleted { key, existed } => {
                    if existed {
                        summary.done.push(key)
                    } else {
                        summary.skipped.push(key)
                    }
                }
                OpResult::Published => {}
            }
        }
    }
    Ok((outcome.version, summaries))
}

/// Keeps only `attributes` of `record` (all when `None`), in the order asked.
pub fn project(record: Value, attributes: Option<&[String]>) -> Value {
    let (Some(names), Value::Object(o)) = (attributes, &record) else {
        return record;
    };
    let mut out = Object::with_capacity(names.len());
    for name in names {
        if let Some(v) = o.get(name) {
            out.insert(name.clone(), v.clone());
        }
    }
    Value::Object(out)
}

/// Records by id, in request order; absent ids are left out.
pub fn search_by_id(
    resources: &Resources,
    database: &str,
    table: &str,
    ids: &[Value],
    attributes: Option<&[String]>,
) -> Result<Vec<Value>, VerbError> {
    let (db, t) = search_table(resources, database, table)?;
    let txn = db.read()?;
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        if let Some(record) = txn.get(&t, id)? {
            let owned =
                value::deserialize(record.value).map_err(|e| VerbError::new(500, e.to_string()))?;
            out.push(project(owned, attributes));
        }
    }
    Ok(out)
}

/// The table a search reads, with its definition (to know its key and attributes). A missing
/// database or table is a 404 here, as HarperDB answers searches (writes answer 400).
pub fn search_table(
    resources: &Resources,
    database: &str,
    table: &str,
) -> Result<(Arc<Database>, Arc<Table>), VerbError> {
    resolve(resources, database, table).map_err(|mut e| {
        if e.status == 400 {
            e.status = 404;
        }
        e
    })
}

/// The table a write (or a job writing to it) targets; a missing database or table is a 400.
pub fn write_table(
    resources: &Resources,
    database: &str,
    table: &str,
) -> Result<(Arc<Database>, Arc<Table>), VerbError> {
    resolve(resources, database, table)
}

/// How `read_audit_log` selects entries.
#[derive(Debug, Clone, PartialEq)]
pub enum AuditSearch {
    /// `[]` all, `[t]` from t on, `[t1, t2]` between (inclusive).
    Timestamp(Option<f64>, Option<f64>),
    Username(Vec<String>),
    HashValue(Vec<Value>),
}

/// One audited change to the table: `{operation, user_name, timestamp, hash_values, records}`.
fn audit_item(
    operation: &str,
    user: &Value,
    version: f64,
    keys: Vec<Value>,
    records: Vec<Value>,
) -> Value {
    let mut o = Object::new();
    o.insert("operation", Value::String(operation.to_string()));
    o.insert("user_name", user.clone());
    o.insert("timestamp", Value::Float(version));
    o.insert("hash_values", Value::Array(keys));
    if !records.is_empty() {
        o.insert("records", Value::Array(records));
    }
    Value::Object(o)
}

/// (operation, user, version, keys, records) per transaction and operation kind.
type AuditItem = (String, Value, f64, Vec<Value>, Vec<Value>);

/// Entries of the audit log that touch `table`, as docs/operations-api.md `read_audit_log` returns them:
/// an array for timestamp searches, an object keyed by the searched value otherwise.
pub fn read_audit_log(
    resources: &Resources,
    database: &str,
    table: &str,
    search: &AuditSearch,
) -> Result<Value, VerbError> {
    let (db, _) = resolve(resources, database, table)?;
    let (from, to) = match search {
        AuditSearch::Timestamp(from, to) => (
            from.map(Bound::Included).unwrap_or(Bound::Unbounded),
            to.map(Bound::Included).unwrap_or(Bound::Unbounded),
        ),
        _ => (Bound::Unbounded, Bound::Unbounded),
    };
    let txn = db.read()?;
    let mut items: Vec<AuditItem> = Vec::new();
    for entry in txn.audit_range(from, to)? {
        let (version, archived) = entry?;
        let owned = value::deserialize(archived).map_err(|e| VerbError::new(500, e.to_string()))?;
        let user = owned.get("user").cloned().unwrap_or(Value::Null);
        let Some(Value::Array(entries)) = owned.get("entries") else {
            continue;
        };
        let mut by_kind: Vec<(String, Vec<Value>, Vec<Value>)> = Vec::new();
        for e in entries {
            let Value::Array(parts) = e else { continue };
            let (Some(Value::String(t)), Some(key), Some(Value::String(kind))) =
                (parts.first(), parts.get(1), parts.get(2))
            else {
                continue;
            };
            if t != table {
                continue;
            }
            let operation = match kind.as_str() {
                "put" => "upsert",
                other => other,
            };
            let slot = match by_kind.iter().position(|(k, _, _)| k == operation) {
                Some(i) => i,
                None => {
                    by_kind.push((operation.to_string(), Vec::new(), Vec::new()));
                    by_kind.len() - 1
                }
            };
            if let Some((_, keys, records)) = by_kind.get_mut(slot) {
                keys.push(key.clone());
                if let Some(v) = parts.get(3).filter(|v| !matches!(v, Value::Null)) {
                    records.push(v.clone());
                }
            }
        }
        for (kind, keys, records) in by_kind {
            items.push((kind, user.clone(), version, keys, records));
        }
    }
    match search {
        AuditSearch::Timestamp(..) => Ok(Value::Array(
            items
                .into_iter()
                .map(|(op, user, v, keys, records)| audit_item(&op, &user, v, keys, records))
                .collect(),
        )),
        AuditSearch::Username(names) => {
            let mut out = Object::new();
            for name in names {
                let matching: Vec<Value> = items
                    .iter()
                    .filter(|(_, user, ..)| user.as_str() == Some(name.as_str()))
                    .map(|(op, user, v, keys, records)| {
                        audit_item(op, user, *v, keys.clone(), records.clone())
                    })
                    .collect();
                out.insert(name.clone(), Value::Array(matching));
            }
            Ok(Value::Object(out))
        }
        AuditSearch::HashValue(ids) => {
            let mut out = Object::new();
            for id in ids {
                let matching: Vec<Value> = items
                    .iter()
                    .filter(|(_, _, _, keys, _)| keys.contains(id))
                    .map(|(op, user, v, keys, records)| {
                        let at = keys.iter().position(|k| k == id);
                        let record: Vec<Value> = at
                            .and_then(|i| records.get(i))
                            .cloned()
                            .into_iter()
                            .collect();
                        audit_item(op, user, *v, vec![id.clone()], record)
                    })
                    .collect();
                let label = match id {
                    Value::String(s) => s.clone(),
                    other => String::from_utf8_lossy(&value::json::to_vec(other)).into_owned(),
                };
                out.insert(label, Value::Array(matching));
            }
            Ok(Value::Object(out))
        }
    }
}
