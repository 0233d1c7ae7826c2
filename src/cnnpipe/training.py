"""Training: checks the network's shapes, then fits it with Lightning into one MLflow run.

Rerunning after an interruption resumes from the last checkpoint into the same MLflow run.
"""

from __future__ import annotations

import json
import shutil
import warnings
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint, RichProgressBar
from pytorch_lightning.utilities.model_summary import ModelSummary
from pytorch_lightning.utilities.rank_zero import rank_zero_only
from rich.console import Console

from cnnpipe import paths, plots
from cnnpipe.analysis import report
from cnnpipe.config import Params, TrainConfig
from cnnpipe.data import augmentation
from cnnpipe.data.datamodule import ImageDataModule, to_model_input
from cnnpipe.data.store import load_store
from cnnpipe.models import resume
from cnnpipe.models.callbacks import EpochHistory
from cnnpipe.models.module import CnnClassifier
from cnnpipe.models.network import shape_table
from cnnpipe.tracking.mlflow_model import log_model
from cnnpipe.tracking.mlflow_run import TrackedRun, check_reachable, resolve_tracking_uri, start_run

console = Console()
ERF_IMAGES = 32  # validation images the effective receptive field is averaged over
MODEL_EXAMPLES = 2  # validation images stored as the logged model's input example


@dataclass(frozen=True)
class TrainPaths:
    pulled: Path = paths.PULLED
    augmented: Path = paths.AUGMENTED
    checkpoints: Path = paths.CHECKPOINTS
    trained: Path = paths.TRAINED
    metrics: Path = paths.METRICS
    params_file: Path = Path("params.yaml")


def build_module(params: Params, datamodule: ImageDataModule) -> CnnClassifier:
    manifest = datamodule.manifest
    return CnnClassifier(
        model=params.model.model_dump(mode="json", by_alias=True, exclude_none=True),
        train=params.train.model_dump(mode="json"),
        input_shape=tuple(manifest.shape),
        classes=manifest.classes,
        mean=manifest.mean,
        std=manifest.std,
    )


def build_trainer(cfg: TrainConfig, checkpoints: Path, root: Path, callbacks: list[pl.Callback]) -> pl.Trainer:
    mode = "max" if cfg.monitor.endswith("acc") else "min"
    callbacks = [
        ModelCheckpoint(
            dirpath=checkpoints,
            filename=Path(resume.BEST).stem,
            monitor=cfg.monitor,
            mode=mode,
            save_last=True,
            auto_insert_metric_name=False,
            enable_version_counter=False,  # a resumed run overwrites best.ckpt instead of adding best-v1.ckpt
        ),
        RichProgressBar(),
        *callbacks,
    ]
    if cfg.early_stopping.patience is not None:
        callbacks.append(
            EarlyStopping(cfg.monitor, cfg.early_stopping.min_delta, cfg.early_stopping.patience, mode=mode)
        )
    return pl.Trainer(
        max_epochs=cfg.epochs,
        accelerator=cfg.accelerator,
        devices=cfg.devices,
        num_nodes=cfg.num_nodes,
        strategy=cfg.strategy,
        precision=cfg.precision,
        sync_batchnorm=cfg.sync_batchnorm,
        deterministic=cfg.deterministic,
        limit_train_batches=cfg.limit_train_batches,
        limit_val_batches=cfg.limit_val_batches,
        callbacks=callbacks,
        logger=False,  # metrics go to MLflow through EpochHistory, once per epoch
        default_root_dir=root,  # where Lightning puts a SLURM preemption checkpoint
        use_distributed_sampler=False,  # the datamodule's EpochSampler shards exactly, without padding
    )


def _log_model_description(run: TrackedRun, module: CnnClassifier, where: TrainPaths) -> torch.Tensor:
    """Model summary, receptive fields and the effective receptive field over real validation images (returned)."""
    _, splits = load_store(where.pulled)
    images = to_model_input(splits["val"].images[:ERF_IMAGES])
    description = report.describe(module.network, images, where.trained)
    (where.trained / "model_summary.txt").write_text(f"{ModelSummary(module, max_depth=2)}")
    for path in (where.trained / "model_summary.txt", *description.files):
        run.log_artifact(path)
    run.log_metrics(description.metrics)
    for key, value in description.tags.items():
        run.set_tag(key, value)
        console.print(f"[yellow]warning:[/] {value}")
    return images


def _open_run(params: Params, where: TrainPaths, key: str, resumed: resume.ResumeState | None) -> TrackedRun:
    """Runs on global rank 0 only, inside fit: every rank has decided whether to resume before this."""
    if resumed is None:
        resume.clear(where.checkpoints)
    run = start_run(params.mlflow, run_id=resumed.run_id if resumed else None)
    resume.ResumeState(key, run.run_id, run.tracking_uri).write(where.checkpoints)
    if resumed:
        console.print(f"Resuming from {resume.latest_checkpoint(where.checkpoints, key)} into MLflow run {run.run_id}")
        return run
    run.log_params(params)
    for path in (where.params_file, where.augmented / augmentation.PREVIEW_FILE):
        if path.exists():
            run.log_artifact(path)
    return run


