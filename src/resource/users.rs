//! Users and roles (SPEC §4.4, §5.5): stored in `system.hdb_user` and `system.hdb_role`, with
//! the built-in roles `super_user` and `cluster_user` always listed.
//!
//! Passwords are stored only as salted hashes, `$sha256$<salt hex>$<digest hex>` or argon2id in
//! PHC form (`authentication.hashFunction`, SPEC §5.1); either verifies whatever the setting, so
//! changing it keeps existing users. Argon2id is slow on purpose (tens of ms), so hashing runs
//! off the core and verification sits behind the per-core credential cache (`auth`). Nothing here
//! returns or logs a password or a hash. Role permissions are validated before they are stored.

use sha2::{Digest, Sha256};

use super::tables::SYSTEM;
use super::{validate_record, write, Caller, Resources, Validation, VerbError};
use crate::store::{PutMode, WriteOp, WriteRequest};
use crate::value::{self, Object, Value};

const USERS: &str = "hdb_user";
const ROLES: &str = "hdb_role";
/// Role permission flags a table grant may carry.
const TABLE_FLAGS: &[&str] = &["read", "insert", "update", "delete"];
/// Flags of an attribute grant.
const ATTRIBUTE_FLAGS: &[&str] = &["read", "insert", "update"];

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 15) as usize] as char);
    }
    out
}

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
    /// default (README "Passwords").
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
            .ok_or_else(|| VerbError::new(500, "cannot start a thread to hash the password"))
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

fn check_flags(
    what: &str,
    grant: &Object,
    allowed: &[&str],
    extra: &[&str],
) -> Result<(), VerbError> {
    for (key, v) in grant.iter() {
        if allowed.contains(&key) {
            if !matches!(v, Value::Bool(_)) {
                return Err(VerbError::bad(format!(
                    "{what}: '{key}' must be true or false"
                )));
            }
        } else if !extra.contains(&key) {
            return Err(VerbError::bad(format!("{what}: unknown key '{key}'")));
        }
    }
    Ok(())
}

/// SPEC §4.4's role rules: known keys only, boolean flags, no attribute grant beyond its
/// table's, and `super_user: true` alone.
pub fn validate_permission(permission: &Value) -> Result<(), VerbError> {
    let Value::Object(p) = permission else {
        return Err(VerbError::bad("'permission' must be an object"));
    };
    if matches!(p.get("super_user"), Some(Value::Bool(true))) {
        if let Some((key, _)) = p
            .iter()
            .find(|(k, v)| *k != "super_user" && !matches!(v, Value::Bool(false)))
        {
            return Err(VerbError::bad(format!(
                "a super_user role admits no other permissions (found '{key}')"
            )));
        }
        return Ok(());
    }
    for (key, v) in p.iter() {
        match key {
            "super_user" | "cluster_user" => {
                if !matches!(v, Value::Bool(_)) {
                    return Err(VerbError::bad(format!("'{key}' must be true or false")));
                }
            }
            "structure_user" => {
                let ok = match v {
                    Value::Bool(_) => true,
                    Value::Array(items) => items.iter().all(|i| matches!(i, Value::String(_))),
                    _ => false,
                };
                if !ok {
                    return Err(VerbError::bad(
                        "'structure_user' must be true, false or a list of databases",
                    ));
                }
            }
            database => {
                let Value::Object(db) = v else {
                    return Err(VerbError::bad(format!(
                        "permission for database '{database}' must be an object"
                    )));
                };
                for (k, tables) in db.iter() {
                    if k != "tables" {
                        return Err(VerbError::bad(format!(
                            "database '{database}': unknown key '{k}'"
                        )));
                    }
                    let Value::Object(tables) = tables else {
                        return Err(VerbError::bad(format!(
                            "database '{database}': 'tables' must be an object"
                        )));
                    };
                    for (table, grant) in tables.iter() {
                        validate_table_grant(database, table, grant)?;
                    }
                }
            }
        }
    }
    Ok(())
}

fn validate_table_grant(database: &str, table: &str, grant: &Value) -> Result<(), VerbError> {
    let what = format!("table '{database}.{table}'");
    let Value::Object(grant) = grant else {
        return Err(VerbError::bad(format!(
            "{what}: permission must be an object"
        )));
    };
    check_flags(&what, grant, TABLE_FLAGS, &["attribute_permissions"])?;
    let table_flag = |flag: &str| matches!(grant.get(flag), Some(Value::Bool(true)));
    match grant.get("attribute_permissions") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            for item in items {
                let Value::Object(attr) = item else {
                    return Err(VerbError::bad(format!(
                        "{what}: each attribute permission must be an object"
                    )));
                };
                let name = match attr.get("attribute_name") {
                    Some(Value::String(n)) => n.clone(),
                    _ => {
                        return Err(VerbError::bad(format!(
                            "{what}: each attribute permission needs an 'attribute_name'"
                        )))
                    }
                };
                let attr_what = format!("{what} attribute '{name}'");
                check_flags(&attr_what, attr, ATTRIBUTE_FLAGS, &["attribute_name"])?;
                for flag in ATTRIBUTE_FLAGS {
                    if matches!(attr.get(flag), Some(Value::Bool(true))) && !table_flag(flag) {
                        return Err(VerbError::bad(format!(
                            "{attr_what}: '{flag}' is granted but the table's '{flag}' is not"
                        )));
                    }
                }
            }
        }
        Some(_) => {
            return Err(VerbError::bad(format!(
                "{what}: 'attribute_permissions' must be an array"
            )))
        }
    }
    Ok(())
}

pub async fn add_role(
    resources: &Resources,
    caller: &Caller,
    role: &str,
    id: Option<&str>,
    permission: Value,
) -> Result<Value, VerbError> {
    validate_permission(&permission)?;
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
    validate_permission(&permission)?;
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
        return Err(VerbError::new(404, format!("Role '{id}' not found")));
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
    let role = role_id(resources, role)?;
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
        record.insert("role", Value::String(role_id(resources, role)?));
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
        return Err(VerbError::new(404, format!("User {username} not found")));
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
            (Err(e), Err(fragment)) => assert!(e.message.contains(fragment), "{}", e.message),
            (got, want) => panic!("{permission}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn role_rules() {
        check(r#"{"super_user": true}"#, Ok(()));
        check(r#"{"super_user": true, "cluster_user": false}"#, Ok(()));
        check(
            r#"{"super_user": true, "dev": {"tables": {}}}"#,
            Err("no other"),
        );
        check(r#"{"super_user": "yes"}"#, Err("true or false"));
        check(
            r#"{"dev": {"tables": {"dog": {"read": true, "insert": false, "update": false, "delete": false}}}}"#,
            Ok(()),
        );
        check(
            r#"{"dev": {"tables": {"dog": {"read": 1}}}}"#,
            Err("true or false"),
        );
        check(
            r#"{"dev": {"tables": {"dog": {"fly": true}}}}"#,
            Err("unknown key"),
        );
        check(r#"{"dev": {"other": {}}}"#, Err("unknown key"));
        check(
            r#"{"dev": {"tables": {"dog": {"read": false, "attribute_permissions": [{"attribute_name": "x", "read": true}]}}}}"#,
            Err("is not"),
        );
        check(
            r#"{"dev": {"tables": {"dog": {"read": true, "attribute_permissions": [{"attribute_name": "x", "read": true}]}}}}"#,
            Ok(()),
        );
        check(r#"{"structure_user": ["dev"]}"#, Ok(()));
        check(r#"{"structure_user": 3}"#, Err("structure_user"));
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
