-- wrk script for bench/compare.sh: prints one machine-readable summary line at the end of a
-- run, because wrk's --latency table stops at p99. Latencies are in microseconds, from wrk's
-- own histogram of all requests of the run.
done = function(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    "compare: requests %d duration_us %d errors %d p50_us %d p99_us %d p999_us %d\n",
    summary.requests,
    summary.duration,
    errors.connect + errors.read + errors.write + errors.status + errors.timeout,
    latency:percentile(50),
    latency:percentile(99),
    latency:percentile(99.9)
  ))
end
