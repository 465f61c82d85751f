//! Client connections. Cleartext HTTP/1.1, the path nearly every request takes (the
//! OpenAI SDKs, curl, a load balancer in front of the router), is served by a loop of
//! our own; hyper serves HTTP/2, TLS and everything the loop hands over.
//!
//! Why a loop of our own: hyper's dispatcher, its buffers and the conversions around
//! it cost a few microseconds of CPU per request, a sizeable share of what the router
//! adds (docs/benchmarks.md, "Where the time goes"). Here the connection's own task
//! reads the head with `httparse`, reads a `content-length` body whole (the pipeline
//! needs the whole body anyway, within `server.max_request_size`), calls the handler
//! hyper calls, and writes the answer: the head and a whole body in one write, a stream
//! as its frames arrive — whatever is ready is written at once, nothing waits for more.
//!
//! The loop hands the connection to hyper, with every byte it has read, at a request
//! boundary when it meets HTTP/2 with prior knowledge, HTTP/1.0, `Upgrade`, `Expect`,
//! `transfer-encoding` (a chunked request body), a body over the size limit, a repeated
//! `content-length`, or anything it cannot parse. hyper then answers that request (with
//! its own error statuses for malformed ones) and keeps the connection.
//!
//! Timeouts: a new connection must send a whole head within `header_read_timeout`;
//! between requests an idle connection stays open for `keepalive_timeout`, and once the
//! next request's first byte arrives its head must be whole within
//! `header_read_timeout`; a body must arrive within `body_read_timeout` (the answer is
//! then a 400 and the connection closes). A client that closes its connection while its
//! request is in flight cancels the request (the upstream call is dropped with it);
//! bytes a client pipelines meanwhile are kept for its next request.

use std::io::{self, Write as _};
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::{Body as _, Frame};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use switchyard_core::BackendError;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::body::RequestBody;
use crate::observe::Observed;
use crate::reload::Live;
use crate::service::handle;
use crate::state::ServerSettings;

/// Headers a request may carry on the fast path; more go to hyper (which allows 100).
const MAX_HEADERS: usize = 64;
/// A head still incomplete at this size goes to hyper.
const MAX_HEAD: usize = 64 * 1024;
/// Bytes read ahead (a pipelined request) while a request is in flight, at most.
const MAX_READ_AHEAD: usize = 64 * 1024;
/// Response bytes gathered from frames that are ready at once, at most, before a write.
const WRITE_BATCH: usize = 64 * 1024;
/// A response buffer grown past this is given back after the response.
const KEEP_OUT: usize = 16 * 1024;
/// How long a closing connection keeps reading what the client still sends.
const LINGER: Duration = Duration::from_secs(1);
/// Room made in the read buffer before each read.
const READ_CHUNK: usize = 8 * 1024;

/// The timeouts and limits a connection keeps from its start (settings follow
/// reloads; a connection keeps the ones it started with).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    header_read: Duration,
    keepalive: Duration,
    body_read: Duration,
    max_body: usize,
}

impl Limits {
    pub(crate) fn of(settings: &ServerSettings) -> Limits {
        Limits {
            header_read: settings.header_read_timeout,
            keepalive: settings.keepalive_timeout,
            body_read: settings.body_read_timeout,
            max_body: settings.max_request_size,
        }
    }
}

/// hyper's HTTP/1.1 + HTTP/2 connection settings.
pub(crate) fn hyper_builder(settings: &ServerSettings) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(settings.keepalive_timeout / 3))
        .keep_alive_timeout(settings.keepalive_timeout.min(Duration::from_secs(20)));
    builder
}

/// Serve `io` (a TLS stream, or a cleartext one handed over) with hyper until it ends,
/// or until `shutdown` says stop: then hyper finishes the requests in flight and closes.
pub(crate) async fn serve_with_hyper<I>(
    io: I,
    peer: SocketAddr,
    live: Arc<Live>,
    builder: &auto::Builder<TokioExecutor>,
    mut shutdown: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let ip = peer.ip();
    let service = service_fn(move |request: Request<Incoming>| {
        handle(live.clone(), ip, request.map(RequestBody::Hyper))
    });
    let connection = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = stopped(&mut shutdown) => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = result {
        tracing::debug!(%peer, %error, "connection ended with an error");
    }
}

