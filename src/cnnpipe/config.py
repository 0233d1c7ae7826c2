"""params.yaml, parsed once into typed, validated config objects: the single source of truth.

Nothing else in cnnpipe reads the raw YAML. A bad value stops with one line naming the key and what is valid.
"""

from __future__ import annotations

import codecs
import difflib
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, NoReturn, get_args
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)

from cnnpipe.errors import CnnpipeError
from cnnpipe.layers import LAYER_PRESETS, LAYER_TYPES, MODULE_PRESETS, PRESETS, TORCHVISION_PREFIX, LayerSpec
from cnnpipe.uris import mask_uri, password_refusal

DEFAULT_PARAMS = Path("params.yaml")
Fraction = Annotated[float, Field(gt=0, le=1)]  # of the batches, as Lightning's limit_*_batches take it
SOURCES = ("fashion-mnist", "mnist", "cifar10", "imagefolder", "archive")
# dvc.yaml's pull stage depends on ${data.path}, and DVC needs a path that exists: torchvision's data sets, pinned by
# their checksums, name this stand-in (params.yaml's default), which never changes.
TORCHVISION_STAND_IN = "src/cnnpipe/data/torchvision.md"
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")  # what pull and predict unpack
MAX_NAME = 100  # characters of a name made from the data; a longer one ends in a hash of the whole
# Bounds where a library would take a bigger number and then fail deep inside, or hang.
MAX_SEED = 2**32 - 1
MAX_COUNT = 2**63 - 1  # sys.maxsize
# A process or thread per core of the largest single machines (2 x 192-core AMD EPYC with SMT: 768): more only
# share the same cores (train.num_workers: 10**30 forks DataLoader workers without end; threads overflow torch).
MAX_WORKERS = 1024
# Rows of a picture grid (plots.image_grid): matplotlib draws about 5 rows a second (100 rows of 6: 19 s, AMD EPYC,
# 2 cores); its own limit, 2^23 pixels a side, would allow 42,000 rows (hours).
MAX_GRID_ROWS = 200


def _at_most(limit: int, why: str) -> AfterValidator:
    """An upper bound whose error says why; pydantic's own `le` names the number only."""

    def check(value: int) -> int:
        if value > limit:
            raise ValueError(f"at most {limit:,}: {why}")
        return value

    return AfterValidator(check)


Seed = Annotated[int, Field(ge=0), _at_most(MAX_SEED, "numpy's seeds, and so Lightning's, are 32-bit")]
Count = Annotated[int, Field(ge=1), _at_most(MAX_COUNT, "itertools batches, and MLflow logs steps, in 64-bit integers")]
_PROCESSES = _at_most(MAX_WORKERS, "more processes or threads than the largest machines' 768 cores only share them")
Workers = Annotated[int, Field(ge=1), _PROCESSES]
_DRAWN = "and matplotlib draws about 5 rows of a grid a second"
PreviewRows = Annotated[int, Field(ge=1), _at_most(MAX_GRID_ROWS, f"a row each, {_DRAWN}")]
GridImages = Annotated[int, Field(ge=0), _at_most(6 * MAX_GRID_ROWS, f"6 a row, {_DRAWN}")]


def name_of(text: str) -> str:
    """`text` as an MLflow registered-model name (letters, digits, _ . -): other runs of characters become '-'."""
    name = re.sub(r"[^A-Za-z0-9_.\-]+", "-", text).strip("-_.") or "images"
    if len(name) > MAX_NAME:
        name = f"{name[: MAX_NAME - 9]}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"
    return name


class _Section(BaseModel):
    # No infinity or NaN in any float: an infinite learning rate trains to garbage with exit code 0.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class LimitsConfig(_Section):
    """Bounds on what `pull` reads, checked from headers before anything is decoded or extracted: a small file
    that expands to gigabytes (a decompression bomb) is refused by name instead of filling memory or disk."""

    max_image_pixels: PositiveInt = Field(100_000_000, description="width x height of one image")
    max_archive_bytes: PositiveInt = Field(1 << 30, description="bytes all members of an archive extract to")
    max_archive_files: PositiveInt = Field(100_000, description="members (files and folders) of an archive")


