-- name: slowest-calls
-- description: Question 1 (latency): the slowest LLM and retriever calls in the time range.
-- params: since_seconds UInt32 = 3600, limit UInt32 = 20, kind String = ''
SELECT
    trace_id,
    name,
    kind,
    service,
    model,
    round(duration_ns / 1e6, 1) AS duration_ms,
    status,
    start_time
FROM spans
WHERE start_time >= now64(9) - toIntervalSecond({since_seconds:UInt32})
  AND (({kind:String} = '' AND kind IN ('LLM', 'RETRIEVER')) OR kind = {kind:String})
ORDER BY duration_ns DESC
LIMIT {limit:UInt32}
