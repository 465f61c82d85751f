//! One upstream exchange with its timeouts: send, wait for the head within the
//! first-byte timeout, then either collect the body within the total timeout or relay it
//! as a stream with an idle-gap and a total limit. Shared by every adapter.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use futures_core::Stream;
use http::header::{self, HeaderMap, HeaderName};
use http::response::Parts;
use http_body::Body as _;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use pin_project_lite::pin_project;
use serde::{Deserialize, Serialize};
use switchyard_core::{BackendError, BodyStream, ErrorCode};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

use crate::client::HttpClient;

/// Per-backend time limits.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Timeouts {
    /// TCP (and TLS) connect. Default 5 s.
    pub connect: Duration,
    /// From sending the request to the response head. Default 30 s.
    pub first_byte: Duration,
    /// Whole non-streaming exchange. Default 30 s.
    pub total: Duration,
    /// Longest gap between two chunks of a stream. Default 60 s.
    pub idle: Duration,
    /// Whole streaming exchange. Default 300 s.
    pub streaming_total: Duration,
}

/// Largest non-streaming response body accepted from a backend.
pub(crate) const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

/// A sent request's head and body, with the connection permit it holds.
pub(crate) struct Exchange {
    pub(crate) parts: Parts,
    pub(crate) body: UpstreamBody,
    pub(crate) permit: Option<OwnedSemaphorePermit>,
    pub(crate) started: Instant,
}

/// A response body from either client.
pub(crate) enum UpstreamBody {
    /// From hyper-util's pool (HTTPS, h2c).
    Hyper(Incoming),
    /// From the lean HTTP/1.1 pool (`http://`).
    H1(crate::h1::ResponseBody),
}

type BodyError = Box<dyn std::error::Error + Send + Sync>;

impl http_body::Body for UpstreamBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, BodyError>>> {
        // Both bodies are Unpin.
        match self.get_mut() {
            UpstreamBody::Hyper(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
            UpstreamBody::H1(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Hyper(body) => body.is_end_stream(),
            UpstreamBody::H1(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            UpstreamBody::Hyper(body) => body.size_hint(),
            UpstreamBody::H1(body) => body.size_hint(),
        }
    }
}

pin_project! {
    /// A response body relayed chunk by chunk, ended by an error if the upstream stalls
    /// longer than the idle timeout or runs past the total limit.
    pub(crate) struct UpstreamStream {
        #[pin]
        body: UpstreamBody,
        #[pin]
        timer: Sleep,
        idle: Duration,
        deadline: Instant,
        last_data: Instant,
        backend: Arc<str>,
        done: bool,
        permit: Option<OwnedSemaphorePermit>,
    }
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(5),
            first_byte: Duration::from_secs(30),
            total: Duration::from_secs(30),
            idle: Duration::from_secs(60),
            streaming_total: Duration::from_secs(300),
        }
    }
}

/// Send `request` and wait for the response head within `first_byte`. Waiting for a
/// free connection slot counts against the same limit. `http://` upstreams go through
/// the lean HTTP/1.1 pool, the others through hyper-util's.
pub(crate) async fn exchange(
    client: &HttpClient,
    limit: &Arc<Semaphore>,
    backend: &str,
    request: http::Request<Bytes>,
    first_byte: Duration,
) -> Result<Exchange, BackendError> {
    let started = Instant::now();
    let deadline = started + first_byte;
    // Fast path: a free slot, no timer. Otherwise wait for one within the deadline.
    let permit = match limit.clone().try_acquire_owned() {
        Ok(permit) => Some(permit),
        Err(tokio::sync::TryAcquireError::Closed) => None,
        Err(tokio::sync::TryAcquireError::NoPermits) => {
            match tokio::time::timeout_at(deadline, limit.clone().acquire_owned()).await {
                Ok(Ok(permit)) => Some(permit),
                Ok(Err(_closed)) => None,
                Err(_) => {
                    return Err(BackendError::new(
                        ErrorCode::UpstreamTimeout,
                        format!("backend `{backend}`: no free connection within {first_byte:?}"),
                    ));
                }
            }
        }
    };
    let late = || {
        BackendError::new(
            ErrorCode::UpstreamTimeout,
            format!("backend `{backend}` sent no response within {first_byte:?}"),
        )
    };
    if let Some(pool) = &client.h1
        && request.uri().scheme() == Some(&http::uri::Scheme::HTTP)
    {
        let (head, body) = request.into_parts();
        let sent = pool.send(&head.method, &head.uri, &head.headers, &body, started);
        return match tokio::time::timeout_at(deadline, sent).await {
            Ok(Ok((parts, body))) => {
                Ok(Exchange { parts, body: UpstreamBody::H1(body), permit, started })
            }
            Ok(Err(error)) => Err(h1_error(backend, &error)),
            Err(_) => Err(late()),
        };
    }
    let response =
        match tokio::time::timeout_at(deadline, client.inner.request(request.map(Full::new))).await
        {
            Ok(Ok(response)) => response,
            Ok(Err(error)) => return Err(client_error(backend, &error)),
            Err(_) => return Err(late()),
        };
    let (parts, body) = response.into_parts();
    Ok(Exchange { parts, body: UpstreamBody::Hyper(body), permit, started })
}

