//! A lean HTTP/1.1 client for cleartext upstreams (vLLM, Ollama, llama.cpp and other
//! servers on `http://`), used instead of hyper-util's pool on the hot path.
//!
//! Why: hyper-util drives each pooled connection from a task of its own, so every
//! request crosses a channel to that task and the response crosses back, and the pool
//! checkout is a future with its own bookkeeping. Measured end to end that cost ~5 µs
//! of CPU per proxied request, about a quarter of the router's whole budget (see
//! docs/benchmarks.md). Here the request's own task writes the request and reads the
//! answer on a pooled socket: no task hop, no channel, one `write` and usually one
//! `read`.
//!
//! What it speaks: requests with a `content-length` body; responses framed by
//! `content-length`, `transfer-encoding: chunked` or the end of the connection, with
//! interim 1xx answers skipped. A connection goes back to the pool only after its
//! response ended cleanly and nothing said `connection: close`; a pooled connection the
//! peer closed while idle is noticed (its readiness turned readable) and dropped at
//! checkout, without a system call when it is still good. HTTPS and h2c upstreams keep
//! using hyper ([`crate::client`]).

use std::borrow::Cow;
use std::collections::VecDeque;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Uri, Version};
use http_body::{Frame, SizeHint};
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::upstream::is_hop_by_hop;

/// Largest response head accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Most response header fields accepted.
const MAX_HEADERS: usize = 100;
/// Fields the router adds to an answer's headers (backend and model labels, request
/// id, cache directive, content type, overhead), reserved when the map is built.
const ROUTER_HEADERS: usize = 6;
/// Largest chunk-size line (size, extensions) accepted.
const MAX_CHUNK_LINE: usize = 4096;
/// How often released connections trigger a sweep of expired idle ones.
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// Read buffer size.
const READ_CHUNK: usize = 8 * 1024;
/// Bodies up to this size are copied behind the head so the request goes out in one
/// write; larger ones are written after it.
const COALESCE_BODY: usize = 64 * 1024;

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum H1Error {
    /// The TCP connection could not be made.
    #[error("connect: {0}")]
    Connect(io::Error),
    /// Connecting took longer than the connect timeout.
    #[error("connect timed out")]
    ConnectTimeout,
    /// The connection failed or closed before the response ended.
    #[error("connection: {0}")]
    Io(io::Error),
    /// The connection closed before a complete response head arrived.
    #[error("connection closed before the response head")]
    Closed,
    /// The peer's bytes are not HTTP/1.1 we accept.
    #[error("invalid response: {0}")]
    Invalid(&'static str),
}

impl H1Error {
    /// Whether the request may not have reached the upstream at all.
    pub(crate) fn is_connect(&self) -> bool {
        matches!(self, H1Error::Connect(_) | H1Error::ConnectTimeout)
    }
}

/// Where and how to connect.
#[derive(Clone, Debug)]
pub(crate) struct PoolSettings {
    pub(crate) connect_timeout: Duration,
    pub(crate) idle_timeout: Duration,
    pub(crate) max_idle_per_host: usize,
    pub(crate) tcp_keepalive: Option<Duration>,
}

/// Idle connections per `host:port`. Cheap to clone: clones share the pool.
#[derive(Clone, Debug)]
pub(crate) struct Pool {
    inner: Arc<PoolInner>,
}

#[derive(Debug)]
struct PoolInner {
    settings: PoolSettings,
    idle: Mutex<IdleLists>,
}

/// Idle connections per `host:port`, oldest first; swept of expired ones now and then.
#[derive(Debug)]
struct IdleLists {
    /// Looked up twice per request (check-out, check-in); the hosts come from the
    /// configuration, so a fast hasher (foldhash).
    hosts: foldhash::HashMap<Arc<str>, VecDeque<Idle>>,
    swept: Instant,
}

#[derive(Debug)]
struct Idle {
    stream: TcpStream,
    key: Arc<str>,
    since: Instant,
}

/// A connection checked out for one exchange, given back when its response ends.
#[derive(Debug)]
struct Lease {
    stream: TcpStream,
    key: Arc<str>,
    pool: Arc<PoolInner>,
}

/// How the response body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    Length(u64),
    Chunked(Chunk),
    UntilClose,
    Done,
}

