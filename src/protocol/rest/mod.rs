//! REST (docs/rest.md): `/<Export>`, `/<Export>/` and `/<Export>/<id>[.<prop>]` to resource verbs —
//! records by id, collections through the URL query language, every method, conditional
//! headers, CORS, content negotiation both ways, and `GET /openapi`.
//!
//! It never touches storage except through `resource` (reads via `resource::with_record` and
//! `resource::search::run`, which close their read transaction before returning; writes via
//! `resource::write`). Requests whose `Accept` asks for `text/event-stream` belong to the SSE
//! interface: [`wants_event_stream`] is the hook, and `handle` returns false for them.

mod format;
mod openapi;

use std::fmt::Write as _;
use std::ops::ControlFlow;
use std::sync::Arc;

use crate::auth::AuthError;
use crate::protocol::http::{Method, Request, Response};
use crate::query::{self, Query, Select};
use crate::resource::join::{self, Projection};
use crate::resource::permissions::{self, Action};
use crate::resource::search::{self, SearchError, SearchSpec};
use crate::resource::{self, Caller, Resources, Validation};
use crate::resource::{
    Condition, ConditionFailed, Database, OpResult, PutKind, PutMode, Table, WriteError,
    WriteFailure, WriteOp,
};
use crate::schema::{FieldType, TableDef};
use crate::value::{self, Value, ValueView};

pub use format::{Format, SUPPORTED};

thread_local! {
    /// The key of the current single-record read on this core (string keys), reused.
    static GET_KEY: std::cell::RefCell<Value> = const { std::cell::RefCell::new(Value::String(String::new())) };
}

const ALLOW_ALL: &str = "GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS";
const ALLOW_TABLE: &str = "GET, HEAD, OPTIONS";
const ALLOW_COLLECTION: &str = "GET, HEAD, POST, PUT, DELETE, OPTIONS";
const ALLOW_RECORD: &str = "GET, HEAD, PUT, PATCH, DELETE, OPTIONS";
/// Records one collection `DELETE` removes at most (one transaction); more → 400.
pub const DELETE_RECORDS_MAX: usize = 100_000;
/// Records one bulk `PUT /T/` writes at most (one transaction); more → 400.
pub const BULK_RECORDS_MAX: usize = 100_000;
/// `http.compressionThreshold` when the configuration has none: bodies above it are compressed.
pub const COMPRESSION_THRESHOLD_BYTES_DEFAULT: u64 = 1200;
/// `Accept-Encoding` items considered at most; the rest are ignored.
const ACCEPT_ENCODING_ITEMS_MAX: usize = 32;

/// SSE hook: a `GET` whose `Accept` names `text/event-stream` is for the SSE interface (docs/realtime.md),
/// which the router should offer it to before REST.
pub fn wants_event_stream(req: &Request<'_>) -> bool {
    req.method == Method::Get
        && req
            .header_str("accept")
            .is_some_and(|a| a.to_ascii_lowercase().contains("text/event-stream"))
}

/// The path split into its REST parts.
enum Target<'p> {
    Table,
    Collection,
    Record(&'p str),
}

/// docs/security.md for REST: 401 with `WWW-Authenticate: Basic` for missing or wrong credentials;
/// 429 with `Retry-After` after too many failed logins (docs/security.md "Failed logins").
pub fn unauthorized(resp: &mut Response, e: &AuthError) {
    if e.status() == 401 {
        resp.header("WWW-Authenticate", "Basic");
    }
    if let Some(seconds) = e.retry_after_s() {
        resp.header("Retry-After", &seconds.to_string());
    }
    resp.json_error(e.status(), e.message());
}

/// `/Dog/1` → (`Dog`, `Some("1")`), `/Dog/` → (`Dog`, `Some("")`), `/Dog` → (`Dog`, None).
pub fn export_and_rest(path: &str) -> (&str, Option<&str>) {
    let path = path.strip_prefix('/').unwrap_or(path);
    // A byte loop: paths are short, and `str::find` costs more to set up than to run here.
    match path.bytes().position(|b| b == b'/') {
        Some(i) => (&path[..i], Some(&path[i + 1..])),
        None => (path, None),
    }
}

/// 404 for a path that names no export. When its first segment is a table that exists but is not
/// exported, and the caller may read it, the answer says why (docs/rest.md "Which tables").
pub fn not_found(resources: &Resources, caller: Option<&Caller>, path: &str, resp: &mut Response) {
    let (name, _) = export_and_rest(path);
    let readable: Vec<String> = resources
        .unexported_table(name)
        .into_iter()
        .filter(|db| caller.is_some_and(|c| permissions::allowed(c, db, name, Action::Read)))
        .collect();
    match readable.first() {
        None => resp.text(404, "Not found"),
        Some(db) => resp.json_error(
            404,
            &format!(
                "Table '{db}.{name}' exists but is not exported: REST serves only tables with @export in the application's schema (docs/rest.md)"
            ),
        ),
    }
}

