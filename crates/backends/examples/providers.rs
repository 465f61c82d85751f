// cargo run -p switchyard-backends --example providers
//! An OpenAI-format chat request answered by an Anthropic backend, streamed back as
//! OpenAI chunks; then the inbound direction the router offers on `/v1/messages`: an
//! Anthropic request translated for an OpenAI-format backend and the answer
//! translated back. The "Anthropic API" is the scriptable mock from test-support, so
//! the program runs offline.
#![allow(clippy::print_stdout, reason = "an example prints what happens")]

use bytes::Bytes;
use futures_util::StreamExt;
use switchyard_backends::{
    AnthropicBackend, AnthropicSettings, ClientFactory, chat_completion_to_message,
    messages_to_chat_request,
};
use switchyard_core::{Backend, BackendRequest, Endpoint, RequestMeta, ResponseBody};
use switchyard_test_support::{MockUpstream, Script};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // 1. OpenAI in, Anthropic upstream, OpenAI out.
    let anthropic = MockUpstream::start(Script::ok().anthropic().texts([
        "Hello",
        " from",
        " the",
        " Messages",
        " API",
    ]))
    .await?;
    let settings = AnthropicSettings {
        name: "claude".into(),
        url: anthropic.url(),
        api_key: Some("sk-ant-example".into()),
        ..AnthropicSettings::default()
    };
    let backend = AnthropicBackend::new(&settings, &ClientFactory::default())?;
    let body = Bytes::from_static(
        br#"{"model":"claude-sonnet-4","stream":true,"stream_options":{"include_usage":true},
            "messages":[{"role":"system","content":"be brief"},{"role":"user","content":"hi"}]}"#,
    );
    let request = BackendRequest {
        endpoint: Endpoint::ChatCompletions,
        meta: RequestMeta::parse(Endpoint::ChatCompletions, &body)?,
        body,
        upstream_model: None,
        headers: http::HeaderMap::new(),
    };
    let response = backend.send(request).await?;
    if let Some(sent) = anthropic.last_request() {
        println!("POST {} with x-api-key: {}", sent.path, sent.header("x-api-key").is_some());
        println!("upstream body: {}\n", String::from_utf8_lossy(&sent.body));
    }
    println!("status {}; the client receives:", response.status);
    if let ResponseBody::Stream(mut stream) = response.body {
        while let Some(chunk) = stream.next().await {
            print!("{}", String::from_utf8_lossy(&chunk?));
        }
    }

    // 2. Anthropic in, OpenAI-format backend, Anthropic out.
    let chat = messages_to_chat_request(
        br#"{"model":"claude-sonnet-4","max_tokens":256,"system":"be brief",
             "messages":[{"role":"user","content":"What is 6 x 7?"}]}"#,
    )?;
    println!("\n/v1/messages request for an OpenAI backend: {}", String::from_utf8_lossy(&chat));
    let completion = br#"{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"llama-3",
        "choices":[{"index":0,"message":{"role":"assistant","content":"42"},"finish_reason":"stop"}],
        "usage":{"prompt_tokens":20,"completion_tokens":1,"total_tokens":21}}"#;
    let message = chat_completion_to_message(completion)?;
    println!("its answer as an Anthropic message: {}", String::from_utf8_lossy(&message));
    Ok(())
}
