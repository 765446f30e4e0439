//! Signing keys (Ed25519, JWS `alg` EdDSA) with states next -> active -> retiring -> retired,
//! their encryption at rest, the JWKS, and JWT signing and verification.
//!
//! Rotation: the `next` key becomes `active`, the `active` key becomes `retiring`, the previous
//! `retiring` key is `retired`, and a fresh `next` key is generated. The JWKS publishes next,
//! active and retiring keys, so a verifier that cached the key set before a rotation already
//! knows the new signing key, and tokens signed by the old key keep verifying until they expire.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use arc_swap::ArcSwap;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::crypto::{b64url, b64url_decode, random_bytes};
use crate::model::{Actor, KeyState, SigningKeyRecord};
use crate::store::{RotationPlan, Store, StoreError};

pub const ALG: &str = "EdDSA";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "signing key {kid} cannot be decrypted: wrong keys.encryption_key, or the row was altered"
    )]
    Decrypt { kid: String },
    #[error("signing key {kid} is malformed")]
    Malformed { kid: String },
    #[error("no active signing key")]
    NoActiveKey,
}

/// Encrypts private keys at rest with AES-256-GCM (key = SHA-256 of `keys.encryption_key`);
/// the key id is bound as associated data, so a ciphertext cannot be moved to another row.
#[derive(Clone)]
pub struct KeyCipher {
    key: Arc<[u8; 32]>,
}

impl std::fmt::Debug for KeyCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyCipher(..)")
    }
}

impl KeyCipher {
    pub fn from_secret(secret: &str) -> Self {
        Self {
            key: Arc::new(Sha256::digest(secret.as_bytes()).into()),
        }
    }

    /// A 32-byte value derived from the encryption key for another purpose (e.g. the pepper of
    /// client-secret hashes), so that one secret configures both.
    pub fn derive(&self, purpose: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.key.as_slice());
        h.update(purpose.as_bytes());
        h.finalize().into()
    }

    fn encrypt(&self, kid: &str, plaintext: &[u8]) -> String {
        let cipher = Aes256Gcm::new(self.key.as_slice().into());
        let nonce_bytes = random_bytes::<12>();
        let sealed = cipher
            .encrypt(
                Nonce::from_slice(&nonce_bytes),
                Payload {
                    msg: plaintext,
                    aad: kid.as_bytes(),
                },
            )
            .unwrap_or_default();
        let mut out = nonce_bytes.to_vec();
        out.extend_from_slice(&sealed);
        format!("aes256gcm:{}", b64url(&out))
    }

    fn decrypt(&self, kid: &str, text: &str) -> Result<Vec<u8>, KeyError> {
        let err = || KeyError::Decrypt {
            kid: kid.to_string(),
        };
        let data = text
            .strip_prefix("aes256gcm:")
            .and_then(b64url_decode)
            .ok_or_else(err)?;
        if data.len() < 12 {
            return Err(err());
        }
        let (nonce, sealed) = data.split_at(12);
        let cipher = Aes256Gcm::new(self.key.as_slice().into());
        cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: kid.as_bytes(),
                },
            )
            .map_err(|_| err())
    }
}

/// The loaded key set: the signing key, every published verifying key, and the rendered JWKS.
pub struct KeySet {
    pub active_kid: String,
    signing: SigningKey,
    verifying: HashMap<String, VerifyingKey>,
    pub jwks: Value,
    pub active_since: i64,
    verified: VerifiedTokens,
}

/// Tokens whose signature this key set verified, with what the verification returned.
///
/// The Ed25519 verification was a third of the CPU of an introspection, and resource servers
/// introspect the same token again and again. A signature check is a pure function of the
/// token and the published keys, so the cache lives in the key set and goes with it when a
/// rotation loads a new one; expiry, issuer and revocation are still checked on every call.
/// Only tokens that verified are kept, so only tokens this service signed can fill it.
#[derive(Default)]
struct VerifiedTokens {
    shards: [std::sync::Mutex<HashMap<Box<str>, Verified>>; VERIFIED_SHARDS],
}

type Verified = (Option<String>, Value);

const VERIFIED_SHARDS: usize = 16;
/// At most this many tokens are remembered (a few MiB); a full shard is emptied.
const VERIFIED_CAPACITY: usize = 4096;

