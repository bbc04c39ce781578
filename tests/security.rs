//! Security (docs/security.md) against the real binary: a permission matrix over REST and the Operations
//! API, a scan of every route and operation without credentials, tokens (expired, foreign,
//! tampered, refresh misuse, rotation), no secrets in the trace log, and `authorizeLocal`.
//!
//! The real-time protocols (docs/security.md, docs/security.md, docs/realtime.md): a permission matrix over SSE, WebSocket and
//! MQTT (3.1.1 and 5) for the same callers, and a check that no subscriber ever receives an
//! attribute its role may not read — initial state, live puts and messages, JSON and CBOR.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use base64::Engine;
use common::{mqtt_packet, mqtt_string};
use common::{mqtt_port, Builder, Server, ADMIN_PASSWORD, ADMIN_USER};
use serde_json::{json, Value};
use tungstenite::client::IntoClientRequest;

/// One HTTP exchange: the response, whatever its status.
fn send(
    method: &str,
    url: &str,
    authorization: Option<&str>,
    body: Option<&Value>,
) -> ureq::Response {
    let mut req = ureq::request(method, url).timeout(Duration::from_secs(30));
    if let Some(a) = authorization {
        req = req.set("Authorization", a);
    }
    let result = match body {
        Some(b) => req
            .set("Content-Type", "application/json")
            .send_string(&b.to_string()),
        None => req.call(),
    };
    match result {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{method} {url}: {e}"),
    }
}

/// One HTTP exchange: status, `WWW-Authenticate`, body text.
fn call(
    method: &str,
    url: &str,
    authorization: Option<&str>,
    body: Option<&Value>,
) -> (u16, Option<String>, String) {
    let resp = send(method, url, authorization, body);
    let status = resp.status();
    let www = resp.header("WWW-Authenticate").map(str::to_string);
    (status, www, resp.into_string().unwrap_or_default())
}

fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

fn admin() -> String {
    basic(ADMIN_USER, ADMIN_PASSWORD)
}

