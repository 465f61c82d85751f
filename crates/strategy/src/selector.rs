//! A [`Selector`]: one strategy over an immutable set of backends, built once per
//! configuration (or per model) and shared by every request until the next reload.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use switchyard_core::BackendId;

use crate::candidates::Candidates;
use crate::error::{Error, Result};
use crate::key::{RequestKey, ring_point};
use crate::settings::{StrategyKind, StrategySettings};
use crate::stats::{BackendSnapshot, BackendStats, InFlight, LatencyStats, StatsRegistry};

/// A backend as the strategies see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendSpec {
    /// The backend's unique name.
    pub id: BackendId,
    /// Its base URL: `routing.weights` may be keyed by it, as in the seed. Empty for a
    /// backend without one (the embedded model).
    pub url: String,
    /// Its own weight (`backends[].weight`), 1 unless set; `routing.weights` overrides it.
    pub weight: u32,
}

/// One strategy over one immutable set of backends.
///
/// Build it with [`Selector::new`] (or [`Selector::for_model`] to keep latency per
/// model), share it behind an `Arc`, ask it for [`candidates`](Selector::candidates) in
/// preference order and [`start`](Selector::start) the request on the one you take.
/// Selection never locks and allocates nothing for up to 256 backends.
#[derive(Debug)]
pub struct Selector {
    /// The configured strategy.
    pub(crate) configured: StrategyKind,
    /// What orders candidates: the configured strategy, or the fallback when the
    /// configured one can never decide for this set (WeightedRoundRobin, all weights 0).
    pub(crate) primary: StrategyKind,
    pub(crate) fallback: StrategyKind,
    pub(crate) entries: Box<[Entry]>,
    /// Indices of backends with a weight above zero (all of them if every weight is 0).
    pub(crate) active: Box<[u32]>,
    /// The statistics of `active`, position for position: ranking scans read these
    /// contiguously instead of hopping through `entries`.
    pub(crate) hot: Box<[Hot]>,
    /// Indices of drained (weight 0) backends, offered last.
    pub(crate) standby: Box<[u32]>,
    /// Step sizes coprime with `active.len()`, for random permutations.
    pub(crate) strides: Box<[u32]>,
    /// One cycle of smooth weighted round-robin, as backend indices.
    pub(crate) wrr: Box<[u32]>,
    /// Ring points, sorted, each with its backend index.
    pub(crate) ring: Box<[(u64, u32)]>,
    pub(crate) counter: AtomicUsize,
    pub(crate) load_factor: f64,
    pub(crate) exploration: f64,
    decay: Duration,
}

/// A backend inside a selector, with its statistics cells.
#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) spec: BackendSpec,
    pub(crate) stats: Arc<BackendStats>,
    pub(crate) model: Option<Arc<LatencyStats>>,
}

/// What a ranking scan reads about one active backend.
#[derive(Debug)]
pub(crate) struct Hot {
    pub(crate) index: u32,
    pub(crate) stats: Arc<BackendStats>,
    pub(crate) model: Option<Arc<LatencyStats>>,
}

/// Largest smooth weighted round-robin cycle; larger weight sums are scaled down.
const MAX_WRR_CYCLE: u64 = 1 << 16;
/// Most coprime strides kept; more adds memory, not randomness that matters.
const MAX_STRIDES: usize = 64;

impl BackendSpec {
    /// A backend of weight 1.
    pub fn new(name: &str, url: &str) -> Self {
        BackendSpec { id: BackendId::new(name), url: url.to_owned(), weight: 1 }
    }
}

impl Selector {
    /// Build the configured strategy over `backends`, whose order is the index order of
    /// every method below. Statistics come from (and stay in) `stats`.
    ///
    /// Fails on invalid settings, a duplicate backend name, or a `routing.weights` key
    /// that matches no backend name or URL. An empty set is allowed: it selects nothing.
    pub fn new(
        settings: &StrategySettings,
        backends: &[BackendSpec],
        stats: &StatsRegistry,
    ) -> Result<Self> {
        Selector::build(settings, backends, stats, None)
    }