impl VerifiedTokens {
    fn shard(&self, token: &str) -> &std::sync::Mutex<HashMap<Box<str>, Verified>> {
        // The signature's last bytes are as good as random.
        let index = token.bytes().rev().take(4).fold(0usize, |acc, b| {
            acc.wrapping_mul(31).wrapping_add(usize::from(b))
        }) % VERIFIED_SHARDS;
        &self.shards[index]
    }

    fn get(&self, token: &str) -> Option<Verified> {
        self.shard(token).lock().ok()?.get(token).cloned()
    }

    fn insert(&self, token: &str, verified: &Verified) {
        if let Ok(mut shard) = self.shard(token).lock() {
            if shard.len() >= VERIFIED_CAPACITY / VERIFIED_SHARDS {
                shard.clear();
            }
            shard.insert(token.into(), verified.clone());
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map(|m| m.len()).unwrap_or(0))
            .sum()
    }
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySet")
            .field("active_kid", &self.active_kid)
            .field("published", &self.verifying.keys().collect::<Vec<_>>())
            .finish()
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JwtError {
    #[error("the token is not a well-formed JWS")]
    Malformed,
    #[error("the token's algorithm is not EdDSA")]
    Algorithm,
    #[error("the token was signed by an unknown key")]
    UnknownKey,
    #[error("the token's signature is invalid")]
    Signature,
}

#[derive(Serialize)]
struct Header<'a> {
    alg: &'a str,
    typ: &'a str,
    kid: &'a str,
}

impl KeySet {
    /// A compact JWS over `claims`, with header `typ` (`at+jwt` for access tokens, RFC 9068).
    pub fn sign(&self, typ: &str, claims: &impl Serialize) -> String {
        let header = serde_json::to_vec(&Header {
            alg: ALG,
            typ,
            kid: &self.active_kid,
        })
        .unwrap_or_default();
        let payload = serde_json::to_vec(claims).unwrap_or_default();
        let signing_input = format!("{}.{}", b64url(&header), b64url(&payload));
        let signature: Signature = self.signing.sign(signing_input.as_bytes());
        format!("{signing_input}.{}", b64url(&signature.to_bytes()))
    }

    /// Verifies the signature against a published key; returns the header `typ` and the claims.
    /// Claim checks (exp, iss, aud) are the caller's.
    pub fn verify(&self, token: &str) -> Result<(Option<String>, Value), JwtError> {
        if let Some(verified) = self.verified.get(token) {
            return Ok(verified);
        }
        let verified = self.verify_signature(token)?;
        self.verified.insert(token, &verified);
        Ok(verified)
    }

    fn verify_signature(&self, token: &str) -> Result<Verified, JwtError> {
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JwtError::Malformed);
        };
        let header: Value = b64url_decode(h)
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(JwtError::Malformed)?;
        if header.get("alg").and_then(Value::as_str) != Some(ALG) {
            return Err(JwtError::Algorithm);
        }
        let kid = header
            .get("kid")
            .and_then(Value::as_str)
            .ok_or(JwtError::UnknownKey)?;
        let key = self.verifying.get(kid).ok_or(JwtError::UnknownKey)?;
        let sig_bytes: [u8; 64] = b64url_decode(s)
            .and_then(|b| b.try_into().ok())
            .ok_or(JwtError::Malformed)?;
        let signature = Signature::from_bytes(&sig_bytes);
        key.verify_strict(format!("{h}.{p}").as_bytes(), &signature)
            .map_err(|_| JwtError::Signature)?;
        let claims: Value = b64url_decode(p)
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(JwtError::Malformed)?;
        if !claims.is_object() {
            return Err(JwtError::Malformed);
        }
        let typ = header
            .get("typ")
            .and_then(Value::as_str)
            .map(str::to_string);
        Ok((typ, claims))
    }
}

fn jwk(kid: &str, public_key: &str) -> Value {
    serde_json::json!({ "kty": "OKP", "crv": "Ed25519", "x": public_key, "kid": kid, "use": "sig", "alg": ALG })
}

