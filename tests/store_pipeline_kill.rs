//! `kill -9` of the real server inside a pipelined pair of commits (docs/design.md "Pipelined
//! commits"; heavy: runs with `TIDEPOOL_HEAVY=1`, as `.ci/run` sets; otherwise it prints a note
//! and passes).
//!
//! With `storage.sync` on, the writer commits group N (its data synced, its meta page not),
//! answers nobody yet, and when as many requests are queued as N holds commits them as group N+1
//! — whose data sync makes N durable — and only then answers N; with fewer queued it syncs and
//! answers N first. The server is started with the test-only
//! `TIDEPOOL_TEST_KILL_AT=data:<point>:<n>`, which makes the `data` database's writer SIGKILL its
//! own process the n-th time it reaches `<point>`:
//! - `commit-next`: group N committed and unanswered, group N+1 about to commit: between the two
//!   syncs of the pair;
//! - `answer-previous`: N+1 committed and synced, N not yet answered;
//! - `final-sync`: fewer requests queued than the pending group holds, before the sync that makes
//!   it durable.
//!
//! One round per point on the same root, concurrent writers (so groups pipeline). After each
//! kill the test checks that the server died at that point (its stderr says so), opens the store
//! itself (it opens cleanly, every index matches its table), restarts the server and reads back
//! every acknowledged write (every id has its own writer, so the record holds the last
//! acknowledged value or the one write in flight at the kill). The seed is printed;
//! `TIDEPOOL_SEED=<n>` replays the same kill counts.
//!
//! What it cannot show, like `store_crash.rs`: a killed process leaves its written pages in the OS
//! page cache, so the sync itself is not tested; the test holds the writer to answering only at
//! the points the durability argument names, and to a store that opens consistent from any of
//! them.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Builder, Rng, Server};
use tidepool::store::{Store, StoreOptions};

const SCHEMA: &str = "type Dog @table @export { id: ID @primaryKey seq: Int @indexed }";
/// Each point with its number of concurrent writers: enough that groups queue behind each other
/// for the points inside a pair (a pair needs as many requests queued as the pending group
/// holds); few for `final-sync`, reached whenever fewer are queued.
const POINTS: [(&str, u64); 3] = [
    ("commit-next", 32),
    ("answer-previous", 32),
    ("final-sync", 4),
];
/// The whole test must stay well under two minutes.
const TEST_TIME_MAX: Duration = Duration::from_secs(100);

/// Per id: the last acknowledged `seq` and the one in flight at the kill.
#[derive(Debug, Clone, Default)]
struct Known {
    acked: Option<u64>,
    in_flight: Option<u64>,
}

/// One writer's run: its own ids, written in turn until the server is gone or `deadline`.
fn writer(base: String, thread: u64, round: u64, deadline: Instant) -> BTreeMap<String, Known> {
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(10))
        .build();
    let mut known: BTreeMap<String, Known> = BTreeMap::new();
    let mut seq = round * 1_000_000;
    while Instant::now() < deadline {
        seq += 1;
        let id = format!("w{thread}k{}", seq % 4);
        let result = agent
            .put(&format!("{base}/Dog/{id}"))
            .set("Content-Type", "application/json")
            .send_string(&serde_json::json!({ "seq": seq }).to_string());
        let entry = known.entry(id.clone()).or_default();
        match result {
            Ok(r) if r.status() == 204 => entry.acked = Some(seq),
            Ok(r) => panic!("PUT /Dog/{id}: status {}", r.status()),
            Err(ureq::Error::Status(code, r)) => panic!(
                "PUT /Dog/{id}: {code} {}",
                r.into_string().unwrap_or_default()
            ),
            Err(_) => {
                // The server is gone; this write may or may not have committed.
                entry.in_flight = Some(seq);
                break;
            }
        }
    }
    known
}

fn read_seq(server: &Server, id: &str) -> Option<u64> {
    match ureq::get(&server.url(&format!("/Dog/{id}"))).call() {
        Ok(r) => {
            let v: serde_json::Value = serde_json::from_str(&r.into_string().unwrap()).unwrap();
            Some(v["seq"].as_u64().expect("seq"))
        }
        Err(ureq::Error::Status(404, _)) => None,
        Err(e) => panic!("GET /Dog/{id}: {e}"),
    }
}

