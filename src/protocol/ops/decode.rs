//! Operations API request bodies to typed operations (docs/operations-api.md): content type, body decoding with
//! limits, the `operation` name with its aliases, and every field checked for presence and type.
//!
//! Nothing here reads a table or the store: a decoded [`Operation`] says what was asked, in names
//! and values, and `exec` carries it out. Decoding never panics on any input (fuzz target
//! `ops_request`); every failure is an [`OpError`] with the status and message of docs/operations-api.md.

use crate::value::{self, DecodeLimits, Object, Value};

use super::OpError;

/// Largest Operations API body decoded; larger → 413. HTTP's own `maxBodySize` bounds it first.
pub const BODY_BYTES_MAX: usize = 64 << 20;
/// Nesting depth of a body (conditions, permissions, records).
pub const BODY_DEPTH_MAX: usize = 64;
/// Values in a body: bounds the work a small CBOR or MessagePack body can cause.
pub const BODY_VALUES_MAX: usize = 8 << 20;
/// Operations inside one `transaction`.
pub const TRANSACTION_OPS_MAX: usize = 10_000;
/// Names of databases, tables and attributes: 1 to this many bytes (docs/operations-api.md).
pub const NAME_BYTES_MAX: usize = 250;

/// The request body's encoding, from `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyType {
    Json,
    Cbor,
    MsgPack,
}

impl BodyType {
    /// `None` → 415. A missing header reads as JSON (curl without `-H` still works).
    pub fn from_content_type(content_type: Option<&str>) -> Option<BodyType> {
        let Some(raw) = content_type else {
            return Some(BodyType::Json);
        };
        let media = raw.split(';').next().unwrap_or("").trim();
        if media.eq_ignore_ascii_case("application/json") || media.is_empty() {
            Some(BodyType::Json)
        } else if media.eq_ignore_ascii_case("application/cbor") {
            Some(BodyType::Cbor)
        } else if media.eq_ignore_ascii_case("application/x-msgpack")
            || media.eq_ignore_ascii_case("application/msgpack")
        {
            Some(BodyType::MsgPack)
        } else {
            None
        }
    }
}

/// A new attribute of `create_table`'s `attributes` list.
#[derive(Debug, Clone, PartialEq)]
pub struct NewAttribute {
    pub name: String,
    pub ty: Option<String>,
    pub indexed: Option<bool>,
    pub primary_key: bool,
    pub nullable: Option<bool>,
}

/// `insert`, `update`, `upsert`: the records to write to one table.
#[derive(Debug, Clone, PartialEq)]
pub struct Records {
    pub database: String,
    pub table: String,
    pub records: Vec<Object>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteKind {
    Insert,
    Update,
    Upsert,
}

impl WriteKind {
    pub fn name(self) -> &'static str {
        match self {
            WriteKind::Insert => "insert",
            WriteKind::Update => "update",
            WriteKind::Upsert => "upsert",
        }
    }
}

/// One write operation, on its own or inside a `transaction`.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    Put(WriteKind, Records),
    Delete {
        database: String,
        table: String,
        ids: Vec<Value>,
    },
}

/// What a search returns of each record: `None` (or `["*"]`) = every stored property.
pub type Attributes = Option<Vec<String>>;

