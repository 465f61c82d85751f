//! Credentials: client API keys (`Authorization: Bearer KEY` or `x-api-key: KEY`), the
//! admin key, and HTTP basic auth on the metrics endpoint.
//!
//! Lookups are O(1) and compare in constant time: a presented key is hashed with a
//! per-process random SipHash key, the hash finds the one candidate, and the bytes are
//! compared with `subtle`. A key's identity on the request path is its index
//! ([`Caller`]); logs, metrics, rate limits and the cache tenant use its configured
//! name, never the key. Error messages never echo what was presented.

use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::sync::Arc;

use http::HeaderMap;
use http::header::{AUTHORIZATION, HeaderName};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use switchyard_config::{ApiKeyConfig, AuthMode, MetricsAuthConfig, Secret};
use switchyard_core::ErrorCode;

use crate::error::ApiError;
use crate::metrics::AuthFailure;

const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");

/// Client authentication settings (`auth.*`; the keys of `api_keys_file` are added to
/// `api_keys` when the configuration is loaded).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AuthSettings {
    /// `permissive` (default): keys are required once any is configured;
    /// `blocking`: a valid key is always required.
    pub mode: AuthMode,
    /// Every client key, with its name and the models it may use.
    pub api_keys: Vec<ApiKeyConfig>,
    /// The credential for `/admin/*`.
    pub admin_api_key: Option<Secret>,
}

/// Who sent a request: a configured key (its index), or nobody when auth is off.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Caller {
    key: Option<u32>,
}

/// Why a credential was refused, and what to answer.
#[derive(Debug)]
pub(crate) struct Refused {
    pub(crate) reason: AuthFailure,
    pub(crate) error: ApiError,
}

/// The credentials of one configuration generation.
pub(crate) struct Auth {
    /// Whether client requests must carry a valid key.
    required: bool,
    keys: Vec<Key>,
    /// Keyed hash of a key's bytes -> indexes of keys with that hash.
    index: HashMap<u64, Vec<u32>>,
    hasher: std::collections::hash_map::RandomState,
    admin: Option<Box<[u8]>>,
    metrics: Option<BasicAuth>,
}

struct Key {
    name: Arc<str>,
    secret: Box<[u8]>,
    /// `None`: every model.
    models: Option<HashSet<String>>,
}

struct BasicAuth {
    username: Box<[u8]>,
    password: Box<[u8]>,
}

impl Auth {
    /// Build from settings. Fails on duplicate key values or names (inline and file keys
    /// together), naming only the keys' names.
    pub(crate) fn new(settings: &AuthSettings, metrics: &MetricsAuthConfig) -> crate::Result<Auth> {
        let hasher = std::collections::hash_map::RandomState::new();
        let mut keys = Vec::with_capacity(settings.api_keys.len());
        let mut index: HashMap<u64, Vec<u32>> = HashMap::with_capacity(settings.api_keys.len());
        let mut names = HashSet::new();
        for (i, key) in settings.api_keys.iter().enumerate() {
            let secret = key.key.expose().as_bytes();
            if secret.is_empty() {
                return Err(crate::Error::Config(format!("auth key `{}` is empty", key.name)));
            }
            if !names.insert(key.name.as_str()) {
                return Err(crate::Error::Config(format!(
                    "two auth keys are named `{}` (inline and in api_keys_file?)",
                    key.name
                )));
            }
            let hash = hasher.hash_one(secret);
            let same = index.entry(hash).or_default();
            if same.iter().any(|&j| bool::from(keys_secret(&keys, j).ct_eq(secret))) {
                return Err(crate::Error::Config(format!(
                    "auth key `{}` has the same value as another key",
                    key.name
                )));
            }
            let i = u32::try_from(i)
                .map_err(|_| crate::Error::Config("too many auth keys".to_owned()))?;
            same.push(i);
            keys.push(Key {
                name: Arc::from(key.name.as_str()),
                secret: secret.into(),
                models: (!key.models.is_empty())
                    .then(|| key.models.iter().cloned().collect::<HashSet<_>>()),
            });
        }
        let required = match settings.mode {
            AuthMode::Blocking => true,
            _ => !keys.is_empty(),
        };
        let admin = settings
            .admin_api_key
            .as_ref()
            .filter(|k| !k.is_empty())
            .map(|k| Box::<[u8]>::from(k.expose().as_bytes()));
        let metrics = (metrics.enabled).then(|| BasicAuth {
            username: metrics.username.as_bytes().into(),
            password: metrics
                .password
                .as_ref()
                .map(|p| p.expose().as_bytes())
                .unwrap_or(b"")
                .into(),
        });
        Ok(Auth { required, keys, index, hasher, admin, metrics })
    }

