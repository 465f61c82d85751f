//! The crate's error type.

use switchyard_core::{Classify, ErrorCode};

/// Errors of this crate. Cache *operations* never fail a request: lookups miss and
/// stores are skipped instead. Only building a key from a bad body, a bad Redis
/// configuration and a failed connection attempt (for the callers' retry loops) are
/// errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The body to key is not a JSON object.
    #[error("invalid request body: {0}")]
    InvalidBody(#[source] serde_json::Error),
    /// `cache.redis.url` cannot be used.
    #[error("invalid cache.redis.url: {0}")]
    RedisUrl(String),
    /// A connection attempt to Redis failed or timed out (logged and retried; a
    /// request never sees it).
    #[error("cannot connect to redis: {0}")]
    RedisConnect(String),
    /// Something that spawns tasks was created outside a tokio runtime.
    #[error("the cache must be created inside a tokio runtime")]
    NoRuntime,
}

/// This crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Classify for Error {
    fn code(&self) -> ErrorCode {
        match self {
            Error::InvalidBody(_) => ErrorCode::InvalidRequest,
            Error::RedisUrl(_) | Error::RedisConnect(_) | Error::NoRuntime => ErrorCode::Internal,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies() {
        let bad = serde_json::from_slice::<serde_json::Value>(b"{").unwrap_err();
        assert_eq!(Error::InvalidBody(bad).code(), ErrorCode::InvalidRequest);
        let url = Error::RedisUrl("unsupported scheme".into());
        assert_eq!(url.code(), ErrorCode::Internal);
        assert_eq!(url.to_string(), "invalid cache.redis.url: unsupported scheme");
    }
}
