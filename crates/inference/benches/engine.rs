//! Embedded-engine benchmark: load time, prefill and decode speed, peak RSS.
//!
//! `cargo bench -p switchyard-inference --bench engine` measures the default model (or
//! `SWITCHYARD_BENCH_MODEL`) at 1 and 2 threads (or `SWITCHYARD_BENCH_THREADS="1 2"`):
//! a `PROMPT_TOKENS`-token prompt (128) and `DECODE_TOKENS` greedy tokens (128) with
//! end-of-generation masked, through the real engine. One `RESULT` line per thread count,
//! in the format `benches/llamacpp-baseline.sh` reads, which runs llama.cpp on the same
//! file in the same run. Without the model file it prints a note and measures nothing.
//!
//! Then continuous batching (unless `BATCH_STREAMS` is empty): for each stream count in
//! `BATCH_STREAMS` ("1 4"), that many concurrent requests with different 32-token prompts
//! and `BATCH_DECODE_TOKENS` (64) greedy tokens each; one `BATCH` line per count with the
//! aggregate decode rate while all streams decode, the mean and worst gap between a
//! stream's tokens (its per-step latency) and when the last stream got its first token.
#![allow(clippy::print_stdout, clippy::print_stderr, missing_docs)]

use std::time::Instant;

use switchyard_inference::{
    Engine, Event, GenerateRequest, InferenceSettings, Input, SamplingParams, default_model_path,
};

/// The same text `benches/llamacpp_bench.py` uses.
const TEXT: &str = "The history of railways begins with wagonways in the sixteenth century, when horses \
pulled carts along wooden rails in German mines. Iron rails followed in England, and \
by the early nineteenth century steam locomotives carried coal and passengers between \
towns. Switchyards, where trains are sorted and assembled, grew with the networks: \
a hump yard lets cars roll by gravity onto the right track, guided by switches and \
retarders. Modern yards are run by computers that plan each car's path, weigh it, and \
set its speed. The same ideas of routing, queues and throughput appear in computer \
networks, where packets are switched between links and buffered when links are busy. \
A router must decide quickly, keep state small, and never lose track of what it holds. ";

fn env_usize(key: &str, default: usize) -> usize {
    std::env::var(key).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn main() {
    let model =
        std::env::var_os("SWITCHYARD_BENCH_MODEL").map_or_else(default_model_path, Into::into);
    if !model.exists() {
        println!("note: {} is absent; run scripts/fetch-model.sh to benchmark", model.display());
        return;
    }
    let threads: Vec<usize> = std::env::var("SWITCHYARD_BENCH_THREADS")
        .unwrap_or_else(|_| "1 2".into())
        .split_whitespace()
        .filter_map(|t| t.parse().ok())
        .collect();
    let n_prompt = env_usize("PROMPT_TOKENS", 128);
    let n_decode = env_usize("DECODE_TOKENS", 128);
    for t in threads {
        let settings = InferenceSettings {
            threads: t,
            compact_q4_1: std::env::var("SWITCHYARD_BENCH_COMPACT").is_ok_and(|v| v == "1"),
            ..InferenceSettings::for_model(&model)
        };
        let engine = match Engine::load(&settings) {
            Ok(e) => e,
            Err(e) => {
                eprintln!("cannot load {}: {e}", model.display());
                std::process::exit(1);
            }
        };
        let load_ms = engine.info().load_time.as_secs_f64() * 1000.0;
        let text = TEXT.repeat(4);
        let mut tokens = match engine.prompt_tokens(&Input::Text(text)) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("cannot tokenize: {e}");
                std::process::exit(1);
            }
        };
        tokens.truncate(n_prompt);
        let prompt_len = tokens.len();
        let output = engine.generate(GenerateRequest {
            input: Input::Tokens(tokens),
            max_tokens: Some(n_decode + 1),
            sampling: SamplingParams::greedy(),
            stop: Vec::new(),
            ignore_eos: true,
        });
        let finished = match output {
            Ok(o) => o.finished,
            Err(e) => {
                eprintln!("generation failed: {e}");
                std::process::exit(1);
            }
        };
        #[allow(clippy::cast_precision_loss)]
        let prefill = prompt_len as f64 / finished.time_to_first_token.as_secs_f64();
        #[allow(clippy::cast_precision_loss)]
        let decode =
            (finished.usage.completion_tokens - 1) as f64 / finished.decode_time.as_secs_f64();
        println!(
            "RESULT engine=switchyard threads={t} load_ms={load_ms:.1} prefill_tps={prefill:.1} decode_tps={decode:.1} rss_mb={:.1}",
            peak_rss_mb()
        );
        let streams: Vec<usize> = std::env::var("BATCH_STREAMS")
            .unwrap_or_else(|_| "1 4".into())
            .split_whitespace()
            .filter_map(|t| t.parse().ok())
            .collect();
        for n in streams {
            batch(&engine, t, n, env_usize("BATCH_DECODE_TOKENS", 64));
        }
    }
}

