-- The population a threshold calibration samples from: every stored pair of one embedding set
-- (near_duplicate_edges, both images at their current versions) under the searched distance,
-- with its distance bin of calibration_design (0 = nearest). `labels draw` samples these per bin.
CREATE OR REPLACE MACRO calibration_pairs(embedding_set, bins := NULL) AS TABLE
WITH design AS (
    SELECT * FROM calibration_design(embedding_set, bins := bins)
),

final AS (
    SELECT e.image_a, e.image_b, e.distance,
           least(floor(e.distance::DOUBLE / d.width), d.bins - 1)::INTEGER AS bin,
           d.bins, d.searched, d.width
    FROM near_duplicate_edges AS e
    CROSS JOIN design AS d
    WHERE e.set_name = embedding_set AND e.distance::DOUBLE < d.searched
)

SELECT * FROM final;
