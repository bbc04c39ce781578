//! Certificate exchange over a link (docs/replication.md, P1): the dialer's signing request for its node
//! certificate, the peer signing it with its CA (valid one year), and the CAs each side then
//! trusts, kept in `system.hdb_certificate` so links after a restart are plain mTLS. Keys never
//! leave their files: the request is made with the node's existing key, and only certificates
//! go into the table. It never opens sockets and never decides who may ask (the link checks the
//! caller is a super user).

use std::path::Path;

use tidepool_io::rustls::pki_types::{pem::PemObject, CertificateDer};

use super::block_on;
use crate::config::TlsConfig;
use crate::store::{PutMode, Store, WriteOp, WriteRequest};
use crate::value::{Object, Value};

/// A certificate or signing request in a message is at most this many bytes of PEM.
pub const PEM_BYTES_MAX: usize = 64 * 1024;
/// Certificates signed for peers are valid this long.
const SIGNED_DAYS: i64 = 365;
const TABLE: &str = "hdb_certificate";

fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// Our CA certificate (PEM), as sent in `CSR` and `CSR_SIGNED`.
pub fn ca_pem(tls: &TlsConfig) -> Result<String, String> {
    read(&tls.certificate_authority)
}

/// A signing request for `node` (CN and, when valid, DNS name) over the node's own key.
pub fn signing_request(tls: &TlsConfig, node: &str) -> Result<String, String> {
    let key = rcgen::KeyPair::from_pem(&read(&tls.private_key)?).map_err(|e| e.to_string())?;
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, node);
    if let Ok(name) = node.to_string().try_into() {
        params.subject_alt_names = vec![rcgen::SanType::DnsName(name)];
    }
    params
        .serialize_request(&key)
        .and_then(|csr| csr.pem())
        .map_err(|e| e.to_string())
}

/// Signs a peer's request with our CA (its key beside `tls.certificateAuthority`), for a year
/// from now, as a client and server certificate. The subject comes from the request.
pub fn sign(tls: &TlsConfig, csr_pem: &str) -> Result<String, String> {
    if csr_pem.len() > PEM_BYTES_MAX {
        return Err("signing request too large".into());
    }
    let mut csr =
        rcgen::CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| e.to_string())?;
    let ca_key = rcgen::KeyPair::from_pem(&read(&crate::server::tls::ca_key_path(tls))?)
        .map_err(|e| format!("our CA key: {e}"))?;
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca_pem(tls)?, ca_key)
        .map_err(|e| format!("our CA: {e}"))?;
    let now = std::time::SystemTime::now();
    let params = &mut csr.params;
    params.not_before = now.into();
    params.not_after = (now + std::time::Duration::from_secs(SIGNED_DAYS as u64 * 86_400)).into();
    params.is_ca = rcgen::IsCa::ExplicitNoCa;
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::DigitalSignature,
        rcgen::KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    csr.signed_by(&issuer)
        .map(|c| c.pem())
        .map_err(|e| e.to_string())
}

/// The first certificate of a PEM text, checked to parse.
pub fn parse_pem(pem: &str) -> Result<CertificateDer<'static>, String> {
    if pem.len() > PEM_BYTES_MAX {
        return Err("certificate too large".into());
    }
    CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| e.to_string())
}

/// Records a certificate in `system.hdb_certificate` (a plain thread only: waits for the
/// commit).
pub fn store(store: &Store, name: &str, pem: &str, is_authority: bool) -> Result<(), String> {
    let db = store
        .database("system")
        .ok_or_else(|| "no system database".to_string())?;
    let mut record = Object::new();
    record.insert("name", Value::String(name.into()));
    record.insert("certificate", Value::String(pem.into()));
    record.insert("is_authority", Value::Bool(is_authority));
    record.insert("is_self_signed", Value::Bool(false));
    let request = WriteRequest {
        ops: vec![WriteOp::Put {
            table: TABLE.into(),
            key: Some(Value::String(name.into())),
            record: Value::Object(record),
            mode: PutMode::Replace,
            expires_in_s: None,
        }],
        user: None,
        extras: None,
    };
    let rx = db.submit(request).map_err(|e| e.to_string())?;
    match block_on(rx) {
        Some(Ok(_)) => Ok(()),
        Some(Err(e)) => Err(e.to_string()),
        None => Err("the writer stopped".into()),
    }
}

/// Every authority in `system.hdb_certificate` that parses (a bad one is skipped and logged).
pub fn stored_authorities(store: &Store) -> Vec<CertificateDer<'static>> {
    let Some(db) = store.database("system") else {
        return Vec::new();
    };
    let Some(table) = db.table(TABLE) else {
        return Vec::new();
    };
    let Ok(records) = db.read().and_then(|txn| txn.raw_records(&table)) else {
        return Vec::new();
    };
    records
        .into_iter()
        .filter_map(|r| r.value)
        .filter(|v| matches!(v.get("is_authority"), Some(Value::Bool(true))))
        .filter_map(|v| {
            let pem = v.get("certificate")?.as_str()?.to_string();
            match parse_pem(&pem) {
                Ok(c) => Some(c),
                Err(e) => {
                    let name = v.get("name").and_then(Value::as_str).unwrap_or("");
                    tracing::warn!("hdb_certificate {name:?}: not a usable CA: {e}");
                    None
                }
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two nodes with their own generated CAs: B's request signed by A verifies against A's CA
    /// and names B; a request that is not PEM is refused.
    fn check(csr_of: &str, expect_cn: Option<&str>) {
        let tree = crate::config::ConfigTree::defaults();
        let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
        let configs: Vec<crate::config::Config> = dirs
            .iter()
            .zip(["node-a", "node-b"])
            .map(|(d, name)| {
                let mut c = crate::config::Config::from_tree(&tree, d.path(), 1).unwrap();
                c.node_name = name.into();
                crate::server::tls::ensure_certificates(&c).unwrap();
                c
            })
            .collect();
        let csr = if csr_of == "node-b" {
            signing_request(&configs[1].tls, "node-b").unwrap()
        } else {
            csr_of.to_string()
        };
        let signed = sign(&configs[0].tls, &csr);
        let Some(cn) = expect_cn else {
            assert!(signed.is_err());
            return;
        };
        let der = parse_pem(&signed.unwrap()).unwrap();
        assert_eq!(tidepool_io::certificate_subject_cn(der.as_ref()), Some(cn));
        let mut roots = tidepool_io::rustls::RootCertStore::empty();
        roots
            .add(parse_pem(&ca_pem(&configs[0].tls).unwrap()).unwrap())
            .unwrap();
        let verifier = tidepool_io::rustls::server::WebPkiClientVerifier::builder_with_provider(
            std::sync::Arc::new(roots),
            std::sync::Arc::new(tidepool_io::rustls::crypto::ring::default_provider()),
        )
        .build()
        .unwrap();
        verifier
            .verify_client_cert(&der, &[], tidepool_io::rustls::pki_types::UnixTime::now())
            .unwrap();
    }

    #[test]
    fn a_peer_request_is_signed_by_our_ca() {
        check("node-b", Some("node-b"));
        check("not a request", None);
    }
}
