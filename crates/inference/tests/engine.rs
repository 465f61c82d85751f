//! The engine and the backend on a tiny random-weight llama written by the test: no
//! download needed.
#![allow(clippy::unwrap_used, clippy::print_stderr)] // reason: test helpers outside #[test] fns

mod util;

use std::time::{Duration, Instant};

use bytes::Bytes;
use candle_core::quantized::GgmlDType;
use futures_util::StreamExt;
use serde_json::{Value, json};
use switchyard_core::{Backend, BackendRequest, Endpoint, ErrorCode, RequestMeta, ResponseBody};
use switchyard_inference::{
    Engine, Error, Event, FinishReason, GenerateRequest, InferenceSettings, Input, LocalBackend,
    SamplingParams,
};
use util::{FIRST_WORD, write_model, write_tiny_model};

fn settings(path: &std::path::Path) -> InferenceSettings {
    InferenceSettings { threads: 2, ..InferenceSettings::for_model(path) }
}

fn tiny_engine(dir: &tempfile::TempDir) -> Engine {
    let path = write_tiny_model(dir.path(), GgmlDType::Q8_0, 42);
    Engine::load(&settings(&path)).unwrap()
}

fn request(text: &str, max_tokens: usize) -> GenerateRequest {
    GenerateRequest {
        input: Input::Text(text.into()),
        max_tokens: Some(max_tokens),
        sampling: SamplingParams::greedy(),
        stop: Vec::new(),
        ignore_eos: true,
    }
}

#[test]
fn loads_the_tiny_model_and_tokenizes_to_known_ids() {
    let dir = tempfile::tempdir().unwrap();
    let engine = tiny_engine(&dir);
    let info = engine.info();
    assert_eq!(info.architecture, "llama");
    assert_eq!(info.id, "tiny");
    assert_eq!(info.vocab_size, 3 + 256 + util::WORDS.len());
    assert_eq!(info.layers, util::LAYERS);
    assert!(!info.has_chat_template);
    assert!(info.weight_types.contains("Q8_0"), "{}", info.weight_types);
    let t = engine.tokenizer();
    // BOS, then "▁the ▁cat ▁sat", each reached by merging pairs in score order.
    let ids = t.encode("the cat sat", true).unwrap();
    assert_eq!(ids, vec![1, FIRST_WORD + 2, FIRST_WORD + 5, FIRST_WORD + 11]);
    // "▁that!": "▁t", then "▁th", then "at"; "!" is not a piece, so its byte token.
    let ids = t.encode("that!", false).unwrap();
    assert_eq!(ids, vec![FIRST_WORD + 1, FIRST_WORD + 7, 3 + 0x21]);
    assert_eq!(t.decode(&ids), "that!");
    assert_eq!(t.decode(&[1, FIRST_WORD + 2, FIRST_WORD + 5, 2]), "the cat");
}

#[test]
fn generation_runs_to_max_tokens_with_usage() {
    let dir = tempfile::tempdir().unwrap();
    let engine = tiny_engine(&dir);
    let out = engine.generate(request("the cat sat on the mat", 12)).unwrap();
    assert_eq!(out.finished.finish_reason, FinishReason::Length);
    assert_eq!(out.finished.usage.completion_tokens, 12);
    assert_eq!(out.finished.usage.prompt_tokens, 7);
    // Greedy decoding is deterministic.
    let again = engine.generate(request("the cat sat on the mat", 12)).unwrap();
    assert_eq!(out.text, again.text);
    assert!(!out.text.is_empty());
}

#[test]
fn stop_sequence_ends_generation_and_is_never_emitted() {
    let dir = tempfile::tempdir().unwrap();
    let engine = tiny_engine(&dir);
    let full = engine.generate(request("a dog ran far", 40)).unwrap().text;
    let chars: Vec<char> = full.chars().collect();
    assert!(chars.len() >= 6, "{full:?}");
    // A stop sequence taken from the middle of the greedy output.
    let stop: String = chars[chars.len() / 2..chars.len() / 2 + 2].iter().collect();
    let expected = &full[..full.find(&stop).unwrap()];
    let mut req = request("a dog ran far", 40);
    req.stop = vec![stop.clone(), "never-produced".into()];
    let out = engine.generate(req).unwrap();
    assert_eq!(out.text, expected);
    assert!(!out.text.contains(&stop));
    assert_eq!(out.finished.finish_reason, FinishReason::Stop);
}

