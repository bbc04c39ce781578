//! Transports: the byte pipe a protocol's connection loop runs over, plain TCP or TLS.
//!
//! [`Transport`] is the small interface every connection loop is written against (owned-buffer
//! reads and writes, half-close). [`Stream`] is the plain one; [`TlsStream`] wraps any transport
//! and drives a `rustls` connection over it by hand: ciphertext read with `read_append` goes into
//! `read_tls`/`process_new_packets`, plaintext comes out of `reader()`; plaintext written goes into
//! `writer()`, and `write_tls` fills one buffer that is sent with one `write_all`. Split (see
//! `split.rs`), the rustls state is shared by the halves through `Rc<RefCell<..>>` and borrowed
//! only between awaits; records leave rustls only under the shared writer's lock, so they keep
//! their order. So TLS needs no
//! adapter crate and no runtime traits, and protocol code never sees a ciphertext byte. This
//! module owns no certificates and no configuration: callers hand it a `rustls` config
//! ([`TlsAcceptor`], [`TlsConnector`]). `rustls` is re-exported so every crate uses one version.

use std::cell::RefCell;
use std::io::{self, Read, Write};
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::Arc;

pub use rustls;
use rustls::pki_types::ServerName;

use crate::{ReadBytes, SharedWriter, Split, Stream, WriteBytes};

/// A connection's byte pipe, as the protocol loops see it. Buffers are owned and handed back, as
/// io_uring needs them to stay put while the kernel holds them.
// The futures are not `Send` on purpose: a connection lives on one core.
#[allow(async_fn_in_trait)]
pub trait Transport {
    /// Reads into the spare capacity of `buf` (after its length), growing it by `min_spare` when
    /// less is free. Returns the bytes appended; 0 means the peer closed.
    async fn read_append(&mut self, buf: Vec<u8>, min_spare: usize)
        -> (io::Result<usize>, Vec<u8>);
    /// Writes all of `buf`, then hands it back (its length unchanged).
    async fn write_all(&mut self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>);
    /// Half-closes: the peer reads end-of-stream after what was written.
    async fn shutdown_write(&mut self) -> io::Result<()>;
    fn set_nodelay(&self, nodelay: bool) -> io::Result<()>;
    /// Completes when a read would find data (or the end of the stream, or an error), holding no
    /// buffer meanwhile, and says `true`: an idle connection waits here instead of in a read that
    /// owns its buffer. The default says `false` at once: the transport has no readiness (TLS,
    /// with its own buffered state), and the read that follows does the waiting, buffer in hand.
    async fn readable(&self) -> io::Result<bool> {
        Ok(false)
    }
    /// The subject common name of the peer's verified certificate (mutual TLS), if any.
    fn peer_cn(&self) -> Option<&str> {
        None
    }
}

impl Transport for Stream {
    async fn read_append(
        &mut self,
        buf: Vec<u8>,
        min_spare: usize,
    ) -> (io::Result<usize>, Vec<u8>) {
        Stream::read_append(self, buf, min_spare).await
    }

    async fn write_all(&mut self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        Stream::write_all(self, buf).await
    }

    async fn shutdown_write(&mut self) -> io::Result<()> {
        Stream::shutdown_write(self).await
    }

    fn set_nodelay(&self, nodelay: bool) -> io::Result<()> {
        Stream::set_nodelay(self, nodelay)
    }

    async fn readable(&self) -> io::Result<bool> {
        Stream::readable(self).await.map(|()| true)
    }
}

/// Ciphertext asked for per read: one whole TLS record (16 KiB plus header and tag).
const CIPHERTEXT_READ_BYTES: usize = 17 * 1024 + 512;
/// Plaintext taken out of rustls per step: one record's worth. It bounds the scratch zeroed in a
/// caller's buffer per step, which may have a whole upload's capacity reserved.
const PLAINTEXT_STEP_BYTES: usize = 16 * 1024;

fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// Accepts TLS on server-side transports with one shared configuration.
#[derive(Clone)]
pub struct TlsAcceptor {
    config: Arc<rustls::ServerConfig>,
}

