"""Templates (vdc_lake/review/templates, autoescaped) and the report's cards as the app shows them:
pictures from /thumb, links to each image's page."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterable

import jinja2
from markupsafe import Markup
from starlette.requests import Request
from starlette.responses import HTMLResponse

from vdc_lake.review.app.access import lock_holder
from vdc_lake.review.app.options import AppOptions
from vdc_lake.review.app.thumbs import card_source
from vdc_lake.review.pages import Card, Grid, Paged
from vdc_lake.review.render import CSS, gallery_body, grid_html

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
STATIC = Path(__file__).resolve().parent.parent / "static"
# The pages in the navigation bar: (path, title).
NAV = (("/", "Funnel"), ("/clusters", "Clusters"), ("/runs", "Applied runs"), ("/thresholds", "Thresholds"),
       ("/label", "Label pairs"))


@lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["number"] = lambda n: f"{n:,}" if isinstance(n, int) else n
    return env


def image_link(card: Card) -> str | None:
    return None if card.image_id is None else f"/image/{card.image_id}"


def sources(cards: Iterable[Card]) -> dict[str, str]:
    return {c.thumb.key: card_source(c) for c in cards}


def cards_of(items: Iterable[list[Card]]) -> list[Card]:
    return [c for item in items for c in item]


def grid(items: list[list[Card]]) -> Markup:
    """The report's markup of these items (render.grid_html), pictures and links the app's."""
    return Markup(grid_html(Grid(items), sources(cards_of(items)), image_link))


def gallery(paged: Paged, items: list[list[Card]], blocks: dict[int, str]) -> Markup:
    """The report's markup of one gallery page (render.gallery_body)."""
    return Markup("".join(gallery_body(paged, items, blocks, sources(cards_of(items)), image_link)))


def body_html(parts: Iterable[Any]) -> Markup:
    """A report section's body (HTML strings the report escaped, and Grids) as the app shows it."""
    return Markup("".join(grid(b.items) if isinstance(b, Grid) else str(b) for b in parts))


def query_page(request: Request) -> int:
    """?page=N (a number from 1; anything else is page 1)."""
    text = request.query_params.get("page", "1")
    return int(text) if text.isdigit() and 0 < int(text) < 10**9 else 1


def page(request: Request, template: str, **context: Any) -> HTMLResponse:
    options: AppOptions = request.app.state.options
    html = environment().get_template(template).render(
        request=request, nav=NAV, css=Markup(CSS), csrf=options.csrf_token, path=request.url.path,
        catalog_name=options.catalog_path.name, holder=lock_holder(options.catalog_path), **context)
    return HTMLResponse(html)


def remembered(request: Request, name: str, compute: Callable[[], Any]) -> Any:
    """compute()'s value (an aggregate such as the pending counts, the calibration table), read
    once per catalog state and shared by every page that shows it."""
    state = getattr(request.state, "catalog_state", None)
    if state is None:  # not under server.reader (nothing to key by)
        return compute()
    return request.app.state.results.remembered(state, name, compute)


def remember(request: Request, name: str, value: Any) -> None:
    """Keep value under name for the catalog state this request read (see remembered)."""
    state = getattr(request.state, "catalog_state", None)
    if state is not None:
        request.app.state.results.put(state, name, value)


def fragment(template: str, **context: Any) -> HTMLResponse:
    return HTMLResponse(environment().get_template(template).render(**context))
