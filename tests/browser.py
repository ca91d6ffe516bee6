"""A headless Chromium driven over the DevTools protocol on a pipe (--remote-debugging-pipe: JSON
messages separated by NUL bytes on file descriptors 3 and 4): nothing beyond the standard library
and a `chromium` binary. DevTools is the browser; Page is one tab with clicks, key presses,
script evaluation and waits; problems() holds console errors, uncaught exceptions and failed loads.
The report's and the review app's browser tests use it.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import signal
import time
from pathlib import Path
from typing import Any

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
            elif method == "Network.responseReceived" and params["response"]["status"] >= 400:
                found.append(f"HTTP {params['response']['status']} {params['response']['url']}")
        return found


def visit_all(binary: str, pages: list[Path], work: Path) -> tuple[list[str], dict[str, list[dict]], bytes]:
    """Open every page in turn in one headless browser: (problems, {page name: per-image state},
    a full-page PNG screenshot of the first page)."""
    browser = DevTools(binary, work / "profile", work / "chromium.log")
    states, shot = {}, b""
    try:
        target = next(t for t in browser.call("Target.getTargets")["targetInfos"] if t["type"] == "page")
        session = browser.call("Target.attachToTarget", {"targetId": target["targetId"], "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            browser.call(f"{domain}.enable", session=session)
        browser.call("Emulation.setDeviceMetricsOverride", {"width": PAGE_WIDTH, "height": 2000,
                                                             "deviceScaleFactor": 1, "mobile": False}, session=session)
        for page in pages:
            browser.events = [e for e in browser.events if e.get("method") != "Page.loadEventFired"]
            browser.call("Page.navigate", {"url": page.resolve().as_uri()}, session=session)
            browser.wait_for("Page.loadEventFired")
            # lazy images load once scrolled into view: force every one to load, then wait for all
            states[str(page)] = browser.call("Runtime.evaluate", {
                "expression": "Promise.all(Array.from(document.images, i => { i.loading = 'eager'; "
                              "return i.decode().catch(() => null); })).then(() => Array.from(document.images, "
                              "i => ({src: i.getAttribute('src'), complete: i.complete, naturalWidth: i.naturalWidth, "
                              "naturalHeight: i.naturalHeight})))",
                "awaitPromise": True, "returnByValue": True}, session=session, timeout=60)["result"]["value"]
            if not shot:
                shot = base64.b64decode(browser.call("Page.captureScreenshot", {
                    "format": "png", "captureBeyondViewport": True}, session=session, timeout=30)["data"])
    finally:
        browser.close()
    return browser.problems() + [f"request {e['params']['request']['url']}" for e in browser.events
                                 if e.get("method") == "Network.requestWillBeSent"
                                 and not e["params"]["request"]["url"].startswith(("file://", "data:"))], states, shot


KEYS = {"ArrowRight": 39, "ArrowLeft": 37, "ArrowUp": 38, "ArrowDown": 40, "Enter": 13, "Escape": 27}


class Page:
    """One tab of a DevTools browser: navigate, evaluate, click, press keys, wait for a condition."""

    def __init__(self, browser: DevTools, *, width: int = PAGE_WIDTH, height: int = 1000):
        self.browser = browser
        target = next(t for t in browser.call("Target.getTargets")["targetInfos"] if t["type"] == "page")
        self.session = browser.call("Target.attachToTarget", {"targetId": target["targetId"], "flatten": True})[
            "sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(f"{domain}.enable")
        self.call("Emulation.setDeviceMetricsOverride", {"width": width, "height": height, "deviceScaleFactor": 1,
                                                          "mobile": False})

    def call(self, method: str, params: dict | None = None, *, timeout: float = 20.0) -> dict[str, Any]:
        return self.browser.call(method, params, session=self.session, timeout=timeout)

    def goto(self, url: str) -> None:
        """Open url and wait for its load event."""
        self.browser.events = [e for e in self.browser.events if e.get("method") != "Page.loadEventFired"]
        self.call("Page.navigate", {"url": url})
        self.browser.wait_for("Page.loadEventFired")

    def eval(self, expression: str, *, timeout: float = 30.0) -> Any:
        """The value of a JavaScript expression (a promise is awaited); an exception fails the test."""
        answer = self.call("Runtime.evaluate", {"expression": expression, "awaitPromise": True,
                                                "returnByValue": True}, timeout=timeout)
        if "exceptionDetails" in answer:
            raise AssertionError(f"{expression} threw: {answer['exceptionDetails']}")
        return answer["result"].get("value")

    def wait_until(self, expression: str, *, timeout: float = 60.0) -> Any:
        """Poll a JavaScript expression until it is truthy; its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.eval(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"still false after {timeout} s: {expression}")
            time.sleep(0.1)

    def click(self, selector: str) -> None:
        """A real mouse click (pressed and released) at the middle of the first element matching selector."""
        box = self.eval(f"(() => {{ const e = document.querySelector({json.dumps(selector)}); if (!e) return null; "
                        "e.scrollIntoView({block: 'center'}); const r = e.getBoundingClientRect(); "
                        "return [r.left + r.width / 2, r.top + r.height / 2]; })()")
        if box is None:
            raise AssertionError(f"nothing on the page matches {selector}")
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", {"type": kind, "x": box[0], "y": box[1], "button": "left",
                                                   "clickCount": 1})

    def press(self, key: str) -> None:
        """A key press (down, up) as the keyboard sends it: a letter or one of KEYS."""
        code = KEYS.get(key, ord(key.upper()) if len(key) == 1 else 0)
        down = {"type": "keyDown" if key in KEYS else "keyDown", "key": key, "windowsVirtualKeyCode": code,
                "code": key if key in KEYS else f"Key{key.upper()}"}
        if key not in KEYS:
            down["text"] = key
        self.call("Input.dispatchKeyEvent", down)
        self.call("Input.dispatchKeyEvent", {"type": "keyUp", "key": key, "windowsVirtualKeyCode": code,
                                             "code": down["code"]})

    def images(self) -> list[dict]:
        """Every <img> on the page, loaded (lazy ones forced): src, complete, naturalWidth, naturalHeight."""
        return self.eval("Promise.all(Array.from(document.images, i => { i.loading = 'eager'; "
                         "return i.decode().catch(() => null); })).then(() => Array.from(document.images, "
                         "i => ({src: i.getAttribute('src'), complete: i.complete, naturalWidth: i.naturalWidth, "
                         "naturalHeight: i.naturalHeight})))", timeout=60)

    def screenshot(self) -> bytes:
        return base64.b64decode(self.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True},
                                          timeout=30)["data"])
