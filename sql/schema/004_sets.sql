-- Model outputs. One long table per kind, keyed by set name; vectors are FLOAT[] and are
-- cast to FLOAT[dim] (dim from the registry) when read.

CREATE TABLE embedding_sets (
    name           VARCHAR NOT NULL,     -- e.g. builtin, resnet_v1_50_c1_sscd
    kind           VARCHAR NOT NULL,     -- descriptor | embedding
    model          VARCHAR,
    dim            INTEGER NOT NULL,
    preprocessing  JSON,
    created_run    BIGINT
);

CREATE TABLE embeddings (
    set_name  VARCHAR NOT NULL,
    image_id  BIGINT NOT NULL,
    version   INTEGER NOT NULL,
    run_id    BIGINT NOT NULL,
    vector    FLOAT[] NOT NULL
);

CREATE TABLE prediction_sets (
    name           VARCHAR NOT NULL,     -- e.g. rotation
    kind           VARCHAR NOT NULL,     -- rotation | classification | score
    model          VARCHAR,
    class_names    VARCHAR[],
    preprocessing  JSON,
    created_run    BIGINT
);

CREATE TABLE predictions (
    set_name  VARCHAR NOT NULL,
    image_id  BIGINT NOT NULL,
    version   INTEGER NOT NULL,
    run_id    BIGINT NOT NULL,
    probs     FLOAT[] NOT NULL
);
