-- One sanitize action per present image, from the latest check of its current version.
-- VDC's priority: delete > resize > recompress; 'none' findings are recorded, not acted on.
-- An image kept by override (override_actions) loses its delete findings only: a resize or
-- recompress finding still applies to it (keeping an image does not mean keeping it oversized).
CREATE OR REPLACE VIEW sanitize_actions AS
WITH kept AS (
    SELECT image_id, version FROM override_actions WHERE override = 'keep'
),

actionable AS (
    SELECT f.image_id, f.version, f.run_id, f.rule, f.detail, f.action
    FROM findings AS f
    JOIN latest_sanitize_checks AS c
        ON c.image_id = f.image_id AND c.version = f.version AND c.run_id = f.run_id
    WHERE f.action <> 'none'
      AND NOT (f.action = 'delete'
               AND EXISTS (SELECT 1 FROM kept AS k WHERE k.image_id = f.image_id AND k.version = f.version))
),

final AS (
    SELECT
        a.image_id,
        a.version,
        any_value(a.run_id) AS run_id,
        arg_min(a.action, CASE a.action WHEN 'delete' THEN 1 WHEN 'resize' THEN 2 ELSE 3 END) AS action,
        string_agg(a.rule, ', ' ORDER BY a.rule) AS rules,
        string_agg(a.rule || ': ' || a.detail, '; ' ORDER BY a.rule) AS reason,
        any_value(i.path) AS path
    FROM actionable AS a
    JOIN image_files AS i ON i.image_id = a.image_id AND i.version = a.version
    GROUP BY a.image_id, a.version
)

SELECT * FROM final;
