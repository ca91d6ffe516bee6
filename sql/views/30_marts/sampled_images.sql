-- Images selected by the newest finished sampling run (empty before any), at their current
-- version: a selected image that vdc-lake's apply rotated, resized or recompressed since is still
-- selected (applied_versions); one changed outside vdc-lake or gone is not.
-- sampled_version: the version the sampling run chose.
CREATE OR REPLACE VIEW sampled_images AS
WITH newest_sample AS (
    SELECT run_id FROM newest_stage_runs WHERE stage = 'sample'
),

final AS (
    SELECT f.image_id, f.version, s.run_id, s.version AS sampled_version
    FROM samples AS s
    JOIN newest_sample AS n ON n.run_id = s.run_id
    JOIN image_files AS f ON f.image_id = s.image_id
    LEFT JOIN applied_versions AS a ON a.image_id = f.image_id
    WHERE s.version = f.version OR s.version BETWEEN a.first_version AND f.version
)

SELECT * FROM final;
