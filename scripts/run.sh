#!/usr/bin/env bash
# Start Switchyard on the embedded default model: fetch the model into the cache if it
# is missing, build the router in release mode (optimised with pgo/switchyard.profdata,
# see scripts/release-flags.sh) and serve on 127.0.0.1:8080.
#
# Usage: scripts/run.sh [switchyard serve flags, e.g. --config FILE --bind 0.0.0.0:8080]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-model.sh >/dev/null
source scripts/release-flags.sh
exec cargo "${release_config[@]}" run --release --quiet -p switchyard -- serve "$@"
