-- name: retrieved-docs
-- description: Question 4 (retrieval): every document retrievers and rerankers returned in a trace, with score and position (default: the latest trace that retrieved).
-- params: trace_id String = '', since_seconds UInt32 = 3600
SELECT
    s.name AS span,
    s.kind AS kind,
    d.position AS position,
    d.id AS document_id,
    round(d.score, 4) AS score,
    substring(d.content, 1, 60) AS content
FROM spans AS s
ARRAY JOIN s.documents AS d
WHERE s.trace_id = if({trace_id:String} != '', {trace_id:String},
        (SELECT argMax(trace_id, start_time) FROM spans
         WHERE kind = 'RETRIEVER' AND start_time >= now64(9) - toIntervalSecond({since_seconds:UInt32})))
ORDER BY s.start_time, d.position
