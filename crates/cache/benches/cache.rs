//! Benchmarks: key computation, lookup latency, and concurrent readers.
//!
//! `cargo bench -p switchyard-cache` runs everything; `-- key`, `-- lookup` or
//! `-- readers` one group. The `readers` group compares the crate's read path with a
//! global `Mutex<HashMap>`, sharded `parking_lot::RwLock<HashMap>`s and sharded
//! `ArcSwap<HashMap>`s (the crate's map without TTL and counters) doing the same
//! work (find the entry, clone its `Bytes`), at 1, 2 and 4 threads: a read path that
//! does not serialise gets faster per lookup as threads are added (up to the cores).
// cargo bench -p switchyard-cache

#![allow(missing_docs, clippy::unwrap_used, reason = "a benchmark harness, not library code")]

use std::collections::HashMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use parking_lot::{Mutex, RwLock};
use switchyard_cache::{CacheKey, CachedResponse, ResponseCache};
use switchyard_core::Endpoint;

fn chat_body(content_len: usize, turns: usize) -> Vec<u8> {
    let messages: Vec<serde_json::Value> = (0..turns)
        .map(|i| {
            serde_json::json!({
                "role": if i % 2 == 0 { "user" } else { "assistant" },
                "content": "lorem ipsum dolor sit amet ".repeat(content_len / 27 + 1)[..content_len].to_owned(),
            })
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "model": "gpt-4o-mini",
        "messages": messages,
        "temperature": 0,
        "max_tokens": 256,
        "stream": true,
        "stream_options": {"include_usage": true},
        "user": "end-user-17",
    }))
    .unwrap()
}

fn key(n: usize) -> CacheKey {
    CacheKey::compute(
        "tenant",
        Endpoint::ChatCompletions,
        format!(r#"{{"model":"m","n":{n}}}"#).as_bytes(),
    )
    .unwrap()
}

fn bench_key(c: &mut Criterion) {
    let mut group = c.benchmark_group("key");
    for (name, body) in [
        ("small_180B", chat_body(40, 1)),
        ("chat_2KB", chat_body(300, 6)),
        ("long_32KB", chat_body(2000, 16)),
    ] {
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_with_input(BenchmarkId::new("parse_only_baseline", name), &body, |b, body| {
            b.iter(|| serde_json::from_slice::<serde::de::IgnoredAny>(black_box(body)).unwrap())
        });
        group.bench_with_input(BenchmarkId::new("compute", name), &body, |b, body| {
            b.iter(|| {
                CacheKey::compute("tenant", Endpoint::ChatCompletions, black_box(body)).unwrap()
            })
        });
    }
    group.finish();
}

fn filled_cache(entries: usize) -> (tokio::runtime::Runtime, ResponseCache, Vec<CacheKey>) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    let cache = ResponseCache::new("bench", 256 << 20, Duration::from_secs(3600), None);
    let keys: Vec<CacheKey> = (0..entries).map(key).collect();
    let body = Bytes::from(vec![b'x'; 2048]);
    for k in &keys {
        assert!(cache.insert(k.clone(), CachedResponse::full(body.clone())));
    }
    (runtime, cache, keys)
}

fn bench_lookup(c: &mut Criterion) {
    let (_runtime, cache, keys) = filled_cache(10_000);
    let missing = key(usize::MAX);
    let mut group = c.benchmark_group("lookup");
    group.bench_function("hit_10k_entries", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 7919) % keys.len();
            black_box(cache.get(&keys[i]))
        })
    });
    group.bench_function("miss_10k_entries", |b| {
        b.iter(|| black_box(cache.get(black_box(&missing))))
    });
    group.bench_function("insert_replace_10k_entries", |b| {
        let body = CachedResponse::full(Bytes::from(vec![b'y'; 2048]));
        let mut i = 0;
        b.iter(|| {
            i = (i + 7919) % keys.len();
            cache.insert(keys[i].clone(), body.clone())
        })
    });
    group.finish();
}

