-- name: scores
-- description: Scores (feedback, reviews, evaluations) per name, source and service (the trace's root service): how many, the average, the latest value and the commonest labels. Filters: name, source (api, sdk, human, eval), trace, time.
-- params: since_seconds UInt32 = 86400, name String = '', source String = '', trace_id String = '', limit UInt32 = 100
WITH picked AS (
    SELECT trace_id, name, source, value, label, created_at
    FROM scores FINAL
    WHERE created_at >= now64(9) - toIntervalSecond({since_seconds:UInt32})
      AND ({name:String} = '' OR name = {name:String})
      AND ({source:String} = '' OR source = {source:String})
      AND ({trace_id:String} = '' OR trace_id = {trace_id:String})
)
SELECT
    p.name AS name,
    p.source AS source,
    if(t.service = '', '(trace not stored yet)', t.service) AS service,
    count() AS scores,
    countIf(p.value IS NOT NULL) AS with_value,
    round(avg(p.value), 4) AS avg_value,
    min(p.value) AS min_value,
    max(p.value) AS max_value,
    topKIf(3)(p.label, p.label != '') AS top_labels,
    argMax(p.value, p.created_at) AS latest_value,
    argMax(p.label, p.created_at) AS latest_label,
    min(p.created_at) AS first,
    max(p.created_at) AS last
FROM picked AS p
LEFT JOIN (
    SELECT trace_id, if(anyIf(service, parent_span_id = '') != '', anyIf(service, parent_span_id = ''), any(service)) AS service
    FROM spans
    WHERE trace_id IN (SELECT trace_id FROM picked)
    GROUP BY trace_id
) AS t ON t.trace_id = p.trace_id
GROUP BY name, source, service
ORDER BY scores DESC, name, source, service
LIMIT {limit:UInt32}
