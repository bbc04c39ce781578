//! Preconditions checked by the writer inside its transaction (docs/design.md, "Preconditions"):
//! concurrent `If-Match` writes, concurrent creates of one id, insert-vs-update rights decided
//! against the committed record, and the caller's name in the audit log for REST, MQTT and the
//! Operations API. The real binary, real HTTP (ureq) and MQTT (rumqttc) clients.

mod common;

use std::sync::{Arc, Barrier};
use std::time::Duration;

use base64::Engine as _;
use common::Server;
use serde_json::{json, Value};

const SCHEMA: &str = r#"
type Dog @table @export {
  id: ID @primaryKey
  name: String
  n: Int
}
"#;

const PASSWORD: &str = "Pw-for-tests-1";

/// Rounds of each race (about 2 s for 1,000 on two cores in a debug build).
const ROUNDS: usize = 1000;

fn start() -> (Server, tempfile::TempDir) {
    common::start_schema_app(SCHEMA)
}

fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// One HTTP request; (status, ETag header, body).
fn call(
    agent: &ureq::Agent,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&Value>,
) -> (u16, Option<String>, String) {
    let mut req = agent.request(method, url).timeout(Duration::from_secs(30));
    for (k, v) in headers {
        req = req.set(k, v);
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
    let etag = resp.header("etag").map(str::to_string);
    (status, etag, resp.into_string().unwrap_or_default())
}

fn op(server: &Server, auth: &str, body: Value) -> (u16, Value) {
    let agent = ureq::agent();
    let (status, _, text) = call(
        &agent,
        "POST",
        &server.ops_url(),
        &[("Authorization", auth)],
        Some(&body),
    );
    let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, v)
}

fn admin() -> String {
    basic(common::ADMIN_USER, common::ADMIN_PASSWORD)
}

/// A role with these rights on `data.Dog`, and a user of the same name holding it.
fn user_with_rights(server: &Server, name: &str, insert: bool, update: bool) {
    let dog = json!({"read": true, "insert": insert, "update": update, "delete": false,
        "attribute_permissions": []});
    let (status, body) = op(
        server,
        &admin(),
        json!({"operation": "add_role", "role": name,
            "permission": {"data": {"tables": {"Dog": dog}}}}),
    );
    assert_eq!(status, 200, "{body}");
    let (status, body) = op(
        server,
        &admin(),
        json!({"operation": "add_user", "username": name, "password": PASSWORD,
            "role": name, "active": true}),
    );
    assert_eq!(status, 200, "{body}");
}

/// Runs `a` and `b` at once (released together by a barrier) and returns both results.
fn race<T: Send + 'static>(
    a: impl FnOnce() -> T + Send + 'static,
    b: impl FnOnce() -> T + Send + 'static,
) -> (T, T) {
    let gate = Arc::new(Barrier::new(2));
    let g = gate.clone();
    let first = std::thread::spawn(move || {
        g.wait();
        a()
    });
    gate.wait();
    let second = b();
    (first.join().expect("racing thread"), second)
}

#[test]
fn if_match_race_has_exactly_one_winner() {
    let (server, _app) = start();
    let url = server.url("/Dog/race");
    let setup = ureq::agent();
    let (status, _, _) = call(
        &setup,
        "PUT",
        &url,
        &[],
        Some(&json!({"name": "start", "n": -1})),
    );
    assert_eq!(status, 204);
    let agents = (ureq::agent(), ureq::agent());
    for round in 0..ROUNDS {
        let (status, etag, _) = call(&setup, "GET", &url, &[], None);
        assert_eq!(status, 200);
        let etag = etag.expect("GET answers an ETag");
        let put = |agent: ureq::Agent, name: &'static str| {
            let (url, etag) = (url.clone(), etag.clone());
            move || {
                let body = json!({"name": name, "n": round});
                call(&agent, "PUT", &url, &[("If-Match", &etag)], Some(&body)).0
            }
        };
        let (a, b) = race(put(agents.0.clone(), "a"), put(agents.1.clone(), "b"));
        let mut statuses = [a, b];
        statuses.sort_unstable();
        assert_eq!(
            statuses,
            [204, 412],
            "round {round}: both answered {a}, {b}"
        );
        // The winner's record is what is stored.
        let (_, _, body) = call(&setup, "GET", &url, &[], None);
        let stored: Value = serde_json::from_str(&body).unwrap();
        let winner = if a == 204 { "a" } else { "b" };
        assert_eq!(stored["name"], winner, "round {round}");
        assert_eq!(stored["n"], round, "round {round}");
    }
    // A stale ETag on DELETE is refused too, and the record stays.
    let (_, etag, _) = call(&setup, "GET", &url, &[], None);
    let etag = etag.unwrap();
    call(&setup, "PUT", &url, &[], Some(&json!({"name": "later"})));
    let (status, _, _) = call(&setup, "DELETE", &url, &[("If-Match", &etag)], None);
    assert_eq!(status, 412);
    assert_eq!(call(&setup, "GET", &url, &[], None).0, 200);
    // `If-Match: *` on an absent record: 412, nothing created.
    let absent = server.url("/Dog/absent");
    let (status, _, _) = call(
        &setup,
        "PUT",
        &absent,
        &[("If-Match", "*")],
        Some(&json!({})),
    );
    assert_eq!(status, 412);
    assert_eq!(call(&setup, "GET", &absent, &[], None).0, 404);
}

