"""Server-side render time of every page of the review app (`vdc-lake review`), p50 and p95.

    python benchmarks/bench_review_app.py --catalog /tmp/bench-scale-N/vdc-lake.duckdb [--repeat 20]

Build the catalog first with `python benchmarks/bench_scale_catalog.py --n N --keep --only
scan,sanitize,import,dedup,cluster,sample` (the issue's target is N = 10^6). Each page is requested
`repeat` times in process through Starlette's TestClient (the app opens the catalog per request, as
it does when served; no network, no browser), after one warm-up request; the time is the request's
wall time ("first": the warm-up request, which for /counts is the only one that computes: the bar
is recomputed only when the catalog changed). Thumbnails are not counted (they are made once and cached). Prints a table with the
peak RSS of this process; nothing is asserted.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import time
from pathlib import Path

from starlette.testclient import TestClient

from vdc_lake.catalog.connection import Catalog
from vdc_lake.config.loader import Config
from vdc_lake.review.app.server import create_app
from vdc_lake.review.decisions import DECISIONS

TARGET_MS = 300.0


def pages(catalog_path: Path) -> list[str]:
    """Every page of the app for this catalog: the overview pages, the first and a deep page of
    each gallery, an image, a group, a cluster, the explorer's fragments, label mode."""
    with Catalog(catalog_path, read_only=True) as catalog:
        image = catalog.scalar("SELECT min(image_id) FROM image_files")
        group = catalog.scalar("SELECT min(group_id) FROM dedup_actions() WHERE action = 'delete'")
        cluster = catalog.rows("SELECT level, cluster_id FROM clusters WHERE run_id = (SELECT max(run_id) FROM runs "
                               "WHERE stage = 'cluster') ORDER BY level DESC, cluster_id LIMIT 1")
        sets = [r[0] for r in catalog.rows("SELECT DISTINCT set_name FROM newest_runs WHERE stage = 'dedup-report'")]
    urls = ["/", "/counts", "/runs", "/clusters", "/thresholds", "/label", "/near-1.html", "/clusters-1.html",
            f"/image/{image}"]
    urls += [f"/{name}-{page}.html" for name, d in DECISIONS.items() if d.gallery for page in (1, 20)]
    if group is not None:
        urls.append(f"/group/{group}")
    if cluster:
        urls.append(f"/cluster/{cluster[0][0]}/{cluster[0][1]}")
    for name in sets:
        urls.append(f"/thresholds/dedup?set={name}&value=0.05")
    return urls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--catalog", type=Path, required=True)
    parser.add_argument("--repeat", type=int, default=20)
    options = parser.parse_args()
    catalog_path = options.catalog.resolve()
    with Catalog(catalog_path, read_only=True) as catalog:
        n = catalog.scalar("SELECT count(*) FROM image_files")
    app = create_app(catalog_path, Config.load(search_dir=catalog_path.parent),
                     thumbs_dir=Path(tempfile.mkdtemp(prefix="bench-review-thumbs-")))
    client = TestClient(app, base_url="http://127.0.0.1")
    print(f"# {catalog_path}: {n:,} present images; {options.repeat} requests per page after a warm-up")
    print("| page | status | first ms | p50 ms | p95 ms | max ms | within 300 ms (p95) |")
    print("|---|---|---|---|---|---|---|", flush=True)
    worst = 0.0
    for url in pages(catalog_path):
        started = time.perf_counter()
        status = client.get(url).status_code
        first = (time.perf_counter() - started) * 1000
        times = []
        for _ in range(options.repeat):
            started = time.perf_counter()
            client.get(url)
            times.append((time.perf_counter() - started) * 1000)
        times.sort()
        p95 = times[min(len(times) - 1, int(round(0.95 * (len(times) - 1))))]
        worst = max(worst, p95)
        print(f"| {url} | {status} | {first:,.0f} | {statistics.median(times):,.0f} | {p95:,.0f} | {times[-1]:,.0f} | "
              f"{'yes' if p95 <= TARGET_MS else 'NO'} |", flush=True)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2  # Linux: KiB
    print(f"\nworst p95 {worst:,.0f} ms (target {TARGET_MS:g}); peak RSS of this process {rss:.2f} GiB")


if __name__ == "__main__":
    main()
