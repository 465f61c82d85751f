//! What the router reads from a request body before it picks a backend, without
//! building the whole request: the body itself is forwarded as the original bytes.

use std::borrow::Cow;

use bytes::Bytes;
use serde::Deserialize;
use serde::de::{IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::backend::Endpoint;
use crate::error::{BackendError, Classify, ErrorCode};

/// Errors of this crate's own operations.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The body is not valid JSON, or a field has the wrong type.
    #[error("invalid request body: {0}")]
    Json(#[from] serde_json::Error),
    /// The body is valid JSON but misses something the endpoint needs.
    #[error("invalid request body: {0}")]
    Invalid(String),
}

/// Routing-relevant fields of a request body.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RequestMeta {
    /// The requested model.
    pub model: String,
    /// Whether the client asked for a stream.
    pub stream: bool,
    /// `stream_options.include_usage`.
    pub include_usage: bool,
    /// The OpenAI `user` field, a consistent-hash key candidate.
    pub user: Option<String>,
    /// Sampling temperature, if given: 0 means deterministic.
    pub temperature: Option<f64>,
    /// Sampling seed, if given.
    pub seed: Option<i64>,
    /// Hash of the start of the prompt (first 256 bytes of the first non-system
    /// message, or of the prompt/input), a consistent-hash key of last resort.
    pub prompt_hash: u64,
}

#[derive(Deserialize)]
struct RawMeta<'a> {
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<RawStreamOptions>,
    #[serde(borrow, default)]
    user: Option<Cow<'a, str>>,
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(default)]
    seed: Option<i64>,
    #[serde(borrow, default)]
    messages: Option<RawMessages<'a>>,
    #[serde(borrow, default)]
    prompt: Option<RawPrompt<'a>>,
    #[serde(borrow, default)]
    input: Option<RawPrompt<'a>>,
    // Anthropic's `system` is not needed for routing, only accepted.
    #[serde(default)]
    #[allow(dead_code)]
    system: Option<IgnoredAny>,
}

#[derive(Deserialize)]
struct RawStreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

#[derive(Deserialize)]
struct RawMessage<'a> {
    #[serde(borrow)]
    role: Cow<'a, str>,
    #[serde(borrow, default)]
    content: Option<RawPrompt<'a>>,
}

/// The `messages` array, walked without being collected: its length and the text of
/// the message the prompt hash starts from (the first that is not a system or
/// developer message, else the first).
struct RawMessages<'a> {
    len: usize,
    /// `Some(text)` of the chosen message so far; `Some(None)` when it has no text.
    first: Option<Option<Cow<'a, str>>>,
    /// Whether `first` is a non-system message (then it is final).
    settled: bool,
}

/// A prompt-like value: strings are kept (borrowed when unescaped) for the prompt hash,
/// anything else is skipped. Hand-written rather than an untagged enum, which would
/// buffer every value (and copy every message's text) before choosing a variant.
enum RawPrompt<'a> {
    Text(Cow<'a, str>),
    Other,
}

impl<'de: 'a, 'a> Deserialize<'de> for RawPrompt<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(PromptVisitor)
    }
}

struct PromptVisitor;

