"""``PrunedGraph``: the pruned model of a model whose own code holds channel sizes, run
from its fx traces with the plan's edits (plan/edits.py) written into them."""
from __future__ import annotations

import operator
from typing import Dict

import torch
from torch import nn

from ..graph.nodes import reshape_like, split_like
from ..graph.rules import piece_sizes
from ..graph.tracing import _fx_trace
from .edits import ReshapeEdit, SplitEdit, edits_of


class PrunedGraph(nn.Module):
    """A pruned model whose own code holds channel sizes (``x.split(self.width, 1)``),
    which pruning cannot change: it runs the model's traced code with the new sizes. fx
    bakes a forward's train / eval branches into a trace (timm's BatchNormAct passes
    ``training=self.training`` to ``F.batch_norm``; DropPath returns early in eval), so
    there is one trace per mode and ``forward`` runs the one of the current mode. Its
    submodules, parameters and buffers are the pruned model's own, under the same names
    (the same state_dict); the original class's other methods are not carried over."""

    def __init__(self, root: nn.Module, graphs: Dict[bool, torch.fx.GraphModule]):
        super().__init__()
        for name, child in root.named_children():
            self.add_module(name, child)
        for name, p in root.named_parameters(recurse=False):
            self.register_parameter(name, p)
        for name, b in root.named_buffers(recurse=False):
            self.register_buffer(name, b, persistent=name not in root._non_persistent_buffers_set)
        self.__dict__["_graphs"] = graphs   # not submodules: they share this one's
        self.original_class = type(root).__name__
        self.train(root.training)

    def forward(self, *args, **kwargs):
        return self._graphs[self.training](*args, **kwargs)

    def extra_repr(self) -> str:
        return f"pruned {self.original_class}, its channel splits resized"


def rewrite_graph(model: nn.Module, graph: Dict[str, Dict]) -> nn.Module:
    """The pruned model as a ``PrunedGraph``: its fx traces in train and in eval mode with
    the plan's edits. Each edit finds its node again by its place among the trace's
    split-like nodes or reshapes, and checks that the node holds the old sizes."""
    flags = [(m, m.training) for m in model.modules()]
    graphs = {}
    try:
        for mode in (True, False):
            model.train(mode)
            gm = _fx_trace(model)
            _edit_trace(gm, edits_of(graph), type(model).__name__, mode)
            gm.recompile()
            graphs[mode] = gm
    finally:
        for m, flag in flags:
            m.training = flag
    return PrunedGraph(model, graphs)


def _edit_trace(gm: torch.fx.GraphModule, edits, model_name: str, mode: bool) -> None:
    splits = [n for n in gm.graph.nodes if split_like(n)]
    reshapes = [n for n in gm.graph.nodes if reshape_like(n)]
    for name, e in edits:
        if isinstance(e, ReshapeEdit):
            ok = 0 <= e.index < len(reshapes) and _rewrite_reshape(reshapes[e.index], e)
            what = f"reshape of attention heads at node '{name}'"
        else:
            ok = isinstance(e, SplitEdit) and 0 <= e.index < len(splits) and _rewrite_split(splits[e.index], e)
            what = f"channel split at node '{name}' ({getattr(e, 'op', None)} of {getattr(e, 'was_sizes', None)})"
        if not ok:
            raise ValueError(f"fpgm_ext.apply_plan: the plan does not fit this model: its {what} is not "
                             f"in the {'training' if mode else 'eval'}-mode trace of {model_name}")


def _rewrite_reshape(n, e: ReshapeEdit) -> bool:
    """Gives reshape node ``n`` the head count (``heads``), the merged width of the kept
    heads (``merge_heads``) or the channel count (``channels``) of edit ``e`` at its shape
    argument ``e.arg``; False if that argument is not the old value (``None``: a size
    read from a tensor at run time)."""
    path, args = e.arg, list(n.args)
    if path[0] >= len(args):
        return False
    if len(path) == 1:
        old = args[path[0]]
    else:
        seq = args[path[0]]
        if not isinstance(seq, (tuple, list)) or path[1] >= len(seq):
            return False
        old = seq[path[1]]
    if (e.was is None) != isinstance(old, torch.fx.Node) or (e.was is not None and old != e.was):
        return False
    if len(path) == 1:
        args[path[0]] = e.size
    else:
        seq = list(args[path[0]])
        seq[path[1]] = e.size
        args[path[0]] = type(args[path[0]])(seq)
    n.args = tuple(args)
    return True


def _rewrite_split(n, e: SplitEdit) -> bool:
    """Gives fx node ``n`` the sizes of edit ``e``; False if ``n`` is not the split the
    edit was made for (its constants do not give the edit's old sizes)."""
    args, kwargs = list(n.args), dict(n.kwargs)
    arg = lambda i, key, default=None: args[i] if len(args) > i else kwargs.get(key, default)  # noqa: E731
    name = n.target if n.op == "call_method" else getattr(n.target, "__name__", "")
    if e.op == "slice":
        return _rewrite_slice(n, e, args)
    if e.op == "narrow":
        if name != "narrow" or [arg(2, "start"), arg(3, "length")] != [e.was_starts[0], e.was_sizes[0]]:
            return False
        n.args, n.kwargs = (args[0], arg(1, "dim"), e.starts[0], e.sizes[0]), {}
        return True
    if name in ("split", "split_with_sizes"):
        old = piece_sizes(arg(1, "split_size_or_sections", kwargs.get("split_size", kwargs.get("split_sizes"))),
                          e.was_total)
    elif name == "chunk":
        old = piece_sizes(arg(1, "chunks"), e.was_total, chunks=True)
    else:
        return False
    if old != list(e.was_sizes):
        return False
    dim = arg(2, "dim", 0)
    n.target = "split" if n.op == "call_method" else torch.split
    n.args, n.kwargs = (args[0], list(e.sizes), dim), {}
    return True


def _rewrite_slice(n, e: SplitEdit, args) -> bool:
    """A slice of dim 1, ``x[:, a:b]``: the new bounds."""
    if n.op != "call_function" or n.target is not operator.getitem or not isinstance(args[1], tuple):
        return False
    idx = list(args[1])
    s = idx[1]
    if not isinstance(s, slice) or s.indices(e.was_total)[:2] != (e.was_starts[0], e.was_starts[0] + e.was_sizes[0]):
        return False
    idx[1] = slice(e.starts[0], e.starts[0] + e.sizes[0], None)
    n.args = (args[0], tuple(idx))
    return True
