//! The crate's error type.

use std::time::Duration;

use switchyard_core::{BackendError, Classify, ErrorCode};

use crate::paths::FETCH_COMMAND;

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong loading or running a local model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The model file is missing.
    #[error(
        "model file {path} does not exist; fetch the default model with `{FETCH_COMMAND}` or pass another GGUF file"
    )]
    ModelNotFound {
        /// Where it was looked for.
        path: String,
    },
    /// Reading a file failed.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// `general.architecture` names a model family this crate does not run.
    #[error("unsupported model architecture `{0}` (supported: llama, mistral, qwen2, gemma3)")]
    UnsupportedArchitecture(String),
    /// The GGUF file is malformed or inconsistent.
    #[error("invalid model: {0}")]
    Model(String),
    /// The vocabulary in the file cannot be turned into a tokenizer.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The chat template does not compile.
    #[error("chat template: {0}")]
    Template(String),
    /// The request is malformed or asks for something out of range.
    #[error("{0}")]
    InvalidRequest(String),
    /// The prompt does not fit the context window.
    #[error(
        "the prompt has {prompt} tokens but the context window holds {context} (and at least one must be generated)"
    )]
    ContextLengthExceeded {
        /// Prompt tokens.
        prompt: usize,
        /// Context window in tokens.
        context: usize,
    },
    /// Every sequence slot and queue place is taken.
    #[error(
        "the local model is busy: {running} requests running and {queued} waiting; retry later"
    )]
    Overloaded {
        /// Running sequences.
        running: usize,
        /// Waiting requests.
        queued: usize,
        /// A hint for when to retry.
        retry_after: Duration,
    },
    /// The operation is not something a local text model does.
    #[error("{0} is not supported by the local model")]
    Unsupported(String),
    /// The engine thread is gone (it panicked or the engine was shut down).
    #[error("the inference engine has stopped")]
    EngineStopped,
    /// A bug.
    #[error("internal inference error: {0}")]
    Internal(String),
}

impl Classify for Error {
    fn code(&self) -> ErrorCode {
        match self {
            Error::InvalidRequest(_) => ErrorCode::InvalidRequest,
            Error::ContextLengthExceeded { .. } => ErrorCode::ContextLengthExceeded,
            Error::Overloaded { .. } => ErrorCode::Overloaded,
            Error::Unsupported(_) => ErrorCode::Unsupported,
            Error::ModelNotFound { .. }
            | Error::Io { .. }
            | Error::UnsupportedArchitecture(_)
            | Error::Model(_)
            | Error::Tokenizer(_)
            | Error::Template(_)
            | Error::EngineStopped
            | Error::Internal(_) => ErrorCode::Internal,
        }
    }
}

impl From<Error> for BackendError {
    fn from(e: Error) -> Self {
        let retry_after = match &e {
            Error::Overloaded { retry_after, .. } => Some(*retry_after),
            _ => None,
        };
        BackendError::new(e.code(), e.to_string()).with_retry_after(retry_after)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overload_maps_to_a_retryable_backend_error_with_a_hint() {
        let e = Error::Overloaded { running: 4, queued: 8, retry_after: Duration::from_secs(3) };
        let b = BackendError::from(e);
        assert_eq!(b.code, ErrorCode::Overloaded);
        assert_eq!(b.retry_after, Some(Duration::from_secs(3)));
        assert!(b.retryable());
    }

    #[test]
    fn missing_model_names_the_fetch_command() {
        let e = Error::ModelNotFound { path: "/x.gguf".into() };
        assert!(e.to_string().contains(FETCH_COMMAND));
        assert_eq!(
            Error::ContextLengthExceeded { prompt: 9, context: 8 }.code(),
            ErrorCode::ContextLengthExceeded
        );
    }
}
