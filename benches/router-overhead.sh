#!/usr/bin/env bash
# Router overhead, end to end: the same load sent directly to a mock upstream, through
# Switchyard, and through nginx `proxy_pass` with an upstream keepalive pool, in one run
# (these machines are shared and noisy: compare ratios, not absolute figures).
#
# Usage: benches/router-overhead.sh [-d SECONDS] [-c "1 16 64 256"] [--smoke]
# Needs: wrk and nginx (Debian packages; installed when missing and running as root).
# Prints a markdown table; --smoke runs 1 s at 8 connections and only checks numbers exist.
set -euo pipefail
cd "$(dirname "$0")/.."

duration=10
conns="1 16 64 256"
smoke=0
while (($#)); do
    case "$1" in
        -d) duration="$2"; shift 2 ;;
        -c) conns="$2"; shift 2 ;;
        --smoke) smoke=1; duration=1; conns="8"; shift ;;
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

target="${CARGO_TARGET_DIR:-target}"
cargo build --release --quiet -p switchyard -p switchyard-test-support --bin switchyard --bin switchyard-mock
bin="$target/release"

work="$(mktemp -d)"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() {
    for _ in $(seq 1 500); do
        curl -fsS -o /dev/null "http://127.0.0.1:$1$2" 2>/dev/null && return 0
        sleep 0.01
    done
    echo "router-overhead: nothing answers on port $1" >&2; exit 1
}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }

mock_port=$(free_port)
"$bin/switchyard-mock" --port "$mock_port" --threads 1 >/dev/null &
pids+=($!)
wait_http "$mock_port" /health

router_port=$(free_port)
cat >"$work/switchyard.yaml" <<YAML
# One worker, like nginx's worker_processes 1; an upstream pool as large as nginx's.
server: { bind_address: "127.0.0.1:$router_port", workers: 1 }
backends:
  - { name: mock, type: openai, url: "http://127.0.0.1:$mock_port", models: [mock-model] }
health_checks: { enabled: false }
http_client: { pool_max_idle_per_host: 256 }
logging: { level: warn }
YAML
start_ns=$(date +%s%N)
"$bin/switchyard" serve --config "$work/switchyard.yaml" 2>"$work/switchyard.log" &
router_pid=$!
pids+=($router_pid)
wait_http "$router_port" /health
startup_ms=$(( ($(date +%s%N) - start_ns) / 1000000 ))
sleep 0.3
idle_rss_kb=$(rss_kb "$router_pid")

nginx_port=$(free_port)
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
    server {
        listen 127.0.0.1:$nginx_port;
        location / {
            proxy_pass http://mock;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }
    }
}
NGINX
nginx -c "$work/nginx/nginx.conf" -g 'daemon off;' &
pids+=($!)
wait_http "$nginx_port" /health
nginx_worker=$(pgrep -P "${pids[-1]}" | head -1)

# wrk prints latencies like 812.00us, 1.20ms, 1.02s: normalise to milliseconds.
to_ms() { awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n = n; else if (v ~ /s$/) n *= 1000; printf "%.3f", n }'; }

# run NAME PORT CONNS PID -> "rps p50 p99 cpu_us_per_req"
run() {
    local port=$2 c=$3 pid=$4 threads=1
    local before after out rps p50 p99 requests
    before=$(cpu_ticks "$pid")
    out=$(wrk -t"$threads" -c"$c" -d"${duration}s" --latency -s benches/wrk/chat.lua "http://127.0.0.1:$port/v1/chat/completions")
    after=$(cpu_ticks "$pid")
    rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
    requests=$(awk '/requests in/ {print $1}' <<<"$out")
    p50=$(to_ms "$(awk '$1 == "50%" {print $2}' <<<"$out")")
    p99=$(to_ms "$(awk '$1 == "99%" {print $2}' <<<"$out")")
    if grep -q "Non-2xx" <<<"$out"; then echo "router-overhead: $1 answered errors:" >&2; echo "$out" >&2; exit 1; fi
    local hz; hz=$(getconf CLK_TCK)
    local cpu; cpu=$(awk -v t=$((after - before)) -v n="$requests" -v hz="$hz" 'BEGIN { if (n > 0) printf "%.1f", t / hz * 1e6 / n; else print "n/a" }')
    echo "$rps $p50 $p99 $cpu"
}

date_utc=$(date -u +%Y-%m-%d)
cpu_model=$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)
echo "## Router overhead ($date_utc)"
echo
echo "Machine: $(nproc) cores ($cpu_model), load generator, mock and proxies sharing them."
echo "Command: \`benches/router-overhead.sh -d $duration -c \"$conns\"\` (wrk, 1 thread, non-streaming chat, keep-alive)."
echo "Switchyard: start-up to first /health ${startup_ms} ms; idle RSS $((idle_rss_kb / 1024)).$(( (idle_rss_kb % 1024) * 10 / 1024 )) MB (no model)."
echo
echo "| conns | direct req/s | nginx req/s | switchyard req/s | sy/nginx | direct p50/p99 ms | nginx p50/p99 ms | switchyard p50/p99 ms | sy added p50/p99 ms | CPU µs/req nginx | CPU µs/req switchyard |"
echo "|---|---|---|---|---|---|---|---|---|---|---|"
for c in $conns; do
    read -r d_rps d_p50 d_p99 _ < <(run direct "$mock_port" "$c" "${pids[0]}")
    read -r n_rps n_p50 n_p99 n_cpu < <(run nginx "$nginx_port" "$c" "$nginx_worker")
    read -r s_rps s_p50 s_p99 s_cpu < <(run switchyard "$router_port" "$c" "$router_pid")
    ratio=$(awk -v a="$s_rps" -v b="$n_rps" 'BEGIN { printf "%.2f", a / b }')
    add50=$(awk -v a="$s_p50" -v b="$d_p50" 'BEGIN { printf "%.3f", a - b }')
    add99=$(awk -v a="$s_p99" -v b="$d_p99" 'BEGIN { printf "%.3f", a - b }')
    echo "| $c | $d_rps | $n_rps | $s_rps | $ratio | $d_p50 / $d_p99 | $n_p50 / $n_p99 | $s_p50 / $s_p99 | $add50 / $add99 | $n_cpu | $s_cpu |"
    if ((smoke)); then
        for v in "$d_rps" "$n_rps" "$s_rps" "$s_p99" "$s_cpu"; do
            [[ "$v" =~ ^[0-9.]+$ ]] || { echo "router-overhead: smoke run produced no number ($v)" >&2; exit 1; }
        done
    fi
done
