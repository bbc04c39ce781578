//! Role permissions (docs/security.md): a role's `permission` object read once into [`Permissions`],
//! and the checks every protocol asks before it reads or writes a table.
//!
//! The rule is "ungranted = denied": a table missing from the role allows nothing, an attribute
//! missing from a non-empty `attribute_permissions` list allows nothing, and a super user is
//! allowed everything. This module only answers questions; it never reads storage and never
//! builds a protocol answer — REST turns a [`Denied`] into 401/403, the Operations API into its
//! 403 body with `unauthorized_access`.

use std::collections::HashMap;

use super::Caller;
use crate::value::{Object, Value};

/// What a request does to a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Read,
    Insert,
    Update,
    Delete,
}

impl Action {
    pub fn name(self) -> &'static str {
        match self {
            Action::Read => "read",
            Action::Insert => "insert",
            Action::Update => "update",
            Action::Delete => "delete",
        }
    }
}

/// One attribute's grant inside a table grant.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AttributeGrant {
    pub read: bool,
    pub insert: bool,
    pub update: bool,
}

/// One table's grant. `attributes` empty = the table flags hold for every attribute.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TableGrant {
    pub read: bool,
    pub insert: bool,
    pub update: bool,
    pub delete: bool,
    pub attributes: HashMap<String, AttributeGrant>,
}

impl TableGrant {
    fn flag(&self, action: Action) -> bool {
        match action {
            Action::Read => self.read,
            Action::Insert => self.insert,
            Action::Update => self.update,
            Action::Delete => self.delete,
        }
    }
}

/// A role's permissions, parsed from its stored `permission` object.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Permissions {
    pub super_user: bool,
    pub cluster_user: bool,
    /// database → table → grant.
    pub tables: HashMap<String, HashMap<String, TableGrant>>,
}

fn flag(o: &Object, key: &str) -> bool {
    matches!(o.get(key), Some(Value::Bool(true)))
}

impl Permissions {
    /// Allows nothing (anonymous callers, users without a role).
    pub fn none() -> Self {
        Permissions::default()
    }

    /// Allows everything.
    pub fn all() -> Self {
        Permissions {
            super_user: true,
            ..Permissions::default()
        }
    }

    /// Reads a role's `permission` object. Anything malformed grants nothing: roles are
    /// validated when stored, so this only meets hand-edited records.
    pub fn from_role(permission: &Value) -> Self {
        let Value::Object(p) = permission else {
            return Permissions::none();
        };
        let mut out = Permissions {
            super_user: flag(p, "super_user"),
            cluster_user: flag(p, "cluster_user"),
            tables: HashMap::new(),
        };
        if out.super_user {
            return out;
        }
        for (database, grant) in p.iter() {
            let Some(Value::Object(tables)) = grant.get("tables") else {
                continue;
            };
            let db = out.tables.entry(database.to_string()).or_default();
            for (table, grant) in tables.iter() {
                let Value::Object(g) = grant else { continue };
                let mut attributes = HashMap::new();
                if let Some(Value::Array(items)) = g.get("attribute_permissions") {
                    for item in items {
                        let Value::Object(a) = item else { continue };
                        let Some(Value::String(name)) = a.get("attribute_name") else {
                            continue;
                        };
                        attributes.insert(
                            name.clone(),
                            AttributeGrant {
                                read: flag(a, "read"),
                                insert: flag(a, "insert"),
                                update: flag(a, "update"),
                            },
                        );
                    }
                }
                db.insert(
                    table.to_string(),
                    TableGrant {
                        read: flag(g, "read"),
                        insert: flag(g, "insert"),
                        update: flag(g, "update"),
                        delete: flag(g, "delete"),
                        attributes,
                    },
                );
            }
        }
        out
    }

    fn grant(&self, database: &str, table: &str) -> Option<&TableGrant> {
        self.tables.get(database)?.get(table)
    }
}

/// A refusal: which table, which table-level and attribute-level rights were missing.
#[derive(Debug, Clone, PartialEq)]
pub struct Denied {
    pub database: String,
    pub table: String,
    pub required_table_permissions: Vec<&'static str>,
    /// (attribute, right) pairs.
    pub required_attribute_permissions: Vec<(String, &'static str)>,
    /// What the role cannot see at all, reported as HarperDB does, as not existing
    /// (`invalid_schema_items`: `Table 'db.t' does not exist`, `Attribute 'a' does not exist on
    /// 'db.t'`), so a caller learns no more of hidden items than of missing ones.
    pub invalid: Vec<String>,
}

/// The 403 message of the Operations API's refusals (and of a CSV job refused in its turn).
pub const FORBIDDEN_MESSAGE: &str =
    "This operation is not authorized due to role restrictions and/or invalid database items";

impl Denied {
    /// The Operations API's 403 body: `{error, unauthorized_access, invalid_schema_items}`.
    pub fn to_body(&self) -> Value {
        let mut o = Object::new();
        o.insert("error", Value::from(FORBIDDEN_MESSAGE));
        let unauthorized = if self.has_rights() {
            vec![self.to_value()]
        } else {
            Vec::new()
        };
        o.insert("unauthorized_access", Value::Array(unauthorized));
        o.insert(
            "invalid_schema_items",
            Value::Array(self.invalid.iter().cloned().map(Value::String).collect()),
        );
        Value::Object(o)
    }

