-- Delete images whose newest score `score_name` falls outside [min_score, max_score] (NULL = open).
CREATE OR REPLACE MACRO score_actions(score_name, min_score := NULL, max_score := NULL) AS TABLE
WITH latest AS (
    SELECT max(run_id) AS run_id
    FROM runs
    WHERE stage = 'score' AND status = 'done' AND json_extract_string(params, '$.name') = score_name
),

final AS (
    SELECT s.image_id, s.version, s.score,
        CASE WHEN (min_score IS NOT NULL AND s.score < min_score)
                  OR (max_score IS NOT NULL AND s.score > max_score) THEN 'delete' ELSE 'none' END AS action,
        format('{} score {:.4f} outside [{}, {}]', s.name, s.score,
               coalesce(min_score::VARCHAR, '-inf'), coalesce(max_score::VARCHAR, 'inf')) AS reason
    FROM scores AS s
    JOIN latest AS l ON l.run_id = s.run_id
    JOIN image_files AS f ON f.image_id = s.image_id AND f.version = s.version
    WHERE s.name = score_name
)

SELECT * FROM final;