/// Judges a request from its head, before its body is read (README, "Limits"): true when `resp`
/// now holds the refusal that [`handle`] would give after reading the body — 401/403 for a caller
/// with no right the method could use on the table, 405 for a method the target never takes, 404
/// for a path that is no export (and that static files would not serve: `static_get` says
/// whether GET/HEAD may still find a file there). False lets the body be read.
pub fn refuse_before_body(
    resources: &Resources,
    caller: Result<&Caller, &AuthError>,
    req: &Request<'_>,
    resp: &mut Response,
    static_get: bool,
) -> bool {
    let (export, rest) = export_and_rest(req.path);
    let Some((_, table)) = resources.export(export) else {
        if export == "openapi" && rest.is_none() {
            // Answered from the head anyway: it never reads a body.
            return false;
        }
        if static_get && matches!(req.method, Method::Get | Method::Head) {
            return false;
        }
        not_found(resources, caller.ok(), req.path, resp);
        return true;
    };
    if wants_event_stream(req) || req.method == Method::Options {
        return false;
    }
    cors(resources, req, resp);
    let caller = match caller {
        Ok(c) => c,
        Err(e) => {
            unauthorized(resp, e);
            return true;
        }
    };
    let def = &table.def;
    let can = |action| permissions::allowed(caller, &def.database, &def.table, action);
    let actions: &[Action] = match (rest, req.method) {
        (None, Method::Get | Method::Head) => &[Action::Read],
        (None, _) => {
            // The description answers 405 only to a caller that may see the table.
            let any = [Action::Read, Action::Insert, Action::Update, Action::Delete];
            if any.into_iter().any(can) {
                resp.header("Allow", ALLOW_TABLE);
                resp.json_error(
                    405,
                    "Method not allowed on a table; use /<Table>/ or /<Table>/<id>",
                );
                return true;
            }
            &[]
        }
        (_, Method::Get | Method::Head) => &[Action::Read],
        (_, Method::Post | Method::Put | Method::Patch) => &[Action::Insert, Action::Update],
        (_, Method::Delete) => &[Action::Delete],
        (Some(""), _) => {
            resp.header("Allow", ALLOW_COLLECTION);
            resp.json_error(405, "Method not allowed on a collection");
            return true;
        }
        (Some(_), _) => {
            resp.header("Allow", ALLOW_RECORD);
            resp.json_error(405, "Method not allowed on a record");
            return true;
        }
    };
    if actions.iter().copied().any(can) {
        return false;
    }
    if caller.is_anonymous() {
        resp.header("WWW-Authenticate", "Basic");
        resp.json_error(401, AuthError::MustLogin.message());
    } else {
        resp.json_error(403, FORBIDDEN);
    }
    true
}

/// Serves `req` if its first path segment is an export (or `openapi`); returns false to let the
/// caller answer (static files, then 404), and for SSE requests. `caller` is the request's
/// authentication: every answer but CORS preflight needs one that may do what is asked.
pub async fn handle(
    resources: &Arc<Resources>,
    caller: Result<&Caller, &AuthError>,
    req: &Request<'_>,
    resp: &mut Response,
) -> bool {
    let (export, rest) = export_and_rest(req.path);
    let Some((db, table)) = resources.export(export) else {
        if export == "openapi" && rest.is_none() {
            // docs/security.md: the API description is for super users.
            match caller {
                Err(e) => unauthorized(resp, e),
                Ok(c) if c.is_anonymous() => unauthorized(resp, &AuthError::MustLogin),
                Ok(c) if !c.super_user => {
                    resp.json_error(403, FORBIDDEN);
                }
                Ok(_) => serve_openapi(resources, req, resp),
            }
            return true;
        }
        return false;
    };
    if wants_event_stream(req) {
        return false;
    }
    cors(resources, req, resp);
    let target = match rest {
        None => Target::Table,
        Some("") => Target::Collection,
        Some(id) => Target::Record(id),
    };
    if req.method == Method::Options {
        resp.status = 204;
        resp.header("Allow", ALLOW_ALL);
        if resources.config.http.cors {
            resp.header(
                "Access-Control-Allow-Methods",
                "POST, GET, PUT, DELETE, PATCH, OPTIONS",
            );
            resp.header(
                "Access-Control-Allow-Headers",
                &resources.config.http.cors_allow_headers,
            );
        }
        return true;
    }
    let caller = match caller {
        Ok(c) => c,
        Err(e) => {
            unauthorized(resp, e);
            return true;
        }
    };
    let mut ctx = Ctx {
        resources,
        caller,
        req,
        db,
        table,
        format: Format::Json,
    };
    let extension = match &target {
        Target::Record(id) => id
            .rsplit_once('.')
            .and_then(|(_, ext)| Format::from_extension(ext)),
        _ => None,
    };
    ctx.format = match extension.or_else(|| Format::negotiate(req.header_str("accept"))) {
        Some(f) => f,
        None => {
            resp.text(
                406,
                &format!("Not Acceptable; supported types: {SUPPORTED}"),
            );
            return true;
        }
    };
    resp.header("Vary", "Accept, Accept-Encoding");
    let started = tidepool_io::clock::now();
    // A collection read is produced record by record, so it is compressed whatever its size.
    let streamed =
        matches!(target, Target::Collection) && matches!(req.method, Method::Get | Method::Head);
    match target {
        Target::Table => ctx.table_target(resp, export),
        Target::Collection => ctx.collection(resp).await,
        Target::Record(raw) => ctx.record(resp, raw, extension.is_some()).await,
    }
    // docs/rest.md: the time the request spent reading or writing the database.
    let took = tidepool_io::clock::now().saturating_duration_since(started);
    let mut timing = [0u8; 48];
    let written = server_timing(took, &mut timing);
    resp.header_bytes("Server-Timing", &timing[..written]);
    compress(resources, req, resp, streamed);
    true
}

/// Writes `db;dur=<ms>` with three decimals (microseconds, rounded half up) into `out`; returns
/// its length. Integer arithmetic on the stack: no float formatting on the single-record path.
fn server_timing(took: std::time::Duration, out: &mut [u8; 48]) -> usize {
    let micros = took.as_nanos().saturating_add(500) / 1000;
    let micros = u64::try_from(micros).unwrap_or(u64::MAX);
    let mut whole = itoa::Buffer::new();
    let whole = whole.format(micros / 1000).as_bytes();
    let frac = micros % 1000;
    let mut n = 0;
    for part in [b"db;dur=".as_slice(), whole, b"."] {
        out[n..n + part.len()].copy_from_slice(part);
        n += part.len();
    }
    for digit in [frac / 100, frac / 10 % 10, frac % 10] {
        out[n] = b'0' + digit as u8;
        n += 1;
    }
    n
}