    fn table(database: &str, table: &str, action: Action) -> Self {
        Denied {
            database: database.to_string(),
            table: table.to_string(),
            required_table_permissions: vec![action.name()],
            required_attribute_permissions: Vec::new(),
            invalid: Vec::new(),
        }
    }

    /// A table the role has no grant on (or that does not exist): HarperDB's "does not exist".
    pub fn hidden_table(database: &str, table: &str) -> Self {
        Denied {
            database: database.to_string(),
            table: table.to_string(),
            required_table_permissions: Vec::new(),
            required_attribute_permissions: Vec::new(),
            invalid: vec![hidden_table_text(database, table)],
        }
    }

    /// Whether anything is named besides hidden items (the `unauthorized_access` entry).
    pub fn has_rights(&self) -> bool {
        !self.required_table_permissions.is_empty()
            || !self.required_attribute_permissions.is_empty()
    }

    /// The Operations API's `unauthorized_access` entry (docs/operations-api.md).
    pub fn to_value(&self) -> Value {
        let mut o = Object::new();
        o.insert("schema", Value::String(self.database.clone()));
        o.insert("table", Value::String(self.table.clone()));
        o.insert(
            "required_table_permissions",
            Value::Array(
                self.required_table_permissions
                    .iter()
                    .map(|p| Value::String(p.to_string()))
                    .collect(),
            ),
        );
        o.insert(
            "required_attribute_permissions",
            Value::Array(
                self.required_attribute_permissions
                    .iter()
                    .map(|(name, right)| {
                        let mut a = Object::new();
                        a.insert("attribute_name", Value::String(name.clone()));
                        a.insert(
                            "required_permissions",
                            Value::Array(vec![Value::String(right.to_string())]),
                        );
                        Value::Object(a)
                    })
                    .collect(),
            ),
        );
        Value::Object(o)
    }
}

fn is_super(caller: &Caller) -> bool {
    caller.super_user || caller.permissions.super_user
}

/// Whether `caller` may do `action` on the table at all (table level).
pub fn allowed(caller: &Caller, database: &str, table: &str, action: Action) -> bool {
    if is_super(caller) {
        return true;
    }
    // docs/operations-api.md: the system database is for super users only.
    if database == super::tables::SYSTEM {
        return false;
    }
    caller
        .permissions
        .grant(database, table)
        .is_some_and(|g| g.flag(action))
}

pub fn can_read(caller: &Caller, database: &str, table: &str) -> bool {
    allowed(caller, database, table, Action::Read)
}

pub fn can_insert(caller: &Caller, database: &str, table: &str) -> bool {
    allowed(caller, database, table, Action::Insert)
}

pub fn can_update(caller: &Caller, database: &str, table: &str) -> bool {
    allowed(caller, database, table, Action::Update)
}

pub fn can_delete(caller: &Caller, database: &str, table: &str) -> bool {
    allowed(caller, database, table, Action::Delete)
}

/// Whether the role grants anything on the table (what `describe_*` shows).
pub fn can_see(caller: &Caller, database: &str, table: &str) -> bool {
    [Action::Read, Action::Insert, Action::Update, Action::Delete]
        .into_iter()
        .any(|a| allowed(caller, database, table, a))
}

/// Whether the caller's rights on this table differ per attribute (then reads must filter).
pub fn restricts_attributes(caller: &Caller, database: &str, table: &str) -> bool {
    !is_super(caller)
        && caller
            .permissions
            .grant(database, table)
            .is_some_and(|g| !g.attributes.is_empty())
}

/// Whether `attribute` of the table allows `action` (delete is table-level: same as the table).
/// `primary_key` gets the union of every attribute's grants; `__createdtime__` and
/// `__updatedtime__` honour only `read`.
pub fn attribute_allowed(
    caller: &Caller,
    database: &str,
    table: &str,
    primary_key: Option<&str>,
    attribute: &str,
    action: Action,
) -> bool {
    if !allowed(caller, database, table, action) {
        return false;
    }
    if is_super(caller) {
        return true;
    }
    let Some(grant) = caller.permissions.grant(database, table) else {
        return false;
    };
    if grant.attributes.is_empty() || action == Action::Delete {
        return true;
    }
    let of = |a: &AttributeGrant| match action {
        Action::Read => a.read,
        Action::Insert => a.insert,
        Action::Update => a.update,
        Action::Delete => true,
    };
    if matches!(attribute, "__createdtime__" | "__updatedtime__") {
        return action == Action::Read && grant.attributes.get(attribute).is_none_or(|a| a.read);
    }
    if Some(attribute) == primary_key {
        return grant.attributes.values().any(of);
    }
    grant.attributes.get(attribute).is_some_and(of)
}

/// HarperDB's text for a table the caller cannot see (the Operations API names the database
/// instead when the database itself does not exist, which this module cannot know).
fn hidden_table_text(database: &str, table: &str) -> String {
    format!("Table '{database}.{table}' does not exist")
}

/// Whether the role hides the table entirely: no grant on it, or a grant of no right at all.
fn table_hidden(caller: &Caller, database: &str, table: &str) -> bool {
    !is_super(caller)
        && database != super::tables::SYSTEM
        && caller
            .permissions
            .grant(database, table)
            .is_none_or(|g| !(g.read || g.insert || g.update || g.delete))
}

/// Whether the role hides an attribute entirely (as HarperDB: one missing from a non-empty
/// `attribute_permissions`, or listed with no right at all; the primary key when no attribute
/// grants anything). Only asked of tables whose role restricts attributes.
fn attribute_hidden(grant: &TableGrant, primary_key: Option<&str>, attribute: &str) -> bool {
    let any = |a: &AttributeGrant| a.read || a.insert || a.update;
    if matches!(attribute, "__createdtime__" | "__updatedtime__") {
        return false;
    }
    if Some(attribute) == primary_key {
        return !grant.attributes.values().any(any);
    }
    grant.attributes.get(attribute).is_none_or(|a| !any(a))
}

/// Checks an action on the table and on each named attribute at once: `Ok`, or everything
/// that is missing. A table the role has no grant on, and attributes it hides entirely, are
/// reported as not existing ([`Denied::invalid`]), as HarperDB reports them.
pub fn check<'a>(
    caller: &Caller,
    database: &str,
    table: &str,
    primary_key: Option<&str>,
    action: Action,
    attributes: impl IntoIterator<Item = &'a str>,
) -> Result<(), Denied> {
    check_all(caller, database, table, primary_key, &[action], attributes)
}

