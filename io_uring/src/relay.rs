//! Waking many tasks of a core from a plain thread with one cross-thread wake-up.
//!
//! A database writer answers a whole commit group at once: a hundred replies, most of them to
//! tasks of the same core. Each reply's own wake-up would cross threads (the runtime's remote
//! waker queue and an `eventfd` write per task, since the core is parked while the writer
//! runs). Instead the writer collects the wakers in a [`WakeBatch`] and hands each core its
//! share through that core's relay: a bounded queue and one task that wakes them locally. One
//! `eventfd` write per core per group (bench/README.md, "QoS 1 without the disk").

use std::cell::RefCell;
use std::future::poll_fn;
use std::sync::Arc;
use std::task::{Poll, Waker};

use atomic_waker::AtomicWaker;
use crossbeam_queue::ArrayQueue;

/// Wakers a core's relay holds at most; past it a waker is woken directly (correct, slower).
const RELAY_WAKERS_MAX: usize = 4096;

/// One core's relay: wakers handed over from other threads, and its task's waker.
pub(crate) struct Relay {
    queue: ArrayQueue<Waker>,
    waker: AtomicWaker,
}

thread_local! {
    static RELAY: RefCell<Option<Arc<Relay>>> = const { RefCell::new(None) };
}

/// Starts this core's relay task; called once per executor thread by `start_cores`.
pub(crate) fn start() {
    let relay = Arc::new(Relay {
        queue: ArrayQueue::new(RELAY_WAKERS_MAX),
        waker: AtomicWaker::new(),
    });
    RELAY.with(|r| *r.borrow_mut() = Some(relay.clone()));
    crate::spawn(async move {
        poll_fn(|cx| loop {
            while let Some(waker) = relay.queue.pop() {
                // This core's task: a local wake, no system call.
                waker.wake();
            }
            relay.waker.register(cx.waker());
            // A push between the drain and the register found no waker to wake: look again.
            if relay.queue.is_empty() {
                return Poll::<()>::Pending;
            }
        })
        .await;
    });
}

/// The relay of the core this thread runs, if it is one `start_cores` started.
pub(crate) fn current() -> Option<Arc<Relay>> {
    RELAY.try_with(|r| r.borrow().clone()).ok().flatten()
}

/// Wakers collected by a plain thread, woken together by [`WakeBatch::wake_all`] (or on drop):
/// those of a core with a relay through it, with one wake of its relay task.
#[derive(Default)]
pub struct WakeBatch {
    relayed: Vec<(Arc<Relay>, Waker)>,
}

impl WakeBatch {
    pub(crate) fn push(&mut self, relay: Option<&Arc<Relay>>, waker: Waker) {
        match relay {
            Some(relay) => self.relayed.push((relay.clone(), waker)),
            None => waker.wake(),
        }
    }

    /// Wakes every waker collected so far.
    pub fn wake_all(&mut self) {
        let mut relays: Vec<Arc<Relay>> = Vec::new();
        for (relay, waker) in self.relayed.drain(..) {
            if let Err(waker) = relay.queue.push(waker) {
                waker.wake();
                continue;
            }
            if !relays.iter().any(|r| Arc::ptr_eq(r, &relay)) {
                relays.push(relay);
            }
        }
        for relay in relays {
            relay.waker.wake();
        }
    }
}

impl Drop for WakeBatch {
    fn drop(&mut self) {
        self.wake_all();
    }
}
