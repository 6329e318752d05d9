-- name: prompt-templates
-- description: Question 6 (prompt templates): which templates and versions were used, how often, and an example of their variables. A template sent without a name (OpenInference sends only text, variables and version) is listed by a hash of its text, '#' and 10 hex digits (tracehouse.core.prompt_identity), with its first line.
-- params: since_seconds UInt32 = 3600, limit UInt32 = 50
SELECT
    if(prompt_template != '' OR prompt_text = '', prompt_template, concat('#', substring(lower(hex(SHA256(prompt_text))), 1, 10))) AS template,
    prompt_version AS version,
    substring(trim(BOTH ' \t' FROM splitByChar('\n', trim(BOTH '\n ' FROM any(prompt_text)))[1]), 1, 60) AS first_line,
    count() AS calls,
    round(avg(duration_ns) / 1e6, 1) AS avg_ms,
    round(sum(cost_usd), 4) AS cost_usd,
    toString(any(prompt_variables)) AS example_variables
FROM spans
WHERE (prompt_template != '' OR prompt_text != '')
  AND start_time >= now64(9) - toIntervalSecond({since_seconds:UInt32})
GROUP BY template, version
ORDER BY calls DESC
LIMIT {limit:UInt32}
