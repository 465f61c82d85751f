//! The pure half of the mock: what it sends for a script and a request.
//!
//! Everything a mock writes is a function of the script and the request, so a test
//! can compute the exact bytes with [`Script::render`] and byte-compare them with
//! what came through the router. The server only adds timing and the ending.

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use serde_json::{Value, json};

use crate::script::{Ending, Fault, Flavor, Script};
use crate::{anthropic, gemini, openai};

/// What a mock sends for one request: status, headers, body frames and how it ends.
///
/// For a stream each frame is one SSE event; a non-streaming answer has one frame.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Rendered {
    /// The status code.
    pub status: StatusCode,
    /// Response headers (`Content-Type` and the script's extra headers).
    pub headers: HeaderMap,
    /// The body, frame by frame, in order. Stream delays are inserted between frames.
    pub frames: Vec<Bytes>,
    /// What happens after the last frame.
    pub ending: Ending,
    /// Whether the body is an SSE stream.
    pub stream: bool,
}

/// The endpoint a request addresses, once routed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Route {
    Health,
    Models,
    Model(String),
    Chat,
    Completions,
    Embeddings,
    Messages,
    CountTokens,
    GeminiModels,
    GeminiModel(String),
    Generate { model: String, stream: bool, sse: bool },
    GeminiCountTokens(String),
}

/// A stream before its fault is applied.
pub(crate) struct StreamPlan {
    pub(crate) frames: Vec<Bytes>,
    /// Frames sent before content event 0 (Anthropic's preamble).
    pub(crate) prefix: usize,
    /// Content events after the prefix.
    pub(crate) content: usize,
    /// The event a mid-stream error sends.
    pub(crate) error_frame: Bytes,
}

/// What a flavour renderer needs to know about the request.
pub(crate) struct Ctx<'a> {
    pub(crate) script: &'a Script,
    pub(crate) json: &'a Value,
    /// FNV-1a of the request body: the seed of ids and embeddings.
    pub(crate) hash: u64,
    /// `max(1, body length / 4)`.
    pub(crate) prompt_tokens: u64,
    /// The request's model (from the body, or from the path for Gemini).
    pub(crate) model: String,
}

impl Rendered {
    /// The whole body: every frame, concatenated.
    pub fn body(&self) -> Bytes {
        match self.frames.as_slice() {
            [] => Bytes::new(),
            [one] => one.clone(),
            frames => {
                let mut out = BytesMut::with_capacity(frames.iter().map(Bytes::len).sum());
                for frame in frames {
                    out.extend_from_slice(frame);
                }
                out.freeze()
            }
        }
    }

    /// The body as a string (lossy for the garbage script).
    pub fn body_string(&self) -> String {
        String::from_utf8_lossy(&self.body()).into_owned()
    }
}

impl Script {
    /// What a mock with this script sends for a request, byte for byte.
    ///
    /// `path_and_query` is the request target (`/v1/chat/completions`,
    /// `/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse`); `body` the
    /// request body exactly as the mock receives it (ids and token counts are
    /// derived from it, so use the bytes the router forwarded: see
    /// [`MockUpstream::requests`](crate::MockUpstream::requests)). An API key
    /// required by [`Script::require_api_key`] is assumed present.
    ///
    /// ```
    /// use http::Method;
    /// use switchyard_test_support::Script;
    ///
    /// let body = br#"{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    /// let r = Script::ok().chunks(2).render(&Method::POST, "/v1/chat/completions", body);
    /// assert_eq!(r.frames.len(), 4); // two content chunks, the finish chunk, [DONE]
    /// assert!(r.body_string().ends_with("data: [DONE]\n\n"));
    /// ```
    pub fn render(&self, method: &Method, path_and_query: &str, body: &[u8]) -> Rendered {
        render_request(self, method, path_and_query, None, body)
    }

    /// The body a mock sends for `POST path` with `body`: shorthand for
    /// `render(&Method::POST, path, body).body()`.
    pub fn expected_body(&self, path: &str, body: &[u8]) -> Bytes {
        self.render(&Method::POST, path, body).body()
    }
}

