-- Duplicate groups = connected components of (exact copies + near-duplicate edges under the
-- apply threshold), one keeper per group. Changing threshold or keep is a new query, never a
-- new neighbour search.
-- Parameters default to the catalog's settings (NULL = the setting): threshold to
-- dedup_thresholds (the user's configured value, else each set's recommendation, else the
-- bundled default: per edge, by its set), keep and seed to [apply_deduplication].
-- keep: random (seeded) | alphabetical | largest-resolution | largest-file. Ties (and every
-- strategy but random after its own key) go to the better file, in this order: more pixels,
-- format (lossless PNG/TIFF/BMP > JPEG > WEBP > GIF > other: a WebP or GIF beside a JPEG of the
-- same size is nearly always a derived copy, whatever its quality), more bytes per pixel (less
-- compressed), then path, then image_id. embedding_set: NULL = every reported set.
-- A group is a connected component, as VDC's apply_deduplication builds it: a chain A~B, B~C under
-- the threshold puts A and C in one group even when A and C are far apart, so a member can be
-- deleted as the duplicate of a keeper it has no pair with under the threshold; kept_distance
-- (the stored distance between a member and its keeper, NULL when no pair was stored) and the
-- reason say so.
-- The keeper is always a member that survives the other decisions when the group has one: a
-- member that sanitize deletes, whose file cannot be read (latest sanitize check), that an
-- example or score filter deletes (at the catalog's settings) or that is dropped by override
-- is never chosen while another member is not, so the group's last copy is never lost to two
-- decisions (a 60 px thumbnail kept by `alphabetical`, its full-size copy deleted as its duplicate).
-- Overrides (override_actions) come first: an image kept by override is never deleted and is its
-- group's keeper (the others are deleted as its duplicates; several kept images in one group
-- are all kept, the best of them by the rules above is the keeper) unless its file cannot be read
-- (then a readable member is the keeper, and the kept one stays too), and an image dropped by
-- override is never chosen as keeper while another member is not dropped.
-- Components use label propagation (a keyed recursive CTE): each node takes the smallest
-- image_id reachable from it.
CREATE OR REPLACE MACRO dedup_actions(threshold := NULL, keep := NULL, seed := NULL,
                                      embedding_set := NULL) AS TABLE
WITH RECURSIVE chosen AS (
    SELECT coalesce(keep, setting('apply_deduplication', 'keep')) AS keep_rule,
           coalesce(seed, setting('apply_deduplication', 'seed')::BIGINT) AS seed_value
),

checked AS (
    SELECT CASE
        WHEN c.keep_rule IN ('random', 'alphabetical', 'largest-resolution', 'largest-file') THEN c.keep_rule
        ELSE error('unknown keep strategy ' || c.keep_rule || ': use random, alphabetical, largest-resolution or largest-file')
    END AS keep_rule, c.seed_value
    FROM chosen AS c
),

fallback AS (
    SELECT apply_threshold FROM dedup_thresholds WHERE set_name IS NULL
),

near AS (
    SELECT n.image_a, n.image_b, n.distance,
           coalesce(threshold, t.apply_threshold, f.apply_threshold) AS limit_distance
    FROM near_duplicate_edges AS n
    CROSS JOIN fallback AS f
    LEFT JOIN dedup_thresholds AS t ON t.set_name = n.set_name
    WHERE embedding_set IS NULL OR n.set_name = embedding_set
),

edges AS (
    SELECT image_a AS a, image_b AS b, distance FROM exact_duplicate_edges
    UNION ALL
    SELECT image_a, image_b, distance FROM near WHERE distance < limit_distance
),

-- the pairs under the threshold, each once (is a member linked straight to its keeper?)
direct_pairs AS (
    SELECT DISTINCT least(a, b) AS lo, greatest(a, b) AS hi FROM edges
),

-- every stored distance between two images (under the threshold or not), for kept_distance
stored_pairs AS (
    SELECT least(image_a, image_b) AS lo, greatest(image_a, image_b) AS hi, min(distance) AS distance
    FROM (SELECT image_a, image_b, distance FROM exact_duplicate_edges
          UNION ALL SELECT image_a, image_b, distance FROM near)
    GROUP BY ALL
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
    SELECT c.label AS group_id, f.image_id, f.version, f.path, f.width, f.height, f.size_bytes, f.format,
           d.distance AS nearest_distance,
           f.width::BIGINT * f.height AS pixels,
           f.size_bytes / greatest(f.width::BIGINT * f.height, 1) AS bytes_per_pixel,
           CASE upper(f.format) WHEN 'PNG' THEN 1 WHEN 'TIFF' THEN 1 WHEN 'BMP' THEN 1
                                WHEN 'JPEG' THEN 2 WHEN 'MPO' THEN 2 WHEN 'WEBP' THEN 3 WHEN 'GIF' THEN 4
                                ELSE 5 END AS format_rank
    FROM components AS c
    JOIN image_files AS f ON f.image_id = c.node
    JOIN closest AS d ON d.image_id = c.node
),

