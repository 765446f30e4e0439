//! Access-token validation (RFC 9068 JWTs signed with EdDSA or ES256) against the identity
//! service's key set, found through OpenID discovery.
//!
//! - The key set is cached and refreshed in the background.
//! - A token with an unknown `kid` triggers a refetch that is single-flight (one fetch for all
//!   waiting requests) and rate-limited (`min_refetch_interval`).
//! - When identity is down, the last good key set keeps being used.
//! - Verified tokens are cached by their full text until they expire, so that steady traffic pays
//!   for one signature check per token, not per request.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use cloud_kit::{Clock, PerEventLoop};
use serde::Deserialize;
use url::Url;

use crate::config::IdentityConfig;

/// Why a token was refused. Every variant but [`TokenError::KeysUnavailable`] is a 401.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("no bearer token in the Authorization header")]
    Missing,
    #[error("the token is malformed: {0}")]
    Malformed(&'static str),
    #[error("the token's algorithm `{0}` is not accepted (EdDSA or ES256)")]
    UnsupportedAlgorithm(String),
    #[error("the token was signed with an unknown key")]
    UnknownKey,
    #[error("the token's signature is invalid")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token was issued by another issuer")]
    WrongIssuer,
    #[error("the token is not meant for this audience")]
    WrongAudience,
    #[error("the identity provider's keys are not loaded yet")]
    KeysUnavailable,
}

/// The verified claims the gateway uses.
#[derive(Debug, Clone, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    #[serde(default)]
    pub aud: Audience,
    pub exp: i64,
    #[serde(default)]
    pub iat: Option<i64>,
    #[serde(default)]
    pub nbf: Option<i64>,
    #[serde(default)]
    pub jti: Option<String>,
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(default)]
    pub scope: Option<String>,
    /// The tenant.
    #[serde(default)]
    pub tid: Option<String>,
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(default)]
    pub permissions: Vec<String>,
    /// Worked out once per verified token (the token cache keeps it with the claims) instead of
    /// on every request that presents the token.
    #[serde(skip)]
    pub(crate) derived: Derived,
}

/// What every request with a token needs from its claims.
#[derive(Debug, Clone, Default)]
pub(crate) struct Derived {
    /// `x-tenant-id` for the upstream (`None` without a tenant or if not a valid header value).
    pub tenant_header: Option<http::HeaderValue>,
    /// `x-user-id` for the upstream.
    pub user_header: Option<http::HeaderValue>,
    /// Whose quota a request spends: `tenant:<tid>`, or `sub:<sub>` for a token without a tenant.
    pub rate_limit_key: String,
}

impl Claims {
    fn derive(&mut self) {
        self.derived = Derived {
            tenant_header: self
                .tid
                .as_deref()
                .and_then(|t| http::HeaderValue::from_str(t).ok()),
            user_header: http::HeaderValue::from_str(&self.sub).ok(),
            rate_limit_key: match &self.tid {
                Some(tid) => format!("tenant:{tid}"),
                None => format!("sub:{}", self.sub),
            },
        };
    }

    /// Whether the token grants `permission`, through `permissions` or a `scope` value.
    pub fn has_permission(&self, permission: &str) -> bool {
        self.permissions.iter().any(|p| p == permission)
            || self
                .scope
                .as_deref()
                .is_some_and(|s| s.split(' ').any(|p| p == permission))
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    #[default]
    None,
    One(String),
    Many(Vec<String>),
}

impl Audience {
    fn contains(&self, audience: &str) -> bool {
        match self {
            Audience::None => false,
            Audience::One(a) => a == audience,
            Audience::Many(all) => all.iter().any(|a| a == audience),
        }
    }
}

#[derive(Debug, Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    typ: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Alg {
    EdDsa,
    Es256,
}

#[derive(Debug)]
struct VerifyKey {
    alg: Alg,
    /// Ed25519: the 32-byte public key; P-256: the uncompressed point `04 || x || y`.
    public: Vec<u8>,
}

#[derive(Debug, Default)]
struct KeySet {
    keys: HashMap<String, Arc<VerifyKey>>,
    generation: u64,
    loaded: bool,
}

#[derive(Debug, Deserialize)]
struct Jwk {
    kty: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    crv: Option<String>,
    #[serde(default)]
    x: Option<String>,
    #[serde(default)]
    y: Option<String>,
    #[serde(default, rename = "use")]
    use_: Option<String>,
    #[serde(default)]
    alg: Option<String>,
}

