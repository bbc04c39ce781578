//! The search executor: a table, a filter (`query::Expr` from the URL parser or from
//! `conditions_from_json`), sort keys, offset and limit in; matching records out, in order,
//! streamed from the memory map. REST collections and the Operations API's `search_by_*`
//! operations both call it.
//!
//! Two steps, so no conversion or planning happens inside a read transaction:
//!
//! ```text
//! let plan = search::plan(&table, &SearchSpec { filter, sort, offset, limit, allow_undeclared })?;
//! let txn = db.read()?;                       // short: no .await until it is dropped
//! let stats = search::search(&txn, &table, &plan, &mut |key, record| { encode(record); Continue(()) })?;
//! drop(txn);
//! plan.to_string()                            // explain: access path, filter, order
//! ```
//!
//! `plan` converts every condition's value to its attribute's declared type (docs/rest.md "Values";
//! failure → 400), refuses undeclared attributes on schema tables (404) and picks an access path:
//! the primary key (a direct get), the most selective indexed condition of an `And` (equality,
//! then two-sided or starts-with ranges, then one-sided ranges; ranges on one attribute merge) as an
//! index range scan, a union of such paths for an `Or` whose branches all have one (each branch
//! in turn, a record matching an earlier branch skipped), else a full scan in key order. Every
//! candidate is re-checked against the whole filter, which also covers index prefixes cut at 250
//! bytes. Sorting follows an index when there is no filter and the first key is indexed (or the
//! primary key); otherwise matches are sorted in memory, bounded by `SORT_RECORDS_MAX`.
//!
//! A condition through a relationship (`brand.name=Acme`, docs/rest.md; only with [`plan_joined`])
//! is planned on the related table as a search of its own (its index used as for any search).
//! When it drives — the local attribute is the primary key or indexed and nothing better is at
//! hand — or when this table is scanned anyway, that search runs first and its matches become
//! keys of this table's local attribute (`join.rs`), driving this table by key or index points
//! and tested as a membership filter. When another condition drives, each candidate's related
//! records are read and tested instead, so a selective condition never pays for a large related
//! set. `explain` names the mode of each join (`drives`, `collected`, `per record`).
//!
//! It never writes, never awaits and never encodes: the callback gets each record in place.

use std::collections::{BTreeSet, HashSet};
use std::fmt;
use std::ops::{Bound, ControlFlow};
use std::sync::Arc;

use super::join::{Link, Remote, JOIN_DEPTH_MAX, JOIN_KEYS_MAX};
use crate::query::{
    Comparator, Condition, Expr, Filter, Membership, Op, QueryValue, SortKey, Test, ValueHint,
};
use crate::schema::{AttributeDef, FieldType, TableDef};
use crate::store::{Database, ReadTxn, Record, StoreError, Table};
use crate::value::{self, key, Value, ValueView};

/// Matches sorted in memory at most; beyond → 400 (narrow the query or sort by an index).
pub const SORT_RECORDS_MAX: usize = 1_000_000;

/// What to search for. Borrowed from the request; `plan` copies what it keeps.
#[derive(Debug, Clone, Copy, Default)]
pub struct SearchSpec<'q> {
    pub filter: Option<&'q Expr>,
    pub sort: &'q [SortKey],
    /// Matches skipped before the first one returned.
    pub offset: u64,
    /// Matches returned at most; `None` = all.
    pub limit: Option<u64>,
    /// Accept attributes the table does not declare (ops-created tables); off for schema tables,
    /// where they are a 404.
    pub allow_undeclared: bool,
}

/// Why a search cannot run; [`SearchError::status`] is its HTTP status.
#[derive(Debug, Clone, PartialEq)]
pub enum SearchError {
    /// A value that does not convert, a bad `between`, too many matches to sort (400).
    BadRequest(String),
    /// An undeclared attribute, or an unindexed sort without conditions (404).
    NotFound(String),
    /// A query form this build does not serve (relationships where joins are not planned,
    /// sorting by a related attribute, relationships across databases) (501).
    Unsupported(String),
    Store(StoreError),
}

impl SearchError {
    pub fn status(&self) -> u16 {
        match self {
            SearchError::BadRequest(_) => 400,
            SearchError::NotFound(_) => 404,
            SearchError::Unsupported(_) => 501,
            SearchError::Store(_) => 500,
        }
    }
}

impl fmt::Display for SearchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SearchError::BadRequest(m) | SearchError::NotFound(m) | SearchError::Unsupported(m) => {
                f.write_str(m)
            }
            SearchError::Store(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for SearchError {}

impl From<StoreError> for SearchError {
    fn from(e: StoreError) -> Self {
        SearchError::Store(e)
    }
}

/// What one search did: how much of the table it touched.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SearchStats {
    /// Records read from the table (candidates and, after an in-memory sort, the re-reads).
    pub records_visited: u64,
    /// Index entries read.
    pub index_entries: u64,
    /// Records handed to the callback.
    pub returned: u64,
}

/// How candidates are found.
#[derive(Debug, Clone, PartialEq)]
enum Access {
    /// One record by its encoded primary key.
    Key(Vec<u8>),
    /// Index entries of `attribute` in the range; `dedup` when one record can have several
    /// entries in it (array values).
    Index {
        attribute: String,
        lower: Bound<Vec<u8>>,
        upper: Bound<Vec<u8>>,
        descending: bool,
        dedup: bool,
    },
    /// Each branch in turn; a record that matches an earlier branch's filter is skipped there.
    Union(Vec<(Access, Filter)>),
    /// Through the keys join `join` collects: by primary key (`index: None`) or by point lookups
    /// in this table's index on the join's local attribute. Bound to `Keys`/`Points` when the
    /// search runs.
    Join {
        join: usize,
        via: String,
        index: Option<String>,
        dedup: bool,
    },
    /// Records by these encoded primary keys, in key order.
    Keys(Arc<BTreeSet<Vec<u8>>>),
    /// Entries of `attribute`'s index equal to each of `keys`, in index order.
    Points {
        attribute: String,
        keys: Arc<BTreeSet<Vec<u8>>>,
        dedup: bool,
    },
    /// Every record in key order.
    Scan { descending: bool },
}

/// How results are ordered.
#[derive(Debug, Clone, PartialEq)]
enum Order {
    /// As the access path yields them.
    Access,
    /// The access path is an index scan on the first sort key; runs of equal index keys are
    /// sorted by the remaining keys.
    IndexRuns(Vec<(Vec<String>, bool)>),
    /// All matches sorted in memory by these keys, then by primary key.
    Memory(Vec<(Vec<String>, bool)>),
}

/// A search ready to run: converted filter, access path, order and window. `Display` explains it.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    access: Access,
    filter: Filter,
    order: Order,
    offset: u64,
    limit: Option<u64>,
    /// Conditions through relationships, each a search of the related table; `Filter::In` and
    /// `Access::Join` name them by position.
    joins: Vec<Join>,
}

/// One condition through a relationship: the search on the related table whose matches give
/// the keys of this table's local attribute.
#[derive(Debug, Clone, PartialEq)]
struct Join {
    link: Link,
    plan: Plan,
    mode: JoinMode,
}

