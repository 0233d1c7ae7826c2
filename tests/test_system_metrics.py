"""MLflow system metrics for a run addressed by id, against a real SQLite store."""

import threading
import time

import pytest
from mlflow.tracking import MlflowClient

from cnnpipe.config import MlflowConfig
from cnnpipe.tracking.mlflow_run import start_run
from cnnpipe.tracking.system_metrics import SystemMetrics

CPU = "system/cpu_utilization_percentage"  # the names MLflow 3's CPUMonitor logs, with the "system/" prefix
MEMORY = "system/system_memory_usage_megabytes"


@pytest.fixture(autouse=True)
def _mlflow_defaults(monkeypatch):
    """MLflow's environment variables would override the interval these tests set."""
    for name in ("SAMPLING_INTERVAL", "SAMPLES_BEFORE_LOGGING", "NODE_ID"):
        monkeypatch.delenv(f"MLFLOW_SYSTEM_METRICS_{name}", raising=False)


@pytest.fixture(scope="module")
def uri(tmp_path_factory) -> str:
    """One store for the module: creating an SQLite store (its migrations) takes about a second."""
    return f"sqlite:///{tmp_path_factory.mktemp('store')}/mlflow.db"


def monitor_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == "SystemMetricsMonitor"]


def burn(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        sum(i * i for i in range(1000))


def test_logs_cpu_and_memory_to_the_run_and_nothing_after_stop(uri):
    run = start_run(MlflowConfig(tracking_uri=uri, experiment="test"))
    monitor = SystemMetrics(run.run_id, uri, interval=0.25)
    with monitor:
        assert monitor.running
        burn(1.5)
    assert not monitor.running and not monitor_threads()
    client = MlflowClient(uri)
    history = {key: client.get_metric_history(run.run_id, key) for key in (CPU, MEMORY)}
    for key, points in history.items():
        assert len(points) >= 3, key
        assert [m.step for m in points] == list(range(len(points))), key
    assert max(m.value for m in history[CPU]) > 0
    assert all(m.value > 0 for m in history[MEMORY])
    logged = {key: len(client.get_metric_history(run.run_id, key)) for key in client.get_run(run.run_id).data.metrics}
    assert {key for key in logged if not key.startswith("system/")} == set()

    time.sleep(0.6)  # over two intervals: a thread left running would have logged again
    assert {key: len(client.get_metric_history(run.run_id, key)) for key in logged} == logged
    monitor.stop()  # a second stop is a no-op

    # a second monitor for the same run (a resumed training) continues the steps
    with SystemMetrics(run.run_id, uri, interval=0.25):
        time.sleep(0.6)
    steps = [m.step for m in client.get_metric_history(run.run_id, CPU)]
    assert steps == list(range(len(steps))) and len(steps) > logged[CPU]
    run.finish()


def test_a_run_that_ended_stops_the_thread_by_itself(uri):
    run = start_run(MlflowConfig(tracking_uri=uri, experiment="test"))
    monitor = SystemMetrics(run.run_id, uri, interval=0.2)
    assert monitor.start()
    run.finish()
    time.sleep(0.6)
    assert not monitor.running
    monitor.stop()
    assert not monitor_threads()


@pytest.mark.parametrize("bad", ["nope://nowhere", "sqlite:///{tmp}/a-file/mlflow.db"])
def test_a_bad_tracking_uri_is_one_warning_not_an_error(tmp_path, capsys, bad):
    (tmp_path / "a-file").write_text("not a folder")
    monitor = SystemMetrics("0" * 32, bad.format(tmp=tmp_path), interval=0.2)
    with monitor:
        time.sleep(0.3)
    assert not monitor.running and not monitor_threads()
    assert capsys.readouterr().err.count("warning: MLflow system metrics: not started") == 1


def test_an_unknown_run_ends_the_thread_without_raising(uri):
    start_run(MlflowConfig(tracking_uri=uri, experiment="test"))  # the store exists, the run does not
    with SystemMetrics("0" * 32, uri, interval=0.2) as monitor:
        time.sleep(0.5)
        assert not monitor.running  # MLflow's thread found no run and returned (with its own warning)
    assert not monitor_threads()