class DataConfig(_Section):
    """Where the images come from and how the validation split is drawn (the `pull` stage)."""

    source: Literal[SOURCES] = "fashion-mnist"
    path: str | None = Field(
        None,
        description=f"imagefolder directory, or archive path or URL; DVC watches it ({TORCHVISION_STAND_IN} otherwise)",
    )
    mirrors: list[Path] = Field(
        default_factory=lambda: [Path("/usr/share/datasets/fashion-mnist")],
        description="directories searched for torchvision's dataset files before downloading",
    )
    download: bool = True
    cache_dir: Path = Path("data/cache")
    image_size: tuple[PositiveInt, PositiveInt] | None = Field(
        None, description="[H, W] that imagefolder/archive images are resized to"
    )
    channels: Literal[1, 3] | None = Field(None, description="1 = greyscale, 3 = RGB; default: the source's own")
    classes: list[str] = Field(default_factory=list, description="keep only these classes; empty keeps all")
    val_fraction: float = Field(0.1, gt=0, lt=1)
    limits: LimitsConfig = LimitsConfig()
    workers: Workers | None = Field(None, description="processes that decode image files; default: all cores")

    @model_validator(mode="after")
    def _path_for_local_sources(self) -> DataConfig:
        if self.source in ("imagefolder", "archive") and self.path in (None, "", TORCHVISION_STAND_IN):
            what = "a folder of class subfolders" if self.source == "imagefolder" else "a .tar.gz/.zip path or URL"
            raise ValueError(f"data.path is required when data.source is '{self.source}': set it to {what}")
        if len(set(self.classes)) != len(self.classes):
            raise ValueError("data.classes lists a class twice")
        if self.image_size and self.image_size[0] * self.image_size[1] > self.limits.max_image_pixels:
            # every image is resized to it and the store holds them all: bounded as a source image is
            raise ValueError(
                f"data.image_size {list(self.image_size)} is {self.image_size[0] * self.image_size[1]:,} pixels, "
                f"more than data.limits.max_image_pixels ({self.limits.max_image_pixels:,}); make it smaller"
            )
        return self

    @property
    def name(self) -> str:
        """The data set's name: torchvision's, or the folder's or archive's own, with the classes of a subset
        (another task). The MLflow experiment and registered model are named after it unless set by hand."""
        if self.source not in ("imagefolder", "archive"):
            return name_of("-".join([self.source, *self.classes]))
        location = urlsplit(self.path).path if "://" in self.path else self.path
        base = Path(location).resolve().name if self.source == "imagefolder" else Path(location).name
        for suffix in ARCHIVE_SUFFIXES if self.source == "archive" else ():
            if base.lower().endswith(suffix):
                base = base[: -len(suffix)]
                break
        return name_of("-".join([base, *self.classes]))


class AugmentConfig(_Section):
    """The albumentations pipeline, as a list of `{TransformName: {argument: value}}` (the `augment` stage)."""

    transforms: list[dict[str, dict[str, Any]]] = Field(default_factory=list)
    copies: NonNegativeInt = Field(0, description="seeded augmented copies of the training set stored on disk")
    online: bool = Field(True, description="also augment on the fly in the training DataLoader")
    preview: PreviewRows = Field(8, description="images in the preview grid, a row each")
    workers: Workers | None = Field(None, description="processes for the copies; default: all cores")

    @field_validator("transforms", mode="before")
    @classmethod
    def _one_transform_per_item(cls, items: Any) -> Any:
        for index, item in enumerate(items or []):
            if not (isinstance(item, dict) and len(item) == 1):
                raise ValueError(
                    f"item {index} must be a single mapping {{TransformName: {{argument: value}}}}, got {item!r}"
                )
            (args,) = item.values()
            if args is None:
                item[next(iter(item))] = {}
        return items


