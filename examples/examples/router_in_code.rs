// cargo run -p switchyard-examples --example router_in_code
//! A whole router assembled in code, the way the binary does it but without files,
//! environment or signals: a configuration from a YAML string (validated by
//! `switchyard-config`), converted into the server's and backends' settings, one
//! in-process mock OpenAI upstream (`switchyard-test-support`) as the backend,
//! `switchyard-server` on `127.0.0.1:0`, one chat request through it with hyper-util's
//! client, the answer printed, then a graceful shutdown that drains and returns.
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "an example program prints what it does; errors go to stderr"
)]

use std::net::SocketAddr;
use std::process::ExitCode;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use switchyard_backends::ClientFactory;
use switchyard_config::Config;
use switchyard_server::{Server, client_settings, router_spec, server_settings};
use switchyard_test_support::{MockUpstream, Script};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The configuration, as a file would hold it; `{UPSTREAM}` is the mock's base URL.
const CONFIG: &str = r#"
server:
  bind_address: "127.0.0.1:0"       # any free port; the program prints the one it got
  shutdown_grace_period: 5s
backends:
  - name: mock
    type: openai
    url: "{UPSTREAM}"
    models: [gpt-4o-mini]
routing:
  strategy: RoundRobin
  model_aliases: { fast: gpt-4o-mini }
request:
  timeout: 30s
  max_retries: 1
"#;

/// A router serving in the background until told to stop.
struct RunningRouter {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<switchyard_server::Result<()>>,
}

/// Parse and validate the configuration for an upstream at `upstream`.
fn config_for(upstream: &str) -> Result<Config, switchyard_config::ConfigError> {
    Config::from_yaml_str(&CONFIG.replace("{UPSTREAM}", upstream))
}

impl RunningRouter {
    /// Build every backend the configuration names and start serving.
    async fn start(config: &Config) -> Result<RunningRouter, switchyard_server::Error> {
        let factory = ClientFactory::new(client_settings(config));
        let spec = router_spec(config, &factory)?;
        // Binding also runs the first health probe and model discovery.
        let server = Server::bind(server_settings(config), spec).await?;
        let addr = server.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.serve(async move {
            let _ = stopped.await;
        }));
        Ok(RunningRouter { addr, stop, task })
    }

    /// Stop accepting, let in-flight requests finish, and wait for the server to return.
    async fn shutdown(self) -> Result<(), BoxError> {
        // An error here means the server already stopped; awaiting the task says why.
        let _ = self.stop.send(());
        self.task.await??;
        Ok(())
    }
}

/// POST a JSON body to the router and return the status and the JSON answer.
async fn post(addr: SocketAddr, path: &str, body: &Value) -> Result<(u16, Value), BoxError> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let request = http::Request::post(format!("http://{addr}{path}"))
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(serde_json::to_vec(body)?)))?;
    let response = client.request(request).await?;
    let status = response.status().as_u16();
    let bytes = response.into_body().collect().await?.to_bytes();
    Ok((status, serde_json::from_slice(&bytes)?))
}

/// Ask `model` one question; the answer's text, or the router's error message.
async fn ask(addr: SocketAddr, model: &str, question: &str) -> Result<String, BoxError> {
    let body = json!({"model": model, "messages": [{"role": "user", "content": question}]});
    let (status, answer) = post(addr, "/v1/chat/completions", &body).await?;
    if status != 200 {
        return Err(format!("router answered {status}: {}", answer["error"]["message"]).into());
    }
    match answer["choices"][0]["message"]["content"].as_str() {
        Some(text) => Ok(text.to_owned()),
        None => Err(format!("no message content in {answer}").into()),
    }
}

/// The program: mock upstream, router, one request, shutdown. Returns the answer.
async fn run() -> Result<String, BoxError> {
    let upstream =
        MockUpstream::start(Script::ok().texts(["Hello ", "from ", "the upstream."])).await?;
    let config = config_for(&upstream.v1_url())?;
    let router = RunningRouter::start(&config).await?;
    println!("router on http://{}, upstream mock on {}", router.addr, upstream.url());

    let asked = ask(router.addr, "fast", "Who is there?").await;
    // Shut down whether or not the request worked.
    router.shutdown().await?;
    upstream.shutdown().await;
    let answer = asked?;
    println!("answer: {answer}");
    println!("router stopped cleanly");
    Ok(answer)
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(_) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("router_in_code: {error}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_example_program_gets_the_upstream_answer() {
        assert_eq!(run().await.unwrap(), "Hello from the upstream.");
    }

    #[tokio::test]
    async fn the_alias_is_rewritten_and_the_router_stops_gracefully() {
        let upstream = MockUpstream::start(Script::ok().texts(["ok"])).await.unwrap();
        let router = RunningRouter::start(&config_for(&upstream.v1_url()).unwrap()).await.unwrap();
        let addr = router.addr;
        assert_eq!(ask(addr, "fast", "hi").await.unwrap(), "ok");
        let sent = upstream.requests_for("/v1/chat/completions");
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].model().as_deref(), Some("gpt-4o-mini"), "alias resolved upstream");

        router.shutdown().await.unwrap();
        assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "the port is closed");
        upstream.shutdown().await;
    }

    #[tokio::test]
    async fn upstream_failures_and_unknown_models_come_back_as_openai_errors() {
        let upstream = MockUpstream::start(Script::ok()).await.unwrap();
        let router = RunningRouter::start(&config_for(&upstream.v1_url()).unwrap()).await.unwrap();

        let body =
            json!({"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]});
        let (status, answer) = post(router.addr, "/v1/chat/completions", &body).await.unwrap();
        assert_eq!(status, 404);
        assert_eq!(answer["error"]["code"], "model_not_found", "{answer}");

        upstream.set_script(Script::error(500, "upstream exploded"));
        let err = ask(router.addr, "gpt-4o-mini", "x").await.unwrap_err().to_string();
        assert!(err.starts_with("router answered 5"), "{err}");
        router.shutdown().await.unwrap();
        upstream.shutdown().await;
    }

    #[test]
    fn a_bad_configuration_names_the_key() {
        let err = Config::from_yaml_str("backends: [{ name: m, type: openai }]").unwrap_err();
        assert!(err.to_string().contains("backends[0].url"), "{err}");
        let config = config_for("http://127.0.0.1:9/v1").unwrap();
        assert_eq!(config.backends[0].models, ["gpt-4o-mini"]);
    }
}
