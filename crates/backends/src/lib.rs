//! Remote backend adapters for Switchyard.
//!
//! This crate owns everything that talks HTTP to an upstream LLM server:
//!
//! - one pooled upstream client ([`ClientFactory`]): hyper-util's connection pool over
//!   rustls (webpki roots plus an optional CA file), HTTP/1.1 and HTTP/2 by ALPN, HTTP/2
//!   prior knowledge (h2c) per backend, `TCP_NODELAY` on every socket;
//! - per-request time limits ([`Timeouts`]): connect, first byte, total, idle gap
//!   between stream chunks, total stream time;
//! - the OpenAI-compatible adapter ([`OpenAiBackend`]) for OpenAI, vLLM, Ollama,
//!   llama.cpp server, LM Studio and LocalAI.
//!
//! Every adapter implements [`switchyard_core::Backend`]. Bodies that need no
//! translation are forwarded as the original bytes; streams are relayed chunk by chunk
//! and dropping a response stream closes the upstream request. Upstream error statuses
//! are returned as responses, not errors: the router decides whether to retry.
//!
//! It does not route, retry, check health or cache: those belong to the server and
//! to the strategy, health and cache crates.
//!
//! # Example
//!
//! ```
//! use switchyard_backends::{ClientFactory, OpenAiBackend, OpenAiSettings};
//! use switchyard_core::Backend;
//!
//! let factory = ClientFactory::default();
//! let settings = OpenAiSettings {
//!     name: "vllm-a".into(),
//!     url: "http://127.0.0.1:8000".into(),
//!     ..OpenAiSettings::default()
//! };
//! let backend = OpenAiBackend::new(&settings, &factory)?;
//! assert_eq!(backend.id().as_str(), "vllm-a");
//! # Ok::<(), switchyard_backends::Error>(())
//! ```

mod client;
mod error;
mod openai;
mod upstream;

pub use client::{ClientFactory, ClientSettings, HttpVersion};
pub use error::{Error, Result};
pub use openai::{OpenAiBackend, OpenAiSettings};
pub use upstream::{Timeouts, retry_after};
