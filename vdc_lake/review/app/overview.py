"""The funnel page (each decision with the settings in force and what it plans), the counts every
page shows, and the applied runs with their restore command."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse
from markupsafe import Markup

from vdc_lake.catalog.connection import Catalog
from vdc_lake.review.decisions import DECISIONS, decision_values, sanitize_rules_note
from vdc_lake.review.history import apply_history, history_section
from vdc_lake.review.pages import Limits
from vdc_lake.review.render import funnel_html
from vdc_lake.review.sections import funnel
from vdc_lake.review.status import decision_settings_in_force, dedup_threshold_notes, overrides_in_force, pending_counts
from vdc_lake.review.app import web


def limits(catalog: Catalog) -> Limits:
    """The report's limits from the catalog's settings ([report] thumbnails, page_size, max_pages)."""
    values = dict(catalog.rows("SELECT key, value FROM settings WHERE section = 'report'"))
    return Limits(int(values.get("thumbnails", 8)), int(values.get("page_size", 50)), int(values.get("max_pages", 10)))


def decision_rows(catalog: Catalog, planned: list[tuple[str, str, int]], *,
                  values: bool = True) -> list[dict[str, Any]]:
    """Per registered decision: its name, what it plans (status' pending rows), its gallery and
    (values) the values in force."""
    by_stage: dict[str, list[str]] = {}
    for stage, action, n in planned:
        by_stage.setdefault(stage, []).append(f"{action} {n:,}")
    return [{"name": name, "planned": "; ".join(by_stage.get(name, [])) or "nothing",
             "values": (decision_values(catalog, name) or "") if values else "",
             "gallery": f"/{name}-1.html" if d.gallery else None}
            for name, d in DECISIONS.items()]


def pending(request: Request, catalog: Catalog) -> list[tuple[str, str, int]]:
    """The pending counts exactly as `status` gives them, read once per catalog state (the
    funnel and the counts bar both show them)."""
    return web.remembered(request, "pending", lambda: pending_counts(catalog))


def counts(request: Request, catalog: Catalog) -> dict[str, Any]:
    """What the bar on every page shows: each decision's planned operations and the overrides in force."""
    return {"decisions": decision_rows(catalog, pending(request, catalog), values=False),
            "overrides": overrides_in_force(catalog)}


def funnel_page(request: Request, catalog: Catalog) -> HTMLResponse:
    rotation = float(catalog.scalar("SELECT setting('rotation_correction', 'threshold')"))
    stages = funnel(catalog, dedup_threshold=None, rotation_threshold=rotation)
    status = {"settings": decision_settings_in_force(catalog),  # what `status` lists under settings
              "setting_notes": dedup_threshold_notes(catalog) + [n for n in [sanitize_rules_note(catalog)] if n]}
    return web.page(request, "funnel.html", title="Funnel", funnel=Markup(funnel_html(stages)),
                    decisions=decision_rows(catalog, pending(request, catalog)), status=status)


def counts_fragment(request: Request, catalog: Catalog) -> HTMLResponse:
    return web.fragment("counts.html", **counts(request, catalog))


def runs_page(request: Request, catalog: Catalog) -> HTMLResponse:
    history = apply_history(catalog, limits(catalog))
    section = history_section(history, limits(catalog))
    restores = [{"run": r.run_id, "stage": r.stage, "restorable": r.restorable,
                 "command": f"vdc-lake restore --run {r.run_id}" if r.done and not r.no_backup else None}
                for r in history]
    return web.page(request, "runs.html", title="Applied runs", body=web.body_html(section.body), restores=restores)
