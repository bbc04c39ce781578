//! Table definitions: what a schema says about one table, and the derived views other layers
//! need (the `describe_table` attribute list, how missing keys are generated). Plain data; built
//! by `parse`, never by storage.

use serde_json::{json, Map, Value};

use super::parse::SchemaError;

/// Where something was declared: a schema file and a one-based line and column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub file: String,
    pub line: usize,
    pub column: usize,
}

/// The type of an attribute, as declared in GraphQL.
///
/// `Object` names another type of the schema: a type without `@table` for a nested object, or a
/// table type for a `@relationship` field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldType {
    ID,
    String,
    Int,
    Long,
    Float,
    BigInt,
    Boolean,
    Date,
    Bytes,
    Any,
    Blob,
    Array(Box<FieldType>),
    Object(String),
}

impl FieldType {
    /// The scalar named `name`, if it is one of ours.
    pub fn scalar(name: &str) -> Option<FieldType> {
        Some(match name {
            "ID" => FieldType::ID,
            "String" => FieldType::String,
            "Int" => FieldType::Int,
            "Long" => FieldType::Long,
            "Float" => FieldType::Float,
            "BigInt" => FieldType::BigInt,
            "Boolean" => FieldType::Boolean,
            "Date" => FieldType::Date,
            "Bytes" => FieldType::Bytes,
            "Any" => FieldType::Any,
            "Blob" => FieldType::Blob,
            _ => return None,
        })
    }

    /// The name `describe_table` shows: the GraphQL name for scalars and object types, `array`
    /// for lists (their element type goes under `elements`).
    pub fn name(&self) -> &str {
        match self {
            FieldType::ID => "ID",
            FieldType::String => "String",
            FieldType::Int => "Int",
            FieldType::Long => "Long",
            FieldType::Float => "Float",
            FieldType::BigInt => "BigInt",
            FieldType::Boolean => "Boolean",
            FieldType::Date => "Date",
            FieldType::Bytes => "Bytes",
            FieldType::Any => "Any",
            FieldType::Blob => "Blob",
            FieldType::Array(_) => "array",
            FieldType::Object(name) => name,
        }
    }

    fn describe(&self) -> Map<String, Value> {
        let mut entry = Map::new();
        entry.insert("type".into(), Value::from(self.name()));
        if let FieldType::Array(element) = self {
            entry.insert("elements".into(), Value::Object(element.describe()));
        }
        entry
    }
}

/// `@relationship(from:, to:)`: at least one of the two is set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relationship {
    /// This table's attribute that holds the target's key(s).
    pub from: Option<String>,
    /// The target table's attribute that holds this record's key.
    pub to: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttributeDef {
    pub name: String,
    pub ty: FieldType,
    /// Declared `T!`: present and not null.
    pub required: bool,
    pub indexed: bool,
    pub primary_key: bool,
    pub created_time: bool,
    pub updated_time: bool,
    /// Set for `@relationship` fields, which are computed on read and never stored.
    pub relationship: Option<Relationship>,
    pub location: Option<Location>,
}

impl AttributeDef {
    /// A plain attribute with no directives.
    pub fn new(name: impl Into<String>, ty: FieldType) -> AttributeDef {
        AttributeDef {
            name: name.into(),
            ty,
            required: false,
            indexed: false,
            primary_key: false,
            created_time: false,
            updated_time: false,
            relationship: None,
            location: None,
        }
    }

    /// The `describe_table` entry: optional flags appear only when they say something.
    pub fn describe(&self) -> Value {
        let mut entry = Map::new();
        entry.insert("attribute".into(), Value::from(self.name.as_str()));
        entry.extend(self.ty.describe());
        if self.indexed {
            entry.insert("indexed".into(), Value::Bool(true));
        }
        if self.primary_key {
            entry.insert("is_primary_key".into(), Value::Bool(true));
        }
        if self.created_time {
            entry.insert("assigned_created_time".into(), Value::Bool(true));
        }
        if self.updated_time {
            entry.insert("assigned_updated_time".into(), Value::Bool(true));
        }
        if self.required {
            entry.insert("nullable".into(), Value::Bool(false));
        }
        if let Some(relationship) = &self.relationship {
            let mut shape = Map::new();
            if let Some(from) = &relationship.from {
                shape.insert("from".into(), Value::from(from.as_str()));
            }
            if let Some(to) = &relationship.to {
                shape.insert("to".into(), Value::from(to.as_str()));
            }
            entry.insert("relationship".into(), Value::Object(shape));
        }
        Value::Object(entry)
    }
}

