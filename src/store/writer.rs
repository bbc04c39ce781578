//! The database's writer thread: the one place that opens a write transaction, assigns versions
//! and orders the database's changes.
//!
//! It blocks on its channel (it is a plain thread, never an executor), drains up to
//! `commit_batch_max` queued requests, applies each in a nested transaction of one LMDB write
//! transaction, commits once (one fsync for the whole group), then answers every requester and
//! publishes each request's [`Commit`] once the group is durable: with `storage.sync`, after the
//! next group's commit or an explicit sync (docs/design.md "Pipelined commits").

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};
use heed::{Env, RwTxn, WithoutTls};
use tidepool_io::{oneshot, OneshotReceiver, OneshotSender, WakeBatch};

use super::condition::{Condition, ConditionFailed};
use super::entry::Header;
use super::layout::{self, StoredTable};
use super::replicate::{ApplyJob, ApplyOutcome};
use super::{
    Change, ChangeKind, Clock, Commit, Database, Publisher, StoreError, StoreOptions, Table,
    KEY_BYTES_MAX,
};
use crate::change::Extras;
use crate::schema::{FieldType, KeyType, TableDef};
use crate::value::{self, Object, Value};

/// One write, as every protocol expresses it.
#[derive(Debug, Clone)]
pub enum WriteOp {
    Put {
        table: String,
        /// The id from the URL or topic; wins over the body's key.
        key: Option<Value>,
        record: Value,
        mode: PutMode,
        /// Expiry in seconds from now, overriding the table's `expiration`.
        expires_in_s: Option<f64>,
    },
    Delete {
        table: String,
        key: Value,
    },
    /// Sets one attribute of the live record `key` to `value` only if it currently equals
    /// `expected` (a compare-and-set checked here, in the writer, so no other write can land
    /// between the check and the put); otherwise the op reports `Skipped`. Used to upgrade a
    /// password hash without undoing a concurrent password change.
    Swap {
        table: String,
        key: Value,
        attribute: String,
        expected: Value,
        value: Value,
    },
    /// A condition on the live record `key` of `table`, checked here against the committed
    /// state; when it fails the whole request is rolled back with [`WriteError::Condition`].
    /// Placed before the op it guards (see `condition.rs`); it adds no entry to the results.
    Require {
        table: String,
        key: Value,
        condition: Condition,
    },
    /// A message to subscribers of `table`/`key`: audited and published, the record untouched.
    Message {
        table: String,
        key: Option<Value>,
        payload: Value,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutMode {
    /// Replace the whole record; create it if absent (REST PUT, retained MQTT publish).
    Replace,
    /// Create; an existing record is left alone and the op reports `Skipped` (POST, `insert`).
    Insert,
    /// Merge into an existing record; absent → `Skipped` (`update`).
    Update,
    /// Merge, or create when absent (PATCH, `upsert`).
    Upsert,
}

/// One atomic unit: every op applies, or none does.
#[derive(Debug, Clone, Default)]
pub struct WriteRequest {
    pub ops: Vec<WriteOp>,
    pub user: Option<String>,
    /// Handed to subscribers with the commit, never stored (see [`crate::change::Extras`]).
    pub extras: Option<crate::change::Extras>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum OpResult {
    Written { key: Value, created: bool },
    Skipped { key: Value },
    Deleted { key: Value, existed: bool },
    Published,
}

#[derive(Debug, Clone, PartialEq)]
pub struct WriteOutcome {
    pub version: f64,
    pub results: Vec<OpResult>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum WriteError {
    /// The request is wrong (400): bad key, body not an object, …
    Invalid(String),
    NoSuchTable(String),
    /// The queue is full, or the request waited longer than `storage.maxTransactionQueueTime` (503).
    Overloaded(String),
    /// The writer has stopped (shutdown) (503).
    Stopped,
    Storage(StoreError),
    /// A [`WriteOp::Require`] did not hold at commit; nothing of the request was written.
    Condition(ConditionFailed),
}

impl std::fmt::Display for WriteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WriteError::Invalid(m) | WriteError::Overloaded(m) => f.write_str(m),
            WriteError::NoSuchTable(t) => write!(f, "Table '{t}' does not exist"),
            WriteError::Stopped => f.write_str("the database is shutting down"),
            WriteError::Storage(e) => e.fmt(f),
            WriteError::Condition(c) => c.fmt(f),
        }
    }
}

impl From<heed::Error> for WriteError {
    fn from(e: heed::Error) -> Self {
        WriteError::Storage(e.into())
    }
}

impl From<StoreError> for WriteError {
    fn from(e: StoreError) -> Self {
        WriteError::Storage(e)
    }
}

pub(super) enum Job {
    Write {
        request: WriteRequest,
        reply: OneshotSender<Result<WriteOutcome, WriteError>>,
        queued_at: Instant,
    },
    EnsureTable {
        def: TableDef,
        reply: mpsc::Sender<Result<Arc<Table>, StoreError>>,
    },
    /// A schema change asked for by a core (Operations API); answered through a oneshot so the
    /// core awaits without blocking.
    Schema {
        change: SchemaChange,
        reply: OneshotSender<Result<Option<Arc<Table>>, StoreError>>,
    },
    /// A peer's transaction, snapshot chunk or cursors (replication), committed in the group.
    Apply {
        job: ApplyJob,
        reply: OneshotSender<Result<ApplyOutcome, WriteError>>,
        queued_at: Instant,
    },
    /// Removes one table's old audit entries (`prune.rs`); a job thread waits on the reply.
    PruneAudit {
        table: String,
        before: f64,
        after: Option<f64>,
        reply: mpsc::Sender<Result<super::PruneStep, StoreError>>,
    },
    Stop,
}

/// A record as a put stored it: the value and its expiry, for the audit entry.
type Stored = (Value, Option<f64>);

/// One request of a commit group: a local write or a replicated one.
enum Item {
    Local(
        WriteRequest,
        OneshotSender<Result<WriteOutcome, WriteError>>,
    ),
    Apply(ApplyJob, OneshotSender<Result<ApplyOutcome, WriteError>>),
}

/// The writer's answer to a [`SchemaChange`]: the table as it now is (`None` after a drop).
pub type SchemaReply = OneshotReceiver<Result<Option<Arc<Table>>, StoreError>>;

/// Rewrites a table definition on the writer thread, where no other change can interleave.
pub type AlterFn = Box<dyn FnOnce(&TableDef) -> Result<TableDef, StoreError> + Send>;

/// Table-level changes that run on the writer thread, in order with the writes around them.
pub enum SchemaChange {
    /// Create a table; `StoreError::TableExists` when the name is taken.
    Create(TableDef),
    /// Replace the current definition of a table by what `alter` makes of it (new attributes,
    /// dropped attributes); indexes follow the new definition.
    Alter { table: String, alter: AlterFn },
    /// Remove a table: its records, indexes and stored definition. Answers `None`.
    Drop(String),
}

/// The writer's queue: unbounded underneath, bounded by a depth count. crossbeam's `bounded`
/// allocates and touches every slot up front (65,536 jobs of a few hundred bytes per database
/// is tens of MB at idle); this costs memory only for what is actually queued.
pub(super) struct JobSender {
    tx: Sender<Job>,
    depth: Arc<AtomicUsize>,
    depth_max: usize,
}

pub(super) struct JobReceiver {
    rx: Receiver<Job>,
    depth: Arc<AtomicUsize>,
}

enum QueueError {
    Full,
    Stopped,
}

impl JobSender {
    /// Queues `job` unless `depth_max` jobs wait already.
    fn try_send(&self, job: Job) -> Result<(), QueueError> {
        if self.depth.fetch_add(1, Ordering::AcqRel) >= self.depth_max {
            self.depth.fetch_sub(1, Ordering::AcqRel);
            return Err(QueueError::Full);
        }
        self.send(job)
    }