fn op(server: &Server, authorization: Option<&str>, body: Value) -> (u16, Value) {
    let (status, _, text) = call("POST", &server.ops_url(), authorization, Some(&body));
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn ok(server: &Server, body: Value) -> Value {
    let (status, reply) = op(server, Some(&admin()), body.clone());
    assert_eq!(status, 200, "{body} → {reply}");
    reply
}

const SECRET: &str = "owner-secret-value";

/// A caller of the matrix: name and credentials (user, password), none for anonymous.
type Who = (&'static str, Option<(String, String)>);

/// Roles and users of the matrix; returns (name, Authorization header) per caller.
fn seed(server: &Server) -> Vec<(&'static str, Option<String>)> {
    seed_users(server)
        .into_iter()
        .map(|(name, creds)| (name, creds.map(|(u, p)| basic(&u, &p))))
        .collect()
}

/// The data, roles and users of the matrix: `reader` reads Dog, `writer` only inserts into
/// Dog, `attrs` reads `name`/`breed` of Dog and not `owner`/`age`; per caller its credentials.
fn seed_users(server: &Server) -> Vec<Who> {
    ok(
        server,
        json!({"operation": "upsert", "database": "data", "table": "Dog", "records": [
            {"id": "d1", "name": "Rex", "breed": "lab", "age": 3, "owner": SECRET},
            {"id": "d2", "name": "Ace", "breed": "pug", "age": 5, "owner": SECRET}]}),
    );
    ok(
        server,
        json!({"operation": "upsert", "database": "dogs", "table": "breed", "records": [
            {"id": 1, "name": "Lab"}]}),
    );
    let roles = [
        (
            "reader",
            json!({"data": {"tables": {"Dog": {"read": true, "insert": false, "update": false, "delete": false, "attribute_permissions": []}}}}),
        ),
        (
            "writer",
            json!({"data": {"tables": {"Dog": {"read": false, "insert": true, "update": false, "delete": false, "attribute_permissions": []}}}}),
        ),
        (
            "attrs",
            json!({"data": {"tables": {"Dog": {"read": true, "insert": true, "update": true, "delete": false,
                "attribute_permissions": [
                    {"attribute_name": "name", "read": true, "insert": true, "update": true},
                    {"attribute_name": "breed", "read": true, "insert": false, "update": false},
                    {"attribute_name": "owner", "read": false, "insert": false, "update": false}]}}}}),
        ),
    ];
    let mut callers: Vec<Who> = vec![(
        "super",
        Some((ADMIN_USER.to_string(), ADMIN_PASSWORD.to_string())),
    )];
    for (name, permission) in roles {
        ok(
            server,
            json!({"operation": "add_role", "role": name, "permission": permission}),
        );
        let password = format!("{name}-Pw-9x");
        ok(
            server,
            json!({"operation": "add_user", "username": name, "password": password, "role": name, "active": true}),
        );
        callers.push((name, Some((name.to_string(), password))));
    }
    callers.push(("anonymous", None));
    callers
}

/// The outcome class of a status, for the matrix: 2 = success, else the status.
fn class(status: u16) -> u16 {
    if (200..300).contains(&status) {
        2
    } else {
        status
    }
}

#[test]
fn permission_matrix_over_rest_and_operations() {
    let server = Builder::new()
        .require_credentials()
        .arg("--LOGGING_LEVEL", "trace")
        .start();
    let callers = seed(&server);
    let url = |p: &str| server.url(p);
    // (method, path, body, expected per caller: super, reader, writer, attrs, anonymous)
    let rest: Vec<(&str, String, Option<Value>, [u16; 5])> = vec![
        ("GET", url("/Dog/d1"), None, [2, 2, 403, 2, 401]),
        ("GET", url("/Dog/?breed=lab"), None, [2, 2, 403, 2, 401]),
        ("GET", url("/Dog"), None, [2, 2, 2, 2, 401]),
        ("GET", url("/Dog/d1.name"), None, [2, 2, 403, 2, 401]),
        ("GET", url("/Dog/d1.owner"), None, [2, 2, 403, 403, 401]),
        ("GET", url("/Dog/?owner=x"), None, [2, 2, 403, 403, 401]),
        (
            "GET",
            url("/Dog/?select(name,owner)"),
            None,
            [2, 2, 403, 403, 401],
        ),
        ("GET", url("/Breed/1"), None, [2, 403, 403, 403, 401]),
        ("GET", url("/openapi"), None, [2, 403, 403, 403, 401]),
        (
            "POST",
            url("/Dog/"),
            Some(json!({"name": "New"})),
            [2, 403, 2, 2, 401],
        ),
        (
            "POST",
            url("/Dog/"),
            Some(json!({"name": "N", "owner": "o"})),
            [2, 403, 2, 403, 401],
        ),
        (
            "PUT",
            url("/Dog/fresh-{c}"),
            Some(json!({"name": "F"})),
            [2, 403, 2, 2, 401],
        ),
        (
            "PUT",
            url("/Dog/d2"),
            Some(json!({"name": "Ace"})),
            [2, 403, 403, 2, 401],
        ),
        (
            "PATCH",
            url("/Dog/d2"),
            Some(json!({"name": "Ace2"})),
            [2, 403, 403, 2, 401],
        ),
        (
            "PATCH",
            url("/Dog/d2"),
            Some(json!({"age": 6})),
            [2, 403, 403, 403, 401],
        ),
        (
            "PATCH",
            url("/Dog/d2"),
            Some(json!({"breed": "x"})),
            [2, 403, 403, 403, 401],
        ),
        ("DELETE", url("/Dog/gone"), None, [2, 403, 403, 403, 401]),
        (
            "DELETE",
            url("/Dog/?name=nobody"),
            None,
            [2, 403, 403, 403, 401],
        ),
        (
            "PUT",
            url("/Breed/2"),
            Some(json!({"name": "B"})),
            [2, 403, 403, 403, 401],
        ),
        ("DELETE", url("/Breed/9"), None, [2, 403, 403, 403, 401]),
    ];
    for (method, path, body, expected) in &rest {
        for (i, (who, auth)) in callers.iter().enumerate() {
            let path = path.replace("{c}", who);
            let (status, www, text) = call(method, &path, auth.as_deref(), body.as_ref());
            assert_eq!(
                class(status),
                expected[i],
                "REST {method} {path} as {who}: {status} {text}"
            );
            if status == 401 {
                assert_eq!(www.as_deref(), Some("Basic"), "{method} {path}");
                assert!(text.contains("Must login"), "{method} {path}: {text}");
            }
            if status == 403 {
                assert!(text.contains("Unauthorized access to resource"), "{text}");
            }
            if !matches!(*who, "super" | "reader") {
                assert!(
                    !text.contains(SECRET),
                    "{method} {path} as {who} leaked: {text}"
                );
            }
            if *who == "attrs" && status == 200 && method == &"GET" {
                assert!(!text.contains("\"owner\""), "{path}: {text}");
                assert!(!text.contains("\"age\""), "{path}: {text}");
            }
        }
    }
    // The attribute-restricted role sees only what it may read.
    let (_, _, text) = call("GET", &url("/Dog/d1"), callers[3].1.as_deref(), None);
    let dog: Value = serde_json::from_str(&text).expect("json");
    assert_eq!(dog, json!({"id": "d1", "name": "Rex", "breed": "lab"}));

    let ops: Vec<(Value, [u16; 5])> = vec![
        (
            json!({"operation": "search_by_id", "table": "Dog", "ids": ["d1", "d2"]}),
            [2, 2, 403, 2, 401],
        ),
        (
            json!({"operation": "search_by_id", "table": "Dog", "ids": ["d1"], "get_attributes": ["owner"]}),
            [2, 2, 403, 403, 401],
        ),
        (
            json!({"operation": "search_by_value", "table": "Dog", "attribute": "breed", "value": "*"}),
            [2, 2, 403, 2, 401],
        ),
        (
            json!({"operation": "search_by_value", "table": "Dog", "attribute": "owner", "value": "*"}),
            [2, 2, 403, 403, 401],
        ),
        (
            json!({"operation": "search_by_conditions", "table": "Dog", "conditions": [
                {"attribute": "owner", "comparator": "equals", "value": SECRET}]}),
            [2, 2, 403, 403, 401],
        ),
        (
            json!({"operation": "insert", "table": "Dog", "records": [{"name": "I"}]}),
            [2, 403, 2, 2, 401],
        ),
        (
            json!({"operation": "insert", "table": "Dog", "records": [{"name": "I", "owner": "o"}]}),
            [2, 403, 2, 403, 401],
        ),
        (
            json!({"operation": "update", "table": "Dog", "records": [{"id": "d1", "name": "Rex"}]}),
            [2, 403, 403, 2, 401],
        ),
        (
            json!({"operation": "upsert", "table": "Dog", "records": [{"id": "d9", "name": "U"}]}),
            [2, 403, 403, 2, 401],
        ),
        (
            json!({"operation": "delete", "table": "Dog", "ids": ["nothing"]}),
            [2, 403, 403, 403, 401],
        ),
        (
            json!({"operation": "search_by_id", "database": "dogs", "table": "breed", "ids": [1]}),
            [2, 403, 403, 403, 401],
        ),
        (
            json!({"operation": "describe_table", "database": "dogs", "table": "breed"}),
            [2, 403, 403, 403, 401],
        ),
        (
            json!({"operation": "describe_table", "table": "Dog"}),
            [2, 2, 2, 2, 401],
        ),
        (json!({"operation": "describe_all"}), [2, 2, 2, 2, 401]),
        (json!({"operation": "user_info"}), [2, 2, 2, 2, 401]),
        (json!({"operation": "list_users"}), [2, 403, 403, 403, 401]),
        (
            json!({"operation": "add_user", "username": "x", "password": "y", "role": "reader"}),
            [2, 403, 403, 403, 401],
        ),
        (
            json!({"operation": "search_by_id", "database": "system", "table": "hdb_user", "ids": ["test_admin"]}),
            [2, 403, 403, 403, 401],
        ),
    ];
    for (body, expected) in &ops {
        for (i, (who, auth)) in callers.iter().enumerate() {
            let (status, reply) = op(&server, auth.as_deref(), body.clone());
            assert_eq!(
                class(status),
                expected[i],
                "ops {body} as {who}: {status} {reply}"
            );
            let text = reply.to_string();
            if status == 401 {
                assert_eq!(reply["error"], "Must login", "{body}");
            }
            if status == 403 {
                assert!(
                    reply["unauthorized_access"].is_array(),
                    "{body} as {who}: {reply}"
                );
            }
            if !matches!(*who, "super" | "reader") {
                assert!(!text.contains(SECRET), "{body} as {who} leaked: {text}");
            }
            if *who != "super" {
                assert!(!text.contains("$sha256$"), "{body} as {who}: {text}");
            }
        }
    }
    // describe_all hides what the role cannot access.
    let (_, all) = op(
        &server,
        callers[1].1.as_deref(),
        json!({"operation": "describe_all"}),
    );
    let dbs: Vec<&String> = all.as_object().expect("object").keys().collect();
    assert_eq!(dbs, vec!["data"], "{all}");
    let tables: Vec<&String> = all["data"].as_object().expect("tables").keys().collect();
    assert_eq!(tables, vec!["Dog"], "{all}");
    // A 403 names the table and the missing right.
    let (_, reply) = op(
        &server,
        callers[1].1.as_deref(),
        json!({"operation": "insert", "table": "Dog", "records": [{"name": "I"}]}),
    );
    assert_eq!(reply["unauthorized_access"][0]["table"], "Dog", "{reply}");
    assert_eq!(
        reply["unauthorized_access"][0]["required_table_permissions"],
        json!(["insert"])
    );

    // Wrong credentials are refused at once, never served as anonymous.
    for auth in [
        basic("reader", "wrong"),
        basic("nobody", "x"),
        "Basic !!!".to_string(),
        "Token abc".to_string(),
    ] {
        let (status, www, text) = call("GET", &url("/Dog/d1"), Some(&auth), None);
        assert_eq!(
            (status, www.as_deref()),
            (401, Some("Basic")),
            "{auth}: {text}"
        );
        assert!(text.contains("Login failed"), "{text}");
        let (status, reply) = op(&server, Some(&auth), json!({"operation": "describe_all"}));
        assert_eq!(
            (status, reply["error"].as_str()),
            (401, Some("Login failed"))
        );
    }
    // Inactive users are refused.
    ok(
        &server,
        json!({"operation": "alter_user", "username": "reader", "active": false}),
    );
    let (status, _, _) = call("GET", &url("/Dog/d1"), callers[1].1.as_deref(), None);
    assert_eq!(status, 401, "inactive user");

    let mut secrets: Vec<String> = vec![ADMIN_PASSWORD.into()];
    secrets.extend(["reader", "writer", "attrs"].map(|n| format!("{n}-Pw-9x")));
    assert_log_clean(&server, &secrets);
}

/// Every operation name the Operations API knows, read from its decoder.
fn operation_names() -> Vec<String> {
    let source = std::fs::read_to_string(common::repo_path("src/protocol/ops/decode.rs"))
        .expect("decode.rs");
    let mut names = Vec::new();
    let start = source
        .find("const CLUSTERING_OPS")
        .expect("operation lists");
    let end = source[start..]
        .find("fn decode_write")
        .map(|e| start + e)
        .expect("end of decode_object");
    for piece in source[start..end].split('"').skip(1).step_by(2) {
        if !piece.is_empty()
            && piece.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
            && !names.iter().any(|n| n == piece)
        {
            names.push(piece.to_string());
        }
    }
    assert!(names.len() > 60, "found only {names:?}");
    names
}

#[test]
fn every_route_and_operation_needs_credentials() {
    let server = Builder::new().require_credentials().start();
    ok(
        &server,
        json!({"operation": "upsert", "table": "Dog", "records": [{"id": "d1", "name": "Rex"}]}),
    );
    let paths = [
        "/Dog",
        "/Dog/",
        "/Dog/d1",
        "/Dog/d1.name",
        "/Dog/d1.json",
        "/Dog/?name=Rex",
        "/Dog/?select(name)&limit(1)",
        "/Dog/?explain",
        "/Breed/1",
        "/Breed/",
        "/Sensor/kitchen",
        "/openapi",
    ];
    for path in paths {
        for method in ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"] {
            let body = (!matches!(method, "GET" | "HEAD" | "DELETE")).then(|| json!({"name": "x"}));
            let (status, www, text) = call(method, &server.url(path), None, body.as_ref());
            assert_eq!(status, 401, "{method} {path}: {text}");
            assert_eq!(www.as_deref(), Some("Basic"), "{method} {path}");
            assert!(!text.contains("Rex"), "{method} {path}: {text}");
        }
    }
    for name in operation_names() {
        let (status, reply) = op(&server, None, json!({"operation": name}));
        assert_eq!(status, 401, "{name}: {reply}");
        assert_eq!(reply["error"], "Must login", "{name}");
        // With plausible fields too, so no operation answers before checking the caller.
        let (status, reply) = op(
            &server,
            None,
            json!({"operation": name, "database": "data", "table": "Dog", "ids": ["d1"],
                   "attribute": "name", "value": "*", "records": [{"id": "d1"}]}),
        );
        assert_eq!(status, 401, "{name} with fields: {reply}");
        assert!(!reply.to_string().contains("Rex"), "{name}: {reply}");
    }
    // The public exceptions.
    let (status, _, _) = call("GET", &server.url("/health"), None, None);
    assert_eq!(status, 200);
    let (status, _, _) = call("GET", &format!("http://{}/health", server.ops), None, None);
    assert_eq!(status, 200);
}

fn tokens(server: &Server, user: &str, password: &str) -> (String, String) {
    let (status, reply) = op(
        server,
        None,
        json!({"operation": "create_authentication_tokens", "username": user, "password": password}),
    );
    assert_eq!(status, 200, "{reply}");
    (
        reply["operation_token"]
            .as_str()
            .expect("operation")
            .to_string(),
        reply["refresh_token"]
            .as_str()
            .expect("refresh")
            .to_string(),
    )
}

#[test]
fn tokens_expire_rotate_and_refuse_misuse() {
    let server = Builder::new()
        .require_credentials()
        .arg("--LOGGING_LEVEL", "trace")
        .start();
    let short = Builder::new()
        .require_credentials()
        .arg("--AUTHENTICATION_OPERATIONTOKENTIMEOUT", "1s")
        .start();
    ok(
        &server,
        json!({"operation": "upsert", "table": "Dog", "records": [{"id": "d1", "name": "Rex"}]}),
    );
    let dog = server.url("/Dog/d1");
    let bearer = |t: &str| format!("Bearer {t}");

    let (status, reply) = op(
        &server,
        None,
        json!({"operation": "create_authentication_tokens", "username": ADMIN_USER, "password": "wrong"}),
    );
    assert_eq!(
        (status, reply["error"].as_str()),
        (401, Some("invalid credentials"))
    );

    let (operation, refresh) = tokens(&server, ADMIN_USER, ADMIN_PASSWORD);
    // The operation token works on REST and the Operations API.
    assert_eq!(call("GET", &dog, Some(&bearer(&operation)), None).0, 200);
    assert_eq!(
        op(
            &server,
            Some(&bearer(&operation)),
            json!({"operation": "describe_all"})
        )
        .0,
        200
    );
    // An authenticated caller may ask for tokens without repeating the password.
    let (status, reply) = op(
        &server,
        Some(&bearer(&operation)),
        json!({"operation": "create_authentication_tokens"}),
    );
    assert_eq!(status, 200, "{reply}");
    let refresh_before = refresh.clone();
    let (operation, refresh) = tokens(&server, ADMIN_USER, ADMIN_PASSWORD);
    let _ = refresh_before;

    // The refresh token is not an operation token, anywhere.
    let (status, _, text) = call("GET", &dog, Some(&bearer(&refresh)), None);
    assert_eq!(status, 401);
    assert!(text.contains("invalid token"), "{text}");
    let (status, reply) = op(
        &server,
        Some(&bearer(&refresh)),
        json!({"operation": "describe_all"}),
    );
    assert_eq!(
        (status, reply["error"].as_str()),
        (401, Some("invalid token"))
    );

    // Tampered: another payload under the same signature.
    let parts: Vec<&str> = operation.split('.').collect();
    let forged_claims = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(
        json!({"username": "test_admin", "super_user": true, "cluster_user": false,
               "iat": 1, "exp": 4_000_000_000u64, "sub": "operation"})
        .to_string(),
    );
    let forged = format!("{}.{forged_claims}.{}", parts[0], parts[2]);
    let (status, _, text) = call("GET", &dog, Some(&bearer(&forged)), None);
    assert_eq!(status, 401);
    assert!(text.contains("invalid token"), "{text}");
    let unsigned = format!("{}.{}.", parts[0], parts[1]);
    assert_eq!(call("GET", &dog, Some(&bearer(&unsigned)), None).0, 401);

    // Signed by another server's key.
    let (foreign, _) = tokens(&short, ADMIN_USER, ADMIN_PASSWORD);
    let (status, _, text) = call("GET", &dog, Some(&bearer(&foreign)), None);
    assert_eq!(status, 401);
    assert!(text.contains("invalid token"), "{text}");

    // Refresh: by body and by Bearer header; the new token works.
    let (status, reply) = op(
        &server,
        None,
        json!({"operation": "refresh_operation_token", "refresh_token": refresh}),
    );
    assert_eq!(status, 200, "{reply}");
    let fresh = reply["operation_token"]
        .as_str()
        .expect("token")
        .to_string();
    assert_eq!(call("GET", &dog, Some(&bearer(&fresh)), None).0, 200);
    let (status, reply) = op(
        &server,
        Some(&bearer(&refresh)),
        json!({"operation": "refresh_operation_token"}),
    );
    assert_eq!(status, 200, "{reply}");
    // An operation token cannot refresh.
    let (status, _) = op(
        &server,
        None,
        json!({"operation": "refresh_operation_token", "refresh_token": operation}),
    );
    assert_eq!(status, 401);

    // New tokens retire the old refresh token.
    let (_, newest) = tokens(&server, ADMIN_USER, ADMIN_PASSWORD);
    let (status, reply) = op(
        &server,
        None,
        json!({"operation": "refresh_operation_token", "refresh_token": refresh}),
    );
    assert_eq!(
        (status, reply["error"].as_str()),
        (401, Some("invalid token"))
    );
    let (status, _) = op(
        &server,
        None,
        json!({"operation": "refresh_operation_token", "refresh_token": newest}),
    );
    assert_eq!(status, 200);

    // Expiry: the short-lived token stops working with "token expired".
    let (short_token, _) = tokens(&short, ADMIN_USER, ADMIN_PASSWORD);
    assert_eq!(
        call(
            "GET",
            &short.url("/Dog/"),
            Some(&bearer(&short_token)),
            None
        )
        .0,
        200
    );
    std::thread::sleep(Duration::from_millis(2200));
    let (status, _, text) = call(
        "GET",
        &short.url("/Dog/"),
        Some(&bearer(&short_token)),
        None,
    );
    assert_eq!(status, 401, "{text}");
    assert!(text.contains("token expired"), "{text}");
    let (status, reply) = op(
        &short,
        Some(&bearer(&short_token)),
        json!({"operation": "describe_all"}),
    );
    assert_eq!(
        (status, reply["error"].as_str()),
        (401, Some("token expired"))
    );

    // Key files exist, the private one readable by the owner only.
    let keys = server.root.path().join("keys");
    let mode = std::fs::metadata(keys.join(".jwtPrivate.key"))
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
        .expect("private key");
    assert_eq!(mode, 0o600);
    assert!(keys.join(".jwtPublic.key").is_file());

    assert_log_clean(
        &server,
        &[
            ADMIN_PASSWORD.to_string(),
            operation,
            refresh,
            fresh,
            newest,
            "wrong".to_string(),
        ],
    );
}

/// No line of `<root>/log/hdb.log` contains any of `secrets` (passwords, tokens, or a token's
/// signature part).
fn assert_log_clean(server: &Server, secrets: &[String]) {
    std::thread::sleep(Duration::from_millis(500));
    let log = std::fs::read_to_string(server.root.path().join("log/hdb.log")).unwrap_or_default();
    assert!(
        log.lines().count() > 3,
        "the trace log should have lines:\n{log}"
    );
    for secret in secrets {
        let needle = secret.rsplit('.').next().unwrap_or(secret);
        // "wrong" is short enough to appear in ordinary words; only check long secrets whole.
        if needle.len() < 8 {
            continue;
        }
        for line in log.lines() {
            assert!(!line.contains(needle), "a secret reached the log: {line}");
        }
    }
}

#[test]
fn authorize_local_makes_loopback_the_super_user() {
    let local = Server::start();
    assert_eq!(call("GET", &local.url("/Dog/"), None, None).0, 200);
    let (status, reply) = op(&local, None, json!({"operation": "user_info"}));
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["username"], ADMIN_USER, "{reply}");
    // Wrong credentials on loopback are still wrong.
    assert_eq!(
        call(
            "GET",
            &local.url("/Dog/"),
            Some(&basic(ADMIN_USER, "nope")),
            None
        )
        .0,
        401
    );

    let strict = Builder::new().require_credentials().start();
    assert_eq!(call("GET", &strict.url("/Dog/"), None, None).0, 401);
    let (status, reply) = op(&strict, None, json!({"operation": "describe_all"}));
    assert_eq!((status, reply["error"].as_str()), (401, Some("Must login")));
    assert_eq!(
        call("GET", &strict.url("/Dog/"), Some(&admin()), None).0,
        200
    );
}

