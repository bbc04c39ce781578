//! The hybrid logical clock: versions are ms since the epoch as f64, unique and increasing per
//! node. Shared by every database's writer, so no two transactions on a node share a version.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

pub fn now_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

#[derive(Default)]
pub struct Clock {
    last_bits: AtomicU64,
}

impl Clock {
    pub fn new() -> Self {
        Self::default()
    }

    /// A version above every one issued or observed: the wall clock, or the next f64 after the
    /// last version when the wall clock has not moved past it (or went backwards).
    pub fn next(&self) -> f64 {
        let mut last = self.last_bits.load(Ordering::Acquire);
        loop {
            let previous = f64::from_bits(last);
            let wall = now_ms();
            // Positive f64s order like their bit patterns, so "next representable" is bits + 1.
            let candidate = if wall > previous {
                wall
            } else {
                f64::from_bits(last + 1)
            };
            match self.last_bits.compare_exchange_weak(
                last,
                candidate.to_bits(),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return candidate,
                Err(actual) => last = actual,
            }
        }
    }

    /// Never issue a version at or below `version` again (versions found on disk or from peers).
    pub fn observe(&self, version: f64) {
        if version.is_finite() && version > 0.0 {
            self.last_bits
                .fetch_max(version.to_bits(), Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strictly_increasing_even_when_observed_ahead() {
        let clock = Clock::new();
        let ahead = now_ms() + 1_000_000.0;
        clock.observe(ahead);
        let mut last = ahead;
        for _ in 0..10_000 {
            let v = clock.next();
            assert!(v > last, "{v} > {last}");
            last = v;
        }
    }
}
