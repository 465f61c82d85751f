//! Hot reload through the running router: the configuration file rewritten under load
//! (valid, invalid and half-written versions), the key file, the admin endpoint, and
//! what survives a reload.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use parking_lot::Mutex;
use serde_json::Value;
use switchyard_config::{Config, Environment, Overrides};
use switchyard_server::{ConfigLoader, Options};
use switchyard_test_support::{MockUpstream, Script, ms};

use crate::util::{Router, chat, parse_prometheus, recorder, sample};

const CHAT: &str = "/v1/chat/completions";
const CHUNKS: usize = 10;

fn loader(path: &Path) -> ConfigLoader {
    let file = path.to_path_buf();
    ConfigLoader::new(Some(file.clone()), move || {
        let overrides = Overrides { config_path: Some(file.clone()), ..Overrides::default() };
        Config::load_with(&overrides, &Environment::empty()).map(|(config, _)| config)
    })
}

async fn start(path: &Path) -> Router {
    let config = Config::load_with(
        &Overrides { config_path: Some(path.to_path_buf()), ..Overrides::default() },
        &Environment::empty(),
    )
    .unwrap()
    .0;
    let options = Options { reload: Some(loader(path)), metrics: Some(recorder()) };
    Router::from_config(config, options).await
}

fn backends(list: &[(&str, &MockUpstream)]) -> String {
    list.iter()
        .map(|(name, mock)| {
            format!("  - {{ name: {name}, url: \"{}\", models: [m] }}\n", mock.url())
        })
        .collect()
}

fn write(path: &Path, text: &str) {
    // Written in place on purpose (not renamed): the watcher must cope with partial files.
    std::fs::write(path, text).unwrap();
}

async fn admin_config(router: &Router) -> Value {
    router.get("/admin/config").await.json()
}

async fn wait_for(timeout: Duration, mut check: impl AsyncFnMut() -> bool) -> bool {
    let started = Instant::now();
    while started.elapsed() < timeout {
        if check().await {
            return true;
        }
        tokio::time::sleep(ms(25)).await;
    }
    false
}

/// Requests sent and everything that went wrong with them.
#[derive(Default)]
struct Load {
    sent: AtomicUsize,
    streams: AtomicUsize,
    failures: Mutex<Vec<String>>,
}

