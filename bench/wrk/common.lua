-- Shared by docraft.lua and etcd.lua (loaded with dofile): thread numbering, the user document both
-- systems store, base64, the Authorization header, and done(), which prints the one line bench.wrk_load parses.

-- setup() runs in wrk's main Lua state, once per thread, before that thread's init().
local next_thread = 0
function setup(thread)
  thread:set("thread_index", next_thread)
  next_thread = next_thread + 1
end

-- wrk decides from its main Lua state, where init() never runs, whether a script makes its own requests: so
-- request() exists from the start and calls the generator each script's init() puts in next_request.
function request()
  return next_request()
end

-- Thread t of a write phase writes ids FIRST + t * ID_STRIDE, FIRST + t * ID_STRIDE + 1, ...
ID_STRIDE = 10000000
COUNTRIES = { "United States", "Australia", "Canada", "France", "Japan" }

-- Every request carries BENCH_AUTHORIZATION when it is set (kept out of the command line, which other users can read).
local authorization = os.getenv("BENCH_AUTHORIZATION")
HEADERS = { ["Content-Type"] = "application/json" }
if authorization and authorization ~= "" then
  HEADERS["Authorization"] = authorization
end

function user_json(id)
  return string.format(
    '{"id":%d,"first_name":"Bench","last_name":"User%d","country":"%s","address":"1 Main St.","city":"Town"}',
    id, id, COUNTRIES[id % #COUNTRIES + 1])
end

local ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

local function digit(n)
  return ALPHABET:sub(n + 1, n + 1)
end

function base64(text)
  local out = {}
  for i = 1, #text, 3 do
    local a, b, c = text:byte(i, i + 2)
    local n = a * 65536 + (b or 0) * 256 + (c or 0)
    out[#out + 1] = digit(math.floor(n / 262144) % 64) .. digit(math.floor(n / 4096) % 64)
      .. (b and digit(math.floor(n / 64) % 64) or "=") .. (c and digit(n % 64) or "=")
  end
  return table.concat(out)
end

-- Reads draw keys uniformly from [lo, hi] with a generator seeded by the thread number, so every run
-- (and both systems) asks for the same key sequence.
function key_picker(lo, hi)
  math.randomseed(thread_index + 1)
  return function()
    return math.random(lo, hi)
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_REPORT {"requests":%d,"duration_us":%d,"connect_errors":%d,"read_errors":%d,"write_errors":%d,'
      .. '"status_errors":%d,"timeouts":%d,"p50_us":%d,"p99_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.mean))
end
