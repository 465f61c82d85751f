//! OpenAI chat completions <-> Gemini `generateContent`, for the Gemini backend.

use std::borrow::Cow;
use std::fmt::Write as _;

use bytes::{Bytes, BytesMut};
use http::StatusCode;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use switchyard_core::openai::{
    ChatCompletionRequest, ChatMessage, ContentPart, MessageContent, Role, Tool,
};
use switchyard_core::sse::SseEvent;
use switchyard_core::{BackendError, ErrorCode};

use super::anthropic::parse_arguments;
use super::{
    CachedTokens, ChunkOptions, ChunkWriter, DeltaOut, EventTranslator, Framed, FunctionDeltaOut,
    PushTranslator, ReasoningTokens, ToolDeltaOut, UsageOut, code_for_status, invalid,
    openai_error_body, parse_data_url, parse_request, parse_upstream, to_bytes, unsupported,
    write_done,
};

/// Most candidates Gemini returns for one request (`candidateCount` is at most 8).
const MAX_CANDIDATES: u32 = 8;

/// A chat request translated for Gemini: the model goes in the URL, not the body.
#[derive(Clone, Debug, PartialEq)]
pub struct GeminiRequest {
    /// The model, without a `models/` prefix (not yet encoded for the URL).
    pub model: String,
    /// Whether the client asked for a stream (`streamGenerateContent?alt=sse`).
    pub stream: bool,
    /// The `GenerateContentRequest` JSON.
    pub body: Bytes,
}

/// Translates a Gemini `streamGenerateContent?alt=sse` stream into OpenAI
/// `chat.completion.chunk` events, ending with `data: [DONE]` when the upstream ends
/// after a `finishReason`.
///
/// Each response's text parts become content deltas and each `functionCall` one whole
/// tool call (Gemini does not split arguments). An `{"error": ...}` event becomes an
/// `Err`; so does a stream that ends before any `finishReason`.
#[derive(Debug)]
pub struct GeminiToChatStream(Framed<StreamState>);

#[derive(Debug, Default)]
pub(crate) struct StreamState {
    writer: ChunkWriter,
    include_usage: bool,
    id_set: bool,
    choices: Vec<ChoiceState>,
    usage: Option<UsageOut>,
    finished: bool,
}

#[derive(Debug, Default)]
struct ChoiceState {
    index: u32,
    role_sent: bool,
    tools: u32,
    finished: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ResponseIn<'a> {
    #[serde(borrow, default)]
    candidates: Vec<CandidateIn<'a>>,
    #[serde(default)]
    usage_metadata: Option<UsageIn>,
    #[serde(borrow, default)]
    model_version: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    response_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    prompt_feedback: Option<PromptFeedbackIn<'a>>,
    #[serde(borrow, default)]
    error: Option<ErrorIn<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CandidateIn<'a> {
    #[serde(borrow, default)]
    content: Option<ContentIn<'a>>,
    #[serde(borrow, default)]
    finish_reason: Option<Cow<'a, str>>,
    #[serde(default)]
    index: u32,
}

#[derive(Deserialize)]
struct ContentIn<'a> {
    #[serde(borrow, default)]
    parts: Vec<PartIn<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PartIn<'a> {
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
    #[serde(default)]
    thought: Option<bool>,
    #[serde(borrow, default)]
    function_call: Option<FunctionCallIn<'a>>,
}

#[derive(Deserialize)]
struct FunctionCallIn<'a> {
    #[serde(borrow, default)]
    name: Cow<'a, str>,
    #[serde(default)]
    args: Option<Value>,
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
}

#[derive(Clone, Copy, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct UsageIn {
    #[serde(default)]
    prompt_token_count: Option<u64>,
    #[serde(default)]
    candidates_token_count: Option<u64>,
    #[serde(default)]
    total_token_count: Option<u64>,
    #[serde(default)]
    thoughts_token_count: Option<u64>,
    #[serde(default)]
    cached_content_token_count: Option<u64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PromptFeedbackIn<'a> {
    #[serde(borrow, default)]
    block_reason: Option<Cow<'a, str>>,
}

