//! The request pipeline for `/v1/chat/completions`, `/v1/completions` and
//! `/v1/embeddings`: read the body, read the routing fields, resolve the model, then
//! either try candidates for this request alone or share one upstream call with
//! identical requests (de-duplication, response cache), and relay the answer.
//!
//! Retries happen only before anything reached the client (see [`crate::attempts`]);
//! once a chunk has been sent, a failure ends the stream with an error event (see
//! [`crate::body`]).

use std::sync::Arc;

use bytes::Bytes;
use http::Response;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http_body_util::{BodyExt, Limited};
use switchyard_cache::{BodyKind, JoinRole, Plan as CachePlan, SharePlan};
use switchyard_core::{BackendResponse, Endpoint, ErrorCode, RequestMeta, ResponseBody};
use switchyard_strategy::RequestKey;

use crate::attempts::{Answer, Job, status_error};
use crate::body::{Body, Framing, RequestBody};
use crate::error::ApiError;
use crate::observe::RequestCtx;
use crate::state::AppState;

/// Response header naming the backend that answered.
pub(crate) const BACKEND_HEADER: HeaderName = HeaderName::from_static("x-switchyard-backend");
/// Response header naming the model that answered (differs from the requested one
/// after an alias or a fallback).
pub(crate) const MODEL_HEADER: HeaderName = HeaderName::from_static("x-switchyard-model");
/// Response header saying how a shared answer was obtained: `miss` (this request
/// called the backend), `shared` (it joined an identical call in flight) or `hit`
/// (a stored answer).
pub(crate) const CACHE_STATUS_HEADER: HeaderName =
    HeaderName::from_static("x-switchyard-cache-status");
pub(crate) const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// Handle one proxied request.
pub(crate) async fn proxy(
    state: Arc<AppState>,
    endpoint: Endpoint,
    parts: Parts,
    body: RequestBody,
    ctx: &mut RequestCtx,
) -> Result<Response<Body>, ApiError> {
    check_content_type(&parts.headers)?;
    let bytes = read_body(&state, &parts.headers, body).await?;
    let meta = RequestMeta::parse(endpoint, &bytes)?;
    crate::gate::model(&state, ctx, &meta.model)?;
    let plan = state.table().plan(&state.spec, &meta.model)?;
    ctx.model = Some(plan.steps[0].route.model.clone());
    let (key, forward) =
        routing_context(&state, &parts.headers, &meta, ctx.request_id.clone(), &[]);
    // The authenticated key's name (unique among keys): cached answers never cross
    // keys. Anonymous clients (auth off) share one tenant.
    let tenant = state.auth.tenant(ctx.caller);
    let cache_plan = state.caches.plan(tenant, endpoint, &meta, &parts.headers, &bytes);
    let job = Job {
        state: state.clone(),
        endpoint,
        body: bytes,
        meta,
        key,
        forward,
        plan,
        alternate: None,
    };
    match cache_plan {
        CachePlan::Bypass => {
            let (answer, waited) = job.run_timed().await;
            ctx.upstream = waited;
            let answer = answer?;
            ctx.proxied = true;
            ctx.backend = Some(answer.index);
            ctx.model = Some(answer.name.clone());
            Ok(respond(answer, &state))
        }
        CachePlan::Share(share) => {
            let waiting = std::time::Instant::now();
            let response = shared(&state, share, job).await;
            ctx.upstream = waiting.elapsed();
            ctx.proxied = response.is_ok();
            response
        }
    }
}

/// What a request carries besides its body: the strategy's key (the session header,
/// the `user` field or the prompt prefix) and the headers passed upstream (request id,
/// trace context, and `extra` when the client sent them).
pub(crate) fn routing_context(
    state: &AppState,
    headers: &HeaderMap,
    meta: &RequestMeta,
    request_id: HeaderValue,
    extra: &[HeaderName],
) -> (RequestKey, HeaderMap) {
    let session = state
        .session_header
        .as_ref()
        .and_then(|name| headers.get(name))
        .and_then(|v| v.to_str().ok());
    let key = RequestKey::from_meta(session, meta);
    let mut forward = HeaderMap::with_capacity(2 + extra.len());
    forward.insert(REQUEST_ID, request_id);
    for name in std::iter::once(&TRACEPARENT).chain(extra) {
        if let Some(value) = headers.get(name) {
            forward.insert(name.clone(), value.clone());
        }
    }
    (key, forward)
}

