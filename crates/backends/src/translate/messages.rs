//! The inbound Anthropic Messages API served from OpenAI-format backends: an Anthropic
//! request becomes an OpenAI chat request; the OpenAI answer (whole, streamed or an
//! error) becomes Anthropic's. Backends that speak Messages natively get the original
//! body instead (`Endpoint::AnthropicMessages`).

use std::borrow::Cow;

use bytes::{BufMut, Bytes, BytesMut};
use http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use switchyard_core::sse::SseEvent;
use switchyard_core::{BackendError, BodyStream, ErrorCode};

use super::{
    EventTranslator, Framed, PushTranslator, invalid, parse_request, parse_upstream, to_bytes,
    unsupported, write_json,
};

/// Tokens counted per image or base64 document by [`estimate_message_tokens`]
/// (about what Anthropic charges for a 1,092 x 1,092 image).
pub const IMAGE_TOKEN_ESTIMATE: u64 = 1_600;

/// What [`ChatToMessagesStream`] needs to know that OpenAI chunks do not say.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MessagesStreamOptions {
    /// The model named in `message_start` (the model the client asked for); when
    /// empty, the first chunk's model.
    pub model: String,
    /// `usage.input_tokens` of `message_start`, before the backend reports usage at
    /// the end (for example [`estimate_message_tokens`] of the request; 0 if unknown).
    /// `message_delta` carries the backend's own count when it sends one.
    pub input_tokens: u64,
}

/// Translates an OpenAI `chat.completion.chunk` stream into Anthropic's event stream:
/// `message_start`, then for each text or tool call a `content_block_start`, its
/// `content_block_delta`s (`text_delta`, `input_json_delta`) and a
/// `content_block_stop`, then `message_delta` (stop reason and usage) and
/// `message_stop` when the backend sends `data: [DONE]` (or ends after a
/// `finish_reason`).
///
/// An in-band `{"error": ...}` chunk becomes an `Err`, as does a stream cut before a
/// `finish_reason`; the server then ends the client's stream with
/// [`messages_error_event`]. Only choice 0 is translated. `reasoning_content` deltas
/// are not relayed (Anthropic thinking blocks need signatures a translation cannot
/// produce).
///
/// ```
/// use bytes::BytesMut;
/// use switchyard_backends::{ChatToMessagesStream, MessagesStreamOptions};
///
/// let options = MessagesStreamOptions { model: "claude-sonnet-4".into(), input_tokens: 9 };
/// let mut translator = ChatToMessagesStream::new(options);
/// let mut out = BytesMut::new();
/// // Any split of the backend's bytes gives the same events.
/// translator.push(b"data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}]}\n\nda", &mut out)?;
/// translator.push(b"ta: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n", &mut out)?;
/// translator.finish(&mut out)?;
/// let text = String::from_utf8(out.to_vec()).unwrap();
/// let names: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("event: ")).collect();
/// assert_eq!(names, ["message_start", "content_block_start", "content_block_delta",
///                    "content_block_stop", "message_delta", "message_stop"]);
/// # Ok::<(), switchyard_core::BackendError>(())
/// ```
#[derive(Debug)]
pub struct ChatToMessagesStream(Framed<StreamState>);

#[derive(Debug, Default)]
pub(crate) struct StreamState {
    model: String,
    input_tokens: u64,
    started: bool,
    /// The open content block: its Anthropic index and, for a tool call, the OpenAI
    /// tool call index.
    open: Option<(u32, Open)>,
    next_block: u32,
    stop_reason: Option<&'static str>,
    usage: Option<(u64, u64)>,
    complete: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Open {
    Text,
    Tool(u32),
}

#[derive(Deserialize)]
struct MessagesRequest {
    model: String,
    messages: Vec<TurnIn>,
    #[serde(default)]
    system: Option<ContentIn>,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    stop_sequences: Option<Vec<String>>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(default)]
    top_p: Option<f64>,
    #[serde(default)]
    top_k: Option<u64>,
    #[serde(default)]
    tools: Option<Vec<ToolIn>>,
    #[serde(default)]
    tool_choice: Option<ToolChoiceIn>,
    #[serde(default)]
    metadata: Option<MetadataIn>,
}

