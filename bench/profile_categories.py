"""Group perf samples of gatehouse by what the CPU was doing, for bench/profile.sh.

Usage: perf script -F comm,tid,ip,sym,srcline --inline --full-source-path | \
       profile_categories.py REPO_ROOT

Each sample is charged to one category. Samples of the access log writer thread
(`tracing-appende`, the name Linux keeps of tracing-appender's thread) form their own category.
A sample whose innermost frame is in the kernel is charged to its system call (or to the
kernel's other work, such as softirq network processing outside a system call). Any other
sample is charged to the innermost frame that belongs to a crate or gatehouse module named in
OWNERS. Frames of the standard library, the allocator, bytes, hashbrown, http and pingora-http
(the header map API) match none, so an allocation or a header insert counts for its caller. Prints
the categories with their share of all samples, then the cross-cutting shares of the
allocator and of memcpy/memmove, which the categories above include.
"""

import collections
import re
import sys

# (category, pattern) in the order they are tried on each frame. A frame is matched as its source
# path, with gatehouse's own files written "gatehouse:src/...", then " in " and the names of the
# functions at its address (see with_functions).
OWNERS = [
    ("access log: building and formatting the JSON line",
     r"^(gatehouse:src/access_log\.rs|.*/(serde_json|serde_core|serde|chrono|zmij|itoa|ryu)-\d)"),
    ("access log: handing the line to the writer thread", r"/(crossbeam-channel|crossbeam-utils|tracing-appender)-\d"),
    ("metrics (prometheus)", r"^gatehouse:src/metrics\.rs|/prometheus-\d"),
    ("request id (UUID generation)", r"/(uuid|rand|rand_core|chacha20|getrandom)-\d"),
    ("routing and path normalization", r"^gatehouse:src/(routing|dispatch|path)\.rs"),
    ("headers: forwarding headers, X-Request-Id, Host rewrite, header rules",
     r"^gatehouse:src/headers\.rs|^gatehouse:src/proxy/.* in .*(upstream_request_filter|response_filter)"),
    ("connection limit and client deadlines", r"^gatehouse:src/limits/"),
    ("tracing and log macros", r"/(tracing|tracing-core|tracing-subscriber|tracing-log|log)-\d"),
    ("gatehouse proxy hooks, other", r"^gatehouse:src/"),
    ("Pingora: HTTP/1 header parsing (httparse)", r"/httparse-\d"),
    ("Pingora: timers", r"/pingora-timeout-\d"),
    ("Pingora: upstream connection pool", r"/pingora-pool-\d|/pingora-core-[^/]*/src/connectors/"),
    ("Pingora: HTTP/1 sessions and the proxy loop", r"/pingora-(core|proxy|error)-\d"),
    ("tokio runtime and mio (task scheduling, I/O readiness)", r"/(tokio|mio)-\d"),
]
ALLOCATOR = re.compile(r"^(_int_malloc|_int_free|malloc|cfree|free|__libc_malloc|__posix_memalign|_int_memalign|"
                       r"malloc_consolidate|unlink_chunk|realloc|_int_realloc|__GI___libc_malloc|tcache_|__rdl_)")
MEMCPY = re.compile(r"^__mem(move|cpy|set)_")
SYSCALL = re.compile(r"^__(?:x64|do)_sys_(\w+)")
WRITER_THREAD = "tracing-appende"


def read_samples(lines):
    """Yield (thread_name, frames) per sample; frames run from the innermost outwards."""
    comm, frames, frame = None, [], None
    for line in lines:
        line = line.rstrip("\n")
        if not line.strip():
            if comm is not None:
                yield comm, with_functions(frames)
            comm, frames, frame = None, [], None
        elif not line.startswith((" ", "\t")):
            comm = line.rsplit(None, 1)[0].strip()
        elif line.startswith("\t"):
            address, _, symbol = line.strip().partition(" ")
            frame = {"address": address, "kernel": address.startswith("ffffffff8"), "symbol": symbol, "source": ""}
            frames.append(frame)
        elif frame is not None:
            frame["source"] = line.strip()
    if comm is not None:
        yield comm, with_functions(frames)


def with_functions(frames):
    """Set each frame's "function" to the names of every function at its address.

    perf prints one frame per function inlined at an address, plus the function that contains
    them, so these names include the hook or method that the code ran in.
    """
    names_by_address = collections.defaultdict(list)
    for frame in frames:
        names_by_address[frame["address"]].append(frame["symbol"])
    for frame in frames:
        frame["function"] = " / ".join(names_by_address[frame["address"]])
    return frames


def categorize(comm, frames, repo_root, owners):
    if comm == WRITER_THREAD:
        return "access log: writer thread (writing lines to the file)"
    if frames and frames[0]["kernel"]:
        for frame in frames:
            match = SYSCALL.match(frame["symbol"])
            if match:
                return f"kernel: {match.group(1)} system call"
        return "kernel: other (interrupts, softirq outside a system call)"
    for frame in frames:
        label = frame["source"].replace(repo_root + "/src/", "gatehouse:src/") + " in " + frame["function"]
        for category, pattern in owners:
            if pattern.search(label):
                return category
    return "other (standard library, allocator or unknown caller)"


def main():
    repo_root = sys.argv[1].rstrip("/")
    owners = [(category, re.compile(pattern)) for category, pattern in OWNERS]
    counts = collections.Counter()
    allocator = memcpy = total = 0
    for comm, frames in read_samples(sys.stdin):
        total += 1
        counts[categorize(comm, frames, repo_root, owners)] += 1
        user_frames = [frame for frame in frames if not frame["kernel"]]
        if user_frames and not frames[0]["kernel"]:
            allocator += bool(ALLOCATOR.match(user_frames[0]["symbol"]))
            memcpy += bool(MEMCPY.match(user_frames[0]["symbol"]))
    if total == 0:
        sys.exit("error: no samples in the input; pass the output of perf script with -F ...,sym,srcline")
    print(f"{total} samples")
    for category, count in counts.most_common():
        print(f"{100 * count / total:6.1f}%  {category}")
    print(f"\nincluded above: allocator (malloc, free) {100 * allocator / total:.1f}%, "
          f"memcpy/memmove {100 * memcpy / total:.1f}%")


if __name__ == "__main__":
    main()
