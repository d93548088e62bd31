"""The fpgm operators in plain PyTorch.

Used as the fallback backend (registered under the same names and schemas as the
compiled library when it cannot be loaded, or when FPGM_EXT_BACKEND=reference), and for
CUDA tensors when the compiled library was built without CUDA. The tests' oracle is
separate (scipy, float64): this module is a backend like the others.

The argument checks are fpgm_ext._checks, shared with the compiled library's messages
(csrc/checks.h), so every backend fails alike.
"""
from __future__ import annotations

from typing import List, Sequence

import torch

from ._checks import check_gather_args, check_metric, check_weight, check_weights, is_layer_batch, result_dtype

# Same text as csrc/ops.cpp; tests/test_backend.py asserts the two agree.
SCHEMAS = {
    "distance_scores": 'distance_scores(Tensor weight, str metric="l2") -> Tensor',
    "distance_matrix": 'distance_matrix(Tensor weight, str metric="l2") -> Tensor',
    "distance_scores_multi": 'distance_scores_multi(Tensor[] weights, str metric="l2") -> Tensor[]',
    "gather_channels": "gather_channels(Tensor[] tensors, int[] dims, Tensor[] indices) -> Tensor[]",
}

def _finite(op: str, name: str, f: torch.Tensor) -> torch.Tensor:
    if not torch.isfinite(f).all():
        raise ValueError(f"fpgm.{op}: {name} contains NaN or Inf; FPGM scores would be meaningless")
    return f


def _rows(op: str, name: str, w: torch.Tensor) -> torch.Tensor:
    """w [N, ...] as rows [N, D] of the result dtype, checked finite."""
    return _finite(op, name, w.reshape(w.shape[0], -1).to(result_dtype(w.dtype)))


def _matrix(f: torch.Tensor, metric: str) -> torch.Tensor:
    """All pairwise distances of the rows of f[N, D] (or a batch [B, N, D])."""
    if metric == "l1":
        d = torch.cdist(f, f, p=1)
    else:
        # Rows are centred (cos: normalised, then centred) in float64 before the Gram
        # product in f's dtype, so |a|^2 + |b|^2 - 2ab does not cancel for near-duplicate
        # filters; 1 - cos(a, b) = |u - v|^2 / 2 for the unit rows u, v.
        x = f.to(torch.float64)
        if metric == "cos":
            norm = x.norm(dim=-1, keepdim=True)
            zero = norm == 0
            x = x / torch.where(zero, torch.ones_like(norm), norm)
            count = (~zero).sum(dim=-2, keepdim=True).clamp_min(1)
            x = x - x.sum(dim=-2, keepdim=True) / count
        else:
            x = x - x.mean(dim=-2, keepdim=True)
        u = x.to(f.dtype)
        sq = u.to(torch.float64).square().sum(-1)
        gram = (u @ u.transpose(-1, -2)).to(torch.float64)
        d2 = sq.unsqueeze(-1) + sq.unsqueeze(-2) - 2 * gram
        d2 = _recompute_close_pairs(u, sq, d2)
        if metric == "cos":
            d = (0.5 * d2).clamp(0, 2)
            d = torch.where(zero | zero.transpose(-1, -2), torch.ones_like(d), d)  # zero rows: 1
        else:
            d = d2.clamp_min(0).sqrt()
        d = d.to(f.dtype)
    # Exactly symmetric with a zero diagonal: keep the upper triangle and mirror it.
    d = d.triu(1)
    return d + d.transpose(-1, -2)


# The close-pair ratio of csrc/accuracy.h (kCloseRatio; tests compare the two): a pair whose
# d^2 is under 1 / CLOSE_RATIO of |a|^2 + |b|^2 is recomputed directly.
CLOSE_RATIO = 64.0


def _recompute_close_pairs(u: torch.Tensor, sq: torch.Tensor, d2: torch.Tensor) -> torch.Tensor:
    """Filters in tight clusters away from the centre: there |a|^2 + |b|^2 - 2ab has
    cancelled, so those pairs get sum_k (a_k - b_k)^2 directly, in float64 (in chunks, so
    that a layer of many close pairs does not hold them all at once)."""
    close = d2 * CLOSE_RATIO < sq.unsqueeze(-1) + sq.unsqueeze(-2)
    if not bool(close.any()):
        return d2
    rows = u.to(torch.float64).reshape(-1, u.shape[-2], u.shape[-1])   # [B, N, D]
    flat = d2.reshape(-1, d2.shape[-2], d2.shape[-1]).clone()
    b, i, j = close.reshape(flat.shape).nonzero(as_tuple=True)
    chunk = max(1, (1 << 24) // max(1, u.shape[-1]))
    for s in range(0, b.numel(), chunk):
        bb, ii, jj = b[s:s + chunk], i[s:s + chunk], j[s:s + chunk]
        flat[bb, ii, jj] = (rows[bb, ii] - rows[bb, jj]).square().sum(-1)
    return flat.reshape(d2.shape)


def _sum_rows(d: torch.Tensor) -> torch.Tensor:
    return d.sum(-1, dtype=torch.float64).to(d.dtype)


def distance_scores(weight: torch.Tensor, metric: str = "l2") -> torch.Tensor:
    check_metric("distance_scores", metric)
    check_weight("distance_scores", "weight", weight)
    return _sum_rows(_matrix(_rows("distance_scores", "weight", weight), metric))


def distance_matrix(weight: torch.Tensor, metric: str = "l2") -> torch.Tensor:
    check_metric("distance_matrix", metric)
    check_weight("distance_matrix", "weight", weight)
    if is_layer_batch(weight):  # [B, N, D]: a batch of layers, taken as it is
        return _matrix(_finite("distance_matrix", "weight", weight.to(result_dtype(weight.dtype))), metric)
    return _matrix(_rows("distance_matrix", "weight", weight), metric)


def distance_scores_multi(weights: Sequence[torch.Tensor], metric: str = "l2") -> List[torch.Tensor]:
    check_metric("distance_scores_multi", metric)
    check_weights("distance_scores_multi", weights)
    return [_sum_rows(_matrix(_rows("distance_scores_multi", f"weights[{k}]", w), metric))
            for k, w in enumerate(weights)]


def gather_channels(tensors: Sequence[torch.Tensor], dims: Sequence[int],
                    indices: Sequence[torch.Tensor]) -> List[torch.Tensor]:
    wrapped = check_gather_args(tensors, dims, indices)
    out = []
    for k, (t, dim, idx) in enumerate(zip(tensors, wrapped, indices)):
        if idx.numel() and (idx.min() < 0 or idx.max() >= t.shape[dim]):
            bad = idx[(idx < 0) | (idx >= t.shape[dim])][0].item()
            raise IndexError(f"fpgm.gather_channels: indices[{k}] holds {bad}, out of range for dimension "
                             f"{dim} of size {t.shape[dim]} of tensors[{k}]")
        out.append(t.index_select(dim, idx.long()).contiguous())
    return out


OPS = {
    "distance_scores": distance_scores,
    "distance_matrix": distance_matrix,
    "distance_scores_multi": distance_scores_multi,
    "gather_channels": gather_channels,
}
