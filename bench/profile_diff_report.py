"""Prints CPU time per request by function for gatehouse and the bare proxy, from the perf
reports that bench/profile_diff.sh writes, and the functions whose time differs most.

Usage: profile_diff_report.py FREQUENCY FUNCTIONS RUNS_FILE

RUNS_FILE has one line per run: TARGET REQUESTS REPORT. Each REPORT is the output of
`perf report --sort dso,symbol -n -t '<tab>'`: percentage, samples, object, symbol. One
sample stands for 1/FREQUENCY seconds of CPU time. Both binaries' own code is reported under
the object name "binary", so that a function of Pingora or Tokio lines up in both.
"""

import collections
import sys


def read_report(path):
    """Returns the samples of each (object, symbol) in one perf report."""
    samples = collections.Counter()
    with open(path) as report:
        for line in report:
            fields = [field.strip() for field in line.rstrip("\n").split("\t")]
            if len(fields) < 4 or not fields[1].isdigit():
                continue
            obj = fields[2]
            if obj in ("gatehouse", "bare_proxy"):
                obj = "binary"
            samples[(obj, fields[3])] += int(fields[1])
    return samples


def main():
    if len(sys.argv) != 4:
        sys.exit("usage: profile_diff_report.py FREQUENCY FUNCTIONS RUNS_FILE")
    frequency = int(sys.argv[1])
    functions = int(sys.argv[2])
    samples = {"gatehouse": collections.Counter(), "bare": collections.Counter()}
    requests = {"gatehouse": 0, "bare": 0}
    with open(sys.argv[3]) as runs:
        for line in runs:
            target, count, path = line.split()
            samples[target].update(read_report(path))
            requests[target] += int(count)
    if not requests["gatehouse"] or not requests["bare"]:
        sys.exit("error: a target served no requests; see the wrk output above")

    def micros(target, key):
        return samples[target][key] * 1e6 / frequency / requests[target]

    print("CPU time per request in microseconds, from perf's cpu-clock samples")
    print(f"{'object':<20} {'gatehouse':>10} {'bare':>10} {'difference':>11}")
    objects = sorted({obj for counter in samples.values() for obj, _ in counter})
    totals = {"gatehouse": 0.0, "bare": 0.0}
    for obj in objects:
        per_target = {}
        for target in totals:
            per_target[target] = sum(
                micros(target, key) for key in samples[target] if key[0] == obj
            )
            totals[target] += per_target[target]
        difference = per_target["gatehouse"] - per_target["bare"]
        print(f"{obj:<20} {per_target['gatehouse']:>10.2f} {per_target['bare']:>10.2f} "
              f"{difference:>+11.2f}")
    print(f"{'all':<20} {totals['gatehouse']:>10.2f} {totals['bare']:>10.2f} "
          f"{totals['gatehouse'] - totals['bare']:>+11.2f}")

    rows = []
    for key in set(samples["gatehouse"]) | set(samples["bare"]):
        gatehouse, bare = micros("gatehouse", key), micros("bare", key)
        rows.append((gatehouse - bare, gatehouse, bare, key))
    rows.sort(key=lambda row: row[0], reverse=True)
    header = f"{'difference':>10} {'gatehouse':>10} {'bare':>10}  object  function"
    print()
    print(f"the {functions} functions where gatehouse spends the most time beyond the bare proxy:")
    print(header)
    for difference, gatehouse, bare, (obj, symbol) in rows[:functions]:
        print(f"{difference:>+10.3f} {gatehouse:>10.3f} {bare:>10.3f}  {obj}  {symbol}")
    print()
    print(f"the {functions} functions where gatehouse spends the least time against the bare proxy:")
    print(header)
    for difference, gatehouse, bare, (obj, symbol) in reversed(rows[-functions:]):
        print(f"{difference:>+10.3f} {gatehouse:>10.3f} {bare:>10.3f}  {obj}  {symbol}")


if __name__ == "__main__":
    main()
