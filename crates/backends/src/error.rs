//! Errors building a backend. Errors while serving a request are
//! [`BackendError`](switchyard_core::BackendError)s: they cross the `Backend` trait.

use std::path::PathBuf;

use switchyard_core::{BackendError, Classify, ErrorCode};

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a backend could not be built from its settings.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The backend url does not parse or has no host.
    #[error("backend `{backend}`: invalid url `{url}`: {reason}")]
    InvalidUrl {
        /// Backend name.
        backend: String,
        /// The url as configured.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A configured header name or value is not valid HTTP.
    #[error("backend `{backend}`: invalid header `{name}`")]
    InvalidHeader {
        /// Backend name.
        backend: String,
        /// Header name (values are secrets and never printed).
        name: String,
    },
    /// The CA file could not be read.
    #[error("cannot read CA file `{path}`: {source}")]
    CaFile {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// TLS could not be set up.
    #[error("tls setup failed: {0}")]
    Tls(String),
}

impl Classify for Error {
    fn code(&self) -> ErrorCode {
        ErrorCode::Internal
    }
}

impl From<Error> for BackendError {
    fn from(error: Error) -> Self {
        BackendError::new(error.code(), error.to_string())
    }
}
