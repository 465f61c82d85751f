// cargo run -p switchyard-examples --example custom_backend -- [ADDRESS]
//! A backend of your own behind the Switchyard router: a toy `reverse` model that
//! answers a chat with the last user message reversed, implemented directly on the
//! `switchyard_core::Backend` trait and served by `switchyard-server` with everything
//! the router adds (OpenAI-compatible endpoints, streaming, `/v1/models`, health,
//! error JSON, graceful shutdown).
//!
//! Listens on ADDRESS (default `127.0.0.1:8080`; `127.0.0.1:0` picks a free port) and
//! prints it. Then, from another terminal:
//!
//! ```sh
//! curl -s http://127.0.0.1:8080/v1/chat/completions -H 'Content-Type: application/json' \
//!   -d '{"model": "reverse", "messages": [{"role": "user", "content": "Hello, router"}]}'
//! ```
//!
//! or any OpenAI client with `base_url="http://127.0.0.1:8080/v1"`, streaming included.
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "an example program prints where it listens; errors go to stderr"
)]

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use switchyard_core::openai::{
    ChatChoice, ChatCompletion, ChatCompletionChunk, ChatCompletionRequest, ChatMessage,
    ChunkChoice, Delta, MessageContent, Model, Role, Usage,
};
use switchyard_core::{
    Backend, BackendError, BackendId, BackendRequest, BackendResponse, BodyStream, BoxFuture,
    Endpoint, ErrorCode, sse,
};
use switchyard_server::{BackendSpec, RouterSpec, Server, ServerSettings, shutdown_signal};

/// The model name clients ask for.
const MODEL: &str = "reverse";

/// A backend that reverses the last user message, whole or streamed word by word.
struct ReverseBackend {
    id: BackendId,
    /// For completion ids.
    served: AtomicU64,
}

impl Backend for ReverseBackend {
    fn id(&self) -> &BackendId {
        &self.id
    }

    fn send(
        &self,
        request: BackendRequest,
    ) -> BoxFuture<'_, Result<BackendResponse, BackendError>> {
        // Do the (cheap) work now; a slow backend would do it inside the future so that
        // dropping the future cancels it.
        let result = self.answer(&request);
        Box::pin(async move { result })
    }

    fn models(&self) -> BoxFuture<'_, Result<Vec<Model>, BackendError>> {
        let models = vec![Model::new(MODEL, self.id.as_str())];
        Box::pin(async move { Ok(models) })
    }

    fn probe(&self) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(async { Ok(()) })
    }

    fn supports(&self, endpoint: Endpoint) -> bool {
        endpoint == Endpoint::ChatCompletions
    }
}

impl ReverseBackend {
    fn new(name: &str) -> Self {
        ReverseBackend { id: BackendId::new(name), served: AtomicU64::new(0) }
    }

    fn answer(&self, request: &BackendRequest) -> Result<BackendResponse, BackendError> {
        if request.endpoint != Endpoint::ChatCompletions {
            return Err(BackendError::new(
                ErrorCode::Unsupported,
                format!("{} is not supported by the reverse model", request.endpoint.as_str()),
            ));
        }
        // The router has checked the routing fields; the rest of the body is ours to read.
        let chat: ChatCompletionRequest = serde_json::from_slice(&request.body).map_err(|e| {
            BackendError::new(ErrorCode::InvalidRequest, format!("invalid request body: {e}"))
        })?;
        let prompt = chat
            .messages
            .iter()
            .rev()
            .find(|m| m.role == Role::User)
            .and_then(|m| m.content.as_ref())
            .map(MessageContent::text)
            .ok_or_else(|| BackendError::new(ErrorCode::InvalidRequest, "no user message"))?;
        let reversed: String = prompt.chars().rev().collect();
        let model = request.upstream_model.as_deref().unwrap_or(&request.meta.model).to_owned();
        let n = self.served.fetch_add(1, Ordering::Relaxed);
        let id = format!("chatcmpl-reverse-{n}");
        let usage = Usage {
            prompt_tokens: word_count(&prompt),
            completion_tokens: word_count(&reversed),
            total_tokens: word_count(&prompt) + word_count(&reversed),
            extra: Default::default(),
        };
        let created = unix_now();
        if request.meta.stream {
            let events = stream_events(
                &id,
                &model,
                created,
                &reversed,
                request.meta.include_usage.then_some(usage),
            )?;
            let body: BodyStream = Box::pin(futures_util::stream::iter(events.into_iter().map(Ok)));
            return Ok(BackendResponse::event_stream(body));
        }
        let completion = ChatCompletion {
            id,
            object: "chat.completion".into(),
            created,
            model,
            choices: vec![ChatChoice {
                index: 0,
                message: ChatMessage {
                    role: Role::Assistant,
                    content: Some(MessageContent::Text(reversed)),
                    name: None,
                    tool_calls: None,
                    tool_call_id: None,
                    extra: Default::default(),
                },
                finish_reason: Some("stop".into()),
                logprobs: None,
                extra: Default::default(),
            }],
            usage: Some(usage),
            system_fingerprint: None,
            extra: Default::default(),
        };
        Ok(BackendResponse::json(Bytes::from(to_json(&completion)?)))
    }
}

