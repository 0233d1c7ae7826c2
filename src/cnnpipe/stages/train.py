"""Training: checks the network's shapes, then fits it with Lightning, logged to one MLflow run.

Rerunning after an interruption resumes from the last checkpoint into the same MLflow run. The stage's
outputs are written at the end of fit (`Publish.on_fit_end`), before Lightning ends the run FINISHED.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import warnings
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.exceptions import SIGTERMException
from pytorch_lightning.utilities.model_summary import ModelSummary
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from cnnpipe import plots
from cnnpipe.analysis import report
from cnnpipe.config import Params, TrainConfig
from cnnpipe.console import console, warn
from cnnpipe.data import augmentation
from cnnpipe.data.datamodule import ImageDataModule, to_model_input
from cnnpipe.data.store import MANIFEST, load_manifest, load_store
from cnnpipe.errors import CnnpipeError
from cnnpipe.models import resume
from cnnpipe.models.callbacks import EpochHistory
from cnnpipe.models.hardware import auto_workers, chosen_accelerator, keep_freed_memory, skip_absent_nvml
from cnnpipe.models.module import CnnClassifier, load_model
from cnnpipe.models.network import forward_flops, shape_table, widths
from cnnpipe.models.own_network import check_watched, source_digest
from cnnpipe.models.trainer import build_trainer, describe, quiet_lightning
from cnnpipe.outputs import replaced_atomically, write_atomically
from cnnpipe.paths import Paths
from cnnpipe.signals import Terminated
from cnnpipe.tracking import registry
from cnnpipe.tracking.dataset import dataset_inputs, dvc_hash
from cnnpipe.tracking.logger import MlflowRunLogger
from cnnpipe.tracking.mlflow_model import log_model
from cnnpipe.tracking.mlflow_run import TrackedRun, check_reachable, check_store, resolve_tracking_uri
from cnnpipe.tracking.run_record import RunRecord

ERF_IMAGES = 32  # validation images the effective receptive field is averaged over
MODEL_EXAMPLES = 2  # validation images stored as the logged model's input example
HISTORY = "train_history.csv"  # written beside the checkpoints every epoch, to metrics/ when training finished
# metrics/train.json: what `dvc metrics show` and `dvc exp show` compare, in 120 columns with test.json (README).
# The rest of the summary (epochs, throughput, parameters) goes to MLflow, and per epoch to train_history.csv.
HEADLINE = ("best/val/acc", "best/val/loss", "best/epoch", "train_time_s")


def build_module(params: Params, datamodule: ImageDataModule) -> CnnClassifier:
    manifest = datamodule.manifest
    return CnnClassifier(
        model=params.model.model_dump(mode="json", by_alias=True, exclude_none=True),
        train=params.train.model_dump(mode="json"),
        input_shape=tuple(manifest.shape),
        classes=manifest.classes,
        mean=manifest.mean,
        std=manifest.std,
        trained_mirrored=datamodule.trains_mirrored,
        network_digest=source_digest(params.model),
    )


def preflight(params: Params) -> None:
    """What train checks before it touches anything, for `cnnpipe check`: Lightning's settings, that DVC watches
    the network's own file, and the store; and that augment's copies of the pulled data fit."""
    check_watched(params.model)
    _check_devices(params.train)
    build_trainer(params.train, Paths().checkpoints, Paths().checkpoints, [])
    if (Paths().pulled / MANIFEST).exists():
        augmentation.check_copies_fit(params.augment.copies, load_manifest(Paths().pulled), Paths().augmented)
    check_store(params.mlflow)


def _check_devices(train: TrainConfig) -> None:
    """Device ids this machine lacks, named with what it has: Lightning's own error is a TypeError on a CPU."""
    kind = chosen_accelerator(train.accelerator)
    if not isinstance(train.devices, list) or kind == "mps":
        return
    gpus = torch.cuda.device_count() if kind == "cuda" else 0
    absent = [device for device in train.devices if device >= gpus]
    if absent:
        valid = f"ids 0 to {gpus - 1}, a count up to {gpus}" if gpus else "a count of processes such as 1"
        raise CnnpipeError(
            f"train.devices: {train.devices} names GPU id(s) {absent}, and this machine has {gpus} GPU(s) and "
            f"{os.cpu_count()} CPU(s) (train.accelerator {train.accelerator}: the {kind.upper()}); valid: {valid}, "
            "or auto"
        )


def _log_model_description(run: TrackedRun, module: CnnClassifier, pulled: Path, folder: Path) -> torch.Tensor:
    """Model summary, receptive fields and the effective receptive field over real validation images (returned)."""
    _, splits = load_store(pulled)
    images = to_model_input(splits["val"].images[:ERF_IMAGES])
    description = report.describe(module.network, images, folder)
    (folder / "model_summary.txt").write_text(f"{ModelSummary(module, max_depth=2)}")
    for path in (folder / "model_summary.txt", *description.files):
        run.log_artifact(path)
    run.log_metrics(description.metrics)
    for key, value in description.tags.items():
        run.set_tag(key, value)
        warn(value)
    return images


