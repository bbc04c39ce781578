//! SELECT: tables read in one read transaction each (by primary key when the WHERE names keys,
//! else whole, up to `TABLE_ROWS_MAX`), joined (hash join on `a.x = b.y`, nested loop
//! otherwise, up to `JOIN_ROWS_MAX` rows), filtered, grouped, projected, sorted and cut.

use std::collections::HashMap;

use sqlparser::ast::{
    self, Expr, GroupByExpr, JoinConstraint, JoinOperator, Query, SelectItem, SetExpr,
};

use super::eval::{self, column_ref, eval, order, truthy, Ctx, Row, Scope, AGGREGATES};
use super::parse::{table_factor, TableRef};
use super::{access, SqlError, JOIN_ROWS_MAX};
use crate::resource::{Caller, Resources};
use crate::value::{Object, Value};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Inner,
    Left,
    Right,
    Full,
}

/// One joined table after the first: how, and on what.
struct Join<'q> {
    kind: Kind,
    on: Option<&'q Expr>,
}

fn from_clause(from: &[ast::TableWithJoins]) -> Result<(Vec<TableRef>, Vec<Join<'_>>), SqlError> {
    let mut tables = Vec::new();
    let mut joins = Vec::new();
    for (n, twj) in from.iter().enumerate() {
        tables.push(table_factor(&twj.relation)?);
        if n > 0 {
            joins.push(Join {
                kind: Kind::Inner,
                on: None,
            });
        }
        for j in &twj.joins {
            tables.push(table_factor(&j.relation)?);
            let (kind, c) = match &j.join_operator {
                JoinOperator::Inner(c) => (Kind::Inner, Some(c)),
                JoinOperator::LeftOuter(c) => (Kind::Left, Some(c)),
                JoinOperator::RightOuter(c) => (Kind::Right, Some(c)),
                JoinOperator::FullOuter(c) => (Kind::Full, Some(c)),
                JoinOperator::CrossJoin => (Kind::Inner, None),
                _ => return Err(SqlError::unsupported("this kind of JOIN")),
            };
            let on = match c {
                Some(JoinConstraint::On(e)) => Some(e),
                Some(JoinConstraint::None) | None => None,
                Some(_) => return Err(SqlError::unsupported("JOIN … USING / NATURAL JOIN")),
            };
            joins.push(Join { kind, on });
        }
    }
    Ok((tables, joins))
}

/// A joined table's records by join key, and those whose values only compare loosely (booleans,
/// arrays, objects): candidates for every probe.
struct KeyIndex {
    exact: HashMap<Vec<u8>, Vec<usize>>,
    loose: Vec<usize>,
}

/// How a value joins: not at all (NULL), by a key [`compare`](eval::compare) agrees with (numbers
/// and numeric text by number, other text by text), or loosely (checked against every record).
enum Key {
    Null,
    Exact(Vec<u8>),
    Loose,
}

fn join_key(v: &Value) -> Key {
    match v {
        Value::Null => Key::Null,
        Value::Int(_) | Value::Float(_) | Value::Date(_) | Value::String(_) => {
            match (eval::as_f64(v), v) {
                (Some(f), _) => Key::Exact(format!("n{f}").into_bytes()),
                (None, Value::String(s)) => Key::Exact(format!("s{s}").into_bytes()),
                _ => Key::Loose,
            }
        }
        _ => Key::Loose,
    }
}

/// For `ON a.x = b.y` with one side on table `j` and the other on earlier tables: the
/// (earlier side, table-j attribute).
fn hash_side<'q>(on: &'q Expr, scope: &Scope<'_>, j: usize) -> Option<(&'q Expr, &'q str)> {
    let Expr::BinaryOp {
        left,
        op: ast::BinaryOperator::Eq,
        right,
    } = on
    else {
        return None;
    };
    let ctx = Ctx {
        scope,
        row: &[],
        group: None,
        output: None,
    };
    let side = |e: &'q Expr| match column_ref(e) {
        Some((Some(q), name)) => ctx.table_index(q).ok().map(|i| (i, name)),
        _ => None,
    };
    match (side(left), side(right)) {
        (Some((a, _)), Some((b, name))) if a < j && b == j => Some((left, name)),
        (Some((a, name)), Some((b, _))) if b < j && a == j => Some((right, name)),
        _ => None,
    }
}

