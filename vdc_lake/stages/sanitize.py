"""Sanitize: VDC's validation rules plus a full reduced-scale decode, as findings in the catalog.

Header rules (dimensions, aspect ratio, file size, format, mode, frames, bombs) are one
set-based SQL statement over the facts scan recorded, evaluated on EVERY run for every present
image, so changing a limit (`sanitize --max-aspect-ratio 2`) takes effect at once without
reading a file. The decode check (skipped by --quick) reads each file in a process pool and,
in the same pass, computes the built-in descriptor, so near-exact copy detection costs no
extra read. Decode verdicts (corrupt, truncated, or clean) are cached per image version: later
runs copy them into their own findings instead of decoding again (--recheck decodes again).
A file that was missing or unreadable at decode time gets a 'missing' / 'unreadable' finding
with action 'none' and is decoded again by the next run: only bytes that were read and do not
decode are ever 'corrupt' (delete). A file the catalog names outside the scanned roots (an
edited root or rel_path, a symlink out of every root: confine.ReadableRoots) is never read: an
'outside_root' finding, action 'none'. The pixel limit counts every frame of an animated file.

A verdict belongs to the bytes scan recorded: each file is read once (probe.read_file), hashed,
compared with the version's content_hash and decoded from the same copy of its bytes. A file
whose bytes differ (replaced keeping its size and mtime), or whose stat changed during the read,
gets a 'changed' finding with action 'none', no verdict, and its recorded mtime is cleared so
that the next scan reads it again (and gives it a new version). scan_and_sanitize (`scan
--sanitize`) runs the decode check in the read that hashes a new or changed file for scan: one
read per file for both stages.

Each run writes a sanitize_checks row for every present image and the findings of that run;
actions follow VDC's priority, decided per image by sql/views/20_decisions/sanitize_actions.sql from the
latest check: delete > resize > recompress; findings with action 'none' are recorded only.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from contextlib import contextmanager
from functools import partial
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from vdc_lake.catalog.connection import Catalog
from vdc_lake.kernels.descriptor import builtin_vectors_for
from vdc_lake.kernels.quality import QUALITY_COLUMNS
from vdc_lake.fileops.confine import OUTSIDE_ROOT, ReadableRoots
from vdc_lake.fileops.probe import DECODE_ACTIONS, MULTI_FRAME_FORMATS, UNUSUAL_MODES, DecodeResult, read_file
from vdc_lake.scale.parallel import LazyRows, batched, get_mapper
from vdc_lake.catalog.sets import BUILTIN_SET, register_builtin_set, write_vectors
from vdc_lake.stages.scan import ReadAhead, ScanSummary, scan

COMMIT_EVERY = 5000
# Decode verdicts on bytes that were read: cached per version and carried into later runs.
CACHED_DECODE_RULES = sorted(rule for rule, action in DECODE_ACTIONS.items() if action != "none")
# Header errors that say nothing about the bytes (scan could not read them): action 'none'.
_NO_BYTES = ("t.header_error LIKE 'unreadable%' OR t.header_error LIKE 'broken_symlink%' "
             "OR t.header_error LIKE 'missing%'")


def pixels_sql(alias: str) -> str:
    """SQL: the pixels an images row's file holds, every frame counted (files.frame_pixels)."""
    formats = ", ".join(f"'{f}'" for f in sorted(MULTI_FRAME_FORMATS))
    return (f"({alias}.width::BIGINT * {alias}.height * CASE WHEN {alias}.format IN ({formats}) "
            f"THEN greatest(coalesce({alias}.n_frames, 1), 1) ELSE 1 END)")


_BOMB_DETAIL = (
    f"format('{{:,}} pixels ({{}}x{{}}{{}}) exceed the limit of {{:,}}', {pixels_sql('t')}, t.width, t.height, "
    f"CASE WHEN {pixels_sql('t')} > t.width::BIGINT * t.height THEN format(', {{}} frames', t.n_frames) ELSE '' END, "
    "$max_pixels)")

