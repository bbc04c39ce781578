//! Background jobs of the Operations API (HarperDB's `system.hdb_job`): the CSV bulk loads
//! (`csv_data_load`, `csv_file_load`, `csv_url_load`), `delete_records_before`, `get_job` and
//! `search_jobs_by_start_date`.
//!
//! A load answers with a job id at once; the work runs on a job thread of its own, never on an
//! executor. It reads the CSV (text from the request, a file on the server, or bytes a
//! caller-given function fetches), then checks every row first — ragged rows, values that do not
//! fit the table's attribute types, a missing key on `update` — and writes nothing when one is
//! wrong. Only then does it write the rows in batches of [`BATCH_RECORDS`] through the same path
//! as `insert`/`update`/`upsert` (`nosql::write_records`, one transaction per batch), recording
//! progress in the job record after each batch. Job records live in `system.hdb_job`, so they
//! survive restart; a job left unfinished that no thread of this process runs was cut short by a
//! stop and reads as `ERROR`. This module never parses protocol bytes: fetching a URL is the
//! caller's function.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, LazyLock, Mutex};

use super::nosql::{
    self, PutKind, RecordWrite, WriteSummary, ATTRIBUTE_BYTES_MAX, TABLE_ATTRIBUTES_MAX,
};
use super::permissions::{self, Action};
use super::tables::SYSTEM;
use super::{canonical_number, parse_id, validate_record, write, Caller, Resources, Validation};
use super::{users, VerbError};
use crate::schema::{FieldType, TableDef};
use crate::store::{now_ms, Database, PutMode, Table, WriteOp, WriteRequest};
use crate::value::csv::{CsvLimits, Reader};
use crate::value::{self, DecodeLimits, Object, Value};
pub use tidepool_io::block_on;

/// The system table of job records.
pub const JOB_TABLE: &str = "hdb_job";
/// Largest CSV a load reads (a file's size is checked before it is read; a fetch stops here).
pub const CSV_BYTES_MAX: usize = 256 << 20;
/// Rows of one CSV, the header included.
pub const CSV_ROWS_MAX: u64 = 10_000_000;
/// One field of a CSV, after unquoting.
pub const CSV_FIELD_BYTES_MAX: usize = 1 << 20;
/// Records per write transaction of a load; progress is recorded after each.
pub const BATCH_RECORDS: usize = 1_000;
/// Jobs running at once in this process; more wait in a queue (as HarperDB queues them). Each
/// running load may hold a CSV of [`CSV_BYTES_MAX`] in memory, so this bounds that memory too.
pub const JOBS_RUNNING_MAX: usize = 4;
/// Jobs waiting for one of the [`JOBS_RUNNING_MAX`] places; one more is refused with 503 until
/// the queue shortens. A waiting job holds only its request (a `csv_data_load`'s text is within
/// the request body limit) and a parked thread.
pub const JOBS_QUEUED_MAX: usize = 64;
/// Invalid rows named in an `ERROR` job's message (the count covers them all).
pub const PROBLEMS_SHOWN_MAX: usize = 10;

const LIMITS: CsvLimits = CsvLimits {
    bytes_max: CSV_BYTES_MAX,
    rows_max: CSV_ROWS_MAX,
    fields_max: TABLE_ATTRIBUTES_MAX,
    field_bytes_max: CSV_FIELD_BYTES_MAX,
};

/// JSON text in a CSV field (a nested array or object) is read within these.
const FIELD_JSON_LIMITS: DecodeLimits = DecodeLimits {
    depth_max: 64,
    bytes_max: CSV_FIELD_BYTES_MAX,
    values_max: 100_000,
};

/// Where a job stands, as HarperDB names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Created,
    InProgress,
    Complete,
    Error,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Status::Created => "CREATED",
            Status::InProgress => "IN_PROGRESS",
            Status::Complete => "COMPLETE",
            Status::Error => "ERROR",
        }
    }
}

/// Fetches a URL's body on the job thread, reading at most the given number of bytes; the error
/// is the job's message.
pub type Fetch = Box<dyn FnOnce(usize) -> Result<Vec<u8>, String> + Send>;

/// Where a load's CSV comes from.
pub enum CsvSource {
    /// The text itself (`csv_data_load`'s `data`).
    Data(String),
    /// A file on the server (`csv_file_load`'s `file_path`).
    File(PathBuf),
    /// A URL and the function that fetches it (`csv_url_load`'s `csv_url`).
    Url { url: String, fetch: Fetch },
}

impl CsvSource {
    fn job_type(&self) -> &'static str {
        match self {
            CsvSource::Data(_) => "csv_data_load",
            CsvSource::File(_) => "csv_file_load",
            CsvSource::Url { .. } => "csv_url_load",
        }
    }
}

/// One CSV load: the rows of `source` written to `database.table` as `kind` says.
pub struct CsvLoad {
    pub database: String,
    pub table: String,
    pub kind: PutKind,
    pub source: CsvSource,
}

/// Ids of the jobs this process runs. A record still `CREATED` or `IN_PROGRESS` whose id is not
/// here was cut short by a stop.
static RUNNING: LazyLock<Mutex<HashSet<String>>> = LazyLock::new(|| Mutex::new(HashSet::new()));