    /// Whether client requests must carry a key.
    #[cfg(test)]
    pub(crate) fn required(&self) -> bool {
        self.required
    }

    /// Authenticate a client request.
    pub(crate) fn client(&self, headers: &HeaderMap) -> Result<Caller, Refused> {
        if !self.required {
            return Ok(Caller::default());
        }
        let Some(presented) = presented_key(headers) else {
            return Err(refused(
                AuthFailure::Missing,
                "missing API key: send `Authorization: Bearer KEY` or `x-api-key: KEY`",
            ));
        };
        match self.find(presented) {
            Some(key) => Ok(Caller { key: Some(key) }),
            None => Err(refused(AuthFailure::Invalid, "invalid API key")),
        }
    }

    /// Authenticate an `/admin/*` request: the admin key when one is configured;
    /// without one, admin is open only while client auth is off. A client key never
    /// grants admin access.
    pub(crate) fn admin(&self, headers: &HeaderMap) -> Result<(), Refused> {
        let Some(admin) = &self.admin else {
            if self.required {
                return Err(refused(
                    AuthFailure::Missing,
                    "admin endpoints need auth.admin_api_key while client keys are required",
                ));
            }
            return Ok(());
        };
        match presented_key(headers) {
            None => Err(refused(AuthFailure::Missing, "missing admin key")),
            Some(presented) if bool::from(presented.ct_eq(admin)) => Ok(()),
            Some(_) => Err(refused(AuthFailure::Invalid, "invalid admin key")),
        }
    }

    /// Check HTTP basic auth on the metrics endpoint (when `metrics.auth` is enabled).
    pub(crate) fn metrics(&self, headers: &HeaderMap) -> Result<(), Refused> {
        let Some(expected) = &self.metrics else { return Ok(()) };
        let Some(credentials) = headers
            .get(AUTHORIZATION)
            .and_then(|v| strip_scheme(v.as_bytes(), b"basic"))
            .and_then(base64_decode)
        else {
            return Err(refused(AuthFailure::Missing, "metrics need basic auth credentials"));
        };
        let (user, password) = match credentials.iter().position(|&b| b == b':') {
            Some(colon) => (&credentials[..colon], &credentials[colon + 1..]),
            None => (&credentials[..], &[][..]),
        };
        // Both compared, always, so timing does not tell which one was wrong.
        let ok = user.ct_eq(&expected.username) & password.ct_eq(&expected.password);
        if bool::from(ok) {
            Ok(())
        } else {
            Err(refused(AuthFailure::Invalid, "invalid metrics credentials"))
        }
    }

    /// Whether `caller` may use `requested` (or the model an alias resolves it to).
    pub(crate) fn may_use(&self, caller: Caller, requested: &str, resolved: &str) -> bool {
        match self.key(caller).and_then(|k| k.models.as_ref()) {
            None => true,
            Some(models) => models.contains(requested) || models.contains(resolved),
        }
    }

    /// The refusal for a model the caller's key may not use.
    pub(crate) fn model_refused(&self, requested: &str) -> Refused {
        Refused {
            reason: AuthFailure::ModelNotAllowed,
            error: ApiError::new(
                ErrorCode::Forbidden,
                format!("this API key may not use the model `{requested}`"),
            ),
        }
    }

    /// The caller's key name: the cache tenant, the log and rate-limit identity. Empty
    /// for anonymous callers.
    pub(crate) fn tenant(&self, caller: Caller) -> &str {
        self.key(caller).map_or("", |k| &k.name)
    }

    /// The caller's key name, shared.
    pub(crate) fn name(&self, caller: Caller) -> Option<&Arc<str>> {
        self.key(caller).map(|k| &k.name)
    }

    /// The caller's key index (for per-key buckets).
    pub(crate) fn index(caller: Caller) -> Option<usize> {
        caller.key.map(|k| k as usize)
    }

    /// How many keys are configured.
    pub(crate) fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// Whether `caller` is restricted to some models, and to which.
    pub(crate) fn allowed_models(&self, caller: Caller) -> Option<&HashSet<String>> {
        self.key(caller).and_then(|k| k.models.as_ref())
    }

