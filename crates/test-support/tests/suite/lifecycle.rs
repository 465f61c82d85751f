//! Shutdown, restart on the same port, connection accounting.

use http::StatusCode;
use switchyard_test_support::{MockUpstream, Script, ms};

use crate::util::{chat, open, read_frames, send};

#[tokio::test]
async fn shutdown_kills_open_streams_and_refuses_new_connections() {
    let mock = MockUpstream::start(Script::ok().chunks(1000).chunk_delay(ms(10))).await.unwrap();
    let mut response =
        open(mock.addr(), "POST", "/v1/chat/completions", &chat(true), &[]).await.unwrap();
    assert_eq!(mock.stats().connections_open, 1);
    mock.shutdown().await;
    assert!(!mock.is_running());
    let (_, clean) = read_frames(response.body_mut()).await;
    assert!(!clean, "the stream is cut");
    let stats = mock.stats();
    assert_eq!(stats.connections_open, 0);
    assert_eq!(stats.connections_killed, 1);
    assert_eq!(stats.streams_cancelled, 0);
    let refused = tokio::net::TcpStream::connect(mock.addr()).await;
    assert_eq!(refused.unwrap_err().kind(), std::io::ErrorKind::ConnectionRefused);
}

#[tokio::test]
async fn restart_serves_again_on_the_same_port() {
    let mock = MockUpstream::start(Script::ok()).await.unwrap();
    let port = mock.port();
    assert_eq!(send(mock.addr(), "GET", "/health", b"").await.0, StatusCode::OK);
    mock.shutdown().await;
    mock.restart().await.unwrap();
    assert!(mock.is_running());
    assert_eq!(mock.port(), port);
    assert_eq!(send(mock.addr(), "GET", "/health", b"").await.0, StatusCode::OK);
    assert_eq!(mock.request_count(), 2, "records carry over");
    assert_eq!(mock.connections_accepted(), 2);
    mock.restart().await.unwrap();
}

#[tokio::test]
async fn drop_resets_connections() {
    let mock = MockUpstream::start(Script::ok().chunks(3).stall_after(1)).await.unwrap();
    let addr = mock.addr();
    let mut response = open(addr, "POST", "/v1/chat/completions", &chat(true), &[]).await.unwrap();
    response.body_mut();
    drop(mock);
    let (frames, clean) = read_frames(response.body_mut()).await;
    assert!(!clean);
    assert!(frames.len() <= 1);
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn kill_connections_keeps_listening() {
    let mock = MockUpstream::start(Script::ok().chunks(3).stall_after(1)).await.unwrap();
    let mut response =
        open(mock.addr(), "POST", "/v1/chat/completions", &chat(true), &[]).await.unwrap();
    mock.kill_connections().await;
    let (_, clean) = read_frames(response.body_mut()).await;
    assert!(!clean);
    assert!(mock.is_running());
    mock.set_script(Script::ok());
    assert_eq!(
        send(mock.addr(), "POST", "/v1/chat/completions", &chat(false)).await.0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn keep_alive_connections_are_counted_once() {
    use http_body_util::{BodyExt, Full};
    use hyper_util::rt::TokioIo;

    let mock = MockUpstream::start(Script::ok()).await.unwrap();
    let stream = tokio::net::TcpStream::connect(mock.addr()).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    for _ in 0..5 {
        let request = http::Request::post("/v1/chat/completions")
            .header("host", "x")
            .body(Full::new(bytes::Bytes::from(chat(false))))
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        response.into_body().collect().await.unwrap();
    }
    let stats = mock.stats();
    assert_eq!(stats.connections_accepted, 1);
    assert_eq!(stats.connections_open, 1);
    assert_eq!(stats.requests, 5);
    assert!(mock.requests().iter().all(|r| r.connection == mock.requests()[0].connection));
    drop(sender);
    assert!(mock.wait_connections_at_most(0, ms(500)).await);
}
