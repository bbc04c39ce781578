//! Termination signals, taken on a plain thread (the main thread), never on an executor.

use std::io;

/// SIGTERM and SIGINT, delivered through a self-pipe instead of the default action.
pub struct TerminationSignals {
    inner: signal_hook::iterator::Signals,
}

impl TerminationSignals {
    pub fn install() -> io::Result<Self> {
        let inner = signal_hook::iterator::Signals::new([
            signal_hook::consts::SIGTERM,
            signal_hook::consts::SIGINT,
        ])?;
        Ok(Self { inner })
    }

    /// Blocks this thread until the next signal; returns its number.
    pub fn wait(&mut self) -> Option<i32> {
        self.inner.forever().next()
    }
}