/// docs/rest.md: gzip the body when the client accepts it and the body is larger than
/// `http.compressionThreshold` or streamed. Only gzip is offered: clients that accept `br`
/// accept gzip too, and one codec keeps the dependency list short.
fn compress(resources: &Resources, req: &Request<'_>, resp: &mut Response, streamed: bool) {
    if resp.body.is_empty() || !matches!(resp.status, 200..=299) || resp.is_takeover() {
        return;
    }
    if !req.header_str("accept-encoding").is_some_and(accepts_gzip) {
        return;
    }
    let threshold_bytes = resources
        .config_tree
        .get("http.compressionThreshold")
        .and_then(|v| v.as_u64())
        .unwrap_or(COMPRESSION_THRESHOLD_BYTES_DEFAULT);
    if !streamed && resp.body.len() as u64 <= threshold_bytes {
        return;
    }
    let mut encoder = flate2::write::GzEncoder::new(
        Vec::with_capacity(resp.body.len() / 3 + 64),
        flate2::Compression::fast(),
    );
    if std::io::Write::write_all(&mut encoder, &resp.body).is_err() {
        return;
    }
    if let Ok(gzipped) = encoder.finish() {
        resp.body = gzipped;
        resp.header("Content-Encoding", "gzip");
    }
}

/// Whether an `Accept-Encoding` value allows gzip: `gzip` or `*` with a non-zero q.
fn accepts_gzip(header: &str) -> bool {
    let mut gzip = None;
    let mut any = None;
    for item in header.split(',').take(ACCEPT_ENCODING_ITEMS_MAX) {
        let mut parts = item.split(';');
        let coding = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let q = parts
            .find_map(|p| p.trim().strip_prefix("q=").map(str::trim))
            .map_or(1.0, |q| q.parse::<f32>().unwrap_or(0.0));
        match coding.as_str() {
            "gzip" | "x-gzip" => gzip = Some(q > 0.0),
            "*" => any = Some(q > 0.0),
            _ => {}
        }
    }
    gzip.or(any).unwrap_or(false)
}

fn cors(resources: &Resources, req: &Request<'_>, resp: &mut Response) {
    if !resources.config.http.cors {
        return;
    }
    let Some(origin) = req.header_str("origin") else {
        return;
    };
    let allowed = match &resources.config.http.cors_access_list {
        None => true,
        Some(list) => list.iter().any(|o| o == "*" || o == origin),
    };
    if allowed {
        resp.header("Access-Control-Allow-Origin", origin);
        // docs/security.md: browsers send the session cookie cross-origin only with this.
        resp.header("Access-Control-Allow-Credentials", "true");
    }
}

fn serve_openapi(resources: &Resources, req: &Request<'_>, resp: &mut Response) {
    if !matches!(req.method, Method::Get | Method::Head) {
        resp.header("Allow", "GET, HEAD");
        resp.json_error(405, "Method not allowed on /openapi");
        return;
    }
    let exports: Vec<(&str, &TableDef)> = resources
        .app
        .tables
        .iter()
        .filter_map(|t| t.export.as_deref().map(|name| (name, t)))
        .collect();
    let doc = openapi::document(&exports);
    resp.status = 200;
    resp.header("Content-Type", "application/json");
    resp.body.extend_from_slice(doc.to_string().as_bytes());
}

/// docs/security.md: an authenticated caller without the right.
const FORBIDDEN: &str = "Unauthorized access to resource";

struct Ctx<'r, 'q> {
    resources: &'r Arc<Resources>,
    caller: &'r Caller,
    req: &'r Request<'q>,
    db: Arc<Database>,
    table: Arc<Table>,
    format: Format,
}

impl Ctx<'_, '_> {
    fn error(&self, resp: &mut Response, status: u16, message: &str) {
        resp.status = status;
        resp.body.clear();
        let format = match self.format {
            Format::Csv => Format::Json,
            f => f,
        };
        resp.header("Content-Type", format.content_type());
        format.write_error(message, &mut resp.body);
    }

    fn def(&self) -> &TableDef {
        &self.table.def
    }

