//! Store tests on a real LMDB environment in a temporary folder.

use std::ops::Bound;
use std::sync::{Arc, Mutex};

use super::*;
use crate::schema::parse_schema_str;
use crate::value::{json, Value};

const SCHEMA: &str = "type Dog @table @export { id: ID @primaryKey name: String @indexed tags: [String] @indexed age: Int created: Long @createdTime updated: Long @updatedTime }
type Counter @table { n: Long @primaryKey v: Int }";

fn open(dir: &std::path::Path, commits: Arc<Mutex<Vec<Arc<Commit>>>>) -> Arc<Store> {
    let publisher: Publisher =
        Arc::new(move |c: &[Arc<Commit>]| commits.lock().unwrap().extend_from_slice(c));
    let store = Store::open(StoreOptions::new(dir), publisher).unwrap();
    store
        .apply_schema(&parse_schema_str(SCHEMA, "t.graphql").unwrap().tables)
        .unwrap();
    store
}

fn put(table: &str, key: Option<Value>, body: &str, mode: PutMode) -> WriteOp {
    WriteOp::Put {
        table: table.into(),
        key,
        record: json::parse(body.as_bytes()).unwrap(),
        mode,
        expires_in_s: None,
    }
}

fn write(db: &Database, ops: Vec<WriteOp>) -> Result<WriteOutcome, WriteError> {
    let rx = db.submit(WriteRequest {
        ops,
        ..Default::default()
    })?;
    futures_lite_block_on(rx).expect("writer replied")
}

