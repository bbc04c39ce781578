//! The `sql` operation (docs/operations-api.md, "sql"): HarperDB's SQL over the same tables,
//! permissions and write path as the NoSQL operations.
//!
//! `parse` turns the text into one `sqlparser` statement (a dialect close to HarperDB's
//! AlaSQL-flavoured SQL: backtick and `[bracket]` identifiers, a table without database is in
//! `data`); `select` reads and joins the tables in one read transaction per database and computes
//! filters, groups, order and limits in memory within named bounds; `write` runs INSERT, UPDATE
//! and DELETE through `nosql::write_records`, so validation, audit, change events and replication
//! are the NoSQL operations' own; `eval` and `functions` compute expressions.

mod access;
mod dates;
mod eval;
mod functions;
mod geo;
mod geo_relate;
mod jsonata;
mod parse;
mod rights;
mod select;
mod write;

use super::permissions::Denied;
use super::{Caller, Resources, VerbError};
use crate::value::Value;

/// Longest statement accepted, in bytes.
pub const STATEMENT_BYTES_MAX: usize = 1 << 20;
/// Records one statement reads from a table (and holds in memory to filter, group and sort).
pub const TABLE_ROWS_MAX: usize = 1_000_000;
/// Rows a join may produce before its WHERE, GROUP BY and ORDER BY run.
pub const JOIN_ROWS_MAX: usize = 1_000_000;

/// Why a statement did not run: a status and message, or a permission refusal (403 with
/// HarperDB's `unauthorized_access` entries and `invalid_schema_items` texts).
#[derive(Debug, Clone, PartialEq)]
pub enum SqlError {
    Status(u16, String),
    Forbidden(Vec<Denied>, Vec<String>),
}

impl SqlError {
    pub fn bad(message: impl Into<String>) -> Self {
        SqlError::Status(400, message.into())
    }

    pub fn unsupported(what: impl std::fmt::Display) -> Self {
        SqlError::Status(
            501,
            format!("{what} is not supported by this server's SQL yet"),
        )
    }
}

impl From<VerbError> for SqlError {
    fn from(e: VerbError) -> Self {
        SqlError::Status(e.status, e.message)
    }
}

impl From<crate::store::StoreError> for SqlError {
    fn from(e: crate::store::StoreError) -> Self {
        SqlError::Status(500, e.to_string())
    }
}

/// Runs one SQL statement for `caller`: a SELECT answers an array of objects, a write
/// HarperDB's summary object.
pub async fn execute(resources: &Resources, caller: &Caller, sql: &str) -> Result<Value, SqlError> {
    if sql.len() > STATEMENT_BYTES_MAX {
        return Err(SqlError::bad(format!(
            "SQL statement is longer than {STATEMENT_BYTES_MAX} bytes"
        )));
    }
    let now_ms = crate::store::now_ms();
    match parse::statement(sql)? {
        parse::Statement::Query(q) => select::run(resources, caller, &q, now_ms).map(Value::Array),
        parse::Statement::Insert(i) => write::insert(resources, caller, &i, now_ms).await,
        parse::Statement::Update(u) => write::update(resources, caller, &u, now_ms).await,
        parse::Statement::Delete(d) => write::delete(resources, caller, &d, now_ms).await,
    }
}

/// Parses `sql` and, when it is a SELECT that names no table, computes it; a statement naming
/// tables answers `Ok(None)` after parsing. For the `sql` fuzz target: no store needed.
pub fn evaluate_standalone(sql: &str) -> Result<Option<Vec<Value>>, SqlError> {
    if sql.len() > STATEMENT_BYTES_MAX {
        return Err(SqlError::bad("SQL statement too long"));
    }
    match parse::statement(sql)? {
        parse::Statement::Query(q) => {
            let names_tables =
                matches!(q.body.as_ref(), sqlparser::ast::SetExpr::Select(s) if !s.from.is_empty());
            if names_tables {
                return Ok(None);
            }
            let loaded = select::Loaded {
                tables: Vec::new(),
                data: Vec::new(),
                columns: Vec::new(),
            };
            select::compute(&q, &loaded, false, 0.0).map(Some)
        }
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Statements built from fragments (as the fuzz target would find them): each answers a
    /// value or a typed error, never a panic.
    #[test]
    fn standalone_statements_answer_or_fail_cleanly() {
        let exprs = [
            "2 + 2",
            "1 / 0",
            "-9223372036854775808",
            "9e999",
            "'a' + 1",
            "NULL",
            "'x' LIKE '%x%'",
            "DATE_ADD(1e300, 1e300, 'years')",
            "DATE_SUB('99999999-1-1', 1, 'months')",
            "DATE_FORMAT(-8.64e15, 'YYYY [x] Do dddd')",
            "EXTRACT(YEAR FROM NOW())",
            "OFFSET_UTC(NOW(), 1e12)",
            "SUBSTRING('abc', -5, 99)",
            "ROUND(1.005, 400)",
            "CASE WHEN 1 THEN 'y' END",
            "'a' REGEXP '('",
            "COUNT(*)",
            "SUM(1)",
            "geoArea('{')",
            "geoDistance('[1,2]', '[null,\"a\"]', 'parsecs')",
            "geoConvert('[1]', 'point')",
            "DATE_DIFF('2020-1-31', '2020-3-1', 'months')",
            "COALESCE(NULL, NULL)",
            "x",
        ];
        for a in exprs {
            for b in exprs {
                for text in [
                    format!("SELECT {a}, {b}"),
                    format!("SELECT {a} AS v WHERE {b} ORDER BY v DESC LIMIT 1"),
                    format!("SELECT DISTINCT {a} GROUP BY {b} HAVING {a}"),
                ] {
                    let _ = evaluate_standalone(&text);
                }
            }
        }
        assert_eq!(
            evaluate_standalone("SELECT 2 + 2"),
            Ok(Some(vec![Value::Object(
                crate::value::Object::from_entries(vec![("2 + 2".to_string(), Value::Int(4))])
            )]))
        );
    }
}
