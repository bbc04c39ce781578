//! `search_by_value` and `search_by_conditions` (docs/operations-api.md) against the real binary: indexed
//! searches on a few thousand records visit about as many records as they return (shown by the
//! `"explain": true` extension), random searches agree with a brute-force filter, values convert
//! to declared types, unknown attributes answer as REST does, and the answer streams in JSON, CBOR
//! and MessagePack alike.

mod common;

use std::cmp::Ordering;
use std::time::Duration;

use common::Server;
use serde_json::{json, Value};

const RECORDS: u64 = 3000;
const BREEDS: u64 = 30;

fn op_with(server: &Server, accept: Option<&str>, body: &Value) -> (u16, Vec<u8>) {
    let mut req = ureq::post(&server.ops_url())
        .timeout(Duration::from_secs(60))
        .set("Content-Type", "application/json");
    if let Some(accept) = accept {
        req = req.set("Accept", accept);
    }
    let resp = match req.send_string(&body.to_string()) {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("POST {body}: {e}"),
    };
    let status = resp.status();
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut resp.into_reader(), &mut bytes).expect("body");
    (status, bytes)
}

fn op(server: &Server, body: Value) -> (u16, Value) {
    let (status, bytes) = op_with(server, None, &body);
    let value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, value)
}

fn ok(server: &Server, body: Value) -> Value {
    let (status, reply) = op(server, body.clone());
    assert_eq!(status, 200, "{body} → {reply}");
    reply
}

/// The same operation with `"explain": true`.
fn explain(server: &Server, mut body: Value) -> Value {
    body["explain"] = json!(true);
    let reply = ok(server, body.clone());
    assert!(reply["plan"].is_string(), "{body} → {reply}");
    reply
}

fn ids(reply: &Value) -> Vec<u64> {
    reply
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {reply}"))
        .iter()
        .map(|r| r["id"].as_u64().unwrap_or_else(|| panic!("no id in {r}")))
        .collect()
}

/// A small deterministic generator, so a failure reproduces from the seed printed.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

/// Starts a server with `data.big`: RECORDS dogs created through the Operations API (so every
/// property is an indexed attribute).
fn big_table(seed: u64) -> (Server, Vec<Value>) {
    let server = Server::start();
    ok(
        &server,
        json!({"operation": "create_table", "table": "big", "primary_key": "id"}),
    );
    let mut rng = Lcg(seed);
    let records: Vec<Value> = (0..RECORDS)
        .map(|i| {
            let mut r = json!({
                "id": i,
                "breed": format!("breed{}", rng.next(BREEDS)),
                "age": rng.next(20),
                "name": format!("dog{}", rng.next(600)),
            });
            if rng.next(7) == 0 {
                r.as_object_mut().expect("object").remove("age");
            }
            r
        })
        .collect();
    for chunk in records.chunks(1000) {
        ok(
            &server,
            json!({"operation": "insert", "table": "big", "records": chunk}),
        );
    }
    (server, records)
}

