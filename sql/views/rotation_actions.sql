-- Rotation decision (VDC semantics): rotate when the top class is not 0 degrees and its
-- probability is above threshold. probs are ordered [0, 90, 180, 270]; class k means the
-- stored pixels are turned k degrees counter-clockwise, so the fix turns them k degrees
-- clockwise (action rotate_k). prediction_set: NULL = newest rotation set.
CREATE OR REPLACE MACRO rotation_actions(threshold := 0.75, prediction_set := NULL) AS TABLE
WITH chosen AS (
    SELECT coalesce(prediction_set,
        (SELECT name FROM prediction_sets WHERE kind = 'rotation' ORDER BY created_run DESC LIMIT 1)) AS name
),

latest AS (
    SELECT p.image_id, p.version, p.probs
    FROM predictions AS p
    JOIN chosen AS c ON p.set_name = c.name
    JOIN image_files AS f ON f.image_id = p.image_id AND f.version = p.version
    QUALIFY row_number() OVER (PARTITION BY p.image_id ORDER BY p.run_id DESC) = 1
),

scored AS (
    SELECT image_id, version, list_max(probs) AS confidence,
           (list_position(probs, list_max(probs)) - 1) * 90 AS angle
    FROM latest
),

final AS (
    SELECT image_id, version, angle, confidence,
        CASE WHEN angle <> 0 AND confidence > threshold THEN 'rotate_' || angle ELSE 'none' END AS action,
        format('predicted {} degrees with probability {:.3f}', angle, confidence) AS reason
    FROM scored
)

SELECT * FROM final;
