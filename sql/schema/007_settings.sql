-- Decision parameters live in the catalog, so every reader (plan, status, curated, export,
-- report, a notebook, a plain DuckDB client) sees the same decisions. Writing commands replace
-- these rows with the effective config (defaults.toml < vdc-lake.toml < --config); the
-- decision macros' parameters default to them.

CREATE TABLE settings (
    section     VARCHAR NOT NULL,        -- defaults.toml section, e.g. apply_deduplication
    key         VARCHAR NOT NULL,        -- e.g. threshold
    value       VARCHAR NOT NULL,        -- text form: 0.25, largest-resolution, true, inf, [10, 5, 3]
    source      VARCHAR NOT NULL,        -- 'default' or the config file that set it
    updated_at  TIMESTAMP NOT NULL
);

-- What a set's model or descriptor recommends for dedup (cosine distance): used when the
-- user's config does not set apply_deduplication.threshold / dedup.report_threshold.
ALTER TABLE embedding_sets ADD COLUMN apply_threshold DOUBLE;
ALTER TABLE embedding_sets ADD COLUMN report_threshold DOUBLE;
