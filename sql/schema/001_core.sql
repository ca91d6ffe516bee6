-- Core tables: every file ever seen, every stage invocation.
-- No PRIMARY KEY / UNIQUE constraints: DuckDB's ART indexes slow bulk loads and make
-- UPDATE of indexed rows fragile; the stages keep keys unique themselves.

CREATE SEQUENCE IF NOT EXISTS run_id_seq START 1;
CREATE SEQUENCE IF NOT EXISTS image_id_seq START 1;

CREATE TABLE runs (
    run_id        BIGINT NOT NULL,
    stage         VARCHAR NOT NULL,      -- scan, sanitize, predict, apply:sanitize, ...
    params        JSON,                  -- the effective options of this invocation
    started_at    TIMESTAMP NOT NULL,
    finished_at   TIMESTAMP,
    status        VARCHAR NOT NULL,      -- running | done | failed
    tool_version  VARCHAR NOT NULL,
    pid           INTEGER,
    host          VARCHAR,
    summary       JSON,                  -- counts the stage reported at the end
    error         VARCHAR
);

CREATE TABLE images (
    image_id          BIGINT NOT NULL,
    root              VARCHAR NOT NULL,  -- absolute, resolved scan root
    rel_path          VARCHAR NOT NULL,  -- POSIX path relative to root
    size_bytes        BIGINT,
    mtime_ns          BIGINT,
    content_hash      VARCHAR,           -- xxh3-128 of the bytes, hex
    width             INTEGER,
    height            INTEGER,
    format            VARCHAR,           -- Pillow format name (JPEG, PNG, ...)
    mode              VARCHAR,           -- Pillow mode (RGB, CMYK, I;16, P, ...)
    exif_orientation  SMALLINT,
    n_frames          INTEGER,
    has_transparency  BOOLEAN,
    header_error      VARCHAR,           -- rule:detail when the header could not be read
    version           INTEGER NOT NULL,  -- bumped whenever the bytes change
    present           BOOLEAN NOT NULL,
    first_run         BIGINT,            -- run that first registered the file
    updated_run       BIGINT             -- run that last changed this row's facts
);
