//! Per-tenant rate limiting with GCRA (the generic cell rate algorithm), keyed by tenant plus
//! policy name.
//!
//! With `redis.url` the decision is one atomic Lua script on Redis, so that every replica shares
//! one quota. The script uses only core commands (`TIME`, `GET`, `SET PX`), needs no module, and
//! its one key carries the tenant as a hash tag (`gateway:rl:{tenant}:policy`), so it also works on
//! managed and cluster Redis. When Redis fails or is slow, the decision falls back to the
//! in-process limiter (fail open), with a log line and a metric, and Redis is retried after
//! `redis.retry_after`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cloud_kit::LoopHeaderValue;
use http::HeaderValue;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use secrecy::ExposeSecret;

use crate::config::{RateLimitPolicyConfig, RedisConfig};

/// A compiled policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub name: String,
    /// Requests per period, announced as `RateLimit-Limit`.
    pub limit: u64,
    /// Microseconds between two requests at the sustained rate.
    pub interval_us: u64,
    /// Requests that may arrive at once.
    pub burst: u64,
    /// `limit` as the `RateLimit-Limit` header value (a copy per event loop: every request
    /// clones it).
    pub limit_header: LoopHeaderValue,
}

impl Policy {
    pub fn compile(name: &str, config: &RateLimitPolicyConfig) -> Result<Self, String> {
        if config.requests == 0 {
            return Err("requests: must be at least 1".into());
        }
        let period_us = u64::try_from(config.period.as_micros()).unwrap_or(u64::MAX);
        if period_us < config.requests {
            return Err("period: must be at least one microsecond per request".into());
        }
        let burst = config.burst.unwrap_or(config.requests);
        if burst == 0 {
            return Err("burst: must be at least 1".into());
        }
        Ok(Self {
            name: name.to_string(),
            limit: config.requests,
            limit_header: LoopHeaderValue::new(&HeaderValue::from(config.requests)),
            interval_us: period_us / config.requests,
            burst,
        })
    }
}

/// The outcome of one decision, with what the `RateLimit-*` headers announce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub remaining: u64,
    /// Until the quota is whole again.
    pub reset: Duration,
    /// When denied: until the next request would be admitted.
    pub retry_after: Duration,
}

/// GCRA on a theoretical arrival time `tat` (all in microseconds).
fn gcra(tat: u64, now: u64, policy: &Policy) -> (Decision, Option<u64>) {
    let tat = tat.max(now);
    let tolerance = policy.interval_us.saturating_mul(policy.burst);
    let new_tat = tat.saturating_add(policy.interval_us);
    let allow_at = new_tat.saturating_sub(tolerance);
    if now < allow_at {
        let remaining = 0;
        return (
            Decision {
                allowed: false,
                remaining,
                reset: Duration::from_micros(tat - now),
                retry_after: Duration::from_micros(allow_at - now),
            },
            None,
        );
    }
    let remaining = (tolerance.saturating_sub(new_tat - now)) / policy.interval_us.max(1);
    (
        Decision {
            allowed: true,
            remaining,
            reset: Duration::from_micros(new_tat - now),
            retry_after: Duration::ZERO,
        },
        Some(new_tat),
    )
}

const LOCAL_SHARDS: usize = 16;
const LOCAL_MAX_KEYS_PER_SHARD: usize = 64 * 1024;

/// The in-process limiter.
#[derive(Debug)]
pub struct LocalLimiter {
    start: Instant,
    /// Sharded by tenant. Looked up with the request's own strings: no key is built per request.
    shards: Vec<Mutex<TatsByPolicy>>,
}

/// Per policy name, each tenant's theoretical arrival time.
type TatsByPolicy = Vec<(String, HashMap<String, u64>)>;

impl Default for LocalLimiter {
    fn default() -> Self {
        Self {
            start: Instant::now(),
            shards: (0..LOCAL_SHARDS).map(|_| Mutex::default()).collect(),
        }
    }
}

impl LocalLimiter {
    /// One request of `tenant` under `policy`: its quota is the pair's, shared by every route
    /// with that policy.
    pub fn check(&self, tenant: &str, policy: &Policy) -> Decision {
        let now = u64::try_from(self.start.elapsed().as_micros()).unwrap_or(u64::MAX);
        let shard = &self.shards[tenant.bytes().fold(0usize, |a, b| {
            a.wrapping_mul(31).wrapping_add(usize::from(b))
        }) % LOCAL_SHARDS];
        let mut policies = shard.lock().unwrap_or_else(|p| p.into_inner());
        // A handful of policies: a list is as quick as a map and borrows more simply.
        let index = match policies.iter().position(|(name, _)| *name == policy.name) {
            Some(index) => index,
            None => {
                policies.push((policy.name.clone(), HashMap::new()));
                policies.len() - 1
            }
        };
        let tats = &mut policies[index].1;
        if tats.len() >= LOCAL_MAX_KEYS_PER_SHARD {
            // Entries whose tat has passed hold no state worth keeping.
            tats.retain(|_, tat| *tat > now);
        }
        // Updated in place: the tenant is copied only when not seen yet.
        let entry = tats.get_mut(tenant);
        let (decision, new_tat) = gcra(entry.as_deref().copied().unwrap_or(now), now, policy);
        if let Some(new_tat) = new_tat {
            match entry {
                Some(tat) => *tat = new_tat,
                None => {
                    tats.insert(tenant.to_string(), new_tat);
                }
            }
        }
        decision
    }
}

