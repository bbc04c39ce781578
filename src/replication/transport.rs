//! The byte pipe under a replication link: plain TCP or TLS (docs/replication.md), split into a read half
//! for the link's reader thread and a write half for its senders, plus the raw socket to shut
//! down. Links run on plain threads with blocking sockets, so TLS is driven by hand over the
//! `rustls` connection (the same way `tidepool_io::TlsStream` drives it on the executors): one
//! mutex holds the `rustls` state and is taken only to encrypt or decrypt, never across a
//! blocking socket call, so a reader waiting for bytes never stalls a writer.
//!
//! It also holds the link's TLS configuration: the node certificate from `tls.*`, the CA that
//! peers must chain to, and `verify_tls: false` for dialers. It never parses WebSocket frames or
//! link messages, and never decides whom to trust beyond the certificate chain (that is
//! `auth.rs`).

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tidepool_io::rustls::{
    self,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, ServerName, UnixTime},
    ClientConfig, ClientConnection, Connection, DigitallySignedStruct, ServerConfig,
    ServerConnection, SignatureScheme,
};

use crate::config::Config;
use crate::server::tls as certs;

/// Ciphertext read from the socket per read call, and plaintext encrypted per lock.
const CHUNK_BYTES: usize = 16 * 1024;
/// A TLS handshake must finish within this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The TLS side of replication: one server config for the secure listener, client configs for
/// dialling: verifying the peer or not (`verify_tls`), presenting our certificate or not (a
/// dial with credentials presents none, since the peer may not trust our CA yet).
pub struct LinkTls {
    pub server: Arc<ServerConfig>,
    pub client_verified: Arc<ClientConfig>,
    pub client_unverified: Arc<ClientConfig>,
    pub anonymous_verified: Arc<ClientConfig>,
    pub anonymous_unverified: Arc<ClientConfig>,
}

impl LinkTls {
    /// The client configuration for a dial.
    pub fn client(&self, verify: bool, with_certificate: bool) -> Arc<ClientConfig> {
        match (verify, with_certificate) {
            (true, true) => self.client_verified.clone(),
            (false, true) => self.client_unverified.clone(),
            (true, false) => self.anonymous_verified.clone(),
            (false, false) => self.anonymous_unverified.clone(),
        }
    }
}

impl LinkTls {
    /// From the node's `tls` files (generated at first start when missing), trusting
    /// `tls.certificateAuthority` and the CAs in `extra_authorities` (learned by certificate
    /// exchange). Client certificates are asked for but not required on the listener: a dialer
    /// may authenticate with `Authorization` instead (docs/replication.md (2)).
    pub fn load(
        config: &Config,
        extra_authorities: &[CertificateDer<'static>],
    ) -> Result<LinkTls, String> {
        certs::ensure_certificates(config).map_err(|e| e.to_string())?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = &config.tls;
        let mut roots = rustls::RootCertStore::empty();
        let own =
            certs::load_certificates(&tls.certificate_authority).map_err(|e| e.to_string())?;
        for ca in own.into_iter().chain(extra_authorities.iter().cloned()) {
            roots
                .add(ca)
                .map_err(|e| format!("a trusted CA is not usable: {e}"))?;
        }
        let roots = Arc::new(roots);
        let slot = certs::CertificateSlot::load(tls).map_err(|e| e.to_string())?;
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            roots.clone(),
            provider.clone(),
        )
        .allow_unauthenticated()
        .build()
        .map_err(|e| format!("client certificate verifier: {e}"))?;
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(slot);
        let chain = certs::load_certificates(&tls.certificate).map_err(|e| e.to_string())?;
        let key = PrivateKeyDer::from_pem_file(&tls.private_key)
            .map_err(|e| format!("{}: {e}", tls.private_key.display()))?;
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots);
        let anonymous = builder.clone().with_no_client_auth();
        let verified = builder
            .with_client_auth_cert(chain, key)
            .map_err(|e| format!("{}: {e}", tls.certificate.display()))?;
        let unverified = |config: &ClientConfig| {
            let mut c = config.clone();
            c.dangerous()
                .set_certificate_verifier(Arc::new(AnyServer(provider.clone())));
            Arc::new(c)
        };
        Ok(LinkTls {
            server: Arc::new(server),
            client_unverified: unverified(&verified),
            anonymous_unverified: unverified(&anonymous),
            client_verified: Arc::new(verified),
            anonymous_verified: Arc::new(anonymous),
        })
    }
}

/// `verify_tls: false`: any server certificate is accepted (handshake signatures are still
/// checked, so the peer holds the key of the certificate it shows).
#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A connected link transport: halves for reading and writing, the socket to shut down, and
/// the peer's verified certificate (TLS with a client or server certificate).
pub struct Conn {
    pub reader: Box<dyn Read + Send>,
    pub writer: Box<dyn Write + Send>,
    pub socket: TcpStream,
    pub peer_certificate: Option<CertificateDer<'static>>,
}

impl Conn {
    pub fn plain(socket: TcpStream) -> io::Result<Conn> {
        Ok(Conn {
            reader: Box::new(socket.try_clone()?),
            writer: Box::new(socket.try_clone()?),
            socket,
            peer_certificate: None,
        })
    }

    /// Dials TLS over `socket` to `host` (an IP address or a DNS name in the peer certificate).
    pub fn tls_client(
        socket: TcpStream,
        host: &str,
        config: Arc<ClientConfig>,
    ) -> io::Result<Conn> {
        let name = ServerName::try_from(host.to_string())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let conn = ClientConnection::new(config, name).map_err(io::Error::other)?;
        Self::tls(socket, Connection::Client(conn))
    }