// ---- real-time protocols ----

fn authorization(who: &Who) -> Option<String> {
    who.1.as_ref().map(|(u, p)| basic(u, p))
}

// ---- WebSocket ----

#[derive(Debug, PartialEq)]
enum WsOutcome {
    /// Upgraded and delivering: the first event.
    Event(Value),
    /// Upgraded, then closed with (code, reason).
    Closed(u16, String),
    /// Not upgraded: the status.
    Refused(u16),
}

struct Ws(tungstenite::WebSocket<TcpStream>);

/// Upgrades `path` with the given (optional) headers; the socket, or the refusal's status.
fn ws_handshake(addr: SocketAddr, path: &str, headers: &[(&str, Option<&str>)]) -> Result<Ws, u16> {
    let stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut req = format!("ws://{addr}{path}")
        .into_client_request()
        .expect("request");
    for (name, value) in headers {
        if let Some(v) = value {
            let name = tungstenite::http::HeaderName::from_bytes(name.as_bytes()).expect("name");
            req.headers_mut().insert(name, v.parse().expect("header"));
        }
    }
    match tungstenite::client(req, stream) {
        Ok((ws, _)) => Ok(Ws(ws)),
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(r))) => {
            Err(r.status().as_u16())
        }
        Err(e) => panic!("upgrade {path}: {e}"),
    }
}

fn ws_open(addr: SocketAddr, path: &str, auth: Option<&str>, accept: Option<&str>) -> Ws {
    ws_handshake(addr, path, &[("Authorization", auth), ("Accept", accept)])
        .unwrap_or_else(|status| panic!("upgrade {path} refused with {status}"))
}

impl Ws {
    fn next(&mut self) -> WsOutcome {
        loop {
            match self.0.read() {
                Ok(tungstenite::Message::Text(t)) => {
                    return WsOutcome::Event(serde_json::from_str(t.as_str()).expect("JSON event"))
                }
                Ok(tungstenite::Message::Binary(b)) => {
                    return WsOutcome::Event(ciborium::from_reader(&b[..]).expect("CBOR event"))
                }
                Ok(tungstenite::Message::Close(Some(f))) => {
                    return WsOutcome::Closed(u16::from(f.code), f.reason.to_string())
                }
                Ok(tungstenite::Message::Close(None)) => return WsOutcome::Closed(1005, "".into()),
                Ok(_) => continue,
                Err(e) => panic!("WebSocket read: {e}"),
            }
        }
    }
}

fn ws_outcome(addr: SocketAddr, path: &str, auth: Option<&str>) -> WsOutcome {
    match ws_handshake(addr, path, &[("Authorization", auth)]) {
        Ok(mut ws) => ws.next(),
        Err(status) => WsOutcome::Refused(status),
    }
}

// ---- SSE ----

struct Sse(BufReader<TcpStream>);

/// Opens an event stream: the status line's code and the reader.
fn sse_open(addr: SocketAddr, path: &str, auth: Option<&str>) -> (u16, String, Sse) {
    sse_open_with(addr, path, ("Authorization", auth))
}

