"""The review web app (`vdc-lake review`) through Starlette's TestClient: every page renders from the
report's queries, actions write the overrides the CLI writes (one run each) and the counts follow,
undo, pair labels, the threshold explorer's counts, and the safety rules (Host header, token, CSRF,
confinement of the files served, the writer lock of another command)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import duckdb
import pytest
from starlette.testclient import TestClient

from conftest import catalog_rows, cli_fails, copy_catalog
from test_export import build_curation_catalog
from test_report import _add_filter_runs
from vdc_lake.catalog.connection import Catalog
from vdc_lake.config.loader import Config
from vdc_lake.review.app.server import create_app
from vdc_lake.review.app.thumbs import placeholder_jpeg
from vdc_lake.review.decisions import DECISIONS
from vdc_lake.review.thumbnails import PLACEHOLDERS

LOCAL = "http://127.0.0.1"
PAGES = ["/", "/counts", "/runs", "/clusters", "/near-1.html", "/clusters-1.html", "/thresholds", "/label",
         *(f"/{name}-1.html" for name, d in DECISIONS.items() if d.gallery)]


@pytest.fixture(scope="module")
def review_catalog(tmp_path_factory) -> Path:
    """Sample data through every stage (fake model stages), an example filter and a score filter."""
    base = tmp_path_factory.mktemp("review")
    catalog_path, _, _ = build_curation_catalog(base)
    (base / "examples").mkdir()
    with Catalog(catalog_path) as catalog:
        _add_filter_runs(catalog, base / "examples")
    return catalog_path


@pytest.fixture
def catalog_copy(review_catalog, tmp_path) -> Path:
    """A copy of the catalog beside the original (the same scanned roots), for tests that write."""
    copy = review_catalog.parent / f"copy-{tmp_path.name}.duckdb"
    copy_catalog(review_catalog, copy)
    yield copy
    for suffix in ("", ".wal", ".lock"):
        Path(str(copy) + suffix).unlink(missing_ok=True)
    shutil.rmtree(str(copy) + ".vectors", ignore_errors=True)


def client_for(catalog_path: Path, tmp_path: Path, **kwargs) -> TestClient:
    app = create_app(catalog_path, Config.load(search_dir=catalog_path.parent), thumbs_dir=tmp_path / "thumbs",
                     **kwargs)
    return TestClient(app, base_url=LOCAL)


def csrf(client: TestClient) -> dict[str, str]:
    return {"X-CSRF-Token": client.app.state.options.csrf_token}


def overrides(catalog_path: Path) -> list[tuple]:
    return catalog_rows(catalog_path, "SELECT run_id, image_id, action, reason FROM overrides ORDER BY run_id, image_id")


def dedup_pair(catalog_path: Path) -> tuple[int, int]:
    """(an image dedup deletes, its duplicate group)."""
    return catalog_rows(catalog_path, "SELECT image_id, group_id FROM dedup_actions() WHERE action = 'delete' "
                                      "ORDER BY image_id LIMIT 1")[0]


# -- pages -----------------------------------------------------------------------------------------

def test_every_page_renders_and_the_funnel_lists_every_decision(review_catalog, tmp_path):
    client = client_for(review_catalog, tmp_path)
    for url in PAGES:
        response = client.get(url)
        assert response.status_code == 200, (url, response.text[:500])
    funnel = client.get("/").text
    for name in DECISIONS:
        assert f'data-decision="{name}"' in funnel
    deleted, group = dedup_pair(review_catalog)
    for url in (f"/image/{deleted}", f"/group/{group}", "/cluster/1/0", "/history-999-1.html"):
        assert client.get(url).status_code in (200, 404), url
    assert client.get(f"/group/{group}").text.count("<figure") >= 2
    assert client.get("/image/999999").status_code == 404


def test_the_dedup_gallery_pages_every_planned_removal_beside_its_keeper(review_catalog, tmp_path):
    client = client_for(review_catalog, tmp_path)
    planned = {r[0] for r in catalog_rows(review_catalog,
                                          "SELECT image_id FROM dedup_actions() WHERE action = 'delete'")}
    shown, page = set(), 1
    while True:
        text = client.get(f"/dedup-{page}.html").text
        found = re.findall(r'<figure class="card delete" data-image-id="(\d+)" data-planned="1"', text)
        if not found:
            break
        assert text.count('<div class="item">') == len(found)  # each removed image beside its keeper
        shown |= {int(i) for i in found}
        page += 1
    assert shown == planned and planned


def test_thumbnails_are_served_by_id_and_version_once(review_catalog, tmp_path):
    client = client_for(review_catalog, tmp_path)
    image_id, version = catalog_rows(review_catalog, "SELECT image_id, version FROM curated WHERE format = 'JPEG' "
                                     "ORDER BY image_id LIMIT 1")[0]
    first = client.get(f"/thumb/{image_id}/{version}")
    assert first.status_code == 200 and first.headers["content-type"] == "image/jpeg"
    assert first.content[:2] == b"\xff\xd8" and first.content not in {placeholder_jpeg(k) for k in PLACEHOLDERS}
    assert [p.name for p in (tmp_path / "thumbs").iterdir()] == [f"{image_id}-{version}-160.jpg"]
    assert client.get(f"/thumb/{image_id}/{version}").content == first.content
    assert client.get(f"/thumb/{image_id}/{version + 7}").content == placeholder_jpeg("missing")


# -- actions ---------------------------------------------------------------------------------------

def test_keep_and_drop_write_the_overrides_the_cli_writes_and_the_counts_follow(catalog_copy, tmp_path, run_cli):
    client = client_for(catalog_copy, tmp_path)
    deleted, group = dedup_pair(catalog_copy)
    before = client.get("/counts").text
    assert 'data-override="keep"' not in before
    answer = client.post("/act", data={"action": "keep", "images": str(deleted), "reason": "not a duplicate"},
                         headers=csrf(client))
    assert answer.status_code == 200, answer.text
    run = answer.json()["run_id"]
    assert overrides(catalog_copy) == [(run, deleted, "keep", "not a duplicate")]
    assert catalog_rows(catalog_copy, "SELECT stage, status FROM runs WHERE run_id = ?", [run]) == [("override", "done")]
    assert re.search(r'data-override="keep">1<', client.get("/counts").text)
    assert deleted not in {r[0] for r in catalog_rows(catalog_copy, "SELECT image_id FROM removals")}
    # the same command through the CLI writes the same kind of rows
    result = run_cli(["override", "keep", str(deleted), "--reason", "not a duplicate"], catalog_copy)
    assert result.exit_code == 0, result.output
    rows = overrides(catalog_copy)
    assert rows[-1][1:] == rows[0][1:] and rows[-1][0] > run

    members = {r[0] for r in catalog_rows(catalog_copy, "SELECT image_id FROM dedup_actions() WHERE group_id = ?", [group])}
    answer = client.post("/act", data={"action": "drop", "group": str(group)}, headers=csrf(client))
    assert answer.json()["images"] == len(members)
    dropped = {r[1] for r in overrides(catalog_copy) if r[0] == answer.json()["run_id"]}
    assert dropped == members
    assert {r[0] for r in catalog_rows(catalog_copy, "SELECT image_id FROM override_actions WHERE action = 'delete'")
            } == members


def test_a_page_is_read_once_per_catalog_state_and_a_cli_command_between_requests_shows(catalog_copy, tmp_path,
                                                                                        run_cli):
    client = client_for(catalog_copy, tmp_path)
    deleted, _ = dedup_pair(catalog_copy)
    cache = client.app.state.pages
    first = client.get(f"/image/{deleted}").text
    assert client.get(f"/image/{deleted}").text == first and cache.hits == 1  # the same state: not read again
    assert 'data-override="keep"' not in client.get("/counts").text
    result = run_cli(["override", "keep", str(deleted), "--reason", "kept from the shell"], catalog_copy)
    assert result.exit_code == 0, result.output
    assert "kept from the shell" in client.get(f"/image/{deleted}").text
    assert re.search(r'data-override="keep">1<', client.get("/counts").text)
    result = run_cli(["override", "clear", str(deleted)], catalog_copy)
    assert result.exit_code == 0, result.output
    assert 'data-override="keep"' not in client.get("/counts").text


def test_a_catalog_edited_between_requests_is_checked_again(catalog_copy, tmp_path):
    """Opening read-only skips the content checks for a file state already checked (per request,
    they would cost more than most pages); any edit changes the state, so the edit is found."""
    client = client_for(catalog_copy, tmp_path)
    assert client.get("/runs").status_code == 200
    con = duckdb.connect(str(catalog_copy))  # as someone handing the catalog over could
    try:
        con.execute("CREATE MACRO lower(x) AS 'pwned'")
    finally:
        con.close()
    page = client.get("/runs")
    assert page.status_code != 200 and "replaces DuckDB&#39;s own function" in page.text


def test_undo_gives_back_the_overrides_before_the_last_action(catalog_copy, tmp_path):
    client = client_for(catalog_copy, tmp_path)
    a, b = [r[0] for r in catalog_rows(catalog_copy, "SELECT image_id FROM curated ORDER BY image_id LIMIT 2")]
    client.post("/act", data={"action": "keep", "images": str(a), "reason": "first"}, headers=csrf(client))
    client.post("/act", data={"action": "drop", "images": f"{a},{b}"}, headers=csrf(client))
    in_force = "SELECT image_id, override FROM override_actions ORDER BY image_id"
    assert catalog_rows(catalog_copy, in_force) == [(a, "drop"), (b, "drop")]
    assert client.post("/undo", headers=csrf(client)).status_code == 200
    assert catalog_rows(catalog_copy, in_force) == [(a, "keep")]
    assert {r[1:] for r in overrides(catalog_copy)[-2:]} == {(a, "keep", "first"), (b, "clear", None)}
    runs = catalog_rows(catalog_copy, "SELECT run_id, params->>'command' FROM runs WHERE stage = 'override' "
                                      "ORDER BY run_id")
    assert len(runs) == 3 and runs[-1][1] == "undo"  # one override run per action, undo included
    assert {r[0] for r in overrides(catalog_copy)[-2:]} == {runs[-1][0]}
    assert client.post("/undo", headers=csrf(client)).status_code == 200
    assert catalog_rows(catalog_copy, in_force) == []
    nothing = client.post("/undo", headers=csrf(client))
    assert nothing.status_code == 400 and "nothing to undo" in nothing.json()["error"]


def test_a_cluster_is_kept_whole_in_one_run(catalog_copy, tmp_path):
    client = client_for(catalog_copy, tmp_path)
    level, cluster, run = catalog_rows(catalog_copy, "SELECT level, cluster_id, run_id FROM clusters WHERE run_id = "
                                       "(SELECT max(run_id) FROM runs WHERE stage = 'cluster') ORDER BY level DESC, "
                                       "size LIMIT 1")[0]
    members = {r[0] for r in catalog_rows(catalog_copy, "SELECT image_id FROM assignments JOIN image_files "
                                          "USING (image_id, version) WHERE run_id = ? AND level = ? AND cluster_id = ?",
                                          [run, level, cluster])}
    answer = client.post("/act", data={"action": "keep", "cluster": f"{level}:{cluster}"}, headers=csrf(client))
    assert answer.status_code == 200, answer.text
    assert {r[1] for r in overrides(catalog_copy)} == members
    assert len({r[0] for r in overrides(catalog_copy)}) == 1
    page = client.get(f"/cluster/{level}/{cluster}").text
    assert f"{len(members)} kept" in page.replace(",", "")


def test_the_sliders_count_what_the_macros_remove(review_catalog, tmp_path):
    client = client_for(review_catalog, tmp_path)
    for value in (0.02, 0.1, 0.3):
        text = client.get(f"/thresholds/dedup?set=builtin&value={value}").text
        shown = int(re.search(r'data-removed="(\d+)"', text).group(1))
        assert shown == catalog_rows(review_catalog, "SELECT count(*) FROM dedup_actions(threshold := ?, "
                                     "embedding_set := 'builtin') WHERE action = 'delete'", [value])[0][0]
        assert f"threshold = {value:g}" in text
    text = client.get("/thresholds/examples?value=0.1").text
    assert int(re.search(r'data-removed="(\d+)"', text).group(1)) == catalog_rows(
        review_catalog, "SELECT count(*) FROM example_actions(threshold := 0.1) WHERE action = 'delete'")[0][0]


def test_a_label_from_label_mode_goes_to_pair_labels(catalog_copy, tmp_path):
    client = client_for(catalog_copy, tmp_path)
    page = client.get("/label").text
    a, b = re.search(r'data-image-a="(\d+)" data-image-b="(\d+)"', page).groups()
    answer = client.post("/label", data={"image_a": a, "image_b": b, "is_duplicate": "true"}, headers=csrf(client))
    assert answer.status_code == 200, answer.text
    assert catalog_rows(catalog_copy, "SELECT image_a, image_b, is_duplicate, source FROM pair_labels") == [
        (int(a), int(b), True, "app")]
    after = client.get("/label").text
    assert re.search(r'data-image-a="(\d+)" data-image-b="(\d+)"', after).groups() != (a, b)


# -- safety ----------------------------------------------------------------------------------------

def test_a_post_without_the_csrf_token_writes_nothing(catalog_copy, tmp_path):
    client = client_for(catalog_copy, tmp_path)
    image = catalog_rows(catalog_copy, "SELECT min(image_id) FROM curated")[0][0]
    for headers in ({}, {"X-CSRF-Token": "0" * 64}):
        refused = client.post("/act", data={"action": "drop", "images": str(image)}, headers=headers)
        assert refused.status_code == 403 and "CSRF" in refused.text
    forged = client.post("/act", data={"action": "drop", "images": str(image)},
                         headers={**csrf(client), "Origin": "http://evil.example"})
    assert forged.status_code == 403
    assert client.post("/label", data={"image_a": "1", "image_b": "2", "is_duplicate": "true"}).status_code == 403
    assert overrides(catalog_copy) == []
    assert catalog_rows(catalog_copy, "SELECT count(*) FROM pair_labels") == [(0,)]


def test_a_non_local_host_header_is_refused(review_catalog, tmp_path):
    client = client_for(review_catalog, tmp_path)
    for host in ("evil.example", "evil.example:8765", "127.0.0.1.evil.example"):
        response = client.get("/", headers={"Host": host})
        assert response.status_code == 421 and "not this server's" in response.text
    assert client.get("/", headers={"Host": "localhost"}).status_code == 200


def test_a_remote_server_needs_its_token_on_every_request(review_catalog, tmp_path):
    client = client_for(review_catalog, tmp_path, host="192.0.2.7", port=8765, token="s3cret")
    client.base_url = "http://192.0.2.7:8765"
    assert client.get("/").status_code == 403
    assert client.get("/counts", headers={"X-Vdc-Lake-Token": "wrong"}).status_code == 403
    entered = client.get("/?token=s3cret", follow_redirects=False)
    assert entered.status_code == 303 and entered.headers["location"] == "/"
    assert client.get("/").status_code == 200  # the cookie set by the redirect
    assert client.get("/", headers={"Host": "127.0.0.1:8765"}).status_code == 421


def test_a_tampered_catalogs_paths_outside_the_roots_are_never_served(catalog_copy, tmp_path):
    secret = catalog_copy.parent / "secret.png"
    shutil.copyfile(next((catalog_copy.parent / "data").rglob("*.png")), secret)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    shutil.copyfile(secret, outside / "x.png")
    os.symlink(outside, catalog_copy.parent / "data" / f"link-{tmp_path.name}")
    ids = [r[0] for r in catalog_rows(catalog_copy, "SELECT image_id FROM image_files ORDER BY image_id LIMIT 3")]
    with Catalog(catalog_copy) as catalog:
        catalog.execute("UPDATE images SET rel_path = '../secret.png' WHERE image_id = ?", [ids[0]])
        catalog.execute("UPDATE images SET root = ? WHERE image_id = ?", [str(catalog_copy.parent), ids[1]])
        catalog.execute("UPDATE images SET rel_path = ? WHERE image_id = ?", [f"link-{tmp_path.name}/x.png", ids[2]])
    client = client_for(catalog_copy, tmp_path)
    for image in ids:
        version = catalog_rows(catalog_copy, "SELECT version FROM images WHERE image_id = ?", [image])[0][0]
        assert client.get(f"/thumb/{image}/{version}").content == placeholder_jpeg("outside"), image
    assert not (tmp_path / "thumbs").exists() or list((tmp_path / "thumbs").iterdir()) == []
    # a path in the URL is never a file: the routes take numbers only
    assert client.get("/thumb/..%2Fsecret.png/1").status_code == 404
    assert client.get("/static/../../errors.py").status_code == 404


HOLDER = textwrap.dedent("""
    import sys, time
    from vdc_lake.catalog.connection import Catalog
    catalog = Catalog(sys.argv[1])
    catalog.scalar("SELECT 1")
    if sys.argv[2] == "between-writes":
        catalog.release()  # the writer lock stays, the file is free (a command between its batches)
    print("holding", flush=True)
    time.sleep(60)
""")


@pytest.mark.parametrize("phase", ["between-writes", "inside-a-write"])
def test_while_another_command_holds_the_catalog_pages_say_which_and_actions_fail(catalog_copy, tmp_path, phase):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(catalog_copy), phase], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        client = client_for(catalog_copy, tmp_path, lock_wait=0.3)
        page = client.get("/")
        assert f"PID {holder.pid}" in page.text
        assert page.status_code == (200 if phase == "between-writes" else 503)
        refused = client.post("/act", data={"action": "keep", "images": "1"}, headers=csrf(client))
        assert refused.status_code == 409
        assert "nothing was written: the catalog is in use by" in refused.json()["error"]
        assert f"PID {holder.pid}" in refused.json()["error"]
    finally:
        holder.kill()
        holder.wait()
    assert overrides(catalog_copy) == []


def test_review_refuses_a_remote_host_without_allow_remote(review_catalog, run_cli):
    cli_fails(run_cli(["review", "--host", "0.0.0.0"], review_catalog),
              "--host 0.0.0.0 lets other hosts reach the review app; add --allow-remote to do so (every request "
              "must then carry the printed token), or leave --host out for 127.0.0.1")