impl TlsAcceptor {
    pub fn new(config: Arc<rustls::ServerConfig>) -> Self {
        Self { config }
    }

    /// Runs the server handshake on `inner`. A refused handshake sends rustls's alert first, so
    /// the client learns why. Bound the time with [`crate::timeout`]: a silent peer waits forever.
    pub async fn accept<T: Transport>(&self, inner: T) -> io::Result<TlsStream<T>> {
        let conn = rustls::ServerConnection::new(self.config.clone()).map_err(tls_error)?;
        TlsStream::handshake(inner, rustls::Connection::Server(conn)).await
    }
}

/// Opens TLS on client-side transports (MQTT bridges, replication, tests).
#[derive(Clone)]
pub struct TlsConnector {
    config: Arc<rustls::ClientConfig>,
}

impl TlsConnector {
    pub fn new(config: Arc<rustls::ClientConfig>) -> Self {
        Self { config }
    }

    /// Runs the client handshake on `inner`, verifying the server as `server_name`.
    pub async fn connect<T: Transport>(
        &self,
        server_name: ServerName<'static>,
        inner: T,
    ) -> io::Result<TlsStream<T>> {
        let conn =
            rustls::ClientConnection::new(self.config.clone(), server_name).map_err(tls_error)?;
        TlsStream::handshake(inner, rustls::Connection::Client(conn)).await
    }
}

/// A TLS connection over another transport, after its handshake.
pub struct TlsStream<T> {
    inner: T,
    conn: rustls::Connection,
    /// Ciphertext read from `inner`.
    incoming: Incoming,
    /// Ciphertext to send, reused between writes.
    outgoing: Vec<u8>,
    peer_cn: Option<String>,
}

impl<T: Transport> TlsStream<T> {
    async fn handshake(inner: T, conn: rustls::Connection) -> io::Result<Self> {
        let mut stream = TlsStream {
            inner,
            conn,
            incoming: Incoming {
                bytes: Vec::with_capacity(CIPHERTEXT_READ_BYTES),
                at: 0,
            },
            outgoing: Vec::new(),
            peer_cn: None,
        };
        while stream.conn.is_handshaking() {
            if stream.conn.wants_write() {
                stream.flush().await?;
            } else if !feed(&mut stream).await? {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "peer closed during the TLS handshake",
                ));
            }
        }
        // The server's last flight (TLS 1.3 session tickets) goes out now, not with the first
        // response.
        stream.flush().await?;
        stream.peer_cn = stream
            .conn
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|leaf| certificate_subject_cn(leaf.as_ref()))
            .map(str::to_string);
        Ok(stream)
    }

    /// The negotiated ALPN protocol, e.g. `b"http/1.1"`.
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        self.conn.alpn_protocol()
    }

    /// The peer's certificate chain, leaf first (verified when the config asked for it).
    pub fn peer_certificates(&self) -> Option<&[rustls::pki_types::CertificateDer<'static>]> {
        self.conn.peer_certificates()
    }

    pub fn protocol_version(&self) -> Option<rustls::ProtocolVersion> {
        self.conn.protocol_version()
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    /// Sends every TLS record rustls has queued.
    async fn flush(&mut self) -> io::Result<()> {
        encrypt_pending(&mut self.conn, &mut self.outgoing)?;
        if self.outgoing.is_empty() {
            return Ok(());
        }
        let (result, mut returned) = self
            .inner
            .write_all(std::mem::take(&mut self.outgoing))
            .await;
        returned.clear();
        self.outgoing = returned;
        result
    }
}

/// Moves every TLS record rustls has queued into `out`.
fn encrypt_pending(conn: &mut rustls::Connection, out: &mut Vec<u8>) -> io::Result<()> {
    while conn.wants_write() {
        conn.write_tls(out)?;
    }
    Ok(())
}

/// Gives rustls the ciphertext `incoming[*at..]` (as much as it takes) and processes it.
fn absorb(conn: &mut rustls::Connection, incoming: &[u8], at: &mut usize) -> io::Result<()> {
    let mut pending = incoming.get(*at..).unwrap_or_default();
    let taken = conn.read_tls(&mut pending)?;
    *at += taken;
    conn.process_new_packets().map_err(tls_error)?;
    Ok(())
}

