"""The review app: routes, the catalog opened per request, and `serve` (uvicorn)."""

from __future__ import annotations

import functools
import secrets
import tempfile
from pathlib import Path
from typing import Any, Callable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from vdc_lake.errors import CatalogLockedError, VdcLakeError
from vdc_lake.review.app import actions, explorer, gallery_pages, image_page, overview, web
from vdc_lake.review.app.access import catalog_state, lock_holder, reading
from vdc_lake.review.app.guard import Guard
from vdc_lake.review.app.options import AppOptions, accepted_hosts
from vdc_lake.review.app.page_cache import PageCache
from vdc_lake.review.app.thumbs import SIZES, ThumbCache, placeholder_jpeg
from vdc_lake.review.thumbnails import THUMB_SIZE

IMMUTABLE = {"Cache-Control": "private, max-age=31536000, immutable"}  # a thumbnail is keyed by id + version


def error_page(request: Request, error: Exception) -> HTMLResponse:
    """A page that says what went wrong in one line (503 while another command holds the catalog)."""
    locked = isinstance(error, CatalogLockedError)
    holder = lock_holder(request.app.state.options.catalog_path) if locked else None
    message = (f"the catalog is in use by {holder}; this page shows again once it has finished (reload)"
               if holder else str(error))
    response = web.page(request, "error.html", title="Not available", message=message)
    response.status_code = 503 if locked else 404
    return response


def reader(handler: Callable[..., Response]) -> Callable[[Request], Response]:
    """A page handler(request, catalog, **path params) with the catalog opened read-only for it;
    its HTML is read once per catalog state (page_cache), so a page asked again before anything
    wrote the catalog is served without opening it."""
    @functools.wraps(handler)
    def endpoint(request: Request) -> Response:
        options: AppOptions = request.app.state.options
        cache: PageCache = request.app.state.pages
        key = request.url.path + ("?" + request.url.query if request.url.query else "")

        def compute(state: tuple) -> tuple[int, bytes, Response]:
            request.state.catalog_state = state  # what web.remembered keys the page's aggregates by
            response = _read(handler, request, options)
            return response.status_code, bytes(response.body), response

        body, response = cache.page(key, lambda: catalog_state(options.catalog_path),
                                    lambda: lock_holder(options.catalog_path) is None, compute)
        return HTMLResponse(body) if body is not None else response
    return endpoint


def _read(handler: Callable[..., Response], request: Request, options: AppOptions) -> Response:
    try:
        with reading(options.catalog_path, options.config.values["scale"], options.lock_wait) as catalog:
            return handler(request, catalog, **request.path_params)
    except VdcLakeError as e:
        return error_page(request, e)


def counts(request: Request) -> Response:
    """The counts bar, which every page asks for (read once per catalog state, as every page)."""
    return reader(overview.counts_fragment)(request)


def thumb(request: Request) -> Response:
    options: AppOptions = request.app.state.options
    cache: ThumbCache = request.app.state.thumbs
    image_id, version = request.path_params["image_id"], request.path_params["version"]
    turn = request.query_params.get("turn") or None
    asked = request.query_params.get("size", "")
    size = int(asked) if asked.isdigit() and int(asked) in SIZES else THUMB_SIZE
    found = cache.cached(image_id, version, turn, size)
    if found is None:
        try:
            with reading(options.catalog_path, options.config.values["scale"], options.lock_wait) as catalog:
                found = cache.picture(catalog, image_id, version, turn, size)
        except VdcLakeError:
            found = "missing"
    if isinstance(found, Path):
        return FileResponse(found, media_type="image/jpeg", headers=IMMUTABLE)
    return Response(placeholder_jpeg(found, size), media_type="image/jpeg")


def placeholder(request: Request) -> Response:
    return Response(placeholder_jpeg(request.path_params["kind"]), media_type="image/jpeg", headers=IMMUTABLE)


ROUTES = [
    Route("/", reader(overview.funnel_page)),
    Route("/counts", counts),
    Route("/runs", reader(overview.runs_page)),
    Route("/clusters", reader(gallery_pages.clusters_page)),
    Route("/cluster/{level:int}/{cluster_id:int}", reader(gallery_pages.cluster_page)),
    Route("/group/{group_id:int}", reader(gallery_pages.group_page)),
    Route("/image/{image_id:int}", reader(image_page.image_page)),
    Route("/thresholds", reader(explorer.thresholds_page)),
    Route("/thresholds/{decision}", reader(explorer.threshold_fragment)),
    Route("/label", reader(explorer.label_page)),
    Route("/label/pair", reader(explorer.label_fragment)),
    Route("/thumb/{image_id:int}/{version:int}", thumb),
    Route("/placeholder/{kind}.jpg", placeholder),
    Route("/act", actions.act, methods=["POST"]),
    Route("/undo", actions.undo, methods=["POST"]),
    Route("/label", actions.label, methods=["POST"]),
    Mount("/static", StaticFiles(directory=web.STATIC), name="static"),
    Route("/{slug}-{page:int}.html", reader(gallery_pages.gallery_page)),  # the static report's page names
]


def create_app(catalog_path: Path, config: Any, *, host: str = "127.0.0.1", port: int = 0,
               token: str | None = None, thumbs_dir: Path | None = None, lock_wait: float | None = None) -> Any:
    """The ASGI app over one catalog (wrapped in the Guard). token: required on every request (a
    server reachable from other hosts); thumbs_dir: the thumbnail cache (None: a new temporary
    folder); lock_wait: seconds an action waits for the writer lock (None: [review] lock_wait_seconds)."""
    options = AppOptions(Path(catalog_path).resolve(), config,
                         Path(thumbs_dir) if thumbs_dir else Path(tempfile.mkdtemp(prefix="vdc-lake-thumbs-")),
                         accepted_hosts(host, port),
                         float(lock_wait if lock_wait is not None else config.section("review")["lock_wait_seconds"]),
                         token)
    app = Starlette(routes=ROUTES)
    app.state.options = options
    app.state.thumbs = ThumbCache(options.thumbs_dir, max_pixels=int(config.section("sanitize")["max_pixels"]))
    app.state.pages = PageCache()  # every page's HTML at the newest catalog state
    app.state.results = PageCache()  # aggregates several pages show (web.remembered), at the newest state
    app.state.undo = []  # the override runs this server wrote, newest last (what Undo takes back)
    guarded = Guard(app, options)
    guarded.state = app.state  # tests reach the options through the outer app
    return guarded


def new_token() -> str:
    return secrets.token_urlsafe(24)


def serve(catalog_path: Path, config: Any, *, host: str, port: int, allow_remote: bool,
          thumbs_dir: Path | None = None, echo: Callable[[str], None] = print) -> None:
    """Serve the app until Ctrl-C. A host other than the loopback needs allow_remote, and then
    every request carries the token printed here."""
    import uvicorn

    token = new_token() if allow_remote else None
    app = create_app(catalog_path, config, host=host, port=port, token=token, thumbs_dir=thumbs_dir)
    shown = f"[{host}]" if ":" in host else host
    echo(f"vdc-lake review: http://{shown}:{port}/" + (f"?token={token}" if token else "")
         + " (Ctrl-C stops it)")
    uvicorn.run(app, host=host, port=port, log_level="warning")
