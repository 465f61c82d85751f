//! The [`Backend`] trait: what the router needs from anything that answers requests,
//! remote adapter or in-process model alike.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures_core::Stream;
use http::{HeaderMap, StatusCode};

use crate::error::BackendError;
use crate::openai::Model;
use crate::request::RequestMeta;

/// A boxed, sendable future, the return type of [`Backend`] methods.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A streamed response body: chunks of bytes as they arrive, or the error that cut it.
pub type BodyStream = Pin<Box<dyn Stream<Item = Result<Bytes, BackendError>> + Send>>;

/// A backend's name, unique within a configuration. Cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendId(Arc<str>);

/// The API operation a request is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Endpoint {
    /// `POST /v1/chat/completions`.
    ChatCompletions,
    /// `POST /v1/completions`.
    Completions,
    /// `POST /v1/embeddings`.
    Embeddings,
    /// `POST /v1/messages` in Anthropic's format, for backends that speak it natively.
    AnthropicMessages,
}

/// One request for a backend.
#[derive(Debug)]
pub struct BackendRequest {
    /// The operation.
    pub endpoint: Endpoint,
    /// The body exactly as the client sent it (OpenAI JSON, or Anthropic JSON for
    /// [`Endpoint::AnthropicMessages`]). Forwarded as is unless `upstream_model` is set.
    pub body: Bytes,
    /// What the router read from the body.
    pub meta: RequestMeta,
    /// When set, the model name the backend knows this model by; the body's `model`
    /// must be rewritten to it before sending.
    pub upstream_model: Option<Arc<str>>,
    /// Extra headers to pass upstream (request id, trace context). Never credentials.
    pub headers: HeaderMap,
}

/// A backend's answer. Error statuses are answers too: the backend reports what the
/// upstream said, and the router decides whether to retry elsewhere.
#[derive(Debug)]
pub struct BackendResponse {
    /// HTTP status.
    pub status: StatusCode,
    /// Headers worth passing to the client (`content-type`, rate-limit hints).
    pub headers: HeaderMap,
    /// The body, whole or streamed.
    pub body: ResponseBody,
}

/// A response body.
pub enum ResponseBody {
    /// The whole body.
    Full(Bytes),
    /// Server-sent events, relayed chunk by chunk.
    Stream(BodyStream),
}

/// Anything that can answer OpenAI-format requests.
///
/// Implementations: the OpenAI-compatible, Anthropic and Gemini adapters in
/// `switchyard-backends`, the local model in `switchyard-inference`, and whatever a
/// program embedding the server brings. All methods must be cancel-safe: dropping a
/// returned future or stream abandons the work (closes the upstream request, stops
/// local generation).
pub trait Backend: Send + Sync + 'static {
    /// The backend's configured name.
    fn id(&self) -> &BackendId;

    /// Send one request. Resolves when the response head is known; a streamed body
    /// follows in [`ResponseBody::Stream`].
    fn send(&self, request: BackendRequest)
    -> BoxFuture<'_, Result<BackendResponse, BackendError>>;

    /// The models this backend serves, as it reports them.
    fn models(&self) -> BoxFuture<'_, Result<Vec<Model>, BackendError>>;

    /// A cheap readiness check that never costs tokens.
    fn probe(&self) -> BoxFuture<'_, Result<(), BackendError>>;

    /// Whether this backend can serve `endpoint` at all.
    fn supports(&self, endpoint: Endpoint) -> bool {
        !matches!(endpoint, Endpoint::AnthropicMessages)
    }

    /// The exact number of prompt tokens an OpenAI chat request body would use, for
    /// backends that tokenize themselves (the local model); `None` when this backend
    /// cannot tell, and callers estimate. CPU-bound: call it off the async runtime for
    /// large bodies.
    fn count_tokens(&self, chat_body: &[u8]) -> Option<Result<u64, BackendError>> {
        let _ = chat_body;
        None
    }
}

impl BackendId {
    /// A backend id.
    pub fn new(name: &str) -> Self {
        BackendId(Arc::from(name))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&str> for BackendId {
    fn from(name: &str) -> Self {
        BackendId::new(name)
    }
}

impl fmt::Display for BackendId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for BackendId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl Endpoint {
    /// The path under the API base, e.g. `/chat/completions`.
    pub const fn path(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "/chat/completions",
            Endpoint::Completions => "/completions",
            Endpoint::Embeddings => "/embeddings",
            Endpoint::AnthropicMessages => "/messages",
        }
    }

    /// A short name for logs and metric labels.
    pub const fn as_str(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "chat_completions",
            Endpoint::Completions => "completions",
            Endpoint::Embeddings => "embeddings",
            Endpoint::AnthropicMessages => "messages",
        }
    }
}

impl ResponseBody {
    /// Whether the body is streamed.
    pub fn is_stream(&self) -> bool {
        matches!(self, ResponseBody::Stream(_))
    }
}

impl fmt::Debug for ResponseBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResponseBody::Full(bytes) => f.debug_tuple("Full").field(&bytes.len()).finish(),
            ResponseBody::Stream(_) => f.write_str("Stream(..)"),
        }
    }
}

impl BackendResponse {
    /// A complete JSON response with status 200.
    pub fn json(body: Bytes) -> Self {
        let mut headers = HeaderMap::new();
        headers
            .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
        BackendResponse { status: StatusCode::OK, headers, body: ResponseBody::Full(body) }
    }

    /// A server-sent-events response with status 200.
    pub fn event_stream(body: BodyStream) -> Self {
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/event-stream"),
        );
        BackendResponse { status: StatusCode::OK, headers, body: ResponseBody::Stream(body) }
    }
}
