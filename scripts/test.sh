#!/usr/bin/env bash
# Run Switchyard's whole test suite from a fresh machine: installs what the tests need
# (Debian packages, Python SDKs, rustfmt and clippy, the cached default model), then
# checks the formatting, runs every test and lints.
#
# Usage: scripts/test.sh [extra cargo nextest args]
# Env:   SWITCHYARD_SKIP_INSTALL=1  skip apt/pip installs (everything already present)
#        CARGO_TARGET_DIR           shared target directory (default ./target)
#        CARGO_INCREMENTAL          default 0 here (a cold build is half the size without it)
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n==> %s\n' "$*" >&2; }

as_root() {
    if [[ $(id -u) -eq 0 ]]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else "$@"; fi
}

if [[ -z "${SWITCHYARD_SKIP_INSTALL:-}" ]]; then
    missing=()
    command -v redis-server >/dev/null || missing+=(redis-server)
    command -v curl >/dev/null || missing+=(curl)
    command -v wrk >/dev/null || missing+=(wrk)
    command -v nginx >/dev/null || missing+=(nginx)
    if ((${#missing[@]})); then
        log "installing Debian packages: ${missing[*]}"
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    if ! python3 -c 'import openai, anthropic' 2>/dev/null; then
        log "installing the openai and anthropic Python SDKs"
        python3 -m pip install --quiet --disable-pip-version-check openai anthropic
    fi
    if ! command -v cargo-nextest >/dev/null; then
        log "installing cargo-nextest"
        cargo install --locked cargo-nextest
    fi
    if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
        log "installing rustfmt and clippy"
        rustup component add rustfmt clippy
    fi
fi

# No incremental cache: it doubled the size of a cold build (1.5 GB of 3.7 GB) and a
# one-off test run never reuses it. Set CARGO_INCREMENTAL=1 to keep it.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

log "fetching the default model (cached after the first run)"
scripts/fetch-model.sh >/dev/null

log "checking the formatting"
cargo fmt --all --check

log "running the tests"
cargo nextest run --workspace --no-fail-fast "$@"
log "running the doc tests"
cargo test --workspace --doc
log "linting (clippy, warnings are errors)"
cargo clippy --workspace --all-targets --quiet -- -D warnings
log "smoke-running the router benchmark harness (debug build, seconds; checks it yields numbers)"
benches/router-overhead.sh --smoke