/// The GCRA script. Redis' own clock (`TIME`) is used so that replicas with drifting clocks
/// still share one timeline. Returns `{allowed, remaining, retry_after_us, reset_us}`.
const GCRA_LUA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local tolerance = interval * burst
local new_tat = tat + interval
local allow_at = new_tat - tolerance
if now < allow_at then
  return {0, 0, allow_at - now, tat - now}
end
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1000)
return {1, math.floor((tolerance - (new_tat - now)) / interval), 0, new_tat - now}
";

#[derive(Debug, Clone, Default)]
pub struct LimiterMetrics {
    /// Decisions that Redis could not make and the in-process limiter made instead.
    pub redis_failures: Counter,
    /// 1 while decisions are made in-process because Redis failed.
    pub redis_fallback: Gauge,
    pub rejected: Counter,
}

impl LimiterMetrics {
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "gateway_ratelimit_redis_failures",
            "Rate-limit decisions made in-process because Redis failed or was too slow",
            self.redis_failures.clone(),
        );
        registry.register(
            "gateway_ratelimit_redis_fallback",
            "1 while the rate limiter fails open to in-process limits",
            self.redis_fallback.clone(),
        );
        registry.register(
            "gateway_ratelimit_rejected",
            "Requests rejected with 429",
            self.rejected.clone(),
        );
    }
}

#[derive(Debug)]
struct RedisLimiter {
    client: redis::Client,
    conn: tokio::sync::Mutex<Option<redis::aio::MultiplexedConnection>>,
    script: redis::Script,
    timeout: Duration,
    retry_after: Duration,
    key_prefix: String,
    start: Instant,
    /// Microseconds since `start` until which Redis is not tried.
    down_until: AtomicU64,
    failing: AtomicBool,
}

/// The limiter the gateway uses: Redis when configured and healthy, else in-process.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    local: Arc<LocalLimiter>,
    redis: Option<Arc<RedisLimiter>>,
    metrics: LimiterMetrics,
}

#[derive(Debug, thiserror::Error)]
#[error("redis.url: {0}")]
pub struct RedisUrlError(String);

impl RateLimiter {
    pub fn new(config: &RedisConfig, metrics: LimiterMetrics) -> Result<Self, RedisUrlError> {
        let redis = match &config.url {
            None => None,
            Some(url) => {
                // The message of a parse error may echo the URL (and its password): not shown.
                let client = redis::Client::open(url.expose_secret()).map_err(|_| {
                    RedisUrlError("not a valid redis:// URL (value hidden: it is a secret)".into())
                })?;
                Some(Arc::new(RedisLimiter {
                    client,
                    conn: tokio::sync::Mutex::new(None),
                    script: redis::Script::new(GCRA_LUA),
                    timeout: config.timeout,
                    retry_after: config.retry_after,
                    key_prefix: config.key_prefix.clone(),
                    start: Instant::now(),
                    down_until: AtomicU64::new(0),
                    failing: AtomicBool::new(false),
                }))
            }
        };
        Ok(Self {
            local: Arc::new(LocalLimiter::default()),
            redis,
            metrics,
        })
    }

    pub fn uses_redis(&self) -> bool {
        self.redis.is_some()
    }

    pub fn metrics(&self) -> &LimiterMetrics {
        &self.metrics
    }

    /// Decides for `tenant` under `policy`.
    pub async fn check(&self, tenant: &str, policy: &Policy) -> Decision {
        let decision = match &self.redis {
            Some(redis) => match redis.check(tenant, policy).await {
                Some(decision) => {
                    if redis.failing.swap(false, Ordering::Relaxed) {
                        tracing::info!(
                            "redis is reachable again; rate limits are shared across replicas again"
                        );
                        self.metrics.redis_fallback.set(0);
                    }
                    decision
                }
                None => {
                    self.metrics.redis_failures.inc();
                    if !redis.failing.swap(true, Ordering::Relaxed) {
                        tracing::warn!(
                            "redis is unreachable; rate limits fail open to in-process limits until it is back"
                        );
                        self.metrics.redis_fallback.set(1);
                    }
                    self.local.check(tenant, policy)
                }
            },
            None => self.local.check(tenant, policy),
        };
        if !decision.allowed {
            self.metrics.rejected.inc();
        }
        decision
    }

    /// For readiness: `Ok` when Redis is not configured or answers PING.
    pub async fn ping(&self) -> Result<(), String> {
        let Some(redis) = &self.redis else {
            return Ok(());
        };
        let conn = redis
            .connection()
            .await
            .ok_or_else(|| "redis is unreachable".to_string())?;
        let mut conn = conn;
        match tokio::time::timeout(
            redis.timeout.max(Duration::from_millis(500)),
            redis::cmd("PING").query_async::<String>(&mut conn),
        )
        .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("redis PING failed: {}", e.kind_str())),
            Err(_) => Err("redis PING timed out".into()),
        }
    }
}

