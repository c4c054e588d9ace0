-- wrk script for bench/intake.py: POST /v1/jobs with a realistic job body, or
-- GET (the /healthz ceiling) when WRK_METHOD=GET.
--
-- Each request carries its own custom_id and Idempotency-Key, unique across
-- runs (WRK_RUN), so every POST is a new job that goes through the idempotency
-- path, a bearer key when
-- WRK_API_KEY is set, a webhook to a literal public address (no DNS at intake)
-- with its own secret, metadata and a generation_config.
-- done() prints one line, "WRK_JSON {...}", that bench/intake.py parses:
-- requests, duration, req/s, latency percentiles (ms), socket errors and the
-- count of each non-2xx status.

local api_key = os.getenv("WRK_API_KEY") or ""
local method = os.getenv("WRK_METHOD") or "POST"
-- unique per wrk run: an Idempotency-Key (and custom_id) used by an earlier
-- run against the same Redis would make every request a replay
local run = os.getenv("WRK_RUN") or tostring(os.time())
local threads = {}
local counter = 0
tid = 0 -- a global: setup() gives each thread its own number (thread:set)
statuses = {} -- a global: done() reads each thread's (thread:get)
replayed = 0 -- answers with Idempotent-Replayed: not a new job (a reused key)

local prompt = "Summarise the attached customer ticket in three sentences, then list "
  .. "the product areas it touches and a suggested priority from P0 to P3. Ticket: "
  .. "the export button on the billing page times out for accounts with more than "
  .. "ten thousand invoices; the customer retried four times and opened a second "
  .. "ticket. [sim duration=1]"

function setup(thread)
  tid = tid + 1
  thread:set("tid", tid)
  table.insert(threads, thread)
end

local function body(n)
  local id = run .. "-" .. tid .. "-" .. n
  return '{"interaction":{"model":"sim-model","input":"' .. prompt .. '",'
    .. '"generation_config":{"temperature":0.2,"max_output_tokens":512}},'
    .. '"webhook":{"url":"https://93.184.215.14/hooks/interq",'
    .. '"secret":"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"},'
    .. '"metadata":{"ticket":"T-' .. id .. '","team":"billing"},'
    .. '"custom_id":"ticket-' .. id .. '","timeout_s":3600}'
end

function request()
  counter = counter + 1
  local headers = {}
  if api_key ~= "" then
    headers["Authorization"] = "Bearer " .. api_key
  end
  if method == "GET" then
    return wrk.format("GET", nil, headers)
  end
  headers["Content-Type"] = "application/json"
  headers["Idempotency-Key"] = "bench-" .. run .. "-" .. tid .. "-" .. counter
  return wrk.format("POST", nil, headers, body(counter))
end

function response(status, headers, body)
  if headers["idempotent-replayed"] or headers["Idempotent-Replayed"] then
    replayed = replayed + 1
  end
  if status < 200 or status > 299 then
    local k = tostring(status)
    statuses[k] = (statuses[k] or 0) + 1
  end
end

function done(summary, latency, requests)
  local non2xx = {}
  local replays = 0
  for _, t in ipairs(threads) do
    replays = replays + (t:get("replayed") or 0)
    local s = t:get("statuses")
    for k, v in pairs(s or {}) do
      non2xx[k] = (non2xx[k] or 0) + v
    end
  end
  local parts = {}
  for k, v in pairs(non2xx) do
    table.insert(parts, string.format('"%s":%d', k, v))
  end
  local e = summary.errors
  local secs = summary.duration / 1e6
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_s":%.3f,"per_s":%.1f,'
      .. '"p50_ms":%.3f,"p90_ms":%.3f,"p99_ms":%.3f,"max_ms":%.3f,'
      .. '"socket_errors":{"connect":%d,"read":%d,"write":%d,"timeout":%d},'
      .. '"non2xx":{%s},"replayed":%d}\n',
    summary.requests, secs, summary.requests / secs,
    latency:percentile(50) / 1000, latency:percentile(90) / 1000,
    latency:percentile(99) / 1000, latency.max / 1000,
    e.connect, e.read, e.write, e.timeout, table.concat(parts, ","), replays))
end
