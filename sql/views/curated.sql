-- What survives every decision at its default setting: present images, minus pending sanitize
-- deletes, minus files that cannot be read at their current version, minus duplicates
-- (dedup_actions with its defaults; exact copies included), minus images near unwanted examples
-- (example_actions with its default) and, once a sampling run has
-- finished, only the images the newest one selected. Cluster ids come from the newest finished
-- cluster run (NULL before any). This is what `vdc-lake export` writes by default.
CREATE OR REPLACE VIEW curated AS
WITH files AS (
    SELECT image_id, version, path, root, rel_path, width, height, format, size_bytes, content_hash
    FROM image_files
),

sanitize_deletes AS (
    SELECT image_id, version FROM sanitize_actions WHERE action = 'delete'
),

latest_check AS (
    SELECT image_id, version, max(run_id) AS run_id FROM sanitize_checks GROUP BY image_id, version
),

-- recorded with action 'none' (sanitize cannot delete what it cannot read), but not exportable
unreadable AS (
    SELECT DISTINCT f.image_id, f.version
    FROM findings AS f
    JOIN latest_check AS c ON c.image_id = f.image_id AND c.version = f.version AND c.run_id = f.run_id
    WHERE f.rule IN ('unreadable', 'broken_symlink')
),

duplicate_deletes AS (
    SELECT image_id, version FROM dedup_actions() WHERE action = 'delete'
),

example_deletes AS (
    SELECT image_id, version FROM example_actions() WHERE action = 'delete'
),

newest_sample AS (
    SELECT max(run_id) AS run_id FROM runs WHERE stage = 'sample' AND status = 'done'
),

surviving AS (
    SELECT f.*
    FROM files AS f
    WHERE NOT EXISTS (SELECT 1 FROM sanitize_deletes AS d WHERE d.image_id = f.image_id AND d.version = f.version)
      AND NOT EXISTS (SELECT 1 FROM unreadable AS u WHERE u.image_id = f.image_id AND u.version = f.version)
      AND NOT EXISTS (SELECT 1 FROM duplicate_deletes AS d WHERE d.image_id = f.image_id AND d.version = f.version)
      AND NOT EXISTS (SELECT 1 FROM example_deletes AS e WHERE e.image_id = f.image_id AND e.version = f.version)
),

final AS (
    SELECT v.image_id, v.version, v.path, v.root, v.rel_path, v.width, v.height, v.format, v.size_bytes,
           v.content_hash, c.leaf_cluster_id, c.top_cluster_id, c.cluster_run, s.run_id AS sample_run
    FROM surviving AS v
    CROSS JOIN newest_sample AS n
    LEFT JOIN sampled_images AS s ON s.image_id = v.image_id AND s.version = v.version
    LEFT JOIN image_clusters AS c ON c.image_id = v.image_id AND c.version = v.version
    WHERE n.run_id IS NULL OR s.image_id IS NOT NULL
)

SELECT * FROM final;
