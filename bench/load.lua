-- wrk script driven by bench/run.py through the environment.
--   BENCH_MODE=window  GET /v1/windows/BENCH_PN/<random seeded customer> with Bearer BENCH_KEY
--   BENCH_MODE=send    POST BENCH_PATH with BENCH_BODY, its %s the number of a random seeded open customer
--                      (1555 then BENCH_FIRST + 1 … BENCH_FIRST + BENCH_CUSTOMERS, 7 digits); Bearer BENCH_KEY
--                      when set; no Idempotency-Key
--   BENCH_MODE=bodies  POST each pre-signed delivery of BENCH_BODIES ("<signature>\t<json>" lines) once;
--                      thread k of BENCH_THREADS takes lines k, k+n, …; a wrapped pool is reported.
-- done() prints one "BENCH_JSON {…}" line for run.py (wrk's Lua has no HMAC, hence the pool).
local mode = os.getenv("BENCH_MODE")
local threads, started = {}, 0

function setup(thread)
  thread:set("id", started)
  started = started + 1
  table.insert(threads, thread)
end

local pool, size, next_i = {}, 0, 0
local prefix, headers, customers, first, body
wrapped = 0

function init(args)
  if mode == "window" then
    prefix = "/v1/windows/" .. os.getenv("BENCH_PN") .. "/"
    headers = { ["Authorization"] = "Bearer " .. os.getenv("BENCH_KEY") }
    customers = tonumber(os.getenv("BENCH_CUSTOMERS"))
    math.randomseed(os.time() * 97 + id)
    return
  end
  if mode == "send" then
    prefix, body = os.getenv("BENCH_PATH"), os.getenv("BENCH_BODY")
    headers = { ["Content-Type"] = "application/json" }
    if (os.getenv("BENCH_KEY") or "") ~= "" then
      headers["Authorization"] = "Bearer " .. os.getenv("BENCH_KEY")
    end
    customers, first = tonumber(os.getenv("BENCH_CUSTOMERS")), tonumber(os.getenv("BENCH_FIRST"))
    math.randomseed(os.time() * 97 + id)
    return
  end
  local nthreads, line_no = tonumber(os.getenv("BENCH_THREADS")), 0
  for line in io.lines(os.getenv("BENCH_BODIES")) do
    if line_no % nthreads == id then
      local tab = line:find("\t", 1, true)
      local h = { ["Content-Type"] = "application/json", ["X-Hub-Signature-256"] = line:sub(1, tab - 1) }
      size = size + 1
      pool[size] = wrk.format("POST", "/webhooks/whatsapp", h, line:sub(tab + 1))
    end
    line_no = line_no + 1
  end
end

function request()
  if mode == "window" then
    return wrk.format("GET", prefix .. string.format("1555%07d", math.random(customers)), headers)
  end
  if mode == "send" then
    local to = string.format("1555%07d", first + math.random(customers))
    return wrk.format("POST", prefix, headers, string.format(body, to))
  end
  next_i = next_i + 1
  if next_i > size then
    next_i, wrapped = 1, wrapped + 1
  end
  return pool[next_i]
end

function done(summary, latency, requests)
  local w = 0
  for _, t in ipairs(threads) do
    w = w + (t:get("wrapped") or 0)
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests": %d, "duration_us": %d, "p50_us": %.0f, "p99_us": %.0f, "max_us": %.0f, '
      .. '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, "wrapped": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), latency.max,
    e.connect, e.read, e.write, e.status, e.timeout, w))
end
