//! Expression evaluation over one joined row (or a group of rows, for aggregates), with
//! AlaSQL's loose comparisons: numbers and numeric strings compare as numbers, NULL and missing
//! attributes compare as nothing (a WHERE on them is false).

use std::cmp::Ordering;

use sqlparser::ast::{
    BinaryOperator, DuplicateTreatment, Expr, FunctionArg, FunctionArgExpr, FunctionArguments,
    UnaryOperator,
};

use super::functions;
use super::parse::TableRef;
use super::SqlError;
use crate::value::{Object, Value};

/// One joined row: per table of the statement, the index of its record (`None`: outer-join
/// side without a match).
pub type Row = Vec<Option<usize>>;

/// The tables of a statement and their records.
pub struct Scope<'a> {
    pub tables: &'a [TableRef],
    pub data: &'a [Vec<Object>],
    pub now_ms: f64,
}

/// Where an expression is evaluated.
#[derive(Clone, Copy)]
pub struct Ctx<'a> {
    pub scope: &'a Scope<'a>,
    pub row: &'a [Option<usize>],
    /// The rows of the group, for aggregates.
    pub group: Option<&'a [&'a Row]>,
    /// The projected row, whose aliases ORDER BY and HAVING may name.
    pub output: Option<&'a Object>,
}

pub const AGGREGATES: &[&str] = &["COUNT", "SUM", "AVG", "MIN", "MAX"];

impl<'a> Ctx<'a> {
    /// The record of table `i` in this row.
    pub fn record(&self, i: usize) -> Option<&'a Object> {
        let at = (*self.row.get(i)?)?;
        self.scope.data.get(i)?.get(at)
    }

    /// Which table a qualifier names (alias, else table name; case-insensitive like AlaSQL).
    pub fn table_index(&self, qualifier: &str) -> Result<usize, SqlError> {
        let t = self.scope.tables;
        t.iter()
            .position(|t| t.alias == qualifier)
            .or_else(|| {
                t.iter()
                    .position(|t| t.alias.eq_ignore_ascii_case(qualifier))
            })
            .or_else(|| t.iter().position(|t| t.table == qualifier))
            .ok_or_else(|| SqlError::bad(format!("unknown table or alias '{qualifier}'")))
    }

    /// An attribute of the row: `Some(value)` when present (possibly null), `None` when absent.
    pub fn column(&self, qualifier: Option<&str>, name: &str) -> Result<Option<Value>, SqlError> {
        if let Some(q) = qualifier {
            let i = self.table_index(q)?;
            return Ok(self.record(i).and_then(|r| r.get(name)).cloned());
        }
        if let Some(v) = self.output.and_then(|o| o.get(name)) {
            return Ok(Some(v.clone()));
        }
        for i in 0..self.scope.tables.len() {
            if let Some(v) = self.record(i).and_then(|r| r.get(name)) {
                return Ok(Some(v.clone()));
            }
        }
        Ok(None)
    }
}

/// `(qualifier, name)` of a column reference.
pub fn column_ref(e: &Expr) -> Option<(Option<&str>, &str)> {
    match e {
        Expr::Identifier(i) => Some((None, i.value.as_str())),
        Expr::CompoundIdentifier(parts) => match parts.as_slice() {
            [q, n] => Some((Some(q.value.as_str()), n.value.as_str())),
            [_, q, n] => Some((Some(q.value.as_str()), n.value.as_str())),
            _ => None,
        },
        _ => None,
    }
}

/// JS-like truth of a value.
pub fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Int(i) => *i != 0,
        Value::Float(f) | Value::Date(f) => *f != 0.0 && !f.is_nan(),
        Value::String(s) => !s.is_empty(),
        _ => true,
    }
}

pub fn as_f64(v: &Value) -> Option<f64> {
    match v {
        Value::Int(i) => Some(*i as f64),
        Value::Float(f) | Value::Date(f) => Some(*f),
        Value::Bool(b) => Some(f64::from(u8::from(*b))),
        Value::String(s) => s
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|_| !s.trim().is_empty()),
        _ => None,
    }
}

