#!/usr/bin/env bash
# Measures how slow clients affect normal traffic through gatehouse, NGINX and HAProxy, side
# by side in one run: 500 slowloris connections and 500 slow readers (slowhttptest) held open
# while wrk runs a normal keep-alive load. Each proxy runs on CPU 0 with one worker thread or
# process and equivalent timeouts (header 10 s, body and send 30 s, keep-alive 60 s, upstream
# read 30 s). The backend, wrk and the slow clients share CPU 1. The slow clients run under
# the SCHED_IDLE policy (chrt --idle 0), so that they take CPU 1 only when wrk and the
# backend leave it idle and do not delay the load generator. SLOW_CLIENT_POLICY=normal runs
# them as ordinary processes instead. Reports p50, p99 and requests per second of the normal
# load with and without slow clients, the client connections open during each run, the
# proxy's CPU time spent on the slow clients alone, and the p99 ratios.
#
# Usage: [SLOW_CLIENTS=python] [SLOW_CLIENT_POLICY=normal] bench/slow_clients.sh [ROUNDS] [SECONDS_PER_RUN]
# Needs root for apt-get the first time (wrk, nginx, haproxy, slowhttptest). Sends traffic to
# 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=${1:-2}
seconds=${2:-10}
work=$(mktemp -d /tmp/gatehouse-slow.XXXXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

if ! command -v wrk >/dev/null || ! command -v nginx >/dev/null || ! command -v haproxy >/dev/null \
  || ! command -v slowhttptest >/dev/null; then
  apt-get update -qq && apt-get install -y -qq wrk nginx-light haproxy slowhttptest >/dev/null
fi
# The slow clients come from slowhttptest (C++, one process per kind), or with
# SLOW_CLIENTS=python from bench/slow_clients.py, which costs more CPU on the load core.
slow_clients=${SLOW_CLIENTS:-slowhttptest}
case ${SLOW_CLIENT_POLICY:-idle} in
  idle) slow_policy=(chrt --idle 0) ;;
  normal) slow_policy=() ;;
  *) echo "error: SLOW_CLIENT_POLICY must be idle or normal (got \"$SLOW_CLIENT_POLICY\")" >&2; exit 2 ;;
esac
.ci/prereqs
cargo build --release --quiet

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
backend_port=$(free_port)
gatehouse_port=$(free_port)
gatehouse_admin=$(free_port)
nginx_port=$(free_port)
haproxy_port=$(free_port)
proxy_cpu=0
other_cpu=1

# Backend: nginx, a small body on /small and 16 MiB on /big.
mkdir -p "$work/backend" "$work/nginx"
head -c $((16 * 1024 * 1024)) /dev/zero > "$work/backend/big"
cat > "$work/backend/nginx.conf" <<CONF
worker_processes 1;
pid $work/backend/nginx.pid;
error_log $work/backend/error.log;
events { worker_connections 8192; }
http {
  access_log off;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$backend_port;
    location /small { return 200 "ok\n"; }
    location /big { alias $work/backend/big; }
  }
}
CONF
taskset -c "$other_cpu" nginx -c "$work/backend/nginx.conf" -p "$work/backend" -g 'daemon off;' &
pids+=($!)

cat > "$work/gateway.yaml" <<CONF
listen:
  - address: 127.0.0.1:$gatehouse_port
admin:
  address: 127.0.0.1:$gatehouse_admin
server:
  threads: 1
timeouts:
  connect: 2s
  upstream_read: 30s
  upstream_write: 30s
  request: 60s
  downstream_header: 10s
  downstream_body: 30s
  downstream_write: 30s
  downstream_idle: 60s
upstreams:
  - name: backend
    targets:
      - { address: 127.0.0.1:$backend_port }
    keepalive: { max_idle: 1024 }
routes:
  - name: all
    match: { path_prefix: / }
    upstream: backend
CONF
taskset -c "$proxy_cpu" ./target/release/gatehouse -c "$work/gateway.yaml" --pid-file "$work/gh.pid" \
  --upgrade-sock "$work/gh.sock" > /dev/null 2> "$work/gatehouse.err" &
pids+=($!)
gatehouse_pid=$!

cat > "$work/nginx/nginx.conf" <<CONF
worker_processes 1;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log;
events { worker_connections 8192; }
http {
  access_log off;
  client_header_timeout 10s;
  client_body_timeout 30s;
  send_timeout 30s;
  keepalive_timeout 60s;
  keepalive_requests 1000000;
  upstream backend { server 127.0.0.1:$backend_port; keepalive 1024; }
  server {
    listen 127.0.0.1:$nginx_port;
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_connect_timeout 2s;
      proxy_read_timeout 30s;
      proxy_send_timeout 30s;
    }
  }
}
CONF
taskset -c "$proxy_cpu" nginx -c "$work/nginx/nginx.conf" -p "$work/nginx" -g 'daemon off;' &
pids+=($!)

cat > "$work/haproxy.cfg" <<CONF
global
  nbthread 1
  maxconn 8192
defaults
  mode http
  timeout connect 2s
  timeout client 30s
  timeout server 30s
  timeout http-request 10s
  timeout http-keep-alive 60s
  http-reuse always
frontend bench
  bind 127.0.0.1:$haproxy_port
  default_backend backend
backend backend
  server b1 127.0.0.1:$backend_port
