#!/usr/bin/env bash
# Measures how slow clients affect normal traffic through gatehouse, NGINX and HAProxy, side
# by side in one run: 500 slowloris connections and 500 slow readers (slowhttptest) held open
# while wrk runs a normal keep-alive load. Each proxy runs on CPU 0 with one worker thread or process and
# equivalent timeouts (header 10 s, body and send 30 s, keep-alive 60 s, upstream read 30 s);
# the backend, wrk and the slow clients share CPU 1. Reports p50, p99 and requests per second
# of the normal load, with and without slow clients, and the p99 ratio.
#
# Usage: bench/slow_clients.sh [ROUNDS] [SECONDS_PER_RUN]
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

for port in "$gatehouse_port" "$nginx_port" "$haproxy_port"; do
  for _ in $(seq 1 100); do
    curl -fs "http://127.0.0.1:$port/small" >/dev/null 2>&1 && break
    sleep 0.1
  done
done

# Prints "p50_ms p99_ms requests_per_second" of a wrk run against PORT.
normal_load() {
  taskset -c "$other_cpu" wrk -t1 -c32 -d"${seconds}s" --latency "http://127.0.0.1:$1/small" | awk '
    function ms(v) { if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0; if (v ~ /s$/) return v * 1000; return v }
    /^ +50%/ { p50 = ms($2) } /^ +99%/ { p99 = ms($2) } /^Requests\/sec/ { rps = $2 }
    END { printf "%.3f %.3f %.0f\n", p50, p99, rps }'
}

printf '%-6s %-10s %-6s %9s %9s %10s\n' round proxy slow p50_ms p99_ms req_per_s
declare -A p99_sum
for round in $(seq 1 "$rounds"); do
  for proxy in gatehouse nginx haproxy; do
    case $proxy in
      gatehouse) port=$gatehouse_port ;;
      nginx) port=$nginx_port ;;
      haproxy) port=$haproxy_port ;;
    esac
    read -r p50 p99 rps < <(normal_load "$port")
    printf '%-6s %-10s %-6s %9s %9s %10s\n' "$round" "$proxy" no "$p50" "$p99" "$rps"
    p99_sum[$proxy-no]=$(awk -v a="${p99_sum[$proxy-no]:-0}" -v b="$p99" 'BEGIN { print a + b }')

    slow_pids=()
    if [ "$slow_clients" = python ]; then
      taskset -c "$other_cpu" python3 bench/slow_clients.py 127.0.0.1 "$port" 500 500 $((seconds + 8)) \
        > "$work/slow.out" &
      slow_pids+=($!)
    else
      # 500 slowloris connections sending a header line every second, and 500 slow readers
      # reading 32 bytes a second of /big through a small receive window.
      taskset -c "$other_cpu" slowhttptest -H -c 500 -r 500 -i 1 -l $((seconds + 8)) \
        -u "http://127.0.0.1:$port/small" -p 30 > "$work/slow.out" 2>&1 &
      slow_pids+=($!)
      taskset -c "$other_cpu" slowhttptest -X -c 500 -r 500 -n 1 -z 32 -w 512 -y 1024 -l $((seconds + 8)) \
        -u "http://127.0.0.1:$port/big" -p 30 > "$work/slow_read.out" 2>&1 &
      slow_pids+=($!)
    fi
    sleep 5  # let the slow clients connect before measuring
    read -r p50 p99 rps < <(normal_load "$port")
    wait "${slow_pids[@]}" || true
    printf '%-6s %-10s %-6s %9s %9s %10s\n' "$round" "$proxy" yes "$p50" "$p99" "$rps"
    p99_sum[$proxy-yes]=$(awk -v a="${p99_sum[$proxy-yes]:-0}" -v b="$p99" 'BEGIN { print a + b }')
  done
done

echo
for proxy in gatehouse nginx haproxy; do
  awk -v p="$proxy" -v no="${p99_sum[$proxy-no]}" -v yes="${p99_sum[$proxy-yes]}" -v n="$rounds" \
    'BEGIN { printf "%-10s mean p99 without slow clients %.3f ms, with %.3f ms: ratio %.2f\n", p, no / n, yes / n, yes / no }'
done
