"""The channel rules of tensor ops: each maps the layouts of an op's inputs to its
output's (unary ops, flatten and views, reductions, concatenation, sums and products,
indexing, channel splits, padding, clamps), joining or freezing spaces on the way."""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, List, Optional

import torch

from .broadcast import index_dims, is_broadcast_index, reindex
from .model import NOT_TENSOR, ChannelOp, EqualCounts, Seg, Tup, Val
from .nodes import shape_entries
from .sizes import CONSTANT_COUNT, READ_FROM_OTHER, reads_own_size


def _zero_in(lo, hi) -> bool:
    return (lo is None or lo <= 0) and (hi is None or hi >= 0)


def _keeps_all(s: slice, size: int) -> bool:
    """A constant slice that selects every one of ``size`` channels, in order."""
    if not all(v is None or isinstance(v, int) for v in (s.start, s.stop, s.step)):
        return False
    return range(size)[s] == range(size)


class TensorRules:
    """The tensor ops' rules of an ``Analyzer`` (see spaces.py for the operations used)."""

    def unary(self, x: Val, zero_preserving: bool, via: str) -> Val:
        if zero_preserving:
            return x
        return replace(x, segs=tuple(s if not s.zero else Seg(s.space, False, via) for s in x.segs))

    def flatten(self, node, x: Val, start: int, end: int) -> Val:
        rank = x.rank
        if rank is not None:
            start = start % rank if rank else start
            end = end % rank if rank else end
        if x.factor != 1:
            if rank == 2 and start == 1:
                return x
            return self.unknown(node, "flatten of flattened features", x)
        if start != 1 or (end != -1 and (rank is None or end != rank - 1)):
            return self.unknown(node, f"flatten(start_dim={start}, end_dim={end})", x)
        factor = None
        shape = self.shapes.get(self._arg_node_name(node))
        if isinstance(shape, tuple) and len(shape) >= 2:
            factor = math.prod(shape[2:])
        if rank == 2:
            factor = 1
        return Val(x.segs, factor, 2)

    def _arg_node_name(self, node):
        first = node.args[0] if node.args else None
        return first.name if isinstance(first, torch.fx.Node) else None

    def view(self, node, x: Val, shape_args) -> Val:
        in_shape = self.shapes.get(self._arg_node_name(node))
        out_shape = self.shapes.get(node.name)
        if isinstance(in_shape, tuple) and isinstance(out_shape, tuple) and in_shape and \
                all(isinstance(s, int) for s in in_shape + out_shape):
            if out_shape == in_shape:
                if self._keeps_count(node, x, x.rank - 1 if x.last else 1):
                    return x
                return self.unknown(node, f"a view that spells its channel count {CONSTANT_COUNT}", x)
            if len(in_shape) >= 2 and out_shape == (in_shape[0], math.prod(in_shape[1:])):
                if not self._keeps_count(node, x, 1):
                    return self.unknown(node, f"a flatten that spells its feature count {CONSTANT_COUNT}", x)
                return self.flatten(node, replace(x, rank=len(in_shape)), 1, -1)
            if len(in_shape) >= 2 and len(out_shape) >= 2 and out_shape[:2] == in_shape[:2] and x.factor == 1 \
                    and not x.last and math.prod(in_shape[2:]) == math.prod(out_shape[2:]) \
                    and self._keeps_count(node, x, 1):
                # [B, C] <-> [B, C, 1, 1], [B, C, H, W] <-> [B, C, H * W]: the channels stay, when
                # the graph reads their count at run time (a constant would hold the old one
                # in the pruned model's code, and [B, C, -1] could then silently mis-shape);
                # export graphs hold constants whatever the code said: the plan's check on the
                # model's code (checks.py) refuses a group whose code spells its count
                return replace(x, rank=len(out_shape))
            return self.unknown(node, f"view/reshape {list(in_shape)} -> {list(out_shape)}", x)
        if len(shape_args) == 2 and shape_args[1] == -1 and shape_args[0] != -1:
            return self.flatten(node, x, 1, -1)   # x.view(x.size(0), -1)
        return self.unknown(node, "view/reshape", x)

    def _keeps_count(self, node, x: Val, dim: int) -> bool:
        """A reshape to the shape it had, or a flatten from dim 1: in an fx graph, the entry
        at ``dim`` (where the channels are) must be -1 or read at run time from them (a
        constant would be the unpruned count in the pruned model: a failure, or worse, a
        silent re-layout), or the whole shape read from such a tensor. Export graphs hold
        constants only, whatever the code said (the tracer's own limit)."""
        if self.tracer != "fx":
            return True
        entries = shape_entries(node)
        if len(entries) == 1 and isinstance(entries[0][1], torch.fx.Node):
            return reads_own_size(self, node, entries[0][1], x)     # x.view(y.shape)
        return len(entries) > dim and reads_own_size(self, node, entries[dim][1], x)

    def check_size_links(self) -> None:
        """After the walk: a reshape whose size is read from another tensor's channels keeps
        its own channels and that tensor's whole unless the two are joined, space for space."""
        for mine, theirs, where in self.sizes.links:
            if any(self.find(a.space) != self.find(b.space) for a, b in zip(mine, theirs)):
                why = f"{READ_FROM_OTHER} (node {where})"
                self.freeze(Val(mine), why)
                self.freeze(Val(theirs), why)

    def reduce(self, node, what: str, x: Val, dims, keepdim: bool) -> Val:
        if dims is None:
            return self.unknown(node, f"{what} over all dims", x)
        dims = [dims] if isinstance(dims, int) else list(dims)
        if x.rank is None and any(d < 0 for d in dims):
            return self.unknown(node, f"{what} over dims {dims} of unknown rank", x)
        norm = [d % x.rank if x.rank else d for d in dims]
        if 0 in norm or 1 in norm or x.factor != 1:
            return self.unknown(node, f"{what} over dims {dims}", x)
        rank = None if x.rank is None else (x.rank if keepdim else x.rank - len(set(norm)))
        return Val(x.segs, 1, rank)

    def cat(self, node, tensors, dim) -> Val:
        vals = [t for t in tensors if isinstance(t, Val) and t.tensor]
        rank = next((v.rank for v in vals if v.rank is not None), None)
        d = dim % rank if rank else dim
        last = bool(vals) and vals[0].last   # channels-last or token layouts, along the last dim
        if len(vals) != len(tensors) or d != (rank - 1 if last and rank else 1) or \
                any(v.factor != 1 or v.last != last for v in vals):
            return self.unknown(node, f"cat(dim={dim})", tensors)
        if any(self.size(v) is None for v in vals):
            return self.unknown(node, "cat of tensors with unknown channel counts", tensors)
        return Val(tuple(s for v in vals for s in v.segs), 1, rank, last=last)

    def broadcast_one(self, node, a: Val, b: Val) -> Optional[int]:
        """Which operand (0 or 1) broadcasts along channels (size 1), if shapes say so."""
        shapes = [self.shapes.get(n.name) if isinstance(n, torch.fx.Node) else None for n in node.args[:2]]
        sa, sb = shapes + [None] * (2 - len(shapes))
        if isinstance(sa, tuple) and isinstance(sb, tuple) and len(sa) == len(sb) >= 2:
            if sa[1] == 1 and sb[1] != 1:
                return 0
            if sb[1] == 1 and sa[1] != 1:
                return 1
        return None

    def binary(self, node, kind: str, a, b) -> Val:
        ta = isinstance(a, Val) and a.tensor
        tb = isinstance(b, Val) and b.tensor
        if not ta and not tb:
            return NOT_TENSOR
        if kind == "div":
            if ta and not tb:
                return a
            return self.unknown(node, "division by a tensor", (a, b))
        if ta and tb and (a.param is None) != (b.param is None):   # a tensor attribute (export)
            act, par = (a, b) if b.param is not None else (b, a)
            return self.param_member(node, kind, act, par)
        if not (ta and tb):   # with a python number
            x = a if ta else b
            if kind == "mul":
                return x
            const = b if ta else a
            if isinstance(const, (int, float)) and const == 0:
                return x
            return self.unary(x, False, f"{node.name} (adds a constant)")
        if (a.rank is not None and b.rank is not None and a.rank != b.rank) or a.factor != b.factor:
            return self.unknown(node, f"{kind} of tensors of different layouts", (a, b))
        one = self.broadcast_one(node, a, b)
        if one is not None:
            x = b if one == 0 else a
            if kind == "mul":
                return x
            return self.unary(x, False, f"{node.name} (adds a broadcast tensor)")
        if not self.compatible(a.segs, b.segs):
            return self.cut_alike(node, kind, a, b)
        return self.joined(kind, a, b)

    def getitem(self, node, base, idx) -> Any:
        if isinstance(base, Tup):
            return base.items[idx] if isinstance(idx, int) and -len(base.items) <= idx < len(base.items) \
                else self.unknown(node, "getitem", base)
        if isinstance(base, Val) and not base.tensor:
            return NOT_TENSOR
        if isinstance(base, (list, tuple)):
            return base[idx] if isinstance(idx, int) else self.unknown(node, "getitem", base)
        if isinstance(base, Val) and is_broadcast_index(idx):   # s[:, :, None, None]
            return reindex(self, node, base, index_dims(idx, base.rank), "indexing with None")
        if isinstance(base, Val):
            # x[:, :, ::2, ::2] (spatial slicing): channels untouched; so is a channel slice
            # that keeps every channel (GhostNet's x[:, :self.out_chs] of exactly out_chs)
            size = self.size(base)
            if isinstance(idx, tuple) and len(idx) >= 2 and all(isinstance(i, slice) for i in idx) \
                    and idx[0] == slice(None) and base.factor == 1 and not base.last:
                if idx[1] == slice(None) or (size is not None and _keeps_all(idx[1], size)):
                    return base
                s = idx[1]
                if size is not None and s.step in (None, 1) and \
                        all(v is None or isinstance(v, int) for v in (s.start, s.stop)):
                    a, b, _ = s.indices(size)
                    if base.rank is not None and a <= b:   # (spatial slices too: dims 2..)
                        pieces = self.channel_pieces(node, base, [(a, b)], "slice")
                        if pieces is not None:
                            return pieces[0]
            return self.unknown(node, "tensor indexing", base)
        return NOT_TENSOR

    def channel_pieces(self, node, x: Val, ranges, op: str, equal: bool = False) -> Optional[List[Val]]:
        """The layouts of channel ranges [a, b) of ``x`` (split, chunk, narrow, a slice of
        dim 1; a split of the last dimension of a channels-last or token layout), each made
        of whole spaces: the spaces are cut at the ranges' ends (asked of
        the next pass where they are not yet). None where it cannot be: the caller leaves
        the channels alone. fx: the pruned model gets its new sizes by a rewrite of the fx
        graph (plan/rewrite.py). An export graph cannot give the model back, whose code
        holds the sizes; only a chunk (``equal``) of pieces of one space each can be pruned
        there, each piece losing as many channels as the others, so that the code's
        ``chunk(n)`` splits the pruned tensor at the same places (``Analysis.equal_counts``)."""
        size = self.size(x)
        if (self.tracer != "fx" and not equal) or x.factor != 1 or size is None or \
                any(not 0 <= a <= b <= size for a, b in ranges):
            return None
        if self.tracer != "fx" and len({b - a for a, b in ranges}) != 1:
            return None   # (a chunk whose last piece is shorter)
        if self.request_cuts(x.segs, sorted({q for r in ranges for q in r})):
            return None   # this pass leaves them alone; the next one has the cuts
        ends = [0] + self.bounds(x.segs)
        pieces, spans = [], []
        for a, b in ranges:
            first, last = ends.index(a), ends.index(b)
            spans.append((first, last))
            pieces.append(Val(x.segs[first:last], 1, x.rank, last=x.last))
        if self.tracer == "fx":
            self.channel_ops[node.name] = ChannelOp(op, tuple(x.segs), tuple(spans),
                                                    self.index.splits.get(node.name, -1))
        elif all(last - first == 1 for first, last in spans):
            self.equal_counts.append(EqualCounts(node.name, tuple(p.segs[0].space for p in pieces)))
        else:
            return None
        return pieces

    def pad(self, node, x: Val, pad, mode, value) -> Val:
        spatial = x.rank is not None and len(pad) <= 2 * (x.rank - 2) and x.factor == 1
        if spatial and (mode != "constant" or value in (None, 0, 0.0)):
            return x
        return self.unknown(node, f"pad {list(pad)} mode={mode}", x)

    def hardtanh(self, x: Val, lo, hi, via) -> Val:
        return self.unary(x, _zero_in(lo, hi), via)

    def clamp(self, x: Val, lo, hi, via) -> Val:
        if not (lo is None or isinstance(lo, (int, float))) or not (hi is None or isinstance(hi, (int, float))):
            return self.unary(x, False, via)
        return self.unary(x, _zero_in(lo, hi), via)

    def join_last(self, node, kind: str, a: Val, b: Val) -> Val:
        """``a + b`` or ``a * b`` of two values laid out along their last dimension, of one
        shape (a residual addition of channels-last or token streams): joined as ``binary``
        joins channel layouts."""
        sa, sb = (self.shapes.get(n.name) if isinstance(n, torch.fx.Node) else None for n in node.args[:2])
        same = isinstance(sa, tuple) and isinstance(sb, tuple) and len(sa) == len(sb) and sa[-1] == sb[-1] \
            and all(p == q or p == 1 or q == 1 for p, q in zip(sa, sb))   # broadcast off the channels
        if not same or a.factor != 1 or b.factor != 1:
            return self.unknown(node, f"{kind} of last-dimension layouts of different shapes", (a, b))
        if not self.compatible(a.segs, b.segs):   # (a gate on a concatenation: MambaOut)
            return replace(self.cut_alike(node, kind, a, b), last=True, rank=len(sa))
        return replace(self.joined(kind, a, b), last=True, rank=len(sa))