#[derive(Debug, Clone, PartialEq)]
pub struct SearchByValue {
    pub database: String,
    pub table: String,
    pub attribute: String,
    pub value: Value,
    pub get_attributes: Attributes,
    pub limit: Option<u64>,
    pub offset: u64,
    pub desc: bool,
    /// Tidepool extension: answer the plan and its statistics instead of the records.
    pub explain: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SearchByConditions {
    pub database: String,
    pub table: String,
    /// Already read into the shared query AST.
    pub filter: crate::query::Expr,
    pub sort: Vec<crate::query::SortKey>,
    pub get_attributes: Attributes,
    pub limit: Option<u64>,
    pub offset: u64,
    /// Tidepool extension: answer the plan and its statistics instead of the records.
    pub explain: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ReadLog {
    pub start: u64,
    pub limit: u64,
    pub level: Option<String>,
    pub from: Option<String>,
    pub until: Option<String>,
    pub descending: bool,
    pub filter: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ReadAuditLog {
    pub database: String,
    pub table: String,
    /// `timestamp`, `username` or `hash_value`.
    pub search_type: String,
    pub search_values: Vec<Value>,
    /// `read_transaction_log`'s `limit`: at most this many transactions.
    pub limit: Option<usize>,
}

/// Where a CSV load reads its rows.
#[derive(Debug, Clone, PartialEq)]
pub enum CsvFrom {
    /// `csv_data_load`'s `data`: the CSV text itself.
    Data(String),
    /// `csv_file_load`'s `file_path`: a file on the server.
    File(String),
    /// `csv_url_load`'s `csv_url`: an `http://` or `https://` URL.
    Url(String),
}

/// `csv_data_load`, `csv_file_load`, `csv_url_load`: rows written as `action` says.
#[derive(Debug, Clone, PartialEq)]
pub struct CsvLoad {
    pub database: String,
    pub table: String,
    pub action: WriteKind,
    pub from: CsvFrom,
}

/// Every operation this server knows, with its fields checked.
#[derive(Debug, Clone, PartialEq)]
pub enum Operation {
    DescribeAll,
    DescribeDatabase {
        database: String,
    },
    DescribeTable {
        database: String,
        table: String,
    },
    CreateDatabase {
        database: String,
    },
    DropDatabase {
        database: String,
    },
    CreateTable {
        database: String,
        table: String,
        primary_key: String,
        attributes: Vec<NewAttribute>,
        expiration_s: Option<u64>,
    },
    DropTable {
        database: String,
        table: String,
    },
    CreateAttribute {
        database: String,
        table: String,
        attribute: String,
        indexed: bool,
    },
    DropAttribute {
        database: String,
        table: String,
        attribute: String,
    },
    Write(Write),
    SearchById {
        database: String,
        table: String,
        ids: Vec<Value>,
        get_attributes: Attributes,
    },
    SearchByValue(SearchByValue),
    SearchByConditions(SearchByConditions),
    Transaction {
        database: String,
        operations: Vec<Write>,
    },
    ListRoles,
    AddRole {
        role: String,
        id: Option<String>,
        permission: Value,
    },
    AlterRole {
        id: String,
        role: Option<String>,
        permission: Value,
    },
    DropRole {
        id: String,
    },
    ListUsers,
    UserInfo,
    AddUser {
        username: String,
        password: String,
        role: String,
        active: bool,
    },
    AlterUser {
        username: String,
        password: Option<String>,
        role: Option<String>,
        active: Option<bool>,
    },
    DropUser {
        username: String,
    },
    ClusterStatus,
    ClusterSetRoutes {
        routes: Vec<Value>,
    },
    ClusterGetRoutes,
    ClusterDeleteRoutes {
        routes: Vec<Value>,
    },
    /// Node operations (`add_node`, …) with their fields; 400 while replication is off.
    Clustering(String, Object),
    GetConfiguration,
    SetConfiguration {
        /// Flattened keys (`logging_level`) with their values, in request order.
        settings: Vec<(String, Value)>,
    },
    SystemInformation {
        attributes: Option<Vec<String>>,
    },
    /// `get_analytics`: a search of `system.hdb_analytics` (docs/operations-api.md "Analytics").
    GetAnalytics(SearchByConditions),
    ListMetrics {
        builtin: bool,
        custom: bool,
    },
    DescribeMetric {
        metric: String,
    },
    ReadLog(ReadLog),
    ReadAuditLog(ReadAuditLog),
    /// With `username` and `password` no other authentication is needed; without them the
    /// authenticated caller gets tokens.
    CreateAuthenticationTokens {
        username: Option<String>,
        password: Option<String>,
    },
    /// The refresh token from the body or, when absent, the `Authorization: Bearer` header.
    RefreshOperationToken {
        refresh_token: Option<String>,
    },
    CsvLoad(CsvLoad),
    GetJob {
        id: String,
    },
    SearchJobsByStartDate {
        from_ms: f64,
        to_ms: f64,
    },
    /// Deletes records created before a date, as a job.
    DeleteRecordsBefore {
        database: String,
        table: String,
        before_ms: f64,
    },
    /// Removes a table's audit entries older than a time, as a job.
    DeleteAuditLogsBefore {
        database: String,
        table: String,
        before_ms: f64,
        /// The job type recorded: `delete_audit_logs_before`, or HarperDB's
        /// `delete_transaction_logs_before` (the same work without NATS).
        job: &'static str,
    },
    /// Stops gracefully, then starts again in place with the same arguments.
    Restart,
    /// `restart_service`: a restart run as a job, and on every linked node with `replicated`.
    RestartService {
        service: String,
        replicated: bool,
    },
    /// Runs a search as a job and writes its result to a file on the server.
    ExportLocal(Box<ExportLocal>),
    /// One SQL statement (`resource::sql`).
    Sql {
        sql: String,
    },
    /// Known to HarperDB, not served here → 501.
    Unsupported(String),
}

/// `export_local`: the search to run, and the file it goes to (`<path>/<filename>`, with
/// `.<format>` added unless the name has it).
#[derive(Debug, Clone, PartialEq)]
pub struct ExportLocal {
    pub path: String,
    pub filename: String,
    /// `json` or `csv`.
    pub format: String,
    pub search: Operation,
}

impl Operation {
    /// Operations docs/security.md keeps for super users.
    pub fn super_user_only(&self) -> bool {
        // Reading a server file or fetching a URL is the server's own reach: super users only.
        // CSV text in the body is a write like `insert`, checked against the table's rights.
        if let Operation::CsvLoad(load) = self {
            return !matches!(load.from, CsvFrom::Data(_));
        }
        !matches!(
            self,
            Operation::DescribeAll
                | Operation::DescribeDatabase { .. }
                | Operation::DescribeTable { .. }
                | Operation::CreateAttribute { .. }
                | Operation::Write(_)
                | Operation::SearchById { .. }
                | Operation::SearchByValue(_)
                | Operation::SearchByConditions(_)
                | Operation::Transaction { .. }
                | Operation::UserInfo
                | Operation::CreateAuthenticationTokens { .. }
                | Operation::RefreshOperationToken { .. }
                | Operation::GetJob { .. }
                | Operation::Sql { .. }
                | Operation::Unsupported(_)
        )
    }
}

/// A clustering or unsupported operation's name as listed here (`"unknown"` for any other).
pub fn listed_name(name: &str) -> &'static str {
    CLUSTERING_OPS
        .iter()
        .chain(UNSUPPORTED_OPS)
        .find(|listed| **listed == name)
        .copied()
        .unwrap_or("unknown")
}

/// Node-level clustering operations; all answer 400 while replication is off.
const CLUSTERING_OPS: &[&str] = &[
    "add_node",
    "set_node",
    "update_node",
    "remove_node",
    "configure_cluster",
    "cluster_network",
    "purge_stream",
    "add_node_back",
];

/// Operations whose database and table names must be JSON strings (HarperDB answers
/// `'schema' must be a string` to a number there, and takes one in record operations).
const STRICT_NAME_OPS: &[&str] = &[
    "create_database",
    "create_schema",
    "drop_database",
    "drop_schema",
    "create_table",
    "drop_table",
];

/// HarperDB operations this server does not serve (→ 501), so they are not "not found".
const UNSUPPORTED_OPS: &[&str] = &[
    "login",
    "logout",
    "deploy_component",
    "package_component",
    "get_components",
    "get_component_file",
    "set_component_file",
    "drop_component",
    "add_component",
    "deploy",
    "add_certificate",
    "remove_certificate",
    "list_certificates",
    "import_from_s3",
    "export_to_s3",
    "install_node_modules",
    "audit_node_modules",
    "get_status",
    "set_status",
    "clear_status",
    "add_ssh_key",
    "list_ssh_keys",
    "get_backup",
];

/// Decodes a body of `body_type` into an operation.
pub fn decode(body_type: BodyType, body: &[u8]) -> Result<Operation, OpError> {
    if body.len() > BODY_BYTES_MAX {
        return Err(OpError::new(
            413,
            format!("Request body is larger than {BODY_BYTES_MAX} bytes"),
        ));
    }
    let limits = DecodeLimits {
        depth_max: BODY_DEPTH_MAX,
        bytes_max: BODY_BYTES_MAX,
        values_max: BODY_VALUES_MAX,
    };
    let parsed = match body_type {
        BodyType::Json => value::json::parse_with(body, &limits),
        BodyType::Cbor => value::cbor::parse_with(body, &limits),
        BodyType::MsgPack => value::msgpack::parse_with(body, &limits),
    };
    let Ok(Value::Object(fields)) = parsed else {
        return Err(OpError::bad("Invalid JSON."));
    };
    decode_object(&fields, true)
}

/// Decodes one operation object (`top`: not inside a `transaction`): each family of
/// operations has its decoder ([`DECODERS`]); clustering and HarperDB operations not served
/// here are recognised by name.
pub fn decode_object(fields: &Object, top: bool) -> Result<Operation, OpError> {
    let name = match fields.get("operation") {
        None | Some(Value::Null) => {
            return Err(OpError::bad(
                "Request body must include an 'operation' property.",
            ))
        }
        Some(Value::String(s)) => s.as_str(),
        Some(_) => return Err(OpError::bad("'operation' must be a string")),
    };
    let f = Fields {
        fields,
        strict_names: STRICT_NAME_OPS.contains(&name),
    };
    for decoder in DECODERS {
        if let Some(op) = decoder(name, &f, top)? {
            return Ok(op);
        }
    }
    Ok(match name {
        other if CLUSTERING_OPS.contains(&other) => {
            Operation::Clustering(other.to_string(), fields.clone())
        }
        other if UNSUPPORTED_OPS.contains(&other) => Operation::Unsupported(other.to_string()),
        other => return Err(OpError::bad(format!("Operation '{other}' not found"))),
    })
}

/// A family's decoder: `None` when the name is not one of its operations.
type Decoder = fn(&str, &Fields<'_>, bool) -> Result<Option<Operation>, OpError>;

const DECODERS: [Decoder; 5] = [schema_op, data_op, user_op, admin_op, job_op];

/// Databases, tables and attributes.
fn schema_op(name: &str, f: &Fields<'_>, _top: bool) -> Result<Option<Operation>, OpError> {
    Ok(Some(match name {
        "describe_all" => Operation::DescribeAll,
        "describe_database" | "describe_schema" => Operation::DescribeDatabase {
            database: f.database()?,
        },
        // A missing `table` is refused in `run` after the `system` check, so a non-super user
        // asking about `system` gets that refusal first (as HarperDB answers).
        "describe_table" => Operation::DescribeTable {
            database: f.database()?,
            table: match f.get("table") {
                None => String::new(),
                Some(_) => f.name("table")?,
            },
        },
        "create_database" | "create_schema" => Operation::CreateDatabase {
            database: f.database()?,
        },
        "drop_database" | "drop_schema" => Operation::DropDatabase {
            database: f.required_database()?,
        },
        "create_table" => Operation::CreateTable {
            database: f.database()?,
            table: f.name("table")?,
            primary_key: f.name_alias("primary_key", "hash_attribute")?,
            attributes: f.new_attributes()?,
            expiration_s: f.opt_u64("expiration")?,
        },
        "drop_table" => Operation::DropTable {
            database: f.database()?,
            table: f.name("table")?,
        },
        "create_attribute" => Operation::CreateAttribute {
            database: f.database()?,
            table: f.name("table")?,
            attribute: f.name("attribute")?,
            indexed: f.opt_bool("indexed")?.unwrap_or(true),
        },
        "drop_attribute" => Operation::DropAttribute {
            database: f.database()?,
            table: f.name("table")?,
            attribute: f.name("attribute")?,
        },
        _ => return Ok(None),
    }))
}

/// Record writes, searches, transactions, SQL and the audit log.
fn data_op(name: &str, f: &Fields<'_>, top: bool) -> Result<Option<Operation>, OpError> {
    Ok(Some(match name {
        "insert" | "update" | "upsert" | "delete" => Operation::Write(decode_write(name, f, None)?),
        "search_by_id" | "search_by_hash" => Operation::SearchById {
            database: f.database()?,
            table: f.name("table")?,
            ids: f.ids()?,
            get_attributes: f.get_attributes()?,
        },
        "search_by_value" => Operation::SearchByValue(f.search_by_value()?),
        "search_by_conditions" => Operation::SearchByConditions(f.search_by_conditions()?),
        "transaction" if top => f.transaction()?,
        "sql" => Operation::Sql {
            sql: match f.get("sql") {
                None | Some(Value::Null) => {
                    return Err(OpError::bad(
                        "The 'sql' parameter is missing from the request body",
                    ))
                }
                Some(_) => f.string("sql")?,
            },
        },
        "read_audit_log" => Operation::ReadAuditLog(f.read_audit_log()?),
        _ => return Ok(None),
    }))
}

/// Roles, users and tokens.
fn user_op(name: &str, f: &Fields<'_>, _top: bool) -> Result<Option<Operation>, OpError> {
    Ok(Some(match name {
        "list_roles" => Operation::ListRoles,
        "add_role" => Operation::AddRole {
            role: f.string("role")?,
            id: f.opt_string("id")?,
            permission: f.permission()?,
        },
        "alter_role" => Operation::AlterRole {
            id: f.string("id")?,
            role: f.opt_string("role")?,
            permission: f.permission()?,
        },
        "drop_role" => Operation::DropRole {
            id: f.string("id")?,
        },
        "list_users" => Operation::ListUsers,
        "user_info" => Operation::UserInfo,
        "create_authentication_tokens" => Operation::CreateAuthenticationTokens {
            username: f.opt_string("username")?,
            password: f.opt_string("password")?,
        },
        "refresh_operation_token" => Operation::RefreshOperationToken {
            refresh_token: f.opt_string("refresh_token")?,
        },
        "add_user" => Operation::AddUser {
            username: f.string("username")?,
            password: f.string("password")?,
            role: f.string("role")?,
            active: f.opt_bool("active")?.unwrap_or(true),
        },
        "alter_user" => Operation::AlterUser {
            username: f.string("username")?,
            password: f.opt_string("password")?,
            role: f.opt_string("role")?,
            active: f.opt_bool("active")?,
        },
        "drop_user" => Operation::DropUser {
            username: f.string("username")?,
        },
        _ => return Ok(None),
    }))
}

/// Clustering routes, configuration, system information and the log.
fn admin_op(name: &str, f: &Fields<'_>, _top: bool) -> Result<Option<Operation>, OpError> {
    Ok(Some(match name {
        "cluster_status" => Operation::ClusterStatus,
        "cluster_set_routes" => Operation::ClusterSetRoutes {
            routes: f.routes()?,
        },
        "cluster_get_routes" => Operation::ClusterGetRoutes,
        "cluster_delete_routes" => Operation::ClusterDeleteRoutes {
            routes: f.routes()?,
        },
        "get_configuration" => Operation::GetConfiguration,
        "set_configuration" => Operation::SetConfiguration {
            settings: f
                .fields
                .iter()
                .filter(|(k, _)| *k != "operation")
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        },
        "system_information" => Operation::SystemInformation {
            attributes: f.opt_strings("attributes")?,
        },
        "read_log" => Operation::ReadLog(f.read_log()?),
        "get_analytics" => Operation::GetAnalytics(f.get_analytics()?),
        "list_metrics" => {
            let types = f.opt_strings("metric_types")?;
            let types = types.unwrap_or_else(|| vec!["builtin".to_string()]);
            Operation::ListMetrics {
                builtin: types.iter().any(|t| t == "builtin"),
                custom: types.iter().any(|t| t == "custom"),
            }
        }
        "describe_metric" => Operation::DescribeMetric {
            metric: f.string("metric")?,
        },
        _ => return Ok(None),
    }))
}

/// Jobs: CSV loads, exports, deletions before a time; and restart.
fn job_op(name: &str, f: &Fields<'_>, _top: bool) -> Result<Option<Operation>, OpError> {
    Ok(Some(match name {
        "csv_data_load" => Operation::CsvLoad(f.csv_load(CsvFrom::Data(f.string("data")?))?),
        "csv_file_load" => Operation::CsvLoad(f.csv_load(CsvFrom::File(f.string("file_path")?))?),
        "csv_url_load" => f.csv_url_load()?,
        "restart" => Operation::Restart,
        "restart_service" => Operation::RestartService {
            service: match f.string("service")?.as_str() {
                s @ ("http_workers" | "custom_functions" | "harperdb") => s.to_string(),
                _ => return Err(OpError::bad("Invalid service")),
            },
            replicated: matches!(f.get("replicated"), Some(Value::Bool(true))),
        },
        "export_local" => f.export_local()?,
        "get_job" => Operation::GetJob {
            id: f.string("id")?,
        },
        // `delete_files_before` is HarperDB's older name of the same operation. Super users
        // only; a missing `table` is left for `exec` to refuse after that gate, so others get 403
        // whatever they send (as HarperDB answers them).
        "delete_records_before" | "delete_files_before" => Operation::DeleteRecordsBefore {
            database: f.database()?,
            table: match f.get("table") {
                None => String::new(),
                Some(_) => f.name("table")?,
            },
            before_ms: f.date("date")?,
        },
        "delete_audit_logs_before" => Operation::DeleteAuditLogsBefore {
            database: f.database()?,
            table: f.name("table")?,
            before_ms: f.timestamp("timestamp")?,
            job: "delete_audit_logs_before",
        },
        // HarperDB 4.x without NATS answers these from its audit log (docs/operations-api.md).
        "delete_transaction_logs_before" => Operation::DeleteAuditLogsBefore {
            database: f.database()?,
            table: f.name("table")?,
            before_ms: f.timestamp("timestamp")?,
            job: "delete_transaction_logs_before",
        },
        "read_transaction_log" => Operation::ReadAuditLog(f.read_transaction_log()?),
        "search_jobs_by_start_date" => Operation::SearchJobsByStartDate {
            from_ms: f.date("from_date")?,
            to_ms: f.date("to_date")?,
        },
        _ => return Ok(None),
    }))
}

impl Fields<'_> {
    fn search_by_value(&self) -> Result<SearchByValue, OpError> {
        let f = self;
        Ok(SearchByValue {
            database: f.database()?,
            table: f.name("table")?,
            attribute: f.string_alias("attribute", "search_attribute")?,
            value: f
                .alias("value", "search_value")
                .cloned()
                .ok_or_else(|| OpError::bad("'value' is required"))?,
            get_attributes: f.get_attributes()?,
            limit: f.opt_u64("limit")?,
            offset: f.opt_u64("offset")?.unwrap_or(0),
            // `reverse` is HarperDB's name for it.
            desc: match f.opt_bool("desc")? {
                Some(desc) => desc,
                None => f.opt_bool("reverse")?.unwrap_or(false),
            },
            explain: f.opt_bool("explain")?.unwrap_or(false),
        })
    }

    /// `transaction`: its database and writes (insert, update, upsert, delete only).
    fn transaction(&self) -> Result<Operation, OpError> {
        let f = self;
        let database = f.database()?;
        let Some(Value::Array(items)) = f.get("operations") else {
            return Err(OpError::bad("'operations' must be an array of operations"));
        };
        if items.len() > TRANSACTION_OPS_MAX {
            return Err(OpError::bad(format!(
                "a transaction holds at most {TRANSACTION_OPS_MAX} operations"
            )));
        }
        let mut operations = Vec::with_capacity(items.len());
        for item in items {
            let Value::Object(inner) = item else {
                return Err(OpError::bad("each of 'operations' must be an object"));
            };
            let inner = Fields {
                fields: inner,
                strict_names: false,
            };
            let inner_name = inner.string("operation")?;
            if !matches!(
                inner_name.as_str(),
                "insert" | "update" | "upsert" | "delete"
            ) {
                return Err(OpError::bad(format!(
                    "Operation '{inner_name}' cannot be part of a transaction; use insert, update, upsert or delete"
                )));
            }
            operations.push(decode_write(&inner_name, &inner, Some(&database))?);
        }
        Ok(Operation::Transaction {
            database,
            operations,
        })
    }

    fn read_log(&self) -> Result<ReadLog, OpError> {
        let f = self;
        Ok(ReadLog {
            start: f.opt_u64("start")?.unwrap_or(0),
            limit: f.opt_u64("limit")?.unwrap_or(1000),
            level: f.opt_string("level")?,
            from: f.opt_string("from")?,
            until: f.opt_string("until")?,
            descending: match f.opt_string("order")?.as_deref() {
                None | Some("asc") => false,
                Some("desc") => true,
                Some(other) => {
                    return Err(OpError::bad(format!(
                        "'order' must be \"asc\" or \"desc\", not \"{other}\""
                    )))
                }
            },
            filter: f.opt_string("filter")?,
        })
    }

    fn read_audit_log(&self) -> Result<ReadAuditLog, OpError> {
        let f = self;
        Ok(ReadAuditLog {
            database: f.database()?,
            table: f.name("table")?,
            search_type: match f.opt_string("search_type")? {
                None => "timestamp".to_string(),
                Some(t) if matches!(t.as_str(), "timestamp" | "username" | "hash_value") => t,
                Some(t) => {
                    return Err(OpError::bad(format!(
                        "'search_type' must be timestamp, username or hash_value, not \"{t}\""
                    )))
                }
            },
            search_values: match f.get("search_values") {
                None | Some(Value::Null) => Vec::new(),
                Some(Value::Array(items)) => items.clone(),
                Some(_) => return Err(OpError::bad("'search_values' must be an array")),
            },
            limit: None,
        })
    }

    /// `read_transaction_log` as HarperDB 4.x without NATS reads it: the audit log of one table,
    /// from `from` (included) to `to` (excluded), at most `limit` transactions.
    fn read_transaction_log(&self) -> Result<ReadAuditLog, OpError> {
        let f = self;
        let bound = |k: &str| -> Result<Option<f64>, OpError> {
            match f.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(_) => f.timestamp(k).map(Some),
            }
        };
        let (from, to) = (bound("from")?, bound("to")?);
        let mut search_values = Vec::new();
        if from.is_some() || to.is_some() {
            search_values.push(Value::Float(from.unwrap_or(0.0)));
        }
        if let Some(to) = to {
            // The audit search includes its upper bound: the float just below `to` excludes it.
            let below = if to > 0.0 {
                f64::from_bits(to.to_bits() - 1)
            } else {
                to
            };
            search_values.push(Value::Float(below));
        }
        let limit = match f.get("limit") {
            None | Some(Value::Null) => None,
            Some(Value::Int(n)) if *n >= 0 => Some(*n as usize),
            Some(_) => return Err(OpError::bad("'limit' must be a non-negative integer")),
        };
        Ok(ReadAuditLog {
            database: f.database()?,
            table: f.name("table")?,
            search_type: "timestamp".into(),
            search_values,
            limit,
        })
    }

    fn csv_url_load(&self) -> Result<Operation, OpError> {
        let f = self;
        let url = f.string("csv_url")?;
        let scheme_ok = ["http://", "https://"].iter().any(|p| {
            url.get(..p.len())
                .is_some_and(|s| s.eq_ignore_ascii_case(p))
        });
        if !scheme_ok {
            return Err(OpError::bad("'csv_url' must be an http:// or https:// URL"));
        }
        Ok(Operation::CsvLoad(f.csv_load(CsvFrom::Url(url))?))
    }

    /// `export_local`: the format, the search (NoSQL searches or an SQL SELECT) and the file.
    fn export_local(&self) -> Result<Operation, OpError> {
        let f = self;
        let format = f.opt_string("format")?.unwrap_or_else(|| "json".into());
        if !matches!(format.as_str(), "json" | "csv") {
            return Err(OpError::bad(format!(
                "'format' must be json or csv, not '{format}'"
            )));
        }
        let search = match f.get("search_operation") {
            Some(Value::Object(o)) => decode_object(o, false)?,
            Some(_) => return Err(OpError::bad("'search_operation' must be an object")),
            None => return Err(OpError::bad("'search_operation' is required")),
        };
        match &search {
            Operation::SearchById { .. }
            | Operation::SearchByValue(_)
            | Operation::SearchByConditions(_) => {}
            Operation::Sql { sql } if starts_with_word(sql, "select") => {}
            Operation::Sql { .. } => {
                return Err(OpError::bad(
                    "export_local runs a SELECT statement; other SQL statements are not exports",
                ))
            }
            _ => {
                return Err(OpError::bad(
                    "'search_operation' must be search_by_hash (search_by_id), \
                     search_by_value, search_by_conditions or sql",
                ))
            }
        }
        Ok(Operation::ExportLocal(Box::new(ExportLocal {
            path: f.string("path")?,
            filename: f.string("filename")?,
            format,
            search,
        })))
    }
}

/// Whether `text` begins (after white space) with `word`, in any case.
fn starts_with_word(text: &str, word: &str) -> bool {
    let text = text.trim_start();
    text.get(..word.len())
        .is_some_and(|w| w.eq_ignore_ascii_case(word))
        && text[word.len()..]
            .chars()
            .next()
            .is_none_or(|c| !c.is_alphanumeric() && c != '_')
}

fn decode_write(name: &str, f: &Fields<'_>, database: Option<&str>) -> Result<Write, OpError> {
    let database = match database {
        // Inside a transaction every write goes to the transaction's database.
        Some(db) => {
            let own = f.database()?;
            if f.alias("database", "schema").is_some() && own != db {
                return Err(OpError::bad(format!(
                    "a transaction writes to one database ('{db}'), not '{own}'"
                )));
            }
            db.to_string()
        }
        None => f.database()?,
    };
    let table = f.name("table")?;
    if name == "delete" {
        return Ok(Write::Delete {
            database,
            table,
            ids: f.ids()?,
        });
    }
    let kind = match name {
        "insert" => WriteKind::Insert,
        "update" => WriteKind::Update,
        _ => WriteKind::Upsert,
    };
    let items = match f.get("records") {
        Some(Value::Array(items)) => items,
        None => return Err(OpError::bad("'records' is required")),
        Some(_) => return Err(OpError::bad("'records' must be an array of objects")),
    };
    let mut records = Vec::with_capacity(items.len());
    for item in items {
        match item {
            Value::Object(o) => records.push(o.clone()),
            _ => return Err(OpError::bad("'records' must be an array of objects")),
        }
    }
    Ok(Write::Put(
        kind,
        Records {
            database,
            table,
            records,
        },
    ))
}

/// Typed field access with docs/operations-api.md's 400 messages.
struct Fields<'a> {
    fields: &'a Object,
    /// Names must be JSON strings (HarperDB's database and table operations); elsewhere a number
    /// reads as its decimal text, as HarperDB's record operations take `"schema": 123`.
    strict_names: bool,
}

