//! The one policy for tests that run the real default model.

use std::path::PathBuf;

/// The model file at `path` for a test that runs it: `Some(path)` when it is there;
/// `None`, with a note, when it is not and `SWITCHYARD_SKIP_MODEL` is set (the run
/// knowingly has no model); otherwise the test fails, naming `fetch`, the command that
/// gets it (the README's test command runs it first).
#[track_caller]
pub fn model_or_skip(path: PathBuf, fetch: &str) -> Option<PathBuf> {
    if path.exists() {
        return Some(path);
    }
    assert!(
        std::env::var_os("SWITCHYARD_SKIP_MODEL").is_some(),
        "the default model is not at {}: run `{fetch}` (scripts/test.sh does), or set SWITCHYARD_SKIP_MODEL=1",
        path.display(),
    );
    #[allow(clippy::print_stderr, reason = "the note says why a test did nothing")]
    {
        eprintln!(
            "note: {} is absent; skipped because SWITCHYARD_SKIP_MODEL is set",
            path.display()
        );
    }
    None
}
