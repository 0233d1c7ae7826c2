"""A copied or moved SQLite store keeps its artifacts beside it: real MLflow stores, copied with shutil."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pytorch
import mlflow.tracking._model_registry.utils as registry_utils
import mlflow.tracking._tracking_service.utils as tracking_utils
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from cnnpipe.errors import CnnpipeError
from cnnpipe.tracking.mlflow_run import _artifact_location
from cnnpipe.tracking.relocate import folder_name, relocate_store

MODEL = "relocated-linear"


def uri(folder: Path) -> str:
    return f"sqlite:///{folder}/mlflow.db"


@pytest.fixture
def use_store(monkeypatch):
    """Points mlflow's fluent API (log_model, load_model) at a store; the previous URIs come back afterwards."""
    monkeypatch.setattr(tracking_utils, "_tracking_uri", tracking_utils._tracking_uri)
    monkeypatch.setattr(registry_utils, "_registry_uri", registry_utils._registry_uri)
    for exported in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):  # set_*_uri export these to subprocesses
        monkeypatch.setenv(exported, "")  # recorded, so that monkeypatch puts back what was there (or nothing)
        monkeypatch.delenv(exported)

    def use(folder: Path) -> None:
        mlflow.set_tracking_uri(uri(folder))
        mlflow.set_registry_uri(uri(folder))

    return use


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory) -> Path:
    """A new MLflow database, its tables made once: MLflow's migrations take seconds per store."""
    folder = tmp_path_factory.mktemp("empty")
    MlflowClient(tracking_uri=uri(folder)).search_experiments()
    return folder / "mlflow.db"


def make_store(
    folder: Path, monkeypatch, empty: Path | None = None, use_store=None, experiments: dict[str, str] | None = None
) -> dict[str, Any]:
    """A store with cnnpipe's layout in `folder`: experiment `cnn` at folder/mlruns/cnn, a run with two artifacts
    and (with `use_store`) a registered pytorch model and a trace. Without `empty` (a copy of which saves
    MLflow's migrations) MLflow creates the database from inside `folder`, as cnnpipe runs from the repository
    root, so its Default experiment lands in folder/mlruns/0, a bare path."""
    folder.mkdir(parents=True)
    if empty is not None:
        shutil.copy(empty, folder / "mlflow.db")
    monkeypatch.chdir(folder)
    client = MlflowClient(tracking_uri=uri(folder))
    ids = {"cnn": client.create_experiment("cnn", _artifact_location(uri(folder), "cnn"))}
    for name, location in (experiments or {}).items():
        ids[name] = client.create_experiment(name, location)
    run = client.create_run(ids["cnn"])
    (folder / "notes.txt").write_text("from the original")
    client.log_artifact(run.info.run_id, str(folder / "notes.txt"))
    client.log_text(run.info.run_id, "nested", "sub/nested.txt")
    store: dict[str, Any] = {"client": client, "ids": ids, "run_id": run.info.run_id}
    if use_store is not None:
        use_store(folder)
        torch.manual_seed(0)
        store["network"] = torch.nn.Linear(2, 1)
        with mlflow.start_run(run_id=run.info.run_id):
            info = mlflow.pytorch.log_model(
                store["network"],
                name="model",
                registered_model_name=MODEL,
                input_example=np.zeros((1, 2), dtype=np.float32),
                pip_requirements=["torch"],
            )
            with mlflow.start_span("probe") as span:
                span.set_inputs({"x": 1})
        mlflow.flush_trace_async_logging()
        store["model_id"] = info.model_id
        store["trace_id"] = mlflow.get_last_active_trace_id()
    client.set_terminated(run.info.run_id)
    monkeypatch.chdir(folder.parent)
    return store


