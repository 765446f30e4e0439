//! Real servers on port 0 for the gateway's tests: a stand-in identity provider (discovery, JWKS,
//! userinfo) with real Ed25519/P-256 keys, real upstreams, and the gateway itself.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{any, get, post};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use cloud_api_gateway_bff::Config;
use cloud_kit::Shutdown;
use futures::StreamExt;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair};
use serde_json::{Value, json};

pub const AUDIENCE: &str = "cloud-platform";

pub fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A signing key the test identity publishes (or not).
pub enum Signer {
    Ed(Ed25519KeyPair),
    Es(EcdsaKeyPair),
}

pub struct Key {
    pub kid: String,
    pub signer: Signer,
}

impl Key {
    pub fn ed25519(kid: &str) -> Self {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        Self {
            kid: kid.into(),
            signer: Signer::Ed(Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap()),
        }
    }

    pub fn es256(kid: &str) -> Self {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        Self {
            kid: kid.into(),
            signer: Signer::Es(
                EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
                    .unwrap(),
            ),
        }
    }

    pub fn alg(&self) -> &'static str {
        match self.signer {
            Signer::Ed(_) => "EdDSA",
            Signer::Es(_) => "ES256",
        }
    }

    pub fn jwk(&self) -> Value {
        match &self.signer {
            Signer::Ed(k) => {
                json!({"kty": "OKP", "crv": "Ed25519", "x": b64(k.public_key().as_ref()), "kid": self.kid, "use": "sig", "alg": "EdDSA"})
            }
            Signer::Es(k) => {
                let p = k.public_key().as_ref();
                json!({"kty": "EC", "crv": "P-256", "x": b64(&p[1..33]), "y": b64(&p[33..65]), "kid": self.kid, "use": "sig", "alg": "ES256"})
            }
        }
    }

    pub fn sign_raw(&self, header: &Value, claims: &Value) -> String {
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let sig = match &self.signer {
            Signer::Ed(k) => k.sign(input.as_bytes()).as_ref().to_vec(),
            Signer::Es(k) => k
                .sign(&SystemRandom::new(), input.as_bytes())
                .unwrap()
                .as_ref()
                .to_vec(),
        };
        format!("{input}.{}", b64(&sig))
    }

    pub fn sign(&self, claims: &Value) -> String {
        self.sign_raw(
            &json!({"alg": self.alg(), "kid": self.kid, "typ": "at+jwt"}),
            claims,
        )
    }
}

/// RFC 9068 claims for `tenant`/`user`, valid for 5 minutes.
pub fn claims(issuer: &str, tenant: &str, user: &str, permissions: &[&str]) -> Value {
    json!({
        "iss": issuer, "sub": user, "aud": AUDIENCE, "exp": now() + 300, "iat": now() - 1,
        "jti": uuid::Uuid::new_v4().to_string(), "client_id": "test-client", "scope": "openid",
        "tid": tenant, "roles": ["member"], "permissions": permissions,
    })
}

/// A stand-in for the identity service: discovery, JWKS and userinfo, on port 0.
#[derive(Clone)]
pub struct Identity {
    pub addr: SocketAddr,
    pub issuer: String,
    pub jwks: Arc<Mutex<Value>>,
    pub jwks_hits: Arc<AtomicU64>,
    pub shutdown: Shutdown,
}

