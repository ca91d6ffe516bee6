-- Byte-identical present files: a star from the lowest image_id of each content hash.
-- No model needed: always part of dedup_actions.
CREATE OR REPLACE VIEW exact_duplicate_edges AS
WITH hashed AS (
    SELECT image_id, version, content_hash
    FROM images
    WHERE present AND content_hash IS NOT NULL AND size_bytes > 0
),

groups AS (
    SELECT content_hash, min(image_id) AS first_id
    FROM hashed
    GROUP BY content_hash
    HAVING count(*) > 1
),

final AS (
    SELECT g.first_id AS image_a, h.image_id AS image_b, 0.0::FLOAT AS distance
    FROM hashed AS h
    JOIN groups AS g ON g.content_hash = h.content_hash
    WHERE h.image_id <> g.first_id
)

SELECT * FROM final;