/// [`check`] for several actions at once (an upsert needs insert and update): every table right
/// missing, or else, attribute by attribute in the order given, every right missing on it (a
/// hidden attribute named once, as not existing) — one answer, as HarperDB gives it.
pub fn check_all<'a>(
    caller: &Caller,
    database: &str,
    table: &str,
    primary_key: Option<&str>,
    actions: &[Action],
    attributes: impl IntoIterator<Item = &'a str>,
) -> Result<(), Denied> {
    let missing: Vec<Action> = actions
        .iter()
        .copied()
        .filter(|a| !allowed(caller, database, table, *a))
        .collect();
    if !missing.is_empty() {
        if table_hidden(caller, database, table) {
            return Err(Denied::hidden_table(database, table));
        }
        let mut denied = Denied::table(database, table, missing[0]);
        denied.required_table_permissions = missing.iter().map(|a| a.name()).collect();
        return Err(denied);
    }
    if !restricts_attributes(caller, database, table) {
        return Ok(());
    }
    let Some(grant) = caller.permissions.grant(database, table) else {
        return Ok(());
    };
    let mut denied = Denied {
        database: database.to_string(),
        table: table.to_string(),
        required_table_permissions: Vec::new(),
        required_attribute_permissions: Vec::new(),
        invalid: Vec::new(),
    };
    for name in attributes {
        for &action in actions {
            // A write may carry the stamps the server sets anyway; only reads of them are checked.
            if action != Action::Read && matches!(name, "__createdtime__" | "__updatedtime__") {
                continue;
            }
            if attribute_allowed(caller, database, table, primary_key, name, action) {
                continue;
            }
            if attribute_hidden(grant, primary_key, name) {
                let text = format!("Attribute '{name}' does not exist on '{database}.{table}'");
                if !denied.invalid.contains(&text) {
                    denied.invalid.push(text);
                }
                break;
            }
            let entry = (name.to_string(), action.name());
            if !denied.required_attribute_permissions.contains(&entry) {
                denied.required_attribute_permissions.push(entry);
            }
        }
    }
    if denied.required_attribute_permissions.is_empty() && denied.invalid.is_empty() {
        Ok(())
    } else {
        Err(denied)
    }
}