def widened(out: int, width: float) -> int:
    """A layer's kernels or units times `model.width`, at least 1: one rule for layer lists and residual presets."""
    return max(1, round(out * width))


@dataclass(frozen=True)
class NetworkClass:
    """`model.class` taken apart: a file of the repository (`PATH.py:NAME`) or an importable module
    (`package.module:NAME`), and the class's name."""

    file: Path | None
    module: str | None
    name: str

    @classmethod
    def parse(cls, text: str) -> NetworkClass:
        where, _, name = text.rpartition(":")
        if not name.isidentifier() or not where:
            raise ValueError(
                f"model.class: {text!r} is not PATH.py:NAME (a file of the repository) or package.module:NAME"
            )
        if where.endswith(".py"):
            return cls(Path(where), None, name)
        if not all(part.isidentifier() for part in where.split(".")):
            raise ValueError(f"model.class: {where!r} is neither a .py file nor a dotted module name such as pkg.nets")
        return cls(None, where, name)

    def __str__(self) -> str:
        return f"{self.file or self.module}:{self.name}"


class ModelConfig(_Section):
    """The CNN body as a list of layers (the head is appended from the number of classes), a preset, or the
    user's own nn.Module (`model.class`)."""

    model_config = ConfigDict(populate_by_name=True)  # merged with _Section's

    preset: str | None = Field(
        None, description=f"{', '.join(PRESETS)} or {TORCHVISION_PREFIX}NAME; replaces `layers` when set"
    )
    class_: str | None = Field(
        None,
        alias="class",
        description="your own nn.Module as the body: PATH.py:NAME (a file of the repository) or "
        "package.module:NAME, built as NAME(in_channels=C, **model.args); replaces `layers` when set",
    )
    args: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of model.class")
    layers: list[LayerSpec] = Field(default_factory=list)
    width: PositiveFloat = Field(
        1.0,
        description="multiplies every conv's and dense layer's `out` (the network's width) and resnet-small's "
        "kernels; depth is len(layers)",
    )
    fixed_first_layer: list[str] = Field(
        default_factory=list,
        description="hand-made kernels (vertical_edge, sobel_x, ...) the first conv starts from, frozen",
    )

    @model_validator(mode="after")
    def _layers_or_preset(self) -> ModelConfig:
        if self.preset is not None and self.preset not in PRESETS and not self.preset.startswith(TORCHVISION_PREFIX):
            raise ValueError(
                f"model.preset: unknown preset {self.preset!r}; valid: {', '.join(PRESETS)}, {TORCHVISION_PREFIX}NAME"
            )
        if self.class_ is not None:
            self._check_own_network()
        elif self.args:
            raise ValueError("model.args: applies to model.class (your own network) only; remove it or set model.class")
        if self.preset is None and self.class_ is None and not self.layers:
            raise ValueError("model.layers: needs at least one layer, or set model.preset or model.class")
        if self.width != 1 and self.preset is not None and self.preset.startswith(TORCHVISION_PREFIX):
            raise ValueError(
                f"model.width: applies to layer lists (model.layers, {', '.join(LAYER_PRESETS)}) and to "
                f"{', '.join(MODULE_PRESETS)}, not to {self.preset}; set it to 1"
            )
        return self

    def _check_own_network(self) -> None:
        if self.preset is not None:
            raise ValueError(f"model.class: set model.class or model.preset ({self.preset}), not both")
        self.network_class  # noqa: B018 - parses, and names what is wrong with the text
        if self.width != 1:
            raise ValueError(
                f"model.width: applies to layer lists and presets, not to model.class {self.class_}; use 1"
            )
        if "in_channels" in self.args:
            raise ValueError("model.args: in_channels is cnnpipe's to give (the data's channels); remove it")

    @property
    def network_class(self) -> NetworkClass | None:
        return None if self.class_ is None else NetworkClass.parse(self.class_)

    def scaled_layers(self, layers: list[LayerSpec]) -> list[LayerSpec]:
        """`layers` with each conv's and dense layer's `out` multiplied by `width` (at least 1)."""
        if self.width == 1:
            return list(layers)
        return [
            layer.model_copy(update={"out": widened(layer.out, self.width)}) if hasattr(layer, "out") else layer
            for layer in layers
        ]


