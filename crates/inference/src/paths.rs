//! Where the default model lives, and the command that fetches it.

use std::path::PathBuf;

/// File name of the default model.
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// The command, run from the repository root, that downloads the default model into
/// [`default_model_path`]. Error messages quote it.
pub const FETCH_COMMAND: &str = "scripts/fetch-model.sh";

/// The model id the default model is served as.
pub const DEFAULT_MODEL_ID: &str = "SmolLM2-135M-Instruct";

/// The directory models are cached in: `$SWITCHYARD_MODEL_DIR`, else
/// `$XDG_CACHE_HOME/switchyard/models`, else `$HOME/.cache/switchyard/models`
/// (the same rule as `scripts/fetch-model.sh`). Relative to the working directory
/// when none of those is set.
pub fn model_dir() -> PathBuf {
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(dir) = var("SWITCHYARD_MODEL_DIR") {
        return dir;
    }
    let cache = var("XDG_CACHE_HOME")
        .or_else(|| var("HOME").map(|h| h.join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    cache.join("switchyard").join("models")
}

/// Where `scripts/fetch-model.sh` puts the default model.
pub fn default_model_path() -> PathBuf {
    model_dir().join(DEFAULT_MODEL_FILE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_path_ends_with_the_model_file() {
        let p = default_model_path();
        assert!(p.ends_with(DEFAULT_MODEL_FILE));
        assert!(p.parent().is_some_and(|d| d == model_dir()));
    }
}
