"""The op table: every spelling of an op the analysis understands, mapped to the channel
rule it follows, and the helpers that read a rule's arguments from one call.

A *spelling* is how an op appears in a graph:

- ``("module", type)``: a leaf module of an fx graph, found along its class's MRO (a
  subclass follows its base's rule); the layers' types (conv, linear, norms, ...) are not
  rows here but come from the layer registry (``pruning/layers``), which knows them;
- ``("function", callable)``: a call_function of an fx graph (``torch.*``, ``F.*``,
  ``operator.*``); a callable of an optional package is spelled by its qualified name, so
  that nothing optional is imported here;
- ``("method", "name")``: a Tensor method called in an fx graph;
- ``("aten", "name")``: an op of a torch.export graph, by ``op._opname`` (or a python
  callable's ``__name__``: the arithmetic on symbolic sizes).

Each maps to an ``Entry``: the rule (a key of ``RULES``; ``visit.py`` applies the tensor
ops' rules, ``fx.py`` and ``export.py`` find the module of the layers' rules) and whether
the op acts on each element alone (``elementwise``: a value laid out along its last
dimension may pass through it, see ``visit._last_axis``). Adding an op is one spelling in
one row of ``_ROWS``.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from ..layers import rule_of
from ..rule import LAYERS, Rule  # noqa: F401 (LAYERS: the layer rules, re-exported)

RULES = {
    # layers: the op computes with one module's own tensors (dedicated Analyzer methods)
    Rule.CONV: "a convolution: its filters are a new space (grouped: tied to its input by group)",
    Rule.LINEAR: "a Linear: its features are a new space ([N, features], or a last dimension)",
    Rule.BN: "BatchNorm: per-channel tensors, pruned with its input's channels",
    Rule.GN: "GroupNorm: its input's spaces pruned in whole GN groups",
    Rule.LN: "LayerNorm over the channels: per-channel tensors; approximate (its statistics change)",
    Rule.PRELU: "PReLU: per-channel slopes (one slope: passes)",
    Rule.SHORTCUT: "PadShortcut: a space of its own, fed by its input's",
    Rule.CONSTANT_PAD: "a ConstantPad module: keeps zeros when its value is 0",
    # tensor ops
    Rule.PASS: "the channels pass unchanged and zero stays zero",
    Rule.NONZERO: "the channels pass, but a zero comes out non-zero (sigmoid, exp)",
    Rule.HARDTANH: "clamps to [min_val, max_val]: keeps zeros when 0 is inside",
    Rule.CLAMP: "clamps to [min, max]: keeps zeros when 0 is inside",
    Rule.PAD: "pads the spatial dims (constant: with zeros only)",
    Rule.ADD: "addition or subtraction: the operands' channels are joined (a residual)",
    Rule.MUL: "a product: the operands' channels are joined (a squeeze-excitation scale)",
    Rule.DIV: "division by a number",
    Rule.CAT: "concatenation along channels: the spaces side by side",
    Rule.FLATTEN: "flattening from dim 1: each channel becomes the features it spans",
    Rule.VIEW: "a view or reshape: unchanged, or a flatten from dim 1, by the shapes",
    Rule.UNSQUEEZE: "a new dim of size 1 (also an index of None and full slices): the channels move "
                     "with their dim, to dim 1 or the last (broadcast.py)",
    Rule.UNFLATTEN: "a dim other than the channels' split into several (tokens back to an image)",
    Rule.REDUCE: "a reduction over dims other than the batch and the channels",
    Rule.SLICE: "a slice of a spatial dim",
    Rule.GETITEM: "an item of a tuple, or a spatial slicing of a tensor",
    Rule.POOL_INDICES: "a max pool that returns (values, indices)",
    Rule.SPLIT: "split / chunk / narrow along channels (fx): pieces of the layout, their spaces "
             "cut at the pieces' ends; the pruned model gets the new sizes (a graph rewrite)",
    Rule.SIZE: "a shape query: not a tensor, and no use of the channels",
    Rule.CAST: "a cast to another tensor's dtype: the first operand passes, the other's channels are no use",
    Rule.NEW: "a new tensor of a given shape, with another's dtype and device: no channels, and no use of "
              "the other's (a detection head's anchors)",
    Rule.SCALAR: "a result that is not a tensor, read from the tensor's values",
}

EW = True      # elementwise (see the module docstring)

# (kind, rule, elementwise, spellings); a spelling may appear in one row only
_ROWS: Tuple[Tuple[str, Rule, bool, tuple], ...] = (
    # ------------------------------------- layers (their module types: pruning/layers)
    ("function", Rule.CONV, False, (F.conv1d, F.conv2d, F.conv3d)),
    ("aten", Rule.CONV, False, ("conv1d", "conv2d", "conv3d", "convolution")),
    ("function", Rule.LINEAR, False, (F.linear,)),
    ("aten", Rule.LINEAR, False, ("linear",)),
    ("function", Rule.BN, False, (F.batch_norm, torch.batch_norm)),
    ("aten", Rule.BN, False, ("batch_norm", "_native_batch_norm_legit_no_training", "_native_batch_norm_legit",
                           "_native_batch_norm_legit_functional", "native_batch_norm")),
    ("function", Rule.GN, False, (F.group_norm,)),
    ("aten", Rule.GN, False, ("group_norm", "native_group_norm")),
    ("function", Rule.LN, False, (F.layer_norm,)),
    ("aten", Rule.PRELU, False, ("_prelu_kernel", "prelu")),
    # ----------------------------------------------------- zero stays zero
    ("module", Rule.PASS, EW, (
        nn.ReLU, nn.LeakyReLU, nn.ELU, nn.CELU, nn.SELU, nn.GELU, nn.SiLU, nn.Mish, nn.Hardswish,
        nn.Tanh, nn.Softsign, nn.Tanhshrink, nn.Hardshrink, nn.Softshrink, nn.Dropout, nn.Dropout1d,
        nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout, nn.Identity)),
    ("module", Rule.PASS, False, (   # (a max pool with return_indices=True: not understood)
        nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
        nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
        nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.Upsample, nn.ReflectionPad1d,
        nn.ReflectionPad2d, nn.ReflectionPad3d, nn.ReplicationPad1d, nn.ReplicationPad2d,
        nn.ReplicationPad3d, nn.CircularPad1d, nn.CircularPad2d, nn.CircularPad3d)),
    ("function", Rule.PASS, EW, (
        F.relu, torch.relu, torch.relu_, F.relu_, F.relu6, F.leaky_relu, F.elu, F.selu, F.celu,
        F.gelu, F.silu, F.mish, F.hardswish, torch.tanh, F.tanh, F.softsign, F.tanhshrink,
        F.hardshrink, F.softshrink, F.dropout, F.dropout1d, F.dropout2d, F.dropout3d,
        F.alpha_dropout, F.feature_alpha_dropout, torch.clone)),
    ("function", Rule.PASS, False, (
        F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d,
        F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, F.adaptive_max_pool1d,
        F.adaptive_max_pool2d, F.adaptive_max_pool3d, F.interpolate,
        # zero stays zero, whatever the row's draw
        "torchvision.ops.stochastic_depth.stochastic_depth")),
    ("method", Rule.PASS, EW, ("relu", "relu_", "tanh", "tanh_", "contiguous", "clone", "detach", "to",
                            "float", "double", "half", "bfloat16", "type_as", "cpu", "cuda",
                            "requires_grad_")),
    ("aten", Rule.PASS, EW, ("relu", "relu_", "gelu", "silu", "silu_", "hardswish", "mish", "tanh",
                          "dropout", "clone", "alias", "contiguous")),
    ("aten", Rule.PASS, False, (     # (activations among them were never marked elementwise here)
        "relu6", "leaky_relu", "leaky_relu_", "elu", "elu_", "selu", "selu_", "celu", "gelu_", "mish_",
        "hardswish_", "tanh_", "softshrink", "hardshrink", "dropout_", "feature_dropout",
        "alpha_dropout", "feature_alpha_dropout", "max_pool1d", "max_pool2d", "max_pool3d",
        "avg_pool1d", "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d", "adaptive_avg_pool2d",
        "adaptive_avg_pool3d", "_adaptive_avg_pool2d", "adaptive_max_pool1d", "detach", "_to_copy",
        "to", "lift_fresh_copy", "upsample_nearest1d", "upsample_nearest2d", "upsample_nearest3d",
        "upsample_bilinear2d", "upsample_linear1d", "upsample_trilinear3d")),
    ("aten", Rule.POOL_INDICES, False, ("max_pool1d_with_indices", "max_pool2d_with_indices",
                                     "max_pool3d_with_indices", "adaptive_max_pool2d",
                                     "adaptive_max_pool3d")),
    ("module", Rule.HARDTANH, False, (nn.Hardtanh,)),
    ("module", Rule.HARDTANH, EW, (nn.ReLU6,)),     # Hardtanh(0, 6)
    ("function", Rule.HARDTANH, False, (F.hardtanh, F.hardtanh_)),
    ("aten", Rule.HARDTANH, False, ("hardtanh", "hardtanh_")),
    ("method", Rule.CLAMP, False, ("clamp", "clamp_", "clip", "clip_")),
    ("function", Rule.CLAMP, False, (torch.clamp, torch.clip)),
    ("aten", Rule.CLAMP, False, ("clamp", "clamp_", "clip")),
    ("function", Rule.PAD, False, (F.pad,)),
    ("aten", Rule.PAD, False, ("constant_pad_nd", "pad")),
    # ------------------------------------------------ zero becomes non-zero
    ("module", Rule.NONZERO, False, (nn.Sigmoid, nn.Hardsigmoid, nn.Softplus, nn.LogSigmoid)),
    ("function", Rule.NONZERO, False, (torch.sigmoid, F.sigmoid, F.hardsigmoid, F.softplus, F.logsigmoid,
                                    torch.exp)),
    ("method", Rule.NONZERO, False, ("sigmoid", "sigmoid_", "exp", "exp_")),
    ("aten", Rule.NONZERO, False, ("sigmoid", "sigmoid_", "hardsigmoid", "hardsigmoid_", "softplus", "exp",
                                "log_sigmoid")),
    # ---------------------------------------------------- two operands, lists
    ("function", Rule.ADD, False, (operator.add, operator.iadd, torch.add, operator.sub, operator.isub,
                                torch.sub)),
    ("method", Rule.ADD, False, ("add", "add_", "sub", "sub_")),
    ("aten", Rule.ADD, False, ("add", "add_", "sub", "sub_")),
    ("function", Rule.MUL, False, (operator.mul, operator.imul, torch.mul)),
    ("method", Rule.MUL, False, ("mul", "mul_")),
    ("aten", Rule.MUL, False, ("mul", "mul_")),
    ("function", Rule.DIV, False, (operator.truediv, operator.itruediv, torch.div)),
    ("method", Rule.DIV, False, ("div", "div_")),
    ("aten", Rule.DIV, False, ("div", "div_")),
    # (aten "concat" is not here: its first argument, a list, never passed the tensor-input
    # check, so it has always been an unsupported op; torch.export writes aten.cat anyway)
    ("function", Rule.CAT, False, (torch.cat, torch.concat, torch.concatenate)),
    ("aten", Rule.CAT, False, ("cat",)),
    ("function", Rule.GETITEM, False, (operator.getitem,)),   # (export graphs call it too)
    # ------------------------------------------------------------ layouts
    ("module", Rule.FLATTEN, False, (nn.Flatten,)),
    ("function", Rule.FLATTEN, False, (torch.flatten,)),
    ("method", Rule.FLATTEN, False, ("flatten",)),
    ("aten", Rule.FLATTEN, False, ("flatten",)),
    ("function", Rule.VIEW, False, (torch.reshape,)),
    ("method", Rule.VIEW, False, ("view", "reshape")),
    ("aten", Rule.VIEW, False, ("view", "reshape", "_unsafe_view")),
    ("function", Rule.UNSQUEEZE, False, (torch.unsqueeze,)),
    ("method", Rule.UNSQUEEZE, False, ("unsqueeze",)),
    ("aten", Rule.UNSQUEEZE, False, ("unsqueeze",)),
    ("module", Rule.UNFLATTEN, False, (nn.Unflatten,)),
    ("function", Rule.UNFLATTEN, False, (torch.unflatten,)),
    ("method", Rule.UNFLATTEN, False, ("unflatten",)),
    ("aten", Rule.UNFLATTEN, False, ("unflatten",)),
    ("function", Rule.REDUCE, False, (torch.mean, torch.sum, torch.amax, torch.amin)),
    ("method", Rule.REDUCE, False, ("mean", "sum", "amax", "amin")),
    ("aten", Rule.REDUCE, False, ("mean", "sum", "amax", "amin")),
    ("aten", Rule.SLICE, False, ("slice",)),
    ("function", Rule.SPLIT, False, (torch.split, torch.chunk, torch.narrow)),
    ("method", Rule.SPLIT, False, ("split", "split_with_sizes", "chunk", "narrow")),
    # (export: only a chunk's pieces can be pruned, in equal numbers; tensor_rules.channel_pieces)
    ("aten", Rule.SPLIT, False, ("chunk", "split", "split_with_sizes")),
    # ---------------------------------------------------------- not tensors
    ("function", Rule.SIZE, False, (getattr,)),
    ("method", Rule.SIZE, False, ("size", "dim", "numel", "nelement", "item", "tolist", "ndimension")),
    ("aten", Rule.SIZE, False, ("sym_size", "sym_numel", "sym_stride")),
    ("aten", Rule.CAST, False, ("type_as",)),
    ("aten", Rule.NEW, False, ("new_full", "new_zeros", "new_ones", "new_empty")),
    ("aten", Rule.SCALAR, False, ("item", "_assert_tensor_metadata")),
)


@dataclass(frozen=True)
class Entry:
    rule: Rule
    elementwise: bool = False


def _build() -> Dict[Tuple[str, Any], Entry]:
    table: Dict[Tuple[str, Any], Entry] = {}
    for kind, rule, elementwise, spellings in _ROWS:
        assert rule in RULES, rule
        for spelling in spellings:
            entry = Entry(rule, elementwise)
            if table.setdefault((kind, spelling), entry) != entry:   # (F.relu_ is torch.relu_)
                raise AssertionError(f"{kind} {spelling!r} has two rules")
    return table


TABLE = _build()


def entry_of(kind: str, target) -> Optional[Entry]:
    """The table's entry for an op: ``kind`` as in the table, ``target`` the module (not
    its type), the callable, or the name. A module of a registered layer type follows
    its layer's rule."""
    if kind == "module":
        rule = rule_of(target)
        if rule is not None:
            return Entry(Rule(rule))
        return next((TABLE[("module", c)] for c in type(target).__mro__ if ("module", c) in TABLE), None)
    entry = TABLE.get((kind, target))
    if entry is None and kind == "function":
        entry = TABLE.get((kind, f"{getattr(target, '__module__', None)}.{getattr(target, '__name__', None)}"))
    return entry


