#!/usr/bin/env bash
# Compares gatehouse with NGINX, HAProxy and a bare Pingora proxy (examples/bare_proxy.rs),
# each with one worker thread or process, side by side in one run. Every proxy sits in front of
# the same backend (nginx, one worker), and the backend alone is measured too as `direct`.
# Each proxy runs on CPU 0; the backend and the load generator (wrk, h2load or
# bench/idle_clients.py) share CPU 1. All traffic stays on 127.0.0.1.
#
# Scenarios (SCENARIOS names the ones to run, in the order given; the default is all, in this order):
#   keepalive  small responses on 50 keep-alive connections (wrk -t1 -c50)
#   close      the same with a new connection per request (Connection: close)
#   big        64 KiB responses on 50 keep-alive connections
#   routes     gatehouse only: route tables of 10, 1,000 and 10,000 path_prefix routes, with
#              the matching route last
#   h2load     the keepalive scenario with h2load --h1 as a second load generator
#   idle       IDLE_CONNECTIONS (default 10000) idle keep-alive connections held open; the
#              growth of each proxy's resident memory per connection
# Every scenario runs ROUNDS rounds; within a round every target runs once, for
# SECONDS_PER_RUN seconds (in a rotated order), after one warm-up run per target.
#
# Prints one raw line per run, then one table per scenario with medians over the rounds.
#
# Usage: bench/compare.sh [ROUNDS] [SECONDS_PER_RUN]
#   e.g. bench/compare.sh 3 10, or SCENARIOS="keepalive close" bench/compare.sh 5 10
# Needs root the first time, for apt-get (wrk, nginx-light, haproxy, nghttp2-client) and for
# raising the open file limit. Builds with cargo; set CARGO_TARGET_DIR to share a build directory.
set -euo pipefail
cd "$(dirname "$0")/.."

all_scenarios="keepalive close big routes h2load idle"
rounds=${1:-3}
seconds=${2:-10}
scenarios=${SCENARIOS:-$all_scenarios}
idle_connections=${IDLE_CONNECTIONS:-10000}
if ! [[ $rounds =~ ^[1-9][0-9]*$ && $seconds =~ ^[1-9][0-9]*$ && $idle_connections =~ ^[1-9][0-9]*$ ]]; then
  echo "error: ROUNDS, SECONDS_PER_RUN and IDLE_CONNECTIONS must be positive integers" \
    "(got \"$rounds\", \"$seconds\", \"$idle_connections\")" >&2
  echo "usage: [SCENARIOS=\"$all_scenarios\"] bench/compare.sh [ROUNDS] [SECONDS_PER_RUN]" >&2
  exit 2
fi
for scenario in $scenarios; do
  case " $all_scenarios " in
    *" $scenario "*) ;;
    *) echo "error: unknown scenario \"$scenario\" in SCENARIOS; expected any of: $all_scenarios" >&2; exit 2 ;;
  esac
done

proxy_cpu=0
load_cpu=1
client_connections=50
warmup_seconds=$((seconds < 2 ? seconds : 2))
# The route-table sizes of the routes scenario; each table includes the template's 3 routes.
route_table_sizes="10 1000 10000"
template_routes=3

work=$(mktemp -d /tmp/gatehouse-compare.XXXXXX)
# nginx workers run as an unprivileged user and must read the backend's /big file from here.
chmod 755 "$work"

# Processes this script started and has not stopped yet, by process id.
declare -A live_pids=()

is_running() {
  local state
  state=$(sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1) || return 1
  [ -n "$state" ] && [ "$state" != Z ]
}

# Stops the processes given by id: SIGINT (a fast exit for every program here), then SIGKILL
# for any still running after 5 s.
stop_pids() {
  local pid _
  for pid in "$@"; do kill -INT "$pid" 2>/dev/null || true; done
  for _ in $(seq 1 50); do
    local running=0
    for pid in "$@"; do is_running "$pid" && running=1; done
    [ "$running" = 0 ] && break
    sleep 0.1
  done
  for pid in "$@"; do
    is_running "$pid" && kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null || true
    unset "live_pids[$pid]"
  done
}

