-- name: alerts
-- description: Recent alert state changes (firing and resolved), newest first.
-- params: since_seconds UInt32 = 86400, limit UInt32 = 100
SELECT
    fired_at,
    state,
    severity,
    rule,
    service,
    arrayStringConcat(arrayFilter(x -> x != '', [labels['kind'], labels['name'], labels['model']]), ' ') AS group,
    round(value, 4) AS value,
    threshold,
    message,
    window_start,
    window_seconds
FROM alerts FINAL
WHERE fired_at >= now64(3) - toIntervalSecond({since_seconds:UInt32})
ORDER BY fired_at DESC, rule, service, group
LIMIT {limit:UInt32}