def digest(folder: Path) -> dict[str, str]:
    """Every file under `folder` with its content's hash: what 'untouched' means."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def cells_naming(db_path: Path, text: str) -> list[tuple[str, str, str]]:
    """Every text cell, of every table and column of the database, that contains `text`."""
    found = []
    with closing(sqlite3.connect(db_path)) as db:
        for (table,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'"):
            for column in [row[1] for row in db.execute(f'PRAGMA table_info("{table}")')]:
                query = f'SELECT "{column}" FROM "{table}" WHERE instr(CAST("{column}" AS TEXT), ?) > 0'
                found += [(table, column, str(value)) for (value,) in db.execute(query, (text,))]
    return found


def locations(db_path: Path) -> dict[str, str]:
    with closing(sqlite3.connect(db_path)) as db:
        return dict(db.execute("SELECT name, artifact_location FROM experiments"))


def test_a_copied_store_writes_and_reads_its_own_artifacts(tmp_path, monkeypatch, use_store):
    # spaces and a non-ASCII letter: MLflow stores these folders percent-encoded in its file:// URIs
    original, copy = tmp_path / "orig repö", tmp_path / "copy repö"
    store = make_store(original, monkeypatch, use_store=use_store)
    before = digest(original)
    shutil.copytree(original, copy)

    message = relocate_store(copy / "mlflow.db", "cnn")

    # run, logged model, model version, trace, both experiments (cnn and the bare-path Default)
    assert message == f"mlflow.db was moved or copied from {original}: 6 artifact paths now point into {copy}/mlruns"
    assert cells_naming(copy / "mlflow.db", original.name) == []
    assert cells_naming(copy / "mlflow.db", "orig%20rep") == []
    assert relocate_store(copy / "mlflow.db", "cnn") is None  # idempotent

    client = MlflowClient(tracking_uri=uri(copy))
    run = client.create_run(store["ids"]["cnn"])  # as cnnpipe's start_run opens one
    (tmp_path / "new.txt").write_text("from the copy")
    client.log_artifact(run.info.run_id, str(tmp_path / "new.txt"))
    client.set_terminated(run.info.run_id)
    assert (copy / "mlruns" / "cnn" / run.info.run_id / "artifacts" / "new.txt").read_text() == "from the copy"
    assert (
        client.get_trace(store["trace_id"])
        .info.tags["mlflow.artifactLocation"]
        .startswith((copy / "mlruns" / "cnn").as_uri() + "/")
    )
    assert digest(original) == before  # the original's database and artifacts: not a byte changed

    shutil.rmtree(original)
    downloaded = Path(client.download_artifacts(store["run_id"], "", str(tmp_path / "dl1")))
    assert (downloaded / "notes.txt").read_text() == "from the original"
    assert (downloaded / "sub" / "nested.txt").read_text() == "nested"
    path = mlflow.artifacts.download_artifacts(
        run_id=store["run_id"], artifact_path="notes.txt", tracking_uri=uri(copy), dst_path=str(tmp_path / "dl2")
    )
    assert Path(path).read_text() == "from the original"
    use_store(copy)
    example = torch.tensor([[1.0, -2.0]])
    expected = store["network"](example).detach()
    for model_uri in (f"models:/{MODEL}/1", f"models:/{store['model_id']}"):
        assert torch.allclose(mlflow.pytorch.load_model(model_uri)(example).detach(), expected)


def test_locations_outside_the_old_mlruns_are_left_alone(tmp_path, monkeypatch, empty_store):
    original, copy = tmp_path / "a", tmp_path / "b"
    others = {
        "cnn2": (original / "mlruns" / "cnn2").as_uri(),  # another experiment of the same repository
        "renamed": (original / "mlruns" / "old-name").as_uri(),  # still in its mlruns
        "own": (original / "artifacts" / "own").as_uri(),  # in the repository, but not its mlruns
        "sibling": (tmp_path / "a2" / "mlruns" / "sibling").as_uri(),  # a prefix of the folder's name, not it
        "shared": (tmp_path / "shared" / "mlruns" / "shared").as_uri(),  # cnnpipe's layout, another folder
        "s3": "s3://bucket/cnnpipe",
        "server": "mlflow-artifacts:/cnnpipe",
    }
    store = make_store(original, monkeypatch, empty_store, experiments=others)
    shutil.copytree(original, copy)
    was = locations(copy / "mlflow.db")

    assert relocate_store(copy / "mlflow.db", "cnn") is not None
    now = locations(copy / "mlflow.db")

    # (Default, made where the empty database was made, is elsewhere too)
    assert {name for name in now if now[name] != was[name]} == {"cnn", "cnn2", "renamed"}
    assert now["cnn2"] == (copy / "mlruns" / "cnn2").as_uri()
    assert now["renamed"] == (copy / "mlruns" / "old-name").as_uri()
    client = MlflowClient(tracking_uri=uri(copy))
    run = client.create_run(store["ids"]["cnn2"])
    client.log_text(run.info.run_id, "second experiment", "x.txt")
    assert (copy / "mlruns" / "cnn2" / run.info.run_id / "artifacts" / "x.txt").is_file()
    assert not (original / "mlruns" / "cnn2").exists()


def test_nothing_to_do_changes_nothing(tmp_path, monkeypatch, empty_store):
    original, copy = tmp_path / "a", tmp_path / "b"
    make_store(
        original,
        monkeypatch,
        empty_store,
        experiments={"s3": "s3://bucket/x", "shared": (tmp_path / "shared").as_uri()},
    )
    assert relocate_store(original / "mlflow.db", "cnn") is None  # where it was made
    shutil.copytree(original, copy)
    before = digest(copy)
    for experiment in ("no such experiment", "s3", "shared"):
        assert relocate_store(copy / "mlflow.db", experiment) is None
    assert digest(copy) == before
    assert relocate_store(tmp_path / "missing" / "mlflow.db", "cnn") is None
    assert not (tmp_path / "missing").exists()
    (tmp_path / "tables.db").touch()
    assert relocate_store(tmp_path / "tables.db", "cnn") is None  # not an MLflow store: sqlite_problem's to say


@pytest.fixture
def copied(tmp_path, monkeypatch, empty_store) -> tuple[Path, Path, Path]:
    """A store made in a/ and copied to b/: (a, b, b's mlflow.db)."""
    original, copy = tmp_path / "a", tmp_path / "b"
    make_store(original, monkeypatch, empty_store)
    shutil.copytree(original, copy)
    return original, copy, copy / "mlflow.db"


def test_a_failed_rewrite_leaves_the_database_as_it_was(copied):
    original, copy, db_path = copied
    with closing(sqlite3.connect(db_path)) as db:  # a real SQLite failure after the experiments are rewritten
        db.execute("CREATE TRIGGER refuse BEFORE UPDATE ON runs BEGIN SELECT RAISE(ABORT, 'refused'); END")
        db.commit()
    before = digest(copy)

    with pytest.raises(CnnpipeError, match=rf"^{re.escape(str(db_path))}: .*\(refused\)") as failed:
        relocate_store(db_path, "cnn")
    assert "\n" not in str(failed.value)
    assert digest(copy) == before
    assert locations(db_path)["cnn"] == (original / "mlruns" / "cnn").as_uri()

    with closing(sqlite3.connect(db_path)) as db:
        db.execute("DROP TRIGGER refuse")
        db.commit()
    assert relocate_store(db_path, "cnn") is not None
    assert cells_naming(db_path, str(original)) == []


def test_a_locked_database_is_one_line_and_untouched(copied):
    original, copy, db_path = copied
    before = digest(copy)
    with closing(sqlite3.connect(db_path, isolation_level=None)) as other:
        other.execute("BEGIN IMMEDIATE")  # another writer holds it (a training in another terminal)
        with pytest.raises(CnnpipeError, match=rf"^{re.escape(str(db_path))}: .*database is locked") as failed:
            relocate_store(db_path, "cnn", wait=0.2)
        other.execute("ROLLBACK")
    assert "\n" not in str(failed.value)
    assert digest(copy) == before
    assert relocate_store(db_path, "cnn") is not None


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes read-only files anyway")
def test_a_read_only_database_is_one_line_and_untouched(copied):
    original, copy, db_path = copied
    before = digest(copy)
    db_path.chmod(0o444)
    try:
        with pytest.raises(CnnpipeError, match=rf"^{re.escape(str(db_path))}: .*readonly"):
            relocate_store(db_path, "cnn")
        assert digest(copy) == before
    finally:
        db_path.chmod(0o644)


def test_the_message_is_one_line_whatever_the_folder_is_called(tmp_path, monkeypatch, empty_store):
    original, copy = tmp_path / "a", tmp_path / "moved\nhere"
    make_store(original, monkeypatch, empty_store)
    shutil.copytree(original, copy)

    message = relocate_store(copy / "mlflow.db", "cnn")

    assert message is not None and "\n" not in message
    assert message.startswith(f"mlflow.db was moved or copied from {original}: ")
    assert message.endswith(" artifact paths now point into " + str(copy / "mlruns").replace("\n", "\\n"))
    assert locations(copy / "mlflow.db")["cnn"] == (copy / "mlruns" / "cnn").as_uri()


@pytest.mark.parametrize("experiment", ["cnn", "fashion mnist/v2", "ünï:cöde", "a.b-c_d"])
def test_the_folder_name_is_the_one_mlflow_run_creates(experiment):
    expected = (Path("/r/mlruns") / folder_name(experiment)).as_uri()
    assert _artifact_location("sqlite:////r/mlflow.db", experiment) == expected
