-- The newest finished run of each stage per embedding set and name (params' `set` and `name`,
-- NULL for a stage without them): a score run is the newest of its score name in its set, a
-- `dedup report` the newest of its set. The one place that says "newest finished run"; the
-- newest of a whole stage is newest_stage_runs.
CREATE OR REPLACE VIEW newest_runs AS
WITH finished AS (
    SELECT run_id, stage, params,
           json_extract_string(params, '$.set') AS set_name,
           json_extract_string(params, '$.name') AS name
    FROM runs
    WHERE status = 'done'
),

final AS (
    SELECT stage, set_name, name, max(run_id) AS run_id, arg_max(params, run_id) AS params
    FROM finished
    GROUP BY stage, set_name, name
)

SELECT * FROM final;
