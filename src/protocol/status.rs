//! The HTTP statuses of the resource layer's typed write errors, chosen here in `protocol`
//! (REST and the Operations API share them; MQTT maps the same errors to reason codes in
//! `mqtt/conn.rs`). See docs/rest.md, "Status codes".

use crate::resource::{ConditionFailed, StoreError, VerbError, WriteError};

/// The HTTP status a failed write maps to.
pub fn write_error_status(e: &WriteError) -> u16 {
    match e {
        WriteError::Invalid(_) => 400,
        WriteError::NoSuchTable(_) => 404,
        WriteError::Overloaded(_) | WriteError::Stopped => 503,
        WriteError::Storage(StoreError::MapFull) => 507,
        WriteError::Storage(_) => 500,
        WriteError::Condition(ConditionFailed::VersionMismatch) => 412,
        WriteError::Condition(ConditionFailed::Exists(_)) => 409,
        WriteError::Condition(ConditionFailed::MayNotInsert | ConditionFailed::MayNotUpdate) => 403,
    }
}

/// A write error as the Operations API answers it.
impl From<WriteError> for VerbError {
    fn from(e: WriteError) -> Self {
        let status = match &e {
            // A write naming a missing table is the request's fault (docs/operations-api.md: 400).
            WriteError::NoSuchTable(_) => 400,
            other => write_error_status(other),
        };
        VerbError::new(status, e.to_string())
    }
}