def _start_record(
    params: Params, paths: Paths, module: CnnClassifier, flops: int, digest: str, run: TrackedRun
) -> None:
    """What a new run starts with: the params that train reads (evaluate's are its own run's), the network as
    built, the data as an MLflow dataset, and the files behind them."""
    run.log_params(params.model_dump(mode="json", by_alias=True, exclude={"evaluate", "export"}))  # their own runs
    run.log_params({"model.built_widths": ",".join(map(str, widths(module.network)))})
    run.log_metrics({"parameters": sum(p.numel() for p in module.parameters()), "forward_mflops": flops / 1e6})
    run.log_call("dataset", lambda: run.client.log_inputs(run.run_id, datasets=dataset_inputs(paths.pulled, digest)))
    for path in (paths.params_file, paths.augmented / augmentation.PREVIEW_FILE):
        if path.exists():
            run.log_artifact(path)


def run(params: Params, paths: Paths = Paths()) -> dict[str, float]:
    """Fits the model; writes data/train (best checkpoint, run.json, figures) and metrics/train.json.

    Everything that can be checked is checked before the MLflow run opens and before old state is touched;
    a run that fails after it opened is ended FAILED (KILLED on Ctrl-C), never left RUNNING.
    """
    tracking = rank_zero_only.rank == 0  # the other ranks never talk to MLflow
    check_watched(params.model)
    _check_devices(params.train)  # Lightning would fail on a GPU id this machine lacks with a TypeError
    if tracking:  # a server that does not answer stops us before any data is loaded
        check_reachable(resolve_tracking_uri(params.mlflow.tracking_uri))
    load_store(paths.pulled, verify=True)  # a truncated or altered store file stops here, by name
    datamodule = ImageDataModule(
        paths.pulled,
        paths.augmented,
        batch_size=params.train.batch_size,
        num_workers=(
            auto_workers(params.train.accelerator, params.augment.online)
            if params.train.num_workers == "auto"
            else params.train.num_workers
        ),
        seed=params.seed,
        online=params.augment.online,
    )
    module = build_module(params, datamodule)  # the shape check: an impossible layer stops here
    if module.plan is not None:
        console.print(shape_table(module.plan, title=f"Layer shapes, input {list(datamodule.manifest.shape)}"))
    else:
        console.print(f"model.preset {params.model.preset}: {sum(p.numel() for p in module.parameters())} parameters")
    if tracking:  # the network is possible: now the store and the experiment (a new store is created here)
        check_store(params.mlflow)
    # What decides the training data and its order: a checkpoint of other data is not resumed.
    augmented = [paths.augmented / name for name in (augmentation.PIPELINE_FILE, augmentation.SUMMARY_FILE)]
    key = resume.fingerprint(
        params.seed,
        params.model.model_dump(mode="json"),
        params.train.model_dump(mode="json"),
        params.augment.online,
        datamodule.manifest.checksums,
        [path.read_text() if path.exists() else None for path in augmented],
        *filter(None, [module.hparams.network_digest]),  # model.class's code: weights fit only the code they had
    )
    pl.seed_everything(params.seed, workers=True, verbose=False)
    resumed = resume.resumable(paths.checkpoints, key, module)  # read-only: rank 0 writes once all ranks met
    if resumed:
        console.print(f"Resuming from {resumed.checkpoint} into MLflow run {resumed.run_id}")
    flops = forward_flops(module.network, datamodule.manifest.shape)  # of one image's forward pass
    digest = dvc_hash(paths.pulled) if tracking else ""  # the data, for the run's dataset and the model version
    logger = MlflowRunLogger(
        params.mlflow,
        resume_run_id=resumed.run_id if resumed else None,
        on_open=lambda run: _start_record(params, paths, module, flops, digest, run),
    )
    history = EpochHistory(paths.checkpoints / HISTORY, flops)
    claim = resume.ClaimFolder(paths.checkpoints, key, lambda: logger.run, resumed is not None)
    publish = Publish(params, paths, key, history, digest)
    # state.json lives beside the checkpoints on purpose; Lightning's warning about a non-empty folder is noise.
    warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")
    root = resume.preemption_dir(paths.checkpoints, key)
    trainer = build_trainer(params.train, paths.checkpoints, root, [history, claim, publish], logger)
    console.print(f"Lightning: {describe(trainer)}")
    # only now: nothing of this process changes before every check has passed
    if params.train.threads:
        torch.set_num_threads(params.train.threads)
    keep_freed_memory()
    skip_absent_nvml()
    try:
        with quiet_lightning(announcements=True):
            trainer.fit(module, datamodule=datamodule, ckpt_path=resumed and resumed.checkpoint)
    except SystemExit as stop:  # Lightning's, after its own clean-up (the run: KILLED): see _interruption
        if trainer.interrupted:
            raise _interruption(stop, resume.latest_checkpoint(paths.checkpoints, key)) from None
        raise
    return publish.metrics


