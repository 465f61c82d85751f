//! proptest strategies for other crates' tests: OpenAI chat requests and SSE chunkings.
//!
//! ```
//! use proptest::prelude::*;
//! use switchyard_test_support::strategies;
//!
//! proptest!(ProptestConfig::with_cases(16), |(request in strategies::chat_request())| {
//!     prop_assert!(request["model"].is_string());
//!     prop_assert!(!request["messages"].as_array().unwrap().is_empty());
//! });
//! ```

use proptest::collection::vec;
use proptest::prelude::*;
use serde_json::{Map, Value, json};

/// Text that stresses encoders: ASCII, JSON escapes, multi-byte UTF-8 (accents, CJK,
/// emoji with ZWJ, RTL, combining marks), control characters and SSE-looking lines.
pub fn text() -> impl Strategy<Value = String> {
    let tricky = prop::sample::select(vec![
        "",
        "hello",
        "quote \" backslash \\ slash /",
        "line\nbreak\r\nand\rcr",
        "tab\tnul\u{0}bell\u{7}",
        "Zürich café naïve",
        "日本語のテキスト",
        "👩‍👩‍👧‍👦 family 🇨🇭 flag",
        "مرحبا بالعالم",
        "e\u{301} combining",
        "data: [DONE]\n\n",
        ": comment\nevent: x\n",
        "\u{feff}bom \u{2028} separators \u{2029}",
        "{\"json\": \"inside\"}",
    ]);
    prop_oneof![
        3 => "\\PC{0,48}",
        2 => tricky.prop_map(str::to_owned),
        1 => vec(prop_oneof![any::<char>().prop_map(String::from), "[a-z ]{1,8}"], 0..12)
            .prop_map(|parts| parts.concat()),
    ]
}

/// Message content: a plain string, or parts (`text` and `image_url`, with a data URL
/// or an https URL).
pub fn content() -> impl Strategy<Value = Value> {
    let part = prop_oneof![
        3 => text().prop_map(|t| json!({"type": "text", "text": t})),
        1 => (prop::sample::select(vec!["low", "high", "auto"]), "[a-zA-Z0-9+/]{0,64}").prop_map(
            |(detail, b64)| json!({"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{b64}"), "detail": detail}})
        ),
        1 => "[a-z]{1,12}".prop_map(|name| json!({"type": "image_url", "image_url": {"url": format!("https://example.com/{name}.png")}})),
    ];
    prop_oneof![
        3 => text().prop_map(Value::String),
        1 => vec(part, 1..4).prop_map(Value::Array),
    ]
}

/// A tool declaration with a JSON Schema.
pub fn tool() -> impl Strategy<Value = Value> {
    ("[a-z][a-z0-9_]{0,20}", text(), vec("[a-z_]{1,10}", 0..4)).prop_map(
        |(name, description, props)| {
            let properties: Map<String, Value> = props
                .iter()
                .map(|p| (p.clone(), json!({"type": "string", "description": p})))
                .collect();
            json!({
                "type": "function",
                "function": {
                    "name": name,
                    "description": description,
                    "parameters": {"type": "object", "properties": properties, "required": props},
                },
            })
        },
    )
}

/// One message: system, user (text or parts), assistant (text or tool calls) or tool.
pub fn message() -> impl Strategy<Value = Value> {
    let tool_call = ("call_[a-zA-Z0-9]{4,12}", "[a-z_]{1,12}", text()).prop_map(|(id, name, arg)| {
        json!({"id": id, "type": "function", "function": {"name": name, "arguments": json!({"q": arg}).to_string()}})
    });
    prop_oneof![
        1 => text().prop_map(|t| json!({"role": "system", "content": t})),
        4 => content().prop_map(|c| json!({"role": "user", "content": c})),
        2 => text().prop_map(|t| json!({"role": "assistant", "content": t})),
        1 => vec(tool_call, 1..3).prop_map(|calls| json!({"role": "assistant", "content": null, "tool_calls": calls})),
        1 => ("call_[a-zA-Z0-9]{4,12}", text()).prop_map(|(id, t)| json!({"role": "tool", "tool_call_id": id, "content": t})),
    ]
}

