//! Fixture loading, stream rendering and a field-by-field JSON diff.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use bytes::BytesMut;
use http::StatusCode;
use serde_json::{Value, json};
use switchyard_backends::{
    AnthropicToChatStream, ChatToMessagesStream, ChunkOptions, GeminiToChatStream,
    MessagesStreamOptions,
};
use switchyard_core::BackendError;
use switchyard_core::sse::SseParser;

/// One fixture file.
#[derive(Clone, Debug)]
pub struct Fixture {
    pub name: String,
    pub kind: String,
    pub options: Value,
    pub input: Value,
    pub expected: Value,
    pub line_ending: String,
}

pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Every fixture, sorted by path.
pub fn fixtures() -> &'static [Fixture] {
    static ALL: OnceLock<Vec<Fixture>> = OnceLock::new();
    ALL.get_or_init(|| {
        let mut paths = Vec::new();
        collect_files(&fixtures_dir(), &mut paths);
        paths.sort();
        paths
            .iter()
            .map(|path| {
                let text = std::fs::read_to_string(path).unwrap();
                let value: Value = serde_json::from_str(&text)
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                let name = path.strip_prefix(fixtures_dir()).unwrap().display().to_string();
                Fixture {
                    kind: value["kind"]
                        .as_str()
                        .unwrap_or_else(|| panic!("{name}: no kind"))
                        .to_owned(),
                    options: value["options"].clone(),
                    input: value["input"].clone(),
                    expected: value["expected"].clone(),
                    line_ending: value["line_ending"].as_str().unwrap_or("\n").to_owned(),
                    name,
                }
            })
            .collect()
    })
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "json") {
            out.push(path);
        }
    }
}

impl Fixture {
    pub fn is_stream(&self) -> bool {
        self.kind.ends_with("_stream") || self.kind == "chat_stream_to_messages"
    }

    /// The input as request/response bytes (a JSON string is taken as raw text).
    pub fn body(&self) -> Vec<u8> {
        match &self.input {
            Value::String(raw) => raw.clone().into_bytes(),
            other => other.to_string().into_bytes(),
        }
    }

    /// A stream fixture's input as SSE bytes.
    pub fn sse(&self) -> Vec<u8> {
        let eol = self.line_ending.as_str();
        let mut out = String::new();
        for item in self.input.as_array().unwrap() {
            match item {
                Value::String(data) => out.push_str(&format!("data: {data}{eol}{eol}")),
                item => {
                    if let Some(name) = item["event"].as_str() {
                        out.push_str(&format!("event: {name}{eol}"));
                    }
                    out.push_str(&format!("data: {}{eol}{eol}", item["data"]));
                }
            }
        }
        out.into_bytes()
    }

    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.options["status"].as_u64().unwrap() as u16).unwrap()
    }

    pub fn chunk_options(&self) -> ChunkOptions {
        let o = &self.options;
        ChunkOptions {
            id: o["id"].as_str().unwrap_or_default().to_owned(),
            model: o["model"].as_str().unwrap_or_default().to_owned(),
            created: o["created"].as_u64().unwrap_or_default(),
            include_usage: o["include_usage"].as_bool().unwrap_or_default(),
        }
    }
}

/// Any of the three stream translators.
pub enum Translator {
    Anthropic(AnthropicToChatStream),
    Gemini(GeminiToChatStream),
    Messages(ChatToMessagesStream),
}

impl Translator {
    pub fn for_fixture(fixture: &Fixture) -> Self {
        match fixture.kind.as_str() {
            "anthropic_stream" => {
                Translator::Anthropic(AnthropicToChatStream::new(fixture.chunk_options()))
            }
            "gemini_stream" => Translator::Gemini(GeminiToChatStream::new(fixture.chunk_options())),
            "chat_stream_to_messages" => {
                Translator::Messages(ChatToMessagesStream::new(MessagesStreamOptions {
                    model: fixture.options["model"].as_str().unwrap_or_default().to_owned(),
                    input_tokens: fixture.options["input_tokens"].as_u64().unwrap_or_default(),
                }))
            }
            other => panic!("{other} is not a stream kind"),
        }
    }

