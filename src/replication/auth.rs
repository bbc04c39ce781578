//! Who may open a replication link (docs/replication.md): a `Basic` `Authorization` on the upgrade of an
//! active user whose role is `super_user` or `cluster_user` (the role record's flags, or the
//! built-in roles of those names), and a verified peer certificate whose CN or DNS name equals
//! the node name announced in `HELLO`. Links run on plain threads without the HTTP layer's
//! `Resources`, so this reads `system.hdb_user` and `system.hdb_role` from the store directly.
//! It never writes, never caches (an upgrade is rare), and never decides on the plain port's
//! IP-based trust (that is the listener's).

use tidepool_io::rustls::pki_types::{CertificateDer, ServerName};

use crate::resource::permissions::Permissions;
use crate::store::Store;
use crate::value::{deserialize, Value};

/// An `Authorization` header longer than this is refused without decoding.
const AUTHORIZATION_BYTES_MAX: usize = 4096;

/// Why an upgrade's credentials were refused.
#[derive(Debug, PartialEq)]
pub enum Refusal {
    /// Not `Basic`, not base64, no `:`.
    Malformed,
    UnknownUser(String),
    WrongPassword(String),
    Inactive(String),
    /// A valid user whose role allows neither `super_user` nor `cluster_user`.
    NotClusterUser(String),
    Storage(String),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Malformed => f.write_str("malformed Authorization header"),
            Refusal::UnknownUser(u) => write!(f, "unknown user {u:?}"),
            Refusal::WrongPassword(u) => write!(f, "wrong password for user {u:?}"),
            Refusal::Inactive(u) => write!(f, "user {u:?} is inactive"),
            Refusal::NotClusterUser(u) => {
                write!(f, "user {u:?} is neither super_user nor cluster_user")
            }
            Refusal::Storage(e) => write!(f, "cannot read users: {e}"),
        }
    }
}

fn system_record(store: &Store, table: &str, key: &str) -> Result<Option<Value>, Refusal> {
    let storage = |e: &dyn std::fmt::Display| Refusal::Storage(e.to_string());
    let db = store
        .database("system")
        .ok_or_else(|| Refusal::Storage("no system database".into()))?;
    let t = db
        .table(table)
        .ok_or_else(|| Refusal::Storage(format!("no system.{table}")))?;
    let txn = db.read().map_err(|e| storage(&e))?;
    match txn
        .get(&t, &Value::String(key.to_string()))
        .map_err(|e| storage(&e))?
    {
        Some(r) => deserialize(r.value).map(Some).map_err(|e| storage(&e)),
        None => Ok(None),
    }
}

/// The permissions of a role named by id or name; unknown roles grant nothing.
fn role_permissions(store: &Store, role: &str) -> Result<Permissions, Refusal> {
    if let Some(record) = system_record(store, "hdb_role", role)? {
        return Ok(record
            .get("permission")
            .map(Permissions::from_role)
            .unwrap_or_default());
    }
    // By name: the built-in roles, else a scan (roles are few).
    let mut builtin = Permissions::none();
    match role {
        "super_user" => builtin.super_user = true,
        "cluster_user" => builtin.cluster_user = true,
        _ => {}
    }
    if builtin != Permissions::none() {
        return Ok(builtin);
    }
    let db = store
        .database("system")
        .ok_or_else(|| Refusal::Storage("no system database".into()))?;
    let Some(t) = db.table("hdb_role") else {
        return Ok(Permissions::none());
    };
    let txn = db.read().map_err(|e| Refusal::Storage(e.to_string()))?;
    let records = txn
        .raw_records(&t)
        .map_err(|e| Refusal::Storage(e.to_string()))?;
    Ok(records
        .into_iter()
        .filter_map(|r| r.value)
        .find(|v| v.get("role").and_then(Value::as_str) == Some(role))
        .and_then(|v| v.get("permission").map(Permissions::from_role))
        .unwrap_or_default())
}

/// Who an upgrade's credentials admit.
#[derive(Debug, PartialEq)]
pub struct Admitted {
    pub username: String,
    /// Only a super user may have its node certificate signed (docs/replication.md).
    pub super_user: bool,
}

