"""`cnnpipe compare`: the runs of one experiment side by side, by the params that differ and their metrics.

The MLflow UI compares runs too; this is the same view in a terminal, a CI log or a Markdown table (the report
of named runs, with their curves and pictures, is tracking/compare_report.py).
"""

from __future__ import annotations

import ast
import csv
import io
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path

from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from rich import box
from rich.cells import cell_len
from rich.table import Table
from rich.text import Text

from cnnpipe.config import DataConfig
from cnnpipe.console import printable
from cnnpipe.errors import CnnpipeError
from cnnpipe.tracking.evaluation_store import EVALUATION_RUN_TAG
from cnnpipe.tracking.mlflow_run import SQLITE, check_reachable, needs_credentials, sqlite_problem

# The metrics worth a column by default: how good, how fast, and what the network sees.
DEFAULT_METRICS = ("test/acc", "test/loss", "best/val/acc", "best/val/loss", "mean/images_per_sec", "rf_final")
LOWER_IS_BETTER = ("loss", "time")
ALIASES = {"accuracy": "acc"}  # `--sort accuracy`, the default: runs log `test/acc` since the rename
STAGE_TAG = "cnnpipe.stage"  # train on a training run, evaluate on each evaluation: a child of its training run
PARENT_TAG = "mlflow.parentRunId"
GAP = 2  # characters between two columns of the terminal table
LISTED = 20  # run names a refusal lists


@dataclass(frozen=True)
class Training:
    """A row: one training run, with the params and metrics of its evaluation merged in."""

    run_id: str
    name: str
    status: str
    params: dict[str, str]
    metrics: dict[str, float]
    data: str | None  # the data set it learnt from (data.name), None for a run without data params


@dataclass(frozen=True)
class Comparison:
    params: list[str]  # the params that differ between the rows
    metrics: list[str]  # the sort metric first
    rows: list[list[str]]  # run, status, params, metrics
    metric: str

    @property
    def columns(self) -> list[str]:
        return ["run", "status", *self.params, *self.metrics]

    def to_markdown(self) -> str:
        return markdown_table(self.columns, self.rows)

    def to_csv(self) -> str:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(self.columns)
        writer.writerows(self.rows)
        return buffer.getvalue()

    def to_tables(self, title: str, width: int) -> list[Table | Text]:
        """What fits `width` without cutting a cell: one table, or the params that differ in a second one below.

        Headers fold at / . _ first; a column that still does not fit is left out and named, as Rich would
        squeeze every cell to '…' (and a run name to nothing) instead. Text from the store is measured as it is
        shown, control characters escaped.
        """
        title, columns = printable(title), [printable(column) for column in self.columns]
        rows = [[printable(cell) for cell in row] for row in self.rows]
        metrics = range(2 + len(self.params), len(columns))
        params = range(2, metrics.start)
        whole, left_out = _fit(title, columns, rows, width, range(len(columns)), range(len(columns) - 1, 0, -1))
        if not left_out:  # all of it fits
            return [whole]
        parts = [_fit(title, columns, rows, width, [0, 1, *metrics], [*metrics[:0:-1], 1])]  # status before the sort
        if params:
            parts.append(_fit("params that differ", columns, rows, width, [0, *params], params[:0:-1]))
        left_out = [name for _, names in parts for name in names]
        note = Text(f"left out at {width} columns: {', '.join(left_out)}; --format csv shows every column", "dim")
        return [table for table, _ in parts] + ([note] if left_out else [])


def _fold(header: str, width: int) -> str:
    """`header` in lines no wider than `width` or its longest piece, broken after / . or _."""
    pieces = re.split(r"(?<=[/._])", header)
    width = max(width, *map(cell_len, pieces))
    lines = [""]
    for piece in pieces:
        if lines[-1] and cell_len(lines[-1] + piece) > width:
            lines.append("")
        lines[-1] += piece
    return "\n".join(lines)