    /// Queues `job` past the bound: for start-up and stop, which must not be refused.
    fn send(&self, job: Job) -> Result<(), QueueError> {
        self.tx.send(job).map_err(|_| QueueError::Stopped)
    }
}

impl JobReceiver {
    fn took(&self, job: Job) -> Job {
        // Saturating: jobs sent past the bound by `send` were never counted.
        let _ = self
            .depth
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| d.checked_sub(1));
        job
    }

    fn recv(&self) -> Option<Job> {
        self.rx.recv().ok().map(|job| self.took(job))
    }

    /// `Ok(None)`: nothing came within `timeout`; `Err(())`: every sender is gone.
    fn recv_timeout(&self, timeout: std::time::Duration) -> Result<Option<Job>, ()> {
        match self.rx.recv_timeout(timeout) {
            Ok(job) => Ok(Some(self.took(job))),
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => Ok(None),
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => Err(()),
        }
    }

    fn try_recv(&self) -> Option<Job> {
        self.rx.try_recv().ok().map(|job| self.took(job))
    }

    /// Jobs queued now.
    fn len(&self) -> usize {
        self.rx.len()
    }
}

pub(super) struct WriterHandle {
    tx: JobSender,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl WriterHandle {
    pub fn new(queue_max: usize) -> (WriterHandle, JobReceiver) {
        let (tx, rx) = crossbeam_channel::unbounded();
        let depth = Arc::new(AtomicUsize::new(0));
        (
            WriterHandle {
                tx: JobSender {
                    tx,
                    depth: depth.clone(),
                    depth_max: queue_max,
                },
                thread: Mutex::new(None),
            },
            JobReceiver { rx, depth },
        )
    }

    pub fn submit(
        &self,
        request: WriteRequest,
    ) -> Result<OneshotReceiver<Result<WriteOutcome, WriteError>>, WriteError> {
        self.enqueue(|reply, queued_at| Job::Write {
            request,
            reply,
            queued_at,
        })
    }

    pub fn apply(
        &self,
        job: ApplyJob,
    ) -> Result<OneshotReceiver<Result<ApplyOutcome, WriteError>>, WriteError> {
        self.enqueue(|reply, queued_at| Job::Apply {
            job,
            reply,
            queued_at,
        })
    }

    /// Queues a job that answers through a oneshot; a full queue is refused at once rather than
    /// waited on, because the caller is an executor thread.
    fn enqueue<T: Send>(
        &self,
        job: impl FnOnce(OneshotSender<Result<T, WriteError>>, Instant) -> Job,
    ) -> Result<OneshotReceiver<Result<T, WriteError>>, WriteError> {
        let (reply, rx) = oneshot();
        match self.tx.try_send(job(reply, Instant::now())) {
            Ok(()) => Ok(rx),
            Err(QueueError::Full) => {
                Err(WriteError::Overloaded("write queue full; try again".into()))
            }
            Err(QueueError::Stopped) => Err(WriteError::Stopped),
        }
    }

    pub fn ensure_table_blocking(&self, def: TableDef) -> Result<Arc<Table>, StoreError> {
        let (reply, rx) = mpsc::channel();
        self.tx
            .send(Job::EnsureTable { def, reply })
            .map_err(|_| StoreError::Io("writer stopped".into()))?;
        rx.recv()
            .map_err(|_| StoreError::Io("writer stopped".into()))?
    }

    pub fn schema(&self, change: SchemaChange) -> Result<SchemaReply, StoreError> {
        let (reply, rx) = oneshot();
        match self.tx.try_send(Job::Schema { change, reply }) {
            Ok(()) => Ok(rx),
            Err(QueueError::Full) => Err(StoreError::Io("write queue full; try again".into())),
            Err(QueueError::Stopped) => Err(StoreError::Io("writer stopped".into())),
        }
    }

    pub fn prune_audit_blocking(
        &self,
        table: &str,
        before: f64,
        after: Option<f64>,
    ) -> Result<super::PruneStep, StoreError> {
        let (reply, rx) = mpsc::channel();
        let job = Job::PruneAudit {
            table: table.to_string(),
            before,
            after,
            reply,
        };
        match self.tx.try_send(job) {
            Ok(()) => {}
            Err(QueueError::Full) => {
                return Err(StoreError::Io("write queue full; try again".into()))
            }
            Err(QueueError::Stopped) => return Err(StoreError::Io("writer stopped".into())),
        }
        rx.recv()
            .map_err(|_| StoreError::Io("writer stopped".into()))?
    }

    pub fn stop_blocking(&self) {
        let _ = self.tx.send(Job::Stop);
        if let Some(handle) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = handle.join();
        }
    }
}

pub(super) fn spawn(
    db: Arc<Database>,
    rx: JobReceiver,
    clock: Arc<Clock>,
    publisher: Publisher,
    options: StoreOptions,
) -> Result<(), StoreError> {
    let name = format!("writer-{}", db.name);
    let thread_db = db.clone();
    let kill_at = kill_at_from_env(&db.name);
    let handle = std::thread::Builder::new()
        .name(name)
        .spawn(move || {
            Writer {
                db: thread_db,
                clock,
                publisher,
                options,
                kill_at,
                marks: Default::default(),
                audit_bytes: Default::default(),
            }
            .run(rx)
        })
        .map_err(|e| StoreError::Io(format!("cannot start writer thread: {e}")))?;
    *db.writer.thread.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle);
    Ok(())
}

pub(super) struct Writer {
    pub(super) db: Arc<Database>,
    pub(super) clock: Arc<Clock>,
    publisher: Publisher,
    pub(super) options: StoreOptions,
    /// A test's kill point and how many arrivals at it are left (see [`Writer::kill_point`]).
    kill_at: Option<(String, std::cell::Cell<u64>)>,
    /// What the local requests of the group being applied changed in `__meta__` once per group
    /// rather than once per request (see [`Marks`]).
    pub(super) marks: std::cell::RefCell<Marks>,
    /// The buffer a local request's audit entry is archived into before LMDB copies it: one
    /// buffer for the writer's life instead of a new one grown by doubling per request, at most
    /// [`AUDIT_BYTES_KEPT`] of capacity kept between requests.
    audit_bytes: std::cell::RefCell<Vec<u8>>,
}

/// Capacity [`Writer::audit_bytes`] keeps; a larger entry's buffer is let go after it.
const AUDIT_BYTES_KEPT: usize = 64 << 10;

/// The `__meta__` entries a group's local requests would each overwrite: this node's sequence
/// cursor and each touched table's `updated` version. Kept here while a group is applied and
/// written once before its commit (or before a replicated request, which reads them), so a
/// group of a hundred publishes writes them once, not a hundred times; the values written are
/// the same as one write per request would leave (versions and sequence numbers only grow
/// within a group).
#[derive(Default, Clone)]
pub(super) struct Marks {
    /// The last sequence number assigned in this group, not yet written to the cursor.
    pub(super) seq: Option<u64>,
    /// Tables written in this group with the version of their last write.
    updated: Vec<(Arc<str>, f64)>,
}

/// `TIDEPOOL_TEST_KILL_AT=<database>:<point>:<n>` for this writer's database, read once per
/// writer; absent in production.
fn kill_at_from_env(database: &str) -> Option<(String, std::cell::Cell<u64>)> {
    let spec = std::env::var("TIDEPOOL_TEST_KILL_AT").ok()?;
    let mut parts = spec.splitn(3, ':');
    let (db, point, n) = (parts.next()?, parts.next()?, parts.next()?);
    if db != database {
        return None;
    }
    let n = n.parse::<u64>().ok()?.max(1);
    Some((point.to_string(), std::cell::Cell::new(n)))
}

