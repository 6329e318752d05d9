-- name: slowest-llm
-- description: Question 1 (latency): the slowest LLM calls, with model and token counts.
-- params: since_seconds UInt32 = 3600, limit UInt32 = 20
SELECT
    trace_id,
    span_id,
    name,
    service,
    model,
    provider,
    round(duration_ns / 1e6, 1) AS duration_ms,
    input_tokens,
    output_tokens,
    status,
    start_time
FROM spans
WHERE kind = 'LLM' AND start_time >= now64(9) - toIntervalSecond({since_seconds:UInt32})
ORDER BY duration_ns DESC
LIMIT {limit:UInt32}