/// How a join is evaluated, decided with the access path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JoinMode {
    /// It drives the access path: its keys are collected first (more than `JOIN_KEYS_MAX` → 400).
    Drive,
    /// Every record of the table is read anyway (full scan): its keys are collected first, so
    /// each record is tested against a set; more than `JOIN_KEYS_MAX` → tested per record.
    Collect,
    /// Another condition drives: each candidate's related records are read and tested, so
    /// nothing is collected from the related table.
    PerRecord,
}

/// Marks the joins `access` reads from as driving.
fn mark_driving(access: &Access, driving: &mut [bool]) {
    match access {
        Access::Join { join, .. } => {
            if let Some(flag) = driving.get_mut(*join) {
                *flag = true;
            }
        }
        Access::Union(branches) => branches
            .iter()
            .for_each(|(branch, _)| mark_driving(branch, driving)),
        _ => {}
    }
}

impl Plan {
    /// The index the plan scans first, if any (for tests and `explain`).
    pub fn index(&self) -> Option<&str> {
        match &self.access {
            Access::Index { attribute, .. } => Some(attribute),
            Access::Join {
                index: Some(attribute),
                ..
            } => Some(attribute),
            _ => None,
        }
    }

    /// Whether the plan reads the whole table.
    pub fn full_scan(&self) -> bool {
        matches!(self.access, Access::Scan { .. })
    }
}

/// Converts and plans a search (no transaction needed). Conditions through relationships
/// answer 501 here; [`plan_joined`] plans them.
pub fn plan(table: &Table, spec: &SearchSpec<'_>) -> Result<Plan, SearchError> {
    plan_at(None, table, spec, 0)
}

/// Like [`plan`], with conditions through relationships planned against the tables of `db`
/// (`table`'s database).
pub fn plan_joined(
    db: &Database,
    table: &Table,
    spec: &SearchSpec<'_>,
) -> Result<Plan, SearchError> {
    plan_at(Some(db), table, spec, 0)
}

fn plan_at(
    db: Option<&Database>,
    table: &Table,
    spec: &SearchSpec<'_>,
    depth: usize,
) -> Result<Plan, SearchError> {
    let def = &table.def;
    let mut planner = Planner {
        db,
        allow_undeclared: spec.allow_undeclared,
        depth,
        joins: Vec::new(),
    };
    let filter = match spec.filter {
        Some(expr) => planner.convert(def, expr)?,
        None => Filter::And(Vec::new()),
    };
    let has_conditions = !matches!(&filter, Filter::And(c) if c.is_empty());
    let sort: Vec<(Vec<String>, bool)> = spec
        .sort
        .iter()
        .map(|k| (k.path.clone(), k.descending))
        .collect();
    for (path, _) in &sort {
        check_attribute(def, path, spec.allow_undeclared)?;
    }
    let (access, order) = if !has_conditions && !sort.is_empty() {
        let (path, descending) = &sort[0];
        let name = path.first().map(String::as_str).unwrap_or("");
        if path.len() == 1 && def.primary_key.as_deref() == Some(name) {
            (
                Access::Scan {
                    descending: *descending,
                },
                Order::Access,
            )
        } else if path.len() == 1 && table.indexed(name) {
            let access = Access::Index {
                attribute: name.to_string(),
                lower: Bound::Unbounded,
                upper: Bound::Unbounded,
                descending: *descending,
                dedup: may_hold_arrays(def.attribute(name)),
            };
            let rest = sort[1..].to_vec();
            let order = if rest.is_empty() {
                Order::Access
            } else {
                Order::IndexRuns(rest)
            };
            (access, order)
        } else {
            return Err(SearchError::NotFound(format!(
                "{} is not indexed and not combined with any other conditions",
                path.join(".")
            )));
        }
    } else {
        let access = choose_access(table, &filter).unwrap_or(Access::Scan { descending: false });
        let order = if sort.is_empty() {
            Order::Access
        } else {
            Order::Memory(sort)
        };
        (access, order)
    };
    let mut driving = vec![false; planner.joins.len()];
    mark_driving(&access, &mut driving);
    let scan = matches!(access, Access::Scan { .. });
    let mut joins = planner.joins;
    for (join, drives) in joins.iter_mut().zip(driving) {
        join.mode = match (drives, scan) {
            (true, _) => JoinMode::Drive,
            (false, true) => JoinMode::Collect,
            (false, false) => JoinMode::PerRecord,
        };
    }
    Ok(Plan {
        access,
        filter,
        order,
        offset: spec.offset,
        limit: spec.limit,
        joins,
    })
}

/// Runs `plan`, handing each match (encoded primary key, record in place) to `emit` in order,
/// after `offset` and up to `limit`. `emit` returns `Break` to stop early.
pub fn search(
    txn: &ReadTxn<'_>,
    table: &Table,
    plan: &Plan,
    emit: &mut dyn FnMut(&[u8], &Record<'_>) -> ControlFlow<()>,
) -> Result<SearchStats, SearchError> {
    let mut stats = SearchStats::default();
    let mut window = Window {
        skip: plan.offset,
        left: plan.limit.unwrap_or(u64::MAX),
    };
    if window.left == 0 {
        return Ok(stats);
    }
    let bound;
    let join_keys;
    let (access, filter) = if plan.joins.is_empty() {
        join_keys = Vec::new();
        (&plan.access, &plan.filter)
    } else {
        join_keys = run_joins(txn, &plan.joins, &mut stats)?;
        bound = (
            bind_access(&plan.access, &join_keys),
            bind_filter(&plan.filter, &join_keys),
        );
        (&bound.0, &bound.1)
    };
    let joins = Joins {
        txn,
        joins: &plan.joins,
        keys: &join_keys,
        visited: std::cell::Cell::new(0),
    };
    match &plan.order {
        Order::Access => {
            let mut sink = |key: &[u8], record: &Record<'_>, stats: &mut SearchStats| {
                window.offer(key, record, stats, emit)
            };
            let _ = candidates(&joins, table, access, filter, &mut stats, &mut sink)?;
        }
        Order::Memory(keys) => {
            let mut matches: Vec<Vec<u8>> = Vec::new();
            let mut overflow = false;
            let mut sink = |key: &[u8], record: &Record<'_>, _: &mut SearchStats| {
                if matches.len() >= SORT_RECORDS_MAX {
                    overflow = true;
                    return ControlFlow::Break(());
                }
                matches.push(sort_key(record, keys, key));
                ControlFlow::Continue(())
            };
            let _ = candidates(&joins, table, access, filter, &mut stats, &mut sink)?;
            if overflow {
                return Err(too_many_to_sort());
            }
            matches.sort_unstable();
            let _ = emit_sorted(txn, table, &matches, &mut window, &mut stats, emit)?;
        }
        Order::IndexRuns(keys) => {
            // Entries arrive grouped by their index key; each group is sorted by the rest.
            let mut run: Vec<Vec<u8>> = Vec::new();
            let mut run_key: Vec<u8> = Vec::new();
            let Access::Index {
                attribute,
                lower,
                upper,
                descending,
                dedup,
            } = &plan.access
            else {
                return Ok(stats);
            };
            let mut seen: HashSet<Vec<u8>> = HashSet::new();
            let cursor =
                txn.index_range(table, attribute, as_ref(lower), as_ref(upper), *descending)?;
            for entry in cursor {
                let (index_key, pk) = entry?;
                stats.index_entries += 1;
                if *dedup && !seen.insert(pk.to_vec()) {
                    continue;
                }
                if index_key != run_key.as_slice() {
                    run.sort_unstable();
                    if emit_sorted(txn, table, &run, &mut window, &mut stats, emit)?.is_break() {
                        return Ok(stats);
                    }
                    run.clear();
                    run_key.clear();
                    run_key.extend_from_slice(index_key);
                }
                let Some(record) = txn.get_encoded(table, pk)? else {
                    continue;
                };
                stats.records_visited += 1;
                if run.len() >= SORT_RECORDS_MAX {
                    return Err(too_many_to_sort());
                }
                run.push(sort_key(&record, keys, pk));
            }
            run.sort_unstable();
            let _ = emit_sorted(txn, table, &run, &mut window, &mut stats, emit)?;
        }
    }
    stats.records_visited += joins.visited.get();
    Ok(stats)
}

