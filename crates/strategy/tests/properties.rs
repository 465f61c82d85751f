//! The invariants of issue 4, as properties over random backend sets, weights, loads,
//! health masks and keys.

// Helpers outside `#[test]` functions are test code too.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use switchyard_strategy::{
    BackendSpec, ConsistentHashSettings, LeastLatencySettings, RequestKey, Selector, StatsRegistry,
    StrategyKind, StrategySettings,
};

fn specs(names: &[String]) -> Vec<BackendSpec> {
    names.iter().map(|n| BackendSpec::new(n, &format!("http://{n}:8000"))).collect()
}

fn named(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("backend-{i}")).collect()
}

fn settings(kind: StrategyKind) -> StrategySettings {
    StrategySettings { strategy: kind, ..Default::default() }
}

fn with_weights(kind: StrategyKind, names: &[String], weights: &[u32]) -> StrategySettings {
    StrategySettings {
        weights: names.iter().cloned().zip(weights.iter().copied()).collect(),
        ..settings(kind)
    }
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// The backend name `key` lands on, with nothing in flight.
fn home(sel: &Selector, key: u64) -> String {
    let i = sel.select_with(&RequestKey::from_hash(key), |_, _| true).unwrap();
    sel.backend(i).unwrap().id.to_string()
}

fn kind() -> impl Strategy<Value = StrategyKind> {
    prop::sample::select(StrategyKind::ALL.to_vec())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Over any weights, every window of one cycle gives each backend exactly its
    /// share (so within +-1), and every prefix of the sequence stays within 1 of the
    /// ideal count: the interleaving is smooth.
    #[test]
    fn weighted_round_robin_gives_each_its_share(
        weights in prop::collection::vec(0u32..=40, 1..=16),
        offset in 0usize..1000,
    ) {
        prop_assume!(weights.iter().any(|&w| w > 0));
        let names = named(weights.len());
        let stats = StatsRegistry::new();
        let settings = with_weights(StrategyKind::WeightedRoundRobin, &names, &weights);
        let sel = Selector::new(&settings, &specs(&names), &stats).unwrap();
        let g = weights.iter().copied().fold(0, gcd);
        let share: Vec<u32> = weights.iter().map(|w| w / g).collect();
        let cycle: usize = share.iter().map(|&s| s as usize).sum();

        for _ in 0..offset % cycle {
            sel.select_with(&RequestKey::NONE, |_, _| true);
        }
        let picks: Vec<usize> =
            (0..3 * cycle).map(|_| sel.select_with(&RequestKey::NONE, |_, _| true).unwrap()).collect();
        for window in picks.windows(cycle) {
            let mut counts = vec![0u32; share.len()];
            for &p in window {
                counts[p] += 1;
            }
            for (i, (&c, &s)) in counts.iter().zip(&share).enumerate() {
                prop_assert!(c.abs_diff(s) <= 1, "backend {i}: {c} picks, share {s}: {window:?}");
            }
        }
        if offset % cycle == 0 {
            let mut counts = vec![0f64; share.len()];
            for (k, &p) in picks.iter().enumerate() {
                counts[p] += 1.0;
                for (i, &s) in share.iter().enumerate() {
                    let ideal = (k + 1) as f64 * f64::from(s) / cycle as f64;
                    prop_assert!((counts[i] - ideal).abs() <= 1.0, "prefix {k}, backend {i}");
                }
            }
        }
    }

    /// Every strategy, whatever the weights, loads, latencies and key, yields each
    /// backend exactly once; so with a health filter it returns a healthy backend
    /// whenever one exists, and nothing when none does.
    #[test]
    fn every_strategy_returns_only_acceptable_candidates(
        kind in kind(),
        fallback in prop::sample::select(vec![
            StrategyKind::RoundRobin, StrategyKind::WeightedRoundRobin, StrategyKind::Random,
            StrategyKind::LeastConnections, StrategyKind::PowerOfTwoChoices,
        ]),
        backends in prop::collection::vec(
            (0u32..=3, any::<bool>(), 0usize..=3, prop::option::of(1u64..500)), 1..=40),
        key in prop::option::of(any::<u64>()),
    ) {
        let names = named(backends.len());
        let weights: Vec<u32> = backends.iter().map(|b| b.0).collect();
        let healthy: Vec<bool> = backends.iter().map(|b| b.1).collect();
        let stats = StatsRegistry::new();
        let settings = StrategySettings {
            fallback_strategy: fallback,
            ..with_weights(kind, &names, &weights)
        };
        let sel = Selector::new(&settings, &specs(&names), &stats).unwrap();
        let mut guards = Vec::new();
        for (i, &(_, _, load, latency)) in backends.iter().enumerate() {
            if let Some(ms) = latency {
                let mut guard = sel.start(i);
                guard.record_latency(Duration::from_millis(ms));
                guard.success();
            }
            guards.extend((0..load).map(|_| sel.start(i)));
        }
        let key = key.map_or(RequestKey::NONE, RequestKey::from_hash);
        let mut order = Vec::new();
        for _ in 0..4 {
            sel.select(&key, &mut order);
            let mut sorted = order.clone();
            sorted.sort_unstable();
            prop_assert_eq!(sorted, (0..names.len()).collect::<Vec<_>>());

            let picked = sel.select_with(&key, |i, b| {
                assert_eq!(b.id.as_str(), names[i]);
                healthy[i]
            });
            match picked {
                Some(i) => prop_assert!(healthy[i], "{kind}: picked unhealthy {i}"),
                None => prop_assert!(!healthy.iter().any(|&h| h), "{kind}: missed a healthy one"),
            }
        }
        drop(guards);
    }

    /// Removing one of n backends moves only the keys it owned (about 1/n of them);
    /// adding one moves keys only onto it; rebuilding, in any order, moves nothing.
    #[test]
    fn consistent_hashing_remaps_about_one_nth(
        n in 2usize..=12,
        changed in any::<prop::sample::Index>(),
        keys in prop::collection::vec(any::<u64>(), 1000),
        rotate in any::<prop::sample::Index>(),
    ) {
        let names = named(n + 1);
        let settings = settings(StrategyKind::ConsistentHash);
        let build = |names: &[String]| {
            Selector::new(&settings, &specs(names), &StatsRegistry::new()).unwrap()
        };
        let full = build(&names[..n]);
        let removed = changed.index(n);
        let less: Vec<String> =
            names[..n].iter().filter(|&x| *x != names[removed]).cloned().collect();
        let less = build(&less);
        let more = build(&names);
        let mut shuffled = names[..n].to_vec();
        shuffled.rotate_left(rotate.index(n));
        shuffled.reverse();
        let again = build(&shuffled);

        let (mut moved_out, mut moved_in) = (0usize, 0usize);
        for &key in &keys {
            let before = home(&full, key);
            prop_assert_eq!(&home(&again, key), &before, "rebuild moved a key");
            let after_remove = home(&less, key);
            if before == names[removed] {
                moved_out += 1;
            } else {
                prop_assert_eq!(&after_remove, &before, "a key of a remaining backend moved");
            }
            let after_add = home(&more, key);
            if after_add != before {
                prop_assert_eq!(&after_add, &names[n], "a key moved between old backends");
                moved_in += 1;
            }
        }
        // 160 virtual nodes keep each share within about 25% of 1/n; 1000 keys add
        // sampling noise of a few percent.
        let tolerance = |backends: usize| 1.5 / backends as f64 + 0.05;
        let out = moved_out as f64 / keys.len() as f64;
        let inn = moved_in as f64 / keys.len() as f64;
        prop_assert!(out <= tolerance(n), "removing 1 of {n} moved {out}");
        prop_assert!(inn <= tolerance(n + 1), "adding 1 to {n} moved {inn}");
    }

    /// With requests only arriving, hot keys included, no backend ever holds more than
    /// ceil((1 + load_factor) x total in flight / n).
    #[test]
    fn bounded_load_holds_under_skewed_keys(
        n in 2usize..=10,
        load_factor in 0.0f64..1.0,
        keys in prop::collection::vec(prop_oneof![8 => Just(0u64), 2 => 1u64..20, 1 => any::<u64>()], 1..300),
    ) {
        let names = named(n);
        let settings = StrategySettings {
            consistent_hash: ConsistentHashSettings { load_factor, ..Default::default() },
            ..settings(StrategyKind::ConsistentHash)
        };
        let sel = Selector::new(&settings, &specs(&names), &StatsRegistry::new()).unwrap();
        let mut loads = vec![0u64; n];
        let mut guards = Vec::new();
        for (t, &key) in keys.iter().enumerate() {
            let i = sel.select_with(&RequestKey::from_hash(key), |_, _| true).unwrap();
            guards.push(sel.start(i));
            loads[i] += 1;
            let cap = ((1.0 + load_factor) * (t + 1) as f64 / n as f64).ceil() as u64;
            prop_assert!(loads.iter().all(|&l| l <= cap), "cap {cap}: {loads:?}");
        }
    }

    /// With requests also finishing, each backend a request is sent to stays within the
    /// bound at that moment.
    #[test]
    fn bounded_load_holds_as_requests_finish(
        n in 2usize..=10,
        ops in prop::collection::vec((any::<bool>(), prop_oneof![4 => Just(7u64), 1 => any::<u64>()], any::<prop::sample::Index>()), 1..300),
    ) {
        let names = named(n);
        let sel = Selector::new(&settings(StrategyKind::ConsistentHash), &specs(&names), &StatsRegistry::new()).unwrap();
        let mut guards = Vec::new();
        for (finish, key, which) in ops {
            if finish && !guards.is_empty() {
                drop(guards.swap_remove(which.index(guards.len())));
                continue;
            }
            let i = sel.select_with(&RequestKey::from_hash(key), |_, _| true).unwrap();
            guards.push(sel.start(i));
            let total = guards.len();
            let load = guards.iter().filter(|g| g.index() == i).count();
            let cap = (1.25 * total as f64 / n as f64).ceil() as usize;
            prop_assert!(load <= cap, "sent to {i} at {load} > cap {cap}");
        }
    }

    /// Fed the latencies of backends with fixed delays, LeastLatency settles on the
    /// fastest, and comes back to it after it was slow for a while and recovered.
    #[test]
    fn least_latency_converges_to_the_fastest(
        fastest_ms in 5u64..200,
        ratios in prop::collection::vec(1.3f64..6.0, 1..=5),
        position in any::<prop::sample::Index>(),
        seed in any::<u64>(),
    ) {
        let mut delays: Vec<f64> = ratios.iter().map(|r| fastest_ms as f64 * r).collect();
        let fastest = position.index(delays.len() + 1);
        delays.insert(fastest, fastest_ms as f64);
        let names = named(delays.len());
        let settings = StrategySettings {
            least_latency: LeastLatencySettings::default(),
            ..settings(StrategyKind::LeastLatency)
        };
        let sel = Selector::new(&settings, &specs(&names), &StatsRegistry::new()).unwrap();
        // +-10% jitter from a small deterministic generator.
        let mut state = seed | 1;
        let mut jitter = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            0.9 + 0.2 * (state % 1000) as f64 / 1000.0
        };
        // Requests one after another on a simulated clock: no sleeping.
        let clock = std::cell::Cell::new(Instant::now());
        let mut run = |requests: usize, delays: &[f64]| {
            let mut counts: HashMap<usize, usize> = HashMap::new();
            for _ in 0..requests {
                let i = sel.select_with(&RequestKey::NONE, |_, _| true).unwrap();
                *counts.entry(i).or_default() += 1;
                let latency = Duration::from_secs_f64(delays[i] * jitter() / 1000.0);
                clock.set(clock.get() + latency);
                let mut guard = sel.start(i);
                guard.record_latency_at(latency, clock.get());
                guard.success();
            }
            counts
        };
        run(300, &delays);
        let settled = run(500, &delays);
        // Exploration sends 5% to the other backends; the rest go to the fastest.
        prop_assert!(settled.get(&fastest).copied().unwrap_or(0) >= 430, "{settled:?}");

        let mut slow = delays.clone();
        slow[fastest] *= 20.0;
        let degraded = run(500, &slow);
        prop_assert!(degraded.get(&fastest).copied().unwrap_or(0) <= 100, "{degraded:?}");
        // Recovery takes a few decay periods (10s each) of simulated time for the slow
        // samples to fade, and a few dozen fresh ones from exploration (5% of requests,
        // spread over the other backends).
        let until = clock.get() + Duration::from_secs(60);
        run(3000, &delays);
        while clock.get() < until {
            run(50, &delays);
        }
        let recovered = run(500, &delays);
        prop_assert!(recovered.get(&fastest).copied().unwrap_or(0) >= 430, "{recovered:?}");
    }
}