def spellings(kind: str, rule: str) -> tuple:
    """The spellings of one kind that follow ``rule``, in table order."""
    return tuple(s for (k, s), e in TABLE.items() if k == kind and e.rule == rule)


# --------------------------------------------------------------- arguments
@dataclass(frozen=True)
class Call:
    """One call of an op in the graph, as its rule reads it."""
    kind: str          # module | function | method | aten
    target: Any        # the module, the callable, the method's name, the aten op
    args: tuple        # the arguments as the analysis knows them (Val for tensors)
    kwargs: dict
    x: Any             # the first (tensor) input
    name: str          # the op in a reason: "sigmoid", "mean", "Sigmoid"
    label: str         # the op in an "unsupported op" message: "Tensor.mean", "aten.mean.dim"
    who: str           # whose output a reason names: the node, or the module's name


def _arg(args, kwargs, i, name, default=None):
    if len(args) > i:
        return args[i]
    return kwargs.get(name, default)


def other_operand(c: Call):
    """add, mul, div: the second operand (``other`` of torch and aten alike)."""
    return _arg(c.args, c.kwargs, 1, "other")


def cat_args(c: Call):
    """cat: (the tensors, dim)."""
    return list(_arg(c.args, c.kwargs, 0, "tensors")), _arg(c.args, c.kwargs, 1, "dim", 0)


