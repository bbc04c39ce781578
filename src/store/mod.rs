//! Storage: one LMDB environment per database, tables and indexes as named sub-databases, the
//! audit log, and one writer thread per database. The only module that imports heed.
//!
//! Reads run on the calling core in a short read transaction ([`Database::read`]) that never waits
//! for the writer. Every change goes to the database's writer thread as a [`WriteRequest`]; the
//! writer commits whatever is queued as one LMDB transaction (group commit) — each request inside
//! it a nested transaction, so one request's failure leaves the others intact — then answers each
//! requester and publishes one [`Commit`] per request to the server. Nothing outside `writer.rs`
//! opens a write transaction.

mod check;
mod clock;
mod condition;
mod entry;
mod grow;
mod layout;
mod prune;
mod read;
mod replicate;
mod writer;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use heed::types::Bytes;
use heed::{CommitOrAbort, DatabaseFlags, Env, EnvFlags, EnvOpenOptions, WithoutTls};

/// A sub-database handle, valid for the life of its environment.
type Db = heed::Database<'static, Bytes, Bytes>;

/// Creates (or opens) a named sub-database in its own committed transaction.
fn create_db(env: &Env<WithoutTls>, name: &str, dup_sort: bool) -> Result<Db, StoreError> {
    let wtxn = env.write_txn()?;
    let created =
        env.create_databases_and_commit(wtxn, |opener, wtxn| -> Result<_, heed::Error> {
            let mut options = opener.database_options().types::<Bytes, Bytes>();
            options.name(name);
            if dup_sort {
                options.flags(DatabaseFlags::DUP_SORT);
            }
            options.create(wtxn).map(CommitOrAbort::<_, ()>::Commit)
        })?;
    match created {
        CommitOrAbort::Commit(db) => Ok(db),
        CommitOrAbort::Abort(()) => Err(StoreError::Io(format!(
            "creating sub-database {name} was aborted"
        ))),
    }
}

use crate::schema::TableDef;

pub use crate::change::{Change, ChangeKind, Commit};
pub use check::IndexReport;
pub use clock::{now_ms, Clock};
pub use condition::{Condition, ConditionFailed};
pub use entry::Header;
pub use prune::{PruneStep, PRUNE_BATCH};
pub use read::{
    cache_reads_on_this_thread, release_cached_reads, IndexCursor, ReadTxn, Record, Scan,
};
pub use replicate::{
    node_id_of, stream_node, ApplyJob, ApplyOutcome, AuditTxn, CommitSignal, EntryKind, RawRecord,
    ReplicatedEntry, ReplicatedTxn, SnapshotRecord,
};
pub use writer::{
    AlterFn, OpResult, PutMode, SchemaChange, SchemaReply, WriteError, WriteOp, WriteOutcome,
    WriteRequest,
};

/// Bytes of address space reserved per environment. LMDB maps it lazily and the file grows with
/// the data, so a large reservation costs nothing until used; reaching it fails writes with
/// `StoreError::MapFull` (507; `storage.mapSize`, docs/configuration.md, sets it).
pub const MAP_BYTES_DEFAULT: usize = 1 << 40;
/// Named sub-databases per environment: tables plus one per index. LMDB zeroes an array of this
/// many entries at every transaction begin (reads included), so it is a per-request cost: 4,096
/// made a GET by id spend about a tenth of its CPU in `memset`.
const NAMED_DBS_MAX: u32 = 1024;
/// How long `drop_database` waits for in-flight reads to release the database.
const DROP_WAIT: Duration = Duration::from_secs(5);
/// Primary keys longer than this (encoded) are refused (docs/applications.md).
pub const KEY_BYTES_MAX: usize = 250;