/// An OpenAI chat completions request: 1-6 messages, optional streaming (with or
/// without `include_usage`), sampling fields, tools, and an unknown vendor field.
pub fn chat_request() -> impl Strategy<Value = Value> {
    (
        "[a-z0-9][a-z0-9.:/_-]{0,30}",
        vec(message(), 1..6),
        prop::option::of(any::<bool>()),
        prop::option::of(any::<bool>()),
        prop::option::of(0.0f64..2.0),
        prop::option::of(1u32..4096),
        prop::option::of(vec(tool(), 1..3)),
        prop::option::of(text()),
    )
        .prop_map(|(model, messages, stream, usage, temperature, max_tokens, tools, extra)| {
            let mut request = json!({"model": model, "messages": messages});
            if let Some(stream) = stream {
                request["stream"] = json!(stream);
                if let (true, Some(usage)) = (stream, usage) {
                    request["stream_options"] = json!({"include_usage": usage});
                }
            }
            if let Some(t) = temperature {
                request["temperature"] = json!(t);
            }
            if let Some(m) = max_tokens {
                request["max_tokens"] = json!(m);
            }
            if let Some(tools) = tools {
                request["tools"] = Value::Array(tools);
                request["tool_choice"] = json!("auto");
            }
            if let Some(extra) = extra {
                request["x_vendor_extension"] = json!({"note": extra});
            }
            request
        })
}

/// [`chat_request`] serialised to bytes.
pub fn chat_request_bytes() -> impl Strategy<Value = Vec<u8>> {
    chat_request().prop_map(|request| request.to_string().into_bytes())
}

/// `bytes` cut at arbitrary points (possibly inside a UTF-8 sequence or a line
/// ending, possibly into empty pieces); concatenated they give `bytes` back.
pub fn chunkings(bytes: Vec<u8>) -> impl Strategy<Value = Vec<Vec<u8>>> {
    let len = bytes.len();
    vec(0..=len, 0..=len.min(32)).prop_map(move |mut cuts| {
        cuts.sort_unstable();
        let mut pieces = Vec::with_capacity(cuts.len() + 1);
        let mut at = 0;
        for cut in cuts {
            pieces.push(bytes[at..cut].to_vec());
            at = cut;
        }
        pieces.push(bytes[at..].to_vec());
        pieces
    })
}

/// An SSE stream and the `data` payloads it carries: events with optional `event:`
/// names, multi-line data, `: ping` comments, and LF, CRLF or CR line endings.
pub fn sse_stream() -> impl Strategy<Value = (Vec<String>, Vec<u8>)> {
    let line_ending = prop::sample::select(vec!["\n", "\r\n", "\r"]);
    let event = (prop::option::of("[a-z_]{1,16}"), vec("[^\r\n]{0,24}", 1..3), any::<bool>());
    (line_ending, vec(event, 0..8)).prop_map(|(eol, events)| {
        let mut payloads = Vec::with_capacity(events.len());
        let mut out = String::new();
        for (name, lines, ping) in events {
            if ping {
                out.push_str(": ping");
                out.push_str(eol);
                out.push_str(eol);
            }
            if let Some(name) = name {
                out.push_str("event: ");
                out.push_str(&name);
                out.push_str(eol);
            }
            for line in &lines {
                out.push_str("data: ");
                out.push_str(line);
                out.push_str(eol);
            }
            out.push_str(eol);
            payloads.push(lines.join("\n"));
        }
        (payloads, out.into_bytes())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn chat_requests_are_valid_openai_requests(request in chat_request()) {
            let bytes = request.to_string();
            let parsed: switchyard_core::openai::ChatCompletionRequest =
                serde_json::from_str(&bytes).unwrap();
            prop_assert_eq!(parsed.model.as_str(), request["model"].as_str().unwrap());
            prop_assert_eq!(parsed.messages.len(), request["messages"].as_array().unwrap().len());
        }

        #[test]
        fn chunkings_concatenate_back(
            (bytes, pieces) in vec(any::<u8>(), 0..200).prop_flat_map(|b| (Just(b.clone()), chunkings(b)))
        ) {
            prop_assert_eq!(pieces.concat(), bytes);
        }

        #[test]
        fn sse_streams_parse_to_their_payloads((payloads, bytes) in sse_stream()) {
            let mut parser = switchyard_core::sse::SseParser::new();
            let events = parser.feed(&bytes);
            let data: Vec<String> = events.into_iter().map(|e| e.data).collect();
            prop_assert_eq!(data, payloads);
        }
    }
}
