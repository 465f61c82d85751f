// cargo run -p switchyard-inference --example generate -- [MODEL.gguf] [PROMPT]
//! Generate text from a GGUF file, streaming it to stdout as it is produced.
//!
//! With no arguments it uses the default model (fetch it with `scripts/fetch-model.sh`)
//! and asks it for the capital of France.
#![allow(clippy::print_stderr)] // reason: a command-line program reports on stderr

use std::io::Write;

use switchyard_inference::{
    ChatTurn, Engine, Event, GenerateRequest, InferenceSettings, Input, SamplingParams,
    default_model_path,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args.next().map_or_else(default_model_path, Into::into);
    let prompt = args.next().unwrap_or_else(|| "What is the capital of France?".into());

    let engine = Engine::load(&InferenceSettings::for_model(path))?;
    let info = engine.info();
    eprintln!(
        "loaded {} ({}, {} layers, {}) in {} ms on {} threads",
        info.id,
        info.architecture,
        info.layers,
        info.weight_types,
        info.load_time.as_millis(),
        info.threads
    );

    let mut generation = engine.submit(GenerateRequest {
        input: Input::Chat(vec![ChatTurn { role: "user".into(), content: prompt }]),
        max_tokens: Some(128),
        sampling: SamplingParams::greedy(),
        stop: Vec::new(),
        ignore_eos: false,
    })?;
    let mut out = std::io::stdout().lock();
    while let Some(event) = generation.blocking_next() {
        match event {
            Event::Started { prompt_tokens } => eprintln!("prompt: {prompt_tokens} tokens"),
            Event::Text(text) => {
                out.write_all(text.as_bytes())?;
                out.flush()?;
            }
            Event::Done(done) => {
                let decode = done.decode_time.as_secs_f64();
                let rate = if decode > 0.0 {
                    (done.usage.completion_tokens.saturating_sub(1)) as f64 / decode
                } else {
                    0.0
                };
                writeln!(out)?;
                eprintln!(
                    "{:?}: {} tokens, first after {} ms, then {rate:.1} tokens/s",
                    done.finish_reason,
                    done.usage.completion_tokens,
                    done.time_to_first_token.as_millis()
                );
            }
            Event::Error(e) => return Err(e.into()),
        }
    }
    Ok(())
}