/// Jobs doing their work now (at most [`JOBS_RUNNING_MAX`]); the others in [`RUNNING`] wait on
/// [`TURN`] for a place.
static WORKING: Mutex<usize> = Mutex::new(0);
static TURN: std::sync::Condvar = std::sync::Condvar::new();

/// A place among the jobs of this process (running or queued), given back when the job thread
/// ends (or never starts).
struct Slot(String);

impl Slot {
    fn reserve(id: &str) -> Option<Slot> {
        let mut running = RUNNING.lock().unwrap_or_else(|e| e.into_inner());
        if running.len() >= JOBS_RUNNING_MAX + JOBS_QUEUED_MAX {
            return None;
        }
        running.insert(id.to_string());
        Some(Slot(id.to_string()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        RUNNING
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.0);
    }
}

/// One of the [`JOBS_RUNNING_MAX`] working places, waited for on the job thread (never on an
/// executor) and given back on drop.
struct Turn;

impl Turn {
    fn wait() -> Turn {
        let mut working = WORKING.lock().unwrap_or_else(|e| e.into_inner());
        while *working >= JOBS_RUNNING_MAX {
            working = TURN.wait(working).unwrap_or_else(|e| e.into_inner());
        }
        *working += 1;
        Turn
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        let mut working = WORKING.lock().unwrap_or_else(|e| e.into_inner());
        *working = working.saturating_sub(1);
        TURN.notify_one();
    }
}

/// The ids of running jobs, taken *before* reading job records: a job that finishes between the
/// two reads has its final record stored before it leaves this set, so a record read after the
/// snapshot is never mistaken for an interrupted one.
fn running_now() -> HashSet<String> {
    RUNNING.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Writes (inserts or merges) fields of one job record.
async fn put_job(
    resources: &Resources,
    caller: &Caller,
    mut record: Object,
    mode: PutMode,
) -> Result<(), VerbError> {
    let (db, t) = resources
        .table(SYSTEM, JOB_TABLE)
        .ok_or_else(|| VerbError::new(500, format!("system table {JOB_TABLE} is missing")))?;
    let validation = if mode == PutMode::Insert {
        Validation::Full
    } else {
        Validation::Partial
    };
    validate_record(&t.def, &mut record, validation).map_err(|e| VerbError::new(500, e))?;
    write(
        &db,
        WriteRequest {
            ops: vec![WriteOp::Put {
                table: JOB_TABLE.to_string(),
                key: None,
                record: Value::Object(record),
                mode,
                expires_in_s: None,
            }],
            user: caller.username.clone(),
            extras: None,
        },
    )
    .await?;
    Ok(())
}

/// A job's work, run on its thread: `Ok` is the `COMPLETE` message, `Err` the `ERROR` one (a
/// text, or a refusal's whole body, as HarperDB stores a permission refusal); the counts it keeps
/// are stored with the end state.
type Work = Box<dyn FnOnce(&Job<'_>, &mut Counts) -> Result<String, Value> + Send>;

/// The running job a work function reports to.
struct Job<'a> {
    resources: &'a Resources,
    caller: &'a Caller,
    id: &'a str,
}

impl Job<'_> {
    /// Merges `fields` into the job record; a failure is logged, not fatal.
    fn update(&self, fields: Vec<(&str, Value)>) {
        let mut record = Object::new();
        record.insert("id", Value::from(self.id));
        for (k, v) in fields {
            record.insert(k, v);
        }
        if let Err(e) = block_on(put_job(
            self.resources,
            self.caller,
            record,
            PutMode::Update,
        )) {
            tracing::warn!("job {}: cannot record its state: {}", self.id, e.message);
        }
    }

    fn progress(&self, counts: &Counts) {
        self.update(counts.fields().into_iter().collect());
    }
}

/// Stores the job record as `IN_PROGRESS` (as HarperDB does before it answers, so a `get_job`
/// right after the answer never meets a job that has not begun; a queued job reads the same) and
/// runs `work` on a job thread once one of the [`JOBS_RUNNING_MAX`] places is free; returns the
/// job id. Past [`JOBS_QUEUED_MAX`] waiting jobs the request is refused with 503.
async fn start_job(
    resources: &Arc<Resources>,
    caller: &Caller,
    job_type: &'static str,
    body: Object,
    work: Work,
) -> Result<String, VerbError> {
    let id = uuid::Uuid::new_v4().to_string();
    let slot = Slot::reserve(&id).ok_or_else(|| {
        VerbError::new(
            503,
            format!(
                "{JOBS_RUNNING_MAX} jobs are running and {JOBS_QUEUED_MAX} are queued; \
                 try again when one has finished"
            ),
        )
    })?;
    let mut record = Object::new();
    record.insert("id", Value::from(id.as_str()));
    record.insert("type", Value::from(job_type));
    record.insert("status", Value::from(Status::InProgress.name()));
    record.insert(
        "user",
        caller.username.as_deref().map_or(Value::Null, Value::from),
    );
    record.insert("message", Value::from(""));
    record.insert("job_body", Value::Object(body));
    let now = Value::Float(now_ms());
    record.insert("created_datetime", now.clone());
    record.insert("start_datetime", now);
    put_job(resources, caller, record, PutMode::Insert).await?;
    let r = resources.clone();
    let who = caller.clone();
    let job_id = id.clone();
    let spawned = std::thread::Builder::new()
        .name("job".into())
        .spawn(move || {
            let _slot = slot;
            let _turn = Turn::wait();
            let job = Job {
                resources: &r,
                caller: &who,
                id: &job_id,
            };
            let mut counts = Counts::default();
            let (status, message) = match work(&job, &mut counts) {
                Ok(message) => (Status::Complete, Value::from(message.as_str())),
                Err(message) => (Status::Error, message),
            };
            let mut fields = vec![
                ("status", Value::from(status.name())),
                ("message", message),
                ("end_datetime", Value::Float(now_ms())),
            ];
            fields.extend(counts.fields());
            job.update(fields);
        });
    if let Err(e) = spawned {
        let message = format!("cannot start a job thread: {e}");
        let mut record = Object::new();
        record.insert("id", Value::from(id.as_str()));
        record.insert("status", Value::from(Status::Error.name()));
        record.insert("message", Value::from(message.as_str()));
        record.insert("end_datetime", Value::Float(now_ms()));
        put_job(resources, caller, record, PutMode::Update).await?;
        return Err(VerbError::new(503, message));
    }
    Ok(id)
}

/// Work a protocol hands to a job (`export_local`): run on the job thread once its turn comes;
/// `Ok` is the `COMPLETE` message (also stored as `result.message`, where HarperDB's export
/// jobs put it), `Err` the `ERROR` one.
pub type Task = Box<dyn FnOnce() -> Result<String, String> + Send>;

/// Starts `task` as a job of `job_type` whose record shows `body`; returns the job id.
pub async fn start_task(
    resources: &Arc<Resources>,
    caller: &Caller,
    job_type: &'static str,
    body: Object,
    task: Task,
) -> Result<String, VerbError> {
    let work: Work = Box::new(move |job, _counts| {
        let outcome = task();
        if let Ok(message) = &outcome {
            let mut result = Object::new();
            result.insert("message", Value::from(message.as_str()));
            job.update(vec![("result", Value::Object(result))]);
        }
        outcome.map_err(Value::from)
    });
    start_job(resources, caller, job_type, body, work).await
}

fn refuse_system(database: &str) -> Result<(), VerbError> {
    if database == SYSTEM {
        return Err(VerbError::new(
            403,
            "Records of the 'system' database cannot be written by jobs",
        ));
    }
    Ok(())
}

/// Starts a CSV load and returns its job id once the job record is stored; the rows are read
/// and written on a job thread. Refusals here (missing table, `system`, too many jobs) write
/// nothing; everything that can go wrong with the CSV itself ends the job as `ERROR`.
pub async fn start_csv_load(
    resources: &Arc<Resources>,
    caller: &Caller,
    load: CsvLoad,
) -> Result<String, VerbError> {
    refuse_system(&load.database)?;
    nosql::write_table(resources, &load.database, &load.table)?;
    if let CsvSource::File(path) = &load.source {
        // As HarperDB: a file that is not there is a 400 at once, not a job (the stat runs on an
        // admin thread, never on a core).
        let owned = path.clone();
        let missing = super::run_blocking(move || {
            matches!(std::fs::metadata(&owned), Err(e) if e.kind() == std::io::ErrorKind::NotFound)
        })
        .await?;
        if missing {
            return Err(VerbError::bad(format!(
                "No such file or directory {}",
                path.display()
            )));
        }
    }
    let job_type = load.source.job_type();
    let mut body = Object::new();
    body.insert("operation", Value::from(job_type));
    body.insert("action", Value::from(kind_name(load.kind)));
    body.insert("database", Value::from(load.database.as_str()));
    body.insert("table", Value::from(load.table.as_str()));
    match &load.source {
        CsvSource::Data(text) => body.insert("data_bytes", Value::Int(text.len() as i64)),
        CsvSource::File(path) => {
            body.insert("file_path", Value::from(path.to_string_lossy().as_ref()))
        }
        CsvSource::Url { url, .. } => body.insert("csv_url", Value::from(url.as_str())),
    };
    let work: Work = Box::new(move |job, counts| {
        let CsvLoad {
            database,
            table,
            kind,
            source,
        } = load;
        let target = Target {
            job,
            database: &database,
            table: &table,
            kind,
        };
        let bytes = as_utf8(read_source(source).map_err(Value::from)?);
        target.check_columns(&bytes)?;
        target.load(&bytes, counts).map_err(Value::from)
    });
    start_job(resources, caller, job_type, body, work).await
}

/// The table a `*_before` job works on (never `system`'s), and the start of its job body.
fn table_job(
    resources: &Arc<Resources>,
    operation: &str,
    database: &str,
    table: &str,
) -> Result<(Arc<Database>, Arc<Table>, Object), VerbError> {
    refuse_system(database)?;
    let (db, t) = nosql::write_table(resources, database, table)?;
    let mut body = Object::new();
    body.insert("operation", Value::from(operation));
    body.insert("database", Value::from(database));
    body.insert("table", Value::from(table));
    Ok((db, t, body))
}

/// `delete_records_before`: deletes, on a job thread, every record of the table whose
/// `@createdTime` attribute (`__createdtime__` on Operations API tables) is before `before_ms`.
pub async fn start_delete_before(
    resources: &Arc<Resources>,
    caller: &Caller,
    database: &str,
    table: &str,
    before_ms: f64,
) -> Result<String, VerbError> {
    let (_, t, mut body) = table_job(resources, "delete_records_before", database, table)?;
    let created = t
        .def
        .attributes
        .iter()
        .find(|a| a.created_time)
        .map(|a| a.name.clone())
        .ok_or_else(|| {
            VerbError::bad(format!(
                "Table '{database}.{table}' has no @createdTime attribute to compare with"
            ))
        })?;
    body.insert("date", iso(before_ms));
    let (database, table) = (database.to_string(), table.to_string());
    let work: Work = Box::new(move |job, counts| {
        delete_before(job, &database, &table, &created, before_ms, counts).map_err(Value::from)
    });
    start_job(resources, caller, "delete_records_before", body, work).await
}

/// `delete_audit_logs_before`: removes, on a job thread, the audit entries of one table older
/// than `before_ms`, a bounded batch of transactions per write (the store keeps what
/// replication needs: docs/replication.md "Pruned audit log"). Completes with HarperDB's
/// message, `Successfully completed job: <id>`, and the counts in `result`.
pub async fn start_delete_audit_before(
    resources: &Arc<Resources>,
    caller: &Caller,
    database: &str,
    table: &str,
    before_ms: f64,
    job_type: &'static str,
) -> Result<String, VerbError> {
    let (db, _, mut body) = table_job(resources, job_type, database, table)?;
    body.insert("timestamp", Value::Float(before_ms));
    let table = table.to_string();
    let work: Work = Box::new(move |job, _counts| {
        let (mut removed, mut transactions) = (0u64, 0u64);
        let mut after = None;
        loop {
            let step = db
                .prune_audit_blocking(&table, before_ms, after)
                .map_err(|e| Value::from(e.to_string()))?;
            removed += step.removed;
            transactions += step.transactions;
            match step.last {
                Some(last) => after = Some(last),
                None => break,
            }
        }
        let mut result = Object::new();
        result.insert("audit_entries_removed", Value::Int(removed as i64));
        result.insert("transactions_changed", Value::Int(transactions as i64));
        job.update(vec![("result", Value::Object(result))]);
        Ok(format!("Successfully completed job: {}", job.id))
    });
    start_job(resources, caller, job_type, body, work).await
}

/// `restart_service` (docs/operations-api.md): a job that asks the linked nodes to restart
/// (`peers`), is recorded `COMPLETE`, then restarts this process as `restart` does. Returns
/// the job's id and HarperDB's message, `Restarting <service>`.
pub async fn start_restart(
    resources: &Arc<Resources>,
    caller: &Caller,
    service: &str,
    peers: Box<dyn FnOnce() + Send>,
) -> Result<(String, String), VerbError> {
    let message = format!("Restarting {service}");
    let done = message.clone();
    let work: Work = Box::new(move |job, _counts| {
        peers();
        // Recorded before the restart stops the process (the job's own update comes too late).
        job.update(vec![
            ("status", Value::from(Status::Complete.name())),
            ("message", Value::from(done.as_str())),
            ("end_datetime", Value::Float(now_ms())),
        ]);
        super::request_restart().map_err(|e| Value::from(e.message))?;
        Ok(done)
    });
    let mut body = Object::new();
    body.insert("service", Value::from(service));
    let id = start_job(resources, caller, "restart_service", body, work).await?;
    Ok((id, message))
}

/// Collects the keys created before `before_ms` in one read snapshot (keys only), then deletes
/// them in batches of [`BATCH_RECORDS`], one transaction each.
fn delete_before(
    job: &Job<'_>,
    database: &str,
    table: &str,
    created: &str,
    before_ms: f64,
    counts: &mut Counts,
) -> Result<String, String> {
    use crate::value::{Kind, ValueView};
    let (db, t) = nosql::write_table(job.resources, database, table).map_err(|e| e.message)?;
    let mut keys = Vec::new();
    {
        let txn = db.read().map_err(|e| e.to_string())?;
        for item in txn.scan(&t, false).map_err(|e| e.to_string())? {
            let (key, record) = item.map_err(|e| e.to_string())?;
            let at = match record.value.get(created).map(|v| v.kind()) {
                Some(Kind::Int(ms)) => ms as f64,
                Some(Kind::Float(ms) | Kind::Date(ms)) => ms,
                _ => continue,
            };
            if at < before_ms {
                keys.push(value::key::decode(key).map_err(|e| e.to_string())?);
            }
        }
    }
    counts.total = keys.len() as u64;
    job.progress(counts);
    for batch in keys.chunks(BATCH_RECORDS) {
        let write = RecordWrite::Delete {
            table: table.to_string(),
            ids: batch.to_vec(),
        };
        let (_, mut summaries) = block_on(nosql::write_records(
            job.resources,
            job.caller,
            database,
            vec![write],
        ))
        .map_err(|e| {
            format!(
                "{} (after deleting {} of {} records)",
                e.message, counts.loaded, counts.total
            )
        })?;
        let summary = summaries.pop().unwrap_or_default();
        counts.processed += batch.len() as u64;
        counts.loaded += summary.done.len() as u64;
        counts.skipped += summary.skipped.len() as u64;
        job.progress(counts);
    }
    // HarperDB's words, as `delete` answers.
    Ok(format!(
        "{} of {} {} successfully deleted",
        counts.loaded,
        counts.total,
        if counts.total == 1 {
            "record"
        } else {
            "records"
        }
    ))
}

fn kind_name(kind: PutKind) -> &'static str {
    match kind {
        PutKind::Insert => "insert",
        PutKind::Update => "update",
        PutKind::Upsert => "upsert",
    }
}