#[derive(Deserialize)]
struct TurnIn {
    role: String,
    content: ContentIn,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ContentIn {
    Text(String),
    Blocks(Vec<Map<String, Value>>),
}

#[derive(Deserialize)]
struct ToolIn {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    input_schema: Option<Value>,
}

#[derive(Deserialize)]
struct ToolChoiceIn {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    disable_parallel_tool_use: Option<bool>,
}

#[derive(Deserialize)]
struct MetadataIn {
    #[serde(default)]
    user_id: Option<String>,
}

#[derive(Deserialize)]
struct CompletionIn {
    #[serde(default)]
    id: String,
    #[serde(default)]
    model: String,
    #[serde(default)]
    choices: Vec<ChoiceIn>,
    #[serde(default)]
    usage: Option<UsageIn>,
}

#[derive(Deserialize)]
struct ChoiceIn {
    #[serde(default)]
    message: Option<ReplyIn>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct ReplyIn {
    #[serde(default)]
    content: Option<Value>,
    #[serde(default)]
    tool_calls: Option<Vec<ToolCallIn>>,
}

#[derive(Deserialize)]
struct ToolCallIn {
    #[serde(default)]
    id: String,
    #[serde(default)]
    function: FunctionIn,
}

#[derive(Default, Deserialize)]
struct FunctionIn {
    #[serde(default)]
    name: String,
    #[serde(default)]
    arguments: String,
}

#[derive(Clone, Copy, Default, Deserialize)]
struct UsageIn {
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    completion_tokens: Option<u64>,
    #[serde(default)]
    prompt_tokens_details: Option<PromptDetailsIn>,
}

#[derive(Clone, Copy, Default, Deserialize)]
struct PromptDetailsIn {
    #[serde(default)]
    cached_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct ChunkIn<'a> {
    #[serde(borrow, default)]
    id: Cow<'a, str>,
    #[serde(borrow, default)]
    model: Cow<'a, str>,
    #[serde(borrow, default)]
    choices: Vec<ChunkChoiceIn<'a>>,
    #[serde(default)]
    usage: Option<UsageIn>,
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Deserialize)]
struct ChunkChoiceIn<'a> {
    #[serde(default)]
    index: u32,
    #[serde(borrow, default)]
    delta: Option<DeltaIn<'a>>,
    #[serde(borrow, default)]
    finish_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct DeltaIn<'a> {
    #[serde(borrow, default)]
    content: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    tool_calls: Option<Vec<ToolDeltaIn<'a>>>,
}

#[derive(Deserialize)]
struct ToolDeltaIn<'a> {
    #[serde(default)]
    index: u32,
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    function: Option<FunctionDeltaIn<'a>>,
}

#[derive(Deserialize)]
struct FunctionDeltaIn<'a> {
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    arguments: Option<Cow<'a, str>>,
}

