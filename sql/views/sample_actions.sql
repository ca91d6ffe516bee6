-- Remove every present image not selected by a sampling run (sample_run NULL = newest; a selected
-- image that vdc-lake's apply rotated, resized or recompressed since stays selected), except
-- the images kept by override (override_actions): `vdc-lake sample` puts those in the sample
-- (they count toward --total), and one kept after the sampling run is kept all the same.
CREATE OR REPLACE MACRO sample_actions(sample_run := NULL) AS TABLE
WITH chosen AS (
    SELECT coalesce(sample_run,
        (SELECT max(run_id) FROM runs WHERE stage = 'sample' AND status = 'done')) AS run_id
),

-- at the current version: an image vdc-lake's apply changed since the run is still selected
-- (applied_versions), as sampled_images does it
selected AS (
    SELECT f.image_id, f.version
    FROM samples AS s
    JOIN chosen AS c ON c.run_id = s.run_id
    JOIN image_files AS f ON f.image_id = s.image_id
    LEFT JOIN applied_versions AS a ON a.image_id = f.image_id
    WHERE s.version = f.version OR s.version BETWEEN a.first_version AND f.version
),

final AS (
    SELECT f.image_id, f.version,
        CASE WHEN s.image_id IS NULL AND o.image_id IS NULL THEN 'delete' ELSE 'keep' END AS action,
        CASE WHEN s.image_id IS NOT NULL THEN format('selected by sample run {}', c.run_id)
             WHEN o.image_id IS NOT NULL THEN format('{}; not selected by sample run {}', o.reason, c.run_id)
             ELSE format('not selected by sample run {}', c.run_id) END AS reason
    FROM image_files AS f
    CROSS JOIN chosen AS c
    LEFT JOIN selected AS s ON s.image_id = f.image_id AND s.version = f.version
    LEFT JOIN override_actions AS o ON o.image_id = f.image_id AND o.version = f.version AND o.override = 'keep'
    WHERE c.run_id IS NOT NULL
)

SELECT * FROM final;