fn join_rows(scope: &Scope<'_>, joins: &[Join<'_>]) -> Result<Vec<Row>, SqlError> {
    let Some(first) = scope.data.first() else {
        return Ok(vec![Vec::new()]);
    };
    let mut rows: Vec<Row> = (0..first.len()).map(|i| vec![Some(i)]).collect();
    for (n, join) in joins.iter().enumerate() {
        let j = n + 1;
        let records = &scope.data[j];
        let index: Option<(&Expr, KeyIndex)> =
            join.on
                .and_then(|on| hash_side(on, scope, j))
                .map(|(probe, attr)| {
                    let mut index = KeyIndex {
                        exact: HashMap::new(),
                        loose: Vec::new(),
                    };
                    for (i, r) in records.iter().enumerate() {
                        match r.get(attr).map_or(Key::Null, join_key) {
                            Key::Null => {}
                            Key::Exact(k) => index.exact.entry(k).or_default().push(i),
                            Key::Loose => index.loose.push(i),
                        }
                    }
                    (probe, index)
                });
        let mut matched = vec![false; records.len()];
        let mut next: Vec<Row> = Vec::new();
        let all: Vec<usize> = (0..records.len()).collect();
        for row in rows {
            let mut candidate = row.clone();
            candidate.push(None);
            let picked: Vec<usize>;
            let pool: &[usize] = match &index {
                Some((probe, index)) => {
                    let ctx = Ctx {
                        scope,
                        row: &candidate,
                        group: None,
                        output: None,
                    };
                    match join_key(&eval(probe, &ctx)?) {
                        Key::Null => &[],
                        Key::Loose => &all,
                        Key::Exact(k) => {
                            let hits = index.exact.get(&k).map_or(&[][..], Vec::as_slice);
                            if index.loose.is_empty() {
                                hits
                            } else {
                                picked = hits.iter().chain(&index.loose).copied().collect();
                                &picked
                            }
                        }
                    }
                }
                None => &all,
            };
            let mut any = false;
            for &i in pool {
                candidate[j] = Some(i);
                let ctx = Ctx {
                    scope,
                    row: &candidate,
                    group: None,
                    output: None,
                };
                if join
                    .on
                    .map_or(Ok(true), |on| eval(on, &ctx).map(|v| truthy(&v)))?
                {
                    any = true;
                    matched[i] = true;
                    next.push(candidate.clone());
                    if next.len() > JOIN_ROWS_MAX {
                        return Err(SqlError::bad(format!(
                            "the join produces more than {JOIN_ROWS_MAX} rows; narrow it"
                        )));
                    }
                }
            }
            if !any && matches!(join.kind, Kind::Left | Kind::Full) {
                candidate[j] = None;
                next.push(candidate);
            }
        }
        if matches!(join.kind, Kind::Right | Kind::Full) {
            for (i, _) in matched.iter().enumerate().filter(|(_, m)| !**m) {
                let mut row: Row = vec![None; j];
                row.push(Some(i));
                next.push(row);
            }
        }
        rows = next;
    }
    Ok(rows)
}

/// Whether the expression calls an aggregate.
fn has_aggregate(e: &Expr) -> bool {
    ast::visit_expressions(e, |x| match x {
        Expr::Function(f)
            if AGGREGATES.contains(&f.name.to_string().to_ascii_uppercase().as_str()) =>
        {
            std::ops::ControlFlow::Break(())
        }
        _ => std::ops::ControlFlow::Continue(()),
    })
    .is_break()
}

/// The output name of an unaliased expression: a column's name, else its text (aggregates in
/// upper case, as HarperDB names them). In a SELECT with FROM, HarperDB names a call's text
/// arguments in double quotes (`geoLength(geo_line,"miles")`), without FROM in single quotes.
fn expr_name(e: &Expr, from: bool) -> String {
    if let Some((_, name)) = column_ref(e) {
        return name.to_string();
    }
    if let Expr::Function(f) = e {
        let upper = f.name.to_string().to_ascii_uppercase();
        if AGGREGATES.contains(&upper.as_str()) {
            let text = e.to_string();
            return format!("{upper}{}", &text[f.name.to_string().len()..]);
        }
        // AlaSQL's text of a call: arguments joined by "," without spaces.
        if let (ast::FunctionArguments::List(_), Ok((args, false, false))) =
            (&f.args, eval::call_args(f))
        {
            let args: Vec<String> = args
                .iter()
                .map(|a| match a {
                    Expr::Value(ast::Value::SingleQuotedString(s)) if from => format!("\"{s}\""),
                    other => other.to_string(),
                })
                .collect();
            return format!("{}({})", f.name, args.join(","));
        }
    }
    e.to_string()
}

