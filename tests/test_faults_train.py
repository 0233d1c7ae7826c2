"""Fault injection for check, augment, train and evaluate: bad params, broken files, a tracking store that
cannot be used, Ctrl-C, and failing stages under real `dvc repro`. Each case starts from a folder that
already holds a finished pipeline (a real training, a real SQLite MLflow store) and asserts that the command
says one clear line and that nothing there is lost or left RUNNING (tests/faults.py)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.faults import assert_kept, during_training, mlflow_runs, refused_and_kept, report, run, snapshot
from tests.helpers import SMALL_RUN, dvc_repo, run_cnnpipe, sh, small_run_params, stage_runs, write_params


@pytest.fixture(scope="module")
def finished(tmp_path_factory, prepared_data) -> Path:
    """A folder after pull, augment, train and evaluate, made once for this module."""
    root = tmp_path_factory.mktemp("finished")
    raw = small_run_params(yaml.safe_load((Path(__file__).parents[1] / "params.yaml").read_text()), root)
    raw["mlflow"]["tracking_uri"] = "sqlite:///mlflow.db"  # relative: a copy of the folder has its own store
    write_params(root / "params.yaml", raw)
    shutil.copytree(prepared_data, root / "data")
    run_cnnpipe("train", cwd=root)
    run_cnnpipe("evaluate", cwd=root)
    return root


@pytest.fixture
def done(tmp_path, finished) -> Path:
    """A private copy of `finished`, its run.json pointing at the copy's own MLflow store."""
    root = tmp_path / "done"
    shutil.copytree(finished, root)
    run_file = root / "data/train/run.json"
    run_file.write_text(run_file.read_text().replace(str(finished), str(root)))
    return root


def with_params(root: Path, **changes: object) -> Path:
    """params.yaml of `root` with dotted keys changed, e.g. with_params(root, **{"train.devices": []})."""
    raw = yaml.safe_load((root / "params.yaml").read_text())
    for dotted, value in changes.items():
        section, key = dotted.split(".", 1)
        raw[section][key] = value
    return write_params(root / "params.yaml", raw)


BAD_TRAIN_PARAMS = [  # (params changed, what the one line must name)
    ({"mlflow.tracking_uri": "sqllite:///mlflow.db"}, "mlflow.tracking_uri"),
    ({"mlflow.tracking_uri": "file:./mlruns"}, "mlflow.tracking_uri"),
    ({"mlflow.tracking_uri": "http://127.0.0.1:9"}, "mlflow.tracking_uri"),
    ({"mlflow.tracking_uri": "sqlite:////proc/cnnpipe/mlflow.db"}, "mlflow.tracking_uri"),  # cannot be created
    ({"mlflow.tracking_uri": "sqlite:///data/pulled"}, "mlflow.tracking_uri"),  # a directory
    ({"train.accelerator": "gpu"}, "train.accelerator"),
    ({"train.devices": []}, "train.devices"),
    ({"train.limit_train_batches": 1.5}, "train.limit_train_batches"),
    ({"train.limit_val_batches": 0}, "train.limit_val_batches"),
    ({"train.precision": "16-mixed"}, "train.precision"),
    ({"train.sync_batchnorm": True}, "train.sync_batchnorm"),
    ({"model.fixed_first_layer": ["sobel_x", "no_such_kernel"]}, "model.fixed_first_layer[1]"),
    ({"model.fixed_first_layer": ["sobel_x"]}, "model.fixed_first_layer"),
]


@pytest.mark.parametrize(("changes", "named"), BAD_TRAIN_PARAMS, ids=[named for _, named in BAD_TRAIN_PARAMS])
@pytest.mark.parametrize("command", ["train", "check"])
def test_bad_train_settings_are_refused_before_anything_is_touched(done, changes, named, command):
    with_params(done, **changes)
    refused_and_kept(done, command, names=(named,))


def test_an_impossible_network_names_its_layer(done):
    raw = yaml.safe_load((done / "params.yaml").read_text())
    raw["model"]["layers"].insert(4, {"type": "maxpool", "kernel": 16})
    write_params(done / "params.yaml", raw)
    refused_and_kept(done, "train", names=("maxpool2",))


def test_a_tracking_store_that_is_not_a_database_is_refused(done):
    (done / "mlflow.db").write_text("not a database")
    for command in ("train", "evaluate"):
        refused_and_kept(done, command, names=("mlflow.db",))


