-- name: expensive-calls
-- description: Question 2 (tokens and cost): the most expensive calls, with every token class.
-- params: since_seconds UInt32 = 3600, limit UInt32 = 20
SELECT
    trace_id,
    name,
    model,
    input_tokens,
    cached_tokens,
    output_tokens,
    reasoning_tokens,
    round(cost_usd, 6) AS cost_usd,
    cost_source
FROM spans
WHERE cost_usd > 0 AND start_time >= now64(9) - toIntervalSecond({since_seconds:UInt32})
ORDER BY cost_usd DESC
LIMIT {limit:UInt32}
