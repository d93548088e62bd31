"""The official FPGM selection rule (docs/design.md, algorithm and official selection),
written once: ``select`` applies it to one layer, ``fpgm_ext.prune`` (and so ``SoftFPGM``)
to the units of each channel group.

He et al.'s code (``Mask.get_filter_similar``) selects in two stages with counts floored
against all N filters (``counts``): the ``n_norm`` filters of smallest L2 norm are pruned
(``norm_stage``), then the ``n_dist`` remaining candidates with the smallest distance
score, distances summed over the candidates only (``prune_order``). Sorts are stable, so
ties go to the lower index and the choice is deterministic.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Tuple

import torch

from ._checks import check_metric, check_rates, check_weight
from .certified import CandidateScores
from .ops import distance_scores

__all__ = ["Selection", "select", "counts", "norm_stage", "prune_order", "split"]


class Selection(NamedTuple):
    keep: torch.Tensor   # sorted int64 indices of the filters kept
    prune: torch.Tensor  # sorted int64 indices of the filters pruned


def counts(n: int, rate_dist: float, rate_norm: float) -> Tuple[int, int]:
    """``(n_norm, n_dist)``: how many of ``n`` filters each stage prunes, both floored
    against all ``n``."""
    return int(n * (1 - rate_norm)), int(n * rate_dist)


def norm_stage(norms: torch.Tensor, n_norm: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(by_norm, candidates)``: all filters by ascending ``norms`` (the first ``n_norm``
    are pruned), and the rest, sorted by index: the candidates of the distance stage, whose
    scores ``prune_order`` takes (distances among the candidates only)."""
    by_norm = torch.argsort(norms, stable=True)
    candidates = by_norm[n_norm:].sort().values
    return by_norm, candidates


def prune_order(by_norm: torch.Tensor, n_norm: int, candidates: torch.Tensor,
                scores: Optional[torch.Tensor]) -> torch.Tensor:
    """Every filter in order of pruning preference: the ``n_norm`` smallest-norm ones, then
    the candidates by ascending distance score (``scores[i]`` is ``candidates[i]``'s). The
    selection prunes the first ``n_norm + n_dist``. ``scores=None`` (no distance stage):
    the norm order alone."""
    if scores is None:
        return by_norm
    return torch.cat([by_norm[:n_norm], candidates[torch.argsort(scores, stable=True)]])


def split(n: int, pruned: torch.Tensor) -> Selection:
    """The ``n`` filters split into kept and ``pruned`` (indices), both sorted."""
    mask = torch.zeros(n, dtype=torch.bool, device=pruned.device)
    mask[pruned] = True
    idx = torch.arange(n, device=pruned.device)
    return Selection(keep=idx[~mask], prune=idx[mask])


def select(weight: torch.Tensor, rate_dist: float, rate_norm: float = 1.0,
           metric: str = "l2") -> Selection:
    """The filters of ``weight`` [N, ...] that FPGM prunes, chosen as the official code does
    (``Mask.get_filter_similar``), in two stages with counts floored against all N filters:

    1. ``int(N * (1 - rate_norm))`` filters of smallest L2 norm are pruned;
    2. ``int(N * rate_dist)`` of the remaining candidates with the smallest distance score
       (distances summed over the candidates only) are pruned.

    FPGM-only 40% is ``rate_dist=0.4``; FPGM-mix is e.g. ``rate_norm=0.9, rate_dist=0.3``.
    The choice is the float64 rule's (as the official scipy path scores), ties to the lower
    filter index, so it is deterministic; the scores are computed on the weight's dtype and
    made float64 where the choice depends on them (``fpgm_ext.certified``).
    """
    check_metric("select", metric)
    check_weight("select", "weight", weight)
    check_rates("fpgm.select", rate_dist, rate_norm)
    n = weight.shape[0]
    n_norm, n_dist = counts(n, rate_dist, rate_norm)
    if n_norm + n_dist >= n:
        raise ValueError(f"fpgm.select: rate_norm={rate_norm} and rate_dist={rate_dist} would prune "
                         f"{n_norm} + {n_dist} of {n} filters; at least one must be kept")
    rows = weight.detach().reshape(n, -1)
    if not torch.isfinite(rows).all():
        raise ValueError("fpgm.select: weight contains NaN or Inf; FPGM scores would be meaningless")
    by_norm, candidates = norm_stage(torch.linalg.vector_norm(rows, dim=1, dtype=torch.float64), n_norm)
    scores = None
    if n_dist > 0:   # float64 where the choice depends on it (fpgm_ext.certified)
        cand = rows if n_norm == 0 else rows[candidates]
        scores = CandidateScores([cand], distance_scores(cand, metric), metric,
                                 lambda rs: [distance_scores(rs[0], metric)]).for_cut(n_dist)
    order = prune_order(by_norm, n_norm, candidates, scores)
    return split(n, order[:n_norm + n_dist])
