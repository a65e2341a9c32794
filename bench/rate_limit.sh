#!/usr/bin/env bash
# Measures what a rate limit costs gatehouse: the same proxied route with and without a
# rate limit keyed on a header with 1,000 distinct values, none of them over the limit.
# Rounds alternate between the two routes in one gatehouse process, so both see the same
# machine load. Reports requests per CPU-second of the gatehouse process (from /proc) for each.
#
# Usage: bench/rate_limit.sh [ROUNDS] [SECONDS_PER_RUN]
# Needs root for apt-get the first time (wrk and nginx). Sends traffic to 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=${1:-5}
seconds=${2:-10}
work=$(mktemp -d /tmp/gatehouse-bench.XXXXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

if ! command -v wrk >/dev/null || ! command -v nginx >/dev/null; then
  apt-get update -qq && apt-get install -y -qq wrk nginx-light >/dev/null
fi
.ci/prereqs
cargo build --release --quiet

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
backend_port=$(free_port)
listen_port=$(free_port)
admin_port=$(free_port)

# The backend: nginx with one worker returning a small fixed body, so it is not the bottleneck.
mkdir -p "$work/nginx"
cat > "$work/nginx/nginx.conf" <<CONF
worker_processes 1;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$backend_port;
    location / { return 200 "ok\n"; }
  }
}
CONF
# gatehouse gets CPU 0 to itself, and the backend and the load generator share CPU 1. So
# their contention does not change how much CPU gatehouse spends per request.
nginx_cpu=1
gatehouse_cpu=0
taskset -c "$nginx_cpu" nginx -c "$work/nginx/nginx.conf" -p "$work/nginx" -g 'daemon off;' &
pids+=($!)

cat > "$work/gateway.yaml" <<CONF
listen:
  - address: 127.0.0.1:$listen_port
admin:
  address: 127.0.0.1:$admin_port
server:
  threads: 1
upstreams:
  - name: backend
    targets:
      - { address: 127.0.0.1:$backend_port }
routes:
  - name: plain
    match: { path: /plain }
    upstream: backend
  - name: limited
    match: { path: /limited }
    upstream: backend
    rate_limit: { requests: 1000000, per: 1s, key: "header:x-client" }
CONF
taskset -c "$gatehouse_cpu" ./target/release/gatehouse -c "$work/gateway.yaml" --pid-file "$work/gh.pid" \
  --upgrade-sock "$work/gh.sock" > /dev/null 2> "$work/gatehouse.err" &
gatehouse_pid=$!
pids+=("$gatehouse_pid")

for _ in $(seq 1 100); do
  curl -fs "http://127.0.0.1:$admin_port/readyz" >/dev/null 2>&1 && break
  sleep 0.1
done

cpu_ticks() {
  # utime + stime of the gatehouse process, in clock ticks.
  awk '{print $14 + $15}' "/proc/$gatehouse_pid/stat"
}
ticks_per_second=$(getconf CLK_TCK)

run() {
  local path=$1
  local before after requests
  before=$(cpu_ticks)
  requests=$(taskset -c "$nginx_cpu" wrk -t1 -c32 -d"${seconds}s" -s bench/rate_limit.lua "http://127.0.0.1:$listen_port$path" \
    | awk '/requests in/ {print $1}')
  after=$(cpu_ticks)
  echo "$requests $((after - before))"
}

# Warm up both routes once, then alternate.
run /plain >/dev/null
run /limited >/dev/null

printf '%-6s %-8s %12s %10s %16s\n' round route requests cpu_s requests_per_cpu_s
declare -A total_requests total_ticks
for round in $(seq 1 "$rounds"); do
  for route in plain limited; do
    read -r requests ticks < <(run "/$route")
    total_requests[$route]=$(( ${total_requests[$route]:-0} + requests ))
    total_ticks[$route]=$(( ${total_ticks[$route]:-0} + ticks ))
    awk -v r="$round" -v n="$route" -v q="$requests" -v t="$ticks" -v hz="$ticks_per_second" \
      'BEGIN { printf "%-6s %-8s %12d %10.2f %16.0f\n", r, n, q, t / hz, q / (t / hz) }'
  done
done

rejected=$(curl -fs "http://127.0.0.1:$admin_port/metrics" | awk '/^gatehouse_rate_limited_total/ {s += $2} END {print s + 0}')
awk -v pq="${total_requests[plain]}" -v pt="${total_ticks[plain]}" \
    -v lq="${total_requests[limited]}" -v lt="${total_ticks[limited]}" -v hz="$ticks_per_second" \
    -v rejected="$rejected" 'BEGIN {
  plain = pq / (pt / hz); limited = lq / (lt / hz);
  printf "\nrequests per CPU-second: plain %.0f, limited %.0f\n", plain, limited;
  printf "limited / plain = %.3f (cost of the rate limit: %.1f%%)\n", limited / plain, (1 - limited / plain) * 100;
  printf "requests rejected by the limit: %d\n", rejected;
}'
