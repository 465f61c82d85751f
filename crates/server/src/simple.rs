//! The Simple API of the small-box router: `GET /api/health`, `GET /api/models` and
//! `POST /api/quick` (`{"prompt": "...", "max_tokens"?: n, "model"?: "..."}` ->
//! `{"text", "tokens", "latency", "model"}`). Quick requests go through the same
//! pipeline as `/v1/chat/completions` (routing, health, retries, fallback).

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderMap, Response, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::json;
use switchyard_core::openai::ChatCompletion;
use switchyard_core::{Endpoint, ErrorCode, RequestMeta, ResponseBody};
use switchyard_strategy::RequestKey;

use crate::attempts::{Job, status_error};
use crate::body::{Body, RequestBody};
use crate::error::ApiError;
use crate::observe::RequestCtx;
use crate::proxy::{REQUEST_ID, check_content_type, read_body};
use crate::service::json as json_response;
use crate::state::AppState;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QuickRequest {
    prompt: String,
    #[serde(default)]
    max_tokens: Option<u32>,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    temperature: Option<f64>,
}

#[derive(Serialize)]
struct QuickResponse {
    text: String,
    tokens: u32,
    /// Milliseconds.
    latency: u64,
    model: String,
}

/// Generation limit of a quick request that sets none.
const QUICK_MAX_TOKENS: u32 = 64;

/// `GET /api/health`.
pub(crate) fn health(state: &AppState) -> Response<Body> {
    let snapshot = state.health.snapshot();
    let total = snapshot.backends.len();
    let available = snapshot.backends.iter().filter(|b| b.available).count();
    let status = match available {
        0 if total > 0 => "unhealthy",
        n if n < total => "degraded",
        _ => "healthy",
    };
    let body = json!({
        "status": status,
        "backends": {"total": total, "available": available},
        "uptime_seconds": state.started.elapsed().as_secs(),
    });
    json_response(StatusCode::OK, body.to_string())
}

/// `GET /api/models`: what is served, and by whom; a key limited to some models sees
/// only those.
pub(crate) fn models(
    state: &AppState,
    allowed: Option<&std::collections::HashSet<String>>,
) -> Response<Body> {
    let table = state.table();
    let models: Vec<_> = table
        .listing()
        .iter()
        .filter(|m| state.permits(allowed, &m.id))
        .map(|m| json!({"id": m.id, "backend": m.owned_by, "available": table.is_served(&state.spec, &m.id)}))
        .collect();
    json_response(StatusCode::OK, json!({"count": models.len(), "models": models}).to_string())
}

/// `POST /api/quick`.
pub(crate) async fn quick(
    state: Arc<AppState>,
    parts: Parts,
    body: RequestBody,
    ctx: &mut RequestCtx,
) -> Result<Response<Body>, ApiError> {
    check_content_type(&parts.headers)?;
    let bytes = read_body(&state, &parts.headers, body).await?;
    let request: QuickRequest = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::new(ErrorCode::InvalidRequest, format!("invalid quick request: {e}"))
    })?;
    if request.prompt.trim().is_empty() {
        return Err(ApiError::new(ErrorCode::InvalidRequest, "`prompt` must not be empty"));
    }
    let model = match request.model {
        Some(model) => model,
        None => default_model(&state)
            .ok_or_else(|| ApiError::new(ErrorCode::ModelNotFound, "no model is being served"))?,
    };
    let chat = json!({
        "model": model,
        "messages": [{"role": "user", "content": request.prompt}],
        "max_tokens": request.max_tokens.unwrap_or(QUICK_MAX_TOKENS),
        "temperature": request.temperature.unwrap_or(0.0),
        "stream": false,
    });
    let chat = Bytes::from(chat.to_string());
    let meta = RequestMeta::parse(Endpoint::ChatCompletions, &chat)?;
    crate::gate::model(&state, ctx, &meta.model)?;
    let plan = state.table().plan(&state.spec, &meta.model)?;
    ctx.model = Some(plan.steps[0].route.model.clone());
    let mut forward = HeaderMap::with_capacity(1);
    forward.insert(REQUEST_ID, ctx.request_id.clone());
    let key = RequestKey::from_meta(None, &meta);
    let started = Instant::now();
    let job = Job {
        state: state.clone(),
        endpoint: Endpoint::ChatCompletions,
        body: chat,
        meta,
        key,
        forward,
        plan,
        alternate: None,
    };
    let (answer, waited) = job.run_timed().await;
    ctx.upstream = waited;
    let answer = answer?;
    ctx.proxied = true;
    ctx.backend = Some(answer.index);
    ctx.model = Some(answer.name.clone());
    let status = answer.response.status;
    let ResponseBody::Full(body) = answer.response.body else {
        return Err(ApiError::new(
            ErrorCode::UpstreamInvalid,
            "the backend streamed a non-streaming answer",
        ));
    };
    if !status.is_success() {
        return Err(status_error(status, &body, None).into());
    }
    let completion: ChatCompletion = serde_json::from_slice(&body).map_err(|_| {
        ApiError::new(ErrorCode::UpstreamInvalid, "the backend's answer is not a chat completion")
    })?;
    let text = completion
        .choices
        .first()
        .and_then(|c| c.message.content.as_ref())
        .map(|c| c.text())
        .unwrap_or_default();
    let response = QuickResponse {
        text,
        tokens: completion.usage.map(|u| u.completion_tokens).unwrap_or(0),
        latency: started.elapsed().as_millis() as u64,
        model: completion.model,
    };
    Ok(json_response(StatusCode::OK, serde_json::to_vec(&response).unwrap_or_default()))
}

/// The embedded model if one is served, else the first model listed.
fn default_model(state: &AppState) -> Option<String> {
    let table = state.table();
    let local = state.spec.backends.iter().position(|b| b.kind == "local");
    local
        .and_then(|index| table.models_of(index).first().map(|m| (*m).to_owned()))
        .or_else(|| table.listing().first().map(|m| m.id.clone()))
}
