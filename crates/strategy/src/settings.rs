//! The `routing` keys this crate reads, as a plain serde struct with documented
//! defaults. The config crate embeds or mirrors it; no environment or file access here.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result};

/// The strategy names accepted in configuration, for error messages and docs.
pub(crate) const VALID_NAMES: &str = "RoundRobin, WeightedRoundRobin, LeastLatency, Random, \
                                      ConsistentHash, LeastConnections, PowerOfTwoChoices";

/// The strategies that always decide, so may serve as `fallback_strategy`.
pub(crate) const VALID_FALLBACKS: &str =
    "RoundRobin, WeightedRoundRobin, Random, LeastConnections, PowerOfTwoChoices";

/// A load-balancing strategy, named in configuration as in the seed documents
/// (`"RoundRobin"`); `snake_case` and `kebab-case` spellings are accepted too.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StrategyKind {
    /// Each backend in turn.
    RoundRobin,
    /// Each backend in proportion to its weight, interleaved (nginx's smooth algorithm).
    WeightedRoundRobin,
    /// The backend with the lowest expected latency (EWMA x load), exploring now and then.
    LeastLatency,
    /// A uniformly random backend.
    Random,
    /// The same request key goes to the same backend (a ring with virtual nodes), unless
    /// that backend carries more than `load_factor` times the mean load.
    ConsistentHash,
    /// The backend with the fewest requests in flight.
    LeastConnections,
    /// Two random backends, the less loaded of them.
    PowerOfTwoChoices,
}

/// Selection settings: the strategy-related keys of the `routing` section.
///
/// Unknown keys are ignored at this level so the struct can be flattened into a larger
/// `routing` section (aliases, fallback chains); the nested sections reject them.
///
/// ```yaml
/// routing:
///   strategy: ConsistentHash
///   fallback_strategy: RoundRobin
///   weights: { "http://backend1:11434": 3, backend2: 1 }
///   consistent_hash: { header: x-session-id, virtual_nodes: 160, load_factor: 0.25 }
///   least_latency: { decay: 10s, exploration: 0.05 }
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StrategySettings {
    /// `routing.strategy`. Default `RoundRobin`.
    pub strategy: StrategyKind,
    /// `routing.fallback_strategy`: orders the candidates when the strategy cannot
    /// decide (no latency data yet, no request key, every weight zero). Must be one of
    /// RoundRobin, WeightedRoundRobin, Random, LeastConnections, PowerOfTwoChoices.
    /// Default `RoundRobin`.
    pub fallback_strategy: StrategyKind,
    /// `routing.weights`: backend name or URL to weight. Overrides the backend's own
    /// `weight`. Weight 0 drains a backend: it is offered only after every weighted
    /// one. Default: empty (every backend keeps its own weight, 1 unless set).
    pub weights: BTreeMap<String, u32>,
    /// `routing.consistent_hash.*`.
    pub consistent_hash: ConsistentHashSettings,
    /// `routing.least_latency.*`.
    pub least_latency: LeastLatencySettings,
}

/// `routing.consistent_hash.*`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsistentHashSettings {
    /// The request header whose value is the session key, preferred over the OpenAI
    /// `user` field and the prompt-prefix hash. Read by the caller. Default `x-session-id`.
    pub header: String,
    /// Points on the ring per backend; more points spread keys more evenly at the cost
    /// of memory (16 bytes each). 1 to 10000, default 160.
    pub virtual_nodes: u32,
    /// Bounded load, the epsilon of "consistent hashing with bounded loads": a backend
    /// whose in-flight count would exceed `ceil((1 + load_factor) x (total in flight + 1)
    /// / backends)` is passed over, so a hot key cannot sink one backend. At least 0;
    /// default 0.25. Smaller spreads load more evenly, larger keeps more affinity; a
    /// large value (say 1000) turns bounding off.
    pub load_factor: f64,
}

