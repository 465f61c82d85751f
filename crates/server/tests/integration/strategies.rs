//! Each load-balancing strategy, through the running router with three mock upstreams:
//! the distribution the mocks record matches the strategy's definition.

use std::sync::Arc;

use serde_json::json;
use switchyard_server::ServerSettings;
use switchyard_strategy::StrategyKind;
use switchyard_test_support::{MockUpstream, Script, ms};

use crate::util::{self, Router, chat, openai, spec};

const CHAT: &str = "/v1/chat/completions";

struct Fleet {
    mocks: Vec<MockUpstream>,
    router: Arc<Router>,
}

impl Fleet {
    async fn start(strategy: StrategyKind, scripts: [Script; 3], weights: [u32; 3]) -> Fleet {
        let mut mocks = Vec::new();
        for script in scripts {
            mocks.push(MockUpstream::start(script).await.unwrap());
        }
        let mut backends = Vec::new();
        for (i, mock) in mocks.iter().enumerate() {
            let mut backend = openai(&format!("b{i}"), &mock.url(), &["m"]);
            backend.weight = weights[i];
            backends.push(backend);
        }
        let mut settings: ServerSettings = util::settings();
        settings.routing.strategy = strategy;
        let router = Arc::new(Router::start_with(spec(backends), settings).await);
        Fleet { mocks, router }
    }

    fn counts(&self) -> Vec<usize> {
        self.mocks.iter().map(|m| m.request_count_for(CHAT)).collect()
    }

    async fn sequential(&self, n: usize) {
        for _ in 0..n {
            assert_eq!(self.router.post(CHAT, &chat("m", false)).await.status, 200);
        }
    }

    async fn concurrent(&self, n: usize) {
        let tasks: Vec<_> = (0..n)
            .map(|_| {
                let router = self.router.clone();
                tokio::spawn(async move { router.post(CHAT, &chat("m", false)).await.status })
            })
            .collect();
        for task in tasks {
            assert_eq!(task.await.unwrap(), 200);
        }
    }
}

fn ok() -> Script {
    Script::ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_takes_turns() {
    let fleet = Fleet::start(StrategyKind::RoundRobin, [ok(), ok(), ok()], [1, 1, 1]).await;
    fleet.sequential(30).await;
    assert_eq!(fleet.counts(), [10, 10, 10]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_round_robin_gives_each_its_share_interleaved() {
    let fleet = Fleet::start(StrategyKind::WeightedRoundRobin, [ok(), ok(), ok()], [3, 2, 1]).await;
    fleet.sequential(6).await;
    // One cycle: exact shares, and smooth (no backend twice in a row at the start).
    assert_eq!(fleet.counts(), [3, 2, 1]);
    fleet.sequential(54).await;
    assert_eq!(fleet.counts(), [30, 20, 10]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_spreads_roughly_evenly() {
    let fleet = Fleet::start(StrategyKind::Random, [ok(), ok(), ok()], [1, 1, 1]).await;
    fleet.sequential(300).await;
    for count in fleet.counts() {
        // Expected 100, standard deviation about 8.
        assert!((60..=140).contains(&count), "{:?}", fleet.counts());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_latency_converges_to_the_fastest_backend() {
    let fleet = Fleet::start(
        StrategyKind::LeastLatency,
        [ok().delay(ms(40)), ok().delay(ms(2)), ok().delay(ms(20))],
        [1, 1, 1],
    )
    .await;
    fleet.sequential(10).await;
    let before = fleet.counts();
    fleet.sequential(60).await;
    let after = fleet.counts();
    let fastest = after[1] - before[1];
    assert!(fastest >= 48, "the fastest got {fastest} of 60: {after:?}");
    let stats = fleet.router.get("/admin/backends").await.json();
    let latency = |i: usize| stats["backends"][i]["stats"]["ewma_latency_ms"].as_f64().unwrap();
    assert!(latency(1) < latency(2) && latency(2) < latency(0), "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_keeps_a_session_on_one_backend() {
    let fleet = Fleet::start(StrategyKind::ConsistentHash, [ok(), ok(), ok()], [1, 1, 1]).await;
    let body = serde_json::to_vec(&chat("m", false)).unwrap();
    for _ in 0..10 {
        let reply = fleet.router.post_raw(CHAT, body.clone(), &[("x-session-id", "alice")]).await;
        assert_eq!(reply.status, 200);
    }
    let counts = fleet.counts();
    assert!(counts.contains(&10), "one session spread over backends: {counts:?}");
    // Many sessions spread over the fleet, and the OpenAI `user` field works as a key.
    for user in 0..60 {
        let mut request = chat("m", false);
        request["user"] = json!(format!("user-{user}"));
        fleet.router.post(CHAT, &request).await;
    }
    let spread = fleet.counts();
    assert!(spread.iter().zip(&counts).all(|(after, before)| after > before), "{spread:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_connections_balances_in_flight_requests() {
    let slow = || ok().delay(ms(300));
    let fleet =
        Fleet::start(StrategyKind::LeastConnections, [slow(), slow(), slow()], [1, 1, 1]).await;
    fleet.concurrent(12).await;
    assert_eq!(fleet.counts(), [4, 4, 4]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_of_two_choices_avoids_piling_onto_one_backend() {
    let slow = || ok().delay(ms(300));
    let fleet =
        Fleet::start(StrategyKind::PowerOfTwoChoices, [slow(), slow(), slow()], [1, 1, 1]).await;
    fleet.concurrent(12).await;
    let counts = fleet.counts();
    assert_eq!(counts.iter().sum::<usize>(), 12);
    assert!(counts.iter().all(|&c| (2..=6).contains(&c)), "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_backends_shows_strategy_stats() {
    let fleet = Fleet::start(StrategyKind::RoundRobin, [ok(), ok(), ok()], [2, 1, 1]).await;
    // b2 passes its health checks but fails generation.
    fleet.mocks[2].set_probe_script(Some(ok()));
    fleet.mocks[2].set_script(Script::status(500));
    fleet.sequential(6).await;
    let json = fleet.router.get("/admin/backends").await.json();
    let b0 = &json["backends"][0];
    assert_eq!(b0["weight"], 2);
    assert_eq!(b0["stats"]["in_flight"], 0);
    assert!(b0["stats"]["requests"].as_u64().unwrap() >= 2, "{json}");
    assert!(b0["stats"]["ewma_latency_ms"].as_f64().is_some(), "{json}");
    assert!(json["backends"][2]["stats"]["errors"].as_u64().unwrap() >= 1, "{json}");
}
