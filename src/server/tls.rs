//! Certificates for the secure ports: first-start generation and the `rustls` server config.
//!
//! On first start, when the `tls.certificate` and `tls.privateKey` files are both missing, it
//! generates a CA (`tls.certificateAuthority` plus `caPrivateKey.pem` beside it) and a server
//! certificate signed by that CA for the node name, `localhost` and this host's addresses. A CA
//! and not a bare self-signed certificate, because OpenSSL refuses a self-signed leaf as its own
//! trust anchor. It then turns the files and `http.mtls` into a [`ServerConfig`] any protocol's
//! listener can hand to [`tidepool_io::TlsAcceptor`]. It never touches a socket and never
//! overwrites an existing file.

use std::fmt;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tidepool_io::rustls::{self, pki_types, ServerConfig};

use crate::config::{Config, MtlsConfig, TlsConfig};
use pki_types::pem::PemObject;
use pki_types::{CertificateDer, PrivateKeyDer};

/// File name of the generated CA's key, next to `tls.certificateAuthority`.
pub const CA_KEY_FILE: &str = "caPrivateKey.pem";
/// Generated CA validity in years.
const CA_YEARS: i32 = 10;
/// Generated server certificate validity in years (short enough that clients accept it).
const CERTIFICATE_YEARS: i32 = 2;
/// Certificates in one PEM file at most: a chain, not a bundle of the world.
const CHAIN_LENGTH_MAX: usize = 16;

#[derive(Debug)]
pub enum TlsError {
    Io(PathBuf, std::io::Error),
    /// A file that is not the PEM it should be.
    Pem(PathBuf, String),
    Generate(String),
    /// The files do not fit together (e.g. key and certificate differ), or a CA cannot be used.
    Config(String),
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsError::Io(path, e) => write!(f, "{}: {e}", path.display()),
            TlsError::Pem(path, e) => write!(f, "{}: {e}", path.display()),
            TlsError::Generate(e) => write!(f, "cannot generate certificates: {e}"),
            TlsError::Config(e) => f.write_str(e),
        }
    }
}

impl std::error::Error for TlsError {}

/// What first start generated, for the log.
#[derive(Debug)]
pub struct Generated {
    pub certificate_authority: PathBuf,
    pub certificate: PathBuf,
    pub subject_alt_names: Vec<String>,
}

/// Generates the CA and the server certificate unless the certificate and key exist. Returns
/// what it wrote, or None when the files were already there.
pub fn ensure_certificates(config: &Config) -> Result<Option<Generated>, TlsError> {
    let tls = &config.tls;
    match (tls.certificate.exists(), tls.private_key.exists()) {
        (true, true) => return Ok(None),
        (false, false) => {}
        (true, false) | (false, true) => {
            return Err(TlsError::Config(format!(
                "only one of tls.certificate ({}) and tls.privateKey ({}) exists; provide both, \
                 or remove both to have them generated",
                tls.certificate.display(),
                tls.private_key.display()
            )))
        }
    }
    if tls.certificate_authority.exists() {
        return Err(TlsError::Config(format!(
            "tls.certificate {} is missing but tls.certificateAuthority {} exists: provide the \
             certificate, or remove the CA to have both generated",
            tls.certificate.display(),
            tls.certificate_authority.display()
        )));
    }
    let mut names = vec![config.node_name.clone(), "localhost".to_string()];
    let mut ips: Vec<IpAddr> = vec![[127, 0, 0, 1].into(), std::net::Ipv6Addr::LOCALHOST.into()];
    match tidepool_io::local_ip_addresses() {
        Ok(local) => ips.extend(local),
        Err(e) => tracing::warn!("cannot list local addresses for the certificate: {e}"),
    }
    for ip in ips {
        let name = ip.to_string();
        if !names.contains(&name) {
            names.push(name);
        }
    }
    let pems = generate(&config.node_name, &names)?;
    let ca_key = ca_key_path(tls);
    for path in [
        &tls.certificate_authority,
        &ca_key,
        &tls.certificate,
        &tls.private_key,
    ] {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| TlsError::Io(dir.to_path_buf(), e))?;
        }
    }
    write_new(&ca_key, &pems.ca_key, 0o600)?;
    write_new(&tls.private_key, &pems.key, 0o600)?;
    write_new(&tls.certificate_authority, &pems.ca, 0o644)?;
    write_new(&tls.certificate, &pems.certificate, 0o644)?;
    Ok(Some(Generated {
        certificate_authority: tls.certificate_authority.clone(),
        certificate: tls.certificate.clone(),
        subject_alt_names: names,
    }))
}

pub fn ca_key_path(tls: &TlsConfig) -> PathBuf {
    tls.certificate_authority
        .parent()
        .unwrap_or(Path::new("."))
        .join(CA_KEY_FILE)
}

struct Pems {
    ca: String,
    ca_key: String,
    certificate: String,
    key: String,
}

fn current_year() -> i32 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    // Average Gregorian year; a day off at a year's edge only moves not_before by a year.
    1970 + (secs / 31_556_952) as i32
}

