-- Present images with their absolute path: the base every decision view reads.
CREATE OR REPLACE VIEW image_files AS
SELECT
    image_id,
    version,
    root || '/' || rel_path AS path,
    root,
    rel_path,
    size_bytes,
    content_hash,
    width,
    height,
    format,
    mode
FROM images
WHERE present;
