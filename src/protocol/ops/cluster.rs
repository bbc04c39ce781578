//! Clustering operations (docs/operations-api.md): `add_node`/`set_node`, `update_node`, `remove_node`,
//! `configure_cluster`, `cluster_status`, and reconnecting after the route operations rewrote
//! the file. They drive the replication manager; node changes that block (closing a link,
//! writing `hdb_nodes`) run on an admin thread, never on a core.

use super::{message, OpError};
use crate::replication::{self, Target};
use crate::resource::{run_blocking, Resources};
use crate::value::{Object, Value};

const OFF: &str = "Clustering must be enabled to perform this operation.";

/// `cluster_status`: the manager's view, or docs/replication.md's "off" shape.
pub fn status() -> Value {
    match replication::get() {
        Some(repl) => repl.cluster_status(),
        None => super::admin::cluster_status(),
    }
}

/// After `cluster_set_routes`/`cluster_delete_routes`: connect to new routes and drop removed
/// ones at once.
pub async fn reconnect_routes(r: &Resources) -> Result<(), OpError> {
    let Some(repl) = replication::get() else {
        return Ok(());
    };
    let Value::Array(routes) = super::admin::get_routes(r).await? else {
        return Ok(());
    };
    run_blocking(move || repl.set_routes(&routes)).await;
    Ok(())
}

/// The node a body names: `url`, else `hostname` (with `port` if given), else `name`.
fn target_of(repl: &replication::Replication, f: &Object) -> Result<(String, Target), OpError> {
    let spec = f
        .get("url")
        .or_else(|| f.get("hostname"))
        .or_else(|| f.get("name"))
        .ok_or_else(|| OpError::bad("'hostname' or 'url' is required"))?;
    let mut target = match (spec, f.get("port")) {
        (Value::String(h), Some(port)) if f.get("url").is_none() => {
            let mut o = Object::new();
            o.insert("hostname", Value::String(h.clone()));
            o.insert("port", port.clone());
            Target::parse(&Value::Object(o), repl.settings.port_default)
        }
        (v, _) => Target::parse(v, repl.settings.port_default),
    }
    .ok_or_else(|| OpError::bad("'hostname' or 'url' is not a valid node address"))?;
    // `verify_tls`, `authorization` and `retain_authorization` as on a configured route.
    target.apply_options(f);
    if let Some(t) = f.get("start_time") {
        target.start_time = Some(
            replication::parse_time(t)
                .ok_or_else(|| OpError::bad("'start_time' must be an ISO-8601 date"))?,
        );
    }
    let key = match f.get("hostname").and_then(Value::as_str) {
        Some(h) => h.to_string(),
        None => target.host.clone(),
    };
    Ok((key, target))
}

pub async fn run(_r: &Resources, name: &str, f: &Object) -> Result<Value, OpError> {
    let Some(repl) = replication::get() else {
        return Err(OpError::bad(OFF));
    };
    match name {
        "add_node" | "set_node" | "update_node" => {
            let (key, target) = target_of(&repl, f)?;
            let url = target.url();
            let shown = key.clone();
            run_blocking(move || {
                repl.add_target(key.clone(), target, false);
                repl.store_node(&key, &url);
            })
            .await;
            Ok(message(if name == "update_node" {
                format!("Successfully updated '{shown}'")
            } else {
                format!("Successfully added '{shown}' to cluster")
            }))
        }
        "remove_node" => {
            let key = ["hostname", "name", "url"]
                .iter()
                .find_map(|k| f.get(k).and_then(Value::as_str))
                .ok_or_else(|| OpError::bad("'hostname' is required"))?
                .to_string();
            let shown = key.clone();
            let known = run_blocking(move || {
                let known = repl.remove_node(&key);
                repl.forget_node(&key);
                known
            })
            .await
            .unwrap_or(false);
            if !known {
                return Err(OpError::new(404, format!("Node '{shown}' was not found")));
            }
            Ok(message(format!(
                "Successfully removed '{shown}' from cluster"
            )))
        }
        "configure_cluster" => {
            let Some(Value::Array(connections)) = f.get("connections") else {
                return Err(OpError::bad("'connections' must be an array"));
            };
            // All or nothing: every entry must name a node before anything changes.
            let mut targets = Vec::with_capacity(connections.len());
            for c in connections {
                let Value::Object(o) = c else {
                    return Err(OpError::bad("each connection must be an object"));
                };
                targets.push(target_of(&repl, o)?);
            }
            run_blocking(move || {
                for (key, _, _) in repl.added_nodes() {
                    repl.remove_node(&key);
                    repl.forget_node(&key);
                }
                for (key, target) in targets {
                    let url = target.url();
                    repl.add_target(key.clone(), target, false);
                    repl.store_node(&key, &url);
                }
            })
            .await;
            Ok(message("Cluster successfully configured."))
        }
        other => Err(OpError::new(
            501,
            format!("Operation '{other}' is not supported by this server"),
        )),
    }
}