#[derive(Debug, Clone, PartialEq)]
pub enum StoreError {
    /// LMDB or the file system failed; the message says how. Not retried silently.
    Io(String),
    /// Stored bytes that do not decode: a bug or a damaged file.
    Corrupt(String),
    NoSuchDatabase(String),
    NoSuchTable(String),
    /// A table of that name exists already (the name alone, for the message).
    TableExists(String),
    MapFull,
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Io(m) => write!(f, "storage error: {m}"),
            StoreError::Corrupt(m) => write!(f, "corrupt stored data: {m}"),
            StoreError::NoSuchDatabase(d) => write!(f, "database '{d}' does not exist"),
            StoreError::NoSuchTable(t) => write!(f, "Table '{t}' does not exist"),
            StoreError::TableExists(t) => write!(f, "Table '{t}' already exists"),
            StoreError::MapFull => f.write_str("the database map is full (raise storage.mapSize)"),
        }
    }
}

impl std::error::Error for StoreError {}

impl From<heed::Error> for StoreError {
    fn from(e: heed::Error) -> Self {
        match e {
            heed::Error::Mdb(heed::MdbError::MapFull) => StoreError::MapFull,
            heed::Error::Mdb(heed::MdbError::DbsFull) => StoreError::Io(format!(
                "this database already holds {NAMED_DBS_MAX} tables and indexes, the most it can; \
                 put further tables in another database"
            )),
            other => StoreError::Io(other.to_string()),
        }
    }
}

/// Receives every commit, on the writer thread, after the replies were sent: a commit group's
/// commits in one call, in commit order. Must not block.
pub type Publisher = Arc<dyn Fn(&[Arc<Commit>]) + Send + Sync>;

#[derive(Clone)]
pub struct StoreOptions {
    pub path: PathBuf,
    /// Commit waits for fsync (`storage.sync`).
    pub sync: bool,
    /// Requests committed together at most (`storage.commitBatchMax`); 1 = one fsync per request.
    pub commit_batch_max: usize,
    /// Requests queued per database before new ones are refused with 503.
    pub queue_max: usize,
    /// A request that waited this long in the queue is refused with 503.
    pub queue_time_max: Duration,
    /// `logging.auditRetention`: the writer trims audit transactions older than this in its
    /// idle time (`prune.rs`); None keeps the whole log.
    pub audit_retention: Option<Duration>,
    pub map_bytes: usize,
    /// This node's id in record headers: [`node_id_of`] the name.
    pub node_id: u32,
    /// This node's name (`replication.hostname`): the origin of its audit entries.
    pub node_name: String,
}

impl StoreOptions {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            sync: true,
            commit_batch_max: 1024,
            queue_max: 65_536,
            queue_time_max: Duration::from_secs(45),
            audit_retention: None,
            map_bytes: MAP_BYTES_DEFAULT,
            node_id: node_id_of("local"),
            node_name: "local".into(),
        }
    }

    /// Names this node: its audit entries and records carry the name and its id.
    pub fn with_node_name(mut self, name: &str) -> Self {
        self.node_id = node_id_of(name);
        self.node_name = name.to_string();
        self
    }
}

/// Every database of this node.
/// Bumped after every change to which databases and tables exist, in any store of the process
/// (rare: schema changes, `create_table`, `drop_*`). Per-core caches of resolved names hold
/// entries of one generation and resolve again when it moves.
static CATALOG_GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The current catalog generation (see [`catalog_changed`]).
pub fn catalog_generation() -> u64 {
    CATALOG_GENERATION.load(std::sync::atomic::Ordering::Acquire)
}

/// Marks names resolved before now as stale; called after the change is visible.
pub fn catalog_changed() {
    CATALOG_GENERATION.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
}

pub struct Store {
    options: StoreOptions,
    clock: Arc<Clock>,
    publisher: Publisher,
    // Read-mostly: written when a database is created or dropped, read per request briefly.
    databases: RwLock<BTreeMap<String, Arc<Database>>>,
}

/// A table's handles: its records and one duplicate-sorted index per indexed attribute.
pub struct Table {
    pub def: Arc<TableDef>,
    pub name: Arc<str>,
    /// Declared by a schema file (false for tables created through the Operations API, which
    /// grow an indexed attribute for each new top-level property).
    pub schema_defined: bool,
    records: Db,
    indexes: Vec<(String, Db)>,
}

impl Table {
    pub fn indexed(&self, attribute: &str) -> bool {
        self.indexes.iter().any(|(a, _)| a == attribute)
    }

