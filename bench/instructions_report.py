"""Prints the instructions per request of gatehouse and the bare proxy, and the functions where
they differ most, from the four cachegrind files of bench/instructions.sh.

Usage: instructions_report.py LOW HIGH FUNCTIONS GATEHOUSE_LOW GATEHOUSE_HIGH BARE_LOW BARE_HIGH
"""

import re
import subprocess
import sys

# One line of cg_annotate's function list: "1,234 (12.34%)  file:function".
LINE = re.compile(r"^\s*([\d,]+) \(\s*[\d.]+%\)\s+(.+)$")


def per_function(path):
    """Returns the instructions of each function in one cachegrind file."""
    report = subprocess.run(
        ["cg_annotate", "--threshold=0", "--auto=no", path],
        capture_output=True, text=True, check=True,
    ).stdout
    counts = {}
    for line in report.splitlines():
        match = LINE.match(line)
        if not match or "PROGRAM TOTALS" in line:
            continue
        location = match.group(2).strip()
        # "???:name" or "path/file.S:name": keep the function name only.
        name = location.split(":", 1)[1] if re.match(r"^(\?\?\?|[^ ]*/[^ :]*):", location) else location
        counts[name] = counts.get(name, 0) + int(match.group(1).replace(",", ""))
    return counts


def per_request(low_path, high_path, requests):
    low, high = per_function(low_path), per_function(high_path)
    return {name: (high.get(name, 0) - low.get(name, 0)) / requests for name in low.keys() | high.keys()}


def main():
    low, high, functions = (int(value) for value in sys.argv[1:4])
    gatehouse_low, gatehouse_high, bare_low, bare_high = sys.argv[4:8]
    gatehouse = per_request(gatehouse_low, gatehouse_high, high - low)
    bare = per_request(bare_low, bare_high, high - low)
    gatehouse_total, bare_total = sum(gatehouse.values()), sum(bare.values())
    print(f"instructions per request, over {high - low} requests ({high} minus {low}):")
    print(f"  gatehouse {gatehouse_total:>10,.0f}")
    print(f"  bare      {bare_total:>10,.0f}")
    print(f"  gatehouse / bare = {gatehouse_total / bare_total:.2f}, "
          f"difference {gatehouse_total - bare_total:,.0f}")
    print(f"\nthe {functions} functions with the largest difference (gatehouse minus bare):")
    print(f"{'difference':>10} {'gatehouse':>10} {'bare':>10}  function")
    names = gatehouse.keys() | bare.keys()
    ranked = sorted(names, key=lambda name: -abs(gatehouse.get(name, 0) - bare.get(name, 0)))
    for name in ranked[:functions]:
        g, b = gatehouse.get(name, 0), bare.get(name, 0)
        print(f"{g - b:>+10,.0f} {g:>10,.0f} {b:>10,.0f}  {name[:140]}")


if __name__ == "__main__":
    main()