impl Exchange {
    /// Read the whole body, within what is left of `total` since the request started.
    pub(crate) async fn collect(
        self,
        backend: &str,
        total: Duration,
    ) -> Result<(Parts, Bytes), BackendError> {
        let deadline = self.started + total;
        match tokio::time::timeout_at(deadline, read_all(self.body)).await {
            Ok(Ok(body)) => Ok((self.parts, body)),
            Ok(Err(Unread::TooLarge)) => Err(BackendError::new(
                ErrorCode::UpstreamInvalid,
                format!("backend `{backend}`: response larger than {MAX_RESPONSE_BYTES} bytes"),
            )),
            Ok(Err(Unread::Lost)) => Err(BackendError::new(
                ErrorCode::UpstreamUnavailable,
                format!("backend `{backend}`: connection lost while reading the response"),
            )),
            Err(_) => Err(BackendError::new(
                ErrorCode::UpstreamTimeout,
                format!("backend `{backend}` did not finish its response within {total:?}"),
            )),
        }
    }

    /// Relay the body as a stream with an idle-gap limit and a total limit.
    pub(crate) fn into_stream(
        self,
        backend: &str,
        idle: Duration,
        total: Duration,
    ) -> (Parts, UpstreamStream) {
        let now = Instant::now();
        let stream = UpstreamStream {
            body: self.body,
            timer: tokio::time::sleep_until(now + idle),
            idle,
            deadline: self.started + total,
            last_data: now,
            backend: Arc::from(backend),
            done: false,
            permit: self.permit,
        };
        (self.parts, stream)
    }
}

/// Why a whole body was not read.
#[derive(Debug, PartialEq)]
enum Unread {
    TooLarge,
    Lost,
}

/// A whole body, at most [`MAX_RESPONSE_BYTES`]: a body that arrives as one chunk (the
/// usual answer) is returned as it is, without a copy or a list of chunks.
async fn read_all<B>(mut body: B) -> Result<Bytes, Unread>
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    let mut first: Option<Bytes> = None;
    let mut joined = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.map_err(|_| Unread::Lost)?.into_data() else { continue };
        let len = first.as_ref().map_or(0, Bytes::len) + joined.len() + data.len();
        if len > MAX_RESPONSE_BYTES {
            return Err(Unread::TooLarge);
        }
        match first.take() {
            None if joined.is_empty() => first = Some(data),
            None => joined.extend_from_slice(&data),
            Some(earlier) => {
                joined.reserve(earlier.len() + data.len());
                joined.extend_from_slice(&earlier);
                joined.extend_from_slice(&data);
            }
        }
    }
    Ok(first.unwrap_or_else(|| joined.freeze()))
}

impl UpstreamStream {
    /// Box it as a core [`BodyStream`].
    pub(crate) fn boxed(self) -> BodyStream {
        Box::pin(self)
    }
}

