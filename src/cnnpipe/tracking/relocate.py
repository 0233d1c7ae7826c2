"""A local SQLite store that was copied or moved keeps its artifacts beside it, in the new place.

MLflow stores artifact locations as absolute paths: SqlAlchemyStore.create_experiment makes the experiment's
`file://.../mlruns/NAME` absolute (resolve_uri_if_local), and every run, logged model, model version and trace
gets an absolute location derived from it. After `cp -r repo repo2` (or a teammate's rsync, or a renamed
folder) the copy's runs would write their artifacts into the original folder, and the copied runs' artifacts
would resolve there too (or nowhere, once it is gone). A relative `sqlite:///mlflow.db` means *this*
repository wherever it lives, so before a run is opened the locations that still name the old folder's
`mlruns/` are rewritten to this one's.

Where MLflow (3.17) keeps artifact locations in the database, read off its SQLAlchemy models
(mlflow/store/tracking/dbmodels/models.py, mlflow/store/model_registry/dbmodels/models.py) and checked
against a real store (every text cell searched for the folder after logging a run, an artifact, a
registered pytorch model and a trace):

- experiments.artifact_location: `file:///OLD/mlruns/NAME`; the Default experiment's as a bare `/CWD/mlruns/0`
- runs.artifact_uri: `<experiment's>/<run id>/artifacts`
- logged_models.artifact_location: `<experiment's>/models/<model id>/artifacts` (MLflow 3 models)
- model_versions.storage_location: the logged model's location; model_versions.source: `models:/<model id>`
  for MLflow 3 models, but an artifact path when a version is registered from one (create_model_version)
- trace_tags `mlflow.artifactLocation` (and `mlflow.trace.archiveLocation`): `<experiment's>/traces/<id>/artifacts`

Left alone on purpose: datasets.dataset_source and evaluation records (where the user's data came from, not
where MLflow put anything), params and tags (what a run recorded), anything not under OLD/mlruns.
"""

from __future__ import annotations

import os
import re
import sqlite3
from contextlib import closing
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

from cnnpipe.errors import CnnpipeError

ARTIFACTS = "mlruns"  # the folder beside the database that holds its artifacts (mlflow_run._artifact_location)
TRACE_LOCATION_TAGS = ("mlflow.artifactLocation", "mlflow.trace.archiveLocation")
# (table, column, the tag keys a row must have, or None for every row); missing tables (an older schema) are skipped
LOCATIONS: tuple[tuple[str, str, tuple[str, ...] | None], ...] = (
    ("experiments", "artifact_location", None),
    ("runs", "artifact_uri", None),
    ("logged_models", "artifact_location", None),
    ("model_versions", "source", None),
    ("model_versions", "storage_location", None),
    ("trace_tags", "value", TRACE_LOCATION_TAGS),
)


def folder_name(experiment: str) -> str:
    """The experiment's folder under mlruns/ (mlflow_run._artifact_location puts new experiments there)."""
    return re.sub(r"[^\w.-]", "_", experiment)


def relocate_store(db_path: Path, experiment: str, *, wait: float = 10.0) -> str | None:
    """Points the artifact locations that a copied or moved SQLite store still has in its old folder at its
    new one (`<folder of db_path>/mlruns/...`), in one transaction.

    The old folder is read off `experiment`'s artifact location, when that is `<OLD>/mlruns/<its name>` (as
    cnnpipe creates it); every location under `<OLD>/mlruns/`, of any experiment, is rewritten, prefix-exact,
    and nothing else. Returns a one-line message saying what was done, or None when there was nothing to do
    (no such file, no such experiment, its artifacts elsewhere, or already here). A database that is locked
    for longer than `wait` seconds, or cannot be written, raises CnnpipeError and is left as it was.
    """
    db_path = Path(db_path)
    if not db_path.is_file():
        return None
    root = db_path.resolve().parent
    try:
        # MLflow has no API to change an artifact location (experiments' are immutable, runs', models' and
        # versions' are derived once), so this is sqlite3 on MLflow's own tables.
        with closing(sqlite3.connect(f"{db_path.resolve().as_uri()}?mode=rw", uri=True, timeout=wait)) as db:
            db.isolation_level = None  # transactions are begun and ended here, explicitly
            if not _old_folders(db, experiment, root):
                return None  # the common case: read only, no lock taken, fine on a read-only file
            db.execute("BEGIN IMMEDIATE")  # the write lock first: no other writer between reading and rewriting
            try:
                olds = _old_folders(db, experiment, root)  # again, under the lock: another process may have done it
                count = sum(_rewrite(db, old, root) for old in olds)
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
    except sqlite3.Error as exc:
        raise CnnpipeError(
            f"{_line(str(db_path))}: cannot point its MLflow artifact paths into {_line(str(root / ARTIFACTS))} "
            f"({_line(str(exc))}); make the file writable or close what holds it open, and rerun"
        ) from None
    if not olds:
        return None
    return (
        f"{_line(db_path.name)} was moved or copied from {' and '.join(_line(str(old)) for old, _ in olds)}: "
        f"{count} artifact paths now point into {_line(str(root / ARTIFACTS))}"
    )


