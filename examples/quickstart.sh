#!/usr/bin/env bash
# Quickstart on generated sample data: no downloads, no GPU. Run from the repository root.
set -euo pipefail
export VDC_LAKE_CATALOG=data/quickstart/catalog.duckdb

if [ ! -d data/quickstart/images ]; then
    python examples/make_sample_data.py data/quickstart/images
fi
echo "== dry run: every plan, nothing changed =="
vdc-lake -q run examples/quickstart.toml
echo
echo "== the same pipeline, carried out (backups in data/quickstart/backup) =="
vdc-lake -q run examples/quickstart.toml --apply
echo
echo "Explore:  vdc-lake --catalog $VDC_LAKE_CATALOG sql \"SELECT r.stage, j.action, j.state, count(*) FROM journal j JOIN runs r USING (run_id) GROUP BY ALL ORDER BY ALL\""
echo "Review:   vdc-lake --catalog $VDC_LAKE_CATALOG report -o data/quickstart/report  (then open data/quickstart/report/index.html)"
echo "Undo all: vdc-lake --catalog $VDC_LAKE_CATALOG restore"
