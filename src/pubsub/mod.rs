//! Publish/subscribe: topic filters, the per-core subscription registry, and fan-out of committed
//! changes to bounded per-subscriber queues. MQTT, WebSocket and SSE all subscribe through here.
//!
//! Data path: a database's writer thread commits a group, then calls the store's `Publisher` with
//! the group's commits, which [`publisher`] builds: it pushes the same `Arc<Commit>`s into every
//! core's mesh inbox (in commit order, one sender per database, so each inbox holds a database's
//! commits in order) and wakes each core once. Each core
//! runs [`run_inbox`], which hands every commit to its [`Registry`]; the registry matches each
//! change against that core's subscriptions and queues one shared [`Event`] (encoded at most once
//! per format on that core) to each matching [`Sink`]. Connection tasks pop their sink and write.
//!
//! Joining (docs/realtime.md "current state first, then every later event, with no gap and no
//! duplicate"): [`Registry::subscribe`] registers the filter and, without an `.await` in between,
//! opens one read transaction and finds the snapshot's horizon H (the newest audit entry it sees;
//! it scans only entries newer than the last commit this core already dispatched, a handful),
//! the subscription's floor: live events at or below it are already in that snapshot and are
//! skipped; every commit above it was not yet visible and will arrive through the inbox. A single
//! record (or `previousCount`, at most 1,000 events) is read and queued at once. A table's (or a
//! prefix's) current state and a `startTime` replay are streamed instead ([`state`]): read a
//! chunk at a time, each in its own short transaction, as the subscriber takes events, and joined
//! to the live stream chunk by chunk; so a subscriber that stops reading holds at most its queue
//! bound plus one chunk, whatever the table size, and no read transaction.
//!
//! This module never parses protocol bytes and never writes: it reads the store only to build
//! initial state. Whether a caller may subscribe is the resource layer's decision, made before
//! `subscribe`; a sink made with [`Sink::restricted`] receives every event (initial state
//! included) trimmed to its attribute set, encoded once per (format, set) per event per core.

mod event;
mod sink;
pub mod state;
mod topic;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::ops::Bound;
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tidepool_io::{race, Either, Inbox, MeshSender, Shutdown};

use crate::change::{Change, ChangeKind, Commit};
use crate::store::{Database, Publisher, StoreError, Table};
use crate::value::{self, ArchivedValue, Kind, Value, ValueView};
use state::{AuditCursor, Chunk, StateCursor};

pub use event::{id_text, Encoded, Event, Format, TRIMMED_VARIANTS_MAX};
pub use sink::{Overflow, Ready, Sink, QUEUE_BYTES_MAX, QUEUE_EVENTS_MAX};
pub use topic::{Filter, FilterError, Level, FILTER_BYTES_MAX, LEVELS_MAX};

/// `previousCount` at most (docs/realtime.md).
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
    /// Encoded bytes of events held in this core's subscriber queues now (live and initial
    /// state), as the queue bounds count them.
    pub queued_bytes: AtomicU64,
    /// Bytes of this core's MQTT connections' outbound buffers and QoS ≥ 1 backlogs, as of the
    /// last keep-alive sweep (every 250 ms).
    pub mqtt_queued_bytes: AtomicU64,
    /// Bytes of buffer capacity this core's MQTT connections hold (read halves and outbound
    /// buffers), as of the last keep-alive sweep: none for an idle plain connection.
    pub mqtt_buffer_bytes: AtomicU64,
}

/// What a subscription starts with (docs/realtime.md).
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
    Store(StoreError),
}

impl std::fmt::Display for SubscribeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SubscribeError::BadOptions(m) => f.write_str(m),
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
/// A commit group's commits go into each core's inbox together and the core is woken once for
/// them, after the last: woken per commit, a core sharing the writer's CPU would be switched to
/// for each one and dispatch them one at a time, so a subscriber of several of them would get a
/// write (a TCP segment) per event instead of one for all (bench/README, "One wake per commit
/// group").
///
/// Runs on the writer thread (never an executor), so when an inbox is full it may wait, briefly
/// and bounded: it wakes the core to drain what is queued and retries for up to
/// `INBOX_FULL_WAIT_MAX`, which pushes back on the writer rather than losing events, then drops
/// the commit for that core and counts it.
pub fn publisher(sender: MeshSender<Arc<Commit>>, counters: Vec<Arc<Counters>>) -> Publisher {
    Arc::new(move |commits: &[Arc<Commit>]| {
        for core in 0..sender.core_count() {
            for commit in commits {
                push_waiting(&sender, core, commit, &counters);
            }
            sender.wake(core);
        }
    })
}

