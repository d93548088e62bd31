"""The documented Python front to the operators ``torch.ops.fpgm.*`` (whichever backend
serves them; see fpgm_ext._backend), plus the calls the dispatcher cannot route: a list
of no tensors."""
from __future__ import annotations

from typing import List, Sequence

import torch

from ._checks import check_gather_args, check_metric

__all__ = ["distance_scores", "distance_matrix", "distance_scores_multi", "gather_channels"]


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
        check_metric("distance_scores_multi", metric)
        return []
    return torch.ops.fpgm.distance_scores_multi.default([w.detach() for w in weights], metric)


def gather_channels(tensors: Sequence[torch.Tensor], dims: Sequence[int],
                    indices: Sequence[torch.Tensor]) -> List[torch.Tensor]:
    """``[t.index_select(d, i).contiguous() for t, d, i in zip(tensors, dims, indices)]``
    in one call: the weight surgery of physical pruning."""
    if len(tensors) == 0 and len(indices) == 0:
        check_gather_args(tensors, dims, indices)  # dims must be empty too
        return []  # the dispatcher cannot route a call without tensors
    return torch.ops.fpgm.gather_channels.default(list(tensors), list(dims), list(indices))
