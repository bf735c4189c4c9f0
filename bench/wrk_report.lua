-- wrk: the path comes from WRK_PATH (default: the URL's); with BATCH_SIZE set, each request is a
-- POST /jobs/batch of that many no-op jobs. A JSON summary line ends the run.
local path = os.getenv("WRK_PATH")
if path then
  wrk.path = path
end

local batch = tonumber(os.getenv("BATCH_SIZE") or "")
if batch then
  local items = {}
  for i = 1, batch do
    items[i] = '{"task":"noop","args":{}}'
  end
  wrk.method = "POST"
  wrk.path = "/jobs/batch"
  wrk.headers["Content-Type"] = "application/json"
  wrk.body = '{"jobs":[' .. table.concat(items, ",") .. ']}'
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_us":%d,"errors":%d,"non2xx":%d,"p50_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99), latency.max))
end
