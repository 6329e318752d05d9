-- name: llm-params
-- description: Question 5 (LLM parameters): model, provider, temperature, max tokens, top_p and system prompt of each LLM call in a trace (default: the latest trace with an LLM call).
-- params: trace_id String = '', since_seconds UInt32 = 3600
SELECT
    name,
    model,
    provider,
    temperature,
    max_tokens,
    top_p,
    substring(system_prompt, 1, 60) AS system_prompt,
    length(input_messages) AS input_messages,
    finish_reason
FROM spans
WHERE kind = 'LLM' AND trace_id = if({trace_id:String} != '', {trace_id:String},
        (SELECT argMax(trace_id, start_time) FROM spans
         WHERE kind = 'LLM' AND start_time >= now64(9) - toIntervalSecond({since_seconds:UInt32})))
ORDER BY start_time