def hardtanh_bounds(c: Call):
    """hardtanh: (min_val, max_val), the module's own for nn.Hardtanh and nn.ReLU6."""
    if c.kind == "module":
        return c.target.min_val, c.target.max_val
    return _arg(c.args, c.kwargs, 1, "min_val", -1.0), _arg(c.args, c.kwargs, 2, "max_val", 1.0)


def clamp_bounds(c: Call):
    """clamp, clip: (min, max)."""
    return _arg(c.args, c.kwargs, 1, "min"), _arg(c.args, c.kwargs, 2, "max")


def flatten_dims(c: Call):
    """flatten: (start_dim, end_dim), the module's own for nn.Flatten."""
    if c.kind == "module":
        return c.target.start_dim, c.target.end_dim
    return _arg(c.args, c.kwargs, 1, "start_dim", 0), _arg(c.args, c.kwargs, 2, "end_dim", -1)


def view_shape(c: Call) -> list:
    """view, reshape: the requested shape. Each spelling has its own: the Tensor methods
    take it as varargs or one sequence, torch.reshape as ``shape``, aten as ``size``."""
    if c.kind == "method":
        shape = list(c.args[1:])
        if len(shape) == 1 and isinstance(shape[0], (list, tuple)):
            shape = list(shape[0])
        return shape
    if c.kind == "function":
        return list(_arg(c.args, c.kwargs, 1, "shape"))
    return list(_arg(c.args, c.kwargs, 1, "size", []))


