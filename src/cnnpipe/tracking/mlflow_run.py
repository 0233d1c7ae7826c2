"""MLflow runs: one per training (opened by tracking.logger), and one per evaluation, a child of the training's.

Uses MlflowClient with an explicit run id rather than mlflow's global "active run", so a stage (and a
resumed training) addresses its run without sharing process state. A run's params are the ones that
produced its metrics: evaluate logs its own params and test metrics into its own run, never the training's.

A tracking server that goes away mid-training does not stop the training: every call that fails is
recorded, the checkpoints stay on disk, and the run is told afterwards what it is missing.
"""

from __future__ import annotations

import getpass
import logging
import os
import platform
import random
import re
import sqlite3
import subprocess
import time
from collections.abc import Callable, Mapping
from contextlib import closing
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any

import yaml
from mlflow.entities import Metric, Param, Run
from mlflow.exceptions import MlflowException
from mlflow.store.db import db_types
from mlflow.tracking import MlflowClient
from mlflow.utils.credentials import get_default_host_creds
from mlflow.utils.rest_utils import http_request
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH
from PIL import Image
from pydantic import BaseModel

import cnnpipe
from cnnpipe.config import MlflowConfig
from cnnpipe.console import note, warn
from cnnpipe.errors import CnnpipeError
from cnnpipe.tracking import relocate
from cnnpipe.tracking.compare_view import prepare_for_comparison
from cnnpipe.uris import credentials_hint, mask_uri

# MLflow retries a failed request 7 times with exponential back-off (minutes per call); a training whose
# server went away should lose seconds, not hours. Set these variables yourself to override.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
UNLOGGED_TAG = "cnnpipe.unlogged"
MLFLOW_TABLES = {"experiments", "runs"}  # what makes an SQLite file an MLflow store
DATABASE_SERVERS = {db_types.POSTGRES, db_types.MYSQL, db_types.MSSQL}  # MLflow's SQL stores that must answer
# MLflow's SQL store logs every database error with its traceback, then raises it (15 tracebacks when the disk of a
# SQLite store filled during a training): TrackedRun._try, and the system metrics monitor, say what it raises in one
# line each.
logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)


SQLITE = "sqlite:///"


def resolve_tracking_uri(uri: str, root: Path | None = None) -> str:
    """Makes a relative `sqlite:///file.db` absolute, relative to `root` or else the repository root.

    `dvc exp run --queue/--temp` runs stages in a copy under .dvc/tmp/exps; DVC_ROOT names the real
    repository there, so every experiment logs into the one database instead of a throw-away copy.
    """
    if uri.startswith(SQLITE) and not uri.startswith(SQLITE + "/"):
        base = root or Path(os.environ.get("DVC_ROOT") or Path.cwd())
        return SQLITE + str((base / uri.removeprefix(SQLITE)).resolve())
    return uri


def _artifact_location(uri: str, experiment: str) -> str | None:
    """Beside a SQLite database (mlruns/NAME), not in whatever folder the first run happened to start in."""
    if not uri.startswith(SQLITE):
        return None  # a server decides where artifacts go
    return (Path(uri.removeprefix(SQLITE)).parent / relocate.ARTIFACTS / relocate.folder_name(experiment)).as_uri()


def follow_moved_store(uri: str, experiment: str) -> None:
    """A copied or moved repository's SQLite store still names the old folder for its artifacts: it is pointed
    at its own before a run opens (see relocate), and the console is told."""
    if uri.startswith(SQLITE) and (moved := relocate.relocate_store(Path(uri.removeprefix(SQLITE)), experiment)):
        note(moved)


def _health(uri: str, timeout: float) -> CnnpipeError | None:
    """None when the tracking store answers, else the one line that says why not. A server is asked for /health
    as MLflow's own client asks it (MLFLOW_TRACKING_USERNAME and _PASSWORD or _TOKEN, the TLS settings: a proxy in
    front of it may guard /health too), a database server for one connection (MLflow retries one for 100 s, with
    a warning each time); local stores (sqlite, files) always answer."""
    scheme = uri.partition("://")[0].lower()
    if scheme in ("http", "https"):
        return _server_health(uri, timeout)
    if scheme.partition("+")[0] in DATABASE_SERVERS:
        return _database_health(uri, timeout)
    return None


def _server_health(uri: str, timeout: float) -> CnnpipeError | None:
    try:
        response = http_request(
            get_default_host_creds(uri), "/health", "GET", max_retries=0, timeout=timeout, raise_on_status=False
        )
    except MlflowException as exc:  # nothing answered: refused, no such host, a timeout, TLS
        return _no_server(uri, _reason(exc))
    if response.status_code == HTTPStatus.UNAUTHORIZED:
        return needs_credentials(uri)
    return None if response.ok else _no_server(uri, response.reason)