def _fit(
    title: str, headers: list[str], rows: list[list[str]], width: int, shown: Sequence[int], droppable: Sequence[int]
) -> tuple[Table, list[str]]:
    """The table of the `shown` columns, headers folded (biggest saving first) until it fits `width`, then the
    `droppable` ones left out in that order. Returns the table and the headers left out."""
    shown = list(shown)
    cells = {i: max((cell_len(row[i]) for row in rows), default=0) for i in shown}
    text = {i: headers[i] for i in shown}

    def column(i: int, header: str | None = None) -> int:
        return max([cells[i], *map(cell_len, (header or text[i]).splitlines())])

    def total() -> int:
        return sum(column(i) for i in shown) + GAP * (len(shown) - 1)

    folds = {i: _fold(headers[i], cells[i]) for i in shown}
    for i in sorted(shown, key=lambda i: column(i, folds[i]) - column(i)):  # the biggest saving first
        if total() <= width:
            break
        text[i] = folds[i]
    for i in droppable:
        if total() <= width:
            break
        shown.remove(i)
    left_out = [headers[i] for i in sorted(set(text) - set(shown))]
    table = Table(title=Text(title), box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1, 0, 0))
    for i in shown:  # fixed widths: Rich squeezes no cell; only where even these are too wide do run names fold
        numeric = all(_is_number(row[i]) for row in rows)
        fixed = None if i == 0 and total() > width else column(i)
        table.add_column(Text(text[i]), width=fixed, overflow="fold", justify="right" if numeric else "left")
    for row in rows:
        table.add_row(*(Text(row[i]) for i in shown))  # Text: a `[name]` in a run name is not Rich markup
    return table, left_out


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    """A GitHub Markdown table, numbers aligned right; a cell's newline or control character escaped, which would
    end its row or reach a terminal."""
    align = ["---:" if all(_is_number(row[i]) for row in rows) else "---" for i in range(len(headers))]
    lines = [headers, align, *rows]
    return "".join("| " + " | ".join(printable(cell).replace("|", "\\|") for cell in line) + " |\n" for line in lines)


def _is_number(cell: str) -> bool:
    try:
        float(cell or 0)
    except ValueError:
        return False
    return True


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
    """`accuracy` finds `test/acc`: an exact key first, then the test metric, then any `*/name`, for the alias
    first and then the name itself (`test/accuracy`, as runs logged it before the rename)."""
    for alias in dict.fromkeys((ALIASES.get(name, name), name)):
        for candidate in (alias, f"test/{alias}"):
            if candidate in available:
                return candidate
        endings = sorted(key for key in available if key.endswith(f"/{alias}"))
        if endings:
            return endings[0]
    raise CnnpipeError(f"--sort: no run logged {name!r}; logged metrics: {', '.join(sorted(available))}")


def data_name(params: dict[str, str]) -> str | None:
    """The data set a training learnt from, named as cnnpipe names experiments after it (data.name), from the
    data.* params it logged; None for a run without them."""
    if "data.source" not in params:
        return None
    path = params.get("data.path")
    try:
        classes = ast.literal_eval(params.get("data.classes", "[]"))
        return DataConfig(source=params["data.source"], path=None if path == "None" else path, classes=classes).name
    except (ValueError, SyntaxError):  # a source or layout of another cnnpipe version: its source names it
        return params["data.source"]


def _evaluation(training: Run, children: list[Run]) -> Run | None:
    """The evaluation the training run names (evaluate tags it): clocks of machines logging to one store can
    disagree. Without the tag (runs from before it), or when it names a deleted run: the newest by start time,
    a finished one first."""
    named = training.data.tags.get(EVALUATION_RUN_TAG)
    for child in children:
        if child.info.run_id == named:
            return child
    return max(children, key=lambda child: (child.info.status == "FINISHED", child.info.start_time or 0), default=None)


def trainings(runs: list[Run]) -> list[Training]:
    """One per training run (a run without the stage tag is one too, from before evaluations had runs of
    their own), with its evaluation merged in: a sweep sorts by test accuracy."""
    evaluations: dict[str, list[Run]] = {}
    for run in runs:
        if run.data.tags.get(STAGE_TAG) == "evaluate":
            evaluations.setdefault(run.data.tags.get(PARENT_TAG, ""), []).append(run)
    rows = []
    for run in runs:
        if run.data.tags.get(STAGE_TAG) == "evaluate":
            continue
        evaluation = _evaluation(run, evaluations.get(run.info.run_id, []))
        merged = [run.data, *([evaluation.data] if evaluation else [])]
        rows.append(
            Training(
                run.info.run_id,
                run.info.run_name or run.info.run_id[:8],
                run.info.status.lower(),
                {key: value for data in merged for key, value in data.params.items()},
                {key: value for data in merged for key, value in data.metrics.items()},
                data_name(run.data.params),
            )
        )
    return rows


def column_format(values: list[float | None]) -> list[str]:
    """One format for a column, so that its decimals line up: accuracies, losses and the like at 4 decimals;
    whole numbers, and columns reaching 1000 (images/s), without; a column of tiny values (a learning rate)
    as 1.000e-05; no value as an empty cell."""
    present = [value for value in values if value is not None and math.isfinite(value)]
    if all(value.is_integer() for value in present) or max(map(abs, present), default=0) >= 1000:
        pattern = "{:.0f}"
    elif any(0 < abs(value) < 1e-4 for value in present):
        pattern = "{:.3e}"
    else:
        pattern = "{:.4f}"
    return ["" if value is None else pattern.format(value) for value in values]


