"""Summary tables of bench/compare.sh: one table per scenario, medians over rounds.

Usage: compare_report.py RESULTS_TSV IDLE_TSV

RESULTS_TSV has one line per run with the columns scenario, round, target, req_per_s,
p50_ms, p99_ms, p999_ms, requests, errors, cpu_s and hwm_kib. A figure that does not apply is
`-`, such as the CPU of the `direct` target, which has no proxy. IDLE_TSV has one line per run
of the idle-connection scenario with round, target, connections, opened, still_open,
rss_before_kib and rss_with_kib. Either file may be missing or empty.
"""

import csv
import os
import statistics
import sys

# The target whose requests per CPU-second are 1.0 in the ratio column of each scenario. The
# route-table scenario runs gatehouse only, so its reference is the 10-route table.
REFERENCE = {"routes": "gatehouse-10"}
DEFAULT_REFERENCE = "nginx"


def read_rows(path):
    if not os.path.exists(path) or os.path.getsize(path) == 0:
        return []
    with open(path, newline="") as file:
        return list(csv.DictReader(file, delimiter="\t"))


def median_of(rows, key):
    values = [float(row[key]) for row in rows if row[key] != "-"]
    return statistics.median(values) if values else None


def cell(value, digits):
    return "-" if value is None else f"{value:.{digits}f}"


def print_scenario(scenario, rows):
    targets = list(dict.fromkeys(row["target"] for row in rows))
    by_target = {target: [row for row in rows if row["target"] == target] for target in targets}
    for target_rows in by_target.values():
        for row in target_rows:
            requests, cpu_s = float(row["requests"]), row["cpu_s"]
            cpu = None if cpu_s == "-" or float(cpu_s) <= 0 else float(cpu_s)
            row["cpu_per_100k"] = "-" if cpu is None else str(cpu / requests * 100_000)
            row["req_per_cpu_s"] = "-" if cpu is None else str(requests / cpu)

    reference = REFERENCE.get(scenario, DEFAULT_REFERENCE)
    reference_rate = median_of(by_target.get(reference, []), "req_per_cpu_s")
    direct = by_target.get("direct", [])
    direct_p50, direct_p99 = median_of(direct, "p50_ms"), median_of(direct, "p99_ms")
    rounds = len({row["round"] for row in rows})

    print(f"\nscenario {scenario}: medians over {rounds} round(s); ratio = requests per CPU-second / {reference}'s")
    columns = ("target", "req/s", "p50_ms", "p99_ms", "p99.9_ms", "+p50_ms", "+p99_ms",
               "cpu_s/100k", "req/cpu_s", "ratio", "peak_rss_MiB", "errors")
    print("{:<16}{:>9}{:>9}{:>9}{:>10}{:>9}{:>9}{:>12}{:>11}{:>7}{:>14}{:>8}".format(*columns))
    for target, target_rows in by_target.items():
        p50, p99 = median_of(target_rows, "p50_ms"), median_of(target_rows, "p99_ms")
        rate = median_of(target_rows, "req_per_cpu_s")
        hwm = [float(row["hwm_kib"]) for row in target_rows if row["hwm_kib"] != "-"]
        added_p50 = None if target == "direct" or p50 is None or direct_p50 is None else p50 - direct_p50
        added_p99 = None if target == "direct" or p99 is None or direct_p99 is None else p99 - direct_p99
        ratio = None if rate is None or not reference_rate else rate / reference_rate
        print("{:<16}{:>9}{:>9}{:>9}{:>10}{:>9}{:>9}{:>12}{:>11}{:>7}{:>14}{:>8}".format(
            target,
            cell(median_of(target_rows, "req_per_s"), 0),
            cell(p50, 3),
            cell(p99, 3),
            cell(median_of(target_rows, "p999_ms"), 3),
            cell(added_p50, 3),
            cell(added_p99, 3),
            cell(median_of(target_rows, "cpu_per_100k"), 2),
            cell(rate, 0),
            cell(ratio, 2),
            cell(max(hwm) / 1024 if hwm else None, 1),
            sum(int(row["errors"]) for row in target_rows),
        ))


def print_idle(rows):
    targets = list(dict.fromkeys(row["target"] for row in rows))
    rounds = len({row["round"] for row in rows})
    print(f"\nscenario idle: medians over {rounds} round(s); KiB per connection = (RSS with - RSS before) / connections still open")
    columns = ("target", "connections", "still_open", "rss_before_MiB", "rss_with_MiB", "KiB/connection")
    print("{:<16}{:>12}{:>12}{:>16}{:>14}{:>16}".format(*columns))
    for target in targets:
        target_rows = [row for row in rows if row["target"] == target]
        for row in target_rows:
            still_open = int(row["still_open"])
            growth = float(row["rss_with_kib"]) - float(row["rss_before_kib"])
            row["kib_per_connection"] = str(growth / still_open) if still_open else "-"
        print("{:<16}{:>12}{:>12}{:>16}{:>14}{:>16}".format(
            target,
            target_rows[0]["connections"],
            cell(median_of(target_rows, "still_open"), 0),
            cell(median_of(target_rows, "rss_before_kib") / 1024, 1),
            cell(median_of(target_rows, "rss_with_kib") / 1024, 1),
            cell(median_of(target_rows, "kib_per_connection"), 2),
        ))


def main():
    results, idle = read_rows(sys.argv[1]), read_rows(sys.argv[2])
    for scenario in dict.fromkeys(row["scenario"] for row in results):
        print_scenario(scenario, [row for row in results if row["scenario"] == scenario])
    if idle:
        print_idle(idle)


if __name__ == "__main__":
    main()
