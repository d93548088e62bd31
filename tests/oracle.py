"""The tests' float64 oracle, written independently of fpgm_ext.reference: scipy's cdist
on the exact values the op received, and the official two-stage FPGM selection."""
import numpy as np
import torch
from scipy.spatial.distance import cdist

_SCIPY = {"l2": "euclidean", "l1": "cityblock"}


def rows64(weight: torch.Tensor) -> np.ndarray:
    return weight.detach().cpu().to(torch.float64).reshape(weight.shape[0], -1).numpy()


def matrix(weight: torch.Tensor, metric: str) -> np.ndarray:
    f = rows64(weight)
    if metric == "cos":
        # scipy's "cosine" computes 1 - u.v, which loses half the digits for near-duplicate
        # filters even in float64; |u - v|^2 / 2 of the unit rows is the same and exact.
        norm = np.linalg.norm(f, axis=1, keepdims=True)
        zero = norm[:, 0] == 0
        u = f / np.where(zero[:, None], 1.0, norm)
        d = np.clip(cdist(u, u, "sqeuclidean") / 2, 0.0, 2.0)
        d[zero, :] = 1.0  # fpgm_ext's contract: a zero row has cosine distance 1 to the others
        d[:, zero] = 1.0
    else:
        d = cdist(f, f, _SCIPY[metric])
    np.fill_diagonal(d, 0.0)
    return d


def scores(weight: torch.Tensor, metric: str) -> np.ndarray:
    return matrix(weight, metric).sum(axis=1)


def official_select(weight: torch.Tensor, rate_dist: float, rate_norm: float, metric: str = "l2"):
    """Mask.get_filter_similar of he-y/filter-pruning-geometric-median, with its two
    floor counts, candidates in index order and stable (lower index first) tie-breaking.
    Returns the sorted pruned indices."""
    f = rows64(weight)
    n = f.shape[0]
    n_norm = int(n * (1 - rate_norm))
    n_dist = int(n * rate_dist)
    by_norm = np.argsort(np.linalg.norm(f, axis=1), kind="stable")
    candidates = np.sort(by_norm[n_norm:])
    pruned = list(by_norm[:n_norm])
    if n_dist:
        sums = np.abs(matrix(torch.from_numpy(f[candidates]), metric)).sum(axis=0)
        pruned += list(candidates[np.argsort(sums, kind="stable")[:n_dist]])
    return np.sort(np.array(pruned, dtype=np.int64))
