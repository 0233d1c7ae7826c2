"""The `cnnpipe` command: one subcommand per DVC stage, plus tools for people designing a network.

Bad input ends with one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import gc
import importlib
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from cnnpipe.config import DEFAULT_PARAMS, load_params
from cnnpipe.errors import CnnpipeError

STAGES = {  # name -> help; the stage modules are imported only when run, as they pull in torch
    "pull": "fetch the images of data.source into a compact store with a validation split",
    "augment": "build the albumentations pipeline, its preview and the augmented copies",
    "train": "shape-check and train the CNN with Lightning, logging to MLflow",
    "evaluate": "test-set metrics and plots, logged into a child run of the training's MLflow run",
}


# rf and check build the network and push one image through it on the CPU; every activation, and a dense layer
# after a flatten, grows with the image. 4 Mi elements allow 3x1024x1024 or 1x2048x2048, far above ImageNet's
# 3x224x224 (measured at the cap: params.yaml's model 6 GB and 12 s, resnet50 4 GB), while 3,100000,100000
# would need 120 GB for the input alone. A receptive field does not depend on the input size anyway.
MAX_INPUT_ELEMENTS = 1 << 22
DEFAULT_MODEL = "data/train/model.ckpt"  # predict's: the workspace's training, as DVC means it
MAX_CLASSES = 100_000  # over four times ImageNet-21k's 21,841; the head's weights grow with it


@contextmanager
def _long_lived_imports() -> Iterator[None]:
    """Imports a stage or a tool (torch, Lightning, MLflow: about 590,000 objects) with Python's cyclic garbage
    collector off, then freezes them: each full collection during the imports scanned all objects made so far,
    1.2-1.6 s of a stage's 6 s start (AMD EPYC, 2 cores; `cnnpipe predict` of 3 images: 3.0 s against 5.0 s), and
    later ones skip the frozen modules. Python's own tools for this (gc.freeze), set here because only the entry
    point knows that the imports live as long as the process."""
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.enable()


def _input_shape(text: str) -> tuple[int, int, int]:
    try:
        channels, height, width = (int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--input must be C,H,W such as 1,28,28, got {text!r}") from None
    if min(channels, height, width) < 1 or channels * height * width > MAX_INPUT_ELEMENTS:
        raise CnnpipeError(
            f"--input: C, H and W must be at least 1 and C*H*W at most {MAX_INPUT_ELEMENTS:,} "
            f"(such as 3,1024,1024), got {text}"
        )
    return channels, height, width


def _classes(text: str) -> int:
    try:
        classes = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--classes must be a whole number such as 10, got {text!r}") from None
    if not 2 <= classes <= MAX_CLASSES:
        raise CnnpipeError(f"--classes: must be 2 to {MAX_CLASSES:,} (a classifier needs two classes), got {classes}")
    return classes


def _tracking_uri(text: str) -> str:
    """--tracking-uri of compare and predict, refused as params.yaml's mlflow.tracking_uri is: one rule for where
    credentials go (the environment), and no password in the messages and reports that name the store."""
    from cnnpipe.uris import mask_uri, password_refusal

    if refusal := password_refusal(text):
        raise CnnpipeError(f"--tracking-uri: {refusal} (got {mask_uri(text)!r})")
    return text


def _check(args: argparse.Namespace) -> None:
    """Validates params.yaml as train would (network, Lightning settings, tracking store) and prints each
    layer's [C, H, W] for the pulled data (or --input)."""
    params = load_params(args.params)
    from cnnpipe.console import console

    with _long_lived_imports():
        from cnnpipe.models.network import build_model_network, shape_table
        from cnnpipe.stages.train import preflight

    shape, classes = _data_shape(args)
    plan, network = build_model_network(params.model, shape, classes, [0.0] * shape[0], [1.0] * shape[0])
    if plan is not None:
        console.print(shape_table(plan))
    else:
        parameters = sum(p.numel() for p in network.parameters())
        console.print(f"model.preset {params.model.preset}: {parameters} parameters, input {list(shape)}")
    preflight(params)
    console.print(f"{args.params}: valid")


def _rf(args: argparse.Namespace) -> None:
    """Receptive field, jump and start of every layer of MODEL: params, a preset or torchvision:NAME."""
    from cnnpipe.console import console

    with _long_lived_imports():
        from cnnpipe.analysis import models, receptive_field, report

    if args.model == "params":
        params = load_params(args.params)
        shape, classes = _data_shape(args)
    else:
        params, shape, classes = None, args.input or models.default_shape(args.model), args.classes
    layers = receptive_field.receptive_fields(models.network(args.model, params, shape, classes), shape)
    if args.json:
        print(report.to_json(layers, shape))
    else:
        console.print(report.to_table(layers, title=f"Receptive field of {args.model}, input {list(shape)}"))


