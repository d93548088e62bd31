"""The visitor of a torch.export graph: each ATen op looked up in the table by its name
(rules.py) and its rule applied; the layers' ops (convolution, linear, batch and group
norm, prelu) find their module from the parameter placeholder they are given. The token
and channels-last layouts and the tensor members of layouts.py are asked first
(``layouts.visit_export``); a parameter placeholder whose one use is a product or sum is
a tensor member (``layouts.export_param``)."""
from __future__ import annotations

from typing import TYPE_CHECKING

import operator

import torch

from ..rule import Rule
from . import layouts as _layouts
from .model import NOT_TENSOR, Tup, Val
from .rules import Call, _arg, conv_groups, entry_of, group_norm_args
from ..layers import LayerCall, handler_computing
from .visit import _last_axis, _map_args, apply


if TYPE_CHECKING:   # (annotations only: the analyzer imports no visitor)
    from .analyzer import Analyzer


def _module_of(A: Analyzer, node_arg, suffix_ok=("weight", "running_mean")):
    """The module owning a parameter placeholder of an exported graph."""
    if not isinstance(node_arg, torch.fx.Node):
        return None, None
    fqn = A.param_names.get(node_arg.name)
    if not fqn:
        return None, None
    name, _, attr = fqn.rpartition(".")
    m = A.modules.get(name)
    return (name, m) if m is not None and attr in suffix_ok else (None, None)


def _conv(A: Analyzer, node, c: Call):
    name, m = _module_of(A, node.args[1])
    groups = conv_groups(node.args, node.kwargs, c.name)
    transposed = c.name == "convolution" and _arg(node.args, node.kwargs, 6, "transposed", False)
    layer = handler_computing(m, Rule.CONV, LayerCall(groups=groups))
    if layer is None or transposed:
        return A.unknown(node, c.label, (c.args, c.kwargs))
    return layer.analyse(A, node, name, m, c.x)


def _weighted(rule: Rule):
    """The call of a layer whose weight is its op's second argument (linear, prelu)."""
    def call(A: Analyzer, node, c: Call):
        name, m = _module_of(A, node.args[1])
        layer = handler_computing(m, rule, LayerCall())
        if layer is None:
            return A.unknown(node, c.label, (c.args, c.kwargs))
        return layer.analyse(A, node, name, m, c.x)
    return call


def _batch_norm(A: Analyzer, node, c: Call):
    name, m = _module_of(A, node.args[1])
    if m is None:
        name, m = _module_of(A, node.args[3])
    layer = handler_computing(m, Rule.BN, LayerCall())
    if layer is None:
        return A.unknown(node, c.label, (c.args, c.kwargs))
    out = layer.analyse(A, node, name, m, c.x)
    return out if c.name == "batch_norm" else Tup((out, NOT_TENSOR, NOT_TENSOR, NOT_TENSOR, NOT_TENSOR))


def _group_norm(A: Analyzer, node, c: Call):
    native = c.name == "native_group_norm"     # -> (out, mean, rstd)
    groups, weight, _ = group_norm_args(node.args, node.kwargs, native)
    name, m = _module_of(A, weight, ("weight",))
    x = c.x
    layer = handler_computing(m, Rule.GN, LayerCall(groups=groups))
    if layer is None or not (isinstance(x, Val) and x.tensor):
        return A.unknown(node, c.label, (c.args, c.kwargs))
    out = layer.analyse(A, node, name, m, x)
    return Tup((out, NOT_TENSOR, NOT_TENSOR)) if native else out


# rules that keep a channels-last or token layout as they keep channels at dim 1 (fx.py's)
_LAYOUT_RULES = ("unsqueeze", "unflatten")

LAYER_CALLS = {Rule.CONV: _conv, Rule.LINEAR: _weighted(Rule.LINEAR), Rule.BN: _batch_norm, Rule.GN: _group_norm,
               Rule.PRELU: _weighted(Rule.PRELU)}
# Rules applied whatever the first argument is: the layers check their input themselves,
# cat's is a list; every other op's first argument must be a tensor.
_ANY_FIRST_ARG = {"getitem", "size", "scalar", "cat", "cast", "new"} | set(LAYER_CALLS)


def _visit_export(A: Analyzer, node, user_inputs):
    args = _map_args(node.args, A.vals)
    kwargs = _map_args(node.kwargs, A.vals)
    if node.op == "placeholder":
        if node.name in A.param_names:
            member = _layouts.export_param(A, node)   # (a layer scale: a tensor member)
            if member is not None:
                return member
            return A.opaque(node, f"the parameter or buffer {A.param_names[node.name]} is used as a tensor")
        return A.opaque(node, "the model's input channels")
    if node.op == "output":
        A.freeze(A.outputs.kept_flat(args[0], A.out_spec), "it reaches the model's output")
        return None
    if node.op != "call_function":
        return A.unknown(node, node.op, (args, kwargs))
    target = node.target
    opname = getattr(target, "_opname", None) or getattr(target, "__name__", str(target))
    # tuples are unpacked by operator.getitem itself, the fx spelling
    entry = entry_of("function", target) if target is operator.getitem else entry_of("aten", opname)
    rule = entry.rule if entry is not None else None
    out = _layouts.visit_export(A, node, opname, args, kwargs)   # (token layouts, tensor members)
    if out is not None:
        return out
    x = args[0] if args else None
    c = Call("aten", target, args, kwargs, x, opname, str(target), node.name)
    if rule not in ("linear", "size", "cast", "new"):   # a Linear knows the layout; the others do not use it
        out = _last_axis(A, node, args, kwargs, entry is not None and entry.elementwise, None,
                         (lambda: apply(A, node, rule, c)) if rule in _LAYOUT_RULES and isinstance(x, Val) else None)
        if out is not None:
            return out
    if rule in LAYER_CALLS:
        return LAYER_CALLS[rule](A, node, c)
    if rule in _ANY_FIRST_ARG:
        return apply(A, node, rule, c)
    if not (isinstance(x, Val) and x.tensor):
        if not A.segs_of((args, kwargs)):
            return NOT_TENSOR
        return A.unknown(node, c.label, (args, kwargs))
    if rule is None:
        return A.unknown(node, c.label, (args, kwargs))
    return apply(A, node, rule, c)
