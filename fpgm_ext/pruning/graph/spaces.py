"""The channel spaces of one pass over a graph and their joining: each producer's output
channels (or runs of them, ``Space.offset``) are a space; spaces that must lose the same
channels are joined (union-find), frozen with their reasons, and recorded in the modules'
``Use``s. The rules (layer_rules.py, tensor_rules.py) are built on these operations."""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

from .model import Seg, Space, Tup, Use, Val


class SpaceGraph:
    """The spaces of an ``Analyzer`` (analyzer.py holds the state these methods use:
    ``spaces``, ``parent``, ``uses``, ``cuts``, ``requests``, ...)."""

    def new_space(self, size, producer, kind, reason=None, offset=0) -> int:
        sid = len(self.spaces)
        self.spaces.append(Space(sid, size, producer, kind, [reason] if reason else [], offset))
        self.parent.append(sid)
        return sid

    def produce(self, size, producer, kind, reason=None) -> Tuple[int, ...]:
        """A producer's output spaces: one, or the sub-spaces its ``cuts`` ask for."""
        at = sorted(c for c in self.cuts.get(producer, ()) if size is not None and 0 < c < size)
        bounds = [0] + at + [size]
        if size is None:
            return (self.new_space(size, producer, kind, reason),)
        return tuple(self.new_space(b - a, producer, kind, reason, a) for a, b in zip(bounds, bounds[1:]))

    def out_val(self, use: Use, rank, last=False) -> Val:
        return Val(tuple(Seg(s) for s in use.out_spaces), 1, rank, last=last)

    def request_cuts(self, segs: Sequence[Seg], at: Sequence[int]) -> bool:
        """Asks the next pass for boundaries at channel offsets ``at`` of the layout
        ``segs`` (each inside one seg); True when any is new."""
        new, start = False, 0
        for seg in segs:
            space = self.spaces[seg.space]
            end = start + (space.size or 0)
            for q in at:
                if start < q < end:
                    cut = space.offset + q - start
                    if cut not in self.cuts.get(space.producer, ()):
                        self.requests.setdefault(space.producer, set()).add(cut)
                        new = True
            start = end
        return new

    def bounds(self, segs: Sequence[Seg]) -> List[int]:
        """The channel offsets where the layout's segs end (the last is its size)."""
        out, at = [], 0
        for seg in segs:
            at += self.spaces[seg.space].size or 0
            out.append(at)
        return out

    def find(self, s: int) -> int:
        while self.parent[s] != s:
            self.parent[s] = self.parent[self.parent[s]]
            s = self.parent[s]
        return s

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def freeze(self, val, reason: str) -> None:
        for seg in self.segs_of(val):
            if reason not in self.spaces[seg.space].reasons:
                self.spaces[seg.space].reasons.append(reason)

    def segs_of(self, val):
        if isinstance(val, Val):
            return list(val.segs)
        if isinstance(val, Tup):
            return [s for v in val.items for s in self.segs_of(v)]
        if isinstance(val, (list, tuple)):
            return [s for v in val for s in self.segs_of(v)]
        if isinstance(val, dict):
            return [s for v in val.values() for s in self.segs_of(v)]
        return []

    def size(self, val: Val) -> Optional[int]:
        sizes = [self.spaces[s.space].size for s in val.segs]
        return None if not sizes or any(s is None for s in sizes) else sum(sizes)

    def opaque(self, node, reason: str) -> Val:
        shape = self.shapes.get(node.name)
        size = shape[1] if isinstance(shape, tuple) and len(shape) >= 2 and isinstance(shape[1], int) else None
        rank = len(shape) if isinstance(shape, tuple) and all(isinstance(s, int) for s in shape) else None
        return Val(tuple(Seg(s) for s in self.produce(size, node.name, "opaque", reason)), 1, rank)

    def consume(self, val: Val, who: str) -> None:
        for seg in val.segs:
            if not seg.zero:
                self.freeze(Val((seg,)), f"its pruned channels would reach {who} as non-zero values "
                                         f"(after {seg.via}, which does not map 0 to 0)")

    def compatible(self, a: Sequence[Seg], b: Sequence[Seg]) -> bool:
        return len(a) == len(b) and all(
            self.spaces[x.space].size is not None and self.spaces[x.space].size == self.spaces[y.space].size
            for x, y in zip(a, b))

    def unknown(self, node, what: str, inputs) -> Val:
        tensors = [s for s in self.segs_of(inputs)]
        reason = f"unsupported op '{what}' (node {node.name})"
        if tensors:
            self.unsupported.append(reason)
        self.freeze(inputs, reason)
        return self.opaque(node, f"output of {reason}")

    def record(self, name, module, kind, x: Val, factor=1, out_size=None, grouped=False) -> Use:
        use = self.uses.get(name)
        if use is None:
            out = self.produce(out_size, name, kind) if out_size is not None else ()
            use = Use(name, module, kind, tuple(x.segs), factor, out, grouped)
            self.uses[name] = use
        elif self.compatible(use.in_segs, x.segs) and use.factor == factor:
            for a, b in zip(use.in_segs, x.segs):   # a shared module: the same channels in
                self.union(a.space, b.space)
        else:
            reason = f"{name} is called more than once on inputs made of different channels"
            self.freeze(Val(use.in_segs), reason)
            self.freeze(x, reason)
            self.freeze(self.out_val(use, None), reason)
        return use

    def joined(self, kind: str, a: Val, b: Val) -> Val:
        segs = []
        for x, y in zip(a.segs, b.segs):
            if self.find(x.space) != self.find(y.space) and kind == "add":
                self.residual_edges += [x.space, y.space]
            self.union(x.space, y.space)
            if kind == "add":
                zero = x.zero and y.zero
                via = x.via or y.via
            else:
                zero = x.zero or y.zero
                via = "" if zero else x.via
            segs.append(Seg(x.space, zero, via))
        return Val(tuple(segs), a.factor, a.rank if a.rank is not None else b.rank)

    def cut_alike(self, node, kind: str, a: Val, b: Val) -> Val:
        """Two operands of one channel count made of spaces cut differently (a
        concatenation added to one conv's output): the next pass cuts both at every
        boundary of either; this one leaves them alone."""
        sa, sb = self.size(a), self.size(b)
        if sa is not None and sa == sb:
            both = sorted(set(self.bounds(a.segs)) | set(self.bounds(b.segs)))
            if self.request_cuts(a.segs, both) | self.request_cuts(b.segs, both):
                self.freeze((a, b), f"{kind} of tensors whose channels are cut differently "
                                    f"(node {node.name})")
                # the finer-cut operand goes on, so that the rest of the walk asks for its
                # own cuts in this pass too (a chain of such blocks: one pass, not one each)
                return max((a, b), key=lambda v: len(v.segs))
        reason = f"{kind} of tensors whose channels are made differently (node {node.name})"
        self.unsupported.append(reason)
        self.freeze((a, b), reason)
        return a