def _kernels(args: argparse.Namespace) -> None:
    """Filters IMAGE with one of the lecture's kernels and writes the feature map as an image (PNG by default)."""
    from cnnpipe.console import console

    with _long_lived_imports():
        from cnnpipe.analysis import kernels

    kernels.kernel(args.kernel)  # a name that is no kernel fails first: the default output is named after it
    image = kernels.read_greyscale(args.image)
    output = args.output or args.image.with_name(f"{args.image.stem}-{args.kernel}.png")
    _check_output_file(output, [("IMAGE", args.image)])
    kernels.check_output(output)
    feature_map = kernels.filter_image(image, args.kernel, args.stride, args.padding)
    _write(output, kernels.encode_feature_map(feature_map, output.suffix))
    console.print(
        f"{list(image.shape)} * {args.kernel} (stride {args.stride}, padding {args.padding}) "
        f"= {list(feature_map.shape)} -> {output}",
        soft_wrap=True,  # a path broken over two lines could not be copied
    )


def _check_output_file(path: Path, inputs: Iterable[tuple[str, Path]] = (), tracking_uri: str | None = None) -> None:
    """Checked before any work: a missing folder or a directory would only fail once the work is done, and a
    file the command reads (`inputs`: (argument, path)) or the pipeline produced would be lost. A stage output
    named on purpose is refused too, with no option to force it: DVC records its hash, so a file written there by
    hand is replaced by the next `dvc checkout` or `dvc repro` (or makes the stage look changed), and a copy
    written elsewhere serves the same purpose."""
    from cnnpipe.config import MlflowConfig
    from cnnpipe.outputs import overwrite_problem, pipeline_outputs
    from cnnpipe.paths import Paths

    if path.is_dir():
        raise CnnpipeError(f"--output: {path} is a directory; give a file path, such as {path / 'NAME'}")
    if not path.parent.is_dir():
        raise CnnpipeError(f"--output: the folder {path.parent} does not exist; create it or write elsewhere")
    folders = [folder for name, folder in vars(Paths()).items() if name != "params_file"]
    produced = [*folders, *pipeline_outputs(), *_store_files(tracking_uri or MlflowConfig().tracking_uri)]
    if problem := overwrite_problem(path, inputs, produced):
        raise CnnpipeError(f"--output: {problem}; write it elsewhere")


def _store_files(tracking_uri: str) -> list[Path]:
    """A SQLite tracking store's database and its artifacts folder beside it; a server's are not files here."""
    if not tracking_uri.startswith("sqlite:///"):
        return []
    from cnnpipe.tracking.relocate import ARTIFACTS

    database = Path(tracking_uri.removeprefix("sqlite:///"))
    return [database, database.parent / ARTIFACTS]


def _data_shape(args: argparse.Namespace) -> tuple[tuple[int, int, int], int]:
    """--input if given, else the pulled data's [C, H, W]; with the number of classes."""
    if args.input:
        return args.input, args.classes
    from cnnpipe.data.store import load_store
    from cnnpipe.paths import Paths

    manifest, _ = load_store(Paths().pulled, verify=True)  # as train checks it: a corrupt store is named here too
    return tuple(manifest.shape), manifest.num_classes