#[derive(Debug, Deserialize)]
struct JwkSet {
    keys: Vec<Jwk>,
}

#[derive(Debug, Clone, Deserialize)]
struct Discovery {
    jwks_uri: Url,
    #[serde(default)]
    userinfo_endpoint: Option<Url>,
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{what} from {url}: {reason}")]
    Http {
        what: &'static str,
        url: String,
        reason: String,
    },
    #[error("the key set at {0} holds no usable EdDSA or ES256 signing key")]
    NoUsableKeys(String),
}

/// How many verified tokens each event loop remembers before its cache is emptied.
const TOKEN_CACHE_CAPACITY: usize = 16 * 1024;
const TOKEN_CACHE_SHARDS: usize = 16;

/// Verified tokens by their bytes, so that [`Validator::cached_bearer`] can look a header's token
/// up before checking its characters.
///
/// Hashed with foldhash rather than std's SipHash, which cost about 1,200 instructions per
/// request over a 300-byte token (`bench/gateway/instructions.sh`). SipHash's point is that
/// nobody can fill one bucket with keys of their choosing; here only tokens whose signature
/// verified are ever inserted, and those are the identity provider's, not the client's.
/// Lookups of other strings only probe.
type TokenCache = HashMap<Box<[u8]>, CachedToken, foldhash::fast::RandomState>;

#[derive(Debug)]
struct CachedToken {
    claims: Arc<Claims>,
    generation: u64,
}

/// The validator: key-set cache, fetcher and verified-token cache.
#[derive(Debug, Clone)]
pub struct Validator {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: IdentityConfig,
    issuer: String,
    http: reqwest::Client,
    clock: Arc<dyn Clock>,
    keys: ArcSwap<KeySet>,
    discovery: ArcSwap<Option<Discovery>>,
    /// Held while fetching; holds when the last fetch attempt started.
    fetch_lock: tokio::sync::Mutex<Option<Instant>>,
    fetches: AtomicU64,
    /// A cache per event loop: one shared by the loops was a contended lock and a contended
    /// reference count (the claims') on every request, 35 to 80 ns each here
    /// (`bench/gateway/cacheline.sh`). A token is verified once per loop that sees it.
    tokens: PerEventLoop<Box<[std::sync::Mutex<TokenCache>]>>,
    /// Failed refreshes: while identity is unreachable this climbs and the gateway validates
    /// with the last good key set.
    refresh_failures: prometheus_client::metrics::counter::Counter,
    /// When the key set was last fetched successfully (Unix seconds; 0 = never).
    last_refresh: prometheus_client::metrics::gauge::Gauge,
    /// Set by [`Validator::with_key_set`]: the key set was given, so nothing is ever fetched.
    fixed_keys: bool,
}

impl Validator {
    pub fn new(config: IdentityConfig, clock: Arc<dyn Clock>) -> Self {
        Self::with_keys(config, clock, KeySet::default(), false)
    }

    fn with_keys(
        config: IdentityConfig,
        clock: Arc<dyn Clock>,
        keys: KeySet,
        fixed_keys: bool,
    ) -> Self {
        let issuer = config.issuer_url.as_str().trim_end_matches('/').to_string();
        let http = reqwest::Client::builder()
            .timeout(config.fetch_timeout)
            .build()
            .unwrap_or_default();
        let tokens = PerEventLoop::new(|| {
            (0..TOKEN_CACHE_SHARDS)
                .map(|_| std::sync::Mutex::new(TokenCache::default()))
                .collect()
        });
        Self {
            inner: Arc::new(Inner {
                config,
                issuer,
                http,
                clock,
                keys: ArcSwap::from_pointee(keys),
                discovery: ArcSwap::from_pointee(None),
                fetch_lock: tokio::sync::Mutex::new(None),
                fetches: AtomicU64::new(0),
                tokens,
                refresh_failures: Default::default(),
                last_refresh: Default::default(),
                fixed_keys,
            }),
        }
    }

