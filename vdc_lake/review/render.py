"""Rendering the report: HTML of cards, tables, pages and the index, and SVG histograms
(self-contained, every string taken from the catalog escaped)."""

from __future__ import annotations

import datetime as dt
import html
import math
import os
import re
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from vdc_lake import __version__
from vdc_lake.catalog.connection import Catalog
from vdc_lake.review.pages import Card, Grid, Limits, Paged, Section, file_name, shown
from vdc_lake.review.thumbnails import write_new_file


HISTOGRAM_BINS = 40


# -- rendering -----------------------------------------------------------------------------------

def escape(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def note_html(text: str) -> str:
    return f'<p class="note">{escape(text)}</p>'


def bar_html(fraction: float, label: str) -> str:
    width = max(0.0, min(1.0, fraction)) * 100
    return f'<div class="bar"><span style="width:{width:.1f}%"></span><em>{escape(label)}</em></div>'


def table_html(headers: Sequence[str], rows: Iterable[Sequence[Any]], *, raw_columns: set[int] = frozenset()) -> str:
    """An HTML table; every cell is escaped except the columns in raw_columns (HTML we made)."""
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = [str(v) if i in raw_columns else escape(v) for i, v in enumerate(row)]
        body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


PAGE_NAME = re.compile(r"(sanitize|rotation|dedup|near|examples|score|sample|override|clusters|history-\d+)-\d+\.html")


def page_name(slug: str, page: int) -> str:
    return f"{slug}-{page}.html"


def page_count(gallery: Paged, limits: Limits) -> int:
    return max(1, math.ceil(len(gallery.items) / limits.page_size))


def pages_link(gallery: Paged, limits: Limits) -> str:
    """'<a>43 items on 1 page</a>' or '500 of 1,200 shown on 10 pages' (links to each page)."""
    if not gallery.total:
        return "none"
    pages = page_count(gallery, limits)
    links = " ".join(f'<a href="{escape(page_name(gallery.slug, p))}">{p}</a>' for p in range(1, pages + 1))
    return f"{escape(shown(len(gallery.items), gallery.total))} on {pages} page{'s' if pages > 1 else ''}: {links}"


def _nice_step(span: float, ticks: int = 5) -> float:
    raw = span / max(ticks, 1)
    magnitude = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1.0
    return next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)


def _tick_label(value: float) -> str:
    return np.format_float_positional(float(value), precision=6, trim="-")


def _log_ticks(lo: float, hi: float) -> list[float]:
    """Powers of ten in [lo, hi], with 2x and 5x between them when the range spans few decades."""
    decades = range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
    steps = (1, 2, 5) if len(decades) <= 4 else (1,)
    return [m * 10.0 ** d for d in decades for m in steps if lo <= m * 10.0 ** d <= hi * (1 + 1e-9)]


