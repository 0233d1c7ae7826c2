"""Headless Debian `chromium` for the UI tests: find (or install) it, screenshot a URL, read the rendered DOM."""

from __future__ import annotations

import html as html_lib
import os
import re
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest

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


def _run(
    chromium: str, url: str, flags: list[str], virtual_time_ms: int, window: tuple[int, int], timeout: float
) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="cnnpipe-chromium-") as profile:
        command = [
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
            f"--virtual-time-budget={virtual_time_ms}",
            *flags,
            url,
        ]
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
