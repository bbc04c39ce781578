//! SQL text → one statement, with the tables it names resolved to (database, table).

use std::ops::ControlFlow;

use sqlparser::ast::{self, Expr, FromTable, ObjectName, SetExpr, TableFactor};
use sqlparser::dialect::Dialect;
use sqlparser::keywords::Keyword;
use sqlparser::parser::{Parser, ParserError};
use sqlparser::tokenizer::Token;

use super::SqlError;

/// HarperDB's SQL dialect as far as the tokenizer sees it: MySQL's words, identifiers quoted in
/// backticks or `[brackets]` (AlaSQL accepts both), strings in single or double quotes.
#[derive(Debug)]
struct HarperDialect;

impl Dialect for HarperDialect {
    fn is_identifier_start(&self, ch: char) -> bool {
        ch.is_alphabetic() || ch == '_' || ch == '$' || ch == '@'
    }

    fn is_identifier_part(&self, ch: char) -> bool {
        ch.is_alphanumeric() || ch == '_' || ch == '$' || ch == '@'
    }

    fn is_delimited_identifier_start(&self, ch: char) -> bool {
        ch == '`' || ch == '['
    }

    fn supports_string_literal_backslash_escape(&self) -> bool {
        true
    }

    /// HarperDB's `EXTRACT(date, 'part')` is a function call; only `EXTRACT(part FROM date)` is
    /// SQL's form.
    fn parse_prefix(&self, parser: &mut Parser) -> Option<Result<Expr, ParserError>> {
        let [word, open, _, from] = parser.peek_tokens::<4>();
        match (word, open, from) {
            (Token::Word(w), Token::LParen, Token::Word(f))
                if w.keyword == Keyword::EXTRACT && f.keyword == Keyword::FROM =>
            {
                None
            }
            (Token::Word(w), Token::LParen, _) if w.keyword == Keyword::EXTRACT => {
                parser.next_token();
                Some(parser.parse_function(ObjectName(vec![ast::Ident::new("EXTRACT")])))
            }
            _ => None,
        }
    }
}

/// A table of the statement: database (`data` when not named), table, and the name rows of it
/// are qualified by (its alias, else its name).
#[derive(Debug, Clone, PartialEq)]
pub struct TableRef {
    pub database: String,
    pub table: String,
    pub alias: String,
}

#[derive(Debug)]
pub struct Insert {
    pub table: TableRef,
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Expr>>,
}

#[derive(Debug)]
pub struct Update {
    pub table: TableRef,
    pub set: Vec<(String, Expr)>,
    pub filter: Option<Expr>,
}

#[derive(Debug)]
pub struct Delete {
    pub table: TableRef,
    pub filter: Option<Expr>,
}

#[derive(Debug)]
pub enum Statement {
    Query(Box<ast::Query>),
    Insert(Insert),
    Update(Update),
    Delete(Delete),
}