/// Moves decrypted bytes into `buf`. `Ok(None)`: none yet; `Ok(Some(0))`: the peer sent
/// close_notify.
fn take_plaintext(
    conn: &mut rustls::Connection,
    buf: &mut Vec<u8>,
    min_spare: usize,
) -> io::Result<Option<usize>> {
    let start = buf.len();
    loop {
        if buf.capacity() - buf.len() < min_spare {
            buf.reserve(min_spare);
        }
        let len = buf.len();
        let step = (buf.capacity() - len).min(PLAINTEXT_STEP_BYTES);
        buf.resize(len + step, 0);
        let result = conn.reader().read(buf.get_mut(len..).unwrap_or_default());
        match result {
            Ok(n) if n > 0 => buf.truncate(len + n),
            Ok(_) => {
                buf.truncate(len);
                return Ok(Some(len - start));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                buf.truncate(len);
                return Ok((len > start).then_some(len - start));
            }
            Err(e) => {
                buf.truncate(len);
                return Err(e);
            }
        }
    }
}

/// What the plaintext write loop needs from its owner, so [`TlsStream`] and its write half share
/// one loop: the rustls state (borrowed only inside `with_conn`, never across an await) and a
/// way to send what rustls queued.
#[allow(async_fn_in_trait)]
trait CipherWrite {
    fn with_conn<O>(&mut self, f: impl FnOnce(&mut rustls::Connection) -> O) -> O;
    async fn flush(&mut self) -> io::Result<()>;
}

/// ...and the plaintext read loop additionally a way to read ciphertext, and where it waits.
#[allow(async_fn_in_trait)]
trait CipherRead: CipherWrite {
    async fn read_cipher(&mut self, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>);
    fn incoming(&mut self) -> &mut Incoming;
}

/// Ciphertext read from the peer; `bytes[at..]` is not yet given to rustls.
struct Incoming {
    bytes: Vec<u8>,
    at: usize,
}

/// Gives rustls the next piece of ciphertext, reading from the peer when none is buffered.
/// Returns false at end of stream.
async fn feed<I: CipherRead>(io: &mut I) -> io::Result<bool> {
    let incoming = io.incoming();
    if incoming.at >= incoming.bytes.len() {
        incoming.bytes.clear();
        incoming.at = 0;
        let buf = std::mem::take(&mut incoming.bytes);
        let (result, returned) = io.read_cipher(buf).await;
        io.incoming().bytes = returned;
        if result? == 0 {
            return Ok(false);
        }
    }
    let mut incoming = std::mem::replace(
        io.incoming(),
        Incoming {
            bytes: Vec::new(),
            at: 0,
        },
    );
    let absorbed = io.with_conn(|conn| absorb(conn, &incoming.bytes, &mut incoming.at));
    *io.incoming() = incoming;
    if let Err(e) = absorbed {
        // rustls queued an alert naming the failure; the peer should see it before we close.
        let _ = io.flush().await;
        return Err(e);
    }
    Ok(true)
}

async fn read_plaintext<I: CipherRead>(
    io: &mut I,
    mut buf: Vec<u8>,
    min_spare: usize,
) -> (io::Result<usize>, Vec<u8>) {
    loop {
        match io.with_conn(|conn| take_plaintext(conn, &mut buf, min_spare)) {
            Ok(Some(n)) => return (Ok(n), buf),
            Ok(None) => {}
            Err(e) => return (Err(e), buf),
        }
        // Answers rustls owes the peer (key updates, alerts) go out before we wait on it.
        if io.with_conn(|conn| conn.wants_write()) {
            if let Err(e) = io.flush().await {
                return (Err(e), buf);
            }
        }
        match feed(io).await {
            Ok(true) => {}
            // TCP end without close_notify: reported as a plain end of stream; the protocol
            // above notices a truncated message by its own framing.
            Ok(false) => return (Ok(0), buf),
            Err(e) => return (Err(e), buf),
        }
    }
}

