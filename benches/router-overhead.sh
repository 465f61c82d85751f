#!/usr/bin/env bash
# Router overhead, end to end: the same load sent directly to a mock upstream, through
# Switchyard, and through nginx `proxy_pass` with an upstream keepalive pool, in one run
# (these machines are shared and noisy: compare ratios, not absolute figures).
#
#  1. non-streaming chat at each connection count (wrk): req/s, p50/p99, CPU per request;
#  2. non-streaming chat at 64 connections and fixed rates below saturation
#     (switchyard-load --rate, requests evenly spaced by a pacing thread): the latency a
#     proxy adds, not queueing behind it;
#  3. streaming chat at each connection count (switchyard-load): time to first byte and
#     the gap between chunks, direct, through nginx and through Switchyard;
#  4. a fresh Switchyard holding N streams open at once (h2c to the upstream):
#     router memory per open stream, and what is left after they end;
#  5. start-up time and idle RSS without a model.
#
# Usage: benches/router-overhead.sh [-d SECONDS] [-c "1 16 64 256"] [--rates "1000 5000 10000"]
#                                   [--hold N] [--no-stream] [--router BIN] [--smoke]
#        (--hold 0 and --no-stream skip parts 4 and 3, --rates "" part 2, for quick A/B runs;
#        --router runs BIN instead of the release build, as scripts/pgo-profile.sh does)
# Needs: wrk and nginx (Debian packages; installed when missing and running as root).
# The release build is optimised with pgo/switchyard.profdata, as scripts/run.sh's is.
# Prints markdown. --smoke (the test suite runs it) uses debug builds, 1 s per row at
# 8 connections and 200 held streams, and only checks that every figure is a number.
set -euo pipefail
cd "$(dirname "$0")/.."

