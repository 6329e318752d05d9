-- name: latency-by-minute
-- description: Question 1 (latency over time): calls, errors, p50/p95/p99 latency, tokens and cost per time step and group, from the per-minute aggregates (spans_minutely) instead of raw spans; step_seconds rolls minutes up (60, 300, 3600...), by groups by model, service, kind or name.
-- params: since_seconds UInt32 = 3600, by String = 'model', step_seconds UInt32 = 60, kind String = ''
SELECT
    toStartOfInterval(minute, toIntervalSecond(greatest({step_seconds:UInt32}, 60))) AS time,
    multiIf({by:String} = 'service', toString(service), {by:String} = 'kind', toString(kind),
            {by:String} = 'name', toString(name), if(model = '', toString(kind), toString(model))) AS group,
    countMerge(calls) AS calls,
    countIfMerge(errors) AS errors,
    round(quantilesTDigestMerge(0.5, 0.95, 0.99)(latency_ns)[1] / 1e6, 1) AS p50_ms,
    round(quantilesTDigestMerge(0.5, 0.95, 0.99)(latency_ns)[2] / 1e6, 1) AS p95_ms,
    round(quantilesTDigestMerge(0.5, 0.95, 0.99)(latency_ns)[3] / 1e6, 1) AS p99_ms,
    round(maxMerge(max_duration_ns) / 1e6, 1) AS max_ms,
    sumMerge(sum_input_tokens) AS input_tokens,
    sumMerge(sum_output_tokens) AS output_tokens,
    round(sumMerge(sum_cost_usd), 6) AS cost_usd
FROM spans_minutely
WHERE minute >= toStartOfMinute(now() - toIntervalSecond({since_seconds:UInt32}))
  AND (({kind:String} = '' AND kind IN ('LLM', 'RETRIEVER', 'EMBEDDING', 'RERANKER')) OR kind = {kind:String})
GROUP BY time, group
ORDER BY time, group