    /// Like [`Selector::new`], for the backends serving `model`: latency is then kept
    /// per backend and model (a backend may be fast for a small model and slow for a
    /// large one), while in-flight and error counts stay per backend. `backends` is a
    /// subset of the configuration, so `routing.weights` keys naming other backends are
    /// not an error here (check them once with [`Selector::new`] over the full set).
    pub fn for_model(
        settings: &StrategySettings,
        backends: &[BackendSpec],
        stats: &StatsRegistry,
        model: &str,
    ) -> Result<Self> {
        Selector::build(settings, backends, stats, Some(Arc::from(model)))
    }

    fn build(
        settings: &StrategySettings,
        backends: &[BackendSpec],
        stats: &StatsRegistry,
        model: Option<Arc<str>>,
    ) -> Result<Self> {
        settings.validate()?;
        // A per-model set is a subset: weights of other backends are expected there.
        let weights = effective_weights(settings, backends, model.is_none())?;
        let entries: Box<[Entry]> = stats.attach(|attach| {
            backends
                .iter()
                .zip(&weights)
                .map(|(spec, &weight)| Entry {
                    spec: BackendSpec { weight, ..spec.clone() },
                    stats: attach.backend(&spec.id, weight),
                    model: model.as_ref().map(|m| attach.model(&spec.id, m)),
                })
                .collect()
        });

        let all_zero = weights.iter().all(|&w| w == 0);
        let (active, standby): (Vec<u32>, Vec<u32>) =
            (0..index_u32(backends.len())).partition(|&i| all_zero || weights[i as usize] > 0);
        // With every weight zero the weights say nothing: count each backend once.
        let active_weights: Vec<u64> = active
            .iter()
            .map(|&i| if all_zero { 1 } else { u64::from(weights[i as usize]) })
            .collect();

        let primary = if settings.strategy == StrategyKind::WeightedRoundRobin && all_zero {
            settings.fallback_strategy
        } else {
            settings.strategy
        };
        let uses = |kind: StrategyKind| primary == kind || settings.fallback_strategy == kind;
        let wrr = if uses(StrategyKind::WeightedRoundRobin) {
            smooth_wrr_cycle(&active, &active_weights)
        } else {
            Box::default()
        };
        let ring = if primary == StrategyKind::ConsistentHash {
            build_ring(&entries, &active, settings.consistent_hash.virtual_nodes)
        } else {
            Box::default()
        };

        Ok(Selector {
            configured: settings.strategy,
            primary,
            fallback: settings.fallback_strategy,
            strides: coprime_strides(active.len()),
            hot: active
                .iter()
                .map(|&i| {
                    let e = &entries[i as usize];
                    Hot { index: i, stats: Arc::clone(&e.stats), model: e.model.clone() }
                })
                .collect(),
            active: active.into(),
            standby: standby.into(),
            entries,
            wrr,
            ring,
            counter: AtomicUsize::new(0),
            load_factor: settings.consistent_hash.load_factor,
            exploration: settings.least_latency.exploration,
            decay: settings.least_latency.decay,
        })
    }

    /// The configured strategy.
    pub fn strategy(&self) -> StrategyKind {
        self.configured
    }

    /// How many backends the selector holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The backend at `index`, with its effective weight (after `routing.weights`).
    pub fn backend(&self, index: usize) -> Option<&BackendSpec> {
        self.entries.get(index).map(|e| &e.spec)
    }

    /// The index of the backend named `id`.
    pub fn position(&self, id: &BackendId) -> Option<usize> {
        self.entries.iter().position(|e| e.spec.id == *id)
    }

    /// Every backend index exactly once, most preferred first, computed lazily: taking
    /// the first costs one strategy decision, each further one (a retry) a little more.
    pub fn candidates(&self, key: &RequestKey) -> Candidates<'_> {
        Candidates::new(self, *key)
    }

    /// The first candidate `accept` takes (given its index and backend), or `None` when
    /// it takes none. Put health, circuit state, model support and "already tried"
    /// in `accept`: a retry calls this again with the failed backend excluded.
    pub fn select_with(
        &self,
        key: &RequestKey,
        mut accept: impl FnMut(usize, &BackendSpec) -> bool,
    ) -> Option<usize> {
        self.candidates(key).find(|&i| accept(i, &self.entries[i].spec))
    }

    /// Replace `out` with the whole preference order. Ranking strategies cost O(n) per
    /// element, so prefer [`Selector::select_with`] or `candidates(key).take(k)` on
    /// large sets.
    pub fn select(&self, key: &RequestKey, out: &mut Vec<usize>) {
        out.clear();
        out.extend(self.candidates(key));
    }

    /// Start a request on backend `index`: it counts as in flight until the guard is
    /// finished or dropped. Record its latency and outcome on the guard.
    ///
    /// # Panics
    ///
    /// If `index` is out of range: indices come from this selector's methods.
    pub fn start(&self, index: usize) -> InFlight {
        let entry = &self.entries[index];
        InFlight::start(&entry.stats, entry.model.as_ref(), self.decay, index)
    }

    /// This selector's backends and their statistics, in index order, for
    /// `/admin/backends`.
    pub fn snapshot(&self, stats: &StatsRegistry) -> Vec<BackendSnapshot> {
        self.entries.iter().filter_map(|e| stats.get(&e.spec.id)).collect()
    }
}