/// Opens an event stream with one (optional) extra header.
fn sse_open_with(
    addr: SocketAddr,
    path: &str,
    (name, value): (&str, Option<&str>),
) -> (u16, String, Sse) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let extra = value
        .map(|v| format!("{name}: {v}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n{extra}\r\n"
    )
    .expect("write");
    let mut reader = BufReader::new(stream);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head, Sse(reader))
}

impl Sse {
    /// The next event's data line as JSON.
    fn next(&mut self) -> Value {
        loop {
            let mut line = String::new();
            assert!(
                self.0.read_line(&mut line).expect("read") > 0,
                "stream ended"
            );
            if let Some(d) = line.trim_end().strip_prefix("data: ") {
                return serde_json::from_str(d).expect("JSON data");
            }
        }
    }

    /// A refused stream's body (Content-Length framed).
    fn body(&mut self, head: &str) -> String {
        let len: usize = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse().unwrap_or(0))
            })
            .unwrap_or(0);
        let mut body = vec![0u8; len];
        self.0.read_exact(&mut body).expect("body");
        String::from_utf8_lossy(&body).into_owned()
    }
}

// ---- MQTT (raw packets, for exact reason codes) ----

struct Mqtt {
    stream: TcpStream,
    level: u8,
}

impl Mqtt {
    /// Connects (clean, keep alive 30 s) and returns the client with its CONNACK code.
    fn connect(
        port: SocketAddr,
        level: u8,
        id: &str,
        creds: Option<&(String, String)>,
    ) -> (Mqtt, u8) {
        let stream = TcpStream::connect(port).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut body = mqtt_string("MQTT");
        body.push(level);
        body.push(0x02 | if creds.is_some() { 0xC0 } else { 0 });
        body.extend_from_slice(&30u16.to_be_bytes());
        if level == 5 {
            body.push(0);
        }
        body.extend_from_slice(&mqtt_string(id));
        if let Some((u, p)) = creds {
            body.extend_from_slice(&mqtt_string(u));
            body.extend_from_slice(&mqtt_string(p));
        }
        let mut m = Mqtt { stream, level };
        m.send(&mqtt_packet(0x10, &body));
        let connack = m.packet().expect("CONNACK");
        assert_eq!(connack[0], 0x20, "{connack:02x?}");
        let code = connack[3];
        (m, code)
    }

    fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write");
    }

    /// One whole packet (header included), or None when the connection ended.
    fn packet(&mut self) -> Option<Vec<u8>> {
        common::read_mqtt_packet(&mut self.stream)
    }

    /// The body of the next packet whose type is `kind` (upper nibble), skipping others.
    fn next_of(&mut self, kind: u8) -> Vec<u8> {
        loop {
            let p = self.packet().expect("packet");
            if p[0] >> 4 == kind {
                let mut i = 1;
                while p[i] & 0x80 != 0 {
                    i += 1;
                }
                return p[i + 1..].to_vec();
            }
        }
    }

    /// SUBSCRIBE one filter at QoS 1; the SUBACK reason code.
    fn subscribe(&mut self, packet_id: u16, filter: &str) -> u8 {
        let mut body = packet_id.to_be_bytes().to_vec();
        if self.level == 5 {
            body.push(0);
        }
        body.extend_from_slice(&mqtt_string(filter));
        body.push(1);
        self.send(&mqtt_packet(0x82, &body));
        *self.next_of(9).last().expect("SUBACK code")
    }

    /// PUBLISH at QoS 1; the v5 PUBACK reason code (0 when the PUBACK has none).
    fn publish(&mut self, packet_id: u16, topic: &str, retain: bool, payload: &[u8]) -> u8 {
        let mut body = mqtt_string(topic);
        body.extend_from_slice(&packet_id.to_be_bytes());
        if self.level == 5 {
            body.push(0);
        }
        body.extend_from_slice(payload);
        self.send(&mqtt_packet(0x32 | u8::from(retain), &body));
        let ack = self.next_of(4);
        ack.get(2).copied().unwrap_or(0)
    }

    /// The next PUBLISH from the server: (topic, payload as JSON).
    fn next_publish(&mut self) -> (String, Value) {
        let (first, p) = loop {
            let p = self.packet().expect("PUBLISH");
            if p[0] >> 4 == 3 {
                let mut i = 1;
                while p[i] & 0x80 != 0 {
                    i += 1;
                }
                break (p[0], p[i + 1..].to_vec());
            }
        };
        let tlen = usize::from(u16::from_be_bytes([p[0], p[1]]));
        let topic = String::from_utf8(p[2..2 + tlen].to_vec()).expect("topic");
        let mut i = 2 + tlen;
        if first & 0x06 != 0 {
            i += 2; // packet id
        }
        if self.level == 5 {
            i += 1 + usize::from(p[i]);
        }
        let payload = serde_json::from_slice(&p[i..]).unwrap_or(Value::Null);
        (topic, payload)
    }
}

