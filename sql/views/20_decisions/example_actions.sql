-- Delete images closer than `threshold` (cosine distance) to an unwanted example, from the
-- newest `filter examples` run (of embedding_set, or of any set when NULL). threshold: NULL =
-- the catalog's setting filter_by_examples.threshold. An image kept by override
-- (override_actions) is never deleted: its action is 'none' and its reason says why.
CREATE OR REPLACE MACRO example_actions(threshold := NULL, embedding_set := NULL) AS TABLE
WITH latest AS (
    SELECT max(run_id) AS run_id,
           coalesce(threshold, setting('filter_by_examples', 'threshold')::DOUBLE) AS max_distance
    FROM newest_runs
    WHERE stage = 'filter-examples' AND (embedding_set IS NULL OR set_name = embedding_set)
),

final AS (
    SELECT d.image_id, d.version, d.distance, d.example,
        CASE WHEN d.distance < l.max_distance AND o.image_id IS NULL THEN 'delete' ELSE 'none' END AS action,
        format('distance {:.4f} to unwanted example {} (threshold {})', greatest(d.distance, 0) + 0.0,
               d.example, l.max_distance)
            || coalesce('; ' || o.reason, '') AS reason
    FROM example_distances AS d
    JOIN latest AS l ON l.run_id = d.run_id
    JOIN image_files AS f ON f.image_id = d.image_id AND f.version = d.version
    LEFT JOIN override_actions AS o ON o.image_id = d.image_id AND o.version = d.version AND o.override = 'keep'
)

SELECT * FROM final;
