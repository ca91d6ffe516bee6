"""History for the report: what each apply run changed, read from the journal, with before/after cards."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from vdc_lake.catalog.connection import Catalog
from vdc_lake.review.pages import Card, Grid, Limits, Paged, Section, first_shown, image_card, inside_folder
from vdc_lake.review.render import escape, note_html, pages_link, table_html
from vdc_lake.review.thumbnails import Thumb


# -- history: what each apply run changed, from the journal --------------------------------------

KEPT_IN_REASON = re.compile(r"\(image (\d+), kept by ")  # dedup reasons in journals written before kept_image_id


@dataclass
class ApplyRun:
    run_id: int
    stage: str
    started: str
    status: str
    no_backup: bool
    backup_dir: str | None
    counts: list[tuple[str, str, int]]  # (action, state, operations)
    done: int
    backups_present: int
    gallery: Paged

    @property
    def restorable(self) -> str:
        if self.no_backup:
            return "no: run with --no-backup"
        if not self.done:
            return "nothing to restore (no operation is done)"
        if self.backups_present == self.done:
            return f"yes: all {self.done:,} backups present"
        return f"partly: {self.backups_present:,} of {self.done:,} backups present"


def _backups_present(backups: list[str | None], folder: str | None) -> int:
    """Backups that exist in the run's backup folder (a lexical check: counting resolves no links,
    and only the pictures shown are read, after a full check)."""
    if not folder:
        return 0
    base = os.path.normpath(folder).rstrip(os.sep) + os.sep
    return sum(1 for b in backups if b and os.path.normpath(b).startswith(base) and os.path.isfile(b))


def _history_cards(op: dict, backup_dir: str | None) -> list[Card]:
    """The picture of an operation: the original from its backup (or where it is now), with the
    result beside it when the file was changed rather than deleted."""
    backup = op["backup"] if inside_folder(op["backup"], backup_dir) else None
    before_path = backup if op["state"] == "done" and backup else op["src"]
    lines = [f"image {op['image_id']}", f"{op['action']} ({op['state']})", f"was {op['src']}", op["reason"] or ""]
    if op["error"]:
        lines.append(f"error: {op['error']}")
    if before_path == backup:
        lines.append("picture and link: the backup")
    before = Card(Thumb(f"op-{op['op_id']}", before_path, in_root=before_path != backup), lines,
                  "delete" if op["action"] == "delete" else "before", before_path,
                  "removed" if op["action"] == "delete" else "before", int(op["image_id"]))
    cards = [before]
    if op["action"] != "delete" and op["state"] == "done":
        cards.append(Card(Thumb(f"op-{op['op_id']}-after", op["dst"] or op["src"]), [f"after {op['action']}"],
                          "after", op["dst"] or op["src"], "after"))
    elif op["action"] == "delete" and op["kept_image_id"] is not None:
        cards.append(image_card({"image_id": op["kept_image_id"], "version": op["kept_version"],
                                  "path": op["kept_path"]},
                                 lines=["kept in its place" if op["kept_present"] else "kept then, removed since"],
                                 css="keep", label="kept"))
    return cards


def apply_history(catalog: Catalog, limits: Limits) -> list[ApplyRun]:
    runs = catalog.rows(
        """SELECT run_id, stage, strftime(started_at, '%Y-%m-%d %H:%M:%S'), status,
                  coalesce(json_extract(params, '$.no_backup')::BOOLEAN, false),
                  json_extract_string(params, '$.backup_dir')
           FROM runs WHERE stage LIKE 'apply:%' ORDER BY run_id""")
    history = []
    for run_id, stage, started, status, no_backup, backup_dir in runs:
        counts = catalog.rows("SELECT action, state, count(*) FROM journal WHERE run_id = ? GROUP BY ALL "
                              "ORDER BY action, state", [run_id])
        backups = catalog.arrow("SELECT backup FROM journal WHERE run_id = ? AND state = 'done' AND backup IS NOT NULL",
                                [run_id]).column(0).to_pylist()
        done = sum(n for _, state, n in counts if state == "done")
        ops = catalog.arrow(
            """SELECT j.op_id, j.image_id, j.version, j.action, j.state, j.src, j.dst, j.backup, j.error,
                      json_extract_string(j.params, '$.reason') AS reason,
                      TRY_CAST(json_extract_string(j.params, '$.kept_image_id') AS BIGINT) AS kept_in_params,
                      count(*) OVER () AS total
               FROM journal AS j WHERE j.run_id = ? ORDER BY j.op_id LIMIT ?""",
            [run_id, limits.per_gallery]).to_pylist()
        kept_ids = {}
        for op in ops:
            # the journal's params name the kept image; journals written before that only say it
            # in the reason's text
            match = KEPT_IN_REASON.search(op["reason"] or "") if op["action"] == "delete" else None
            kept_in_reason = int(match.group(1)) if match else None
            kept_in_params = op.pop("kept_in_params")
            kept_ids[op["op_id"]] = kept_in_params if kept_in_params is not None else kept_in_reason
        kept = {}
        wanted = sorted({k for k in kept_ids.values() if k is not None})
        if wanted:
            kept = {i: (v, p, present) for i, v, p, present in catalog.rows(
                "SELECT image_id, version, root || '/' || rel_path, present FROM images "
                "WHERE list_contains(?, image_id)", [wanted])}
        for op in ops:
            k = kept.get(kept_ids[op["op_id"]])
            op.update(kept_image_id=kept_ids[op["op_id"]] if k else None, kept_version=k[0] if k else None,
                      kept_path=k[1] if k else None, kept_present=bool(k and k[2]))
        total = int(ops[0]["total"]) if ops else 0
        gallery = Paged(f"history-{run_id}", f"Apply run {run_id} ({stage})",
                        f"<p>Operations of apply run {run_id}, started {escape(started)}: each original as it was "
                        "(from its backup when the file was deleted or changed).</p>", total)
        gallery.items = [_history_cards(op, backup_dir) for op in ops]
        history.append(ApplyRun(run_id, stage, started, status, bool(no_backup), backup_dir, counts, done,
                                _backups_present(backups, backup_dir), gallery))
    return history


def applied_summary(history: list[ApplyRun]) -> str:
    done = {}
    for run in history:
        for action, state, n in run.counts:
            if state == "done":
                done[action] = done.get(action, 0) + n
    if not done:
        return ""
    what = ", ".join(f"{n:,} {action}" for action, n in sorted(done.items()))
    return (f"<p>Already applied: {escape(what)} in {len(history)} apply run(s) "
            '(see <a href="#history">History</a>); the funnel starts from the images present now.</p>')


def history_section(history: list[ApplyRun], limits: Limits) -> Section:
    section = Section("history", "History: apply runs")
    if not history:
        section.body.append(note_html("nothing applied yet: every decision above is still a plan "
                                  "(vdc-lake apply STAGE --backup-dir DIR --apply)"))
        return section
    rows = []
    for run in history:
        counts = "; ".join(f"{action} {state}: {n:,}" for action, state, n in run.counts) or "no operations"
        rows.append((run.run_id, run.stage, run.started, run.status, counts, run.restorable,
                     pages_link(run.gallery, limits)))
    section.body.append(table_html(["run", "stage", "started", "status", "operations", "restorable",
                                    "operations shown"],
                               rows, raw_columns={6}))
    for run in history:
        if run.gallery.items:
            section.body.append(f"<h3>apply run {run.run_id} ({escape(run.stage)}) <small>"
                                f"({escape(first_shown(run.gallery, limits, 'operation'))})"
                                "</small></h3>")
            section.body.append(Grid(run.gallery.items[:limits.thumbnails]))
    return section
