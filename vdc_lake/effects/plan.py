"""Planning: a decision's rows become operations (Plan), and a plan becomes journal rows with
each file's metadata (for restore), its backup path and its output path."""

from __future__ import annotations

import datetime as dt
import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from vdc_lake.catalog.connection import Catalog
from vdc_lake.effects.backups import file_metadata
from vdc_lake.effects.confinement import backup_path
from vdc_lake.errors import PlanError
from vdc_lake.fileops.imageops import ACTIONS


@dataclass
class Plan:
    """What a decision would do: one row per operation (image_id, version, action, params, src, checksum)."""

    decision: str
    ops: pa.Table
    options: dict[str, Any] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for action in self.ops.column("action").to_pylist():
            counts[action] = counts.get(action, 0) + 1
        return dict(sorted(counts.items()))

    def examples(self, n: int = 5) -> list[dict[str, Any]]:
        return self.ops.slice(0, n).select(["action", "src", "reason"]).to_pylist()

    def __len__(self) -> int:
        return self.ops.num_rows


def make_plan(catalog: Catalog, decision: str, source_sql: str, params: list[Any], options: dict[str, Any]) -> Plan:
    """Turn a decision query (image_id, version, action, reason, params) into operations.

    `params` (JSON or NULL) holds per-operation options, e.g. the resize limits of the
    sanitize run that found the image too large; they override the plan's options.

    Images with an unfinished operation from an earlier run are left out: resume handles them.
    """
    ops = catalog.arrow(
        f"""
        WITH decision AS ({source_sql})
        SELECT d.image_id, d.version, d.action, i.root, i.rel_path, i.root || '/' || i.rel_path AS src,
               i.content_hash AS checksum, coalesce(CAST(d.reason AS VARCHAR), '') AS reason,
               CAST(d.params AS VARCHAR) AS op_params
        FROM decision d
        JOIN images i ON i.image_id = d.image_id AND i.version = d.version AND i.present
        WHERE d.action IS NOT NULL AND d.action <> 'none'
          AND NOT EXISTS (SELECT 1 FROM journal j WHERE j.image_id = d.image_id AND j.state = 'planned')
        ORDER BY d.image_id
        """,
        params,
    )
    unknown = set(ops.column("action").to_pylist()) - set(ACTIONS)
    if unknown:
        raise PlanError(f"decision {decision!r} asks for unknown actions {sorted(unknown)}")
    return Plan(decision, ops, options)


def _add_hard_links(catalog: Catalog, rows: list[dict[str, Any]], metas: list[dict[str, Any]]) -> None:
    """For files with more than one link, record the catalogued paths that are the same inode
    (they have the same bytes, so the same content_hash): restore links the file to them again."""
    linked = [(r, m) for r, m in zip(rows, metas) if m["link"] is None and m.get("nlink", 1) > 1]
    if not linked:
        return
    hashes = sorted({r["checksum"] for r, _ in linked if r["checksum"]})
    candidates: dict[str, list[str]] = {}
    for checksum, path in catalog.rows(
            "SELECT content_hash, root || '/' || rel_path FROM images WHERE present AND list_contains(?, content_hash)",
            [hashes]):
        candidates.setdefault(checksum, []).append(path)
    for row, meta in linked:
        siblings = []
        for path in candidates.get(row["checksum"], []):
            if path == row["src"]:
                continue
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) == (meta["dev"], meta["ino"]):
                siblings.append(path)
        meta["hardlinks"] = siblings


def journal_rows(catalog: Catalog, plan: Plan, run_id: int, backup_root: Path | None,
                  max_pixels: int | None) -> pa.Table:
    """The plan's journal rows (op_id 0: numbered when inserted). Each row's params hold the
    operation's options, the decision's reason and what the file is now (`file`, for restore)."""
    rows = plan.ops.to_pylist()
    now = dt.datetime.now()
    metas = [file_metadata(r["src"]) for r in rows]
    _add_hard_links(catalog, rows, metas)
    params = [{**plan.options, **json.loads(r["op_params"] or "{}"), "reason": r["reason"], "file": m}
              for r, m in zip(rows, metas)]
    if max_pixels:
        for p in params:
            p.setdefault("max_pixels", max_pixels)
    return pa.table({
        "op_id": pa.array([0] * len(rows), pa.int64()),
        "run_id": pa.array([run_id] * len(rows), pa.int64()),
        "image_id": pa.array([r["image_id"] for r in rows], pa.int64()),
        "version": pa.array([r["version"] for r in rows], pa.int32()),
        "action": [r["action"] for r in rows],
        "params": [json.dumps(p, default=str) for p in params],
        "src": [r["src"] for r in rows],
        "dst": _destinations(catalog, rows, params),
        "backup": [
            str(backup_path(backup_root, run_id, r["root"], r["rel_path"])) if backup_root else None for r in rows
        ],
        "checksum_before": [r["checksum"] for r in rows],
        "state": ["planned"] * len(rows),
        "ts": pa.array([now] * len(rows), pa.timestamp("us")),
    })


def _destinations(catalog: Catalog, rows: list[dict[str, Any]], params: list[dict[str, Any]]) -> list[str]:
    """Each operation's output path. A new name (recompress: NAME.webp) is one no file has now, no
    other operation of the plan writes, and no image of the catalog holds (its file may be away
    for a moment): two outputs, or an output and another image, never share a path."""
    dsts = [ACTIONS[r["action"]].destination(r["src"], p) for r, p in zip(rows, params)]
    moved = [i for i, (r, d) in enumerate(zip(rows, dsts)) if d != r["src"]]
    held: set[str] = set()  # catalogued paths found so far
    while moved:
        claimed = set(held)
        for i in moved:
            dsts[i] = ACTIONS[rows[i]["action"]].destination(rows[i]["src"], params[i], claimed)
            claimed.add(dsts[i])
        outputs = pa.table({"path": pa.array(sorted({dsts[i] for i in moved}), pa.string())})
        with catalog.registered("output_paths", outputs):
            found = {path for (path,) in catalog.rows(
                "SELECT o.path FROM output_paths o JOIN images i ON i.root || '/' || i.rel_path = o.path")}
        if not found:
            break
        held |= found
    return dsts
