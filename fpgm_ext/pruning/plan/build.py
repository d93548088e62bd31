"""A plan from an analysis and the units kept per group: each module's entry from its
layer handler, the groups for people to read, and the edits of the model's own code
(channel splits and head reshapes whose sizes change)."""
from __future__ import annotations

from typing import Any, Dict, List, Optional

import torch

from ..layers import TENSOR_MEMBER, handler_for
from .edits import ReshapeEdit, SplitEdit
from .format import Plan


def build_plan(analysis, frozen: Dict[int, List[str]], kept: Dict[int, torch.Tensor], meta: Dict[str, Any],
               approx: Optional[Dict[int, str]] = None) -> Plan:
    """The plan that keeps units ``kept[group]`` of the pruned groups; ``frozen`` gives
    why each other group was left alone, ``approx`` why a group is pruned approximately."""
    channels = _kept_channels(analysis, kept)
    return Plan(modules=_module_entries(analysis, channels), groups=_group_entries(analysis, frozen, kept, approx or {}),
                meta=meta, graph={**_split_edits(analysis, channels), **_reshape_edits(analysis, kept, channels)})


def _kept_channels(analysis, kept) -> Dict[int, List[int]]:
    """space -> its kept channel indices, for the spaces of the pruned groups."""
    channels: Dict[int, List[int]] = {}
    for g in analysis.groups:
        if g.id in kept:
            for s in g.spaces:
                b = analysis.spaces[s].size // g.units
                channels[s] = (kept[g.id][:, None] * b + torch.arange(b)).reshape(-1).tolist()
    return channels


def _expand(spaces, channels, segs, factor) -> Optional[List[int]]:
    """The kept indices of a layout made of ``segs`` (each channel ``factor`` features);
    None where none of its spaces is pruned."""
    if not any(seg.space in channels for seg in segs):
        return None
    idx, offset = [], 0
    for seg in segs:
        size = spaces[seg.space].size
        keep = channels.get(seg.space)
        if keep is None:
            idx.extend(range(offset, offset + size * factor))
        elif factor == 1:
            idx.extend([offset + c for c in keep])
        else:
            for c in keep:
                base = offset + c * factor
                idx.extend(range(base, base + factor))
        offset += size * factor
    return idx


def _module_entries(analysis, channels) -> Dict[str, Dict[str, Any]]:
    spaces = analysis.spaces
    modules: Dict[str, Dict[str, Any]] = {}
    for name, use in analysis.uses.items():
        inn = _expand(spaces, channels, use.in_segs, use.factor)
        if use.kind == "param":   # a tensor pruned along its channel dim (a layer scale)
            entry = TENSOR_MEMBER.plan_entry(use, None, inn, analysis.param_dims[name])
        else:
            out = None   # the kept filters over all of its output's spaces, if any is pruned
            if any(sp in channels for sp in use.out_spaces):
                out = [spaces[sp].offset + c for sp in use.out_spaces
                       for c in channels.get(sp, range(spaces[sp].size))]
            entry = handler_for(use.module).plan_entry(use, out, inn)
        if entry is not None:
            modules[name] = entry
    return modules


def _group_entries(analysis, frozen, kept, approx) -> List[Dict[str, Any]]:
    spaces = analysis.spaces
    groups = []
    for g in analysis.groups:
        producers = [spaces[s].producer for s in g.spaces if spaces[s].kind in ("conv", "linear", "shortcut")]
        if not producers:
            continue   # inputs and opaque tensors: not pruning candidates
        groups.append({
            "id": g.id,
            "producers": producers,
            "members": analysis.members(g),
            "channels": [spaces[s].size for s in g.spaces],
            "units": g.units,
            "residual": g.residual,
            "kept": kept[g.id].tolist() if g.id in kept else None,
            "left_alone": "; ".join(frozen[g.id]) if frozen[g.id] else None,
        })
        if g.id in approx:
            groups[-1]["approximate"] = approx[g.id]
    return groups


def _split_edits(analysis, channels) -> Dict[str, Dict[str, Any]]:
    """The model's own channel splits whose pieces change size."""
    spaces = analysis.spaces
    edits: Dict[str, Dict[str, Any]] = {}
    for node, op in analysis.channel_ops.items():
        full = [spaces[s.space].size for s in op.segs]
        now = [len(channels[s.space]) if s.space in channels else spaces[s.space].size for s in op.segs]
        if now != full:
            edits[node] = SplitEdit(op.op, tuple(sum(now[a:b]) for a, b in op.spans),
                                    tuple(sum(now[:a]) for a, _ in op.spans),
                                    tuple(sum(full[a:b]) for a, b in op.spans),
                                    tuple(sum(full[:a]) for a, _ in op.spans), sum(full), op.index).to_dict()
    return edits


def _reshape_edits(analysis, kept, channels) -> Dict[str, Dict[str, Any]]:
    """Reshapes into and out of attention heads whose head count changes, and views of
    per-channel tensors whose channel count does."""
    edits: Dict[str, Dict[str, Any]] = {}
    for node, op in analysis.head_ops.items():
        gid = analysis.group_of[op.space]
        if gid in kept:
            heads = len(kept[gid])
            size = heads if op.op == "heads" else heads * op.dim if op.op == "merge_heads" else \
                len(channels[op.space])
            edits[node] = ReshapeEdit(op.op, op.path, size, op.was, op.index).to_dict()
        elif op.op == "merge_heads" and op.was is None and kept:
            # the heads' width read at run time from another tensor (``B, N, C = x.shape``),
            # whose channels may be pruned while the heads are not: made the constant it is
            edits[node] = ReshapeEdit(op.op, op.path, analysis.spaces[op.space].size, None, op.index).to_dict()
    return edits