def _interruption(stop: SystemExit, checkpoint: Path | None) -> KeyboardInterrupt:
    """What stopped the fit, for the CLI's one line and exit code, with what a rerun resumes from (only a checkpoint
    that exists: one is saved at the end of each epoch). Lightning raises SIGTERMException at the end of the batch
    that SIGTERM came in, and turns a KeyboardInterrupt (Ctrl-C, or `Terminated` raised outside its loops) into
    sys.exit(1) while handling it."""
    terminated = isinstance(stop, SIGTERMException) or isinstance(stop.__context__, Terminated)
    what = "terminated (SIGTERM)" if terminated else "interrupted"
    rerun = f"rerun `dvc repro` to resume from {checkpoint}" if checkpoint else "no checkpoint yet, a rerun starts over"
    return (Terminated if terminated else KeyboardInterrupt)(f"{what}; {rerun}")


class Publish(pl.Callback):
    """The stage's outputs, written on global rank 0 once fit has succeeded and before Lightning ends the run:
    a failure here ends it FAILED, and data/train is replaced whole only when everything is ready."""

    def __init__(self, params: Params, paths: Paths, key: str, history: EpochHistory, digest: str):
        self.params, self.paths, self.key, self.history, self.digest = params, paths, key, history, digest
        self.metrics: dict[str, float] = {}

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            self.metrics = _finish(self.params, self.paths, self.key, trainer, pl_module, self.history, self.digest)


def summary(rows: list[dict[str, float]], monitor: str, best_score: float) -> dict[str, float]:
    """The training's metrics, under the names MLflow shows: the epoch that ModelCheckpoint kept as best.ckpt (its
    `best_score` of `monitor`), and the whole training."""
    best = next(row for row in rows if row.get(monitor) == best_score)
    return {
        "best/val/acc": best["val/acc"],
        "best/val/loss": best["val/loss"],
        "best/epoch": best["epoch"],
        "epochs": len(rows),
        "train_time_s": sum(row["epoch_time"] for row in rows),
        "mean/images_per_sec": sum(row["images_per_sec"] for row in rows) / len(rows),
        # FLOP/s trained, 3x forward per image: against the machine's peak, how well the hardware is used
        "mean/gflops_per_sec": statistics.fmean(row["gflops_per_sec"] for row in rows if "gflops_per_sec" in row),
    }


def _register(
    params: Params, run: TrackedRun, module: CnnClassifier, examples: torch.Tensor, digest: str
) -> str | None:
    """Logs the model; registers it (see registry.should_register) with its description and provenance tags."""
    name = params.mlflow.registered_model if registry.should_register(params.mlflow, params.train) else None
    version = log_model(run, module, examples[:MODEL_EXAMPLES].numpy(), name)
    if version is not None:
        shape = tuple(module.hparams.input_shape)
        run.log_call(
            f"model version {version} description",
            lambda: registry.describe_version(run.client, name, version, module.classes, shape, digest),
        )
    return version


def _finish(
    params: Params,
    paths: Paths,
    key: str,
    trainer: pl.Trainer,
    module: CnnClassifier,
    history: EpochHistory,
    digest: str,
) -> dict[str, float]:
    """Writes data/train (model.ckpt, run.json, figures) and the metrics; logs the model and its description."""
    run: TrackedRun = trainer.logger.run
    best_score = float(trainer.checkpoint_callback.best_model_score)
    metrics = summary(history.rows, params.train.monitor, best_score) | {
        "parameters": sum(p.numel() for p in module.parameters())
    }
    run.log_metrics(metrics)
    # what ran: Lightning resolves `auto` by the hardware, the module its memory format
    run.set_tag(
        "cnnpipe.trainer",
        f"{describe(trainer)}, channels_last {module.channels_last}, loader workers {trainer.datamodule.num_workers}",
    )
    with replaced_atomically(paths.trained) as staging:
        shutil.copyfile(paths.checkpoints / resume.BEST, staging / "model.ckpt")
        for name in (resume.BEST, resume.LAST):
            run.log_artifact(paths.checkpoints / name, "checkpoints")
        run.log_artifact(plots.training_curves(history.rows, staging / "training_curves.png"))
        delivered = load_model(paths.checkpoints / resume.BEST)  # the weights of model.ckpt, not the last epoch's
        examples = _log_model_description(run, delivered, paths.pulled, staging)
        version = _register(params, run, delivered, examples, digest)
        RunRecord(
            run.run_id,
            params.mlflow.tracking_uri,  # as written: a relative store means the reader's own repository
            params.mlflow.experiment,
            run.unlogged,  # evaluate reports what this stage could not log (a server gone away)
            params.mlflow.registered_model if version else None,
            version,
        ).write(staging / "run.json")
    write_atomically(paths.metrics / "train.json", json.dumps({key: metrics[key] for key in HEADLINE}, indent=2))
    write_atomically(paths.metrics / HISTORY, (paths.checkpoints / HISTORY).read_text())
    resume.ResumeState(key, run.run_id, run.tracking_uri, completed=True).write(paths.checkpoints)
    console.print(
        f"Best epoch {metrics['best/epoch']}: val/acc {metrics['best/val/acc']:.4f}, "
        f"val/loss {metrics['best/val/loss']:.4f}; MLflow run {run.run_id}"
        + (f", model {params.mlflow.registered_model} version {version}" if version else "")
    )
    return metrics
