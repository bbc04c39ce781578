//! REST (SPEC §3): `/<Export>/<id>` paths to resource verbs, bodies in and records out.
//!
//! This first cut serves records by id — `GET`/`HEAD`, `PUT`, `DELETE` — and `GET /<Export>` (the
//! description), in JSON; other methods and query strings answer 501 until the REST issue lands.
//! It never touches storage except through `resource`.

use std::sync::Arc;

use crate::protocol::http::{Method, Request, Response};
use crate::resource::{self, Resources, Validation};
use crate::store::{OpResult, PutMode, WriteOp, WriteRequest};
use crate::value::{self, Value};

/// Serves `req` if its first path segment is an export; returns false to let the caller answer
/// (static files, then 404).
pub async fn handle(resources: &Arc<Resources>, req: &Request<'_>, resp: &mut Response) -> bool {
    let path = req.path.strip_prefix('/').unwrap_or(req.path);
    let (export, rest) = match path.find('/') {
        Some(i) => (&path[..i], Some(&path[i + 1..])),
        None => (path, None),
    };
    let export = match crate::util::percent_decode(export) {
        Ok(e) => e,
        Err(_) => return false,
    };
    let Some((db, table)) = resources.export(&export) else {
        return false;
    };
    let raw_id = match rest {
        None => {
            if matches!(req.method, Method::Get | Method::Head) {
                resp.status = 200;
                resp.header("Content-Type", "application/json");
                let desc = serde_json::json!({
                    "records": "./",
                    "name": export,
                    "database": table.def.database,
                    "attributes": table.def.attributes.iter().map(|a| {
                        let mut o = serde_json::json!({"name": a.name, "type": a.ty.name()});
                        if a.primary_key { o["isPrimaryKey"] = true.into(); }
                        if a.indexed { o["indexed"] = true.into(); }
                        o
                    }).collect::<Vec<_>>(),
                });
                resp.body.extend_from_slice(desc.to_string().as_bytes());
            } else {
                resp.header("Allow", "GET, HEAD");
                resp.json_error(
                    405,
                    "Method not allowed on a table; use /<Table>/ or /<Table>/<id>",
                );
            }
            return true;
        }
        Some("") => {
            resp.json_error(
                501,
                "Collection queries are not implemented in this build yet",
            );
            return true;
        }
        Some(id) => id,
    };
    let id_text = match crate::util::percent_decode(raw_id) {
        Ok(s) => s,
        Err((_, why)) => {
            resp.json_error(400, why);
            return true;
        }
    };
    let id = match resource::parse_id(&table.def, &id_text) {
        Ok(id) => id,
        Err(e) => {
            resp.json_error(400, &e);
            return true;
        }
    };
    match req.method {
        Method::Get | Method::Head => {
            let found = resource::with_record(&db, &table, &id, |_, record| {
                value::json::write(record, &mut resp.body);
            });
            match found {
                Ok(Some(())) => {
                    resp.status = 200;
                    resp.header("Content-Type", "application/json");
                }
                Ok(None) => {
                    resp.status = 404;
                }
                Err(e) => resp.json_error(500, &e.to_string()),
            }
        }
        Method::Put => {
            let mut record = match value::json::parse(req.body) {
                Ok(Value::Object(o)) => o,
                Ok(_) => return bad(resp, "Request body must be an object"),
                Err(e) => return bad(resp, &format!("Invalid JSON: {e}")),
            };
            if let Err(e) = resource::validate_record(&table.def, &mut record, Validation::Full) {
                return bad(resp, &e);
            }
            let op = WriteOp::Put {
                table: table.def.table.clone(),
                key: Some(id),
                record: Value::Object(record),
                mode: PutMode::Replace,
                expires_in_s: None,
            };
            match resource::write(
                &db,
                WriteRequest {
                    ops: vec![op],
                    user: None,
                },
            )
            .await
            {
                Ok(_) => resp.status = 204,
                Err(e) => resp.json_error(resource::write_error_status(&e), &e.to_string()),
            }
        }
        Method::Delete => {
            let op = WriteOp::Delete {
                table: table.def.table.clone(),
                key: id,
            };
            match resource::write(
                &db,
                WriteRequest {
                    ops: vec![op],
                    user: None,
                },
            )
            .await
            {
                Ok(out) => {
                    debug_assert!(matches!(
                        out.results.first(),
                        Some(OpResult::Deleted { .. })
                    ));
                    resp.status = 200;
                    resp.header("Content-Type", "application/json");
                    resp.body.extend_from_slice(b"true");
                }
                Err(e) => resp.json_error(resource::write_error_status(&e), &e.to_string()),
            }
        }
        _ => resp.json_error(501, "This method is not implemented in this build yet"),
    }
    true
}

fn bad(resp: &mut Response, message: &str) -> bool {
    resp.json_error(400, message);
    true
}
