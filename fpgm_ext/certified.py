"""Certified float32 selection: the float64 rule's choice at the cost of float32 scores.

The selection rule scores in float64 (docs/design.md, section 1). Scoring a float32 layer
in float64 costs about twice its float32 scores on the CPU, yet only the units near the cut
between pruned and kept depend on the last digits. So the scores are computed on the rows
as they are (float32, half, bfloat16), each within ``BOUND`` (relative) of its float64
value by the kernels' accuracy contract (``SCORE_RTOL``, docs/design.md section 3), and:

- a unit whose interval ``score +- bound`` lies wholly below the cut is pruned, wholly
  above it kept, whatever the exact scores are;
- the units left in between (a few per layer, or none) get their float64 scores, rows
  against all candidates, O(k N D) (``exact_scores``), or, when there are many of them
  (clusters of duplicates), the whole layer is scored by the float64 kernel;
- the order then ranks the certainly pruned first, the undecided by their float64 scores
  (ties to the lower index), the certainly kept last: its first ``n_cut`` are the ``n_cut``
  smallest float64 scores, ties to the lower index, as the float64 rule picks them.

Units whose float64 scores differ in the last bits only (exact duplicates) may rank
differently from the float64 kernel's own values, which are that close to ties as well.
"""
from __future__ import annotations

import math
from typing import Callable, List, Optional, Sequence

import torch

# The accuracy contract of every backend: a score of float32, half or bfloat16 rows lies
# within SCORE_RTOL (relative) of the float64 score of the same values (fpgm_ext.testing's
# score_rtol; the parity tests measure at most about 1.2e-7 on adversarial layers).
SCORE_RTOL = 1e-5
BOUND = 2 * SCORE_RTOL   # what the selection assumes: the contract, with a factor 2 to spare

# Undecided units past which the float64 kernel on the whole layer costs less than their
# rows: as a fraction of N (measured in bench/NOTES.md, "certified selection").
_DIRECT_FRACTION = {"l2": 1 / 8, "cos": 1 / 8, "l1": 1 / 64}

_CLOSE_RATIO = 64.0   # csrc/accuracy.h kCloseRatio: the Gram value of a close pair is not used

# all_exact: the float64 copies of a group's members made at once, at most (one member
# larger than this alone): a residual stream's group holds a producer in every block of the
# model, whose float64 copies all at once would be four times a bfloat16 model.
_EXACT_BYTES = 256 << 20


class CandidateScores:
    """The distance scores of one selection's candidates: ``approx`` (float64 sums of the
    kernels' scores of ``rows``, one tensor [N, D] per member, the same N units each),
    refined on demand by ``for_cut``. ``score_all(rows64) -> [scores]`` is the float64
    kernel (``fpgm_ext.distance_scores_multi``)."""

    def __init__(self, rows: Sequence[torch.Tensor], approx: torch.Tensor, metric: str,
                 score_all: Callable[[List[torch.Tensor]], List[torch.Tensor]]):
        self.rows = list(rows)
        self.approx = approx.to(torch.float64)
        self.metric = metric
        self.score_all = score_all
        exact = all(r.dtype == torch.float64 for r in self.rows)
        self.exact: Optional[torch.Tensor] = self.approx if exact else None   # all known
        self.known = torch.full_like(self.approx, math.nan)                  # some known
        self.recomputed = 0   # units whose float64 scores were computed (for the tests)

    def for_cut(self, n_cut: int) -> torch.Tensor:
        """Float64 scores whose first ``n_cut`` by stable ascending order are the ``n_cut``
        smallest exact scores (ties to the lower index): exact where it matters, ``-inf``
        for units certainly among them, ``+inf`` for units certainly not."""
        if self.exact is not None:
            return self.exact
        n = self.approx.numel()
        if n_cut <= 0 or n_cut >= n:
            return self.approx   # all or none: the order does not matter
        undecided, surely_in = undecided_units(self.approx, BOUND * self.approx.abs(), n_cut)
        need = undecided & self.known.isnan()
        k = int(need.sum())
        if k > max(1.0, n * _DIRECT_FRACTION[self.metric]):
            return self.all_exact()
        if k:
            idx = need.nonzero().squeeze(1)
            self.known[idx] = exact_scores(self.rows, idx, self.metric)
            self.recomputed += k
        out = torch.where(surely_in, -math.inf, math.inf).to(self.approx)
        return torch.where(undecided, self.known, out)

    def all_exact(self) -> torch.Tensor:
        """Every unit's float64 score (the float64 kernel on the whole layer): the members
        converted and scored in runs of up to ``_EXACT_BYTES`` of float64 rows, their
        scores added in member order."""
        if self.exact is not None:
            return self.exact
        self.recomputed = self.approx.numel()
        total = torch.zeros_like(self.approx)
        for run in _runs(self.rows, _EXACT_BYTES):
            for s in self.score_all([r.to(torch.float64) for r in run]):
                total += s.to(torch.float64)
        self.exact = total
        return self.exact