def differing(runs: list[Training]) -> list[str]:
    """The params whose values differ between `runs`, sorted. A param only some runs have (an evaluation's, when
    one run is not evaluated) differs only in its values."""
    keys = sorted({key for run in runs for key in run.params})
    return [key for key in keys if len({run.params[key] for run in runs if key in run.params}) > 1]


def _runs(tracking_uri: str, experiment: str, key: str) -> list[Run]:
    try:
        client = MlflowClient(tracking_uri=tracking_uri)
        found = client.get_experiment_by_name(experiment)
        if found is None:
            names = ", ".join(sorted(e.name for e in client.search_experiments())) or "none"
            raise CnnpipeError(
                f"--experiment: no experiment {experiment!r} at {tracking_uri}; experiments there: {names}"
            )
        if found.lifecycle_stage == "deleted":  # its runs went with it: "no runs yet" would be wrong
            raise CnnpipeError(
                f"--experiment: {experiment!r} at {tracking_uri} is deleted; restore it with "
                f"`mlflow experiments restore --experiment-id {found.experiment_id}` (MLFLOW_TRACKING_URI set to that "
                "store)"
            )
        return _all_runs(client, found.experiment_id)
    except MlflowException as exc:  # a store MLflow refuses (file:, an unknown scheme) or a server's error
        if exc.get_http_status_code() == HTTPStatus.UNAUTHORIZED:  # /health is open on MLflow's basic-auth server
            raise CnnpipeError(str(needs_credentials(tracking_uri)).replace("mlflow.tracking_uri", key, 1)) from None
        reason = exc.message.strip().splitlines()[0]
        raise CnnpipeError(f"{key}: {tracking_uri}: {reason}") from None


def experiment_trainings(
    tracking_uri: str, experiment: str, data: str | None = None, key: str = "--tracking-uri"
) -> list[Training]:
    """The trainings of `experiment` (of data set `data` only, when given). `key` names where tracking_uri
    came from (--tracking-uri, or mlflow.tracking_uri of the params file)."""
    _check_store(tracking_uri, key)
    runs = trainings(_runs(tracking_uri, experiment, key))
    if not runs:
        raise CnnpipeError(f"--experiment: {experiment!r} at {tracking_uri} has no runs yet; run `dvc repro` first")
    if data is None:
        return runs
    chosen = [run for run in runs if run.data == data]
    if not chosen:
        names = ", ".join(sorted({run.data for run in runs if run.data})) or "none its runs' params name"
        raise CnnpipeError(f"--data: no training of experiment {experiment!r} learnt from {data!r}; data sets: {names}")
    return chosen


def pick(runs: list[Training], wanted: Sequence[str], experiment: str) -> list[Training]:
    """The runs named in `wanted` (run names or ids), in that order; a name of no run or of several is refused."""
    picked: dict[str, Training] = {}
    for name in wanted:
        found = [run for run in runs if name in (run.run_id, run.name)]
        if len(found) > 1:
            ids = ", ".join(run.run_id for run in found)
            raise CnnpipeError(f"RUN {name!r}: {len(found)} runs of {experiment!r} have this name; give an id: {ids}")
        if not found:
            names = sorted(run.name for run in runs)
            more = f" and {len(names) - LISTED} more" if len(names) > LISTED else ""
            raise CnnpipeError(
                f"RUN {name!r}: no training run of {experiment!r} has this name or id; runs: "
                f"{', '.join(names[:LISTED])}{more}"
            )
        picked[found[0].run_id] = found[0]
    return list(picked.values())


def compare(runs: list[Training], metric: str, metrics: tuple[str, ...] = DEFAULT_METRICS) -> Comparison:
    """`runs` best first by `metric` (ascending for a loss or time, else descending), with the params that
    differ between them and the `metrics` any of them logged."""
    sort_key = resolve_metric(metric, {key for run in runs for key in run.metrics})
    descending = not any(word in sort_key for word in LOWER_IS_BETTER)

    def best_first(run: Training) -> tuple[bool, float]:
        value = run.metrics.get(sort_key)
        missing = value is None or math.isnan(value)  # NaN compares false with anything: it would sort anywhere
        return missing, 0.0 if missing else -value if descending else value  # no value: last

    runs = sorted(runs, key=best_first)
    params = differing(runs)
    shown = [sort_key, *(m for m in metrics if m != sort_key and any(m in run.metrics for run in runs))]
    columns = [column_format([run.metrics.get(key) for run in runs]) for key in shown]
    rows = [
        [run.name, run.status, *(run.params.get(key, "") for key in params), *(column[row] for column in columns)]
        for row, run in enumerate(runs)
    ]
    return Comparison(params, shown, rows, sort_key)
