//! `SEARCH_JSON(expression, attribute)`: the part of JSONata (1.8, as HarperDB 4.7 runs it) that
//! HarperDB documents (docs/operations-api.md, "SQL", "SEARCH_JSON"): paths of field names, backtick names, `*`,
//! `$` and `$$`; predicates `[…]` (a filter, or an index when a number); array and object
//! constructors; `=`, `!=`, `<`, `<=`, `>`, `>=`, `in`, `and`, `or`, `+`, `-`, `*`, `/`, `%`,
//! `&`; strings, numbers, `true`, `false`, `null`; and the functions `$count`, `$sum`, `$max`,
//! `$min`, `$average`, `$string`, `$length`, `$lowercase`, `$uppercase`, `$exists`, `$not`,
//! `$boolean`, `$number`, `$contains`, `$join`. Anything else is a 400 naming what is not
//! supported. A result of nothing (JSONata's `undefined`) is NULL.

use super::SqlError;
use crate::value::{Object, Value};

/// Nesting depth of an expression (parentheses, constructors, predicates).
const DEPTH_MAX: u32 = 64;

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Str(String),
    Num(f64),
    Name(String),
    Var(String),
    Op(&'static str),
}

fn lex(src: &str) -> Result<Vec<Tok>, SqlError> {
    let bad = |m: String| SqlError::bad(format!("SEARCH_JSON: {m}"));
    let cs: Vec<char> = src.chars().collect();
    let mut i = 0;
    let mut out = Vec::new();
    const OPS: [&str; 21] = [
        "!=", "<=", ">=", "..", "(", ")", "[", "]", "{", "}", ",", ":", ".", "=", "<", ">", "+",
        "-", "*", "/", "&",
    ];
    while i < cs.len() {
        let c = cs[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '"' || c == '\'' {
            let mut s = String::new();
            i += 1;
            loop {
                match cs.get(i) {
                    None => return Err(bad("a string is not closed".into())),
                    Some(&q) if q == c => break,
                    Some('\\') => {
                        i += 1;
                        match cs.get(i) {
                            Some('n') => s.push('\n'),
                            Some('t') => s.push('\t'),
                            Some(&o) => s.push(o),
                            None => return Err(bad("a string is not closed".into())),
                        }
                    }
                    Some(&o) => s.push(o),
                }
                i += 1;
            }
            i += 1;
            out.push(Tok::Str(s));
        } else if c == '`' {
            let start = i + 1;
            let end = cs[start..]
                .iter()
                .position(|&x| x == '`')
                .ok_or_else(|| bad("a `name` is not closed".into()))?;
            out.push(Tok::Name(cs[start..start + end].iter().collect()));
            i = start + end + 1;
        } else if c.is_ascii_digit() {
            let start = i;
            while i < cs.len() && (cs[i].is_ascii_digit() || cs[i] == '.') {
                if cs[i] == '.' && cs.get(i + 1) == Some(&'.') {
                    break;
                }
                i += 1;
            }
            let text: String = cs[start..i].iter().collect();
            out.push(Tok::Num(
                text.parse()
                    .map_err(|_| bad(format!("'{text}' is not a number")))?,
            ));
        } else if c == '$' {
            let start = i + 1;
            i += 1;
            if cs.get(i) == Some(&'$') {
                i += 1;
                out.push(Tok::Var("$".into()));
                continue;
            }
            while i < cs.len() && (cs[i].is_alphanumeric() || cs[i] == '_') {
                i += 1;
            }
            out.push(Tok::Var(cs[start..i].iter().collect()));
        } else if c.is_alphabetic() || c == '_' {
            let start = i;
            while i < cs.len() && (cs[i].is_alphanumeric() || cs[i] == '_') {
                i += 1;
            }
            out.push(Tok::Name(cs[start..i].iter().collect()));
        } else if c == '%' {
            out.push(Tok::Op("%"));
            i += 1;
        } else {
            let rest: String = cs[i..cs.len().min(i + 2)].iter().collect();
            let op = OPS
                .iter()
                .find(|o| rest.starts_with(**o))
                .ok_or_else(|| bad(format!("unexpected '{c}'")))?;
            out.push(Tok::Op(op));
            i += op.chars().count();
        }
    }
    Ok(out)
}

#[derive(Debug, Clone)]
enum Node {
    Lit(Value),
    Field(String),
    Wildcard,
    Context,
    Root,
    Call(String, Vec<Node>),
    Array(Vec<Node>),
    Object(Vec<(Node, Node)>),
    /// Steps, each with its predicates.
    Path(Vec<(Node, Vec<Node>)>),
    Binary(&'static str, Box<Node>, Box<Node>),
    Neg(Box<Node>),
}

struct Parser {
    toks: Vec<Tok>,
    at: usize,
    depth: u32,
}

fn unsupported(what: impl std::fmt::Display) -> SqlError {
    SqlError::bad(format!("SEARCH_JSON: {what} is not supported here"))
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.at)
    }

    fn is_op(&self, op: &str) -> bool {
        matches!(self.peek(), Some(Tok::Op(o)) if *o == op)
    }

    fn is_word(&self, w: &str) -> bool {
        matches!(self.peek(), Some(Tok::Name(n)) if n == w)
    }

    fn expect(&mut self, op: &str) -> Result<(), SqlError> {
        if self.is_op(op) {
            self.at += 1;
            Ok(())
        } else {
            Err(SqlError::bad(format!("SEARCH_JSON: expected '{op}'")))
        }
    }

    fn deeper(&mut self) -> Result<(), SqlError> {
        self.depth += 1;
        if self.depth > DEPTH_MAX {
            return Err(SqlError::bad(
                "SEARCH_JSON: the expression nests too deeply",
            ));
        }
        Ok(())
    }

    fn expr(&mut self) -> Result<Node, SqlError> {
        self.deeper()?;
        let mut l = self.and()?;
        while self.is_word("or") {
            self.at += 1;
            l = Node::Binary("or", Box::new(l), Box::new(self.and()?));
        }
        self.depth -= 1;
        Ok(l)
    }

    fn and(&mut self) -> Result<Node, SqlError> {
        let mut l = self.comparison()?;
        while self.is_word("and") {
            self.at += 1;
            l = Node::Binary("and", Box::new(l), Box::new(self.comparison()?));
        }
        Ok(l)
    }

    fn comparison(&mut self) -> Result<Node, SqlError> {
        let l = self.additive()?;
        let op = match self.peek() {
            Some(Tok::Op(o)) if ["=", "!=", "<", "<=", ">", ">="].contains(o) => *o,
            Some(Tok::Name(n)) if n == "in" => "in",
            _ => return Ok(l),
        };
        self.at += 1;
        Ok(Node::Binary(op, Box::new(l), Box::new(self.additive()?)))
    }

    fn additive(&mut self) -> Result<Node, SqlError> {
        let mut l = self.multiplicative()?;
        loop {
            let op = match self.peek() {
                Some(Tok::Op(o)) if ["+", "-", "&"].contains(o) => *o,
                _ => return Ok(l),
            };
            self.at += 1;
            l = Node::Binary(op, Box::new(l), Box::new(self.multiplicative()?));
        }
    }

    fn multiplicative(&mut self) -> Result<Node, SqlError> {
        let mut l = self.unary()?;
        loop {
            let op = match self.peek() {
                Some(Tok::Op(o)) if ["*", "/", "%"].contains(o) => *o,
                _ => return Ok(l),
            };
            self.at += 1;
            l = Node::Binary(op, Box::new(l), Box::new(self.unary()?));
        }
    }

    fn unary(&mut self) -> Result<Node, SqlError> {
        if self.is_op("-") {
            self.at += 1;
            return Ok(Node::Neg(Box::new(self.unary()?)));
        }
        self.path()
    }

    fn path(&mut self) -> Result<Node, SqlError> {
        let mut steps = vec![self.step()?];
        while self.is_op(".") {
            self.at += 1;
            steps.push(self.step()?);
        }
        if steps.len() == 1 && steps[0].1.is_empty() {
            let (n, _) = steps.remove(0);
            if !matches!(n, Node::Field(_) | Node::Wildcard) {
                return Ok(n);
            }
            return Ok(Node::Path(vec![(n, Vec::new())]));
        }
        Ok(Node::Path(steps))
    }

    fn step(&mut self) -> Result<(Node, Vec<Node>), SqlError> {
        let node = self.primary()?;
        let mut preds = Vec::new();
        while self.is_op("[") {
            self.at += 1;
            if self.is_op("]") {
                return Err(unsupported("'[]'"));
            }
            preds.push(self.expr()?);
            self.expect("]")?;
        }
        Ok((node, preds))
    }

    fn list(&mut self, close: &str) -> Result<Vec<Node>, SqlError> {
        let mut items = Vec::new();
        if self.is_op(close) {
            self.at += 1;
            return Ok(items);
        }
        loop {
            items.push(self.expr()?);
            if self.is_op(",") {
                self.at += 1;
                continue;
            }
            self.expect(close)?;
            return Ok(items);
        }
    }

    fn primary(&mut self) -> Result<Node, SqlError> {
        let tok = self
            .peek()
            .cloned()
            .ok_or_else(|| SqlError::bad("SEARCH_JSON: the expression ends too early"))?;
        self.at += 1;
        Ok(match tok {
            Tok::Str(s) => Node::Lit(Value::String(s)),
            Tok::Num(n) => Node::Lit(super::eval::num(n)),
            Tok::Name(n) => match n.as_str() {
                "true" => Node::Lit(Value::Bool(true)),
                "false" => Node::Lit(Value::Bool(false)),
                "null" => Node::Lit(Value::Null),
                _ => Node::Field(n),
            },
            Tok::Var(v) if v == "$" => Node::Root,
            Tok::Var(v) if v.is_empty() => Node::Context,
            Tok::Var(v) => {
                if !self.is_op("(") {
                    return Err(unsupported(format!("the variable ${v}")));
                }
                self.at += 1;
                Node::Call(v, self.list(")")?)
            }
            Tok::Op("*") => Node::Wildcard,
            Tok::Op("(") => {
                let e = self.expr()?;
                self.expect(")")?;
                e
            }
            Tok::Op("[") => {
                self.deeper()?;
                let items = self.list("]")?;
                self.depth -= 1;
                Node::Array(items)
            }
            Tok::Op("{") => {
                self.deeper()?;
                let mut pairs = Vec::new();
                if self.is_op("}") {
                    self.at += 1;
                } else {
                    loop {
                        let k = self.expr()?;
                        self.expect(":")?;
                        pairs.push((k, self.expr()?));
                        if self.is_op(",") {
                            self.at += 1;
                            continue;
                        }
                        self.expect("}")?;
                        break;
                    }
                }
                self.depth -= 1;
                Node::Object(pairs)
            }
            Tok::Op(o) => return Err(unsupported(format!("'{o}'"))),
        })
    }
}