impl<'a> Fields<'a> {
    fn get(&self, key: &str) -> Option<&'a Value> {
        match self.fields.get(key) {
            Some(Value::Null) | None => None,
            Some(v) => Some(v),
        }
    }

    fn alias(&self, key: &str, alias: &str) -> Option<&'a Value> {
        self.get(key).or_else(|| self.get(alias))
    }

    fn string(&self, key: &str) -> Result<String, OpError> {
        match self.get(key) {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(OpError::bad(format!("'{key}' must be a string"))),
            None => Err(OpError::bad(format!("'{key}' is required"))),
        }
    }

    fn opt_string(&self, key: &str) -> Result<Option<String>, OpError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(OpError::bad(format!("'{key}' must be a string"))),
        }
    }

    fn string_alias(&self, key: &str, alias: &str) -> Result<String, OpError> {
        match self.alias(key, alias) {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(OpError::bad(format!("'{key}' must be a string"))),
            None => Err(OpError::bad(format!("'{key}' is required"))),
        }
    }

    /// A database, table or attribute name: a string of 1–250 bytes without `/`, `.` or
    /// control characters (an integer too where not [`Fields::strict_names`]). Anything else (in
    /// database and table operations a number too, as HarperDB refuses `"schema": 1123`) is
    /// a 400 naming, in HarperDB's words, every one of `database`, `schema` and `table` that is
    /// not a string (a non-string `database` counts for `schema` too, which HarperDB fills from it).
    fn name(&self, key: &str) -> Result<String, OpError> {
        let raw = match self.get(key) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Int(i)) if !self.strict_names => i.to_string(),
            Some(_) => return Err(OpError::bad(self.not_strings(key))),
            None => return Err(OpError::bad(format!("'{key}' is required"))),
        };
        check_name(key, &raw)?;
        Ok(raw)
    }

    /// `'database' must be a string. 'schema' must be a string. 'table' must be a string`, for
    /// those sent and not strings; `key` (the one being read) always among them.
    fn not_strings(&self, key: &str) -> String {
        let bad = |k: &str| self.get(k).is_some_and(|v| !matches!(v, Value::String(_)));
        let mut names: Vec<&str> = Vec::new();
        for k in ["database", "schema", "table"] {
            let listed = bad(k) || (k == "schema" && self.get(k).is_none() && bad("database"));
            if listed || k == key {
                names.push(k);
            }
        }
        if !names.contains(&key) {
            names.push(key);
        }
        names
            .iter()
            .map(|k| format!("'{k}' must be a string"))
            .collect::<Vec<_>>()
            .join(". ")
    }

    fn name_alias(&self, key: &str, alias: &str) -> Result<String, OpError> {
        if self.get(key).is_some() {
            self.name(key)
        } else if self.get(alias).is_some() {
            self.name(alias)
        } else {
            Err(OpError::bad(format!("'{key}' is required")))
        }
    }

    /// `database` (alias `schema`), default `data`.
    fn database(&self) -> Result<String, OpError> {
        if self.get("database").is_some() {
            self.name("database")
        } else if self.get("schema").is_some() {
            self.name("schema")
        } else {
            Ok("data".to_string())
        }
    }

    /// `drop_database` names its database explicitly: no default to drop by accident.
    fn required_database(&self) -> Result<String, OpError> {
        if self.alias("database", "schema").is_none() {
            return Err(OpError::bad("'database' is required"));
        }
        self.database()
    }

    fn opt_bool(&self, key: &str) -> Result<Option<bool>, OpError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(OpError::bad(format!("'{key}' must be true or false"))),
        }
    }

    fn opt_u64(&self, key: &str) -> Result<Option<u64>, OpError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Int(i)) if *i >= 0 => Ok(Some(*i as u64)),
            Some(Value::Float(f)) if *f >= 0.0 && f.fract() == 0.0 && *f < 9e15 => {
                Ok(Some(*f as u64))
            }
            Some(_) => Err(OpError::bad(format!(
                "'{key}' must be a non-negative integer"
            ))),
        }
    }

    fn opt_strings(&self, key: &str) -> Result<Option<Vec<String>>, OpError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s.clone()),
                    _ => Err(OpError::bad(format!("'{key}' must be an array of strings"))),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(_) => Err(OpError::bad(format!("'{key}' must be an array of strings"))),
        }
    }

    /// `ids` (alias `hash_values`): an array of strings and numbers.
    fn ids(&self) -> Result<Vec<Value>, OpError> {
        match self.alias("ids", "hash_values") {
            Some(Value::Array(items)) => {
                for id in items {
                    if !matches!(
                        id,
                        Value::String(_) | Value::Int(_) | Value::Float(_) | Value::BigInt(_)
                    ) {
                        return Err(OpError::bad("each of 'ids' must be a string or a number"));
                    }
                }
                Ok(items.clone())
            }
            // Named as the client sent it, in HarperDB's words.
            Some(_) if self.get("ids").is_none() => {
                Err(OpError::bad("'hash_values' must be an array"))
            }
            Some(_) => Err(OpError::bad("'ids' must be an array")),
            None => Err(OpError::bad("'ids' is required")),
        }
    }

    /// `get_attributes`; absent or containing `*` = every property.
    fn get_attributes(&self) -> Result<Attributes, OpError> {
        if self
            .get("get_attributes")
            .is_some_and(|v| !matches!(v, Value::Array(_)))
        {
            return Err(OpError::bad("'get_attributes' must be an array"));
        }
        let list = self.opt_strings("get_attributes")?;
        Ok(list.filter(|l| !l.iter().any(|a| a == "*")))
    }

    /// An ISO-8601 date (`2021-01-25T23:05:27.464+0000` or `...Z`), or a number of epoch
    /// milliseconds, as epoch milliseconds.
    /// Milliseconds since the epoch as a number or a string of one (HarperDB's suite sends
    /// `"1796599549920"`), else an ISO-8601 date.
    fn timestamp(&self, key: &str) -> Result<f64, OpError> {
        if let Some(Value::String(text)) = self.get(key) {
            if let Ok(ms) = text.trim().parse::<f64>() {
                if ms.is_finite() {
                    return Ok(ms);
                }
            }
        }
        self.date(key)
    }

    fn date(&self, key: &str) -> Result<f64, OpError> {
        match self.get(key) {
            Some(Value::Int(ms)) => return Ok(*ms as f64),
            Some(Value::Float(ms)) if ms.is_finite() => return Ok(*ms),
            _ => {}
        }
        let text = self.string(key)?;
        // HarperDB's own examples write offsets without the colon (`+0000`).
        let b = text.as_bytes();
        let colonless = b.len() > 5
            && matches!(b.get(b.len() - 5), Some(b'+' | b'-'))
            && b.get(b.len() - 4..)
                .is_some_and(|d| d.iter().all(u8::is_ascii_digit));
        let parsed = if colonless {
            let (head, minutes) = text.split_at(text.len() - 2);
            crate::util::parse_iso8601_ms(&format!("{head}:{minutes}"))
        } else {
            crate::util::parse_iso8601_ms(&text)
        };
        parsed.ok_or_else(|| {
            OpError::bad(format!("'{key}' must be an ISO-8601 date, not \"{text}\""))
        })
    }

    /// The table and `action` (default `insert`) of a CSV load.
    fn csv_load(&self, from: CsvFrom) -> Result<CsvLoad, OpError> {
        let action = match self.opt_string("action")?.as_deref() {
            None | Some("insert") => WriteKind::Insert,
            Some("update") => WriteKind::Update,
            Some("upsert") => WriteKind::Upsert,
            Some(other) => {
                return Err(OpError::bad(format!(
                    "'action' must be insert, update or upsert, not \"{other}\""
                )))
            }
        };
        Ok(CsvLoad {
            database: self.database()?,
            table: self.name("table")?,
            action,
            from,
        })
    }

    fn permission(&self) -> Result<Value, OpError> {
        match self.get("permission") {
            Some(v @ Value::Object(_)) => Ok(v.clone()),
            Some(_) => Err(OpError::bad("'permission' must be an object")),
            None => Err(OpError::bad("'permission' is required")),
        }
    }

    fn routes(&self) -> Result<Vec<Value>, OpError> {
        match self.get("routes") {
            Some(Value::Array(items)) => Ok(items.clone()),
            Some(_) => Err(OpError::bad("'routes' must be an array")),
            None => Err(OpError::bad("'routes' is required")),
        }
    }

    fn new_attributes(&self) -> Result<Vec<NewAttribute>, OpError> {
        let Some(value) = self.get("attributes") else {
            return Ok(Vec::new());
        };
        let Value::Array(items) = value else {
            return Err(OpError::bad("'attributes' must be an array"));
        };
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            let Value::Object(o) = item else {
                return Err(OpError::bad("each of 'attributes' must be an object"));
            };
            let a = Fields {
                fields: o,
                strict_names: false,
            };
            out.push(NewAttribute {
                name: a.name("name")?,
                ty: a.opt_string("type")?,
                indexed: a.opt_bool("indexed")?,
                primary_key: a.opt_bool("isPrimaryKey")?.unwrap_or(false),
                nullable: a.opt_bool("nullable")?,
            });
        }
        Ok(out)
    }

    /// HarperDB's `get_analytics`: rows of `metric`, with `id` (milliseconds) from `start_time`
    /// up to `end_time`, further `conditions` (either spelling), `get_attributes` (always `id`).
    fn get_analytics(&self) -> Result<SearchByConditions, OpError> {
        let metric = match self.get("metric") {
            Some(Value::String(m)) => m.clone(),
            Some(_) => return Err(OpError::bad("'metric' must be a string")),
            None => {
                return Err(OpError::bad(
                    "Search condition for metric must have a value",
                ))
            }
        };
        let mut conditions = vec![serde_json::json!(
            {"attribute": "metric", "comparator": "equals", "value": metric}
        )];
        match self.get("conditions") {
            None => {}
            Some(Value::Array(items)) => conditions.extend(items.iter().map(to_json)),
            Some(_) => return Err(OpError::bad("'conditions' must be an array")),
        }
        for (key, comparator) in [
            ("start_time", "greater_than_equal"),
            ("end_time", "less_than"),
        ] {
            match self.get(key) {
                None | Some(Value::Null) => {}
                Some(Value::Int(_) | Value::Float(_)) => conditions.push(serde_json::json!(
                    {"attribute": "id", "comparator": comparator, "value": to_json(&self.get(key).cloned().unwrap_or(Value::Null))}
                )),
                Some(_) => {
                    return Err(OpError::bad(format!(
                        "'{key}' must be a number of milliseconds since the epoch"
                    )))
                }
            }
        }
        let filter = crate::query::conditions_from_json(
            &serde_json::Value::Array(conditions),
            crate::query::Logic::And,
        )
        .map_err(|e| OpError::bad(e.message))?;
        let get_attributes = self.get_attributes()?.map(|mut list| {
            if !list.iter().any(|a| a == "id") {
                list.push("id".to_string());
            }
            list
        });
        Ok(SearchByConditions {
            database: "system".to_string(),
            table: crate::resource::analytics::TABLE.to_string(),
            filter,
            sort: Vec::new(),
            get_attributes,
            limit: None,
            offset: 0,
            explain: false,
        })
    }

    fn search_by_conditions(&self) -> Result<SearchByConditions, OpError> {
        let operator = match self.get("operator") {
            None => crate::query::Logic::And,
            Some(Value::String(s)) => crate::query::Logic::from_name(s).ok_or_else(|| {
                OpError::bad(format!("'operator' must be \"and\" or \"or\", not \"{s}\""))
            })?,
            Some(_) => return Err(OpError::bad("'operator' must be \"and\" or \"or\"")),
        };
        let conditions = self
            .get("conditions")
            .ok_or_else(|| OpError::bad("'conditions' is required"))?;
        let filter = crate::query::conditions_from_json(&to_json(conditions), operator)
            .map_err(|e| OpError::bad(e.message))?;
        let sort = match self.get("sort") {
            None => Vec::new(),
            Some(sort) => {
                crate::query::sort_from_json(&to_json(sort)).map_err(|e| OpError::bad(e.message))?
            }
        };
        Ok(SearchByConditions {
            database: self.database()?,
            table: self.name("table")?,
            filter,
            sort,
            get_attributes: self.get_attributes()?,
            limit: self.opt_u64("limit")?,
            offset: self.opt_u64("offset")?.unwrap_or(0),
            explain: self.opt_bool("explain")?.unwrap_or(false),
        })
    }
}

