-- name: alerts-firing
-- description: Alerts firing now: the rule and group whose latest state change is 'firing', however long ago it fired, most severe first.
-- params: limit UInt32 = 100
SELECT
    rule,
    service,
    group,
    argMax(severity, at) AS severity,
    max(fired_at) AS firing_since,
    round(argMax(value, at), 4) AS value,
    argMax(threshold, at) AS threshold,
    argMax(message, at) AS message
FROM
(
    SELECT
        rule,
        service,
        arrayStringConcat(arrayFilter(x -> x != '', [labels['kind'], labels['name'], labels['model']]), ' ') AS group,
        severity, fired_at, value, threshold, message, state,
        (fired_at, window_start, state = 'resolved') AS at
    FROM alerts FINAL
)
GROUP BY rule, service, group
HAVING argMax(state, at) = 'firing'
ORDER BY indexOf(['critical', 'warning', 'info'], severity) = 0, indexOf(['critical', 'warning', 'info'], severity),
         firing_since DESC
LIMIT {limit:UInt32}