fn parse(src: &str) -> Result<Node, SqlError> {
    let mut p = Parser {
        toks: lex(src)?,
        at: 0,
        depth: 0,
    };
    let n = p.expr()?;
    if p.at != p.toks.len() {
        return Err(SqlError::bad(format!(
            "SEARCH_JSON: unexpected {:?} in the expression",
            p.toks[p.at]
        )));
    }
    Ok(n)
}

/// A JSONata sequence: nothing (`undefined`), one value, or several.
type Seq = Vec<Value>;

fn one(seq: Seq) -> Option<Value> {
    match seq.len() {
        0 => None,
        1 => seq.into_iter().next(),
        _ => Some(Value::Array(seq)),
    }
}

fn flat_push(out: &mut Seq, v: Value) {
    match v {
        Value::Array(a) => out.extend(a),
        other => out.push(other),
    }
}

fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => a.iter().any(truthy),
        Value::Object(o) => !o.is_empty(),
        other => super::eval::as_f64(other).is_some_and(|f| f != 0.0),
    }
}

fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Int(_) | Value::Float(_) => super::eval::as_f64(v),
        _ => None,
    }
}

fn equal(a: &Value, b: &Value) -> bool {
    match (number(a), number(b)) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

/// JSONata's `$string` of a value.
fn string(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => String::from_utf8_lossy(&crate::value::json::to_vec(other)).into_owned(),
    }
}

