"""The galleries, live: each decision's planned operations (the report's gallery functions, every
page reachable), dedup's near misses, one duplicate group whole, the cluster hierarchy with kept
and dropped per cluster, and each apply run's operations."""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np
import pyarrow as pa
from starlette.requests import Request
from starlette.responses import HTMLResponse

from vdc_lake.catalog.connection import Catalog
from vdc_lake.errors import PlanError
from vdc_lake.fileops.confine import ReadableRoots, scanned_roots
from vdc_lake.review.cluster_pages import cluster_gallery, cluster_tree, clusters_section
from vdc_lake.review.decisions import DECISIONS
from vdc_lake.review.galleries import GalleryInputs, near_miss_gallery
from vdc_lake.review.history import apply_history
from vdc_lake.review.pages import Card, Limits, Paged, image_card, name_by_roots
from vdc_lake.review.render import page_blocks
from vdc_lake.review.sections import describe_apply
from vdc_lake.review.app import web
from vdc_lake.review.app.overview import limits

PAGER_SPAN = 3  # pages linked on each side of the current one
PAGES_AHEAD = 10  # gallery pages read at once (the report's default max_pages)
HISTORY = re.compile(r"history-(\d+)")


def find_gallery(catalog: Catalog, slug: str, limits_now: Limits) -> Paged | None:
    """The gallery named slug (a decision's, near, clusters, history-RUN) holding at least the
    items of the page limits_now.max_pages."""
    if slug in DECISIONS and DECISIONS[slug].gallery is not None:
        inputs = GalleryInputs(limits_now, None, None, describe_apply(catalog, None))
        return DECISIONS[slug].gallery(catalog, inputs)
    if slug == "near":
        return near_miss_gallery(catalog, None, None, limits_now)
    if slug == "clusters":
        tree = cluster_tree(catalog)
        return cluster_gallery(catalog, tree, limits_now)[0] if tree else None
    run = HISTORY.fullmatch(slug)
    if run:
        return next((r.gallery for r in apply_history(catalog, limits_now) if r.run_id == int(run.group(1))), None)
    return None


def pager(slug: str, page: int, pages: int) -> list[tuple[int | None, str]]:
    """(page or None for a gap, label): the first, the last and PAGER_SPAN around the current."""
    shown = sorted({1, pages, *range(max(1, page - PAGER_SPAN), min(pages, page + PAGER_SPAN) + 1)})
    links: list[tuple[int | None, str]] = []
    for n in shown:
        if links and links[-1][0] is not None and n > links[-1][0] + 1:
            links.append((None, "…"))
        links.append((n, str(n)))
    return links


def prefetch(request: Request, catalog: Catalog, cards: list[Card]) -> None:
    """Captions as the report writes them (paths relative to their scanned root), and the
    thumbnails started while the page is sent."""
    name_by_roots(cards, scanned_roots(catalog))
    request.app.state.thumbs.prefetch(catalog, cards, ReadableRoots.of(catalog))


def gallery_through(request: Request, catalog: Catalog, slug: str, base: Limits, page: int) -> Paged | None:
    """The gallery with the items of pages 1..page at least, read once per catalog state for the
    first PAGES_AHEAD pages together (a gallery's query costs the same for one page or ten: the
    decision's whole view runs either way), again only for a page beyond what was read."""
    key = f"gallery {slug}"
    held = web.remembered(request, key, lambda: (0, None))
    if held[0] >= page:
        return held[1]
    pages = max(page, PAGES_AHEAD)
    paged = find_gallery(catalog, slug, Limits(base.thumbnails, base.page_size, pages))
    web.remember(request, key, (pages, paged))
    return paged


def gallery_page(request: Request, catalog: Catalog, slug: str, page: int) -> HTMLResponse:
    base = limits(catalog)
    paged = gallery_through(request, catalog, slug, base, page)
    if paged is None:
        raise PlanError(f"no gallery named {slug!r}: the funnel page links every gallery")
    per_page = base.page_size
    pages = max(1, math.ceil(paged.total / per_page))
    first = (page - 1) * per_page
    items = paged.items[first:first + per_page]
    prefetch(request, catalog, web.cards_of(items))
    return web.page(request, "gallery.html", title=paged.title, paged=paged, slug=slug, page=page, pages=pages,
                    first=first, shown=len(items), links=pager(slug, page, pages),
                    intro=web.Markup(paged.intro),
                    cards=web.gallery(paged, items, page_blocks(paged, first, len(items))))


_GROUP_SQL = """
SELECT d.group_id, d.image_id, d.version, d.path, d.action, d.reason, d.group_size, d.kept_image_id
FROM dedup_actions() AS d
ORDER BY d.group_id, d.action DESC, d.image_id
"""


def group_rows(request: Request, catalog: Catalog, group_id: int) -> list[dict[str, Any]]:
    """Every member of one duplicate group, from every group's members read once per catalog
    state (dedup_actions runs for all groups however few are asked for)."""
    def read() -> tuple[np.ndarray, pa.Table]:
        table = catalog.arrow(_GROUP_SQL)
        return table.column("group_id").to_numpy(zero_copy_only=False).astype(np.int64), table
    groups, table = web.remembered(request, "dedup groups", read)
    start, stop = np.searchsorted(groups, group_id, "left"), np.searchsorted(groups, group_id, "right")
    return table.slice(start, stop - start).to_pylist()


