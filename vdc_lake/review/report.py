"""Static HTML report for reviewing decisions before `apply`: OUT/index.html, gallery pages, OUT/thumbs/.

index.html: the funnel and the planned operations per decision (the counts `status` and `plan`
give), the thresholds in force, sanitize findings by rule, rotation and pair-distance histograms,
the cluster hierarchy, the sample per top-level cluster, and the history of apply runs from the
journal. Each decision's planned operations (sanitize, rotation, dedup, examples, score, sample),
the near misses of dedup, the cluster members and each apply run's operations are on pages of
`page_size` items (at most `max_pages` pages per gallery; every capped list says "N of M shown"),
nearest the threshold first, each removed duplicate beside the image it loses to. Thumbnails are
made only for what the pages show, so the report stays quick at 10^6 images.

Pages are self-contained (inline CSS and SVG, no script, nothing fetched from the network);
every string taken from the catalog is escaped. Reads the catalog only.

The parts: thumbnails (the pictures), pages (what a page holds), galleries (each decision's
planned operations, named by vdc_lake.review.decisions.DECISIONS), history (apply runs from the
journal), cluster_pages, sections (the index page's sections and the funnel), render (HTML/SVG);
this module puts them together (build_report).
"""

from __future__ import annotations

import os
import stat
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterable

from vdc_lake.catalog.connection import Catalog
from vdc_lake.config.loader import Config
from vdc_lake.fileops.confine import OUTSIDE_ROOT, ReadableRoots, root_overlap, scanned_roots
from vdc_lake.errors import StageError
from vdc_lake.review.cluster_pages import cluster_gallery, cluster_tree, clusters_section
from vdc_lake.review.decisions import DECISIONS
from vdc_lake.review.galleries import GalleryInputs, near_miss_gallery
from vdc_lake.review.history import applied_summary, apply_history, history_section
from vdc_lake.review.pages import Card, Grid, Limits, Paged, name_by_roots
from vdc_lake.review.render import PAGE_NAME, page_count, page_name, render_index, write_pages
from vdc_lake.review.sections import (decisions_section, describe_apply, duplicates_section, funnel,
                                      predict_failures_section, rotation_section, sampling_section,
                                      sanitize_section, thresholds_section)
from vdc_lake.review.thumbnails import PLACEHOLDERS, THUMB_SIZE, write_new_file, write_thumbnails


# -- the report ----------------------------------------------------------------------------------

def _setting(catalog: Catalog, section: str, key: str) -> Any:
    """The catalog's setting, else the bundled default (a catalog from before the option existed)."""
    value = catalog.scalar("SELECT setting(?, ?)", [section, key])
    return Config.bundled().section(section)[key] if value is None else value


