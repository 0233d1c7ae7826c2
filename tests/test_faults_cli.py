"""Bad input to the params file and the tool commands (check, rf, kernels, compare), through the real CLI.

Every case must end in one line naming the key, file or argument, exit code 2, no traceback, and leave the
project folder as it was: its data/, metrics/ and plots/, its MLflow runs, and no file or folder created.
"""

from __future__ import annotations

import copy
import http.server
import os
import shutil
import sqlite3
import struct
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from tests.faults import refused_and_kept, run
from tests.helpers import REPO, write_params

KERNELS = ("kernels", "data/img.png", "--kernel", "sobel_x")
COMPARE = ("compare", "--experiment", "sweep")
CHECK = ("check", "--input", "1,28,28")
TYPOS = {  # params file -> (section path, misspelt key)
    "typo-top.yaml": ((), "trian"),
    "typo-section.yaml": (("train", "early_stopping"), "patiance"),
    "typo-layer.yaml": (("model", "layers", 0), "kernal"),
}


def _png_header(width: int, height: int) -> bytes:
    """A PNG that claims width x height greyscale pixels and holds none: a decompression bomb's header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def _inputs(root: Path) -> None:
    """The bad files the cases point at, beside the good ones."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    (root / "params-utf16.yaml").write_text((REPO / "params.yaml").read_text(), encoding="utf-16")
    (root / "params.bin").write_bytes(bytes(range(256)) * 8)
    (root / "params-dir").mkdir()
    for name, (section, key) in TYPOS.items():
        typo = copy.deepcopy(raw)
        holder = typo
        for part in section:
            holder = holder[part]
        holder[key] = 3
        write_params(root / name, typo)
    raw["mlflow"]["tracking_uri"] = "sqlite:///nostore.db"
    write_params(root / "nostore.yaml", raw)
    (root / "notes.txt").write_text("not a database\n")
    with sqlite3.connect(root / "other.db") as other:
        other.execute("CREATE TABLE photos (name TEXT)")
    (root / "reports").mkdir()
    (root / "bomb.png").write_bytes(_png_header(100_000, 100_000))
    (root / "full.png").symlink_to("/dev/full")


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """A project after a run: params.yaml, data/, metrics/, plots/, a real MLflow store with a finished run."""
    from cnnpipe.config import MlflowConfig
    from cnnpipe.tracking.mlflow_run import start_run

    root = tmp_path_factory.mktemp("template")
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    for folder in ("data/pulled", "metrics", "plots"):
        (root / folder).mkdir(parents=True)
    (root / "data/pulled/train.npy").write_bytes(b"\x93NUMPY pixels")
    (root / "metrics/test.json").write_text('{"accuracy": 0.92}\n')
    (root / "plots/confusion.png").write_bytes(b"\x89PNG figure")
    Image.fromarray((np.arange(400).reshape(20, 20) % 256).astype(np.uint8)).save(root / "data/img.png")
    tracked = start_run(MlflowConfig(tracking_uri=f"sqlite:///{root}/mlflow.db", experiment="sweep", run_name="done"))
    tracked.log_metrics({"test/accuracy": 0.92})
    tracked.finish()
    _inputs(root)
    return root


@pytest.fixture
def project(template, tmp_path) -> Path:
    return Path(shutil.copytree(template, tmp_path / "project", symlinks=True))


def _tree(root: Path) -> list[str]:
    return sorted(path.relative_to(root).as_posix() for path in root.rglob("*"))


