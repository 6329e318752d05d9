-- name: session
-- description: One conversation: every trace (turn) of a session in start order, each with its input and output (the root span's, else the first input and the last output any span has; cut to max_chars characters, full lengths beside them), tokens, cost, errors, and the latest score per name. `tracehouse session ID` and the web's GET /api/sessions/{id} run this query.
-- params: session_id String = '', max_chars UInt32 = 2000, limit UInt32 = 1000
WITH turns AS (
    SELECT trace_id
    FROM traces FINAL
    WHERE session_id = {session_id:String}
)
SELECT
    t.trace_id AS trace_id,
    t.root_name AS root_name,
    t.root_span_id AS root_span_id,
    t.service AS service,
    toUnixTimestamp64Nano(t.start_time) AS start_ns,
    t.duration_ns AS duration_ns,
    t.span_count AS span_count,
    t.error_count AS error_count,
    t.input_tokens AS input_tokens,
    t.output_tokens AS output_tokens,
    t.cached_tokens AS cached_tokens,
    t.reasoning_tokens AS reasoning_tokens,
    t.total_tokens AS total_tokens,
    t.cost_usd AS cost_usd,
    t.user_id AS user_id,
    t.status AS status,
    substringUTF8(io.turn_input, 1, {max_chars:UInt32}) AS input_cut,
    lengthUTF8(io.turn_input) AS input_chars,
    substringUTF8(io.turn_output, 1, {max_chars:UInt32}) AS output_cut,
    lengthUTF8(io.turn_output) AS output_chars,
    sc.latest AS scores
FROM traces AS t FINAL
LEFT JOIN
(
    SELECT
        trace_id AS io_trace,
        if(anyIf(input, parent_span_id = '' AND input != '') != '', anyIf(input, parent_span_id = '' AND input != ''),
           argMinIf(input, start_time, input != '')) AS turn_input,
        if(anyIf(output, parent_span_id = '' AND output != '') != '', anyIf(output, parent_span_id = '' AND output != ''),
           argMaxIf(output, end_time, output != '')) AS turn_output
    FROM spans
    WHERE trace_id IN (SELECT trace_id FROM turns)
    GROUP BY trace_id
) AS io ON io.io_trace = t.trace_id
LEFT JOIN
(
    SELECT
        score_trace,
        groupArray(CAST(tuple(score_name, picked.1, picked.2, picked.3, picked.4, picked.5, toUnixTimestamp64Nano(newest), how_many),
                        'Tuple(name String, value Nullable(Float64), label String, source String, comment String, author String, created_ns Int64, count UInt64)')) AS latest
    FROM
    (
        SELECT
            trace_id AS score_trace,
            name AS score_name,
            argMax(tuple(value, label, source, comment, author), (created_at, score_id)) AS picked,
            max(created_at) AS newest,
            count() AS how_many
        FROM scores FINAL
        WHERE trace_id IN (SELECT trace_id FROM turns)
        GROUP BY score_trace, score_name
        ORDER BY score_trace, score_name
    )
    GROUP BY score_trace
) AS sc ON sc.score_trace = t.trace_id
WHERE t.session_id = {session_id:String}
ORDER BY t.start_time, t.trace_id
LIMIT {limit:UInt32}
