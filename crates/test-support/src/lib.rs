//! Scriptable mock LLM upstreams and proptest strategies for Switchyard's tests.
//!
//! This crate owns the fake backends every integration and fault test talks to, and
//! nothing that ships: it is `publish = false` and only ever a dev-dependency.
//!
//! - [`MockUpstream`]: a real HTTP server (hyper 1, HTTP/1.1 and h2c) on
//!   `127.0.0.1:0` speaking the OpenAI, Anthropic Messages or Gemini API
//!   ([`Flavor`]). It records every request ([`RecordedRequest`]) and counts
//!   connections and streams ([`MockStats`]), so tests can assert what the router
//!   sent and when it hung up. It can be shut down (every connection reset, port
//!   closed) and restarted on the same port.
//! - [`Script`]: what the mock does with a request — status and error body, extra
//!   headers, delay before headers, number of chunks and delay between them, stall,
//!   reset or error event after k chunks, garbage, never answering — changeable at
//!   run time, and as a sequence ("first two attempts fail, then it works").
//! - [`Script::render`]: the exact bytes the mock sends for a script and request.
//!   Content and ids are a pure function of both (`"chunk 0 chunk 1 ..."`, ids from a
//!   hash of the body), so a response that went through the router can be
//!   byte-compared with what the mock produced.
//! - [`strategies`]: proptest strategies for arbitrary OpenAI chat requests and SSE
//!   streams and their chunkings.
//! - [`model_or_skip`]: the policy for tests that need the real default model.
//!
//! It does not use the router's own wire types to build responses: the shapes are
//! written from the providers' API references, so a bug in `switchyard-core`'s types
//! cannot hide behind a mock that shares it.
//!
//! The `switchyard-mock` binary in this package is a lean mock for benchmarks.
//!
//! # Example
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use http::Method;
//! use switchyard_test_support::{MockUpstream, Script, ms};
//!
//! // A backend that streams 10 chunks 5 ms apart and fails after the third.
//! let mock = MockUpstream::start(Script::ok().chunks(10).chunk_delay(ms(5)).error_after(3)).await?;
//! let url = format!("{}/v1/chat/completions", mock.url());
//! # let _ = url;
//!
//! // What it sends for a request, without a socket:
//! let body = br#"{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
//! let sent = Script::ok().chunks(10).error_after(3).render(&Method::POST, "/v1/chat/completions", body);
//! assert_eq!(sent.frames.len(), 4); // three content chunks and the error event
//! assert!(sent.body_string().contains("chunk 2 "));
//! assert!(!sent.body_string().contains("[DONE]"));
//!
//! // Later: the first attempt fails with a 503, then it works again.
//! mock.set_sequence([Script::status(503).retry_after(1), Script::ok()]);
//! mock.shutdown().await;
//! assert!(!mock.is_running());
//! # Ok(()) }
//! ```

pub mod strategies;

mod anthropic;
mod error;
mod gemini;
mod model;
mod openai;
mod render;
mod script;
mod server;

pub use error::{Error, Result};
pub use model::model_or_skip;
pub use render::Rendered;
pub use script::{DEFAULT_CREATED, DEFAULT_MODEL, Ending, Flavor, Script, ms};
pub use server::{MockStats, MockUpstream, RecordedRequest};
