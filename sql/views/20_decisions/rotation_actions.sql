-- Rotation decision (VDC semantics): rotate when the top class is not 0 degrees and its
-- probability is above threshold. probs are ordered [0, 90, 180, 270]; class k means the
-- stored pixels are turned k degrees counter-clockwise, so the fix turns them k degrees
-- clockwise (action rotate_k). prediction_set: NULL = newest rotation set; threshold: NULL =
-- the catalog's setting rotation_correction.threshold.
CREATE OR REPLACE MACRO rotation_actions(threshold := NULL, prediction_set := NULL) AS TABLE
WITH chosen AS (
    SELECT coalesce(prediction_set,
        (SELECT name FROM prediction_sets WHERE kind = 'rotation' ORDER BY created_run DESC LIMIT 1)) AS name,
        coalesce(threshold, setting('rotation_correction', 'threshold')::DOUBLE) AS min_probability
),

latest AS (
    SELECT p.image_id, p.version, p.probs
    FROM predictions AS p
    JOIN chosen AS c ON p.set_name = c.name
    JOIN image_files AS f ON f.image_id = p.image_id AND f.version = p.version
    -- An image predicted twice keeps its newest row: an anti-join on the key columns, not a
    -- window that sorts every prediction row (the common case is one row per image).
    WHERE NOT EXISTS (
        SELECT 1 FROM predictions AS q
        WHERE q.set_name = p.set_name AND q.image_id = p.image_id AND q.version = p.version
          AND (q.run_id > p.run_id OR (q.run_id = p.run_id AND q.rowid > p.rowid))
    )
),

scored AS (
    SELECT l.image_id, l.version, list_max(l.probs) AS confidence,
           (list_position(l.probs, list_max(l.probs)) - 1) * 90 AS angle, c.min_probability
    FROM latest AS l
    CROSS JOIN chosen AS c
),

final AS (
    SELECT image_id, version, angle, confidence,
        CASE WHEN angle <> 0 AND confidence > min_probability THEN 'rotate_' || angle ELSE 'none' END AS action,
        format('predicted {} degrees with probability {:.3f} (threshold {})', angle, confidence, min_probability) AS reason
    FROM scored
)

SELECT * FROM final;