class EarlyStoppingConfig(_Section):
    patience: PositiveInt | None = Field(None, description="epochs without improvement; null disables it")
    min_delta: NonNegativeFloat = 0.0


class TrainConfig(_Section):
    """The Lightning Trainer and optimiser (the `train` stage)."""

    epochs: Count = 20
    batch_size: Count = Field(128, description="per device")
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: PositiveFloat = 0.003
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: NonNegativeFloat = 0.0005
    scheduler: Literal["onecycle", "cosine", "none"] = "onecycle"
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    precision: Literal["auto", "32-true", "32", "16-mixed", "bf16-mixed", "64-true"] = Field(
        "auto", description="auto: bf16-mixed where the CPU or GPU has bf16 units, else 32-true"
    )
    accelerator: Literal["auto", "cpu", "gpu", "cuda", "mps"] = "auto"
    devices: Workers | Annotated[list[NonNegativeInt], Field(min_length=1)] | Literal["auto"] = "auto"
    num_nodes: PositiveInt = 1
    # ddp_spawn is left out: it pickles the trainer into new processes and hands back only the weights.
    strategy: Literal["auto", "ddp", "ddp_find_unused_parameters_true", "fsdp"] = "auto"
    sync_batchnorm: bool = Field(False, description="batch-norm statistics over the global batch under DDP")
    channels_last: bool | Literal["auto"] = Field(
        "auto", description="NHWC memory format; auto: on a CPU, and on a GPU with 16-bit precision"
    )
    num_workers: Annotated[int, Field(ge=0), _PROCESSES] | Literal["auto"] = Field(
        "auto",
        description="DataLoader worker processes; auto: up to 8 beside a GPU, none on a CPU or without augmentation",
    )
    deterministic: bool = False
    monitor: Literal["val/acc", "val/loss"] = "val/acc"
    early_stopping: EarlyStoppingConfig = EarlyStoppingConfig()
    limit_train_batches: PositiveInt | Fraction = Field(1.0, description="a count of batches, or a fraction")
    limit_val_batches: PositiveInt | Fraction = 1.0
    threads: Workers | None = Field(None, description="torch CPU threads; default: torch's choice")

    @property
    def complete(self) -> bool:
        """Every batch of every epoch: a training on part of the batches is a smoke test (an int 1 is one batch)."""
        return all(
            isinstance(limit, float) and limit == 1.0 for limit in (self.limit_train_batches, self.limit_val_batches)
        )

    @model_validator(mode="after")
    def _device_ids_on_gpus(self) -> TrainConfig:
        if self.accelerator == "cpu" and isinstance(self.devices, list):
            raise ValueError(
                f"train.devices: {self.devices} are device ids, which only GPUs have; with train.accelerator: cpu "
                "give a count of processes, such as 1, or auto"
            )
        return self

    @model_validator(mode="after")
    def _sync_batchnorm_on_gpus(self) -> TrainConfig:
        if self.sync_batchnorm and self.accelerator not in ("gpu", "cuda"):
            raise ValueError(
                f"train.sync_batchnorm: needs train.accelerator: gpu (got {self.accelerator}); "
                "torch's SyncBatchNorm has no CPU kernel"
            )
        return self


