//! The HTTP/1.1 connection loop over raw sockets: keep-alive, pipelining, `connection:
//! close`, HEAD, the requests it hands to hyper, its timeouts and shutdown.

use std::time::{Duration, Instant};

use serde_json::json;
use switchyard_server::ServerSettings;
use switchyard_test_support::{MockUpstream, Script, ms};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::util::{self, Router, openai, spec};

const CHAT: &str = "/v1/chat/completions";

/// One response read off a raw connection.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A client connection that keeps what it read past one response.
struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    async fn connect(router: &Router) -> Client {
        Client { stream: TcpStream::connect(router.addr).await.unwrap(), buf: Vec::new() }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 8192];
        let n = tokio::time::timeout(Duration::from_secs(10), self.stream.read(&mut chunk))
            .await
            .expect("the router answers within 10 s")
            .unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..n]);
        n > 0
    }

    /// Read one response; `head_only` for the answer to a HEAD request.
    async fn answer(&mut self, head_only: bool) -> Answer {
        let (status, headers, head_len) = loop {
            let mut slots = [httparse::EMPTY_HEADER; 64];
            let mut response = httparse::Response::new(&mut slots);
            if let httparse::Status::Complete(len) = response.parse(&self.buf).unwrap() {
                let headers = response
                    .headers
                    .iter()
                    .map(|h| (h.name.to_string(), String::from_utf8_lossy(h.value).into_owned()))
                    .collect::<Vec<_>>();
                break (response.code.unwrap(), headers, len);
            }
            assert!(self.fill().await, "connection closed before a whole head");
        };
        self.buf.drain(..head_len);
        let mut answer = Answer { status, headers, body: Vec::new() };
        if head_only || status == 100 {
            return answer;
        }
        if answer.header("transfer-encoding") == Some("chunked") {
            loop {
                let line_end = loop {
                    if let Some(at) = self.buf.windows(2).position(|w| w == b"\r\n") {
                        break at;
                    }
                    assert!(self.fill().await, "connection closed inside a chunk");
                };
                let size_text = std::str::from_utf8(&self.buf[..line_end]).unwrap();
                let size = usize::from_str_radix(size_text.trim(), 16).unwrap();
                while self.buf.len() < line_end + 2 + size + 2 {
                    assert!(self.fill().await, "connection closed inside a chunk");
                }
                answer.body.extend_from_slice(&self.buf[line_end + 2..line_end + 2 + size]);
                self.buf.drain(..line_end + 2 + size + 2);
                if size == 0 {
                    return answer;
                }
            }
        }
        let length: usize = answer.header("content-length").unwrap().parse().unwrap();
        while self.buf.len() < length {
            assert!(self.fill().await, "connection closed inside a body");
        }
        answer.body = self.buf.drain(..length).collect();
        answer
    }

    /// Whether the router closes the connection within `within` (reading nothing).
    async fn closed_within(&mut self, within: Duration) -> bool {
        let mut chunk = [0u8; 64];
        match tokio::time::timeout(within, self.stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => true,
            Ok(Ok(n)) => panic!("unexpected bytes: {:?}", String::from_utf8_lossy(&chunk[..n])),
            Err(_) => false,
        }
    }
}

fn chat_request(extra_headers: &str) -> Vec<u8> {
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).to_string();
    format!(
        "POST {CHAT} HTTP/1.1\r\nhost: r\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n{extra_headers}\r\n{body}",
        body.len()
    )
    .into_bytes()
}

async fn router_with(settings: ServerSettings) -> (MockUpstream, Router) {
    let mock = MockUpstream::start(Script::ok()).await.unwrap();
    let router = Router::start_with(spec(vec![openai("a", &mock.url(), &["m"])]), settings).await;
    (mock, router)
}

async fn router() -> (MockUpstream, Router) {
    router_with(util::settings()).await
}