/// Keys a join collected; `None` for a join tested per record.
type JoinKeys = Option<Arc<BTreeSet<Vec<u8>>>>;

/// Runs the search on the related table of each join that collects keys, and collects the keys
/// of the local attribute its matches stand for; their work counts in `stats`.
fn run_joins(
    txn: &ReadTxn<'_>,
    joins: &[Join],
    stats: &mut SearchStats,
) -> Result<Vec<JoinKeys>, SearchError> {
    let mut out = Vec::with_capacity(joins.len());
    for join in joins {
        if join.mode == JoinMode::PerRecord {
            out.push(None);
            continue;
        }
        let mut keys = BTreeSet::new();
        let mut overflow = false;
        let sub = search(txn, &join.link.target, &join.plan, &mut |pk, record| {
            join.link.collect_remote(pk, record, &mut keys);
            if keys.len() > JOIN_KEYS_MAX {
                overflow = true;
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        })?;
        stats.records_visited += sub.records_visited;
        stats.index_entries += sub.index_entries;
        match (overflow, join.mode) {
            (true, JoinMode::Drive) => {
                return Err(SearchError::BadRequest(format!(
                    "More than {JOIN_KEYS_MAX} related records match the condition on {}; narrow \
                     it or add a condition on an indexed attribute",
                    join.link.relationship
                )))
            }
            (true, _) => out.push(None),
            (false, _) => out.push(Some(Arc::new(keys))),
        }
    }
    Ok(out)
}

/// Evaluates a filter whose membership tests may belong to joins tested per record.
struct Joins<'j, 't> {
    txn: &'j ReadTxn<'t>,
    joins: &'j [Join],
    /// Per join: its collected keys (bound into the filter's membership tests), or `None`.
    keys: &'j [JoinKeys],
    /// Related records read by joins tested per record (counted into `records_visited`).
    visited: std::cell::Cell<u64>,
}

impl Joins<'_, '_> {
    fn passes<'a, V: ValueView<'a>>(
        &self,
        filter: &Filter,
        record: V,
    ) -> Result<bool, SearchError> {
        if self.joins.is_empty() {
            return Ok(filter.matches(record));
        }
        Ok(match filter {
            Filter::And(children) => {
                for child in children {
                    if !self.passes(child, record)? {
                        return Ok(false);
                    }
                }
                true
            }
            Filter::Or(children) => {
                for child in children {
                    if self.passes(child, record)? {
                        return Ok(true);
                    }
                }
                false
            }
            Filter::Test(test) => test.matches(record),
            Filter::In(membership) => match self.keys.get(membership.join) {
                Some(Some(_)) => membership.matches(record),
                _ => match self.joins.get(membership.join) {
                    Some(join) => self.related_passes(join, record)?,
                    None => false,
                },
            },
        })
    }

    /// Whether any related record of `record` through `join` meets the join's condition (its own
    /// joins tested per record too).
    fn related_passes<'a, V: ValueView<'a>>(
        &self,
        join: &Join,
        record: V,
    ) -> Result<bool, SearchError> {
        let nested = Joins {
            txn: self.txn,
            joins: &join.plan.joins,
            keys: &[],
            visited: std::cell::Cell::new(0),
        };
        let mut hit = false;
        let mut failed = None;
        join.link
            .related(self.txn, record, usize::MAX, &mut |found| {
                nested.visited.set(nested.visited.get() + 1);
                match nested.passes(&join.plan.filter, found.value) {
                    Ok(false) => return ControlFlow::Continue(()),
                    Ok(true) => hit = true,
                    Err(e) => failed = Some(e),
                }
                ControlFlow::Break(())
            })?;
        self.visited.set(self.visited.get() + nested.visited.get());
        match failed {
            Some(e) => Err(e),
            None => Ok(hit),
        }
    }
}

/// `access` with its joins replaced by the keys they collected.
fn bind_access(access: &Access, keys: &[JoinKeys]) -> Access {
    // A driving join always collected its keys (or the search failed).
    let keys_of = |join: usize| keys.get(join).cloned().flatten().unwrap_or_default();
    match access {
        Access::Join {
            join, index: None, ..
        } => Access::Keys(keys_of(*join)),
        Access::Join {
            join,
            index: Some(attribute),
            dedup,
            ..
        } => Access::Points {
            attribute: attribute.clone(),
            keys: keys_of(*join),
            dedup: *dedup,
        },
        Access::Union(branches) => Access::Union(
            branches
                .iter()
                .map(|(a, f)| (bind_access(a, keys), bind_filter(f, keys)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// `filter` with each membership test given its join's keys (those tested per record keep
/// none).
fn bind_filter(filter: &Filter, keys: &[JoinKeys]) -> Filter {
    match filter {
        Filter::And(c) => Filter::And(c.iter().map(|f| bind_filter(f, keys)).collect()),
        Filter::Or(c) => Filter::Or(c.iter().map(|f| bind_filter(f, keys)).collect()),
        Filter::In(m) => Filter::In(Membership {
            keys: keys.get(m.join).cloned().flatten().unwrap_or_default(),
            ..m.clone()
        }),
        Filter::Test(_) => filter.clone(),
    }
}

fn too_many_to_sort() -> SearchError {
    SearchError::BadRequest(format!(
        "More than {SORT_RECORDS_MAX} matches to sort; add conditions or sort by an indexed attribute"
    ))
}

/// Offset and limit over the emitted stream.
struct Window {
    skip: u64,
    left: u64,
}

impl Window {
    fn offer(
        &mut self,
        key: &[u8],
        record: &Record<'_>,
        stats: &mut SearchStats,
        emit: &mut dyn FnMut(&[u8], &Record<'_>) -> ControlFlow<()>,
    ) -> ControlFlow<()> {
        if self.skip > 0 {
            self.skip -= 1;
            return ControlFlow::Continue(());
        }
        if self.left == 0 {
            return ControlFlow::Break(());
        }
        self.left -= 1;
        stats.returned += 1;
        emit(key, record)?;
        if self.left == 0 {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    }
}

/// Composite sort key: each key's order-preserving encoding (bytes inverted for descending —
/// the encoding is prefix-free, so inversion reverses the order), then the primary key; the
/// primary key's length is appended so it can be cut off again.
fn sort_key(record: &Record<'_>, keys: &[(Vec<String>, bool)], pk: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    for (path, descending) in keys {
        let start = out.len();
        match crate::query::property(record.value, path) {
            Some(v) => key::encode_unbounded(v, &mut out),
            None => key::encode_unbounded(&Value::Null, &mut out),
        }
        if *descending {
            for b in &mut out[start..] {
                *b = !*b;
            }
        }
    }
    out.extend_from_slice(pk);
    out.extend_from_slice(&(pk.len() as u32).to_be_bytes());
    out
}

fn pk_of(sort_key: &[u8]) -> &[u8] {
    let n = sort_key.len();
    let len = sort_key
        .get(n.saturating_sub(4)..)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map(u32::from_be_bytes)
        .unwrap_or(0) as usize;
    sort_key
        .get(n.saturating_sub(4 + len)..n.saturating_sub(4))
        .unwrap_or(&[])
}

fn emit_sorted(
    txn: &ReadTxn<'_>,
    table: &Table,
    sorted: &[Vec<u8>],
    window: &mut Window,
    stats: &mut SearchStats,
    emit: &mut dyn FnMut(&[u8], &Record<'_>) -> ControlFlow<()>,
) -> Result<ControlFlow<()>, SearchError> {
    for entry in sorted {
        if window.skip > 0 {
            window.skip -= 1;
            continue;
        }
        let pk = pk_of(entry);
        let Some(record) = txn.get_encoded(table, pk)? else {
            continue;
        };
        stats.records_visited += 1;
        if window.offer(pk, &record, stats, emit).is_break() {
            return Ok(ControlFlow::Break(()));
        }
    }
    Ok(ControlFlow::Continue(()))
}

type Sink<'s> = dyn FnMut(&[u8], &Record<'_>, &mut SearchStats) -> ControlFlow<()> + 's;

fn as_ref(b: &Bound<Vec<u8>>) -> Bound<&[u8]> {
    match b {
        Bound::Included(v) => Bound::Included(v.as_slice()),
        Bound::Excluded(v) => Bound::Excluded(v.as_slice()),
        Bound::Unbounded => Bound::Unbounded,
    }
}

/// Feeds every candidate of `access` that matches `filter` (and, in a union, its branch's filter
/// and no earlier branch's) to `sink`.
fn candidates(
    joins: &Joins<'_, '_>,
    table: &Table,
    access: &Access,
    filter: &Filter,
    stats: &mut SearchStats,
    sink: &mut Sink<'_>,
) -> Result<ControlFlow<()>, SearchError> {
    let txn = joins.txn;
    let probe = Probe {
        joins,
        table,
        filter,
    };
    match access {
        Access::Key(pk) => return probe.key(pk, stats, sink),
        Access::Scan { descending } => {
            for item in txn.scan(table, *descending)? {
                let (pk, record) = item?;
                stats.records_visited += 1;
                if joins.passes(filter, record.value)? && sink(pk, &record, stats).is_break() {
                    return Ok(ControlFlow::Break(()));
                }
            }
        }
        Access::Index {
            attribute,
            lower,
            upper,
            descending,
            dedup,
        } => {
            let mut seen = dedup.then(HashSet::new);
            let range = (as_ref(lower), as_ref(upper), *descending);
            return probe.index(attribute, range, seen.as_mut(), stats, sink);
        }
        Access::Keys(keys) => {
            for pk in keys.iter() {
                if probe.key(pk, stats, sink)?.is_break() {
                    return Ok(ControlFlow::Break(()));
                }
            }
        }
        Access::Points {
            attribute,
            keys,
            dedup,
        } => {
            let mut seen = dedup.then(HashSet::new);
            for point in keys.iter() {
                let at = Bound::Included(point.as_slice());
                if probe
                    .index(attribute, (at, at, false), seen.as_mut(), stats, sink)?
                    .is_break()
                {
                    return Ok(ControlFlow::Break(()));
                }
            }
        }
        Access::Join { .. } => {
            // Bound to `Keys`/`Points` before candidates are read; an unbound one finds nothing.
        }
        Access::Union(branches) => {
            for (index, (branch, own)) in branches.iter().enumerate() {
                let earlier = branches.get(..index).unwrap_or(&[]);
                // A branch's access can be wider than its own filter (only one of its conditions
                // drives), so a record it reaches that only a later branch matches is left to
                // that branch: each record comes from the first branch whose filter it meets.
                let mut branch_sink = |pk: &[u8], record: &Record<'_>, stats: &mut SearchStats| {
                    // Errors of per-record joins in these checks surface through the main filter,
                    // which every candidate passed first.
                    let meets = |f: &Filter| joins.passes(f, record.value).unwrap_or(false);
                    if !meets(own) || earlier.iter().any(|(_, f)| meets(f)) {
                        ControlFlow::Continue(())
                    } else {
                        sink(pk, record, stats)
                    }
                };
                if candidates(joins, table, branch, filter, stats, &mut branch_sink)?.is_break() {
                    return Ok(ControlFlow::Break(()));
                }
            }
        }
    }
    Ok(ControlFlow::Continue(()))
}

/// Reads candidates of one table in one transaction and offers the matches of `filter`.
struct Probe<'p, 'j, 't> {
    joins: &'p Joins<'j, 't>,
    table: &'p Table,
    filter: &'p Filter,
}

impl Probe<'_, '_, '_> {
    /// The record with encoded key `pk`, if live and matching.
    fn key(
        &self,
        pk: &[u8],
        stats: &mut SearchStats,
        sink: &mut Sink<'_>,
    ) -> Result<ControlFlow<()>, SearchError> {
        let Some(record) = self.joins.txn.get_encoded(self.table, pk)? else {
            return Ok(ControlFlow::Continue(()));
        };
        stats.records_visited += 1;
        if self.joins.passes(self.filter, record.value)? {
            return Ok(sink(pk, &record, stats));
        }
        Ok(ControlFlow::Continue(()))
    }

    /// The records of `attribute`'s index entries in `(lower, upper, descending)`; with `seen`,
    /// each record once.
    fn index(
        &self,
        attribute: &str,
        (lower, upper, descending): (Bound<&[u8]>, Bound<&[u8]>, bool),
        mut seen: Option<&mut HashSet<Vec<u8>>>,
        stats: &mut SearchStats,
        sink: &mut Sink<'_>,
    ) -> Result<ControlFlow<()>, SearchError> {
        for entry in self
            .joins
            .txn
            .index_range(self.table, attribute, lower, upper, descending)?
        {
            let (_, pk) = entry?;
            stats.index_entries += 1;
            if let Some(seen) = seen.as_deref_mut() {
                if !seen.insert(pk.to_vec()) {
                    continue;
                }
            }
            if self.key(pk, stats, sink)?.is_break() {
                return Ok(ControlFlow::Break(()));
            }
        }
        Ok(ControlFlow::Continue(()))
    }
}

// ---------------------------------------------------------------------------------------------
// Planning

/// An attribute whose values can be arrays: its index can list one record several times.
fn may_hold_arrays(attr: Option<&AttributeDef>) -> bool {
    !matches!(
        attr.map(|a| &a.ty),
        Some(
            FieldType::ID
                | FieldType::String
                | FieldType::Int
                | FieldType::Long
                | FieldType::Float
                | FieldType::BigInt
                | FieldType::Boolean
                | FieldType::Date
                | FieldType::Bytes
        )
    )
}

/// Bounds of one kind class in the key encoding (see `value::key`): ranges never leave the class
/// of their value, as `Test` never compares across classes.
fn class_bounds(encoded: &[u8]) -> (Vec<u8>, Vec<u8>) {
    match encoded.first().copied().unwrap_or(0) {
        0x03 | 0x04 => (vec![0x03], vec![0x05]),
        0x10..=0x15 => (vec![0x10], vec![0x16]),
        b => (vec![b], vec![b.saturating_add(1)]),
    }
}

fn index_prefix(v: &Value) -> (Vec<u8>, bool) {
    let mut out = Vec::with_capacity(16);
    let cut = key::encode_index_prefix(v, &mut out);
    (out, cut)
}

/// The smallest byte string greater than every string starting with `prefix`.
fn successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut out = prefix.to_vec();
    while let Some(last) = out.pop() {
        if last < 0xFF {
            out.push(last + 1);
            return Some(out);
        }
    }
    None
}

/// Index bounds for one test, or `None` when it cannot use an index.
/// A (lower, upper) pair of index key bounds.
type Bounds = (Bound<Vec<u8>>, Bound<Vec<u8>>);

fn test_bounds(test: &Test) -> Option<Bounds> {
    let exact = |v: &Value, inclusive_low: bool| -> Bound<Vec<u8>> {
        let (bytes, cut) = index_prefix(v);
        if inclusive_low || cut {
            Bound::Included(bytes)
        } else {
            Bound::Excluded(bytes)
        }
    };
    // The ends of the value's kind class, for the one-sided ranges only (an equality, the
    // common case, needs neither, and each is an allocation).
    let class = || class_bounds(&index_prefix(&test.value).0);
    match test.op {
        Op::Equal => match &test.value {
            Value::Array(_) | Value::Object(_) => None,
            v => {
                let (bytes, _) = index_prefix(v);
                Some((Bound::Included(bytes.clone()), Bound::Included(bytes)))
            }
        },
        _ if matches!(test.value, Value::Null) => None,
        Op::Greater => Some((exact(&test.value, false), Bound::Excluded(class().1))),
        Op::GreaterEqual => Some((exact(&test.value, true), Bound::Excluded(class().1))),
        Op::Less => Some((Bound::Included(class().0), exact(&test.value, false))),
        Op::LessEqual => Some((Bound::Included(class().0), exact(&test.value, true))),
        Op::Between => Some((exact(&test.value, true), exact(&test.high, true))),
        Op::StartsWith => {
            let Value::String(_) = &test.value else {
                return None;
            };
            let (mut bytes, cut) = index_prefix(&test.value);
            if !cut {
                // Drop the string terminator (0x00 0x01) so longer strings fall inside.
                bytes.truncate(bytes.len().saturating_sub(2));
            }
            let upper = successor(&bytes).map_or(Bound::Unbounded, Bound::Excluded);
            Some((Bound::Included(bytes), upper))
        }
        Op::NotEqual | Op::Contains | Op::EndsWith => None,
    }
}

fn tighter_lower(a: Bound<Vec<u8>>, b: Bound<Vec<u8>>) -> Bound<Vec<u8>> {
    match (&a, &b) {
        (Bound::Unbounded, _) => b,
        (_, Bound::Unbounded) => a,
        (Bound::Included(x) | Bound::Excluded(x), Bound::Included(y) | Bound::Excluded(y)) => {
            match x.cmp(y) {
                std::cmp::Ordering::Less => b,
                std::cmp::Ordering::Greater => a,
                std::cmp::Ordering::Equal if matches!(a, Bound::Excluded(_)) => a,
                std::cmp::Ordering::Equal => b,
            }
        }
    }
}

fn tighter_upper(a: Bound<Vec<u8>>, b: Bound<Vec<u8>>) -> Bound<Vec<u8>> {
    match (&a, &b) {
        (Bound::Unbounded, _) => b,
        (_, Bound::Unbounded) => a,
        (Bound::Included(x) | Bound::Excluded(x), Bound::Included(y) | Bound::Excluded(y)) => {
            match x.cmp(y) {
                std::cmp::Ordering::Less => a,
                std::cmp::Ordering::Greater => b,
                std::cmp::Ordering::Equal if matches!(a, Bound::Excluded(_)) => a,
                std::cmp::Ordering::Equal => b,
            }
        }
    }
}

/// Ranks of access paths; lower is more selective.
const RANK_KEY: u8 = 0;
const RANK_EQUAL: u8 = 1;
const RANK_BOUNDED: u8 = 2;
/// Through a relationship: as selective as the related condition, which is unknown here; below a
/// bounded range of our own, above a one-sided one.
const RANK_JOIN: u8 = 3;
const RANK_ONE_SIDED: u8 = 4;
const RANK_UNION: u8 = 5;

/// How a membership test can drive: by key when its attribute is the primary key, by index
/// points when it is indexed.
fn join_access(table: &Table, membership: &Membership) -> Option<Access> {
    let [name] = membership.path.as_slice() else {
        return None;
    };
    let index = if table.def.primary_key.as_deref() == Some(name.as_str()) {
        None
    } else if table.indexed(name) {
        Some(name.clone())
    } else {
        return None;
    };
    Some(Access::Join {
        join: membership.join,
        via: membership.via.clone(),
        dedup: index.is_some() && may_hold_arrays(table.def.attribute(name)),
        index,
    })
}

/// The best access path for `filter` with its rank, or `None` for a full scan.
fn choose_access(table: &Table, filter: &Filter) -> Option<Access> {
    choose_ranked(table, filter).map(|(_, access)| access)
}

fn choose_ranked(table: &Table, filter: &Filter) -> Option<(u8, Access)> {
    match filter {
        Filter::Test(_) | Filter::In(_) => choose_among(table, std::slice::from_ref(filter)),
        Filter::Or(branches) => {
            let mut paths = Vec::with_capacity(branches.len());
            for branch in branches {
                paths.push((choose_ranked(table, branch)?.1, branch.clone()));
            }
            Some((RANK_UNION, Access::Union(paths)))
        }
        Filter::And(children) => choose_among(table, children),
    }
}

/// The best access path for the conjunction of `children`, with its rank.
fn choose_among(table: &Table, children: &[Filter]) -> Option<(u8, Access)> {
    let mut best: Option<(u8, Access)> = None;
    let consider = |candidate: (u8, Access), best: &mut Option<(u8, Access)>| {
        if best.as_ref().is_none_or(|b| candidate.0 < b.0) {
            *best = Some(candidate);
        }
    };
    // Ranges per indexed attribute, merged: (name, lower, upper, low side set, high side
    // set, equality).
    type Range = (String, Bound<Vec<u8>>, Bound<Vec<u8>>, bool, bool, bool);
    let mut ranges: Vec<Range> = Vec::new();
    for child in children {
        match child {
            Filter::Test(test) => {
                let [name] = test.path.as_slice() else {
                    continue;
                };
                if table.def.primary_key.as_deref() == Some(name.as_str()) && test.op == Op::Equal {
                    let mut pk = Vec::new();
                    if matches!(
                        test.value,
                        Value::String(_) | Value::Int(_) | Value::Float(_) | Value::BigInt(_)
                    ) && key::encode(&test.value, &mut pk).is_ok()
                    {
                        consider((RANK_KEY, Access::Key(pk)), &mut best);
                    }
                    continue;
                }
                if !table.indexed(name) {
                    continue;
                }
                let Some((lower, upper)) = test_bounds(test) else {
                    continue;
                };
                let (low_set, high_set) = match test.op {
                    Op::Greater | Op::GreaterEqual => (true, false),
                    Op::Less | Op::LessEqual => (false, true),
                    _ => (true, true),
                };
                let equal = test.op == Op::Equal;
                // Tests on an attribute that can hold arrays may be met by different
                // elements, so only single-valued attributes merge their ranges.
                let mergeable = !may_hold_arrays(table.def.attribute(name));
                match ranges.iter_mut().find(|r| mergeable && &r.0 == name) {
                    Some(r) => {
                        r.1 = tighter_lower(std::mem::replace(&mut r.1, Bound::Unbounded), lower);
                        r.2 = tighter_upper(std::mem::replace(&mut r.2, Bound::Unbounded), upper);
                        r.3 |= low_set;
                        r.4 |= high_set;
                        r.5 |= equal;
                    }
                    None => ranges.push((name.clone(), lower, upper, low_set, high_set, equal)),
                }
            }
            Filter::In(membership) => {
                if let Some(access) = join_access(table, membership) {
                    consider((RANK_JOIN, access), &mut best);
                }
            }
            Filter::Or(_) | Filter::And(_) => {
                if let Some(candidate) = choose_ranked(table, child) {
                    consider(candidate, &mut best);
                }
            }
        }
    }
    for (name, lower, upper, low_set, high_set, equal) in ranges {
        let point = matches!((&lower, &upper), (Bound::Included(a), Bound::Included(b)) if a == b);
        let rank = if equal || point {
            RANK_EQUAL
        } else if low_set && high_set {
            RANK_BOUNDED
        } else {
            RANK_ONE_SIDED
        };
        let dedup = may_hold_arrays(table.def.attribute(&name)) && !point;
        let candidate = Access::Index {
            attribute: name,
            lower,
            upper,
            descending: false,
            dedup,
        };
        consider((rank, candidate), &mut best);
    }
    best
}

// ---------------------------------------------------------------------------------------------
// Conversion: Expr → Filter

/// Whether `path` names something the table lets a query use.
fn check_attribute<'d>(
    def: &'d TableDef,
    path: &[String],
    allow_undeclared: bool,
) -> Result<Option<&'d AttributeDef>, SearchError> {
    let Some(name) = path.first() else {
        return Err(SearchError::BadRequest("Empty attribute name".into()));
    };
    match def.attribute(name) {
        Some(attr) if attr.relationship.is_some() => Err(SearchError::Unsupported(format!(
            "Sorting or querying by the relationship {name} is not supported here"
        ))),
        Some(attr) => Ok(Some(attr)),
        None if allow_undeclared => Ok(None),
        None => Err(SearchError::NotFound(format!(
            "{name} is not a defined attribute"
        ))),
    }
}

/// Conversion state: where related tables are found, and the joins found so far.
struct Planner<'p> {
    /// `None`: conditions through relationships answer 501.
    db: Option<&'p Database>,
    allow_undeclared: bool,
    /// Relationships followed to reach this table.
    depth: usize,
    joins: Vec<Join>,
}

