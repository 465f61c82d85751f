//! A byte-bounded map with TTL and approximate-LRU eviction whose reads take no lock.
//!
//! Reads: the key picks one of N shards; each shard is an immutable `HashMap` behind
//! an [`ArcSwap`], so a lookup is an `ArcSwap` load (no shared write in its fast path),
//! a hash probe, a relaxed load (and, the first time after an eviction pass, a
//! relaxed store) of the entry's "referenced" bit, and the clone of the value. Readers
//! never wait for each other or for a writer.
//!
//! Writes (insert, remove, evict, purge) are serialised by one mutex and replace the
//! affected shard's map with an edited copy. Copy cost is proportional to the shard's
//! size, so the shard count grows with `max_bytes` (one shard per 256 KiB, 8 to 1024):
//! inserts happen once per upstream call, lookups once per request.
//!
//! Eviction is CLOCK (second chance) over insertion order: the oldest entry is evicted
//! unless it was read since the hand last passed it, in which case its bit is cleared
//! and it goes to the back. That is the classic LRU approximation that needs no write
//! to shared state on a hit. Expired entries are evicted first when the hand meets
//! them, or all at once by [`ByteLru::purge_expired`].
//!
//! Every mutation happens under the writer mutex and checks the byte total before
//! inserting, so the accounted bytes never exceed `max_bytes`.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use metrics::{Counter, Gauge, counter, gauge};
use parking_lot::Mutex;
use tokio::time::Instant;

use crate::key::CacheKey;
use crate::metrics::{ENTRIES, ENTRY_BYTES, EVICTIONS, HITS};

/// Bytes of key space per shard; see the module docs.
const BYTES_PER_SHARD: usize = 256 << 10;

type ShardMap<V> = HashMap<CacheKey, Arc<Slot<V>>, DigestState>;

pub(crate) struct ByteLru<V> {
    shards: Box<[ArcSwap<ShardMap<V>>]>,
    stripes: Box<[Stripe]>,
    mask: usize,
    hasher: DigestState,
    writer: Mutex<Writer<V>>,
    max_bytes: usize,
    bytes: AtomicUsize,
    entries: AtomicUsize,
    evictions: AtomicU64,
    expirations: AtomicU64,
    metrics: LruMetrics,
}

/// Counters of one [`ByteLru`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct LruStats {
    pub(crate) hits: u64,
    pub(crate) misses: u64,
    pub(crate) evictions: u64,
    pub(crate) expirations: u64,
    pub(crate) bytes: usize,
    pub(crate) entries: usize,
}

struct Slot<V> {
    key: CacheKey,
    value: V,
    weight: usize,
    expires_at: Instant,
    referenced: AtomicBool,
    live: AtomicBool,
}

struct Writer<V> {
    /// CLOCK order: every live slot once, plus dead slots not yet skipped.
    queue: VecDeque<Arc<Slot<V>>>,
    total: usize,
    live: usize,
}

/// Hit and miss counters, one per shard on its own cache line, so readers of different
/// shards never write the same line.
#[repr(align(128))]
#[derive(Default)]
struct Stripe {
    hits: AtomicU64,
    misses: AtomicU64,
}

struct LruMetrics {
    hits: Counter,
    capacity: Counter,
    expired: Counter,
    bytes: Gauge,
    entries: Gauge,
}

/// Hashes a [`CacheKey`] (already a uniform digest, but of *public* keying) with a
/// per-process random folded multiply, so nobody can craft keys that pile into one
/// bucket of our maps.
#[derive(Clone, Copy)]
struct DigestState {
    k0: u64,
    k1: u64,
}

struct DigestHasher {
    h: u64,
    k: u64,
}

impl<V: Clone> ByteLru<V> {
    /// An empty cache named `name` (the metrics label) holding at most `max_bytes`.
    pub(crate) fn new(name: &'static str, max_bytes: usize) -> Self {
        let count = (max_bytes / BYTES_PER_SHARD).clamp(8, 1024).next_power_of_two();
        let hasher = DigestState::random();
        let shards =
            (0..count).map(|_| ArcSwap::from_pointee(HashMap::with_hasher(hasher))).collect();
        let stripes = (0..count).map(|_| Stripe::default()).collect();
        ByteLru {
            shards,
            stripes,
            mask: count - 1,
            hasher,
            writer: Mutex::new(Writer { queue: VecDeque::new(), total: 0, live: 0 }),
            max_bytes,
            bytes: AtomicUsize::new(0),
            entries: AtomicUsize::new(0),
            evictions: AtomicU64::new(0),
            expirations: AtomicU64::new(0),
            metrics: LruMetrics {
                hits: counter!(HITS, "cache" => name, "tier" => "memory"),
                capacity: counter!(EVICTIONS, "cache" => name, "reason" => "capacity"),
                expired: counter!(EVICTIONS, "cache" => name, "reason" => "expired"),
                bytes: gauge!(ENTRY_BYTES, "cache" => name),
                entries: gauge!(ENTRIES, "cache" => name),
            },
        }
    }

