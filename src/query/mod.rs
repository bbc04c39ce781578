//! The query subsystem: what a client asks for, as an AST. It owns the URL query language
//! (docs/rest.md, `parse`), the Operations API's `search_by_conditions` condition and sort forms
//! (docs/operations-api.md, `conditions_from_json`, `sort_from_json`), the AST both produce (`ast`), and its
//! canonical printer (`Display`).
//!
//! `exec` evaluates a typed `Filter` and a `select` against one record (in place).
//!
//! It never reads the store or the schema: values stay as decoded text with a type hint (or as JSON)
//! until a later step converts them to an attribute's declared type, and attribute names are not
//! checked against any table here. Input comes from the REST and Operations API protocol layers;
//! the AST goes to the planner.

mod ast;
mod conditions;
mod exec;
mod parse;

pub use ast::{
    Comparator, Condition, Expr, Limit, Logic, Query, QueryValue, Select, SelectItem, SortKey,
    ValueHint,
};
pub use conditions::{conditions_from_json, sort_from_json, ConditionError};
pub use exec::{project, project_item, property, to_owned, Filter, Membership, Op, Test};
pub use parse::{parse, ErrorKind, ParseError, CONDITION_COUNT_MAX, DEPTH_MAX, QUERY_BYTES_MAX};
