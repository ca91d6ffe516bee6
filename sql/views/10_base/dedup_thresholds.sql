-- The distance thresholds dedup uses for each embedding set, and where each comes from:
-- a value the user set in vdc-lake.toml / --config wins; else the set's own recommendation
-- (embedding_sets.apply_threshold / report_threshold, recorded from its model or descriptor,
-- see vdc_lake/catalog/sets.py recommended_dedup_thresholds); else the bundled default. The row with set_name NULL serves sets that are not
-- registered (edges imported under another name).
CREATE OR REPLACE VIEW dedup_thresholds AS
WITH configured AS (
    SELECT
        (max(value) FILTER (WHERE section = 'apply_deduplication' AND key = 'threshold'))::DOUBLE AS apply_value,
        max(source) FILTER (WHERE section = 'apply_deduplication' AND key = 'threshold') AS apply_source,
        (max(value) FILTER (WHERE section = 'dedup' AND key = 'report_threshold'))::DOUBLE AS report_value,
        max(source) FILTER (WHERE section = 'dedup' AND key = 'report_threshold') AS report_source
    FROM settings
),

sets AS (
    SELECT name AS set_name, apply_threshold, report_threshold FROM embedding_sets
    UNION ALL
    SELECT NULL, NULL, NULL
),

final AS (
    SELECT
        s.set_name,
        CASE WHEN c.apply_source <> 'default' OR s.apply_threshold IS NULL THEN c.apply_value
             ELSE s.apply_threshold END AS apply_threshold,
        CASE WHEN c.apply_source <> 'default' THEN c.apply_source
             WHEN s.apply_threshold IS NOT NULL THEN 'set ' || s.set_name
             ELSE 'default' END AS apply_source,
        CASE WHEN c.report_source <> 'default' OR s.report_threshold IS NULL THEN c.report_value
             ELSE s.report_threshold END AS report_threshold,
        CASE WHEN c.report_source <> 'default' THEN c.report_source
             WHEN s.report_threshold IS NOT NULL THEN 'set ' || s.set_name
             ELSE 'default' END AS report_source
    FROM sets AS s
    CROSS JOIN configured AS c
)

SELECT * FROM final;
