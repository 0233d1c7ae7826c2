"""MLflow tracking against a real SQLite store."""

import socket

import pytest
from mlflow.tracking import MlflowClient
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

from cnnpipe.config import MlflowConfig, parse_params
from cnnpipe.errors import CnnpipeError
from cnnpipe.tracking.logger import MlflowRunLogger
from cnnpipe.tracking.mlflow_run import check_reachable, flatten, metric_key, resolve_tracking_uri, start_run


def test_flatten_gives_dotted_keys():
    nested = {"train": {"lr": 0.1}, "model": {"layers": [{"type": "conv", "out": 8}]}, "data": {"classes": ["a"]}}
    assert flatten(nested) == {
        "train.lr": "0.1",
        "model.layers.0.type": "conv",
        "model.layers.0.out": "8",
        "data.classes": "['a']",
    }


def test_relative_sqlite_uri_is_anchored(tmp_path):
    assert resolve_tracking_uri("sqlite:///mlflow.db", tmp_path) == f"sqlite:///{tmp_path}/mlflow.db"
    assert resolve_tracking_uri("sqlite:////abs/m.db", tmp_path) == "sqlite:////abs/m.db"
    assert resolve_tracking_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"


def test_metric_keys_mlflow_accepts():
    assert metric_key("test/acc/T-shirt/top") == "test/acc/T-shirt/top"
    assert metric_key("test/acc/cats & dogs (big)") == "test/acc/cats _ dogs _big_"


def test_unreachable_server_is_a_clear_error():
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(
        CnnpipeError, match=rf"mlflow.tracking_uri: no MLflow tracking server answers at http://127.0.0.1:{port}"
    ):
        check_reachable(f"http://127.0.0.1:{port}", timeout=2)


def test_run_logs_flattened_params_truncated_and_reopens(tmp_path, raw_params):
    raw_params["data"]["classes"] = [f"class {i:04d}" + "x" * 30 for i in range(300)]  # longer than MLflow allows
    params = parse_params(raw_params)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    run = start_run(MlflowConfig(tracking_uri=uri, experiment="test"))
    run.log_params(params)
    run.log_metrics({"val/acc": 0.5}, step=0)
    again = start_run(MlflowConfig(tracking_uri=uri, experiment="test"), run_id=run.run_id)
    again.log_metrics({"val/acc": 0.7}, step=1)
    again.finish()
    stored = MlflowClient(uri).get_run(run.run_id)
    assert stored.data.params["train.lr"] == str(params.train.lr)
    assert stored.data.params["model.layers.0.type"] == "conv"
    assert len(stored.data.params["data.classes"]) == MAX_PARAM_VAL_LENGTH
    history = MlflowClient(uri).get_metric_history(run.run_id, "val/acc")
    assert [(m.step, m.value) for m in history] == [(0, 0.5), (1, 0.7)]
    assert stored.info.status == "FINISHED"
    assert "cnnpipe.version" in stored.data.tags


def test_a_resumed_logger_skips_the_steps_the_run_has_under_mlflows_key(tmp_path):
    """A class name MLflow does not allow in a key is stored as metric_key(name): a resumed training that redoes
    an epoch must recognise it under that name, or the epoch is logged twice."""
    cfg = MlflowConfig(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", experiment="test", system_metrics=False)
    first = MlflowRunLogger(cfg)
    first.log_metrics({"val/acc/cats & dogs": 0.5, "epoch": 0})
    resumed = MlflowRunLogger(cfg, resume_run_id=first.run.run_id)
    resumed.log_metrics({"val/acc/cats & dogs": 0.6, "epoch": 0})  # the epoch redone after a crash
    resumed.log_metrics({"val/acc/cats & dogs": 0.7, "epoch": 1})
    history = MlflowClient(cfg.tracking_uri).get_metric_history(first.run.run_id, "val/acc/cats _ dogs")
    assert [(m.step, m.value) for m in history] == [(0, 0.5), (1, 0.7)]
