-- The newest sanitize check of each image version (sanitize_checks): the run whose findings
-- stand for it (sanitize_actions, unreadable_images, the report's findings by rule).
CREATE OR REPLACE VIEW latest_sanitize_checks AS
WITH final AS (
    SELECT image_id, version, max(run_id) AS run_id
    FROM sanitize_checks
    GROUP BY image_id, version
)

SELECT * FROM final;
