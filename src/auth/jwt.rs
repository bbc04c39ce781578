//! RS256 JSON Web Tokens (docs/security.md): the node's RSA key pair in `<root>/keys/.jwtPrivate.key`
//! and `.jwtPublic.key` (generated on first start), signing and verifying claims.
//!
//! Verification is strict: RS256 only, `exp` required and checked with no leeway, `sub` one of
//! `operation`/`refresh`. A token is never logged.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

pub const PRIVATE_KEY_FILE: &str = ".jwtPrivate.key";
pub const PUBLIC_KEY_FILE: &str = ".jwtPublic.key";
/// RSA modulus size of a generated key pair.
const RSA_BITS: usize = 2048;
/// Tokens longer than this are refused before any decoding (a JWT of ours is ~700 bytes).
pub const TOKEN_BYTES_MAX: usize = 8192;

/// What a token says. Field names are HarperDB's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Claims {
    pub username: String,
    pub super_user: bool,
    pub cluster_user: bool,
    pub iat: u64,
    pub exp: u64,
    /// `operation` or `refresh`.
    pub sub: String,
    /// A random id, so two tokens issued in the same second differ (the newest refresh token
    /// must be told from the one before).
    #[serde(default)]
    pub jti: String,
}

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    Expired,
    Invalid,
}

pub struct Keys {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl Keys {
    /// From PEM texts (PKCS#8 or PKCS#1 private key, SPKI or PKCS#1 public key).
    pub fn from_pem(private_pem: &[u8], public_pem: &[u8]) -> Result<Keys, String> {
        Ok(Keys {
            encoding: EncodingKey::from_rsa_pem(private_pem)
                .map_err(|e| format!("JWT private key: {e}"))?,
            decoding: DecodingKey::from_rsa_pem(public_pem)
                .map_err(|e| format!("JWT public key: {e}"))?,
        })
    }

    /// Loads the key pair from `dir`, generating and writing it when either file is missing.
    pub fn load_or_generate(dir: &Path) -> Result<Keys, String> {
        let private_path = dir.join(PRIVATE_KEY_FILE);
        let public_path = dir.join(PUBLIC_KEY_FILE);
        if private_path.is_file() && public_path.is_file() {
            let private = std::fs::read(&private_path)
                .map_err(|e| format!("{}: {e}", private_path.display()))?;
            let public = std::fs::read(&public_path)
                .map_err(|e| format!("{}: {e}", public_path.display()))?;
            return Keys::from_pem(&private, &public);
        }
        let (private, public) = generate_pem()?;
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        write_private(&private_path, private.as_bytes())?;
        std::fs::write(&public_path, public.as_bytes())
            .map_err(|e| format!("{}: {e}", public_path.display()))?;
        Keys::from_pem(private.as_bytes(), public.as_bytes())
    }

    pub fn sign(&self, claims: &Claims) -> Result<String, String> {
        jsonwebtoken::encode(&Header::new(Algorithm::RS256), claims, &self.encoding)
            .map_err(|e| format!("cannot sign a token: {e}"))
    }

    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        if token.len() > TOKEN_BYTES_MAX {
            return Err(TokenError::Invalid);
        }
        let mut validation = Validation::new(Algorithm::RS256);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "sub"]);
        match jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation) {
            Ok(data) if matches!(data.claims.sub.as_str(), "operation" | "refresh") => {
                Ok(data.claims)
            }
            Ok(_) => Err(TokenError::Invalid),
            Err(e) if matches!(e.kind(), ErrorKind::ExpiredSignature) => Err(TokenError::Expired),
            Err(_) => Err(TokenError::Invalid),
        }
    }
}

/// A new RSA key pair as (PKCS#8 private PEM, SPKI public PEM).
pub fn generate_pem() -> Result<(String, String), String> {
    use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
    let private = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, RSA_BITS)
        .map_err(|e| format!("cannot generate the JWT key: {e}"))?;
    let public = rsa::RsaPublicKey::from(&private);
    let private_pem = private
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| format!("cannot encode the JWT key: {e}"))?;
    let public_pem = public
        .to_public_key_pem(LineEnding::LF)
        .map_err(|e| format!("cannot encode the JWT key: {e}"))?;
    Ok((private_pem.to_string(), public_pem))
}

fn write_private(path: &Path, data: &[u8]) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    file.write_all(data)
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// Seconds since the epoch.
pub fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(sub: &str, exp_offset_s: i64) -> Claims {
        let now = now_s();
        Claims {
            username: "ann".into(),
            super_user: false,
            cluster_user: false,
            iat: now,
            exp: (now as i64 + exp_offset_s) as u64,
            sub: sub.into(),
            jti: String::new(),
        }
    }

    fn check(keys: &Keys, token: &str, expected: Result<&str, TokenError>) {
        assert_eq!(
            keys.verify(token).map(|c| c.sub),
            expected.map(str::to_string),
            "{token}"
        );
    }

    #[test]
    fn sign_verify_and_refuse() {
        let dir = tempfile::tempdir().expect("temp");
        let keys = Keys::load_or_generate(dir.path()).expect("keys");
        // A second load reads the same pair back.
        let again = Keys::load_or_generate(dir.path()).expect("reload");
        let other = Keys::load_or_generate(&dir.path().join("other")).expect("other keys");

        let good = keys.sign(&claims("operation", 60)).expect("sign");
        check(&keys, &good, Ok("operation"));
        check(&again, &good, Ok("operation"));
        check(&other, &good, Err(TokenError::Invalid));
        let refresh = keys.sign(&claims("refresh", 60)).expect("sign");
        check(&keys, &refresh, Ok("refresh"));
        let expired = keys.sign(&claims("operation", -5)).expect("sign");
        check(&keys, &expired, Err(TokenError::Expired));
        let odd = keys.sign(&claims("other", 60)).expect("sign");
        check(&keys, &odd, Err(TokenError::Invalid));
        // Tampered payload: flip one character of the claims part.
        let mut parts: Vec<String> = good.split('.').map(str::to_string).collect();
        let payload = parts[1].clone().into_bytes();
        let mut flipped = payload.clone();
        flipped[5] = if payload[5] == b'A' { b'B' } else { b'A' };
        parts[1] = String::from_utf8(flipped).expect("ascii");
        check(&keys, &parts.join("."), Err(TokenError::Invalid));
        check(&keys, "not.a.token", Err(TokenError::Invalid));
        check(&keys, "", Err(TokenError::Invalid));
        let mode = std::fs::metadata(dir.path().join(PRIVATE_KEY_FILE))
            .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
            .expect("private key written");
        assert_eq!(mode, 0o600);
    }
}