/// Output keys with where each came from (table, attribute), to fold `*` into named columns
/// and number clashing names (`id`, `id1`) as HarperDB does; an attribute selected under an
/// alias is left out of `*`.
struct Projected {
    out: Object,
    origins: Vec<Option<(usize, String)>>,
    aliased: Vec<(usize, String)>,
}

impl Projected {
    fn put(&mut self, name: String, origin: Option<(usize, String)>, v: Value) {
        if origin.is_some() && self.origins.contains(&origin) {
            return;
        }
        let mut key = name.clone();
        let mut n = 1;
        while self.out.get(&key).is_some() {
            key = format!("{name}{n}");
            n += 1;
        }
        self.out.insert(key, v);
        self.origins.push(origin);
    }

    /// `t.*` (`qualified`) shows the stamps once; a bare `*` numbers them like other clashes.
    fn star(&mut self, ctx: &Ctx<'_>, i: usize, columns: &[String], qualified: bool) {
        for name in columns {
            if self.aliased.iter().any(|(t, n)| *t == i && n == name) {
                continue;
            }
            let stamp = matches!(name.as_str(), "__createdtime__" | "__updatedtime__");
            if qualified && stamp && self.out.get(name).is_some() {
                continue;
            }
            let v = ctx.record(i).and_then(|r| r.get(name)).cloned();
            self.put(
                name.clone(),
                Some((i, name.clone())),
                v.unwrap_or(Value::Null),
            );
        }
    }
}

/// The table and attribute a plain column reference reads in this row.
fn origin(e: &Expr, ctx: &Ctx<'_>, tables: usize) -> Result<Option<(usize, String)>, SqlError> {
    Ok(match column_ref(e) {
        Some((Some(q), name)) => Some((ctx.table_index(q)?, name.to_string())),
        Some((None, name)) => (0..tables)
            .find(|i| ctx.record(*i).is_some_and(|r| r.get(name).is_some()))
            .map(|i| (i, name.to_string())),
        None => None,
    })
}

/// Whether a projected expression has a value HarperDB shows: it leaves out what is undefined
/// (an attribute the table does not have, a function of nothing); an attribute of the table
/// the record lacks is null.
fn present(e: &Expr, v: &Value, ctx: &Ctx<'_>, columns: &[Vec<String>]) -> Result<bool, SqlError> {
    Ok(match column_ref(e) {
        Some((q, name)) => {
            let tables: Vec<usize> = match q {
                Some(q) => vec![ctx.table_index(q)?],
                None => (0..columns.len()).collect(),
            };
            ctx.column(q, name)?.is_some()
                || tables.iter().any(|i| columns[*i].iter().any(|c| c == name))
        }
        None => !matches!(v, Value::Null) || matches!(e, Expr::Value(_)),
    })
}

fn project(
    items: &[SelectItem],
    ctx: &Ctx<'_>,
    columns: &[Vec<String>],
) -> Result<Object, SqlError> {
    let mut p = Projected {
        out: Object::new(),
        origins: Vec::new(),
        aliased: Vec::new(),
    };
    for item in items {
        if let SelectItem::ExprWithAlias { expr, .. } = item {
            p.aliased.extend(origin(expr, ctx, columns.len())?);
        }
    }
    for item in items {
        match item {
            SelectItem::Wildcard(_) => {
                for (i, cols) in columns.iter().enumerate() {
                    p.star(ctx, i, cols, false);
                }
            }
            SelectItem::QualifiedWildcard(name, _) => {
                let q = name.0.last().map(|i| i.value.as_str()).unwrap_or_default();
                let i = ctx.table_index(q)?;
                p.star(ctx, i, &columns[i], true);
            }
            SelectItem::UnnamedExpr(e) => {
                let v = eval(e, ctx)?;
                if present(e, &v, ctx, columns)? {
                    p.put(
                        expr_name(e, !columns.is_empty()),
                        origin(e, ctx, columns.len())?,
                        v,
                    );
                }
            }
            SelectItem::ExprWithAlias { expr, alias } => {
                let v = eval(expr, ctx)?;
                if present(expr, &v, ctx, columns)? {
                    p.put(alias.value.clone(), None, v);
                }
            }
        }
    }
    Ok(p.out)
}

fn group_exprs(s: &ast::Select) -> Result<&[Expr], SqlError> {
    match &s.group_by {
        GroupByExpr::Expressions(e, m) if m.is_empty() => Ok(e),
        _ => Err(SqlError::unsupported("GROUP BY ALL / WITH modifiers")),
    }
}

/// One output row with its ORDER BY keys.
type Out = (Vec<Value>, Object);