impl Identity {
    pub async fn start(keys: &[&Key]) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener, keys).await
    }

    pub async fn serve(listener: tokio::net::TcpListener, keys: &[&Key]) -> Self {
        let addr = listener.local_addr().unwrap();
        let issuer = format!("http://{addr}");
        let jwks = Arc::new(Mutex::new(
            json!({"keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>()}),
        ));
        let jwks_hits = Arc::new(AtomicU64::new(0));
        let shutdown = Shutdown::new();
        let discovery = json!({
            "issuer": issuer, "jwks_uri": format!("{issuer}/jwks"), "userinfo_endpoint": format!("{issuer}/userinfo"),
        });
        let router = Router::new()
            .route(
                "/.well-known/openid-configuration",
                get(move || async move { axum::Json(discovery) }),
            )
            .route(
                "/jwks",
                get({
                    let jwks = jwks.clone();
                    let hits = jwks_hits.clone();
                    move || async move {
                        hits.fetch_add(1, Ordering::SeqCst);
                        let v = jwks.lock().unwrap().clone();
                        axum::Json(v)
                    }
                }),
            )
            .route(
                "/userinfo",
                get(|headers: axum::http::HeaderMap| async move {
                    match headers.get("authorization") {
                        Some(_) => {
                            axum::Json(json!({"sub": "from-userinfo", "email": "user@example.com"}))
                                .into_response()
                        }
                        None => StatusCode::UNAUTHORIZED.into_response(),
                    }
                }),
            );
        let stop = shutdown.clone();
        tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async move { stop.triggered().await })
                .await
        });
        Self {
            addr,
            issuer,
            jwks,
            jwks_hits,
            shutdown,
        }
    }

    pub fn publish(&self, keys: &[&Key]) {
        *self.jwks.lock().unwrap() =
            json!({"keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>()});
    }
}

/// Counters shared with the test upstream.
#[derive(Clone, Default)]
pub struct UpstreamState {
    pub hits: Arc<AtomicUsize>,
    /// While > 0, answers `/flaky` with 503 and decrements.
    pub fail_next: Arc<AtomicUsize>,
    /// While true, `/unstable` answers 500.
    pub broken: Arc<std::sync::atomic::AtomicBool>,
}

/// The header a [`named_upstream`] sets on every response, so a test can count who answered.
pub const UPSTREAM_NAME_HEADER: &str = "x-upstream";

/// A real upstream: `/echo` returns what it received, `/count` counts a streamed body,
/// `/status/{code}`, `/slow/{ms}`, `/flaky`, `/unstable`, `/ws` (WebSocket echo).
pub async fn upstream() -> (SocketAddr, UpstreamState) {
    upstream_with(None).await
}

/// [`upstream`], answering every response with `x-upstream: <name>`.
pub async fn named_upstream(name: &'static str) -> (SocketAddr, UpstreamState) {
    upstream_with(Some(name)).await
}

async fn upstream_with(name: Option<&'static str>) -> (SocketAddr, UpstreamState) {
    let state = UpstreamState::default();
    let router = Router::new()
        .route("/ws", get(ws))
        .route("/count", post(count))
        .route(
            "/status/{code}",
            any(|Path(code): Path<u16>| async move { StatusCode::from_u16(code).unwrap() }),
        )
        .route(
            "/slow/{ms}",
            any(|Path(ms): Path<u64>| async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                "slow"
            }),
        )
        .route(
            "/flaky",
            any(|State(s): State<UpstreamState>| async move {
                s.hits.fetch_add(1, Ordering::SeqCst);
                if s.fail_next.load(Ordering::SeqCst) > 0 {
                    s.fail_next.fetch_sub(1, Ordering::SeqCst);
                    return StatusCode::SERVICE_UNAVAILABLE.into_response();
                }
                "ok".into_response()
            }),
        )
        .route(
            "/unstable",
            any(|State(s): State<UpstreamState>| async move {
                s.hits.fetch_add(1, Ordering::SeqCst);
                if s.broken.load(Ordering::SeqCst) {
                    StatusCode::INTERNAL_SERVER_ERROR.into_response()
                } else {
                    "ok".into_response()
                }
            }),
        )
        .fallback(echo)
        .with_state(state.clone())
        .layer(axum::middleware::map_response(
            move |mut response: axum::response::Response| async move {
                if let Some(name) = name {
                    response.headers_mut().insert(
                        UPSTREAM_NAME_HEADER,
                        axum::http::HeaderValue::from_static(name),
                    );
                }
                response
            },
        ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    (addr, state)
}

async fn echo(State(s): State<UpstreamState>, request: Request) -> axum::Json<Value> {
    s.hits.fetch_add(1, Ordering::SeqCst);
    let headers: serde_json::Map<String, Value> = request
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                Value::String(v.to_str().unwrap_or("").to_string()),
            )
        })
        .collect();
    axum::Json(
        json!({"method": request.method().as_str(), "uri": request.uri().to_string(), "headers": headers}),
    )
}

async fn count(request: Request) -> String {
    let mut stream = request.into_body().into_data_stream();
    let mut total: u64 = 0;
    while let Some(chunk) = stream.next().await {
        total += chunk.unwrap().len() as u64;
    }
    total.to_string()
}

async fn ws(ws: axum::extract::ws::WebSocketUpgrade) -> axum::response::Response {
    ws.on_upgrade(|mut socket| async move {
        while let Some(Ok(msg)) = socket.recv().await {
            if let axum::extract::ws::Message::Text(t) = msg {
                let _ = socket
                    .send(axum::extract::ws::Message::Text(
                        format!("echo: {t}").into(),
                    ))
                    .await;
            }
        }
    })
}

/// A config on port 0 with `identity` as issuer and `yaml` merged in (routes etc.).
pub fn config(identity: &Identity, yaml: &str) -> Config {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.yaml");
    let text = format!(
        "server: {{port: 0, admin_port: 0, drain_period: 0s, shutdown_timeout: 5s}}\nidentity: {{issuer_url: \"{}\", min_refetch_interval: 200ms}}\n{yaml}",
        identity.issuer
    );
    std::fs::write(&path, text).unwrap();
    Config::load(Some(&path)).unwrap()
}

pub struct Gateway {
    pub url: String,
    pub admin: String,
    pub shutdown: Shutdown,
}

pub async fn start(config: Config) -> Gateway {
    let app = cloud_api_gateway_bff::build(config)
        .await
        .unwrap()
        .without_signals();
    let gw = Gateway {
        url: format!("http://127.0.0.1:{}", app.port()),
        admin: format!("http://127.0.0.1:{}", app.admin_port()),
        shutdown: app.shutdown_handle(),
    };
    tokio::spawn(app.run_until_stopped());
    gw
}

impl Gateway {
    /// Waits until `/readyz` answers 200 (the key set is loaded).
    pub async fn ready(&self) {
        cloud_test_support::wait_until_ok(
            &format!("{}/readyz", self.admin),
            Duration::from_secs(10),
        )
        .await;
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.admin))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .unwrap()
}

pub fn body_of(bytes: u64, chunk: usize) -> reqwest::Body {
    let chunk_bytes = bytes::Bytes::from(vec![7u8; chunk]);
    let full = bytes / chunk as u64;
    let rest = (bytes % chunk as u64) as usize;
    let stream =
        futures::stream::iter((0..full).map(move |_| Ok::<_, std::io::Error>(chunk_bytes.clone())))
            .chain(futures::stream::iter(
                (rest > 0).then(|| Ok(bytes::Bytes::from(vec![7u8; rest]))),
            ));
    reqwest::Body::wrap_stream(stream)
}