/// The `__meta__` key every group's commit writes under `storage.sync` (see `commit_batch`).
const GROUP_MARK: &[u8] = b"group";

/// A committed group: its answers and publications, held until the group is durable.
struct Group {
    answers: Vec<Pending>,
    /// The last version the group assigned: the audit log is announced up to it once durable.
    last_version: f64,
    local_time: f64,
    /// The commit (or the sync that was to make it durable) failed: every request gets this.
    failed: Option<StoreError>,
}

enum Pending {
    Local(
        OneshotSender<Result<WriteOutcome, WriteError>>,
        Result<(WriteOutcome, Vec<Change>, Option<Extras>), WriteError>,
    ),
    Apply(
        OneshotSender<Result<ApplyOutcome, WriteError>>,
        Result<(ApplyOutcome, f64, Vec<Change>), WriteError>,
    ),
}

impl Pending {
    fn failed(&self) -> bool {
        matches!(self, Pending::Local(_, Err(_)) | Pending::Apply(_, Err(_)))
    }

    fn fail(self, error: &StoreError) {
        match self {
            Pending::Local(reply, _) => reply.send(Err(WriteError::Storage(error.clone()))),
            Pending::Apply(reply, _) => reply.send(Err(WriteError::Storage(error.clone()))),
        }
    }
}

/// What applying one request produced, before its reply is attached.
enum Outcome {
    Local(Result<(WriteOutcome, Vec<Change>, Option<Extras>), WriteError>),
    Apply(Result<(ApplyOutcome, f64, Vec<Change>), WriteError>),
}

impl Outcome {
    fn failed(&self) -> bool {
        matches!(self, Outcome::Local(Err(_)) | Outcome::Apply(Err(_)))
    }
}

/// Why an attempt at a group stopped (see `Writer::commit_batch`).
enum Halt {
    /// A request failed with no nested transaction to roll it back alone.
    Request,
    Lmdb(heed::Error),
}

impl Item {
    /// The reply to this item with what applying it produced (`outcome` is this item's: the
    /// outcomes follow the batch's order).
    fn answer(self, outcome: Outcome) -> Pending {
        match (self, outcome) {
            (Item::Local(_, reply), Outcome::Local(result)) => Pending::Local(reply, result),
            (Item::Apply(_, reply), Outcome::Apply(result)) => Pending::Apply(reply, result),
            (item, _) => item.failed(),
        }
    }

    /// The reply to this item when its group's commit failed (`Group::failed` says why).
    fn failed(self) -> Pending {
        match self {
            Item::Local(_, reply) => Pending::Local(reply, Err(WriteError::Stopped)),
            Item::Apply(_, reply) => Pending::Apply(reply, Err(WriteError::Stopped)),
        }
    }
}

/// How long the writer's queue stays empty before a step of audit retention.
const TRIM_IDLE: std::time::Duration = std::time::Duration::from_secs(1);

