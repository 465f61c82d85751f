//! Trying candidates: the strategy's order filtered by health, retries with backoff
//! within the retry budget, then the fallback chain — all before anything reaches the
//! client.
//!
//! A [`Job`] owns everything it needs, so it can run on the request's task or, when
//! identical requests share one upstream call, on a task no client owns.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::Stream;
use futures_util::StreamExt;
use http::{HeaderMap, StatusCode};
use switchyard_core::{
    BackendError, BackendId, BackendRequest, BackendResponse, BodyStream, Classify, Endpoint,
    ErrorCode, RequestMeta, ResponseBody,
};
use switchyard_health::{FailureKind, HealthRegistry, Outcome};
use switchyard_strategy::{InFlight, RequestKey};
use tokio::time::Instant;

use crate::error::ApiError;
use crate::routes::Plan;
use crate::state::AppState;

/// One client request, ready to be tried against its plan.
pub(crate) struct Job {
    pub(crate) state: Arc<AppState>,
    pub(crate) endpoint: Endpoint,
    pub(crate) body: Bytes,
    pub(crate) meta: RequestMeta,
    pub(crate) key: RequestKey,
    /// Headers passed upstream (request id, trace context).
    pub(crate) forward: HeaderMap,
    pub(crate) plan: Plan,
    /// The same request for another endpoint, used with backends that do not serve
    /// `endpoint` (an Anthropic Messages request translated to a chat completion).
    pub(crate) alternate: Option<Alternate>,
}

/// A request in a second shape: its endpoint, body and routing fields.
pub(crate) struct Alternate {
    pub(crate) endpoint: Endpoint,
    pub(crate) body: Bytes,
    pub(crate) meta: RequestMeta,
}

/// What answered: the response (its stream already tracked), the backend and model.
pub(crate) struct Answer {
    pub(crate) response: BackendResponse,
    pub(crate) index: usize,
    /// The model that answered, as a header value.
    pub(crate) model: http::HeaderValue,
    /// The model that answered (logs and metrics).
    pub(crate) name: Arc<str>,
    /// The endpoint the backend was asked (the job's own, or its alternate's).
    pub(crate) endpoint: Endpoint,
}

/// The last failure seen while trying candidates.
enum Failure {
    Response(BackendResponse, usize, Endpoint),
    Error(ApiError),
}

/// Which candidates of one model this request has tried: a bitmask up to 128, a
/// vector beyond (no allocation for the common case).
enum Tried {
    Small(u128),
    Large(Vec<bool>),
}

/// A backend stream that reports how it ended: failures to passive health and the
/// strategy's stats, success to the stats; the in-flight count covers the whole stream.
struct Tracked {
    inner: BodyStream,
    health: HealthRegistry,
    backend: BackendId,
    stats: Option<InFlight>,
    started: Instant,
    /// `backend_request_duration_seconds` of this backend, recorded at the end.
    duration: Option<metrics::Histogram>,
}

impl Job {
    /// Try the plan's candidates until one answers.
    pub(crate) async fn run(self) -> Result<Answer, ApiError> {
        self.run_timed().await.0
    }

    /// [`run`](Self::run), also returning the time spent waiting on upstreams and retry
    /// backoff (what the router's overhead excludes).
    pub(crate) async fn run_timed(self) -> (Result<Answer, ApiError>, std::time::Duration) {
        let mut waited = std::time::Duration::ZERO;
        let result = self.attempt(&mut waited).await;
        (result, waited)
    }

