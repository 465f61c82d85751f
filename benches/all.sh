#!/usr/bin/env bash
# Regenerate the measured tables in docs/benchmarks.md: runs the router harness and the
# embedded-engine comparison with llama.cpp, and replaces what sits between each pair of
# `<!-- NAME:begin -->` / `<!-- NAME:end -->` markers with the fresh output.
#
# Usage: benches/all.sh [--router-only | --engine-only]
# Takes ~15 minutes on 2 cores (release builds are cached after the first run).
set -euo pipefail
cd "$(dirname "$0")/.."

router=1 engine=1
case "${1:-}" in
    --router-only) engine=0 ;;
    --engine-only) router=0 ;;
    "") ;;
    *) echo "usage: benches/all.sh [--router-only | --engine-only]" >&2; exit 64 ;;
esac

doc=docs/benchmarks.md
# splice NAME FILE: put FILE's content between NAME's markers in $doc.
splice() {
    python3 - "$doc" "$1" "$2" <<'PY'
import sys
doc, name, fresh = sys.argv[1], sys.argv[2], open(sys.argv[3]).read().strip()
text = open(doc).read()
begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
if begin not in text or end not in text:
    sys.exit(f"benches/all.sh: {doc} has no {begin} ... {end} markers")
head, rest = text.split(begin, 1)
_, tail = rest.split(end, 1)
open(doc, "w").write(f"{head}{begin}\n{fresh}\n{end}{tail}")
PY
}

out="$(mktemp)"
trap 'rm -f "$out"' EXIT
if ((router)); then
    benches/router-overhead.sh >"$out"
    splice router-overhead "$out"
fi
if ((engine)); then
    benches/llamacpp-baseline.sh >"$out"
    splice engine "$out"
fi
echo "benches/all.sh: $doc updated" >&2
