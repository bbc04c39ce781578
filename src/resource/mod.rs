//! The resource layer: where a request meets a table and a caller's permissions.
//!
//! Every protocol (REST, Operations API, MQTT, WebSocket, SSE) resolves names to tables, parses
//! ids and validates records here, so the rules of docs/applications.md hold whichever door a write comes
//! through. It turns requests into store reads and [`WriteRequest`]s; it never parses protocol
//! bytes and never opens a write transaction itself.

pub mod analytics;
pub mod blocking;
pub mod jobs;
pub mod join;
pub mod nosql;
pub mod permissions;
mod records;
pub mod search;
pub mod sql;
pub mod tables;
pub mod users;
mod validate;
pub mod verbs;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::config::{Config, ConfigTree};
use crate::schema::{App, FieldType, TableDef};
use crate::store::Store;
use crate::value::Value;

/// The store's vocabulary protocols need, passed on by the resource layer: protocols never name
/// `crate::store` (ARCHITECTURE.md, "Layers"; checked by `tests/layers.rs`).
pub use crate::store::{
    now_ms, Condition, ConditionFailed, Database, Header, OpResult, PutMode, ReadTxn, StoreError,
    Table, WriteError, WriteOp, WriteRequest,
};
pub use blocking::{run_blocking, Busy};
pub use records::{queue, with_record, write, Queued};
pub use validate::{validate_record, Validation};
pub use verbs::{
    create, delete, put, queue_with_extras, write_many, write_with_extras, PutKind, WriteFailure,
};

/// Who is asking: the authenticated user (or anonymous) and the permissions of its role, as
/// `auth::authenticate` found them. Every protocol passes one to the resource layer.
#[derive(Debug, Clone)]
pub struct Caller {
    /// None = anonymous. Shared, not copied, when a cached caller is handed out per request.
    pub username: Option<Arc<str>>,
    pub super_user: bool,
    pub permissions: Arc<permissions::Permissions>,
}

impl Caller {
    pub fn super_user(username: &str) -> Self {
        Caller {
            username: Some(Arc::from(username)),
            super_user: true,
            permissions: Arc::new(permissions::Permissions::all()),
        }
    }

    /// A user with a role's permissions.
    pub fn with_role(username: &str, permissions: permissions::Permissions) -> Self {
        Caller {
            username: Some(Arc::from(username)),
            super_user: permissions.super_user,
            permissions: Arc::new(permissions),
        }
    }

    /// No credentials: allowed nothing (docs/security.md answers 401 "Must login" where it matters).
    /// The anonymous callers of a thread share one set of (empty) permissions: an idle anonymous
    /// MQTT connection keeps its caller, and would otherwise carry a copy of its own
    /// (docs/design.md, "Idle connections"). Per thread, so cores do not share its count.
    pub fn anonymous() -> Self {
        thread_local! {
            static NONE: Arc<permissions::Permissions> = Arc::new(permissions::Permissions::none());
        }
        Caller {
            username: None,
            super_user: false,
            permissions: NONE.with(Arc::clone),
        }
    }

    pub fn is_anonymous(&self) -> bool {
        self.username.is_none()
    }
}

/// Shared by every core: the store, the application, the configuration.
fn export_map(app: &App) -> HashMap<String, (String, String)> {
    app.tables
        .iter()
        .filter_map(|t| {
            t.export
                .clone()
                .map(|name| (name, (t.database.clone(), t.table.clone())))
        })
        .collect()
}

pub struct Resources {
    pub store: Arc<Store>,
    pub app: Arc<App>,
    pub config: Arc<Config>,
    /// The effective settings as a tree (`get_configuration`); defaults until the server sets it.
    pub config_tree: ConfigTree,
    /// Export name → (database, table).
    /// Read per request, replaced whole when `tidepool dev` reloads the schema.
    exports: std::sync::RwLock<HashMap<String, (String, String)>>,
    /// Tells this instance's entries in a thread's export cache from another's (tests run
    /// several servers in one process).
    id: u64,
    /// Bumped by every user or role change; authentication caches drop entries from an older
    /// generation (docs/security.md: a change clears every core's cache).
    auth_generation: AtomicU64,
    /// Authentication state: JWT keys, failed-login counts (owned by `auth`).
    pub auth: crate::auth::State,
}

