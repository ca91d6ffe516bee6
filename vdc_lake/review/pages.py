"""What the report's pages hold: cards (a thumbnail and its lines), grids, paged galleries,
sections and the page limits."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Sequence

from vdc_lake.catalog.connection import Catalog
from vdc_lake.review.thumbnails import Thumb, image_thumb


# -- what the pages hold -------------------------------------------------------------------------

@dataclass
class Card:
    """One picture with its caption: file name, a link to the file, and lines of text."""

    thumb: Thumb
    lines: list[str]
    css: str = ""
    link: str | None = None  # the file the picture links to (the original, or its backup)
    label: str | None = None  # shown above the file name ("removed", "kept", ...)
    image_id: int | None = None  # the catalog image shown, if it is one
    planned: bool = False  # the image a planned operation acts on (data-planned in the HTML)
    name: str | None = None  # the caption's path: relative to its scanned root (name_by_roots); None: file name
    group: int | None = None  # its duplicate group (data-group in the HTML: the app shows the whole group)


@dataclass
class Grid:
    """Items side by side; each item is one card or a pair (removed beside what it loses to)."""

    items: list[list[Card]]


@dataclass
class Paged:
    """A gallery on its own pages: OUT/{slug}-{n}.html, page_size items each, at most max_pages."""

    slug: str
    title: str
    intro: str  # HTML
    total: int  # items in the full list (the pages hold at most page_size * max_pages of them)
    items: list[list[Card]] = field(default_factory=list)
    blocks: list[tuple[int, str]] = field(default_factory=list)  # (item index, HTML) headings between items
    planned: int | None = None  # planned operations among the total, when not every item is one

    @property
    def operations(self) -> int:
        return self.total if self.planned is None else self.planned


@dataclass
class Section:
    """One part of index.html: a title, an anchor and the body (HTML strings and Grids)."""

    anchor: str
    title: str
    body: list[Any] = field(default_factory=list)


@dataclass(frozen=True)
class Limits:
    """How much the report shows: examples per index block, gallery page size and page cap."""

    thumbnails: int
    page_size: int
    max_pages: int

    @property
    def per_gallery(self) -> int:
        return self.page_size * self.max_pages


def shown(n: int, total: int, noun: str = "") -> str:
    """'12 of 210 groups shown', or '12 groups' when nothing is left out (noun: singular)."""
    if noun:
        noun = " " + (noun if total == 1 else "children" if noun == "child" else noun + "s")
    return f"{n:,}{noun}" if n >= total else f"{n:,} of {total:,}{noun} shown"


def first_shown(gallery: Paged, limits: Limits, noun: str) -> str:
    """How many of a gallery's items the index shows (its first `thumbnails`)."""
    return shown(min(len(gallery.items), limits.thumbnails), gallery.total, noun)


def file_name(path: str | None) -> str:
    return os.path.basename(path or "") or "(no path)"


def root_relative(path: str | None, roots: Sequence[str]) -> str | None:
    """path relative to the scanned root it lies under (the longest such root), also for a
    backup of it (BACKUP/run-N/ROOT/REL_PATH); None when it lies under no root."""
    for root in sorted(roots, key=len, reverse=True):
        root = root.rstrip("/")
        if path and root and path.startswith(root + "/"):
            return path[len(root) + 1:]
        before, inside, rel_path = (path or "").partition(f"/{root.lstrip('/')}/")
        if root and inside and before.rsplit("/", 1)[-1].startswith("run-"):
            return rel_path
    return None


def name_by_roots(cards: Sequence[Card], roots: Sequence[str]) -> None:
    """Caption each card with its file's path relative to its scanned root, so two files of the
    same name in different folders are told apart (the full path stays in the tooltip)."""
    for card in cards:
        card.name = root_relative(card.link or card.thumb.path, roots) or card.name


def image_card(row: dict, *, lines: Sequence[str], css: str = "", label: str | None = None,
                turn: str | None = None, prefix: str = "") -> Card:
    """A card for a catalog image; row holds {prefix}image_id, {prefix}version, {prefix}path."""
    image_id, version, path = row[f"{prefix}image_id"], row[f"{prefix}version"], row[f"{prefix}path"]
    thumb = image_thumb(image_id, version if version is not None else 0, path, turn)
    return Card(thumb, [f"image {image_id}", *lines], css, path, label, int(image_id))


# -- the planned operations of each decision, on gallery pages -----------------------------------

def query_rows(catalog: Catalog, sql: str, params: dict[str, Any]) -> tuple[list[dict], int]:
    """(the first rows of a query that has a `total` column (count(*) OVER ()), that total)."""
    rows = catalog.arrow(sql, params).to_pylist()
    return rows, int(rows[0]["total"]) if rows else 0


def inside_folder(path: str | None, folder: str | None) -> bool:
    """Whether path resolves inside folder (a catalog may come from someone else: it names no
    file outside the folders a run recorded)."""
    if not path or not folder:
        return False
    real, base = os.path.realpath(path), os.path.realpath(folder)
    return real == base or real.startswith(base.rstrip(os.sep) + os.sep)