/// A CA for `node_name` and a certificate for `names` (DNS names or IP addresses) signed by it.
fn generate(node_name: &str, names: &[String]) -> Result<Pems, TlsError> {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair, KeyUsagePurpose, SanType,
    };
    let fail = |e: rcgen::Error| TlsError::Generate(e.to_string());
    let year = current_year();
    // Backdated a year so a client with a slightly wrong clock still accepts it.
    let not_before = rcgen::date_time_ymd(year - 1, 1, 1);

    let mut ca_params = CertificateParams::default();
    ca_params.distinguished_name = rcgen::DistinguishedName::new();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, format!("tidepool CA {node_name}"));
    ca_params
        .distinguished_name
        .push(DnType::OrganizationName, "tidepool");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca_params.not_before = not_before;
    ca_params.not_after = rcgen::date_time_ymd(year + CA_YEARS, 1, 1);
    let ca_key = KeyPair::generate().map_err(fail)?;
    let ca_key_pem = ca_key.serialize_pem();
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key).map_err(fail)?;

    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, node_name);
    params.subject_alt_names = names
        .iter()
        .filter_map(|name| match name.parse::<IpAddr>() {
            Ok(ip) => Some(SanType::IpAddress(ip)),
            // A host name that is not a valid DNS name (e.g. with `_`) stays only in the CN.
            Err(_) => name.clone().try_into().ok().map(SanType::DnsName),
        })
        .collect();
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    // Client auth too: the node certificate also authenticates this node to its peers (docs/replication.md).
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    params.not_before = not_before;
    params.not_after = rcgen::date_time_ymd(year + CERTIFICATE_YEARS, 1, 1);
    let key = KeyPair::generate().map_err(fail)?;
    let certificate = params.signed_by(&key, &ca).map_err(fail)?;
    Ok(Pems {
        ca: ca.pem(),
        ca_key: ca_key_pem,
        certificate: certificate.pem(),
        key: key.serialize_pem(),
    })
}

/// Creates `path` with `mode`; never replaces an existing file.
fn write_new(path: &Path, contents: &str, mode: u32) -> Result<(), TlsError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| TlsError::Io(path.to_path_buf(), e))?;
    file.write_all(contents.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| TlsError::Io(path.to_path_buf(), e))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub fn load_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = std::fs::read(path).map_err(|e| TlsError::Io(path.to_path_buf(), e))?;
    let mut chain = Vec::new();
    for certificate in CertificateDer::pem_slice_iter(&pem) {
        let certificate =
            certificate.map_err(|e| TlsError::Pem(path.to_path_buf(), e.to_string()))?;
        if chain.len() == CHAIN_LENGTH_MAX {
            return Err(TlsError::Pem(
                path.to_path_buf(),
                format!("more than {CHAIN_LENGTH_MAX} certificates"),
            ));
        }
        chain.push(certificate);
    }
    if chain.is_empty() {
        return Err(TlsError::Pem(
            path.to_path_buf(),
            "no CERTIFICATE block".into(),
        ));
    }
    Ok(chain)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = std::fs::read(path).map_err(|e| TlsError::Io(path.to_path_buf(), e))?;
    PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| TlsError::Pem(path.to_path_buf(), e.to_string()))
}

/// The server's certificate and key, shared by every TLS listener and swapped in place by
/// [`CertificateSlot::reload`] (SIGHUP): handshakes after a reload present the new certificate,
/// connections already open keep theirs.
#[derive(Debug)]
pub struct CertificateSlot {
    current: RwLock<Arc<CertifiedKey>>,
}

impl CertificateSlot {
    pub fn load(tls: &TlsConfig) -> Result<Arc<Self>, TlsError> {
        Ok(Arc::new(CertificateSlot {
            current: RwLock::new(certified_key(tls)?),
        }))
    }

    /// Reads the `tls` files again. On any error the running certificate stays.
    pub fn reload(&self, tls: &TlsConfig) -> Result<(), TlsError> {
        let fresh = certified_key(tls)?;
        match self.current.write() {
            Ok(mut current) => *current = fresh,
            // A panic while holding the lock cannot leave a half-written Arc; take it anyway.
            Err(poisoned) => *poisoned.into_inner() = fresh,
        }
        Ok(())
    }