def _runs(rows: Sequence[torch.Tensor], limit: int) -> List[List[torch.Tensor]]:
    """``rows`` in consecutive runs whose float64 copies take up to ``limit`` bytes each
    (a larger member is a run alone)."""
    runs: List[List[torch.Tensor]] = []
    used = 0
    for r in rows:
        size = 8 * r.numel()
        if not runs or used + size > limit:
            runs.append([])
            used = 0
        runs[-1].append(r)
        used += size
    return runs


def undecided_units(approx: torch.Tensor, bound: torch.Tensor, n_cut: int):
    """``(undecided, surely_in)`` masks for picking the ``n_cut`` smallest of scores known
    to lie in ``approx +- bound``: a unit is surely among them when fewer than ``n_cut``
    units could rank before it or tie with it (their lower ends are at or below its upper
    end, itself included), surely not when at least ``n_cut`` units rank before it whatever
    the exact values (their upper ends lie below its lower end). Non-finite scores decide
    nothing."""
    lo, hi = approx - bound, approx + bound
    if not bool(torch.isfinite(approx).all()):
        undecided = torch.ones_like(approx, dtype=torch.bool)
        return undecided, ~undecided
    could_precede = torch.searchsorted(lo.sort().values, hi, right=True)   # #{j: lo_j <= hi_i}
    surely_precede = torch.searchsorted(hi.sort().values, lo, right=False)  # #{j: hi_j < lo_i}
    surely_in = could_precede <= n_cut
    surely_out = surely_precede >= n_cut
    return ~(surely_in | surely_out), surely_in


def exact_scores(rows: Sequence[torch.Tensor], units: torch.Tensor, metric: str,
                 chunk_bytes: int = 1 << 20) -> torch.Tensor:
    """Float64 scores of ``units`` (indices), summed over the members ``rows`` ([N, D]
    each): each unit's distances to all N rows, computed as the float64 kernels do
    (l2 / cos: a float64 Gram product, close pairs recomputed from the differences; l1:
    the differences). The other rows pass through one small float64 buffer, chunk by
    chunk: no float64 copy of the layer (its fresh pages cost more than the products)."""
    out = torch.zeros(units.numel(), dtype=torch.float64, device=units.device)
    for rows_m in rows:
        n, d = rows_m.shape
        a = _prepared(rows_m[units].to(torch.float64), metric)
        sq_a = a.square().sum(1)
        step = max(1, min(n, chunk_bytes // (8 * max(d, 1))))
        buf = torch.empty((step, d), dtype=torch.float64, device=rows_m.device)
        for c0 in range(0, n, step):
            b = buf[:min(step, n - c0)]
            b.copy_(rows_m[c0:c0 + b.shape[0]])
            b = _prepared(b, metric)
            if metric == "l1":
                out += torch.cdist(a, b, p=1).sum(1)
                continue
            sq_b = torch.linalg.vector_norm(b, dim=1).square()
            s = sq_a[:, None] + sq_b[None, :]
            d2 = s - 2 * (a @ b.T)
            close = (d2 * _CLOSE_RATIO < s).nonzero(as_tuple=True)
            if close[0].numel():
                d2[close] = (a[close[0]] - b[close[1]]).square().sum(1)
            if metric == "l2":
                dist = d2.clamp_min(0).sqrt()
            else:   # unit rows: 1 - cos = |u - v|^2 / 2; a zero row is at 1 from every other
                dist = (0.5 * d2).clamp(0, 2)
                zero = (sq_a[:, None] == 0) | (sq_b[None, :] == 0)
                dist = torch.where(zero, torch.ones_like(dist), dist)
                same = units[:, None] == torch.arange(c0, c0 + b.shape[0], device=units.device)[None, :]
                dist = torch.where(same, torch.zeros_like(dist), dist)
            out += dist.sum(1)
    return out


def _prepared(x: torch.Tensor, metric: str) -> torch.Tensor:
    """cos: the unit rows (in place; zero rows stay zero)."""
    if metric != "cos":
        return x
    norm = x.norm(dim=1, keepdim=True)
    return x.div_(torch.where(norm == 0, torch.ones_like(norm), norm))
