//! Small cryptographic helpers: randomness, keyed hashes for client secrets, token digests,
//! constant-time comparison, and the bounded Argon2id pool for user passwords.

use std::sync::Arc;

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;

type HmacSha256 = Hmac<Sha256>;

pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut buf = [0u8; N];
    rand::rng().fill_bytes(&mut buf);
    buf
}

/// A URL-safe random token with `bytes * 8` bits of entropy.
pub fn random_token(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    URL_SAFE_NO_PAD.encode(buf)
}

pub fn b64url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

pub fn b64url_decode(text: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(text).ok()
}

/// SHA-256, hex: how high-entropy tokens (codes, refresh tokens) are stored.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Keyed hash for client secrets: HMAC-SHA256 with the server pepper. Client secrets have 256
/// bits of entropy, so a fast keyed hash is enough; a database dump alone cannot check guesses.
#[derive(Clone)]
pub struct SecretHasher {
    pepper: Arc<[u8; 32]>,
}

impl std::fmt::Debug for SecretHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretHasher(..)")
    }
}

impl SecretHasher {
    pub fn new(pepper: [u8; 32]) -> Self {
        Self {
            pepper: Arc::new(pepper),
        }
    }

    pub fn hash(&self, secret: &str) -> String {
        let Ok(mut mac) = HmacSha256::new_from_slice(self.pepper.as_slice()) else {
            return String::new();
        };
        mac.update(secret.as_bytes());
        format!("hmac-sha256:{}", hex::encode(mac.finalize().into_bytes()))
    }

    /// Constant-time check of `secret` against a stored hash.
    pub fn verify(&self, secret: &str, stored: &str) -> bool {
        constant_time_eq(self.hash(secret).as_bytes(), stored.as_bytes())
    }
}

pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// PKCE S256: BASE64URL(SHA256(verifier)) == challenge (RFC 7636 section 4.6).
pub fn pkce_s256_matches(verifier: &str, challenge: &str) -> bool {
    let computed = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    constant_time_eq(computed.as_bytes(), challenge.as_bytes())
}

/// RFC 7636: a verifier is 43-128 characters of `[A-Za-z0-9-._~]`.
pub fn valid_pkce_verifier(verifier: &str) -> bool {
    (43..=128).contains(&verifier.len())
        && verifier
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
}

#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error("password hashing failed: {0}")]
    Hash(String),
    #[error("the password hashing pool is closed")]
    PoolClosed,
}

/// Argon2id (the crate's defaults: m=19 MiB, t=2, p=1, the OWASP minimum) on the blocking pool,
/// at most `permits` at a time, so a login storm queues instead of starving the runtime.
#[derive(Clone, Debug)]
pub struct PasswordPool {
    permits: Arc<Semaphore>,
    /// A real hash of a random password: unknown users are verified against it, so that their
    /// requests take as long as those of real users.
    dummy_hash: Arc<String>,
}

impl PasswordPool {
    pub fn new(permits: usize) -> Result<Self, PasswordError> {
        let dummy = hash_password_blocking(&random_token(24))?;
        Ok(Self {
            permits: Arc::new(Semaphore::new(permits.max(1))),
            dummy_hash: Arc::new(dummy),
        })
    }

    pub async fn hash(&self, password: String) -> Result<String, PasswordError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| PasswordError::PoolClosed)?;
        tokio::task::spawn_blocking(move || hash_password_blocking(&password))
            .await
            .map_err(|e| PasswordError::Hash(e.to_string()))?
    }

    /// Verifies `password` against `stored`, or against the dummy hash when `stored` is `None`
    /// (unknown user), which always fails but costs the same.
    pub async fn verify(
        &self,
        password: String,
        stored: Option<String>,
    ) -> Result<bool, PasswordError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| PasswordError::PoolClosed)?;
        let known = stored.is_some();
        let hash = stored.unwrap_or_else(|| self.dummy_hash.as_str().to_string());
        let ok = tokio::task::spawn_blocking(move || {
            PasswordHash::new(&hash)
                .map(|parsed| {
                    Argon2::default()
                        .verify_password(password.as_bytes(), &parsed)
                        .is_ok()
                })
                .unwrap_or(false)
        })
        .await
        .map_err(|e| PasswordError::Hash(e.to_string()))?;
        Ok(ok && known)
    }
}

pub fn hash_password_blocking(password: &str) -> Result<String, PasswordError> {
    let salt = SaltString::encode_b64(&random_bytes::<16>())
        .map_err(|e| PasswordError::Hash(e.to_string()))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| PasswordError::Hash(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7636 Appendix B.
    #[test]
    fn pkce_rfc7636_appendix_b_vector() {
        let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        let challenge = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
        assert!(valid_pkce_verifier(verifier));
        assert!(pkce_s256_matches(verifier, challenge));
        assert!(!pkce_s256_matches(
            "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXX",
            challenge
        ));
    }

    #[test]
    fn pkce_verifier_charset_and_length() {
        assert!(!valid_pkce_verifier("short"));
        assert!(!valid_pkce_verifier(&"a".repeat(129)));
        assert!(!valid_pkce_verifier(&format!("{}+", "a".repeat(43))));
    }

    #[test]
    fn secret_hash_is_keyed_and_verifies() {
        let a = SecretHasher::new([1; 32]);
        let b = SecretHasher::new([2; 32]);
        let stored = a.hash("s3cret");
        assert!(a.verify("s3cret", &stored));
        assert!(!a.verify("s3cret!", &stored));
        assert!(
            !b.verify("s3cret", &stored),
            "another pepper must not verify"
        );
    }

    #[tokio::test]
    async fn argon2id_round_trip_and_dummy_never_matches() {
        let pool = PasswordPool::new(1).unwrap();
        let hash = pool.hash("correct horse".into()).await.unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(
            pool.verify("correct horse".into(), Some(hash.clone()))
                .await
                .unwrap()
        );
        assert!(!pool.verify("wrong".into(), Some(hash)).await.unwrap());
        assert!(!pool.verify("anything".into(), None).await.unwrap());
    }
}
