//! Complete responses and the byte-bounded, tenant-scoped cache that holds them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use metrics::{Counter, counter};
use switchyard_core::ResponseBody;
use switchyard_core::sse::SseBoundary;

use crate::key::CacheKey;
use crate::lru::ByteLru;
use crate::metrics::{HITS, MISSES};
use crate::redis_l2::RedisL2;

/// Bytes charged per entry on top of its body: the key, the tenant, bookkeeping.
const ENTRY_OVERHEAD: usize = 128;
/// Bytes charged per stored chunk on top of its length.
const CHUNK_OVERHEAD: usize = 32;
/// First bytes of a value in Redis: format and version.
const MAGIC: &[u8; 4] = b"SYC1";

/// A complete, successful response, as stored and replayed.
///
/// There is deliberately no constructor from arbitrary chunks or from an error: a
/// whole body is [`CachedResponse::full`], a stream only becomes one through
/// [`StreamRecorder::finish`] after it ended cleanly. Cloning is cheap (reference
/// counts), and every client replaying it gets the same bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CachedResponse {
    body: Stored,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Stored {
    Full(Bytes),
    Stream(Arc<[Bytes]>),
}

/// Records a streamed body while it is relayed; [`finish`](Self::finish) is the
/// explicit "it completed" step that makes it storable.
#[derive(Debug)]
pub struct StreamRecorder {
    chunks: Vec<Bytes>,
    bytes: usize,
    limit: usize,
    overflowed: bool,
    boundary: SseBoundary,
}

/// A byte-bounded TTL cache of complete responses by [`CacheKey`], optionally backed
/// by Redis. Cheap to clone; clones share the cache.
///
/// Lookups in memory take no lock (see the crate docs). Entries are scoped by tenant
/// through the key; values read back from Redis carry a tenant tag that must match.
#[derive(Clone)]
pub struct ResponseCache {
    inner: Arc<ResponseInner>,
}

/// Counters of a [`ResponseCache`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheStats {
    /// Lookups answered from memory.
    pub hits: u64,
    /// Lookups answered from Redis.
    pub redis_hits: u64,
    /// Lookups answered by neither.
    pub misses: u64,
    /// Entries evicted to make room.
    pub evictions: u64,
    /// Entries dropped because they expired.
    pub expirations: u64,
    /// Bytes held, as accounted against `max_bytes`.
    pub bytes: usize,
    /// The bound.
    pub max_bytes: usize,
    /// Entries held.
    pub entries: usize,
}

struct ResponseInner {
    name: &'static str,
    lru: ByteLru<CachedResponse>,
    ttl: Duration,
    l2: Option<RedisL2>,
    redis_hits: AtomicU64,
    redis_hit_counter: Counter,
    miss_counter: Counter,
}

impl CachedResponse {
    /// A whole (non-streamed) body.
    pub fn full(body: Bytes) -> Self {
        CachedResponse { body: Stored::Full(body) }
    }

    /// Whether it replays as a stream.
    pub fn is_stream(&self) -> bool {
        matches!(self.body, Stored::Stream(_))
    }

    /// The chunks as they were received (one for a whole body).
    pub fn chunks(&self) -> &[Bytes] {
        match &self.body {
            Stored::Full(body) => std::slice::from_ref(body),
            Stored::Stream(chunks) => chunks,
        }
    }

    /// The whole body: the stored bytes themselves for a whole body, the chunks
    /// concatenated for a stream.
    pub fn body(&self) -> Bytes {
        match &self.body {
            Stored::Full(body) => body.clone(),
            Stored::Stream(chunks) => concat(chunks),
        }
    }

    /// The body length in bytes.
    pub fn len(&self) -> usize {
        self.chunks().iter().map(Bytes::len).sum()
    }

    /// Whether the body is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A response body to send: the same bytes, streamed chunk by chunk if it was a
    /// stream.
    pub fn into_body(self) -> ResponseBody {
        match self.body {
            Stored::Full(body) => ResponseBody::Full(body),
            Stored::Stream(chunks) => {
                let items = (0..chunks.len()).map(move |i| Ok(chunks[i].clone()));
                ResponseBody::Stream(Box::pin(futures_util::stream::iter(items)))
            }
        }
    }

