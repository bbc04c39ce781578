//! The URL query language (docs/rest.md): the raw query string, as sent and before any
//! percent-decoding, to a `Query`.
//!
//! Only literal characters are syntax; names and values are percent-decoded after they have been
//! cut out, so `%26` is an `&` inside a value. Grammar:
//!
//! ```text
//! query     := and ("|" and)*                  "&" binds tighter than "|"
//! and       := part ("&" part)*
//! part      := condition | "(" query ")" | "[" query "]" | call
//! condition := path op value                   path := name ("." name)*
//!            | ("lt" | "le" | "gt" | "ge") "=" value   right after a range condition: same path
//! op        := "===" | "==" | "=" | "!==" | "!=" | "<=" | "<" | ">=" | ">"
//!            | "=eq=" | "=ne=" | "=lt=" | "=le=" | "=gt=" | "=ge=" | "=ct=" | "=sw=" | "=ew="
//! value     := "null" | ("number:" | "boolean:" | "string:" | "date:")? text
//! call      := "select(" select ")" | "limit(" n ("," n)? ")" | "sort(" key ("," key)* ")"
//! select    := "[" items "]" | items           items := item ("," item)* ","?
//! item      := name ("{" items "}")?           key := ("+" | "-")? path
//! ```
//!
//! Decisions where SPEC leaves room, so later layers can rely on them:
//! - `=` and `==`/`=eq=` are the same non-strict equality; only `===`/`!==` are strict (no `null`,
//!   no prefixes). A trailing literal `*` after `==` or `=eq=` makes a starts-with; a literal `*`
//!   anywhere else in such a value is an error. Other comparators keep `*` as text.
//! - A value runs to the next `&` or `|`, or to a `)`/`]` that closes a group; `(`/`)` pairs inside
//!   a value stay in it, since `encodeURIComponent` does not escape them.
//! - Calls are query-level and allowed only outside groups, joined by `&`; an `|` branch that is
//!   only calls is an error. Each call may appear once.
//! - Equality and inequality accept an empty value (the empty string); the other comparators
//!   need one.
//! - `+` is a plain character, not a space. Positions in errors are 0-based byte offsets.
//!
//! Bounds: `QUERY_BYTES_MAX`, `DEPTH_MAX` (groups and nested selections) and
//! `CONDITION_COUNT_MAX`. Recursion follows group nesting only, so `DEPTH_MAX` bounds the stack.

use std::fmt;

use super::ast::{
    Comparator, Condition, Expr, Limit, Logic, Query, QueryValue, Select, SelectItem, SortKey,
    ValueHint,
};

/// Longest raw query string accepted; longer is `ErrorKind::TooLong`.
pub const QUERY_BYTES_MAX: usize = 8 * 1024;
/// Deepest nesting of `( )`/`[ ]` groups and of `{ }` selections.
pub const DEPTH_MAX: usize = 32;
/// Most conditions in one query (chained ranges count one each).
pub const CONDITION_COUNT_MAX: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub kind: ErrorKind,
    /// 0-based byte offset into the raw query where the problem was found.
    pub position: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorKind {
    /// Unparsable; the text says what was expected or found.
    Syntax(String),
    /// A call to something other than `select`, `limit` or `sort`.
    UnknownFunction(String),
    /// A `limit` argument that is not a non-negative integer (the raw argument).
    InvalidLimit(String),
    TooLong {
        bytes: usize,
    },
    TooDeep,
    TooManyConditions,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            ErrorKind::Syntax(detail) => write!(
                f,
                "Unable to parse query, {detail} at position {}",
                self.position
            ),
            ErrorKind::UnknownFunction(name) => write!(f, "Unknown query function {name}()"),
            ErrorKind::InvalidLimit(text) => write!(
                f,
                "Invalid limit argument \"{text}\", expecting a non-negative integer"
            ),
            ErrorKind::TooLong { bytes } => write!(
                f,
                "Query is {bytes} bytes long, longer than the {QUERY_BYTES_MAX} allowed"
            ),
            ErrorKind::TooDeep => write!(
                f,
                "Query nests deeper than {DEPTH_MAX} levels at position {}",
                self.position
            ),
            ErrorKind::TooManyConditions => write!(
                f,
                "Query has more than {CONDITION_COUNT_MAX} conditions at position {}",
                self.position
            ),
        }
    }
}

impl std::error::Error for ParseError {}

/// Parses the raw query string (the part after `?`, without the `?`). An empty string is an
/// empty query.
pub fn parse(raw: &str) -> Result<Query, ParseError> {
    if raw.len() > QUERY_BYTES_MAX {
        return Err(ParseError {
            kind: ErrorKind::TooLong { bytes: raw.len() },
            position: QUERY_BYTES_MAX,
        });
    }
    let mut parser = Parser {
        raw,
        bytes: raw.as_bytes(),
        position: 0,
        depth: 0,
        condition_count: 0,
        query: Query::default(),
    };
    if !raw.is_empty() {
        parser.query.filter = parser.parse_or(None)?;
        if let Some(&byte) = parser.bytes.get(parser.position) {
            return Err(parser.unexpected(byte));
        }
    }
    Ok(parser.query)
}

struct Parser<'a> {
    raw: &'a str,
    bytes: &'a [u8],
    position: usize,
    depth: usize,
    condition_count: usize,
    /// Calls land here as they are met; the filter is filled in at the end.
    query: Query,
}