    async fn attempt(self, waited: &mut std::time::Duration) -> Result<Answer, ApiError> {
        let Job { state, endpoint, body, meta, key, forward, plan, alternate } = self;
        // Which shape of the request `backend` takes, if any.
        let shape = |backend: &dyn switchyard_core::Backend| {
            if backend.supports(endpoint) {
                Some((endpoint, &body, &meta))
            } else {
                alternate
                    .as_ref()
                    .filter(|alt| backend.supports(alt.endpoint))
                    .map(|alt| (alt.endpoint, &alt.body, &alt.meta))
            }
        };
        state.budget.deposit();
        let max_attempts = state.settings.retry.max_retries as usize + 1;
        let mut attempts = 0;
        let mut supported = false;
        let mut limited: Option<std::time::Duration> = None;
        let mut last: Option<Failure> = None;
        'plan: for step in &plan.steps {
            let route = &step.route;
            let mut tried = Tried::new(route.candidates.len());
            loop {
                if attempts == max_attempts {
                    break 'plan;
                }
                // The strategy's order, filtered by what this request may use now.
                let pick = route.selector.select_with(&key, |i, candidate| {
                    if tried.contains(i)
                        || shape(&*state.spec.backends[route.candidates[i]].backend).is_none()
                    {
                        return false;
                    }
                    supported = true;
                    route.health.is_available(&candidate.id)
                });
                let Some(i) = pick else { break };
                tried.insert(i);
                let index = route.candidates[i];
                let backend = &state.spec.backends[index].backend;
                let id = backend.id();
                let Some((asked, request_body, request_meta)) = shape(&**backend) else { continue };
                if let Err(refused) = state.limits.check_backend(index).await {
                    crate::metrics::metrics().rate_limited(refused.scope);
                    let wait = limited.map_or(refused.retry_after, |w| w.min(refused.retry_after));
                    limited = Some(wait);
                    continue;
                }
                let Some(admission) = route.health.admit(id) else { continue };
                if attempts > 0 {
                    if !state.budget.try_withdraw() {
                        tracing::debug!(backend = %id, "retry budget exhausted");
                        break 'plan;
                    }
                    let backoff = state.settings.retry.backoff(attempts as u32 - 1);
                    tokio::time::sleep(backoff).await;
                    *waited += backoff;
                }
                let metrics = &state.backend_metrics[index];
                attempts += 1;
                let mut stats = route.selector.start(i);
                let request = BackendRequest {
                    endpoint: asked,
                    body: request_body.clone(),
                    meta: request_meta.clone(),
                    upstream_model: step.upstream_model.clone(),
                    headers: forward.clone(),
                };
                let started = Instant::now();
                let sent = backend.send(request).await;
                // One clock read for the wait and the answer's head time.
                let head = started.elapsed();
                *waited += head;
                let response = match sent {
                    Ok(response) => response,
                    Err(error) => {
                        metrics.failed.increment(1);
                        metrics.duration.record(head.as_secs_f64());
                        if error.code == ErrorCode::Overloaded {
                            // A full queue (the local model's scheduler) says nothing
                            // about health: the next request may well fit. Drop the
                            // admission without a verdict and try another candidate.
                            drop(admission);
                            drop(stats);
                        } else {
                            admission.record(Outcome::from_error(&error), head);
                            stats.failure();
                        }
                        tracing::debug!(backend = %id, code = %error.code, "attempt failed");
                        if !error.retryable() {
                            return Err(error.into());
                        }
                        last = Some(Failure::Error(error.into()));
                        continue;
                    }
                };
                if !response.status.is_success() {
                    metrics.error_status.increment(1);
                }
                if retryable_status(response.status) {
                    metrics.duration.record(head.as_secs_f64());
                    let wait = switchyard_backends::retry_after(&response.headers);
                    admission.record(Outcome::from_status(response.status.as_u16(), wait), head);
                    stats.failure();
                    tracing::debug!(backend = %id, status = response.status.as_u16(), "attempt failed");
                    last = Some(Failure::Response(response, index, asked));
                    continue;
                }
                let response = match response.body {
                    ResponseBody::Full(_) => {
                        if response.status.is_success() {
                            metrics.ok.increment(1);
                        }
                        metrics.duration.record(head.as_secs_f64());
                        admission
                            .record(Outcome::from_status(response.status.as_u16(), None), head);
                        stats.succeeded(head);
                        response
                    }
                    ResponseBody::Stream(stream) => match first_chunk(stream).await {
                        Ok(stream) => {
                            let first = started.elapsed();
                            *waited += first.saturating_sub(head);
                            if response.status.is_success() {
                                metrics.ok.increment(1);
                            }
                            admission.record(Outcome::Success, first);
                            stats.record_latency(first);
                            let tracked = Tracked {
                                inner: stream,
                                health: state.health.clone(),
                                backend: id.clone(),
                                stats: Some(stats),
                                started,
                                duration: Some(metrics.duration.clone()),
                            };
                            BackendResponse {
                                body: ResponseBody::Stream(Box::pin(tracked)),
                                ..response
                            }
                        }
                        Err(error) => {
                            *waited += started.elapsed().saturating_sub(head);
                            metrics.failed.increment(1);
                            metrics.duration.record(started.elapsed().as_secs_f64());
                            admission.record(
                                Outcome::Failure(FailureKind::Interrupted),
                                started.elapsed(),
                            );
                            stats.failure();
                            tracing::debug!(backend = %id, code = %error.code, "stream failed before its first byte");
                            last = Some(Failure::Error(error));
                            continue;
                        }
                    },
                };
                return Ok(Answer {
                    response,
                    index,
                    model: route.model_header.clone(),
                    name: route.model.clone(),
                    endpoint: asked,
                });
            }
        }
        match last {
            Some(Failure::Response(response, index, endpoint)) => Ok(Answer {
                response,
                index,
                model: plan.steps[0].route.model_header.clone(),
                name: plan.steps[0].route.model.clone(),
                endpoint,
            }),
            Some(Failure::Error(error)) => Err(error),
            None if limited.is_some() => {
                let mut error = ApiError::new(
                    ErrorCode::RateLimited,
                    format!("every backend of `{}` is at its rate limit", meta.model),
                );
                error.retry_after = limited;
                Err(error)
            }
            None if supported => Err(ApiError::new(
                ErrorCode::NoHealthyBackend,
                format!("no healthy backend can serve `{}` right now", meta.model),
            )),
            None => Err(ApiError::new(
                ErrorCode::Unsupported,
                format!("no backend of `{}` serves {}", meta.model, endpoint.path()),
            )),
        }
    }
}

