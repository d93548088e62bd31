"""What the analysis reads off an fx node by its spelling alone: its op's name, whether
it is a reshape or a channel split (counted in order, so that the plan finds the same node
again in another trace of the model), and the entries of a reshape's shape argument."""
from __future__ import annotations

import operator
from typing import Any, List, Tuple

import torch


def op_name(node) -> str:
    """The name of a node's op: a Tensor method's, a function's or a module's target."""
    return node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")


def reshape_like(node) -> bool:
    """Whether an fx node is a reshape (``reshape``, ``view``, ``torch.reshape``), by its
    spelling alone: counted in order to find one again in another trace (plan/rewrite.py)."""
    if node.op == "call_method":
        return node.target in ("reshape", "view")
    return node.op == "call_function" and node.target is torch.reshape


def shape_entries(node) -> List[Tuple[Tuple[int, ...], Any]]:
    """The shape arguments of a reshape node: (path into node.args, value) per entry."""
    args = node.args
    if len(args) == 2 and isinstance(args[1], (tuple, list)):
        return [((1, j), v) for j, v in enumerate(args[1])]
    return [((i,), v) for i, v in enumerate(args[1:], start=1)]


def split_like(node) -> bool:
    """Whether an fx node is a call that may split channels (split, chunk, narrow, or an
    indexing with a slice at dim 1), by its spelling alone: the same nodes in a trace of
    the model in train and in eval mode, counted in order to find a split again."""
    if node.op == "call_method":
        return node.target in ("split", "split_with_sizes", "chunk", "narrow")
    if node.op != "call_function":
        return False
    if node.target in (torch.split, torch.chunk, torch.narrow):
        return True
    idx = node.args[1] if node.target is operator.getitem and len(node.args) > 1 else None
    return isinstance(idx, tuple) and len(idx) >= 2 and isinstance(idx[1], slice)
