//! Generated streams in both directions, under random chunkings: what the client
//! reassembles equals what the provider sent, and Anthropic event streams follow the
//! documented grammar.

use bytes::BytesMut;
use proptest::prelude::*;
use serde_json::{Value, json};
use switchyard_backends::{
    AnthropicToChatStream, ChatToMessagesStream, ChunkOptions, MessagesStreamOptions,
};
use switchyard_test_support::strategies;

use crate::util::{assemble_calls, parse_events};

/// One block of a message: text pieces, or a tool call (id, name, argument pieces).
#[derive(Clone, Debug)]
enum Block {
    Text(Vec<String>),
    Tool(String, String, Vec<String>),
}

fn blocks() -> impl Strategy<Value = Vec<Block>> {
    let text = prop::collection::vec(strategies::text(), 1..5).prop_map(Block::Text);
    let tool = ("toolu_[a-z0-9]{4}", "[a-z_]{1,10}", strategies::text(), 1usize..5).prop_map(
        |(id, name, value, pieces)| {
            let json = json!({"q": value, "n": 1}).to_string();
            let chars: Vec<char> = json.chars().collect();
            let size = chars.len().div_ceil(pieces);
            let parts = chars.chunks(size).map(|c| c.iter().collect()).collect();
            Block::Tool(id, name, parts)
        },
    );
    prop::collection::vec(prop_oneof![2 => text, 1 => tool], 0..6)
}

/// What a client should end up with: merged text runs and whole tool calls.
fn expected(blocks: &[Block]) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::new();
    for block in blocks {
        match block {
            Block::Text(pieces) => {
                let text: String = pieces.concat();
                if text.is_empty() {
                    continue;
                }
                match out.last_mut() {
                    Some(Value::String(last)) => last.push_str(&text),
                    _ => out.push(Value::String(text)),
                }
            }
            Block::Tool(id, name, parts) => {
                out.push(json!({"id": id, "name": name, "arguments": parts.concat()}))
            }
        }
    }
    out
}

fn split(bytes: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    cuts.sort_unstable();
    let mut pieces = Vec::new();
    let mut at = 0;
    for cut in cuts {
        pieces.push(bytes[at..cut].to_vec());
        at = cut;
    }
    pieces.push(bytes[at..].to_vec());
    pieces
}