def test_a_deleted_experiment_is_refused_by_name(done):
    client = MlflowClient(f"sqlite:///{done}/mlflow.db")
    client.delete_experiment(client.get_experiment_by_name(SMALL_RUN).experiment_id)
    refused_and_kept(done, "train", names=("mlflow.experiment", SMALL_RUN))


def _truncate(path: Path, keep: int = 1000) -> None:
    path.write_bytes(path.read_bytes()[:keep])


@pytest.mark.parametrize("command", ["train", "evaluate", "augment", "check"])
def test_a_truncated_store_file_is_named(done, command):
    _truncate(done / "data/pulled/train_images.npy")
    refused_and_kept(done, command, names=("data/pulled/train_images.npy",))


def test_a_store_file_altered_in_place_fails_its_checksum(done):
    labels = done / "data/pulled/test_labels.npy"
    data = bytearray(labels.read_bytes())
    data[-1] ^= 1  # one label changed, same size: only the checksum can tell
    labels.write_bytes(bytes(data))
    line = refused_and_kept(done, "evaluate", names=("data/pulled/test_labels.npy",))
    assert "SHA-256" in line


def test_a_missing_store_is_named(done):
    (done / "data/pulled/manifest.json").unlink()
    refused_and_kept(done, "train", names=("data/pulled",))


@pytest.mark.parametrize(
    ("damage", "named"),
    [
        (lambda root: _truncate(root / "data/train/model.ckpt"), "data/train/model.ckpt"),
        (lambda root: (root / "data/train/model.ckpt").write_text("{}"), "data/train/model.ckpt"),
        (lambda root: (root / "data/train/run.json").write_text("garbage"), "data/train/run.json"),
        (lambda root: (root / "data/train/run.json").write_text('{"run_id": 3}'), "data/train/run.json"),
        (lambda root: (root / "data/train/run.json").unlink(), "data/train/run.json"),
        (lambda root: (root / "data/train/model.ckpt").unlink(), "data/train/model.ckpt"),
    ],
    ids=["truncated-model", "foreign-model", "garbage-run-file", "run-file-without-uri", "no-run-file", "no-model"],
)
def test_evaluate_refuses_broken_training_outputs(done, damage, named):
    damage(done)
    refused_and_kept(done, "evaluate", names=(named,))


def test_evaluate_of_a_training_logged_elsewhere_is_a_run_of_its_own_said_plainly(done):
    """A teammate's model (its run in another store) is evaluated into this store, and the console says so."""
    run_file = done / "data/train/run.json"
    record = json.loads(run_file.read_text())
    run_file.write_text(json.dumps({**record, "run_id": "0" * 32}))
    result = run_cnnpipe("evaluate", cwd=done)
    (note,) = [line for line in result.stderr.splitlines() if "0" * 32 in line]
    assert note.startswith("warning: MLflow run 00000000") and "a run of its own" in note
    statuses = mlflow_runs(done / "mlflow.db")
    assert list(statuses.values()).count("FINISHED") == 3  # the training, its evaluation, and this one


def test_evaluate_refuses_a_store_that_is_gone_instead_of_creating_one(done):
    run_file = done / "data/train/run.json"
    record = json.loads(run_file.read_text())
    run_file.write_text(json.dumps({**record, "tracking_uri": f"sqlite:///{done}/elsewhere/mlflow.db"}))
    refused_and_kept(done, "evaluate", names=("data/train/run.json",))
    assert not (done / "elsewhere").exists()


@pytest.mark.parametrize(
    ("transform", "named"),
    [
        ({"Normalize": {}}, "augment.transforms[0] (Normalize)"),
        ({"ToFloat": {}}, "augment.transforms[0] (ToFloat)"),
        ({"Resize": {"height": 32, "width": 32}}, "augment.transforms"),
    ],
    ids=["Normalize", "ToFloat", "Resize"],
)
def test_augment_refuses_a_pipeline_whose_images_training_cannot_take(done, transform, named):
    with_params(done, **{"augment.transforms": [transform]})
    refused_and_kept(done, "augment", names=(named,))


def test_a_truncated_last_checkpoint_is_set_aside_and_a_new_run_with_its_own_name_starts(done):
    state_file = done / "data/checkpoints/state.json"
    state = json.loads(state_file.read_text())
    state_file.write_text(json.dumps({**state, "completed": False}))  # as after a crash: it would be resumed
    _truncate(done / "data/checkpoints/last.ckpt")
    result = run("train", cwd=done)  # a real process: training sets torch's threads and seeds
    assert result.returncode == 0 and "Traceback" not in result.stderr, f"FAULT-TRACEBACK: {result.stderr[-2000:]}"
    assert "last.ckpt cannot be resumed" in result.stderr
    assert (done / "data/checkpoints/last.ckpt.unreadable").exists()
    _, runs = stage_runs(done)
    # two seeded trainings: MLflow's generated names came from the seeded `random` and were equal
    assert len(runs) == 2 and len({r.info.run_name for r in runs}) == 2, [r.info.run_name for r in runs]