    fn index(&self, attribute: &str) -> Option<&Db> {
        self.indexes
            .iter()
            .find(|(a, _)| a == attribute)
            .map(|(_, db)| db)
    }
}

pub struct Database {
    pub name: Arc<str>,
    env: Env<WithoutTls>,
    tables: RwLock<BTreeMap<String, Arc<Table>>>,
    meta: Db,
    audit: Db,
    writer: writer::WriterHandle,
    pub stats: WriterStats,
    /// Bumped after each commit is durable; replication senders wait on it.
    pub commits: CommitSignal,
    /// The bits of the last version whose group is durable: replication senders read the audit
    /// log up to there, so they never announce a write that a crash could still undo
    /// (docs/design.md "Pipelined commits").
    durable: std::sync::atomic::AtomicU64,
    /// The origin of this database's own transactions: `<node name>#<incarnation>`, the
    /// incarnation made with the database file (docs/replication.md "Origins").
    pub stream: Arc<str>,
    /// Unique for the process's life, unlike an address: what a core's cached read transaction
    /// is matched by (`read.rs`).
    serial: u64,
}

/// Upper bounds (inclusive) of the commit-latency histogram buckets, in microseconds.
pub const COMMIT_MICROS_BUCKETS: [u64; 8] =
    [100, 500, 1_000, 5_000, 10_000, 50_000, 100_000, 1_000_000];

/// The writer's counters, written by the writer thread only, read by `/metrics`.
#[derive(Default)]
pub struct WriterStats {
    /// LMDB commits (one per group).
    pub commits: std::sync::atomic::AtomicU64,
    /// Write requests applied (each a nested transaction).
    pub requests: std::sync::atomic::AtomicU64,
    pub requests_failed: std::sync::atomic::AtomicU64,
    /// Commit latency histogram, cumulative per bucket of [`COMMIT_MICROS_BUCKETS`] plus +Inf.
    pub commit_micros_buckets: [std::sync::atomic::AtomicU64; 9],
    pub commit_micros_sum: std::sync::atomic::AtomicU64,
    pub batch_size_max: std::sync::atomic::AtomicU64,
}

impl WriterStats {
    fn record_commit(&self, requests: u64, micros: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        self.commits.fetch_add(1, Relaxed);
        self.requests.fetch_add(requests, Relaxed);
        self.commit_micros_sum.fetch_add(micros, Relaxed);
        for (i, bound) in COMMIT_MICROS_BUCKETS.iter().enumerate() {
            if micros <= *bound {
                self.commit_micros_buckets[i].fetch_add(1, Relaxed);
            }
        }
        self.commit_micros_buckets[COMMIT_MICROS_BUCKETS.len()].fetch_add(1, Relaxed);
        self.batch_size_max.fetch_max(requests, Relaxed);
    }
}

impl Database {
    pub fn table(&self, name: &str) -> Option<Arc<Table>> {
        self.tables
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    pub fn table_names(&self) -> Vec<String> {
        self.tables
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect()
    }

    /// Called by the writer once every version up to `version` is durable.
    fn announce_durable(&self, version: f64) {
        self.durable
            .fetch_max(version.to_bits(), std::sync::atomic::Ordering::Release);
    }

    /// The last durable version (see `durable`).
    fn durable_version(&self) -> f64 {
        f64::from_bits(self.durable.load(std::sync::atomic::Ordering::Acquire))
    }

    /// A read snapshot. Keep it short: open, read, encode, drop — then await.
    pub fn read(&self) -> Result<ReadTxn<'_>, StoreError> {
        ReadTxn::new(self)
    }

    /// Queues a write; the receiver completes once it is committed (and synced) or refused.
    pub fn submit(
        &self,
        request: WriteRequest,
    ) -> Result<tidepool_io::OneshotReceiver<Result<WriteOutcome, WriteError>>, WriteError> {
        self.writer.submit(request)
    }

    /// Queues a replicated transaction, snapshot chunk or cursor update on the writer.
    pub fn apply(
        &self,
        job: ApplyJob,
    ) -> Result<tidepool_io::OneshotReceiver<Result<ApplyOutcome, WriteError>>, WriteError> {
        self.writer.apply(job)
    }

