-- The images each per-image decision removes at the catalog's settings, one row per decision
-- and image: sanitize deletes, quality deletes (only past a [quality] delete_* threshold), files
-- that cannot be read at their current version (recorded with action 'none', as sanitize cannot
-- delete what it cannot read, but not exportable), images near unwanted examples, outside the
-- configured score range (filter_by_score.name), and dropped by override. Every removal but dedup's, which chooses its keepers among the images none of these
-- removes (dedup_actions); `removals` adds dedup's.
CREATE OR REPLACE VIEW filter_removals AS
WITH sanitize_deletes AS (
    SELECT 'sanitize' AS decision, image_id, version FROM sanitize_actions WHERE action = 'delete'
),

quality_deletes AS (
    SELECT DISTINCT 'quality' AS decision, image_id, version FROM quality_actions() WHERE action = 'delete'
),

unreadable AS (
    SELECT 'unreadable' AS decision, image_id, version FROM unreadable_images
),

example_deletes AS (
    SELECT 'examples' AS decision, image_id, version FROM example_actions() WHERE action = 'delete'
),

score_deletes AS (
    SELECT 'score' AS decision, image_id, version
    FROM score_actions(setting('filter_by_score', 'name')) WHERE action = 'delete'
),

override_drops AS (
    SELECT 'override' AS decision, image_id, version FROM override_actions WHERE action = 'delete'
),

final AS (
    SELECT * FROM sanitize_deletes
    UNION ALL SELECT * FROM quality_deletes
    UNION ALL SELECT * FROM unreadable
    UNION ALL SELECT * FROM example_deletes
    UNION ALL SELECT * FROM score_deletes
    UNION ALL SELECT * FROM override_drops
)

SELECT * FROM final;