/// The writer replies through a oneshot meant for a core; a test thread just polls it.
fn futures_lite_block_on<F: std::future::Future>(f: F) -> F::Output {
    use std::task::{Context, Poll, RawWaker, RawWakerVTable, Waker};
    fn noop(_: *const ()) {}
    fn clone(_: *const ()) -> RawWaker {
        RawWaker::new(std::ptr::null(), &VTABLE)
    }
    static VTABLE: RawWakerVTable = RawWakerVTable::new(clone, noop, noop, noop);
    // SAFETY: the vtable's functions ignore the data pointer.
    let waker = unsafe { Waker::from_raw(RawWaker::new(std::ptr::null(), &VTABLE)) };
    let mut cx = Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

fn get_json(db: &Database, table: &str, key: &Value) -> Option<String> {
    let t = db.table(table).unwrap();
    let txn = db.read().unwrap();
    txn.get(&t, key)
        .unwrap()
        .map(|r| String::from_utf8(json::to_vec(r.value)).unwrap())
}

fn index_keys_for(db: &Database, table: &str, attr: &str, value: &Value) -> Vec<Value> {
    let t = db.table(table).unwrap();
    let txn = db.read().unwrap();
    let mut k = Vec::new();
    crate::value::key::encode_index_prefix(value, &mut k);
    txn.index_range(&t, attr, Bound::Included(&k), Bound::Included(&k), false)
        .unwrap()
        .map(|r| crate::value::key::decode(r.unwrap().1).unwrap())
        .collect()
}

#[test]
fn put_get_merge_delete_and_indexes() {
    let dir = tempfile::tempdir().unwrap();
    let commits = Arc::new(Mutex::new(Vec::new()));
    let store = open(dir.path(), commits.clone());
    let db = store.database("data").unwrap();
    let one = Value::String("1".into());
    let created = first_put_is_indexed(&db, &one);
    insert_skips_and_upsert_merges(&db, &one, created);
    replace_drops_absent_and_delete_unindexes(&db, &one, created);
    generated_keys(&db);

    // Versions increase; every committed request was published once.
    let commits = commits.lock().unwrap();
    assert!(commits.windows(2).all(|w| w[0].version < w[1].version));
    assert_eq!(
        commits.len(),
        7,
        "the skipped insert changed nothing and published nothing"
    );
}

/// A first put: stored under the URL id, indexed by each value; returns its `@createdTime`.
fn first_put_is_indexed(db: &Database, one: &Value) -> i64 {
    let out = write(
        db,
        vec![put(
            "Dog",
            Some(one.clone()),
            r#"{"name":"Rex","tags":["a","b"],"age":3,"id":"ignored"}"#,
            PutMode::Replace,
        )],
    )
    .unwrap();
    assert_eq!(
        out.results,
        vec![OpResult::Written {
            key: one.clone(),
            created: true
        }]
    );
    let rec: serde_json::Value = serde_json::from_str(&get_json(db, "Dog", one).unwrap()).unwrap();
    assert_eq!(rec["id"], "1", "URL id wins over the body's");
    assert_eq!(rec["name"], "Rex");
    let created = rec["created"].as_i64().unwrap();
    assert_eq!(
        index_keys_for(db, "Dog", "name", &Value::String("Rex".into())),
        vec![one.clone()]
    );
    assert_eq!(
        index_keys_for(db, "Dog", "tags", &Value::String("b".into())),
        vec![one.clone()]
    );
    created
}

fn insert_skips_and_upsert_merges(db: &Database, one: &Value, created: i64) {
    // Insert on an existing key skips; upsert merges and keeps @createdTime.
    let out = write(
        db,
        vec![put(
            "Dog",
            Some(one.clone()),
            r#"{"name":"Max"}"#,
            PutMode::Insert,
        )],
    )
    .unwrap();
    assert_eq!(out.results, vec![OpResult::Skipped { key: one.clone() }]);
    write(
        db,
        vec![put(
            "Dog",
            Some(one.clone()),
            r#"{"name":"Max","tags":["b","c"]}"#,
            PutMode::Upsert,
        )],
    )
    .unwrap();
    let rec: serde_json::Value = serde_json::from_str(&get_json(db, "Dog", one).unwrap()).unwrap();
    assert_eq!(
        (
            rec["name"].as_str(),
            rec["age"].as_i64(),
            rec["created"].as_i64()
        ),
        (Some("Max"), Some(3), Some(created))
    );
    assert!(
        index_keys_for(db, "Dog", "name", &Value::String("Rex".into())).is_empty(),
        "old index entry removed"
    );
    assert!(index_keys_for(db, "Dog", "tags", &Value::String("a".into())).is_empty());
    assert_eq!(
        index_keys_for(db, "Dog", "tags", &Value::String("c".into())),
        vec![one.clone()]
    );
}

fn replace_drops_absent_and_delete_unindexes(db: &Database, one: &Value, created: i64) {
    // Replace drops absent properties.
    write(
        db,
        vec![put(
            "Dog",
            Some(one.clone()),
            r#"{"age":6}"#,
            PutMode::Replace,
        )],
    )
    .unwrap();
    let rec: serde_json::Value = serde_json::from_str(&get_json(db, "Dog", one).unwrap()).unwrap();
    assert!(rec.get("name").is_none());
    assert_eq!(rec["created"].as_i64(), Some(created));

    let out = write(
        db,
        vec![WriteOp::Delete {
            table: "Dog".into(),
            key: one.clone(),
        }],
    )
    .unwrap();
    assert_eq!(
        out.results,
        vec![OpResult::Deleted {
            key: one.clone(),
            existed: true
        }]
    );
    assert_eq!(get_json(db, "Dog", one), None);
    assert!(
        index_keys_for(db, "Dog", "name", &Value::Null).is_empty(),
        "tombstones are not indexed"
    );
}

fn generated_keys(db: &Database) {
    // Generated keys: UUID for ID, max + 1 for Long.
    let out = write(
        db,
        vec![put("Dog", None, r#"{"name":"Gen"}"#, PutMode::Insert)],
    )
    .unwrap();
    let OpResult::Written {
        key: Value::String(uuid),
        ..
    } = &out.results[0]
    else {
        panic!("{out:?}")
    };
    assert_eq!(uuid.len(), 36);
    write(
        db,
        vec![put("Counter", Some(Value::Int(41)), "{}", PutMode::Replace)],
    )
    .unwrap();
    let out = write(db, vec![put("Counter", None, "{}", PutMode::Insert)]).unwrap();
    assert_eq!(
        out.results[0],
        OpResult::Written {
            key: Value::Int(42),
            created: true
        }
    );
}

#[test]
fn a_failing_op_rolls_back_its_whole_request_only() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), Arc::new(Mutex::new(Vec::new())));
    let db = store.database("data").unwrap();
    let err = write(
        &db,
        vec![
            put(
                "Dog",
                Some(Value::String("a".into())),
                r#"{"name":"A"}"#,
                PutMode::Replace,
            ),
            put(
                "Counter",
                Some(Value::Int(1)),
                r#"{"v":1}"#,
                PutMode::Replace,
            ),
            put("Dog", Some(Value::Bool(true)), "{}", PutMode::Replace),
        ],
    )
    .unwrap_err();
    assert!(matches!(err, WriteError::Invalid(_)), "{err:?}");
    assert_eq!(
        get_json(&db, "Dog", &Value::String("a".into())),
        None,
        "nothing of the failed request stays"
    );
    assert_eq!(get_json(&db, "Counter", &Value::Int(1)), None);
    assert!(write(&db, vec![put("Nope", None, "{}", PutMode::Insert)]).is_err());
    write(
        &db,
        vec![put(
            "Dog",
            Some(Value::String("b".into())),
            "{}",
            PutMode::Replace,
        )],
    )
    .unwrap();
    assert!(get_json(&db, "Dog", &Value::String("b".into())).is_some());
}