    /// Creates or migrates a table (blocking: for start-up and admin threads, not executors).
    pub fn ensure_table_blocking(&self, def: TableDef) -> Result<Arc<Table>, StoreError> {
        self.writer.ensure_table_blocking(def)
    }

    /// Queues a table-level change on the writer; the receiver completes once it is done, so a
    /// core can await it without blocking. Every core sees the change before the reply.
    pub fn schema(&self, change: SchemaChange) -> Result<writer::SchemaReply, StoreError> {
        self.writer.schema(change)
    }

    /// Removes `table`'s audit entries older than `before` from up to [`PRUNE_BATCH`]
    /// transactions after `after`, on the writer thread in order with the writes around it
    /// (`prune.rs`); call again from [`PruneStep::last`] until it is `None`. Blocking: for job
    /// threads, never an executor.
    pub fn prune_audit_blocking(
        &self,
        table: &str,
        before: f64,
        after: Option<f64>,
    ) -> Result<PruneStep, StoreError> {
        self.writer.prune_audit_blocking(table, before, after)
    }

    /// Reopens every table recorded in `__meta__` (before the writer starts).
    fn reopen_tables(&self) -> Result<(), StoreError> {
        let stored: Vec<layout::StoredTable> = {
            let rtxn = self.env.read_txn()?;
            let mut out = Vec::new();
            for item in self.meta.prefix_iter(&rtxn, b"table:")? {
                let (_, bytes) = item?;
                match serde_json::from_slice::<layout::StoredTable>(bytes) {
                    Ok(t) => out.push(t),
                    Err(e) => {
                        return Err(StoreError::Corrupt(format!(
                            "table definition in {}: {e}",
                            self.name
                        )))
                    }
                }
            }
            out
        };
        for table in stored {
            writer::ensure_table(self, table.to_def(&self.name))?;
        }
        Ok(())
    }

    pub fn file_size(&self) -> u64 {
        self.env.real_disk_size().unwrap_or(0)
    }

    /// Bytes of the map in use (last page × page size) and reserved.
    pub fn map_usage(&self) -> (u64, u64) {
        (used_bytes(&self.env), self.env.info().map_size as u64)
    }
}

/// The end of LMDB's last used page, in bytes from the start of the file.
fn used_bytes(env: &Env<WithoutTls>) -> u64 {
    let page = u64::from(env.unnamed_database_stat().page_size);
    (env.info().last_page_number as u64 + 1) * page
}

