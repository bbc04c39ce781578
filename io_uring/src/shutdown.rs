//! The shutdown gate: one flag every core watches, and a count of requests still in flight.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

/// Cloned to every core. `trigger` wakes every task parked in `wait`, on any core.
#[derive(Clone, Default)]
pub struct Shutdown {
    inner: Arc<ShutdownInner>,
}

#[derive(Default)]
struct ShutdownInner {
    triggered: AtomicBool,
    // Wakers of tasks waiting for shutdown, one slot per live `ShutdownWait`. Locked only to
    // register, deregister or drain, never across an await.
    waiters: Mutex<Waiters>,
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

    fn waiters(&self) -> std::sync::MutexGuard<'_, Waiters> {
        self.inner.waiters.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn trigger(&self) {
        self.inner.triggered.store(true, Ordering::SeqCst);
        let waiters = std::mem::take(&mut *self.waiters());
        for waker in waiters.slots.into_iter().flatten() {
            waker.wake();
        }
    }

    pub fn is_triggered(&self) -> bool {
        self.inner.triggered.load(Ordering::SeqCst)
    }

    /// Completes once `trigger` has been called. Dropping it before then deregisters it.
    pub fn wait(&self) -> ShutdownWait {
        ShutdownWait {
            shutdown: self.clone(),
            slot: None,
        }
    }

    /// How many `wait` futures are registered now (a gauge for tests and `/health?verbose`).
    pub fn waiting(&self) -> usize {
        self.waiters().len()
    }
}

pub struct ShutdownWait {
    shutdown: Shutdown,
    /// Our slot in `Waiters`, once polled.
    slot: Option<usize>,
}

impl Future for ShutdownWait {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.shutdown.is_triggered() {
            return Poll::Ready(());
        }
        let mut waiters = self.shutdown.waiters();
        // Re-check under the lock: a trigger between the first check and here has drained already.
        if self.shutdown.is_triggered() {
            return Poll::Ready(());
        }
        match self.slot {
            Some(slot) => waiters.update(slot, cx.waker()),
            None => {
                let slot = waiters.register(cx.waker());
                drop(waiters);
                self.slot = Some(slot);
            }
        }
        Poll::Pending
    }
}

impl Drop for ShutdownWait {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            if !self.shutdown.is_triggered() {
                self.shutdown.waiters().deregister(slot);
            }
        }
    }
}

/// Counts requests in flight across all cores, so shutdown can wait for them to finish.
#[derive(Clone, Default)]
pub struct InFlight {
    count: Arc<AtomicUsize>,
}

impl InFlight {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn enter(&self) -> InFlightGuard {
        self.count.fetch_add(1, Ordering::SeqCst);
        InFlightGuard {
            count: self.count.clone(),
        }
    }

    pub fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }
}

pub struct InFlightGuard {
    count: Arc<AtomicUsize>,
}

impl Drop for InFlightGuard {
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
