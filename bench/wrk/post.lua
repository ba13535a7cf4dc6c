-- wrk script for the benchmark (bench/run.py): POSTs JSON bodies in turn and prints one machine-readable line.
--   wrk -t1 -c8 -d8s -s bench/wrk/post.lua http://127.0.0.1:9200 -- BODIES_FILE PATH
--   wrk ... -- BODIES_FILE PATH "Authorization: ApiKey ..."      (more arguments: headers sent with every request)
-- BODIES_FILE holds one JSON body per line; PATH is the request path (e.g. /_inference/text_embedding/x).
-- At the end it prints `RESULT {...}`: requests, duration, errors (non-2xx and socket) and latency percentiles.

local bodies = {}
local path = "/"
local headers = { ["Content-Type"] = "application/json" }
local i = 0

function init(args)
  for line in io.lines(args[1]) do
    if #line > 0 then
      bodies[#bodies + 1] = line
    end
  end
  path = args[2]
  for k = 3, #args do
    local name, value = string.match(args[k], "^([^:]+):%s*(.*)$")
    if name == nil then
      error("not a header (Name: value): " .. args[k])
    end
    headers[name] = value
  end
  if #bodies == 0 then
    error("no request bodies in " .. args[1])
  end
end

function request()
  i = i + 1
  return wrk.format("POST", path, headers, bodies[(i % #bodies) + 1])
end

function done(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format('RESULT {"requests": %d, "duration_us": %d, "non2xx": %d, "socket_errors": %d, '
    .. '"p50_us": %d, "p95_us": %d, "p99_us": %d}\n', summary.requests, summary.duration, errors.status,
    errors.connect + errors.read + errors.write + errors.timeout,
    latency:percentile(50), latency:percentile(95), latency:percentile(99)))
end
