-- name: sessions
-- description: Conversations as sessions (traces sharing a session_id), the most recently active first: turns, first and last time, duration, tokens, cost, errors, the user, and the latest score per name over the session's traces. Counts cover the turns that started in [from_ns, until_ns); every filter is optional (empty string = no filter); paging is by keyset (cursor_ns, cursor_id = the last session of the previous page). The web's GET /api/sessions runs this query.
-- params: from_ns Int64 = 0, until_ns Int64 = 9223372036854775807, service String = '', user_id String = '', session_id String = '', cursor_ns Int64 = 0, cursor_id String = '', limit UInt32 = 50
SELECT
    s.session_id AS session_id,
    s.s_turns AS turns,
    s.s_user_ids AS user_ids,
    s.s_services AS services,
    s.s_first_ns AS first_ns,
    s.s_last_ns AS last_ns,
    s.s_end_ns AS end_ns,
    s.s_input_tokens AS input_tokens,
    s.s_output_tokens AS output_tokens,
    s.s_cached_tokens AS cached_tokens,
    s.s_reasoning_tokens AS reasoning_tokens,
    s.s_total_tokens AS total_tokens,
    s.s_cost_usd AS cost_usd,
    s.s_errors AS errors,
    s.s_error_turns AS error_turns,
    s.s_first_name AS first_name,
    sc.latest AS scores
FROM
(
    SELECT
        session_id,
        count() AS s_turns,
        arraySort(groupUniqArrayIf(user_id, user_id != '')) AS s_user_ids,
        arraySort(groupUniqArray(service)) AS s_services,
        toUnixTimestamp64Nano(min(start_time)) AS s_first_ns,
        toUnixTimestamp64Nano(max(start_time)) AS s_last_ns,
        toUnixTimestamp64Nano(max(end_time)) AS s_end_ns,
        sum(input_tokens) AS s_input_tokens,
        sum(output_tokens) AS s_output_tokens,
        sum(cached_tokens) AS s_cached_tokens,
        sum(reasoning_tokens) AS s_reasoning_tokens,
        sum(total_tokens) AS s_total_tokens,
        sum(cost_usd) AS s_cost_usd,
        sum(error_count) AS s_errors,
        countIf(status = 'ERROR') AS s_error_turns,
        argMin(root_name, start_time) AS s_first_name
    FROM traces FINAL
    WHERE session_id != ''
      AND start_time >= fromUnixTimestamp64Nano({from_ns:Int64})
      AND start_time < fromUnixTimestamp64Nano({until_ns:Int64})
      AND ({service:String} = '' OR service = {service:String} OR has(services, {service:String}))
      AND ({user_id:String} = '' OR user_id = {user_id:String})
      AND ({session_id:String} = '' OR session_id = {session_id:String})
    GROUP BY session_id
    HAVING {cursor_id:String} = '' OR (s_last_ns, session_id) < ({cursor_ns:Int64}, {cursor_id:String})
    ORDER BY s_last_ns DESC, session_id DESC
    LIMIT {limit:UInt32}
) AS s
LEFT JOIN
(
    SELECT
        session_key,
        groupArray(CAST(tuple(score_name, picked.1, picked.2, picked.3, picked.4, picked.5, toUnixTimestamp64Nano(newest), how_many),
                        'Tuple(name String, value Nullable(Float64), label String, source String, comment String, author String, created_ns Int64, count UInt64)')) AS latest
    FROM
    (
        SELECT
            t.session_id AS session_key,
            p.name AS score_name,
            argMax(tuple(p.value, p.label, p.source, p.comment, p.author), (p.created_at, p.score_id)) AS picked,
            max(p.created_at) AS newest,
            count() AS how_many
        FROM scores AS p FINAL
        INNER JOIN
        (
            SELECT trace_id, session_id
            FROM traces FINAL
            WHERE session_id != ''
              AND start_time >= fromUnixTimestamp64Nano({from_ns:Int64})
              AND start_time < fromUnixTimestamp64Nano({until_ns:Int64})
              AND ({user_id:String} = '' OR user_id = {user_id:String})
              AND ({session_id:String} = '' OR session_id = {session_id:String})
        ) AS t ON t.trace_id = p.trace_id
        WHERE p.created_at >= fromUnixTimestamp64Nano({from_ns:Int64})
        GROUP BY session_key, score_name
        ORDER BY session_key, score_name
    )
    GROUP BY session_key
) AS sc ON sc.session_key = s.session_id
ORDER BY last_ns DESC, session_id DESC
