-- One end of the 95% modified Wilson score interval (Brown, Cai & DasGupta 2001, Statistical
-- Science 16:101) of a proportion p observed on n (effective) trials: side -1 = the lower bound,
-- +1 = the upper. Near 0 and 1, where the plain Wilson bound is too tight, the modification
-- takes the Poisson bound when the count n * p (or n * (1 - p)) is 3 or less: x / n with x the
-- 97.5% lower Poisson limit of the count (0.0253, 0.2422, 0.6187 at 1, 2, 3 events; linear in
-- between, for the fractional counts of an effective sample). n NULL means the proportion is
-- known exactly (a census: no sampling variance), so both ends are p. Used by threshold_calibration.
CREATE OR REPLACE MACRO wilson_bound(p, n, side) AS (
    CASE WHEN p IS NULL THEN NULL
         WHEN n IS NULL OR isinf(n) THEN p
         WHEN n <= 0 THEN (side + 1) / 2  -- no information: [0, 1]
         -- few events on this side: the Poisson limit, when it reaches further than Wilson's
         WHEN side < 0 AND n * p <= 3
         THEN least(wilson_plain_bound(p, n, side), poisson_lower_limit(n * p) / n)
         WHEN side > 0 AND n * (1 - p) <= 3
         THEN greatest(wilson_plain_bound(p, n, side), 1 - poisson_lower_limit(n * (1 - p)) / n)
         ELSE wilson_plain_bound(p, n, side)
    END
);
