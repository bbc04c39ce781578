//! Registry tests on a real store: commits are collected from the publisher and dispatched by
//! hand, so each test decides exactly which commits are "in flight" when a subscription starts.

use std::sync::Mutex;

use super::*;
use crate::schema::parse_schema_str;
use crate::store::{PutMode, Store, StoreOptions, WriteOp, WriteRequest};
use crate::value::json;

struct Fixture {
    _dir: tempfile::TempDir,
    store: Arc<Store>,
    commits: Arc<Mutex<Vec<Arc<Commit>>>>,
    registry: Rc<Registry>,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let commits: Arc<Mutex<Vec<Arc<Commit>>>> = Arc::default();
    let sink = commits.clone();
    let publisher: Publisher =
        Arc::new(move |c: &[Arc<Commit>]| sink.lock().unwrap().extend_from_slice(c));
    let mut options = StoreOptions::new(dir.path());
    options.sync = false;
    let store = Store::open(options, publisher).unwrap();
    let schema = "type Dog @table @export { id: ID @primaryKey n: Int }";
    store
        .apply_schema(&parse_schema_str(schema, "t.graphql").unwrap().tables)
        .unwrap();
    let start = store.clock().next();
    Fixture {
        _dir: dir,
        store,
        commits,
        registry: Rc::new(Registry::new(start, Arc::default())),
    }
}

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
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// One step of a scenario.
enum Step {
    Put(&'static str, i64),
    /// Several puts in one commit (one audit entry).
    PutMany(&'static [(&'static str, i64)]),
    Delete(&'static str),
    /// A delete of a record that does not exist: audited, but no commit is published.
    DeleteAbsent(&'static str),
    Message(Option<&'static str>, &'static str),
    /// Dispatch every commit collected so far.
    Dispatch,
    /// Subscribe filter `.0` with options `.1`; later `Expect`s refer to subscriptions by order.
    Subscribe(&'static str, Options),
    /// Subscribe like `Subscribe`, streaming the state in chunks of `.2` records (or entries).
    Chunked(&'static str, Options, usize),
    /// Take up to `.1` events from subscription `.0` now (a streamed state reads a chunk of at
    /// most that many records when its queue is empty).
    Pop(usize, usize),
}

impl Fixture {
    fn write_unpublished(&self, ops: Vec<WriteOp>) {
        let db = self.store.database("data").unwrap();
        let rx = db
            .submit(WriteRequest {
                ops,
                ..Default::default()
            })
            .unwrap();
        block_on(rx).unwrap().unwrap();
    }

    fn write(&self, ops: Vec<WriteOp>) {
        self.write_unpublished(ops);
        // The publisher runs just after the reply: wait for it.
        let before = Instant::now();
        while self.commits.lock().unwrap().is_empty() && before.elapsed() < Duration::from_secs(2) {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

fn put_op(id: &str, n: i64) -> WriteOp {
    WriteOp::Put {
        table: "Dog".into(),
        key: Some(Value::String(id.into())),
        record: json::parse(format!("{{\"n\":{n}}}").as_bytes()).unwrap(),
        mode: PutMode::Replace,
        expires_in_s: None,
    }
}

/// Runs `steps`; returns, per subscription, the events it received as `type id n`.
fn run(steps: Vec<Step>) -> Vec<Vec<String>> {
    let f = fixture();
    let db = f.store.database("data").unwrap();
    let table = db.table("Dog").unwrap();
    let mut subs: Vec<(Sink, Subscription)> = Vec::new();
    let mut got: Vec<Vec<Rc<Event>>> = Vec::new();
    let counters: Arc<Counters> = Arc::default();
    let mut pending: Vec<Arc<Commit>> = Vec::new();
    for step in steps {
        match step {
            Step::Put(id, n) => f.write(vec![put_op(id, n)]),
            Step::PutMany(puts) => f.write(puts.iter().map(|(id, n)| put_op(id, *n)).collect()),
            Step::Delete(id) => f.write(vec![WriteOp::Delete {
                table: "Dog".into(),
                key: Value::String(id.into()),
            }]),
            Step::DeleteAbsent(id) => f.write_unpublished(vec![WriteOp::Delete {
                table: "Dog".into(),
                key: Value::String(id.into()),
            }]),
            Step::Message(id, text) => f.write(vec![WriteOp::Message {
                table: "Dog".into(),
                key: id.map(|i| Value::String(i.into())),
                payload: Value::String(text.into()),
            }]),
            Step::Dispatch => {
                for c in pending.drain(..) {
                    f.registry.dispatch(&c);
                }
            }
            Step::Subscribe(_, _) | Step::Chunked(_, _, _) => {
                let (filter, options, chunk) = match step {
                    Step::Subscribe(f, o) => (f, o, usize::MAX),
                    Step::Chunked(f, o, chunk) => (f, o, chunk),
                    _ => unreachable!(),
                };
                let sink = Sink::new(Format::Json, Overflow::DropOldest, counters.clone());
                sink.set_chunk_records(chunk);
                let sub = f
                    .registry
                    .subscribe(&sink, &db, &table, Filter::parse(filter).unwrap(), &options)
                    .unwrap();
                subs.push((sink, sub));
                got.push(Vec::new());
            }
            Step::Pop(i, max) => {
                subs[i].0.pop_batch(&mut got[i], max);
            }
        }
        pending.extend(f.commits.lock().unwrap().drain(..));
    }
    for c in pending.drain(..) {
        f.registry.dispatch(&c);
    }
    for ((sink, _), out) in subs.iter().zip(got.iter_mut()) {
        sink.pop_batch(out, usize::MAX);
        assert!(sink.is_empty() && !sink.is_streaming());
    }
    assert_eq!(
        counters.queued_bytes.load(Ordering::Relaxed),
        0,
        "every queued byte counted out"
    );
    got.iter()
        .map(|out| {
            out.iter()
                .map(|e| {
                    let n = match e.value().and_then(|v| v.get("n")) {
                        Some(Value::Int(n)) => n.to_string(),
                        _ => match e.value() {
                            Some(Value::String(s)) => s.clone(),
                            _ => "-".into(),
                        },
                    };
                    format!("{:?} {} {n}", e.kind(), e.id().unwrap_or("<table>"))
                })
                .collect()
        })
        .collect()
}

fn check(steps: Vec<Step>, expected: &[&[&str]]) {
    let got = run(steps);
    let expected: Vec<Vec<String>> = expected
        .iter()
        .map(|s| s.iter().map(|x| x.to_string()).collect())
        .collect();
    assert_eq!(got, expected);
}

use Step::*;

#[test]
fn current_state_then_live_events() {
    check(
        vec![
            Put("1", 1),
            Dispatch,
            Subscribe("Dog/1", Options::default()),
            Put("1", 2),
            Delete("1"),
        ],
        &[&["Put 1 1", "Put 1 2", "Delete 1 -"]],
    );
}

#[test]
fn commits_in_flight_at_subscribe_are_not_delivered_twice() {
    // Put 2 and the delete of 3 are committed (in the snapshot) but not yet dispatched.
    check(
        vec![
            Put("1", 1),
            Put("3", 1),
            Dispatch,
            Put("1", 2),
            Delete("3"),
            Subscribe("Dog/1", Options::default()),
            Subscribe("Dog/#", Options::default()),
            Pop(1, 10),
            Put("1", 3),
        ],
        &[&["Put 1 2", "Put 1 3"], &["Put 1 2", "Put 1 3"]],
    );
}

/// A table's state streams a chunk at a time, each in a new snapshot: a change to a record not
/// yet read is not sent live (its chunk reads the newer record, or nothing after a delete); a
/// change to a record already read is sent live, after it, unless that chunk's snapshot held it
/// (committed but not yet dispatched when the chunk was read).
#[test]
fn streamed_state_joins_live_chunk_by_chunk() {
    check(
        vec![
            Put("a", 1),
            Put("b", 1),
            Put("c", 1),
            Put("d", 1),
            Dispatch,
            Chunked("Dog/#", Options::default(), 1), // reads a 1
            Pop(0, 1),
            Put("b", 2),
            Put("a", 2),
            Delete("c"),
            Dispatch,
            Put("b", 3), // committed, not dispatched, when b's chunk is read
            Pop(0, 2),   // a 2 (live), then b 3 (state)
            Dispatch,    // b 3 again: in b's chunk, skipped
            Put("b", 4),
            Put("e", 1), // not read yet: comes as state
            Message(Some("d"), "hi"),
        ],
        &[&[
            "Put a 1",
            "Put a 2",
            "Put b 3",
            "Put b 4",
            "Message d hi",
            "Put d 1",
            "Put e 1",
        ]],
    );
}

/// Many records through one-record chunks with a write between each: everything once, in
/// order per record.
#[test]
fn streamed_state_of_many_chunks() {
    let mut steps = vec![];
    for (id, n) in [("k0", 0), ("k1", 0), ("k2", 0), ("k3", 0), ("k4", 0)] {
        steps.push(Put(id, n));
    }
    steps.push(Dispatch);
    steps.push(Chunked("Dog/#", Options::default(), 1));
    for (id, n) in [("k0", 1), ("k2", 1), ("k4", 1), ("k1", 1), ("k3", 1)] {
        steps.push(Pop(0, 1));
        steps.push(Put(id, n));
        steps.push(Dispatch);
    }
    check(
        steps,
        &[&[
            "Put k0 0", "Put k0 1", "Put k1 0", "Put k2 1", "Put k1 1", "Put k3 1", "Put k4 1",
        ]],
    );
}

/// A `startTime` replay streams by version; commits during it come from the audit log, once.
#[test]
fn streamed_replay_joins_live() {
    check(
        vec![
            Put("1", 1),
            Put("1", 2),
            Put("1", 3),
            Dispatch,
            Chunked(
                "Dog/1",
                Options {
                    start_time: Some(0.0),
                    ..Options::default()
                },
                1,
            ),
            Pop(0, 1),
            Put("1", 4),
            Dispatch,
            Pop(0, 10),
            Put("1", 5),
        ],
        &[&["Put 1 1", "Put 1 2", "Put 1 3", "Put 1 4", "Put 1 5"]],
    );
}

#[test]
fn wildcards_and_messages() {
    check(
        vec![
            Put("a/x", 1),
            Put("b", 1),
            Dispatch,
            Subscribe("Dog/+", Options::default()),
            Subscribe("Dog/a/#", Options::default()),
            Subscribe("Dog", Options::default()),
            Message(Some("b"), "hi"),
            Message(None, "all"),
            Put("a/y", 2),
        ],
        &[
            &["Put b 1", "Message b hi"],
            &["Put a/x 1", "Put a/y 2"],
            &["Message <table> all"],
        ],
    );
}

#[test]
fn options_omit_current_start_time_previous_count() {
    check(
        vec![
            Put("1", 1),
            Put("1", 2),
            Put("1", 3),
            Dispatch,
            Subscribe(
                "Dog/1",
                Options {
                    omit_current: true,
                    ..Options::default()
                },
            ),
            Subscribe(
                "Dog/1",
                Options {
                    start_time: Some(0.0),
                    ..Options::default()
                },
            ),
            Subscribe(
                "Dog/1",
                Options {
                    previous_count: Some(2),
                    ..Options::default()
                },
            ),
            Put("1", 4),
        ],
        &[
            &["Put 1 4"],
            &["Put 1 1", "Put 1 2", "Put 1 3", "Put 1 4"],
            &["Put 1 2", "Put 1 3", "Put 1 4"],
        ],
    );
}

#[test]
fn bad_options_and_unsubscribe() {
    let f = fixture();
    let db = f.store.database("data").unwrap();
    let table = db.table("Dog").unwrap();
    let sink = Sink::new(Format::Json, Overflow::DropOldest, Arc::default());
    let both = Options {
        start_time: Some(1.0),
        previous_count: Some(1),
        ..Options::default()
    };
    assert!(matches!(
        f.registry
            .subscribe(&sink, &db, &table, Filter::parse("Dog/#").unwrap(), &both),
        Err(SubscribeError::BadOptions(_))
    ));
    let sub = f
        .registry
        .subscribe(
            &sink,
            &db,
            &table,
            Filter::parse("Dog/#").unwrap(),
            &Options::default(),
        )
        .unwrap();
    assert_eq!(f.registry.subscription_count(), 1);
    drop(sub);
    assert_eq!(f.registry.subscription_count(), 0);
}

#[test]
fn listeners_see_every_dispatched_commit_in_order() {
    let f = fixture();
    let seen: Rc<RefCell<Vec<f64>>> = Rc::default();
    let into = seen.clone();
    f.registry.add_listener(Box::new(move |c: &Arc<Commit>| {
        into.borrow_mut().push(c.version)
    }));
    let commits: Vec<Arc<Commit>> = (1..=3)
        .map(|v| {
            Arc::new(Commit {
                database: Arc::from("data"),
                version: f64::from(v),
                local_time: f64::from(v),
                changes: Vec::new(),
                extras: None,
            })
        })
        .collect();
    // No subscriptions at all: listeners still see each commit.
    for c in &commits {
        f.registry.dispatch(c);
    }
    assert_eq!(*seen.borrow(), vec![1.0, 2.0, 3.0]);
}

/// A replay chunk may stop inside one audit entry (a bulk write's) and resume there.
#[test]
fn streamed_replay_resumes_inside_an_entry() {
    check(
        vec![
            PutMany(&[("1", 1), ("2", 1), ("3", 1)]),
            Dispatch,
            Chunked(
                "Dog/#",
                Options {
                    start_time: Some(0.0),
                    ..Options::default()
                },
                1,
            ),
            Pop(0, 1),
            PutMany(&[("2", 2), ("4", 1)]),
            Dispatch,
            Pop(0, 1),
            Put("1", 2),
        ],
        &[&[
            "Put 1 1", "Put 2 1", "Put 3 1", "Put 2 2", "Put 4 1", "Put 1 2",
        ]],
    );
}

/// Without commits, chunks read at one horizon join into one: a stream of many chunks is never
/// held up waiting for dispatch, even when the newest audit entry was never published.
#[test]
fn streamed_state_without_commits_never_waits() {
    let ids: Vec<&'static str> = (0..100)
        .map(|i| &*Box::leak(format!("r{i:03}").into_boxed_str()))
        .collect();
    let mut steps: Vec<Step> = ids.iter().map(|id| Put(id, 1)).collect();
    steps.push(Dispatch);
    steps.push(DeleteAbsent("absent"));
    steps.push(Chunked("Dog/#", Options::default(), 1));
    for _ in 0..20 {
        steps.push(Pop(0, 100));
    }
    let expected: Vec<String> = ids.iter().map(|id| format!("Put {id} 1")).collect();
    let expected: Vec<&str> = expected.iter().map(String::as_str).collect();
    check(steps, &[&expected]);
}

/// A replay that reaches the end while a commit it read is still on its way to this core: that
/// commit, dispatched later, is not sent again.
#[test]
fn streamed_replay_end_waits_for_dispatch() {
    check(
        vec![
            Put("1", 1),
            Put("2", 1),
            Dispatch,
            Chunked(
                "Dog/#",
                Options {
                    start_time: Some(0.0),
                    ..Options::default()
                },
                1,
            ),
            Put("1", 2),
            Pop(0, 10), // 1 1, 2 1, then 1 2 — the end, read before 1 2 is dispatched
            Dispatch,
            Put("1", 3),
        ],
        &[&["Put 1 1", "Put 2 1", "Put 1 2", "Put 1 3"]],
    );
}

/// What a core finds in its inbox when it is woken, per wake.
struct SeenAtWake {
    inbox: Arc<tidepool_io::Inbox<Arc<Commit>>>,
    seen: Mutex<Vec<usize>>,
}

impl std::task::Wake for SeenAtWake {
    fn wake(self: Arc<Self>) {
        let mut taken = Vec::new();
        self.inbox.drain(&mut taken, 64);
        self.seen.lock().unwrap().push(taken.len());
    }
}

/// A commit group's commits reach a waiting core together: it is woken once, after the last,
/// not after the first (a core sharing the writer's CPU would run at that wake and take one).
#[test]
fn a_commit_group_wakes_each_core_once_with_all_its_commits() {
    let (sender, inboxes) = tidepool_io::mesh::<Arc<Commit>>(2, 64);
    let counters: Vec<Arc<Counters>> = (0..2).map(|_| Arc::default()).collect();
    let publish = publisher(sender, counters);
    let watchers: Vec<Arc<SeenAtWake>> = inboxes
        .into_iter()
        .map(|inbox| {
            Arc::new(SeenAtWake {
                inbox: Arc::new(inbox),
                seen: Mutex::new(Vec::new()),
            })
        })
        .collect();
    // Each core waits on its inbox (empty: the poll registers the waker).
    for w in &watchers {
        let waker = std::task::Waker::from(w.clone());
        let mut batch = Vec::new();
        let mut recv = std::pin::pin!(w.inbox.recv_batch(&mut batch, 64));
        let polled =
            std::future::Future::poll(recv.as_mut(), &mut std::task::Context::from_waker(&waker));
        assert!(polled.is_pending());
    }
    let group: Vec<Arc<Commit>> = (0..3)
        .map(|i| {
            Arc::new(Commit {
                database: "data".into(),
                version: 1.0 + f64::from(i),
                local_time: 1.0,
                changes: Vec::new(),
                extras: None,
            })
        })
        .collect();
    publish(&group);
    for w in &watchers {
        assert_eq!(
            *w.seen.lock().unwrap(),
            vec![3],
            "one wake, with the whole group queued"
        );
    }
}
