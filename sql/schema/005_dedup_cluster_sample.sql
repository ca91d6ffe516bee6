-- Derived decisions' inputs: duplicate edges, filters, clusters, samples.

CREATE TABLE dup_edges (
    run_id    BIGINT NOT NULL,
    set_name  VARCHAR NOT NULL,          -- embedding set, or 'content_hash' for exact copies
    image_a   BIGINT NOT NULL,           -- image_a < image_b
    image_b   BIGINT NOT NULL,
    version_a INTEGER NOT NULL,
    version_b INTEGER NOT NULL,
    distance  FLOAT NOT NULL
);

CREATE TABLE example_distances (
    run_id    BIGINT NOT NULL,
    set_name  VARCHAR NOT NULL,
    image_id  BIGINT NOT NULL,
    version   INTEGER NOT NULL,
    distance  FLOAT NOT NULL,            -- distance to the nearest unwanted example
    example   VARCHAR                    -- which example
);

CREATE TABLE scores (
    run_id    BIGINT NOT NULL,
    name      VARCHAR NOT NULL,          -- e.g. aesthetic, nsfw
    image_id  BIGINT NOT NULL,
    version   INTEGER NOT NULL,
    score     FLOAT NOT NULL
);

CREATE TABLE clusters (
    run_id      BIGINT NOT NULL,
    level       INTEGER NOT NULL,        -- 0 = finest
    cluster_id  INTEGER NOT NULL,
    parent_id   INTEGER,                 -- cluster at level + 1, NULL at the top
    size        BIGINT NOT NULL,         -- images under this cluster
    center      FLOAT[]
);

CREATE TABLE assignments (
    run_id      BIGINT NOT NULL,
    image_id    BIGINT NOT NULL,
    version     INTEGER NOT NULL,
    level       INTEGER NOT NULL,
    cluster_id  INTEGER NOT NULL,
    distance    FLOAT                    -- distance to the cluster centre
);

CREATE TABLE samples (
    run_id    BIGINT NOT NULL,
    image_id  BIGINT NOT NULL,
    version   INTEGER NOT NULL
);
