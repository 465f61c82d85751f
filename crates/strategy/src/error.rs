//! The crate's one error type: everything that can go wrong is a bad setting or a
//! backend set that contradicts the settings, found when a selector is built.

use switchyard_core::{BackendId, Classify, ErrorCode};

use crate::settings::{StrategyKind, VALID_FALLBACKS, VALID_NAMES};

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why settings or a backend set were refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `routing.strategy` or `routing.fallback_strategy` names no strategy.
    #[error("unknown strategy `{name}`, expected one of: {VALID_NAMES}")]
    UnknownStrategy {
        /// The name as written.
        name: String,
    },
    /// `routing.fallback_strategy` names a strategy that may itself be unable to decide.
    #[error("`{0}` cannot be a fallback strategy, expected one of: {VALID_FALLBACKS}")]
    InvalidFallback(StrategyKind),
    /// A tuning value is out of range.
    #[error("invalid setting `routing.{key}`: {reason}")]
    InvalidSetting {
        /// The key below `routing`, e.g. `consistent_hash.load_factor`.
        key: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A `routing.weights` key is neither a backend name nor a backend URL.
    #[error("`routing.weights` key `{0}` matches no backend name or url")]
    UnknownWeightKey(String),
    /// Two backends share a name.
    #[error("duplicate backend name `{0}`")]
    DuplicateBackend(BackendId),
}

impl Classify for Error {
    fn code(&self) -> ErrorCode {
        // Every variant is a configuration problem found at start-up or reload: the
        // router's own fault, never a client's or a backend's.
        ErrorCode::Internal
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_lowercase_and_name_the_key() {
        let e = Error::InvalidSetting {
            key: "least_latency.alpha",
            reason: "must be in (0, 1]".into(),
        };
        assert_eq!(
            e.to_string(),
            "invalid setting `routing.least_latency.alpha`: must be in (0, 1]"
        );
        let e = Error::UnknownWeightKey("http://nowhere:1".into());
        assert!(e.to_string().starts_with("`routing.weights` key `http://nowhere:1`"));
        assert_eq!(e.code(), ErrorCode::Internal);
        assert!(!e.retryable());
    }
}
