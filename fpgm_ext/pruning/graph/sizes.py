"""Channel counts read at run time (fx graphs).

Model code reads sizes off its tensors (``B, C, H, W = x.shape``, ``x.size(1)``) and uses
them: in reshapes, in scales (``C ** -0.5``), in asserts, in new tensors. Once ``x`` loses
channels, every such use sees the pruned count. The analysis understands some of them:
a reshape whose channel count is its own input's (or one joined with it), and the heads'
merge width, which the plan writes as a constant. Those uses are approved as they are
visited (``A.sizes.ok``: (size node, user node) pairs); after the walk, a channel count
that reaches any other use keeps the channels it was read from whole, by name (timm's
LambdaLayer: ``out.reshape(B, C, H, W)`` with ``C`` its input's channels, not its
output's). Export graphs hold no such reads: their sizes are constants.

A size value is what a node computes from shapes: a tuple (``x.shape``, a slice of it)
with the (tensor node, dim) pairs each position reads, or a number with the pairs it
reads (an item of a shape, arithmetic on sizes).
"""
from __future__ import annotations

import math
import operator
from typing import Dict, FrozenSet, List, Optional, Tuple, Union

import torch

from .model import Val

# Reasons that only the model's eager code shows (an export graph holds constants): a group
# torch.fx leaves alone for one of them stays alone in torch.export's analysis (tracer.py)
READ_AT_RUN_TIME = "its channel count is read at run time"
CONSTANT_COUNT = "as a constant"
READ_FROM_OTHER = "a reshape reads its channel count from other channels"
EAGER_REASONS = (READ_AT_RUN_TIME, CONSTANT_COUNT, READ_FROM_OTHER)

Reads = FrozenSet[Tuple[str, int]]
Size = Union[Tuple[Reads, ...], Reads]     # a tuple of sizes, or one number

_MATH = {operator.add, operator.sub, operator.mul, operator.floordiv, operator.truediv,
         operator.mod, operator.pow, operator.neg, int, float, math.sqrt, math.ceil, math.floor}
_SHAPE_METHODS = ("size", "numel", "nelement", "dim", "ndimension")


def channel_dims(val) -> Tuple[int, ...]:
    """The dims of a value whose size changes when its channels are pruned."""
    if not isinstance(val, Val) or not val.tensor or not val.segs or val.rank is None:
        return ()
    if val.heads is not None:
        return tuple(d for d, r in enumerate(val.heads.roles) if r == "h")
    if val.radix is not None:
        return tuple(d for d, r in enumerate(val.radix.roles) if r == "c")
    if val.last:
        return (val.rank - 1,)
    return (1,) if val.rank >= 2 else ()


def _flat(size: Size) -> Reads:
    if isinstance(size, tuple):
        return frozenset().union(*size) if size else frozenset()
    return size