/// `routing.least_latency.*`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LeastLatencySettings {
    /// Time constant of the latency and success-rate averages: a sample's weight falls
    /// to 1/e after this long, whatever the request rate. Shorter reacts faster, longer
    /// smooths more. Written `"10s"`, `"500ms"`, `"2m"` or a number of seconds;
    /// from 1ms to 1h, default 10s.
    #[serde(with = "duration")]
    pub decay: Duration,
    /// Share of requests, in [0, 1), sent first to a random backend other than the
    /// fastest, so a backend that was slow and recovered gets measured again.
    /// Default 0.05.
    pub exploration: f64,
}

impl StrategyKind {
    /// Every strategy, in documentation order.
    pub const ALL: [StrategyKind; 7] = [
        StrategyKind::RoundRobin,
        StrategyKind::WeightedRoundRobin,
        StrategyKind::LeastLatency,
        StrategyKind::Random,
        StrategyKind::ConsistentHash,
        StrategyKind::LeastConnections,
        StrategyKind::PowerOfTwoChoices,
    ];

    /// The canonical configuration name, e.g. `"WeightedRoundRobin"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            StrategyKind::RoundRobin => "RoundRobin",
            StrategyKind::WeightedRoundRobin => "WeightedRoundRobin",
            StrategyKind::LeastLatency => "LeastLatency",
            StrategyKind::Random => "Random",
            StrategyKind::ConsistentHash => "ConsistentHash",
            StrategyKind::LeastConnections => "LeastConnections",
            StrategyKind::PowerOfTwoChoices => "PowerOfTwoChoices",
        }
    }

    /// Whether this strategy orders any candidate set on its own, so it can serve as
    /// `fallback_strategy`. LeastLatency needs latency data, ConsistentHash a key.
    pub const fn always_decides(self) -> bool {
        !matches!(self, StrategyKind::LeastLatency | StrategyKind::ConsistentHash)
    }
}

impl fmt::Display for StrategyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for StrategyKind {
    type Err = Error;

    /// Case-insensitive; `_`, `-` and spaces are ignored, so `RoundRobin`,
    /// `round_robin` and `round-robin` all parse; `p2c` is PowerOfTwoChoices.
    fn from_str(name: &str) -> Result<Self> {
        let mut folded = [0u8; 32];
        let mut len = 0;
        for byte in name.bytes().filter(|b| !matches!(b, b'_' | b'-' | b' ')) {
            if len == folded.len() {
                return Err(Error::UnknownStrategy { name: name.to_owned() });
            }
            folded[len] = byte.to_ascii_lowercase();
            len += 1;
        }
        let folded = &folded[..len];
        if folded == b"p2c" {
            return Ok(StrategyKind::PowerOfTwoChoices);
        }
        StrategyKind::ALL
            .into_iter()
            .find(|kind| kind.as_str().as_bytes().eq_ignore_ascii_case(folded))
            .ok_or_else(|| Error::UnknownStrategy { name: name.to_owned() })
    }
}