#[derive(Serialize)]
struct BlockDeltaOut<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    index: u32,
    delta: DeltaOut<'a>,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum DeltaOut<'a> {
    TextDelta { text: &'a str },
    InputJsonDelta { partial_json: &'a str },
}

/// Translate an Anthropic Messages request into an OpenAI chat completions request.
///
/// ```
/// let chat = switchyard_backends::messages_to_chat_request(
///     br#"{"model":"claude-sonnet-4","max_tokens":64,"system":"be brief",
///          "messages":[{"role":"user","content":"hi"}]}"#,
/// )?;
/// assert_eq!(
///     &chat[..],
///     br#"{"model":"claude-sonnet-4","messages":[{"role":"system","content":"be brief"},{"role":"user","content":"hi"}],"max_tokens":64}"#
/// );
/// # Ok::<(), switchyard_core::BackendError>(())
/// ```
///
/// `system` becomes a system message; `tool_result` blocks become `tool` messages
/// (placed before the rest of their user turn, as OpenAI requires); `tool_use` blocks
/// become assistant `tool_calls`; images become `image_url` parts (data URLs for
/// base64 sources); base64 documents become `file` parts; `thinking` blocks are
/// dropped. A streamed request asks for `stream_options.include_usage`, so the
/// final `message_delta` carries token counts. Anthropic server tools (`bash_*`,
/// `web_search_*`, ...) and content blocks with no OpenAI equivalent are
/// [`ErrorCode::Unsupported`]; `thinking`, `service_tier` and `cache_control` are
/// ignored.
pub fn messages_to_chat_request(body: &[u8]) -> Result<Bytes, BackendError> {
    let request: MessagesRequest = parse_request(body)?;
    let mut messages: Vec<Value> = Vec::with_capacity(request.messages.len() + 1);
    if let Some(system) = request.system {
        let text = match system {
            ContentIn::Text(text) => text,
            ContentIn::Blocks(blocks) => {
                let texts: Vec<&str> =
                    blocks.iter().filter_map(|b| b.get("text").and_then(Value::as_str)).collect();
                texts.join("\n\n")
            }
        };
        if !text.is_empty() {
            messages.push(json!({"role": "system", "content": text}));
        }
    }
    for turn in request.messages {
        match turn.role.as_str() {
            "user" => user_turn(turn.content, &mut messages)?,
            "assistant" => messages.push(assistant_turn(turn.content)?),
            other => return Err(invalid(format!("unknown message role `{other}`"))),
        }
    }
    let mut out = Map::new();
    out.insert("model".into(), request.model.into());
    out.insert("messages".into(), messages.into());
    if let Some(max) = request.max_tokens {
        out.insert("max_tokens".into(), max.into());
    }
    if let Some(stop) = request.stop_sequences.filter(|s| !s.is_empty()) {
        out.insert("stop".into(), stop.into());
    }
    if let Some(t) = request.temperature {
        out.insert("temperature".into(), t.into());
    }
    if let Some(p) = request.top_p {
        out.insert("top_p".into(), p.into());
    }
    if let Some(k) = request.top_k {
        out.insert("top_k".into(), k.into());
    }
    if let Some(user) = request.metadata.and_then(|m| m.user_id) {
        out.insert("user".into(), user.into());
    }
    if request.stream == Some(true) {
        out.insert("stream".into(), true.into());
        out.insert("stream_options".into(), json!({"include_usage": true}));
    }
    let tools = request.tools.unwrap_or_default();
    if !tools.is_empty() {
        let tools = tools.into_iter().map(tool).collect::<Result<Vec<_>, _>>()?;
        out.insert("tools".into(), tools.into());
        if let Some(choice) = &request.tool_choice {
            let mode = match choice.kind.as_str() {
                "auto" => json!("auto"),
                "any" => json!("required"),
                "none" => json!("none"),
                "tool" => {
                    let name = choice
                        .name
                        .as_deref()
                        .ok_or_else(|| invalid("`tool_choice` of type `tool` needs `name`"))?;
                    json!({"type": "function", "function": {"name": name}})
                }
                other => return Err(invalid(format!("unknown `tool_choice` type `{other}`"))),
            };
            out.insert("tool_choice".into(), mode);
            if choice.disable_parallel_tool_use == Some(true) {
                out.insert("parallel_tool_calls".into(), false.into());
            }
        }
    }
    to_bytes(&Value::Object(out))
}

/// Translate an OpenAI `chat.completion` into an Anthropic `message` (choice 0).
pub fn chat_completion_to_message(body: &[u8]) -> Result<Bytes, BackendError> {
    let completion: CompletionIn = parse_upstream("the backend", "chat completion", body)?;
    let choice = completion.choices.into_iter().next();
    let finish =
        choice.as_ref().and_then(|c| c.finish_reason.as_deref()).map_or("end_turn", stop_reason);
    let mut content = Vec::new();
    if let Some(reply) = choice.and_then(|c| c.message) {
        let text = match reply.content {
            Some(Value::String(text)) => text,
            Some(Value::Array(parts)) => parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .concat(),
            _ => String::new(),
        };
        if !text.is_empty() {
            content.push(json!({"type": "text", "text": text}));
        }
        for call in reply.tool_calls.unwrap_or_default() {
            content.push(json!({
                "type": "tool_use",
                "id": call.id,
                "name": call.function.name,
                "input": arguments_object(&call.function.arguments),
            }));
        }
    }
    let usage = completion.usage.unwrap_or_default();
    to_bytes(&json!({
        "id": completion.id,
        "type": "message",
        "role": "assistant",
        "model": completion.model,
        "content": content,
        "stop_reason": finish,
        "stop_sequence": null,
        "usage": usage_json(&usage),
    }))
}

/// Translate an OpenAI error response body into Anthropic's error body,
/// `{"type": "error", "error": {"type", "message"}}`; the error type follows the
/// status. The status itself is unchanged.
pub fn chat_error_to_messages(status: StatusCode, body: &[u8]) -> Bytes {
    let message = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.pointer("/error/message").and_then(Value::as_str).map(str::to_owned))
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| format!("the backend answered {}", status.as_u16()));
    error_body(status_error_type(status), &message)
}

/// Anthropic's error body for one of the router's own errors.
pub fn messages_error_body(code: ErrorCode, message: &str) -> Bytes {
    error_body(code_error_type(code), message)
}