impl Planner<'_> {
    fn convert(&mut self, def: &TableDef, expr: &Expr) -> Result<Filter, SearchError> {
        Ok(match expr {
            Expr::And(children) => Filter::And(
                children
                    .iter()
                    .map(|c| self.convert(def, c))
                    .collect::<Result<_, _>>()?,
            ),
            Expr::Or(children) => Filter::Or(
                children
                    .iter()
                    .map(|c| self.convert(def, c))
                    .collect::<Result<_, _>>()?,
            ),
            Expr::Condition(condition) => {
                let relationship = condition
                    .path
                    .first()
                    .and_then(|name| def.attribute(name))
                    .filter(|a| a.relationship.is_some());
                match (relationship, self.db) {
                    (Some(attr), Some(db)) => self.join(db, def, attr, condition)?,
                    _ => Filter::Test(convert_condition(def, condition, self.allow_undeclared)?),
                }
            }
        })
    }

    /// `rel.path op value`: plans `path op value` on the related table as a join, and returns
    /// the membership test that stands for it here.
    fn join(
        &mut self,
        db: &Database,
        def: &TableDef,
        attr: &AttributeDef,
        condition: &Condition,
    ) -> Result<Filter, SearchError> {
        let name = &attr.name;
        let Some(rest) = condition.path.get(1..).filter(|r| !r.is_empty()) else {
            return Err(SearchError::BadRequest(format!(
                "{name} is a relationship; query one of its attributes, as in {name}.<attribute>"
            )));
        };
        if self.depth >= JOIN_DEPTH_MAX {
            return Err(SearchError::BadRequest(format!(
                "A condition follows more than {JOIN_DEPTH_MAX} relationships"
            )));
        }
        let link = Link::new(db, def, attr)?;
        let related = Expr::Condition(Condition {
            path: rest.to_vec(),
            comparator: condition.comparator,
            value: condition.value.clone(),
        });
        let spec = SearchSpec {
            filter: Some(&related),
            allow_undeclared: !link.target.schema_defined,
            ..SearchSpec::default()
        };
        let plan = plan_at(Some(db), &link.target, &spec, self.depth + 1)?;
        let membership = Membership {
            path: vec![link.local.clone()],
            keys: Arc::default(),
            join: self.joins.len(),
            via: name.clone(),
        };
        // The mode is decided once the access path is known (`plan_at`).
        self.joins.push(Join {
            link,
            plan,
            mode: JoinMode::PerRecord,
        });
        Ok(Filter::In(membership))
    }
}

