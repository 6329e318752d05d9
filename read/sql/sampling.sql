-- name: sampling
-- description: Tail sampling over the traces that started in the range (from traces FINAL): how many traces each verdict covers and its fraction of all. A kept trace's verdict is the rule that kept it (error, rate_limit, guard, latency, latency_quantile, cost, score, rate); "dropped" traces are recorded here but their spans are not stored; "all" are traces recorded with sampling off (every span stored).
-- params: since_seconds UInt32 = 3600, service String = ''
SELECT
    if(sampled, if(sampled_by = '', 'all', sampled_by), 'dropped') AS verdict,
    count() AS traces,
    round(traces / sum(traces) OVER (), 4) AS fraction
FROM traces FINAL
WHERE start_time >= now64(9) - toIntervalSecond({since_seconds:UInt32})
  AND ({service:String} = '' OR service = {service:String} OR has(services, {service:String}))
GROUP BY verdict
ORDER BY traces DESC, verdict