/// Render with the headers the request carried (`None`: assume authorised).
pub(crate) fn render_request(
    script: &Script,
    method: &Method,
    path_and_query: &str,
    headers: Option<&HeaderMap>,
    body: &[u8],
) -> Rendered {
    let (path, query) = match path_and_query.split_once('?') {
        Some((path, query)) => (path, query),
        None => (path_and_query, ""),
    };
    let flavor = script.flavor;
    if script.never_answer {
        return Rendered {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            frames: Vec::new(),
            ending: Ending::NeverAnswer,
            stream: false,
        };
    }
    if !(200..300).contains(&script.status) {
        let status =
            StatusCode::from_u16(script.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = match &script.error_body {
            Some(Value::String(message)) => error_json(flavor, status, message),
            Some(custom) => custom.clone(),
            None => error_json(flavor, status, &format!("mock upstream error {}", status.as_u16())),
        };
        return json_response(script, status, &body);
    }
    if let Some(raw) = &script.raw_body {
        return finish(script, status_of(script), HeaderMap::new(), vec![raw.clone()], false);
    }
    let route = match route(flavor, method, path, query) {
        Ok(route) => route,
        Err(status) => {
            let message = format!("no route for {method} {path}");
            return json_response(script, status, &error_json(flavor, status, &message));
        }
    };
    if let (Some(key), Some(headers)) = (&script.api_key, headers)
        && presented_key(headers).as_deref() != Some(key.as_str())
    {
        let status = StatusCode::UNAUTHORIZED;
        let message = "invalid or missing api key";
        return json_response(script, status, &error_json(flavor, status, message));
    }
    let json: Value = if method == Method::POST {
        match serde_json::from_slice(body) {
            Ok(json) => json,
            Err(e) => {
                if script.garbage {
                    return garbage(script, false);
                }
                let status = StatusCode::BAD_REQUEST;
                let message = format!("invalid json body: {e}");
                return json_response(script, status, &error_json(flavor, status, &message));
            }
        }
    } else {
        Value::Null
    };
    let streaming = match &route {
        Route::Chat | Route::Completions | Route::Messages => json["stream"] == Value::Bool(true),
        Route::Generate { stream, .. } => *stream,
        _ => false,
    };
    if script.garbage {
        return garbage(script, streaming);
    }
    let model = match &route {
        Route::Generate { model, .. } | Route::GeminiCountTokens(model) => model.clone(),
        _ => json["model"].as_str().unwrap_or_default().to_owned(),
    };
    let ctx = Ctx {
        script,
        json: &json,
        hash: switchyard_core::fnv1a(body),
        prompt_tokens: (body.len() as u64 / 4).max(1),
        model,
    };
    match route {
        Route::Health => json_response(script, status_of(script), &json!({"status": "ok"})),
        Route::Models => {
            let list = match flavor {
                Flavor::Anthropic => anthropic::models(script),
                _ => openai::models(script),
            };
            json_response(script, status_of(script), &list)
        }
        Route::Model(id) => match openai::model(script, &id) {
            Some(model) => json_response(script, status_of(script), &model),
            None => not_found_model(script, &id),
        },
        Route::GeminiModels => json_response(script, status_of(script), &gemini::models(script)),
        Route::GeminiModel(id) => match gemini::model(script, &id) {
            Some(model) => json_response(script, status_of(script), &model),
            None => not_found_model(script, &id),
        },
        Route::Chat if streaming => stream_response(script, openai::chat_stream(&ctx)),
        Route::Chat => json_response(script, status_of(script), &openai::chat(&ctx)),
        Route::Completions if streaming => stream_response(script, openai::completion_stream(&ctx)),
        Route::Completions => json_response(script, status_of(script), &openai::completion(&ctx)),
        Route::Embeddings => json_response(script, status_of(script), &openai::embeddings(&ctx)),
        Route::Messages if streaming => stream_response(script, anthropic::stream(&ctx)),
        Route::Messages => json_response(script, status_of(script), &anthropic::message(&ctx)),
        Route::CountTokens => {
            json_response(script, status_of(script), &json!({"input_tokens": ctx.prompt_tokens}))
        }
        Route::GeminiCountTokens(_) => {
            json_response(script, status_of(script), &json!({"totalTokens": ctx.prompt_tokens}))
        }
        Route::Generate { sse: true, stream: true, .. } => {
            stream_response(script, gemini::stream(&ctx))
        }
        Route::Generate { stream: true, .. } => {
            json_response(script, status_of(script), &gemini::stream_array(&ctx))
        }
        Route::Generate { .. } => json_response(script, status_of(script), &gemini::generate(&ctx)),
    }
}

/// Route a request for a flavour; `Err` is 404 or 405.
pub(crate) fn route(
    flavor: Flavor,
    method: &Method,
    path: &str,
    query: &str,
) -> Result<Route, StatusCode> {
    let get = method == Method::GET;
    let post = method == Method::POST;
    let want =
        |ok: bool, route: Route| if ok { Ok(route) } else { Err(StatusCode::METHOD_NOT_ALLOWED) };
    match flavor {
        Flavor::OpenAi => match path {
            "/health" => want(get, Route::Health),
            "/v1/models" => want(get, Route::Models),
            "/v1/chat/completions" => want(post, Route::Chat),
            "/v1/completions" => want(post, Route::Completions),
            "/v1/embeddings" => want(post, Route::Embeddings),
            _ => match path.strip_prefix("/v1/models/") {
                Some(id) if !id.is_empty() => want(get, Route::Model(percent_decode(id))),
                _ => Err(StatusCode::NOT_FOUND),
            },
        },
        Flavor::Anthropic => match path {
            "/v1/models" => want(get, Route::Models),
            "/v1/messages" => want(post, Route::Messages),
            "/v1/messages/count_tokens" => want(post, Route::CountTokens),
            _ => match path.strip_prefix("/v1/models/") {
                Some(id) if !id.is_empty() => want(get, Route::Model(percent_decode(id))),
                _ => Err(StatusCode::NOT_FOUND),
            },
        },
        Flavor::Gemini => {
            if path == "/v1beta/models" {
                return want(get, Route::GeminiModels);
            }
            let Some(rest) = path.strip_prefix("/v1beta/models/") else {
                return Err(StatusCode::NOT_FOUND);
            };
            if rest.is_empty() || rest.contains('/') {
                return Err(StatusCode::NOT_FOUND);
            }
            match rest.rsplit_once(':') {
                None => want(get, Route::GeminiModel(percent_decode(rest))),
                Some((model, action)) => {
                    let model = percent_decode(model);
                    let sse = query.split('&').any(|pair| pair == "alt=sse");
                    match action {
                        "generateContent" => {
                            want(post, Route::Generate { model, stream: false, sse: false })
                        }
                        "streamGenerateContent" => {
                            want(post, Route::Generate { model, stream: true, sse })
                        }
                        "countTokens" => want(post, Route::GeminiCountTokens(model)),
                        _ => Err(StatusCode::NOT_FOUND),
                    }
                }
            }
        }
    }
}

/// The API key a request presents: `x-api-key`, `x-goog-api-key` or a bearer token.
pub(crate) fn presented_key(headers: &HeaderMap) -> Option<String> {
    for name in ["x-api-key", "x-goog-api-key"] {
        if let Some(value) = headers.get(name).and_then(|v| v.to_str().ok()) {
            return Some(value.to_owned());
        }
    }
    let auth = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let token = auth.strip_prefix("Bearer ").or_else(|| auth.strip_prefix("bearer "))?;
    Some(token.trim().to_owned())
}

/// The error JSON of a flavour for a status.
pub(crate) fn error_json(flavor: Flavor, status: StatusCode, message: &str) -> Value {
    let code = status.as_u16();
    match flavor {
        Flavor::OpenAi => {
            let (kind, code) = match code {
                401 => ("invalid_request_error", json!("invalid_api_key")),
                404 => ("invalid_request_error", json!("model_not_found")),
                429 => ("requests", json!("rate_limit_exceeded")),
                400..=499 => ("invalid_request_error", Value::Null),
                _ => ("server_error", Value::Null),
            };
            json!({"error": {"message": message, "type": kind, "param": null, "code": code}})
        }
        Flavor::Anthropic => {
            let kind = match code {
                401 => "authentication_error",
                403 => "permission_error",
                404 => "not_found_error",
                413 => "request_too_large",
                429 => "rate_limit_error",
                529 => "overloaded_error",
                400..=499 => "invalid_request_error",
                _ => "api_error",
            };
            json!({"type": "error", "error": {"type": kind, "message": message}})
        }
        Flavor::Gemini => {
            let grpc = match code {
                400 => "INVALID_ARGUMENT",
                401 => "UNAUTHENTICATED",
                403 => "PERMISSION_DENIED",
                404 => "NOT_FOUND",
                429 => "RESOURCE_EXHAUSTED",
                500 => "INTERNAL",
                503 => "UNAVAILABLE",
                504 => "DEADLINE_EXCEEDED",
                _ => "UNKNOWN",
            };
            json!({"error": {"code": code, "message": message, "status": grpc}})
        }
    }
}

/// Split `text` into `n` pieces of nearly equal char count (at least one piece).
pub(crate) fn split_text(text: &str, n: usize) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let n = n.max(1);
    let base = chars.len() / n;
    let extra = chars.len() % n;
    let mut pieces = Vec::with_capacity(n);
    let mut at = 0;
    for i in 0..n {
        let len = base + usize::from(i < extra);
        pieces.push(chars[at..at + len].iter().collect());
        at += len;
    }
    pieces
}