fn sort_keys(q: &Query, ctx: &Ctx<'_>) -> Result<Vec<Value>, SqlError> {
    let Some(ob) = &q.order_by else {
        return Ok(Vec::new());
    };
    ob.exprs.iter().map(|o| eval(&o.expr, ctx)).collect()
}

/// Runs a SELECT and returns its rows.
pub fn run(
    resources: &Resources,
    caller: &Caller,
    q: &Query,
    now_ms: f64,
) -> Result<Vec<Value>, SqlError> {
    let s = select_of(q)?;
    let (tables, _) = from_clause(&s.from)?;
    access::check_select(resources, caller, &tables, q)?;
    let mut data = Vec::with_capacity(tables.len());
    let mut columns = Vec::with_capacity(tables.len());
    for t in &tables {
        let own = match (&s.selection, tables.len()) {
            (Some(w), 1) => Some(w.clone()),
            (Some(w), _) => conjuncts_of(w, t),
            (None, _) => None,
        };
        let (records, cols) = access::load(resources, caller, t, own.as_ref())?;
        data.push(records);
        columns.push(cols);
    }
    let trimmed = access::trimmed(resources, caller, &tables);
    compute(
        q,
        &Loaded {
            tables,
            data,
            columns,
        },
        trimmed,
        now_ms,
    )
}

/// The WHERE's top-level AND conjuncts that name columns of table `t` only (each qualified by
/// its alias or name), for loading `t` in a join: `load` uses them only to read the records a
/// primary-key or indexed equality picks, and such an equality is false on a joined row whose `t`
/// side is missing, so no row the whole WHERE keeps is lost (the whole WHERE still runs on the
/// joined rows).
fn conjuncts_of(filter: &Expr, t: &TableRef) -> Option<Expr> {
    let mut parts = Vec::new();
    let mut stack = vec![filter];
    while let Some(e) = stack.pop() {
        match e {
            Expr::Nested(inner) => stack.push(inner),
            Expr::BinaryOp {
                left,
                op: ast::BinaryOperator::And,
                right,
            } => {
                stack.push(right);
                stack.push(left);
            }
            other => {
                let mut own = true;
                let mut any = false;
                let _ = ast::visit_expressions(other, |x| {
                    if let Some((q, _)) = column_ref(x) {
                        any = true;
                        own &= q.is_some_and(|q| q == t.alias || q == t.table);
                    }
                    std::ops::ControlFlow::<()>::Continue(())
                });
                if own && any {
                    parts.push(other.clone());
                }
            }
        }
    }
    parts.into_iter().reduce(|a, b| Expr::BinaryOp {
        left: Box::new(a),
        op: ast::BinaryOperator::And,
        right: Box::new(b),
    })
}

fn select_of(q: &Query) -> Result<&ast::Select, SqlError> {
    if q.with.is_some() {
        return Err(SqlError::unsupported("WITH"));
    }
    match q.body.as_ref() {
        SetExpr::Select(s) => Ok(s),
        _ => Err(SqlError::unsupported("UNION and other set operations")),
    }
}

/// The tables of a SELECT with their records and what `*` stands for in each.
pub struct Loaded {
    pub tables: Vec<TableRef>,
    pub data: Vec<Vec<Object>>,
    pub columns: Vec<Vec<String>>,
}

/// Computes a SELECT over loaded tables (`trimmed`: the caller's reads are trimmed to some
/// attributes, so rows left with nothing are dropped, as HarperDB does).
pub fn compute(
    q: &Query,
    loaded: &Loaded,
    trimmed: bool,
    now_ms: f64,
) -> Result<Vec<Value>, SqlError> {
    let s = select_of(q)?;
    let (_, joins) = from_clause(&s.from)?;
    let (tables, data, columns) = (&loaded.tables, &loaded.data, &loaded.columns);
    let scope = Scope {
        tables,
        data,
        now_ms,
    };
    let mut rows = join_rows(&scope, &joins)?;
    if let Some(w) = &s.selection {
        let mut kept = Vec::with_capacity(rows.len());
        for row in rows {
            let ctx = Ctx {
                scope: &scope,
                row: &row,
                group: None,
                output: None,
            };
            if truthy(&eval(w, &ctx)?) {
                kept.push(row);
            }
        }
        rows = kept;
    }
    let groups = group_exprs(s)?;
    let grouped = !groups.is_empty()
        || s.having.as_ref().is_some_and(has_aggregate)
        || s.projection.iter().any(|i| match i {
            SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => {
                has_aggregate(e)
            }
            _ => false,
        });
    let mut out = if grouped {
        grouped_rows(&scope, q, s, groups, &rows, columns)?
    } else {
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let ctx = Ctx {
                scope: &scope,
                row,
                group: None,
                output: None,
            };
            let o = project(&s.projection, &ctx, columns)?;
            let keys = sort_keys(
                q,
                &Ctx {
                    output: Some(&o),
                    ..ctx
                },
            )?;
            out.push((keys, o));
        }
        out
    };
    // HarperDB leaves out rows of which the role may read nothing.
    if trimmed {
        out.retain(|(_, o)| !o.is_empty());
    }
    finish(q, s, &scope, &mut out)?;
    Ok(out.into_iter().map(|(_, o)| Value::Object(o)).collect())
}

