//! OpenAI response shapes: chat completions, completions, embeddings, models.

use bytes::Bytes;
use serde_json::{Value, json};

use crate::render::{Ctx, StreamPlan, split_text, sse_data};
use crate::script::Script;

const FINGERPRINT: &str = "fp_mock";

/// `GET /v1/models`.
pub(crate) fn models(script: &Script) -> Value {
    let data: Vec<Value> = script.models.iter().map(|id| model_json(script, id)).collect();
    json!({"object": "list", "data": data})
}

/// `GET /v1/models/{id}`, if listed.
pub(crate) fn model(script: &Script, id: &str) -> Option<Value> {
    script.models.iter().any(|m| m == id).then(|| model_json(script, id))
}

/// Non-streaming `chat.completion`.
pub(crate) fn chat(ctx: &Ctx<'_>) -> Value {
    let texts = ctx.script.content_texts();
    let completion_tokens = pieces(ctx, &texts);
    let (message, finish) = match &ctx.script.tool_call {
        Some((name, arguments)) => (
            json!({
                "role": "assistant",
                "content": null,
                "tool_calls": [{
                    "id": call_id(ctx),
                    "type": "function",
                    "function": {"name": name, "arguments": arguments.to_string()},
                }],
                "refusal": null,
            }),
            "tool_calls",
        ),
        None => (json!({"role": "assistant", "content": texts.concat(), "refusal": null}), "stop"),
    };
    json!({
        "id": chat_id(ctx),
        "object": "chat.completion",
        "created": ctx.script.created,
        "model": ctx.model,
        "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": finish}],
        "usage": usage(ctx, completion_tokens),
        "system_fingerprint": FINGERPRINT,
    })
}

/// Streaming `chat.completion.chunk`s: one per content piece (the first also carries
/// the role), a finish chunk, a usage chunk when asked, `[DONE]`.
pub(crate) fn chat_stream(ctx: &Ctx<'_>) -> StreamPlan {
    let include_usage = include_usage(ctx);
    let id = chat_id(ctx);
    let chunk = |choices: Value, usage: Option<Value>| {
        let mut object = json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": ctx.script.created,
            "model": ctx.model,
            "system_fingerprint": FINGERPRINT,
            "choices": choices,
        });
        if include_usage {
            object["usage"] = usage.unwrap_or(Value::Null);
        }
        sse_data(&object)
    };
    let choice = |delta: Value, finish: Value| json!([{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]);
    let mut frames = Vec::new();
    let (content, finish) = match &ctx.script.tool_call {
        Some((name, arguments)) => {
            let parts = split_text(&arguments.to_string(), ctx.script.chunks);
            for (i, part) in parts.iter().enumerate() {
                let delta = if i == 0 {
                    json!({
                        "role": "assistant",
                        "content": null,
                        "tool_calls": [{
                            "index": 0,
                            "id": call_id(ctx),
                            "type": "function",
                            "function": {"name": name, "arguments": part},
                        }],
                    })
                } else {
                    json!({"tool_calls": [{"index": 0, "function": {"arguments": part}}]})
                };
                frames.push(chunk(choice(delta, Value::Null), None));
            }
            (parts.len(), "tool_calls")
        }
        None => {
            let texts = ctx.script.content_texts();
            for (i, text) in texts.iter().enumerate() {
                let delta = if i == 0 {
                    json!({"role": "assistant", "content": text})
                } else {
                    json!({"content": text})
                };
                frames.push(chunk(choice(delta, Value::Null), None));
            }
            (texts.len(), "stop")
        }
    };
    frames.push(chunk(choice(json!({}), json!(finish)), None));
    if include_usage {
        frames.push(chunk(json!([]), Some(usage(ctx, content as u64))));
    }
    frames.push(Bytes::from_static(b"data: [DONE]\n\n"));
    StreamPlan { frames, prefix: 0, content, error_frame: stream_error() }
}

/// Non-streaming `text_completion`.
pub(crate) fn completion(ctx: &Ctx<'_>) -> Value {
    let texts = ctx.script.content_texts();
    json!({
        "id": completion_id(ctx),
        "object": "text_completion",
        "created": ctx.script.created,
        "model": ctx.model,
        "choices": [{"text": texts.concat(), "index": 0, "logprobs": null, "finish_reason": "stop"}],
        "usage": usage(ctx, texts.len() as u64),
    })
}