trait KindStr {
    fn kind_str(&self) -> String;
}

impl KindStr for redis::RedisError {
    fn kind_str(&self) -> String {
        // The category only: a RedisError may carry connection details.
        format!("{:?}", self.kind())
    }
}

impl RedisLimiter {
    fn now_us(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    async fn connection(&self) -> Option<redis::aio::MultiplexedConnection> {
        let mut guard = self.conn.lock().await;
        if let Some(conn) = guard.as_ref() {
            return Some(conn.clone());
        }
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(self.timeout.max(Duration::from_millis(200)))
            .set_response_timeout(self.timeout);
        match self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
        {
            Ok(conn) => {
                *guard = Some(conn.clone());
                Some(conn)
            }
            Err(e) => {
                tracing::debug!(kind = %e.kind_str(), "connecting to redis failed");
                None
            }
        }
    }

    /// `None` when Redis could not decide (down, slow, or in its back-off period).
    async fn check(&self, tenant: &str, policy: &Policy) -> Option<Decision> {
        if self.now_us() < self.down_until.load(Ordering::Relaxed) {
            return None;
        }
        let outcome = tokio::time::timeout(self.timeout, async {
            let mut conn = self.connection().await?;
            // Braces make `tenant` the hash tag: all of a tenant's keys live in one cluster slot.
            let key = format!(
                "{}:{{{}}}:{}",
                self.key_prefix,
                tenant.replace(['{', '}'], "_"),
                policy.name
            );
            let result: Result<(u64, u64, u64, u64), _> = self
                .script
                .key(key)
                .arg(policy.interval_us)
                .arg(policy.burst)
                .invoke_async(&mut conn)
                .await;
            match result {
                Ok(r) => Some(r),
                Err(e) => {
                    tracing::debug!(kind = %e.kind_str(), "redis rate-limit script failed");
                    None
                }
            }
        })
        .await
        .ok()
        .flatten();
        match outcome {
            Some((allowed, remaining, retry_after, reset)) => Some(Decision {
                allowed: allowed == 1,
                remaining,
                reset: Duration::from_micros(reset),
                retry_after: Duration::from_micros(retry_after),
            }),
            None => {
                *self.conn.lock().await = None;
                let retry = u64::try_from(self.retry_after.as_micros()).unwrap_or(u64::MAX);
                self.down_until
                    .store(self.now_us().saturating_add(retry), Ordering::Relaxed);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(requests: u64, period: Duration, burst: Option<u64>) -> Policy {
        Policy::compile(
            "p",
            &RateLimitPolicyConfig {
                requests,
                period,
                burst,
            },
        )
        .unwrap()
    }

    #[test]
    fn a_burst_admits_exactly_burst_requests() {
        let p = policy(10, Duration::from_secs(3600), None);
        let mut tat = 0;
        let mut admitted = 0;
        for _ in 0..25 {
            let (d, new) = gcra(tat, 1_000, &p);
            if let Some(n) = new {
                tat = n;
                admitted += 1;
            } else {
                assert!(d.retry_after > Duration::ZERO);
            }
        }
        assert_eq!(admitted, 10);
    }

    #[test]
    fn remaining_counts_down_and_quota_refills_over_time() {
        let p = policy(2, Duration::from_secs(2), None);
        let (d1, t1) = gcra(0, 0, &p);
        assert_eq!((d1.allowed, d1.remaining), (true, 1));
        let (d2, t2) = gcra(t1.unwrap(), 0, &p);
        assert_eq!((d2.allowed, d2.remaining), (true, 0));
        let (d3, _) = gcra(t2.unwrap(), 0, &p);
        assert!(!d3.allowed);
        assert_eq!(d3.retry_after, Duration::from_secs(1));
        let (d4, _) = gcra(t2.unwrap(), 1_000_000, &p);
        assert!(d4.allowed);
    }

    #[test]
    fn policies_are_validated() {
        assert!(
            Policy::compile(
                "p",
                &RateLimitPolicyConfig {
                    requests: 0,
                    period: Duration::from_secs(1),
                    burst: None
                }
            )
            .is_err()
        );
        assert!(
            Policy::compile(
                "p",
                &RateLimitPolicyConfig {
                    requests: 1,
                    period: Duration::from_secs(1),
                    burst: Some(0)
                }
            )
            .is_err()
        );
    }

    #[test]
    fn local_limiter_keys_by_tenant() {
        let limiter = LocalLimiter::default();
        let p = policy(1, Duration::from_secs(3600), None);
        assert!(limiter.check("a", &p).allowed);
        assert!(!limiter.check("a", &p).allowed);
        assert!(limiter.check("b", &p).allowed);
        // Another policy is another quota for the same tenant.
        let mut other = policy(1, Duration::from_secs(3600), None);
        other.name = "other".into();
        assert!(limiter.check("a", &other).allowed);
        assert!(!limiter.check("a", &other).allowed);
        assert!(!limiter.check("a", &p).allowed);
    }
}
