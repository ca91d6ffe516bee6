-- Duplicate groups = connected components of (exact copies + near-duplicate edges under
-- `threshold`), one keeper per group. Changing threshold or keep is a new query, never a new
-- neighbour search. keep: random (seeded) | alphabetical | largest-resolution | largest-file;
-- ties fall back to the path, then image_id. embedding_set: NULL = every reported set.
-- Components use label propagation (a keyed recursive CTE): each node takes the smallest
-- image_id reachable from it.
CREATE OR REPLACE MACRO dedup_actions(threshold := 0.25, keep := 'largest-resolution', seed := 0,
                                      embedding_set := NULL) AS TABLE
WITH RECURSIVE checked AS (
    SELECT CASE
        WHEN keep IN ('random', 'alphabetical', 'largest-resolution', 'largest-file') THEN keep
        ELSE error('unknown keep strategy ' || keep || ': use random, alphabetical, largest-resolution or largest-file')
    END AS keep
),

edges AS (
    SELECT image_a AS a, image_b AS b, distance FROM exact_duplicate_edges
    UNION ALL
    SELECT image_a, image_b, distance FROM near_duplicate_edges
    WHERE distance < threshold AND (embedding_set IS NULL OR set_name = embedding_set)
),

undirected AS (
    SELECT a AS src, b AS dst FROM edges
    UNION
    SELECT b, a FROM edges
),

components(node, label) USING KEY (node) AS (
    SELECT DISTINCT src, src FROM undirected
    UNION
    SELECT u.src, min(r.label)
    FROM recurring.components AS r
    JOIN undirected AS u ON u.dst = r.node
    JOIN recurring.components AS me ON me.node = u.src
    GROUP BY u.src, me.label
    HAVING min(r.label) < me.label
),

closest AS (
    SELECT image_id, min(distance) AS distance
    FROM (SELECT a AS image_id, distance FROM edges UNION ALL SELECT b, distance FROM edges)
    GROUP BY image_id
),

members AS (
    SELECT c.label AS group_id, f.image_id, f.version, f.path, f.width, f.height, f.size_bytes,
           d.distance AS nearest_distance
    FROM components AS c
    JOIN image_files AS f ON f.image_id = c.node
    JOIN closest AS d ON d.image_id = c.node
),

ranked AS (
    SELECT m.*, count(*) OVER (PARTITION BY m.group_id) AS group_size,
        row_number() OVER (
            PARTITION BY m.group_id
            ORDER BY
                CASE WHEN k.keep = 'random' THEN hash(m.image_id, seed) END,
                CASE WHEN k.keep = 'largest-resolution' THEN -(m.width::BIGINT * m.height) END,
                CASE WHEN k.keep = 'largest-file' THEN -m.size_bytes END,
                m.path, m.image_id
        ) AS rank_in_group
    FROM members AS m, checked AS k
),

final AS (
    SELECT group_id, image_id, version, path, group_size, rank_in_group, nearest_distance,
        CASE WHEN rank_in_group = 1 THEN 'keep' ELSE 'delete' END AS action,
        format('duplicate group {} of {} images (nearest at distance {:.4f}); kept by {}',
               group_id, group_size, nearest_distance, (SELECT keep FROM checked)) AS reason
    FROM ranked
)

SELECT * FROM final;