    /// Whether the caller may do `action` on this table and these attributes; if not, answers
    /// 401 (anonymous) or 403 and returns false.
    fn allow<'a>(
        &self,
        resp: &mut Response,
        action: Action,
        attributes: impl IntoIterator<Item = &'a str>,
    ) -> bool {
        self.allow_on(resp, self.def(), action, attributes)
    }

    /// [`Ctx::allow`] on table `def` (this one or a related one).
    fn allow_on<'a>(
        &self,
        resp: &mut Response,
        def: &TableDef,
        action: Action,
        attributes: impl IntoIterator<Item = &'a str>,
    ) -> bool {
        let allowed = permissions::check(
            self.caller,
            &def.database,
            &def.table,
            def.primary_key.as_deref(),
            action,
            attributes,
        )
        .is_ok();
        if !allowed {
            if self.caller.is_anonymous() {
                resp.header("WWW-Authenticate", "Basic");
                self.error(resp, 401, AuthError::MustLogin.message());
            } else {
                self.error(resp, 403, FORBIDDEN);
            }
        }
        allowed
    }

    /// Whether the caller may read every related table `query` reaches through relationships
    /// (in conditions and selections), with the attributes it names there; if not, answers 401
    /// or 403 and returns false.
    fn allow_related(&self, resp: &mut Response, query: &Query) -> bool {
        related_reads(&self.db, self.def(), query)
            .iter()
            .all(|(table, attributes)| {
                self.allow_on(
                    resp,
                    &table.def,
                    Action::Read,
                    attributes.iter().map(String::as_str),
                )
            })
    }

    /// The selection bound to related tables, when it selects a relationship (else `None`:
    /// `query::project` serves it without a transaction).
    fn projection(&self, select: Option<&Select>) -> Result<Option<Projection>, SearchError> {
        let Some(select) = select else {
            return Ok(None);
        };
        let projection = Projection::new(Some(&self.db), self.def(), select)?;
        Ok(projection.joins().then_some(projection))
    }

    /// Removes from a related record what the caller may not read.
    fn redact(&self, def: &TableDef, v: &mut Value) {
        permissions::filter_readable(
            self.caller,
            &def.database,
            &def.table,
            def.primary_key.as_deref(),
            v,
        );
    }

    /// Whether records read for this caller must lose some properties.
    fn restricted(&self) -> bool {
        let def = self.def();
        permissions::restricts_attributes(self.caller, &def.database, &def.table)
    }

    /// `record` without the properties the caller may not read.
    fn readable(&self, record: &value::ArchivedValue) -> Value {
        let def = self.def();
        let mut v = value::deserialize(record).unwrap_or(Value::Null);
        permissions::filter_readable(
            self.caller,
            &def.database,
            &def.table,
            def.primary_key.as_deref(),
            &mut v,
        );
        v
    }

    fn table_target(&self, resp: &mut Response, export: &str) {
        let def = self.def();
        if !permissions::can_see(self.caller, &def.database, &def.table) {
            // Any right on the table shows its description; none is the same as read denied.
            let _ = self.allow(resp, Action::Read, []);
            return;
        }
        if !matches!(self.req.method, Method::Get | Method::Head) {
            resp.header("Allow", ALLOW_TABLE);
            return self.error(
                resp,
                405,
                "Method not allowed on a table; use /<Table>/ or /<Table>/<id>",
            );
        }
        // docs/rest.md: the audit log's size (bytes of its pages, as `describe_table`'s
        // `db_audit_size`), and no record count.
        let audit_size = resource::tables::describe_table(&self.db, &self.table)
            .ok()
            .and_then(|d| d.get("db_audit_size").and_then(serde_json::Value::as_u64))
            .unwrap_or(0);
        let desc = serde_json::json!({
            "records": "./",
            "name": export,
            "database": def.database,
            "auditSize": audit_size,
            "attributes": def.attributes.iter().filter(|a| {
                // A role limited to some attributes sees only those it may read.
                permissions::attribute_allowed(self.caller, &def.database, &def.table,
                    def.primary_key.as_deref(), &a.name, Action::Read)
                    || !self.restricted()
            }).map(|a| {
                let mut o = serde_json::json!({"name": a.name, "type": a.ty.name()});
                if a.primary_key { o["isPrimaryKey"] = true.into(); }
                if a.indexed { o["indexed"] = true.into(); }
                if let Some(r) = &a.relationship {
                    o["relationship"] = serde_json::json!({"from": r.from, "to": r.to});
                }
                o
            }).collect::<Vec<_>>(),
        });
        let v = value::json::parse(desc.to_string().as_bytes()).unwrap_or(Value::Null);
        resp.status = 200;
        resp.header("Content-Type", self.format.content_type());
        self.format.write_one(&v, &mut resp.body);
    }

    /// The parsed query string, minus `explain` (which asks for the plan instead of records).
    fn query(&self) -> Result<(Query, bool), String> {
        let raw = self.req.query.unwrap_or("");
        let explain = raw.split('&').any(|p| p == "explain");
        let query = if explain {
            let rest: Vec<&str> = raw.split('&').filter(|p| *p != "explain").collect();
            query::parse(&rest.join("&"))
        } else {
            query::parse(raw)
        };
        query.map(|q| (q, explain)).map_err(|e| e.to_string())
    }

    async fn collection(&self, resp: &mut Response) {
        // Callers without any right on the table learn nothing, not even which methods exist.
        let def = self.def();
        if !permissions::can_see(self.caller, &def.database, &def.table) {
            let _ = self.allow(resp, Action::Read, []);
            return;
        }
        match self.req.method {
            Method::Get | Method::Head => self.query_collection(resp),
            Method::Post => self.post(resp).await,
            Method::Put => self.bulk_put(resp).await,
            Method::Delete => self.delete_matches(resp).await,
            _ => {
                resp.header("Allow", ALLOW_COLLECTION);
                self.error(resp, 405, "Method not allowed on a collection")
            }
        }
    }

    fn plan(&self, query: &Query) -> Result<search::Plan, search::SearchError> {
        let (offset, limit) = match query.limit {
            Some(l) => (l.start, Some(l.end.saturating_sub(l.start))),
            None => (0, None),
        };
        search::plan_joined(
            &self.db,
            &self.table,
            &SearchSpec {
                filter: query.filter.as_ref(),
                sort: &query.sort,
                offset,
                limit,
                allow_undeclared: false,
            },
        )
    }

    fn query_collection(&self, resp: &mut Response) {
        let (query, explain) = match self.query() {
            Ok(q) => q,
            Err(e) => return self.error(resp, 400, &e),
        };
        // The attributes a query names matter only to a role restricted per attribute; the
        // others are not listed at all (the read path of a plain query allocates nothing for
        // its permissions).
        let def = self.def();
        let attributes =
            if permissions::restricts_attributes(self.caller, &def.database, &def.table) {
                query_attributes(&query)
            } else {
                Vec::new()
            };
        if !self.allow(resp, Action::Read, attributes.iter().map(String::as_str))
            || !self.allow_related(resp, &query)
        {
            return;
        }
        let plan = match self.plan(&query) {
            Ok(p) => p,
            Err(e) => return self.error(resp, e.status(), &e.to_string()),
        };
        let projection = match self.projection(query.select.as_ref()) {
            Ok(p) => p,
            Err(e) => return self.error(resp, e.status(), &e.to_string()),
        };
        let restricted = self.restricted();
        // Only CSV writes a header.
        let fields = match self.format {
            Format::Csv => self.collection_fields(query.select.as_ref(), restricted),
            _ => Vec::new(),
        };
        let mut writer = format::CollectionWriter::new(self.format, fields);
        resp.body.clear();
        writer.start(&mut resp.body);
        let body = &mut resp.body;
        let select = query.select.as_ref();
        let redact = |def: &TableDef, v: &mut Value| self.redact(def, v);
        let mut failed: Option<SearchError> = None;
        let result = search::run_with(&self.db, &self.table, &plan, &mut |txn, _, record| {
            if explain {
                return ControlFlow::Continue(());
            }
            let joined = match (&projection, restricted) {
                (Some(p), false) => p.apply(txn, record.value, &redact),
                (Some(p), true) => p.apply(txn, &self.readable(record.value), &redact),
                (None, true) => {
                    let v = self.readable(record.value);
                    match select {
                        Some(select) => writer.item(&query::project(&v, select), body),
                        None => writer.item(&v, body),
                    }
                    return ControlFlow::Continue(());
                }
                (None, false) => {
                    match select {
                        Some(select) => writer.item(&query::project(record.value, select), body),
                        None => writer.item(record.value, body),
                    }
                    return ControlFlow::Continue(());
                }
            };
            match joined {
                Ok(v) => {
                    writer.item(&v, body);
                    ControlFlow::Continue(())
                }
                Err(e) => {
                    failed = Some(e);
                    ControlFlow::Break(())
                }
            }
        });
        let result = match failed {
            Some(e) => Err(e),
            None => result,
        };
        match result {
            Ok(stats) if explain => self.explain_answer(resp, &plan, &stats),
            Ok(_) => {
                writer.finish(&mut resp.body);
                resp.status = 200;
                resp.header("Content-Type", self.format.content_type());
                if self.format == Format::Csv {
                    resp.header("Content-Disposition", "attachment; filename=\"data.csv\"");
                }
            }
            Err(e) => self.error(resp, e.status(), &e.to_string()),
        }
    }

    /// The columns of a collection answer (CSV header): the selected names, or the table's
    /// attributes the caller may read.
    fn collection_fields(&self, select: Option<&Select>, restricted: bool) -> Vec<String> {
        let def = self.def();
        match select {
            Some(Select::Object(items) | Select::Array(items)) => {
                items.iter().map(|i| i.name.clone()).collect()
            }
            Some(Select::Value(item)) => vec![item.name.clone()],
            None => def
                .attributes
                .iter()
                .filter(|a| a.relationship.is_none())
                .filter(|a| {
                    !restricted
                        || permissions::attribute_allowed(
                            self.caller,
                            &def.database,
                            &def.table,
                            def.primary_key.as_deref(),
                            &a.name,
                            Action::Read,
                        )
                })
                .map(|a| a.name.clone())
                .collect(),
        }
    }

    /// The `?explain` answer: the plan and what running it visited.
    fn explain_answer(
        &self,
        resp: &mut Response,
        plan: &search::Plan,
        stats: &search::SearchStats,
    ) {
        resp.body.clear();
        let doc = serde_json::json!({
            "plan": plan.to_string(),
            "index": plan.index(),
            "records_visited": stats.records_visited,
            "index_entries": stats.index_entries,
            "returned": stats.returned,
        });
        let v = value::json::parse(doc.to_string().as_bytes()).unwrap_or(Value::Null);
        resp.status = 200;
        resp.header("Content-Type", self.format.content_type());
        self.format.write_one(&v, &mut resp.body);
    }

    /// The body as a record object, or the error answer.
    fn body_record(&self, structured_only: bool) -> Result<value::Object, (u16, String)> {
        let decoded = format::decode_body(self.req.header_str("content-type"), self.req.body)
            .map_err(|e| (400, e))?;
        let v = match decoded {
            format::Body::Structured(v) => v,
            format::Body::Raw(_) if structured_only => {
                return Err((
                    415,
                    "PATCH needs a JSON, CBOR or MessagePack body".to_string(),
                ))
            }
            format::Body::Raw(v) => v,
        };
        match v {
            Value::Object(mut o) => {
                resource::validate_record(
                    self.def(),
                    &mut o,
                    if structured_only {
                        Validation::Partial
                    } else {
                        Validation::Full
                    },
                )
                .map_err(|e| (400, e))?;
                Ok(o)
            }
            _ => Err((400, "Request body must be an object".to_string())),
        }
    }

    /// `Cache-Control: max-age=N` on a write: the record expires N seconds from now.
    fn expires_in_s(&self) -> Option<f64> {
        let cc = self.req.header_str("cache-control")?;
        cc.split(',').find_map(|d| {
            d.trim()
                .strip_prefix("max-age=")
                .and_then(|n| n.trim().parse::<u64>().ok())
                .map(|n| n as f64)
        })
    }

    async fn submit(&self, resp: &mut Response, ops: Vec<WriteOp>) -> Option<Vec<OpResult>> {
        match resource::write_many(&self.db, self.caller, ops).await {
            Ok(out) => Some(out.results),
            Err(e) => {
                self.failed(resp, WriteFailure::Write(e));
                None
            }
        }
    }

    /// Answers a failed write: 401/403 for missing rights (also when the writer found the
    /// record in a state the caller may not write), 412 for `If-Match`, 409 for an existing id.
    fn failed(&self, resp: &mut Response, e: WriteFailure) {
        let denied = matches!(
            e,
            WriteFailure::Denied(_)
                | WriteFailure::Write(WriteError::Condition(
                    ConditionFailed::MayNotInsert | ConditionFailed::MayNotUpdate
                ))
        );
        if denied && self.caller.is_anonymous() {
            resp.header("WWW-Authenticate", "Basic");
            self.error(resp, 401, AuthError::MustLogin.message());
        } else if denied {
            self.error(resp, 403, FORBIDDEN);
        } else if let WriteFailure::Write(e) = e {
            self.error(
                resp,
                crate::protocol::status::write_error_status(&e),
                &e.to_string(),
            );
        }
    }

    async fn post(&self, resp: &mut Response) {
        if !self.allow(resp, Action::Insert, []) {
            return;
        }
        let record = match self.body_record(false) {
            Ok(r) => r,
            Err((status, e)) => return self.error(resp, status, &e),
        };
        let created = resource::create(
            &self.db,
            self.caller,
            &self.table,
            record,
            self.expires_in_s(),
        )
        .await;
        match created {
            Ok(key) => {
                resp.status = 201;
                let mut location = String::new();
                match &key {
                    Value::String(s) => percent_encode(s, &mut location),
                    other => {
                        location.push_str(&String::from_utf8_lossy(&value::json::to_vec(other)))
                    }
                }
                resp.header("Location", &location);
                resp.header("Content-Type", self.format.content_type());
                self.format.write_one(&key, &mut resp.body);
            }
            Err(e) => self.failed(resp, e),
        }
    }

    /// `PUT /T/` with an array of keyed records (docs/rest.md, P2): each replaces (or creates) the
    /// record of its key, all in one transaction.
    async fn bulk_put(&self, resp: &mut Response) {
        let def = self.def();
        let Some(key_name) = def.primary_key.clone() else {
            return self.error(
                resp,
                400,
                "A bulk PUT needs a table with a @primaryKey; PUT each record by its id",
            );
        };
        let items = match format::decode_body(self.req.header_str("content-type"), self.req.body) {
            Ok(format::Body::Structured(Value::Array(items))) => items,
            Ok(_) => return self.error(resp, 400, "PUT on a collection needs an array of records"),
            Err(e) => return self.error(resp, 400, &e),
        };
        if items.len() > BULK_RECORDS_MAX {
            return self.error(
                resp,
                400,
                &format!("More than {BULK_RECORDS_MAX} records in one bulk PUT"),
            );
        }
        let mut ops = Vec::with_capacity(items.len());
        let mut attributes: Vec<String> = Vec::new();
        for (index, item) in items.into_iter().enumerate() {
            let Value::Object(mut record) = item else {
                return self.error(resp, 400, &format!("Record {index} is not an object"));
            };
            if let Err(e) = resource::validate_record(def, &mut record, Validation::Full) {
                return self.error(resp, 400, &format!("Record {index}: {e}"));
            }
            let Some(key) = record.get(&key_name).cloned().filter(|k| *k != Value::Null) else {
                return self.error(resp, 400, &format!("Record {index} has no {key_name}"));
            };
            for (name, _) in record.iter() {
                if !attributes.iter().any(|a| a == name) {
                    attributes.push(name.to_string());
                }
            }
            ops.push(WriteOp::Put {
                table: def.table.clone(),
                key: Some(key),
                record: Value::Object(record),
                mode: PutMode::Replace,
                expires_in_s: self.expires_in_s(),
            });
        }
        // Records may be new or existing: the caller needs both rights.
        let names = || attributes.iter().map(String::as_str);
        if !self.allow(resp, Action::Insert, names()) || !self.allow(resp, Action::Update, names())
        {
            return;
        }
        if ops.is_empty() || self.submit(resp, ops).await.is_some() {
            resp.status = 204;
        }
    }

    async fn delete_matches(&self, resp: &mut Response) {
        if !self.allow(resp, Action::Delete, []) {
            return;
        }
        let (query, _) = match self.query() {
            Ok(q) => q,
            Err(e) => return self.error(resp, 400, &e),
        };
        // Choosing records by a property the caller may not read would reveal it.
        if !self.allow(
            resp,
            Action::Read,
            query_attributes(&query).iter().map(String::as_str),
        ) || !self.allow_related(resp, &query)
        {
            return;
        }
        let plan = match self.plan(&query) {
            Ok(p) => p,
            Err(e) => return self.error(resp, e.status(), &e.to_string()),
        };
        let mut keys = Vec::new();
        let mut too_many = false;
        let table_name = self.def().table.clone();
        let result = search::run(&self.db, &self.table, &plan, &mut |pk, _| {
            if keys.len() >= DELETE_RECORDS_MAX {
                too_many = true;
                return ControlFlow::Break(());
            }
            if let Ok(key) = value::key::decode(pk) {
                keys.push(WriteOp::Delete {
                    table: table_name.clone(),
                    key,
                });
            }
            ControlFlow::Continue(())
        });
        if let Err(e) = result {
            return self.error(resp, e.status(), &e.to_string());
        }
        if too_many {
            return self.error(
                resp,
                400,
                &format!("More than {DELETE_RECORDS_MAX} records match; delete in smaller steps"),
            );
        }
        if !keys.is_empty() && self.submit(resp, keys).await.is_none() {
            return;
        }
        self.json_true(resp);
    }

    fn json_true(&self, resp: &mut Response) {
        resp.status = 200;
        resp.header("Content-Type", self.format.content_type());
        self.format.write_one(&Value::Bool(true), &mut resp.body);
    }

    async fn record(&self, resp: &mut Response, raw: &str, had_extension: bool) {
        let def = self.def();
        if !permissions::can_see(self.caller, &def.database, &def.table) {
            let _ = self.allow(resp, Action::Read, []);
            return;
        }
        let raw = if had_extension {
            raw.rsplit_once('.').map_or(raw, |(id, _)| id)
        } else {
            raw
        };
        // Most ids need no decoding; borrow them rather than copy (the GET path allocates
        // nothing it can avoid).
        let decoded: std::borrow::Cow<'_, str> = if raw.contains('%') {
            match crate::util::percent_decode(raw) {
                Ok(s) => s.into(),
                Err((_, why)) => return self.error(resp, 400, why),
            }
        } else {
            raw.into()
        };
        // `<id>.<prop>` when `<prop>` is a declared property; otherwise the dot is in the id.
        let (id_text, property) = match decoded.rsplit_once('.') {
            Some((id, prop))
                if self
                    .def()
                    .attribute(prop)
                    .is_some_and(|a| a.relationship.is_none()) =>
            {
                (id, Some(prop))
            }
            _ => (decoded.as_ref(), None),
        };
        let action = match self.req.method {
            Method::Get | Method::Head => Some(Action::Read),
            Method::Delete => Some(Action::Delete),
            // PUT/PATCH need insert or update depending on whether the record exists.
            _ => None,
        };
        if let Some(action) = action {
            let mut attrs: Vec<String> = property.map(str::to_string).into_iter().collect();
            let mut related_query = None;
            if action == Action::Read {
                if let Some(Ok(q)) = self.req.query.filter(|q| !q.is_empty()).map(query::parse) {
                    attrs.extend(query_attributes(&q));
                    related_query = Some(q);
                }
            }
            if !self.allow(resp, action, attrs.iter().map(String::as_str)) {
                return;
            }
            if let Some(q) = &related_query {
                if !self.allow_related(resp, q) {
                    return;
                }
            }
        }
        let string_key = matches!(
            self.def().primary_key_attribute().map(|a| &a.ty),
            Some(FieldType::ID | FieldType::String)
        );
        if string_key && matches!(self.req.method, Method::Get | Method::Head) {
            // Reuse one per-thread key value instead of allocating a String per read.
            return GET_KEY.with(|slot| {
                let mut slot = slot.borrow_mut();
                if let Value::String(s) = &mut *slot {
                    s.clear();
                    s.push_str(id_text);
                }
                self.get(resp, &slot, property)
            });
        }
        let id = match resource::parse_id(self.def(), id_text) {
            Ok(id) => id,
            Err(e) => return self.error(resp, 400, &e),
        };
        match self.req.method {
            Method::Get | Method::Head => self.get(resp, &id, property),
            Method::Put | Method::Patch => self.put(resp, id).await,
            Method::Delete => {
                let conditions = self.if_match();
                match resource::delete(&self.db, self.caller, &self.table, id, conditions).await {
                    Ok(_) => self.json_true(resp),
                    Err(e) => self.failed(resp, e),
                }
            }
            _ => {
                resp.header("Allow", ALLOW_RECORD);
                self.error(resp, 405, "Method not allowed on a record")
            }
        }
    }

    fn get(&self, resp: &mut Response, id: &Value, property: Option<&str>) {
        let select = match self.req.query.filter(|q| !q.is_empty()) {
            None => None,
            Some(raw) => match query::parse(raw) {
                Ok(q) => q.select,
                Err(e) => return self.error(resp, 400, &e.to_string()),
            },
        };
        let projection = match self.projection(select.as_ref()) {
            Ok(p) => p,
            Err(e) => return self.error(resp, e.status(), &e.to_string()),
        };
        let redact = |def: &TableDef, v: &mut Value| self.redact(def, v);
        let if_none_match = self.req.header_str("if-none-match");
        let format = self.format;
        let last_modified = self.resources.config.http.last_modified;
        let key_name = self.def().primary_key.as_deref();
        let restricted = self.restricted();
        let found = resource::with_record(&self.db, &self.table, id, |header, record| {
            let mut etag = [0u8; 18];
            let etag = etag_of(header.version, &mut etag);
            // The version covers this record only: a selection of related records has no tag,
            // as a change to them would not change it.
            let tagged = projection.is_none();
            if tagged && if_none_match.is_some_and(|h| etag_matches(h, etag)) {
                resp.status = 304;
                resp.header("ETag", etag);
                return;
            }
            resp.status = 200;
            if tagged {
                resp.header("ETag", etag);
            }
            if last_modified {
                resp.header("Last-Modified", &http_date(header.version));
            }
            if restricted {
                let v = self.readable(record);
                resp.header("Content-Type", format.content_type());
                match (property, &select, &projection) {
                    (Some(prop), _, _) => {
                        format.write_one(v.get(prop).unwrap_or(&Value::Null), &mut resp.body)
                    }
                    (None, _, Some(p)) => {
                        // Related records come from a second read transaction, opened while
                        // this record's own is still open.
                        match search::read(&self.db, |txn| p.apply(txn, &v, &redact)) {
                            Ok(Ok(v)) => format.write_one(&v, &mut resp.body),
                            Ok(Err(e)) | Err(e) => self.error(resp, e.status(), &e.to_string()),
                        }
                    }
                    (None, Some(select), None) => {
                        format.write_one(&query::project(&v, select), &mut resp.body)
                    }
                    (None, None, None) => format.write_one(&v, &mut resp.body),
                }
                return;
            }
            if let (None, None, Some((content_type, data))) =
                (property, &select, format::raw_content(record, key_name))
            {
                resp.header("Content-Type", content_type);
                resp.body.extend_from_slice(data);
                return;
            }
            resp.header("Content-Type", format.content_type());
            match (property, &select, &projection) {
                (Some(prop), _, _) => match record.get(prop) {
                    Some(v) => format.write_one(v, &mut resp.body),
                    None => format.write_one(&Value::Null, &mut resp.body),
                },
                (None, _, Some(p)) => {
                    match search::read(&self.db, |txn| p.apply(txn, record, &redact)) {
                        Ok(Ok(v)) => format.write_one(&v, &mut resp.body),
                        Ok(Err(e)) | Err(e) => self.error(resp, e.status(), &e.to_string()),
                    }
                }
                (None, Some(select), None) => {
                    format.write_one(&query::project(record, select), &mut resp.body)
                }
                (None, None, None) => format.write_one(record, &mut resp.body),
            }
        });
        match found {
            Ok(Some(())) => {}
            Ok(None) => {
                resp.status = 404;
                resp.body.clear();
            }
            Err(e) => self.error(resp, 500, &e.to_string()),
        }
    }

    /// `If-Match` on a write, as a condition the writer checks at commit (a mismatch there
    /// answers 412): `*` needs the record to exist, a list of ETags one of their versions.
    fn if_match(&self) -> Vec<Condition> {
        self.req
            .header_str("if-match")
            .map(if_match_condition)
            .into_iter()
            .collect()
    }

    async fn put(&self, resp: &mut Response, id: Value) {
        let patch = self.req.method == Method::Patch;
        let record = match self.body_record(patch) {
            Ok(r) => r,
            Err((status, e)) => return self.error(resp, status, &e),
        };
        let kind = if patch {
            PutKind::Merge
        } else {
            PutKind::Replace
        };
        let written = resource::put(
            &self.db,
            self.caller,
            &self.table,
            id,
            record,
            kind,
            self.expires_in_s(),
            self.if_match(),
        )
        .await;
        match written {
            Ok(_) => resp.status = 204,
            Err(e) => self.failed(resp, e),
        }
    }
}