/// The `event: error` that ends a stream which failed after it began.
pub fn messages_error_event(error: &BackendError) -> Bytes {
    let mut out = BytesMut::with_capacity(error.message.len() + 96);
    out.put_slice(b"event: error\ndata: ");
    out.put_slice(&error_body(code_error_type(error.code), &error.message));
    out.put_slice(b"\n\n");
    out.freeze()
}

/// An estimate of the input tokens of an Anthropic Messages (or `count_tokens`)
/// request, for backends that cannot count exactly.
///
/// The heuristic: every run of 4 ASCII bytes is one token and every non-ASCII
/// character one token (CJK and emoji are about one token each, accented Latin is
/// overcounted slightly); 3 tokens per message for the turn framing; tool
/// definitions and tool inputs count as their JSON text; each image or base64
/// document counts [`IMAGE_TOKEN_ESTIMATE`]. Expect it within about 25% of a real
/// tokenizer on English prose and code.
pub fn estimate_message_tokens(body: &[u8]) -> Result<u64, BackendError> {
    let request: Value = parse_request(body)?;
    let mut estimate = Estimate::default();
    if let Some(system) = request.get("system") {
        estimate.content(system);
    }
    if let Some(Value::Array(messages)) = request.get("messages") {
        for message in messages {
            estimate.tokens += 3;
            if let Some(content) = message.get("content") {
                estimate.content(content);
            }
        }
    }
    if let Some(Value::Array(tools)) = request.get("tools") {
        for tool in tools {
            estimate.tokens += 5;
            estimate.json(tool);
        }
    }
    estimate.flush();
    Ok(estimate.tokens.max(1))
}

/// Stream [`ChatToMessagesStream`] over an OpenAI-format backend stream.
pub fn chat_stream_to_messages(stream: BodyStream, options: MessagesStreamOptions) -> BodyStream {
    super::stream::translate(stream, ChatToMessagesStream::new(options))
}

impl ChatToMessagesStream {
    /// A translator for one stream.
    pub fn new(options: MessagesStreamOptions) -> Self {
        ChatToMessagesStream(Framed::new(StreamState {
            model: options.model,
            input_tokens: options.input_tokens,
            ..StreamState::default()
        }))
    }

    /// Feed backend bytes (any split); Anthropic events are appended to `out`.
    /// After an `Err`, the translator ignores further input.
    pub fn push(&mut self, bytes: &[u8], out: &mut BytesMut) -> Result<(), BackendError> {
        self.0.push(bytes, out)
    }

    /// The backend stream ended: appends the closing events if a `finish_reason` was
    /// seen without `[DONE]`, or fails if the stream was cut.
    pub fn finish(&mut self, out: &mut BytesMut) -> Result<(), BackendError> {
        self.0.finish(out)
    }

    /// Whether `message_stop` has been written.
    pub fn is_complete(&self) -> bool {
        self.0.inner().complete
    }
}

impl PushTranslator for ChatToMessagesStream {
    fn push(&mut self, bytes: &[u8], out: &mut BytesMut) -> Result<(), BackendError> {
        self.0.push(bytes, out)
    }

    fn finish(&mut self, out: &mut BytesMut) -> Result<(), BackendError> {
        self.0.finish(out)
    }
}

impl StreamState {
    fn start(&mut self, out: &mut BytesMut, id: &str, model: &str) -> Result<(), BackendError> {
        if self.started {
            return Ok(());
        }
        self.started = true;
        let model = if self.model.is_empty() { model } else { &self.model };
        let id = if id.is_empty() { "msg_switchyard" } else { id };
        let start = json!({
            "type": "message_start",
            "message": {
                "id": id,
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [],
                "stop_reason": null,
                "stop_sequence": null,
                "usage": {"input_tokens": self.input_tokens, "output_tokens": 0},
            },
        });
        event(out, "message_start", &start)
    }

    fn close_block(&mut self, out: &mut BytesMut) -> Result<(), BackendError> {
        if let Some((index, _)) = self.open.take() {
            event(
                out,
                "content_block_stop",
                &json!({"type": "content_block_stop", "index": index}),
            )?;
        }
        Ok(())
    }

    fn open_block(
        &mut self,
        out: &mut BytesMut,
        kind: Open,
        block: Value,
    ) -> Result<u32, BackendError> {
        self.close_block(out)?;
        let index = self.next_block;
        self.next_block += 1;
        self.open = Some((index, kind));
        let start = json!({"type": "content_block_start", "index": index, "content_block": block});
        event(out, "content_block_start", &start)?;
        Ok(index)
    }