/// Names a thread keeps resolved (over every `Resources` it serves); past it, it starts over.
const EXPORT_CACHE_ENTRIES_MAX: usize = 64;

/// One resolved export: weak handles, so a cached name never keeps a dropped database or
/// table open (`drop_database` waits for the last strong handle).
struct CachedExport {
    resources: u64,
    generation: u64,
    name: Box<str>,
    db: std::sync::Weak<Database>,
    table: std::sync::Weak<Table>,
}

/// A thread's resolved exports, all of one catalog generation (`store::catalog_generation`):
/// a lookup without the locks and hashing of the three maps behind a name.
#[derive(Default)]
struct ExportCache(Vec<CachedExport>);

impl ExportCache {
    fn find(
        &self,
        resources: u64,
        generation: u64,
        name: &str,
    ) -> Option<(Arc<Database>, Arc<Table>)> {
        let e = self
            .0
            .iter()
            .find(|e| e.resources == resources && e.generation == generation && &*e.name == name)?;
        Some((e.db.upgrade()?, e.table.upgrade()?))
    }

    fn put(
        &mut self,
        resources: u64,
        generation: u64,
        name: &str,
        db: &Arc<Database>,
        table: &Arc<Table>,
    ) {
        self.0.retain(|e| {
            e.generation == generation && !(e.resources == resources && &*e.name == name)
        });
        if self.0.len() >= EXPORT_CACHE_ENTRIES_MAX {
            self.0.clear();
        }
        self.0.push(CachedExport {
            resources,
            generation,
            name: name.into(),
            db: Arc::downgrade(db),
            table: Arc::downgrade(table),
        });
    }
}

thread_local! {
    static EXPORTS: std::cell::RefCell<ExportCache> = std::cell::RefCell::new(ExportCache::default());
}

impl Resources {
    pub fn new(store: Arc<Store>, app: Arc<App>, config: Arc<Config>) -> Self {
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        let exports = std::sync::RwLock::new(export_map(&app));
        Resources {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            store,
            app,
            config,
            config_tree: ConfigTree::defaults(),
            exports,
            auth_generation: AtomicU64::new(0),
            auth: crate::auth::State::default(),
        }
    }

    /// Applies a reloaded application (`tidepool dev`): creates and migrates its tables, then
    /// serves its exports. Blocking: call it from a plain thread, never an executor.
    pub fn reload_app(&self, app: &App) -> Result<(), crate::store::StoreError> {
        self.store.apply_schema(&app.tables)?;
        *self.exports.write().unwrap_or_else(|e| e.into_inner()) = export_map(app);
        crate::store::catalog_changed();
        Ok(())
    }

    /// The current users-and-roles generation.
    pub fn auth_generation(&self) -> u64 {
        self.auth_generation.load(Ordering::Acquire)
    }

