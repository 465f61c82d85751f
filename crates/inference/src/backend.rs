//! [`LocalBackend`]: the engine behind the core [`Backend`] trait, speaking OpenAI's
//! chat-completions and completions formats, streamed or whole.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_core::Stream;
use rand::Rng;
use switchyard_core::openai::{
    ChatChoice, ChatCompletion, ChatCompletionChunk, ChatCompletionRequest, ChatMessage,
    ChunkChoice, Completion, CompletionChoice, CompletionRequest, Delta, Extra, MessageContent,
    Model, Prompt, Role, Usage,
};
use switchyard_core::{
    Backend, BackendError, BackendId, BackendRequest, BackendResponse, BoxFuture, Endpoint,
    ErrorCode, sse,
};

use crate::engine::{
    ChatTurn, Engine, Event, FinishReason, GenerateRequest, Generation, Input, TokenUsage,
};
use crate::error::{Error, Result};
use crate::sampling::SamplingParams;
use crate::settings::InferenceSettings;

/// The local model as a router backend.
#[derive(Clone)]
pub struct LocalBackend {
    id: BackendId,
    engine: Engine,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Chat,
    Completion,
}

/// A parsed request, ready for the engine.
struct Prepared {
    kind: Kind,
    request: GenerateRequest,
    stream: bool,
    include_usage: bool,
}

/// The SSE body of a streamed answer.
struct ChunkStream {
    generation: Generation,
    kind: Kind,
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
    prompt_tokens: usize,
    queue: VecDeque<Bytes>,
    ended: bool,
}

impl LocalBackend {
    /// A backend named `id` serving `engine`'s model.
    pub fn new(id: BackendId, engine: Engine) -> Self {
        LocalBackend { id, engine }
    }

    /// Load the model `settings` names and serve it as backend `name`. Blocking (model
    /// load): call it from `spawn_blocking` or before the runtime starts.
    pub fn load(name: &str, settings: &InferenceSettings) -> Result<Self> {
        Ok(LocalBackend::new(BackendId::new(name), Engine::load(settings)?))
    }

    /// The engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The id clients use in `model`.
    pub fn model_id(&self) -> &str {
        self.engine.model_id()
    }

    /// Prompt tokens a chat request would use (for Anthropic's `count_tokens`).
    /// Tokenizing is fast but not free: call it from `spawn_blocking` for huge prompts.
    pub fn count_tokens(&self, request: &ChatCompletionRequest) -> Result<usize> {
        let turns = chat_turns(request)?;
        Ok(self.engine.prompt_tokens(&Input::Chat(turns))?.len())
    }

    fn prepare(&self, endpoint: Endpoint, body: &[u8]) -> Result<Prepared> {
        match endpoint {
            Endpoint::ChatCompletions => {
                let req: ChatCompletionRequest = serde_json::from_slice(body).map_err(|e| {
                    Error::InvalidRequest(format!("invalid chat completion request: {e}"))
                })?;
                check_n(req.n)?;
                let sampling = sampling(
                    req.temperature,
                    req.top_p,
                    req.top_k,
                    req.repetition_penalty,
                    req.seed,
                )?;
                let request = GenerateRequest {
                    input: Input::Chat(chat_turns(&req)?),
                    max_tokens: max_tokens(req.max_output_tokens())?,
                    sampling,
                    stop: req.stop.as_ref().map(|s| s.to_vec()).unwrap_or_default(),
                    ignore_eos: false,
                };
                Ok(Prepared {
                    kind: Kind::Chat,
                    request,
                    stream: req.stream.unwrap_or(false),
                    include_usage: req
                        .stream_options
                        .as_ref()
                        .and_then(|o| o.include_usage)
                        .unwrap_or(false),
                })
            }
            Endpoint::Completions => {
                let req: CompletionRequest = serde_json::from_slice(body).map_err(|e| {
                    Error::InvalidRequest(format!("invalid completion request: {e}"))
                })?;
                check_n(req.n)?;
                if req.echo == Some(true) {
                    return Err(Error::InvalidRequest(
                        "`echo` is not supported by the local model".into(),
                    ));
                }
                let input = match req.prompt {
                    Prompt::Text(t) => Input::Text(t),
                    Prompt::Tokens(t) => Input::Tokens(t),
                    Prompt::Texts(mut v) if v.len() == 1 => Input::Text(v.remove(0)),
                    Prompt::TokenBatches(mut v) if v.len() == 1 => Input::Tokens(v.remove(0)),
                    _ => {
                        return Err(Error::InvalidRequest(
                            "the local model takes exactly one prompt per request".into(),
                        ));
                    }
                };
                let sampling = sampling(
                    req.temperature,
                    req.top_p,
                    req.top_k,
                    req.repetition_penalty,
                    req.seed,
                )?;
                let request = GenerateRequest {
                    input,
                    max_tokens: max_tokens(req.max_tokens)?,
                    sampling,
                    stop: req.stop.as_ref().map(|s| s.to_vec()).unwrap_or_default(),
                    ignore_eos: false,
                };
                Ok(Prepared {
                    kind: Kind::Completion,
                    request,
                    stream: req.stream.unwrap_or(false),
                    include_usage: req
                        .stream_options
                        .as_ref()
                        .and_then(|o| o.include_usage)
                        .unwrap_or(false),
                })
            }
            other => Err(Error::Unsupported(format!("the {} endpoint", other.as_str()))),
        }
    }

