-- wrk script for benchmarks/bench_service.py: POST /v1/predict with N-record payloads over a fleet
-- of M machines, each request with a unique Idempotency-Key (so each one is new work).
--   wrk -t1 -c16 -d20s -s benchmarks/bench_service.lua http://127.0.0.1:PORT/v1/predict -- TOKEN PREFIX 10 1000 1 [BASE]
-- With BASE (epoch seconds), each record carries a timestamp: BASE + 5 min per earlier visit of
-- its machine, and values that change from visit to visit, so every machine's history grows by
-- one step per visit (as a fleet reporting every 5 minutes would) and the forecasters read it.
-- Without it, records have no timestamp: all of a run's observations fall into the same step.
-- Prints one JSON line at the end: requests, non-2xx, socket errors, latency percentiles (ms).

local threads = {}
local counter = 0

function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end

function init(args)
  token = args[1]
  prefix = args[2] or "bench"
  records = tonumber(args[3] or "10")
  machines = tonumber(args[4] or "1000")
  nthreads = tonumber(args[5] or "1")
  base = tonumber(args[6] or "0")
  statuses = 0
end

function request()
  counter = counter + 1
  local n = (counter - 1) * nthreads + tid -- 0, 1, 2, ... over all threads: every machine in turn
  local parts = {}
  for j = 0, records - 1 do
    local k = n * records + j
    local m = k % machines
    if base > 0 then
      local visit = math.floor(k / machines)
      parts[#parts + 1] = string.format(
        '{"id":"vm%d","timestamp":"%s","cpuLoad":%d,"memoryUsage":%.1f,"storageUsage":%.2f}',
        m, os.date("!%Y-%m-%dT%H:%M:%SZ", base + 300 * visit), (visit * 37 + m * 11) % 90 + 5,
        40.0 + (visit * 13 + m) % 20, 20 + 0.01 * visit + (m % 7))
    else
      parts[#parts + 1] = string.format(
        '{"id":"vm%d","cpuLoad":%d,"memoryUsage":%.1f,"storageUsage":20}', m, (n + j) % 100, 40.0 + j)
    end
  end
  local body = '{"usageData":[' .. table.concat(parts, ",") .. "]}"
  local headers = {
    ["Authorization"] = "Bearer " .. token,
    ["Content-Type"] = "application/json",
    ["Idempotency-Key"] = prefix .. "-" .. tid .. "-" .. counter,
  }
  return wrk.format("POST", nil, headers, body)
end

function response(status, headers, body)
  if status ~= 200 then
    statuses = statuses + 1
  end
end

function done(summary, latency, requests)
  local non200 = 0
  for _, t in ipairs(threads) do
    non200 = non200 + (t:get("statuses") or 0)
  end
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_s":%.3f,"non200":%d,"errors":{"connect":%d,"read":%d,"write":%d,"timeout":%d},'
      .. '"latency_ms":{"mean":%.2f,"p50":%.2f,"p90":%.2f,"p99":%.2f,"max":%.2f}}\n',
    summary.requests, summary.duration / 1e6, non200, e.connect, e.read, e.write, e.timeout,
    latency.mean / 1000, latency:percentile(50) / 1000, latency:percentile(90) / 1000,
    latency:percentile(99) / 1000, latency.max / 1000))
end