/// What a load has done so far.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Counts {
    total: u64,
    processed: u64,
    loaded: u64,
    skipped: u64,
    errors: u64,
}

impl Counts {
    fn fields(&self) -> [(&'static str, Value); 5] {
        let n = |v: u64| Value::Int(v.min(i64::MAX as u64) as i64);
        [
            ("records_total", n(self.total)),
            ("records_processed", n(self.processed)),
            ("records_loaded", n(self.loaded)),
            ("records_skipped", n(self.skipped)),
            ("records_error", n(self.errors)),
        ]
    }
}

/// The CSV's bytes, within [`CSV_BYTES_MAX`].
fn read_source(source: CsvSource) -> Result<Vec<u8>, String> {
    match source {
        CsvSource::Data(text) => Ok(text.into_bytes()),
        CsvSource::File(path) => {
            use std::io::Read;
            let shown = path.display();
            let meta = std::fs::metadata(&path).map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => format!("file '{shown}' does not exist"),
                _ => format!("cannot read file '{shown}': {e}"),
            })?;
            if !meta.is_file() {
                return Err(format!("'{shown}' is not a file"));
            }
            if meta.len() > CSV_BYTES_MAX as u64 {
                return Err(format!(
                    "file '{shown}' is larger than {CSV_BYTES_MAX} bytes"
                ));
            }
            let file = std::fs::File::open(&path)
                .map_err(|e| format!("cannot read file '{shown}': {e}"))?;
            let mut bytes = Vec::with_capacity(meta.len() as usize);
            // The file may grow after the size check; one byte past the limit is enough to tell.
            file.take(CSV_BYTES_MAX as u64 + 1)
                .read_to_end(&mut bytes)
                .map_err(|e| format!("cannot read file '{shown}': {e}"))?;
            Ok(bytes)
        }
        CsvSource::Url { url, fetch } => {
            fetch(CSV_BYTES_MAX).map_err(|e| format!("cannot fetch '{url}': {e}"))
        }
    }
}

