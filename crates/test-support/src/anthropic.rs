//! Anthropic Messages API shapes, from the published API reference.

use bytes::Bytes;
use serde_json::{Value, json};

use crate::render::{Ctx, StreamPlan, split_text};
use crate::script::Script;

/// `GET /v1/models` in Anthropic's shape.
pub(crate) fn models(script: &Script) -> Value {
    let data: Vec<Value> = script
        .models
        .iter()
        .map(|id| {
            json!({
                "type": "model",
                "id": id,
                "display_name": id,
                "created_at": rfc3339(script.created),
            })
        })
        .collect();
    json!({
        "data": data,
        "has_more": false,
        "first_id": script.models.first(),
        "last_id": script.models.last(),
    })
}

/// Non-streaming `message`.
pub(crate) fn message(ctx: &Ctx<'_>) -> Value {
    let (content, stop_reason, output_tokens) = match &ctx.script.tool_call {
        Some((name, input)) => {
            let pieces = split_text(&input.to_string(), ctx.script.chunks).len();
            let block =
                json!({"type": "tool_use", "id": tool_id(ctx), "name": name, "input": input});
            (json!([block]), "tool_use", pieces)
        }
        None => {
            let texts = ctx.script.content_texts();
            (json!([{"type": "text", "text": texts.concat()}]), "end_turn", texts.len())
        }
    };
    json!({
        "id": message_id(ctx),
        "type": "message",
        "role": "assistant",
        "model": ctx.model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": null,
        "usage": {"input_tokens": ctx.prompt_tokens, "output_tokens": output_tokens},
    })
}

/// The event stream: `message_start`, `content_block_start`, `ping` (the preamble),
/// one `content_block_delta` per piece, `content_block_stop`, `message_delta`,
/// `message_stop`.
pub(crate) fn stream(ctx: &Ctx<'_>) -> StreamPlan {
    let start = json!({
        "type": "message_start",
        "message": {
            "id": message_id(ctx),
            "type": "message",
            "role": "assistant",
            "model": ctx.model,
            "content": [],
            "stop_reason": null,
            "stop_sequence": null,
            "usage": {"input_tokens": ctx.prompt_tokens, "output_tokens": 1},
        },
    });
    let (block, deltas, stop_reason) = match &ctx.script.tool_call {
        Some((name, input)) => {
            let block = json!({"type": "tool_use", "id": tool_id(ctx), "name": name, "input": {}});
            let deltas: Vec<Value> = split_text(&input.to_string(), ctx.script.chunks)
                .into_iter()
                .map(|part| json!({"type": "input_json_delta", "partial_json": part}))
                .collect();
            (block, deltas, "tool_use")
        }
        None => {
            let block = json!({"type": "text", "text": ""});
            let deltas: Vec<Value> = ctx
                .script
                .content_texts()
                .into_iter()
                .map(|text| json!({"type": "text_delta", "text": text}))
                .collect();
            (block, deltas, "end_turn")
        }
    };
    let content = deltas.len();
    let mut frames = vec![
        event("message_start", &start),
        event(
            "content_block_start",
            &json!({"type": "content_block_start", "index": 0, "content_block": block}),
        ),
        event("ping", &json!({"type": "ping"})),
    ];
    for delta in deltas {
        frames.push(event(
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": 0, "delta": delta}),
        ));
    }
    frames.push(event("content_block_stop", &json!({"type": "content_block_stop", "index": 0})));
    frames.push(event(
        "message_delta",
        &json!({
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason, "stop_sequence": null},
            "usage": {"output_tokens": content},
        }),
    ));
    frames.push(event("message_stop", &json!({"type": "message_stop"})));
    let error =
        json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}});
    StreamPlan { frames, prefix: 3, content, error_frame: event("error", &error) }
}

/// `event: {name}\ndata: {json}\n\n`.
fn event(name: &str, data: &Value) -> Bytes {
    Bytes::from(format!("event: {name}\ndata: {data}\n\n"))
}

fn message_id(ctx: &Ctx<'_>) -> String {
    format!("msg_{:016x}", ctx.hash)
}

fn tool_id(ctx: &Ctx<'_>) -> String {
    format!("toolu_{:016x}", ctx.hash.rotate_left(17))
}

/// Unix seconds as `YYYY-MM-DDTHH:MM:SSZ` (proleptic Gregorian, UTC).
fn rfc3339(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3_600,
        secs % 3_600 / 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_matches_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }
}