#[test]
fn indexed_searches_visit_few_records() {
    let (server, records) = big_table(0xb16);
    let total = records.len() as u64;
    let count = |f: &dyn Fn(&Value) -> bool| records.iter().filter(|r| f(r)).count() as u64;

    // Equality on an indexed attribute: one index range, each candidate a match.
    let by_breed = json!({"operation": "search_by_value", "table": "big", "attribute": "breed", "value": "breed7"});
    let plan = explain(&server, by_breed.clone());
    let matches = count(&|r| r["breed"] == "breed7");
    assert!(matches > 0);
    assert_eq!(plan["index"], "breed", "{plan}");
    assert_eq!(plan["returned"], matches, "{plan}");
    assert_eq!(plan["records_visited"], matches, "{plan}");
    assert!(matches * 10 < total);
    assert_eq!(ids(&ok(&server, by_breed)).len() as u64, matches);

    // A limit stops the index scan early.
    let plan = explain(
        &server,
        json!({"operation": "search_by_value", "table": "big", "attribute": "breed", "value": "breed7", "limit": 3}),
    );
    assert_eq!(
        (plan["returned"].clone(), plan["records_visited"].clone()),
        (json!(3), json!(3)),
        "{plan}"
    );

    // Starts-with is an index range too.
    let plan = explain(
        &server,
        json!({"operation": "search_by_value", "table": "big", "attribute": "name", "value": "dog12*"}),
    );
    let matches = count(&|r| r["name"].as_str().is_some_and(|n| n.starts_with("dog12")));
    assert_eq!(plan["index"], "name", "{plan}");
    assert_eq!(plan["records_visited"], matches, "{plan}");
    assert!(matches * 10 < total);

    // `*` reads everything: the statistics are real.
    let plan = explain(
        &server,
        json!({"operation": "search_by_value", "table": "big", "attribute": "name", "value": "*"}),
    );
    assert_eq!(plan["records_visited"], total, "{plan}");
    assert_eq!(plan["index"], Value::Null, "{plan}");

    // Conditions: the most selective indexed condition drives, the rest filter.
    let plan = explain(
        &server,
        json!({"operation": "search_by_conditions", "table": "big", "conditions": [
            {"attribute": "age", "comparator": "between", "value": [3, 5]},
            {"attribute": "breed", "value": "breed3"}
        ]}),
    );
    let breed3 = count(&|r| r["breed"] == "breed3");
    let matches = count(&|r| {
        r["breed"] == "breed3" && r["age"].as_u64().is_some_and(|a| (3..=5).contains(&a))
    });
    assert_eq!(plan["index"], "breed", "{plan}");
    assert_eq!(plan["returned"], matches, "{plan}");
    assert_eq!(plan["records_visited"], breed3, "{plan}");
    assert!(breed3 * 10 < total);

    // An OR of indexed conditions is a union of index ranges.
    let plan = explain(
        &server,
        json!({"operation": "search_by_conditions", "table": "big", "operator": "or", "conditions": [
            {"attribute": "breed", "value": "breed1"},
            {"operator": "and", "conditions": [
                {"attribute": "age", "comparator": "greater_than_equal", "value": 19},
                {"attribute": "name", "comparator": "starts_with", "value": "dog57"}
            ]}
        ]}),
    );
    let plan_text = plan["plan"].as_str().unwrap_or("");
    assert!(plan_text.starts_with("union("), "{plan}");
    let matches = count(&|r| {
        r["breed"] == "breed1"
            || (r["age"].as_u64().is_some_and(|a| a >= 19)
                && r["name"].as_str().is_some_and(|n| n.starts_with("dog57")))
    });
    assert_eq!(plan["returned"], matches, "{plan}");
    let visited = plan["records_visited"].as_u64().unwrap_or(u64::MAX);
    assert!(visited * 5 < total, "{plan}");

    // Sorted and paged: matches are sorted by key, only the page is read again.
    let plan = explain(
        &server,
        json!({"operation": "search_by_conditions", "table": "big", "conditions": [{"attribute": "breed", "value": "breed9"}],
               "sort": {"attribute": "age", "descending": true}, "offset": 2, "limit": 4}),
    );
    let breed9 = count(&|r| r["breed"] == "breed9");
    assert_eq!(plan["returned"], 4, "{plan}");
    assert_eq!(plan["records_visited"], breed9 + 4, "{plan}");
}

/// `value` of one condition for the brute-force check (missing reads as null).
fn brute(record: &Value, condition: &Value) -> bool {
    if let Some(group) = condition.get("conditions") {
        let items = group.as_array().expect("conditions array");
        return if condition["operator"] == "or" {
            items.iter().any(|c| brute(record, c))
        } else {
            items.iter().all(|c| brute(record, c))
        };
    }
    let attr = condition["attribute"].as_str().expect("attribute");
    let v = &record[attr];
    let want = &condition["value"];
    let num = |x: &Value| x.as_f64();
    let text = |f: fn(&str, &str) -> bool| {
        v.as_str()
            .is_some_and(|s| f(s, want.as_str().expect("text value")))
    };
    match condition["comparator"].as_str().unwrap_or("equals") {
        "equals" => v == want,
        "not_equal" => v != want,
        "greater_than" => matches!((num(v), num(want)), (Some(a), Some(b)) if a > b),
        "greater_than_equal" => matches!((num(v), num(want)), (Some(a), Some(b)) if a >= b),
        "less_than" => matches!((num(v), num(want)), (Some(a), Some(b)) if a < b),
        "less_than_equal" => matches!((num(v), num(want)), (Some(a), Some(b)) if a <= b),
        "between" => matches!(
            (num(v), num(&want[0]), num(&want[1])),
            (Some(a), Some(lo), Some(hi)) if a >= lo && a <= hi
        ),
        "starts_with" => text(|s, w| s.starts_with(w)),
        "ends_with" => text(|s, w| s.ends_with(w)),
        "contains" => text(|s, w| s.contains(w)),
        other => panic!("comparator {other}"),
    }
}