impl Writer {
    fn run(self, rx: JobReceiver) {
        let batch_max = self.options.commit_batch_max.max(1);
        let mut batch: Vec<Item> = Vec::with_capacity(batch_max);
        // The last committed group while it is not yet durable (docs/design.md "Pipelined
        // commits"): answered once the next group's commit or a sync has made it durable.
        let mut pending: Option<Group> = None;
        // Audit retention runs when the queue has been empty for a moment (`prune.rs`).
        let mut trim_wait = TRIM_IDLE;
        let mut grow = super::grow::GrowAhead::new(&self.db.env, self.options.sync);
        'outer: loop {
            // As many requests queued as `pending` holds: they become the next group, whose
            // commit makes `pending` durable. Fewer: make `pending` durable now and answer it
            // (docs/design.md "Pipelined commits", when a group waits for the next).
            if pending
                .as_ref()
                .is_some_and(|group| rx.len() < group.answers.len())
            {
                self.settle(&mut pending);
            }
            let queued = match &pending {
                Some(_) => rx.try_recv(),
                None => None,
            };
            let first = match queued {
                Some(job) => Some(job),
                None => {
                    self.settle(&mut pending);
                    // Nothing to answer and nothing queued: write the file ahead now, when
                    // it delays no one (`grow.rs`).
                    if rx.len() == 0 {
                        grow.step(&self.db.env, super::grow::Need::Ahead);
                    }
                    match self.options.audit_retention {
                        None => rx.recv(),
                        Some(retention) => match rx.recv_timeout(trim_wait) {
                            Ok(Some(job)) => Some(job),
                            Ok(None) => {
                                trim_wait = match self.trim_audit_step(retention) {
                                    Ok(true) => std::time::Duration::ZERO,
                                    Ok(false) => TRIM_IDLE,
                                    Err(e) => {
                                        tracing::warn!("audit retention on {}: {e}", self.db.name);
                                        TRIM_IDLE * 60
                                    }
                                };
                                continue;
                            }
                            Err(()) => None,
                        },
                    }
                }
            };
            let Some(first) = first else {
                break;
            };
            let mut next = Some(first);
            while let Some(job) = next.take() {
                match job {
                    Job::Write {
                        request,
                        reply,
                        queued_at,
                    } => {
                        if queued_at.elapsed() > self.options.queue_time_max {
                            reply.send(Err(WriteError::Overloaded(
                                "write waited longer than storage.maxTransactionQueueTime".into(),
                            )));
                        } else {
                            batch.push(Item::Local(request, reply));
                        }
                    }
                    Job::Apply {
                        job,
                        reply,
                        queued_at,
                    } => {
                        if queued_at.elapsed() > self.options.queue_time_max {
                            reply.send(Err(WriteError::Overloaded(
                                "write waited longer than storage.maxTransactionQueueTime".into(),
                            )));
                        } else {
                            batch.push(Item::Apply(job, reply));
                        }
                    }
                    Job::EnsureTable { def, reply } => {
                        // Commit what is batched first, so requests keep their order.
                        self.commit_durably(&mut batch, &mut pending);
                        let _ = reply.send(self.ensure_table(def).and_then(|t| self.sync(t)));
                    }
                    Job::Schema { change, reply } => {
                        self.commit_durably(&mut batch, &mut pending);
                        reply.send(self.schema_change(change).and_then(|t| self.sync(t)));
                    }
                    Job::PruneAudit {
                        table,
                        before,
                        after,
                        reply,
                    } => {
                        self.commit_durably(&mut batch, &mut pending);
                        let step = self.prune_audit_step(&table, before, after);
                        let _ = reply.send(step.and_then(|s| self.sync(s)));
                    }
                    Job::Stop => {
                        self.commit_durably(&mut batch, &mut pending);
                        // Answer whatever is still queued, in order, then stop.
                        while let Some(job) = rx.try_recv() {
                            match job {
                                Job::Write { request, reply, .. } => {
                                    batch.push(Item::Local(request, reply))
                                }
                                Job::Apply { job, reply, .. } => {
                                    batch.push(Item::Apply(job, reply))
                                }
                                _ => {}
                            }
                        }
                        self.commit_durably(&mut batch, &mut pending);
                        break 'outer;
                    }
                }
                if batch.len() < batch_max {
                    next = rx.try_recv();
                }
            }
            self.commit_group(&mut batch, &mut pending);
            // Under a load that never lets the queue empty, before the written tail runs out.
            grow.step(&self.db.env, super::grow::Need::Soon);
        }
        self.settle(&mut pending);
        tracing::debug!("writer for {} stopped", self.db.name);
    }

    /// Commits `batch` as one group. With `storage.sync` the group is kept in `pending` (not
    /// answered yet) and the group it replaces is answered: this commit's data sync made it
    /// durable (docs/design.md "Pipelined commits"). Without `storage.sync` it is answered at once.
    fn commit_group(&self, batch: &mut Vec<Item>, pending: &mut Option<Group>) {
        if batch.is_empty() {
            return;
        }
        let group = self.commit_batch(batch, pending.is_some());
        if group.failed.is_some() {
            // A failed commit may have stopped before its sync: make the previous group durable
            // by itself first, then answer this one's failures.
            self.settle(pending);
            self.finish(group);
            return;
        }
        if let Some(previous) = pending.take() {
            self.kill_point("answer-previous");
            self.finish(previous);
        }
        if self.options.sync {
            *pending = Some(group);
        } else {
            self.finish(group);
        }
    }

    /// Commits `batch` and makes it durable before returning: for the jobs that are answered
    /// right after it (table and schema changes, pruning, stop).
    fn commit_durably(&self, batch: &mut Vec<Item>, pending: &mut Option<Group>) {
        self.commit_group(batch, pending);
        self.settle(pending);
    }

    /// Makes the pending group durable (`mdb_env_sync`) and answers it; a failed sync answers
    /// every request of it with the error (its durability is unknown).
    fn settle(&self, pending: &mut Option<Group>) {
        let Some(mut group) = pending.take() else {
            return;
        };
        self.kill_point("final-sync");
        if let Err(e) = self.db.env.force_sync() {
            let error = StoreError::from(e);
            tracing::error!("sync failed on database {}: {error}", self.db.name);
            group.failed = Some(error);
        }
        self.finish(group);
    }

    /// `value` once what was committed so far is durable: for the writer's own commits outside
    /// groups (table and schema changes, pruning), answered at once.
    fn sync<T>(&self, value: T) -> Result<T, StoreError> {
        if self.options.sync {
            self.db.env.force_sync()?;
        }
        Ok(value)
    }

    /// SIGKILLs this process at the `n`-th arrival at `point`, when a test asked for it with
    /// `TIDEPOOL_TEST_KILL_AT=<database>:<point>:<n>` (tests/store_pipeline_kill.rs). Points:
    /// `commit-next` (a group committed, the next one about to commit and sync), `answer-previous`
    /// (the next one committed and synced, the previous not answered yet), `final-sync` (the
    /// queue empty, before the sync that makes the last group durable).
    fn kill_point(&self, point: &str) {
        let Some((at, remaining)) = &self.kill_at else {
            return;
        };
        if at != point {
            return;
        }
        let left = remaining.get().saturating_sub(1);
        remaining.set(left);
        if left == 0 {
            // Straight to stderr: the logging thread would not get to write it before the kill.
            eprintln!("TIDEPOOL_TEST_KILL_AT: killing the process at {point}");
            // SAFETY: kill(2) on our own pid; no memory is involved.
            unsafe {
                libc::kill(libc::getpid(), libc::SIGKILL);
            }
        }
    }

    /// Applies `batch` in one write transaction and commits it; `pipelined`: a group committed
    /// before is still waiting for this commit's sync.
    ///
    /// First every request is applied straight in the group's transaction: a nested
    /// transaction per request makes LMDB copy every page the request touches and merge its
    /// dirty list into the group's, a large part of the writer's time. When a request fails in
    /// that attempt, the attempt is dropped (nothing of it was committed) and the group is applied
    /// again with a nested transaction per request, so the failed one rolls back alone.
    fn commit_batch(&self, batch: &mut Vec<Item>, pipelined: bool) -> Group {
        let started = Instant::now();
        let mut last_version = 0.0;
        let attempt = match self.apply_group(batch, false, pipelined, &mut last_version) {
            Err(Halt::Request) => self.apply_group(batch, true, pipelined, &mut last_version),
            other => other,
        };
        let (answers, failed) = match attempt {
            Ok(outcomes) => {
                let answers: Vec<Pending> = batch
                    .drain(..)
                    .zip(outcomes)
                    .map(|(item, outcome)| item.answer(outcome))
                    .collect();
                (answers, None)
            }
            Err(halt) => {
                let error = match halt {
                    Halt::Lmdb(e) => StoreError::from(e),
                    // Not returned by the nested attempt; kept as an error, never a panic.
                    Halt::Request => {
                        StoreError::Io("a request failed outside its own transaction".into())
                    }
                };
                tracing::error!("commit failed on database {}: {error}", self.db.name);
                let answers = batch.drain(..).map(Item::failed).collect();
                (answers, Some(error))
            }
        };
        let requests_failed = answers.iter().filter(|p| p.failed()).count() as u64;
        self.db
            .stats
            .requests_failed
            .fetch_add(requests_failed, std::sync::atomic::Ordering::Relaxed);
        self.db
            .stats
            .record_commit(answers.len() as u64, started.elapsed().as_micros() as u64);
        Group {
            answers,
            last_version,
            local_time: super::now_ms(),
            failed,
        }
    }

    /// One attempt at a group (see `commit_batch`): each request in a nested transaction, or
    /// all straight in the group's transaction, stopping at the first that fails.
    fn apply_group(
        &self,
        batch: &[Item],
        nested: bool,
        pipelined: bool,
        last_version: &mut f64,
    ) -> Result<Vec<Outcome>, Halt> {
        let mut wtxn = self.db.env.write_txn().map_err(Halt::Lmdb)?;
        let mut outcomes = Vec::with_capacity(batch.len());
        *self.marks.borrow_mut() = Marks::default();
        for item in batch {
            let version = self.clock.next();
            *last_version = version;
            if matches!(item, Item::Apply(..)) {
                // A replicated request reads the cursors and writes `updated` itself.
                self.write_marks(&mut wtxn).map_err(Halt::Lmdb)?;
            }
            let outcome = if nested {
                let mut txn = self
                    .db
                    .env
                    .nested_write_txn(&mut wtxn)
                    .map_err(Halt::Lmdb)?;
                let before = self.marks.borrow().clone();
                let outcome = self.apply_item(&mut txn, item, version);
                if outcome.failed() {
                    txn.abort();
                    // Its sequence number and marks went with its transaction.
                    *self.marks.borrow_mut() = before;
                } else {
                    txn.commit().map_err(Halt::Lmdb)?;
                }
                outcome
            } else {
                let outcome = self.apply_item(&mut wtxn, item, version);
                if outcome.failed() {
                    // Dropping `wtxn` aborts it: none of this attempt is written.
                    return Err(Halt::Request);
                }
                outcome
            };
            outcomes.push(outcome);
        }
        self.write_marks(&mut wtxn).map_err(Halt::Lmdb)?;
        if self.options.sync {
            // LMDB skips the sync of a commit that wrote nothing; this put makes every group's
            // commit sync, which is what makes the previous group durable.
            self.db
                .meta
                .put(&mut wtxn, GROUP_MARK, &last_version.to_le_bytes())
                .map_err(Halt::Lmdb)?;
        }
        if pipelined {
            self.kill_point("commit-next");
        }
        wtxn.commit().map_err(Halt::Lmdb)?;
        Ok(outcomes)
    }

    /// Writes the group's [`Marks`] so far and clears them.
    fn write_marks(&self, txn: &mut RwTxn) -> Result<(), heed::Error> {
        let marks = std::mem::take(&mut *self.marks.borrow_mut());
        if let Some(seq) = marks.seq {
            self.db.meta.put(
                txn,
                &super::replicate::cursor_key(&self.db.stream),
                &seq.to_le_bytes(),
            )?;
        }
        for (table, version) in marks.updated {
            let key = layout::meta_key("updated", &table);
            self.db.meta.put(txn, &key, &version.to_le_bytes())?;
        }
        Ok(())
    }

    fn apply_item(&self, txn: &mut RwTxn, item: &Item, version: f64) -> Outcome {
        match item {
            Item::Local(request, _) => Outcome::Local(
                self.apply(txn, request, version)
                    .map(|(outcome, changes)| (outcome, changes, request.extras.clone())),
            ),
            Item::Apply(job, _) => Outcome::Apply(self.apply_replicated(txn, job, version).map(
                |(outcome, changes)| {
                    let time = match job {
                        ApplyJob::Txn(t) => t.time,
                        _ => version,
                    };
                    (outcome, time, changes)
                },
            )),
        }
    }

    /// Answers a durable group's requesters, announces it to replication senders and
    /// publishes each request's [`Commit`]; or, when its commit failed, answers the failure.
    fn finish(&self, group: Group) {
        let Group {
            answers,
            last_version,
            local_time,
            failed,
            ..
        } = group;
        if let Some(error) = failed {
            for item in answers {
                item.fail(&error);
            }
            return;
        }
        self.db.announce_durable(last_version);
        self.db.commits.bump();
        // The requesters are woken together once every reply is in and every commit published:
        // one wake-up per core for the group, not one per request (tidepool_io `WakeBatch`).
        let mut wakes = WakeBatch::default();
        let mut commits = Vec::with_capacity(answers.len());
        for item in answers {
            let (version, changes, extras) = match item {
                Pending::Local(reply, Ok((outcome, changes, extras))) => {
                    let version = outcome.version;
                    reply.send_in(Ok(outcome), &mut wakes);
                    (version, changes, extras)
                }
                Pending::Apply(reply, Ok((outcome, version, changes))) => {
                    reply.send_in(Ok(outcome), &mut wakes);
                    (version, changes, None)
                }
                Pending::Local(reply, Err(e)) => {
                    reply.send_in(Err(e), &mut wakes);
                    continue;
                }
                Pending::Apply(reply, Err(e)) => {
                    reply.send_in(Err(e), &mut wakes);
                    continue;
                }
            };
            if !changes.is_empty() {
                commits.push(Arc::new(Commit {
                    database: self.db.name.clone(),
                    version,
                    local_time,
                    changes,
                    extras,
                }));
            }
        }
        if !commits.is_empty() {
            (self.publisher)(&commits);
        }
        wakes.wake_all();
    }

    fn apply(
        &self,
        txn: &mut RwTxn,
        request: &WriteRequest,
        version: f64,
    ) -> Result<(WriteOutcome, Vec<Change>), WriteError> {
        let mut a = Applied::with_capacity(request.ops.len());
        for op in &request.ops {
            match op {
                WriteOp::Put { .. } | WriteOp::Swap { .. } => {
                    self.apply_put(txn, op, version, &mut a)?
                }
                WriteOp::Delete { table, key } => {
                    self.apply_delete(txn, table, key, version, &mut a)?
                }
                WriteOp::Require {
                    table,
                    key,
                    condition,
                } => {
                    let table = self.table(table)?;
                    let live = self.live_version(txn, &table, key)?;
                    condition.check(key, live).map_err(WriteError::Condition)?;
                }
                WriteOp::Message {
                    table,
                    key,
                    payload,
                } => self.apply_message(table, key, payload, version, &mut a)?,
            }
        }
        let Applied {
            results,
            changes,
            audit_entries,
            ..
        } = a;
        let mut touched: Vec<&Arc<str>> = Vec::new();
        for change in &changes {
            if !touched.contains(&&change.table) {
                touched.push(&change.table);
            }
        }
        {
            let mut marks = self.marks.borrow_mut();
            for table in touched {
                match marks.updated.iter_mut().find(|(t, _)| t == table) {
                    Some((_, v)) => *v = version,
                    None => marks.updated.push((table.clone(), version)),
                }
            }
        }
        if !audit_entries.is_empty() {
            self.write_audit(txn, request, version, audit_entries)?;
        }
        Ok((WriteOutcome { version, results }, changes))
    }

    /// A `Put`, or a `Swap` (an update of one attribute if it still holds the expected value;
    /// skipped otherwise).
    fn apply_put(
        &self,
        txn: &mut RwTxn,
        op: &WriteOp,
        version: f64,
        a: &mut Applied,
    ) -> Result<(), WriteError> {
        let (table, key, record, mode, expires_in_s, swap);
        match op {
            WriteOp::Put {
                table: t,
                key: k,
                record: r,
                mode: m,
                expires_in_s: e,
            } => {
                (table, key, mode, expires_in_s) = (t, k.clone(), *m, *e);
                record = std::borrow::Cow::Borrowed(r);
                swap = None;
            }
            WriteOp::Swap {
                table: t,
                key: k,
                attribute,
                expected,
                value,
            } => {
                let mut body = crate::value::Object::new();
                body.insert(attribute.as_str(), value.clone());
                (table, key, mode, expires_in_s) = (t, Some(k.clone()), PutMode::Update, None);
                record = std::borrow::Cow::Owned(Value::Object(body));
                swap = Some((attribute.as_str(), expected));
            }
            _ => unreachable!("matched Put or Swap above"),
        }
        let table = self.table(table)?;
        if let (Some((attribute, expected)), Some(key)) = (swap, &key) {
            if !self.live_attribute_is(txn, &table, key, attribute, expected)? {
                a.results.push(OpResult::Skipped { key: key.clone() });
                return Ok(());
            }
        }
        let (result, stored) = self.put(
            txn,
            &table,
            key.as_ref(),
            &record,
            mode,
            expires_in_s,
            version,
            &mut a.scratch,
        )?;
        if let (OpResult::Written { key, .. }, Some((stored, expires_at))) = (&result, stored) {
            if audited(&table) {
                // The operation as HarperDB's audit log names it (`read_audit_log`); every
                // reader takes each of these as a put (`replicate::EntryKind::parse`).
                let kind = match mode {
                    PutMode::Insert => "insert",
                    PutMode::Update => "update",
                    PutMode::Upsert => "upsert",
                    PutMode::Replace => "put",
                };
                a.audit_entries.push(audit_entry(
                    &table.name,
                    key,
                    kind,
                    Some(&stored),
                    version,
                    expires_at,
                ));
            }
            a.changes.push(Change {
                table: table.name.clone(),
                key: key.clone(),
                kind: ChangeKind::Put,
                value: Some(stored),
            });
        }
        a.results.push(result);
        Ok(())
    }

    fn apply_delete(
        &self,
        txn: &mut RwTxn,
        table: &str,
        key: &Value,
        version: f64,
        a: &mut Applied,
    ) -> Result<(), WriteError> {
        let table = self.table(table)?;
        let (existed, tombstoned) = self.delete(txn, &table, key, version, &mut a.scratch)?;
        if tombstoned && audited(&table) {
            // Audited (and so replicated) even when this node had no live record:
            // a peer may hold one this delete must supersede.
            a.audit_entries
                .push(audit_entry(&table.name, key, "delete", None, version, None));
        }
        if existed {
            a.changes.push(Change {
                table: table.name.clone(),
                key: key.clone(),
                kind: ChangeKind::Delete,
                value: None,
            });
        }
        a.results.push(OpResult::Deleted {
            key: key.clone(),
            existed,
        });
        Ok(())
    }

    /// A message: audited and published, nothing stored.
    fn apply_message(
        &self,
        table: &str,
        key: &Option<Value>,
        payload: &Value,
        version: f64,
        a: &mut Applied,
    ) -> Result<(), WriteError> {
        let table = self.table(table)?;
        let key = key.clone().unwrap_or(Value::Null);
        a.audit_entries.push(audit_entry(
            &table.name,
            &key,
            "message",
            Some(payload),
            version,
            None,
        ));
        a.changes.push(Change {
            table: table.name.clone(),
            key,
            kind: ChangeKind::Message,
            value: Some(payload.clone()),
        });
        a.results.push(OpResult::Published);
        Ok(())
    }

    /// The audit log entry of one request's transaction: who, from which node, its local
    /// sequence number, and its entries.
    fn write_audit(
        &self,
        txn: &mut RwTxn,
        request: &WriteRequest,
        version: f64,
        audit_entries: Vec<Value>,
    ) -> Result<(), WriteError> {
        let mut entry = Object::new();
        entry.insert(
            "user",
            request
                .user
                .clone()
                .map(Value::String)
                .unwrap_or(Value::Null),
        );
        entry.insert("origin", Value::Int(i64::from(self.options.node_id)));
        let seq = self.next_local_seq(txn, version)?;
        entry.insert("node", Value::String(String::from(&*self.db.stream)));
        entry.insert("seq", Value::Int(seq as i64));
        entry.insert("time", Value::Float(version));
        entry.insert("entries", Value::Array(audit_entries));
        let mut bytes = self.audit_bytes.borrow_mut();
        bytes.clear();
        value::archive_into(&Value::Object(entry), &mut bytes);
        let put = self.db.audit.put(txn, &layout::audit_key(version), &bytes);
        if bytes.capacity() > AUDIT_BYTES_KEPT {
            *bytes = Vec::new();
        }
        put?;
        Ok(())
    }

    /// The table a write names.
    fn table(&self, name: &str) -> Result<Arc<Table>, WriteError> {
        self.db
            .table(name)
            .ok_or_else(|| WriteError::NoSuchTable(name.to_string()))
    }

    /// The version of the live record `key` of `table` (`None`: absent, deleted or expired).
    fn live_version(
        &self,
        txn: &RwTxn,
        table: &Table,
        key: &Value,
    ) -> Result<Option<f64>, WriteError> {
        let mut encoded = Vec::new();
        encode_primary_key(key, &mut encoded)?;
        let Some(bytes) = table.records.get(txn, &encoded)? else {
            return Ok(None);
        };
        let (header, _) = Header::read(bytes)?;
        Ok((!header.deleted && header.is_live(super::now_ms())).then_some(header.version))
    }

    /// Whether the live record `key` of `table` has `attribute` equal to `expected`.
    fn live_attribute_is(
        &self,
        txn: &RwTxn,
        table: &Table,
        key: &Value,
        attribute: &str,
        expected: &Value,
    ) -> Result<bool, WriteError> {
        let mut encoded = Vec::new();
        encode_primary_key(key, &mut encoded)?;
        let Some(bytes) = table.records.get(txn, &encoded)? else {
            return Ok(false);
        };
        let (header, body) = Header::read(bytes)?;
        if header.deleted || !header.is_live(super::now_ms()) {
            return Ok(false);
        }
        Ok(decode_record(body)?.get(attribute) == Some(expected))
    }

    #[allow(clippy::too_many_arguments)]
    fn put(
        &self,
        txn: &mut RwTxn,
        table: &Table,
        url_key: Option<&Value>,
        record: &Value,
        mode: PutMode,
        expires_in_s: Option<f64>,
        version: f64,
        scratch: &mut Scratch,
    ) -> Result<(OpResult, Option<Stored>), WriteError> {
        let Value::Object(body) = record else {
            return Err(WriteError::Invalid("Record must be an object".into()));
        };
        let def = &table.def;
        let pk = def.primary_key.as_deref();
        let key = match url_key
            .cloned()
            .or_else(|| pk.and_then(|pk| body.get(pk).cloned()))
            .filter(|k| !matches!(k, Value::Null))
        {
            Some(key) => key,
            None => self.generate_key(txn, table)?,
        };
        encode_primary_key(&key, &mut scratch.key)?;
        let old_entry = table.records.get(txn, &scratch.key)?.map(<[u8]>::to_vec);
        let now = super::now_ms();
        // `stored` is any non-tombstone record, expired or not: it still has index entries and is
        // still counted until the expiry sweep removes it, so index upkeep and the count follow
        // it. `old` is the live record the write's semantics (insert, merge) see.
        let (stored, stored_live): (Option<Value>, bool) = match &old_entry {
            Some(bytes) => {
                let (header, body) = Header::read(bytes)?;
                if header.deleted {
                    (None, false)
                } else {
                    (Some(decode_record(body)?), header.is_live(now))
                }
            }
            None => (None, false),
        };
        let old: Option<&Value> = stored.as_ref().filter(|_| stored_live);
        match (mode, &old) {
            (PutMode::Insert, Some(_)) | (PutMode::Update, None) => {
                return Ok((OpResult::Skipped { key }, None))
            }
            _ => {}
        }
        let mut new = match (old, mode) {
            (Some(Value::Object(old)), PutMode::Update | PutMode::Upsert) => {
                let mut merged = old.clone();
                for (k, v) in body.iter() {
                    merged.insert(k, v.clone());
                }
                merged
            }
            _ => body.clone(),
        };
        if let Some(pk) = pk {
            new.insert(pk, key.clone());
        }
        for attr in &def.attributes {
            if attr.created_time {
                let kept = old.and_then(|o| o.get(&attr.name)).cloned();
                new.insert(
                    attr.name.as_str(),
                    kept.unwrap_or_else(|| timestamp(&attr.ty, version)),
                );
            } else if attr.updated_time {
                new.insert(attr.name.as_str(), timestamp(&attr.ty, version));
            }
        }
        let new = Value::Object(new);
        let expires_at = expires_in_s
            .or(def.expiration_s.map(|s| s as f64))
            .map(|s| version + s * 1000.0);
        // Index maintenance: remove the old record's entries that the new one lacks, add the rest.
        for (attribute, index) in &table.indexes {
            scratch.old_index.clear();
            if let Some(stored) = &stored {
                index_keys(stored.get(attribute), &mut scratch.old_index);
            }
            scratch.new_index.clear();
            index_keys(new.get(attribute), &mut scratch.new_index);
            for k in scratch
                .old_index
                .iter()
                .filter(|k| scratch.new_index.binary_search(k).is_err())
            {
                index.delete_one_duplicate(txn, k, &scratch.key)?;
            }
            for k in scratch
                .new_index
                .iter()
                .filter(|k| scratch.old_index.binary_search(k).is_err())
            {
                index.put(txn, k, &scratch.key)?;
            }
        }
        scratch.entry.clear();
        Header {
            version,
            expires_at,
            deleted: false,
            origin: self.options.node_id,
        }
        .write(&mut scratch.entry);
        value::archive_into(&new, &mut scratch.entry);
        table.records.put(txn, &scratch.key, &scratch.entry)?;
        let created = old.is_none();
        if stored.is_none() {
            self.add_count(txn, &table.name, 1)?;
        }
        if let Value::Int(n) = key {
            let counter = layout::meta_key("autoinc", &table.name);
            let current = read_i64(self.db.meta.get(txn, &counter)?);
            if n > current {
                self.db.meta.put(txn, &counter, &n.to_le_bytes())?;
            }
        }
        Ok((OpResult::Written { key, created }, Some((new, expires_at))))
    }

    fn delete(
        &self,
        txn: &mut RwTxn,
        table: &Table,
        key: &Value,
        version: f64,
        scratch: &mut Scratch,
    ) -> Result<(bool, bool), WriteError> {
        encode_primary_key(key, &mut scratch.key)?;
        let tombstone = |scratch: &mut Scratch| {
            scratch.entry.clear();
            Header {
                version,
                expires_at: None,
                deleted: true,
                origin: self.options.node_id,
            }
            .write(&mut scratch.entry);
        };
        let Some(bytes) = table.records.get(txn, &scratch.key)?.map(<[u8]>::to_vec) else {
            // No record here (yet): a tombstone still orders this delete after any older write
            // of the key that arrives from a peer later.
            tombstone(scratch);
            table.records.put(txn, &scratch.key, &scratch.entry)?;
            return Ok((false, true));
        };
        let (header, body) = Header::read(&bytes)?;
        if header.deleted {
            tombstone(scratch);
            table.records.put(txn, &scratch.key, &scratch.entry)?;
            return Ok((false, true));
        }
        if !header.is_live(super::now_ms()) {
            // Expired: the sweep removes it (with its index entries and count); expiry is local.
            return Ok((false, false));
        }
        let old = decode_record(body)?;
        for (attribute, index) in &table.indexes {
            scratch.old_index.clear();
            index_keys(old.get(attribute), &mut scratch.old_index);
            for k in &scratch.old_index {
                index.delete_one_duplicate(txn, k, &scratch.key)?;
            }
        }
        // A tombstone keeps the version, so an older replicated write cannot resurrect the record.
        tombstone(scratch);
        table.records.put(txn, &scratch.key, &scratch.entry)?;
        self.add_count(txn, &table.name, -1)?;
        Ok((true, true))
    }

    fn generate_key(&self, txn: &mut RwTxn, table: &Table) -> Result<Value, WriteError> {
        match table.def.key_type() {
            KeyType::Uuid | KeyType::UrlOnly => Ok(Value::String(uuid::Uuid::new_v4().to_string())),
            KeyType::Increment => {
                let counter = layout::meta_key("autoinc", &table.name);
                let next = read_i64(self.db.meta.get(txn, &counter)?)
                    .saturating_add(1)
                    .max(1);
                Ok(Value::Int(next))
            }
            KeyType::NotGenerated => Err(WriteError::Invalid(format!(
                "A primary key is required: keys of type {} are not generated",
                table
                    .def
                    .primary_key_attribute()
                    .map(|a| a.ty.name())
                    .unwrap_or("?")
            ))),
        }
    }

    pub(super) fn add_count(
        &self,
        txn: &mut RwTxn,
        table: &str,
        delta: i64,
    ) -> Result<(), WriteError> {
        let key = layout::meta_key("count", table);
        let count = read_i64(self.db.meta.get(txn, &key)?)
            .saturating_add(delta)
            .max(0);
        self.db.meta.put(txn, &key, &count.to_le_bytes())?;
        Ok(())
    }

    /// One step of audit retention (`prune.rs`) in its own write transaction: true when a full
    /// batch went and more may be left.
    fn trim_audit_step(&self, retention: std::time::Duration) -> Result<bool, StoreError> {
        let before = super::now_ms() - retention.as_secs_f64() * 1000.0;
        {
            // Most idle moments find nothing to trim: no write transaction (nor fsync) then.
            let rtxn = self.db.env.read_txn()?;
            let oldest = self.db.audit.first(&rtxn)?.map(|(k, _)| k.to_vec());
            let newest = self.db.audit.last(&rtxn)?.map(|(k, _)| k.to_vec());
            match oldest {
                Some(k)
                    if k < layout::audit_key(before).to_vec() && Some(&k) != newest.as_ref() => {}
                _ => return Ok(false),
            }
        }
        let mut wtxn = self.db.env.write_txn()?;
        let trimmed = self.trim_audit(&mut wtxn, before)?;
        wtxn.commit()?;
        if trimmed > 0 {
            tracing::info!(
                "audit log of {}: {trimmed} transactions older than logging.auditRetention trimmed",
                self.db.name
            );
        }
        Ok(trimmed >= super::PRUNE_BATCH as u64)
    }

    /// One pruning step (`prune.rs`) in its own write transaction.
    fn prune_audit_step(
        &self,
        table: &str,
        before: f64,
        after: Option<f64>,
    ) -> Result<super::PruneStep, StoreError> {
        let mut wtxn = self.db.env.write_txn()?;
        let step = self.prune_audit(&mut wtxn, table, before, after)?;
        wtxn.commit()?;
        Ok(step)
    }

    fn ensure_table(&self, def: TableDef) -> Result<Arc<Table>, StoreError> {
        ensure_table(&self.db, def)
    }

    fn schema_change(&self, change: SchemaChange) -> Result<Option<Arc<Table>>, StoreError> {
        match change {
            SchemaChange::Create(def) => {
                if self.db.table(&def.table).is_some() {
                    return Err(StoreError::TableExists(def.table));
                }
                ensure_table(&self.db, def).map(Some)
            }
            SchemaChange::Alter { table, alter } => {
                let current = self
                    .db
                    .table(&table)
                    .ok_or_else(|| StoreError::NoSuchTable(format!("{}.{table}", self.db.name)))?;
                let def = alter(&current.def)?;
                ensure_table(&self.db, def).map(Some)
            }
            SchemaChange::Drop(table) => {
                let current = self
                    .db
                    .table(&table)
                    .ok_or_else(|| StoreError::NoSuchTable(format!("{}.{table}", self.db.name)))?;
                let mut wtxn = self.db.env.write_txn()?;
                current.records.clear(&mut wtxn)?;
                for (_, index) in &current.indexes {
                    index.clear(&mut wtxn)?;
                }
                for kind in ["table", "indexes", "count", "autoinc", "updated"] {
                    self.db
                        .meta
                        .delete(&mut wtxn, &layout::meta_key(kind, &table))?;
                }
                wtxn.commit()?;
                self.db
                    .tables
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&table);
                super::catalog_changed();
                Ok(None)
            }
        }
    }
}

