//! The routing table: which backends serve which model, aliases and fallback chains.
//!
//! Built from an immutable [`RouterSpec`] plus the model lists backends reported;
//! rebuilt (and swapped atomically) when discovery learns something new. A request is
//! resolved into a [`Plan`]: the models to try in order (the requested one, then its
//! fallback chain), each with its candidate backends.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use switchyard_core::openai::Model;
use switchyard_core::{Backend, BackendId, ErrorCode};
use switchyard_health::{HealthPool, HealthRegistry};
use switchyard_strategy::{Selector, StatsRegistry, StrategySettings};

use crate::error::ApiError;

/// One backend as the router sees it.
#[derive(Clone)]
pub struct BackendSpec {
    /// The backend.
    pub backend: Arc<dyn Backend>,
    /// The models it serves; empty = ask the backend (`Backend::models`).
    pub models: Vec<String>,
    /// Strategy weight. Default 1.
    pub weight: u32,
    /// Its url, if it has one (weights may be keyed by url).
    pub url: Option<String>,
    /// Its type, for labels and the admin API (`openai`, `vllm`, `local`, ...).
    pub kind: String,
}

/// What the router routes: backends, aliases and fallback chains.
#[derive(Clone, Default)]
pub struct RouterSpec {
    /// The backends, in configuration order.
    pub backends: Vec<BackendSpec>,
    /// alias -> model actually requested upstream.
    pub aliases: HashMap<String, String>,
    /// model -> models to try, in order, when no backend of it can answer.
    pub fallbacks: HashMap<String, Vec<String>>,
}

/// The table requests are resolved against.
pub(crate) struct RouteTable {
    /// Read on every request: hashed with foldhash (the names come from the
    /// configuration and the backends' model lists, not from clients).
    models: foldhash::HashMap<String, Arc<ModelRoute>>,
    /// The merged `/v1/models` list, in backend order.
    listing: Vec<Model>,
}

/// The backends serving one model.
pub(crate) struct ModelRoute {
    pub(crate) model: Arc<str>,
    /// `model` as a response header value, built once.
    pub(crate) model_header: http::HeaderValue,
    /// Indexes into `RouterSpec::backends`, in the selector's order: the selector's
    /// index `i` is backend `candidates[i]`.
    pub(crate) candidates: Vec<usize>,
    /// Orders the candidates per request and records their stats.
    pub(crate) selector: Selector,
    /// Health of exactly these candidates (panic routing counts within the model).
    pub(crate) health: HealthPool,
}

/// What a route table is built with besides the spec: shared state that outlives
/// rebuilds, so health and strategy statistics survive discovery and reloads.
pub(crate) struct Routing<'a> {
    pub(crate) health: &'a HealthRegistry,
    pub(crate) stats: &'a StatsRegistry,
    pub(crate) strategy: &'a StrategySettings,
}

/// One model of a plan and whether the body's `model` must be rewritten for it.
pub(crate) struct PlanStep {
    pub(crate) route: Arc<ModelRoute>,
    pub(crate) upstream_model: Option<Arc<str>>,
}

/// The models to try for one request, in order.
pub(crate) struct Plan {
    pub(crate) steps: Vec<PlanStep>,
}

impl RouteTable {
    /// Build from the spec and the model lists discovered per backend index.
    pub(crate) fn build(
        spec: &RouterSpec,
        routing: &Routing<'_>,
        discovered: &HashMap<usize, Arc<[Model]>>,
    ) -> Result<Self, switchyard_strategy::Error> {
        let mut by_model: HashMap<String, Vec<usize>> = HashMap::new();
        let mut listing = Vec::new();
        let mut listed = HashSet::new();
        for (index, backend) in spec.backends.iter().enumerate() {
            let owner = backend.backend.id().as_str();
            let names: Vec<String> = if backend.models.is_empty() {
                discovered
                    .get(&index)
                    .map(|ms| ms.iter().map(|m| m.id.clone()).collect())
                    .unwrap_or_default()
            } else {
                backend.models.clone()
            };
            for name in names {
                let entry = by_model.entry(name.clone()).or_default();
                if !entry.contains(&index) {
                    entry.push(index);
                }
                if listed.insert(name.clone()) {
                    let upstream = discovered
                        .get(&index)
                        .and_then(|ms| ms.iter().find(|m| m.id == name))
                        .map(|m| m.created)
                        .unwrap_or(0);
                    let mut model = Model::new(name, owner);
                    model.created = upstream;
                    listing.push(model);
                }
            }
        }
        for (alias, target) in &spec.aliases {
            if let Some(owner) = by_model.get(target).and_then(|c| c.first())
                && listed.insert(alias.clone())
            {
                listing
                    .push(Model::new(alias.clone(), spec.backends[*owner].backend.id().as_str()));
            }
        }
        let mut models = foldhash::HashMap::with_capacity_and_hasher(
            by_model.len(),
            foldhash::fast::RandomState::default(),
        );
        for (name, candidates) in by_model {
            let members: Vec<switchyard_strategy::BackendSpec> =
                candidates.iter().map(|&i| spec.backends[i].strategy_spec()).collect();
            let selector = Selector::for_model(routing.strategy, &members, routing.stats, &name)?;
            let health = routing.health.pool(members.iter().map(|m| &m.id));
            let model_header = http::HeaderValue::from_str(&name)
                .unwrap_or_else(|_| http::HeaderValue::from_static("(unprintable)"));
            let model = Arc::from(name.as_str());
            let route = ModelRoute { model, model_header, candidates, selector, health };
            models.insert(name, Arc::new(route));
        }
        Ok(RouteTable { models, listing })
    }