    fn key(&self, caller: Caller) -> Option<&Key> {
        caller.key.and_then(|k| self.keys.get(k as usize))
    }

    fn find(&self, presented: &[u8]) -> Option<u32> {
        let candidates = self.index.get(&self.hasher.hash_one(presented))?;
        // Normally exactly one candidate; every one is compared in constant time.
        let mut found = None;
        for &i in candidates {
            if bool::from(keys_secret(&self.keys, i).ct_eq(presented)) {
                found = Some(i);
            }
        }
        found
    }
}

fn keys_secret(keys: &[Key], i: u32) -> &[u8] {
    keys.get(i as usize).map_or(&[], |k| &k.secret)
}

fn refused(reason: AuthFailure, message: &str) -> Refused {
    Refused { reason, error: ApiError::new(ErrorCode::Unauthorized, message) }
}

/// The key a request presents: `Authorization: Bearer KEY`, else `x-api-key: KEY`.
fn presented_key(headers: &HeaderMap) -> Option<&[u8]> {
    if let Some(bearer) =
        headers.get(AUTHORIZATION).and_then(|v| strip_scheme(v.as_bytes(), b"bearer"))
    {
        return Some(bearer);
    }
    headers.get(X_API_KEY).map(|v| v.as_bytes()).map(<[u8]>::trim_ascii).filter(|k| !k.is_empty())
}

/// `value` without its `scheme` (case-insensitive) and the spaces after it.
fn strip_scheme<'a>(value: &'a [u8], scheme: &[u8]) -> Option<&'a [u8]> {
    let head = value.get(..scheme.len())?;
    let rest = &value[scheme.len()..];
    if !head.eq_ignore_ascii_case(scheme) || rest.first() != Some(&b' ') {
        return None;
    }
    Some(rest.trim_ascii()).filter(|token| !token.is_empty())
}