CASES = {  # id -> (arguments, what the one line must name)
    "params in UTF-16": (("--params", "params-utf16.yaml", *CHECK), ("params-utf16.yaml", "UTF-16")),
    "params a binary file": (("--params", "params.bin", *CHECK), ("params.bin", "not UTF-8 text")),
    "params a directory": (("--params", "params-dir", *CHECK), ("params-dir", "is a directory")),
    "params top-level typo": (("--params", "typo-top.yaml", *CHECK), ("trian", "did you mean 'train'?", "mlflow")),
    "params section typo": (
        ("--params", "typo-section.yaml", *CHECK),
        ("train.early_stopping.patiance", "did you mean 'patience'?", "min_delta"),
    ),
    "params layer typo": (
        ("--params", "typo-layer.yaml", *CHECK),
        ("model.layers[0].kernal", "did you mean 'kernel'?", "a conv layer", "dilation"),
    ),
    "kernels stride 0": ((*KERNELS, "--stride", "0"), ("--stride", "1 to 20")),
    "kernels stride negative": ((*KERNELS, "--stride", "-2"), ("--stride", "1 to 20")),
    "kernels stride huge": ((*KERNELS, "--stride", str(10**20)), ("--stride", "1 to 20")),
    "kernels padding negative": ((*KERNELS, "--padding", "-1"), ("--padding", "0 to 2")),
    "kernels padding huge": ((*KERNELS, "--padding", "1000000"), ("--padding", "0 to 2")),
    "kernels image missing": (("kernels", "data/none.png", "--kernel", "sobel_x"), ("IMAGE", "data/none.png")),
    "kernels image bomb": (("kernels", "bomb.png", "--kernel", "sobel_x"), ("IMAGE", "bomb.png", "pixels")),
    "kernels output folder missing": ((*KERNELS, "--output", "nodir/map.png"), ("--output", "nodir", "not exist")),
    "kernels output not an image": ((*KERNELS, "--output", "map.txt"), ("--output", "'.txt'", ".png, ")),
    "kernels output no greyscale": ((*KERNELS, "--output", "map.xbm"), ("--output", "'.xbm'", ".png, ")),
    "kernels output a directory": ((*KERNELS, "--output", "reports"), ("--output", "reports", "directory")),
    "kernels output is IMAGE": ((*KERNELS, "--output", "./data/img.png"), ("--output", "IMAGE itself")),
    "kernels output disk full": ((*KERNELS, "--output", "full.png"), ("--output", "No space left on device")),
    "rf input zero": (("rf", "lecture", "--input", "0,28,28"), ("--input", "at least 1")),
    "rf input negative": (("rf", "lecture", "--input", "1,-28,28"), ("--input", "at least 1")),
    "rf input terabytes": (("rf", "torchvision:resnet18", "--input", "3,100000,100000"), ("--input", "4,194,304")),
    "check input terabytes": (("check", "--input", "3,100000,100000"), ("--input", "4,194,304")),
    "check one class": ((*CHECK, "--classes", "1"), ("--classes", "2 to 100,000")),
    "rf unknown model": (("rf", "lenet6"), ("MODEL", "lenet6", "lenet5")),
    "compare store a text file": (
        (*COMPARE, "--tracking-uri", "sqlite:///notes.txt"),
        ("--tracking-uri", "notes.txt", "not an MLflow database"),
    ),
    "compare store another database": (
        (*COMPARE, "--tracking-uri", "sqlite:///other.db"),
        ("--tracking-uri", "other.db", "no experiments and runs tables"),
    ),
    "compare store folder missing": (
        (*COMPARE, "--tracking-uri", "sqlite:///nodir/mlflow.db"),
        ("--tracking-uri", "nodir/mlflow.db", "does not exist"),
    ),
    "compare store a directory": ((*COMPARE, "--tracking-uri", "sqlite:///reports"), ("--tracking-uri", "directory")),
    "compare file store": ((*COMPARE, "--tracking-uri", "mlruns"), ("--tracking-uri", "MLFLOW_ALLOW_FILE_STORE")),
    "compare params store missing": (
        ("--params", "nostore.yaml", *COMPARE),
        ("nostore.yaml: mlflow.tracking_uri", "nostore.db", "does not exist"),
    ),
    "compare output folder missing": (
        (*COMPARE, "--tracking-uri", "sqlite:///mlflow.db", "--format", "md", "--output", "nodir/runs.md"),
        ("--output", "nodir"),
    ),
    "compare output a directory": (
        (*COMPARE, "--tracking-uri", "sqlite:///mlflow.db", "--format", "md", "--output", "reports"),
        ("--output", "reports", "directory"),
    ),
    "compare output without format": (
        (*COMPARE, "--tracking-uri", "sqlite:///mlflow.db", "--output", "runs.md"),
        ("--output", "--format"),
    ),
    "compare output disk full": (
        (*COMPARE, "--tracking-uri", "sqlite:///mlflow.db", "--format", "csv", "--output", "/dev/full"),
        ("--output", "No space left on device"),
    ),
}


@pytest.mark.parametrize(("args", "names"), CASES.values(), ids=CASES.keys())
def test_bad_input_is_one_line_and_changes_nothing(project, args, names):
    before = _tree(project)
    refused_and_kept(project, *args, names=names)
    assert _tree(project) == before, "a refused command created or removed files"


def test_dead_server_is_refused_at_once(project):
    start = time.monotonic()
    line = refused_and_kept(project, *COMPARE, "--tracking-uri", "http://127.0.0.1:9", names=("--tracking-uri",))
    assert time.monotonic() - start < 20  # no MLflow retries
    assert "no MLflow tracking server answers at http://127.0.0.1:9" in line


class _OtherService(http.server.BaseHTTPRequestHandler):
    """A web service that is not MLflow, on the port a user typed by mistake: 404 for every request."""

    def do_GET(self) -> None:
        self.send_error(404)

    def log_message(self, *args) -> None:
        """Quiet: its access log would land in the stderr that the in-process command is judged by."""


def test_a_web_server_that_is_not_mlflow(project):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _OtherService)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        line = refused_and_kept(project, *COMPARE, "--tracking-uri", url, names=("--tracking-uri",))
    finally:
        server.shutdown()
    assert f"no MLflow tracking server answers at {url} (Not Found)" in line


def test_unreadable_params_file(project):
    if os.geteuid() == 0:  # root reads any file it owns: take one that the kernel refuses even to root
        locked = Path("/proc/sys/vm/drop_caches")
        try:
            locked.read_bytes()
            pytest.skip("no file here is unreadable to root")
        except PermissionError:
            pass
    else:
        locked = project / "locked.yaml"
        shutil.copy(project / "params.yaml", locked)
        locked.chmod(0)
    refused_and_kept(project, "--params", str(locked), *CHECK, names=(str(locked), "Permission denied"))


def test_an_os_error_naming_a_file_is_one_line(project):
    # The manifest check finds a path but cannot read it: the last-resort handler in cli.main names the file.
    (project / "data/pulled/manifest.json").mkdir()
    refused_and_kept(project, "rf", "params", names=("data/pulled/manifest.json", "Is a directory"))


def test_input_that_is_not_c_h_w_stays_an_argparse_error(project):
    result = run("check", "--input", "1,28", cwd=project)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith("usage: cnnpipe check") and "--input must be C,H,W" in result.stderr
