//! Shared helpers: start the router in-process on 127.0.0.1:0 and talk to it with a
//! real HTTP client.

#![allow(dead_code)]

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

impl Router {
    /// Start a router from a configuration (the way the binary does).
    pub async fn from_config(
        config: switchyard_config::Config,
        options: switchyard_server::Options,
    ) -> Router {
        let server = Server::from_config(config, options).await.expect("router binds");
        let addr = server.local_addr().expect("address");
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(server.serve(async move {
            let _ = rx.await;
        }));
        let client = Client::builder(TokioExecutor::new()).build_http();
        Router { addr, shutdown: Some(tx), task: Some(task), client }
    }

    pub async fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        let mut request = Request::get(self.url(path)).body(Full::new(Bytes::new())).unwrap();
        for (name, value) in headers {
            let name = http::HeaderName::from_bytes(name.as_bytes()).unwrap();
            request.headers_mut().insert(name, http::HeaderValue::from_str(value).unwrap());
        }
        Reply::read(self.send(request).await).await
    }

    pub async fn post_with(&self, path: &str, body: &Value, headers: &[(&str, &str)]) -> Reply {
        self.post_raw(path, serde_json::to_vec(body).unwrap(), headers).await
    }
}

/// Install one Prometheus recorder for this test binary (first call) and return what
/// `/metrics` renders with.
pub fn recorder() -> switchyard_server::MetricsRender {
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
    static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();
    let handle = HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Suffix("_seconds".into()),
                    &[0.0001, 0.001, 0.01, 0.1, 1.0, 10.0],
                )
                .unwrap()
                .install_recorder()
                .expect("the only recorder of this test binary");
            switchyard_server::describe_metrics();
            handle
        })
        .clone();
    Arc::new(move || {
        handle.run_upkeep();
        handle.render()
    })
}

/// One sample of Prometheus text.
#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: std::collections::BTreeMap<String, String>,
    pub value: f64,
}

/// Parse the Prometheus text exposition format strictly: every line must be blank, a
/// `# HELP`/`# TYPE` comment or a well-formed sample; anything else panics.
pub fn parse_prometheus(text: &str) -> Vec<Sample> {
    fn is_name(s: &str) -> bool {
        let mut chars = s.chars();
        chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    }
    let mut samples = Vec::new();
    let mut types = std::collections::HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let at = || format!("line {}: {line:?}", n + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let kind = parts.next().unwrap();
            let name = parts.next().unwrap_or_else(|| panic!("{}", at()));
            assert!(is_name(name), "{}", at());
            if kind == "TYPE" {
                let ty = parts.next().unwrap_or_else(|| panic!("{}", at()));
                assert!(
                    ["counter", "gauge", "histogram", "summary", "untyped"].contains(&ty),
                    "{}",
                    at()
                );
                assert!(
                    types.insert(name.to_owned(), ty.to_owned()).is_none(),
                    "TYPE twice: {}",
                    at()
                );
            } else {
                assert_eq!(kind, "HELP", "{}", at());
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{}", at()));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            v => v.parse().unwrap_or_else(|_| panic!("bad value: {}", at())),
        };
        let (name, labels) = match series.split_once('{') {
            None => (series, std::collections::BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').unwrap_or_else(|| panic!("{}", at()));
                let mut labels = std::collections::BTreeMap::new();
                let mut chars = body.chars().peekable();
                while chars.peek().is_some() {
                    let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
                    assert!(is_name(&key), "bad label name {key:?}: {}", at());
                    assert_eq!(chars.next(), Some('"'), "{}", at());
                    let mut value = String::new();
                    loop {
                        match chars.next().unwrap_or_else(|| panic!("{}", at())) {
                            '\\' => match chars.next() {
                                Some('n') => value.push('\n'),
                                Some(c @ ('\\' | '"')) => value.push(c),
                                _ => panic!("bad escape: {}", at()),
                            },
                            '"' => break,
                            c => value.push(c),
                        }
                    }
                    labels.insert(key, value);
                    match chars.next() {
                        None => break,
                        Some(',') => {}
                        Some(_) => panic!("{}", at()),
                    }
                }
                (name, labels)
            }
        };
        assert!(is_name(name), "{}", at());
        samples.push(Sample { name: name.to_owned(), labels, value });
    }
    samples
}

/// The value of the sample `name` whose labels include every pair of `labels` (0 when
/// there is none yet; the sum when several match).
pub fn sample(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(*k).is_some_and(|x| x == v)))
        .map(|s| s.value)
        .sum()
}

/// A throw-away `redis-server` on a free port (tests fail with a clear message when it
/// is not installed, unless `SWITCHYARD_SKIP_REDIS=1`).
pub struct Redis {
    child: std::process::Child,
    pub port: u16,
}

impl Redis {
    pub fn start() -> Option<Redis> {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let spawned = std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
        match spawned {
            Ok(child) => Some(Redis { child, port }),
            Err(_) => {
                assert!(
                    std::env::var_os("SWITCHYARD_SKIP_REDIS").is_some(),
                    "redis-server is not installed: run scripts/test.sh (it installs it), \
                     `apt-get install redis-server`, or set SWITCHYARD_SKIP_REDIS=1"
                );
                None
            }
        }
    }

    pub async fn wait_ready(&self) {
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("redis-server did not start");
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}