def _database_health(uri: str, timeout: float) -> CnnpipeError | None:
    import sqlalchemy  # MLflow's own SQL layer; imported only for a database server

    try:
        url = sqlalchemy.engine.make_url(uri)
        wait = {"connect_timeout": max(1, round(timeout))} if url.get_backend_name() in ("postgresql", "mysql") else {}
        with sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool, connect_args=wait).connect():
            pass
    except (sqlalchemy.exc.SQLAlchemyError, ImportError) as exc:  # refused, a password missing, no driver installed
        return unusable(uri, getattr(exc, "orig", None) or exc)
    return None


def _reason(exc: BaseException) -> str:
    """The innermost cause in one line: sqlite3's `database or disk is full`, `[Errno 111] Connection refused`,
    not the SQL statement or the retries that SQLAlchemy, requests, urllib3 and MLflow wrap around it."""
    while (inner := exc.__cause__ or exc.__context__) is not None and str(inner):
        exc = inner
    return " ".join(mask_uri(str(exc)).split())[:200] or type(exc).__name__  # masked before it is cut


def _no_server(uri: str, reason: str) -> CnnpipeError:
    return CnnpipeError(
        f"mlflow.tracking_uri: no MLflow tracking server answers at {uri} ({reason}); "
        "start it, or use sqlite:///mlflow.db for a local store"
    )


def needs_credentials(uri: str) -> CnnpipeError:
    """A server that answers 401: the credentials MLflow sends, from the environment, are missing or wrong."""
    creds = get_default_host_creds(uri)
    what = "refuses the credentials set" if creds.username or creds.token else "needs credentials"
    return CnnpipeError(
        f"mlflow.tracking_uri: the MLflow server at {uri} {what} (401); set MLFLOW_TRACKING_USERNAME and "
        "MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN)"
    )


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fails fast, before any training, when a tracking server or database does not answer."""
    if (refusal := _health(uri, timeout)) is not None:
        raise refusal


def sqlite_problem(path: Path, create: bool) -> str | None:
    """Why the SQLite file at `path` cannot be a tracking store, or None, asked of sqlite3 itself: MLflow would
    retry a file it cannot open for minutes, and add its tables to any database it is given. With `create` a
    missing file is made (as MLflow would make it); without, nothing is created or changed."""
    if path.is_dir():
        return "it is a directory"
    if not (create or path.is_file()):
        return "it does not exist"
    try:
        if create:
            path.parent.mkdir(parents=True, exist_ok=True)
        with closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode={'rwc' if create else 'ro'}", uri=True)) as db:
            tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except (sqlite3.Error, OSError) as exc:
        return f"not an MLflow database: {exc}"
    if (tables or not create) and not tables >= MLFLOW_TABLES:
        return "not an MLflow database: it has no experiments and runs tables"
    return None


def unusable(uri: str, exc: Exception | str) -> CnnpipeError:
    """The store refused or failed: a password it wants is named with where it goes, never shown."""
    if isinstance(exc, MlflowException) and exc.get_http_status_code() == HTTPStatus.UNAUTHORIZED:
        return needs_credentials(uri)
    reason = " ".join(mask_uri(str(exc)).split())[:200]
    advice = (
        credentials_hint(uri)
        if "password" in reason.lower()
        else "valid: sqlite:///FILE.db, postgresql://USER@HOST/DB or the http(s):// address of an MLflow server"
    )
    return CnnpipeError(f"mlflow.tracking_uri: cannot use the tracking store {uri} ({reason}); {advice}")


def check_store(cfg: MlflowConfig) -> None:
    """Opens the tracking store and finds the experiment, before anything is trained or replaced.

    A typo (`sqllite:///`), a file that is not a database, an unwritable
    place, the retired `file:` store or a deleted experiment is one line here instead of an error after
    training has begun. (A new SQLite store is created here, as the run would create it moments later.)
    """
    uri = resolve_tracking_uri(cfg.tracking_uri)
    check_reachable(uri)
    if uri.startswith(SQLITE) and (problem := sqlite_problem(Path(uri.removeprefix(SQLITE)), create=True)):
        raise unusable(uri, problem)
    try:
        experiment = MlflowClient(tracking_uri=uri).get_experiment_by_name(cfg.experiment)
    except Exception as exc:  # noqa: BLE001 - MlflowException, SQLAlchemy's and OS errors all mean "unusable"
        raise unusable(uri, exc) from None
    if experiment is not None and experiment.lifecycle_stage == "deleted":
        raise _deleted(cfg.experiment)


def _deleted(experiment: str) -> CnnpipeError:
    return CnnpipeError(
        f"mlflow.experiment: '{experiment}' is deleted in the tracking store; restore it or pick a new name"
    )


def flatten(value: Any, prefix: str = "") -> dict[str, str]:
    """Nested params as dotted keys (model.layers.0.out); lists of plain values stay one value."""
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list) and any(isinstance(item, dict | list) for item in value):
        items = ((str(index), item) for index, item in enumerate(value))
    else:
        return {prefix: str(value)}
    flat: dict[str, str] = {}
    for key, item in items:
        flat.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def metric_key(name: str) -> str:
    """MLflow allows letters, digits, '_', '-', '.', ' ', '/' in metric names (class names may hold others)."""
    return re.sub(r"[^\w\-. /]", "_", name)


def _git(*args: str) -> str | None:
    try:
        result = subprocess.run(["git", *args], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def data_hashes(lock_file: Path = Path("dvc.lock")) -> str | None:
    """The hashes DVC recorded for the pull and augment outputs: which data a run trained on."""
    try:
        stages = yaml.safe_load(lock_file.read_text())["stages"]
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        return None
    outs = [out for stage in ("pull", "augment") for out in stages.get(stage, {}).get("outs", [])]
    return " ".join(f"{out['path']}:{out.get('md5', '?')}" for out in outs) or None


def _remote() -> str | None:
    """The git remote the code comes from, without the credentials of an https://user:token@ address."""
    remote = _git("config", "--get", "remote.origin.url")
    return re.sub(r"//[^/@]+@", "//", remote) if remote else None


