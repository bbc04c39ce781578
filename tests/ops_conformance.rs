//! Operations API conformance with HarperDB 4.7 (issue 17): each row is a request HarperDB's own
//! API test suite sends (HarperFast/harper 7089fcf, `integrationTests/apiTests`) and the answer
//! HarperDB 4.7.29 gives to it — its status and the fields of its body a client reads — as
//! `tests/harperdb-suite-failures.md` records them from the reference run. Rows run in order
//! against one server; a few set up what later rows read (a table, a role and its user), and
//! where tidepool keeps a deliberate difference the row says so (docs/operations-api.md).
//!
//! Field checks: a key starting with `/` is a JSON pointer into the body; the value `"<present>"`
//! asks only that the field exist (not null); `"<one of A|B>"` that it be one of those strings;
//! `"<starts A>"` that it be a string starting with `A`;
//! `"<names a|b>"` that it be an array of attribute descriptions naming exactly those;
//! `null` that it be absent. `$job` in a request stands for the id of the last job started.

mod common;

use std::time::{Duration, Instant};

use base64::Engine;
use common::{Builder, Server, ADMIN_PASSWORD, ADMIN_USER};
use serde_json::{json, Value};

const USER: &str = "conf_user";
const USER_PASSWORD: &str = "Conf-user-pass-1";
const ATTR_USER: &str = "attr_user";
const SYSTEM_PROTECTED: &str = "The 'system' database, tables and records are used internally by HarperDB and cannot be updated or removed.";
const FORBIDDEN: &str =
    "This operation is not authorized due to role restrictions and/or invalid database items";

#[derive(Clone, Copy, Debug)]
enum Who {
    Admin,
    /// `conf_user`: every right on `dev.dog`, nothing else.
    User,
    /// `attr_user`: per-attribute rights on `dev.dog`, read on `northnwd.customers`.
    AttrUser,
}

