"""What the fx and export visitors share: a node's arguments mapped to what the analysis
knows of them, the rule for an input laid out along its last dimension, and the rules of
the tensor ops, keyed by the table's rule names (rules.py). Each rule reads its arguments
through the table's helper for that rule, the same for both tracers."""
from __future__ import annotations

from typing import TYPE_CHECKING

from typing import Callable, Dict

import torch

from ..rule import Rule
from .model import NOT_TENSOR, Tup, Val
from .broadcast import reindex, unflatten_dims, unsqueeze_dims
from .rules import (Call, cat_args, channel_ranges, clamp_bounds, flatten_dims, hardtanh_bounds,
                    other_operand, pad_args, reduce_dims, slice_dim, unflatten_args, unsqueeze_dim,
                    view_shape)


if TYPE_CHECKING:   # (annotations only: the analyzer imports no visitor)
    from .analyzer import Analyzer


def _map_args(a, vals):
    if isinstance(a, torch.fx.Node):
        return vals.get(a.name, NOT_TENSOR)
    if isinstance(a, (list, tuple)):
        return type(a)(_map_args(v, vals) for v in a)
    if isinstance(a, dict):
        return {k: _map_args(v, vals) for k, v in a.items()}
    return a


# A value laid out along its last dimension (Val.last) goes only through ops that act on
# each element alone (the table's ``elementwise``), into a Linear; anything else (pooling,
# reshapes, reductions, additions, norms) leaves its channels alone, by name.
def _last_axis(A: Analyzer, node, args, kwargs, elementwise: bool, linear, layout_rule=None):
    """The rule for an op some of whose inputs are laid out along their last dimension:
    None when no input is; the input itself through an elementwise op (its only tensor);
    ``linear()`` for a Linear (which knows the layout); ``layout_rule()`` for an op on
    its only tensor whose rule keeps the layout (a GLU's chunk of the hidden dimension,
    a sigmoid gate); else the inputs are left alone."""
    vals = [v for v in list(args) + list(kwargs.values()) if isinstance(v, (Val, Tup))]
    if not any(isinstance(v, Val) and v.last for v in vals):
        return None
    if linear is not None:
        return linear()
    if elementwise and len(vals) == 1:
        return vals[0]
    if layout_rule is not None and len(vals) == 1:
        return layout_rule()
    what = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))
    return A.unknown(node, f"{what} on a last-dimension layout", (args, kwargs))


def _pass(A: Analyzer, node, c: Call):
    if c.kind == "module" and getattr(c.target, "return_indices", False):   # max pools
        return A.unknown(node, f"{type(c.target).__name__}(return_indices=True)", c.x)
    return c.x


def _hardtanh(A: Analyzer, node, c: Call):
    lo, hi = hardtanh_bounds(c)
    return A.hardtanh(c.x, lo, hi, f"{c.who} ({'Hardtanh' if c.kind == 'module' else 'hardtanh'})")


def _slice(A: Analyzer, node, c: Call):
    dim, x = slice_dim(c), c.x
    if x.rank is not None and x.factor == 1 and dim % x.rank >= 2:
        return x
    return A.unknown(node, c.label, x)


def _split(A: Analyzer, node, c: Call):
    x = c.x
    found = channel_ranges(c, A.size(x)) if isinstance(x, Val) and x.tensor else None
    rank = x.rank if isinstance(x, Val) else None
    if found is None or rank is None or found[0] % rank != (rank - 1 if x.last else 1):
        return A.unknown(node, c.label, (c.args, c.kwargs))
    pieces = A.channel_pieces(node, x, found[1], "narrow" if c.name == "narrow" else "split",
                              equal=c.name == "chunk")
    if pieces is None:
        return A.unknown(node, c.label, (c.args, c.kwargs))
    return pieces[0] if c.name == "narrow" else Tup(tuple(pieces))


def _unsqueeze(A: Analyzer, node, c: Call):
    return reindex(A, node, c.x, unsqueeze_dims(c.x.rank, unsqueeze_dim(c)), c.label)


def _unflatten(A: Analyzer, node, c: Call):
    return reindex(A, node, c.x, unflatten_dims(c.x.rank, *unflatten_args(c)), c.label)


# rule -> (analyzer, node, call) -> the output's Val
TENSOR_RULES: Dict[Rule, Callable] = {
    Rule.PASS: _pass,
    Rule.NONZERO: lambda A, node, c: A.unary(c.x, False, f"{c.who} ({c.name})"),
    Rule.HARDTANH: _hardtanh,
    Rule.CLAMP: lambda A, node, c: A.clamp(c.x, *clamp_bounds(c), f"{node.name} (clamp)"),
    Rule.PAD: lambda A, node, c: A.pad(node, c.x, *pad_args(c)),
    Rule.ADD: lambda A, node, c: A.binary(node, "add", c.x, other_operand(c)),
    Rule.MUL: lambda A, node, c: A.binary(node, "mul", c.x, other_operand(c)),
    Rule.DIV: lambda A, node, c: A.binary(node, "div", c.x, other_operand(c)),
    Rule.CAT: lambda A, node, c: A.cat(node, *cat_args(c)),
    Rule.FLATTEN: lambda A, node, c: A.flatten(node, c.x, *flatten_dims(c)),
    Rule.VIEW: lambda A, node, c: A.view(node, c.x, view_shape(c)),
    Rule.UNSQUEEZE: _unsqueeze,
    Rule.UNFLATTEN: _unflatten,
    Rule.REDUCE: lambda A, node, c: A.reduce(node, c.name, c.x, *reduce_dims(c)),
    Rule.SLICE: _slice,
    Rule.SPLIT: _split,
    Rule.GETITEM: lambda A, node, c: A.getitem(node, c.x, c.args[1]),
    Rule.POOL_INDICES: lambda A, node, c: Tup((c.x, NOT_TENSOR)),
    Rule.SIZE: lambda A, node, c: NOT_TENSOR,
    Rule.CAST: lambda A, node, c: c.x if isinstance(c.x, (Val, Tup)) else NOT_TENSOR,
    Rule.NEW: lambda A, node, c: NOT_TENSOR,
    Rule.SCALAR: lambda A, node, c: NOT_TENSOR,
}


def apply(A: Analyzer, node, rule: str, c: Call):
    """The output of ``node``, a call of a tensor op that follows ``rule``."""
    return TENSOR_RULES[rule](A, node, c)
