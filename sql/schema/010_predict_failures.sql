-- Predict: why an image got no result in a set. One row per failed attempt: predict run
-- `run_id` could not compute set `set_name` for the bytes of (image_id, version). Append-only
-- history; sql/views/failed_predictions.sql gives the failures still standing.
-- Not a sanitize finding: nothing here ever becomes a deletion. `predict` does not try the
-- same bytes again for the same set (a new version is tried; `predict --retry-failed` asks),
-- except after a `transient` failure (the file could not be opened or read: an I/O error
-- says nothing about its bytes).

CREATE TABLE predict_failures (
    run_id     BIGINT NOT NULL,
    set_name   VARCHAR NOT NULL,
    image_id   BIGINT NOT NULL,
    version    INTEGER NOT NULL,
    error      VARCHAR NOT NULL,         -- the reason, e.g. "cannot decode: image file is truncated"
    transient  BOOLEAN NOT NULL          -- an I/O error (missing, unreadable): the next predict tries again
);
