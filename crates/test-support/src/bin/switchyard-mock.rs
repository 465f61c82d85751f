//! `switchyard-mock`: a lean OpenAI-compatible mock upstream for benchmarks.
//!
//! Every response is rendered once at start-up by [`Script::render`] (so it is the
//! same bytes the in-process mock sends) and served from shared buffers: a request
//! costs a body read, a substring search for `"stream":true`, and reference-count
//! bumps. HTTP/1.1 with keep-alive, `TCP_NODELAY` on every connection, no request
//! recording. The model name in responses is fixed (`--model`), not echoed.
//!
//! ```text
//! switchyard-mock [--bind 127.0.0.1] [--port 0] [--chunks 3] [--chunk-delay-ms 0]
//!                 [--delay-ms 0] [--body-bytes 0] [--model mock-model] [--threads 1]
//! ```
//!
//! It prints `listening on http://ADDR` on stdout once bound.

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a command-line tool reports on stdio"
)]

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use switchyard_test_support::Script;
use tokio::net::TcpListener;
use tokio::time::Sleep;

const USAGE: &str = "usage: switchyard-mock [--bind ADDR] [--port N] [--chunks N] [--chunk-delay-ms N] \
[--delay-ms N] [--body-bytes N] [--model NAME] [--threads N]";

/// Command-line settings.
#[derive(Clone, Debug)]
struct Args {
    /// Address to bind (default `127.0.0.1`).
    bind: String,
    /// Port (default 0: any free port, printed on start).
    port: u16,
    /// Content chunks per answer (default 3).
    chunks: usize,
    /// Delay between stream frames (default 0).
    chunk_delay: Duration,
    /// Delay before response headers (default 0).
    delay: Duration,
    /// Total content bytes of an answer, split over the chunks (default 0: the
    /// generated `"chunk {i} "` texts).
    body_bytes: usize,
    /// The model named in responses and listed by `/v1/models` (default `mock-model`).
    model: String,
    /// Runtime worker threads (default 1).
    threads: usize,
}

/// Pre-rendered responses, shared by every connection.
struct Responses {
    chat: Arc<[Bytes]>,
    chat_stream: Arc<[Bytes]>,
    chat_stream_usage: Arc<[Bytes]>,
    models: Arc<[Bytes]>,
    health: Arc<[Bytes]>,
    not_found: Arc<[Bytes]>,
    delay: Duration,
    chunk_delay: Duration,
}

/// A body of shared frames, with an optional delay between them.
struct FramesBody {
    frames: Arc<[Bytes]>,
    next: usize,
    delay: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    gap_due: bool,
    exact: bool,
}

fn main() {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}\n{USAGE}");
            std::process::exit(64);
        }
    };
    let runtime = if args.threads <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .build()
    };
    let result = runtime.map_err(|e| e.to_string()).and_then(|rt| rt.block_on(serve(args)));
    if let Err(message) = result {
        eprintln!("switchyard-mock: {message}");
        std::process::exit(1);
    }
}

