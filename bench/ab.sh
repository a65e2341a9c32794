#!/usr/bin/env bash
# Compares gatehouse builds against each other in time: requests per CPU-second in the
# keepalive or close scenario of bench/compare.sh (wrk -t1 -c50 on /small, the same backend
# and gatehouse config). Every build runs at the same time on CPU 0, each on its own port,
# and stays idle while another one is under load. wrk and the backend share CPU 1. After a
# 2 s warm-up of each build, every round loads each build once for SECONDS, in an order
# rotated by one place per round. CPU time is user plus system time from /proc/PID/stat.
#
# Usage: bench/ab.sh ROUNDS SECONDS keepalive|close BINARY...
#   e.g. bench/ab.sh 4 8 keepalive /tmp/gatehouse-before target/release/gatehouse
# A BINARY may be a script that sets the environment and then runs a build with `exec`, so
# that its process is the gatehouse process, for example to try jemalloc options through
# _RJEM_MALLOC_CONF. Prints one line per run, then the mean and the median per build.
# Runs of one build varied by 2 to 4% on a shared 2-CPU machine, so compare means over 4 or
# more rounds, and count instructions (bench/instructions.sh) for smaller differences.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ $# -lt 4 ] || ! [[ $1 =~ ^[1-9][0-9]*$ && $2 =~ ^[1-9][0-9]*$ ]] \
  || [[ $3 != keepalive && $3 != close ]]; then
  echo "usage: bench/ab.sh ROUNDS SECONDS keepalive|close BINARY..." >&2
  exit 2
fi
rounds=$1
seconds=$2
mode=$3
shift 3
binaries=("$@")
for binary in "${binaries[@]}"; do
  [ -x "$binary" ] || { echo "error: $binary is not an executable file" >&2; exit 2; }
done

. bench/common.sh
bench_workdir gatehouse-ab
bench_install wrk=wrk nginx=nginx-light
start_backend 1

headers=()
[ "$mode" = close ] && headers=(-H 'Connection: close')
urls=()
gatehouse_pids=()
for i in "${!binaries[@]}"; do
  port=$(free_port)
  gatehouse_config "$port" "$(free_port)" "$work/gateway-$i.yaml"
  taskset -c 0 "${binaries[$i]}" -c "$work/gateway-$i.yaml" > /dev/null 2> "$work/gatehouse-$i.err" &
  pids+=($!)
  gatehouse_pids+=($!)
  urls+=("http://127.0.0.1:$port/small")
done
for i in "${!binaries[@]}"; do
  wait_for_http "${urls[$i]}"
  taskset -c 1 wrk -t1 -c50 -d2s "${headers[@]}" "${urls[$i]}" > /dev/null
done

cpu_ticks() {
  sed 's/^.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'
}
ticks_per_second=$(getconf CLK_TCK)
results="$work/results"
for round in $(seq 1 "$rounds"); do
  for j in "${!binaries[@]}"; do
    i=$(((j + round) % ${#binaries[@]}))
    before=$(cpu_ticks "${gatehouse_pids[$i]}")
    output=$(taskset -c 1 wrk -t1 -c50 -d"${seconds}s" "${headers[@]}" "${urls[$i]}")
    after=$(cpu_ticks "${gatehouse_pids[$i]}")
    requests=$(awk '/requests in/ { print $1 }' <<< "$output")
    rate=$(awk -v r="$requests" -v t=$((after - before)) -v hz="$ticks_per_second" \
      'BEGIN { printf "%.0f", (t > 0 ? r / (t / hz) : 0) }')
    printf 'round %s  %s  requests %s  cpu_ticks %s  req/cpu_s %s\n' "$round" \
      "${binaries[$i]}" "$requests" $((after - before)) "$rate"
    printf '%s\t%s\n' "$i" "$rate" >> "$results"
  done
done

echo
for i in "${!binaries[@]}"; do
  awk -F'\t' -v i="$i" '$1 == i { print $2 }' "$results" | sort -n \
    | awk -v name="${binaries[$i]}" '{ v[NR] = $1; s += $1 }
      END { m = NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2;
            printf "%-40s mean %.0f  median %.0f req/cpu_s over %d runs\n", name, s / NR, m, NR }'
done