/// What one `part` turned out to be.
enum Part {
    Expr(Expr),
    /// A call, already stored in `Parser::query`.
    Call,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.position).copied()
    }

    fn syntax(&self, detail: impl Into<String>, position: usize) -> ParseError {
        ParseError {
            kind: ErrorKind::Syntax(detail.into()),
            position,
        }
    }

    fn unexpected(&self, byte: u8) -> ParseError {
        let found = self
            .raw
            .get(self.position..)
            .and_then(|rest| rest.chars().next())
            .unwrap_or(char::from(byte));
        self.syntax(format!("unexpected \"{found}\""), self.position)
    }

    fn expect(&mut self, wanted: u8) -> Result<(), ParseError> {
        match self.peek() {
            Some(byte) if byte == wanted => {
                self.position += 1;
                Ok(())
            }
            Some(byte) if !matches!(byte, b'&' | b'|' | b')' | b']' | b',') => {
                Err(self.unexpected(byte))
            }
            _ => Err(self.syntax(
                format!("expected \"{}\"", char::from(wanted)),
                self.position,
            )),
        }
    }

    fn enter(&mut self) -> Result<(), ParseError> {
        if self.depth >= DEPTH_MAX {
            return Err(ParseError {
                kind: ErrorKind::TooDeep,
                position: self.position,
            });
        }
        self.depth += 1;
        Ok(())
    }

    /// `query` up to `closer` (not consumed) or the end. `None` when the query held only calls.
    fn parse_or(&mut self, closer: Option<u8>) -> Result<Option<Expr>, ParseError> {
        let mut branches = Vec::new();
        loop {
            let branch_start = self.position;
            let branch = self.parse_and()?;
            let more = self.peek() == Some(b'|');
            match branch {
                Some(expr) => branches.push(expr),
                None if more || !branches.is_empty() => {
                    return Err(self.syntax(
                        "a branch of \"|\" holds only select(), limit() or sort()",
                        branch_start,
                    ));
                }
                None => {}
            }
            match self.peek() {
                Some(b'|') => self.position += 1,
                Some(byte) if Some(byte) == closer => break,
                None if closer.is_none() => break,
                None => {
                    let wanted = char::from(closer.unwrap_or(b')'));
                    return Err(self.syntax(format!("expected \"{wanted}\""), self.position));
                }
                Some(byte) => return Err(self.unexpected(byte)),
            }
        }
        Ok(join(branches, Logic::Or))
    }

    fn parse_and(&mut self) -> Result<Option<Expr>, ParseError> {
        let mut parts = Vec::new();
        // The path of the previous part when it was a range condition, for chained ranges.
        let mut chain: Option<Vec<String>> = None;
        loop {
            match self.parse_part(chain.take())? {
                Part::Expr(expr) => {
                    if let Expr::Condition(condition) = &expr {
                        if condition.comparator.is_range() {
                            chain = Some(condition.path.clone());
                        }
                    }
                    parts.push(expr);
                }
                Part::Call => {}
            }
            if self.peek() == Some(b'&') {
                self.position += 1;
            } else {
                return Ok(join(parts, Logic::And));
            }
        }
    }

    fn parse_part(&mut self, chain: Option<Vec<String>>) -> Result<Part, ParseError> {
        let start = self.position;
        let closer = match self.peek() {
            Some(b'(') => b')',
            Some(b'[') => b']',
            Some(byte) if !matches!(byte, b'&' | b'|' | b')' | b']') => {
                return self.parse_condition_or_call(chain);
            }
            _ => return Err(self.syntax("expected a condition", start)),
        };
        self.enter()?;
        self.position += 1;
        let expr = self.parse_or(Some(closer))?;
        self.expect(closer)?;
        self.depth -= 1;
        // Calls inside a group are rejected where they are met, so a group is never empty.
        expr.map(Part::Expr)
            .ok_or_else(|| self.syntax("expected a condition", start))
    }

    fn parse_condition_or_call(&mut self, chain: Option<Vec<String>>) -> Result<Part, ParseError> {
        let start = self.position;
        self.skip_while(|byte| {
            !matches!(
                byte,
                b'=' | b'!' | b'<' | b'>' | b'(' | b')' | b'[' | b']' | b'&' | b'|' | b','
            )
        });
        let name_raw = self.slice(start, self.position);
        if self.peek() == Some(b'(') {
            if self.depth > 0 {
                return Err(self.syntax(
                    format!("{name_raw}() is only allowed outside groups"),
                    start,
                ));
            }
            self.position += 1;
            match name_raw {
                "select" => self.parse_select(start)?,
                "limit" => self.parse_limit(start)?,
                "sort" => self.parse_sort(start)?,
                _ => {
                    return Err(ParseError {
                        kind: ErrorKind::UnknownFunction(name_raw.to_owned()),
                        position: start,
                    })
                }
            }
            return Ok(Part::Call);
        }
        if name_raw.is_empty() {
            return Err(self.syntax("expected an attribute name", start));
        }
        let op_start = self.position;
        let (mut comparator, strict, wildcard) = self.parse_op()?;
        let mut path = None;
        if let Some(chained) = chain {
            // `price=gt=100&lt=200`: only a plain `=` after the bare operator name chains.
            let bare = match name_raw {
                "lt" => Some(Comparator::Less),
                "le" => Some(Comparator::LessEqual),
                "gt" => Some(Comparator::Greater),
                "ge" => Some(Comparator::GreaterEqual),
                _ => None,
            };
            if let (Some(range), true) = (bare, self.slice(op_start, self.position) == "=") {
                comparator = range;
                path = Some(chained);
            }
        }
        let path = match path {
            Some(path) => path,
            None => self.decode_path(start, name_raw)?,
        };
        let value = self.parse_value(&mut comparator, strict, wildcard)?;
        self.condition_count += 1;
        if self.condition_count > CONDITION_COUNT_MAX {
            return Err(ParseError {
                kind: ErrorKind::TooManyConditions,
                position: start,
            });
        }
        Ok(Part::Expr(Expr::Condition(Condition {
            path,
            comparator,
            value,
        })))
    }

    /// Returns the comparator, whether it is strict, and whether a trailing `*` means
    /// starts-with.
    fn parse_op(&mut self) -> Result<(Comparator, bool, bool), ParseError> {
        let rest = self.bytes.get(self.position..).unwrap_or(&[]);
        const FIQL: [(&[u8], Comparator); 9] = [
            (b"=eq=", Comparator::Equal),
            (b"=ne=", Comparator::NotEqual),
            (b"=lt=", Comparator::Less),
            (b"=le=", Comparator::LessEqual),
            (b"=gt=", Comparator::Greater),
            (b"=ge=", Comparator::GreaterEqual),
            (b"=ct=", Comparator::Contains),
            (b"=sw=", Comparator::StartsWith),
            (b"=ew=", Comparator::EndsWith),
        ];
        let (length, comparator, strict, wildcard) = if rest.starts_with(b"===") {
            (3, Comparator::Equal, true, false)
        } else if rest.starts_with(b"==") {
            (2, Comparator::Equal, false, true)
        } else if let Some((spelling, comparator)) =
            FIQL.iter().find(|(spelling, _)| rest.starts_with(spelling))
        {
            (
                spelling.len(),
                *comparator,
                false,
                *comparator == Comparator::Equal,
            )
        } else if rest.starts_with(b"=") {
            (1, Comparator::Equal, false, false)
        } else if rest.starts_with(b"!==") {
            (3, Comparator::NotEqual, true, false)
        } else if rest.starts_with(b"!=") {
            (2, Comparator::NotEqual, false, false)
        } else if rest.starts_with(b"<=") {
            (2, Comparator::LessEqual, false, false)
        } else if rest.starts_with(b"<") {
            (1, Comparator::Less, false, false)
        } else if rest.starts_with(b">=") {
            (2, Comparator::GreaterEqual, false, false)
        } else if rest.starts_with(b">") {
            (1, Comparator::Greater, false, false)
        } else {
            return Err(self.syntax("expected a comparator", self.position));
        };
        self.position += length;
        Ok((comparator, strict, wildcard))
    }

    fn parse_value(
        &mut self,
        comparator: &mut Comparator,
        strict: bool,
        wildcard: bool,
    ) -> Result<QueryValue, ParseError> {
        let start = self.position;
        // Parentheses and brackets opened inside the value stay in it.
        let (mut parens, mut brackets) = (0usize, 0usize);
        while let Some(byte) = self.peek() {
            match byte {
                b'&' | b'|' => break,
                b'(' => parens += 1,
                b'[' => brackets += 1,
                b')' if parens == 0 => break,
                b']' if brackets == 0 => break,
                b')' => parens -= 1,
                b']' => brackets -= 1,
                _ => {}
            }
            self.position += 1;
        }
        let mut raw = self.slice(start, self.position);
        if wildcard {
            if let Some(star) = raw.find('*') {
                if star + 1 != raw.len() {
                    return Err(
                        self.syntax("\"*\" is only allowed at the end of a value", start + star)
                    );
                }
                raw = raw.get(..star).unwrap_or("");
                *comparator = Comparator::StartsWith;
            }
        }
        let empty_allowed = matches!(*comparator, Comparator::Equal | Comparator::NotEqual);
        if raw.is_empty() && !empty_allowed {
            return Err(self.syntax("expected a value", start));
        }
        if strict {
            return Ok(QueryValue::Url {
                text: self.decode(start, raw)?,
                hint: ValueHint::Untyped,
                strict: true,
            });
        }
        if raw == "null" {
            return Ok(QueryValue::Url {
                text: "null".to_owned(),
                hint: ValueHint::Null,
                strict: false,
            });
        }
        const PREFIXES: [(&str, ValueHint); 4] = [
            ("number:", ValueHint::Number),
            ("boolean:", ValueHint::Boolean),
            ("string:", ValueHint::String),
            ("date:", ValueHint::Date),
        ];
        let (hint, text_start) = PREFIXES
            .iter()
            .find(|(prefix, _)| raw.starts_with(prefix))
            .map_or((ValueHint::Untyped, 0), |(prefix, hint)| {
                (*hint, prefix.len())
            });
        let text = raw.get(text_start..).unwrap_or("");
        Ok(QueryValue::Url {
            text: self.decode(start + text_start, text)?,
            hint,
            strict: false,
        })
    }

    /// `select(` has been read; `start` is where `select` began.
    fn parse_select(&mut self, start: usize) -> Result<(), ParseError> {
        if self.query.select.is_some() {
            return Err(self.syntax("select() given twice", start));
        }
        self.enter()?;
        let select = if self.peek() == Some(b'[') {
            self.enter()?;
            self.position += 1;
            let (items, _) = self.parse_items(b']')?;
            self.expect(b']')?;
            self.depth -= 1;
            Select::Array(items)
        } else {
            let (mut items, trailing_comma) = self.parse_items(b')')?;
            match (items.len(), trailing_comma) {
                (1, false) => Select::Value(items.remove(0)),
                _ => Select::Object(items),
            }
        };
        self.expect(b')')?;
        self.depth -= 1;
        self.query.select = Some(select);
        Ok(())
    }

    /// At least one item, separated by commas, up to `closer` (not consumed). Returns whether the
    /// list ended with a comma.
    fn parse_items(&mut self, closer: u8) -> Result<(Vec<SelectItem>, bool), ParseError> {
        let mut items = Vec::new();
        loop {
            let start = self.position;
            self.skip_while(|byte| {
                !matches!(
                    byte,
                    b',' | b'(' | b')' | b'[' | b']' | b'{' | b'}' | b'&' | b'|'
                )
            });
            let name_raw = self.slice(start, self.position);
            if name_raw.is_empty() {
                return Err(self.syntax("expected a property name", start));
            }
            let name = self.decode(start, name_raw)?;
            let children = if self.peek() == Some(b'{') {
                self.enter()?;
                self.position += 1;
                let (children, _) = self.parse_items(b'}')?;
                self.expect(b'}')?;
                self.depth -= 1;
                Some(children)
            } else {
                None
            };
            items.push(SelectItem { name, children });
            if self.peek() != Some(b',') {
                return Ok((items, false));
            }
            self.position += 1;
            if self.peek() == Some(closer) {
                return Ok((items, true));
            }
        }
    }

    fn parse_limit(&mut self, start: usize) -> Result<(), ParseError> {
        if self.query.limit.is_some() {
            return Err(self.syntax("limit() given twice", start));
        }
        let first = self.parse_integer()?;
        let limit = if self.peek() == Some(b',') {
            self.position += 1;
            let end = self.parse_integer()?;
            Limit { start: first, end }
        } else {
            Limit {
                start: 0,
                end: first,
            }
        };
        self.expect(b')')?;
        self.query.limit = Some(limit);
        Ok(())
    }

    fn parse_integer(&mut self) -> Result<u64, ParseError> {
        let start = self.position;
        self.skip_while(|byte| !matches!(byte, b',' | b')' | b'&' | b'|' | b'(' | b'[' | b']'));
        let raw = self.slice(start, self.position);
        let digits = !raw.is_empty() && raw.bytes().all(|byte| byte.is_ascii_digit());
        match raw.parse::<u64>() {
            Ok(value) if digits => Ok(value),
            _ => Err(ParseError {
                kind: ErrorKind::InvalidLimit(raw.to_owned()),
                position: start,
            }),
        }
    }

    fn parse_sort(&mut self, start: usize) -> Result<(), ParseError> {
        if !self.query.sort.is_empty() {
            return Err(self.syntax("sort() given twice", start));
        }
        let mut keys = Vec::new();
        loop {
            let descending = match self.peek() {
                Some(b'-') => true,
                Some(b'+') => false,
                _ => false,
            };
            if matches!(self.peek(), Some(b'-' | b'+')) {
                self.position += 1;
            }
            let path_start = self.position;
            self.skip_while(|byte| !matches!(byte, b',' | b'(' | b')' | b'[' | b']' | b'&' | b'|'));
            let path_raw = self.slice(path_start, self.position);
            if path_raw.is_empty() {
                return Err(self.syntax("expected an attribute name", path_start));
            }
            let path = self.decode_path(path_start, path_raw)?;
            keys.push(SortKey { path, descending });
            if self.peek() != Some(b',') {
                break;
            }
            self.position += 1;
        }
        self.expect(b')')?;
        self.query.sort = keys;
        Ok(())
    }

    fn skip_while(&mut self, keep: impl Fn(u8) -> bool) {
        while let Some(byte) = self.peek() {
            if !keep(byte) {
                break;
            }
            self.position += 1;
        }
    }

    /// The raw text between two positions. Positions only ever stop before an ASCII byte or at
    /// the end, so they are on character boundaries; the fallback is never taken.
    fn slice(&self, start: usize, end: usize) -> &'a str {
        self.raw.get(start..end).unwrap_or("")
    }

    fn decode_path(&self, start: usize, raw: &str) -> Result<Vec<String>, ParseError> {
        let mut path = Vec::new();
        let mut segment_start = start;
        for segment in raw.split('.') {
            if segment.is_empty() {
                return Err(self.syntax("expected an attribute name", segment_start));
            }
            path.push(self.decode(segment_start, segment)?);
            segment_start += segment.len() + 1;
        }
        Ok(path)
    }

    /// Percent-decodes `raw`, which starts at byte `start` of the query.
    fn decode(&self, start: usize, raw: &str) -> Result<String, ParseError> {
        crate::util::percent_decode(raw)
            .map_err(|(offset, detail)| self.syntax(detail, start + offset))
    }
}