/// docs/operations-api.md's name rule.
pub fn check_name(key: &str, name: &str) -> Result<(), OpError> {
    if name.is_empty() || name.len() > NAME_BYTES_MAX {
        return Err(OpError::bad(format!(
            "'{key}' must be 1 to {NAME_BYTES_MAX} bytes long"
        )));
    }
    if name.chars().any(|c| c == '/' || c == '.' || c.is_control()) {
        return Err(OpError::bad(format!(
            "'{key}' may not contain '/', '.' or control characters"
        )));
    }
    Ok(())
}

/// Our value as JSON, for the shared condition reader (bytes as base64 text, dates as ms).
pub fn to_json(v: &Value) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        Value::Null => J::Null,
        Value::Bool(b) => J::Bool(*b),
        Value::Int(i) => J::from(*i),
        Value::Float(f) | Value::Date(f) => serde_json::Number::from_f64(*f)
            .map(J::Number)
            .unwrap_or(J::Null),
        Value::BigInt(_) | Value::Bytes(_) => {
            let text = crate::value::json::to_vec(v);
            match serde_json::from_slice(&text) {
                Ok(j) => j,
                Err(_) => J::String(String::from_utf8_lossy(&text).into_owned()),
            }
        }
        Value::String(s) => J::String(s.clone()),
        Value::Array(items) => J::Array(items.iter().map(to_json).collect()),
        Value::Object(o) => J::Object(o.iter().map(|(k, v)| (k.to_string(), to_json(v))).collect()),
    }
}

/// JSON (from schema descriptions and the config tree) as our value.
pub fn from_json(v: &serde_json::Value) -> Value {
    use serde_json::Value as J;
    match v {
        J::Null => Value::Null,
        J::Bool(b) => Value::Bool(*b),
        J::Number(n) => match n.as_i64() {
            Some(i) => Value::Int(i),
            None => Value::Float(n.as_f64().unwrap_or(0.0)),
        },
        J::String(s) => Value::String(s.clone()),
        J::Array(items) => Value::Array(items.iter().map(from_json).collect()),
        J::Object(map) => Value::Object(Object::from_entries(
            map.iter().map(|(k, v)| (k.clone(), from_json(v))).collect(),
        )),
    }
}
