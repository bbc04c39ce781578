//! A subscriber's outbound queue on one core: bounded, with a defined overflow (docs/realtime.md).
//!
//! The registry pushes, the connection task pops. Initial state and replayed events sit in their
//! own list ahead of live events, so they are never dropped as "oldest"; a table's state streams
//! into that list one chunk at a time, read only when the list is empty and the connection asks
//! for more (see `state`), so it holds at most one chunk. Bound per subscriber: the live queue
//! (`QUEUE_EVENTS_MAX` or `QUEUE_BYTES_MAX`) plus one chunk of state (`state::CHUNK_RECORDS_MAX`
//! records, about `state::CHUNK_BYTES_MAX` stored bytes) plus what its connection is writing.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use super::event::{Encoded, Event, Format};
use super::state::{Chunk, CHUNK_RECORDS_MAX};
use super::{Counters, Stream};
use crate::change::Change;
use crate::resource::permissions::ReadableAttributes;

/// Live events queued per subscriber at most (docs/realtime.md).
pub const QUEUE_EVENTS_MAX: usize = 1000;
/// Encoded bytes queued per subscriber at most (docs/realtime.md).
pub const QUEUE_BYTES_MAX: usize = 16 << 20;

/// State chunks one `pop_batch` reads at most.
const CHUNKS_PER_POP_MAX: usize = 8;

/// What a full queue does with one more event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// Drop the oldest queued live event, counted (WebSocket, SSE, MQTT QoS 0).
    DropOldest,
    /// Stop queueing and mark the sink overflowed; its owner disconnects (MQTT clean QoS ≥ 1).
    Close,
}

struct State {
    format: Format,
    /// The subscriber's readable attributes when its role restricts them: events reach it
    /// trimmed (docs/security.md), initial state included.
    readable: Option<Rc<ReadableAttributes>>,
    overflow: Overflow,
    events_max: usize,
    bytes_max: usize,
    initial: RefCell<VecDeque<(Rc<Event>, usize)>>,
    initial_bytes: Cell<usize>,
    /// The initial state still to be read, while it streams.
    stream: RefCell<Option<Stream>>,
    /// The last chunks read matched nothing and more remain: `ready` yields once before the
    /// next, so a narrow filter over a large table does not hold the core.
    yield_next: Cell<bool>,
    /// Records per state chunk (`state::CHUNK_RECORDS_MAX`; smaller in tests).
    chunk_records: Cell<usize>,
    /// Why the stream could not go on (a read failed); the connection closes with it.
    failed: RefCell<Option<String>>,
    live: RefCell<VecDeque<(Rc<Event>, usize)>>,
    live_bytes: Cell<usize>,
    dropped: Cell<u64>,
    overflowed: Cell<bool>,
    closed: Cell<bool>,
    waker: Cell<Option<Waker>>,
    /// The dispatch stamp of the last change queued, so a change matching several filters of one
    /// sink is queued once.
    last_stamp: Cell<u64>,
    counters: Arc<Counters>,
}

/// A handle to one subscriber's queue; clones share it. Lives on one core (not `Send`).
#[derive(Clone)]
pub struct Sink(Rc<State>);

impl Sink {
    pub fn new(format: Format, overflow: Overflow, counters: Arc<Counters>) -> Sink {
        Sink::with_bounds(
            format,
            overflow,
            counters,
            QUEUE_EVENTS_MAX,
            QUEUE_BYTES_MAX,
        )
    }

    pub fn with_bounds(
        format: Format,
        overflow: Overflow,
        counters: Arc<Counters>,
        events_max: usize,
        bytes_max: usize,
    ) -> Sink {
        Sink(Rc::new(State {
            format,
            readable: None,
            overflow,
            events_max: events_max.max(1),
            bytes_max,
            initial: RefCell::new(VecDeque::new()),
            initial_bytes: Cell::new(0),
            stream: RefCell::new(None),
            yield_next: Cell::new(false),
            chunk_records: Cell::new(CHUNK_RECORDS_MAX),
            failed: RefCell::new(None),
            live: RefCell::new(VecDeque::new()),
            live_bytes: Cell::new(0),
            dropped: Cell::new(0),
            overflowed: Cell::new(false),
            closed: Cell::new(false),
            waker: Cell::new(None),
            last_stamp: Cell::new(0),
            counters,
        }))
    }

    /// A sink whose events are trimmed to `readable` (`None`: unrestricted, like [`Sink::new`]).
    pub fn restricted(
        format: Format,
        overflow: Overflow,
        counters: Arc<Counters>,
        readable: Option<ReadableAttributes>,
    ) -> Sink {
        let mut sink = Sink::new(format, overflow, counters);
        if let Some(state) = Rc::get_mut(&mut sink.0) {
            state.readable = readable.map(Rc::new);
        }
        sink
    }

    pub fn format(&self) -> Format {
        self.0.format
    }

