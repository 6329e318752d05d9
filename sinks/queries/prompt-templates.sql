-- name: prompt-templates
-- description: Question 6 (prompt templates): which templates and versions were used, how often, and an example of their variables.
-- params: since_seconds UInt32 = 3600, limit UInt32 = 50
SELECT
    prompt_template AS template,
    prompt_version AS version,
    count() AS calls,
    round(avg(duration_ns) / 1e6, 1) AS avg_ms,
    round(sum(cost_usd), 4) AS cost_usd,
    toString(any(prompt_variables)) AS example_variables
FROM spans
WHERE prompt_template != '' AND start_time >= now64(9) - toIntervalSecond({since_seconds:UInt32})
GROUP BY template, version
ORDER BY calls DESC
LIMIT {limit:UInt32}
