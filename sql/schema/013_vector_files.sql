-- Vectors beside the catalog (issue 22): each embedding or prediction set is Parquet files in
-- CATALOG.vectors/<table>/<set>/part-<part_id>.parquet (image_id, version, run_id and a
-- fixed-size float list), registered here. `embeddings` and `predictions` become views over the
-- registered files (vdc_lake.catalog.vectors); the rows of the old tables are moved into files
-- once, a batch at a time, by the next writer (write the part, then register it and delete its
-- rows in one transaction), after which the *_rows_legacy tables are dropped.

CREATE SEQUENCE vector_part_seq START 1;

CREATE TABLE vector_parts (
    part_id     BIGINT NOT NULL,      -- file name part-<part_id>.parquet; write order
    table_name  VARCHAR NOT NULL,     -- embeddings | predictions
    set_name    VARCHAR NOT NULL,
    path        VARCHAR NOT NULL,     -- relative to CATALOG.vectors: <table>/<set>/part-<part_id>.parquet
    n_rows      BIGINT NOT NULL,
    dim         INTEGER NOT NULL,
    run_id      BIGINT,               -- the run that wrote it (NULL for a merge of several runs)
    bytes       BIGINT NOT NULL
);

ALTER TABLE embeddings RENAME TO embeddings_rows_legacy;
ALTER TABLE predictions RENAME TO predictions_rows_legacy;