/// `data: {json}\n\n`.
pub(crate) fn sse_data(value: &Value) -> Bytes {
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(value.to_string().as_bytes());
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

fn status_of(script: &Script) -> StatusCode {
    StatusCode::from_u16(script.status).unwrap_or(StatusCode::OK)
}

fn not_found_model(script: &Script, id: &str) -> Rendered {
    let status = StatusCode::NOT_FOUND;
    let message = format!("the model `{id}` does not exist");
    json_response(script, status, &error_json(script.flavor, status, &message))
}

fn json_response(script: &Script, status: StatusCode, body: &Value) -> Rendered {
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    finish(script, status, headers, vec![Bytes::from(body.to_string())], false)
}

fn stream_response(script: &Script, plan: StreamPlan) -> Rendered {
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    let StreamPlan { mut frames, prefix, content, error_frame } = plan;
    let mut ending = Ending::Complete;
    if let Some((k, fault)) = script.fault {
        frames.truncate(prefix + k.min(content));
        match fault {
            Fault::Stall => ending = Ending::Stall,
            Fault::Reset => ending = Ending::Reset,
            Fault::Error => frames.push(error_frame),
        }
    }
    let mut rendered = finish(script, status_of(script), headers, frames, true);
    rendered.ending = ending;
    rendered
}

fn garbage(script: &Script, stream: bool) -> Rendered {
    let mut headers = HeaderMap::new();
    let body: &'static [u8] = if stream {
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        b"data: {\"id\":\"chatcmpl-garbage\",\"choices\":[{\"delta\":{\"content\":\"tru\n\ndata: \xff\xfe\x00 not utf-8\n\nevent\ndata\n\n"
    } else {
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        b"<html><body>502 Bad Gateway</body></html> {\"choices\": [tru"
    };
    finish(script, status_of(script), headers, vec![Bytes::from_static(body)], stream)
}

