"""Progress bars that `--quiet` silences: a tqdm bar on a terminal, plain periodic lines in a piped log."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from tqdm import tqdm

# When stderr is not a terminal (a piped log, CI), progress is one plain line at most this often.
LOG_PROGRESS_EVERY_S = 10.0


class LogProgress:
    """tqdm's interface as used here (update, set_description, total, n, refresh), for piped
    output: no carriage returns, one line at most every LOG_PROGRESS_EVERY_S seconds, and none
    for work that ends sooner than that."""

    def __init__(self, total: int | None, desc: str, unit: str, stream: TextIO,
                 every_s: float = LOG_PROGRESS_EVERY_S):
        self.total, self.n, self.desc, self.unit = total, 0, desc, unit
        self._stream, self._every_s = stream, every_s
        self._start = self._last = time.monotonic()

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        self.refresh()

    def set_description(self, desc: str, refresh: bool = True) -> None:
        self.desc = desc
        if refresh:
            self.refresh()

    def refresh(self) -> None:
        now = time.monotonic()
        if now - self._last >= self._every_s:
            self._last = now
            self._write(now)

    def close(self) -> None:
        now = time.monotonic()
        if now - self._start >= self._every_s:
            self._write(now)

    def _write(self, now: float) -> None:
        elapsed = now - self._start
        of_total = f"/{self.total}" if self.total else ""
        rate = f", {self.n / elapsed:.1f} {self.unit}/s" if elapsed > 0 and self.n else ""
        print(f"{self.desc}: {self.n}{of_total} {self.unit}{rate}, {elapsed:.0f} s", file=self._stream, flush=True)


def progress_bar(total: int | None, desc: str, *, unit: str = "file", quiet: bool = False) -> tqdm | LogProgress:
    """A tqdm bar on a terminal; plain periodic lines when stderr is piped; nothing when quiet."""
    if not quiet and not sys.stderr.isatty():
        return LogProgress(total, desc, unit, sys.stderr)
    return tqdm(total=total, desc=desc, unit=unit, disable=quiet, dynamic_ncols=True, leave=False)