#[test]
fn concurrent_creates_never_overwrite() {
    let (server, _app) = start();
    for round in 0..ROUNDS / 4 {
        // REST POST with the id in the body: one 201, one 409, the winner's record stored.
        let id = format!("post{round}");
        let post = |name: &'static str| {
            let (url, id) = (server.url("/Dog/"), id.clone());
            move || {
                call(
                    &ureq::agent(),
                    "POST",
                    &url,
                    &[],
                    Some(&json!({"id": id, "name": name})),
                )
                .0
            }
        };
        let (a, b) = race(post("a"), post("b"));
        let mut statuses = [a, b];
        statuses.sort_unstable();
        assert_eq!(statuses, [201, 409], "round {round}");
        assert_eq!(
            stored_name(&server, &id),
            if a == 201 { "a" } else { "b" },
            "round {round}"
        );

        // Operations API `insert`: one inserts, the other skips the id (HarperDB's answer).
        let id = format!("ins{round}");
        let insert = |name: &'static str| {
            let (url, id, auth) = (server.ops_url(), id.clone(), admin());
            move || {
                let body = json!({"operation": "insert", "table": "Dog", "database": "data",
                    "records": [{"id": id, "name": name}]});
                let (status, _, text) = call(
                    &ureq::agent(),
                    "POST",
                    &url,
                    &[("Authorization", &auth)],
                    Some(&body),
                );
                assert_eq!(status, 200, "{text}");
                serde_json::from_str::<Value>(&text).unwrap()
            }
        };
        let (a, b) = race(insert("a"), insert("b"));
        let inserted = |r: &Value| r["inserted_hashes"].as_array().map_or(0, Vec::len);
        let skipped = |r: &Value| r["skipped_hashes"].as_array().map_or(0, Vec::len);
        assert_eq!(inserted(&a) + inserted(&b), 1, "round {round}: {a} {b}");
        assert_eq!(skipped(&a) + skipped(&b), 1, "round {round}: {a} {b}");
        assert_eq!(
            stored_name(&server, &id),
            if inserted(&a) == 1 { "a" } else { "b" },
            "round {round}"
        );
    }
}

