"""The WebDataset format of an export: tar shards of KEY.<ext> (the original bytes, verified) and
KEY.json (its manifest row), each shard written under a hidden name and renamed when complete."""

from __future__ import annotations

import io
import json
import os
import re
import stat
import tarfile
from pathlib import Path
from typing import Any

import xxhash

from vdc_lake.effects.export_rows import CATALOG_MTIME, TARGET
from vdc_lake.effects.export_tree import not_a_file, unreadable, unverifiable
from vdc_lake.errors import disk_full_error
from vdc_lake.fileops.confine import ReadableRoots

_SAFE_EXTENSION = re.compile(r"[a-z0-9]{1,10}")


def _tar_size(n_bytes: int) -> int:
    """Bytes a member takes in a tar: a 512-byte header plus the data padded to 512 bytes."""
    return 512 + (n_bytes + 511) // 512 * 512


class _ShardWriter:
    """Writes shard-000000.tar, ... of at most about `limit` bytes each (one sample may exceed it).

    A shard is written as a hidden .part file and renamed when complete.
    """

    def __init__(self, to_dir: Path, limit: int):
        self.to_dir, self.limit = to_dir, limit
        self.count = 0  # shards started
        self.size = 0   # bytes in the open shard
        self._tar: tarfile.TarFile | None = None

    @staticmethod
    def shard_name(index: int) -> str:
        return f"shard-{index:06d}.tar"

    def add(self, key: str, ext: str, data: bytes, record: dict[str, Any]) -> None:
        """Add KEY.ext and KEY.json; the record gets `export_path` (its shard) before it is written."""
        record["export_path"] = self.shard_name(self.count)  # every name has the same length
        needed = _tar_size(len(data)) + _tar_size(len(json.dumps(record, sort_keys=True, default=str)))
        if self._tar is None or (self.size > 0 and self.size + needed > self.limit):
            self.close()
            self._tar = tarfile.open(self._part(self.count), "w", format=tarfile.PAX_FORMAT)
            self.count += 1
            self.size = 0
        record["export_path"] = self.shard_name(self.count - 1)
        self._member(f"{key}.{ext}", data)
        self._member(f"{key}.json", json.dumps(record, sort_keys=True, default=str).encode())
        self.size += needed

    def _part(self, index: int) -> Path:
        return self.to_dir / f".{self.shard_name(index)}.part"

    def _member(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = len(data), 0o444, 0
        self._tar.addfile(info, io.BytesIO(data))

    def close(self) -> None:
        if self._tar is not None:
            self._tar.close()
            os.replace(self._part(self.count - 1), self.to_dir / self.shard_name(self.count - 1))
            self._tar = None

    def abort(self) -> None:
        """Drop the open shard (after an error): its .part file goes, finished shards stay."""
        if self._tar is not None:
            tar, self._tar = self._tar, None
            try:
                tar.close()
            except OSError:
                pass  # e.g. the disk is full; the file is removed below anyway
            self._part(self.count - 1).unlink(missing_ok=True)


def _read_verified(row: dict) -> tuple[bytes | None, str | None]:
    """The file's bytes, or an error when it cannot be read or no longer matches the catalog."""
    if row["content_hash"] is None:
        return None, unverifiable(row["path"])
    try:
        # O_NONBLOCK: a named pipe put in a file's place must not hang the export (it is refused below)
        fd = os.open(row["path"], os.O_RDONLY | os.O_NONBLOCK)
        with open(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                return None, not_a_file(row["path"])
            data = f.read()
    except FileNotFoundError:
        return None, f"{row['path']}: the original is gone; run `vdc-lake scan` again"
    except OSError as e:
        return None, f"{row['path']}: {e.strerror or e}"
    if xxhash.xxh3_128_hexdigest(data) != row["content_hash"]:
        return None, f"{row['path']}: changed since the last scan; run `vdc-lake scan` and export again"
    return data, None


def _extension(rel_path: str, fmt: str | None) -> str:
    """The member's extension: the file's, else its format's; only [a-z0-9]{1,10} (a tar member
    name from an edited catalog must not carry '/' or '..') and never 'json' (KEY.json is the
    sample's record), else 'bin'."""
    for ext in (os.path.splitext(rel_path)[1].lower().lstrip("."), (fmt or "").lower()):
        if _SAFE_EXTENSION.fullmatch(ext) and ext != "json":
            return ext
    return "bin"


class WebDatasetWriter:
    """Reads each image (one ReadableRoots allows) in a worker thread; the shards are written in
    order by the caller's thread."""

    def __init__(self, to_dir: Path, shard_bytes: int, readable: ReadableRoots):
        self.shards = _ShardWriter(to_dir, shard_bytes)
        self.readable = readable

    def write(self, row: dict) -> tuple[bytes | None, str | None]:
        if (refused := unreadable(row, self.readable)) is not None:
            return None, refused
        return _read_verified(row)

    def finish_row(self, row: dict, data: bytes) -> str:
        record = {k: v for k, v in row.items() if k not in ("export_path", CATALOG_MTIME, TARGET)}
        try:
            self.shards.add(row["key"], _extension(row["rel_path"], row["format"]), data, record)
        except OSError as e:
            e.filename = e.filename or str(self.shards.to_dir / record.get("export_path", ""))  # tarfile names none
            full = disk_full_error(e)
            if full is not None:
                raise full from e
            raise
        return record["export_path"]

    def close(self) -> None:
        self.shards.close()

    def abort(self) -> None:
        self.shards.abort()
