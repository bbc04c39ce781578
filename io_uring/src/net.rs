//! Listeners and streams. Listeners are bound on the main thread, one socket per core with
//! SO_REUSEPORT, before any core starts; each core then adopts its own and accepts on it, so the
//! kernel spreads connections and no core hands a socket to another.

use std::io;
use std::net::{SocketAddr, TcpListener as StdTcpListener};

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use socket2::{Domain, Protocol, Socket, Type};

#[derive(Debug)]
pub enum BindError {
    /// Another socket already listens on the address. With SO_REUSEPORT a second process would
    /// silently take a share of the connections, so we refuse unless sharing was asked for.
    InUse(SocketAddr),
    Io(SocketAddr, io::Error),
}

impl std::fmt::Display for BindError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BindError::InUse(addr) => write!(
                f,
                "{addr} is already in use by another process; stop it, choose another port, \
                 or pass --share-ports to split connections with it deliberately"
            ),
            BindError::Io(addr, err) => write!(f, "cannot listen on {addr}: {err}"),
        }
    }
}

impl std::error::Error for BindError {}

const LISTEN_BACKLOG: i32 = 4096;

fn reuseport_socket(addr: SocketAddr) -> io::Result<StdTcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

/// Binds `count` SO_REUSEPORT listeners on `addr` (port 0 picks one port for all of them) and
/// returns them with the address actually bound. Unless `shared`, first checks with an exclusive
/// probe socket that nobody else listens there.
pub fn bind_listeners(
    addr: SocketAddr,
    count: usize,
    shared: bool,
) -> Result<(Vec<StdTcpListener>, SocketAddr), BindError> {
    assert!(count > 0);
    if !shared && addr.port() != 0 {
        // A socket without SO_REUSEPORT cannot bind where any other listener is, reuse-port or not.
        let probe = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
            .map_err(|e| BindError::Io(addr, e))?;
        let _ = probe.set_reuse_address(true);
        if addr.is_ipv6() {
            let _ = probe.set_only_v6(true);
        }
        match probe.bind(&addr.into()) {
            Ok(()) => drop(probe),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => return Err(BindError::InUse(addr)),
            Err(e) => return Err(BindError::Io(addr, e)),
        }
    }
    let first = reuseport_socket(addr).map_err(|e| match e.kind() {
        io::ErrorKind::AddrInUse => BindError::InUse(addr),
        _ => BindError::Io(addr, e),
    })?;
    let bound = first.local_addr().map_err(|e| BindError::Io(addr, e))?;
    let mut listeners = vec![first];
    for _ in 1..count {
        listeners.push(reuseport_socket(bound).map_err(|e| BindError::Io(bound, e))?);
    }
    Ok((listeners, bound))
}

/// A listener adopted by one core.
pub struct Listener {
    inner: monoio::net::TcpListener,
}

impl Listener {
    /// Adopts a socket from [`bind_listeners`]; call it on the core that will accept.
    pub fn from_std(listener: StdTcpListener) -> io::Result<Self> {
        Ok(Self {
            inner: monoio::net::TcpListener::from_std(listener)?,
        })
    }

    pub async fn accept(&self) -> io::Result<(Stream, SocketAddr)> {
        let (stream, peer) = self.inner.accept().await?;
        Ok((Stream { inner: stream }, peer))
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// A TCP connection on the current core. Reads and writes take owned buffers and hand them back,
/// as io_uring needs the memory to stay put while the kernel holds it.
pub struct Stream {
    inner: monoio::net::TcpStream,
}

impl Stream {
    pub async fn connect(addr: SocketAddr) -> io::Result<Self> {
        let inner = monoio::net::TcpStream::connect_addr(addr).await?;
        Ok(Self { inner })
    }

    pub fn set_nodelay(&self, nodelay: bool) -> io::Result<()> {
        self.inner.set_nodelay(nodelay)
    }

    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.inner.peer_addr()
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    /// Reads into the spare capacity of `buf` (after its current length), growing it by
    /// `min_spare` when less is free. Returns the bytes read; 0 means the peer closed.
    pub async fn read_append(
        &mut self,
        buf: Vec<u8>,
        min_spare: usize,
    ) -> (io::Result<usize>, Vec<u8>) {
        read_append(&mut self.inner, buf, min_spare).await
    }

    /// Writes all of `buf`, then hands it back (its length unchanged).
    pub async fn write_all(&mut self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        write_all(&mut self.inner, buf).await
    }

    pub(crate) fn into_inner(self) -> monoio::net::TcpStream {
        self.inner
    }

    /// Half-closes the connection: the peer reads end-of-stream after what was written.
    pub async fn shutdown_write(&mut self) -> io::Result<()> {
        self.inner.shutdown().await
    }
}

/// [`Stream::read_append`] for any monoio reader (the whole stream or its read half).
pub(crate) async fn read_append<R: AsyncReadRent>(
    reader: &mut R,
    mut buf: Vec<u8>,
    min_spare: usize,
) -> (io::Result<usize>, Vec<u8>) {
    if buf.capacity() - buf.len() < min_spare {
        buf.reserve(min_spare);
    }
    let len = buf.len();
    let capacity = buf.capacity();
    let (result, slice) = reader.read(buf.slice_mut(len..capacity)).await;
    (result, slice.into_inner())
}

/// [`Stream::write_all`] for any monoio writer.
pub(crate) async fn write_all<W: AsyncWriteRent>(
    writer: &mut W,
    buf: Vec<u8>,
) -> (io::Result<()>, Vec<u8>) {
    let (result, buf) = writer.write_all(buf).await;
    (result.map(|_| ()), buf)
}