#[test]
fn insert_and_update_rights_are_decided_at_commit() {
    let (server, _app) = start();
    user_with_rights(&server, "inserter", true, false);
    user_with_rights(&server, "updater", false, true);
    let agent = ureq::agent();
    let as_user = |user: &str, method: &str, id: &str, body: Value| {
        let auth = basic(user, PASSWORD);
        call(
            &agent,
            method,
            &server.url(&format!("/Dog/{id}")),
            &[("Authorization", &auth)],
            Some(&body),
        )
        .0
    };
    // insert only: may create, may not change an existing record.
    assert_eq!(
        as_user("inserter", "PUT", "r1", json!({"name": "new"})),
        204
    );
    assert_eq!(
        as_user("inserter", "PUT", "r1", json!({"name": "again"})),
        403
    );
    assert_eq!(
        as_user("inserter", "PATCH", "r1", json!({"name": "again"})),
        403
    );
    // update only: may change an existing record, may not create one.
    assert_eq!(as_user("updater", "PUT", "r2", json!({"name": "new"})), 403);
    assert_eq!(
        as_user("updater", "PUT", "r1", json!({"name": "changed"})),
        204
    );
    let (_, _, body) = call(&agent, "GET", &server.url("/Dog/r1"), &[], None);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["name"],
        "changed"
    );
    assert_eq!(
        call(&agent, "GET", &server.url("/Dog/r2"), &[], None).0,
        404
    );

    // Racing the super user to create the same id: the inserter's PUT succeeds exactly when it
    // created the record, as the audit log's order shows.
    for round in 0..ROUNDS / 4 {
        let id = format!("c{round}");
        let put = |auth: String, name: &'static str| {
            let url = server.url(&format!("/Dog/{id}"));
            move || {
                call(
                    &ureq::agent(),
                    "PUT",
                    &url,
                    &[("Authorization", &auth)],
                    Some(&json!({"name": name})),
                )
                .0
            }
        };
        let (mine, theirs) = race(
            put(basic("inserter", PASSWORD), "inserter"),
            put(admin(), "admin"),
        );
        assert_eq!(theirs, 204, "round {round}");
        let users = audit_users(&server, &id);
        match mine {
            204 => assert_eq!(users, ["inserter", common::ADMIN_USER], "round {round}"),
            403 => assert_eq!(users, [common::ADMIN_USER], "round {round}"),
            other => panic!("round {round}: inserter answered {other}"),
        }
    }
}

#[test]
fn writes_are_audited_with_the_callers_name() {
    let (server, _app) = start();
    user_with_rights(&server, "writer", true, true);
    let auth = basic("writer", PASSWORD);
    // REST
    let (status, _, _) = call(
        &ureq::agent(),
        "PUT",
        &server.url("/Dog/rest1"),
        &[("Authorization", &auth)],
        Some(&json!({"name": "by rest"})),
    );
    assert_eq!(status, 204);
    // Operations API
    let (status, body) = op(
        &server,
        &auth,
        json!({"operation": "insert", "table": "Dog", "database": "data",
            "records": [{"id": "ops1", "name": "by ops"}]}),
    );
    assert_eq!(status, 200, "{body}");
    // MQTT: a retained publish writes the record.
    {
        use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
        let port = common::mqtt_port(&server);
        let mut opts = MqttOptions::new("audit-writer", port.ip().to_string(), port.port());
        opts.set_keep_alive(Duration::from_secs(30));
        opts.set_credentials("writer", PASSWORD);
        let (client, mut conn) = Client::new(opts, 10);
        client
            .publish("Dog/mqtt1", QoS::AtLeastOnce, true, r#"{"name":"by mqtt"}"#)
            .unwrap();
        let mut acked = false;
        for event in conn.iter().take(20) {
            if let Event::Incoming(Packet::PubAck(_)) = event.expect("connection") {
                acked = true;
                break;
            }
        }
        assert!(acked, "publish acknowledged");
        let _ = client.disconnect();
    }
    for id in ["rest1", "ops1", "mqtt1"] {
        assert_eq!(audit_users(&server, id), ["writer"], "{id}");
    }
}

/// The `name` of the record `Dog/id`.
fn stored_name(server: &Server, id: &str) -> Value {
    let (status, _, body) = call(
        &ureq::agent(),
        "GET",
        &server.url(&format!("/Dog/{id}")),
        &[],
        None,
    );
    assert_eq!(status, 200, "{id}: {body}");
    serde_json::from_str::<Value>(&body).unwrap()["name"].clone()
}

/// The user names of the audit entries of `Dog/id`, oldest first.
fn audit_users(server: &Server, id: &str) -> Vec<String> {
    let (status, audit) = op(
        server,
        &admin(),
        json!({"operation": "read_audit_log", "table": "Dog", "database": "data",
            "search_type": "hash_value", "search_values": [id]}),
    );
    assert_eq!(status, 200, "{audit}");
    audit[id]
        .as_array()
        .unwrap_or_else(|| panic!("{id} audited: {audit}"))
        .iter()
        .map(|e| e["user_name"].as_str().unwrap_or("(none)").to_string())
        .collect()
}
