//! OpenAI chat completions <-> Anthropic Messages, for the Anthropic backend: the
//! request goes out as a Messages request, the answer comes back as a
//! `chat.completion` or a stream of `chat.completion.chunk`s.

use std::borrow::Cow;

use bytes::{Bytes, BytesMut};
use http::StatusCode;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use switchyard_core::openai::{
    ChatCompletionRequest, ChatMessage, ContentPart, MessageContent, Role, Tool,
};
use switchyard_core::sse::SseEvent;
use switchyard_core::{BackendError, ErrorCode};

use super::{
    CachedTokens, ChunkOptions, ChunkWriter, DeltaOut, EventTranslator, Framed, FunctionDeltaOut,
    PushTranslator, ToolDeltaOut, UsageOut, code_for_status, invalid, openai_error_body,
    parse_data_url, parse_request, parse_upstream, to_bytes, translated_status, unsupported,
    write_done,
};

/// `max_tokens` sent to Anthropic when the client sets neither `max_tokens` nor
/// `max_completion_tokens` (the Messages API requires it). 4096 is within every
/// Claude model's output limit.
pub const DEFAULT_MAX_TOKENS: u32 = 4096;

/// Translates an Anthropic Messages event stream into OpenAI `chat.completion.chunk`
/// events, ending with `data: [DONE]`.
///
/// The role chunk is held back until the first content, so an `error` event before
/// any content fails the stream before its first byte (and the router may retry).
/// An `error` event becomes an `Err`; so does a stream that ends before
/// `message_delta` or `message_stop`.
#[derive(Debug)]
pub struct AnthropicToChatStream(Framed<StreamState>);

#[derive(Debug, Default)]
pub(crate) struct StreamState {
    writer: ChunkWriter,
    include_usage: bool,
    role_sent: bool,
    /// (Anthropic content block index, OpenAI tool call index).
    tools: Vec<(u32, u32)>,
    finish: Option<&'static str>,
    usage: Counters,
    stopped: bool,
}

/// Token counts as Anthropic reports them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Counters {
    input: u64,
    output: u64,
    cache_creation: u64,
    cache_read: u64,
}

#[derive(Debug, Default, Deserialize)]
struct UsageIn {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct MessageIn {
    #[serde(default)]
    id: String,
    #[serde(default)]
    model: String,
    #[serde(default)]
    content: Vec<BlockIn>,
    #[serde(default)]
    stop_reason: Option<String>,
    #[serde(default)]
    usage: Option<UsageIn>,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum BlockIn {
    Text {
        #[serde(default)]
        text: String,
    },
    ToolUse {
        #[serde(default)]
        id: String,
        #[serde(default)]
        name: String,
        #[serde(default)]
        input: Value,
    },
    Thinking {
        #[serde(default)]
        thinking: String,
    },
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum EventIn<'a> {
    MessageStart {
        #[serde(borrow)]
        message: StartMessage<'a>,
    },
    ContentBlockStart {
        index: u32,
        #[serde(borrow)]
        content_block: StartBlock<'a>,
    },
    ContentBlockDelta {
        index: u32,
        #[serde(borrow)]
        delta: BlockDelta<'a>,
    },
    ContentBlockStop {},
    MessageDelta {
        #[serde(borrow, default)]
        delta: MessageDeltaIn<'a>,
        #[serde(default)]
        usage: Option<UsageIn>,
    },
    MessageStop {},
    Ping {},
    Error {
        #[serde(borrow)]
        error: ErrorIn<'a>,
    },
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
struct StartMessage<'a> {
    #[serde(borrow, default)]
    id: Cow<'a, str>,
    #[serde(borrow, default)]
    model: Cow<'a, str>,
    #[serde(default)]
    usage: Option<UsageIn>,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum StartBlock<'a> {
    Text {
        #[serde(borrow, default)]
        text: Cow<'a, str>,
    },
    ToolUse {
        #[serde(borrow, default)]
        id: Cow<'a, str>,
        #[serde(borrow, default)]
        name: Cow<'a, str>,
    },
    Thinking {
        #[serde(borrow, default)]
        thinking: Cow<'a, str>,
    },
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum BlockDelta<'a> {
    TextDelta {
        #[serde(borrow, default)]
        text: Cow<'a, str>,
    },
    InputJsonDelta {
        #[serde(borrow, default)]
        partial_json: Cow<'a, str>,
    },
    ThinkingDelta {
        #[serde(borrow, default)]
        thinking: Cow<'a, str>,
    },
    #[serde(other)]
    Other,
}

#[derive(Default, Deserialize)]
struct MessageDeltaIn<'a> {
    #[serde(borrow, default)]
    stop_reason: Option<Cow<'a, str>>,
}

/// `error` of an Anthropic error body or event.
#[derive(Default, Deserialize)]
pub(crate) struct ErrorIn<'a> {
    #[serde(borrow, rename = "type", default)]
    pub(crate) kind: Cow<'a, str>,
    #[serde(borrow, default)]
    pub(crate) message: Cow<'a, str>,
}

