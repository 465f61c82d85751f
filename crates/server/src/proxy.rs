//! The request pipeline for `/v1/chat/completions`, `/v1/completions` and
//! `/v1/embeddings`: read the body, read the routing fields, resolve the model, try
//! candidates in order, relay the answer.
//!
//! Retries happen only before anything reached the client: on connect errors,
//! timeouts, retryable statuses (429, 500, 502, 503, 504) and streams that fail before
//! their first chunk. Once a chunk has been sent, a failure ends the stream with an
//! error event (see [`crate::body`]).

use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use switchyard_core::{
    BackendRequest, BackendResponse, BodyStream, Classify, Endpoint, ErrorCode, RequestMeta,
    ResponseBody,
};

use switchyard_health::{FailureKind, Outcome};
use switchyard_strategy::{InFlight, RequestKey};
use tokio::time::Instant;

use crate::body::{Body, OnFinish, RelayOutcome};
use crate::error::ApiError;
use crate::state::AppState;

/// Response header naming the backend that answered.
pub(crate) const BACKEND_HEADER: HeaderName = HeaderName::from_static("x-switchyard-backend");
/// Response header naming the model that answered (differs from the requested one
/// after an alias or a fallback).
pub(crate) const MODEL_HEADER: HeaderName = HeaderName::from_static("x-switchyard-model");
pub(crate) const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// The last failure seen while trying candidates.
enum Failure {
    Response(BackendResponse, usize),
    Error(ApiError),
}

/// Handle one proxied request.
pub(crate) async fn proxy(
    state: Arc<AppState>,
    endpoint: Endpoint,
    parts: Parts,
    body: Incoming,
    request_id: HeaderValue,
) -> Result<Response<Body>, ApiError> {
    check_content_type(&parts.headers)?;
    let bytes = read_body(&state, &parts.headers, body).await?;
    let meta = RequestMeta::parse(endpoint, &bytes)?;
    let tables = state.table();
    let plan = tables.table.plan(&state.spec, &meta.model)?;

    let mut forward = HeaderMap::with_capacity(2);
    forward.insert(REQUEST_ID, request_id);
    if let Some(trace) = parts.headers.get(TRACEPARENT) {
        forward.insert(TRACEPARENT, trace.clone());
    }

    let session = parts
        .headers
        .get(state.settings.routing.consistent_hash.header.as_str())
        .and_then(|v| v.to_str().ok());
    let key = RequestKey::from_meta(session, &meta);

    state.budget.deposit();
    let max_attempts = state.settings.retry.max_retries as usize + 1;
    let mut attempts = 0;
    let mut supported = false;
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
                if tried.contains(i) {
                    return false;
                }
                if !state.spec.backends[route.candidates[i]].backend.supports(endpoint) {
                    return false;
                }
                supported = true;
                route.health.is_available(&candidate.id)
            });
            let Some(i) = pick else { break };
            tried.insert(i);
            let index = route.candidates[i];
            let spec = &state.spec.backends[index];
            let backend = spec.backend.id();
            let Some(admission) = route.health.admit(backend) else { continue };
            if attempts > 0 {
                if !state.budget.try_withdraw() {
                    tracing::debug!(%backend, "retry budget exhausted");
                    break 'plan;
                }
                tokio::time::sleep(state.settings.retry.backoff(attempts as u32 - 1)).await;
            }
            attempts += 1;
            let mut stats = route.selector.start(i);
            let request = BackendRequest {
                endpoint,
                body: bytes.clone(),
                meta: meta.clone(),
                upstream_model: step.upstream_model.clone(),
                headers: forward.clone(),
            };
            let started = Instant::now();
            let response = match spec.backend.send(request).await {
                Ok(response) => response,
                Err(error) => {
                    admission.record(Outcome::from_error(&error), started.elapsed());
                    stats.failure();
                    tracing::debug!(%backend, code = %error.code, "attempt failed");
                    if !error.retryable() {
                        return Err(error.into());
                    }
                    last = Some(Failure::Error(error.into()));
                    continue;
                }
            };
            let head = started.elapsed();
            if retryable_status(response.status) {
                let wait = switchyard_backends::retry_after(&response.headers);
                admission.record(Outcome::from_status(response.status.as_u16(), wait), head);
                stats.failure();
                tracing::debug!(%backend, status = response.status.as_u16(), "attempt failed");
                last = Some(Failure::Response(response, index));
                continue;
            }
            let response = match response.body {
                ResponseBody::Full(_) => {
                    admission.record(Outcome::from_status(response.status.as_u16(), None), head);
                    stats.record_latency(head);
                    stats.success();
                    response
                }
                ResponseBody::Stream(stream) => match first_chunk(stream).await {
                    Ok(stream) => {
                        let first = started.elapsed();
                        admission.record(Outcome::Success, first);
                        stats.record_latency(first);
                        let body = ResponseBody::Stream(stream);
                        return Ok(respond(
                            BackendResponse { body, ..response },
                            &state,
                            index,
                            &route.model,
                            Some(stats),
                        ));
                    }
                    Err(error) => {
                        admission
                            .record(Outcome::Failure(FailureKind::Interrupted), started.elapsed());
                        stats.failure();
                        tracing::debug!(%backend, code = %error.code, "stream failed before its first byte");
                        last = Some(Failure::Error(error));
                        continue;
                    }
                },
            };
            return Ok(respond(response, &state, index, &route.model, None));
        }
    }
    match last {
        Some(Failure::Response(response, index)) => {
            let model = plan.steps[0].route.model.clone();
            Ok(respond(response, &state, index, &model, None))
        }
        Some(Failure::Error(error)) => Err(error),
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

/// Which candidates of one model this request has tried: a bitmask up to 128, a
/// vector beyond (no allocation for the common case).
enum Tried {
    Small(u128),
    Large(Vec<bool>),
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

fn retryable_status(status: StatusCode) -> bool {
    matches!(status.as_u16(), 429 | 500 | 502 | 503 | 504)
}

fn respond(
    response: BackendResponse,
    state: &AppState,
    index: usize,
    model: &str,
    stats: Option<InFlight>,
) -> Response<Body> {
    let spec = &state.spec.backends[index];
    let body = match response.body {
        ResponseBody::Full(bytes) => Body::full(bytes),
        ResponseBody::Stream(stream) => {
            let sse = response
                .headers
                .get(header::CONTENT_TYPE)
                .is_none_or(|v| v.as_bytes().starts_with(b"text/event-stream"));
            let health = state.health.clone();
            let id = spec.backend.id().clone();
            let started = Instant::now();
            let on_finish: OnFinish = Box::new(move |outcome, _bytes| {
                // A cut stream is a failure of its backend; a client hanging up is not.
                // The strategy's in-flight count covers the whole stream.
                match outcome {
                    RelayOutcome::Failed(_) => {
                        let elapsed = started.elapsed();
                        health.record(&id, Outcome::Failure(FailureKind::Interrupted), elapsed);
                        if let Some(stats) = stats {
                            stats.failure();
                        }
                    }
                    RelayOutcome::Completed => {
                        if let Some(stats) = stats {
                            stats.success();
                        }
                    }
                    RelayOutcome::ClientGone => drop(stats),
                }
            });
            Body::relay(stream, sse, Some(on_finish))
        }
    };
    let mut out = Response::new(body);
    *out.status_mut() = response.status;
    *out.headers_mut() = response.headers;
    let headers = out.headers_mut();
    if let Ok(name) = HeaderValue::from_str(spec.backend.id().as_str()) {
        headers.insert(BACKEND_HEADER, name);
    }
    if let Ok(model) = HeaderValue::from_str(model) {
        headers.insert(MODEL_HEADER, model);
    }
    if response.status.is_success() && !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    }
    out
}

fn check_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    match headers.get(header::CONTENT_TYPE) {
        None => Ok(()),
        Some(value) => {
            let value = value.to_str().unwrap_or("").trim().to_ascii_lowercase();
            if value.starts_with("application/json") || value.is_empty() {
                Ok(())
            } else {
                Err(ApiError::new(
                    ErrorCode::UnsupportedMediaType,
                    format!("content-type must be application/json, not `{value}`"),
                ))
            }
        }
    }
}

