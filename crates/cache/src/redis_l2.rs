//! The Redis second tier: shared by router instances, never able to fail a request.
//!
//! Every operation is bounded by `cache.redis.timeout`; an error, a timeout or a
//! connection not (yet) established all mean "bypass": a lookup misses, a store is
//! skipped, and `switchyard_cache_redis_errors_total` counts it. The connection is made
//! in the background (so a router starts while Redis is down) and
//! [`ConnectionManager`] re-establishes it after Redis comes back.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::task::AbortHandle;

use crate::error::{Error, Result};
use crate::key::CacheKey;
use crate::metrics::REDIS_ERRORS;
use crate::settings::RedisSettings;

/// How long one background connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// The longest pause between background connection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// A handle on the shared Redis tier. Cheap to clone; give the same one to every
/// [`ResponseCache`](crate::ResponseCache) that should share through Redis.
#[derive(Clone)]
pub struct RedisL2 {
    inner: Arc<L2Inner>,
}

struct L2Inner {
    conn: OnceLock<ConnectionManager>,
    prefix: String,
    timeout: Duration,
    errors: AtomicU64,
    connector: OnceLock<AbortHandle>,
}

impl RedisL2 {
    /// The Redis tier `settings` describe, or `None` when `url` is unset.
    ///
    /// Returns at once: the connection is made by a background task (so this must be
    /// called inside a tokio runtime), and operations bypass Redis until it is up.
    /// Fails only if the URL cannot be parsed or no runtime is running.
    pub fn new(settings: &RedisSettings) -> Result<Option<Self>> {
        let Some(url) = settings.url.as_deref() else {
            return Ok(None);
        };
        // The URL may hold a password: never echo it.
        let client = redis::Client::open(url)
            .map_err(|e| Error::RedisUrl(format!("{:?} error", e.kind())))?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
        let inner = Arc::new(L2Inner {
            conn: OnceLock::new(),
            prefix: settings.key_prefix.clone(),
            timeout: settings.timeout,
            errors: AtomicU64::new(0),
            connector: OnceLock::new(),
        });
        let task = runtime.spawn(connect(Arc::downgrade(&inner), client, settings.timeout));
        let _ = inner.connector.set(task.abort_handle());
        Ok(Some(RedisL2 { inner }))
    }

    /// Whether a connection has been established (it may have dropped since).
    pub fn is_connected(&self) -> bool {
        self.inner.conn.get().is_some()
    }

    /// Operations that failed, timed out or found no connection since start.
    pub fn errors(&self) -> u64 {
        self.inner.errors.load(Ordering::Relaxed)
    }

    /// The value stored under `cache`/`key` and its remaining time to live, or `None`
    /// on a miss or any failure.
    pub(crate) async fn get(
        &self,
        cache: &'static str,
        key: &CacheKey,
    ) -> Option<(Vec<u8>, Option<Duration>)> {
        let Some(conn) = self.inner.conn.get() else {
            self.inner.error(cache, "get");
            return None;
        };
        let mut conn = conn.clone();
        let name = self.redis_key(cache, key);
        let query = async {
            redis::pipe()
                .get(&name)
                .cmd("PTTL")
                .arg(&name)
                .query_async::<(Option<Vec<u8>>, i64)>(&mut conn)
                .await
        };
        match tokio::time::timeout(self.inner.timeout, query).await {
            Ok(Ok((value, pttl))) => {
                let ttl = u64::try_from(pttl).ok().filter(|ms| *ms > 0).map(Duration::from_millis);
                value.map(|value| (value, ttl))
            }
            Ok(Err(error)) => {
                tracing::debug!(cache, error = %error, "redis get failed; bypassing");
                self.inner.error(cache, "get");
                None
            }
            Err(_) => {
                tracing::debug!(cache, "redis get timed out; bypassing");
                self.inner.error(cache, "get");
                None
            }
        }
    }

    /// Store `value` under `cache`/`key` for `ttl`; failures are counted and dropped.
    pub(crate) async fn set(
        &self,
        cache: &'static str,
        key: &CacheKey,
        value: Vec<u8>,
        ttl: Duration,
    ) {
        let Some(conn) = self.inner.conn.get() else {
            self.inner.error(cache, "set");
            return;
        };
        let mut conn = conn.clone();
        let millis = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut command = redis::cmd("SET");
        command.arg(self.redis_key(cache, key)).arg(value).arg("PX").arg(millis);
        let query = command.query_async::<()>(&mut conn);
        match tokio::time::timeout(self.inner.timeout, query).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::debug!(cache, error = %error, "redis set failed; skipped");
                self.inner.error(cache, "set");
            }
            Err(_) => {
                tracing::debug!(cache, "redis set timed out; skipped");
                self.inner.error(cache, "set");
            }
        }
    }

    /// Count a value that was found but could not be used.
    pub(crate) fn count_error(&self, cache: &'static str, op: &'static str) {
        self.inner.error(cache, op);
    }

    fn redis_key(&self, cache: &str, key: &CacheKey) -> String {
        format!("{}{}:{}", self.inner.prefix, cache, key.to_hex())
    }
}

impl L2Inner {
    fn error(&self, cache: &'static str, op: &'static str) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(REDIS_ERRORS, "cache" => cache, "op" => op).increment(1);
    }
}

impl Drop for L2Inner {
    fn drop(&mut self) {
        if let Some(task) = self.connector.get() {
            task.abort();
        }
    }
}

/// One attempt at a Redis connection as Switchyard's Redis users make it (this tier
/// and the server's rate limits): a [`ConnectionManager`] that reconnects by itself
/// once made, or the error, within twice the 1 s connect timeout.
///
/// The manager's response timeout also bounds the handshake, so it is the connect
/// timeout (or `timeout` if longer), not the callers' per-operation timeout
/// (`cache.redis.timeout`, 250 ms by default): with that, a busy machine (the embedded
/// model on every core) could fail every attempt. Callers bound each operation
/// themselves (`tokio::time::timeout` around it).
pub async fn connect_redis(client: &redis::Client, timeout: Duration) -> Result<ConnectionManager> {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(CONNECT_TIMEOUT)
        .set_response_timeout(CONNECT_TIMEOUT.max(timeout))
        .set_number_of_retries(1)
        .set_max_delay(1000);
    let attempt = ConnectionManager::new_with_config(client.clone(), config);
    match tokio::time::timeout(CONNECT_TIMEOUT * 2, attempt).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(error)) => Err(Error::RedisConnect(error.to_string())),
        Err(_) => Err(Error::RedisConnect("timed out".to_owned())),
    }
}

/// Connect in the background, retrying with backoff until it works or the handle is
/// dropped. Once connected, the manager reconnects by itself.
async fn connect(inner: Weak<L2Inner>, client: redis::Client, timeout: Duration) {
    let mut delay = Duration::from_millis(100);
    loop {
        let attempt = connect_redis(&client, timeout).await;
        let Some(handle) = inner.upgrade() else { return };
        match attempt {
            Ok(conn) => {
                let _ = handle.conn.set(conn);
                tracing::debug!("connected to redis");
                return;
            }
            Err(error) => tracing::debug!(%error, "retrying"),
        }
        handle.error("redis", "connect");
        drop(handle);
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(MAX_BACKOFF);
    }
}