fn new_key_record(cipher: &KeyCipher, state: KeyState, at: i64) -> SigningKeyRecord {
    let signing = SigningKey::from_bytes(&random_bytes::<32>());
    let kid = uuid::Uuid::now_v7().simple().to_string();
    SigningKeyRecord {
        private_key_enc: cipher.encrypt(&kid, signing.as_bytes()),
        public_key: b64url(signing.verifying_key().as_bytes()),
        kid,
        alg: ALG.into(),
        state,
        created_at: at,
        state_changed_at: at,
    }
}

/// The key manager: loads keys from the store, rotates them, and serves the current set.
#[derive(Clone)]
pub struct KeyManager {
    store: Arc<dyn Store>,
    cipher: KeyCipher,
    current: Arc<ArcSwap<Option<Arc<KeySet>>>>,
    /// Retiring keys are retired once every token they signed has expired.
    retire_after: Duration,
}

impl std::fmt::Debug for KeyManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyManager")
            .field("current", &self.current.load())
            .finish()
    }
}

impl KeyManager {
    pub fn new(store: Arc<dyn Store>, cipher: KeyCipher, retire_after: Duration) -> Self {
        Self {
            store,
            cipher,
            current: Arc::new(ArcSwap::from_pointee(None)),
            retire_after,
        }
    }

    /// The loaded key set, if keys have been loaded.
    pub fn current(&self) -> Option<Arc<KeySet>> {
        self.current.load().as_ref().clone()
    }

    /// Creates the first active and next keys on an empty store, then loads.
    pub async fn ensure(&self, at: i64) -> Result<Arc<KeySet>, KeyError> {
        let keys = self.store.list_keys().await?;
        let has_active = keys.iter().any(|k| k.state == KeyState::Active);
        let has_next = keys.iter().any(|k| k.state == KeyState::Next);
        if !has_active || !has_next {
            let mut plan = RotationPlan::default();
            if !has_active {
                plan.new_keys
                    .push(new_key_record(&self.cipher, KeyState::Active, at));
            }
            if !has_next {
                plan.new_keys
                    .push(new_key_record(&self.cipher, KeyState::Next, at));
            }
            self.store
                .apply_rotation(&Actor::system(), &plan, at)
                .await?;
        }
        self.reload().await
    }

