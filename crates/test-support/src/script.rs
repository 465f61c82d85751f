//! What a mock upstream does with one request: the [`Script`] builder.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use serde_json::Value;

/// Shorthand for [`Duration::from_millis`], so scripts read as `chunk_delay(ms(5))`.
pub const fn ms(millis: u64) -> Duration {
    Duration::from_millis(millis)
}

/// Which provider's API a mock speaks.
///
/// A mock answers only its provider's paths (anything else is a 404 in that
/// provider's error shape), so a router sending an OpenAI request to an Anthropic
/// backend fails the way it would in production.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Flavor {
    /// OpenAI and OpenAI-compatible servers: `/v1/chat/completions`,
    /// `/v1/completions`, `/v1/embeddings`, `/v1/models`, `/health`.
    #[default]
    OpenAi,
    /// Anthropic Messages API: `POST /v1/messages`, `POST /v1/messages/count_tokens`,
    /// `GET /v1/models`.
    Anthropic,
    /// Gemini API: `POST /v1beta/models/{model}:generateContent`,
    /// `:streamGenerateContent[?alt=sse]`, `:countTokens`, `GET /v1beta/models`.
    Gemini,
}

/// How a response ends once its frames (see [`Rendered::frames`](crate::Rendered)) are sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Ending {
    /// The body ends cleanly (for HTTP/1.1 the chunked terminator is written).
    Complete,
    /// Nothing more is sent, and the connection stays open until the peer closes it
    /// or the mock shuts down.
    Stall,
    /// The TCP connection is aborted with a reset (`SO_LINGER` 0), without a clean end.
    Reset,
    /// No response at all: the request is read and never answered.
    NeverAnswer,
}

/// The behaviour of a mock upstream for one request, built fluently.
///
/// ```
/// use switchyard_test_support::{Script, ms};
///
/// // Ten content chunks 5 ms apart, then the stream stalls after the third.
/// let script = Script::ok().chunks(10).chunk_delay(ms(5)).stall_after(3);
/// // A rate limit with a `Retry-After` header, twice, for a sequence.
/// let limited = Script::status(429).retry_after(2).times(2);
/// # let _ = (script, limited);
/// ```
///
/// Stream faults (`stall_after`, `reset_after`, `error_after`) count *content
/// events*: OpenAI and Gemini chunks carrying text, Anthropic `content_block_delta`s.
/// Anthropic's preamble (`message_start`, `content_block_start`, `ping`) is sent
/// before content event 0, so `error_after(0)` on Anthropic sends the preamble and
/// then the `error` event. They apply to streaming responses only; a non-streaming
/// request under such a script is answered normally.
#[derive(Clone, Debug)]
pub struct Script {
    pub(crate) flavor: Flavor,
    pub(crate) status: u16,
    pub(crate) error_body: Option<Value>,
    pub(crate) raw_body: Option<Bytes>,
    pub(crate) headers: Vec<(HeaderName, HeaderValue)>,
    pub(crate) delay: Duration,
    pub(crate) chunks: usize,
    pub(crate) texts: Option<Vec<String>>,
    pub(crate) tool_call: Option<(String, Value)>,
    pub(crate) chunk_delay: Duration,
    pub(crate) fault: Option<(usize, Fault)>,
    pub(crate) never_answer: bool,
    pub(crate) garbage: bool,
    pub(crate) models: Vec<String>,
    pub(crate) created: u64,
    pub(crate) embedding_dims: usize,
    pub(crate) api_key: Option<String>,
    pub(crate) times: usize,
}

/// A stream fault after k content events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fault {
    Stall,
    Reset,
    Error,
}

/// The model a mock lists when the script names none.
pub const DEFAULT_MODEL: &str = "mock-model";

/// The `created` timestamp every mock response carries unless the script sets one.
pub const DEFAULT_CREATED: u64 = 1_700_000_000;

impl Default for Script {
    fn default() -> Self {
        Script::ok()
    }
}