/// Every attribute a query names in its filter, sort and select (what a read must be allowed).
fn query_attributes(query: &Query) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(filter) = &query.filter {
        permissions::filter_attributes(filter, &mut out);
    }
    out.extend(query.sort.iter().filter_map(|k| k.path.first().cloned()));
    match &query.select {
        Some(Select::Object(items) | Select::Array(items)) => {
            out.extend(items.iter().map(|i| i.name.clone()))
        }
        Some(Select::Value(item)) => out.push(item.name.clone()),
        None => {}
    }
    out
}

/// The related tables `query` reads through relationships — in conditions, sort keys and
/// selections — each with the attributes named there (none: the whole related record).
fn related_reads(db: &Database, def: &TableDef, query: &Query) -> Vec<(Arc<Table>, Vec<String>)> {
    let mut out = Vec::new();
    if def.attributes.iter().all(|a| a.relationship.is_none()) {
        // No relationship to read through: every path below would stop at its first step.
        return out;
    }
    let mut paths: Vec<Vec<String>> = query.sort.iter().map(|k| k.path.clone()).collect();
    if let Some(filter) = &query.filter {
        condition_paths(filter, &mut paths);
    }
    for path in &paths {
        out.extend(
            join::path_tables(db, def, path)
                .into_iter()
                .map(|(table, attribute)| (table, vec![attribute])),
        );
    }
    if let Some(select) = &query.select {
        let items = match select {
            Select::Value(item) => std::slice::from_ref(item),
            Select::Object(items) | Select::Array(items) => items.as_slice(),
        };
        selected_tables(db, def, items, 0, &mut out);
    }
    out
}

