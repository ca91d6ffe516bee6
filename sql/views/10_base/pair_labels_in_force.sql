-- The user's pair labels in force: the newest label of each pair (image_a < image_b) whose two
-- images are present at the versions the label judged. A label of a file that changed since
-- (a new version) is stale and drops out; it stays in pair_labels as history.
CREATE OR REPLACE VIEW pair_labels_in_force AS
WITH newest AS (
    SELECT image_a, version_a, image_b, version_b, is_duplicate, source, labelled_at, run_id
    FROM pair_labels
    QUALIFY row_number() OVER (PARTITION BY image_a, image_b ORDER BY run_id DESC, labelled_at DESC) = 1
),

final AS (
    SELECT n.*
    FROM newest AS n
    JOIN image_files AS fa ON fa.image_id = n.image_a AND fa.version = n.version_a
    JOIN image_files AS fb ON fb.image_id = n.image_b AND fb.version = n.version_b
)

SELECT * FROM final;