async fn run_load(url: String, load: Arc<Load>, stop: Arc<AtomicBool>, worker: usize) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut n = 0usize;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let stream = (n + worker).is_multiple_of(2);
        let body = serde_json::to_vec(&chat("m", stream)).unwrap();
        let request = Request::post(&url)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        load.sent.fetch_add(1, Ordering::Relaxed);
        let outcome = async {
            let response = client.request(request).await.map_err(|e| e.to_string())?;
            let status = response.status();
            let body = response.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
            let text = String::from_utf8_lossy(&body).into_owned();
            if status != 200 {
                return Err(format!("{status}: {text}"));
            }
            if stream {
                if !text.ends_with("data: [DONE]\n\n") || text.matches("chunk ").count() != CHUNKS {
                    return Err(format!("truncated stream: {text}"));
                }
                load.streams.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        }
        .await;
        if let Err(failure) = outcome {
            load.failures.lock().push(failure);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_rewritten_every_two_seconds_under_load_fails_no_request_and_truncates_no_stream() {
    let script = Script::ok().chunks(CHUNKS).chunk_delay(ms(40));
    let a = MockUpstream::start(script.clone()).await.unwrap();
    let b = MockUpstream::start(script.clone()).await.unwrap();
    let c = MockUpstream::start(script).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path: PathBuf = dir.path().join("switchyard.yaml");
    let header = "server: { bind_address: \"127.0.0.1:0\" }\nhealth_checks: { interval: 500ms, timeout: 300ms }\n";
    let base = format!("{header}backends:\n{}", backends(&[("a", &a), ("b", &b)]));
    write(&path, &base);
    let router = start(&path).await;

    let load = Arc::new(Load::default());
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..6)
        .map(|i| tokio::spawn(run_load(router.url(CHAT), load.clone(), stop.clone(), i)))
        .collect();

    let valid_with_c =
        format!("{header}backends:\n{}", backends(&[("a", &a), ("b", &b), ("c", &c)]));
    let versions: Vec<(&str, String)> = vec![
        (
            "weights",
            format!(
                "{base}routing: {{ strategy: WeightedRoundRobin, weights: {{ a: 3, b: 1 }} }}\n"
            ),
        ),
        ("invalid", format!("{base}routing: {{ stratgy: Random }}\n")),
        ("half-written", valid_with_c[..valid_with_c.len() - 20].to_owned()),
        ("add c", valid_with_c.clone()),
        ("remove a", format!("{header}backends:\n{}", backends(&[("b", &b), ("c", &c)]))),
        (
            "restart-only key",
            format!(
                "{}backends:\n{}",
                header.replace("127.0.0.1:0", "127.0.0.1:1"),
                backends(&[("a", &a), ("c", &c)])
            ),
        ),
    ];
    let mut seen = Vec::new();
    for (name, text) in &versions {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let attempts = admin_config(&router).await["reload"]["attempts"].as_u64().unwrap();
        write(&path, text);
        // The watcher debounces and applies (or rejects) the file within a moment.
        let expect = if matches!(*name, "invalid" | "half-written") { "failed" } else { "applied" };
        let ok = wait_for(Duration::from_secs(5), async || {
            let status = admin_config(&router).await;
            status["reload"]["attempts"].as_u64().unwrap() > attempts
                && status["reload"]["last_result"] == expect
        })
        .await;
        let status = admin_config(&router).await;
        assert!(ok, "{name}: {status}");
        seen.push((name.to_string(), status["reload"].clone()));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.unwrap();
    }

    let sent = load.sent.load(Ordering::Relaxed);
    {
        let failures = load.failures.lock();
        assert!(
            failures.is_empty(),
            "{} of {sent} requests failed: {:?}",
            failures.len(),
            &failures[..failures.len().min(5)]
        );
    }
    assert!(sent > 100 && load.streams.load(Ordering::Relaxed) > 50, "too little load: {sent}");

    // What was reported along the way.
    let invalid = &seen[1].1;
    assert!(invalid["last_error"].as_str().unwrap().contains("routing.stratgy"), "{invalid}");
    let half = &seen[2].1;
    assert!(half["last_error"].as_str().unwrap().contains("not valid YAML"), "{half}");
    let last = admin_config(&router).await;
    assert_eq!(last["reload"]["restart_required"], serde_json::json!(["server.bind_address"]));
    assert_eq!(last["config"]["server"]["bind_address"], "127.0.0.1:0", "kept its running value");
    assert_eq!(last["reload"]["generation"], 5, "4 applied after the first: {last}");
    let names: Vec<String> = router.get("/admin/backends").await.json()["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["a", "c"]);
    assert!(c.request_count_for(CHAT) > 0, "the added backend took traffic");
    let metrics = parse_prometheus(&router.get("/metrics").await.text());
    assert!(sample(&metrics, "switchyard_config_reloads_total", &[("result", "failed")]) >= 2.0);
    assert!(sample(&metrics, "switchyard_config_reloads_total", &[("result", "applied")]) >= 4.0);
    assert_eq!(sample(&metrics, "switchyard_config_restart_required", &[]), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_endpoint_and_the_key_file_reload_and_state_survives() {
    let mock = MockUpstream::start(Script::ok()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("switchyard.yaml");
    let keys = dir.path().join("keys.yaml");
    write(&keys, "- { key: \"sk-first\", name: first }\n");
    let config = |extra: &str| {
        format!(
            "server: {{ bind_address: \"127.0.0.1:0\" }}\nbackends:\n{}auth: {{ api_keys_file: \"{}\", admin_api_key: \"sk-admin\" }}\n{extra}",
            backends(&[("only", &mock)]),
            keys.display()
        )
    };
    write(&path, &config(""));
    let router = start(&path).await;
    let first = [("authorization", "Bearer sk-first")];
    let admin = [("x-api-key", "sk-admin")];
    for _ in 0..3 {
        assert_eq!(router.post_with(CHAT, &chat("m", false), &first).await.status, 200);
    }

    // A new key file applies by itself.
    write(&keys, "- { key: \"sk-second\", name: second }\n");
    let second = [("authorization", "Bearer sk-second")];
    let applied = wait_for(Duration::from_secs(5), async || {
        router.post_with(CHAT, &chat("m", false), &second).await.status == 200
    })
    .await;
    assert!(applied, "{}", router.get_with("/admin/config", &admin).await.text());
    router.post_with(CHAT, &chat("m", false), &first).await.assert_error(401, "invalid_api_key");

    // Strategy statistics carried over: the count goes on from before the reload.
    let backends = router.get_with("/admin/backends", &admin).await.json();
    assert!(backends["backends"][0]["stats"]["requests"].as_u64().unwrap() >= 4, "{backends}");
    assert_eq!(backends["backends"][0]["health"]["state"], "healthy");

    // The admin endpoint: an invalid file is refused with the reason, and kept out.
    write(&path, &config("request: { max_retries: lots }\n"));
    let refused = router.post_with("/admin/config/reload", &Value::Null, &admin).await;
    refused.assert_error(400, "invalid_request");
    assert!(refused.text().contains("request.max_retries"), "{}", refused.text());
    assert_eq!(router.post_with(CHAT, &chat("m", false), &second).await.status, 200);
    write(&path, &config("request: { max_retries: 0 }\n"));
    let applied = router.post_with("/admin/config/reload", &Value::Null, &admin).await;
    assert_eq!(applied.status, 200, "{}", applied.text());
    let outcome = applied.json();
    assert!(["applied", "unchanged"].contains(&outcome["result"].as_str().unwrap()), "{outcome}");
    let status = router.get_with("/admin/config", &admin).await.json();
    assert_eq!(status["config"]["request"]["max_retries"], 0);
    assert_eq!(status["api_keys"][0]["name"], "second");
    assert!(!status.to_string().contains("sk-second") && !status.to_string().contains("sk-admin"));
    // Reload needs the admin key like every admin endpoint.
    router.post("/admin/config/reload", &Value::Null).await.assert_error(401, "invalid_api_key");
}
