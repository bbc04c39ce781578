//! The application's role files (`roles.yaml` by default, `roles: {files}` in `config.yaml`;
//! docs/security.md, P1): each role they name is created, or updated when it exists, once at start.
//!
//! ```yaml
//! dog_reader:
//!   data:                       # database
//!     Dog:                      # table
//!       read: true
//!       attributes:
//!         owner: {read: false}
//! ops: {super_user: true}
//! ```
//!
//! A file turns into the same `permission` objects `add_role` takes (`{<db>: {tables: {<t>:
//! {read, …, attribute_permissions: [{attribute_name, …}]}}}}`), checked by the same validation,
//! so a role file can grant nothing `add_role` could not. It never touches users, and a file that
//! does not parse or validate stops the start with the file and role named.

use std::path::Path;
use std::sync::Arc;

use crate::resource::{users, Caller, Resources};
use crate::value::{Object, Value};

/// A role file larger than this is refused (roles are a few lines each).
pub const ROLES_FILE_BYTES_MAX: usize = 1 << 20;
/// Roles all files together may define.
pub const ROLES_MAX: usize = 10_000;
/// Names of the built-in roles, which files may not redefine.
const BUILTIN: [&str; 2] = ["super_user", "cluster_user"];
const ROLE_FLAGS: [&str; 3] = ["super_user", "cluster_user", "structure_user"];

fn scalar(v: &serde_yaml::Value) -> Value {
    match v {
        serde_yaml::Value::Bool(b) => Value::Bool(*b),
        serde_yaml::Value::String(s) => Value::String(s.clone()),
        serde_yaml::Value::Number(n) => n
            .as_i64()
            .map(Value::Int)
            .or_else(|| n.as_f64().map(Value::Float))
            .unwrap_or(Value::Null),
        serde_yaml::Value::Sequence(items) => Value::Array(items.iter().map(scalar).collect()),
        // Anything else is invalid where it appears; validation names it.
        _ => Value::String(format!("{v:?}")),
    }
}

fn mapping<'a>(v: &'a serde_yaml::Value, what: &str) -> Result<&'a serde_yaml::Mapping, String> {
    v.as_mapping()
        .ok_or_else(|| format!("{what} must be a mapping"))
}

fn key(k: &serde_yaml::Value, what: &str) -> Result<String, String> {
    k.as_str()
        .map(str::to_string)
        .ok_or_else(|| format!("{what}: keys must be strings"))
}

/// One table's grant: `{read, insert, update, delete, attributes: {<attr>: {read, insert,
/// update}}}` → the stored form with `attribute_permissions`.
fn table_grant(v: &serde_yaml::Value, what: &str) -> Result<Value, String> {
    let mut grant = Object::new();
    for (k, v) in mapping(v, what)? {
        let k = key(k, what)?;
        if k == "attributes" || k == "attribute_permissions" {
            let mut list = Vec::new();
            for (name, flags) in mapping(v, &format!("{what}.{k}"))? {
                let name = key(name, what)?;
                let mut a = Object::new();
                a.insert("attribute_name", Value::String(name.clone()));
                for (flag, on) in mapping(flags, &format!("{what}.{k}.{name}"))? {
                    a.insert(key(flag, what)?, scalar(on));
                }
                ungranted(&mut a, &["read", "insert", "update"]);
                list.push(Value::Object(a));
            }
            grant.insert("attribute_permissions", Value::Array(list));
        } else {
            grant.insert(k, scalar(v));
        }
    }
    // A file names only what it grants; the stored form, as `add_role` takes it, has every flag.
    ungranted(&mut grant, &["read", "insert", "update", "delete"]);
    if grant.get("attribute_permissions").is_none() {
        grant.insert("attribute_permissions", Value::Array(Vec::new()));
    }
    Ok(Value::Object(grant))
}

/// Sets each of `flags` that `grant` does not name to false.
fn ungranted(grant: &mut Object, flags: &[&str]) {
    for flag in flags {
        if grant.get(flag).is_none() {
            grant.insert(*flag, Value::Bool(false));
        }
    }
}

/// One role of a file as a stored `permission` object (not yet validated).
pub fn permission(role: &str, v: &serde_yaml::Value) -> Result<Value, String> {
    let mut out = Object::new();
    for (k, v) in mapping(v, &format!("role '{role}'"))? {
        let k = key(k, role)?;
        if ROLE_FLAGS.contains(&k.as_str()) {
            out.insert(k, scalar(v));
            continue;
        }
        let what = format!("role '{role}' database '{k}'");
        let tables = mapping(v, &what)?;
        // The stored form (`{tables: {...}}`) is accepted as well as the file form.
        let tables = match tables.get("tables") {
            Some(inner) if tables.len() == 1 => mapping(inner, &what)?,
            _ => tables,
        };
        let mut grants = Object::new();
        for (table, grant) in tables {
            let table = key(table, &what)?;
            grants.insert(
                table.clone(),
                table_grant(grant, &format!("{what} table '{table}'"))?,
            );
        }
        let mut db = Object::new();
        db.insert("tables", Value::Object(grants));
        out.insert(k, Value::Object(db));
    }
    Ok(Value::Object(out))
}

