//! Request bodies ([`RequestBody`]: hyper's, or read whole by the connection loop) and
//! response bodies: whole, or relayed from a backend stream chunk by chunk.
//!
//! The relay implements the mid-stream contract (docs/api.md): it forwards only
//! complete SSE events, so when a backend fails after the first byte it can drop the
//! partial event, append one error event and end the stream *without* `data: [DONE]`:
//! no client can mistake a cut stream for a complete one.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Frame, SizeHint};
use switchyard_core::openai::ErrorBody;
use switchyard_core::sse::{SseBoundary, data_event};
use switchyard_core::{BackendError, BodyStream};

/// A request body as the handlers receive it.
pub(crate) enum RequestBody {
    /// Read through hyper (HTTP/2, TLS, and whatever the HTTP/1.1 loop hands over).
    Hyper(hyper::body::Incoming),
    /// Read whole by the HTTP/1.1 loop, within the size limit.
    Full(Bytes),
    /// The HTTP/1.1 loop gave up waiting for it (`server.body_read_timeout`).
    TimedOut,
}

/// How a relayed stream ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RelayOutcome {
    /// The backend ended the stream.
    Completed,
    /// The backend failed mid-stream; the client got an error event.
    Failed(switchyard_core::ErrorCode),
    /// The client went away first; the upstream request was dropped with the relay.
    ClientGone,
}

/// Called once when a relay ends, whichever way.
pub(crate) type OnFinish = Box<dyn FnOnce(RelayOutcome, u64) + Send>;

/// A response body.
pub(crate) struct Body {
    kind: Kind,
}

enum Kind {
    Full(Option<Bytes>),
    Relay(Box<Relay>),
}

/// A backend stream on its way to the client.
pub(crate) struct Relay {
    stream: BodyStream,
    /// Set for SSE: forward whole events only, end failures with an error event.
    sse: Option<SseState>,
    done: bool,
    bytes: u64,
    on_finish: Option<OnFinish>,
}

struct SseState {
    boundary: SseBoundary,
    pending: BytesMut,
    /// End failures with Anthropic's `event: error` instead of OpenAI's error data.
    anthropic: bool,
}

/// What a relayed body is, which decides how a mid-stream failure is reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Framing {
    /// Not server-sent events: a failure aborts the body.
    Raw,
    /// OpenAI's stream: a failure ends it with `data: {"error": ...}` and no `[DONE]`.
    OpenAiEvents,
    /// Anthropic's stream: a failure ends it with `event: error` and no `message_stop`.
    AnthropicEvents,
}

impl Body {
    /// A whole body.
    pub(crate) fn full(bytes: impl Into<Bytes>) -> Self {
        Body { kind: Kind::Full(Some(bytes.into())) }
    }

    /// Relay `stream`; `sse` enables event framing and the error-event contract.
    pub(crate) fn relay(stream: BodyStream, framing: Framing, on_finish: Option<OnFinish>) -> Self {
        let sse = match framing {
            Framing::Raw => None,
            Framing::OpenAiEvents | Framing::AnthropicEvents => Some(SseState {
                boundary: SseBoundary::new(),
                pending: BytesMut::new(),
                anthropic: framing == Framing::AnthropicEvents,
            }),
        };
        Body {
            kind: Kind::Relay(Box::new(Relay { stream, sse, done: false, bytes: 0, on_finish })),
        }
    }
}

impl Relay {
    fn finish(&mut self, outcome: RelayOutcome) {
        self.done = true;
        if let Some(on_finish) = self.on_finish.take() {
            on_finish(outcome, self.bytes);
        }
    }

    fn poll_next_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BackendError>>> {
        loop {
            if self.done {
                return Poll::Ready(None);
            }
            match self.stream.as_mut().poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(chunk))) => {
                    let Some(sse) = self.sse.as_mut() else {
                        self.bytes += chunk.len() as u64;
                        return Poll::Ready(Some(Ok(Frame::data(chunk))));
                    };
                    let complete = sse.boundary.scan(&chunk);
                    let out = if sse.pending.is_empty() && complete == chunk.len() {
                        chunk
                    } else if complete == 0 {
                        sse.pending.extend_from_slice(&chunk);
                        continue;
                    } else {
                        sse.pending.extend_from_slice(&chunk[..complete]);
                        let out = sse.pending.split().freeze();
                        sse.pending.extend_from_slice(&chunk[complete..]);
                        out
                    };
                    self.bytes += out.len() as u64;
                    return Poll::Ready(Some(Ok(Frame::data(out))));
                }
                Poll::Ready(Some(Err(error))) => {
                    self.finish(RelayOutcome::Failed(error.code));
                    let Some(sse) = self.sse.as_mut() else {
                        return Poll::Ready(Some(Err(error)));
                    };
                    // The partial event is dropped; the client gets one whole error event.
                    sse.pending.clear();
                    let event = if sse.anthropic {
                        switchyard_backends::messages_error_event(&error)
                    } else {
                        error_event(&error)
                    };
                    return Poll::Ready(Some(Ok(Frame::data(event))));
                }
                Poll::Ready(None) => {
                    self.finish(RelayOutcome::Completed);
                    if let Some(sse) = self.sse.as_mut()
                        && !sse.pending.is_empty()
                    {
                        // The backend ended without a final blank line: pass it on as is.
                        return Poll::Ready(Some(Ok(Frame::data(sse.pending.split().freeze()))));
                    }
                    return Poll::Ready(None);
                }
            }
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if !self.done {
            self.finish(RelayOutcome::ClientGone);
        }
    }
}