/// Where the chunked decoder is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Chunk {
    Size,
    Data(u64),
    DataEnd,
    Trailer,
}

/// A response body read from a pooled connection; the connection goes back to the
/// pool when the body ends cleanly and is closed if the body is dropped before.
#[derive(Debug)]
pub(crate) struct ResponseBody {
    lease: Option<Lease>,
    buf: BytesMut,
    framing: Framing,
    reuse: bool,
}

impl Pool {
    pub(crate) fn new(settings: PoolSettings) -> Self {
        let idle = IdleLists { hosts: foldhash::HashMap::default(), swept: Instant::now() };
        Pool { inner: Arc::new(PoolInner { settings, idle: Mutex::new(idle) }) }
    }

    /// Send one request and read the response head. The body is read through the
    /// returned [`ResponseBody`]. `now` is the time the caller just read: idle
    /// connections are judged expired or not at it.
    pub(crate) async fn send(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        body: &Bytes,
        now: Instant,
    ) -> Result<(http::response::Parts, ResponseBody), H1Error> {
        let authority = uri.authority().ok_or(H1Error::Invalid("the url has no host"))?;
        let host = authority.as_str().rsplit('@').next().unwrap_or_default();
        let key = pool_key(authority, host);
        let head = request_head(method, uri, host, headers, body.len());
        let mut lease = match self.checkout(&key, now) {
            Some(lease) => lease,
            None => self.connect(Arc::from(&*key)).await?,
        };
        write_request(&mut lease.stream, head, body).await.map_err(H1Error::Io)?;
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        let (parts, framing, reuse) = loop {
            if lease.stream.read_buf(&mut buf).await.map_err(H1Error::Io)? == 0 {
                return Err(H1Error::Closed);
            }
            match parse_head(&mut buf, method)? {
                Some(Head::Interim) => continue,
                Some(Head::Final { parts, framing, reuse }) => break (parts, framing, reuse),
                None if buf.len() >= MAX_HEAD => {
                    return Err(H1Error::Invalid("response head too large"));
                }
                None => buf.reserve(READ_CHUNK),
            }
        };
        let mut body = ResponseBody { lease: Some(lease), buf, framing, reuse };
        body.finish_if_done();
        Ok((parts, body))
    }

    /// The most recently used idle connection to `key` that is still open.
    fn checkout(&self, key: &str, now: Instant) -> Option<Lease> {
        let timeout = self.inner.settings.idle_timeout;
        loop {
            let idle = self.inner.idle.lock().hosts.get_mut(key)?.pop_back();
            let Idle { stream, key, since } = idle?;
            if now.saturating_duration_since(since) >= timeout || !still_open(&stream) {
                continue;
            }
            return Some(Lease { stream, key, pool: self.inner.clone() });
        }
    }

    async fn connect(&self, key: Arc<str>) -> Result<Lease, H1Error> {
        let settings = &self.inner.settings;
        let stream =
            match tokio::time::timeout(settings.connect_timeout, TcpStream::connect(&*key)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => return Err(H1Error::Connect(error)),
                Err(_) => return Err(H1Error::ConnectTimeout),
            };
        // Without NODELAY a reused connection stalls on delayed ACKs.
        stream.set_nodelay(true).map_err(H1Error::Connect)?;
        if let Some(interval) = settings.tcp_keepalive {
            let keepalive =
                socket2::TcpKeepalive::new().with_time(interval).with_interval(interval);
            // Best effort, like hyper-util's connector: a socket without keepalive still works.
            if let Err(error) = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive) {
                tracing::debug!(%error, "cannot set TCP keepalive on an upstream socket");
            }
        }
        Ok(Lease { stream, key, pool: self.inner.clone() })
    }
}