#[derive(Default, Deserialize)]
struct ErrorIn<'a> {
    #[serde(default)]
    code: Option<u16>,
    #[serde(borrow, default)]
    message: Cow<'a, str>,
    #[serde(borrow, default)]
    status: Cow<'a, str>,
    #[serde(default)]
    details: Vec<ErrorDetailIn<'a>>,
}

#[derive(Default, Deserialize)]
struct ErrorDetailIn<'a> {
    #[serde(borrow, default)]
    reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ErrorEnvelope<'a> {
    One {
        #[serde(borrow)]
        error: ErrorIn<'a>,
    },
    Many(#[serde(borrow)] Vec<ErrorEnvelopeOne<'a>>),
}

#[derive(Deserialize)]
struct ErrorEnvelopeOne<'a> {
    #[serde(borrow)]
    error: ErrorIn<'a>,
}

/// Translate an OpenAI chat completions request into a Gemini `GenerateContentRequest`.
///
/// `model` replaces the body's model (an alias resolved to the upstream name). System
/// and developer messages become `systemInstruction`; assistant turns use role
/// `model`; tool results become `functionResponse` parts (the function name is looked
/// up from the assistant's tool call with that id); images must be base64 `data:`
/// URLs (`inlineData`). Sampling settings go to `generationConfig`, tools to
/// `functionDeclarations` (JSON Schema keys Gemini rejects, such as `$schema` and
/// `additionalProperties`, are removed).
pub fn chat_to_gemini(body: &[u8], model: Option<&str>) -> Result<GeminiRequest, BackendError> {
    let request: ChatCompletionRequest = parse_request(body)?;
    let model = model.map_or_else(|| request.model.clone(), str::to_owned);
    let model = model.strip_prefix("models/").map(str::to_owned).unwrap_or(model);
    let stream = request.stream == Some(true);
    let body = to_bytes(&request_value(request)?)?;
    Ok(GeminiRequest { model, stream, body })
}

/// Translate a `GenerateContentResponse` into an OpenAI `chat.completion`.
/// `options.id` is used when Gemini sends no `responseId`, `options.model` when it
/// sends no `modelVersion`.
pub fn gemini_to_chat_completion(
    body: &[u8],
    options: &ChunkOptions,
) -> Result<Bytes, BackendError> {
    let response: ResponseIn<'_> = parse_upstream("gemini", "response", body)?;
    if let Some(error) = &response.error {
        return Err(stream_error(error));
    }
    let id = response.response_id.as_deref().unwrap_or(&options.id);
    let model = response.model_version.as_deref().unwrap_or(&options.model);
    let mut choices = Vec::with_capacity(response.candidates.len().max(1));
    for candidate in &response.candidates {
        let mut text = String::new();
        let mut reasoning = String::new();
        let mut tool_calls = Vec::new();
        for part in candidate.content.iter().flat_map(|c| &c.parts) {
            if let Some(call) = &part.function_call {
                let n = u32::try_from(tool_calls.len()).unwrap_or(u32::MAX);
                tool_calls.push(json!({
                    "id": call_id(call, id, candidate.index, n),
                    "type": "function",
                    "function": {"name": call.name, "arguments": arguments(call)},
                }));
            } else if let Some(piece) = &part.text {
                if part.thought == Some(true) {
                    reasoning.push_str(piece);
                } else {
                    text.push_str(piece);
                }
            }
        }
        let finish = finish_reason(candidate.finish_reason.as_deref(), !tool_calls.is_empty());
        let mut message = Map::new();
        message.insert("role".into(), "assistant".into());
        let content =
            if text.is_empty() && !tool_calls.is_empty() { Value::Null } else { text.into() };
        message.insert("content".into(), content);
        if !tool_calls.is_empty() {
            message.insert("tool_calls".into(), tool_calls.into());
        }
        if !reasoning.is_empty() {
            message.insert("reasoning_content".into(), reasoning.into());
        }
        choices.push(json!({
            "index": candidate.index,
            "message": message,
            "logprobs": null,
            "finish_reason": finish,
        }));
    }
    if choices.is_empty() {
        let blocked = response.prompt_feedback.as_ref().is_some_and(|f| f.block_reason.is_some());
        choices.push(json!({
            "index": 0,
            "message": {"role": "assistant", "content": ""},
            "logprobs": null,
            "finish_reason": if blocked { "content_filter" } else { "stop" },
        }));
    }
    let usage = response.usage_metadata.map(usage).unwrap_or_default();
    to_bytes(&json!({
        "id": id,
        "object": "chat.completion",
        "created": options.created,
        "model": model,
        "choices": choices,
        "usage": usage,
    }))
}