/// A number as JSON shows it: integral values as integers.
pub fn num(f: f64) -> Value {
    if !f.is_finite() {
        Value::Null
    } else if f.fract() == 0.0 && f.abs() < 9.0e15 {
        Value::Int(f as i64)
    } else {
        Value::Float(f)
    }
}

fn is_number(v: &Value) -> bool {
    matches!(v, Value::Int(_) | Value::Float(_) | Value::Date(_))
}

/// Loose SQL comparison; `None` when either side is NULL or the two do not compare.
pub fn compare(a: &Value, b: &Value) -> Option<Ordering> {
    match (a, b) {
        (Value::Null, _) | (_, Value::Null) => None,
        (x, y) if is_number(x) || is_number(y) => as_f64(x)?.partial_cmp(&as_f64(y)?),
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        (Value::Bool(x), Value::Bool(y)) => Some(x.cmp(y)),
        (Value::Bool(x), Value::String(y)) => Some(x.to_string().as_str().cmp(y.as_str())),
        (Value::String(x), Value::Bool(y)) => Some(x.as_str().cmp(y.to_string().as_str())),
        (x, y) => Some(x.cmp_total(y)),
    }
}

/// Total order for ORDER BY: NULL first, then by [`compare`], then by kind.
pub fn order(a: &Value, b: &Value) -> Ordering {
    match (a, b) {
        (Value::Null, Value::Null) => Ordering::Equal,
        (Value::Null, _) => Ordering::Less,
        (_, Value::Null) => Ordering::Greater,
        _ => compare(a, b).unwrap_or_else(|| a.cmp_total(b)),
    }
}

/// A value as text (CONCAT, `+` on strings, LIKE).
pub fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        Value::Int(i) => i.to_string(),
        Value::Float(f) | Value::Date(f) => match num(*f) {
            Value::Int(i) => i.to_string(),
            _ => f.to_string(),
        },
        Value::Bool(b) => b.to_string(),
        other => String::from_utf8_lossy(&crate::value::json::to_vec(other)).into_owned(),
    }
}

/// SQL LIKE with `%` and `_`, case-insensitive as in AlaSQL.
pub fn like(s: &str, pattern: &str) -> bool {
    let s: Vec<char> = s.to_lowercase().chars().collect();
    let p: Vec<char> = pattern.to_lowercase().chars().collect();
    // Iterative wildcard match with backtracking on the last `%`: O(len(s) * len(p)) at worst.
    let (mut i, mut j, mut star, mut mark) = (0usize, 0usize, None, 0usize);
    while i < s.len() {
        if j < p.len() && (p[j] == '_' || p[j] == s[i]) {
            i += 1;
            j += 1;
        } else if j < p.len() && p[j] == '%' {
            star = Some(j);
            mark = i;
            j += 1;
        } else if let Some(k) = star {
            j = k + 1;
            mark += 1;
            i = mark;
        } else {
            return false;
        }
    }
    p[j..].iter().all(|c| *c == '%')
}

fn literal(v: &sqlparser::ast::Value) -> Result<Value, SqlError> {
    use sqlparser::ast::Value as V;
    Ok(match v {
        V::Number(s, _) => match s.parse::<i64>() {
            Ok(i) => Value::Int(i),
            Err(_) => num(s
                .parse::<f64>()
                .map_err(|_| SqlError::bad(format!("bad number {s}")))?),
        },
        V::SingleQuotedString(s) | V::DoubleQuotedString(s) => Value::String(s.clone()),
        V::Boolean(b) => Value::Bool(*b),
        V::Null => Value::Null,
        other => return Err(SqlError::unsupported(format!("the literal {other}"))),
    })
}

