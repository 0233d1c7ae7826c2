"""Shared fixtures: the repository's own params.yaml as the base every test varies."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def raw_params() -> dict[str, Any]:
    """A fresh copy of params.yaml's contents, to modify in a test."""
    return copy.deepcopy(yaml.safe_load((REPO / "params.yaml").read_text()))


def write_params(path: Path, raw: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path
