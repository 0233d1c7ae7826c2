"""The image store as MLflow dataset inputs of a run, identified by the hash DVC records for it.

Each run names the exact data it saw: the digest is the store's DVC hash (`md5: <hex>.dir` in dvc.lock), so a
run is matched to a pipeline state by `grep <digest> dvc.lock` or `git log -S <digest> dvc.lock`. It is computed
from the files, not read from dvc.lock: outside `dvc repro` (a plain `cnnpipe train`) the lock may be stale,
and a stale digest would be silently wrong.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from mlflow.data.dataset_source import DatasetSource
from mlflow.data.dataset_source_registry import register_dataset_source
from mlflow.data.schema import TensorDatasetSchema
from mlflow.entities import Dataset, DatasetInput, InputTag
from mlflow.types.schema import Schema, TensorSpec
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT
from mlflow.utils.validation import MAX_DATASET_DIGEST_SIZE

from cnnpipe.data.store import load_manifest
from cnnpipe.errors import CnnpipeError

# mlflow.data.context values (as MLflow's autologging tags its inputs) -> the store's splits.
CONTEXTS = {"train": "train", "validation": "val", "test": "test"}


def _dvc_root(folder: Path) -> Path | None:
    """The innermost DVC repository holding `folder` (it owns the .dvcignore rules that apply), else None."""
    return next((parent for parent in folder.parents if (parent / ".dvc").is_dir()), None)


def dvc_hash(folder: Path) -> str:
    """`<md5>.dir`, what `dvc repro`/`dvc commit`/`dvc add` record for the output directory `folder`.

    Runs DVC's own `dvc_data.hashfile.build` (dry run: nothing is cached) with the repository's .dvcignore
    rules, as `dvc` does; only DVC's hash cache (.dvc/tmp) is skipped, so every file is read: ~60-80 ms for
    Fashion-MNIST's 55 MB (warm page cache, 2 AMD EPYC cores).
    """
    from dvc.ignore import DvcIgnoreFilter
    from dvc_data.hashfile.build import build
    from dvc_data.hashfile.db import HashFileDB
    from dvc_objects.fs.local import LocalFileSystem
    from dvc_objects.fs.memory import MemoryFileSystem

    folder = Path(folder).resolve()  # dvc works on real paths: its repo root is realpath'd too
    if not folder.is_dir():
        raise CnnpipeError(f"{folder}: not a directory; run `dvc repro pull` (or `cnnpipe pull`) first")
    fs = LocalFileSystem()
    root = _dvc_root(folder)
    ignore = DvcIgnoreFilter(fs, str(root)) if root else None
    # A staging object store in memory, as DVC's own dry runs use: it receives only the small .dir listing.
    odb = HashFileDB(MemoryFileSystem(), "memory://cnnpipe-dvc-hash")
    _, _, tree = build(odb, str(folder), fs, "md5", dry_run=True, ignore=ignore)
    return tree.hash_info.value


class DvcDatasetSource(DatasetSource):
    """Where a run's data came from: the DVC output path in the repository and the data source it was pulled
    from. No absolute path of the machine that trained: the path is relative to the repository, and the data
    itself is found by the run's git commit (dvc.lock) and the digest, e.g. `dvc checkout` or `dvc pull`.

    Registered with MLflow at import, so `mlflow.data.get_source(dataset_input)` gives it back.
    """

    def __init__(self, path: str, data_source: str):
        self.path = path
        self.data_source = data_source

    @staticmethod
    def _get_source_type() -> str:
        return "dvc"

    def load(self, root: str | os.PathLike = ".") -> Path:
        """The folder in a checkout of the repository at `root` (its contents: the run's commit + `dvc pull`)."""
        return Path(root) / self.path

    @staticmethod
    def _can_resolve(raw_source: Any) -> bool:
        return False  # made explicitly, never guessed from a string by mlflow.data's resolver

    @classmethod
    def _resolve(cls, raw_source: Any) -> DvcDatasetSource:
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "data_source": self.data_source}

    @classmethod
    def from_dict(cls, source_dict: dict[Any, Any]) -> DvcDatasetSource:
        return cls(path=source_dict["path"], data_source=source_dict["data_source"])


register_dataset_source(DvcDatasetSource)


def _relative(folder: Path) -> str:
    """`folder` relative to its DVC repository, else to the working directory, else just its name."""
    folder = folder.resolve()
    for root in (_dvc_root(folder), Path.cwd().resolve()):
        if root is not None and folder.is_relative_to(root):
            return folder.relative_to(root).as_posix()
    return folder.name


def dataset_inputs(pulled: Path, digest: str, contexts: Sequence[str] = ("train", "validation")) -> list[DatasetInput]:
    """One input per context, for `MlflowClient().log_inputs(run_id, datasets=...)`; `digest` is the store's
    `dvc_hash`, which its caller needs too (hashing a large store once is enough).

    Named `<data source>/<split>` (e.g. `fashion-mnist/train`): MLflow keeps only one input per run for each
    (name, digest), so the splits, which share the store's digest, need names of their own. The digest is the
    full DVC hash: 32 hex digits + `.dir` are exactly MLflow's limit of 36 characters. The schema is MLflow's
    tensor schema (what mlflow.data's NumPy datasets log) of the model's input, float32 [N, C, H, W] in [0, 1]
    (the stored uint8 [N, H, W, C] / 255), and of the int64 label, plus `classes`: label index -> class name.
    """
    pulled = Path(pulled)
    manifest = load_manifest(pulled)
    if unknown := [context for context in contexts if context not in CONTEXTS]:
        raise CnnpipeError(f"dataset context {unknown[0]!r}: valid are {', '.join(CONTEXTS)}")
    digest = digest[:MAX_DATASET_DIGEST_SIZE]  # 36 characters: never cut
    source = DvcDatasetSource(path=_relative(pulled), data_source=manifest.source)
    tensors = TensorDatasetSchema(
        features=Schema([TensorSpec(np.dtype(np.float32), (-1, *manifest.shape), "image")]),
        targets=Schema([TensorSpec(np.dtype(np.int64), (-1,), "label")]),
    )
    schema = json.dumps({**tensors.to_dict(), "image_range": [0.0, 1.0], "classes": manifest.classes})
    inputs = []
    for context in contexts:
        split = CONTEXTS[context]
        profile = {
            "split": split,
            "num_examples": manifest.counts[split],
            "class_counts": manifest.class_counts[split],
            "num_classes": manifest.num_classes,
            "splits": manifest.counts,
        }
        dataset = Dataset(
            name=f"{manifest.source}/{split}",
            digest=digest,
            source_type=DvcDatasetSource._get_source_type(),
            source=source.to_json(),
            schema=schema,
            profile=json.dumps(profile),
        )
        inputs.append(DatasetInput(dataset, tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)]))
    return inputs
