//! Timers, on the current core's runtime.

use std::future::Future;
use std::time::Duration;

/// A deadline passed before the future completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed;

pub async fn sleep(duration: Duration) {
    monoio::time::sleep(duration).await
}

/// Runs `future` for at most `duration`; dropping it on expiry cancels its pending I/O.
pub async fn timeout<F: Future>(duration: Duration, future: F) -> Result<F::Output, Elapsed> {
    monoio::time::timeout(duration, future)
        .await
        .map_err(|_| Elapsed)
}
