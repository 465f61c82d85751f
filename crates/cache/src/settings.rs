//! Settings, mirroring the `cache` section of the configuration file. Every field has
//! a documented default; durations read as plain seconds (`30`, `0.5`) or with a unit
//! (`"500ms"`, `"30s"`, `"5m"`, `"1h"`).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `cache`: everything this crate needs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheSettings {
    /// `cache.model_cache_ttl`: how long a backend's model list is served without
    /// asking the backend again. Default 300 s.
    #[serde(with = "duration")]
    pub model_cache_ttl: Duration,
    /// `cache.model_cache_max_stale`: how long past `model_cache_ttl` a backend's last
    /// good list is still served while refreshes fail (the backend is down). Default
    /// 3600 s.
    #[serde(with = "duration")]
    pub model_cache_max_stale: Duration,
    /// `cache.model_fetch_timeout`: the longest a model-list fetch may take. Default 10 s.
    #[serde(with = "duration")]
    pub model_fetch_timeout: Duration,
    /// `cache.deduplication`.
    pub deduplication: DedupSettings,
    /// `cache.response`.
    pub response: ResponseCacheSettings,
    /// `cache.redis`.
    pub redis: RedisSettings,
}

/// `cache.deduplication`: single-flight sharing of identical concurrent requests.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DedupSettings {
    /// Master switch. Default `true`.
    pub enabled: bool,
    /// How long a completed answer keeps being served to identical requests. `0`
    /// shares only while the upstream call runs. Default 60 s.
    #[serde(with = "duration")]
    pub ttl: Duration,
    /// Which requests are shared, for models without an entry in `models`. Default
    /// `deterministic`.
    pub mode: DedupMode,
    /// Per-model overrides of `mode`, by the model name the client sends.
    pub models: BTreeMap<String, DedupMode>,
    /// Byte bound of the store of completed answers. Default 64 MiB.
    pub max_bytes: usize,
    /// The most one shared answer may buffer. A longer stream stops accepting new
    /// joiners, is not stored, and its slowest client paces the upstream. Default 8 MiB.
    pub max_flight_bytes: usize,
}

/// Which requests single-flight de-duplication shares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum DedupMode {
    /// Never.
    Off,
    /// Only when the answer is determined by the request: `temperature` 0 or a `seed`
    /// (and embeddings, which are always deterministic).
    Deterministic,
    /// Always, even sampled requests: identical requests get identical answers.
    Always,
}

/// `cache.response`: the exact-match response cache.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ResponseCacheSettings {
    /// Master switch. Default `false`.
    pub enabled: bool,
    /// How long a cached response is served. Default 3600 s.
    #[serde(with = "duration")]
    pub ttl: Duration,
    /// Byte bound of the cache. Default 64 MiB.
    pub max_bytes: usize,
    /// Models cached without a request header asking for it; empty means every model.
    /// A request opts in or out with `x-switchyard-cache: on|off`. Default empty.
    pub models: Vec<String>,
}

/// `cache.redis`: the shared second tier for fleets of routers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisSettings {
    /// `redis://[user:password@]host:port[/db]`; unset disables Redis. Default unset.
    pub url: Option<String>,
    /// Prefix of every key this crate writes. Default `"switchyard:"`.
    pub key_prefix: String,
    /// The longest one Redis operation may take before the cache is bypassed.
    /// Default 50 ms.
    #[serde(with = "duration")]
    pub timeout: Duration,
}

impl Default for CacheSettings {
    fn default() -> Self {
        CacheSettings {
            model_cache_ttl: Duration::from_secs(300),
            model_cache_max_stale: Duration::from_secs(3600),
            model_fetch_timeout: Duration::from_secs(10),
            deduplication: DedupSettings::default(),
            response: ResponseCacheSettings::default(),
            redis: RedisSettings::default(),
        }
    }
}

impl Default for DedupSettings {
    fn default() -> Self {
        DedupSettings {
            enabled: true,
            ttl: Duration::from_secs(60),
            mode: DedupMode::Deterministic,
            models: BTreeMap::new(),
            max_bytes: 64 << 20,
            max_flight_bytes: 8 << 20,
        }
    }
}

impl Default for ResponseCacheSettings {
    fn default() -> Self {
        ResponseCacheSettings {
            enabled: false,
            ttl: Duration::from_secs(3600),
            max_bytes: 64 << 20,
            models: Vec::new(),
        }
    }
}