    /// Marks every cached authentication as stale (after a user or role change).
    pub fn bump_auth_generation(&self) {
        self.auth_generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Keeps the effective settings tree the server was started with.
    pub fn with_config_tree(mut self, tree: ConfigTree) -> Self {
        self.config_tree = tree;
        self
    }

    /// The table exported under `name` (case-sensitive), with its database. Resolved once per
    /// thread and catalog generation (`ExportCache`); REST asks this for every request.
    pub fn export(&self, name: &str) -> Option<(Arc<Database>, Arc<Table>)> {
        let generation = crate::store::catalog_generation();
        let found = EXPORTS.with(|cache| cache.borrow().find(self.id, generation, name));
        if found.is_some() {
            return found;
        }
        let found = self.export_uncached(name)?;
        EXPORTS.with(|cache| {
            cache
                .borrow_mut()
                .put(self.id, generation, name, &found.0, &found.1)
        });
        Some(found)
    }

    fn export_uncached(&self, name: &str) -> Option<(Arc<Database>, Arc<Table>)> {
        // Held only for the two lookups below; no await in between.
        let exports = self.exports.read().unwrap_or_else(|e| e.into_inner());
        let (db, table) = exports.get(name)?;
        let db = self.store.database(db)?;
        let table = db.table(table)?;
        Some((db, table))
    }

    /// The databases holding a table named `name` that is not exported under that name (made
    /// with `create_table`, or in the schema without `@export`): REST's 404 says so.
    pub fn unexported_table(&self, name: &str) -> Vec<String> {
        if name.is_empty() || self.export(name).is_some() {
            return Vec::new();
        }
        self.store
            .database_names()
            .into_iter()
            .filter(|db| self.table(db, name).is_some())
            .collect()
    }

    pub fn table(&self, database: &str, table: &str) -> Option<(Arc<Database>, Arc<Table>)> {
        let db = self.store.database(database)?;
        let table = db.table(table)?;
        Some((db, table))
    }
}

#[cfg(test)]
impl Resources {
    /// A store in `dir` (commits go nowhere) serving the example app with the default settings:
    /// for unit tests of the layers above, which do not name the store themselves.
    pub fn for_tests(dir: &std::path::Path) -> Resources {
        let store =
            crate::store::Store::open(crate::store::StoreOptions::new(dir), Arc::new(|_| {}))
                .expect("store");
        let tree = ConfigTree::defaults();
        let config = Config::from_tree(&tree, dir, 1).expect("config");
        let app = crate::schema::load_app(std::path::Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/deploy/app"
        )))
        .expect("example app");
        Resources::new(store, Arc::new(app), Arc::new(config))
    }
}

/// Parses a record id from a URL segment (already percent-decoded) or topic level.
///
/// Numeric key types need a number; `Any` keys and tables without declared types read canonical
/// decimals as numbers and the rest as strings; `ID`/`String` stay strings (docs/rest.md).
pub fn parse_id(def: &TableDef, raw: &str) -> Result<Value, String> {
    let ty = def.primary_key_attribute().map(|a| a.ty.clone());
    match ty {
        Some(FieldType::ID | FieldType::String) => Ok(Value::String(raw.to_string())),
        Some(FieldType::Int | FieldType::Long) => raw
            .parse::<i64>()
            .map(Value::Int)
            .map_err(|_| format!("Invalid primary key {raw:?}: expected an integer")),
        Some(FieldType::Float) => match raw.parse::<f64>() {
            Ok(f) if f.is_finite() => Ok(if f.fract() == 0.0 && f.abs() < 9e15 {
                Value::Int(f as i64)
            } else {
                Value::Float(f)
            }),
            _ => Err(format!("Invalid primary key {raw:?}: expected a number")),
        },
        _ => Ok(canonical_number(raw).unwrap_or_else(|| Value::String(raw.to_string()))),
    }
}

/// `raw` as a number when it is the canonical decimal form of one (`12`, `-3`, `1.5`, not `012`).
pub fn canonical_number(raw: &str) -> Option<Value> {
    if let Ok(i) = raw.parse::<i64>() {
        return (i.to_string() == raw).then_some(Value::Int(i));
    }
    let f: f64 = raw.parse().ok()?;
    let mut printed = Vec::new();
    crate::value::json::write_float(f, &mut printed);
    (f.is_finite() && printed == raw.as_bytes()).then_some(Value::Float(f))
}

/// A verb's refusal: the HTTP status and the message of docs/operations-api.md (the Operations API renders it
/// as `{"error": message}`; other protocols map the status their own way).
#[derive(Debug, Clone, PartialEq)]
pub struct VerbError {
    pub status: u16,
    pub message: String,
    /// More fields of the error body beside `error` (e.g. a role's `main_permissions`).
    pub details: Option<Box<crate::value::Object>>,
}

impl VerbError {
    pub fn new(status: u16, message: impl Into<String>) -> Self {
        VerbError {
            status,
            message: message.into(),
            details: None,
        }
    }

