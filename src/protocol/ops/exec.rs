//! Carries out a decoded [`Operation`] through the resource layer and shapes its answer as
//! docs/operations-api.md shows it. No store access here: every read and write goes through
//! `resource`.

use std::sync::Arc;

use super::decode::{from_json, CsvFrom, Write, WriteKind};
use super::{admin, cluster, fetch, message, search, OpError, Operation, Reply};
use crate::resource::jobs::{self, CsvSource};
use crate::resource::nosql::{self, PutKind, RecordWrite, WriteSummary};
use crate::resource::tables::{self, AttributeSpec};
use crate::resource::{users, Caller, Resources};
use crate::value::{Object, Value};

/// The operation's name, for messages.
pub fn name(op: &Operation) -> &str {
    match op {
        Operation::Clustering(name, _) | Operation::Unsupported(name) => name,
        other => static_name(other),
    }
}

/// The operation's name as a constant (analytics' `path`): a clustering or unsupported one by
/// its listed name.
pub fn static_name(op: &Operation) -> &'static str {
    match op {
        Operation::DescribeAll => "describe_all",
        Operation::DescribeDatabase { .. } => "describe_database",
        Operation::DescribeTable { .. } => "describe_table",
        Operation::CreateDatabase { .. } => "create_database",
        Operation::DropDatabase { .. } => "drop_database",
        Operation::CreateTable { .. } => "create_table",
        Operation::DropTable { .. } => "drop_table",
        Operation::CreateAttribute { .. } => "create_attribute",
        Operation::DropAttribute { .. } => "drop_attribute",
        Operation::Write(Write::Put(kind, _)) => kind.name(),
        Operation::Write(Write::Delete { .. }) => "delete",
        Operation::SearchById { .. } => "search_by_id",
        Operation::SearchByValue(_) => "search_by_value",
        Operation::SearchByConditions(_) => "search_by_conditions",
        Operation::Transaction { .. } => "transaction",
        Operation::ListRoles => "list_roles",
        Operation::AddRole { .. } => "add_role",
        Operation::AlterRole { .. } => "alter_role",
        Operation::DropRole { .. } => "drop_role",
        Operation::ListUsers => "list_users",
        Operation::UserInfo => "user_info",
        Operation::AddUser { .. } => "add_user",
        Operation::AlterUser { .. } => "alter_user",
        Operation::DropUser { .. } => "drop_user",
        Operation::ClusterStatus => "cluster_status",
        Operation::ClusterSetRoutes { .. } => "cluster_set_routes",
        Operation::ClusterGetRoutes => "cluster_get_routes",
        Operation::ClusterDeleteRoutes { .. } => "cluster_delete_routes",
        Operation::CreateAuthenticationTokens { .. } => "create_authentication_tokens",
        Operation::RefreshOperationToken { .. } => "refresh_operation_token",
        Operation::Clustering(name, _) | Operation::Unsupported(name) => {
            super::decode::listed_name(name)
        }
        Operation::GetAnalytics(_) => "get_analytics",
        Operation::ListMetrics { .. } => "list_metrics",
        Operation::DescribeMetric { .. } => "describe_metric",
        Operation::GetConfiguration => "get_configuration",
        Operation::SetConfiguration { .. } => "set_configuration",
        Operation::SystemInformation { .. } => "system_information",
        Operation::ReadLog(_) => "read_log",
        Operation::ReadAuditLog(_) => "read_audit_log",
        Operation::Sql { .. } => "sql",
        Operation::CsvLoad(load) => match load.from {
            CsvFrom::Data(_) => "csv_data_load",
            CsvFrom::File(_) => "csv_file_load",
            CsvFrom::Url(_) => "csv_url_load",
        },
        Operation::GetJob { .. } => "get_job",
        Operation::SearchJobsByStartDate { .. } => "search_jobs_by_start_date",
        Operation::DeleteRecordsBefore { .. } => "delete_records_before",
        Operation::DeleteAuditLogsBefore { .. } => "delete_audit_logs_before",
        Operation::Restart => "restart",
        Operation::RestartService { .. } => "restart_service",
        Operation::ExportLocal(_) => "export_local",
    }
}