/// `n` concurrent greedy streams of `decode` tokens on different 32-token prompts, all
/// submitted at once. The aggregate rate counts the tokens (text events) of every stream
/// inside the window where all of them are decoding (from the last stream's first token
/// to the first stream's last), over the window's length.
fn batch(engine: &Engine, threads: usize, n: usize, decode: usize) {
    let Ok(all) = engine.prompt_tokens(&Input::Text(TEXT.repeat(2))) else {
        eprintln!("cannot tokenize");
        std::process::exit(1);
    };
    let submitted = Instant::now();
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let generation = engine.submit(GenerateRequest {
                input: Input::Tokens(all[i * 8..i * 8 + 32].to_vec()),
                max_tokens: Some(decode),
                sampling: SamplingParams::greedy(),
                stop: Vec::new(),
                ignore_eos: true,
            });
            std::thread::spawn(move || {
                let mut times = Vec::new();
                let Ok(mut generation) = generation else { return times };
                while let Some(event) = generation.blocking_next() {
                    match event {
                        Event::Text(_) => times.push(Instant::now()),
                        Event::Started { .. } => {}
                        Event::Done(_) | Event::Error(_) => break,
                    }
                }
                times
            })
        })
        .collect();
    let streams: Vec<Vec<Instant>> = handles.into_iter().filter_map(|h| h.join().ok()).collect();
    if streams.len() != n || streams.iter().any(|t| t.len() < 2) {
        eprintln!("a stream failed");
        std::process::exit(1);
    }
    let from = streams.iter().filter_map(|t| t.first()).max().copied().unwrap_or(submitted);
    let to = streams.iter().filter_map(|t| t.last()).min().copied().unwrap_or(submitted);
    let in_window: usize =
        streams.iter().map(|t| t.iter().filter(|&&i| i > from && i <= to).count()).sum();
    #[allow(clippy::cast_precision_loss)]
    let aggregate = in_window as f64 / (to - from).as_secs_f64();
    // Per stream: the mean gap between its tokens, and the worst gap.
    let gaps: Vec<f64> = streams
        .iter()
        .flat_map(|t| t.windows(2).map(|w| (w[1] - w[0]).as_secs_f64() * 1000.0))
        .collect();
    #[allow(clippy::cast_precision_loss)]
    let mean_gap = gaps.iter().sum::<f64>() / gaps.len() as f64;
    let max_gap = gaps.iter().copied().fold(0.0, f64::max);
    let first_token_ms = streams
        .iter()
        .filter_map(|t| t.first())
        .map(|t| (*t - submitted).as_secs_f64() * 1000.0)
        .fold(0.0, f64::max);
    println!(
        "BATCH engine=switchyard threads={threads} streams={n} aggregate_decode_tps={aggregate:.1} step_ms={mean_gap:.1} max_step_ms={max_gap:.1} last_first_token_ms={first_token_ms:.0}"
    );
}