impl<'de> Visitor<'de> for PromptVisitor {
    type Value = RawPrompt<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(RawPrompt::Text(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(RawPrompt::Text(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(RawPrompt::Text(Cow::Owned(v)))
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(RawPrompt::Other)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(RawPrompt::Other)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(RawPrompt::Other)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(RawPrompt::Other)
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(RawPrompt::Other)
    }
    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(RawPrompt::Other)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(RawPrompt::Other)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(RawPrompt::Other)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for RawMessages<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_seq(MessagesVisitor)
    }
}

struct MessagesVisitor;

impl<'de> Visitor<'de> for MessagesVisitor {
    type Value = RawMessages<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an array of messages")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = RawMessages { len: 0, first: None, settled: false };
        loop {
            // Once the message to hash is found, the rest are only checked as JSON.
            if out.settled {
                while seq.next_element::<IgnoredAny>()?.is_some() {
                    out.len += 1;
                }
                break;
            }
            let Some(message) = seq.next_element::<RawMessage<'de>>()? else { break };
            out.len += 1;
            let system = message.role == "system" || message.role == "developer";
            if !system || out.first.is_none() {
                out.first = Some(match message.content {
                    Some(RawPrompt::Text(text)) => Some(text),
                    _ => None,
                });
                out.settled = !system;
            }
        }
        Ok(out)
    }
}

impl RequestMeta {
    /// Read the routing fields of `body` for `endpoint`, checking the shape the
    /// endpoint requires (`messages` for chat, `prompt` for completions, `input` for
    /// embeddings) without building the request.
    pub fn parse(endpoint: Endpoint, body: &[u8]) -> Result<Self, Error> {
        match body.iter().find(|b| !b.is_ascii_whitespace()) {
            None => return Err(Error::Invalid("the request body is empty".into())),
            Some(b'{') => {}
            Some(_) => return Err(Error::Invalid("the request body must be a JSON object".into())),
        }
        let raw: RawMeta<'_> = serde_json::from_slice(body)?;
        let model = match raw.model {
            Some(model) if !model.is_empty() => model.into_owned(),
            Some(_) => return Err(Error::Invalid("`model` must not be empty".into())),
            None => return Err(Error::Invalid("missing field `model`".into())),
        };
        let mut hash_source: &[u8] = b"";
        match endpoint {
            Endpoint::ChatCompletions | Endpoint::AnthropicMessages => {
                let Some(messages) = &raw.messages else {
                    return Err(Error::Invalid("missing field `messages`".into()));
                };
                if messages.len == 0 {
                    return Err(Error::Invalid("`messages` must not be empty".into()));
                }
                if let Some(Some(text)) = &messages.first {
                    hash_source = text.as_bytes();
                }
            }
            Endpoint::Completions => match &raw.prompt {
                Some(RawPrompt::Text(text)) => hash_source = text.as_bytes(),
                Some(RawPrompt::Other) => {}
                None => return Err(Error::Invalid("missing field `prompt`".into())),
            },
            Endpoint::Embeddings => match &raw.input {
                Some(RawPrompt::Text(text)) => hash_source = text.as_bytes(),
                Some(RawPrompt::Other) => {}
                None => return Err(Error::Invalid("missing field `input`".into())),
            },
        }
        let prefix = &hash_source[..hash_source.len().min(256)];
        Ok(RequestMeta {
            model,
            stream: raw.stream.unwrap_or(false),
            include_usage: raw.stream_options.and_then(|o| o.include_usage).unwrap_or(false),
            user: raw.user.map(Cow::into_owned),
            temperature: raw.temperature,
            seed: raw.seed,
            prompt_hash: fnv1a(prefix),
        })
    }