/// Parses exactly one statement of the kinds HarperDB runs (DML only).
pub fn statement(sql: &str) -> Result<Statement, SqlError> {
    let mut parsed = Parser::new(&HarperDialect)
        .try_with_sql(sql)
        .and_then(|mut p| p.parse_statements())
        .map_err(|e| {
            SqlError::bad(format!(
                "Invalid SQL at: {}. Please ensure your SQL is valid. Try adding backticks to reserved words and schema table references. ({e})",
                sql.trim()
            ))
        })?;
    if parsed.iter().any(names_reserved_word) {
        return Err(SqlError::bad(format!(
            "Invalid SQL at: {}. Please ensure your SQL is valid. Try adding backticks to reserved words and schema table references.",
            sql.trim()
        )));
    }
    if parsed.len() != 1 {
        return Err(SqlError::bad(format!(
            "one SQL statement per operation, got {}",
            parsed.len()
        )));
    }
    match parsed.remove(0) {
        ast::Statement::Query(q) => {
            // HarperDB refuses a SELECT over a table named without its database (docs/operations-api.md, "SQL", "Names").
            let bare = ast::visit_relations(&q, |name| match name.0.as_slice() {
                [t] => ControlFlow::Break(t.value.clone()),
                _ => ControlFlow::Continue(()),
            });
            if let ControlFlow::Break(t) = bare {
                return Err(SqlError::bad(format!("schema not defined for table {t}")));
            }
            Ok(Statement::Query(q))
        }
        ast::Statement::Insert(i) => insert(i),
        ast::Statement::Update {
            table,
            assignments,
            from,
            selection,
            ..
        } => {
            if from.is_some() || !table.joins.is_empty() {
                return Err(SqlError::unsupported("UPDATE with joined tables"));
            }
            let mut set = Vec::with_capacity(assignments.len());
            for a in assignments {
                let name = match a.target {
                    ast::AssignmentTarget::ColumnName(n) => n.0.last().map(|i| i.value.clone()),
                    ast::AssignmentTarget::Tuple(_) => None,
                }
                .ok_or_else(|| SqlError::unsupported("a tuple assignment"))?;
                set.push((name, a.value));
            }
            Ok(Statement::Update(Update {
                table: table_factor(&table.relation)?,
                set,
                filter: selection,
            }))
        }
        ast::Statement::Delete(d) => {
            let from = match d.from {
                FromTable::WithFromKeyword(f) | FromTable::WithoutKeyword(f) => f,
            };
            let [one] = from.as_slice() else {
                return Err(SqlError::unsupported("DELETE from several tables"));
            };
            if !one.joins.is_empty() || d.using.is_some() {
                return Err(SqlError::unsupported("DELETE with joined tables"));
            }
            Ok(Statement::Delete(Delete {
                table: table_factor(&one.relation)?,
                filter: d.selection,
            }))
        }
        other => Err(SqlError::bad(format!(
            "only SELECT, INSERT, UPDATE and DELETE statements run as 'sql', not: {}",
            first_words(&other.to_string())
        ))),
    }
}

/// AlaSQL's reserved words: the words its lexer knows minus its `nonReserved` list (AlaSQL 4, as
/// in HarperDB 4.7). Unquoted, they cannot name a database, table or column there.
const RESERVED: &[&str] = &[
    "AGGR",
    "AGGREGATE",
    "AGGREGATOR",
    "ALL",
    "ALTER",
    "AND",
    "ANTI",
    "ANY",
    "APPLY",
    "ARRAY",
    "AS",
    "ASSERT",
    "ATTACH",
    "AVG",
    "BEGIN",
    "BETWEEN",
    "BREAK",
    "BY",
    "CALL",
    "CASE",
    "CAST",
    "CHECK",
    "CLASS",
    "CLOSE",
    "COLLATE",
    "COLUMN",
    "COMMIT",
    "CONSTRAINT",
    "CONVERT",
    "CORRESPONDING",
    "COUNT",
    "CREATE",
    "CROSS",
    "CUBE",
    "CURDATE",
    "CURRENT_DATE",
    "CURRENT_TIMESTAMP",
    "CURSOR",
    "DATEADD",
    "DATEDIFF",
    "DECLARE",
    "DEFAULT",
    "DELETE",
    "DELETED",
    "DETACH",
    "DISTINCT",
    "DROP",
    "ECHO",
    "EDGE",
    "ELSE",
    "END",
    "ENUM",
    "ESCAPE",
    "EXCEPT",
    "EXEC",
    "EXECUTE",
    "EXISTS",
    "EXPLAIN",
    "FALSE",
    "FETCH",
    "FOR",
    "FOREIGN",
    "FROM",
    "FULL",
    "FUNCTION",
    "GLOB",
    "GRAPH",
    "GROUP",
    "GROUPING",
    "HAVING",
    "IDENTITY",
    "IF",
    "ILIKE",
    "IN",
    "INDEX",
    "INDEXED",
    "INNER",
    "INSERT",
    "INSERTED",
    "INTERSECT",
    "INTERVAL",
    "INTO",
    "IS",
    "JOIN",
    "LEFT",
    "LET",
    "LIKE",
    "MATRIX",
    "MERGE",
    "MINUS",
    "MODIFY",
    "NATURAL",
    "NEW",
    "NO",
    "NOCASE",
    "NOT",
    "NULL",
    "OF",
    "OFFSET",
    "ON",
    "ONLY",
    "OPEN",
    "OR",
    "ORDER",
    "OUTER",
    "OVER",
    "PARTITION",
    "PERCENT",
    "PIVOT",
    "PLAN",
    "PRIMARY",
    "PRINT",
    "QUERY",
    "RECORDSET",
    "REDUCE",
    "REFERENCES",
    "REGEXP",
    "REINDEX",
    "REMOVE",
    "RENAME",
    "REPEAT",
    "REPLACE",
    "REQUIRE",
    "RETURN",
    "RETURNS",
    "RIGHT",
    "ROLLBACK",
    "ROLLUP",
    "ROW",
    "ROWS",
    "SEARCH",
    "SELECT",
    "SEMI",
    "SET",
    "SHOW",
    "SOME",
    "STORE",
    "STRATEGY",
    "SUM",
    "TABLE",
    "TABLES",
    "TARGET",
    "TEMP",
    "TEXTSTRING",
    "THEN",
    "TIMEOUT",
    "TIMESTAMPDIFF",
    "TO",
    "TOP",
    "TOTAL",
    "TRAN",
    "TRIGGER",
    "TRUE",
    "TRUNCATE",
    "UNION",
    "UNIQUE",
    "UNPIVOT",
    "UPDATE",
    "USE",
    "USING",
    "VALUE",
    "VALUES",
    "VERTEX",
    "WHEN",
    "WHERE",
    "WHILE",
    "WITH",
];