cleanup() {
  if [ ${#live_pids[@]} -gt 0 ]; then
    stop_pids "${!live_pids[@]}"
  fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v nginx >/dev/null || missing+=(nginx-light)
command -v haproxy >/dev/null || missing+=(haproxy)
command -v h2load >/dev/null || missing+=(nghttp2-client)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]}" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# In the idle scenario the client and the proxy under test each keep IDLE_CONNECTIONS sockets
# open. Every process started below inherits this limit.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
if [[ " $scenarios " == *" idle "* ]] && [ "$(ulimit -n)" -lt $((idle_connections + 1000)) ]; then
  echo "error: the open file limit is $(ulimit -n), too low for IDLE_CONNECTIONS=$idle_connections;" \
    "run as root or lower IDLE_CONNECTIONS" >&2
  exit 1
fi

. bench/common.sh  # build_proxies, free_port
build_proxies

echo "machine: $(nproc) CPUs ($(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)), Linux $(uname -r)"
echo "versions: $(nginx -v 2>&1 | sed 's/^nginx version: //'), $(haproxy -v | head -1 | cut -d' ' -f1-3)," \
  "$(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2), $(h2load --version | head -1), $(rustc --version | cut -d' ' -f1-2)"
echo "scenarios: $scenarios; $rounds round(s) of ${seconds} s per target"

# Copies TEMPLATE to OUT with each @NAME@ replaced, for arguments NAME=VALUE.
render() {
  local template=$1 out=$2 pair
  shift 2
  local expressions=()
  for pair in "$@"; do expressions+=(-e "s|@${pair%%=*}@|${pair#*=}|g"); done
  sed "${expressions[@]}" "$template" > "$out"
}

cpu_ticks() {  # utime + stime of every thread of process $1, in clock ticks
  sed 's/^.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'
}
status_kib() {  # a field of /proc/$1/status in KiB: VmRSS or VmHWM
  awk -v key="$2:" '$1 == key { print $2 }' "/proc/$1/status"
}
ticks_per_second=$(getconf CLK_TCK)

# The backend, running for the whole script.
backend_port=$(free_port)
mkdir "$work/backend"
head -c $((64 * 1024)) /dev/urandom > "$work/backend/big"
chmod 644 "$work/backend/big"
render bench/backend-nginx.conf.in "$work/backend/nginx.conf" "DIR=$work/backend" "PORT=$backend_port"
taskset -c "$load_cpu" nginx -c "$work/backend/nginx.conf" -p "$work/backend" -g 'daemon off;' \
  2> "$work/backend/stderr" &
live_pids[$!]=1

# Per target: the port it listens on, the process ids to stop, the process to measure, its
# access log and its standard error. For NGINX the measured process is its worker; `direct` has none.
declare -A target_port=() target_pids=() target_measured=() target_log=() target_err=()

start_gatehouse() {  # NAME ROUTE_COUNT
  local name=$1 route_count=$2 dir="$work/$1"
  local port admin_port
  port=$(free_port)
  admin_port=$(free_port)
  mkdir -p "$dir"
  render bench/gatehouse-compare.yaml.in "$dir/gateway.yaml" \
    "PORT=$port" "ADMIN_PORT=$admin_port" "BACKEND_PORT=$backend_port"
  local filler=$((route_count - template_routes))
  if [ "$filler" -gt 0 ]; then
    awk -v n="$filler" 'BEGIN {
      for (i = 1; i <= n; i++)
        printf "  - name: filler-%d\n    match: { path_prefix: /filler/%d }\n    upstream: backend\n", i, i
    }' > "$dir/filler.yaml"
    sed -i -e "/^  # @FILLER_ROUTES@$/{r $dir/filler.yaml" -e 'd}' "$dir/gateway.yaml"
  else
    sed -i '/^  # @FILLER_ROUTES@$/d' "$dir/gateway.yaml"
  fi
  taskset -c "$proxy_cpu" "$work/bin/gatehouse" -c "$dir/gateway.yaml" --pid-file "$dir/gatehouse.pid" \
    --upgrade-sock "$dir/upgrade.sock" >> "$dir/access.log" 2> "$dir/stderr" &
  live_pids[$!]=1
  target_port[$name]=$port
  target_pids[$name]=$!
  target_measured[$name]=$!
  target_log[$name]="$dir/access.log"
  target_err[$name]="$dir/stderr"
}

