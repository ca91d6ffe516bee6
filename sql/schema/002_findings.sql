-- Sanitize: which (image, version) pairs a run checked, and what it found.

CREATE TABLE sanitize_checks (
    run_id    BIGINT NOT NULL,
    image_id  BIGINT NOT NULL,
    version   INTEGER NOT NULL,
    decoded   BOOLEAN NOT NULL           -- false for --quick (header facts only)
);

CREATE TABLE findings (
    run_id    BIGINT NOT NULL,
    image_id  BIGINT NOT NULL,
    version   INTEGER NOT NULL,
    rule      VARCHAR NOT NULL,          -- e.g. width_too_small, corrupt, animated
    detail    VARCHAR NOT NULL,          -- readable reason, with the measured value
    action    VARCHAR NOT NULL           -- delete | resize | recompress | none (recorded only)
);
