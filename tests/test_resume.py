"""Which checkpoint a rerun resumes from: only one of the same configuration, readable, the newest of them."""

import os

import torch

from cnnpipe.models import resume

NETWORK = torch.nn.Linear(3, 2)


def save_checkpoint(path, network=NETWORK, epoch=3):
    """What Lightning's checkpoints hold that resuming reads: the weights, the epoch, the loops' state."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": network.state_dict(), "epoch": epoch, "loops": {}}, path)
    return path


def test_a_preemption_checkpoint_newer_than_last_is_resumed_and_cleared_with_the_rest(tmp_path):
    resume.ResumeState("key", "run", "sqlite:///m.db").write(tmp_path)
    assert resume.resumable(tmp_path, "key", NETWORK) is None  # nothing to resume from yet
    save_checkpoint(tmp_path / resume.LAST)
    assert resume.latest_checkpoint(tmp_path, "key") == tmp_path / resume.LAST
    # Lightning's name for what it saves on SLURM's SIGUSR1
    preempted = save_checkpoint(resume.preemption_dir(tmp_path, "key") / "hpc_ckpt_1.ckpt", epoch=4)
    os.utime(tmp_path / resume.LAST, (1, 1))
    assert resume.latest_checkpoint(tmp_path, "key") == preempted
    assert resume.latest_checkpoint(tmp_path, "other key") == tmp_path / resume.LAST
    assert resume.resumable(tmp_path, "key", NETWORK) == resume.Resumption("run", preempted)
    assert resume.resumable(tmp_path, "other key", NETWORK) is None
    resume.clear(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_completed_training_is_not_resumed(tmp_path):
    resume.ResumeState("key", "run", "sqlite:///m.db", completed=True).write(tmp_path)
    save_checkpoint(tmp_path / resume.LAST)
    assert resume.resumable(tmp_path, "key", NETWORK) is None


def test_a_truncated_or_foreign_checkpoint_is_set_aside_and_the_next_one_is_used(tmp_path, capsys):
    resume.ResumeState("key", "run", "sqlite:///m.db").write(tmp_path)
    last = save_checkpoint(tmp_path / resume.LAST)
    last.write_bytes(last.read_bytes()[:200])  # truncated, as by a full disk or a copy cut short
    assert resume.resumable(tmp_path, "key", NETWORK) is None
    assert not last.exists() and (tmp_path / f"{resume.LAST}{resume.SET_ASIDE}").exists()
    assert f"{last} cannot be resumed" in capsys.readouterr().err

    save_checkpoint(last, network=torch.nn.Linear(5, 2))  # another network's weights
    assert resume.resumable(tmp_path, "key", NETWORK) is None
    assert "belong to another network" in capsys.readouterr().err

    good = save_checkpoint(tmp_path / resume.LAST)
    os.utime(good, (1, 1))
    preempted = resume.preemption_dir(tmp_path, "key") / "hpc_ckpt_1.ckpt"
    preempted.parent.mkdir()
    preempted.write_bytes(b"not a checkpoint")  # the newer one is unreadable: the older good one is resumed
    assert resume.resumable(tmp_path, "key", NETWORK) == resume.Resumption("run", good)
