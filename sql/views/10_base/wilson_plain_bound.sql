-- One end of the plain 95% Wilson score interval of a proportion p on n trials (side -1 lower,
-- +1 upper), clipped to [0, 1]. wilson_bound modifies it near 0 and 1.
CREATE OR REPLACE MACRO wilson_plain_bound(p, n, side) AS (
    greatest(0.0, least(1.0,
        (p + 1.959964 ^ 2 / (2 * n) + side * 1.959964 * sqrt(greatest(p * (1 - p), 0) / n + 1.959964 ^ 2 / (4 * n ^ 2)))
        / (1 + 1.959964 ^ 2 / n)))
);