async fn write_plaintext<I: CipherWrite>(io: &mut I, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
    let mut written = 0;
    while written < buf.len() {
        // rustls takes as much as its 64 KiB send buffer allows; flushing makes room.
        let rest = buf.get(written..).unwrap_or_default();
        let taken = io.with_conn(|conn| {
            let taken = conn.writer().write(rest)?;
            if taken == 0 && !conn.wants_write() {
                return Err(io::Error::from(io::ErrorKind::WriteZero));
            }
            Ok(taken)
        });
        match taken {
            Ok(n) => written += n,
            Err(e) => return (Err(e), buf),
        }
        if let Err(e) = io.flush().await {
            return (Err(e), buf);
        }
    }
    (Ok(()), buf)
}

impl<T: Transport> CipherWrite for TlsStream<T> {
    fn with_conn<O>(&mut self, f: impl FnOnce(&mut rustls::Connection) -> O) -> O {
        f(&mut self.conn)
    }

    async fn flush(&mut self) -> io::Result<()> {
        TlsStream::flush(self).await
    }
}

impl<T: Transport> CipherRead for TlsStream<T> {
    async fn read_cipher(&mut self, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        self.inner.read_append(buf, CIPHERTEXT_READ_BYTES).await
    }

    fn incoming(&mut self) -> &mut Incoming {
        &mut self.incoming
    }
}

impl<T: Transport> Transport for TlsStream<T> {
    async fn read_append(
        &mut self,
        buf: Vec<u8>,
        min_spare: usize,
    ) -> (io::Result<usize>, Vec<u8>) {
        read_plaintext(self, buf, min_spare).await
    }

    async fn write_all(&mut self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        write_plaintext(self, buf).await
    }

    async fn shutdown_write(&mut self) -> io::Result<()> {
        self.conn.send_close_notify();
        self.flush().await?;
        self.inner.shutdown_write().await
    }

    fn set_nodelay(&self, nodelay: bool) -> io::Result<()> {
        self.inner.set_nodelay(nodelay)
    }

    fn peer_cn(&self) -> Option<&str> {
        self.peer_cn.as_deref()
    }
}

/// The reading direction of a split [`TlsStream`]. It shares the rustls state with its
/// [`TlsWrite`], and the write half underneath, for the records reading owes the peer.
pub struct TlsRead<R, W> {
    inner: R,
    conn: Rc<RefCell<rustls::Connection>>,
    writer: Rc<SharedWriter<W>>,
    incoming: Incoming,
    outgoing: Vec<u8>,
}

/// The writing direction of a split [`TlsStream`].
pub struct TlsWrite<W> {
    conn: Rc<RefCell<rustls::Connection>>,
    writer: Rc<SharedWriter<W>>,
    outgoing: Vec<u8>,
}

impl<T: Split> Split for TlsStream<T> {
    type Read = TlsRead<T::Read, T::Write>;
    type Write = TlsWrite<T::Write>;

    fn into_split(self) -> (Self::Read, Self::Write) {
        let (read, write) = self.inner.into_split();
        let conn = Rc::new(RefCell::new(self.conn));
        let writer = Rc::new(SharedWriter::new(write));
        let read = TlsRead {
            inner: read,
            conn: conn.clone(),
            writer: writer.clone(),
            // Ciphertext already read but not yet given to rustls stays with the reader.
            incoming: self.incoming,
            outgoing: Vec::new(),
        };
        let write = TlsWrite {
            conn,
            writer,
            outgoing: self.outgoing,
        };
        (read, write)
    }
}

/// Sends what rustls queued through the shared write half. Records are taken out of rustls only
/// while holding the writer, so they reach the peer in the order rustls made them.
async fn flush_shared<W: WriteBytes>(
    conn: &RefCell<rustls::Connection>,
    writer: &SharedWriter<W>,
    outgoing: &mut Vec<u8>,
) -> io::Result<()> {
    let mut guard = writer.lock().await;
    encrypt_pending(&mut conn.borrow_mut(), outgoing)?;
    if outgoing.is_empty() {
        return Ok(());
    }
    let (result, mut returned) = guard.write_all(std::mem::take(outgoing)).await;
    returned.clear();
    *outgoing = returned;
    result
}