def unsqueeze_dim(c: Call):
    """unsqueeze: dim."""
    return _arg(c.args, c.kwargs, 1, "dim")


def unflatten_args(c: Call):
    """unflatten: (dim, sizes), the module's own for nn.Unflatten."""
    if c.kind == "module":
        return c.target.dim, c.target.unflattened_size
    return _arg(c.args, c.kwargs, 1, "dim"), _arg(c.args, c.kwargs, 2, "sizes")


def reduce_dims(c: Call):
    """mean, sum, amax, amin: (dim, keepdim)."""
    return _arg(c.args, c.kwargs, 1, "dim"), _arg(c.args, c.kwargs, 2, "keepdim", False)


def pad_args(c: Call):
    """pad: (pad, mode, value). F.pad(input, pad, mode, value) and aten pad (the same
    arguments) have a mode and a value defaulting to None; aten constant_pad_nd(input, pad,
    value=0) is constant padding."""
    if c.kind == "aten" and c.name == "constant_pad_nd":
        return _arg(c.args, c.kwargs, 1, "pad"), "constant", _arg(c.args, c.kwargs, 2, "value", 0)
    return (_arg(c.args, c.kwargs, 1, "pad"), _arg(c.args, c.kwargs, 2, "mode", "constant"),
            _arg(c.args, c.kwargs, 3, "value", None))


