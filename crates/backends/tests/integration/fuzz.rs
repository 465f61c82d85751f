//! No input makes a translation function or the SSE parser panic, and every output
//! is well formed: arbitrary JSON (biased toward the fields translation reads),
//! mutated fixtures, arbitrary bytes and chunkings; plus the saved corpus in
//! `tests/corpus`, replayed on every run.

use std::path::Path;

use bytes::BytesMut;
use http::StatusCode;
use proptest::prelude::*;
use serde_json::{Map, Value};
use switchyard_backends::{
    AnthropicToChatStream, ChatToMessagesStream, ChunkOptions, GeminiToChatStream,
    MessagesStreamOptions, anthropic_error_to_openai, anthropic_to_chat_completion,
    chat_completion_to_message, chat_error_to_messages, chat_to_anthropic, chat_to_gemini,
    estimate_message_tokens, gemini_error_to_openai, gemini_to_chat_completion,
    messages_to_chat_request,
};
use switchyard_core::sse::SseParser;
use switchyard_test_support::strategies;

use crate::util::{Translator, fixtures, parse_events};

const KEYS: &[&str] = &[
    "type",
    "role",
    "content",
    "messages",
    "model",
    "system",
    "text",
    "tool_calls",
    "tool_call_id",
    "id",
    "function",
    "name",
    "arguments",
    "tools",
    "tool_choice",
    "parameters",
    "input_schema",
    "input",
    "image_url",
    "url",
    "source",
    "media_type",
    "data",
    "stream",
    "stream_options",
    "include_usage",
    "max_tokens",
    "max_completion_tokens",
    "stop",
    "stop_sequences",
    "temperature",
    "top_p",
    "top_k",
    "n",
    "user",
    "metadata",
    "user_id",
    "response_format",
    "json_schema",
    "schema",
    "properties",
    "items",
    "choices",
    "delta",
    "finish_reason",
    "usage",
    "prompt_tokens",
    "completion_tokens",
    "prompt_tokens_details",
    "cached_tokens",
    "index",
    "message",
    "candidates",
    "parts",
    "functionCall",
    "functionResponse",
    "args",
    "finishReason",
    "usageMetadata",
    "promptTokenCount",
    "candidatesTokenCount",
    "thoughtsTokenCount",
    "error",
    "status",
    "code",
    "details",
    "reason",
    "content_block",
    "partial_json",
    "stop_reason",
    "tool_use_id",
    "is_error",
    "file",
    "file_data",
    "thought",
    "responseId",
    "modelVersion",
    "promptFeedback",
    "blockReason",
    "disable_parallel_tool_use",
    "parallel_tool_calls",
    "cache_control",
    "input_tokens",
    "output_tokens",
    "cache_read_input_tokens",
    "logprobs",
    "input_audio",
    "format",
    "refusal",
    "thinking",
];

const STRINGS: &[&str] = &[
    "user",
    "assistant",
    "system",
    "developer",
    "tool",
    "function",
    "model",
    "text",
    "image",
    "image_url",
    "document",
    "file",
    "input_audio",
    "tool_use",
    "tool_result",
    "thinking",
    "text_delta",
    "input_json_delta",
    "thinking_delta",
    "message_start",
    "content_block_start",
    "content_block_delta",
    "content_block_stop",
    "message_delta",
    "message_stop",
    "ping",
    "error",
    "end_turn",
    "max_tokens",
    "tool_use",
    "STOP",
    "MAX_TOKENS",
    "SAFETY",
    "auto",
    "required",
    "none",
    "any",
    "json_object",
    "json_schema",
    "base64",
    "data:image/png;base64,AA",
    "data:,x",
    "data:;base64,",
    "https://example.com/a.png",
    "ftp://x",
    "{}",
    "{\"a\":1}",
    "[1]",
    "",
    "[DONE]",
    "tool_calls",
    "length",
    "overloaded_error",
    "API_KEY_INVALID",
    "custom",
    "bash_20250124",
];

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        1 => Just(Value::Null),
        1 => any::<bool>().prop_map(Value::from),
        2 => any::<i64>().prop_map(Value::from),
        1 => any::<u64>().prop_map(Value::from),
        1 => (-1.0e6f64..1.0e6).prop_map(Value::from),
        4 => prop::sample::select(STRINGS).prop_map(Value::from),
        2 => strategies::text().prop_map(Value::from),
    ]
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![5 => prop::sample::select(KEYS).prop_map(str::to_owned), 1 => "[a-zA-Z_]{0,8}"]
}