/// Read the request body within the size and time limits.
pub(crate) async fn read_body(
    state: &AppState,
    headers: &HeaderMap,
    body: Incoming,
) -> Result<Bytes, ApiError> {
    let max = state.settings.max_request_size;
    let too_large = || {
        ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("the request body is larger than the limit of {max} bytes"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > max as u64) {
        return Err(too_large());
    }
    let read = Limited::new(body, max).collect();
    match tokio::time::timeout(state.settings.body_read_timeout, read).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(error)) if error.downcast_ref::<http_body_util::LengthLimitError>().is_some() => {
            Err(too_large())
        }
        Ok(Err(_)) => {
            Err(ApiError::new(ErrorCode::InvalidRequest, "the request body could not be read"))
        }
        Err(_) => Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "the request body was not received within the time limit",
        )),
    }
}

impl From<ApiError> for Failure {
    fn from(error: ApiError) -> Self {
        Failure::Error(error)
    }
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
    fn content_type_must_be_json_when_given() {
        let mut headers = HeaderMap::new();
        assert!(check_content_type(&headers).is_ok());
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        assert!(check_content_type(&headers).is_ok());
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        let err = check_content_type(&headers).unwrap_err();
        assert_eq!(err.code, ErrorCode::UnsupportedMediaType);
    }

    #[tokio::test]
    async fn stream_failing_before_first_chunk_is_retryable() {
        let failing: BodyStream = Box::pin(futures_util::stream::once(async {
            Err(switchyard_core::BackendError::new(ErrorCode::UpstreamUnavailable, "reset"))
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