/// Orders two present values of one attribute (strings or numbers).
fn cmp_values(a: &Value, b: &Value) -> Ordering {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x.total_cmp(&y),
        _ => a.as_str().cmp(&b.as_str()),
    }
}

/// Sorts by `keys` (attribute, descending) with null/missing first, ties by id.
fn brute_sort(records: &mut [Value], keys: &[(&str, bool)]) {
    records.sort_by(|a, b| {
        for (attr, descending) in keys {
            let x = a.get(*attr).filter(|v| !v.is_null());
            let y = b.get(*attr).filter(|v| !v.is_null());
            let order = match (x, y) {
                (None, None) => Ordering::Equal,
                (None, Some(_)) => Ordering::Less,
                (Some(_), None) => Ordering::Greater,
                (Some(x), Some(y)) => cmp_values(x, y),
            };
            let order = if *descending { order.reverse() } else { order };
            if order != Ordering::Equal {
                return order;
            }
        }
        a["id"].as_u64().cmp(&b["id"].as_u64())
    });
}

#[test]
fn search_by_conditions_agrees_with_brute_force_on_a_big_table() {
    let seed = 0x05ee_db16_u64;
    let (server, records) = big_table(seed);
    let mut rng = Lcg(seed ^ 0xc0de);
    let comparators = [
        "equals",
        "not_equal",
        "greater_than",
        "greater_than_equal",
        "less_than",
        "less_than_equal",
        "between",
        "starts_with",
        "ends_with",
        "contains",
    ];
    let leaf = |rng: &mut Lcg| -> Value {
        let comparator = comparators[rng.next(comparators.len() as u64) as usize];
        match comparator {
            "starts_with" | "ends_with" | "contains" => {
                json!({"attribute": "name", "comparator": comparator, "value": format!("{}", rng.next(60))})
            }
            "between" => {
                let lo = rng.next(18);
                json!({"attribute": "age", "comparator": "between", "value": [lo, lo + rng.next(4)]})
            }
            "equals" | "not_equal" if rng.next(2) == 0 => {
                json!({"attribute": "breed", "comparator": comparator, "value": format!("breed{}", rng.next(BREEDS))})
            }
            _ => json!({"attribute": "age", "comparator": comparator, "value": rng.next(20)}),
        }
    };
    let sorts: [&[(&str, bool)]; 4] = [
        &[("breed", false), ("age", true)],
        &[("age", false)],
        &[("name", true), ("age", false)],
        &[("age", true), ("breed", true)],
    ];
    let mut nonempty = 0;
    let mut indexed = 0;
    for round in 0..40 {
        let mut conditions = vec![leaf(&mut rng)];
        if rng.next(2) == 0 {
            let inner = json!({"operator": if rng.next(2) == 0 { "or" } else { "and" }, "conditions": [leaf(&mut rng), leaf(&mut rng)]});
            conditions.push(
                json!({"operator": if rng.next(2) == 0 { "or" } else { "and" }, "conditions": [leaf(&mut rng), inner]}),
            );
        }
        let operator = if rng.next(3) == 0 { "or" } else { "and" };
        let top = json!({"operator": operator, "conditions": conditions});
        let mut expected: Vec<Value> = records.iter().filter(|r| brute(r, &top)).cloned().collect();
        let mut body = json!({"operation": "search_by_conditions", "table": "big", "operator": operator,
                              "conditions": top["conditions"], "get_attributes": ["id", "age"]});
        let paged = rng.next(3) != 0;
        let (offset, limit) = (rng.next(5), 1 + rng.next(50));
        if paged {
            let keys = sorts[rng.next(sorts.len() as u64) as usize];
            brute_sort(&mut expected, keys);
            let mut sort = Value::Null;
            for (attr, descending) in keys.iter().rev() {
                let mut key = json!({"attribute": attr, "descending": descending});
                if !sort.is_null() {
                    key["next"] = sort;
                }
                sort = key;
            }
            body["sort"] = sort;
            body["offset"] = json!(offset);
            body["limit"] = json!(limit);
        }
        let want: Vec<u64> = expected
            .iter()
            .skip(if paged { offset as usize } else { 0 })
            .take(if paged { limit as usize } else { usize::MAX })
            .map(|r| r["id"].as_u64().expect("id"))
            .collect();
        let reply = ok(&server, body.clone());
        let mut got = ids(&reply);
        if !paged {
            // Without a sort the order is the access path's: compare as sets.
            got.sort_unstable();
        }
        let mut want_sorted = want.clone();
        if !paged {
            want_sorted.sort_unstable();
        }
        assert_eq!(got, want_sorted, "seed {seed:#x} round {round}: {body}");
        // Projection keeps only the asked-for attributes.
        for r in reply.as_array().into_iter().flatten() {
            assert!(
                r.as_object()
                    .is_some_and(|o| o.keys().all(|k| k == "id" || k == "age")),
                "{r}"
            );
        }
        let plan = explain(&server, body.clone());
        assert_eq!(plan["returned"], want.len(), "round {round}: {plan}");
        if plan["index"].is_string() {
            indexed += 1;
            let visited = plan["records_visited"].as_u64().unwrap_or(u64::MAX);
            assert!(visited < RECORDS, "round {round}: {plan}");
        }
        nonempty += usize::from(!got.is_empty());
    }
    assert!(nonempty >= 10, "only {nonempty} rounds matched anything");
    assert!(indexed >= 5, "only {indexed} rounds used an index");
}

