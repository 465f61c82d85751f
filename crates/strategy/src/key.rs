//! The request key consistent hashing routes by, and the stable hashing behind it.
//!
//! Hashes here must never change between versions or differ between machines: two
//! router instances behind one load balancer must send a session to the same backend.
//! So they are FNV-1a (from core) followed by a fixed 64-bit finaliser, not std's
//! randomly keyed `DefaultHasher`.

use switchyard_core::{RequestMeta, fnv1a};

/// What a request is routed by under `ConsistentHash`: the first of a session header
/// value, the OpenAI `user` field, or the prompt-prefix hash that the caller has.
///
/// Only the 64-bit hash is kept, so the key is `Copy` and building it allocates nothing.
/// Other strategies ignore it; [`RequestKey::NONE`] lets `ConsistentHash` fall back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RequestKey(Option<u64>);

impl RequestKey {
    /// No key: `ConsistentHash` hands the request to the fallback strategy.
    pub const NONE: RequestKey = RequestKey(None);

    /// The key from what the caller has, in order of preference: the session header
    /// value (`routing.consistent_hash.header`), the OpenAI `user` field, the hash of
    /// the prompt prefix. Empty strings count as absent.
    pub fn new(session: Option<&str>, user: Option<&str>, prompt_hash: Option<u64>) -> Self {
        let text = session.filter(|s| !s.is_empty()).or(user.filter(|u| !u.is_empty()));
        match (text, prompt_hash) {
            (Some(text), _) => RequestKey::from_str(text),
            (None, Some(hash)) => RequestKey::from_hash(hash),
            (None, None) => RequestKey::NONE,
        }
    }

    /// The key for a parsed request: `session` (the header value, if any), then
    /// `meta.user`, then `meta.prompt_hash` unless the request had no prompt text.
    pub fn from_meta(session: Option<&str>, meta: &RequestMeta) -> Self {
        let prompt = (meta.prompt_hash != EMPTY_PROMPT_HASH).then_some(meta.prompt_hash);
        RequestKey::new(session, meta.user.as_deref(), prompt)
    }

    /// The key for an arbitrary string (a session id, a user id, a tenant).
    #[allow(clippy::should_implement_trait)] // reason: infallible; `FromStr` would add an error type for nothing
    pub fn from_str(text: &str) -> Self {
        RequestKey::from_hash(fnv1a(text.as_bytes()))
    }

    /// The key for a hash the caller computed (e.g. core's `RequestMeta::prompt_hash`).
    pub const fn from_hash(hash: u64) -> Self {
        RequestKey(Some(mix(hash)))
    }

    /// The well-mixed 64-bit point on the ring, if there is a key.
    pub const fn hash(self) -> Option<u64> {
        self.0
    }
}

/// `fnv1a(b"")`: what `RequestMeta` holds when the request had no prompt text.
const EMPTY_PROMPT_HASH: u64 = 0xcbf2_9ce4_8422_2325;

/// The 64-bit finaliser of MurmurHash3: FNV-1a of short, similar strings ("user-1",
/// "user-2") differs in few bits; this spreads them over the whole ring.
pub(crate) const fn mix(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h
}

/// The ring point of virtual node `replica` of backend `name`.
pub(crate) fn ring_point(name: &str, replica: u32) -> u64 {
    let mut hash = fnv1a(name.as_bytes());
    for byte in replica.to_le_bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix(hash)
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_core::Endpoint;

    #[test]
    fn preference_is_session_then_user_then_prompt() {
        let by_session = RequestKey::new(Some("s1"), Some("u1"), Some(7));
        assert_eq!(by_session, RequestKey::from_str("s1"));
        assert_eq!(RequestKey::new(None, Some("u1"), Some(7)), RequestKey::from_str("u1"));
        assert_eq!(RequestKey::new(Some(""), Some("u1"), None), RequestKey::from_str("u1"));
        assert_eq!(RequestKey::new(None, Some(""), Some(7)), RequestKey::from_hash(7));
        assert_eq!(RequestKey::new(None, None, None), RequestKey::NONE);
        assert_eq!(RequestKey::NONE.hash(), None);
    }

    #[test]
    fn from_meta_skips_an_absent_prompt() {
        let body = br#"{"model":"m","prompt":[1,2,3]}"#;
        let meta = RequestMeta::parse(Endpoint::Completions, body).unwrap();
        assert_eq!(meta.prompt_hash, EMPTY_PROMPT_HASH);
        assert_eq!(RequestKey::from_meta(None, &meta), RequestKey::NONE);

        let body = br#"{"model":"m","user":"alice","messages":[{"role":"user","content":"hi"}]}"#;
        let meta = RequestMeta::parse(Endpoint::ChatCompletions, body).unwrap();
        assert_eq!(RequestKey::from_meta(None, &meta), RequestKey::from_str("alice"));
        assert_eq!(RequestKey::from_meta(Some("sess"), &meta), RequestKey::from_str("sess"));
        let anonymous = RequestMeta { user: None, ..meta };
        assert_eq!(RequestKey::from_meta(None, &anonymous), RequestKey::from_hash(fnv1a(b"hi")));
    }

    #[test]
    fn hashes_are_stable_across_versions() {
        // Pinned values: changing them silently re-shards every deployment.
        assert_eq!(RequestKey::from_str("user-1").hash(), Some(mix(fnv1a(b"user-1"))));
        assert_eq!(mix(0), 0);
        assert_eq!(mix(1), 0xb456_bcfc_34c2_cb2c);
        assert_ne!(ring_point("a", 0), ring_point("a", 1));
        assert_ne!(ring_point("a", 0), ring_point("b", 0));
    }
}
