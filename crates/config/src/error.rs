//! [`ConfigError`]: why a configuration could not be loaded.

use std::fmt;
use std::path::PathBuf;

use switchyard_core::{Classify, ErrorCode};

/// The crate's result type.
pub type Result<T, E = ConfigError> = std::result::Result<T, E>;

/// Why a configuration could not be loaded. The binary exits with
/// [`ConfigError::EXIT_CODE`] on any of these.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// An explicitly named config file does not exist.
    #[error("config file {} does not exist", path.display())]
    NotFound {
        /// The path given.
        path: PathBuf,
    },
    /// A config file exists but could not be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file is not well-formed YAML (or JSON).
    #[error("{origin} is not valid YAML: {message}")]
    Parse {
        /// What was being parsed (a file path, or "the config text").
        origin: String,
        /// The parser's message, with line and column.
        message: String,
    },
    /// The configuration parsed but is invalid; every problem found, one per line.
    #[error("{}", Issues(issues))]
    Invalid {
        /// Every problem, in file order where possible.
        issues: Vec<Issue>,
    },
}

/// One validation problem: the key path and what is wrong with it.
///
/// Displays as `backends[1].url: backend "vllm-a" needs a url`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issue {
    /// The key path, e.g. `backends[1].url` or `routing.weights."http://a:1"`;
    /// empty for the document as a whole.
    pub path: String,
    /// What is wrong, lowercase, including where the value came from when it was not
    /// the file (e.g. `(from env SWITCHYARD_SERVER__WORKERS)`).
    pub message: String,
}

impl ConfigError {
    /// The process exit code for an invalid configuration (`EX_USAGE`).
    pub const EXIT_CODE: u8 = 64;

    /// The individual problems, when the error is [`ConfigError::Invalid`].
    pub fn issues(&self) -> &[Issue] {
        match self {
            ConfigError::Invalid { issues } => issues,
            _ => &[],
        }
    }
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

struct Issues<'a>(&'a [Issue]);

impl fmt::Display for Issues<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, issue) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{issue}")?;
        }
        Ok(())
    }
}

/// A configuration error is the operator's input being wrong (never retryable); an
/// unreadable file is an internal failure.
impl Classify for ConfigError {
    fn code(&self) -> ErrorCode {
        match self {
            ConfigError::Read { .. } => ErrorCode::Internal,
            _ => ErrorCode::InvalidRequest,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_one_issue_per_line() {
        let err = ConfigError::Invalid {
            issues: vec![
                Issue {
                    path: "backends[1].url".into(),
                    message: "backend \"vllm-a\" needs a url".into(),
                },
                Issue { path: String::new(), message: "whole document".into() },
            ],
        };
        assert_eq!(
            err.to_string(),
            "backends[1].url: backend \"vllm-a\" needs a url\nwhole document"
        );
        assert_eq!(err.issues().len(), 2);
        assert!(!err.retryable());
        assert_eq!(err.code(), ErrorCode::InvalidRequest);
    }
}
