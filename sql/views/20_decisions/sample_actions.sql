-- Remove every present image not selected by a sampling run (sample_run NULL = newest; a selected
-- image that vdc-lake's apply rotated, resized or recompressed since stays selected), except
-- the images kept by override (override_actions): `vdc-lake sample` puts those in the sample
-- (they count toward --total), and one kept after the sampling run is kept all the same.
-- Never removed either, as the run did not judge their bytes: an image first scanned after the
-- run (a file added or moved since), and a selected image changed outside vdc-lake since (a new
-- version found by `scan`); neither is in `curated` until `vdc-lake sample` runs again.
CREATE OR REPLACE MACRO sample_actions(sample_run := NULL) AS TABLE
WITH chosen AS (
    SELECT coalesce(sample_run,
        (SELECT run_id FROM newest_stage_runs WHERE stage = 'sample')) AS run_id
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

-- selected at a version that is no longer current, nor carried to it by vdc-lake's apply
changed AS (
    SELECT s.image_id, max(s.version) AS sampled_version
    FROM samples AS s
    JOIN chosen AS c ON c.run_id = s.run_id
    WHERE NOT EXISTS (SELECT 1 FROM selected AS x WHERE x.image_id = s.image_id)
    GROUP BY s.image_id
),

final AS (
    SELECT f.image_id, f.version,
        CASE WHEN s.image_id IS NULL AND o.image_id IS NULL AND g.image_id IS NULL AND i.first_run <= c.run_id
             THEN 'delete' ELSE 'keep' END AS action,
        CASE WHEN s.image_id IS NOT NULL THEN format('selected by sample run {}', c.run_id)
             WHEN o.image_id IS NOT NULL THEN format('{}; not selected by sample run {}', o.reason, c.run_id)
             WHEN g.image_id IS NOT NULL
                 THEN format('selected by sample run {} at version {}, changed outside vdc-lake since (version {}): '
                             'not in curated; run `vdc-lake sample` again', c.run_id, g.sampled_version, f.version)
             WHEN i.first_run IS NULL OR i.first_run > c.run_id
                 THEN format('first scanned after sample run {}, which never saw it: not in curated; '
                             'run `vdc-lake sample` again', c.run_id)
             ELSE format('not selected by sample run {}', c.run_id) END AS reason
    FROM image_files AS f
    JOIN images AS i ON i.image_id = f.image_id
    CROSS JOIN chosen AS c
    LEFT JOIN selected AS s ON s.image_id = f.image_id AND s.version = f.version
    LEFT JOIN changed AS g ON g.image_id = f.image_id
    LEFT JOIN override_actions AS o ON o.image_id = f.image_id AND o.version = f.version AND o.override = 'keep'
    WHERE c.run_id IS NOT NULL
)

SELECT * FROM final;
