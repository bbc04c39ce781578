//! The shutdown gate: one flag every core watches, and a count of requests still in flight.
//!
//! Both are touched by every request, so neither is one shared cache line: the waiters and the
//! in-flight count are split into shards, one per thread (each core is one thread), and only
//! `trigger` and `count` visit every shard.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

/// Shards of the waiter lists and the in-flight count. Threads beyond this many share shards
/// (correct, only slower).
const SHARDS: usize = 64;

/// This thread's shard: threads take the next one in turn the first time they ask.
fn shard() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static MINE: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    MINE.with(|mine| {
        if mine.get() == usize::MAX {
            mine.set(NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS);
        }
        mine.get()
    })
}

/// One cache line (two, against adjacent-line prefetch) per shard, so shards never share one.
#[repr(align(128))]
#[derive(Default)]
struct Padded<T>(T);

/// Cloned to every core. `trigger` wakes every task parked in `wait`, on any core.
#[derive(Clone, Default)]
pub struct Shutdown {
    inner: Arc<ShutdownInner>,
}

struct ShutdownInner {
    triggered: AtomicBool,
    // Wakers of tasks waiting for shutdown, one slot per live `ShutdownWait`, in the shard of
    // the thread that first polled it. Locked only to register, deregister or drain, never across
    // an await; a shard's lock is taken by its own thread, and by `trigger` once.
    waiters: Box<[Padded<Mutex<Waiters>>]>,
}

impl Default for ShutdownInner {
    fn default() -> Self {
        Self {
            triggered: AtomicBool::new(false),
            waiters: (0..SHARDS).map(|_| Padded::default()).collect(),
        }
    }
}

/// The registered wakers. A `ShutdownWait` frees its slot when dropped: a waker kept after its
/// future is gone would keep its task's memory alive (a task is freed with its last waker), which
/// leaked every connection that ever waited here (issue 15).
#[derive(Default)]
struct Waiters {
    slots: Vec<Option<Waker>>,
    free: Vec<usize>,
}

impl Waiters {
    fn register(&mut self, waker: &Waker) -> usize {
        match self.free.pop() {
            Some(slot) => {
                self.slots[slot] = Some(waker.clone());
                slot
            }
            None => {
                self.slots.push(Some(waker.clone()));
                self.slots.len() - 1
            }
        }
    }

    fn update(&mut self, slot: usize, waker: &Waker) {
        if let Some(Some(registered)) = self.slots.get_mut(slot) {
            if !registered.will_wake(waker) {
                registered.clone_from(waker);
            }
        }
    }

    fn deregister(&mut self, slot: usize) {
        if let Some(entry) = self.slots.get_mut(slot) {
            if entry.take().is_some() {
                self.free.push(slot);
            }
        }
        // Once every waiter is gone, give the memory of a past peak back.
        if self.free.len() == self.slots.len() {
            self.slots = Vec::new();
            self.free = Vec::new();
        }
    }

    fn len(&self) -> usize {
        self.slots.len() - self.free.len()
    }
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    fn waiters(&self, shard: usize) -> std::sync::MutexGuard<'_, Waiters> {
        self.inner.waiters[shard]
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    pub fn trigger(&self) {
        self.inner.triggered.store(true, Ordering::SeqCst);
        for shard in 0..SHARDS {
            let waiters = std::mem::take(&mut *self.waiters(shard));
            for waker in waiters.slots.into_iter().flatten() {
                waker.wake();
            }
        }
    }

    pub fn is_triggered(&self) -> bool {
        self.inner.triggered.load(Ordering::SeqCst)
    }

    /// Completes once `trigger` has been called. Dropping it before then deregisters it.
    pub fn wait(&self) -> ShutdownWait<'_> {
        ShutdownWait {
            shutdown: self,
            slot: None,
        }
    }

    /// How many `wait` futures are registered now (a gauge for tests and `/health?verbose`).
    pub fn waiting(&self) -> usize {
        (0..SHARDS).map(|shard| self.waiters(shard).len()).sum()
    }
}

pub struct ShutdownWait<'a> {
    shutdown: &'a Shutdown,
    /// Our shard and slot in its `Waiters`, once polled.
    slot: Option<(usize, usize)>,
}

impl Future for ShutdownWait<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.shutdown.is_triggered() {
            return Poll::Ready(());
        }
        let shard = match self.slot {
            Some((shard, _)) => shard,
            None => shard(),
        };
        let mut waiters = self.shutdown.waiters(shard);
        // Re-check under the lock: a trigger between the first check and here has drained already.
        if self.shutdown.is_triggered() {
            return Poll::Ready(());
        }
        match self.slot {
            Some((_, slot)) => waiters.update(slot, cx.waker()),
            None => {
                let slot = waiters.register(cx.waker());
                drop(waiters);
                self.slot = Some((shard, slot));
            }
        }
        Poll::Pending
    }
}

impl Drop for ShutdownWait<'_> {
    fn drop(&mut self) {
        if let Some((shard, slot)) = self.slot.take() {
            if !self.shutdown.is_triggered() {
                self.shutdown.waiters(shard).deregister(slot);
            }
        }
    }
}

/// Counts requests in flight across all cores, so shutdown can wait for them to finish. Each
/// thread counts in its own shard; a request may end on another thread than it began (the guard
/// remembers its shard), so a shard's count alone means nothing, only the sum.
#[derive(Clone)]
pub struct InFlight {
    shards: Arc<[Padded<AtomicUsize>]>,
}

impl Default for InFlight {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Padded::default()).collect(),
        }
    }
}

impl InFlight {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn enter(&self) -> InFlightGuard<'_> {
        let count = &self.shards[shard()].0;
        count.fetch_add(1, Ordering::SeqCst);
        InFlightGuard { count }
    }

    pub fn count(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| shard.0.load(Ordering::SeqCst))
            .sum()
    }
}

pub struct InFlightGuard<'a> {
    count: &'a AtomicUsize,
}

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Wake;

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_dropped_wait_releases_its_waker() {
        let shutdown = Shutdown::new();
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        for _ in 0..1000 {
            let mut wait = Box::pin(shutdown.wait());
            assert!(wait.as_mut().poll(&mut cx).is_pending());
            assert_eq!(shutdown.waiting(), 1);
        }
        assert_eq!(shutdown.waiting(), 0);
        // Only the test's own reference is left: no registered clone keeps it alive.
        assert_eq!(Arc::strong_count(&count), 2);

        let mut kept = Box::pin(shutdown.wait());
        assert!(kept.as_mut().poll(&mut cx).is_pending());
        shutdown.trigger();
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert!(kept.as_mut().poll(&mut cx).is_ready());
        drop(kept);
        assert_eq!(shutdown.waiting(), 0);
    }
}
