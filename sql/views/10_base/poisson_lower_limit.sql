-- The 97.5% lower limit of a Poisson mean after observing x events (half the 2.5% quantile of
-- chi-square with 2x degrees of freedom): 0.0253, 0.2422, 0.6187 at 1, 2, 3 events, linear in
-- between (an effective sample's counts are fractional); defined for 0 <= x <= 3, as wilson_bound uses it.
CREATE OR REPLACE MACRO poisson_lower_limit(x) AS (
    CASE WHEN x <= 1 THEN 0.0253 * x
         WHEN x <= 2 THEN 0.0253 + (x - 1) * 0.2169
         ELSE 0.2422 + (x - 2) * 0.3765 END
);
