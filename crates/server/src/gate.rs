//! The gates a request passes before any handler runs: client authentication and rate
//! limits for the API, the admin credential for `/admin/*`, basic auth for the metrics
//! endpoint, and the per-key model check once the body names a model. Each refusal is
//! counted and becomes an OpenAI-style error; none reaches an upstream.

use http::HeaderMap;
use switchyard_core::ErrorCode;

use crate::auth::{Auth, Refused};
use crate::error::ApiError;
use crate::metrics::{self, AuthScope};
use crate::observe::RequestCtx;
use crate::ratelimit::Subject;
use crate::state::AppState;

/// Which gate a path goes through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Gate {
    /// Liveness: open to everyone.
    Open,
    /// The metrics endpoint: `metrics.auth`.
    Metrics,
    /// `/admin/*`: the admin key.
    Admin,
    /// Everything else: client keys and rate limits.
    Client,
}

impl Gate {
    pub(crate) fn of(path: &str, state: &AppState) -> Gate {
        if path == "/health" || path == "/api/health" {
            Gate::Open
        } else if path == state.settings.metrics.endpoint && state.settings.metrics.enabled {
            Gate::Metrics
        } else if path == "/admin" || path.starts_with("/admin/") {
            Gate::Admin
        } else {
            Gate::Client
        }
    }
}

/// Authenticate a client request and apply the client-side rate limits; sets
/// `ctx.caller` (and `ctx.client_ip` when limits look at it).
pub(crate) async fn client(
    state: &AppState,
    headers: &HeaderMap,
    ctx: &mut RequestCtx,
) -> Result<(), ApiError> {
    ctx.caller = state.auth.client(headers).map_err(|r| count(AuthScope::Client, r))?;
    let limits = &state.limits;
    if !limits.limits_clients() {
        return Ok(());
    }
    let ip = limits.client_ip(ctx.peer, headers);
    ctx.client_ip = Some(ip);
    let key = Auth::index(ctx.caller).map(|i| (i, state.auth.tenant(ctx.caller)));
    match limits.check_client(&Subject { key, ip }).await {
        Ok(()) => Ok(()),
        Err(limited) => {
            metrics::metrics().rate_limited(limited.scope);
            let mut error = ApiError::new(
                ErrorCode::RateLimited,
                "rate limit exceeded; retry after the time in the Retry-After header",
            );
            error.retry_after = Some(limited.retry_after);
            Err(error)
        }
    }
}

/// Authenticate an `/admin/*` request (404 when `admin.enabled` is false).
pub(crate) fn admin(state: &AppState, headers: &HeaderMap, path: &str) -> Result<(), ApiError> {
    if !state.settings.admin.enabled {
        return Err(ApiError::new(ErrorCode::NotFound, format!("no route for {path}")));
    }
    state.auth.admin(headers).map_err(|r| count(AuthScope::Admin, r))
}

/// Check basic auth on the metrics endpoint.
pub(crate) fn metrics(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    state.auth.metrics(headers).map_err(|r| count(AuthScope::Metrics, r))
}

/// Whether the caller's key may use `requested`; 403 otherwise.
pub(crate) fn model(state: &AppState, ctx: &RequestCtx, requested: &str) -> Result<(), ApiError> {
    let resolved = state.spec.resolve_alias(requested);
    if state.auth.may_use(ctx.caller, requested, resolved) {
        Ok(())
    } else {
        Err(count(AuthScope::Client, state.auth.model_refused(requested)))
    }
}

fn count(scope: AuthScope, refused: Refused) -> ApiError {
    metrics::metrics().auth_failure(scope, refused.reason);
    refused.error
}
