"""The review app in a real headless Chromium (tests/browser.py), served by uvicorn on a free
local port: keep and drop by click and by keyboard write `overrides` and update the counts, the
sliders' counts equal the decision macros', labelling 20 pairs by keyboard fills `pair_labels` and
the estimate table, every image loads and no page logs an error."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest
import uvicorn

from browser import DevTools, Page
from conftest import catalog_rows as read_rows, copy_catalog
from test_review_app import PAGES, review_catalog  # noqa: F401 - the module's catalog fixture
from vdc_lake.config.loader import Config
from vdc_lake.review.app.access import ONE_AT_A_TIME
from vdc_lake.review.app.server import create_app

LABELLED = 20


def catalog_rows(catalog_path: Path, sql: str, params: list | None = None) -> list[tuple]:
    """conftest.catalog_rows, between the server's requests: the server runs in this process, and
    DuckDB allows one open of a file at a time per process with these settings."""
    with ONE_AT_A_TIME:
        return read_rows(catalog_path, sql, params)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def served(review_catalog, tmp_path):  # noqa: F811 - the fixture imported above
    """(base URL, catalog path): a copy of the catalog served by uvicorn in a thread."""
    catalog_path = tmp_path / "catalog.duckdb"
    copy_catalog(review_catalog, catalog_path)
    port = free_port()
    app = create_app(catalog_path, Config.load(search_dir=review_catalog.parent), port=port,
                     thumbs_dir=tmp_path / "thumbs")
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", catalog_path
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def page(chromium, tmp_path):
    browser = DevTools(chromium, tmp_path / "profile", tmp_path / "chromium.log")
    try:
        yield Page(browser)
    finally:
        browser.close()
    assert browser.problems() == []  # no console error, exception or failed load on any page


def all_images_load(page: Page) -> None:
    broken = [i["src"] for i in page.images() if not (i["complete"] and i["naturalWidth"] > 0)]
    assert broken == []


def override_count(page: Page, kind: str) -> int:
    text = page.eval(f"(document.querySelector('#counts [data-override={kind}]') || {{}}).textContent || '0'")
    return int(text.replace(",", ""))


def test_every_page_loads_every_image_without_errors(served, page):
    base, _ = served
    for url in PAGES[:1] + PAGES[2:]:  # /counts is a fragment
        page.goto(base + url)
        page.wait_until("document.querySelector('#counts .counts') !== null")
        all_images_load(page)


def test_keep_by_click_and_drop_by_keyboard_write_overrides_and_update_the_counts(served, page):
    base, catalog_path = served
    page.goto(base + "/dedup-1.html")
    page.wait_until("document.querySelector('#counts .counts') !== null")
    all_images_load(page)
    assert override_count(page, "keep") == 0
    first = page.eval("document.querySelector('#main figure.card.delete').dataset.imageId")
    page.click(f"#main figure.card.delete[data-image-id='{first}'] button[data-card-act=keep]")
    page.wait_until("document.querySelector('#flash').textContent.includes('kept')")
    page.wait_until("(document.querySelector('#counts [data-override=keep]') || {}).textContent === '1'")
    page.wait_until(f"!document.querySelector(\"#main figure.card.delete[data-image-id='{first}']\")")
    assert catalog_rows(catalog_path, "SELECT image_id, action FROM overrides") == [(int(first), "keep")]

    page.press("ArrowRight")
    target = page.eval("document.querySelector('#main figure.card.focus').dataset.imageId")
    page.press("d")
    page.wait_until("(document.querySelector('#counts [data-override=drop]') || {}).textContent === '1'")
    rows = catalog_rows(catalog_path, "SELECT run_id, image_id, action FROM overrides ORDER BY run_id")
    assert [r[1:] for r in rows] == [(int(first), "keep"), (int(target), "drop")] and rows[0][0] < rows[1][0]

    page.press("u")  # undo the drop
    page.wait_until("document.querySelector('#counts [data-override=drop]') === null")
    assert catalog_rows(catalog_path, "SELECT image_id, override FROM override_actions") == [(int(first), "keep")]

    # drop a selection by click (its checkbox, then the bar's Drop), keep by keyboard (k on the focused card)
    picked = page.eval("document.querySelectorAll('#main figure.card.delete')[1].dataset.imageId")
    page.click(f"#main figure.card.delete[data-image-id='{picked}'] input.pick")
    page.wait_until("document.querySelector('#selected-count').textContent === '1 selected'")
    page.click("#actionbar button[data-act=drop]")
    page.wait_until("(document.querySelector('#counts [data-override=drop]') || {}).textContent === '1'")
    page.wait_until("document.querySelector('#selected-count').textContent === '0 selected'")
    page.press("ArrowLeft")
    kept = page.eval("document.querySelector('#main figure.card.focus').dataset.imageId")
    page.press("k")
    expected = {(int(first), "keep"), (int(picked), "drop"), (int(kept), "keep")}
    page.wait_until(f"(document.querySelector('#counts [data-override=keep]') || {{}}).textContent === "
                    f"'{sum(1 for _, kind in expected if kind == 'keep')}'")
    assert set(catalog_rows(catalog_path, "SELECT image_id, override FROM override_actions")) == expected
    all_images_load(page)


def test_the_sliders_counts_equal_the_macros(served, page):
    base, catalog_path = served
    page.goto(base + "/thresholds")
    sliders = page.eval("Array.from(document.querySelectorAll('input[type=range]'), "
                        "s => [s.dataset.key, s.dataset.decision, s.dataset.set || null, +s.min, +s.max])")
    assert any(s[1] == "dedup" for s in sliders)
    macros = {"dedup": "SELECT count(*) FROM dedup_actions(threshold := ?, embedding_set := ?) WHERE action = 'delete'",
              "examples": "SELECT count(*) FROM example_actions(threshold := ?) WHERE action = 'delete'",
              "rotation": "SELECT count(*) FROM rotation_actions(threshold := ?) WHERE action <> 'none'",
              "score": "SELECT count(*) FROM score_actions(setting('filter_by_score', 'name'), min_score := ?) "
                       "WHERE action = 'delete'"}
    for key, decision, set_name, low, high in sliders:
        for fraction in (0.1, 0.5, 0.9):
            value = page.eval(f"(() => {{ const s = document.querySelector('input[data-key=\"{key}\"]'); "
                              f"s.value = {low + fraction * (high - low)}; "
                              "s.dispatchEvent(new Event('input', {bubbles: true})); return +s.value; })()")
            shown = page.wait_until(f"(() => {{ const r = document.querySelector('#out-{key} .sweep-result'); "
                                    f"return r && Math.abs(+r.dataset.value - {value}) < 1e-9 && +r.dataset.removed + 1; }})()")
            params = [value, set_name] if decision == "dedup" else [value]
            assert shown - 1 == catalog_rows(catalog_path, macros[decision], params)[0][0], (key, value)
    all_images_load(page)


def test_labelling_twenty_pairs_by_keyboard_fills_pair_labels_and_the_estimates(served, page):
    base, catalog_path = served
    page.goto(base + "/label")
    for n in range(LABELLED):
        pair = page.wait_until("(() => { const p = document.querySelector('#pair'); "
                               "return p && [p.dataset.imageA, p.dataset.imageB]; })()")
        page.press("d" if n % 3 else "n")
        page.wait_until(f"(() => {{ const p = document.querySelector('#pair'); return !p || "
                        f"p.dataset.imageA + '-' + p.dataset.imageB !== '{pair[0]}-{pair[1]}'; }})()")
    assert catalog_rows(catalog_path, "SELECT count(*), count(*) FILTER (WHERE NOT is_duplicate) FROM pair_labels "
                                      "WHERE source = 'app'") == [(LABELLED, 7)]
    rows = page.wait_until("document.querySelectorAll('table.calibration tbody tr').length")
    assert rows > 0
    all_images_load(page)