def test_ctrl_c_exits_130_and_ends_the_run_killed_keeping_the_stage_outputs(done):
    with_params(done, **{"train.epochs": 50})
    before = snapshot(done)
    stopped = during_training(done, lambda process: process.send_signal(signal.SIGINT))  # once an epoch is done
    assert "Traceback" not in stopped.stderr, f"FAULT-TRACEBACK: {stopped.stderr[-2000:]}"
    assert stopped.returncode == 130, f"FAULT-UNCLEAR: exit {stopped.returncode}, not 130"
    after = snapshot(done)
    kept = {path: digest for path, digest in before.files.items() if not path.startswith("data/checkpoints")}
    assert_kept(before.__class__(kept, before.runs), after)
    assert sorted(after.runs.values()) == ["FINISHED", "FINISHED", "KILLED"]  # training, its evaluation; this


# ---- under `dvc repro`: DVC would delete a stage's outputs before running it --------------------------------


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory, prepared_data) -> Path:
    """A temporary git + DVC repository after one whole `dvc repro`, made once for this module."""
    root = tmp_path_factory.mktemp("reproduced")
    raw = small_run_params(yaml.safe_load((Path(__file__).parents[1] / "params.yaml").read_text()), root)
    dvc_repo(root, raw)
    sh("dvc", "repro", cwd=root)
    return root


@pytest.fixture
def pipeline(tmp_path, reproduced) -> Path:
    root = tmp_path / "repo"
    shutil.copytree(reproduced, root, symlinks=True)
    run_file = root / "data/train/run.json"
    run_file.chmod(0o644)
    run_file.write_text(run_file.read_text().replace(str(reproduced), str(root)))
    sh("dvc", "commit", "-f", "-q", cwd=root)  # the copy's run.json is its own
    return root


def dvc_repro(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    return subprocess.run(["dvc", "repro"], cwd=root, capture_output=True, text=True, env=env)


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("changes", "failing", "named"),
    [
        ({"mlflow.tracking_uri": "http://127.0.0.1:9"}, "train", "mlflow.tracking_uri"),
        ({"augment.transforms": [{"Normalize": {}}]}, "augment", "augment.transforms[0] (Normalize)"),
        ({"train.limit_train_batches": 1.5}, "train", "train.limit_train_batches"),
    ],
    ids=["dead-server", "float-transform", "bad-lightning-setting"],
)
def test_a_failing_stage_under_dvc_repro_keeps_every_earlier_output(pipeline, changes, failing, named):
    """train's outputs persist through a failure; augment's (DVC deleted them) come back with `dvc checkout`."""
    with_params(pipeline, **changes)
    before = snapshot(pipeline)
    result = dvc_repro(pipeline)
    if failing == "augment":
        sh("dvc", "checkout", "augment", cwd=pipeline)
    output = result.stdout + result.stderr
    assert "Traceback" not in output, f"FAULT-TRACEBACK: {output[-2000:]}"
    assert result.returncode != 0, "FAULT-SILENT: dvc repro succeeded"
    assert f"failed to reproduce '{failing}'" in output
    (line,) = [line for line in output.splitlines() if line.startswith("cnnpipe: error:")]
    assert named in line
    assert_kept(before, snapshot(pipeline))
    report(["dvc", "repro"], line)


@pytest.mark.e2e
def test_a_failing_evaluate_under_dvc_repro_keeps_its_plots_and_metrics(pipeline):
    with_params(pipeline, **{"evaluate.misclassified": 4})
    (pipeline / "mlflow.db").write_text("not a database")  # the store broke after training
    before = snapshot(pipeline)
    result = dvc_repro(pipeline)
    assert "Traceback" not in result.stdout + result.stderr, f"FAULT-TRACEBACK: {result.stderr[-2000:]}"
    assert result.returncode != 0 and "failed to reproduce 'evaluate'" in result.stdout + result.stderr
    assert_kept(before, snapshot(pipeline))
    assert mlflow_runs(pipeline / "mlflow.db") == {}  # unreadable: nothing was written into it either
    report(["dvc", "repro"], next(line for line in result.stderr.splitlines() if line.startswith("cnnpipe: error:")))
