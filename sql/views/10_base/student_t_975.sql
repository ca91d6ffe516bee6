-- The 97.5% quantile of Student's t with df degrees of freedom (df >= 1; fractional df from a
-- Satterthwaite approximation welcome), by the Cornish-Fisher expansion around the normal
-- quantile 1.959964 (within 1% for df >= 3; 4.17 for 4.30 at df = 2). NULL df: the normal
-- quantile. threshold_calibration shrinks its effective sample sizes by (1.959964 / t)^2.
CREATE OR REPLACE MACRO student_t_975(df) AS (
    CASE WHEN df IS NULL OR isinf(df) THEN 1.959964
         ELSE 1.959964 + 2.372271 / greatest(df, 1) + 2.822499 / greatest(df, 1) ^ 2
              + 2.555850 / greatest(df, 1) ^ 3 END
);
