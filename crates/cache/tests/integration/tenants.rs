//! Tenant isolation and the `Caches` request-path API.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use switchyard_cache::{CacheSettings, Caches, JoinRole, Plan, Subscription};
use switchyard_core::{Endpoint, RequestMeta, ResponseBody};

const BODY: &[u8] =
    br#"{"model":"m","temperature":0.7,"messages":[{"role":"user","content":"hi"}]}"#;

fn caches() -> Caches {
    let mut settings = CacheSettings::default();
    settings.response.enabled = true;
    Caches::new(&settings).unwrap()
}

/// Serve `BODY` for `tenant` through the caches; the upstream answers with its tenant.
fn serve(
    caches: &Caches,
    tenant: &'static str,
    headers: &HeaderMap,
    calls: &Arc<AtomicUsize>,
) -> Subscription {
    let meta = RequestMeta::parse(Endpoint::ChatCompletions, BODY).unwrap();
    let Plan::Share(plan) = caches.plan(tenant, Endpoint::ChatCompletions, &meta, headers, BODY)
    else {
        panic!("the response cache applies to every model by default once enabled");
    };
    let calls = Arc::clone(calls);
    caches.share(plan, move || async move {
        calls.fetch_add(1, Ordering::SeqCst);
        Ok(ResponseBody::Full(Bytes::from(format!("answer for {tenant}"))))
    })
}

#[tokio::test(start_paused = true)]
async fn tenant_a_answer_is_never_served_to_tenant_b() {
    let caches = caches();
    let calls = Arc::new(AtomicUsize::new(0));
    let none = HeaderMap::new();
    // Concurrent: A and B do not share a flight.
    let (a, b) =
        (serve(&caches, "tenant-a", &none, &calls), serve(&caches, "tenant-b", &none, &calls));
    assert_eq!((a.role(), b.role()), (JoinRole::Leader, JoinRole::Leader));
    assert_eq!(&a.collect().await.unwrap()[..], b"answer for tenant-a");
    assert_eq!(&b.collect().await.unwrap()[..], b"answer for tenant-b");
    // Stored: each gets their own.
    let (a, b) =
        (serve(&caches, "tenant-a", &none, &calls), serve(&caches, "tenant-b", &none, &calls));
    assert_eq!((a.role(), b.role()), (JoinRole::Cached, JoinRole::Cached));
    assert_eq!(&a.collect().await.unwrap()[..], b"answer for tenant-a");
    assert_eq!(&b.collect().await.unwrap()[..], b"answer for tenant-b");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    // A third tenant arriving later still gets a call of its own.
    let c = serve(&caches, "tenant-c", &none, &calls);
    assert_eq!(c.role(), JoinRole::Leader);
    assert_eq!(&c.collect().await.unwrap()[..], b"answer for tenant-c");
}

#[tokio::test(start_paused = true)]
async fn cache_control_no_cache_bypasses_the_lookup_and_refreshes() {
    let caches = caches();
    let calls = Arc::new(AtomicUsize::new(0));
    let none = HeaderMap::new();
    serve(&caches, "t", &none, &calls).collect().await.unwrap();
    let mut no_cache = HeaderMap::new();
    no_cache.insert(http::header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    let fresh = serve(&caches, "t", &no_cache, &calls);
    assert_eq!(fresh.role(), JoinRole::Leader);
    fresh.collect().await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(caches.responses.as_ref().unwrap().stats().entries, 1);
}

#[tokio::test(start_paused = true)]
async fn plan_bypasses_when_nothing_applies() {
    let caches = Caches::new(&CacheSettings::default()).unwrap();
    let none = HeaderMap::new();
    let sampled = RequestMeta::parse(Endpoint::ChatCompletions, BODY).unwrap();
    assert!(matches!(
        caches.plan("t", Endpoint::ChatCompletions, &sampled, &none, BODY),
        Plan::Bypass
    ));
    let greedy_body =
        br#"{"model":"m","temperature":0,"messages":[{"role":"user","content":"hi"}]}"#;
    let greedy = RequestMeta::parse(Endpoint::ChatCompletions, greedy_body).unwrap();
    let Plan::Share(plan) =
        caches.plan("t", Endpoint::ChatCompletions, &greedy, &none, greedy_body)
    else {
        panic!("greedy requests are de-duplicated by default");
    };
    assert!(plan.lookup());
    assert_eq!(plan.store().map(|s| s.name()), Some("dedup"));
    assert_eq!(plan.store().map(|s| s.ttl()), Some(Duration::from_secs(60)));
    let mut no_store = HeaderMap::new();
    no_store.insert(http::header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    assert!(matches!(
        caches.plan("t", Endpoint::ChatCompletions, &greedy, &no_store, greedy_body),
        Plan::Bypass
    ));
}