/// The SSE events of a streamed answer: the role, one chunk per word, the finish
/// reason, the usage when asked for, then `[DONE]`.
fn stream_events(
    id: &str,
    model: &str,
    created: u64,
    text: &str,
    usage: Option<Usage>,
) -> Result<Vec<Bytes>, BackendError> {
    let chunk = |delta: Delta, finish: Option<&str>| ChatCompletionChunk {
        id: id.to_owned(),
        object: "chat.completion.chunk".into(),
        created,
        model: model.to_owned(),
        choices: vec![ChunkChoice {
            index: 0,
            delta,
            finish_reason: finish.map(str::to_owned),
            logprobs: None,
            extra: Default::default(),
        }],
        usage: None,
        system_fingerprint: None,
        extra: Default::default(),
    };
    let mut chunks = vec![chunk(Delta { role: Some(Role::Assistant), ..Delta::default() }, None)];
    for piece in text.split_inclusive(' ') {
        chunks.push(chunk(Delta { content: Some(piece.to_owned()), ..Delta::default() }, None));
    }
    chunks.push(chunk(Delta::default(), Some("stop")));
    if let Some(usage) = usage {
        let mut last = chunk(Delta::default(), None);
        last.choices.clear();
        last.usage = Some(usage);
        chunks.push(last);
    }
    let mut events = Vec::with_capacity(chunks.len() + 1);
    for chunk in &chunks {
        events.push(sse::data_event(&to_json(chunk)?));
    }
    events.push(Bytes::from_static(sse::DONE_EVENT));
    Ok(events)
}

fn to_json(value: &impl serde::Serialize) -> Result<Vec<u8>, BackendError> {
    serde_json::to_vec(value).map_err(|e| BackendError::new(ErrorCode::Internal, e.to_string()))
}