/// The CSV as UTF-8: kept as it is when it is valid UTF-8, otherwise read as Latin-1
/// (ISO-8859-1, every byte one character), as HarperDB loads such files (Northwind's
/// `Customers.csv`). The result is at most twice as long and still within the reader's
/// [`CSV_BYTES_MAX`] check.
fn as_utf8(bytes: Vec<u8>) -> Vec<u8> {
    match String::from_utf8(bytes) {
        Ok(text) => text.into_bytes(),
        Err(e) => e
            .into_bytes()
            .iter()
            .map(|&b| char::from(b))
            .collect::<String>()
            .into_bytes(),
    }
}

/// The table a load writes to, and the job it reports to.
struct Target<'a> {
    job: &'a Job<'a>,
    database: &'a str,
    table: &'a str,
    kind: PutKind,
}

impl Target<'_> {
    /// A non-super user's columns, checked against its role as `insert`/`update`/`upsert`
    /// check records: a refusal ends the job with the Operations API's 403 body as its message
    /// (the table rights were checked before the job started).
    fn check_columns(&self, bytes: &[u8]) -> Result<(), Value> {
        let caller = self.job.caller;
        if caller.super_user {
            return Ok(());
        }
        let mut header = Vec::new();
        let read = Reader::new(bytes, LIMITS).and_then(|mut r| r.next_row(&mut header));
        if read.is_err() {
            // The load itself reports what is wrong with the CSV.
            return Ok(());
        }
        let pk = self
            .job
            .resources
            .table(self.database, self.table)
            .and_then(|(_, t)| t.def.primary_key.clone());
        let actions: &[Action] = match self.kind {
            PutKind::Insert => &[Action::Insert],
            PutKind::Update => &[Action::Update],
            PutKind::Upsert => &[Action::Insert, Action::Update],
        };
        permissions::check_all(
            caller,
            self.database,
            self.table,
            pk.as_deref(),
            actions,
            header.iter().map(String::as_str),
        )
        .map_err(|denied| denied.to_body())
    }

    /// Checks every row, then writes them in batches. `Ok` is the `COMPLETE` message, `Err` the
    /// `ERROR` one.
    fn load(&self, bytes: &[u8], counts: &mut Counts) -> Result<String, String> {
        let (database, table) = (self.database, self.table);
        let (_, t) = self
            .job
            .resources
            .table(database, table)
            .ok_or_else(|| format!("Table '{database}.{table}' does not exist"))?;
        let def = &t.def;
        let mut reader = Reader::new(bytes, LIMITS).map_err(|e| e.to_string())?;
        let mut header = Vec::new();
        if !reader.next_row(&mut header).map_err(|e| e.to_string())? {
            return Err("the CSV is empty: it needs a header row of attribute names".into());
        }
        check_header(&header)?;
        // First pass: every row must be good before anything is written.
        let mut fields = Vec::new();
        let mut problems = Vec::new();
        loop {
            match reader.next_row(&mut fields) {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => {
                    counts.errors += 1;
                    problems.push(e.to_string());
                    break;
                }
            }
            counts.total += 1;
            if let Err(p) = row_record(def, &header, &fields, self.kind) {
                counts.errors += 1;
                if problems.len() < PROBLEMS_SHOWN_MAX {
                    problems.push(format!("row {}: {p}", reader.row()));
                }
            }
        }
        if counts.errors > 0 {
            return Err(format!(
                "nothing was loaded: {} of {} rows are invalid: {}",
                counts.errors,
                counts.total,
                problems.join("; ")
            ));
        }
        self.job.progress(counts);
        // Second pass: the same rows, now written.
        let mut reader = Reader::new(bytes, LIMITS).map_err(|e| e.to_string())?;
        reader.next_row(&mut header).map_err(|e| e.to_string())?;
        let mut batch = Vec::with_capacity(BATCH_RECORDS);
        while reader.next_row(&mut fields).map_err(|e| e.to_string())? {
            let record = row_record(def, &header, &fields, self.kind)
                .map_err(|p| format!("row {}: {p}", reader.row()))?;
            batch.push(record);
            if batch.len() >= BATCH_RECORDS {
                self.flush(&mut batch, counts)?;
            }
        }
        if !batch.is_empty() {
            self.flush(&mut batch, counts)?;
        }
        Ok(format!(
            "successfully loaded {} of {} records",
            counts.loaded, counts.total
        ))
    }

    /// Writes one batch as one transaction and records the progress.
    fn flush(&self, batch: &mut Vec<Object>, counts: &mut Counts) -> Result<(), String> {
        let records = std::mem::take(batch);
        let n = records.len() as u64;
        let write = RecordWrite::Put {
            kind: self.kind,
            table: self.table.to_string(),
            records,
        };
        let result = block_on(nosql::write_records(
            self.job.resources,
            self.job.caller,
            self.database,
            vec![write],
        ));
        let summary: WriteSummary = match result {
            Ok((_, mut summaries)) => summaries.pop().unwrap_or_default(),
            Err(e) => {
                return Err(format!(
                    "{} (after loading {} of {} records)",
                    e.message, counts.loaded, counts.total
                ))
            }
        };
        counts.processed += n;
        counts.loaded += summary.done.len() as u64;
        counts.skipped += summary.skipped.len() as u64;
        self.job.progress(counts);
        Ok(())
    }
}

