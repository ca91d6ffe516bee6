-- Present images whose current version vdc-lake's apply made from an earlier one (rotate, resize,
-- recompress), with the first version of that unbroken chain: a row computed on any version from
-- first_version to the current one (a sample's selection) still names this image. A done journal
-- row on version k made version k + 1; a file changed outside vdc-lake (a new version from `scan`)
-- breaks the chain, and restored operations are not 'done', so a restored version starts afresh.
-- Images whose current version is the scanned one have no row.
CREATE OR REPLACE VIEW applied_versions AS
WITH steps AS (
    SELECT j.image_id, j.version, f.version AS current_version
    FROM journal AS j
    JOIN image_files AS f ON f.image_id = j.image_id
    WHERE j.state = 'done' AND j.action <> 'delete' AND j.version < f.version
    GROUP BY j.image_id, j.version, f.version
),

-- newest step first: the chain ending at the current version is the run of steps with
-- version + rank = current_version (versions current - 1, current - 2, ... without a gap)
ranked AS (
    SELECT s.*, row_number() OVER (PARTITION BY s.image_id ORDER BY s.version DESC) AS step_rank
    FROM steps AS s
),

final AS (
    SELECT image_id, any_value(current_version) AS version, min(version) AS first_version
    FROM ranked
    WHERE version + step_rank = current_version
    GROUP BY image_id
)

SELECT * FROM final;