start_target() {
  local name=$1 dir="$work/$1" port
  case $name in
    direct)
      target_port[$name]=$backend_port
      target_pids[$name]=""
      target_measured[$name]=""
      target_log[$name]=""
      target_err[$name]="$work/backend/stderr"
      return
      ;;
    gatehouse) start_gatehouse "$name" "$template_routes"; return ;;
    gatehouse-*) start_gatehouse "$name" "${name#gatehouse-}"; return ;;
  esac

  port=$(free_port)
  mkdir -p "$dir"
  target_port[$name]=$port
  target_err[$name]="$dir/stderr"
  target_log[$name]="$dir/access.log"
  case $name in
    bare)
      taskset -c "$proxy_cpu" "$work/bin/bare_proxy" "127.0.0.1:$port" "127.0.0.1:$backend_port" 1 \
        > "$dir/stderr" 2>&1 &
      target_log[$name]=""
      ;;
    nginx)
      render bench/nginx-proxy.conf.in "$dir/nginx.conf" "DIR=$dir" "PORT=$port" "BACKEND_PORT=$backend_port"
      taskset -c "$proxy_cpu" nginx -c "$dir/nginx.conf" -p "$dir" -g 'daemon off;' 2> "$dir/stderr" &
      ;;
    haproxy)
      render bench/haproxy.cfg.in "$dir/haproxy.cfg" "PORT=$port" "BACKEND_PORT=$backend_port"
      taskset -c "$proxy_cpu" haproxy -f "$dir/haproxy.cfg" -db >> "$dir/access.log" 2> "$dir/stderr" &
      ;;
    *) echo "error: unknown target \"$name\"" >&2; exit 1 ;;
  esac
  live_pids[$!]=1
  target_pids[$name]=$!
  target_measured[$name]=$!
}

# Waits until TARGET returns 200 for /small, for at most 30 s, and finds NGINX's worker.
wait_ready() {
  local name=$1 _
  for _ in $(seq 1 300); do
    if curl -fs -o /dev/null "http://127.0.0.1:${target_port[$name]}/small"; then
      if [ "$name" = nginx ]; then
        target_measured[$name]=$(pgrep -P "${target_pids[$name]}" | head -1)
      fi
      return
    fi
    sleep 0.1
  done
  echo "error: $name did not respond on 127.0.0.1:${target_port[$name]} within 30 s; its standard error:" >&2
  cat "${target_err[$name]}" >&2
  exit 1
}

stop_target() {
  local name=$1
  if [ -n "${target_pids[$name]}" ]; then
    stop_pids "${target_pids[$name]}"
  fi
}