/// Header names must be attribute names: non-empty, bounded, each once, without a backtick or
/// `/` (HarperDB's words for those: `Invalid column name '<name>', cancelling load operation`).
fn check_header(header: &[String]) -> Result<(), String> {
    for (i, name) in header.iter().enumerate() {
        if name.contains('`') || name.contains('/') {
            return Err(format!(
                "Invalid column name '{name}', cancelling load operation"
            ));
        }
        if name.is_empty() || name.len() > ATTRIBUTE_BYTES_MAX {
            return Err(format!(
                "header field {} must be an attribute name of 1 to {ATTRIBUTE_BYTES_MAX} bytes",
                i + 1
            ));
        }
        if header.get(..i).is_some_and(|before| before.contains(name)) {
            return Err(format!("the header names '{name}' twice"));
        }
    }
    Ok(())
}

/// One row as the record it writes: empty fields are left out, the rest read as the table's
/// attribute types say ([`field_value`]), then validated as the operation would. Fields past the
/// header's last column are dropped, as HarperDB drops them (Northwind's `Orders.csv` has such
/// rows); a row with fewer fields than the header is refused.
fn row_record(
    def: &TableDef,
    header: &[String],
    fields: &[String],
    kind: PutKind,
) -> Result<Object, String> {
    if fields.len() < header.len() {
        return Err(format!(
            "{} fields where the header has {}",
            fields.len(),
            header.len()
        ));
    }
    let mut record = Object::with_capacity(fields.len());
    for (name, text) in header.iter().zip(fields) {
        if !text.is_empty() {
            record.insert(name.as_str(), field_value(def, name, text));
        }
    }
    if let Some(pk) = &def.primary_key {
        match record.get(pk) {
            None if kind == PutKind::Update => {
                return Err(format!("missing its primary key '{pk}'"))
            }
            None => {}
            // The writer would refuse it too, but only after earlier batches were committed.
            Some(key) => {
                let mut encoded = Vec::new();
                value::key::encode(key, &mut encoded)
                    .map_err(|e| format!("invalid primary key: {e}"))?;
            }
        }
    }
    let validation = match kind {
        PutKind::Insert => Validation::Full,
        PutKind::Update | PutKind::Upsert => Validation::Partial,
    };
    validate_record(def, &mut record, validation)?;
    Ok(record)
}