    fn delta(
        &self,
        out: &mut BytesMut,
        index: u32,
        delta: DeltaOut<'_>,
    ) -> Result<(), BackendError> {
        event(
            out,
            "content_block_delta",
            &BlockDeltaOut { kind: "content_block_delta", index, delta },
        )
    }

    fn complete(&mut self, out: &mut BytesMut) -> Result<(), BackendError> {
        self.start(out, "msg_switchyard", "")?;
        self.close_block(out)?;
        let (input, output) = self.usage.unwrap_or((self.input_tokens, 0));
        let mut usage = Map::new();
        if self.usage.is_some() {
            usage.insert("input_tokens".into(), input.into());
        }
        usage.insert("output_tokens".into(), output.into());
        let delta = json!({
            "type": "message_delta",
            "delta": {"stop_reason": self.stop_reason.unwrap_or("end_turn"), "stop_sequence": null},
            "usage": usage,
        });
        event(out, "message_delta", &delta)?;
        event(out, "message_stop", &json!({"type": "message_stop"}))?;
        self.complete = true;
        Ok(())
    }
}

impl EventTranslator for StreamState {
    fn on_event(&mut self, sse: &SseEvent, out: &mut BytesMut) -> Result<(), BackendError> {
        if self.complete {
            return Ok(());
        }
        if sse.is_done() {
            return self.complete(out);
        }
        let chunk: ChunkIn<'_> =
            parse_upstream("the backend", "stream chunk", sse.data.as_bytes())?;
        if let Some(error) = &chunk.error {
            let message = error.get("message").and_then(Value::as_str).unwrap_or("stream failed");
            return Err(BackendError::new(
                ErrorCode::UpstreamStatus,
                format!("backend stream error: {message}"),
            ));
        }
        self.start(out, &chunk.id, &chunk.model)?;
        if let Some(usage) = &chunk.usage {
            let cached = usage.prompt_tokens_details.and_then(|d| d.cached_tokens).unwrap_or(0);
            let input = usage.prompt_tokens.unwrap_or(0).saturating_sub(cached);
            self.usage = Some((input, usage.completion_tokens.unwrap_or(0)));
        }
        for choice in chunk.choices.iter().filter(|c| c.index == 0) {
            if let Some(delta) = &choice.delta {
                if let Some(text) = delta.content.as_deref().filter(|t| !t.is_empty()) {
                    let index = match self.open {
                        Some((index, Open::Text)) => index,
                        _ => {
                            self.open_block(out, Open::Text, json!({"type": "text", "text": ""}))?
                        }
                    };
                    self.delta(out, index, DeltaOut::TextDelta { text })?;
                }
                for call in delta.tool_calls.iter().flatten() {
                    let index = match self.open {
                        Some((index, Open::Tool(current))) if current == call.index => index,
                        _ => {
                            let id = match call.id.as_deref().filter(|id| !id.is_empty()) {
                                Some(id) => id.to_owned(),
                                None => format!("toolu_{}", self.next_block),
                            };
                            let name = call
                                .function
                                .as_ref()
                                .and_then(|f| f.name.as_deref())
                                .unwrap_or("");
                            let block =
                                json!({"type": "tool_use", "id": id, "name": name, "input": {}});
                            self.open_block(out, Open::Tool(call.index), block)?
                        }
                    };
                    let arguments = call.function.as_ref().and_then(|f| f.arguments.as_deref());
                    if let Some(partial_json) = arguments.filter(|a| !a.is_empty()) {
                        self.delta(out, index, DeltaOut::InputJsonDelta { partial_json })?;
                    }
                }
            }
            if let Some(reason) = &choice.finish_reason {
                self.stop_reason = Some(stop_reason(reason));
            }
        }
        Ok(())
    }

    fn on_end(&mut self, out: &mut BytesMut) -> Result<(), BackendError> {
        if self.complete {
            Ok(())
        } else if self.stop_reason.is_some() {
            self.complete(out)
        } else {
            Err(BackendError::new(
                ErrorCode::UpstreamUnavailable,
                "the backend's stream ended before it finished",
            ))
        }
    }
}

fn event<T: Serialize + ?Sized>(
    out: &mut BytesMut,
    name: &str,
    data: &T,
) -> Result<(), BackendError> {
    out.put_slice(b"event: ");
    out.put_slice(name.as_bytes());
    out.put_slice(b"\ndata: ");
    write_json(out, data)?;
    out.put_slice(b"\n\n");
    Ok(())
}