impl<R: ReadBytes, W: WriteBytes> CipherWrite for TlsRead<R, W> {
    fn with_conn<O>(&mut self, f: impl FnOnce(&mut rustls::Connection) -> O) -> O {
        f(&mut self.conn.borrow_mut())
    }

    async fn flush(&mut self) -> io::Result<()> {
        flush_shared(&self.conn, &self.writer, &mut self.outgoing).await
    }
}

impl<R: ReadBytes, W: WriteBytes> CipherRead for TlsRead<R, W> {
    async fn read_cipher(&mut self, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        self.inner.read_append(buf, CIPHERTEXT_READ_BYTES).await
    }

    fn incoming(&mut self) -> &mut Incoming {
        &mut self.incoming
    }
}

impl<R: ReadBytes, W: WriteBytes> ReadBytes for TlsRead<R, W> {
    async fn read_append(
        &mut self,
        buf: Vec<u8>,
        min_spare: usize,
    ) -> (io::Result<usize>, Vec<u8>) {
        read_plaintext(self, buf, min_spare).await
    }
}

impl<W: WriteBytes> CipherWrite for TlsWrite<W> {
    fn with_conn<O>(&mut self, f: impl FnOnce(&mut rustls::Connection) -> O) -> O {
        f(&mut self.conn.borrow_mut())
    }

    async fn flush(&mut self) -> io::Result<()> {
        flush_shared(&self.conn, &self.writer, &mut self.outgoing).await
    }
}

impl<W: WriteBytes> WriteBytes for TlsWrite<W> {
    async fn write_all(&mut self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        write_plaintext(self, buf).await
    }

    async fn shutdown_write(&mut self) -> io::Result<()> {
        self.conn.borrow_mut().send_close_notify();
        self.flush().await?;
        self.writer.lock().await.shutdown_write().await
    }
}

/// Calls `on_hangup` on a thread of its own at every SIGHUP, the conventional "reload your
/// certificates" signal; certificate reload is its only user, hence its place here.
pub fn watch_hangups(mut on_hangup: impl FnMut() + Send + 'static) -> io::Result<()> {
    let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGHUP])?;
    std::thread::Builder::new()
        .name("sighup".into())
        .spawn(move || {
            for _ in signals.forever() {
                on_hangup();
            }
        })?;
    Ok(())
}

/// Reads one DER element at the start of `der`: its tag, contents, and what follows it.
fn der_next(der: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = der.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        // Long form: the low bits count the length bytes; certificates never need more than 4.
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 {
            return None;
        }
        let (bytes, rest) = rest.split_at_checked(count)?;
        let len = bytes
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, rest)
    };
    let (contents, rest) = rest.split_at_checked(len)?;
    Some((tag, contents, rest))
}

const DER_SEQUENCE: u8 = 0x30;
const DER_SET: u8 = 0x31;
const DER_OID: u8 = 0x06;
const DER_CONTEXT_0: u8 = 0xa0;
/// 2.5.4.3, id-at-commonName.
const OID_COMMON_NAME: [u8; 3] = [0x55, 0x04, 0x03];

/// The subject common name of a DER certificate (the last one, if several), when it is a
/// UTF8String, PrintableString or IA5String. `None` for anything malformed.
///
/// ```text
/// Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version OPTIONAL, serialNumber,
///     signature AlgorithmIdentifier, issuer Name, validity, subject Name, ... }, ... }
/// Name ::= SEQUENCE OF SET OF SEQUENCE { type OID, value ANY }
/// ```
pub fn certificate_subject_cn(der: &[u8]) -> Option<&str> {
    let (DER_SEQUENCE, certificate, _) = der_next(der)? else {
        return None;
    };
    let (DER_SEQUENCE, tbs, _) = der_next(certificate)? else {
        return None;
    };
    let mut fields = tbs;
    if let (DER_CONTEXT_0, _, rest) = der_next(fields)? {
        fields = rest;
    }
    // serialNumber, signature, issuer, validity.
    for _ in 0..4 {
        fields = der_next(fields)?.2;
    }
    let (DER_SEQUENCE, mut names, _) = der_next(fields)? else {
        return None;
    };
    let mut common_name = None;
    // Each step consumes at least two bytes, so these loops end with the input.
    while !names.is_empty() {
        let (DER_SET, mut attributes, rest) = der_next(names)? else {
            return None;
        };
        names = rest;
        while !attributes.is_empty() {
            let (DER_SEQUENCE, attribute, rest) = der_next(attributes)? else {
                return None;
            };
            attributes = rest;
            let (DER_OID, oid, value) = der_next(attribute)? else {
                return None;
            };
            if oid == OID_COMMON_NAME {
                let (tag, text, _) = der_next(value)?;
                // UTF8String, PrintableString, IA5String.
                if matches!(tag, 0x0c | 0x13 | 0x16) {
                    common_name = std::str::from_utf8(text).ok();
                }
            }
        }
    }
    common_name
}