    fn shard_of(&self, key: &CacheKey) -> usize {
        (self.hasher.hash_one(key) >> 40) as usize & self.mask
    }

    /// The live value for `key`, marking it recently used. Counts a hit or a miss.
    pub(crate) fn get(&self, key: &CacheKey) -> Option<V> {
        let index = self.shard_of(key);
        let now = Instant::now();
        let found = {
            let map = self.shards[index].load();
            map.get(key).filter(|slot| slot.expires_at > now).map(|slot| {
                if !slot.referenced.load(Ordering::Relaxed) {
                    slot.referenced.store(true, Ordering::Relaxed);
                }
                slot.value.clone()
            })
        };
        let stripe = &self.stripes[index];
        if found.is_some() {
            stripe.hits.fetch_add(1, Ordering::Relaxed);
            self.metrics.hits.increment(1);
        } else {
            stripe.misses.fetch_add(1, Ordering::Relaxed);
        }
        found
    }

    /// The live value for `key`, without counting or marking it.
    pub(crate) fn peek(&self, key: &CacheKey) -> Option<V> {
        let now = Instant::now();
        let map = self.shards[self.shard_of(key)].load();
        map.get(key).filter(|slot| slot.expires_at > now).map(|slot| slot.value.clone())
    }

    /// The time to live left for `key`, if it is live.
    #[cfg(test)]
    pub(crate) fn ttl_left(&self, key: &CacheKey) -> Option<Duration> {
        let now = Instant::now();
        let map = self.shards[self.shard_of(key)].load();
        map.get(key).filter(|slot| slot.expires_at > now).map(|slot| slot.expires_at - now)
    }

    /// Store `value`, accounted as `weight` bytes, for `ttl`, replacing any entry for
    /// `key` and evicting others as needed. Returns false (and stores nothing) if it
    /// can never fit or `ttl` is zero.
    pub(crate) fn insert(&self, key: CacheKey, value: V, weight: usize, ttl: Duration) -> bool {
        if weight > self.max_bytes || ttl.is_zero() {
            return false;
        }
        let now = Instant::now();
        let Some(expires_at) = now.checked_add(ttl) else {
            return false;
        };
        let index = self.shard_of(&key);
        let slot = Arc::new(Slot {
            key,
            value,
            weight,
            expires_at,
            referenced: AtomicBool::new(false),
            live: AtomicBool::new(true),
        });
        let mut writer = self.writer.lock();
        if let Some(old) = self.shards[index].load().get(&slot.key) {
            // Replaced below, in the same copy of the shard.
            old.live.store(false, Ordering::Relaxed);
            writer.total -= old.weight;
            writer.live -= 1;
        }
        while writer.total + weight > self.max_bytes {
            let Some(victim) = writer.queue.pop_front() else { break };
            if !victim.live.load(Ordering::Relaxed) {
                continue;
            }
            let expired = victim.expires_at <= now;
            if !expired && victim.referenced.swap(false, Ordering::Relaxed) {
                writer.queue.push_back(victim);
                continue;
            }
            self.unlink(&mut writer, &victim);
            if expired {
                self.expirations.fetch_add(1, Ordering::Relaxed);
                self.metrics.expired.increment(1);
            } else {
                self.evictions.fetch_add(1, Ordering::Relaxed);
                self.metrics.capacity.increment(1);
            }
        }
        if writer.total + weight > self.max_bytes {
            // Unreachable while the queue holds every live slot; never break the bound.
            let current = self.shards[index].load();
            if current.get(&slot.key).is_some_and(|old| !old.live.load(Ordering::Relaxed)) {
                let mut map = ShardMap::clone(&current);
                map.remove(&slot.key);
                self.shards[index].store(Arc::new(map));
            }
            self.publish(&writer);
            return false;
        }
        let mut map = ShardMap::clone(&self.shards[index].load());
        map.insert(slot.key.clone(), Arc::clone(&slot));
        self.shards[index].store(Arc::new(map));
        writer.total += weight;
        writer.live += 1;
        writer.queue.push_back(slot);
        if writer.queue.len() > 2 * writer.live + 64 {
            writer.queue.retain(|slot| slot.live.load(Ordering::Relaxed));
        }
        self.publish(&writer);
        true
    }