#[test]
fn a_failed_condition_rolls_back_the_request_and_writes_no_audit_entry() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), Arc::new(Mutex::new(Vec::new())));
    let db = store.database("data").unwrap();
    let key = Value::String("a".into());
    let require = |condition| WriteOp::Require {
        table: "Dog".into(),
        key: key.clone(),
        condition,
    };
    let dog = |name: &str| {
        let body = format!(r#"{{"name":"{name}"}}"#);
        put("Dog", Some(key.clone()), &body, PutMode::Replace)
    };
    let first = write(&db, vec![require(Condition::Absent), dog("A")]).unwrap();
    // A condition adds no result: the put's is the only one.
    assert_eq!(first.results.len(), 1);
    let audited = || {
        let txn = db.read().unwrap();
        let n = txn
            .audit_range(Bound::Unbounded, Bound::Unbounded)
            .unwrap()
            .count();
        n
    };
    assert_eq!(audited(), 1);
    for (condition, failed) in [
        (Condition::Absent, ConditionFailed::Exists(key.clone())),
        (
            Condition::VersionIn(vec![first.version - 1.0]),
            ConditionFailed::VersionMismatch,
        ),
        (
            Condition::Rights {
                insert: true,
                update: false,
            },
            ConditionFailed::MayNotUpdate,
        ),
    ] {
        let err = write(
            &db,
            vec![
                put(
                    "Counter",
                    Some(Value::Int(1)),
                    r#"{"v":1}"#,
                    PutMode::Replace,
                ),
                require(condition),
                dog("B"),
            ],
        )
        .unwrap_err();
        assert_eq!(err, WriteError::Condition(failed));
        assert_eq!(get_json(&db, "Counter", &Value::Int(1)), None);
        assert!(get_json(&db, "Dog", &key)
            .unwrap()
            .contains(r#""name":"A""#));
        assert_eq!(audited(), 1, "a refused request leaves no audit entry");
    }
    write(
        &db,
        vec![require(Condition::VersionIn(vec![first.version])), dog("C")],
    )
    .unwrap();
    assert!(get_json(&db, "Dog", &key)
        .unwrap()
        .contains(r#""name":"C""#));
}

#[test]
fn data_and_new_indexes_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path(), Arc::new(Mutex::new(Vec::new())));
        let db = store.database("data").unwrap();
        for i in 0..50 {
            write(
                &db,
                vec![put(
                    "Dog",
                    Some(Value::Int(i)),
                    &format!(r#"{{"name":"n{}","age":{}}}"#, i % 5, i % 7),
                    PutMode::Replace,
                )],
            )
            .unwrap();
        }
        store.close();
    }
    // Reopen with `age` newly indexed: it is backfilled.
    let publisher: Publisher = Arc::new(|_| {});
    let store = Store::open(StoreOptions::new(dir.path()), publisher).unwrap();
    let schema = SCHEMA
        .replace("age: Int", "age: Int @indexed")
        .replace("name: String @indexed", "name: String");
    store
        .apply_schema(&parse_schema_str(&schema, "t.graphql").unwrap().tables)
        .unwrap();
    let db = store.database("data").unwrap();
    let t = db.table("Dog").unwrap();
    assert!(t.indexed("age") && !t.indexed("name"));
    let sixes = index_keys_for(&db, "Dog", "age", &Value::Int(6));
    assert_eq!(
        sixes,
        vec![
            Value::Int(6),
            Value::Int(13),
            Value::Int(20),
            Value::Int(27),
            Value::Int(34),
            Value::Int(41),
            Value::Int(48)
        ]
    );
    assert_eq!(db.read().unwrap().count(&t).unwrap(), 50);
    store.close();
}

/// Runs `requests` on a fresh store; returns the index checker's problems and Dog's record count.
fn check_after(schema: &str, requests: Vec<Vec<WriteOp>>, pause_ms: u64) -> (Vec<String>, u64) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(StoreOptions::new(dir.path()), Arc::new(|_| {})).unwrap();
    store
        .apply_schema(&parse_schema_str(schema, "t.graphql").unwrap().tables)
        .unwrap();
    let db = store.database("data").unwrap();
    for ops in requests {
        // A failing request is part of some cases; its rollback must leave the indexes intact.
        let _ = write(&db, ops);
        std::thread::sleep(std::time::Duration::from_millis(pause_ms));
    }
    let report = db.check_indexes().unwrap();
    assert!(report.tables_checked >= 1 && report.indexes_checked >= 1);
    let count = db.read().unwrap().count(&db.table("Dog").unwrap()).unwrap();
    store.close();
    (report.problems, count)
}

/// A JSON list of tags `t<i mod wrap>` for `range`: `wrap` below the range's end repeats tags.
fn tags_json(range: std::ops::Range<u32>, wrap: u32) -> String {
    let tags: Vec<String> = range.map(|i| format!("t{}", i % wrap)).collect();
    serde_json::to_string(&tags).unwrap()
}

#[test]
fn indexes_stay_consistent_with_their_tables() {
    let s = |k: &str| Some(Value::String(k.into()));
    let del = |k: &str| WriteOp::Delete {
        table: "Dog".into(),
        key: Value::String(k.into()),
    };
    let cases: Vec<(&str, Vec<Vec<WriteOp>>)> = vec![
        (
            "replace, merge, delete, re-create",
            vec![
                vec![put(
                    "Dog",
                    s("a"),
                    r#"{"name":"A","tags":["x","y"]}"#,
                    PutMode::Replace,
                )],
                vec![put(
                    "Dog",
                    s("a"),
                    r#"{"tags":["y","z","z"]}"#,
                    PutMode::Upsert,
                )],
                vec![put("Dog", s("b"), r#"{"name":"A"}"#, PutMode::Insert)],
                vec![put("Dog", s("b"), r#"{"name":"B"}"#, PutMode::Insert)],
                vec![put("Dog", s("c"), r#"{"name":"C"}"#, PutMode::Update)],
                vec![del("a")],
                vec![del("a")],
                vec![put("Dog", s("a"), r#"{"tags":[]}"#, PutMode::Replace)],
            ],
        ),
        (
            "a failed request leaves no entries behind",
            vec![vec![
                put(
                    "Dog",
                    s("d"),
                    r#"{"name":"D","tags":["q"]}"#,
                    PutMode::Replace,
                ),
                put("Dog", Some(Value::Bool(true)), "{}", PutMode::Replace),
            ]],
        ),
        (
            "many ops on one key in one request",
            vec![vec![
                put("Dog", s("e"), r#"{"name":"E1"}"#, PutMode::Replace),
                put("Dog", s("e"), r#"{"name":"E2"}"#, PutMode::Replace),
                del("e"),
                put(
                    "Dog",
                    s("e"),
                    r#"{"name":"E3","tags":["t"]}"#,
                    PutMode::Upsert,
                ),
            ]],
        ),
        (
            "a long list with duplicates, then one sharing half of it",
            vec![
                vec![put(
                    "Dog",
                    s("g"),
                    &format!(r#"{{"tags":{}}}"#, tags_json(0..2000, 1500)),
                    PutMode::Replace,
                )],
                vec![put(
                    "Dog",
                    s("g"),
                    &format!(r#"{{"tags":{}}}"#, tags_json(1000..3000, 3000)),
                    PutMode::Replace,
                )],
            ],
        ),
        (
            "long values indexed by prefix",
            vec![
                vec![put(
                    "Dog",
                    s("f"),
                    &format!(r#"{{"name":"{}"}}"#, "n".repeat(600)),
                    PutMode::Replace,
                )],
                vec![put(
                    "Dog",
                    s("f"),
                    &format!(r#"{{"name":"{}m"}}"#, "n".repeat(600)),
                    PutMode::Replace,
                )],
            ],
        ),
    ];
    for (name, requests) in cases {
        assert_eq!(
            check_after(SCHEMA, requests, 0).0,
            Vec::<String>::new(),
            "{name}"
        );
    }
}

#[test]
fn rewriting_an_expired_record_leaves_no_stale_index_entries() {
    // Expired records keep their index entries until the sweep; a write over one must still
    // replace them, or the index points at a value the record no longer has.
    let schema = "type Dog @table(expiration: 1) { id: ID @primaryKey name: String @indexed }";
    let one = || Some(Value::String("1".into()));
    let (problems, count) = check_after(
        schema,
        vec![
            vec![put("Dog", one(), r#"{"name":"Old"}"#, PutMode::Replace)],
            vec![put("Dog", one(), r#"{"name":"New"}"#, PutMode::Replace)],
        ],
        1100,
    );
    assert_eq!(problems, Vec::<String>::new());
    assert_eq!(
        count, 1,
        "the expired record was still counted; its rewrite is not a second one"
    );
}

#[test]
fn the_index_checker_reports_stray_and_missing_entries() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), Arc::new(Mutex::new(Vec::new())));
    let db = store.database("data").unwrap();
    write(
        &db,
        vec![put(
            "Dog",
            Some(Value::String("a".into())),
            r#"{"name":"A"}"#,
            PutMode::Replace,
        )],
    )
    .unwrap();
    assert!(db.check_indexes().unwrap().is_consistent());
    // Damage the index behind the writer's back: drop A's entry, add one to a missing record.
    let t = db.table("Dog").unwrap();
    let index = t.index("name").unwrap();
    let mut name_key = Vec::new();
    crate::value::key::encode_index_prefix(&Value::String("A".into()), &mut name_key);
    let mut pk = Vec::new();
    crate::value::key::encode(&Value::String("a".into()), &mut pk).unwrap();
    let mut ghost = Vec::new();
    crate::value::key::encode(&Value::String("ghost".into()), &mut ghost).unwrap();
    {
        let mut wtxn = db.env.write_txn().unwrap();
        index
            .delete_one_duplicate(&mut wtxn, &name_key, &pk)
            .unwrap();
        index.put(&mut wtxn, &name_key, &ghost).unwrap();
        wtxn.commit().unwrap();
    }
    let report = db.check_indexes().unwrap();
    assert_eq!(
        report.problems,
        vec![
            r#"data.Dog.name: entry String("A") → String("ghost"): the record does not exist"#,
            r#"data.Dog.name: record String("a") has no entry for String("A")"#,
        ]
    );
    store.close();
}

#[test]
fn reads_complete_while_the_writer_holds_a_long_transaction() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), Arc::new(Mutex::new(Vec::new())));
    let db = store.database("data").unwrap();
    write(
        &db,
        vec![put(
            "Dog",
            Some(Value::String("probe".into())),
            "{}",
            PutMode::Replace,
        )],
    )
    .unwrap();
    // One request of many records: the writer applies all of them inside one write transaction.
    let ops: Vec<WriteOp> = (0..20_000)
        .map(|i| {
            put(
                "Dog",
                Some(Value::Int(i)),
                &format!(r#"{{"name":"n{i}","tags":["a{i}","b{i}"]}}"#),
                PutMode::Replace,
            )
        })
        .collect();
    let clock = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    // Each read: (event number at completion, saw any record of the big request).
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (db, clock, stop) = (db.clone(), clock.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut reads = Vec::new();
                while !stop.load(Ordering::Acquire) {
                    let saw = {
                        let t = db.table("Dog").unwrap();
                        let txn = db.read().unwrap();
                        assert!(txn
                            .get(&t, &Value::String("probe".into()))
                            .unwrap()
                            .is_some());
                        txn.get(&t, &Value::Int(0)).unwrap().is_some()
                    };
                    reads.push((clock.fetch_add(1, Ordering::AcqRel), saw));
                }
                reads
            })
        })
        .collect();
    while clock.load(Ordering::Acquire) < 10 {
        std::thread::yield_now();
    }
    let submitted = clock.fetch_add(1, Ordering::AcqRel);
    let rx = db
        .submit(WriteRequest {
            ops,
            ..Default::default()
        })
        .unwrap();
    futures_lite_block_on(rx).unwrap().unwrap();
    let answered = clock.fetch_add(1, Ordering::AcqRel);
    stop.store(true, Ordering::Release);
    let reads: Vec<(u64, bool)> = readers
        .into_iter()
        .flat_map(|r| r.join().unwrap())
        .collect();
    let inside = reads
        .iter()
        .filter(|(at, saw)| *at > submitted && *at < answered && !saw)
        .count();
    assert!(
        inside >= 10,
        "only {inside} reads completed between submit (#{submitted}) and reply (#{answered})"
    );
    assert!(reads
        .iter()
        .filter(|(at, _)| *at < submitted)
        .all(|(_, saw)| !saw));
    assert!(db
        .read()
        .unwrap()
        .get(&db.table("Dog").unwrap(), &Value::Int(0))
        .unwrap()
        .is_some());
    store.close();
}

fn schema_change(db: &Database, change: SchemaChange) -> Result<Option<Arc<Table>>, StoreError> {
    futures_lite_block_on(db.schema(change).unwrap()).expect("writer replied")
}

/// A table as the Operations API makes it: key, timestamps, no schema file.
fn ops_table(name: &str) -> TableDef {
    let mut def = parse_schema_str(
        &format!("type {name} @table {{ id: Any @primaryKey c: Long @createdTime u: Long @updatedTime }}"),
        "t.graphql",
    )
    .unwrap()
    .tables
    .remove(0);
    def.location = None;
    def.database = "dev".into();
    def
}

#[test]
fn schema_changes_create_grow_and_drop_tables_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let commits = Arc::new(Mutex::new(Vec::new()));
    {
        let store = open(dir.path(), commits.clone());
        let db = store.open_database("dev").unwrap();
        let t = schema_change(&db, SchemaChange::Create(ops_table("Cat")))
            .unwrap()
            .unwrap();
        assert!(!t.schema_defined);
        assert!(matches!(
            schema_change(&db, SchemaChange::Create(ops_table("Cat"))),
            Err(StoreError::TableExists(_))
        ));
        write(
            &db,
            vec![put(
                "Cat",
                None,
                r#"{"id":1,"color":"red"}"#,
                PutMode::Insert,
            )],
        )
        .unwrap();
        // Grow: the new attribute is indexed over the existing record.
        let grown = schema_change(
            &db,
            SchemaChange::Alter {
                table: "Cat".into(),
                alter: Box::new(|def: &TableDef| {
                    let mut def = def.clone();
                    let mut a =
                        crate::schema::AttributeDef::new("color", crate::schema::FieldType::Any);
                    a.indexed = true;
                    def.attributes.push(a);
                    Ok(def)
                }),
            },
        )
        .unwrap()
        .unwrap();
        assert!(grown.indexed("color"));
        let txn = db.read().unwrap();
        let mut prefix = Vec::new();
        crate::value::key::encode_index_prefix(&Value::String("red".into()), &mut prefix);
        let hits = txn
            .index_range(
                &grown,
                "color",
                Bound::Included(&prefix[..]),
                Bound::Unbounded,
                false,
            )
            .unwrap()
            .count();
        assert!(hits >= 1);
        assert_eq!(txn.count(&grown).unwrap(), 1);
        assert!(txn.last_updated(&grown).unwrap().is_some());
        assert!(txn.table_size(&grown).unwrap() > 0);
        assert!(txn.audit_size().unwrap() > 0);
        drop(txn);
        schema_change(&db, SchemaChange::Create(ops_table("Gone"))).unwrap();
        write(&db, vec![put("Gone", None, r#"{"id":1}"#, PutMode::Insert)]).unwrap();
        assert!(schema_change(&db, SchemaChange::Drop("Gone".into()))
            .unwrap()
            .is_none());
        assert!(db.table("Gone").is_none());
        assert!(matches!(
            write(&db, vec![put("Gone", None, r#"{"id":2}"#, PutMode::Insert)]),
            Err(WriteError::NoSuchTable(_))
        ));
        assert!(matches!(
            schema_change(&db, SchemaChange::Drop("Gone".into())),
            Err(StoreError::NoSuchTable(_))
        ));
        store.close();
    }
    let store = open(dir.path(), commits.clone());
    let db = store.database("dev").unwrap();
    let cat = db.table("Cat").unwrap();
    assert!(cat.indexed("color") && !cat.schema_defined);
    assert!(cat.def.attribute("c").is_some_and(|a| a.created_time));
    assert!(cat.def.attribute("u").is_some_and(|a| a.updated_time));
    assert!(db.table("Gone").is_none(), "a dropped table stays dropped");
    // The same name again: empty.
    let again = schema_change(&db, SchemaChange::Create(ops_table("Gone")))
        .unwrap()
        .unwrap();
    assert_eq!(db.read().unwrap().count(&again).unwrap(), 0);
    store.close();
}

#[test]
fn dropped_databases_lose_their_files_and_can_be_created_again() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), Arc::new(Mutex::new(Vec::new())));
    let db = store.open_database("dev").unwrap();
    schema_change(&db, SchemaChange::Create(ops_table("Cat"))).unwrap();
    write(&db, vec![put("Cat", None, r#"{"id":1}"#, PutMode::Insert)]).unwrap();
    drop(db);
    store.drop_database("dev").unwrap();
    assert!(store.database("dev").is_none());
    assert!(!dir.path().join("dev.mdb").exists());
    assert!(matches!(
        store.drop_database("dev"),
        Err(StoreError::NoSuchDatabase(_))
    ));
    let db = store.open_database("dev").unwrap();
    assert!(db.table("Cat").is_none());
    store.close();
}

/// A `system` table declared `@table(audit: false)` (`hdb_raw_analytics`) writes no audit
/// entries; the same declaration on an application table is still audited (docs/configuration.md).
#[test]
fn only_system_tables_may_skip_the_audit_log() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), Arc::new(Mutex::new(Vec::new())));
    let schema = "type raw @table(database: \"sys\", audit: false) { id: Float @primaryKey }
type quiet @table(audit: false) { id: Float @primaryKey }";
    let mut tables = parse_schema_str(schema, "t.graphql").unwrap().tables;
    tables[0].database = "system".into();
    store.apply_schema(&tables).unwrap();
    let count = |db: &Database| {
        let txn = db.read().unwrap();
        let n = txn
            .audit_range(Bound::Unbounded, Bound::Unbounded)
            .unwrap()
            .count();
        n
    };
    let system = store.database("system").unwrap();
    write(
        &system,
        vec![put("raw", None, r#"{"id":1.5,"m":1}"#, PutMode::Replace)],
    )
    .unwrap();
    write(
        &system,
        vec![WriteOp::Delete {
            table: "raw".into(),
            key: Value::Float(1.5),
        }],
    )
    .unwrap();
    assert_eq!(count(&system), 0);
    let data = store.database("data").unwrap();
    let before = count(&data);
    write(
        &data,
        vec![put("quiet", None, r#"{"id":2.5}"#, PutMode::Replace)],
    )
    .unwrap();
    assert_eq!(count(&data), before + 1);
}

/// With `storage.sync` the writer keeps the file written a few MiB past LMDB's last used page
/// (`grow.rs`); what it wrote there never touches data: every record reads back after a reopen,
/// and the store keeps growing past the zeros. Without `storage.sync` nothing is written ahead.
#[test]
fn the_file_is_written_ahead_of_its_data_with_sync_only() {
    fn lead(db: &Database) -> (u64, u64) {
        let (used, _) = db.map_usage();
        (db.file_size(), used)
    }
    let body = format!(r#"{{"name":"{}","age":1}}"#, "x".repeat(900));
    let fill = |db: &Database, from: u64, to: u64| {
        for group in (from..to).collect::<Vec<_>>().chunks(200) {
            let ops = group
                .iter()
                .map(|i| put("Dog", Some(Value::Int(*i as i64)), &body, PutMode::Replace))
                .collect();
            write(db, ops).unwrap();
        }
    };
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path(), Arc::new(Mutex::new(Vec::new())));
        let db = store.database("data").unwrap();
        // ~20 MiB of records: many steps, between the commits.
        fill(&db, 0, 10_000);
        let (file, used) = lead(&db);
        assert!(
            file >= used + grow::AHEAD_BYTES - grow::STEP_BYTES
                && file <= used + grow::AHEAD_BYTES + grow::STEP_BYTES,
            "file {file} bytes, LMDB uses {used}: the lead is off"
        );
        store.close();
    }
    let store = open(dir.path(), Arc::new(Mutex::new(Vec::new())));
    let db = store.database("data").unwrap();
    // Past the zeros written before the reopen, into new space again.
    fill(&db, 10_000, 15_000);
    for i in (0..15_000).step_by(499) {
        let rec = get_json(&db, "Dog", &Value::Int(i)).expect("every record reads back");
        assert!(rec.contains("xxxx"), "{rec}");
    }
    let (file, used) = lead(&db);
    assert!(file > used, "file {file}, used {used}");
    store.close();

    let dir = tempfile::tempdir().unwrap();
    let mut options = StoreOptions::new(dir.path());
    options.sync = false;
    let store = Store::open(options, Arc::new(|_| {})).unwrap();
    store
        .apply_schema(&parse_schema_str(SCHEMA, "t.graphql").unwrap().tables)
        .unwrap();
    let db = store.database("data").unwrap();
    fill(&db, 0, 5_000);
    let (file, used) = lead(&db);
    assert!(
        file < used + grow::STEP_BYTES,
        "without sync nothing is written ahead: file {file}, used {used}"
    );
    store.close();
}
