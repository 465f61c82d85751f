//! Switchyard's embedded inference: a GGUF model running in-process on the CPU.
//!
//! What this crate owns:
//!
//! - **Loading** a memory-mapped GGUF file: the llama family (SmolLM2, TinyLlama,
//!   Llama 2/3, Mistral; tied embeddings when `output.weight` is absent), qwen2 and
//!   gemma3, chosen by `general.architecture` (anything else is
//!   [`Error::UnsupportedArchitecture`]). Q4_1/Q5_0/Q5_1 weights run with the numerics
//!   of their Q8_0 requantisation (materialised at load, or Q4_1 kept 4-bit with
//!   `compact_q4_1`), through this crate's SIMD kernels
//!   (AVX-512 VNNI, AVX2, chosen at run time; exact integer block sums, the same bits
//!   at every level).
//! - **Tokenizing** from the file's own vocabulary (byte-level BPE and SentencePiece,
//!   matching llama.cpp), and rendering its **chat template** (Jinja, via minijinja;
//!   ChatML when the file has none).
//! - **Generating**: sampling (temperature, top-k, top-p, repetition penalty, seed),
//!   stop sequences that are never emitted, `max_tokens` and the context window, token
//!   streaming over a channel that stops the work within one token when dropped.
//! - **Scheduling**: one scheduler thread and one compute pool per [`Engine`], sized
//!   from [`InferenceSettings::threads`]; a bounded number of concurrent sequences,
//!   **continuously batched** (each step is one forward pass over every active
//!   sequence's next token or prompt chunk, each with its own KV cache), and a bounded
//!   wait queue, beyond which requests fail fast with [`Error::Overloaded`].
//! - **Serving**: [`LocalBackend`] implements `switchyard_core::Backend` for
//!   `/v1/chat/completions` and `/v1/completions`, whole or streamed as SSE.
//!
//! What it does not do: HTTP, configuration files or environment variables (the config
//! crate maps `LLM_MAX_THREADS` and friends onto [`InferenceSettings`]), downloads
//! (`scripts/fetch-model.sh` fetches the default model to [`default_model_path`]).
//!
//! Why it is shaped this way: the model code is ours, over candle's quantized block
//! kernels, because candle-transformers' models copy the embedding table to f32, crash
//! on batched prefill, and run on a process-wide pool sized once from the environment;
//! owning the forward pass, the per-sequence KV cache and the pool is also what
//! continuous batching needs. Generation never runs on async runtime threads: the
//! engine has its own, and async callers only await channel receives.
//!
//! # Example
//!
//! ```no_run
//! use switchyard_inference::{Engine, GenerateRequest, InferenceSettings, Input, SamplingParams};
//!
//! let engine = Engine::load(&InferenceSettings::default())?; // the default model
//! let output = engine.generate(GenerateRequest {
//!     input: Input::Text("The capital of France is".into()),
//!     max_tokens: Some(8),
//!     sampling: SamplingParams::greedy(),
//!     stop: vec!["\n".into()],
//!     ignore_eos: false,
//! })?;
//! println!("{} ({:?})", output.text, output.finished.finish_reason);
//! # Ok::<(), switchyard_inference::Error>(())
//! ```

// Unsafe code is denied crate-wide and allowed where each use says why: memory-mapping the
// model file (`gguf::map_file`), copying GGUF tensor bytes into candle's block structs
// (`quant::copy_bytes_into`), and the SIMD kernels behind runtime CPU-feature detection
// (`kernels`, each bit-identical to the candle kernel it replaces).

mod backend;
mod engine;
mod error;
mod gguf;
mod kernels;
mod model;
mod paths;
mod quant;
mod sampling;
mod settings;
mod template;
mod tokenizer;

pub mod metrics;

pub use backend::LocalBackend;
pub use engine::{
    ChatTurn, Engine, EngineStats, Event, FinishReason, Finished, GenerateRequest, Generation,
    Input, ModelInfo, Output, TokenUsage,
};
pub use error::{Error, Result};
pub use paths::{
    DEFAULT_MODEL_FILE, DEFAULT_MODEL_ID, FETCH_COMMAND, default_model_path, model_dir,
};
pub use sampling::SamplingParams;
pub use settings::InferenceSettings;
pub use tokenizer::{StreamDecoder, Tokenizer};
