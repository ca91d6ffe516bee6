-- Present images that every decision except sampling keeps, at the catalog's settings:
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

sanitize_deletes AS (
    SELECT image_id, version FROM sanitize_actions WHERE action = 'delete'
),

-- recorded with action 'none' (sanitize cannot delete what it cannot read), but not exportable
unreadable AS (
    SELECT image_id, version FROM unreadable_images
),

dropped AS (
    SELECT image_id, version FROM override_actions WHERE override = 'drop'
),

duplicate_deletes AS (
    SELECT image_id, version FROM dedup_actions() WHERE action = 'delete'
),

example_deletes AS (
    SELECT image_id, version FROM example_actions() WHERE action = 'delete'
),

score_deletes AS (
    SELECT image_id, version FROM score_actions(setting('filter_by_score', 'name')) WHERE action = 'delete'
),

final AS (
    SELECT f.*
    FROM files AS f
    WHERE NOT EXISTS (SELECT 1 FROM sanitize_deletes AS d WHERE d.image_id = f.image_id AND d.version = f.version)
      AND NOT EXISTS (SELECT 1 FROM unreadable AS u WHERE u.image_id = f.image_id AND u.version = f.version)
      AND NOT EXISTS (SELECT 1 FROM duplicate_deletes AS d WHERE d.image_id = f.image_id AND d.version = f.version)
      AND NOT EXISTS (SELECT 1 FROM example_deletes AS e WHERE e.image_id = f.image_id AND e.version = f.version)
      AND NOT EXISTS (SELECT 1 FROM score_deletes AS s WHERE s.image_id = f.image_id AND s.version = f.version)
      AND NOT EXISTS (SELECT 1 FROM dropped AS o WHERE o.image_id = f.image_id AND o.version = f.version)
)

SELECT * FROM final;
