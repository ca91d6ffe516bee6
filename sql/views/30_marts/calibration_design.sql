-- The distance bins (strata) a threshold calibration of one embedding set uses: `bins` equal
-- bins over [0, searched), searched = the distance the set's newest `dedup report` searched (its
-- stored pairs reach no further). bins: the parameter, else the count of the set's newest
-- `labels draw` made since that report (so the estimate matches how its pairs were drawn), else
-- the setting calibration.bins. Candidate thresholds are the bins' upper edges.
CREATE OR REPLACE MACRO calibration_design(embedding_set, bins := NULL) AS TABLE
WITH reported AS (
    SELECT run_id AS report_run, TRY_CAST(json_extract(params, '$.threshold') AS DOUBLE) AS upper
    FROM newest_runs
    WHERE stage = 'dedup-report' AND set_name = embedding_set
),

drawn AS (
    SELECT n.run_id AS draw_run, TRY_CAST(json_extract(n.params, '$.bins') AS INTEGER) AS drawn_bins
    FROM newest_runs AS n
    WHERE n.stage = 'labels-draw' AND n.set_name = embedding_set
),

chosen AS (
    SELECT coalesce(bins, (SELECT d.drawn_bins FROM drawn AS d WHERE d.draw_run > r.report_run),
                    setting('calibration', 'bins')::INTEGER) AS n_bins,
           r.upper
    FROM reported AS r
),

final AS (
    SELECT n_bins AS bins, upper AS searched, upper / n_bins AS width
    FROM chosen
    WHERE upper > 0 AND n_bins >= 1
)

SELECT * FROM final;