/// Creates the table's sub-databases, builds indexes that are new and clears dropped ones. Runs
/// on the writer thread, or before it starts (reopening tables at open).
pub(super) fn ensure_table(db: &Database, def: TableDef) -> Result<Arc<Table>, StoreError> {
    let env = &db.env;
    let name = def.table.clone();
    let stored_key = layout::meta_key("table", &name);
    let indexes_key = layout::meta_key("indexes", &name);
    let (previous, built) = {
        let rtxn = env.read_txn()?;
        let previous = db
            .meta
            .get(&rtxn, &stored_key)?
            .and_then(|b| serde_json::from_slice::<StoredTable>(b).ok());
        let built: Vec<String> = db
            .meta
            .get(&rtxn, &indexes_key)?
            .and_then(|b| serde_json::from_slice(b).ok())
            .unwrap_or_default();
        (previous, built)
    };
    if let Some(previous) = &previous {
        if previous.primary_key != def.primary_key && previous.schema_defined {
            return Err(StoreError::Io(format!(
                "table {}.{name}: primary key changed from {:?} to {:?}; a key field cannot change",
                db.name, previous.primary_key, def.primary_key
            )));
        }
    }
    let wanted: Vec<String> = def
        .attributes
        .iter()
        .filter(|a| a.indexed && !a.primary_key)
        .map(|a| a.name.clone())
        .collect();
    // Sub-databases are created first, each in its own transaction (heed's rule for handles).
    let records = super::create_db(env, &name, false)?;
    let mut indexes = Vec::new();
    for attribute in &wanted {
        indexes.push((
            attribute.clone(),
            super::create_db(env, &layout::index_db_name(&name, attribute), true)?,
        ));
    }
    let mut dropped = Vec::new();
    for attribute in built.iter().filter(|a| !wanted.contains(a)) {
        dropped.push((
            attribute.clone(),
            super::create_db(env, &layout::index_db_name(&name, attribute), true)?,
        ));
    }
    let mut wtxn = env.write_txn()?;
    let now = super::now_ms();
    for (attribute, index) in indexes.iter().filter(|(a, _)| !built.contains(a)) {
        // Backfill: one pass over the table, inside this transaction.
        let mut keys = Vec::new();
        let mut additions: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        for item in records.iter(&wtxn)? {
            let (key, entry) = item?;
            let (header, body) = Header::read(entry)?;
            if !header.is_live(now) {
                continue;
            }
            let record = decode_record(body)?;
            keys.clear();
            index_keys(record.get(attribute), &mut keys);
            for k in &keys {
                additions.push((k.clone(), key.to_vec()));
            }
        }
        let count = additions.len();
        for (k, pk) in additions {
            index.put(&mut wtxn, &k, &pk)?;
        }
        if count > 0 {
            tracing::info!(
                "built index {}.{name}.{attribute}: {count} entries",
                db.name
            );
        }
    }
    for (attribute, index) in &dropped {
        index.clear(&mut wtxn)?;
        tracing::info!("dropped index {}.{name}.{attribute}", db.name);
    }
    let index_list = serde_json::to_vec(&wanted).unwrap_or_default();
    db.meta.put(&mut wtxn, &indexes_key, &index_list)?;
    let schema_defined = previous.as_ref().map(|p| p.schema_defined).unwrap_or(false)
        || def.export.is_some()
        || def.location.is_some();
    let stored =
        serde_json::to_vec(&StoredTable::from_def(&def, schema_defined)).unwrap_or_default();
    db.meta.put(&mut wtxn, &stored_key, &stored)?;
    wtxn.commit()?;
    let table = Arc::new(Table {
        schema_defined,
        name: Arc::from(name.as_str()),
        def: Arc::new(def),
        records,
        indexes,
    });
    db.tables
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .insert(name, table.clone());
    super::catalog_changed();
    Ok(table)
}