def _compare(args: argparse.Namespace) -> None:
    """The trainings of an MLflow experiment, each with the evaluation it names: the params that differ, the
    metrics, best first; or a report of named runs side by side (--output report.html or report.md)."""
    with _long_lived_imports():
        from cnnpipe.console import console, write_out
        from cnnpipe.tracking import compare_report as reports
        from cnnpipe.tracking.compare import DEFAULT_METRICS, compare, experiment_trainings, pick
        from cnnpipe.tracking.mlflow_run import resolve_tracking_uri

    reporting = args.output is not None and not args.format
    if args.output:  # the tracking store is among what it must not replace
        store = args.tracking_uri or (load_params(args.params).mlflow.tracking_uri if args.params.is_file() else None)
        _check_output_file(args.output, [("--params", args.params)], store)
    if reporting:
        reports.check_output(args.output, args.runs)
    mlflow = None if args.tracking_uri and args.experiment else load_params(args.params).mlflow
    uri = resolve_tracking_uri(args.tracking_uri or mlflow.tracking_uri)
    key = "--tracking-uri" if args.tracking_uri else f"{args.params}: mlflow.tracking_uri"
    experiment = args.experiment or mlflow.experiment
    metrics = tuple(args.metrics.split(",")) if args.metrics else DEFAULT_METRICS
    runs = experiment_trainings(uri, experiment, args.data, key)
    if args.runs:
        runs = pick(runs, args.runs, experiment)
    if reporting:
        reports.write(reports.build(uri, experiment, runs, metrics), args.output)
        console.print(f"{args.output}: {len(runs)} runs of {experiment} side by side", soft_wrap=True)
        return
    table = compare(runs, args.sort, metrics)
    if args.format:
        text = table.to_markdown() if args.format == "md" else table.to_csv()
        if args.output:
            _write(args.output, text.encode())
        else:
            write_out(text)
        return
    # Rich's width: COLUMNS, else the terminal's even through a pipe (`| less`: stderr still is one), else 80.
    data = f" ({args.data})" if args.data else ""
    console.print(*table.to_tables(f"{experiment}{data}: best {table.metric} first", console.width))


def _positive(name: str):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = 0
        if value < 1:
            raise CnnpipeError(f"{name}: must be a whole number of 1 or more, got {text!r}")
        return value

    return parse


def _predict(args: argparse.Namespace) -> int:
    """The classes of image files, folders (at any depth) and archives by a trained model, as CSV or JSON;
    exit code 1 when some files could not be read (they are listed and skipped)."""
    import tempfile

    from cnnpipe.config import LimitsConfig
    from cnnpipe.console import console, note, stderr_console, warn, write_out

    with _long_lived_imports():
        from cnnpipe.inference import inputs, predict

    fmt = predict.output_format(args.output) if args.output else "csv"
    params = load_params(args.params) if args.params.exists() else None
    limits = params.data.limits if params else LimitsConfig()
    if args.output:
        store = args.tracking_uri or (params.mlflow.tracking_uri if params else None)
        _check_output_file(args.output, _read_by_predict(args), store)
    with tempfile.TemporaryDirectory(prefix="cnnpipe-predict-") as scratch:
        found = inputs.collect(args.inputs, Path(scratch), limits)  # a bad INPUT stops before the model loads
        model = _prediction_model(args, params)
        shown = console if args.output else stderr_console  # stdout carries the CSV or JSON
        shown.print(f"Model: {model.source} ({model.origin})", soft_wrap=True)
        outcome = predict.predict(model, found, args.batch_size, args.top_k, limits.max_image_pixels, shown)
    text = predict.render(outcome, model, fmt, args.top_k)
    if args.output:
        predict.write(args.output, text)
    else:
        write_out(text)
    for where, count in found.skipped.items():
        note(f"skipped {count} non-image file(s) in {where}")
    if outcome.converted:
        channels = "greyscale" if model.shape[0] == 1 else "RGB"
        note(f"{outcome.converted} image(s) converted to {channels}, the model's input, as pull converts them")
    for name, reason in outcome.failed[:20]:
        warn(f"skipped {name}: {reason}")
    if len(outcome.failed) > 20:
        warn(f"... and {len(outcome.failed) - 20} more unreadable file(s), each listed with its reason in the output")
    shown.print(
        f"{len(outcome.predictions):,} images in {outcome.seconds:.2f} s ({outcome.images_per_second:,.0f} images/s)"
        f" by {model.source}{f' -> {args.output}' if args.output else ''}"
        + (f"; {len(outcome.failed)} failed" if outcome.failed else ""),
        soft_wrap=True,
    )
    return 1 if outcome.failed else 0


def _read_by_predict(args: argparse.Namespace) -> list[tuple[str, Path]]:
    """What predict reads, which its --output must not replace: the INPUTs, the params and a --model file."""
    read = [*(("INPUT", Path(given).expanduser()) for given in args.inputs), ("--params", args.params)]
    return read if ":/" in args.model else [*read, ("--model", Path(args.model))]


