-- name: web-trace-scores
-- description: The latest score per name and span of one trace (span_id '' = on the trace as a whole), from scores FINAL: the trace header shows the latest per name, the span panel those of its span.
-- params: trace_id String = ''
SELECT
    span_id AS score_span,
    name AS score_name,
    picked.1 AS score_value,
    picked.2 AS score_label,
    picked.3 AS score_source,
    picked.4 AS score_comment,
    picked.5 AS score_author,
    toUnixTimestamp64Nano(newest) AS created_ns,
    how_many
FROM
(
    SELECT
        span_id,
        name,
        argMax(tuple(value, label, source, comment, author), (created_at, score_id)) AS picked,
        max(created_at) AS newest,
        count() AS how_many
    FROM scores FINAL
    WHERE trace_id = {trace_id:String}
    GROUP BY span_id, name
)
ORDER BY score_name, score_span