/// HarperDB's `describe_metric` answer: `{attributes: [{name, type}]}`, or `{}` for a metric
/// with no rows.
fn describe_metric(r: &Resources, metric: &str) -> Value {
    let mut o = Object::new();
    if let Some(attributes) = crate::resource::analytics::describe_metric(r, metric) {
        let list = attributes
            .into_iter()
            .map(|(name, ty)| {
                let mut a = Object::new();
                a.insert("name", Value::String(name));
                a.insert("type", Value::from(ty));
                Value::Object(a)
            })
            .collect();
        o.insert("attributes", Value::Array(list));
    }
    Value::Object(o)
}

fn put_kind(kind: WriteKind) -> PutKind {
    match kind {
        WriteKind::Insert => PutKind::Insert,
        WriteKind::Update => PutKind::Update,
        WriteKind::Upsert => PutKind::Upsert,
    }
}

fn record_write(w: Write) -> (String, RecordWrite) {
    match w {
        Write::Put(kind, records) => (
            records.database,
            RecordWrite::Put {
                kind: put_kind(kind),
                table: records.table,
                records: records.records,
            },
        ),
        Write::Delete {
            database,
            table,
            ids,
        } => (database, RecordWrite::Delete { table, ids }),
    }
}

/// Which answer a write gets, kept apart from its records so they can move into the request.
#[derive(Clone, Copy)]
enum Shape {
    Put(PutKind),
    Delete,
}

impl Shape {
    fn of(w: &RecordWrite) -> Shape {
        match w {
            RecordWrite::Put { kind, .. } => Shape::Put(*kind),
            RecordWrite::Delete { .. } => Shape::Delete,
        }
    }
}

/// The docs/operations-api.md answer of one write.
fn write_reply(w: Shape, summary: WriteSummary) -> Value {
    let total = summary.done.len() + summary.skipped.len();
    let done = summary.done.len();
    let mut o = Object::new();
    let (text, done_key) = match w {
        Shape::Put(kind) => match kind {
            PutKind::Insert => (
                format!("inserted {done} of {total} records"),
                "inserted_hashes",
            ),
            PutKind::Update => (
                format!("updated {done} of {total} records"),
                "update_hashes",
            ),
            PutKind::Upsert => (
                format!("upserted {done} of {total} records"),
                "upserted_hashes",
            ),
        },
        Shape::Delete => (
            format!(
                "{done} of {total} {} successfully deleted",
                if total == 1 { "record" } else { "records" }
            ),
            "deleted_hashes",
        ),
    };
    o.insert("message", Value::String(text));
    o.insert(done_key, Value::Array(summary.done));
    if !matches!(w, Shape::Put(PutKind::Upsert)) {
        o.insert("skipped_hashes", Value::Array(summary.skipped));
    }
    // HarperDB 4.7.29 answers every write without `new_attributes` or `txn_time` (asked live,
    // docs/operations-api.md "NoSQL"): clients compare these answers whole.
    Value::Object(o)
}

/// HarperDB's answer to an operation that starts a job.
fn job_started(id: String) -> Value {
    let mut o = Object::new();
    o.insert(
        "message",
        Value::String(format!("Starting job with id {id}")),
    );
    o.insert("job_id", Value::String(id));
    Value::Object(o)
}