impl Serialize for StrategyKind {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for StrategyKind {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

impl Default for StrategySettings {
    fn default() -> Self {
        StrategySettings {
            strategy: StrategyKind::RoundRobin,
            fallback_strategy: StrategyKind::RoundRobin,
            weights: BTreeMap::new(),
            consistent_hash: ConsistentHashSettings::default(),
            least_latency: LeastLatencySettings::default(),
        }
    }
}

impl Default for ConsistentHashSettings {
    fn default() -> Self {
        ConsistentHashSettings {
            header: "x-session-id".to_owned(),
            virtual_nodes: 160,
            load_factor: 0.25,
        }
    }
}

impl Default for LeastLatencySettings {
    fn default() -> Self {
        LeastLatencySettings { decay: Duration::from_secs(10), exploration: 0.05 }
    }
}

impl StrategySettings {
    /// Check ranges and the fallback strategy. Weight keys are checked against the
    /// backends when a [`Selector`](crate::Selector) is built.
    pub fn validate(&self) -> Result<()> {
        if !self.fallback_strategy.always_decides() {
            return Err(Error::InvalidFallback(self.fallback_strategy));
        }
        let ch = &self.consistent_hash;
        if !(1..=10_000).contains(&ch.virtual_nodes) {
            return Err(invalid("consistent_hash.virtual_nodes", "must be between 1 and 10000"));
        }
        if !(ch.load_factor.is_finite() && ch.load_factor >= 0.0) {
            return Err(invalid("consistent_hash.load_factor", "must be a number of at least 0"));
        }
        if ch.header.is_empty() {
            return Err(invalid("consistent_hash.header", "must not be empty"));
        }
        let ll = &self.least_latency;
        if !(Duration::from_millis(1)..=Duration::from_secs(3600)).contains(&ll.decay) {
            return Err(invalid("least_latency.decay", "must be between 1ms and 1h"));
        }
        if !(ll.exploration >= 0.0 && ll.exploration < 1.0) {
            return Err(invalid("least_latency.exploration", "must be in [0, 1)"));
        }
        Ok(())
    }
}

/// Durations as the configuration writes them: `"10s"`, `"500ms"`, `"2m"`, `"1h"` or a
/// plain number of seconds. The config crate has the full grammar; this is enough for
/// the struct to stand alone.
mod duration {
    use std::time::Duration;

    use serde::de::{self, Deserializer, Unexpected};
    use serde::{Deserialize, Serializer};

    pub(super) fn serialize<S: Serializer>(
        value: &Duration,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&format_args!("{}ms", value.as_millis()))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Duration, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Seconds(f64),
            Text(String),
        }
        let seconds = match Raw::deserialize(deserializer)? {
            Raw::Seconds(seconds) => seconds,
            Raw::Text(text) => parse(&text).ok_or_else(|| {
                de::Error::invalid_value(
                    Unexpected::Str(&text),
                    &"a duration like \"10s\" or \"500ms\"",
                )
            })?,
        };
        Duration::try_from_secs_f64(seconds).map_err(|_| {
            de::Error::invalid_value(Unexpected::Float(seconds), &"a non-negative duration")
        })
    }

    fn parse(text: &str) -> Option<f64> {
        let text = text.trim();
        let units = [("ms", 1e-3), ("s", 1.0), ("m", 60.0), ("h", 3600.0)];
        for (suffix, scale) in units {
            if let Some(number) = text.strip_suffix(suffix) {
                return number.trim().parse::<f64>().ok().map(|n| n * scale);
            }
        }
        text.parse().ok()
    }
}

