-- Delete images whose newest score `score_name` falls outside [min_score, max_score].
-- For the score named in the catalog's setting filter_by_score.name, NULL bounds take the
-- settings filter_by_score.min_score / max_score; for any other score NULL is open (-inf / inf).
-- An image kept by override (override_actions) is never deleted: action 'none', and the reason says why.
CREATE OR REPLACE MACRO score_actions(score_name, min_score := NULL, max_score := NULL) AS TABLE
WITH latest AS (
    SELECT max(run_id) AS run_id  -- the newest of its sets
    FROM newest_runs
    WHERE stage = 'score' AND name = score_name
),

bounds AS (
    SELECT
        coalesce(min_score, CASE WHEN setting('filter_by_score', 'name') = score_name
                                 THEN setting('filter_by_score', 'min_score')::DOUBLE END, '-inf'::DOUBLE) AS low,
        coalesce(max_score, CASE WHEN setting('filter_by_score', 'name') = score_name
                                 THEN setting('filter_by_score', 'max_score')::DOUBLE END, 'inf'::DOUBLE) AS high
),

final AS (
    SELECT s.image_id, s.version, s.score,
        CASE WHEN (s.score < b.low OR s.score > b.high) AND o.image_id IS NULL THEN 'delete' ELSE 'none' END AS action,
        format('{} score {:.4f} outside [{}, {}]', s.name, s.score, b.low, b.high)
            || coalesce('; ' || o.reason, '') AS reason
    FROM scores AS s
    CROSS JOIN bounds AS b
    JOIN latest AS l ON l.run_id = s.run_id
    JOIN image_files AS f ON f.image_id = s.image_id AND f.version = s.version
    LEFT JOIN override_actions AS o ON o.image_id = s.image_id AND o.version = s.version AND o.override = 'keep'
    WHERE s.name = score_name
)

SELECT * FROM final;
