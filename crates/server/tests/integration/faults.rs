//! Fault tests: backends killed under load, hanging, failing and rate limiting, with
//! real sockets. The promise: while one backend that can serve a model is alive,
//! clients see no failures; when none is, they get a fast, clear error.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use switchyard_backends::OpenAiSettings;
use switchyard_server::ServerSettings;
use switchyard_test_support::{MockUpstream, Script, ms};

use crate::util::{self, Router, chat, openai, openai_with, spec, timeouts};

const CHAT: &str = "/v1/chat/completions";

fn fast_checks() -> ServerSettings {
    let mut settings = util::settings();
    settings.health.checks.interval = ms(200);
    settings.health.checks.timeout = ms(100);
    settings.health.checks.unhealthy_threshold = 2;
    settings.health.checks.healthy_threshold = 2;
    settings
}

async fn backend_health(router: &Router, name: &str) -> Value {
    let json = router.get("/admin/health").await.json();
    json["backends"].as_array().unwrap().iter().find(|b| b["backend"] == name).unwrap().clone()
}

async fn wait_until(timeout: Duration, mut check: impl AsyncFnMut() -> bool) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < timeout {
        if check().await {
            return Some(started.elapsed());
        }
        tokio::time::sleep(ms(10)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_killed_under_load_fails_no_client_request_and_rejoins_after_restart() {
    let a = MockUpstream::start(Script::ok()).await.unwrap();
    let b = MockUpstream::start(Script::ok()).await.unwrap();
    let settings = fast_checks();
    let interval_plus_timeout = settings.health.checks.interval + settings.health.checks.timeout;
    let router = Arc::new(
        Router::start_with(
            spec(vec![openai("a", &a.url(), &["m"]), openai("b", &b.url(), &["m"])]),
            settings,
        )
        .await,
    );

    let done = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..16 {
        let (router, done, failures, stop) =
            (router.clone(), done.clone(), failures.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let reply = router.post(CHAT, &chat("m", false)).await;
                done.fetch_add(1, Ordering::SeqCst);
                if reply.status != 200 {
                    failures.fetch_add(1, Ordering::SeqCst);
                    eprintln!("failed: {} {}", reply.status, reply.text());
                }
            }
        }));
    }

    wait_until(Duration::from_secs(30), async || done.load(Ordering::SeqCst) > 500).await.unwrap();
    a.shutdown().await;
    let marked = wait_until(Duration::from_secs(5), async || {
        backend_health(&router, "a").await["available"] == false
    })
    .await
    .expect("a was never marked unavailable");
    assert!(marked <= interval_plus_timeout, "marked unavailable after {marked:?}");
    // Active checks agree after unhealthy_threshold (2) failed probes.
    wait_until(Duration::from_secs(5), async || {
        backend_health(&router, "a").await["state"] == "unhealthy"
    })
    .await
    .expect("active checks never marked a unhealthy");

    let served_before_restart = a.request_count_for(CHAT);
    a.restart().await.unwrap();
    let mut successes = Value::Null;
    wait_until(Duration::from_secs(10), async || {
        let health = backend_health(&router, "a").await;
        successes = health["consecutive_successes"].clone();
        health["available"] == true && health["state"] == "healthy"
    })
    .await
    .expect("a never rejoined");
    // It rejoined after healthy_threshold (2) consecutive good checks (a third may have
    // landed between two looks at /admin/health).
    let successes = successes.as_u64().unwrap();
    assert!((2..=3).contains(&successes), "rejoined after {successes} good checks");
    wait_until(Duration::from_secs(10), async || {
        a.request_count_for(CHAT) > served_before_restart + 20
            && done.load(Ordering::SeqCst) >= 2000
    })
    .await
    .expect("a got no traffic after rejoining");
    stop.store(true, Ordering::SeqCst);

    for worker in workers {
        worker.await.unwrap();
    }
    assert_eq!(failures.load(Ordering::SeqCst), 0, "client requests failed");
    assert!(done.load(Ordering::SeqCst) >= 2000);
    assert!(b.request_count_for(CHAT) > 0);
    // Connections were pre-warmed when it rejoined: model-list probes on top of the checks.
    assert!(a.request_count_for("/v1/models") >= 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_never_answers_times_out_at_first_byte_and_the_other_serves() {
    let hang = MockUpstream::start(Script::never_answer()).await.unwrap();
    // Its health endpoint answers: it looks alive, but hangs on generation.
    hang.set_probe_script(Some(Script::ok()));
    let ok = MockUpstream::start(Script::ok()).await.unwrap();
    let first_byte = ms(300);
    let hanging = openai_with(
        OpenAiSettings {
            name: "hang".into(),
            url: hang.url(),
            timeouts: timeouts(300),
            ..Default::default()
        },
        &["m"],
    );
    let mut settings = util::settings();
    settings.retry.backoff.initial = Duration::ZERO;
    let router =
        Router::start_with(spec(vec![hanging, openai("ok", &ok.url(), &["m"])]), settings).await;

    // Round robin starts with `hang`.
    let started = Instant::now();
    let reply = router.post(CHAT, &chat("m", false)).await;
    let elapsed = started.elapsed();
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.headers["x-switchyard-backend"], "ok");
    assert_eq!(hang.request_count_for(CHAT), 1);
    let low = first_byte.mul_f64(0.9);
    let high = first_byte.mul_f64(1.1) + ms(30);
    assert!(elapsed >= low && elapsed <= high, "first-byte timeout fired after {elapsed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_backend_fails_attempts_stay_within_the_retry_budget_and_clients_fail_fast() {
    let a = MockUpstream::start(Script::status(503)).await.unwrap();
    let b = MockUpstream::start(Script::status(503)).await.unwrap();
    a.set_probe_script(Some(Script::ok()));
    b.set_probe_script(Some(Script::ok()));
    let router = Arc::new(
        Router::start(spec(vec![openai("a", &a.url(), &["m"]), openai("b", &b.url(), &["m"])]))
            .await,
    );

    const CLIENTS: usize = 200;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let router = router.clone();
        tasks.push(tokio::spawn(async move {
            let started = Instant::now();
            let reply = router.post(CHAT, &chat("m", false)).await;
            (reply.status.as_u16(), reply.json(), started.elapsed())
        }));
    }
    for task in tasks {
        let (status, json, elapsed) = task.await.unwrap();
        assert_eq!(status, 503, "{json}");
        assert!(json["error"]["message"].is_string(), "{json}");
        assert!(elapsed < Duration::from_millis(1500), "a client waited {elapsed:?}");
    }
    let seconds = started.elapsed().as_secs_f64().ceil();
    let attempts = a.request_count_for(CHAT) + b.request_count_for(CHAT);
    let bound = (1.2 * CLIENTS as f64 + 3.0 * seconds) as usize;
    assert!(
        attempts <= bound,
        "{attempts} upstream attempts for {CLIENTS} requests (bound {bound})"
    );
    assert!(attempts >= CLIENTS.min(10), "the backends were not tried: {attempts}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_with_retry_after_takes_the_backend_out_for_that_long() {
    let limited = MockUpstream::start(Script::ok()).await.unwrap();
    limited.set_sequence([Script::status(429).retry_after(1), Script::ok()]);
    let other = MockUpstream::start(Script::ok()).await.unwrap();
    let mut settings = util::settings();
    settings.retry.backoff.initial = Duration::ZERO;
    let router = Router::start_with(
        spec(vec![
            openai("limited", &limited.url(), &["m"]),
            openai("other", &other.url(), &["m"]),
        ]),
        settings,
    )
    .await;

    // The first request meets the 429 and is retried on the other backend.
    let reply = router.post(CHAT, &chat("m", false)).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.headers["x-switchyard-backend"], "other");
    let limited_at = Instant::now();
    while limited_at.elapsed() < ms(800) {
        let reply = router.post(CHAT, &chat("m", false)).await;
        assert_eq!(reply.headers["x-switchyard-backend"], "other");
        tokio::time::sleep(ms(20)).await;
    }
    assert_eq!(limited.request_count_for(CHAT), 1, "traffic reached the rate-limited backend");
    tokio::time::sleep(ms(300)).await;
    let mut served_by = HashMap::new();
    for _ in 0..6 {
        let reply = router.post(CHAT, &chat("m", false)).await;
        *served_by
            .entry(reply.headers["x-switchyard-backend"].to_str().unwrap().to_owned())
            .or_insert(0) += 1;
    }
    assert!(served_by.get("limited").copied().unwrap_or(0) > 0, "{served_by:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_whose_only_backend_is_down_is_served_through_its_fallback_chain() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let backup = MockUpstream::start(Script::ok()).await.unwrap();
    let mut spec = spec(vec![
        openai("dead", &dead_url, &["gpt-4o"]),
        openai("backup", &backup.url(), &["local-model"]),
    ]);
    spec.fallbacks = HashMap::from([("gpt-4o".into(), vec!["local-model".into()])]);
    let router = Router::start_with(spec, fast_checks()).await;

    for stream in [false, true] {
        let reply = router.post(CHAT, &chat("gpt-4o", stream)).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(reply.headers["x-switchyard-model"], "local-model");
        assert_eq!(reply.headers["x-switchyard-backend"], "backup");
    }
    // The backup received the fallback model's name.
    assert_eq!(backup.last_post().unwrap().model().as_deref(), Some("local-model"));
    // Nothing was tried against the dead backend: active checks took it out at start-up.
    assert_eq!(backend_health(&router, "dead").await["state"], "unhealthy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_backend_available_is_a_fast_503_not_a_hang() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let router =
        Router::start_with(spec(vec![openai("dead", &dead_url, &["m"])]), fast_checks()).await;
    let started = Instant::now();
    router.post(CHAT, &chat("m", false)).await.assert_error(503, "no_healthy_backend");
    assert!(started.elapsed() < ms(500), "{:?}", started.elapsed());
    let backends = router.get("/admin/backends").await.json();
    assert_eq!(backends["backends"][0]["name"], "dead");
    assert_eq!(backends["backends"][0]["models"][0], "m");
    assert_eq!(backends["backends"][0]["health"]["available"], false);
}
