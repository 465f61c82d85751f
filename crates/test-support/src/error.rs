//! The crate's error type.

use std::io;
use std::net::SocketAddr;

use switchyard_core::{Classify, ErrorCode};

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong starting a mock.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The listener could not be bound (or re-bound by a restart).
    #[error("cannot bind the mock upstream to {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The OS error.
        source: io::Error,
    },
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
    fn bind_errors_are_internal_and_lowercase() {
        let e = Error::Bind {
            addr: SocketAddr::from(([127, 0, 0, 1], 1)),
            source: io::Error::from(io::ErrorKind::AddrInUse),
        };
        assert_eq!(e.code(), ErrorCode::Internal);
        assert!(!e.retryable());
        assert!(e.to_string().starts_with("cannot bind the mock upstream to 127.0.0.1:1"));
    }
}