    fn get(&self) -> Arc<CertifiedKey> {
        match self.current.read() {
            Ok(current) => current.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

impl ResolvesServerCert for CertificateSlot {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }
}

fn certified_key(tls: &TlsConfig) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = load_certificates(&tls.certificate)?;
    let key = load_key(&tls.private_key)?;
    CertifiedKey::from_der(chain, key, &provider())
        .map(Arc::new)
        .map_err(|e| {
            TlsError::Config(format!(
                "{} and {} do not make a usable certificate: {e}",
                tls.certificate.display(),
                tls.private_key.display()
            ))
        })
}

/// The server side of TLS for one kind of listener: the certificate in `certificate`, client
/// certificates per `mtls` (CA default `tls.certificateAuthority`), and the ALPN protocols offered
/// (`[b"http/1.1"]` for HTTP, `[b"mqtt"]` for MQTT). Protocol versions are rustls's: TLS 1.2 and
/// 1.3 (1.0 and 1.1 are not implemented).
pub fn server_config(
    certificate: Arc<CertificateSlot>,
    tls: &TlsConfig,
    mtls: Option<&MtlsConfig>,
    alpn: &[&[u8]],
) -> Result<Arc<ServerConfig>, TlsError> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match mtls {
        None => builder.with_no_client_auth(),
        Some(mtls) => {
            let ca_path = mtls
                .certificate_authority
                .as_ref()
                .unwrap_or(&tls.certificate_authority);
            let mut roots = rustls::RootCertStore::empty();
            for certificate in load_certificates(ca_path)? {
                roots.add(certificate).map_err(|e| {
                    TlsError::Config(format!("{}: not a usable CA: {e}", ca_path.display()))
                })?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider(),
            );
            let verifier = if mtls.required {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            let verifier = verifier
                .build()
                .map_err(|e| TlsError::Config(format!("client certificate verifier: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_cert_resolver(certificate);
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// The client side, for links this node opens (MQTT bridges, replication) and for tests: trusts
/// the certificates in `ca` and, with `identity`, presents that certificate chain and key (the
/// node's own `tls` files for mTLS to a peer).
pub fn client_config(
    ca: &Path,
    identity: Option<(&Path, &Path)>,
    alpn: &[&[u8]],
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for certificate in load_certificates(ca)? {
        roots
            .add(certificate)
            .map_err(|e| TlsError::Config(format!("{}: not a usable CA: {e}", ca.display())))?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots);
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some((certificate, key)) => builder
            .with_client_auth_cert(load_certificates(certificate)?, load_key(key)?)
            .map_err(|e| {
                TlsError::Config(format!(
                    "{} and {} do not make a usable certificate: {e}",
                    certificate.display(),
                    key.display()
                ))
            })?,
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::client::danger::ServerCertVerifier;

    fn check(node_name: &str, expected_cn: &str) {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        let tls = TlsConfig {
            certificate: keys.join("certificate.pem"),
            private_key: keys.join("privateKey.pem"),
            certificate_authority: keys.join("ca.pem"),
        };
        let names = vec![
            node_name.to_string(),
            "localhost".into(),
            "127.0.0.1".into(),
        ];
        let pems = generate(node_name, &names).unwrap();
        std::fs::create_dir_all(&keys).unwrap();
        write_new(&tls.certificate, &pems.certificate, 0o644).unwrap();
        write_new(&tls.private_key, &pems.key, 0o600).unwrap();
        write_new(&tls.certificate_authority, &pems.ca, 0o644).unwrap();
        assert!(
            write_new(&tls.certificate, "", 0o644).is_err(),
            "overwrote a file"
        );
        let leaf = load_certificates(&tls.certificate).unwrap();
        assert_eq!(
            tidepool_io::certificate_subject_cn(leaf[0].as_ref()),
            Some(expected_cn)
        );
        // The leaf verifies against the CA for every name, as a client would check it.
        let mut roots = rustls::RootCertStore::empty();
        for ca in load_certificates(&tls.certificate_authority).unwrap() {
            roots.add(ca).unwrap();
        }
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            provider(),
        )
        .build()
        .unwrap();
        for name in ["localhost", "127.0.0.1"] {
            let name = pki_types::ServerName::try_from(name).unwrap();
            verifier
                .verify_server_cert(&leaf[0], &[], &name, &[], pki_types::UnixTime::now())
                .unwrap();
        }
        let other = pki_types::ServerName::try_from("elsewhere.invalid").unwrap();
        assert!(verifier
            .verify_server_cert(&leaf[0], &[], &other, &[], pki_types::UnixTime::now())
            .is_err());
        for mtls in [
            None,
            Some(MtlsConfig {
                user: None,
                required: true,
                certificate_authority: None,
            }),
        ] {
            let slot = CertificateSlot::load(&tls).unwrap();
            server_config(slot, &tls, mtls.as_ref(), &[b"http/1.1"]).unwrap();
        }
        client_config(
            &tls.certificate_authority,
            Some((&tls.certificate, &tls.private_key)),
            &[],
        )
        .unwrap();
        assert!(client_config(&tls.private_key, None, &[]).is_err());
        // A key that is not the certificate's is refused, and a failed reload keeps the old one.
        let slot = CertificateSlot::load(&tls).unwrap();
        let before = slot.get();
        let mismatched = TlsConfig {
            private_key: keys.join("other.pem"),
            ..tls.clone()
        };
        write_new(&mismatched.private_key, &pems.ca_key, 0o600).unwrap();
        assert!(CertificateSlot::load(&mismatched).is_err());
        assert!(slot.reload(&mismatched).is_err());
        assert!(Arc::ptr_eq(&before, &slot.get()));
        slot.reload(&tls).unwrap();
        assert!(!Arc::ptr_eq(&before, &slot.get()));
    }

    #[test]
    fn generated_certificates_verify() {
        check("node-1", "node-1");
        check("db.example.com", "db.example.com");
        check("under_score", "under_score");
    }
}
