"""Layouts beside the table's rules: channels moved between dim 1 and the last dimension
(permute, transpose), spatial flattens, channels-last views ([B, H*W, C] <-> [B, H, W,
C]), tokens picked, reductions over tokens or over the channels (a statistic), a tensor
attribute viewed and multiplied or added in (a layer scale: a member pruned with the
channels), residual sums and products of channels-last or token layouts, and a class
token concatenated to tokens. fx graphs ask ``visit``; torch.export graphs ask
``visit_export`` for the permutes, spatial flattens, views, sums and products (their ops
named by aten), and ``export_param`` for a parameter placeholder."""
from __future__ import annotations

import math
from dataclasses import replace
from typing import TYPE_CHECKING, Optional

import torch

from .broadcast import as_layout as _as_layout, channel_dim as _channel_dim
from .broadcast import index_dims, is_broadcast_index, reindex
from .model import APPROXIMATE, ParamRef, ParamView, Val
from .nodes import shape_entries
from .sizes import CONSTANT_COUNT, reads_own_size

if TYPE_CHECKING:   # (annotations only: the analyzer imports no visitor)
    from .analyzer import Analyzer

_VIEWS = ("reshape", "view", "expand")
_BINARY = ("add", "add_", "mul", "mul_", "sub", "sub_")
_REDUCE = ("mean", "sum", "amax", "max", "norm")
_DIV = ("truediv", "div", "div_")


def param_use(node, aten: bool = False):
    """The product or sum that a parameter read by ``node`` reaches through views (also
    ``unsqueeze`` and an index of None and full slices: broadcast.py), when that is its
    one use (so that pruning it along the channels changes nothing else). ``aten``: a
    parameter placeholder of an export graph, whose ops are named by ``_opname``."""
    n = node
    while len(n.users) == 1:
        user = next(iter(n.users))
        name = _aten_name(user) if aten else \
            user.target if user.op == "call_method" else getattr(user.target, "__name__", "")
        if user.args and user.args[0] is n and (name in _VIEWS + ("unsqueeze", "_unsafe_view") or (
                name == "getitem" and len(user.args) == 2 and is_broadcast_index(user.args[1]))):
            n = user
            continue
        if name in ("cat", "addcmul") and user.op == "call_function" and not aten:   # a class token; GRN's affine
            return user
        return user if name in _BINARY and user.op in ("call_method", "call_function") else None
    return None


def _aten_name(node) -> str:
    return getattr(node.target, "_opname", None) or getattr(node.target, "__name__", "")


def export_param(A: Analyzer, node) -> Optional[Val]:
    """A parameter placeholder of an export graph as a tensor member (as fx's get_attr,
    fx.py), where its one use is a product or sum (``param_use``); else None."""
    qualname = A.param_names.get(node.name, "")
    owner, _, attr = qualname.rpartition(".")
    t = getattr(A.modules.get(owner), attr, None)
    if not isinstance(t, torch.Tensor) or t.dim() < 1 or param_use(node, aten=True) is None:
        return None
    return Val((), 1, t.dim(), param=ParamRef(qualname, tuple(range(t.dim()))))


_EXPORT_LAYOUTS = ("permute", "transpose", "flatten", "view", "reshape", "_unsafe_view")


def visit_export(A: Analyzer, node, name: str, args, kwargs):
    """This file's rules in a torch.export graph, by the aten op's name: permute and
    transpose, a spatial flatten, a channels-last view, a view of a tensor member, sums
    and products of token layouts or with a tensor member; None elsewhere (the table's
    rules apply)."""
    x = args[0] if args and isinstance(args[0], Val) and args[0].tensor else None
    if x is not None and _plain(x) and name in _EXPORT_LAYOUTS:
        out = _plain_layout(A, node, name, x, args, kwargs)
        if out is not _NOT_MINE:
            return out
    if x is not None and x.param is not None and name in _VIEWS + ("_unsafe_view",):
        return _param_view(A, node, "expand" if name == "expand" else "view", x)
    if name in ("add", "sub", "mul") and len(args) == 2 and not kwargs:
        return _layout_binary(A, node, "mul" if name == "mul" else "add", *args)
    return None


def _plain(x: Val) -> bool:
    """A value laid out in channels alone (no heads, radix, flatten or parameter)."""
    return x.param is None and x.rank is not None and x.factor == 1 and \
        x.heads is None and x.radix is None and bool(x.segs)


def _cat_tokens(A: Analyzer, node, args, kwargs):
    """``torch.cat`` of token or channels-last layouts along a dimension that is not the
    channels' (a class token prepended): the pieces' channels are one, joined; a parameter
    among them (the class token) is pruned with them. None for other concatenations."""
    items = args[0] if args else kwargs.get("tensors")
    dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
    if not isinstance(items, (list, tuple)) or not isinstance(dim, int):
        return None
    acts = [v for v in items if isinstance(v, Val) and v.tensor and v.param is None]
    params = [v for v in items if isinstance(v, Val) and v.param is not None]
    if not acts or not all(v.last for v in acts) or len(acts) + len(params) != len(items):
        return None
    x = acts[0]
    if dim % x.rank == x.rank - 1 or any(not A.compatible(x.segs, v.segs) or v.rank != x.rank for v in acts):
        return None
    for v in acts[1:]:
        x = A.joined("add", x, v)
    for p in params:
        A.param_member(node, "cat", replace(x, last=True), p)
    return replace(x, last=True, rank=acts[0].rank)


