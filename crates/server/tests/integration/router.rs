//! The router end to end, in-process, over real sockets against mock upstreams.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use serde_json::json;
use switchyard_backends::OpenAiSettings;
use switchyard_test_support::{MockUpstream, Script, ms};

use crate::util::{self, Router, chat, openai, openai_with, spec, timeouts};

const CHAT: &str = "/v1/chat/completions";

#[tokio::test]
async fn non_streaming_round_trip_is_byte_identical_to_the_upstream() {
    let mock = MockUpstream::start(Script::ok().chunks(4)).await.unwrap();
    let router = Router::start(spec(vec![openai("a", &mock.url(), &["mock-model"])])).await;
    let body = serde_json::to_vec(&chat("mock-model", false)).unwrap();

    let reply = router.post_raw(CHAT, body.clone(), &[]).await;

    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, Script::ok().chunks(4).expected_body(CHAT, &body));
    assert_eq!(reply.headers["x-switchyard-backend"], "a");
    assert!(reply.headers.contains_key("x-request-id"));
    // The body reached the upstream as the client's bytes.
    assert_eq!(mock.last_post().unwrap().body, Bytes::from(body));
}

#[tokio::test]
async fn streaming_round_trip_is_byte_identical_to_the_upstream() {
    let script = Script::ok().chunks(8).chunk_delay(ms(2));
    let mock = MockUpstream::start(script.clone()).await.unwrap();
    let router = Router::start(spec(vec![openai("a", &mock.url(), &["mock-model"])])).await;
    let mut request = chat("mock-model", true);
    request["stream_options"] = json!({"include_usage": true});
    let body = serde_json::to_vec(&request).unwrap();

    let reply = router.post_raw(CHAT, body.clone(), &[]).await;

    assert_eq!(reply.status, 200);
    assert!(reply.headers["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    assert_eq!(
        reply.text(),
        String::from_utf8(script.expected_body(CHAT, &body).to_vec()).unwrap()
    );
    assert!(reply.text().ends_with("data: [DONE]\n\n"));
}

#[tokio::test]
async fn completions_and_embeddings_pass_through() {
    let mock = MockUpstream::start(Script::ok()).await.unwrap();
    let router = Router::start(spec(vec![openai("a", &mock.url(), &["mock-model"])])).await;
    for (path, body) in [
        ("/v1/completions", json!({"model": "mock-model", "prompt": "Once upon"})),
        ("/v1/embeddings", json!({"model": "mock-model", "input": ["a", "b"]})),
    ] {
        let bytes = serde_json::to_vec(&body).unwrap();
        let reply = router.post_raw(path, bytes.clone(), &[]).await;
        assert_eq!(reply.status, 200, "{path}: {}", reply.text());
        assert_eq!(reply.body, Script::ok().expected_body(path, &bytes), "{path}");
    }
}

#[tokio::test]
async fn client_credentials_are_never_forwarded_and_provider_key_is_injected() {
    let mock = MockUpstream::start(Script::ok()).await.unwrap();
    let settings = OpenAiSettings {
        name: "a".into(),
        url: mock.url(),
        api_key: Some("sk-provider".into()),
        ..OpenAiSettings::default()
    };
    let router = Router::start(spec(vec![openai_with(settings, &["mock-model"])])).await;
    let body = serde_json::to_vec(&chat("mock-model", false)).unwrap();
    let reply = router
        .post_raw(
            CHAT,
            body,
            &[
                ("authorization", "Bearer client-secret"),
                ("x-api-key", "client-key"),
                ("cookie", "c=1"),
            ],
        )
        .await;
    assert_eq!(reply.status, 200);
    let seen = mock.last_post().unwrap();
    assert_eq!(seen.header("authorization"), Some("Bearer sk-provider"));
    assert_eq!(seen.header("x-api-key"), None);
    assert_eq!(seen.header("cookie"), None);
    assert!(seen.header("x-request-id").is_some());
}

#[tokio::test]
async fn models_are_merged_over_backends_and_deduplicated() {
    let a = MockUpstream::start(Script::ok().models(["alpha", "shared"])).await.unwrap();
    let b = MockUpstream::start(Script::ok().models(["beta", "shared"])).await.unwrap();
    let router =
        Router::start(spec(vec![openai("a", &a.url(), &[]), openai("b", &b.url(), &[])])).await;

    let reply = router.get("/v1/models").await;

    assert_eq!(reply.status, 200);
    let json = reply.json();
    assert_eq!(json["object"], "list");
    let models: Vec<(String, String)> = json["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["id"].as_str().unwrap().into(), m["owned_by"].as_str().unwrap().into()))
        .collect();
    let expected = [("alpha", "a"), ("shared", "a"), ("beta", "b")];
    assert_eq!(models, expected.map(|(m, o)| (m.to_string(), o.to_string())));

    // Discovered models are routable.
    let reply = router.post(CHAT, &chat("beta", false)).await;
    assert_eq!(reply.headers["x-switchyard-backend"], "b");
}

#[tokio::test]
async fn round_robin_spreads_requests_over_backends_serving_the_model() {
    let a = MockUpstream::start(Script::ok()).await.unwrap();
    let b = MockUpstream::start(Script::ok()).await.unwrap();
    let router =
        Router::start(spec(vec![openai("a", &a.url(), &["m"]), openai("b", &b.url(), &["m"])]))
            .await;
    for _ in 0..10 {
        assert_eq!(router.post(CHAT, &chat("m", false)).await.status, 200);
    }
    assert_eq!(a.request_count_for(CHAT), 5);
    assert_eq!(b.request_count_for(CHAT), 5);
}

#[tokio::test]
async fn every_bad_request_gets_its_status_and_openai_error_json() {
    let mock = MockUpstream::start(Script::ok()).await.unwrap();
    let mut settings = util::settings();
    settings.max_request_size = 1024;
    let router =
        Router::start_with(spec(vec![openai("a", &mock.url(), &["mock-model"])]), settings).await;

    router.post(CHAT, &chat("no-such-model", false)).await.assert_error(404, "model_not_found");
    router.post_raw(CHAT, "{not json", &[]).await.assert_error(400, "invalid_request");
    router.post_raw(CHAT, "", &[]).await.assert_error(400, "invalid_request");
    let reply = router.post_raw(CHAT, r#"{"model": 42, "messages": []}"#, &[]).await;
    reply.assert_error(400, "invalid_request");
    assert!(reply.json()["error"]["message"].as_str().unwrap().contains("invalid type"));
    let reply = router.post_raw(CHAT, r#"{"model": "mock-model"}"#, &[]).await;
    assert!(reply.json()["error"]["message"].as_str().unwrap().contains("messages"));
    let huge =
        json!({"model": "mock-model", "messages": [{"role": "user", "content": "x".repeat(4096)}]});
    router.post(CHAT, &huge).await.assert_error(413, "payload_too_large");
    router
        .post_raw(
            CHAT,
            serde_json::to_vec(&chat("mock-model", false)).unwrap(),
            &[("content-type", "multipart/form-data; boundary=x")],
        )
        .await
        .assert_error(415, "unsupported_media_type");
    router.get("/v1/nope").await.assert_error(404, "not_found");
    router.get(CHAT).await.assert_error(405, "method_not_allowed");
    // Nothing reached the upstream.
    assert_eq!(mock.request_count_for(CHAT), 0);
}

#[tokio::test]
async fn body_over_the_limit_without_content_length_is_rejected() {
    let mock = MockUpstream::start(Script::ok()).await.unwrap();
    let mut settings = util::settings();
    settings.max_request_size = 1024;
    let router =
        Router::start_with(spec(vec![openai("a", &mock.url(), &["mock-model"])]), settings).await;
    // A streamed (chunked) body: the limit is enforced while reading.
    let chunks: Vec<Result<http_body::Frame<Bytes>, std::convert::Infallible>> =
        (0..8).map(|_| Ok(http_body::Frame::data(Bytes::from(vec![b' '; 512])))).collect();
    let body = http_body_util::StreamBody::new(futures_util::stream::iter(chunks));
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let request = Request::post(router.url(CHAT)).body(body).unwrap();
    let response = client.request(request).await.unwrap();
    util::Reply::read(response).await.assert_error(413, "payload_too_large");
}

#[tokio::test]
async fn unreachable_upstream_is_502_and_silent_upstream_is_504() {
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let silent = MockUpstream::start(Script::never_answer()).await.unwrap();
    let silent_backend = openai_with(
        OpenAiSettings {
            name: "silent".into(),
            url: silent.url(),
            timeouts: timeouts(200),
            ..Default::default()
        },
        &["slow"],
    );
    // Without active checks the router must find out on the request path.
    let mut settings = util::settings();
    settings.health.checks.enabled = false;
    let backends = spec(vec![openai("dead", &dead_url, &["gone"]), silent_backend]);
    let router = Router::start_with(backends, settings).await;

    router.post(CHAT, &chat("gone", false)).await.assert_error(502, "upstream_unavailable");
    let started = std::time::Instant::now();
    router.post(CHAT, &chat("slow", false)).await.assert_error(504, "upstream_timeout");
    // Three attempts (max_retries = 2) on the one backend, each cut at 200 ms.
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
}

#[tokio::test]
async fn a_failed_attempt_is_retried_on_the_next_backend() {
    let failing = MockUpstream::start(Script::status(503)).await.unwrap();
    let healthy = MockUpstream::start(Script::ok()).await.unwrap();
    let router = Router::start(spec(vec![
        openai("failing", &failing.url(), &["m"]),
        openai("healthy", &healthy.url(), &["m"]),
    ]))
    .await;
    for _ in 0..4 {
        let reply = router.post(CHAT, &chat("m", false)).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.headers["x-switchyard-backend"], "healthy");
    }
    // A stream that fails before its first byte is retried too.
    failing.set_script(Script::ok().error_after(0));
    for _ in 0..2 {
        let reply = router.post(CHAT, &chat("m", true)).await;
        assert_eq!(reply.status, 200);
        assert!(reply.text().ends_with("data: [DONE]\n\n"), "{}", reply.text());
    }
}

#[tokio::test]
async fn stream_cut_after_first_bytes_ends_with_an_error_event_and_no_done() {
    let mock = MockUpstream::start(Script::ok().chunks(20).error_after(10)).await.unwrap();
    let router = Router::start(spec(vec![openai("a", &mock.url(), &["m"])])).await;
    let reply = router.post(CHAT, &chat("m", true)).await;
    assert_eq!(reply.status, 200);
    let text = reply.text();
    assert!(!text.contains("[DONE]"), "{text}");
    let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
    assert_eq!(events.len(), 11, "{text}");
    assert!(events[10].starts_with("data: {\"error\""), "{text}");

    mock.set_script(Script::ok().chunks(20).reset_after(10));
    let reply = router.post(CHAT, &chat("m", true)).await;
    let text = reply.text();
    assert!(!text.contains("[DONE]"), "{text}");
    let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
    assert_eq!(events.iter().filter(|e| e.contains("chunk ")).count(), 10, "{text}");
    assert!(events.last().unwrap().contains("\"code\":\"upstream_unavailable\""), "{text}");
}

#[tokio::test]
async fn client_disconnect_mid_stream_closes_the_upstream_request_quickly() {
    let mock = MockUpstream::start(Script::ok().chunks(1000).chunk_delay(ms(20))).await.unwrap();
    let router = Router::start(spec(vec![openai("a", &mock.url(), &["m"])])).await;
    let body = serde_json::to_vec(&chat("m", true)).unwrap();
    let request = Request::post(router.url(CHAT)).body(Full::new(Bytes::from(body))).unwrap();
    let response = router.send(request).await;
    let mut body = response.into_body();
    // Read a few chunks, then hang up.
    for _ in 0..3 {
        body.frame().await.unwrap().unwrap();
    }
    drop(body);
    assert!(
        mock.wait_stream_cancelled(Duration::from_millis(500)).await,
        "upstream stream still open"
    );
}

#[tokio::test]
async fn aliases_rewrite_only_the_model_and_fallbacks_serve_when_a_model_has_no_backend() {
    let mock = MockUpstream::start(Script::ok()).await.unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let mut spec = spec(vec![
        openai("dead", &dead_url, &["primary"]),
        openai("a", &mock.url(), &["real-name"]),
    ]);
    spec.aliases = HashMap::from([("nick".into(), "real-name".into())]);
    spec.fallbacks = HashMap::from([("primary".into(), vec!["nick".into()])]);
    let router = Router::start(spec).await;

    let body = r#"{"messages":[{"role":"user","content":"hi"}],"model":"nick","z":{"keep":[1,2]}}"#;
    let reply = router.post_raw(CHAT, body, &[]).await;
    assert_eq!(reply.status, 200);
    let sent = mock.last_post().unwrap();
    assert_eq!(
        sent.body,
        r#"{"messages":[{"role":"user","content":"hi"}],"model":"real-name","z":{"keep":[1,2]}}"#
    );

    let reply = router.post(CHAT, &chat("primary", false)).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.headers["x-switchyard-model"], "real-name");
    assert_eq!(reply.json()["model"], "real-name");
}

#[tokio::test]
async fn hop_by_hop_headers_from_upstream_are_stripped() {
    let mock = MockUpstream::start(
        Script::ok().header("connection", "x-hop").header("x-hop", "1").header("x-end-to-end", "2"),
    )
    .await
    .unwrap();
    let router = Router::start(spec(vec![openai("a", &mock.url(), &["m"])])).await;
    let reply = router.post(CHAT, &chat("m", false)).await;
    assert_eq!(reply.headers.get("x-hop"), None);
    assert_eq!(reply.headers["x-end-to-end"], "2");
}

#[tokio::test]
async fn shutdown_drains_an_in_flight_stream() {
    let mock = MockUpstream::start(Script::ok().chunks(20).chunk_delay(ms(25))).await.unwrap();
    let mut router = Router::start(spec(vec![openai("a", &mock.url(), &["m"])])).await;
    let body = serde_json::to_vec(&chat("m", true)).unwrap();
    let request = Request::post(router.url(CHAT)).body(Full::new(Bytes::from(body))).unwrap();
    let response = router.send(request).await;
    router.trigger_shutdown();
    // New connections are refused soon after.
    let text = util::Reply::read(response).await.text();
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    assert_eq!(text.matches("chunk ").count(), 20);
    router.task.take().unwrap().await.unwrap().unwrap();
    assert!(tokio::net::TcpStream::connect(router.addr).await.is_err());
}

#[tokio::test]
async fn health_and_head_requests() {
    let router = Router::start(spec(vec![])).await;
    let reply = router.get("/health").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json(), json!({"status": "ok"}));
    let request = Request::builder()
        .method(Method::HEAD)
        .uri(router.url("/health"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(router.send(request).await.status(), 200);
}
