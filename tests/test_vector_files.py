"""Vectors beside the catalog (issue 22, items 1 and 5): every set is Parquet parts in
CATALOG.vectors/<table>/<set>/, registered in the catalog; `embeddings` / `predictions` stay
queryable (also by a plain duckdb client); an old catalog is migrated once, and a SIGKILL midway
loses nothing; vector files must lie inside the catalog's .vectors folder, reached through no
link, and a catalog connection reads no file elsewhere. Real catalogs, real Parquet files."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from tests.conftest import catalog_rows
from vdc_lake.catalog.connection import Catalog
from vdc_lake.catalog.package_sql import sql_dir
from vdc_lake.catalog.sets import read_vectors, register_embedding_set, register_prediction_set, write_vectors
from vdc_lake.catalog.vectors import MERGE_AFTER_PARTS
from vdc_lake.errors import CatalogDamagedError, UnsafeCatalogError
from vdc_lake.stages.scan import scan

REPO = Path(__file__).resolve().parent.parent


def _images(root: Path, n: int) -> Path:
    root.mkdir(exist_ok=True)
    for i in range(n):
        Image.new("RGB", (64 + 4 * i, 48), (30 * i, 200 - 20 * i, 90)).save(root / f"im{i}.png")
    return root


def _ids(catalog: Catalog) -> tuple[np.ndarray, np.ndarray]:
    rows = catalog.rows("SELECT image_id, version FROM images WHERE present ORDER BY image_id")
    return np.array([r[0] for r in rows], np.int64), np.array([r[1] for r in rows], np.int32)


@pytest.fixture
def catalog_with_set(tmp_path) -> tuple[Path, np.ndarray]:
    """A closed catalog of 6 scanned images with set `emb` (4-d, one part) and prediction set `rot`."""
    path = tmp_path / "catalog.duckdb"
    with Catalog(path) as catalog:
        scan(catalog, [_images(tmp_path / "images", 6)], extensions=[".png"], workers=1, quiet=True)
        run = catalog.begin_run("predict", {})
        register_embedding_set(catalog, "emb", kind="embedding", model=None, dim=4, preprocessing={}, run_id=run)
        register_prediction_set(catalog, "rot", kind="rotation", model=None, class_names=["0", "90", "180", "270"],
                                preprocessing={}, run_id=run)
        ids, versions = _ids(catalog)
        vectors = np.random.default_rng(0).standard_normal((len(ids), 4)).astype(np.float32)
        with catalog.transaction():
            write_vectors(catalog, "embeddings", "emb", run, ids, versions, vectors)
            write_vectors(catalog, "predictions", "rot", run, ids, versions, np.eye(4, dtype=np.float32)[ids % 4])
        catalog.finish_run(run)
    return path, vectors


def test_a_set_is_parquet_parts_beside_the_catalog_and_the_views_read_them(catalog_with_set):
    path, vectors = catalog_with_set
    parts = sorted(Path(f"{path}.vectors/embeddings/emb").iterdir())
    assert [p.name for p in parts] == [re.fullmatch(r"part-\d{12}\.parquet", p.name).group(0) for p in parts]
    table = pq.read_table(parts[0])
    assert table.schema.names == ["image_id", "version", "run_id", "vector"]
    assert pa.types.is_fixed_size_list(table.schema.field("vector").type) and table.schema.field("vector").type.list_size == 4
    assert catalog_rows(path, "SELECT count(*), sum(n_rows) FROM vector_parts") == [(2, 12)]
    stored = catalog_rows(path, "SELECT vector FROM embeddings WHERE set_name = 'emb' ORDER BY rowid")
    np.testing.assert_array_equal(np.array([r[0] for r in stored], np.float32), vectors)
    assert catalog_rows(path, "SELECT count(*) FROM predictions WHERE set_name = 'rot' AND len(probs) = 4") == [(6,)]
    assert catalog_rows(path, "SELECT count(*) FROM duckdb_tables() WHERE table_name LIKE '%legacy'") == [(0,)]


def test_a_plain_duckdb_client_reads_the_vectors_read_only(catalog_with_set):
    path, vectors = catalog_with_set
    with duckdb.connect(str(path), read_only=True) as con:  # a notebook: no vdc-lake code
        rows = con.execute("SELECT e.vector FROM embeddings e JOIN images i USING (image_id, version) "
                           "WHERE e.set_name = 'emb' ORDER BY e.rowid").fetchall()
        assert con.execute("SELECT count(*) FROM failed_predictions").fetchall() == [(0,)]
    np.testing.assert_array_equal(np.array([r[0] for r in rows], np.float32), vectors)


def _numbered_queries() -> dict[int, str]:
    text = (REPO / "docs/catalog.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```sql\n(.*?)```", text, re.DOTALL)
    queries = {}
    for block in blocks:
        for found in re.finditer(r"^-- (\d+)\. .*?(?=^-- \d+\. |\Z)", block, re.DOTALL | re.MULTILINE):
            queries[int(found.group(1))] = found.group(0)
    return queries


def test_the_documented_queries_run_in_a_plain_duckdb_client_read_only(quickstart_catalogs):
    _, catalog = quickstart_catalogs
    queries = _numbered_queries()
    assert len(queries) >= 5
    with duckdb.connect(str(catalog), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM embeddings").fetchall()[0][0] > 0
        con.execute("SELECT r.stage, j.action, j.src FROM journal j JOIN runs r USING (run_id)").fetchall()  # README
        for number, sql in queries.items():
            con.execute(sql).fetchall()


def test_a_catalog_moved_with_its_vectors_is_read_there(catalog_with_set, tmp_path):
    path, vectors = catalog_with_set
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    shutil.move(path, moved / path.name)
    shutil.move(f"{path}.vectors", moved / f"{path.name}.vectors")
    new = moved / path.name
    with Catalog(new, read_only=True) as catalog:  # TEMP views name the new folder
        np.testing.assert_array_equal(read_vectors(catalog, "embeddings", "emb").vectors, vectors)
        assert catalog.scalar("SELECT count(*) FROM embeddings") == 6
    with Catalog(new):  # a writer stores views over the new folder: plain duckdb reads them too
        pass
    with duckdb.connect(str(new), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM embeddings").fetchall() == [(6,)]


def test_a_catalog_copied_without_its_vectors_names_what_is_missing(catalog_with_set, tmp_path):
    path, _ = catalog_with_set
    copy = tmp_path / "copy.duckdb"
    shutil.copyfile(path, copy)
    with pytest.raises(CatalogDamagedError, match=r"vector file .*copy\.duckdb\.vectors/embeddings/emb/part-\d+"
                                                  r"\.parquet registered in catalog .* is missing"):
        catalog_rows(copy, "SELECT 1")


def _edit(path: Path, sql: str, params: list | None = None) -> None:
    con = duckdb.connect(str(path))
    try:
        con.execute(sql, params)
    finally:
        con.close()


@pytest.mark.parametrize("registered", ["../../secret.parquet", "/etc/passwd", "embeddings/emb/../../x.parquet",
                                        "embeddings/emb/part-1.parquet.bak"])
def test_a_registered_path_outside_the_vectors_folder_is_refused_naming_it(catalog_with_set, registered):
    path, _ = catalog_with_set
    _edit(path, "UPDATE vector_parts SET path = ? WHERE table_name = 'embeddings'", [registered])
    for read_only in (True, False):
        with pytest.raises(UnsafeCatalogError, match=f"registers the vector file {re.escape(repr(registered))}"):
            with Catalog(path, read_only=read_only) as catalog:
                catalog.rows("SELECT 1")


def test_a_link_in_place_of_a_part_or_the_folder_is_refused(catalog_with_set, tmp_path):
    path, _ = catalog_with_set
    part = next(Path(f"{path}.vectors/embeddings/emb").iterdir())
    outside = tmp_path / "outside.parquet"
    shutil.move(part, outside)
    part.symlink_to(outside)
    with pytest.raises(UnsafeCatalogError, match=f"vector file {re.escape(str(part))} is a symbolic link"):
        catalog_rows(path, "SELECT 1")
    part.unlink()
    shutil.move(outside, part)
    vectors = Path(f"{path}.vectors")
    shutil.move(vectors, tmp_path / "real-vectors")
    vectors.symlink_to(tmp_path / "real-vectors")
    with pytest.raises(UnsafeCatalogError, match=f"{re.escape(str(vectors))} is a symbolic link"):
        catalog_rows(path, "SELECT 1")


def test_a_catalog_connection_reads_files_in_its_vectors_folder_and_nowhere_else(catalog_with_set, tmp_path):
    path, _ = catalog_with_set
    outside = tmp_path / "outside.parquet"
    part = next(Path(f"{path}.vectors/embeddings/emb").iterdir())
    shutil.copyfile(part, outside)
    for read_only in (True, False):
        with Catalog(path, read_only=read_only) as catalog:
            assert catalog.scalar(f"SELECT count(*) FROM read_parquet('{part}')") == 6
            for sql in (f"SELECT count(*) FROM read_parquet('{outside}')",
                        f"SELECT count(*) FROM read_parquet('{part.parent}/../../../outside.parquet')",
                        "SELECT count(*) FROM read_text('/etc/hostname')"):
                with pytest.raises(duckdb.PermissionException):
                    catalog.rows(sql)


def test_a_stored_view_edited_to_read_elsewhere_is_not_what_vdc_lake_reads(catalog_with_set, tmp_path):
    path, vectors = catalog_with_set
    outside = tmp_path / "planted.parquet"
    shutil.copyfile(next(Path(f"{path}.vectors/embeddings/emb").iterdir()), outside)
    _edit(path, f"CREATE OR REPLACE VIEW embeddings AS SELECT 'emb' AS set_name, *, 0 AS rowid "
                f"FROM read_parquet('{outside}') LIMIT 1")
    assert catalog_rows(path, "SELECT count(*) FROM embeddings") == [(6,)]
    with Catalog(path) as catalog:
        np.testing.assert_array_equal(read_vectors(catalog, "embeddings", "emb").vectors, vectors)
    with duckdb.connect(str(path), read_only=True) as con:  # the writer stored the package's view again
        assert con.execute("SELECT count(*) FROM embeddings").fetchall() == [(6,)]


def test_small_parts_of_a_run_are_merged_in_order_and_orphans_removed_by_the_next_writer(tmp_path):
    path = tmp_path / "catalog.duckdb"
    with Catalog(path) as catalog:
        scan(catalog, [_images(tmp_path / "images", 4)], extensions=[".png"], workers=1, quiet=True)
        ids, versions = _ids(catalog)
        run = catalog.begin_run("predict", {})
        register_embedding_set(catalog, "emb", kind="embedding", model=None, dim=3, preprocessing={}, run_id=run)
        writes = MERGE_AFTER_PARTS + 3
        for k in range(writes):  # each write: every image again; the last write is current
            write_vectors(catalog, "embeddings", "emb", run, ids, versions, np.full((len(ids), 3), k, np.float32))
        parts = catalog.scalar("SELECT count(*) FROM vector_parts")
        assert parts < writes and catalog.scalar("SELECT sum(n_rows) FROM vector_parts") == writes * len(ids)
        np.testing.assert_array_equal(read_vectors(catalog, "embeddings", "emb").vectors, writes - 1)
        order = catalog.rows("SELECT vector[1] FROM embeddings ORDER BY rowid")
        assert [r[0] for r in order] == [float(k) for k in range(writes) for _ in ids]
        catalog.finish_run(run)
    folder = Path(f"{path}.vectors/embeddings/emb")
    assert len(list(folder.iterdir())) == parts  # merged-away files went once the merge was committed
    (folder / ".part-000000000999.parquet.tmp").write_bytes(b"killed writer")
    (folder / "part-000000000998.parquet").write_bytes(b"never registered")
    with Catalog(path):  # the next writer removes what no registration names
        pass
    assert len(list(folder.iterdir())) == parts


def test_a_rolled_back_transaction_that_merged_parts_loses_nothing(tmp_path):
    path = tmp_path / "catalog.duckdb"
    with Catalog(path) as catalog:
        scan(catalog, [_images(tmp_path / "images", 3)], extensions=[".png"], workers=1, quiet=True)
        ids, versions = _ids(catalog)
        run = catalog.begin_run("predict", {})
        register_embedding_set(catalog, "emb", kind="embedding", model=None, dim=2, preprocessing={}, run_id=run)
        for k in range(MERGE_AFTER_PARTS - 2):
            write_vectors(catalog, "embeddings", "emb", run, ids, versions, np.full((len(ids), 2), k, np.float32))
        before = catalog.rows("SELECT image_id, vector, rowid FROM embeddings ORDER BY rowid")
        with pytest.raises(KeyboardInterrupt), catalog.transaction():
            for k in range(4):  # merges this run's small parts, inside the transaction
                write_vectors(catalog, "embeddings", "emb", run, ids, versions, np.full((len(ids), 2), 9, np.float32))
            assert catalog.scalar("SELECT count(*) FROM vector_parts") < MERGE_AFTER_PARTS
            raise KeyboardInterrupt
        write_vectors(catalog, "embeddings", "emb", run + 1, ids[:1], versions[:1], np.zeros((1, 2), np.float32))
        assert catalog.rows("SELECT image_id, vector, rowid FROM embeddings ORDER BY rowid")[:-1] == before
    assert catalog_rows(path, "SELECT count(*) FROM embeddings") == [(len(before) + 1,)]


# -- migration of a catalog that kept vectors as rows ------------------------------------------------

def _legacy_catalog(path: Path, n: int, seed: int = 0) -> list[tuple]:
    """A catalog as vdc-lake made it before vectors moved to files (migrations before 013), with
    n embedding rows in sets a (8-d) and b (3-d), interleaved, some images twice, and n // 4
    prediction rows. Returns every vector row as (table, set, image_id, version, run_id, vector)
    in writing order."""
    rng = np.random.default_rng(seed)
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE schema_migrations (version INTEGER, name VARCHAR, applied_at TIMESTAMP)")
    for file in sorted((sql_dir() / "schema").glob("*.sql")):
        version = int(file.name.split("_", 1)[0])
        if version < 13:
            con.execute(file.read_text(encoding="utf-8"))
            con.execute("INSERT INTO schema_migrations VALUES (?, ?, now())", [version, file.stem])
    rows = []
    for k in range(n):
        name, dim = ("a", 8) if k % 3 else ("b", 3)
        rows.append(("embeddings", name, int(rng.integers(0, n // 2)), 1, int(rng.integers(1, 4)),
                     [float(x) for x in rng.standard_normal(dim).astype(np.float32)]))
    for k in range(n // 4):
        rows.append(("predictions", "rot", k, 1, 2, [float(x) for x in rng.random(4).astype(np.float32)]))
    for table, name, image_id, version, run_id, vector in rows:
        column = "vector" if table == "embeddings" else "probs"
        con.execute(f"INSERT INTO {table} (set_name, image_id, version, run_id, {column}) VALUES (?, ?, ?, ?, ?)",
                    [name, image_id, version, run_id, vector])
    con.close()
    return rows


def _all_rows(path: Path) -> list[tuple]:
    out = []
    for table, column in (("embeddings", "vector"), ("predictions", "probs")):
        for row in catalog_rows(path, f"SELECT set_name, image_id, version, run_id, {column} FROM {table} "
                                      "ORDER BY set_name, rowid"):
            out.append((table, *row[:4], [float(x) for x in row[4]]))
    return out


def _by_set(rows: list[tuple]) -> list[tuple]:
    return sorted(rows, key=lambda r: (r[0], r[1]))  # stable: writing order within a set


def test_an_old_catalog_is_migrated_once_into_files_keeping_every_row_in_order(tmp_path):
    path = tmp_path / "old.duckdb"
    rows = _legacy_catalog(path, 300)
    with Catalog(path) as catalog:
        assert catalog.scalar("SELECT count(*) FROM duckdb_tables() WHERE table_name LIKE '%legacy'") == 0
        assert catalog.scalar("SELECT sum(n_rows) FROM vector_parts") == len(rows)
    assert _all_rows(path) == _by_set(rows)
    assert len(list(Path(f"{path}.vectors/embeddings/a").glob("part-*.parquet"))) == 1


_MIGRATE = """
import sys
import vdc_lake.catalog.vectors as vectors
vectors.MIGRATE_CHUNK_BYTES = int(sys.argv[2])
from vdc_lake.catalog.connection import Catalog
Catalog(sys.argv[1]).close()
"""


@pytest.mark.parametrize("kill_after_parts", [1, 4, 9])
def test_a_migration_killed_midway_loses_nothing_and_the_next_writer_finishes_it(tmp_path, kill_after_parts):
    path = tmp_path / "old.duckdb"
    rows = _legacy_catalog(path, 400, seed=kill_after_parts)
    process = subprocess.Popen([sys.executable, "-c", _MIGRATE, str(path), str(4 * 8 * 10)], cwd=REPO)
    vectors = Path(f"{path}.vectors")
    deadline = time.monotonic() + 60
    while process.poll() is None and time.monotonic() < deadline:
        if len(list(vectors.glob("*/*/part-*.parquet"))) >= kill_after_parts:
            break
        time.sleep(0.002)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    assert _all_rows(path) == _by_set(rows)  # a reader midway sees every row once: files + rows left
    with Catalog(path) as catalog:
        assert catalog.scalar("SELECT count(*) FROM duckdb_tables() WHERE table_name LIKE '%legacy'") == 0
        registered = {r[0] for r in catalog.rows("SELECT path FROM vector_parts")}
    assert _all_rows(path) == _by_set(rows)
    on_disk = {str(p.relative_to(vectors)) for p in vectors.glob("*/*/*")}
    assert on_disk == registered


# -- torchrun ranks read their block from the files -------------------------------------------------

@pytest.fixture
def set_of_60(tmp_path) -> Path:
    """A catalog of 60 images whose set `emb` (4-d) is several parts: a first run for every image,
    a second run for every third image (current for those)."""
    path = tmp_path / "catalog.duckdb"
    with Catalog(path) as catalog:
        scan(catalog, [_images(tmp_path / "images", 60)], extensions=[".png"], workers=1, quiet=True)
        ids, versions = _ids(catalog)
        rng = np.random.default_rng(4)
        for k, rows in enumerate((np.arange(len(ids)), np.arange(0, len(ids), 3))):
            run = catalog.begin_run("predict", {})
            if k == 0:
                register_embedding_set(catalog, "emb", kind="embedding", model=None, dim=4, preprocessing={},
                                       run_id=run)
            for chunk in np.array_split(rows, 3):
                write_vectors(catalog, "embeddings", "emb", run, ids[chunk], versions[chunk],
                              rng.standard_normal((len(chunk), 4)).astype(np.float32) + 3 * (chunk % 5)[:, None])
            catalog.finish_run(run)
    return path


@pytest.mark.parametrize("world", [1, 2, 3])
def test_each_rank_reads_exactly_its_block_of_the_current_vectors(set_of_60, world):
    from vdc_lake.scale.kmeans_distributed import read_rank_block

    with Catalog(set_of_60, read_only=True) as catalog:
        whole = read_vectors(catalog, "embeddings", "emb").vectors
    blocks = [read_rank_block(set_of_60, "emb", rank, world) for rank in range(world)]
    assert {n for _, n in blocks} == {60}
    np.testing.assert_array_equal(np.concatenate([b for b, _ in blocks]), whole)


def _rank(rank: int, world: int, store: str, catalog: str, out: str) -> None:
    import torch

    from vdc_lake.scale.kmeans_distributed import main

    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=store)
    main(["--catalog", catalog, "--set", "emb", "--n-clusters", "6", "2", "--method", "centers", "--device", "cpu",
          "--quiet", "--seed", "1", "--output", out])


def test_torchrun_ranks_cluster_a_set_from_its_files_as_one_process_does(set_of_60, tmp_path):
    import socket

    import torch.multiprocessing as mp

    from vdc_lake.config.loader import bundled_defaults
    from vdc_lake.kernels.kmeans import hierarchical_kmeans
    from vdc_lake.scale.kmeans_distributed import load_result

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    out = tmp_path / "clusters.npz"
    mp.spawn(_rank, args=(2, port, str(set_of_60), str(out)), nprocs=2, join=True)
    got = load_result(out)
    defaults = bundled_defaults()["hierarchical_kmeans"]
    with Catalog(set_of_60, read_only=True) as catalog:
        x = read_vectors(catalog, "embeddings", "emb").vectors
    want = hierarchical_kmeans(x, [6, 2], method="centers", seed=1, max_iters=defaults["max_iters"],
                               tol=defaults["tol"], metric=defaults["metric"], init=defaults["init"])
    for g, w in zip(got.levels, want.levels):
        np.testing.assert_allclose(g.centers.numpy(), w.centers.numpy(), rtol=1e-4, atol=1e-5)
        assert (g.assignments.numpy() == w.assignments.numpy()).all()


def test_rows_of_versions_a_restore_undoes_go_and_the_rest_keep_their_order(tmp_path):
    from vdc_lake.catalog.vectors import drop_rows_newer_than

    path = tmp_path / "catalog.duckdb"
    with Catalog(path) as catalog:
        scan(catalog, [_images(tmp_path / "images", 4)], extensions=[".png"], workers=1, quiet=True)
        ids, _ = _ids(catalog)
        run = catalog.begin_run("predict", {})
        register_embedding_set(catalog, "emb", kind="embedding", model=None, dim=1, preprocessing={}, run_id=run)
        versions = np.array([1, 2, 1, 2], np.int32)  # as if images 2 and 4 had a newer version
        write_vectors(catalog, "embeddings", "emb", run, ids, versions, np.arange(4, dtype=np.float32)[:, None])
        write_vectors(catalog, "embeddings", "emb", run, ids[3:], np.array([1], np.int32), np.full((1, 1), 9.0, np.float32))
        part_ids = catalog.rows("SELECT part_id FROM vector_parts ORDER BY 1")
        with catalog.registered("back", __import__("pyarrow").table({"image_id": ids, "planned": [1, 1, 1, 1]})):
            with catalog.transaction():
                assert drop_rows_newer_than(catalog, "SELECT image_id, planned FROM back") == 2
        rows = catalog.rows("SELECT image_id, version, vector[1] FROM embeddings ORDER BY rowid")
        assert rows == [(ids[0], 1, 0.0), (ids[2], 1, 2.0), (ids[3], 1, 9.0)]
        assert catalog.rows("SELECT part_id FROM vector_parts ORDER BY 1") == part_ids  # a rewrite keeps the part id
    with Catalog(path):  # the rewritten part's old file is gone; nothing registered is missing
        pass
    assert len(list(Path(f"{path}.vectors/embeddings/emb").iterdir())) == 2