/// Checks an upgrade's `Authorization: Basic …`.
pub fn authorize(store: &Store, header: &str) -> Result<Admitted, Refusal> {
    if header.len() > AUTHORIZATION_BYTES_MAX {
        return Err(Refusal::Malformed);
    }
    let (scheme, rest) = header.trim().split_once(' ').ok_or(Refusal::Malformed)?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(Refusal::Malformed);
    }
    let decoded = crate::util::decode_base64(rest.trim())
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or(Refusal::Malformed)?;
    let (username, password) = decoded.split_once(':').ok_or(Refusal::Malformed)?;
    let user = system_record(store, "hdb_user", username)?
        .ok_or_else(|| Refusal::UnknownUser(username.to_string()))?;
    let hash = user.get("password").and_then(Value::as_str).unwrap_or("");
    if !crate::resource::users::verify_password(password, hash) {
        return Err(Refusal::WrongPassword(username.to_string()));
    }
    if matches!(user.get("active"), Some(Value::Bool(false))) {
        return Err(Refusal::Inactive(username.to_string()));
    }
    let role = user.get("role").and_then(Value::as_str).unwrap_or("");
    let permissions = role_permissions(store, role)?;
    if !(permissions.super_user || permissions.cluster_user) {
        return Err(Refusal::NotClusterUser(username.to_string()));
    }
    Ok(Admitted {
        username: username.to_string(),
        super_user: permissions.super_user,
    })
}

/// Whether a verified certificate names `node`: its subject CN, or a DNS name it is valid for.
pub fn certificate_names(certificate: &CertificateDer<'_>, node: &str) -> bool {
    if tidepool_io::certificate_subject_cn(certificate.as_ref()) == Some(node) {
        return true;
    }
    let Ok(name) = ServerName::try_from(node) else {
        return false;
    };
    // Only DNS names: an IP address in HELLO is not a node name.
    if !matches!(name, ServerName::DnsName(_)) {
        return false;
    }
    webpki::EndEntityCert::try_from(certificate)
        .map(|c| c.verify_is_valid_for_subject_name(&name).is_ok())
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(header: &str, expected: Result<(&str, bool), Refusal>) {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(
            crate::store::StoreOptions::new(dir.path()),
            std::sync::Arc::new(|_| {}),
        )
        .unwrap();
        let def = |table: &str, key: &str| {
            let primary = crate::value::Object::from_iter([(
                "primaryKey".to_string(),
                Value::String(key.into()),
            )]);
            super::super::link::table_def("system", table, &Value::Object(primary))
        };
        store
            .apply_schema(&[def("hdb_user", "username"), def("hdb_role", "id")])
            .unwrap();
        let db = store.database("system").unwrap();
        let hash = crate::resource::users::hash_password("pw");
        let mut writes = Vec::new();
        for (name, role, active) in [
            ("admin", "super_user", true),
            ("peer", "repl", true),
            ("idle", "super_user", false),
            ("reader", "readers", true),
        ] {
            let mut o = crate::value::Object::new();
            o.insert("username", Value::String(name.into()));
            o.insert("password", Value::String(hash.clone()));
            o.insert("role", Value::String(role.into()));
            o.insert("active", Value::Bool(active));
            writes.push(("hdb_user", name, Value::Object(o)));
        }
        for (id, flag) in [("repl", "cluster_user"), ("readers", "structure_user")] {
            let mut permission = crate::value::Object::new();
            permission.insert(flag, Value::Bool(true));
            let mut o = crate::value::Object::new();
            o.insert("id", Value::String(id.into()));
            o.insert("role", Value::String(id.into()));
            o.insert("permission", Value::Object(permission));
            writes.push(("hdb_role", id, Value::Object(o)));
        }
        let request = crate::store::WriteRequest {
            ops: writes
                .into_iter()
                .map(|(table, key, record)| crate::store::WriteOp::Put {
                    table: table.into(),
                    key: Some(Value::String(key.into())),
                    record,
                    mode: crate::store::PutMode::Upsert,
                    expires_in_s: None,
                })
                .collect(),
            user: None,
            extras: None,
        };
        let rx = db.submit(request).unwrap();
        assert!(matches!(super::super::block_on(rx), Some(Ok(_))));
        assert_eq!(
            authorize(&store, header).map(|a| (a.username, a.super_user)),
            expected.map(|(u, s)| (u.to_string(), s))
        );
        store.close();
    }

    fn basic(user: &str, password: &str) -> String {
        use base64::Engine;
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        )
    }

    #[test]
    fn only_active_super_and_cluster_users_with_the_right_password() {
        check(&basic("admin", "pw"), Ok(("admin", true)));
        check(&basic("peer", "pw"), Ok(("peer", false)));
        check(
            &basic("admin", "nope"),
            Err(Refusal::WrongPassword("admin".into())),
        );
        check(&basic("idle", "pw"), Err(Refusal::Inactive("idle".into())));
        check(
            &basic("reader", "pw"),
            Err(Refusal::NotClusterUser("reader".into())),
        );
        check(
            &basic("ghost", "pw"),
            Err(Refusal::UnknownUser("ghost".into())),
        );
        check("Bearer x", Err(Refusal::Malformed));
        check("Basic !!!", Err(Refusal::Malformed));
    }
}