/// Queues `commit` for `core`, waiting (bounded) while its inbox is full.
fn push_waiting(
    sender: &MeshSender<Arc<Commit>>,
    core: usize,
    commit: &Arc<Commit>,
    counters: &[Arc<Counters>],
) {
    let mut message = commit.clone();
    let mut waited: Option<Instant> = None;
    loop {
        match sender.push(core, message) {
            Ok(()) => return,
            Err(tidepool_io::SendError(back)) => {
                // What is queued already is the core's to drain before any more fits.
                sender.wake(core);
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
                    return;
                }
                message = back;
                std::thread::sleep(Duration::from_micros(200));
            }
        }
    }
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

    /// Every commit of `database` up to this version was dispatched on this core.
    pub fn since(&self, database: &str) -> f64 {
        self.dispatched
            .borrow()
            .get(database)
            .copied()
            .unwrap_or(self.start_version)
    }

    /// Subscribes `sink` to `filter` on `table` of `db` (the export the filter names, resolved
    /// by the caller), sets up the initial state per `options`, and returns the subscription.
    /// Synchronous: no event can be dispatched between registering and reading the snapshot's
    /// horizon. A record's state is queued now; a table's (or prefix's) state and a `startTime`
    /// replay stream as the sink is read (see [`state`]).
    pub fn subscribe(
        self: &Rc<Self>,
        sink: &Sink,
        db: &Arc<Database>,
        table: &Arc<Table>,
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
        let horizon = state::horizon(&txn, self.since(&db.name))?;
        let mut initial: Vec<Event> = Vec::new();
        let mut source = None;
        if let Some(start) = options.start_time {
            source = Some(Source::Audit {
                cursor: AuditCursor::new(db.clone(), start),
                filter: filter.clone(),
            });
        } else if let Some(count) = options.previous_count {
            replay_last(&txn, db, table, &filter, horizon, count, &mut initial)?;
        } else if options.omit_current || filter.levels().is_empty() {
            // Nothing to send first (the bare table topic carries messages only).
        } else if let Some(exact) = filter.exact_id() {
            read_record(&txn, db, table, &exact, &mut initial)?;
        } else {
            source = Some(Source::Records {
                cursor: StateCursor::new(db.clone(), table.clone()),
                filter: filter.clone(),
            });
        }
        drop(txn);
        for event in initial {
            sink.push_initial(Rc::new(event));
        }
        if let Some(source) = source {
            sink.stream(Stream {
                source,
                registry: Rc::downgrade(self),
                database: db.name.clone(),
                table: table.name.clone(),
            });
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
        for listener in self.listeners.borrow().iter() {
            listener(commit);
        }
        self.match_changes(commit);
        // Only now: while this commit is matched, a state chunk whose snapshot held it must not
        // count as settled (see `state`).
        let mut dispatched = self.dispatched.borrow_mut();
        match dispatched.get_mut(&*commit.database) {
            Some(v) => *v = v.max(commit.version),
            None => {
                dispatched.insert(commit.database.clone(), commit.version);
            }
        }
    }

    fn match_changes(&self, commit: &Arc<Commit>) {
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
            // The change's key encoded, for streaming subscriptions only (see `state`).
            let mut encoded_key: Option<Vec<u8>> = None;
            for entry in exact.into_iter().flatten().chain(subs.other.iter()) {
                if commit.version <= entry.floor || !entry.filter.matches(id.as_deref()) {
                    continue;
                }
                if entry
                    .sink
                    .stream_covers(change, commit.version, &mut encoded_key)
                {
                    continue;
                }
                let event = event.get_or_insert_with(|| Rc::new(Event::new(commit.clone(), index)));
                entry.sink.push_live(event, stamp);
            }
        }
    }
}

/// The change items of one audit log entry (`entries` of `[table, key, type, value, …]`), in
/// commit order; none when it has no such list.
pub fn audit_items<'a, V: ValueView<'a>>(entry: V) -> Option<V::Items> {
    match entry.get("entries").map(ValueView::kind) {
        Some(Kind::Array(items)) => Some(items),
        _ => None,
    }
}

