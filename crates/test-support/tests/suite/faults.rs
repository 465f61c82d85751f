//! Scripted faults: statuses, delays, stalls, resets, error events, garbage,
//! never answering, sequences, client disconnects.

use std::time::Duration;

use http::{Method, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;
use switchyard_test_support::{Ending, MockUpstream, Script, ms};
use tokio::time::{Instant, timeout};

use crate::util::{chat, open, read_frames, send};

const CHAT: &str = "/v1/chat/completions";

#[tokio::test]
async fn status_error_body_and_extra_headers() {
    let mock = MockUpstream::start(Script::status(429).retry_after(7).header("x-mock", "yes"))
        .await
        .unwrap();
    let (status, headers, got) = send(mock.addr(), "POST", CHAT, &chat(false)).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(headers["retry-after"], "7");
    assert_eq!(headers["x-mock"], "yes");
    let error: switchyard_core::openai::ErrorBody = serde_json::from_slice(&got).unwrap();
    assert_eq!(error.error.code.as_deref(), Some("rate_limit_exceeded"));

    mock.set_script(Script::error(503, "warming up"));
    let (status, _, got) = send(mock.addr(), "GET", "/health", b"").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let json: Value = serde_json::from_slice(&got).unwrap();
    assert_eq!(json["error"]["message"], "warming up");

    let custom = serde_json::json!({"detail": "custom"});
    mock.set_script(Script::status(500).error_body(custom.clone()));
    let (status, _, got) = send(mock.addr(), "POST", CHAT, &chat(true)).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(serde_json::from_slice::<Value>(&got).unwrap(), custom);
}

#[tokio::test]
async fn delay_before_headers() {
    let mock = MockUpstream::start(Script::ok().delay(ms(120))).await.unwrap();
    let started = Instant::now();
    let response = open(mock.addr(), "POST", CHAT, &chat(false), &[]).await.unwrap();
    assert!(started.elapsed() >= ms(120), "headers came after {:?}", started.elapsed());
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn chunks_arrive_one_by_one_with_the_delay_between() {
    let script = Script::ok().chunks(3).chunk_delay(ms(40));
    let mock = MockUpstream::start(script.clone()).await.unwrap();
    let body = chat(true);
    let mut response = open(mock.addr(), "POST", CHAT, &body, &[]).await.unwrap();
    let mut arrivals = Vec::new();
    let mut frames = Vec::new();
    while let Some(frame) = response.body_mut().frame().await {
        arrivals.push(Instant::now());
        frames.push(frame.unwrap().into_data().unwrap());
    }
    let expected = script.render(&Method::POST, CHAT, &body);
    assert_eq!(frames, expected.frames, "one HTTP chunk per SSE event");
    for pair in arrivals.windows(2) {
        assert!(pair[1] - pair[0] >= ms(35), "gap {:?}", pair[1] - pair[0]);
    }
}

#[tokio::test]
async fn stall_after_k_keeps_the_connection_open_and_silent() {
    let script = Script::ok().chunks(10).stall_after(3);
    let mock = MockUpstream::start(script.clone()).await.unwrap();
    let body = chat(true);
    let rendered = script.render(&Method::POST, CHAT, &body);
    assert_eq!(rendered.ending, Ending::Stall);
    assert_eq!(rendered.frames.len(), 3);
    let mut response = open(mock.addr(), "POST", CHAT, &body, &[]).await.unwrap();
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(response.body_mut().frame().await.unwrap().unwrap().into_data().unwrap());
    }
    assert_eq!(got, rendered.frames);
    assert!(
        timeout(ms(200), response.body_mut().frame()).await.is_err(),
        "nothing after the stall"
    );
    assert_eq!(mock.stats().connections_open, 1);
    assert_eq!(mock.stats().streams_open, 1);
    drop(response);
    assert!(mock.wait_stream_cancelled(ms(100)).await);
    assert!(mock.wait_connections_at_most(0, ms(100)).await);
}

#[tokio::test]
async fn reset_after_k_aborts_the_connection() {
    let script = Script::ok().chunks(10).reset_after(4);
    let mock = MockUpstream::start(script.clone()).await.unwrap();
    let body = chat(true);
    let mut response = open(mock.addr(), "POST", CHAT, &body, &[]).await.unwrap();
    let (frames, clean) = read_frames(response.body_mut()).await;
    assert!(!clean, "a reset is not a clean end");
    assert_eq!(frames, script.render(&Method::POST, CHAT, &body).frames);
    assert!(mock.wait_for(ms(500), |s| s.connections_killed == 1 && s.connections_open == 0).await);
    assert_eq!(mock.stats().streams_cancelled, 0, "the mock's own reset is not a cancellation");
}

#[tokio::test]
async fn reset_is_a_tcp_rst() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let mock = MockUpstream::start(Script::ok().chunks(2).reset_after(0)).await.unwrap();
    let mut stream = tokio::net::TcpStream::connect(mock.addr()).await.unwrap();
    let body = chat(true);
    let head = format!(
        "POST {CHAT} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&body).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let error = loop {
        match stream.read(&mut buf).await {
            Ok(0) => panic!("clean EOF instead of a reset"),
            Ok(_) => continue,
            Err(e) => break e,
        }
    };
    assert_eq!(error.kind(), std::io::ErrorKind::ConnectionReset);
}

