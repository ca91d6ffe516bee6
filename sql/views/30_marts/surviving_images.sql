-- Present images that every decision except sampling keeps, at the catalog's settings (removals):
-- minus pending sanitize deletes, minus files that cannot be read at their current version,
-- minus duplicates (dedup_actions(); exact copies included), minus images near unwanted
-- examples (example_actions()) and outside the configured score range (score_actions() of
-- filter_by_score.name), minus images dropped by override (override_actions). Images kept by
-- override are never among those decisions' deletes, but a file that cannot be read stays out.
-- `vdc-lake sample` chooses among these; `curated` narrows them to the sample.
CREATE OR REPLACE VIEW surviving_images AS
WITH files AS (
    SELECT image_id, version, path, root, rel_path, width, height, format, size_bytes, content_hash
    FROM image_files
),

final AS (
    SELECT f.*
    FROM files AS f
    WHERE NOT EXISTS (SELECT 1 FROM removals AS r WHERE r.image_id = f.image_id AND r.version = f.version)
)

SELECT * FROM final;
