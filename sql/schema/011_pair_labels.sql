-- The user's verdicts on pairs of images ("are these two duplicates?"), for calibrating a dedup
-- threshold on their own data (`vdc-lake labels draw/import`, the review app's label mode, see
-- vdc_lake/review/calibration.py), and the stratified draws those pairs come from.
-- Append-only. A label judges the two images' bytes at version_a / version_b: once either file
-- changes it is stale and drops out of pair_labels_in_force (kept as history). The newest label
-- of a pair at its versions is the one in force.

CREATE TABLE pair_labels (
    image_a       BIGINT NOT NULL,       -- image_a < image_b
    version_a     INTEGER NOT NULL,
    image_b       BIGINT NOT NULL,
    version_b     INTEGER NOT NULL,
    is_duplicate  BOOLEAN NOT NULL,
    source        VARCHAR NOT NULL,      -- 'import:FILE', 'app', or a caller's name
    labelled_at   TIMESTAMP NOT NULL,
    run_id        BIGINT NOT NULL        -- the `labels` run that recorded it (one per import)
);

-- One row per pair of a `labels draw` run: a stratified sample over distance bins of a set's
-- stored pairs, plus the chained stratum (same duplicate group, no stored pair).
CREATE TABLE pair_draws (
    run_id     BIGINT NOT NULL,          -- the `labels-draw` run
    set_name   VARCHAR NOT NULL,
    position   INTEGER NOT NULL,         -- the order pairs are offered in (bins interleaved)
    image_a    BIGINT NOT NULL,          -- image_a < image_b
    version_a  INTEGER NOT NULL,
    image_b    BIGINT NOT NULL,
    version_b  INTEGER NOT NULL,
    distance   FLOAT,                    -- NULL for a chained pair without a stored distance
    bin        INTEGER NOT NULL,         -- 0..bins-1 by distance; bins = the chained stratum
    weight     DOUBLE NOT NULL           -- pairs in its stratum / pairs drawn from it
);
