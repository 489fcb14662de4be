-- wrk script: Alertmanager v4 webhook payloads of 10 alerts each, every
-- payload with fresh fingerprints so none is dropped as a duplicate.
local token = os.getenv("CANARYD_TOKEN") or "bench-token"
local counter = 0

local function alert(i, n)
  return string.format(
    '{"status":"firing","labels":{"alertname":"ModelHighErrorRate","model":"model-%d","severity":"critical"},' ..
    '"annotations":{"summary":"bench"},"startsAt":"2026-03-01T12:00:00Z","endsAt":"0001-01-01T00:00:00Z",' ..
    '"generatorURL":"http://prometheus/graph","fingerprint":"%x-%d"}', i % 100, n, i)
end

request = function()
  counter = counter + 1
  local alerts = {}
  for i = 1, 10 do
    alerts[i] = alert(i, counter)
  end
  local body = '{"version":"4","groupKey":"{}:{alertname=\\"ModelHighErrorRate\\"}","truncatedAlerts":0,' ..
    '"status":"firing","receiver":"canaryd","groupLabels":{},"commonLabels":{},"commonAnnotations":{},' ..
    '"externalURL":"http://alertmanager:9093","alerts":[' .. table.concat(alerts, ",") .. ']}'
  return wrk.format("POST", "/api/v1/alertmanager", {
    ["Content-Type"] = "application/json",
    ["Authorization"] = "Bearer " .. token,
  }, body)
end

done = function(summary, latency, requests)
  local errors = summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout
  io.write(string.format("payloads/s: %.0f (10 alerts each), p50 %.2f ms, p99 %.2f ms, non-2xx or errors: %d\n",
    summary.requests / (summary.duration / 1e6), latency:percentile(50) / 1000, latency:percentile(99) / 1000, errors))
end
