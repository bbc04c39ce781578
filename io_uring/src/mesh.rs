//! The cross-core mesh: one inbox per core, built once at start and kept.
//!
//! Each inbox pairs a bounded lock-free queue with a cross-thread waker. A sender pushes what it
//! has for a core, then wakes the core's waiting task once: woken after the first of a burst, a
//! core sharing the sender's CPU would run at once and take that one alone. The receiver drains
//! the queue in batches. An idle core parks in io_uring/epoll and uses no CPU. No receive here
//! ever blocks a thread.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use atomic_waker::AtomicWaker;
use crossbeam_queue::ArrayQueue;

struct Slot<T> {
    queue: ArrayQueue<T>,
    waker: AtomicWaker,
}

/// The inbox is full (its bound was reached) or the core index is out of range; the message is
/// handed back so the caller decides whether to drop, retry or fail.
#[derive(Debug)]
pub struct SendError<T>(pub T);

/// Builds one inbox per core, each holding at most `capacity` undelivered messages.
pub fn mesh<T: Send>(cores: usize, capacity: usize) -> (MeshSender<T>, Vec<Inbox<T>>) {
    assert!(cores > 0 && capacity > 0);
    let slots: Arc<[Slot<T>]> = (0..cores)
        .map(|_| Slot {
            queue: ArrayQueue::new(capacity),
            waker: AtomicWaker::new(),
        })
        .collect();
    let inboxes = (0..cores)
        .map(|index| Inbox {
            slots: slots.clone(),
            index,
        })
        .collect();
    (MeshSender { slots }, inboxes)
}

/// Sends to any core's inbox, from any thread.
pub struct MeshSender<T> {
    slots: Arc<[Slot<T>]>,
}

impl<T> Clone for MeshSender<T> {
    fn clone(&self) -> Self {
        Self {
            slots: self.slots.clone(),
        }
    }
}

impl<T> MeshSender<T> {
    pub fn core_count(&self) -> usize {
        self.slots.len()
    }

    /// Queues `message` for `core` without waking it: a sender with several messages for a core
    /// pushes them all, then calls [`MeshSender::wake`] once, so the core takes them in one
    /// batch instead of being woken (and, on a shared CPU, switched to) for each.
    pub fn push(&self, core: usize, message: T) -> Result<(), SendError<T>> {
        let Some(slot) = self.slots.get(core) else {
            return Err(SendError(message));
        };
        slot.queue.push(message).map_err(SendError)
    }

    /// Wakes `core`'s receiver if it waits (a no-op when it is already awake or nothing waits).
    pub fn wake(&self, core: usize) {
        if let Some(slot) = self.slots.get(core) {
            slot.waker.wake();
        }
    }
}

/// One core's receiving end. Only the owning core's tasks should await it.
pub struct Inbox<T> {
    slots: Arc<[Slot<T>]>,
    index: usize,
}

impl<T> Inbox<T> {
    pub fn core(&self) -> usize {
        self.index
    }

    /// Moves up to `max` queued messages into `out` without waiting.
    pub fn drain(&self, out: &mut Vec<T>, max: usize) -> usize {
        let queue = &self.slots[self.index].queue;
        let mut moved = 0;
        while moved < max {
            match queue.pop() {
                Some(message) => {
                    out.push(message);
                    moved += 1;
                }
                None => break,
            }
        }
        moved
    }

    /// Waits until at least one message is queued, then moves up to `max` of them into `out`.
    pub fn recv_batch<'a>(&'a self, out: &'a mut Vec<T>, max: usize) -> RecvBatch<'a, T> {
        RecvBatch {
            inbox: self,
            out,
            max,
        }
    }
}

pub struct RecvBatch<'a, T> {
    inbox: &'a Inbox<T>,
    out: &'a mut Vec<T>,
    max: usize,
}

impl<T> Future for RecvBatch<'_, T> {
    type Output = usize;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<usize> {
        let this = self.get_mut();
        let moved = this.inbox.drain(this.out, this.max);
        if moved > 0 {
            return Poll::Ready(moved);
        }
        this.inbox.slots[this.inbox.index]
            .waker
            .register(cx.waker());
        // A send between the drain and the register would have found no waker: look again.
        let moved = this.inbox.drain(this.out, this.max);
        if moved > 0 {
            Poll::Ready(moved)
        } else {
            Poll::Pending
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_ordered() {
        let (tx, inboxes) = mesh::<u32>(2, 2);
        tx.push(1, 10).unwrap();
        tx.push(1, 11).unwrap();
        assert!(
            tx.push(1, 12).is_err(),
            "third message exceeds the bound of 2"
        );
        assert!(tx.push(2, 0).is_err(), "no core 2");
        let mut out = Vec::new();
        assert_eq!(inboxes[1].drain(&mut out, 10), 2);
        assert_eq!(out, vec![10, 11]);
        assert_eq!(inboxes[0].drain(&mut out, 10), 0);
    }
}