#[test]
fn search_by_value_agrees_with_brute_force_on_a_big_table() {
    let seed = 0x5bf_u64;
    let (server, records) = big_table(seed);
    let mut rng = Lcg(seed ^ 0xbeef);
    for round in 0..40 {
        let n = rng.next(70);
        // (attribute, value, test, ordered by the attribute's index)
        type Test = Box<dyn Fn(&Value) -> bool>;
        let (attribute, value, test, by_index): (&str, Value, Test, bool) = match rng.next(6) {
            0 => {
                let p = format!("dog{n}");
                let q = p.clone();
                (
                    "name",
                    json!(format!("{p}*")),
                    Box::new(move |v: &Value| v.as_str().is_some_and(|s| s.starts_with(&q))),
                    true,
                )
            }
            1 => {
                let p = format!("{}", n % 10);
                let q = p.clone();
                (
                    "name",
                    json!(format!("*{p}")),
                    Box::new(move |v: &Value| v.as_str().is_some_and(|s| s.ends_with(&q))),
                    false,
                )
            }
            2 => {
                let p = format!("{n}");
                let q = p.clone();
                (
                    "name",
                    json!(format!("*{p}*")),
                    Box::new(move |v: &Value| v.as_str().is_some_and(|s| s.contains(&q))),
                    false,
                )
            }
            3 => {
                let b = format!("breed{}", n % BREEDS);
                let c = b.clone();
                (
                    "breed",
                    json!(b),
                    Box::new(move |v: &Value| v.as_str() == Some(c.as_str())),
                    true,
                )
            }
            // A numeric string finds the numbers: type conversion on an untyped attribute.
            4 => {
                let a = n % 20;
                (
                    "age",
                    json!(a.to_string()),
                    Box::new(move |v: &Value| v.as_u64() == Some(a)),
                    false,
                )
            }
            _ => ("age", json!("*"), Box::new(|_: &Value| true), false),
        };
        let desc = rng.next(2) == 0;
        let paged = rng.next(2) == 0;
        let (offset, limit) = (rng.next(5), 1 + rng.next(40));
        let mut expected: Vec<Value> = records
            .iter()
            .filter(|r| test(r.get(attribute).unwrap_or(&Value::Null)))
            .cloned()
            .collect();
        // The documented order: the attribute's index order when it drives, else key order;
        // `desc` reverses either.
        let keys: &[(&str, bool)] = if by_index { &[(attribute, false)] } else { &[] };
        brute_sort(&mut expected, keys);
        if desc {
            expected.reverse();
        }
        let mut body = json!({"operation": "search_by_value", "table": "big", "attribute": attribute,
                              "value": value, "get_attributes": ["id"], "desc": desc});
        if paged {
            body["offset"] = json!(offset);
            body["limit"] = json!(limit);
        }
        let want: Vec<u64> = expected
            .iter()
            .skip(if paged { offset as usize } else { 0 })
            .take(if paged { limit as usize } else { usize::MAX })
            .map(|r| r["id"].as_u64().expect("id"))
            .collect();
        let got = ids(&ok(&server, body.clone()));
        assert_eq!(got, want, "seed {seed:#x} round {round}: {body}");
        let plan = explain(&server, body.clone());
        assert_eq!(plan["returned"], want.len(), "round {round}: {plan}");
        if by_index {
            assert_eq!(plan["index"], attribute, "round {round}: {plan}");
        }
    }
}