    /// A completed stream. Only the flight and the recorder decide a stream is complete.
    pub(crate) fn completed_stream(chunks: Vec<Bytes>) -> Self {
        CachedResponse { body: Stored::Stream(chunks.into()) }
    }

    /// Bytes charged against a cache's bound for this response under `key`.
    pub(crate) fn weight(&self, key: &CacheKey) -> usize {
        let chunks = self.chunks();
        ENTRY_OVERHEAD
            + key.tenant().len()
            + chunks.iter().map(|c| c.len() + CHUNK_OVERHEAD).sum::<usize>()
    }

    /// The Redis encoding: magic, tenant tag, kind, chunk count, length-prefixed chunks.
    pub(crate) fn encode(&self, key: &CacheKey) -> Vec<u8> {
        let chunks = self.chunks();
        let mut out = Vec::with_capacity(32 + self.len() + 4 * chunks.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&key.tenant_tag());
        out.push(u8::from(self.is_stream()));
        out.extend_from_slice(&(chunks.len() as u32).to_le_bytes());
        for chunk in chunks {
            out.extend_from_slice(&(chunk.len() as u32).to_le_bytes());
            out.extend_from_slice(chunk);
        }
        out
    }

    /// Decode a Redis value stored for `key`; `None` if malformed or another tenant's.
    pub(crate) fn decode(key: &CacheKey, raw: Vec<u8>) -> Option<Self> {
        let raw = Bytes::from(raw);
        let mut reader = Reader { raw: &raw, at: 0 };
        if reader.take(4)? != MAGIC || reader.take(16)? != key.tenant_tag() {
            return None;
        }
        let stream = match reader.take(1)? {
            [0] => false,
            [1] => true,
            _ => return None,
        };
        let count = reader.u32()? as usize;
        if !stream && count != 1 {
            return None;
        }
        let mut chunks = Vec::with_capacity(count.min(4096));
        for _ in 0..count {
            let len = reader.u32()? as usize;
            let start = reader.at;
            reader.take(len)?;
            chunks.push(raw.slice(start..start + len));
        }
        if reader.at != raw.len() {
            return None;
        }
        Some(if stream {
            CachedResponse::completed_stream(chunks)
        } else {
            CachedResponse::full(chunks.pop()?)
        })
    }
}

/// A bounds-checked cursor over a Redis value.
struct Reader<'a> {
    raw: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let piece = self.raw.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(piece)
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
}

impl StreamRecorder {
    /// A recorder that gives up (stores nothing) past `limit` body bytes.
    pub fn new(limit: usize) -> Self {
        StreamRecorder {
            chunks: Vec::new(),
            bytes: 0,
            limit,
            overflowed: false,
            boundary: SseBoundary::new(),
        }
    }

    /// Record the next chunk as it is relayed.
    pub fn record(&mut self, chunk: &Bytes) {
        if self.overflowed || chunk.is_empty() {
            return;
        }
        self.bytes += chunk.len();
        if self.bytes > self.limit {
            self.overflowed = true;
            self.chunks = Vec::new();
            return;
        }
        self.boundary.scan(chunk);
        self.chunks.push(chunk.clone());
    }

    /// The stream ended without error: the storable response, unless it grew past
    /// the limit or stopped in the middle of an event (then it was not complete).
    /// A stream that failed must simply be dropped instead.
    pub fn finish(self) -> Option<CachedResponse> {
        (!self.overflowed && self.boundary.at_boundary())
            .then(|| CachedResponse::completed_stream(self.chunks))
    }
}

impl ResponseCache {
    /// An empty cache named `name` (the metrics label and the Redis namespace) holding
    /// at most `max_bytes`, serving entries for `ttl`, shared through `l2` if given.
    pub fn new(name: &'static str, max_bytes: usize, ttl: Duration, l2: Option<RedisL2>) -> Self {
        ResponseCache {
            inner: Arc::new(ResponseInner {
                name,
                lru: ByteLru::new(name, max_bytes),
                ttl,
                l2,
                redis_hits: AtomicU64::new(0),
                redis_hit_counter: counter!(HITS, "cache" => name, "tier" => "redis"),
                miss_counter: counter!(MISSES, "cache" => name),
            }),
        }
    }

