"""The channel rules of layers, each recording its module's ``Use``: a convolution (its
filters a new space; a grouped conv tied to its input by conv group), a linear layer (on
``[N, features]`` or a last dimension), a per-channel layer (BatchNorm, PReLU), GroupNorm
(whole GN groups), LayerNorm (approximate), a PadShortcut, and a tensor attribute that is
a member of the channels it meets. The layer handlers (pruning/layers) pick the rule and
give the layer's channel counts."""
from __future__ import annotations

import torch
from torch import nn

from .model import APPROXIMATE, HeadOp, Seg, Use, Val


class LayerRules:
    """The layers' rules of an ``Analyzer`` (see spaces.py for the operations used)."""

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
        return use.name in self.radix.hint or \
            any(self.spaces[seg.space].producer in self.radix.hint for seg in x.segs)

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
        factor = self._features_per_channel(x, in_features)
        if factor is None:
            self.freeze(x, f"the input features of {name} could not be matched to their producers")
            use = self.record(name, m, "linear", Val(), out_size=out_features)
        else:
            self.consume(x, name)
            use = self.record(name, m, "linear", x, factor=factor, out_size=out_features)
        return self.out_val(use, 2)

    def _features_per_channel(self, x: Val, count: int):
        """How many of a layer's ``count`` features each channel of ``x`` spans (after a
        flatten: its positions; not yet known: what ``count`` gives), or None where the
        channels cannot be matched to the features."""
        size = self.size(x)
        factor = x.factor
        if size is not None and factor is None and count % size == 0:
            factor = count // size
        if size is None or factor is None or size * factor != count:
            return None
        return factor

    def channelwise(self, node, name: str, m: nn.Module, x: Val, kind: str, count: int,
                    zero_out: bool, via: str) -> Val:
        """A module with per-channel tensors (BatchNorm, PReLU): a member of every space of
        its input, pruned at the same channels."""
        factor = self._features_per_channel(x, count)
        if factor is None:
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

    def param_member(self, node, kind: str, x: Val, p: Val) -> Val:
        """``x * p`` or ``x + p`` for a parameter ``p`` with one entry per channel of ``x``
        along its channel dimension (a layer scale, a per-channel bias): ``p`` is pruned
        with those channels (its pruned entries zeroed, zero stays zero). A ``p`` of one
        entry there (a new dim, a dim of size 1, or none: a scale per row) is the same for
        every channel: not a member, a product keeps zeros, a sum does not."""
        qualname, dims, view = p.param.name, p.param.dims, p.param.view
        owner, _, attr = qualname.rpartition(".")
        t = getattr(self.modules.get(owner), attr, None)
        size = self.size(x)
        ch = None if x.rank is None else (x.rank - 1 if x.last else 1)
        at = None if ch is None else ch - (x.rank - len(dims))   # broadcast: aligned on the right
        dim = dims[at] if at is not None and 0 <= at < len(dims) else None
        if kind in ("mul", "add") and isinstance(t, torch.Tensor) and at is not None and view is None and \
                (dim is None or (t.shape[dim] == 1 and size != 1)):
            return x if kind == "mul" else self.unary(x, False, f"{node.name} (adds {qualname})")
        if not isinstance(t, torch.Tensor) or dim is None or size is None or x.factor != 1 or \
                t.shape[dim] != size or self.param_dims.get(qualname, dim) != dim:
            return self.unknown(node, f"{kind} by the module attribute {qualname}", (x, p))
        if view is not None:
            if len(x.segs) != 1 or self.tracer != "fx":
                return self.unknown(node, f"{kind} by the module attribute {qualname} viewed with a "
                                          "constant channel count", (x, p))
            self.head_ops[view.node] = HeadOp("channels", view.path, view.count, x.segs[0].space, 1,
                                              self.index.reshapes.get(view.node, -1))
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
