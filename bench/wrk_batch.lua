-- wrk: POST /jobs/batch with BATCH_SIZE no-op jobs per request, and a JSON summary line.
local n = tonumber(os.getenv("BATCH_SIZE") or "1000")
local items = {}
for i = 1, n do
  items[i] = '{"task":"noop","args":{}}'
end
wrk.method = "POST"
wrk.path = "/jobs/batch"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"jobs":[' .. table.concat(items, ",") .. ']}'

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_us":%d,"errors":%d,"non2xx":%d,"p50_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99), latency.max))
end
