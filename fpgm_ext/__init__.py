"""fpgm_ext: compiled kernels for FPGM filter pruning (He et al., CVPR 2019).

    scores = fpgm_ext.distance_scores(conv.weight)          # [N]: small = replaceable
    keep, prune = fpgm_ext.select(conv.weight, rate_dist=0.4)

The operators are torch.ops.fpgm.*; this module is a thin, documented front to them.
"""
from __future__ import annotations

from typing import List, NamedTuple, Sequence

import torch

from . import _backend
from ._backend import backend_info

_backend.load()

__all__ = ["backend_info", "distance_scores", "distance_matrix", "distance_scores_multi",
           "gather_channels", "select", "Selection"]
__version__ = "0.1.0"


def distance_scores(weight: torch.Tensor, metric: str = "l2") -> torch.Tensor:
    """FPGM score of each filter of ``weight`` [N, ...]: the sum of its distances to the
    other filters (metric "l2", "l1" or "cos"). Filters with the smallest scores lie
    nearest the geometric median and are the most replaceable. Returns [N] float32
    (float64 for float64 input). Not differentiable."""
    return torch.ops.fpgm.distance_scores.default(weight.detach(), metric)


def distance_matrix(weight: torch.Tensor, metric: str = "l2") -> torch.Tensor:
    """All pairwise filter distances: [N, ...] -> [N, N]; a batch [B, N, D] -> [B, N, N]."""
    return torch.ops.fpgm.distance_matrix.default(weight.detach(), metric)


def distance_scores_multi(weights: Sequence[torch.Tensor], metric: str = "l2") -> List[torch.Tensor]:
    """``distance_scores`` of many layers (each its own N and D) in one call."""
    if len(weights) == 0:  # the dispatcher cannot route a call without tensors
        from .reference import check_metric

        check_metric("distance_scores_multi", metric)
        return []
    return torch.ops.fpgm.distance_scores_multi.default([w.detach() for w in weights], metric)


def gather_channels(tensors: Sequence[torch.Tensor], dims: Sequence[int],
                    indices: Sequence[torch.Tensor]) -> List[torch.Tensor]:
    """``[t.index_select(d, i).contiguous() for t, d, i in zip(tensors, dims, indices)]``
    in one call: the weight surgery of physical pruning."""
    if len(tensors) == 0 and len(indices) == 0:
        from .reference import check_gather_args

        check_gather_args(tensors, dims, indices)  # dims must be empty too
        return []  # the dispatcher cannot route a call without tensors
    return torch.ops.fpgm.gather_channels.default(list(tensors), list(dims), list(indices))


class Selection(NamedTuple):
    keep: torch.Tensor   # sorted int64 indices of the filters kept
    prune: torch.Tensor  # sorted int64 indices of the filters pruned


def select(weight: torch.Tensor, rate_dist: float, rate_norm: float = 1.0,
           metric: str = "l2") -> Selection:
    """The filters of ``weight`` [N, ...] that FPGM prunes, chosen as the official code does
    (``Mask.get_filter_similar``), in two stages with counts floored against all N filters:

    1. ``int(N * (1 - rate_norm))`` filters of smallest L2 norm are pruned;
    2. ``int(N * rate_dist)`` of the remaining candidates with the smallest distance score
       (distances summed over the candidates only) are pruned.

    FPGM-only 40% is ``rate_dist=0.4``; FPGM-mix is e.g. ``rate_norm=0.9, rate_dist=0.3``.
    Scores are computed in float64 (as the official scipy path does) and ties break by
    lower filter index, so the choice is deterministic.
    """
    from .reference import check_metric, check_weight

    check_metric("select", metric)
    check_weight("select", "weight", weight)
    if not 0.0 <= rate_dist < 1.0:
        raise ValueError(f"fpgm.select: rate_dist must be in [0, 1), got {rate_dist}")
    if not 0.0 < rate_norm <= 1.0:
        raise ValueError(f"fpgm.select: rate_norm must be in (0, 1], got {rate_norm}")
    n = weight.shape[0]
    n_norm = int(n * (1 - rate_norm))
    n_dist = int(n * rate_dist)
    if n_norm + n_dist >= n:
        raise ValueError(f"fpgm.select: rate_norm={rate_norm} and rate_dist={rate_dist} would prune "
                         f"{n_norm} + {n_dist} of {n} filters; at least one must be kept")
    rows = weight.detach().reshape(n, -1).to(torch.float64)
    if not torch.isfinite(rows).all():
        raise ValueError("fpgm.select: weight contains NaN or Inf; FPGM scores would be meaningless")
    by_norm = torch.argsort(rows.norm(dim=1), stable=True)
    candidates = by_norm[n_norm:].sort().values
    pruned = [by_norm[:n_norm]]
    if n_dist > 0:
        scores = distance_scores(rows[candidates], metric)
        pruned.append(candidates[torch.argsort(scores, stable=True)[:n_dist]])
    mask = torch.zeros(n, dtype=torch.bool, device=weight.device)
    mask[torch.cat(pruned)] = True
    idx = torch.arange(n, device=weight.device)
    return Selection(keep=idx[~mask], prune=idx[mask])

from .pruning import apply_plan, prune  # noqa: E402  (after the ops it uses)
from . import models  # noqa: E402

__all__ += ["prune", "apply_plan", "models"]
from .soft import SoftFPGM  # noqa: E402

__all__ += ["SoftFPGM"]