/// Resolves once the server is stopping (or gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// One cleartext client connection.
pub(crate) struct Conn {
    io: TcpStream,
    peer: SocketAddr,
    live: Arc<Live>,
    limits: Limits,
    hyper: Arc<auto::Builder<TokioExecutor>>,
    shutdown: watch::Receiver<bool>,
    /// Bytes read and not yet used: the next head, a body, pipelined requests.
    buf: BytesMut,
    /// The response being written.
    out: Vec<u8>,
}

/// What the next request head turned out to be.
// Built and moved once per request: boxing the head would cost an allocation instead.
#[allow(clippy::large_enum_variant)]
enum Step {
    Head(Head),
    HandOff,
    Close,
}

/// A parsed request head the fast path serves.
#[derive(Debug)]
struct Head {
    parts: http::request::Parts,
    content_length: usize,
    close: bool,
}

/// What [`parse`] made of the buffer.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // as for `Step`
enum Parsed {
    /// More bytes are needed.
    Partial,
    /// hyper serves this request (the buffer is untouched).
    HandOff,
    /// The head, split off the buffer.
    Head(Head),
}

/// How a response body is framed on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Payload {
    /// No body (HEAD, 204, 304, 1xx); a HEAD answer still says its length if known.
    None(Option<u64>),
    Length(u64),
    Chunked,
}

impl Conn {
    pub(crate) fn new(
        io: TcpStream,
        peer: SocketAddr,
        live: Arc<Live>,
        limits: Limits,
        hyper: Arc<auto::Builder<TokioExecutor>>,
        shutdown: watch::Receiver<bool>,
    ) -> Conn {
        Conn {
            io,
            peer,
            live,
            limits,
            hyper,
            shutdown,
            buf: BytesMut::with_capacity(READ_CHUNK),
            out: Vec::with_capacity(1024),
        }
    }

    /// Serve requests until the client or the server closes the connection.
    pub(crate) async fn serve(mut self) {
        let mut first = true;
        loop {
            let head = match self.read_head(first).await {
                Step::Head(head) => head,
                Step::HandOff => return self.hand_off().await,
                Step::Close => return,
            };
            first = false;
            let Some(body) = self.read_body(head.content_length).await else { return };
            if head.content_length > READ_CHUNK {
                // The buffer grew for this body and still holds its allocation: keep
                // only what follows, so an idle connection holds no large buffer.
                self.buf = BytesMut::from(&self.buf[..]);
            }
            let timed_out = matches!(body, RequestBody::TimedOut);
            let head_only = head.parts.method == Method::HEAD;
            let request = Request::from_parts(head.parts, body);
            let Some(response) = self.call(request).await else { return };
            let close = head.close || timed_out || *self.shutdown.borrow();
            let answered = self.respond(response, head_only, close).await;
            if self.out.capacity() > KEEP_OUT {
                self.out = Vec::with_capacity(1024);
            }
            match answered {
                Ok(true) => {}
                Ok(false) => {
                    // Our side is done: say so, so the client reads the whole answer.
                    let _ = self.io.shutdown().await;
                    if timed_out || !self.buf.is_empty() {
                        self.linger().await;
                    }
                    return;
                }
                Err(error) => {
                    tracing::debug!(peer = %self.peer, %error, "writing a response failed");
                    return;
                }
            }
        }
    }