    async fn respond(&self, request: BackendRequest) -> Result<BackendResponse> {
        let prepared = self.prepare(request.endpoint, &request.body)?;
        let mut generation = self.engine.submit(prepared.request)?;
        let prompt_tokens = match generation.next().await {
            Some(Event::Started { prompt_tokens }) => prompt_tokens,
            Some(Event::Error(e)) => return Err(e),
            _ => return Err(Error::EngineStopped),
        };
        let model = self.engine.model_id().to_owned();
        let id = new_id(prepared.kind);
        let created = unix_now();
        if prepared.stream {
            let mut stream = ChunkStream {
                generation,
                kind: prepared.kind,
                id,
                created,
                model,
                include_usage: prepared.include_usage,
                prompt_tokens,
                queue: VecDeque::new(),
                ended: false,
            };
            if prepared.kind == Kind::Chat {
                let first = Delta {
                    role: Some(Role::Assistant),
                    content: Some(String::new()),
                    ..Delta::default()
                };
                let chunk = stream.chat_chunk(first, None);
                stream.queue.push_back(chunk);
            }
            return Ok(BackendResponse::event_stream(Box::pin(stream)));
        }
        let mut text = String::new();
        let finished = loop {
            match generation.next().await {
                Some(Event::Text(t)) => text.push_str(&t),
                Some(Event::Done(f)) => break f,
                Some(Event::Error(e)) => return Err(e),
                Some(Event::Started { .. }) => {}
                None => return Err(Error::EngineStopped),
            }
        };
        let usage = usage(finished.usage);
        let reason = Some(reason(finished.finish_reason));
        let body = match prepared.kind {
            Kind::Chat => serde_json::to_vec(&ChatCompletion {
                id,
                object: "chat.completion".into(),
                created,
                model,
                choices: vec![ChatChoice {
                    index: 0,
                    message: ChatMessage {
                        role: Role::Assistant,
                        content: Some(MessageContent::Text(text)),
                        name: None,
                        tool_calls: None,
                        tool_call_id: None,
                        extra: Extra::new(),
                    },
                    finish_reason: reason,
                    logprobs: None,
                    extra: Extra::new(),
                }],
                usage: Some(usage),
                system_fingerprint: None,
                extra: Extra::new(),
            }),
            Kind::Completion => serde_json::to_vec(&Completion {
                id,
                object: "text_completion".into(),
                created,
                model,
                choices: vec![CompletionChoice {
                    text,
                    index: 0,
                    finish_reason: reason,
                    logprobs: None,
                    extra: Extra::new(),
                }],
                usage: Some(usage),
                extra: Extra::new(),
            }),
        }
        .map_err(|e| Error::Internal(format!("cannot serialise the response: {e}")))?;
        Ok(BackendResponse::json(Bytes::from(body)))
    }
}

