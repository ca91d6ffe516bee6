"""Pages computed once per catalog state: a page's HTML is kept with the catalog state it was read
at (access.catalog_state: size, mtime and inode of the file and its WAL) and served again only
while the state is the same, so any write (an action, a CLI command) makes every page be read
afresh on its next request, and an unchanged catalog is never queried twice for the same page.

A page is kept only when it was read from one state from start to end (the state taken before
and after the read agree) and no other command held the writer lock meanwhile (the page would
say so, and must say so again only while it does)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Callable

MAX_PAGES = 512  # pages kept for the current state (a gallery's pages, images); the oldest go first


class PageCache:
    """(state, key) -> a page's HTML bytes (or a value), for the newest state only: a new state empties it."""

    def __init__(self, max_pages: int = MAX_PAGES):
        self.max_pages = max_pages
        self._state: tuple | None = None
        self._pages: OrderedDict[str, bytes] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, state: tuple, key: str) -> bytes | None:
        with self._lock:
            if state != self._state:
                self.misses += 1
                return None
            body = self._pages.get(key)
            if body is None:
                self.misses += 1
                return None
            self._pages.move_to_end(key)
            self.hits += 1
            return body

    def remembered(self, state: tuple, key: str, compute: Callable[[], object]) -> object:
        """A value read from the catalog at this state (an aggregate several pages show), computed
        once per state. The state is the one taken before the catalog was opened: while a reader
        has it open no command can write it, so a value is never older than its state."""
        found = self.get(state, key)
        if found is None:
            found = compute()
            self.put(state, key, found)
        return found

    def clear(self) -> None:
        """Forget every page (what a write to the catalog does to them)."""
        with self._lock:
            self._state = None
            self._pages.clear()

    def put(self, state: tuple, key: str, body: bytes) -> None:
        with self._lock:
            if state != self._state:
                self._state = state
                self._pages.clear()
            self._pages[key] = body
            self._pages.move_to_end(key)
            while len(self._pages) > self.max_pages:
                self._pages.popitem(last=False)

    def page(self, key: str, state_of: Callable[[], tuple], free: Callable[[], bool],
             compute: Callable[[tuple], tuple[int, bytes, object]]) -> tuple[bytes | None, object]:
        """(cached HTML, None) when this key was read at the current state and the catalog is
        free (no other command holds it); else compute(state) -> (status, body, response), kept
        when the status is 200 or 404 (a page that is not there), the state did not move while it
        ran and the catalog is still free; returns (None, response)."""
        before = state_of()
        if free():
            body = self.get(before, key)
            if body is not None:
                return body, None
        status, body, response = compute(before)
        if status in (200, 404) and state_of() == before and free():
            self.put(before, key, body)
        return None, response