/// Converts without joins (unit tests).
#[cfg(test)]
fn convert(def: &TableDef, expr: &Expr, allow_undeclared: bool) -> Result<Filter, SearchError> {
    Planner {
        db: None,
        allow_undeclared,
        depth: 0,
        joins: Vec::new(),
    }
    .convert(def, expr)
}

fn convert_condition(
    def: &TableDef,
    condition: &Condition,
    allow_undeclared: bool,
) -> Result<Test, SearchError> {
    let attr = check_attribute(def, &condition.path, allow_undeclared)?;
    let name = condition.path.join(".");
    // Nested paths are untyped below the top level.
    let ty = if condition.path.len() == 1 {
        attr.map(|a| match &a.ty {
            FieldType::Array(element) => element.as_ref().clone(),
            other => other.clone(),
        })
    } else {
        None
    };
    let op = match condition.comparator {
        Comparator::Equal => Op::Equal,
        Comparator::NotEqual => Op::NotEqual,
        Comparator::Less => Op::Less,
        Comparator::LessEqual => Op::LessEqual,
        Comparator::Greater => Op::Greater,
        Comparator::GreaterEqual => Op::GreaterEqual,
        Comparator::Contains => Op::Contains,
        Comparator::StartsWith => Op::StartsWith,
        Comparator::EndsWith => Op::EndsWith,
        Comparator::Between => Op::Between,
    };
    // Substring comparators work on text whatever the declared type.
    let textual = matches!(op, Op::StartsWith | Op::EndsWith)
        || (op == Op::Contains && !matches!(attr.map(|a| &a.ty), Some(FieldType::Array(_))));
    let ty = if textual { Some(FieldType::String) } else { ty };
    let (value, high) = match &condition.value {
        QueryValue::Url { text, hint, strict } => (
            url_value(&name, ty.as_ref(), text, *hint, *strict)?,
            Value::Null,
        ),
        QueryValue::Json(json) if op == Op::Between => match json {
            serde_json::Value::Array(pair) if pair.len() == 2 => (
                json_value(&name, ty.as_ref(), &pair[0])?,
                json_value(&name, ty.as_ref(), &pair[1])?,
            ),
            _ => {
                return Err(SearchError::BadRequest(format!(
                    "between on {name} needs a [low, high] array"
                )))
            }
        },
        QueryValue::Json(json) => (json_value(&name, ty.as_ref(), json)?, Value::Null),
    };
    Ok(Test {
        path: condition.path.clone(),
        op,
        value,
        high,
    })
}