/// Carries out `op`: searches that stream their answer here, every other family of operations
/// by its handler.
pub async fn execute(
    resources: &Arc<Resources>,
    caller: &Caller,
    op: Operation,
) -> Result<Reply, OpError> {
    let r: &Resources = resources;
    Ok(Reply::Value(match op {
        // Planned here, run by the envelope straight into the response body.
        Operation::SearchByValue(s) => {
            return search::by_value(r, &s).map(|p| Reply::Search(Box::new(p)))
        }
        Operation::SearchByConditions(s) => {
            return search::by_conditions(r, &s).map(|p| Reply::Search(Box::new(p)))
        }
        Operation::GetAnalytics(s) => {
            return search::analytics(r, &s).map(|p| Reply::Search(Box::new(p)))
        }
        op @ (Operation::DescribeAll
        | Operation::DescribeDatabase { .. }
        | Operation::DescribeTable { .. }
        | Operation::CreateDatabase { .. }
        | Operation::DropDatabase { .. }
        | Operation::CreateTable { .. }
        | Operation::DropTable { .. }
        | Operation::CreateAttribute { .. }
        | Operation::DropAttribute { .. }) => schema_op(resources, caller, op).await?,
        op @ (Operation::Write(_)
        | Operation::Transaction { .. }
        | Operation::SearchById { .. }
        | Operation::Sql { .. }) => data_op(resources, caller, op).await?,
        op @ (Operation::ListRoles
        | Operation::AddRole { .. }
        | Operation::AlterRole { .. }
        | Operation::DropRole { .. }
        | Operation::ListUsers
        | Operation::UserInfo
        | Operation::AddUser { .. }
        | Operation::AlterUser { .. }
        | Operation::DropUser { .. }
        | Operation::CreateAuthenticationTokens { .. }
        | Operation::RefreshOperationToken { .. }) => user_op(resources, caller, op).await?,
        op @ (Operation::CsvLoad(_)
        | Operation::DeleteRecordsBefore { .. }
        | Operation::DeleteAuditLogsBefore { .. }
        | Operation::RestartService { .. }
        | Operation::ExportLocal(_)
        | Operation::GetJob { .. }
        | Operation::SearchJobsByStartDate { .. }) => job_op(resources, caller, op).await?,
        op => admin_op(resources, caller, op).await?,
    }))
}

/// An operation handed to a family's handler that is not of that family (a mistake in
/// [`execute`]'s table, never a client's).
fn misrouted(op: &Operation) -> OpError {
    OpError::new(500, format!("operation '{}' has no handler here", name(op)))
}

/// Databases, tables and attributes.
async fn schema_op(
    resources: &Arc<Resources>,
    _caller: &Caller,
    op: Operation,
) -> Result<Value, OpError> {
    let r: &Resources = resources;
    Ok(match op {
        Operation::DescribeAll => from_json(&tables::describe_all(r)?),
        Operation::DescribeDatabase { database } => {
            from_json(&tables::describe_database(r, &database)?)
        }
        Operation::DescribeTable { database, table } => {
            let (db, t) = r.table(&database, &table).ok_or_else(|| {
                if r.store.database(&database).is_none() {
                    OpError::new(404, format!("database '{database}' does not exist"))
                } else {
                    OpError::new(404, format!("Table '{database}.{table}' does not exist"))
                }
            })?;
            from_json(&tables::describe_table(&db, &t)?)
        }
        Operation::CreateDatabase { database } => {
            message(tables::create_database(r, &database).await?)
        }
        Operation::DropDatabase { database } => message(tables::drop_database(r, &database).await?),
        Operation::CreateTable {
            database,
            table,
            primary_key,
            attributes,
            expiration_s,
        } => {
            let specs: Vec<AttributeSpec> = attributes
                .into_iter()
                .map(|a| AttributeSpec {
                    name: a.name,
                    ty: a.ty,
                    indexed: a.indexed,
                    primary_key: a.primary_key,
                    nullable: a.nullable,
                })
                .collect();
            let def = tables::new_table_def(&database, &table, &primary_key, &specs, expiration_s)?;
            message(tables::create_table(r, def).await?)
        }
        Operation::DropTable { database, table } => {
            message(tables::drop_table(r, &database, &table).await?)
        }
        Operation::CreateAttribute {
            database,
            table,
            attribute,
            indexed,
        } => message(tables::create_attribute(r, &database, &table, &attribute, indexed).await?),
        Operation::DropAttribute {
            database,
            table,
            attribute,
        } => message(tables::drop_attribute(r, &database, &table, &attribute).await?),
        other => return Err(misrouted(&other)),
    })
}