# Header-fact rules: (rule, action, SQL condition over `t`, SQL detail expression).
HEADER_RULES = [
    ("header_error", "delete", f"t.header_error IS NOT NULL AND NOT ({_NO_BYTES})", "t.header_error"),
    ("unreadable", "none", _NO_BYTES, "t.header_error"),
    ("decompression_bomb", "delete", f"{pixels_sql('t')} > $max_pixels", _BOMB_DETAIL),
    ("format_not_allowed", "delete", "t.format IS NOT NULL AND NOT list_contains($allowed_formats, t.format)",
     "format('format {} is not in the allowed formats', t.format)"),
    ("width_too_small", "delete", "t.width < $min_width", "format('width {}px < {}px', t.width, $min_width)"),
    ("height_too_small", "delete", "t.height < $min_height", "format('height {}px < {}px', t.height, $min_height)"),
    ("width_too_large", "resize", "t.width > $max_width", "format('width {}px > {}px', t.width, $max_width)"),
    ("height_too_large", "resize", "t.height > $max_height", "format('height {}px > {}px', t.height, $max_height)"),
    ("aspect_too_small", "delete", "t.width::DOUBLE / nullif(t.height, 0) < $min_aspect_ratio",
     "format('aspect ratio {:.3f} < {}', t.width::DOUBLE / t.height, $min_aspect_ratio)"),
    ("aspect_too_large", "delete", "t.width::DOUBLE / nullif(t.height, 0) > $max_aspect_ratio",
     "format('aspect ratio {:.3f} > {}', t.width::DOUBLE / t.height, $max_aspect_ratio)"),
    ("file_too_large", "recompress", "t.size_bytes > $max_bytes",
     "format('file is {:.2f} MB > {} MB', t.size_bytes / 1048576.0, $max_file_size_mb)"),
    ("unusual_mode", "none", "list_contains($unusual_modes, t.mode) OR (t.mode = 'P' AND t.has_transparency)",
     "format('mode {}{}', t.mode, CASE WHEN t.has_transparency THEN ' with transparency' ELSE '' END)"),
    ("animated", "none", "t.n_frames > 1", "format('{} frames; only the first is used for training', t.n_frames)"),
    ("exif_orientation", "none", "t.exif_orientation IS NOT NULL AND t.exif_orientation <> 1",
     "format('EXIF orientation {}: pixels are stored rotated/flipped', t.exif_orientation)"),
]


@dataclass
class SanitizeSummary:
    run_id: int
    checked: int = 0       # present images whose header facts were judged by this run's rules
    decoded: int = 0       # images decoded by this run
    cached: int = 0        # images whose decode verdict was taken from an earlier run
    findings: int = 0
    images_with_findings: int = 0
    descriptors: int = 0
    changed: int = 0       # files whose bytes were not those scan recorded: no verdict, read by the next scan


def _rules_sql() -> str:
    parts = []
    for rule, action, condition, detail in HEADER_RULES:
        rule_expr = "split_part(t.header_error, ':', 1)" if rule in ("header_error", "unreadable") else f"'{rule}'"
        detail_expr = (
            "trim(substr(t.header_error, strpos(t.header_error, ':') + 1))"
            if rule in ("header_error", "unreadable") else detail
        )
        parts.append(
            f"SELECT $run_id AS run_id, t.image_id, t.version, {rule_expr} AS rule, {detail_expr} AS detail, "
            f"'{action}' AS action FROM images t WHERE t.present AND ({condition})"
        )
    return "INSERT INTO findings BY NAME " + "\nUNION ALL\n".join(parts)


def _cached_verdicts(catalog: Catalog) -> pa.Table:
    """(image_id, run_id) of present images whose latest check (run_id) holds a decode verdict
    for their current version: its corrupt/truncated findings stand, no need to decode again.
    A legacy run recorded an I/O error (errno in the detail) as 'corrupt': no verdict."""
    rules = ", ".join(f"'{r}'" for r in CACHED_DECODE_RULES)
    return catalog.arrow(
        f"""
        WITH latest AS (
            SELECT image_id, version, max(run_id) AS run_id, arg_max(decoded, run_id) AS decoded
            FROM sanitize_checks GROUP BY image_id, version
        )
        SELECT l.image_id, l.run_id
        FROM latest l JOIN images i ON i.image_id = l.image_id AND i.version = l.version AND i.present
        WHERE l.decoded AND NOT EXISTS (
            SELECT 1 FROM findings f WHERE f.run_id = l.run_id AND f.image_id = l.image_id
              AND f.version = l.version AND f.rule IN ({rules}) AND f.detail LIKE '%[Errno %')
        """
    )


