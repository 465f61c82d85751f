//! Backend selection for Switchyard, an LLM router: which backend should serve this
//! request, and which next if that one fails.
//!
//! # What it owns
//!
//! - The strategies: [`StrategyKind::RoundRobin`], [`WeightedRoundRobin`] (nginx's
//!   smooth algorithm: 3:1 interleaves), [`LeastLatency`] (EWMA x load, with a little
//!   exploration), [`Random`], [`ConsistentHash`] (a ring with virtual nodes and bounded
//!   load), [`LeastConnections`] and [`PowerOfTwoChoices`]; the fallback strategy that
//!   orders candidates when the configured one cannot decide.
//! - [`StrategySettings`]: the `routing` keys they read, with documented defaults.
//! - [`RequestKey`]: what consistent hashing routes by (session header, OpenAI `user`,
//!   prompt-prefix hash, in that order).
//! - The statistics the strategies read and callers write: in-flight, request and error
//!   counts per backend, latency per backend and model ([`StatsRegistry`], [`InFlight`]),
//!   and their [`BackendSnapshot`] for `/admin/backends`.
//!
//! # What it does not do
//!
//! No I/O, no runtime, no health checks, no metrics export: the caller measures
//! latency, knows which backends are healthy and which serve the model, and passes that
//! in. The only outside state read is the monotonic clock, to age the averages when a
//! result is recorded (callers that have the time pass it instead).
//!
//! # Why it is shaped this way
//!
//! After pingora's load-balancing crate: a [`Selector`] is built once from an immutable
//! set of backends and returns *candidates in preference order*; the caller filters
//! them with an `accept` closure (health, circuit, model, already tried) and takes the
//! first it accepts, the next on retry. Every strategy yields every backend exactly
//! once, so a healthy backend is always found when one exists, whatever the strategy.
//! Selectors are rebuilt on reload and swapped atomically ([`Balancer`], or the
//! caller's own `ArcSwap`); the statistics live in a [`StatsRegistry`] that outlives
//! them, so in-flight counts survive a reload. Selection reads atomics only: it never
//! locks and allocates nothing for up to 256 backends.
//!
//! [`WeightedRoundRobin`]: StrategyKind::WeightedRoundRobin
//! [`LeastLatency`]: StrategyKind::LeastLatency
//! [`Random`]: StrategyKind::Random
//! [`ConsistentHash`]: StrategyKind::ConsistentHash
//! [`LeastConnections`]: StrategyKind::LeastConnections
//! [`PowerOfTwoChoices`]: StrategyKind::PowerOfTwoChoices
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use switchyard_strategy::{Balancer, BackendSpec, RequestKey, StrategySettings};
//!
//! // The seed's routing section: weights keyed by URL.
//! let settings: StrategySettings = serde_json::from_str(
//!     r#"{"strategy": "WeightedRoundRobin", "weights": {"http://backend1:11434": 3}}"#,
//! )?;
//! let backends = [
//!     BackendSpec::new("backend1", "http://backend1:11434"),
//!     BackendSpec::new("backend2", "http://backend2:11434"),
//! ];
//! let balancer = Balancer::new(&settings, &backends)?;
//!
//! // Per request: one selector for all attempts, unhealthy backends filtered out.
//! let selector = balancer.selector();
//! let healthy = |_: usize, b: &BackendSpec| b.id.as_str() != "backend2";
//! let picked = selector.select_with(&RequestKey::NONE, healthy).expect("a healthy backend");
//! assert_eq!(selector.backend(picked).unwrap().id.as_str(), "backend1");
//!
//! let mut guard = selector.start(picked); // in flight until finished or dropped
//! guard.record_latency(Duration::from_millis(120)); // when the response head arrives
//! guard.success(); // when the body (or stream) is done
//!
//! // Smooth weighted round-robin: 3:1 interleaves rather than bursts.
//! let names: String = (0..4)
//!     .map(|_| {
//!         let i = selector.select_with(&RequestKey::NONE, |_, _| true).unwrap();
//!         if i == 0 { 'a' } else { 'b' }
//!     })
//!     .collect();
//! assert_eq!(names, "abaa"); // the cycle is a a b a; the first request took the first a
//! assert_eq!(balancer.snapshot()[0].requests, 1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod balancer;
mod candidates;
mod error;
mod key;
mod rng;
mod selector;
mod settings;
mod stats;

pub use balancer::Balancer;
pub use candidates::Candidates;
pub use error::{Error, Result};
pub use key::RequestKey;
pub use selector::{BackendSpec, Selector};
pub use settings::{ConsistentHashSettings, LeastLatencySettings, StrategyKind, StrategySettings};
pub use stats::{BackendSnapshot, InFlight, ModelSnapshot, StatsRegistry};