fn invalid(name: &str, text: &str, expecting: &str) -> SearchError {
    SearchError::BadRequest(format!(
        "Invalid value for attribute {name}: \"{text}\", expecting {expecting}"
    ))
}

fn parse_number(text: &str) -> Option<Value> {
    if let Ok(i) = text.parse::<i64>() {
        return Some(Value::Int(i));
    }
    if !text.is_empty()
        && text
            .trim_start_matches('-')
            .bytes()
            .all(|b| b.is_ascii_digit())
    {
        if let Ok(v @ (Value::Int(_) | Value::BigInt(_))) = value::json::parse(text.as_bytes()) {
            return Some(v);
        }
    }
    text.parse::<f64>()
        .ok()
        .filter(|f| f.is_finite())
        .map(Value::Float)
}

fn parse_date(text: &str) -> Option<Value> {
    crate::util::parse_iso8601_ms(text)
        .or_else(|| text.parse::<f64>().ok().filter(|f| f.is_finite()))
        .map(Value::Date)
}

/// Text to a value of the declared type (`None` = untyped: booleans and canonical numbers read
/// as such).
fn typed_text(name: &str, ty: Option<&FieldType>, text: &str) -> Result<Value, SearchError> {
    let fail = |t: &FieldType| invalid(name, text, t.name());
    Ok(match ty {
        Some(FieldType::ID | FieldType::String) => Value::String(text.to_string()),
        Some(t @ FieldType::Int) => match text.parse::<i64>() {
            Ok(i) if i32::try_from(i).is_ok() => Value::Int(i),
            _ => return Err(fail(t)),
        },
        Some(t @ FieldType::Long) => match text.parse::<i64>() {
            Ok(i) if i.unsigned_abs() <= 1 << 53 => Value::Int(i),
            _ => return Err(fail(t)),
        },
        Some(t @ FieldType::Float) => parse_number(text).ok_or_else(|| fail(t))?,
        Some(t @ FieldType::BigInt) => match parse_number(text) {
            Some(v @ (Value::Int(_) | Value::BigInt(_))) => v,
            _ => return Err(fail(t)),
        },
        Some(t @ FieldType::Boolean) => match text {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => return Err(fail(t)),
        },
        Some(t @ FieldType::Date) => parse_date(text).ok_or_else(|| fail(t))?,
        Some(t @ FieldType::Bytes) => {
            Value::Bytes(crate::util::decode_base64(text).ok_or_else(|| fail(t))?)
        }
        _ => match text {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => super::canonical_number(text).unwrap_or_else(|| Value::String(text.to_string())),
        },
    })
}

