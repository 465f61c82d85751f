//! What the router reads from a request body before it picks a backend, without
//! building the whole request: the body itself is forwarded as the original bytes.

use std::borrow::Cow;

use bytes::Bytes;
use serde::Deserialize;
use serde::de::IgnoredAny;

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
    messages: Option<Vec<RawMessage<'a>>>,
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

/// Any JSON value; strings are kept (borrowed when unescaped) for the prompt hash.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawPrompt<'a> {
    Text(#[serde(borrow)] Cow<'a, str>),
    Other(IgnoredAny),
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
                if messages.is_empty() {
                    return Err(Error::Invalid("`messages` must not be empty".into()));
                }
                let first = messages
                    .iter()
                    .find(|m| m.role != "system" && m.role != "developer")
                    .or(messages.first());
                if let Some(RawMessage { content: Some(RawPrompt::Text(text)), .. }) = first {
                    hash_source = text.as_bytes();
                }
            }
            Endpoint::Completions => match &raw.prompt {
                Some(RawPrompt::Text(text)) => hash_source = text.as_bytes(),
                Some(RawPrompt::Other(_)) => {}
                None => return Err(Error::Invalid("missing field `prompt`".into())),
            },
            Endpoint::Embeddings => match &raw.input {
                Some(RawPrompt::Text(text)) => hash_source = text.as_bytes(),
                Some(RawPrompt::Other(_)) => {}
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
    fn escaped_model_names_are_decoded() {
        let meta = RequestMeta::parse(Endpoint::Completions, br#"{"model":"a\/b","prompt":[1,2]}"#)
            .unwrap();
        assert_eq!(meta.model, "a/b");
    }
}
