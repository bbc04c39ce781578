//! Publish/subscribe: topic filters, the per-core subscription registry, and fan-out of committed
//! changes to bounded per-subscriber queues. MQTT, WebSocket and SSE all subscribe through here.
//!
//! Data path: a database's writer thread commits, then calls the store's `Publisher`, which
//! [`publisher`] builds: it pushes the same `Arc<Commit>` into every core's mesh inbox (in commit
//! order, one sender per database, so each inbox holds a database's commits in order). Each core
//! runs [`run_inbox`], which hands every commit to its [`Registry`]; the registry matches each
//! change against that core's subscriptions and queues one shared [`Event`] (encoded at most once
//! per format on that core) to each matching [`Sink`]. Connection tasks pop their sink and write.
//!
//! Joining (SPEC §6.1 "current state first, then every later event, with no gap and no
//! duplicate"): [`Registry::subscribe`] registers the filter and, without an `.await` in between,
//! opens one read transaction, finds the snapshot's horizon H (the newest audit entry it sees; it
//! scans only entries newer than the last commit this core already dispatched, a handful), reads
//! the current state (or replays the audit log for `startTime`) and queues it, and sets the
//! subscription's floor to H. Live events at or below the floor are already in the snapshot and
//! are skipped; every commit above it was not yet visible and will arrive through the inbox.
//!
//! This module never parses protocol bytes and never writes: it reads the store only to build
//! initial state. Whether a caller may subscribe is the resource layer's decision, made before
//! `subscribe`; a sink made with [`Sink::restricted`] receives every event (initial state
//! included) trimmed to its attribute set, encoded once per (format, set) per event per core.

mod event;
mod sink;
mod topic;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::ops::Bound;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tidepool_io::{race, Either, Inbox, MeshSender, Shutdown};

use crate::change::{Change, ChangeKind, Commit};
use crate::store::{Database, Publisher, StoreError, Table};
use crate::value::{self, Value};

pub use event::{id_text, Encoded, Event, Format, TRIMMED_VARIANTS_MAX};
pub use sink::{Overflow, Ready, Sink, QUEUE_BYTES_MAX, QUEUE_EVENTS_MAX};
pub use topic::{Filter, FilterError, Level, FILTER_BYTES_MAX, LEVELS_MAX};

/// Records (or replayed events) a subscription's initial state may hold; more → `TooLarge`.
pub const INITIAL_EVENTS_MAX: usize = 100_000;
/// `previousCount` at most (SPEC §6.1).
pub const PREVIOUS_COUNT_MAX: usize = 1000;
/// Commits each core's inbox holds before the publisher waits (see [`publisher`]).
pub const INBOX_COMMITS_MAX: usize = 65_536;
/// How long the publisher retries a full inbox before dropping the commit for that core (counted
/// in `commits_lost`, logged): a core stalled this long is broken, and the writer must go on.
pub const INBOX_FULL_WAIT_MAX: Duration = Duration::from_secs(5);
/// Commits a core dispatches per wake-up before yielding to its connections.
const DISPATCH_BATCH_MAX: usize = 256;

/// Per-core counters, written by their core, read by anyone (`/health?verbose`).
#[derive(Debug, Default)]
pub struct Counters {
    pub commits_dispatched: AtomicU64,
    /// Commits the publisher could not hand to this core (inbox full past `INBOX_FULL_WAIT_MAX`).
    pub commits_lost: AtomicU64,
    pub events_queued: AtomicU64,
    /// Live events dropped from full `DropOldest` queues.
    pub events_dropped: AtomicU64,
    pub subscriptions: AtomicU64,
}