impl Stream for UpstreamStream {
    type Item = Result<Bytes, BackendError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut this = self.project();
        if *this.done {
            return Poll::Ready(None);
        }
        loop {
            match this.body.as_mut().poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        if data.is_empty() {
                            continue;
                        }
                        *this.last_data = Instant::now();
                        return Poll::Ready(Some(Ok(data)));
                    }
                }
                Poll::Ready(Some(Err(_))) => {
                    *this.done = true;
                    this.permit.take();
                    return Poll::Ready(Some(Err(BackendError::new(
                        ErrorCode::UpstreamUnavailable,
                        format!("backend `{}`: stream interrupted", this.backend),
                    ))));
                }
                Poll::Ready(None) => {
                    *this.done = true;
                    this.permit.take();
                    return Poll::Ready(None);
                }
                Poll::Pending => break,
            }
        }
        // One timer serves both limits; it is re-armed lazily instead of on every chunk.
        loop {
            ready!(this.timer.as_mut().poll(cx));
            let now = Instant::now();
            if now >= *this.deadline {
                *this.done = true;
                this.permit.take();
                return Poll::Ready(Some(Err(BackendError::new(
                    ErrorCode::UpstreamTimeout,
                    format!("backend `{}`: stream exceeded the streaming timeout", this.backend),
                ))));
            }
            let idle_deadline = *this.last_data + *this.idle;
            if now >= idle_deadline {
                *this.done = true;
                this.permit.take();
                return Poll::Ready(Some(Err(BackendError::new(
                    ErrorCode::UpstreamTimeout,
                    format!("backend `{}` sent nothing for {:?}", this.backend, this.idle),
                ))));
            }
            this.timer.as_mut().reset(idle_deadline.min(*this.deadline));
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let hint = self.body.size_hint();
        (0, hint.upper().map(|_| usize::MAX))
    }
}

fn client_error(backend: &str, error: &hyper_util::client::legacy::Error) -> BackendError {
    let message = if error.is_connect() {
        format!("backend `{backend}` refused the connection or could not be reached")
    } else {
        format!("backend `{backend}` closed the connection before answering")
    };
    BackendError::new(ErrorCode::UpstreamUnavailable, message)
}

fn h1_error(backend: &str, error: &crate::h1::H1Error) -> BackendError {
    match error {
        crate::h1::H1Error::Invalid(reason) => BackendError::new(
            ErrorCode::UpstreamInvalid,
            format!("backend `{backend}` answered invalid HTTP: {reason}"),
        ),
        _ if error.is_connect() => BackendError::new(
            ErrorCode::UpstreamUnavailable,
            format!("backend `{backend}` refused the connection or could not be reached"),
        ),
        _ => BackendError::new(
            ErrorCode::UpstreamUnavailable,
            format!("backend `{backend}` closed the connection before answering"),
        ),
    }
}

/// Headers that describe one connection, not the message: never relayed.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TRANSFER_ENCODING,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
    header::PROXY_AUTHENTICATE,
];

/// Whether `name` describes one connection rather than the message.
pub(crate) fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(name)
}

/// Response headers worth relaying to the client: end-to-end headers minus framing
/// (`content-length` is recomputed by the server) and cookies.
pub(crate) fn relay_headers(mut headers: HeaderMap) -> HeaderMap {
    let unwanted = |name: &HeaderName| {
        is_hop_by_hop(name)
            || name == header::CONTENT_LENGTH
            || name == header::SET_COOKIE
            || name == header::DATE
            || name == header::SERVER
    };
    // Remove only what is present (usually `content-length`, often `date` and `server`):
    // a removal hashes the name, and most of the list is never there. Up to eight names
    // are noted on the stack; a head with more removes the rest in a second pass.
    let mut present: [Option<HeaderName>; 8] = Default::default();
    let mut more = false;
    for (noted, name) in headers.keys().filter(|name| unwanted(name)).enumerate() {
        match present.get_mut(noted) {
            Some(slot) => *slot = Some(name.clone()),
            None => more = true,
        }
    }
    if let Some(named) = headers.get(header::CONNECTION).cloned()
        && let Ok(named) = named.to_str()
    {
        for name in named.split(',') {
            if let Ok(name) = HeaderName::from_bytes(name.trim().as_bytes()) {
                headers.remove(name);
            }
        }
    }
    for name in present.into_iter().flatten() {
        headers.remove(name);
    }
    if more {
        let rest: Vec<HeaderName> = headers.keys().filter(|name| unwanted(name)).cloned().collect();
        for name in rest {
            headers.remove(name);
        }
    }
    headers
}