#[test]
fn values_convert_and_unknown_attributes_answer_as_rest_does() {
    let server = Server::start();
    // `data.Dog` comes from the example app's schema (age: Int, owner unindexed).
    ok(
        &server,
        json!({"operation": "insert", "table": "Dog", "records": [
            {"id": "1", "name": "Rex", "breed": "Lab", "age": 5, "owner": "ann"},
            {"id": "2", "name": "Max", "breed": "Pug", "age": 7, "owner": "bob"},
            {"id": "3", "name": "Rexa", "breed": "Lab", "age": 5}
        ]}),
    );
    let sbv = |attribute: &str, value: Value| {
        op(
            &server,
            json!({"operation": "search_by_value", "table": "Dog", "attribute": attribute, "value": value, "get_attributes": ["id"]}),
        )
    };
    let id_list = |reply: &Value| -> Vec<String> {
        reply
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| r["id"].as_str().unwrap_or("").to_string())
            .collect()
    };
    // Text converts to the declared Int.
    let (status, reply) = sbv("age", json!("5"));
    assert_eq!(
        (status, id_list(&reply)),
        (200, vec!["1".into(), "3".into()])
    );
    let (status, reply) = sbv("age", json!(7));
    assert_eq!((status, id_list(&reply)), (200, vec!["2".into()]));
    let (status, reply) = sbv("age", json!("abc"));
    assert_eq!(status, 400, "{reply}");
    assert_eq!(
        reply["error"],
        "Invalid value for attribute age: \"abc\", expecting Int"
    );
    // An unindexed attribute of a schema table: a filtered scan.
    let (status, reply) = sbv("owner", json!("ann"));
    assert_eq!((status, id_list(&reply)), (200, vec!["1".into()]));
    // Unknown attributes: 404 with REST's message, for every pattern and for conditions.
    let rest = ureq::get(&server.url("/Dog/?color=red")).call();
    let Err(ureq::Error::Status(404, rest)) = rest else {
        panic!("REST should answer 404")
    };
    let rest: Value =
        serde_json::from_str(&rest.into_string().unwrap_or_default()).unwrap_or(Value::Null);
    for value in [json!("red"), json!("*"), json!("r*"), json!("*d*")] {
        let (status, reply) = sbv("color", value.clone());
        assert_eq!(status, 404, "{value}: {reply}");
        assert_eq!(reply["error"], rest["error"], "{value}");
    }
    let (status, reply) = op(
        &server,
        json!({"operation": "search_by_conditions", "table": "Dog", "conditions": [{"attribute": "color", "value": "red"}]}),
    );
    assert_eq!(
        (status, reply["error"].clone()),
        (404, rest["error"].clone())
    );
    let (status, reply) = op(
        &server,
        json!({"operation": "search_by_conditions", "table": "Dog", "conditions": [{"attribute": "name", "value": "Rex"}], "sort": {"attribute": "color"}}),
    );
    assert_eq!(status, 404, "{reply}");
    // An unindexed condition on a schema table is a filtered scan, and still right.
    let plan = explain(
        &server,
        json!({"operation": "search_by_value", "table": "Dog", "attribute": "owner", "value": "bob"}),
    );
    assert_eq!(
        (plan["index"].clone(), plan["returned"].clone()),
        (Value::Null, json!(1))
    );

    // An ops-created table takes any attribute: unknown ones match nothing.
    ok(
        &server,
        json!({"operation": "create_table", "table": "mixed", "primary_key": "id"}),
    );
    ok(
        &server,
        json!({"operation": "insert", "table": "mixed", "records": [
            {"id": 1, "v": 5}, {"id": 2, "v": "5"}, {"id": 3, "v": "five"},
            {"id": 4, "v": true}, {"id": 5, "v": "true"}, {"id": 6, "v": 5.5}
        ]}),
    );
    let mixed = |attribute: &str, value: Value| -> Vec<u64> {
        ids(&ok(
            &server,
            json!({"operation": "search_by_value", "table": "mixed", "attribute": attribute, "value": value}),
        ))
    };
    assert_eq!(mixed("nope", json!("x")), Vec::<u64>::new());
    assert_eq!(mixed("nope", json!("x*")), Vec::<u64>::new());
    assert_eq!(mixed("nope", json!("*")).len(), 6);
    let mut found = mixed("v", json!("5"));
    found.sort_unstable();
    assert_eq!(found, vec![1, 2]);
    let mut found = mixed("v", json!(5));
    found.sort_unstable();
    assert_eq!(found, vec![1, 2]);
    let mut found = mixed("v", json!("true"));
    found.sort_unstable();
    assert_eq!(found, vec![4, 5]);
    assert_eq!(mixed("v", json!("5.5")), vec![6]);
    assert_eq!(mixed("v", json!("five")), vec![3]);
    assert_eq!(mixed("v", json!("fi*")), vec![3]);
    assert_eq!(mixed("id", json!("3")), vec![3]);
    let (status, reply) = op(
        &server,
        json!({"operation": "search_by_conditions", "table": "mixed", "conditions": [{"attribute": "nope", "comparator": "greater_than", "value": 1}]}),
    );
    assert_eq!((status, reply), (200, json!([])));
}

