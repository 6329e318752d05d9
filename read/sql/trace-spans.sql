-- name: web-trace-spans
-- description: Every span of one trace (or only span_id when given) with everything the span panel shows: payloads, LLM parameters and messages, prompt template and variables, documents, events, scores, attributes. Long texts are cut to max_chars characters (their full length is returned beside them); no alias repeats a column name (old analyzers substitute such an alias into its own expression); reads only the days the trace spans via the trace-id lookup table.
-- params: trace_id String = '', span_id String = '', max_chars UInt32 = 20000, max_doc_chars UInt32 = 4000, max_spans UInt32 = 20000
SELECT
    span_id,
    parent_span_id,
    name,
    kind,
    service,
    toUnixTimestamp64Nano(start_time) AS start_ns,
    duration_ns,
    status,
    status_message,
    error_type,
    model,
    provider,
    input_tokens,
    output_tokens,
    total_tokens,
    cached_tokens,
    reasoning_tokens,
    cost_usd,
    cost_source,
    substringUTF8(input, 1, {max_chars:UInt32}) AS input_cut,
    lengthUTF8(input) AS input_chars,
    substringUTF8(output, 1, {max_chars:UInt32}) AS output_cut,
    lengthUTF8(output) AS output_chars,
    attributes,
    resource_attributes,
    arrayMap(e -> CAST(tuple(e.name, toUnixTimestamp64Nano(e.time), e.attributes),
                       'Tuple(name String, time_ns Int64, attributes Map(String, String))'),
             events) AS event_list,
    arrayMap(d -> CAST(tuple(d.id, substringUTF8(d.content, 1, {max_doc_chars:UInt32}), d.score, d.position, d.metadata),
                       'Tuple(id String, content String, score Nullable(Float64), position UInt32, metadata Map(String, String))'),
             documents) AS document_list,
    if(prompt_template != '' OR prompt_text = '', prompt_template, concat('#', substring(lower(hex(SHA256(prompt_text))), 1, 10))) AS prompt_template,
    prompt_version,
    substringUTF8(prompt_text, 1, {max_chars:UInt32}) AS prompt_text_cut,
    prompt_variables,
    temperature,
    max_tokens,
    top_p,
    stop,
    substringUTF8(system_prompt, 1, {max_chars:UInt32}) AS system_prompt_cut,
    substringUTF8(invocation_parameters, 1, {max_chars:UInt32}) AS invocation_parameters_cut,
    arrayMap(m -> CAST(tuple(m.role, substringUTF8(m.content, 1, {max_chars:UInt32}), m.name, m.tool_call_id, m.tool_calls),
                       'Tuple(role String, content String, name String, tool_call_id String, tool_calls Array(Tuple(id String, name String, arguments String)))'),
             input_messages) AS input_message_list,
    arrayMap(m -> CAST(tuple(m.role, substringUTF8(m.content, 1, {max_chars:UInt32}), m.name, m.tool_call_id, m.tool_calls),
                       'Tuple(role String, content String, name String, tool_call_id String, tool_calls Array(Tuple(id String, name String, arguments String)))'),
             output_messages) AS output_message_list,
    finish_reason,
    scores,
    session_id,
    user_id,
    tags
FROM spans
WHERE trace_id = {trace_id:String}
  AND ({span_id:String} = '' OR span_id = {span_id:String})
  AND start_time >= (SELECT min(start) FROM trace_id_ts WHERE trace_id = {trace_id:String})
  AND start_time <= (SELECT max(end) FROM trace_id_ts WHERE trace_id = {trace_id:String})
ORDER BY start_time, span_id
LIMIT 1 BY span_id
LIMIT {max_spans:UInt32}
