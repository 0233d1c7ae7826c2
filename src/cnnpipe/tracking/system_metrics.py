"""MLflow's system metrics (CPU, memory, disk, network; NVIDIA GPUs too) for one cnnpipe run, by run id.

MLflow switches them on with `mlflow.start_run(log_system_metrics=True)`, which needs its fluent active run;
cnnpipe logs through MlflowClient with explicit run ids (tracking/mlflow_run.py), so this starts MLflow's own
SystemMetricsMonitor (mlflow/system_metrics/system_metrics_monitor.py, MLflow 3.17) for a run id and a
tracking URI. What that monitor does:

- a daemon thread samples every `sampling_interval` seconds (default 10): psutil's CPU %, memory in use,
  the disk usage of `/` and the network bytes since it started; with `nvidia-ml-py` (the `pynvml` module)
  and an NVIDIA driver also each GPU's utilisation, memory and power. Without nvidia-ml-py the GPU part is
  skipped silently (an INFO line) and the rest is logged as usual.
- after each sample it reads the run (`get_run`) and ends by itself once the run is no longer RUNNING;
- every `samples_before_logging` samples (default 1) it logs their mean with `log_batch` to the given run id
  as `system/<name>` (`system/cpu_utilization_percentage`, `system/system_memory_usage_megabytes`,
  `system/gpu_0_utilization_percentage`, ...), at steps 0, 1, 2, ...: no active run is needed; the tracking
  URI is the one given (else the global `mlflow.get_tracking_uri()`, which cnnpipe never sets).
- the environment variables MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL and ..._SAMPLES_BEFORE_LOGGING override
  the arguments; MLFLOW_SYSTEM_METRICS_NODE_ID prefixes the names with a node (system/NODE/...).
- its `finish()` joins the thread with no time limit, then logs what is still buffered.

`SystemMetrics` below adds what a training needs: nothing it does raises (a monitor that cannot start or
stop is one warning line), `stop()` waits for the thread at most `stop_timeout` seconds, and once it has
returned nothing more is logged. Stop it before the run is ended (`TrackedRun.finish`/`end_after`).

On by default (`mlflow.system_metrics: true`): the monitor's thread takes 4 to 10 ms of CPU per sample, under
0.1% of a training at the 10 s interval, on CPU as on a GPU (docs/benchmarks.md, benchmarks/system_metrics.py).
"""

from __future__ import annotations

import importlib.util
import logging
from types import TracebackType

from cnnpipe.console import warn

DEFAULT_INTERVAL_S = 10.0  # MLflow's own default sampling interval


def gpu_metrics_problem() -> str | None:
    """Why MLflow would log no NVIDIA GPU metrics here, or None when it can (nvidia-ml-py and a driver)."""
    if importlib.util.find_spec("pynvml") is None:
        return "nvidia-ml-py is not installed (pip install nvidia-ml-py)"
    try:
        import pynvml

        pynvml.nvmlInit()
        pynvml.nvmlShutdown()
    except Exception as exc:  # noqa: BLE001 - NVMLError_LibraryNotFound, _DriverNotLoaded, ...: all "no GPU metrics"
        return f"NVML cannot be used ({exc})"
    return None


def _warn(message: str) -> None:
    warn(f"MLflow system metrics: {message[:300]}")


class SystemMetrics:
    """MLflow's system metrics monitor for the run `run_id` in the store at `tracking_uri`.

    with SystemMetrics(run.run_id, run.tracking_uri, gpu=on_gpu):
        trainer.fit(...)

    or `start()` ... `stop()`. start() reads the run once (its last step) on the caller's thread: against a
    server that went away that is MLflow's retries (seconds), as for any other tracking call. Steps continue
    after the run's last system metric, so a resumed training's system metrics follow its earlier ones.
    `gpu`: the training uses an NVIDIA GPU, so a monitor that cannot read it says why in one line.
    """

    def __init__(
        self,
        run_id: str,
        tracking_uri: str,
        *,
        interval: float = DEFAULT_INTERVAL_S,
        gpu: bool = False,
        stop_timeout: float = 30.0,
    ):
        self.run_id = run_id
        self.tracking_uri = tracking_uri
        self.interval = interval
        self.gpu = gpu
        self.stop_timeout = stop_timeout
        self._monitor = None  # mlflow's SystemMetricsMonitor while started

    @property
    def running(self) -> bool:
        thread = getattr(self._monitor, "_process", None)
        return thread is not None and thread.is_alive()

    def start(self) -> bool:
        """Starts the sampling thread; False (and one warning line) when the monitor cannot start."""
        if self._monitor is not None:
            return True
        try:
            from mlflow.system_metrics.metrics.gpu_monitor import GPUMonitor
            from mlflow.system_metrics.metrics.rocm_monitor import ROCMMonitor
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            # Its INFO lines (started, stopping, "skip logging GPU metrics") are noise in a training's output;
            # its warnings stay. A GPU it cannot read is said below, once, with the reason.
            logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
            monitor = SystemMetricsMonitor(
                self.run_id,
                sampling_interval=self.interval,
                samples_before_logging=1,
                resume_logging=True,  # a get_run: step 0 for a new run, the next step for a resumed one
                tracking_uri=self.tracking_uri,
            )
            if self.gpu and not any(isinstance(m, GPUMonitor | ROCMMonitor) for m in monitor.monitors):
                _warn(f"no GPU metrics: {gpu_metrics_problem() or 'MLflow found no GPU'}")
            monitor.start()
        except Exception as exc:  # noqa: BLE001 - a bad store, psutil, anything: never stops the training
            _warn(f"not started for run {self.run_id} at {self.tracking_uri}: {exc}")
            return False
        if getattr(monitor, "_process", None) is None:  # its start() failed (and said so in a warning)
            return False
        self._monitor = monitor
        return True

    def stop(self) -> None:
        """Stops the thread (within `stop_timeout` s) and logs the samples still buffered; nothing after this."""
        monitor, self._monitor = self._monitor, None
        if monitor is None:
            return
        try:
            # finish() would join with no limit: a server that went away holds the thread for its retries.
            # Signalling first lets the join be bounded; a thread that outlives it exits when its request
            # returns (the signal is set; if that request was a log_batch, that one batch lands late) and
            # nothing buffered is flushed.
            monitor._shutdown_event.set()
            thread = monitor._process
            thread.join(self.stop_timeout)
            if thread.is_alive():
                _warn(f"still waiting for the tracking store after {self.stop_timeout:g} s; left behind")
                return
            monitor.finish()  # the thread has ended: joins at once, then logs what is buffered
        except Exception as exc:  # noqa: BLE001 - never raised into the training
            _warn(f"stopping failed: {exc}")

    def __enter__(self) -> SystemMetrics:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exception: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()
