//! `POST /v1/messages` and `POST /v1/messages/count_tokens`: Anthropic's Messages API
//! inbound, served by any backend.
//!
//! Backends that speak the Messages API (Anthropic) get the client's bytes; every other
//! backend gets the request translated to a chat completion, and its answer (whole or
//! streamed) is translated back to Anthropic's format. Errors on these paths are
//! Anthropic-shaped (`{"type":"error","error":{...}}`), and a stream cut mid-way ends
//! with an `event: error`.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Response, StatusCode};
use switchyard_backends::{
    MessagesStreamOptions, chat_completion_to_message, chat_error_to_messages,
    chat_stream_to_messages, estimate_message_tokens, messages_error_body,
    messages_to_chat_request,
};
use switchyard_core::{Endpoint, ErrorCode, RequestMeta, ResponseBody};

use crate::attempts::{Alternate, Answer, Job};
use crate::body::{Body, Framing, RequestBody};
use crate::error::{ApiError, status_for};
use crate::observe::RequestCtx;
use crate::proxy::{check_content_type, label, read_body, routing_context};
use crate::state::AppState;

const ANTHROPIC_BETA: HeaderName = HeaderName::from_static("anthropic-beta");

/// `POST /v1/messages`.
pub(crate) async fn messages(
    state: Arc<AppState>,
    parts: Parts,
    body: RequestBody,
    ctx: &mut RequestCtx,
) -> Response<Body> {
    match serve(state, parts, body, ctx).await {
        Ok(response) => response,
        Err(error) => error_response(&error),
    }
}

/// `POST /v1/messages/count_tokens`: exact when the model is served by a backend that
/// tokenizes itself (the local model), estimated otherwise.
pub(crate) async fn count_tokens(
    state: Arc<AppState>,
    parts: Parts,
    body: RequestBody,
    ctx: &RequestCtx,
) -> Response<Body> {
    let counted = async {
        check_content_type(&parts.headers)?;
        let bytes = read_body(&state, &parts.headers, body).await?;
        let meta = RequestMeta::parse(Endpoint::AnthropicMessages, &bytes)?;
        crate::gate::model(&state, ctx, &meta.model)?;
        let plan = state.table().plan(&state.spec, &meta.model)?;
        let chat = messages_to_chat_request(&bytes)?;
        let route = &plan.steps[0].route;
        for &index in &route.candidates {
            let backend = state.spec.backends[index].backend.clone();
            let chat = chat.clone();
            let exact = tokio::task::spawn_blocking(move || backend.count_tokens(&chat))
                .await
                .map_err(|_| ApiError::new(ErrorCode::Internal, "token counting failed"))?;
            if let Some(exact) = exact {
                return Ok::<u64, ApiError>(exact?);
            }
        }
        Ok(estimate_message_tokens(&bytes)?)
    };
    match counted.await {
        Ok(tokens) => {
            crate::service::json(StatusCode::OK, format!("{{\"input_tokens\":{tokens}}}"))
        }
        Err(error) => error_response(&error),
    }
}

async fn serve(
    state: Arc<AppState>,
    parts: Parts,
    body: RequestBody,
    ctx: &mut RequestCtx,
) -> Result<Response<Body>, ApiError> {
    check_content_type(&parts.headers)?;
    let bytes = read_body(&state, &parts.headers, body).await?;
    let meta = RequestMeta::parse(Endpoint::AnthropicMessages, &bytes)?;
    crate::gate::model(&state, ctx, &meta.model)?;
    let plan = state.table().plan(&state.spec, &meta.model)?;
    ctx.model = Some(plan.steps[0].route.model.clone());
    let (key, forward) =
        routing_context(&state, &parts.headers, &meta, ctx.request_id.clone(), &[ANTHROPIC_BETA]);
    // The chat-completion shape, for backends that do not speak the Messages API. If
    // the request cannot be translated, only Messages backends can take it.
    let (alternate, untranslatable) = match messages_to_chat_request(&bytes) {
        Ok(chat) => {
            let chat_meta = RequestMeta::parse(Endpoint::ChatCompletions, &chat)?;
            (
                Some(Alternate {
                    endpoint: Endpoint::ChatCompletions,
                    body: chat,
                    meta: chat_meta,
                }),
                None,
            )
        }
        Err(error) => (None, Some(error)),
    };
    let estimate = estimate_message_tokens(&bytes).unwrap_or(0);
    let model = meta.model.clone();
    let exact_source = alternate.as_ref().map(|alt| alt.body.clone());
    let job = Job {
        state: state.clone(),
        endpoint: Endpoint::AnthropicMessages,
        body: bytes,
        meta,
        key,
        forward,
        plan,
        alternate,
    };
    let (answer, waited) = job.run_timed().await;
    ctx.upstream = waited;
    let answer = match answer {
        Err(error) if error.code == ErrorCode::Unsupported => {
            return Err(untranslatable.map(ApiError::from).unwrap_or(error));
        }
        other => other?,
    };
    ctx.proxied = true;
    ctx.backend = Some(answer.index);
    ctx.model = Some(answer.name.clone());
    if answer.endpoint == Endpoint::AnthropicMessages {
        return Ok(passthrough(answer, &state));
    }
    // Exact input tokens when the answering backend can count them (the local model).
    let backend = state.spec.backends[answer.index].backend.clone();
    let input_tokens = match exact_source {
        Some(chat) => tokio::task::spawn_blocking(move || backend.count_tokens(&chat))
            .await
            .ok()
            .flatten()
            .and_then(Result::ok)
            .unwrap_or(estimate),
        None => estimate,
    };
    translate_back(answer, &state, MessagesStreamOptions { model, input_tokens })
}

/// An answer from a Messages backend: already in the client's format.
fn passthrough(answer: Answer, state: &AppState) -> Response<Body> {
    let Answer { response, index, model, .. } = answer;
    let body = match response.body {
        ResponseBody::Full(bytes) => Body::full(bytes),
        ResponseBody::Stream(stream) => Body::relay(stream, Framing::AnthropicEvents, None),
    };
    let mut out = Response::new(body);
    *out.status_mut() = response.status;
    *out.headers_mut() = response.headers;
    label(out.headers_mut(), state, index, model);
    out
}

/// An answer from a chat-completion backend, translated to the Messages format.
fn translate_back(
    answer: Answer,
    state: &AppState,
    options: MessagesStreamOptions,
) -> Result<Response<Body>, ApiError> {
    let Answer { response, index, model, .. } = answer;
    let status = response.status;
    let (body, content_type) = match response.body {
        ResponseBody::Full(bytes) if status.is_success() => {
            (Body::full(chat_completion_to_message(&bytes)?), "application/json")
        }
        ResponseBody::Full(bytes) => {
            (Body::full(chat_error_to_messages(status, &bytes)), "application/json")
        }
        ResponseBody::Stream(stream) => {
            let translated = chat_stream_to_messages(stream, options);
            (Body::relay(translated, Framing::AnthropicEvents, None), "text/event-stream")
        }
    };
    let mut out = Response::new(body);
    *out.status_mut() = status;
    out.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    out.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    label(out.headers_mut(), state, index, model);
    Ok(out)
}

/// The router's own error, in Anthropic's shape.
fn error_response(error: &ApiError) -> Response<Body> {
    let body: Bytes = messages_error_body(error.code, &error.message);
    let mut response = crate::service::json(status_for(error.code), body);
    if let Some(after) = error.retry_after {
        let seconds = after.as_secs() + u64::from(after.subsec_nanos() > 0);
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
    }
    response
}