def visit(A: Analyzer, node, args, kwargs, module=None):
    """Layout ops the table's rules do not cover (the module docstring's list); None
    where none applies (and for modules)."""
    if module is not None:
        return None
    name = node.target if node.op == "call_method" else getattr(node.target, "__name__", "")
    x = args[0] if args else None
    if not isinstance(x, Val) or not x.tensor:
        x = None
    if x is not None and _plain(x):
        out = _plain_layout(A, node, name, x, args, kwargs)
        if out is not _NOT_MINE:
            return out
    if name in _BINARY + _DIV and len(args) == 2 and not kwargs and \
            any(isinstance(v, Val) and v.stat is not None for v in args):
        return _with_statistic(A, node, name, *args)
    if name == "addcmul" and node.op == "call_function" and len(args) == 3 and not kwargs.get("value", 1) != 1:
        return _addcmul(A, node, args)
    if x is not None and x.param is not None and name in _VIEWS:
        return _param_view(A, node, name, x)
    if name == "cat" and node.op == "call_function":
        return _cat_tokens(A, node, args, kwargs)
    if name in _BINARY and len(args) == 2 and not kwargs:
        return _layout_binary(A, node, "add" if name.startswith(("add", "sub")) else "mul", *args)
    return None


_NOT_MINE = object()   # (_plain_layout: the op is none of those it handles)


def _plain_layout(A: Analyzer, node, name: str, x: Val, args, kwargs):
    """Ops on a plain channel layout: permute, transpose, a spatial flatten, tokens picked,
    reductions; ``_NOT_MINE`` for other ops."""
    if name == "permute":
        dims = args[1] if len(args) == 2 and isinstance(args[1], (tuple, list)) else args[1:]
        dims = [d % x.rank for d in dims if isinstance(d, int)]
        if sorted(dims) != list(range(x.rank)):
            return None
        out = _as_layout(x, dims.index(_channel_dim(x)), x.rank)
        return out if out is not None else A.unknown(node, "permute of the channels elsewhere", x)
    if name in ("transpose", "swapaxes") and len(args) == 3 and all(isinstance(d, int) for d in args[1:]):
        a, b = (d % x.rank for d in args[1:])
        ch = _channel_dim(x)
        out = _as_layout(x, b if ch == a else a if ch == b else ch, x.rank)
        return out if out is not None else A.unknown(node, "transpose of the channels elsewhere", x)
    if name == "flatten" and not x.last and x.rank >= 3:
        start = args[1] if len(args) > 1 else kwargs.get("start_dim", 0)
        end = args[2] if len(args) > 2 else kwargs.get("end_dim", -1)
        if isinstance(start, int) and isinstance(end, int) and start % x.rank >= 2:
            return replace(x, rank=x.rank - (end % x.rank - start % x.rank))   # spatial dims only
        return None
    if name == "getitem" and len(args) == 2 and is_broadcast_index(args[1]):   # t[:, None]
        return reindex(A, node, x, index_dims(args[1], x.rank), "indexing with None")
    if name in ("view", "reshape", "_unsafe_view") and x.last:
        return _last_view(A, node, x)
    if name == "getitem" and x.last and len(args) == 2 and isinstance(args[1], tuple) \
            and len(args[1]) < x.rank and args[1][:1] == (slice(None),) \
            and all(isinstance(i, (int, slice)) for i in args[1]):
        # tokens picked (x[:, 0], x[:, 1:]): the channels, last, untouched
        shape = A.shapes.get(node.name)
        return _as_layout(x, len(shape) - 1, len(shape)) if isinstance(shape, tuple) else None
    if name in _REDUCE and node.op == "call_method" and (x.last or name == "norm" or x.rank is not None):
        return _reduce(A, node, name, x, args, kwargs)
    return _NOT_MINE


def _last_view(A: Analyzer, node, x: Val):
    """A reshape of a channels-last or token layout that keeps the batch and the channels
    and regroups the dims between ([B, H*W, C] <-> [B, H, W, C]): the channels stay
    last. In an fx graph the channel count must be -1 or read from these channels at run
    time (``reads_own_size``); anything else leaves them alone."""
    before, after = A.shapes.get(node.args[0].name), A.shapes.get(node.name)
    if not isinstance(before, tuple) or not isinstance(after, tuple) or len(before) < 3 or \
            len(after) < 3 or not all(isinstance(v, int) for v in before + after) or \
            before[0] != after[0] or not before[-1] == after[-1] == A.size(x) or \
            math.prod(before[1:-1]) != math.prod(after[1:-1]) or x.factor != 1:
        return A.unknown(node, f"view/reshape {list(before or ())} -> {list(after or ())} of a last-dimension "
                               "layout", x)
    entries = shape_entries(node)
    if A.tracer == "fx" and (len(entries) != len(after) or not reads_own_size(A, node, entries[-1][1], x)):
        return A.unknown(node, f"a view of a last-dimension layout that spells its channel count "
                               f"{CONSTANT_COUNT}", x)
    return replace(x, rank=len(after), last=True)


