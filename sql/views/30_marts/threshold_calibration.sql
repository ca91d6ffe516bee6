-- "How many of the pairs under this threshold are real duplicates, and how many of the real
-- duplicates does it catch?" For one embedding set, per candidate threshold (the upper edge of
-- each distance bin of calibration_design): the estimated precision and recall within the
-- searched range (the set's stored pairs), from the user's pair labels in force, with 95%
-- intervals. The estimator is explained in vdc_lake/review/calibration.py: per bin h, N_h
-- stored pairs, n_h labelled, y_h duplicates (labels are a simple random sample within a bin,
-- as `labels draw` and the app's label mode take them); precision(t) = sum N_h y_h/n_h / sum N_h
-- over the bins under t, recall(t) = that numerator / the same over every bin; variances from
-- the stratified design (finite-population corrected, each bin's share adjusted Agresti-Coull
-- style to (y_h + 1.92) / (n_h + 3.84)); the interval spans a modified Wilson interval
-- (wilson_bound) on the effective sample size and estimate +- t x standard error.
-- precision/recall are NULL while a bin that holds pairs has no label yet. The images dedup
-- removes at a threshold T are `SELECT count(*) FROM dedup_actions(threshold := T,
-- embedding_set := S) WHERE action = 'delete'`, which `vdc-lake dedup calibrate` adds, one
-- threshold at a time (one query for every candidate would hold all their groups in memory).
CREATE OR REPLACE MACRO threshold_calibration(embedding_set, bins := NULL) AS TABLE
WITH design AS (
    SELECT * FROM calibration_design(embedding_set, bins := bins)
),

pairs AS (
    SELECT p.bin, l.is_duplicate
    FROM calibration_pairs(embedding_set, bins := bins) AS p
    LEFT JOIN pair_labels_in_force AS l ON l.image_a = p.image_a AND l.image_b = p.image_b
),

every_bin AS (
    SELECT unnest(range(d.bins)) AS bin, d.width FROM design AS d
),

counted AS (
    SELECT b.bin, round((b.bin + 1) * b.width, 9) AS threshold,
           count(p.bin)::DOUBLE AS population, count(p.is_duplicate)::DOUBLE AS labelled,
           (count(*) FILTER (WHERE p.is_duplicate))::DOUBLE AS duplicates
    FROM every_bin AS b
    LEFT JOIN pairs AS p ON p.bin = b.bin
    GROUP BY b.bin, b.width
),

strata AS (
    SELECT bin, threshold, population, labelled,
           population * CASE WHEN labelled > 0 THEN duplicates / labelled ELSE 0 END AS total,
           population * (duplicates + 1.920729) / (labelled + 3.841459) AS smoothed_total,
           CASE WHEN labelled > 0
                THEN population ^ 2 * (1 - labelled / population) * ((duplicates + 1.920729) / (labelled + 3.841459))
                     * (1 - (duplicates + 1.920729) / (labelled + 3.841459)) / labelled
                ELSE 0 END AS total_variance,
           (population > 0 AND labelled = 0)::INTEGER AS unlabelled,
           greatest(labelled - 1, 1) AS degrees
    FROM counted
),

weighed AS (
    -- each bin's share of a Satterthwaite degrees-of-freedom count
    SELECT *, total_variance ^ 2 / degrees AS variance_squares FROM strata
),

running AS (
    SELECT bin, threshold,
           sum(population) OVER below AS pairs, sum(labelled) OVER below AS labelled,
           sum(total) OVER below AS total, sum(smoothed_total) OVER below AS smoothed_total,
           sum(total_variance) OVER below AS total_variance, sum(unlabelled) OVER below AS unlabelled,
           sum(variance_squares) OVER below AS variance_squares
    FROM weighed
    WINDOW below AS (ORDER BY bin ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
),

overall AS (
    SELECT sum(total) AS total, sum(smoothed_total) AS smoothed_total,
           sum(total_variance) AS total_variance, sum(unlabelled) AS unlabelled,
           sum(variance_squares) AS variance_squares
    FROM weighed
),

estimates AS (
    SELECT r.bin, r.threshold, r.pairs::BIGINT AS pairs, r.labelled::BIGINT AS labelled,
           CASE WHEN r.pairs > 0 AND r.unlabelled = 0 THEN r.total / r.pairs END AS precision,
           r.smoothed_total / r.pairs AS smoothed_precision,
           r.total_variance / r.pairs ^ 2 AS precision_variance,
           r.total_variance ^ 2 / nullif(r.variance_squares, 0) AS precision_degrees,
           CASE WHEN o.total > 0 AND o.unlabelled = 0 THEN r.total / o.total END AS recall,
           r.smoothed_total / o.smoothed_total AS smoothed_recall,
           -- linearised variance of A / (A + B), A the bins under t, B the others (independent)
           ((o.smoothed_total - r.smoothed_total) ^ 2 * r.total_variance
            + r.smoothed_total ^ 2 * greatest(o.total_variance - r.total_variance, 0))
           / o.smoothed_total ^ 4 AS recall_variance,
           ((o.smoothed_total - r.smoothed_total) ^ 2 * r.total_variance
            + r.smoothed_total ^ 2 * greatest(o.total_variance - r.total_variance, 0)) ^ 2
           / nullif((o.smoothed_total - r.smoothed_total) ^ 4 * r.variance_squares
                    + r.smoothed_total ^ 4 * greatest(o.variance_squares - r.variance_squares, 0), 0) AS recall_degrees
    FROM running AS r
    CROSS JOIN overall AS o
),

sized AS (
    -- effective sample sizes (Kish: the adjusted share's p~ (1 - p~) / the variance, both at the
    -- adjusted shares), shrunk by (z / t)^2 for the few labels behind the variance (Korn &
    -- Graubard 1998); a variance of rounding size means the bins are labelled completely (exact)
    SELECT *,
           CASE WHEN precision_variance > 1e-12 AND smoothed_precision * (1 - smoothed_precision) > 0
                THEN smoothed_precision * (1 - smoothed_precision) / precision_variance
                     * (1.959964 / student_t_975(precision_degrees)) ^ 2 END AS precision_trials,
           CASE WHEN recall_variance > 1e-12 AND smoothed_recall * (1 - smoothed_recall) > 0
                THEN smoothed_recall * (1 - smoothed_recall) / recall_variance
                     * (1.959964 / student_t_975(recall_degrees)) ^ 2 END AS recall_trials,
           CASE WHEN precision_variance > 1e-12
                THEN student_t_975(precision_degrees) * sqrt(precision_variance) END AS precision_spread,
           CASE WHEN recall_variance > 1e-12
                THEN student_t_975(recall_degrees) * sqrt(recall_variance) END AS recall_spread
    FROM estimates
),

final AS (
    -- each interval spans the modified Wilson interval on the effective size and the normal one,
    -- estimate +- t * standard error: the first holds near 0 and 1, the second where the adjusted
    -- shares sit further from the estimate than its spread (a few rare duplicates in large bins)
    SELECT candidate.bin, candidate.threshold, candidate.pairs, candidate.labelled, candidate.precision,
           CASE WHEN candidate.precision IS NOT NULL
                THEN greatest(0.0, least(wilson_bound(candidate.precision, candidate.precision_trials, -1),
                                         candidate.precision - candidate.precision_spread)) END AS precision_low,
           CASE WHEN candidate.precision IS NOT NULL
                THEN least(1.0, greatest(wilson_bound(candidate.precision, candidate.precision_trials, 1),
                                         candidate.precision + candidate.precision_spread)) END AS precision_high,
           candidate.recall,
           CASE WHEN candidate.recall IS NOT NULL
                THEN greatest(0.0, least(wilson_bound(candidate.recall, candidate.recall_trials, -1),
                                         candidate.recall - candidate.recall_spread)) END AS recall_low,
           CASE WHEN candidate.recall IS NOT NULL
                THEN least(1.0, greatest(wilson_bound(candidate.recall, candidate.recall_trials, 1),
                                         candidate.recall + candidate.recall_spread)) END AS recall_high
    FROM sized AS candidate
)

SELECT * FROM final ORDER BY bin;
