//! Clustering operations (docs/operations-api.md): `add_node`/`set_node`, `update_node`, `remove_node`,
//! `configure_cluster`, `cluster_status`, and reconnecting after the route operations rewrote
//! the file. They drive the replication manager; node changes that block (closing a link,
//! writing `hdb_nodes`) run on an admin thread, never on a core.

use super::{message, OpError};
use std::sync::Arc;

use crate::replication::subscriptions::Subscriptions;
use crate::replication::{self, Target};
use crate::resource::{run_blocking, Resources, VerbError};
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
    run_blocking(move || repl.set_routes(&routes))
        .await
        .map_err(VerbError::from)?;
    Ok(())
}

/// The node's name in a body: `hostname`, else HarperDB's `node_name`.
fn hostname_of(f: &Object) -> Option<&Value> {
    f.get("hostname").or_else(|| f.get("node_name"))
}

/// One node of a body: the key it is known by, where to dial it, the URL the answer shows,
/// and its explicit subscriptions (None: every table).
struct NodeSpec {
    key: String,
    target: Target,
    shown: String,
    subs: Option<Subscriptions>,
}

/// The node a body names: `url`, else `hostname`/`node_name` (with `port` if given), else
/// `name`; the key it is known by; the URL the answer shows (as given, or built from the host
/// name, as HarperDB answers); and `subscriptions` (docs/replication.md "Explicit
/// subscriptions").
fn target_of(repl: &replication::Replication, f: &Object) -> Result<NodeSpec, OpError> {
    let subs = Subscriptions::parse(f.get("subscriptions")).map_err(OpError::bad)?;
    let spec = f
        .get("url")
        .or_else(|| hostname_of(f))
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
    let key = match hostname_of(f).and_then(Value::as_str) {
        Some(h) => h.to_string(),
        None => target.host.clone(),
    };
    let shown = match f.get("url").and_then(Value::as_str) {
        Some(url) => url.to_string(),
        None => target.resolved_url(repl.settings.tls_default),
    };
    Ok(NodeSpec {
        key,
        target,
        shown,
        subs,
    })
}

/// Adds or updates one node: dialled, its subscriptions merged and stored with it (a plain
/// thread only: it waits for the commit).
fn add(repl: &Arc<replication::Replication>, spec: NodeSpec) {
    let url = spec.target.url();
    // Stored first, so the first `HELLO` to the node carries them.
    repl.set_subscriptions(&spec.key, &url, spec.subs);
    repl.add_target(spec.key.clone(), spec.target, false);
    // As HarperDB, answer once the node has taken it (or it cannot be reached in time).
    repl.wait_linked(&spec.key, ADD_WAIT);
}

/// How long `add_node` waits for the node to take the link before answering anyway.
const ADD_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

pub async fn run(_r: &Resources, name: &str, f: &Object) -> Result<Value, OpError> {
    let Some(repl) = replication::get() else {
        return Err(OpError::bad(OFF));
    };
    match name {
        "add_node" | "set_node" | "update_node" => {
            let spec = target_of(&repl, f)?;
            let shown = spec.shown.clone();
            run_blocking(move || add(&repl, spec))
                .await
                .map_err(VerbError::from)?;
            Ok(message(if name == "update_node" {
                format!("Successfully updated '{shown}'")
            } else {
                format!("Successfully added '{shown}' to cluster")
            }))
        }
        "remove_node" => {
            let key = ["hostname", "node_name", "name", "url"]
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
            .map_err(VerbError::from)?;
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
            // HarperDB's answer: one entry per connection, named as the request named it.
            let answers: Vec<Value> = targets
                .iter()
                .map(|spec| {
                    let mut o = Object::new();
                    o.insert("node_name", Value::String(spec.key.clone()));
                    o.insert(
                        "response",
                        Value::String(format!("Successfully added '{}' to cluster", spec.shown)),
                    );
                    Value::Object(o)
                })
                .collect();
            // As HarperDB 4.x without NATS: each connection is an `add_node`; nodes not listed
            // stay (docs/operations-api.md).
            run_blocking(move || {
                for spec in targets {
                    add(&repl, spec);
                }
            })
            .await
            .map_err(VerbError::from)?;
            let mut reply = Object::new();
            reply.insert(
                "message",
                Value::String("Configure cluster complete.".into()),
            );
            reply.insert("connections", Value::Array(answers));
            Ok(Value::Object(reply))
        }
        other => Err(OpError::new(
            501,
            format!("Operation '{other}' is not supported by this server"),
        )),
    }
}