def run_tags(entry_point: str) -> dict[str, str]:
    """What the MLflow UI shows as Source and "Created by", the code's commit, and cnnpipe's own provenance."""
    remote = _remote()
    tags = {
        "cnnpipe.version": cnnpipe.__version__,
        "cnnpipe.stage": entry_point,
        "host": platform.node(),
        "mlflow.user": getpass.getuser(),
        "mlflow.source.type": "PROJECT",
        # where the code lives, never a path of this machine: the remote, else the repository's folder name
        "mlflow.source.name": remote or Path(_git("rev-parse", "--show-toplevel") or Path.cwd()).name,
        "mlflow.project.entryPoint": entry_point,  # the DVC stage: `dvc repro <entry point>` reruns it
    }
    if commit := _git("rev-parse", "HEAD"):
        tags["mlflow.source.git.commit"] = commit
        tags["git.dirty"] = str(bool(_git("status", "--porcelain", "--untracked-files=no"))).lower()
    if branch := _git("rev-parse", "--abbrev-ref", "HEAD"):
        tags["mlflow.source.git.branch"] = branch
    if remote:
        tags["mlflow.source.git.repoURL"] = remote
    if experiment := os.environ.get("DVC_EXP_NAME"):
        tags["dvc.experiment"] = experiment
    if hashes := data_hashes():
        tags["dvc.data"] = hashes
    return tags