fn finish(
    script: &Script,
    status: StatusCode,
    mut headers: HeaderMap,
    frames: Vec<Bytes>,
    stream: bool,
) -> Rendered {
    for (name, value) in &script.headers {
        headers.append(name.clone(), value.clone());
    }
    Rendered { status, headers, frames, ending: Ending::Complete, stream }
}

fn percent_decode(input: &str) -> String {
    let bytes = input.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
            if let Some(byte) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(byte);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::strategies;
    use proptest::prelude::*;
    use switchyard_core::sse::SseParser;

    fn data_events(rendered: &Rendered) -> Vec<String> {
        let mut parser = SseParser::new();
        let events = parser.feed(&rendered.body());
        assert!(!parser.finish(), "ends on an event boundary");
        events.into_iter().map(|e| e.data).collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn openai_stream_and_non_stream_agree(
            mut request in strategies::chat_request(),
            chunks in 0usize..12,
            error_at in prop::option::of(0usize..14),
        ) {
            let script = Script::ok().chunks(chunks);
            request["stream"] = json!(false);
            let plain = request.to_string();
            let whole = script.render(&Method::POST, "/v1/chat/completions", plain.as_bytes());
            let whole: Value = serde_json::from_slice(&whole.body()).unwrap();
            prop_assert_eq!(&whole["model"], &request["model"]);

            request["stream"] = json!(true);
            let streamed = request.to_string();
            let script = match error_at { Some(k) => script.error_after(k), None => script };
            let rendered = script.render(&Method::POST, "/v1/chat/completions", streamed.as_bytes());
            prop_assert!(rendered.stream);
            let events = data_events(&rendered);
            prop_assert_eq!(events.len(), rendered.frames.len(), "one event per frame");
            let mut text = String::new();
            let mut content_events = 0;
            for event in &events {
                if event == "[DONE]" { continue; }
                let chunk: Value = serde_json::from_str(event).unwrap();
                if chunk.get("error").is_some() { continue; }
                prop_assert_eq!(&chunk["model"], &request["model"]);
                if let Some(piece) = chunk["choices"][0]["delta"]["content"].as_str() {
                    text.push_str(piece);
                    content_events += 1;
                }
            }
            match error_at {
                None => {
                    prop_assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
                    prop_assert_eq!(&Value::String(text), &whole["choices"][0]["message"]["content"]);
                }
                Some(k) => {
                    prop_assert_eq!(content_events, k.min(chunks));
                    prop_assert!(!events.iter().any(|e| e == "[DONE]"));
                    let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
                    prop_assert!(last.get("error").is_some());
                }
            }
        }

        #[test]
        fn anthropic_tool_input_survives_any_split(chunks in 0usize..20, city in strategies::text()) {
            let input = json!({"city": city, "n": 3});
            let script = Script::ok().anthropic().chunks(chunks).tool_call("t", input.clone());
            let rendered = script.render(&Method::POST, "/v1/messages", br#"{"model":"c","stream":true}"#);
            let partial: String = data_events(&rendered)
                .iter()
                .map(|e| serde_json::from_str::<Value>(e).unwrap())
                .filter(|e| e["type"] == "content_block_delta")
                .map(|e| e["delta"]["partial_json"].as_str().unwrap().to_owned())
                .collect();
            prop_assert_eq!(serde_json::from_str::<Value>(&partial).unwrap(), input);
        }
    }

    #[test]
    fn split_text_is_lossless_and_even() {
        let pieces = split_text("{\"city\":\"Zürich\"}", 4);
        assert_eq!(pieces.len(), 4);
        assert_eq!(pieces.concat(), "{\"city\":\"Zürich\"}");
        assert_eq!(split_text("", 3), vec!["", "", ""]);
        assert_eq!(split_text("abc", 0), vec!["abc"]);
    }

    #[test]
    fn percent_decoding_handles_escapes_and_stray_percent() {
        assert_eq!(percent_decode("gemini%2F..%3Fx"), "gemini/..?x");
        assert_eq!(percent_decode("50%"), "50%");
        assert_eq!(percent_decode("a%zzb"), "a%zzb");
        assert_eq!(percent_decode("%41"), "A");
    }

    #[test]
    fn routes_per_flavor() {
        let post = Method::POST;
        assert_eq!(route(Flavor::OpenAi, &post, "/v1/chat/completions", ""), Ok(Route::Chat));
        assert_eq!(route(Flavor::OpenAi, &post, "/v1/messages", ""), Err(StatusCode::NOT_FOUND));
        assert_eq!(
            route(Flavor::OpenAi, &Method::GET, "/v1/chat/completions", ""),
            Err(StatusCode::METHOD_NOT_ALLOWED)
        );
        assert_eq!(route(Flavor::Anthropic, &post, "/v1/messages", ""), Ok(Route::Messages));
        assert_eq!(
            route(
                Flavor::Gemini,
                &post,
                "/v1beta/models/gemini%2Dx:streamGenerateContent",
                "alt=sse"
            ),
            Ok(Route::Generate { model: "gemini-x".into(), stream: true, sse: true })
        );
        assert_eq!(
            route(Flavor::Gemini, &post, "/v1beta/models/a/b:generateContent", ""),
            Err(StatusCode::NOT_FOUND)
        );
    }

    #[test]
    fn presented_key_reads_every_provider_header() {
        let mut h = HeaderMap::new();
        h.insert("authorization", HeaderValue::from_static("Bearer sk-1"));
        assert_eq!(presented_key(&h).as_deref(), Some("sk-1"));
        h.insert("x-api-key", HeaderValue::from_static("ak"));
        assert_eq!(presented_key(&h).as_deref(), Some("ak"));
        assert_eq!(presented_key(&HeaderMap::new()), None);
    }

    #[test]
    fn error_shapes_follow_each_provider() {
        let s = StatusCode::TOO_MANY_REQUESTS;
        assert_eq!(error_json(Flavor::OpenAi, s, "m")["error"]["code"], "rate_limit_exceeded");
        assert_eq!(error_json(Flavor::Anthropic, s, "m")["error"]["type"], "rate_limit_error");
        assert_eq!(error_json(Flavor::Gemini, s, "m")["error"]["status"], "RESOURCE_EXHAUSTED");
    }
}
