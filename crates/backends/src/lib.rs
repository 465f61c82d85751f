//! Remote backend adapters for Switchyard.
//!
//! This crate owns everything that talks HTTP to an upstream LLM server:
//!
//! - one pooled upstream client ([`ClientFactory`]): for `http://` upstreams a lean
//!   HTTP/1.1 client whose connections are driven by the request's own task (no task
//!   hop per request); for `https://` hyper-util's connection pool over rustls (webpki
//!   roots plus an optional CA file), HTTP/1.1 and HTTP/2 by ALPN; HTTP/2 prior
//!   knowledge (h2c) per backend; `TCP_NODELAY` on every socket;
//! - per-request time limits ([`Timeouts`]): connect, first byte, total, idle gap
//!   between stream chunks, total stream time;
//! - the OpenAI-compatible adapter ([`OpenAiBackend`]) for OpenAI, vLLM, Ollama,
//!   llama.cpp server, LM Studio and LocalAI;
//! - the Anthropic and Gemini adapters ([`AnthropicBackend`], [`GeminiBackend`]),
//!   which translate OpenAI chat requests and answers (streams included);
//! - the translation itself as pure functions (request in, request out; event in,
//!   events out), including the inbound Anthropic Messages API the server offers on
//!   `/v1/messages` ([`messages_to_chat_request`], [`ChatToMessagesStream`], ...).
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

mod anthropic;
mod client;
mod error;
mod gemini;
mod h1;
mod openai;
mod remote;
mod translate;
mod upstream;

pub use anthropic::{AnthropicBackend, AnthropicSettings, DEFAULT_ANTHROPIC_VERSION};
pub use client::{ClientFactory, ClientSettings, HttpVersion};
pub use error::{Error, Result};
pub use gemini::{GeminiBackend, GeminiSettings};
pub use openai::{OpenAiBackend, OpenAiSettings};
pub use translate::ChunkOptions;
pub use translate::anthropic::{
    AnthropicToChatStream, DEFAULT_MAX_TOKENS, anthropic_error_to_openai,
    anthropic_to_chat_completion, chat_to_anthropic,
};
pub use translate::gemini::{
    GeminiRequest, GeminiToChatStream, chat_to_gemini, gemini_error_to_openai,
    gemini_to_chat_completion,
};
pub use translate::messages::{
    ChatToMessagesStream, IMAGE_TOKEN_ESTIMATE, MessagesStreamOptions, chat_completion_to_message,
    chat_error_to_messages, chat_stream_to_messages, estimate_message_tokens, messages_error_body,
    messages_error_event, messages_to_chat_request,
};
pub use upstream::{Timeouts, retry_after};
