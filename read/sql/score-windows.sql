-- name: score-windows
-- description: The worker's windows of scores (table score_rollups): per score name and the scored trace's service and model, how many scores, their average value, min, max and label counts over the period, from the 1-minute windows (window_seconds 10 for the 10-second ones). Scores whose trace the worker did not know are under '__other__'.
-- params: since_seconds UInt32 = 3600, window_seconds UInt32 = 60, name String = '', service String = '', limit UInt32 = 100
SELECT
    name,
    service,
    model,
    sum(count) AS scores,
    sum(value_count) AS with_value,
    if(sum(value_count) = 0, NULL, round(sum(value_sum) / sum(value_count), 4)) AS avg_value,
    if(sum(value_count) = 0, NULL, minIf(value_min, value_count > 0)) AS min_value,
    if(sum(value_count) = 0, NULL, maxIf(value_max, value_count > 0)) AS max_value,
    sumMap(label_counts) AS label_counts,
    min(window_start) AS first_window,
    max(window_start) AS last_window
FROM score_rollups FINAL
WHERE window_seconds = {window_seconds:UInt32}
  AND window_start >= now() - toIntervalSecond({since_seconds:UInt32})
  AND ({name:String} = '' OR name = {name:String})
  AND ({service:String} = '' OR service = {service:String})
GROUP BY name, service, model
ORDER BY scores DESC, name, service, model
LIMIT {limit:UInt32}
