#!/usr/bin/env bash
# Regenerate pgo/switchyard.profdata, the profile the release `switchyard` binary is
# optimised with (scripts/release-flags.sh): build an instrumented router, run the router
# benchmark's workload through it (benches/router-overhead.sh: non-streaming chat at 1-256
# connections, a fixed rate, streaming), and merge what it recorded.
#
# The profile is sparse: it keeps only the functions that ran, so code the workload never
# runs (the embedded engine, the providers' translations, TLS, HTTP/2) is compiled as it
# would be without a profile rather than as cold. (Recording the engine too, with a few
# chat completions from the embedded model, measured no different: docs/benchmarks.md,
# "Eighth look".) Regenerate it when the hot path changes (a stale profile is harmless:
# functions whose code changed are compiled without it).
#
# Usage: scripts/pgo-profile.sh
# Needs: llvm-profdata from LLVM 19 or newer (Debian's llvm-19 is installed when missing
#        and running as root), and what benches/router-overhead.sh needs (wrk, nginx).
# Takes ~15 minutes on 2 cores (two release builds).
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
target="${CARGO_TARGET_DIR:-$root/target}"
raw="$target/pgo-raw"

log() { printf '\n==> %s\n' "$*" >&2; }

# An llvm-profdata that reads the raw profiles of rustc's LLVM (LLVM 19 reads those of
# rustc 1.89-1.95, LLVM 20-22); the merged, indexed profile is read by any newer LLVM.
find_profdata() {
    local c
    for c in "$(rustc --print sysroot)"/lib/rustlib/*/bin/llvm-profdata \
        /usr/lib/llvm-{22,21,20,19}/bin/llvm-profdata llvm-profdata-{22,21,20,19}; do
        if command -v "$c" >/dev/null 2>&1; then echo "$c"; return 0; fi
    done
    return 1
}
if ! profdata=$(find_profdata); then
    if [[ $(id -u) -ne 0 ]]; then
        echo "pgo-profile: llvm-profdata (LLVM >= 19) is required: apt-get install llvm-19" >&2
        exit 1
    fi
    log "installing llvm-19 for llvm-profdata"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq llvm-19 >/dev/null
    profdata=$(find_profdata)
fi

log "building the instrumented router (its own target directory)"
# Instrumented code must not land in the shared release directory.
CARGO_TARGET_DIR="$target/pgo-instrumented" cargo \
    --config "build.rustflags=['-Cprofile-generate=$raw']" \
    build --release --quiet -p switchyard --bin switchyard

log "running the router workload through it"
rm -rf "$raw"
mkdir -p "$raw"
LLVM_PROFILE_FILE="$raw/switchyard-%p.profraw" benches/router-overhead.sh \
    --router "$target/pgo-instrumented/release/switchyard" \
    -d 3 --rates "5000" --hold 0 >/dev/null
shopt -s nullglob
profiles=("$raw"/*.profraw)
((${#profiles[@]})) || { echo "pgo-profile: the router wrote no profile" >&2; exit 1; }

log "merging ${#profiles[@]} raw profile(s) into pgo/switchyard.profdata"
mkdir -p pgo
"$profdata" merge --sparse -o pgo/switchyard.profdata "${profiles[@]}"
ls -l pgo/switchyard.profdata >&2
