//! Error classification shared by every crate, and the error that crosses the
//! [`Backend`](crate::Backend) boundary.
//!
//! Libraries keep their own `thiserror` enums; each implements [`Classify`] so the
//! server can decide, without knowing the library, whether to retry, whom to blame
//! and which HTTP status and OpenAI error `type` to answer with.

use std::fmt;
use std::time::Duration;

/// Which side of the router an error belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorSide {
    /// The client sent something we cannot serve (bad JSON, unknown model, too large).
    Downstream,
    /// A backend failed: refused, timed out, answered garbage or an error status.
    Upstream,
    /// The router itself failed.
    Internal,
}

/// What went wrong, in the small vocabulary the server maps to HTTP statuses.
///
/// The string form ([`ErrorCode::as_str`]) is what clients see in `error.code`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// The request is malformed: bad JSON, wrong types, missing fields.
    InvalidRequest,
    /// The prompt does not fit the model's context window.
    ContextLengthExceeded,
    /// No or wrong credentials.
    Unauthorized,
    /// Credentials valid, but not for this resource.
    Forbidden,
    /// No route for this path.
    NotFound,
    /// No backend serves the requested model.
    ModelNotFound,
    /// The path exists, the method does not.
    MethodNotAllowed,
    /// The body is larger than `server.max_request_size`.
    PayloadTooLarge,
    /// The body is not JSON.
    UnsupportedMediaType,
    /// A rate limit refused the request.
    RateLimited,
    /// The router (or the local model's queue) is full; retry later.
    Overloaded,
    /// Every candidate backend is unhealthy or its circuit is open.
    NoHealthyBackend,
    /// The backend could not be reached (connect refused, DNS, reset before a response).
    UpstreamUnavailable,
    /// The backend did not answer in time.
    UpstreamTimeout,
    /// The backend answered something we could not use.
    UpstreamInvalid,
    /// The backend answered with an error status.
    UpstreamStatus,
    /// The feature is not supported by the chosen backend.
    Unsupported,
    /// A bug or an unexpected state inside the router.
    Internal,
}

/// Classification every library error provides.
pub trait Classify {
    /// What went wrong.
    fn code(&self) -> ErrorCode;

    /// Whose fault it is; derived from the code unless a type knows better.
    fn side(&self) -> ErrorSide {
        self.code().side()
    }

    /// Whether sending the same request to another backend may succeed.
    fn retryable(&self) -> bool {
        self.code().retryable()
    }
}

/// The error a [`Backend`](crate::Backend) returns.
///
/// Messages are lowercase, never contain prompt text or secrets, and are safe to
/// show a client.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct BackendError {
    /// The classification.
    pub code: ErrorCode,
    /// A human-readable message, safe to return to the client.
    pub message: String,
    /// How long the backend asked us to wait (HTTP `Retry-After`), if it did.
    pub retry_after: Option<Duration>,
}

impl ErrorCode {
    /// The machine-readable code clients see in `error.code`.
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::ContextLengthExceeded => "context_length_exceeded",
            ErrorCode::Unauthorized => "invalid_api_key",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::ModelNotFound => "model_not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::RateLimited => "rate_limit_exceeded",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::NoHealthyBackend => "no_healthy_backend",
            ErrorCode::UpstreamUnavailable => "upstream_unavailable",
            ErrorCode::UpstreamTimeout => "upstream_timeout",
            ErrorCode::UpstreamInvalid => "upstream_invalid_response",
            ErrorCode::UpstreamStatus => "upstream_error",
            ErrorCode::Unsupported => "unsupported",
            ErrorCode::Internal => "internal_error",
        }
    }

    /// The OpenAI error `type` for this code.
    pub const fn error_type(self) -> &'static str {
        match self {
            ErrorCode::InvalidRequest
            | ErrorCode::ContextLengthExceeded
            | ErrorCode::NotFound
            | ErrorCode::ModelNotFound
            | ErrorCode::MethodNotAllowed
            | ErrorCode::PayloadTooLarge
            | ErrorCode::UnsupportedMediaType
            | ErrorCode::Unsupported => "invalid_request_error",
            ErrorCode::Unauthorized => "authentication_error",
            ErrorCode::Forbidden => "permission_error",
            ErrorCode::RateLimited => "rate_limit_error",
            ErrorCode::Overloaded | ErrorCode::NoHealthyBackend => "overloaded_error",
            ErrorCode::UpstreamUnavailable
            | ErrorCode::UpstreamTimeout
            | ErrorCode::UpstreamInvalid
            | ErrorCode::UpstreamStatus => "upstream_error",
            ErrorCode::Internal => "server_error",
        }
    }

    /// Whose fault an error with this code is.
    pub const fn side(self) -> ErrorSide {
        match self {
            ErrorCode::InvalidRequest
            | ErrorCode::ContextLengthExceeded
            | ErrorCode::Unauthorized
            | ErrorCode::Forbidden
            | ErrorCode::NotFound
            | ErrorCode::ModelNotFound
            | ErrorCode::MethodNotAllowed
            | ErrorCode::PayloadTooLarge
            | ErrorCode::UnsupportedMediaType
            | ErrorCode::RateLimited
            | ErrorCode::Unsupported => ErrorSide::Downstream,
            ErrorCode::Overloaded
            | ErrorCode::NoHealthyBackend
            | ErrorCode::UpstreamUnavailable
            | ErrorCode::UpstreamTimeout
            | ErrorCode::UpstreamInvalid
            | ErrorCode::UpstreamStatus => ErrorSide::Upstream,
            ErrorCode::Internal => ErrorSide::Internal,
        }
    }

    /// Whether another backend might succeed where this one failed.
    pub const fn retryable(self) -> bool {
        matches!(
            self,
            ErrorCode::Overloaded
                | ErrorCode::UpstreamUnavailable
                | ErrorCode::UpstreamTimeout
                | ErrorCode::UpstreamInvalid
                | ErrorCode::UpstreamStatus
        )
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl BackendError {
    /// A new error with `code` and a client-safe `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        BackendError { code, message: message.into(), retry_after: None }
    }

    /// Attach the delay the backend asked for.
    #[must_use]
    pub fn with_retry_after(mut self, retry_after: Option<Duration>) -> Self {
        self.retry_after = retry_after;
        self
    }
}

impl Classify for BackendError {
    fn code(&self) -> ErrorCode {
        self.code
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_failures_are_retryable_client_errors_are_not() {
        assert!(ErrorCode::UpstreamTimeout.retryable());
        assert!(ErrorCode::UpstreamUnavailable.retryable());
        assert!(!ErrorCode::InvalidRequest.retryable());
        assert!(!ErrorCode::ModelNotFound.retryable());
        assert_eq!(ErrorCode::ModelNotFound.side(), ErrorSide::Downstream);
        assert_eq!(ErrorCode::Internal.side(), ErrorSide::Internal);
    }

    #[test]
    fn backend_error_classifies_by_code() {
        let e = BackendError::new(ErrorCode::Overloaded, "queue full")
            .with_retry_after(Some(Duration::from_secs(2)));
        assert!(e.retryable());
        assert_eq!(e.side(), ErrorSide::Upstream);
        assert_eq!(e.to_string(), "queue full");
        assert_eq!(e.code().as_str(), "overloaded");
    }
}
