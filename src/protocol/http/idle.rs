//! Keep-alive expiry for idle connections, one sweep per core instead of a timer per connection.
//!
//! A runtime timer is several hundred bytes of per-connection state (the executor's timer entry is
//! cache-line padded); 100,000 idle keep-alive connections would hold tens of megabytes in timers
//! alone. Here a connection holds one slot in its core's table instead: it stamps the slot with a
//! deadline when it goes idle and clears it when its next request arrives (no allocation, no
//! timer), and one task per core wakes every few milliseconds to a second, expiring the slots
//! whose deadline has passed. A connection may so live up to one tick past its keep-alive
//! timeout (docs/design.md, "Idle connections").

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// Shortest and longest pause between two sweeps; in between, an eighth of the shortest
/// keep-alive timeout in use.
const TICK_MIN: Duration = Duration::from_millis(10);
const TICK_MAX: Duration = Duration::from_secs(1);

#[derive(Default)]
struct Slot {
    /// When the connection's keep-alive ends, while it is idle.
    deadline: Option<Instant>,
    /// The task waiting on [`Expiry`].
    waker: Option<Waker>,
    expired: bool,
}

#[derive(Default)]
struct Table {
    slots: Vec<Slot>,
    free: Vec<usize>,
    /// A sweeper task is running on this core.
    sweeping: bool,
    /// The shortest keep-alive timeout stamped since the sweeper started (sets its tick).
    shortest: Option<Duration>,
    /// This core's count of buffer sets allocated, at the last tick and at the last trim.
    sets_seen: u64,
    sets_trimmed: u64,
}

/// Buffer sets a burst must have allocated before its end gives memory back to the system.
const TRIM_AFTER_SETS: u64 = 256;

thread_local! {
    /// This core's table (each core is one thread; nothing here crosses cores).
    static TABLE: RefCell<Table> = RefCell::new(Table::default());
}

/// A connection's slot in its core's table, freed when dropped.
pub struct IdleSlot {
    index: usize,
}

impl IdleSlot {
    pub fn new() -> IdleSlot {
        let index = TABLE.with(|table| {
            let mut table = table.borrow_mut();
            match table.free.pop() {
                Some(index) => index,
                None => {
                    table.slots.push(Slot::default());
                    table.slots.len() - 1
                }
            }
        });
        IdleSlot { index }
    }

    /// The connection is idle from now on: its keep-alive ends `timeout` from now. Returns the
    /// reading of "now" it used.
    pub fn idle(&self, timeout: Duration) -> Instant {
        let now = Instant::now();
        let deadline = now + timeout;
        let start_sweeper = TABLE.with(|table| {
            let mut table = table.borrow_mut();
            let slot = &mut table.slots[self.index];
            slot.deadline = Some(deadline);
            slot.expired = false;
            table.shortest = Some(table.shortest.map_or(timeout, |s| s.min(timeout)));
            !std::mem::replace(&mut table.sweeping, true)
        });
        if start_sweeper {
            tidepool_io::spawn(sweep());
        }
        now
    }

    /// The connection's next request arrived: it is not idle.
    pub fn active(&self) {
        TABLE.with(|table| {
            let mut table = table.borrow_mut();
            let slot = &mut table.slots[self.index];
            slot.deadline = None;
            slot.expired = false;
            slot.waker = None;
        });
    }

    /// Completes once the keep-alive stamped by [`IdleSlot::idle`] has run out.
    pub fn expiry(&self) -> Expiry<'_> {
        Expiry { slot: self }
    }
}

impl Default for IdleSlot {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for IdleSlot {
    fn drop(&mut self) {
        TABLE.with(|table| {
            let mut table = table.borrow_mut();
            table.slots[self.index] = Slot::default();
            table.free.push(self.index);
            // Once every connection is gone, give the memory of a past peak back.
            if table.free.len() == table.slots.len() {
                table.slots = Vec::new();
                table.free = Vec::new();
            }
        });
    }
}

pub struct Expiry<'a> {
    slot: &'a IdleSlot,
}

impl Future for Expiry<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        TABLE.with(|table| {
            let mut table = table.borrow_mut();
            let slot = &mut table.slots[self.slot.index];
            if slot.expired {
                return Poll::Ready(());
            }
            match &mut slot.waker {
                Some(waker) if waker.will_wake(cx.waker()) => {}
                waker => *waker = Some(cx.waker().clone()),
            }
            Poll::Pending
        })
    }
}

/// The core's sweeper: expires idle slots past their deadline, and ends when no connection is
/// idle (the next one to go idle starts it again).
async fn sweep() {
    let mut woken = Vec::new();
    loop {
        let tick = TABLE.with(|table| {
            let table = table.borrow();
            table
                .shortest
                .map_or(TICK_MAX, |s| (s / 8).clamp(TICK_MIN, TICK_MAX))
        });
        tidepool_io::sleep(tick).await;
        let now = Instant::now();
        let any_idle = TABLE.with(|table| {
            let mut table = table.borrow_mut();
            let mut any_idle = false;
            for slot in &mut table.slots {
                match slot.deadline {
                    Some(deadline) if deadline <= now => {
                        slot.deadline = None;
                        slot.expired = true;
                        woken.extend(slot.waker.take());
                    }
                    Some(_) => any_idle = true,
                    None => {}
                }
            }
            if !any_idle {
                table.sweeping = false;
                table.shortest = None;
            }
            any_idle
        });
        // Woken outside the borrow: a waker may run its task's code at once.
        for waker in woken.drain(..) {
            waker.wake();
        }
        give_back_after_burst();
        if !any_idle {
            return;
        }
    }
}

/// Once a burst of requests that needed more buffer sets than the core keeps spare is over (sets
/// were allocated, none in the last tick), asks glibc to return the freed memory to the system:
/// the freed sets lie between live allocations, below the heap's top, where glibc's own trimming
/// does not reach, so a burst of 15,000 requests at once would otherwise leave ~60 MB more
/// resident than before it (docs/design.md, "Idle connections").
fn give_back_after_burst() {
    let sets = super::conn::sets_allocated();
    let trim = TABLE.with(|table| {
        let mut table = table.borrow_mut();
        let over = sets == table.sets_seen && sets - table.sets_trimmed >= TRIM_AFTER_SETS;
        table.sets_seen = sets;
        if over {
            table.sets_trimmed = sets;
        }
        over
    });
    if trim {
        let started = Instant::now();
        #[cfg(target_env = "gnu")]
        // SAFETY: malloc_trim only returns free memory to the system; glibc locks each arena.
        unsafe {
            libc::malloc_trim(0);
        }
        tracing::info!(
            "gave memory back after a burst of buffer sets in {:?}",
            started.elapsed()
        );
    }
}
