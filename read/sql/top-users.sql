-- name: top-users
-- description: Per-user totals over the traces that started in the range (from traces FINAL): traces, sessions, errors (error spans and failed traces), tokens and cost, the most expensive users first; the latest activity of each. Traces without a user are left out.
-- params: since_seconds UInt32 = 86400, service String = '', limit UInt32 = 50
SELECT
    user_id,
    count() AS traces,
    uniqExactIf(session_id, session_id != '') AS sessions,
    countIf(status = 'ERROR') AS failed_traces,
    sum(error_count) AS errors,
    sum(input_tokens) AS input_tokens,
    sum(output_tokens) AS output_tokens,
    sum(total_tokens) AS total_tokens,
    round(sum(cost_usd), 6) AS cost_usd,
    max(start_time) AS last_seen
FROM traces FINAL
WHERE user_id != ''
  AND start_time >= now64(9) - toIntervalSecond({since_seconds:UInt32})
  AND ({service:String} = '' OR service = {service:String} OR has(services, {service:String}))
GROUP BY user_id
ORDER BY cost_usd DESC, total_tokens DESC, user_id
LIMIT {limit:UInt32}
