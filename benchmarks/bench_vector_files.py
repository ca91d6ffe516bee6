"""Vectors beside the catalog (issue 22): writing and reading an N x d set as Parquet parts, side by
side with the old layout (FLOAT[] rows inside the DuckDB file), in one run on one box.

    python benchmarks/bench_vector_files.py --n 1000000 --dim 768 [--work DIR] [--keep]

Each phase runs in its own process (peak RSS = that process's ru_maxrss, from os.wait4):

- write (parts): `write_vectors` in batches of [scale] vector_batch_rows inside one transaction,
  as `import` does, into a catalog whose N image rows are inserted with SQL (no image files:
  this measures the store, `bench_scale_catalog.py` the whole import);
- write (rows in the catalog): the same batches appended as FLOAT[] rows to a table in a second
  DuckDB file, as vdc-lake did before (Arrow insert, one transaction);
- read_vectors (parts) / read (rows): the whole set back into one [N, d] float32 array;
- rank block 1/8 (parts): `read_vector_range` of one eighth, what one of 8 torchrun ranks reads.

Prints a table (wall s, CPU s, peak RSS GB, MB/s of raw vectors) and the sizes on disk: the
catalog file, its .vectors folder, and the old layout's file. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

GB = 10**9
SEED = 0


def _batches(n: int, dim: int, rows: int):
    """(image_ids, vectors) batches: one random block, shifted per batch (cheap to make)."""
    block = np.random.default_rng(SEED).standard_normal((rows, dim), dtype=np.float32)
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        yield np.arange(start + 1, stop + 1, dtype=np.int64), block[: stop - start] + np.float32(start % 7)


def phase_setup(work: Path, n: int, dim: int) -> None:
    from vdc_lake.catalog.connection import Catalog
    from vdc_lake.catalog.sets import register_embedding_set

    with Catalog(work / "c.duckdb") as catalog:
        catalog.execute("INSERT INTO images (image_id, root, rel_path, version, present) "
                        "SELECT range, '/bench', 'img_' || range || '.jpg', 1, true FROM range(1, ? + 1)", [n])
        run = catalog.begin_run("import", {})
        register_embedding_set(catalog, "bench", kind="embedding", model=None, dim=dim, preprocessing={}, run_id=run)
        catalog.finish_run(run)


def phase_write_parts(work: Path, n: int, dim: int) -> None:
    from vdc_lake.catalog.connection import Catalog
    from vdc_lake.catalog.sets import batch_rows_setting, write_vectors

    with Catalog(work / "c.duckdb") as catalog:
        run = catalog.begin_run("import", {})
        with catalog.transaction():
            for ids, vectors in _batches(n, dim, batch_rows_setting(catalog)):
                write_vectors(catalog, "embeddings", "bench", run, ids, np.ones(len(ids), np.int32), vectors)
        catalog.finish_run(run)


def phase_write_rows(work: Path, n: int, dim: int) -> None:
    import duckdb
    import pyarrow as pa

    con = duckdb.connect(str(work / "rows.duckdb"))
    con.execute("CREATE TABLE embeddings (set_name VARCHAR NOT NULL, image_id BIGINT NOT NULL, "
                "version INTEGER NOT NULL, run_id BIGINT NOT NULL, vector FLOAT[] NOT NULL)")
    con.execute("BEGIN TRANSACTION")
    for ids, vectors in _batches(n, dim, 16_384):
        fixed = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), dim).cast(pa.list_(pa.float32()))
        data = pa.table({"set_name": pa.array(["bench"] * len(ids)), "image_id": pa.array(ids),
                         "version": pa.array(np.ones(len(ids), np.int32)), "run_id": pa.array(np.ones(len(ids))),
                         "vector": fixed})
        con.register("batch", data)
        con.execute("INSERT INTO embeddings BY NAME SELECT * FROM batch")
        con.unregister("batch")
    con.execute("COMMIT")
    con.close()


def phase_read_parts(work: Path, n: int, dim: int) -> None:
    from vdc_lake.catalog.connection import Catalog
    from vdc_lake.catalog.sets import read_vectors

    with Catalog(work / "c.duckdb", read_only=True) as catalog:
        vs = read_vectors(catalog, "embeddings", "bench")
    assert vs.vectors.shape == (n, dim)


def phase_read_rows(work: Path, n: int, dim: int) -> None:
    import duckdb

    con = duckdb.connect(str(work / "rows.duckdb"), read_only=True)
    out = np.empty((n, dim), np.float32)
    at = 0
    for batch in con.sql(f"SELECT vector::FLOAT[{dim}] FROM embeddings").to_arrow_reader(16_384):
        out[at:at + batch.num_rows] = batch.column(0).flatten().to_numpy().reshape(-1, dim)
        at += batch.num_rows
    con.close()
    assert at == n


def phase_rank_block(work: Path, n: int, dim: int) -> None:
    from vdc_lake.catalog.connection import Catalog
    from vdc_lake.catalog.sets import read_vector_range

    with Catalog(work / "c.duckdb", read_only=True) as catalog:
        vs = read_vector_range(catalog, "embeddings", "bench", 3 * n // 8, 4 * n // 8)
    assert len(vs) == 4 * n // 8 - 3 * n // 8


PHASES = {"setup": phase_setup, "write (parts)": phase_write_parts, "write (rows in the catalog)": phase_write_rows,
          "read_vectors (parts)": phase_read_parts, "read (rows in the catalog)": phase_read_rows,
          "rank block 1/8 (parts)": phase_rank_block}


def run_phase(name: str, work: Path, n: int, dim: int) -> tuple[float, float, float]:
    """(wall s, CPU s, peak RSS bytes) of one phase in a fresh process."""
    started = time.monotonic()
    child = subprocess.Popen([sys.executable, __file__, "--phase", name, "--work", str(work), "--n", str(n),
                              "--dim", str(dim)])
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        raise SystemExit(f"phase {name!r} failed (exit code {child.returncode})")
    return time.monotonic() - started, usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size if path.exists() else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--work", type=Path, default=None, help="work folder [/tmp/bench-vector-files-N]")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--phase", default=None, help=argparse.SUPPRESS)
    options = parser.parse_args()
    work = options.work or Path(f"/tmp/bench-vector-files-{options.n}")
    if options.phase:
        PHASES[options.phase](work, options.n, options.dim)
        return
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    raw = options.n * options.dim * 4
    print(f"# N = {options.n:,} x {options.dim} float32 = {raw / GB:.2f} GB raw; bound 1.5 x raw + 1 GB = "
          f"{(1.5 * raw + GB) / GB:.2f} GB")
    print("| phase | wall s | CPU s | peak RSS GB | raw MB/s (wall) |")
    print("|---|---|---|---|---|", flush=True)
    for name in PHASES:
        wall, cpu, rss = run_phase(name, work, options.n, options.dim)
        moved = raw / 8 if name.startswith("rank") else (0 if name == "setup" else raw)
        rate = f"{moved / 1e6 / wall:,.0f}" if moved else ""
        print(f"| {name} | {wall:,.1f} | {cpu:,.1f} | {rss / GB:.2f} | {rate} |", flush=True)
    catalog, vectors, rows = work / "c.duckdb", work / "c.duckdb.vectors", work / "rows.duckdb"
    parts = sorted(vectors.rglob("part-*.parquet"))
    print(f"\ncatalog file {_size(catalog) / GB:.3f} GB; {vectors.name}: {_size(vectors) / GB:.3f} GB in "
          f"{len(parts)} parts ({_size(vectors) / options.n:,.0f} bytes per vector, raw {options.dim * 4:,}); "
          f"old layout's file {_size(rows) / GB:.3f} GB")
    if not options.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
