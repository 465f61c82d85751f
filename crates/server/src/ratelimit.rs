//! Rate limits: token buckets per client key, per client IP, per backend and for the
//! whole router, kept in this process or, with `rate_limit.redis.url`, in Redis so a
//! fleet enforces one limit.
//!
//! A bucket is GCRA (the generic cell rate algorithm), which is a token bucket stored as
//! one number, the "theoretical arrival time": a request is admitted when
//! `max(tat, now) + interval - burst * interval <= now`, and then `tat` moves on by one
//! `interval` (`60 s / requests_per_minute`). Locally that number is an `AtomicU64`
//! updated by compare-and-swap (per-key and per-backend buckets are vectors indexed by
//! key or backend, the global one is a single atomic); per-IP buckets live in sharded
//! maps under short, await-free locks and are pruned once full again.
//!
//! In Redis one Lua script checks every bucket a request needs in one round trip, with
//! Redis's own clock, and takes from all or none. When Redis is down, slow
//! (`rate_limit.redis.timeout`) or failing, the local buckets decide: requests never
//! fail because of Redis, and during the outage each instance enforces the limit on its
//! own (a fleet of N may admit up to N times the limit).

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use http::HeaderMap;
use parking_lot::Mutex;
use redis::aio::ConnectionManager;
use switchyard_config::{Cidr, RateLimitConfig, RateLimitRule};
use tokio::time::Instant;

use crate::metrics::LimitScope;

/// How long one background Redis connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Per-IP buckets kept per shard before full ones are pruned.
const IP_SHARD_SOFT_CAP: usize = 4096;
const IP_SHARDS: usize = 16;

/// A refusal: which limit, and when a token will be there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Limited {
    pub(crate) scope: LimitScope,
    pub(crate) retry_after: Duration,
}

/// The rate limits of one configuration.
pub(crate) struct RateLimiter {
    enabled: bool,
    epoch: Instant,
    per_key: Option<KeyScope>,
    per_ip: Option<(Rule, IpBuckets)>,
    per_backend: Option<(Rule, Vec<Gcra>)>,
    global: Option<(Rule, Gcra)>,
    trusted: Vec<Cidr>,
    redis: Option<RedisLimiter>,
    settings: RateLimitConfig,
    backends: Vec<Arc<str>>,
}

