//! Request dispatch: the gates (auth, rate limits), then method and path to handler,
//! and the small handlers.

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use switchyard_core::{Endpoint, ErrorCode};

use crate::body::{Body, RequestBody};
use crate::error::ApiError;
use crate::gate::Gate;
use crate::metrics::{MethodLabel, Route};
use crate::observe::{OVERHEAD_HEADER, Observed, RequestCtx};
use crate::proxy::{REQUEST_ID, proxy};
use crate::reload::{Live, Trigger};
use crate::state::AppState;

/// Route one request. Never fails: every error becomes an OpenAI-style JSON response.
/// The state is read once, here; the request runs to its end on it even if a reload
/// swaps in another meanwhile.
pub(crate) async fn handle(
    live: Arc<Live>,
    peer: IpAddr,
    request: Request<RequestBody>,
) -> Result<Response<Observed>, Infallible> {
    let started = Instant::now();
    let state = live.state();
    let request_id = state.request_id(request.headers().get(REQUEST_ID));
    let mut ctx = RequestCtx::new(request_id.clone(), started, peer);
    ctx.route = Route::of(request.uri().path(), &state.settings.metrics.endpoint);
    ctx.method = MethodLabel::of(request.method());
    let result = dispatch(&live, state.clone(), request, &mut ctx).await;
    let mut response = result.unwrap_or_else(ApiError::into_response);
    let headers = response.headers_mut();
    headers.insert(REQUEST_ID, request_id);
    let overhead = ctx.overhead();
    if state.settings.expose_overhead_header {
        let micros = u64::try_from(overhead.as_micros()).unwrap_or(u64::MAX);
        headers.insert(OVERHEAD_HEADER, HeaderValue::from(micros));
    }
    Ok(Observed::wrap(response, ctx, overhead, state))
}

async fn dispatch(
    live: &Live,
    state: Arc<AppState>,
    request: Request<RequestBody>,
    ctx: &mut RequestCtx,
) -> Result<Response<Body>, ApiError> {
    let path = request.uri().path();
    match Gate::of(path, &state) {
        Gate::Open => {}
        Gate::Metrics => return metrics(live, &state, &request),
        Gate::Admin => crate::gate::admin(&state, request.headers(), path)?,
        Gate::Client => crate::gate::client(&state, request.headers(), ctx).await?,
    }
    let endpoint = match path {
        "/v1/chat/completions" | "/chat/completions" => Some(Endpoint::ChatCompletions),
        "/v1/completions" | "/completions" => Some(Endpoint::Completions),
        "/v1/embeddings" | "/embeddings" => Some(Endpoint::Embeddings),
        _ => None,
    };
    if let Some(endpoint) = endpoint {
        allow(&request, &Method::POST)?;
        let (parts, body) = request.into_parts();
        return proxy(state, endpoint, parts, body, ctx).await;
    }
    match path {
        "/v1/messages" | "/messages" => {
            allow(&request, &Method::POST)?;
            let (parts, body) = request.into_parts();
            Ok(crate::messages::messages(state, parts, body, ctx).await)
        }
        "/v1/messages/count_tokens" | "/messages/count_tokens" => {
            allow(&request, &Method::POST)?;
            let (parts, body) = request.into_parts();
            Ok(crate::messages::count_tokens(state, parts, body, ctx).await)
        }
        "/api/quick" => {
            allow(&request, &Method::POST)?;
            let (parts, body) = request.into_parts();
            crate::simple::quick(state, parts, body, ctx).await
        }
        "/api/health" => {
            allow_get(&request)?;
            Ok(crate::simple::health(&state))
        }
        "/api/models" => {
            allow_get(&request)?;
            Ok(crate::simple::models(&state, state.auth.allowed_models(ctx.caller)))
        }
        "/health" => {
            allow_get(&request)?;
            Ok(json(StatusCode::OK, r#"{"status":"ok"}"#))
        }
        "/v1/models" | "/models" => {
            allow_get(&request)?;
            // Served from the model cache; stale lists are refreshed in the background.
            state.discover_models().await;
            let allowed = state.auth.allowed_models(ctx.caller);
            Ok(json(StatusCode::OK, state.models_json_for(allowed)))
        }
        "/admin/health" => {
            allow_get(&request)?;
            Ok(json(StatusCode::OK, crate::admin::health(&state)))
        }
        "/admin/backends" => {
            allow_get(&request)?;
            Ok(json(StatusCode::OK, crate::admin::backends(&state)))
        }
        "/admin/config" => {
            allow_get(&request)?;
            Ok(json(StatusCode::OK, live.config_json()))
        }
        "/admin/config/reload" => {
            allow(&request, &Method::POST)?;
            let outcome = live.reload(Trigger::Admin).await?;
            Ok(json(StatusCode::OK, outcome.to_json()))
        }
        _ => Err(ApiError::new(
            ErrorCode::NotFound,
            format!("no route for {} {path}", request.method()),
        )),
    }
}

/// The metrics endpoint: basic auth (401 with a challenge), then the exporter's text.
fn metrics(
    live: &Live,
    state: &AppState,
    request: &Request<RequestBody>,
) -> Result<Response<Body>, ApiError> {
    allow_get(request)?;
    if let Err(error) = crate::gate::metrics(state, request.headers()) {
        let mut response = error.into_response();
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"switchyard metrics\", charset=\"UTF-8\""),
        );
        return Ok(response);
    }
    let Some(render) = live.render() else {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            "this process exports no metrics (no recorder was installed)",
        ));
    };
    let text = crate::metrics::render(render);
    let mut response = Response::new(Body::full(text));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    Ok(response)
}

fn allow(request: &Request<RequestBody>, method: &Method) -> Result<(), ApiError> {
    if request.method() == method {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorCode::MethodNotAllowed,
            format!("{} {} is not allowed; use {method}", request.method(), request.uri().path()),
        ))
    }
}

fn allow_get(request: &Request<RequestBody>) -> Result<(), ApiError> {
    if request.method() == Method::HEAD { Ok(()) } else { allow(request, &Method::GET) }
}

/// A JSON response.
pub(crate) fn json(status: StatusCode, body: impl Into<bytes::Bytes>) -> Response<Body> {
    let mut response = Response::new(Body::full(body.into()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