/// One change item of an audit entry: table, key, kind and the record or message (`Null` for
/// deletes); `None` when it does not parse.
pub fn audit_change<'a, V: ValueView<'a>>(item: V) -> Option<(&'a str, V, ChangeKind, V)> {
    let Kind::Array(mut parts) = item.kind() else {
        return None;
    };
    let Kind::String(table) = parts.next()?.kind() else {
        return None;
    };
    let key = parts.next()?;
    let kind = match parts.next()?.kind() {
        Kind::String("put" | "insert" | "update" | "upsert") => ChangeKind::Put,
        Kind::String("delete") => ChangeKind::Delete,
        Kind::String("message") => ChangeKind::Message,
        _ => return None,
    };
    Some((table, key, kind, parts.next()?))
}

/// The changes one audit log entry records, in commit order; parts that do not parse are
/// skipped. Shared by every audit replay (subscriptions here, MQTT durable sessions).
pub fn audit_changes<'a, V: ValueView<'a>>(
    entry: V,
) -> impl Iterator<Item = (&'a str, V, ChangeKind, V)> {
    audit_items(entry)
        .into_iter()
        .flatten()
        .filter_map(audit_change)
}

/// One audited change (of entry `version`) as an event, if it is of `table` and `filter`
/// matches it; only then are its key and value copied out of the map.
fn audit_event(
    database: &Arc<str>,
    table: &Arc<str>,
    filter: &Filter,
    version: f64,
    (t, key, kind, payload): (&str, &ArchivedValue, ChangeKind, &ArchivedValue),
) -> Result<Option<Event>, StoreError> {
    if t != &**table {
        return Ok(None);
    }
    let corrupt = |e| StoreError::Corrupt(format!("audit entry: {e}"));
    let key = value::deserialize(key).map_err(corrupt)?;
    if !filter.matches(id_text(&key).as_deref()) {
        return Ok(None);
    }
    let value = match kind {
        ChangeKind::Delete => None,
        _ => Some(value::deserialize(payload).map_err(corrupt)?),
    };
    let change = Change {
        table: table.clone(),
        key,
        kind,
        value,
    };
    Ok(Some(Event::single(
        database.clone(),
        version,
        version,
        change,
    )))
}

/// The last `count` audited events of `table` matching `filter` up to `to`, oldest first.
fn replay_last(
    txn: &crate::store::ReadTxn<'_>,
    db: &Database,
    table: &Table,
    filter: &Filter,
    to: f64,
    count: usize,
    out: &mut Vec<Event>,
) -> Result<(), SubscribeError> {
    let mut kept: std::collections::VecDeque<Event> = std::collections::VecDeque::new();
    for item in txn.audit_range(Bound::Unbounded, Bound::Included(to))? {
        let (version, entry) = item?;
        for change in audit_changes(entry) {
            if let Some(event) = audit_event(&db.name, &table.name, filter, version, change)? {
                kept.push_back(event);
                if kept.len() > count {
                    kept.pop_front();
                }
            }
        }
    }
    out.extend(kept);
    Ok(())
}

/// A live record as a `put` event (the initial state's form).
fn record_event(
    database: &Arc<str>,
    table: &Arc<str>,
    key: Value,
    record: &crate::store::Record<'_>,
) -> Result<Event, StoreError> {
    let value = value::deserialize(record.value)
        .map_err(|e| StoreError::Corrupt(format!("record: {e}")))?;
    Ok(Event::single(
        database.clone(),
        record.header.version,
        record.header.version,
        Change {
            table: table.clone(),
            key,
            kind: ChangeKind::Put,
            value: Some(value),
        },
    ))
}

/// The current state of the one record `exact` names, if it is live.
fn read_record(
    txn: &crate::store::ReadTxn<'_>,
    db: &Database,
    table: &Table,
    exact: &str,
    out: &mut Vec<Event>,
) -> Result<(), SubscribeError> {
    // An id that does not parse for this key type names no record; events may still come.
    if let Ok(key) = crate::resource::parse_id(&table.def, exact) {
        if let Some(record) = txn.get(table, &key)? {
            out.push(record_event(&db.name, &table.name, key, &record)?);
        }
    }
    Ok(())
}

