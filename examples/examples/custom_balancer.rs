// cargo run -p switchyard-examples --example custom_balancer
//! A load balancer of its own built on `switchyard-strategy` and `switchyard-health`.
//!
//! The "hosts" are tiny TCP servers on 127.0.0.1 speaking a one-line protocol (send a
//! line, get it back upper-cased, after a per-host delay); one of them is down (its
//! port refuses connections). The balancer reads its strategy and circuit-breaker
//! settings from a YAML string, asks the strategy for candidates in preference order,
//! skips hosts the health registry has ejected, retries on the next candidate when a
//! connection fails, and feeds every latency and outcome back into both crates. Then it
//! hot-reloads the strategy (LeastLatency to ConsistentHash) without losing statistics.
//!
//! Nothing here is HTTP or LLM-specific: the two crates decide, the program does I/O.
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "an example program prints what it does; errors go to stderr"
)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde::Deserialize;
use switchyard_core::BackendId;
use switchyard_health::{FailureKind, HealthRegistry, HealthSettings, Outcome};
use switchyard_strategy::{BackendSpec, Balancer, RequestKey, StrategySettings};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// The balancer's configuration: the routing keys of `switchyard-strategy` and the
/// passive health keys of `switchyard-health`, in one YAML document.
const CONFIG: &str = r#"
routing:
  strategy: LeastLatency
  fallback_strategy: RoundRobin
  least_latency: { decay: 2s, exploration: 0.05 }
health:
  checks: { enabled: false }      # passive only: requests decide
  breaker: { consecutive_failures: 2, base_open: 30s }
"#;

/// How long one attempt may take (connect, send, answer).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BalancerConfig {
    routing: StrategySettings,
    health: HealthSettings,
}

/// A strategy and a health view over a fixed set of hosts.
struct LineBalancer {
    balancer: Balancer,
    health: HealthRegistry,
    hosts: Vec<BackendSpec>,
    /// `hosts[i]`'s socket address, parsed once.
    addrs: Vec<SocketAddr>,
}

/// One answered request.
#[derive(Debug)]
struct Reply {
    host: BackendId,
    text: String,
    /// Attempts it took, the successful one included.
    attempts: usize,
}

/// Why a request got no answer.
#[derive(Debug)]
enum CallError {
    /// Every host was tried or is ejected.
    NoHost { attempts: usize },
}

/// A fake upstream host; aborting the task closes its port.
struct Host {
    addr: SocketAddr,
    task: Option<JoinHandle<()>>,
}

impl LineBalancer {
    fn new(config: &BalancerConfig, hosts: &[(&str, SocketAddr)]) -> Result<Self, String> {
        let specs: Vec<BackendSpec> =
            hosts.iter().map(|(name, addr)| BackendSpec::new(name, &addr.to_string())).collect();
        let balancer = Balancer::new(&config.routing, &specs).map_err(|e| e.to_string())?;
        let health = HealthRegistry::new(&config.health, specs.iter().map(|s| s.id.clone()))
            .map_err(|e| e.to_string())?;
        let addrs = hosts.iter().map(|(_, addr)| *addr).collect();
        Ok(LineBalancer { balancer, health, hosts: specs, addrs })
    }

    /// Send `line` to the best available host, then the next, until one answers.
    async fn call(&self, key: &RequestKey, line: &str) -> Result<Reply, CallError> {
        // One selector for every attempt of this request, even across a reload.
        let selector = self.balancer.selector();
        let mut tried = Vec::new();
        while let Some(index) =
            selector.select_with(key, |i, b| !tried.contains(&i) && self.health.is_available(&b.id))
        {
            tried.push(index);
            let id = &self.hosts[index].id;
            // Admission can still refuse (a half-open circuit whose probe is out).
            let Some(admission) = self.health.admit(id) else { continue };
            let mut guard = selector.start(index);
            let started = Instant::now();
            let result = tokio::time::timeout(ATTEMPT_TIMEOUT, exchange(self.addrs[index], line))
                .await
                .unwrap_or_else(|_| Err(std::io::Error::other("timed out")));
            let elapsed = started.elapsed();
            match result {
                Ok(text) => {
                    guard.record_latency(elapsed);
                    guard.success();
                    admission.record(Outcome::Success, elapsed);
                    return Ok(Reply { host: id.clone(), text, attempts: tried.len() });
                }
                Err(_) => {
                    guard.failure();
                    admission.record(Outcome::Failure(FailureKind::Connect), elapsed);
                }
            }
        }
        Err(CallError::NoHost { attempts: tried.len() })
    }

