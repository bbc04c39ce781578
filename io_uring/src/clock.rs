//! One reading of the monotonic clock shared by everything a batch of requests does on a core.
//!
//! Answering one HTTP request used to read the clock about seven times (the router's and the
//! REST handler's timings, the `Date` header, the credential cache's expiry, the keep-alive
//! stamp). A connection opens a [`Scope`] while it answers a batch; inside it, [`recent`] gives
//! the last reading taken on this core instead of a new one, and [`now`] takes a new one and
//! remembers it. Outside a scope, [`recent`] reads the clock. Use [`recent`] only where a time a
//! few microseconds old is as good as a new one (an expiry check, a start stamp); use [`now`]
//! where a duration is measured.
//!
//! A scope lives for one poll of a task, never across an `.await` that waits: [`scoped`] opens
//! one each time its future is polled and closes it before returning. So a reading is shared only
//! by what runs in one go on the core, and no other task ever sees a reading taken before it was
//! scheduled (docs/design.md, "One clock reading per batch").

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

thread_local! {
    /// The last reading taken inside an open scope on this thread (each core is one thread).
    static RECENT: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Reads the clock; inside a scope, the reading becomes this core's recent time.
pub fn now() -> Instant {
    let t = Instant::now();
    RECENT.with(|recent| {
        if recent.get().is_some() {
            recent.set(Some(t));
        }
    });
    t
}

/// The core's recent reading while a scope is open, or a new reading.
pub fn recent() -> Instant {
    RECENT.with(Cell::get).unwrap_or_else(Instant::now)
}

/// While it lives, readings are shared through [`recent`]; dropping it restores what was there
/// before (nothing, outside any scope), so nothing outside a scope ever sees an old reading.
/// Scopes nest; a scope must not be held across an `.await` that waits (use [`scoped`]).
pub struct Scope {
    outer: Option<Instant>,
}

impl Scope {
    /// Opens a scope with a new reading.
    pub fn open() -> Scope {
        let t = Instant::now();
        let outer = RECENT.with(|recent| recent.replace(Some(t)));
        Scope { outer }
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        RECENT.with(|recent| recent.set(self.outer));
    }
}

pin_project_lite::pin_project! {
    /// A future that runs each of its polls inside a [`Scope`] of its own. Made by [`scoped`].
    pub struct Scoped<F> {
        #[pin]
        inner: F,
    }
}

/// Runs `inner` with one clock reading per poll: what it does between two waits shares a
/// reading; after a wait (a commit, a read) the next poll takes a new one.
pub fn scoped<F: Future>(inner: F) -> Scoped<F> {
    Scoped { inner }
}

impl<F: Future> Future for Scoped<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let _scope = Scope::open();
        self.project().inner.poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_is_shared_inside_a_scope_only() {
        let outside = recent();
        assert!(
            recent() >= outside,
            "outside a scope every call reads the clock"
        );
        let scope = Scope::open();
        let first = recent();
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert_eq!(recent(), first, "inside a scope the reading is shared");
        let later = now();
        assert!(later > first);
        assert_eq!(recent(), later, "now() refreshes the shared reading");
        drop(scope);
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(
            recent() > later,
            "a closed scope leaves no old reading behind"
        );
    }

    #[test]
    fn nested_scopes_restore_the_outer_reading() {
        let outer = Scope::open();
        let first = recent();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let inner = Scope::open();
        assert!(recent() > first, "an inner scope takes its own reading");
        drop(inner);
        assert_eq!(recent(), first, "the outer scope's reading is back");
        drop(outer);
    }

    /// A scoped future that waits does not leave its reading to whatever runs next on the core
    /// (another connection's `Date`, a credential expiry), and takes a new reading when resumed.
    #[test]
    fn a_scoped_future_shares_its_reading_only_while_it_is_polled() {
        use std::task::Waker;
        let seen = std::cell::RefCell::new(Vec::new());
        let mut waited = false;
        let fut = scoped(std::future::poll_fn(|_| {
            seen.borrow_mut().push(recent());
            if waited {
                Poll::Ready(())
            } else {
                waited = true;
                Poll::Pending
            }
        }));
        let mut fut = std::pin::pin!(fut);
        let mut cx = Context::from_waker(Waker::noop());
        assert!(fut.as_mut().poll(&mut cx).is_pending());
        std::thread::sleep(std::time::Duration::from_millis(2));
        let between = recent();
        assert!(
            between > seen.borrow()[0],
            "while the future waits, others read the clock, not its reading"
        );
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(fut.as_mut().poll(&mut cx).is_ready());
        let resumed = seen.borrow()[1];
        assert!(resumed > between, "a resumed future takes a new reading");
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(
            recent() > resumed,
            "no reading is left behind after the last poll"
        );
    }
}
