//! Upstream fakes shared by the tests.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use switchyard_core::{BackendError, BodyStream, ErrorCode};

/// The chunks of a fake SSE answer.
pub(crate) fn sse_chunks(n: usize) -> Vec<Bytes> {
    let mut chunks: Vec<Bytes> =
        (0..n).map(|i| Bytes::from(format!("data: {{\"token\":{i}}}\n\n"))).collect();
    chunks.push(Bytes::from_static(b"data: [DONE]\n\n"));
    chunks
}

/// Sets its flag when dropped: shows an upstream call was abandoned.
pub(crate) struct DropFlag(pub(crate) Arc<AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// A stream yielding `chunks` `gap` apart, then `Err` if `fail` is set; sets `dropped`
/// when dropped (finished or not) and counts chunks produced in `produced`.
pub(crate) fn slow_stream(
    chunks: Vec<Bytes>,
    gap: Duration,
    fail: bool,
    dropped: Arc<AtomicBool>,
    produced: Arc<AtomicUsize>,
) -> BodyStream {
    let state = (chunks.into_iter(), DropFlag(dropped), fail);
    Box::pin(futures_util::stream::unfold(state, move |(mut rest, flag, fail)| {
        let produced = Arc::clone(&produced);
        async move {
            tokio::time::sleep(gap).await;
            match rest.next() {
                Some(chunk) => {
                    produced.fetch_add(1, Ordering::SeqCst);
                    Some((Ok(chunk), (rest, flag, fail)))
                }
                None if fail => Some((
                    Err(BackendError::new(ErrorCode::UpstreamUnavailable, "connection reset")),
                    (rest, flag, false),
                )),
                None => None,
            }
        }
    }))
}
