//! Request dispatch: method and path to handler, and the small handlers.

use std::convert::Infallible;
use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use switchyard_core::{Endpoint, ErrorCode};

use crate::body::Body;
use crate::error::ApiError;
use crate::proxy::{REQUEST_ID, proxy};
use crate::state::AppState;

/// Route one request. Never fails: every error becomes an OpenAI-style JSON response.
pub(crate) async fn handle(
    state: Arc<AppState>,
    request: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let request_id = state.request_id(request.headers().get(REQUEST_ID));
    let result = dispatch(state, request, request_id.clone()).await;
    let mut response = result.unwrap_or_else(ApiError::into_response);
    response.headers_mut().insert(REQUEST_ID, request_id);
    Ok(response)
}

async fn dispatch(
    state: Arc<AppState>,
    request: Request<Incoming>,
    request_id: HeaderValue,
) -> Result<Response<Body>, ApiError> {
    let path = request.uri().path();
    let endpoint = match path {
        "/v1/chat/completions" | "/chat/completions" => Some(Endpoint::ChatCompletions),
        "/v1/completions" | "/completions" => Some(Endpoint::Completions),
        "/v1/embeddings" | "/embeddings" => Some(Endpoint::Embeddings),
        _ => None,
    };
    if let Some(endpoint) = endpoint {
        allow(&request, &Method::POST)?;
        let (parts, body) = request.into_parts();
        return proxy(state, endpoint, parts, body, request_id).await;
    }
    match path {
        "/v1/messages" | "/messages" => {
            allow(&request, &Method::POST)?;
            let (parts, body) = request.into_parts();
            Ok(crate::messages::messages(state, parts, body, request_id).await)
        }
        "/v1/messages/count_tokens" | "/messages/count_tokens" => {
            allow(&request, &Method::POST)?;
            let (parts, body) = request.into_parts();
            Ok(crate::messages::count_tokens(state, parts, body).await)
        }
        "/api/quick" => {
            allow(&request, &Method::POST)?;
            let (parts, body) = request.into_parts();
            crate::simple::quick(state, parts, body, request_id).await
        }
        "/api/health" => {
            allow_get(&request)?;
            Ok(crate::simple::health(&state))
        }
        "/api/models" => {
            allow_get(&request)?;
            Ok(crate::simple::models(&state))
        }
        "/health" => {
            allow_get(&request)?;
            Ok(json(StatusCode::OK, r#"{"status":"ok"}"#))
        }
        "/v1/models" | "/models" => {
            allow_get(&request)?;
            // Served from the model cache; stale lists are refreshed in the background.
            state.discover_models().await;
            Ok(json(StatusCode::OK, state.models_json()))
        }
        "/admin/health" => {
            allow_get(&request)?;
            Ok(json(StatusCode::OK, crate::admin::health(&state)))
        }
        "/admin/backends" => {
            allow_get(&request)?;
            Ok(json(StatusCode::OK, crate::admin::backends(&state)))
        }
        _ => Err(ApiError::new(
            ErrorCode::NotFound,
            format!("no route for {} {path}", request.method()),
        )),
    }
}

fn allow(request: &Request<Incoming>, method: &Method) -> Result<(), ApiError> {
    if request.method() == method {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorCode::MethodNotAllowed,
            format!("{} {} is not allowed; use {method}", request.method(), request.uri().path()),
        ))
    }
}

fn allow_get(request: &Request<Incoming>) -> Result<(), ApiError> {
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