-- members that another decision removes (surviving_images' rules but dedup's own; drops by
-- override are ranked apart, below)
removed_elsewhere AS (
    SELECT DISTINCT image_id, version FROM filter_removals WHERE decision <> 'override'
),

overridden AS (
    SELECT m.*, o.override, o.reason AS override_reason,
           -- kept and readable, then members that survive the other decisions, then kept but
           -- unreadable, then members another decision removes, then dropped by override
           CASE WHEN o.override = 'keep' AND x.image_id IS NULL THEN 0
                WHEN o.override IS NULL AND x.image_id IS NULL THEN 1
                WHEN o.override = 'keep' THEN 2
                WHEN o.override IS NULL THEN 3
                ELSE 4 END AS survival_rank
    FROM members AS m
    LEFT JOIN override_actions AS o ON o.image_id = m.image_id AND o.version = m.version
    LEFT JOIN removed_elsewhere AS x ON x.image_id = m.image_id AND x.version = m.version
),

ranked AS (
    SELECT m.*, count(*) OVER (PARTITION BY m.group_id) AS group_size,
        count(*) FILTER (WHERE m.survival_rank IN (2, 3)) OVER (PARTITION BY m.group_id) AS removed_elsewhere,
        row_number() OVER (
            PARTITION BY m.group_id
            ORDER BY
                m.survival_rank,
                -- hash(image_id, seed) combined the two hashes weakly: one copy of four was kept for 25 of 40 seeds
                CASE WHEN k.keep_rule = 'random' THEN hash(xor(m.image_id, k.seed_value)) END,
                CASE WHEN k.keep_rule = 'alphabetical' THEN m.path END,
                CASE WHEN k.keep_rule = 'largest-file' THEN -m.size_bytes END,
                -m.pixels NULLS LAST, m.format_rank, -m.bytes_per_pixel NULLS LAST,
                m.path, m.image_id
        ) AS rank_in_group
    FROM overridden AS m, checked AS k
),

keepers AS (
    SELECT group_id, image_id AS kept_image_id, path AS kept_path,
           CASE WHEN override = 'keep' THEN 'override'
                WHEN survival_rank <= 1 AND removed_elsewhere > 0  -- (dropped ones say so themselves)
                THEN (SELECT keep_rule FROM checked) || ' among the members no other decision removes'
                ELSE (SELECT keep_rule FROM checked) END AS kept_by
    FROM ranked WHERE rank_in_group = 1
),

final AS (
    -- distances in reasons: greatest(d, 0) + 0.0, as a float32 distance of an exact copy can lie a hair
    -- under 0 (never "-0.0000")
    SELECT r.group_id, r.image_id, r.version, r.path, r.group_size, r.rank_in_group, r.nearest_distance,
        CASE WHEN r.rank_in_group = 1 OR r.override = 'keep' THEN 'keep' ELSE 'delete' END AS action,
        k.kept_image_id, k.kept_path,
        CASE WHEN r.override = 'keep'
             THEN format('{}; in duplicate group {} of {} images (nearest at distance {:.4f})',
                         r.override_reason, r.group_id, r.group_size, greatest(r.nearest_distance, 0) + 0.0)
             WHEN r.rank_in_group = 1
             THEN format('kept from duplicate group {} of {} images (nearest at distance {:.4f}) by {}',
                         r.group_id, r.group_size, greatest(r.nearest_distance, 0) + 0.0, k.kept_by)
             ELSE format('duplicate of {} (image {}, kept by {}) in group {} of {} images; nearest at distance {:.4f}',
                         k.kept_path, k.kept_image_id, k.kept_by, r.group_id, r.group_size,
                         greatest(r.nearest_distance, 0) + 0.0)
                  || CASE WHEN l.lo IS NOT NULL THEN format('; distance to the kept image {:.4f}', greatest(p.distance, 0) + 0.0)
                          WHEN p.distance IS NOT NULL
                          THEN format('; distance to the kept image {:.4f}, not under the threshold: '
                                      'in its group through other members', greatest(p.distance, 0) + 0.0)
                          ELSE '; no stored pair with the kept image: in its group through other members' END
        END AS reason,
        r.override,
        CASE WHEN r.image_id <> k.kept_image_id THEN p.distance END AS kept_distance
    FROM ranked AS r
    JOIN keepers AS k ON k.group_id = r.group_id
    LEFT JOIN direct_pairs AS l ON l.lo = least(r.image_id, k.kept_image_id) AND l.hi = greatest(r.image_id, k.kept_image_id)
    LEFT JOIN stored_pairs AS p ON p.lo = least(r.image_id, k.kept_image_id) AND p.hi = greatest(r.image_id, k.kept_image_id)
)

SELECT * FROM final;