def train(params: Params, where: TrainPaths = TrainPaths()) -> dict[str, float]:
    """Fits the model; writes the best checkpoint, run.json and metrics/train.json. Returns those metrics."""
    if rank_zero_only.rank == 0:  # before anything else; the other ranks never talk to MLflow
        check_reachable(resolve_tracking_uri(params.mlflow.tracking_uri))
    datamodule = ImageDataModule(
        where.pulled,
        where.augmented,
        batch_size=params.train.batch_size,
        eval_batch_size=params.evaluate.batch_size,
        num_workers=params.train.num_workers,
        seed=params.seed,
        online=params.augment.online,
    )
    module = build_module(params, datamodule)  # the shape check: an impossible layer stops here
    if module.plan is not None:
        console.print(shape_table(module.plan, title=f"Layer shapes, input {list(datamodule.manifest.shape)}"))
    else:
        console.print(f"model.preset {params.model.preset}: {sum(p.numel() for p in module.parameters())} parameters")
    if params.train.threads:
        torch.set_num_threads(params.train.threads)
    # What decides the training data and its order: a checkpoint of other data is not resumed.
    augmented = [where.augmented / name for name in (augmentation.PIPELINE_FILE, augmentation.SUMMARY_FILE)]
    key = resume.fingerprint(
        params.seed,
        params.model.model_dump(mode="json"),
        params.train.model_dump(mode="json"),
        params.augment.online,
        datamodule.manifest.checksums,
        [path.read_text() if path.exists() else None for path in augmented],
    )
    pl.seed_everything(params.seed, workers=True, verbose=False)
    resumed = resume.resumable(where.checkpoints, key)  # read-only here: rank 0 writes only once all ranks met
    checkpoint = resume.latest_checkpoint(where.checkpoints, key) if resumed else None
    history = EpochHistory(where.metrics / "train_history.csv", partial(_open_run, params, where, key, resumed))
    # state.json lives beside the checkpoints on purpose; Lightning's warning about a non-empty folder is noise.
    warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")
    trainer = build_trainer(params.train, where.checkpoints, resume.preemption_dir(where.checkpoints, key), [history])
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=checkpoint)
    except (KeyboardInterrupt, SystemExit):  # Lightning turns Ctrl-C into exit code 1 after its own clean-up
        if history.run is not None:
            history.run.finish("KILLED")
        console.print(f"Interrupted: rerun `dvc repro` to resume from {where.checkpoints / resume.LAST}")
        raise
    if not trainer.is_global_zero:
        return {}
    return _finish(params, where, key, history.run, module, history)


def _finish(
    params, where: TrainPaths, key: str, run: TrackedRun, module: CnnClassifier, history: EpochHistory
) -> dict[str, float]:
    where.trained.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(where.checkpoints / resume.BEST, where.trained / "model.ckpt")
    monitored = [row[params.train.monitor] for row in history.rows if params.train.monitor in row]
    best_epoch = monitored.index(max(monitored) if params.train.monitor.endswith("acc") else min(monitored))
    best = history.rows[best_epoch]
    metrics = {
        "val_acc": best["val/acc"],
        "val_loss": best["val/loss"],
        "best_epoch": best["epoch"],
        "epochs": len(history.rows),
        "train_time_s": sum(row["epoch_time"] for row in history.rows),
        "images_per_sec": sum(row["images_per_sec"] for row in history.rows) / len(history.rows),
        "parameters": sum(p.numel() for p in module.parameters()),
    }
    where.metrics.mkdir(parents=True, exist_ok=True)
    (where.metrics / "train.json").write_text(json.dumps(metrics, indent=2))
    for name in (resume.BEST, resume.LAST):
        run.log_artifact(where.checkpoints / name, "checkpoints")
    run.log_artifact(plots.training_curves(history.rows, where.trained / "training_curves.png"))
    examples = _log_model_description(run, module, where)
    log_model(run, module, examples[:MODEL_EXAMPLES].numpy(), params.mlflow.registered_model)
    run.log_metrics({f"best_{k}": v for k, v in metrics.items() if k in ("val_acc", "val_loss")})
    resume.ResumeState(key, run.run_id, run.tracking_uri, completed=True).write(where.checkpoints)
    run.finish()
    # evaluate logs into the same run, and tells it what this stage could not log (a server gone away)
    run_file = {"run_id": run.run_id, "tracking_uri": run.tracking_uri, "unlogged": run.unlogged}
    (where.trained / "run.json").write_text(json.dumps(run_file, indent=2))
    console.print(
        f"Best epoch {best['epoch']}: val/acc {best['val/acc']:.4f}, val/loss {best['val/loss']:.4f}; "
        f"MLflow run {run.run_id}"
    )
    return metrics
