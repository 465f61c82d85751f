//! The canonical request key: `(tenant, endpoint, JSON body)` to a 16-byte digest that
//! is equal for semantically equal requests and stable across processes and versions.
//!
//! The body is written in a canonical binary form while it is parsed (no
//! `serde_json::Value` is built) and that is hashed in one pass: object members are
//! put in key order, so member order and whitespace never matter; arrays keep their order; strings are hashed after JSON
//! unescaping (`"\u0041"` equals `"A"`); integers and floats stay distinct (`1` is not
//! `1.0`: a strict upstream may accept one and reject the other), and `-0.0` equals
//! `0.0`. Top-level fields listed in [`IGNORED_FIELDS`] are left out; everything else,
//! including unknown fields, is assumed to change the answer.

use std::borrow::Cow;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Range;
use std::sync::Arc;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use switchyard_core::Endpoint;

use crate::error::{Error, Result};
use crate::siphash::Sip128;

/// Top-level body fields that do not change the answer and so are not part of the key.
///
/// Conservative on purpose: only end-user identifiers, which OpenAI documents as abuse
/// monitoring hints that the model never sees. Sharing an answer across a tenant's end
/// users is what de-duplication is for; the tenant itself is always part of the key.
/// `stream`, `stream_options`, `n`, `seed`, `metadata`, `store`, `service_tier`,
/// `prompt_cache_key` and any field this list does not name all count, because they
/// change the bytes the client receives (or might, for fields we do not know).
pub const IGNORED_FIELDS: &[&str] = &["user", "safety_identifier"];

/// Fixed, public SipHash keys: the digest must be reproducible by every router
/// instance sharing a Redis. They are not secrets; tenant isolation never relies on
/// the digest alone (see [`CacheKey`]).
const KEY_K0: u64 = 0x7377_6974_6368_7961; // "switchya"
const KEY_K1: u64 = 0x7264_2d63_6163_6865; // "rd-cache"
/// A second, independent keying for the tenant tag stored next to values in Redis.
const TAG_K0: u64 = 0x7465_6e61_6e74_2d74; // "tenant-t"
const TAG_K1: u64 = 0x6167_2d76_312d_2d2d; // "ag-v1---"
/// Bumped whenever the encoding below changes, so old Redis entries are never matched.
const DOMAIN: &[u8] = b"switchyard/cache-key/v1";

const T_NULL: u8 = b'n';
const T_FALSE: u8 = b'f';
const T_TRUE: u8 = b't';
const T_INT: u8 = b'i';
const T_FLOAT: u8 = b'd';
const T_STR: u8 = b's';
const T_ARRAY: u8 = b'[';
const T_ARRAY_END: u8 = b']';
const T_OBJECT: u8 = b'{';

/// The key of one request: a 16-byte digest plus the tenant it belongs to.
///
/// Equality compares the digest *and* the tenant string, so an entry stored for one
/// tenant can never be returned to another, even if two digests collided. `Hash`
/// uses the digest only. Pass a tenant *identifier* (an API key's configured name or
/// id), never the secret key itself; use `""` when there is no authentication.
#[derive(Clone, PartialEq, Eq)]
pub struct CacheKey {
    digest: [u8; 16],
    tenant: Arc<str>,
}

impl CacheKey {
    /// The key of `body` (a JSON object) sent by `tenant` to `endpoint`.
    ///
    /// Fails only if `body` is not a JSON object.
    pub fn compute(tenant: &str, endpoint: Endpoint, body: &[u8]) -> Result<Self> {
        Self::compute_with(tenant, endpoint, &[], body)
    }

    /// Like [`compute`](Self::compute), with extra `(name, value)` pairs that change the
    /// answer but are not in the body, such as an `anthropic-beta` header. Their order
    /// does not matter.
    pub fn compute_with(
        tenant: &str,
        endpoint: Endpoint,
        context: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Self> {
        let mut h = Sip128::new(KEY_K0, KEY_K1);
        h.write_prefixed(DOMAIN);
        h.write_prefixed(tenant.as_bytes());
        h.write_prefixed(endpoint.as_str().as_bytes());
        let mut context: Vec<(&str, &str)> = context.to_vec();
        context.sort_unstable();
        h.write_u64(context.len() as u64);
        for (name, value) in context {
            h.write_prefixed(name.as_bytes());
            h.write_prefixed(value.as_bytes());
        }
        let mut canonical = Vec::with_capacity(body.len() + 64);
        let mut de = serde_json::Deserializer::from_slice(body);
        TopLevel { out: &mut canonical }.deserialize(&mut de).map_err(Error::InvalidBody)?;
        de.end().map_err(Error::InvalidBody)?;
        h.write(&canonical);
        Ok(CacheKey { digest: h.finish(), tenant: Arc::from(tenant) })
    }

    /// The 16-byte digest.
    pub fn digest(&self) -> &[u8; 16] {
        &self.digest
    }

    /// The tenant this key belongs to.
    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    /// The digest in lowercase hex (32 characters), as used in Redis keys.
    pub fn to_hex(&self) -> String {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = String::with_capacity(32);
        for b in self.digest {
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0x0f)]));
        }
        out
    }

    /// A tag of the tenant under an independent keying, stored beside values in Redis
    /// so a value is only ever returned to the tenant that stored it.
    pub(crate) fn tenant_tag(&self) -> [u8; 16] {
        let mut h = Sip128::new(TAG_K0, TAG_K1);
        h.write_prefixed(self.tenant.as_bytes());
        h.finish()
    }

    /// The first half of the digest, for in-memory hashing.
    pub(crate) fn lo(&self) -> u64 {
        let mut buf = [0u8; 8];
        buf.copy_from_slice(&self.digest[..8]);
        u64::from_le_bytes(buf)
    }

    /// The second half of the digest.
    pub(crate) fn hi(&self) -> u64 {
        let mut buf = [0u8; 8];
        buf.copy_from_slice(&self.digest[8..]);
        u64::from_le_bytes(buf)
    }

    #[cfg(test)]
    pub(crate) fn from_parts(digest: [u8; 16], tenant: &str) -> Self {
        CacheKey { digest, tenant: Arc::from(tenant) }
    }
}

