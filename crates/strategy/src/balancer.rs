//! [`Balancer`]: the current [`Selector`] behind an `ArcSwap`, rebuilt on reload over
//! the same [`StatsRegistry`], for callers with one backend set.

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::error::Result;
use crate::selector::{BackendSpec, Selector};
use crate::settings::StrategySettings;
use crate::stats::{BackendSnapshot, StatsRegistry};

/// A hot-swappable selector and the statistics that outlive it.
///
/// Requests take [`Balancer::selector`] once and keep that `Arc` for all their
/// attempts; [`Balancer::reload`] builds a new selector over the same statistics and
/// swaps it in atomically: requests in flight keep counting against the same backends.
#[derive(Debug)]
pub struct Balancer {
    stats: StatsRegistry,
    current: ArcSwap<Selector>,
}

impl Balancer {
    /// Build the first selector.
    pub fn new(settings: &StrategySettings, backends: &[BackendSpec]) -> Result<Self> {
        let stats = StatsRegistry::new();
        let selector = Selector::new(settings, backends, &stats)?;
        Ok(Balancer { stats, current: ArcSwap::from_pointee(selector) })
    }

    /// The current selector: lock-free, one reference-count increment.
    pub fn selector(&self) -> Arc<Selector> {
        self.current.load_full()
    }

    /// Build a selector for new settings or backends and swap it in. On error the
    /// current selector stays.
    pub fn reload(&self, settings: &StrategySettings, backends: &[BackendSpec]) -> Result<()> {
        let selector = Selector::new(settings, backends, &self.stats)?;
        self.current.store(Arc::new(selector));
        Ok(())
    }

    /// The statistics, shared with every selector this balancer built.
    pub fn stats(&self) -> &StatsRegistry {
        &self.stats
    }

    /// The current backends and their statistics, in configuration order.
    pub fn snapshot(&self) -> Vec<BackendSnapshot> {
        self.current.load().snapshot(&self.stats)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{RequestKey, StrategyKind};

    fn backends(names: &[&str]) -> Vec<BackendSpec> {
        names.iter().map(|n| BackendSpec::new(n, &format!("http://{n}:8000"))).collect()
    }

    #[test]
    fn reload_keeps_in_flight_counts_and_averages() {
        let balancer = Balancer::new(&StrategySettings::default(), &backends(&["a", "b"])).unwrap();
        let old = balancer.selector();
        let a = old.position(&"a".into()).unwrap();
        let guard = old.start(a);
        let mut done = old.start(a);
        done.record_latency(Duration::from_millis(40));
        done.success();

        let settings = StrategySettings {
            strategy: StrategyKind::LeastConnections,
            weights: [("a".to_owned(), 5)].into(),
            ..Default::default()
        };
        balancer.reload(&settings, &backends(&["a", "b", "c"])).unwrap();
        drop(old);
        let snap = balancer.snapshot();
        assert_eq!(snap.len(), 3);
        assert_eq!((snap[0].id.as_str(), snap[0].weight, snap[0].in_flight), ("a", 5, 1));
        assert_eq!(snap[0].requests, 2);
        assert_eq!(snap[0].ewma_latency, Some(Duration::from_millis(40)));

        // The new LeastConnections selector sees the request started before the reload.
        let new = balancer.selector();
        assert_eq!(new.strategy(), StrategyKind::LeastConnections);
        let mut order = Vec::new();
        new.select(&RequestKey::NONE, &mut order);
        assert_eq!(*order.last().unwrap(), 0, "the busy backend ranks last: {order:?}");

        drop(guard);
        assert_eq!(balancer.stats().get(&"a".into()).unwrap().in_flight, 0);
    }

    #[test]
    fn failed_reload_keeps_the_current_selector() {
        let balancer = Balancer::new(&StrategySettings::default(), &backends(&["a"])).unwrap();
        let bad = StrategySettings {
            weights: [("http://nowhere:1".to_owned(), 2)].into(),
            ..Default::default()
        };
        let err = balancer.reload(&bad, &backends(&["a"])).unwrap_err();
        assert!(err.to_string().contains("http://nowhere:1"));
        assert_eq!(balancer.selector().len(), 1);
        assert_eq!(balancer.snapshot()[0].weight, 1);
    }
}
