//! Operations API conformance with HarperDB for roles and token requests (issue 17): each row is
//! a request HarperDB's own API test suite sends (`integrationTests/apiTests/tests/10_otherRoleTests`,
//! `21_authenticationTests` at HarperFast/harper 7089fcf) and the answer HarperDB 4.7 gives —
//! its status and the fields of its body that a client reads. Run in order against one server
//! (the example app: `data.Dog`).

mod common;

use base64::Engine;
use common::{Builder, ADMIN_PASSWORD, ADMIN_USER};
use serde_json::{json, Value};

/// Who sends a row: the super user, or nobody.
#[derive(Clone, Copy, Debug)]
enum Who {
    Admin,
    Anonymous,
}

/// (what, who, request, status, fields the answer must have exactly)
type Row = (&'static str, Who, Value, u16, Value);

fn rows() -> Vec<Row> {
    let role_error = "Errors in the role permissions JSON provided";
    vec![
        (
            "a `delete` inside attribute_permissions is accepted and ignored",
            Who::Admin,
            json!({"operation": "add_role", "role": "test_dev_role", "permission": {"super_user": false,
                "data": {"tables": {"Dog": {"read": false, "insert": false, "update": true, "delete": true,
                    "attribute_permissions": [
                        {"attribute_name": "name", "read": false, "insert": false, "update": false, "delete": true}]}}}}}),
            200,
            json!({"role": "test_dev_role"}),
        ),
        (
            "a table grant without attribute_permissions",
            Who::Admin,
            json!({"operation": "add_role", "role": "developer_test", "permission": {"super_user": false,
                "data": {"tables": {"Dog": {"read": false, "insert": true, "update": false, "delete": false}}}}}),
            400,
            json!({"error": role_error, "main_permissions": [],
                   "schema_permissions": {"data_Dog": ["Missing 'attribute_permissions' array"]}}),
        ),
        (
            "a misspelt attribute_permissions key",
            Who::Admin,
            json!({"operation": "add_role", "role": "developer_test", "permission": {"super_user": false,
                "data": {"tables": {"Dog": {"read": false, "insert": true, "update": false, "delete": false,
                    "attribute_restrictions": [{"attribute_name": "name", "read": true, "insert": true, "update": true}]}}}}}),
            400,
            json!({"error": role_error, "main_permissions": [],
                   "schema_permissions": {"data_Dog": [
                       "Invalid table permission key value 'attribute_restrictions'",
                       "Missing 'attribute_permissions' array"]}}),
        ),
        (
            "an attribute granted what its table is not",
            Who::Admin,
            json!({"operation": "add_role", "role": "developer_test", "permission": {"super_user": false,
                "data": {"tables": {"Dog": {"read": false, "insert": true, "update": false, "delete": false,
                    "attribute_permissions": [{"attribute_name": "name", "read": true, "insert": true, "update": true}]}}}}}),
            400,
            json!({"error": role_error, "main_permissions": [],
                   "schema_permissions": {"data_Dog": [
                       "You have a conflict with TABLE permissions for 'data.Dog' being false and ATTRIBUTE permissions being true"]}}),
        ),
        (
            "unknown database, table and attributes, every one reported",
            Who::Admin,
            json!({"operation": "alter_role", "id": "test_dev_role", "permission": {"super_user": false,
                "crapschema": {"tables": {"blahblah": {"read": false, "insert": false, "update": false, "delete": false,
                    "attribute_permissions": []}}},
                "data": {"tables": {
                    "craptable": {"read": false, "insert": false, "update": false, "delete": false, "attribute_permissions": []},
                    "Dog": {"read": false, "insert": false, "update": true, "delete": false, "attribute_permissions": [
                        {"attribute_name": "name", "read": false, "insert": false, "update": true},
                        {"attribute_name": "crapattribute", "read": false, "insert": false, "update": true}]}}}}}),
            400,
            json!({"error": role_error,
                   "main_permissions": ["database 'crapschema' does not exist", "Table 'data.craptable' does not exist"],
                   "schema_permissions": {"data_Dog": ["Invalid attribute 'crapattribute' in 'attribute_permissions'"]}}),
        ),
        (
            "missing and non-boolean flags",
            Who::Admin,
            json!({"operation": "add_role", "role": "developer_test", "permission": {
                "data": {"tables": {"Dog": {"read": "yes", "insert": false, "update": true,
                    "attribute_permissions": [
                        {"attribute_name": "name", "read": false, "insert": 1},
                        {"read": true}]}}}}}),
            400,
            json!({"error": role_error, "main_permissions": [],
                   "schema_permissions": {"data_Dog": [
                       "Table READ permission must be a boolean",
                       "Missing table DELETE permission",
                       "INSERT attribute permission for 'name' must be a boolean",
                       "UPDATE attribute permission missing for 'name'",
                       "Permission object in 'attribute_permission' missing an 'attribute_name'"]}}),
        ),
        (
            "a super user role with other permissions",
            Who::Admin,
            json!({"operation": "add_role", "role": "developer_test", "permission": {"super_user": true,
                "data": {"tables": {"Dog": {"read": true, "insert": true, "update": true, "delete": true,
                    "attribute_permissions": []}}}}}),
            400,
            json!({"error": role_error,
                   "main_permissions": ["Roles with 'super_user' set to true cannot have other permissions set."],
                   "schema_permissions": {}}),
        ),
        (
            "the refused roles were not created",
            Who::Admin,
            json!({"operation": "drop_role", "id": "developer_test"}),
            404,
            json!({}),
        ),
        (
            "the accepted role was not altered",
            Who::Admin,
            json!({"operation": "drop_role", "id": "test_dev_role"}),
            200,
            json!({"message": "test_dev_role successfully deleted"}),
        ),
        (
            "create_authentication_tokens with an empty password",
            Who::Anonymous,
            json!({"operation": "create_authentication_tokens", "username": ADMIN_USER, "password": ""}),
            400,
            json!({"error": "'password' is not allowed to be empty"}),
        ),
        (
            "create_authentication_tokens with an empty user name",
            Who::Anonymous,
            json!({"operation": "create_authentication_tokens", "username": "", "password": ADMIN_PASSWORD}),
            400,
            json!({"error": "'username' is not allowed to be empty"}),
        ),
        (
            "create_authentication_tokens with both empty, not logged in",
            Who::Anonymous,
            json!({"operation": "create_authentication_tokens", "username": "", "password": ""}),
            401,
            json!({"error": "Must login"}),
        ),
        (
            "create_authentication_tokens with both empty, logged in",
            Who::Admin,
            json!({"operation": "create_authentication_tokens", "username": "", "password": ""}),
            400,
            json!({"error": "'username' is not allowed to be empty. 'password' is not allowed to be empty"}),
        ),
        (
            "create_authentication_tokens without a password",
            Who::Anonymous,
            json!({"operation": "create_authentication_tokens", "username": ADMIN_USER}),
            401,
            json!({"error": "invalid credentials"}),
        ),
        (
            "create_authentication_tokens with wrong credentials",
            Who::Anonymous,
            json!({"operation": "create_authentication_tokens", "username": "wrongusername", "password": "wrongpassword"}),
            401,
            json!({"error": "invalid credentials"}),
        ),
    ]
}

#[test]
fn roles_and_token_requests_answer_as_harperdb_does() {
    let server = Builder::new().require_credentials().start();
    let admin = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{ADMIN_USER}:{ADMIN_PASSWORD}"))
    );
    for (what, who, request, status, fields) in rows() {
        let mut req = ureq::post(&server.ops_url()).set("Content-Type", "application/json");
        if let Who::Admin = who {
            req = req.set("Authorization", &admin);
        }
        let resp = match req.send_string(&request.to_string()) {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("{what}: {e}"),
        };
        let got_status = resp.status();
        let body: Value =
            serde_json::from_str(&resp.into_string().unwrap_or_default()).unwrap_or(Value::Null);
        assert_eq!(got_status, status, "{what}: {body}");
        for (key, expected) in fields.as_object().expect("fields") {
            assert_eq!(&body[key], expected, "{what}: `{key}` of {body}");
        }
    }
}
