//! Executors: one monoio runtime per core, pinned, on a tuned io_uring ring or on epoll.

use std::fmt;
use std::future::Future;
use std::io;
use std::str::FromStr;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;

use monoio::{IoUringDriver, LegacyDriver, RuntimeBuilder};

/// Index of an executor thread, 0-based, dense.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CoreId(pub usize);

impl fmt::Display for CoreId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The driver asked for on the command line (`--io-driver`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoDriver {
    Uring,
    Epoll,
    /// io_uring where the kernel allows it (seccomp may not), else epoll.
    Auto,
}

impl FromStr for IoDriver {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "uring" | "io_uring" | "iouring" => Ok(IoDriver::Uring),
            "epoll" | "legacy" => Ok(IoDriver::Epoll),
            "auto" => Ok(IoDriver::Auto),
            other => Err(format!(
                "unknown io driver {other:?}; expected uring, epoll or auto"
            )),
        }
    }
}

/// The driver actually running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriverKind {
    Uring,
    Epoll,
}

impl fmt::Display for DriverKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DriverKind::Uring => "io_uring",
            DriverKind::Epoll => "epoll",
        })
    }
}

#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// One executor per entry, pinned to that CPU.
    pub cpus: Vec<usize>,
    pub driver: IoDriver,
    /// Submission queue entries per ring (at least 256).
    pub ring_entries: u32,
    /// Pin each executor to its CPU.
    pub pin: bool,
    pub thread_name: String,
}

impl RuntimeConfig {
    pub fn new(cpus: Vec<usize>, driver: IoDriver) -> Self {
        Self {
            cpus,
            driver,
            ring_entries: 1024,
            pin: true,
            thread_name: "core".into(),
        }
    }
}

/// What a core's main task knows about where it runs.
#[derive(Debug, Clone, Copy)]
pub struct CoreContext {
    pub core: CoreId,
    pub core_count: usize,
    pub cpu: usize,
    pub driver: DriverKind,
}

fn uring_builder() -> io_uring::Builder {
    // Cooperative task running: completions are reaped when the thread enters the kernel anyway,
    // not by an interrupt per completion; measured ~1.6x the default ring here (CRATES.md).
    let mut builder = io_uring::IoUring::builder();
    builder
        .setup_coop_taskrun()
        .setup_single_issuer()
        .setup_taskrun_flag();
    builder
}

/// Whether this kernel lets us set up the tuned ring at all (seccomp and old kernels may not).
fn uring_available(entries: u32) -> Result<(), io::Error> {
    uring_builder().build(entries).map(drop)
}

fn describe_uring_error(err: &io::Error) -> String {
    match err.raw_os_error() {
        Some(libc::ENOMEM) => format!(
            "{err}: the ring needs locked memory; raise the limit (`ulimit -l`, or LimitMEMLOCK= in the systemd unit)"
        ),
        Some(libc::EPERM) | Some(libc::ENOSYS) => {
            format!("{err}: io_uring is blocked here (seccomp or sysctl kernel.io_uring_disabled)")
        }
        _ => err.to_string(),
    }
}

/// Starts one pinned executor thread per CPU in `config` and runs `main(ctx)` on each until it
/// returns. Returns once every executor has built its runtime, or the first error.
pub fn start_cores<F, Fut>(
    config: &RuntimeConfig,
    main: F,
) -> io::Result<(DriverKind, Vec<JoinHandle<()>>)>
where
    F: Fn(CoreContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + 'static,
{
    assert!(!config.cpus.is_empty());
    let driver = match config.driver {
        IoDriver::Epoll => DriverKind::Epoll,
        IoDriver::Uring => match uring_available(config.ring_entries) {
            Ok(()) => DriverKind::Uring,
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!(
                        "--io-driver uring: cannot set up io_uring: {}",
                        describe_uring_error(&e)
                    ),
                ))
            }
        },
        IoDriver::Auto => match uring_available(config.ring_entries) {
            Ok(()) => DriverKind::Uring,
            Err(e) => {
                tracing::warn!(
                    "io_uring unavailable ({}); falling back to epoll",
                    describe_uring_error(&e)
                );
                DriverKind::Epoll
            }
        },
    };

    let main = Arc::new(main);
    let (ready_tx, ready_rx) = mpsc::channel::<io::Result<()>>();
    let mut handles = Vec::with_capacity(config.cpus.len());
    for (index, &cpu) in config.cpus.iter().enumerate() {
        let ctx = CoreContext {
            core: CoreId(index),
            core_count: config.cpus.len(),
            cpu,
            driver,
        };
        let main = main.clone();
        let ready_tx = ready_tx.clone();
        let entries = config.ring_entries;
        let pin = config.pin;
        let handle = std::thread::Builder::new()
            .name(format!("{}-{}", config.thread_name, index))
            .spawn(move || {
                if pin && !core_affinity::set_for_current(core_affinity::CoreId { id: cpu }) {
                    tracing::warn!(core = index, cpu, "could not pin executor to its CPU");
                }
                match driver {
                    DriverKind::Uring => {
                        let runtime = RuntimeBuilder::<IoUringDriver>::new()
                            .with_entries(entries)
                            .uring_builder(uring_builder())
                            .enable_timer()
                            .build();
                        match runtime {
                            Ok(mut rt) => {
                                let _ = ready_tx.send(Ok(()));
                                drop(ready_tx);
                                rt.block_on(run_core(&*main, ctx));
                            }
                            Err(e) => {
                                let _ = ready_tx
                                    .send(Err(io::Error::new(e.kind(), describe_uring_error(&e))));
                            }
                        }
                    }
                    DriverKind::Epoll => {
                        match RuntimeBuilder::<LegacyDriver>::new()
                            .with_entries(entries)
                            .enable_timer()
                            .build()
                        {
                            Ok(mut rt) => {
                                let _ = ready_tx.send(Ok(()));
                                drop(ready_tx);
                                rt.block_on(run_core(&*main, ctx));
                            }
                            Err(e) => {
                                let _ = ready_tx.send(Err(e));
                            }
                        }
                    }
                }
            })?;
        handles.push(handle);
    }
    drop(ready_tx);
    for _ in 0..handles.len() {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(io::Error::other("an executor thread died while starting")),
        }
    }
    Ok((driver, handles))
}

/// One core's life: its relay (`relay.rs`), then `main`.
async fn run_core<F, Fut>(main: &F, ctx: CoreContext)
where
    F: Fn(CoreContext) -> Fut,
    Fut: Future<Output = ()>,
{
    crate::relay::start();
    main(ctx).await
}

/// Runs `future` as a task on the current core; it is detached and runs to completion.
pub fn spawn<F>(future: F)
where
    F: Future + 'static,
    F::Output: 'static,
{
    drop(monoio::spawn(future));
}