/// Where a streaming subscription's initial state comes from.
enum Source {
    /// The current state of the records the filter matches.
    Records { cursor: StateCursor, filter: Filter },
    /// Audited events after `startTime`.
    Audit { cursor: AuditCursor, filter: Filter },
}

/// A subscription's initial state still streaming, held by its sink.
pub(crate) struct Stream {
    source: Source,
    registry: Weak<Registry>,
    database: Arc<str>,
    table: Arc<str>,
}

impl Stream {
    /// Every commit of the database up to this version was dispatched on this core.
    fn since(&self) -> f64 {
        self.registry
            .upgrade()
            .map_or(f64::INFINITY, |r| r.since(&self.database))
    }

    /// Reads the next chunk (at most `max` events) into `out`.
    fn read(&mut self, max: usize, out: &mut Vec<Event>) -> Result<Chunk, StoreError> {
        let since = self.since();
        let (database, table) = (&self.database, &self.table);
        match &mut self.source {
            Source::Records { cursor, filter } => {
                cursor.read_chunk(since, max.min(state::CHUNK_RECORDS_MAX), |key, record| {
                    let key = value::key::decode(key)
                        .map_err(|e| StoreError::Corrupt(format!("primary key: {e:?}")))?;
                    if !filter.matches(id_text(&key).as_deref()) {
                        return Ok(None);
                    }
                    let event = record_event(database, table, key, &record)?;
                    out.push(event);
                    Ok(Some(record.size))
                })
            }
            Source::Audit { cursor, filter } => cursor.read_chunk(
                since,
                max.min(state::CHUNK_RECORDS_MAX),
                |version, entry, skip, room| {
                    // A bulk write's entry may hold 100,000 changes: resumable inside.
                    let Some(mut items) = audit_items(entry) else {
                        return Ok((0, None));
                    };
                    if skip > 0 {
                        items.nth(skip - 1);
                    }
                    let (mut taken, mut at) = (0, skip);
                    for item in items {
                        if taken >= room || at - skip >= state::CHUNK_SCAN_MAX {
                            return Ok((taken, Some(at)));
                        }
                        at += 1;
                        let Some(change) = audit_change(item) else {
                            continue;
                        };
                        if let Some(event) = audit_event(database, table, filter, version, change)?
                        {
                            out.push(event);
                            taken += 1;
                        }
                    }
                    Ok((taken, None))
                },
            ),
        }
    }

    /// Whether the state already holds (or will hold) this live change: then it is skipped.
    fn covers(&mut self, change: &Change, version: f64, encoded: &mut Option<Vec<u8>>) -> bool {
        let since = self.since();
        match &mut self.source {
            Source::Audit { cursor, .. } => cursor.covers(version),
            Source::Records { .. } if change.kind == ChangeKind::Message => false,
            Source::Records { cursor, .. } => {
                cursor.settle(since);
                if cursor.is_settled() {
                    return false;
                }
                if encoded.is_none() {
                    let mut out = Vec::with_capacity(32);
                    if value::key::encode(&change.key, &mut out).is_err() {
                        return false;
                    }
                    *encoded = Some(out);
                }
                encoded
                    .as_deref()
                    .is_some_and(|key| cursor.covers(key, version))
            }
        }
    }

    /// Read to the end and joined: the sink can forget it.
    fn is_finished(&mut self) -> bool {
        let since = self.since();
        match &mut self.source {
            Source::Audit { cursor, .. } => cursor.is_settled(since),
            Source::Records { cursor, .. } => {
                cursor.settle(since);
                cursor.is_settled()
            }
        }
    }

    /// More can be read now (false when done, or waiting for dispatch to catch up).
    fn is_readable(&mut self) -> bool {
        let since = self.since();
        match &mut self.source {
            Source::Audit { cursor, .. } => !cursor.is_done(),
            Source::Records { cursor, .. } => {
                cursor.settle(since);
                !cursor.is_done() && !cursor.is_blocked()
            }
        }
    }

    /// Not yet read to the end.
    fn is_pending(&self) -> bool {
        match &self.source {
            Source::Audit { cursor, .. } => !cursor.is_done(),
            Source::Records { cursor, .. } => !cursor.is_done(),
        }
    }
}

#[cfg(test)]
mod tests;