    /// Whether the answer is fully determined by the request (greedy or seeded), so
    /// identical requests may share one answer.
    pub fn is_deterministic(&self) -> bool {
        self.temperature == Some(0.0) || self.seed.is_some()
    }
}

/// Replace the top-level `model` of a JSON object body, keeping every other field and
/// the key order. Only used when an alias maps to a different upstream name: bodies
/// that pass through unchanged are never re-serialised.
pub fn rewrite_model(body: &[u8], model: &str) -> Result<Bytes, Error> {
    let mut value: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(body)?;
    value.insert("model".to_owned(), serde_json::Value::String(model.to_owned()));
    Ok(Bytes::from(serde_json::to_vec(&value)?))
}

/// 64-bit FNV-1a: tiny, stable across versions and platforms (unlike `DefaultHasher`),
/// which matters for consistent hashing across router instances.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

impl Classify for Error {
    fn code(&self) -> ErrorCode {
        ErrorCode::InvalidRequest
    }
}

impl From<Error> for BackendError {
    fn from(error: Error) -> Self {
        BackendError::new(error.code(), error.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_routing_fields() {
        let body = br#"{"model":"gpt-4o","stream":true,"stream_options":{"include_usage":true},
            "user":"u1","temperature":0,"messages":[{"role":"system","content":"s"},
            {"role":"user","content":"hello"}],"tools":[{"type":"function"}]}"#;
        let meta = RequestMeta::parse(Endpoint::ChatCompletions, body).unwrap();
        assert_eq!(meta.model, "gpt-4o");
        assert!(meta.stream && meta.include_usage);
        assert_eq!(meta.user.as_deref(), Some("u1"));
        assert!(meta.is_deterministic());
        assert_eq!(meta.prompt_hash, fnv1a(b"hello"));
    }

    #[test]
    fn rejects_bad_shapes_with_clear_messages() {
        let cases: &[(Endpoint, &[u8], &str)] = &[
            (Endpoint::ChatCompletions, b"{", "EOF"),
            (Endpoint::ChatCompletions, b"[]", "must be a JSON object"),
            (Endpoint::ChatCompletions, b" ", "is empty"),
            (Endpoint::ChatCompletions, br#"{"messages":[]}"#, "missing field `model`"),
            (Endpoint::ChatCompletions, br#"{"model":5}"#, "invalid type: integer `5`"),
            (Endpoint::ChatCompletions, br#"{"model":"m"}"#, "missing field `messages`"),
            (Endpoint::ChatCompletions, br#"{"model":"m","messages":[]}"#, "must not be empty"),
            (
                Endpoint::ChatCompletions,
                br#"{"model":"m","messages":[{}]}"#,
                "missing field `role`",
            ),
            (
                Endpoint::ChatCompletions,
                br#"{"model":"m","messages":[],"stream":"yes"}"#,
                "invalid type",
            ),
            (Endpoint::Completions, br#"{"model":"m"}"#, "missing field `prompt`"),
            (Endpoint::Embeddings, br#"{"model":"m"}"#, "missing field `input`"),
            (Endpoint::Embeddings, br#"{"model":"","input":"x"}"#, "must not be empty"),
        ];
        for (endpoint, body, expected) in cases {
            let err = RequestMeta::parse(*endpoint, body).unwrap_err().to_string();
            assert!(err.contains(expected), "{}: {err}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn rewrite_keeps_other_fields_in_order() {
        let out = rewrite_model(br#"{"z":1,"model":"alias","a":[1]}"#, "real").unwrap();
        assert_eq!(&out[..], br#"{"z":1,"model":"real","a":[1]}"#);
    }

    #[test]
    fn the_prompt_hash_starts_at_the_first_non_system_message() {
        let hash = |body: &[u8]| RequestMeta::parse(Endpoint::ChatCompletions, body).unwrap();
        let user = br#"{"model":"m","messages":[{"role":"system","content":"s"},
            {"role":"developer","content":"d"},{"role":"user","content":"hi\nthere"},
            {"role":"user","content":"later"}]}"#;
        assert_eq!(hash(user).prompt_hash, fnv1a(b"hi\nthere"));
        let only_system = br#"{"model":"m","messages":[{"role":"system","content":"s"},
            {"role":"system","content":"t"}]}"#;
        assert_eq!(hash(only_system).prompt_hash, fnv1a(b"s"));
        // Parts instead of text: no prompt hash, and nothing else is read from them.
        let parts = br#"{"model":"m","messages":[{"role":"user","content":[{"type":"text",
            "text":"x"}]},{"role":"user","content":"y"}],"prompt":{"a":[1,null,true,2.5]}}"#;
        assert_eq!(hash(parts).prompt_hash, fnv1a(b""));
        let null_content = br#"{"model":"m","messages":[{"role":"assistant","content":null}]}"#;
        assert_eq!(hash(null_content).prompt_hash, fnv1a(b""));
        let prompts = |body: &[u8]| RequestMeta::parse(Endpoint::Completions, body).unwrap();
        assert_eq!(prompts(br#"{"model":"m","prompt":"p"}"#).prompt_hash, fnv1a(b"p"));
        assert_eq!(prompts(br#"{"model":"m","prompt":["p"]}"#).prompt_hash, fnv1a(b""));
        assert!(
            RequestMeta::parse(Endpoint::ChatCompletions, br#"{"model":"m","messages":{}}"#)
                .unwrap_err()
                .to_string()
                .contains("an array of messages")
        );
    }

    #[test]
    fn escaped_model_names_are_decoded() {
        let meta = RequestMeta::parse(Endpoint::Completions, br#"{"model":"a\/b","prompt":[1,2]}"#)
            .unwrap();
        assert_eq!(meta.model, "a/b");
    }
}
