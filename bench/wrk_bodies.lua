-- wrk script for bench/loadgen.py: POSTs the JSON bodies of a file (one per line)
-- in rotation, and prints one machine-readable summary line when the run ends, with
-- the count of each non-2xx status the server answered.
-- An optional second argument is sent as the Authorization header.
local bodies = {}
local next_body = 0
local headers = {["Content-Type"] = "application/json"}
local threads = {}
statuses = {}

setup = function(thread)
  threads[#threads + 1] = thread
end

init = function(args)
  for line in io.lines(args[1]) do
    if #line > 0 then bodies[#bodies + 1] = line end
  end
  next_body = math.random(#bodies)
  if args[2] and #args[2] > 0 then headers["Authorization"] = args[2] end
end

request = function()
  next_body = next_body % #bodies + 1
  return wrk.format("POST", nil, headers, bodies[next_body])
end

response = function(status, headers, body)
  if status > 299 then statuses[status] = (statuses[status] or 0) + 1 end
end

done = function(summary, latency, requests)
  local e = summary.errors
  local totals, counts = {}, {}
  for _, thread in ipairs(threads) do
    for status, n in pairs(thread:get("statuses") or {}) do
      totals[status] = (totals[status] or 0) + n
    end
  end
  for status, n in pairs(totals) do
    counts[#counts + 1] = string.format('"%d":%d', status, n)
  end
  io.write(string.format(
    'LOADGEN {"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,' ..
    '"status":%d,"timeout":%d,"p50_us":%d,"p99_us":%d,"statuses":{%s}}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), table.concat(counts, ",")))
end