/// Arbitrary JSON whose objects mostly use the field names translation reads.
pub fn json_value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(6, 96, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 0..7)
                .prop_map(|fields| Value::Object(fields.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

fn count_nodes(value: &Value) -> usize {
    1 + match value {
        Value::Array(items) => items.iter().map(count_nodes).sum(),
        Value::Object(map) => map.values().map(count_nodes).sum(),
        _ => 0,
    }
}

/// A fixture's input (or one of its stream events) with one subtree replaced.
fn mutated_fixture() -> impl Strategy<Value = Value> {
    (0..fixtures().len(), any::<prop::sample::Index>(), json_value()).prop_map(
        |(i, at, replacement)| {
            let mut input = fixtures()[i].input.clone();
            let mut n = at.index(count_nodes(&input));
            replace_nth(&mut input, &mut n, replacement);
            input
        },
    )
}

/// Replace the `n`th node of `value` (pre-order) with `replacement`.
fn replace_nth(value: &mut Value, n: &mut usize, replacement: Value) -> bool {
    if *n == 0 {
        *value = replacement;
        return true;
    }
    *n -= 1;
    let children: Vec<&mut Value> = match value {
        Value::Array(items) => items.iter_mut().collect(),
        Value::Object(map) => map.values_mut().collect(),
        _ => return false,
    };
    for child in children {
        if replace_nth(child, n, replacement.clone()) {
            return true;
        }
    }
    false
}

fn assert_json(what: &str, bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap_or_else(|e| {
        panic!("{what} produced invalid JSON ({e}): {}", String::from_utf8_lossy(bytes))
    })
}

fn options() -> ChunkOptions {
    ChunkOptions { id: "chatcmpl-x".into(), model: "m".into(), created: 1, include_usage: true }
}

/// Run a stream translator over `bytes` in `pieces`; its output must be whole SSE
/// events with JSON data, whatever the input.
fn stream_through(pieces: &[&[u8]]) {
    let translators = [
        Translator::Anthropic(AnthropicToChatStream::new(options())),
        Translator::Gemini(GeminiToChatStream::new(options())),
        Translator::Messages(ChatToMessagesStream::new(MessagesStreamOptions::default())),
    ];
    for mut translator in translators {
        let mut out = BytesMut::new();
        let mut failed = false;
        for piece in pieces {
            if translator.push(piece, &mut out).is_err() {
                failed = true;
                break;
            }
        }
        if !failed {
            let _ = translator.finish(&mut out);
        }
        parse_events(&out);
    }
}

/// Every translation function over one input, as a body and as stream data.
pub fn exercise(bytes: &[u8]) {
    if let Ok(out) = chat_to_anthropic(bytes, None, 16) {
        assert!(assert_json("chat_to_anthropic", &out).is_object());
    }
    let _ = chat_to_anthropic(bytes, Some("m"), 0);
    if let Ok(out) = chat_to_gemini(bytes, Some("models/x")) {
        assert!(assert_json("chat_to_gemini", &out.body).is_object());
        assert!(!out.model.starts_with("models/"));
    }
    if let Ok(out) = messages_to_chat_request(bytes) {
        assert!(assert_json("messages_to_chat_request", &out).is_object());
        // The translated request is a chat request for the other translators too.
        let _ = chat_to_anthropic(&out, None, 16);
        let _ = chat_to_gemini(&out, None);
    }
    if let Ok(out) = anthropic_to_chat_completion(bytes, 1) {
        let out = assert_json("anthropic_to_chat_completion", &out);
        assert!(out["choices"].is_array());
        let _ = chat_completion_to_message(&serde_json::to_vec(&out).unwrap());
    }
    if let Ok(out) = gemini_to_chat_completion(bytes, &options()) {
        assert!(assert_json("gemini_to_chat_completion", &out)["choices"].is_array());
    }
    if let Ok(out) = chat_completion_to_message(bytes) {
        assert_eq!(assert_json("chat_completion_to_message", &out)["type"], "message");
    }
    for status in [400u16, 401, 404, 429, 500, 503, 529] {
        let status = StatusCode::from_u16(status).unwrap();
        let (s, out) = anthropic_error_to_openai(status, bytes);
        assert!(s.is_client_error() || s.is_server_error());
        assert!(assert_json("anthropic_error_to_openai", &out)["error"]["message"].is_string());
        let (_, out) = gemini_error_to_openai(status, bytes);
        assert!(assert_json("gemini_error_to_openai", &out)["error"]["message"].is_string());
        let out = chat_error_to_messages(status, bytes);
        assert_eq!(assert_json("chat_error_to_messages", &out)["type"], "error");
    }
    if let Ok(n) = estimate_message_tokens(bytes) {
        assert!(n >= 1);
    }
    // As the data of one event (under several event names) and as a raw stream.
    let mut framed = Vec::with_capacity(bytes.len() + 32);
    framed.extend_from_slice(b"data: ");
    framed.extend_from_slice(bytes);
    framed.extend_from_slice(b"\n\n");
    for input in [&framed[..], bytes] {
        let halves = input.split_at(input.len() / 2);
        stream_through(&[input]);
        stream_through(&[halves.0, halves.1]);
    }
}

/// A sequence of events through every stream translator.
fn exercise_events(events: &[(Option<&str>, Value)]) {
    let mut stream = Vec::new();
    for (name, data) in events {
        if let Some(name) = name {
            stream.extend_from_slice(format!("event: {name}\n").as_bytes());
        }
        stream.extend_from_slice(format!("data: {data}\n\n").as_bytes());
    }
    stream_through(&[&stream[..]]);
}

#[test]
fn the_saved_corpus_replays_without_panics() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        exercise(&bytes);
        count += 1;
    }
    assert!(count >= 10, "corpus has {count} entries");
    // Fixture inputs are corpus entries too, and so are their events in sequence.
    for fixture in fixtures() {
        exercise(&fixture.body());
        if let Value::Array(items) = &fixture.input {
            let events: Vec<(Option<&str>, Value)> = items
                .iter()
                .map(|item| {
                    (
                        item["event"].as_str(),
                        item.get("data").cloned().unwrap_or_else(|| item.clone()),
                    )
                })
                .collect();
            exercise_events(&events);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(384))]

    #[test]
    fn arbitrary_json_never_panics(value in json_value()) {
        exercise(value.to_string().as_bytes());
    }

    #[test]
    fn mutated_fixtures_never_panic(value in mutated_fixture()) {
        exercise(value.to_string().as_bytes());
        if let Value::Array(items) = &value {
            let events: Vec<(Option<&str>, Value)> =
                items.iter().map(|item| (item["event"].as_str(), item["data"].clone())).collect();
            exercise_events(&events);
        }
    }

    #[test]
    fn arbitrary_event_sequences_never_panic(
        events in prop::collection::vec((prop::option::of(prop::sample::select(STRINGS)), json_value()), 0..10)
    ) {
        exercise_events(&events);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        exercise(&bytes);
    }

    #[test]
    fn the_sse_parser_is_split_independent(
        (bytes, pieces) in prop::collection::vec(any::<u8>(), 0..400)
            .prop_flat_map(|b| (Just(b.clone()), strategies::chunkings(b)))
    ) {
        let mut whole = SseParser::new();
        let expected = whole.feed(&bytes);
        let truncated = whole.finish();
        let mut split = SseParser::new();
        let mut events = Vec::new();
        for piece in &pieces {
            split.feed_into(piece, &mut events);
        }
        prop_assert_eq!(events, expected);
        prop_assert_eq!(split.finish(), truncated);
    }
}

#[test]
fn mutation_replaces_the_nth_node_in_pre_order() {
    let mut value: Value = serde_json::json!({"a": [1, 2], "b": 3});
    assert_eq!(count_nodes(&value), 5);
    let mut n = 3;
    assert!(replace_nth(&mut value, &mut n, Value::Null));
    assert_eq!(value, serde_json::json!({"a": [1, null], "b": 3}));
}