def build_report(catalog: Catalog, out_dir: str | os.PathLike, *, thumbnails: int | None = None,
                 page_size: int | None = None, max_pages: int | None = None,
                 dedup_threshold: float | None = None, report_threshold: float | None = None,
                 rotation_threshold: float | None = None, thumb_size: int = THUMB_SIZE, workers: int | None = None,
                 quiet: bool = False) -> Path:
    """Write out_dir/index.html, the gallery pages and out_dir/thumbs/*.jpg; returns the index.html path.

    thumbnails: example images per block of index.html (rule, cluster, top cluster; 0: numbers
    only); page_size / max_pages: items per gallery page and pages per gallery. dedup_threshold:
    the apply threshold (distance); report_threshold: near misses are shown up to this distance;
    rotation_threshold: minimum probability of a correction. None (each): the catalog's settings,
    the values `plan`, `status` and `curated` use (dedup: per embedding set; near misses: every
    stored pair). Reads the catalog only.
    """
    limits = Limits(int(thumbnails if thumbnails is not None else _setting(catalog, "report", "thumbnails")),
                    int(page_size if page_size is not None else _setting(catalog, "report", "page_size")),
                    int(max_pages if max_pages is not None else _setting(catalog, "report", "max_pages")))
    rotation_source = "this report's --rotation-threshold" if rotation_threshold is not None else catalog.scalar(
        "SELECT source FROM settings WHERE section = 'rotation_correction' AND key = 'threshold'") or "settings"
    if rotation_threshold is None:
        rotation_threshold = float(catalog.scalar("SELECT setting('rotation_correction', 'threshold')"))
    if not os.fspath(out_dir).strip():  # an unset shell variable: it would mean the current folder
        raise StageError("--out is empty; give the folder to write the report into (e.g. --out report)")
    out_dir = Path(out_dir)
    overlap = root_overlap(scanned_roots(catalog), out_dir)
    if overlap is not None and overlap[0] == "inside":
        _, root, real = overlap
        raise StageError(f"report folder {out_dir} lies inside the scanned root {root}: the next scan would "
                         f"register its thumbnails as images; choose a folder outside every scanned root "
                         f"(e.g. {real.parent / (real.name + '-report')})")
    _make_folders(out_dir)
    stages = funnel(catalog, dedup_threshold=dedup_threshold, rotation_threshold=rotation_threshold)
    apply_text = describe_apply(catalog, dedup_threshold)
    inputs = GalleryInputs(limits, rotation_threshold, dedup_threshold, apply_text)
    galleries: dict[str, Paged | None] = {name: d.gallery(catalog, inputs)
                                          for name, d in DECISIONS.items() if d.gallery}
    near = near_miss_gallery(catalog, dedup_threshold, report_threshold, limits)
    history = apply_history(catalog, limits)
    tree = cluster_tree(catalog)
    clusters, page_of = cluster_gallery(catalog, tree, limits) if tree else (None, {})
    sections = [
        decisions_section(galleries, limits, history),
        thresholds_section(catalog, dedup_threshold, report_threshold, rotation_threshold, rotation_source),
        sanitize_section(catalog, limits, galleries["sanitize"]),
        rotation_section(catalog, rotation_threshold, limits, galleries["rotation"]),
        duplicates_section(catalog, dedup_threshold, limits, galleries["dedup"], near, history),
        clusters_section(catalog, tree, clusters, page_of, limits),
        sampling_section(catalog, limits, galleries["sample"]),
        predict_failures_section(catalog),
        history_section(history, limits),
    ]
    if limits.thumbnails <= 0:
        for section in sections:
            section.body = [b for b in section.body if not isinstance(b, Grid)]
    paged = [g for g in [*galleries.values(), near, clusters, *(r.gallery for r in history)] if g is not None]
    cards = [c for g in paged for item in g.items for c in item]
    cards += [c for s in sections for b in s.body if isinstance(b, Grid) for item in b.items for c in item]
    _confine(cards, ReadableRoots.of(catalog))
    name_by_roots(cards, scanned_roots(catalog))
    wanted = [c.thumb for c in cards]
    pages = [page_name(g.slug, n) for g in paged for n in range(1, page_count(g, limits) + 1)]
    _refuse_links(out_dir, ["index.html", *pages, *(t.name for t in wanted),
                            *(f"thumbs/_{kind}.jpg" for kind in PLACEHOLDERS)])
    for old in out_dir.glob("*-[0-9]*.html"):  # pages of an earlier report that this one may not rewrite
        if PAGE_NAME.fullmatch(old.name):
            old.unlink()
    max_pixels = int(_setting(catalog, "sanitize", "max_pixels"))  # sanitize's decompression-bomb limit
    applied = applied_summary(history)
    catalog.release()  # no open DuckDB handle across the fork of the thumbnail pool
    sources = write_thumbnails(out_dir, wanted, size=thumb_size, workers=workers, quiet=quiet, max_pixels=max_pixels)
    for gallery in paged:
        write_pages(out_dir, gallery, sources, limits, catalog.path.name)
    index_html = render_index(catalog, stages, applied, sections, sources).encode("utf-8")
    index = out_dir / "index.html"
    write_new_file(index, lambda f: f.write(index_html))
    return index


def _confine(cards: list[Card], readable: ReadableRoots) -> None:
    """Cards whose picture is a catalog image that may not be read (confine.ReadableRoots: an
    edited root or rel_path, a link out of the scanned roots) show the "outside" placeholder,
    link to nothing and say why."""
    refused: dict[str, str | None] = {}
    for card in cards:
        path = card.thumb.path
        if not card.thumb.in_root or path is None:
            continue
        if path not in refused:
            refused[path] = readable.path_error(path)
        if refused[path] is not None:
            card.thumb = replace(card.thumb, path=None)
            card.link = None if card.link == path else card.link
            card.lines.append(f"not read ({OUTSIDE_ROOT}): {refused[path]}")


def _make_folders(out_dir: Path) -> None:
    """Make OUT and OUT/thumbs; a link at OUT/thumbs is refused (OUT itself is the user's word)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    thumbs = out_dir / "thumbs"
    _refuse_links(out_dir, ["thumbs"])
    try:
        thumbs.mkdir()
    except FileExistsError:
        if not stat.S_ISDIR(os.lstat(thumbs).st_mode):
            raise StageError(f"report folder {out_dir} holds a file named thumbs, where the report puts its "
                             "thumbnails; move it away or choose another --out") from None


def _refuse_links(out_dir: Path, names: Iterable[str]) -> None:
    """StageError naming the first of `names` (relative to OUT) that is a symbolic link: the
    report writes there, and never through a link someone put in its folder."""
    for name in names:
        if os.path.islink(out_dir / name):
            raise StageError(f"report folder {out_dir} holds a symbolic link at {out_dir / name} (to "
                             f"{os.readlink(out_dir / name)}), where the report writes; remove it or choose "
                             "another --out")