impl Script {
    /// A healthy OpenAI-flavoured upstream: 200, three content chunks
    /// (`"chunk 0 "`, `"chunk 1 "`, `"chunk 2 "`), no delays, one listed model
    /// ([`DEFAULT_MODEL`]).
    pub fn ok() -> Self {
        Script {
            flavor: Flavor::OpenAi,
            status: 200,
            error_body: None,
            raw_body: None,
            headers: Vec::new(),
            delay: Duration::ZERO,
            chunks: 3,
            texts: None,
            tool_call: None,
            chunk_delay: Duration::ZERO,
            fault: None,
            never_answer: false,
            garbage: false,
            models: vec![DEFAULT_MODEL.to_owned()],
            created: DEFAULT_CREATED,
            embedding_dims: 8,
            api_key: None,
            times: 1,
        }
    }

    /// Answer every request with `status` and an error body in the flavour's shape
    /// (for a 2xx status, the normal response is sent with that status).
    pub fn status(status: u16) -> Self {
        Script { status, ..Script::ok() }
    }

    /// Answer with `status` and an error body carrying `message`.
    pub fn error(status: u16, message: &str) -> Self {
        let mut script = Script::status(status);
        script.error_body = Some(Value::String(message.to_owned()));
        script
    }

    /// Accept the connection, read the request, never answer.
    pub fn never_answer() -> Self {
        Script { never_answer: true, ..Script::ok() }
    }

    /// Answer 200 with a body that is neither JSON nor valid SSE.
    pub fn garbage() -> Self {
        Script { garbage: true, ..Script::ok() }
    }

    /// Speak another provider's API.
    #[must_use]
    pub fn flavor(mut self, flavor: Flavor) -> Self {
        self.flavor = flavor;
        self
    }

    /// Shorthand for `.flavor(Flavor::Anthropic)`.
    #[must_use]
    pub fn anthropic(self) -> Self {
        self.flavor(Flavor::Anthropic)
    }

    /// Shorthand for `.flavor(Flavor::Gemini)`.
    #[must_use]
    pub fn gemini(self) -> Self {
        self.flavor(Flavor::Gemini)
    }

    /// Set the status code.
    #[must_use]
    pub fn with_status(mut self, status: u16) -> Self {
        self.status = status;
        self
    }

    /// Use this JSON as the error body of a non-2xx answer instead of the default.
    #[must_use]
    pub fn error_body(mut self, body: Value) -> Self {
        self.error_body = Some(body);
        self
    }

    /// Send exactly these bytes as the body (status and headers still apply; no
    /// `Content-Type` is added unless set with [`Script::header`]).
    #[must_use]
    pub fn raw_body(mut self, body: impl Into<Bytes>) -> Self {
        self.raw_body = Some(body.into());
        self
    }

    /// Add a response header.
    ///
    /// Invalid names or values are ignored (this is a test helper; the test that
    /// relies on the header will fail visibly).
    #[must_use]
    pub fn header(mut self, name: &str, value: &str) -> Self {
        if let (Ok(name), Ok(value)) = (HeaderName::try_from(name), HeaderValue::try_from(value)) {
            self.headers.push((name, value));
        }
        self
    }

    /// Add `Retry-After: <seconds>`.
    #[must_use]
    pub fn retry_after(self, seconds: u64) -> Self {
        self.header("retry-after", &seconds.to_string())
    }

