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
    // Wakers of tasks waiting for shutdown. Locked only to push or drain, never across an await.
    wakers: Mutex<Vec<Waker>>,
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn trigger(&self) {
        self.inner.triggered.store(true, Ordering::SeqCst);
        let wakers =
            std::mem::take(&mut *self.inner.wakers.lock().unwrap_or_else(|e| e.into_inner()));
        for waker in wakers {
            waker.wake();
        }
    }

    pub fn is_triggered(&self) -> bool {
        self.inner.triggered.load(Ordering::SeqCst)
    }

    /// Completes once `trigger` has been called.
    pub fn wait(&self) -> ShutdownWait {
        ShutdownWait {
            shutdown: self.clone(),
            registered: false,
        }
    }
}

pub struct ShutdownWait {
    shutdown: Shutdown,
    registered: bool,
}

impl Future for ShutdownWait {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.shutdown.is_triggered() {
            return Poll::Ready(());
        }
        if !self.registered {
            let mut wakers = self
                .shutdown
                .inner
                .wakers
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            // Re-check under the lock: a trigger between the first check and here has drained already.
            if self.shutdown.is_triggered() {
                return Poll::Ready(());
            }
            wakers.push(cx.waker().clone());
            drop(wakers);
            self.registered = true;
        }
        Poll::Pending
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