    /// `event` as this subscriber receives it: in its format, trimmed to its attributes.
    pub fn encoded<'a>(&self, event: &'a Event) -> Encoded<'a> {
        event.encoded_for(self.0.format, self.0.readable.as_ref())
    }

    /// Live events dropped on overflow so far.
    pub fn dropped(&self) -> u64 {
        self.0.dropped.get()
    }

    /// True once an `Overflow::Close` sink could not take an event.
    pub fn overflowed(&self) -> bool {
        self.0.overflowed.get()
    }

    /// Events queued now (initial state read so far and live events).
    pub fn len(&self) -> usize {
        self.0.live.borrow().len() + self.0.initial.borrow().len()
    }

    /// Nothing to take now: no event queued, and no state chunk that could be read.
    pub fn is_empty(&self) -> bool {
        self.len() == 0 && !self.stream_readable()
    }

    /// Encoded bytes queued now (initial state and live events).
    pub fn queued_bytes(&self) -> usize {
        self.0.initial_bytes.get() + self.0.live_bytes.get()
    }

    /// The initial state is still being read (not yet every record of it).
    pub fn is_streaming(&self) -> bool {
        self.0
            .stream
            .borrow()
            .as_ref()
            .is_some_and(Stream::is_pending)
    }

    /// Why the initial state could not be sent in full, if it could not; the connection closes.
    pub fn failure(&self) -> Option<String> {
        self.0.failed.borrow().clone()
    }

    fn stream_readable(&self) -> bool {
        self.0
            .stream
            .borrow_mut()
            .as_mut()
            .is_some_and(Stream::is_readable)
    }

    /// Reads a streamed state in chunks of at most `records` (default
    /// `state::CHUNK_RECORDS_MAX`); set before subscribing.
    pub fn set_chunk_records(&self, records: usize) {
        self.0
            .chunk_records
            .set(records.clamp(1, CHUNK_RECORDS_MAX));
    }

    /// Streams the initial state from `stream` as this sink is read; the first chunk is read
    /// now, so a state of one chunk is queued whole at subscribe time.
    pub(super) fn stream(&self, stream: Stream) {
        *self.0.stream.borrow_mut() = Some(stream);
        self.read_chunk(usize::MAX);
        self.wake();
    }

    /// Whether the streaming initial state holds (or will hold) this live change, so it is
    /// skipped; `encoded` caches the change's key encoding across sinks.
    pub(super) fn stream_covers(
        &self,
        change: &Change,
        version: f64,
        encoded: &mut Option<Vec<u8>>,
    ) -> bool {
        let mut stream = self.0.stream.borrow_mut();
        let Some(s) = stream.as_mut() else {
            return false;
        };
        if s.covers(change, version, encoded) {
            return true;
        }
        if s.is_finished() {
            *stream = None;
        }
        false
    }

    /// Reads the next chunk of the streaming state into the initial list (at most `max`
    /// events from records). False when nothing was read.
    fn read_chunk(&self, max: usize) -> bool {
        let mut events = Vec::new();
        let result = {
            let mut stream = self.0.stream.borrow_mut();
            let Some(s) = stream.as_mut() else {
                return false;
            };
            let result = s.read(max.min(self.0.chunk_records.get()), &mut events);
            if matches!(result, Ok(Chunk::Done)) && s.is_finished() {
                *stream = None;
            }
            result
        };
        if let Err(e) = result {
            tracing::error!("reading a subscription's initial state failed: {e}");
            *self.0.failed.borrow_mut() = Some(format!("reading the initial state failed: {e}"));
            *self.0.stream.borrow_mut() = None;
            self.close();
            return false;
        }
        let read = !events.is_empty();
        for event in events {
            self.push_initial(Rc::new(event));
        }
        read
    }

    /// Ends the stream: `ready` completes and nothing more is queued.
    pub fn close(&self) {
        self.0.closed.set(true);
        self.wake();
    }

    pub fn is_closed(&self) -> bool {
        self.0.closed.get()
    }

    fn wake(&self) {
        if let Some(w) = self.0.waker.take() {
            w.wake();
        }
    }

    pub(super) fn push_initial(&self, event: Rc<Event>) {
        let bytes = self.encoded(&event).len();
        self.0.initial.borrow_mut().push_back((event, bytes));
        self.0.initial_bytes.set(self.0.initial_bytes.get() + bytes);
        self.add_queued(bytes as i64);
        self.wake();
    }

    fn add_queued(&self, bytes: i64) {
        let counter = &self.0.counters.queued_bytes;
        if bytes >= 0 {
            counter.fetch_add(bytes as u64, Ordering::Relaxed);
        } else {
            counter.fetch_sub(bytes.unsigned_abs(), Ordering::Relaxed);
        }
    }

    /// Queues a live event once per dispatch `stamp`, applying the bound.
    pub(super) fn push_live(&self, event: &Rc<Event>, stamp: u64) {
        let s = &self.0;
        if s.closed.get() || s.overflowed.get() || s.last_stamp.get() == stamp {
            return;
        }
        s.last_stamp.set(stamp);
        let bytes = self.encoded(event).len();
        let mut live = s.live.borrow_mut();
        while !live.is_empty()
            && (live.len() >= s.events_max || s.live_bytes.get() + bytes > s.bytes_max)
        {
            if s.overflow == Overflow::Close {
                s.overflowed.set(true);
                drop(live);
                self.wake();
                return;
            }
            if let Some((_, old)) = live.pop_front() {
                s.live_bytes.set(s.live_bytes.get() - old);
                self.add_queued(-(old as i64));
                s.dropped.set(s.dropped.get() + 1);
                s.counters.events_dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
        live.push_back((event.clone(), bytes));
        s.live_bytes.set(s.live_bytes.get() + bytes);
        self.add_queued(bytes as i64);
        s.counters.events_queued.fetch_add(1, Ordering::Relaxed);
        drop(live);
        self.wake();
    }

    /// Moves up to `max` queued events into `out`: the initial state read so far, then live
    /// events, then (if room is left) the next chunk of a streaming state. A live event queued
    /// while the state streams is for a record already read, so it follows that record's state.
    pub fn pop_batch(&self, out: &mut Vec<Rc<Event>>, max: usize) -> usize {
        let mut moved = self.pop_initial(out, max);
        let mut live = self.0.live.borrow_mut();
        let mut freed = 0;
        while moved < max {
            match live.pop_front() {
                Some((e, bytes)) => {
                    freed += bytes;
                    out.push(e);
                }
                None => break,
            }
            moved += 1;
        }
        drop(live);
        self.0.live_bytes.set(self.0.live_bytes.get() - freed);
        self.add_queued(-(freed as i64));
        // A chunk may match nothing (a narrow filter over many records): a few per call at most.
        for _ in 0..CHUNKS_PER_POP_MAX {
            if moved >= max {
                break;
            }
            if !self.read_chunk(max - moved) {
                self.0.yield_next.set(moved == 0 && self.is_streaming());
                break;
            }
            moved += self.pop_initial(out, max - moved);
        }
        moved
    }

    fn pop_initial(&self, out: &mut Vec<Rc<Event>>, max: usize) -> usize {
        let mut moved = 0;
        let mut freed = 0;
        let mut initial = self.0.initial.borrow_mut();
        while moved < max {
            match initial.pop_front() {
                Some((e, bytes)) => {
                    freed += bytes;
                    out.push(e);
                }
                None => break,
            }
            moved += 1;
        }
        drop(initial);
        self.0.initial_bytes.set(self.0.initial_bytes.get() - freed);
        self.add_queued(-(freed as i64));
        moved
    }

    /// Completes when an event is queued, or the sink is closed or overflowed.
    pub fn ready(&self) -> Ready<'_> {
        Ready { sink: self }
    }
}

