//! SSE parsing and routing-field extraction: both run on every proxied request.
// cargo bench -p switchyard-core

#![allow(missing_docs)]

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use switchyard_core::sse::{SseBoundary, SseParser};
use switchyard_core::{Endpoint, RequestMeta};

fn stream_bytes(chunks: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..chunks {
        out.extend_from_slice(
            format!(
                "data: {{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\
                 \"model\":\"m\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"tok{i} \"}},\
                 \"finish_reason\":null}}]}}\n\n"
            )
            .as_bytes(),
        );
    }
    out.extend_from_slice(b"data: [DONE]\n\n");
    out
}

fn sse(c: &mut Criterion) {
    let bytes = stream_bytes(100);
    let mut group = c.benchmark_group("sse");
    group.throughput(Throughput::Bytes(bytes.len() as u64));
    group.bench_function("parse_100_events_in_64b_reads", |b| {
        b.iter(|| {
            let mut parser = SseParser::new();
            let mut n = 0;
            for chunk in bytes.chunks(64) {
                n += parser.feed(black_box(chunk)).len();
            }
            n
        })
    });
    group.bench_function("boundary_scan_100_events", |b| {
        b.iter(|| {
            let mut scanner = SseBoundary::new();
            bytes.chunks(64).map(|c| scanner.scan(black_box(c))).sum::<usize>()
        })
    });
    group.finish();
}

fn meta(c: &mut Criterion) {
    let body = br#"{"model":"gpt-4o-mini","messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"Write a haiku about routers and the packets that love them."}],"temperature":0.7,"max_tokens":64,"stream":false}"#;
    c.bench_function("request_meta_parse_chat", |b| {
        b.iter(|| RequestMeta::parse(Endpoint::ChatCompletions, black_box(body)))
    });
    // A long conversation: 40 turns of ~1 KiB each, some with escapes.
    let mut long = String::from(r#"{"model":"gpt-4o-mini","messages":["#);
    for turn in 0..40 {
        let role = if turn % 2 == 0 { "user" } else { "assistant" };
        let text = r#"routers route packets \"quickly\" and\n"#.repeat(25);
        long.push_str(&format!(r#"{{"role":"{role}","content":"{text}"}},"#));
    }
    long.pop();
    long.push_str(r#"],"stream":true}"#);
    assert!(RequestMeta::parse(Endpoint::ChatCompletions, long.as_bytes()).is_ok());
    c.bench_function("request_meta_parse_chat_40_turns", |b| {
        b.iter(|| RequestMeta::parse(Endpoint::ChatCompletions, black_box(long.as_bytes())))
    });
}

criterion_group!(benches, sse, meta);
criterion_main!(benches);