    /// Read until a whole head is buffered, within the timeouts.
    async fn read_head(&mut self, first: bool) -> Step {
        // A head already begun, or a new connection's first: `header_read_timeout`.
        // Otherwise the connection idles for up to `keepalive_timeout` first, and the
        // head's deadline is set once it turns out to need a second read (a head that
        // arrives whole costs no clock reading).
        let mut deadline =
            (first || !self.buf.is_empty()).then(|| Instant::now() + self.limits.header_read);
        loop {
            match parse(&mut self.buf, self.limits.max_body) {
                Parsed::Head(head) => return Step::Head(head),
                Parsed::HandOff => return Step::HandOff,
                Parsed::Partial => {}
            }
            let limit = match deadline {
                Some(limit) => limit,
                // Nothing of the next head yet: the keep-alive wait.
                None if self.buf.is_empty() => Instant::now() + self.limits.keepalive,
                None => *deadline.insert(Instant::now() + self.limits.header_read),
            };
            self.buf.reserve(READ_CHUNK);
            let read = tokio::select! {
                biased;
                read = self.io.read_buf(&mut self.buf) => read,
                () = tokio::time::sleep_until(limit) => return Step::Close,
                // Stopping closes a connection between requests, not inside one.
                () = stopped(&mut self.shutdown), if self.buf.is_empty() => return Step::Close,
            };
            match read {
                Ok(0) | Err(_) => return Step::Close,
                Ok(_) => {}
            }
        }
    }

    /// Read a body of `length` bytes. `None`: the client went away.
    async fn read_body(&mut self, length: usize) -> Option<RequestBody> {
        if self.buf.len() >= length {
            return Some(RequestBody::Full(self.buf.split_to(length).freeze()));
        }
        let limit = Instant::now() + self.limits.body_read;
        while self.buf.len() < length {
            self.buf.reserve((length - self.buf.len()).min(1 << 20));
            tokio::select! {
                biased;
                read = self.io.read_buf(&mut self.buf) => match read {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                },
                () = tokio::time::sleep_until(limit) => return Some(RequestBody::TimedOut),
            }
        }
        Some(RequestBody::Full(self.buf.split_to(length).freeze()))
    }

    /// Run the handler; `None` if the client closed its connection first (the handler,
    /// and any upstream call it made, is dropped).
    async fn call(&mut self, request: Request<RequestBody>) -> Option<Response<Observed>> {
        let answer = handle(self.live.clone(), self.peer.ip(), request);
        tokio::pin!(answer);
        tokio::select! {
            biased;
            answer = &mut answer => match answer {
                Ok(response) => Some(response),
                Err(never) => match never {},
            },
            () = peer_closed(&self.io, &mut self.buf) => None,
        }
    }

    /// Write `response`. `Ok(true)`: the connection can serve another request.
    async fn respond(
        &mut self,
        response: Response<Observed>,
        head_only: bool,
        close: bool,
    ) -> io::Result<bool> {
        let (parts, mut body) = response.into_parts();
        let status = parts.status;
        let length = body.size_hint().exact();
        let payload = if head_only
            || status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
        {
            Payload::None(length.filter(|_| head_only))
        } else if let Some(length) = length {
            Payload::Length(length)
        } else {
            Payload::Chunked
        };
        self.out.clear();
        let close = write_head(&mut self.out, status, &parts.headers, payload, close);
        if let Payload::None(_) = payload {
            self.io.write_all(&self.out).await?;
            return Ok(!close);
        }
        let chunked = payload == Payload::Chunked;
        loop {
            // Gather the frames that are ready now; wait (writing what is gathered
            // first) only when none is.
            let ready = if self.out.len() < WRITE_BATCH { poll_now(&mut body) } else { None };
            let frame = match ready {
                Some(frame) => frame,
                None => {
                    self.flush().await?;
                    tokio::select! {
                        biased;
                        frame = body.frame() => frame,
                        () = peer_closed(&self.io, &mut self.buf) => return Ok(false),
                    }
                }
            };
            match frame {
                None => {
                    if chunked {
                        self.out.extend_from_slice(b"0\r\n\r\n");
                    }
                    self.flush().await?;
                    return Ok(!close);
                }
                Some(Err(error)) => {
                    // The client must see the body as cut: no last chunk, and close.
                    tracing::debug!(peer = %self.peer, %error, "response body failed");
                    self.flush().await?;
                    return Ok(false);
                }
                Some(Ok(frame)) => {
                    let Ok(data) = frame.into_data() else { continue };
                    if !data.is_empty() {
                        self.push(data, chunked).await?;
                    }
                }
            }
        }
    }