/// What one request's operations produce as they are applied.
struct Applied {
    results: Vec<OpResult>,
    changes: Vec<Change>,
    audit_entries: Vec<Value>,
    scratch: Scratch,
}

impl Applied {
    fn with_capacity(ops: usize) -> Self {
        Applied {
            results: Vec::with_capacity(ops),
            changes: Vec::with_capacity(ops),
            audit_entries: Vec::with_capacity(ops),
            scratch: Scratch::default(),
        }
    }
}

#[derive(Default)]
pub(super) struct Scratch {
    pub(super) key: Vec<u8>,
    pub(super) entry: Vec<u8>,
    pub(super) old_index: Vec<Vec<u8>>,
    pub(super) new_index: Vec<Vec<u8>>,
}

fn read_i64(bytes: Option<&[u8]>) -> i64 {
    bytes
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(i64::from_le_bytes)
        .unwrap_or(0)
}

fn timestamp(ty: &FieldType, version: f64) -> Value {
    match ty {
        FieldType::Date => Value::Date(version.floor()),
        FieldType::Float | FieldType::Any => Value::Float(version.floor()),
        _ => Value::Int(version.floor() as i64),
    }
}

/// Encodes a primary key; only strings and numbers are keys, of at most 250 encoded bytes.
/// Whether a table's writes go to the audit log: always, except a `system` table declared
/// `@table(audit: false)` (`hdb_raw_analytics`, as in HarperDB). Application tables are always
/// audited: subscriptions, durable sessions and replication read the log (docs/configuration.md).
fn audited(table: &Table) -> bool {
    table.def.audit || table.def.database != "system"
}

