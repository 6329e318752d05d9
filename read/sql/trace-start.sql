-- name: web-trace-start
-- description: When a trace starts (its earliest span), from the trace-id lookup table; offsets of a single span are relative to it.
-- params: trace_id String = ''
SELECT toUnixTimestamp64Nano(min(start)) AS start_ns
FROM trace_id_ts
WHERE trace_id = {trace_id:String}
