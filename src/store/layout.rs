//! Names and keys inside an environment.
//!
//! ```text
//! sub-database     key                          value
//! __meta__         "table:<name>"               JSON table definition (restores ops-created tables)
//!                  "indexes:<name>"             JSON array of attributes whose index is built
//!                  "count:<name>"               u64 LE live record count
//!                  "autoinc:<name>"             i64 LE largest integer key written
//!                  "updated:<name>"             f64 LE version of the table's last write
//! __audit__        version f64 bits, BE         archived Value: {user, origin, entries: [[table, id, type, value]]}
//! <table>          order-preserving key bytes   entry (header + archived record), see entry.rs
//! <table>/<attr>   index key bytes (dup-sorted) primary key bytes
//! ```

use serde::{Deserialize, Serialize};

use crate::schema::{AttributeDef, FieldType, TableDef};

pub const META: &str = "__meta__";
pub const AUDIT: &str = "__audit__";

pub fn index_db_name(table: &str, attribute: &str) -> String {
    format!("{table}/{attribute}")
}

pub fn meta_key(kind: &str, table: &str) -> Vec<u8> {
    format!("{kind}:{table}").into_bytes()
}

/// Positive f64s sort like their bit patterns; big-endian bytes make that a memcmp order.
pub fn audit_key(version: f64) -> [u8; 8] {
    version.to_bits().to_be_bytes()
}

pub fn version_from_audit_key(key: &[u8]) -> Option<f64> {
    let bytes: [u8; 8] = key.try_into().ok()?;
    Some(f64::from_bits(u64::from_be_bytes(bytes)))
}

/// What is kept of a table definition in `__meta__`, enough to reopen it before any schema loads.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct StoredTable {
    pub table: String,
    pub primary_key: Option<String>,
    pub attributes: Vec<StoredAttribute>,
    pub expiration_s: Option<u64>,
    pub schema_defined: bool,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct StoredAttribute {
    pub name: String,
    pub r#type: String,
    pub indexed: bool,
    /// `@createdTime` / `@updatedTime` (ops-created tables keep `__createdtime__`/`__updatedtime__`).
    #[serde(default)]
    pub created_time: bool,
    #[serde(default)]
    pub updated_time: bool,
}

impl StoredTable {
    pub fn from_def(def: &TableDef, schema_defined: bool) -> Self {
        StoredTable {
            table: def.table.clone(),
            primary_key: def.primary_key.clone(),
            attributes: def
                .attributes
                .iter()
                .map(|a| StoredAttribute {
                    name: a.name.clone(),
                    r#type: a.ty.name().to_string(),
                    indexed: a.indexed,
                    created_time: a.created_time,
                    updated_time: a.updated_time,
                })
                .collect(),
            expiration_s: def.expiration_s,
            schema_defined,
        }
    }

    pub fn to_def(&self, database: &str) -> TableDef {
        TableDef {
            database: database.to_string(),
            table: self.table.clone(),
            type_name: self.table.clone(),
            export: None,
            primary_key: self.primary_key.clone(),
            attributes: self
                .attributes
                .iter()
                .map(|a| {
                    let mut attr = AttributeDef::new(
                        a.name.clone(),
                        FieldType::scalar(&a.r#type).unwrap_or(FieldType::Any),
                    );
                    attr.indexed = a.indexed;
                    attr.created_time = a.created_time;
                    attr.updated_time = a.updated_time;
                    attr.primary_key = self.primary_key.as_deref() == Some(a.name.as_str());
                    attr
                })
                .collect(),
            expiration_s: self.expiration_s,
            replicate: true,
            audit: true,
            sealed: false,
            location: None,
        }
    }
}
