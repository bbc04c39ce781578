//! The query AST shared by the URL query language (`parse`) and the Operations API's
//! `search_by_conditions` (`conditions`), and its canonical printer.
//!
//! The printer writes URL query syntax. For an AST that came from `parse`, printing and parsing
//! again gives the same AST (the round-trip property the tests and the fuzz target check); an AST
//! built from JSON conditions prints readably for `explain`, but JSON values and `between` have no
//! URL spelling that parses back to the same thing.

use std::fmt::{self, Write};

/// One parsed query: an optional filter plus the query-level calls.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Query {
    pub filter: Option<Expr>,
    pub select: Option<Select>,
    pub limit: Option<Limit>,
    /// Empty when the query has no `sort(...)`.
    pub sort: Vec<SortKey>,
}

/// A boolean filter. `And`/`Or` from the parser are flat (no `And` directly inside an `And`) and
/// hold at least two children; a one-child group is its child.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    And(Vec<Expr>),
    Or(Vec<Expr>),
    Condition(Condition),
}

/// The two ways to combine filters (`&`/`|`, `"and"`/`"or"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logic {
    And,
    Or,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    /// Attribute path: one name, or several for a path through relationships (`brand.name`).
    pub path: Vec<String>,
    pub comparator: Comparator,
    pub value: QueryValue,
}

/// What a condition tests. The URL spellings map onto these (`<` and `=lt=` are both `Less`);
/// `Between` comes only from JSON conditions, whose value is then a `[low, high]` array.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Comparator {
    Equal,
    NotEqual,
    Less,
    LessEqual,
    Greater,
    GreaterEqual,
    Contains,
    StartsWith,
    EndsWith,
    Between,
}

impl Comparator {
    /// The range comparators after which a bare `lt=`/`le=`/`gt=`/`ge=` chains (docs/rest.md).
    pub fn is_range(self) -> bool {
        matches!(
            self,
            Comparator::Less
                | Comparator::LessEqual
                | Comparator::Greater
                | Comparator::GreaterEqual
        )
    }
}

/// A comparison value, not yet converted to the attribute's type (that needs the schema).
#[derive(Debug, Clone, PartialEq)]
pub enum QueryValue {
    /// From a URL: the percent-decoded text without its type prefix.
    Url {
        text: String,
        hint: ValueHint,
        /// Set by `===`/`!==`: convert `text` to the declared type as it is, with no `null` and
        /// no prefixes.
        strict: bool,
    },
    /// From a JSON condition: already typed by JSON.
    Json(serde_json::Value),
}

/// The type a URL value asked for: `null`, or a `number:`/`boolean:`/`string:`/`date:` prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueHint {
    /// No prefix: convert to the declared type; on untyped attributes `true`/`false` and canonical
    /// numbers read as such.
    Untyped,
    Null,
    Number,
    Boolean,
    String,
    /// ISO 8601 or epoch milliseconds.
    Date,
}

/// `select(...)`: which properties to return, and in which shape.
#[derive(Debug, Clone, PartialEq)]
pub enum Select {
    /// `select(a)`: the bare value of `a` per record.
    Value(SelectItem),
    /// `select(a,b)` or `select(a,)`: objects with only these properties.
    Object(Vec<SelectItem>),
    /// `select([a,b])`: arrays of the values, in this order.
    Array(Vec<SelectItem>),
}

/// One selected property; `children` is the nested selection of a relationship (`rel{x,y}`).
#[derive(Debug, Clone, PartialEq)]
pub struct SelectItem {
    pub name: String,
    pub children: Option<Vec<SelectItem>>,
}

/// `limit(n)` is `start: 0, end: n`; `limit(s,e)` skips `s` and returns up to `e - s` (an end
/// below the start returns nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub start: u64,
    pub end: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SortKey {
    pub path: Vec<String>,
    pub descending: bool,
}

// ---------------------------------------------------------------------------------------------
// Printing

/// Which bytes a printed token may carry unescaped. Everything else is percent-encoded, so no
/// printed name or value can contain syntax.
#[derive(Clone, Copy)]
enum Token {
    /// A path segment: `.` separates segments, so a literal dot is escaped.
    Segment,
    /// A value or a selected name.
    Text,
}

fn write_encoded(f: &mut fmt::Formatter<'_>, text: &str, token: Token) -> fmt::Result {
    for &byte in text.as_bytes() {
        let plain = byte.is_ascii_alphanumeric()
            || matches!(byte, b'-' | b'_' | b'~')
            || (byte == b'.' && matches!(token, Token::Text));
        if plain {
            f.write_char(char::from(byte))?;
        } else {
            write!(f, "%{byte:02X}")?;
        }
    }
    Ok(())
}