/// Weights after `routing.weights` (by name first, then by URL), checking no name
/// repeats and, when `strict`, that every key names one of `backends`.
fn effective_weights(
    settings: &StrategySettings,
    backends: &[BackendSpec],
    strict: bool,
) -> Result<Vec<u32>> {
    let mut names = HashSet::with_capacity(backends.len());
    for spec in backends {
        if !names.insert(spec.id.as_str()) {
            return Err(Error::DuplicateBackend(spec.id.clone()));
        }
    }
    let mut weights: Vec<u32> = backends.iter().map(|b| b.weight).collect();
    // Names win over URLs whatever the map order, so apply URL keys first.
    for (key, &weight) in &settings.weights {
        if names.contains(key.as_str()) {
            continue;
        }
        let url = normalise_url(key);
        let mut matched = false;
        for (i, spec) in backends.iter().enumerate() {
            if !url.is_empty() && normalise_url(&spec.url) == url {
                weights[i] = weight;
                matched = true;
            }
        }
        if !matched && strict {
            return Err(Error::UnknownWeightKey(key.clone()));
        }
    }
    for (i, spec) in backends.iter().enumerate() {
        if let Some(&weight) = settings.weights.get(spec.id.as_str()) {
            weights[i] = weight;
        }
    }
    Ok(weights)
}

fn normalise_url(url: &str) -> &str {
    url.trim_end_matches('/')
}

fn index_u32(len: usize) -> u32 {
    // Selectors hold far fewer than 2^32 backends; saturate rather than wrap.
    u32::try_from(len).unwrap_or(u32::MAX)
}