impl Backend for LocalBackend {
    fn id(&self) -> &BackendId {
        &self.id
    }

    fn send(
        &self,
        request: BackendRequest,
    ) -> BoxFuture<'_, std::result::Result<BackendResponse, BackendError>> {
        Box::pin(async move { self.respond(request).await.map_err(BackendError::from) })
    }

    fn models(&self) -> BoxFuture<'_, std::result::Result<Vec<Model>, BackendError>> {
        let model = Model::new(self.engine.model_id(), self.id.as_str());
        Box::pin(async move { Ok(vec![model]) })
    }

    fn probe(&self) -> BoxFuture<'_, std::result::Result<(), BackendError>> {
        let alive = self.engine.is_running();
        Box::pin(async move {
            if alive {
                Ok(())
            } else {
                Err(BackendError::new(ErrorCode::Internal, Error::EngineStopped.to_string()))
            }
        })
    }

    fn supports(&self, endpoint: Endpoint) -> bool {
        matches!(endpoint, Endpoint::ChatCompletions | Endpoint::Completions)
    }

    fn count_tokens(&self, chat_body: &[u8]) -> Option<std::result::Result<u64, BackendError>> {
        let counted = serde_json::from_slice::<ChatCompletionRequest>(chat_body)
            .map_err(|e| Error::InvalidRequest(format!("invalid chat completion request: {e}")))
            .and_then(|request| LocalBackend::count_tokens(self, &request));
        Some(counted.map(|n| n as u64).map_err(BackendError::from))
    }
}

impl ChunkStream {
    fn chat_chunk(&self, delta: Delta, finish: Option<FinishReason>) -> Bytes {
        let chunk = ChatCompletionChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk".into(),
            created: self.created,
            model: self.model.clone(),
            choices: vec![ChunkChoice {
                index: 0,
                delta,
                finish_reason: finish.map(reason),
                logprobs: None,
                extra: Extra::new(),
            }],
            usage: None,
            system_fingerprint: None,
            extra: Extra::new(),
        };
        encode(&chunk)
    }

    fn completion_chunk(&self, text: String, finish: Option<FinishReason>) -> Bytes {
        let chunk = Completion {
            id: self.id.clone(),
            object: "text_completion".into(),
            created: self.created,
            model: self.model.clone(),
            choices: vec![CompletionChoice {
                text,
                index: 0,
                finish_reason: finish.map(reason),
                logprobs: None,
                extra: Extra::new(),
            }],
            usage: None,
            extra: Extra::new(),
        };
        encode(&chunk)
    }

    fn text_chunk(&self, text: String) -> Bytes {
        match self.kind {
            Kind::Chat => self.chat_chunk(Delta { content: Some(text), ..Delta::default() }, None),
            Kind::Completion => self.completion_chunk(text, None),
        }
    }

    fn finish(&mut self, reason: FinishReason, tokens: TokenUsage) {
        let last = match self.kind {
            Kind::Chat => self.chat_chunk(Delta::default(), Some(reason)),
            Kind::Completion => self.completion_chunk(String::new(), Some(reason)),
        };
        self.queue.push_back(last);
        if self.include_usage {
            let usage = usage(tokens);
            let object = match self.kind {
                Kind::Chat => "chat.completion.chunk",
                Kind::Completion => "text_completion",
            };
            let chunk = serde_json::json!({
                "id": self.id, "object": object, "created": self.created, "model": self.model,
                "choices": [], "usage": usage,
            });
            self.queue.push_back(encode(&chunk));
        }
        self.queue.push_back(Bytes::from_static(sse::DONE_EVENT));
        self.ended = true;
    }
}