class EvaluateConfig(_Section):
    batch_size: Count = 512
    misclassified: GridImages = Field(36, description="examples in the misclassified grid, 6 a row")
    tta: Literal["auto", "hflip", "none"] = Field(
        "auto", description="test-time augmentation; auto: hflip when training mirrored the images, else none"
    )
    tta_shift: int = Field(
        0,
        ge=0,
        le=2,
        description="also average the views shifted by up to this many pixels across and down, (2k+1)^2 of them "
        "with zeros shifted in: what a training's random crops of padded images taught; 0: none",
    )


class ExportConfig(_Section):
    """The `export` stage: the trained model as ONNX and TorchScript files, each checked against PyTorch."""

    formats: Annotated[list[Literal["onnx", "torchscript"]], Field(min_length=1)] = ["onnx", "torchscript"]
    opset: int = Field(18, ge=14, le=23, description="ONNX opset: 18 runs on onnxruntime 1.14 and newer")
    verify_images: PositiveInt = Field(1000, description="real images (test split first) both runtimes answer")
    tolerance: float = Field(
        1e-4, gt=0, lt=1, description="largest |probability difference| allowed against PyTorch (1 allows any)"
    )
    batch_size: Count = 256

    @field_validator("formats")
    @classmethod
    def _distinct(cls, formats: list[str]) -> list[str]:
        if len(set(formats)) != len(formats):
            raise ValueError("export.formats lists a format twice")
        return formats


class MlflowConfig(_Section):
    """Where runs go. `experiment` and `registered_model` default to the data set's name (Params fills them in),
    so runs, comparisons and the champion of different data sets never mix."""

    tracking_uri: str = "sqlite:///mlflow.db"
    experiment: str | None = Field(None, min_length=1, description="default: the data set's name (data.name)")
    run_name: str | None = None
    registered_model: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9][\w.\-]*$",
        description="Model Registry name the trained model is registered under (letters, digits, _ . -); "
        "default: the data set's name",
    )
    register_model: Literal["auto", "always", "never"] = Field(
        "auto", description="auto: complete trainings only (limit_*_batches 1.0), not smoke tests"
    )
    system_metrics: bool = Field(
        True, description="CPU, memory, disk, network and GPU use in the run, every 10 s (under 0.1% of a training)"
    )

    @field_validator("tracking_uri")
    @classmethod
    def _no_password(cls, uri: str) -> str:
        """DVC copies this value into dvc.lock and every experiment's commit, and cnnpipe into MLflow's params."""
        if refusal := password_refusal(uri):
            raise ValueError(refusal)
        return uri


class Params(_Section):
    seed: Seed = 42
    data: DataConfig = DataConfig()
    augment: AugmentConfig = AugmentConfig()
    model: ModelConfig
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    export: ExportConfig = ExportConfig()
    mlflow: MlflowConfig = MlflowConfig()

    @model_validator(mode="before")
    @classmethod
    def _names_from_the_data(cls, raw: Any) -> Any:
        """mlflow.experiment and mlflow.registered_model left null take the data set's name."""
        mlflow = raw.get("mlflow", {}) if isinstance(raw, dict) else None
        keys = ("experiment", "registered_model")
        if not isinstance(mlflow, dict) or all(mlflow.get(key) is not None for key in keys):
            return raw
        try:
            name = DataConfig.model_validate(raw.get("data") or {}).name
        except ValidationError:
            return raw  # the data section's own error is the one to report
        return {**raw, "mlflow": {**mlflow, **{key: name for key in keys if mlflow.get(key) is None}}}


def _key(loc: tuple[Any, ...]) -> str:
    """('model', 'layers', 2, 'conv', 'kernel') -> 'model.layers[2].kernel' (the union tag is dropped)."""
    key = ""
    for previous, part in zip((None, *loc), loc, strict=False):
        if isinstance(part, int):
            key += f"[{part}]"
        elif isinstance(previous, int) and part in LAYER_TYPES:
            continue
        elif str(part).isidentifier():  # skips union branch labels such as 'constrained-int' or 'literal[...]'
            key += f".{part}" if key else str(part)
    return key


