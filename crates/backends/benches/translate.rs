//! Provider translation: once per request (request and response bodies) and once per
//! streamed event (the stream translators), so the per-event cost is what streaming
//! through an Anthropic or Gemini backend adds over a pass-through relay.
// cargo bench -p switchyard-backends --bench translate

#![allow(missing_docs, clippy::unwrap_used)]

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde_json::json;
use switchyard_backends::{
    AnthropicToChatStream, ChatToMessagesStream, ChunkOptions, GeminiToChatStream,
    MessagesStreamOptions, anthropic_to_chat_completion, chat_to_anthropic, chat_to_gemini,
    messages_to_chat_request,
};

const EVENTS: usize = 200;

/// A chat request of typical agent shape: system prompt, a few turns, a tool call and
/// its result, two tool definitions.
fn chat_request() -> Vec<u8> {
    let tool = |name: &str| {
        json!({"type": "function", "function": {"name": name, "description": "Look something up in the knowledge base",
            "parameters": {"type": "object", "properties": {"query": {"type": "string"}, "limit": {"type": "integer"}},
                           "required": ["query"]}}})
    };
    json!({
        "model": "claude-sonnet-4",
        "stream": true,
        "stream_options": {"include_usage": true},
        "max_tokens": 1024,
        "temperature": 0.3,
        "messages": [
            {"role": "system", "content": "You are a careful assistant. ".repeat(40)},
            {"role": "user", "content": "Find the release notes for version 2.4 and summarise them."},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
                "function": {"name": "search", "arguments": "{\"query\":\"release notes 2.4\",\"limit\":3}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "Version 2.4 adds streaming translation. ".repeat(30)},
            {"role": "assistant", "content": "Version 2.4 adds streaming translation."},
            {"role": "user", "content": "And what changed in 2.5?"},
        ],
        "tools": [tool("search"), tool("fetch")],
        "tool_choice": "auto",
    })
    .to_string()
    .into_bytes()
}

/// The same conversation as an Anthropic Messages request.
fn messages_request() -> Vec<u8> {
    json!({
        "model": "claude-sonnet-4",
        "max_tokens": 1024,
        "stream": true,
        "system": [{"type": "text", "text": "You are a careful assistant. ".repeat(40), "cache_control": {"type": "ephemeral"}}],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Find the release notes for version 2.4."}]},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "search", "input": {"query": "release notes 2.4"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "Version 2.4 adds streaming translation. ".repeat(30)},
                                         {"type": "text", "text": "And what changed in 2.5?"}]},
        ],
        "tools": [{"name": "search", "description": "Look something up", "input_schema": {"type": "object", "properties": {"query": {"type": "string"}}}}],
    })
    .to_string()
    .into_bytes()
}

fn anthropic_stream() -> Vec<u8> {
    let mut out = String::from(
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-sonnet-4\",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}\n\n\
         event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
    );
    for i in 0..EVENTS {
        out.push_str(&format!(
            "event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\"token{i} \"}}}}\n\n"
        ));
    }
    out.push_str(
        "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n\
         event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":200}}\n\n\
         event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
    );
    out.into_bytes()
}

fn gemini_stream() -> Vec<u8> {
    let mut out = String::new();
    for i in 0..EVENTS {
        let finish = if i + 1 == EVENTS { ",\"finishReason\":\"STOP\"" } else { "" };
        out.push_str(&format!(
            "data: {{\"candidates\":[{{\"content\":{{\"parts\":[{{\"text\":\"token{i} \"}}],\"role\":\"model\"}}{finish},\"index\":0}}],\
             \"usageMetadata\":{{\"promptTokenCount\":8,\"totalTokenCount\":8}},\"modelVersion\":\"gemini-2.0-flash\",\"responseId\":\"r1\"}}\r\n\r\n"
        ));
    }
    out.into_bytes()
}

fn openai_stream() -> Vec<u8> {
    let mut out = String::new();
    for i in 0..EVENTS {
        out.push_str(&format!(
            "data: {{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\
             \"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"token{i} \"}},\"finish_reason\":null}}]}}\n\n"
        ));
    }
    out.push_str("data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n");
    out.push_str("data: [DONE]\n\n");
    out.into_bytes()
}

fn options() -> ChunkOptions {
    ChunkOptions { id: "chatcmpl-1".into(), model: "m".into(), created: 1, include_usage: true }
}

fn requests(c: &mut Criterion) {
    let chat = chat_request();
    let messages = messages_request();
    let message =
        json!({"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4",
        "content": [{"type": "text", "text": "Version 2.5 adds Gemini support. ".repeat(20)}],
        "stop_reason": "end_turn", "usage": {"input_tokens": 900, "output_tokens": 120}})
        .to_string();
    let mut group = c.benchmark_group("request");
    group.bench_function("chat_to_anthropic", |b| {
        b.iter(|| chat_to_anthropic(black_box(&chat), None, 4096).unwrap())
    });
    group.bench_function("chat_to_gemini", |b| {
        b.iter(|| chat_to_gemini(black_box(&chat), None).unwrap())
    });
    group.bench_function("messages_to_chat_request", |b| {
        b.iter(|| messages_to_chat_request(black_box(&messages)).unwrap())
    });
    group.bench_function("anthropic_to_chat_completion", |b| {
        b.iter(|| anthropic_to_chat_completion(black_box(message.as_bytes()), 1).unwrap())
    });
    group.finish();
}

fn streams(c: &mut Criterion) {
    let mut group = c.benchmark_group("stream");
    group.throughput(Throughput::Elements(EVENTS as u64));
    let anthropic = anthropic_stream();
    group.bench_function("anthropic_to_chat_200_events_in_512b_reads", |b| {
        b.iter(|| {
            let mut translator = AnthropicToChatStream::new(options());
            let mut out = BytesMut::with_capacity(256);
            for chunk in anthropic.chunks(512) {
                translator.push(black_box(chunk), &mut out).unwrap();
                out.clear();
            }
            translator.finish(&mut out).unwrap();
        })
    });
    let gemini = gemini_stream();
    group.bench_function("gemini_to_chat_200_events_in_512b_reads", |b| {
        b.iter(|| {
            let mut translator = GeminiToChatStream::new(options());
            let mut out = BytesMut::with_capacity(256);
            for chunk in gemini.chunks(512) {
                translator.push(black_box(chunk), &mut out).unwrap();
                out.clear();
            }
            translator.finish(&mut out).unwrap();
        })
    });
    let openai = openai_stream();
    group.bench_function("chat_to_messages_200_events_in_512b_reads", |b| {
        b.iter(|| {
            let mut translator = ChatToMessagesStream::new(MessagesStreamOptions::default());
            let mut out = BytesMut::with_capacity(256);
            for chunk in openai.chunks(512) {
                translator.push(black_box(chunk), &mut out).unwrap();
                out.clear();
            }
            translator.finish(&mut out).unwrap();
        })
    });
    group.finish();
}

criterion_group!(benches, requests, streams);
criterion_main!(benches);