#[tokio::test]
async fn one_connection_serves_pipelined_requests_in_order() {
    let (mock, router) = router().await;
    let mut client = Client::connect(&router).await;
    let mut burst = b"GET /health HTTP/1.1\r\nhost: r\r\n\r\n".to_vec();
    burst.extend(chat_request(""));
    burst.extend(b"GET /v1/models HTTP/1.1\r\nhost: r\r\n\r\n");
    client.send(&burst).await;
    let health = client.answer(false).await;
    assert_eq!((health.status, health.text().as_str()), (200, r#"{"status":"ok"}"#));
    assert!(health.header("date").is_some_and(|d| d.ends_with(" GMT")), "{health:?}");
    let chat = client.answer(false).await;
    assert_eq!(chat.status, 200, "{}", chat.text());
    assert_eq!(chat.header("x-switchyard-backend"), Some("a"));
    let reply: serde_json::Value = serde_json::from_slice(&chat.body).unwrap();
    assert_eq!(reply["object"], "chat.completion");
    let models = client.answer(false).await;
    assert_eq!(models.status, 200);
    assert!(models.text().contains("\"m\""), "{}", models.text());
    // Still open: one more, later.
    client.send(&chat_request("")).await;
    assert_eq!(client.answer(false).await.status, 200);
    assert_eq!(mock.request_count_for(CHAT), 2);
}

#[tokio::test]
async fn a_pipelined_burst_cut_at_any_size_is_answered_in_order() {
    let (mock, router) = router().await;
    let mut burst = chat_request("");
    burst.extend(b"GET /health HTTP/1.1\r\n\r\n");
    burst.extend(b"POST /v1/embeddings HTTP/1.1\r\ncontent-length: 2\r\n\r\n{}");
    burst.extend(chat_request("x-last: 1\r\n"));
    for size in [1, 2, 3, 7, 16, 61, 200, burst.len()] {
        let mut client = Client::connect(&router).await;
        for piece in burst.chunks(size) {
            client.send(piece).await;
        }
        let statuses = [
            client.answer(false).await.status,
            client.answer(false).await.status,
            client.answer(false).await.status,
            client.answer(false).await.status,
        ];
        // The embeddings body `{}` has no model: a 400 in its place, nothing shifted.
        assert_eq!(statuses, [200, 200, 400, 200], "cut every {size} bytes");
    }
    assert_eq!(mock.request_count_for(CHAT), 16);
}

#[tokio::test]
async fn a_body_arriving_in_pieces_is_read_whole() {
    let (mock, router) = router().await;
    let mut client = Client::connect(&router).await;
    let request = chat_request("");
    for piece in request.chunks(7) {
        client.send(piece).await;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let answer = client.answer(false).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let sent: serde_json::Value = serde_json::from_slice(&mock.last_post().unwrap().body).unwrap();
    assert_eq!(sent["messages"][0]["content"], "hi");
}

#[tokio::test]
async fn connection_close_is_answered_and_then_closed() {
    let (_mock, router) = router().await;
    let mut client = Client::connect(&router).await;
    client.send(&chat_request("connection: close\r\n")).await;
    let answer = client.answer(false).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("connection"), Some("close"));
    assert!(client.closed_within(Duration::from_secs(2)).await);
}

#[tokio::test]
async fn head_answers_carry_the_length_and_no_body() {
    let (_mock, router) = router().await;
    let mut client = Client::connect(&router).await;
    client.send(b"HEAD /health HTTP/1.1\r\nhost: r\r\n\r\nGET /health HTTP/1.1\r\n\r\n").await;
    let head = client.answer(true).await;
    assert_eq!((head.status, head.header("content-length")), (200, Some("15")));
    // The next answer starts right after the head: no body was sent.
    let get = client.answer(false).await;
    assert_eq!(get.text(), r#"{"status":"ok"}"#);
}

#[tokio::test]
async fn streams_go_out_chunked_as_they_come() {
    let mock = MockUpstream::start(Script::ok().chunks(5).chunk_delay(ms(20))).await.unwrap();
    let router = Router::start(spec(vec![openai("a", &mock.url(), &["m"])])).await;
    let mut client = Client::connect(&router).await;
    let body =
        json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "hi"}]})
            .to_string();
    let started = Instant::now();
    client
        .send(
            format!("POST {CHAT} HTTP/1.1\r\ncontent-length: {}\r\n\r\n{body}", body.len())
                .as_bytes(),
        )
        .await;
    let answer = client.answer(false).await;
    assert!(started.elapsed() >= Duration::from_millis(80), "the 5 chunks are 20 ms apart");
    assert_eq!(answer.header("content-type"), Some("text/event-stream"));
    assert_eq!(answer.header("transfer-encoding"), Some("chunked"));
    let text = answer.text();
    assert_eq!(text.matches("chunk ").count(), 5, "{text}");
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
}

#[tokio::test]
async fn what_the_loop_declines_hyper_serves_on_the_same_connection() {
    let (mock, router) = router().await;
    let mut client = Client::connect(&router).await;
    // A chunked request body, then a plain request: hyper keeps the connection.
    let body =
        json!({"model": "m", "messages": [{"role": "user", "content": "chunked"}]}).to_string();
    let chunked = format!(
        "POST {CHAT} HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
        body.len()
    );
    client.send(chunked.as_bytes()).await;
    let answer = client.answer(false).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let sent: serde_json::Value = serde_json::from_slice(&mock.last_post().unwrap().body).unwrap();
    assert_eq!(sent["messages"][0]["content"], "chunked");
    client.send(b"GET /health HTTP/1.1\r\n\r\n").await;
    assert_eq!(client.answer(false).await.status, 200);

    // curl's `Expect: 100-continue`: the interim answer, then the real one.
    let mut client = Client::connect(&router).await;
    let request = String::from_utf8(chat_request("expect: 100-continue\r\n")).unwrap();
    let (head, body) = request.split_once("\r\n\r\n").unwrap();
    client.send(format!("{head}\r\n\r\n").as_bytes()).await;
    assert_eq!(client.answer(false).await.status, 100);
    client.send(body.as_bytes()).await;
    assert_eq!(client.answer(false).await.status, 200);

    // HTTP/1.0 and malformed heads get hyper's answers.
    let mut client = Client::connect(&router).await;
    client.send(b"GET /health HTTP/1.0\r\n\r\n").await;
    let answer = client.answer(false).await;
    assert_eq!(answer.status, 200);
    let mut client = Client::connect(&router).await;
    client.send(b"GET /health HTTP/1.1\r\nno colon here\r\n\r\n").await;
    assert_eq!(client.answer(false).await.status, 400);
}