def _layer_classes() -> dict[str, type[BaseModel]]:
    """Layer type name -> its spec class, read off the LayerSpec union so a new layer type needs no entry here."""
    union = get_args(LayerSpec)[0]
    return {name: spec for spec in get_args(union) for name in get_args(spec.model_fields["type"].annotation)}


def _holder(loc: tuple[Any, ...]) -> type[BaseModel]:
    """The section or layer class the last key of `loc` was written in: ('model', 'layers', 2, 'conv', 'x') -> Conv."""
    holder: Any = Params
    layers = _layer_classes()
    for previous, part in zip((None, *loc), loc[:-1], strict=False):
        if isinstance(previous, int) and part in layers:
            holder = layers[part]
        elif isinstance(part, str):
            holder = holder.model_fields[part].annotation
    return holder


def _unknown_key(loc: tuple[Any, ...]) -> str:
    """The valid keys of the section or layer, and the closest one: a typo is the usual cause."""
    holder = _holder(loc)
    valid = [field.alias or name for name, field in holder.model_fields.items()]
    guess = difflib.get_close_matches(str(loc[-1]), valid, n=1)
    hint = f"did you mean {guess[0]!r}? " if guess else ""
    if holder in _layer_classes().values():
        where = f"of a {loc[-2]} layer"
    else:
        where = f"of {_key(loc[:-1])}" if len(loc) > 1 else "at the top level"
    return f"unknown key; {hint}valid keys {where}: {', '.join(valid)}"


def _explain(error: dict[str, Any]) -> str:
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        return _unknown_key(error["loc"])
    if error["type"] == "union_tag_invalid":
        return f"unknown layer type {error['input'].get('type')!r}; valid: {', '.join(LAYER_TYPES)}"
    if error["type"] == "union_tag_not_found":
        return f"a layer needs a 'type' key; valid types: {', '.join(LAYER_TYPES)}"
    if "input" in error and not isinstance(error["input"], dict | list):
        given = error["input"]
        message += f" (got {mask_uri(given) if isinstance(given, str) else given!r})"
    return message


def parse_params(raw: dict[str, Any], source: str = "params.yaml") -> Params:
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        # An unknown key first: a misspelt `modle:` also makes `model` missing, and the typo is the cause.
        errors = sorted(exc.errors(), key=lambda error: error["type"] != "extra_forbidden")
        key = _key(errors[0]["loc"])
        # A union (e.g. train.devices) fails once per branch: say what each branch wanted, on the one line.
        same_key = [error for error in errors if _key(error["loc"]) == key]
        explanation = "; or ".join(dict.fromkeys(_explain(error) for error in same_key))
        more = len(errors) - len(same_key)
        suffix = f" (and {more} more)" if more else ""
        if explanation.startswith(f"{key}."):  # a cross-field check names its own key
            key, explanation = explanation.split(" ", 1)
            key = key.rstrip(":")
        raise CnnpipeError(f"{source}: {key or '(top level)'}: {explanation}{suffix}") from None


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise CnnpipeError(f"{path}: file not found; run cnnpipe from the repository root") from None
    except IsADirectoryError:
        raise CnnpipeError(f"{path}: is a directory; --params takes a YAML file such as params.yaml") from None
    except OSError as exc:
        raise CnnpipeError(f"{path}: cannot read it ({exc.strerror}); --params takes a readable YAML file") from None


def _decode(path: Path, data: bytes) -> str:
    """UTF-8 only: DVC reads params as UTF-8 too (`dvc exp run -S` rewrites them), so no other encoding works."""
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        reason = "it is UTF-16"
    elif b"\0" in data:  # UTF-16 without a byte-order mark, or a binary file: NUL bytes are valid UTF-8
        reason = "it holds NUL bytes: a binary file, or UTF-16"
    else:
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            reason = f"byte {exc.start} is 0x{data[exc.start]:02x}"
    raise CnnpipeError(f"{path}: not UTF-8 text ({reason}); save the params file as UTF-8 YAML")


