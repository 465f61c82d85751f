// cargo run -p switchyard-strategy --example balancer
//! A tiny custom balancer embedding `switchyard-strategy`: three simulated backends
//! (one fast, one slow, one that goes down for a while), a health filter, retries on
//! the next candidate, latency fed back, and a hot reload that changes the strategy
//! without losing statistics.

#![allow(clippy::print_stdout, clippy::expect_used)] // reason: a demo program printing its results

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use switchyard_strategy::{BackendSpec, Balancer, RequestKey, StrategyKind, StrategySettings};

/// A pretend upstream: a fixed latency, and up or down.
struct Upstream {
    latency: Duration,
    up: bool,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let backends = vec![
        BackendSpec::new("fast", "http://10.0.0.1:8000"),
        BackendSpec::new("slow", "http://10.0.0.2:8000"),
        BackendSpec::new("flaky", "http://10.0.0.3:8000"),
    ];
    let mut upstreams = vec![
        Upstream { latency: Duration::from_millis(40), up: true },
        Upstream { latency: Duration::from_millis(160), up: true },
        Upstream { latency: Duration::from_millis(80), up: true },
    ];

    // The seed's routing section, as a config file would give it.
    let settings: StrategySettings = serde_json::from_str(
        r#"{"strategy": "WeightedRoundRobin", "fallback_strategy": "RoundRobin",
            "weights": {"http://10.0.0.1:8000": 3, "slow": 1, "flaky": 2}}"#,
    )?;
    let balancer = Balancer::new(&settings, &backends)?;
    // A simulated clock, so the demo runs instantly.
    let mut now = Instant::now();

    // The health view a real router keeps (active checks, circuit breakers); here a
    // backend is marked down when a request to it fails.
    let mut healthy = vec![true; backends.len()];
    let mut serve = |balancer: &Balancer,
                     upstreams: &[Upstream],
                     healthy: &mut Vec<bool>,
                     requests: usize,
                     label: &str| {
        let mut served: BTreeMap<String, usize> = BTreeMap::new();
        let mut failed_over = 0;
        for i in 0..requests {
            // One selector for all attempts of a request, even across a reload.
            let selector = balancer.selector();
            let key = RequestKey::from_str(&format!("user-{}", i % 7));
            let mut tried = Vec::new();
            while let Some(index) =
                selector.select_with(&key, |i, _| healthy[i] && !tried.contains(&i))
            {
                let mut guard = selector.start(index);
                let upstream = &upstreams[index];
                if !upstream.up {
                    guard.failure();
                    healthy[index] = false;
                    tried.push(index);
                    failed_over += 1;
                    continue;
                }
                now += upstream.latency / 10;
                guard.record_latency_at(upstream.latency, now);
                guard.success();
                *served.entry(name(&selector, index)).or_default() += 1;
                break;
            }
        }
        println!("{label:<34} {served:?} (failed over {failed_over})");
    };

    serve(&balancer, &upstreams, &mut healthy, 60, "WeightedRoundRobin 3:1:2");

    upstreams[2].up = false;
    serve(&balancer, &upstreams, &mut healthy, 60, "WeightedRoundRobin, flaky down");
    upstreams[2].up = true;
    healthy[2] = true; // a health check saw it come back

    for strategy in [
        StrategyKind::LeastLatency,
        StrategyKind::ConsistentHash,
        StrategyKind::PowerOfTwoChoices,
        StrategyKind::LeastConnections,
        StrategyKind::Random,
    ] {
        // Hot reload: a new selector over the same statistics.
        balancer.reload(&StrategySettings { strategy, ..settings.clone() }, &backends)?;
        serve(&balancer, &upstreams, &mut healthy, 200, &format!("{strategy} after reload"));
    }

    println!("\nwhat /admin/backends would show:");
    for b in balancer.snapshot() {
        println!(
            "  {:<6} weight {} in_flight {} ewma {:>6.1?} requests {:>4} errors {:>3}",
            b.id.as_str(),
            b.weight,
            b.in_flight,
            b.ewma_latency.unwrap_or_default(),
            b.requests,
            b.errors
        );
    }
    Ok(())
}

fn name(selector: &switchyard_strategy::Selector, index: usize) -> String {
    selector.backend(index).expect("index from this selector").id.to_string()
}
