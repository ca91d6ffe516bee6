"""Actions: keep / drop / clear images (one, a selection, a duplicate group, a cluster), undo of
this server's last action, and pair labels. Each keep/drop/clear is one `override` run written by
vdc_lake.stages.overrides, as the CLI writes it; labels go to `pair_labels` through
vdc_lake.review.calibration. Nothing else is written."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from vdc_lake.catalog.connection import Catalog
from vdc_lake.errors import CatalogLockedError, OverrideError, VdcLakeError
from vdc_lake.stages.overrides import clear_overrides, record_overrides, set_overrides
from vdc_lake.review.app.access import writing
from vdc_lake.review.app.options import AppOptions

ACTIONS = ("keep", "drop", "clear")
MAX_IMAGES = 100_000  # images one action may name (a selection, a group, a cluster)


def _ids(text: str) -> list[int]:
    try:
        ids = [int(t) for t in text.replace(" ", ",").split(",") if t]
    except ValueError:
        raise OverrideError("images must be image ids separated by commas") from None
    return ids


def targets(catalog: Catalog, form: Any) -> list[int]:
    """The image ids an action names: images=1,2,3, or group=G (every member of duplicate group G
    at the catalog's settings), or cluster=LEVEL:ID (every present member in the newest cluster run)."""
    if form.get("group"):
        ids = [r[0] for r in catalog.rows("SELECT image_id FROM dedup_actions() WHERE group_id = ?",
                                          [_ids(form["group"])[0]])]
    elif form.get("cluster"):
        level, _, cluster = form["cluster"].partition(":")
        run = catalog.scalar("SELECT run_id FROM newest_stage_runs WHERE stage = 'cluster'")
        ids = [r[0] for r in catalog.rows(
            "SELECT a.image_id FROM assignments AS a JOIN image_files AS f USING (image_id, version) "
            "WHERE a.run_id = ? AND a.level = ? AND a.cluster_id = ?", [run, _ids(level)[0], _ids(cluster)[0]])]
    else:
        ids = _ids(form.get("images", ""))
    if not ids:
        raise OverrideError("name at least one image: select cards, or act on a group or a cluster")
    if len(ids) > MAX_IMAGES:
        raise OverrideError(f"{len(ids):,} images in one action; act on at most {MAX_IMAGES:,} (a smaller cluster)")
    return sorted(set(ids))


def _apply(catalog: Catalog, action: str, ids: list[int], reason: str | None) -> Any:
    refs = [str(i) for i in ids]
    if action == "clear":
        return clear_overrides(catalog, refs)
    return set_overrides(catalog, refs, action, reason=reason)


def _failure(error: VdcLakeError) -> JSONResponse:
    return JSONResponse({"error": str(error)}, status_code=409 if isinstance(error, CatalogLockedError) else 400)


def _writer(request: Request) -> Any:
    options: AppOptions = request.app.state.options
    return writing(options.catalog_path, options.config.values["scale"], options.lock_wait)


async def act(request: Request) -> JSONResponse:
    form = await request.form()
    action = form.get("action", "")
    if action not in ACTIONS:
        return JSONResponse({"error": f"unknown action {action!r}: keep, drop or clear"}, status_code=400)
    reason = (form.get("reason") or "").strip() or None
    try:
        summary = await _in_thread(_act, request, action, dict(form), reason)
    except VdcLakeError as e:
        return _failure(e)
    request.app.state.undo.append(summary.run_id)
    verb = {"keep": "kept", "drop": "dropped", "clear": "cleared"}[action]
    return JSONResponse({"run_id": summary.run_id, "images": summary.images,
                         "message": f"override run {summary.run_id}: {summary.images} images {verb}"})


def _act(request: Request, action: str, form: dict, reason: str | None) -> Any:
    with _writer(request) as catalog:
        return _apply(catalog, action, targets(catalog, form), reason)


_BEFORE_SQL = """
SELECT image_id, action, reason FROM overrides
WHERE run_id < $run AND list_contains($ids, image_id)
QUALIFY row_number() OVER (PARTITION BY image_id ORDER BY run_id DESC, created_at DESC) = 1
"""


def _undo(request: Request, run_id: int) -> int:
    """Give the images of override run `run_id` back the override each had before it (keep or
    drop, with its reason, or none): one override run, as every action is."""
    with _writer(request) as catalog:
        ids = [r[0] for r in catalog.rows("SELECT DISTINCT image_id FROM overrides WHERE run_id = ? ORDER BY 1",
                                          [run_id])]
        before = {i: (a, r) for i, a, r in catalog.rows(_BEFORE_SQL, {"run": run_id, "ids": ids})}
        earlier = [before.get(image, ("clear", None)) for image in ids]
        actions = [a if a in ("keep", "drop") else "clear" for a, _ in earlier]
        reasons = [r if a in ("keep", "drop") else None for a, r in earlier]
        return record_overrides(catalog, ids, actions, reasons, command="undo").run_id


async def undo(request: Request) -> JSONResponse:
    stack: list[int] = request.app.state.undo
    if not stack:
        return JSONResponse({"error": "nothing to undo: this server has made no override since it started"},
                            status_code=400)
    run_id = stack[-1]
    try:
        undone_by = await _in_thread(_undo, request, run_id)
    except VdcLakeError as e:
        return _failure(e)
    stack.pop()
    return JSONResponse({"runs": [undone_by], "message": f"override run {run_id} undone (run {undone_by})"})


async def label(request: Request) -> JSONResponse:
    """One pair's label from label mode: image_a, image_b, is_duplicate (true/false)."""
    form = dict(await request.form())
    try:
        pair = (_ids(form.get("image_a", ""))[0], _ids(form.get("image_b", ""))[0])
    except (IndexError, OverrideError):
        return JSONResponse({"error": "a label needs image_a and image_b (image ids)"}, status_code=400)
    verdict = {"true": True, "false": False}.get(form.get("is_duplicate", ""))
    if verdict is None:
        return JSONResponse({"error": "is_duplicate must be true or false"}, status_code=400)
    try:
        written = await _in_thread(_label, request, pair, verdict)
    except VdcLakeError as e:
        return _failure(e)
    return JSONResponse({"written": written, "message": f"pair {pair[0]}–{pair[1]}: "
                                                         f"{'duplicate' if verdict else 'not a duplicate'}"})


def _label(request: Request, pair: tuple[int, int], verdict: bool) -> int:
    from vdc_lake.review.calibration import record_pair_labels

    with _writer(request) as catalog:
        return record_pair_labels(catalog, [(pair[0], pair[1], verdict)], source="app")


async def _in_thread(func: Any, *args: Any) -> Any:
    from starlette.concurrency import run_in_threadpool

    return await run_in_threadpool(func, *args)