fn reserved(i: &ast::Ident) -> bool {
    i.quote_style.is_none() && RESERVED.contains(&i.value.to_ascii_uppercase().as_str())
}

/// Whether an unquoted reserved word names a database, table or column (AlaSQL refuses it).
fn names_reserved_word(s: &ast::Statement) -> bool {
    let relation = ast::visit_relations(s, |name| {
        if name.0.iter().any(reserved) {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    });
    let column = ast::visit_expressions(s, |e| match e {
        Expr::Identifier(i) if reserved(i) => ControlFlow::Break(()),
        Expr::CompoundIdentifier(is) if is.iter().any(reserved) => ControlFlow::Break(()),
        _ => ControlFlow::Continue(()),
    });
    relation.is_break() || column.is_break()
}

fn first_words(s: &str) -> String {
    s.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

fn insert(i: ast::Insert) -> Result<Statement, SqlError> {
    let table = object_table(&i.table_name, None)?;
    let source = i
        .source
        .ok_or_else(|| SqlError::bad("INSERT needs VALUES"))?;
    let rows = match *source.body {
        SetExpr::Values(v) => v.rows,
        _ => return Err(SqlError::unsupported("INSERT … SELECT")),
    };
    let columns: Vec<String> = i.columns.into_iter().map(|c| c.value).collect();
    if columns.is_empty() {
        return Err(SqlError::bad("INSERT needs a column list"));
    }
    if let Some(row) = rows.iter().find(|r| r.len() != columns.len()) {
        return Err(SqlError::bad(format!(
            "INSERT names {} columns but a row has {} values",
            columns.len(),
            row.len()
        )));
    }
    Ok(Statement::Insert(Insert {
        table,
        columns,
        rows,
    }))
}

/// A FROM item that is a plain table.
pub fn table_factor(f: &TableFactor) -> Result<TableRef, SqlError> {
    match f {
        TableFactor::Table { name, alias, .. } => {
            object_table(name, alias.as_ref().map(|a| a.name.value.as_str()))
        }
        _ => Err(SqlError::unsupported("a FROM item other than a table")),
    }
}

fn object_table(name: &ObjectName, alias: Option<&str>) -> Result<TableRef, SqlError> {
    let (database, table) = match name.0.as_slice() {
        [t] => ("data".to_string(), t.value.clone()),
        [d, t] => (d.value.clone(), t.value.clone()),
        _ => {
            return Err(SqlError::bad(format!(
                "'{name}' is not a database.table name"
            )))
        }
    };
    Ok(TableRef {
        alias: alias.map(str::to_string).unwrap_or_else(|| table.clone()),
        database,
        table,
    })
}
