"""A restore's journal: the operations it put back, recorded in batches (journal `restored`,
the images rows made current again, the rows of superseded versions dropped)."""

from __future__ import annotations

import time
from typing import Any

import pyarrow as pa

from vdc_lake.catalog.connection import Catalog
from vdc_lake.catalog.vectors import drop_rows_newer_than
from vdc_lake.fileops.facts import fact_arrays, fact_assignments
from vdc_lake.fileops.probe import inspect_header

# A restore's batches (RestoreJournal) may be larger than apply's: what a killed restore did not
# record, the next one finds again from the files; each batch also drops the rows of superseded
# versions (a statement per table that holds image versions), which is not worth doing every 2 seconds.
RESTORE_FLUSH_EVERY_OPS = 4096
RESTORE_FLUSH_EVERY_SECONDS = 30.0


class RestoreJournal:
    """The operations a restore has put back (or found original), recorded in batches by
    _record_restore (journal `restored`, the images rows).

    What makes a killed restore resumable: an operation joins the batch only once its file is what
    it was, and the batch is flushed before any operation on an image or a path already in it is
    touched (an image that two runs changed is undone twice, newest first). So at any moment every
    operation not yet journaled `restored` has its file either as apply left it or holding the bytes
    it was planned on (checksum_before); the next restore finds the latter `original` and records
    it, and never takes the killed run's work for a change of the user's."""

    def __init__(self, catalog: Catalog):
        self.catalog = catalog
        self.pending: list[dict[str, Any]] = []
        self.images: set[int] = set()
        self.paths: set[str] = set()
        self.last_flush = time.monotonic()

    def make_room(self, op: dict[str, Any]) -> None:
        """Flush before op is touched when the batch holds its image or one of its paths, or is due."""
        if (op["image_id"] in self.images or not self.paths.isdisjoint(_paths_of(op))
                or len(self.pending) >= RESTORE_FLUSH_EVERY_OPS
                or time.monotonic() - self.last_flush > RESTORE_FLUSH_EVERY_SECONDS):
            self.flush()

    def add(self, op: dict[str, Any]) -> None:
        self.pending.append(op)
        self.images.add(op["image_id"])
        self.paths.update(_paths_of(op))

    def flush(self) -> None:
        if self.pending:
            _record_restore(self.catalog, self.pending)
            self.catalog.release()
        self.pending, self.images, self.paths = [], set(), set()
        self.last_flush = time.monotonic()


def _paths_of(op: dict[str, Any]) -> set[str]:
    return {op["src"], op["dst"] or op["src"]}


def _record_restore(catalog: Catalog, ops: list[dict[str, Any]]) -> None:
    """Journal ops `restored` (their files hold what they were: put back, or found original);
    each image's row from its oldest operation among them: the bytes of the version it was
    planned on make that version current again (and drop rows derived from the versions apply
    made, which no file holds any more); other bytes get a new version. One transaction."""
    if not ops:
        return
    facts = [inspect_header(op["src"]) for op in ops]
    columns: dict[str, Any] = {
        "op_id": pa.array([op["op_id"] for op in ops], pa.int64()),
        "image_id": pa.array([op["image_id"] for op in ops], pa.int64()),
        "src": [op["src"] for op in ops],
        "planned_version": pa.array([op["version"] for op in ops], pa.int32()),
        "same_bytes": pa.array([f["content_hash"] is not None and f["content_hash"] == op["checksum_before"]
                                for op, f in zip(ops, facts)], pa.bool_()),
    }
    columns.update(fact_arrays(facts))
    assignments = fact_assignments("r")
    with catalog.registered("restored_facts", pa.table(columns)), catalog.transaction():
        catalog.execute("UPDATE journal SET state = 'restored', ts = now() FROM restored_facts r "
                        "WHERE journal.op_id = r.op_id")
        oldest = "SELECT * FROM restored_facts QUALIFY row_number() OVER (PARTITION BY image_id ORDER BY op_id) = 1"
        _drop_superseded_rows(catalog, oldest)
        catalog.execute(
            f"""UPDATE images SET {assignments}, present = true,
                       version = CASE WHEN r.same_bytes THEN r.planned_version ELSE images.version + 1 END,
                       rel_path = substr(r.src, length(images.root) + 2)
                FROM ({oldest}) r
                WHERE images.image_id = r.image_id"""
        )


# The user's choices about an image, not facts of its bytes: a restore carries them back to the
# version it makes current (an override or a sample made after `apply rotation` still names the
# picture once it is restored); apply carries them forward the same way (applied_versions).
IMAGE_CHOICE_TABLES = ("overrides", "samples")


def _drop_superseded_rows(catalog: Catalog, oldest_sql: str) -> None:
    """Delete rows derived from versions newer than the one a restore makes current again: no
    file holds those bytes now, and the next change must not find them under its version number.
    The rows of IMAGE_CHOICE_TABLES move to that version instead."""
    for table in IMAGE_CHOICE_TABLES:
        catalog.execute(
            f"""UPDATE "{table}" SET version = r.planned_version FROM ({oldest_sql}) r
                WHERE r.same_bytes AND r.image_id = "{table}".image_id AND "{table}".version > r.planned_version""")
    columns: dict[str, set[str]] = {}
    for table, column in catalog.rows(
            """SELECT c.table_name, c.column_name FROM information_schema.columns c
               JOIN information_schema.tables t USING (table_catalog, table_schema, table_name)
               WHERE t.table_type = 'BASE TABLE' AND c.table_schema = 'main'
                 AND c.table_name NOT IN ('images', 'journal')"""):
        columns.setdefault(table, set()).add(column)
    for table, cols in sorted(columns.items()):
        pairs = [(i, v) for i, v in (("image_id", "version"), ("image_a", "version_a"), ("image_b", "version_b"))
                 if {i, v} <= cols]
        for image_col, version_col in pairs:
            catalog.execute(
                f"""DELETE FROM "{table}" WHERE EXISTS (
                        SELECT 1 FROM ({oldest_sql}) r WHERE r.same_bytes AND r.image_id = "{table}".{image_col}
                                                         AND "{table}".{version_col} > r.planned_version)""")
    # the vector sets are files beside the catalog (catalog.vectors), not tables: their parts are rewritten
    drop_rows_newer_than(catalog, f"SELECT image_id, planned_version FROM ({oldest_sql}) WHERE same_bytes")