    /// Queue `data` (as one chunk when `chunked`); a large one is written at once,
    /// without a copy.
    async fn push(&mut self, data: Bytes, chunked: bool) -> io::Result<()> {
        if chunked {
            let _ = write!(self.out, "{:x}\r\n", data.len());
        }
        if data.len() >= WRITE_BATCH {
            self.flush().await?;
            self.io.write_all(&data).await?;
        } else {
            self.out.extend_from_slice(&data);
        }
        if chunked {
            self.out.extend_from_slice(b"\r\n");
        }
        Ok(())
    }

    async fn flush(&mut self) -> io::Result<()> {
        if !self.out.is_empty() {
            self.io.write_all(&self.out).await?;
            self.out.clear();
        }
        Ok(())
    }

    /// Read and drop what the client still sends (the rest of a body, pipelined
    /// requests) until it closes, for at most [`LINGER`]: closing a socket with unread
    /// input resets the connection, which can destroy the answer before the client has
    /// read it.
    async fn linger(&mut self) {
        let drain = async {
            let mut sink = [0u8; 4096];
            while let Ok(1..) = self.io.read(&mut sink).await {}
        };
        let _ = tokio::time::timeout(LINGER, drain).await;
    }

    /// Give the connection, and every byte read and not yet used, to hyper.
    async fn hand_off(self) {
        let Conn { io, peer, live, hyper, shutdown, buf, .. } = self;
        let io = Rewind { prefix: buf.freeze(), inner: io };
        serve_with_hyper(io, peer, live, &hyper, shutdown).await;
    }
}

/// Resolves when the client has closed its connection (or the socket failed). Bytes it
/// sends meanwhile (a pipelined request) are kept in `buf`, up to [`MAX_READ_AHEAD`].
/// Costs no system call while nothing arrives: it waits on the socket's readiness.
async fn peer_closed(io: &TcpStream, buf: &mut BytesMut) {
    loop {
        if buf.len() >= MAX_READ_AHEAD {
            return std::future::pending().await;
        }
        if io.readable().await.is_err() {
            return;
        }
        buf.reserve(READ_CHUNK);
        match io.try_read_buf(buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
    }
}

/// The body's next frame if it is ready now, without waiting.
fn poll_now(body: &mut Observed) -> Option<Option<Result<Frame<Bytes>, BackendError>>> {
    // A waker that does nothing: when the frame is not ready the caller awaits it with
    // the task's own waker, which replaces this one.
    let mut cx = Context::from_waker(std::task::Waker::noop());
    match Pin::new(body).poll_frame(&mut cx) {
        Poll::Ready(frame) => Some(frame),
        Poll::Pending => None,
    }
}

/// Parse the request head at the start of `buf`; on success split it off.
fn parse(buf: &mut BytesMut, max_body: usize) -> Parsed {
    if buf.is_empty() {
        return Parsed::Partial;
    }
    // Pass one, over borrowed bytes: the framing decisions and where each piece is.
    // Left uninitialised for httparse to fill (64 empty headers would be 2 KB of stores
    // per request).
    let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut []);
    let head_len = match request.parse_with_uninit_headers(buf, &mut headers) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => return Parsed::Partial,
        // Too large, too many headers, malformed, HTTP/2's preface: hyper's to answer.
        Ok(httparse::Status::Partial) | Err(_) => return Parsed::HandOff,
    };
    let (Some(method), Some(path), Some(1)) = (request.method, request.path, request.version)
    else {
        return Parsed::HandOff;
    };
    let Ok(method) = Method::from_bytes(method.as_bytes()) else { return Parsed::HandOff };
    let base = buf.as_ptr() as usize;
    let span = |piece: &[u8]| -> Span {
        let start = piece.as_ptr() as usize - base;
        (start, start + piece.len())
    };
    let path = span(path.as_bytes());
    let mut spans = [((0, 0), (0, 0)); MAX_HEADERS];
    let mut kept = 0;
    let mut content_length = None;
    let mut close = false;
    for header in request.headers.iter() {
        let name = header.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            match (content_length, parse_length(header.value)) {
                (None, Some(length)) if length <= max_body => content_length = Some(length),
                _ => return Parsed::HandOff,
            }
            // The loop reads the body by it; the handler gets the body whole.
            continue;
        } else if name.eq_ignore_ascii_case(b"transfer-encoding")
            || name.eq_ignore_ascii_case(b"expect")
            || name.eq_ignore_ascii_case(b"upgrade")
        {
            return Parsed::HandOff;
        } else if name.eq_ignore_ascii_case(b"connection") {
            close |= has_close(header.value);
        }
        spans[kept] = (span(name), span(header.value));
        kept += 1;
    }

    // Pass two, over the head frozen in place: values are slices of it, not copies.
    let head = buf.split_to(head_len).freeze();
    let built = build(&head, method, path, &spans[..kept]);
    let Some(parts) = built else {
        // Not something the router can take (an odd URI or header value): give hyper
        // the bytes back as they were, for its own answer.
        let mut restored = BytesMut::with_capacity(head.len() + buf.len());
        restored.extend_from_slice(&head);
        restored.extend_from_slice(buf);
        *buf = restored;
        return Parsed::HandOff;
    };
    Parsed::Head(Head { parts, content_length: content_length.unwrap_or(0), close })
}

