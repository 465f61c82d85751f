//! Data-driven translation tests: every fixture under `tests/fixtures`, checked field
//! by field; stream fixtures also under random chunk splits.

use proptest::prelude::*;
use serde_json::{Value, json};
use switchyard_backends::{
    anthropic_error_to_openai, anthropic_to_chat_completion, chat_completion_to_message,
    chat_error_to_messages, chat_to_anthropic, chat_to_gemini, gemini_error_to_openai,
    gemini_to_chat_completion, messages_to_chat_request,
};
use switchyard_test_support::strategies;

use crate::util::{Fixture, assert_same, fixtures, run_stream};

fn json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(bytes)))
}

/// Run one fixture (streams unsplit) and return its actual output.
fn run(fixture: &Fixture) -> Value {
    let body = fixture.body();
    let o = &fixture.options;
    match fixture.kind.as_str() {
        "chat_to_anthropic" => {
            let max = o["default_max_tokens"].as_u64().unwrap_or(4096) as u32;
            json(&chat_to_anthropic(&body, o["model"].as_str(), max).unwrap())
        }
        "anthropic_to_chat" => {
            json(&anthropic_to_chat_completion(&body, o["created"].as_u64().unwrap()).unwrap())
        }
        "anthropic_error" => {
            let (status, body) = anthropic_error_to_openai(fixture.status(), &body);
            json!({"status": status.as_u16(), "body": json(&body)})
        }
        "chat_to_gemini" => {
            let out = chat_to_gemini(&body, o["model"].as_str()).unwrap();
            json!({"model": out.model, "stream": out.stream, "body": json(&out.body)})
        }
        "gemini_to_chat" => {
            json(&gemini_to_chat_completion(&body, &fixture.chunk_options()).unwrap())
        }
        "gemini_error" => {
            let (status, body) = gemini_error_to_openai(fixture.status(), &body);
            json!({"status": status.as_u16(), "body": json(&body)})
        }
        "messages_to_chat" => json(&messages_to_chat_request(&body).unwrap()),
        "chat_to_message" => json(&chat_completion_to_message(&body).unwrap()),
        "chat_error_to_messages" => json(&chat_error_to_messages(fixture.status(), &body)),
        _ if fixture.is_stream() => Value::Array(run_stream(fixture, &[fixture.sse()])),
        other => panic!("{}: unknown kind {other}", fixture.name),
    }
}

#[test]
fn every_fixture_translates_field_by_field() {
    let all = fixtures();
    assert!(all.len() >= 25, "fixtures missing: {}", all.len());
    for fixture in all {
        assert_same(&fixture.name, &fixture.expected, &run(fixture));
    }
}

#[test]
fn fixtures_cover_every_direction() {
    let kinds: std::collections::BTreeSet<&str> =
        fixtures().iter().map(|f| f.kind.as_str()).collect();
    for kind in [
        "chat_to_anthropic",
        "anthropic_to_chat",
        "anthropic_stream",
        "anthropic_error",
        "chat_to_gemini",
        "gemini_to_chat",
        "gemini_stream",
        "gemini_error",
        "messages_to_chat",
        "chat_to_message",
        "chat_stream_to_messages",
        "chat_error_to_messages",
    ] {
        assert!(kinds.contains(kind), "no fixture of kind {kind}");
    }
}

#[test]
fn streams_fed_byte_by_byte_match() {
    for fixture in fixtures().iter().filter(|f| f.is_stream()) {
        let bytes = fixture.sse();
        let pieces: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_same(&fixture.name, &fixture.expected, &Value::Array(run_stream(fixture, &pieces)));
    }
}

fn split_stream() -> impl Strategy<Value = (usize, Vec<Vec<u8>>)> {
    let streams: Vec<usize> =
        fixtures().iter().enumerate().filter(|(_, f)| f.is_stream()).map(|(i, _)| i).collect();
    prop::sample::select(streams)
        .prop_flat_map(|i| (Just(i), strategies::chunkings(fixtures()[i].sse())))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn streams_translate_the_same_under_any_split((index, pieces) in split_stream()) {
        let fixture = &fixtures()[index];
        let actual = Value::Array(run_stream(fixture, &pieces));
        let differences = crate::util::diff(&fixture.expected, &actual);
        prop_assert!(differences.is_empty(), "{}: {:?}", fixture.name, differences);
    }
}

#[test]
fn the_diff_names_every_differing_field() {
    let differences = crate::util::diff(
        &json!({"a": [1, {"b": 2}], "gone": true}),
        &json!({"a": [1, {"b": 3}], "extra": null}),
    );
    assert_eq!(
        differences,
        [
            "$.a[1].b: got 3, expected 2",
            "$.gone: missing (expected true)",
            "$.extra: unexpected null",
        ]
    );
    // And a corrupted copy of a real fixture is caught.
    let fixture = fixtures().iter().find(|f| f.kind == "anthropic_stream").unwrap();
    let mut expected = fixture.expected.clone();
    expected[1]["data"]["choices"][0]["delta"]["content"] = json!("Hullo");
    let actual = Value::Array(run_stream(fixture, &[fixture.sse()]));
    assert_eq!(crate::util::diff(&expected, &actual).len(), 1);
}
