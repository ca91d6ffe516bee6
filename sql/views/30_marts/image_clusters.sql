-- Each image's finest (level 0) and top-level cluster in the clustering the newest finished
-- sampling run sampled from (its params' cluster_run), or before any sample the newest finished
-- cluster run: `curated` and the export manifest name the clusters the sample balanced over, not
-- those of a cluster run made after it (or of a newer one when `sample --cluster-run` took an
-- older). An image that vdc-lake's apply rotated, resized or recompressed since the run keeps its
-- clusters at its current version (applied_versions), as a sample's selection does, so `curated`
-- and the export manifest name the cluster the sample chose it from.
CREATE OR REPLACE VIEW image_clusters AS
WITH chosen_cluster AS (
    SELECT coalesce(
        (SELECT c.run_id
         FROM (SELECT params FROM newest_stage_runs WHERE stage = 'sample') AS s
         JOIN runs AS c ON c.run_id = json_extract(s.params, '$.cluster_run')::BIGINT
                       AND c.stage = 'cluster' AND c.status = 'done'),
        (SELECT run_id FROM newest_stage_runs WHERE stage = 'cluster')) AS run_id
),

-- The top level from the small clusters table, not a window over every assignment row.
top AS (
    SELECT n.run_id, max(c.level) AS top_level
    FROM chosen_cluster AS n JOIN clusters AS c ON c.run_id = n.run_id
    GROUP BY n.run_id
),

cluster_levels AS (
    SELECT a.run_id, a.image_id, a.version, a.level, a.cluster_id, t.top_level
    FROM assignments AS a
    JOIN top AS t ON t.run_id = a.run_id
),

-- assignments of an earlier version that apply alone turned into the current one (few rows)
carried_levels AS (
    SELECT c.run_id, c.image_id, v.version, c.level, c.cluster_id, c.top_level
    FROM cluster_levels AS c
    JOIN applied_versions AS v ON v.image_id = c.image_id
    WHERE c.version >= v.first_version AND c.version < v.version
),

final AS (
    SELECT image_id, version, any_value(run_id) AS cluster_run,
           max(cluster_id) FILTER (WHERE level = 0) AS leaf_cluster_id,
           max(cluster_id) FILTER (WHERE level = top_level) AS top_cluster_id
    FROM (SELECT * FROM cluster_levels UNION ALL SELECT * FROM carried_levels)
    GROUP BY image_id, version
)

SELECT * FROM final;
