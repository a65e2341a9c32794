#!/usr/bin/env bash
# Counts the user-space instructions that gatehouse and the bare Pingora proxy
# (examples/bare_proxy.rs) execute per request, under valgrind's cachegrind, and lists the
# functions where gatehouse spends more instructions than the bare proxy. The counts do not
# depend on the machine's load, so they show a change of 1% that timed runs on a shared machine
# cannot. They leave out the kernel (system calls, TCP) and do not show cache misses.
#
# Both proxies run in front of the backend of bench/compare.sh (nginx, /small), with
# gatehouse on bench/gatehouse-compare.yaml.in. Each runs twice, serving LOW and then HIGH
# requests (h2load --h1, 10 connections). The difference between the two runs, divided by
# HIGH - LOW, is the count per request, without startup and shutdown.
#
# Usage: bench/instructions.sh [LOW] [HIGH] [FUNCTIONS]
#   defaults 2000, 12000 and 40 (how many functions the difference lists)
# Needs root the first time, for apt-get (valgrind, nginx-light, nghttp2-client).
# Builds with cargo; set CARGO_TARGET_DIR to share a build directory.
set -euo pipefail
cd "$(dirname "$0")/.."

low=${1:-2000}
high=${2:-12000}
functions=${3:-40}
if ! [[ $low =~ ^[1-9][0-9]*$ && $high =~ ^[1-9][0-9]*$ && $functions =~ ^[1-9][0-9]*$ ]] || [ "$high" -le "$low" ]; then
  echo "error: LOW, HIGH and FUNCTIONS must be positive integers with HIGH > LOW" \
    "(got \"$low\", \"$high\", \"$functions\")" >&2
  echo "usage: bench/instructions.sh [LOW] [HIGH] [FUNCTIONS]" >&2
  exit 2
fi

. bench/common.sh
bench_workdir gatehouse-instructions
bench_install valgrind=valgrind nginx=nginx-light h2load=nghttp2-client
build_proxies
start_backend

# Runs TARGET (gatehouse or bare) under cachegrind for REQUESTS requests and appends the
# output file's path to `outputs`. It runs in this shell, not in a subshell, so that its
# process id reaches `pids` for the cleanup and its `exit` ends the script.
measure() {
  local target=$1 requests=$2 port admin_port out="$work/$1.$2.cachegrind"
  port=$(free_port)
  local command=()
  case $target in
    gatehouse)
      admin_port=$(free_port)
      gatehouse_config "$port" "$admin_port" "$work/gateway.yaml"
      command=("$work/bin/gatehouse" -c "$work/gateway.yaml")
      ;;
    bare) command=("$work/bin/bare_proxy" "127.0.0.1:$port" "127.0.0.1:$backend_port" 1) ;;
  esac

  valgrind --tool=cachegrind --cache-sim=no --cachegrind-out-file="$out" "${command[@]}" \
    > /dev/null 2> "$work/$target.stderr" &
  local pid=$!
  pids+=("$pid")
  # Under valgrind the program starts many times slower than usual, so the wait is long.
  wait_for_http "http://127.0.0.1:$port/small"

  local result
  result=$(timeout 300 h2load --h1 -n "$requests" -c 10 "http://127.0.0.1:$port/small" | grep '^requests:')
  if [[ $result != *" $requests succeeded"* ]]; then
    echo "error: not every request to $target succeeded: $result; its standard error:" >&2
    cat "$work/$target.stderr" >&2
    exit 1
  fi

  kill -INT "$pid"
  wait "$pid" || true
  outputs+=("$out")
}

outputs=()
for target in gatehouse bare; do
  for requests in "$low" "$high"; do
    measure "$target" "$requests"
  done
done
python3 bench/instructions_report.py "$low" "$high" "$functions" "${outputs[@]}"
