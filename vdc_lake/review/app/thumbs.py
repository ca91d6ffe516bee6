"""Thumbnails for the app: made once per image id + version (+ turn, size), in a thread pool, cached
in a folder; the file is found from the catalog by id and version and read only where the
confinement rule (fileops.confine.ReadableRoots) allows, never from a path in the URL."""

from __future__ import annotations

import io
import os
import re
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path

from vdc_lake.catalog.connection import Catalog
from vdc_lake.fileops.confine import ReadableRoots
from vdc_lake.fileops.imageops import ROTATIONS
from vdc_lake.review.pages import Card
from vdc_lake.review.thumbnails import PLACEHOLDERS, THUMB_SIZE, make_thumbnail, placeholder_picture

SIZES = (THUMB_SIZE, 512)  # a gallery's cards, the image page
KEY = re.compile(r"(\d+)-(\d+)(?:-(\w+))?")  # thumbnails.image_thumb's keys: ID-VERSION[-TURN]


@lru_cache(maxsize=None)
def placeholder_jpeg(kind: str, size: int = THUMB_SIZE) -> bytes:
    out = io.BytesIO()
    placeholder_picture(kind if kind in PLACEHOLDERS else "missing", size).save(out, "JPEG", quality=85)
    return out.getvalue()


def card_source(card: Card) -> str:
    """The src of a card's picture: /thumb/ID/VERSION[?turn=] for a catalog image, else the
    "outside" placeholder (a backup or an example: the app serves catalog images only)."""
    match = KEY.fullmatch(card.thumb.key)
    if not card.thumb.in_root or match is None or card.thumb.path is None:
        return "/placeholder/outside.jpg"
    image_id, version, turn = match.groups()
    return f"/thumb/{image_id}/{version}" + (f"?turn={turn}" if turn else "")


class ThumbCache:
    """{folder}/ID-VERSION[-TURN]-SIZE.jpg, each made once by a pool of threads (Pillow decodes
    without the GIL); a request for one being made waits for it."""

    def __init__(self, folder: Path, *, workers: int | None = None, max_pixels: int | None = None):
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.max_pixels = max_pixels
        self._pool = ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1),
                                        thread_name_prefix="thumbs")
        self._pending: dict[str, Future] = {}
        self._lock = threading.Lock()

    def name(self, image_id: int, version: int, turn: str | None, size: int) -> Path:
        return self.folder / f"{int(image_id)}-{int(version)}{'-' + turn if turn else ''}-{int(size)}.jpg"

    def make(self, path: str, image_id: int, version: int, turn: str | None, size: int) -> Future:
        """Start (once) the thumbnail of a file already checked against the roots; a Future of
        make_thumbnail's answer ("ok" or a placeholder kind)."""
        dst = self.name(image_id, version, turn, size)
        with self._lock:
            future = self._pending.get(dst.name)
            if future is None:
                if dst.is_file():
                    future = Future()
                    future.set_result("ok")
                else:
                    future = self._pool.submit(make_thumbnail, (path, str(dst), turn), size=size,
                                               max_pixels=self.max_pixels)
                self._pending[dst.name] = future
            return future

    def prefetch(self, catalog: Catalog, cards: list[Card], readable: ReadableRoots) -> None:
        """Start the thumbnails a page will ask for, while it is sent."""
        for card in cards:
            match = KEY.fullmatch(card.thumb.key)
            if card.thumb.in_root and match and card.thumb.path and readable.path_error(card.thumb.path) is None:
                image_id, version, turn = match.groups()
                self.make(card.thumb.path, int(image_id), int(version), turn, THUMB_SIZE)

    def cached(self, image_id: int, version: int, turn: str | None, size: int) -> Path | str | None:
        """The thumbnail when it is made or being made (waits for it), without the catalog; None
        when it was never asked for (then `picture` finds the file from the catalog)."""
        dst = self.name(image_id, version, turn, size)
        with self._lock:
            future = self._pending.get(dst.name)
        if future is None:
            return dst if dst.is_file() else None
        status = future.result()
        return dst if status == "ok" else status

    def picture(self, catalog: Catalog, image_id: int, version: int, turn: str | None, size: int) -> Path | str:
        """The thumbnail file of image_id at version, or the placeholder kind when there is none:
        'missing' (no such image version now), 'outside' (the rule refuses its path),
        'undecodable', 'too_large'."""
        if turn is not None and turn not in ROTATIONS:
            return "missing"
        dst = self.name(image_id, version, turn, size)
        if dst.is_file():
            return dst
        row = catalog.rows("SELECT root, rel_path FROM images WHERE image_id = ? AND version = ? AND present",
                           [int(image_id), int(version)])
        if not row:
            return "missing"
        root, rel_path = row[0]
        if ReadableRoots.of(catalog).error(root, rel_path) is not None:
            return "outside"
        status = self.make(os.path.join(root, rel_path), image_id, version, turn, size).result()
        return dst if status == "ok" else status

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