    /// The entry for `key` in memory. Lock-free; never touches Redis.
    pub fn get(&self, key: &CacheKey) -> Option<CachedResponse> {
        let found = self.memory_get(key);
        if found.is_none() {
            self.record_miss();
        }
        found
    }

    /// The entry for `key` in memory, else in Redis (copied into memory). A Redis
    /// failure is a miss, bounded by `cache.redis.timeout`.
    pub async fn lookup(&self, key: &CacheKey) -> Option<CachedResponse> {
        if let Some(found) = self.memory_get(key) {
            return Some(found);
        }
        let found = self.redis_get(key).await;
        if found.is_none() {
            self.record_miss();
        }
        found
    }

    /// Store a complete response for `key` in memory and (in the background) in
    /// Redis. Returns false if it is larger than the whole cache.
    pub fn insert(&self, key: CacheKey, response: CachedResponse) -> bool {
        self.insert_for(key, response, self.inner.ttl, true)
    }

    /// Forget `key` in memory (Redis entries expire on their own).
    pub fn remove(&self, key: &CacheKey) -> bool {
        self.inner.lru.remove(key)
    }

    /// Drop expired entries now, returning how many. Expired entries are never served
    /// and are reclaimed when space is needed anyway; call this from a timer to
    /// release their memory sooner.
    pub fn purge_expired(&self) -> usize {
        self.inner.lru.purge_expired()
    }

    /// The counters.
    pub fn stats(&self) -> CacheStats {
        let lru = self.inner.lru.stats();
        let redis_hits = self.inner.redis_hits.load(Ordering::Relaxed);
        CacheStats {
            hits: lru.hits,
            redis_hits,
            misses: lru.misses.saturating_sub(redis_hits),
            evictions: lru.evictions,
            expirations: lru.expirations,
            bytes: lru.bytes,
            max_bytes: self.inner.lru.max_bytes(),
            entries: lru.entries,
        }
    }

    /// The name given at construction.
    pub fn name(&self) -> &'static str {
        self.inner.name
    }

    /// How long entries are served.
    pub fn ttl(&self) -> Duration {
        self.inner.ttl
    }

    /// Whether a Redis tier is configured.
    pub(crate) fn has_redis(&self) -> bool {
        self.inner.l2.is_some()
    }

    /// Memory lookup counting a hit, or a memory miss that a Redis hit may cancel.
    pub(crate) fn memory_get(&self, key: &CacheKey) -> Option<CachedResponse> {
        self.inner.lru.get(key)
    }

    /// Memory lookup without counting.
    pub(crate) fn peek(&self, key: &CacheKey) -> Option<CachedResponse> {
        self.inner.lru.peek(key)
    }

    pub(crate) fn record_miss(&self) {
        self.inner.miss_counter.increment(1);
    }

    /// Redis lookup after a memory miss; a hit is copied into memory and counted.
    pub(crate) async fn redis_get(&self, key: &CacheKey) -> Option<CachedResponse> {
        let l2 = self.inner.l2.as_ref()?;
        let (raw, ttl_left) = l2.get(self.inner.name, key).await?;
        let Some(found) = CachedResponse::decode(key, raw) else {
            l2.count_error(self.inner.name, "decode");
            return None;
        };
        self.inner.redis_hits.fetch_add(1, Ordering::Relaxed);
        self.inner.redis_hit_counter.increment(1);
        let ttl = ttl_left.map_or(self.inner.ttl, |left| left.min(self.inner.ttl));
        self.insert_for(key.clone(), found.clone(), ttl, false);
        Some(found)
    }

    fn insert_for(
        &self,
        key: CacheKey,
        response: CachedResponse,
        ttl: Duration,
        to_redis: bool,
    ) -> bool {
        let weight = response.weight(&key);
        let redis = if to_redis { self.inner.l2.clone() } else { None };
        let value = redis.as_ref().map(|_| response.encode(&key));
        let stored = self.inner.lru.insert(key.clone(), response, weight, ttl);
        if let (Some(l2), Some(value), Ok(runtime)) =
            (redis, value, tokio::runtime::Handle::try_current())
        {
            let name = self.inner.name;
            runtime.spawn(async move { l2.set(name, &key, value, ttl).await });
        }
        stored
    }
}