def slice_dim(c: Call):
    """aten slice(input, dim=0, start, end, step): dim."""
    return _arg(c.args, c.kwargs, 1, "dim", 0)


def conv_groups(args, kwargs, name: str):
    """A convolution's groups: F.conv*d and aten conv*d(input, weight, bias, stride,
    padding, dilation, groups); aten convolution has (transposed, output_padding) before."""
    return _arg(args, kwargs, 8 if name == "convolution" else 6, "groups", 1)


def group_norm_args(args, kwargs, native: bool):
    """(num_groups, weight, bias) of a group norm: F.group_norm and aten group_norm(input,
    num_groups, weight, bias, eps[, cudnn_enabled]); aten native_group_norm(input, weight,
    bias, N, C, HxW, group, eps) -> (out, mean, rstd)."""
    if native:
        return args[6], args[1], args[2]
    return _arg(args, kwargs, 1, "num_groups"), _arg(args, kwargs, 2, "weight"), _arg(args, kwargs, 3, "bias")


def piece_sizes(sizes, total: int, chunks: bool = False):
    """The piece sizes of ``split(sizes)`` (an int: pieces of that size, the last shorter)
    or of ``chunk(sizes)`` (pieces of ceil(total / sizes)) of ``total`` channels; None for
    an argument that is not a constant. Also how plan/rewrite.py recognises a split again."""
    if isinstance(sizes, bool) or not isinstance(sizes, (int, list, tuple)):
        return None
    if isinstance(sizes, int):
        if sizes < 1:
            return None
        step = -(-total // sizes) if chunks else sizes
        return [min(step, total - a) for a in range(0, total, step)]
    return list(sizes)


def channel_ranges(c: Call, size: Optional[int]):
    """split / chunk / narrow: (dim, [(start, stop) of each piece]) from constant
    arguments, or None (a size computed at run time, or not a channel split)."""
    name = c.name
    if name == "narrow":
        dim, start, length = (_arg(c.args, c.kwargs, 1, "dim"), _arg(c.args, c.kwargs, 2, "start"),
                              _arg(c.args, c.kwargs, 3, "length"))
        if not all(isinstance(v, int) for v in (dim, start, length)):
            return None
        return dim, [(start, start + length)]
    if name in ("split", "split_with_sizes"):
        arg = _arg(c.args, c.kwargs, 1, "split_size_or_sections",
                   c.kwargs.get("split_size", c.kwargs.get("split_sizes")))
    elif name == "chunk":
        arg = _arg(c.args, c.kwargs, 1, "chunks")
    else:
        return None
    dim = _arg(c.args, c.kwargs, 2, "dim", 0)
    sizes = piece_sizes(arg, size, chunks=name == "chunk") if size is not None else None
    if sizes is None or not isinstance(dim, int) or \
            not all(isinstance(v, int) and v >= 0 for v in sizes) or sum(sizes) != size:
        return None
    ranges, at = [], 0
    for v in sizes:
        ranges.append((at, at + v))
        at += v
    return dim, ranges