/// docs/security.md per protocol for each caller: subscribing needs `read` (SSE 401/403, WebSocket
/// upgrade then close 3000/3003, SUBACK 0x87/0x80); an MQTT publish to a record needs `update`,
/// to the bare table `insert` (v5 PUBACK 0x87).
#[test]
fn permission_matrix_over_sse_websocket_and_mqtt() {
    let server = Builder::new().require_credentials().start();
    let port = mqtt_port(&server);
    let callers = seed_users(&server);
    // (path, expected per caller: super, reader, writer, attrs, anonymous) with 2 = streaming.
    let paths: [(&str, [u16; 5]); 3] = [
        ("/Dog/d1", [2, 2, 403, 2, 401]),
        ("/Dog/", [2, 2, 403, 2, 401]),
        ("/Breed/1", [2, 403, 403, 403, 401]),
    ];
    for (path, expected) in paths {
        for (i, who) in callers.iter().enumerate() {
            let auth = authorization(who);
            let name = who.0;
            // SSE: ordinary statuses before streaming.
            let (status, head, mut sse) = sse_open(server.rest, path, auth.as_deref());
            let class = if status == 200 { 2 } else { status };
            assert_eq!(class, expected[i], "SSE {path} as {name}: {head}");
            match status {
                200 => {
                    let event = sse.next();
                    assert_eq!(event["type"], "put", "SSE {path} as {name}");
                }
                401 => {
                    assert!(head.contains("WWW-Authenticate: Basic"), "{head}");
                    assert!(
                        sse.body(&head).contains("Must login"),
                        "SSE {path} as {name}"
                    );
                }
                403 => assert!(
                    sse.body(&head).contains("Unauthorized access to resource"),
                    "SSE {path} as {name}"
                ),
                _ => {}
            }
            // WebSocket: upgrade, then events or a close code (docs/security.md).
            let got = ws_outcome(server.rest, path, auth.as_deref());
            match (expected[i], &got) {
                (2, WsOutcome::Event(e)) => assert_eq!(e["type"], "put", "WS {path} as {name}"),
                (401, WsOutcome::Closed(code, reason)) => {
                    assert_eq!(
                        (*code, reason.as_str()),
                        (3000, "Must login"),
                        "WS {path} as {name}"
                    )
                }
                (403, WsOutcome::Closed(code, _)) => assert_eq!(*code, 3003, "WS {path} as {name}"),
                _ => panic!("WS {path} as {name}: expected {}, got {got:?}", expected[i]),
            }
        }
    }
    // Wrong credentials and an invalid token close with 3000 and their message.
    let bad = basic("reader", "wrong");
    assert_eq!(
        ws_outcome(server.rest, "/Dog/d1", Some(&bad)),
        WsOutcome::Closed(3000, "Login failed".into())
    );
    assert_eq!(
        ws_outcome(server.rest, "/Dog/d1", Some("Bearer not.a.token")),
        WsOutcome::Closed(3000, "invalid token".into())
    );
    let (status, head, _) = sse_open(server.rest, "/Dog/d1", Some(&bad));
    assert_eq!(status, 401, "{head}");
    // An unknown path is still 404 without upgrading, whoever asks.
    assert_eq!(
        ws_outcome(server.rest, "/Nope/1", None),
        WsOutcome::Refused(404)
    );

    // MQTT, both levels: CONNACK, SUBACK and (v5) PUBACK codes.
    // Per caller: (connack v4, connack v5), subscribe Dog/d1, subscribe Breed/1, retained
    // publish {"name"} to the record Dog/p-<caller>, message to the bare Dog; 1 = granted QoS 1,
    // 0 = success.
    let nok = 0x87u8;
    type Row = ((u8, u8), u8, u8, u8, u8);
    let mqtt: [Row; 5] = [
        ((0, 0), 1, 1, 0, 0),
        ((0, 0), 1, nok, nok, nok),
        ((0, 0), nok, nok, nok, 0),
        ((0, 0), 1, nok, 0, 0),
        ((0x05, 0x87), 0, 0, 0, 0),
    ];
    for (i, who) in callers.iter().enumerate() {
        let (connack, sub_dog, sub_breed, put, message) = mqtt[i];
        let name = who.0;
        for level in [4u8, 5] {
            let (mut m, code) =
                Mqtt::connect(port, level, &format!("{name}-{level}"), who.1.as_ref());
            let want = if level == 4 { connack.0 } else { connack.1 };
            assert_eq!(code, want, "CONNACK as {name}, level {level}");
            if code != 0 {
                continue;
            }
            // 3.1.1 has one failure code for SUBACK.
            let sub = |c: u8| if level == 4 && c == nok { 0x80 } else { c };
            assert_eq!(
                m.subscribe(1, "Dog/d1"),
                sub(sub_dog),
                "SUBSCRIBE Dog/d1 as {name}, {level}"
            );
            assert_eq!(
                m.subscribe(2, "Breed/1"),
                sub(sub_breed),
                "SUBSCRIBE Breed/1 as {name}, {level}"
            );
            if level == 5 {
                assert_eq!(
                    m.publish(3, &format!("Dog/p-{name}"), true, br#"{"name":"Ace"}"#),
                    put,
                    "retained PUBLISH Dog/p-{name} as {name}"
                );
                assert_eq!(
                    m.publish(4, "Dog", false, br#"{"name":"hello"}"#),
                    message,
                    "PUBLISH to bare Dog as {name}"
                );
            }
        }
    }
    // Attribute rights hold for retained publishes too (docs/security.md), checked per attribute.
    let (mut m, _) = Mqtt::connect(port, 5, "attrs-w", callers[3].1.as_ref());
    assert_eq!(
        m.publish(5, "Dog/p-attrs", true, br#"{"name":"Ace","owner":"x"}"#),
        nok,
        "owner is not updatable by attrs"
    );
    assert_eq!(
        m.publish(6, "Dog/p-attrs", true, br#"{"name":"Ace","breed":"x"}"#),
        nok,
        "breed is readable, not updatable, by attrs"
    );
    // Exactly the permitted retained publishes wrote their records.
    let written = ok(
        &server,
        json!({"operation": "search_by_value", "table": "Dog", "search_attribute": "name",
               "search_value": "Ace", "get_attributes": ["id"]}),
    );
    let mut ids: Vec<&str> = written
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|r| r["id"].as_str())
        .filter(|id| id.starts_with("p-"))
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, ["p-attrs", "p-super"], "{written}");

    // With requireAuthentication off, anonymous MQTT clients connect but may do nothing.
    let open = Builder::new()
        .require_credentials()
        .arg("--MQTT_REQUIREAUTHENTICATION", "false")
        .start();
    let port = mqtt_port(&open);
    let (mut m, code) = Mqtt::connect(port, 5, "anon", None);
    assert_eq!(code, 0);
    assert_eq!(m.subscribe(1, "Dog/d1"), nok);
    assert_eq!(m.publish(2, "Dog/x", true, br#"{"name":"A"}"#), nok);
    assert_eq!(m.publish(3, "Dog", false, br#"{"name":"A"}"#), nok);
}

fn assert_trimmed(what: &str, value: &Value) {
    let keys: Vec<&str> = value
        .as_object()
        .unwrap_or_else(|| panic!("{what}: not an object: {value}"))
        .keys()
        .map(String::as_str)
        .collect();
    for forbidden in ["owner", "age", "createdAt", "updatedAt"] {
        assert!(
            !keys.contains(&forbidden),
            "{what} leaked {forbidden}: {value}"
        );
    }
    assert!(
        keys.contains(&"name"),
        "{what} lost a readable attribute: {value}"
    );
}

/// docs/security.md/docs/realtime.md: events reach a restricted subscriber trimmed to what it may read — initial
/// state, live puts and messages, on WebSocket (JSON and CBOR), SSE and MQTT — while an
/// unrestricted subscriber of the same record receives every attribute.
#[test]
fn subscriptions_never_leak_forbidden_attributes() {
    let server = Builder::new().require_credentials().start();
    let port = mqtt_port(&server);
    let callers = seed_users(&server);
    let attrs = authorization(&callers[3]);
    let attrs_creds = callers[3].1.clone();
    let admin = basic(ADMIN_USER, ADMIN_PASSWORD);

    let mut ws_json = ws_open(server.rest, "/Dog/d1", attrs.as_deref(), None);
    let mut ws_cbor = ws_open(
        server.rest,
        "/Dog/d1",
        attrs.as_deref(),
        Some("application/cbor"),
    );
    let mut ws_second = ws_open(server.rest, "/Dog/", attrs.as_deref(), None);
    let mut ws_super = ws_open(server.rest, "/Dog/d1", Some(&admin), None);
    let (status, head, mut sse) = sse_open(server.rest, "/Dog/d1", attrs.as_deref());
    assert_eq!(status, 200, "{head}");
    let (mut mqtt, code) = Mqtt::connect(port, 5, "attrs-sub", attrs_creds.as_ref());
    assert_eq!(code, 0);
    assert_eq!(mqtt.subscribe(1, "Dog/d1"), 1);

    // Initial state.
    let value = |o: WsOutcome| match o {
        WsOutcome::Event(e) => e["value"].clone(),
        other => panic!("expected an event, got {other:?}"),
    };
    assert_trimmed("WS JSON initial", &value(ws_json.next()));
    assert_trimmed("WS CBOR initial", &value(ws_cbor.next()));
    for _ in 0..2 {
        assert_trimmed("WS table initial", &value(ws_second.next()));
    }
    assert_eq!(
        value(ws_super.next())["owner"],
        SECRET,
        "the super user sees everything"
    );
    assert_trimmed("SSE initial", &sse.next()["value"]);
    let (topic, retained) = mqtt.next_publish();
    assert_eq!(topic, "Dog/d1");
    assert_trimmed("MQTT retained", &retained);

    // A live put by the super user, then a message carrying the forbidden attribute.
    let r = ureq::put(&server.url("/Dog/d1"))
        .set("Authorization", &admin)
        .set("Content-Type", "application/json")
        .send_string(
            &json!({"name": "Rex2", "breed": "lab", "age": 4, "owner": "new-secret"}).to_string(),
        )
        .expect("PUT");
    assert!(r.status() < 300);
    let (mut publisher, code) = Mqtt::connect(
        port,
        5,
        "admin-pub",
        Some(&(ADMIN_USER.to_string(), ADMIN_PASSWORD.to_string())),
    );
    assert_eq!(code, 0);
    assert_eq!(
        publisher.publish(
            1,
            "Dog/d1",
            false,
            br#"{"name":"hi","owner":"message-secret"}"#
        ),
        0
    );
    for (kind, wanted) in [("put", "Rex2"), ("message", "hi")] {
        let what = |p: &str| format!("{p} live {kind}");
        let e = match ws_json.next() {
            WsOutcome::Event(e) => e,
            other => panic!("{other:?}"),
        };
        assert_eq!(e["type"], kind);
        assert_eq!(e["value"]["name"], wanted);
        assert_trimmed(&what("WS JSON"), &e["value"]);
        assert_trimmed(&what("WS CBOR"), &value(ws_cbor.next()));
        assert_trimmed(&what("WS table"), &value(ws_second.next()));
        let full = value(ws_super.next());
        assert!(
            full["owner"].as_str().is_some_and(|o| o.contains("secret")),
            "super user's {kind}: {full}"
        );
        let e = sse.next();
        assert_eq!(e["type"], kind);
        assert_trimmed(&what("SSE"), &e["value"]);
        let (topic, payload) = mqtt.next_publish();
        assert_eq!(topic, "Dog/d1");
        assert_eq!(payload["name"], wanted);
        assert_trimmed(&what("MQTT"), &payload);
    }
}

// ---- cookie sessions ----

/// curl with a cookie jar: (status, response headers, body).
fn curl_jar(jar: &std::path::Path, args: &[&str]) -> (u16, String, String) {
    let out = std::process::Command::new("curl")
        .args(["-sS", "-D", "-", "-o", "-", "--max-time", "20", "-c"])
        .arg(jar)
        .arg("-b")
        .arg(jar)
        .args(args)
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_string(), body.to_string())
}

/// docs/security.md: `login` answers a session cookie with the SPEC's flags; cookie-only requests then
/// work on REST, the Operations API, SSE and WebSocket, with the user's own permissions; after
/// `logout` the same cookie is refused (401), and a wrong password logs nobody in.
#[test]
fn cookie_sessions_login_then_logout() {
    let server = Builder::new()
        .require_credentials()
        .arg("--LOGGING_LEVEL", "trace")
        .start();
    let callers = seed_users(&server);
    let jar_dir = tempfile::tempdir().expect("temp");
    let jar = jar_dir.path().join("cookies.txt");
    let ops = server.ops_url();
    let json_type = "Content-Type: application/json";
    let login = |user: &str, password: &str| {
        curl_jar(
            &jar,
            &[
                "-H",
                json_type,
                "-d",
                &json!({"operation": "login", "username": user, "password": password}).to_string(),
                &ops,
            ],
        )
    };
    let (status, _, body) = login(ADMIN_USER, "wrong");
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("Login failed"), "{body}");

    let (status, head, body) = login(ADMIN_USER, ADMIN_PASSWORD);
    assert_eq!(status, 200, "{head}{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).expect("json"),
        json!({"message": "Login successful"})
    );
    let cookie_line = head
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
        .unwrap_or_else(|| panic!("no Set-Cookie: {head}"));
    let expected_name = format!(
        "{}-hdb-session=",
        server.ops.to_string().replace(['.', ':'], "_")
    );
    assert!(cookie_line.contains(&expected_name), "{cookie_line}");
    for flag in ["Path=/", "HttpOnly", "Expires=", "SameSite=None", "Secure"] {
        assert!(cookie_line.contains(flag), "{flag} missing: {cookie_line}");
    }
    let value = cookie_line
        .split_once('=')
        .and_then(|(_, v)| v.split(';').next())
        .expect("cookie value")
        .trim()
        .to_string();
    assert!(!value.is_empty() && !value.contains(SECRET));
    let cookie = format!("{}{value}", expected_name);

    // Cookie only (no Authorization): REST on the other port, the Operations API, SSE, WS.
    let (status, _, body) = curl_jar(&jar, &[&server.url("/Dog/d1")]);
    assert_eq!(status, 200, "REST with the session cookie: {body}");
    assert!(
        body.contains(SECRET),
        "the super user reads everything: {body}"
    );
    let (status, _, body) = curl_jar(
        &jar,
        &["-H", json_type, "-d", r#"{"operation":"user_info"}"#, &ops],
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(ADMIN_USER), "{body}");
    let (status, head, mut sse) = sse_open_with(server.rest, "/Dog/d1", ("Cookie", Some(&cookie)));
    assert_eq!(status, 200, "SSE with the cookie: {head}");
    assert_eq!(sse.next()["value"]["owner"], SECRET);
    let mut ws = ws_handshake(server.rest, "/Dog/d1", &[("Cookie", Some(&cookie))])
        .unwrap_or_else(|s| panic!("WS refused {s}"));
    assert!(
        matches!(ws.next(), WsOutcome::Event(_)),
        "WS with the cookie"
    );

    // Cross-origin (docs/security.md): CORS answers allow credentials, so browsers send the cookie.
    let (status, head, _) = curl_jar(
        &jar,
        &[
            "-H",
            "Origin: http://localhost:3000",
            &server.url("/Dog/d1"),
        ],
    );
    assert_eq!(status, 200);
    let head = head.to_ascii_lowercase();
    assert!(
        head.contains("access-control-allow-origin: http://localhost:3000")
            && head.contains("access-control-allow-credentials: true"),
        "{head}"
    );

    // Logout: the jar drops the cookie, and replaying it is refused everywhere.
    let (status, head, body) = curl_jar(
        &jar,
        &["-H", json_type, "-d", r#"{"operation":"logout"}"#, &ops],
    );
    assert_eq!(status, 200, "{head}{body}");
    assert!(body.contains("Logout successful"), "{body}");
    let (status, _, _) = curl_jar(&jar, &[&server.url("/Dog/d1")]);
    assert_eq!(status, 401, "after logout, with the jar");
    let (status, _, body) = curl_jar(
        &jar,
        &["-H", &format!("Cookie: {cookie}"), &server.url("/Dog/d1")],
    );
    assert_eq!(status, 401, "after logout, the old cookie: {body}");
    let (status, head, _) = sse_open_with(server.rest, "/Dog/d1", ("Cookie", Some(&cookie)));
    assert_eq!(status, 401, "SSE after logout: {head}");
    assert_eq!(
        ws_handshake(server.rest, "/Dog/d1", &[("Cookie", Some(&cookie))])
            .map(|mut ws| ws.next())
            .ok(),
        Some(WsOutcome::Closed(3000, "Must login".into()))
    );
    let (status, _, _) = curl_jar(
        &jar,
        &["-H", json_type, "-d", r#"{"operation":"logout"}"#, &ops],
    );
    assert_eq!(status, 401, "logout without a session or credentials");

    // A session carries its user's role: the reader reads Dog but not Breed.
    let (reader, password) = callers[1].1.clone().expect("reader");
    let (status, _, body) = login(&reader, &password);
    assert_eq!(status, 200, "{body}");
    let (status, _, _) = curl_jar(&jar, &[&server.url("/Dog/d1")]);
    assert_eq!(status, 200);
    let (status, _, body) = curl_jar(&jar, &[&server.url("/Breed/1")]);
    assert_eq!(status, 403, "{body}");
    // With sessions off, login is refused and cookies are ignored.
    let off = Builder::new()
        .require_credentials()
        .arg("--AUTHENTICATION_ENABLESESSIONS", "false")
        .start();
    let (status, reply) = op(
        &off,
        None,
        json!({"operation": "login", "username": ADMIN_USER, "password": ADMIN_PASSWORD}),
    );
    assert_eq!(status, 400, "{reply}");
    assert!(
        !off.drain_lines()
            .iter()
            .any(|l| l.contains("enableSessions")),
        "the setting is known"
    );
    // Neither passwords nor session ids reach the trace log.
    assert_log_clean(&server, &[value, ADMIN_PASSWORD.to_string(), password]);
}

// ---- password hashing ----

/// docs/security.md, docs/security.md "Users": argon2id is the default for new passwords; users hashed before
/// with salted SHA-256 still log in, and their hash is upgraded to argon2id at that login — but
/// never over a password `alter_user` changed meanwhile; after switching to `sha256` the
/// argon2id users still log in (Basic and `create_authentication_tokens`).
#[test]
fn argon2id_hashes_and_both_kinds_verify() {
    let restart = |mut server: Server, hash_function: Option<&str>| {
        let root = std::mem::replace(&mut server.root, tempfile::tempdir().expect("temp"));
        drop(server);
        let builder = Builder::new().require_credentials().root(root);
        match hash_function {
            Some(f) => builder.arg("--AUTHENTICATION_HASHFUNCTION", f),
            None => builder,
        }
        .start()
    };
    let server = Builder::new()
        .require_credentials()
        .arg("--AUTHENTICATION_HASHFUNCTION", "sha256")
        .start();
    for i in 0..8 {
        ok(
            &server,
            json!({"operation": "add_user", "username": format!("old{i}"), "password": "Old-pass-1", "role": "super_user", "active": true}),
        );
    }
    let server = restart(server, None);
    ok(
        &server,
        json!({"operation": "add_user", "username": "argo", "password": "Argo-pass-1", "role": "super_user", "active": true}),
    );
    let hash_of = |server: &Server, name: &str| {
        let users = ok(
            server,
            json!({"operation": "search_by_value", "database": "system", "table": "hdb_user",
                   "search_attribute": "username", "search_value": name, "get_attributes": ["*"]}),
        );
        users[0]["password"]
            .as_str()
            .expect("super users see password hashes")
            .to_string()
    };
    assert!(hash_of(&server, "argo").starts_with("$argon2id$"));
    assert!(hash_of(&server, "old0").starts_with("$sha256$"));
    let get = |server: &Server, auth: &str| call("GET", &server.url("/Dog/"), Some(auth), None).0;
    assert_eq!(get(&server, &basic("argo", "Argo-pass-1")), 200);
    assert_eq!(get(&server, &basic("argo", "wrong")), 401);
    // An older sha256 hash still verifies, and the login upgrades it.
    assert_eq!(get(&server, &basic("old0", "Old-pass-1")), 200);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !hash_of(&server, "old0").starts_with("$argon2id$") {
        assert!(Instant::now() < deadline, "old0 was never upgraded");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(get(&server, &basic("old0", "Old-pass-1")), 200);
    let (status, reply) = op(
        &server,
        None,
        json!({"operation": "create_authentication_tokens", "username": "argo", "password": "Argo-pass-1"}),
    );
    assert_eq!(status, 200, "{reply}");

    // A login racing `alter_user`: whichever order they land in, the new password is the one
    // that works afterwards (the upgrade is dropped when the hash changed under it).
    let (rest_url, ops_url) = (server.url("/Dog/"), server.ops_url());
    std::thread::scope(|scope| {
        for i in 1..8 {
            let (rest_url, ops_url) = (&rest_url, &ops_url);
            scope.spawn(move || {
                let name = format!("old{i}");
                let auth = basic(&name, "Old-pass-1");
                let login = scope.spawn(move || call("GET", rest_url, Some(&auth), None).0);
                let alter =
                    json!({"operation": "alter_user", "username": name, "password": "New-pass-2"});
                let (status, _, text) = call("POST", ops_url, Some(&admin()), Some(&alter));
                assert_eq!(status, 200, "{text}");
                // Either order is right: before the change the old password is accepted.
                let login = login.join().expect("login");
                assert!(matches!(login, 200 | 401), "login {login}");
            });
        }
    });
    std::thread::sleep(Duration::from_secs(2)); // let any upgrade thread finish its write
    for i in 1..8 {
        let name = format!("old{i}");
        assert_eq!(get(&server, &basic(&name, "New-pass-2")), 200, "{name}");
        assert_eq!(get(&server, &basic(&name, "Old-pass-1")), 401, "{name}");
    }

    let server = restart(server, Some("sha256"));
    assert_eq!(get(&server, &basic("argo", "Argo-pass-1")), 200);
    assert_eq!(get(&server, &basic("argo", "Argo-pass-2")), 401);
    assert_eq!(get(&server, &basic("old0", "Old-pass-1")), 200);
}

// ---- role files and cluster users ----

/// docs/security.md: the app's `roles.yaml` creates its roles at start and updates them at the next
/// start; a `cluster_user` role user can be created and listed, and may do nothing but replicate
/// (every REST and Operations API request → 403).
#[test]
fn roles_file_and_cluster_user() {
    let app = tempfile::tempdir().expect("app");
    std::fs::write(
        app.path().join("schema.graphql"),
        "type Dog @table @export { id: ID @primaryKey name: String owner: String }\n",
    )
    .expect("schema");
    std::fs::write(
        app.path().join("config.yaml"),
        "rest: true\ngraphqlSchema: {files: schema.graphql}\nroles: {files: roles.yaml}\n",
    )
    .expect("config");
    let roles = |owner_readable: bool| {
        std::fs::write(
            app.path().join("roles.yaml"),
            format!(
                "dog_reader:\n  data:\n    Dog:\n      read: true\n      attributes:\n        name: {{read: true}}\n        owner: {{read: {owner_readable}}}\n"
            ),
        )
        .expect("roles.yaml");
    };
    roles(false);
    let mut server = Builder::new().require_credentials().app(app.path()).start();
    let listed = ok(&server, json!({"operation": "list_roles"}));
    let role = listed
        .as_array()
        .expect("roles")
        .iter()
        .find(|r| r["role"] == "dog_reader")
        .unwrap_or_else(|| panic!("roles.yaml not applied: {listed}"))
        .clone();
    assert_eq!(
        role["permission"]["data"]["tables"]["Dog"]["read"], true,
        "{role}"
    );
    ok(
        &server,
        json!({"operation": "upsert", "table": "Dog", "records": [{"id": "1", "name": "Rex", "owner": SECRET}]}),
    );
    ok(
        &server,
        json!({"operation": "add_user", "username": "fan", "password": "Fan-pass-1", "role": "dog_reader", "active": true}),
    );
    let fan = basic("fan", "Fan-pass-1");
    let (status, _, body) = call("GET", &server.url("/Dog/1"), Some(&fan), None);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("Rex") && !body.contains(SECRET), "{body}");

    // A cluster user: created, listed with its role, refused everything but replication.
    ok(
        &server,
        json!({"operation": "add_user", "username": "peer", "password": "Peer-pass-1", "role": "cluster_user", "active": true}),
    );
    let users = ok(&server, json!({"operation": "list_users"}));
    let peer = users
        .as_array()
        .expect("users")
        .iter()
        .find(|u| u["username"] == "peer")
        .unwrap_or_else(|| panic!("peer not listed: {users}"));
    assert_eq!(peer["role"]["role"], "cluster_user", "{peer}");
    let peer_auth = basic("peer", "Peer-pass-1");
    let (status, _, _) = call("GET", &server.url("/Dog/1"), Some(&peer_auth), None);
    assert_eq!(status, 403);
    let (status, reply) = op(
        &server,
        Some(&peer_auth),
        json!({"operation": "describe_all"}),
    );
    assert!(
        status == 403 || reply.as_object().is_some_and(|o| o.is_empty()),
        "{status} {reply}"
    );
    let (status, _) = op(
        &server,
        Some(&peer_auth),
        json!({"operation": "list_users"}),
    );
    assert_eq!(status, 403);

    // The next start applies the changed file to the existing role.
    roles(true);
    let root = std::mem::replace(&mut server.root, tempfile::tempdir().expect("temp"));
    drop(server);
    let server = Builder::new()
        .require_credentials()
        .app(app.path())
        .root(root)
        .start();
    let (status, _, body) = call("GET", &server.url("/Dog/1"), Some(&fan), None);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(SECRET), "updated role reads owner: {body}");

    // A role file that does not validate stops the start, naming the file and the role.
    std::fs::write(
        app.path().join("roles.yaml"),
        "broken:\n  data:\n    Dog: {read: maybe}\n",
    )
    .expect("roles.yaml");
    let mut cmd = Builder::new()
        .app(app.path())
        .command(tempfile::tempdir().expect("root").path());
    let out = cmd.output().expect("runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("roles.yaml") && stderr.contains("broken"),
        "{stderr}"
    );
}

// ---- failed logins ----

/// Status and `Retry-After` of one request with `authorization`.
fn retry_after(
    method: &str,
    url: &str,
    authorization: &str,
    body: Option<&Value>,
) -> (u16, Option<u64>) {
    let resp = send(method, url, Some(authorization), body);
    let after = resp
        .header("Retry-After")
        .map(|v| v.parse().expect("Retry-After seconds"));
    (resp.status(), after)
}

/// docs/security.md "Failed logins": 31 wrong passwords for one user name from 127.0.0.1 lock out that
/// name from that address only — another user's correct password from the same address is
/// accepted — on every protocol that authenticates (REST, Operations API, `login`, SSE,
/// WebSocket, MQTT CONNECT with 0x97 at v5 and 0x05 at 3.1.1); 429 carries `Retry-After`, and
/// after the window the right password works again.
#[test]
fn failed_logins_lock_out_one_user_name_per_address() {
    // The window is long enough for 31 argon2id checks on a loaded machine; the test then waits
    // it out (`Retry-After`).
    let server = Builder::new()
        .require_credentials()
        .arg("--AUTHENTICATION_FAILEDLOGINWINDOW", "15s")
        .start();
    let port = mqtt_port(&server);
    for name in ["lock_a", "lock_b"] {
        ok(
            &server,
            json!({"operation": "add_user", "username": name, "password": "Right-pass-1", "role": "super_user", "active": true}),
        );
    }
    let (a_ok, a_bad, b_ok) = (
        basic("lock_a", "Right-pass-1"),
        basic("lock_a", "wrong-pass"),
        basic("lock_b", "Right-pass-1"),
    );
    let rest = server.url("/Dog/");
    let mut statuses = Vec::new();
    for _ in 0..31 {
        statuses.push(retry_after("GET", &rest, &a_bad, None).0);
    }
    assert_eq!(&statuses[..30], &[401; 30], "{statuses:?}");
    assert_eq!(statuses[30], 429, "{statuses:?}");

    // Another user from the same address, and the administrator, are not refused.
    assert_eq!(retry_after("GET", &rest, &b_ok, None).0, 200);
    assert_eq!(retry_after("GET", &rest, &admin(), None).0, 200);
    let (_, code) = Mqtt::connect(
        port,
        5,
        "b5",
        Some(&("lock_b".into(), "Right-pass-1".into())),
    );
    assert_eq!(code, 0);

    // The locked-out name is refused even with its right password, on every protocol.
    let (status, after) = retry_after("GET", &rest, &a_ok, None);
    assert_eq!(status, 429);
    let after = after.expect("429 carries Retry-After");
    assert!((1..=15).contains(&after), "Retry-After {after}");
    let tokens = json!({"operation": "create_authentication_tokens", "username": "lock_a", "password": "Right-pass-1"});
    let (status, ops_after) = retry_after("POST", &server.ops_url(), &b_ok, Some(&tokens));
    assert_eq!((status, ops_after.is_some()), (429, true));
    let (status, _) = retry_after(
        "POST",
        &server.ops_url(),
        &a_ok,
        Some(&json!({"operation": "describe_all"})),
    );
    assert_eq!(status, 429);
    let login = json!({"operation": "login", "username": "lock_a", "password": "Right-pass-1"});
    assert_eq!(op(&server, None, login.clone()).0, 429);
    let (status, head, _) = sse_open(server.rest, "/Dog/", Some(&a_ok));
    assert_eq!(status, 429, "{head}");
    assert!(head.to_ascii_lowercase().contains("retry-after:"), "{head}");
    match ws_outcome(server.rest, "/Dog/", Some(&a_ok)) {
        WsOutcome::Closed(3000, reason) => assert!(reason.contains("Too many"), "{reason}"),
        other => panic!("WebSocket: {other:?}"),
    }
    let a_creds = ("lock_a".to_string(), "Right-pass-1".to_string());
    assert_eq!(Mqtt::connect(port, 5, "a5", Some(&a_creds)).1, 0x97);
    assert_eq!(Mqtt::connect(port, 4, "a4", Some(&a_creds)).1, 0x05);

    // After the window the right password works again.
    std::thread::sleep(Duration::from_secs(after));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = retry_after("GET", &rest, &a_ok, None).0;
        if status == 200 {
            break;
        }
        assert_eq!(status, 429);
        assert!(Instant::now() < deadline, "still refused after the window");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(op(&server, None, login).0, 200);
    assert_eq!(Mqtt::connect(port, 5, "a5", Some(&a_creds)).1, 0);
}

/// `authentication.failedLoginLimit: 0` turns the limit off: nothing is ever refused.
#[test]
fn failed_login_limit_zero_never_refuses() {
    let server = Builder::new()
        .require_credentials()
        .arg("--AUTHENTICATION_FAILEDLOGINLIMIT", "0")
        .start();
    let rest = server.url("/Dog/");
    let bad = basic(ADMIN_USER, "wrong-pass");
    for i in 0..40 {
        assert_eq!(retry_after("GET", &rest, &bad, None).0, 401, "attempt {i}");
    }
    assert_eq!(retry_after("GET", &rest, &admin(), None).0, 200);
}

// ---- the first super user ----

/// docs/quickstart.md "Credentials": a generated password is written to
/// `<root>/keys/.initial-admin-password` (mode 0600) and never logged: no file of the log
/// directory, no stderr line and no `read_log` entry contains it. It logs the user in.
#[test]
fn generated_super_user_password_is_never_logged() {
    use std::os::unix::fs::PermissionsExt;
    let server = Builder::new()
        .require_credentials()
        .env("HDB_ADMIN_PASSWORD", "")
        .arg("--LOGGING_LEVEL", "trace")
        .start();
    let path = server.root.path().join("keys/.initial-admin-password");
    let password = std::fs::read_to_string(&path).expect("password file");
    let password = password.trim_end().to_string();
    assert!(password.len() >= 16, "{password:?}");
    let mode = std::fs::metadata(&path)
        .expect("metadata")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    let auth = basic(ADMIN_USER, &password);
    assert_eq!(call("GET", &server.url("/Dog/"), Some(&auth), None).0, 200);
    let (status, log) = op(
        &server,
        Some(&auth),
        json!({"operation": "read_log", "limit": 1000}),
    );
    assert_eq!(status, 200, "{log}");
    assert!(log.to_string().contains("created super user"), "{log}");
    assert!(
        !log.to_string().contains(&password),
        "read_log returned the password"
    );
    std::thread::sleep(Duration::from_millis(500));
    let mut files = 0;
    for entry in std::fs::read_dir(server.root.path().join("log")).expect("log dir") {
        let file = entry.expect("entry").path();
        let bytes = std::fs::read(&file).expect("log file");
        files += 1;
        assert!(
            !String::from_utf8_lossy(&bytes).contains(&password),
            "{} contains the password",
            file.display()
        );
    }
    assert!(files > 0);
    for line in server.drain_lines() {
        assert!(!line.contains(&password), "stderr: {line}");
    }
}

// ---- password checks off the core ----

/// One request on its own connection, answered with `Connection: close`: the status and the
/// `Retry-After` header.
fn raw_get(addr: SocketAddr, path: &str, authorization: Option<&str>) -> (u16, Option<String>) {
    let mut raw = common::Raw::connect(addr);
    let auth = authorization
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    raw.send(
        format!("GET {path} HTTP/1.1\r\nHost: t\r\n{auth}Connection: close\r\n\r\n").as_bytes(),
    );
    let resp = raw.response(false).expect("a response");
    (resp.status, resp.header("Retry-After").map(str::to_string))
}

/// docs/security.md "Password checks": an argon2id check never runs on a core. On one core,
/// ten requests with wrong passwords (argon2id user, failed-login limit off) are in flight —
/// the first one answered proves the others are being checked — when a `GET /health` and a
/// request whose `Authorization` is already cached arrive: both are answered before the last
/// of the ten. Before the pool, the core ran each check itself and answered them after all ten.
#[test]
fn password_checks_do_not_stall_the_core() {
    use std::sync::{Arc, Mutex};
    let server = Builder::new()
        .require_credentials()
        .arg("--cores", "1")
        .arg("--AUTHENTICATION_FAILEDLOGINLIMIT", "0")
        .start();
    ok(
        &server,
        json!({"operation": "add_user", "username": "slow", "password": "Right-pass-1", "role": "super_user", "active": true}),
    );
    // The administrator's header is verified once and cached on the (only) core.
    assert_eq!(raw_get(server.rest, "/Dog/", Some(&admin())).0, 200);

    let done: Arc<Mutex<Vec<(String, u16)>>> = Arc::default();
    let logins: Vec<_> = (0..10)
        .map(|i| {
            let (done, addr) = (done.clone(), server.rest);
            std::thread::spawn(move || {
                let auth = basic("slow", &format!("wrong-pass-{i}"));
                let (status, _) = raw_get(addr, "/Dog/", Some(&auth));
                done.lock()
                    .expect("lock")
                    .push((format!("login {i}"), status));
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while done.lock().expect("lock").is_empty() {
        assert!(Instant::now() < deadline, "no login answered");
        std::thread::sleep(Duration::from_millis(1));
    }
    let (health, _) = raw_get(server.rest, "/health", None);
    done.lock().expect("lock").push(("health".into(), health));
    let (cached, _) = raw_get(server.rest, "/Dog/", Some(&admin()));
    done.lock().expect("lock").push(("cached".into(), cached));
    for t in logins {
        t.join().expect("login thread");
    }
    let order = done.lock().expect("lock").clone();
    assert_eq!(order.len(), 12, "{order:?}");
    let position = |name: &str| order.iter().position(|(n, _)| n == name).expect(name);
    let last_login = order
        .iter()
        .rposition(|(n, _)| n.starts_with("login"))
        .expect("logins");
    assert!(position("health") < last_login, "{order:?}");
    assert!(position("cached") < last_login, "{order:?}");
    for (name, status) in &order {
        let expected = if name.starts_with("login") { 401 } else { 200 };
        assert_eq!(*status, expected, "{name}: {order:?}");
    }
    // The right password still verifies once the checks are done.
    assert_eq!(
        raw_get(server.rest, "/Dog/", Some(&basic("slow", "Right-pass-1"))).0,
        200
    );
}

/// docs/security.md "Password checks": a check's argon2id working area (19 MiB) is given back
/// when the check ends, so the password threads hold none between checks. Before, glibc kept the
/// freed area in each pool thread's arena: four threads that had checked a password held 76 MiB.
#[test]
fn password_checks_give_their_memory_back() {
    let server = Builder::new()
        .require_credentials()
        .arg("--AUTHENTICATION_VERIFYTHREADS", "4")
        .arg("--AUTHENTICATION_FAILEDLOGINLIMIT", "0")
        .start();
    ok(
        &server,
        json!({"operation": "add_user", "username": "slow", "password": "Right-pass-1", "role": "super_user", "active": true}),
    );
    let wrong = |i: usize| {
        let addr = server.rest;
        std::thread::spawn(move || {
            raw_get(addr, "/Dog/", Some(&basic("slow", &format!("bad-{i}")))).0
        })
    };
    assert_eq!(wrong(0).join().expect("login"), 401);
    let before = common::status_bytes(server.pid(), "VmRSS");
    for round in 0..2 {
        let logins: Vec<_> = (1..=4).map(|i| wrong(round * 4 + i)).collect();
        for t in logins {
            assert_eq!(t.join().expect("login"), 401);
        }
    }
    let after = common::status_bytes(server.pid(), "VmRSS");
    assert!(
        after < before + 10 * 1024 * 1024,
        "RSS {before} B before eight checks on four threads, {after} B after"
    );
}

/// A server whose password pool has one thread and no queue, with no failed-login limit.
fn one_password_thread() -> Server {
    Builder::new()
        .require_credentials()
        .arg("--AUTHENTICATION_VERIFYTHREADS", "1")
        .arg("--AUTHENTICATION_VERIFYQUEUE", "0")
        .arg("--AUTHENTICATION_FAILEDLOGINLIMIT", "0")
        .start()
}

/// docs/security.md "Password checks": a user name nobody has costs the same check as a wrong
/// password, so the answer does not tell whether the name exists. Seen from outside by the pool's
/// bound: with one thread and no queue, bursts of logins with unknown names are answered busy
/// (503) where the thread is taken — an unknown name answered without a check never is — and
/// 401 otherwise.
#[test]
fn an_unknown_user_costs_a_password_check() {
    use std::sync::{Arc, Barrier};
    let server = one_password_thread();
    let mut seen = Vec::new();
    for round in 0..8 {
        let barrier = Arc::new(Barrier::new(8));
        let workers: Vec<_> = (0..8)
            .map(|i| {
                let (barrier, rest) = (barrier.clone(), server.rest);
                std::thread::spawn(move || {
                    barrier.wait();
                    raw_get(
                        rest,
                        "/Dog/",
                        Some(&basic(&format!("ghost-{round}-{i}"), "pw")),
                    )
                    .0
                })
            })
            .collect();
        seen.extend(workers.into_iter().map(|w| w.join().expect("worker")));
        if seen.contains(&503) {
            break;
        }
    }
    assert!(
        seen.contains(&503),
        "unknown names never reached the password pool: {seen:?}"
    );
    assert!(
        seen.iter().all(|s| [401, 503].contains(s)),
        "only wrong-credential or busy answers: {seen:?}"
    );
}

/// docs/security.md "Password checks": the password pool's bound holds. With one thread and no
/// queue (`authentication.verifyThreads: 1`, `verifyQueue: 0`), bursts of concurrent checks
/// (wrong passwords of an argon2id user) get, where the thread is taken: REST `503 Server busy`
/// with `Retry-After: 1`, a WebSocket upgrade closed with 1013, MQTT CONNACK 0x89 at v5 and
/// 0x03 at 3.1.1. Every other answer is the ordinary wrong-password one, and once the burst is
/// over the right password verifies.
#[test]
fn a_full_password_pool_answers_busy() {
    use std::sync::{Arc, Barrier};
    let server = one_password_thread();
    let port = mqtt_port(&server);
    ok(
        &server,
        json!({"operation": "add_user", "username": "busy", "password": "Right-pass-1", "role": "super_user", "active": true}),
    );
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Answer {
        Http(u16, Option<u64>),
        Ws(u16),
        Mqtt(u8, u8),
    }
    const BUSY: [Answer; 4] = [
        Answer::Http(503, Some(1)),
        Answer::Ws(1013),
        Answer::Mqtt(5, 0x89),
        Answer::Mqtt(4, 0x03),
    ];
    let mut seen: Vec<Answer> = Vec::new();
    for round in 0..8 {
        let barrier = Arc::new(Barrier::new(16));
        let workers: Vec<_> = (0..16)
            .map(|i| {
                let (barrier, rest) = (barrier.clone(), server.rest);
                let password = format!("wrong-{round}-{i}");
                std::thread::spawn(move || {
                    barrier.wait();
                    let auth = basic("busy", &password);
                    match i % 4 {
                        0 => {
                            let (status, after) = raw_get(rest, "/Dog/", Some(&auth));
                            Answer::Http(status, after.map(|a| a.parse().expect("seconds")))
                        }
                        1 => match ws_outcome(rest, "/Dog/", Some(&auth)) {
                            WsOutcome::Closed(code, _) => Answer::Ws(code),
                            other => panic!("WebSocket: {other:?}"),
                        },
                        level => {
                            let level = if level == 2 { 5 } else { 4 };
                            let creds = ("busy".to_string(), password);
                            let id = format!("c{round}-{i}");
                            Answer::Mqtt(level, Mqtt::connect(port, level, &id, Some(&creds)).1)
                        }
                    }
                })
            })
            .collect();
        for w in workers {
            seen.push(w.join().expect("worker"));
        }
        if BUSY.iter().all(|b| seen.contains(b)) {
            break;
        }
        assert!(round < 7, "not every busy answer in 8 bursts: {seen:?}");
    }
    for a in &seen {
        let wrong_password = [
            Answer::Http(401, None),
            Answer::Ws(3000),
            Answer::Mqtt(5, 0x86),
            Answer::Mqtt(4, 0x04),
        ];
        assert!(
            BUSY.contains(a) || wrong_password.contains(a),
            "unexpected {a:?} in {seen:?}"
        );
    }
    assert_eq!(
        raw_get(server.rest, "/Dog/", Some(&basic("busy", "Right-pass-1"))).0,
        200
    );
}