impl Store {
    /// Opens every `<path>/<db>.mdb` already present and starts their writers.
    pub fn open(options: StoreOptions, publisher: Publisher) -> Result<Arc<Store>, StoreError> {
        std::fs::create_dir_all(&options.path)
            .map_err(|e| StoreError::Io(format!("{}: {e}", options.path.display())))?;
        let store = Arc::new(Store {
            options,
            clock: Arc::new(Clock::new()),
            publisher,
            databases: RwLock::new(BTreeMap::new()),
        });
        let entries =
            std::fs::read_dir(&store.options.path).map_err(|e| StoreError::Io(e.to_string()))?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(db) = name.strip_suffix(".mdb") {
                store.open_database(db)?;
            }
        }
        Ok(store)
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    pub fn database(&self, name: &str) -> Option<Arc<Database>> {
        self.databases
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    pub fn database_names(&self) -> Vec<String> {
        self.databases
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect()
    }

    /// Opens (creating when missing) the database `name`.
    pub fn open_database(&self, name: &str) -> Result<Arc<Database>, StoreError> {
        let mut databases = self.databases.write().unwrap_or_else(|e| e.into_inner());
        if let Some(db) = databases.get(name) {
            return Ok(db.clone());
        }
        let path = self.options.path.join(format!("{name}.mdb"));
        let mut opts = EnvOpenOptions::new().read_txn_without_tls();
        opts.map_size(self.options.map_bytes)
            .max_dbs(NAMED_DBS_MAX)
            .max_readers(1024);
        // With `storage.sync` the meta page is not synced by its own commit: the writer makes
        // a group durable with the next group's data sync or a `force_sync` before answering it
        // (docs/design.md "Pipelined commits").
        let mut flags = EnvFlags::NO_SUB_DIR | EnvFlags::NO_META_SYNC;
        if !self.options.sync {
            flags |= EnvFlags::NO_SYNC;
        }
        // SAFETY: heed's contract for flags/open: the file is not opened twice in this process
        // (the registry above guarantees one Env per path) and NO_SUB_DIR matches how it is created.
        let env = unsafe {
            opts.flags(flags);
            opts.open(&path)
        }
        .map_err(|e| StoreError::Io(format!("cannot open {}: {e}", path.display())))?;
        let meta = create_db(&env, layout::META, false)?;
        let audit = create_db(&env, layout::AUDIT, false)?;
        // The newest audit entry holds the highest version this database ever issued.
        let mut newest = 0.0;
        {
            let rtxn = env.read_txn()?;
            if let Some((key, _)) = audit.last(&rtxn)? {
                if let Some(v) = layout::version_from_audit_key(key) {
                    self.clock.observe(v);
                    newest = v;
                }
            }
        }
        let incarnation = writer::incarnation(&env, &meta)?;
        let stream: Arc<str> =
            Arc::from(replicate::stream_id(&self.options.node_name, &incarnation));
        let name: Arc<str> = Arc::from(name);
        let (writer, job_rx) = writer::WriterHandle::new(self.options.queue_max);
        let db = Arc::new(Database {
            name: name.clone(),
            env,
            tables: RwLock::new(BTreeMap::new()),
            meta,
            audit,
            writer,
            stats: WriterStats::default(),
            commits: CommitSignal::default(),
            durable: std::sync::atomic::AtomicU64::new(f64::to_bits(newest)),
            stream,
            serial: {
                static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
                NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            },
        });
        db.reopen_tables()?;
        // What opening committed (incarnation, index migrations) is durable before any write.
        if self.options.sync {
            db.env.force_sync()?;
        }
        writer::spawn(
            db.clone(),
            job_rx,
            self.clock.clone(),
            self.publisher.clone(),
            self.options.clone(),
        )?;
        databases.insert(name.to_string(), db.clone());
        catalog_changed();
        Ok(db)
    }

    /// Creates missing databases and tables for `defs` and migrates their indexes (blocking).
    pub fn apply_schema(&self, defs: &[TableDef]) -> Result<(), StoreError> {
        for def in defs {
            let db = self.open_database(&def.database)?;
            db.ensure_table_blocking(def.clone())?;
        }
        Ok(())
    }

    /// Removes the database `name`: stops its writer, waits (bounded) for readers to let go of
    /// it, and deletes its files, so the name can be created again at once. Blocking: for admin
    /// threads, never executors.
    pub fn drop_database(&self, name: &str) -> Result<(), StoreError> {
        let Some(db) = self
            .databases
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name)
        else {
            return Err(StoreError::NoSuchDatabase(name.to_string()));
        };
        catalog_changed();
        db.writer.stop_blocking();
        // Reads hold the Arc only for one short read transaction; the environment must be
        // closed before a database of the same name can open the same path again.
        let deadline = std::time::Instant::now() + DROP_WAIT;
        while Arc::strong_count(&db) > 1 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        let env = match Arc::try_unwrap(db) {
            Ok(db) => db.env,
            Err(_) => {
                return Err(StoreError::Io(format!(
                    "database '{name}' is still in use; try again"
                )))
            }
        };
        env.prepare_for_closing().wait();
        let path = self.options.path.join(format!("{name}.mdb"));
        let lock = self.options.path.join(format!("{name}.mdb-lock"));
        std::fs::remove_file(&path)
            .map_err(|e| StoreError::Io(format!("{}: {e}", path.display())))?;
        let _ = std::fs::remove_file(lock);
        Ok(())
    }

    /// Stops every writer after it drains its queue, and syncs. Blocking.
    pub fn close(&self) {
        let databases: Vec<Arc<Database>> = self
            .databases
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        for db in databases {
            db.writer.stop_blocking();
            let _ = db.env.force_sync();
        }
    }

    pub fn path(&self) -> &Path {
        &self.options.path
    }
}

#[cfg(test)]
mod tests;