MAX_NODES = 100_000  # keys, values and list items, aliases expanded: params.yaml has 209
MAX_DEPTH = 50  # keys and list items within each other: params.yaml has 5; PyYAML composes recursively
MERGE_TAG = "tag:yaml.org,2002:merge"  # `<<: *defaults`: a key that may appear more than once


class _ParamsLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing while the file is composed, before any value is built, what no params file
    holds: a key written twice (SafeLoader keeps the last without a word; DVC refuses the file), more than MAX_NODES
    nodes with the aliases expanded (a "billion laughs" bomb is a few lines of YAML that expand later, in pydantic,
    albumentations or MLflow, for minutes), an alias inside its own anchor, and nesting beyond MAX_DEPTH."""

    def __init__(self, text: str, path: Path):
        super().__init__(text)
        self.path = path
        self.where: list[str | int] = []  # the keys and list indexes down to the node being composed
        self.sizes: dict[int, int] = {}  # id of each composed node -> its nodes, aliases expanded

    def _refuse(self, mark: yaml.Mark, where: list[str | int], problem: str) -> NoReturn:
        raise CnnpipeError(f"{self.path}: {_key(tuple(where)) or '(top level)'} (line {mark.line + 1}): {problem}")

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            target = self.anchors.get(event.anchor)
            if target is not None and id(target) not in self.sizes:  # still being composed: an ancestor
                loop = f"the alias *{event.anchor} lies inside its own anchor &{event.anchor}"
                self._refuse(event.start_mark, self.where, f"{loop}, a structure that contains itself")
            return super().compose_node(parent, index)
        label = index.value if isinstance(index, yaml.ScalarNode) else index  # a mapping's key, a list's index
        where = self.where
        self.where = where if label is None else [*where, label]
        if len(self.where) > MAX_DEPTH:
            self._refuse(self.peek_event().start_mark, self.where[:2], f"nested more than {MAX_DEPTH} levels deep")
        node = super().compose_node(parent, index)
        self.sizes[id(node)] = 1 + sum(self.sizes[id(child)] for child in _children(node))
        if self.sizes[id(node)] > MAX_NODES:
            nodes = f"more than {MAX_NODES:,} nodes with its aliases expanded"
            self._refuse(node.start_mark, self.where, f"{nodes}, where a params file has a few hundred: a YAML bomb?")
        self.where = where
        return node

    def compose_mapping_node(self, anchor: str | None) -> yaml.MappingNode:
        node = super().compose_mapping_node(anchor)
        first: dict[tuple[str, str], yaml.Node] = {}
        for key, _ in node.value:
            if isinstance(key, yaml.ScalarNode) and key.tag != MERGE_TAG:
                earlier = first.setdefault((key.tag, key.value), key)
                if earlier is not key:
                    lines = f"at line {earlier.start_mark.line + 1} and line {key.start_mark.line + 1}"
                    why = "YAML would keep the last without a word, and DVC refuses the file"
                    self._refuse(key.start_mark, [*self.where, key.value], f"written twice, {lines}; {why}: remove one")
        return node


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [child for pair in node.value for child in pair]
    return node.value if isinstance(node, yaml.SequenceNode) else []


def _parse_yaml(text: str, path: Path) -> Any:
    loader = _ParamsLoader(text, path)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def read_params_file(path: Path) -> dict[str, Any]:
    try:
        raw = _parse_yaml(_decode(path, _read_bytes(path)), path)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise CnnpipeError(f"{path}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(raw, dict):
        raise CnnpipeError(f"{path}: must be a YAML mapping with the sections data, augment, model, train, ...")
    return raw


def load_params(path: Path | str = DEFAULT_PARAMS) -> Params:
    path = Path(path)
    return parse_params(read_params_file(path), str(path))
