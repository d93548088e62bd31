"""The visitor of a torch.fx graph: each node goes first to the fx-only extensions, in
order (attention heads: heads.py; radix groups: radix.py; layouts: layouts.py), then to
the table (rules.py): a leaf module to its layer handler's rule or its op's, a function or
a Tensor method to its op's rule (a layer called functionally on its own module's tensors:
functional.py)."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..layers import handler_for
from . import heads as _heads
from . import layouts as _layouts
from . import radix as _radix
from .functional import functional
from .layouts import param_use
from .model import NOT_TENSOR, ParamRef, Tup, Val
from .rules import Call, LAYERS, entry_of
from .tracing import TRACE_CONSTANT
from .visit import _last_axis, _map_args, apply

if TYPE_CHECKING:   # (annotations only: the analyzer imports no visitor)
    from .analyzer import Analyzer

# The fx-only extensions, in the order they are asked: each gives a node's output where
# its layout is involved, else None.
EXTENSIONS = (_heads.visit, _radix.visit, _layouts.visit)


def _call_module(A: Analyzer, node, c: Call, rule):
    m, x, args, kwargs = c.target, c.x, c.args, c.kwargs
    if not isinstance(x, Val) or not x.tensor:
        return A.unknown(node, type(m).__name__, (args, kwargs))
    if len([a for a in list(args) + list(kwargs.values()) if isinstance(a, (Val, Tup))]) > 1:
        return A.unknown(node, f"{type(m).__name__} with several tensor inputs", (args, kwargs))
    if rule in LAYERS:
        return handler_for(m).analyse(A, node, c.who, m, x)
    if rule is None:
        return A.unknown(node, type(m).__name__, (args, kwargs))
    return apply(A, node, rule, c)


# Function rules applied whatever the first argument is (an operator on a number, cat's
# list, a tuple's item, getattr); every other function's first argument must be a tensor.
_ANY_FIRST_ARG = {"size", "getitem", "add", "mul", "div", "cat"}


# rules that keep a channels-last or token layout as they keep channels at dim 1
_LAYOUT_RULES = ("split", "nonzero", "unsqueeze", "unflatten")


def _call(kind: str, target, args, kwargs, node) -> Call:
    x = args[0] if args else None
    if kind == "method":
        return Call("method", target, args, kwargs, x, target, f"Tensor.{target}", node.name)
    fname = getattr(target, "__name__", str(target))
    return Call("function", target, args, kwargs, x, fname, fname, node.name)


def _visit_fx(A: Analyzer, node, gm):
    if node.name in A.std.weight_nodes:
        return NOT_TENSOR
    args = _map_args(node.args, A.vals)
    kwargs = _map_args(node.kwargs, A.vals)
    if node.op == "placeholder":
        return A.opaque(node, "the model's input channels")
    if node.op == "get_attr":
        return _get_attr(A, node, gm)
    if node.op == "output":
        A.freeze(A.outputs.kept(args[0]), "it reaches the model's output")
        return None
    module = gm.get_submodule(node.target) if node.op == "call_module" else None
    for extension in EXTENSIONS:
        out = extension(A, node, args, kwargs, module)
        if out is not None:
            return out
    if module is not None:
        return _module_node(A, node, module, args, kwargs)
    return _call_node(A, node, args, kwargs)


def _get_attr(A: Analyzer, node, gm):
    """A module attribute read by the graph: a tensor member where its one use is a
    product or sum with activations (``functional.param_use``), else opaque."""
    target = node.target
    if target.startswith(TRACE_CONSTANT):   # computed from module attributes at trace
        return A.opaque(node, f"a tensor the model computes from its attributes (node {node.name}: "
                              f"a constant in the traced graph, e.g. a frozen BatchNorm's scale)")
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    if not isinstance(obj, torch.Tensor):
        return NOT_TENSOR
    if obj.dim() >= 1 and param_use(node) is not None:
        return Val((), 1, obj.dim(), param=ParamRef(target, tuple(range(obj.dim()))))
    return A.opaque(node, f"the module attribute {target} is used as a tensor")


def _module_node(A: Analyzer, node, m, args, kwargs):
    entry = entry_of("module", m)
    rule = entry.rule if entry is not None else None
    x = args[0] if args else next(iter(kwargs.values()), None)
    c = Call("module", m, args, kwargs, x, type(m).__name__, type(m).__name__, node.target)
    out = _last_axis(A, node, args, kwargs, entry is not None and entry.elementwise,
                     (lambda: _call_module(A, node, c, rule)) if rule in ("linear", "ln") else None)
    return out if out is not None else _call_module(A, node, c, rule)


def _call_node(A: Analyzer, node, args, kwargs):
    """A call of a function or of a Tensor method."""
    kind = "method" if node.op == "call_method" else "function"
    target = node.target
    entry = entry_of(kind, target)
    rule = entry.rule if entry is not None else None
    if rule != "size":     # a shape query is no use of the channels
        out = _last_axis(A, node, args, kwargs, entry is not None and entry.elementwise,
                         (lambda: functional(A, node, rule, target, args[0], args, kwargs) or
                          A.unknown(node, f"F.{getattr(target, '__name__', target)}", (args, kwargs)))
                         if kind == "function" and rule in ("linear", "ln") else None,
                         (lambda: apply(A, node, rule, _call(kind, target, args, kwargs, node)))
                         if rule in _LAYOUT_RULES and args and isinstance(args[0], Val) else None)
        if out is not None:
            return out
    c = _call(kind, target, args, kwargs, node)
    if kind == "method":
        return _method(A, node, rule, c)
    return _function(A, node, rule, c)


def _method(A: Analyzer, node, rule, c: Call):
    if rule == "size":
        return NOT_TENSOR
    if not (isinstance(c.x, Val) and c.x.tensor) or rule is None:
        return A.unknown(node, c.label, (c.args, c.kwargs))
    return apply(A, node, rule, c)


def _function(A: Analyzer, node, rule, c: Call):
    args, kwargs, x, fname = c.args, c.kwargs, c.x, c.name
    if rule in _ANY_FIRST_ARG:
        return apply(A, node, rule, c)
    if not (isinstance(x, Val) and x.tensor):
        if not A.segs_of((args, kwargs)):
            return NOT_TENSOR     # arithmetic on sizes
        return A.unknown(node, fname, (args, kwargs))
    if kwargs.get("return_indices"):
        return A.unknown(node, f"{fname}(return_indices=True)", x)
    if rule in LAYERS:
        return functional(A, node, rule, c.target, x, args, kwargs) or A.unknown(node, fname, (args, kwargs))
    if rule is None:
        return A.unknown(node, fname, (args, kwargs))
    return apply(A, node, rule, c)