fn invalid(key: &'static str, reason: &str) -> Error {
    Error::InvalidSetting { key, reason: reason.to_owned() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_names_and_other_spellings_parse() {
        for kind in StrategyKind::ALL {
            assert_eq!(kind.as_str().parse::<StrategyKind>().unwrap(), kind);
        }
        let cases = [
            ("round_robin", StrategyKind::RoundRobin),
            ("weighted-round-robin", StrategyKind::WeightedRoundRobin),
            ("least_latency", StrategyKind::LeastLatency),
            ("RANDOM", StrategyKind::Random),
            ("consistent-hash", StrategyKind::ConsistentHash),
            ("least_connections", StrategyKind::LeastConnections),
            ("power_of_two_choices", StrategyKind::PowerOfTwoChoices),
            ("p2c", StrategyKind::PowerOfTwoChoices),
        ];
        for (name, kind) in cases {
            assert_eq!(name.parse::<StrategyKind>().unwrap(), kind, "{name}");
        }
    }

    #[test]
    fn unknown_name_lists_the_valid_ones() {
        let err = "LeastLoaded".parse::<StrategyKind>().unwrap_err().to_string();
        assert_eq!(
            err,
            "unknown strategy `LeastLoaded`, expected one of: RoundRobin, WeightedRoundRobin, \
             LeastLatency, Random, ConsistentHash, LeastConnections, PowerOfTwoChoices"
        );
        let long = "x".repeat(100);
        assert!(long.parse::<StrategyKind>().is_err());
        assert!("".parse::<StrategyKind>().is_err());
    }

    #[test]
    fn deserializes_the_seed_routing_section_with_defaults() {
        let json = r#"{"strategy":"LeastLatency","fallback_strategy":"RoundRobin",
            "weights":{"http://backend1:11434":3,"http://backend2:11434":1}}"#;
        let settings: StrategySettings = serde_json::from_str(json).unwrap();
        assert_eq!(settings.strategy, StrategyKind::LeastLatency);
        assert_eq!(settings.weights["http://backend1:11434"], 3);
        assert_eq!(settings.consistent_hash, ConsistentHashSettings::default());
        assert_eq!(settings.least_latency.decay, Duration::from_secs(10));
        settings.validate().unwrap();

        let empty: StrategySettings = serde_json::from_str("{}").unwrap();
        assert_eq!(empty, StrategySettings::default());
        let back = serde_json::to_value(&settings).unwrap();
        assert_eq!(back["strategy"], "LeastLatency");
    }

    #[test]
    fn decay_reads_config_durations() {
        let cases = [
            (r#""10s""#, Duration::from_secs(10)),
            (r#""500ms""#, Duration::from_millis(500)),
            (r#""2m""#, Duration::from_secs(120)),
            (r#""1h""#, Duration::from_secs(3600)),
            ("2.5", Duration::from_millis(2500)),
            (r#""7""#, Duration::from_secs(7)),
        ];
        for (text, expected) in cases {
            let json = format!(r#"{{"least_latency":{{"decay":{text}}}}}"#);
            let settings: StrategySettings = serde_json::from_str(&json).unwrap();
            assert_eq!(settings.least_latency.decay, expected, "{text}");
        }
        let typo = serde_json::from_str::<StrategySettings>(r#"{"least_latency":{"alpha":0.3}}"#);
        assert!(typo.unwrap_err().to_string().contains("unknown field `alpha`"));
        for bad in [r#""soon""#, "-1", r#""5 parsecs""#] {
            let json = format!(r#"{{"least_latency":{{"decay":{bad}}}}}"#);
            assert!(serde_json::from_str::<StrategySettings>(&json).is_err(), "{bad}");
        }
        let json = serde_json::to_value(StrategySettings::default()).unwrap();
        assert_eq!(json["least_latency"]["decay"], "10000ms");
        let back: StrategySettings = serde_json::from_value(json).unwrap();
        assert_eq!(back, StrategySettings::default());
    }

    #[test]
    fn bad_names_fail_deserialization_with_the_list() {
        let err = serde_json::from_str::<StrategySettings>(r#"{"strategy":"Fastest"}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown strategy `Fastest`, expected one of: RoundRobin"), "{err}");
    }

    #[test]
    fn validation_names_the_offending_key() {
        let mut s = StrategySettings {
            fallback_strategy: StrategyKind::LeastLatency,
            ..Default::default()
        };
        assert_eq!(
            s.validate().unwrap_err().to_string(),
            "`LeastLatency` cannot be a fallback strategy, expected one of: RoundRobin, \
             WeightedRoundRobin, Random, LeastConnections, PowerOfTwoChoices"
        );
        s.fallback_strategy = StrategyKind::Random;
        s.consistent_hash.load_factor = -0.1;
        assert!(s.validate().unwrap_err().to_string().contains("consistent_hash.load_factor"));
        s.consistent_hash.load_factor = f64::NAN;
        assert!(s.validate().is_err());
        s.consistent_hash.load_factor = 2.0;
        s.consistent_hash.virtual_nodes = 0;
        assert!(s.validate().unwrap_err().to_string().contains("virtual_nodes"));
        s.consistent_hash.virtual_nodes = 40;
        s.least_latency.decay = Duration::ZERO;
        assert!(s.validate().unwrap_err().to_string().contains("least_latency.decay"));
        s.least_latency.decay = Duration::from_millis(500);
        s.least_latency.exploration = 1.0;
        assert!(s.validate().unwrap_err().to_string().contains("least_latency.exploration"));
        s.least_latency.exploration = 0.0;
        s.validate().unwrap();
    }
}
