#!/usr/bin/env bash
# Quickstart on generated sample data: no downloads, no GPU. Run from the repository root.
set -euo pipefail
OUT=${1:-data/quickstart}
export VDC_LAKE_CATALOG=${VDC_LAKE_CATALOG:-$OUT/catalog.duckdb}

python examples/make_sample_data.py "$OUT/images"
vdc-lake scan "$OUT/images"
vdc-lake sanitize
vdc-lake plan sanitize
vdc-lake status
