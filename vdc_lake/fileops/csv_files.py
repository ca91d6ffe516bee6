"""CSV files a user fills in and gives back (override lists, pair labels): read with one error
line for every way such a file goes wrong, and long lists of bad rows shortened."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

SHOWN_IN_ERRORS = 10  # names listed in one error line; the rest are counted


def listed(items: Sequence[str]) -> str:
    """The first SHOWN_IN_ERRORS items, comma-separated, and how many more."""
    shown = ", ".join(items[:SHOWN_IN_ERRORS])
    return shown + (f" and {len(items) - SHOWN_IN_ERRORS} more" if len(items) > SHOWN_IN_ERRORS else "")


def csv_rows(path: Path, required: Sequence[str], error: type[Exception], columns: str) -> list[tuple[int, dict]]:
    """(line number, row) of a UTF-8 CSV file (a BOM allowed) whose header names every column in
    `required` (names compared stripped and lower-case; rows keyed by those names). Raises
    error(one line naming the fix) when the file is not UTF-8, not CSV, or lacks a column;
    `columns` says what the file should hold (e.g. "the columns image, action, reason")."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = [(name or "").strip().lower() for name in (reader.fieldnames or [])]
            missing = [c for c in required if c not in header]
            if missing:
                raise error(f"{path}: the header row lacks the column(s) {', '.join(missing)}; {columns}")
            reader.fieldnames = header
            return [(reader.line_num, row) for row in reader]
    except UnicodeDecodeError as e:
        raise error(f"{path} is not UTF-8 text ({e.reason}); save the CSV as UTF-8") from e
    except csv.Error as e:
        raise error(f"{path} is not a readable CSV file ({e}); fix the file and import it again") from e
