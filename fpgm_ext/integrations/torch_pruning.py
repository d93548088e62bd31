"""FPGM as a Torch-Pruning importance: ``importance=FPGMImportance()`` in
``torch_pruning.pruner.MetaPruner`` (and the pruners built on it).

The score is the paper's (docs/design.md, section 1) on the raw filters of each layer:
``g_i = sum_j d(F_i, F_j)`` over all filters of the layer, in float64, metric "l2", "l1" or
"cos", computed by ``fpgm_ext.distance_scores_multi``: one call for all the layers of a
group. A channel's importance is the sum of the scores of the filters that produce it
(every conv or linear whose output channels the group removes: plain, grouped and
depthwise convs, transposed convs, linears), as ``fpgm_ext.prune`` scores a channel group.
Larger is more important; the pruner removes the smallest first, which are the filters
nearest the geometric median.

Torch-Pruning 1.6's own ``FPGMImportance`` differs: it takes ``cdist`` of ``|w|^p`` rather
than of ``w``, also scores the input channels of the consumers, normalises by the group
mean, and fails on grouped convs (RegNet, ResNeXt).
"""
from __future__ import annotations

from typing import Dict, List, Optional

import torch
from torch import nn

try:
    import torch_pruning as tp
    from torch_pruning.pruner import function as _tp_function
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError("fpgm_ext.integrations.torch_pruning needs Torch-Pruning: "
                      "pip install 'fpgm_ext[tp]' (or pip install torch-pruning)") from e

from .._checks import check_metric
from ..ops import distance_scores_multi

__all__ = ["FPGMImportance"]

_OUT_FNS = (_tp_function.prune_conv_out_channels, _tp_function.prune_depthwise_conv_out_channels,
            _tp_function.prune_linear_out_channels)
_REDUCTIONS = ("sum", "mean")
_NORMALIZERS = (None, "mean", "max", "sum")


def _filters(module: nn.Module) -> torch.Tensor:
    """The output filters of a conv or linear, one row per output channel, as they are
    stored (no copy unless the layout needs one)."""
    w = module.weight.detach()
    if isinstance(module, nn.modules.conv._ConvNd) and module.transposed:
        # [C_in, C_out / g, *k]: output channel grp * (C_out / g) + j reads w[grp's inputs, j]
        g = module.groups
        w = w.reshape(g, w.shape[0] // g, *w.shape[1:]).transpose(1, 2)
    return w.reshape(module.out_channels if isinstance(module, nn.modules.conv._ConvNd)
                     else module.out_features, -1)


class FPGMImportance(tp.importance.Importance):
    """Per-channel FPGM importance of a Torch-Pruning group (larger = keep).

    Args:
        metric: "l2" (the paper's), "l1" or "cos".
        group_reduction: "sum" (default; a channel's score is the sum of its producers'
            scores, as ``fpgm_ext.prune``) or "mean" (divided by the number of producers
            of that channel).
        normalizer: None (default: the scores themselves), or "mean", "max" or "sum": the
            group's scores divided by that positive number, which leaves the order within
            a group unchanged and only matters with ``global_pruning=True``, where raw
            sums of distances of layers of different sizes are not comparable.

    Only the output filters of the group's convs and linears are scored (the paper's
    criterion); BatchNorm, consumers' input channels and biases are not. A group without
    such a producer gets ``None``, which the pruner skips. A root index that no producer
    reaches scores 0.
    """

    def __init__(self, metric: str = "l2", group_reduction: str = "sum",
                 normalizer: Optional[str] = None):
        check_metric("FPGMImportance", metric)
        if group_reduction not in _REDUCTIONS:
            raise ValueError(f"fpgm.FPGMImportance: group_reduction must be 'sum' or 'mean', "
                             f"got {group_reduction!r}")
        if normalizer not in _NORMALIZERS:
            raise ValueError(f"fpgm.FPGMImportance: normalizer must be None, 'mean', 'max' or 'sum', "
                             f"got {normalizer!r}")
        self.metric = metric
        self.group_reduction = group_reduction
        self.normalizer = normalizer

    def __repr__(self) -> str:
        return (f"FPGMImportance(metric={self.metric!r}, group_reduction={self.group_reduction!r}, "
                f"normalizer={self.normalizer!r})")

    @staticmethod
    def _is_producer(dep, graph) -> bool:
        module = dep.target.module
        if not isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)):
            return False
        fn = dep.handler
        return fn in _OUT_FNS or (graph is not None and graph.is_out_channel_pruning_fn(fn))

    @torch.no_grad()
    def __call__(self, group, **kwargs) -> Optional[torch.Tensor]:
        items = list(group)
        root = items[0]
        root_idxs = getattr(root, "root_idxs", None)
        root_idxs = list(root.idxs if root_idxs is None else root_idxs)
        position = {r: k for k, r in enumerate(root_idxs)}
        graph = getattr(group, "_DG", None)

        # the producers, each scored once over all its filters; (module, positions, idxs)
        members = []
        layers: Dict[int, nn.Module] = {}
        for item in items:
            if not self._is_producer(item.dep, graph):
                continue
            module = item.dep.target.module
            roots = getattr(item, "root_idxs", None)
            roots = item.idxs if roots is None else roots
            pairs = [(position[r], i) for r, i in zip(roots, item.idxs) if r is not None and r in position]
            if not pairs:
                continue
            layers.setdefault(id(module), module)
            members.append((module, [p for p, _ in pairs], [i for _, i in pairs]))
        if not members:
            return None  # nothing to score: the pruner skips the group

        # one distance_scores_multi call per device (one call in all the usual cases)
        names = getattr(graph, "_module2name", {}) if graph is not None else {}
        by_device: Dict[torch.device, List[int]] = {}
        rows: Dict[int, torch.Tensor] = {}
        for key, module in layers.items():
            r = _filters(module).to(torch.float64)
            if not torch.isfinite(r).all():
                name = names.get(module, type(module).__name__)
                raise ValueError(f"fpgm.FPGMImportance: the weight of {name} contains NaN or Inf; "
                                 "FPGM scores would be meaningless")
            rows[key] = r
            by_device.setdefault(r.device, []).append(key)
        scores: Dict[int, torch.Tensor] = {}
        for keys in by_device.values():
            scores.update(zip(keys, distance_scores_multi([rows[k] for k in keys], self.metric)))

        device = scores[id(members[0][0])].device
        imp = torch.zeros(len(root_idxs), dtype=torch.float64, device=device)
        count = torch.zeros(len(root_idxs), dtype=torch.float64, device=device)
        for module, pos, idxs in members:
            s = scores[id(module)].to(device)[torch.tensor(idxs, device=device)]
            pos = torch.tensor(pos, device=device)
            imp.index_add_(0, pos, s)
            count.index_add_(0, pos, torch.ones_like(s))
        if self.group_reduction == "mean":
            imp = imp / count.clamp(min=1)
        if self.normalizer is not None:
            scale = {"mean": imp.mean, "max": imp.max, "sum": imp.sum}[self.normalizer]()
            imp = torch.where(scale > 0, imp / scale, imp)  # all scores >= 0; all 0: left as is
        return imp
