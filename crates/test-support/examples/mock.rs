// cargo run -p switchyard-test-support --example mock
//! Start a mock upstream that fails once and then streams, talk to it over HTTP,
//! and compare what arrived with `Script::render`.

#![allow(
    clippy::print_stdout,
    clippy::unwrap_used,
    reason = "an example prints and panics on failure"
)]

use bytes::Bytes;
use http::Method;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use switchyard_test_support::{MockUpstream, Script, ms};

async fn post(mock: &MockUpstream, body: &'static [u8]) -> (u16, Bytes) {
    let stream = tokio::net::TcpStream::connect(mock.addr()).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let request = http::Request::post("/v1/chat/completions")
        .header("host", mock.addr().to_string())
        .header("authorization", "Bearer sk-example")
        .body(Full::new(Bytes::from_static(body)))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status().as_u16();
    (status, response.into_body().collect().await.unwrap().to_bytes())
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let streaming = Script::ok().chunks(4).chunk_delay(ms(20));
    let mock = MockUpstream::start(streaming.clone()).await.unwrap();
    mock.set_sequence([Script::status(503).retry_after(1), streaming.clone()]);
    println!("mock upstream at {}", mock.v1_url());

    let body: &'static [u8] =
        br#"{"model":"demo","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let (status, first) = post(&mock, body).await;
    println!("attempt 1: {status} {}", String::from_utf8_lossy(&first));
    let (status, second) = post(&mock, body).await;
    println!("attempt 2: {status}\n{}", String::from_utf8_lossy(&second));

    let expected = streaming.render(&Method::POST, "/v1/chat/completions", body).body();
    println!("byte-identical to Script::render: {}", second == expected);
    for request in mock.requests() {
        println!("recorded {} {} key={:?}", request.method, request.path, request.api_key());
    }
    mock.shutdown().await;
}
