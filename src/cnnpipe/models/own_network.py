"""Your own nn.Module as the network's body (`model.class`), as lightning-hydra-template's `_target_` names one.

The class comes from a file of the repository (`networks/net.py:Net`, which DVC watches) or an importable module
(`package.module:Net`), is built as `Net(in_channels=C, **model.args)` and run once on a batch of the data's
shape before training; cnnpipe appends its head to what it returns, as it does for a layer list. Whatever goes
wrong on the way (an import, a missing class, refused arguments, an output that is no [N, C, H, W] or [N, F]
tensor, or an empty one) is one line naming the file, never a traceback from inside it.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import math
import sys
import traceback
from collections import OrderedDict
from pathlib import Path

import torch
import yaml
from torch import nn

from cnnpipe.config import ModelConfig, NetworkClass
from cnnpipe.errors import CnnpipeError
from cnnpipe.layers import Shape
from cnnpipe.models.spec import PlannedLayer


def _reason(exc: BaseException, file: Path | None = None) -> str:
    """`Type: message`, with the line of `file` it came from where there is one."""
    line = getattr(exc, "lineno", None) if isinstance(exc, SyntaxError) else None
    if file is not None and line is None:
        frames = [frame for frame in traceback.extract_tb(exc.__traceback__) if Path(frame.filename) == file.resolve()]
        line = frames[-1].lineno if frames else None
    where = f" (line {line})" if line else ""
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}{where}"


def _import_file(file: Path) -> object:
    if not file.is_file():
        raise CnnpipeError(
            f"model.class: {file}: no such file (a path relative to the repository root, {Path.cwd()}), "
            "or write package.module:NAME for an installed module"
        )
    # A fresh module each time under one name per file: sys.modules must hold it while it runs (dataclasses and
    # typing look their module up there), and an edited file is read anew.
    name = f"_cnnpipe_network_{hashlib.sha256(str(file.resolve()).encode()).hexdigest()[:12]}"
    spec = importlib.util.spec_from_file_location(name, file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001 - the user's code can raise anything; its line is named
        del sys.modules[name]
        raise CnnpipeError(f"model.class: {file} does not import: {_reason(exc, file)}") from None
    return module


def _import_module(name: str) -> object:
    try:
        return importlib.import_module(name)
    except Exception as exc:  # noqa: BLE001
        raise CnnpipeError(
            f"model.class: module {name} does not import ({_reason(exc)}); a file of this repository is "
            f"written PATH.py:NAME, such as {name.replace('.', '/')}.py:NAME"
        ) from None


def _factory(ref: NetworkClass) -> object:
    """The class (or function) `model.class` names."""
    module = _import_file(ref.file) if ref.file is not None else _import_module(ref.module)
    factory = getattr(module, ref.name, None)
    if factory is None or not callable(factory):
        found = [
            name
            for name, value in vars(module).items()  # its own classes, not those it imported
            if isinstance(value, type) and issubclass(value, nn.Module) and value.__module__ == module.__name__
        ]
        offer = f"its nn.Module classes: {', '.join(found)}" if found else "it defines no nn.Module class"
        raise CnnpipeError(f"model.class: {ref.file or ref.module} has no class {ref.name!r}; {offer}")
    return factory


def source_digest(config: ModelConfig) -> str | None:
    """The SHA-256 of model.class's file: a checkpoint remembers it, and training resumes only on the same code."""
    ref = config.network_class
    if ref is None or ref.file is None or not ref.file.is_file():
        return None
    return hashlib.sha256(ref.file.read_bytes()).hexdigest()


def check_watched(config: ModelConfig, dvc_file: Path = Path("dvc.yaml")) -> None:
    """model.class's file must be a dependency of train in dvc.yaml (the folder networks/ is), or DVC would not
    rerun train when it changes. Outside a DVC repository (a benchmark, a test's folder) there is nothing to check."""
    ref = config.network_class
    if ref is None or ref.file is None or not dvc_file.is_file():
        return
    try:
        deps = yaml.safe_load(dvc_file.read_text())["stages"]["train"]["deps"]
    except (yaml.YAMLError, KeyError, TypeError):
        return  # not a dvc.yaml DVC would run; DVC says what is wrong with it
    names = [dep if isinstance(dep, str) else next(iter(dep)) for dep in deps]
    paths = [(dvc_file.parent / name).resolve() for name in names if "${" not in name]  # as DVC reads them
    file = ref.file.resolve()
    if not any(path == file or path in file.parents for path in paths):
        raise CnnpipeError(
            f"model.class: {ref.file} is not a dependency of train in {dvc_file}, so DVC would not rerun train when "
            "it changes; move it into networks/, or add it to train's deps"
        )


