-- Rotation in memory: a predict pass that includes a rotation model turns each image by its
-- predicted angle (above the threshold) before its other models see it. One row per result
-- computed that way: the rows of predict run `run_id` for (image_id, version) in any set were
-- computed on the stored pixels turned `angle` degrees clockwise (no row: as stored). When
-- `apply rotation` turns the file by that same angle, those rows are carried to the new
-- version (they were computed on its pixels), so predict has nothing to redo.

CREATE TABLE applied_rotations (
    run_id    BIGINT NOT NULL,
    image_id  BIGINT NOT NULL,
    version   INTEGER NOT NULL,
    angle     SMALLINT NOT NULL       -- 90 | 180 | 270, clockwise, as rotation_actions' rotate_<angle>
);