    /// The models backend `index` serves, sorted.
    pub(crate) fn models_of(&self, index: usize) -> Vec<&str> {
        let mut models: Vec<&str> = self
            .models
            .iter()
            .filter(|(_, route)| route.candidates.contains(&index))
            .map(|(name, _)| name.as_str())
            .collect();
        models.sort_unstable();
        models
    }

    /// The merged model list.
    pub(crate) fn listing(&self) -> &[Model] {
        &self.listing
    }

    /// Resolve `requested` (alias first) and its fallback chain into a plan.
    pub(crate) fn plan(&self, spec: &RouterSpec, requested: &str) -> Result<Plan, ApiError> {
        let primary = spec.resolve_alias(requested);
        let mut chain = vec![primary];
        let fallbacks = spec.fallbacks.get(primary).or_else(|| spec.fallbacks.get(requested));
        for model in fallbacks.into_iter().flatten() {
            let model = spec.resolve_alias(model);
            if !chain.contains(&model) {
                chain.push(model);
            }
        }
        let steps: Vec<PlanStep> = chain
            .into_iter()
            .filter_map(|model| {
                let route = self.models.get(model)?.clone();
                let upstream_model = (model != requested).then(|| route.model.clone());
                Some(PlanStep { route, upstream_model })
            })
            .collect();
        if steps.is_empty() {
            return Err(ApiError::new(
                ErrorCode::ModelNotFound,
                format!("the model `{requested}` does not exist or no backend serves it"),
            ));
        }
        Ok(Plan { steps })
    }

    /// Whether any backend serves `model` (directly, not through an alias).
    #[cfg(test)]
    pub(crate) fn serves(&self, model: &str) -> bool {
        self.models.contains_key(model)
    }

    /// Whether a backend that may take traffic now serves `model` (aliases followed).
    pub(crate) fn is_served(&self, spec: &RouterSpec, model: &str) -> bool {
        self.models.get(spec.resolve_alias(model)).is_some_and(|route| {
            route
                .candidates
                .iter()
                .any(|&i| route.health.is_available(spec.backends[i].backend.id()))
        })
    }
}

impl RouterSpec {
    /// The model `name` stands for, following alias chains (bounded, so a cycle that
    /// slipped past validation cannot loop).
    pub(crate) fn resolve_alias<'a>(&'a self, mut name: &'a str) -> &'a str {
        for _ in 0..=self.aliases.len() {
            match self.aliases.get(name) {
                Some(target) if target != name => name = target,
                _ => break,
            }
        }
        name
    }

    /// Every backend as the strategy crate sees it.
    pub(crate) fn strategy_specs(&self) -> Vec<switchyard_strategy::BackendSpec> {
        self.backends.iter().map(BackendSpec::strategy_spec).collect()
    }
}

impl BackendSpec {
    /// A backend serving `models` with weight 1.
    pub fn new(backend: Arc<dyn Backend>, models: Vec<String>) -> Self {
        BackendSpec { backend, models, weight: 1, url: None, kind: "custom".to_owned() }
    }

    fn strategy_spec(&self) -> switchyard_strategy::BackendSpec {
        switchyard_strategy::BackendSpec {
            id: self.backend.id().clone(),
            url: self.url.clone().unwrap_or_default(),
            weight: self.weight,
        }
    }

