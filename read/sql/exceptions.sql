-- name: exceptions
-- description: Question 3 (runtime exceptions): exception events such as rate limits, newest first.
-- params: since_seconds UInt32 = 3600, limit UInt32 = 50
SELECT
    s.trace_id AS trace_id,
    s.name AS span,
    s.model AS model,
    s.error_type AS error_type,
    e.attributes['exception.type'] AS exception_type,
    e.attributes['exception.message'] AS message,
    e.time AS time
FROM spans AS s
ARRAY JOIN s.events AS e
WHERE e.name = 'exception' AND s.start_time >= now64(9) - toIntervalSecond({since_seconds:UInt32})
ORDER BY e.time DESC
LIMIT {limit:UInt32}