/// Every role of one file's text, validated: (name, permission).
pub fn parse(text: &str) -> Result<Vec<(String, Value)>, String> {
    if text.len() > ROLES_FILE_BYTES_MAX {
        return Err(format!("larger than {ROLES_FILE_BYTES_MAX} bytes"));
    }
    let doc: serde_yaml::Value = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
    if doc.is_null() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for (name, v) in mapping(&doc, "the file")? {
        let name = key(name, "the file")?;
        if BUILTIN.contains(&name.as_str()) {
            return Err(format!("role '{name}' is built in and cannot be redefined"));
        }
        let permission = permission(&name, v)?;
        users::validate_permission(&permission)
            .map_err(|e| format!("role '{name}': {}", e.full_message()))?;
        out.push((name, permission));
    }
    Ok(out)
}

/// Reads the application's role files. Errors name the file.
fn read_all(app_dir: &Path, globs: &[String]) -> Result<Vec<(String, Value)>, String> {
    let files = crate::schema::expand_globs(app_dir, globs).map_err(|e| e.to_string())?;
    let mut roles = Vec::new();
    for file in files {
        let shown = file.display().to_string();
        let len = std::fs::metadata(&file)
            .map_err(|e| format!("{shown}: {e}"))?
            .len();
        if len > ROLES_FILE_BYTES_MAX as u64 {
            return Err(format!("{shown}: larger than {ROLES_FILE_BYTES_MAX} bytes"));
        }
        let text = std::fs::read_to_string(&file).map_err(|e| format!("{shown}: {e}"))?;
        roles.extend(parse(&text).map_err(|e| format!("{shown}: {e}"))?);
        if roles.len() > ROLES_MAX {
            return Err(format!("{shown}: more than {ROLES_MAX} roles in all"));
        }
    }
    Ok(roles)
}

/// Creates or updates every role of the application's role files; returns how many. Runs at
/// start on a plain thread (it waits for the writes).
pub fn apply(resources: &Arc<Resources>) -> Result<usize, String> {
    let Some(config) = &resources.app.config.roles else {
        return Ok(0);
    };
    let roles = read_all(&resources.app.dir, &config.files)?;
    let admin = Caller::super_user("system");
    let existing = users::list_roles(resources).map_err(|e| e.message)?;
    for (name, permission) in &roles {
        let id = existing.iter().find_map(|r| {
            let id = r.get("id").and_then(Value::as_str)?;
            (id == name || r.get("role").and_then(Value::as_str) == Some(name)).then_some(id)
        });
        let result = match id {
            Some(id) => super::block_on(users::alter_role(
                resources,
                &admin,
                id,
                Some(name),
                permission.clone(),
            )),
            None => super::block_on(users::add_role(
                resources,
                &admin,
                name,
                None,
                permission.clone(),
            )),
        };
        result.map_err(|e| format!("role '{name}': {}", e.full_message()))?;
    }
    Ok(roles.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `expected`: Ok(the permissions as canonical JSON, per role) or the error's start.
    fn check(yaml: &str, expected: Result<&[(&str, &str)], &str>) {
        let got = parse(yaml).map(|roles| {
            roles
                .into_iter()
                .map(|(n, p)| {
                    (
                        n,
                        String::from_utf8(crate::value::json::to_vec(&p)).expect("utf-8"),
                    )
                })
                .collect::<Vec<_>>()
        });
        match (got, expected) {
            (Ok(got), Ok(want)) => {
                let want: Vec<(String, String)> = want
                    .iter()
                    .map(|(n, p)| (n.to_string(), p.to_string()))
                    .collect();
                assert_eq!(got, want, "{yaml}");
            }
            (Err(e), Err(prefix)) => assert!(e.starts_with(prefix), "{yaml}: {e}"),
            (got, _) => panic!("{yaml}: unexpected {got:?}"),
        }
    }

    #[test]
    fn role_files() {
        check(
            "reader:\n  data:\n    Dog:\n      read: true\n      attributes:\n        owner: {read: false}\n",
            Ok(&[(
                "reader",
                r#"{"data":{"tables":{"Dog":{"read":true,"attribute_permissions":[{"attribute_name":"owner","read":false,"insert":false,"update":false}],"insert":false,"update":false,"delete":false}}}}"#,
            )]),
        );
        check(
            "ops: {super_user: true}\npeer: {cluster_user: true}\n",
            Ok(&[
                ("ops", r#"{"super_user":true}"#),
                ("peer", r#"{"cluster_user":true}"#),
            ]),
        );
        check(
            "stored:\n  data: {tables: {Dog: {insert: true}}}\n",
            Ok(&[(
                "stored",
                r#"{"data":{"tables":{"Dog":{"insert":true,"read":false,"update":false,"delete":false,"attribute_permissions":[]}}}}"#,
            )]),
        );
        check("", Ok(&[]));
        check(
            "super_user: {super_user: true}\n",
            Err("role 'super_user' is built in"),
        );
        check("r: {data: {Dog: {read: yes-please}}}\n", Err("role 'r':"));
        check("r: {data: {Dog: {fly: true}}}\n", Err("role 'r':"));
        check(
            "r: {data: {Dog: {read: false, attributes: {a: {read: true}}}}}\n",
            Err("role 'r':"),
        );
        check(
            "r: {super_user: true, data: {Dog: {read: true}}}\n",
            Err("role 'r':"),
        );
        check("- a\n- b\n", Err("the file must be a mapping"));
        check("r: [1]\n", Err("role 'r' must be a mapping"));
    }
}
