-- POSTs one fixed body (read from BODY_FILE) with the headers in HEADERS ("k: v|k: v"),
-- and prints a JSON summary on stdout when done.
local body_file = os.getenv("BODY_FILE")
local f = assert(io.open(body_file, "rb"))
wrk.method = "POST"
wrk.body = f:read("*all")
f:close()
for pair in string.gmatch(os.getenv("HEADERS") or "", "([^|]+)") do
  local k, v = string.match(pair, "^%s*(.-)%s*:%s*(.-)%s*$")
  wrk.headers[k] = v
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'RESULT {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "mean_us": %.1f, ' ..
    '"errors": %d, "non2xx": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), latency.mean,
    e.connect + e.read + e.write + e.timeout, e.status))
end