fn condition_paths(expr: &query::Expr, out: &mut Vec<Vec<String>>) {
    match expr {
        query::Expr::And(c) | query::Expr::Or(c) => c.iter().for_each(|e| condition_paths(e, out)),
        query::Expr::Condition(c) => out.push(c.path.clone()),
    }
}

fn selected_tables(
    db: &Database,
    def: &TableDef,
    items: &[query::SelectItem],
    depth: usize,
    out: &mut Vec<(Arc<Table>, Vec<String>)>,
) {
    if depth > join::JOIN_DEPTH_MAX {
        return;
    }
    for item in items {
        let Some(attr) = def
            .attribute(&item.name)
            .filter(|a| a.relationship.is_some())
        else {
            continue;
        };
        let Ok(link) = join::Link::new(db, def, attr) else {
            continue;
        };
        let children = item.children.as_deref().unwrap_or(&[]);
        out.push((
            link.target.clone(),
            children.iter().map(|c| c.name.clone()).collect(),
        ));
        selected_tables(db, &link.target.def, children, depth + 1, out);
    }
}

/// `"<16 hex digits of the version's bits>"`: opaque, ASCII, new on every write.
fn etag_of(version: f64, buf: &mut [u8; 18]) -> &str {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bits = version.to_bits();
    buf[0] = b'"';
    for i in 0..16 {
        buf[1 + i] = HEX[((bits >> (60 - 4 * i)) & 15) as usize];
    }
    buf[17] = b'"';
    std::str::from_utf8(buf).unwrap_or("\"\"")
}