/// Wait for a stream's first chunk. A stream that fails (or sends an error event)
/// before it is a failed attempt that may be retried; otherwise the chunk is put back.
async fn first_chunk(mut stream: BodyStream) -> Result<BodyStream, ApiError> {
    match stream.next().await {
        Some(Ok(first)) => {
            if first.starts_with(b"data: {\"error\"") || first.starts_with(b"event: error") {
                return Err(ApiError::new(
                    ErrorCode::UpstreamStatus,
                    "the backend's stream began with an error event",
                ));
            }
            let head = futures_util::stream::once(async move { Ok::<Bytes, _>(first) });
            Ok(Box::pin(head.chain(stream)))
        }
        Some(Err(error)) => Err(error.into()),
        None => Ok(Box::pin(futures_util::stream::empty())),
    }
}

pub(crate) fn retryable_status(status: StatusCode) -> bool {
    matches!(status.as_u16(), 429 | 500 | 502 | 503 | 504)
}

impl Tried {
    fn new(candidates: usize) -> Self {
        if candidates <= 128 { Tried::Small(0) } else { Tried::Large(vec![false; candidates]) }
    }

    fn contains(&self, i: usize) -> bool {
        match self {
            Tried::Small(bits) => bits & (1u128 << i) != 0,
            Tried::Large(seen) => seen.get(i).copied().unwrap_or(true),
        }
    }

    fn insert(&mut self, i: usize) {
        match self {
            Tried::Small(bits) => *bits |= 1u128 << i,
            Tried::Large(seen) => {
                if let Some(slot) = seen.get_mut(i) {
                    *slot = true;
                }
            }
        }
    }
}