    /// The backend's id.
    pub fn id(&self) -> &BackendId {
        self.backend.id()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_core::{BackendError, BackendRequest, BackendResponse, BoxFuture};

    struct Named(BackendId);

    impl Backend for Named {
        fn id(&self) -> &BackendId {
            &self.0
        }
        fn send(&self, _: BackendRequest) -> BoxFuture<'_, Result<BackendResponse, BackendError>> {
            Box::pin(async { Err(BackendError::new(ErrorCode::Internal, "unused")) })
        }
        fn models(&self) -> BoxFuture<'_, Result<Vec<Model>, BackendError>> {
            Box::pin(async { Ok(Vec::new()) })
        }
        fn probe(&self) -> BoxFuture<'_, Result<(), BackendError>> {
            Box::pin(async { Ok(()) })
        }
    }

    fn table(spec: &RouterSpec, discovered: &HashMap<usize, Arc<[Model]>>) -> RouteTable {
        let health = HealthRegistry::new(
            &switchyard_health::HealthSettings::default(),
            spec.backends.iter().map(|b| b.backend.id().clone()),
        )
        .unwrap();
        let stats = StatsRegistry::new();
        let strategy = StrategySettings::default();
        let routing = Routing { health: &health, stats: &stats, strategy: &strategy };
        RouteTable::build(spec, &routing, discovered).unwrap()
    }

    fn spec() -> RouterSpec {
        let backend = |name: &str, models: &[&str]| {
            BackendSpec::new(
                Arc::new(Named(BackendId::new(name))),
                models.iter().map(|m| m.to_string()).collect(),
            )
        };
        RouterSpec {
            backends: vec![
                backend("a", &["gpt-4o", "shared"]),
                backend("b", &["shared"]),
                backend("discovering", &[]),
            ],
            aliases: HashMap::from([("fast".into(), "shared".into())]),
            fallbacks: HashMap::from([("gpt-4o".into(), vec!["fast".into(), "missing".into()])]),
        }
    }

    #[test]
    fn merges_configured_and_discovered_models_without_duplicates() {
        let discovered = HashMap::from([(
            2,
            Arc::from(vec![Model::new("llama3", "x"), Model::new("shared", "x")]),
        )]);
        let spec = spec();
        let table = table(&spec, &discovered);
        let ids: Vec<(&str, &str)> =
            table.listing().iter().map(|m| (m.id.as_str(), m.owned_by.as_str())).collect();
        assert_eq!(
            ids,
            [("gpt-4o", "a"), ("shared", "a"), ("llama3", "discovering"), ("fast", "a")]
        );
        assert!(table.serves("llama3"));
    }

    #[test]
    fn plan_follows_alias_and_fallback_chain_and_rewrites_names() {
        let spec = spec();
        let table = table(&spec, &HashMap::new());
        let plan = table.plan(&spec, "gpt-4o").unwrap();
        let steps: Vec<(&str, Option<&str>)> =
            plan.steps.iter().map(|s| (&*s.route.model, s.upstream_model.as_deref())).collect();
        assert_eq!(steps, [("gpt-4o", None), ("shared", Some("shared"))]);

        let plan = table.plan(&spec, "fast").unwrap();
        assert_eq!(plan.steps[0].upstream_model.as_deref(), Some("shared"));
        let err = table.plan(&spec, "nope").err().unwrap();
        assert_eq!(err.code, ErrorCode::ModelNotFound);
        assert!(err.message.contains("`nope`"));
    }

    #[test]
    fn candidates_map_selector_order_to_backends() {
        let spec = spec();
        let table = table(&spec, &HashMap::new());
        let route = &table.plan(&spec, "shared").unwrap().steps[0].route;
        assert_eq!(route.candidates, [0, 1]);
        let key = switchyard_strategy::RequestKey::NONE;
        let firsts: Vec<usize> = (0..4)
            .map(|_| route.candidates[route.selector.select_with(&key, |_, _| true).unwrap()])
            .collect();
        assert_eq!(firsts, [0, 1, 0, 1]);
    }

    #[test]
    fn alias_chains_resolve_and_cycles_stop() {
        let mut spec = spec();
        spec.aliases.insert("faster".into(), "fast".into());
        assert_eq!(spec.resolve_alias("faster"), "shared");
        spec.aliases.insert("x".into(), "y".into());
        spec.aliases.insert("y".into(), "x".into());
        let end = spec.resolve_alias("x");
        assert!(end == "x" || end == "y");
    }
}
