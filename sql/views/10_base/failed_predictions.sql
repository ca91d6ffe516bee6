-- Present images whose current version a set has no result for because predict failed on it:
-- one row per (set, image) with the newest attempt's reason and how many attempts failed.
-- `predict` leaves these out (unless --retry-failed) while the bytes stay the same, except a
-- transient failure (an I/O error), which the next predict tries again.
CREATE OR REPLACE VIEW failed_predictions AS
WITH newest AS (
    SELECT
        set_name,
        image_id,
        version,
        run_id,
        error,
        transient,
        count(*) OVER (PARTITION BY set_name, image_id, version) AS attempts
    FROM predict_failures
    QUALIFY row_number() OVER (PARTITION BY set_name, image_id, version ORDER BY run_id DESC) = 1
),

final AS (
    SELECT n.set_name, n.image_id, n.version, n.run_id, n.error, n.transient, n.attempts, i.path
    FROM newest AS n
    JOIN image_files AS i ON i.image_id = n.image_id AND i.version = n.version
    WHERE NOT EXISTS (SELECT 1 FROM embeddings AS e
                      WHERE e.set_name = n.set_name AND e.image_id = n.image_id AND e.version = n.version)
      AND NOT EXISTS (SELECT 1 FROM predictions AS p
                      WHERE p.set_name = n.set_name AND p.image_id = n.image_id AND p.version = n.version)
)

SELECT * FROM final;