enum Step {
    /// (what, who, request, status, fields of the answer)
    Call(&'static str, Who, Value, u16, Value),
    /// Polls `get_job` for `$job` (bounded) until it leaves `IN_PROGRESS`; then checks fields.
    JobEnds(&'static str, Value),
    /// A file the server wrote, read back as JSON and compared whole.
    FileHolds(&'static str, std::path::PathBuf, Value),
}

use Step::{Call, FileHolds, JobEnds};
use Who::{Admin, AttrUser, User};

fn restricted(handler: &str) -> Value {
    json!({"error": FORBIDDEN,
           "unauthorized_access": [format!("Operation '{handler}' is restricted to 'super_user' roles")]})
}

fn steps(dir: &std::path::Path, root: &std::path::Path) -> Vec<Step> {
    let missing = dir.join("Suppliers_wrong.csv");
    let latin1 = dir.join("Customers.csv");
    let long_name = "IIetmyLabradorcomeoutsidewithmewhenIwastakingthebinsoutonemorningIlethimgoforawanderthinkinghewasjustgoingtopeeonthetelegraphpoleattheendofourdrivewaylikehealwaysdoesInsteadhesawhisopportunityandseizeditHekeptwalkingpastthetelegraphpolepasttheborderofour";
    let started = json!({"message": "<present>", "job_id": "<present>"});
    vec![
        // Set-up: the tables and the non-super user the rows use.
        Call(
            "set-up: northnwd.employees",
            Admin,
            json!({"operation": "create_table", "schema": "northnwd", "table": "employees", "hash_attribute": "employeeid"}),
            200,
            json!({}),
        ),
        Call(
            "set-up: northnwd.customers",
            Admin,
            json!({"operation": "create_table", "schema": "northnwd", "table": "customers", "hash_attribute": "customerid"}),
            200,
            json!({}),
        ),
        Call(
            "set-up: northnwd.orders",
            Admin,
            json!({"operation": "create_table", "schema": "northnwd", "table": "orders", "hash_attribute": "orderid"}),
            200,
            json!({}),
        ),
        Call(
            "set-up: dev.dog",
            Admin,
            json!({"operation": "create_table", "schema": "dev", "table": "dog", "hash_attribute": "id"}),
            200,
            json!({}),
        ),
        Call(
            "set-up: employees",
            Admin,
            json!({"operation": "insert", "schema": "northnwd", "table": "employees",
                   "records": [{"employeeid": 1, "lastname": "Davolio"}, {"employeeid": 2, "lastname": "Fuller"},
                               {"employeeid": 924, "address": "1"}, {"employeeid": 927, "address": "4"}]}),
            200,
            json!({"message": "inserted 4 of 4 records"}),
        ),
        Call(
            "set-up: dog",
            Admin,
            json!({"operation": "insert", "schema": "dev", "table": "dog",
                   "records": [{"id": 1, "dog_name": "Penny", "age": 5, "location": "Denver, CO"},
                               {"id": 2, "dog_name": "Harper", "age": 3, "location": "Boulder, CO"}]}),
            200,
            json!({"message": "inserted 2 of 2 records"}),
        ),
        Call(
            "set-up: a role with every right on dev.dog",
            Admin,
            json!({"operation": "add_role", "role": "conf_role", "permission": {"super_user": false,
                "dev": {"tables": {"dog": {"read": true, "insert": true, "update": true, "delete": true,
                    "attribute_permissions": []}}}}}),
            200,
            json!({"role": "conf_role"}),
        ),
        Call(
            "set-up: its user",
            Admin,
            json!({"operation": "add_user", "role": "conf_role", "username": USER, "password": USER_PASSWORD, "active": true}),
            200,
            json!({}),
        ),
        Call(
            "set-up: a role with per-attribute rights on dev.dog and read on northnwd.customers",
            Admin,
            json!({"operation": "add_role", "role": "attr_role", "permission": {"super_user": false,
                "dev": {"tables": {"dog": {"read": true, "insert": true, "update": true, "delete": false,
                    "attribute_permissions": [
                        {"attribute_name": "dog_name", "read": true, "insert": true, "update": true},
                        {"attribute_name": "age", "read": true, "insert": false, "update": false},
                        {"attribute_name": "location", "read": false, "insert": false, "update": false}]}}},
                "northnwd": {"tables": {"customers": {"read": true, "insert": false, "update": false, "delete": false,
                    "attribute_permissions": []}}}}}),
            200,
            json!({"role": "attr_role"}),
        ),
        Call(
            "set-up: its user",
            Admin,
            json!({"operation": "add_user", "role": "attr_role", "username": ATTR_USER, "password": USER_PASSWORD, "active": true}),
            200,
            json!({}),
        ),
        // CSV jobs (cause job-status-created, job-queue-503, csv-extra-fields, csv-latin1,
        // csv-missing-file-accepted).
        Call(
            "2 › check error on invalid file: a missing file is a 400 at once",
            Admin,
            json!({"operation": "csv_file_load", "action": "insert", "schema": "northnwd", "table": "customers",
                   "file_path": missing}),
            400,
            json!({"error": format!("No such file or directory {}", missing.display())}),
        ),
        Call(
            "2 › 8 Upload Customers.csv: a Latin-1 file",
            Admin,
            json!({"operation": "csv_file_load", "action": "insert", "schema": "northnwd", "table": "customers",
                   "file_path": latin1}),
            200,
            started.clone(),
        ),
        Call(
            "get_job right after the load: IN_PROGRESS (stored before the answer) or done",
            Admin,
            json!({"operation": "get_job", "id": "$job"}),
            200,
            json!({"/0/status": "<one of IN_PROGRESS|COMPLETE>"}),
        ),
        JobEnds(
            "the Latin-1 file loads",
            json!({"/0/status": "COMPLETE", "/0/message": "successfully loaded 2 of 2 records"}),
        ),
        Call(
            "its text read as Latin-1",
            Admin,
            json!({"operation": "search_by_hash", "schema": "northnwd", "table": "customers", "hash_values": ["ALFKI"], "get_attributes": ["city"]}),
            200,
            json!({"/0/city": "Düsseldorf"}),
        ),
        Call(
            "2 › 11 Upload Orders.csv: rows with more fields than the header",
            Admin,
            json!({"operation": "csv_data_load", "action": "insert", "schema": "northnwd", "table": "orders",
                   "data": "orderid,customerid\n10248,VINET,extra\n10249,TOMSP\n"}),
            200,
            started.clone(),
        ),
        JobEnds(
            "they load, the extra field dropped",
            json!({"/0/status": "COMPLETE", "/0/message": "successfully loaded 2 of 2 records"}),
        ),
        Call(
            "the extra field is not stored",
            Admin,
            json!({"operation": "search_by_hash", "schema": "northnwd", "table": "orders", "hash_values": [10248], "get_attributes": ["*"]}),
            200,
            json!({"/0/customerid": "VINET", "/0/2": null}),
        ),
        // Validation (attr-name-backtick-slash, numeric-db-table-name, empty-or-null-primary-key,
        // error-text).
        Call(
            "4 › insert invalid attribute name - single row",
            Admin,
            json!({"operation": "insert", "schema": "dev", "table": "dog", "records": [{"id": 1, "some`$`attribute": "x"}]}),
            400,
            json!({"error": "Attribute names cannot include backticks or forward slashes"}),
        ),
        Call(
            "4 › update single row w/ invalid attribute name",
            Admin,
            json!({"operation": "update", "schema": "dev", "table": "dog", "records": [{"id": 100, "some/attribute": "x"}]}),
            400,
            json!({"error": "Attribute names cannot include backticks or forward slashes"}),
        ),
        Call(
            "1 › Create schema as number - expect error",
            Admin,
            json!({"operation": "create_schema", "schema": 1123}),
            400,
            json!({"error": "'schema' must be a string"}),
        ),
        Call(
            "1 › Create table as number - expect error",
            Admin,
            json!({"operation": "create_table", "database": 1123, "table": 1, "hash_attribute": "id"}),
            400,
            json!({"error": "'database' must be a string. 'schema' must be a string. 'table' must be a string"}),
        ),
        Call(
            "8 › Drop number number table",
            Admin,
            json!({"operation": "drop_table", "schema": 1123, "table": 1}),
            400,
            json!({"error": "'schema' must be a string. 'table' must be a string"}),
        ),
        Call("set-up: table 123.4", Admin,
            json!({"operation": "create_table", "schema": "123", "table": "4", "hash_attribute": "id"}),
            200, json!({})),
        Call("2 › Insert records into 123.4 number schema table: numbers name it in record operations", Admin,
            json!({"operation": "insert", "schema": 123, "table": 4, "records": [{"id": 987654321, "name": "Hot Dawg"}]}),
            200, json!({"message": "inserted 1 of 1 records"})),
        Call("2 › csv_data_load with invalid attribute", Admin,
            json!({"operation": "csv_data_load", "action": "insert", "schema": "dev", "table": "dog",
                   "data": "id,s/ome=attribute\n1,cheeseburger\n"}),
            200, started.clone()),
        JobEnds("the job ends in ERROR, nothing loaded", json!({"/0/status": "ERROR",
            "/0/message": "Invalid column name 's/ome=attribute', cancelling load operation"})),
        Call("4 › NoSQL search by value reverse", Admin,
            json!({"operation": "search_by_value", "schema": "northnwd", "table": "orders", "search_attribute": "orderid",
                   "search_value": "*", "get_attributes": ["orderid"], "reverse": true}),
            200, json!({"/0/orderid": 10249, "/1/orderid": 10248})),
        Call(
            "4 › update NoSQL one employee record with empty hash attribute",
            Admin,
            json!({"operation": "update", "schema": "northnwd", "table": "employees", "records": [{"employeeid": "", "address": "x"}]}),
            400,
            json!({"error": "a valid hash attribute must be provided with update record, check log for more info"}),
        ),
        Call(
            "4 › update NoSQL one employee record with no hash attribute",
            Admin,
            json!({"operation": "update", "schema": "northnwd", "table": "employees", "records": [{"address": "3000 Dog Place"}]}),
            400,
            json!({"error": "a valid hash attribute must be provided with update record, check log for more info"}),
        ),
        Call(
            "5 › NoSQL - Upsert - w/ null value as hash",
            Admin,
            json!({"operation": "upsert", "schema": "northnwd", "table": "customers", "records": [{"customerid": "null", "region": "Durkastan"}]}),
            400,
            json!({"error": "Invalid hash value: 'null' is not a valid hash attribute value, check log for more info"}),
        ),
        Call(
            "2 › Insert records missing records",
            Admin,
            json!({"operation": "insert", "schema": "northnwd", "table": "employees"}),
            400,
            json!({"error": "'records' is required"}),
        ),
        Call(
            "2 › Set attribute name greater than 250 bytes",
            Admin,
            json!({"operation": "insert", "schema": "northnwd", "table": "employees", "records": [{"employeeid": 31, long_name: "a story about a dog"}]}),
            400,
            json!({"error": format!("transaction aborted due to attribute name {long_name} being too long. Attribute names cannot be longer than 250 bytes.")}),
        ),
        // Δ HarperDB answers these two with 500; a client's mistake is a 400 here.
        Call(
            "4 › NoSQL search by hash hash_value bad data type (HarperDB: 500)",
            Admin,
            json!({"operation": "search_by_hash", "schema": "northnwd", "table": "employees", "hash_values": 4, "get_attributes": ["*"]}),
            400,
            json!({"error": "'hash_values' must be an array"}),
        ),
        Call(
            "4 › NoSQL search by hash get_attributes bad data type (HarperDB: 500)",
            Admin,
            json!({"operation": "search_by_hash", "schema": "northnwd", "table": "employees", "hash_values": [4], "get_attributes": "*"}),
            400,
            json!({"error": "'get_attributes' must be an array"}),
        ),
        Call(
            "6 › Add user bad role name",
            Admin,
            json!({"operation": "add_user", "role": "developer_test 5", "username": "test_user1", "password": "Abc1234!", "active": true}),
            400,
            json!({"error": "Role is invalid"}),
        ),
        Call(
            "6 › try to set bad role to user",
            Admin,
            json!({"operation": "alter_user", "role": "blahblah", "username": USER}),
            404,
            json!({"error": "Update failed.  Requested 'blahblah' role not found."}),
        ),
        Call(
            "11 › Alter User with empty role (HarperDB: 500)",
            Admin,
            json!({"operation": "alter_user", "role": "", "username": USER}),
            400,
            json!({"error": "If role is specified, it cannot be empty."}),
        ),
        Call(
            "6 › Drop non-existent user",
            Admin,
            json!({"operation": "drop_user", "username": "test_user"}),
            404,
            json!({"error": "User test_user does not exist"}),
        ),
        Call(
            "6 › Drop non-existent role",
            Admin,
            json!({"operation": "drop_role", "id": "developer_test_5"}),
            404,
            json!({"error": "Role not found"}),
        ),
        // Searches on what does not exist: 404; writes stay 400 (missing-db-table-search-404).
        Call(
            "4 › NoSQL search by hash no schema",
            Admin,
            json!({"operation": "search_by_hash", "schema": "callABC", "table": "aggr", "hash_values": [4], "get_attributes": ["*"]}),
            404,
            json!({"error": "database 'callABC' does not exist"}),
        ),
        Call(
            "4 › NoSQL search by hash no table",
            Admin,
            json!({"operation": "search_by_hash", "schema": "dev", "table": "aggrABC", "hash_values": [4], "get_attributes": ["*"]}),
            404,
            json!({"error": "Table 'dev.aggrABC' does not exist"}),
        ),
        Call(
            "10 › NoSQL - SU search on table that doesnt exist",
            Admin,
            json!({"operation": "search_by_value", "schema": "dev", "table": "rick_rolled", "search_attribute": "id", "search_value": "*", "get_attributes": ["*"]}),
            404,
            json!({"error": "Table 'dev.rick_rolled' does not exist"}),
        ),
        Call(
            "an insert into a missing table stays a 400",
            Admin,
            json!({"operation": "insert", "schema": "dev", "table": "rick_rolled", "records": [{"id": 1}]}),
            400,
            json!({"error": "Table 'dev.rick_rolled' does not exist"}),
        ),
        // Timestamps (timestamp-attr-non-integer).
        Call(
            "4 › attempt to update __createdtime__: ignored for a super user",
            Admin,
            json!({"operation": "update", "schema": "northnwd", "table": "employees", "records": [{"employeeid": 1, "__createdtime__": "bad value"}]}),
            200,
            json!({"message": "updated 1 of 1 records"}),
        ),
        Call(
            "4 › confirm __createdtime__ did not change",
            Admin,
            json!({"operation": "search_by_hash", "schema": "northnwd", "table": "employees", "hash_values": [1], "get_attributes": ["__createdtime__"]}),
            200,
            json!({"/0/__createdtime__": "<present>"}),
        ),
        Call(
            "5 › NoSQL Try to update timestamp value on dog table as test_user",
            User,
            json!({"operation": "insert", "schema": "dev", "table": "dog", "records": [{"id": 11, "__createdtime__": "Stuff and things"}]}),
            403,
            json!({"error": "Internal timestamp attributes - '__createdtime_' and '__updatedtime__' - cannot be inserted to or updated by HDB users."}),
        ),
        // What a role cannot see reads as not existing (hidden-items-as-does-not-exist,
        // describe-restricted-trim-and-hide).
        Call(
            "5 › search by conditions - equals - restricted attr",
            AttrUser,
            json!({"operation": "search_by_conditions", "schema": "dev", "table": "dog", "get_attributes": ["*"],
                   "conditions": [{"search_attribute": "location", "search_type": "equals", "search_value": "Denver, CO"}]}),
            403,
            json!({"error": FORBIDDEN, "unauthorized_access": [],
                        "invalid_schema_items": ["Attribute 'location' does not exist on 'dev.dog'"]}),
        ),
        Call(
            "5 › NoSQL Try to read FULLY restricted suppliers table as test_user",
            AttrUser,
            json!({"operation": "search_by_value", "schema": "northnwd", "table": "employees", "search_attribute": "employeeid",
                   "search_value": "*", "get_attributes": ["employeeid"]}),
            403,
            json!({"error": FORBIDDEN, "unauthorized_access": [],
                        "invalid_schema_items": ["Table 'northnwd.employees' does not exist"]}),
        ),
        Call(
            "10 › NoSQL - Non-SU search on schema that doesnt exist as test_user",
            AttrUser,
            json!({"operation": "search_by_value", "schema": "rick_rolled", "table": "region", "search_attribute": "id",
                   "search_value": "*", "get_attributes": ["*"]}),
            403,
            json!({"error": FORBIDDEN, "unauthorized_access": [],
                        "invalid_schema_items": ["database 'rick_rolled' does not exist"]}),
        ),
        Call(
            "5 › NoSQL Try to update categories table with new attr as test_user",
            AttrUser,
            json!({"operation": "update", "schema": "dev", "table": "dog", "records": [{"id": 1, "dog_name": "P", "active": true}]}),
            403,
            json!({"error": FORBIDDEN, "unauthorized_access": [],
                        "invalid_schema_items": ["Attribute 'active' does not exist on 'dev.dog'"]}),
        ),
        Call(
            "an attribute the role sees but may not insert is named in unauthorized_access",
            AttrUser,
            json!({"operation": "insert", "schema": "dev", "table": "dog", "records": [{"id": 40, "dog_name": "P", "age": 2, "location": "x"}]}),
            403,
            json!({"error": FORBIDDEN,
                        "unauthorized_access": [{"schema": "dev", "table": "dog", "required_table_permissions": [],
                            "required_attribute_permissions": [{"attribute_name": "age", "required_permissions": ["insert"]}]}],
                        "invalid_schema_items": ["Attribute 'location' does not exist on 'dev.dog'"]}),
        ),
        Call(
            "10 › Describe Table - non-SU test_user: only the attributes it may read",
            AttrUser,
            json!({"operation": "describe_table", "schema": "dev", "table": "dog"}),
            200,
            json!({"attributes": "<names age|dog_name|id>"}),
        ),
        Call(
            "10 › Describe Table - restricted table - non-SU test_user",
            AttrUser,
            json!({"operation": "describe_table", "schema": "northnwd", "table": "employees"}),
            403,
            json!({"error": FORBIDDEN, "unauthorized_access": [],
                        "invalid_schema_items": ["Table 'northnwd.employees' does not exist"]}),
        ),
        Call(
            "10 › Describe Schema - test user NO PERMS",
            User,
            json!({"operation": "describe_schema", "schema": "northnwd"}),
            403,
            json!({"error": FORBIDDEN, "unauthorized_access": [],
                        "invalid_schema_items": ["database 'northnwd' does not exist"]}),
        ),
        Call(
            "10 › Describe All - non-SU: its tables, trimmed",
            AttrUser,
            json!({"operation": "describe_all"}),
            200,
            json!({"/dev/dog/attributes": "<names age|dog_name|id>", "/northnwd/employees": null,
                        "/northnwd/customers": "<present>"}),
        ),
        // CSV loads by non-super users (csv-non-su-refused-up-front): the table rights up front,
        // the columns in the job, which ends with the 403 body as its message.
        Call("5 › CSV Data Load - upsert - to table w/ some restricted attrs & new attr", AttrUser,
            json!({"operation": "csv_data_load", "action": "upsert", "schema": "dev", "table": "dog",
                   "data": "id,dog_name,age,rando\n19,doggy,22,Another attr value\n"}),
            200, started.clone()),
        JobEnds("the job ends in ERROR with the refusal", json!({"/0/status": "ERROR", "/0/message/error": FORBIDDEN,
            "/0/message/unauthorized_access": [{"schema": "dev", "table": "dog", "required_table_permissions": [],
                "required_attribute_permissions": [{"attribute_name": "age", "required_permissions": ["insert"]},
                                                   {"attribute_name": "age", "required_permissions": ["update"]}]}],
            "/0/message/invalid_schema_items": ["Attribute 'rando' does not exist on 'dev.dog'"]})),
        Call("nothing of it was written", Admin,
            json!({"operation": "search_by_hash", "schema": "dev", "table": "dog", "hash_values": [19], "get_attributes": ["id"]}),
            200, json!({"/0": null})),
        Call("7 › Jobs - Bulk CSV Load - insert suppliers table restricted attribute as test_user", AttrUser,
            json!({"operation": "csv_file_load", "action": "insert", "schema": "northnwd", "table": "employees",
                   "file_path": "/etc/hostname"}),
            403, json!({"error": FORBIDDEN, "unauthorized_access": [],
                        "invalid_schema_items": ["Table 'northnwd.employees' does not exist"]})),
        // Δ reading a server file is a super user's: HarperDB lets any role with the table rights.
        Call("5 › CSV File Load to table w/ restricted attrs (Δ super users only)", AttrUser,
            json!({"operation": "csv_file_load", "action": "insert", "schema": "dev", "table": "dog",
                   "file_path": "/etc/hostname"}),
            403, restricted("csv_file_load")),
        Call("10 › Insert record into hdb cert doesnt work (super user)", Admin,
            json!({"operation": "insert", "database": "system", "table": "hdb_job", "records": [{"id": "x"}]}),
            403, json!({"error": FORBIDDEN, "unauthorized_access": [{"schema": "system", "table": "hdb_job",
                "required_table_permissions": ["insert"], "required_attribute_permissions": []}]})),

        // Answer shapes (delete-txn_time).
        Call(
            "8 › NoSQL Delete: no txn_time",
            Admin,
            json!({"operation": "delete", "schema": "northnwd", "table": "employees", "hash_values": [924, 927]}),
            200,
            json!({"message": "2 of 2 records successfully deleted", "deleted_hashes": [924, 927], "skipped_hashes": [], "txn_time": null}),
        ),
        // Answer shapes: HarperDB 4.7.29 answers insert and update without `txn_time` or
        // `new_attributes` (asked live; the cluster collection's "Transaction log" compares them
        // whole). `null`: absent.
        Call(
            "cluster › Transaction log › Insert two records: no txn_time, no new_attributes",
            Admin,
            json!({"operation": "insert", "schema": "northnwd", "table": "employees",
                   "records": [{"employeeid": 99901, "lastname": "Hen", "brand_new_attribute": 1}]}),
            200,
            json!({"message": "inserted 1 of 1 records", "inserted_hashes": [99901], "skipped_hashes": [],
                   "txn_time": null, "new_attributes": null}),
        ),
        Call(
            "cluster › Transaction log › Update one record: no txn_time, no new_attributes",
            Admin,
            json!({"operation": "update", "schema": "northnwd", "table": "employees",
                   "records": [{"employeeid": 99901, "another_new_attribute": true}, {"employeeid": 99902}]}),
            200,
            json!({"message": "updated 1 of 2 records", "update_hashes": [99901], "skipped_hashes": [99902],
                   "txn_time": null, "new_attributes": null}),
        ),
        Call(
            "cluster › upsert answers without txn_time either",
            Admin,
            json!({"operation": "upsert", "schema": "northnwd", "table": "employees",
                   "records": [{"employeeid": 99901, "lastname": "Solo"}]}),
            200,
            json!({"message": "upserted 1 of 1 records", "upserted_hashes": [99901],
                   "txn_time": null, "new_attributes": null}),
        ),
        Call(
            "cluster › the record above removed again",
            Admin,
            json!({"operation": "delete", "schema": "northnwd", "table": "employees", "hash_values": [99901]}),
            200,
            json!({"message": "1 of 1 record successfully deleted", "deleted_hashes": [99901]}),
        ),
        // delete_files_before (op-missing-delete_files_before).
        Call(
            "7 › Jobs - Test Remove Files Before with test_user",
            User,
            json!({"operation": "delete_files_before", "date": "2018-06-14", "schema": "dog"}),
            403,
            json!({"error": FORBIDDEN, "invalid_schema_items": [],
                        "unauthorized_access": ["Operation 'deleteFilesBefore' is restricted to 'super_user' roles"]}),
        ),
        Call(
            "8 › Delete records before (delete_files_before)",
            Admin,
            json!({"operation": "delete_files_before", "date": "2999-01-01T00:00:00.000Z", "schema": "dev", "table": "dog"}),
            200,
            started.clone(),
        ),
        JobEnds(
            "the job deletes the records created before the date",
            json!({"/0/status": "COMPLETE", "/0/message": "2 of 2 records successfully deleted"}),
        ),
        Call(
            "8 › Search by hash confirm",
            Admin,
            json!({"operation": "search_by_hash", "schema": "dev", "table": "dog", "hash_values": [1, 2], "get_attributes": ["id"]}),
            200,
            json!({"/0": null}),
        ),
        // export_local (op-missing-export_local).
        Call(
            "7 › Jobs Test Export To Local using NoSQL as su",
            Admin,
            json!({"operation": "export_local", "path": root, "filename": "test_export.json", "format": "json",
                   "search_operation": {"operation": "search_by_hash", "schema": "northnwd", "table": "employees",
                       "hash_attribute": "employeeid", "hash_values": [2], "get_attributes": ["lastname"]}}),
            200,
            started.clone(),
        ),
        JobEnds(
            "the export job",
            json!({"/0/status": "COMPLETE", "/0/type": "export_local",
                                         "/0/result/message": "Successfully exported JSON locally."}),
        ),
        FileHolds(
            "the exported file",
            root.join("test_export.json"),
            json!([{"lastname": "Fuller"}]),
        ),
        Call(
            "7 › Jobs Test Export To Local using SQL as su",
            Admin,
            json!({"operation": "export_local", "path": "./", "filename": "sql_export.json", "format": "json",
                   "search_operation": {"operation": "sql",
                       "sql": "select employeeid, lastname\n    from northnwd.employees where employeeid <= 2 order by employeeid"}}),
            200,
            started.clone(),
        ),
        JobEnds(
            "the SQL export job",
            json!({"/0/status": "COMPLETE", "/0/type": "export_local",
                   "/0/result/message": "Successfully exported JSON locally."}),
        ),
        FileHolds(
            "the SQL export's file, in the root folder",
            root.join("sql_export.json"),
            json!([{"employeeid": 1, "lastname": "Davolio"}, {"employeeid": 2, "lastname": "Fuller"}]),
        ),
        Call(
            "export_local with an SQL write: not an export",
            Admin,
            json!({"operation": "export_local", "path": "./", "filename": "x", "format": "json",
                   "search_operation": {"operation": "sql", "sql": "delete from northnwd.employees"}}),
            400,
            json!({"error": "export_local runs a SELECT statement; other SQL statements are not exports"}),
        ),
        Call(
            "export_local to a folder outside the root folder",
            Admin,
            json!({"operation": "export_local", "path": dir, "filename": "x", "format": "json",
                   "search_operation": {"operation": "sql", "sql": "select 1"}}),
            400,
            json!({"error": format!("'path' must be a folder inside the server's root folder ({}), not '{}'",
                                    root.display(), dir.display())}),
        ),
        Call(
            "export_local climbing out with ..",
            Admin,
            json!({"operation": "export_local", "path": "../", "filename": "x", "format": "json",
                   "search_operation": {"operation": "sql", "sql": "select 1"}}),
            400,
            json!({"error": "<present>"}),
        ),
        Call(
            "7 › Jobs Test Export To Local using SQL as test_user (Δ: writing server files is a super user's)",
            User,
            json!({"operation": "export_local", "path": "./", "filename": "test_export.json", "format": "json",
                   "search_operation": {"operation": "sql", "sql": "select * from dev.dog"}}),
            403,
            restricted("export_local"),
        ),
        Call(
            "7 › Jobs Test Export To Local using NoSQL as test_user",
            User,
            json!({"operation": "export_local", "path": "./", "filename": "test_export", "format": "json",
                   "search_operation": {"operation": "search_by_hash", "schema": "dev", "table": "dog",
                       "hash_values": [1], "get_attributes": ["*"]}}),
            403,
            restricted("export_local"),
        ),
        // Super-user-only operations named as HarperDB names them
        // (restricted-op-message-names-handler).
        Call(
            "5 › NoSQL create_schema - non-SU expect fail",
            User,
            json!({"operation": "create_schema", "schema": "test-schema"}),
            403,
            restricted("createSchema"),
        ),
        Call(
            "5 › NoSQL drop_table - non-SU expect fail",
            User,
            json!({"operation": "drop_table", "schema": "dev", "table": "dog"}),
            403,
            restricted("dropTable"),
        ),
        Call(
            "5 › NoSQL try to get user info as test_user",
            User,
            json!({"operation": "list_users"}),
            403,
            restricted("listUsersExternal"),
        ),
        Call(
            "7 › Search Jobs by date - non-super user",
            User,
            json!({"operation": "search_jobs_by_start_date", "from_date": "2020-01-01T00:00:00.000Z", "to_date": "2999-01-01T00:00:00.000Z"}),
            403,
            restricted("handleGetJobsByStartDate"),
        ),
        Call(
            "10 › system_information as non-SU",
            User,
            json!({"operation": "system_information"}),
            403,
            restricted("systemInformation"),
        ),
        Call(
            "12 › Get Configuration non-SU",
            User,
            json!({"operation": "get_configuration"}),
            403,
            restricted("getConfiguration"),
        ),
        // The system database (system-db-su-writes, system-db-message).
        Call(
            "10 › Insert record into table (system, super user)",
            Admin,
            json!({"operation": "insert", "database": "system", "table": "hdb_nodes", "records": [{"name": "my-node", "url": "lets-test"}]}),
            200,
            json!({"message": "inserted 1 of 1 records", "inserted_hashes": ["my-node"]}),
        ),
        Call(
            "10 › Update record into table (system, super user)",
            Admin,
            json!({"operation": "update", "database": "system", "table": "hdb_nodes", "records": [{"name": "my-node", "url": "updated-url"}]}),
            200,
            json!({"message": "updated 1 of 1 records"}),
        ),
        Call(
            "10 › Confirm record in table",
            Admin,
            json!({"operation": "search_by_id", "database": "system", "table": "hdb_nodes", "ids": ["my-node"], "get_attributes": ["*"]}),
            200,
            json!({"/0/url": "updated-url"}),
        ),
        Call(
            "10 › Test Update user table non-SU doesnt work",
            User,
            json!({"operation": "update", "database": "system", "table": "hdb_user", "records": [{"username": USER, "test": true}]}),
            403,
            json!({"error": SYSTEM_PROTECTED, "unauthorized_access": null}),
        ),
        Call(
            "10 › Test delete when non-SU doesnt work",
            User,
            json!({"operation": "delete", "database": "system", "table": "hdb_nodes", "ids": ["my-node"]}),
            403,
            json!({"error": SYSTEM_PROTECTED, "unauthorized_access": null}),
        ),
        Call(
            "10 › Insert record system table as non SU",
            User,
            json!({"operation": "insert", "database": "system", "table": "hdb_nodes", "records": [{"name": "x", "url": "no-go"}]}),
            403,
            json!({"error": FORBIDDEN, "unauthorized_access": [{"schema": "system", "table": "hdb_nodes",
                "required_table_permissions": ["insert"], "required_attribute_permissions": []}]}),
        ),
        Call(
            "10 › Query system table non SU",
            User,
            json!({"operation": "search_by_value", "table": "hdb_user", "schema": "system", "search_attribute": "username", "search_value": "admin", "get_attributes": ["*"]}),
            403,
            json!({"error": FORBIDDEN, "unauthorized_access": [{"schema": "system", "table": "hdb_user",
                "required_table_permissions": ["read"], "required_attribute_permissions": []}]}),
        ),
        Call(
            "10 › Describe SYSTEM table as non-SU",
            User,
            json!({"operation": "describe_table", "table": "hdb_user", "schema": "system"}),
            403,
            json!({"error": FORBIDDEN,
                        "unauthorized_access": ["Your role does not have permission to view database metadata for 'system'"]}),
        ),
        Call(
            "10 › Drop system table as SU",
            Admin,
            json!({"operation": "drop_table", "schema": "system", "table": "hdb_user"}),
            403,
            json!({"error": SYSTEM_PROTECTED, "unauthorized_access": null}),
        ),
        Call(
            "10 › Delete attribute from system table",
            Admin,
            json!({"operation": "drop_attribute", "schema": "system", "table": "hdb_user", "attribute": "password"}),
            403,
            json!({"error": SYSTEM_PROTECTED}),
        ),
        Call(
            "10 › Delete record from table (system, super user)",
            Admin,
            json!({"operation": "delete", "database": "system", "table": "hdb_nodes", "ids": ["my-node"]}),
            200,
            json!({"message": "1 of 1 record successfully deleted"}),
        ),
        // Configuration and system information (set-configuration-keys, get-configuration-shape,
        // system-information-shape): HarperDB's message word for word, the keys that change
        // nothing here in a field of their own.
        Call(
            "12 › Set Configuration: a key HarperDB accepts that changes nothing here",
            Admin,
            json!({"operation": "set_configuration", "logging_rotation_maxSize": "12M"}),
            200,
            json!({"message": "Configuration successfully set. You must restart HarperDB for new config settings to take effect.",
                   "stored_without_effect": ["logging_rotation_maxSize"]}),
        ),
        Call(
            "8a › Turn on log audit and custom functions",
            Admin,
            json!({"operation": "set_configuration", "logging_auditLog": true, "customFunctions_enabled": true, "localStudio_enabled": true}),
            200,
            json!({"message": "<present>"}),
        ),
        Call(
            "12 › Confirm Configuration / Get Configuration",
            Admin,
            json!({"operation": "get_configuration"}),
            200,
            json!({"/logging/rotation/maxSize": "12M", "rootPath": "<present>", "componentsRoot": "<present>",
                        "/localStudio/enabled": true, "/operationsApi/network/port": "<present>", "threads": "<present>"}),
        ),
        Call(
            "13 › Get all System Information",
            Admin,
            json!({"operation": "system_information"}),
            200,
            json!({"system": "<present>", "time": "<present>", "cpu": "<present>", "memory": "<present>",
                        "disk": "<present>", "network": "<present>", "harperdb_processes": "<present>", "table_size": "<present>"}),
        ),
        Call(
            "13 › Get some System Information (time, memory)",
            Admin,
            json!({"operation": "system_information", "attributes": ["memory", "time"]}),
            200,
            json!({"system": null, "disk": null, "network": null, "/time/current": "<present>", "/time/uptime": "<present>",
                        "/time/timezone": "<present>", "/time/timezoneName": "<present>", "/memory/total": "<present>",
                        "/memory/free": "<present>", "/memory/used": "<present>", "/memory/active": "<present>",
                        "/memory/swaptotal": "<present>", "/memory/swapused": "<present>", "/memory/swapfree": "<present>",
                        "/memory/available": "<present>"}),
        ),
        Call(
            "12 › Set Configuration Bad Data",
            Admin,
            json!({"operation": "set_configuration", "http_cors": "spinach"}),
            400,
            json!({"error": "HarperDB config file validation error: 'http.cors' must be a boolean"}),
        ),
        // describe_table on `system` without a table: the `system` refusal comes first.
        Call(
            "10 › Describe  SYSTEM schema as non-SU",
            User,
            json!({"operation": "describe_table", "schema": "system"}),
            403,
            json!({"error": FORBIDDEN,
                   "unauthorized_access": ["Your role does not have permission to view database metadata for 'system'"]}),
        ),
        Call(
            "describe_table without a table as super user",
            Admin,
            json!({"operation": "describe_table", "schema": "dev"}),
            400,
            json!({"error": "'table' is required"}),
        ),
        // A table flag that is not a boolean is reported alone, not also as a conflict.
        Call(
            "10 › Add role with non-boolean READ table perms",
            Admin,
            json!({"operation": "add_role", "role": "developer_test", "permission": {"super_user": false,
                "northnwd": {"tables": {"employees": {"read": "Doooooh", "insert": true, "update": true, "delete": false,
                    "attribute_permissions": [{"attribute_name": "lastname", "read": true, "insert": true, "update": true}]}}}}}),
            400,
            json!({"error": "Errors in the role permissions JSON provided", "main_permissions": [],
                   "schema_permissions": {"northnwd_employees": ["Table READ permission must be a boolean"]}}),
        ),
        Call(
            "10 › Add role with non-boolean INSERT/DELETE perms",
            Admin,
            json!({"operation": "add_role", "role": "developer_test", "permission": {"super_user": false,
                "northnwd": {"tables": {"employees": {"read": true, "insert": "Doooooh", "update": true, "delete": "Doooooh",
                    "attribute_permissions": [{"attribute_name": "lastname", "read": true, "insert": true, "update": true}]}}}}}),
            400,
            json!({"error": "Errors in the role permissions JSON provided", "main_permissions": [],
                   "schema_permissions": {"northnwd_employees": ["Table INSERT permission must be a boolean",
                                                                 "Table DELETE permission must be a boolean"]}}),
        ),
        Call(
            "10 › Add role with mismatched table/attr READ perms (still a conflict)",
            Admin,
            json!({"operation": "add_role", "role": "developer_test", "permission": {"super_user": false,
                "northnwd": {"tables": {"employees": {"read": false, "insert": true, "update": true, "delete": false,
                    "attribute_permissions": [{"attribute_name": "lastname", "read": true, "insert": true, "update": true}]}}}}}),
            400,
            json!({"schema_permissions": {"northnwd_employees": [
                "You have a conflict with TABLE permissions for 'northnwd.employees' being false and ATTRIBUTE permissions being true"]}}),
        ),
        // delete_audit_logs_before (op-missing-delete_audit_logs_before): a job; the table's
        // audit entries before the time go, other tables' stay.
        Call(
            "set-up: dev.breed",
            Admin,
            json!({"operation": "create_table", "schema": "dev", "table": "breed", "hash_attribute": "id"}),
            200,
            json!({}),
        ),
        Call(
            "set-up: data.friends",
            Admin,
            json!({"operation": "create_table", "table": "friends", "hash_attribute": "id"}),
            200,
            json!({}),
        ),
        Call(
            "set-up: audited writes to two tables",
            Admin,
            json!({"operation": "transaction", "schema": "dev", "operations": [
                {"operation": "insert", "table": "dog", "records": [{"id": 901, "dog_name": "Audit"}]},
                {"operation": "insert", "table": "breed", "records": [{"id": 901, "name": "Audit"}]}]}),
            200,
            json!({"message": "transaction committed"}),
        ),
        Call(
            "9 › Delete records before (delete_audit_logs_before, timestamp as a string)",
            Admin,
            json!({"operation": "delete_audit_logs_before", "schema": "dev", "table": "dog", "timestamp": "4102444800000"}),
            200,
            started.clone(),
        ),
        JobEnds(
            "the job completes with HarperDB's message",
            json!({"/0/status": "COMPLETE", "/0/type": "delete_audit_logs_before",
                   "/0/message": "<starts Successfully completed job: >"}),
        ),
        Call(
            "the table's audit entries are gone",
            Admin,
            json!({"operation": "read_audit_log", "schema": "dev", "table": "dog"}),
            200,
            json!({"/0": null}),
        ),
        Call(
            "the other table's stay",
            Admin,
            json!({"operation": "read_audit_log", "schema": "dev", "table": "breed", "search_type": "hash_value", "search_values": [901]}),
            200,
            json!({"/901/0/operation": "<present>", "/901/0/hash_values/0": 901}),
        ),
        Call(
            "16 › delete_audit_logs_before without database (data)",
            Admin,
            json!({"operation": "delete_audit_logs_before", "table": "friends", "timestamp": 1690553291764i64}),
            200,
            started.clone(),
        ),
        JobEnds(
            "it completes",
            json!({"/0/status": "COMPLETE", "/0/job_body/database": "data"}),
        ),
        Call(
            "delete_audit_logs_before as a non-super user",
            User,
            json!({"operation": "delete_audit_logs_before", "schema": "dev", "table": "dog", "timestamp": 1}),
            403,
            restricted("delete_audit_logs_before"),
        ),
    ]
}

fn basic(user: &str, password: &str) -> String {
    let pair = format!("{user}:{password}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    )
}

fn send(server: &Server, who: Who, body: &Value) -> (u16, Value) {
    let auth = match who {
        Admin => basic(ADMIN_USER, ADMIN_PASSWORD),
        User => basic(USER, USER_PASSWORD),
        AttrUser => basic(ATTR_USER, USER_PASSWORD),
    };
    let resp = match ureq::post(&server.ops_url())
        .set("Content-Type", "application/json")
        .set("Authorization", &auth)
        .send_string(&body.to_string())
    {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{body}: {e}"),
    };
    let status = resp.status();
    let text = resp.into_string().unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn substitute(v: &Value, job: &str) -> Value {
    match v {
        Value::String(s) if s == "$job" => Value::String(job.to_string()),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, v)| (k.clone(), substitute(v, job)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(|v| substitute(v, job)).collect()),
        other => other.clone(),
    }
}

fn check(what: &str, body: &Value, fields: &Value) {
    for (key, expected) in fields.as_object().expect("fields") {
        let got = if key.starts_with('/') {
            body.pointer(key).unwrap_or(&Value::Null)
        } else {
            body.get(key).unwrap_or(&Value::Null)
        };
        match expected.as_str() {
            Some("<present>") => assert!(!got.is_null(), "{what}: `{key}` missing in {body}"),
            Some(s) if s.starts_with("<names ") => {
                let mut want: Vec<&str> = s["<names ".len()..s.len() - 1].split('|').collect();
                let mut names: Vec<&str> = got
                    .as_array()
                    .map(|a| a.iter().filter_map(|x| x["attribute"].as_str()).collect())
                    .unwrap_or_default();
                want.sort_unstable();
                names.sort_unstable();
                assert_eq!(names, want, "{what}: `{key}` of {body}");
            }
            Some(s) if s.starts_with("<starts ") => {
                let prefix = &s["<starts ".len()..s.len() - 1];
                assert!(
                    got.as_str().is_some_and(|g| g.starts_with(prefix)),
                    "{what}: `{key}` of {body} does not start with {prefix:?}"
                );
            }
            Some(s) if s.starts_with("<one of ") => {
                let options = &s["<one of ".len()..s.len() - 1];
                assert!(
                    got.as_str()
                        .is_some_and(|g| options.split('|').any(|o| o == g)),
                    "{what}: `{key}` of {body} is not one of {options}"
                );
            }
            _ => assert_eq!(got, expected, "{what}: `{key}` of {body}"),
        }
    }
}

#[test]
fn operations_answer_as_harperdb_does() {
    let server = Builder::new().require_credentials().start();
    let dir = tempfile::tempdir().expect("tempdir");
    // Northwind's Customers.csv is Latin-1 with CRLF line ends; two of its rows.
    std::fs::write(
        dir.path().join("Customers.csv"),
        b"customerid,companyname,city\r\nALFKI,Alfreds Futterkiste,D\xfcsseldorf\r\nANATR,Ana Trujillo,M\xe9xico D.F.\r\n",
    )
    .expect("write");
    let mut job = String::new();
    for step in steps(dir.path(), server.root.path()) {
        match step {
            Call(what, who, request, status, fields) => {
                let (got, body) = send(&server, who, &substitute(&request, &job));
                assert_eq!(got, status, "{what}: {body}");
                check(what, &body, &fields);
                if let Some(id) = body.get("job_id").and_then(Value::as_str) {
                    job = id.to_string();
                }
            }
            FileHolds(what, path, expected) => {
                let text = std::fs::read_to_string(&path)
                    .unwrap_or_else(|e| panic!("{what}: {}: {e}", path.display()));
                let got: Value = serde_json::from_str(&text).expect("JSON file");
                assert_eq!(got, expected, "{what}");
            }
            JobEnds(what, fields) => {
                let limit = Instant::now() + Duration::from_secs(60);
                let body = loop {
                    let (got, body) =
                        send(&server, Admin, &json!({"operation": "get_job", "id": job}));
                    assert_eq!(got, 200, "{what}: {body}");
                    if body[0]["status"] != "IN_PROGRESS" || Instant::now() > limit {
                        break body;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                };
                check(what, &body, &fields);
            }
        }
    }
}

/// More loads at once than run at once: every one is accepted (queued, as HarperDB queues them)
/// and completes; `get_job` never shows `CREATED`.
#[test]
fn concurrent_loads_are_queued_not_refused() {
    let server = Builder::new().require_credentials().start();
    let (status, _) = send(
        &server,
        Admin,
        &json!({"operation": "create_table", "schema": "dev", "table": "bulk", "hash_attribute": "id"}),
    );
    assert_eq!(status, 200);
    let loads = 12;
    let rows = 3_000;
    let mut ids = Vec::new();
    for n in 0..loads {
        let mut data = String::from("id,n\n");
        for i in 0..rows {
            data.push_str(&format!("{},{n}\n", n * rows + i));
        }
        let (status, body) = send(
            &server,
            Admin,
            &json!({"operation": "csv_data_load", "action": "insert", "schema": "dev", "table": "bulk", "data": data}),
        );
        assert_eq!(status, 200, "load {n}: {body}");
        ids.push(body["job_id"].as_str().expect("job_id").to_string());
    }
    let limit = Instant::now() + Duration::from_secs(120);
    for id in &ids {
        loop {
            let (_, body) = send(&server, Admin, &json!({"operation": "get_job", "id": id}));
            let status = body[0]["status"].as_str().unwrap_or_default().to_string();
            assert_ne!(status, "CREATED", "{body}");
            if status != "IN_PROGRESS" {
                assert_eq!(status, "COMPLETE", "{body}");
                break;
            }
            assert!(Instant::now() < limit, "job {id} still running: {body}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let (_, all) = send(
        &server,
        Admin,
        &json!({"operation": "search_by_value", "schema": "dev", "table": "bulk", "search_attribute": "id", "search_value": "*", "get_attributes": ["id"]}),
    );
    assert_eq!(all.as_array().map(Vec::len), Some(loads * rows));
}

/// A port below 32768 that is free now, for a server that must come back on the same address.
fn free_port() -> u16 {
    common::free_port_on(&["127.0.0.1"])
}

/// `restart` (8a › Restart for new settings): HarperDB's answer, then the same process stops
/// gracefully and starts again with the same arguments: same PID, same root, data kept, and a
/// setting stored by `set_configuration` before it now in force.
#[test]
fn restart_starts_the_server_again_in_place() {
    let port = free_port();
    let server = Builder::new()
        .require_credentials()
        .arg("--OPERATIONSAPI_NETWORK_PORT", &format!("127.0.0.1:{port}"))
        .start();
    let pid = server.pid();
    let (status, _) = send(
        &server,
        Admin,
        &json!({"operation": "insert", "table": "Dog", "records": [{"id": "kept", "name": "Kept"}]}),
    );
    assert_eq!(status, 200);
    let (status, body) = send(
        &server,
        Admin,
        &json!({"operation": "set_configuration", "logging_level": "debug"}),
    );
    assert_eq!(status, 200, "{body}");
    // A client connection open across the restart is closed by it, not left dangling.
    let mut idle = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    server.drain_lines();
    let (status, body) = send(&server, Admin, &json!({"operation": "restart"}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["message"],
        "Restarting HarperDB. This may take up to 60 seconds."
    );
    idle.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut byte = [0u8; 1];
    let read = std::io::Read::read(&mut idle, &mut byte);
    assert!(
        matches!(read, Ok(0))
            || read
                .as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
        "the idle connection was not closed: {read:?}"
    );
    // The stop, then a new start, are logged (bounded wait).
    let limit = Instant::now() + Duration::from_secs(60);
    let mut lines = Vec::new();
    while !lines.iter().any(|l: &String| l.contains("starting with")) {
        assert!(Instant::now() < limit, "no new start logged: {lines:?}");
        lines.extend(server.drain_lines());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        lines.iter().any(|l| l.contains("restart requested")),
        "{lines:?}"
    );
    // Back on the same address, in the same process (a fresh connection each try).
    let config = loop {
        let agent = ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(10))
            .build();
        let (status, body) = match agent
            .post(&server.ops_url())
            .set("Content-Type", "application/json")
            .set("Authorization", &basic(ADMIN_USER, ADMIN_PASSWORD))
            .send_string(r#"{"operation":"get_configuration"}"#)
        {
            Ok(r) => (r.status(), r.into_string().unwrap_or_default()),
            Err(ureq::Error::Status(s, r)) => (s, r.into_string().unwrap_or_default()),
            Err(_) => (0, String::new()),
        };
        if status == 200 {
            break serde_json::from_str::<Value>(&body).expect("json");
        }
        assert!(
            Instant::now() < limit,
            "not back after a restart: {status} {body}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(server.pid(), pid);
    // Every new connection is served: no listener of the stopped server lives on in the new
    // image (one left in the port's SO_REUSEPORT group would take connections and never answer).
    for i in 0..20 {
        let agent = ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(10))
            .build();
        let answered = agent
            .post(&server.ops_url())
            .set("Content-Type", "application/json")
            .set("Authorization", &basic(ADMIN_USER, ADMIN_PASSWORD))
            .send_string(r#"{"operation":"user_info"}"#);
        assert!(
            answered.is_ok(),
            "connection {i} after the restart: {answered:?}"
        );
    }
    assert_eq!(
        config["logging"]["level"], "debug",
        "the stored setting is in force"
    );
    let (status, body) = send(
        &server,
        Admin,
        &json!({"operation": "search_by_id", "table": "Dog", "ids": ["kept"], "get_attributes": ["name"]}),
    );
    assert_eq!((status, &body), (200, &json!([{"name": "Kept"}])));
}