def _decode_targets(catalog: Catalog, cached: pa.Table, *, max_pixels: int) -> pa.Table:
    """Present images to decode: readable headers within the pixel limit (every frame counted), not
    in `cached`."""
    with catalog.registered("sanitize_cached", cached):
        return catalog.arrow(
            f"""
            SELECT i.image_id, i.version, i.root, i.rel_path, i.content_hash,
                   EXISTS (SELECT 1 FROM embeddings e WHERE e.set_name = '{BUILTIN_SET}'
                           AND e.image_id = i.image_id AND e.version = i.version) AS has_descriptor
            FROM images i
            WHERE i.present AND i.header_error IS NULL AND coalesce({pixels_sql("i")}, 0) <= ?
              AND NOT EXISTS (SELECT 1 FROM sanitize_cached c WHERE c.image_id = i.image_id)
            ORDER BY i.image_id
            """,
            [int(max_pixels)],
        )


def _header_findings(catalog: Catalog, run_id: int, rules: dict[str, Any]) -> int:
    params = {
        "run_id": run_id,
        "max_pixels": int(rules["max_pixels"]),
        "allowed_formats": [f.upper() for f in rules["allowed_formats"]],
        "min_width": int(rules["min_width"]), "min_height": int(rules["min_height"]),
        "max_width": int(rules["max_width"]), "max_height": int(rules["max_height"]),
        "min_aspect_ratio": float(rules["min_aspect_ratio"]), "max_aspect_ratio": float(rules["max_aspect_ratio"]),
        "max_bytes": int(float(rules["max_file_size_mb"]) * 1024 * 1024),
        "max_file_size_mb": float(rules["max_file_size_mb"]),
        "unusual_modes": sorted(UNUSUAL_MODES),
    }
    return int(catalog.execute(_rules_sql(), params)[0][0])


def _record_checks(catalog: Catalog, run_id: int, cached: pa.Table, decoded: pa.Table) -> tuple[int, int]:
    """Carry the cached decode verdicts' findings into this run and write a check row for every
    present image. cached: (image_id, run_id) from _cached_verdicts; decoded: (image_id, verdict)
    of the images decoded by this run (verdict false where the file could not be read).
    Returns (checked images, carried findings)."""
    rules = ", ".join(f"'{r}'" for r in CACHED_DECODE_RULES)
    with catalog.registered("sanitize_cached", cached), catalog.registered("sanitize_decoded", decoded), \
            catalog.transaction():
        carried = catalog.execute(
            f"""
            INSERT INTO findings BY NAME
            SELECT ? AS run_id, f.image_id, f.version, f.rule, f.detail, f.action
            FROM sanitize_cached c
            JOIN images i ON i.image_id = c.image_id
            JOIN findings f ON f.run_id = c.run_id AND f.image_id = c.image_id AND f.version = i.version
            WHERE f.rule IN ({rules})
            """,
            [run_id],
        )[0][0]
        checked = catalog.execute(
            """
            INSERT INTO sanitize_checks
            SELECT ?, i.image_id, i.version, coalesce(d.verdict, c.image_id IS NOT NULL) AS decoded
            FROM images i
            LEFT JOIN sanitize_decoded d ON d.image_id = i.image_id
            LEFT JOIN sanitize_cached c ON c.image_id = i.image_id
            WHERE i.present
            """,
            [run_id],
        )[0][0]
    return int(checked), int(carried)


CHANGED = ("changed: the file's bytes are not those scan recorded (it changed since the scan, or while "
           "being decoded); no verdict: run `vdc-lake scan` (it reads this file again), then sanitize")


def _decode_one(item: tuple[str, int, bool, str | None], *, max_pixels: int, whole_max_bytes: int) -> DecodeResult:
    """Decode check of (path, version, with_descriptor, content_hash) in one read of the file
    (probe.read_file: hashed and decoded from one copy of its bytes), on the bytes scan recorded
    only: a file whose hash differs, or that changes during the read (its stat before and
    after differ), gives a CHANGED error. The version is unused here but keys the Ray backend's
    staging (a hash of the items), so a changed file is never taken from it."""
    path, _, with_descriptor, expected = item
    read = read_file(path, decode=True, max_pixels=max_pixels, with_descriptor=with_descriptor,
                     decode_if=None if expected is None else (lambda digest: digest == expected),
                     whole_max_bytes=whole_max_bytes)
    if read.facts["content_hash"] is None and read.decode is not None:
        return read.decode  # missing or unreadable: no bytes to judge
    if read.decode is None or read.changed:
        return DecodeResult(CHANGED, None)
    return read.decode


