-- name: latency-percentiles
-- description: Question 1 (latency): p50/p95/p99 latency of LLM and retriever calls, grouped by model, service, kind or name.
-- params: since_seconds UInt32 = 3600, by String = 'model'
SELECT
    multiIf({by:String} = 'service', toString(service), {by:String} = 'kind', toString(kind),
            {by:String} = 'name', toString(name), if(model = '', toString(kind), toString(model))) AS group,
    count() AS calls,
    round(quantile(0.5)(duration_ns) / 1e6, 1) AS p50_ms,
    round(quantile(0.95)(duration_ns) / 1e6, 1) AS p95_ms,
    round(quantile(0.99)(duration_ns) / 1e6, 1) AS p99_ms,
    countIf(status = 'ERROR') AS errors
FROM spans
WHERE kind IN ('LLM', 'RETRIEVER', 'EMBEDDING', 'RERANKER')
  AND start_time >= now64(9) - toIntervalSecond({since_seconds:UInt32})
GROUP BY group
ORDER BY p95_ms DESC