#[test]
fn search_answers_stream_in_every_encoding() {
    let (server, records) = big_table(0xc0b);
    let body = json!({"operation": "search_by_conditions", "table": "big",
                      "conditions": [{"attribute": "breed", "value": "breed4"}],
                      "sort": {"attribute": "id", "descending": true}});
    let mut expected: Vec<Value> = records
        .iter()
        .filter(|r| r["breed"] == "breed4")
        .cloned()
        .collect();
    expected.reverse();
    let json_reply = ok(&server, body.clone());
    let json_ids = ids(&json_reply);
    let want: Vec<u64> = expected
        .iter()
        .map(|r| r["id"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(json_ids, want);
    // Whole records come back as stored (plus the timestamps the table adds).
    for (got, want) in json_reply.as_array().into_iter().flatten().zip(&expected) {
        for (k, v) in want.as_object().into_iter().flatten() {
            assert_eq!(&got[k], v, "{got}");
        }
    }

    let (status, bytes) = op_with(&server, Some("application/cbor"), &body);
    assert_eq!(status, 200);
    let cbor: Value = ciborium::from_reader(&bytes[..]).expect("CBOR array");
    assert_eq!(cbor, json_reply);

    let (status, bytes) = op_with(&server, Some("application/x-msgpack"), &body);
    assert_eq!(status, 200);
    let mut slice = &bytes[..];
    let packed = rmpv::decode::read_value(&mut slice).expect("MessagePack array");
    assert!(slice.is_empty(), "{} bytes after the array", slice.len());
    let packed_ids: Vec<u64> = packed
        .as_array()
        .expect("array")
        .iter()
        .map(|r| {
            r.as_map()
                .and_then(|m| m.iter().find(|(k, _)| k.as_str() == Some("id")))
                .and_then(|(_, v)| v.as_u64())
                .expect("id")
        })
        .collect();
    assert_eq!(packed_ids, want);

    // Empty answers are empty arrays in each encoding; errors are error objects.
    let none = json!({"operation": "search_by_value", "table": "big", "attribute": "breed", "value": "none"});
    assert_eq!(ok(&server, none.clone()), json!([]));
    let (_, bytes) = op_with(&server, Some("application/cbor"), &none);
    let cbor: Value = ciborium::from_reader(&bytes[..]).expect("CBOR");
    assert_eq!(cbor, json!([]));
    let (_, bytes) = op_with(&server, Some("application/x-msgpack"), &none);
    let packed = rmpv::decode::read_value(&mut &bytes[..]).expect("MessagePack");
    assert_eq!(packed.as_array().map(Vec::len), Some(0));
    let bad = json!({"operation": "search_by_conditions", "table": "big",
                     "conditions": [{"attribute": "age", "comparator": "between", "value": 3}]});
    let (status, bytes) = op_with(&server, Some("application/x-msgpack"), &bad);
    assert_eq!(status, 400);
    let packed = rmpv::decode::read_value(&mut &bytes[..]).expect("MessagePack");
    assert!(packed
        .as_map()
        .is_some_and(|m| m.iter().any(|(k, _)| k.as_str() == Some("error"))));
    // The explain document follows Accept too.
    let mut explained = body.clone();
    explained["explain"] = json!(true);
    let (_, bytes) = op_with(&server, Some("application/cbor"), &explained);
    let cbor: Value = ciborium::from_reader(&bytes[..]).expect("CBOR");
    assert_eq!(cbor["returned"], want.len());
}