/// A segment spelled like a chained range operator (`lt`) would chain after a range condition,
/// and a leading `-` would read as descending in `sort`; escaping their first byte keeps them
/// plain names.
fn write_segment(f: &mut fmt::Formatter<'_>, segment: &str, first: bool) -> fmt::Result {
    let ambiguous =
        first && (matches!(segment, "lt" | "le" | "gt" | "ge") || segment.starts_with('-'));
    match segment.as_bytes().first() {
        Some(&head) if ambiguous => {
            write!(f, "%{head:02X}")?;
            write_encoded(f, segment.get(1..).unwrap_or(""), Token::Segment)
        }
        _ => write_encoded(f, segment, Token::Segment),
    }
}

fn write_path(f: &mut fmt::Formatter<'_>, path: &[String]) -> fmt::Result {
    for (index, segment) in path.iter().enumerate() {
        if index > 0 {
            f.write_char('.')?;
        }
        write_segment(f, segment, index == 0)?;
    }
    Ok(())
}

impl fmt::Display for Query {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        let mut separate = |f: &mut fmt::Formatter<'_>| {
            let result = if first { Ok(()) } else { f.write_char('&') };
            first = false;
            result
        };
        if let Some(filter) = &self.filter {
            separate(f)?;
            write!(f, "{filter}")?;
        }
        if let Some(select) = &self.select {
            separate(f)?;
            write!(f, "{select}")?;
        }
        if let Some(limit) = &self.limit {
            separate(f)?;
            write!(f, "{limit}")?;
        }
        if !self.sort.is_empty() {
            separate(f)?;
            f.write_str("sort(")?;
            for (index, key) in self.sort.iter().enumerate() {
                if index > 0 {
                    f.write_char(',')?;
                }
                if key.descending {
                    f.write_char('-')?;
                }
                write_path(f, &key.path)?;
            }
            f.write_char(')')?;
        }
        Ok(())
    }
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expr::Condition(condition) => write!(f, "{condition}"),
            Expr::And(children) => {
                for (index, child) in children.iter().enumerate() {
                    if index > 0 {
                        f.write_char('&')?;
                    }
                    match child {
                        Expr::Condition(_) => write!(f, "{child}")?,
                        _ => write!(f, "({child})")?,
                    }
                }
                Ok(())
            }
            Expr::Or(children) => {
                for (index, child) in children.iter().enumerate() {
                    if index > 0 {
                        f.write_char('|')?;
                    }
                    match child {
                        Expr::Or(_) => write!(f, "({child})")?,
                        _ => write!(f, "{child}")?,
                    }
                }
                Ok(())
            }
        }
    }
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.comparator == Comparator::Between {
            // No URL spelling; print the inclusive range it means.
            let (low, high) = match &self.value {
                QueryValue::Json(serde_json::Value::Array(pair)) if pair.len() == 2 => {
                    (pair.first(), pair.get(1))
                }
                _ => (None, None),
            };
            let null = serde_json::Value::Null;
            f.write_char('(')?;
            write_path(f, &self.path)?;
            f.write_str("=ge=")?;
            write_json(f, low.unwrap_or(&null))?;
            f.write_char('&')?;
            write_path(f, &self.path)?;
            f.write_str("=le=")?;
            write_json(f, high.unwrap_or(&null))?;
            return f.write_char(')');
        }
        write_path(f, &self.path)?;
        let strict = matches!(self.value, QueryValue::Url { strict: true, .. });
        f.write_str(match (self.comparator, strict) {
            (Comparator::Equal, false) => "=",
            (Comparator::Equal, true) => "===",
            (Comparator::NotEqual, false) => "!=",
            (Comparator::NotEqual, true) => "!==",
            (Comparator::Less, _) => "=lt=",
            (Comparator::LessEqual, _) => "=le=",
            (Comparator::Greater, _) => "=gt=",
            (Comparator::GreaterEqual, _) => "=ge=",
            (Comparator::Contains, _) => "=ct=",
            (Comparator::StartsWith, _) => "=sw=",
            (Comparator::EndsWith, _) => "=ew=",
            (Comparator::Between, _) => "=between=",
        })?;
        write!(f, "{}", self.value)
    }
}

impl fmt::Display for QueryValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QueryValue::Url {
                text, strict: true, ..
            } => write_encoded(f, text, Token::Text),
            QueryValue::Url {
                text,
                hint,
                strict: false,
            } => {
                let prefix = match hint {
                    ValueHint::Null => return f.write_str("null"),
                    ValueHint::Untyped if text == "null" => {
                        // The string "null", not null: escape one byte so it is not the keyword.
                        return f.write_str("%6Eull");
                    }
                    ValueHint::Untyped => "",
                    ValueHint::Number => "number:",
                    ValueHint::Boolean => "boolean:",
                    ValueHint::String => "string:",
                    ValueHint::Date => "date:",
                };
                f.write_str(prefix)?;
                write_encoded(f, text, Token::Text)
            }
            QueryValue::Json(value) => write_json(f, value),
        }
    }
}

