-- The user's own verdicts on single images, above every decision: `vdc-lake override keep|drop`.
-- Append-only: the newest row per image is the one in force ('clear' ends an override), older
-- rows are history. An override judges the bytes of `version`; it still holds for the versions
-- that vdc-lake's own apply made from them (rotate, resize, recompress: journaled), but not once
-- the file changed otherwise (a new scan version): see sql/views/override_actions.sql.

CREATE TABLE overrides (
    image_id    BIGINT NOT NULL,
    version     INTEGER NOT NULL,        -- the image version the user judged
    action      VARCHAR NOT NULL,        -- keep | drop | clear
    reason      VARCHAR,                 -- the user's words (--reason, the CSV's reason column)
    created_at  TIMESTAMP NOT NULL,
    run_id      BIGINT NOT NULL          -- the `override` run that recorded it
);
