"""Report: built from a catalog that went through every stage, then opened in headless Chromium.

The browser is driven over the DevTools protocol on a pipe (--remote-debugging-pipe: JSON
messages separated by NUL bytes on file descriptors 3 and 4), so the test needs nothing beyond
the standard library and a `chromium` binary; it is skipped only when no such binary exists.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import re
import select
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from test_export import build_curation_catalog
from vdc_lake.catalog import Catalog
from vdc_lake.report import build_report, svg_histogram
from vdc_lake.scan import scan

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
PAGE_WIDTH = 1280


def chromium_binary() -> str | None:
    """$VDC_LAKE_CHROMIUM, or the first Chromium-family browser on PATH."""
    candidates = [os.environ.get("VDC_LAKE_CHROMIUM", "")] + [shutil.which(b) or "" for b in BROWSERS]
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


class DevTools:
    """A headless Chromium and a synchronous DevTools-protocol client over its debugging pipe."""

    def __init__(self, binary: str, profile: Path, log: Path):
        to_browser_read, self._to_browser = os.pipe()
        self._from_browser, from_browser_write = os.pipe()
        # The browser reads commands on fd 3 and answers on fd 4. The ends are first moved above
        # 9 so that placing one on 3 or 4 can never overwrite the other.
        a = fcntl.fcntl(to_browser_read, fcntl.F_DUPFD_CLOEXEC, 10)
        b = fcntl.fcntl(from_browser_write, fcntl.F_DUPFD_CLOEXEC, 10)
        args = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                "--no-first-run", "--no-default-browser-check", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--disable-extensions", "--mute-audio",
                "--remote-debugging-pipe", f"--user-data-dir={profile}", "about:blank"]
        log_fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            self.pid = os.posix_spawn(binary, args, dict(os.environ), file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_DUP2, log_fd, 1), (os.POSIX_SPAWN_DUP2, log_fd, 2),
                (os.POSIX_SPAWN_DUP2, a, 3), (os.POSIX_SPAWN_DUP2, b, 4)])
        finally:
            for fd in (to_browser_read, from_browser_write, a, b, log_fd):
                os.close(fd)
        self._buffer = b""
        self._last_id = 0
        self.events: list[dict[str, Any]] = []

    def _receive(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("chromium did not answer in time")
            if select.select([self._from_browser], [], [], left)[0]:
                chunk = os.read(self._from_browser, 1 << 20)
                if not chunk:
                    raise EOFError("chromium closed the debugging pipe")
                self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def call(self, method: str, params: dict | None = None, *, session: str | None = None,
             timeout: float = 20.0) -> dict[str, Any]:
        """Send one command and return its result; events that arrive meanwhile go to `events`."""
        self._last_id += 1
        message: dict[str, Any] = {"id": self._last_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._receive(deadline)
            if reply.get("id") == self._last_id:
                if "error" in reply:
                    raise RuntimeError(f"{method} failed: {reply['error']}")
                return reply["result"]
            self.events.append(reply)

    def wait_for(self, event: str, *, timeout: float = 20.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        for seen in self.events:
            if seen.get("method") == event:
                return seen
        while True:
            message = self._receive(deadline)
            self.events.append(message)
            if message.get("method") == event:
                return message

    def close(self) -> None:
        """Ask the browser to quit; kill it if it does not within a few seconds."""
        try:
            self.call("Browser.close", timeout=5)
        except Exception:  # noqa: BLE001 - it is killed below either way
            pass
        deadline = time.monotonic() + 10
        while os.waitpid(self.pid, os.WNOHANG) == (0, 0):
            if time.monotonic() > deadline:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
                break
            time.sleep(0.05)
        os.close(self._to_browser)
        os.close(self._from_browser)

    def problems(self) -> list[str]:
        """Console errors, uncaught exceptions and error log entries (failed loads) seen so far."""
        found = []
        for e in self.events:
            method, params = e.get("method"), e.get("params", {})
            if method == "Runtime.exceptionThrown":
                found.append(params["exceptionDetails"].get("exception", {}).get("description", "exception"))
            elif method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
                found.append(" ".join(str(a.get("value", a.get("description"))) for a in params["args"]))
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                found.append(f"{params['entry']['text']} {params['entry'].get('url', '')}")
        return found


def load_page(binary: str, page: Path, work: Path) -> tuple[DevTools, str, list[dict], bytes]:
    """Open `page` in a fresh browser: (client, session, per-image state, full-page PNG screenshot)."""
    browser = DevTools(binary, work / "profile", work / "chromium.log")
    try:
        target = next(t for t in browser.call("Target.getTargets")["targetInfos"] if t["type"] == "page")
        session = browser.call("Target.attachToTarget", {"targetId": target["targetId"], "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            browser.call(f"{domain}.enable", session=session)
        browser.call("Emulation.setDeviceMetricsOverride", {"width": PAGE_WIDTH, "height": 2000,
                                                             "deviceScaleFactor": 1, "mobile": False}, session=session)
        browser.call("Page.navigate", {"url": page.resolve().as_uri()}, session=session)
        browser.wait_for("Page.loadEventFired")
        images = browser.call("Runtime.evaluate", {
            "expression": "Array.from(document.images, i => ({src: i.getAttribute('src'), complete: i.complete, "
                          "naturalWidth: i.naturalWidth, naturalHeight: i.naturalHeight}))",
            "returnByValue": True}, session=session)["result"]["value"]
        shot = browser.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True},
                            session=session, timeout=30)
    except BaseException:
        browser.close()
        raise
    return browser, session, images, base64.b64decode(shot["data"])


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("report")
    catalog_path, _, _ = build_curation_catalog(base)
    with Catalog(catalog_path, read_only=True) as catalog:
        build_report(catalog, base / "report", thumbnails=6, workers=2, quiet=True)
    return base / "report"


@pytest.fixture
def chromium() -> str:
    binary = chromium_binary()
    if binary is None:
        pytest.skip("no chromium binary on PATH (Debian: apt-get install chromium; or set VDC_LAKE_CHROMIUM)")
    return binary


def test_report_renders_in_chromium_with_every_image_and_no_errors(chromium, report_dir, tmp_path):
    html_text = (report_dir / "index.html").read_text(encoding="utf-8")
    browser, _, images, png = load_page(chromium, report_dir / "index.html", tmp_path)
    browser.close()

    assert browser.problems() == []
    assert len(images) == html_text.count("<img ") > 30
    broken = [i["src"] for i in images if not (i["complete"] and i["naturalWidth"] > 0 and i["naturalHeight"] > 0)]
    assert broken == []
    requested = {e["params"]["request"]["url"] for e in browser.events
                 if e.get("method") == "Network.requestWillBeSent"}
    assert requested and all(url.startswith(("file://", "data:")) for url in requested)  # nothing from the network
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    (tmp_path / "report.png").write_bytes(png)
    with Image.open(tmp_path / "report.png") as shot:
        assert PAGE_WIDTH - 20 <= shot.width <= PAGE_WIDTH and shot.height > 2000
        assert shot.convert("L").getextrema()[0] < 100  # something was drawn


def test_report_shows_every_section_from_the_decision_views(report_dir):
    page = (report_dir / "index.html").read_text(encoding="utf-8")
    for heading in ("Funnel", "Sanitize findings by rule", "Rotation corrections", "Duplicates", "Clusters",
                    "Sampling allocation"):
        assert f">{heading}</h2>" in page
    for stage in ("scanned", "sanitized ok", "rotated", "deduplicated", "filtered", "sampled"):
        assert f"<td>{stage}</td>" in page
    assert "truncated" in page and "decompression_bomb" in page
    assert "before: predicted 90°" in page and "after: rotate 90° clockwise" in page
    assert 'class="card delete"' in page and 'class="card keep"' in page
    assert page.count("<svg ") >= 3  # rotation confidence, pair distances, cluster sizes
    # the builtin set's own dedup thresholds (no config sets them), the bundled rotation threshold
    assert "apply 0.08" in page and "report 0.16" in page and "threshold 0.75" in page
    assert "Sample run" in page and "no sample run yet" not in page
    thumbs = set(re.findall(r'src="(thumbs/[^"]+)"', page))
    assert thumbs and all((report_dir / t).is_file() for t in thumbs)
    assert {"thumbs/_undecodable.jpg", "thumbs/_too_large.jpg"} <= thumbs  # placeholders: not an image, bomb
    assert not re.search(r"<script|https?://(?!www\.w3\.org/2000/svg)", page)  # self-contained


def test_rotation_after_thumbnail_is_turned_by_the_decided_angle(report_dir):
    page = (report_dir / "index.html").read_text(encoding="utf-8")
    pairs = re.findall(r'src="(thumbs/(\d+)-(\d+)\.jpg)".*?src="(thumbs/\2-\3-rotate_(\d+)\.jpg)"', page, re.S)
    assert pairs
    for before, _, _, after, angle in pairs:
        with Image.open(report_dir / before) as b, Image.open(report_dir / after) as a:
            assert a.size == (b.size if angle == "180" else b.size[::-1])


def test_an_early_catalog_says_which_command_fills_each_section(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    weird = root / 'a<b>&"c.png'
    Image.new("RGB", (120, 90), (200, 40, 40)).save(weird)
    shutil.copyfile(weird, root / "copy.png")  # an exact duplicate, so the odd name is shown
    with Catalog(tmp_path / "catalog.duckdb") as catalog:
        scan(catalog, [root], extensions=[".png"], workers=1, quiet=True)
        (root / "copy.png").unlink()  # gone since the scan
        index = build_report(catalog, tmp_path / "report", quiet=True)
    page = index.read_text(encoding="utf-8")
    for note in ("not sanitized yet: run vdc-lake sanitize",
                 "no rotation predictions yet: run vdc-lake predict --kind rotation",
                 "no near-duplicate report yet: run vdc-lake dedup report --set builtin",
                 "no clustering yet: run vdc-lake cluster --set NAME",
                 "no sample run yet: run vdc-lake sample --total N"):
        assert note in page
    assert 'a<b>&"c.png' not in page and "a&lt;b&gt;&amp;&quot;c.png" in page
    assert 'src="thumbs/_missing.jpg"' in page and (tmp_path / "report" / "thumbs" / "_missing.jpg").is_file()


def test_svg_histogram_marks_thresholds_inside_its_range():
    svg = svg_histogram([0.1, 0.2, 0.2, 0.45], lo=0.0, hi=0.5, x_label="distance",
                        markers=[(0.25, "apply 0.25", "#c00"), (0.9, "outside", "#00c")])
    assert svg.startswith("<svg ") and svg.endswith("</svg>")
    assert svg.count("<rect ") == 40 and "apply 0.25" in svg and "outside" not in svg
