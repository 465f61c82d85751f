//! Errors: the server's own (start-up) error enum, and the one place where an
//! [`ErrorCode`] becomes an HTTP status and an OpenAI-style JSON body.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use switchyard_core::openai::ErrorBody;
use switchyard_core::{BackendError, Classify, ErrorCode};

use crate::body::Body;

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why the server could not start or reload.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The listening socket could not be bound.
    #[error("cannot listen on {address}: {source}")]
    Bind {
        /// The address.
        address: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A backend could not be built from its configuration.
    #[error(transparent)]
    Backend(#[from] switchyard_backends::Error),
    /// The configuration cannot be turned into a running router.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The embedded model could not be loaded.
    #[error("{0}")]
    Model(String),
    /// Another I/O failure (TLS files, signals).
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// An error answered to a client.
#[derive(Debug, Clone)]
pub(crate) struct ApiError {
    pub(crate) code: ErrorCode,
    pub(crate) message: String,
    pub(crate) retry_after: Option<Duration>,
}

impl Classify for Error {
    fn code(&self) -> ErrorCode {
        match self {
            Error::Config(_) => ErrorCode::InvalidRequest,
            _ => ErrorCode::Internal,
        }
    }
}

/// The HTTP status for an error code. This mapping exists nowhere else.
pub(crate) fn status_for(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::InvalidRequest | ErrorCode::ContextLengthExceeded | ErrorCode::Unsupported => {
            StatusCode::BAD_REQUEST
        }
        ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
        ErrorCode::Forbidden => StatusCode::FORBIDDEN,
        ErrorCode::NotFound | ErrorCode::ModelNotFound => StatusCode::NOT_FOUND,
        ErrorCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::Overloaded | ErrorCode::NoHealthyBackend => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::UpstreamUnavailable | ErrorCode::UpstreamInvalid | ErrorCode::UpstreamStatus => {
            StatusCode::BAD_GATEWAY
        }
        ErrorCode::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl ApiError {
    pub(crate) fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError { code, message: message.into(), retry_after: None }
    }

    pub(crate) fn status(&self) -> StatusCode {
        status_for(self.code)
    }

    /// The OpenAI-style JSON body.
    pub(crate) fn body_bytes(&self) -> Bytes {
        let body = ErrorBody::new(&*self.message, self.code.error_type(), Some(self.code.as_str()));
        // Serialising plain strings cannot fail; fall back to a fixed body regardless.
        serde_json::to_vec(&body).map(Bytes::from).unwrap_or_else(|_| {
            Bytes::from_static(br#"{"error":{"message":"internal error","type":"server_error","param":null,"code":"internal_error"}}"#)
        })
    }

    pub(crate) fn into_response(self) -> Response<Body> {
        let mut response = Response::new(Body::full(self.body_bytes()));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(after) = self.retry_after {
            let seconds = after.as_secs() + u64::from(after.subsec_nanos() > 0);
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
        }
        response
    }
}

impl From<BackendError> for ApiError {
    fn from(error: BackendError) -> Self {
        ApiError { code: error.code, message: error.message, retry_after: error.retry_after }
    }
}

impl From<switchyard_core::Error> for ApiError {
    fn from(error: switchyard_core::Error) -> Self {
        ApiError::new(error.code(), error.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_a_fitting_status() {
        let cases = [
            (ErrorCode::InvalidRequest, 400),
            (ErrorCode::ContextLengthExceeded, 400),
            (ErrorCode::Unauthorized, 401),
            (ErrorCode::ModelNotFound, 404),
            (ErrorCode::PayloadTooLarge, 413),
            (ErrorCode::RateLimited, 429),
            (ErrorCode::Overloaded, 503),
            (ErrorCode::NoHealthyBackend, 503),
            (ErrorCode::UpstreamUnavailable, 502),
            (ErrorCode::UpstreamTimeout, 504),
            (ErrorCode::Internal, 500),
        ];
        for (code, status) in cases {
            assert_eq!(status_for(code).as_u16(), status, "{code}");
        }
    }

    #[test]
    fn response_has_openai_error_json_and_retry_after() {
        let mut error = ApiError::new(ErrorCode::Overloaded, "the local model's queue is full");
        error.retry_after = Some(Duration::from_millis(1500));
        let body = error.body_bytes();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["error"]["code"], "overloaded");
        assert_eq!(json["error"]["type"], "overloaded_error");
        let response = error.into_response();
        assert_eq!(response.status(), 503);
        assert_eq!(response.headers()[header::RETRY_AFTER], "2");
    }
}
