//! Which requests are shared and cached: pure decisions from settings, the request's
//! routing fields and headers.

use std::collections::{BTreeMap, HashSet};

use http::HeaderMap;
use http::header::CACHE_CONTROL;
use switchyard_core::{Endpoint, RequestMeta};

use crate::settings::{DedupMode, DedupSettings, ResponseCacheSettings};

/// The request header that opts one request in to (`on`) or out of (`off`) the
/// response cache, whatever `cache.response.models` says.
pub const CACHE_HEADER: &str = "x-switchyard-cache";

/// Whether single-flight de-duplication applies to a request.
#[derive(Clone, Debug)]
pub struct DedupPolicy {
    enabled: bool,
    mode: DedupMode,
    models: BTreeMap<String, DedupMode>,
}

/// Whether the response cache applies to a request.
#[derive(Clone, Debug)]
pub struct ResponseCachePolicy {
    enabled: bool,
    models: HashSet<String>,
}

/// What the response cache may do for one request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheDecision {
    /// Answer from the cache if it holds the answer.
    pub lookup: bool,
    /// Store a clean answer.
    pub store: bool,
}

impl DedupPolicy {
    /// The policy `settings` describe.
    pub fn new(settings: &DedupSettings) -> Self {
        DedupPolicy {
            enabled: settings.enabled,
            mode: settings.mode,
            models: settings.models.clone(),
        }
    }

    /// Whether identical concurrent requests like this one may share one answer: the
    /// model's mode (or the default mode) says so, and under `deterministic` the
    /// request is greedy or seeded ([`RequestMeta::is_deterministic`]) or an
    /// embedding.
    pub fn applies(&self, endpoint: Endpoint, meta: &RequestMeta) -> bool {
        if !self.enabled {
            return false;
        }
        match self.models.get(&meta.model).copied().unwrap_or(self.mode) {
            DedupMode::Off => false,
            DedupMode::Always => true,
            DedupMode::Deterministic => {
                matches!(endpoint, Endpoint::Embeddings) || meta.is_deterministic()
            }
        }
    }
}

impl ResponseCachePolicy {
    /// The policy `settings` describe.
    pub fn new(settings: &ResponseCacheSettings) -> Self {
        ResponseCachePolicy {
            enabled: settings.enabled,
            models: settings.models.iter().cloned().collect(),
        }
    }

    /// What the cache may do for this request. With the cache enabled, a request is
    /// eligible if its model is listed (or the list is empty) or it sends
    /// `x-switchyard-cache: on`, and not if it sends `x-switchyard-cache: off`.
    /// `Cache-Control: no-cache` skips the lookup but lets the fresh answer be stored;
    /// `no-store` does neither.
    pub fn decide(&self, meta: &RequestMeta, headers: &HeaderMap) -> CacheDecision {
        if !self.enabled {
            return CacheDecision::default();
        }
        let opted = headers.get(CACHE_HEADER).and_then(|v| v.to_str().ok()).map(str::trim);
        let eligible = match opted {
            Some(v) if v.eq_ignore_ascii_case("off") => false,
            Some(v) if v.eq_ignore_ascii_case("on") => true,
            _ => self.models.is_empty() || self.models.contains(&meta.model),
        };
        if !eligible {
            return CacheDecision::default();
        }
        let control = cache_control(headers);
        CacheDecision { lookup: !control.no_cache && !control.no_store, store: !control.no_store }
    }
}

/// The request's `Cache-Control` directives this crate honours.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct CacheControl {
    pub(crate) no_cache: bool,
    pub(crate) no_store: bool,
}

pub(crate) fn cache_control(headers: &HeaderMap) -> CacheControl {
    let mut control = CacheControl::default();
    for value in headers.get_all(CACHE_CONTROL) {
        let Ok(value) = value.to_str() else { continue };
        for directive in value.split(',') {
            let name = directive.split('=').next().unwrap_or("").trim();
            control.no_cache |= name.eq_ignore_ascii_case("no-cache");
            control.no_store |= name.eq_ignore_ascii_case("no-store");
        }
    }
    control
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn meta(model: &str, temperature: Option<f64>, seed: Option<i64>) -> RequestMeta {
        RequestMeta { model: model.to_owned(), temperature, seed, ..RequestMeta::default() }
    }

    #[test]
    fn dedup_defaults_to_deterministic_requests_with_per_model_overrides() {
        let mut settings = DedupSettings::default();
        settings.models.insert("always".into(), DedupMode::Always);
        settings.models.insert("never".into(), DedupMode::Off);
        let policy = DedupPolicy::new(&settings);
        let chat = Endpoint::ChatCompletions;
        assert!(policy.applies(chat, &meta("m", Some(0.0), None)));
        assert!(policy.applies(chat, &meta("m", Some(0.7), Some(42))));
        assert!(!policy.applies(chat, &meta("m", Some(0.7), None)));
        assert!(!policy.applies(chat, &meta("m", None, None)), "no temperature means sampling");
        assert!(policy.applies(Endpoint::Embeddings, &meta("m", None, None)));
        assert!(policy.applies(chat, &meta("always", Some(1.0), None)));
        assert!(!policy.applies(chat, &meta("never", Some(0.0), None)));
        settings.enabled = false;
        assert!(!DedupPolicy::new(&settings).applies(chat, &meta("always", Some(0.0), None)));
    }

    #[test]
    fn response_cache_opt_in_and_cache_control() {
        let mut settings = ResponseCacheSettings {
            enabled: true,
            models: vec!["listed".into()],
            ..Default::default()
        };
        let policy = ResponseCachePolicy::new(&settings);
        let none = HeaderMap::new();
        let both = CacheDecision { lookup: true, store: true };
        assert_eq!(policy.decide(&meta("listed", None, None), &none), both);
        assert_eq!(policy.decide(&meta("other", None, None), &none), CacheDecision::default());

        let mut on = HeaderMap::new();
        on.insert(CACHE_HEADER, HeaderValue::from_static("On"));
        assert_eq!(policy.decide(&meta("other", None, None), &on), both);
        let mut off = HeaderMap::new();
        off.insert(CACHE_HEADER, HeaderValue::from_static("off"));
        assert_eq!(policy.decide(&meta("listed", None, None), &off), CacheDecision::default());

        let mut no_cache = HeaderMap::new();
        no_cache.insert(CACHE_CONTROL, HeaderValue::from_static("max-age=0, No-Cache"));
        assert_eq!(
            policy.decide(&meta("listed", None, None), &no_cache),
            CacheDecision { lookup: false, store: true }
        );
        let mut no_store = HeaderMap::new();
        no_store.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        assert_eq!(policy.decide(&meta("listed", None, None), &no_store), CacheDecision::default());

        settings.models.clear();
        assert_eq!(
            ResponseCachePolicy::new(&settings).decide(&meta("any", None, None), &none),
            both
        );
        settings.enabled = false;
        assert_eq!(
            ResponseCachePolicy::new(&settings).decide(&meta("any", None, None), &on),
            CacheDecision::default()
        );
    }
}
