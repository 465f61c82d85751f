#!/usr/bin/env bash
# Embedded-engine benchmark: Switchyard's engine and llama.cpp on the same GGUF, the same
# thread counts, in the same run, alternating, so the ratios hold on a noisy shared machine.
#
# Usage: benches/llamacpp-baseline.sh [MODEL.gguf]   (default: the default model, fetched)
# Env:   REPEATS (default 3)   THREADS (default "1 2")   PROMPT_TOKENS / DECODE_TOKENS (128)
#        SWITCHYARD_LLAMACPP_VENV  where llama-cpp-python is installed (default: the user
#        cache dir, outside the repo; building llama.cpp from source takes minutes once)
#        LLAMACPP_CMAKE_ARGS  llama.cpp's build flags when the venv is first built
#        (default "-DGGML_NATIVE=ON -DGGML_OPENMP=OFF -DLLAMA_CURL=OFF"). To compare the
#        AVX2 paths on an AVX-512 machine: SWITCHYARD_KERNELS=avx2, and a venv of its own
#        built with "-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
#        -DGGML_AVX512=OFF -DGGML_OPENMP=OFF -DLLAMA_CURL=OFF"
# Prints one RESULT line per measurement and a median table with ratios, then Switchyard's
# continuous-batching figures (BATCH lines: 1 vs 4 concurrent streams, see
# crates/inference/benches/engine.rs) as medians.
set -euo pipefail
cd "$(dirname "$0")/.."

REPEATS="${REPEATS:-3}"
THREADS="${THREADS:-1 2}"
export PROMPT_TOKENS="${PROMPT_TOKENS:-128}" DECODE_TOKENS="${DECODE_TOKENS:-128}"
LLAMACPP_VERSION="0.3.36"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/switchyard"
venv="${SWITCHYARD_LLAMACPP_VENV:-$cache/llamacpp-venv}"

model="${1:-}"
if [[ -z "$model" ]]; then
    model="$(scripts/fetch-model.sh | tail -n 1)"
fi

log() { printf 'llamacpp-baseline: %s\n' "$*" >&2; }

if ! "$venv/bin/python" -c "import llama_cpp, sys; sys.exit(llama_cpp.__version__ != '$LLAMACPP_VERSION')" 2>/dev/null; then
    log "installing llama-cpp-python==$LLAMACPP_VERSION into $venv (builds llama.cpp from source)"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --disable-pip-version-check --quiet numpy
    CMAKE_ARGS="${LLAMACPP_CMAKE_ARGS:--DGGML_NATIVE=ON -DGGML_OPENMP=OFF -DLLAMA_CURL=OFF}" \
        "$venv/bin/pip" install --disable-pip-version-check --no-cache-dir \
        "llama-cpp-python==$LLAMACPP_VERSION" >&2
fi

log "building the Switchyard bench binary (release)"
cargo bench -p switchyard-inference --bench engine --no-run >&2 2>/dev/null || cargo bench -p switchyard-inference --bench engine --no-run >&2

results="$(mktemp)"
trap 'rm -f "$results"' EXIT
for rep in $(seq 1 "$REPEATS"); do
    for t in $THREADS; do
        log "repeat $rep, $t thread(s): llama.cpp"
        "$venv/bin/python" benches/llamacpp_bench.py "$model" "$t" | tee -a "$results"
        log "repeat $rep, $t thread(s): switchyard"
        SWITCHYARD_BENCH_MODEL="$model" SWITCHYARD_BENCH_THREADS="$t" \
            cargo bench -p switchyard-inference --bench engine 2>/dev/null | grep -E '^(RESULT|BATCH)' | tee -a "$results"
    done
done

printf '\n%s UTC, %s x %s, load average %s%s\n' "$(date -u '+%Y-%m-%d %H:%M')" "$(nproc)" \
    "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)" "$(cut -d' ' -f1-3 /proc/loadavg)" \
    "${SWITCHYARD_KERNELS:+, SWITCHYARD_KERNELS=$SWITCHYARD_KERNELS}"
python3 - "$results" <<'PY'
import statistics, sys
rows = {}
batch = {}
for line in open(sys.argv[1]):
    if line.startswith("BATCH"):
        kv = dict(p.split("=", 1) for p in line.split()[1:])
        for k in ("aggregate_decode_tps", "step_ms", "max_step_ms", "last_first_token_ms"):
            batch.setdefault((kv["threads"], kv["streams"]), {}).setdefault(k, []).append(float(kv[k]))
        continue
    if not line.startswith("RESULT"):
        continue
    kv = dict(p.split("=", 1) for p in line.split()[1:])
    key = (kv["engine"], kv["threads"])
    for k in ("load_ms", "prefill_tps", "decode_tps", "rss_mb"):
        rows.setdefault(key, {}).setdefault(k, []).append(float(kv[k]))
med = {k: {m: statistics.median(v) for m, v in d.items()} for k, d in rows.items()}
threads = sorted({t for _, t in med}, key=int)
print("\n| threads | metric | llama.cpp | switchyard | ratio |")
print("|---|---|---|---|---|")
for t in threads:
    a, b = med.get(("llama.cpp", t)), med.get(("switchyard", t))
    if not a or not b:
        continue
    for m, name in (("prefill_tps", "prefill tok/s"), ("decode_tps", "decode tok/s"),
                    ("load_ms", "load ms"), ("rss_mb", "peak RSS MB")):
        print(f"| {t} | {name} | {a[m]:.1f} | {b[m]:.1f} | {b[m] / a[m]:.2f}x |")
if batch:
    med = {k: {m: statistics.median(v) for m, v in d.items()} for k, d in batch.items()}
    print("\n| threads | streams | aggregate decode tok/s | vs 1 stream | mean step ms | worst step ms | last first token ms |")
    print("|---|---|---|---|---|---|---|")
    for (t, n) in sorted(med, key=lambda k: (int(k[0]), int(k[1]))):
        d = med[(t, n)]
        one = med.get((t, "1"), {}).get("aggregate_decode_tps")
        ratio = f"{d['aggregate_decode_tps'] / one:.2f}x" if one else "-"
        print(f"| {t} | {n} | {d['aggregate_decode_tps']:.1f} | {ratio} | {d['step_ms']:.1f} | "
              f"{d['max_step_ms']:.0f} | {d['last_first_token_ms']:.0f} |")
PY
