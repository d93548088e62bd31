"""The analysis proper: ``_Analyzer`` holds the channel spaces, joins them (union-find),
freezes them with their reasons, and has one method per channel rule (a layer's, which
records the module's ``Use``, or a tensor op's, which maps an input layout to an output
layout). The visitors (fx.py, export.py, visit.py) decide which rule a node follows."""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

import torch
from torch import nn

from .model import APPROXIMATE, NOT_TENSOR, ChannelOp, HeadOp, Seg, Space, Tup, Use, Val
from .sizes import CONSTANT_COUNT, READ_FROM_OTHER, SizeReads


def _zero_in(lo, hi) -> bool:
    return (lo is None or lo <= 0) and (hi is None or hi >= 0)


def _keeps_all(s: slice, size: int) -> bool:
    """A constant slice that selects every one of ``size`` channels, in order."""
    if not all(v is None or isinstance(v, int) for v in (s.start, s.stop, s.step)):
        return False
    return range(size)[s] == range(size)


class _Analyzer:
    """One pass over the graph. ``cuts``: producer -> the offsets at which its output
    channels are cut into sub-spaces (found by earlier passes); a pass that needs more
    boundaries records them in ``requests`` for the next (``analyse`` repeats the pass
    until no new boundary is needed)."""

    def __init__(self, model: nn.Module, shapes: Dict[str, Any], tracer: str, names: Dict[str, str],
                 cuts: Optional[Dict[str, Set[int]]] = None):
        self.model = model
        self.modules = dict(model.named_modules())
        self.shapes = shapes
        self.tracer = tracer
        self.param_names = names          # export: placeholder -> FQN
        self.spaces: List[Space] = []
        self.parent: List[int] = []
        self.ties: List[Tuple[int, int]] = []     # (space, conv groups): unit constraints
        self.residual_edges: List[int] = []       # spaces joined by a residual addition
        self.uses: Dict[str, Use] = {}
        self.unsupported: List[str] = []
        self.vals: Dict[str, Any] = {}
        # fx: conv node -> (module name, module, per-filter tensors) of a weight-standardised
        # conv, and the nodes that compute its weight (not activations: no channels)
        self.standardised: Dict[str, Tuple[str, nn.Module, Tuple[str, ...]]] = {}
        self.weight_nodes: set = set()
        self.cuts: Dict[str, Set[int]] = cuts or {}
        self.requests: Dict[str, Set[int]] = {}
        # fx node -> (op, the input's segs, each piece's [first, last) seg indices): the
        # channel splits whose sizes the pruned model must get (a graph rewrite)
        self.channel_ops: Dict[str, ChannelOp] = {}
        self.split_index: Dict[str, int] = {}   # fx node -> its place among rules.split_like nodes
        self.head_ops: Dict[str, HeadOp] = {}
        # producers whose channels were laid out in radix groups (radix.py): found by one pass,
        # used by the next (a grouped conv comes before the reshape that shows it)
        self.radix_hint: Set[str] = set()
        self.param_dims: Dict[str, int] = {}    # parameter members: qualified name -> channel dim
        self.size_links: List[Tuple[Tuple[Seg, ...], Tuple[Seg, ...], str]] = []   # heads.reads_own_size
        self.size_ok: Set[Tuple[str, str]] = set()   # (size node, its user): approved reads (sizes.py)
        self.size_reads = SizeReads(self.vals)
        self.radix_found: Set[str] = set()
        self.reshape_index: Dict[str, int] = {}  # fx node -> its place among heads.reshape_like nodes

    # ---- spaces
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
        for seg in self._segs(val):
            if reason not in self.spaces[seg.space].reasons:
                self.spaces[seg.space].reasons.append(reason)

    def _segs(self, val):
        if isinstance(val, Val):
            return list(val.segs)
        if isinstance(val, Tup):
            return [s for v in val.items for s in self._segs(v)]
        if isinstance(val, (list, tuple)):
            return [s for v in val for s in self._segs(v)]
        if isinstance(val, dict):
            return [s for v in val.values() for s in self._segs(v)]
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
        tensors = [s for s in self._segs(inputs)]
        reason = f"unsupported op '{what}' (node {node.name})"
        if tensors:
            self.unsupported.append(reason)
        self.freeze(inputs, reason)
        return self.opaque(node, f"output of {reason}")

    # ---- modules
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

    def conv(self, node, name: str, m: nn.Module, x: Val, ch) -> Val:
        """A convolution of ``ch`` (``layers.Channels``) channels: its filters a new space."""
        rank = x.rank if x.rank is not None else m.weight.dim()
        if x.factor != 1:
            return self.unknown(node, f"{type(m).__name__} on flattened features", x)
        self.consume(x, name)
        size = self.size(x)
        if size != ch.inputs:
            self.freeze(x, f"the input channels of {name} could not be matched to their producers")
        if ch.groups == 1:
            use = self.record(name, m, "conv", x, out_size=ch.outputs)
        else:
            use = self.record(name, m, "conv", x, out_size=ch.outputs, grouped=True)
            self.grouped_conv(name, ch, x, use, size)
        return self.out_val(use, rank)

    def grouped_conv(self, name: str, ch, x: Val, use: Use, size) -> None:
        """A grouped (or depthwise) conv ties each input space to the output space over
        the same conv groups: their boundaries must match, group for group (missing ones
        are asked of the next pass), and each pair is pruned in whole conv groups."""
        reason = f"{name} is a grouped conv whose input channels do not split along its groups"
        if size != ch.inputs:
            self.freeze(self.out_val(use, None), reason)
            self.freeze(x, reason)
            return
        per_in, per_out = ch.inputs // ch.groups, ch.outputs // ch.groups
        outs = Val(tuple(Seg(s) for s in use.out_spaces))
        b_in, b_out = self.bounds(x.segs), self.bounds(outs.segs)
        if any(b % per_in for b in b_in) or any(b % per_out for b in b_out):
            self.freeze(outs, reason)
            self.freeze(x, reason)
            return
        want_in = sorted({b // per_out * per_in for b in b_out} | set(b_in))
        want_out = sorted({b // per_in * per_out for b in b_in} | set(b_out))
        if want_in != b_in or want_out != b_out:
            self.request_cuts(x.segs, want_in)
            self.request_cuts(outs.segs, want_out)
            self.freeze(outs, f"{name}'s input and output channels are cut at different groups")
            self.freeze(x, f"{name}'s input and output channels are cut at different groups")
            return
        if ch.groups > 1 and len(x.segs) == ch.groups and len(use.out_spaces) == ch.groups and \
                (per_in > 1 or per_out > 1) and self._local_groups(x, use):
            # Each conv group its own input and output space, radix groups (ResNeSt): a
            # channel's local index goes from every group at once, so the groups keep equal
            # sizes and their number; inputs and outputs prune independently.
            use.local_groups = True
            for seg in x.segs[1:]:
                self.union(x.segs[0].space, seg.space)
            for out in use.out_spaces[1:]:
                self.union(use.out_spaces[0], out)
            return
        for seg, out in zip(x.segs, use.out_spaces):
            self.union(seg.space, out)
            self.ties.append((out, self.spaces[out].size // per_out))

    def _local_groups(self, x: Val, use: Use) -> bool:
        """Whether the conv groups' input spaces are already tied to each other channel for
        channel elsewhere (as the radix groups of split attention are), so that pruning
        each group's channels at the same local indices takes nothing away from them."""
        return use.name in self.radix_hint or \
            any(self.spaces[seg.space].producer in self.radix_hint for seg in x.segs)

    def linear(self, node, name: str, m: nn.Module, x: Val, ch) -> Val:
        """A linear layer of ``ch`` (``layers.Channels``) features: its rows a new space."""
        in_features, out_features = ch.inputs, ch.outputs
        if x.rank is not None and x.rank >= 3:
            # The features are the last dimension ([B, T, C] tokens, [B, H, W, C] channels
            # last): the input's last-dimension space is consumed when it is one (another
            # Linear's output, the hidden dimension of an MLP), and the output's last
            # dimension is this layer's own space, for the next Linear to consume.
            if x.last and x.factor == 1 and self.size(x) == in_features:
                self.consume(x, name)
                use = self.record(name, m, "linear", x, out_size=out_features)
            else:
                self.freeze(x, f"{name} (Linear) reads the last dimension of an input whose "
                               "channels are elsewhere")
                use = self.record(name, m, "linear", Val(), out_size=out_features)
            return self.out_val(use, x.rank, last=True)
        if x.rank != 2:
            why = "of unknown rank (pass example_inputs)" if x.rank is None else f"of rank {x.rank}"
            reason = f"{name} (Linear) is applied to an input {why}; only [N, features] inputs are pruned"
            self.freeze(x, reason)
            use = self.record(name, m, "linear", Val(), out_size=out_features)
            self.freeze(self.out_val(use, None), reason)
            return self.out_val(use, x.rank)
        size = self.size(x)
        factor = x.factor
        if size is not None and factor is None and in_features % size == 0:
            factor = in_features // size
        if size is None or factor is None or size * factor != in_features:
            self.freeze(x, f"the input features of {name} could not be matched to their producers")
            use = self.record(name, m, "linear", Val(), out_size=out_features)
        else:
            self.consume(x, name)
            use = self.record(name, m, "linear", x, factor=factor, out_size=out_features)
        return self.out_val(use, 2)

    def channelwise(self, node, name: str, m: nn.Module, x: Val, kind: str, count: int,
                    zero_out: bool, via: str) -> Val:
        """A module with per-channel tensors (BatchNorm, PReLU): a member of every space of
        its input, pruned at the same channels."""
        size = self.size(x)
        factor = x.factor
        if size is not None and factor is None and count % size == 0:
            factor = count // size
        if size is None or factor is None or size * factor != count:
            self.freeze(x, f"the channels of {name} could not be matched to their producers")
            self.record(name, m, kind, Val())
            factor = x.factor
        else:
            self.record(name, m, kind, x, factor=factor)
        segs = tuple(Seg(s.space, True) if zero_out else
                     (s if not s.zero else Seg(s.space, False, via)) for s in x.segs)
        return Val(segs, factor, x.rank)

    def group_norm(self, node, name: str, m: nn.Module, x: Val, channels: int, groups: int,
                   affine: bool) -> Val:
        """GroupNorm: a group's statistics are its own channels', so whole GN groups go or
        stay and the rest normalise as before (exact). Each space of the input is pruned
        in units of whole GN groups, which must not straddle two spaces. With one group
        (a LayerNorm over the channels) any pruning changes the statistics: left alone."""
        per = channels // groups
        size = self.size(x)
        if x.factor != 1 or size != channels:
            self.freeze(x, f"the channels of {name} could not be matched to their producers")
            self.record(name, m, "gn", Val())
            return self.opaque(node, f"output of {name} (GroupNorm on unmatched channels)")
        if groups == 1:
            self.freeze(x, f"{APPROXIMATE} {name}")   # a LayerNorm over the channels
            self.record(name, m, "gn", x)
            return Val(tuple(Seg(s.space, True) if affine else s for s in x.segs), 1, x.rank)
        offset = 0
        for seg in x.segs:
            space = self.spaces[seg.space].size
            if offset % per or space % per:
                self.freeze(x, f"{name}'s groups of {per} channels straddle two channel spaces")
                break
            self.ties.append((seg.space, space // per))
            offset += space
        self.record(name, m, "gn", x)
        # Affine: the pruned channels' weight and bias are zeroed, so they come out zero
        # whatever came in. Without: a group of zeros normalises to zero.
        segs = tuple(Seg(s.space, True) if affine else s for s in x.segs)
        return Val(segs, 1, x.rank)

    def layer_norm(self, node, name: str, m: nn.Module, x: Val, shape: tuple, has_weight: bool) -> Val:
        """A LayerNorm over the channels ([B, C], or the last dimension of a channels-last or
        token layout): per-channel weight and bias, but its statistics are all the
        channels': approximate, left alone unless ``prune(..., approximate=True)``."""
        size = self.size(x)
        if x.factor != 1 or size is None or shape != (size,) or \
                not (x.last or x.rank == 2):
            return self.unknown(node, f"{type(m).__name__} not over the channels", x)
        self.freeze(x, f"{APPROXIMATE} {name}")   # (prune._decide words the reason)
        self.record(name, m, "ln", x)
        # its pruned channels' weight (and bias) zeroed: they come out zero
        zero = has_weight
        return Val(tuple(Seg(s.space, True) if zero else Seg(s.space, False, f"{name} (LayerNorm without weight)")
                         for s in x.segs), 1, x.rank, last=x.last)

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
            return replace(self._cut_alike(node, kind, a, b), last=True, rank=len(sa))
        return replace(self._joined(kind, a, b), last=True, rank=len(sa))

    def param_member(self, node, kind: str, x: Val, p: Val) -> Val:
        """``x * p`` or ``x + p`` for a parameter ``p`` with one entry per channel of ``x``
        along its channel dimension (a layer scale, a per-channel bias): ``p`` is pruned
        with those channels (its pruned entries zeroed, zero stays zero)."""
        qualname, dims, edit = p.param   # the tensor's dim at each of the value's dims (None: a
                                         # view's); a view holding the channel count, if any
        owner, _, attr = qualname.rpartition(".")
        t = getattr(self.modules.get(owner), attr, None)
        size = self.size(x)
        ch = None if x.rank is None else (x.rank - 1 if x.last else 1)
        at = None if ch is None else ch - (x.rank - len(dims))   # broadcast: aligned on the right
        dim = dims[at] if at is not None and 0 <= at < len(dims) else None
        if not isinstance(t, torch.Tensor) or dim is None or size is None or x.factor != 1 or \
                t.shape[dim] != size or self.param_dims.get(qualname, dim) != dim:
            return self.unknown(node, f"{kind} by the module attribute {qualname}", (x, p))
        if edit is not None:
            node_name, path, count = edit
            if len(x.segs) != 1 or self.tracer != "fx":
                return self.unknown(node, f"{kind} by the module attribute {qualname} viewed with a "
                                          "constant channel count", (x, p))
            self.head_ops[node_name] = HeadOp("channels", tuple(path), count, x.segs[0].space, 1,
                                        self.reshape_index.get(node_name, -1))
        self.record(qualname, t, "param", x)
        self.param_dims[qualname] = dim
        return x

    def shortcut(self, node, name: str, m: nn.Module, x: Val, ch) -> Val:
        """PadShortcut: the producer of its own output space (see the package docstring)."""
        if len(x.segs) != 1 or x.factor != 1 or self.size(x) != ch.inputs:
            return self.unknown(node, f"{name} (PadShortcut) on an input of several spaces", x)
        self.consume(x, name)
        use = self.record(name, m, "shortcut", x, out_size=ch.outputs)
        if len(use.out_spaces) != 1:   # its channel map is over its whole output
            self.freeze(self.out_val(use, None), f"{name} (PadShortcut) output cut into parts")
            self.freeze(x, f"{name} (PadShortcut) output cut into parts")
        return self.out_val(use, x.rank)

    # ---- tensor ops
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
                    and self.tracer == "fx" and self._keeps_count(node, x, 1):
                # [B, C] <-> [B, C, 1, 1], [B, C, H, W] -> [B, C, H * W]: the channels stay, when
                # the graph reads their count at run time (a constant would hold the old one
                # in the pruned model's code, and [B, C, -1] could then silently mis-shape)
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
        from .heads import _shape_entries, reads_own_size

        if self.tracer != "fx":
            return True
        entries = _shape_entries(node)
        if len(entries) == 1 and isinstance(entries[0][1], torch.fx.Node):
            return reads_own_size(self, node, entries[0][1], x)     # x.view(y.shape)
        return len(entries) > dim and reads_own_size(self, node, entries[dim][1], x)

    def check_size_links(self) -> None:
        """After the walk: a reshape whose size is read from another tensor's channels keeps
        its own channels and that tensor's whole unless the two are joined, space for space."""
        for mine, theirs, where in self.size_links:
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
            return self._cut_alike(node, kind, a, b)
        return self._joined(kind, a, b)

    def _cut_alike(self, node, kind: str, a: Val, b: Val) -> Val:
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

    def _joined(self, kind: str, a: Val, b: Val) -> Val:
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

    def getitem(self, node, base, idx) -> Any:
        if isinstance(base, Tup):
            return base.items[idx] if isinstance(idx, int) and -len(base.items) <= idx < len(base.items) \
                else self.unknown(node, "getitem", base)
        if isinstance(base, Val) and not base.tensor:
            return NOT_TENSOR
        if isinstance(base, (list, tuple)):
            return base[idx] if isinstance(idx, int) else self.unknown(node, "getitem", base)
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

    def channel_pieces(self, node, x: Val, ranges, op: str) -> Optional[List[Val]]:
        """The layouts of channel ranges [a, b) of ``x`` (split, chunk, narrow, a slice of
        dim 1; a split of the last dimension of a channels-last or token layout), each made
        of whole spaces: the spaces are cut at the ranges' ends (asked of
        the next pass where they are not yet). None where it cannot be: the caller leaves
        the channels alone. fx only: the pruned model gets its new sizes by a rewrite of
        the fx graph (plan.py), which an export graph cannot give the model back."""
        size = self.size(x)
        if self.tracer != "fx" or x.factor != 1 or size is None or \
                any(not 0 <= a <= b <= size for a, b in ranges):
            return None
        if self.request_cuts(x.segs, sorted({q for r in ranges for q in r})):
            return None   # this pass leaves them alone; the next one has the cuts
        ends = [0] + self.bounds(x.segs)
        pieces, spans = [], []
        for a, b in ranges:
            first, last = ends.index(a), ends.index(b)
            spans.append((first, last))
            pieces.append(Val(x.segs[first:last], 1, x.rank, last=x.last))
        self.channel_ops[node.name] = ChannelOp(op, tuple(x.segs), tuple(spans), self.split_index.get(node.name, -1))
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