/// The SSE event a client receives when its stream is cut: OpenAI's error shape.
pub(crate) fn error_event(error: &BackendError) -> Bytes {
    let body = ErrorBody::new(&*error.message, error.code.error_type(), Some(error.code.as_str()));
    let json = serde_json::to_vec(&body).unwrap_or_else(|_| b"{\"error\":{}}".to_vec());
    data_event(&json)
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BackendError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BackendError>>> {
        match &mut self.kind {
            Kind::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Kind::Relay(relay) => relay.poll_next_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(bytes) => bytes.is_none(),
            Kind::Relay(relay) => relay.done,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(Some(bytes)) => SizeHint::with_exact(bytes.len() as u64),
            Kind::Full(None) => SizeHint::with_exact(0),
            Kind::Relay(_) => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use switchyard_core::ErrorCode;

    fn stream_of(items: Vec<Result<&'static [u8], BackendError>>) -> BodyStream {
        Box::pin(futures_util::stream::iter(
            items.into_iter().map(|item| item.map(Bytes::from_static)).collect::<Vec<_>>(),
        ))
    }

    async fn collect(body: Body) -> Vec<u8> {
        body.collect().await.unwrap().to_bytes().to_vec()
    }

    #[tokio::test]
    async fn relays_whole_events_and_reassembles_split_ones() {
        let stream =
            stream_of(vec![Ok(b"data: a\n\ndata: "), Ok(b"b\n"), Ok(b"\ndata: [DONE]\n\n")]);
        let mut body = Body::relay(stream, Framing::OpenAiEvents, None);
        let mut frames = Vec::new();
        while let Some(frame) = body.frame().await {
            frames.push(frame.unwrap().into_data().unwrap());
        }
        assert_eq!(frames, vec![&b"data: a\n\n"[..], b"data: b\n\ndata: [DONE]\n\n"]);
    }

    #[tokio::test]
    async fn mid_stream_failure_drops_partial_event_and_appends_error_without_done() {
        let outcome = Arc::new(parking_lot::Mutex::new(None));
        let seen = outcome.clone();
        let stream = stream_of(vec![
            Ok(b"data: {\"n\":1}\n\ndata: {\"n\""),
            Err(BackendError::new(
                ErrorCode::UpstreamUnavailable,
                "backend `a`: stream interrupted",
            )),
        ]);
        let on_finish: OnFinish = Box::new(move |o, bytes| *seen.lock() = Some((o, bytes)));
        let bytes = collect(Body::relay(stream, Framing::OpenAiEvents, Some(on_finish))).await;
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.starts_with("data: {\"n\":1}\n\ndata: {\"error\":{"), "{text}");
        assert!(text.ends_with("}}\n\n"));
        assert!(!text.contains("[DONE]"));
        assert!(!text.contains("{\"n\"data"), "partial event must be dropped: {text}");
        assert_eq!(
            *outcome.lock(),
            Some((RelayOutcome::Failed(ErrorCode::UpstreamUnavailable), 15))
        );
    }

    #[tokio::test]
    async fn dropping_the_body_reports_client_gone() {
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        let on_finish: OnFinish = Box::new(move |outcome, _| {
            assert_eq!(outcome, RelayOutcome::ClientGone);
            counted.fetch_add(1, Ordering::SeqCst);
        });
        let stream: BodyStream = Box::pin(futures_util::stream::pending());
        drop(Body::relay(stream, Framing::OpenAiEvents, Some(on_finish)));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn non_sse_failure_is_a_body_error() {
        let stream = stream_of(vec![
            Ok(b"{\"partial\""),
            Err(BackendError::new(ErrorCode::UpstreamTimeout, "t")),
        ]);
        let err = Body::relay(stream, Framing::Raw, None).collect().await.err().unwrap();
        assert_eq!(err.code, ErrorCode::UpstreamTimeout);
    }
}
