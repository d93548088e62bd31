"""Code that runs in one mode only. fx traces a forward in the model's current mode, so a
branch on ``self.training`` that runs only in the other mode (a statistic over the
channels, a split of constant sizes, a scale by the channel count) is not in the graph the
analysis reads; the pruned model would then fail or compute something else once trained.
The model is traced once more in the other mode (no shapes, no analysis), its nodes matched
to the analysed graph's by their op and target, and every value of the analysed graph that
feeds a node only the other mode has leaves its channels alone, by name."""
from __future__ import annotations

import difflib
import functools
from typing import Dict, List, Tuple

import torch
from torch import nn

from .nodes import op_name


def _signature(node) -> Tuple[str, str]:
    target = node.target if isinstance(node.target, str) else op_name(node) or str(node.target)
    return node.op, target


def other_mode_uses(model: nn.Module, graph: torch.fx.Graph, trace) -> Dict[str, str]:
    """node of ``graph`` -> why its channels stay: it feeds code that runs only in the mode
    ``graph`` was not traced in. ``trace``: the fx tracer (tracing._fx_graph). Empty where
    the other mode's trace fails (nothing more is known) or shows the same code."""
    if not _reads_training(model):
        return {}
    mode = model.training
    flags = [(m, m.training) for m in model.modules()]
    try:
        model.train(not mode)
        other = trace(model)
    except Exception:  # noqa: BLE001 - the other mode is not traceable: nothing more is known
        return {}
    finally:
        for m, flag in flags:
            m.training = flag
    ours: List = list(graph.nodes)
    theirs: List = list(other.nodes)
    matcher = difflib.SequenceMatcher(a=[_signature(n) for n in ours], b=[_signature(n) for n in theirs],
                                      autojunk=False)
    mapped: Dict[str, str] = {}   # the other graph's node -> ours
    for block in matcher.get_matching_blocks():
        for k in range(block.size):
            mapped[theirs[block.b + k].name] = ours[block.a + k].name
    where = "training" if not mode else "eval"
    uses: Dict[str, str] = {}
    for n in theirs:
        if n.name in mapped or n.op == "output" or _keeps_channels(model, n):
            continue
        for name in _entries(n, mapped, model):
            uses.setdefault(name, f"its channels reach code that runs in {where} mode only "
                                  f"({op_name(n) or n.op}, node {n.name} of the {where}-mode trace)")
    return uses


def _reads_training(model: nn.Module) -> bool:
    """Whether the code of a module fx traces through (not one of torch.nn's, which fx
    traces as one call) mentions ``training``: only then can the two modes' traces differ
    (a class whose source cannot be read counts as one that does)."""
    from .tracing import _Tracer

    leaf = _Tracer().is_leaf_module
    return any(not leaf(m, "") and _class_reads_training(type(m)) for m in model.modules())


@functools.lru_cache(maxsize=None)
def _class_reads_training(cls) -> bool:
    """Whether a method of ``cls`` (or of its bases outside torch.nn) names ``training``
    (``self.training``, ``training=...``), read off the compiled code, nested functions
    included."""
    for c in cls.__mro__:
        if c in (nn.Module, object) or c.__module__.startswith("torch.nn"):
            continue
        for value in vars(c).values():
            code = getattr(getattr(value, "__func__", value), "__code__", None)
            if code is not None and _names_training(code):
                return True
    return False


def _names_training(code) -> bool:
    return "training" in code.co_names or "training" in code.co_varnames or any(
        _names_training(c) for c in code.co_consts if hasattr(c, "co_names"))


def _keeps_channels(model: nn.Module, n) -> bool:
    """A node that changes no channel and keeps a zero zero: an op the table passes (an
    activation, a pool, dropout) or a product with a number (``x * 0.5``)."""
    from .rules import entry_of

    if n.op == "call_module":
        entry = entry_of("module", model.get_submodule(n.target))
    elif n.op in ("call_function", "call_method"):
        entry = entry_of("method" if n.op == "call_method" else "function", n.target)
    else:
        return False
    if entry is None:
        return False
    if entry.rule == "pass":
        return len(n.all_input_nodes) == 1
    return entry.rule in ("mul", "div") and len(n.all_input_nodes) == 1 and \
        all(isinstance(a, (int, float)) for a in n.args[1:])


def _entries(n, mapped: Dict[str, str], model: nn.Module):
    """The analysed graph's nodes whose values reach ``n``, through the other mode's nodes
    that keep channels."""
    for arg in n.all_input_nodes:
        if arg.name in mapped:
            yield mapped[arg.name]
        elif _keeps_channels(model, arg):
            yield from _entries(arg, mapped, model)
