//! The crate's one error type.

use switchyard_core::{BackendId, Classify, ErrorCode};

/// A `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong setting up health tracking. Nothing on the request path fails.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A settings value is out of range.
    #[error("invalid health setting `{key}`: {reason}")]
    InvalidSettings {
        /// The offending key, e.g. `checks.interval`.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The same backend name was registered twice.
    #[error("backend `{0}` is registered twice")]
    DuplicateBackend(BackendId),
    /// A checker was given a backend the registry does not track.
    #[error("backend `{0}` is not in the health registry")]
    UnknownBackend(BackendId),
    /// A backend has active checks on but the checker was not given it to probe.
    #[error("backend `{0}` has health checks on but nothing to probe it with")]
    Unprobed(BackendId),
    /// The checker was started outside a tokio runtime.
    #[error("the health checker needs a tokio runtime")]
    NoRuntime,
}

impl Classify for Error {
    fn code(&self) -> ErrorCode {
        ErrorCode::Internal
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_internal_lowercase_and_name_what_is_wrong() {
        let e = Error::UnknownBackend(BackendId::new("gpu-1"));
        assert_eq!(e.to_string(), "backend `gpu-1` is not in the health registry");
        assert_eq!(e.code(), ErrorCode::Internal);
        assert!(!e.retryable());
        let e = Error::InvalidSettings {
            key: "checks.timeout".into(),
            reason: "must be positive".into(),
        };
        assert_eq!(e.to_string(), "invalid health setting `checks.timeout`: must be positive");
    }
}