fn url_value(
    name: &str,
    ty: Option<&FieldType>,
    text: &str,
    hint: ValueHint,
    strict: bool,
) -> Result<Value, SearchError> {
    if strict {
        return match ty {
            None | Some(FieldType::Any) => Ok(Value::String(text.to_string())),
            Some(_) => typed_text(name, ty, text),
        };
    }
    match hint {
        ValueHint::Untyped => typed_text(name, ty, text),
        ValueHint::Null => Ok(Value::Null),
        ValueHint::String => Ok(Value::String(text.to_string())),
        ValueHint::Number => parse_number(text).ok_or_else(|| invalid(name, text, "Number")),
        ValueHint::Boolean => match text {
            "true" => Ok(Value::Bool(true)),
            "false" => Ok(Value::Bool(false)),
            _ => Err(invalid(name, text, "Boolean")),
        },
        ValueHint::Date => parse_date(text).ok_or_else(|| invalid(name, text, "Date")),
    }
}

fn json_value(
    name: &str,
    ty: Option<&FieldType>,
    json: &serde_json::Value,
) -> Result<Value, SearchError> {
    use serde_json::Value as J;
    Ok(match (json, ty) {
        (J::Null, _) => Value::Null,
        // Text where the type wants something else converts like URL text.
        (J::String(s), Some(t))
            if !matches!(t, FieldType::ID | FieldType::String | FieldType::Any) =>
        {
            typed_text(name, ty, s)?
        }
        (J::String(s), _) => Value::String(s.clone()),
        (J::Number(n), Some(FieldType::Date)) => Value::Date(
            n.as_f64()
                .ok_or_else(|| invalid(name, &n.to_string(), "Date"))?,
        ),
        (J::Number(n), Some(FieldType::ID | FieldType::String)) if ty.is_some() => {
            // A number compared with a string attribute: compare as its text.
            Value::String(n.to_string())
        }
        (other, _) => {
            let bytes = serde_json::to_vec(other).unwrap_or_default();
            value::json::parse(&bytes)
                .map_err(|e| SearchError::BadRequest(format!("Invalid value for {name}: {e}")))?
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Explain

fn write_bound(f: &mut fmt::Formatter<'_>, b: &Bound<Vec<u8>>, low: bool) -> fmt::Result {
    let show = |f: &mut fmt::Formatter<'_>, bytes: &[u8]| match key::decode(bytes) {
        Ok(v) => write!(f, "{}", String::from_utf8_lossy(&value::json::to_vec(&v))),
        Err(_) => write!(
            f,
            "0x{}",
            bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
        ),
    };
    match (b, low) {
        (Bound::Unbounded, true) => f.write_str("(-∞"),
        (Bound::Unbounded, false) => f.write_str("+∞)"),
        (Bound::Included(v), true) => {
            f.write_str("[")?;
            show(f, v)
        }
        (Bound::Excluded(v), true) => {
            f.write_str("(")?;
            show(f, v)
        }
        (Bound::Included(v), false) => {
            show(f, v)?;
            f.write_str("]")
        }
        (Bound::Excluded(v), false) => {
            show(f, v)?;
            f.write_str(")")
        }
    }
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Access::Key(pk) => {
                f.write_str("primary key ")?;
                write_bound(f, &Bound::Included(pk.clone()), true)?;
                f.write_str("]")
            }
            Access::Index {
                attribute,
                lower,
                upper,
                descending,
                ..
            } => {
                write!(f, "index {attribute} ")?;
                write_bound(f, lower, true)?;
                f.write_str(", ")?;
                write_bound(f, upper, false)?;
                if *descending {
                    f.write_str(" descending")?;
                }
                Ok(())
            }
            Access::Union(branches) => {
                f.write_str("union(")?;
                for (i, (branch, _)) in branches.iter().enumerate() {
                    if i > 0 {
                        f.write_str("; ")?;
                    }
                    write!(f, "{branch}")?;
                }
                f.write_str(")")
            }
            Access::Join {
                via, index: None, ..
            } => write!(f, "primary keys from join {via}"),
            Access::Join {
                via,
                index: Some(attribute),
                ..
            } => write!(f, "index {attribute} points from join {via}"),
            Access::Keys(keys) => write!(f, "primary keys ({} keys)", keys.len()),
            Access::Points {
                attribute, keys, ..
            } => write!(f, "index {attribute} points ({} keys)", keys.len()),
            Access::Scan { descending: false } => f.write_str("full scan"),
            Access::Scan { descending: true } => f.write_str("full scan descending"),
        }
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.access)?;
        write!(f, "; filter {:?}", FilterShow(&self.filter).to_string())?;
        match &self.order {
            Order::Access => {}
            Order::IndexRuns(keys) | Order::Memory(keys) => {
                let how = if matches!(self.order, Order::Memory(_)) {
                    "sort in memory by"
                } else {
                    "then sort runs by"
                };
                write!(f, "; {how} ")?;
                for (i, (path, descending)) in keys.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(
                        f,
                        "{}{}",
                        if *descending { "-" } else { "+" },
                        path.join(".")
                    )?;
                }
            }
        }
        if self.offset > 0 || self.limit.is_some() {
            write!(f, "; skip {}", self.offset)?;
            if let Some(limit) = self.limit {
                write!(f, " take {limit}")?;
            }
        }
        for join in &self.joins {
            let link = &join.link;
            let collect = match &link.remote {
                Remote::Key => "primary key".to_string(),
                Remote::Attribute(a) => a.clone(),
            };
            let mode = match join.mode {
                JoinMode::Drive => "drives",
                JoinMode::Collect => "collected",
                JoinMode::PerRecord => "per record",
            };
            write!(
                f,
                "; join {} ({mode}) = {}.{collect} of [{}] → {}",
                link.relationship, link.target.def.table, join.plan, link.local
            )?;
        }
        Ok(())
    }
}

