-- What survives every decision at the catalog's settings: surviving_images (sanitize,
-- unreadable files, duplicates, unwanted examples, score range) and, once a sampling run has
-- finished, only the images the newest one selected (`vdc-lake sample` chooses among
-- surviving_images, so this holds exactly its total while the settings stay) plus the images
-- kept by override (sampling counts them toward its total; one kept after the sampling run is
-- added to it). Dropped-by-override images are not in surviving_images. Cluster ids come
-- from the cluster run the newest sample sampled from, else the newest one (image_clusters;
-- NULL before any). This is what `vdc-lake export` writes by default.
CREATE OR REPLACE VIEW curated AS
WITH newest_sample AS (
    SELECT (SELECT run_id FROM newest_stage_runs WHERE stage = 'sample') AS run_id
),

final AS (
    SELECT v.image_id, v.version, v.path, v.root, v.rel_path, v.width, v.height, v.format, v.size_bytes,
           v.content_hash, c.leaf_cluster_id, c.top_cluster_id, c.cluster_run, s.run_id AS sample_run
    FROM surviving_images AS v
    CROSS JOIN newest_sample AS n
    LEFT JOIN sampled_images AS s ON s.image_id = v.image_id AND s.version = v.version
    LEFT JOIN image_clusters AS c ON c.image_id = v.image_id AND c.version = v.version
    WHERE n.run_id IS NULL OR s.image_id IS NOT NULL
       OR EXISTS (SELECT 1 FROM override_actions AS o
                  WHERE o.image_id = v.image_id AND o.version = v.version AND o.override = 'keep')
)

SELECT * FROM final;
