"""The images are a DVC dependency of `pull` (`${data.path}` in dvc.yaml), checked with real DVC in a temporary
git repository: a picture added to a folder outside the repository, or an archive replaced inside it, shows up in
`dvc status` as a changed `pull`, and an untouched source keeps `dvc repro` a quick no-op."""

from __future__ import annotations

import json
import shutil
import time

import pytest

from tests.helpers import dvc_repo, sh, small_run_params, write_params
from tests.images import make_archive, make_image_folder

NO_OP_SECONDS = 3.0  # 0.5 s measured on 2 shared cores (dvc's own start included): generous for a busy machine


def imagefolder_repo(root, raw_params, path: str):
    raw = small_run_params(raw_params, root / "repo")
    raw["data"].update(source="imagefolder", path=path, image_size=[8, 8], classes=[], val_fraction=0.25)
    (root / "repo").mkdir()
    return dvc_repo(root / "repo", raw)


def no_op_seconds(repo) -> float:
    start = time.perf_counter()
    assert "didn't change" in sh("dvc", "repro", "pull", cwd=repo).stdout
    return time.perf_counter() - start


@pytest.mark.e2e
def test_a_picture_added_outside_the_repository_reruns_pull(tmp_path, raw_params):
    folder = make_image_folder(tmp_path / "pets", per_class=6, size=(8, 8))
    repo = imagefolder_repo(tmp_path, raw_params, str(folder))
    sh("dvc", "repro", "pull", cwd=repo)
    assert "up to date" in sh("dvc", "status", "pull", cwd=repo).stdout
    seconds = no_op_seconds(repo)
    print(f"no-op `dvc repro pull` with an untouched folder: {seconds:.2f} s")
    assert seconds < NO_OP_SECONDS

    shutil.copy(folder / "cat" / "0.png", folder / "cat" / "new.png")
    status = sh("dvc", "status", "pull", cwd=repo).stdout
    assert "changed deps" in status and f"modified:           {folder}" in status
    sh("dvc", "repro", "pull", cwd=repo)
    assert sum(json.loads((repo / "data/pulled/manifest.json").read_text())["counts"].values()) == 13
    (folder / "dog" / "0.png").unlink()
    assert "changed deps" in sh("dvc", "status", "pull", cwd=repo).stdout


@pytest.mark.e2e
def test_an_archive_inside_the_repository_is_hashed_and_a_new_one_reruns_pull(tmp_path, raw_params):
    repo = imagefolder_repo(tmp_path, raw_params, "pets.zip")
    raw = small_run_params(raw_params, repo)
    raw["data"].update(source="archive", path="pets.zip", image_size=[8, 8], classes=[], val_fraction=0.25)
    write_params(repo / "params.yaml", raw)
    make_archive(make_image_folder(tmp_path / "pets", per_class=6, size=(8, 8)), repo / "pets.zip")
    sh("dvc", "repro", "pull", cwd=repo)
    assert "path: pets.zip" in (repo / "dvc.lock").read_text()
    assert no_op_seconds(repo) < NO_OP_SECONDS

    make_image_folder(tmp_path / "pets", classes=("emu",), per_class=6, size=(8, 8))
    make_archive(tmp_path / "pets", repo / "pets.zip")
    assert "modified:           pets.zip" in sh("dvc", "status", "pull", cwd=repo).stdout
    sh("dvc", "repro", "pull", cwd=repo)
    assert '"emu"' in (repo / "data/pulled/manifest.json").read_text()
