#!/usr/bin/env bash
# Shows where gatehouse spends more CPU time per request than the bare Pingora proxy
# (examples/bare_proxy.rs), function by function, in the keepalive scenario of
# bench/compare.sh: the same backend and gatehouse config, wrk -t1 -c50 on /small. Both
# proxies run on CPU 0 at the same time, each idle while the other is under load; the
# backend and wrk share CPU 1. perf samples each proxy on the cpu-clock software event at
# 4,999 Hz, without call graphs, so the overhead stays small and each sample counts for the
# function that was running. bench/profile_diff_report.py turns the samples into
# microseconds of CPU per request and lists the functions whose time differs most.
#
# Unlike bench/instructions.sh, this counts time, so it also shows cache misses, atomic
# operations and kernel work. Like every timed run on a shared machine it varies by a few
# percent between runs; items below about 0.05 us per request are noise.
#
# Usage: bench/profile_diff.sh [SECONDS] [ROUNDS] [FUNCTIONS]
#   defaults 10, 2 and 40 (how many functions each direction of the list shows)
# Needs root for apt-get the first time (wrk, nginx-light, linux-perf) and for perf.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-10}
rounds=${2:-2}
functions=${3:-40}
if ! [[ $seconds =~ ^[1-9][0-9]*$ && $rounds =~ ^[1-9][0-9]*$ && $functions =~ ^[1-9][0-9]*$ ]]; then
  echo "error: SECONDS, ROUNDS and FUNCTIONS must be positive integers" \
    "(got \"$seconds\", \"$rounds\", \"$functions\")" >&2
  echo "usage: bench/profile_diff.sh [SECONDS] [ROUNDS] [FUNCTIONS]" >&2
  exit 2
fi

. bench/common.sh
bench_workdir gatehouse-profile-diff
bench_install wrk=wrk nginx=nginx-light perf=linux-perf
build_proxies
start_backend 1

gatehouse_port=$(free_port)
admin_port=$(free_port)
gatehouse_config "$gatehouse_port" "$admin_port" "$work/gateway.yaml"
taskset -c 0 "$work/bin/gatehouse" -c "$work/gateway.yaml" > "$work/access.log" \
  2> "$work/gatehouse.err" &
gatehouse_pid=$!
pids+=("$gatehouse_pid")
bare_port=$(free_port)
taskset -c 0 "$work/bin/bare_proxy" "127.0.0.1:$bare_port" "127.0.0.1:$backend_port" 1 \
  > /dev/null 2> "$work/bare.err" &
bare_pid=$!
pids+=("$bare_pid")

wait_for_http "http://127.0.0.1:$gatehouse_port/small"
wait_for_http "http://127.0.0.1:$bare_port/small"
for port in "$gatehouse_port" "$bare_port"; do
  taskset -c 1 wrk -t1 -c50 -d2s "http://127.0.0.1:$port/small" > /dev/null  # warm-up
done

# Each run adds a line "TARGET REQUESTS REPORT" to the list that the report script reads.
runs="$work/runs.txt"
: > "$runs"
for round in $(seq 1 "$rounds"); do
  for target in gatehouse bare; do
    if [ "$target" = gatehouse ]; then pid=$gatehouse_pid port=$gatehouse_port
    else pid=$bare_pid port=$bare_port; fi
    data="$work/$target.$round.data"
    perf record -q -e cpu-clock -F 4999 -p "$pid" -o "$data" -- \
      taskset -c 1 wrk -t1 -c50 -d"${seconds}s" "http://127.0.0.1:$port/small" \
      > "$work/wrk.txt" 2> "$work/perf-record.err"
    requests=$(awk '/requests in/ { print $1 }' "$work/wrk.txt")
    echo "round $round  $target  requests $requests"
    perf report -i "$data" --no-children --sort dso,symbol -n -q --percent-limit 0 -t $'\t' \
      2> /dev/null > "$data.txt"
    echo "$target $requests $data.txt" >> "$runs"
  done
done
echo
python3 bench/profile_diff_report.py 4999 "$functions" "$runs"