/// One cycle of nginx's smooth weighted round-robin: every round each backend's
/// current value grows by its weight, the largest is picked and lowered by the total.
/// Weights 3:1 give a a b a, not a a a b. Weights are first divided by their gcd and,
/// if the cycle would exceed [`MAX_WRR_CYCLE`], scaled down (keeping every nonzero
/// weight at least 1).
fn smooth_wrr_cycle(active: &[u32], weights: &[u64]) -> Box<[u32]> {
    let g = weights.iter().copied().fold(0, gcd).max(1);
    let mut w: Vec<u64> = weights.iter().map(|x| x / g).collect();
    let total: u64 = w.iter().sum();
    if total > MAX_WRR_CYCLE {
        for x in &mut w {
            *x = (*x * MAX_WRR_CYCLE / total).max(1);
        }
    }
    let total: u64 = w.iter().sum();
    let total_i = i64::try_from(total).unwrap_or(i64::MAX);
    let mut current = vec![0i64; w.len()];
    let mut cycle = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    for _ in 0..total {
        let mut best = 0;
        for (cur, &weight) in current.iter_mut().zip(&w) {
            *cur += i64::try_from(weight).unwrap_or(i64::MAX);
        }
        // The largest current value, the first one on ties.
        for i in 1..current.len() {
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total_i;
        cycle.push(active[best]);
    }
    cycle.into()
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// The ring: `virtual_nodes` points per active backend, placed by the backend's name
/// (not its index or URL), so the same backends give the same ring in any order.
fn build_ring(entries: &[Entry], active: &[u32], virtual_nodes: u32) -> Box<[(u64, u32)]> {
    let mut ring: Vec<(u64, u32)> = Vec::with_capacity(active.len() * virtual_nodes as usize);
    for &i in active {
        let name = entries[i as usize].spec.id.as_str();
        ring.extend((0..virtual_nodes).map(|r| (ring_point(name, r), i)));
    }
    // Ties (vanishingly rare) are broken by name, again independent of order.
    ring.sort_unstable_by(|a, b| {
        a.0.cmp(&b.0).then_with(|| {
            entries[a.1 as usize].spec.id.as_str().cmp(entries[b.1 as usize].spec.id.as_str())
        })
    });
    ring.into()
}

/// Step sizes `s` in `1..=n` with `gcd(s, n) == 1`: `start + k * s (mod n)` then visits
/// every position once, a random permutation in O(1) space.
fn coprime_strides(n: usize) -> Box<[u32]> {
    let n64 = n as u64;
    let strides: Vec<u32> = (1..=n64.max(1))
        .filter(|&s| gcd(s, n64) == 1 || n64 <= 1)
        .take(MAX_STRIDES)
        .map(|s| u32::try_from(s).unwrap_or(1))
        .collect();
    strides.into()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn specs(names: &[&str]) -> Vec<BackendSpec> {
        names.iter().map(|n| BackendSpec::new(n, &format!("http://{n}:11434/"))).collect()
    }

    fn selector(kind: StrategyKind, names: &[&str]) -> (Selector, StatsRegistry) {
        let stats = StatsRegistry::new();
        let settings = StrategySettings { strategy: kind, ..Default::default() };
        (Selector::new(&settings, &specs(names), &stats).unwrap(), stats)
    }

    fn first(sel: &Selector, key: &RequestKey) -> usize {
        sel.select_with(key, |_, _| true).unwrap()
    }

    /// A whole successful request to `i` taking `ms` to the response head.
    fn served(sel: &Selector, i: usize, ms: u64) {
        let mut guard = sel.start(i);
        guard.record_latency(Duration::from_millis(ms));
        guard.success();
    }

    fn picks(sel: &Selector, n: usize) -> String {
        (0..n).map(|_| (b'a' + first(sel, &RequestKey::NONE) as u8) as char).collect()
    }

    #[test]
    fn round_robin_rotates_and_retries_go_to_the_next() {
        let (sel, _) = selector(StrategyKind::RoundRobin, &["a", "b", "c"]);
        assert_eq!(picks(&sel, 6), "abcabc");
        let mut order = Vec::new();
        sel.select(&RequestKey::NONE, &mut order);
        assert_eq!(order, [0, 1, 2]);
        sel.select(&RequestKey::NONE, &mut order);
        assert_eq!(order, [1, 2, 0]);
    }

    #[test]
    fn smooth_weighted_round_robin_interleaves() {
        let stats = StatsRegistry::new();
        let settings = StrategySettings {
            strategy: StrategyKind::WeightedRoundRobin,
            // Keyed by URL as in the seed (trailing slash ignored), and by name.
            weights: [("http://a:11434".to_owned(), 5), ("b".to_owned(), 1)].into(),
            ..Default::default()
        };
        let sel = Selector::new(&settings, &specs(&["a", "b", "c"]), &stats).unwrap();
        // nginx's documented sequence for 5:1:1.
        assert_eq!(picks(&sel, 14), "aabacaaaabacaa");
        assert_eq!(sel.backend(0).unwrap().weight, 5);

        let w31 = StrategySettings {
            weights: [("a".to_owned(), 3), ("b".to_owned(), 1)].into(),
            ..settings
        };
        let sel = Selector::new(&w31, &specs(&["a", "b"]), &stats).unwrap();
        assert_eq!(picks(&sel, 8), "aabaaaba");
    }

    #[test]
    fn names_win_over_urls_and_unknown_keys_fail() {
        let settings = StrategySettings {
            strategy: StrategyKind::WeightedRoundRobin,
            weights: [("a".to_owned(), 2), ("http://a:11434".to_owned(), 7)].into(),
            ..Default::default()
        };
        let stats = StatsRegistry::new();
        let sel = Selector::new(&settings, &specs(&["a", "b"]), &stats).unwrap();
        assert_eq!(sel.backend(0).unwrap().weight, 2);

        let typo =
            StrategySettings { weights: [("http://a:1143".to_owned(), 2)].into(), ..settings };
        let err = Selector::new(&typo, &specs(&["a"]), &stats).unwrap_err();
        assert_eq!(
            err.to_string(),
            "`routing.weights` key `http://a:1143` matches no backend name or url"
        );
        // A per-model subset may omit weighted backends.
        Selector::for_model(&typo, &specs(&["a"]), &stats, "m").unwrap();

        let dup = Selector::new(&StrategySettings::default(), &specs(&["a", "a"]), &stats);
        assert_eq!(dup.unwrap_err().to_string(), "duplicate backend name `a`");
    }

    #[test]
    fn zero_weight_drains_and_all_zero_falls_back() {
        let stats = StatsRegistry::new();
        let settings = StrategySettings {
            strategy: StrategyKind::RoundRobin,
            weights: [("a".to_owned(), 0)].into(),
            ..Default::default()
        };
        let sel = Selector::new(&settings, &specs(&["a", "b", "c"]), &stats).unwrap();
        for _ in 0..10 {
            let order: Vec<usize> = sel.candidates(&RequestKey::NONE).collect();
            assert_eq!(order.len(), 3);
            assert_eq!(order[2], 0, "the drained backend comes last");
        }
        assert_eq!(sel.select_with(&RequestKey::NONE, |i, _| i == 0), Some(0));

        let all_zero = StrategySettings {
            strategy: StrategyKind::WeightedRoundRobin,
            fallback_strategy: StrategyKind::RoundRobin,
            weights: [("a".to_owned(), 0), ("b".to_owned(), 0)].into(),
            ..Default::default()
        };
        let sel = Selector::new(&all_zero, &specs(&["a", "b"]), &stats).unwrap();
        assert_eq!(sel.strategy(), StrategyKind::WeightedRoundRobin);
        assert_eq!(picks(&sel, 4), "abab");
    }

    #[test]
    fn least_connections_takes_the_least_busy() {
        let (sel, _) = selector(StrategyKind::LeastConnections, &["a", "b", "c"]);
        let _a = [sel.start(0), sel.start(0)];
        let _c = sel.start(2);
        assert_eq!(first(&sel, &RequestKey::NONE), 1);
        let order: Vec<usize> = sel.candidates(&RequestKey::NONE).collect();
        assert_eq!(order, [1, 2, 0]);
    }

    #[test]
    fn power_of_two_choices_never_picks_the_busiest_of_three_first() {
        let (sel, _) = selector(StrategyKind::PowerOfTwoChoices, &["a", "b", "c"]);
        let _busy = [sel.start(1), sel.start(1), sel.start(1)];
        let mut counts = [0; 3];
        for _ in 0..3_000 {
            counts[first(&sel, &RequestKey::NONE)] += 1;
        }
        // b loses every pair it is in; a and c share the rest evenly.
        assert_eq!(counts[1], 0, "{counts:?}");
        assert!(counts[0] > 1_200 && counts[2] > 1_200, "{counts:?}");
    }

    #[test]
    fn random_spreads_evenly() {
        let (sel, _) = selector(StrategyKind::Random, &["a", "b", "c", "d"]);
        let mut counts = [0; 4];
        for _ in 0..8_000 {
            counts[first(&sel, &RequestKey::NONE)] += 1;
        }
        // 2_000 expected each; 400 is ten standard deviations.
        assert!(counts.iter().all(|&c| (1_600..2_400).contains(&c)), "{counts:?}");
    }

    #[test]
    fn least_latency_uses_the_fallback_until_it_has_data() {
        let stats = StatsRegistry::new();
        let settings = StrategySettings {
            strategy: StrategyKind::LeastLatency,
            fallback_strategy: StrategyKind::RoundRobin,
            least_latency: crate::LeastLatencySettings { exploration: 0.0, ..Default::default() },
            ..Default::default()
        };
        let sel = Selector::for_model(&settings, &specs(&["a", "b", "c"]), &stats, "m").unwrap();
        assert_eq!(picks(&sel, 3), "abc");

        served(&sel, 2, 50);
        served(&sel, 1, 10);
        // a has no data and is idle: it is tried first, then the fastest.
        assert_eq!(sel.candidates(&RequestKey::NONE).collect::<Vec<_>>(), [0, 1, 2]);
        let mut probe = sel.start(0);
        // While a's first request is out, a ranks last.
        assert_eq!(sel.candidates(&RequestKey::NONE).collect::<Vec<_>>(), [1, 2, 0]);
        probe.record_latency(Duration::from_millis(30));
        probe.success();
        assert_eq!(sel.candidates(&RequestKey::NONE).collect::<Vec<_>>(), [1, 0, 2]);

        // Load counts: b with three requests out costs 4 x 10ms, more than a's 30ms.
        let _b = [sel.start(1), sel.start(1), sel.start(1)];
        assert_eq!(first(&sel, &RequestKey::NONE), 0);
        // Latency is kept per model as well as per backend.
        let snap = sel.snapshot(&stats);
        assert_eq!(snap[1].models[0].model, "m");
        assert_eq!(snap[1].models[0].ewma_latency, Some(Duration::from_millis(10)));
    }

    #[test]
    fn least_latency_penalises_failures() {
        let stats = StatsRegistry::new();
        let settings = StrategySettings {
            strategy: StrategyKind::LeastLatency,
            least_latency: crate::LeastLatencySettings { exploration: 0.0, ..Default::default() },
            ..Default::default()
        };
        let sel = Selector::new(&settings, &specs(&["a", "b"]), &stats).unwrap();
        served(&sel, 0, 10);
        served(&sel, 1, 30);
        assert_eq!(first(&sel, &RequestKey::NONE), 0);
        for _ in 0..3 {
            sel.start(0).failure();
        }
        // Success rate 1/4 (all within a moment, so equally weighted): 10ms looks like 40ms.
        assert_eq!(first(&sel, &RequestKey::NONE), 1);
    }

    #[test]
    fn consistent_hash_is_sticky_and_falls_back_without_a_key() {
        let (sel, _) = selector(StrategyKind::ConsistentHash, &["a", "b", "c", "d"]);
        let key = RequestKey::from_str("session-42");
        let home = first(&sel, &key);
        for _ in 0..20 {
            assert_eq!(first(&sel, &key), home);
        }
        // Different keys reach every backend.
        let mut hit = [false; 4];
        for k in 0..200 {
            hit[first(&sel, &RequestKey::from_str(&format!("user-{k}")))] = true;
        }
        assert_eq!(hit, [true; 4]);
        // No key: the fallback (RoundRobin) decides.
        assert_eq!(picks(&sel, 4), "abcd");
    }

    #[test]
    fn consistent_hash_bounds_load() {
        let stats = StatsRegistry::new();
        let settings = StrategySettings {
            strategy: StrategyKind::ConsistentHash,
            consistent_hash: crate::ConsistentHashSettings {
                load_factor: 0.5,
                ..Default::default()
            },
            ..Default::default()
        };
        let sel = Selector::new(&settings, &specs(&["a", "b", "c", "d"]), &stats).unwrap();
        let key = RequestKey::from_str("hot");
        let home = first(&sel, &key);
        let mut guards = Vec::new();
        for _ in 0..40 {
            guards.push(sel.start(first(&sel, &key)));
        }
        let loads: Vec<u64> = sel.snapshot(&stats).iter().map(|s| s.in_flight).collect();
        // ceil(1.5 x 40 / 4) = 15: the home backend is full, the rest spill in ring order.
        assert_eq!(loads[home], 15, "{loads:?}");
        assert!(loads.iter().all(|&l| l <= 15), "{loads:?}");
        drop(guards);
        assert_eq!(first(&sel, &key), home);
    }

    #[test]
    fn shared_types_cross_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Selector>();
        send_sync::<crate::Balancer>();
        send_sync::<StatsRegistry>();
        send_sync::<InFlight>();
        send_sync::<RequestKey>();
    }

    #[test]
    fn empty_and_large_sets_work() {
        let (sel, _) = selector(StrategyKind::PowerOfTwoChoices, &[]);
        assert!(sel.is_empty());
        assert_eq!(sel.candidates(&RequestKey::NONE).count(), 0);
        assert_eq!(sel.select_with(&RequestKey::NONE, |_, _| true), None);

        let names: Vec<String> = (0..300).map(|i| format!("b{i}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        for kind in StrategyKind::ALL {
            let (sel, _) = selector(kind, &names);
            let mut order: Vec<usize> = sel.candidates(&RequestKey::from_str("k")).collect();
            order.sort_unstable();
            assert_eq!(order, (0..300).collect::<Vec<_>>(), "{kind}");
        }
    }
}
