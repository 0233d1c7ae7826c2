"""Receptive field of every named submodule of any CNN: which input pixels can influence one output unit.

Why not chain the layers in execution order, as torchscan and pytorch-receptive-field do: that is wrong as
soon as branches meet (ResNets, Inception). Here the model runs once on a zero image under a
TorchFunctionMode that follows every tensor through every torch function, so each tensor carries its own
field; where branches meet (add, cat, mul) the field is the union of the fields, and `aligned` turns false
when the branches disagree on jump or centre. How each function changes a field is in `field_rules`; a
function cnnpipe cannot map to pixels is an error naming the module that called it, never a guess.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from cnnpipe.analysis.field_rules import RULES, Axis, Call, Field, Unsupported
from cnnpipe.errors import CnnpipeError

Pair = tuple[float, float]


@dataclass(frozen=True)
class LayerField:
    name: str
    type: str
    out_shape: tuple[int, ...]
    rf: Pair
    jump: Pair
    start: Pair
    aligned: bool = True


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
        if name not in RULES:
            raise Unsupported(name)
        fields = [self.field(leaf) for leaf in traced]
        field = RULES[name](Call(name, fields, traced[0], args, kwargs, outputs[0]))
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
    except Unsupported as exc:
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