def _write_decode_batch(catalog: Catalog, run_id: int, rows: pa.Table, results: list, summary: SanitizeSummary
                        ) -> None:
    """Findings, descriptors and quality values of decoded `rows` (a slice of the targets), one result each."""
    ids, versions = rows.column("image_id").to_numpy(), rows.column("version").to_numpy()
    bad = [(i, r.error.split(":", 1)) for i, r in enumerate(results) if r.error]
    good = [(i, r.descriptor) for i, r in enumerate(results) if r.descriptor is not None]
    rated = [(i, r.quality) for i, r in enumerate(results) if r.error is None and r.quality is not None]
    changed = [i for i, (rule, _) in bad if rule == "changed"]
    with catalog.transaction():
        if changed:  # the next scan reads these files again (mtime NULL never matches the listing)
            catalog.execute("UPDATE images SET mtime_ns = NULL WHERE list_contains(?, image_id)",
                            [[int(ids[i]) for i in changed]])
        if bad:
            catalog.insert_arrow("findings", pa.table({
                "run_id": pa.array([run_id] * len(bad), pa.int64()),
                "image_id": pa.array([ids[i] for i, _ in bad], pa.int64()),
                "version": pa.array([versions[i] for i, _ in bad], pa.int32()),
                "rule": [rule for _, (rule, _) in bad],
                "detail": [detail.strip() for _, (_, detail) in bad],
                "action": [DECODE_ACTIONS.get(rule, "delete") for _, (rule, _) in bad],
            }))
        if good:
            dim = register_builtin_set(catalog, run_id)  # an older set: opaque images only (check_legacy_builtin_set)
            at = np.array([i for i, _ in good])
            write_vectors(catalog, "embeddings", BUILTIN_SET, run_id, ids[at], versions[at],
                          builtin_vectors_for(dim, np.stack([d for _, d in good])))
        if rated:
            catalog.insert_arrow("image_quality", pa.table({
                "run_id": pa.array([run_id] * len(rated), pa.int64()),
                "image_id": pa.array([ids[i] for i, _ in rated], pa.int64()),
                "version": pa.array([versions[i] for i, _ in rated], pa.int32()),
                **{column: pa.array([q[k] for _, q in rated], pa.float64())
                   for k, column in enumerate(QUALITY_COLUMNS)}}))
    summary.findings += len(bad)
    summary.changed += len(changed)
    summary.decoded += len(results)
    summary.descriptors += len(good)


_EMPTY_CACHED = pa.table({"image_id": pa.array([], pa.int64()), "run_id": pa.array([], pa.int64())})
_EMPTY_DECODED = pa.table({"image_id": pa.array([], pa.int64()), "verdict": pa.array([], pa.bool_())})


def _is_verdict(error: str | None) -> bool:
    """Did the decode judge the bytes (clean, corrupt, truncated), rather than fail to read them?"""
    return error is None or error.split(":", 1)[0] in CACHED_DECODE_RULES


def _refusals(catalog: Catalog, targets: pa.Table) -> list[str | None]:
    """Per target, why its file may not be read (an OUTSIDE_ROOT error: confine.ReadableRoots), or None."""
    readable = ReadableRoots.of(catalog)
    refusals = []
    for root, rel_path in zip(targets.column("root").to_pylist(), targets.column("rel_path").to_pylist()):
        why = readable.error(root, rel_path)
        refusals.append(None if why is None else f"{OUTSIDE_ROOT}: {why}")
    return refusals


def _with_refusals(refusals: list[str | None], decoded: Iterable[DecodeResult]) -> Iterator[DecodeResult]:
    """The decode results in target order: a refusal's own result, else the next decoded one."""
    decoded = iter(decoded)
    for refusal in refusals:
        yield DecodeResult(refusal, None) if refusal is not None else next(decoded)