/// Translate a Gemini error response into an OpenAI error response: the status
/// (Gemini's 400 for an invalid API key becomes 401) and
/// `{"error": {"message", "type", "param", "code"}}` with the provider's message.
pub fn gemini_error_to_openai(status: StatusCode, body: &[u8]) -> (StatusCode, Bytes) {
    let parsed = match serde_json::from_slice::<ErrorEnvelope<'_>>(body) {
        Ok(ErrorEnvelope::One { error }) => Some(error),
        Ok(ErrorEnvelope::Many(mut list)) if !list.is_empty() => Some(list.swap_remove(0).error),
        _ => None,
    };
    match parsed {
        Some(error) if !error.message.is_empty() => {
            let code = error_code(&error).unwrap_or_else(|| code_for_status(status));
            let status =
                if code == ErrorCode::Unauthorized { StatusCode::UNAUTHORIZED } else { status };
            (status, openai_error_body(code, &error.message))
        }
        _ => (
            status,
            openai_error_body(
                code_for_status(status),
                &format!("gemini answered {}", status.as_u16()),
            ),
        ),
    }
}

/// The URL path segment of a model: `models/` stripped, then every byte outside
/// RFC 3986's unreserved set percent-encoded, so `/`, `?`, `#`, `%` and `:` in a name
/// cannot leave the segment. The caller appends `:generateContent`, so the segment is
/// never `.` or `..`.
pub(crate) fn model_segment(model: &str) -> String {
    let model = model.strip_prefix("models/").unwrap_or(model);
    let mut out = String::with_capacity(model.len());
    for &byte in model.as_bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

impl GeminiToChatStream {
    /// A translator for one stream. The id comes from `responseId` and the model from
    /// `modelVersion` when Gemini sends them, from `options` otherwise.
    pub fn new(options: ChunkOptions) -> Self {
        GeminiToChatStream(Framed::new(StreamState {
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

    /// The upstream ended: appends the usage chunk (when asked for) and
    /// `data: [DONE]`, or fails if no `finishReason` was seen.
    pub fn finish(&mut self, out: &mut BytesMut) -> Result<(), BackendError> {
        self.0.finish(out)
    }
}

impl PushTranslator for GeminiToChatStream {
    fn push(&mut self, bytes: &[u8], out: &mut BytesMut) -> Result<(), BackendError> {
        self.0.push(bytes, out)
    }

    fn finish(&mut self, out: &mut BytesMut) -> Result<(), BackendError> {
        self.0.finish(out)
    }
}

impl StreamState {
    fn choice(&mut self, index: u32) -> Result<usize, BackendError> {
        if index >= MAX_CANDIDATES {
            return Err(BackendError::new(
                ErrorCode::UpstreamInvalid,
                format!("gemini sent candidate index {index}"),
            ));
        }
        match self.choices.iter().position(|c| c.index == index) {
            Some(at) => Ok(at),
            None => {
                self.choices.push(ChoiceState { index, ..ChoiceState::default() });
                Ok(self.choices.len() - 1)
            }
        }
    }

    fn delta(
        &mut self,
        out: &mut BytesMut,
        at: usize,
        delta: DeltaOut<'_>,
        finish: Option<&str>,
    ) -> Result<(), BackendError> {
        let index = self.choices[at].index;
        if !self.choices[at].role_sent {
            self.choices[at].role_sent = true;
            let role =
                DeltaOut { role: Some("assistant"), content: Some(""), ..DeltaOut::default() };
            self.writer.delta(out, index, role, None)?;
        }
        self.writer.delta(out, index, delta, finish)
    }
}

impl EventTranslator for StreamState {
    fn on_event(&mut self, event: &SseEvent, out: &mut BytesMut) -> Result<(), BackendError> {
        let response: ResponseIn<'_> =
            parse_upstream("gemini", "stream event", event.data.as_bytes())?;
        if let Some(error) = &response.error {
            return Err(stream_error(error));
        }
        if !self.id_set
            && let Some(id) = response.response_id.as_deref().filter(|id| !id.is_empty())
        {
            self.writer.id = id.to_owned();
            self.id_set = true;
        }
        if let Some(model) = response.model_version.as_deref().filter(|m| !m.is_empty())
            && model != self.writer.model
        {
            model.clone_into(&mut self.writer.model);
        }
        if let Some(usage_in) = response.usage_metadata {
            self.usage = Some(usage(usage_in));
        }
        for candidate in &response.candidates {
            let at = self.choice(candidate.index)?;
            if self.choices[at].finished {
                continue;
            }
            for part in candidate.content.iter().flat_map(|c| &c.parts) {
                if let Some(call) = &part.function_call {
                    let n = self.choices[at].tools;
                    self.choices[at].tools += 1;
                    let id = call_id(call, &self.writer.id, candidate.index, n);
                    let arguments = arguments(call);
                    let tool = ToolDeltaOut {
                        index: n,
                        id: Some(&id),
                        kind: Some("function"),
                        function: FunctionDeltaOut {
                            name: Some(&call.name),
                            arguments: Some(&arguments),
                        },
                    };
                    self.delta(
                        out,
                        at,
                        DeltaOut { tool_calls: Some([tool]), ..DeltaOut::default() },
                        None,
                    )?;
                } else if let Some(text) = part.text.as_deref().filter(|t| !t.is_empty()) {
                    let delta = if part.thought == Some(true) {
                        DeltaOut { reasoning_content: Some(text), ..DeltaOut::default() }
                    } else {
                        DeltaOut { content: Some(text), ..DeltaOut::default() }
                    };
                    self.delta(out, at, delta, None)?;
                }
            }
            if let Some(reason) = candidate.finish_reason.as_deref()
                && reason != "FINISH_REASON_UNSPECIFIED"
            {
                let finish = finish_reason(Some(reason), self.choices[at].tools > 0);
                self.choices[at].finished = true;
                self.finished = true;
                self.delta(out, at, DeltaOut::default(), Some(finish))?;
            }
        }
        if response.candidates.is_empty()
            && response.prompt_feedback.as_ref().is_some_and(|f| f.block_reason.is_some())
            && !self.finished
        {
            let at = self.choice(0)?;
            self.choices[at].finished = true;
            self.finished = true;
            self.delta(out, at, DeltaOut::default(), Some("content_filter"))?;
        }
        Ok(())
    }

    fn on_end(&mut self, out: &mut BytesMut) -> Result<(), BackendError> {
        if !self.finished {
            return Err(BackendError::new(
                ErrorCode::UpstreamUnavailable,
                "gemini stream ended before a finishReason",
            ));
        }
        if self.include_usage {
            self.writer.usage(out, &self.usage.unwrap_or_default())?;
        }
        write_done(out);
        Ok(())
    }
}

/// The tool call id: Gemini's own, or one derived from the completion id.
fn call_id(call: &FunctionCallIn<'_>, completion: &str, candidate: u32, n: u32) -> String {
    match call.id.as_deref().filter(|id| !id.is_empty()) {
        Some(id) => id.to_owned(),
        None if candidate == 0 => format!("call_{completion}_{n}"),
        None => format!("call_{completion}_{candidate}_{n}"),
    }
}

fn arguments(call: &FunctionCallIn<'_>) -> String {
    match &call.args {
        Some(args) if !args.is_null() => args.to_string(),
        _ => "{}".to_owned(),
    }
}

/// The OpenAI `finish_reason` of a Gemini `finishReason`.
fn finish_reason(reason: Option<&str>, tool_calls: bool) -> &'static str {
    match reason {
        Some("MAX_TOKENS") => "length",
        Some(
            "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" | "IMAGE_SAFETY"
            | "LANGUAGE",
        ) => "content_filter",
        _ if tool_calls => "tool_calls",
        _ => "stop",
    }
}

fn usage(usage: UsageIn) -> UsageOut {
    let prompt = usage.prompt_token_count.unwrap_or(0);
    let thoughts = usage.thoughts_token_count.unwrap_or(0);
    let completion = usage.candidates_token_count.unwrap_or(0).saturating_add(thoughts);
    UsageOut {
        prompt_tokens: prompt,
        completion_tokens: completion,
        total_tokens: usage.total_token_count.unwrap_or_else(|| prompt.saturating_add(completion)),
        prompt_tokens_details: usage
            .cached_content_token_count
            .filter(|n| *n > 0)
            .map(|cached_tokens| CachedTokens { cached_tokens }),
        completion_tokens_details: (thoughts > 0)
            .then_some(ReasoningTokens { reasoning_tokens: thoughts }),
    }
}

fn error_code(error: &ErrorIn<'_>) -> Option<ErrorCode> {
    if error.details.iter().any(|d| d.reason.as_deref() == Some("API_KEY_INVALID")) {
        return Some(ErrorCode::Unauthorized);
    }
    Some(match error.status.as_ref() {
        "INVALID_ARGUMENT" | "FAILED_PRECONDITION" | "OUT_OF_RANGE" => ErrorCode::InvalidRequest,
        "UNAUTHENTICATED" => ErrorCode::Unauthorized,
        "PERMISSION_DENIED" => ErrorCode::Forbidden,
        "NOT_FOUND" => ErrorCode::ModelNotFound,
        "RESOURCE_EXHAUSTED" => ErrorCode::RateLimited,
        "UNAVAILABLE" => ErrorCode::Overloaded,
        "DEADLINE_EXCEEDED" => ErrorCode::UpstreamTimeout,
        "INTERNAL" | "UNKNOWN" => ErrorCode::UpstreamStatus,
        _ => return error.code.and_then(|c| StatusCode::from_u16(c).ok()).map(code_for_status),
    })
}

fn stream_error(error: &ErrorIn<'_>) -> BackendError {
    let code = error_code(error).unwrap_or(ErrorCode::UpstreamStatus);
    BackendError::new(code, format!("gemini error ({}): {}", error.status, error.message))
}

fn request_value(request: ChatCompletionRequest) -> Result<Value, BackendError> {
    let max_output_tokens = request.max_output_tokens();
    let mut system: Vec<Value> = Vec::new();
    let mut contents: Vec<(&'static str, Vec<Value>)> = Vec::with_capacity(request.messages.len());
    // Tool call id -> function name, for the functionResponse parts.
    let mut calls: Vec<(String, String)> = Vec::new();
    for message in request.messages {
        let (role, parts) = match message.role {
            Role::System | Role::Developer => {
                system.extend(text_parts(message.content)?);
                continue;
            }
            Role::User => ("user", user_parts(message.content)?),
            Role::Assistant => ("model", model_parts(message, &mut calls)?),
            Role::Tool | Role::Function => ("user", vec![function_response(message, &calls)?]),
        };
        if parts.is_empty() {
            continue;
        }
        match contents.last_mut() {
            Some((last, existing)) if *last == role => existing.extend(parts),
            _ => contents.push((role, parts)),
        }
    }
    let mut out = Map::new();
    out.insert(
        "contents".into(),
        contents.into_iter().map(|(role, parts)| json!({"role": role, "parts": parts})).collect(),
    );
    if !system.is_empty() {
        out.insert("systemInstruction".into(), json!({"parts": system}));
    }
    let mut config = Map::new();
    if let Some(t) = request.temperature {
        config.insert("temperature".into(), t.into());
    }
    if let Some(p) = request.top_p {
        config.insert("topP".into(), p.into());
    }
    if let Some(k) = request.top_k {
        config.insert("topK".into(), k.into());
    }
    if let Some(max) = max_output_tokens {
        config.insert("maxOutputTokens".into(), max.into());
    }
    if let Some(stop) = request.stop {
        let stop = stop.to_vec();
        if !stop.is_empty() {
            config.insert("stopSequences".into(), stop.into());
        }
    }
    if let Some(n) = request.n {
        config.insert("candidateCount".into(), n.into());
    }
    if let Some(seed) = request.seed {
        config.insert("seed".into(), seed.into());
    }
    if let Some(p) = request.presence_penalty {
        config.insert("presencePenalty".into(), p.into());
    }
    if let Some(p) = request.frequency_penalty {
        config.insert("frequencyPenalty".into(), p.into());
    }
    if let Some(format) = &request.response_format {
        match format.get("type").and_then(Value::as_str) {
            Some("json_object") => {
                config.insert("responseMimeType".into(), "application/json".into());
            }
            Some("json_schema") => {
                config.insert("responseMimeType".into(), "application/json".into());
                if let Some(schema) = format.pointer("/json_schema/schema") {
                    let mut schema = schema.clone();
                    clean_schema(&mut schema);
                    config.insert("responseSchema".into(), schema);
                }
            }
            Some("text") | None => {}
            Some(other) => {
                return Err(unsupported(format!(
                    "`response_format` type `{other}` is not supported by gemini backends"
                )));
            }
        }
    }
    if !config.is_empty() {
        out.insert("generationConfig".into(), Value::Object(config));
    }
    if let Some(tools) = request.tools.filter(|t| !t.is_empty()) {
        let declarations = tools.into_iter().map(declaration).collect::<Result<Vec<_>, _>>()?;
        out.insert("tools".into(), json!([{"functionDeclarations": declarations}]));
        if let Some(config) = tool_config(request.tool_choice.as_ref())? {
            out.insert("toolConfig".into(), config);
        }
    }
    Ok(Value::Object(out))
}

fn declaration(tool: Tool) -> Result<Value, BackendError> {
    if tool.kind != "function" {
        return Err(unsupported(format!(
            "tool type `{}` is not supported by gemini backends",
            tool.kind
        )));
    }
    let function = tool.function;
    let mut out = Map::new();
    out.insert("name".into(), function.name.into());
    if let Some(description) = function.description {
        out.insert("description".into(), description.into());
    }
    if let Some(mut parameters) = function.parameters {
        clean_schema(&mut parameters);
        // Gemini rejects an object schema without properties.
        let empty = parameters.get("type") == Some(&Value::from("object"))
            && parameters
                .get("properties")
                .is_none_or(|p| p.as_object().is_some_and(Map::is_empty));
        if !empty {
            out.insert("parameters".into(), parameters);
        }
    }
    Ok(Value::Object(out))
}

/// Remove the JSON Schema keywords Gemini's `Schema` rejects, recursively through
/// sub-schemas (never through property names).
fn clean_schema(schema: &mut Value) {
    let Value::Object(map) = schema else { return };
    for key in ["$schema", "$id", "$comment", "additionalProperties", "strict"] {
        map.remove(key);
    }
    if let Some(Value::Object(properties)) = map.get_mut("properties") {
        for sub in properties.values_mut() {
            clean_schema(sub);
        }
    }
    if let Some(items) = map.get_mut("items") {
        clean_schema(items);
    }
    for key in ["anyOf", "oneOf", "allOf"] {
        if let Some(Value::Array(subs)) = map.get_mut(key) {
            for sub in subs {
                clean_schema(sub);
            }
        }
    }
}

fn tool_config(choice: Option<&Value>) -> Result<Option<Value>, BackendError> {
    let config = match choice {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(mode)) => match mode.as_str() {
            "auto" => json!({"mode": "AUTO"}),
            "required" => json!({"mode": "ANY"}),
            "none" => json!({"mode": "NONE"}),
            other => return Err(invalid(format!("unknown `tool_choice` `{other}`"))),
        },
        Some(other) => {
            let name = other.pointer("/function/name").and_then(Value::as_str).ok_or_else(|| {
                invalid("`tool_choice` must be a mode or {\"type\":\"function\",\"function\":{\"name\":...}}")
            })?;
            json!({"mode": "ANY", "allowedFunctionNames": [name]})
        }
    };
    Ok(Some(json!({"functionCallingConfig": config})))
}

fn text_parts(content: Option<MessageContent>) -> Result<Vec<Value>, BackendError> {
    Ok(match content {
        None => Vec::new(),
        Some(MessageContent::Text(text)) if text.is_empty() => Vec::new(),
        Some(MessageContent::Text(text)) => vec![json!({"text": text})],
        Some(MessageContent::Parts(parts)) => {
            let mut out = Vec::with_capacity(parts.len());
            for part in parts {
                if part.kind != "text" {
                    return Err(unsupported("system messages may only hold text"));
                }
                if let Some(text) = part.text.filter(|t| !t.is_empty()) {
                    out.push(json!({"text": text}));
                }
            }
            out
        }
    })
}

fn user_parts(content: Option<MessageContent>) -> Result<Vec<Value>, BackendError> {
    match content {
        None => Ok(Vec::new()),
        Some(MessageContent::Text(text)) if text.is_empty() => Ok(Vec::new()),
        Some(MessageContent::Text(text)) => Ok(vec![json!({"text": text})]),
        Some(MessageContent::Parts(parts)) => {
            let mut out = Vec::with_capacity(parts.len());
            for part in parts {
                if let Some(part) = user_part(part)? {
                    out.push(part);
                }
            }
            Ok(out)
        }
    }
}

fn user_part(part: ContentPart) -> Result<Option<Value>, BackendError> {
    let inline = |media_type: &str, data: &str| json!({"inlineData": {"mimeType": media_type, "data": data}});
    match part.kind.as_str() {
        "text" => Ok(part.text.filter(|t| !t.is_empty()).map(|text| json!({"text": text}))),
        "image_url" => {
            let url = part
                .image_url
                .as_ref()
                .map(|i| i.url.as_str())
                .ok_or_else(|| invalid("an `image_url` part needs `image_url.url`"))?;
            match parse_data_url(url) {
                Some((media_type, data)) => Ok(Some(inline(media_type, data))),
                None => {
                    Err(unsupported("gemini backends accept images only as base64 `data:` urls"))
                }
            }
        }
        "input_audio" => {
            let audio = part.extra.get("input_audio");
            let data = audio.and_then(|a| a.get("data")).and_then(Value::as_str);
            let format = audio.and_then(|a| a.get("format")).and_then(Value::as_str);
            match (data, format) {
                (Some(data), Some(format)) => Ok(Some(inline(&format!("audio/{format}"), data))),
                _ => Err(invalid("an `input_audio` part needs `data` and `format`")),
            }
        }
        "file" => {
            let data =
                part.extra.get("file").and_then(|f| f.get("file_data")).and_then(Value::as_str);
            match data.and_then(parse_data_url) {
                Some((media_type, data)) => Ok(Some(inline(media_type, data))),
                None => Err(unsupported(
                    "gemini backends accept `file` parts only with `file_data` as a base64 data url",
                )),
            }
        }
        other => Err(unsupported(format!(
            "content part type `{other}` is not supported by gemini backends"
        ))),
    }
}

fn model_parts(
    message: ChatMessage,
    calls: &mut Vec<(String, String)>,
) -> Result<Vec<Value>, BackendError> {
    let mut parts = match message.content {
        None => Vec::new(),
        Some(MessageContent::Text(text)) if text.is_empty() => Vec::new(),
        Some(MessageContent::Text(text)) => vec![json!({"text": text})],
        Some(MessageContent::Parts(parts)) => parts
            .into_iter()
            .filter_map(|p| match p.kind.as_str() {
                "text" => p.text,
                "refusal" => p.extra.get("refusal").and_then(Value::as_str).map(str::to_owned),
                _ => None,
            })
            .filter(|t| !t.is_empty())
            .map(|text| json!({"text": text}))
            .collect(),
    };
    for call in message.tool_calls.unwrap_or_default() {
        let args = parse_arguments(&call.id, &call.function.arguments)?;
        parts.push(json!({"functionCall": {"name": call.function.name, "args": args}}));
        calls.push((call.id, call.function.name));
    }
    Ok(parts)
}

fn function_response(
    message: ChatMessage,
    calls: &[(String, String)],
) -> Result<Value, BackendError> {
    let by_id = message
        .tool_call_id
        .as_deref()
        .and_then(|id| calls.iter().rev().find(|(call, _)| call == id))
        .map(|(_, name)| name.clone());
    let name = by_id.or(message.name).ok_or_else(|| {
        invalid("a `tool` message must answer an earlier assistant tool call (`tool_call_id`)")
    })?;
    let text = message.content.map(|c| c.text()).unwrap_or_default();
    let response = match serde_json::from_str::<Value>(&text) {
        Ok(value @ Value::Object(_)) => value,
        _ => json!({"content": text}),
    };
    Ok(json!({"functionResponse": {"name": name, "response": response}}))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn translate(request: Value) -> Value {
        let out = chat_to_gemini(request.to_string().as_bytes(), None).unwrap();
        serde_json::from_slice(&out.body).unwrap()
    }

    #[test]
    fn model_names_stay_one_path_segment() {
        assert_eq!(model_segment("gemini-2.0-flash"), "gemini-2.0-flash");
        assert_eq!(model_segment("models/gemini-1.5-pro"), "gemini-1.5-pro");
        assert_eq!(model_segment("../x?y"), "..%2Fx%3Fy");
        assert_eq!(model_segment("a b#c%d:e"), "a%20b%23c%25d%3Ae");
        assert_eq!(model_segment("ü"), "%C3%BC");
    }

    #[test]
    fn roles_system_and_config_translate() {
        let out = translate(json!({
            "model": "gemini-2.0-flash",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "hello"},
                {"role": "user", "content": [{"type": "text", "text": "look"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]},
            ],
            "temperature": 0.5, "top_p": 0.9, "top_k": 40, "max_tokens": 64, "stop": "END", "n": 2,
        }));
        assert_eq!(out["systemInstruction"], json!({"parts": [{"text": "be brief"}]}));
        assert_eq!(out["contents"][1]["role"], "model");
        assert_eq!(
            out["contents"][2]["parts"][1],
            json!({"inlineData": {"mimeType": "image/png", "data": "AAAA"}})
        );
        assert_eq!(
            out["generationConfig"],
            json!({"temperature": 0.5, "topP": 0.9, "topK": 40, "maxOutputTokens": 64,
                   "stopSequences": ["END"], "candidateCount": 2})
        );
    }

    #[test]
    fn tool_results_carry_the_function_name_and_schemas_are_cleaned() {
        let out = translate(json!({
            "model": "g",
            "messages": [
                {"role": "user", "content": "weather?"},
                {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function",
                    "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "{\"temp\":20}"},
                {"role": "tool", "tool_call_id": "c1", "content": "plain"},
            ],
            "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {
                "$schema": "x", "type": "object", "additionalProperties": false,
                "properties": {"additionalProperties": {"type": "string", "additionalProperties": 1}}}}}],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        }));
        assert_eq!(
            out["contents"][1]["parts"][0]["functionCall"]["args"],
            json!({"city": "Paris"})
        );
        assert_eq!(
            out["contents"][2]["parts"],
            json!([{"functionResponse": {"name": "get_weather", "response": {"temp": 20}}},
                   {"functionResponse": {"name": "get_weather", "response": {"content": "plain"}}}])
        );
        assert_eq!(
            out["tools"][0]["functionDeclarations"][0]["parameters"],
            json!({"type": "object", "properties": {"additionalProperties": {"type": "string"}}})
        );
        assert_eq!(
            out["toolConfig"],
            json!({"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}})
        );
    }

    #[test]
    fn unsupported_inputs_are_named() {
        let e = chat_to_gemini(
            json!({"model": "g", "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}]})
            .to_string()
            .as_bytes(),
            None,
        )
        .unwrap_err();
        assert_eq!(e.code, ErrorCode::Unsupported);
        let e = chat_to_gemini(
            json!({"model": "g", "messages": [{"role": "tool", "tool_call_id": "nope", "content": "x"}]})
                .to_string()
                .as_bytes(),
            None,
        )
        .unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidRequest);
    }

    #[test]
    fn errors_translate_and_invalid_keys_become_401() {
        let body = br#"{"error":{"code":400,"message":"API key not valid. Please pass a valid API key.","status":"INVALID_ARGUMENT","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"API_KEY_INVALID"}]}}"#;
        let (status, out) = gemini_error_to_openai(StatusCode::BAD_REQUEST, body);
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let out: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(out["error"]["code"], "invalid_api_key");
        let (status, out) = gemini_error_to_openai(
            StatusCode::TOO_MANY_REQUESTS,
            br#"[{"error":{"code":429,"message":"quota","status":"RESOURCE_EXHAUSTED"}}]"#,
        );
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            serde_json::from_slice::<Value>(&out).unwrap()["error"]["code"],
            "rate_limit_exceeded"
        );
    }
}