pub struct Ready<'a> {
    sink: &'a Sink,
}

impl Future for Ready<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let s = &self.sink.0;
        if s.closed.get() || s.overflowed.get() {
            return Poll::Ready(());
        }
        if s.yield_next.take() {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        if !self.sink.is_empty() {
            return Poll::Ready(());
        }
        if self.sink.is_streaming() {
            // The state waits for this core's dispatch to catch up (`state::UNSETTLED_MAX`):
            // yield to it and look again.
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        s.waker.set(Some(cx.waker().clone()));
        Poll::Pending
    }
}

impl Drop for State {
    fn drop(&mut self) {
        let held = self.initial_bytes.get() + self.live_bytes.get();
        self.counters
            .queued_bytes
            .fetch_sub(held as u64, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::change::ChangeKind;
    use crate::value::Value;

    fn event(version: f64) -> Rc<Event> {
        Rc::new(Event::single(
            Arc::from("data"),
            version,
            version,
            Change {
                table: Arc::from("T"),
                key: Value::Int(1),
                kind: ChangeKind::Delete,
                value: None,
            },
        ))
    }

    /// Pushes versions 1..=pushed into a sink bounded at `events_max`; expects what pops.
    fn check(overflow: Overflow, events_max: usize, pushed: u64, expected: (Vec<f64>, u64, bool)) {
        let sink = Sink::with_bounds(Format::Json, overflow, Arc::default(), events_max, 1 << 20);
        sink.push_initial(event(0.5));
        for v in 1..=pushed {
            sink.push_live(&event(v as f64), v);
            sink.push_live(&event(v as f64), v); // the same dispatch again: queued once
        }
        let mut out = Vec::new();
        sink.pop_batch(&mut out, usize::MAX);
        let versions: Vec<f64> = out.iter().map(|e| e.version()).collect();
        assert_eq!((versions, sink.dropped(), sink.overflowed()), expected);
    }

    #[test]
    fn bounded_queue() {
        check(Overflow::DropOldest, 3, 2, (vec![0.5, 1.0, 2.0], 0, false));
        check(
            Overflow::DropOldest,
            3,
            5,
            (vec![0.5, 3.0, 4.0, 5.0], 2, false),
        );
        check(Overflow::Close, 3, 5, (vec![0.5, 1.0, 2.0, 3.0], 0, true));
    }
}
