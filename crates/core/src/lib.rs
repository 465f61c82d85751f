//! The shared vocabulary of Switchyard, an LLM router.
//!
//! This crate owns what every other Switchyard crate must agree on, and nothing else:
//!
//! - [`openai`]: the OpenAI wire types (chat completions, completions, embeddings,
//!   models, errors). Unknown fields are kept, so parsing and writing a request loses
//!   nothing.
//! - [`sse`]: server-sent-events framing, a parser that yields the same events whatever
//!   the chunk boundaries and a writer.
//! - [`RequestMeta`]: the few fields the router reads from a body to route it, read
//!   without building the request, so the original bytes can be forwarded untouched.
//! - [`Backend`]: the trait remote adapters and the local model implement.
//! - [`Classify`] and [`ErrorCode`]: how every crate's errors say whose fault they are,
//!   whether a retry may help, and which code the client sees.
//!
//! It does no I/O and depends on no runtime: `serde`, `bytes`, `http` types and
//! `futures-core`'s `Stream` trait only. Mapping codes to HTTP statuses is the server's
//! job, not this crate's.
//!
//! # Example
//!
//! ```
//! use switchyard_core::{Endpoint, RequestMeta, sse::SseParser};
//!
//! let body = br#"{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
//! let meta = RequestMeta::parse(Endpoint::ChatCompletions, body)?;
//! assert_eq!(meta.model, "gpt-4o-mini");
//! assert!(meta.stream);
//!
//! // An upstream stream, split at an awkward place, still parses to the same events.
//! let mut parser = SseParser::new();
//! let mut events = parser.feed(b"data: {\"x\":1}\r");
//! events.extend(parser.feed(b"\n\r\ndata: [DONE]\n\n"));
//! assert_eq!(events[0].data, "{\"x\":1}");
//! assert!(events[1].is_done());
//! # Ok::<(), switchyard_core::Error>(())
//! ```

pub mod openai;
pub mod sse;

mod backend;
mod error;
mod request;

pub use backend::{
    Backend, BackendId, BackendRequest, BackendResponse, BodyStream, BoxFuture, Endpoint,
    ResponseBody,
};
pub use error::{BackendError, Classify, ErrorCode, ErrorSide};
pub use request::{Error, RequestMeta, fnv1a, rewrite_model};
