//! Shared helpers: start the router in-process on 127.0.0.1:0 and talk to it with a
//! real HTTP client.

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use switchyard_backends::{ClientFactory, OpenAiBackend, OpenAiSettings, Timeouts};
use switchyard_server::{BackendSpec, RouterSpec, Server, ServerSettings};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub struct Router {
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    pub task: Option<JoinHandle<switchyard_server::Result<()>>>,
    client: Client<HttpConnector, Full<Bytes>>,
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

pub fn settings() -> ServerSettings {
    ServerSettings {
        bind_address: SocketAddr::from(([127, 0, 0, 1], 0)),
        shutdown_grace_period: Duration::from_secs(5),
        ..ServerSettings::default()
    }
}

pub fn openai(name: &str, url: &str, models: &[&str]) -> BackendSpec {
    openai_with(
        OpenAiSettings { name: name.into(), url: url.into(), ..OpenAiSettings::default() },
        models,
    )
}

pub fn openai_with(settings: OpenAiSettings, models: &[&str]) -> BackendSpec {
    let factory = ClientFactory::default();
    let backend = OpenAiBackend::new(&settings, &factory).expect("valid backend");
    let mut spec =
        BackendSpec::new(Arc::new(backend), models.iter().map(|m| m.to_string()).collect());
    spec.url = Some(settings.url.clone());
    spec.kind = "openai".into();
    spec
}

pub fn timeouts(first_byte_ms: u64) -> Timeouts {
    Timeouts { first_byte: Duration::from_millis(first_byte_ms), ..Timeouts::default() }
}

pub fn spec(backends: Vec<BackendSpec>) -> RouterSpec {
    RouterSpec { backends, ..RouterSpec::default() }
}

impl Router {
    pub async fn start(spec: RouterSpec) -> Router {
        Router::start_with(spec, settings()).await
    }

    pub async fn start_with(spec: RouterSpec, settings: ServerSettings) -> Router {
        let server = Server::bind(settings, spec).await.expect("router binds");
        let addr = server.local_addr().expect("address");
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(server.serve(async move {
            let _ = rx.await;
        }));
        let client = Client::builder(TokioExecutor::new()).build_http();
        Router { addr, shutdown: Some(tx), task: Some(task), client }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn send(&self, request: Request<Full<Bytes>>) -> http::Response<Incoming> {
        self.client.request(request).await.expect("router answers")
    }

    pub async fn post_raw(
        &self,
        path: &str,
        body: impl Into<Bytes>,
        headers: &[(&str, &str)],
    ) -> Reply {
        let mut request = Request::post(self.url(path))
            .header("content-type", "application/json")
            .body(Full::new(body.into()))
            .unwrap();
        for (name, value) in headers {
            let name = http::HeaderName::from_bytes(name.as_bytes()).unwrap();
            request.headers_mut().insert(name, http::HeaderValue::from_str(value).unwrap());
        }
        let response = self.send(request).await;
        Reply::read(response).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Reply {
        self.post_raw(path, serde_json::to_vec(body).unwrap(), &[]).await
    }

    pub async fn get(&self, path: &str) -> Reply {
        let response =
            self.send(Request::get(self.url(path)).body(Full::new(Bytes::new())).unwrap()).await;
        Reply::read(response).await
    }

    /// Stop accepting and wait for the server task to drain.
    pub async fn stop(mut self) -> switchyard_server::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.task.take().expect("running").await.expect("server task")
    }

    pub fn trigger_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

impl Reply {
    pub async fn read(response: http::Response<Incoming>) -> Reply {
        let (parts, body) = response.into_parts();
        let body = body.collect().await.expect("body").to_bytes();
        Reply { status: parts.status, headers: parts.headers, body }
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Assert an OpenAI-style error with `status` and `code`.
    pub fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(self.status.as_u16(), status, "{}", self.text());
        let json = self.json();
        assert_eq!(json["error"]["code"], code, "{json}");
        assert!(json["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{json}");
        assert!(json["error"]["type"].is_string(), "{json}");
        assert_eq!(self.headers["content-type"], "application/json");
    }
}

pub fn chat(model: &str, stream: bool) -> Value {
    serde_json::json!({
        "model": model,
        "stream": stream,
        "messages": [{"role": "user", "content": "Say hello"}],
        "temperature": 0.5,
        "max_tokens": 16
    })
}