/// Where a piece of the head is: start and end offsets.
type Span = (usize, usize);

fn build(
    head: &Bytes,
    method: Method,
    path: Span,
    headers: &[(Span, Span)],
) -> Option<http::request::Parts> {
    let uri = Uri::from_maybe_shared(head.slice(path.0..path.1)).ok()?;
    let mut map = HeaderMap::with_capacity(headers.len());
    for &(name, value) in headers {
        let name = HeaderName::from_bytes(&head[name.0..name.1]).ok()?;
        let value = HeaderValue::from_maybe_shared(head.slice(value.0..value.1)).ok()?;
        map.append(name, value);
    }
    let (mut parts, ()) = Request::new(()).into_parts();
    parts.method = method;
    parts.uri = uri;
    parts.version = Version::HTTP_11;
    parts.headers = map;
    Some(parts)
}

/// A `content-length` value: ASCII digits only (no sign, no spaces inside).
fn parse_length(value: &[u8]) -> Option<usize> {
    let value = value.trim_ascii();
    if value.len() > 18 {
        return None;
    }
    decimal(value).and_then(|n| usize::try_from(n).ok())
}

/// ASCII digits, all of them, as a number: `None` if empty, if anything else is there,
/// or on overflow.
pub(crate) fn decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        if !d.is_ascii_digit() {
            return None;
        }
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// Whether a `connection` value lists `close`.
fn has_close(value: &[u8]) -> bool {
    value.split(|b| *b == b',').any(|token| token.trim_ascii().eq_ignore_ascii_case(b"close"))
}