impl Stream for Tracked {
    type Item = Result<Bytes, BackendError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let item = this.inner.as_mut().poll_next(cx);
        match &item {
            Poll::Ready(Some(Err(_))) => {
                // A cut stream is a failure of its backend.
                let elapsed = this.started.elapsed();
                if let Some(duration) = this.duration.take() {
                    duration.record(elapsed.as_secs_f64());
                }
                this.health.record(
                    &this.backend,
                    Outcome::Failure(FailureKind::Interrupted),
                    elapsed,
                );
                if let Some(stats) = this.stats.take() {
                    stats.failure();
                }
            }
            Poll::Ready(None) => {
                if let Some(duration) = this.duration.take() {
                    duration.record(this.started.elapsed().as_secs_f64());
                }
                if let Some(stats) = this.stats.take() {
                    stats.success();
                }
            }
            _ => {}
        }
        item
    }
}

// Dropping a `Tracked` before its end (the client hung up) drops its `InFlight`
// unfinished: cancelled, not an error.

impl From<ApiError> for BackendError {
    fn from(error: ApiError) -> Self {
        BackendError::new(error.code, error.message).with_retry_after(error.retry_after)
    }
}

/// The error a non-success answer becomes where it must be an error (a shared
/// upstream call): the status's code and the backend's own message when it sent one.
pub(crate) fn status_error(
    status: StatusCode,
    body: &[u8],
    retry_after: Option<std::time::Duration>,
) -> BackendError {
    let code = match status.as_u16() {
        400 | 422 => ErrorCode::InvalidRequest,
        401 => ErrorCode::Unauthorized,
        403 => ErrorCode::Forbidden,
        404 => ErrorCode::ModelNotFound,
        413 => ErrorCode::PayloadTooLarge,
        429 => ErrorCode::RateLimited,
        503 => ErrorCode::Overloaded,
        504 => ErrorCode::UpstreamTimeout,
        _ => ErrorCode::UpstreamStatus,
    };
    let message = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("the backend answered {}", status.as_u16()));
    BackendError::new(code, message).with_retry_after(retry_after)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_transient_statuses_are_retried() {
        for status in [429, 500, 502, 503, 504] {
            assert!(retryable_status(StatusCode::from_u16(status).unwrap()), "{status}");
        }
        for status in [200, 400, 401, 404, 413, 501] {
            assert!(!retryable_status(StatusCode::from_u16(status).unwrap()), "{status}");
        }
    }

    #[test]
    fn tried_tracks_small_and_large_sets() {
        for n in [3, 128, 300] {
            let mut tried = Tried::new(n);
            assert!(!tried.contains(n - 1));
            tried.insert(n - 1);
            tried.insert(0);
            assert!(tried.contains(n - 1) && tried.contains(0) && !tried.contains(1));
        }
    }

    #[test]
    fn non_success_answers_become_errors_with_the_backends_message() {
        let error = status_error(
            StatusCode::BAD_REQUEST,
            br#"{"error":{"message":"bad tool schema"}}"#,
            None,
        );
        assert_eq!(error.code, ErrorCode::InvalidRequest);
        assert_eq!(error.message, "bad tool schema");
        let error = status_error(StatusCode::BAD_GATEWAY, b"<html>", None);
        assert_eq!(error.code, ErrorCode::UpstreamStatus);
        assert!(error.message.contains("502"));
    }

    #[tokio::test]
    async fn stream_failing_before_first_chunk_is_retryable() {
        let failing: BodyStream = Box::pin(futures_util::stream::once(async {
            Err(BackendError::new(ErrorCode::UpstreamUnavailable, "reset"))
        }));
        let err = first_chunk(failing).await.err().unwrap();
        assert!(err.code.retryable());

        let error_event: BodyStream = Box::pin(futures_util::stream::once(async {
            Ok(Bytes::from_static(b"data: {\"error\":{}}\n\n"))
        }));
        assert!(first_chunk(error_event).await.is_err());

        let ok: BodyStream = Box::pin(futures_util::stream::iter(vec![
            Ok(Bytes::from_static(b"data: 1\n\n")),
            Ok(Bytes::from_static(b"data: 2\n\n")),
        ]));
        let chunks: Vec<_> = first_chunk(ok).await.unwrap().map(|c| c.unwrap()).collect().await;
        assert_eq!(
            chunks,
            vec![Bytes::from_static(b"data: 1\n\n"), Bytes::from_static(b"data: 2\n\n")]
        );
    }
}