fn openai_stream(blocks: &[Block]) -> Vec<u8> {
    let mut out = String::new();
    let mut push = |delta: Value, finish: Value| {
        let chunk = json!({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
                           "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
        out.push_str(&format!("data: {chunk}\n\n"));
    };
    push(json!({"role": "assistant", "content": ""}), Value::Null);
    let mut tools = 0;
    for block in blocks {
        match block {
            Block::Text(pieces) => {
                pieces.iter().for_each(|p| push(json!({"content": p}), Value::Null))
            }
            Block::Tool(id, name, parts) => {
                push(
                    json!({"tool_calls": [{"index": tools, "id": id, "type": "function", "function": {"name": name, "arguments": ""}}]}),
                    Value::Null,
                );
                for part in parts {
                    push(
                        json!({"tool_calls": [{"index": tools, "function": {"arguments": part}}]}),
                        Value::Null,
                    );
                }
                tools += 1;
            }
        }
    }
    let finish = if tools > 0 { "tool_calls" } else { "stop" };
    push(json!({}), json!(finish));
    out.push_str("data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":7,\"total_tokens\":12}}\n\n");
    out.push_str("data: [DONE]\n\n");
    out.into_bytes()
}

fn anthropic_stream(blocks: &[Block]) -> Vec<u8> {
    let mut out = String::new();
    let mut push = |data: Value| {
        out.push_str(&format!("event: {}\ndata: {data}\n\n", data["type"].as_str().unwrap()));
    };
    push(
        json!({"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude", "content": [], "usage": {"input_tokens": 5, "output_tokens": 1}}}),
    );
    let mut tools = false;
    for (index, block) in blocks.iter().enumerate() {
        match block {
            Block::Text(pieces) => {
                push(
                    json!({"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}}),
                );
                for piece in pieces {
                    push(
                        json!({"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": piece}}),
                    );
                }
            }
            Block::Tool(id, name, parts) => {
                tools = true;
                push(
                    json!({"type": "content_block_start", "index": index, "content_block": {"type": "tool_use", "id": id, "name": name, "input": {}}}),
                );
                for part in parts {
                    push(
                        json!({"type": "content_block_delta", "index": index, "delta": {"type": "input_json_delta", "partial_json": part}}),
                    );
                }
            }
        }
        push(json!({"type": "content_block_stop", "index": index}));
        if index == 0 {
            push(json!({"type": "ping"}));
        }
    }
    let reason = if tools { "tool_use" } else { "end_turn" };
    push(
        json!({"type": "message_delta", "delta": {"stop_reason": reason, "stop_sequence": null}, "usage": {"output_tokens": 7}}),
    );
    push(json!({"type": "message_stop"}));
    out.into_bytes()
}

/// Check Anthropic's event grammar and return the reassembled blocks.
fn check_anthropic_grammar(events: &[Value]) -> Result<Vec<Value>, String> {
    let names: Vec<&str> = events.iter().map(|e| e["event"].as_str().unwrap_or("?")).collect();
    for event in events {
        if event["event"] != event["data"]["type"] {
            return Err(format!("event name and type differ: {event}"));
        }
    }
    if names.first() != Some(&"message_start") || names.last() != Some(&"message_stop") {
        return Err(format!("bad framing: {names:?}"));
    }
    if names[names.len() - 2] != "message_delta" {
        return Err(format!("message_delta must precede message_stop: {names:?}"));
    }
    let mut open: Option<u64> = None;
    let mut next = 0;
    let mut blocks: Vec<Value> = Vec::new();
    for event in &events[1..events.len() - 2] {
        let data = &event["data"];
        let index = data["index"].as_u64().ok_or("no index")?;
        match data["type"].as_str().unwrap() {
            "content_block_start" => {
                if open.is_some() || index != next {
                    return Err(format!(
                        "block {index} starts while {open:?} is open or out of order"
                    ));
                }
                open = Some(index);
                next += 1;
                let block = &data["content_block"];
                blocks.push(match block["type"].as_str().unwrap() {
                    "text" => json!(""),
                    "tool_use" => {
                        json!({"id": block["id"], "name": block["name"], "arguments": ""})
                    }
                    other => return Err(format!("unexpected block {other}")),
                });
            }
            "content_block_delta" => {
                if open != Some(index) {
                    return Err(format!("delta for block {index} while {open:?} is open"));
                }
                let last = blocks.last_mut().unwrap();
                match data["delta"]["type"].as_str().unwrap() {
                    "text_delta" => {
                        let text = format!(
                            "{}{}",
                            last.as_str().ok_or("text into a tool block")?,
                            data["delta"]["text"].as_str().unwrap()
                        );
                        *last = json!(text);
                    }
                    "input_json_delta" => {
                        let args = format!(
                            "{}{}",
                            last["arguments"].as_str().ok_or("json into a text block")?,
                            data["delta"]["partial_json"].as_str().unwrap()
                        );
                        last["arguments"] = json!(args);
                    }
                    other => return Err(format!("unexpected delta {other}")),
                }
            }
            "content_block_stop" => {
                if open != Some(index) {
                    return Err(format!("stop for block {index} while {open:?} is open"));
                }
                open = None;
            }
            other => return Err(format!("unexpected event {other} inside the message")),
        }
    }
    if open.is_some() {
        return Err("a block is still open at message_delta".into());
    }
    Ok(blocks)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn openai_streams_become_well_formed_anthropic_streams(
        blocks in blocks(), cuts in prop::collection::vec(any::<usize>(), 0..24)
    ) {
        let input = openai_stream(&blocks);
        let mut translator = ChatToMessagesStream::new(MessagesStreamOptions { model: "claude-x".into(), input_tokens: 3 });
        let mut out = BytesMut::new();
        for piece in split(&input, &cuts) {
            translator.push(&piece, &mut out).unwrap();
        }
        translator.finish(&mut out).unwrap();
        prop_assert!(translator.is_complete());
        let events = parse_events(&out);
        let reassembled = check_anthropic_grammar(&events).map_err(TestCaseError::fail)?;
        prop_assert_eq!(reassembled, expected(&blocks));
        let delta = &events[events.len() - 2]["data"];
        let tools = blocks.iter().any(|b| matches!(b, Block::Tool(..)));
        prop_assert_eq!(&delta["delta"]["stop_reason"], if tools { "tool_use" } else { "end_turn" });
        prop_assert_eq!(&delta["usage"], &json!({"input_tokens": 5, "output_tokens": 7}));
        prop_assert_eq!(&events[0]["data"]["message"]["model"], "claude-x");
    }

    #[test]
    fn anthropic_streams_become_openai_chunks_that_reassemble(
        blocks in blocks(), cuts in prop::collection::vec(any::<usize>(), 0..24), usage in any::<bool>()
    ) {
        let input = anthropic_stream(&blocks);
        let options = ChunkOptions { id: "x".into(), model: "m".into(), created: 9, include_usage: usage };
        let mut translator = AnthropicToChatStream::new(options);
        let mut out = BytesMut::new();
        for piece in split(&input, &cuts) {
            translator.push(&piece, &mut out).unwrap();
        }
        translator.finish(&mut out).unwrap();
        prop_assert!(translator.is_complete());
        let events = parse_events(&out);
        prop_assert_eq!(events.last(), Some(&json!("[DONE]")));
        for event in &events[..events.len() - 1] {
            prop_assert_eq!(&event["data"]["id"], "msg_1");
            prop_assert_eq!(&event["data"]["model"], "claude");
            prop_assert_eq!(&event["data"]["created"], 9);
        }
        let (text, calls, finish, got_usage) = assemble_calls(&events);
        let want = expected(&blocks);
        let want_text: String = want.iter().filter_map(Value::as_str).collect();
        let want_calls: Vec<&Value> = want.iter().filter(|b| b.is_object()).collect();
        prop_assert_eq!(text, want_text);
        prop_assert_eq!(calls.iter().collect::<Vec<_>>(), want_calls);
        prop_assert_eq!(finish.as_str(), if want.iter().any(Value::is_object) { "tool_calls" } else { "stop" });
        prop_assert_eq!(got_usage, usage.then(|| json!({"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12})));
    }
}

#[test]
fn the_grammar_check_rejects_broken_streams() {
    let start = json!({"event": "message_start", "data": {"type": "message_start"}});
    let stop = json!({"event": "message_stop", "data": {"type": "message_stop"}});
    let delta = json!({"event": "message_delta", "data": {"type": "message_delta"}});
    let block = |kind: &str, index: u64| json!({"event": kind, "data": {"type": kind, "index": index, "content_block": {"type": "text"}, "delta": {"type": "text_delta", "text": "x"}}});
    assert!(check_anthropic_grammar(&[start.clone(), delta.clone(), stop.clone()]).is_ok());
    assert!(
        check_anthropic_grammar(&[
            start.clone(),
            block("content_block_start", 0),
            delta.clone(),
            stop.clone()
        ])
        .is_err()
    );
    assert!(
        check_anthropic_grammar(&[
            start.clone(),
            block("content_block_delta", 0),
            delta.clone(),
            stop.clone()
        ])
        .is_err()
    );
    assert!(
        check_anthropic_grammar(&[
            start,
            block("content_block_start", 1),
            block("content_block_stop", 1),
            delta,
            stop
        ])
        .is_err()
    );
}
