"""Receptive field of every named submodule of any CNN: which input pixels can influence one output unit.

In each of H and W a unit's field is described by its size `rf`, the `jump` (input pixels between neighbouring
units) and `start`, the centre of the first unit in input pixel coordinates (the first pixel's centre is 0).
A window op (conv, pooling) with kernel k, stride s, padding p, dilation d maps them as
    k' = d (k - 1) + 1,  rf' = rf + (k' - 1) jump,  jump' = jump s,  start' = start + ((k' - 1) / 2 - p) jump.

Why not chain the layers in execution order, as torchscan and pytorch-receptive-field do: that is wrong as
soon as branches meet (ResNets, Inception). Here the model runs once on a zero image under a
TorchFunctionMode that follows every tensor through every torch function, so each tensor carries its own
field; where branches meet (add, cat, mul) the field is the union of the fields, and `aligned` turns false
when the branches disagree on jump or centre. A function cnnpipe cannot map to pixels is an error naming
the module that called it, never a guess.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import torch
from rich.table import Table
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from cnnpipe.errors import CnnpipeError

Pair = tuple[float, float]


@dataclass(frozen=True)
class Axis:
    """The field along one image axis; `dim` is the tensor dimension holding it, None once it is pooled away."""

    rf: float
    jump: float
    start: float
    dim: int | None

    def window(self, kernel: int, stride: float, padding: float, dilation: int = 1) -> Axis:
        span = dilation * (kernel - 1)
        return replace(
            self,
            rf=self.rf + span * self.jump,
            jump=self.jump * stride,
            start=self.start + (span / 2 - padding) * self.jump,
        )

    def collapse(self, size: int) -> Axis:
        """A unit that sees the whole axis (global pooling, flatten, a dense layer along it)."""
        return replace(self.window(size, size, 0), dim=None)

    @property
    def bounds(self) -> tuple[float, float]:
        half = (self.rf - 1) / 2
        return self.start - half, self.start + half


@dataclass(frozen=True)
class Field:
    h: Axis
    w: Axis
    aligned: bool = True

    def map_axes(self, function: Callable[[Axis], Axis]) -> Field:
        return replace(self, h=function(self.h), w=function(self.w))


@dataclass(frozen=True)
class LayerField:
    name: str
    type: str
    out_shape: tuple[int, ...]
    rf: Pair
    jump: Pair
    start: Pair
    aligned: bool = True


def _merge(fields: list[Field]) -> Field:
    """Where branches meet: the union of the spatial branches' fields, at least as large as any pooled-away
    branch's (the scale of a squeeze-excitation block sees the whole map); not aligned when the spatial
    branches disagree on jump or centre."""
    axes = []
    aligned = all(field.aligned for field in fields)
    for name in ("h", "w"):
        parts = [getattr(field, name) for field in fields]
        spatial = [part for part in parts if part.dim is not None] or parts
        low = min(part.bounds[0] for part in spatial)
        high = max(part.bounds[1] for part in spatial)
        aligned &= len({(part.jump, part.start) for part in spatial}) == 1
        rf = max(high - low + 1, *(part.rf for part in parts))
        axes.append(Axis(rf, max(part.jump for part in spatial), (low + high) / 2, spatial[0].dim))
    return Field(axes[0], axes[1], aligned)


def _argument(args: tuple, kwargs: dict, index: int, name: str, default=None):
    if name in kwargs:
        return kwargs[name]
    return args[index] if len(args) > index else default


def _pair(value, default=None) -> tuple:
    if value is None:
        value = default
    if isinstance(value, int | float):
        return (value, value)
    return tuple(value)[-2:] if len(value) > 1 else (value[0], value[0])


def _windowed(field: Field, kernel, stride, padding, dilation=1) -> Field:
    kernel, stride, padding, dilation = _pair(kernel), _pair(stride, kernel), _pair(padding), _pair(dilation)
    return replace(
        field,
        h=field.h.window(kernel[0], stride[0], padding[0], dilation[0]),
        w=field.w.window(kernel[1], stride[1], padding[1], dilation[1]),
    )


def _conv(field: Field, x: torch.Tensor, args, kwargs) -> Field:
    kernel = _argument(args, kwargs, 1, "weight").shape[-2:]
    stride = _pair(_argument(args, kwargs, 3, "stride", 1))
    padding = _argument(args, kwargs, 4, "padding", 0)
    dilation = _pair(_argument(args, kwargs, 5, "dilation", 1))
    if padding == "valid":
        padding = 0
    elif padding == "same":  # torch pads the extra pixel of an odd total on the far side
        padding = tuple(d * (k - 1) // 2 for k, d in zip(kernel, dilation, strict=True))
    return _windowed(field, kernel, stride, padding, dilation)


def _resampled(axis: Axis, n_in: int, n_out: int, reads: Callable[[int], range | list[int]]) -> Axis:
    """Upsampling puts output units on a finer, uneven grid (output 2i and 2i+1 may read the same inputs).
    The field is the tightest hull over every unit: start + o * jump -/+ (rf - 1) / 2 holds all pixels that
    output unit o can see, and some unit touches each end."""
    jump = axis.jump * n_in / n_out
    half = (axis.rf - 1) / 2
    low, high = math.inf, -math.inf
    for o in range(n_out):
        inputs = [i for i in reads(o) if 0 <= i < n_in]
        if inputs:
            low = min(low, axis.start + min(inputs) * axis.jump - half - o * jump)
            high = max(high, axis.start + max(inputs) * axis.jump + half - o * jump)
    return replace(axis, rf=high - low + 1, jump=jump, start=(low + high) / 2)


def _conv_transpose(field: Field, x: torch.Tensor, args, kwargs, out: torch.Tensor) -> Field:
    """Output o reads the inputs i with i * stride - padding + t * dilation = o for a kernel tap t."""
    kernel = _argument(args, kwargs, 1, "weight").shape[-2:]
    stride = _pair(_argument(args, kwargs, 3, "stride", 1))
    padding = _pair(_argument(args, kwargs, 4, "padding", 0))
    dilation = _pair(_argument(args, kwargs, 7, "dilation", 1))
    axes = []
    for axis, n_in, n_out, k, s, p, d in zip(
        (field.h, field.w), x.shape[-2:], out.shape[-2:], kernel, stride, padding, dilation, strict=True
    ):

        def reads(o, k=k, s=s, p=p, d=d):
            return [(o + p - t * d) // s for t in range(k) if (o + p - t * d) % s == 0]

        axes.append(_resampled(axis, n_in, n_out, reads))
    return replace(field, h=axes[0], w=axes[1])


def _pool(field: Field, x: torch.Tensor, args, kwargs, dilation=1) -> Field:
    kernel = _argument(args, kwargs, 1, "kernel_size")
    stride = _argument(args, kwargs, 2, "stride") or kernel
    return _windowed(field, kernel, stride, _argument(args, kwargs, 3, "padding", 0), dilation)


def _max_pool(field: Field, x: torch.Tensor, args, kwargs) -> Field:
    return _pool(field, x, args, kwargs, _argument(args, kwargs, 4, "dilation", 1))


def _adaptive(field: Field, x: torch.Tensor, args, kwargs) -> Field:
    """Bin i of n inputs into m outputs covers [floor(i n / m), ceil((i + 1) n / m)): the largest bin is the kernel."""
    sizes = _pair(_argument(args, kwargs, 1, "output_size"))
    axes = []
    for axis, n, m in zip((field.h, field.w), x.shape[-2:], sizes, strict=True):
        m = n if m is None else m
        if m == 1:
            axes.append(axis.collapse(n))
            continue
        widest = max(math.ceil((i + 1) * n / m) - math.floor(i * n / m) for i in range(m))
        first = math.ceil(n / m)
        axes.append(
            replace(
                axis,
                rf=axis.rf + (widest - 1) * axis.jump,
                jump=axis.jump * n / m,
                start=axis.start + (first - 1) / 2 * axis.jump,
            )
        )
    return replace(field, h=axes[0], w=axes[1])


def _interpolate(field: Field, x: torch.Tensor, args, kwargs, out: torch.Tensor) -> Field:
    mode = _argument(args, kwargs, 3, "mode", "nearest")
    if mode not in ("nearest", "bilinear") or _argument(args, kwargs, 4, "align_corners"):
        raise _unsupported(
            f"interpolate(mode={mode!r}, align_corners=True)" if mode == "bilinear" else f"interpolate(mode={mode!r})"
        )
    axes = []
    for axis, n_in, n_out in zip((field.h, field.w), x.shape[-2:], out.shape[-2:], strict=True):
        scale = n_in / n_out
        if mode == "nearest":  # torch's nearest reads input floor(o * n_in / n_out)

            def reads(o, scale=scale):
                return [math.floor(o * scale)]
        else:  # bilinear reads the two inputs around (o + 0.5) * scale - 0.5, clamped at 0

            def reads(o, scale=scale):
                source = max((o + 0.5) * scale - 0.5, 0)
                return [math.floor(source)] + ([math.floor(source) + 1] if source % 1 else [])

        axes.append(_resampled(axis, n_in, n_out, reads))
    return replace(field, h=axes[0], w=axes[1])


def _pad(field: Field, x: torch.Tensor, args, kwargs) -> Field:
    pad = list(_argument(args, kwargs, 1, "pad"))
    shifts = {x.ndim - 1 - index // 2: pad[index] for index in range(0, len(pad), 2)}  # the leading side
    return field.map_axes(lambda axis: replace(axis, start=axis.start - shifts.get(axis.dim, 0) * axis.jump))


def _reduce_dims(field: Field, x: torch.Tensor, dims, keepdim: bool) -> Field:
    dims = {d % x.ndim for d in ((dims,) if isinstance(dims, int) else dims)}

    def reduce(axis: Axis) -> Axis:
        if axis.dim is None:
            return axis
        if axis.dim in dims:
            return axis.collapse(x.shape[axis.dim])
        return replace(axis, dim=axis.dim if keepdim else axis.dim - sum(d < axis.dim for d in dims))

    return field.map_axes(reduce)


def _mean(field: Field, x: torch.Tensor, args, kwargs) -> Field:
    dims = _argument(args, kwargs, 1, "dim")
    dims = range(x.ndim) if dims is None else dims
    return _reduce_dims(field, x, dims, bool(_argument(args, kwargs, 2, "keepdim", False)))


def _last_dims(field: Field, x: torch.Tensor, count: int) -> Field:
    """A dense layer or layer norm over the last `count` dims sees all of each spatial axis among them."""
    last = set(range(x.ndim - count, x.ndim))
    return field.map_axes(lambda a: a.collapse(x.shape[a.dim]) if a.dim in last else a)


def _reshaped(field: Field, x: torch.Tensor, out: torch.Tensor) -> Field:
    """view/reshape/flatten: spatial axes survive only when they stay the last two dims, unchanged."""
    spatial = [axis.dim for axis in (field.h, field.w) if axis.dim is not None]
    if spatial == [x.ndim - 2, x.ndim - 1] and out.ndim >= 2 and out.shape[-2:] == x.shape[-2:]:
        return field.map_axes(lambda a: replace(a, dim=a.dim - x.ndim + out.ndim))
    return field.map_axes(lambda a: a if a.dim is None else a.collapse(x.shape[a.dim]))


def _permute(field: Field, x: torch.Tensor, args, kwargs) -> Field:
    order = _argument(args, kwargs, 1, "dims")
    order = list(order) if not isinstance(order, int) else list(args[1:])
    order = [d % x.ndim for d in order]
    return field.map_axes(lambda a: a if a.dim is None else replace(a, dim=order.index(a.dim)))


def _transpose(field: Field, x: torch.Tensor, args, kwargs) -> Field:
    first, second = (_argument(args, kwargs, 1, "dim0") % x.ndim, _argument(args, kwargs, 2, "dim1") % x.ndim)
    swap = {first: second, second: first}
    return field.map_axes(lambda a: a if a.dim is None else replace(a, dim=swap.get(a.dim, a.dim)))


def _getitem(field: Field, x: torch.Tensor, args, kwargs) -> Field:
    index = args[1] if isinstance(args[1], tuple) else (args[1],)
    if any(item is Ellipsis or item is None for item in index) or len(index) > x.ndim:
        raise _unsupported("indexing with ... or None")
    for position, item in enumerate(index):
        spatial = position in (field.h.dim, field.w.dim)
        if spatial and not isinstance(item, slice):
            raise _unsupported("indexing a spatial dimension with something other than a slice")
        if not spatial and not isinstance(item, slice | int):
            raise _unsupported("advanced indexing")
    removed = [position for position, item in enumerate(index) if isinstance(item, int)]

    def sliced(axis: Axis) -> Axis:
        if axis.dim is None:
            return axis
        if axis.dim < len(index) and isinstance(index[axis.dim], slice):
            begin, _, step = index[axis.dim].indices(x.shape[axis.dim])
            axis = replace(axis, start=axis.start + begin * axis.jump, jump=axis.jump * step)
        return replace(axis, dim=axis.dim - sum(r < axis.dim for r in removed))

    return field.map_axes(sliced)


def _cat(fields: list[Field], args, kwargs, x: torch.Tensor) -> Field:
    dim = _argument(args, kwargs, 1, "dim", 0) % x.ndim
    if dim in (fields[0].h.dim, fields[0].w.dim):
        raise _unsupported("concatenation along a spatial dimension")
    return _merge(fields)


POINTWISE = {
    "relu",
    "relu_",
    "relu6",
    "leaky_relu",
    "leaky_relu_",
    "gelu",
    "silu",
    "silu_",
    "elu",
    "elu_",
    "selu",
    "celu",
    "hardswish",
    "hardsigmoid",
    "hardtanh",
    "hardtanh_",
    "sigmoid",
    "sigmoid_",
    "tanh",
    "tanh_",
    "softplus",
    "mish",
    "prelu",
    "logsigmoid",
    "batch_norm",
    "dropout",
    "dropout_",
    "dropout1d",
    "dropout2d",
    "dropout3d",
    "feature_dropout",
    "alpha_dropout",
    "feature_alpha_dropout",
    "add",
    "add_",
    "__add__",
    "__iadd__",
    "__radd__",
    "sub",
    "sub_",
    "__sub__",
    "__rsub__",
    "__isub__",
    "mul",
    "mul_",
    "__mul__",
    "__rmul__",
    "__imul__",
    "div",
    "div_",
    "__truediv__",
    "__rtruediv__",
    "__itruediv__",
    "neg",
    "__neg__",
    "abs",
    "exp",
    "sqrt",
    "rsqrt",
    "pow",
    "__pow__",
    "clamp",
    "clamp_",
    "clamp_min",
    "clamp_max",
    "clip",
    "contiguous",
    "clone",
    "to",
    "float",
    "double",
    "half",
    "type",
    "type_as",
    "detach",
    "softmax",
    "log_softmax",
    "where",
    "maximum",
    "minimum",
}
WINDOW_FUNCTIONS = {
    "conv2d": _conv,
    "max_pool2d": _max_pool,
    "max_pool2d_with_indices": _max_pool,
    "avg_pool2d": _pool,
    "adaptive_avg_pool2d": _adaptive,
    "adaptive_max_pool2d": _adaptive,
    "adaptive_max_pool2d_with_indices": _adaptive,
    "pad": _pad,
    "mean": _mean,
    "sum": _mean,
    "amax": _mean,
    "permute": _permute,
    "transpose": _transpose,
    "__getitem__": _getitem,
}


class _UnsupportedFunction(Exception):
    pass


def _unsupported(what: str) -> _UnsupportedFunction:
    return _UnsupportedFunction(what)


class _FieldTracer(TorchFunctionMode):
    """Runs the model once, giving every tensor that depends on the input the field of its units."""

    def __init__(self):
        super().__init__()
        self.fields: dict[int, Field] = {}
        self.keep: list[torch.Tensor] = []  # keeps ids unique while the run lasts

    def set(self, tensor: torch.Tensor, field: Field) -> None:
        self.fields[id(tensor)] = field
        self.keep.append(tensor)

    def field(self, value) -> Field | None:
        return self.fields.get(id(value)) if isinstance(value, torch.Tensor) else None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        leaves, _ = tree_flatten((args, kwargs))
        traced = [leaf for leaf in leaves if self.field(leaf) is not None]
        outputs = [leaf for leaf in tree_flatten(out)[0] if isinstance(leaf, torch.Tensor)]
        if not traced or not outputs:
            return out
        name = getattr(func, "__name__", str(func))
        x = traced[0]
        fields = [self.field(leaf) for leaf in traced]
        if name in WINDOW_FUNCTIONS:
            field = WINDOW_FUNCTIONS[name](fields[0], x, args, kwargs)
        elif name in ("interpolate", "conv_transpose2d"):
            rule = _interpolate if name == "interpolate" else _conv_transpose
            field = rule(fields[0], x, args, kwargs, outputs[0])
        elif name in ("cat", "concat", "concatenate"):
            field = _cat(fields, args, kwargs, x)
        elif name in ("view", "reshape", "flatten", "squeeze", "unsqueeze"):
            field = _reshaped(fields[0], x, outputs[0])
        elif name == "linear":
            field = _last_dims(fields[0], x, 1)
        elif name == "layer_norm":
            field = _last_dims(fields[0], x, len(_argument(args, kwargs, 1, "normalized_shape")))
        elif name in ("instance_norm", "group_norm"):
            field = _reduce_dims(fields[0], x, range(2, x.ndim), keepdim=True)
        elif name in ("chunk", "split") and (_argument(args, kwargs, 2, "dim", 0) % x.ndim) not in (
            fields[0].h.dim,
            fields[0].w.dim,
        ):
            field = fields[0]
        elif name in POINTWISE:
            field = _merge(fields)
        else:
            raise _UnsupportedFunction(name)
        for output in outputs:
            self.set(output, field)
        return out


def _numbers(*values: float) -> Pair:
    """Whole numbers as ints (435, not 435.0), the rest as floats: what people and JSON readers expect."""
    return tuple(int(value) if float(value).is_integer() else float(value) for value in values)


def _first_tensor(value) -> torch.Tensor | None:
    return next((leaf for leaf in tree_flatten(value)[0] if isinstance(leaf, torch.Tensor)), None)


def receptive_fields(model: nn.Module, input_shape: tuple[int, int, int]) -> list[LayerField]:
    """The field of the output of every named submodule (containers included), in the order they finish."""
    tracer = _FieldTracer()
    results: dict[str, LayerField] = {}
    stack: list[nn.Module] = []
    names = {module: name for name, module in model.named_modules()}

    def enter(module, inputs):
        stack.append(module)

    def leave(module, inputs, output):
        stack.pop()
        tensor = _first_tensor(output)
        field = tracer.field(tensor)
        if field is None or module is model:
            return
        results.pop(names[module], None)  # a module called twice reports its last call
        results[names[module]] = LayerField(
            names[module],
            type(module).__name__,
            tuple(tensor.shape[1:]),
            _numbers(field.h.rf, field.w.rf),
            _numbers(field.h.jump, field.w.jump),
            _numbers(field.h.start, field.w.start),
            field.aligned,
        )

    handles = [module.register_forward_pre_hook(enter) for module in names]
    handles += [module.register_forward_hook(leave) for module in names]
    was_training = model.training
    model.eval()  # one zero image: batch norm must use (and not update) its running statistics
    try:
        x = torch.zeros(1, *input_shape)
        tracer.set(x, Field(Axis(1, 1, 0.0, 2), Axis(1, 1, 0.0, 3)))
        with torch.no_grad(), tracer:
            model(x)
    except _UnsupportedFunction as exc:
        where = stack[-1] if stack else model
        raise CnnpipeError(
            f"receptive field: module type {type(where).__name__} ('{names[where] or 'model'}') uses {exc}, which "
            "cnnpipe cannot map to input pixels; supported are convolutions, pooling, upsampling, padding, "
            "element-wise ops, concatenation, flatten and dense layers"
        ) from None
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return list(results.values())


def to_json(layers: list[LayerField], input_shape: tuple[int, int, int]) -> str:
    return json.dumps({"input": list(input_shape), "layers": [asdict(layer) for layer in layers]}, indent=2)


def _fmt(pair: Pair) -> str:
    return "x".join(f"{value:g}" for value in pair)


def to_table(layers: list[LayerField], title: str = "Receptive field") -> Table:
    table = Table(title=title)
    for column in ("layer", "type", "output [C,H,W]", "rf", "jump", "start"):
        table.add_column(column)
    for layer in layers:
        rf = _fmt(layer.rf) + ("" if layer.aligned else " (paths not aligned)")
        table.add_row(layer.name, layer.type, str(list(layer.out_shape)), rf, _fmt(layer.jump), _fmt(layer.start))
    return table