def _prediction_model(args: argparse.Namespace, params):
    """--model: a checkpoint file, or an MLflow model URI (models:/NAME@ALIAS, runs:/ID/model) in the tracking
    store of --tracking-uri, else of the params file."""
    if ":/" not in args.model:
        with _long_lived_imports():  # Lightning (run_record reads run.json without MLflow)
            from cnnpipe.inference.model import from_checkpoint
            from cnnpipe.tracking.run_record import origin_of

        model = from_checkpoint(Path(args.model))
        workspace = ", the workspace's last `dvc repro` or `dvc exp run`" if args.model == DEFAULT_MODEL else ""
        return dataclasses.replace(model, origin=f"{origin_of(Path(args.model))}{workspace}")
    from cnnpipe.config import MlflowConfig

    with _long_lived_imports():  # MLflow
        from cnnpipe.tracking.mlflow_model import load_classifier
        from cnnpipe.tracking.mlflow_run import check_reachable, resolve_tracking_uri

    uri = resolve_tracking_uri(args.tracking_uri or (params.mlflow if params else MlflowConfig()).tracking_uri)
    check_reachable(uri)
    return load_classifier(args.model, uri)


def _export_format(text: str) -> str:
    if text not in ("onnx", "torchscript"):
        raise CnnpipeError(f"--format: {text!r} is no export format; choose onnx or torchscript")
    return text


def _export(args: argparse.Namespace) -> None:
    """ONNX and TorchScript files of data/train/model.ckpt, each checked against PyTorch on real images. Without
    options: the DVC stage (export.formats into data/export/, logged into the training's MLflow run); with
    --format: one file (default model.onnx or model.pt here), not logged."""
    if args.output and not args.format:
        raise CnnpipeError("--output: needs --format onnx or --format torchscript (one file)")
    with _long_lived_imports():  # a DVC stage too: it starts as the others do
        from cnnpipe.inference.export import FILES
        from cnnpipe.paths import Paths
        from cnnpipe.stages import export
    params = load_params(args.params)

    output = args.output or (Path(FILES[args.format]) if args.format else None)
    if output is not None:
        _check_output_file(output, [("--params", args.params)], params.mlflow.tracking_uri)
        _check_suffix(output, Path(FILES[args.format]).suffix, args.format)
    export.run(params, Paths(params_file=args.params), args.format, output)


def _check_suffix(output: Path, suffix: str, fmt: str) -> None:
    """The suffix tells people and runtimes what a model file holds: ONNX in a model.pt fails where it is loaded."""
    if output.suffix.lower() != suffix:
        raise CnnpipeError(
            f"--output: {output} must end in {suffix} for --format {fmt} (such as {output.stem}{suffix}), "
            "or give the --format its suffix means"
        )


def _write(path: Path, data: bytes) -> None:
    """--output in one write, after all the work: nothing is left half-written by a failed encoder."""
    try:
        path.write_bytes(data)
    except OSError as exc:  # permission denied; a full disk, which raises without a file name
        raise CnnpipeError(f"--output: cannot write {path}: {exc.strerror}") from None


