-- name: trace-details
-- description: What the six questions need about one trace's spans: LLM parameters, token classes, prompt template (its name, or for a nameless one the hash of its text: prompt_key) and variables, retrieved documents with score and position, exception events. Only spans that carry any of these; payloads trimmed.
-- params: trace_id String = ''
SELECT
    span_id,
    name,
    kind,
    provider,
    model,
    temperature,
    max_tokens,
    top_p,
    substring(system_prompt, 1, 500) AS system_prompt,
    finish_reason,
    input_tokens,
    cached_tokens,
    output_tokens,
    reasoning_tokens,
    cost_usd,
    cost_source,
    prompt_template,
    if(prompt_template != '' OR prompt_text = '', prompt_template, concat('#', substring(lower(hex(SHA256(prompt_text))), 1, 10))) AS prompt_key,
    substring(prompt_text, 1, 500) AS prompt_text,
    prompt_version,
    prompt_variables,
    arrayMap(d -> CAST(tuple(d.id, substring(d.content, 1, 200), d.score, d.position),
                       'Tuple(id String, content String, score Nullable(Float64), position UInt32)'),
             documents) AS documents,
    arrayMap(e -> CAST(tuple(toUnixTimestamp64Nano(e.time), e.attributes['exception.type'], e.attributes['exception.message'],
                             substring(e.attributes['exception.stacktrace'], 1, 2000)),
                       'Tuple(time_ns Int64, type String, message String, stacktrace String)'),
             arrayFilter(e -> e.name = 'exception', events)) AS exceptions,
    status,
    status_message,
    error_type
FROM spans
WHERE trace_id = {trace_id:String}
  AND start_time >= (SELECT min(start) FROM trace_id_ts WHERE trace_id = {trace_id:String})
  AND start_time <= (SELECT max(end) FROM trace_id_ts WHERE trace_id = {trace_id:String})
  AND (kind = 'LLM' OR model != '' OR prompt_template != '' OR prompt_text != '' OR notEmpty(documents) OR notEmpty(events)
       OR status = 'ERROR')
ORDER BY start_time, span_id
LIMIT 1 BY span_id