#[derive(Deserialize)]
struct ErrorEnvelope<'a> {
    #[serde(borrow)]
    error: ErrorIn<'a>,
}

/// Translate an OpenAI chat completions request into an Anthropic Messages request.
///
/// `model` replaces the body's model (an alias resolved to the upstream name);
/// `default_max_tokens` is used when the request sets no limit (see
/// [`DEFAULT_MAX_TOKENS`]). System and developer messages become `system`;
/// consecutive messages of one role are merged; tool results become `tool_result`
/// blocks of a user turn. What Anthropic cannot do (`n` > 1, `logprobs`, a
/// `response_format` other than `text`, audio parts, legacy `function` messages) is an
/// [`ErrorCode::Unsupported`] error; a malformed request an
/// [`ErrorCode::InvalidRequest`] one.
pub fn chat_to_anthropic(
    body: &[u8],
    model: Option<&str>,
    default_max_tokens: u32,
) -> Result<Bytes, BackendError> {
    let request: ChatCompletionRequest = parse_request(body)?;
    to_bytes(&request_value(request, model, default_max_tokens)?)
}

/// Translate a Messages API response (a `message`) into an OpenAI `chat.completion`.
/// `created` is the completion's timestamp (Anthropic sends none).
pub fn anthropic_to_chat_completion(body: &[u8], created: u64) -> Result<Bytes, BackendError> {
    let message: MessageIn = parse_upstream("anthropic", "message", body)?;
    let mut text = String::new();
    let mut reasoning = String::new();
    let mut tool_calls = Vec::new();
    for block in message.content {
        match block {
            BlockIn::Text { text: piece } => text.push_str(&piece),
            BlockIn::Thinking { thinking } => reasoning.push_str(&thinking),
            BlockIn::ToolUse { id, name, input } => {
                let arguments = if input.is_null() { "{}".to_owned() } else { input.to_string() };
                tool_calls.push(json!({
                    "id": id,
                    "type": "function",
                    "function": {"name": name, "arguments": arguments},
                }));
            }
            BlockIn::Other => {}
        }
    }
    let mut reply = Map::new();
    reply.insert("role".into(), "assistant".into());
    let content = if text.is_empty() && !tool_calls.is_empty() { Value::Null } else { text.into() };
    reply.insert("content".into(), content);
    if !tool_calls.is_empty() {
        reply.insert("tool_calls".into(), Value::Array(tool_calls));
    }
    if !reasoning.is_empty() {
        reply.insert("reasoning_content".into(), reasoning.into());
    }
    let mut counters = Counters::default();
    if let Some(usage) = &message.usage {
        counters.merge(usage);
    }
    let finish = message.stop_reason.as_deref().map_or("stop", finish_reason);
    to_bytes(&json!({
        "id": message.id,
        "object": "chat.completion",
        "created": created,
        "model": message.model,
        "choices": [{
            "index": 0,
            "message": reply,
            "logprobs": null,
            "finish_reason": finish,
        }],
        "usage": counters.openai(),
    }))
}

/// Translate an Anthropic error response into an OpenAI error response: the status
/// (529 becomes 503) and `{"error": {"message", "type", "param", "code"}}` with the
/// provider's message. A body that is not Anthropic's error JSON gets a message
/// naming the status.
pub fn anthropic_error_to_openai(status: StatusCode, body: &[u8]) -> (StatusCode, Bytes) {
    let (code, message) = match serde_json::from_slice::<ErrorEnvelope<'_>>(body) {
        Ok(envelope) if !envelope.error.message.is_empty() => (
            error_code(&envelope.error.kind).unwrap_or_else(|| code_for_status(status)),
            envelope.error.message.into_owned(),
        ),
        _ => (code_for_status(status), format!("anthropic answered {}", status.as_u16())),
    };
    (translated_status(status), openai_error_body(code, &message))
}

