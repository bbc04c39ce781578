//! Security (SPEC §5) against the real binary: a permission matrix over REST and the Operations
//! API, a scan of every route and operation without credentials, tokens (expired, foreign,
//! tampered, refresh misuse, rotation), no secrets in the trace log, and `authorizeLocal`.

mod common;

use std::time::Duration;

use base64::Engine;
use common::{Builder, Server, ADMIN_PASSWORD, ADMIN_USER};
use serde_json::{json, Value};

/// One HTTP exchange: status, `WWW-Authenticate`, body text.
fn call(
    method: &str,
    url: &str,
    authorization: Option<&str>,
    body: Option<&Value>,
) -> (u16, Option<String>, String) {
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
    let resp = match result {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{method} {url}: {e}"),
    };
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

/// Roles and users of the matrix; returns (name, Authorization header) per caller.
fn seed(server: &Server) -> Vec<(&'static str, Option<String>)> {
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
            json!({"data": {"tables": {"Dog": {"read": true, "insert": false, "update": false, "delete": false}}}}),
        ),
        (
            "writer",
            json!({"data": {"tables": {"Dog": {"read": false, "insert": true, "update": false, "delete": false}}}}),
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
    let mut callers = vec![("super", Some(admin()))];
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
        callers.push((name, Some(basic(name, &password))));
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