/// What a subscription starts with (SPEC §6.1).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Options {
    /// Skip the current state (`omitCurrent`, MQTT Retain Handling 2).
    pub omit_current: bool,
    /// Replay audited events after this version (ms), then live; no current state.
    pub start_time: Option<f64>,
    /// Replay the last N (≤ 1000) matching events, then live; no current state.
    pub previous_count: Option<usize>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum SubscribeError {
    /// `startTime` with `previousCount`, or `previousCount` over 1000 (400).
    BadOptions(&'static str),
    /// The initial state exceeds `INITIAL_EVENTS_MAX`.
    TooLarge,
    Store(StoreError),
}

impl std::fmt::Display for SubscribeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SubscribeError::BadOptions(m) => f.write_str(m),
            SubscribeError::TooLarge => write!(
                f,
                "the initial state exceeds {INITIAL_EVENTS_MAX} events; subscribe more narrowly"
            ),
            SubscribeError::Store(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for SubscribeError {}

impl From<StoreError> for SubscribeError {
    fn from(e: StoreError) -> Self {
        SubscribeError::Store(e)
    }
}

/// Builds the store's `Publisher`: every commit to every core's inbox.
///
/// Runs on the writer thread (never an executor), so when an inbox is full it may wait, briefly
/// and bounded: it retries for up to `INBOX_FULL_WAIT_MAX`, which pushes back on the writer
/// rather than losing events, then drops the commit for that core and counts it.
pub fn publisher(sender: MeshSender<Arc<Commit>>, counters: Vec<Arc<Counters>>) -> Publisher {
    Arc::new(move |commit: Arc<Commit>| {
        for core in 0..sender.core_count() {
            let mut message = commit.clone();
            let mut waited: Option<Instant> = None;
            loop {
                match sender.send(core, message) {
                    Ok(()) => break,
                    Err(tidepool_io::SendError(back)) => {
                        let started = *waited.get_or_insert_with(Instant::now);
                        if started.elapsed() >= INBOX_FULL_WAIT_MAX {
                            if let Some(c) = counters.get(core) {
                                c.commits_lost.fetch_add(1, Ordering::Relaxed);
                            }
                            tracing::error!(
                                "core {core}'s event inbox stayed full for {INBOX_FULL_WAIT_MAX:?}; \
                                 commit {} of {} not delivered to its subscribers",
                                commit.version,
                                commit.database
                            );
                            break;
                        }
                        message = back;
                        std::thread::sleep(Duration::from_micros(200));
                    }
                }
            }
        }
    })
}

/// A core's dispatch loop: drains its inbox in batches into `registry` until shutdown.
pub async fn run_inbox(inbox: Inbox<Arc<Commit>>, registry: Rc<Registry>, shutdown: Shutdown) {
    let mut batch = Vec::with_capacity(DISPATCH_BATCH_MAX);
    loop {
        match race(
            inbox.recv_batch(&mut batch, DISPATCH_BATCH_MAX),
            shutdown.wait(),
        )
        .await
        {
            Either::Left(_) => {}
            Either::Right(()) => return,
        }
        for commit in batch.drain(..) {
            registry.dispatch(&commit);
        }
    }
}

/// Sees every commit its core dispatches, before subscriptions are matched: for consumers that
/// match commits themselves (MQTT sessions, whose per-session rules — one delivery at the highest
/// QoS, durable positions, shared groups — live in `protocol::mqtt`).
pub type CommitListener = Box<dyn Fn(&Arc<Commit>)>;

/// Identifies a subscription within its core's registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SubscriptionId(u64);

struct Entry {
    id: SubscriptionId,
    filter: Filter,
    sink: Sink,
    /// Live events at or below this version are already in the initial state.
    floor: f64,
}

/// One table's subscriptions: exact record filters by id, and the rest (wildcards, bare table)
/// checked one by one. Exact filters are the common case and cost one hash lookup per change.
#[derive(Default)]
struct TableSubs {
    exact: HashMap<String, Vec<Entry>>,
    other: Vec<Entry>,
}

impl TableSubs {
    fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.other.is_empty()
    }
}

type TableKey = (Arc<str>, Arc<str>);

/// The subscriptions of one core's connections. Not `Send`: each core has its own.
pub struct Registry {
    tables: RefCell<HashMap<TableKey, TableSubs>>,
    /// Subscription → its table, for unsubscribe.
    index: RefCell<HashMap<SubscriptionId, TableKey>>,
    next_id: Cell<u64>,
    /// Incremented per dispatched change, so a sink takes a change once across its filters.
    stamp: Cell<u64>,
    /// Per database, the newest commit this core dispatched; every older one was dispatched too.
    dispatched: RefCell<HashMap<Arc<str>, f64>>,
    /// A version at or above every commit made before this registry existed.
    start_version: f64,
    counters: Arc<Counters>,
    listeners: RefCell<Vec<CommitListener>>,
}

/// A registered subscription; dropping it unsubscribes.
pub struct Subscription {
    registry: Rc<Registry>,
    id: SubscriptionId,
}

impl Subscription {
    pub fn id(&self) -> SubscriptionId {
        self.id
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.registry.unsubscribe(self.id);
    }
}

impl Registry {
    /// `start_version`: the store clock's next version, taken before any core serves a write.
    pub fn new(start_version: f64, counters: Arc<Counters>) -> Registry {
        Registry {
            tables: RefCell::new(HashMap::new()),
            index: RefCell::new(HashMap::new()),
            next_id: Cell::new(1),
            stamp: Cell::new(0),
            dispatched: RefCell::new(HashMap::new()),
            start_version,
            counters,
            listeners: RefCell::new(Vec::new()),
        }
    }

    /// Adds a listener that sees every commit this core dispatches, in order.
    pub fn add_listener(&self, listener: CommitListener) {
        self.listeners.borrow_mut().push(listener);
    }

    pub fn counters(&self) -> &Arc<Counters> {
        &self.counters
    }

    pub fn subscription_count(&self) -> usize {
        self.index.borrow().len()
    }

    /// Subscribes `sink` to `filter` on `table` of `db` (the export the filter names, resolved
    /// by the caller), queues the initial state per `options`, and returns the subscription.
    /// Synchronous: no event can be dispatched between registering and reading the snapshot.
    pub fn subscribe(
        self: &Rc<Self>,
        sink: &Sink,
        db: &Database,
        table: &Table,
        filter: Filter,
        options: &Options,
    ) -> Result<Subscription, SubscribeError> {
        if options.start_time.is_some() && options.previous_count.is_some() {
            return Err(SubscribeError::BadOptions(
                "startTime and previousCount cannot be combined",
            ));
        }
        if options
            .previous_count
            .is_some_and(|n| n > PREVIOUS_COUNT_MAX)
        {
            return Err(SubscribeError::BadOptions("previousCount is at most 1000"));
        }
        let txn = db.read()?;
        let since = self
            .dispatched
            .borrow()
            .get(&*db.name)
            .copied()
            .unwrap_or(self.start_version);
        let mut horizon = since;
        for item in txn.audit_range(Bound::Excluded(since), Bound::Unbounded)? {
            horizon = horizon.max(item?.0);
        }
        let mut initial: Vec<Event> = Vec::new();
        if let Some(start) = options.start_time {
            self.replay(
                &txn,
                db,
                table,
                &filter,
                Bound::Excluded(start),
                horizon,
                None,
                &mut initial,
            )?;
        } else if let Some(count) = options.previous_count {
            self.replay(
                &txn,
                db,
                table,
                &filter,
                Bound::Unbounded,
                horizon,
                Some(count),
                &mut initial,
            )?;
        } else if !options.omit_current {
            read_current(&txn, db, table, &filter, &mut initial)?;
        }
        drop(txn);
        for event in initial {
            sink.push_initial(Rc::new(event));
        }

        let id = SubscriptionId(self.next_id.get());
        self.next_id.set(id.0 + 1);
        let key: TableKey = (db.name.clone(), table.name.clone());
        let entry = Entry {
            id,
            filter,
            sink: sink.clone(),
            floor: horizon,
        };
        let mut tables = self.tables.borrow_mut();
        let subs = tables.entry(key.clone()).or_default();
        match entry.filter.exact_id() {
            Some(exact) => subs.exact.entry(exact).or_default().push(entry),
            None => subs.other.push(entry),
        }
        self.index.borrow_mut().insert(id, key);
        self.counters.subscriptions.fetch_add(1, Ordering::Relaxed);
        Ok(Subscription {
            registry: self.clone(),
            id,
        })
    }

    pub fn unsubscribe(&self, id: SubscriptionId) {
        let Some(key) = self.index.borrow_mut().remove(&id) else {
            return;
        };
        let mut tables = self.tables.borrow_mut();
        if let Some(subs) = tables.get_mut(&key) {
            subs.other.retain(|e| e.id != id);
            subs.exact.retain(|_, entries| {
                entries.retain(|e| e.id != id);
                !entries.is_empty()
            });
            if subs.is_empty() {
                tables.remove(&key);
            }
        }
        self.counters.subscriptions.fetch_sub(1, Ordering::Relaxed);
    }

    /// Matches every change of `commit` against this core's subscriptions and queues it.
    pub fn dispatch(&self, commit: &Arc<Commit>) {
        self.counters
            .commits_dispatched
            .fetch_add(1, Ordering::Relaxed);
        {
            let mut dispatched = self.dispatched.borrow_mut();
            match dispatched.get_mut(&*commit.database) {
                Some(v) => *v = v.max(commit.version),
                None => {
                    dispatched.insert(commit.database.clone(), commit.version);
                }
            }
        }
        for listener in self.listeners.borrow().iter() {
            listener(commit);
        }
        let tables = self.tables.borrow();
        if tables.is_empty() {
            return;
        }
        for (index, change) in commit.changes.iter().enumerate() {
            let key: TableKey = (commit.database.clone(), change.table.clone());
            let Some(subs) = tables.get(&key) else {
                continue;
            };
            let stamp = self.stamp.get() + 1;
            self.stamp.set(stamp);
            // Built on the first match only, then shared by every matching sink.
            let mut event: Option<Rc<Event>> = None;
            let id = id_text(&change.key);
            let exact = id.as_deref().and_then(|i| subs.exact.get(i));
            for entry in exact.into_iter().flatten().chain(subs.other.iter()) {
                if commit.version <= entry.floor || !entry.filter.matches(id.as_deref()) {
                    continue;
                }
                let event = event.get_or_insert_with(|| Rc::new(Event::new(commit.clone(), index)));
                entry.sink.push_live(event, stamp);
            }
        }
    }

    /// Audited events of `table` matching `filter` with versions in (`from`, `to`], oldest
    /// first; with `last`, only the newest `last` of them.
    #[allow(clippy::too_many_arguments)]
    fn replay(
        &self,
        txn: &crate::store::ReadTxn<'_>,
        db: &Database,
        table: &Table,
        filter: &Filter,
        from: Bound<f64>,
        to: f64,
        last: Option<usize>,
        out: &mut Vec<Event>,
    ) -> Result<(), SubscribeError> {
        let mut kept: std::collections::VecDeque<Event> = std::collections::VecDeque::new();
        for item in txn.audit_range(from, Bound::Included(to))? {
            let (version, archived) = item?;
            let entry = value::deserialize(archived)
                .map_err(|e| StoreError::Corrupt(format!("audit entry: {e}")))?;
            for (t, key, kind, payload) in audit_changes(&entry) {
                if *t != *table.name || !filter.matches(id_text(key).as_deref()) {
                    continue;
                }
                let change = Change {
                    table: table.name.clone(),
                    key: key.clone(),
                    kind,
                    value: (kind != ChangeKind::Delete).then(|| payload.clone()),
                };
                kept.push_back(Event::single(db.name.clone(), version, version, change));
                match last {
                    Some(n) if kept.len() > n => {
                        kept.pop_front();
                    }
                    None if kept.len() > INITIAL_EVENTS_MAX => {
                        return Err(SubscribeError::TooLarge)
                    }
                    _ => {}
                }
            }
        }
        out.extend(kept);
        Ok(())
    }
}

/// The changes one audit log entry records (`entries` of `[table, key, type, value, …]`):
/// table, key, kind and the record or message (`Null` for deletes), in commit order. Parts that
/// do not parse are skipped. Shared by every audit replay (subscriptions here, MQTT durable
/// sessions).
pub fn audit_changes(entry: &Value) -> impl Iterator<Item = (&str, &Value, ChangeKind, &Value)> {
    let entries = match entry.get("entries") {
        Some(Value::Array(entries)) => entries.as_slice(),
        _ => &[],
    };
    entries.iter().filter_map(|e| {
        let Value::Array(parts) = e else { return None };
        let [Value::String(table), key, Value::String(kind), payload, ..] = parts.as_slice() else {
            return None;
        };
        let kind = match kind.as_str() {
            "put" => ChangeKind::Put,
            "delete" => ChangeKind::Delete,
            "message" => ChangeKind::Message,
            _ => return None,
        };
        Some((table.as_str(), key, kind, payload))
    })
}

/// The current state of every live record `filter` matches, as `put` events.
fn read_current(
    txn: &crate::store::ReadTxn<'_>,
    db: &Database,
    table: &Table,
    filter: &Filter,
    out: &mut Vec<Event>,
) -> Result<(), SubscribeError> {
    let mut push =
        |key: Value, header: &crate::store::Header, archived| -> Result<(), SubscribeError> {
            if out.len() >= INITIAL_EVENTS_MAX {
                return Err(SubscribeError::TooLarge);
            }
            let value = value::deserialize(archived)
                .map_err(|e| StoreError::Corrupt(format!("record: {e}")))?;
            out.push(Event::single(
                db.name.clone(),
                header.version,
                header.version,
                Change {
                    table: table.name.clone(),
                    key,
                    kind: ChangeKind::Put,
                    value: Some(value),
                },
            ));
            Ok(())
        };
    if let Some(exact) = filter.exact_id() {
        // An id that does not parse for this key type names no record; events may still come.
        if let Ok(key) = crate::resource::parse_id(&table.def, &exact) {
            if let Some(record) = txn.get(table, &key)? {
                push(key, &record.header, record.value)?;
            }
        }
        return Ok(());
    }
    if filter.levels().is_empty() {
        return Ok(()); // the bare table topic carries messages only
    }
    for item in txn.scan(table, false)? {
        let (encoded, record) = item?;
        let key = value::key::decode(encoded)
            .map_err(|e| StoreError::Corrupt(format!("primary key: {e:?}")))?;
        if filter.matches(id_text(&key).as_deref()) {
            push(key, &record.header, record.value)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
