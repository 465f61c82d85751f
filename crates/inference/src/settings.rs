//! The crate's settings.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// How the local model is loaded and served. Every field has a default, so `{}`
/// deserialises to a working configuration serving the default model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InferenceSettings {
    /// The GGUF file. Default `None`: [`default_model_path`](crate::default_model_path).
    pub model_path: Option<PathBuf>,
    /// The id clients use in `model`. Default: the file name without `.gguf` and
    /// without a trailing quantisation suffix (`SmolLM2-135M-Instruct`).
    pub model_id: Option<String>,
    /// Compute threads. Default 0: all cores but one, at least one.
    pub threads: usize,
    /// Prompt tokens processed per forward pass. Default 512.
    pub batch_size: usize,
    /// Context window in tokens (prompt plus output). Default 0: the model's trained
    /// context length.
    pub context_size: usize,
    /// Sequences generated concurrently (interleaved token by token). Default 4.
    pub max_concurrent: usize,
    /// Requests that may wait for a sequence slot; more are refused as overloaded.
    /// Default 16.
    pub max_queue: usize,
    /// Generation limit when a request gives none. Default 512.
    pub default_max_tokens: usize,
    /// Run Q4_1/Q5_0/Q5_1 weights with the numerics of their Q8_0 requantisation,
    /// materialised as Q8_0 at load (SIMD kernels for all of them). Default true.
    pub requantize: bool,
    /// With `requantize` and the fast kernels, keep Q4_1 weights 4-bit in memory and
    /// compute their Q8_0 requantisation on the fly: the same output, 41% less memory
    /// for those weights, but slower decode (the per-block work costs more than the
    /// bytes it saves). Default false.
    pub compact_q4_1: bool,
    /// Use this crate's SIMD kernels where the CPU has them (AVX2, AVX-512 VNNI).
    /// `false` runs candle's kernels on materialised Q8_0 weights: candle's rounding
    /// order (the same answers up to near-ties), slower; for diagnosis. Default true.
    pub fast_kernels: bool,
}

impl Default for InferenceSettings {
    fn default() -> Self {
        InferenceSettings {
            model_path: None,
            model_id: None,
            threads: 0,
            batch_size: 512,
            context_size: 0,
            max_concurrent: 4,
            max_queue: 16,
            default_max_tokens: 512,
            requantize: true,
            compact_q4_1: false,
            fast_kernels: true,
        }
    }
}

impl InferenceSettings {
    /// Settings for `path` with every other field at its default.
    pub fn for_model(path: impl Into<PathBuf>) -> Self {
        InferenceSettings { model_path: Some(path.into()), ..InferenceSettings::default() }
    }

    /// The thread count `threads` resolves to on this machine.
    pub fn resolved_threads(&self) -> usize {
        if self.threads > 0 {
            return self.threads;
        }
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        cores.saturating_sub(1).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_object_gives_defaults_and_unknown_keys_are_rejected() {
        let s: InferenceSettings = serde_json::from_str("{}").unwrap();
        assert_eq!(s, InferenceSettings::default());
        assert!(s.resolved_threads() >= 1);
        assert!(serde_json::from_str::<InferenceSettings>(r#"{"thread": 2}"#).is_err());
        let s: InferenceSettings =
            serde_json::from_str(r#"{"threads": 3, "model_path": "/m.gguf"}"#).unwrap();
        assert_eq!(s.resolved_threads(), 3);
        assert_eq!(s.model_path.as_deref(), Some(std::path::Path::new("/m.gguf")));
    }
}
