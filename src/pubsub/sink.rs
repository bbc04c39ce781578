//! A subscriber's outbound queue on one core: bounded, with a defined overflow (SPEC §6.1).
//!
//! The registry pushes, the connection task pops. Initial state and replayed events sit in their
//! own list ahead of live events and are bounded separately (by the snapshot limit), so a large
//! initial state is never dropped as "oldest".

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use super::event::{Encoded, Event, Format};
use super::Counters;
use crate::resource::permissions::ReadableAttributes;

/// Live events queued per subscriber at most (SPEC §6.1).
pub const QUEUE_EVENTS_MAX: usize = 1000;
/// Encoded bytes queued per subscriber at most (SPEC §6.1).
pub const QUEUE_BYTES_MAX: usize = 16 << 20;

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
    /// trimmed (SPEC §5.5), initial state included.
    readable: Option<Rc<ReadableAttributes>>,
    overflow: Overflow,
    events_max: usize,
    bytes_max: usize,
    initial: RefCell<VecDeque<Rc<Event>>>,
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

    /// Live events queued now.
    pub fn len(&self) -> usize {
        self.0.live.borrow().len() + self.0.initial.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
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
        self.encoded(&event);
        self.0.initial.borrow_mut().push_back(event);
        self.wake();
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
                s.dropped.set(s.dropped.get() + 1);
                s.counters.events_dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
        live.push_back((event.clone(), bytes));
        s.live_bytes.set(s.live_bytes.get() + bytes);
        s.counters.events_queued.fetch_add(1, Ordering::Relaxed);
        drop(live);
        self.wake();
    }

    /// Moves up to `max` queued events (initial state first) into `out`.
    pub fn pop_batch(&self, out: &mut Vec<Rc<Event>>, max: usize) -> usize {
        let mut moved = 0;
        let mut initial = self.0.initial.borrow_mut();
        while moved < max {
            match initial.pop_front() {
                Some(e) => out.push(e),
                None => break,
            }
            moved += 1;
        }
        let mut live = self.0.live.borrow_mut();
        while moved < max {
            match live.pop_front() {
                Some((e, bytes)) => {
                    self.0.live_bytes.set(self.0.live_bytes.get() - bytes);
                    out.push(e);
                }
                None => break,
            }
            moved += 1;
        }
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
        if s.closed.get() || s.overflowed.get() || !self.sink.is_empty() {
            return Poll::Ready(());
        }
        s.waker.set(Some(cx.waker().clone()));
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::change::{Change, ChangeKind};
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