async fn serve(args: Args) -> Result<(), String> {
    let responses = Arc::new(render_all(&args));
    let addr: SocketAddr = format!("{}:{}", args.bind, args.port)
        .parse()
        .map_err(|e| format!("bad --bind/--port: {e}"))?;
    let listener = TcpListener::bind(addr).await.map_err(|e| format!("cannot bind {addr}: {e}"))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    println!("listening on http://{local}");
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let responses = Arc::clone(&responses);
        tokio::spawn(async move {
            let service = service_fn(move |request| handle(Arc::clone(&responses), request));
            // HTTP/1.1 keep-alive, or h2c with prior knowledge (no stream limit, so a
            // router can multiplex thousands of open streams over a few connections).
            let mut builder =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            builder.http1().keep_alive(true);
            builder.http2().max_concurrent_streams(u32::MAX);
            let _ = builder.serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

async fn handle(
    responses: Arc<Responses>,
    request: Request<Incoming>,
) -> Result<Response<FramesBody>, Infallible> {
    let (parts, mut body) = request.into_parts();
    let (frames, status, stream) = match (&parts.method, parts.uri.path()) {
        (&Method::POST, "/v1/chat/completions") => {
            let bytes = read_body(&mut body).await;
            if contains(&bytes, b"\"stream\":true") || contains(&bytes, b"\"stream\": true") {
                let usage = contains(&bytes, b"\"include_usage\":true")
                    || contains(&bytes, b"\"include_usage\": true");
                let frames =
                    if usage { &responses.chat_stream_usage } else { &responses.chat_stream };
                (Arc::clone(frames), StatusCode::OK, true)
            } else {
                (Arc::clone(&responses.chat), StatusCode::OK, false)
            }
        }
        (&Method::GET, "/v1/models") => (Arc::clone(&responses.models), StatusCode::OK, false),
        (&Method::GET, "/health") => (Arc::clone(&responses.health), StatusCode::OK, false),
        _ => (Arc::clone(&responses.not_found), StatusCode::NOT_FOUND, false),
    };
    if !responses.delay.is_zero() {
        tokio::time::sleep(responses.delay).await;
    }
    let content_type = if stream { "text/event-stream" } else { "application/json" };
    let delay = if stream { responses.chunk_delay } else { Duration::ZERO };
    let mut response = Response::new(FramesBody {
        frames,
        next: 0,
        delay,
        sleep: None,
        gap_due: false,
        exact: !stream,
    });
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    Ok(response)
}

/// Read the request body; a single-frame body is kept without copying.
async fn read_body(body: &mut Incoming) -> Bytes {
    let mut first: Option<Bytes> = None;
    let mut more: Option<BytesMut> = None;
    while let Some(Ok(frame)) = body.frame().await {
        let Ok(data) = frame.into_data() else { continue };
        match (&mut first, &mut more) {
            (None, _) => first = Some(data),
            (Some(head), None) => {
                let mut joined = BytesMut::with_capacity(head.len() + data.len());
                joined.extend_from_slice(head);
                joined.extend_from_slice(&data);
                more = Some(joined);
            }
            (Some(_), Some(joined)) => joined.extend_from_slice(&data),
        }
    }
    match more {
        Some(joined) => joined.freeze(),
        None => first.unwrap_or_default(),
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    memchr::memmem::find(haystack, needle).is_some()
}

fn render_all(args: &Args) -> Responses {
    let mut script = Script::ok().models([args.model.clone()]);
    script = if args.body_bytes > 0 {
        let chunks = args.chunks.max(1);
        let per = args.body_bytes / chunks;
        let extra = args.body_bytes % chunks;
        script.texts((0..chunks).map(|i| "x".repeat(per + usize::from(i < extra))))
    } else {
        script.chunks(args.chunks)
    };
    let request = |stream: bool, usage: bool| {
        let mut body = serde_json::json!({"model": args.model, "stream": stream, "messages": []});
        if usage {
            body["stream_options"] = serde_json::json!({"include_usage": true});
        }
        body.to_string().into_bytes()
    };
    let post = |body: Vec<u8>| -> Arc<[Bytes]> {
        let rendered = script.render(&Method::POST, "/v1/chat/completions", &body);
        if rendered.stream { rendered.frames.into() } else { vec![rendered.body()].into() }
    };
    let get =
        |path: &str| -> Arc<[Bytes]> { vec![script.render(&Method::GET, path, b"").body()].into() };
    Responses {
        chat: post(request(false, false)),
        chat_stream: post(request(true, false)),
        chat_stream_usage: post(request(true, true)),
        models: get("/v1/models"),
        health: get("/health"),
        not_found: get("/not-found"),
        delay: args.delay,
        chunk_delay: args.chunk_delay,
    }
}

fn parse_args(mut argv: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut args = Args {
        bind: "127.0.0.1".to_owned(),
        port: 0,
        chunks: 3,
        chunk_delay: Duration::ZERO,
        delay: Duration::ZERO,
        body_bytes: 0,
        model: switchyard_test_support::DEFAULT_MODEL.to_owned(),
        threads: 1,
    };
    while let Some(flag) = argv.next() {
        if flag == "--help" || flag == "-h" {
            return Err("switchyard-mock: a lean mock OpenAI upstream".to_owned());
        }
        let value = argv.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number = |v: &str| v.parse::<u64>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--bind" => args.bind = value,
            "--port" => args.port = value.parse().map_err(|e| format!("{flag}: {e}"))?,
            "--chunks" => args.chunks = number(&value)? as usize,
            "--chunk-delay-ms" => args.chunk_delay = Duration::from_millis(number(&value)?),
            "--delay-ms" => args.delay = Duration::from_millis(number(&value)?),
            "--body-bytes" => args.body_bytes = number(&value)? as usize,
            "--model" => args.model = value,
            "--threads" => args.threads = number(&value)? as usize,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(args)
}

impl Body for FramesBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        loop {
            if let Some(sleep) = this.sleep.as_mut() {
                ready!(sleep.as_mut().poll(cx));
                this.sleep = None;
            } else if this.gap_due && this.next < this.frames.len() {
                this.gap_due = false;
                this.sleep = Some(Box::pin(tokio::time::sleep(this.delay)));
                continue;
            }
            let frame = this.frames.get(this.next).cloned();
            this.next += 1;
            this.gap_due = !this.delay.is_zero();
            return Poll::Ready(frame.map(|f| Ok(Frame::data(f))));
        }
    }

    fn is_end_stream(&self) -> bool {
        self.next >= self.frames.len()
    }

    fn size_hint(&self) -> SizeHint {
        if self.exact {
            SizeHint::with_exact(self.frames.iter().map(|f| f.len() as u64).sum())
        } else {
            SizeHint::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Result<Args, String> {
        parse_args(list.iter().map(|s| (*s).to_owned()))
    }

    #[test]
    fn flags_parse_and_bad_flags_are_named() {
        let a = args(&[
            "--port",
            "9000",
            "--chunks",
            "8",
            "--chunk-delay-ms",
            "5",
            "--body-bytes",
            "100",
        ])
        .unwrap();
        assert_eq!(a.port, 9000);
        assert_eq!(a.chunks, 8);
        assert_eq!(a.chunk_delay, Duration::from_millis(5));
        assert_eq!(a.body_bytes, 100);
        assert!(args(&["--nope", "1"]).unwrap_err().contains("--nope"));
        assert!(args(&["--port"]).unwrap_err().contains("needs a value"));
    }

    #[test]
    fn body_bytes_sets_the_content_size() {
        let a = args(&["--chunks", "3", "--body-bytes", "10"]).unwrap();
        let r = render_all(&a);
        let json: serde_json::Value = serde_json::from_slice(&r.chat[0]).unwrap();
        assert_eq!(json["choices"][0]["message"]["content"].as_str().unwrap().len(), 10);
        assert_eq!(r.chat_stream.len(), 5, "3 content chunks, finish, [DONE]");
        assert_eq!(r.chat_stream_usage.len(), 6);
    }
}
