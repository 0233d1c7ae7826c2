"""Headless Debian `chromium` for the UI tests: find (or install) it, screenshot a URL, read the rendered DOM."""

from __future__ import annotations

import base64
import html as html_lib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
import websocket

REPO = Path(__file__).resolve().parents[1]
CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# How long the page's JavaScript may run before the screenshot or the DOM dump, in virtual time: chromium
# fast-forwards idle timers and stops the clock while requests are pending, so this costs seconds, not minutes.
# MLflow 3.17's chart view still shows spinners after 15 s of it and is drawn after 30 s; 60 s leaves a margin.
VIRTUAL_TIME_MS = 60_000


def find_chromium() -> str | None:
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


def ensure_chromium() -> str:
    """The chromium binary's path; installs Debian's `chromium` when missing and we are root, else skips the test."""
    path = find_chromium()
    if path:
        return path
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("chromium is not installed and we are not root to `apt-get install chromium`")
    if shutil.which("apt-get") is None:
        pytest.skip("chromium is not installed and there is no apt-get to install it")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    command = ["apt-get", "install", "-y", "-q", "chromium"]
    try:
        result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
        if result.returncode != 0:  # stale package lists: refresh them once and retry
            subprocess.run(["apt-get", "update", "-q"], capture_output=True, env=env, timeout=300)
            result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as error:
        pytest.skip(f"chromium is not installed and `apt-get install chromium` failed: {error}")
    path = find_chromium()
    if result.returncode != 0 or path is None:
        pytest.skip(f"chromium is not installed and `apt-get install chromium` failed: {result.stderr[-500:]}")
    return path


def screenshot_dir() -> Path:
    """Where screenshots go for a person to open: $CNNPIPE_SCREENSHOTS, else tests/screenshots/ in the repository."""
    folder = Path(os.environ.get("CNNPIPE_SCREENSHOTS") or REPO / "tests" / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _command(chromium: str, profile: str, window: tuple[int, int]) -> list[str]:
    return [
        chromium,
        "--headless",
        "--no-sandbox",  # root in a container: the sandbox cannot start
        "--disable-gpu",
        "--disable-dev-shm-usage",  # a container's small /dev/shm crashes the renderer
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-extensions",
        "--hide-scrollbars",
        "--mute-audio",
        f"--user-data-dir={profile}",
        f"--window-size={window[0]},{window[1]}",
    ]


def _run(
    chromium: str, url: str, flags: list[str], virtual_time_ms: int, window: tuple[int, int], timeout: float
) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="cnnpipe-chromium-") as profile:
        command = [*_command(chromium, profile, window), f"--virtual-time-budget={virtual_time_ms}", *flags, url]
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=profile, start_new_session=True
        )
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired as error:
            os.killpg(process.pid, signal.SIGKILL)  # chromium and its renderer, GPU and zygote processes
            process.communicate()
            raise AssertionError(f"chromium did not finish {url} within {timeout} s") from error
    result = subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
    assert result.returncode == 0, f"chromium failed on {url} ({result.returncode}): {stderr[-2000:]}"
    return result


def capture(
    url: str,
    path: Path,
    *,
    window: tuple[int, int] = (1600, 1000),
    virtual_time_ms: int = VIRTUAL_TIME_MS,
    timeout: float = 120,
    offline: bool = False,
) -> str:
    """One chromium run: a PNG of `url` written to `path`, and the rendered DOM (HTML) returned. `offline` cuts the
    page off the network: every http(s) request, loopback's too, goes to a proxy on the closed port 9 and fails."""
    path = Path(path).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    flags = [f"--screenshot={path}", "--dump-dom"]
    if offline:
        flags += ["--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>"]
    result = _run(ensure_chromium(), url, flags, virtual_time_ms, window, timeout)
    assert path.is_file() and path.stat().st_size > 0, f"chromium wrote no screenshot of {url}"
    return result.stdout


def visible_text(html: str) -> str:
    """The DOM's text: scripts, styles, SVGs and tags dropped, entities decoded, whitespace collapsed."""
    html = re.sub(r"(?is)<(script|style|svg)\b.*?</\1>", " ", html)
    text = html_lib.unescape(re.sub(r"(?s)<[^>]+>", " ", html))
    return re.sub(r"\s+", " ", text).strip()


class DevTools:
    """Chromium's DevTools protocol over its websocket: what a person does on a page (scroll, click) before the
    screenshot, which the command-line --screenshot cannot."""

    def __init__(self, url: str, timeout: float):
        self.socket = websocket.create_connection(url, timeout=timeout, suppress_origin=True)
        self.sent = 0

    def call(self, method: str, **params: object) -> dict:
        self.sent += 1
        self.socket.send(json.dumps({"id": self.sent, "method": method, "params": params}))
        while True:  # events arrive in between; the answer carries our id
            message = json.loads(self.socket.recv())
            if message.get("id") == self.sent:
                assert "error" not in message, f"{method}: {message['error']}"
                return message["result"]

    def evaluate(self, expression: str) -> object:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return result["result"].get("value")

    def click(self, selector_js: str) -> None:
        """A person's click at the middle of the element the JavaScript expression finds."""
        x, y = self.evaluate(
            f"(() => {{ const e = {selector_js}; e.scrollIntoView({{block: 'center'}});"
            " const r = e.getBoundingClientRect(); return [r.left + r.width / 2, r.top + r.height / 2]; })()"
        )
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

    def type(self, text: str) -> None:
        """Typed into the focused element, then Enter."""
        self.call("Input.insertText", text=text)
        for kind in ("keyDown", "keyUp"):
            self.call("Input.dispatchKeyEvent", type=kind, key="Enter", code="Enter", windowsVirtualKeyCode=13)


def capture_after(
    url: str,
    path: Path,
    ready: str,
    action: Callable[[DevTools], object],
    *,
    window: tuple[int, int] = (1600, 1000),
    timeout: float = 120,
) -> str:
    """A PNG of `url` once the JavaScript expression `ready` holds and `action` has acted on the page, written to
    `path`; the rendered DOM (HTML) returned."""
    path = Path(path).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="cnnpipe-chromium-") as profile:
        command = [*_command(ensure_chromium(), profile, window), "--remote-debugging-port=0", "about:blank"]
        process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        try:
            deadline = time.monotonic() + timeout
            port_file = Path(profile) / "DevToolsActivePort"
            while not port_file.is_file() or not port_file.read_text().strip():
                assert time.monotonic() < deadline and process.poll() is None, "chromium's DevTools did not start"
                time.sleep(0.2)
            port = port_file.read_text().split()[0]
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as answer:
                (target,) = [t for t in json.load(answer) if t["type"] == "page"]
            page = DevTools(target["webSocketDebuggerUrl"], timeout)
            page.call("Page.navigate", url=url)
            while not page.evaluate(f"Boolean({ready})"):
                assert time.monotonic() < deadline, f"{url}: `{ready}` never held (after {timeout} s)"
                time.sleep(0.5)
            action(page)
            time.sleep(2)  # let the page draw what the action changed
            path.write_bytes(base64.b64decode(page.call("Page.captureScreenshot", format="png")["data"]))
            return str(page.evaluate("document.documentElement.outerHTML"))
        finally:
            os.killpg(process.pid, signal.SIGKILL)  # chromium and its renderer, GPU and zygote processes
            process.wait()