impl Hash for CacheKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.lo());
        state.write_u64(self.hi());
    }
}

impl fmt::Debug for CacheKey {
    // The tenant is left out: it may be sensitive, and the digest identifies the key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CacheKey({})", self.to_hex())
    }
}

/// The top level: a JSON object whose [`IGNORED_FIELDS`] are skipped.
struct TopLevel<'b> {
    out: &'b mut Vec<u8>,
}

/// Any JSON value, appended to `out` in canonical form.
struct Value<'b> {
    out: &'b mut Vec<u8>,
}

/// An object key, borrowed from the input when it has no escapes.
struct Key;

fn put_len(out: &mut Vec<u8>, len: usize) {
    out.extend_from_slice(&(len as u64).to_le_bytes());
}

impl<'de> DeserializeSeed<'de> for TopLevel<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for TopLevel<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        canonical_object(self.out, map, true)
    }
}

impl<'de> DeserializeSeed<'de> for Value<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Value<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        self.out.push(T_NULL);
        Ok(())
    }

    fn visit_bool<E>(self, v: bool) -> Result<(), E> {
        self.out.push(if v { T_TRUE } else { T_FALSE });
        Ok(())
    }

    fn visit_i64<E>(self, v: i64) -> Result<(), E> {
        self.out.push(T_INT);
        self.out.extend_from_slice(&i128::from(v).to_le_bytes());
        Ok(())
    }

    fn visit_u64<E>(self, v: u64) -> Result<(), E> {
        self.out.push(T_INT);
        self.out.extend_from_slice(&i128::from(v).to_le_bytes());
        Ok(())
    }

    fn visit_f64<E>(self, v: f64) -> Result<(), E> {
        // -0.0 == 0.0 for every sampler; JSON has no NaN or infinity.
        let v = if v == 0.0 { 0.0 } else { v };
        self.out.push(T_FLOAT);
        self.out.extend_from_slice(&v.to_bits().to_le_bytes());
        Ok(())
    }

    fn visit_str<E>(self, v: &str) -> Result<(), E> {
        self.out.push(T_STR);
        put_len(self.out, v.len());
        self.out.extend_from_slice(v.as_bytes());
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.out.push(T_ARRAY);
        while seq.next_element_seed(Value { out: &mut *self.out })?.is_some() {}
        self.out.push(T_ARRAY_END);
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        canonical_object(self.out, map, false)
    }
}

