-- Image-quality findings per image (quality_actions() has one row per image and issue): the
-- `quality` decision's rows. action 'delete' when any of its issues deletes it, else 'none'
-- (reported); reason names every issue with its value, the deleting ones first.
CREATE OR REPLACE MACRO quality_image_actions() AS TABLE
WITH final AS (
    SELECT image_id, version, any_value(path) AS path,
        CASE WHEN bool_or(action = 'delete') THEN 'delete' ELSE 'none' END AS action,
        string_agg(format('{} {:.4g}', issue, value), '; ' ORDER BY action = 'delete' DESC, issue) AS reason,
        min(issue) AS first_issue
    FROM quality_actions()
    GROUP BY image_id, version
)

SELECT * FROM final;
