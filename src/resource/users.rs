//! Users and roles (docs/operations-api.md, docs/security.md): stored in `system.hdb_user` and `system.hdb_role`, with
//! the built-in roles `super_user` and `cluster_user` always listed.
//!
//! Passwords are stored only as salted hashes, `$sha256$<salt hex>$<digest hex>` or argon2id in
//! PHC form (`authentication.hashFunction`, docs/security.md); either verifies whatever the setting, so
//! changing it keeps existing users. Argon2id is slow on purpose (tens of ms), so hashing runs
//! off the core and verification sits behind the per-core credential cache (`auth`). Nothing here
//! returns or logs a password or a hash. Role permissions are validated before they are stored.

use sha2::{Digest, Sha256};

use super::tables::SYSTEM;
use super::{validate_record, write, Caller, Resources, Validation, VerbError};
use crate::store::{PutMode, WriteOp, WriteRequest};
use crate::util::hex;
use crate::value::{self, Object, Value};

const USERS: &str = "hdb_user";
const ROLES: &str = "hdb_role";
/// Role permission flags a table grant may carry.
const TABLE_FLAGS: &[&str] = &["read", "insert", "update", "delete"];
/// Flags of an attribute grant.
const ATTRIBUTE_FLAGS: &[&str] = &["read", "insert", "update"];

fn digest(salt: &str, password: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(salt.as_bytes());
    hasher.update(password.as_bytes());
    hex(&hasher.finalize())
}

/// The hash new passwords get (`authentication.hashFunction`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashFunction {
    Sha256,
    Argon2id,
}

impl HashFunction {
    /// The configured function: `sha256` selects salted SHA-256; anything else is argon2id, the
    /// default (docs/security.md "Users").
    pub fn of(resources: &Resources) -> HashFunction {
        match resources.config_tree.get("authentication.hashFunction") {
            Some(serde_yaml::Value::String(s)) if s.eq_ignore_ascii_case("sha256") => {
                HashFunction::Sha256
            }
            _ => HashFunction::Argon2id,
        }
    }
}

/// A salted SHA-256 hash in PHC-like form: `$sha256$<salt hex>$<digest hex>`.
pub fn hash_password(password: &str) -> String {
    let salt = hex(uuid::Uuid::new_v4().as_bytes());
    format!("$sha256${salt}${}", digest(&salt, password))
}

/// A hash by `function`: argon2id with the crate's default cost (19 MiB, 2 passes, 1 lane) and
/// a random salt, in PHC form. Blocks for tens of milliseconds: call it off the core.
pub fn hash_password_with(password: &str, function: HashFunction) -> String {
    use argon2::password_hash::{rand_core::OsRng, PasswordHasher, SaltString};
    match function {
        HashFunction::Sha256 => hash_password(password),
        HashFunction::Argon2id => {
            let salt = SaltString::generate(&mut OsRng);
            match argon2::Argon2::default().hash_password(password.as_bytes(), &salt) {
                Ok(hash) => hash.to_string(),
                // Only invalid parameters fail, and the defaults are valid; never store a
                // password unhashed.
                Err(_) => hash_password(password),
            }
        }
    }
}

/// The configured hash of `password`, computed on a helper thread when it is argon2id.
async fn hash_for(resources: &Resources, password: &str) -> Result<String, VerbError> {
    match HashFunction::of(resources) {
        HashFunction::Sha256 => Ok(hash_password(password)),
        HashFunction::Argon2id => {
            let password = password.to_string();
            crate::resource::run_blocking(move || {
                hash_password_with(&password, HashFunction::Argon2id)
            })
            .await
            .map_err(VerbError::from)
        }
    }
}

