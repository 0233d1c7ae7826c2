"""`dvc plots show` draws the Loss and Accuracy charts with no network: `make setup` inlines vega, vega-lite and
vega-embed (npm) into the page template .dvc/config names. DVC's default page, from its CDN, draws nothing offline."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import yaml

from tests.browser import capture, screenshot_dir
from tests.helpers import REPO, sh

TEMPLATE = REPO / ".dvc" / "plots_template.html"  # plots.html_template in .dvc/config, written by `make setup`
HISTORY = """epoch,train/loss,val/loss,train/acc,val/acc
0,0.90,0.70,0.62,0.71
1,0.55,0.48,0.78,0.81
2,0.41,0.40,0.84,0.85
3,0.35,0.37,0.87,0.86
"""
# vega's SVG for one series of a line chart: <path aria-label="...; field: val/loss" ... d="M0,12L100,40...">
LINE = re.compile(r'<path aria-label="[^"]*; field: ([^"]+)"[^>]*aria-roledescription="line mark" d="M[^"]*L')
REMOTE_SCRIPT = re.compile(r"<script[^>]*\ssrc=[\"']?https?:", re.IGNORECASE)

pytestmark = pytest.mark.skipif(
    shutil.which("npm") is None, reason="npm is not installed: make setup leaves DVC's CDN scripts (online only)"
)


def show_offline(root: Path, out: Path, png: Path) -> tuple[str, str]:
    """`dvc plots show -o out` in `root`, then the page opened in chromium with no network: the page's HTML as DVC
    wrote it, and its DOM once drawn (vega draws within a few hundred ms of the page's virtual time)."""
    sh("dvc", "plots", "show", "-o", str(out), cwd=root)
    index = out / "index.html"
    return index.read_text(), capture(index.as_uri(), png, window=(1000, 450), virtual_time_ms=10_000, offline=True)


def drawn_lines(dom: str, plots: list[str]) -> dict[str, set[str]]:
    """For each plot id, the fields whose line vega drew in that plot's <div>."""
    bounds = [dom.index(f'<div id="{plot}"') for plot in plots] + [len(dom)]
    return {plot: set(LINE.findall(dom[bounds[i] : bounds[i + 1]])) for i, plot in enumerate(plots)}


def test_plots_show_draws_offline(tmp_path: Path) -> None:
    if not TEMPLATE.is_file():
        pytest.skip(f"{TEMPLATE.relative_to(REPO)} is missing: run `make setup`")
    # The project's own Loss and Accuracy definitions (dvc.yaml's top-level plots), over a few epochs of history.
    charts = [plot for plot in yaml.safe_load((REPO / "dvc.yaml").read_text())["plots"] if isinstance(plot, dict)]
    names = [next(iter(chart)) for chart in charts]
    assert names == ["Loss", "Accuracy"]
    root = tmp_path / "repo"
    (root / "metrics").mkdir(parents=True)
    (root / "metrics" / "train_history.csv").write_text(HISTORY)
    (root / "dvc.yaml").write_text(yaml.safe_dump({"plots": charts}, sort_keys=False))
    sh("dvc", "init", "--no-scm", "-q", cwd=root)
    shutil.copy(REPO / ".dvc" / "config", root / ".dvc" / "config")
    shutil.copy(TEMPLATE, root / ".dvc" / TEMPLATE.name)

    # -o outside the repository: the page must not depend on where it is written
    page, dom = show_offline(root, tmp_path / "offline", screenshot_dir() / "dvc-plots-offline.png")
    assert not REMOTE_SCRIPT.search(page), "the page loads scripts from the network: run `make setup` with npm"
    assert drawn_lines(dom, names) == {"Loss": {"train/loss", "val/loss"}, "Accuracy": {"train/acc", "val/acc"}}

    # The check can fail: DVC's own page, whose scripts come from a CDN, draws nothing offline.
    sh("dvc", "config", "--unset", "plots.html_template", cwd=root)
    page, dom = show_offline(root, tmp_path / "cdn", tmp_path / "cdn.png")
    assert REMOTE_SCRIPT.search(page)
    assert drawn_lines(dom, names) == {"Loss": set(), "Accuracy": set()}
