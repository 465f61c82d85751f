// cargo run -p switchyard-cache --example dedup
//! A tiny gateway loop embedding `switchyard-cache`: 50 clients send the same greedy
//! streaming request at once, one of them hangs up early, and a fake upstream streams
//! its answer slowly. One upstream stream serves everyone; a request after it is
//! answered from the de-duplication store; another tenant gets its own call.

#![allow(clippy::print_stdout, clippy::expect_used)] // reason: a demo program printing its results

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use switchyard_cache::{CacheSettings, Caches, JoinRole, Plan};
use switchyard_core::{BackendError, Endpoint, RequestMeta, ResponseBody};

const BODY: &[u8] = br#"{"model":"tiny","stream":true,"temperature":0,
    "messages":[{"role":"user","content":"count to five"}]}"#;

/// The upstream: five SSE chunks, 20 ms apart.
async fn upstream(calls: Arc<AtomicUsize>) -> Result<ResponseBody, BackendError> {
    calls.fetch_add(1, Ordering::SeqCst);
    let chunks = (1..=5)
        .map(|i| Bytes::from(format!("data: {{\"token\":\"{i}\"}}\n\n")))
        .chain([Bytes::from_static(b"data: [DONE]\n\n")]);
    let stream = futures_util::stream::iter(chunks).then(|chunk| async move {
        tokio::time::sleep(Duration::from_millis(20)).await;
        Ok(chunk)
    });
    Ok(ResponseBody::Stream(Box::pin(stream)))
}

/// What a server handler does with one request: plan, then share or bypass.
async fn handle(caches: &Caches, tenant: &str, calls: &Arc<AtomicUsize>) -> (JoinRole, String) {
    let meta = RequestMeta::parse(Endpoint::ChatCompletions, BODY).expect("valid body");
    let headers = http::HeaderMap::new();
    let Plan::Share(plan) = caches.plan(tenant, Endpoint::ChatCompletions, &meta, &headers, BODY)
    else {
        unreachable!("greedy requests are de-duplicated by default");
    };
    let calls = Arc::clone(calls);
    let subscription = caches.share(plan, move || upstream(calls));
    let role = subscription.role();
    let ResponseBody::Stream(mut stream) = subscription.into_body().await.expect("answered") else {
        unreachable!("a stream was asked for");
    };
    let mut text = String::new();
    while let Some(chunk) = stream.next().await {
        text.push_str(&String::from_utf8_lossy(&chunk.expect("no upstream error")));
    }
    (role, text)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let caches = Caches::new(&CacheSettings::default()).expect("default settings are valid");
    let calls = Arc::new(AtomicUsize::new(0));

    // One client hangs up after 30 ms; the others still get everything.
    let quitter = {
        let (caches, calls) = (caches.clone(), Arc::clone(&calls));
        tokio::spawn(async move { handle(&caches, "acme", &calls).await })
    };
    let clients: Vec<_> = (0..49)
        .map(|_| {
            let (caches, calls) = (caches.clone(), Arc::clone(&calls));
            tokio::spawn(async move { handle(&caches, "acme", &calls).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(30)).await;
    quitter.abort();

    let mut bodies = Vec::new();
    let mut followers = 0;
    for client in clients {
        let (role, body) = client.await.expect("client task");
        followers += usize::from(role == JoinRole::Follower);
        bodies.push(body);
    }
    let identical = bodies.iter().all(|b| b == &bodies[0]);
    println!("49 clients finished: {followers} followers, identical streams: {identical}");
    println!("upstream calls so far: {}", calls.load(Ordering::SeqCst));

    let (role, _) = handle(&caches, "acme", &calls).await;
    println!("same request again: {role:?}, upstream calls: {}", calls.load(Ordering::SeqCst));
    let (role, _) = handle(&caches, "globex", &calls).await;
    println!("another tenant: {role:?}, upstream calls: {}", calls.load(Ordering::SeqCst));
    println!("dedup store: {:?}", caches.dedup_results.as_ref().map(|store| store.stats()));
}