/// Standard base64 with optional padding; `None` on anything else.
fn base64_decode(input: &[u8]) -> Option<Vec<u8>> {
    fn value(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let trimmed = input.strip_suffix(b"==").or_else(|| input.strip_suffix(b"=")).unwrap_or(input);
    if trimmed.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(trimmed.len() * 3 / 4);
    for chunk in trimmed.chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= value(c)? << (18 - 6 * i);
        }
        let bytes = acc.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn key(name: &str, key: &str, models: &[&str]) -> ApiKeyConfig {
        ApiKeyConfig {
            key: Secret::new(key),
            name: name.into(),
            models: models.iter().map(|m| m.to_string()).collect(),
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    fn auth(mode: AuthMode, keys: Vec<ApiKeyConfig>, admin: Option<&str>) -> Auth {
        let settings = AuthSettings { mode, api_keys: keys, admin_api_key: admin.map(Secret::new) };
        Auth::new(&settings, &MetricsAuthConfig::default()).unwrap()
    }

    #[test]
    fn permissive_without_keys_admits_everyone_and_opens_admin() {
        let auth = auth(AuthMode::Permissive, vec![], None);
        assert!(!auth.required());
        assert_eq!(auth.client(&HeaderMap::new()).unwrap(), Caller::default());
        assert!(auth.admin(&HeaderMap::new()).is_ok());
        assert_eq!(auth.tenant(Caller::default()), "");
    }

    #[test]
    fn keys_are_found_by_bearer_or_x_api_key_and_never_echoed() {
        let auth = auth(
            AuthMode::Permissive,
            vec![key("alice", "sk-alice-1", &[]), key("bob", "sk-bob-2", &["m1"])],
            None,
        );
        let alice = auth.client(&headers(&[("authorization", "Bearer sk-alice-1")])).unwrap();
        assert_eq!(auth.tenant(alice), "alice");
        let bob = auth.client(&headers(&[("x-api-key", "sk-bob-2")])).unwrap();
        assert_eq!(auth.tenant(bob), "bob");
        let lower = auth.client(&headers(&[("authorization", "bearer   sk-alice-1 ")])).unwrap();
        assert_eq!(lower, alice);

        let missing = auth.client(&HeaderMap::new()).unwrap_err();
        assert_eq!(missing.reason, AuthFailure::Missing);
        assert_eq!(missing.error.code, ErrorCode::Unauthorized);
        let wrong =
            auth.client(&headers(&[("authorization", "Bearer sk-canary-xyz")])).unwrap_err();
        assert_eq!(wrong.reason, AuthFailure::Invalid);
        assert!(!wrong.error.message.contains("canary"));
        let prefix = auth.client(&headers(&[("x-api-key", "sk-alice")])).unwrap_err();
        assert_eq!(prefix.reason, AuthFailure::Invalid);
        // A client key is never an admin key; no admin key configured = admin closed.
        assert!(auth.admin(&headers(&[("authorization", "Bearer sk-alice-1")])).is_err());
    }

    #[test]
    fn per_key_models_check_the_requested_name_and_its_alias_target() {
        let auth = auth(AuthMode::Permissive, vec![key("bob", "k", &["m1", "fast"])], None);
        let bob = auth.client(&headers(&[("x-api-key", "k")])).unwrap();
        assert!(auth.may_use(bob, "m1", "m1"));
        assert!(auth.may_use(bob, "fast", "gpt-4o-mini"));
        assert!(auth.may_use(bob, "alias", "m1"));
        assert!(!auth.may_use(bob, "m2", "m2"));
        assert!(auth.may_use(Caller::default(), "anything", "anything"));
        assert_eq!(auth.model_refused("m2").error.code, ErrorCode::Forbidden);
    }

    #[test]
    fn blocking_without_keys_refuses_everyone() {
        let auth = auth(AuthMode::Blocking, vec![], Some("admin-secret"));
        assert!(auth.client(&headers(&[("x-api-key", "anything")])).is_err());
        assert!(auth.admin(&headers(&[("x-api-key", "admin-secret")])).is_ok());
        let wrong = auth.admin(&headers(&[("x-api-key", "admin-secreT")])).unwrap_err();
        assert_eq!(wrong.reason, AuthFailure::Invalid);
    }

    #[test]
    fn duplicate_names_or_values_are_refused_without_the_value() {
        let settings = AuthSettings {
            api_keys: vec![key("a", "same-secret", &[]), key("b", "same-secret", &[])],
            ..AuthSettings::default()
        };
        let err = Auth::new(&settings, &MetricsAuthConfig::default()).err().unwrap();
        assert!(err.to_string().contains("`b`") && !err.to_string().contains("same-secret"));
        let settings = AuthSettings {
            api_keys: vec![key("a", "x", &[]), key("a", "y", &[])],
            ..AuthSettings::default()
        };
        assert!(Auth::new(&settings, &MetricsAuthConfig::default()).is_err());
    }

    #[test]
    fn metrics_basic_auth() {
        let metrics = MetricsAuthConfig {
            enabled: true,
            username: "prom".into(),
            password: Some(Secret::new("pa:ss")),
        };
        let auth = Auth::new(&AuthSettings::default(), &metrics).unwrap();
        // "prom:pa:ss"
        assert!(auth.metrics(&headers(&[("authorization", "Basic cHJvbTpwYTpzcw==")])).is_ok());
        assert!(auth.metrics(&headers(&[("authorization", "basic cHJvbTpwYTpzcw")])).is_ok());
        // "prom:wrong"
        let wrong = auth.metrics(&headers(&[("authorization", "Basic cHJvbTp3cm9uZw==")]));
        assert_eq!(wrong.unwrap_err().reason, AuthFailure::Invalid);
        assert_eq!(auth.metrics(&HeaderMap::new()).unwrap_err().reason, AuthFailure::Missing);
        let bearer = auth.metrics(&headers(&[("authorization", "Bearer cHJvbTpwYTpzcw==")]));
        assert!(bearer.is_err());
        let open = Auth::new(&AuthSettings::default(), &MetricsAuthConfig::default()).unwrap();
        assert!(open.metrics(&HeaderMap::new()).is_ok());
    }

    #[test]
    fn base64_decodes_standard_input() {
        assert_eq!(base64_decode(b"").unwrap(), b"");
        assert_eq!(base64_decode(b"Zg==").unwrap(), b"f");
        assert_eq!(base64_decode(b"Zm8=").unwrap(), b"fo");
        assert_eq!(base64_decode(b"Zm9v").unwrap(), b"foo");
        assert_eq!(base64_decode(b"Zm9vYmFy").unwrap(), b"foobar");
        assert!(base64_decode(b"Zm9v!").is_none());
        assert!(base64_decode(b"Z").is_none());
    }
}