fn binary(op: &BinaryOperator, l: Value, r: Value) -> Result<Value, SqlError> {
    use BinaryOperator as B;
    // Two values that do not compare (a number and text that is not one: JavaScript's NaN) are
    // unequal, so only `<>` holds, as in AlaSQL; NULL on either side stays NULL.
    let unordered = !matches!(l, Value::Null) && !matches!(r, Value::Null);
    let cmp = |f: fn(Ordering) -> bool| {
        Ok(match compare(&l, &r) {
            Some(o) => Value::Bool(f(o)),
            None if unordered => Value::Bool(matches!(op, B::NotEq)),
            None => Value::Null,
        })
    };
    let arith = |f: fn(f64, f64) -> f64| match (as_f64(&l), as_f64(&r)) {
        (Some(a), Some(b)) if !matches!(l, Value::Null) && !matches!(r, Value::Null) => {
            num(f(a, b))
        }
        _ => Value::Null,
    };
    match op {
        B::Eq => cmp(|o| o == Ordering::Equal),
        B::NotEq => cmp(|o| o != Ordering::Equal),
        B::Lt => cmp(|o| o == Ordering::Less),
        B::LtEq => cmp(|o| o != Ordering::Greater),
        B::Gt => cmp(|o| o == Ordering::Greater),
        B::GtEq => cmp(|o| o != Ordering::Less),
        B::Plus if matches!(l, Value::String(_)) || matches!(r, Value::String(_)) => {
            Ok(Value::String(text(&l) + &text(&r)))
        }
        B::Plus => Ok(arith(|a, b| a + b)),
        B::Minus => Ok(arith(|a, b| a - b)),
        B::Multiply => Ok(arith(|a, b| a * b)),
        B::Divide => Ok(arith(|a, b| a / b)),
        B::Modulo => Ok(arith(|a, b| a % b)),
        B::StringConcat => Ok(Value::String(text(&l) + &text(&r))),
        other => Err(SqlError::unsupported(format!("the operator {other}"))),
    }
}

/// Evaluates `e` in `ctx`.
pub fn eval(e: &Expr, ctx: &Ctx<'_>) -> Result<Value, SqlError> {
    Ok(match e {
        Expr::Identifier(_) | Expr::CompoundIdentifier(_) => {
            let (q, name) =
                column_ref(e).ok_or_else(|| SqlError::bad(format!("bad column {e}")))?;
            ctx.column(q, name)?.unwrap_or(Value::Null)
        }
        Expr::Value(v) => literal(v)?,
        Expr::Nested(inner) => eval(inner, ctx)?,
        Expr::BinaryOp { left, op, right } => match op {
            BinaryOperator::And => {
                Value::Bool(truthy(&eval(left, ctx)?) && truthy(&eval(right, ctx)?))
            }
            BinaryOperator::Or => {
                Value::Bool(truthy(&eval(left, ctx)?) || truthy(&eval(right, ctx)?))
            }
            _ => binary(op, eval(left, ctx)?, eval(right, ctx)?)?,
        },
        Expr::UnaryOp { op, expr } => {
            let v = eval(expr, ctx)?;
            match op {
                UnaryOperator::Not => Value::Bool(!truthy(&v)),
                UnaryOperator::Minus => as_f64(&v).map_or(Value::Null, |f| num(-f)),
                UnaryOperator::Plus => as_f64(&v).map_or(Value::Null, num),
                other => return Err(SqlError::unsupported(format!("the operator {other}"))),
            }
        }
        Expr::IsNull(x) => Value::Bool(matches!(eval(x, ctx)?, Value::Null)),
        Expr::IsNotNull(x) => Value::Bool(!matches!(eval(x, ctx)?, Value::Null)),
        Expr::IsTrue(x) => Value::Bool(matches!(eval(x, ctx)?, Value::Bool(true))),
        Expr::IsFalse(x) => Value::Bool(matches!(eval(x, ctx)?, Value::Bool(false))),
        Expr::InList {
            expr,
            list,
            negated,
        } => {
            let v = eval(expr, ctx)?;
            let mut found = false;
            for item in list {
                if compare(&v, &eval(item, ctx)?) == Some(Ordering::Equal) {
                    found = true;
                    break;
                }
            }
            Value::Bool(found != *negated && !matches!(v, Value::Null))
        }
        Expr::Between {
            expr,
            negated,
            low,
            high,
        } => {
            let v = eval(expr, ctx)?;
            let inside = compare(&v, &eval(low, ctx)?).is_some_and(|o| o != Ordering::Less)
                && compare(&v, &eval(high, ctx)?).is_some_and(|o| o != Ordering::Greater);
            Value::Bool(inside != *negated && !matches!(v, Value::Null))
        }
        Expr::Like {
            negated,
            expr,
            pattern,
            ..
        }
        | Expr::ILike {
            negated,
            expr,
            pattern,
            ..
        }
        | Expr::RLike {
            negated,
            expr,
            pattern,
            ..
        } => {
            let v = eval(expr, ctx)?;
            if matches!(v, Value::Null) {
                return Ok(Value::Bool(false));
            }
            let (s, p) = (text(&v), text(&eval(pattern, ctx)?));
            let hit = if matches!(e, Expr::RLike { .. }) {
                functions::regexp(&p, &s)?
            } else {
                like(&s, &p)
            };
            Value::Bool(hit != *negated)
        }
        Expr::Case {
            operand,
            conditions,
            results,
            else_result,
        } => {
            let subject = operand.as_ref().map(|o| eval(o, ctx)).transpose()?;
            for (cond, result) in conditions.iter().zip(results) {
                let c = eval(cond, ctx)?;
                let hit = match &subject {
                    Some(s) => compare(s, &c) == Some(Ordering::Equal),
                    None => truthy(&c),
                };
                if hit {
                    return eval(result, ctx);
                }
            }
            match else_result {
                Some(e) => eval(e, ctx)?,
                None => Value::Null,
            }
        }
        Expr::Function(f) => function(f, ctx)?,
        _ => functions::special(e, ctx)?,
    })
}