    pub fn push(&mut self, bytes: &[u8], out: &mut BytesMut) -> Result<(), BackendError> {
        match self {
            Translator::Anthropic(t) => t.push(bytes, out),
            Translator::Gemini(t) => t.push(bytes, out),
            Translator::Messages(t) => t.push(bytes, out),
        }
    }

    pub fn finish(&mut self, out: &mut BytesMut) -> Result<(), BackendError> {
        match self {
            Translator::Anthropic(t) => t.finish(out),
            Translator::Gemini(t) => t.finish(out),
            Translator::Messages(t) => t.finish(out),
        }
    }
}

/// Run a stream fixture's translator over `pieces`; the output as a list of events
/// (`{"event"?, "data"}`, `"[DONE]"`, and `{"error": code}` for an `Err`).
pub fn run_stream<P: AsRef<[u8]>>(fixture: &Fixture, pieces: &[P]) -> Vec<Value> {
    let mut translator = Translator::for_fixture(fixture);
    let mut out = BytesMut::new();
    let mut error = None;
    for piece in pieces {
        if let Err(e) = translator.push(piece.as_ref(), &mut out) {
            error = Some(e);
            break;
        }
    }
    if error.is_none() {
        error = translator.finish(&mut out).err();
    }
    let mut events = parse_events(&out);
    if let Some(error) = error {
        events.push(json!({"error": error.code.as_str()}));
    }
    events
}

/// Parse translated SSE output into comparable values; fails on a partial event.
pub fn parse_events(bytes: &[u8]) -> Vec<Value> {
    let mut parser = SseParser::new();
    let events = parser.feed(bytes);
    assert!(!parser.finish(), "output ends mid-event: {}", String::from_utf8_lossy(bytes));
    events
        .into_iter()
        .map(|event| {
            if event.is_done() {
                return json!("[DONE]");
            }
            let data: Value = serde_json::from_str(&event.data)
                .unwrap_or_else(|e| panic!("output event is not JSON ({e}): {}", event.data));
            match event.event {
                Some(name) => json!({"event": name, "data": data}),
                None => json!({"data": data}),
            }
        })
        .collect()
}

/// Differences between `expected` and `actual`, one line per field, with its path.
pub fn diff(expected: &Value, actual: &Value) -> Vec<String> {
    let mut out = Vec::new();
    walk("$", expected, actual, &mut out);
    out
}

fn walk(path: &str, expected: &Value, actual: &Value, out: &mut Vec<String>) {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => {
            for (key, value) in e {
                match a.get(key) {
                    Some(got) => walk(&format!("{path}.{key}"), value, got, out),
                    None => out.push(format!("{path}.{key}: missing (expected {value})")),
                }
            }
            for (key, value) in a {
                if !e.contains_key(key) {
                    out.push(format!("{path}.{key}: unexpected {value}"));
                }
            }
        }
        (Value::Array(e), Value::Array(a)) => {
            if e.len() != a.len() {
                out.push(format!("{path}: {} items, expected {}", a.len(), e.len()));
            }
            for (i, (ev, av)) in e.iter().zip(a).enumerate() {
                walk(&format!("{path}[{i}]"), ev, av, out);
            }
        }
        (e, a) => {
            if e != a {
                out.push(format!("{path}: got {a}, expected {e}"));
            }
        }
    }
}

/// Assert no differences, naming the fixture and every differing field.
pub fn assert_same(name: &str, expected: &Value, actual: &Value) {
    let differences = diff(expected, actual);
    assert!(
        differences.is_empty(),
        "{name}: {} field(s) differ:\n  {}\nactual: {actual:#}",
        differences.len(),
        differences.join("\n  ")
    );
}

/// A chat request body and the `BackendRequest` carrying it.
pub fn chat_request(
    body: &Value,
    endpoint: switchyard_core::Endpoint,
) -> switchyard_core::BackendRequest {
    let bytes = bytes::Bytes::from(body.to_string());
    switchyard_core::BackendRequest {
        endpoint,
        meta: switchyard_core::RequestMeta::parse(endpoint, &bytes).unwrap(),
        body: bytes,
        upstream_model: None,
        headers: http::HeaderMap::new(),
    }
}