/// The Anthropic `stop_reason` of an OpenAI `finish_reason`.
fn stop_reason(finish_reason: &str) -> &'static str {
    match finish_reason {
        "length" => "max_tokens",
        "tool_calls" | "function_call" => "tool_use",
        "content_filter" => "refusal",
        _ => "end_turn",
    }
}

fn usage_json(usage: &UsageIn) -> Value {
    let cached = usage.prompt_tokens_details.and_then(|d| d.cached_tokens).unwrap_or(0);
    let mut out = Map::new();
    out.insert(
        "input_tokens".into(),
        usage.prompt_tokens.unwrap_or(0).saturating_sub(cached).into(),
    );
    out.insert("output_tokens".into(), usage.completion_tokens.unwrap_or(0).into());
    if cached > 0 {
        out.insert("cache_read_input_tokens".into(), cached.into());
    }
    Value::Object(out)
}

/// A tool call's arguments as the `input` object (anything but a JSON object is `{}`).
fn arguments_object(arguments: &str) -> Value {
    match serde_json::from_str::<Value>(arguments) {
        Ok(value @ Value::Object(_)) => value,
        _ => Value::Object(Map::new()),
    }
}

fn error_body(kind: &str, message: &str) -> Bytes {
    let body = json!({"type": "error", "error": {"type": kind, "message": message}});
    to_bytes(&body).unwrap_or_else(|_| Bytes::from_static(b"{\"type\":\"error\"}"))
}

fn status_error_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 | 405 | 415 | 422 => "invalid_request_error",
        401 => "authentication_error",
        402 | 403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        504 => "timeout_error",
        _ => "api_error",
    }
}

fn code_error_type(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::InvalidRequest
        | ErrorCode::ContextLengthExceeded
        | ErrorCode::MethodNotAllowed
        | ErrorCode::UnsupportedMediaType
        | ErrorCode::Unsupported => "invalid_request_error",
        ErrorCode::Unauthorized => "authentication_error",
        ErrorCode::Forbidden => "permission_error",
        ErrorCode::NotFound | ErrorCode::ModelNotFound => "not_found_error",
        ErrorCode::PayloadTooLarge => "request_too_large",
        ErrorCode::RateLimited => "rate_limit_error",
        ErrorCode::Overloaded | ErrorCode::NoHealthyBackend => "overloaded_error",
        ErrorCode::UpstreamTimeout => "timeout_error",
        _ => "api_error",
    }
}

fn tool(tool: ToolIn) -> Result<Value, BackendError> {
    match tool.kind.as_deref() {
        None | Some("custom") => {}
        Some(kind) => {
            return Err(unsupported(format!(
                "anthropic server tool `{kind}` needs an anthropic backend"
            )));
        }
    }
    let mut function = Map::new();
    function.insert("name".into(), tool.name.into());
    if let Some(description) = tool.description {
        function.insert("description".into(), description.into());
    }
    let parameters =
        tool.input_schema.unwrap_or_else(|| json!({"type": "object", "properties": {}}));
    function.insert("parameters".into(), parameters);
    Ok(json!({"type": "function", "function": function}))
}

fn block_type(block: &Map<String, Value>) -> &str {
    block.get("type").and_then(Value::as_str).unwrap_or("")
}

/// An image or document block as an OpenAI content part.
fn media_part(block: &Map<String, Value>) -> Result<Value, BackendError> {
    let kind = block_type(block);
    let source = block
        .get("source")
        .and_then(Value::as_object)
        .ok_or_else(|| invalid(format!("`{kind}` block without `source`")))?;
    let field = |name: &str| source.get(name).and_then(Value::as_str).unwrap_or("");
    match (kind, field("type")) {
        ("image", "base64") => {
            let url = format!("data:{};base64,{}", field("media_type"), field("data"));
            Ok(json!({"type": "image_url", "image_url": {"url": url}}))
        }
        ("image", "url") => Ok(json!({"type": "image_url", "image_url": {"url": field("url")}})),
        ("document", "base64") => {
            let data = format!("data:{};base64,{}", field("media_type"), field("data"));
            Ok(json!({"type": "file", "file": {"file_data": data}}))
        }
        ("document", "text") => Ok(json!({"type": "text", "text": field("data")})),
        (_, source) => Err(unsupported(format!(
            "`{kind}` blocks with a `{source}` source need an anthropic backend"
        ))),
    }
}

