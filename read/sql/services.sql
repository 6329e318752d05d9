-- name: web-services
-- description: The services, models and kinds seen since from_s (for the filter dropdowns), from the small per-minute aggregates and the traces' root services, with how many spans each had.
-- params: from_s UInt32 = 0
SELECT 'service' AS what, toString(service) AS value, countMerge(calls) AS calls
FROM spans_minutely WHERE minute >= toDateTime({from_s:UInt32}) GROUP BY value
UNION ALL
SELECT 'model' AS what, toString(model) AS value, countMerge(calls) AS calls
FROM spans_minutely WHERE minute >= toDateTime({from_s:UInt32}) AND model != '' GROUP BY value
UNION ALL
SELECT 'kind' AS what, toString(kind) AS value, countMerge(calls) AS calls
FROM spans_minutely WHERE minute >= toDateTime({from_s:UInt32}) GROUP BY value
UNION ALL
SELECT 'service' AS what, toString(service) AS value, toUInt64(0) AS calls
FROM traces WHERE start_time >= toDateTime64({from_s:UInt32}, 9) GROUP BY value
