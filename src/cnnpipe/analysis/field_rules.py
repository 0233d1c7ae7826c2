"""How one torch function changes the receptive field of the units of the tensor it returns: one rule per op.

In each of H and W a unit's field is described by its size `rf`, the `jump` (input pixels between neighbouring
units) and `start`, the centre of the first unit in input pixel coordinates (the first pixel's centre is 0).
A window op (conv, pooling) with kernel k, stride s, padding p, dilation d maps them as
    k' = d (k - 1) + 1,  rf' = rf + (k' - 1) jump,  jump' = jump s,  start' = start + ((k' - 1) / 2 - p) jump.

`RULES` maps a torch function's name to its rule; every rule takes the same `Call` and returns the field of
the outputs. A rule that meets arguments it cannot map to pixels raises `Unsupported`, never a guess.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch


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

    def map_axes(self, function: Callable[..., Axis], *per_axis) -> Field:
        """`function(axis, *values)` on H and W, where each of `per_axis` is an (H value, W value) pair."""
        return replace(
            self,
            h=function(self.h, *(pair[0] for pair in per_axis)),
            w=function(self.w, *(pair[1] for pair in per_axis)),
        )


class Unsupported(Exception):
    """A function, or a use of it, that cannot be mapped to input pixels; the message says which."""


@dataclass(frozen=True)
class Call:
    """One call of a torch function on traced tensors: `fields` of the traced inputs, the first of them `x`,
    the call's arguments as given, and its first output tensor `out`."""

    name: str
    fields: list[Field]
    x: torch.Tensor
    args: tuple
    kwargs: dict
    out: torch.Tensor

    @property
    def field(self) -> Field:
        return self.fields[0]

    def arg(self, index: int, name: str, default=None):
        """An argument given by keyword or at position `index`."""
        if name in self.kwargs:
            return self.kwargs[name]
        return self.args[index] if len(self.args) > index else default


Rule = Callable[[Call], Field]


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


def _pair(value) -> tuple:
    """(H, W) of an argument torch takes as one number or a sequence (whose last two are H and W)."""
    if isinstance(value, int | float):
        return (value, value)
    return tuple(value)[-2:] if len(value) > 1 else (value[0], value[0])


def _windowed(field: Field, kernel, stride, padding, dilation) -> Field:
    return field.map_axes(Axis.window, _pair(kernel), _pair(stride), _pair(padding), _pair(dilation))


def _conv_arguments(call: Call, dilation_at: int) -> tuple:
    """Kernel (from the weight), stride, padding as given, dilation: conv2d and conv_transpose2d place all
    but dilation alike."""
    kernel = call.arg(1, "weight").shape[-2:]
    return (
        kernel,
        _pair(call.arg(3, "stride", 1)),
        call.arg(4, "padding", 0),
        _pair(call.arg(dilation_at, "dilation", 1)),
    )