struct FilterShow<'a>(&'a Filter);

impl fmt::Display for FilterShow<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Filter::And(c) if c.is_empty() => f.write_str("all"),
            Filter::And(c) | Filter::Or(c) => {
                let sep = if matches!(self.0, Filter::And(_)) {
                    " & "
                } else {
                    " | "
                };
                f.write_str("(")?;
                for (i, child) in c.iter().enumerate() {
                    if i > 0 {
                        f.write_str(sep)?;
                    }
                    write!(f, "{}", FilterShow(child))?;
                }
                f.write_str(")")
            }
            Filter::In(m) => write!(f, "{} in join {}", m.path.join("."), m.via),
            Filter::Test(t) => {
                let value = String::from_utf8_lossy(&value::json::to_vec(&t.value)).into_owned();
                write!(f, "{} {:?} {value}", t.path.join("."), t.op)?;
                if t.op == Op::Between {
                    write!(
                        f,
                        "..{}",
                        String::from_utf8_lossy(&value::json::to_vec(&t.high))
                    )?;
                }
                Ok(())
            }
        }
    }
}

/// Opens a read transaction on `db`, runs `plan` and closes it again before returning, so the
/// caller may await afterwards (protocols call this rather than touching the store).
pub fn run(
    db: &crate::store::Database,
    table: &Table,
    plan: &Plan,
    emit: &mut dyn FnMut(&[u8], &Record<'_>) -> ControlFlow<()>,
) -> Result<SearchStats, SearchError> {
    let txn = db.read()?;
    search(&txn, table, plan, emit)
}

/// The callback of [`run_with`]: the read transaction, then what [`run`]'s callback gets.
pub type EmitWithTxn<'e> = dyn FnMut(&ReadTxn<'_>, &[u8], &Record<'_>) -> ControlFlow<()> + 'e;

/// Like [`run`], and `emit` also gets the read transaction, to read related records of each
/// match in the same snapshot (a selection through relationships, `join::Projection`).
pub fn run_with(
    db: &crate::store::Database,
    table: &Table,
    plan: &Plan,
    emit: &mut EmitWithTxn<'_>,
) -> Result<SearchStats, SearchError> {
    let txn = db.read()?;
    search(&txn, table, plan, &mut |pk, record| emit(&txn, pk, record))
}

/// Opens a read transaction on `db` for `f` and closes it before returning.
pub fn read<R>(
    db: &crate::store::Database,
    f: impl FnOnce(&ReadTxn<'_>) -> R,
) -> Result<R, SearchError> {
    let txn = db.read()?;
    Ok(f(&txn))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query::parse;
    use crate::schema::parse_schema_str;

    const SCHEMA: &str =
        "type Dog @table { id: ID @primaryKey name: String age: Int born: Date tags: [String] }";

    /// Converts the first condition of `query` on the Dog schema: the value as JSON, or the error.
    fn check(query: &str, expected: &str) {
        let def = parse_schema_str(SCHEMA, "t.graphql")
            .unwrap()
            .tables
            .remove(0);
        let parsed = parse(query).unwrap();
        let got = match convert(&def, parsed.filter.as_ref().unwrap(), false) {
            Ok(Filter::Test(t)) => String::from_utf8(value::json::to_vec(&t.value)).unwrap(),
            Ok(other) => format!("{other:?}"),
            Err(e) => format!("{} {e}", e.status()),
        };
        assert_eq!(got, expected, "{query}");
    }

    #[test]
    fn values_convert_to_declared_types() {
        check("age=3", "3");
        check(
            "age=abc",
            "400 Invalid value for attribute age: \"abc\", expecting Int",
        );
        check(
            "age=3000000000",
            "400 Invalid value for attribute age: \"3000000000\", expecting Int",
        );
        check("age=null", "null");
        check(
            "age===null",
            "400 Invalid value for attribute age: \"null\", expecting Int",
        );
        check("name=123", "\"123\"");
        check("name=number:123", "123");
        check("name=true", "\"true\"");
        check("age=boolean:true", "true");
        check("born=0", "\"1970-01-01T00:00:00.000Z\"");
        check(
            "born=date:2024-06-10T06:13:20.125Z",
            "\"2024-06-10T06:13:20.125Z\"",
        );
        check("tags=x", "\"x\"");
        check("age=sw=1", "\"1\"");
        check("color=red", "404 color is not a defined attribute");
    }

    #[test]
    fn relationships_need_a_database() {
        let schema = "type P @table { id: ID @primaryKey brandId: ID brand: B @relationship(from: \"brandId\") }
                      type B @table { id: ID @primaryKey name: String }";
        let def = parse_schema_str(schema, "t.graphql")
            .unwrap()
            .tables
            .remove(0);
        for (query, expected) in [
            (
                "brand.name=x",
                "501 Sorting or querying by the relationship brand is not supported here",
            ),
            ("brandId=x", "ok"),
        ] {
            let parsed = parse(query).unwrap();
            let got = match convert(&def, parsed.filter.as_ref().unwrap(), false) {
                Ok(_) => "ok".to_string(),
                Err(e) => format!("{} {e}", e.status()),
            };
            assert_eq!(got, expected, "{query}");
        }
    }

    #[test]
    fn starts_with_bounds_cover_longer_strings() {
        let test = Test {
            path: vec!["name".into()],
            op: Op::StartsWith,
            value: Value::String("Bo".into()),
            high: Value::Null,
        };
        let Some((Bound::Included(low), Bound::Excluded(high))) = test_bounds(&test) else {
            panic!("bounds")
        };
        for (name, inside) in [("Bo", true), ("Bolt", true), ("Bp", false), ("Bn", false)] {
            let mut k = Vec::new();
            key::encode_unbounded(&Value::String(name.into()), &mut k);
            assert_eq!(k >= low && k < high, inside, "{name}");
        }
        assert_eq!(successor(&[1, 0xFF]), Some(vec![2]));
        assert_eq!(successor(&[0xFF]), None);
    }
}
