//! Write verbs every protocol shares: each checks the caller's rights, fills the audit user,
//! submits to the database's writer and awaits the commit. Conditions that must hold when the
//! write lands (`If-Match`, "must not exist", insert-vs-update rights) travel with the request
//! as [`WriteOp::Require`] and are checked by the writer inside its transaction
//! (docs/design.md, "Preconditions"), never on a read snapshot here.
//!
//! Errors are typed ([`WriteFailure`]); each protocol maps them to its own statuses or reason
//! codes.

use std::sync::Arc;

use super::permissions::{self, Action, Denied};
use super::Caller;
use crate::store::{
    Condition, ConditionFailed, Database, OpResult, PutMode, Table, WriteError, WriteOp,
    WriteOutcome, WriteRequest,
};
use crate::value::{Object, Value};

/// Why a write verb did not write.
#[derive(Debug, Clone, PartialEq)]
pub enum WriteFailure {
    /// The caller's role allows this write in no state of the record.
    Denied(Denied),
    /// The writer refused the request (a failed condition included) or could not run it.
    Write(WriteError),
}

impl From<WriteError> for WriteFailure {
    fn from(e: WriteError) -> Self {
        WriteFailure::Write(e)
    }
}

impl std::fmt::Display for WriteFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WriteFailure::Denied(_) => f.write_str("Unauthorized access to resource"),
            WriteFailure::Write(e) => e.fmt(f),
        }
    }
}

/// How [`put`] writes the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutKind {
    /// Replace the whole record, or create it (REST `PUT`, a retained MQTT publish).
    Replace,
    /// Merge into the record, or create it (REST `PATCH`).
    Merge,
}

/// Writes the record `key` of `table` for `caller`. Changing an existing record needs `update`
/// on the written attributes, creating one needs `insert`; which one applies is decided by the
/// writer against the committed record. `conditions` (e.g. `If-Match`) are checked there too.
#[allow(clippy::too_many_arguments)]
pub async fn put(
    db: &Arc<Database>,
    caller: &Caller,
    table: &Table,
    key: Value,
    record: Object,
    kind: PutKind,
    expires_in_s: Option<f64>,
    conditions: Vec<Condition>,
) -> Result<OpResult, WriteFailure> {
    let def = &table.def;
    let (insert, update) = (
        rights(caller, table, Action::Insert, &record),
        rights(caller, table, Action::Update, &record),
    );
    let mut ops = Vec::with_capacity(conditions.len() + 2);
    match (&insert, &update) {
        (Ok(()), Ok(())) => {}
        (Err(denied), Err(_)) => return Err(WriteFailure::Denied(denied.clone())),
        _ => ops.push(WriteOp::Require {
            table: def.table.clone(),
            key: key.clone(),
            condition: Condition::Rights {
                insert: insert.is_ok(),
                update: update.is_ok(),
            },
        }),
    }
    for condition in conditions {
        ops.push(WriteOp::Require {
            table: def.table.clone(),
            key: key.clone(),
            condition,
        });
    }
    ops.push(WriteOp::Put {
        table: def.table.clone(),
        key: Some(key),
        record: Value::Object(record),
        mode: match kind {
            PutKind::Replace => PutMode::Replace,
            PutKind::Merge => PutMode::Upsert,
        },
        expires_in_s,
    });
    let outcome = write_many(db, caller, ops).await?;
    last_result(outcome)
}

/// Creates a record (REST `POST`): its key comes from the record or is generated. An existing
/// record is never overwritten: the writer answers [`ConditionFailed::Exists`].
pub async fn create(
    db: &Arc<Database>,
    caller: &Caller,
    table: &Table,
    record: Object,
    expires_in_s: Option<f64>,
) -> Result<Value, WriteFailure> {
    let def = &table.def;
    rights(caller, table, Action::Insert, &record).map_err(WriteFailure::Denied)?;
    let op = WriteOp::Put {
        table: def.table.clone(),
        key: None,
        record: Value::Object(record),
        mode: PutMode::Insert,
        expires_in_s,
    };
    match last_result(write_many(db, caller, vec![op]).await?)? {
        OpResult::Written { key, .. } => Ok(key),
        OpResult::Skipped { key } => Err(WriteFailure::Write(WriteError::Condition(
            ConditionFailed::Exists(key),
        ))),
        other => Err(unexpected(&other)),
    }
}

/// Deletes the record `key` of `table` when `conditions` hold at commit; whether it existed.
pub async fn delete(
    db: &Arc<Database>,
    caller: &Caller,
    table: &Table,
    key: Value,
    conditions: Vec<Condition>,
) -> Result<bool, WriteFailure> {
    let def = &table.def;
    rights(caller, table, Action::Delete, &Object::new()).map_err(WriteFailure::Denied)?;
    let mut ops: Vec<WriteOp> = conditions
        .into_iter()
        .map(|condition| WriteOp::Require {
            table: def.table.clone(),
            key: key.clone(),
            condition,
        })
        .collect();
    ops.push(WriteOp::Delete {
        table: def.table.clone(),
        key,
    });
    match last_result(write_many(db, caller, ops).await?)? {
        OpResult::Deleted { existed, .. } => Ok(existed),
        other => Err(unexpected(&other)),
    }
}

/// Submits `ops` as one transaction on behalf of `caller` (whose name the audit log records)
/// and awaits the commit. The caller's rights on each op are checked by the verb that built it.
pub async fn write_many(
    db: &Arc<Database>,
    caller: &Caller,
    ops: Vec<WriteOp>,
) -> Result<WriteOutcome, WriteError> {
    write_with_extras(db, caller, ops, None).await
}

/// [`write_many`] with what its subscribers get beyond the records (an MQTT publish's origin,
/// RETAIN, QoS and v5 properties): it rides in the commit to every core's dispatch, never stored
/// (see [`crate::change::Extras`]).
pub async fn write_with_extras(
    db: &Arc<Database>,
    caller: &Caller,
    ops: Vec<WriteOp>,
    extras: Option<crate::change::Extras>,
) -> Result<WriteOutcome, WriteError> {
    queue_with_extras(db, caller, ops, extras)?
        .committed()
        .await
}

/// [`write_with_extras`] queued now, its commit awaited later (or not at all): writes queued one
/// after another commit in that order.
pub fn queue_with_extras(
    db: &Arc<Database>,
    caller: &Caller,
    ops: Vec<WriteOp>,
    extras: Option<crate::change::Extras>,
) -> Result<super::Queued, WriteError> {
    super::queue(
        db,
        WriteRequest {
            ops,
            user: caller.username.as_deref().map(str::to_string),
            extras,
        },
    )
}

/// Whether `caller` may do `action` on `table` with the attributes of `record`.
fn rights(caller: &Caller, table: &Table, action: Action, record: &Object) -> Result<(), Denied> {
    let def = &table.def;
    permissions::check(
        caller,
        &def.database,
        &def.table,
        def.primary_key.as_deref(),
        action,
        record.iter().map(|(k, _)| k),
    )
}

/// The result of the request's last op (the one its conditions guard).
fn last_result(outcome: WriteOutcome) -> Result<OpResult, WriteFailure> {
    outcome.results.into_iter().last().ok_or_else(|| {
        WriteFailure::Write(WriteError::Invalid("the write produced no result".into()))
    })
}

fn unexpected(result: &OpResult) -> WriteFailure {
    WriteFailure::Write(WriteError::Invalid(format!(
        "unexpected write result {result:?}"
    )))
}