/// The condition an `If-Match` header sets: `*` → the record exists; otherwise its version is
/// one of the listed ETags (`W/` ignored; a tag that is not one of ours matches nothing).
fn if_match_condition(header: &str) -> Condition {
    let mut versions = Vec::new();
    for tag in header.split(',') {
        let tag = tag.trim();
        if tag == "*" {
            return Condition::Exists;
        }
        let tag = tag.strip_prefix("W/").unwrap_or(tag);
        let hex = tag.strip_prefix('"').and_then(|t| t.strip_suffix('"'));
        if let Some(bits) = hex
            .filter(|h| h.len() == 16)
            .and_then(|h| u64::from_str_radix(h, 16).ok())
        {
            versions.push(f64::from_bits(bits));
        }
    }
    Condition::VersionIn(versions)
}

/// `If-None-Match`/`If-Match`: `*`, or a list containing the tag (`W/` ignored).
fn etag_matches(header: &str, etag: &str) -> bool {
    header.split(',').any(|t| {
        let t = t.trim();
        t == "*" || t.strip_prefix("W/").unwrap_or(t) == etag
    })
}

/// The version (ms since the epoch) as an IMF-fixdate.
fn http_date(version_ms: f64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = (version_ms / 1000.0).floor().max(0.0) as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = crate::util::civil_from_days(days);
    let mut out = String::with_capacity(29);
    let _ = write!(
        out,
        "{}, {:02} {} {} {:02}:{:02}:{:02} GMT",
        DAYS[days.rem_euclid(7) as usize],
        d,
        MONTHS[(m as usize).clamp(1, 12) - 1],
        y,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    );
    out
}