    /// Remove `key`; returns whether it was present (live or expired).
    pub(crate) fn remove(&self, key: &CacheKey) -> bool {
        let mut writer = self.writer.lock();
        let Some(slot) = self.shards[self.shard_of(key)].load().get(key).cloned() else {
            return false;
        };
        self.unlink(&mut writer, &slot);
        self.publish(&writer);
        true
    }

    /// Drop every expired entry now; returns how many.
    pub(crate) fn purge_expired(&self) -> usize {
        let now = Instant::now();
        let mut writer = self.writer.lock();
        let mut purged = 0;
        for shard in self.shards.iter() {
            let current = shard.load();
            if !current.values().any(|slot| slot.expires_at <= now) {
                continue;
            }
            let mut map = ShardMap::clone(&current);
            map.retain(|_, slot| {
                if slot.expires_at > now {
                    return true;
                }
                slot.live.store(false, Ordering::Relaxed);
                writer.total -= slot.weight;
                writer.live -= 1;
                purged += 1;
                false
            });
            shard.store(Arc::new(map));
        }
        writer.queue.retain(|slot| slot.live.load(Ordering::Relaxed));
        self.expirations.fetch_add(purged as u64, Ordering::Relaxed);
        self.metrics.expired.increment(purged as u64);
        self.publish(&writer);
        purged
    }