/// The status line and headers, with the framing headers this loop decides. Returns
/// whether the connection closes after this answer: `close`, or the handler said so.
fn write_head(
    out: &mut Vec<u8>,
    status: StatusCode,
    headers: &HeaderMap,
    payload: Payload,
    mut close: bool,
) -> bool {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    // One pass over the handler's headers, noting what changes the ones added below.
    let (mut dated, mut connection) = (false, false);
    for (name, value) in headers {
        if name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING {
            continue;
        }
        if name == header::DATE {
            dated = true;
        } else if name == header::CONNECTION {
            connection = true;
            close |= has_close(value.as_bytes());
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !dated {
        out.extend_from_slice(b"date: ");
        date::write(out);
        out.extend_from_slice(b"\r\n");
    }
    match payload {
        Payload::Length(length) | Payload::None(Some(length)) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa::Buffer::new().format(length).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        Payload::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Payload::None(None) => {}
    }
    if close && !connection {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    close
}

/// The `date` header value, rendered once a second per thread.
mod date {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};

    thread_local! {
        static CACHED: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }

    pub(super) fn write(out: &mut Vec<u8>) {
        let now = SystemTime::now();
        let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        CACHED.with_borrow_mut(|(at, text)| {
            if *at != second {
                *at = second;
                *text = httpdate::fmt_http_date(now);
            }
            out.extend_from_slice(text.as_bytes());
        });
    }
}

/// A stream that first yields `prefix`: what the loop read before handing over.
struct Rewind<T> {
    prefix: Bytes,
    inner: T,
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewind<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Rewind<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MAX: usize = 1 << 20;

    fn parsed(bytes: &[u8]) -> (Parsed, BytesMut) {
        let mut buf = BytesMut::from(bytes);
        let parsed = parse(&mut buf, MAX);
        (parsed, buf)
    }

    fn head(bytes: &[u8]) -> (Head, BytesMut) {
        match parsed(bytes) {
            (Parsed::Head(head), rest) => (head, rest),
            (other, _) => panic!("{other:?} for {:?}", String::from_utf8_lossy(bytes)),
        }
    }

    fn hands_off(bytes: &[u8]) {
        let (parsed, rest) = parsed(bytes);
        assert!(matches!(parsed, Parsed::HandOff), "{parsed:?}");
        assert_eq!(&rest[..], bytes, "hyper must get every byte back");
    }

    #[test]
    fn a_request_head_becomes_parts_and_leaves_the_body() {
        let (head, rest) = head(
            b"POST /v1/chat/completions?x=1 HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n\
              Content-Length: 2\r\nX-Custom: one\r\nx-custom: two\r\n\r\n{}GET",
        );
        assert_eq!(head.parts.method, Method::POST);
        assert_eq!(head.parts.uri.path(), "/v1/chat/completions");
        assert_eq!(head.parts.uri.query(), Some("x=1"));
        assert_eq!(head.parts.version, Version::HTTP_11);
        assert_eq!(head.parts.headers["content-type"], "application/json");
        let custom: Vec<_> = head.parts.headers.get_all("x-custom").iter().collect();
        assert_eq!(custom, ["one", "two"]);
        assert_eq!(head.content_length, 2);
        // The framing is the loop's: the handler gets the body whole, not its length.
        assert!(!head.parts.headers.contains_key("content-length"));
        assert_eq!(head.parts.headers.len(), 4);
        assert!(!head.close);
        assert_eq!(&rest[..], b"{}GET");
    }

    #[test]
    fn connection_close_is_seen_among_other_tokens() {
        assert!(head(b"GET / HTTP/1.1\r\nConnection: keep-alive, Close\r\n\r\n").0.close);
        assert!(!head(b"GET / HTTP/1.1\r\nConnection: keep-alive\r\n\r\n").0.close);
        assert!(!head(b"GET / HTTP/1.1\r\nX: close\r\n\r\n").0.close);
    }

    #[test]
    fn partial_heads_wait_for_more() {
        for cut in [1, 5, 16, 30] {
            let bytes = &b"GET /health HTTP/1.1\r\nHost: a\r\n\r\n"[..cut];
            let (parsed, rest) = parsed(bytes);
            assert!(matches!(parsed, Parsed::Partial), "{cut}");
            assert_eq!(&rest[..], bytes);
        }
        assert!(matches!(parsed(b"").0, Parsed::Partial));
    }

    #[test]
    fn what_the_loop_does_not_serve_goes_to_hyper_untouched() {
        hands_off(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
        hands_off(b"GET / HTTP/1.0\r\n\r\n");
        hands_off(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n");
        hands_off(b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n");
        hands_off(b"GET / HTTP/1.1\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n");
        hands_off(b"POST / HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n{}");
        hands_off(b"POST / HTTP/1.1\r\nContent-Length: +2\r\n\r\n{}");
        hands_off(b"POST / HTTP/1.1\r\nContent-Length: 2 2\r\n\r\n{}");
        hands_off(format!("POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n", MAX + 1).as_bytes());
        hands_off(b"G\x01T / HTTP/1.1\r\n\r\n");
        hands_off(b"GET http://[bad/ HTTP/1.1\r\n\r\n");
        let many: String = (0..MAX_HEADERS + 1).map(|i| format!("x-{i}: v\r\n")).collect();
        hands_off(format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes());
        let long = "a".repeat(MAX_HEAD);
        hands_off(format!("GET / HTTP/1.1\r\nx: {long}").as_bytes());
    }

    #[test]
    fn content_length_values() {
        assert_eq!(parse_length(b"0"), Some(0));
        assert_eq!(parse_length(b" 42 "), Some(42));
        assert_eq!(parse_length(b""), None);
        assert_eq!(parse_length(b"-1"), None);
        assert_eq!(parse_length(b"1e3"), None);
        assert_eq!(parse_length(b"9999999999999999999"), None);
    }

    #[test]
    fn heads_say_their_framing() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("999"));
        let mut out = Vec::new();
        assert!(!write_head(&mut out, StatusCode::OK, &headers, Payload::Chunked, false));
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"));
        assert!(text.contains("\r\ndate: "), "{text}");
        assert!(text.ends_with("transfer-encoding: chunked\r\n\r\n"), "{text}");
        assert!(!text.contains("999"), "a handler's length is never trusted: {text}");

        let mut out = Vec::new();
        assert!(write_head(
            &mut out,
            StatusCode::NOT_FOUND,
            &HeaderMap::new(),
            Payload::Length(7),
            true
        ));
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 404 Not Found\r\n"));
        assert!(text.ends_with("content-length: 7\r\nconnection: close\r\n\r\n"), "{text}");

        // A handler that says close (or sets its own date) is heard, not repeated.
        let mut said = HeaderMap::new();
        said.insert(header::CONNECTION, HeaderValue::from_static("Close"));
        said.insert(header::DATE, HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 GMT"));
        let mut out = Vec::new();
        assert!(write_head(&mut out, StatusCode::OK, &said, Payload::Length(0), false));
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.matches("connection").count(), 1, "{text}");
        assert_eq!(text.matches("date").count(), 1, "{text}");

        let mut out = Vec::new();
        write_head(&mut out, StatusCode::OK, &HeaderMap::new(), Payload::None(Some(15)), false);
        assert!(String::from_utf8(out).unwrap().ends_with("content-length: 15\r\n\r\n"));
        let mut out = Vec::new();
        write_head(&mut out, StatusCode::NO_CONTENT, &HeaderMap::new(), Payload::None(None), false);
        assert!(!String::from_utf8(out).unwrap().contains("content-length"));
    }

    proptest! {
        /// However the bytes arrive, the loop waits until the head is whole and then
        /// reads the same request; the body and anything after it stay in the buffer.
        #[test]
        fn a_head_cut_anywhere_parses_the_same_once_whole(cut in 0usize..200) {
            let bytes: &[u8] = b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1:8080\r\n\
                content-type: application/json\r\ncontent-length: 11\r\nauthorization: Bearer k\r\n\r\n\
                {\"model\":1}GET / HTTP/1.1\r\n\r\n";
            let cut = cut.min(bytes.len());
            let mut buf = BytesMut::from(&bytes[..cut]);
            let head_len = bytes.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
            let first = parse(&mut buf, MAX);
            if cut < head_len {
                prop_assert!(matches!(first, Parsed::Partial));
                buf.extend_from_slice(&bytes[cut..]);
                let Parsed::Head(head) = parse(&mut buf, MAX) else { panic!("not parsed") };
                prop_assert_eq!(head.content_length, 11);
            } else {
                let Parsed::Head(head) = first else { panic!("not parsed") };
                prop_assert_eq!(head.parts.headers["authorization"].as_bytes(), b"Bearer k");
                buf.extend_from_slice(&bytes[cut..]);
            }
            prop_assert_eq!(&buf[..], &bytes[head_len..]);
        }

        /// Garbage never panics, and whatever the loop declines it gives back whole.
        #[test]
        fn garbage_never_panics_and_declined_bytes_are_kept(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut buf = BytesMut::from(&bytes[..]);
            match parse(&mut buf, MAX) {
                Parsed::Partial | Parsed::HandOff => prop_assert_eq!(&buf[..], &bytes[..]),
                Parsed::Head(_) => prop_assert!(buf.len() < bytes.len()),
            }
        }
    }
}