/// The arguments of a call, as expressions (`*` → none, `distinct` flagged).
pub fn call_args(f: &sqlparser::ast::Function) -> Result<(Vec<&Expr>, bool, bool), SqlError> {
    match &f.args {
        FunctionArguments::None => Ok((Vec::new(), false, false)),
        FunctionArguments::Subquery(_) => Err(SqlError::unsupported("a subquery")),
        FunctionArguments::List(list) => {
            let distinct = matches!(list.duplicate_treatment, Some(DuplicateTreatment::Distinct));
            let mut out = Vec::new();
            let mut star = false;
            for a in &list.args {
                match a {
                    FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => out.push(e),
                    FunctionArg::Unnamed(_) => star = true,
                    _ => return Err(SqlError::unsupported("named function arguments")),
                }
            }
            Ok((out, distinct, star))
        }
    }
}

fn function(f: &sqlparser::ast::Function, ctx: &Ctx<'_>) -> Result<Value, SqlError> {
    let name = f.name.to_string().to_ascii_uppercase();
    let (args, distinct, star) = call_args(f)?;
    if AGGREGATES.contains(&name.as_str()) {
        let group = ctx.group.ok_or_else(|| {
            SqlError::bad(format!(
                "{name}() is an aggregate: use it in SELECT or HAVING"
            ))
        })?;
        let mut values = Vec::with_capacity(group.len());
        for row in group {
            let inner = Ctx {
                row,
                group: None,
                output: None,
                ..*ctx
            };
            match args.first() {
                Some(a) if !star => values.push(eval(a, &inner)?),
                _ => values.push(Value::Bool(true)),
            }
        }
        return Ok(functions::aggregate(&name, values, distinct));
    }
    let mut values = Vec::with_capacity(args.len());
    for a in args {
        values.push(eval(a, ctx)?);
    }
    functions::call(&name, values, ctx.scope.now_ms)
}