/// The error code of an Anthropic error `type`.
pub(crate) fn error_code(kind: &str) -> Option<ErrorCode> {
    Some(match kind {
        "invalid_request_error" => ErrorCode::InvalidRequest,
        "authentication_error" => ErrorCode::Unauthorized,
        "permission_error" | "billing_error" => ErrorCode::Forbidden,
        "not_found_error" => ErrorCode::ModelNotFound,
        "request_too_large" => ErrorCode::PayloadTooLarge,
        "rate_limit_error" => ErrorCode::RateLimited,
        "overloaded_error" => ErrorCode::Overloaded,
        "timeout_error" => ErrorCode::UpstreamTimeout,
        "api_error" => ErrorCode::UpstreamStatus,
        _ => return None,
    })
}

/// The OpenAI `finish_reason` of an Anthropic `stop_reason`.
pub(crate) fn finish_reason(stop_reason: &str) -> &'static str {
    match stop_reason {
        "max_tokens" | "model_context_window_exceeded" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        // end_turn, stop_sequence, pause_turn and anything newer.
        _ => "stop",
    }
}

impl AnthropicToChatStream {
    /// A translator for one stream. The id and model come from `message_start`
    /// (`options.id` and `options.model` are used until then).
    pub fn new(options: ChunkOptions) -> Self {
        AnthropicToChatStream(Framed::new(StreamState {
            writer: ChunkWriter { id: options.id, model: options.model, created: options.created },
            include_usage: options.include_usage,
            ..StreamState::default()
        }))
    }

    /// Feed upstream bytes (any split); translated events are appended to `out`.
    /// After an `Err`, the translator ignores further input.
    pub fn push(&mut self, bytes: &[u8], out: &mut BytesMut) -> Result<(), BackendError> {
        self.0.push(bytes, out)
    }

    /// The upstream ended: appends the closing events if `message_stop` was missing
    /// but the stop reason is known, or fails if the stream was cut.
    pub fn finish(&mut self, out: &mut BytesMut) -> Result<(), BackendError> {
        self.0.finish(out)
    }

    /// Whether `message_stop` was seen and `data: [DONE]` written.
    pub fn is_complete(&self) -> bool {
        self.0.inner().stopped
    }
}

impl PushTranslator for AnthropicToChatStream {
    fn push(&mut self, bytes: &[u8], out: &mut BytesMut) -> Result<(), BackendError> {
        self.0.push(bytes, out)
    }

    fn finish(&mut self, out: &mut BytesMut) -> Result<(), BackendError> {
        self.0.finish(out)
    }
}

impl StreamState {
    fn role(&mut self, out: &mut BytesMut) -> Result<(), BackendError> {
        if !self.role_sent {
            self.role_sent = true;
            let delta =
                DeltaOut { role: Some("assistant"), content: Some(""), ..DeltaOut::default() };
            self.writer.delta(out, 0, delta, None)?;
        }
        Ok(())
    }

    fn delta(&mut self, out: &mut BytesMut, delta: DeltaOut<'_>) -> Result<(), BackendError> {
        self.role(out)?;
        self.writer.delta(out, 0, delta, None)
    }

    fn close(&mut self, out: &mut BytesMut) -> Result<(), BackendError> {
        if self.finish.is_none() {
            self.finish = Some("stop");
            self.role(out)?;
            self.writer.delta(out, 0, DeltaOut::default(), Some("stop"))?;
        }
        if self.include_usage {
            self.writer.usage(out, &self.usage.openai())?;
        }
        write_done(out);
        self.stopped = true;
        Ok(())
    }
}