    pub fn with_details(mut self, details: crate::value::Object) -> Self {
        self.details = Some(Box::new(details));
        self
    }

    /// The message and its details as one line (for log lines and start-up errors).
    pub fn full_message(&self) -> String {
        match &self.details {
            Some(d) => {
                let mut json = Vec::new();
                crate::value::json::write(&crate::value::Value::Object((**d).clone()), &mut json);
                format!("{}: {}", self.message, String::from_utf8_lossy(&json))
            }
            None => self.message.clone(),
        }
    }

    pub fn bad(message: impl Into<String>) -> Self {
        VerbError::new(400, message)
    }
}

impl From<crate::store::StoreError> for VerbError {
    fn from(e: crate::store::StoreError) -> Self {
        use crate::store::StoreError;
        let status = match &e {
            StoreError::NoSuchDatabase(_) | StoreError::NoSuchTable(_) => 404,
            StoreError::TableExists(_) => 400,
            StoreError::MapFull => 507,
            _ => 500,
        };
        VerbError::new(status, e.to_string())
    }
}

/// Set by the `restart` operation: once the graceful stop that follows is done, `main`
/// re-executes the binary with the same arguments (docs/operations-api.md, "restart").
pub static RESTART_REQUESTED: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// Asks for a restart: records it, then sends this process SIGTERM, so the stop is the same
/// graceful stop a signal starts (in-flight requests, this one included, are answered first).
pub fn request_restart() -> Result<(), VerbError> {
    RESTART_REQUESTED.store(true, Ordering::SeqCst);
    // SAFETY: kill(2) with our own pid and a valid signal number has no memory effects.
    let sent = unsafe { libc::kill(libc::getpid(), libc::SIGTERM) };
    if sent != 0 {
        RESTART_REQUESTED.store(false, Ordering::SeqCst);
        return Err(VerbError::new(
            500,
            format!(
                "cannot signal this process: {}",
                std::io::Error::last_os_error()
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::parse_schema_str;

    #[test]
    fn cached_exports_follow_the_catalog() {
        let dir = tempfile::tempdir().unwrap();
        let resources = Resources::for_tests(dir.path());
        resources.store.apply_schema(&resources.app.tables).unwrap();
        let (db, first) = resources.export("Breed").expect("exported");
        assert_eq!(&*db.name, "dogs");
        let (_, again) = resources.export("Breed").expect("cached");
        assert!(Arc::ptr_eq(&first, &again));
        drop((db, first, again));
        // A cached name holds no strong handle: the database can be dropped at once.
        resources.store.drop_database("dogs").unwrap();
        assert!(
            resources.export("Breed").is_none(),
            "a dropped database is not served"
        );
        resources.store.apply_schema(&resources.app.tables).unwrap();
        let (db, table) = resources.export("Breed").expect("exported again");
        assert_eq!(&*table.name, "breed");
        assert!(Arc::ptr_eq(&db, &resources.store.database("dogs").unwrap()));
        assert!(resources.export("Nope").is_none());
    }

    #[test]
    fn ids_follow_the_key_type() {
        let schema = parse_schema_str(
            "type A @table { id: ID @primaryKey } type B @table { id: Long @primaryKey } type C @table { id: Any @primaryKey } type D @table",
            "t.graphql",
        )
        .unwrap();
        let def = |n: &str| schema.tables.iter().find(|t| t.table == n).unwrap().clone();
        assert_eq!(parse_id(&def("A"), "12"), Ok(Value::String("12".into())));
        assert_eq!(parse_id(&def("B"), "12"), Ok(Value::Int(12)));
        assert!(parse_id(&def("B"), "x").is_err());
        assert_eq!(parse_id(&def("C"), "12"), Ok(Value::Int(12)));
        assert_eq!(parse_id(&def("C"), "012"), Ok(Value::String("012".into())));
        assert_eq!(parse_id(&def("D"), "1.5"), Ok(Value::Float(1.5)));
        assert_eq!(parse_id(&def("D"), "a/b"), Ok(Value::String("a/b".into())));
    }
}