impl Default for RedisSettings {
    fn default() -> Self {
        RedisSettings {
            url: None,
            key_prefix: "switchyard:".to_owned(),
            timeout: Duration::from_millis(50),
        }
    }
}

/// Durations as seconds or strings with a unit.
pub(crate) mod duration {
    use std::fmt;
    use std::time::Duration;

    use serde::de::{self, Visitor};
    use serde::{Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        if d.subsec_nanos() == 0 {
            s.serialize_str(&format!("{}s", d.as_secs()))
        } else {
            s.serialize_str(&format!("{}ms", d.as_millis()))
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        d.deserialize_any(DurationVisitor)
    }

    struct DurationVisitor;

    impl Visitor<'_> for DurationVisitor {
        type Value = Duration;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("seconds, or a duration such as \"500ms\", \"30s\", \"5m\", \"1h\"")
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
            Ok(Duration::from_secs(v))
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
            u64::try_from(v)
                .map(Duration::from_secs)
                .map_err(|_| E::custom("a duration must not be negative"))
        }

        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Duration, E> {
            Duration::try_from_secs_f64(v).map_err(|_| E::custom("invalid duration"))
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
            parse(v).ok_or_else(|| E::custom(format!("invalid duration {v:?}: {}", Expect)))
        }
    }

    struct Expect;

    impl fmt::Display for Expect {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("use seconds or a number with ms, s, m or h")
        }
    }

    pub(crate) fn parse(text: &str) -> Option<Duration> {
        let text = text.trim();
        let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let number: f64 = number.parse().ok()?;
        let scale = match unit.trim() {
            "ms" => 0.001,
            "" | "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        Duration::try_from_secs_f64(number * scale).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_documentation() {
        let s = CacheSettings::default();
        assert_eq!(s.model_cache_ttl, Duration::from_secs(300));
        assert!(s.deduplication.enabled);
        assert_eq!(s.deduplication.ttl, Duration::from_secs(60));
        assert_eq!(s.deduplication.mode, DedupMode::Deterministic);
        assert!(!s.response.enabled);
        assert_eq!(s.redis.url, None);
        assert_eq!(s.redis.timeout, Duration::from_millis(50));
        // An empty section deserialises to the defaults.
        let empty: CacheSettings = serde_json::from_str("{}").unwrap();
        assert_eq!(empty, s);
    }

    #[test]
    fn reads_the_config_shape() {
        let s: CacheSettings = serde_json::from_str(
            r#"{"model_cache_ttl": 900, "model_cache_max_stale": "2h",
                "deduplication": {"enabled": true, "ttl": "30s",
                                  "models": {"gpt-4o": "always", "creative": "off"}},
                "response": {"enabled": true, "ttl": 0.5, "max_bytes": 1048576, "models": ["m"]},
                "redis": {"url": "redis://127.0.0.1:6379", "timeout": "20ms"}}"#,
        )
        .unwrap();
        assert_eq!(s.model_cache_ttl, Duration::from_secs(900));
        assert_eq!(s.model_cache_max_stale, Duration::from_secs(7200));
        assert_eq!(s.deduplication.ttl, Duration::from_secs(30));
        assert_eq!(s.deduplication.models["gpt-4o"], DedupMode::Always);
        assert_eq!(s.deduplication.models["creative"], DedupMode::Off);
        assert_eq!(s.response.ttl, Duration::from_millis(500));
        assert_eq!(s.redis.timeout, Duration::from_millis(20));
        assert_eq!(s.redis.key_prefix, "switchyard:");
        // And it round-trips.
        let back: CacheSettings =
            serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn rejects_bad_values_by_name() {
        let err = serde_json::from_str::<CacheSettings>(r#"{"model_cache_ttl": "5 parsecs"}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("invalid duration"), "{err}");
        let err = serde_json::from_str::<CacheSettings>(r#"{"deduplication": {"ttl": -1}}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("negative"), "{err}");
        let err = serde_json::from_str::<CacheSettings>(r#"{"response": {"size": 1}}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `size`"), "{err}");
        let err =
            serde_json::from_str::<CacheSettings>(r#"{"deduplication": {"mode": "sometimes"}}"#)
                .unwrap_err()
                .to_string();
        assert!(err.contains("unknown variant"), "{err}");
    }
}