/// A user turn: its tool results as `tool` messages, then the rest as one user message.
fn user_turn(content: ContentIn, messages: &mut Vec<Value>) -> Result<(), BackendError> {
    let blocks = match content {
        ContentIn::Text(text) => {
            messages.push(json!({"role": "user", "content": text}));
            return Ok(());
        }
        ContentIn::Blocks(blocks) => blocks,
    };
    let mut parts: Vec<Value> = Vec::new();
    for block in blocks {
        match block_type(&block) {
            "text" => {
                let text = block.get("text").and_then(Value::as_str).unwrap_or("");
                parts.push(json!({"type": "text", "text": text}));
            }
            "image" | "document" => parts.push(media_part(&block)?),
            "tool_result" => {
                let id = block
                    .get("tool_use_id")
                    .and_then(Value::as_str)
                    .ok_or_else(|| invalid("`tool_result` without `tool_use_id`"))?;
                let text = match block.get("content") {
                    None | Some(Value::Null) => String::new(),
                    Some(Value::String(text)) => text.clone(),
                    Some(Value::Array(items)) => {
                        let mut texts = Vec::new();
                        for item in items.iter().filter_map(Value::as_object) {
                            match block_type(item) {
                                "text" => texts
                                    .push(item.get("text").and_then(Value::as_str).unwrap_or("")),
                                // Images in a tool result follow as a user message.
                                "image" | "document" => parts.push(media_part(item)?),
                                other => {
                                    return Err(unsupported(format!(
                                        "`{other}` blocks in a tool result need an anthropic backend"
                                    )));
                                }
                            }
                        }
                        texts.join("\n")
                    }
                    Some(_) => {
                        return Err(invalid("`tool_result.content` must be a string or blocks"));
                    }
                };
                messages.push(json!({"role": "tool", "tool_call_id": id, "content": text}));
            }
            other => {
                return Err(unsupported(format!("`{other}` blocks need an anthropic backend")));
            }
        }
    }
    if parts.is_empty() {
        return Ok(());
    }
    let content = if parts.iter().all(|p| p["type"] == "text") {
        let texts: Vec<&str> = parts.iter().filter_map(|p| p["text"].as_str()).collect();
        Value::String(texts.join("\n"))
    } else {
        Value::Array(parts)
    };
    messages.push(json!({"role": "user", "content": content}));
    Ok(())
}

fn assistant_turn(content: ContentIn) -> Result<Value, BackendError> {
    let blocks = match content {
        ContentIn::Text(text) => return Ok(json!({"role": "assistant", "content": text})),
        ContentIn::Blocks(blocks) => blocks,
    };
    let mut text = String::new();
    let mut calls = Vec::new();
    for block in blocks {
        match block_type(&block) {
            "text" => text.push_str(block.get("text").and_then(Value::as_str).unwrap_or("")),
            "tool_use" => {
                let field = |name: &str| block.get(name).and_then(Value::as_str).unwrap_or("");
                let input = block.get("input").cloned().unwrap_or_else(|| json!({}));
                calls.push(json!({
                    "id": field("id"),
                    "type": "function",
                    "function": {"name": field("name"), "arguments": input.to_string()},
                }));
            }
            "thinking" | "redacted_thinking" => {}
            other => {
                return Err(unsupported(format!("`{other}` blocks need an anthropic backend")));
            }
        }
    }
    let mut message = Map::new();
    message.insert("role".into(), "assistant".into());
    let content = if text.is_empty() && !calls.is_empty() { Value::Null } else { text.into() };
    message.insert("content".into(), content);
    if !calls.is_empty() {
        message.insert("tool_calls".into(), calls.into());
    }
    Ok(Value::Object(message))
}

/// Running token estimate.
#[derive(Default)]
struct Estimate {
    tokens: u64,
    ascii: u64,
}

impl Estimate {
    fn text(&mut self, text: &str) {
        for c in text.chars() {
            if c.is_ascii() {
                self.ascii += 1;
            } else {
                self.tokens += 1;
            }
        }
    }

    fn flush(&mut self) {
        self.tokens += self.ascii.div_ceil(4);
        self.ascii = 0;
    }

    fn json(&mut self, value: &Value) {
        match value {
            Value::String(s) => self.text(s),
            Value::Array(items) => items.iter().for_each(|v| self.json(v)),
            Value::Object(map) => {
                for (key, value) in map {
                    self.text(key);
                    self.json(value);
                }
            }
            Value::Number(n) => self.ascii += n.to_string().len() as u64,
            Value::Bool(_) | Value::Null => self.ascii += 4,
        }
    }