def _reduce(A: Analyzer, node, name: str, x: Val, args, kwargs):
    """A reduction: over the channels, kept as a dim of 1 (GRN's mean), a statistic of
    all of them (left alone unless approximate); over tokens or pixels, per channel (a
    norm of zeros is zero); None otherwise."""
    dims = (args[2] if len(args) > 2 else kwargs.get("dim")) if name == "norm" else \
        (args[1] if len(args) > 1 else kwargs.get("dim"))
    dims = [dims] if isinstance(dims, int) else list(dims) if isinstance(dims, (tuple, list)) else None
    dims = None if dims is None or not all(isinstance(d, int) for d in dims) else [d % x.rank for d in dims]
    shape = A.shapes.get(node.name)
    ch = _channel_dim(x)
    if dims == [ch] and isinstance(shape, tuple) and len(shape) == x.rank:
        A.freeze(x, f"{APPROXIMATE} a {name} over them at node {node.name}")
        return Val((), 1, x.rank, stat=f"a {name} over them at node {node.name}")
    if (x.last or name == "norm") and dims and all(d not in (0, ch) for d in dims) and \
            isinstance(shape, tuple) and A.size(x) in shape:
        return _as_layout(x, len(shape) - 1 if x.last else 1, len(shape))
    return None


def _addcmul(A: Analyzer, node, args):
    """base + t1 * t2 (ConvNeXt-V2's GRN: bias + weight * (x * x_n)), with a parameter base."""
    base, t1, t2 = args
    if all(isinstance(v, Val) and v.tensor for v in args) and base.param is not None:
        y = _layout_binary(A, node, "mul", t1, t2)
        return A.param_member(node, "add", y, base) if y is not None else None
    return None


def _param_view(A: Analyzer, node, name: str, x: Val):
    """A view of a tensor attribute: a per-channel vector keeps its dim (a constant channel
    count in the view, PoolFormer's ``scale.view(self.shape)``, is rewritten in the pruned
    model's graph, plan/rewrite.py); an expand keeps its dims; anything else is opaque."""
    shape, before = A.shapes.get(node.name), A.shapes.get(node.args[0].name)
    if name == "expand" and isinstance(shape, tuple) and isinstance(before, tuple) and len(shape) == len(before):
        return x   # broadcast dims only: the tensor's dims stay where they are
    big = [d for d, n in enumerate(shape or ()) if n != 1]
    was = [d for d, n in enumerate(before or ()) if n != 1]
    if len(big) == 1 and len(was) == 1 and name != "expand":   # a per-channel vector, viewed
        entries = shape_entries(node)
        fixed = [(path, v) for path, v in entries if isinstance(v, int) and v == shape[big[0]] > 1]
        if len(entries) != len(shape) or len(fixed) > 1:
            return A.opaque(node, f"the module attribute {x.param.name} is viewed in a way not understood")
        # (export graphs hold every size as a constant: the plan's check runs the code)
        view = ParamView(node.name, tuple(fixed[0][0]), fixed[0][1]) if fixed and A.tracer == "fx" else None
        return replace(x, rank=len(shape), param=ParamRef(x.param.name, tuple(
            x.param.dims[was[0]] if d == big[0] else None for d in range(len(shape))), view))
    return A.opaque(node, f"the module attribute {x.param.name} is used as a tensor")


def _layout_binary(A: Analyzer, node, kind: str, a, b):
    """A product or sum with a parameter (a member), or of two channels-last / token
    layouts (joined); None for the other rules."""
    ta = isinstance(a, Val) and a.tensor
    tb = isinstance(b, Val) and b.tensor
    if ta and tb and (a.param is None) != (b.param is None):
        act, par = (a, b) if b.param is not None else (b, a)
        return A.param_member(node, kind, act, par)
    if ta and tb and a.last and b.last:
        return A.join_last(node, kind, a, b)
    return None


def _with_statistic(A: Analyzer, node, name: str, a, b):
    """An op with a statistic over all of some channels (``x_g / (x_g.mean(1) + eps)``),
    whose channels are left alone unless approximate (removing one changes it): broadcast
    over the channels it meets, a number per sample; zero stays zero in a product or in a
    numerator."""
    stat = next(v for v in (a, b) if isinstance(v, Val) and v.stat is not None)
    other = b if stat is a else a
    if not (isinstance(other, Val) and other.tensor):   # with a number: still a statistic
        return stat
    if other.stat is not None:
        return stat
    if other.param is not None or (name in _DIV and other is b):
        return A.unknown(node, f"{name} with a statistic over the channels", (a, b))
    if name in _BINARY and name.startswith(("add", "sub")):
        return A.unary(other, False, f"{node.name} (adds {stat.stat})")
    return other