def _decode_pass(catalog: Catalog, run_id: int, targets: pa.Table, rules: dict, summary, workers, quiet,
                 backend: str = "local") -> pa.Table:
    """Decode targets, writing findings and descriptors in batches; returns (image_id, verdict).
    A file outside the scanned roots is not read: an OUTSIDE_ROOT finding (action none)."""
    max_pixels = int(rules["max_pixels"])
    want_descriptor = bool(rules["builtin_descriptor"])
    refusals = _refusals(catalog, targets)
    readable = targets.filter(pa.array([r is None for r in refusals], pa.bool_()))
    items = LazyRows(readable, lambda r: (os.path.join(r["root"], r["rel_path"]), r["version"],
                                          want_descriptor and not r["has_descriptor"], r["content_hash"]))
    catalog.release()
    mapper = get_mapper(backend, catalog_path=catalog.path)
    decoded = mapper(partial(_decode_one, max_pixels=max_pixels, whole_max_bytes=whole_max_bytes(rules)), items,
                     workers=workers, desc="decode", quiet=quiet)
    results = _with_refusals(refusals, decoded)
    verdicts = []
    done = 0
    for batch in batched(results, COMMIT_EVERY):
        _write_decode_batch(catalog, run_id, targets.slice(done, len(batch)), batch, summary)
        done += len(batch)
        verdicts.extend(_is_verdict(r.error) for r in batch)
        catalog.release()
    return pa.table({"image_id": targets.column("image_id"), "verdict": pa.array(verdicts, pa.bool_())})


def whole_max_bytes(rules: dict[str, Any]) -> int:
    """Files up to this many bytes are read into memory whole (sanitize.max_file_size_mb: a file
    over it is a `file_too_large` finding anyway); bigger ones are streamed."""
    return int(float(rules["max_file_size_mb"]) * 1024 * 1024)


def sanitize(
    catalog: Catalog,
    rules: dict[str, Any],
    *,
    quick: bool = False,
    recheck: bool = False,
    workers: int | None = None,
    quiet: bool = False,
    backend: str = "local",
) -> SanitizeSummary:
    """Judge every present image by `rules` (header facts, every run) and decode the images
    without a cached decode verdict for their version; write findings and checks.

    `rules` is the effective [sanitize] config section. `quick` decodes nothing (cached
    verdicts still count); `recheck` decodes every image again.
    """
    return _sanitize(catalog, rules, quick=quick, recheck=recheck, workers=workers, quiet=quiet, backend=backend)


def _sanitize(catalog: Catalog, rules: dict[str, Any], *, quick: bool = False, recheck: bool = False,
              workers: int | None = None, quiet: bool = False, backend: str = "local",
              with_scan: _DecodedWithScan | None = None) -> SanitizeSummary:
    """sanitize(); with_scan: the decode verdicts scan_and_sanitize's scan wrote under its run."""
    params = dict(rules, quick=quick, recheck=recheck)
    begun = with_scan.run_id if with_scan is not None else None
    with (_continued_run(catalog, begun) if begun is not None else catalog.run("sanitize", params)) as run_id:
        summary = with_scan.summary if begun is not None else SanitizeSummary(run_id)
        with catalog.transaction():
            summary.findings += _header_findings(catalog, run_id, rules)
        decode = not quick and rules.get("check_corruption", True)
        cached = _cached_verdicts(catalog) if not (decode and recheck) else _EMPTY_CACHED
        decoded = with_scan.verdicts(catalog) if begun is not None else _EMPTY_DECODED
        if decode:
            targets = _decode_targets(catalog, cached, max_pixels=int(rules["max_pixels"]))
            if decoded.num_rows:  # decoded in the read that scan hashed them in
                done = decoded.column("image_id").combine_chunks()
                targets = targets.filter(pc.invert(pc.is_in(targets.column("image_id"), value_set=done)))
            if targets.num_rows:
                now = _decode_pass(catalog, run_id, targets, rules, summary, workers, quiet, backend)
                decoded = pa.concat_tables([decoded, now.cast(decoded.schema)]) if decoded.num_rows else now
        summary.cached = cached.num_rows
        summary.checked, carried = _record_checks(catalog, run_id, cached, decoded)
        summary.findings += carried
        summary.images_with_findings = int(catalog.scalar(
            "SELECT count(DISTINCT image_id) FROM findings WHERE run_id = ?", [run_id]))
        catalog.finish_run(run_id, summary=asdict(summary))
    return summary


@contextmanager
def _continued_run(catalog: Catalog, run_id: int):
    """Catalog.run for a run begun earlier (by scan_and_sanitize's scan): failed if the body raises."""
    try:
        yield run_id
    except BaseException as e:
        _fail_run(catalog, run_id, e)
        raise


def _fail_run(catalog: Catalog, run_id: int, e: BaseException) -> None:
    try:
        catalog.finish_run(run_id, status="failed", error=f"{type(e).__name__}: {e}")
    except Exception:  # noqa: BLE001 - e.g. the disk is full: the next writer marks the run interrupted
        pass