/// A CSV field as a value of the attribute's declared type. Text that does not read as that type
/// stays text, so validation names the value and the type it missed. Undeclared attributes (and
/// `Any`) read canonical numbers as numbers, `true`/`TRUE`/`false`/`FALSE` as booleans,
/// `null`/`NULL`/`undefined` as null (HarperDB's `autoCast`), JSON arrays and objects as such,
/// and everything else as text.
pub fn field_value(def: &TableDef, name: &str, text: &str) -> Value {
    let as_text = || Value::String(text.to_string());
    if def.primary_key.as_deref() == Some(name) {
        return parse_id(def, text).unwrap_or_else(|_| as_text());
    }
    match def.attribute(name).map(|a| &a.ty) {
        Some(FieldType::String | FieldType::ID | FieldType::BigInt | FieldType::Bytes) => as_text(),
        Some(FieldType::Int | FieldType::Long) => text
            .trim()
            .parse::<i64>()
            .map(Value::Int)
            .unwrap_or_else(|_| as_text()),
        Some(FieldType::Float) => match text.trim().parse::<f64>() {
            Ok(f) if f.is_finite() => canonical_number(text.trim()).unwrap_or(Value::Float(f)),
            _ => as_text(),
        },
        Some(FieldType::Boolean) => match text.trim() {
            t if t.eq_ignore_ascii_case("true") => Value::Bool(true),
            t if t.eq_ignore_ascii_case("false") => Value::Bool(false),
            _ => as_text(),
        },
        Some(FieldType::Date) => canonical_number(text.trim()).unwrap_or_else(as_text),
        Some(FieldType::Array(_) | FieldType::Object(_)) => {
            value::json::parse_with(text.as_bytes(), &FIELD_JSON_LIMITS)
                .unwrap_or_else(|_| as_text())
        }
        Some(FieldType::Blob) => as_text(),
        Some(FieldType::Any) | None => infer(text),
    }
}

