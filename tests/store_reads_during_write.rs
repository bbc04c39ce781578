//! Reads never wait for the writer (docs/design.md "Reads see a snapshot and never block writers";
//! DESIGN.md "Threads"): while the writer holds one long write transaction, GETs on other
//! connections keep completing and see the snapshot from before it.
//!
//! The long transaction is one `PUT /Dog/big` whose indexed `tags` list has many distinct
//! elements, so the writer inserts that many index entries (and fsyncs them, `storage.sync` on)
//! before it can commit. Reader threads, each on its own keep-alive connection, GET an existing
//! record and `/Dog/big` in a loop. Every event takes a number from one counter, so the test
//! asserts the order of events, never a duration: reads complete after the PUT was sent and
//! before it was acknowledged, those reads see `/Dog/big` absent (they did not wait for the
//! commit), and a read that starts after the acknowledgement sees it.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::Server;

/// Elements of the big record's indexed list: one index entry each.
const TAGS_COUNT: usize = 150_000;
const READER_THREADS: usize = 3;

#[derive(Debug)]
struct Read {
    /// Event number just before the GET of `/Dog/big` was sent.
    started_at: u64,
    /// Event number at completion.
    done_at: u64,
    probe_ok: bool,
    big_found: bool,
}

#[test]
fn gets_complete_while_a_long_write_transaction_is_open() {
    let server = Server::start();
    let base = format!("http://{}", server.rest);
    let probe = ureq::put(&format!("{base}/Dog/probe"))
        .set("Content-Type", "application/json")
        .send_string(r#"{"name":"probe"}"#)
        .unwrap();
    assert_eq!(probe.status(), 204);

    let clock = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..READER_THREADS)
        .map(|_| {
            let (clock, stop, base) = (clock.clone(), stop.clone(), base.clone());
            std::thread::spawn(move || {
                let agent = ureq::AgentBuilder::new()
                    .timeout(Duration::from_secs(60))
                    .build();
                let mut reads = Vec::new();
                while !stop.load(Ordering::Acquire) {
                    let probe_ok = agent
                        .get(&format!("{base}/Dog/probe"))
                        .call()
                        .is_ok_and(|r| r.status() == 200);
                    let started_at = clock.fetch_add(1, Ordering::AcqRel);
                    let big_found = match agent.get(&format!("{base}/Dog/big")).call() {
                        Ok(r) => r.status() == 200,
                        Err(ureq::Error::Status(404, _)) => false,
                        Err(e) => panic!("GET /Dog/big: {e}"),
                    };
                    reads.push(Read {
                        started_at,
                        done_at: clock.fetch_add(1, Ordering::AcqRel),
                        probe_ok,
                        big_found,
                    });
                }
                reads
            })
        })
        .collect();

    // Let every reader complete a few reads first, so each has its connection open.
    while clock.load(Ordering::Acquire) < 3 * READER_THREADS as u64 {
        std::thread::sleep(Duration::from_millis(5));
    }
    let tags: Vec<String> = (0..TAGS_COUNT).map(|i| format!("tag{i:07}")).collect();
    let body = serde_json::json!({"name": "big", "tags": tags}).to_string();
    let put_sent = clock.fetch_add(1, Ordering::AcqRel);
    let put = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(120))
        .build()
        .put(&format!("{base}/Dog/big"))
        .set("Content-Type", "application/json")
        .send_string(&body)
        .unwrap();
    let put_acked = clock.fetch_add(1, Ordering::AcqRel);
    assert_eq!(put.status(), 204);
    // Reads that start now must see the write (acknowledged means visible).
    let after = ureq::get(&format!("{base}/Dog/big")).call().unwrap();
    assert_eq!(after.status(), 200);
    // A few more reads after the acknowledgement, then stop.
    let stop_at = clock.load(Ordering::Acquire) + 3 * READER_THREADS as u64;
    while clock.load(Ordering::Acquire) < stop_at {
        std::thread::sleep(Duration::from_millis(5));
    }
    stop.store(true, Ordering::Release);
    let reads: Vec<Read> = readers
        .into_iter()
        .flat_map(|r| r.join().expect("reader"))
        .collect();

    assert!(
        reads.iter().all(|r| r.probe_ok),
        "every GET of the probe answered 200"
    );
    let before: Vec<&Read> = reads.iter().filter(|r| r.done_at < put_sent).collect();
    let during: Vec<&Read> = reads
        .iter()
        .filter(|r| r.done_at > put_sent && r.done_at < put_acked)
        .collect();
    assert!(
        before.iter().all(|r| !r.big_found),
        "big existed before it was written"
    );
    // Reads finished while the PUT was in the writer: they did not wait for its commit. Several,
    // from every reader connection taken together, not one lucky read at the start.
    let during_unseen = during.iter().filter(|r| !r.big_found).count();
    assert!(
        during_unseen >= 2 * READER_THREADS,
        "only {during_unseen} reads completed (seeing the old snapshot) between PUT sent (#{put_sent}) and acknowledged (#{put_acked}); {} reads in all",
        reads.len()
    );
    // Once one read saw the commit, every read started later, on any connection, sees it too.
    if let Some(first_seen) = reads
        .iter()
        .filter(|r| r.big_found)
        .map(|r| r.done_at)
        .min()
    {
        let missed: Vec<&Read> = reads
            .iter()
            .filter(|r| r.started_at > first_seen && !r.big_found)
            .collect();
        assert!(
            missed.is_empty(),
            "reads after the commit missed it: {missed:?}"
        );
    }
    println!(
        "{} reads; PUT sent at #{put_sent}, acknowledged at #{put_acked}; {} reads completed in between ({during_unseen} saw the old snapshot)",
        reads.len(),
        during.len()
    );
}

/// Cores reuse a read transaction between commits (`src/store/read.rs`): a write acknowledged to
/// one connection is seen at once by reads on every other connection (spread over both cores),
/// round after round, and a record deleted is gone for all of them.
#[test]
fn every_core_reads_a_write_as_soon_as_it_is_acknowledged() {
    let server = Server::start();
    let base = format!("http://{}", server.rest);
    let agent = || ureq::AgentBuilder::new().build();
    let writer = agent();
    let readers: Vec<ureq::Agent> = (0..4).map(|_| agent()).collect();
    for round in 0..200u64 {
        writer
            .put(&format!("{base}/Dog/seen"))
            .set("Content-Type", "application/json")
            .send_string(&format!(r#"{{"name":"round {round}"}}"#))
            .expect("PUT");
        for (i, reader) in readers.iter().enumerate() {
            // Another read first, so a core holds a transaction from before the next write.
            let text = reader
                .get(&format!("{base}/Dog/seen"))
                .call()
                .expect("GET")
                .into_string()
                .expect("body");
            let body: serde_json::Value = serde_json::from_str(&text).expect("JSON");
            assert_eq!(body["name"], format!("round {round}"), "reader {i}");
        }
    }
    writer
        .delete(&format!("{base}/Dog/seen"))
        .call()
        .expect("DELETE");
    for reader in &readers {
        match reader.get(&format!("{base}/Dog/seen")).call() {
            Err(ureq::Error::Status(404, _)) => {}
            other => panic!("deleted record still read: {other:?}"),
        }
    }
}
