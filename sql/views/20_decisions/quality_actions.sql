-- Image-quality findings at the catalog's [quality] settings: one row per present image and
-- issue (dark, bright, blurry, low_information, grayscale) its newest quality values
-- (image_quality, from sanitize's decode pass) show at its current version, with the value.
-- action 'delete' past a delete_* threshold (none are set by default: report only), else
-- 'none' (reported). A flat image is low_information, not also blurry. An image kept by
-- override is never deleted: action 'none'.
CREATE OR REPLACE MACRO quality_actions() AS TABLE
WITH newest AS (
    SELECT q.*
    FROM image_quality AS q
    JOIN image_files AS f ON f.image_id = q.image_id AND f.version = q.version
    QUALIFY row_number() OVER (PARTITION BY q.image_id ORDER BY q.run_id DESC) = 1
),

limits AS (
    SELECT
        setting('quality', 'dark')::DOUBLE AS dark,
        setting('quality', 'bright')::DOUBLE AS bright,
        setting('quality', 'blurry')::DOUBLE AS blurry,
        setting('quality', 'low_information')::DOUBLE AS low_information,
        setting('quality', 'grayscale')::DOUBLE AS grayscale,
        setting('quality', 'delete_dark')::DOUBLE AS delete_dark,
        setting('quality', 'delete_bright')::DOUBLE AS delete_bright,
        setting('quality', 'delete_blurry')::DOUBLE AS delete_blurry,
        setting('quality', 'delete_low_information')::DOUBLE AS delete_low_information,
        setting('quality', 'delete_grayscale')::DOUBLE AS delete_grayscale
),

issues AS (
    SELECT n.image_id, n.version, 'dark' AS issue, n.brightness_p99 AS value,
           n.brightness_p99 < l.dark AS found, n.brightness_p99 < l.delete_dark AS deletes
    FROM newest AS n CROSS JOIN limits AS l
    UNION ALL
    SELECT n.image_id, n.version, 'bright', n.brightness_p5, n.brightness_p5 > l.bright, n.brightness_p5 > l.delete_bright
    FROM newest AS n CROSS JOIN limits AS l
    UNION ALL
    SELECT n.image_id, n.version, 'blurry', n.sharpness,
           n.sharpness < l.blurry AND n.entropy >= l.low_information,
           n.sharpness < l.delete_blurry AND n.entropy >= l.low_information
    FROM newest AS n CROSS JOIN limits AS l
    UNION ALL
    SELECT n.image_id, n.version, 'low_information', n.entropy, n.entropy < l.low_information,
           n.entropy < l.delete_low_information
    FROM newest AS n CROSS JOIN limits AS l
    UNION ALL
    SELECT n.image_id, n.version, 'grayscale', n.colour, n.colour <= l.grayscale, n.colour <= l.delete_grayscale
    FROM newest AS n CROSS JOIN limits AS l
    WHERE n.colour IS NOT NULL
),

final AS (
    SELECT i.image_id, i.version, f.path, i.issue, i.value,
        CASE WHEN i.deletes AND o.image_id IS NULL THEN 'delete' ELSE 'none' END AS action
    FROM issues AS i
    JOIN image_files AS f ON f.image_id = i.image_id AND f.version = i.version
    LEFT JOIN override_actions AS o ON o.image_id = i.image_id AND o.version = i.version AND o.override = 'keep'
    WHERE i.found OR i.deletes
)

SELECT * FROM final;