def _old_folders(db: sqlite3.Connection, experiment: str, root: Path) -> list[tuple[Path, str]]:
    """The folders (and the `.../mlruns` prefix exactly as stored) that `experiment`'s location says the
    database lived in before, when that is not `root`."""
    if not _table_columns(db, "experiments") >= {"name", "artifact_location"}:
        return []  # not an MLflow store: sqlite_problem says so
    olds: list[tuple[Path, str]] = []
    for (location,) in db.execute("SELECT artifact_location FROM experiments WHERE name = ?", (experiment,)):
        folder = _local_path(location or "")
        if folder is None or folder.name != folder_name(experiment) or folder.parent.name != ARTIFACTS:
            continue  # a server's, s3://, a folder of the user's own: not cnnpipe's mlruns/NAME beside the db
        old = folder.parent.parent
        if old == root or _same_folder(old, root) or any(old == known for known, _ in olds):
            continue
        olds.append((old, location.rstrip("/").rsplit("/", 1)[0]))
    return olds


def _rewrite(db: sqlite3.Connection, old: tuple[Path, str], root: Path) -> int:
    """Rewrites every stored location under old/mlruns to root/mlruns; the number of values changed."""
    folder, stored = old
    new_uri, new_path = (root / ARTIFACTS).as_uri(), str(root / ARTIFACTS)
    # the forms MLflow writes: the experiment's own spelling (what runs, models and traces inherit), the
    # canonical file URI, and a bare path (the Default experiment's)
    prefixes = {
        stored: new_path if stored.startswith("/") else new_uri,
        (folder / ARTIFACTS).as_uri(): new_uri,
        f"file://{folder / ARTIFACTS}": new_uri,
        str(folder / ARTIFACTS): new_path,
    }
    changed = 0
    for table, column, keys in LOCATIONS:
        columns = _table_columns(db, table)
        if column not in columns or (keys and "key" not in columns):
            continue
        where = " OR ".join(f'"{column}" = ? OR substr("{column}", 1, ?) = ?' for _ in prefixes)
        args: list[object] = [arg for prefix in prefixes for arg in (prefix, len(prefix) + 1, prefix + "/")]
        if keys:
            where = f"({where}) AND key IN ({', '.join('?' for _ in keys)})"
            args += keys
        rows = db.execute(f'SELECT rowid, "{column}" FROM "{table}" WHERE {where}', args).fetchall()
        for rowid, value in rows:
            prefix = next(p for p in prefixes if value == p or value.startswith(p + "/"))
            db.execute(
                f'UPDATE "{table}" SET "{column}" = ? WHERE rowid = ?',
                (prefixes[prefix] + value[len(prefix) :], rowid),
            )
        changed += len(rows)
    return changed


def _table_columns(db: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in db.execute(f'PRAGMA table_info("{table}")')}


def _local_path(location: str) -> Path | None:
    """The local folder an artifact location names (`file:` URI or absolute path), else None."""
    if location.startswith("file:"):
        parsed = urlparse(location)
        if parsed.netloc not in ("", "localhost"):
            return None
        return Path(url2pathname(parsed.path))
    return Path(location) if os.path.isabs(location) and "://" not in location else None


def _same_folder(old: Path, root: Path) -> bool:
    """The old path is this folder under another name (a symlink, a mount): nothing moved."""
    try:
        return old.exists() and os.path.samefile(old, root)
    except OSError:
        return False


def _line(text: str) -> str:
    """A path or an error on one line, whatever characters it holds."""
    return re.sub(r"[\x00-\x1f\x7f]", lambda match: repr(match.group())[1:-1], text)