# Prints "requests seconds errors p50_ms p99_ms p999_ms" of one load run against TARGET.
run_load() {
  local scenario=$1 name=$2 duration=$3
  local url="http://127.0.0.1:${target_port[$name]}"
  local wrk_args=(-t1 "-c$client_connections" "-d${duration}s" -s bench/compare.lua)
  local output
  case $scenario in
    keepalive | routes) output=$(taskset -c "$load_cpu" wrk "${wrk_args[@]}" "$url/small") ;;
    close) output=$(taskset -c "$load_cpu" wrk "${wrk_args[@]}" -H 'Connection: close' "$url/small") ;;
    big) output=$(taskset -c "$load_cpu" wrk "${wrk_args[@]}" "$url/big") ;;
    h2load)
      taskset -c "$load_cpu" h2load --h1 -t1 "-c$client_connections" -D "$duration" \
        --log-file="$work/h2load.tsv" "$url/small" > "$work/h2load.out"
      # The log has one line per request; its third column is the response time in µs.
      local percentiles
      percentiles=$(cut -f3 "$work/h2load.tsv" | sort -n | awk '
        function rank(p,   i) { i = int(p * NR); if (i < p * NR) i++; if (i < 1) i = 1; return v[i] / 1000 }
        { v[NR] = $1 }
        END { printf "%.3f %.3f %.3f", rank(0.5), rank(0.99), rank(0.999) }')
      rm -f "$work/h2load.tsv"
      # h2load's "failed" count includes its "errored" requests and non-success statuses.
      awk -v percentiles="$percentiles" '
        /^finished in/ { seconds = $3 + 0 }
        /^requests:/ { done = $6; errors = $10 }
        END { printf "%d %.6f %d %s\n", done, seconds, errors, percentiles }' "$work/h2load.out"
      return
      ;;
  esac
  echo "$output" | awk '/^compare:/ { printf "%d %.6f %d %.3f %.3f %.3f\n", $3, $5 / 1e6, $7, $9 / 1000, $11 / 1000, $13 / 1000 }'
}

results="$work/results.tsv"
idle_results="$work/idle.tsv"
printf 'scenario\tround\ttarget\treq_per_s\tp50_ms\tp99_ms\tp999_ms\trequests\terrors\tcpu_s\thwm_kib\n' > "$results"
printf 'round\ttarget\tconnections\topened\tstill_open\trss_before_kib\trss_with_kib\n' > "$idle_results"