    /// A validator whose key set is `jwks` (a JWK set document, parsed exactly as a fetched one)
    /// and that never fetches: an unknown `kid` is refused at once. For tests and the token fuzz
    /// target (`fuzz/fuzz_targets/gateway_token.rs`), which must run [`Self::validate`] without
    /// an identity service.
    pub fn with_key_set(
        config: IdentityConfig,
        clock: Arc<dyn Clock>,
        jwks: &[u8],
    ) -> Result<Self, FetchError> {
        let set: JwkSet = serde_json::from_slice(jwks).map_err(|e| FetchError::Http {
            what: "key set",
            url: "(given)".into(),
            reason: format!("invalid JSON: {e}"),
        })?;
        let keys: HashMap<String, Arc<VerifyKey>> = set
            .keys
            .into_iter()
            .filter_map(parse_jwk)
            .map(|(kid, key)| (kid, Arc::new(key)))
            .collect();
        if keys.is_empty() {
            return Err(FetchError::NoUsableKeys("(given)".into()));
        }
        let keys = KeySet {
            keys,
            generation: 1,
            loaded: true,
        };
        Ok(Self::with_keys(config, clock, keys, true))
    }

    /// `gateway_jwks_refresh_failures_total` and `gateway_jwks_last_refresh_timestamp_seconds`:
    /// an alert on `time() - gateway_jwks_last_refresh_timestamp_seconds` says how long the
    /// gateway has been validating with a key set identity could not refresh.
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "gateway_jwks_refresh_failures",
            "Failed refreshes of the identity key set (the last good set stays in use)",
            self.inner.refresh_failures.clone(),
        );
        registry.register(
            "gateway_jwks_last_refresh_timestamp_seconds",
            "When the identity key set was last fetched successfully (Unix time; 0 = never)",
            self.inner.last_refresh.clone(),
        );
    }

    /// Whether a key set has been loaded at least once (the readiness check waits for it).
    pub fn is_loaded(&self) -> bool {
        self.inner.keys.load().loaded
    }

    /// How many key-set fetches were attempted (for tests and metrics).
    pub fn fetch_count(&self) -> u64 {
        self.inner.fetches.load(Ordering::Relaxed)
    }

    /// The issuer's userinfo endpoint, once discovery has succeeded.
    pub fn userinfo_endpoint(&self) -> Option<Url> {
        self.inner
            .discovery
            .load()
            .as_ref()
            .as_ref()
            .and_then(|d| d.userinfo_endpoint.clone())
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.inner.http
    }

    /// Keeps the key set fresh until `stop` resolves: retries quickly while it has never loaded,
    /// then refreshes every `refresh_interval`. A failed refresh keeps the last good set.
    pub async fn run_refresher(self, stop: impl Future<Output = ()>) {
        let refresh = async {
            let mut backoff = Duration::from_millis(200);
            loop {
                let wait = match self.fetch_now().await {
                    Ok(()) => {
                        backoff = Duration::from_millis(200);
                        self.inner.config.refresh_interval
                    }
                    Err(err) => {
                        if self.is_loaded() {
                            tracing::warn!(error = %err, "refreshing the identity key set failed; keeping the last good key set");
                        } else {
                            tracing::warn!(error = %err, retry_in = ?backoff, "the identity key set is not loaded yet");
                        }
                        let wait = backoff;
                        backoff = (backoff * 2).min(Duration::from_secs(10));
                        if self.is_loaded() {
                            self.inner.config.min_refetch_interval.max(wait)
                        } else {
                            wait
                        }
                    }
                };
                tokio::time::sleep(wait).await;
            }
        };
        tokio::select! {
            () = refresh => {}
            () = stop => {}
        }
    }

    /// Fetches discovery (unless `jwks_uri` is configured) and the key set, and installs it.
    async fn fetch_now(&self) -> Result<(), FetchError> {
        let mut last = self.inner.fetch_lock.lock().await;
        *last = Some(Instant::now());
        let result = self.fetch_locked().await;
        if result.is_ok() {
            let now = self.inner.clock.now().unix_timestamp();
            self.inner.last_refresh.set(now);
        } else {
            self.inner.refresh_failures.inc();
        }
        result
    }

    async fn fetch_locked(&self) -> Result<(), FetchError> {
        self.inner.fetches.fetch_add(1, Ordering::Relaxed);
        let jwks_uri = match &self.inner.config.jwks_uri {
            Some(uri) => {
                if self.inner.discovery.load().is_none() {
                    // Userinfo still comes from discovery; failing that is not fatal here.
                    if let Ok(d) = self.discover().await {
                        self.inner.discovery.store(Arc::new(Some(d)));
                    }
                }
                uri.clone()
            }
            None => {
                let discovery = self.discover().await?;
                let uri = discovery.jwks_uri.clone();
                self.inner.discovery.store(Arc::new(Some(discovery)));
                uri
            }
        };
        let set: JwkSet = get_json(&self.inner.http, "key set", &jwks_uri).await?;
        let mut keys = HashMap::new();
        for jwk in set.keys {
            if let Some((kid, key)) = parse_jwk(jwk) {
                keys.insert(kid, Arc::new(key));
            }
        }
        if keys.is_empty() {
            return Err(FetchError::NoUsableKeys(jwks_uri.to_string()));
        }
        let generation = self.inner.keys.load().generation + 1;
        tracing::debug!(keys = keys.len(), generation, "identity key set loaded");
        self.inner.keys.store(Arc::new(KeySet {
            keys,
            generation,
            loaded: true,
        }));
        Ok(())
    }

    async fn discover(&self) -> Result<Discovery, FetchError> {
        let url = self
            .inner
            .config
            .issuer_url
            .join(".well-known/openid-configuration")
            .map_err(|e| FetchError::Http {
                what: "discovery",
                url: self.inner.config.issuer_url.to_string(),
                reason: e.to_string(),
            })?;
        let url = if self.inner.config.issuer_url.path().ends_with('/') {
            url
        } else {
            // `join` would drop the issuer's last path segment.
            Url::parse(&format!(
                "{}/.well-known/openid-configuration",
                self.inner.issuer
            ))
            .unwrap_or(url)
        };
        get_json(&self.inner.http, "discovery", &url).await
    }

    /// The key for `kid`, refetching the key set once (single-flight, rate-limited) if unknown.
    async fn key(&self, kid: &str) -> Result<(Arc<VerifyKey>, u64), TokenError> {
        {
            let set = self.inner.keys.load();
            if let Some(key) = set.keys.get(kid) {
                return Ok((key.clone(), set.generation));
            }
        }
        if self.inner.fixed_keys {
            return Err(TokenError::UnknownKey);
        }
        let mut last = self.inner.fetch_lock.lock().await;
        // Another request may have refreshed the set while this one waited for the lock.
        {
            let set = self.inner.keys.load();
            if let Some(key) = set.keys.get(kid) {
                return Ok((key.clone(), set.generation));
            }
        }
        let recently = last.is_some_and(|at| at.elapsed() < self.inner.config.min_refetch_interval);
        if !recently {
            *last = Some(Instant::now());
            if let Err(err) = self.fetch_locked().await {
                tracing::warn!(error = %err, "refetching the identity key set for an unknown kid failed");
            }
        }
        drop(last);
        let set = self.inner.keys.load();
        match set.keys.get(kid) {
            Some(key) => Ok((key.clone(), set.generation)),
            None if !set.loaded => Err(TokenError::KeysUnavailable),
            None => Err(TokenError::UnknownKey),
        }
    }

    /// The answer for the bearer token of an `Authorization` header value if that token was
    /// verified before: its claims, or why they no longer hold (expired). `None` otherwise, for
    /// the full way: [`bearer`], then [`Self::validate`].
    ///
    /// The token is looked up by its bytes, before any check of its characters: being byte for
    /// byte a token whose signature verified, it needs none. That check, over a 300-byte
    /// header, was most of what the lookup cost (`bench/gateway/instructions.sh`).
    pub fn cached_bearer(
        &self,
        value: Option<&http::HeaderValue>,
    ) -> Option<Result<Arc<Claims>, TokenError>> {
        let claims = self.cached(bearer_bytes(value)?)?;
        Some(self.check_times(&claims).map(|()| claims))
    }

    /// The claims of `token` if it was verified under the current key set.
    fn cached(&self, token: &[u8]) -> Option<Arc<Claims>> {
        let generation = self.inner.keys.load().generation;
        let map = self.inner.tokens.get()[shard_of(token)].lock().ok()?;
        map.get(token)
            .filter(|c| c.generation == generation)
            .map(|c| c.claims.clone())
    }

    /// Validates a compact JWS access token and returns its claims.
    pub async fn validate(&self, token: &str) -> Result<Arc<Claims>, TokenError> {
        let shard = &self.inner.tokens.get()[shard_of(token.as_bytes())];
        if let Some(claims) = self.cached(token.as_bytes()) {
            self.check_times(&claims)?;
            return Ok(claims);
        }
        let (claims, generation) = self.verify(token).await?;
        let claims = Arc::new(claims);
        if let Ok(mut map) = shard.lock() {
            if map.len() >= TOKEN_CACHE_CAPACITY / TOKEN_CACHE_SHARDS {
                map.clear();
            }
            map.insert(
                token.as_bytes().into(),
                CachedToken {
                    claims: claims.clone(),
                    generation,
                },
            );
        }
        Ok(claims)
    }

    async fn verify(&self, token: &str) -> Result<(Claims, u64), TokenError> {
        let mut parts = token.split('.');
        let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed("a JWS has three dot-separated parts"));
        };
        let header: Header = decode_json(header_b64)
            .ok_or(TokenError::Malformed("the header is not base64url JSON"))?;
        let alg = match header.alg.as_str() {
            "EdDSA" => Alg::EdDsa,
            "ES256" => Alg::Es256,
            other => {
                return Err(TokenError::UnsupportedAlgorithm(
                    other.chars().take(16).collect(),
                ));
            }
        };
        if let Some(typ) = &header.typ
            && !["at+jwt", "application/at+jwt", "JWT"]
                .iter()
                .any(|t| t.eq_ignore_ascii_case(typ))
        {
            return Err(TokenError::Malformed("the header's typ is not at+jwt"));
        }
        let kid = header
            .kid
            .ok_or(TokenError::Malformed("the header has no kid"))?;
        let signature = URL_SAFE_NO_PAD
            .decode(signature_b64)
            .map_err(|_| TokenError::Malformed("the signature is not base64url"))?;
        let (key, generation) = self.key(&kid).await?;
        if key.alg != alg {
            return Err(TokenError::BadSignature);
        }
        let signed = token
            .get(..header_b64.len() + 1 + payload_b64.len())
            .ok_or(TokenError::Malformed("truncated"))?;
        let algorithm: &'static dyn ring::signature::VerificationAlgorithm = match alg {
            Alg::EdDsa => &ring::signature::ED25519,
            Alg::Es256 => &ring::signature::ECDSA_P256_SHA256_FIXED,
        };
        ring::signature::UnparsedPublicKey::new(algorithm, &key.public)
            .verify(signed.as_bytes(), &signature)
            .map_err(|_| TokenError::BadSignature)?;
        let mut claims: Claims = decode_json(payload_b64).ok_or(TokenError::Malformed(
            "the claims are not base64url JSON with iss, sub and exp",
        ))?;
        if claims.iss.trim_end_matches('/') != self.inner.issuer {
            return Err(TokenError::WrongIssuer);
        }
        if !claims.aud.contains(&self.inner.config.audience) {
            return Err(TokenError::WrongAudience);
        }
        self.check_times(&claims)?;
        claims.derive();
        Ok((claims, generation))
    }

    fn check_times(&self, claims: &Claims) -> Result<(), TokenError> {
        let now = self.inner.clock.now().unix_timestamp();
        let skew = i64::try_from(self.inner.config.clock_skew.as_secs()).unwrap_or(0);
        if now > claims.exp.saturating_add(skew) {
            return Err(TokenError::Expired);
        }
        let not_before = claims.nbf.or(claims.iat).unwrap_or(i64::MIN);
        if not_before > now.saturating_add(skew) {
            return Err(TokenError::NotYetValid);
        }
        Ok(())
    }
}