#[test]
fn dropping_the_receiver_cancels_generation() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_tiny_model(dir.path(), GgmlDType::Q8_0, 42);
    let engine =
        Engine::load(&InferenceSettings { max_concurrent: 1, max_queue: 0, ..settings(&path) })
            .unwrap();
    let limit = 4000;
    let mut generation = engine.submit(request("the", limit)).unwrap();
    let mut seen = 0;
    while seen == 0 {
        match generation.blocking_next() {
            Some(Event::Text(_)) => seen += 1,
            Some(Event::Started { .. }) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    drop(generation);
    let deadline = Instant::now() + Duration::from_secs(20);
    while engine.stats().running > 0 {
        assert!(Instant::now() < deadline, "generation did not stop");
        std::thread::sleep(Duration::from_millis(5));
    }
    let generated = engine.stats().tokens_generated;
    assert!(generated < limit as u64, "all {generated} tokens were generated");
    // The slot is free again.
    let out = engine.generate(request("the", 3)).unwrap();
    assert_eq!(out.finished.usage.completion_tokens, 3);
}

#[test]
fn a_full_queue_refuses_with_overloaded_and_a_retry_hint() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_tiny_model(dir.path(), GgmlDType::Q8_0, 42);
    let engine =
        Engine::load(&InferenceSettings { max_concurrent: 1, max_queue: 1, ..settings(&path) })
            .unwrap();
    let running = engine.submit(request("the", 4000)).unwrap();
    let queued = engine.submit(request("the", 4000)).unwrap();
    let err = engine.submit(request("the", 4)).unwrap_err();
    let Error::Overloaded { retry_after, .. } = &err else { panic!("{err:?}") };
    assert!(*retry_after >= Duration::from_secs(1));
    let backend_err = switchyard_core::BackendError::from(err);
    assert_eq!(backend_err.code, ErrorCode::Overloaded);
    assert!(backend_err.retry_after.is_some());
    drop((running, queued));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match engine.submit(request("the", 2)) {
            Ok(mut g) => {
                while let Some(e) = g.blocking_next() {
                    if let Event::Done(f) = e {
                        assert_eq!(f.usage.completion_tokens, 2);
                    }
                }
                break;
            }
            Err(Error::Overloaded { .. }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("{e}"),
        }
    }
}

#[test]
fn prompt_longer_than_the_context_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_tiny_model(dir.path(), GgmlDType::Q8_0, 42);
    let engine = Engine::load(&InferenceSettings { context_size: 16, ..settings(&path) }).unwrap();
    let err = engine.generate(request(&"the cat ".repeat(10), 4)).unwrap_err();
    assert!(matches!(err, Error::ContextLengthExceeded { prompt: 22, context: 16 }), "{err}");
    assert_eq!(switchyard_core::Classify::code(&err), ErrorCode::ContextLengthExceeded);
    // A prompt that fits gets at most the room that is left.
    let out = engine.generate(request("the cat", 100)).unwrap();
    assert_eq!(out.finished.usage.completion_tokens, 16 - 3);
    assert_eq!(out.finished.finish_reason, FinishReason::Length);
}

#[test]
fn q4_1_weights_are_requantised_unless_disabled() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_tiny_model(dir.path(), GgmlDType::Q4_1, 7);
    let requant = Engine::load(&settings(&path)).unwrap();
    assert!(requant.info().weight_types.starts_with("Q8_0"), "{}", requant.info().weight_types);
    let raw = Engine::load(&InferenceSettings { requantize: false, ..settings(&path) }).unwrap();
    assert!(raw.info().weight_types.starts_with("Q4_1"), "{}", raw.info().weight_types);
    for engine in [&requant, &raw] {
        let out = engine.generate(request("the cat", 5)).unwrap();
        assert_eq!(out.finished.usage.completion_tokens, 5);
    }
}

#[test]
fn unsupported_architecture_is_named_in_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_model(dir.path(), GgmlDType::Q8_0, 1, "mamba");
    let Err(err) = Engine::load(&settings(&path)) else { panic!("mamba loaded") };
    assert!(matches!(&err, Error::UnsupportedArchitecture(a) if a == "mamba"), "{err}");
    assert!(err.to_string().contains("mamba"));
    let Err(err) = Engine::load(&settings(&dir.path().join("missing.gguf"))) else { panic!() };
    assert!(err.to_string().contains(switchyard_inference::FETCH_COMMAND), "{err}");
}