    /// Swap the strategy; statistics and health carry over.
    fn reload(&self, routing: &StrategySettings) -> Result<(), String> {
        self.balancer.reload(routing, &self.hosts).map_err(|e| e.to_string())
    }
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::NoHost { attempts } => {
                write!(f, "no host answered ({attempts} attempts; the others are ejected)")
            }
        }
    }
}

impl Host {
    /// A host that answers after `delay`.
    async fn start(name: &'static str, delay: Duration) -> std::io::Result<Host> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve_line(stream, name, delay));
            }
        });
        Ok(Host { addr, task: Some(task) })
    }

    /// A host that is down: a port that was just freed, so connecting is refused.
    async fn down() -> std::io::Result<Host> {
        let addr = TcpListener::bind("127.0.0.1:0").await?.local_addr()?;
        Ok(Host { addr, task: None })
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// One request on a fresh connection: write the line, read the answer line.
async fn exchange(addr: SocketAddr, line: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    stream.write_all(format!("{line}\n").as_bytes()).await?;
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer).await?;
    if answer.is_empty() {
        return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "no answer"));
    }
    Ok(answer.trim_end().to_owned())
}

async fn serve_line(stream: TcpStream, name: &'static str, delay: Duration) {
    let mut stream = BufReader::new(stream);
    let mut line = String::new();
    if stream.read_line(&mut line).await.is_err() {
        return;
    }
    tokio::time::sleep(delay).await;
    let answer = format!("{name}: {}\n", line.trim_end().to_uppercase());
    let _ = stream.get_mut().write_all(answer.as_bytes()).await;
}

fn parse_config(yaml: &str) -> Result<BalancerConfig, String> {
    let config: BalancerConfig = serde_yaml::from_str(yaml).map_err(|e| e.to_string())?;
    config.routing.validate().map_err(|e| e.to_string())?;
    Ok(config)
}

