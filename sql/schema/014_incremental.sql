-- What each exact `dedup report` run covered, so the next one searches only what is new.
-- One row per image of the set as the run searched it: its version then, the run that wrote
-- the vector searched (a set computed again for the same images has other vectors), and whether
-- it had more pairs than max_pairs_per_image (a truncated image is searched again by the next
-- run, since its dropped pairs are not stored). A later incremental run searches the images
-- with no row here at their current version and vector (new, changed, computed again) against
-- all, keeps the run's stored pairs among the others, and drops the pairs of images gone.
CREATE TABLE dedup_coverage (
    run_id     BIGINT NOT NULL,
    set_name   VARCHAR NOT NULL,
    image_id   BIGINT NOT NULL,
    version    INTEGER NOT NULL,
    vector_run BIGINT NOT NULL,
    truncated  BOOLEAN NOT NULL
);
