//! Listeners and streams. Listeners are bound on the main thread, one socket per core with
//! SO_REUSEPORT, before any core starts; each core then adopts its own and accepts on it, so the
//! kernel spreads connections and no core hands a socket to another.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener as StdTcpListener};
use std::time::{Duration, Instant};

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use socket2::{Domain, Protocol, Socket, Type};

#[derive(Debug)]
pub enum BindError {
    /// Another socket already listens on the address. With SO_REUSEPORT a second process would
    /// silently take a share of the connections, so we refuse unless sharing was asked for.
    InUse(SocketAddr),
    Io(SocketAddr, io::Error),
    /// Listening sockets that no process owns still held the address after the wait: the
    /// kernel had not finished tearing down a dead process's io_uring instance.
    Orphaned(SocketAddr, Duration),
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
            BindError::Orphaned(addr, waited) => write!(
                f,
                "{addr} is still held by listening sockets of no process we can see (a crashed \
                 process's io_uring instance the kernel has not torn down, or a process outside \
                 our view of /proc) after waiting {waited:?} (http.portWaitAfterCrash)"
            ),
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
/// probe socket that nobody else listens there. When the address is taken by listening sockets
/// that no live process has open — those of a process just killed, whose io_uring instance the
/// kernel tears down asynchronously, keeping its sockets for a while — waits for them to go, up
/// to `orphan_wait`, and logs that it waits; a port a live process listens on is refused at once.
pub fn bind_listeners(
    addr: SocketAddr,
    count: usize,
    shared: bool,
    orphan_wait: Duration,
) -> Result<(Vec<StdTcpListener>, SocketAddr), BindError> {
    assert!(count > 0);
    if !shared && addr.port() != 0 {
        let started = Instant::now();
        let mut logged = false;
        while probe_in_use(addr)? {
            if listener_owned_by_a_process(addr) {
                return Err(BindError::InUse(addr));
            }
            let waited = started.elapsed();
            if waited >= orphan_wait {
                return Err(BindError::Orphaned(addr, waited));
            }
            if !logged {
                tracing::warn!(
                    "{addr} is held by listening sockets no live process owns (a crashed \
                     process's io_uring instance being torn down by the kernel); waiting up to \
                     {orphan_wait:?} for them to close (http.portWaitAfterCrash)"
                );
                logged = true;
            }
            std::thread::sleep(ORPHAN_POLL);
        }
        if logged {
            tracing::info!(
                "{addr} is free after waiting {:?} for a dead process's sockets",
                started.elapsed()
            );
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

/// How often a bind waiting for a dead process's sockets tries again.
const ORPHAN_POLL: Duration = Duration::from_millis(50);

/// Whether a socket without SO_REUSEPORT fails to bind `addr`: it cannot bind where any other
/// listener is, reuse-port or not.
fn probe_in_use(addr: SocketAddr) -> Result<bool, BindError> {
    let probe = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .map_err(|e| BindError::Io(addr, e))?;
    let _ = probe.set_reuse_address(true);
    if addr.is_ipv6() {
        let _ = probe.set_only_v6(true);
    }
    match probe.bind(&addr.into()) {
        Ok(()) => Ok(false),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => Ok(true),
        Err(e) => Err(BindError::Io(addr, e)),
    }
}

/// Whether some process has a listening socket on `addr` among its open files: the socket
/// inodes of `/proc/net/tcp{,6}` in state LISTEN on that address, looked up in every
/// `/proc/<pid>/fd`. When `/proc` cannot be read, says yes (refuse rather than wait on a guess).
fn listener_owned_by_a_process(addr: SocketAddr) -> bool {
    let mut inodes = Vec::new();
    let mut readable = false;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(text) = std::fs::read_to_string(table) {
            readable = true;
            inodes.extend(listening_inodes(&text, addr));
        }
    }
    if !readable {
        return true;
    }
    // No inode: the socket has no file at all any more, so no process can own it.
    inodes.retain(|&i| i != 0);
    if inodes.is_empty() {
        return false;
    }
    let Ok(processes) = std::fs::read_dir("/proc") else {
        return true;
    };
    for process in processes.flatten() {
        let name = process.file_name();
        if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(process.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else {
                continue;
            };
            let target = target.to_string_lossy();
            let owned = target
                .strip_prefix("socket:[")
                .and_then(|t| t.strip_suffix(']'))
                .and_then(|t| t.parse::<u64>().ok())
                .is_some_and(|inode| inodes.contains(&inode));
            if owned {
                return true;
            }
        }
    }
    false
}

/// Inodes of the LISTEN sockets in a `/proc/net/tcp` or `tcp6` table that clash with `addr`
/// (same port; same address, or either one the wildcard).
fn listening_inodes(table: &str, addr: SocketAddr) -> Vec<u64> {
    const LISTEN: &str = "0A";
    let mut found = Vec::new();
    for line in table.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(local), Some(state), Some(inode)) = (fields.get(1), fields.get(3), fields.get(9))
        else {
            continue;
        };
        if *state != LISTEN {
            continue;
        }
        let Some((ip, port)) = parse_proc_addr(local) else {
            continue;
        };
        let clashes = port == addr.port()
            && (ip == addr.ip() || ip.is_unspecified() || addr.ip().is_unspecified());
        if clashes {
            if let Ok(inode) = inode.parse() {
                found.push(inode);
            }
        }
    }
    found
}

/// `0100007F:2382` (IPv4) or 32 hex digits and a port (IPv6), as the kernel prints them: each
/// 32-bit word in host byte order.
fn parse_proc_addr(field: &str) -> Option<(IpAddr, u16)> {
    let (ip, port) = field.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        let hex = ip.get(i * 8..i * 8 + 8)?;
        Some(u32::from_str_radix(hex, 16).ok()?.to_ne_bytes())
    };
    let ip = match ip.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut octets = [0u8; 16];
            for i in 0..4 {
                octets[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(octets))
        }
        _ => return None,
    };
    Some((ip, port))
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

    /// Completes when the socket has data, its end, or an error to read (an io_uring poll; no
    /// buffer is held while it waits).
    pub async fn readable(&self) -> io::Result<()> {
        self.inner.readable(false).await
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_addresses_parse() {
        assert_eq!(
            parse_proc_addr("0100007F:2382"),
            Some(("127.0.0.1".parse().unwrap(), 0x2382))
        );
        assert_eq!(
            parse_proc_addr("00000000000000000000000001000000:0050"),
            Some(("::1".parse().unwrap(), 80))
        );
    }

    /// Puts `fd` in flight on a Unix socket pair (SCM_RIGHTS) and closes it here: the socket then
    /// lives on in no process's file table until the pair is dropped — like the listeners of a
    /// killed process's io_uring instance before the kernel tears it down.
    fn orphan(listener: StdTcpListener) -> std::os::unix::net::UnixDatagram {
        use std::os::fd::AsRawFd;
        let (a, b) = std::os::unix::net::UnixDatagram::pair().unwrap();
        let fd = listener.as_raw_fd();
        let mut byte = [0u8; 1];
        let mut iov = libc::iovec {
            iov_base: byte.as_mut_ptr().cast(),
            iov_len: 1,
        };
        // SAFETY: a correctly sized control buffer for one descriptor, on sockets we own.
        unsafe {
            let space = libc::CMSG_SPACE(std::mem::size_of::<i32>() as u32) as usize;
            let mut control = vec![0u8; space];
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = space as _;
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<i32>() as u32) as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<i32>(), fd);
            assert_eq!(libc::sendmsg(a.as_raw_fd(), &msg, 0), 1);
        }
        drop(listener);
        drop(a);
        b
    }

    #[test]
    fn sockets_of_no_process_are_waited_for_within_the_bound() {
        let listener = StdTcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let in_flight = orphan(listener);
        assert!(probe_in_use(addr).unwrap(), "still listening");
        assert!(!listener_owned_by_a_process(addr));
        // Never freed within the wait: a clear error after it.
        let refused = bind_listeners(addr, 1, false, Duration::from_millis(300));
        assert!(matches!(refused, Err(BindError::Orphaned(..))));
        // Freed during the wait: bound.
        let freer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            drop(in_flight);
        });
        let (listeners, bound) = bind_listeners(addr, 2, false, Duration::from_secs(30))
            .expect("bound once the orphaned socket is gone");
        assert_eq!((listeners.len(), bound), (2, addr));
        freer.join().unwrap();
    }

    #[test]
    fn a_live_listener_is_refused_at_once() {
        let listener = StdTcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        assert!(listener_owned_by_a_process(addr));
        let started = Instant::now();
        let refused = bind_listeners(addr, 1, false, Duration::from_secs(30));
        assert!(matches!(refused, Err(BindError::InUse(_))));
        assert!(started.elapsed() < Duration::from_secs(10));
        drop(listener);
        assert!(!listener_owned_by_a_process(addr));
    }
}
