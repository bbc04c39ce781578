//! The Operations API (SPEC §4): `POST /` with `{"operation": ...}` in JSON, CBOR or MessagePack,
//! answered in the format `Accept` asks for, with CORS on its port (§5.4).
//!
//! This module owns the envelope: body type (415), decoding into a typed [`Operation`]
//! (`decode`), the super-user gate with its 403 body, running the operation (`exec`, through the
//! resource layer only — it never touches `store`), and every error's `{"error": ...}` shape.
//! Configuration, clustering routes and logs are files, handled in `admin`.

mod admin;
mod cluster;
pub mod decode;
mod exec;
pub mod search;

use std::sync::Arc;

use crate::protocol::http::{Method, Request, Response};
use crate::resource::{Caller, Resources, VerbError};
use crate::value::{self, Object, Value};

pub use decode::{decode, BodyType, Operation};

/// A failed operation: the status and its `{"error": ...}` body (§4.1).
#[derive(Debug, Clone, PartialEq)]
pub struct OpError {
    pub status: u16,
    pub message: String,
    /// For 403: `unauthorized_access` and `invalid_schema_items`.
    pub forbidden: Option<(Vec<Value>, Vec<Value>)>,
}

/// A successful operation's answer: a value encoded whole, or a search whose records are encoded
/// into the response as they are read (§4.1 "searches stream a JSON array").
#[derive(Debug, PartialEq)]
pub enum Reply {
    Value(Value),
    Search(Box<search::Prepared>),
}

/// The 403 message of §4.1.
pub const FORBIDDEN_MESSAGE: &str =
    "This operation is not authorized due to role restrictions and/or invalid database items";

impl OpError {
    pub fn new(status: u16, message: impl Into<String>) -> Self {
        OpError {
            status,
            message: message.into(),
            forbidden: None,
        }
    }

    pub fn bad(message: impl Into<String>) -> Self {
        OpError::new(400, message)
    }

    /// 403 with one `unauthorized_access` entry.
    pub fn forbidden(entry: impl Into<String>) -> Self {
        OpError {
            status: 403,
            message: FORBIDDEN_MESSAGE.to_string(),
            forbidden: Some((vec![Value::String(entry.into())], Vec::new())),
        }
    }

    fn body(&self) -> Value {
        let mut o = Object::new();
        o.insert("error", Value::String(self.message.clone()));
        if let Some((unauthorized, invalid)) = &self.forbidden {
            o.insert("unauthorized_access", Value::Array(unauthorized.clone()));
            o.insert("invalid_schema_items", Value::Array(invalid.clone()));
        }
        Value::Object(o)
    }
}

impl From<VerbError> for OpError {
    fn from(e: VerbError) -> Self {
        if e.status == 403 {
            OpError::forbidden(e.message)
        } else {
            OpError::new(e.status, e.message)
        }
    }
}

/// The response encodings, with SPEC §3.5's server weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyType {
    Json,
    Cbor,
    MsgPack,
}

impl ReplyType {
    fn content_type(self) -> &'static str {
        match self {
            ReplyType::Json => "application/json",
            ReplyType::Cbor => "application/cbor",
            ReplyType::MsgPack => "application/x-msgpack",
        }
    }

    /// Picks by client q × server weight; no header or `*/*` → JSON; `None` → 406.
    pub fn negotiate(accept: Option<&str>) -> Option<ReplyType> {
        let Some(accept) = accept.filter(|a| !a.trim().is_empty()) else {
            return Some(ReplyType::Json);
        };
        let mut best: Option<(f64, ReplyType)> = None;
        // Bounded: a header is at most `header_bytes_max` long, each item is looked at once.
        for item in accept.split(',') {
            let mut parts = item.split(';');
            let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            let mut q = 1.0f64;
            for param in parts {
                if let Some(v) = param.trim().strip_prefix("q=") {
                    q = v.trim().parse().unwrap_or(0.0);
                }
            }
            let candidates: &[(ReplyType, f64)] = match media.as_str() {
                "application/json" => &[(ReplyType::Json, 0.8)],
                "application/cbor" => &[(ReplyType::Cbor, 1.0)],
                "application/x-msgpack" | "application/msgpack" => &[(ReplyType::MsgPack, 0.9)],
                // A wildcard keeps JSON the default, as §3.5 says for `*/*`.
                "*/*" | "application/*" => &[(ReplyType::Json, 0.8)],
                _ => &[],
            };
            for (ty, weight) in candidates {
                let score = q * weight;
                if score > 0.0 && best.is_none_or(|(s, _)| score > s) {
                    best = Some((score, *ty));
                }
            }
        }
        best.map(|(_, t)| t)
    }
}

