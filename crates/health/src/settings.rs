//! Settings: plain serde structs with documented defaults. The server converts the config
//! file's `health_checks` and `request` sections into these.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use switchyard_core::BackendId;

use crate::error::{Error, Result};

/// Everything the health registry and checker need.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthSettings {
    /// Active health checks (`health_checks` in the config file).
    pub checks: CheckSettings,
    /// Passive outlier detection: the per-backend circuit breaker.
    pub breaker: BreakerSettings,
}

/// Active health checks: a zero-token probe per backend on a timer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CheckSettings {
    /// Run active checks at all. Default `true`. With checks off a backend counts as
    /// healthy and only the circuit breaker takes it out.
    pub enabled: bool,
    /// Time between the starts of two probes of a healthy (or plainly failing) backend.
    /// Default `30s`.
    #[serde(with = "duration")]
    pub interval: Duration,
    /// How long one probe may take before it counts as a failure. Default `5s`.
    #[serde(with = "duration")]
    pub timeout: Duration,
    /// Consecutive failed probes that take a healthy backend out. Default `3`.
    pub unhealthy_threshold: u32,
    /// Consecutive good probes that bring an unhealthy backend back. Default `2`.
    pub healthy_threshold: u32,
    /// Time between probes while a backend says it is warming up (its probe answered
    /// 503 / [`ErrorCode::Overloaded`](switchyard_core::ErrorCode::Overloaded)), until it
    /// is healthy again. Default `2s`.
    #[serde(with = "duration")]
    pub warmup_interval: Duration,
    /// Per-backend overrides, keyed by backend name. Unset fields inherit the above.
    pub overrides: BTreeMap<String, CheckOverride>,
}

/// Per-backend override of [`CheckSettings`]; `None` inherits the global value.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CheckOverride {
    /// See [`CheckSettings::enabled`].
    pub enabled: Option<bool>,
    /// See [`CheckSettings::interval`].
    #[serde(with = "opt_duration")]
    pub interval: Option<Duration>,
    /// See [`CheckSettings::timeout`].
    #[serde(with = "opt_duration")]
    pub timeout: Option<Duration>,
    /// See [`CheckSettings::unhealthy_threshold`].
    pub unhealthy_threshold: Option<u32>,
    /// See [`CheckSettings::healthy_threshold`].
    pub healthy_threshold: Option<u32>,
    /// See [`CheckSettings::warmup_interval`].
    #[serde(with = "opt_duration")]
    pub warmup_interval: Option<Duration>,
}

/// Passive outlier detection: what the request path's outcomes do to a backend.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerSettings {
    /// Use the circuit breaker and `Retry-After` ejection at all. Default `true`.
    pub enabled: bool,
    /// Consecutive failed requests (5xx, connect errors, timeouts, cut streams) that open
    /// a closed circuit. Default `5`.
    pub consecutive_failures: u32,
    /// How long a circuit stays open the first time. Each failed half-open probe doubles
    /// it, up to `max_open`. Default `1s`.
    #[serde(with = "duration")]
    pub base_open: Duration,
    /// The longest a circuit stays open. Default `60s`.
    #[serde(with = "duration")]
    pub max_open: Duration,
    /// How long a 429 without `Retry-After` takes a backend out. Default `1s`.
    #[serde(with = "duration")]
    pub default_retry_after: Duration,
    /// The longest any `Retry-After` is honoured for. Default `300s`.
    #[serde(with = "duration")]
    pub max_retry_after: Duration,
    /// The largest share of the backends that active checks consider up which passive
    /// detection may take out at once, in percent; at least one backend may always be
    /// ejected. Beyond it the registry is in panic mode and ignores passive ejections.
    /// `100` turns panic routing off. Default `50`.
    pub max_ejection_percent: u8,
}

/// Retries on the request path (`request.max_retries`, `request.retry_backoff`,
/// `request.retry_budget`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetrySettings {
    /// Retries after the first attempt, per client request. Default `2`.
    pub max_retries: u32,
    /// The delay before each retry.
    pub backoff: BackoffSettings,
    /// The shared retry budget.
    pub budget: RetryBudgetSettings,
}

