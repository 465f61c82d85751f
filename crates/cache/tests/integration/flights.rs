//! Single-flight: one upstream call per set of identical concurrent requests.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use switchyard_cache::{BodyKind, CacheKey, JoinRole, ResponseCache, SingleFlight, Subscription};
use switchyard_core::{BackendError, Endpoint, ErrorCode, ResponseBody};

use crate::util::{slow_stream, sse_chunks};

fn key(tenant: &str) -> CacheKey {
    CacheKey::compute(tenant, Endpoint::ChatCompletions, br#"{"model":"m","temperature":0}"#)
        .unwrap()
}

fn store(ttl: Duration) -> ResponseCache {
    ResponseCache::new("dedup", 16 << 20, ttl, None)
}

async fn chunks(mut sub: Subscription) -> Result<Vec<Bytes>, (Vec<Bytes>, BackendError)> {
    let mut out = Vec::new();
    while let Some(item) = sub.next_chunk().await {
        match item {
            Ok(chunk) => out.push(chunk),
            Err(error) => return Err((out, error)),
        }
    }
    Ok(out)
}

#[tokio::test(start_paused = true)]
async fn a_thousand_identical_requests_make_one_upstream_call() {
    let flights = SingleFlight::new("dedup", 1 << 20);
    let store = store(Duration::from_secs(60));
    let calls = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(tokio::sync::Barrier::new(1000));
    let mut tasks = Vec::new();
    for _ in 0..1000 {
        let (flights, store, calls, barrier) =
            (flights.clone(), store.clone(), Arc::clone(&calls), Arc::clone(&barrier));
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let sub = flights.join(key("t"), Some(&store), move || async move {
                calls.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
                Ok(ResponseBody::Full(Bytes::from(format!("{{\"answer\":{}}}", 42))))
            });
            let role = sub.role();
            (role, sub.collect().await.unwrap())
        }));
    }
    let mut bodies = Vec::new();
    let mut leaders = 0;
    for task in tasks {
        let (role, body) = task.await.unwrap();
        leaders += usize::from(role == JoinRole::Leader);
        bodies.push(body);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1, "exactly one upstream call");
    assert_eq!(leaders, 1);
    assert!(
        bodies.iter().all(|b| b == &bodies[0] && b.as_ptr() == bodies[0].as_ptr()),
        "byte-identical, same buffer"
    );
    assert_eq!(&bodies[0][..], b"{\"answer\":42}");
    assert_eq!(flights.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_hundred_streaming_clients_share_one_stream_including_late_joiners() {
    let flights = SingleFlight::new("dedup", 1 << 20);
    let store = store(Duration::from_secs(60));
    let calls = Arc::new(AtomicUsize::new(0));
    let expected = sse_chunks(20);
    let start = {
        let (calls, expected) = (Arc::clone(&calls), expected.clone());
        move || {
            calls.fetch_add(1, Ordering::SeqCst);
            let stream = slow_stream(
                expected,
                Duration::from_millis(10),
                false,
                Arc::new(AtomicBool::new(false)),
                Arc::new(AtomicUsize::new(0)),
            );
            async move { Ok(ResponseBody::Stream(stream)) }
        }
    };
    let mut tasks = Vec::new();
    for i in 0..100u64 {
        let (flights, store, start) = (flights.clone(), store.clone(), start.clone());
        tasks.push(tokio::spawn(async move {
            // Half join at once, half while the stream is running (it lasts 210 ms).
            if i >= 50 {
                tokio::time::sleep(Duration::from_millis(4 * (i - 50))).await;
            }
            let mut sub = flights.join(key("t"), Some(&store), start);
            assert_eq!(sub.ready().await.unwrap(), BodyKind::Stream);
            (sub.role(), chunks(sub).await.unwrap())
        }));
    }
    let mut followers = 0;
    for task in tasks {
        let (role, received) = task.await.unwrap();
        followers += usize::from(role == JoinRole::Follower);
        assert_eq!(received, expected, "every client gets the whole stream, in order");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1, "one upstream stream");
    assert_eq!(followers, 99);

    // Within the TTL the stored stream is replayed without an upstream call.
    let again = flights.join(key("t"), Some(&store), start.clone());
    assert_eq!(again.role(), JoinRole::Cached);
    assert_eq!(chunks(again).await.unwrap(), expected);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // After it, a new flight.
    tokio::time::advance(Duration::from_secs(61)).await;
    let later = flights.join(key("t"), Some(&store), start);
    assert_eq!(later.role(), JoinRole::Leader);
    assert_eq!(chunks(later).await.unwrap(), expected);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn the_leader_leaving_after_100ms_does_not_fail_followers() {
    let flights = SingleFlight::new("dedup", 1 << 20);
    let store = store(Duration::from_secs(60));
    let dropped = Arc::new(AtomicBool::new(false));
    let expected = sse_chunks(30);
    let start = {
        let (dropped, expected) = (Arc::clone(&dropped), expected.clone());
        move || {
            let stream = slow_stream(
                expected,
                Duration::from_millis(10),
                false,
                dropped,
                Arc::new(AtomicUsize::new(0)),
            );
            async move { Ok(ResponseBody::Stream(stream)) }
        }
    };
    let leader = flights.join(key("t"), Some(&store), start.clone());
    assert_eq!(leader.role(), JoinRole::Leader);
    let leader_task = tokio::spawn(chunks(leader));
    let mut followers = Vec::new();
    for _ in 0..5 {
        let sub = flights.join(key("t"), Some(&store), start.clone());
        assert_eq!(sub.role(), JoinRole::Follower);
        followers.push(tokio::spawn(chunks(sub)));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    leader_task.abort(); // the leader's client disconnects
    assert!(leader_task.await.unwrap_err().is_cancelled());
    for follower in followers {
        assert_eq!(follower.await.unwrap().unwrap(), expected);
    }
    assert!(dropped.load(Ordering::SeqCst), "the upstream stream finished");
    assert!(store.get(&key("t")).is_some(), "and the complete answer was stored");
}

#[tokio::test(start_paused = true)]
async fn when_every_client_leaves_the_upstream_call_is_dropped() {
    let flights = SingleFlight::new("dedup", 1 << 20);
    let dropped = Arc::new(AtomicBool::new(false));
    let produced = Arc::new(AtomicUsize::new(0));
    let start = {
        let (dropped, produced) = (Arc::clone(&dropped), Arc::clone(&produced));
        move || {
            let stream =
                slow_stream(sse_chunks(100), Duration::from_millis(10), false, dropped, produced);
            async move { Ok(ResponseBody::Stream(stream)) }
        }
    };
    let a = flights.join(key("t"), None, start.clone());
    let b = flights.join(key("t"), None, start.clone());
    let (a, b) = (tokio::spawn(chunks(a)), tokio::spawn(chunks(b)));
    tokio::time::sleep(Duration::from_millis(55)).await;
    a.abort();
    b.abort();
    let _ = (a.await, b.await);
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(dropped.load(Ordering::SeqCst), "the upstream stream was dropped");
    let so_far = produced.load(Ordering::SeqCst);
    assert!(so_far < 10, "stopped early: {so_far}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(produced.load(Ordering::SeqCst), so_far, "and nothing more was pulled");
    assert_eq!(flights.in_flight(), 0);
    // The next request starts afresh.
    let next = flights.join(key("t"), None, start);
    assert_eq!(next.role(), JoinRole::Leader);
    assert_eq!(chunks(next).await.unwrap().len(), 101);
}

#[tokio::test(start_paused = true)]
async fn failures_reach_every_follower_and_are_not_stored() {
    let flights = SingleFlight::new("dedup", 1 << 20);
    let store = store(Duration::from_secs(60));
    let calls = Arc::new(AtomicUsize::new(0));
    let start = {
        let calls = Arc::clone(&calls);
        move || {
            let first = calls.fetch_add(1, Ordering::SeqCst) == 0;
            let stream = slow_stream(
                sse_chunks(3),
                Duration::from_millis(10),
                first, // the first call breaks after its chunks, the second succeeds
                Arc::new(AtomicBool::new(false)),
                Arc::new(AtomicUsize::new(0)),
            );
            async move { Ok(ResponseBody::Stream(stream)) }
        }
    };
    let subs: Vec<_> =
        (0..10).map(|_| flights.join(key("t"), Some(&store), start.clone())).collect();
    for sub in subs {
        let (received, error) = chunks(sub).await.unwrap_err();
        assert_eq!(received, sse_chunks(3), "the chunks before the failure");
        assert_eq!(error.code, ErrorCode::UpstreamUnavailable);
        assert_eq!(error.message, "connection reset");
    }
    assert!(store.get(&key("t")).is_none(), "a failed stream is never stored");
    let retry = flights.join(key("t"), Some(&store), start);
    assert_eq!(retry.role(), JoinRole::Leader, "the next request starts a new flight");
    assert_eq!(chunks(retry).await.unwrap(), sse_chunks(3));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert!(store.get(&key("t")).is_some());
}

#[tokio::test(start_paused = true)]
async fn an_error_before_any_body_is_shared_then_forgotten() {
    let flights = SingleFlight::new("dedup", 1 << 20);
    let calls = Arc::new(AtomicUsize::new(0));
    let start = {
        let calls = Arc::clone(&calls);
        move || {
            calls.fetch_add(1, Ordering::SeqCst);
            async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                Err(BackendError::new(ErrorCode::UpstreamTimeout, "upstream timed out")
                    .with_retry_after(Some(Duration::from_secs(3))))
            }
        }
    };
    let mut a = flights.join(key("t"), None, start.clone());
    let b = flights.join(key("t"), None, start.clone());
    let error = a.ready().await.unwrap_err();
    assert_eq!(
        (error.code, error.retry_after),
        (ErrorCode::UpstreamTimeout, Some(Duration::from_secs(3)))
    );
    assert_eq!(b.into_body().await.unwrap_err().code, ErrorCode::UpstreamTimeout);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let c = flights.join(key("t"), None, start);
    assert_eq!(c.role(), JoinRole::Leader);
    assert!(c.collect().await.is_err());
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn a_panicking_upstream_fails_its_subscribers_instead_of_hanging() {
    let flights = SingleFlight::new("dedup", 1 << 20);
    let sub = flights.join(key("t"), None, || async {
        tokio::time::sleep(Duration::from_millis(5)).await;
        panic!("upstream bug");
    });
    let error = sub.collect().await.unwrap_err();
    assert_eq!(error.code, ErrorCode::Internal);
}

#[tokio::test(start_paused = true)]
async fn streams_past_the_flight_bound_are_paced_not_buffered_and_not_shared() {
    // 200 chunks of ~17 bytes through a 256-byte flight.
    let flights = SingleFlight::new("dedup", 256);
    let store = store(Duration::from_secs(60));
    let produced = Arc::new(AtomicUsize::new(0));
    let calls = Arc::new(AtomicUsize::new(0));
    let expected = sse_chunks(200);
    let start = {
        let (produced, calls, expected) =
            (Arc::clone(&produced), Arc::clone(&calls), expected.clone());
        move || {
            calls.fetch_add(1, Ordering::SeqCst);
            let stream = slow_stream(
                expected,
                Duration::from_millis(1),
                false,
                Arc::new(AtomicBool::new(false)),
                produced,
            );
            async move { Ok(ResponseBody::Stream(stream)) }
        }
    };
    let fast = flights.join(key("t"), Some(&store), start.clone());
    let mut slow = flights.join(key("t"), Some(&store), start.clone());
    let fast = tokio::spawn(chunks(fast));
    // The slow client reads one chunk, then stalls: the upstream must wait for it.
    let first = slow.next_chunk().await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let pulled = produced.load(Ordering::SeqCst);
    assert!(pulled < 40, "the upstream is paced by the slowest reader: {pulled} chunks pulled");
    // Past the bound the flight is closed to joiners: this one starts its own.
    let late = flights.join(key("t"), Some(&store), start.clone());
    assert_eq!(late.role(), JoinRole::Leader);
    let late = tokio::spawn(chunks(late));
    let mut rest = vec![first];
    rest.extend(chunks(slow).await.unwrap());
    assert_eq!(rest, expected);
    assert_eq!(fast.await.unwrap().unwrap(), expected);
    assert_eq!(late.await.unwrap().unwrap(), expected);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert!(store.get(&key("t")).is_none(), "too large to store");
}

#[tokio::test(start_paused = true)]
async fn private_flights_are_not_joined_and_skip_the_store_but_refresh_it() {
    let flights = SingleFlight::new("dedup", 1 << 20);
    let store = store(Duration::from_secs(60));
    store.insert(key("t"), switchyard_cache::CachedResponse::full(Bytes::from_static(b"old")));
    let fresh = flights.start_private(key("t"), Some(&store), || async {
        tokio::time::sleep(Duration::from_millis(10)).await;
        Ok(ResponseBody::Full(Bytes::from_static(b"new")))
    });
    assert_eq!(fresh.role(), JoinRole::Leader);
    let joined =
        flights.join(key("t"), Some(&store), || async { unreachable!("served from the store") });
    assert_eq!(joined.role(), JoinRole::Cached);
    assert_eq!(&joined.collect().await.unwrap()[..], b"old");
    assert_eq!(&fresh.collect().await.unwrap()[..], b"new");
    assert_eq!(&store.get(&key("t")).unwrap().body()[..], b"new");
}