    /// Wait this long before sending the response headers.
    #[must_use]
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Number of content chunks of a stream (and of pieces joined for a
    /// non-streaming answer). Generated texts are `"chunk {i} "`.
    #[must_use]
    pub fn chunks(mut self, chunks: usize) -> Self {
        self.chunks = chunks;
        self.texts = None;
        self
    }

    /// Use these texts as the content chunks (their count replaces [`Script::chunks`]).
    #[must_use]
    pub fn texts<I, S>(mut self, texts: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let texts: Vec<String> = texts.into_iter().map(Into::into).collect();
        self.chunks = texts.len();
        self.texts = Some(texts);
        self
    }

    /// Answer with a call of tool `name` with these arguments instead of text.
    ///
    /// Streams split the JSON-encoded arguments into [`Script::chunks`] pieces
    /// (OpenAI `tool_calls[].function.arguments` deltas, Anthropic `input_json_delta`);
    /// Gemini sends the whole `functionCall` in one chunk, as Gemini does.
    #[must_use]
    pub fn tool_call(mut self, name: &str, arguments: Value) -> Self {
        self.tool_call = Some((name.to_owned(), arguments));
        self
    }

    /// Wait this long between two frames of a stream.
    #[must_use]
    pub fn chunk_delay(mut self, delay: Duration) -> Self {
        self.chunk_delay = delay;
        self
    }

    /// After `k` content events, send nothing more and keep the connection open.
    #[must_use]
    pub fn stall_after(mut self, k: usize) -> Self {
        self.fault = Some((k, Fault::Stall));
        self
    }

    /// After `k` content events, abort the TCP connection with a reset (about 20 ms
    /// after the last frame, so it reaches the peer first). Over h2c this resets the
    /// whole connection, every stream on it included.
    #[must_use]
    pub fn reset_after(mut self, k: usize) -> Self {
        self.fault = Some((k, Fault::Reset));
        self
    }

    /// After `k` content events, send the flavour's stream error event and end the
    /// body cleanly without a completion marker (no `data: [DONE]`, no `message_stop`).
    #[must_use]
    pub fn error_after(mut self, k: usize) -> Self {
        self.fault = Some((k, Fault::Error));
        self
    }

    /// The models `GET /v1/models` (or `/v1beta/models`) lists.
    #[must_use]
    pub fn models<I, S>(mut self, models: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.models = models.into_iter().map(Into::into).collect();
        self
    }

    /// The `created` Unix timestamp in responses (default [`DEFAULT_CREATED`]).
    #[must_use]
    pub fn created(mut self, created: u64) -> Self {
        self.created = created;
        self
    }

    /// Length of the vectors `/v1/embeddings` returns (default 8).
    #[must_use]
    pub fn embedding_dims(mut self, dims: usize) -> Self {
        self.embedding_dims = dims;
        self
    }

    /// Answer 401 unless the request carries this key (`Authorization: Bearer`,
    /// `x-api-key` or `x-goog-api-key`).
    #[must_use]
    pub fn require_api_key(mut self, key: &str) -> Self {
        self.api_key = Some(key.to_owned());
        self
    }

    /// In a sequence ([`MockUpstream::set_sequence`](crate::MockUpstream::set_sequence)),
    /// answer this many requests with this script before moving on (default 1).
    #[must_use]
    pub fn times(mut self, n: usize) -> Self {
        self.times = n.max(1);
        self
    }

    /// The delay before headers.
    pub fn headers_delay(&self) -> Duration {
        self.delay
    }

    /// The delay between stream frames.
    pub fn frame_delay(&self) -> Duration {
        self.chunk_delay
    }

    /// The provider flavour.
    pub fn provider(&self) -> Flavor {
        self.flavor
    }

    /// The content texts, generated or explicit.
    pub(crate) fn content_texts(&self) -> Vec<String> {
        match &self.texts {
            Some(texts) => texts.clone(),
            None => (0..self.chunks).map(|i| format!("chunk {i} ")).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_sets_what_it_says() {
        let s = Script::ok().chunks(10).chunk_delay(ms(5)).stall_after(3).retry_after(2);
        assert_eq!(s.chunks, 10);
        assert_eq!(s.chunk_delay, Duration::from_millis(5));
        assert_eq!(s.fault, Some((3, Fault::Stall)));
        assert_eq!(s.headers[0].0, "retry-after");
        assert_eq!(s.headers[0].1, "2");
        assert_eq!(
            s.content_texts(),
            vec![
                "chunk 0 ", "chunk 1 ", "chunk 2 ", "chunk 3 ", "chunk 4 ", "chunk 5 ", "chunk 6 ",
                "chunk 7 ", "chunk 8 ", "chunk 9 "
            ]
        );
    }

    #[test]
    fn texts_override_chunk_count_and_times_is_at_least_one() {
        let s = Script::ok().texts(["a", "b"]).times(0);
        assert_eq!(s.chunks, 2);
        assert_eq!(s.content_texts(), vec!["a", "b"]);
        assert_eq!(s.times, 1);
        let bad = Script::ok().header("bad header", "x");
        assert!(bad.headers.is_empty());
    }
}