fn infer(text: &str) -> Value {
    if let Some(n) = canonical_number(text) {
        return n;
    }
    // HarperDB's `autoCast` words.
    match text {
        "true" | "TRUE" => return Value::Bool(true),
        "false" | "FALSE" => return Value::Bool(false),
        "null" | "NULL" | "undefined" => return Value::Null,
        _ => {}
    }
    if text.starts_with('[') || text.starts_with('{') {
        if let Ok(v) = value::json::parse_with(text.as_bytes(), &FIELD_JSON_LIMITS) {
            return v;
        }
    }
    Value::String(text.to_string())
}

/// A job record as `get_job` shows it: the stored fields, an unfinished job no thread runs shown
/// as `ERROR`, and the times also as ISO-8601 text (`*_converted`, as HarperDB adds them).
fn present(record: Value, running: &HashSet<String>) -> Value {
    let Value::Object(mut o) = record else {
        return record;
    };
    let unfinished = matches!(
        o.get("status").and_then(Value::as_str),
        Some("CREATED" | "IN_PROGRESS")
    );
    let id = o.get("id").and_then(Value::as_str).unwrap_or_default();
    if unfinished && !running.contains(id) {
        o.insert("status", Value::from(Status::Error.name()));
        o.insert(
            "message",
            Value::from("interrupted: the server stopped before the job finished"),
        );
    }
    for (key, converted) in [
        ("start_datetime", "start_datetime_converted"),
        ("end_datetime", "end_datetime_converted"),
    ] {
        if let Some(ms) = o.get(key).and_then(as_ms) {
            o.insert(converted, iso(ms));
        }
    }
    Value::Object(o)
}

fn as_ms(v: &Value) -> Option<f64> {
    match v {
        Value::Int(i) => Some(*i as f64),
        Value::Float(f) | Value::Date(f) => Some(*f),
        _ => None,
    }
}

fn iso(ms: f64) -> Value {
    let mut text = Vec::with_capacity(24);
    if value::json::write_iso_date(ms, &mut text) {
        Value::String(String::from_utf8_lossy(&text).into_owned())
    } else {
        Value::Null
    }
}

/// `get_job`: `[<job>]`. Callers other than super users see only their own jobs; any other id is
/// 404, whether it exists or not.
pub fn get_job(resources: &Resources, caller: &Caller, id: &str) -> Result<Value, VerbError> {
    let running = running_now();
    let record = users::get(resources, JOB_TABLE, id)?;
    let visible = record.filter(|r| {
        caller.super_user
            || (caller.username.is_some()
                && r.get("user").and_then(Value::as_str) == caller.username.as_deref())
    });
    match visible {
        Some(r) => Ok(Value::Array(vec![present(r, &running)])),
        None => Err(VerbError::new(404, format!("Job '{id}' not found"))),
    }
}