fn shard_of(token: &[u8]) -> usize {
    // The signature's last bytes are as good as random.
    token.iter().rev().take(4).fold(0usize, |acc, &b| {
        acc.wrapping_mul(31).wrapping_add(usize::from(b))
    }) % TOKEN_CACHE_SHARDS
}

fn decode_json<T: serde::de::DeserializeOwned>(b64: &str) -> Option<T> {
    let bytes = URL_SAFE_NO_PAD.decode(b64).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn parse_jwk(jwk: Jwk) -> Option<(String, VerifyKey)> {
    if jwk.use_.as_deref().is_some_and(|u| u != "sig") {
        return None;
    }
    let kid = jwk.kid?;
    let x = URL_SAFE_NO_PAD.decode(jwk.x?).ok()?;
    let key = match (jwk.kty.as_str(), jwk.crv.as_deref()) {
        ("OKP", Some("Ed25519")) if x.len() == 32 => VerifyKey {
            alg: Alg::EdDsa,
            public: x,
        },
        ("EC", Some("P-256")) if x.len() == 32 => {
            let y = URL_SAFE_NO_PAD.decode(jwk.y?).ok()?;
            if y.len() != 32 {
                return None;
            }
            let mut public = Vec::with_capacity(65);
            public.push(4);
            public.extend_from_slice(&x);
            public.extend_from_slice(&y);
            VerifyKey {
                alg: Alg::Es256,
                public,
            }
        }
        _ => return None,
    };
    let expected = match key.alg {
        Alg::EdDsa => "EdDSA",
        Alg::Es256 => "ES256",
    };
    if jwk.alg.as_deref().is_some_and(|a| a != expected) {
        return None;
    }
    Some((kid, key))
}

async fn get_json<T: serde::de::DeserializeOwned>(
    http: &reqwest::Client,
    what: &'static str,
    url: &Url,
) -> Result<T, FetchError> {
    let err = |reason: String| FetchError::Http {
        what,
        url: url.to_string(),
        reason,
    };
    let response = http
        .get(url.clone())
        .send()
        .await
        .map_err(|e| err(e.to_string()))?;
    if !response.status().is_success() {
        return Err(err(format!("status {}", response.status())));
    }
    response
        .json::<T>()
        .await
        .map_err(|e| err(format!("invalid JSON: {e}")))
}

/// The token of a `Bearer` header value, trimmed of the spaces and tabs around it (possibly
/// empty); `None` when the value is not `Bearer <...>`. Its characters are not checked.
fn split_bearer(value: &[u8]) -> Option<&[u8]> {
    let space = value.iter().position(|b| *b == b' ')?;
    let (scheme, token) = (&value[..space], &value[space + 1..]);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let blank = |b: &u8| *b == b' ' || *b == b'\t';
    let start = token.iter().position(|b| !blank(b)).unwrap_or(token.len());
    let end = token
        .iter()
        .rposition(|b| !blank(b))
        .map_or(start, |end| end + 1);
    Some(&token[start..end])
}

/// The token of a `Bearer` header value as bytes, as [`bearer`] finds it but without checking
/// its characters (`None` where `bearer` fails on the form): for the lookup of verified tokens
/// only.
fn bearer_bytes(value: Option<&http::HeaderValue>) -> Option<&[u8]> {
    split_bearer(value?.as_bytes()).filter(|token| !token.is_empty())
}

/// Extracts the bearer token from an `Authorization` header value.
pub fn bearer(value: Option<&http::HeaderValue>) -> Result<&str, TokenError> {
    const NOT_ASCII: TokenError = TokenError::Malformed("the Authorization header is not ASCII");
    let value = value.ok_or(TokenError::Missing)?;
    // Visible ASCII, spaces and tabs only: the only blanks are the ones `split_bearer` trims.
    value.to_str().map_err(|_| NOT_ASCII)?;
    let token = split_bearer(value.as_bytes()).ok_or(TokenError::Missing)?;
    if token.is_empty() || token.len() > 16 * 1024 {
        return Err(TokenError::Malformed("empty or oversized token"));
    }
    std::str::from_utf8(token).map_err(|_| NOT_ASCII)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use ring::signature::{Ed25519KeyPair, KeyPair};

    use super::*;

    const NOW: i64 = 1_800_000_000;

    fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    fn fixed() -> (Validator, Ed25519KeyPair) {
        let (validator, key, _) = fixed_with_clock();
        (validator, key)
    }

    fn fixed_with_clock() -> (Validator, Ed25519KeyPair, Arc<cloud_kit::ManualClock>) {
        let key = Ed25519KeyPair::from_seed_unchecked(&[7; 32]).unwrap();
        let jwks = serde_json::json!({"keys": [{
            "kty": "OKP", "crv": "Ed25519", "kid": "k1", "use": "sig", "alg": "EdDSA",
            "x": b64(key.public_key().as_ref()),
        }]});
        let clock = Arc::new(cloud_kit::ManualClock::new(
            time::OffsetDateTime::from_unix_timestamp(NOW).unwrap(),
        ));
        let validator = Validator::with_key_set(
            IdentityConfig::default(),
            clock.clone(),
            jwks.to_string().as_bytes(),
        )
        .unwrap();
        (validator, key, clock)
    }

    fn sign(key: &Ed25519KeyPair, header: &str, claims: &str) -> String {
        let signed = format!("{}.{}", b64(header.as_bytes()), b64(claims.as_bytes()));
        let signature = key.sign(signed.as_bytes());
        format!("{signed}.{}", b64(signature.as_ref()))
    }

    #[tokio::test]
    async fn a_given_key_set_validates_tokens_and_never_fetches() {
        let (validator, key) = fixed();
        assert!(validator.is_loaded());
        let claims = format!(
            r#"{{"iss":"http://127.0.0.1:8081","sub":"svc","aud":"cloud-platform","exp":{}}}"#,
            NOW + 300
        );
        let good = sign(
            &key,
            r#"{"alg":"EdDSA","kid":"k1","typ":"at+jwt"}"#,
            &claims,
        );
        assert_eq!(validator.validate(&good).await.unwrap().sub, "svc");
        let unknown = sign(&key, r#"{"alg":"EdDSA","kid":"k2"}"#, &claims);
        assert_eq!(
            validator.validate(&unknown).await.unwrap_err(),
            TokenError::UnknownKey
        );
        assert_eq!(validator.fetch_count(), 0);
    }

    #[tokio::test]
    async fn a_verified_token_is_found_by_its_header_bytes_and_still_expires() {
        let (validator, key, clock) = fixed_with_clock();
        let claims = format!(
            r#"{{"iss":"http://127.0.0.1:8081","sub":"svc","aud":"cloud-platform","exp":{}}}"#,
            NOW + 300
        );
        let token = sign(&key, r#"{"alg":"EdDSA","kid":"k1"}"#, &claims);
        let header = |text: String| http::HeaderValue::from_str(&text).unwrap();
        let bearer_header = header(format!("Bearer {token}"));
        // Not verified yet: the full way.
        assert!(validator.cached_bearer(Some(&bearer_header)).is_none());
        validator.validate(&token).await.unwrap();
        for found in [
            format!("Bearer {token}"),
            format!("bearer \t {token} \t"),
            format!("BEARER {token}"),
        ] {
            let claims = validator.cached_bearer(Some(&header(found.clone())));
            assert_eq!(claims.unwrap().unwrap().sub, "svc", "{found:?}");
        }
        // Not found either: another scheme, a tab after the scheme, a non-ASCII blank before
        // the token (which `bearer` refuses), another token, no token.
        let mut tampered = token.clone();
        tampered.pop();
        for not_found in [
            format!("Basic {token}"),
            format!("Bearer\t{token}"),
            format!("Bearer \u{a0}{token}"),
            format!("Bearer {tampered}"),
            "Bearer ".to_string(),
        ] {
            let value = http::HeaderValue::from_bytes(not_found.as_bytes()).unwrap();
            assert!(
                validator.cached_bearer(Some(&value)).is_none(),
                "{not_found:?}"
            );
        }
        assert!(validator.cached_bearer(None).is_none());
        // A cached token still expires.
        clock.advance(Duration::from_secs(3600));
        assert_eq!(
            validator
                .cached_bearer(Some(&bearer_header))
                .unwrap()
                .unwrap_err(),
            TokenError::Expired
        );
    }

    #[test]
    fn bearer_finds_the_token_or_says_what_is_wrong() {
        let parse = |text: &[u8]| {
            let value = http::HeaderValue::from_bytes(text).unwrap();
            bearer(Some(&value)).map(str::to_string)
        };
        assert_eq!(bearer(None), Err(TokenError::Missing));
        assert_eq!(parse(b"Bearer abc"), Ok("abc".into()));
        assert_eq!(parse(b"bEaReR \t abc \t"), Ok("abc".into()));
        for missing in [&b"Basic abc"[..], b"Bearer", b"Bearer\tabc"] {
            assert_eq!(parse(missing), Err(TokenError::Missing), "{missing:?}");
        }
        let oversized = format!("Bearer {}", "a".repeat(16 * 1024 + 1));
        for malformed in [
            &b"Bearer  \t "[..],
            b"Bearer \xc3\xa9",
            oversized.as_bytes(),
        ] {
            assert!(
                matches!(parse(malformed), Err(TokenError::Malformed(_))),
                "{malformed:?}"
            );
        }
    }

    #[test]
    fn a_key_set_without_usable_keys_is_refused() {
        let clock = Arc::new(cloud_kit::SystemClock);
        let err = Validator::with_key_set(
            IdentityConfig::default(),
            clock,
            br#"{"keys":[{"kty":"RSA","kid":"r","n":"AQAB","e":"AQAB"}]}"#,
        )
        .unwrap_err();
        assert!(matches!(err, FetchError::NoUsableKeys(_)), "{err}");
    }
}