async fn run() -> Result<(), String> {
    let config = parse_config(CONFIG)?;
    let io = |e: std::io::Error| e.to_string();
    let fast = Host::start("fast", Duration::from_millis(2)).await.map_err(io)?;
    let slow = Host::start("slow", Duration::from_millis(30)).await.map_err(io)?;
    let dead = Host::down().await.map_err(io)?;
    let lb = LineBalancer::new(
        &config,
        &[("fast", fast.addr), ("slow", slow.addr), ("dead", dead.addr)],
    )?;
    println!(
        "strategy {}: fast {}, slow {}, dead {}",
        config.routing.strategy, fast.addr, slow.addr, dead.addr
    );

    let mut served: BTreeMap<String, usize> = BTreeMap::new();
    let mut retried = 0;
    for i in 0..40 {
        let reply =
            lb.call(&RequestKey::NONE, &format!("hello {i}")).await.map_err(|e| e.to_string())?;
        retried += reply.attempts - 1;
        if i == 0 {
            println!("first answer: {:?} from {}", reply.text, reply.host);
        }
        *served.entry(reply.host.to_string()).or_default() += 1;
    }
    println!("LeastLatency: {served:?}, {retried} retries after connection failures");

    // Hot reload: sessions stick to a host now; statistics and health carry over.
    let routing = StrategySettings {
        strategy: switchyard_strategy::StrategyKind::ConsistentHash,
        ..config.routing.clone()
    };
    lb.reload(&routing)?;
    for user in ["alice", "bob", "carol", "dave", "erin", "frank"] {
        let key = RequestKey::from_str(user);
        let mut hosts = Vec::new();
        for _ in 0..3 {
            let reply = lb.call(&key, user).await.map_err(|e| e.to_string())?;
            hosts.push(reply.host.to_string());
        }
        println!("ConsistentHash: {user} -> {hosts:?}");
    }

    println!("\nstatistics (what /admin/backends shows for the router):");
    for b in lb.balancer.snapshot() {
        println!(
            "  {:<5} requests {:>3} errors {} ewma {:?}",
            b.id.as_str(),
            b.requests,
            b.errors,
            b.ewma_latency.unwrap_or_default()
        );
    }
    println!("health (what /admin/health shows):");
    for b in lb.health.snapshot().backends {
        println!("  {:<5} available {:<5} circuit {:?}", b.backend, b.available, b.circuit);
    }
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("custom_balancer: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn fleet(yaml: &str) -> (LineBalancer, Host, Host, Host) {
        let config = parse_config(yaml).unwrap();
        let fast = Host::start("fast", Duration::from_millis(1)).await.unwrap();
        let slow = Host::start("slow", Duration::from_millis(60)).await.unwrap();
        let dead = Host::down().await.unwrap();
        let lb = LineBalancer::new(
            &config,
            &[("fast", fast.addr), ("slow", slow.addr), ("dead", dead.addr)],
        )
        .unwrap();
        (lb, fast, slow, dead)
    }

    #[tokio::test]
    async fn the_example_program_runs() {
        run().await.unwrap();
    }

    #[tokio::test]
    async fn a_dead_host_is_ejected_and_every_request_is_answered() {
        let (lb, _fast, _slow, _dead) = fleet(CONFIG).await;
        let dead = BackendId::new("dead");
        let mut attempts = 0;
        for i in 0..30 {
            let reply = lb.call(&RequestKey::NONE, &format!("ping {i}")).await.unwrap();
            assert_ne!(reply.host, dead);
            assert!(reply.text.ends_with(&format!("PING {i}")), "{}", reply.text);
            attempts += reply.attempts;
        }
        // Two consecutive failures open the circuit; it stays open for 30 s.
        assert!(!lb.health.is_available(&dead));
        assert_eq!(attempts - 30, 2, "exactly two retries: the two failures that ejected it");
        let stats = lb.balancer.stats().get(&dead).unwrap();
        assert_eq!((stats.requests, stats.errors), (2, 2));
    }

    #[tokio::test]
    async fn least_latency_learns_to_prefer_the_fast_host() {
        let (lb, _fast, _slow, _dead) = fleet(CONFIG).await; // the hosts live as long as these bindings
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for i in 0..40 {
            let reply = lb.call(&RequestKey::NONE, &format!("q{i}")).await.unwrap();
            *counts.entry(reply.host.to_string()).or_default() += 1;
        }
        let fast = counts.get("fast").copied().unwrap_or(0);
        let slow = counts.get("slow").copied().unwrap_or(0);
        assert_eq!(fast + slow, 40, "{counts:?}");
        assert!(fast > 3 * slow, "the fast host should take most requests: {counts:?}");
        let snapshot = lb.balancer.stats().get(&BackendId::new("fast")).unwrap();
        assert!(snapshot.ewma_latency.is_some());
    }

    #[tokio::test]
    async fn consistent_hash_after_a_reload_keeps_sessions_on_one_host() {
        let (lb, _fast, _slow, _dead) = fleet(CONFIG).await; // the hosts live as long as these bindings
        let before = lb.balancer.stats().snapshot();
        let routing = StrategySettings {
            strategy: switchyard_strategy::StrategyKind::ConsistentHash,
            ..parse_config(CONFIG).unwrap().routing
        };
        lb.reload(&routing).unwrap();
        let mut seen = std::collections::BTreeSet::new();
        for user in 0..24 {
            let key = RequestKey::from_str(&format!("user-{user}"));
            let first = lb.call(&key, "a").await.unwrap().host;
            for _ in 0..3 {
                assert_eq!(lb.call(&key, "b").await.unwrap().host, first);
            }
            seen.insert(first);
        }
        assert!(seen.len() >= 2, "24 sessions should spread over both live hosts: {seen:?}");
        assert_eq!(before.len(), lb.balancer.stats().snapshot().len());
    }

    #[tokio::test]
    async fn when_every_host_is_down_the_error_says_so() {
        let config = parse_config(CONFIG).unwrap();
        let (a, b) = (Host::down().await.unwrap(), Host::down().await.unwrap());
        let lb = LineBalancer::new(&config, &[("a", a.addr), ("b", b.addr)]).unwrap();
        let err = lb.call(&RequestKey::NONE, "x").await.unwrap_err();
        assert!(matches!(err, CallError::NoHost { attempts: 2 }));
        assert!(err.to_string().contains("no host answered"));
    }

    #[test]
    fn a_bad_config_is_reported_not_panicked_on() {
        let err = parse_config("routing: { strategy: Fastest }\nhealth: {}").unwrap_err();
        assert!(err.contains("Fastest"), "{err}");
        let err = parse_config("routing: {}\nhealth: { breaker: { typo: 1 } }").unwrap_err();
        assert!(err.contains("typo"), "{err}");
    }
}
