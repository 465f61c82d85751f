//! Against a real `redis-server`, started by the test on a free port.
//!
//! `redis-server` must be on PATH (Debian: `apt-get install -y redis-server`); set
//! `SWITCHYARD_SKIP_REDIS=1` to skip these tests where it cannot be installed.

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use switchyard_cache::{
    CacheKey, CachedResponse, JoinRole, RedisL2, RedisSettings, ResponseCache, SingleFlight,
};
use switchyard_core::{Endpoint, ResponseBody};

struct RedisServer {
    child: Child,
    port: u16,
}

impl RedisServer {
    /// Start `redis-server`, or `None` when skipping is allowed and it is missing.
    fn start(port: Option<u16>) -> Option<RedisServer> {
        let found = std::env::var_os("PATH")
            .map(|paths| {
                std::env::split_paths(&paths).any(|dir| dir.join("redis-server").is_file())
            })
            .unwrap_or(false);
        if !found {
            if std::env::var("SWITCHYARD_SKIP_REDIS").as_deref() == Ok("1") {
                eprintln!("redis-server not on PATH; skipped because SWITCHYARD_SKIP_REDIS=1");
                return None;
            }
            panic!(
                "redis-server is not on PATH: install it (Debian: `apt-get install -y redis-server`) \
                 or set SWITCHYARD_SKIP_REDIS=1 to skip the Redis tests"
            );
        }
        let port = port.unwrap_or_else(|| {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        });
        let server = RedisServer {
            child: Command::new("redis-server")
                .args([
                    "--port",
                    &port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start redis-server"),
            port,
        };
        for _ in 0..100 {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(server);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("redis-server did not start listening on port {port}");
    }

    fn settings(&self) -> RedisSettings {
        RedisSettings {
            url: Some(format!("redis://127.0.0.1:{}", self.port)),
            key_prefix: format!("test-{}:", std::process::id()),
            timeout: Duration::from_millis(100),
        }
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn connected(settings: &RedisSettings) -> RedisL2 {
    let l2 = RedisL2::new(settings).unwrap().unwrap();
    // Up to 10 s: the suite runs beside the engine's tests, which keep both cores busy.
    for _ in 0..200 {
        if l2.is_connected() {
            return l2;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("never connected to redis");
}

fn key(tenant: &str, n: usize) -> CacheKey {
    let body = format!(
        r#"{{"model":"m","temperature":0,"messages":[{{"role":"user","content":"q{n}"}}]}}"#
    );
    CacheKey::compute(tenant, Endpoint::ChatCompletions, body.as_bytes()).unwrap()
}

/// Poll `cache` for `key` in Redis for up to 2 s (the write is asynchronous).
async fn eventually(cache: &ResponseCache, key: &CacheKey) -> Option<CachedResponse> {
    for _ in 0..40 {
        if let Some(found) = cache.lookup(key).await {
            return Some(found);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

#[tokio::test]
async fn two_router_instances_share_cached_answers() {
    let Some(server) = RedisServer::start(None) else { return };
    let settings = server.settings();
    // Two "routers": separate memory tiers, one Redis.
    let a = ResponseCache::new(
        "responses",
        1 << 20,
        Duration::from_secs(60),
        Some(connected(&settings).await),
    );
    let b = ResponseCache::new(
        "responses",
        1 << 20,
        Duration::from_secs(60),
        Some(connected(&settings).await),
    );

    let answer = CachedResponse::full(Bytes::from_static(br#"{"answer":"shared"}"#));
    assert!(a.insert(key("t", 1), answer.clone()));
    assert_eq!(eventually(&b, &key("t", 1)).await, Some(answer));
    assert_eq!(b.stats().redis_hits, 1);
    assert!(b.get(&key("t", 1)).is_some(), "copied into b's memory");
    assert_eq!(b.lookup(&key("other-tenant", 1)).await, None, "never across tenants");

    // Completed de-duplicated answers are shared too: b's flight finds a's in Redis.
    let flights_a = SingleFlight::new("dedup", 1 << 20);
    let flights_b = SingleFlight::new("dedup", 1 << 20);
    let calls = Arc::new(AtomicUsize::new(0));
    let upstream = |calls: Arc<AtomicUsize>| {
        move || async move {
            calls.fetch_add(1, Ordering::SeqCst);
            Ok(ResponseBody::Full(Bytes::from_static(b"computed once")))
        }
    };
    let first = flights_a.join(key("t", 2), Some(&a), upstream(Arc::clone(&calls)));
    assert_eq!(&first.collect().await.unwrap()[..], b"computed once");
    eventually(&b, &key("t", 2)).await.expect("in redis");
    b.remove(&key("t", 2)); // make b go to Redis through its flight
    let second = flights_b.join(key("t", 2), Some(&b), upstream(Arc::clone(&calls)));
    assert_eq!(&second.collect().await.unwrap()[..], b"computed once");
    assert_eq!(calls.load(Ordering::SeqCst), 1, "b's flight was answered by redis");
    let third = flights_b.join(key("t", 2), Some(&b), upstream(Arc::clone(&calls)));
    assert_eq!(third.role(), JoinRole::Cached);
}

#[tokio::test]
async fn stopping_redis_mid_run_fails_no_request() {
    let Some(mut server) = RedisServer::start(None) else { return };
    let settings = server.settings();
    let l2 = connected(&settings).await;
    let cache = ResponseCache::new("responses", 1 << 20, Duration::from_secs(60), Some(l2.clone()));
    let flights = SingleFlight::new("dedup", 1 << 20);
    let calls = Arc::new(AtomicUsize::new(0));
    for n in 0..60 {
        if n == 20 {
            server.stop();
        }
        let calls = Arc::clone(&calls);
        let sub = flights.join(key("t", n), Some(&cache), move || async move {
            calls.fetch_add(1, Ordering::SeqCst);
            Ok(ResponseBody::Full(Bytes::from(format!("answer {n}"))))
        });
        let body = sub.collect().await.expect("redis being down never fails a request");
        assert_eq!(body, format!("answer {n}"));
        // Direct operations never fail either: they miss or are skipped.
        cache.insert(key("direct", n), CachedResponse::full(Bytes::from_static(b"x")));
        let _ = cache.lookup(&key("absent", n)).await;
    }
    assert_eq!(calls.load(Ordering::SeqCst), 60);
    assert!(l2.errors() > 0, "the bypasses were counted");
    // Memory still serves what it holds.
    assert!(cache.get(&key("t", 59)).is_some());

    // Redis back on the same port: sharing resumes without a restart of the router.
    let restarted = RedisServer::start(Some(server.port)).unwrap();
    let other = ResponseCache::new(
        "responses",
        1 << 20,
        Duration::from_secs(60),
        Some(connected(&restarted.settings()).await),
    );
    let mut shared = false;
    for n in 100..200 {
        cache.insert(key("t", n), CachedResponse::full(Bytes::from_static(b"again")));
        tokio::time::sleep(Duration::from_millis(100)).await;
        if other.lookup(&key("t", n)).await.is_some() {
            shared = true;
            break;
        }
    }
    assert!(shared, "the connection manager reconnected");
}