def _conv(call: Call) -> Field:
    kernel, stride, padding, dilation = _conv_arguments(call, dilation_at=5)
    if padding == "valid":
        padding = 0
    elif padding == "same":  # torch pads the extra pixel of an odd total on the far side
        padding = tuple(d * (k - 1) // 2 for k, d in zip(kernel, dilation, strict=True))
    return _windowed(call.field, kernel, stride, padding, dilation)


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


def _conv_transpose(call: Call) -> Field:
    """Output o reads the inputs i with i * stride - padding + t * dilation = o for a kernel tap t."""
    kernel, stride, padding, dilation = _conv_arguments(call, dilation_at=7)

    def transposed(axis: Axis, n_in: int, n_out: int, k: int, s: int, p: int, d: int) -> Axis:
        return _resampled(
            axis, n_in, n_out, lambda o: [(o + p - t * d) // s for t in range(k) if (o + p - t * d) % s == 0]
        )

    return call.field.map_axes(
        transposed, call.x.shape[-2:], call.out.shape[-2:], kernel, stride, _pair(padding), dilation
    )


def _interpolate(call: Call) -> Field:
    mode = call.arg(3, "mode", "nearest")
    if mode not in ("nearest", "bilinear") or call.arg(4, "align_corners"):
        raise Unsupported(
            f"interpolate(mode={mode!r}, align_corners=True)" if mode == "bilinear" else f"interpolate(mode={mode!r})"
        )

    def nearest(o: int, scale: float) -> list[int]:  # torch's nearest reads input floor(o * n_in / n_out)
        return [math.floor(o * scale)]

    def bilinear(o: int, scale: float) -> list[int]:  # the two inputs around (o + 0.5) * scale - 0.5, clamped at 0
        source = max((o + 0.5) * scale - 0.5, 0)
        return [math.floor(source)] + ([math.floor(source) + 1] if source % 1 else [])

    reads = nearest if mode == "nearest" else bilinear

    def resampled(axis: Axis, n_in: int, n_out: int) -> Axis:
        return _resampled(axis, n_in, n_out, lambda o: reads(o, n_in / n_out))

    return call.field.map_axes(resampled, call.x.shape[-2:], call.out.shape[-2:])


def _pool_window(call: Call, dilation) -> Field:
    kernel = call.arg(1, "kernel_size")
    stride = call.arg(2, "stride") or kernel
    return _windowed(call.field, kernel, stride, call.arg(3, "padding", 0), dilation)


def _avg_pool(call: Call) -> Field:
    return _pool_window(call, dilation=1)


def _max_pool(call: Call) -> Field:
    return _pool_window(call, call.arg(4, "dilation", 1))


def _adaptive(call: Call) -> Field:
    """Bin i of n inputs into m outputs covers [floor(i n / m), ceil((i + 1) n / m)): the largest bin is the kernel."""

    def binned(axis: Axis, n: int, m: int | None) -> Axis:
        m = n if m is None else m
        if m == 1:
            return axis.collapse(n)
        widest = max(math.ceil((i + 1) * n / m) - math.floor(i * n / m) for i in range(m))
        first = math.ceil(n / m)
        return replace(
            axis,
            rf=axis.rf + (widest - 1) * axis.jump,
            jump=axis.jump * n / m,
            start=axis.start + (first - 1) / 2 * axis.jump,
        )

    return call.field.map_axes(binned, call.x.shape[-2:], _pair(call.arg(1, "output_size")))


def _pad(call: Call) -> Field:
    pad, ndim = list(call.arg(1, "pad")), call.x.ndim
    shifts = {ndim - 1 - index // 2: pad[index] for index in range(0, len(pad), 2)}  # the leading side
    return call.field.map_axes(lambda axis: replace(axis, start=axis.start - shifts.get(axis.dim, 0) * axis.jump))


def _reduce_dims(field: Field, x: torch.Tensor, dims, keepdim: bool) -> Field:
    dims = {d % x.ndim for d in ((dims,) if isinstance(dims, int) else dims)}

    def reduce(axis: Axis) -> Axis:
        if axis.dim is None:
            return axis
        if axis.dim in dims:
            return axis.collapse(x.shape[axis.dim])
        return replace(axis, dim=axis.dim if keepdim else axis.dim - sum(d < axis.dim for d in dims))

    return field.map_axes(reduce)


def _reduce(call: Call) -> Field:
    """mean, sum, amax over `dim` (all dims when None)."""
    dims = call.arg(1, "dim")
    dims = range(call.x.ndim) if dims is None else dims
    return _reduce_dims(call.field, call.x, dims, bool(call.arg(2, "keepdim", False)))


def _per_sample_norm(call: Call) -> Field:
    """instance_norm and group_norm: every unit is normalised by statistics over the whole map."""
    return _reduce_dims(call.field, call.x, range(2, call.x.ndim), keepdim=True)


def _last_dims(field: Field, x: torch.Tensor, count: int) -> Field:
    """A dense layer or layer norm over the last `count` dims sees all of each spatial axis among them."""
    last = set(range(x.ndim - count, x.ndim))
    return field.map_axes(lambda a: a.collapse(x.shape[a.dim]) if a.dim in last else a)


def _linear(call: Call) -> Field:
    return _last_dims(call.field, call.x, 1)


def _layer_norm(call: Call) -> Field:
    return _last_dims(call.field, call.x, len(call.arg(1, "normalized_shape")))


def _reshaped(call: Call) -> Field:
    """view/reshape/flatten/squeeze/unsqueeze: spatial axes survive only when they stay the last two dims, unchanged."""
    x, out = call.x, call.out
    spatial = [axis.dim for axis in (call.field.h, call.field.w) if axis.dim is not None]
    if spatial == [x.ndim - 2, x.ndim - 1] and out.ndim >= 2 and out.shape[-2:] == x.shape[-2:]:
        return call.field.map_axes(lambda a: replace(a, dim=a.dim - x.ndim + out.ndim))
    return call.field.map_axes(lambda a: a if a.dim is None else a.collapse(x.shape[a.dim]))


def _permute(call: Call) -> Field:
    order = call.arg(1, "dims")
    order = list(order) if not isinstance(order, int) else list(call.args[1:])
    order = [d % call.x.ndim for d in order]
    return call.field.map_axes(lambda a: a if a.dim is None else replace(a, dim=order.index(a.dim)))


def _transpose(call: Call) -> Field:
    first, second = call.arg(1, "dim0") % call.x.ndim, call.arg(2, "dim1") % call.x.ndim
    swap = {first: second, second: first}
    return call.field.map_axes(lambda a: a if a.dim is None else replace(a, dim=swap.get(a.dim, a.dim)))


def _getitem(call: Call) -> Field:
    field, x = call.field, call.x
    index = call.args[1] if isinstance(call.args[1], tuple) else (call.args[1],)
    if any(item is Ellipsis or item is None for item in index) or len(index) > x.ndim:
        raise Unsupported("indexing with ... or None")
    for position, item in enumerate(index):
        spatial = position in (field.h.dim, field.w.dim)
        if spatial and not isinstance(item, slice):
            raise Unsupported("indexing a spatial dimension with something other than a slice")
        if not spatial and not isinstance(item, slice | int):
            raise Unsupported("advanced indexing")
    removed = [position for position, item in enumerate(index) if isinstance(item, int)]

    def sliced(axis: Axis) -> Axis:
        if axis.dim is None:
            return axis
        if axis.dim < len(index) and isinstance(index[axis.dim], slice):
            begin, _, step = index[axis.dim].indices(x.shape[axis.dim])
            axis = replace(axis, start=axis.start + begin * axis.jump, jump=axis.jump * step)
        return replace(axis, dim=axis.dim - sum(r < axis.dim for r in removed))

    return field.map_axes(sliced)


def _along_spatial(call: Call, dim_at: int) -> bool:
    """Whether the call's `dim` argument (0 when not given) names one of x's spatial dimensions."""
    return call.arg(dim_at, "dim", 0) % call.x.ndim in (call.field.h.dim, call.field.w.dim)


def _cat(call: Call) -> Field:
    if _along_spatial(call, 1):
        raise Unsupported("concatenation along a spatial dimension")
    return _merge(call.fields)


def _split(call: Call) -> Field:
    """chunk, split: each piece keeps the field, unless the split cuts a spatial dimension."""
    if _along_spatial(call, 2):
        raise Unsupported(call.name)
    return call.field


def _pointwise(call: Call) -> Field:
    return _merge(call.fields)


POINTWISE = {
    # activations
    *("relu", "relu_", "relu6", "leaky_relu", "leaky_relu_", "gelu", "silu", "silu_", "elu", "elu_", "selu"),
    *("celu", "hardswish", "hardsigmoid", "hardtanh", "hardtanh_", "sigmoid", "sigmoid_", "tanh", "tanh_"),
    *("softplus", "mish", "prelu", "logsigmoid", "softmax", "log_softmax"),
    # per-unit normalisation and dropout
    *("batch_norm", "dropout", "dropout_", "dropout1d", "dropout2d", "dropout3d", "feature_dropout"),
    *("alpha_dropout", "feature_alpha_dropout"),
    # arithmetic, element by element: where branches meet
    *("add", "add_", "__add__", "__iadd__", "__radd__", "sub", "sub_", "__sub__", "__rsub__", "__isub__"),
    *("mul", "mul_", "__mul__", "__rmul__", "__imul__", "div", "div_", "__truediv__", "__rtruediv__"),
    *("__itruediv__", "neg", "__neg__", "abs", "exp", "sqrt", "rsqrt", "pow", "__pow__", "where"),
    *("clamp", "clamp_", "clamp_min", "clamp_max", "clip", "maximum", "minimum"),
    # copies and dtype changes
    *("contiguous", "clone", "to", "float", "double", "half", "type", "type_as", "detach"),
}

RULES: dict[str, Rule] = dict.fromkeys(POINTWISE, _pointwise) | {
    "conv2d": _conv,
    "conv_transpose2d": _conv_transpose,
    "max_pool2d": _max_pool,
    "max_pool2d_with_indices": _max_pool,
    "avg_pool2d": _avg_pool,
    "adaptive_avg_pool2d": _adaptive,
    "adaptive_max_pool2d": _adaptive,
    "adaptive_max_pool2d_with_indices": _adaptive,
    "interpolate": _interpolate,
    "pad": _pad,
    "mean": _reduce,
    "sum": _reduce,
    "amax": _reduce,
    "instance_norm": _per_sample_norm,
    "group_norm": _per_sample_norm,
    "linear": _linear,
    "layer_norm": _layer_norm,
    "view": _reshaped,
    "reshape": _reshaped,
    "flatten": _reshaped,
    "squeeze": _reshaped,
    "unsqueeze": _reshaped,
    "permute": _permute,
    "transpose": _transpose,
    "__getitem__": _getitem,
    "cat": _cat,
    "concat": _cat,
    "concatenate": _cat,
    "chunk": _split,
    "split": _split,
}
