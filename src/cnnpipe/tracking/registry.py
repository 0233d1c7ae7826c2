"""The Model Registry: a version per complete training, with its provenance; the alias `champion` names the best.

Serve `models:/NAME@champion`: the alias moves only when a newly evaluated version has a higher test accuracy
on the same test data (DVC's hash of data/pulled), so a smoke test or a worse experiment never replaces what
is served. Versions are tagged so the registry alone says where each came from.
"""

from __future__ import annotations

from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode
from mlflow.tracking import MlflowClient

from cnnpipe.config import MlflowConfig, TrainConfig

CHAMPION = "champion"
ACCURACY_TAG = "test.acc"
DATA_TAG = "test.data"
# The training run's tags each version carries, under the names the registry shows.
VERSION_TAGS = {"mlflow.source.git.commit": "git.commit", "git.dirty": "git.dirty", "dvc.experiment": "dvc.experiment"}
DESCRIPTION = (
    "CNN image classifiers trained by cnnpipe. Input: float32 images [N, C, H, W] with values in [0, 1]; "
    "output: [N, K] class probabilities, one column per class in the order each version's description lists. "
    f"Serve the alias @{CHAMPION}: the best test accuracy on the same test data."
)


def should_register(cfg: MlflowConfig, train: TrainConfig) -> bool:
    """`auto` registers complete trainings only: a run on part of the batches (a smoke test) is no candidate."""
    if cfg.register_model != "auto":
        return cfg.register_model == "always"
    return train.complete


def describe_version(
    client: MlflowClient, name: str, version: str, classes: list[str], shape: tuple[int, ...], data_digest: str
) -> None:
    """The registered model's description (once), the version's own (its classes and input) and its provenance:
    the training run's commit and DVC experiment, and the DVC hash of the data it learnt from."""
    if not client.get_registered_model(name).description:
        client.update_registered_model(name, description=DESCRIPTION)
    channels, height, width = shape
    client.update_model_version(
        name,
        version,
        description=(
            f"Input float32 [N, {channels}, {height}, {width}] in [0, 1]. Output [N, {len(classes)}] probabilities "
            f"of the classes {', '.join(classes)}."
        ),
    )
    trained = client.get_run(client.get_model_version(name, version).run_id).data.tags
    tags = {new: trained[old] for old, new in VERSION_TAGS.items() if old in trained}
    for key, value in {**tags, "data.digest": data_digest}.items():
        client.set_model_version_tag(name, version, key, value)


def not_of_run(client: MlflowClient, name: str, version: str, run_id: str) -> str | None:
    """Why version `version` of `name` in this store is not the model that training run `run_id` logged (one line),
    or None when it is. A version number means something only in the store that gave it: a store copied from
    another clone, or a name deleted and registered anew, has a version of that number from another training."""
    try:
        found = client.get_model_version(name, version)
    except MlflowException as exc:
        if exc.error_code != ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            raise
        return f"{name} version {version} is not in this tracking store's registry"
    source = _source_run(client, found.source)
    if found.run_id == run_id and source in (None, run_id):
        return None
    return f"{name} version {version} here is the model of MLflow run {source or found.run_id}, not of this training"


def _source_run(client: MlflowClient, source: str) -> str | None:
    """The run that logged a version's files: a `runs:/ID/...` source's, or a `models:/m-ID` logged model's."""
    if source.startswith("runs:/"):
        return source.removeprefix("runs:/").split("/", 1)[0]
    if source.startswith("models:/m-"):
        return client.get_logged_model(source.removeprefix("models:/")).source_run_id
    return None  # an artifact path: the version's run_id alone says whose it is


def _champion(client: MlflowClient, name: str):
    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:  # no alias yet
        return None


def promote(client: MlflowClient, name: str, version: str, accuracy: float, data: str) -> str:
    """Tags `version` with its test result and moves `champion` to it only if it beats the champion on the same
    data; returns what happened, in one line."""
    client.set_model_version_tag(name, version, ACCURACY_TAG, f"{accuracy:.6f}")
    client.set_model_version_tag(name, version, DATA_TAG, data)
    champion = _champion(client, name)
    if champion is not None and str(champion.version) != version:  # MLflow 3 gives versions as int
        held = champion.tags.get(ACCURACY_TAG)
        if champion.tags.get(DATA_TAG) != data:
            return (
                f"{name}@{CHAMPION} stays version {champion.version}: it was tested on other data; "
                f"move the alias by hand in the MLflow UI if this data replaces that"
            )
        if held is not None and float(held) >= accuracy:
            return (
                f"{name}@{CHAMPION} stays version {champion.version}: test accuracy {float(held):.4f} >= {accuracy:.4f}"
            )
    if champion is not None and str(champion.version) == version:
        return f"{name}@{CHAMPION} is version {version}"
    client.set_registered_model_alias(name, CHAMPION, version)
    before = f" (was version {champion.version})" if champion is not None else ""
    return f"{name}@{CHAMPION} is now version {version}: test accuracy {accuracy:.4f}{before}"
