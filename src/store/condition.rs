//! Conditions a write carries to the writer, checked against the committed state inside the
//! write transaction (docs/design.md, "Preconditions"): no other write can land between the
//! check and the change it guards, so `If-Match`, "must not exist" and insert-vs-update rights
//! hold under any concurrency.

use crate::value::Value;

/// What must be true of the live record `key` of a table when the writer reaches the op.
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    /// The record exists (`If-Match: *`).
    Exists,
    /// The record does not exist (a create that must not overwrite).
    Absent,
    /// The record exists and its version is one of these (`If-Match` with ETags).
    VersionIn(Vec<f64>),
    /// Changing an existing record needs `update`, creating one needs `insert`: what the caller's
    /// role allows for the attributes it writes.
    Rights { insert: bool, update: bool },
}

/// Why a [`Condition`] failed; the request is rolled back whole.
#[derive(Debug, Clone, PartialEq)]
pub enum ConditionFailed {
    /// `Exists` or `VersionIn` failed: the record changed or is gone.
    VersionMismatch,
    /// `Absent` failed: the record with this key exists.
    Exists(Value),
    /// `Rights` failed on an existing record: the caller may not update it.
    MayNotUpdate,
    /// `Rights` failed on an absent record: the caller may not create it.
    MayNotInsert,
}

impl Condition {
    /// Checks the condition against the live record's version (`None` when it has none).
    pub fn check(&self, key: &Value, live_version: Option<f64>) -> Result<(), ConditionFailed> {
        match (self, live_version) {
            (Condition::Exists, Some(_)) | (Condition::Absent, None) => Ok(()),
            (Condition::Exists, None) => Err(ConditionFailed::VersionMismatch),
            (Condition::Absent, Some(_)) => Err(ConditionFailed::Exists(key.clone())),
            (Condition::VersionIn(versions), Some(v)) if versions.contains(&v) => Ok(()),
            (Condition::VersionIn(_), _) => Err(ConditionFailed::VersionMismatch),
            (Condition::Rights { update: true, .. }, Some(_))
            | (Condition::Rights { insert: true, .. }, None) => Ok(()),
            (Condition::Rights { .. }, Some(_)) => Err(ConditionFailed::MayNotUpdate),
            (Condition::Rights { .. }, None) => Err(ConditionFailed::MayNotInsert),
        }
    }
}

impl std::fmt::Display for ConditionFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConditionFailed::VersionMismatch => {
                f.write_str("Precondition Failed: the record's ETag does not match If-Match")
            }
            ConditionFailed::Exists(key) => write!(
                f,
                "Record with id {} already exists",
                String::from_utf8_lossy(&crate::value::json::to_vec(key))
            ),
            ConditionFailed::MayNotUpdate => f.write_str(
                "This operation is not authorized: no update permission on an existing record",
            ),
            ConditionFailed::MayNotInsert => f.write_str(
                "This operation is not authorized: no insert permission to create a record",
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_against_the_live_version() {
        let k = Value::Int(1);
        assert!(Condition::Exists.check(&k, Some(1.0)).is_ok());
        assert_eq!(
            Condition::Exists.check(&k, None),
            Err(ConditionFailed::VersionMismatch)
        );
        assert_eq!(
            Condition::Absent.check(&k, Some(1.0)),
            Err(ConditionFailed::Exists(k.clone()))
        );
        assert!(Condition::VersionIn(vec![2.0, 3.0])
            .check(&k, Some(3.0))
            .is_ok());
        assert_eq!(
            Condition::VersionIn(vec![2.0]).check(&k, Some(3.0)),
            Err(ConditionFailed::VersionMismatch)
        );
        let insert_only = Condition::Rights {
            insert: true,
            update: false,
        };
        assert!(insert_only.check(&k, None).is_ok());
        assert_eq!(
            insert_only.check(&k, Some(1.0)),
            Err(ConditionFailed::MayNotUpdate)
        );
        let update_only = Condition::Rights {
            insert: false,
            update: true,
        };
        assert_eq!(
            update_only.check(&k, None),
            Err(ConditionFailed::MayNotInsert)
        );
    }
}
