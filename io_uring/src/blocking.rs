//! A bounded pool of plain threads for blocking work (password hashes, file and LMDB
//! environment operations), awaited from an executor without blocking it.
//!
//! The pool has a fixed number of threads, started with it, and a bounded queue: work is
//! accepted while a free thread will take it or fewer than `queue` pieces are waiting, and
//! refused at once with [`Busy`] otherwise, so a flood of work can neither block a core nor
//! grow threads or memory. Work whose awaiting future was dropped before a thread reached it is
//! skipped.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, PoisonError};

use crate::oneshot::oneshot;

/// A piece of work: it computes, and returns what hands the result over. The thread counts
/// itself free again between the two, so a caller that has its answer finds the thread free.
type Job = Box<dyn FnOnce() -> Deliver + Send + 'static>;
type Deliver = Box<dyn FnOnce() + Send + 'static>;

/// Why blocking work was not done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolError {
    /// Every thread is working and the queue is full: try again later.
    Busy,
    /// The work panicked.
    Failed,
}

impl std::fmt::Display for PoolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PoolError::Busy => "server busy: too much blocking work queued; try again later",
            PoolError::Failed => "blocking work failed",
        })
    }
}

impl std::error::Error for PoolError {}

struct State {
    waiting: VecDeque<Job>,
    /// Threads not working on a job (waiting for one, or about to look for one).
    free: usize,
}

struct Shared {
    state: Mutex<State>,
    ready: Condvar,
    queue_max: usize,
}

/// A fixed set of worker threads and a bounded queue (see the module text).
pub struct BlockingPool {
    shared: Arc<Shared>,
    threads: usize,
}

impl BlockingPool {
    /// Starts `threads` (at least 1) threads named `name`; at most `queue` pieces of work wait
    /// beyond those free threads will take.
    pub fn new(name: &str, threads: usize, queue: usize) -> std::io::Result<BlockingPool> {
        let threads = threads.max(1);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                waiting: VecDeque::new(),
                free: threads,
            }),
            ready: Condvar::new(),
            queue_max: queue,
        });
        for _ in 0..threads {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(name.to_string())
                .spawn(move || work(&shared))?;
        }
        Ok(BlockingPool { shared, threads })
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    pub fn queue_max(&self) -> usize {
        self.shared.queue_max
    }

    /// Runs `work` on a pool thread and completes with its result; [`PoolError::Busy`] at once
    /// when the pool is full. Never blocks the calling thread beyond a short lock.
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, PoolError> {
        let (reply, rx) = oneshot();
        self.submit(Box::new(move || -> Deliver {
            if reply.is_canceled() {
                return Box::new(|| ());
            }
            let value = work();
            Box::new(move || reply.send(value))
        }))?;
        rx.await.ok_or(PoolError::Failed)
    }

    fn submit(&self, job: Job) -> Result<(), PoolError> {
        let mut state = self
            .shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Free threads take a waiting job each; the rest of the queue is the bound.
        if state.waiting.len() >= state.free.saturating_add(self.shared.queue_max) {
            return Err(PoolError::Busy);
        }
        state.waiting.push_back(job);
        drop(state);
        self.shared.ready.notify_one();
        Ok(())
    }
}

fn work(shared: &Shared) {
    loop {
        let job = {
            let mut state = shared.state.lock().unwrap_or_else(PoisonError::into_inner);
            loop {
                if let Some(job) = state.waiting.pop_front() {
                    state.free -= 1;
                    break job;
                }
                state = shared
                    .ready
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
            }
        };
        // A panic in one job must not take a thread from the pool; the awaiting side sees
        // `Failed` (its reply is dropped unsent).
        let deliver = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
        shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .free += 1;
        if let Ok(deliver) = deliver {
            deliver();
        }
    }
}

/// Drives a future to completion on this plain (non-executor) thread by parking between
/// wake-ups; never call it on a core.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = std::task::Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = std::task::Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn runs_work_and_refuses_past_the_bound() {
        // Leaked: the futures handed to other threads borrow it for 'static.
        let pool: &'static BlockingPool = Box::leak(Box::new(
            BlockingPool::new("test-pool", 2, 3).expect("pool"),
        ));
        assert_eq!(block_on(pool.run(|| 6 * 7)), Ok(42));

        // Hold both threads, then fill the queue: the next piece is refused at once.
        let (release, gate) = mpsc::channel::<()>();
        let gate = Arc::new(Mutex::new(gate));
        let (started_tx, started) = mpsc::channel::<()>();
        let mut held = Vec::new();
        for _ in 0..2 {
            let (gate, started_tx) = (gate.clone(), started_tx.clone());
            let f = pool.run(move || {
                let _ = started_tx.send(());
                let _ = gate.lock().map(|g| g.recv());
            });
            held.push(std::thread::spawn(move || block_on(f)));
        }
        for _ in 0..2 {
            started.recv().expect("a thread started");
        }
        let mut queued = Vec::new();
        for i in 0..3 {
            let f = pool.run(move || i);
            queued.push(std::thread::spawn(move || block_on(f)));
        }
        // Wait until the three are queued (each future submits on its first poll).
        loop {
            let waiting = pool.shared.state.lock().expect("lock").waiting.len();
            if waiting == 3 {
                break;
            }
            std::thread::yield_now();
        }
        assert_eq!(block_on(pool.run(|| 0)), Err(PoolError::Busy));
        for _ in 0..2 {
            release.send(()).expect("release");
        }
        for h in held {
            assert_eq!(h.join().expect("join"), Ok(()));
        }
        let mut got: Vec<_> = queued
            .into_iter()
            .map(|h| h.join().expect("join").expect("ran"))
            .collect();
        got.sort();
        assert_eq!(got, vec![0, 1, 2]);
        // Room again once the queue drained.
        assert_eq!(block_on(pool.run(|| 1)), Ok(1));
    }

    /// A caller that has its answer finds the thread free: with one thread and no queue, work
    /// submitted right after an answer is never refused.
    #[test]
    fn the_thread_is_free_once_its_answer_is_in() {
        let pool = BlockingPool::new("test-pool", 1, 0).expect("pool");
        for i in 0..200 {
            assert_eq!(block_on(pool.run(move || i)), Ok(i));
        }
    }

    #[test]
    fn a_panic_fails_that_work_only() {
        let pool = BlockingPool::new("test-pool", 1, 1).expect("pool");
        assert_eq!(
            block_on(pool.run(|| -> u8 { panic!("boom") })),
            Err(PoolError::Failed)
        );
        assert_eq!(block_on(pool.run(|| 5)), Ok(5));
    }
}
