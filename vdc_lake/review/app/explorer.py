"""The threshold explorer (a slider per dedup set and for the rotation, score and examples
thresholds: what each value removes, the pairs beside it, the deletions only through a group, the
config line) and label mode (two keys: duplicate / not) with the calibration table. The numbers
come from vdc_lake.review.thresholds and vdc_lake.review.calibration, the macros `plan` uses."""

from __future__ import annotations

import math
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse

from vdc_lake.catalog.connection import Catalog
from vdc_lake.errors import PlanError
from vdc_lake.review.app import web
from vdc_lake.review.pages import image_card

SLIDER_STEPS = 200
NEAR_PAIRS = 6  # pairs shown on each side of a dedup threshold


def _number(text: str | None) -> float | None:
    try:
        value = float(text) if text is not None else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


def sliders(catalog: Catalog) -> list[dict[str, Any]]:
    """One slider per dedup set and per other thresholded decision the catalog has data for:
    decision, set, label, min, max, step, value (the setting in force)."""
    found = []
    for set_name, searched, apply_at in catalog.rows(
            """SELECT n.set_name, TRY_CAST(json_extract(n.params, '$.threshold') AS DOUBLE),
                      coalesce(t.apply_threshold, f.apply_threshold)
               FROM newest_runs AS n LEFT JOIN dedup_thresholds AS t ON t.set_name = n.set_name
               CROSS JOIN (SELECT apply_threshold FROM dedup_thresholds WHERE set_name IS NULL) AS f
               WHERE n.stage = 'dedup-report' ORDER BY n.set_name"""):
        top = max(searched or 0.0, apply_at or 0.0) or 1.0
        found.append(_slider("dedup", set_name, f"dedup, set {set_name}: distance <", 0.0, top, apply_at))
    if catalog.scalar("SELECT count(*) FROM prediction_sets WHERE kind = 'rotation'"):
        found.append(_slider("rotation", None, "rotation: probability >", 0.0, 1.0,
                             catalog.scalar("SELECT setting('rotation_correction', 'threshold')::DOUBLE")))
    name = catalog.scalar("SELECT setting('filter_by_score', 'name')")
    if name:
        low, high = catalog.rows("SELECT min(score), max(score) FROM scores WHERE name = ?", [name])[0]
        if low is not None:
            now = catalog.scalar("SELECT setting('filter_by_score', 'min_score')::DOUBLE")
            found.append(_slider("score", None, f"score {name}: keep at least", float(low), float(high),
                                 now if now is not None and math.isfinite(now) else float(low)))
    far = catalog.scalar("SELECT max(distance) FROM example_distances")
    if far is not None:
        found.append(_slider("examples", None, "examples: distance <", 0.0, float(far) or 1.0,
                             catalog.scalar("SELECT setting('filter_by_examples', 'threshold')::DOUBLE")))
    return found


def _slider(decision: str, set_name: str | None, label: str, low: float, high: float, value: Any) -> dict[str, Any]:
    value = float(value) if value is not None else low
    high = max(high, value)
    return {"decision": decision, "set": set_name, "label": label, "min": low, "max": high,
            "step": (high - low) / SLIDER_STEPS or 1e-3, "value": value,
            "key": decision + ("-" + set_name if set_name else "")}


def thresholds_page(request: Request, catalog: Catalog) -> HTMLResponse:
    return web.page(request, "thresholds.html", title="Thresholds", sliders=sliders(catalog))


def _pair_items(catalog: Catalog, pairs: list[Any], threshold: float) -> list[list]:
    ids = sorted({int(p[k]) for p in pairs for k in ("image_a", "image_b")})
    rows = {r["image_id"]: r for r in catalog.arrow(
        "SELECT image_id, version, path FROM image_files WHERE list_contains($ids, image_id)",
        {"ids": ids}).to_pylist()}
    items = []
    for p in pairs:
        a, b = int(p["image_a"]), int(p["image_b"])
        # a chained pair (same dedup group, no stored pair) has no distance of its own
        distance = None if p["distance"] is None else max(0.0, float(p["distance"]))
        if a in rows and b in rows:
            if distance is None:
                line, removed = "chained: same group, no stored distance", True
            else:
                removed = distance < threshold
                line = f"distance {distance:.4f} ({'below: a duplicate' if removed else 'above: kept apart'})"
            items.append([image_card(rows[a], lines=[line], css="delete" if removed else "keep"),
                          image_card(rows[b], lines=[], css="keep")])
    return items