/// Streaming `text_completion` chunks, a finish chunk, a usage chunk when asked, `[DONE]`.
pub(crate) fn completion_stream(ctx: &Ctx<'_>) -> StreamPlan {
    let include_usage = include_usage(ctx);
    let id = completion_id(ctx);
    let chunk = |choices: Value, usage: Option<Value>| {
        let mut object = json!({
            "id": id,
            "object": "text_completion",
            "created": ctx.script.created,
            "model": ctx.model,
            "choices": choices,
        });
        if let Some(usage) = usage {
            object["usage"] = usage;
        }
        sse_data(&object)
    };
    let texts = ctx.script.content_texts();
    let mut frames: Vec<Bytes> = texts
        .iter()
        .map(|text| {
            let choices =
                json!([{"text": text, "index": 0, "logprobs": null, "finish_reason": null}]);
            chunk(choices, None)
        })
        .collect();
    let finish = json!([{"text": "", "index": 0, "logprobs": null, "finish_reason": "stop"}]);
    frames.push(chunk(finish, None));
    if include_usage {
        frames.push(chunk(json!([]), Some(usage(ctx, texts.len() as u64))));
    }
    frames.push(Bytes::from_static(b"data: [DONE]\n\n"));
    StreamPlan { frames, prefix: 0, content: texts.len(), error_frame: stream_error() }
}

/// `POST /v1/embeddings`: one deterministic vector per input.
pub(crate) fn embeddings(ctx: &Ctx<'_>) -> Value {
    let inputs: Vec<Value> = match &ctx.json["input"] {
        Value::Array(items) if items.iter().all(|i| i.is_string() || i.is_array()) => items.clone(),
        other => vec![other.clone()],
    };
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(index, input)| {
            let seed = switchyard_core::fnv1a(input.to_string().as_bytes());
            json!({"object": "embedding", "index": index, "embedding": vector(seed, ctx.script.embedding_dims)})
        })
        .collect();
    json!({
        "object": "list",
        "data": data,
        "model": ctx.model,
        "usage": {"prompt_tokens": ctx.prompt_tokens, "total_tokens": ctx.prompt_tokens},
    })
}

/// The error event of an OpenAI stream that fails mid-way.
fn stream_error() -> Bytes {
    sse_data(&json!({"error": {
        "message": "mock upstream failed mid-stream",
        "type": "server_error",
        "param": null,
        "code": null,
    }}))
}

fn model_json(script: &Script, id: &str) -> Value {
    json!({"id": id, "object": "model", "created": script.created, "owned_by": "mock"})
}

fn include_usage(ctx: &Ctx<'_>) -> bool {
    ctx.json["stream_options"]["include_usage"] == Value::Bool(true)
}

fn usage(ctx: &Ctx<'_>, completion_tokens: u64) -> Value {
    json!({
        "prompt_tokens": ctx.prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": ctx.prompt_tokens + completion_tokens,
    })
}

/// Completion tokens of a chat answer: its content pieces (or argument pieces).
fn pieces(ctx: &Ctx<'_>, texts: &[String]) -> u64 {
    match &ctx.script.tool_call {
        Some((_, arguments)) => split_text(&arguments.to_string(), ctx.script.chunks).len() as u64,
        None => texts.len() as u64,
    }
}

fn chat_id(ctx: &Ctx<'_>) -> String {
    format!("chatcmpl-{:016x}", ctx.hash)
}

fn completion_id(ctx: &Ctx<'_>) -> String {
    format!("cmpl-{:016x}", ctx.hash)
}

fn call_id(ctx: &Ctx<'_>) -> String {
    format!("call_{:016x}", ctx.hash.rotate_left(17))
}

/// A deterministic vector of exact binary fractions in [-0.5, 0.5).
fn vector(seed: u64, dims: usize) -> Vec<f64> {
    let mut state = seed;
    (0..dims)
        .map(|_| {
            // xorshift64: cheap, deterministic, and never stuck at zero for seed != 0.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 48) as f64 / 65536.0) - 0.5
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors_are_deterministic_and_bounded() {
        let a = vector(42, 16);
        assert_eq!(a, vector(42, 16));
        assert_ne!(a, vector(43, 16));
        assert!(a.iter().all(|v| (-0.5..0.5).contains(v)));
    }
}
