//! The URL query language (SPEC §3.3): the raw query string, as sent and before any
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
        percent_decode(raw).map_err(|(offset, detail)| self.syntax(detail, start + offset))
    }
}

/// `%XX` escapes to bytes; the result must be UTF-8. On error, the offset into `raw` and what is
/// wrong.
fn percent_decode(raw: &str) -> Result<String, (usize, &'static str)> {
    if !raw.contains('%') {
        return Ok(raw.to_owned());
    }
    let bytes = raw.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while let Some(&byte) = bytes.get(index) {
        if byte == b'%' {
            let high = bytes.get(index + 1).and_then(|digit| hex_value(*digit));
            let low = bytes.get(index + 2).and_then(|digit| hex_value(*digit));
            match (high, low) {
                (Some(high), Some(low)) => decoded.push(high << 4 | low),
                _ => return Err((index, "invalid percent-encoding")),
            }
            index += 3;
        } else {
            decoded.push(byte);
            index += 1;
        }
    }
    String::from_utf8(decoded).map_err(|_| (0, "percent-encoding is not valid UTF-8"))
}

fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

/// Joins children with `logic`, flattening children of the same kind so equal queries have equal
/// ASTs: no children is `None`, one child is that child.
pub(crate) fn join(children: Vec<Expr>, logic: Logic) -> Option<Expr> {
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
