//! A write request is all-or-nothing across `kill -9` (docs/design.md "Transactions"), at the store level.
//!
//! The test re-executes its own binary as a "writer child" (selected by an environment variable)
//! that opens a `Store` on a temporary root and commits, from several threads, requests that each
//! write the same id to two tables (A and B), N extra records to A, and an overwritten `last<t>`
//! record to both. It prints `ack <thread> <i> <N>` after each commit is answered. The parent
//! SIGKILLs it at a random moment, opens the store itself and checks: every id is in both tables
//! or neither; every request's records are all present or all absent; every acknowledged request
//! is present (`storage.sync` is on); each thread's requests committed in order (a prefix); the
//! `last` records of A and B agree; and every index matches its table. Several rounds on the same
//! root. The seed is printed; `TIDEPOOL_SEED=<n>` replays it.

mod common;

use common::Rng;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use tidepool::schema::parse_schema_str;
use tidepool::store::{PutMode, Store, StoreOptions, WriteOp, WriteRequest};
use tidepool::value::{json, key, Value};

const CHILD_ROOT: &str = "TIDEPOOL_STORE_CHILD_ROOT";
const CHILD_ROUND: &str = "TIDEPOOL_STORE_CHILD_ROUND";
const CHILD_SEED: &str = "TIDEPOOL_STORE_CHILD_SEED";
const SCHEMA: &str = "type A @table { id: ID @primaryKey v: Int @indexed n: Int @indexed }
type B @table { id: ID @primaryKey v: Int @indexed }";
const WRITER_THREADS: u64 = 3;
/// Extra A records per request, at most.
const EXTRAS_MAX: u64 = 24;

/// Polls a oneshot from a plain thread (the writer's replies are meant for a core's executor).
fn block_on<F: std::future::Future>(f: F) -> F::Output {
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
        std::thread::sleep(Duration::from_micros(200));
    }
}

fn put(table: &str, id: String, body: serde_json::Value) -> WriteOp {
    WriteOp::Put {
        table: table.into(),
        key: Some(Value::String(id)),
        record: json::parse(body.to_string().as_bytes()).expect("test JSON"),
        mode: PutMode::Replace,
        expires_in_s: None,
    }
}

fn request_id(round: u64, thread: u64, i: u64) -> String {
    format!("r{round}t{thread}i{i}")
}