    fn content(&mut self, content: &Value) {
        match content {
            Value::String(text) => self.text(text),
            Value::Array(blocks) => {
                for block in blocks {
                    match block.get("type").and_then(Value::as_str) {
                        Some("text") => {
                            self.text(block.get("text").and_then(Value::as_str).unwrap_or(""))
                        }
                        Some("image") => self.tokens += IMAGE_TOKEN_ESTIMATE,
                        Some("document") => match block
                            .pointer("/source/type")
                            .and_then(Value::as_str)
                        {
                            Some("text") => self.text(
                                block.pointer("/source/data").and_then(Value::as_str).unwrap_or(""),
                            ),
                            _ => self.tokens += IMAGE_TOKEN_ESTIMATE,
                        },
                        Some("tool_use") => {
                            self.text(block.get("name").and_then(Value::as_str).unwrap_or(""));
                            if let Some(input) = block.get("input") {
                                self.json(input);
                            }
                        }
                        Some("tool_result") => {
                            if let Some(inner) = block.get("content") {
                                self.content(inner);
                            }
                        }
                        _ => self.json(block),
                    }
                }
            }
            other => self.json(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(request: Value) -> Value {
        serde_json::from_slice(&messages_to_chat_request(request.to_string().as_bytes()).unwrap())
            .unwrap()
    }

    #[test]
    fn tool_results_become_tool_messages_before_the_user_text() {
        let out = chat(json!({
            "model": "m",
            "max_tokens": 10,
            "system": [{"type": "text", "text": "a"}, {"type": "text", "text": "b", "cache_control": {"type": "ephemeral"}}],
            "messages": [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "hmm", "signature": "s"},
                    {"type": "tool_use", "id": "t1", "name": "f", "input": {"x": 1}}]},
                {"role": "user", "content": [
                    {"type": "text", "text": "also"},
                    {"type": "tool_result", "tool_use_id": "t1", "content": [{"type": "text", "text": "42"}]}]},
            ],
            "stream": true,
        }));
        assert_eq!(out["messages"][0], json!({"role": "system", "content": "a\n\nb"}));
        assert_eq!(
            out["messages"][2],
            json!({"role": "assistant", "content": null, "tool_calls": [
                {"id": "t1", "type": "function", "function": {"name": "f", "arguments": "{\"x\":1}"}}]})
        );
        assert_eq!(
            out["messages"][3],
            json!({"role": "tool", "tool_call_id": "t1", "content": "42"})
        );
        assert_eq!(out["messages"][4], json!({"role": "user", "content": "also"}));
        assert_eq!(out["stream_options"], json!({"include_usage": true}));
    }

    #[test]
    fn server_tools_and_unknown_blocks_are_unsupported() {
        for request in [
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": [{"type": "bash_20250124", "name": "bash"}]}),
            json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "search_result"}]}]}),
        ] {
            let e = messages_to_chat_request(request.to_string().as_bytes()).unwrap_err();
            assert_eq!(e.code, ErrorCode::Unsupported, "{}", e.message);
        }
        let e = messages_to_chat_request(
            br#"{"model":"m","messages":[{"role":"system","content":"x"}]}"#,
        )
        .unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidRequest);
    }

    #[test]
    fn estimates_count_ascii_by_four_and_other_chars_by_one() {
        let n = |v: Value| estimate_message_tokens(v.to_string().as_bytes()).unwrap();
        assert_eq!(n(json!({"messages": [{"role": "user", "content": "abcdefgh"}]})), 3 + 2);
        assert_eq!(n(json!({"messages": [{"role": "user", "content": "日本語"}]})), 3 + 3);
        assert_eq!(
            n(
                json!({"messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]})
            ),
            3 + IMAGE_TOKEN_ESTIMATE
        );
        assert_eq!(n(json!({})), 1);
    }

    #[test]
    fn errors_take_the_anthropic_shape() {
        let body = chat_error_to_messages(
            StatusCode::TOO_MANY_REQUESTS,
            br#"{"error":{"message":"slow down","type":"rate_limit_error","code":"rate_limit_exceeded"}}"#,
        );
        assert_eq!(
            serde_json::from_slice::<Value>(&body).unwrap(),
            json!({"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}})
        );
        let event = messages_error_event(&BackendError::new(ErrorCode::UpstreamTimeout, "idle"));
        assert_eq!(
            &event[..],
            b"event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"timeout_error\",\"message\":\"idle\"}}\n\n"
        );
        let body = messages_error_body(ErrorCode::ModelNotFound, "no model `x`");
        assert!(std::str::from_utf8(&body).unwrap().contains("not_found_error"));
    }
}