fn encode(value: &Value, ty: ReplyType, resp: &mut Response) {
    resp.header("Content-Type", ty.content_type());
    resp.body.clear();
    match ty {
        ReplyType::Json => value::json::write(value, &mut resp.body),
        ReplyType::Cbor => value::cbor::write(value, &mut resp.body),
        ReplyType::MsgPack => value::msgpack::write(value, &mut resp.body),
    }
}

/// CORS settings of the Operations API port (`operationsApi.network.cors`, `corsAccessList`).
fn cors(resources: &Resources, req: &Request<'_>, resp: &mut Response) {
    if !resources.config.operations_api_cors {
        return;
    }
    let Some(origin) = req.header_str("Origin") else {
        return;
    };
    let allowed = match resources
        .config_tree
        .get("operationsApi.network.corsAccessList")
    {
        Some(serde_yaml::Value::Sequence(list)) => list.iter().any(|v| match v.as_str() {
            Some("*") => true,
            Some(s) => s == origin,
            None => false,
        }),
        _ => true,
    };
    if !allowed || origin.bytes().any(|b| b == b'\r' || b == b'\n') {
        return;
    }
    resp.header("Access-Control-Allow-Origin", origin);
    resp.header("Vary", "Origin");
    if req.method == Method::Options {
        resp.header(
            "Access-Control-Allow-Methods",
            "POST, GET, PUT, DELETE, PATCH, OPTIONS",
        );
        let headers = resources
            .config_tree
            .get("operationsApi.network.corsAccessControlAllowHeaders")
            .or_else(|| {
                resources
                    .config_tree
                    .get("http.corsAccessControlAllowHeaders")
            })
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_else(|| "Accept, Content-Type, Authorization".to_string());
        resp.header("Access-Control-Allow-Headers", &headers);
    }
}

/// Serves one request on the Operations API port.
pub async fn handle(
    resources: &Arc<Resources>,
    caller: &Caller,
    req: &Request<'_>,
    resp: &mut Response,
) {
    cors(resources, req, resp);
    if req.method == Method::Options {
        resp.status = 204;
        return;
    }
    if req.path != "/" {
        resp.json_error(
            404,
            "Not found: the Operations API takes POST / with an operation body",
        );
        return;
    }
    if req.method != Method::Post {
        resp.header("Allow", "POST, OPTIONS");
        resp.json_error(
            405,
            "The Operations API takes POST / with an operation body",
        );
        return;
    }
    let Some(reply_type) = ReplyType::negotiate(req.header_str("Accept")) else {
        resp.text(
            406,
            "Supported response types: application/json, application/cbor, application/x-msgpack",
        );
        return;
    };
    let result = match BodyType::from_content_type(req.header_str("Content-Type")) {
        None => Err(OpError::new(
            415,
            "Unsupported Content-Type: send application/json, application/cbor or application/x-msgpack",
        )),
        Some(body_type) => match decode(body_type, req.body) {
            Ok(op) => run(resources, caller, op).await,
            Err(e) => Err(e),
        },
    };
    // A search runs here, after every await: its read transaction opens and closes inside `write`.
    let result = match result {
        Ok(Reply::Search(search)) => search.write(reply_type, &mut resp.body).map(|()| None),
        Ok(Reply::Value(value)) => Ok(Some(value)),
        Err(e) => Err(e),
    };
    match result {
        Ok(Some(reply)) => {
            resp.status = 200;
            encode(&reply, reply_type, resp);
        }
        Ok(None) => {
            resp.status = 200;
            resp.header("Content-Type", reply_type.content_type());
        }
        Err(e) => {
            resp.status = e.status;
            encode(&e.body(), reply_type, resp);
        }
    }
}