def _body(ref: NetworkClass, args: dict, in_channels: int) -> nn.Module:
    factory = _factory(ref)
    call = ", ".join([f"in_channels={in_channels}", *(f"{key}={value!r}" for key, value in args.items())])
    try:
        body = factory(in_channels=in_channels, **args)
    except Exception as exc:  # noqa: BLE001 - a refused argument is a TypeError; the user's checks raise anything
        raise CnnpipeError(
            f"model.class: {ref}({call}) fails: {_reason(exc, ref.file)}; cnnpipe passes in_channels and "
            "model.args as keyword arguments"
        ) from None
    if not isinstance(body, nn.Module):
        raise CnnpipeError(
            f"model.class: {ref}({call}) returns an object of type {type(body).__name__}, not a torch nn.Module"
        )
    return body


def _dry_run(ref: NetworkClass, body: nn.Module, input_shape: Shape) -> tuple[torch.Tensor, list[PlannedLayer]]:
    """One batch of zeros through `body` in eval mode (batch norm must not learn from it): its output, and the
    shapes each of its top-level modules maps between, for the shape table."""
    rows: dict[str, PlannedLayer] = {}

    def record(name: str, module: nn.Module, inputs: tuple, output: object) -> None:
        first = next((value for value in inputs if isinstance(value, torch.Tensor)), None)
        if name not in rows and isinstance(first, torch.Tensor) and isinstance(output, torch.Tensor):
            kind = type(module).__name__
            rows[name] = PlannedLayer(f"body.{name}", None, kind, tuple(first.shape[1:]), tuple(output.shape[1:]))

    hooks = [
        child.register_forward_hook(lambda module, inputs, output, name=name: record(name, module, inputs, output))
        for name, child in body.named_children()
    ]
    shape = f"[{', '.join(map(str, input_shape))}]"
    try:
        with torch.no_grad():
            output = body.eval()(torch.zeros(2, *input_shape))
    except Exception as exc:  # noqa: BLE001
        raise CnnpipeError(f"model.class: {ref} cannot take a {shape} input: {_reason(exc, ref.file)}") from None
    finally:
        for hook in hooks:
            hook.remove()
        body.train()
    if not isinstance(output, torch.Tensor):
        raise CnnpipeError(
            f"model.class: {ref} returns a {type(output).__name__} for a {shape} input, not a tensor; return "
            "feature maps [N, C, H, W] or features [N, F]: cnnpipe appends the head"
        )
    if output.dim() not in (2, 4) or output.shape[0] != 2:
        raise CnnpipeError(
            f"model.class: {ref} turns a batch [2, {shape[1:]} into a {list(output.shape)} tensor; it must return "
            "feature maps [N, C, H, W] or features [N, F], one row per image: cnnpipe appends the head"
        )
    if output.numel() == 0:
        raise CnnpipeError(
            f"model.class: {ref} turns a {shape} input into an empty {list(output.shape[1:])} output; give it "
            "larger images (data.image_size) or down-sample less"
        )
    return output, list(rows.values())


def own_network(
    config: ModelConfig, input_shape: Shape, outputs: int
) -> tuple[list[PlannedLayer], OrderedDict[str, nn.Module]]:
    """The shape plan and the modules `body` (the user's), `flatten_head` (for feature maps) and `head`."""
    ref = config.network_class
    body = _body(ref, config.args, input_shape[0])
    output, plan = _dry_run(ref, body, input_shape)
    modules = OrderedDict(body=body)
    features = tuple(output.shape[1:])
    if output.dim() == 4:
        flat = (math.prod(features),)
        plan.append(PlannedLayer("flatten_head", None, "flatten", features, flat))
        modules["flatten_head"], features = nn.Flatten(), flat
    plan.append(PlannedLayer("head", None, "dense", features, (outputs,)))
    modules["head"] = nn.Linear(features[0], outputs)
    return plan, modules