    pub(crate) fn stats(&self) -> LruStats {
        let (mut hits, mut misses) = (0, 0);
        for stripe in self.stripes.iter() {
            hits += stripe.hits.load(Ordering::Relaxed);
            misses += stripe.misses.load(Ordering::Relaxed);
        }
        LruStats {
            hits,
            misses,
            evictions: self.evictions.load(Ordering::Relaxed),
            expirations: self.expirations.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            entries: self.entries.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// Take `slot` out of its shard and the byte total. Call with the writer lock.
    fn unlink(&self, writer: &mut Writer<V>, slot: &Arc<Slot<V>>) {
        if !slot.live.swap(false, Ordering::Relaxed) {
            return;
        }
        writer.total -= slot.weight;
        writer.live -= 1;
        let shard = &self.shards[self.shard_of(&slot.key)];
        let current = shard.load();
        if current.get(&slot.key).is_some_and(|s| Arc::ptr_eq(s, slot)) {
            let mut map = ShardMap::clone(&current);
            map.remove(&slot.key);
            shard.store(Arc::new(map));
        }
    }

    fn publish(&self, writer: &Writer<V>) {
        self.bytes.store(writer.total, Ordering::Relaxed);
        self.entries.store(writer.live, Ordering::Relaxed);
        self.metrics.bytes.set(writer.total as f64);
        self.metrics.entries.set(writer.live as f64);
    }
}

impl DigestState {
    fn random() -> Self {
        // std's RandomState is randomly keyed per process; use it as a seed source.
        let seed = std::collections::hash_map::RandomState::new();
        DigestState { k0: seed.hash_one(0x5eed_u64), k1: seed.hash_one(0xc0ffee_u64) | 1 }
    }
}

impl BuildHasher for DigestState {
    type Hasher = DigestHasher;

    fn build_hasher(&self) -> DigestHasher {
        DigestHasher { h: self.k0, k: self.k1 }
    }
}

impl Hasher for DigestHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut buf = [0u8; 8];
            buf[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(buf));
        }
    }

    fn write_u64(&mut self, x: u64) {
        let product = u128::from(self.h ^ x) * u128::from(self.k);
        self.h = (product as u64) ^ ((product >> 64) as u64);
    }

    fn finish(&self) -> u64 {
        self.h
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn k(n: u8) -> CacheKey {
        CacheKey::from_parts([n; 16], "t")
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[tokio::test(start_paused = true)]
    async fn evicts_the_least_recently_used_first() {
        let lru = ByteLru::new("test", 300);
        for n in 0..3 {
            assert!(lru.insert(k(n), n, 100, HOUR));
        }
        assert_eq!(lru.get(&k(0)), Some(0));
        assert!(lru.insert(k(3), 3, 100, HOUR));
        assert_eq!(lru.peek(&k(1)), None, "the oldest unread entry goes");
        assert_eq!(lru.peek(&k(0)), Some(0), "a read entry gets a second chance");
        assert_eq!(lru.stats().evictions, 1);
        assert_eq!(lru.stats().bytes, 300);
    }

    #[tokio::test(start_paused = true)]
    async fn expires_and_purges() {
        let lru = ByteLru::new("test", 1000);
        assert!(lru.insert(k(1), "a", 10, Duration::from_secs(5)));
        assert!(lru.insert(k(2), "b", 10, Duration::from_secs(50)));
        tokio::time::advance(Duration::from_secs(4)).await;
        assert_eq!(lru.get(&k(1)), Some("a"));
        assert_eq!(lru.ttl_left(&k(1)), Some(Duration::from_secs(1)));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(lru.get(&k(1)), None);
        assert_eq!(lru.stats().entries, 2, "expired entries hold their bytes until purged");
        assert_eq!(lru.purge_expired(), 1);
        assert_eq!(
            lru.stats(),
            LruStats { hits: 1, misses: 1, evictions: 0, expirations: 1, bytes: 10, entries: 1 }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn rejects_what_can_never_fit_and_replaces_in_place() {
        let lru = ByteLru::new("test", 100);
        assert!(!lru.insert(k(1), 1, 101, HOUR));
        assert!(!lru.insert(k(1), 1, 10, Duration::ZERO));
        assert!(lru.insert(k(1), 1, 60, HOUR));
        assert!(lru.insert(k(1), 2, 90, HOUR), "replacing frees the old bytes first");
        assert_eq!(lru.peek(&k(1)), Some(2));
        assert_eq!(lru.stats().bytes, 90);
        assert!(lru.remove(&k(1)));
        assert!(!lru.remove(&k(1)));
        assert_eq!(lru.stats().bytes, 0);
    }

    #[test]
    fn tenants_never_share_entries() {
        let lru = ByteLru::new("test", 1000);
        let a = CacheKey::from_parts([9; 16], "a");
        let b = CacheKey::from_parts([9; 16], "b");
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        rt.block_on(async {
            assert!(lru.insert(a.clone(), "for a", 10, HOUR));
            assert_eq!(lru.get(&b), None);
            assert_eq!(lru.get(&a), Some("for a"));
        });
    }

    #[derive(Clone, Debug)]
    enum Op {
        Insert(u8, usize, u64),
        Get(u8),
        Remove(u8),
        Advance(u64),
        Purge,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u8..24, 0usize..400, 1u64..20).prop_map(|(k, w, t)| Op::Insert(k, w, t)),
            3 => (0u8..24).prop_map(Op::Get),
            1 => (0u8..24).prop_map(Op::Remove),
            1 => (1u64..10).prop_map(Op::Advance),
            1 => Just(Op::Purge),
        ]
    }

    proptest! {
        /// Whatever happens, the accounted bytes never exceed the bound, they equal the
        /// sum of the live entries' weights, and a read returns the latest value or nothing.
        #[test]
        fn never_exceeds_its_byte_bound(max in 1usize..2000, ops in prop::collection::vec(op(), 1..200)) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
            rt.block_on(async {
                let lru = ByteLru::new("prop", max);
                let mut latest: HashMap<u8, (usize, usize)> = HashMap::new();
                let mut version = 0usize;
                for op in ops {
                    match op {
                        Op::Insert(key, weight, ttl) => {
                            version += 1;
                            if lru.insert(k(key), version, weight, Duration::from_secs(ttl)) {
                                latest.insert(key, (version, weight));
                            } else {
                                prop_assert!(weight > max);
                            }
                        }
                        Op::Get(key) => {
                            if let Some(v) = lru.get(&k(key)) {
                                prop_assert_eq!(Some(v), latest.get(&key).map(|e| e.0));
                            }
                        }
                        Op::Remove(key) => {
                            lru.remove(&k(key));
                            latest.remove(&key);
                        }
                        Op::Advance(secs) => tokio::time::advance(Duration::from_secs(secs)).await,
                        Op::Purge => {
                            lru.purge_expired();
                        }
                    }
                    let stats = lru.stats();
                    prop_assert!(stats.bytes <= max, "{} > {}", stats.bytes, max);
                    let live: usize = lru.shards.iter().flat_map(|s| s.load().values().map(|slot| slot.weight).collect::<Vec<_>>()).sum();
                    prop_assert_eq!(live, stats.bytes);
                }
                Ok(())
            })?;
        }
    }
}