/// Who a client-side check is for.
pub(crate) struct Subject<'a> {
    /// The caller's key index and name, when it sent one.
    pub(crate) key: Option<(usize, &'a str)>,
    pub(crate) ip: IpAddr,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Rule {
    interval_ns: u64,
    burst: u64,
}

/// One GCRA bucket: the theoretical arrival time in nanoseconds since the epoch.
#[derive(Default)]
struct Gcra(AtomicU64);

/// Per-key buckets, plus per-IP ones for requests without a key.
struct KeyScope {
    rule: Rule,
    keys: Vec<Gcra>,
    anonymous: IpBuckets,
}

/// Per-IP buckets: sharded maps of IP -> theoretical arrival time.
struct IpBuckets {
    shards: Box<[Mutex<HashMap<IpAddr, u64>>]>,
    hasher: std::collections::hash_map::RandomState,
}

/// One bucket a request must take from.
#[derive(Clone, Copy)]
enum Bucket<'a> {
    Atomic(&'a Gcra),
    Ip(&'a IpBuckets, IpAddr),
}

struct RedisLimiter {
    inner: Arc<RedisInner>,
    prefix: String,
    timeout: Duration,
}

struct RedisInner {
    conn: OnceLock<ConnectionManager>,
    /// SHA1 of the script as Redis reported it on `SCRIPT LOAD`.
    sha: OnceLock<String>,
}

/// Checks every bucket and takes one token from each only if all have one. KEYS are
/// the buckets; ARGV holds `interval_us, burst` per key. Returns 0 when admitted, else
/// the microseconds until it would be.
const SCRIPT: &str = r"
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local wait = 0
local next = {}
for i = 1, #KEYS do
  local interval = tonumber(ARGV[2 * i - 1])
  local burst = tonumber(ARGV[2 * i])
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
  if tat < now then tat = now end
  local new = tat + interval
  local allowed_at = new - burst * interval
  if allowed_at > now and allowed_at - now > wait then wait = allowed_at - now end
  next[i] = new
end
if wait > 0 then return wait end
for i = 1, #KEYS do
  redis.call('SET', KEYS[i], string.format('%d', next[i]), 'PX', math.floor((next[i] - now) / 1000) + 1000)
end
return 0
";

impl RateLimiter {
    /// Build the limits `settings` describe for `keys` client keys and `backends`.
    /// Must run inside a tokio runtime when Redis is configured (it connects in the
    /// background).
    pub(crate) fn new(
        settings: &RateLimitConfig,
        keys: usize,
        backends: &[Arc<str>],
    ) -> crate::Result<RateLimiter> {
        let enabled = settings.enabled;
        let scope = |rule: &Option<RateLimitRule>| rule.as_ref().filter(|_| enabled).map(Rule::of);
        let per_key = scope(&settings.per_key).map(|rule| KeyScope {
            rule,
            keys: (0..keys).map(|_| Gcra::default()).collect(),
            anonymous: IpBuckets::new(),
        });
        let per_ip = scope(&settings.per_ip).map(|rule| (rule, IpBuckets::new()));
        let per_backend = scope(&settings.per_backend)
            .map(|rule| (rule, backends.iter().map(|_| Gcra::default()).collect()));
        let global = scope(&settings.global).map(|rule| (rule, Gcra::default()));
        let redis = match settings.redis.url.as_ref().filter(|_| enabled) {
            Some(url) => Some(RedisLimiter::new(
                url.expose(),
                &settings.redis.key_prefix,
                settings.redis.timeout,
            )?),
            None => None,
        };
        Ok(RateLimiter {
            enabled,
            epoch: Instant::now(),
            per_key,
            per_ip,
            per_backend,
            global,
            trusted: settings.trusted_proxies.clone(),
            redis,
            settings: settings.clone(),
            backends: backends.to_vec(),
        })
    }

    /// Whether this limiter can be kept for a reloaded configuration (same rules, same
    /// keys and backends), so its buckets carry on.
    pub(crate) fn same_as(
        &self,
        settings: &RateLimitConfig,
        keys: usize,
        backends: &[Arc<str>],
    ) -> bool {
        self.settings == *settings
            && self.per_key.as_ref().is_none_or(|k| k.keys.len() == keys)
            && self.backends == backends
    }

    /// Whether any client-side limit applies.
    pub(crate) fn limits_clients(&self) -> bool {
        self.enabled && (self.per_key.is_some() || self.per_ip.is_some() || self.global.is_some())
    }

    /// The client's address: the peer, or, when the peer is a trusted proxy, the
    /// right-most `X-Forwarded-For` entry that is not itself a trusted proxy.
    pub(crate) fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        client_ip(peer.to_canonical(), headers, &self.trusted)
    }

    /// Take a token from every client-side bucket `subject` falls under (all or none).
    pub(crate) async fn check_client(&self, subject: &Subject<'_>) -> Result<(), Limited> {
        if !self.enabled || !self.limits_clients() {
            return Ok(());
        }
        let mut buckets: [Option<(LimitScope, Rule, Bucket<'_>)>; 3] = [None; 3];
        if let Some(scope) = &self.per_key {
            let bucket = match subject.key {
                Some((index, _)) => match scope.keys.get(index) {
                    Some(gcra) => Bucket::Atomic(gcra),
                    None => Bucket::Ip(&scope.anonymous, subject.ip),
                },
                None => Bucket::Ip(&scope.anonymous, subject.ip),
            };
            buckets[0] = Some((LimitScope::Key, scope.rule, bucket));
        }
        if let Some((rule, ips)) = &self.per_ip {
            buckets[1] = Some((LimitScope::Ip, *rule, Bucket::Ip(ips, subject.ip)));
        }
        if let Some((rule, gcra)) = &self.global {
            buckets[2] = Some((LimitScope::Global, *rule, Bucket::Atomic(gcra)));
        }
        if let Some(redis) = &self.redis {
            let mut keys: Vec<(String, Rule, LimitScope)> = Vec::with_capacity(3);
            for (scope, rule, _) in buckets.iter().flatten() {
                let name = match (scope, subject.key) {
                    (LimitScope::Key, Some((_, name))) => format!("key:{name}"),
                    (LimitScope::Key, None) => format!("key-ip:{}", subject.ip),
                    (LimitScope::Ip, _) => format!("ip:{}", subject.ip),
                    _ => "global".to_owned(),
                };
                keys.push((name, *rule, *scope));
            }
            match redis.take(&keys).await {
                Ok(result) => return result,
                Err(()) => crate::metrics::metrics().rate_limit_redis_errors.increment(1),
            }
        }
        self.take_local(&buckets)
    }

    /// Take a token from backend `index`'s bucket, if per-backend limits are on.
    pub(crate) async fn check_backend(&self, index: usize) -> Result<(), Limited> {
        let Some((rule, buckets)) = self.per_backend.as_ref().filter(|_| self.enabled) else {
            return Ok(());
        };
        let Some(gcra) = buckets.get(index) else { return Ok(()) };
        if let Some(redis) = &self.redis {
            let name = format!("backend:{}", self.backends.get(index).map_or("", |n| n));
            match redis.take(&[(name, *rule, LimitScope::Backend)]).await {
                Ok(result) => return result,
                Err(()) => crate::metrics::metrics().rate_limit_redis_errors.increment(1),
            }
        }
        self.take_local(&[Some((LimitScope::Backend, *rule, Bucket::Atomic(gcra)))])
    }

    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Take from each bucket in turn; if one refuses, give back what was taken.
    fn take_local(
        &self,
        buckets: &[Option<(LimitScope, Rule, Bucket<'_>)>],
    ) -> Result<(), Limited> {
        let now = self.now();
        for (i, (scope, rule, bucket)) in
            buckets.iter().enumerate().filter_map(|(i, b)| Some((i, (*b)?)))
        {
            let taken = match bucket {
                Bucket::Atomic(gcra) => gcra.take(now, &rule),
                Bucket::Ip(ips, ip) => ips.take(&ip, now, &rule),
            };
            if let Err(wait_ns) = taken {
                for (_, rule, bucket) in buckets[..i].iter().flatten() {
                    match bucket {
                        Bucket::Atomic(gcra) => gcra.give_back(rule),
                        Bucket::Ip(ips, ip) => ips.give_back(*ip, rule),
                    }
                }
                return Err(Limited { scope, retry_after: Duration::from_nanos(wait_ns) });
            }
        }
        Ok(())
    }
}

impl Rule {
    fn of(rule: &RateLimitRule) -> Rule {
        let per_minute = u64::from(rule.requests_per_minute.max(1));
        Rule { interval_ns: 60_000_000_000 / per_minute, burst: u64::from(rule.burst().max(1)) }
    }

    /// Admit at `tat` (the bucket's state) and `now`: the new state, or the wait.
    fn admit(&self, tat: u64, now: u64) -> Result<u64, u64> {
        let next = tat.max(now).saturating_add(self.interval_ns);
        let allowed_at = next.saturating_sub(self.burst.saturating_mul(self.interval_ns));
        if allowed_at > now { Err(allowed_at - now) } else { Ok(next) }
    }
}

impl Gcra {
    fn take(&self, now: u64, rule: &Rule) -> Result<(), u64> {
        let mut tat = self.0.load(Ordering::Acquire);
        loop {
            let next = rule.admit(tat, now)?;
            match self.0.compare_exchange_weak(tat, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Ok(()),
                Err(current) => tat = current,
            }
        }
    }

    fn give_back(&self, rule: &Rule) {
        let _ = self.0.fetch_update(Ordering::AcqRel, Ordering::Acquire, |tat| {
            Some(tat.saturating_sub(rule.interval_ns))
        });
    }
}

impl IpBuckets {
    fn new() -> IpBuckets {
        IpBuckets {
            shards: (0..IP_SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: std::collections::hash_map::RandomState::new(),
        }
    }

    fn shard(&self, ip: &IpAddr) -> &Mutex<HashMap<IpAddr, u64>> {
        let mut hasher = self.hasher.build_hasher();
        ip.hash(&mut hasher);
        let index = std::hash::Hasher::finish(&hasher) as usize % self.shards.len();
        &self.shards[index]
    }

    fn take(&self, ip: &IpAddr, now: u64, rule: &Rule) -> Result<(), u64> {
        let mut shard = self.shard(ip).lock();
        if shard.len() >= IP_SHARD_SOFT_CAP && !shard.contains_key(ip) {
            // Buckets that are full again hold no information: drop them.
            shard.retain(|_, tat| *tat > now);
        }
        let tat = shard.get(ip).copied().unwrap_or(0);
        let next = rule.admit(tat, now)?;
        shard.insert(*ip, next);
        Ok(())
    }

    fn give_back(&self, ip: IpAddr, rule: &Rule) {
        if let Some(tat) = self.shard(&ip).lock().get_mut(&ip) {
            *tat = tat.saturating_sub(rule.interval_ns);
        }
    }
}

impl RedisLimiter {
    fn new(url: &str, prefix: &str, timeout: Duration) -> crate::Result<RedisLimiter> {
        // The URL may hold a password: never echo it.
        let client = redis::Client::open(url).map_err(|e| {
            crate::Error::Config(format!("rate_limit.redis.url is not usable ({:?})", e.kind()))
        })?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            crate::Error::Config("rate limits with redis need a tokio runtime".into())
        })?;
        let inner = Arc::new(RedisInner { conn: OnceLock::new(), sha: OnceLock::new() });
        runtime.spawn(connect(Arc::downgrade(&inner), client, timeout));
        Ok(RedisLimiter { inner, prefix: prefix.to_owned(), timeout })
    }

    /// Run the script over `keys`: `Ok(decision)`, or `Err(())` when Redis could not
    /// decide (no connection, timeout, error).
    async fn take(&self, keys: &[(String, Rule, LimitScope)]) -> Result<Result<(), Limited>, ()> {
        let Some(conn) = self.inner.conn.get() else { return Err(()) };
        let mut conn = conn.clone();
        let sha = self.inner.sha.get().cloned();
        let build = |command: &str, first: &str| {
            let mut cmd = redis::cmd(command);
            cmd.arg(first).arg(keys.len());
            for (name, _, _) in keys {
                cmd.arg(format!("{}{name}", self.prefix));
            }
            for (_, rule, _) in keys {
                cmd.arg(rule.interval_ns / 1000).arg(rule.burst);
            }
            cmd
        };
        let query = async {
            if let Some(sha) = &sha {
                match build("EVALSHA", sha).query_async::<i64>(&mut conn).await {
                    Err(error) if error.kind() == redis::ErrorKind::NoScriptError => {}
                    other => return other,
                }
            }
            // Not loaded yet (or Redis restarted and forgot it): send the script.
            build("EVAL", SCRIPT).query_async::<i64>(&mut conn).await
        };
        let wait_us = match tokio::time::timeout(self.timeout, query).await {
            Ok(Ok(wait)) => wait,
            Ok(Err(error)) => {
                tracing::debug!(kind = ?error.kind(), "redis rate limit failed; deciding locally");
                return Err(());
            }
            Err(_) => {
                tracing::debug!("redis rate limit timed out; deciding locally");
                return Err(());
            }
        };
        if wait_us <= 0 {
            return Ok(Ok(()));
        }
        // The script does not say which bucket refused: report the narrowest scope.
        let scope = keys.first().map_or(LimitScope::Global, |(_, _, scope)| *scope);
        let retry_after = Duration::from_micros(u64::try_from(wait_us).unwrap_or(0));
        Ok(Err(Limited { scope, retry_after }))
    }
}

/// Connect in the background, retrying with backoff until it works or the limiter is
/// dropped; then load the script. The manager reconnects by itself afterwards.
async fn connect(inner: Weak<RedisInner>, client: redis::Client, timeout: Duration) {
    let mut delay = Duration::from_millis(100);
    loop {
        let attempt = switchyard_cache::connect_redis(&client, timeout).await;
        let Some(handle) = inner.upgrade() else { return };
        if let Ok(mut conn) = attempt {
            let mut command = redis::cmd("SCRIPT");
            command.arg("LOAD").arg(SCRIPT);
            let load = command.query_async::<String>(&mut conn);
            if let Ok(Ok(sha)) = tokio::time::timeout(CONNECT_TIMEOUT, load).await {
                let _ = handle.sha.set(sha);
            }
            let _ = handle.conn.set(conn);
            tracing::debug!("rate limits connected to redis");
            return;
        }
        tracing::debug!("rate limits cannot reach redis yet; retrying");
        drop(handle);
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// See [`RateLimiter::client_ip`].
fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[Cidr]) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|net| net.contains(ip));
    if trusted.is_empty() || !is_trusted(peer) {
        return peer;
    }
    let mut client = peer;
    // Later headers and later entries were appended by nearer proxies: walk from the end.
    let hops = headers.get_all("x-forwarded-for").iter().rev().flat_map(|value| {
        value.to_str().unwrap_or("").rsplit(',').map(str::trim).filter(|s| !s.is_empty())
    });
    for hop in hops {
        let Ok(ip) = hop.parse::<IpAddr>() else { break };
        client = ip.to_canonical();
        if !is_trusted(client) {
            break;
        }
    }
    client
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use switchyard_config::RateLimitRule;

    fn rule(rpm: u32, burst: Option<u32>) -> Option<RateLimitRule> {
        Some(RateLimitRule { requests_per_minute: rpm, burst })
    }

    fn limiter(settings: RateLimitConfig) -> RateLimiter {
        RateLimiter::new(&settings, 2, &[Arc::from("a"), Arc::from("b")]).unwrap()
    }

    #[test]
    fn gcra_admits_the_burst_then_one_per_interval() {
        let rule = Rule::of(&RateLimitRule { requests_per_minute: 60, burst: Some(3) });
        let gcra = Gcra::default();
        let t0 = 1_000_000_000_000;
        for _ in 0..3 {
            assert!(gcra.take(t0, &rule).is_ok());
        }
        let wait = gcra.take(t0, &rule).unwrap_err();
        assert_eq!(wait, 1_000_000_000, "one token per second");
        assert!(gcra.take(t0 + 999_000_000, &rule).is_err());
        assert!(gcra.take(t0 + 1_000_000_000, &rule).is_ok());
        assert!(gcra.take(t0 + 1_000_000_000, &rule).is_err());
        // A long pause refills to the burst, not beyond.
        let later = t0 + 100_000_000_000;
        for _ in 0..3 {
            assert!(gcra.take(later, &rule).is_ok());
        }
        assert!(gcra.take(later, &rule).is_err());
    }

    #[tokio::test]
    async fn scopes_combine_and_refusals_give_tokens_back() {
        let settings = RateLimitConfig {
            enabled: true,
            per_key: rule(600, Some(2)),
            global: rule(600, Some(3)),
            ..RateLimitConfig::default()
        };
        let limits = limiter(settings);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let alice = Subject { key: Some((0, "alice")), ip };
        let bob = Subject { key: Some((1, "bob")), ip };
        assert!(limits.check_client(&alice).await.is_ok());
        assert!(limits.check_client(&alice).await.is_ok());
        let refused = limits.check_client(&alice).await.unwrap_err();
        assert_eq!(refused.scope, LimitScope::Key);
        assert!(
            refused.retry_after > Duration::ZERO
                && refused.retry_after <= Duration::from_millis(100)
        );
        // Alice's refusal took nothing from the global bucket: bob gets the third token.
        assert!(limits.check_client(&bob).await.is_ok());
        let refused = limits.check_client(&bob).await.unwrap_err();
        assert_eq!(refused.scope, LimitScope::Global);
    }

    #[tokio::test]
    async fn anonymous_callers_are_limited_per_ip_and_backends_separately() {
        let settings = RateLimitConfig {
            enabled: true,
            per_key: rule(1, None),
            per_backend: rule(1, Some(1)),
            ..RateLimitConfig::default()
        };
        let limits = limiter(settings);
        let one = Subject { key: None, ip: "10.0.0.1".parse().unwrap() };
        let two = Subject { key: None, ip: "10.0.0.2".parse().unwrap() };
        assert!(limits.check_client(&one).await.is_ok());
        assert!(limits.check_client(&one).await.is_err());
        assert!(limits.check_client(&two).await.is_ok());
        assert!(limits.check_backend(0).await.is_ok());
        assert_eq!(limits.check_backend(0).await.unwrap_err().scope, LimitScope::Backend);
        assert!(limits.check_backend(1).await.is_ok());
    }

    #[tokio::test]
    async fn disabled_limits_admit_everything() {
        let settings = RateLimitConfig {
            enabled: false,
            global: rule(1, Some(1)),
            ..RateLimitConfig::default()
        };
        let limits = limiter(settings);
        let subject = Subject { key: None, ip: "10.0.0.1".parse().unwrap() };
        for _ in 0..10 {
            assert!(limits.check_client(&subject).await.is_ok());
        }
    }

    #[test]
    fn ip_buckets_prune_full_buckets() {
        let buckets = IpBuckets::new();
        let rule = Rule::of(&RateLimitRule { requests_per_minute: 60_000, burst: Some(1) });
        for i in 0..(IP_SHARD_SOFT_CAP * IP_SHARDS * 2) as u32 {
            let ip = IpAddr::from(i.to_be_bytes());
            buckets.take(&ip, 1_000_000_000 + u64::from(i) * 10_000_000, &rule).unwrap();
        }
        let held: usize = buckets.shards.iter().map(|s| s.lock().len()).sum();
        assert!(held <= IP_SHARD_SOFT_CAP * IP_SHARDS + IP_SHARDS, "{held}");
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted: Vec<Cidr> = vec!["10.0.0.0/8".parse().unwrap()];
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", HeaderValue::from_static("6.6.6.6, 1.2.3.4, 10.0.0.7"));
        let proxy: IpAddr = "10.1.1.1".parse().unwrap();
        let stranger: IpAddr = "8.8.8.8".parse().unwrap();
        // The right-most untrusted hop is the client; a spoofed left-most one is ignored.
        assert_eq!(client_ip(proxy, &headers, &trusted), "1.2.3.4".parse::<IpAddr>().unwrap());
        assert_eq!(client_ip(stranger, &headers, &trusted), stranger);
        assert_eq!(client_ip(proxy, &headers, &[]), proxy);
        assert_eq!(client_ip(proxy, &HeaderMap::new(), &trusted), proxy);
        headers.insert("x-forwarded-for", HeaderValue::from_static("garbage, 10.0.0.9"));
        assert_eq!(client_ip(proxy, &headers, &trusted), "10.0.0.9".parse::<IpAddr>().unwrap());
        let mapped: IpAddr = "::ffff:10.1.1.1".parse().unwrap();
        headers.insert("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
        let limits =
            limiter(RateLimitConfig { trusted_proxies: trusted, ..RateLimitConfig::default() });
        assert_eq!(limits.client_ip(mapped, &headers), "1.2.3.4".parse::<IpAddr>().unwrap());
    }
}