impl EventTranslator for StreamState {
    fn on_event(&mut self, event: &SseEvent, out: &mut BytesMut) -> Result<(), BackendError> {
        if self.stopped {
            return Ok(());
        }
        let parsed: EventIn<'_> =
            parse_upstream("anthropic", "stream event", event.data.as_bytes())?;
        match parsed {
            EventIn::MessageStart { message } => {
                if !message.id.is_empty() {
                    self.writer.id = message.id.into_owned();
                }
                if !message.model.is_empty() {
                    self.writer.model = message.model.into_owned();
                }
                if let Some(usage) = &message.usage {
                    self.usage.merge(usage);
                }
            }
            EventIn::ContentBlockStart { index, content_block } => match content_block {
                StartBlock::Text { text } if !text.is_empty() => {
                    self.delta(out, DeltaOut { content: Some(&text), ..DeltaOut::default() })?;
                }
                StartBlock::Thinking { thinking } if !thinking.is_empty() => {
                    let delta =
                        DeltaOut { reasoning_content: Some(&thinking), ..DeltaOut::default() };
                    self.delta(out, delta)?;
                }
                StartBlock::ToolUse { id, name } => {
                    let tool = u32::try_from(self.tools.len()).unwrap_or(u32::MAX);
                    self.tools.push((index, tool));
                    let call = ToolDeltaOut {
                        index: tool,
                        id: Some(&id),
                        kind: Some("function"),
                        function: FunctionDeltaOut { name: Some(&name), arguments: Some("") },
                    };
                    self.delta(out, DeltaOut { tool_calls: Some([call]), ..DeltaOut::default() })?;
                }
                _ => {}
            },
            EventIn::ContentBlockDelta { index, delta } => match delta {
                BlockDelta::TextDelta { text } if !text.is_empty() => {
                    self.delta(out, DeltaOut { content: Some(&text), ..DeltaOut::default() })?;
                }
                BlockDelta::ThinkingDelta { thinking } if !thinking.is_empty() => {
                    let delta =
                        DeltaOut { reasoning_content: Some(&thinking), ..DeltaOut::default() };
                    self.delta(out, delta)?;
                }
                BlockDelta::InputJsonDelta { partial_json } if !partial_json.is_empty() => {
                    let Some(&(_, tool)) = self.tools.iter().find(|(block, _)| *block == index)
                    else {
                        return Err(BackendError::new(
                            ErrorCode::UpstreamInvalid,
                            "anthropic sent tool input for a block that is not a tool_use",
                        ));
                    };
                    let call = ToolDeltaOut {
                        index: tool,
                        id: None,
                        kind: None,
                        function: FunctionDeltaOut { name: None, arguments: Some(&partial_json) },
                    };
                    self.delta(out, DeltaOut { tool_calls: Some([call]), ..DeltaOut::default() })?;
                }
                _ => {}
            },
            EventIn::MessageDelta { delta, usage } => {
                if let Some(usage) = &usage {
                    self.usage.merge(usage);
                }
                if let Some(reason) = delta.stop_reason
                    && self.finish.is_none()
                {
                    let finish = finish_reason(&reason);
                    self.finish = Some(finish);
                    self.role(out)?;
                    self.writer.delta(out, 0, DeltaOut::default(), Some(finish))?;
                }
            }
            EventIn::MessageStop {} => self.close(out)?,
            EventIn::Error { error } => return Err(stream_error(&error)),
            EventIn::ContentBlockStop {} | EventIn::Ping {} | EventIn::Other => {}
        }
        Ok(())
    }

    fn on_end(&mut self, out: &mut BytesMut) -> Result<(), BackendError> {
        if self.stopped {
            Ok(())
        } else if self.finish.is_some() {
            self.close(out)
        } else {
            Err(BackendError::new(
                ErrorCode::UpstreamUnavailable,
                "anthropic stream ended before message_stop",
            ))
        }
    }
}

/// The stream error of an Anthropic `error` event.
fn stream_error(error: &ErrorIn<'_>) -> BackendError {
    let code = error_code(&error.kind).unwrap_or(ErrorCode::UpstreamStatus);
    BackendError::new(code, format!("anthropic stream error ({}): {}", error.kind, error.message))
}

impl Counters {
    fn merge(&mut self, usage: &UsageIn) {
        if let Some(n) = usage.input_tokens {
            self.input = n;
        }
        if let Some(n) = usage.output_tokens {
            self.output = n;
        }
        if let Some(n) = usage.cache_creation_input_tokens {
            self.cache_creation = n;
        }
        if let Some(n) = usage.cache_read_input_tokens {
            self.cache_read = n;
        }
    }

