//! Provider translation as pure functions: request in, request out; event in, events
//! out. No sockets, no clocks, no randomness: the caller passes what varies (`created`,
//! a fallback id), so every function can be tested against fixtures and fuzzed.
//!
//! - [`anthropic`]: OpenAI chat <-> Anthropic Messages, for the Anthropic backend.
//! - [`gemini`]: OpenAI chat <-> Gemini `generateContent`, for the Gemini backend.
//! - [`messages`]: the inbound Anthropic Messages API served from OpenAI-format
//!   backends (the reverse direction of [`anthropic`]).
//! - [`stream`]: the adapter that runs a stream translator over a [`BodyStream`].
//!
//! Errors are [`BackendError`]s: a translation error is either the client's
//! ([`ErrorCode::InvalidRequest`], [`ErrorCode::Unsupported`]) or the upstream's
//! ([`ErrorCode::UpstreamInvalid`]), and the server already maps those to statuses.
//!
//! [`BodyStream`]: switchyard_core::BodyStream

pub(crate) mod anthropic;
pub(crate) mod gemini;
pub(crate) mod messages;
pub(crate) mod stream;

use bytes::{BufMut, BytesMut};
use http::StatusCode;
use serde::Serialize;
use serde::de::DeserializeOwned;
use switchyard_core::sse::{SseEvent, SseParser};
use switchyard_core::{BackendError, ErrorCode};

/// What a stream translator needs to write OpenAI `chat.completion.chunk`s that the
/// provider's events do not say.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChunkOptions {
    /// Completion id used when the provider sends none (Gemini without `responseId`).
    pub id: String,
    /// Model reported when the provider names none.
    pub model: String,
    /// `created` of every chunk (Unix seconds).
    pub created: u64,
    /// Send a final chunk with usage (`stream_options.include_usage`).
    pub include_usage: bool,
}

/// A translator of one event stream into another, fed raw bytes.
pub(crate) trait PushTranslator: Send + 'static {
    /// Feed the next chunk of upstream bytes; translated bytes are appended to `out`.
    /// After an `Err` the translator is finished and ignores further input.
    fn push(&mut self, bytes: &[u8], out: &mut BytesMut) -> Result<(), BackendError>;

    /// The upstream ended. Appends the closing events, or fails if the stream ended
    /// before the provider said it was complete.
    fn finish(&mut self, out: &mut BytesMut) -> Result<(), BackendError>;
}

/// A translator of parsed SSE events.
pub(crate) trait EventTranslator {
    /// One upstream event.
    fn on_event(&mut self, event: &SseEvent, out: &mut BytesMut) -> Result<(), BackendError>;
    /// The upstream ended.
    fn on_end(&mut self, out: &mut BytesMut) -> Result<(), BackendError>;
}

/// SSE framing in front of an [`EventTranslator`].
#[derive(Debug, Default)]
pub(crate) struct Framed<T> {
    parser: SseParser,
    events: Vec<SseEvent>,
    inner: T,
    done: bool,
}

/// `usage` of an OpenAI response or chunk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub(crate) struct UsageOut {
    pub(crate) prompt_tokens: u64,
    pub(crate) completion_tokens: u64,
    pub(crate) total_tokens: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) prompt_tokens_details: Option<CachedTokens>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) completion_tokens_details: Option<ReasoningTokens>,
}

/// `usage.prompt_tokens_details`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub(crate) struct CachedTokens {
    pub(crate) cached_tokens: u64,
}

/// `usage.completion_tokens_details`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub(crate) struct ReasoningTokens {
    pub(crate) reasoning_tokens: u64,
}

/// What one chunk adds to a choice.
#[derive(Debug, Default, Serialize)]
pub(crate) struct DeltaOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) reasoning_content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) tool_calls: Option<[ToolDeltaOut<'a>; 1]>,
}

/// One tool-call fragment.
#[derive(Debug, Serialize)]
pub(crate) struct ToolDeltaOut<'a> {
    pub(crate) index: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) id: Option<&'a str>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub(crate) kind: Option<&'static str>,
    pub(crate) function: FunctionDeltaOut<'a>,
}

/// Name and argument fragment of a tool call.
#[derive(Debug, Serialize)]
pub(crate) struct FunctionDeltaOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) arguments: Option<&'a str>,
}

#[derive(Serialize)]
struct ChunkOut<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: &'a [ChoiceOut<'a>],
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<&'a UsageOut>,
}