/// The same read work behind a global lock, for comparison.
struct MutexMap(Mutex<HashMap<CacheKey, Bytes>>);
/// The same read work behind sharded reader-writer locks.
struct RwLockShards(Vec<RwLock<HashMap<CacheKey, Bytes>>>);
/// The same read work behind sharded copy-on-write maps (no lock on reads).
struct ArcSwapShards(Vec<arc_swap::ArcSwap<HashMap<CacheKey, Bytes>>>);

trait Read: Sync {
    fn read(&self, key: &CacheKey) -> Option<Bytes>;
}

impl Read for MutexMap {
    fn read(&self, key: &CacheKey) -> Option<Bytes> {
        self.0.lock().get(key).cloned()
    }
}

impl Read for RwLockShards {
    fn read(&self, key: &CacheKey) -> Option<Bytes> {
        let shard = key.digest()[0] as usize % self.0.len();
        self.0[shard].read().get(key).cloned()
    }
}

impl Read for ArcSwapShards {
    fn read(&self, key: &CacheKey) -> Option<Bytes> {
        let shard = key.digest()[0] as usize % self.0.len();
        self.0[shard].load().get(key).cloned()
    }
}

impl Read for ResponseCache {
    fn read(&self, key: &CacheKey) -> Option<Bytes> {
        // One clone of the stored body, like the others (`CachedResponse` holds `Bytes`).
        self.get(key).and_then(|r| r.chunks().first().cloned())
    }
}

/// `iters` lookups split over `threads` threads; each thread reads `keys` round-robin
/// from its own offset. Returns the wall time.
fn run_readers(reader: &dyn Read, keys: &[CacheKey], threads: usize, iters: u64) -> Duration {
    let per_thread = iters / threads as u64 + 1;
    let barrier = std::sync::Barrier::new(threads + 1);
    std::thread::scope(|scope| {
        for t in 0..threads {
            let barrier = &barrier;
            scope.spawn(move || {
                barrier.wait();
                let mut i = t * 131;
                for _ in 0..per_thread {
                    i = (i + 1) % keys.len();
                    black_box(reader.read(&keys[i]));
                }
            });
        }
        barrier.wait();
        let start = Instant::now();
        // The scope joins every thread before returning.
        start
    })
    .elapsed()
}

fn bench_readers(c: &mut Criterion) {
    let (runtime, cache, keys) = filled_cache(4096);
    let _guard = runtime.enter();
    let body = Bytes::from(vec![b'x'; 2048]);
    let mutex = MutexMap(Mutex::new(keys.iter().map(|k| (k.clone(), body.clone())).collect()));
    let rwlock = RwLockShards(
        (0..64)
            .map(|s| {
                RwLock::new(
                    keys.iter()
                        .filter(|k| k.digest()[0] as usize % 64 == s)
                        .map(|k| (k.clone(), body.clone()))
                        .collect(),
                )
            })
            .collect(),
    );
    let arcswap = ArcSwapShards(
        (0..64)
            .map(|s| {
                arc_swap::ArcSwap::from_pointee(
                    keys.iter()
                        .filter(|k| k.digest()[0] as usize % 64 == s)
                        .map(|k| (k.clone(), body.clone()))
                        .collect(),
                )
            })
            .collect(),
    );
    let hot: Vec<CacheKey> = keys[..1].to_vec();
    let readers: [(&str, &dyn Read); 4] = [
        ("switchyard", &cache),
        ("arcswap_shards", &arcswap),
        ("rwlock_shards", &rwlock),
        ("global_mutex", &mutex),
    ];
    for (workload, keys) in [("spread", &keys[..]), ("one_hot_key", &hot[..])] {
        let mut group = c.benchmark_group(format!("readers/{workload}"));
        for threads in [1usize, 2, 4] {
            for (name, reader) in readers {
                group.bench_with_input(BenchmarkId::new(name, threads), &threads, |b, &threads| {
                    b.iter_custom(|iters| run_readers(reader, keys, threads, iters))
                });
            }
        }
        group.finish();
    }
}

criterion_group!(benches, bench_key, bench_lookup, bench_readers);
criterion_main!(benches);