impl Stream for ChunkStream {
    type Item = std::result::Result<Bytes, BackendError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(chunk) = this.queue.pop_front() {
                return Poll::Ready(Some(Ok(chunk)));
            }
            if this.ended {
                return Poll::Ready(None);
            }
            match this.generation.poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Event::Text(text))) => {
                    let chunk = this.text_chunk(text);
                    this.queue.push_back(chunk);
                }
                Poll::Ready(Some(Event::Done(f))) => {
                    let mut usage = f.usage;
                    usage.prompt_tokens = usage.prompt_tokens.max(this.prompt_tokens);
                    this.finish(f.finish_reason, usage);
                }
                Poll::Ready(Some(Event::Started { .. })) => {}
                Poll::Ready(Some(Event::Error(e))) => {
                    this.ended = true;
                    return Poll::Ready(Some(Err(e.into())));
                }
                Poll::Ready(None) => {
                    this.ended = true;
                    return Poll::Ready(Some(Err(Error::EngineStopped.into())));
                }
            }
        }
    }
}

fn encode<T: serde::Serialize>(value: &T) -> Bytes {
    match serde_json::to_vec(value) {
        Ok(json) => sse::data_event(&json),
        Err(_) => sse::data_event(
            br#"{"error":{"message":"serialisation failed","type":"server_error"}}"#,
        ),
    }
}

/// The conversation as template turns: text content only (parts joined).
fn chat_turns(req: &ChatCompletionRequest) -> Result<Vec<ChatTurn>> {
    if req.messages.is_empty() {
        return Err(Error::InvalidRequest("`messages` must not be empty".into()));
    }
    Ok(req
        .messages
        .iter()
        .map(|m| ChatTurn {
            role: match m.role {
                Role::System | Role::Developer => "system",
                Role::User => "user",
                Role::Assistant => "assistant",
                Role::Tool | Role::Function => "tool",
            }
            .to_owned(),
            content: m.content.as_ref().map(MessageContent::text).unwrap_or_default(),
        })
        .collect())
}

fn check_n(n: Option<u32>) -> Result<()> {
    match n {
        None | Some(1) => Ok(()),
        Some(n) => {
            Err(Error::InvalidRequest(format!("`n` is {n}; the local model generates one choice")))
        }
    }
}

fn max_tokens(v: Option<u32>) -> Result<Option<usize>> {
    match v {
        Some(0) => Err(Error::InvalidRequest("`max_tokens` must be at least 1".into())),
        other => Ok(other.map(|v| v as usize)),
    }
}

#[allow(clippy::cast_possible_truncation)]
fn sampling(
    temperature: Option<f64>,
    top_p: Option<f64>,
    top_k: Option<u32>,
    repetition_penalty: Option<f64>,
    seed: Option<u64>,
) -> Result<SamplingParams> {
    let mut p = SamplingParams::default();
    if let Some(t) = temperature {
        if !(0.0..=2.0).contains(&t) {
            return Err(Error::InvalidRequest(format!(
                "`temperature` is {t}; it must be between 0 and 2"
            )));
        }
        p.temperature = t as f32;
    }
    if let Some(v) = top_p {
        if !(v > 0.0 && v <= 1.0) {
            return Err(Error::InvalidRequest(format!("`top_p` is {v}; it must be in (0, 1]")));
        }
        p.top_p = v as f32;
    }
    if let Some(k) = top_k {
        p.top_k = k as usize;
    }
    if let Some(r) = repetition_penalty {
        if !(r > 0.0 && r <= 10.0) {
            return Err(Error::InvalidRequest(format!(
                "`repetition_penalty` is {r}; it must be in (0, 10]"
            )));
        }
        p.repetition_penalty = r as f32;
    }
    p.seed = seed;
    Ok(p)
}

fn usage(t: TokenUsage) -> Usage {
    let prompt = u32::try_from(t.prompt_tokens).unwrap_or(u32::MAX);
    let completion = u32::try_from(t.completion_tokens).unwrap_or(u32::MAX);
    Usage {
        prompt_tokens: prompt,
        completion_tokens: completion,
        total_tokens: prompt.saturating_add(completion),
        extra: Extra::new(),
    }
}

fn reason(r: FinishReason) -> String {
    match r {
        FinishReason::Stop => "stop".into(),
        FinishReason::Length => "length".into(),
    }
}

fn new_id(kind: Kind) -> String {
    let n: u64 = rand::rng().random();
    match kind {
        Kind::Chat => format!("chatcmpl-{n:016x}"),
        Kind::Completion => format!("cmpl-{n:016x}"),
    }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
