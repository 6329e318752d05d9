-- name: web-rollups
-- description: Calls, errors, p50/p95/p99 latency, tokens and cost per time step and group, from the per-minute aggregate states (spans_minutely); minutes roll up to any step, groups are by model, service, kind or name. kind '' means the analysed kinds (LLM, RETRIEVER, EMBEDDING, RERANKER), '*' every kind.
-- params: from_s UInt32 = 0, until_s UInt32 = 0, step_seconds UInt32 = 60, by String = 'model', kind String = '', service String = '', model String = ''
SELECT
    toUnixTimestamp(toStartOfInterval(minute, toIntervalSecond(greatest({step_seconds:UInt32}, 60)))) AS t,
    multiIf({by:String} = 'service', toString(service), {by:String} = 'kind', toString(kind),
            {by:String} = 'name', toString(name), if(model = '', toString(kind), toString(model))) AS group,
    countMerge(calls) AS calls,
    countIfMerge(errors) AS errors,
    quantilesTDigestMerge(0.5, 0.95, 0.99)(latency_ns) AS latency_ns,
    maxMerge(max_duration_ns) AS max_ns,
    sumMerge(sum_input_tokens) AS input_tokens,
    sumMerge(sum_output_tokens) AS output_tokens,
    sumMerge(sum_cached_tokens) AS cached_tokens,
    sumMerge(sum_reasoning_tokens) AS reasoning_tokens,
    sumMerge(sum_total_tokens) AS total_tokens,
    sumMerge(sum_cost_usd) AS cost_usd
FROM spans_minutely
WHERE minute >= toDateTime({from_s:UInt32}) AND minute < toDateTime({until_s:UInt32})
  AND (({kind:String} = '' AND kind IN ('LLM', 'RETRIEVER', 'EMBEDDING', 'RERANKER'))
       OR {kind:String} = '*' OR kind = {kind:String})
  AND ({service:String} = '' OR service = {service:String})
  AND ({model:String} = '' OR model = {model:String})
GROUP BY t, group
ORDER BY t, group