/// Exponential backoff: `initial * multiplier^attempt`, capped at `max`, then jittered.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackoffSettings {
    /// The delay before the first retry, before jitter. Default `50ms`.
    #[serde(with = "duration")]
    pub initial: Duration,
    /// The longest delay, before jitter. Default `2s`.
    #[serde(with = "duration")]
    pub max: Duration,
    /// Growth per retry, at least 1. Default `2.0`.
    pub multiplier: f64,
    /// "Full jitter": each delay uniform in `[0, delay]`, so concurrent retries spread
    /// out. Default `true`.
    pub jitter: bool,
}

/// A retry budget: retries may add at most `ratio` to the requests of the last `ttl`,
/// plus `min_per_second` so a quiet router can still retry.
///
/// Exactly: within any window of `ttl`, retries <= `ratio` x requests +
/// `min_per_second` x `ttl` (in seconds), rounded down.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryBudgetSettings {
    /// Retries per request allowed on top of the requests themselves. Default `0.2`.
    pub ratio: f64,
    /// Retries allowed per second whatever the traffic. Default `3`.
    pub min_per_second: u32,
    /// How long a request's deposit counts. Default `1s` (so defaults give at most
    /// 1.2x requests + 3 attempts per second).
    #[serde(with = "duration")]
    pub ttl: Duration,
}

/// [`CheckSettings`] with one backend's overrides applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ResolvedCheck {
    pub(crate) enabled: bool,
    pub(crate) interval: Duration,
    pub(crate) timeout: Duration,
    pub(crate) unhealthy_threshold: u32,
    pub(crate) healthy_threshold: u32,
    pub(crate) warmup_interval: Duration,
}

impl Default for CheckSettings {
    fn default() -> Self {
        CheckSettings {
            enabled: true,
            interval: Duration::from_secs(30),
            timeout: Duration::from_secs(5),
            unhealthy_threshold: 3,
            healthy_threshold: 2,
            warmup_interval: Duration::from_secs(2),
            overrides: BTreeMap::new(),
        }
    }
}

impl Default for BreakerSettings {
    fn default() -> Self {
        BreakerSettings {
            enabled: true,
            consecutive_failures: 5,
            base_open: Duration::from_secs(1),
            max_open: Duration::from_secs(60),
            default_retry_after: Duration::from_secs(1),
            max_retry_after: Duration::from_secs(300),
            max_ejection_percent: 50,
        }
    }
}

impl Default for RetrySettings {
    fn default() -> Self {
        RetrySettings {
            max_retries: 2,
            backoff: BackoffSettings::default(),
            budget: RetryBudgetSettings::default(),
        }
    }
}

impl Default for BackoffSettings {
    fn default() -> Self {
        BackoffSettings {
            initial: Duration::from_millis(50),
            max: Duration::from_secs(2),
            multiplier: 2.0,
            jitter: true,
        }
    }
}

impl Default for RetryBudgetSettings {
    fn default() -> Self {
        RetryBudgetSettings { ratio: 0.2, min_per_second: 3, ttl: Duration::from_secs(1) }
    }
}

impl HealthSettings {
    /// Check the values, naming the offending key.
    pub fn validate(&self) -> Result<()> {
        self.checks.validate()?;
        self.breaker.validate()
    }
}

impl CheckSettings {
    /// Check the values, naming the offending key.
    pub fn validate(&self) -> Result<()> {
        validate_check("checks", &self.resolve_with(None))?;
        for (name, o) in &self.overrides {
            validate_check(&format!("checks.overrides.{name}"), &self.resolve_with(Some(o)))?;
        }
        Ok(())
    }

    pub(crate) fn resolve(&self, id: &BackendId) -> ResolvedCheck {
        self.resolve_with(self.overrides.get(id.as_str()))
    }

    fn resolve_with(&self, o: Option<&CheckOverride>) -> ResolvedCheck {
        let o = o.cloned().unwrap_or_default();
        ResolvedCheck {
            enabled: o.enabled.unwrap_or(self.enabled),
            interval: o.interval.unwrap_or(self.interval),
            timeout: o.timeout.unwrap_or(self.timeout),
            unhealthy_threshold: o.unhealthy_threshold.unwrap_or(self.unhealthy_threshold),
            healthy_threshold: o.healthy_threshold.unwrap_or(self.healthy_threshold),
            warmup_interval: o.warmup_interval.unwrap_or(self.warmup_interval),
        }
    }
}

