"""The `cnnpipe` command: one subcommand per DVC stage, plus tools for people designing a network.

Bad input ends with one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from rich.console import Console

from cnnpipe.config import DEFAULT_PARAMS, load_params
from cnnpipe.errors import CnnpipeError

STAGES = {  # name -> help; the stage modules are imported only when run, as they pull in torch
    "pull": "fetch the images of data.source into a compact store with a validation split",
    "augment": "build the albumentations pipeline, its preview and the augmented copies",
    "train": "shape-check and train the CNN with Lightning, logging to MLflow",
    "evaluate": "test-set metrics and plots, logged into the same MLflow run",
}


def _input_shape(text: str) -> tuple[int, int, int]:
    try:
        channels, height, width = (int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--input must be C,H,W such as 1,28,28, got {text!r}") from None
    return channels, height, width


def _check(args: argparse.Namespace) -> None:
    """Validates params.yaml and prints each layer's [C, H, W] for the pulled data (or --input)."""
    params = load_params(args.params)
    from cnnpipe import paths
    from cnnpipe.data.store import load_manifest
    from cnnpipe.models.network import print_shapes
    from cnnpipe.models.spec import plan_layers

    if args.input:
        shape, classes = args.input, args.classes
    else:
        manifest = load_manifest(paths.PULLED)
        shape, classes = tuple(manifest.shape), manifest.num_classes
    print_shapes(plan_layers(params.model.layers, shape, classes))
    Console().print(f"{args.params}: valid")


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="cnnpipe", description=__doc__.splitlines()[0])
    root.add_argument("--params", type=Path, default=DEFAULT_PARAMS, help="the params file (default: params.yaml)")
    commands = root.add_subparsers(dest="command", required=True)
    for stage, description in STAGES.items():
        commands.add_parser(stage, help=description)
    check = commands.add_parser("check", help=_check.__doc__)
    check.add_argument("--input", type=_input_shape, help="C,H,W instead of the pulled data's shape")
    check.add_argument("--classes", type=int, default=10, help="number of classes, with --input")
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.command == "check":
            _check(args)
        else:
            importlib.import_module(f"cnnpipe.stages.{args.command}").run(load_params(args.params))
    except CnnpipeError as error:
        print(f"cnnpipe: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("cnnpipe: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