#[derive(Serialize)]
struct ChoiceOut<'a> {
    index: u32,
    delta: DeltaOut<'a>,
    finish_reason: Option<&'a str>,
}

impl<T: EventTranslator> Framed<T> {
    pub(crate) fn new(inner: T) -> Self {
        Framed { parser: SseParser::new(), events: Vec::new(), inner, done: false }
    }

    pub(crate) fn inner(&self) -> &T {
        &self.inner
    }
}

impl<T: EventTranslator + Send + 'static> PushTranslator for Framed<T> {
    fn push(&mut self, bytes: &[u8], out: &mut BytesMut) -> Result<(), BackendError> {
        if self.done {
            return Ok(());
        }
        let mut events = std::mem::take(&mut self.events);
        self.parser.feed_into(bytes, &mut events);
        let mut result = Ok(());
        for event in &events {
            if let Err(error) = self.inner.on_event(event, out) {
                self.done = true;
                result = Err(error);
                break;
            }
        }
        events.clear();
        self.events = events;
        result
    }

    fn finish(&mut self, out: &mut BytesMut) -> Result<(), BackendError> {
        if self.done {
            return Ok(());
        }
        self.done = true;
        // A partial event at the end is dropped, as the SSE rules say: the translator
        // decides from what it has seen whether the stream was complete.
        self.parser.finish();
        self.inner.on_end(out)
    }
}

/// Writes OpenAI `chat.completion.chunk` events.
#[derive(Debug, Default)]
pub(crate) struct ChunkWriter {
    pub(crate) id: String,
    pub(crate) model: String,
    pub(crate) created: u64,
}

impl ChunkWriter {
    /// One chunk with one choice.
    pub(crate) fn delta(
        &self,
        out: &mut BytesMut,
        index: u32,
        delta: DeltaOut<'_>,
        finish_reason: Option<&str>,
    ) -> Result<(), BackendError> {
        let choices = [ChoiceOut { index, delta, finish_reason }];
        self.write(out, &choices, None)
    }

    /// The final usage chunk (no choices).
    pub(crate) fn usage(&self, out: &mut BytesMut, usage: &UsageOut) -> Result<(), BackendError> {
        self.write(out, &[], Some(usage))
    }