impl BreakerSettings {
    /// Check the values, naming the offending key.
    pub fn validate(&self) -> Result<()> {
        if self.consecutive_failures == 0 {
            return Err(invalid("breaker.consecutive_failures", "must be at least 1"));
        }
        if self.base_open.is_zero() {
            return Err(invalid("breaker.base_open", "must be positive"));
        }
        if self.max_open < self.base_open {
            return Err(invalid("breaker.max_open", "must not be shorter than base_open"));
        }
        if self.max_ejection_percent > 100 {
            return Err(invalid("breaker.max_ejection_percent", "must be between 0 and 100"));
        }
        Ok(())
    }
}

impl RetrySettings {
    /// Check the values, naming the offending key.
    pub fn validate(&self) -> Result<()> {
        if self.backoff.max < self.backoff.initial {
            return Err(invalid("retry.backoff.max", "must not be shorter than initial"));
        }
        if !(self.backoff.multiplier >= 1.0 && self.backoff.multiplier <= 1000.0) {
            return Err(invalid("retry.backoff.multiplier", "must be between 1 and 1000"));
        }
        self.budget.validate()
    }
}

impl RetryBudgetSettings {
    /// Check the values, naming the offending key.
    pub fn validate(&self) -> Result<()> {
        if !(0.0..=1000.0).contains(&self.ratio) {
            return Err(invalid("retry.budget.ratio", "must be between 0 and 1000"));
        }
        if self.ttl < Duration::from_millis(10) || self.ttl > Duration::from_secs(3600) {
            return Err(invalid("retry.budget.ttl", "must be between 10ms and 1h"));
        }
        Ok(())
    }
}

fn validate_check(key: &str, c: &ResolvedCheck) -> Result<()> {
    if c.interval.is_zero() {
        return Err(invalid(&format!("{key}.interval"), "must be positive"));
    }
    if c.warmup_interval.is_zero() {
        return Err(invalid(&format!("{key}.warmup_interval"), "must be positive"));
    }
    if c.timeout.is_zero() {
        return Err(invalid(&format!("{key}.timeout"), "must be positive"));
    }
    if c.unhealthy_threshold == 0 {
        return Err(invalid(&format!("{key}.unhealthy_threshold"), "must be at least 1"));
    }
    if c.healthy_threshold == 0 {
        return Err(invalid(&format!("{key}.healthy_threshold"), "must be at least 1"));
    }
    Ok(())
}

fn invalid(key: &str, reason: &str) -> Error {
    Error::InvalidSettings { key: key.to_owned(), reason: reason.to_owned() }
}

/// Durations as `"30s"`, `"250ms"`, `"2m"`, `"1h"` or plain (possibly fractional) seconds;
/// written back as `"30s"` or `"250ms"`.
pub(crate) mod duration {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&Display(*d))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        d.deserialize_any(Visitor)
    }

    pub(crate) struct Display(pub(crate) Duration);

    impl fmt::Display for Display {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            if self.0.subsec_millis() == 0 && self.0.subsec_nanos() == 0 {
                write!(f, "{}s", self.0.as_secs())
            } else {
                write!(f, "{}ms", self.0.as_millis())
            }
        }
    }

    pub(crate) struct Visitor;

    impl serde::de::Visitor<'_> for Visitor {
        type Value = Duration;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a duration such as \"30s\", \"250ms\", \"2m\" or a number of seconds")
        }

        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Duration, E> {
            Ok(Duration::from_secs(v))
        }

        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Duration, E> {
            u64::try_from(v)
                .map(Duration::from_secs)
                .map_err(|_| E::custom("a duration cannot be negative"))
        }

        fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Duration, E> {
            Duration::try_from_secs_f64(v).map_err(|_| E::custom("invalid number of seconds"))
        }

        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Duration, E> {
            parse(v).ok_or_else(|| E::custom(format!("invalid duration {v:?}")))
        }
    }

    /// Parse `"30s"`, `"250ms"`, `"2m"`, `"1h"`, `"1.5s"` or `"30"`.
    pub(crate) fn parse(s: &str) -> Option<Duration> {
        let s = s.trim();
        let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
        let (number, unit) = s.split_at(split);
        let number: f64 = number.parse().ok()?;
        let scale = match unit.trim() {
            "" | "s" => 1.0,
            "ms" => 0.001,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        Duration::try_from_secs_f64(number * scale).ok()
    }
}

/// [`duration`] for optional fields.
mod opt_duration {
    use super::*;

