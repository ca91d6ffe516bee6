-- The catalog's value of one option (text; cast it: setting('rotation_correction', 'threshold')::DOUBLE).
-- Writing commands record the effective config (defaults.toml < vdc-lake.toml < --config) in
-- `settings`; every decision macro's parameter defaults to it.
CREATE OR REPLACE MACRO setting(section_name, key_name) AS (
    SELECT any_value(value) FROM settings WHERE section = section_name AND key = key_name
);
