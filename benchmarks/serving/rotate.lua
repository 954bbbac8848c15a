-- wrk script for benchmarks/serving_benchmark.py: POST a different real photo with each request,
-- count status codes, check bodies, and print one JSON line of results.
--
-- Environment: BENCH_PHOTOS  a file listing photo paths, one a line (the requests go round them in order)
--              BENCH_MODE    raw (Content-Type image/jpeg) | multipart (one form part "file")
--              BENCH_EXPECT  a string every 200 body must hold (e.g. "count")
--              BENCH_STOP_AFTER  stop after this many responses (0: run for wrk's -d)
-- Use one wrk thread (-t1): the counters below are per thread.

local bodies = {}
local idx = 0
local mode = os.getenv("BENCH_MODE") or "raw"
local expect = os.getenv("BENCH_EXPECT") or ""
local stop_after = tonumber(os.getenv("BENCH_STOP_AFTER") or "0")
local boundary = "----bintallybenchboundary7MA4YWxk"
local headers = {}

n_total, n200, n503, n503_no_retry_after, n5xx_other, n4xx, n_other, n_bad_body = 0, 0, 0, 0, 0, 0, 0, 0

function init(args)
  local list = assert(io.open(os.getenv("BENCH_PHOTOS"), "r"))
  for path in list:lines() do
    local f = assert(io.open(path, "rb"))
    local data = f:read("*all")
    f:close()
    if mode == "multipart" then
      local name = path:match("([^/]+)$")
      data = "--" .. boundary .. "\r\nContent-Disposition: form-data; name=\"file\"; filename=\"" .. name ..
             "\"\r\nContent-Type: image/jpeg\r\n\r\n" .. data .. "\r\n--" .. boundary .. "--\r\n"
    end
    bodies[#bodies + 1] = data
  end
  list:close()
  if mode == "multipart" then
    headers["Content-Type"] = "multipart/form-data; boundary=" .. boundary
  else
    headers["Content-Type"] = "image/jpeg"
  end
end

function request()
  idx = idx % #bodies + 1
  return wrk.format("POST", nil, headers, bodies[idx])
end

function response(status, hdrs, body)
  n_total = n_total + 1
  if status == 200 then
    n200 = n200 + 1
    if expect ~= "" and not string.find(body, expect, 1, true) then n_bad_body = n_bad_body + 1 end
  elseif status == 503 then
    n503 = n503 + 1
    if not (hdrs["Retry-After"] or hdrs["retry-after"]) then n503_no_retry_after = n503_no_retry_after + 1 end
  elseif status >= 500 then
    n5xx_other = n5xx_other + 1
  elseif status >= 400 then
    n4xx = n4xx + 1
  else
    n_other = n_other + 1
  end
  if stop_after > 0 and n_total == stop_after then
    -- wrk's main thread sleeps for -d whatever the threads do: the benchmark sends wrk SIGINT on this line
    io.write("STOPPED\n")
    io.flush()
    wrk.thread:stop()
  end
end

local threads = {}
function setup(thread)
  threads[#threads + 1] = thread
end

function done(summary, latency, requests)
  local keys = {"n_total", "n200", "n503", "n503_no_retry_after", "n5xx_other", "n4xx", "n_other", "n_bad_body"}
  local sums = {}
  for _, k in ipairs(keys) do sums[k] = 0 end
  for _, t in ipairs(threads) do
    for _, k in ipairs(keys) do sums[k] = sums[k] + (t:get(k) or 0) end
  end
  local parts = {}
  for _, k in ipairs(keys) do parts[#parts + 1] = string.format('"%s": %d', k, sums[k]) end
  local e = summary.errors
  io.write(string.format('RESULT {"requests": %d, "duration_us": %d, "bytes": %d, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
    '"latency_us": {"mean": %.1f, "p50": %d, "p90": %d, "p99": %d, "p999": %d, "max": %d}, %s}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
    latency.max, table.concat(parts, ", ")))
end
