//! Gemini API shapes (`generateContent`, `streamGenerateContent`), from the published
//! API reference. Gemini's SSE stream separates events with `\r\n\r\n`.

use bytes::Bytes;
use serde_json::{Value, json};

use crate::render::{Ctx, StreamPlan};
use crate::script::Script;

/// `GET /v1beta/models`.
pub(crate) fn models(script: &Script) -> Value {
    let models: Vec<Value> = script.models.iter().map(|id| model_json(id)).collect();
    json!({"models": models})
}

/// `GET /v1beta/models/{id}`, if listed.
pub(crate) fn model(script: &Script, id: &str) -> Option<Value> {
    script.models.iter().any(|m| m == id).then(|| model_json(id))
}

/// Non-streaming `GenerateContentResponse`.
pub(crate) fn generate(ctx: &Ctx<'_>) -> Value {
    let (part, tokens) = match &ctx.script.tool_call {
        Some((name, args)) => (json!({"functionCall": {"name": name, "args": args}}), 1),
        None => {
            let texts = ctx.script.content_texts();
            (json!({"text": texts.concat()}), texts.len() as u64)
        }
    };
    response(ctx, part, Some(tokens))
}

/// `streamGenerateContent?alt=sse`: one response per content piece, the last with
/// `finishReason` and full usage. A tool call arrives whole in one response.
pub(crate) fn stream(ctx: &Ctx<'_>) -> StreamPlan {
    let frames: Vec<Bytes> = stream_objects(ctx).iter().map(sse).collect();
    let content = frames.len();
    let error = json!({"error": {"code": 500, "message": "mock upstream failed mid-stream", "status": "INTERNAL"}});
    StreamPlan { frames, prefix: 0, content, error_frame: sse(&error) }
}

/// `streamGenerateContent` without `alt=sse`: the same responses as a JSON array.
pub(crate) fn stream_array(ctx: &Ctx<'_>) -> Value {
    Value::Array(stream_objects(ctx))
}

fn stream_objects(ctx: &Ctx<'_>) -> Vec<Value> {
    if let Some((name, args)) = &ctx.script.tool_call {
        return vec![response(ctx, json!({"functionCall": {"name": name, "args": args}}), Some(1))];
    }
    let texts = ctx.script.content_texts();
    if texts.is_empty() {
        return vec![response(ctx, json!({"text": ""}), Some(0))];
    }
    let last = texts.len() - 1;
    texts
        .iter()
        .enumerate()
        .map(|(i, text)| {
            let done = (i == last).then_some(texts.len() as u64);
            response(ctx, json!({"text": text}), done)
        })
        .collect()
}

/// One `GenerateContentResponse`; `done` carries the candidate token count of the
/// final response, which also gets `finishReason: STOP`.
fn response(ctx: &Ctx<'_>, part: Value, done: Option<u64>) -> Value {
    let mut candidate = json!({"content": {"parts": [part], "role": "model"}});
    let usage = match done {
        Some(tokens) => {
            candidate["finishReason"] = json!("STOP");
            json!({
                "promptTokenCount": ctx.prompt_tokens,
                "candidatesTokenCount": tokens,
                "totalTokenCount": ctx.prompt_tokens + tokens,
            })
        }
        None => {
            json!({"promptTokenCount": ctx.prompt_tokens, "totalTokenCount": ctx.prompt_tokens})
        }
    };
    candidate["index"] = json!(0);
    json!({
        "candidates": [candidate],
        "usageMetadata": usage,
        "modelVersion": ctx.model,
        "responseId": format!("{:016x}", ctx.hash),
    })
}

fn model_json(id: &str) -> Value {
    json!({
        "name": format!("models/{id}"),
        "version": "001",
        "displayName": id,
        "inputTokenLimit": 1_048_576,
        "outputTokenLimit": 8_192,
        "supportedGenerationMethods": ["generateContent", "countTokens", "streamGenerateContent"],
    })
}

/// `data: {json}\r\n\r\n`, as Gemini frames its events.
fn sse(value: &Value) -> Bytes {
    Bytes::from(format!("data: {value}\r\n\r\n"))
}
