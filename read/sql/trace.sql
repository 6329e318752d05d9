-- name: trace
-- description: Every span of one trace, in start order, for the span tree; reads only the days the trace spans via the trace-id lookup table.
-- params: trace_id String = ''
SELECT
    span_id,
    parent_span_id,
    name,
    kind,
    service,
    start_time,
    end_time,
    duration_ns,
    status,
    status_message,
    model,
    total_tokens,
    cost_usd,
    error_type,
    toUnixTimestamp64Nano(start_time) AS start_ns
FROM spans
WHERE trace_id = {trace_id:String}
  AND start_time >= (SELECT min(start) FROM trace_id_ts WHERE trace_id = {trace_id:String})
  AND start_time <= (SELECT max(end) FROM trace_id_ts WHERE trace_id = {trace_id:String})
ORDER BY start_time, span_id
LIMIT 1 BY span_id
