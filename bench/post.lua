wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. (os.getenv("BENCH_KEY") or "sk-bench-0123456789abcdef")
wrk.body = '{"model":"bench-model","messages":[{"role":"user","content":"Hello, who are you?"}],"max_tokens":16}'
done = function(summary, latency, requests)
  io.write(string.format("JSON {\"requests\":%d,\"duration_us\":%d,\"non2xx\":%d,\"errors\":%d,\"p50\":%d,\"p90\":%d,\"p99\":%d,\"mean\":%.1f}\n",
    summary.requests, summary.duration, summary.errors.status, summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean))
end
