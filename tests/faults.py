"""The fault-injection harness: run a cnnpipe command on a bad input and check what a user would see.

Every case checks the promise of the README: exit code 2 (130 for Ctrl-C), exactly one line on stderr that
names the key, file or argument, no traceback, and nothing under data/, metrics/, plots/ or in the MLflow
store lost or left RUNNING. Failures start with a category word (TRACEBACK, UNCLEAR, LOST, RUNNING, SILENT),
so a run of the suite can be counted by kind: `pytest tests/test_faults_*.py | grep -o 'FAULT-[A-Z]*' | sort | uniq -c`.

Most cases run the real `cnnpipe` entry point in this process (`invoke`): a fresh process costs seconds of
imports (torch, Lightning, MLflow) and a refusal should cost milliseconds. An exception escaping `main` is
what a user would see as a traceback, and is recorded as one. `run` starts a real process where one is needed
(signals, or a training whose global settings must not leak into the test process).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import sqlite3
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

from cnnpipe.cli import main

KEPT = ("data", "metrics", "plots")  # what a failed command must leave as it was
REPORT = os.environ.get("CNNPIPE_FAULT_REPORT")  # a JSON-lines file each refusal is added to (docs/reliability.md)
SKIPPED = ("data/cache",)  # downloads and extractions: a cache, not a product


@dataclass(frozen=True)
class Snapshot:
    files: dict[str, str]  # relative path -> sha256
    runs: dict[str, str]  # MLflow run id -> status


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def mlflow_runs(database: Path) -> dict[str, str]:
    """Run id -> status, read straight from the SQLite store (a real MLflow database)."""
    if not database.exists():
        return {}
    with sqlite3.connect(database) as connection:
        try:
            return dict(connection.execute("SELECT run_uuid, status FROM runs"))
        except sqlite3.DatabaseError:
            return {}


def snapshot(root: Path, database: Path | None = None) -> Snapshot:
    files = {}
    for top in KEPT:
        for path in sorted((root / top).rglob("*")):
            relative = path.relative_to(root).as_posix()
            if path.is_file() and not relative.startswith(SKIPPED):
                files[relative] = _digest(path)
    return Snapshot(files, mlflow_runs(database or root / "mlflow.db"))


def run(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """`cnnpipe ARGS` in a fresh process, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "cnnpipe", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=timeout,
    )


@contextlib.contextmanager
def _log_handlers_to(stream: io.StringIO) -> Iterator[None]:
    """Libraries' logging handlers (Lightning's, MLflow's) keep the stderr they found at import; point them
    at `stream` for the call, so what they print is judged with the rest."""
    handlers = [
        handler
        for logger in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
        for handler in getattr(logger, "handlers", [])
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler)
    ]
    previous = [handler.stream for handler in handlers]
    for handler in handlers:
        handler.setStream(stream)
    try:
        yield
    finally:
        for handler, old in zip(handlers, previous, strict=True):
            handler.setStream(old)


def invoke(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`cnnpipe ARGS` through the real entry point in this process, in `cwd`, with stdout and stderr caught."""
    out, err = io.StringIO(), io.StringIO()
    with (
        contextlib.chdir(cwd),
        mock.patch.dict(os.environ, env or {}),  # the environment only, as a shell would set it
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
        _log_handlers_to(err),
    ):
        try:
            code = main(list(args))
        except SystemExit as exc:  # argparse's usage errors
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:  # noqa: BLE001 - what a user would see as a traceback
            err.write(traceback.format_exc())
            code = 1
    return subprocess.CompletedProcess(["cnnpipe", *args], code, out.getvalue(), err.getvalue())


def assert_refused(result: subprocess.CompletedProcess, *names: str, code: int = 2) -> str:
    """One clear line naming every one of `names`, the exit code, no traceback. Returns the line."""
    stderr = result.stderr.strip()
    assert "Traceback" not in result.stderr + result.stdout, f"FAULT-TRACEBACK: {stderr[-1500:]}"
    assert result.returncode != 0, f"FAULT-SILENT: exit 0 where a refusal was due; stdout: {result.stdout[-800:]}"
    lines = [line for line in stderr.splitlines() if line.strip() and not line.startswith("warning:")]
    assert len(lines) == 1, f"FAULT-UNCLEAR: {len(lines)} lines on stderr: {stderr[-1500:]}"
    assert result.returncode == code, f"FAULT-UNCLEAR: exit {result.returncode}, not {code}: {lines[0]}"
    for name in names:
        assert name in lines[0], f"FAULT-UNCLEAR: {name!r} not named in: {lines[0]}"
    report(result.args, lines[0])
    return lines[0]


def report(args: list[str], line: str) -> None:
    """Adds the case, its command and the line the user saw to CNNPIPE_FAULT_REPORT, when that is set."""
    if REPORT:
        args = [str(arg) for arg in args]
        command = args[args.index("cnnpipe") :] if "cnnpipe" in args else args
        case = os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" ", 1)[0]  # "FILE::TEST[ID] (call)"
        with open(REPORT, "a") as handle:
            handle.write(json.dumps({"case": case, "command": " ".join(command), "line": line}) + "\n")


def assert_kept(before: Snapshot, after: Snapshot) -> None:
    """Nothing that existed is gone or changed, and no run is left RUNNING."""
    lost = [path for path, digest in before.files.items() if after.files.get(path) != digest]
    assert not lost, f"FAULT-LOST: {lost}"
    running = [run_id for run_id, status in after.runs.items() if status == "RUNNING"]
    assert not running, f"FAULT-RUNNING: MLflow run(s) {running} left RUNNING"
    changed = [run_id for run_id, status in before.runs.items() if after.runs.get(run_id) != status]
    assert not changed, f"FAULT-LOST: MLflow run(s) {changed} changed status"


def refused_and_kept(root: Path, *args: str, names: tuple[str, ...], code: int = 2, **kwargs) -> str:
    """Runs `cnnpipe ARGS` in `root` (in this process) and checks both promises; returns the error line."""
    before = snapshot(root)
    result = invoke(*args, cwd=root, **kwargs)
    problems, line = [], ""
    try:
        line = assert_refused(result, *names, code=code)
    except AssertionError as failure:  # both promises are judged, so a case counts under every kind it breaks
        problems.append(str(failure))
    try:
        assert_kept(before, snapshot(root))
    except AssertionError as failure:
        problems.append(str(failure))
    # every kind first, on the first line: a traceback in the details spans many lines
    assert not problems, " ".join(problem.split(":", 1)[0] for problem in problems) + " | " + " | ".join(problems)
    return line


def during_training(
    root: Path, act: Callable[[subprocess.Popen], object], under_way: Callable[[], bool] | None = None
) -> subprocess.CompletedProcess:
    """A real `cnnpipe train` in `root`; `act` (send a signal, fill a disk) once `under_way()` says so (default: an
    epoch is done, its row in data/checkpoints/train_history.csv). Returns its exit code and what it printed."""
    live = root / "data/checkpoints/train_history.csv"
    live.unlink(missing_ok=True)
    under_way = under_way or live.exists
    command = [sys.executable, "-m", "cnnpipe", "train"]
    process = subprocess.Popen(command, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not under_way():
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()[1][-2000:]
        time.sleep(0.02)
    act(process)
    stdout, stderr = process.communicate(timeout=300)
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