/// Append an object with its members in key order: each member value is written as
/// it is parsed, then the members are reordered. A repeated key keeps its last value,
/// as JSON parsers upstream do.
///
/// Every encoding is self-delimiting (tags, length prefixes, an array end marker, a
/// member count), so distinct canonical values never share an encoding.
fn canonical_object<'de, A: MapAccess<'de>>(
    out: &mut Vec<u8>,
    mut map: A,
    top_level: bool,
) -> Result<(), A::Error> {
    let start = out.len();
    let mut members: Vec<(Cow<'de, str>, Range<usize>)> = Vec::new();
    while let Some(key) = map.next_key_seed(Key)? {
        if top_level && IGNORED_FIELDS.contains(&key.as_ref()) {
            map.next_value::<IgnoredAny>()?;
            continue;
        }
        let from = out.len() - start;
        map.next_value_seed(Value { out: &mut *out })?;
        members.push((key, from..out.len() - start));
    }
    // Stable sort: among repeated keys the last one written stays last.
    members.sort_by(|a, b| a.0.cmp(&b.0));
    let mut kept = 0usize;
    for i in 0..members.len() {
        if members.get(i + 1).is_some_and(|next| next.0 == members[i].0) {
            continue;
        }
        members.swap(kept, i);
        kept += 1;
    }
    members.truncate(kept);
    let values = out.split_off(start);
    out.push(T_OBJECT);
    put_len(out, members.len());
    for (key, range) in &members {
        put_len(out, key.len());
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(&values[range.clone()]);
    }
    Ok(())
}

impl<'de> DeserializeSeed<'de> for Key {
    type Value = Cow<'de, str>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(tenant: &str, body: &str) -> CacheKey {
        CacheKey::compute(tenant, Endpoint::ChatCompletions, body.as_bytes()).unwrap()
    }

    #[test]
    fn order_whitespace_and_escapes_do_not_matter() {
        let a = key(
            "t",
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":0}"#,
        );
        let b = key(
            "t",
            "{ \"temperature\" : 0,\n \"messages\":[ {\"content\":\"h\\u0069\", \"role\":\"user\"} ],\t\"model\":\"m\" }",
        );
        assert_eq!(a, b);
        assert_eq!(a.digest(), b.digest());
    }

    #[test]
    fn output_affecting_differences_change_the_key() {
        let base = key("t", r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#);
        for other in [
            r#"{"model":"m2","messages":[{"role":"user","content":"hi"}]}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"hi!"}]}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":5}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"x-new-field":null}"#,
            r#"{"model":"m","messages":[{"content":"hi","role":"system"}]}"#,
        ] {
            assert_ne!(base.digest(), key("t", other).digest(), "{other}");
        }
        assert_ne!(base, key("u", r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#));
        let completions = CacheKey::compute(
            "t",
            Endpoint::Completions,
            br#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#,
        )
        .unwrap();
        assert_ne!(base, completions);
    }

    #[test]
    fn ignored_fields_and_numbers() {
        let a = key("t", r#"{"model":"m","temperature":0.0}"#);
        assert_eq!(a, key("t", r#"{"model":"m","temperature":0.0,"user":"alice"}"#));
        assert_eq!(a, key("t", r#"{"safety_identifier":"x","model":"m","temperature":-0.0}"#));
        assert_eq!(a, key("t", r#"{"model":"m","temperature":0e0}"#));
        // An integer and a float are different requests to a strict upstream.
        assert_ne!(a, key("t", r#"{"model":"m","temperature":0}"#));
        // A nested `user` is content, not the end-user id.
        assert_ne!(
            key("t", r#"{"model":"m","metadata":{"user":"a"}}"#),
            key("t", r#"{"model":"m","metadata":{"user":"b"}}"#)
        );
    }

    #[test]
    fn repeated_keys_keep_the_last_value_and_arrays_keep_order() {
        assert_eq!(key("t", r#"{"a":1,"b":2,"a":3}"#), key("t", r#"{"b":2,"a":3}"#));
        assert_ne!(key("t", r#"{"a":[1,2]}"#), key("t", r#"{"a":[2,1]}"#));
        // Nesting is part of the structure: [[1],2] is not [[1,2]] nor [1,[2]].
        let shapes = [r#"{"a":[[1],2]}"#, r#"{"a":[[1,2]]}"#, r#"{"a":[1,[2]]}"#, r#"{"a":[1,2]}"#];
        for (i, x) in shapes.iter().enumerate() {
            for y in &shapes[i + 1..] {
                assert_ne!(key("t", x), key("t", y), "{x} vs {y}");
            }
        }
    }

    #[test]
    fn context_is_order_insensitive_and_counts() {
        let body = br#"{"model":"m"}"#;
        let a = CacheKey::compute_with(
            "t",
            Endpoint::AnthropicMessages,
            &[("a", "1"), ("b", "2")],
            body,
        )
        .unwrap();
        let b = CacheKey::compute_with(
            "t",
            Endpoint::AnthropicMessages,
            &[("b", "2"), ("a", "1")],
            body,
        )
        .unwrap();
        let c =
            CacheKey::compute_with("t", Endpoint::AnthropicMessages, &[("a", "1")], body).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn rejects_non_objects_and_trailing_garbage() {
        for bad in ["[1]", "\"x\"", "{", "{} {}", ""] {
            assert!(
                CacheKey::compute("t", Endpoint::ChatCompletions, bad.as_bytes()).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn digest_is_stable_across_versions() {
        // Pinned: Redis entries written by one router version are read by the next.
        // Changing the encoding must bump DOMAIN, and this value with it.
        let k = key("tenant-a", r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#);
        assert_eq!(k.to_hex(), PINNED);
        assert_eq!(format!("{k:?}"), format!("CacheKey({PINNED})"));
    }

    const PINNED: &str = "3e9e7376a38d5a657d108edb59442727";

    #[test]
    fn same_digest_other_tenant_is_a_different_key() {
        let a = CacheKey::from_parts([7; 16], "a");
        let b = CacheKey::from_parts([7; 16], "b");
        assert_ne!(a, b);
        assert_ne!(a.tenant_tag(), b.tenant_tag());
    }
}
