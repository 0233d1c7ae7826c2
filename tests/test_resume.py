"""Which checkpoint a rerun resumes from: only one of the same configuration, the newest of them."""

import os

from cnnpipe.models import resume


def test_a_preemption_checkpoint_newer_than_last_is_resumed_and_cleared_with_the_rest(tmp_path):
    resume.ResumeState("key", "run", "sqlite:///m.db").write(tmp_path)
    assert resume.resumable(tmp_path, "key") is None  # nothing to resume from yet
    (tmp_path / resume.LAST).write_bytes(b"epoch 3")
    assert resume.latest_checkpoint(tmp_path, "key") == tmp_path / resume.LAST
    folder = resume.preemption_dir(tmp_path, "key")
    folder.mkdir()
    preempted = folder / "hpc_ckpt_1.ckpt"  # Lightning's name for what it saves on SLURM's SIGUSR1
    preempted.write_bytes(b"epoch 4, batch 120")
    os.utime(tmp_path / resume.LAST, (1, 1))
    assert resume.latest_checkpoint(tmp_path, "key") == preempted
    assert resume.latest_checkpoint(tmp_path, "other key") == tmp_path / resume.LAST
    assert resume.resumable(tmp_path, "key").run_id == "run"
    assert resume.resumable(tmp_path, "other key") is None
    resume.clear(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_completed_training_is_not_resumed(tmp_path):
    resume.ResumeState("key", "run", "sqlite:///m.db", completed=True).write(tmp_path)
    (tmp_path / resume.LAST).write_bytes(b"epoch 15")
    assert resume.resumable(tmp_path, "key") is None
