"""The report's cluster hierarchy: the tree of the newest cluster run and its members, leaf by leaf."""

from __future__ import annotations

from dataclasses import dataclass, field

from vdc_lake.catalog.connection import Catalog
from vdc_lake.review.pages import Limits, Paged, Section, image_card, shown
from vdc_lake.review.render import HISTOGRAM_BINS, escape, note_html, page_name, pages_link, svg_histogram, table_html


@dataclass
class ClusterTree:
    """The newest cluster run's hierarchy: (level, id) -> size / parent / children."""

    run_id: int
    top_level: int
    size: dict[tuple[int, int], int]
    children: dict[tuple[int, int], list[tuple[int, int]]]
    parent: dict[tuple[int, int], tuple[int, int]] = field(default_factory=dict)

    def tops(self) -> list[tuple[int, int]]:
        return sorted((k for k in self.size if k[0] == self.top_level), key=lambda k: (-self.size[k], k[1]))

    def leaves_under(self, node: tuple[int, int]) -> list[tuple[int, int]]:
        if node[0] == 0:
            return [node]
        return [leaf for child in self.children.get(node, []) for leaf in self.leaves_under(child)]


def cluster_tree(catalog: Catalog) -> ClusterTree | None:
    run_id = catalog.scalar("SELECT run_id FROM newest_stage_runs WHERE stage = 'cluster'")
    if run_id is None:
        return None
    rows = catalog.rows("SELECT level, cluster_id, parent_id, size FROM clusters WHERE run_id = ?", [run_id])
    if not rows:
        return None
    size = {(lv, cid): int(n) for lv, cid, _, n in rows}
    children: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for lv, cid, parent, _ in sorted(rows, key=lambda r: (-r[3], r[1])):
        if parent is not None:
            children.setdefault((lv + 1, parent), []).append((lv, cid))
    parent = {child: node for node, kids in children.items() for child in kids}
    return ClusterTree(run_id, max(lv for lv, *_ in rows), size, children, parent)


def cluster_gallery(catalog: Catalog, tree: ClusterTree, limits: Limits) -> tuple[Paged, dict[tuple[int, int], int]]:
    """Leaf clusters in hierarchy order (largest first), page_size leaves a page, `thumbnails`
    members each (nearest the centre first). Returns the gallery and the page of each shown leaf."""
    leaves = [leaf for top in tree.tops() for leaf in tree.leaves_under(top)]
    shown_leaves = leaves[:limits.per_gallery]
    members: dict[int, list[dict]] = {}
    if shown_leaves and limits.thumbnails:
        for r in catalog.arrow(
                """WITH ranked AS (
                       SELECT a.cluster_id, a.image_id, a.version, f.path, a.distance,
                              row_number() OVER (PARTITION BY a.cluster_id
                                                 ORDER BY a.distance NULLS LAST, a.image_id) AS rank
                       FROM assignments AS a JOIN image_files AS f ON f.image_id = a.image_id AND f.version = a.version
                       WHERE a.run_id = $run AND a.level = 0 AND list_contains($ids, a.cluster_id))
                   SELECT * FROM ranked WHERE rank <= $k ORDER BY cluster_id, rank""",
                {"run": tree.run_id, "ids": [c for _, c in shown_leaves], "k": limits.thumbnails}).to_pylist():
            members.setdefault(r["cluster_id"], []).append(r)
    # One item per leaf: its members in a row (an item is drawn as one block of cards).
    paged = Paged("clusters", f"Clusters of run {tree.run_id}: members by leaf",
                  "<p>Every level-0 cluster under its parents, largest first; members nearest the centre "
                  "first.</p>", len(leaves))
    page_of = {}
    for i, leaf in enumerate(shown_leaves):
        page_of[leaf] = i // limits.page_size + 1
        rows = members.get(leaf[1], [])
        paged.blocks.append((i, _leaf_heading(tree, leaf, len(rows))))
        paged.items.append([image_card(r, lines=["" if r["distance"] is None else f"distance {max(0.0, r['distance']):.3f}"])
                            for r in rows])
    return paged, page_of


def _ancestors(tree: ClusterTree, leaf: tuple[int, int]) -> list[tuple[int, int]]:
    chain, node = [], leaf
    while node in tree.parent:
        node = tree.parent[node]
        chain.append(node)
    return chain[::-1]


def _leaf_heading(tree: ClusterTree, leaf: tuple[int, int], n_members: int) -> str:
    path = " → ".join(f"level {lv} cluster {cid}" for lv, cid in [*_ancestors(tree, leaf), leaf])
    return (f"<h3>{escape(path)} <small>({escape(shown(n_members, tree.size[leaf], 'image'))})</small></h3>")


def clusters_section(catalog: Catalog, tree: ClusterTree | None, gallery: Paged | None,
                      page_of: dict[tuple[int, int], int], limits: Limits) -> Section:
    section = Section("clusters", "Clusters")
    if tree is None or gallery is None:
        section.body.append(note_html("no clustering yet: run vdc-lake cluster --set NAME"))
        return section
    levels = catalog.rows("SELECT level, count(*), min(size), median(size), max(size) FROM clusters "
                          "WHERE run_id = ? GROUP BY level ORDER BY level", [tree.run_id])
    section.body.append(f"<p>Cluster run {tree.run_id}; members of every level-0 cluster: "
                        f"{pages_link(gallery, limits)}.</p>")
    section.body.append(table_html(["level", "clusters", "smallest", "median", "largest"],
                               [(lv, f"{n:,}", f"{lo:,}", f"{med:g}", f"{hi:,}") for lv, n, lo, med, hi in levels]))
    sizes = [n for (lv, _), n in tree.size.items() if lv == 0]
    lo, hi = min(sizes, default=0), max(sizes, default=0) + 1
    section.body.append("<h3>Level-0 cluster sizes</h3>")
    section.body.append(svg_histogram(sizes, lo=float(lo), hi=float(hi), bins=max(1, min(HISTOGRAM_BINS, hi - lo)),
                                      x_label="images per cluster (bars: number of clusters)"))
    tops = tree.tops()
    listed = shown(min(len(tops), limits.page_size), len(tops), "top-level cluster")
    section.body.append(f"<h3>Hierarchy <small>({escape(listed)}"
                        "; open one to see its children)</small></h3>")
    section.body.append('<div class="tree">' + "".join(_tree_html(tree, top, page_of, limits.page_size)
                                                        for top in tops[:limits.page_size]) + "</div>")
    return section


def _tree_html(tree: ClusterTree, node: tuple[int, int], page_of: dict[tuple[int, int], int], cap: int) -> str:
    """A cluster and its children (at most `cap` of them; below the top level at most 10, so a
    deep tree stays a few thousand lines), as nested <details>."""
    level, cid = node
    kids = tree.children.get(node, [])
    if level == 0:
        page = page_of.get(node)
        link = (f' · <a href="{page_name("clusters", page)}#leaf-{cid}">members</a>' if page
                else " · members not shown (page cap)")
        return f'<div class="leaf">level 0 cluster {cid} ({tree.size[node]:,} images){link}</div>'
    inner = "".join(_tree_html(tree, kid, page_of, min(cap, 10)) for kid in kids[:cap])
    return (f"<details><summary>level {level} cluster {cid} ({tree.size[node]:,} images, "
            f"{escape(shown(min(len(kids), cap), len(kids), 'child'))})</summary>{inner}</details>")