pub(super) fn encode_primary_key(key: &Value, out: &mut Vec<u8>) -> Result<(), WriteError> {
    match key {
        Value::String(_) | Value::Int(_) | Value::Float(_) | Value::BigInt(_) => {}
        _ => {
            return Err(WriteError::Invalid(
                "Primary key must be a string or a number".into(),
            ))
        }
    }
    out.clear();
    value::key::encode(key, out)
        .map_err(|e| WriteError::Invalid(format!("Invalid primary key: {e}")))?;
    if out.len() > KEY_BYTES_MAX {
        return Err(WriteError::Invalid(format!(
            "Primary key is longer than {KEY_BYTES_MAX} bytes"
        )));
    }
    Ok(())
}

/// The index keys of one attribute value: one per array element, null for missing. Appends to
/// `out` and leaves it sorted and free of duplicates, so callers diff two lists by binary search:
/// a record's list may hold many elements, and the writer must stay O(n log n) in them.
pub(super) fn index_keys(value: Option<&Value>, out: &mut Vec<Vec<u8>>) {
    let mut push = |v: &Value| {
        let mut k = Vec::new();
        value::key::encode_index_prefix(v, &mut k);
        out.push(k);
    };
    match value {
        None => push(&Value::Null),
        Some(Value::Array(items)) if !items.is_empty() => items.iter().for_each(push),
        Some(v) => push(v),
    }
    out.sort_unstable();
    out.dedup();
}