fn backend_request(endpoint: Endpoint, body: Value) -> BackendRequest {
    let body = Bytes::from(serde_json::to_vec(&body).unwrap());
    let meta = RequestMeta::parse(endpoint, &body).unwrap_or_default();
    BackendRequest { endpoint, body, meta, upstream_model: None, headers: http::HeaderMap::new() }
}

async fn collect_sse(body: ResponseBody) -> Vec<String> {
    let ResponseBody::Stream(mut stream) = body else { panic!("expected a stream") };
    let mut raw = Vec::new();
    while let Some(chunk) = stream.next().await {
        raw.extend_from_slice(&chunk.unwrap());
    }
    let mut parser = switchyard_core::sse::SseParser::new();
    parser.feed(&raw).into_iter().map(|e| e.data).collect()
}

fn full_json(body: ResponseBody) -> Value {
    let ResponseBody::Full(bytes) = body else { panic!("expected a whole body") };
    serde_json::from_slice(&bytes).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_backend_speaks_openai_chat_and_completions() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_tiny_model(dir.path(), GgmlDType::Q8_0, 42);
    let backend =
        tokio::task::spawn_blocking(move || LocalBackend::load("local", &settings(&path)))
            .await
            .unwrap()
            .unwrap();
    assert_eq!(backend.id().as_str(), "local");
    assert!(backend.supports(Endpoint::ChatCompletions) && backend.supports(Endpoint::Completions));
    assert!(
        !backend.supports(Endpoint::Embeddings) && !backend.supports(Endpoint::AnthropicMessages)
    );
    backend.probe().await.unwrap();
    let models = backend.models().await.unwrap();
    assert_eq!(models[0].id, "tiny");
    assert_eq!(models[0].owned_by, "local");

    let chat = json!({"model": "tiny", "messages": [{"role": "user", "content": "the cat"}],
                      "max_tokens": 6, "temperature": 0});
    let resp =
        backend.send(backend_request(Endpoint::ChatCompletions, chat.clone())).await.unwrap();
    assert_eq!(resp.headers["content-type"], "application/json");
    let whole = full_json(resp.body);
    assert_eq!(whole["object"], "chat.completion");
    assert_eq!(whole["model"], "tiny");
    assert_eq!(whole["choices"][0]["message"]["role"], "assistant");
    let text = whole["choices"][0]["message"]["content"].as_str().unwrap().to_owned();
    let usage = &whole["usage"];
    assert_eq!(
        usage["total_tokens"].as_u64().unwrap(),
        usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap()
    );
    let reason = whole["choices"][0]["finish_reason"].as_str().unwrap().to_owned();
    assert!(reason == "stop" || reason == "length");

    let mut streamed = chat.clone();
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let resp = backend.send(backend_request(Endpoint::ChatCompletions, streamed)).await.unwrap();
    assert_eq!(resp.headers["content-type"], "text/event-stream");
    let events = collect_sse(resp.body).await;
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> =
        events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    assert!(chunks.iter().all(|c| c["object"] == "chat.completion.chunk"));
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let joined: String = chunks
        .iter()
        .filter_map(|c| c["choices"].get(0)?["delta"]["content"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(joined, text, "streamed and whole answers differ");
    let finish = &chunks[chunks.len() - 2];
    assert_eq!(finish["choices"][0]["finish_reason"], reason.as_str());
    let last = &chunks[chunks.len() - 1];
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"], whole["usage"]);

    let completion = json!({"model": "tiny", "prompt": "the cat", "max_tokens": 4,
                            "temperature": 0, "stream": true});
    let resp = backend.send(backend_request(Endpoint::Completions, completion)).await.unwrap();
    let events = collect_sse(resp.body).await;
    assert_eq!(events.last().unwrap(), "[DONE]");
    let first: Value = serde_json::from_str(&events[0]).unwrap();
    assert_eq!(first["object"], "text_completion");
    let completion =
        json!({"model": "tiny", "prompt": ["the cat"], "max_tokens": 4, "temperature": 0});
    let whole = full_json(
        backend.send(backend_request(Endpoint::Completions, completion)).await.unwrap().body,
    );
    assert_eq!(whole["object"], "text_completion");
    assert_eq!(whole["usage"]["completion_tokens"], 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_tiny_model(dir.path(), GgmlDType::Q8_0, 42);
    let backend = tokio::task::spawn_blocking(move || {
        LocalBackend::load("local", &InferenceSettings { context_size: 32, ..settings(&path) })
    })
    .await
    .unwrap()
    .unwrap();
    let cases = [
        (
            Endpoint::ChatCompletions,
            json!({"model": "tiny", "messages": "nope"}),
            ErrorCode::InvalidRequest,
            "invalid chat completion request",
        ),
        (
            Endpoint::ChatCompletions,
            json!({"model": "tiny", "messages": []}),
            ErrorCode::InvalidRequest,
            "must not be empty",
        ),
        (
            Endpoint::ChatCompletions,
            json!({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "temperature": 5}),
            ErrorCode::InvalidRequest,
            "temperature",
        ),
        (
            Endpoint::ChatCompletions,
            json!({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "n": 3}),
            ErrorCode::InvalidRequest,
            "one choice",
        ),
        (
            Endpoint::Completions,
            json!({"model": "tiny", "prompt": ["a", "b"]}),
            ErrorCode::InvalidRequest,
            "exactly one prompt",
        ),
        (
            Endpoint::Completions,
            json!({"model": "tiny", "prompt": [999999]}),
            ErrorCode::InvalidRequest,
            "outside the vocabulary",
        ),
        (
            Endpoint::Completions,
            json!({"model": "tiny", "prompt": "the cat ".repeat(40)}),
            ErrorCode::ContextLengthExceeded,
            "context window",
        ),
        (
            Endpoint::Embeddings,
            json!({"model": "tiny", "input": "x"}),
            ErrorCode::Unsupported,
            "not supported",
        ),
    ];
    for (endpoint, body, code, text) in cases {
        let err = backend.send(backend_request(endpoint, body.clone())).await.unwrap_err();
        assert_eq!(err.code, code, "{body}: {err}");
        assert!(err.message.contains(text), "{body}: {}", err.message);
    }
}

#[test]
fn qwen2_with_attention_biases_loads_and_generates() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_model(dir.path(), GgmlDType::Q8_0, 42, "qwen2");
    let qwen = Engine::load(&settings(&path)).unwrap();
    assert_eq!(qwen.info().architecture, "qwen2");
    let out = qwen.generate(request("the cat", 6)).unwrap();
    assert_eq!(out.finished.usage.completion_tokens, 6);
    // The tokenizer does not depend on the architecture.
    let llama_dir = tempfile::tempdir().unwrap();
    let llama =
        Engine::load(&settings(&write_tiny_model(llama_dir.path(), GgmlDType::Q8_0, 42))).unwrap();
    let ids = |e: &Engine, text: &str| e.prompt_tokens(&Input::Text(text.into())).unwrap();
    assert_eq!(ids(&qwen, "the cat"), ids(&llama, "the cat"));
}

/// Continuous batching on the tiny model: sequences of different prompt lengths that
/// join a running one at different steps produce exactly their solo greedy output.
#[test]
fn sequences_decoded_together_match_their_solo_output() {
    let dir = tempfile::tempdir().unwrap();
    let engine = tiny_engine(&dir);
    let prompts = ["the cat sat on the mat", "a dog", "that", "the dog ran far and the cat sat"];
    let solo: Vec<String> =
        prompts.iter().map(|p| engine.generate(request(p, 200)).unwrap().text).collect();
    let before = engine.stats();
    let mut running = Vec::new();
    for p in prompts {
        let mut generation = engine.submit(request(p, 200)).unwrap();
        let mut text = String::new();
        // Wait for its first text, so the next one joins a running batch.
        loop {
            match generation.blocking_next().unwrap() {
                Event::Text(t) => {
                    text.push_str(&t);
                    break;
                }
                Event::Started { .. } => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        running.push((generation, text));
    }
    for ((mut generation, mut text), want) in running.into_iter().zip(&solo) {
        loop {
            match generation.blocking_next().unwrap() {
                Event::Text(t) => text.push_str(&t),
                Event::Done(_) => break,
                Event::Started { .. } => {}
                Event::Error(e) => panic!("{e}"),
            }
        }
        assert_eq!(&text, want);
    }
    let after = engine.stats();
    assert!(
        after.sequence_steps - before.sequence_steps > after.steps - before.steps,
        "no step was shared: {before:?} -> {after:?}"
    );
}