struct Eval<'r> {
    root: &'r Value,
}

impl Eval<'_> {
    fn eval(&self, n: &Node, ctx: &Value) -> Result<Seq, SqlError> {
        Ok(match n {
            Node::Lit(v) => vec![v.clone()],
            Node::Context => vec![ctx.clone()],
            Node::Root => vec![self.root.clone()],
            Node::Field(_) | Node::Wildcard => {
                let mut out = Vec::new();
                self.step_value(n, ctx, &mut out);
                out
            }
            Node::Path(steps) => self.path(steps, ctx)?,
            Node::Array(items) => {
                let mut out = Vec::new();
                for i in items {
                    let r = self.eval(i, ctx)?;
                    if matches!(i, Node::Array(_)) || r.len() == 1 {
                        out.extend(r);
                    } else {
                        r.into_iter().for_each(|v| flat_push(&mut out, v));
                    }
                }
                vec![Value::Array(out)]
            }
            Node::Object(pairs) => vec![self.object(pairs, ctx)?],
            Node::Neg(e) => match one(self.eval(e, ctx)?) {
                None => Vec::new(),
                Some(v) => {
                    vec![super::eval::num(-number(&v).ok_or_else(|| {
                        SqlError::bad("SEARCH_JSON: '-' needs a number")
                    })?)]
                }
            },
            Node::Binary(op, l, r) => self.binary(op, l, r, ctx)?,
            Node::Call(f, args) => self.call(f, args, ctx)?,
        })
    }

    fn object(&self, pairs: &[(Node, Node)], ctx: &Value) -> Result<Value, SqlError> {
        let mut o = Object::new();
        for (k, v) in pairs {
            let key = match one(self.eval(k, ctx)?) {
                Some(Value::String(s)) => s,
                _ => return Err(SqlError::bad("SEARCH_JSON: an object key must be text")),
            };
            if let Some(v) = one(self.eval(v, ctx)?) {
                o.insert(key.as_str(), v);
            }
        }
        Ok(Value::Object(o))
    }

    /// A field or `*` applied to one value: arrays are looked into, results flattened.
    fn step_value(&self, n: &Node, v: &Value, out: &mut Seq) {
        match (n, v) {
            (_, Value::Array(a)) if matches!(n, Node::Wildcard) => {
                a.iter().cloned().for_each(|x| flat_push(out, x))
            }
            (_, Value::Array(a)) => a.iter().for_each(|x| self.step_value(n, x, out)),
            (Node::Field(f), Value::Object(o)) => {
                if let Some(x) = o.get(f) {
                    flat_push(out, x.clone());
                }
            }
            (Node::Wildcard, Value::Object(o)) => {
                o.iter().for_each(|(_, x)| flat_push(out, x.clone()))
            }
            _ => {}
        }
    }

    fn path(&self, steps: &[(Node, Vec<Node>)], ctx: &Value) -> Result<Seq, SqlError> {
        // JSONata 1.8 applies a first `*` to an array as a whole (its items), and a field
        // looks into arrays anyway.
        let mut seq: Seq = vec![ctx.clone()];
        for (i, (node, preds)) in steps.iter().enumerate() {
            let mut next = Vec::new();
            for item in &seq {
                match node {
                    Node::Field(_) | Node::Wildcard => self.step_value(node, item, &mut next),
                    Node::Object(pairs) if i > 0 => next.push(self.object(pairs, item)?),
                    other => self
                        .eval(other, item)?
                        .into_iter()
                        .for_each(|v| flat_push(&mut next, v)),
                }
            }
            for p in preds {
                next = self.filter(next, p)?;
            }
            seq = next;
        }
        Ok(seq)
    }

    fn filter(&self, seq: Seq, pred: &Node) -> Result<Seq, SqlError> {
        let n = seq.len() as f64;
        let mut out = Vec::new();
        for (i, item) in seq.iter().enumerate() {
            let r = one(self.eval(pred, item)?);
            let keep = match r.as_ref().and_then(number) {
                Some(k) => {
                    let k = k.floor();
                    let k = if k < 0.0 { n + k } else { k };
                    k == i as f64
                }
                None => r.as_ref().is_some_and(truthy),
            };
            if keep {
                out.push(item.clone());
            }
        }
        Ok(out)
    }

    fn binary(&self, op: &str, l: &Node, r: &Node, ctx: &Value) -> Result<Seq, SqlError> {
        let lv = one(self.eval(l, ctx)?);
        if op == "and" || op == "or" {
            let a = lv.as_ref().is_some_and(truthy);
            let b = || -> Result<bool, SqlError> {
                Ok(one(self.eval(r, ctx)?).as_ref().is_some_and(truthy))
            };
            return Ok(vec![Value::Bool(if op == "and" {
                a && b()?
            } else {
                a || b()?
            })]);
        }
        let rv = one(self.eval(r, ctx)?);
        let (Some(a), Some(b)) = (lv, rv) else {
            return Ok(match op {
                "=" | "!=" | "<" | "<=" | ">" | ">=" | "in" => vec![Value::Bool(false)],
                "&" => Vec::new(),
                _ => Vec::new(),
            });
        };
        Ok(vec![match op {
            "=" => Value::Bool(equal(&a, &b)),
            "!=" => Value::Bool(!equal(&a, &b)),
            "in" => Value::Bool(match &b {
                Value::Array(items) => items.iter().any(|x| equal(&a, x)),
                other => equal(&a, other),
            }),
            "&" => Value::String(string(&a) + &string(&b)),
            "<" | "<=" | ">" | ">=" => {
                let ord = match (number(&a), number(&b), &a, &b) {
                    (Some(x), Some(y), _, _) => x.partial_cmp(&y),
                    (_, _, Value::String(x), Value::String(y)) => Some(x.cmp(y)),
                    _ => {
                        return Err(SqlError::bad(format!(
                            "SEARCH_JSON: '{op}' compares two numbers or two strings"
                        )))
                    }
                };
                use std::cmp::Ordering::*;
                Value::Bool(matches!(
                    (op, ord),
                    ("<", Some(Less))
                        | ("<=", Some(Less | Equal))
                        | (">", Some(Greater))
                        | (">=", Some(Greater | Equal))
                ))
            }
            _ => {
                let (Some(x), Some(y)) = (number(&a), number(&b)) else {
                    return Err(SqlError::bad(format!(
                        "SEARCH_JSON: '{op}' needs two numbers"
                    )));
                };
                super::eval::num(match op {
                    "+" => x + y,
                    "-" => x - y,
                    "*" => x * y,
                    "/" => x / y,
                    _ => x % y,
                })
            }
        }])
    }

    fn call(&self, f: &str, args: &[Node], ctx: &Value) -> Result<Seq, SqlError> {
        let arg = |i: usize| -> Result<Option<Value>, SqlError> {
            match args.get(i) {
                Some(a) => Ok(one(self.eval(a, ctx)?)),
                None => Ok(None),
            }
        };
        let items = |v: Option<Value>| -> Vec<Value> {
            match v {
                None => Vec::new(),
                Some(Value::Array(a)) => a,
                Some(other) => vec![other],
            }
        };
        let numbers = |v: Option<Value>| -> Result<Vec<f64>, SqlError> {
            items(v)
                .iter()
                .map(|x| {
                    number(x)
                        .ok_or_else(|| SqlError::bad(format!("SEARCH_JSON: ${f} needs numbers")))
                })
                .collect()
        };
        let num = super::eval::num;
        Ok(match f {
            "count" => vec![num(items(arg(0)?).len() as f64)],
            "sum" => vec![num(numbers(arg(0)?)?.iter().sum())],
            "max" | "min" | "average" => {
                let ns = numbers(arg(0)?)?;
                if ns.is_empty() {
                    return Ok(Vec::new());
                }
                vec![num(match f {
                    "max" => ns.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                    "min" => ns.iter().copied().fold(f64::INFINITY, f64::min),
                    _ => ns.iter().sum::<f64>() / ns.len() as f64,
                })]
            }
            "string" => arg(0)?
                .map(|v| Value::String(string(&v)))
                .into_iter()
                .collect(),
            "length" => match arg(0)? {
                Some(Value::String(s)) => vec![num(s.encode_utf16().count() as f64)],
                None => Vec::new(),
                Some(_) => return Err(SqlError::bad("SEARCH_JSON: $length needs text")),
            },
            "lowercase" | "uppercase" => match arg(0)? {
                Some(Value::String(s)) => vec![Value::String(if f == "lowercase" {
                    s.to_lowercase()
                } else {
                    s.to_uppercase()
                })],
                _ => Vec::new(),
            },
            "exists" => vec![Value::Bool(arg(0)?.is_some())],
            "not" => arg(0)?
                .map(|v| Value::Bool(!truthy(&v)))
                .into_iter()
                .collect(),
            "boolean" => arg(0)?
                .map(|v| Value::Bool(truthy(&v)))
                .into_iter()
                .collect(),
            "number" => match arg(0)? {
                Some(Value::String(s)) => vec![num(s
                    .trim()
                    .parse::<f64>()
                    .map_err(|_| SqlError::bad(format!("SEARCH_JSON: '{s}' is not a number")))?)],
                Some(v) if number(&v).is_some() => vec![v],
                Some(Value::Bool(b)) => vec![num(f64::from(u8::from(b)))],
                _ => Vec::new(),
            },
            "contains" => match (arg(0)?, arg(1)?) {
                (Some(Value::String(s)), Some(Value::String(p))) => {
                    vec![Value::Bool(s.contains(p.as_str()))]
                }
                _ => Vec::new(),
            },
            "join" => {
                let sep = match arg(1)? {
                    Some(Value::String(s)) => s,
                    _ => String::new(),
                };
                let parts: Vec<String> = items(arg(0)?).iter().map(string).collect();
                vec![Value::String(parts.join(&sep))]
            }
            other => return Err(unsupported(format!("the function ${other}"))),
        })
    }
}