/// Record writes, transactions, searches by id and SQL.
async fn data_op(
    resources: &Arc<Resources>,
    caller: &Caller,
    op: Operation,
) -> Result<Value, OpError> {
    let r: &Resources = resources;
    Ok(match op {
        Operation::Write(w) => {
            let (database, w) = record_write(w);
            let shape = Shape::of(&w);
            let (_, mut summaries) = nosql::write_records(r, caller, &database, vec![w]).await?;
            let summary = summaries.pop().unwrap_or_default();
            write_reply(shape, summary)
        }
        Operation::Transaction {
            database,
            operations,
        } => {
            let writes: Vec<RecordWrite> =
                operations.into_iter().map(|w| record_write(w).1).collect();
            if writes.is_empty() {
                return Err(OpError::bad("'operations' is empty"));
            }
            let shapes: Vec<Shape> = writes.iter().map(Shape::of).collect();
            let (txn_time, summaries) = nosql::write_records(r, caller, &database, writes).await?;
            let results = shapes
                .into_iter()
                .zip(summaries)
                .map(|(w, s)| write_reply(w, s))
                .collect();
            let mut o = Object::new();
            o.insert("message", Value::String("transaction committed".into()));
            o.insert("results", Value::Array(results));
            o.insert("txn_time", Value::Float(txn_time));
            Value::Object(o)
        }
        Operation::SearchById {
            database,
            table,
            ids,
            get_attributes,
        } => Value::Array(nosql::search_by_id(
            r,
            &database,
            &table,
            &ids,
            get_attributes.as_deref(),
        )?),
        Operation::Sql { sql } => crate::resource::sql::execute(r, caller, &sql).await?,
        other => return Err(misrouted(&other)),
    })
}

/// Roles, users and tokens.
async fn user_op(
    resources: &Arc<Resources>,
    caller: &Caller,
    op: Operation,
) -> Result<Value, OpError> {
    let r: &Resources = resources;
    Ok(match op {
        Operation::ListRoles => Value::Array(users::list_roles(r)?),
        Operation::AddRole {
            role,
            id,
            permission,
        } => users::add_role(r, caller, &role, id.as_deref(), permission).await?,
        Operation::AlterRole {
            id,
            role,
            permission,
        } => users::alter_role(r, caller, &id, role.as_deref(), permission).await?,
        Operation::DropRole { id } => message(users::drop_role(r, caller, &id).await?),
        Operation::ListUsers => Value::Array(users::list_users(r)?),
        Operation::UserInfo => users::user_info(r, caller)?,
        Operation::AddUser {
            username,
            password,
            role,
            active,
        } => message(users::add_user(r, caller, &username, &password, &role, active).await?),
        Operation::AlterUser {
            username,
            password,
            role,
            active,
        } => {
            users::alter_user(
                r,
                caller,
                &username,
                password.as_deref(),
                role.as_deref(),
                active,
            )
            .await?
        }
        Operation::DropUser { username } => message(users::drop_user(r, caller, &username).await?),
        Operation::CreateAuthenticationTokens { .. } => {
            super::tokens_reply(resources, caller).await?
        }
        Operation::RefreshOperationToken { .. } => {
            return Err(OpError::new(
                401,
                crate::auth::AuthError::MustLogin.message(),
            ))
        }
        other => return Err(misrouted(&other)),
    })
}

