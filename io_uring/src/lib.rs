//! tidepool-io: the per-core runtime, and nothing protocol-specific.
//!
//! It owns the executors (one monoio runtime per core, pinned), the io_uring ring settings and the
//! epoll fallback, SO_REUSEPORT listeners, the cross-core mesh with its wake-ups, timers and the
//! shutdown gate. It is the only crate that imports the async runtime: the server in `src/` sees
//! [`Listener`], [`Stream`], [`Inbox`], [`sleep`]/[`timeout`] and [`Shutdown`], so the runtime can
//! change without touching protocols. It never parses a byte of any protocol.

mod any;
mod blocking;
pub mod clock;
mod cpu;
mod mesh;
mod net;
mod oneshot;
mod pooled;
mod race;
mod relay;
mod runtime;
mod shutdown;
mod signals;
mod spares;
mod split;
mod time;
mod tls;

pub use any::{AnyRead, AnyStream, AnyWrite};
pub use blocking::{block_on, BlockingPool, PoolError};
pub use cpu::affinity_cpus;
pub use mesh::{mesh, Inbox, MeshSender, SendError};
pub use net::{bind_listeners, BindError, Listener, Stream};
pub use oneshot::{oneshot, OneshotReceiver, OneshotSender};
pub use pooled::Pooled;
pub use race::{join, race, Either, Join, Race};
pub use relay::WakeBatch;
pub use runtime::{spawn, start_cores, CoreContext, CoreId, DriverKind, IoDriver, RuntimeConfig};
pub use shutdown::{InFlight, InFlightGuard, Shutdown};
pub use signals::TerminationSignals;
pub use spares::Spares;
pub use split::{
    ReadBytes, ReadHalf, SharedWriter, Split, TcpRead, TcpWrite, WriteBytes, WriteGuard,
    READ_CHUNK_BYTES,
};
pub use time::{sleep, timeout, Elapsed};
pub use tls::{
    certificate_subject_cn, local_ip_addresses, rustls, watch_hangups, TlsAcceptor, TlsConnector,
    TlsRead, TlsStream, TlsWrite, Transport,
};
