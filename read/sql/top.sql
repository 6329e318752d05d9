-- name: top
-- description: Live rollups (`tracehouse top`): spans per second, errors, error rate, worst window p95, tokens and cost per service and/or model over the newest closed rollup windows (from rollups FINAL; the range ends at the newest window not in the future, age_seconds says how long ago). by_service and by_model (1 or 0) choose the grouping; step_seconds is the rollup window size (10 or 60); sketches=1 adds each group's latency sketches so a client can merge them into an exact-to-1 % p95.
-- params: window_seconds UInt32 = 60, step_seconds UInt32 = 10, by_service UInt8 = 1, by_model UInt8 = 1, sketches UInt8 = 0
WITH
    (SELECT max(window_start) FROM rollups
     WHERE window_seconds = {step_seconds:UInt32} AND window_start <= now()) AS newest,
    newest + {step_seconds:UInt32} AS range_end,
    range_end - greatest(intDiv({window_seconds:UInt32} + {step_seconds:UInt32} - 1, {step_seconds:UInt32}), 1)
        * {step_seconds:UInt32} AS range_start
SELECT
    group_service AS service,
    group_model AS model,
    sum(count) AS calls,
    round(calls / dateDiff('second', range_start, range_end), 3) AS spans_per_second,
    sum(error_count) AS errors,
    round(if(calls = 0, 0, errors / calls), 4) AS error_rate,
    sum(rate_limit_count) AS rate_limits,
    round(max(latency_p95_ms), 1) AS worst_p95_ms,
    round(max(latency_max_ms), 1) AS max_ms,
    sum(input_tokens) AS input_tokens,
    sum(output_tokens) AS output_tokens,
    sum(cached_tokens) AS cached_tokens,
    sum(reasoning_tokens) AS reasoning_tokens,
    round(sum(cost_usd), 6) AS cost_usd,
    uniqExact(window_start) AS windows,
    range_end AS window_to,
    dateDiff('second', range_start, range_end) AS seconds,
    dateDiff('second', range_end, now()) AS age_seconds,
    if({sketches:UInt8} = 1, groupArray(latency_sketch), []) AS latency_sketches
FROM
(
    SELECT
        if({by_service:UInt8} = 1, toString(service), '*') AS group_service,
        if({by_model:UInt8} = 1, toString(model), '*') AS group_model,
        window_start, count, error_count, rate_limit_count, latency_p95_ms, latency_max_ms, latency_sketch,
        input_tokens, output_tokens, cached_tokens, reasoning_tokens, cost_usd
    FROM rollups FINAL
    WHERE window_seconds = {step_seconds:UInt32} AND window_start >= range_start AND window_start < range_end
)
GROUP BY group_service, group_model
ORDER BY calls DESC, service, model
