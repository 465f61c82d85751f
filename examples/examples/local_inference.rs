// cargo run -p switchyard-examples --example local_inference -- [MODEL.gguf] [PROMPT]
//! `switchyard-inference` as a library, without the router: load a GGUF model, stream
//! a chat answer token by token to stdout, then report token usage and speed on stderr.
//!
//! With no model argument it uses the default model path the crate resolves
//! (`$SWITCHYARD_MODEL_DIR`, else `~/.cache/switchyard/models`; fetch it with
//! `scripts/fetch-model.sh`). A missing file is reported with the crate's own message
//! and exit status 1, not a panic.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use switchyard_inference::{
    ChatTurn, Engine, Event, FinishReason, GenerateRequest, InferenceSettings, Input,
    SamplingParams, default_model_path,
};

const USAGE: &str = "usage: local_inference [MODEL.gguf] [PROMPT]";
const DEFAULT_PROMPT: &str = "What is the capital of France?";
const MAX_TOKENS: usize = 96;

/// What one generation came to.
#[derive(Debug)]
struct Summary {
    text: String,
    prompt_tokens: usize,
    completion_tokens: usize,
    finish_reason: FinishReason,
    time_to_first_token: std::time::Duration,
    /// Decode speed after the first token; 0 when a single token was generated.
    tokens_per_second: f64,
}

/// Why the program stopped.
#[derive(Debug)]
enum Failure {
    Inference(switchyard_inference::Error),
    Output(std::io::Error),
}

/// Load the model at `path` (the crate's default path when `None`). Blocking.
fn load(path: Option<PathBuf>) -> Result<Engine, switchyard_inference::Error> {
    let settings = InferenceSettings::for_model(path.unwrap_or_else(default_model_path));
    Engine::load(&settings)
}

/// Generate an answer to `prompt`, writing each piece of text to `out` as it arrives.
fn generate(
    engine: &Engine,
    prompt: &str,
    max_tokens: usize,
    out: &mut dyn Write,
) -> Result<Summary, Failure> {
    let mut generation = engine
        .submit(GenerateRequest {
            input: Input::Chat(vec![ChatTurn { role: "user".into(), content: prompt.into() }]),
            max_tokens: Some(max_tokens),
            sampling: SamplingParams::greedy(),
            stop: Vec::new(),
            ignore_eos: false,
        })
        .map_err(Failure::Inference)?;
    let mut text = String::new();
    let mut prompt_tokens = 0;
    // `blocking_next` waits on the engine's own threads; this program has no runtime.
    while let Some(event) = generation.blocking_next() {
        match event {
            Event::Started { prompt_tokens: n } => prompt_tokens = n,
            Event::Text(piece) => {
                out.write_all(piece.as_bytes()).map_err(Failure::Output)?;
                out.flush().map_err(Failure::Output)?;
                text.push_str(&piece);
            }
            Event::Done(done) => {
                let decode = done.decode_time.as_secs_f64();
                let after_first = done.usage.completion_tokens.saturating_sub(1);
                let tokens_per_second =
                    if decode > 0.0 { after_first as f64 / decode } else { 0.0 };
                return Ok(Summary {
                    text,
                    prompt_tokens: done.usage.prompt_tokens.max(prompt_tokens),
                    completion_tokens: done.usage.completion_tokens,
                    finish_reason: done.finish_reason,
                    time_to_first_token: done.time_to_first_token,
                    tokens_per_second,
                });
            }
            Event::Error(error) => return Err(Failure::Inference(error)),
        }
    }
    Err(Failure::Inference(switchyard_inference::Error::EngineStopped))
}