/// Runs a decoded operation for `caller`: the super-user gate, then the operation.
pub async fn run(
    resources: &Arc<Resources>,
    caller: &Caller,
    op: Operation,
) -> Result<Reply, OpError> {
    if op.super_user_only() && !caller.super_user {
        return Err(OpError::forbidden(format!(
            "Operation '{}' is restricted to 'super_user' roles",
            exec::name(&op)
        )));
    }
    let database = match &op {
        Operation::SearchById { database, .. }
        | Operation::DescribeDatabase { database }
        | Operation::DescribeTable { database, .. } => Some(database.as_str()),
        Operation::SearchByValue(s) => Some(s.database.as_str()),
        Operation::SearchByConditions(s) => Some(s.database.as_str()),
        _ => None,
    };
    // SPEC §1.5: only super users read the system database.
    if database == Some(crate::resource::tables::SYSTEM) && !caller.super_user {
        return Err(OpError::forbidden(format!(
            "Operation '{}' on the 'system' database is restricted to 'super_user' roles",
            exec::name(&op)
        )));
    }
    exec::execute(resources, caller, op).await
}

/// A string result as §4.1's `{"message": ...}`.
pub fn message(text: impl Into<String>) -> Value {
    let mut o = Object::new();
    o.insert("message", Value::String(text.into()));
    Value::Object(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Polls a future that must finish without waiting (the refusals below never await).
    fn now<F: std::future::Future>(f: F) -> F::Output {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let mut f = std::pin::pin!(f);
        match f.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(v) => v,
            std::task::Poll::Pending => panic!("expected an immediate answer"),
        }
    }

    fn resources(dir: &std::path::Path) -> Arc<Resources> {
        let store =
            crate::store::Store::open(crate::store::StoreOptions::new(dir), Arc::new(|_| {}))
                .expect("store");
        let tree = crate::config::ConfigTree::defaults();
        let config = crate::config::Config::from_tree(&tree, dir, 1).expect("config");
        let app = crate::schema::load_app(std::path::Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/deploy/app"
        )))
        .expect("example app");
        Arc::new(Resources::new(store, Arc::new(app), Arc::new(config)))
    }

    #[test]
    fn non_super_callers_are_refused_super_user_operations() {
        let dir = tempfile::tempdir().expect("temp");
        let resources = resources(dir.path());
        let caller = Caller {
            username: Some("ann".into()),
            super_user: false,
        };
        for body in [
            r#"{"operation":"add_user","username":"x","password":"y","role":"super_user"}"#,
            r#"{"operation":"create_database","database":"dev"}"#,
            r#"{"operation":"drop_table","database":"dev","table":"t"}"#,
            r#"{"operation":"get_configuration"}"#,
            r#"{"operation":"cluster_status"}"#,
            r#"{"operation":"read_log"}"#,
        ] {
            let op = decode(BodyType::Json, body.as_bytes()).expect("decodes");
            let name = exec::name(&op).to_string();
            let err = now(run(&resources, &caller, op)).expect_err("refused");
            assert_eq!(err.status, 403);
            let body = err.body();
            assert_eq!(
                body.get("unauthorized_access"),
                Some(&Value::Array(vec![Value::String(format!(
                    "Operation '{name}' is restricted to 'super_user' roles"
                ))]))
            );
            assert_eq!(
                body.get("error").and_then(Value::as_str),
                Some(FORBIDDEN_MESSAGE)
            );
        }
        let op = decode(
            BodyType::Json,
            br#"{"operation":"search_by_id","database":"system","table":"hdb_user","ids":["x"]}"#,
        )
        .expect("decodes");
        assert_eq!(
            now(run(&resources, &caller, op)).map_err(|e| e.status),
            Err(403)
        );
        // `user_info` and reads are not super-user operations.
        for body in [
            r#"{"operation":"user_info"}"#,
            r#"{"operation":"describe_all"}"#,
        ] {
            let op = decode(BodyType::Json, body.as_bytes()).expect("decodes");
            assert!(!op.super_user_only(), "{body}");
        }
        resources.store.close();
    }

    fn check_accept(accept: Option<&str>, expected: Option<ReplyType>) {
        assert_eq!(ReplyType::negotiate(accept), expected, "{accept:?}");
    }

    #[test]
    fn accept_negotiation() {
        check_accept(None, Some(ReplyType::Json));
        check_accept(Some("*/*"), Some(ReplyType::Json));
        check_accept(Some("application/cbor"), Some(ReplyType::Cbor));
        check_accept(Some("application/msgpack"), Some(ReplyType::MsgPack));
        check_accept(
            Some("application/json, application/cbor;q=0.5"),
            Some(ReplyType::Json),
        );
        check_accept(
            Some("application/json;q=0.9, application/x-msgpack"),
            Some(ReplyType::MsgPack),
        );
        check_accept(Some("text/html"), None);
        check_accept(Some("application/cbor;q=0"), None);
    }

    fn check_decode(body: &str, expected: Result<Operation, (u16, &str)>) {
        let got = decode(BodyType::Json, body.as_bytes());
        match (got, expected) {
            (Ok(op), Ok(want)) => assert_eq!(op, want, "{body}"),
            (Err(e), Err((status, fragment))) => {
                assert_eq!(e.status, status, "{body}: {}", e.message);
                assert!(e.message.contains(fragment), "{body}: {}", e.message);
            }
            (got, want) => panic!("{body}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn aliases_and_defaults() {
        check_decode(
            r#"{"operation":"describe_table","schema":"dev","table":"dog"}"#,
            Ok(Operation::DescribeTable {
                database: "dev".into(),
                table: "dog".into(),
            }),
        );
        check_decode(
            r#"{"operation":"describe_table","table":"dog"}"#,
            Ok(Operation::DescribeTable {
                database: "data".into(),
                table: "dog".into(),
            }),
        );
        check_decode(
            r#"{"operation":"search_by_hash","table":"t","hash_values":[1,"a"],"get_attributes":["*"]}"#,
            Ok(Operation::SearchById {
                database: "data".into(),
                table: "t".into(),
                ids: vec![Value::Int(1), Value::String("a".into())],
                get_attributes: None,
            }),
        );
        check_decode(
            r#"{"operation":"create_table","table":"t","hash_attribute":"k"}"#,
            Ok(Operation::CreateTable {
                database: "data".into(),
                table: "t".into(),
                primary_key: "k".into(),
                attributes: Vec::new(),
                expiration_s: None,
            }),
        );
        check_decode(
            r#"{"operation":"set_node","hostname":"b"}"#,
            Ok(Operation::Clustering(
                "set_node".into(),
                crate::value::Object::from_entries(vec![
                    ("operation".into(), Value::String("set_node".into())),
                    ("hostname".into(), Value::String("b".into())),
                ]),
            )),
        );
        check_decode(
            r#"{"operation":"drop_role"}"#,
            Err((400, "'id' is required")),
        );
        check_decode(
            r#"{"operation":"search_by_value","table":"t","search_attribute":"a","search_value":"x*"}"#,
            Ok(Operation::SearchByValue(decode::SearchByValue {
                database: "data".into(),
                table: "t".into(),
                attribute: "a".into(),
                value: Value::String("x*".into()),
                get_attributes: None,
                limit: None,
                offset: 0,
                desc: false,
                explain: false,
            })),
        );
        check_decode(
            r#"{"operation":"nope"}"#,
            Err((400, "Operation 'nope' not found")),
        );
        check_decode("{", Err((400, "Invalid JSON.")));
    }
}