    /// Accepts TLS on `socket`.
    pub fn tls_server(socket: TcpStream, config: Arc<ServerConfig>) -> io::Result<Conn> {
        let conn = ServerConnection::new(config).map_err(io::Error::other)?;
        Self::tls(socket, Connection::Server(conn))
    }

    fn tls(mut socket: TcpStream, mut conn: Connection) -> io::Result<Conn> {
        let previous = socket.read_timeout()?;
        socket.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
        while conn.is_handshaking() {
            conn.complete_io(&mut socket)?;
        }
        // TLS 1.3 servers send session tickets right after the handshake.
        while conn.wants_write() {
            conn.write_tls(&mut socket)?;
        }
        socket.set_read_timeout(previous)?;
        let peer_certificate = conn
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.clone().into_owned());
        let shared = Arc::new(Mutex::new(conn));
        Ok(Conn {
            reader: Box::new(TlsReader {
                conn: shared.clone(),
                socket: socket.try_clone()?,
                plain: Vec::new(),
                pos: 0,
                eof: false,
            }),
            writer: Box::new(TlsWriter {
                conn: shared,
                socket: socket.try_clone()?,
            }),
            socket,
            peer_certificate,
        })
    }
}

/// Both halves as one stream, for the upgrade handshake.
pub struct Duplex<'a> {
    pub r: &'a mut (dyn Read + Send),
    pub w: &'a mut (dyn Write + Send),
}

impl Conn {
    pub fn duplex(&mut self) -> Duplex<'_> {
        Duplex {
            r: &mut *self.reader,
            w: &mut *self.writer,
        }
    }
}

impl Read for Duplex<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.r.read(buf)
    }
}

impl Write for Duplex<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.w.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.w.flush()
    }
}

/// The read half of a TLS link: ciphertext from the socket, decrypted under the lock into a
/// buffer of its own (so `rustls`'s bounded plaintext buffer never fills).
struct TlsReader {
    conn: Arc<Mutex<Connection>>,
    socket: TcpStream,
    plain: Vec<u8>,
    pos: usize,
    eof: bool,
}

impl TlsReader {
    /// Moves every decrypted byte out of `rustls` into `plain`.
    fn drain(conn: &mut Connection, plain: &mut Vec<u8>) -> io::Result<()> {
        let mut buf = [0u8; 4096];
        loop {
            match conn.reader().read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => plain.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                // A close without close_notify: the link ends either way.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }
}

impl Read for TlsReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.pos < self.plain.len() {
                let n = buf.len().min(self.plain.len() - self.pos);
                buf[..n].copy_from_slice(&self.plain[self.pos..self.pos + n]);
                self.pos += n;
                if self.pos == self.plain.len() {
                    self.plain.clear();
                    self.pos = 0;
                }
                return Ok(n);
            }
            if self.eof {
                return Ok(0);
            }
            {
                // Records read along with the handshake's last one are decrypted already.
                let mut conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
                Self::drain(&mut conn, &mut self.plain)?;
            }
            if !self.plain.is_empty() {
                continue;
            }
            let mut raw = [0u8; CHUNK_BYTES];
            let n = self.socket.read(&mut raw)?;
            let mut conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
            if n == 0 {
                self.eof = true;
            }
            let mut slice = &raw[..n];
            loop {
                conn.read_tls(&mut slice)?;
                conn.process_new_packets()
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                Self::drain(&mut conn, &mut self.plain)?;
                if slice.is_empty() {
                    break;
                }
            }
            // Anything the peer's records make us answer (a key update) leaves with the next
            // write: the write half flushes all pending TLS output each time.
        }
    }
}

/// The write half: plaintext encrypted under the lock, ciphertext written outside it.
struct TlsWriter {
    conn: Arc<Mutex<Connection>>,
    socket: TcpStream,
}

impl Write for TlsWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        for chunk in buf.chunks(CHUNK_BYTES) {
            let mut out = Vec::with_capacity(chunk.len() + 64);
            {
                let mut conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
                conn.writer().write_all(chunk)?;
                while conn.wants_write() {
                    conn.write_tls(&mut out)?;
                }
            }
            self.socket.write_all(&out)?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Starts a TLS server on loopback with a generated node certificate, sends `message` from a
    /// client (verifying the server or not) and reads it back echoed.
    fn check(verify: bool, message: &[u8]) {
        let dir = tempfile::tempdir().unwrap();
        let tree = crate::config::ConfigTree::defaults();
        let mut config = Config::from_tree(&tree, dir.path(), 1).unwrap();
        config.node_name = "node-t".into();
        let tls = LinkTls::load(&config, &[]).unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tls.server.clone();
        let echo = std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            let mut conn = Conn::tls_server(s, server).unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 1000];
            while got.len() < 3 || !got.ends_with(b"END") {
                let n = conn.reader.read(&mut buf).unwrap();
                assert!(n > 0, "closed early");
                got.extend_from_slice(&buf[..n]);
            }
            conn.writer.write_all(&got).unwrap();
            conn.peer_certificate.is_some()
        });
        let client = tls.client(verify, true);
        let s = TcpStream::connect(addr).unwrap();
        let mut conn = Conn::tls_client(s, "127.0.0.1", client).unwrap();
        let mut sent = message.to_vec();
        sent.extend_from_slice(b"END");
        conn.writer.write_all(&sent).unwrap();
        let mut back = vec![0u8; sent.len()];
        conn.reader.read_exact(&mut back).unwrap();
        assert_eq!(back, sent);
        assert!(echo.join().unwrap(), "the client presented its certificate");
    }

    #[test]
    fn tls_halves_carry_data_both_ways() {
        check(true, b"hello");
        check(false, b"");
        check(true, &vec![7u8; 100_000]);
    }
}