impl Lease {
    /// Back to the pool (most recently used last), unless the host's list is full.
    /// Connections idle past the timeout are closed here too, at most once a second
    /// over every host, so a host no longer asked keeps no sockets for long.
    fn release(self) {
        let Lease { stream, key, pool } = self;
        let settings = &pool.settings;
        if settings.max_idle_per_host == 0 {
            return;
        }
        let now = Instant::now();
        let mut idle = pool.idle.lock();
        match idle.hosts.get_mut(&*key) {
            Some(list) if list.len() < settings.max_idle_per_host => {
                list.push_back(Idle { stream, key, since: now });
            }
            Some(_) => {}
            None => {
                idle.hosts.insert(key.clone(), VecDeque::from([Idle { stream, key, since: now }]));
            }
        }
        if now.saturating_duration_since(idle.swept) >= SWEEP_EVERY {
            idle.swept = now;
            let timeout = settings.idle_timeout;
            for list in idle.hosts.values_mut() {
                while list
                    .front()
                    .is_some_and(|c| now.saturating_duration_since(c.since) >= timeout)
                {
                    list.pop_front();
                }
            }
            idle.hosts.retain(|_, list| !list.is_empty());
        }
    }
}

/// An idle connection is good if nothing arrived on it: tokio marks it readable when
/// the peer closes it (or sends stray bytes), and only then does this read.
fn still_open(stream: &TcpStream) -> bool {
    let mut probe = [0u8; 1];
    matches!(stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
}

/// `host:port` (what to connect to), the port made explicit; `host` is the authority
/// without user information.
fn pool_key<'a>(authority: &http::uri::Authority, host: &'a str) -> Cow<'a, str> {
    // Digits after the last colon (an IPv6 literal's colons are followed by `]` at the
    // end): read here rather than parsed into a number by `port_u16` on every request.
    let explicit = host
        .rsplit_once(':')
        .is_some_and(|(_, port)| !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()));
    if explicit { Cow::Borrowed(host) } else { Cow::Owned(format!("{}:80", authority.host())) }
}

/// Request line and headers. `host` and `content-length` are the client's to write;
/// connection-level headers from the caller are dropped.
fn request_head(
    method: &Method,
    uri: &Uri,
    authority: &str,
    headers: &HeaderMap,
    body_len: usize,
) -> Vec<u8> {
    let target = uri.path_and_query().map_or("/", http::uri::PathAndQuery::as_str);
    let mut head = Vec::with_capacity(128 + target.len() + headers.len() * 48);
    head.extend_from_slice(method.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(target.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    head.extend_from_slice(authority.as_bytes());
    if body_len > 0 || !matches!(*method, Method::GET | Method::HEAD) {
        head.extend_from_slice(b"\r\ncontent-length: ");
        head.extend_from_slice(itoa::Buffer::new().format(body_len).as_bytes());
    }
    head.extend_from_slice(b"\r\n");
    for (name, value) in headers {
        // `host` and `content-length` are written above; connection-level headers
        // describe the caller's connection, not this one.
        if name == header::HOST || name == header::CONTENT_LENGTH || is_hop_by_hop(name) {
            continue;
        }
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    head
}

async fn write_request(stream: &mut TcpStream, mut head: Vec<u8>, body: &Bytes) -> io::Result<()> {
    if body.len() <= COALESCE_BODY {
        head.extend_from_slice(body);
        stream.write_all(&head).await
    } else {
        stream.write_all(&head).await?;
        stream.write_all(body).await
    }
}

/// A parsed response head.
enum Head {
    /// A 1xx answer, consumed; the real one follows.
    Interim,
    Final {
        parts: http::response::Parts,
        framing: Framing,
        reuse: bool,
    },
}

/// Parse a response head at the start of `buf` and consume it; `None` if incomplete.
fn parse_head(buf: &mut BytesMut, method: &Method) -> Result<Option<Head>, H1Error> {
    // Left uninitialised for httparse to fill: a 100-field array of empty headers
    // would be 3.2 KB of stores per response, for the half dozen fields it carries.
    let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut response,
        buf,
        &mut fields,
    );
    let len = match parsed {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(H1Error::Invalid("too many response headers"));
        }
        Err(_) => return Err(H1Error::Invalid("malformed response head")),
    };
    let code = response.code.unwrap_or(0);
    let status = StatusCode::from_u16(code).map_err(|_| H1Error::Invalid("invalid status"))?;
    if status == StatusCode::SWITCHING_PROTOCOLS {
        return Err(H1Error::Invalid("unexpected protocol switch"));
    }
    if status.is_informational() {
        buf.advance(len);
        return Ok(Some(Head::Interim));
    }
    let version = if response.version == Some(0) { Version::HTTP_10 } else { Version::HTTP_11 };
    // Framing from the raw fields; names and values after the head is split off the
    // buffer, every value a slice of that one allocation instead of a copy of its own.
    let start = buf.as_ptr() as usize;
    let mut spans = [((0, 0), (0, 0)); MAX_HEADERS];
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut coded = false;
    let mut close = version == Version::HTTP_10;
    // The framing fields describe the wire, not the decoded body handed out: they are
    // read here and not kept.
    let mut kept = 0;
    for field in response.headers.iter() {
        let name = field.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            let parsed = std::str::from_utf8(field.value)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or(H1Error::Invalid("invalid content-length"))?;
            if length.is_some_and(|known| known != parsed) {
                return Err(H1Error::Invalid("conflicting content-length"));
            }
            length = Some(parsed);
            continue;
        }
        if name.eq_ignore_ascii_case(b"transfer-encoding") {
            coded = true;
            // Only the last coding frames the message.
            chunked = field
                .value
                .rsplit(|&b| b == b',')
                .next()
                .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            continue;
        }
        if name.eq_ignore_ascii_case(b"connection") {
            for token in field.value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    close = false;
                }
            }
        }
        // httparse hands out slices of `buf`.
        let range = |part: &[u8]| {
            let at = part.as_ptr() as usize - start;
            (at, at + part.len())
        };
        spans[kept] = (range(name), range(field.value));
        kept += 1;
    }
    let head = buf.split_to(len).freeze();
    // Room for what the router adds to an answer (its labels, the request id, a
    // cache directive) without growing the map.
    let mut headers = HeaderMap::with_capacity(kept + ROUTER_HEADERS);
    for ((name_at, name_end), (value_at, value_end)) in spans.into_iter().take(kept) {
        let name = HeaderName::from_bytes(&head[name_at..name_end])
            .map_err(|_| H1Error::Invalid("invalid header name"))?;
        let value = HeaderValue::from_maybe_shared(head.slice(value_at..value_end))
            .map_err(|_| H1Error::Invalid("invalid header value"))?;
        headers.append(name, value);
    }
    let bodiless = *method == Method::HEAD
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let framing = if bodiless {
        Framing::Done
    } else if coded {
        if chunked { Framing::Chunked(Chunk::Size) } else { Framing::UntilClose }
    } else {
        match length {
            Some(len) => Framing::Length(len),
            None => Framing::UntilClose,
        }
    };
    let reuse = !close && framing != Framing::UntilClose;
    let mut builder = http::Response::new(());
    *builder.status_mut() = status;
    *builder.version_mut() = version;
    *builder.headers_mut() = headers;
    let (parts, ()) = builder.into_parts();
    Ok(Some(Head::Final { parts, framing, reuse }))
}