    /// Reads the keys from the store (another replica may have rotated them).
    pub async fn reload(&self) -> Result<Arc<KeySet>, KeyError> {
        let keys = self.store.list_keys().await?;
        let mut verifying = HashMap::new();
        let mut jwks = Vec::new();
        let mut active = None;
        for key in keys.iter().filter(|k| k.state != KeyState::Retired) {
            let public: [u8; 32] = b64url_decode(&key.public_key)
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| KeyError::Malformed {
                    kid: key.kid.clone(),
                })?;
            let vk = VerifyingKey::from_bytes(&public).map_err(|_| KeyError::Malformed {
                kid: key.kid.clone(),
            })?;
            verifying.insert(key.kid.clone(), vk);
            jwks.push(jwk(&key.kid, &key.public_key));
            if key.state == KeyState::Active {
                active = Some(key);
            }
        }
        let active = active.ok_or(KeyError::NoActiveKey)?;
        let secret: [u8; 32] = self
            .cipher
            .decrypt(&active.kid, &active.private_key_enc)?
            .try_into()
            .map_err(|_| KeyError::Malformed {
                kid: active.kid.clone(),
            })?;
        let signing = SigningKey::from_bytes(&secret);
        if signing.verifying_key().as_bytes()
            != verifying
                .get(&active.kid)
                .map(|v| *v.as_bytes())
                .unwrap_or_default()
                .as_slice()
        {
            return Err(KeyError::Malformed {
                kid: active.kid.clone(),
            });
        }
        let set = Arc::new(KeySet {
            active_kid: active.kid.clone(),
            signing,
            verifying,
            jwks: serde_json::json!({ "keys": jwks }),
            active_since: active.state_changed_at,
            verified: VerifiedTokens::default(),
        });
        self.current.store(Arc::new(Some(set.clone())));
        Ok(set)
    }

    /// One rotation step now (the `keys rotate` command and the periodic task).
    pub async fn rotate(&self, actor: &Actor, at: i64) -> Result<Arc<KeySet>, KeyError> {
        let keys = self.store.list_keys().await?;
        let mut plan = RotationPlan::default();
        for key in &keys {
            match key.state {
                KeyState::Retiring => plan.retire.push(key.kid.clone()),
                KeyState::Active => plan.retiring.push(key.kid.clone()),
                KeyState::Next => plan.activate = Some(key.kid.clone()),
                KeyState::Retired => {}
            }
        }
        if plan.activate.is_none() {
            plan.new_keys
                .push(new_key_record(&self.cipher, KeyState::Active, at));
        }
        plan.new_keys
            .push(new_key_record(&self.cipher, KeyState::Next, at));
        self.store.apply_rotation(actor, &plan, at).await?;
        tracing::info!(action = "keys.rotate", "signing keys rotated");
        self.reload().await
    }

    /// What the periodic task does: rotate when the active key is older than `period`, retire
    /// retiring keys whose tokens have all expired, and pick up other replicas' changes.
    pub async fn tick(&self, period: Duration, at: i64) -> Result<(), KeyError> {
        let keys = self.store.list_keys().await?;
        let due = keys
            .iter()
            .any(|k| k.state == KeyState::Active && at - k.state_changed_at >= secs(period));
        if due {
            self.rotate(&Actor::system(), at).await?;
            return Ok(());
        }
        let expired: Vec<String> = keys
            .iter()
            .filter(|k| {
                k.state == KeyState::Retiring && at - k.state_changed_at >= secs(self.retire_after)
            })
            .map(|k| k.kid.clone())
            .collect();
        if !expired.is_empty() {
            self.store
                .apply_rotation(
                    &Actor::system(),
                    &RotationPlan {
                        retire: expired,
                        ..RotationPlan::default()
                    },
                    at,
                )
                .await?;
        }
        self.reload().await?;
        Ok(())
    }
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cipher_binds_kid_and_key() {
        let c = KeyCipher::from_secret("one");
        let sealed = c.encrypt("kid-a", b"private");
        assert_eq!(c.decrypt("kid-a", &sealed).unwrap(), b"private");
        assert!(
            c.decrypt("kid-b", &sealed).is_err(),
            "ciphertext moved to another kid must not decrypt"
        );
        assert!(
            KeyCipher::from_secret("two")
                .decrypt("kid-a", &sealed)
                .is_err()
        );
        assert!(!sealed.contains("private"));
    }

    fn key_set(signing: SigningKey) -> KeySet {
        let kid = "k1".to_string();
        KeySet {
            verifying: HashMap::from([(kid.clone(), signing.verifying_key())]),
            active_kid: kid,
            signing,
            jwks: Value::Null,
            active_since: 0,
            verified: VerifiedTokens::default(),
        }
    }

    #[test]
    fn a_verified_token_is_remembered_and_a_forged_one_is_not() {
        let keys = key_set(SigningKey::from_bytes(&[7; 32]));
        let token = keys.sign("at+jwt", &serde_json::json!({ "sub": "s", "exp": 9 }));
        let first = keys.verify(&token).unwrap();
        assert_eq!(first.0.as_deref(), Some("at+jwt"));
        assert_eq!(first.1["sub"], "s");
        assert_eq!(keys.verified.len(), 1);
        assert_eq!(keys.verify(&token).unwrap(), first, "the remembered answer");
        assert_eq!(keys.verified.len(), 1);

        // A different signature over the same header and claims (another key signed it).
        let other = key_set(SigningKey::from_bytes(&[8; 32]));
        let forged = other.sign("at+jwt", &serde_json::json!({ "sub": "s", "exp": 9 }));
        assert_ne!(forged, token);
        for _ in 0..2 {
            assert_eq!(keys.verify(&forged), Err(JwtError::Signature));
        }
        assert_eq!(keys.verified.len(), 1, "a failed verification is not kept");

        // The bound holds: far more tokens than the capacity leave at most the capacity.
        for n in 0..VERIFIED_CAPACITY * 2 {
            let t = keys.sign("at+jwt", &serde_json::json!({ "n": n }));
            assert!(keys.verify(&t).is_ok());
        }
        assert!(keys.verified.len() <= VERIFIED_CAPACITY);
    }
}