# Prints the words of $2.. rotated left by $1 places.
rotate() {
  local offset=$1
  shift
  local list=("$@") i
  for i in $(seq 0 $((${#list[@]} - 1))); do
    printf '%s ' "${list[$(((i + offset) % ${#list[@]}))]}"
  done
}

run_scenario() {
  local scenario=$1 targets=() name round
  case $scenario in
    routes)
      targets=(direct)
      for size in $route_table_sizes; do targets+=("gatehouse-$size"); done
      ;;
    *) targets=(direct gatehouse bare nginx haproxy) ;;
  esac
  for name in "${targets[@]}"; do start_target "$name"; done
  for name in "${targets[@]}"; do
    wait_ready "$name"
    run_load "$scenario" "$name" "$warmup_seconds" > /dev/null
  done

  printf '\n%-10s %-5s %-16s %9s %9s %9s %9s %10s %6s %7s %9s %9s\n' scenario round target \
    req/s p50_ms p99_ms p99.9_ms requests errors cpu_s hwm_kib log_lines
  for round in $(seq 1 "$rounds"); do
    for name in $(rotate $((round - 1)) "${targets[@]}"); do
      local measured=${target_measured[$name]} log=${target_log[$name]}
      local before=0 after=0 requests duration errors p50 p99 p999
      [ -n "$log" ] && : > "$log"
      [ -n "$measured" ] && before=$(cpu_ticks "$measured")
      read -r requests duration errors p50 p99 p999 < <(run_load "$scenario" "$name" "$seconds") || {
        echo "error: the load generator printed no result for $scenario against $name" >&2
        exit 1
      }
      local cpu_s=- hwm=- log_lines=-
      if [ -n "$measured" ]; then
        after=$(cpu_ticks "$measured")
        cpu_s=$(awk -v t=$((after - before)) -v hz="$ticks_per_second" 'BEGIN { printf "%.2f", t / hz }')
        hwm=$(status_kib "$measured" VmHWM)
      fi
      [ -n "$log" ] && log_lines=$(wc -l < "$log")
      local rps
      rps=$(awk -v n="$requests" -v s="$duration" 'BEGIN { printf "%.0f", (s > 0 ? n / s : 0) }')
      printf '%-10s %-5s %-16s %9s %9s %9s %9s %10s %6s %7s %9s %9s\n' "$scenario" "$round" "$name" \
        "$rps" "$p50" "$p99" "$p999" "$requests" "$errors" "$cpu_s" "$hwm" "$log_lines"
      printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$scenario" "$round" "$name" \
        "$rps" "$p50" "$p99" "$p999" "$requests" "$errors" "$cpu_s" "$hwm" >> "$results"
    done
  done
  for name in "${targets[@]}"; do stop_target "$name"; done
}

# Keeps IDLE_CONNECTIONS idle connections open to one target at a time. Every round starts the
# proxies anew, so that memory freed by an earlier round does not hide the growth.
run_idle() {
  local targets=(gatehouse bare nginx haproxy) name round _
  printf '\n%-10s %-5s %-16s %11s %7s %10s %14s %14s %14s\n' scenario round target connections \
    opened still_open rss_before_kib rss_with_kib kib_per_conn
  for round in $(seq 1 "$rounds"); do
    for name in "${targets[@]}"; do start_target "$name"; done
    for name in "${targets[@]}"; do wait_ready "$name"; done
    for name in $(rotate $((round - 1)) "${targets[@]}"); do
      local measured=${target_measured[$name]} rss_before rss_with opened failed still_open client
      rss_before=$(status_kib "$measured" VmRSS)
      taskset -c "$load_cpu" python3 bench/idle_clients.py 127.0.0.1 "${target_port[$name]}" \
        "$idle_connections" 600 > "$work/idle.out" 2>&1 &
      client=$!
      live_pids[$client]=1
      for _ in $(seq 1 1200); do
        grep -q '^ready' "$work/idle.out" && break
        is_running "$client" || break
        sleep 0.1
      done
      if ! read -r _ opened failed < <(grep '^ready' "$work/idle.out"); then
        echo "error: the idle client against $name did not get ready within 120 s; its output:" >&2
        cat "$work/idle.out" >&2
        exit 1
      fi
      sleep 2  # let the proxy finish its work on the last responses
      rss_with=$(status_kib "$measured" VmRSS)
      kill -TERM "$client"
      for _ in $(seq 1 100); do
        is_running "$client" || break
        sleep 0.1
      done
      stop_pids "$client"
      still_open=$(awk '/^still_open/ { print $2 }' "$work/idle.out")
      still_open=${still_open:-0}
      local per_connection=-
      if [ "$still_open" -gt 0 ]; then
        per_connection=$(awk -v a="$rss_before" -v b="$rss_with" -v n="$still_open" 'BEGIN { printf "%.2f", (b - a) / n }')
      fi
      printf '%-10s %-5s %-16s %11s %7s %10s %14s %14s %14s\n' idle "$round" "$name" "$idle_connections" \
        "$opened" "$still_open" "$rss_before" "$rss_with" "$per_connection"
      if [ "$failed" -gt 0 ]; then
        echo "warning: $failed of $idle_connections connections to $name failed to open or complete a request" >&2
      fi
      printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$name" "$idle_connections" "$opened" "$still_open" \
        "$rss_before" "$rss_with" >> "$idle_results"
      sleep 1  # let the proxy close the connections before the next target's run
    done
    for name in "${targets[@]}"; do stop_target "$name"; done
  done
}

for scenario in $scenarios; do
  if [ "$scenario" = idle ]; then
    run_idle
  else
    run_scenario "$scenario"
  fi
done

echo
echo "Summary (req/s, latency and CPU from the load generator and /proc; +p50/+p99 are over direct)"
python3 bench/compare_report.py "$results" "$idle_results"