#[tokio::test]
async fn error_after_k_sends_an_error_event_and_no_done() {
    let script = Script::ok().chunks(10).error_after(10);
    let mock = MockUpstream::start(script.clone()).await.unwrap();
    let body = chat(true);
    let mut response = open(mock.addr(), "POST", CHAT, &body, &[]).await.unwrap();
    let (frames, clean) = read_frames(response.body_mut()).await;
    assert!(clean, "the body ends cleanly after the error event");
    assert_eq!(frames.len(), 11);
    let text: String = frames.iter().map(|f| String::from_utf8_lossy(f).into_owned()).collect();
    assert!(text.contains("chunk 9 "));
    assert!(!text.contains("[DONE]"));
    assert!(!text.contains("finish_reason\":\"stop"));
    let last = String::from_utf8(frames[10].to_vec()).unwrap();
    let error: Value =
        serde_json::from_str(last.strip_prefix("data: ").unwrap().trim_end()).unwrap();
    assert_eq!(error["error"]["type"], "server_error");
    assert_eq!(frames, script.render(&Method::POST, CHAT, &body).frames);

    // Before any content: the error event alone.
    let rendered = Script::ok().error_after(0).render(&Method::POST, CHAT, &body);
    assert_eq!(rendered.frames.len(), 1);
    assert!(rendered.body_string().starts_with("data: {\"error\""));
}

#[tokio::test]
async fn stream_faults_leave_non_streaming_requests_alone() {
    let mock = MockUpstream::start(Script::ok().reset_after(0)).await.unwrap();
    let (status, _, got) = send(mock.addr(), "POST", CHAT, &chat(false)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(got, Script::ok().expected_body(CHAT, &chat(false)));
}

#[tokio::test]
async fn garbage_is_neither_json_nor_sse() {
    let mock = MockUpstream::start(Script::garbage()).await.unwrap();
    let (status, headers, got) = send(mock.addr(), "POST", CHAT, &chat(false)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "application/json");
    assert!(serde_json::from_slice::<Value>(&got).is_err());

    let (_, headers, got) = send(mock.addr(), "POST", CHAT, &chat(true)).await;
    assert_eq!(headers["content-type"], "text/event-stream");
    assert!(std::str::from_utf8(&got).is_err(), "broken SSE carries invalid UTF-8");
    let mut parser = switchyard_core::sse::SseParser::new();
    let events = parser.feed(&got);
    assert!(events.iter().all(|e| serde_json::from_str::<Value>(&e.data).is_err()));
    assert!(!events.iter().any(|e| e.is_done()));

    mock.set_script(Script::ok().raw_body(&b"hello"[..]).header("content-type", "text/plain"));
    let (_, headers, got) = send(mock.addr(), "POST", CHAT, &chat(false)).await;
    assert_eq!(&got[..], b"hello");
    assert_eq!(headers["content-type"], "text/plain");
}

#[tokio::test]
async fn never_answer_reads_the_request_and_holds_it() {
    let mock = MockUpstream::start(Script::never_answer()).await.unwrap();
    let addr = mock.addr();
    let pending = tokio::spawn(async move { open(addr, "POST", CHAT, &chat(false), &[]).await });
    assert!(mock.wait_requests(1, Duration::from_secs(1)).await, "the request was read");
    assert_eq!(mock.stats().requests_hanging, 1);
    tokio::time::sleep(ms(150)).await;
    assert!(!pending.is_finished(), "no answer");
    pending.abort();
    assert!(mock.wait_for(ms(500), |s| s.requests_hanging == 0 && s.connections_open == 0).await);
    // Health checks hang too: the backend is wedged, not just slow on completions.
    let addr = mock.addr();
    let probe = tokio::spawn(async move { open(addr, "GET", "/health", b"", &[]).await });
    assert!(timeout(ms(150), probe).await.is_err());
}

#[tokio::test]
async fn sequences_script_attempts_and_probes_do_not_consume_them() {
    let mock = MockUpstream::start(Script::ok()).await.unwrap();
    mock.set_sequence([Script::status(503).times(2), Script::status(429), Script::ok()]);
    let post = |mock: &MockUpstream| {
        let addr = mock.addr();
        async move { send(addr, "POST", CHAT, &chat(false)).await.0 }
    };
    assert_eq!(post(&mock).await, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        send(mock.addr(), "GET", "/v1/models", b"").await.0,
        StatusCode::OK,
        "probes see the final script"
    );
    assert_eq!(post(&mock).await, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(post(&mock).await, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(post(&mock).await, StatusCode::OK);
    assert_eq!(post(&mock).await, StatusCode::OK);

    mock.push_script(Script::status(502));
    assert_eq!(post(&mock).await, StatusCode::BAD_GATEWAY);
    assert_eq!(post(&mock).await, StatusCode::OK);

    mock.set_script(Script::status(500));
    mock.set_probe_script(Some(Script::ok()));
    assert_eq!(post(&mock).await, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(send(mock.addr(), "GET", "/health", b"").await.0, StatusCode::OK);
    mock.set_probe_script(None);
    assert_eq!(send(mock.addr(), "GET", "/health", b"").await.0, StatusCode::INTERNAL_SERVER_ERROR);
}

#[tokio::test]
async fn client_disconnect_mid_stream_is_seen_within_100ms() {
    let mock = MockUpstream::start(Script::ok().chunks(1000).chunk_delay(ms(10))).await.unwrap();
    let mut response = open(mock.addr(), "POST", CHAT, &chat(true), &[]).await.unwrap();
    for _ in 0..2 {
        response.body_mut().frame().await.unwrap().unwrap();
    }
    assert!(!mock.wait_stream_cancelled(ms(30)).await, "not cancelled while the client reads");
    drop(response);
    assert!(mock.wait_stream_cancelled(ms(100)).await);
    assert!(mock.wait_connections_at_most(0, ms(100)).await);
    assert_eq!(mock.stats().streams_completed, 0);
}

#[tokio::test]
async fn wait_for_times_out_with_false() {
    let mock = MockUpstream::start(Script::ok()).await.unwrap();
    let started = Instant::now();
    assert!(!mock.wait_requests(1, ms(50)).await);
    assert!(started.elapsed() >= ms(50));
}