/// This host's interface addresses (loopback included), for certificate subject names.
pub fn local_ip_addresses() -> io::Result<Vec<IpAddr>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs writes a list head we free below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut cursor = head;
    while !cursor.is_null() {
        // SAFETY: `cursor` is a node of the list getifaddrs returned, not yet freed.
        let entry = unsafe { &*cursor };
        let addr = entry.ifa_addr;
        if !addr.is_null() {
            // SAFETY: ifa_addr points at a sockaddr whose family says which struct it is.
            let family = i32::from(unsafe { (*addr).sa_family });
            let ip = match family {
                libc::AF_INET => {
                    // SAFETY: AF_INET means a sockaddr_in.
                    let v4 = unsafe { &*(addr as *const libc::sockaddr_in) };
                    Some(IpAddr::from(u32::from_be(v4.sin_addr.s_addr).to_be_bytes()))
                }
                libc::AF_INET6 => {
                    // SAFETY: AF_INET6 means a sockaddr_in6.
                    let v6 = unsafe { &*(addr as *const libc::sockaddr_in6) };
                    Some(IpAddr::from(v6.sin6_addr.s6_addr))
                }
                _ => None,
            };
            if let Some(ip) = ip.filter(|ip| !out.contains(ip)) {
                out.push(ip);
            }
        }
        cursor = entry.ifa_next;
    }
    // SAFETY: `head` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(der: &[u8], expected: Option<&str>) {
        assert_eq!(certificate_subject_cn(der), expected);
    }

    fn certificate(cn: Option<&str>) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "tidepool");
        if let Some(cn) = cn {
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, cn);
        }
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn subject_common_name() {
        check(&certificate(Some("alice")), Some("alice"));
        check(&certificate(Some("node-1.example")), Some("node-1.example"));
        check(&certificate(None), None);
        let whole = certificate(Some("bob"));
        for cut in [0, 1, 2, 10, whole.len() / 2] {
            check(&whole[..cut], None);
        }
        check(b"\x30\x84\xff\xff\xff\xff", None);
        check(b"\x30\x89\x01\x01\x01\x01\x01\x01\x01\x01\x01", None);
    }

    #[test]
    fn local_addresses_include_loopback() {
        let ips = local_ip_addresses().unwrap();
        assert!(ips.contains(&IpAddr::from([127, 0, 0, 1])), "{ips:?}");
    }

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    /// A CA, a server certificate for `localhost` and a client certificate `client_cn`, all
    /// signed by that CA.
    struct Pki {
        ca: rustls::pki_types::CertificateDer<'static>,
        server: (
            rustls::pki_types::CertificateDer<'static>,
            rustls::pki_types::PrivateKeyDer<'static>,
        ),
        client: (
            rustls::pki_types::CertificateDer<'static>,
            rustls::pki_types::PrivateKeyDer<'static>,
        ),
    }

    fn pki(client_cn: &str) -> Pki {
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "test CA");
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
        let leaf = |cn: &str| {
            let mut params = rcgen::CertificateParams::new(vec![cn.to_string()]).unwrap();
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, cn);
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, &ca).unwrap();
            (
                cert.der().clone(),
                rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
            )
        };
        Pki {
            ca: ca.der().clone(),
            server: leaf("localhost"),
            client: leaf(client_cn),
        }
    }

    /// Runs a TLS echo server on one connection and a client over loopback in one runtime;
    /// returns the CN the server saw and the bytes echoed back.
    fn round_trip(payload: Vec<u8>, split: bool) -> (Option<String>, Vec<u8>) {
        let pki = pki("carol");
        let mut roots = rustls::RootCertStore::empty();
        roots.add(pki.ca.clone()).unwrap();
        let roots = Arc::new(roots);
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
                .build()
                .unwrap();
        let server = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![pki.server.0.clone()], pki.server.1.clone_key())
            .unwrap();
        let client = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(vec![pki.client.0.clone()], pki.client.1.clone_key())
            .unwrap();
        let acceptor = TlsAcceptor::new(Arc::new(server));
        let connector = TlsConnector::new(Arc::new(client));

        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        rt.block_on(async move {
            let std = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            std.set_nonblocking(true).unwrap();
            let addr = std.local_addr().unwrap();
            let listener = crate::Listener::from_std(std).unwrap();
            let server = monoio::spawn(async move {
                let (stream, _) = listener.accept().await.unwrap();
                let mut tls = acceptor.accept(stream).await.unwrap();
                let cn = tls.peer_cn().map(str::to_string);
                if split {
                    split_echo(tls).await;
                    return cn;
                }
                let mut buf = Vec::new();
                loop {
                    let (n, returned) = tls.read_append(buf, 4096).await;
                    buf = returned;
                    if n.unwrap() == 0 {
                        break;
                    }
                }
                let (r, _) = tls.write_all(buf).await;
                r.unwrap();
                tls.shutdown_write().await.unwrap();
                cn
            });
            let stream = Stream::connect(addr).await.unwrap();
            let name = ServerName::try_from("localhost").unwrap();
            let mut tls = connector.connect(name, stream).await.unwrap();
            // In pieces with pauses, so the server's raced reads see partial records too.
            for piece in payload.chunks(payload.len().div_ceil(7).max(1)) {
                let (r, _) = tls.write_all(piece.to_vec()).await;
                r.unwrap();
                crate::sleep(std::time::Duration::from_millis(2)).await;
            }
            tls.shutdown_write().await.unwrap();
            let mut echoed = Vec::new();
            loop {
                let (n, returned) = tls.read_append(echoed, 4096).await;
                echoed = returned;
                if n.unwrap() == 0 {
                    break;
                }
            }
            (server.await, echoed)
        })
    }

    /// Echoes through the two halves of a split stream: every read races a short timer (most
    /// are cancelled and resumed), and what was read is written back while reading goes on.
    async fn split_echo(tls: TlsStream<Stream>) {
        let (read, mut write) = tls.into_split();
        let mut half = crate::ReadHalf::new(read);
        // Bounded: each completed read brings at least one byte.
        for _ in 0..1_000_000 {
            let raced = crate::race(
                half.fill(),
                crate::sleep(std::time::Duration::from_micros(300)),
            )
            .await;
            match raced {
                crate::Either::Left(Ok(0)) => break,
                crate::Either::Left(r) => {
                    r.unwrap();
                    let bytes = std::mem::take(half.buffered());
                    let (r, _) = write.write_all(bytes).await;
                    r.unwrap();
                }
                crate::Either::Right(()) => {}
            }
        }
        write.shutdown_write().await.unwrap();
    }

    fn check_echo(len: usize, split: bool) {
        let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let (cn, echoed) = round_trip(payload.clone(), split);
        assert_eq!(cn.as_deref(), Some("carol"));
        assert!(
            echoed == payload,
            "echo of {len} bytes differs (split: {split})"
        );
    }

    #[test]
    fn echo_with_client_certificate() {
        for len in [1usize, 100, 16 * 1024, 300 * 1024] {
            check_echo(len, false);
        }
    }

    #[test]
    fn split_echo_with_cancelled_reads() {
        for len in [1usize, 100, 16 * 1024, 300 * 1024] {
            check_echo(len, true);
        }
    }
}
