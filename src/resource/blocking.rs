//! The two bounded pools blocking work runs on, never a core (docs/security.md "Password
//! checks", docs/configuration.md): one for password checks, one for everything else that
//! blocks (files, opening and deleting environments, hashing new passwords, cluster changes).
//! They are separate so a queue of slow admin work cannot delay logins, and a flood of logins
//! cannot delay admin work. Each has a fixed number of threads and a bounded queue; past it the
//! caller gets [`Busy`] at once (HTTP 503 with `Retry-After`, MQTT CONNACK server busy).

use std::sync::OnceLock;

use tidepool_io::{BlockingPool, PoolError};

use crate::config::BlockingConfig;

/// Seconds a refused caller is told to wait (`Retry-After`).
pub const BUSY_RETRY_AFTER_S: u64 = 1;

/// The work was not done: the pool was full, or the work failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Busy {
    /// Every thread is working and the queue is full.
    Full,
    /// The work panicked (a bug; logged by the panic hook).
    Failed,
}

impl Busy {
    pub fn status(self) -> u16 {
        match self {
            Busy::Full => 503,
            Busy::Failed => 500,
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            Busy::Full => "Server busy; try again later",
            Busy::Failed => "blocking work failed",
        }
    }
}

impl std::fmt::Display for Busy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.message())
    }
}

impl From<PoolError> for Busy {
    fn from(e: PoolError) -> Self {
        match e {
            PoolError::Busy => Busy::Full,
            PoolError::Failed => Busy::Failed,
        }
    }
}

impl From<Busy> for super::VerbError {
    fn from(e: Busy) -> Self {
        super::VerbError::new(e.status(), e.message())
    }
}

static VERIFY: OnceLock<BlockingPool> = OnceLock::new();
static ADMIN: OnceLock<BlockingPool> = OnceLock::new();

/// Sizes used before [`configure`] (unit tests that never start a server).
const DEFAULT: BlockingConfig = BlockingConfig {
    verify_threads: 2,
    verify_queue: 128,
    threads: 4,
    queue: 256,
};

fn pool(
    cell: &'static OnceLock<BlockingPool>,
    name: &str,
    threads: usize,
    queue: usize,
) -> &'static BlockingPool {
    cell.get_or_init(|| {
        // Starting a handful of threads fails only when the process is out of them; nothing
        // can be served then.
        BlockingPool::new(name, threads, queue)
            .unwrap_or_else(|e| panic!("cannot start the {name} threads: {e}"))
    })
}

/// Starts both pools with the configured sizes; called once at start, before the cores serve.
/// A pool already started (a second server in one test process) keeps its sizes.
pub fn configure(config: &BlockingConfig) {
    pool(
        &VERIFY,
        "verify",
        config.verify_threads,
        config.verify_queue,
    );
    pool(&ADMIN, "blocking", config.threads, config.queue);
}

fn verify_pool() -> &'static BlockingPool {
    pool(
        &VERIFY,
        "verify",
        DEFAULT.verify_threads,
        DEFAULT.verify_queue,
    )
}

fn admin_pool() -> &'static BlockingPool {
    pool(&ADMIN, "blocking", DEFAULT.threads, DEFAULT.queue)
}

/// Runs a password check (argon2id verification) on the password pool.
pub async fn run_verify<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Busy> {
    Ok(verify_pool().run(work).await?)
}

/// Runs other blocking work (files, environments, hashing a new password, cluster changes) on
/// the blocking pool and awaits it without blocking the core.
pub async fn run_blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Busy> {
    Ok(admin_pool().run(work).await?)
}
