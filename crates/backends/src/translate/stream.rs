//! Run a stream translator over a [`BodyStream`]: each upstream chunk goes through the
//! translator and whatever it completes goes out as one chunk. Nothing is buffered
//! beyond the translator's partial event.
//!
//! A translation error (the provider's `error` event, an invalid event, a stream that
//! ends before the provider said it was complete) becomes an `Err` item after the
//! bytes translated before it, and ends the stream, so the server's mid-stream
//! contract applies exactly as for an interrupted connection. An upstream `Err` is
//! passed through and ends the stream too. Dropping the stream drops the upstream.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BytesMut;
use futures_core::Stream;
use switchyard_core::{BackendError, BodyStream};

use super::PushTranslator;

/// A translated stream.
struct Translated<T> {
    upstream: BodyStream,
    translator: T,
    out: BytesMut,
    error: Option<BackendError>,
    done: bool,
}

/// Translate `upstream` with `translator`.
pub(crate) fn translate<T: PushTranslator + Unpin>(
    upstream: BodyStream,
    translator: T,
) -> BodyStream {
    Box::pin(Translated { upstream, translator, out: BytesMut::new(), error: None, done: false })
}

impl<T: PushTranslator + Unpin> Stream for Translated<T> {
    type Item = Result<bytes::Bytes, BackendError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        // Every field is Unpin (the upstream is a boxed stream).
        let this = self.get_mut();
        loop {
            if let Some(error) = this.error.take() {
                this.done = true;
                return Poll::Ready(Some(Err(error)));
            }
            if this.done {
                return Poll::Ready(None);
            }
            match this.upstream.as_mut().poll_next(cx) {
                Poll::Ready(Some(Ok(bytes))) => {
                    if let Err(error) = this.translator.push(&bytes, &mut this.out) {
                        this.error = Some(error);
                    }
                }
                Poll::Ready(Some(Err(error))) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(error)));
                }
                Poll::Ready(None) => {
                    match this.translator.finish(&mut this.out) {
                        Err(error) => this.error = Some(error),
                        // Ends after the closing events below.
                        Ok(()) => this.done = true,
                    }
                }
                Poll::Pending => return Poll::Pending,
            }
            if !this.out.is_empty() {
                return Poll::Ready(Some(Ok(this.out.split().freeze())));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use futures_util::StreamExt;
    use switchyard_core::ErrorCode;

    /// Upper-cases input; fails on `!`; requires a final `.`.
    #[derive(Default)]
    struct Upper {
        last: u8,
    }

    impl PushTranslator for Upper {
        fn push(&mut self, bytes: &[u8], out: &mut BytesMut) -> Result<(), BackendError> {
            for &b in bytes {
                if b == b'!' {
                    return Err(BackendError::new(ErrorCode::UpstreamStatus, "bang"));
                }
                out.extend_from_slice(&[b.to_ascii_uppercase()]);
                self.last = b;
            }
            Ok(())
        }

        fn finish(&mut self, out: &mut BytesMut) -> Result<(), BackendError> {
            if self.last == b'.' {
                out.extend_from_slice(b"<end>");
                Ok(())
            } else {
                Err(BackendError::new(ErrorCode::UpstreamUnavailable, "cut"))
            }
        }
    }

    fn upstream(items: Vec<Result<&'static str, BackendError>>) -> BodyStream {
        Box::pin(futures_util::stream::iter(
            items.into_iter().map(|item| item.map(|s| Bytes::from_static(s.as_bytes()))),
        ))
    }

    async fn collect(stream: BodyStream) -> Vec<Result<String, ErrorCode>> {
        stream
            .map(|item| item.map(|b| String::from_utf8(b.to_vec()).unwrap()).map_err(|e| e.code))
            .collect()
            .await
    }

    #[tokio::test]
    async fn translates_chunk_by_chunk_and_appends_the_end() {
        let out =
            collect(translate(upstream(vec![Ok("ab"), Ok(""), Ok("c.")]), Upper::default())).await;
        assert_eq!(out, vec![Ok("AB".into()), Ok("C.".into()), Ok("<end>".into())]);
    }

    #[tokio::test]
    async fn errors_come_after_the_bytes_before_them_and_end_the_stream() {
        let out =
            collect(translate(upstream(vec![Ok("ab!cd"), Ok("ef.")]), Upper::default())).await;
        assert_eq!(out, vec![Ok("AB".into()), Err(ErrorCode::UpstreamStatus)]);
        let out = collect(translate(upstream(vec![Ok("ab")]), Upper::default())).await;
        assert_eq!(out, vec![Ok("AB".into()), Err(ErrorCode::UpstreamUnavailable)]);
        let reset = BackendError::new(ErrorCode::UpstreamTimeout, "idle");
        let out =
            collect(translate(upstream(vec![Ok("a"), Err(reset), Ok("b.")]), Upper::default()))
                .await;
        assert_eq!(out, vec![Ok("A".into()), Err(ErrorCode::UpstreamTimeout)]);
    }
}
