-- wrk script: POST one small non-streaming chat body on every request, then print a JSON summary line that
-- bench/wrkload.py parses (wrk's own text output rounds the counts and hides the per-kind error totals).
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. (os.getenv("BENCH_API_KEY") or "bench")
wrk.body = '{"model":"bench","messages":[{"role":"user","content":"Say ok."}],"max_tokens":8}'

-- BENCH_WRONG_KEYS=1: a brute-force caller, a different made-up key on every request.
if os.getenv("BENCH_WRONG_KEYS") == "1" then
  math.randomseed(os.time())
  request = function()
    wrk.headers["Authorization"] = string.format("Bearer sk-gw-guess%08x%08x",
      math.random(0, 0x7fffffff), math.random(0, 0x7fffffff))
    return wrk.format()
  end
end

function done(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,"connect_errors":%d,"read_errors":%d,' ..
    '"write_errors":%d,"status_errors":%d,"timeouts":%d,"p50_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, summary.bytes, errors.connect, errors.read, errors.write,
    errors.status, errors.timeout, latency:percentile(50), latency:percentile(99), latency.max))
end