duration=10
conns="1 16 64 256"
fixed_conns=64
fixed_rates="1000 5000 10000"
hold=10000
router_bin=""
smoke=0
streaming=1
while (($#)); do
    case "$1" in
        -d) duration="$2"; shift 2 ;;
        -c) conns="$2"; shift 2 ;;
        --hold) hold="$2"; shift 2 ;;
        --no-stream) streaming=0; shift ;;
        --rates) fixed_rates="$2"; shift 2 ;;
        # A relative BIN is the caller's: `cd` above left their directory in OLDPWD.
        --router) router_bin="$2"; [[ $router_bin == /* ]] || router_bin="$OLDPWD/$router_bin"; shift 2 ;;
        --smoke) smoke=1; duration=1; conns="8"; fixed_conns=8; fixed_rates="200"; hold=200; shift ;;
        *) echo "unknown argument $1" >&2; exit 64 ;;
    esac
done

need() {
    command -v "$1" >/dev/null && return
    if [[ $(id -u) -eq 0 ]]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
    else
        echo "router-overhead: $1 is required (apt-get install $2)" >&2; exit 1
    fi
}
need wrk wrk
need nginx nginx
need curl curl
# One file descriptor per held stream, in the load generator and in the router.
ulimit -n "$(ulimit -Hn)"
if (($(ulimit -n) < hold + 1000)); then
    echo "router-overhead: --hold $hold needs more file descriptors than $(ulimit -n)" >&2; exit 1
fi

target="${CARGO_TARGET_DIR:-target}"
bins=(-p switchyard-test-support --bin switchyard-mock --bin switchyard-load)
if ((smoke)); then
    # Only checks that every figure is a number: one debug build of all three, whose
    # unified features are the ones the test suite's own build already compiled.
    [[ -z "$router_bin" ]] && bins+=(-p switchyard --bin switchyard)
    cargo build --quiet "${bins[@]}"
    bin="$target/debug"
else
    source scripts/release-flags.sh
    cargo "${release_config[@]}" build --release --quiet "${bins[@]}"
    # The router on its own, as scripts/run.sh and scripts/pgo-profile.sh build it. In
    # one build with the test-support binaries, cargo unifies the features of the
    # dependencies they share and links a different router: one that is not what
    # scripts/run.sh serves, and whose changed functions the recorded profile misses.
    [[ -z "$router_bin" ]] && cargo "${release_config[@]}" build --release --quiet -p switchyard --bin switchyard
    bin="$target/release"
fi
router="${router_bin:-$bin/switchyard}"

work="$(mktemp -d)"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

fail() { echo "router-overhead: $*" >&2; exit 1; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() {
    for _ in $(seq 1 1000); do
        curl -fsS -o /dev/null "http://127.0.0.1:$1$2" 2>/dev/null && return 0
        sleep 0.01
    done
    fail "nothing answers on port $1"
}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
mb() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
# `key=value` lines from switchyard-load: field NAME LINE
field() { tr ' ' '\n' <<<"$2" | awk -F= -v k="$1" '$1 == k {print $2}'; }
sub3() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a - b }'; }
# pair KEY LINE -> "p50 / p99" of KEY (total, ttfb, gap) in a switchyard-load line
pair() { echo "$(field "$1_p50_ms" "$2") / $(field "$1_p99_ms" "$2")"; }
# added KEY LINE BASE -> how far LINE's p50 and p99 of KEY are above BASE's
added() {
    echo "$(sub3 "$(field "$1_p50_ms" "$2")" "$(field "$1_p50_ms" "$3")") / $(sub3 "$(field "$1_p99_ms" "$2")" "$(field "$1_p99_ms" "$3")")"
}
check_numbers() {
    for v in "$@"; do [[ "$v" =~ ^-?[0-9.]+$ ]] || fail "a figure is not a number ($v)"; done
}
# check_pair "P50 / P99": both halves of a `pair` or `added` are numbers
check_pair() { check_numbers "${1% / *}" "${1#* / }"; }

mock() { # PORT ARGS... -> starts a mock, appends its pid
    "$bin/switchyard-mock" --port "$1" --threads 1 "${@:2}" >/dev/null &
    pids+=($!)
    wait_http "$1" /health
}
mock_port=$(free_port); mock "$mock_port"
stream_port=$(free_port); mock "$stream_port" --chunks 20 --chunk-delay-ms 5 --model stream-model
mock_pid=${pids[0]}

# One worker, like nginx's worker_processes 1; an upstream pool as large as nginx's.
router_port=$(free_port)
cat >"$work/switchyard.yaml" <<YAML
server: { bind_address: "127.0.0.1:$router_port", workers: 1 }
backends:
  - { name: mock, type: openai, url: "http://127.0.0.1:$mock_port", models: [mock-model] }
  - { name: stream, type: openai, url: "http://127.0.0.1:$stream_port", models: [stream-model] }
health_checks: { enabled: false }
http_client: { pool_max_idle_per_host: 256 }
logging: { level: warn }
YAML
start_ns=$(date +%s%N)
"$router" serve --config "$work/switchyard.yaml" 2>"$work/switchyard.log" &
router_pid=$!
pids+=($router_pid)
wait_http "$router_port" /health
startup_ms=$(( ($(date +%s%N) - start_ns) / 1000000 ))
sleep 0.3
idle_rss_kb=$(rss_kb "$router_pid")

nginx_port=$(free_port)
nginx_stream_port=$(free_port)
mkdir -p "$work/nginx"
cat >"$work/nginx/nginx.conf" <<NGINX
worker_processes 1;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $work/nginx;
    proxy_temp_path $work/nginx;
    upstream mock { server 127.0.0.1:$mock_port; keepalive 256; }
    upstream stream { server 127.0.0.1:$stream_port; keepalive 256; }
    server {
        listen 127.0.0.1:$nginx_port;
        location / {
            proxy_pass http://mock;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }
    }
    server {
        listen 127.0.0.1:$nginx_stream_port;
        location / {
            proxy_pass http://stream;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }
    }
}
NGINX
nginx -c "$work/nginx/nginx.conf" -g 'daemon off;' &
nginx_master=$!
pids+=($nginx_master)
wait_http "$nginx_port" /health
nginx_worker=$(pgrep -P "$nginx_master" | head -1)

# wrk prints latencies like 812.00us, 1.20ms, 1.02s: normalise to milliseconds.
to_ms() { awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n = n; else if (v ~ /s$/) n *= 1000; printf "%.3f", n }'; }

# rate NAME PORT CONNS PID -> "rps p50 p99 cpu_us_per_req"
rate() {
    local port=$2 c=$3 pid=$4
    local before after out rps p50 p99 requests hz cpu
    before=$(cpu_ticks "$pid")
    out=$(wrk -t1 -c"$c" -d"${duration}s" --latency -s benches/wrk/chat.lua "http://127.0.0.1:$port/v1/chat/completions")
    after=$(cpu_ticks "$pid")
    rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
    requests=$(awk '/requests in/ {print $1}' <<<"$out")
    p50=$(to_ms "$(awk '$1 == "50%" {print $2}' <<<"$out")")
    p99=$(to_ms "$(awk '$1 == "99%" {print $2}' <<<"$out")")
    if grep -q "Non-2xx\|Socket errors" <<<"$out"; then fail "$1 answered errors: $out"; fi
    hz=$(getconf CLK_TCK)
    cpu=$(awk -v t=$((after - before)) -v n="$requests" -v hz="$hz" 'BEGIN { if (n > 0) printf "%.1f", t / hz * 1e6 / n; else print "n/a" }')
    echo "$rps $p50 $p99 $cpu"
}

# fixed NAME PORT RATE -> the switchyard-load summary line, non-streaming at a fixed rate
fixed() {
    "$bin/switchyard-load" --url "http://127.0.0.1:$2/v1/chat/completions" \
        --model mock-model --connections "$fixed_conns" --rate "$3" --duration-s "$duration" \
        || fail "$1: fixed-rate load failed"
}

# stream NAME PORT CONNS -> the switchyard-load summary line
stream() {
    "$bin/switchyard-load" --url "http://127.0.0.1:$2/v1/chat/completions" --stream \
        --model stream-model --connections "$3" --duration-s "$duration" \
        || fail "$1: streaming load failed"
}

# each FN DIRECT_PORT NGINX_PORT ARG -> d, n, s: FN's summary line direct to the mock,
# through nginx and through Switchyard
each() {
    d=$("$1" direct "$2" "$4")
    n=$("$1" nginx "$3" "$4")
    s=$("$1" switchyard "$router_port" "$4")
}

date_utc=$(date -u +%Y-%m-%d)
cpu_model=$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)
profile=release; ((smoke)) && profile="debug (smoke)"
echo "### Latest run ($date_utc)"
echo
echo "Machine: $(nproc) cores ($cpu_model), $(awk '/MemTotal/ {printf "%.0f", $2/1048576}' /proc/meminfo) GiB; load generator, mocks and proxies share the cores. Build: $profile."
echo "Command: \`benches/router-overhead.sh -d $duration -c \"$conns\" --rates \"$fixed_rates\" --hold $hold\`."
echo
echo "Start-up to first \`/health\`: **${startup_ms} ms**; idle RSS **$(mb "$idle_rss_kb") MB** (no model)."
echo
echo "#### Non-streaming chat (wrk, 1 thread, keep-alive)"
echo
echo "| conns | direct req/s | nginx req/s | switchyard req/s | **sy/nginx** | direct p50/p99 ms | nginx p50/p99 ms | switchyard p50/p99 ms | sy added p50/p99 ms | CPU µs/req nginx | CPU µs/req switchyard |"
echo "|---|---|---|---|---|---|---|---|---|---|---|"
for c in $conns; do
    read -r d_rps d_p50 d_p99 _ < <(rate direct "$mock_port" "$c" "$mock_pid")
    read -r n_rps n_p50 n_p99 n_cpu < <(rate nginx "$nginx_port" "$c" "$nginx_worker")
    read -r s_rps s_p50 s_p99 s_cpu < <(rate switchyard "$router_port" "$c" "$router_pid")
    ratio=$(awk -v a="$s_rps" -v b="$n_rps" 'BEGIN { printf "%.2f", a / b }')
    add50=$(sub3 "$s_p50" "$d_p50"); add99=$(sub3 "$s_p99" "$d_p99")
    echo "| $c | $d_rps | $n_rps | $s_rps | **$ratio** | $d_p50 / $d_p99 | $n_p50 / $n_p99 | $s_p50 / $s_p99 | $add50 / $add99 | $n_cpu | $s_cpu |"
    ((smoke)) && check_numbers "$d_rps" "$n_rps" "$s_rps" "$ratio" "$s_p99" "$add99" "$s_cpu"
done

if [[ -n "$fixed_rates" ]]; then
echo
echo "#### Added latency below saturation (switchyard-load, $fixed_conns connections, fixed rates)"
echo
echo "wrk keeps every connection busy, so at its rates each proxy runs saturated and the"
echo "added latency above is mostly queueing behind the slower proxy. Here the connections"
echo "together send a fixed number of requests per second (below what either proxy"
echo "serves), evenly spaced by a pacing thread, each request timed from the moment it is"
echo "sent. \"Late\" counts requests sent more than 1 ms after their time (the load"
echo "generator shares the two cores too)."
echo
echo "| rate req/s | direct p50/p99 ms | nginx p50/p99 ms | switchyard p50/p99 ms | nginx added p50/p99 ms | **sy added p50/p99 ms** | late direct / nginx / sy |"
echo "|---|---|---|---|---|---|---|"
for r in $fixed_rates; do
    each fixed "$mock_port" "$nginx_port" "$r"
    sy_total=$(pair total "$s")
    sy_added=$(added total "$s" "$d")
    echo "| $r | $(pair total "$d") | $(pair total "$n") | $sy_total | $(added total "$n" "$d") | **$sy_added** | $(field behind "$d") / $(field behind "$n") / $(field behind "$s") |"
    ((smoke)) && check_pair "$sy_added" && check_pair "$sy_total"
done
fi

if ((streaming)); then
echo
echo "#### Streaming chat (switchyard-load; the mock sends 22 chunks 5 ms apart)"
echo
echo "Time to first byte (TTFB) is from sending the request to the first body chunk; the"
echo "gap is between consecutive chunks, so an added gap near zero means nothing buffers."
echo
echo "| conns | direct TTFB p50/p99 ms | nginx TTFB p50/p99 ms | switchyard TTFB p50/p99 ms | sy added TTFB p50/p99 ms | direct gap p50/p99 ms | nginx gap p50/p99 ms | switchyard gap p50/p99 ms | streams/s nginx | streams/s switchyard |"
echo "|---|---|---|---|---|---|---|---|---|---|"
for c in $conns; do
    each stream "$stream_port" "$nginx_stream_port" "$c"
    sy_added=$(added ttfb "$s" "$d")
    echo "| $c | $(pair ttfb "$d") | $(pair ttfb "$n") | $(pair ttfb "$s") | $sy_added | $(pair gap "$d") | $(pair gap "$n") | $(pair gap "$s") | $(field rps "$n") | $(field rps "$s") |"
    ((smoke)) && check_pair "$sy_added" && check_numbers "$(field gap_p99_ms "$s")" "$(field rps "$s")"
done
fi
((hold > 0)) || exit 0

# A fresh router, so the memory it holds for streams is not hidden by what its
# allocator kept from the load above; the upstream speaks h2c, so N client streams
# need N client connections but only one upstream connection.
hold_port=$(free_port)
hold_mock=$(free_port)
chunk_delay=2000 chunks=15
((smoke)) && chunk_delay=300 chunks=3
mock "$hold_mock" --chunks "$chunks" --chunk-delay-ms "$chunk_delay" --model hold-model
hold_router_port=$(free_port)
cat >"$work/hold.yaml" <<YAML
server: { bind_address: "127.0.0.1:$hold_router_port", workers: 1, max_connections: $((hold + 1000)) }
backends:
  - { name: hold, type: openai, url: "http://127.0.0.1:$hold_mock", models: [hold-model], http2: h2c, max_connections: $((hold + 1000)) }
health_checks: { enabled: false }
logging: { level: warn }
YAML
"$router" serve --config "$work/hold.yaml" 2>"$work/hold.log" &
hold_pid=$!
pids+=($hold_pid)
wait_http "$hold_router_port" /health
# Warm the upstream connection and the runtime, then take the baseline.
"$bin/switchyard-load" --url "http://127.0.0.1:$hold_router_port/v1/chat/completions" \
    --model hold-model --connections 4 --duration-s 1 >/dev/null || fail "hold warm-up failed"
sleep 0.5
before_kb=$(rss_kb "$hold_pid")
# hold_round -> "opened open_ms open_kb after_kb errors": N streams held open at once,
# the router's RSS sampled while they all are and after they have ended.
hold_round() {
    local start word opened open_ms open_kb summary after_kb
    start=$(date +%s%N)
    coproc LOAD { "$bin/switchyard-load" --url "http://127.0.0.1:$hold_router_port/v1/chat/completions" \
        --model hold-model --connections "$hold" --hold 2>"$work/hold-load.err"; }
    read -r word opened <&"${LOAD[0]}" || fail "the hold run ended early: $(cat "$work/hold-load.err")"
    [[ "$word" == open ]] || fail "unexpected output from switchyard-load: $word $opened"
    open_ms=$(( ($(date +%s%N) - start) / 1000000 ))
    open_kb=$(rss_kb "$hold_pid")
    read -r summary <&"${LOAD[0]}" || true
    wait "$LOAD_PID" || fail "held streams failed: $summary $(cat "$work/hold-load.err")"
    ((opened == hold)) || fail "only $opened of $hold streams were open at once"
    sleep 1
    after_kb=$(rss_kb "$hold_pid")
    echo "$opened $open_ms $open_kb $after_kb $(field errors "$summary")"
}
read -r opened open_ms open_kb after_kb errors < <(hold_round)
# A second round on the same router: memory kept for reuse is reused, not grown.
read -r _ _ open2_kb after2_kb errors2 < <(hold_round)
[[ -n "${errors:-}" && -n "${errors2:-}" ]] || fail "a hold round failed (see above)"
per_stream=$(awk -v a="$open_kb" -v b="$before_kb" -v n="$opened" 'BEGIN { printf "%.1f", (a - b) / n }')
echo
echo "#### $opened streams open at once (one fresh router, h2c upstream)"
echo
echo "| streams | open after ms | router RSS before MB | RSS with all open MB | **KiB per open stream** | RSS after they end MB | second round: RSS open / after MB | errors |"
echo "|---|---|---|---|---|---|---|---|"
echo "| $opened | $open_ms | $(mb "$before_kb") | $(mb "$open_kb") | **$per_stream** | $(mb "$after_kb") | $(mb "$open2_kb") / $(mb "$after2_kb") | $((errors + errors2)) |"
((errors + errors2 == 0)) || fail "held streams failed"
((smoke)) && check_numbers "$per_stream" "$startup_ms" "$idle_rss_kb"
exit 0
