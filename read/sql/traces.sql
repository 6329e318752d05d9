-- name: web-traces
-- description: One page of the traces list, newest first, from `traces` FINAL (the row with the highest version: the most complete assembly of each trace); every filter is optional (empty string or 0 = no filter); paging is by keyset (cursor_ns, cursor_id = the last row of the previous page). Each trace carries its latest score per name; score_filter=1 keeps the traces with a latest score (named score_name, any name when empty) whose value is within [score_min, score_max] (each bound only when has_min/has_max) and whose label is score_label (when not empty).
-- params: from_ns Int64 = 0, until_ns Int64 = 0, service String = '', status String = '', min_duration_ns Int64 = 0, min_cost Float64 = 0, session_id String = '', user_id String = '', q String = '', score_filter UInt8 = 0, score_name String = '', score_min Float64 = 0, has_min UInt8 = 0, score_max Float64 = 0, has_max UInt8 = 0, score_label String = '', cursor_ns Int64 = 0, cursor_id String = '', limit UInt32 = 50
SELECT
    trace_id,
    root_name,
    root_span_id,
    service,
    services,
    toUnixTimestamp64Nano(start_time) AS start_ns,
    duration_ns,
    span_count,
    error_count,
    input_tokens,
    output_tokens,
    cached_tokens,
    reasoning_tokens,
    total_tokens,
    cost_usd,
    unpriced_models,
    session_id,
    user_id,
    status,
    complete,
    orphan_spans,
    slowest_span_id,
    slowest_span_name,
    slowest_span_duration_ns,
    sc.latest AS scores
FROM traces FINAL
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
        WHERE created_at >= fromUnixTimestamp64Nano({from_ns:Int64})
        GROUP BY score_trace, score_name
        ORDER BY score_trace, score_name
    )
    GROUP BY score_trace
) AS sc ON sc.score_trace = trace_id
WHERE start_time >= fromUnixTimestamp64Nano({from_ns:Int64})
  AND start_time < fromUnixTimestamp64Nano({until_ns:Int64})
  AND ({service:String} = '' OR service = {service:String} OR has(services, {service:String}))
  AND ({status:String} = '' OR status = {status:String})
  AND duration_ns >= {min_duration_ns:Int64}
  AND cost_usd >= {min_cost:Float64}
  AND ({session_id:String} = '' OR session_id = {session_id:String})
  AND ({user_id:String} = '' OR user_id = {user_id:String})
  AND ({q:String} = '' OR startsWith(trace_id, lower({q:String})) OR positionCaseInsensitiveUTF8(root_name, {q:String}) > 0)
  AND ({score_filter:UInt8} = 0 OR trace_id IN (
        SELECT score_trace
        FROM
        (
            SELECT
                trace_id AS score_trace,
                argMax(tuple(value, label), (created_at, score_id)) AS picked
            FROM scores FINAL
            WHERE created_at >= fromUnixTimestamp64Nano({from_ns:Int64})
              AND ({score_name:String} = '' OR name = {score_name:String})
            GROUP BY score_trace, name
        )
        WHERE ({has_min:UInt8} = 0 OR picked.1 >= {score_min:Float64})
          AND ({has_max:UInt8} = 0 OR picked.1 <= {score_max:Float64})
          AND ({score_label:String} = '' OR picked.2 = {score_label:String})
      ))
  AND ({cursor_id:String} = ''
       OR (start_time, trace_id) < (fromUnixTimestamp64Nano({cursor_ns:Int64}), {cursor_id:String}))
ORDER BY start_time DESC, trace_id DESC
LIMIT {limit:UInt32}
