//! One reading of the monotonic clock shared by everything a batch of requests does on a core.
//!
//! Answering one HTTP request used to read the clock about seven times (the router's and the
//! REST handler's timings, the `Date` header, the credential cache's expiry, the keep-alive
//! stamp). A connection opens a [`Scope`] while it answers a batch; inside it, [`recent`] gives
//! the last reading taken on this core instead of a new one, and [`now`] takes a new one and
//! remembers it. Outside a scope (or after another task's scope ended it), [`recent`] reads the
//! clock. Use [`recent`] only where a time a few microseconds old is as good as a new one
//! (an expiry check, a start stamp); use [`now`] where a duration is measured.

use std::cell::Cell;
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

/// While it lives, readings are shared through [`recent`]; dropping it (the batch answered, or
/// the task dropped) forgets the reading, so nothing outside a scope ever sees an old one.
pub struct Scope(());

impl Scope {
    /// Opens a scope with a new reading.
    pub fn open() -> Scope {
        let t = Instant::now();
        RECENT.with(|recent| recent.set(Some(t)));
        Scope(())
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        RECENT.with(|recent| recent.set(None));
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
}