def threshold_fragment(request: Request, catalog: Catalog, decision: str) -> HTMLResponse:
    """What one value of a slider does: images removed (the decision's macro), and for dedup the
    pairs nearest it and the deletions that happen only through other group members."""
    from vdc_lake.review.thresholds import chain_only, config_line, dedup_graph, pairs_near, threshold_sweep

    if decision not in ("dedup", "rotation", "score", "examples"):
        raise PlanError(f"no threshold explorer for {decision!r}")
    set_name = request.query_params.get("set") or None
    value = _number(request.query_params.get("value"))
    if value is None:
        raise PlanError("give the threshold as value=NUMBER")
    if decision == "dedup" and set_name:  # the set's pairs read once per catalog state, then one grouping
        graph = web.remembered(request, f"dedup graph {set_name}", lambda: dedup_graph(catalog, set_name))
        removed = graph.removed(value)
    else:
        (_, removed), = threshold_sweep(catalog, decision, set_name=set_name, values=[value])
    context: dict[str, Any] = {"decision": decision, "value": value, "removed": int(removed),
                               "line": config_line(decision, set_name, value), "pairs": None, "chained": None}
    if decision == "dedup" and set_name:
        near = pairs_near(catalog, set_name, value, k=NEAR_PAIRS).to_pylist()
        context["pairs"] = web.grid(_pair_items(catalog, near, value))
        chained = chain_only(catalog, set_name, value).column("image_id").to_pylist()
        context["chained"] = {"count": len(chained), "ids": [int(i) for i in chained[:50]]}
    return web.fragment("threshold_fragment.html", **context)


def label_sets(catalog: Catalog) -> list[str]:
    return [r[0] for r in catalog.rows("SELECT DISTINCT set_name FROM newest_runs WHERE stage = 'dedup-report' "
                                       "ORDER BY 1")]


def label_page(request: Request, catalog: Catalog) -> HTMLResponse:
    names = label_sets(catalog)
    chosen = request.query_params.get("set") or (names[0] if names else None)
    if chosen is not None and chosen not in names:
        raise PlanError(f"no dedup report for set {chosen!r}; choose one of: {', '.join(names) or '(none yet)'}")
    return web.page(request, "label.html", title="Label pairs", sets=names, chosen=chosen,
                    body=_label_context(request, catalog, chosen) if chosen else None)


def _label_context(request: Request, catalog: Catalog, set_name: str) -> dict[str, Any]:
    from vdc_lake.review.calibration import calibration_rows, next_unlabelled_pair

    pair = next_unlabelled_pair(catalog, set_name)
    table = web.remembered(request, f"calibration {set_name}", lambda: calibration_rows(catalog, set_name))
    labelled = catalog.scalar("SELECT count(*) FROM pair_labels")
    context: dict[str, Any] = {"set": set_name, "pair": None, "rows": list(table.rows), "best": table.best,
                               "labelled": labelled}
    if pair is not None:
        a, b = int(pair["image_a"]), int(pair["image_b"])
        items = _pair_items(catalog, [{"image_a": a, "image_b": b, "distance": pair["distance"]}], math.inf)
        context["pair"] = {"a": a, "b": b,
                           "distance": None if pair["distance"] is None else max(0.0, float(pair["distance"])),
                           "cards": web.grid(items)}
    return context


def label_fragment(request: Request, catalog: Catalog) -> HTMLResponse:
    set_name = request.query_params.get("set") or ""
    if set_name not in label_sets(catalog):
        raise PlanError(f"no dedup report for set {set_name!r}")
    return web.fragment("label_fragment.html", body=_label_context(request, catalog, set_name), csrf="")