/// Every id reads back as acknowledged (or as its in-flight write); returns how many ids.
fn verify(server: &Server, known: &mut BTreeMap<String, Known>, context: &str) -> usize {
    for (id, k) in known.iter_mut() {
        let got = read_seq(server, id);
        assert!(
            got == k.acked || (got.is_some() && got == k.in_flight),
            "/Dog/{id}: read {got:?}, acknowledged {:?}, in flight {:?} ({context})",
            k.acked,
            k.in_flight
        );
        k.acked = got;
        k.in_flight = None;
    }
    known.len()
}

/// Opens the killed server's store in this process: it opens, and every index matches.
fn check_store(root: &std::path::Path, context: &str) -> u64 {
    let store = Store::open(StoreOptions::new(root.join("database")), Arc::new(|_| {}))
        .unwrap_or_else(|e| panic!("open store after kill ({context}): {e}"));
    let db = store.database("data").expect("database data");
    let report = db.check_indexes().unwrap();
    assert!(
        report.is_consistent(),
        "indexes ({context}): {:#?}",
        report.problems
    );
    store.close();
    report.entries_checked
}

#[test]
fn acknowledged_writes_survive_a_kill_inside_a_pipelined_pair() {
    if !common::heavy() {
        return;
    }
    let seed = common::seed();
    println!("seed {seed} (replay with TIDEPOOL_SEED={seed})");
    let (started, mut rng) = (Instant::now(), Rng(seed));
    let app = tempfile::tempdir().unwrap();
    common::write_schema_app(app.path(), SCHEMA);
    let mut root = tempfile::tempdir().unwrap();
    let mut known: BTreeMap<String, Known> = BTreeMap::new();
    let mut total_acked = 0;
    for (round, (point, writers)) in POINTS.iter().enumerate() {
        let n = 20 + rng.below(200);
        let kill_at = format!("data:{point}:{n}");
        let mut server = Builder::new()
            .app(app.path())
            .root(root)
            .env("TIDEPOOL_TEST_KILL_AT", &kill_at)
            .start();
        let context = format!("seed {seed}, {kill_at}");
        let ids = verify(&server, &mut known, &context);
        let base = format!("http://{}", server.rest);
        let deadline = Instant::now() + Duration::from_secs(25);
        let writers: Vec<_> = (0..*writers)
            .map(|t| {
                let base = base.clone();
                std::thread::spawn(move || writer(base, t, round as u64 + 1, deadline))
            })
            .collect();
        let exit = server.wait_exit(Duration::from_secs(30));
        let mut acked = 0;
        for w in writers {
            for (id, k) in w.join().expect("writer thread") {
                let entry = known.entry(id).or_default();
                if k.acked.is_some() {
                    entry.acked = k.acked;
                    acked += 1;
                }
                entry.in_flight = k.in_flight;
            }
        }
        if exit.is_none() {
            server.signal(libc::SIGKILL);
            let _ = server.wait_exit(Duration::from_secs(10));
            panic!("the writer never reached {point} {n} times in 25 s of writes ({context})");
        }
        assert_eq!(exit, Some(None), "the server exited by itself ({context})");
        let said = server
            .drain_lines()
            .iter()
            .any(|l| l.contains(&format!("killing the process at {point}")));
        assert!(said, "the server died, but not at {point} ({context})");
        let entries = check_store(server.root.path(), &context);
        println!(
            "round {round}: {ids} ids read back; killed at {point} (arrival {n}); {acked} ids acknowledged; store opens, indexes consistent ({entries} entries)"
        );
        total_acked += acked;
        root = std::mem::replace(&mut server.root, tempfile::tempdir().unwrap());
        assert!(started.elapsed() < TEST_TIME_MAX, "out of time ({context})");
    }
    // The last kill's writes, read back by a server without a kill point.
    let server = Builder::new().app(app.path()).root(root).start();
    let ids = verify(&server, &mut known, &format!("seed {seed}, final restart"));
    println!("final restart: {ids} ids read back as acknowledged");
    assert!(
        total_acked > 0,
        "no write was ever acknowledged: the test tested nothing"
    );
    println!("done in {:?}", started.elapsed());
}
