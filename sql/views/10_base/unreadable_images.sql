-- Images whose file could not be read when the newest sanitize check of their version read it
-- ('unreadable', 'broken_symlink', 'missing': recorded with action 'none', since sanitize cannot
-- delete what it cannot read), or may not be read ('outside_root': it resolves outside every
-- scanned root, confine.ReadableRoots). They are not exportable (surviving_images leaves them
-- out), never a duplicate group's keeper while a readable member exists (dedup_actions), and the
-- report's funnel counts them out of "sanitized ok".
CREATE OR REPLACE VIEW unreadable_images AS
WITH final AS (
    SELECT DISTINCT f.image_id, f.version
    FROM findings AS f
    JOIN latest_sanitize_checks AS c ON c.image_id = f.image_id AND c.version = f.version AND c.run_id = f.run_id
    WHERE f.rule IN ('unreadable', 'broken_symlink', 'missing', 'outside_root')
)

SELECT * FROM final;