def group_page(request: Request, catalog: Catalog, group_id: int) -> HTMLResponse:
    """Every member of one duplicate group at the catalog's settings: the keeper(s) and the deleted."""
    rows = group_rows(request, catalog, int(group_id))
    items = []
    for r in rows:
        card = image_card(r, lines=[r["reason"]], css="keep" if r["action"] == "keep" else "delete",
                          label="kept" if r["action"] == "keep" else "removed")
        card.group, card.planned = int(group_id), r["action"] == "delete"
        items.append([card])
    prefetch(request, catalog, web.cards_of(items))
    return web.page(request, "group.html", title=f"Duplicate group {group_id}", group=group_id, size=len(rows),
                    ids=[r["image_id"] for r in rows], cards=web.grid(items))


# Present members and those in curated per cluster of one cluster run, every level at once;
# curated_now holds the ids in curated (each at its current version, as image_files).
_KEPT_SQL = """
SELECT a.level, a.cluster_id, count(*) AS members, count(c.image_id) AS kept
FROM assignments AS a
JOIN image_files AS f ON f.image_id = a.image_id AND f.version = a.version
LEFT JOIN curated_now AS c ON c.image_id = a.image_id
WHERE a.run_id = $run
GROUP BY a.level, a.cluster_id
"""

_MEMBERS_SQL = """
SELECT a.image_id, a.version, f.path, a.distance, count(*) OVER () AS total
FROM assignments AS a
JOIN image_files AS f ON f.image_id = a.image_id AND f.version = a.version
WHERE a.run_id = $run AND a.level = $level AND a.cluster_id = $cluster
ORDER BY a.distance NULLS LAST, a.image_id
LIMIT $n OFFSET $skip
"""


def curated_ids(request: Request, catalog: Catalog) -> np.ndarray:
    """The image ids in curated (sorted), read once per catalog state: every cluster page's kept
    and dropped come from them (curated runs every decision)."""
    return web.remembered(request, "curated ids", lambda: np.sort(
        catalog.arrow("SELECT image_id FROM curated").column("image_id").to_numpy(zero_copy_only=False)))


def kept_counts(request: Request, catalog: Catalog, run: int) -> dict[tuple[int, int], tuple[int, int]]:
    """{(level, cluster id): (present members, kept in curated)} of every cluster of the run, read
    once per catalog state."""
    def count() -> dict[tuple[int, int], tuple[int, int]]:
        kept = pa.table({"image_id": pa.array(curated_ids(request, catalog), pa.int64())})
        with catalog.registered("curated_now", kept):
            return {(lv, cid): (n, k) for lv, cid, n, k in catalog.rows(_KEPT_SQL, {"run": run})}
    return web.remembered(request, f"cluster counts {run}", count)


def _child_rows(request: Request, catalog: Catalog, tree: Any, nodes: list[tuple[int, int]]) -> list[dict[str, Any]]:
    counts = kept_counts(request, catalog, tree.run_id)
    return [{"level": lv, "id": cid, "size": tree.size[(lv, cid)], "members": counts.get((lv, cid), (0, 0))[0],
             "kept": counts.get((lv, cid), (0, 0))[1], "children": len(tree.children.get((lv, cid), []))}
            for lv, cid in nodes]


def clusters_page(request: Request, catalog: Catalog) -> HTMLResponse:
    tree = cluster_tree(catalog)
    base = limits(catalog)
    gallery = cluster_gallery(catalog, tree, base) if tree else (None, {})
    section = clusters_section(catalog, tree, gallery[0], gallery[1], base)
    tops = _child_rows(request, catalog, tree, tree.tops()[:base.page_size]) if tree else []
    return web.page(request, "clusters.html", title="Clusters", body=web.body_html(section.body), tops=tops,
                    total_tops=len(tree.tops()) if tree else 0)


def cluster_page(request: Request, catalog: Catalog, level: int, cluster_id: int) -> HTMLResponse:
    """One cluster: its ancestors, its children with kept and dropped counts, its members (paged)."""
    page = web.query_page(request)
    tree = cluster_tree(catalog)
    if tree is None or (level, cluster_id) not in tree.size:
        raise PlanError(f"no cluster {cluster_id} at level {level} in the newest cluster run; "
                        "the clusters page lists them")
    node = (level, cluster_id)
    chain, walk = [], node
    while walk in tree.parent:
        walk = tree.parent[walk]
        chain.append({"level": walk[0], "id": walk[1]})
    per_page = limits(catalog).page_size
    rows = catalog.arrow(_MEMBERS_SQL, {"run": tree.run_id, "level": level, "cluster": cluster_id, "n": per_page,
                                        "skip": (page - 1) * per_page}).to_pylist()
    kept = curated_ids(request, catalog)
    for r in rows:
        at = np.searchsorted(kept, r["image_id"])
        r["kept"] = bool(at < len(kept) and kept[at] == r["image_id"])
    total = int(rows[0]["total"]) if rows else 0
    items = [[image_card(r, lines=["" if r["distance"] is None else f"distance {max(0.0, r['distance']):.3f}"],
                         css="keep" if r["kept"] else "delete", label="kept" if r["kept"] else "dropped")]
             for r in rows]
    prefetch(request, catalog, web.cards_of(items))
    pages = max(1, math.ceil(total / per_page))
    own = _child_rows(request, catalog, tree, [node])[0]
    children = _child_rows(request, catalog, tree, tree.children.get(node, [])[:200])
    return web.page(request, "cluster.html", title=f"Cluster {cluster_id} at level {level}", node=own,
                    ancestors=chain[::-1], children=children,
                    cards=web.grid(items), page=page, pages=pages, links=pager("", page, pages), total=total)
