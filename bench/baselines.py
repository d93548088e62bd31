"""What FPGM scores cost without fpgm_ext: the ways the official code and its peers compute
them (docs/design.md, "The algorithm"), each written as they write it, plus the matrix-product floor.

Every function takes the flattened filters F [N, D] (a float32 CPU tensor) and returns the
N scores ``g_i = sum_j d(F_i, F_j)``; the numpy ones return numpy arrays.
"""
from __future__ import annotations

from typing import List, Sequence

import numpy as np
import torch
from scipy.spatial import distance

_CDIST_P = {"l2": 2.0, "l1": 1.0}
_SCIPY = {"l2": "euclidean", "l1": "cityblock", "cos": "cosine"}


def flatten(weight: torch.Tensor) -> torch.Tensor:
    return weight.reshape(weight.shape[0], -1)


# ---------------------------------------------------------------- torch, full N x N matrix
def torch_cdist(f: torch.Tensor, metric: str = "l2") -> torch.Tensor:
    """torch.ao.pruning / NNCF: ``torch.cdist(F, F).sum(1)`` (an N x N matrix)."""
    return torch.cdist(f, f, p=_CDIST_P[metric]).sum(1)


def torch_cos(f: torch.Tensor) -> torch.Tensor:
    """Cosine distance the plain-PyTorch way: normalise the rows, then
    ``(1 - Fn @ Fn.T).sum(1)`` (an N x N matrix)."""
    fn = torch.nn.functional.normalize(f, dim=1)
    return (1 - fn @ fn.T).sum(1)


def torch_baseline(f: torch.Tensor, metric: str) -> torch.Tensor:
    """The issue's yardstick per metric: cdist for l2 and l1, normalise + Gram for cos."""
    return torch_cos(f) if metric == "cos" else torch_cdist(f, metric)


def gram(f: torch.Tensor) -> torch.Tensor:
    """``F @ F.T``: the machine's matrix rate on this shape, for the work floor."""
    return f @ f.T


# ------------------------------------------------- the official FPGM code: scipy, float64
def scipy_official(f: torch.Tensor, metric: str = "l2") -> np.ndarray:
    """he-y/filter-pruning-geometric-median, ``Mask.get_filter_similar``: the float32
    rows go to numpy, scipy's ``cdist`` computes in float64, then
    ``np.sum(np.abs(similar_matrix), axis=0)``. (Its metric switch is dead and always
    uses 'euclidean'; l1 and cos use scipy's 'cityblock' and 'cosine' the same way.)"""
    weight_vec = f.detach().cpu().numpy()
    similar_matrix = distance.cdist(weight_vec, weight_vec, _SCIPY[metric])
    return np.sum(np.abs(similar_matrix), axis=0)


# ------------------------------------------------------------- the per-filter loops
def _row_dist(x: torch.Tensor, metric: str) -> torch.Tensor:
    if metric == "l2":
        return torch.sqrt((x * x).sum(-1))
    if metric == "l1":
        return x.abs().sum(-1)
    raise ValueError(metric)


def nni_loop(weight: torch.Tensor, metric: str = "l2") -> torch.Tensor:
    """NNI's FPGM pruner (``_get_min_gm_kernel_idx`` / ``_get_distance_sum``): for each
    filter, expand it to the layer's shape, subtract, square, sum, sqrt, sum; one Python
    iteration and a fresh [N, D] temporary per filter."""
    w = weight.view(weight.size(0), -1)
    dist_list = []
    for out_i in range(weight.size(0)):
        anchor_w = w[out_i].unsqueeze(0).expand(w.size(0), w.size(1))
        x = w - anchor_w
        dist_list.append(_row_dist(x, metric).sum())
    return torch.stack(dist_list)


def paddleslim_loop(value: np.ndarray, metric: str = "l2") -> np.ndarray:
    """PaddleSlim's ``geometry_median`` criterion: the same loop in numpy, with the
    selected filter tiled to [N, D] by ``np.tile``."""
    w = value.view()
    w.shape = value.shape[0], int(np.prod(value.shape[1:]))

    def get_distance_sum(out_idx):
        selected_filter = np.tile(w[out_idx], (w.shape[0], 1))
        x = w - selected_filter
        if metric == "l1":
            return np.abs(x).sum(-1).sum()
        return np.sqrt(np.sum(x * x, -1)).sum()

    return np.array([get_distance_sum(out_i) for out_i in range(value.shape[0])])


# ------------------------------------------------------------- a whole model
def cdist_per_layer(weights: Sequence[torch.Tensor], metric: str = "l2") -> List[torch.Tensor]:
    """A Python loop of ``torch.cdist(F, F).sum(1)`` over a model's layers."""
    return [torch_baseline(flatten(w), metric) for w in weights]


# ------------------------------------------------------------- gather
def index_select_loop(tensors: Sequence[torch.Tensor], dims: Sequence[int],
                      indices: Sequence[torch.Tensor]) -> List[torch.Tensor]:
    """Physical pruning as everyone writes it: one ``index_select`` per tensor."""
    return [t.index_select(d, i) for t, d, i in zip(tensors, dims, indices)]
