-- wrk script of the kerasserve benchmark: POSTs image files (raw body) in turn and prints one JSON
-- line at the end. Usage: wrk ... -s bench/post.lua URL -- CONTENT_TYPE FILE [FILE ...]
local threads = {}
local bodies = {}
local content_type = "application/octet-stream"
local counter = 0
non2xx = 0  -- global: read from each thread in done()

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  content_type = args[1]
  for i = 2, #args do
    local f = assert(io.open(args[i], "rb"))
    bodies[#bodies + 1] = f:read("*a")
    f:close()
  end
  counter = math.random(#bodies)
end

-- A multipart body gets a new boundary of the same length per request, as real clients send
-- (requests, curl and browsers draw one per request); a server that caches per boundary gains nothing.
local boundary = nil
local pattern = nil

local function fresh_boundary()
  local chars = {}
  for i = 1, #boundary do
    chars[i] = string.format("%x", math.random(0, 15))
  end
  return table.concat(chars)
end

function request()
  counter = counter % #bodies + 1
  if boundary == nil then
    boundary = content_type:match("boundary=(.+)$") or ""
    pattern = boundary:gsub("%p", "%%%0")  -- the boundary as a Lua pattern, escaped once
  end
  if boundary == "" then
    return wrk.format("POST", nil, { ["Content-Type"] = content_type }, bodies[counter])
  end
  local new = fresh_boundary()
  local body = bodies[counter]:gsub(pattern, new)
  local header = content_type:gsub(pattern, new)
  return wrk.format("POST", nil, { ["Content-Type"] = header }, body)
end

function response(status, headers, body)
  if status < 200 or status > 299 then
    non2xx = non2xx + 1
  end
end

function done(summary, latency, requests)
  local bad = 0
  for _, thread in ipairs(threads) do
    bad = bad + thread:get("non2xx")
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests": %d, "duration_us": %d, "bytes": %d, "connect_errors": %d, "read_errors": %d, ' ..
    '"write_errors": %d, "non2xx": %d, "timeouts": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, ' ..
    '"max_us": %d, "mean_us": %.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, bad, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