/// Whether `password` matches a stored hash (salted SHA-256 or argon2id PHC), compared in
/// constant time.
pub fn verify_password(password: &str, stored: &str) -> bool {
    if stored.starts_with("$argon2") {
        use argon2::password_hash::{PasswordHash, PasswordVerifier};
        return PasswordHash::new(stored).is_ok_and(|hash| {
            argon2::Argon2::default()
                .verify_password(password.as_bytes(), &hash)
                .is_ok()
        });
    }
    let mut parts = stored.split('$');
    let (Some(""), Some("sha256"), Some(salt), Some(expected), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return false;
    };
    let got = digest(salt, password);
    got.len() == expected.len()
        && got
            .bytes()
            .zip(expected.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

fn builtin_roles() -> Vec<Value> {
    ["super_user", "cluster_user"]
        .iter()
        .map(|name| {
            let mut permission = Object::new();
            permission.insert(*name, Value::Bool(true));
            let mut role = Object::new();
            role.insert("id", Value::String(name.to_string()));
            role.insert("role", Value::String(name.to_string()));
            role.insert("permission", Value::Object(permission));
            Value::Object(role)
        })
        .collect()
}

pub(super) fn all(resources: &Resources, table: &str) -> Result<Vec<Value>, VerbError> {
    let (db, t) = resources
        .table(SYSTEM, table)
        .ok_or_else(|| VerbError::new(500, format!("system table {table} is missing")))?;
    let txn = db.read()?;
    let mut out = Vec::new();
    for item in txn.scan(&t, false)? {
        let (_, record) = item?;
        out.push(value::deserialize(record.value).map_err(|e| VerbError::new(500, e.to_string()))?);
    }
    Ok(out)
}

pub(super) fn get(
    resources: &Resources,
    table: &str,
    key: &str,
) -> Result<Option<Value>, VerbError> {
    let (db, t) = resources
        .table(SYSTEM, table)
        .ok_or_else(|| VerbError::new(500, format!("system table {table} is missing")))?;
    let txn = db.read()?;
    match txn.get(&t, &Value::String(key.to_string()))? {
        Some(record) => Ok(Some(
            value::deserialize(record.value).map_err(|e| VerbError::new(500, e.to_string()))?,
        )),
        None => Ok(None),
    }
}

async fn put(
    resources: &Resources,
    caller: &Caller,
    table: &str,
    mut record: Object,
    mode: PutMode,
) -> Result<bool, VerbError> {
    let (db, t) = resources
        .table(SYSTEM, table)
        .ok_or_else(|| VerbError::new(500, format!("system table {table} is missing")))?;
    let validation = if mode == PutMode::Insert {
        Validation::Full
    } else {
        Validation::Partial
    };
    validate_record(&t.def, &mut record, validation).map_err(VerbError::bad)?;
    let outcome = write(
        &db,
        WriteRequest {
            ops: vec![WriteOp::Put {
                table: table.to_string(),
                key: None,
                record: Value::Object(record),
                mode,
                expires_in_s: None,
            }],
            user: caller.username.clone(),
            extras: None,
        },
    )
    .await?;
    resources.bump_auth_generation();
    Ok(matches!(
        outcome.results.first(),
        Some(crate::store::OpResult::Written { .. })
    ))
}

async fn delete(
    resources: &Resources,
    caller: &Caller,
    table: &str,
    key: &str,
) -> Result<(), VerbError> {
    let (db, _) = resources
        .table(SYSTEM, table)
        .ok_or_else(|| VerbError::new(500, format!("system table {table} is missing")))?;
    write(
        &db,
        WriteRequest {
            ops: vec![WriteOp::Delete {
                table: table.to_string(),
                key: Value::String(key.to_string()),
            }],
            user: caller.username.clone(),
            extras: None,
        },
    )
    .await?;
    resources.bump_auth_generation();
    Ok(())
}

/// Every role: the built-ins, then the stored ones.
pub fn list_roles(resources: &Resources) -> Result<Vec<Value>, VerbError> {
    let mut roles = builtin_roles();
    roles.extend(all(resources, ROLES)?);
    Ok(roles)
}

/// The role whose id or name is `name`.
fn find_role(resources: &Resources, name: &str) -> Result<Option<Value>, VerbError> {
    Ok(list_roles(resources)?.into_iter().find(|r| {
        r.get("id").and_then(Value::as_str) == Some(name)
            || r.get("role").and_then(Value::as_str) == Some(name)
    }))
}

/// HarperDB's answer to a role with problems (docs/operations-api.md).
pub const ROLE_PERMS_ERROR: &str = "Errors in the role permissions JSON provided";

/// The problems of a role's `permission`, collected as HarperDB reports them: those of the
/// role as a whole (and unknown databases and tables) in `main_permissions`, those of one
/// table's grant under `schema_permissions["<db>_<table>"]`.
#[derive(Default)]
struct RoleProblems {
    main: Vec<Value>,
    tables: Object,
}

impl RoleProblems {
    fn main(&mut self, problem: String) {
        self.main.push(Value::String(problem));
    }

    fn table(&mut self, database: &str, table: &str, problem: String) {
        let key = format!("{database}_{table}");
        match self.tables.get_mut(&key) {
            Some(Value::Array(list)) => list.push(Value::String(problem)),
            _ => {
                self.tables
                    .insert(key, Value::Array(vec![Value::String(problem)]));
            }
        }
    }

    /// 400 `{"error": ROLE_PERMS_ERROR, "main_permissions": [...], "schema_permissions": {...}}`
    /// when anything was found.
    fn into_result(self) -> Result<(), VerbError> {
        if self.main.is_empty() && self.tables.is_empty() {
            return Ok(());
        }
        let mut details = Object::new();
        details.insert("main_permissions", Value::Array(self.main));
        details.insert("schema_permissions", Value::Object(self.tables));
        Err(VerbError::bad(ROLE_PERMS_ERROR).with_details(details))
    }
}

/// Whether `v` is a boolean flag; HarperDB's "missing" and "must be a boolean" problems.
fn flag_problem(v: Option<&Value>, missing: String, not_boolean: String) -> Option<String> {
    match v {
        None => Some(missing),
        Some(Value::Bool(_)) => None,
        Some(_) => Some(not_boolean),
    }
}

/// docs/operations-api.md's role rules for `add_role`/`alter_role`, as HarperDB checks them: the databases,
/// tables and attributes named must exist; every table grant has boolean `read`, `insert`,
/// `update` and `delete` and an `attribute_permissions` array (or null); each attribute grant
/// has an `attribute_name` and boolean `read`, `insert`, `update` (a `delete` there is accepted
/// and ignored, as HarperDB does); no attribute grant beyond its table's; `super_user: true`
/// alone. Every problem is reported, in HarperDB's shape ([`ROLE_PERMS_ERROR`]).
pub fn validate_role(resources: &Resources, permission: &Value) -> Result<(), VerbError> {
    role_problems(Some(resources), permission)
}

/// The structural part of [`validate_role`], for the application's role files (docs/security.md): no
/// existence checks (nothing is created yet when they are read), and `attribute_permissions`
/// may be left out.
pub fn validate_permission(permission: &Value) -> Result<(), VerbError> {
    role_problems(None, permission)
}

fn role_problems(resources: Option<&Resources>, permission: &Value) -> Result<(), VerbError> {
    let Value::Object(p) = permission else {
        return Err(VerbError::bad("'permission' must be an object"));
    };
    let mut problems = RoleProblems::default();
    if matches!(p.get("super_user"), Some(Value::Bool(true)))
        && p.iter()
            .any(|(k, v)| k != "super_user" && !matches!(v, Value::Bool(false)))
    {
        problems
            .main("Roles with 'super_user' set to true cannot have other permissions set.".into());
        return problems.into_result();
    }
    for (key, v) in p.iter() {
        match key {
            "super_user" | "cluster_user" => {
                if !matches!(v, Value::Bool(_)) {
                    problems.main(format!("Value for '{key}' permission must be a boolean"));
                }
            }
            "structure_user" => match v {
                Value::Bool(_) => {}
                Value::Array(items) => {
                    for item in items {
                        match item {
                            Value::String(db) => {
                                if resources.is_some_and(|r| r.store.database(db).is_none()) {
                                    problems.main(format!("database '{db}' does not exist"));
                                }
                            }
                            _ => problems.main(
                                "Value for 'structure_user' permission must be a boolean or Array"
                                    .into(),
                            ),
                        }
                    }
                }
                _ => problems.main(
                    "Value for 'structure_user' permission must be a boolean or Array".into(),
                ),
            },
            database => {
                if resources.is_some_and(|r| r.store.database(database).is_none()) {
                    problems.main(format!("database '{database}' does not exist"));
                    continue;
                }
                let Value::Object(db) = v else {
                    problems.main(format!(
                        "permission for database '{database}' must be an object"
                    ));
                    continue;
                };
                for (k, tables) in db.iter() {
                    if k != "tables" {
                        problems.main(format!("database '{database}': unknown key '{k}'"));
                        continue;
                    }
                    let Value::Object(tables) = tables else {
                        problems.main(format!("database '{database}': 'tables' must be an object"));
                        continue;
                    };
                    for (table, grant) in tables.iter() {
                        table_problems(resources, database, table, grant, &mut problems);
                    }
                }
            }
        }
    }
    problems.into_result()
}

/// The problems of one table's grant, in HarperDB's order.
fn table_problems(
    resources: Option<&Resources>,
    database: &str,
    table: &str,
    grant: &Value,
    problems: &mut RoleProblems,
) {
    let def = match resources {
        Some(r) => match r.table(database, table) {
            Some((_, t)) => Some(t),
            None => {
                problems.main(format!("Table '{database}.{table}' does not exist"));
                return;
            }
        },
        None => None,
    };
    let mut add = |problem: String| problems.table(database, table, problem);
    let Value::Object(grant) = grant else {
        add("Table permissions must be an object".into());
        return;
    };
    for (key, _) in grant.iter() {
        if key != "attribute_permissions" && !TABLE_FLAGS.contains(&key) {
            add(format!("Invalid table permission key value '{key}'"));
        }
    }
    for flag in TABLE_FLAGS {
        let upper = flag.to_ascii_uppercase();
        if let Some(problem) = flag_problem(
            grant.get(flag),
            format!("Missing table {upper} permission"),
            format!("Table {upper} permission must be a boolean"),
        ) {
            // Role files may leave out the flags they do not grant.
            if resources.is_some() || grant.get(flag).is_some() {
                add(problem);
            }
        }
    }
    let items = match grant.get("attribute_permissions") {
        None if resources.is_some() => {
            add("Missing 'attribute_permissions' array".into());
            return;
        }
        None | Some(Value::Null) => return,
        Some(Value::Array(items)) => items,
        Some(_) => {
            add("Value for 'attribute_permissions' must be an array".into());
            return;
        }
    };
    let mut granted = [false; 3];
    for item in items {
        let Value::Object(attr) = item else {
            add("Permission object in 'attribute_permission' missing an 'attribute_name'".into());
            continue;
        };
        for (key, _) in attr.iter() {
            // HarperDB accepts `delete` here and ignores it; so do we.
            if key != "attribute_name" && key != "delete" && !ATTRIBUTE_FLAGS.contains(&key) {
                add(format!("Invalid attribute permission key value '{key}'"));
            }
        }
        let name = match attr.get("attribute_name") {
            Some(Value::String(n)) => n.as_str(),
            _ => {
                add(
                    "Permission object in 'attribute_permission' missing an 'attribute_name'"
                        .into(),
                );
                continue;
            }
        };
        if def
            .as_ref()
            .is_some_and(|t| t.def.attribute(name).is_none())
        {
            add(format!(
                "Invalid attribute '{name}' in 'attribute_permissions'"
            ));
            continue;
        }
        for (i, flag) in ATTRIBUTE_FLAGS.iter().enumerate() {
            let upper = flag.to_ascii_uppercase();
            if let Some(problem) = flag_problem(
                attr.get(flag),
                format!("{upper} attribute permission missing for '{name}'"),
                format!("{upper} attribute permission for '{name}' must be a boolean"),
            ) {
                if resources.is_some() || attr.get(flag).is_some() {
                    add(problem);
                }
            }
            granted[i] |= matches!(attr.get(flag), Some(Value::Bool(true)));
        }
    }
    let beyond = ATTRIBUTE_FLAGS
        .iter()
        .zip(granted)
        // A flag that is not a boolean is reported as such alone, as HarperDB does.
        .any(|(flag, g)| g && matches!(grant.get(flag), None | Some(Value::Bool(false))));
    if beyond {
        add(format!(
            "You have a conflict with TABLE permissions for '{database}.{table}' being false and ATTRIBUTE permissions being true"
        ));
    }
}

pub async fn add_role(
    resources: &Resources,
    caller: &Caller,
    role: &str,
    id: Option<&str>,
    permission: Value,
) -> Result<Value, VerbError> {
    validate_role(resources, &permission)?;
    let id = id.unwrap_or(role);
    if find_role(resources, role)?.is_some() || find_role(resources, id)?.is_some() {
        return Err(VerbError::new(
            409,
            format!("A role with name '{role}' already exists"),
        ));
    }
    let mut record = Object::new();
    record.insert("id", Value::String(id.to_string()));
    record.insert("role", Value::String(role.to_string()));
    record.insert("permission", permission);
    put(resources, caller, ROLES, record, PutMode::Insert).await?;
    get(resources, ROLES, id)?.ok_or_else(|| VerbError::new(500, "role vanished after insert"))
}

pub async fn alter_role(
    resources: &Resources,
    caller: &Caller,
    id: &str,
    role: Option<&str>,
    permission: Value,
) -> Result<Value, VerbError> {
    validate_role(resources, &permission)?;
    if get(resources, ROLES, id)?.is_none() {
        return Err(VerbError::new(404, format!("Role '{id}' not found")));
    }
    let mut record = Object::new();
    record.insert("id", Value::String(id.to_string()));
    if let Some(role) = role {
        record.insert("role", Value::String(role.to_string()));
    }
    record.insert("permission", permission);
    put(resources, caller, ROLES, record, PutMode::Update).await?;
    get(resources, ROLES, id)?.ok_or_else(|| VerbError::new(404, format!("Role '{id}' not found")))
}

pub async fn drop_role(
    resources: &Resources,
    caller: &Caller,
    id: &str,
) -> Result<String, VerbError> {
    let Some(role) = get(resources, ROLES, id)? else {
        // HarperDB's words.
        return Err(VerbError::new(404, "Role not found"));
    };
    if all(resources, USERS)?
        .iter()
        .any(|u| u.get("role").and_then(Value::as_str) == Some(id))
    {
        return Err(VerbError::new(
            409,
            format!("Role '{id}' is still assigned to users and cannot be dropped"),
        ));
    }
    delete(resources, caller, ROLES, id).await?;
    let name = role.get("role").and_then(Value::as_str).unwrap_or(id);
    Ok(format!("{name} successfully deleted"))
}

/// A user as `list_users` shows it: never the password or token hashes, the role expanded.
fn public_user(resources: &Resources, user: &Value) -> Result<Value, VerbError> {
    let mut out = Object::new();
    for key in ["username", "active"] {
        if let Some(v) = user.get(key) {
            out.insert(key, v.clone());
        }
    }
    let role_id = user.get("role").and_then(Value::as_str).unwrap_or("");
    out.insert(
        "role",
        find_role(resources, role_id)?.unwrap_or(Value::String(role_id.to_string())),
    );
    for key in ["__createdtime__", "__updatedtime__"] {
        if let Some(v) = user.get(key) {
            out.insert(key, v.clone());
        }
    }
    Ok(Value::Object(out))
}

pub fn list_users(resources: &Resources) -> Result<Vec<Value>, VerbError> {
    all(resources, USERS)?
        .iter()
        .map(|u| public_user(resources, u))
        .collect()
}

/// The caller's own record. A caller not stored (the built-in super user before any user
/// exists) is shown with its role.
pub fn user_info(resources: &Resources, caller: &Caller) -> Result<Value, VerbError> {
    let name = caller.username.clone().unwrap_or_default();
    if let Some(user) = get(resources, USERS, &name)? {
        return public_user(resources, &user);
    }
    let mut out = Object::new();
    out.insert("username", Value::String(name));
    out.insert("active", Value::Bool(true));
    let role = if caller.super_user { "super_user" } else { "" };
    out.insert("role", find_role(resources, role)?.unwrap_or(Value::Null));
    Ok(Value::Object(out))
}

fn role_id(resources: &Resources, role: &str) -> Result<String, VerbError> {
    let found = find_role(resources, role)?
        .ok_or_else(|| VerbError::new(404, format!("{role} role not found")))?;
    Ok(found
        .get("id")
        .and_then(Value::as_str)
        .unwrap_or(role)
        .to_string())
}

pub async fn add_user(
    resources: &Resources,
    caller: &Caller,
    username: &str,
    password: &str,
    role: &str,
    active: bool,
) -> Result<String, VerbError> {
    if username.is_empty() || password.is_empty() {
        return Err(VerbError::bad("'username' and 'password' may not be empty"));
    }
    // HarperDB's answer to a role that does not exist.
    let role = role_id(resources, role).map_err(|_| VerbError::bad("Role is invalid"))?;
    if get(resources, USERS, username)?.is_some() {
        return Err(VerbError::new(
            409,
            format!("User {username} already exists"),
        ));
    }
    let mut record = Object::new();
    record.insert("username", Value::String(username.to_string()));
    record.insert(
        "password",
        Value::String(hash_for(resources, password).await?),
    );
    record.insert("role", Value::String(role));
    record.insert("active", Value::Bool(active));
    if !put(resources, caller, USERS, record, PutMode::Insert).await? {
        return Err(VerbError::new(
            409,
            format!("User {username} already exists"),
        ));
    }
    Ok(format!("{username} successfully added"))
}

pub async fn alter_user(
    resources: &Resources,
    caller: &Caller,
    username: &str,
    password: Option<&str>,
    role: Option<&str>,
    active: Option<bool>,
) -> Result<Value, VerbError> {
    if get(resources, USERS, username)?.is_none() {
        return Err(VerbError::new(404, format!("User {username} not found")));
    }
    let mut record = Object::new();
    record.insert("username", Value::String(username.to_string()));
    if let Some(password) = password {
        if password.is_empty() {
            return Err(VerbError::bad("'password' may not be empty"));
        }
        record.insert(
            "password",
            Value::String(hash_for(resources, password).await?),
        );
    }
    if let Some(role) = role {
        // HarperDB's words (it answers the empty name with 500; a client error is a 400 here).
        if role.is_empty() {
            return Err(VerbError::bad("If role is specified, it cannot be empty."));
        }
        let id = role_id(resources, role).map_err(|e| match e.status {
            404 => VerbError::new(
                404,
                format!("Update failed.  Requested '{role}' role not found."),
            ),
            _ => e,
        })?;
        record.insert("role", Value::String(id));
    }
    if let Some(active) = active {
        record.insert("active", Value::Bool(active));
    }
    let updated = put(resources, caller, USERS, record, PutMode::Update).await?;
    let name = Value::String(username.to_string());
    let mut out = Object::new();
    out.insert(
        "message",
        Value::String(format!("updated {} of 1 records", u8::from(updated))),
    );
    let (done, skipped) = if updated {
        (vec![name], vec![])
    } else {
        (vec![], vec![name])
    };
    out.insert("update_hashes", Value::Array(done));
    out.insert("skipped_hashes", Value::Array(skipped));
    Ok(Value::Object(out))
}

pub async fn drop_user(
    resources: &Resources,
    caller: &Caller,
    username: &str,
) -> Result<String, VerbError> {
    if get(resources, USERS, username)?.is_none() {
        return Err(VerbError::new(
            404,
            format!("User {username} does not exist"),
        ));
    }
    delete(resources, caller, USERS, username).await?;
    Ok(format!("{username} successfully deleted"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(permission: &str, expected: Result<(), &str>) {
        let value = value::json::parse(permission.as_bytes()).expect("test JSON");
        match (validate_permission(&value), expected) {
            (Ok(()), Ok(())) => {}
            (Err(e), Err(fragment)) => {
                assert!(e.full_message().contains(fragment), "{}", e.full_message())
            }
            (got, want) => panic!("{permission}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn role_rules() {
        check(r#"{"super_user": true}"#, Ok(()));
        check(r#"{"super_user": true, "cluster_user": false}"#, Ok(()));
        check(
            r#"{"super_user": true, "dev": {"tables": {}}}"#,
            Err("cannot have other permissions"),
        );
        check(
            r#"{"super_user": "yes"}"#,
            Err("Value for 'super_user' permission must be a boolean"),
        );
        check(
            r#"{"dev": {"tables": {"dog": {"read": true, "insert": false, "update": false, "delete": false}}}}"#,
            Ok(()),
        );
        check(
            r#"{"dev": {"tables": {"dog": {"read": 1}}}}"#,
            Err("Table READ permission must be a boolean"),
        );
        check(
            r#"{"dev": {"tables": {"dog": {"fly": true}}}}"#,
            Err("Invalid table permission key value 'fly'"),
        );
        check(r#"{"dev": {"other": {}}}"#, Err("unknown key"));
        check(
            r#"{"dev": {"tables": {"dog": {"read": false, "attribute_permissions": [{"attribute_name": "x", "read": true}]}}}}"#,
            Err("conflict with TABLE permissions"),
        );
        check(
            r#"{"dev": {"tables": {"dog": {"read": true, "attribute_permissions": [{"attribute_name": "x", "read": true}]}}}}"#,
            Ok(()),
        );
        check(r#"{"structure_user": ["dev"]}"#, Ok(()));
        check(r#"{"structure_user": 3}"#, Err("boolean or Array"));
        // `delete` in an attribute grant is accepted and ignored.
        check(
            r#"{"dev": {"tables": {"dog": {"read": true, "attribute_permissions": [{"attribute_name": "x", "read": true, "delete": true}]}}}}"#,
            Ok(()),
        );
        check(
            r#"{"dev": {"tables": {"dog": {"read": true, "attribute_permissions": [{"attribute_name": "x", "fly": true}]}}}}"#,
            Err("Invalid attribute permission key value 'fly'"),
        );
    }

    #[test]
    fn passwords_hash_and_verify() {
        let hash = hash_password("secret");
        assert!(hash.starts_with("$sha256$"));
        assert!(!hash.contains("secret"));
        assert!(verify_password("secret", &hash));
        assert!(!verify_password("Secret", &hash));
        assert!(!verify_password("secret", "$sha256$abc"));
        assert_ne!(hash, hash_password("secret"), "salted");
        let argon = hash_password_with("secret", HashFunction::Argon2id);
        assert!(argon.starts_with("$argon2id$"), "{argon}");
        assert!(!argon.contains("secret"));
        assert!(verify_password("secret", &argon));
        assert!(!verify_password("Secret", &argon));
        assert!(!verify_password("secret", "$argon2id$v=19$broken"));
        assert_ne!(
            argon,
            hash_password_with("secret", HashFunction::Argon2id),
            "salted"
        );
    }
}