    fn write(
        &self,
        out: &mut BytesMut,
        choices: &[ChoiceOut<'_>],
        usage: Option<&UsageOut>,
    ) -> Result<(), BackendError> {
        let chunk = ChunkOut {
            id: &self.id,
            object: "chat.completion.chunk",
            created: self.created,
            model: &self.model,
            choices,
            usage,
        };
        out.put_slice(b"data: ");
        write_json(out, &chunk)?;
        out.put_slice(b"\n\n");
        Ok(())
    }
}

/// `data: [DONE]`.
pub(crate) fn write_done(out: &mut BytesMut) {
    out.put_slice(switchyard_core::sse::DONE_EVENT);
}

/// Serialise `value` into `out`.
pub(crate) fn write_json<T: Serialize + ?Sized>(
    out: &mut BytesMut,
    value: &T,
) -> Result<(), BackendError> {
    serde_json::to_writer(out.writer(), value)
        .map_err(|e| BackendError::new(ErrorCode::Internal, format!("cannot encode json: {e}")))
}

/// Serialise `value` to a new buffer.
pub(crate) fn to_bytes<T: Serialize + ?Sized>(value: &T) -> Result<bytes::Bytes, BackendError> {
    let mut out = BytesMut::with_capacity(256);
    write_json(&mut out, value)?;
    Ok(out.freeze())
}

/// Parse a client request body.
pub(crate) fn parse_request<T: DeserializeOwned>(body: &[u8]) -> Result<T, BackendError> {
    serde_json::from_slice(body).map_err(|e| {
        BackendError::new(ErrorCode::InvalidRequest, format!("invalid request body: {e}"))
    })
}

/// Parse an upstream response body or event.
pub(crate) fn parse_upstream<'a, T: serde::Deserialize<'a>>(
    provider: &str,
    what: &str,
    data: &'a [u8],
) -> Result<T, BackendError> {
    serde_json::from_slice(data).map_err(|e| {
        BackendError::new(
            ErrorCode::UpstreamInvalid,
            format!("{provider} sent an invalid {what}: {e}"),
        )
    })
}

/// An error for a feature a provider cannot serve.
pub(crate) fn unsupported(message: impl Into<String>) -> BackendError {
    BackendError::new(ErrorCode::Unsupported, message)
}

/// An error in the client's request.
pub(crate) fn invalid(message: impl Into<String>) -> BackendError {
    BackendError::new(ErrorCode::InvalidRequest, message)
}

/// The code of an upstream error status, when the body does not say better.
pub(crate) fn code_for_status(status: StatusCode) -> ErrorCode {
    match status.as_u16() {
        400 | 422 => ErrorCode::InvalidRequest,
        401 => ErrorCode::Unauthorized,
        403 => ErrorCode::Forbidden,
        404 => ErrorCode::NotFound,
        408 | 504 => ErrorCode::UpstreamTimeout,
        413 => ErrorCode::PayloadTooLarge,
        429 => ErrorCode::RateLimited,
        503 | 529 => ErrorCode::Overloaded,
        _ => ErrorCode::UpstreamStatus,
    }
}

/// The status a translated error answers with: the provider's, except Anthropic's
/// non-standard 529 (overloaded), which becomes 503 so routers and clients retry it.
pub(crate) fn translated_status(status: StatusCode) -> StatusCode {
    if status.as_u16() == 529 { StatusCode::SERVICE_UNAVAILABLE } else { status }
}

/// An OpenAI error body: `{"error": {"message", "type", "param": null, "code"}}`.
pub(crate) fn openai_error_body(code: ErrorCode, message: &str) -> bytes::Bytes {
    let body =
        switchyard_core::openai::ErrorBody::new(message, code.error_type(), Some(code.as_str()));
    to_bytes(&body).unwrap_or_else(|_| bytes::Bytes::from_static(b"{\"error\":{}}"))
}

/// The parts of a `data:` URL: media type and base64 payload. `None` unless the URL
/// is base64-encoded.
pub(crate) fn parse_data_url(url: &str) -> Option<(&str, &str)> {
    let rest = url.strip_prefix("data:")?;
    let (header, data) = rest.split_once(',')?;
    let header = header.strip_suffix(";base64")?;
    let media_type = header.split(';').next().unwrap_or("");
    Some((if media_type.is_empty() { "application/octet-stream" } else { media_type }, data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_urls_split_into_media_type_and_payload() {
        assert_eq!(parse_data_url("data:image/png;base64,AAAA"), Some(("image/png", "AAAA")));
        assert_eq!(
            parse_data_url("data:image/jpeg;name=x.jpg;base64,/9j/"),
            Some(("image/jpeg", "/9j/"))
        );
        assert_eq!(parse_data_url("data:;base64,QQ=="), Some(("application/octet-stream", "QQ==")));
        assert_eq!(parse_data_url("data:text/plain,hello"), None);
        assert_eq!(parse_data_url("https://example.com/a.png"), None);
    }

    #[test]
    fn statuses_map_to_codes_and_529_becomes_503() {
        assert_eq!(code_for_status(StatusCode::UNAUTHORIZED), ErrorCode::Unauthorized);
        assert_eq!(code_for_status(StatusCode::from_u16(529).unwrap()), ErrorCode::Overloaded);
        assert_eq!(code_for_status(StatusCode::BAD_GATEWAY), ErrorCode::UpstreamStatus);
        assert_eq!(
            translated_status(StatusCode::from_u16(529).unwrap()),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(translated_status(StatusCode::UNAUTHORIZED), StatusCode::UNAUTHORIZED);
    }

    #[test]
    fn chunk_writer_writes_openai_chunks() {
        let writer = ChunkWriter { id: "c1".into(), model: "m".into(), created: 7 };
        let mut out = BytesMut::new();
        writer
            .delta(
                &mut out,
                0,
                DeltaOut { role: Some("assistant"), content: Some(""), ..DeltaOut::default() },
                None,
            )
            .unwrap();
        writer
            .usage(
                &mut out,
                &UsageOut {
                    prompt_tokens: 1,
                    completion_tokens: 2,
                    total_tokens: 3,
                    ..UsageOut::default()
                },
            )
            .unwrap();
        write_done(&mut out);
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":7,\"model\":\"m\",\
             \"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}]}\n\n\
             data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":7,\"model\":\"m\",\
             \"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2,\"total_tokens\":3}}\n\n\
             data: [DONE]\n\n"
        );
    }
}
