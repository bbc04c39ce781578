//! Database- and table-level verbs (docs/operations-api.md): describe, create and drop databases, tables and
//! attributes.
//!
//! Schema changes run on the database's writer thread (`Database::schema`), and opening or
//! deleting an environment on the blocking pool (`run_blocking`), so no core blocks; each verb
//! returns only after the change is visible to every core. The `system` database is never created,
//! dropped or reshaped here (403).

use std::sync::Arc;

use serde_json::{json, Map, Value as Json};

use super::{run_blocking, Resources, VerbError};
use crate::schema::{AttributeDef, FieldType, TableDef};
use crate::store::{Database, SchemaChange, StoreError, Table};

/// The database no operation may create, drop or reshape.
pub const SYSTEM: &str = "system";
/// Record counts above this may be estimated unless `exact_count` (docs/operations-api.md); ours are exact.
pub const COUNT_ESTIMATE_MIN: u64 = 5_000;
/// Names of the timestamps every ops-created table keeps.
pub const CREATED_TIME: &str = "__createdtime__";
pub const UPDATED_TIME: &str = "__updatedtime__";

/// An attribute of a new table, as `create_table` lists it.
#[derive(Debug, Clone)]
pub struct AttributeSpec {
    pub name: String,
    pub ty: Option<String>,
    pub indexed: Option<bool>,
    pub primary_key: bool,
    pub nullable: Option<bool>,
}

/// HarperDB's answer (403, no other field) to changing the `system` database's tables or, for a
/// non-super user, its records; kept word for word, as clients compare it.
pub const SYSTEM_PROTECTED: &str = "The 'system' database, tables and records are used internally by HarperDB and cannot be updated or removed.";

fn system_refused(_op: &str) -> VerbError {
    VerbError::new(403, SYSTEM_PROTECTED)
}

fn database(resources: &Resources, name: &str) -> Result<Arc<Database>, VerbError> {
    resources
        .store
        .database(name)
        .ok_or_else(|| VerbError::new(404, format!("database '{name}' does not exist")))
}

fn table(
    resources: &Resources,
    db: &str,
    name: &str,
) -> Result<(Arc<Database>, Arc<Table>), VerbError> {
    let database = database(resources, db)?;
    let table = database
        .table(name)
        .ok_or_else(|| VerbError::new(404, format!("Table '{db}.{name}' does not exist")))?;
    Ok((database, table))
}

/// `describe_table`'s `<desc>`: the schema's part, then counts and sizes from one read snapshot.
pub fn describe_table(db: &Database, table: &Table) -> Result<Json, VerbError> {
    let mut desc = match table.def.describe() {
        Json::Object(map) => map,
        _ => Map::new(),
    };
    desc.insert("schema_defined".into(), Json::Bool(table.schema_defined));
    let txn = db.read()?;
    let count = txn.count(table)?;
    desc.insert("record_count".into(), json!(count));
    if count > COUNT_ESTIMATE_MIN {
        // Counts are kept exactly at each write, so the range is the count itself.
        desc.insert("estimated_record_range".into(), json!([count, count]));
    }
    desc.insert("table_size".into(), json!(txn.table_size(table)?));
    desc.insert("db_size".into(), json!(db.file_size()));
    desc.insert("db_audit_size".into(), json!(txn.audit_size()?));
    desc.insert(
        "last_updated_record".into(),
        txn.last_updated(table)?
            .map(|v| json!(v))
            .unwrap_or(json!(0)),
    );
    Ok(Json::Object(desc))
}

pub fn describe_database(resources: &Resources, name: &str) -> Result<Json, VerbError> {
    let db = database(resources, name)?;
    let mut out = Map::new();
    for table_name in db.table_names() {
        if let Some(table) = db.table(&table_name) {
            out.insert(table_name, describe_table(&db, &table)?);
        }
    }
    Ok(Json::Object(out))
}

