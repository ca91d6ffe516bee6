-- Images selected by the newest finished sampling run (empty before any).
CREATE OR REPLACE VIEW sampled_images AS
WITH newest_sample AS (
    SELECT max(run_id) AS run_id FROM runs WHERE stage = 'sample' AND status = 'done'
),

final AS (
    SELECT s.image_id, s.version, s.run_id
    FROM samples AS s
    JOIN newest_sample AS n ON n.run_id = s.run_id
)

SELECT * FROM final;