    /// OpenAI usage: cached and cache-writing tokens count as prompt tokens.
    fn openai(&self) -> UsageOut {
        let prompt = self.input.saturating_add(self.cache_creation).saturating_add(self.cache_read);
        UsageOut {
            prompt_tokens: prompt,
            completion_tokens: self.output,
            total_tokens: prompt.saturating_add(self.output),
            prompt_tokens_details: (self.cache_read > 0)
                .then_some(CachedTokens { cached_tokens: self.cache_read }),
            completion_tokens_details: None,
        }
    }
}

fn request_value(
    request: ChatCompletionRequest,
    model: Option<&str>,
    default_max_tokens: u32,
) -> Result<Value, BackendError> {
    if request.n.is_some_and(|n| n > 1) {
        return Err(unsupported("anthropic backends return one choice: `n` must be 1"));
    }
    if request.extra.get("logprobs").is_some_and(|v| v == &Value::Bool(true)) {
        return Err(unsupported("anthropic backends do not return `logprobs`"));
    }
    if let Some(format) = &request.response_format
        && format.get("type").and_then(Value::as_str).unwrap_or("text") != "text"
    {
        return Err(unsupported(
            "anthropic backends do not support `response_format`; describe the format in the prompt or use a tool",
        ));
    }
    let max_tokens = request.max_output_tokens().unwrap_or(default_max_tokens);
    let parallel = request.extra.get("parallel_tool_calls").and_then(Value::as_bool);
    let mut out = Map::new();
    out.insert("model".into(), model.map_or(request.model, str::to_owned).into());
    let (system, messages) = convert_messages(request.messages)?;
    if let Some(system) = system {
        out.insert("system".into(), system);
    }
    out.insert("messages".into(), messages.into());
    out.insert("max_tokens".into(), max_tokens.into());
    if let Some(stop) = request.stop {
        let stop = stop.to_vec();
        if !stop.is_empty() {
            out.insert("stop_sequences".into(), stop.into());
        }
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
    if let Some(user) = request.user {
        out.insert("metadata".into(), json!({"user_id": user}));
    }
    if request.stream == Some(true) {
        out.insert("stream".into(), true.into());
    }
    if let Some(tools) = request.tools.filter(|t| !t.is_empty()) {
        let tools = tools.into_iter().map(tool).collect::<Result<Vec<_>, _>>()?;
        out.insert("tools".into(), tools.into());
        if let Some(choice) = tool_choice(request.tool_choice.as_ref(), parallel)? {
            out.insert("tool_choice".into(), choice);
        }
    }
    Ok(Value::Object(out))
}

fn tool(tool: Tool) -> Result<Value, BackendError> {
    if tool.kind != "function" {
        return Err(unsupported(format!(
            "tool type `{}` is not supported by anthropic backends",
            tool.kind
        )));
    }
    let function = tool.function;
    let mut out = Map::new();
    out.insert("name".into(), function.name.into());
    if let Some(description) = function.description {
        out.insert("description".into(), description.into());
    }
    let schema = function.parameters.unwrap_or_else(|| json!({"type": "object", "properties": {}}));
    out.insert("input_schema".into(), schema);
    if let Some(cache) = tool.extra.get("cache_control") {
        out.insert("cache_control".into(), cache.clone());
    }
    Ok(Value::Object(out))
}

fn tool_choice(
    choice: Option<&Value>,
    parallel: Option<bool>,
) -> Result<Option<Value>, BackendError> {
    let mut out = match choice {
        None | Some(Value::Null) => None,
        Some(Value::String(mode)) => Some(match mode.as_str() {
            "auto" => json!({"type": "auto"}),
            "required" => json!({"type": "any"}),
            "none" => json!({"type": "none"}),
            other => return Err(invalid(format!("unknown `tool_choice` `{other}`"))),
        }),
        Some(other) => {
            let name = other.pointer("/function/name").and_then(Value::as_str).ok_or_else(|| {
                invalid("`tool_choice` must be a mode or {\"type\":\"function\",\"function\":{\"name\":...}}")
            })?;
            Some(json!({"type": "tool", "name": name}))
        }
    };
    if parallel == Some(false) {
        let choice = out.get_or_insert_with(|| json!({"type": "auto"}));
        if choice["type"] != "none" {
            choice["disable_parallel_tool_use"] = Value::Bool(true);
        }
    }
    Ok(out)
}

/// One Anthropic turn being built.
struct Turn {
    role: &'static str,
    blocks: Vec<Value>,
}

fn convert_messages(
    messages: Vec<ChatMessage>,
) -> Result<(Option<Value>, Vec<Value>), BackendError> {
    let mut system: Vec<Value> = Vec::new();
    let mut turns: Vec<Turn> = Vec::with_capacity(messages.len());
    for message in messages {
        let (role, blocks) = match message.role {
            Role::System | Role::Developer => {
                system.extend(system_blocks(message.content)?);
                continue;
            }
            Role::User => ("user", user_blocks(message.content)?),
            Role::Assistant => ("assistant", assistant_blocks(message)?),
            Role::Tool => ("user", vec![tool_result(message)?]),
            Role::Function => {
                return Err(unsupported(
                    "legacy `function` messages are not supported by anthropic backends; use `tool` messages",
                ));
            }
        };
        if blocks.is_empty() {
            continue;
        }
        match turns.last_mut() {
            Some(last) if last.role == role => last.blocks.extend(blocks),
            _ => turns.push(Turn { role, blocks }),
        }
    }
    let messages = turns
        .into_iter()
        .map(|mut turn| {
            // Tool results must open the user turn that answers the tool calls.
            if turn.role == "user" {
                turn.blocks.sort_by_key(|b| b["type"] != "tool_result");
            }
            json!({"role": turn.role, "content": simplify(turn.blocks)})
        })
        .collect();
    let system = if system.is_empty() {
        None
    } else if system.iter().any(|b| b.get("cache_control").is_some()) {
        Some(Value::Array(system))
    } else {
        let texts: Vec<&str> = system.iter().filter_map(|b| b["text"].as_str()).collect();
        Some(Value::String(texts.join("\n\n")))
    };
    Ok((system, messages))
}

/// One plain text block becomes a string, as clients usually send it.
fn simplify(mut blocks: Vec<Value>) -> Value {
    if blocks.len() == 1
        && blocks[0]["type"] == "text"
        && blocks[0].get("cache_control").is_none()
        && let Some(Value::String(text)) = blocks[0].get_mut("text").map(Value::take)
    {
        return Value::String(text);
    }
    Value::Array(blocks)
}

fn text_block(text: String, part: Option<&ContentPart>) -> Value {
    let mut block = json!({"type": "text", "text": text});
    if let Some(cache) = part.and_then(|p| p.extra.get("cache_control")) {
        block["cache_control"] = cache.clone();
    }
    block
}

fn system_blocks(content: Option<MessageContent>) -> Result<Vec<Value>, BackendError> {
    Ok(match content {
        None => Vec::new(),
        Some(MessageContent::Text(text)) if text.is_empty() => Vec::new(),
        Some(MessageContent::Text(text)) => vec![text_block(text, None)],
        Some(MessageContent::Parts(parts)) => {
            let mut blocks = Vec::with_capacity(parts.len());
            for part in parts {
                if part.kind != "text" {
                    return Err(unsupported("system messages may only hold text"));
                }
                let text = part.text.clone().unwrap_or_default();
                if !text.is_empty() {
                    blocks.push(text_block(text, Some(&part)));
                }
            }
            blocks
        }
    })
}

fn user_blocks(content: Option<MessageContent>) -> Result<Vec<Value>, BackendError> {
    match content {
        None => Ok(Vec::new()),
        Some(MessageContent::Text(text)) if text.is_empty() => Ok(Vec::new()),
        Some(MessageContent::Text(text)) => Ok(vec![text_block(text, None)]),
        Some(MessageContent::Parts(parts)) => {
            let mut blocks = Vec::with_capacity(parts.len());
            for part in parts {
                if let Some(block) = part_block(part)? {
                    blocks.push(block);
                }
            }
            Ok(blocks)
        }
    }
}

/// A user content part as an Anthropic block (`None` for empty text).
fn part_block(mut part: ContentPart) -> Result<Option<Value>, BackendError> {
    match part.kind.as_str() {
        "text" => {
            let text = part.text.take().unwrap_or_default();
            Ok((!text.is_empty()).then(|| text_block(text, Some(&part))))
        }
        "image_url" => {
            let image = part
                .image_url
                .as_ref()
                .ok_or_else(|| invalid("an `image_url` part needs `image_url.url`"))?;
            let source = if let Some((media_type, data)) = parse_data_url(&image.url) {
                json!({"type": "base64", "media_type": media_type, "data": data})
            } else if image.url.starts_with("https://") || image.url.starts_with("http://") {
                json!({"type": "url", "url": image.url})
            } else {
                return Err(invalid("image urls must be base64 `data:` urls or http(s) urls"));
            };
            let mut block = json!({"type": "image", "source": source});
            if let Some(cache) = part.extra.get("cache_control") {
                block["cache_control"] = cache.clone();
            }
            Ok(Some(block))
        }
        "file" => {
            let data =
                part.extra.get("file").and_then(|f| f.get("file_data")).and_then(Value::as_str);
            match data.and_then(parse_data_url) {
                Some((media_type, data)) => Ok(Some(json!({
                    "type": "document",
                    "source": {"type": "base64", "media_type": media_type, "data": data},
                }))),
                None => Err(unsupported(
                    "anthropic backends accept `file` parts only with `file_data` as a base64 data url",
                )),
            }
        }
        other => Err(unsupported(format!(
            "content part type `{other}` is not supported by anthropic backends"
        ))),
    }
}

fn assistant_blocks(message: ChatMessage) -> Result<Vec<Value>, BackendError> {
    let mut blocks = Vec::new();
    match message.content {
        Some(MessageContent::Text(text)) if !text.is_empty() => {
            blocks.push(text_block(text, None));
        }
        None | Some(MessageContent::Text(_)) => {}
        Some(MessageContent::Parts(parts)) => {
            for mut part in parts {
                let text = match part.kind.as_str() {
                    "text" => part.text.take(),
                    "refusal" => {
                        part.extra.get("refusal").and_then(Value::as_str).map(str::to_owned)
                    }
                    other => {
                        return Err(unsupported(format!(
                            "assistant content part type `{other}` is not supported by anthropic backends"
                        )));
                    }
                };
                if let Some(text) = text.filter(|t| !t.is_empty()) {
                    blocks.push(text_block(text, Some(&part)));
                }
            }
        }
    }
    for call in message.tool_calls.unwrap_or_default() {
        let input = parse_arguments(&call.id, &call.function.arguments)?;
        blocks.push(json!({
            "type": "tool_use",
            "id": call.id,
            "name": call.function.name,
            "input": input,
        }));
    }
    Ok(blocks)
}

/// A tool call's JSON-encoded arguments as an object (empty arguments are `{}`).
pub(crate) fn parse_arguments(id: &str, arguments: &str) -> Result<Value, BackendError> {
    if arguments.trim().is_empty() {
        return Ok(Value::Object(Map::new()));
    }
    match serde_json::from_str::<Value>(arguments) {
        Ok(value @ Value::Object(_)) => Ok(value),
        _ => Err(invalid(format!("the arguments of tool call `{id}` are not a JSON object"))),
    }
}

fn tool_result(message: ChatMessage) -> Result<Value, BackendError> {
    let id =
        message.tool_call_id.ok_or_else(|| invalid("a `tool` message needs `tool_call_id`"))?;
    let mut block = json!({"type": "tool_result", "tool_use_id": id});
    match message.content {
        None => {}
        Some(MessageContent::Text(text)) => block["content"] = text.into(),
        Some(MessageContent::Parts(parts)) => {
            let mut blocks = Vec::with_capacity(parts.len());
            for part in parts {
                if let Some(b) = part_block(part)? {
                    blocks.push(b);
                }
            }
            block["content"] = blocks.into();
        }
    }
    Ok(block)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn translate(request: Value) -> Value {
        let bytes = chat_to_anthropic(request.to_string().as_bytes(), None, 100).unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    fn error(request: Value) -> BackendError {
        chat_to_anthropic(request.to_string().as_bytes(), None, 100).unwrap_err()
    }

    #[test]
    fn system_is_extracted_and_roles_merge() {
        let out = translate(json!({
            "model": "claude",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "a"},
                {"role": "user", "content": [{"type": "text", "text": "b"}]},
                {"role": "developer", "content": "and kind"},
                {"role": "assistant", "content": ""},
                {"role": "assistant", "content": "c"},
            ],
        }));
        assert_eq!(out["system"], "be brief\n\nand kind");
        assert_eq!(
            out["messages"],
            json!([
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                {"role": "assistant", "content": "c"},
            ])
        );
        assert_eq!(out["max_tokens"], 100);
    }

    #[test]
    fn tool_results_open_the_user_turn() {
        let out = translate(json!({
            "model": "m",
            "messages": [
                {"role": "user", "content": "weather?"},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "t1", "type": "function", "function": {"name": "w", "arguments": ""}}]},
                {"role": "tool", "tool_call_id": "t1", "content": "sunny"},
                {"role": "user", "content": "thanks"},
            ],
        }));
        assert_eq!(out["messages"][1]["content"][0]["input"], json!({}));
        assert_eq!(
            out["messages"][2]["content"],
            json!([{"type": "tool_result", "tool_use_id": "t1", "content": "sunny"},
                   {"type": "text", "text": "thanks"}])
        );
    }

    #[test]
    fn tool_choice_modes_and_parallel_flag() {
        let tools = json!([{"type": "function", "function": {"name": "f"}}]);
        let base = |choice: Value, parallel: Value| {
            let mut r = json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": tools});
            if !choice.is_null() {
                r["tool_choice"] = choice;
            }
            if !parallel.is_null() {
                r["parallel_tool_calls"] = parallel;
            }
            translate(r)
        };
        assert_eq!(base(json!("required"), Value::Null)["tool_choice"], json!({"type": "any"}));
        assert_eq!(base(json!("none"), json!(false))["tool_choice"], json!({"type": "none"}));
        assert_eq!(
            base(Value::Null, json!(false))["tool_choice"],
            json!({"type": "auto", "disable_parallel_tool_use": true})
        );
        assert_eq!(
            base(json!({"type": "function", "function": {"name": "f"}}), Value::Null)["tool_choice"],
            json!({"type": "tool", "name": "f"})
        );
        assert_eq!(
            base(Value::Null, Value::Null)["tools"][0]["input_schema"],
            json!({"type": "object", "properties": {}})
        );
    }

    #[test]
    fn unsupported_features_are_named() {
        let msg = json!([{"role": "user", "content": "x"}]);
        for (request, needle) in [
            (json!({"model": "m", "messages": msg, "n": 2}), "`n`"),
            (json!({"model": "m", "messages": msg, "logprobs": true}), "logprobs"),
            (
                json!({"model": "m", "messages": msg, "response_format": {"type": "json_object"}}),
                "response_format",
            ),
            (
                json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]}),
                "input_audio",
            ),
            (
                json!({"model": "m", "messages": [{"role": "function", "name": "f", "content": "x"}]}),
                "function",
            ),
        ] {
            let e = error(request);
            assert_eq!(e.code, ErrorCode::Unsupported);
            assert!(e.message.contains(needle), "{}", e.message);
        }
        let e = error(json!({"model": "m", "messages": [{"role": "assistant", "tool_calls": [
            {"id": "x", "type": "function", "function": {"name": "f", "arguments": "[1]"}}]}]}));
        assert_eq!(e.code, ErrorCode::InvalidRequest);
        assert!(error(json!({"model": 1})).message.contains("invalid request body"));
    }

    #[test]
    fn finish_reasons_map() {
        for (anthropic, openai) in [
            ("end_turn", "stop"),
            ("stop_sequence", "stop"),
            ("max_tokens", "length"),
            ("tool_use", "tool_calls"),
            ("refusal", "content_filter"),
            ("pause_turn", "stop"),
        ] {
            assert_eq!(finish_reason(anthropic), openai);
        }
    }

    #[test]
    fn error_bodies_translate_with_codes() {
        let (status, body) = anthropic_error_to_openai(
            StatusCode::from_u16(529).unwrap(),
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
        );
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error"]["message"], "Overloaded");
        assert_eq!(body["error"]["code"], "overloaded");
        let (status, body) = anthropic_error_to_openai(StatusCode::BAD_GATEWAY, b"<html>");
        assert_eq!(status, StatusCode::BAD_GATEWAY);
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error"]["message"], "anthropic answered 502");
    }
}
