-- The write-ahead log of every file operation carried out by the apply engine.

CREATE SEQUENCE IF NOT EXISTS op_id_seq START 1;

CREATE TABLE journal (
    op_id            BIGINT NOT NULL,
    run_id           BIGINT NOT NULL,
    image_id         BIGINT NOT NULL,
    version          INTEGER NOT NULL,   -- image version the operation was planned on
    action           VARCHAR NOT NULL,   -- delete | resize | recompress | rotate
    params           JSON,
    src              VARCHAR NOT NULL,   -- absolute path of the original file
    dst              VARCHAR,            -- path after the operation (recompress changes it)
    backup           VARCHAR,            -- absolute path of the verified backup, NULL with --no-backup
    checksum_before  VARCHAR,
    checksum_after   VARCHAR,
    state            VARCHAR NOT NULL,   -- planned | done | skipped | refused | failed | restored
    error            VARCHAR,
    ts               TIMESTAMP NOT NULL
);
