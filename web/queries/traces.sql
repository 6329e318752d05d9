-- name: web-traces
-- description: One page of the traces list, newest first, from `traces` FINAL (the row with the highest version: the most complete assembly of each trace); every filter is optional (empty string or 0 = no filter); paging is by keyset (cursor_ns, cursor_id = the last row of the previous page).
-- params: from_ns Int64 = 0, until_ns Int64 = 0, service String = '', status String = '', min_duration_ns Int64 = 0, min_cost Float64 = 0, session_id String = '', user_id String = '', q String = '', cursor_ns Int64 = 0, cursor_id String = '', limit UInt32 = 50
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
    slowest_span_duration_ns
FROM traces FINAL
WHERE start_time >= fromUnixTimestamp64Nano({from_ns:Int64})
  AND start_time < fromUnixTimestamp64Nano({until_ns:Int64})
  AND ({service:String} = '' OR service = {service:String} OR has(services, {service:String}))
  AND ({status:String} = '' OR status = {status:String})
  AND duration_ns >= {min_duration_ns:Int64}
  AND cost_usd >= {min_cost:Float64}
  AND ({session_id:String} = '' OR session_id = {session_id:String})
  AND ({user_id:String} = '' OR user_id = {user_id:String})
  AND ({q:String} = '' OR startsWith(trace_id, lower({q:String})) OR positionCaseInsensitiveUTF8(root_name, {q:String}) > 0)
  AND ({cursor_id:String} = ''
       OR (start_time, trace_id) < (fromUnixTimestamp64Nano({cursor_ns:Int64}), {cursor_id:String}))
ORDER BY start_time DESC, trace_id DESC
LIMIT {limit:UInt32}