/// A whole body, or a stream collected to its end (`Err` items become
/// `{"error": code}` events after the parsed ones).
pub async fn collect(body: switchyard_core::ResponseBody) -> (Vec<u8>, Option<BackendError>) {
    use futures_util::StreamExt;
    match body {
        switchyard_core::ResponseBody::Full(bytes) => (bytes.to_vec(), None),
        switchyard_core::ResponseBody::Stream(mut stream) => {
            let mut out = Vec::new();
            while let Some(item) = stream.next().await {
                match item {
                    Ok(bytes) => out.extend_from_slice(&bytes),
                    Err(error) => {
                        assert!(stream.next().await.is_none(), "a stream ends after its error");
                        return (out, Some(error));
                    }
                }
            }
            (out, None)
        }
    }
}

/// The content, tool-call arguments and finish reason of OpenAI chunk events.
#[derive(Debug, Default, PartialEq)]
pub struct Assembled {
    pub content: String,
    pub tool_name: Option<String>,
    pub tool_arguments: String,
    pub finish_reason: Option<String>,
    pub usage: Option<Value>,
    pub done: bool,
    pub role_first: bool,
}

pub fn assemble(events: &[Value]) -> Assembled {
    let mut out = Assembled::default();
    for (i, event) in events.iter().enumerate() {
        if event == "[DONE]" {
            assert_eq!(i, events.len() - 1, "[DONE] is last");
            out.done = true;
            continue;
        }
        let chunk = &event["data"];
        assert_eq!(chunk["object"], "chat.completion.chunk");
        if !chunk["usage"].is_null() {
            out.usage = Some(chunk["usage"].clone());
        }
        let Some(choice) = chunk["choices"].get(0) else { continue };
        if i == 0 {
            out.role_first = choice["delta"]["role"] == "assistant";
        }
        if let Some(text) = choice["delta"]["content"].as_str() {
            out.content.push_str(text);
        }
        if let Some(call) = choice["delta"]["tool_calls"].get(0) {
            if let Some(name) = call["function"]["name"].as_str() {
                out.tool_name = Some(name.to_owned());
            }
            out.tool_arguments.push_str(call["function"]["arguments"].as_str().unwrap_or(""));
        }
        if let Some(reason) = choice["finish_reason"].as_str() {
            out.finish_reason = Some(reason.to_owned());
        }
    }
    out
}

/// Text, tool calls (`{"id","name","arguments"}` in index order), finish reason and
/// usage of an OpenAI chunk stream with any number of tool calls.
pub fn assemble_calls(events: &[Value]) -> (String, Vec<Value>, String, Option<Value>) {
    let mut text = String::new();
    let mut calls: Vec<Value> = Vec::new();
    let mut finish = String::new();
    let mut usage = None;
    for event in events.iter().filter(|e| *e != "[DONE]") {
        let chunk = &event["data"];
        if !chunk["usage"].is_null() {
            usage = Some(chunk["usage"].clone());
        }
        let Some(choice) = chunk["choices"].get(0) else { continue };
        text.push_str(choice["delta"]["content"].as_str().unwrap_or(""));
        for call in choice["delta"]["tool_calls"].as_array().into_iter().flatten() {
            let index = call["index"].as_u64().unwrap() as usize;
            if index == calls.len() {
                assert!(
                    call["id"].is_string() && call["function"]["name"].is_string(),
                    "first fragment names the call"
                );
                calls.push(
                    json!({"id": call["id"], "name": call["function"]["name"], "arguments": ""}),
                );
            }
            let args = format!(
                "{}{}",
                calls[index]["arguments"].as_str().unwrap(),
                call["function"]["arguments"].as_str().unwrap_or("")
            );
            calls[index]["arguments"] = json!(args);
        }
        if let Some(reason) = choice["finish_reason"].as_str() {
            finish = reason.to_owned();
        }
    }
    (text, calls, finish, usage)
}