/// What one decoding step produced.
enum Step {
    Data(Bytes),
    NeedMore,
    End,
}

impl ResponseBody {
    /// Decode what is buffered.
    fn step(&mut self) -> Result<Step, H1Error> {
        loop {
            match self.framing {
                Framing::Done => return Ok(Step::End),
                Framing::Length(0) => {
                    self.framing = Framing::Done;
                    return Ok(Step::End);
                }
                Framing::Length(left) => {
                    if self.buf.is_empty() {
                        return Ok(Step::NeedMore);
                    }
                    let take = clamp(left, self.buf.len());
                    self.framing = Framing::Length(left - take as u64);
                    return Ok(Step::Data(self.buf.split_to(take).freeze()));
                }
                Framing::UntilClose => {
                    if self.buf.is_empty() {
                        return Ok(Step::NeedMore);
                    }
                    return Ok(Step::Data(self.buf.split().freeze()));
                }
                Framing::Chunked(state) => match decode_chunk(state, &mut self.buf)? {
                    Decoded::Data(next, data) => {
                        self.framing = next;
                        return Ok(Step::Data(data));
                    }
                    Decoded::Moved(next) => self.framing = next,
                    Decoded::NeedMore => return Ok(Step::NeedMore),
                },
            }
        }
    }

    /// Give the connection back once the body is complete.
    fn finish_if_done(&mut self) {
        let complete = match self.framing {
            Framing::Done | Framing::Length(0) => true,
            // A chunked body's end is only known from its last chunk.
            _ => false,
        };
        if complete {
            self.framing = Framing::Done;
            if let Some(lease) = self.lease.take()
                && self.reuse
                && self.buf.is_empty()
            {
                lease.release();
            }
        }
    }

