-- Edges of the newest finished `dedup report` run per embedding set, both ends at their
-- current version. (A newer report that found nothing replaces an older one's edges.)
CREATE OR REPLACE VIEW near_duplicate_edges AS
WITH latest AS (
    SELECT set_name, max(run_id) AS run_id  -- (one row per set: a report has no name)
    FROM newest_runs
    WHERE stage = 'dedup-report'
    GROUP BY set_name
),

final AS (
    SELECT e.set_name, e.run_id, e.image_a, e.image_b, e.distance
    FROM dup_edges AS e
    JOIN latest AS l ON l.set_name = e.set_name AND l.run_id = e.run_id
    JOIN image_files AS fa ON fa.image_id = e.image_a AND fa.version = e.version_a
    JOIN image_files AS fb ON fb.image_id = e.image_b AND fb.version = e.version_b
)

SELECT * FROM final;
