-- Image-quality values (vdc_lake/kernels/quality.py), computed by sanitize's decode pass from
-- the reduced-size image it decodes anyway: one row per decoded image version and run. The
-- findings (dark, bright, blurry, low_information, grayscale) are not stored: quality_actions()
-- derives them from the newest row of each version at the [quality] settings, so a changed
-- threshold needs no new decode.
CREATE TABLE image_quality (
    run_id          BIGINT NOT NULL,     -- the sanitize run that decoded the image
    image_id        BIGINT NOT NULL,
    version         INTEGER NOT NULL,
    brightness_p99  DOUBLE NOT NULL,     -- 99th percentile of perceived brightness (0..1): dark when low
    brightness_p5   DOUBLE NOT NULL,     -- 5th percentile (0..1): bright when high
    sharpness       DOUBLE NOT NULL,     -- variance of the Laplacian / variance of the 128 px luma: blurry when low
    entropy         DOUBLE NOT NULL,     -- luma histogram entropy in bits (0..8): low_information when low
    colour          DOUBLE               -- largest chroma, |Cb - 128| or |Cr - 128| (0..128): grayscale when ~0; NULL for one band
);