/// Joins children with `logic`, flattening children of the same kind so equal queries have equal
/// ASTs: no children is `None`, one child is that child.
pub(crate) fn join(mut children: Vec<Expr>, logic: Logic) -> Option<Expr> {
    // A lone child is the answer as it is: a node `join` built already has two or more children,
    // so flattening it into a new list would only rebuild it (and cost an allocation per query).
    if children.len() <= 1 {
        return children.pop();
    }
    let mut flat = Vec::with_capacity(children.len());
    for child in children {
        match (child, logic) {
            (Expr::And(inner), Logic::And) | (Expr::Or(inner), Logic::Or) => flat.extend(inner),
            (other, _) => flat.push(other),
        }
    }
    match flat.len() {
        0 => None,
        1 => flat.pop(),
        _ => Some(match logic {
            Logic::And => Expr::And(flat),
            Logic::Or => Expr::Or(flat),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query::ast::{Logic, SelectItem};
    use proptest::prelude::*;

    /// A compact, explicit rendering of a parsed query: comparators by name, value hints and
    /// strictness spelled out, calls after ` ; `.
    fn show(query: &Query) -> String {
        let mut parts = Vec::new();
        if let Some(filter) = &query.filter {
            parts.push(show_expr(filter));
        }
        if let Some(select) = &query.select {
            parts.push(match select {
                Select::Value(item) => {
                    format!("select=value({})", show_items(std::slice::from_ref(item)))
                }
                Select::Object(items) => format!("select=object({})", show_items(items)),
                Select::Array(items) => format!("select=array({})", show_items(items)),
            });
        }
        if let Some(limit) = &query.limit {
            parts.push(format!("limit={}..{}", limit.start, limit.end));
        }
        if !query.sort.is_empty() {
            let keys: Vec<String> = query
                .sort
                .iter()
                .map(|key| {
                    format!(
                        "{}{}",
                        if key.descending { "-" } else { "+" },
                        show_path(&key.path)
                    )
                })
                .collect();
            parts.push(format!("sort={}", keys.join(",")));
        }
        parts.join(" ; ")
    }

    fn show_path(path: &[String]) -> String {
        if path.iter().any(|segment| segment.contains('.')) {
            format!("{path:?}")
        } else {
            path.join(".")
        }
    }

    fn show_items(items: &[SelectItem]) -> String {
        let shown: Vec<String> = items
            .iter()
            .map(|item| match &item.children {
                Some(children) => format!("{}{{{}}}", item.name, show_items(children)),
                None => item.name.clone(),
            })
            .collect();
        shown.join(",")
    }

    fn show_expr(expr: &Expr) -> String {
        match expr {
            Expr::And(children) | Expr::Or(children) => {
                let shown: Vec<String> = children.iter().map(show_expr).collect();
                let name = if matches!(expr, Expr::And(_)) {
                    "and"
                } else {
                    "or"
                };
                format!("{name}({})", shown.join(", "))
            }
            Expr::Condition(condition) => {
                let op = match condition.comparator {
                    Comparator::Equal => "eq",
                    Comparator::NotEqual => "ne",
                    Comparator::Less => "lt",
                    Comparator::LessEqual => "le",
                    Comparator::Greater => "gt",
                    Comparator::GreaterEqual => "ge",
                    Comparator::Contains => "ct",
                    Comparator::StartsWith => "sw",
                    Comparator::EndsWith => "ew",
                    Comparator::Between => "between",
                };
                let value = match &condition.value {
                    QueryValue::Url {
                        text, strict: true, ..
                    } => format!("strict{text:?}"),
                    QueryValue::Url {
                        hint: ValueHint::Null,
                        ..
                    } => "null".to_owned(),
                    QueryValue::Url { text, hint, .. } => {
                        let prefix = match hint {
                            ValueHint::Number => "number",
                            ValueHint::Boolean => "boolean",
                            ValueHint::String => "string",
                            ValueHint::Date => "date",
                            _ => "",
                        };
                        format!("{prefix}{text:?}")
                    }
                    QueryValue::Json(value) => format!("json:{value}"),
                };
                format!("{} {op} {value}", show_path(&condition.path))
            }
        }
    }

    /// Parses `raw` and compares with `expected` (`show` of the query, or `error: <Display>`).
    /// Every query that parses must also print canonically and parse back to the same AST.
    fn check(raw: &str, expected: &str) {
        let actual = match parse(raw) {
            Ok(query) => {
                let printed = query.to_string();
                assert_eq!(
                    parse(&printed),
                    Ok(query.clone()),
                    "round trip of {raw:?} via {printed:?}"
                );
                show(&query)
            }
            Err(error) => format!("error: {error}"),
        };
        assert_eq!(actual, expected, "query {raw:?}");
    }

    #[test]
    fn spec_examples() {
        check("breed=Lab", r#"breed eq "Lab""#);
        check("age=gt=3&lt=9", r#"and(age gt "3", age lt "9")"#);
        check("name==Bo*", r#"name sw "Bo""#);
        check("name=ct=ai", r#"name ct "ai""#);
        check(
            "breed=Lab|breed=Poodle",
            r#"or(breed eq "Lab", breed eq "Poodle")"#,
        );
        check(
            "(breed=Lab|breed=Poodle)&age=gt=4",
            r#"and(or(breed eq "Lab", breed eq "Poodle"), age gt "4")"#,
        );
        check(
            "[name=Rex|name=Max]&age=gt=1",
            r#"and(or(name eq "Rex", name eq "Max"), age gt "1")"#,
        );
        check(
            "breed=Lab&select(name)",
            r#"breed eq "Lab" ; select=value(name)"#,
        );
        check(
            "select([name,age])&limit(1,3)",
            "select=array(name,age) ; limit=1..3",
        );
        check("sort(+breed,-age)", "sort=+breed,-age");
        check("age=null", "age eq null");
        check("age!=null", "age ne null");
        check("id=1", r#"id eq "1""#);
        check("color=red", r#"color eq "red""#);
        check("age=gt=abc", r#"age gt "abc""#);
        check("brand.name=Acme", r#"brand.name eq "Acme""#);
        check(
            "brand.name=Acme&select(name,brand{name})",
            r#"brand.name eq "Acme" ; select=object(name,brand{name})"#,
        );
        check("", "");
    }

    #[test]
    fn comparators() {
        check("a=b", r#"a eq "b""#);
        check("a==b", r#"a eq "b""#);
        check("a===b", r#"a eq strict"b""#);
        check("a!=b", r#"a ne "b""#);
        check("a!==b", r#"a ne strict"b""#);
        check("a<b", r#"a lt "b""#);
        check("a<=b", r#"a le "b""#);
        check("a>b", r#"a gt "b""#);
        check("a>=b", r#"a ge "b""#);
        check("a=eq=b", r#"a eq "b""#);
        check("a=ne=b", r#"a ne "b""#);
        check("a=lt=b", r#"a lt "b""#);
        check("a=le=b", r#"a le "b""#);
        check("a=gt=b", r#"a gt "b""#);
        check("a=ge=b", r#"a ge "b""#);
        check("a=ct=b", r#"a ct "b""#);
        check("a=sw=b", r#"a sw "b""#);
        check("a=ew=b", r#"a ew "b""#);
        check("a=eq=b*", r#"a sw "b""#);
        check(
            "a==*",
            "error: Unable to parse query, expected a value at position 3",
        );
        check("a=b*", r#"a eq "b*""#);
        check("a=ct=*b*", r#"a ct "*b*""#);
        check("a=b=c", r#"a eq "b=c""#);
        check("a=eqx=c", r#"a eq "eqx=c""#);
        check("a=", r#"a eq """#);
        check("a!=", r#"a ne """#);
        check("a%3C=1", r#"a< eq "1""#);
        check("a=%3C1", r#"a eq "<1""#);
    }

    #[test]
    fn values() {
        check("a=number:5", r#"a eq number"5""#);
        check("a=boolean:true", r#"a eq boolean"true""#);
        check("a=string:null", r#"a eq string"null""#);
        check("a=string:", r#"a eq string"""#);
        check(
            "a=date:2024-01-01T00%3A00%3A00Z",
            r#"a eq date"2024-01-01T00:00:00Z""#,
        );
        check("a=date:1700000000000", r#"a eq date"1700000000000""#);
        check("a=%6Eull", r#"a eq "null""#);
        check("a=nullx", r#"a eq "nullx""#);
        check("a=number%3A5", r#"a eq "number:5""#);
        check("a=Number:5", r#"a eq "Number:5""#);
        check("a===null", r#"a eq strict"null""#);
        check("a!==number:5", r#"a ne strict"number:5""#);
        check("a==string:Bo*", r#"a sw string"Bo""#);
        check("a=gt=number:3", r#"a gt number"3""#);
        check("a=true", r#"a eq "true""#);
        check("a=1.5", r#"a eq "1.5""#);
        check("a=x+y", r#"a eq "x+y""#);
    }

    #[test]
    fn percent_encoding() {
        check("name=Rex%20%26%20Max", r#"name eq "Rex & Max""#);
        check("na%6De=x", r#"name eq "x""#);
        check("a%2Eb=1", r#"["a.b"] eq "1""#);
        check("a=caf%C3%A9", r#"a eq "café""#);
        check("a=café", r#"a eq "café""#);
        check("caf%C3%A9.x=1", r#"café.x eq "1""#);
        check("a=%2A", r#"a eq "*""#);
        check("a==x%2A", r#"a eq "x*""#);
        check("a=%7C&b=%28", r#"and(a eq "|", b eq "(")"#);
        check(
            "a=%zz",
            "error: Unable to parse query, invalid percent-encoding at position 2",
        );
        check(
            "a=b%2",
            "error: Unable to parse query, invalid percent-encoding at position 3",
        );
        check(
            "a=b%",
            "error: Unable to parse query, invalid percent-encoding at position 3",
        );
        check(
            "a=%C3",
            "error: Unable to parse query, percent-encoding is not valid UTF-8 at position 2",
        );
        check(
            "a=number:%FF",
            "error: Unable to parse query, percent-encoding is not valid UTF-8 at position 9",
        );
        check(
            "x.%G1=1",
            "error: Unable to parse query, invalid percent-encoding at position 2",
        );
        check(
            "select(%FF)",
            "error: Unable to parse query, percent-encoding is not valid UTF-8 at position 7",
        );
    }

    #[test]
    fn logic_and_groups() {
        check("a=1|b=2&c=3", r#"or(a eq "1", and(b eq "2", c eq "3"))"#);
        check("a=1&b=2|c=3", r#"or(and(a eq "1", b eq "2"), c eq "3")"#);
        check("a=1&(b=2&c=3)", r#"and(a eq "1", b eq "2", c eq "3")"#);
        check("a=1|(b=2|c=3)", r#"or(a eq "1", b eq "2", c eq "3")"#);
        check("((a=1))", r#"a eq "1""#);
        check(
            "[(a=1|b=2)]&c=3",
            r#"and(or(a eq "1", b eq "2"), c eq "3")"#,
        );
        check(
            "(a=1&b=2)|(c=3&d=4)",
            r#"or(and(a eq "1", b eq "2"), and(c eq "3", d eq "4"))"#,
        );
        check("name=Rex%20(old)", r#"name eq "Rex (old)""#);
        check("(name=f(x))&a=1", r#"and(name eq "f(x)", a eq "1")"#);
        check("[name=a[1]]", r#"name eq "a[1]""#);
        check(
            "(a=1",
            r#"error: Unable to parse query, expected ")" at position 4"#,
        );
        check(
            "[a=1",
            r#"error: Unable to parse query, expected "]" at position 4"#,
        );
        check(
            "(a=1]",
            r#"error: Unable to parse query, unexpected "]" at position 4"#,
        );
        check(
            "a=1)",
            r#"error: Unable to parse query, unexpected ")" at position 3"#,
        );
        check(
            "(a=1)b=2",
            r#"error: Unable to parse query, unexpected "b" at position 5"#,
        );
        check(
            "a=1&",
            "error: Unable to parse query, expected a condition at position 4",
        );
        check(
            "&a=1",
            "error: Unable to parse query, expected a condition at position 0",
        );
        check(
            "a=1||b=2",
            "error: Unable to parse query, expected a condition at position 4",
        );
        check(
            "()",
            "error: Unable to parse query, expected a condition at position 1",
        );
        check(
            "a",
            "error: Unable to parse query, expected a comparator at position 1",
        );
        check(
            "a!1",
            "error: Unable to parse query, expected a comparator at position 1",
        );
        check(
            "=1",
            "error: Unable to parse query, expected an attribute name at position 0",
        );
        check(
            "a.=1",
            "error: Unable to parse query, expected an attribute name at position 2",
        );
        check(
            ".a=1",
            "error: Unable to parse query, expected an attribute name at position 0",
        );
    }

    #[test]
    fn chained_ranges() {
        check(
            "price=gt=100&lt=200",
            r#"and(price gt "100", price lt "200")"#,
        );
        check("price>100&le=200", r#"and(price gt "100", price le "200")"#);
        check(
            "price=ge=1&lt=5&gt=2",
            r#"and(price ge "1", price lt "5", price gt "2")"#,
        );
        check("a.b<1&ge=0", r#"and(a.b lt "1", a.b ge "0")"#);
        // Only right after a range condition, only with `&`, only with a plain `=`.
        check("a=1&lt=5", r#"and(a eq "1", lt eq "5")"#);
        check("lt=5", r#"lt eq "5""#);
        check("price=gt=1|lt=5", r#"or(price gt "1", lt eq "5")"#);
        check("price=gt=1&lt==5", r#"and(price gt "1", lt eq "5")"#);
        check("price=gt=1&(lt=5)", r#"and(price gt "1", lt eq "5")"#);
        check("price=gt=1&%6Ct=5", r#"and(price gt "1", lt eq "5")"#);
        check(
            "price=gt=1&lt=",
            "error: Unable to parse query, expected a value at position 14",
        );
    }

    #[test]
    fn wildcards_and_empty_values() {
        check(
            "name==B*o",
            r#"error: Unable to parse query, "*" is only allowed at the end of a value at position 7"#,
        );
        check(
            "name==**",
            r#"error: Unable to parse query, "*" is only allowed at the end of a value at position 6"#,
        );
        check(
            "age=gt=",
            "error: Unable to parse query, expected a value at position 7",
        );
        check(
            "age<",
            "error: Unable to parse query, expected a value at position 4",
        );
        check(
            "a=ct=&b=1",
            "error: Unable to parse query, expected a value at position 5",
        );
    }

    #[test]
    fn calls() {
        check("select(a)", "select=value(a)");
        check("select(a,)", "select=object(a)");
        check("select(a,b)", "select=object(a,b)");
        check("select(a,b,)", "select=object(a,b)");
        check("select([a,b])", "select=array(a,b)");
        check("select([a,])", "select=array(a)");
        check("select(a,rel{x,y})", "select=object(a,rel{x,y})");
        check("select(rel{x,sub{y}})", "select=value(rel{x,sub{y}})");
        check("select(na%20me)", "select=value(na me)");
        check("limit(5)", "limit=0..5");
        check("limit(0,5)", "limit=0..5");
        check("limit(5,3)", "limit=5..3");
        check("sort(a)", "sort=+a");
        check("sort(-a.b,c)", "sort=-a.b,+c");
        check("sort(--a)", "sort=--a");
        check("sort(%2Da)", "sort=+-a");
        check(
            "a=1|b=2&select(x)",
            r#"or(a eq "1", b eq "2") ; select=value(x)"#,
        );
        check(
            "select(x)&a=1&limit(2)&sort(-a)",
            r#"a eq "1" ; select=value(x) ; limit=0..2 ; sort=-a"#,
        );
        check(
            "select(name",
            r#"error: Unable to parse query, expected ")" at position 11"#,
        );
        check(
            "select([a,b)",
            r#"error: Unable to parse query, expected "]" at position 11"#,
        );
        check(
            "select([a,b]",
            r#"error: Unable to parse query, expected ")" at position 12"#,
        );
        check(
            "select()",
            "error: Unable to parse query, expected a property name at position 7",
        );
        check(
            "select(a,,b)",
            "error: Unable to parse query, expected a property name at position 9",
        );
        check(
            "select(rel{})",
            "error: Unable to parse query, expected a property name at position 11",
        );
        check(
            "select(rel{x)",
            r#"error: Unable to parse query, expected "}" at position 12"#,
        );
        check(
            "select(a&b)",
            r#"error: Unable to parse query, expected ")" at position 8"#,
        );
        check(
            "select(a)x",
            r#"error: Unable to parse query, unexpected "x" at position 9"#,
        );
        check(
            "limit(x)",
            r#"error: Invalid limit argument "x", expecting a non-negative integer"#,
        );
        check(
            "limit(1,x)",
            r#"error: Invalid limit argument "x", expecting a non-negative integer"#,
        );
        check(
            "limit(-1)",
            r#"error: Invalid limit argument "-1", expecting a non-negative integer"#,
        );
        check(
            "limit(1.5)",
            r#"error: Invalid limit argument "1.5", expecting a non-negative integer"#,
        );
        check(
            "limit()",
            r#"error: Invalid limit argument "", expecting a non-negative integer"#,
        );
        check(
            "limit(99999999999999999999)",
            r#"error: Invalid limit argument "99999999999999999999", expecting a non-negative integer"#,
        );
        check(
            "limit(1,2,3)",
            r#"error: Unable to parse query, expected ")" at position 9"#,
        );
        check(
            "sort()",
            "error: Unable to parse query, expected an attribute name at position 5",
        );
        check(
            "sort(a,)",
            "error: Unable to parse query, expected an attribute name at position 7",
        );
        check("foo(x)", "error: Unknown query function foo()");
        check("Select(x)", "error: Unknown query function Select()");
        check("a=1&count(x)", "error: Unknown query function count()");
        check(
            "select(a)|b=1",
            r#"error: Unable to parse query, a branch of "|" holds only select(), limit() or sort() at position 0"#,
        );
        check(
            "b=1|select(a)",
            r#"error: Unable to parse query, a branch of "|" holds only select(), limit() or sort() at position 4"#,
        );
        check(
            "(select(a))",
            "error: Unable to parse query, select() is only allowed outside groups at position 1",
        );
        check(
            "select(a)&select(b)",
            "error: Unable to parse query, select() given twice at position 10",
        );
        check(
            "limit(1)&limit(2)",
            "error: Unable to parse query, limit() given twice at position 9",
        );
        check(
            "sort(a)&sort(b)",
            "error: Unable to parse query, sort() given twice at position 8",
        );
    }

    #[test]
    fn bounds() {
        let nested = |depth: usize| format!("{}a=1{}", "(".repeat(depth), ")".repeat(depth));
        check(&nested(DEPTH_MAX), r#"a eq "1""#);
        check(
            &nested(DEPTH_MAX + 1),
            &format!("error: Query nests deeper than {DEPTH_MAX} levels at position {DEPTH_MAX}"),
        );
        // Deep input far past the bound fails at the bound, without recursing further.
        let deep = "(".repeat(QUERY_BYTES_MAX);
        assert_eq!(
            parse(&deep).map_err(|error| error.kind),
            Err(ErrorKind::TooDeep)
        );
        let conditions = |count: usize| vec!["a=1"; count].join("&");
        assert!(parse(&conditions(CONDITION_COUNT_MAX)).is_ok());
        check(
            &conditions(CONDITION_COUNT_MAX + 1),
            &format!(
                "error: Query has more than {CONDITION_COUNT_MAX} conditions at position {}",
                CONDITION_COUNT_MAX * 4
            ),
        );
        let long = format!("a={}", "x".repeat(QUERY_BYTES_MAX - 2));
        assert!(parse(&long).is_ok());
        check(
            &format!("{long}x"),
            &format!(
                "error: Query is {} bytes long, longer than the {QUERY_BYTES_MAX} allowed",
                QUERY_BYTES_MAX + 1
            ),
        );
        let deep_select = format!(
            "select(a{}{})",
            "{a".repeat(DEPTH_MAX),
            "}".repeat(DEPTH_MAX)
        );
        assert_eq!(
            parse(&deep_select).map_err(|error| error.kind),
            Err(ErrorKind::TooDeep)
        );
        let select_at_bound = format!(
            "select(a{}{})",
            "{a".repeat(DEPTH_MAX - 1),
            "}".repeat(DEPTH_MAX - 1)
        );
        assert!(parse(&select_at_bound).is_ok());
    }

    // -----------------------------------------------------------------------------------------
    // Properties

    fn name() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9 .%*()&|=!<>,:+\\-\\[\\]{}é_~]{1,6}"
    }

    fn condition() -> impl Strategy<Value = Expr> {
        let comparator = prop_oneof![
            Just(Comparator::Equal),
            Just(Comparator::NotEqual),
            Just(Comparator::Less),
            Just(Comparator::LessEqual),
            Just(Comparator::Greater),
            Just(Comparator::GreaterEqual),
            Just(Comparator::Contains),
            Just(Comparator::StartsWith),
            Just(Comparator::EndsWith),
        ];
        let hint = prop_oneof![
            Just(ValueHint::Untyped),
            Just(ValueHint::Null),
            Just(ValueHint::Number),
            Just(ValueHint::Boolean),
            Just(ValueHint::String),
            Just(ValueHint::Date),
        ];
        let text = prop_oneof![
            "[a-zA-Z0-9 .%*()&|=!<>,:+\\-\\[\\]{}é_~]{0,8}",
            Just("null".to_owned()),
            Just("number:1".to_owned()),
        ];
        (
            prop::collection::vec(name(), 1..3),
            comparator,
            text,
            hint,
            any::<bool>(),
        )
            .prop_map(|(path, comparator, mut text, mut hint, strict)| {
                // Keep to what the parser can produce: strict only on (in)equality and untyped,
                // null only as the keyword, and a value wherever the comparator needs one.
                let strict =
                    strict && matches!(comparator, Comparator::Equal | Comparator::NotEqual);
                if strict {
                    hint = ValueHint::Untyped;
                }
                if hint == ValueHint::Null {
                    text = "null".to_owned();
                }
                if text.is_empty()
                    && !matches!(comparator, Comparator::Equal | Comparator::NotEqual)
                {
                    text = "x".to_owned();
                }
                Expr::Condition(Condition {
                    path,
                    comparator,
                    value: QueryValue::Url { text, hint, strict },
                })
            })
    }

    fn expr() -> impl Strategy<Value = Expr> {
        condition().prop_recursive(4, 24, 4, |inner| {
            (prop::collection::vec(inner, 2..4), any::<bool>()).prop_map(|(children, and)| {
                let logic = if and { Logic::And } else { Logic::Or };
                join(children, logic).unwrap_or(Expr::And(Vec::new()))
            })
        })
    }

    fn select_item() -> impl Strategy<Value = SelectItem> {
        let leaf = name().prop_map(|name| SelectItem {
            name,
            children: None,
        });
        leaf.prop_recursive(3, 12, 3, |inner| {
            (name(), prop::collection::vec(inner, 1..3)).prop_map(|(name, children)| SelectItem {
                name,
                children: Some(children),
            })
        })
    }

    fn query() -> impl Strategy<Value = Query> {
        let select = prop_oneof![
            select_item().prop_map(Select::Value),
            prop::collection::vec(select_item(), 1..3).prop_map(Select::Object),
            prop::collection::vec(select_item(), 1..3).prop_map(Select::Array),
        ];
        let limit =
            (any::<u64>(), any::<u64>(), any::<bool>()).prop_map(|(start, end, from_zero)| Limit {
                start: if from_zero { 0 } else { start },
                end,
            });
        let sort_key = (prop::collection::vec(name(), 1..3), any::<bool>())
            .prop_map(|(path, descending)| SortKey { path, descending });
        (
            prop::option::of(expr()),
            prop::option::of(select),
            prop::option::of(limit),
            prop::collection::vec(sort_key, 0..3),
        )
            .prop_map(|(filter, select, limit, sort)| Query {
                filter,
                select,
                limit,
                sort,
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        #[test]
        fn syntax_heavy_strings_never_panic_and_round_trip(raw in "[a-c.=!<>&|()\\[\\]{},*%2A:+\\-0-9elgtnu]{0,40}") {
            if let Ok(query) = parse(&raw) {
                let printed = query.to_string();
                prop_assert_eq!(parse(&printed), Ok(query), "printed {:?}", printed);
            }
        }

        #[test]
        fn any_string_never_panics(raw in any::<String>()) {
            if let Ok(query) = parse(&raw) {
                prop_assert_eq!(parse(&query.to_string()), Ok(query));
            }
        }

        #[test]
        fn printed_asts_parse_back(query in query()) {
            let printed = query.to_string();
            prop_assert_eq!(parse(&printed), Ok(query), "printed {:?}", printed);
        }
    }
}
