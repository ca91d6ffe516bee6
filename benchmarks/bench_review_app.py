"""Server-side render time of every page of the review app (`vdc-lake review`), p50 and p95.

    python benchmarks/bench_review_app.py --catalog /tmp/bench-scale-N/vdc-lake.duckdb [--repeat 20]

Build the catalog first with `python benchmarks/bench_scale_catalog.py --n N --keep --only
scan,sanitize,import,dedup,cluster,sample` (the issue's target is N = 10^6). Each page is requested
`repeat` times in process through Starlette's TestClient (the app opens the catalog per request, as
it does when served; no network, no browser), the time is the request's wall time. A page is read from
the catalog once per catalog state (review/app/page_cache.py): "first" is a page's first request
at a new state (what every page costs once after any write, an action or a CLI command; measured
`--cold` times, the page cache, the shared aggregates and the catalog's checked state emptied
before each, so each page pays for its own aggregates and the catalog's checks), "warm" the requests after it (`--repeat`).
Thumbnails are not counted (they are made once and cached). Prints a table with the peak RSS of
this process; nothing is asserted.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import time
from pathlib import Path

from starlette.testclient import TestClient

from vdc_lake.catalog.connection import Catalog, forget_verified
from vdc_lake.config.loader import Config
from vdc_lake.review.app.server import create_app
from vdc_lake.review.decisions import DECISIONS

TARGET_MS = 300.0


def pages(catalog_path: Path) -> list[str]:
    """Every page of the app for this catalog: the overview pages, the first and a deep page of
    each gallery, an image, a group, a top cluster and a leaf, the explorer's fragments, label mode."""
    with Catalog(catalog_path, read_only=True) as catalog:
        image = catalog.scalar("SELECT min(image_id) FROM image_files")
        group = catalog.scalar("SELECT min(group_id) FROM dedup_actions() WHERE action = 'delete'")
        clusters = catalog.rows("SELECT level, cluster_id FROM clusters WHERE run_id = (SELECT max(run_id) FROM runs "
                                "WHERE stage = 'cluster') ORDER BY level DESC, cluster_id")
        sets = [r[0] for r in catalog.rows("SELECT DISTINCT set_name FROM newest_runs WHERE stage = 'dedup-report'")]
    urls = ["/", "/counts", "/runs", "/clusters", "/thresholds", "/label", "/near-1.html", "/clusters-1.html",
            f"/image/{image}"]
    urls += [f"/{name}-{page}.html" for name, d in DECISIONS.items() if d.gallery for page in (1, 20)]
    if group is not None:
        urls.append(f"/group/{group}")
    for level, cluster_id in clusters[:1] + clusters[-1:]:  # a top cluster and a leaf
        urls.append(f"/cluster/{level}/{cluster_id}")
    for name in sets:
        urls += [f"/thresholds/dedup?set={name}&value=0.05", f"/thresholds/dedup?set={name}&value=0.3",
                 f"/label/pair?set={name}"]
    return urls


def percentile(times: list[float], q: float) -> float:
    ordered = sorted(times)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--catalog", type=Path, required=True)
    parser.add_argument("--repeat", type=int, default=20, help="warm requests per page")
    parser.add_argument("--cold", type=int, default=3, help="first requests at a new catalog state per page")
    options = parser.parse_args()
    catalog_path = options.catalog.resolve()
    with Catalog(catalog_path, read_only=True) as catalog:
        n = catalog.scalar("SELECT count(*) FROM image_files")
        pairs = catalog.scalar("SELECT count(*) FROM near_duplicate_edges")
    app = create_app(catalog_path, Config.load(search_dir=catalog_path.parent),
                     thumbs_dir=Path(tempfile.mkdtemp(prefix="bench-review-thumbs-")))
    client = TestClient(app, base_url="http://127.0.0.1")
    cache, results = app.state.pages, app.state.results
    print(f"# {catalog_path}: {n:,} present images, {pairs:,} stored pairs; per page {options.cold} first "
          f"requests at a new catalog state (the page cache emptied, as any write empties it) and "
          f"{options.repeat} warm ones")
    print("| page | status | first p50 ms | first max ms | warm p50 ms | warm p95 ms | warm within 300 ms | "
          "first within 300 ms |")
    print("|---|---|---|---|---|---|---|---|", flush=True)
    worst_warm = worst_first = 0.0
    for url in pages(catalog_path):
        first, warm, status = [], [], 0
        for _ in range(options.cold):
            cache.clear()  # what a write to the catalog does to every page
            results.clear()  # and to the aggregates pages share (each page here pays for its own)
            forget_verified()  # and to the catalog's checked file state (connection.py)
            started = time.perf_counter()
            status = client.get(url).status_code
            first.append((time.perf_counter() - started) * 1000)
        for _ in range(options.repeat):
            started = time.perf_counter()
            client.get(url)
            warm.append((time.perf_counter() - started) * 1000)
        worst_warm = max(worst_warm, percentile(warm, 0.95))
        worst_first = max(worst_first, max(first))
        print(f"| {url} | {status} | {statistics.median(first):,.0f} | {max(first):,.0f} | "
              f"{statistics.median(warm):,.0f} | {percentile(warm, 0.95):,.0f} | "
              f"{'yes' if percentile(warm, 0.95) <= TARGET_MS else 'NO'} | "
              f"{'yes' if max(first) <= TARGET_MS else 'NO'} |", flush=True)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2  # Linux: KiB
    print(f"\nworst warm p95 {worst_warm:,.0f} ms, worst first request {worst_first:,.0f} ms (target "
          f"{TARGET_MS:g} ms p95); peak RSS of this process {rss:.2f} GiB")


if __name__ == "__main__":
    main()