fn word_count(text: &str) -> u32 {
    u32::try_from(text.split_whitespace().count()).unwrap_or(u32::MAX)
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The router around the backend, bound to `address`.
async fn bind(address: SocketAddr) -> switchyard_server::Result<Server> {
    let backend = Arc::new(ReverseBackend::new("reverse-backend"));
    let mut spec = BackendSpec::new(backend, vec![MODEL.to_owned()]);
    spec.kind = "reverse".into(); // shown by /admin/backends
    let router = RouterSpec {
        backends: vec![spec],
        // Clients may also ask for "backwards".
        aliases: [("backwards".to_owned(), MODEL.to_owned())].into(),
        ..RouterSpec::default()
    };
    let settings = ServerSettings { bind_address: address, ..ServerSettings::default() };
    Server::bind(settings, router).await
}

#[tokio::main]
async fn main() -> ExitCode {
    let arg = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:8080".into());
    let address: SocketAddr = match arg.parse() {
        Ok(address) => address,
        Err(error) => {
            eprintln!("custom_backend: invalid address {arg:?}: {error}");
            return ExitCode::FAILURE;
        }
    };
    let server = match bind(address).await {
        Ok(server) => server,
        Err(error) => {
            eprintln!("custom_backend: {error}");
            return ExitCode::FAILURE;
        }
    };
    match server.local_addr() {
        Ok(bound) => println!("serving model {MODEL:?} on http://{bound}/v1 (Ctrl-C stops)"),
        Err(error) => eprintln!("custom_backend: {error}"),
    }
    match server.serve(shutdown_signal()).await {
        Ok(()) => {
            println!("drained and stopped");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("custom_backend: {error}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    use serde_json::{Value, json};

    struct Running {
        addr: SocketAddr,
        stop: tokio::sync::oneshot::Sender<()>,
        task: tokio::task::JoinHandle<switchyard_server::Result<()>>,
    }

    async fn start() -> Running {
        let server = bind(SocketAddr::from(([127, 0, 0, 1], 0))).await.unwrap();
        let addr = server.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server.serve(async move {
            let _ = stopped.await;
        }));
        Running { addr, stop, task }
    }

    async fn call(
        addr: SocketAddr,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, String, Bytes) {
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let body = body.map(|b| Bytes::from(serde_json::to_vec(&b).unwrap())).unwrap_or_default();
        let request = http::Request::builder()
            .method(method)
            .uri(format!("http://{addr}{path}"))
            .header("content-type", "application/json")
            .body(Full::new(body))
            .unwrap();
        let response = client.request(request).await.unwrap();
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, content_type, body)
    }

    fn chat(model: &str, content: &str, stream: bool) -> Value {
        json!({"model": model, "stream": stream, "stream_options": {"include_usage": stream},
               "messages": [{"role": "system", "content": "be backwards"},
                            {"role": "user", "content": content}]})
    }

    #[tokio::test]
    async fn chat_completions_come_back_reversed() {
        let router = start().await;
        let (status, content_type, body) = call(
            router.addr,
            "POST",
            "/v1/chat/completions",
            Some(chat(MODEL, "Hello, router", false)),
        )
        .await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        assert!(content_type.starts_with("application/json"));
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["choices"][0]["message"]["content"], "retuor ,olleH");
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        assert_eq!(v["usage"]["total_tokens"], 4);
        // Through the alias too; the body is rewritten to the real model name.
        let (status, _, body) = call(
            router.addr,
            "POST",
            "/v1/chat/completions",
            Some(chat("backwards", "abc", false)),
        )
        .await;
        assert_eq!(status, 200);
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["choices"][0]["message"]["content"], "cba");
        router.stop.send(()).unwrap();
        router.task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn streams_arrive_as_openai_chunks_ending_in_done() {
        let router = start().await;
        let (status, content_type, body) = call(
            router.addr,
            "POST",
            "/v1/chat/completions",
            Some(chat(MODEL, "one two three", true)),
        )
        .await;
        assert_eq!(status, 200);
        assert!(content_type.starts_with("text/event-stream"), "{content_type}");
        let events = sse::SseParser::new().feed(&body);
        assert!(events.last().unwrap().is_done());
        let chunks: Vec<Value> = events
            .iter()
            .filter(|e| !e.is_done())
            .map(|e| serde_json::from_str(&e.data).unwrap())
            .collect();
        let text: String =
            chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
        assert_eq!(text, "eerht owt eno");
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(chunks.last().unwrap()["usage"]["completion_tokens"], 3);
        router.stop.send(()).unwrap();
        router.task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn the_router_lists_the_model_and_answers_errors_as_openai_json() {
        let router = start().await;
        let (status, _, body) = call(router.addr, "GET", "/v1/models", None).await;
        assert_eq!(status, 200);
        let v: Value = serde_json::from_slice(&body).unwrap();
        let ids: Vec<&str> =
            v["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
        assert!(ids.contains(&MODEL) && ids.contains(&"backwards"), "{ids:?}");

        let (status, _, body) =
            call(router.addr, "POST", "/v1/chat/completions", Some(chat("gpt-4o", "hi", false)))
                .await;
        assert_eq!(status, 404);
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["code"], "model_not_found", "{v}");

        // The backend says it does not do embeddings: a clear client error, no panic.
        let embed = json!({"model": MODEL, "input": "x"});
        let (status, _, body) = call(router.addr, "POST", "/v1/embeddings", Some(embed)).await;
        assert!((400..500).contains(&status), "{status} {}", String::from_utf8_lossy(&body));
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert!(v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
        router.stop.send(()).unwrap();
        router.task.await.unwrap().unwrap();
    }

    /// The official `openai` Python SDK, whole and streamed. Like the binary's e2e tests:
    /// a missing SDK fails the test with the install command unless
    /// `SWITCHYARD_SKIP_PYTHON` is set.
    #[tokio::test]
    async fn the_openai_python_sdk_can_call_it() {
        const SCRIPT: &str = r#"
import sys, openai
client = openai.OpenAI(base_url=sys.argv[1], api_key="unused")
messages = [{"role": "user", "content": "abc def"}]
whole = client.chat.completions.create(model="reverse", messages=messages)
print(whole.choices[0].message.content)
stream = client.chat.completions.create(model="reverse", messages=messages, stream=True)
print("".join(c.choices[0].delta.content or "" for c in stream if c.choices))
"#;
        let has_sdk = std::process::Command::new("python3")
            .args(["-c", "import openai"])
            .output()
            .is_ok_and(|o| o.status.success());
        if !has_sdk {
            assert!(
                std::env::var_os("SWITCHYARD_SKIP_PYTHON").is_some(),
                "the `openai` Python package is missing: run scripts/test.sh (it installs it), \
                 `python3 -m pip install openai`, or set SWITCHYARD_SKIP_PYTHON=1"
            );
            return;
        }
        let router = start().await;
        let base_url = format!("http://{}/v1", router.addr);
        let output = tokio::task::spawn_blocking(move || {
            std::process::Command::new("python3").args(["-c", SCRIPT, &base_url]).output()
        })
        .await
        .unwrap()
        .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{stderr}");
        assert_eq!(String::from_utf8(output.stdout).unwrap(), "fed cba\nfed cba\n");
        router.stop.send(()).unwrap();
        router.task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn the_backend_alone_rejects_what_it_cannot_answer() {
        let backend = ReverseBackend::new("r");
        let body = Bytes::from_static(
            br#"{"model":"reverse","messages":[{"role":"system","content":"s"}]}"#,
        );
        let meta = switchyard_core::RequestMeta::parse(Endpoint::ChatCompletions, &body).unwrap();
        let request = BackendRequest {
            endpoint: Endpoint::ChatCompletions,
            body,
            meta,
            upstream_model: None,
            headers: http::HeaderMap::new(),
        };
        let err = backend.send(request).await.unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidRequest);
        assert_eq!(err.message, "no user message");
        assert!(!backend.supports(Endpoint::Embeddings));
        backend.probe().await.unwrap();
    }
}