pub(super) fn decode_record(body: &[u8]) -> Result<Value, StoreError> {
    let archived = value::access(body).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    value::deserialize(archived).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// `[table, id, type, value, version, expiresAt]`: `read_audit_log` reads the first four, a
/// replication sender all six.
fn audit_entry(
    table: &str,
    key: &Value,
    kind: &str,
    value: Option<&Value>,
    version: f64,
    expires_at: Option<f64>,
) -> Value {
    Value::Array(vec![
        Value::String(table.to_string()),
        key.clone(),
        Value::String(kind.to_string()),
        value.cloned().unwrap_or(Value::Null),
        Value::Float(version),
        expires_at.map(Value::Float).unwrap_or(Value::Null),
    ])
}

/// This database's incarnation: made at random when the file is new (no `incarnation` in
/// `__meta__` yet) and kept in it, so a re-provisioned node under its old name starts a new
/// origin stream (docs/replication.md "Origins"). Runs while the database opens, before its
/// writer starts.
pub(super) fn incarnation(env: &Env<WithoutTls>, meta: &super::Db) -> Result<String, StoreError> {
    const KEY: &[u8] = b"incarnation";
    {
        let rtxn = env.read_txn()?;
        if let Some(v) = meta.get(&rtxn, KEY)? {
            return Ok(String::from_utf8_lossy(v).into_owned());
        }
    }
    let made = format!("{:016x}", rand::random::<u64>());
    let mut wtxn = env.write_txn()?;
    meta.put(&mut wtxn, KEY, made.as_bytes())?;
    wtxn.commit()?;
    Ok(made)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `steps` against a queue of `depth_max`: `true` sends a job (expecting `accepted`),
    /// `false` takes one.
    fn check(depth_max: usize, steps: &[(bool, bool)]) {
        let (handle, rx) = WriterHandle::new(depth_max);
        for (i, &(send, accepted)) in steps.iter().enumerate() {
            if send {
                let got = handle.tx.try_send(Job::Stop).is_ok();
                assert_eq!(got, accepted, "step {i}");
            } else {
                assert_eq!(rx.try_recv().is_some(), accepted, "step {i}");
            }
        }
    }

    #[test]
    fn the_queue_bound_counts_waiting_jobs_only() {
        check(2, &[(true, true), (true, true), (true, false)]);
        check(
            2,
            &[
                (true, true),
                (true, true),
                (false, true),
                (true, true),
                (true, false),
            ],
        );
        check(
            1,
            &[(false, false), (true, true), (false, true), (false, false)],
        );
        // A job sent past the bound (start-up, stop) does not make the count go below zero.
        let (handle, rx) = WriterHandle::new(1);
        assert!(handle.tx.send(Job::Stop).is_ok());
        assert!(rx.try_recv().is_some());
        assert!(handle.tx.try_send(Job::Stop).is_ok());
        assert!(handle.tx.try_send(Job::Stop).is_err());
    }
}