/// Jobs: CSV loads, deletions before a time, exports, and reading jobs.
async fn job_op(
    resources: &Arc<Resources>,
    caller: &Caller,
    op: Operation,
) -> Result<Value, OpError> {
    let r: &Resources = resources;
    Ok(match op {
        Operation::CsvLoad(load) => {
            let source = match load.from {
                CsvFrom::Data(text) => CsvSource::Data(text),
                CsvFrom::File(path) => CsvSource::File(path.into()),
                CsvFrom::Url(url) if url.get(..8).is_some_and(|s| s.eq_ignore_ascii_case("https://")) => {
                    return Err(OpError::new(
                        501,
                        "csv_url_load over https is not supported by this server; use an http:// URL or csv_file_load",
                    ))
                }
                CsvFrom::Url(url) => {
                    let target = url.clone();
                    CsvSource::Url {
                        url,
                        fetch: Box::new(move |bytes_max| fetch::get(&target, bytes_max)),
                    }
                }
            };
            let id = jobs::start_csv_load(
                resources,
                caller,
                jobs::CsvLoad {
                    database: load.database,
                    table: load.table,
                    kind: put_kind(load.action),
                    source,
                },
            )
            .await?;
            job_started(id)
        }
        Operation::DeleteRecordsBefore { table, .. } if table.is_empty() => {
            return Err(OpError::bad("'table' is required"))
        }
        Operation::DeleteRecordsBefore {
            database,
            table,
            before_ms,
        } => job_started(
            jobs::start_delete_before(resources, caller, &database, &table, before_ms).await?,
        ),
        Operation::DeleteAuditLogsBefore {
            database,
            table,
            before_ms,
            job,
        } => job_started(
            jobs::start_delete_audit_before(resources, caller, &database, &table, before_ms, job)
                .await?,
        ),
        Operation::RestartService {
            service,
            replicated,
        } => {
            // docs/operations-api.md "restart_service": the nodes linked now restart too.
            let name = service.clone();
            let peers: Box<dyn FnOnce() + Send> = match crate::replication::get() {
                Some(repl) if replicated => Box::new(move || repl.restart_peers(&name)),
                _ => Box::new(|| {}),
            };
            let (id, message) = jobs::start_restart(resources, caller, &service, peers).await?;
            let mut o = Object::new();
            o.insert("message", Value::String(message));
            o.insert("job_id", Value::String(id));
            Value::Object(o)
        }
        Operation::ExportLocal(export) => {
            job_started(super::export::start(resources, caller, *export).await?)
        }
        Operation::GetJob { id } => jobs::get_job(r, caller, &id)?,
        Operation::SearchJobsByStartDate { from_ms, to_ms } => {
            Value::Array(jobs::search_jobs_by_start_date(r, from_ms, to_ms)?)
        }
        other => return Err(misrouted(&other)),
    })
}

/// Clustering, configuration, system information, logs, restart, and what is not served.
async fn admin_op(
    resources: &Arc<Resources>,
    _caller: &Caller,
    op: Operation,
) -> Result<Value, OpError> {
    let r: &Resources = resources;
    Ok(match op {
        Operation::ClusterStatus => cluster::status(),
        Operation::ClusterSetRoutes { routes } => {
            let answer = admin::set_routes(r, routes).await?;
            cluster::reconnect_routes(r).await?;
            answer
        }
        Operation::ClusterGetRoutes => admin::get_routes(r).await?,
        Operation::ClusterDeleteRoutes { routes } => {
            let answer = admin::delete_routes(r, routes).await?;
            cluster::reconnect_routes(r).await?;
            answer
        }
        Operation::Clustering(name, fields) => cluster::run(r, &name, &fields).await?,
        Operation::GetConfiguration => admin::get_configuration(r).await?,
        Operation::SetConfiguration { settings } => admin::set_configuration(r, settings).await?,
        Operation::SystemInformation { attributes } => {
            admin::system_information(r, attributes.as_deref()).await
        }
        Operation::ReadLog(q) => admin::read_log(r, q).await?,
        // Both scan stored rows: on their own thread, not the core.
        Operation::ListMetrics { builtin, custom } => {
            let resources = resources.clone();
            crate::resource::run_blocking(move || {
                let names = crate::resource::analytics::list_metrics(&resources, builtin, custom);
                Value::Array(names.into_iter().map(Value::String).collect())
            })
            .await
            .map_err(crate::resource::VerbError::from)?
        }
        Operation::DescribeMetric { metric } => {
            let resources = resources.clone();
            crate::resource::run_blocking(move || describe_metric(&resources, &metric))
                .await
                .map_err(crate::resource::VerbError::from)?
        }
        Operation::ReadAuditLog(q) => admin::read_audit_log(r, &q)?,
        Operation::Restart => {
            crate::resource::request_restart()?;
            // HarperDB's words: its clients and test collections match on them.
            super::message("Restarting HarperDB. This may take up to 60 seconds.")
        }
        Operation::Unsupported(name) => {
            let text = match name.as_str() {
                "login" | "logout" => format!(
                    "Operation '{name}' is not supported by this server yet: cookie sessions are not implemented"
                ),
                _ => format!("Operation '{name}' is not supported by this server"),
            };
            return Err(OpError::new(501, text));
        }

        other => return Err(misrouted(&other)),
    })
}