class SizeReads:
    """The size values of one fx graph, by node (memoised)."""

    def __init__(self, vals: Dict[str, object]):
        self.vals = vals
        self.memo: Dict[str, Optional[Size]] = {}

    def _rank(self, node) -> Optional[int]:
        val = self.vals.get(node.name)
        return val.rank if isinstance(val, Val) and val.tensor else None

    def of(self, node) -> Optional[Size]:
        """The size value ``node`` computes, or None where it is not one."""
        if not isinstance(node, torch.fx.Node):
            return None
        if node.name not in self.memo:
            self.memo[node.name] = None     # a cycle cannot happen in fx; guard anyway
            self.memo[node.name] = self._of(node)
        return self.memo[node.name]

    def _of(self, node) -> Optional[Size]:
        args = node.args
        if node.op == "call_function" and node.target is getattr and len(args) == 2 and args[1] == "shape":
            return self._shape(args[0])
        if node.op == "call_method" and node.target in _SHAPE_METHODS and args:
            rank = self._rank(args[0]) if isinstance(args[0], torch.fx.Node) else None
            if rank is None:
                return None
            t = args[0].name
            if node.target in ("dim", "ndimension"):
                return frozenset()
            if node.target in ("numel", "nelement"):
                return frozenset((t, d) for d in range(rank))
            dim = args[1] if len(args) > 1 else node.kwargs.get("dim")
            if dim is None:
                return self._shape(args[0])
            return frozenset({(t, dim % rank)}) if isinstance(dim, int) and rank else frozenset((t, d) for d in range(rank))
        if node.op == "call_function" and node.target is operator.getitem and len(args) == 2:
            whole = self.of(args[0])
            if not isinstance(whole, tuple):
                return None
            idx = args[1]
            if isinstance(idx, int) and -len(whole) <= idx < len(whole):
                return whole[idx]
            if isinstance(idx, slice) and all(isinstance(i, (int, type(None))) for i in (idx.start, idx.stop, idx.step)):
                return whole[idx]
            return _flat(whole)
        if node.op == "call_function" and node.target in _MATH:
            parts = [self.of(a) if isinstance(a, torch.fx.Node) else None for a in args]
            nodes = [a for a in args if isinstance(a, torch.fx.Node)]
            if not nodes or any(p is None for a, p in zip(args, parts) if isinstance(a, torch.fx.Node)):
                return None     # a tensor (or an unknown value) among its operands: not a size
            if node.target is operator.add and len(args) == 2 and all(
                    isinstance(p, tuple) or isinstance(a, (tuple, list)) for a, p in zip(args, parts)):
                # shape concatenation: x.shape[:2] + (-1,)
                return sum((p if isinstance(p, tuple) else (frozenset(),) * len(a) for a, p in zip(args, parts)), ())
            return frozenset().union(*(_flat(p) for p in parts if p is not None))
        return None

    def _shape(self, tensor) -> Optional[Size]:
        rank = self._rank(tensor) if isinstance(tensor, torch.fx.Node) else None
        if rank is None:
            return None
        return tuple(frozenset({(tensor.name, d)}) for d in range(rank))

    def reads(self, node) -> Reads:
        """The (tensor node, dim) pairs the size value ``node`` reads (none if not one)."""
        size = self.of(node)
        return frozenset() if size is None else _flat(size)

    def channels_read(self, node) -> List[str]:
        """The tensor nodes whose channel count the size value ``node`` reads."""
        return sorted({t for t, d in self.reads(node) if d in channel_dims(self.vals.get(t))})


def check(A, graph) -> None:
    """After an fx walk: keep whole the channels whose count reaches a use the analysis
    did not approve (module docstring)."""
    sizes = SizeReads(A.vals)
    for user in graph.nodes:
        if sizes.of(user) is not None:
            continue            # arithmetic on sizes: its own uses are checked
        for value in user.all_input_nodes:
            if (value.name, user.name) in A.sizes.ok:
                continue
            for t in sizes.channels_read(value):
                A.freeze(A.vals[t], f"{READ_AT_RUN_TIME} (node {value.name}) and used "
                                    f"where the pruned count would change the result (node {user.name})")


def reads_own_size(A, node, value, x) -> bool:
    """Whether the reshape ``node``'s size argument ``value`` is -1 or is read at run time
    from the channels of the reshaped tensor (whose layout is ``x``), or of one tensor
    whose channels the analysis must then find joined with ``x``'s, space for space
    (``A.sizes.links``, checked once the walk is done): so that the pruned model computes
    the pruned size. A constant, or a size of channels pruned differently, would not. A
    read it accepts is approved for this reshape (sizes.py)."""
    if isinstance(value, int):
        return value == -1
    if not isinstance(value, torch.fx.Node):
        return False
    read = A.sizes.reads.channels_read(value)
    if len(read) != 1 or {t for t, _ in A.sizes.reads.reads(value)} != set(read):
        return False
    if read[0] != node.args[0].name:
        other = A.vals.get(read[0])
        if not isinstance(other, Val) or not A.compatible(other.segs, x.segs):
            return False
        A.sizes.links.append((tuple(x.segs), tuple(other.segs), value.name))
    A.sizes.ok.add((value.name, node.name))
    return True
