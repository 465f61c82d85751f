//! De-duplication, the response cache, Redis for fleets and the model-list cache,
//! through the running router.

use std::sync::Arc;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::json;
use switchyard_server::ServerSettings;
use switchyard_test_support::{MockUpstream, Script, ms};

use crate::util::{self, Redis, Router, openai, spec};

const CHAT: &str = "/v1/chat/completions";

fn greedy(stream: bool) -> serde_json::Value {
    json!({
        "model": "m",
        "stream": stream,
        "temperature": 0,
        "messages": [{"role": "user", "content": "What is the capital of France?"}]
    })
}

/// An HTTP/2 (h2c) client: a thousand concurrent requests on one connection.
fn h2_client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).http2_only(true).build_http()
}

async fn post(
    client: &Client<HttpConnector, Full<Bytes>>,
    url: &str,
    body: &serde_json::Value,
    headers: &[(&str, &str)],
) -> (u16, http::HeaderMap, Bytes) {
    let mut request = Request::post(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(serde_json::to_vec(body).unwrap())))
        .unwrap();
    for (name, value) in headers {
        request
            .headers_mut()
            .insert(http::HeaderName::from_bytes(name.as_bytes()).unwrap(), value.parse().unwrap());
    }
    let response = client.request(request).await.unwrap();
    let (parts, body) = response.into_parts();
    (parts.status.as_u16(), parts.headers, body.collect().await.unwrap().to_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_identical_requests_make_one_upstream_call() {
    let mock = MockUpstream::start(Script::ok().delay(ms(300))).await.unwrap();
    let router = Router::start(spec(vec![openai("a", &mock.url(), &["m"])])).await;
    let client = h2_client();
    let url = router.url(CHAT);
    let tasks: Vec<_> = (0..1000)
        .map(|_| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move { post(&client, &url, &greedy(false), &[]).await })
        })
        .collect();
    let mut bodies = Vec::new();
    let mut roles = std::collections::HashMap::<String, usize>::new();
    for task in tasks {
        let (status, headers, body) = task.await.unwrap();
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        *roles
            .entry(headers["x-switchyard-cache-status"].to_str().unwrap().to_owned())
            .or_default() += 1;
        bodies.push(body);
    }
    assert_eq!(mock.request_count_for(CHAT), 1, "{roles:?}");
    assert!(bodies.iter().all(|b| *b == bodies[0]), "bodies differ");
    assert_eq!(roles.get("miss"), Some(&1), "{roles:?}");
    // Within the ttl an identical request gets the stored answer.
    let (_, headers, body) = post(&client, &url, &greedy(false), &[]).await;
    assert_eq!(headers["x-switchyard-cache-status"], "hit");
    assert_eq!(body, bodies[0]);
    assert_eq!(mock.request_count_for(CHAT), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_identical_streams_share_one_upstream_stream() {
    let mock = MockUpstream::start(Script::ok().chunks(20).chunk_delay(ms(10))).await.unwrap();
    let router = Router::start(spec(vec![openai("a", &mock.url(), &["m"])])).await;
    let client = h2_client();
    let url = router.url(CHAT);
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move {
                // Late joiners arrive while the stream runs and are replayed from the start.
                tokio::time::sleep(ms((i % 10) * 8)).await;
                post(&client, &url, &greedy(true), &[]).await
            })
        })
        .collect();
    let mut bodies = Vec::new();
    for task in tasks {
        let (status, headers, body) = task.await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(headers["content-type"], "text/event-stream");
        bodies.push(body);
    }
    assert_eq!(mock.request_count_for(CHAT), 1);
    let first = String::from_utf8(bodies[0].to_vec()).unwrap();
    assert_eq!(first.matches("chunk ").count(), 20, "{first}");
    assert!(first.ends_with("data: [DONE]\n\n"));
    assert!(bodies.iter().all(|b| *b == bodies[0]), "streams differ");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_hanging_up_does_not_fail_the_followers() {
    let mock = MockUpstream::start(Script::ok().chunks(10).chunk_delay(ms(30))).await.unwrap();
    let router = Router::start(spec(vec![openai("a", &mock.url(), &["m"])])).await;
    let client = h2_client();
    let url = router.url(CHAT);
    let leader = {
        let (client, url) = (client.clone(), url.clone());
        tokio::spawn(async move { post(&client, &url, &greedy(true), &[]).await })
    };
    tokio::time::sleep(ms(20)).await;
    let followers: Vec<_> = (0..5)
        .map(|_| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move { post(&client, &url, &greedy(true), &[]).await })
        })
        .collect();
    tokio::time::sleep(ms(100)).await;
    leader.abort();
    for follower in followers {
        let (status, _, body) = follower.await.unwrap();
        assert_eq!(status, 200);
        let text = String::from_utf8(body.to_vec()).unwrap();
        assert_eq!(text.matches("chunk ").count(), 10, "{text}");
        assert!(text.ends_with("data: [DONE]\n\n"));
    }
    assert_eq!(mock.request_count_for(CHAT), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_sampling_is_not_shared_and_no_cache_bypasses() {
    let mock = MockUpstream::start(Script::ok().delay(ms(100))).await.unwrap();
    let router = Router::start(spec(vec![openai("a", &mock.url(), &["m"])])).await;
    let client = h2_client();
    let url = router.url(CHAT);
    let mut sampled = greedy(false);
    sampled["temperature"] = json!(0.8);
    let tasks: Vec<_> = (0..5)
        .map(|_| {
            let (client, url, body) = (client.clone(), url.clone(), sampled.clone());
            tokio::spawn(async move { post(&client, &url, &body, &[]).await })
        })
        .collect();
    for task in tasks {
        let (status, headers, _) = task.await.unwrap();
        assert_eq!(status, 200);
        assert!(headers.get("x-switchyard-cache-status").is_none());
    }
    assert_eq!(mock.request_count_for(CHAT), 5);
    // A deterministic request the client asks not to be shared goes upstream itself.
    post(&client, &url, &greedy(false), &[]).await;
    post(&client, &url, &greedy(false), &[("cache-control", "no-cache")]).await;
    assert_eq!(mock.request_count_for(CHAT), 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_shared_with_waiters_but_never_stored() {
    let mock =
        MockUpstream::start(Script::error(400, "bad tool schema").delay(ms(100))).await.unwrap();
    mock.set_probe_script(Some(Script::ok()));
    let router = Router::start(spec(vec![openai("a", &mock.url(), &["m"])])).await;
    let client = h2_client();
    let url = router.url(CHAT);
    let tasks: Vec<_> = (0..3)
        .map(|_| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move { post(&client, &url, &greedy(false), &[]).await })
        })
        .collect();
    for task in tasks {
        let (status, _, body) = task.await.unwrap();
        assert_eq!(status, 400);
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["error"]["message"], "bad tool schema");
    }
    assert_eq!(mock.request_count_for(CHAT), 1);
    mock.set_script(Script::ok());
    let (status, _, _) = post(&client, &url, &greedy(false), &[]).await;
    assert_eq!(status, 200, "the error was stored");
    assert_eq!(mock.request_count_for(CHAT), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_model_list_is_cached_and_survives_a_backend_outage() {
    let mock = MockUpstream::start(Script::ok().models(["alpha", "beta"])).await.unwrap();
    let mut settings = util::settings();
    settings.health.checks.enabled = false;
    let router = Router::start_with(spec(vec![openai("a", &mock.url(), &[])]), settings).await;
    let before = mock.request_count_for("/v1/models");
    for _ in 0..50 {
        let reply = router.get("/v1/models").await;
        assert_eq!(reply.json()["data"].as_array().unwrap().len(), 2);
    }
    // Every one of the 50 lists came from the cache.
    assert_eq!(mock.request_count_for("/v1/models"), before);
    mock.shutdown().await;
    let reply = router.get("/v1/models").await;
    assert_eq!(reply.json()["data"][0]["id"], "alpha", "{}", reply.text());
}

fn cached_fleet_settings(redis_port: u16) -> ServerSettings {
    let mut settings = util::settings();
    settings.cache.response.enabled = true;
    settings.cache.redis.url = Some(format!("redis://127.0.0.1:{redis_port}"));
    settings.cache.redis.timeout = ms(100);
    settings
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_routers_share_a_cached_response_through_redis_and_survive_its_loss() {
    let Some(mut redis) = Redis::start() else { return };
    redis.wait_ready().await;
    let mock = MockUpstream::start(Script::ok()).await.unwrap();
    let one = Router::start_with(
        spec(vec![openai("a", &mock.url(), &["m"])]),
        cached_fleet_settings(redis.port),
    )
    .await;
    let two = Router::start_with(
        spec(vec![openai("a", &mock.url(), &["m"])]),
        cached_fleet_settings(redis.port),
    )
    .await;
    // Let both connect to Redis in the background.
    tokio::time::sleep(ms(300)).await;
    let mut sampled = greedy(false);
    sampled["temperature"] = json!(0.7);
    let first = one.post(CHAT, &sampled).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.headers["x-switchyard-cache-status"], "miss");
    // Writes to Redis happen after the response, in the background.
    tokio::time::sleep(ms(200)).await;
    let second = two.post(CHAT, &sampled).await;
    assert_eq!(second.headers["x-switchyard-cache-status"], "hit", "{}", second.text());
    assert_eq!(second.body, first.body);
    assert_eq!(mock.request_count_for(CHAT), 1);

    // Redis goes away mid-run: nothing fails, the cache is bypassed.
    redis.stop();
    let routers = Arc::new([one, two]);
    for i in 0..20 {
        let mut request = sampled.clone();
        request["messages"][0]["content"] = json!(format!("question {i}"));
        let reply = routers[i % 2].post(CHAT, &request).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_response_cache_is_opt_in_per_model_or_per_request() {
    let mock = MockUpstream::start(Script::ok()).await.unwrap();
    let mut settings = util::settings();
    settings.cache.response.enabled = true;
    settings.cache.response.models = vec!["cached-model".into()];
    let router =
        Router::start_with(spec(vec![openai("a", &mock.url(), &["m", "cached-model"])]), settings)
            .await;
    let client = h2_client();
    let url = router.url(CHAT);
    let mut sampled = greedy(false);
    sampled["temperature"] = json!(0.9);
    for _ in 0..2 {
        let (status, _, _) = post(&client, &url, &sampled, &[("x-switchyard-cache", "on")]).await;
        assert_eq!(status, 200);
    }
    // Stored by the first, served to the second.
    assert_eq!(mock.request_count_for(CHAT), 1);
    post(&client, &url, &sampled, &[]).await;
    assert_eq!(mock.request_count_for(CHAT), 2, "without the header the cache is off for `m`");
    let mut listed = sampled.clone();
    listed["model"] = json!("cached-model");
    post(&client, &url, &listed, &[]).await;
    post(&client, &url, &listed, &[]).await;
    assert_eq!(mock.request_count_for(CHAT), 3, "`cached-model` is cached by configuration");
    post(&client, &url, &listed, &[("x-switchyard-cache", "off")]).await;
    assert_eq!(mock.request_count_for(CHAT), 4);
}