/// `search_jobs_by_start_date`: jobs that started (or, not yet started, were created) between
/// `from_ms` and `to_ms` inclusive, oldest first.
pub fn search_jobs_by_start_date(
    resources: &Resources,
    from_ms: f64,
    to_ms: f64,
) -> Result<Vec<Value>, VerbError> {
    let started = |r: &Value| {
        r.get("start_datetime")
            .and_then(as_ms)
            .or_else(|| r.get("created_datetime").and_then(as_ms))
    };
    let running = running_now();
    let mut jobs: Vec<(f64, Value)> = users::all(resources, JOB_TABLE)?
        .into_iter()
        .filter_map(|r| started(&r).map(|t| (t, r)))
        .filter(|(t, _)| (from_ms..=to_ms).contains(t))
        .collect();
    jobs.sort_by(|a, b| a.0.total_cmp(&b.0));
    Ok(jobs
        .into_iter()
        .map(|(_, r)| present(r, &running))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::parse_schema_str;

    const SCHEMA: &str = "type Dog @table { id: Long @primaryKey name: String age: Int weight: Float good: Boolean born: Date tags: [String] big: BigInt }";

    fn def() -> TableDef {
        parse_schema_str(SCHEMA, "t.graphql")
            .expect("schema")
            .tables
            .remove(0)
    }

    fn check_field(name: &str, text: &str, expected: Value) {
        assert_eq!(
            field_value(&def(), name, text),
            expected,
            "{name} = {text:?}"
        );
    }

    #[test]
    fn fields_read_as_their_attribute_types() {
        check_field("id", "12", Value::Int(12));
        check_field("id", "x", Value::from("x"));
        check_field("name", "12", Value::from("12"));
        check_field("age", " 7 ", Value::Int(7));
        check_field("age", "seven", Value::from("seven"));
        check_field("weight", "2.5", Value::Float(2.5));
        check_field("weight", "3", Value::Int(3));
        check_field("weight", "inf", Value::from("inf"));
        check_field("good", "TRUE", Value::Bool(true));
        check_field("good", "no", Value::from("no"));
        check_field("born", "86400000", Value::Int(86_400_000));
        check_field("born", "1970-01-02", Value::from("1970-01-02"));
        check_field(
            "tags",
            "[\"a\",\"b\"]",
            Value::Array(vec![Value::from("a"), Value::from("b")]),
        );
        check_field("tags", "[oops", Value::from("[oops"));
        check_field(
            "big",
            "123456789012345678901234",
            Value::from("123456789012345678901234"),
        );
        check_field("other", "1.5", Value::Float(1.5));
        check_field("other", "007", Value::from("007"));
        check_field("other", "false", Value::Bool(false));
        check_field("other", "FALSE", Value::Bool(false));
        check_field("other", "NULL", Value::Null);
        check_field("other", "null", Value::Null);
        check_field("other", "Null", Value::from("Null"));
        check_field(
            "other",
            "{\"a\":1}",
            value::json::parse(b"{\"a\":1}").expect("json"),
        );
        check_field("other", "hello", Value::from("hello"));
    }

    fn check_row(header: &[&str], fields: &[&str], kind: PutKind, expected: Result<&str, &str>) {
        let header: Vec<String> = header.iter().map(|s| s.to_string()).collect();
        let fields: Vec<String> = fields.iter().map(|s| s.to_string()).collect();
        let got = row_record(&def(), &header, &fields, kind)
            .map(|o| String::from_utf8(value::json::to_vec(&Value::Object(o))).expect("utf-8"));
        match (&got, expected) {
            (Ok(json), Ok(want)) => assert_eq!(json, want),
            (Err(e), Err(fragment)) => assert!(e.contains(fragment), "{e} lacks {fragment}"),
            _ => panic!("{fields:?}: got {got:?}, want {expected:?}"),
        }
    }

    #[test]
    fn rows_become_validated_records() {
        use PutKind::*;
        check_row(
            &["id", "name", "age"],
            &["1", "Rex", "3"],
            Insert,
            Ok(r#"{"id":1,"name":"Rex","age":3}"#),
        );
        check_row(
            &["id", "name", "age"],
            &["1", "", "3"],
            Insert,
            Ok(r#"{"id":1,"age":3}"#),
        );
        check_row(
            &["id", "name"],
            &["1"],
            Insert,
            Err("1 fields where the header has 2"),
        );
        check_row(
            &["id", "name"],
            &["1", "a", "b"],
            Upsert,
            // Fields past the header are dropped, as HarperDB drops them.
            Ok(r#"{"id":1,"name":"a"}"#),
        );
        check_row(
            &["id", "age"],
            &["1", "old"],
            Insert,
            Err("Value \"old\" in property age must be an integer"),
        );
        check_row(
            &["id", "age"],
            &["1", "99999999999"],
            Insert,
            Err("property age must be an integer"),
        );
        check_row(
            &["name"],
            &["Rex"],
            Update,
            Err("missing its primary key 'id'"),
        );
        check_row(
            &["id", "born"],
            &["1", "1970-01-02"],
            Upsert,
            Ok(r#"{"id":1,"born":"1970-01-02T00:00:00.000Z"}"#),
        );
    }

    #[test]
    fn headers_name_attributes_once() {
        let h =
            |names: &[&str]| check_header(&names.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(h(&["id", "name"]), Ok(()));
        assert!(h(&["id", ""]).is_err());
        assert!(h(&["id", "id"]).is_err());
        assert!(h(&["id", &"x".repeat(ATTRIBUTE_BYTES_MAX + 1)]).is_err());
    }

    #[test]
    fn unfinished_jobs_no_thread_runs_read_as_errors() {
        let job = |id: &str, status: &str| {
            let mut o = Object::new();
            o.insert("id", Value::from(id));
            o.insert("status", Value::from(status));
            o.insert("start_datetime", Value::Float(0.0));
            Value::Object(o)
        };
        let shown = present(job("gone", "IN_PROGRESS"), &running_now());
        assert_eq!(shown.get("status").and_then(Value::as_str), Some("ERROR"));
        assert_eq!(
            shown
                .get("start_datetime_converted")
                .and_then(Value::as_str),
            Some("1970-01-01T00:00:00.000Z")
        );
        let slot = Slot::reserve("live").expect("a free slot");
        let shown = present(job("live", "IN_PROGRESS"), &running_now());
        assert_eq!(
            shown.get("status").and_then(Value::as_str),
            Some("IN_PROGRESS")
        );
        drop(slot);
        let shown = present(job("done", "COMPLETE"), &running_now());
        assert_eq!(
            shown.get("status").and_then(Value::as_str),
            Some("COMPLETE")
        );
    }
}
