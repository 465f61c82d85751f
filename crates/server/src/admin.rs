//! `/admin/*`: what an operator asks a running router.

use serde::Serialize;
use switchyard_health::BackendHealth;
use switchyard_strategy::BackendSnapshot;

use crate::state::AppState;

/// One backend in `GET /admin/backends`.
#[derive(Serialize)]
struct BackendView<'a> {
    name: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    url: Option<&'a str>,
    weight: u32,
    models: Vec<&'a str>,
    /// Strategy statistics: in-flight, EWMA latency, requests, errors.
    stats: Option<BackendSnapshot>,
    health: Option<BackendHealth>,
}

#[derive(Serialize)]
struct BackendsView<'a> {
    backends: Vec<BackendView<'a>>,
}

/// `GET /admin/health`: the health registry's snapshot.
pub(crate) fn health(state: &AppState) -> Vec<u8> {
    serde_json::to_vec(&state.health.snapshot()).unwrap_or_default()
}

/// `GET /admin/backends`: configuration, served models and health per backend.
pub(crate) fn backends(state: &AppState) -> Vec<u8> {
    let table = state.table();
    let mut health = state.health.snapshot().backends;
    let mut stats = state.stats.snapshot();
    let backends = state
        .spec
        .backends
        .iter()
        .enumerate()
        .map(|(index, spec)| {
            let name = spec.backend.id().as_str();
            let position = health.iter().position(|h| h.backend == name);
            let stat = stats.iter().position(|s| s.id.as_str() == name);
            BackendView {
                name,
                kind: &spec.kind,
                url: spec.url.as_deref(),
                weight: spec.weight,
                models: table.models_of(index),
                stats: stat.map(|p| stats.swap_remove(p)),
                health: position.map(|p| health.swap_remove(p)),
            }
        })
        .collect();
    serde_json::to_vec(&BackendsView { backends }).unwrap_or_default()
}
