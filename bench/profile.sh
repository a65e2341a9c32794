#!/usr/bin/env bash
# Records where gatehouse spends its CPU in the keepalive scenario of bench/compare.sh: the
# same backend and gatehouse config, wrk -t1 -c50 on /small, gatehouse on CPU 0 and the
# backend and wrk on CPU 1. perf samples gatehouse on the cpu-clock software event, because
# hardware counters are often unavailable in virtual machines, with DWARF call graphs, since
# the release build keeps no frame pointers. gatehouse is built with `--profile profiling`
# (the release profile plus line tables), so perf can name inlined functions.
#
# Usage: bench/profile.sh [SECONDS] [OUTPUT_DIR]
# Leaves perf.data, self.txt (functions by their own samples), children.txt (functions by
# the samples of everything they call) and categories.txt (samples grouped by what the CPU was
# doing, from bench/profile_categories.py) in OUTPUT_DIR, by default a new folder under /tmp.
# Needs root for apt-get the first time (wrk, nginx-light, linux-perf) and for perf.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-10}
out=${2:-$(mktemp -d /tmp/gatehouse-profile.XXXXXX)}
if ! [[ $seconds =~ ^[1-9][0-9]*$ ]]; then
  echo "error: SECONDS must be a positive integer (got \"$seconds\")" >&2
  echo "usage: bench/profile.sh [SECONDS] [OUTPUT_DIR]" >&2
  exit 2
fi
mkdir -p "$out"
. bench/common.sh
bench_workdir gatehouse-profile-run
bench_install wrk=wrk nginx=nginx-light perf=linux-perf
.ci/prereqs
cargo build --profile profiling --quiet --bin gatehouse
gatehouse="${CARGO_TARGET_DIR:-target}/profiling/gatehouse"
cp "$gatehouse" "$out/gatehouse"

start_backend 1
port=$(free_port)
admin_port=$(free_port)
gatehouse_config "$port" "$admin_port" "$work/gateway.yaml"
taskset -c 0 "$out/gatehouse" -c "$work/gateway.yaml" --pid-file "$work/gatehouse.pid" \
  --upgrade-sock "$work/upgrade.sock" >> "$work/access.log" 2> "$work/gatehouse.err" &
gatehouse_pid=$!
pids+=("$gatehouse_pid")

url="http://127.0.0.1:$port/small"
wait_for_http "$url"
taskset -c 1 wrk -t1 -c50 -d2s "$url" > /dev/null  # warm-up

# perf starts first and stops one second before wrk, so every sample is taken under load.
perf record -e cpu-clock -F 999 --call-graph dwarf,16384 -p "$gatehouse_pid" -o "$out/perf.data" \
  -- sleep "$seconds" 2> "$out/perf-record.err" &
perf_pid=$!
taskset -c 1 wrk -t1 -c50 -d"$((seconds + 1))s" "$url" | tee "$out/wrk.txt"
wait "$perf_pid"

perf report -i "$out/perf.data" --no-children --sort symbol --percent-limit 0.3 --stdio \
  -g none 2> /dev/null > "$out/self.txt"
perf report -i "$out/perf.data" --children --sort symbol --percent-limit 2 --stdio \
  -g none 2> /dev/null > "$out/children.txt"
perf script -i "$out/perf.data" -F comm,tid,ip,sym,srcline --inline --full-source-path 2> /dev/null \
  | python3 bench/profile_categories.py "$PWD" > "$out/categories.txt"
echo
echo "perf data and reports are in $out"
cat "$out/categories.txt"