/// Every database but `system`, which is read through searches, not described.
pub fn describe_all(resources: &Resources) -> Result<Json, VerbError> {
    let mut out = Map::new();
    for name in resources.store.database_names() {
        if name == SYSTEM {
            continue;
        }
        match describe_database(resources, &name) {
            Ok(desc) => {
                out.insert(name, desc);
            }
            // Dropped between listing and describing: leave it out.
            Err(e) if e.status == 404 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Json::Object(out))
}

pub async fn create_database(resources: &Resources, name: &str) -> Result<String, VerbError> {
    if name == SYSTEM {
        return Err(system_refused("create_database"));
    }
    if resources.store.database(name).is_some() {
        return Err(VerbError::bad(format!("database '{name}' already exists")));
    }
    open_database(resources, name).await?;
    Ok(format!("database '{name}' successfully created"))
}

async fn open_database(resources: &Resources, name: &str) -> Result<Arc<Database>, VerbError> {
    let store = resources.store.clone();
    let owned = name.to_string();
    run_blocking(move || store.open_database(&owned))
        .await?
        .map_err(VerbError::from)
}

pub async fn drop_database(resources: &Resources, name: &str) -> Result<String, VerbError> {
    if name == SYSTEM {
        return Err(system_refused("drop_database"));
    }
    database(resources, name)?;
    let store = resources.store.clone();
    let owned = name.to_string();
    run_blocking(move || store.drop_database(&owned)).await??;
    Ok(format!("successfully deleted '{name}'"))
}

fn field_type(name: &str) -> Result<FieldType, VerbError> {
    FieldType::scalar(name).ok_or_else(|| {
        VerbError::bad(format!(
            "Invalid attribute type '{name}'; expected one of ID, String, Int, Long, Float, BigInt, Boolean, Date, Bytes, Any"
        ))
    })
}

/// The definition of a table created through the Operations API: the key, the two timestamps
/// and whatever `attributes` lists. Later writes add an indexed attribute per new property.
pub fn new_table_def(
    database: &str,
    table: &str,
    primary_key: &str,
    attributes: &[AttributeSpec],
    expiration_s: Option<u64>,
) -> Result<TableDef, VerbError> {
    let mut defs: Vec<AttributeDef> = Vec::new();
    let mut key = AttributeDef::new(primary_key, FieldType::Any);
    key.primary_key = true;
    defs.push(key);
    for spec in attributes {
        if spec.primary_key && spec.name != primary_key {
            return Err(VerbError::bad(format!(
                "attribute '{}' is marked isPrimaryKey but primary_key is '{primary_key}'",
                spec.name
            )));
        }
        let ty = match &spec.ty {
            Some(t) => field_type(t)?,
            None => FieldType::Any,
        };
        if spec.name == primary_key {
            if let Some(key) = defs.first_mut() {
                key.ty = ty;
            }
            continue;
        }
        if defs.iter().any(|a| a.name == spec.name) {
            return Err(VerbError::bad(format!(
                "attribute '{}' is listed twice",
                spec.name
            )));
        }
        let mut attr = AttributeDef::new(spec.name.clone(), ty);
        attr.indexed = spec.indexed.unwrap_or(true);
        attr.required = spec.nullable == Some(false);
        defs.push(attr);
    }
    for (name, created) in [(CREATED_TIME, true), (UPDATED_TIME, false)] {
        if defs.iter().any(|a| a.name == name) {
            continue;
        }
        let mut attr = AttributeDef::new(name, FieldType::Long);
        attr.indexed = true;
        attr.created_time = created;
        attr.updated_time = !created;
        defs.push(attr);
    }
    Ok(TableDef {
        database: database.to_string(),
        table: table.to_string(),
        type_name: table.to_string(),
        export: None,
        primary_key: Some(primary_key.to_string()),
        attributes: defs,
        expiration_s,
        replicate: true,
        audit: true,
        sealed: false,
        location: None,
    })
}

async fn schema_change(
    db: &Database,
    change: SchemaChange,
) -> Result<Option<Arc<Table>>, VerbError> {
    let reply = db.schema(change)?;
    Ok(reply
        .await
        .unwrap_or_else(|| Err(StoreError::Io("writer stopped".into())))?)
}

pub async fn create_table(resources: &Resources, def: TableDef) -> Result<String, VerbError> {
    if def.database == SYSTEM {
        return Err(system_refused("create_table"));
    }
    let db = match resources.store.database(&def.database) {
        Some(db) => db,
        // HarperDB creates the database with its first table.
        None => open_database(resources, &def.database).await?,
    };
    let (database, table) = (def.database.clone(), def.table.clone());
    match schema_change(&db, SchemaChange::Create(def)).await {
        Ok(_) => Ok(format!("table '{database}.{table}' successfully created.")),
        Err(e) if e.message.contains("already exists") => Err(VerbError::bad(format!(
            "Table '{table}' already exists in '{database}'"
        ))),
        Err(e) => Err(e),
    }
}

pub async fn drop_table(
    resources: &Resources,
    database: &str,
    name: &str,
) -> Result<String, VerbError> {
    if database == SYSTEM {
        return Err(system_refused("drop_table"));
    }
    let (db, _) = table(resources, database, name)?;
    schema_change(&db, SchemaChange::Drop(name.to_string())).await?;
    Ok(format!("successfully deleted table '{database}.{name}'"))
}

fn refuse_schema_table(table: &Table, op: &str) -> Result<(), VerbError> {
    if table.schema_defined {
        return Err(VerbError::bad(format!(
            "{op}: table '{}' is defined by a schema file; change the schema instead",
            table.name
        )));
    }
    Ok(())
}

pub async fn create_attribute(
    resources: &Resources,
    database: &str,
    name: &str,
    attribute: &str,
    indexed: bool,
) -> Result<String, VerbError> {
    if database == SYSTEM {
        return Err(system_refused("create_attribute"));
    }
    let (db, table) = table(resources, database, name)?;
    refuse_schema_table(&table, "create_attribute")?;
    if table.def.attribute(attribute).is_some() {
        return Err(VerbError::bad(format!(
            "attribute '{attribute}' already exists in {database}.{name}"
        )));
    }
    let owned = attribute.to_string();
    let alter = Box::new(move |def: &TableDef| {
        let mut def = def.clone();
        if def.attribute(&owned).is_none() {
            let mut attr = AttributeDef::new(owned, FieldType::Any);
            attr.indexed = indexed;
            def.attributes.push(attr);
        }
        Ok(def)
    });
    schema_change(
        &db,
        SchemaChange::Alter {
            table: name.to_string(),
            alter,
        },
    )
    .await?;
    Ok(format!(
        "attribute '{database}.{name}.{attribute}' successfully created."
    ))
}

pub async fn drop_attribute(
    resources: &Resources,
    database: &str,
    name: &str,
    attribute: &str,
) -> Result<String, VerbError> {
    if database == SYSTEM {
        return Err(system_refused("drop_attribute"));
    }
    let (db, table) = table(resources, database, name)?;
    refuse_schema_table(&table, "drop_attribute")?;
    match table.def.attribute(attribute) {
        None => {
            return Err(VerbError::new(
                404,
                format!("attribute '{attribute}' does not exist in {database}.{name}"),
            ))
        }
        Some(a) if a.primary_key => {
            return Err(VerbError::bad(format!(
                "attribute '{attribute}' is the primary key and cannot be dropped"
            )))
        }
        Some(_) => {}
    }
    let owned = attribute.to_string();
    let alter = Box::new(move |def: &TableDef| {
        let mut def = def.clone();
        def.attributes.retain(|a| a.name != owned);
        Ok(def)
    });
    schema_change(
        &db,
        SchemaChange::Alter {
            table: name.to_string(),
            alter,
        },
    )
    .await?;
    Ok(format!("successfully deleted attribute '{attribute}'"))
}

/// Adds an indexed `Any` attribute for each name the table does not know yet (ops-created tables
/// grow with their records). Returns the names that were new when asked.
pub async fn grow_table(
    db: &Database,
    table: &Table,
    names: Vec<String>,
) -> Result<Vec<String>, VerbError> {
    let new: Vec<String> = names
        .into_iter()
        .filter(|n| table.def.attribute(n).is_none())
        .collect();
    if new.is_empty() || table.schema_defined {
        return Ok(Vec::new());
    }
    let added = new.clone();
    let alter = Box::new(move |def: &TableDef| {
        let mut def = def.clone();
        for name in added {
            if def.attribute(&name).is_none() {
                let mut attr = AttributeDef::new(name, FieldType::Any);
                attr.indexed = true;
                def.attributes.push(attr);
            }
        }
        Ok(def)
    });
    schema_change(
        db,
        SchemaChange::Alter {
            table: table.name.to_string(),
            alter,
        },
    )
    .await?;
    Ok(new)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(attributes: &[(&str, Option<&str>, bool)], expected: Result<Vec<&str>, &str>) {
        let specs: Vec<AttributeSpec> = attributes
            .iter()
            .map(|(name, ty, pk)| AttributeSpec {
                name: name.to_string(),
                ty: ty.map(str::to_string),
                indexed: None,
                primary_key: *pk,
                nullable: None,
            })
            .collect();
        let got = new_table_def("dev", "dog", "id", &specs, None)
            .map(|d| {
                d.attributes
                    .iter()
                    .map(|a| a.name.clone())
                    .collect::<Vec<_>>()
            })
            .map_err(|e| e.message);
        match expected {
            Ok(names) => assert_eq!(
                got,
                Ok(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            ),
            Err(fragment) => {
                let message = got.expect_err("expected an error");
                assert!(message.contains(fragment), "{message}");
            }
        }
    }

    #[test]
    fn new_tables_keep_key_and_timestamps() {
        check(&[], Ok(vec!["id", CREATED_TIME, UPDATED_TIME]));
        check(
            &[("name", Some("String"), false), ("id", Some("Int"), true)],
            Ok(vec!["id", "name", CREATED_TIME, UPDATED_TIME]),
        );
        check(&[("x", Some("Nope"), false)], Err("Invalid attribute type"));
        check(
            &[("x", None, false), ("x", None, false)],
            Err("listed twice"),
        );
        check(&[("other", None, true)], Err("isPrimaryKey"));
    }
}
