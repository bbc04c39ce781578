//! A role's rights on the tables and attributes a statement names, reported as HarperDB does
//! for SQL: a table the role has no right on at all, and an attribute the role's attribute
//! list leaves out (or grants nothing on), "does not exist" (`invalid_schema_items`); a visible
//! table or attribute without the needed right is `unauthorized_access`.

use crate::resource::permissions::{self, Action, AttributeGrant, Denied, TableGrant};
use crate::resource::Caller;
use crate::store::Table;

use super::SqlError;

fn is_super(caller: &Caller) -> bool {
    caller.super_user || caller.permissions.super_user
}

fn grant<'c>(caller: &'c Caller, database: &str, table: &str) -> Option<&'c TableGrant> {
    caller.permissions.tables.get(database)?.get(table)
}

/// Whether the role lets the caller know the attribute exists.
fn visible(grant: &TableGrant, primary_key: Option<&str>, name: &str) -> bool {
    let any = |a: &AttributeGrant| a.read || a.insert || a.update;
    if grant.attributes.is_empty() || matches!(name, "__createdtime__" | "__updatedtime__") {
        return true;
    }
    if Some(name) == primary_key {
        return grant.attributes.values().any(any);
    }
    grant.attributes.get(name).is_some_and(any)
}

/// Whether `caller` may read `name` of `table` (what `*` expands to).
pub fn readable(caller: &Caller, database: &str, table: &Table, name: &str) -> bool {
    is_super(caller)
        || permissions::attribute_allowed(
            caller,
            database,
            &table.def.table,
            table.def.primary_key.as_deref(),
            name,
            Action::Read,
        )
}

/// Whether the caller's reads of this table are trimmed to some attributes.
pub fn trims(caller: &Caller, database: &str, table: &Table) -> bool {
    permissions::restricts_attributes(caller, database, &table.def.table)
}

/// The refusals found so far.
#[derive(Default)]
pub struct Rights {
    denied: Vec<Denied>,
    invalid: Vec<String>,
}

impl Rights {
    /// Checks `action` on the table and on each of `names`.
    pub fn check<'a>(
        &mut self,
        caller: &Caller,
        database: &str,
        table: &Table,
        action: Action,
        names: impl IntoIterator<Item = &'a str>,
    ) {
        let t = table.def.table.as_str();
        if is_super(caller) {
            return;
        }
        if !permissions::can_see(caller, database, t) {
            self.invalid
                .push(format!("Table '{database}.{t}' does not exist"));
            return;
        }
        let pk = table.def.primary_key.as_deref();
        if let Err(d) = permissions::check(caller, database, t, pk, action, []) {
            self.denied.push(d);
            return;
        }
        let Some(g) = grant(caller, database, t).filter(|g| !g.attributes.is_empty()) else {
            return;
        };
        let mut missing = Vec::new();
        for name in names {
            if action != Action::Read && matches!(name, "__createdtime__" | "__updatedtime__") {
                continue;
            }
            let text = format!("Attribute '{name}' does not exist on '{database}.{t}'");
            if !visible(g, pk, name) {
                if !self.invalid.contains(&text) {
                    self.invalid.push(text);
                }
            } else if !permissions::attribute_allowed(caller, database, t, pk, name, action)
                && !missing.iter().any(|(n, _)| n == name)
            {
                missing.push((name.to_string(), action.name()));
            }
        }
        if !missing.is_empty() {
            self.denied.push(Denied {
                database: database.to_string(),
                table: t.to_string(),
                required_table_permissions: Vec::new(),
                required_attribute_permissions: missing,
            });
        }
    }

    pub fn finish(self) -> Result<(), SqlError> {
        if self.denied.is_empty() && self.invalid.is_empty() {
            Ok(())
        } else {
            Err(SqlError::Forbidden(self.denied, self.invalid))
        }
    }
}
