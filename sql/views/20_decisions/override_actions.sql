-- The overrides in force: one row per present image whose newest `overrides` row is keep or
-- drop and still judges the current bytes. `override` is the user's verdict; `action` is what
-- the `override` decision stage does with it (drop -> delete, keep -> keep).
-- An override judged version v; it holds for the current version w when w = v, or when every
-- step from v to w was an operation of vdc-lake's apply (rotate, resize, recompress: a done
-- journal row on each version v .. w-1, each of which made the next version). A file changed
-- outside vdc-lake (a new version from `scan`) is not what the user judged: the override lapses
-- (`vdc-lake override list` shows it as lapsed). A `keep` means no decision removes the image
-- (sanitize, dedup, example, score and sample deletes leave it; dedup keeps it as its group's
-- keeper); a `drop` deletes it through `plan/apply override` and takes it out of surviving_images.
CREATE OR REPLACE VIEW override_actions AS
WITH newest AS (
    SELECT image_id, version AS judged_version, action AS override, reason AS user_reason, run_id, created_at
    FROM overrides
    QUALIFY row_number() OVER (PARTITION BY image_id ORDER BY run_id DESC, created_at DESC) = 1
),

-- versions that vdc-lake's apply made from the one before (journal row on version k -> k + 1)
applied_steps AS (
    SELECT j.image_id, j.version
    FROM journal AS j
    WHERE j.state = 'done' AND j.action <> 'delete'
      AND EXISTS (SELECT 1 FROM newest AS n WHERE n.image_id = j.image_id)
    GROUP BY j.image_id, j.version
),

in_force AS (
    SELECT n.*, f.version, f.path
    FROM newest AS n
    JOIN image_files AS f ON f.image_id = n.image_id
    WHERE n.override IN ('keep', 'drop')
      AND f.version >= n.judged_version
      AND f.version - n.judged_version = (
          SELECT count(*) FROM applied_steps AS s
          WHERE s.image_id = n.image_id AND s.version >= n.judged_version AND s.version < f.version)
),

final AS (
    SELECT image_id, version, path, override,
        CASE override WHEN 'drop' THEN 'delete' ELSE 'keep' END AS action,
        format('{} by override: {} (override run {})', CASE override WHEN 'drop' THEN 'dropped' ELSE 'kept' END,
               coalesce(nullif(user_reason, ''), 'no reason given'), run_id) AS reason,
        user_reason, judged_version, run_id, created_at
    FROM in_force
)

SELECT * FROM final;