#[tokio::test]
async fn a_body_too_slow_is_a_400_and_the_connection_closes() {
    let settings =
        ServerSettings { body_read_timeout: Duration::from_millis(200), ..util::settings() };
    let (mock, router) = router_with(settings).await;
    let mut client = Client::connect(&router).await;
    client
        .send(format!("POST {CHAT} HTTP/1.1\r\ncontent-length: 100\r\n\r\n{{\"mod").as_bytes())
        .await;
    let answer = client.answer(false).await;
    assert_eq!(answer.status, 400);
    assert!(answer.text().contains("not received within the time limit"), "{}", answer.text());
    assert_eq!(answer.header("connection"), Some("close"));
    assert!(client.closed_within(Duration::from_secs(2)).await);
    assert_eq!(mock.request_count_for(CHAT), 0);
}

#[tokio::test]
async fn silent_and_idle_connections_are_closed_after_their_timeouts() {
    let settings = ServerSettings {
        header_read_timeout: Duration::from_millis(300),
        keepalive_timeout: Duration::from_millis(1000),
        ..util::settings()
    };
    let (_mock, router) = router_with(settings).await;

    // A new connection that sends nothing, and one that stops inside its head.
    let started = Instant::now();
    let mut silent = Client::connect(&router).await;
    let mut partial = Client::connect(&router).await;
    partial.send(b"GET /health HT").await;
    assert!(silent.closed_within(Duration::from_secs(5)).await);
    assert!(partial.closed_within(Duration::from_secs(5)).await);
    assert!(started.elapsed() >= Duration::from_millis(250), "{:?}", started.elapsed());

    // Between requests the longer keep-alive applies.
    let mut idle = Client::connect(&router).await;
    idle.send(b"GET /health HTTP/1.1\r\n\r\n").await;
    assert_eq!(idle.answer(false).await.status, 200);
    // Past the header timeout, within the keep-alive: still open.
    assert!(!idle.closed_within(Duration::from_millis(400)).await, "closed before keepalive");
    idle.send(b"GET /health HTTP/1.1\r\n\r\n").await;
    assert_eq!(idle.answer(false).await.status, 200);
    let answered = Instant::now();
    assert!(idle.closed_within(Duration::from_secs(5)).await);
    assert!(answered.elapsed() >= Duration::from_millis(900), "{:?}", answered.elapsed());
}

#[tokio::test]
async fn shutdown_closes_idle_connections_and_finishes_at_once() {
    let (_mock, mut router) = router().await;
    let mut client = Client::connect(&router).await;
    client.send(b"GET /health HTTP/1.1\r\n\r\n").await;
    assert_eq!(client.answer(false).await.status, 200);
    // A new connection that has not sent a byte yet is idle too.
    let mut fresh = Client::connect(&router).await;
    tokio::time::sleep(ms(50)).await;
    let started = Instant::now();
    router.trigger_shutdown();
    assert!(client.closed_within(Duration::from_secs(2)).await);
    assert!(fresh.closed_within(Duration::from_secs(2)).await);
    router.task.take().unwrap().await.unwrap().unwrap();
    assert!(started.elapsed() < Duration::from_secs(2), "the grace period is 5 s: not waited");
}

#[tokio::test]
async fn a_client_gone_before_its_answer_cancels_the_upstream_call() {
    let mock = MockUpstream::start(Script::ok().delay(ms(3000))).await.unwrap();
    let router = Router::start(spec(vec![openai("a", &mock.url(), &["m"])])).await;
    let mut client = Client::connect(&router).await;
    client.send(&chat_request("")).await;
    let deadline = Instant::now() + Duration::from_secs(2);
    while mock.request_count_for(CHAT) == 0 && Instant::now() < deadline {
        tokio::time::sleep(ms(5)).await;
    }
    assert_eq!(mock.request_count_for(CHAT), 1);
    // The upstream connection carrying the call closes when the call is dropped.
    let open = mock.connections_open();
    drop(client);
    assert!(
        mock.wait_connections_at_most(open - 1, Duration::from_secs(2)).await,
        "the upstream request outlived its client"
    );
}