    /// The body is over without a clean end: close the connection, never pool it.
    fn abandon(&mut self) {
        self.lease = None;
        self.framing = Framing::Done;
    }

    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<Result<usize, H1Error>> {
        let Some(lease) = self.lease.as_mut() else {
            return Poll::Ready(Ok(0));
        };
        if self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.reserve(READ_CHUNK);
        }
        let read = tokio_util::io::poll_read_buf(Pin::new(&mut lease.stream), cx, &mut self.buf);
        Poll::Ready(ready!(read).map_err(H1Error::Io))
    }
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = H1Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, H1Error>>> {
        let this = self.get_mut();
        loop {
            match this.step() {
                Ok(Step::Data(data)) => {
                    this.finish_if_done();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(Step::End) => {
                    this.finish_if_done();
                    return Poll::Ready(None);
                }
                Ok(Step::NeedMore) => {}
                Err(error) => {
                    this.abandon();
                    return Poll::Ready(Some(Err(error)));
                }
            }
            match ready!(this.poll_fill(cx)) {
                Ok(0) if this.framing == Framing::UntilClose => {
                    this.abandon();
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    this.abandon();
                    return Poll::Ready(Some(Err(H1Error::Io(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the connection closed before the body ended",
                    )))));
                }
                Ok(_) => {}
                Err(error) => {
                    this.abandon();
                    return Poll::Ready(Some(Err(error)));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.framing == Framing::Done
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Length(left) => SizeHint::with_exact(left),
            Framing::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

fn clamp(left: u64, available: usize) -> usize {
    usize::try_from(left).map_or(available, |left| left.min(available))
}

/// What one step of the chunked decoder did.
enum Decoded {
    /// Released data; the decoder is now in the given state.
    Data(Framing, Bytes),
    /// Consumed framing bytes; `Framing::Done` once the body ended (trailers are read
    /// and dropped).
    Moved(Framing),
    /// Needs more bytes.
    NeedMore,
}

/// One step of the chunked decoder over `buf`.
fn decode_chunk(state: Chunk, buf: &mut BytesMut) -> Result<Decoded, H1Error> {
    match state {
        Chunk::Size => {
            let Some(end) = find_crlf(buf) else {
                if buf.len() > MAX_CHUNK_LINE {
                    return Err(H1Error::Invalid("chunk size line too long"));
                }
                return Ok(Decoded::NeedMore);
            };
            let line = &buf[..end];
            let digits = line.split(|&b| b == b';').next().unwrap_or_default().trim_ascii();
            if digits.is_empty() || digits.len() > 15 {
                return Err(H1Error::Invalid("invalid chunk size"));
            }
            let mut size = 0u64;
            for &digit in digits {
                let value =
                    (digit as char).to_digit(16).ok_or(H1Error::Invalid("invalid chunk size"))?;
                size = size * 16 + u64::from(value);
            }
            buf.advance(end + 2);
            let next = if size == 0 { Chunk::Trailer } else { Chunk::Data(size) };
            Ok(Decoded::Moved(Framing::Chunked(next)))
        }
        Chunk::Data(left) => {
            if buf.is_empty() {
                return Ok(Decoded::NeedMore);
            }
            let take = clamp(left, buf.len());
            let rest = left - take as u64;
            let next = if rest == 0 { Chunk::DataEnd } else { Chunk::Data(rest) };
            Ok(Decoded::Data(Framing::Chunked(next), buf.split_to(take).freeze()))
        }
        Chunk::DataEnd => {
            if buf.len() < 2 {
                return Ok(Decoded::NeedMore);
            }
            if &buf[..2] != b"\r\n" {
                return Err(H1Error::Invalid("chunk not followed by CRLF"));
            }
            buf.advance(2);
            Ok(Decoded::Moved(Framing::Chunked(Chunk::Size)))
        }
        Chunk::Trailer => {
            let Some(end) = find_crlf(buf) else {
                if buf.len() > MAX_HEAD {
                    return Err(H1Error::Invalid("trailers too large"));
                }
                return Ok(Decoded::NeedMore);
            };
            buf.advance(end + 2);
            // An empty line ends the trailers and the body.
            Ok(Decoded::Moved(if end == 0 { Framing::Done } else { Framing::Chunked(state) }))
        }
    }
}

/// Where the first CRLF starts (a `memchr` for CR: cheaper than building a substring
/// searcher for two bytes on every call).
fn find_crlf(buf: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(offset) = memchr::memchr(b'\r', &buf[from..]) {
        let at = from + offset;
        if buf.get(at + 1) == Some(&b'\n') {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use proptest::prelude::*;
    use tokio::net::TcpListener;

    fn settings() -> PoolSettings {
        PoolSettings {
            connect_timeout: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(90),
            max_idle_per_host: 4,
            tcp_keepalive: None,
        }
    }

    /// Decode `wire` fed in pieces cut at `cuts`; the data and whether it ended.
    fn decode_all(wire: &[u8], cuts: &[usize]) -> Result<(Vec<u8>, bool), H1Error> {
        let mut buf = BytesMut::new();
        let mut framing = Framing::Chunked(Chunk::Size);
        let mut out = Vec::new();
        let mut fed = 0;
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (wire.len() + 1)).collect();
        points.push(wire.len());
        points.sort_unstable();
        for point in points {
            buf.extend_from_slice(&wire[fed..point.max(fed)]);
            fed = point.max(fed);
            while let Framing::Chunked(state) = framing {
                match decode_chunk(state, &mut buf)? {
                    Decoded::Data(next, data) => {
                        out.extend_from_slice(&data);
                        framing = next;
                    }
                    Decoded::Moved(next) => framing = next,
                    Decoded::NeedMore => break,
                }
            }
        }
        Ok((out, framing == Framing::Done))
    }

    fn chunked(chunks: &[Vec<u8>]) -> Vec<u8> {
        let mut wire = Vec::new();
        for chunk in chunks.iter().filter(|c| !c.is_empty()) {
            wire.extend_from_slice(format!("{:x};ext=1\r\n", chunk.len()).as_bytes());
            wire.extend_from_slice(chunk);
            wire.extend_from_slice(b"\r\n");
        }
        wire.extend_from_slice(b"0\r\nx-trailer: 1\r\n\r\n");
        wire
    }

    proptest! {
        #[test]
        fn chunked_bodies_decode_to_their_data_however_they_are_cut(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..8),
            cuts in proptest::collection::vec(any::<usize>(), 0..12),
        ) {
            let wire = chunked(&chunks);
            let (data, ended) = decode_all(&wire, &cuts).unwrap();
            prop_assert_eq!(data, chunks.concat());
            prop_assert!(ended);
        }

        #[test]
        fn garbage_never_panics(wire in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_all(&wire, &[]);
            let mut buf = BytesMut::from(&wire[..]);
            let _ = parse_head(&mut buf, &Method::POST);
        }
    }

    #[test]
    fn crlf_is_found_past_lone_carriage_returns() {
        assert_eq!(find_crlf(b"ab\r\n"), Some(2));
        assert_eq!(find_crlf(b"a\rb\r\r\n"), Some(4));
        assert_eq!(find_crlf(b"a\rb\r"), None);
        assert_eq!(find_crlf(b""), None);
    }

    #[test]
    fn bad_chunk_sizes_are_errors() {
        assert!(decode_all(b"zz\r\n", &[]).is_err());
        assert!(decode_all(b"ffffffffffffffffff\r\n", &[]).is_err());
        assert!(decode_all(b"2\r\nabXY", &[]).is_err());
        assert!(decode_all(&[b'1'; 5000], &[]).is_err());
    }

    #[test]
    fn heads_frame_bodies() {
        let framing = |head: &str, method: Method| {
            let mut buf = BytesMut::from(head);
            match parse_head(&mut buf, &method).unwrap() {
                Some(Head::Final { framing, reuse, parts }) => (framing, reuse, parts.status),
                _ => panic!("not a final head: {head}"),
            }
        };
        let (f, reuse, _) = framing("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", Method::POST);
        assert_eq!((f, reuse), (Framing::Length(5), true));
        let (f, reuse, _) = framing(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\nconnection: close\r\n\r\n",
            Method::POST,
        );
        assert_eq!((f, reuse), (Framing::Chunked(Chunk::Size), false));
        let (f, reuse, _) = framing("HTTP/1.1 200 OK\r\n\r\n", Method::POST);
        assert_eq!((f, reuse), (Framing::UntilClose, false));
        let (f, reuse, _) = framing("HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\n", Method::GET);
        assert_eq!((f, reuse), (Framing::Length(1), false));
        let (f, _, status) = framing("HTTP/1.1 204 No Content\r\n\r\n", Method::POST);
        assert_eq!((f, status), (Framing::Done, StatusCode::NO_CONTENT));
        let (f, _, _) = framing("HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n", Method::HEAD);
        assert_eq!(f, Framing::Done);

        let mut interim = BytesMut::from("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n");
        assert!(matches!(parse_head(&mut interim, &Method::POST), Ok(Some(Head::Interim))));
        assert_eq!(&interim[..], b"HTTP/1.1 200 OK\r\n");
        assert!(matches!(parse_head(&mut interim, &Method::POST), Ok(None)));

        for bad in [
            "HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n",
            "HTTP/1.1 101 Switching\r\n\r\n",
            "SSH-2.0-OpenSSH\r\n\r\n",
        ] {
            assert!(parse_head(&mut BytesMut::from(bad), &Method::POST).is_err(), "{bad}");
        }
    }

    #[test]
    fn pool_keys_name_the_port() {
        for (url, key) in [
            ("http://127.0.0.1:8000/v1", "127.0.0.1:8000"),
            ("http://localhost/v1", "localhost:80"),
            ("http://user:pw@example.com/v1", "example.com:80"),
            ("http://user:pw@example.com:81/v1", "example.com:81"),
            ("http://[::1]/v1", "[::1]:80"),
            ("http://[::1]:8080/v1", "[::1]:8080"),
        ] {
            let uri: Uri = url.parse().unwrap();
            let authority = uri.authority().unwrap();
            let host = authority.as_str().rsplit('@').next().unwrap();
            assert_eq!(pool_key(authority, host), key, "{url}");
        }
    }

    #[test]
    fn heads_keep_end_to_end_fields_and_leave_framing_out() {
        let mut buf = BytesMut::from(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\
             x-ratelimit-remaining-requests: 7\r\ntransfer-encoding: chunked\r\n\
             connection: keep-alive\r\n\r\n",
        );
        let Some(Head::Final { parts, framing, .. }) = parse_head(&mut buf, &Method::POST).unwrap()
        else {
            panic!("not a final head");
        };
        // `transfer-encoding` wins over `content-length`, and neither is handed on.
        assert_eq!(framing, Framing::Chunked(Chunk::Size));
        let names: Vec<_> = parts.headers.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["content-type", "x-ratelimit-remaining-requests", "connection"]);
        assert_eq!(parts.headers["x-ratelimit-remaining-requests"], "7");
        assert!(buf.is_empty());
    }

    #[test]
    fn request_heads_carry_host_and_length_and_drop_connection_headers() {
        let uri: Uri = "http://127.0.0.1:8000/v1/chat/completions?x=1".parse().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        headers.insert(header::HOST, HeaderValue::from_static("evil"));
        headers.insert("x-request-id", HeaderValue::from_static("abc"));
        let head = request_head(&Method::POST, &uri, "127.0.0.1:8000", &headers, 12);
        assert_eq!(
            String::from_utf8(head).unwrap(),
            "POST /v1/chat/completions?x=1 HTTP/1.1\r\nhost: 127.0.0.1:8000\r\n\
             content-length: 12\r\nx-request-id: abc\r\n\r\n"
        );
        let head = request_head(&Method::GET, &uri, "h", &HeaderMap::new(), 0);
        assert!(!String::from_utf8(head).unwrap().contains("content-length"));
    }

    /// A server answering each request on a connection with `answers` in turn, then
    /// closing; counts the connections it accepted.
    async fn server(answers: Vec<&'static [u8]>) -> (Uri, Arc<std::sync::atomic::AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let answers = answers.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    for answer in answers {
                        let mut seen = Vec::new();
                        // Read one request: a head and a content-length body.
                        loop {
                            let n = socket.read(&mut buf).await.unwrap_or(0);
                            if n == 0 {
                                return;
                            }
                            seen.extend_from_slice(&buf[..n]);
                            let text = String::from_utf8_lossy(&seen).to_string();
                            if let Some(end) = text.find("\r\n\r\n") {
                                let len = text
                                    .lines()
                                    .find_map(|l| l.strip_prefix("content-length: "))
                                    .map_or(0, |v| v.trim().parse::<usize>().unwrap());
                                if seen.len() >= end + 4 + len {
                                    break;
                                }
                            }
                        }
                        // Write in two pieces to exercise partial reads.
                        let (a, b) = answer.split_at(answer.len() / 2);
                        socket.write_all(a).await.unwrap();
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        socket.write_all(b).await.unwrap();
                    }
                });
            }
        });
        (format!("http://{addr}/v1/chat/completions").parse().unwrap(), accepted)
    }

    async fn post(pool: &Pool, uri: &Uri) -> Result<(StatusCode, Bytes), H1Error> {
        let body = Bytes::from_static(b"{}");
        let (parts, body) =
            pool.send(&Method::POST, uri, &HeaderMap::new(), &body, Instant::now()).await?;
        let bytes = body.collect().await?.to_bytes();
        Ok((parts.status, bytes))
    }

    #[tokio::test]
    async fn connections_are_reused_after_complete_bodies() {
        let (uri, accepted) = server(vec![
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello",
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
            b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        ])
        .await;
        let pool = Pool::new(settings());
        assert_eq!(post(&pool, &uri).await.unwrap(), (StatusCode::OK, Bytes::from("hello")));
        assert_eq!(post(&pool, &uri).await.unwrap(), (StatusCode::CREATED, Bytes::from("abcde")));
        assert_eq!(post(&pool, &uri).await.unwrap(), (StatusCode::NOT_FOUND, Bytes::new()));
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
        // The last answer said `connection: close`: the next request connects afresh.
        post(&pool, &uri).await.unwrap();
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_connection_the_peer_closed_while_idle_is_not_reused() {
        // One answer per connection, then the server closes it.
        let (uri, accepted) = server(vec![b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"]).await;
        let pool = Pool::new(settings());
        for round in 1..=3 {
            assert_eq!(post(&pool, &uri).await.unwrap().1, Bytes::from("ok"));
            // Let the close arrive and the runtime see it.
            tokio::time::sleep(Duration::from_millis(30)).await;
            assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), round);
        }
    }

    #[tokio::test]
    async fn idle_connections_expire() {
        let (uri, accepted) = server(vec![
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
        ])
        .await;
        let pool =
            Pool::new(PoolSettings { idle_timeout: Duration::from_millis(50), ..settings() });
        post(&pool, &uri).await.unwrap();
        tokio::time::sleep(Duration::from_millis(80)).await;
        // The idle connection expired: a new one is made although the first is open.
        post(&pool, &uri).await.unwrap();
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
        // A sweep closes expired connections of every host.
        tokio::time::sleep(Duration::from_millis(60)).await;
        pool.inner.idle.lock().swept -= SWEEP_EVERY;
        let (other, _) = server(vec![b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"]).await;
        post(&pool, &other).await.unwrap();
        let idle = pool.inner.idle.lock();
        assert_eq!(idle.hosts.len(), 1, "only the fresh host's connection is kept");
    }

    #[tokio::test]
    async fn truncated_bodies_are_errors_and_close_delimited_bodies_end_at_close() {
        let (uri, _) = server(vec![b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort"]).await;
        let pool = Pool::new(settings());
        let error = post(&pool, &uri).await.unwrap_err();
        assert!(matches!(error, H1Error::Io(_)), "{error}");

        let (uri, _) = server(vec![b"HTTP/1.1 200 OK\r\n\r\nuntil close"]).await;
        assert_eq!(post(&pool, &uri).await.unwrap().1, Bytes::from("until close"));

        let (uri, _) = server(vec![b"HTTP/1.1 200 OK\r\ncontent-"]).await;
        assert!(matches!(post(&pool, &uri).await.unwrap_err(), H1Error::Closed));
    }

    #[tokio::test]
    async fn refused_connections_are_connect_errors() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let uri: Uri = format!("http://{addr}/").parse().unwrap();
        let error = post(&Pool::new(settings()), &uri).await.unwrap_err();
        assert!(error.is_connect(), "{error}");
    }
}