/// How a record gets a key when a write names none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    /// `ID` or `String` key: a new UUID v4.
    Uuid,
    /// `Int`, `Long` or `Any` key: the largest numeric key + 1 (1 when empty).
    Increment,
    /// Key of another type: a write without a key is a 400.
    NotGenerated,
    /// No declared key: the key lives only in the URL or topic.
    UrlOnly,
}

/// A non-table type, used to type nested object fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectTypeDef {
    pub name: String,
    pub attributes: Vec<AttributeDef>,
    pub location: Option<Location>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableDef {
    pub database: String,
    pub table: String,
    /// The GraphQL type name.
    pub type_name: String,
    /// The export name (`@export`), if the table is exported.
    pub export: Option<String>,
    pub primary_key: Option<String>,
    pub attributes: Vec<AttributeDef>,
    pub expiration_s: Option<u64>,
    pub replicate: bool,
    pub audit: bool,
    pub sealed: bool,
    /// Where the `type` was declared; `None` for tables not from a schema file.
    pub location: Option<Location>,
}

impl TableDef {
    pub fn attribute(&self, name: &str) -> Option<&AttributeDef> {
        self.attributes.iter().find(|a| a.name == name)
    }

    pub fn primary_key_attribute(&self) -> Option<&AttributeDef> {
        self.attributes.iter().find(|a| a.primary_key)
    }

    /// How keys are generated for writes without one (docs/applications.md "Primary key").
    pub fn key_type(&self) -> KeyType {
        match self.primary_key_attribute().map(|a| &a.ty) {
            None => KeyType::UrlOnly,
            Some(FieldType::ID | FieldType::String) => KeyType::Uuid,
            Some(FieldType::Int | FieldType::Long | FieldType::Any) => KeyType::Increment,
            Some(_) => KeyType::NotGenerated,
        }
    }

    /// The `attributes` list of `describe_table`, in declaration order.
    pub fn describe_attributes(&self) -> Value {
        Value::Array(self.attributes.iter().map(AttributeDef::describe).collect())
    }

    /// The parts of `describe_table` that the schema alone decides; the Operations API adds the
    /// counts and sizes. `hash_attribute` is absent without a declared key (as HarperDB).
    pub fn describe(&self) -> Value {
        let mut desc = Map::new();
        desc.insert("schema".into(), Value::from(self.database.as_str()));
        desc.insert("name".into(), Value::from(self.table.as_str()));
        if let Some(key) = &self.primary_key {
            desc.insert("hash_attribute".into(), Value::from(key.as_str()));
        }
        desc.insert("audit".into(), Value::Bool(self.audit));
        desc.insert("schema_defined".into(), Value::Bool(true));
        desc.insert("attributes".into(), self.describe_attributes());
        if let Some(expiration_s) = self.expiration_s {
            desc.insert("expiration".into(), json!(format!("{expiration_s}s")));
        }
        desc.insert("replicate".into(), Value::Bool(self.replicate));
        if self.sealed {
            desc.insert("sealed".into(), Value::Bool(true));
        }
        Value::Object(desc)
    }

    /// Checks that this (new) definition can replace `previous`, the stored definition of the same
    /// table, at start-up: the key field may not change (docs/applications.md "Schema changes").
    pub fn check_replaces(&self, previous: &TableDef) -> Result<(), SchemaError> {
        if self.primary_key == previous.primary_key {
            return Ok(());
        }
        let show = |key: &Option<String>| match key {
            Some(key) => format!("{key:?}"),
            None => "none".to_string(),
        };
        let location = self.location.clone().unwrap_or(Location {
            file: String::new(),
            line: 0,
            column: 0,
        });
        Err(SchemaError::at(
            &location,
            format!(
                "table {}.{} changes its primary key from {} to {}",
                self.database,
                self.table,
                show(&previous.primary_key),
                show(&self.primary_key)
            ),
        ))
    }
}
