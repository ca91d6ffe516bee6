-- The newest finished run of each stage, whatever its set or name (newest_runs), with its params:
-- the sample that `curated` and sample_actions() use, the cluster run image_clusters falls back to.
CREATE OR REPLACE VIEW newest_stage_runs AS
WITH final AS (
    SELECT stage, max(run_id) AS run_id, arg_max(params, run_id) AS params
    FROM newest_runs
    GROUP BY stage
)

SELECT * FROM final;
