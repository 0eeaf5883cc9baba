-- wrk script: POST each file given after `--` as multipart/form-data (field `image`) with a bearer token.
-- Token from BENCH_TOKEN; BENCH_MAX_REQUESTS (per wrk thread) stops the thread after that many answers
-- and says so on stderr (wrk itself would sleep out its -d duration).
-- Prints one JSON line at the end: requests, duration, errors and latency percentiles (microseconds).

local boundary = "covidxray-bench-boundary"
local requests = {}
local index = 0
local answered = 0
local limit = tonumber(os.getenv("BENCH_MAX_REQUESTS") or "")

local function read(path)
   local fh = assert(io.open(path, "rb"))
   local data = fh:read("*a")
   fh:close()
   return data
end

function init(args)
   local headers = {
      ["Authorization"] = "Bearer " .. assert(os.getenv("BENCH_TOKEN"), "BENCH_TOKEN is not set"),
      ["Content-Type"] = "multipart/form-data; boundary=" .. boundary,
   }
   for _, path in ipairs(args) do
      local name = path:match("([^/]+)$")
      local body = "--" .. boundary .. "\r\n"
         .. 'Content-Disposition: form-data; name="image"; filename="' .. name .. '"\r\n'
         .. "Content-Type: application/octet-stream\r\n\r\n"
         .. read(path) .. "\r\n--" .. boundary .. "--\r\n"
      requests[#requests + 1] = wrk.format("POST", nil, headers, body)
   end
   assert(#requests > 0, "give the files to post after --")
   if limit then
      function response(status, headers, body)
         answered = answered + 1
         if answered == limit then
            io.stderr:write("limit reached\n")  -- bench/clients.py then stops wrk with SIGINT
            io.stderr:flush()
            wrk.thread:stop()
         end
      end
   end
end

function request()
   index = index % #requests + 1
   return requests[index]
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      '{"requests": %d, "duration_us": %d, "errors": {"connect": %d, "read": %d, "write": %d, '
         .. '"status": %d, "timeout": %d}, "p50_us": %d, "p95_us": %d, "p99_us": %d, "max_us": %d}\n',
      summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
      latency:percentile(50), latency:percentile(95), latency:percentile(99), latency.max))
end