fn concat(chunks: &[Bytes]) -> Bytes {
    let mut out = BytesMut::with_capacity(chunks.iter().map(Bytes::len).sum());
    for chunk in chunks {
        out.extend_from_slice(chunk);
    }
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use switchyard_core::Endpoint;

    fn key(tenant: &str) -> CacheKey {
        CacheKey::compute(tenant, Endpoint::ChatCompletions, br#"{"model":"m"}"#).unwrap()
    }

    #[test]
    fn redis_encoding_round_trips_and_checks_the_tenant() {
        let full = CachedResponse::full(Bytes::from_static(b"{\"ok\":true}"));
        let stream = CachedResponse::completed_stream(vec![
            Bytes::from_static(b"data: 1\n\n"),
            Bytes::from_static(b"data: [DONE]\n\n"),
        ]);
        for response in [full, stream] {
            let raw = response.encode(&key("a"));
            assert_eq!(CachedResponse::decode(&key("a"), raw.clone()), Some(response.clone()));
            assert_eq!(CachedResponse::decode(&key("b"), raw.clone()), None, "other tenant");
            for cut in [0, 3, 20, raw.len() - 1] {
                assert_eq!(CachedResponse::decode(&key("a"), raw[..cut].to_vec()), None);
            }
            let mut longer = raw.clone();
            longer.push(0);
            assert_eq!(CachedResponse::decode(&key("a"), longer), None);
        }
    }

    #[test]
    fn recorder_stores_only_complete_streams() {
        let mut ok = StreamRecorder::new(1000);
        ok.record(&Bytes::from_static(b"data: {\"a\":1}\n\nda"));
        ok.record(&Bytes::from_static(b"ta: [DONE]\n\n"));
        let stored = ok.finish().unwrap();
        assert!(stored.is_stream());
        assert_eq!(&stored.body()[..], b"data: {\"a\":1}\n\ndata: [DONE]\n\n");

        let mut cut = StreamRecorder::new(1000);
        cut.record(&Bytes::from_static(b"data: {\"a\":1}\n\ndata: {\"b\""));
        assert_eq!(cut.finish(), None, "ended mid-event");

        let mut big = StreamRecorder::new(10);
        big.record(&Bytes::from_static(b"data: 0123456789\n\n"));
        assert_eq!(big.finish(), None, "over the limit");
    }

    #[tokio::test(start_paused = true)]
    async fn caches_by_tenant_and_replays_streams() {
        let cache = ResponseCache::new("responses", 1 << 20, Duration::from_secs(10), None);
        let mut recorder = StreamRecorder::new(1 << 20);
        for chunk in ["data: a\n\n", "data: b\n\n", "data: [DONE]\n\n"] {
            recorder.record(&Bytes::from_static(chunk.as_bytes()));
        }
        assert!(cache.insert(key("a"), recorder.finish().unwrap()));
        assert_eq!(cache.get(&key("b")), None);
        let hit = cache.lookup(&key("a")).await.unwrap();
        let ResponseBody::Stream(mut stream) = hit.into_body() else { panic!("a stream") };
        let mut chunks = Vec::new();
        while let Some(chunk) = stream.next().await {
            chunks.push(chunk.unwrap());
        }
        assert_eq!(chunks, vec!["data: a\n\n", "data: b\n\n", "data: [DONE]\n\n"]);
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(cache.get(&key("a")), None, "expired");
        let stats = cache.stats();
        assert_eq!((stats.hits, stats.misses, stats.redis_hits), (1, 2, 0));
        assert!(stats.bytes > 0 && stats.bytes <= stats.max_bytes);
    }
}