def svg_histogram(values: Sequence[float], *, lo: float, hi: float, x_label: str,
                  markers: Sequence[tuple[float, str, str]] = (), bins: int = HISTOGRAM_BINS,
                  log_counts: bool = False, log_x: bool = False, width: int = 720, height: int = 220) -> str:
    """An inline SVG histogram of `values` over [lo, hi], with vertical lines at markers (x, label,
    colour) and round-numbered ticks. log_counts: bar heights on a log scale (1, 10, 100, ...), so
    one huge bar does not hide the rest. log_x: bins evenly spaced in log(x) from lo > 0; the
    values under lo (exact copies at distance 0) get a bar of their own at the left."""
    if not len(values):
        return note_html(f"no values to plot ({x_label})")
    data = np.asarray(values, dtype=np.float64)
    left, bottom, plot_w, plot_h = 60, height - 40, width - 80, height - 70
    under = 0
    if log_x:
        edges = np.geomspace(lo, hi, bins + 1)
        counts, _ = np.histogram(np.clip(data, lo, hi), bins=edges)
        under = int((data < lo).sum())
        counts[0] -= under
        gap = 36  # the "under lo" bar
        x = lambda v: left + gap + math.log(max(v, lo) / lo) / math.log(hi / lo) * (plot_w - gap)  # noqa: E731
    else:
        counts, edges = np.histogram(data, bins=bins, range=(lo, hi))
        x = lambda v: left + (v - lo) / ((hi - lo) or 1.0) * plot_w  # noqa: E731
    top = max(int(counts.max()), under, 1)
    if log_counts:  # 1 -> one step above the axis, each power of ten one more step
        decades = math.ceil(math.log10(top)) + 1
        y = lambda c: 0.0 if c <= 0 else (math.log10(c) + 1) / decades * plot_h  # noqa: E731
        y_ticks = [10 ** k for k in range(decades)]
    else:
        y = lambda c: c / top * plot_h  # noqa: E731
        y_ticks = [0, top]
    parts = [f'<svg class="hist" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
             f'xmlns="http://www.w3.org/2000/svg" role="img" aria-label="{escape(x_label)}">']
    for count, a, b in zip(counts, edges[:-1], edges[1:]):
        h = y(count)
        parts.append(f'<rect x="{x(a):.1f}" y="{bottom - h:.1f}" width="{max(x(b) - x(a) - 1, 1):.1f}" '
                     f'height="{h:.1f}" fill="#7f8c8d"><title>{a:.4g} to {b:.4g}: {count:,}</title></rect>')
    if log_x:
        h = y(under)
        parts.append(f'<rect x="{left + 4}" y="{bottom - h:.1f}" width="24" height="{h:.1f}" fill="#566573">'
                     f"<title>under {_tick_label(lo)}: {under:,}</title></rect>")
        parts.append(f'<text x="{left + 16}" y="{bottom + 28}" text-anchor="middle">&lt;{_tick_label(lo)}</text>')
    parts.append(f'<line x1="{left}" y1="{bottom}" x2="{left + plot_w}" y2="{bottom}" stroke="#333"/>')
    parts.append(f'<line x1="{left}" y1="{bottom}" x2="{left}" y2="{bottom - plot_h}" stroke="#333"/>')
    if log_x:
        ticks = _log_ticks(lo, hi)
    else:
        step = _nice_step(hi - lo)
        ticks = [k * step for k in range(math.ceil(lo / step - 1e-9), math.floor(hi / step + 1e-9) + 1)]
    for tick in ticks:
        parts.append(f'<line x1="{x(tick):.1f}" y1="{bottom}" x2="{x(tick):.1f}" y2="{bottom + 4}" stroke="#333"/>')
        parts.append(f'<text x="{x(tick):.1f}" y="{bottom + 16}" text-anchor="middle">{_tick_label(tick)}</text>')
    for count in y_ticks:
        parts.append(f'<text x="{left - 6}" y="{bottom - y(count) + 4:.1f}" text-anchor="end">{count:,}</text>')
    parts.append(f'<text x="{left + plot_w / 2:.1f}" y="{height - 4}" text-anchor="middle">{escape(x_label)}</text>')
    for i, (value, label, colour) in enumerate(markers):
        if lo <= value <= hi:
            parts.append(f'<line x1="{x(value):.1f}" y1="{bottom}" x2="{x(value):.1f}" y2="{bottom - plot_h - 5}" '
                         f'stroke="{colour}" stroke-width="2" stroke-dasharray="5,3"/>')
            right = x(value) > left + plot_w * 0.8  # label on the left of the line near the right edge
            parts.append(f'<text x="{x(value) + (-4 if right else 4):.1f}" y="{bottom - plot_h + 8 + 14 * i}" '
                         f'text-anchor="{"end" if right else "start"}" fill="{colour}">{escape(label)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def funnel_html(stages: list[tuple[str, int, str]]) -> str:
    first = max(stages[0][1], 1)
    rows = [(name, f"{n:,}", escape(note), bar_html(n / first, f"{100 * n / first:.1f}%")) for name, n, note in stages]
    head = "<tr><th>stage</th><th>images</th><th>note</th><th>of scanned</th></tr>"
    body = "".join(f"<tr><td>{escape(a)}</td><td>{escape(b)}</td><td>{c}</td><td>{d}</td></tr>" for a, b, c, d in rows)
    return f"<table class=\"funnel\"><thead>{head}</thead><tbody>{body}</tbody></table>"


def _file_link(path: str | None) -> str | None:
    """A file:// URL for an absolute path, else None."""
    if not path or not os.path.isabs(path):
        return None
    try:
        return Path(path).as_uri()
    except ValueError:
        return None


Href = Callable[[Card], "str | None"]  # where a card links to (the app: its image page); None: the file


def card_html(card: Card, sources: dict[str, str], href: Href | None = None) -> str:
    """One card: its picture (sources: thumbnail key -> src), label, file name and lines.
    href: the link of a card (None: a file:// link to the file, as the static report has)."""
    src = sources[card.thumb.key]
    url = href(card) if href is not None else _file_link(card.link)
    name = escape(card.name or file_name(card.link or card.thumb.path))
    title = escape(card.link or card.thumb.path or "")
    picture = f'<img src="{escape(src)}" alt="{name}" title="{title}" loading="lazy">'
    if url:
        picture = f'<a href="{escape(url)}">{picture}</a>'
        name = f'<a href="{escape(url)}">{name}</a>'
    label = f"<b>{escape(card.label)}</b><br>" if card.label else ""
    lines = "".join(f"<br>{escape(line)}" for line in card.lines if line)
    data = "" if card.image_id is None else f' data-image-id="{card.image_id}"'
    data += ' data-planned="1"' if card.planned else ""
    data += "" if card.group is None else f' data-group="{int(card.group)}"'
    return (f'<figure class="card {escape(card.css)}"{data} data-image-path="{title}">'
            f"{picture}<figcaption>{label}{name}{lines}</figcaption></figure>")


def _item_html(item: list[Card], sources: dict[str, str], href: Href | None) -> str:
    cards = "".join(card_html(c, sources, href) for c in item)
    return f'<div class="item">{cards}</div>' if len(item) > 1 else cards


def grid_html(grid: Grid, sources: dict[str, str], href: Href | None = None) -> str:
    """Items side by side (each one card, or a pair: removed beside what it loses to)."""
    return (f'<div class="gallery">{"".join(_item_html(i, sources, href) for i in grid.items)}</div>'
            if grid.items else "")


CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;max-width:1400px}
h1{margin-bottom:0}h2{border-bottom:2px solid #ddd;padding-bottom:4px;margin-top:36px}
h3{margin:18px 0 6px}small{color:#666;font-weight:normal}nav a{margin-right:12px}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ddd;padding:3px 8px;text-align:left}
th{background:#f4f4f4}.note{color:#666;font-style:italic}
.bar{position:relative;width:260px;height:16px;background:#eee}
.bar span{position:absolute;left:0;top:0;bottom:0;background:#5d8aa8}
.bar em{position:absolute;left:6px;top:0;font-size:11px;font-style:normal;color:#000}
.gallery{display:flex;flex-wrap:wrap;gap:8px;align-items:flex-start}
.item{display:flex;gap:2px;padding:3px;background:#eee}
.card{margin:0;width:168px;border:2px solid #ddd;padding:3px;background:#fafafa}
.card img{display:block;max-width:160px;max-height:160px;margin:auto}
.card figcaption{font-size:11px;color:#444;word-break:break-word}
.blocks{display:flex;flex-wrap:wrap;gap:0 28px}
.card.delete{border-color:#c0392b}.card.keep{border-color:#27ae60}.card.after{border-color:#2471a3}
.card.change{border-color:#d68910}.card.example{border-color:#8e44ad}
.tree details{margin-left:18px}.tree .leaf{margin-left:36px}.pager a{margin-right:6px}
svg.hist text{font-size:11px;fill:#333}
"""


def _document(title: str, body: Iterable[str]) -> str:
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<link rel="icon" href="data:,">',
        f"<title>{escape(title)}</title><style>{CSS}</style></head><body>", *body, "</body></html>"])


def gallery_body(gallery: Paged, items: list[list[Card]], blocks: dict[int, str], sources: dict[str, str],
                 href: Href | None = None) -> list[str]:
    """The cards of one gallery page: `items` (a slice of gallery.items) with the block headings
    that fall among them (blocks: index in items -> HTML); the static pages and the app both use it."""
    body = []
    if gallery.slug == "clusters":  # one block per leaf: heading, then its members
        for i, item in enumerate(items):
            leaf_anchor = re.search(r"level 0 cluster (\d+)", blocks.get(i, ""))
            anchor = f' id="leaf-{leaf_anchor.group(1)}"' if leaf_anchor else ""
            body.append(f"<div{anchor}>{blocks.get(i, '')}{grid_html(Grid([[c] for c in item]), sources, href)}</div>")
        return body
    grid: list[list[Card]] = []
    for i, item in enumerate(items):
        if i in blocks:
            body.append(grid_html(Grid(grid), sources, href))
            grid = []
            body.append(blocks[i])
        grid.append(item)
    body.append(grid_html(Grid(grid), sources, href))
    if not items:
        body.append(note_html("nothing planned"))
    return body


def page_blocks(gallery: Paged, first: int, n: int) -> dict[int, str]:
    """The block headings of the page whose items are gallery.items[first:first + n], by index on that page."""
    return {i - first: text for i, text in gallery.blocks if first <= i < first + n}


def write_pages(out_dir: Path, gallery: Paged, sources: dict[str, str], limits: Limits, catalog_name: str) -> None:
    """OUT/{slug}-1.html ...: page_size items each, a pager linking every page and the index."""
    pages = page_count(gallery, limits)
    pager = ('<p class="pager"><a href="index.html">index</a> · page: '
             + " ".join(f'<a href="{escape(page_name(gallery.slug, p))}">{p}</a>' for p in range(1, pages + 1))
             + "</p>")
    for page in range(1, pages + 1):
        first = (page - 1) * limits.page_size
        items = gallery.items[first:first + limits.page_size]
        body = [f"<h1>{escape(gallery.title)}</h1>",
                f"<p>{escape(catalog_name)} · page {page} of {pages} · items {first + 1 if items else 0:,}–"
                f"{first + len(items):,} · {escape(shown(len(gallery.items), gallery.total))} in all pages"
                + (f" (at most {limits.max_pages} pages of {limits.page_size})"
                   if len(gallery.items) < gallery.total else "") + "</p>",
                gallery.intro, pager]
        body.extend(gallery_body(gallery, items, page_blocks(gallery, first, len(items)), sources))
        body.append(pager)
        text = _document(gallery.title, body).encode("utf-8")
        write_new_file(out_dir / page_name(gallery.slug, page), lambda f: f.write(text))


def render_index(catalog: Catalog, stages: list[tuple[str, int, str]], applied: str, sections: list[Section],
                sources: dict[str, str]) -> str:
    nav = " ".join(f'<a href="#{s.anchor}">{escape(s.title)}</a>' for s in sections)
    body = [
        f"<h1>vdc-lake report</h1><p>catalog {escape(catalog.path)} · generated "
        f"{escape(dt.datetime.now().isoformat(timespec='seconds'))} · vdc-lake {escape(__version__)}</p>",
        f'<nav><a href="#funnel">Funnel</a> {nav}</nav>',
        '<h2 id="funnel">Funnel</h2>', applied, funnel_html(stages),
    ]
    for section in sections:
        body.append(f'<h2 id="{escape(section.anchor)}">{escape(section.title)}</h2>')
        body.extend(grid_html(b, sources) if isinstance(b, Grid) else b for b in section.body)
    return _document(f"vdc-lake report: {catalog.path.name}", body)