/// The child's role: write until killed. A no-op when run as an ordinary test.
#[test]
fn writer_child() {
    let Ok(root) = std::env::var(CHILD_ROOT) else {
        return;
    };
    let round: u64 = std::env::var(CHILD_ROUND).unwrap().parse().unwrap();
    let seed: u64 = std::env::var(CHILD_SEED).unwrap().parse().unwrap();
    let store = Store::open(StoreOptions::new(&root), Arc::new(|_| {})).unwrap();
    store
        .apply_schema(&parse_schema_str(SCHEMA, "t.graphql").unwrap().tables)
        .unwrap();
    let db = store.database("data").unwrap();
    println!("ready");
    let threads: Vec<_> = (0..WRITER_THREADS)
        .map(|t| {
            let db = db.clone();
            std::thread::spawn(move || {
                let mut rng = Rng(seed ^ (round << 8) ^ t);
                for i in 0.. {
                    let id = request_id(round, t, i);
                    let extras = 1 + rng.below(EXTRAS_MAX);
                    let mut ops = vec![
                        put("A", id.clone(), serde_json::json!({"v": i, "n": extras})),
                        put("B", id.clone(), serde_json::json!({"v": i})),
                    ];
                    for j in 0..extras {
                        ops.push(put("A", format!("{id}.{j}"), serde_json::json!({"v": j})));
                    }
                    ops.push(put("A", format!("last{t}"), serde_json::json!({"v": i})));
                    ops.push(put("B", format!("last{t}"), serde_json::json!({"v": i})));
                    let rx = db
                        .submit(WriteRequest {
                            ops,
                            ..Default::default()
                        })
                        .unwrap();
                    match block_on(rx) {
                        Some(Ok(_)) => println!("ack {t} {i} {extras}"),
                        other => panic!("write {id} failed: {other:?}"),
                    }
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
}

/// What the parent read back from one table: id → `v`.
fn table_values(
    db: &tidepool::store::Database,
    table: &str,
) -> BTreeMap<String, serde_json::Value> {
    let t = db.table(table).unwrap();
    let txn = db.read().unwrap();
    let mut out = BTreeMap::new();
    for item in txn.scan(&t, false).unwrap() {
        let (k, record) = item.unwrap();
        let Value::String(id) = key::decode(k).unwrap() else {
            panic!("non-string key in {table}");
        };
        let body: serde_json::Value = serde_json::from_slice(&json::to_vec(record.value)).unwrap();
        out.insert(id, body);
    }
    out
}

/// Runs one child round and SIGKILLs it after `kill_after`; returns the acknowledged
/// (thread, i, extras) triples.
fn run_child(root: &Path, round: u64, seed: u64, kill_after: Duration) -> Vec<(u64, u64, u64)> {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "writer_child",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(CHILD_ROOT, root)
        .env(CHILD_ROUND, round.to_string())
        .env(CHILD_SEED, seed.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("re-exec the test binary");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut lines = Vec::new();
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            // libtest prints "test writer_child ... " without a newline before the child's output.
            Ok(line) if line.ends_with("ready") => break,
            Ok(line) => lines.push(line),
            Err(_) => {
                let _ = child.kill();
                lines.truncate(20);
                panic!("writer child never became ready; output: {lines:?}");
            }
        }
    }
    std::thread::sleep(kill_after);
    // Child::kill sends SIGKILL to this child's PID.
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(
        status.code().is_none(),
        "the child died by itself: {status:?}, {lines:?}"
    );
    let _ = reader.join();
    lines.extend(rx.try_iter());
    lines
        .iter()
        .filter_map(|l| {
            let mut w = l.strip_prefix("ack ")?.split(' ').map(|x| x.parse::<u64>());
            Some((w.next()?.ok()?, w.next()?.ok()?, w.next()?.ok()?))
        })
        .collect()
}

#[test]
fn requests_are_all_or_nothing_across_kill_9() {
    let seed = common::seed();
    let heavy = std::env::var("TIDEPOOL_HEAVY").is_ok_and(|v| v == "1");
    let rounds = if heavy { 8 } else { 4 };
    println!("seed {seed} ({rounds} rounds; replay with TIDEPOOL_SEED={seed})");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let mut total_acked = 0;
    let mut total_found = 0;
    for round in 0..rounds {
        let kill_after = Duration::from_millis(50 + rng.below(450));
        let acked = run_child(dir.path(), round, seed, kill_after);
        let context = format!("seed {seed}, round {round}, killed after {kill_after:?}");

        let store = Store::open(StoreOptions::new(dir.path()), Arc::new(|_| {})).unwrap();
        let db = store.database("data").unwrap();
        let a = table_values(&db, "A");
        let b = table_values(&db, "B");

        // Per thread: the requests of this round that are present, from their A record.
        let mut present: BTreeMap<u64, BTreeSet<u64>> = BTreeMap::new();
        for t in 0..WRITER_THREADS {
            let mut i = 0;
            loop {
                let id = request_id(round, t, i);
                let in_a = a.get(&id);
                let in_b = b.contains_key(&id);
                assert_eq!(in_a.is_some(), in_b, "{id} in one table only ({context})");
                let Some(rec) = in_a else {
                    // Requests commit in order per thread: nothing after the first absent one.
                    let later = (i + 1..i + 64).find(|j| a.contains_key(&request_id(round, t, *j)));
                    assert_eq!(
                        later, None,
                        "thread {t}: {id} absent but a later one present ({context})"
                    );
                    break;
                };
                let extras = rec["n"].as_u64().unwrap();
                for j in 0..extras {
                    assert!(
                        a.contains_key(&format!("{id}.{j}")),
                        "{id}.{j} missing: request torn ({context})"
                    );
                }
                assert!(
                    !a.contains_key(&format!("{id}.{extras}")),
                    "{id}: more extras than written ({context})"
                );
                present.entry(t).or_default().insert(i);
                i += 1;
            }
        }
        // Extras without their request's main record would be a torn request too.
        for id in a.keys().filter(|k| k.contains('.')) {
            let base = id.split('.').next().unwrap();
            assert!(
                a.contains_key(base),
                "{id} present without {base} ({context})"
            );
        }
        for (t, i, extras) in &acked {
            let id = request_id(round, *t, *i);
            assert!(
                present.get(t).is_some_and(|s| s.contains(i)),
                "acknowledged {id} lost ({context})"
            );
            assert_eq!(a[&id]["n"].as_u64(), Some(*extras), "{id} ({context})");
        }
        for t in 0..WRITER_THREADS {
            let last = format!("last{t}");
            assert_eq!(
                a.get(&last),
                b.get(&last),
                "{last} differs between A and B ({context})"
            );
            if let Some(newest) = present.get(&t).and_then(|s| s.last()) {
                assert_eq!(a[&last]["v"].as_u64(), Some(*newest), "{last} ({context})");
            }
        }
        let report = db.check_indexes().unwrap();
        assert!(
            report.is_consistent(),
            "indexes ({context}): {:#?}",
            report.problems
        );
        let found: usize = present.values().map(BTreeSet::len).sum();
        println!(
            "round {round}: killed after {kill_after:?}, {} acknowledged, {found} present, {} records in A, indexes consistent ({} entries)",
            acked.len(),
            a.len(),
            report.entries_checked
        );
        total_acked += acked.len();
        total_found += found;
        store.close();
        drop(db);
        drop(store);
    }
    assert!(
        total_acked > 0,
        "no write was acknowledged in any round: the test tested nothing"
    );
    assert!(total_found >= total_acked);
}