/// Drops the properties of `record` the caller may not read (docs/security.md: reads hide them).
pub fn filter_readable(
    caller: &Caller,
    database: &str,
    table: &str,
    primary_key: Option<&str>,
    record: &mut Value,
) {
    if !restricts_attributes(caller, database, table) {
        return;
    }
    if let Value::Object(o) = record {
        let hidden: Vec<String> = o
            .iter()
            .filter(|(k, _)| {
                !attribute_allowed(caller, database, table, primary_key, k, Action::Read)
            })
            .map(|(k, _)| k.to_string())
            .collect();
        for k in hidden {
            o.remove(&k);
        }
    }
}

/// The attributes of one table a caller may read, when its role restricts them (docs/security.md).
/// Two callers with the same rights get equal values, so a subscription fan-out can encode an
/// event once per distinct set rather than once per subscriber. Complete by construction: a
/// name outside the set is unreadable (ungranted = denied).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ReadableAttributes {
    names: std::collections::BTreeSet<String>,
}

impl ReadableAttributes {
    pub fn contains(&self, attribute: &str) -> bool {
        self.names.contains(attribute)
    }

    /// Drops every property of an object the set does not name; other values pass unchanged
    /// (a message payload that is not an object carries no attributes).
    pub fn trim(&self, value: &mut Value) {
        if let Value::Object(o) = value {
            let hidden: Vec<String> = o
                .iter()
                .filter(|(k, _)| !self.names.contains(*k))
                .map(|(k, _)| k.to_string())
                .collect();
            for k in hidden {
                o.remove(&k);
            }
        }
    }
}

/// What `caller` may read of the table, or `None` when it may read every attribute (no
/// trimming needed). A caller without `read` gets an empty set.
pub fn readable_attributes(
    caller: &Caller,
    database: &str,
    table: &str,
    primary_key: Option<&str>,
) -> Option<ReadableAttributes> {
    if !restricts_attributes(caller, database, table) && can_read(caller, database, table) {
        return None;
    }
    let mut names = std::collections::BTreeSet::new();
    if let Some(grant) = caller.permissions.grant(database, table) {
        let candidates = grant
            .attributes
            .keys()
            .map(String::as_str)
            .chain(primary_key)
            .chain(["__createdtime__", "__updatedtime__"]);
        for name in candidates {
            if attribute_allowed(caller, database, table, primary_key, name, Action::Read) {
                names.insert(name.to_string());
            }
        }
    }
    Some(ReadableAttributes { names })
}

/// Whether `describe_*` shows the attribute to the caller (as HarperDB trims a description):
/// every attribute when the role reads the whole table (nothing without `read`); with
/// per-attribute grants, the ones it has any right on (the primary key when any attribute grant
/// allows something; the stamps only when listed).
pub fn describable(
    caller: &Caller,
    database: &str,
    table: &str,
    primary_key: Option<&str>,
    attribute: &str,
) -> bool {
    if !restricts_attributes(caller, database, table) {
        return can_read(caller, database, table);
    }
    let Some(grant) = caller.permissions.grant(database, table) else {
        return false;
    };
    if matches!(attribute, "__createdtime__" | "__updatedtime__") {
        return grant.attributes.contains_key(attribute);
    }
    !attribute_hidden(grant, primary_key, attribute)
}

