-- Every image a decision removes at the catalog's settings, one row per (decision, image): the
-- per-image decisions (filter_removals) and duplicates (dedup_actions(); exact copies included).
-- Sampling is not here: surviving_images is what it chooses from. "Why is this image not in
-- curated?" is `SELECT * FROM removals WHERE image_id = ?`.
CREATE OR REPLACE VIEW removals AS
WITH duplicate_deletes AS (
    SELECT 'dedup' AS decision, image_id, version FROM dedup_actions() WHERE action = 'delete'
),

final AS (
    SELECT * FROM filter_removals
    UNION ALL SELECT * FROM duplicate_deletes
)

SELECT * FROM final;
