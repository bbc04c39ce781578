//! A one-shot reply from a plain thread (a database writer) to a task on a core. Sending wakes the
//! waiting task through the runtime's cross-thread waker, or, for many replies at once, through
//! its core's relay ([`OneshotSender::send_in`], `relay.rs`); the receiving core never blocks.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};

use atomic_waker::AtomicWaker;

use crate::relay::{self, Relay, WakeBatch};

struct Inner<T> {
    // Locked only to put or take the value, never across an await.
    value: Mutex<Option<T>>,
    done: AtomicBool,
    waker: AtomicWaker,
    /// The relay of the core the receiver is polled on (set at its first poll there).
    relay: OnceLock<Arc<Relay>>,
}

pub fn oneshot<T: Send>() -> (OneshotSender<T>, OneshotReceiver<T>) {
    let inner = Arc::new(Inner {
        value: Mutex::new(None),
        done: AtomicBool::new(false),
        waker: AtomicWaker::new(),
        relay: OnceLock::new(),
    });
    (
        OneshotSender {
            inner: Some(inner.clone()),
        },
        OneshotReceiver { inner },
    )
}

pub struct OneshotSender<T> {
    inner: Option<Arc<Inner<T>>>,
}

impl<T> OneshotSender<T> {
    /// Whether the receiver is gone (nobody waits for the value any more).
    pub fn is_canceled(&self) -> bool {
        self.inner
            .as_ref()
            .is_none_or(|inner| Arc::strong_count(inner) == 1)
    }

    pub fn send(mut self, value: T) {
        if let Some(inner) = self.inner.take() {
            *inner.value.lock().unwrap_or_else(|e| e.into_inner()) = Some(value);
            inner.done.store(true, Ordering::Release);
            inner.waker.wake();
        }
    }

    /// Sends `value` and leaves the wake-up to `batch`, which wakes all of its receivers at once
    /// (one cross-thread wake per core, see `relay.rs`).
    pub fn send_in(mut self, value: T, batch: &mut WakeBatch) {
        if let Some(inner) = self.inner.take() {
            *inner.value.lock().unwrap_or_else(|e| e.into_inner()) = Some(value);
            inner.done.store(true, Ordering::Release);
            // `take` races with a concurrent `register` as `wake` does: a receiver registering
            // now sees `done` on its check after registering.
            if let Some(waker) = inner.waker.take() {
                batch.push(inner.relay.get(), waker);
            }
        }
    }
}

impl<T> Drop for OneshotSender<T> {
    fn drop(&mut self) {
        // Dropped without sending: the receiver completes with None.
        if let Some(inner) = self.inner.take() {
            inner.done.store(true, Ordering::Release);
            inner.waker.wake();
        }
    }
}

/// Completes with the sent value, or `None` if the sender was dropped without sending.
pub struct OneshotReceiver<T> {
    inner: Arc<Inner<T>>,
}

impl<T> OneshotReceiver<T> {
    fn take(&self) -> Option<T> {
        self.inner
            .value
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }
}

impl<T> Future for OneshotReceiver<T> {
    type Output = Option<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        if self.inner.done.load(Ordering::Acquire) {
            return Poll::Ready(self.take());
        }
        if self.inner.relay.get().is_none() {
            if let Some(relay) = relay::current() {
                let _ = self.inner.relay.set(relay);
            }
        }
        self.inner.waker.register(cx.waker());
        if self.inner.done.load(Ordering::Acquire) {
            return Poll::Ready(self.take());
        }
        Poll::Pending
    }
}
