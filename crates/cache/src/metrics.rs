//! Metric names and descriptions. Every metric carries a `cache` label naming the
//! cache: `responses`, `dedup` or `models`.

use metrics::{Unit, describe_counter, describe_gauge};

/// Lookups answered from a cache; label `tier` is `memory` or `redis`.
pub const HITS: &str = "switchyard_cache_hits_total";
/// Lookups that found nothing usable.
pub const MISSES: &str = "switchyard_cache_misses_total";
/// Entries removed to make room (`reason="capacity"`) or because they expired
/// (`reason="expired"`).
pub const EVICTIONS: &str = "switchyard_cache_evictions_total";
/// Bytes held by a cache's entries, as accounted against its `max_bytes`.
pub const ENTRY_BYTES: &str = "switchyard_cache_entry_bytes";
/// Entries held by a cache.
pub const ENTRIES: &str = "switchyard_cache_entries";
/// Requests currently waiting on another request's upstream call (followers).
pub const DEDUP_WAITERS: &str = "switchyard_cache_dedup_waiters";
/// Single-flight joins; label `role` is `leader`, `follower` or `cached`.
pub const DEDUP_JOINS: &str = "switchyard_cache_dedup_joins_total";
/// Redis operations that failed, timed out or found Redis unavailable; the cache was
/// bypassed. Label `op` is `get`, `set` or `connect`.
pub const REDIS_ERRORS: &str = "switchyard_cache_redis_errors_total";
/// Background model-list refreshes; label `result` is `ok` or `error`.
pub const MODEL_REFRESHES: &str = "switchyard_cache_model_refreshes_total";

/// Register descriptions with the installed recorder. Call once after installing it.
pub fn describe() {
    describe_counter!(HITS, Unit::Count, "cache lookups answered from the cache");
    describe_counter!(MISSES, Unit::Count, "cache lookups that found nothing usable");
    describe_counter!(EVICTIONS, Unit::Count, "cache entries evicted for room or expiry");
    describe_gauge!(ENTRY_BYTES, Unit::Bytes, "bytes held by cache entries");
    describe_gauge!(ENTRIES, Unit::Count, "entries held by a cache");
    describe_gauge!(DEDUP_WAITERS, Unit::Count, "requests waiting on a shared upstream call");
    describe_counter!(DEDUP_JOINS, Unit::Count, "single-flight joins by role");
    describe_counter!(REDIS_ERRORS, Unit::Count, "redis operations that failed; cache bypassed");
    describe_counter!(MODEL_REFRESHES, Unit::Count, "background model-list refreshes by result");
}