/// Every attribute a query filter names (the first step of each path).
pub fn filter_attributes(expr: &crate::query::Expr, out: &mut Vec<String>) {
    use crate::query::Expr;
    match expr {
        Expr::And(items) | Expr::Or(items) => {
            for e in items {
                filter_attributes(e, out);
            }
        }
        Expr::Condition(c) => {
            if let Some(first) = c.path.first() {
                out.push(first.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn caller(permission: &str) -> Caller {
        let v = crate::value::json::parse(permission.as_bytes()).expect("test JSON");
        let p = Permissions::from_role(&v);
        Caller {
            username: Some("u".into()),
            super_user: p.super_user,
            permissions: Arc::new(p),
        }
    }

    /// `expected`: the letters r/i/u/d the table allows; per attribute, the letters r/i/u.
    fn check_role(permission: &str, table: &str, expected: &str, attributes: &[(&str, &str)]) {
        let c = caller(permission);
        let got: String = [
            (Action::Read, 'r'),
            (Action::Insert, 'i'),
            (Action::Update, 'u'),
            (Action::Delete, 'd'),
        ]
        .iter()
        .filter(|(a, _)| allowed(&c, "dev", table, *a))
        .map(|(_, l)| *l)
        .collect();
        assert_eq!(got, expected, "{permission} on {table}");
        for (attr, want) in attributes {
            let got: String = [
                (Action::Read, 'r'),
                (Action::Insert, 'i'),
                (Action::Update, 'u'),
            ]
            .iter()
            .filter(|(a, _)| attribute_allowed(&c, "dev", table, Some("id"), attr, *a))
            .map(|(_, l)| *l)
            .collect();
            assert_eq!(&got, want, "{permission} on {table}.{attr}");
        }
    }

    #[test]
    fn grants() {
        check_role(r#"{"super_user": true}"#, "dog", "riud", &[("x", "riu")]);
        check_role(r#"{}"#, "dog", "", &[("x", "")]);
        let read_dog = r#"{"dev": {"tables": {"dog": {"read": true}}}}"#;
        check_role(read_dog, "dog", "r", &[("name", "r"), ("id", "r")]);
        check_role(read_dog, "cat", "", &[("name", "")]);
        let attrs = r#"{"dev": {"tables": {"dog": {"read": true, "insert": true, "update": true,
            "delete": false, "attribute_permissions": [
              {"attribute_name": "name", "read": true, "insert": true, "update": false},
              {"attribute_name": "secret", "read": false, "insert": false, "update": true}]}}}}"#;
        check_role(
            attrs,
            "dog",
            "riu",
            &[
                ("name", "ri"),
                ("secret", "u"),
                ("other", ""),
                ("id", "riu"),
                ("__createdtime__", "r"),
            ],
        );
    }

    #[test]
    fn reads_hide_and_writes_name_what_is_missing() {
        let c = caller(
            r#"{"dev": {"tables": {"dog": {"read": true, "insert": true, "attribute_permissions": [
              {"attribute_name": "name", "read": true, "insert": true},
              {"attribute_name": "age", "read": true}]}}}}"#,
        );
        let mut record =
            crate::value::json::parse(br#"{"id": 1, "name": "a", "secret": "s"}"#).expect("json");
        filter_readable(&c, "dev", "dog", Some("id"), &mut record);
        assert_eq!(
            crate::value::json::to_vec(&record),
            br#"{"id":1,"name":"a"}"#.to_vec()
        );
        let insert = |attrs: &[&str]| {
            check(
                &c,
                "dev",
                "dog",
                Some("id"),
                Action::Insert,
                attrs.iter().copied(),
            )
        };
        assert_eq!(insert(&["id", "name"]), Ok(()));
        // Listed without the right: named in the refusal. Unlisted (hidden): "does not exist".
        let denied = insert(&["id", "age", "secret"]).expect_err("not insertable");
        assert_eq!(
            denied.required_attribute_permissions,
            vec![("age".to_string(), "insert")]
        );
        assert_eq!(
            denied.invalid,
            vec!["Attribute 'secret' does not exist on 'dev.dog'".to_string()]
        );
        // Tables and databases the role has no grant on read as missing.
        let denied = check(&c, "dev", "cat", None, Action::Read, []).expect_err("hidden");
        assert_eq!(
            denied.invalid,
            vec!["Table 'dev.cat' does not exist".to_string()]
        );
        assert!(!denied.has_rights());
        let denied = check(&c, "nodb", "cat", None, Action::Read, []).expect_err("hidden");
        assert_eq!(
            denied.invalid,
            vec!["Table 'nodb.cat' does not exist".to_string()]
        );
        let denied =
            check(&c, "dev", "dog", Some("id"), Action::Delete, []).expect_err("no delete");
        assert_eq!(denied.required_table_permissions, vec!["delete"]);
        // A subscription's trim agrees with filter_readable, and equal rights give equal sets.
        let set = readable_attributes(&c, "dev", "dog", Some("id")).expect("restricted");
        let mut record = crate::value::json::parse(
            br#"{"id": 1, "name": "a", "secret": "s", "__createdtime__": 5}"#,
        )
        .expect("json");
        set.trim(&mut record);
        assert_eq!(
            crate::value::json::to_vec(&record),
            br#"{"id":1,"name":"a","__createdtime__":5}"#.to_vec()
        );
        assert_eq!(readable_attributes(&c, "dev", "dog", Some("id")), Some(set));
        assert_eq!(
            readable_attributes(&Caller::super_user("s"), "dev", "dog", Some("id")),
            None
        );
        // The system database is for super users only, whatever a role says.
        let c = caller(r#"{"system": {"tables": {"hdb_user": {"read": true}}}}"#);
        assert!(!can_read(&c, "system", "hdb_user"));
    }
}
