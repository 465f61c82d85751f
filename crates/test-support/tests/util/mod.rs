//! A minimal real HTTP client for the mock's tests.

use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Open an HTTP/1.1 connection and send one request; the connection task runs in the
/// background and is returned so a test can drop or observe it.
pub(crate) async fn open(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
    headers: &[(&str, &str)],
) -> hyper::Result<Response<Incoming>> {
    let stream = TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string())
        .header("content-type", "application/json");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    sender.send_request(request.body(Full::new(Bytes::copy_from_slice(body))).unwrap()).await
}

/// Send one request and read the whole response.
pub(crate) async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
) -> (StatusCode, HeaderMap, Bytes) {
    send_with(addr, method, path, body, &[]).await
}

/// Send one request with extra headers and read the whole response.
pub(crate) async fn send_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
    headers: &[(&str, &str)],
) -> (StatusCode, HeaderMap, Bytes) {
    let response = open(addr, method, path, body, headers).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, headers, body)
}

#[allow(dead_code)] // reason: used by some test modules only
/// Read body frames until the body ends or fails; returns the bytes and whether it
/// ended cleanly.
pub(crate) async fn read_frames(body: &mut Incoming) -> (Vec<Bytes>, bool) {
    let mut frames = Vec::new();
    loop {
        match body.frame().await {
            None => return (frames, true),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    frames.push(data);
                }
            }
            Some(Err(_)) => return (frames, false),
        }
    }
}

pub(crate) fn chat(stream: bool) -> Vec<u8> {
    format!(
        r#"{{"model":"gpt-test","stream":{stream},"messages":[{{"role":"user","content":"hi"}}]}}"#
    )
    .into_bytes()
}
