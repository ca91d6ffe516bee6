-- usearch indexes built over an embedding set, saved next to the catalog.

CREATE TABLE ann_indexes (
    set_name      VARCHAR NOT NULL,
    run_id        BIGINT NOT NULL,
    path          VARCHAR NOT NULL,      -- the .usearch file (opened memory-mapped)
    n_vectors     BIGINT NOT NULL,
    dim           INTEGER NOT NULL,
    metric        VARCHAR NOT NULL,
    dtype         VARCHAR NOT NULL,      -- f32 | f16 | bf16 | i8
    center        BOOLEAN NOT NULL,
    l2_normalize  BOOLEAN NOT NULL,
    mean          FLOAT[],               -- the centring vector, when center
    created_at    TIMESTAMP NOT NULL
);
