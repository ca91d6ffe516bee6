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
echo "Explore:  vdc-lake --catalog $VDC_LAKE_CATALOG sql \"SELECT rule, count(*) FROM findings GROUP BY rule\""
echo "Undo all: vdc-lake --catalog $VDC_LAKE_CATALOG restore"