fn write_json(f: &mut fmt::Formatter<'_>, value: &serde_json::Value) -> fmt::Result {
    match value {
        serde_json::Value::Null => f.write_str("null"),
        serde_json::Value::Bool(flag) => write!(f, "boolean:{flag}"),
        serde_json::Value::Number(number) => {
            f.write_str("number:")?;
            write_encoded(f, &number.to_string(), Token::Text)
        }
        serde_json::Value::String(text) => {
            f.write_str("string:")?;
            write_encoded(f, text, Token::Text)
        }
        other => write_encoded(f, &other.to_string(), Token::Text),
    }
}

impl fmt::Display for Select {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("select(")?;
        match self {
            Select::Value(item) => write!(f, "{item}")?,
            Select::Object(items) => {
                write_items(f, items)?;
                if items.len() == 1 {
                    // `select(a,)`: the trailing comma asks for objects, not bare values.
                    f.write_char(',')?;
                }
            }
            Select::Array(items) => {
                f.write_char('[')?;
                write_items(f, items)?;
                f.write_char(']')?;
            }
        }
        f.write_char(')')
    }
}

fn write_items(f: &mut fmt::Formatter<'_>, items: &[SelectItem]) -> fmt::Result {
    for (index, item) in items.iter().enumerate() {
        if index > 0 {
            f.write_char(',')?;
        }
        write!(f, "{item}")?;
    }
    Ok(())
}

impl fmt::Display for SelectItem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_encoded(f, &self.name, Token::Text)?;
        if let Some(children) = &self.children {
            f.write_char('{')?;
            write_items(f, children)?;
            f.write_char('}')?;
        }
        Ok(())
    }
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.start == 0 {
            write!(f, "limit({})", self.end)
        } else {
            write!(f, "limit({},{})", self.start, self.end)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query::conditions_from_json;
    use crate::query::parse;

    /// Parses `raw` and compares its canonical print with `expected`.
    fn check(raw: &str, expected: &str) {
        let printed = match parse(raw) {
            Ok(query) => query.to_string(),
            Err(error) => format!("error: {error}"),
        };
        assert_eq!(printed, expected, "query {raw:?}");
    }

    #[test]
    fn canonical_print() {
        check("age=gt=3&lt=9", "age=gt=3&age=lt=9");
        check("name==Bo*", "name=sw=Bo");
        check("a==b&c===d&e!==f&g=ne=h", "a=b&c===d&e!==f&g!=h");
        check("a<1|a<=2|a>3|a>=4", "a=lt=1|a=le=2|a=gt=3|a=ge=4");
        check("(a=1|b=2)&c=3", "(a=1|b=2)&c=3");
        check("[a=1|b=2]&[c=3|d=4]", "(a=1|b=2)&(c=3|d=4)");
        check("a=1&b=2|c=3", "a=1&b=2|c=3");
        check("a%2Eb.c=1", "a%2Eb.c=1");
        check("price=gt=1&%6Ct=5", "price=gt=1&%6Ct=5");
        check(
            "a=%6Eull&b=null&c=string:null",
            "a=%6Eull&b=null&c=string:null",
        );
        check("a=number%3A1&b=number:1", "a=number%3A1&b=number:1");
        check(
            "a=date:2024-01-01T00:00:00Z",
            "a=date:2024-01-01T00%3A00%3A00Z",
        );
        check(
            "a=Rex%20(old)&b=x%2Ay&c=1.5",
            "a=Rex%20%28old%29&b=x%2Ay&c=1.5",
        );
        check("a=café", "a=caf%C3%A9");
        check("sort(+a,-b.c,%2Dd)", "sort(a,-b.c,%2Dd)");
        check("limit(0,5)&select(a,)", "select(a,)&limit(5)");
        check("select([a,b,])&limit(2,4)", "select([a,b])&limit(2,4)");
        check("select(a,rel{x,y})", "select(a,rel{x,y})");
        check("sort(x)&select(y)&z=1", "z=1&select(y)&sort(x)");
    }

    #[test]
    fn json_conditions_print() {
        let conditions = serde_json::json!([
            {"attribute": ["brand", "name"], "comparator": "starts_with", "value": "A c"},
            {"attribute": "age", "comparator": "between", "value": [2, 5.5]},
            {"operator": "or", "conditions": [
                {"attribute": "ok", "value": true},
                {"attribute": "tags", "comparator": "contains", "value": null},
            ]},
        ]);
        let printed = match conditions_from_json(&conditions, Logic::And) {
            Ok(expr) => expr.to_string(),
            Err(error) => format!("error: {error}"),
        };
        assert_eq!(
            printed,
            "brand.name=sw=string:A%20c&(age=ge=number:2&age=le=number:5.5)&(ok=boolean:true|tags=ct=null)"
        );
    }
}