class _DecodedWithScan:
    """The sanitize run of scan_and_sanitize while its scan reads the files: each batch of files
    whose decode check came with the read that hashed them gets its findings and descriptors
    written under this run (begun at the first such batch, so after the scan run) once scan has
    written their facts; the decode pass then skips them."""

    def __init__(self, rules: dict[str, Any]):
        self.rules = rules
        self.run_id: int | None = None
        self.summary: SanitizeSummary | None = None
        self._ids: list[pa.Array] = []
        self._verdicts: list[pa.Array] = []

    def read_ahead(self) -> ReadAhead:
        return ReadAhead(max_pixels=int(self.rules["max_pixels"]),
                         with_descriptor=bool(self.rules["builtin_descriptor"]), on_batch=self.write)

    def write(self, catalog: Catalog, files: pa.Table, results: Sequence[DecodeResult]) -> None:
        """files: (root, rel_path, content_hash) whose facts scan just wrote, one result each."""
        if self.run_id is None:
            self.run_id = catalog.begin_run("sanitize", dict(self.rules, quick=False, recheck=False, with_scan=True))
            self.summary = SanitizeSummary(self.run_id)
        keyed = files.append_column("k", pa.array(range(files.num_rows), pa.int64()))
        with catalog.registered("scan_decoded", keyed):
            rows = catalog.arrow(
                """SELECT d.k, i.image_id, i.version FROM scan_decoded d
                   JOIN images i ON i.root = d.root AND i.rel_path = d.rel_path AND i.content_hash = d.content_hash
                   WHERE i.present ORDER BY d.k""")
        batch = [results[k] for k in rows.column("k").to_pylist()]
        _write_decode_batch(catalog, self.run_id, rows, batch, self.summary)
        self._ids.append(rows.column("image_id").combine_chunks().cast(pa.int64()))
        self._verdicts.append(pa.array([_is_verdict(r.error) for r in batch], pa.bool_()))

    def verdicts(self, catalog: Catalog) -> pa.Table:
        """(image_id, verdict) of the images decoded with the scan that are still there (a file
        scan paired with a vanished one as moved has its row deleted)."""
        if not self._ids:
            return _EMPTY_DECODED
        decoded = pa.table({"image_id": pa.concat_arrays(self._ids), "verdict": pa.concat_arrays(self._verdicts)})
        with catalog.registered("scan_decoded", decoded):
            found = catalog.arrow("SELECT d.image_id, d.verdict FROM scan_decoded d WHERE EXISTS "
                                  "(SELECT 1 FROM images i WHERE i.image_id = d.image_id AND i.present)")
        return found.cast(_EMPTY_DECODED.schema)

    def fail(self, catalog: Catalog, e: BaseException) -> None:
        if self.run_id is not None:
            _fail_run(catalog, self.run_id, e)


def scan_and_sanitize(catalog: Catalog, roots: Sequence[str | os.PathLike], *, extensions: Sequence[str],
                      rules: dict[str, Any], workers: int | None = None, quiet: bool = False,
                      backend: str = "local") -> tuple[ScanSummary, SanitizeSummary]:
    """scan(roots) then sanitize(rules) (a full one: --quick and --recheck are sanitize's own),
    reading each new or changed file once: the read that hashes it for scan also parses its
    header and runs sanitize's decode check (and descriptor) on the same bytes. Two runs are
    recorded, scan's and sanitize's, with what the two commands one after the other record."""
    if quick_only(rules):
        return (scan(catalog, roots, extensions=extensions, workers=workers, quiet=quiet, backend=backend,
                     whole_max_bytes=whole_max_bytes(rules)),
                sanitize(catalog, rules, workers=workers, quiet=quiet, backend=backend))
    with_scan = _DecodedWithScan(rules)
    try:
        scanned = scan(catalog, roots, extensions=extensions, workers=workers, quiet=quiet, backend=backend,
                       whole_max_bytes=whole_max_bytes(rules), read_ahead=with_scan.read_ahead())
    except BaseException as e:
        with_scan.fail(catalog, e)
        raise
    return scanned, _sanitize(catalog, rules, workers=workers, quiet=quiet, backend=backend, with_scan=with_scan)


def quick_only(rules: dict[str, Any]) -> bool:
    """Whether the effective [sanitize] section turns the decode check off (check_corruption false)."""
    return not rules.get("check_corruption", True)