/// The delay a `Retry-After` header asks for (seconds form; HTTP dates are rare from
/// LLM APIs and are treated as absent).
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(header::RETRY_AFTER)?.to_str().ok()?;
    value
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(Duration::from_secs_f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn relays_end_to_end_headers_only() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, HeaderValue::from_static("close, x-hop"));
        headers.insert("x-hop", HeaderValue::from_static("1"));
        headers.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("10"));
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        headers.insert("x-ratelimit-remaining-requests", HeaderValue::from_static("99"));
        headers.insert(header::DATE, HeaderValue::from_static("Mon, 23 Nov 2026 18:00:00 GMT"));
        headers.append(header::SET_COOKIE, HeaderValue::from_static("a=1"));
        headers.append(header::SET_COOKIE, HeaderValue::from_static("b=2"));
        let out = relay_headers(headers);
        let names: Vec<_> = out.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["content-type", "x-ratelimit-remaining-requests"]);
        // Every unwanted name at once still leaves only the end-to-end headers.
        let mut all = HeaderMap::new();
        for name in HOP_BY_HOP.iter().chain(&[
            header::CONTENT_LENGTH,
            header::SET_COOKIE,
            header::DATE,
            header::SERVER,
        ]) {
            all.insert(name, HeaderValue::from_static("x"));
        }
        all.insert("x-kept", HeaderValue::from_static("1"));
        let out = relay_headers(all);
        let names: Vec<_> = out.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["x-kept"]);
    }

    fn frames(
        chunks: Vec<Result<&'static [u8], ()>>,
    ) -> impl http_body::Body<Data = Bytes, Error = &'static str> + Unpin {
        let frames = chunks.into_iter().map(|chunk| {
            chunk.map(|data| http_body::Frame::data(Bytes::from_static(data))).map_err(|()| "lost")
        });
        http_body_util::StreamBody::new(futures_util::stream::iter(frames))
    }

    #[tokio::test]
    async fn a_whole_body_is_one_chunk_as_sent_or_the_chunks_joined() {
        static ONE: &[u8] = b"{\"id\":1}";
        let body = read_all(frames(vec![Ok(ONE)])).await.unwrap();
        assert_eq!(body.as_ptr(), ONE.as_ptr(), "one chunk is passed on, not copied");
        let body = read_all(frames(vec![Ok(b"{\"a\""), Ok(b""), Ok(b":1"), Ok(b"}")])).await;
        assert_eq!(body.unwrap(), &b"{\"a\":1}"[..]);
        assert_eq!(read_all(frames(vec![])).await.unwrap(), Bytes::new());
        assert_eq!(read_all(frames(vec![Ok(b"{"), Err(())])).await, Err(Unread::Lost));
    }

    #[tokio::test]
    async fn a_whole_body_past_the_limit_is_refused() {
        let big: &'static [u8] =
            Box::leak(vec![b' '; MAX_RESPONSE_BYTES / 2 + 1].into_boxed_slice());
        assert_eq!(read_all(frames(vec![Ok(big)])).await.unwrap().len(), big.len());
        assert_eq!(read_all(frames(vec![Ok(big), Ok(big)])).await, Err(Unread::TooLarge));
    }

    #[test]
    fn parses_retry_after_seconds() {
        let mut headers = HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(2)));
        headers.insert(header::RETRY_AFTER, HeaderValue::from_static("0.5"));
        assert_eq!(retry_after(&headers), Some(Duration::from_millis(500)));
        headers
            .insert(header::RETRY_AFTER, HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"));
        assert_eq!(retry_after(&headers), None);
    }
}