/// The whole program: `args` without the program name; generated text to `out`,
/// everything else to `log`.
fn run(args: &[String], out: &mut dyn Write, log: &mut dyn Write) -> ExitCode {
    if args.first().is_some_and(|a| a == "-h" || a == "--help") {
        let _ = writeln!(log, "{USAGE}");
        return ExitCode::SUCCESS;
    }
    let path = args.first().map(PathBuf::from);
    let prompt = args.get(1).map_or(DEFAULT_PROMPT, String::as_str);

    let engine = match load(path) {
        Ok(engine) => engine,
        Err(error) => {
            let _ = writeln!(log, "local_inference: {error}");
            return ExitCode::FAILURE;
        }
    };
    let info = engine.info();
    let _ = writeln!(
        log,
        "loaded {} ({}, {} layers, {}) in {} ms on {} threads",
        info.id,
        info.architecture,
        info.layers,
        info.weight_types,
        info.load_time.as_millis(),
        info.threads
    );
    match generate(&engine, prompt, MAX_TOKENS, out) {
        Ok(summary) => {
            let _ = writeln!(out);
            if summary.text.trim().is_empty() {
                let _ = writeln!(log, "note: the model answered with no text");
            }
            let _ = writeln!(
                log,
                "usage: {} prompt + {} completion tokens, finish_reason {:?}; \
                 first token after {} ms, then {:.1} tokens/s",
                summary.prompt_tokens,
                summary.completion_tokens,
                summary.finish_reason,
                summary.time_to_first_token.as_millis(),
                summary.tokens_per_second
            );
            ExitCode::SUCCESS
        }
        Err(Failure::Inference(error)) => {
            let _ = writeln!(log, "local_inference: {error}");
            ExitCode::FAILURE
        }
        Err(Failure::Output(error)) => {
            let _ = writeln!(log, "local_inference: cannot write the answer: {error}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    run(&args, &mut std::io::stdout().lock(), &mut std::io::stderr().lock())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cached default model, or `None` with a note saying why the test is skipped.
    fn cached_model() -> Option<PathBuf> {
        let path = default_model_path();
        if path.exists() {
            return Some(path);
        }
        #[allow(clippy::print_stderr, reason = "the skip note")]
        {
            eprintln!("note: {} is absent (run scripts/fetch-model.sh); skipping", path.display());
        }
        None
    }

    fn run_capture(args: &[&str]) -> (ExitCode, String, String) {
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        let (mut out, mut log) = (Vec::new(), Vec::new());
        let code = run(&args, &mut out, &mut log);
        (code, String::from_utf8(out).unwrap(), String::from_utf8(log).unwrap())
    }

    #[test]
    fn a_missing_model_is_the_crates_clear_error_and_a_failure_exit() {
        let dir = std::env::temp_dir().join("switchyard-examples-no-such-dir");
        let missing = dir.join("nothing-here.gguf");
        let (code, out, log) = run_capture(&[missing.to_str().unwrap()]);
        assert_eq!(code, ExitCode::FAILURE);
        assert!(out.is_empty());
        assert!(log.contains("nothing-here.gguf does not exist"), "{log}");
        assert!(log.contains(switchyard_inference::FETCH_COMMAND), "{log}");
        assert!(matches!(
            load(Some(missing)),
            Err(switchyard_inference::Error::ModelNotFound { .. })
        ));
    }

    #[test]
    fn help_prints_usage() {
        let (code, out, log) = run_capture(&["--help"]);
        assert_eq!(code, ExitCode::SUCCESS);
        assert!(out.is_empty() && log.contains("usage: local_inference"), "{log}");
    }

    #[test]
    fn the_program_streams_an_answer_from_the_real_model() {
        let Some(path) = cached_model() else { return };
        let (code, out, log) =
            run_capture(&[path.to_str().unwrap(), "What is the capital of France?"]);
        assert_eq!(code, ExitCode::SUCCESS, "{log}");
        assert!(out.contains("Paris"), "{out}");
        assert!(log.contains("loaded SmolLM2-135M-Instruct"), "{log}");
        assert!(log.contains("tokens/s") && log.contains("completion tokens"), "{log}");
    }

    #[test]
    fn streamed_pieces_add_up_to_the_whole_answer_and_usage_counts_them() {
        let Some(path) = cached_model() else { return };
        let engine = load(Some(path)).unwrap();
        let mut streamed = Vec::new();
        let summary = generate(&engine, "Name three colours.", 24, &mut streamed).unwrap();
        assert_eq!(String::from_utf8(streamed).unwrap(), summary.text);
        assert!(!summary.text.is_empty());
        assert!(summary.prompt_tokens > 5, "{summary:?}");
        assert!((1..=24).contains(&summary.completion_tokens), "{summary:?}");
        if summary.completion_tokens == 24 {
            assert_eq!(summary.finish_reason, FinishReason::Length);
        }
        assert!(summary.completion_tokens < 2 || summary.tokens_per_second > 0.0);

        // The same request collected by the library gives the same greedy text.
        let whole = engine
            .generate(GenerateRequest {
                input: Input::Chat(vec![ChatTurn {
                    role: "user".into(),
                    content: "Name three colours.".into(),
                }]),
                max_tokens: Some(24),
                sampling: SamplingParams::greedy(),
                stop: Vec::new(),
                ignore_eos: false,
            })
            .unwrap();
        assert_eq!(whole.text, summary.text);
    }
}
