"""`cnnpipe compare`: the runs of one experiment side by side, by the params that differ and their metrics.

The MLflow UI compares runs too; this is the same view in a terminal, a CI log or a Markdown report.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from cnnpipe.errors import CnnpipeError
from cnnpipe.tracking.mlflow_run import SQLITE, check_reachable, sqlite_problem

# The metrics worth a column by default: how good, how fast, and what the network sees.
DEFAULT_METRICS = ("test/accuracy", "test/loss", "best_val_acc", "best_val_loss", "images_per_sec", "rf_final")
LOWER_IS_BETTER = ("loss", "time")


@dataclass(frozen=True)
class Comparison:
    columns: list[str]
    rows: list[list[str]]
    metric: str

    def to_markdown(self) -> str:
        lines = ["| " + " | ".join(self.columns) + " |", "|" + "---|" * len(self.columns)]
        lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in self.rows]
        return "\n".join(lines) + "\n"

    def to_csv(self) -> str:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(self.columns)
        writer.writerows(self.rows)
        return buffer.getvalue()


def _check_store(uri: str, key: str) -> None:
    """Fails fast and changes nothing: MLflow would retry a dead server for minutes, create a missing database
    (and its folder), or add its tables to any SQLite file. `key` names where the URI came from."""
    if uri.startswith(SQLITE):
        path = Path(uri.removeprefix(SQLITE))
        if problem := sqlite_problem(path, create=False):
            raise CnnpipeError(f"{key}: {path}: {problem}; give the sqlite:/// path of the mlflow.db that runs log to")
        return
    try:
        check_reachable(uri)
    except CnnpipeError as exc:
        raise CnnpipeError(str(exc).replace("mlflow.tracking_uri", key, 1)) from None


def _all_runs(client: MlflowClient, experiment_id: str) -> list[Run]:
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def resolve_metric(name: str, available: set[str]) -> str:
    """`accuracy` finds `test/accuracy`: an exact key first, then the test metric, then any `*/name`."""
    for candidate in (name, f"test/{name}"):
        if candidate in available:
            return candidate
    endings = sorted(key for key in available if key.endswith(f"/{name}"))
    if endings:
        return endings[0]
    raise CnnpipeError(f"--metric: no run logged {name!r}; logged metrics: {', '.join(sorted(available))}")


def _format(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:.4g}" if abs(value) < 1e5 else f"{value:.0f}"


def _runs(tracking_uri: str, experiment: str, key: str) -> list[Run]:
    try:
        client = MlflowClient(tracking_uri=tracking_uri)
        found = client.get_experiment_by_name(experiment)
        if found is None:
            names = ", ".join(sorted(e.name for e in client.search_experiments())) or "none"
            raise CnnpipeError(
                f"--experiment: no experiment {experiment!r} at {tracking_uri}; experiments there: {names}"
            )
        return _all_runs(client, found.experiment_id)
    except MlflowException as exc:  # a store MLflow refuses (file:, an unknown scheme) or a server's error
        raise CnnpipeError(f"{key}: {tracking_uri}: {exc.message.strip().splitlines()[0]}") from None


def compare(
    tracking_uri: str,
    experiment: str,
    metric: str,
    metrics: tuple[str, ...] = DEFAULT_METRICS,
    key: str = "--tracking-uri",
) -> Comparison:
    """`key` names where tracking_uri came from (--tracking-uri, or mlflow.tracking_uri of the params file)."""
    _check_store(tracking_uri, key)
    runs = _runs(tracking_uri, experiment, key)
    if not runs:
        raise CnnpipeError(f"--experiment: {experiment!r} at {tracking_uri} has no runs yet; run `dvc repro` first")
    sort_key = resolve_metric(metric, {key for run in runs for key in run.data.metrics})
    descending = not any(word in sort_key for word in LOWER_IS_BETTER)

    def best_first(run: Run) -> tuple[bool, float]:
        value = run.data.metrics.get(sort_key)
        return value is None, 0.0 if value is None else -value if descending else value  # no value: last

    runs.sort(key=best_first)
    keys = sorted({key for run in runs for key in run.data.params})
    differing = [key for key in keys if len({run.data.params.get(key) for run in runs}) > 1]
    shown = [sort_key, *(m for m in metrics if m != sort_key and any(m in run.data.metrics for run in runs))]
    rows = [
        [run.info.run_name or run.info.run_id[:8], run.info.status.lower()]
        + [run.data.params.get(key, "") for key in differing]
        + [_format(run.data.metrics.get(key)) for key in shown]
        for run in runs
    ]
    return Comparison(["run", "status", *differing, *shown], rows, sort_key)