@dataclass
class TrackedRun:
    client: MlflowClient
    run_id: str
    tracking_uri: str
    unlogged: list[str] = field(default_factory=list)  # what failed to reach the tracking store

    def _try(self, what: str, call: Callable[[], object]) -> bool:
        """Runs one tracking call; a failure is recorded instead of raised, so the training goes on."""
        if self.unlogged and _health(self.tracking_uri, timeout=2.0) is not None:
            self.unlogged.append(what)  # still gone: don't wait for MLflow's retries again
            return False
        try:
            call()
        except Exception as exc:  # noqa: BLE001 - MlflowException, requests' and OS errors alike: none may stop training
            if not self.unlogged:
                warn(f"MLflow: could not log {what} to {self.tracking_uri}: {_reason(exc)}")
            self.unlogged.append(what)
            return False
        return True

    def log_params(self, params: BaseModel | Mapping[str, Any]) -> None:
        """Flattened to dotted keys (model.layers.0.out), as the params file names them."""
        if isinstance(params, BaseModel):
            params = params.model_dump(mode="json", by_alias=True)
        flat = flatten(dict(params))
        # MLflow rejects longer values; the full params.yaml is logged as an artifact next to them.
        entries = [Param(key, value[:MAX_PARAM_VAL_LENGTH]) for key, value in sorted(flat.items())]
        for start in range(0, len(entries), MAX_PARAMS_TAGS_PER_BATCH):
            batch = entries[start : start + MAX_PARAMS_TAGS_PER_BATCH]
            self._try("params", lambda batch=batch: self.client.log_batch(self.run_id, params=batch))

    def last_steps(self) -> dict[str, int]:
        """The last step of each metric the run has (empty when the store cannot be read): what a resumed
        training must not log again."""
        steps: dict[str, int] = {}

        def read() -> None:
            for key in self.client.get_run(self.run_id).data.metrics:
                steps[key] = max(metric.step for metric in self.client.get_metric_history(self.run_id, key))

        self._try("metric steps", read)
        return steps

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        now = int(time.time() * 1000)
        entries = [Metric(metric_key(key), float(value), now, step) for key, value in metrics.items()]
        self._try(f"metrics of step {step}", lambda: self.client.log_batch(self.run_id, metrics=entries))

    def log_artifact(self, path: Path, folder: str | None = None) -> None:
        """A file; a PNG figure also as a keyed image, which the UI's run comparison shows side by side."""
        path = Path(path)
        name = f"{folder}/{path.name}" if folder else path.name
        self._try(f"artifact {name}", lambda: self.client.log_artifact(self.run_id, str(path), folder))
        if path.suffix == ".png":  # decoded inside _try too: an unreadable figure is recorded, not raised
            self._try(f"image {path.stem}", lambda: self._log_keyed_image(path))

    def _log_keyed_image(self, path: Path) -> None:
        with Image.open(path) as image:
            self.client.log_image(self.run_id, image.convert("RGB"), key=path.stem, step=0)

    def set_tag(self, key: str, value: str) -> None:
        self._try(f"tag {key}", lambda: self.client.set_tag(self.run_id, key, value))

    def log_call(self, what: str, call: Callable[[], object]) -> bool:
        """Any other tracking call (the model, the registry) with the same failure handling."""
        return self._try(what, call)

    def report_unlogged(self) -> None:
        """Tells the run (when it can be reached) and the console what never got logged."""
        missing = list(dict.fromkeys(self.unlogged))  # once each: a step's metrics fail in several calls
        if not missing:
            return
        warn(f"MLflow run {self.run_id} is missing {len(missing)} item(s): {', '.join(missing)[:500]}")
        self._try("unlogged list", lambda: self.client.set_tag(self.run_id, UNLOGGED_TAG, "; ".join(missing)[:5000]))

    def end_after(self, exception: BaseException) -> None:
        """Ends a run that `exception` stopped: KILLED for Ctrl-C, FAILED for anything else."""
        self.finish("KILLED" if isinstance(exception, KeyboardInterrupt) else "FAILED")

    def finish(self, status: str = "FINISHED") -> None:
        """Ends the run `status`; one the store does not take (full, gone) is named with what ends it later."""
        ended = self._try("run status", lambda: self.client.set_terminated(self.run_id, status))
        self.report_unlogged()
        if not ended:
            warn(
                f"MLflow run {self.run_id} could not be ended {status}: it shows RUNNING until the store takes writes "
                f"again and `cnnpipe evaluate` ends a training's run, or MlflowClient('{self.tracking_uri}')"
                f".set_terminated('{self.run_id}', '{status}') ends any run"
            )


def experiment_id_for(client: MlflowClient, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return client.create_experiment(name, _artifact_location(client.tracking_uri, name))
    if experiment.lifecycle_stage == "deleted":
        raise _deleted(name)
    return experiment.experiment_id


def start_run(cfg: MlflowConfig, run_id: str | None = None) -> TrackedRun:
    """Opens a new training run, or reopens `run_id` (a resumed training) so its history continues."""
    uri = resolve_tracking_uri(cfg.tracking_uri)
    check_reachable(uri)
    follow_moved_store(uri, cfg.experiment)
    try:
        client = MlflowClient(tracking_uri=uri)
        if run_id is not None:
            client.update_run(run_id, status="RUNNING")
            return TrackedRun(client, run_id, uri)
        experiment_id = experiment_id_for(client, cfg.experiment)
        run = create_run(client, experiment_id, cfg.run_name or os.environ.get("DVC_EXP_NAME"), run_tags("train"))
    except CnnpipeError:
        raise
    except Exception as exc:  # noqa: BLE001 - the store broke after check_store: still one line
        raise unusable(uri, exc) from None
    tracked = TrackedRun(client, run.info.run_id, uri)
    prepare = lambda: prepare_for_comparison(client, experiment_id, tracked.run_id)  # noqa: E731
    tracked.log_call("the run colour and the experiment's compare view", prepare)
    return tracked


def create_run(client: MlflowClient, experiment_id: str, run_name: str | None, tags: dict[str, str]) -> Run:
    """MLflow draws generated run names from the global `random`, which the training's seed_everything has
    seeded: every run would get the same name. Draw it from fresh entropy, then give training its state back."""
    state = random.getstate()
    random.seed()
    try:
        return client.create_run(experiment_id, run_name=run_name, tags=tags)
    finally:
        random.setstate(state)