/// Share one upstream call among identical requests: the first runs the job on a task
/// no client owns, the others follow it (streams replayed from the start), and a stored
/// answer serves later ones. Only complete successful answers are stored.
async fn shared(state: &AppState, share: SharePlan, job: Job) -> Result<Response<Body>, ApiError> {
    let mut subscription = state.caches.share(share, move || async move {
        let answer = job.run().await?;
        let BackendResponse { status, headers, body } = answer.response;
        if status.is_success() {
            return Ok(body);
        }
        let bytes = match body {
            ResponseBody::Full(bytes) => bytes,
            ResponseBody::Stream(_) => Bytes::new(),
        };
        Err(status_error(status, &bytes, switchyard_backends::retry_after(&headers)))
    });
    let kind = subscription.ready().await?;
    let role = match subscription.role() {
        _ if subscription.from_store() => "hit",
        JoinRole::Leader => "miss",
        JoinRole::Follower => "shared",
        _ => "hit",
    };
    let body = match subscription.into_body().await? {
        ResponseBody::Full(bytes) => Body::full(bytes),
        ResponseBody::Stream(stream) => Body::relay(stream, Framing::OpenAiEvents, None),
    };
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    let content_type = match kind {
        BodyKind::Stream => "text/event-stream",
        _ => "application/json",
    };
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(CACHE_STATUS_HEADER, HeaderValue::from_static(role));
    Ok(response)
}

fn respond(answer: Answer, state: &AppState) -> Response<Body> {
    let Answer { response, index, model, .. } = answer;
    let body = match response.body {
        ResponseBody::Full(bytes) => Body::full(bytes),
        ResponseBody::Stream(stream) => {
            let sse = response
                .headers
                .get(header::CONTENT_TYPE)
                .is_none_or(|v| v.as_bytes().starts_with(b"text/event-stream"));
            Body::relay(stream, if sse { Framing::OpenAiEvents } else { Framing::Raw }, None)
        }
    };
    let mut out = Response::new(body);
    *out.status_mut() = response.status;
    *out.headers_mut() = response.headers;
    label(out.headers_mut(), state, index, model);
    if response.status.is_success() {
        out.headers_mut()
            .entry(header::CACHE_CONTROL)
            .or_insert_with(|| HeaderValue::from_static("no-cache"));
    }
    out
}

/// Name the backend and the model that answered (header values built once).
pub(crate) fn label(headers: &mut HeaderMap, state: &AppState, index: usize, model: HeaderValue) {
    headers.insert(BACKEND_HEADER, state.backend_headers[index].clone());
    headers.insert(MODEL_HEADER, model);
}

/// Bodies are parsed as JSON whatever they are labelled, so `curl -d '{...}'` (sent as
/// a form) works; only types that cannot hold a JSON document are refused.
pub(crate) fn check_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    match headers.get(header::CONTENT_TYPE) {
        None => Ok(()),
        Some(value) => {
            let essence = value.as_bytes().split(|&b| b == b';').next().unwrap_or_default();
            let essence = essence.trim_ascii();
            let is = |name: &str| essence.eq_ignore_ascii_case(name.as_bytes());
            let acceptable = essence.is_empty()
                || is("application/json")
                || (essence.len() >= 5
                    && essence[essence.len() - 5..].eq_ignore_ascii_case(b"+json"))
                || is("text/plain")
                || is("application/x-www-form-urlencoded");
            if acceptable {
                Ok(())
            } else {
                let value = String::from_utf8_lossy(value.as_bytes()).trim().to_ascii_lowercase();
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
    body: RequestBody,
) -> Result<Bytes, ApiError> {
    let max = state.settings.max_request_size;
    let too_large = || {
        ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("the request body is larger than the limit of {max} bytes"),
        )
    };
    let timed_out = || {
        ApiError::new(
            ErrorCode::InvalidRequest,
            "the request body was not received within the time limit",
        )
    };
    // The HTTP/1.1 loop has read the body already (its length checked on the way).
    let body = match body {
        RequestBody::Full(bytes) if bytes.len() > max => return Err(too_large()),
        RequestBody::Full(bytes) => return Ok(bytes),
        RequestBody::TimedOut => return Err(timed_out()),
        RequestBody::Hyper(body) => body,
    };
    // Through hyper: refuse at once a body that declares itself too large.
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
        Err(_) => Err(timed_out()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_type_must_be_json_when_given() {
        let mut headers = HeaderMap::new();
        assert!(check_content_type(&headers).is_ok());
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        assert!(check_content_type(&headers).is_ok());
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        assert!(check_content_type(&headers).is_ok(), "curl -d must work");
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("multipart/form-data; boundary=x"),
        );
        let err = check_content_type(&headers).unwrap_err();
        assert_eq!(err.code, ErrorCode::UnsupportedMediaType);
        for ok in ["Application/JSON", "application/vnd.api+JSON; x=1", " text/plain "] {
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(ok));
            assert!(check_content_type(&headers).is_ok(), "{ok}");
        }
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("json"));
        assert!(check_content_type(&headers).is_err());
    }
}
