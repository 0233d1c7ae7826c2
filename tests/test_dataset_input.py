"""The image store as MLflow dataset inputs: digest = the hash real `dvc` records, logged into a real store."""

import json
import sys
from pathlib import Path

import mlflow.data
import numpy as np
import yaml
from mlflow.data.schema import TensorDatasetSchema
from mlflow.tracking import MlflowClient

from cnnpipe.config import parse_params
from cnnpipe.data.store import load_manifest
from cnnpipe.paths import Paths
from cnnpipe.stages import pull
from cnnpipe.tracking.dataset import DvcDatasetSource, dataset_inputs, dvc_hash
from tests.helpers import sh, write_params
from tests.images import make_image_folder


def imagefolder_params(raw_params, folder: Path) -> dict:
    raw_params["data"].update(source="imagefolder", path=str(folder), image_size=[12, 10], val_fraction=0.25)
    return raw_params


def test_dvc_hash_is_what_dvc_records_in_dvc_lock_and_dvc_files(tmp_path, raw_params):
    """A real store written by `dvc repro` of a pull stage (dvc.lock), and a folder with a subfolder, an empty
    file, CRLF text and a .dvcignore'd file under `dvc add` (its .dvc file); then edited and committed again."""
    make_image_folder(tmp_path / "pets", classes=("cat", "dog", "emu"), per_class=8)
    repo = tmp_path / "repo"
    repo.mkdir()
    write_params(repo / "params.yaml", imagefolder_params(raw_params, tmp_path / "pets"))
    stage = {"cmd": f"{sys.executable} -m cnnpipe pull", "params": ["seed", "data"], "outs": ["data/pulled"]}
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"pull": stage}}))
    misc = repo / "misc"
    (misc / "sub/deeper").mkdir(parents=True)
    (misc / "notes.txt").write_bytes(b"line one\r\nline two\r\n")  # DVC 3's md5 hashes text as is
    (misc / "empty").write_bytes(b"")
    (misc / "sub/weights.bin").write_bytes(np.random.default_rng(0).bytes(3 << 20))  # > DVC's 2 MiB threshold
    (misc / "sub/more.bin").write_bytes(np.random.default_rng(1).bytes(3 << 20))
    (misc / "sub/deeper/x.json").write_text('{"a": 1}\n')
    (misc / "scratch.tmp").write_text("ignored\n")
    (repo / ".dvcignore").write_text("*.tmp\n")
    for command in (("git", "init", "-q"), ("dvc", "init", "-q"), ("dvc", "config", "core.analytics", "false")):
        sh(*command, cwd=repo)
    sh("dvc", "repro", "-q", cwd=repo)
    sh("dvc", "add", "-q", "misc", cwd=repo)

    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    (out,) = lock["stages"]["pull"]["outs"]
    assert out["path"] == "data/pulled" and out["md5"].endswith(".dir")
    assert dvc_hash(repo / "data/pulled") == out["md5"]
    recorded = yaml.safe_load((repo / "misc.dvc").read_text())["outs"][0]
    assert recorded["nfiles"] == 5  # scratch.tmp is ignored, by DVC and by dvc_hash
    assert dvc_hash(repo / "misc") == recorded["md5"]

    (misc / "sub/deeper/x.json").write_text('{"a": 2}\n')
    before = recorded["md5"]
    sh("dvc", "commit", "-q", "-f", "misc.dvc", cwd=repo)
    recorded = yaml.safe_load((repo / "misc.dvc").read_text())["outs"][0]
    assert recorded["md5"] != before and dvc_hash(repo / "misc") == recorded["md5"]


def test_dataset_inputs_round_trip_through_a_sqlite_tracking_store(tmp_path, raw_params, monkeypatch):
    make_image_folder(tmp_path / "pets", classes=("cat", "dog", "emu"), per_class=8)
    monkeypatch.chdir(tmp_path)  # a stage's working directory: data/pulled is relative to it
    manifest = pull.run(parse_params(imagefolder_params(raw_params, tmp_path / "pets")), Paths())
    pulled = tmp_path / "data/pulled"  # given absolute: the logged path is still the relative one

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    run = client.create_run(client.create_experiment("datasets"))
    client.log_inputs(
        run.info.run_id, datasets=dataset_inputs(pulled, dvc_hash(pulled), contexts=("train", "validation", "test"))
    )
    logged = client.get_run(run.info.run_id).inputs.dataset_inputs

    contexts = {item.tags[0].value: item.dataset for item in logged}
    assert [tag.key for item in logged for tag in item.tags] == ["mlflow.data.context"] * 3
    assert sorted(contexts) == ["test", "train", "validation"]
    digest = dvc_hash(pulled)
    assert len(digest) == 36 and digest.endswith(".dir")
    for context, split in (("train", "train"), ("validation", "val"), ("test", "test")):
        dataset = contexts[context]
        assert dataset.name == f"imagefolder/{split}" and dataset.digest == digest
        assert str(tmp_path) not in json.dumps(dataset.to_dictionary())
        assert dataset.source_type == "dvc"
        assert json.loads(dataset.source) == {"path": "data/pulled", "data_source": "imagefolder"}
        source = mlflow.data.get_source(dataset)  # the registered source type parses it back
        assert isinstance(source, DvcDatasetSource) and source.load(tmp_path) == pulled

        schema = json.loads(dataset.schema)
        tensors = TensorDatasetSchema.from_dict(schema)
        (image,), (label,) = tensors.features.inputs, tensors.targets.inputs
        assert (image.name, image.type, image.shape) == ("image", np.dtype("float32"), (-1, 3, 12, 10))
        assert (label.name, label.type, label.shape) == ("label", np.dtype("int64"), (-1,))
        assert schema["classes"] == ["cat", "dog", "emu"] and schema["image_range"] == [0.0, 1.0]

        profile = json.loads(dataset.profile)
        assert profile["splits"] == manifest.counts == {"train": 12, "val": 6, "test": 6}
        assert profile["num_examples"] == manifest.counts[split] and profile["num_classes"] == 3
        assert profile["class_counts"] == manifest.class_counts[split]
    assert load_manifest(pulled) == manifest