TOOLS = {"check": _check, "rf": _rf, "kernels": _kernels, "compare": _compare, "predict": _predict, "export": _export}


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="cnnpipe", description=__doc__.splitlines()[0])
    root.add_argument("--params", type=Path, default=DEFAULT_PARAMS, help="the params file (default: params.yaml)")
    commands = root.add_subparsers(dest="command", required=True)
    for stage, description in STAGES.items():
        commands.add_parser(stage, help=description)
    check = commands.add_parser("check", help=_check.__doc__)
    check.add_argument("--input", type=_input_shape, help="C,H,W instead of the pulled data's shape")
    check.add_argument("--classes", type=_classes, default=10, help="number of classes, with --input")
    rf = commands.add_parser("rf", help=_rf.__doc__)
    rf.add_argument(
        "model", help="params (the model of params.yaml), lecture, lenet5, vgg-small, resnet-small or torchvision:NAME"
    )
    rf.add_argument("--input", type=_input_shape, help="C,H,W (default: the data's shape, or the model's own)")
    rf.add_argument("--classes", type=_classes, default=10, help="number of classes, with params and --input")
    rf.add_argument("--json", action="store_true", help="print JSON instead of a table")
    filters = commands.add_parser("kernels", help=_kernels.__doc__)
    filters.add_argument("image", type=Path, help="any image PIL reads; it is filtered in greyscale")
    filters.add_argument(
        "--kernel",
        required=True,
        help="vertical_edge, horizontal_edge, sobel_x, sobel_y, laplacian, box_blur, sharpen, emboss or lecture_x",
    )
    filters.add_argument("--stride", type=int, default=1)
    filters.add_argument("--padding", type=int, default=0)
    filters.add_argument(
        "--output",
        type=Path,
        help="the image to write, in the format of its extension (default: IMAGE-KERNEL.png beside it)",
    )
    runs = commands.add_parser("compare", help=_compare.__doc__, description=_compare.__doc__)
    runs.add_argument(
        "runs",
        nargs="*",
        metavar="RUN",
        help="run names or ids of the experiment: only these rows; with --output .html or .md, their report",
    )
    runs.add_argument("--experiment", help="MLflow experiment (default: mlflow.experiment of params.yaml)")
    runs.add_argument("--tracking-uri", type=_tracking_uri, help="default: mlflow.tracking_uri of params.yaml")
    runs.add_argument(
        "--data",
        metavar="NAME",
        help="only the trainings of this data set, named as experiments are by default (data.name: fashion-mnist, "
        "the folder's or archive's name, a class subset's classes added), from the data.* params they logged",
    )
    runs.add_argument(
        "--sort",
        "--metric",
        default="accuracy",
        metavar="METRIC",
        help="sort by METRIC, best first: ascending when its name holds loss or time, else descending; a full key "
        "(best/val/loss) or its ending (acc: test/acc); runs without it last (default: accuracy = test/acc)",
    )
    runs.add_argument("--metrics", help="comma-separated metric columns (default: test, validation, speed, rf)")
    runs.add_argument("--format", choices=("md", "csv"), help="print Markdown or CSV instead of a table")
    runs.add_argument(
        "--output",
        type=Path,
        help="with --format: write the table to this file instead of stdout; without, a report of two or more "
        "RUNs in their order: params that differ, metrics, val/acc and val/loss overlaid, receptive fields, "
        "first-layer kernels, as .html (pictures inside) or .md (PNGs in NAME_files/); overwrites only a report",
    )
    predicting = commands.add_parser("predict", help=_predict.__doc__)
    predicting.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders (at any depth), archives")
    predicting.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"a checkpoint (default: {DEFAULT_MODEL}) or an MLflow model URI: models:/NAME@champion (NAME: the "
        "data set's, e.g. fashion-mnist), runs:/RUN_ID/model",
    )
    predicting.add_argument("--output", type=Path, help="predictions.csv or predictions.json (default: CSV on stdout)")
    predicting.add_argument("--top-k", type=_positive("--top-k"), default=3, help="classes per image (default 3)")
    predicting.add_argument("--batch-size", type=_positive("--batch-size"), default=256, help="images per batch")
    predicting.add_argument(
        "--tracking-uri", type=_tracking_uri, help="for an MLflow URI (default: mlflow.tracking_uri of params.yaml)"
    )
    exporting = commands.add_parser("export", help=_export.__doc__)
    exporting.add_argument("--format", type=_export_format, help="onnx or torchscript: one file, not logged")
    exporting.add_argument("--output", type=Path, help="with --format: the file to write")
    return root


def main(argv: list[str] | None = None) -> int:
    try:
        args = parser().parse_args(argv)  # inside: --input and --classes are checked as they are parsed
        if args.command in TOOLS:
            return TOOLS[args.command](args) or 0
        else:
            from cnnpipe.paths import Paths
            from cnnpipe.signals import stopped_by_sigterm

            with _long_lived_imports():
                stage = importlib.import_module(f"cnnpipe.stages.{args.command}")
            with stopped_by_sigterm():  # SIGTERM: the stage's MLflow run ends KILLED, not RUNNING; exit 143
                stage.run(load_params(args.params), Paths(params_file=args.params))
    except CnnpipeError as error:
        return _refuse(error, error.exit_code)
    except KeyboardInterrupt as interruption:  # Ctrl-C: 130; SIGTERM (signals.Terminated): 143
        print(f"cnnpipe: {interruption or 'interrupted'}", file=sys.stderr)
        return getattr(interruption, "exit_code", 130)
    except OSError as error:  # permission denied, no space, a directory: the file is the user's to fix
        if error.filename is None:
            raise  # no file to name: a bug, which must stay visible
        remedy = {  # a full disk, a quota, `ulimit -f`: the outputs' writers name the file (outputs.py)
            errno.ENOSPC: "free space there",
            errno.EDQUOT: "free space in your quota",
            errno.EFBIG: "raise the file size limit (ulimit -f)",
        }.get(error.errno)
        return _refuse(f"{error.filename}: {error.strerror}{f'; {remedy} and rerun' if remedy else ''}", 2)
    return 0


def _refuse(message: object, code: int) -> int:
    """The one line a refusal ends in: a name it quotes may hold an ESC (shown escaped) or a newline (a space)."""
    from cnnpipe.console import one_line

    print(f"cnnpipe: error: {one_line(message)}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