CONF
taskset -c "$proxy_cpu" haproxy -f "$work/haproxy.cfg" -db > "$work/haproxy.log" 2>&1 &
pids+=($!)
haproxy_pid=$!

for port in "$gatehouse_port" "$nginx_port" "$haproxy_port"; do
  for _ in $(seq 1 100); do
    curl -fs "http://127.0.0.1:$port/small" >/dev/null 2>&1 && break
    sleep 0.1
  done
done

# The process that does a proxy's work: NGINX's worker, not its master.
nginx_pid=$(pgrep -P "$(cat "$work/nginx/nginx.pid")" | head -n 1)

# Prints the user plus system CPU time of process PID in clock ticks, fields 14 and 15 of
# /proc/PID/stat. Counting fields by spaces works because these command names have none.
cpu_ticks() {
  awk '{ print $14 + $15 }' "/proc/$1/stat"
}

# Prints "p50_ms p99_ms requests_per_second client_connections" of a wrk run against PORT. The
# last is the number of established client connections to PORT halfway through the run, wrk's
# 32 included, which shows that the slow clients were connected while wrk measured.
normal_load() {
  local port=$1
  (
    sleep $((seconds / 2))
    ss -Htn state established "( sport = :$port )" | wc -l > "$work/connections"
  ) &
  local counter=$!
  taskset -c "$other_cpu" wrk -t1 -c32 -d"${seconds}s" --latency "http://127.0.0.1:$port/small" > "$work/wrk.out"
  wait "$counter"
  awk -v connections="$(cat "$work/connections")" '
    function ms(v) { if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0; if (v ~ /s$/) return v * 1000; return v }
    /^ +50%/ { p50 = ms($2) } /^ +99%/ { p99 = ms($2) } /^Requests\/sec/ { rps = $2 }
    END { printf "%.3f %.3f %.0f %d\n", p50, p99, rps, connections }' "$work/wrk.out"
}

printf '%-6s %-10s %-6s %9s %9s %10s %12s %12s\n' round proxy slow p50_ms p99_ms req_per_s client_conns slow_cpu_ms
for round in $(seq 1 "$rounds"); do
  for proxy in gatehouse nginx haproxy; do
    case $proxy in
      gatehouse) port=$gatehouse_port pid=$gatehouse_pid ;;
      nginx) port=$nginx_port pid=$nginx_pid ;;
      haproxy) port=$haproxy_port pid=$haproxy_pid ;;
    esac
    read -r p50 p99 rps connections < <(normal_load "$port")
    printf '%-6s %-10s %-6s %9s %9s %10s %12s %12s\n' "$round" "$proxy" no "$p50" "$p99" "$rps" "$connections" -
    echo "$proxy no $p99" >> "$work/p99s"

    slow_pids=()
    if [ "$slow_clients" = python ]; then
      taskset -c "$other_cpu" "${slow_policy[@]}" python3 bench/slow_clients.py 127.0.0.1 "$port" 500 500 $((seconds + 8)) \
        > "$work/slow.out" &
      slow_pids+=($!)
    else
      # 500 slowloris connections sending a header line every second, and 500 slow readers
      # reading 32 bytes a second of /big through a small receive window.
      taskset -c "$other_cpu" "${slow_policy[@]}" slowhttptest -H -c 500 -r 500 -i 1 -l $((seconds + 8)) \
        -u "http://127.0.0.1:$port/small" -p 30 > "$work/slow.out" 2>&1 &
      slow_pids+=($!)
      taskset -c "$other_cpu" "${slow_policy[@]}" slowhttptest -X -c 500 -r 500 -n 1 -z 32 -w 512 -y 1024 -l $((seconds + 8)) \
        -u "http://127.0.0.1:$port/big" -p 30 > "$work/slow_read.out" 2>&1 &
      slow_pids+=($!)
    fi
    # Let the slow clients connect before measuring, and record the proxy's CPU time meanwhile:
    # what the slow clients alone cost it.
    ticks_before=$(cpu_ticks "$pid")
    sleep 5
    slow_cpu_ms=$(( ($(cpu_ticks "$pid") - ticks_before) * 1000 / $(getconf CLK_TCK) ))
    read -r p50 p99 rps connections < <(normal_load "$port")
    wait "${slow_pids[@]}" || true
    printf '%-6s %-10s %-6s %9s %9s %10s %12s %12s\n' "$round" "$proxy" yes "$p50" "$p99" "$rps" "$connections" "$slow_cpu_ms"
    echo "$proxy yes $p99" >> "$work/p99s"
  done
done

echo
# Mean and median over the rounds. One slow round moves the mean more than the median.
python3 - "$work/p99s" <<'PY'
import statistics
import sys

runs = {}
for line in open(sys.argv[1]):
    proxy, slow, p99 = line.split()
    runs.setdefault(proxy, {}).setdefault(slow, []).append(float(p99))
for proxy, by_slow in runs.items():
    without, with_slow = by_slow["no"], by_slow["yes"]
    mean_no, mean_yes = statistics.mean(without), statistics.mean(with_slow)
    median_no, median_yes = statistics.median(without), statistics.median(with_slow)
    print(f"{proxy:<10} p99 without slow clients: mean {mean_no:.3f} ms, median {median_no:.3f} ms;"
          f" with: mean {mean_yes:.3f} ms, median {median_yes:.3f} ms;"
          f" ratio of means {mean_yes / mean_no:.2f}, of medians {median_yes / median_no:.2f}")
PY
