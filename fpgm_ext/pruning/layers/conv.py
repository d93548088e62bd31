"""Convolutions (``nn.Conv1d/2d/3d`` and any layer registered with ``Conv``): a weight
``[out, in / groups, *kernel]`` whose filters make a new channel space, scored by FPGM;
an optional ``bias`` ``[out]``; grouped and depthwise convs tied to their input by conv
group; other per-filter tensors (a weight-standardised conv's gain) pruned with the
filters."""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import torch
from torch import nn

from ..rule import Rule
from .base import Channels, Layer, Surgery, affine_masks, check_size, keep_mask, kept_indices

class Conv(Layer):
    """A conv-like layer: ``weight`` ``[out, in / groups, *kernel]``, ``bias`` ``[out]``
    or None, ``groups`` (1 where the module has no such attribute). An output channel of
    the layer must be zero when its filter and bias are (the pruning is exact then).
    ``out_params``: names of other tensors of ``[out, ...]`` pruned with the filters."""
    rule = Rule.CONV
    size_attrs = ("out_channels", "in_channels", "groups")   # set after the surgery, if present

    def __init__(self, out_params: Tuple[str, ...] = ()):
        self.out_params = tuple(out_params)

    def analyse(self, A, node, name, m, x):
        return A.conv(node, name, m, x, self.channels(m))

    def computes(self, m, call):
        return (call.groups is None or call.groups == self.channels(m).groups) and \
            (call.weight_rank is None or call.weight_rank == m.weight.dim())

    def channels(self, m: nn.Module) -> Channels:
        groups = getattr(m, "groups", 1)
        w = m.weight
        return Channels(w.shape[1] * groups, w.shape[0], groups)

    def plan_entry(self, use, out, inn):
        ch = self.channels(use.module)
        if out is None and inn is None:
            return None
        entry: Dict[str, Any] = {"type": type(use.module).__name__, "out_size": ch.outputs, "in_size": ch.inputs}
        if out is not None:
            entry["out"] = out
            params = tuple(use.out_params) + tuple(p for p in self.out_params if p not in use.out_params
                                                   and isinstance(getattr(use.module, p, None), torch.Tensor))
            if params:
                entry["out_params"] = list(params)
        if inn is not None:
            entry["in"] = inn
            if ch.groups != 1:
                entry["groups"] = ch.groups if use.local_groups else len(inn) * ch.groups // ch.inputs
        return entry

    def replaced(self, m):
        return ("weight", "bias") + self.out_params

    def kept(self, name: str, m: nn.Module, entry: Dict[str, Any]) -> Tuple[Channels, torch.Tensor, torch.Tensor]:
        """(the layer's channels, the output and the input channels the entry keeps), checked."""
        ch = self.channels(m)
        check_size(name, entry, "out_size", ch.outputs)
        check_size(name, entry, "in_size", ch.inputs)
        dev = m.weight.device
        return ch, kept_indices(entry, "out", ch.outputs, name, dev), kept_indices(entry, "in", ch.inputs, name, dev)

    def surgery(self, name: str, m: nn.Module, entry: Dict[str, Any], batch: Surgery) -> None:
        ch, out, inn = self.kept(name, m, entry)
        groups = self._gather_weight(name, m, entry, ch, out, inn, batch)
        if m.bias is not None:
            batch.gather_into(m, "bias", 0, out)
        for attr in entry.get("out_params", ()) if "out" in entry else ():
            t = getattr(m, attr, None)
            if not isinstance(t, torch.Tensor) or t.shape[0] != ch.outputs:
                raise ValueError(f"fpgm_ext.apply_plan: the plan prunes {name}.{attr} with its "
                                 f"filters, but it is not a tensor of {ch.outputs} filters")
            batch.gather_into(m, attr, 0, out, (len(out),) + tuple(t.shape[1:]))
        sizes = dict(zip(self.size_attrs, (len(out), len(inn), groups)))
        batch.then(lambda res: [setattr(m, a, v) for a, v in sizes.items() if hasattr(m, a)])

    def _gather_weight(self, name, m, entry, ch: Channels, out, inn, batch: Surgery) -> int:
        """Gathers the weight (both sides in one index where it can); returns the groups."""
        w, o, i, G = m.weight, ch.outputs, ch.inputs, ch.groups
        if G != 1 and entry.get("groups") == G and len(inn) < i:
            # the same local input channels kept in every conv group, their number kept
            per = i // G
            local = inn[:len(inn) // G] if len(inn) % G == 0 else None
            if local is None or not torch.equal(
                    inn, (torch.arange(G, device=inn.device)[:, None] * per + local[None, :]).reshape(-1)):
                raise ValueError(f"fpgm_ext.apply_plan: {name} keeps input channels that are not the "
                                 f"same in each of its {G} groups")
            combined = (out[:, None] * per + local[None, :]).reshape(-1)
            batch.gather_into(m, "weight", 0, combined, (len(out), len(local)) + tuple(w.shape[2:]),
                              source=w.reshape(o * per, -1))
            return G
        if G != 1:
            if len(inn) * G % i:
                raise ValueError(f"fpgm_ext.apply_plan: {name} keeps {len(inn)} of {i} input channels, "
                                 f"which is not a whole number of its {G} groups")
            groups = len(inn) * G // i
            if entry.get("groups", groups) != groups:
                raise ValueError(f"fpgm_ext.apply_plan: the plan's groups of {name} do not match its channels")
            batch.gather_into(m, "weight", 0, out)
            return groups
        if len(inn) == i or len(out) == o:   # one side: a gather along it (a small index)
            batch.gather_into(m, "weight", 0 if len(inn) == i else 1, out if len(inn) == i else inn)
            return 1
        combined = (out[:, None] * i + inn[None, :]).reshape(-1)
        batch.gather_into(m, "weight", 0, combined, (len(out), len(inn)) + tuple(w.shape[2:]),
                          source=w.reshape(o * i, -1))
        return 1

    def masks(self, name, m, entry):
        return affine_masks(name, m, "out", "out_size", entry)

    def input_masks(self, name, m, entry):
        w = m.weight
        if "in" not in entry or self.channels(m).groups != 1 or w.shape[1] != entry["in_size"]:
            return {}   # (a grouped conv's pruned inputs are its pruned outputs' groups)
        keep = keep_mask(entry["in_size"], entry["in"], w.device)
        return {"weight": keep.reshape((1, -1) + (1,) * (w.dim() - 2)).expand_as(w)}

    def params_removed(self, m, entry) -> int:
        removed = m.weight.numel() - self.weight_size_after(m, entry)
        if getattr(m, "bias", None) is not None and "out" in entry:
            removed += m.bias.numel() - len(entry["out"])
        return removed

    def weight_size_after(self, m, entry) -> Optional[int]:
        ch = self.channels(m)
        o2 = len(entry["out"]) if "out" in entry else ch.outputs
        i2 = len(entry["in"]) if "in" in entry else ch.inputs
        g2 = entry.get("groups", ch.groups) if "in" in entry else ch.groups
        return m.weight.numel() // (ch.outputs * (ch.inputs // ch.groups)) * o2 * (i2 // g2)