    pub(super) fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.collect_str(&duration::Display(*d)),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        d.deserialize_any(OptVisitor)
    }

    struct OptVisitor;

    impl<'de> serde::de::Visitor<'de> for OptVisitor {
        type Value = Option<Duration>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            duration::Visitor.expecting(f)
        }

        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            duration::deserialize(d).map(Some)
        }

        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
            duration::Visitor.visit_u64(v).map(Some)
        }

        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
            duration::Visitor.visit_i64(v).map(Some)
        }

        fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Self::Value, E> {
            duration::Visitor.visit_f64(v).map(Some)
        }

        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
            duration::Visitor.visit_str(v).map(Some)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_documented_values() {
        let s = HealthSettings::default();
        assert!(s.checks.enabled);
        assert_eq!(s.checks.interval, Duration::from_secs(30));
        assert_eq!(s.checks.timeout, Duration::from_secs(5));
        assert_eq!((s.checks.unhealthy_threshold, s.checks.healthy_threshold), (3, 2));
        assert_eq!(s.checks.warmup_interval, Duration::from_secs(2));
        assert_eq!(s.breaker.consecutive_failures, 5);
        assert_eq!(s.breaker.max_ejection_percent, 50);
        let r = RetrySettings::default();
        assert_eq!(r.max_retries, 2);
        assert!((r.budget.ratio - 0.2).abs() < f64::EPSILON);
        assert_eq!(r.budget.min_per_second, 3);
        assert_eq!(r.backoff.initial, Duration::from_millis(50));
        s.validate().unwrap();
        r.validate().unwrap();
    }

    #[test]
    fn durations_parse_in_every_documented_form() {
        let json = r#"{"checks": {"interval": 10, "timeout": "250ms", "warmup_interval": 0.5,
            "overrides": {"local": {"interval": "2m", "enabled": false, "timeout": null}}},
            "breaker": {"max_open": "1h"}}"#;
        let s: HealthSettings = serde_json::from_str(json).unwrap();
        assert_eq!(s.checks.interval, Duration::from_secs(10));
        assert_eq!(s.checks.timeout, Duration::from_millis(250));
        assert_eq!(s.checks.warmup_interval, Duration::from_millis(500));
        assert_eq!(s.breaker.max_open, Duration::from_secs(3600));
        let local = s.checks.resolve(&BackendId::new("local"));
        assert_eq!(local.interval, Duration::from_secs(120));
        assert!(!local.enabled);
        assert_eq!(local.timeout, Duration::from_millis(250), "null inherits");
        assert_eq!(s.checks.resolve(&BackendId::new("other")).interval, Duration::from_secs(10));
        assert_eq!(duration::parse("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(duration::parse("5 parsecs"), None);
        assert!(serde_json::from_str::<CheckSettings>(r#"{"interval": -1}"#).is_err());
    }

    #[test]
    fn settings_round_trip_and_reject_unknown_keys() {
        let s = HealthSettings::default();
        let text = serde_json::to_string(&s).unwrap();
        assert!(text.contains(r#""interval":"30s""#), "{text}");
        assert_eq!(serde_json::from_str::<HealthSettings>(&text).unwrap(), s);
        let err = serde_json::from_str::<HealthSettings>(r#"{"checks": {"intervall": 3}}"#);
        assert!(err.unwrap_err().to_string().contains("intervall"));
    }

    #[test]
    fn validation_names_the_offending_key() {
        let mut s = HealthSettings::default();
        s.checks.overrides.insert(
            "slow".into(),
            CheckOverride { healthy_threshold: Some(0), ..Default::default() },
        );
        let err = s.validate().unwrap_err().to_string();
        assert!(err.contains("checks.overrides.slow.healthy_threshold"), "{err}");
        let mut b = BreakerSettings { max_ejection_percent: 101, ..Default::default() };
        assert!(b.validate().unwrap_err().to_string().contains("max_ejection_percent"));
        b.max_ejection_percent = 10;
        b.max_open = Duration::from_millis(1);
        assert!(b.validate().unwrap_err().to_string().contains("max_open"));
        let mut r = RetrySettings::default();
        r.backoff.max = Duration::ZERO;
        assert!(r.validate().unwrap_err().to_string().contains("retry.backoff.max"));
        r.backoff.max = Duration::from_secs(1);
        r.backoff.multiplier = 0.5;
        assert!(r.validate().unwrap_err().to_string().contains("multiplier"));
    }
}