fn grouped_rows(
    scope: &Scope<'_>,
    q: &Query,
    s: &ast::Select,
    groups: &[Expr],
    rows: &[Row],
    columns: &[Vec<String>],
) -> Result<Vec<Out>, SqlError> {
    let mut index: HashMap<Vec<u8>, usize> = HashMap::new();
    let mut members: Vec<Vec<&Row>> = Vec::new();
    for row in rows {
        let ctx = Ctx {
            scope,
            row,
            group: None,
            output: None,
        };
        let mut key = Vec::with_capacity(groups.len());
        for g in groups {
            key.push(match eval(g, &ctx)? {
                Value::Float(f) => eval::num(f),
                v => v,
            });
        }
        let k = crate::value::json::to_vec(&Value::Array(key));
        let at = *index.entry(k).or_insert_with(|| {
            members.push(Vec::new());
            members.len() - 1
        });
        members[at].push(row);
    }
    if members.is_empty() && groups.is_empty() {
        members.push(Vec::new());
    }
    let empty: Row = vec![None; scope.tables.len()];
    let mut out = Vec::with_capacity(members.len());
    for group in &members {
        let ctx = Ctx {
            scope,
            row: group.first().map_or(&empty, |r| r),
            group: Some(group),
            output: None,
        };
        let o = project(&s.projection, &ctx, columns)?;
        let ctx = Ctx {
            output: Some(&o),
            ..ctx
        };
        if let Some(h) = &s.having {
            if !truthy(&eval(h, &ctx)?) {
                continue;
            }
        }
        let keys = sort_keys(q, &ctx)?;
        out.push((keys, o));
    }
    Ok(out)
}

/// DISTINCT, ORDER BY, OFFSET and LIMIT.
fn finish(
    q: &Query,
    s: &ast::Select,
    scope: &Scope<'_>,
    out: &mut Vec<Out>,
) -> Result<(), SqlError> {
    if s.distinct.is_some() {
        let mut seen = std::collections::HashSet::new();
        out.retain(|(_, o)| seen.insert(crate::value::json::to_vec(&Value::Object(o.clone()))));
    }
    if let Some(ob) = &q.order_by {
        let desc: Vec<bool> = ob.exprs.iter().map(|o| o.asc == Some(false)).collect();
        out.sort_by(|(a, _), (b, _)| {
            for ((x, y), d) in a.iter().zip(b).zip(&desc) {
                let o = order(x, y);
                if o != std::cmp::Ordering::Equal {
                    return if *d { o.reverse() } else { o };
                }
            }
            std::cmp::Ordering::Equal
        });
    }
    let ctx = Ctx {
        scope,
        row: &[],
        group: None,
        output: None,
    };
    let count = |e: &Expr| -> Result<usize, SqlError> {
        let v = eval(e, &ctx)?;
        eval::as_f64(&v)
            .filter(|f| *f >= 0.0)
            .map(|f| f as usize)
            .ok_or_else(|| SqlError::bad(format!("LIMIT/OFFSET must be a number ≥ 0, not {e}")))
    };
    if let Some(off) = &q.offset {
        let n = count(&off.value)?.min(out.len());
        out.drain(..n);
    }
    if let Some(l) = &q.limit {
        out.truncate(count(l)?);
    }
    // `TOP n` (AlaSQL's) keeps the first n rows, like LIMIT.
    match s.top.as_ref().map(|t| (t.percent, t.quantity.as_ref())) {
        None => {}
        Some((false, Some(ast::TopQuantity::Constant(n)))) => {
            out.truncate(usize::try_from(*n).unwrap_or(usize::MAX))
        }
        Some((false, Some(ast::TopQuantity::Expr(e)))) => out.truncate(count(e)?),
        Some(_) => return Err(SqlError::unsupported("TOP … PERCENT")),
    }
    Ok(())
}