/// HarperDB's `SEARCH_JSON(expression, value)`.
pub fn search_json(expression: &Value, data: &Value) -> Result<Value, SqlError> {
    let Value::String(src) = expression else {
        return Err(SqlError::bad(
            "search json expression must be a non-empty string",
        ));
    };
    if src.is_empty() {
        return Err(SqlError::bad(
            "search json expression must be a non-empty string",
        ));
    }
    let node = parse(src)?;
    let e = Eval { root: data };
    Ok(one(e.eval(&node, data)?).unwrap_or(Value::Null))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::json;

    fn check(expr: &str, data: &str, expected: &str) {
        let data = json::parse(data.as_bytes()).expect("data");
        let got = search_json(&Value::String(expr.into()), &data).expect(expr);
        assert_eq!(
            String::from_utf8(json::to_vec(&got)).expect("utf-8"),
            expected,
            "{expr}"
        );
    }

    /// Answers of jsonata 1.8.7 (the version HarperDB 4.7 uses) for the same input.
    #[test]
    fn answers_as_jsonata() {
        check("*", r#"[{"a":1},{"b":2}]"#, r#"[{"a":1},{"b":2}]"#);
        check("*", r#"{"a":[1,2],"b":3}"#, "[1,2,3]");
        check("a", r#"[{"a":1},{"a":[2,3]}]"#, "[1,2,3]");
        check(
            "$[a>1]",
            r#"[{"a":1},{"a":2},{"a":3}]"#,
            r#"[{"a":2},{"a":3}]"#,
        );
        check("$[0]", "[5,6]", "5");
        check("$[a>1].a", r#"[{"a":1},{"a":2},{"a":3}]"#, "[2,3]");
        check("$count(*)", "[1,2,3]", "3");
        check("a.b", r#"{"a":[{"b":1},{"b":2}]}"#, "[1,2]");
        check("$[a=9]", r#"[{"a":1}]"#, "null");
        check("$sum($.a)", r#"[{"a":1},{"a":2}]"#, "3");
        check(r#""Harper" in *"#, r#"["Harper","Penny"]"#, "true");
        check(r#""Harper" in *"#, r#"["Penny"]"#, "false");
        check(
            r#"$[name="Harper"]"#,
            r#"{"name":"Harper"}"#,
            r#"{"name":"Harper"}"#,
        );
        let cast = r#"[{"name":"Robert Downey Jr.","character":"Tony"},{"name":"Chris Evans","character":"Cap"},{"name":"X","character":"Y"}]"#;
        check(
            r#"$[name in ["Robert Downey Jr.", "Chris Evans"]].{"actor": name, "character": character}"#,
            cast,
            r#"[{"actor":"Robert Downey Jr.","character":"Tony"},{"actor":"Chris Evans","character":"Cap"}]"#,
        );
        check(
            r#"$count($[name in ["Robert Downey Jr.", "Chris Evans"]])"#,
            cast,
            "2",
        );
        check(
            r#"$[name in ["Robert Downey Jr."]].{"actor": name}"#,
            cast,
            r#"{"actor":"Robert Downey Jr."}"#,
        );
        check(r#"$count($[name in ["q"]])"#, r#"[{"name":"z"}]"#, "0");
    }

    #[test]
    fn refusals() {
        for bad in ["$[", "a ~> b", "$foo", "$nosuch(1)", "(((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((1)))))))))))))))))))))))))))))))))))))))))))))))))))))))))))))))))))"] {
            assert!(search_json(&Value::String(bad.into()), &Value::Null).is_err(), "{bad}");
        }
    }
}