fn percent_encode(s: &str, out: &mut String) {
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_timing_is_milliseconds_with_three_decimals() {
        use std::time::Duration;
        for (took, expected) in [
            (Duration::ZERO, "db;dur=0.000"),
            (Duration::from_nanos(499), "db;dur=0.000"),
            (Duration::from_nanos(500), "db;dur=0.001"),
            (Duration::from_micros(42), "db;dur=0.042"),
            (Duration::from_nanos(1_234_567), "db;dur=1.235"),
            (Duration::from_secs(12), "db;dur=12000.000"),
            (Duration::MAX, "db;dur=18446744073709551.615"),
        ] {
            let mut out = [0u8; 48];
            let n = server_timing(took, &mut out);
            assert_eq!(std::str::from_utf8(&out[..n]).unwrap(), expected);
        }
    }

    #[test]
    fn accept_encoding() {
        for (header, expected) in [
            ("gzip", true),
            ("br, gzip;q=0.5", true),
            ("GZIP", true),
            ("gzip;q=0", false),
            ("br", false),
            ("*", true),
            ("*;q=0", false),
            ("gzip;q=0, *", false),
            ("identity, *;q=0.1", true),
            ("gzip;q=abc", false),
            ("", false),
        ] {
            assert_eq!(accepts_gzip(header), expected, "{header:?}");
        }
    }

    #[test]
    fn if_match_names_versions() {
        let mut buf = [0u8; 18];
        let tag = etag_of(1.5, &mut buf).to_string();
        assert_eq!(if_match_condition("*"), Condition::Exists);
        assert_eq!(
            if_match_condition(&format!("W/\"x\", {tag}")),
            Condition::VersionIn(vec![1.5])
        );
        assert_eq!(if_match_condition("\"nope\""), Condition::VersionIn(vec![]));
    }

    #[test]
    fn etags_and_dates() {
        let mut buf = [0u8; 18];
        let tag = etag_of(1.5, &mut buf).to_string();
        assert_eq!(tag, "\"3ff8000000000000\"");
        for (header, expected) in [
            ("\"3ff8000000000000\"", true),
            ("W/\"3ff8000000000000\"", true),
            ("\"x\", \"3ff8000000000000\"", true),
            ("*", true),
            ("\"x\"", false),
        ] {
            assert_eq!(etag_matches(header, &tag), expected, "{header}");
        }
        assert_eq!(http_date(0.0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(
            http_date(1_718_000_000_125.0),
            "Mon, 10 Jun 2024 06:13:20 GMT"
        );
    }
}
