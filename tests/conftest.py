"""Shared fixtures: the repository's own params.yaml as the base every test varies."""

from __future__ import annotations

import copy
import os
import shutil
import signal
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from tests.helpers import REPO, dvc_repo, run_cnnpipe, small_run_params, write_params


@pytest.fixture(autouse=True)
def python_handles_ctrl_c():
    """Every test starts with Python's own Ctrl-C handling, as a fresh process has it. A library that handled a
    KeyboardInterrupt in this process may leave SIGINT ignored (Lightning does, for good), and an ignored SIGINT
    is inherited by every subprocess a test starts, which then cannot be interrupted (a flaky Ctrl-C test)."""
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session", autouse=True)
def share_the_cores_between_test_workers():
    """Under pytest-xdist each worker computes on its share of the cores: two workers with torch's default of
    one thread per core would oversubscribe them, and a spinning OpenMP thread waits for a descheduled one."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


@pytest.fixture(scope="session", autouse=True)
def no_dvc_analytics():
    """`dvc init` reports itself before any config can say no: without this every temp repository left a report
    file in /tmp and a daemon trying to send it (hundreds per suite). The repositories' config says no as well."""
    os.environ["DVC_NO_ANALYTICS"] = "1"


@pytest.fixture
def raw_params() -> dict[str, Any]:
    """A fresh copy of params.yaml's contents, to modify in a test."""
    return copy.deepcopy(yaml.safe_load((REPO / "params.yaml").read_text()))


@pytest.fixture
def repo(tmp_path, raw_params):
    return dvc_repo(tmp_path, small_run_params(raw_params, tmp_path))


@pytest.fixture(scope="session")
def prepared_data(tmp_path_factory) -> Path:
    """data/pulled and data/augmented for small_run_params, made once per session by the real stages."""
    root = tmp_path_factory.mktemp("prepared")
    write_params(root / "params.yaml", small_run_params(yaml.safe_load((REPO / "params.yaml").read_text()), root))
    run_cnnpipe("pull", cwd=root)
    run_cnnpipe("augment", cwd=root)
    return root / "data"


@pytest.fixture
def workdir(tmp_path, raw_params, prepared_data):
    """A folder with params.yaml and the pulled, augmented data: what train and evaluate start from."""
    write_params(tmp_path / "params.yaml", small_run_params(raw_params, tmp_path))
    shutil.copytree(prepared_data, tmp_path / "data")
    return tmp_path
